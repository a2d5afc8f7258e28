/// @file npy.hpp
/// @brief Reading and writing NumPy `.npy` files (float32 / float64, little-endian): score matrices
/// and stacks of them exchanged with NumPy, PyTorch and matplotlib.
///
/// Format (NumPy NEP 1, `numpy.lib.format`): the magic bytes "\x93NUMPY", a major and a minor version
/// byte, the header length (uint16 little-endian for version 1.0, uint32 for 2.0 and 3.0), then the
/// header, a Python dict literal such as `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`
/// padded with spaces and ending in '\n', then the raw data.
///
/// What is supported: versions 1.0, 2.0 and 3.0; the dtypes '<f4' and '<f8' (the spellings NumPy
/// writes for little-endian float32 and float64); C and Fortran order on read; any number of dimensions
/// up to 32 on read. Writing produces version 1.0, C order, header padded to 64 bytes, exactly
/// what `numpy.save` writes for the same array.
///
/// Errors: every problem with a file, whether the file cannot be opened or its content is malformed,
/// throws **std::runtime_error** whose message names the file and the problem, e.g.
/// "maskpos: read_npy: scores.npy: truncated data: the shape (50, 50) needs 20000 bytes, 1200 present".
/// Malformed input never reads out of bounds (the parser checks every length before using it).
/// Arguments that break a documented precondition (e.g. matrices of different sizes in one stack)
/// throw std::invalid_argument.
///
/// Thread-safety: all functions are reentrant; concurrent writes to one path leave one complete file.
#pragma once

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "detail/atomic_file.hpp"
#include "detail/errors.hpp"
#include "types.hpp"

namespace maskpos {

/// Element type of a .npy file.
enum class NpyDtype {
  Float32,  ///< '<f4'
  Float64,  ///< '<f8'
};

/// An array read from a .npy file: its shape and its values converted to double, in C (row-major) order
/// whatever the order in the file.
struct NpyArray {
  std::vector<std::size_t> shape;  ///< empty for a 0-d (scalar) array
  std::vector<double> data;        ///< product(shape) values, last index fastest
  NpyDtype dtype = NpyDtype::Float64;  ///< the element type stored in the file
  bool fortran_order = false;          ///< the order stored in the file (data is C order regardless)

  /// Number of dimensions.
  std::size_t ndim() const { return shape.size(); }
};

namespace detail {

/// Upper bound for a .npy header, the one NumPy itself enforces by default (numpy.lib.format
/// _MAX_HEADER_SIZE): a longer header is rejected as absurd before anything is parsed.
inline constexpr std::size_t kNpyMaxHeaderSize = 10000;
/// Upper bound for the number of dimensions (NumPy's own limit is 32 in 1.x).
inline constexpr std::size_t kNpyMaxDims = 32;

class NpyParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Recursive-descent parser for the header dict. It accepts exactly the Python literal grammar NumPy
/// writes and reads: single- or double-quoted keys, True/False, tuples of non-negative integers with an
/// optional trailing comma, whitespace anywhere between tokens, an optional trailing comma in the dict.
class NpyHeaderParser {
 public:
  NpyHeaderParser(const char* text, std::size_t size) : text_(text), size_(size) {}

  struct Header {
    std::string descr;
    bool fortran_order = false;
    std::vector<std::size_t> shape;
  };

