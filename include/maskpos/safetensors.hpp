/// @file safetensors.hpp
/// @brief Reading tensors from `.safetensors` files (Hugging Face checkpoints), single-file and sharded.
///
/// Format (https://huggingface.co/docs/safetensors): 8 bytes holding the header length N as a
/// little-endian unsigned 64-bit integer, N bytes of JSON mapping each tensor name to
/// `{"dtype", "shape", "data_offsets": [begin, end]}` (plus an optional `"__metadata__"` object of
/// strings), then the data section; offsets are bytes relative to the start of the data section and
/// tensors are stored row-major, little-endian. A sharded checkpoint adds `model.safetensors.index.json`
/// whose `"weight_map"` maps each tensor name to the shard file holding it.
///
/// Memory: opening a file reads and validates only its header. A tensor is read straight from the
/// file into its destination matrix in chunks of at most `kReadChunkBytes`, converting F16 / BF16 /
/// F64 to the scalar type on the fly, so loading a model never needs the file's bytes and the
/// converted tensors in memory at once. Selected rows (an embedding table's rows for the tokens of a
/// prompt) can be read without the rest of the tensor.
///
/// Validation (each failure throws std::runtime_error "maskpos: <file>: <problem>"): file shorter
/// than 8 bytes; header length beyond the file or above 100 MB; header not JSON or not an object;
/// an entry without a string dtype, an integer shape or two integer offsets; an unknown dtype; a
/// byte range that does not match dtype x shape, ends beyond the data section or overlaps another
/// tensor; a tensor requested that is not there; a shape other than the one the caller expects.
///
/// Dependency: this header parses JSON with nlohmann-json (Debian `nlohmann-json3-dev`, header-only).
/// It is the only maskpos header besides model_config.hpp and checkpoint.hpp that needs it.
///
/// Thread safety: a SafetensorsFile / SafetensorsCheckpoint is immutable after construction; every
/// read opens its own stream, so concurrent reads are safe.
#pragma once

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "detail/half.hpp"
#include "types.hpp"

namespace maskpos {

/// Element types maskpos reads from safetensors files (all converted to float or double on load).
enum class TensorDtype { F64, F32, F16, BF16 };

/// Bytes per element.
inline std::size_t dtype_size(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::F64: return 8;
    case TensorDtype::F32: return 4;
    case TensorDtype::F16: return 2;
    case TensorDtype::BF16: return 2;
  }
  return 0;
}

/// The safetensors spelling: "F64", "F32", "F16", "BF16".
inline std::string to_string(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::F64: return "F64";
    case TensorDtype::F32: return "F32";
    case TensorDtype::F16: return "F16";
    case TensorDtype::BF16: return "BF16";
  }
  return "?";
}

/// One tensor entry of a safetensors header.
struct TensorInfo {
  std::string name;
  TensorDtype dtype = TensorDtype::F32;
  std::vector<std::uint64_t> shape;  ///< row-major; empty for a scalar
  std::uint64_t begin = 0;           ///< first byte, relative to the data section
  std::uint64_t end = 0;             ///< one past the last byte

  /// Number of elements (product of the shape; 1 for a scalar).
  std::uint64_t elements() const {
    std::uint64_t count = 1;
    for (const auto extent : shape) count *= extent;
    return count;
  }
};

/// "[a, b, c]" for error messages.
inline std::string shape_to_string(const std::vector<std::uint64_t>& shape) {
  std::string text = "[";
  for (std::size_t k = 0; k < shape.size(); ++k) text += (k ? ", " : "") + std::to_string(shape[k]);
  return text + "]";
}

