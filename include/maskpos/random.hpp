/// @file random.hpp
/// @brief Counter-based random streams (Philox4x32-10 from Random123): sample b's numbers depend
/// only on (seed, b), so results never depend on the thread count or on the order samples run in.
#pragma once

#include <Random123/philox.h>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "detail/errors.hpp"
#include "detail/packet_math.hpp"
#include "types.hpp"

namespace maskpos {

namespace detail {

/// Philox4x32-10 on kPhiloxLanes consecutive counters at once (AVX2: 8 counters per register;
/// otherwise a plain loop). Lane j computes exactly
/// r123::Philox4x32()({{c0, c1, c2 + j, c3}}, {{k0, k1}}) (the tests check this against Random123).
constexpr int kPhiloxLanes = 16;

inline void philox4x32_10_lanes(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                                std::uint32_t k0, std::uint32_t k1, std::uint32_t (&words)[4][kPhiloxLanes]) {
  constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr std::uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__AVX2__)
  // 8 lanes per register. _mm256_mul_epu32 multiplies the even 32-bit lanes into 64-bit products;
  // the odd lanes are shifted down first. lo / hi interleave the two product sets back.
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kM0)), m1 = _mm256_set1_epi32(static_cast<int>(kM1));
  const __m256i ramp = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  constexpr int kRegs = kPhiloxLanes / 8;
  __m256i x0[kRegs], x1[kRegs], x2[kRegs], x3[kRegs];
  for (int r = 0; r < kRegs; ++r) {
    x0[r] = _mm256_set1_epi32(static_cast<int>(c0));
    x1[r] = _mm256_set1_epi32(static_cast<int>(c1));
    x2[r] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c2 + 8u * static_cast<std::uint32_t>(r))), ramp);
    x3[r] = _mm256_set1_epi32(static_cast<int>(c3));
  }
  auto mulhilo = [](__m256i a, __m256i m, __m256i& hi) {
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  };
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)), key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int r = 0; r < kRegs; ++r) {
      __m256i hi0, hi1;
      const __m256i lo0 = mulhilo(x0[r], m0, hi0);
      const __m256i lo1 = mulhilo(x2[r], m1, hi1);
      x0[r] = _mm256_xor_si256(_mm256_xor_si256(hi1, x1[r]), key0);
      x2[r] = _mm256_xor_si256(_mm256_xor_si256(hi0, x3[r]), key1);
      x1[r] = lo1;
      x3[r] = lo0;
    }
    k0 += kW0;
    k1 += kW1;
  }
  for (int r = 0; r < kRegs; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[0] + 8 * r), x0[r]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[1] + 8 * r), x1[r]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[2] + 8 * r), x2[r]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[3] + 8 * r), x3[r]);
  }
#else
  for (int j = 0; j < kPhiloxLanes; ++j) {
    std::uint32_t x0 = c0, x1 = c1, x2 = c2 + static_cast<std::uint32_t>(j), x3 = c3;
    std::uint32_t key0 = k0, key1 = k1;
    for (int round = 0; round < 10; ++round) {
      const std::uint64_t p0 = std::uint64_t{kM0} * x0, p1 = std::uint64_t{kM1} * x2;
      const std::uint32_t y0 = static_cast<std::uint32_t>(p1 >> 32) ^ x1 ^ key0;
      const std::uint32_t y2 = static_cast<std::uint32_t>(p0 >> 32) ^ x3 ^ key1;
      x1 = static_cast<std::uint32_t>(p1);
      x3 = static_cast<std::uint32_t>(p0);
      x0 = y0;
      x2 = y2;
      key0 += kW0;
      key1 += kW1;
    }
    words[0][j] = x0;
    words[1][j] = x1;
    words[2][j] = x2;
    words[3][j] = x3;
  }
#endif
}