  Header parse() {
    Header header;
    bool has_descr = false, has_order = false, has_shape = false;
    skip_space();
    expect('{', "the header must start with '{'");
    skip_space();
    while (!at('}')) {
      const std::string key = parse_string();
      skip_space();
      expect(':', "expected ':' after key '" + key + "'");
      skip_space();
      if (key == "descr") {
        if (has_descr) fail("duplicate key 'descr'");
        if (at('[')) fail("structured dtypes (a list 'descr') are not supported");
        header.descr = parse_string();
        has_descr = true;
      } else if (key == "fortran_order") {
        if (has_order) fail("duplicate key 'fortran_order'");
        header.fortran_order = parse_bool();
        has_order = true;
      } else if (key == "shape") {
        if (has_shape) fail("duplicate key 'shape'");
        header.shape = parse_shape();
        has_shape = true;
      } else {
        fail("unexpected key '" + key + "' (allowed: 'descr', 'fortran_order', 'shape')");
      }
      skip_space();
      if (at(',')) {
        ++pos_;
        skip_space();
      } else if (!at('}')) {
        fail("expected ',' or '}' after the value of '" + key + "'");
      }
    }
    ++pos_;  // '}'
    skip_space();
    if (pos_ != size_) fail("unexpected characters after the closing '}'");
    if (!has_descr) fail("missing key 'descr'");
    if (!has_order) fail("missing key 'fortran_order'");
    if (!has_shape) fail("missing key 'shape'");
    return header;
  }