namespace detail {

/// Largest header maskpos accepts (the reference implementation uses the same 100 MB limit).
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;
/// Size of the staging buffer used while converting a tensor.
inline constexpr std::uint64_t kReadChunkBytes = std::uint64_t(1) << 20;

[[noreturn]] inline void throw_file_error(const std::filesystem::path& path, const std::string& problem) {
  throw std::runtime_error("maskpos: " + path.string() + ": " + problem);
}

/// Decodes one little-endian element of the given dtype starting at `bytes`.
template <class Scalar>
Scalar decode_element(const unsigned char* bytes, TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::F64: return static_cast<Scalar>(double_from_bits(load_le64(bytes)));
    case TensorDtype::F32: return static_cast<Scalar>(float_from_bits(load_le32(bytes)));
    case TensorDtype::F16: return static_cast<Scalar>(f16_to_float(load_le16(bytes)));
    case TensorDtype::BF16: return static_cast<Scalar>(bf16_to_float(load_le16(bytes)));
  }
  return Scalar(0);
}

/// Reads and parses a JSON file, naming the file in every error.
inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) throw_file_error(path, "cannot open the file");
  try {
    return nlohmann::json::parse(stream);
  } catch (const nlohmann::json::exception& error) {
    throw_file_error(path, std::string("not valid JSON (") + error.what() + ")");
  }
}

}  // namespace detail

/// One `.safetensors` file: its validated header, and reads of single tensors.
class SafetensorsFile {
 public:
  /// Opens `path`, reads and validates the header (see the file comment for the checks).
  /// \throws std::runtime_error naming the file and the problem.
  explicit SafetensorsFile(std::filesystem::path path) : path_(std::move(path)) {
    std::ifstream stream(path_, std::ios::binary);
    if (!stream) detail::throw_file_error(path_, "cannot open the file");
    std::error_code size_error;
    const std::uint64_t file_size = std::filesystem::file_size(path_, size_error);
    if (size_error) detail::throw_file_error(path_, "cannot determine the file size");
    if (file_size < 8)
      detail::throw_file_error(path_, "file of " + std::to_string(file_size) +
                                          " bytes is too short for the 8-byte header length");
    unsigned char length_bytes[8];
    stream.read(reinterpret_cast<char*>(length_bytes), 8);
    const std::uint64_t header_length = detail::load_le64(length_bytes);
    if (header_length > detail::kMaxSafetensorsHeader)
      detail::throw_file_error(path_, "header length " + std::to_string(header_length) +
                                          " exceeds the 100 MB limit (corrupt length or not a safetensors file)");
    if (header_length > file_size - 8)
      detail::throw_file_error(path_, "header length " + std::to_string(header_length) +
                                          " runs past the end of the file (" + std::to_string(file_size) + " bytes)");
    std::string header(static_cast<std::size_t>(header_length), '\0');
    stream.read(header.data(), static_cast<std::streamsize>(header_length));
    if (!stream) detail::throw_file_error(path_, "cannot read the header");
    data_start_ = 8 + header_length;
    data_size_ = file_size - data_start_;
    parse_header(header);
  }

  const std::filesystem::path& path() const { return path_; }
  /// All tensors, in the order of their offsets.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// The `"__metadata__"` strings (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  /// \throws std::runtime_error "missing tensor" naming the file when absent.
  const TensorInfo& info(const std::string& name) const {
    const auto found = index_.find(name);
    if (found == index_.end()) detail::throw_file_error(path_, "missing tensor '" + name + "'");
    return tensors_[found->second];
  }