/// Box-Muller in float on 2 x kPhiloxLanes pairs of 32-bit words: writes 4 kPhiloxLanes normals,
/// out = [r_a cos t_a | r_a sin t_a | r_b cos t_b | r_b sin t_b] (kPhiloxLanes each), where pair a
/// uses words 0 (radius) and 1 (angle), pair b words 2 and 3.
///
/// Radius: u = (2 (w >> 9) + 1) 2^-24 is exact in float and lies in [2^-24, 1 - 2^-24], so
/// r = sqrt(-2 ln u) <= sqrt(48 ln 2) = 5.77 (P(R > 5.77) = 2^-24 for a true normal pair); ln u has
/// the bits of Eigen's vectorised log, the square root is correctly rounded (sqrt_packet).
/// Angle: the top two bits pick a quarter turn q, the next 23 bits phi uniform in (-pi/4, pi/4);
/// t = q pi/2 + phi is uniform on the circle. sin and cos of phi are Taylor polynomials to phi^9 and
/// phi^10 (truncation below 2.5e-8, under half a float ulp of 1), the quarter turn is an exact swap
/// and sign change.
inline void box_muller_lanes(const std::uint32_t (&words)[4][kPhiloxLanes], float* out) {
  constexpr int N = kPhiloxLanes;
  constexpr float kTwoToMinus24 = 1.0f / 16777216.0f;
  constexpr float kHalfPi = 1.57079632679489661923f;
  // The radii of both pairs first: their logarithms interleaved (log_positive_normal_packets, Eigen's
  // plog bits: u is a positive normal float), the square roots correctly rounded (not Eigen's
  // .sqrt(), whose float packets take an approximate instruction with processor-dependent bits;
  // see packet_math.hpp).
  using Packet = PacketOf<float>;
  constexpr int P = packet_size<float>();
  static_assert(N % P == 0, "whole packets of lanes");
  constexpr int G = 2 * N / P;
  alignas(64) float radius[2 * N];
  for (int pair = 0; pair < 2; ++pair)
    for (int j = 0; j < N; ++j)
      radius[pair * N + j] =
          static_cast<float>(static_cast<std::int32_t>(((words[2 * pair][j] >> 9) << 1) | 1u)) * kTwoToMinus24;
  Packet logs[G];
  for (int g = 0; g < G; ++g) logs[g] = Eigen::internal::pload<Packet>(radius + g * P);
  log_positive_normal_packets<float, G>(logs);
  for (int g = 0; g < G; ++g)
    Eigen::internal::pstore(radius + g * P, sqrt_packet(Eigen::internal::pmul(Eigen::internal::pset1<Packet>(-2.0f), logs[g])));
  for (int pair = 0; pair < 2; ++pair) {
    const std::uint32_t* angle_words = words[2 * pair + 1];
    float* cosines = out + 2 * pair * N;
    float* sines = cosines + N;
    for (int j = 0; j < N; ++j) {
      const std::uint32_t w = angle_words[j];
      const float fraction = static_cast<float>(static_cast<std::int32_t>(((w >> 6) & 0xFFFFFEu) | 1u)) * kTwoToMinus24;
      const float phi = (fraction - 0.5f) * kHalfPi;
      const float p2 = phi * phi;
      const float s = phi * (1.0f + p2 * (-1.0f / 6 + p2 * (1.0f / 120 + p2 * (-1.0f / 5040 + p2 * (1.0f / 362880)))));
      const float c = 1.0f + p2 * (-0.5f + p2 * (1.0f / 24 + p2 * (-1.0f / 720 + p2 * (1.0f / 40320 + p2 * (-1.0f / 3628800)))));
      // Quarter turns q = w >> 30: 0: (c, s); 1: (-s, c); 2: (-c, -s); 3: (s, -c). An odd q swaps c
      // and s; the cosine is negated when bits 31 and 30 of w differ (q = 1, 2), the sine when bit 31
      // is set (q = 2, 3): sign-bit flips, exact, and blends (vectorised without branches).
      const bool odd = (w >> 30) & 1u;
      const float a = odd ? s : c, b = odd ? c : s;
      std::uint32_t a_bits, b_bits;
      std::memcpy(&a_bits, &a, sizeof a);
      std::memcpy(&b_bits, &b, sizeof b);
      a_bits ^= (w ^ (w << 1)) & 0x80000000u;
      b_bits ^= w & 0x80000000u;
      float cosine, sine;
      std::memcpy(&cosine, &a_bits, sizeof cosine);
      std::memcpy(&sine, &b_bits, sizeof sine);
      cosines[j] = radius[pair * N + j] * cosine;
      sines[j] = radius[pair * N + j] * sine;
    }
  }
}

}  // namespace detail