 private:
  const char* text_;
  std::size_t size_;
  std::size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& problem) const {
    throw NpyParseError("bad header dict at character " + std::to_string(pos_) + ": " + problem);
  }
  bool at(char c) const { return pos_ < size_ && text_[pos_] == c; }
  void expect(char c, const std::string& problem) {
    if (!at(c)) fail(problem);
    ++pos_;
  }
  void skip_space() {
    while (pos_ < size_ && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }
  std::string parse_string() {
    if (!(at('\'') || at('"'))) fail("expected a quoted string");
    const char quote = text_[pos_++];
    const std::size_t start = pos_;
    while (pos_ < size_ && text_[pos_] != quote) {
      if (text_[pos_] == '\\' || text_[pos_] == '\n') fail("unsupported character in a string");
      ++pos_;
    }
    if (pos_ >= size_) fail("unterminated string");
    std::string value(text_ + start, pos_ - start);
    ++pos_;  // closing quote
    return value;
  }
  bool parse_bool() {
    if (size_ - pos_ >= 4 && std::memcmp(text_ + pos_, "True", 4) == 0) {
      pos_ += 4;
      return true;
    }
    if (size_ - pos_ >= 5 && std::memcmp(text_ + pos_, "False", 5) == 0) {
      pos_ += 5;
      return false;
    }
    fail("'fortran_order' must be True or False");
  }
  std::vector<std::size_t> parse_shape() {
    std::vector<std::size_t> shape;
    expect('(', "'shape' must be a tuple");
    skip_space();
    bool trailing_comma = false;
    while (!at(')')) {
      if (shape.size() >= kNpyMaxDims) fail("more than " + std::to_string(kNpyMaxDims) + " dimensions");
      shape.push_back(parse_dimension());
      skip_space();
      trailing_comma = at(',');
      if (trailing_comma) {
        ++pos_;
        skip_space();
      } else if (!at(')')) {
        fail("expected ',' or ')' in 'shape'");
      }
    }
    // Python's (5) is the integer 5, not a tuple: a one-element tuple is written (5,).
    if (shape.size() == 1 && !trailing_comma) fail("a one-dimensional 'shape' must be written (n,)");
    ++pos_;  // ')'
    return shape;
  }
  std::size_t parse_dimension() {
    if (!(pos_ < size_ && text_[pos_] >= '0' && text_[pos_] <= '9')) fail("a dimension must be a non-negative integer");
    std::size_t value = 0;
    while (pos_ < size_ && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const std::size_t digit = static_cast<std::size_t>(text_[pos_] - '0');
      if (value > (std::numeric_limits<std::size_t>::max() - digit) / 10) fail("dimension too large");
      value = value * 10 + digit;
      ++pos_;
    }
    return value;
  }
};

[[noreturn]] inline void npy_fail(const std::string& name, const std::string& problem) {
  throw_file_error("read_npy", name, problem);
}

inline std::string npy_shape_text(const std::vector<std::size_t>& shape) {
  std::string text = "(";
  for (std::size_t k = 0; k < shape.size(); ++k) {
    if (k > 0) text += ", ";
    text += std::to_string(shape[k]);
  }
  if (shape.size() == 1) text += ",";
  return text + ")";
}

inline std::uint64_t npy_load_le(const std::uint8_t* p, std::size_t bytes) {
  std::uint64_t value = 0;
  for (std::size_t b = 0; b < bytes; ++b) value |= static_cast<std::uint64_t>(p[b]) << (8 * b);
  return value;
}

inline void npy_store_le(std::uint8_t* p, std::uint64_t value, std::size_t bytes) {
  for (std::size_t b = 0; b < bytes; ++b) p[b] = static_cast<std::uint8_t>(value >> (8 * b));
}

/// The complete bytes of a version-1.0 C-order .npy file of the given shape; `value(k)` returns the
/// k-th value in C order.
template <class ValueAt>
std::vector<std::uint8_t> npy_encode(const std::vector<std::size_t>& shape, NpyDtype dtype, ValueAt value) {
  std::size_t count = 1;
  for (std::size_t n : shape) count *= n;
  const std::size_t item = dtype == NpyDtype::Float32 ? 4 : 8;
  std::string header = std::string("{'descr': '") + (dtype == NpyDtype::Float32 ? "<f4" : "<f8") +
                       "', 'fortran_order': False, 'shape': " + npy_shape_text(shape) + ", }";
  // Pad with spaces and a final '\n' so that magic (6) + version (2) + length (2) + header is a multiple
  // of 64, as numpy.save does.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::vector<std::uint8_t> bytes(10 + header.size() + count * item);
  const char magic[] = "\x93NUMPY";
  std::memcpy(bytes.data(), magic, 6);
  bytes[6] = 1;
  bytes[7] = 0;
  npy_store_le(bytes.data() + 8, header.size(), 2);
  std::memcpy(bytes.data() + 10, header.data(), header.size());
  std::uint8_t* out = bytes.data() + 10 + header.size();
  for (std::size_t k = 0; k < count; ++k, out += item) {
    const double v = value(k);
    if (dtype == NpyDtype::Float32) {
      const float f = static_cast<float>(v);
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      npy_store_le(out, u, 4);
    } else {
      std::uint64_t u;
      std::memcpy(&u, &v, 8);
      npy_store_le(out, u, 8);
    }
  }
  return bytes;
}

}  // namespace detail

/// Parses the bytes of a .npy file held in memory (the reader behind read_npy; fuzzers call it
/// directly). Never reads outside [data, data + size).
///
/// \param data  the file's bytes (may be null when size is 0)
/// \param size  number of bytes
/// \param name  the name used in error messages (usually the path)
/// \return shape and values (as double, C order)
/// Throws std::runtime_error("maskpos: read_npy: <name>: <problem>") for: a bad magic string, an
/// unsupported version, a header longer than 10000 bytes or than the file, bad dict syntax, a missing,
/// duplicate or unknown key, a big-endian, object, structured or other unsupported dtype, more than 32
/// dimensions, a shape whose byte size overflows, truncated data and trailing bytes after the data.
inline NpyArray parse_npy(const std::uint8_t* data, std::size_t size, const std::string& name) {
  static const std::uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 6 || std::memcmp(data, magic, 6) != 0) detail::npy_fail(name, "bad magic string (not a .npy file)");
  if (size < 8) detail::npy_fail(name, "truncated preamble (no version bytes)");
  const unsigned major = data[6], minor = data[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    detail::npy_fail(name, "unsupported format version " + std::to_string(major) + "." + std::to_string(minor) +
         " (supported: 1.0, 2.0, 3.0)");
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  if (size < 8 + length_bytes) detail::npy_fail(name, "truncated preamble (no header length)");
  const std::uint64_t header_length = detail::npy_load_le(data + 8, length_bytes);
  if (header_length > detail::kNpyMaxHeaderSize)
    detail::npy_fail(name, "absurd header length " + std::to_string(header_length) + " (more than " +
         std::to_string(detail::kNpyMaxHeaderSize) + " bytes)");
  const std::size_t header_start = 8 + length_bytes;
  if (header_length > size - header_start)
    detail::npy_fail(name, "truncated header: " + std::to_string(header_length) + " bytes announced, " +
         std::to_string(size - header_start) + " present");
  const char* header_text = reinterpret_cast<const char*>(data + header_start);
  const std::size_t header_size = static_cast<std::size_t>(header_length);
  for (std::size_t k = 0; k < header_size; ++k)
    if (header_text[k] == '\0' || static_cast<unsigned char>(header_text[k]) >= 0x80)
      detail::npy_fail(name, "the header contains a non-ASCII or NUL byte");

  detail::NpyHeaderParser::Header header;
  try {
    header = detail::NpyHeaderParser(header_text, header_size).parse();
  } catch (const detail::NpyParseError& error) {
    detail::npy_fail(name, error.what());
  }

  NpyArray array;
  std::size_t item = 0;
  if (header.descr == "<f8") {
    array.dtype = NpyDtype::Float64;
    item = 8;
  } else if (header.descr == "<f4") {
    array.dtype = NpyDtype::Float32;
    item = 4;
  } else if (!header.descr.empty() && header.descr[0] == '>') {
    detail::npy_fail(name, "big-endian dtype '" + header.descr + "' is not supported (use '<f4' or '<f8')");
  } else if (header.descr.size() >= 2 && header.descr[1] == 'O') {
    detail::npy_fail(name, "object dtype '" + header.descr + "' is not supported (use '<f4' or '<f8')");
  } else {
    detail::npy_fail(name, "unsupported dtype '" + header.descr + "' (supported: '<f4', '<f8')");
  }
  array.fortran_order = header.fortran_order;
  array.shape = header.shape;

  std::size_t count = 1;
  for (std::size_t n : array.shape) {
    if (n != 0 && count > std::numeric_limits<std::size_t>::max() / n)
      detail::npy_fail(name, "shape " + detail::npy_shape_text(array.shape) + " is too large");
    count *= n;
  }
  if (count > std::numeric_limits<std::size_t>::max() / item)
    detail::npy_fail(name, "shape " + detail::npy_shape_text(array.shape) + " is too large");
  const std::size_t data_start = header_start + header_size;
  const std::size_t needed = count * item, present = size - data_start;
  if (present < needed)
    detail::npy_fail(name, "truncated data: the shape " + detail::npy_shape_text(array.shape) + " needs " + std::to_string(needed) +
         " bytes, " + std::to_string(present) + " present");
  if (present > needed)
    detail::npy_fail(name, "size mismatch: the shape " + detail::npy_shape_text(array.shape) + " needs " + std::to_string(needed) +
         " bytes, but " + std::to_string(present) + " follow the header");

  array.data.resize(count);
  const std::uint8_t* in = data + data_start;
  const auto value_at = [&](std::size_t k) {
    if (item == 4) {
      const std::uint32_t u = static_cast<std::uint32_t>(detail::npy_load_le(in + 4 * k, 4));
      float f;
      std::memcpy(&f, &u, 4);
      return static_cast<double>(f);
    }
    const std::uint64_t u = detail::npy_load_le(in + 8 * k, 8);
    double d;
    std::memcpy(&d, &u, 8);
    return d;
  };
  if (!array.fortran_order || array.shape.size() <= 1) {
    for (std::size_t k = 0; k < count; ++k) array.data[k] = value_at(k);
  } else {
    // Walk the file (Fortran order: first index fastest) with a multi-index and place each value at its
    // C-order position.
    const std::size_t ndim = array.shape.size();
    std::vector<std::size_t> c_stride(ndim, 1), index(ndim, 0);
    for (std::size_t d = ndim - 1; d > 0; --d) c_stride[d - 1] = c_stride[d] * array.shape[d];
    std::size_t c_offset = 0;
    for (std::size_t k = 0; k < count; ++k) {
      array.data[c_offset] = value_at(k);
      for (std::size_t d = 0; d < ndim; ++d) {
        if (++index[d] < array.shape[d]) {
          c_offset += c_stride[d];
          break;
        }
        c_offset -= (array.shape[d] - 1) * c_stride[d];
        index[d] = 0;
      }
    }
  }
  return array;
}

/// Reads a .npy file. \return shape and values as double in C order.
/// Throws std::runtime_error naming the file and the problem (see parse_npy; also when the file cannot
/// be opened or read).
inline NpyArray read_npy(const std::string& path) {
  const std::vector<std::uint8_t> bytes = detail::read_file(path);
  return parse_npy(bytes.data(), bytes.size(), path);
}

/// The matrices of a 2-D array (one matrix, shape [rows, cols]) or a 3-D array (shape [n, rows, cols]:
/// n matrices, entry [k, i, j] is matrix k at (i, j)).
/// Throws std::runtime_error naming `name` when the array has another number of dimensions, or when
/// it is 3-D with n >= 1 empty matrices (rows or cols 0; a 2-D empty matrix is returned as such), or
/// when array.data does not hold exactly product(shape) values (possible only for a hand-made NpyArray).
inline std::vector<Matrix<double>> npy_to_matrices(const NpyArray& array, const std::string& name = "array") {
  if (array.ndim() != 2 && array.ndim() != 3)
    detail::throw_file_error("read_npy", name,
                             "expected a 2-D or 3-D array, got shape " + detail::npy_shape_text(array.shape));
  const std::size_t n = array.ndim() == 3 ? array.shape[0] : 1;
  const std::size_t rows = array.shape[array.ndim() - 2], cols = array.shape[array.ndim() - 1];
  if (rows > static_cast<std::size_t>(std::numeric_limits<Index>::max()) ||
      cols > static_cast<std::size_t>(std::numeric_limits<Index>::max()))
    detail::throw_file_error("read_npy", name, "matrix dimensions too large");
  // Each matrix costs memory even when it holds no values, so n empty matrices would let a file of
  // a hundred bytes demand n * sizeof(Matrix) bytes (found by fuzz/fuzz_npy): refuse such stacks.
  const bool per_overflows = cols != 0 && rows > std::numeric_limits<std::size_t>::max() / cols;
  const std::size_t per = per_overflows ? 0 : rows * cols;
  if (array.ndim() == 3 && n > 0 && per == 0 && !per_overflows)
    detail::throw_file_error("read_npy", name,
                             "a stack of empty matrices, shape " + detail::npy_shape_text(array.shape) +
                                 " (each matrix needs at least one row and one column)");
  // NpyArray is a plain struct: check that data holds the values its shape promises (never read past it).
  if (per_overflows || (per == 0 ? !array.data.empty() : array.data.size() % per != 0 || array.data.size() / per != n))
    detail::throw_file_error("read_npy", name,
                             "shape " + detail::npy_shape_text(array.shape) + " does not match the " +
                                 std::to_string(array.data.size()) + " values held");
  std::vector<Matrix<double>> matrices;
  matrices.reserve(n);
  for (std::size_t k = 0; k < n; ++k) {
    Matrix<double> m(static_cast<Index>(rows), static_cast<Index>(cols));
    // No loop over the rows of a matrix without columns: a (2^39, 0) file is 128 bytes (found by fuzz_npy).
    if (m.size() > 0) {
      const double* block = array.data.data() + k * rows * cols;
      for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < cols; ++j) m(static_cast<Index>(i), static_cast<Index>(j)) = block[i * cols + j];
    }
    matrices.push_back(std::move(m));
  }
  return matrices;
}