  /// Reads a 2-D tensor of shape [rows, cols] into a rows x cols matrix.
  /// \pre the stored shape is exactly [rows, cols] (else std::runtime_error naming both shapes)
  template <class Scalar>
  Matrix<Scalar> read_matrix(const std::string& name, Index rows, Index cols) const {
    const TensorInfo& tensor = info(name);
    require_shape(tensor, {static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols)});
    Matrix<Scalar> result(rows, cols);
    read_range<Scalar>(tensor, 0, tensor.elements(), [&](std::uint64_t element, Scalar value) {
      result(static_cast<Index>(element / static_cast<std::uint64_t>(cols)),
             static_cast<Index>(element % static_cast<std::uint64_t>(cols))) = value;
    });
    return result;
  }

  /// Reads a 1-D tensor of shape [size].
  template <class Scalar>
  Vector<Scalar> read_vector(const std::string& name, Index size) const {
    const TensorInfo& tensor = info(name);
    require_shape(tensor, {static_cast<std::uint64_t>(size)});
    Vector<Scalar> result(size);
    read_range<Scalar>(tensor, 0, tensor.elements(),
                       [&](std::uint64_t element, Scalar value) { result(static_cast<Index>(element)) = value; });
    return result;
  }

  /// Reads the listed rows of a 2-D tensor of shape [rows, cols] (e.g. embedding rows of a prompt):
  /// row k of the result is stored row `row_ids[k]`. Only those rows are read from the file.
  /// \pre every id in [0, rows) (else std::invalid_argument)
  template <class Scalar>
  Matrix<Scalar> read_rows(const std::string& name, Index rows, Index cols, const std::vector<Index>& row_ids) const {
    const TensorInfo& tensor = info(name);
    require_shape(tensor, {static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols)});
    Matrix<Scalar> result(static_cast<Index>(row_ids.size()), cols);
    for (std::size_t k = 0; k < row_ids.size(); ++k) {
      const Index row = row_ids[k];
      if (row < 0 || row >= rows)
        throw std::invalid_argument("maskpos: row id " + std::to_string(row) + " of tensor '" + name +
                                    "': must satisfy 0 <= id < " + std::to_string(rows));
      const auto first = static_cast<std::uint64_t>(row) * static_cast<std::uint64_t>(cols);
      read_range<Scalar>(tensor, first, static_cast<std::uint64_t>(cols), [&](std::uint64_t element, Scalar value) {
        result(static_cast<Index>(k), static_cast<Index>(element - first)) = value;
      });
    }
    return result;
  }

  /// Throws std::runtime_error unless `tensor` has exactly the `expected` shape.
  void require_shape(const TensorInfo& tensor, const std::vector<std::uint64_t>& expected) const {
    if (tensor.shape != expected)
      detail::throw_file_error(path_, "tensor '" + tensor.name + "' has shape " + shape_to_string(tensor.shape) +
                                          ", expected " + shape_to_string(expected));
  }

  /// Streams elements [first, first + count) of `tensor` (row-major order) to `sink(element, value)`,
  /// through a staging buffer of at most kReadChunkBytes.
  template <class Scalar, class Sink>
  void read_range(const TensorInfo& tensor, std::uint64_t first, std::uint64_t count, Sink&& sink) const {
    detail::check_scalar<Scalar>();
    const std::uint64_t width = dtype_size(tensor.dtype);
    std::ifstream stream(path_, std::ios::binary);
    if (!stream) detail::throw_file_error(path_, "cannot open the file");
    stream.seekg(static_cast<std::streamoff>(data_start_ + tensor.begin + first * width));
    const std::uint64_t chunk_elements = std::max<std::uint64_t>(1, detail::kReadChunkBytes / width);
    std::vector<unsigned char> buffer(static_cast<std::size_t>(std::min(count, chunk_elements) * width));
    for (std::uint64_t done = 0; done < count;) {
      const std::uint64_t step = std::min(count - done, chunk_elements);
      stream.read(reinterpret_cast<char*>(buffer.data()), static_cast<std::streamsize>(step * width));
      if (!stream) detail::throw_file_error(path_, "file ended while reading tensor '" + tensor.name + "'");
      for (std::uint64_t k = 0; k < step; ++k)
        sink(first + done + k, detail::decode_element<Scalar>(buffer.data() + k * width, tensor.dtype));
      done += step;
    }
  }

 private:
  void parse_header(const std::string& header) {
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(header);
    } catch (const nlohmann::json::exception& error) {
      detail::throw_file_error(path_, std::string("header is not valid JSON (") + error.what() + ")");
    }
    if (!json.is_object()) detail::throw_file_error(path_, "header is not a JSON object");
    for (const auto& [name, entry] : json.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) detail::throw_file_error(path_, "__metadata__ is not an object");
        for (const auto& [key, value] : entry.items())
          if (value.is_string()) metadata_[key] = value.get<std::string>();
        continue;
      }
      tensors_.push_back(parse_entry(name, entry));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (std::size_t k = 1; k < tensors_.size(); ++k)
      if (tensors_[k].begin < tensors_[k - 1].end)
        detail::throw_file_error(path_, "tensors '" + tensors_[k - 1].name + "' (bytes " + range_text(tensors_[k - 1]) +
                                            ") and '" + tensors_[k].name + "' (bytes " + range_text(tensors_[k]) +
                                            ") overlap");
    for (std::size_t k = 0; k < tensors_.size(); ++k) index_[tensors_[k].name] = k;
  }

  static std::string range_text(const TensorInfo& tensor) {
    return std::to_string(tensor.begin) + ".." + std::to_string(tensor.end);
  }

  TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const {
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) detail::throw_file_error(path_, where + ": header entry is not an object");
    TensorInfo tensor;
    tensor.name = name;
    const auto dtype = entry.find("dtype");
    if (dtype == entry.end() || !dtype->is_string()) detail::throw_file_error(path_, where + ": no string \"dtype\"");
    const std::string dtype_name = dtype->get<std::string>();
    if (dtype_name == "F64") tensor.dtype = TensorDtype::F64;
    else if (dtype_name == "F32") tensor.dtype = TensorDtype::F32;
    else if (dtype_name == "F16") tensor.dtype = TensorDtype::F16;
    else if (dtype_name == "BF16") tensor.dtype = TensorDtype::BF16;
    else
      detail::throw_file_error(path_, where + ": unsupported dtype \"" + dtype_name + "\" (maskpos reads F64, F32, F16, BF16)");
    const auto shape = entry.find("shape");
    if (shape == entry.end() || !shape->is_array())
      detail::throw_file_error(path_, where + ": no \"shape\" array");
    std::uint64_t elements = 1;
    for (const auto& extent : *shape) {
      if (!extent.is_number_unsigned()) detail::throw_file_error(path_, where + ": shape entries must be integers >= 0");
      const auto value = extent.get<std::uint64_t>();
      if (value != 0 && elements > std::numeric_limits<std::uint64_t>::max() / 16 / value)
        detail::throw_file_error(path_, where + ": shape " + shape->dump() + " is too large");
      elements *= value;
      tensor.shape.push_back(value);
    }
    const auto offsets = entry.find("data_offsets");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
        !(*offsets)[1].is_number_unsigned())
      detail::throw_file_error(path_, where + ": \"data_offsets\" must be two integers >= 0");
    tensor.begin = (*offsets)[0].get<std::uint64_t>();
    tensor.end = (*offsets)[1].get<std::uint64_t>();
    if (tensor.end < tensor.begin)
      detail::throw_file_error(path_, where + ": data_offsets " + offsets->dump() + " end before they begin");
    if (tensor.end > data_size_)
      detail::throw_file_error(path_, where + ": data_offsets " + offsets->dump() + " run past the data section (" +
                                          std::to_string(data_size_) + " bytes)");
    if (tensor.end - tensor.begin != elements * dtype_size(tensor.dtype))
      detail::throw_file_error(path_, where + ": data_offsets " + offsets->dump() + " hold " +
                                          std::to_string(tensor.end - tensor.begin) + " bytes, but " + dtype_name +
                                          " " + shape_to_string(tensor.shape) + " needs " +
                                          std::to_string(elements * dtype_size(tensor.dtype)));
    return tensor;
  }

  std::filesystem::path path_;
  std::uint64_t data_start_ = 0, data_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// A checkpoint stored as one `.safetensors` file or as shards listed by an index JSON.
