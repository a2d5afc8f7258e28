/// @file tile_kernels.hpp
/// @brief Register-tiled small matrix products and the masked row softmax over Eigen's SIMD packets,
/// the building blocks of detail::DecoderKernel and detail::TiledGramKernel.
///
/// The callers' tilings depend only on S, d and the mask, never on the thread or the sample, so every
/// entry is computed by the same instructions in every run: this keeps the Monte Carlo driver
/// bit-reproducible for any thread count.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#if defined(__AVX__)
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

/// Rounds n up to a multiple of m.
inline Eigen::Index round_up(Eigen::Index n, Eigen::Index m) { return (n + m - 1) / m * m; }

/// out[r][c P .. c P + P) (+)= sum_{k < depth} a[r a_stride + k] * b[k b_stride + c P .. + P),
/// for r < Rows, c < Packets: a Rows x (Packets P) tile of A B with A row-major (broadcast) and B
/// row-major (loaded as packets). With Accumulate the tile starts from the values in `out`.
template <class Scalar, int Rows, int Packets, bool Accumulate>
EIGEN_ALWAYS_INLINE void tile_product(const Scalar* a, Eigen::Index a_stride, const Scalar* b, Eigen::Index b_stride,
                         Eigen::Index depth, Scalar* out, Eigen::Index out_stride) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = packet_size<Scalar>();
  Packet acc[Rows][Packets];
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Packets; ++c)
      acc[r][c] = Accumulate ? ploadu<Packet>(out + r * out_stride + c * P) : pset1<Packet>(Scalar(0));
  for (Eigen::Index k = 0; k < depth; ++k) {
    Packet bk[Packets];
    for (int c = 0; c < Packets; ++c) bk[c] = ploadu<Packet>(b + k * b_stride + c * P);
    for (int r = 0; r < Rows; ++r) {
      const Packet ar = pset1<Packet>(a[r * a_stride + k]);
      for (int c = 0; c < Packets; ++c) acc[r][c] = pmadd(ar, bk[c], acc[r][c]);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Packets; ++c) pstoreu(out + r * out_stride + c * P, acc[r][c]);
}

/// Rows x [first_packet, end_packet) tile strip: splits the packets into tiles of at most 3 (4 x 3
/// packets use 12 accumulators + 3 loads + 1 broadcast: the 16 vector registers of AVX2).
template <class Scalar, int Rows, bool Accumulate>
inline void strip_product(const Scalar* a, Eigen::Index a_stride, const Scalar* b, Eigen::Index b_stride,
                          Eigen::Index depth, Scalar* out, Eigen::Index out_stride, Eigen::Index first_packet,
                          Eigen::Index end_packet) {
  constexpr int P = packet_size<Scalar>();
  Eigen::Index c = first_packet;
  for (; end_packet - c >= 3; c += 3)
    tile_product<Scalar, Rows, 3, Accumulate>(a, a_stride, b + c * P, b_stride, depth, out + c * P, out_stride);
  if (end_packet - c == 2)
    tile_product<Scalar, Rows, 2, Accumulate>(a, a_stride, b + c * P, b_stride, depth, out + c * P, out_stride);
  else if (end_packet - c == 1)
    tile_product<Scalar, Rows, 1, Accumulate>(a, a_stride, b + c * P, b_stride, depth, out + c * P, out_stride);
}

/// Horizontal sums of Count (<= 4) packets: sums[c] = sum of the lanes of acc[c].
template <class Scalar, int Count>
inline void reduce_packets(const PacketOf<Scalar> (&acc)[Count], Scalar* sums) {
#if defined(__AVX__) && !defined(__AVX512F__)
  if constexpr (std::is_same_v<Scalar, float> && Count >= 3) {
    // hadd twice gives [s0, s1, s2, s3] in each 128-bit half (lanes 0-3 and 4-7): add the halves.
    const __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]);
    const __m256 h23 = _mm256_hadd_ps(acc[2], Count == 4 ? acc[Count - 1] : acc[2]);
    const __m256 h = _mm256_hadd_ps(h01, h23);
    const __m128 total = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    alignas(16) float out[4];
    _mm_store_ps(out, total);
    for (int c = 0; c < Count; ++c) sums[c] = out[c];
    return;
  }
  if constexpr (std::is_same_v<Scalar, double> && Count >= 3) {
    const __m256d h01 = _mm256_hadd_pd(acc[0], acc[1]);                             // [a01 b01 a23 b23]
    const __m256d h23 = _mm256_hadd_pd(acc[2], Count == 4 ? acc[Count - 1] : acc[2]);  // [c01 d01 c23 d23]
    const __m256d total = _mm256_add_pd(_mm256_permute2f128_pd(h01, h23, 0x20), _mm256_permute2f128_pd(h01, h23, 0x31));
    alignas(32) double out[4];
    _mm256_store_pd(out, total);
    for (int c = 0; c < Count; ++c) sums[c] = out[c];
    return;
  }
