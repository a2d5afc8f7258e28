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

template <class Scalar, bool InRange, int N>
EIGEN_ALWAYS_INLINE void exp_packets(PacketOf<Scalar> (&x)[N]);

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
  PacketOf<Scalar> one[1] = {x};
  exp_packets<Scalar, InRange, 1>(one);
  return one[0];
}

/// x[k] = exp_packet(x[k]) for k < N, with the same instructions on every lane (so the same bits),
/// issued step by step across the N packets: N independent chains of about 14 dependent operations
/// stand side by side in the instruction stream, so the processor overlaps them without having to
/// look far ahead (a small floating-point scheduler, as Zen 2's, otherwise runs them nearly one after
/// the other).
template <class Scalar, bool InRange, int N>
EIGEN_ALWAYS_INLINE void exp_packets(PacketOf<Scalar> (&x)[N]) {
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
  if constexpr (std::is_same_v<Scalar, float>) {
    // x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 split in two for an exact n ln 2), then
    // exp(r) = 1 + r + r^2 p(r) and exp(x) = 2^n exp(r) by adding n to the exponent bits.
    // The clamps keep 2^n normal; max / min with the constant first let a NaN through.
    __m256 flush[N], n[N], r[N], p[N];
    for (int k = 0; k < N; ++k) {
      flush[k] = InRange ? _mm256_setzero_ps() : _mm256_cmp_ps(x[k], _mm256_set1_ps(-86.5f), _CMP_LT_OQ);
      if (!InRange) x[k] = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-86.5f), x[k]));
    }
    for (int k = 0; k < N; ++k)
      n[k] = _mm256_round_ps(_mm256_mul_ps(x[k], _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    for (int k = 0; k < N; ++k) r[k] = _mm256_fnmadd_ps(n[k], _mm256_set1_ps(0.693359375f), x[k]);
    for (int k = 0; k < N; ++k) r[k] = _mm256_fnmadd_ps(n[k], _mm256_set1_ps(-2.12194440e-4f), r[k]);
    for (int k = 0; k < N; ++k) p[k] = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r[k], _mm256_set1_ps(1.3981999507e-3f));
    for (int k = 0; k < N; ++k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(8.3334519073e-3f));
    for (int k = 0; k < N; ++k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(4.1665795894e-2f));
    for (int k = 0; k < N; ++k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(1.6666665459e-1f));
    for (int k = 0; k < N; ++k) p[k] = _mm256_fmadd_ps(p[k], r[k], _mm256_set1_ps(5.0000001201e-1f));
    for (int k = 0; k < N; ++k)
      p[k] = _mm256_fmadd_ps(p[k], _mm256_mul_ps(r[k], r[k]), _mm256_add_ps(r[k], _mm256_set1_ps(1.0f)));
    for (int k = 0; k < N; ++k) {
      const __m256i power = _mm256_slli_epi32(_mm256_cvtps_epi32(n[k]), 23);
      const __m256 value = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p[k]), power));
      x[k] = InRange ? value : _mm256_andnot_ps(flush[k], value);
    }
    return;
  }
#endif
  for (int k = 0; k < N; ++k) x[k] = Eigen::internal::pexp(x[k]);
}

/// x[k] = ln x[k] for k < N, for lanes holding positive normal floats (nothing is checked: zero,
/// negative, subnormal, infinite and NaN lanes give arbitrary bits). Eigen's plog (Cephes' logf
/// polynomial) with the same operations in the same order, so the same bits on such lanes, but
/// with the exponent and mantissa read straight from the bits (Eigen's pfrexp also handles
/// subnormals) and without the special cases; issued step by step across the N packets, like
/// exp_packets. Other packets than AVX2 float: Eigen's plog.
template <class Scalar, int N>
EIGEN_ALWAYS_INLINE void log_positive_normal_packets(PacketOf<Scalar> (&x)[N]) {
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
  if constexpr (std::is_same_v<Scalar, float>) {
    // x = m 2^e with m in [0.5, 1): e = biased exponent - 126, m = x's mantissa under 0.5's exponent.
    __m256 e[N], small[N], x2[N], x3[N], y[N], y1[N], y2[N];
    for (int k = 0; k < N; ++k) {
      const __m256i bits = _mm256_castps_si256(x[k]);
      e[k] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
      x[k] = _mm256_castsi256_ps(
          _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x807fffff)), _mm256_set1_epi32(0x3f000000)));
    }
    // m < sqrt(1/2): x = 2 m - 1 and e - 1; otherwise x = m - 1.
    for (int k = 0; k < N; ++k) {
      small[k] = _mm256_cmp_ps(x[k], _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
      const __m256 twice = _mm256_and_ps(x[k], small[k]);
      x[k] = _mm256_add_ps(_mm256_sub_ps(x[k], _mm256_set1_ps(1.0f)), twice);
      e[k] = _mm256_sub_ps(e[k], _mm256_and_ps(_mm256_set1_ps(1.0f), small[k]));
    }
    for (int k = 0; k < N; ++k) {
      x2[k] = _mm256_mul_ps(x[k], x[k]);
      x3[k] = _mm256_mul_ps(x2[k], x[k]);
    }
    for (int k = 0; k < N; ++k) {
      y[k] = _mm256_fmadd_ps(_mm256_set1_ps(7.0376836292E-2f), x[k], _mm256_set1_ps(-1.1514610310E-1f));
      y1[k] = _mm256_fmadd_ps(_mm256_set1_ps(-1.2420140846E-1f), x[k], _mm256_set1_ps(+1.4249322787E-1f));
      y2[k] = _mm256_fmadd_ps(_mm256_set1_ps(+2.0000714765E-1f), x[k], _mm256_set1_ps(-2.4999993993E-1f));
    }
    for (int k = 0; k < N; ++k) {
      y[k] = _mm256_fmadd_ps(y[k], x[k], _mm256_set1_ps(1.1676998740E-1f));
      y1[k] = _mm256_fmadd_ps(y1[k], x[k], _mm256_set1_ps(-1.6668057665E-1f));
      y2[k] = _mm256_fmadd_ps(y2[k], x[k], _mm256_set1_ps(+3.3333331174E-1f));
    }
    for (int k = 0; k < N; ++k) y[k] = _mm256_fmadd_ps(y[k], x3[k], y1[k]);
    for (int k = 0; k < N; ++k) y[k] = _mm256_fmadd_ps(y[k], x3[k], y2[k]);
    for (int k = 0; k < N; ++k) y[k] = _mm256_mul_ps(y[k], x3[k]);
    for (int k = 0; k < N; ++k) y[k] = _mm256_fmadd_ps(_mm256_set1_ps(-0.5f), x2[k], y[k]);
    for (int k = 0; k < N; ++k) x[k] = _mm256_add_ps(x[k], y[k]);
    for (int k = 0; k < N; ++k) x[k] = _mm256_fmadd_ps(e[k], _mm256_set1_ps(static_cast<float>(EIGEN_LN2)), x[k]);
    return;
  }
#endif
  for (int k = 0; k < N; ++k) x[k] = Eigen::internal::plog(x[k]);
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
