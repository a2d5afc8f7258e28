/// @file packet_math.hpp
/// @brief Element-wise functions of Eigen's SIMD packets whose bits are the same on every processor
/// that runs the build: the library's own exp and a correctly rounded square root.
///
/// Eigen's psqrt is not one of them: with EIGEN_FAST_MATH (Eigen's default) its float packets on
/// SSE, AVX and AVX-512 take the approximate reciprocal square root instruction (rsqrtps) and one
/// Newton step, and rsqrtps's bits are left to the processor model (its tables differ between
/// vendors and generations): the same build and seed would give different results on different
/// machines. Every square root of a float packet in maskpos goes through sqrt_packet instead.
#pragma once

#include <Eigen/Core>

#include <type_traits>

#if defined(__SSE2__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace maskpos::detail {

/// The SIMD packet of Scalar that Eigen uses in this build (a scalar when there is no SIMD).
template <class Scalar>
using PacketOf = typename Eigen::internal::packet_traits<Scalar>::type;

template <class Scalar>
constexpr int packet_size() {
  return Eigen::internal::packet_traits<Scalar>::size;
}

/// exp(x) of a packet, for the softmax (arguments <= about 0). Eigen's pexp, except for float on
/// AVX2: Cephes' expf (the polynomial Eigen's pexp uses as well, about 1 ulp) with the power of two
/// put into the exponent bits directly, about half of pexp's instructions. Results below 2^-125
/// (x < -86.5) are flushed to 0 (an absolute error below 3e-38, far beneath what the decoder's
/// probabilities resolve); NaN stays NaN.
///
/// InRange: the caller knows every argument it will use lies in [-86.5, 88] (the softmax with a
/// constant shift: its arguments lie in [-2 bound, 0] up to rounding, 2 bound <= 60); the clamps and
/// the flush are then left out. Lanes outside that range (masked lanes the caller discards) give
/// arbitrary bits.
template <class Scalar, bool InRange = false>
EIGEN_ALWAYS_INLINE PacketOf<Scalar> exp_packet(const PacketOf<Scalar>& x) {
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
  if constexpr (std::is_same_v<Scalar, float>) {
    // x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 split in two for an exact n ln 2), then
    // exp(r) = 1 + r + r^2 p(r) and exp(x) = 2^n exp(r) by adding n to the exponent bits.
    // The clamps keep 2^n normal; max / min with the constant first let a NaN through.
    const __m256 flush = InRange ? _mm256_setzero_ps() : _mm256_cmp_ps(x, _mm256_set1_ps(-86.5f), _CMP_LT_OQ);
    const __m256 y = InRange ? x : _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-86.5f), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), y);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i power = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    const __m256 value = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), power));
    return InRange ? value : _mm256_andnot_ps(flush, value);
  }
#endif
  return Eigen::internal::pexp(x);
}

/// sqrt(x) of every lane, correctly rounded (IEEE 754), so the same on every processor: the
/// square-root instruction of the packet's width for float, Eigen's psqrt otherwise (for double
/// packets and scalars that is the exact square root already). NaN and negative lanes give NaN.
template <class Packet>
EIGEN_ALWAYS_INLINE Packet sqrt_packet(const Packet& x) {
  // Told apart by lane type and count (is_same on __m256 and friends would drop their attributes).
  using Lanes = Eigen::internal::unpacket_traits<Packet>;
  [[maybe_unused]] constexpr bool is_float = std::is_same_v<typename Lanes::type, float>;
#if defined(__AVX512F__)
  if constexpr (is_float && Lanes::size == 16) return _mm512_sqrt_ps(x);
  else
#endif
#if defined(__AVX__)
  if constexpr (is_float && Lanes::size == 8) return _mm256_sqrt_ps(x);
  else
#endif
#if defined(__SSE2__)
  if constexpr (is_float && Lanes::size == 4) return _mm_sqrt_ps(x);
  else
#endif
  return Eigen::internal::psqrt(x);
}

}  // namespace maskpos::detail
