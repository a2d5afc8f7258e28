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
#include <utility>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "packet_math.hpp"

namespace maskpos::detail {

/// Rounds n up to a multiple of m.
inline Eigen::Index round_up(Eigen::Index n, Eigen::Index m) { return (n + m - 1) / m * m; }

/// out[r][c P .. c P + P) (+)= sum_{k < depth} a[r a_stride + k] * b[k b_stride + c P .. + P),
/// for r < Rows, c < Packets: a Rows x (Packets P) tile of A B with A row-major (broadcast) and B
/// row-major (loaded as packets). With Accumulate the tile starts from the values in `out`.
/// With Scaled, row r of the product is multiplied by row_scale[r] first (A = diag(row_scale) W for
/// weights W given in `a`): out = row_scale[r] (W B)[r] (+ out).
template <class Scalar, int Rows, int Packets, bool Accumulate, bool Scaled = false>
EIGEN_ALWAYS_INLINE void tile_product(const Scalar* a, Eigen::Index a_stride, const Scalar* b, Eigen::Index b_stride,
                         Eigen::Index depth, Scalar* out, Eigen::Index out_stride, const Scalar* row_scale = nullptr) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr int P = packet_size<Scalar>();
  Packet acc[Rows][Packets];
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Packets; ++c)
      acc[r][c] = Accumulate && !Scaled ? ploadu<Packet>(out + r * out_stride + c * P) : pset1<Packet>(Scalar(0));
  for (Eigen::Index k = 0; k < depth; ++k) {
    Packet bk[Packets];
    for (int c = 0; c < Packets; ++c) bk[c] = ploadu<Packet>(b + k * b_stride + c * P);
    for (int r = 0; r < Rows; ++r) {
      const Packet ar = pset1<Packet>(a[r * a_stride + k]);
      for (int c = 0; c < Packets; ++c) acc[r][c] = pmadd(ar, bk[c], acc[r][c]);
    }
  }
  if constexpr (Scaled) {
    for (int r = 0; r < Rows; ++r) {
      const Packet scale = pset1<Packet>(row_scale[r]);
      for (int c = 0; c < Packets; ++c)
        acc[r][c] = Accumulate ? pmadd(acc[r][c], scale, ploadu<Packet>(out + r * out_stride + c * P)) : pmul(acc[r][c], scale);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Packets; ++c) pstoreu(out + r * out_stride + c * P, acc[r][c]);
}

/// The whole depth for every tile (the dense case of strip_product).
struct FullDepth {
  std::pair<Eigen::Index, Eigen::Index> operator()(Eigen::Index, int, Eigen::Index depth) const { return {0, depth}; }
};

/// Rows x [first_packet, end_packet) tile strip: splits the packets into tiles of at most Widest
/// (1, 2 or 3; 4 x 3 packets use 12 accumulators + 3 loads + 1 broadcast: the 16 vector registers
/// of AVX2; 6 x 2 uses 12 + 2 + 1, 8 x 1 uses 8 + 1 + 1).
/// range(c, packets, depth) = [k0, k1) is the part of the depth where B can be non-zero in the
/// tile's packets c .. c + packets - 1 (a triangular B); the tile runs over that part only, so
/// one-packet tiles follow a triangle packet by packet. Scaled and row_scale: see tile_product.
template <class Scalar, int Rows, bool Accumulate, int Widest = 3, class Range = FullDepth, bool Scaled = false>
inline void strip_product(const Scalar* a, Eigen::Index a_stride, const Scalar* b, Eigen::Index b_stride,
                          Eigen::Index depth, Scalar* out, Eigen::Index out_stride, Eigen::Index first_packet,
                          Eigen::Index end_packet, Range range = {}, const Scalar* row_scale = nullptr) {
  static_assert(Widest >= 1 && Widest <= 3, "tiles of 1 to 3 packets");

  constexpr int P = packet_size<Scalar>();
  auto tile = [&](auto packets, Eigen::Index c) {
    auto [k0, k1] = range(c, decltype(packets)::value, depth);
    k1 = std::max(k0, k1);
    tile_product<Scalar, Rows, decltype(packets)::value, Accumulate, Scaled>(
        a + k0, a_stride, b + k0 * b_stride + c * P, b_stride, k1 - k0, out + c * P, out_stride, row_scale);
  };
  Eigen::Index c = first_packet;
  if constexpr (Widest == 3) {
    for (; end_packet - c >= 3; c += 3) tile(std::integral_constant<int, 3>(), c);
    if (end_packet - c == 2) {
      tile(std::integral_constant<int, 2>(), c);
      c += 2;
    }
  } else if constexpr (Widest == 2) {
    for (; end_packet - c >= 2; c += 2) tile(std::integral_constant<int, 2>(), c);
  }
  for (; c < end_packet; ++c) tile(std::integral_constant<int, 1>(), c);
}