#endif
  for (int c = 0; c < Count; ++c) sums[c] = Eigen::internal::predux(acc[c]);
}

/// out[r out_stride + c] = sum_{k < depth} a[r a_stride + k] b[c b_stride + k] for r < Rows, c < Keys:
/// a Rows x Keys tile of A B^T with both operands row-major (dot products along the rows, no
/// transpose needed). depth is a multiple of the packet size.
template <class Scalar, int Rows, int Keys>
EIGEN_ALWAYS_INLINE void dot_tile(const Scalar* a, Eigen::Index a_stride, const Scalar* b, Eigen::Index b_stride,
                     Eigen::Index depth, Scalar* out, Eigen::Index out_stride) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = packet_size<Scalar>();
  Packet acc[Rows][Keys];
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Keys; ++c) acc[r][c] = pset1<Packet>(Scalar(0));
  for (Eigen::Index k = 0; k < depth; k += P) {
    Packet bk[Keys];
    for (int c = 0; c < Keys; ++c) bk[c] = ploadu<Packet>(b + c * b_stride + k);
    for (int r = 0; r < Rows; ++r) {
      const Packet ar = ploadu<Packet>(a + r * a_stride + k);
      for (int c = 0; c < Keys; ++c) acc[r][c] = pmadd(ar, bk[c], acc[r][c]);
    }
  }
  for (int r = 0; r < Rows; ++r) reduce_packets<Scalar, Keys>(acc[r], out + r * out_stride);
}

/// The Rows x [begin, end) strip of A B^T (see dot_tile), in tiles of 3 keys.
template <class Scalar, int Rows>
inline void dot_strip(const Scalar* a, Eigen::Index a_stride, const Scalar* b, Eigen::Index b_stride,
                      Eigen::Index depth, Scalar* out, Eigen::Index out_stride, Eigen::Index begin, Eigen::Index end) {
  Eigen::Index j = begin;
  for (; end - j >= 3; j += 3) dot_tile<Scalar, Rows, 3>(a, a_stride, b + j * b_stride, b_stride, depth, out + j, out_stride);
  if (end - j == 2) dot_tile<Scalar, Rows, 2>(a, a_stride, b + j * b_stride, b_stride, depth, out + j, out_stride);
  else if (end - j == 1) dot_tile<Scalar, Rows, 1>(a, a_stride, b + j * b_stride, b_stride, depth, out + j, out_stride);
}