/// Reads a 2-D .npy file as one matrix or a 3-D one as a stack of matrices (see npy_to_matrices).
/// Throws std::runtime_error naming the file and the problem.
inline std::vector<Matrix<double>> read_npy_matrices(const std::string& path) {
  return npy_to_matrices(read_npy(path), path);
}

/// The bytes of a .npy file holding `matrix` (2-D, C order) without writing them anywhere.
inline std::vector<std::uint8_t> encode_npy(const Matrix<double>& matrix, NpyDtype dtype = NpyDtype::Float64) {
  const std::size_t rows = static_cast<std::size_t>(matrix.rows()), cols = static_cast<std::size_t>(matrix.cols());
  return detail::npy_encode({rows, cols}, dtype, [&](std::size_t k) {
    return matrix(static_cast<Index>(k / cols), static_cast<Index>(k % cols));
  });
}

/// The bytes of a 3-D .npy file of shape [n, rows, cols] holding `stack`.
/// \pre all matrices have the same size (else std::invalid_argument)
inline std::vector<std::uint8_t> encode_npy(const std::vector<Matrix<double>>& stack,
                                            NpyDtype dtype = NpyDtype::Float64) {
  const std::size_t rows = stack.empty() ? 0 : static_cast<std::size_t>(stack[0].rows());
  const std::size_t cols = stack.empty() ? 0 : static_cast<std::size_t>(stack[0].cols());
  for (std::size_t k = 0; k < stack.size(); ++k)
    detail::require(static_cast<std::size_t>(stack[k].rows()) == rows && static_cast<std::size_t>(stack[k].cols()) == cols,
                    "stack[" + std::to_string(k) + "] size",
                    std::to_string(stack[k].rows()) + "x" + std::to_string(stack[k].cols()),
                    "the size of stack[0], " + std::to_string(rows) + "x" + std::to_string(cols));
  const std::size_t per = rows * cols;
  return detail::npy_encode({stack.size(), rows, cols}, dtype, [&](std::size_t k) {
    const std::size_t within = k % per;
    return stack[k / per](static_cast<Index>(within / cols), static_cast<Index>(within % cols));
  });
}