/// The standard-normal stream of one Monte Carlo sample.
///
/// Philox4x32-10 is keyed by the 64-bit seed; the counter holds the 64-bit sample index and a
/// 32-bit counter number, so distinct samples (and distinct seeds) never share a counter value.
/// The stream of a sample is a fixed sequence of chunks of kChunk = 64 normals: chunk t comes from
/// the 16 counters {b_lo, b_hi, 16 t + j, 0}, j = 0..15, through a float Box-Muller transform (see
/// detail::box_muller_lanes; float precision, tails beyond 5.77 sigma cut off with probability
/// 6e-8). Every fill_normal call continues the sequence where the previous one stopped, so how a
/// sample's numbers are requested never changes them; the double overload returns the same
/// numbers widened. The bits are identical for every run and thread count of the same build.
///
/// Thread safety: one stream per thread; reuse it across samples with start_sample().
class SampleStream {
 public:
  static constexpr Index kChunk = 4 * detail::kPhiloxLanes;

  explicit SampleStream(std::uint64_t seed, std::uint64_t sample = 0)
      : key0_(static_cast<std::uint32_t>(seed)), key1_(static_cast<std::uint32_t>(seed >> 32)) {
    start_sample(sample);
  }

  /// Restarts the stream at the beginning of sample `sample` (no allocation).
  void start_sample(std::uint64_t sample) {
    sample_ = sample;
    chunk_ = 0;
    buffered_ = 0;
    uniform_chunk_ = 0;
    uniform_buffered_ = 0;
  }

  /// Writes the next n standard normals of the stream to out[0..n).
  void fill_normal(float* out, Index n) {
    Index done = std::min(n, buffered_);
    for (Index k = 0; k < done; ++k) out[k] = buffer_[kChunk - buffered_ + k];
    buffered_ -= done;
    for (; n - done >= kChunk; done += kChunk) next_chunk(out + done);
    if (done < n) {
      next_chunk(buffer_);
      const Index rest = n - done;
      for (Index k = 0; k < rest; ++k) out[done + k] = buffer_[k];
      buffered_ = kChunk - rest;
    }
  }

  /// The next standard normal of the stream (the same sequence as fill_normal).
  float next_normal() {
    if (buffered_ == 0) {
      next_chunk(buffer_);
      buffered_ = kChunk;
    }
    return buffer_[kChunk - buffered_--];
  }

  /// The next number of the sample's uniform sequence, uniform on (0, 1): a second sequence,
  /// independent of the normals, read in chunks of kChunk from the counters {b_lo, b_hi, 16 t + j, 1}
  /// (the normals use counter word 3 = 0). Each 32-bit word w gives u = (w + 1/2) 2^-32, exact in double.
  double next_uniform() {
    if (uniform_buffered_ == 0) {
      if (uniform_chunk_ >= (std::uint32_t{1} << 28))
        detail::throw_invalid("uniforms drawn for one sample", uniform_chunk_, "fewer than 2^34 per sample");
      std::uint32_t words[4][detail::kPhiloxLanes];
      detail::philox4x32_10_lanes(static_cast<std::uint32_t>(sample_), static_cast<std::uint32_t>(sample_ >> 32),
                                  uniform_chunk_ * detail::kPhiloxLanes, 1u, key0_, key1_, words);
      for (int w = 0; w < 4; ++w)
        for (int j = 0; j < detail::kPhiloxLanes; ++j) uniform_words_[w * detail::kPhiloxLanes + j] = words[w][j];
      ++uniform_chunk_;
      uniform_buffered_ = kChunk;
    }
    const std::uint32_t word = uniform_words_[kChunk - uniform_buffered_--];
    return (static_cast<double>(word) + 0.5) * (1.0 / 4294967296.0);
  }

  /// Fills `out` with the next out.size() standard normals (float precision).
  void fill_normal(Eigen::Ref<Eigen::ArrayXf> out) { fill_normal(out.data(), out.size()); }

  /// The same numbers as the float overload, widened to double.
  void fill_normal(Eigen::Ref<Eigen::ArrayXd> out) {
    float chunk[kChunk];
    for (Index begin = 0; begin < out.size(); begin += kChunk) {
      const Index count = std::min(kChunk, out.size() - begin);
      fill_normal(chunk, count);
      for (Index k = 0; k < count; ++k) out[begin + k] = static_cast<double>(chunk[k]);
    }
  }

 private:
  void next_chunk(float* out) {
    if (chunk_ >= (std::uint32_t{1} << 28))
      detail::throw_invalid("normals drawn for one sample", chunk_, "fewer than 2^34 per sample");
    std::uint32_t words[4][detail::kPhiloxLanes];
    detail::philox4x32_10_lanes(static_cast<std::uint32_t>(sample_), static_cast<std::uint32_t>(sample_ >> 32),
                                chunk_ * detail::kPhiloxLanes, 0u, key0_, key1_, words);
    detail::box_muller_lanes(words, out);
    ++chunk_;
  }