/// Eigen's ptranspose of a full block of P packets, kept inline: for 8 floats on AVX the usual
/// unpack / shuffle / lane-permute sequence (Eigen's own, which GCC tends to call out of line, passing
/// the eight registers through memory).
template <class Packet, int N>
EIGEN_ALWAYS_INLINE void transpose_inline(Eigen::internal::PacketBlock<Packet, N>& block) {
#if defined(__AVX__) && !defined(__AVX512F__)
  // (Tested through the packet's traits: __m256 as a template argument warns about its attributes.)
  if constexpr (std::is_same_v<typename Eigen::internal::unpacket_traits<Packet>::type, float> && N == 8 &&
                sizeof(Packet) == 32) {
    __m256* r = block.packet;
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
    return;
  }
#endif
  Eigen::internal::ptranspose(block);
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

/// totals[r] = the sum of the lanes of sums[r], r < Rows. For a full packet of rows (Rows = P) one
/// transpose and P - 1 packet additions; totals must then be aligned.
template <class Scalar, int Rows>
EIGEN_ALWAYS_INLINE void lane_totals(const PacketOf<Scalar> (&sums)[Rows], Scalar* totals) {
  using namespace Eigen::internal;
  constexpr int P = packet_size<Scalar>();
  if constexpr (Rows == P && P > 1) {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
    PacketBlock<PacketOf<Scalar>, P> block;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
    for (int r = 0; r < Rows; ++r) block.packet[r] = sums[r];
    transpose_inline(block);  // lane r of packet t = lane t of sums[r]
    // A pairwise tree: log2(P) dependent additions instead of P - 1.
    for (int width = P / 2; width >= 1; width /= 2)
      for (int t = 0; t < width; ++t) block.packet[t] = padd(block.packet[t], block.packet[t + width]);
    pstore(totals, block.packet[0]);
  } else {
    for (int r = 0; r < Rows; ++r) totals[r] = predux(sums[r]);
  }
}

/// Rows whose exponentials masked_softmax_block interleaves (when Rows is a multiple of it).
inline constexpr int kExpGroup = 4;

/// The softmax of rows [row0, row0 + Rows) (see masked_softmax_rows), processed together: the loop
/// runs over the packets of the union of their visible ranges with the rows innermost, so Rows
/// independent exp() chains are in flight at once (issued kExpGroup at a time, interleaved) and the
/// trip count is the same for every row of the block (no per-row branches). Packets inside every row's range (for a causal block: all but
/// the diagonal one) need no lane masks; in the others, lanes outside a row's own range are masked to
/// probability 0. With Rows = P the row totals are reduced by one transpose and inverted by one
/// packet division.
template <class Scalar, int Rows>
EIGEN_ALWAYS_INLINE void masked_softmax_block(Scalar* score_rows, Scalar* prob_rows, Eigen::Index stride,
                                              Eigen::Index row0, const Eigen::Index* key_begin,
                                              const Eigen::Index* key_end, Scalar scale_factor, Scalar fixed_shift,
                                              Scalar* row_inverse) {
  using namespace Eigen::internal;
  using Packet = PacketOf<Scalar>;
  constexpr Eigen::Index P = packet_size<Scalar>();
  const Packet scale = pset1<Packet>(scale_factor), zero = pset1<Packet>(Scalar(0));
  const Packet lowest = pset1<Packet>(std::numeric_limits<Scalar>::lowest());
  // The union [first, last) of the rows' ranges in whole packets, and the packets [inner_begin,
  // inner_end) inside every row's range (empty when the ranges do not overlap on a whole packet).
  Eigen::Index first = std::numeric_limits<Eigen::Index>::max(), last = 0;
  Eigen::Index inner_begin = 0, inner_end = std::numeric_limits<Eigen::Index>::max();
  for (int r = 0; r < Rows; ++r) {
    const Eigen::Index begin = key_begin[row0 + r], end = key_end[row0 + r];
    first = std::min(first, begin / P * P);
    last = std::max(last, round_up(end, P));
    inner_begin = std::max(inner_begin, round_up(begin, P));
    inner_end = std::min(inner_end, end / P * P);
  }
  if (inner_end < inner_begin) inner_begin = inner_end = first;
  // Lane indices as Scalar compared with a row's range, converted once here (an int -> float
  // conversion in the loops carries a false dependency on its destination register).
  Scalar range_begin[Rows], range_end[Rows];
  for (int r = 0; r < Rows; ++r) {
    range_begin[r] = static_cast<Scalar>(key_begin[row0 + r]);
    range_end[r] = static_cast<Scalar>(key_end[row0 + r]);
  }
  const auto visible = [&](int r, const Packet& lane) {
    return pand(pcmp_le(pset1<Packet>(range_begin[r]), lane), pcmp_lt(lane, pset1<Packet>(range_end[r])));
  };
  // Every packet of [first, last) once, interior ones through `inner` and the rest (masked) through
  // `edge`, each called as f(j, lane) with lane = the packet's key indices.
  const auto for_packets = [&](auto&& inner, auto&& edge) {
    const Packet lane_step = pset1<Packet>(static_cast<Scalar>(P));
    Packet lane = plset<Packet>(static_cast<Scalar>(first));
    Eigen::Index j = first;
    for (; j < inner_begin; j += P, lane = padd(lane, lane_step)) edge(j, lane);
    for (; j < inner_end; j += P) inner(j);
    lane = plset<Packet>(static_cast<Scalar>(j));
    for (; j < last; j += P, lane = padd(lane, lane_step)) edge(j, lane);
  };
  Scalar* const scores = score_rows + row0 * stride;
  Scalar* const probs = prob_rows + row0 * stride;
  const bool fixed = std::isfinite(fixed_shift);
  const bool rescale = scale_factor != Scalar(1);  // scale 1 (the default): the scores stay as they are
  Packet shift[Rows], total[Rows];
  for (int r = 0; r < Rows; ++r) total[r] = zero;
  if (fixed) {
    for (int r = 0; r < Rows; ++r) shift[r] = pset1<Packet>(fixed_shift);
    if (rescale) {
      const auto scale_inner = [&](Eigen::Index j) {
        for (int r = 0; r < Rows; ++r) pstore(scores + r * stride + j, pmul(pload<Packet>(scores + r * stride + j), scale));
      };
      for_packets(scale_inner, [&](Eigen::Index j, const Packet&) { scale_inner(j); });
    }
  } else {
    Packet row_max[Rows];
    for (int r = 0; r < Rows; ++r) row_max[r] = lowest;
    for_packets(
        [&](Eigen::Index j) {
          for (int r = 0; r < Rows; ++r) {
            const Packet x = pmul(pload<Packet>(scores + r * stride + j), scale);
            pstore(scores + r * stride + j, x);
            row_max[r] = pmax(row_max[r], x);
          }
        },
        [&](Eigen::Index j, const Packet& lane) {
          for (int r = 0; r < Rows; ++r) {
            const Packet x = pselect(visible(r, lane), pmul(pload<Packet>(scores + r * stride + j), scale), lowest);
            pstore(scores + r * stride + j, x);
            row_max[r] = pmax(row_max[r], x);
          }
        });
    for (int r = 0; r < Rows; ++r) shift[r] = pset1<Packet>(predux_max(row_max[r]));
  }
  // With the constant shift (a bound on the scores) every visible argument is in exp_packet's range.
  const auto exponentials = [&](auto in_range) {
    constexpr bool InRange = decltype(in_range)::value;
    // kExpGroup rows' exponentials interleaved (exp_packets): independent chains side by side.
    constexpr int G = Rows % kExpGroup == 0 ? kExpGroup : 1;
    const auto group_exponentials = [&](Eigen::Index j, int r0, Packet (&e)[G]) {
      for (int g = 0; g < G; ++g) e[g] = psub(pload<Packet>(scores + (r0 + g) * stride + j), shift[r0 + g]);
      exp_packets<Scalar, InRange, G>(e);
    };
    for_packets(
        [&](Eigen::Index j) {
          for (int r0 = 0; r0 < Rows; r0 += G) {
            Packet e[G];
            group_exponentials(j, r0, e);
            for (int g = 0; g < G; ++g) pstore(probs + (r0 + g) * stride + j, e[g]);
          }
        },
        [&](Eigen::Index j, const Packet& lane) {
          for (int r0 = 0; r0 < Rows; r0 += G) {
            Packet e[G];
            group_exponentials(j, r0, e);
            // pand, not pselect: masked lanes may hold anything (even NaN from scores never computed).
            for (int g = 0; g < G; ++g) pstore(probs + (r0 + g) * stride + j, pand(visible(r0 + g, lane), e[g]));
          }
        });
  };
  if (fixed) exponentials(std::true_type());
  else exponentials(std::false_type());
  // The totals in a pass of their own, in the same order (masked lanes hold 0): kept in registers
  // during the exponentials they spill (the exp's constants and Rows totals exceed 16 registers).
  for (Eigen::Index j = first; j < last; j += P)
    for (int r = 0; r < Rows; ++r) total[r] = padd(total[r], pload<Packet>(probs + r * stride + j));
  alignas(EIGEN_MAX_ALIGN_BYTES) Scalar inverse[Rows < P ? P : Rows];
  lane_totals<Scalar, Rows>(total, inverse);
  if constexpr (Rows == P) pstore(inverse, pdiv(pset1<Packet>(Scalar(1)), pload<Packet>(inverse)));
  else
    for (int r = 0; r < Rows; ++r) inverse[r] = Scalar(1) / inverse[r];
  if (row_inverse != nullptr) {  // the caller scales the rows itself
    for (int r = 0; r < Rows; ++r) row_inverse[row0 + r] = inverse[r];
    return;
  }
  for (int r = 0; r < Rows; ++r) {
    const Packet factor = pset1<Packet>(inverse[r]);
    for (Eigen::Index j = first; j < last; j += P) pstore(probs + r * stride + j, pmul(pload<Packet>(probs + r * stride + j), factor));
  }
}

/// Row softmax over each row's visible keys [key_begin[i], key_end[i]) of the scores of rows
/// i < rows (row i at scores + i stride, aligned; stride a multiple of the packet size): scales the
/// visible scores by `scale` in place and writes the probabilities (0 on masked keys) to probs.
/// Subtracting the row maximum keeps exp() in (0, 1]: no overflow for any score scale.
/// Works on whole aligned packets with lane masks: masked lanes of a row's packets hold the lowest
/// score or the scaled garbage of keys no score was computed for (they lie outside the visible
/// range, where scores are undefined anyway) and probability 0.
///
/// With a finite `fixed_shift` >= every scaled score (see softmax_shift), that constant replaces the
/// row maximum: no maximum pass. Rows go in blocks of one packet's width (masked_softmax_block),
/// the remainder one by one; the blocking depends only on `rows`, so results are reproducible.
///
/// Given `row_inverse` (rows entries), the rows are left unnormalised: prob_rows holds the weights
/// exp(score - shift) and row_inverse[i] = 1 / (row i's total), by which the caller multiplies
/// (the pass that would scale every row in place took a third of the softmax's time at S = 50).
template <class Scalar>
inline void masked_softmax_rows(Scalar* score_rows, Scalar* prob_rows, Eigen::Index stride, Eigen::Index rows,
                                const Eigen::Index* key_begin, const Eigen::Index* key_end, Scalar scale_factor,
                                Scalar fixed_shift = std::numeric_limits<Scalar>::quiet_NaN(),
                                Scalar* row_inverse = nullptr) {
  constexpr int P = packet_size<Scalar>();
  Eigen::Index i = 0;
  for (; rows - i >= P; i += P)
    masked_softmax_block<Scalar, P>(score_rows, prob_rows, stride, i, key_begin, key_end, scale_factor, fixed_shift,
                                    row_inverse);
  for (; i < rows; ++i)
    masked_softmax_block<Scalar, 1>(score_rows, prob_rows, stride, i, key_begin, key_end, scale_factor, fixed_shift,
                                    row_inverse);
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
