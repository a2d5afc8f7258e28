// A deliberately small safetensors writer for the tests, written from the format description
// (8-byte little-endian header length, JSON header, row-major little-endian data) and sharing no code
// with include/maskpos: the JSON is assembled by hand and the 16-bit encoders are written from the
// IEEE-754 / bfloat16 definitions. It only encodes values that the target dtype represents exactly
// (the tests choose such values), and fails loudly otherwise, so the file holds exactly the
// intended numbers whatever the dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace testio {

struct Tensor {
  std::string name;
  std::string dtype;                 // "F32", "F16", "BF16"
  std::vector<std::uint64_t> shape;  // row-major
  std::vector<double> values;        // row-major, exactly representable in dtype
};

inline void append_le(std::vector<unsigned char>& out, std::uint64_t bits, int bytes) {
  for (int k = 0; k < bytes; ++k) out.push_back(static_cast<unsigned char>((bits >> (8 * k)) & 0xFF));
}

inline std::uint32_t f32_bits(double value) {
  const float f = static_cast<float>(value);
  if (static_cast<double>(f) != value) throw std::logic_error("test writer: value not exact in F32");
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

// bfloat16 is the upper half of a binary32; exact values have a zero lower half.
inline std::uint16_t bf16_bits(double value) {
  const std::uint32_t bits = f32_bits(value);
  if ((bits & 0xFFFFu) != 0) throw std::logic_error("test writer: value not exact in BF16");
  return static_cast<std::uint16_t>(bits >> 16);
}

// binary16 from the definition value = (-1)^s 2^(E - 15) (1 + m / 1024), normal numbers only.
inline std::uint16_t f16_bits(double value) {
  if (value == 0) return std::signbit(value) ? 0x8000 : 0;
  const std::uint16_t sign = value < 0 ? 0x8000 : 0;
  int exponent = 0;
  const double fraction = std::frexp(std::fabs(value), &exponent);  // |value| = fraction 2^exponent, fraction in [0.5, 1)
  const int biased = exponent - 1 + 15;
  const double mantissa = (2 * fraction - 1) * 1024;
  if (biased < 1 || biased > 30 || mantissa != std::floor(mantissa))
    throw std::logic_error("test writer: value not exact as a normal F16");
  return static_cast<std::uint16_t>(sign | (biased << 10) | static_cast<int>(mantissa));
}

inline std::size_t width(const std::string& dtype) { return dtype == "F32" ? 4 : 2; }

inline std::vector<unsigned char> encode(const Tensor& tensor) {
  std::vector<unsigned char> bytes;
  for (const double value : tensor.values) {
    if (tensor.dtype == "F32") append_le(bytes, f32_bits(value), 4);
    else if (tensor.dtype == "BF16") append_le(bytes, bf16_bits(value), 2);
    else if (tensor.dtype == "F16") append_le(bytes, f16_bits(value), 2);
    else throw std::logic_error("test writer: dtype " + tensor.dtype);
  }
  return bytes;
}

// Writes 8-byte length + header + data exactly as given (for malformed files).
inline void write_raw(const std::string& path, std::uint64_t header_length, const std::string& header,
                      const std::vector<unsigned char>& data) {
  std::vector<unsigned char> bytes;
  append_le(bytes, header_length, 8);
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("test writer: cannot write " + path);
}

// A well-formed file: tensors stored back to back in the given order.
inline void write(const std::string& path, const std::vector<Tensor>& tensors) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::vector<unsigned char> data;
  for (const auto& tensor : tensors) {
    std::size_t count = 1;
    for (const auto extent : tensor.shape) count *= static_cast<std::size_t>(extent);
    if (count != tensor.values.size()) throw std::logic_error("test writer: shape of " + tensor.name);
    const auto bytes = encode(tensor);
    header += ",\"" + tensor.name + "\":{\"dtype\":\"" + tensor.dtype + "\",\"shape\":[";
    for (std::size_t k = 0; k < tensor.shape.size(); ++k) header += (k ? "," : "") + std::to_string(tensor.shape[k]);
    header += "],\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + bytes.size()) + "]}";
    data.insert(data.end(), bytes.begin(), bytes.end());
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';  // the format pads the header with spaces to 8 bytes
  write_raw(path, header.size(), header, data);
}

}  // namespace testio