/// Row softmax over each row's visible keys [key_begin[i], key_end[i]) of the scores of rows
/// i < rows (row i at scores + i stride, aligned; stride a multiple of the packet size): scales the
/// visible scores by `scale` in place and writes the probabilities (0 on masked keys) to probs.
/// Subtracting the row maximum keeps exp() in (0, 1]: no overflow for any score scale.
/// Works on whole aligned packets with lane masks: masked lanes of the first and last packet hold
/// the lowest score (they lie outside the visible range, where scores are undefined anyway) and
/// probability 0.
///
/// With a finite `fixed_shift` >= every scaled score (see softmax_shift), that constant replaces the
/// row maximum: no maximum pass, and rows no longer wait on each other's horizontal reductions.
template <class Scalar>
inline void masked_softmax_rows(Scalar* score_rows, Scalar* prob_rows, Eigen::Index stride, Eigen::Index rows,
                                const Eigen::Index* key_begin, const Eigen::Index* key_end, Scalar scale_factor,
                                Scalar fixed_shift = std::numeric_limits<Scalar>::quiet_NaN()) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr Eigen::Index P = packet_size<Scalar>();
  const Packet scale = pset1<Packet>(scale_factor);
  const Packet lowest = pset1<Packet>(std::numeric_limits<Scalar>::lowest());
  const Packet zero = pset1<Packet>(Scalar(0));
  if (std::isfinite(fixed_shift)) {
    const Packet shift = pset1<Packet>(fixed_shift), lane_step = pset1<Packet>(static_cast<Scalar>(P));
    for (Eigen::Index i = 0; i < rows; ++i) {
      const Eigen::Index begin = key_begin[i], end = key_end[i];
      const Eigen::Index first = begin / P * P, last = round_up(end, P);
      const Packet lane_begin = pset1<Packet>(static_cast<Scalar>(begin)), lane_end = pset1<Packet>(static_cast<Scalar>(end));
      Packet lane = plset<Packet>(static_cast<Scalar>(first)), total = zero;
      Scalar* scores = score_rows + i * stride;
      Scalar* probs = prob_rows + i * stride;
      for (Eigen::Index j = first; j < last; j += P, lane = padd(lane, lane_step)) {
        const Packet visible = pand(pcmp_le(lane_begin, lane), pcmp_lt(lane, lane_end));
        const Packet x = pmul(pload<Packet>(scores + j), scale);
        pstore(scores + j, x);
        const Packet e = pselect(visible, pexp(psub(x, shift)), zero);
        pstore(probs + j, e);
        total = padd(total, e);
      }
      const Packet inv_total = pset1<Packet>(Scalar(1) / predux(total));
      for (Eigen::Index j = first; j < last; j += P) pstore(probs + j, pmul(pload<Packet>(probs + j), inv_total));
    }
    return;
  }
  for (Eigen::Index i = 0; i < rows; ++i) {
    const Eigen::Index begin = key_begin[i], end = key_end[i];
    const Eigen::Index first = begin / P * P, last = round_up(end, P);
    const Packet lane_begin = pset1<Packet>(static_cast<Scalar>(begin)), lane_end = pset1<Packet>(static_cast<Scalar>(end));
    // Lane indices of the first packet, advanced by P per packet (no int -> float conversion in
    // the loop: it carries a false dependency on its destination register).
    const Packet lane_first = plset<Packet>(static_cast<Scalar>(first)), lane_step = pset1<Packet>(static_cast<Scalar>(P));
    Scalar* scores = score_rows + i * stride;
    Scalar* probs = prob_rows + i * stride;
    Packet row_max = lowest, lane = lane_first;
    for (Eigen::Index j = first; j < last; j += P, lane = padd(lane, lane_step)) {
      const Packet visible = pand(pcmp_le(lane_begin, lane), pcmp_lt(lane, lane_end));
      const Packet x = pselect(visible, pmul(pload<Packet>(scores + j), scale), lowest);
      pstore(scores + j, x);
      row_max = pmax(row_max, x);
    }
    const Packet shift = pset1<Packet>(predux_max(row_max));
    Packet total = zero;
    lane = lane_first;
    for (Eigen::Index j = first; j < last; j += P, lane = padd(lane, lane_step)) {
      const Packet visible = pand(pcmp_le(lane_begin, lane), pcmp_lt(lane, lane_end));
      const Packet e = pselect(visible, pexp(psub(pload<Packet>(scores + j), shift)), zero);
      pstore(probs + j, e);
      total = padd(total, e);
    }
    const Packet inv_total = pset1<Packet>(Scalar(1) / predux(total));
    for (Eigen::Index j = first; j < last; j += P) pstore(probs + j, pmul(pload<Packet>(probs + j), inv_total));
  }
}

/// A constant softmax shift valid for every row of the decoder when one exists. With Q = K,
/// Cauchy-Schwarz bounds every score by c max_i |q_i|^2; L2 gives |y| <= 1, LayerNorm and RMSNorm
/// |y|^2 <= d, and RoPE multiplies the rotated coordinates by the attention factor f (so |q|^2 <=
/// max(1, f^2) |y|^2). Returns that bound when exp(-2 bound) stays far from underflow (2 bound <= 60:
/// exp(-60) ~ 1e-26, a normal float), NaN otherwise (use the row maximum). Scores may exceed the
/// bound by rounding: exp(s - bound) is then slightly above 1, harmless.
inline double softmax_shift(bool unit_rows, bool width_rows, double scale, double rope_factor, Eigen::Index dim) {
  const double gain = scale * std::max(1.0, rope_factor * rope_factor);
  const double bound = unit_rows ? gain : width_rows ? gain * static_cast<double>(dim) : 0.0;
  return (unit_rows || width_rows) && 2 * bound <= 60 ? bound : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace maskpos::detail