class SafetensorsCheckpoint {
 public:
  /// \param path  a `.safetensors` file, a `*.safetensors.index.json` file, or a directory holding
  ///              `model.safetensors.index.json` or `model.safetensors` (tried in that order).
  /// \throws std::runtime_error naming the file and the problem.
  explicit SafetensorsCheckpoint(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    fs::path target = path;
    if (fs::is_directory(path)) {
      if (fs::exists(path / "model.safetensors.index.json")) target = path / "model.safetensors.index.json";
      else if (fs::exists(path / "model.safetensors")) target = path / "model.safetensors";
      else detail::throw_file_error(path, "directory holds neither model.safetensors.index.json nor model.safetensors");
    }
    if (!fs::exists(target)) detail::throw_file_error(target, "no such file");
    const std::string filename = target.filename().string();
    if (filename.size() >= 5 && filename.compare(filename.size() - 5, 5, ".json") == 0)
      open_index(target);
    else
      add_file(target);
  }

  /// The shard files, in the order they were opened.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

  bool contains(const std::string& name) const { return owner_.count(name) != 0; }

  /// Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> result;
    for (const auto& entry : owner_) result.push_back(entry.first);
    return result;
  }

  /// The file holding `name`. \throws std::runtime_error "missing tensor" naming the checkpoint.
  const SafetensorsFile& file_of(const std::string& name) const {
    const auto found = owner_.find(name);
    if (found == owner_.end()) detail::throw_file_error(source_, "missing tensor '" + name + "'");
    return *files_[found->second];
  }

  const TensorInfo& info(const std::string& name) const { return file_of(name).info(name); }

  template <class Scalar>
  Matrix<Scalar> read_matrix(const std::string& name, Index rows, Index cols) const {
    return file_of(name).template read_matrix<Scalar>(name, rows, cols);
  }
  template <class Scalar>
  Vector<Scalar> read_vector(const std::string& name, Index size) const {
    return file_of(name).template read_vector<Scalar>(name, size);
  }
  template <class Scalar>
  Matrix<Scalar> read_rows(const std::string& name, Index rows, Index cols, const std::vector<Index>& row_ids) const {
    return file_of(name).template read_rows<Scalar>(name, rows, cols, row_ids);
  }

 private:
  void open_index(const std::filesystem::path& index_path) {
    source_ = index_path;
    const nlohmann::json index = detail::read_json_file(index_path);
    const auto map = index.is_object() ? index.find("weight_map") : index.end();
    if (map == index.end() || !map->is_object())
      detail::throw_file_error(index_path, "no \"weight_map\" object");
    std::map<std::string, std::size_t> shard_of_file;
    std::map<std::string, std::string> listed;
    for (const auto& [name, shard] : map->items()) {
      if (!shard.is_string()) detail::throw_file_error(index_path, "weight_map entry '" + name + "' is not a file name");
      const std::string shard_name = shard.get<std::string>();
      if (std::filesystem::path(shard_name).has_parent_path())
        detail::throw_file_error(index_path, "weight_map entry '" + name + "' names a file outside the directory");
      if (!shard_of_file.count(shard_name)) {
        const auto shard_path = index_path.parent_path() / shard_name;
        if (!std::filesystem::exists(shard_path))
          detail::throw_file_error(index_path, "shard '" + shard_name + "' listed for tensor '" + name + "' does not exist");
        shard_of_file[shard_name] = files_.size();
        files_.push_back(std::make_unique<SafetensorsFile>(shard_path));
      }
      listed[name] = shard_name;
    }
    for (const auto& [name, shard_name] : listed) {
      const std::size_t file = shard_of_file[shard_name];
      if (!files_[file]->contains(name))
        detail::throw_file_error(files_[file]->path(), "missing tensor '" + name + "' (listed for this shard in " +
                                                            index_path.filename().string() + ")");
      owner_[name] = file;
    }
  }

  void add_file(const std::filesystem::path& file_path) {
    source_ = file_path;
    files_.push_back(std::make_unique<SafetensorsFile>(file_path));
    for (const auto& tensor : files_.back()->tensors()) owner_[tensor.name] = 0;
  }

  std::filesystem::path source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::size_t> owner_;
};

}  // namespace maskpos