/// The bytes of a 1-D .npy file holding `values`.
inline std::vector<std::uint8_t> encode_npy(const std::vector<double>& values, NpyDtype dtype = NpyDtype::Float64) {
  return detail::npy_encode({values.size()}, dtype, [&](std::size_t k) { return values[k]; });
}

/// Writes `matrix` as a 2-D .npy file (C order, version 1.0) readable by numpy.load. NaN and infinities
/// are stored as such (float32 keeps NaN and infinities; finite values are rounded to nearest float).
/// The file appears complete or not at all (temporary file + rename).
/// Throws std::runtime_error naming the file when it cannot be written (nothing is left behind).
inline void write_npy(const std::string& path, const Matrix<double>& matrix, NpyDtype dtype = NpyDtype::Float64) {
  detail::write_file_atomically(path, encode_npy(matrix, dtype));
}

/// Writes a stack of equally sized matrices as a 3-D .npy file of shape [n, rows, cols].
/// \pre all matrices have the same size (else std::invalid_argument, nothing written)
inline void write_npy(const std::string& path, const std::vector<Matrix<double>>& stack,
                      NpyDtype dtype = NpyDtype::Float64) {
  detail::write_file_atomically(path, encode_npy(stack, dtype));
}

/// Writes a 1-D .npy file. (An Eigen vector v is written as a 1-D array by passing
/// std::vector<double>(v.begin(), v.end()); passed directly it is a one-column 2-D matrix.)
inline void write_npy(const std::string& path, const std::vector<double>& values, NpyDtype dtype = NpyDtype::Float64) {
  detail::write_file_atomically(path, encode_npy(values, dtype));
}

}  // namespace maskpos