  std::uint32_t key0_, key1_;
  std::uint64_t sample_ = 0;
  std::uint32_t chunk_ = 0;
  Index buffered_ = 0;  ///< unread normals at the end of buffer_
  alignas(64) float buffer_[kChunk];
  std::uint32_t uniform_chunk_ = 0;
  Index uniform_buffered_ = 0;  ///< unread words at the end of uniform_words_
  std::uint32_t uniform_words_[kChunk];
};

namespace detail {

/// One candidate of Marsaglia and Tsang's method for g ~ Gamma(a, 1), a >= 1 (ACM TOMS 26(3), 2000):
/// with c = a - 1/3, a normal x and a uniform u, v = (1 + x / sqrt(9 c))^3 is accepted if v > 0 and
/// either u < 1 - 0.0331 x^4 (the squeeze) or log u < x^2 / 2 + c (1 - v + log v); then
/// chi = sqrt(2 c v). Returns false for a rejected candidate. `root` is sqrt(9 c) (chi_root(c)).
inline bool chi_candidate(double c, double root, double x, double u, double& chi) {
  double v = 1.0 + x / root;
  if (v <= 0.0) return false;
  v = v * v * v;
  const double x2 = x * x;
  if (u < 1.0 - 0.0331 * x2 * x2 || std::log(u) < 0.5 * x2 + c * (1.0 - v + std::log(v))) {
    chi = std::sqrt(2.0 * c * v);
    return true;
  }
  return false;
}

/// sqrt(9 c), the divisor of chi_candidate.
inline double chi_root(double c) { return std::sqrt(9.0 * c); }

/// c = dof / 2 - 1/3, Marsaglia and Tsang's constant for chi(dof) (dof >= 2).
inline double chi_constant(Index dof) { return 0.5 * static_cast<double>(dof) - 1.0 / 3.0; }

}  // namespace detail

/// A chi variate with `dof` degrees of freedom: the length of a dof-dimensional standard normal
/// vector, drawn from the sample's stream without drawing the dof normals.
///
/// chi = sqrt(2 g) with g ~ Gamma(dof / 2, 1) by Marsaglia and Tsang's rejection method (see
/// detail::chi_candidate); each candidate reads one normal, then one uniform. dof = 1 is |x| for one
/// normal x and dof = 0 is 0. Fewer than 5% of the candidates are rejected for dof >= 2.
/// \pre dof >= 0
inline double draw_chi(SampleStream& stream, Index dof) {
  if (dof <= 0) return 0.0;
  if (dof == 1) return std::fabs(static_cast<double>(stream.next_normal()));
  const double c = detail::chi_constant(dof), root = detail::chi_root(c);
  for (;;) {
    const double x = stream.next_normal();
    double chi;
    if (detail::chi_candidate(c, root, x, stream.next_uniform(), chi)) return chi;
  }
}

/// chi[r] ~ chi(dof - r) for r < count, independent (the diagonal of a Bartlett factor): the method
/// of draw_chi, with the first candidates of all count variates read together (count normals in one
/// read, then a uniform for each r with dof - r >= 2; for dof - r = 1 the normal's |x|), then each rejected variate redrawn in
/// order of r as draw_chi draws (chi(0) = 0). \pre count >= 0; \pre `normals` holds count floats
///
/// `roots`, if given, holds detail::chi_root(detail::chi_constant(dof - r)) for every r < count with
/// dof - r >= 2 (computed once by a caller that draws many diagonals of one shape); otherwise each is
/// computed here. The draws are the same either way.
inline void draw_chi_diagonal(SampleStream& stream, Index dof, Index count, float* normals, double* chi,
                              const double* roots = nullptr) {
  stream.fill_normal(normals, count);
  for (Index r = 0; r < count; ++r) {
    const Index k = dof - r;
    const double x = normals[r];
    if (k <= 1) {
      chi[r] = k == 1 ? std::fabs(x) : 0.0;
      continue;
    }
    const double c = detail::chi_constant(k);
    if (!detail::chi_candidate(c, roots != nullptr ? roots[r] : detail::chi_root(c), x, stream.next_uniform(), chi[r]))
      chi[r] = -1;
  }
  for (Index r = 0; r < count; ++r)
    if (chi[r] < 0) chi[r] = draw_chi(stream, dof - r);
}

}  // namespace maskpos
