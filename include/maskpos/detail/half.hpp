/// @file half.hpp
/// @brief Decoding of the 16-bit float formats found in checkpoints (IEEE binary16 "F16" and bfloat16
/// "BF16") and of little-endian byte sequences, independent of the host's byte order.
///
/// Both 16-bit formats widen to float exactly (every F16 and BF16 value is a float), so decoding never
/// rounds: F16 has 11 significant bits (10 stored), BF16 has 8 (7 stored) and the exponent range of float.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace maskpos::detail {

/// The float with the given IEEE-754 binary32 bit pattern.
inline float float_from_bits(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

/// The double with the given IEEE-754 binary64 bit pattern.
inline double double_from_bits(std::uint64_t bits) {
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

/// Decodes an IEEE-754 binary16 value (sign 1, exponent 5 with bias 15, mantissa 10):
/// \f$ (-1)^s 2^{e-15} (1 + m/1024) \f$ for 1 <= e <= 30, \f$ (-1)^s 2^{-14} m/1024 \f$ for e = 0
/// (subnormals), infinities and NaNs (payload kept) for e = 31.
inline float f16_to_float(std::uint16_t half) {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1Fu;
  const std::uint32_t mantissa = half & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: m * 2^-24 is exact in float (m < 2^10).
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 31) return float_from_bits(sign | 0x7F800000u | (mantissa << 13));
  // Rebias the exponent from 15 to 127 and widen the mantissa from 10 to 23 bits.
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/// Decodes a bfloat16 value: by definition the upper 16 bits of a binary32 float.
inline float bf16_to_float(std::uint16_t bf16) { return float_from_bits(static_cast<std::uint32_t>(bf16) << 16); }

/// Little-endian unsigned integers from raw bytes (the byte order of safetensors and .npy data).
inline std::uint16_t load_le16(const unsigned char* bytes) {
  return static_cast<std::uint16_t>(bytes[0] | (bytes[1] << 8));
}
inline std::uint32_t load_le32(const unsigned char* bytes) {
  return static_cast<std::uint32_t>(bytes[0]) | (static_cast<std::uint32_t>(bytes[1]) << 8) |
         (static_cast<std::uint32_t>(bytes[2]) << 16) | (static_cast<std::uint32_t>(bytes[3]) << 24);
}
inline std::uint64_t load_le64(const unsigned char* bytes) {
  return static_cast<std::uint64_t>(load_le32(bytes)) | (static_cast<std::uint64_t>(load_le32(bytes + 4)) << 32);
}

}  // namespace maskpos::detail
