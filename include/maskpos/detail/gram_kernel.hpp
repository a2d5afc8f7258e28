/// @file gram_kernel.hpp
/// @brief The decoder propagated in Gram space (NOTES Sec. 5): S x S work per layer instead of S x d,
/// for the Monte Carlo driver when d is large next to S and there is no RoPE.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../decoder.hpp"
#include "tile_kernels.hpp"

namespace maskpos::detail {

/// One sequence's scores and probabilities, layer by layer, from the Gram matrix G = X X^T alone.
///
/// Every normalisation is a row scaling after an optional centring: Y = D X P with D diagonal and
/// P = I - 1 1^T / d for LayerNorm (P = I otherwise). With r = X 1 (invariant: P 1 = 0 and
/// X' 1 = A Y 1 + X 1 = X 1) and H = X P X^T = G - r r^T / d,
/// \f[ D_i = f(H_{ii}),\quad N = Y Y^\top = D H D,\quad \text{scores} = c N,\quad A = \mathrm{softmax}(\ldots), \f]
/// \f[ U = A N,\quad G' = U A^\top + U D^{-1} + (U D^{-1})^\top + G \ \text{(residual)},\qquad G' = U A^\top \ \text{(no residual)}, \f]
/// since Y X^T = D H = N D^{-1}. Per layer: U costs S^3/2 multiply-adds (A lower triangular for the
/// causal mask) and U A^T S^3/6 (only the lower triangle is computed, then mirrored), against S^2 d
/// for the direct layer: fewer multiply-adds when d > 2S/3 (see preferred() for when it is faster). The same numbers as DecoderKernel up to rounding.
///
/// The same recursion as detail::GramKernel in gram.hpp (which also carries the RoPE lag kernel of
/// the large-width limit); this one is the Monte Carlo hot path, built on the register tiles of
/// tile_kernels.hpp. Both are checked against the feature-space decoder by the tests.
///
/// \pre no RoPE (rotations mix coordinates per position: no single Gram matrix carries them).
/// Thread safety: none (one kernel per thread).
template <class Scalar>
class TiledGramKernel {
 public:
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  static constexpr Index kRows = 4;

  /// True when the Gram path is available and expected to be faster than the direct one.
  ///
  /// By multiply-adds alone the Gram layer (2 S^3 / 3) beats the direct one (S^2 d) for d > 2S/3,
  /// but its per-layer O(S^2) passes (normalisation, symmetrisation) cost more per entry. Measured
  /// crossovers (CPU time of `mc_paper --path direct|gram`, one thread, L = 4, float): d = 64 at
  /// S = 20, d = 75 to 80 at S = 50, below d = 128 at S = 100, i.e. d ~ 0.37 S + 57; hence 8 d > 3 S + 456.
  static bool preferred(const DecoderConfig& config, Index seq_len, Index dim) {
    return !config.rope && 8 * dim > 3 * seq_len + 456;
  }

  TiledGramKernel(const DecoderConfig& config, Index seq_len, Index dim)
      : config_(config), seq_len_(seq_len), dim_(dim), scale_(static_cast<Scalar>(config.scale.factor(dim))) {
    check_scalar<Scalar>();
    config_.validate(seq_len, dim);
    require(!config_.rope, "rope", "set", "no RoPE for the Gram-space kernel");
    constexpr Index P = packet_size<Scalar>();
    rows_ = round_up(seq_len, std::max<Index>(kRows, P));
    shift_ = static_cast<Scalar>(softmax_shift(config_.norm == Norm::L2,
                                               config_.norm == Norm::LayerNorm || config_.norm == Norm::RMSNorm,
                                               config_.scale.factor(dim), 1.0, dim));
    gram_.setZero(rows_, rows_);
    normalized_gram_.setZero(rows_, rows_);
    product_.setZero(rows_, rows_);
    lower_.setZero(rows_, rows_);
    score_rows_.setZero(rows_, rows_);
    prob_rows_.setZero(rows_, rows_);
    row_sums_.setZero(rows_);
    scaling_.setZero(rows_);
    lengths_.setZero(rows_);
    scaled_sums_.setZero(rows_);
    {
      // lower_lanes_[t]: lanes k <= t; valid_lanes_[v - 1]: lanes k < v.
      using namespace Eigen::internal;
      alignas(EIGEN_MAX_ALIGN_BYTES) Scalar lanes[P];
      for (Index k = 0; k < P; ++k) lanes[k] = static_cast<Scalar>(k);
      const PacketOf<Scalar> lane = pload<PacketOf<Scalar>>(lanes);
      for (Index t = 0; t < P; ++t) {
        lower_lanes_[t] = pcmp_le(lane, pset1<PacketOf<Scalar>>(static_cast<Scalar>(t)));
        valid_lanes_[t] = pcmp_lt(lane, pset1<PacketOf<Scalar>>(static_cast<Scalar>(t + 1)));
      }
    }
    key_begin_.resize(static_cast<std::size_t>(seq_len));
    key_end_.resize(static_cast<std::size_t>(seq_len));
    for (Index i = 0; i < seq_len; ++i) {
      key_begin_[static_cast<std::size_t>(i)] = config_.mask.first_key(i);
      key_end_[static_cast<std::size_t>(i)] = config_.mask.end_key(i, seq_len);
    }
  }

  /// Starts a sequence: G = X X^T (and r = X 1 for LayerNorm) from S x d row-major tokens.
  /// \pre tokens has padded rows: `tokens + i stride` for i < round_up(S, 4), entries [d, round_up(d, P)) zero
  void load(const Scalar* tokens, Index stride) {
    const Index depth = round_up(dim_, packet_size<Scalar>());
    for (Index first = 0; first < seq_len_; first += kRows)
      dot_strip<Scalar, kRows>(tokens + first * stride, stride, tokens, stride, depth, lower_.data() + first * rows_, rows_, 0,
                               std::min(first + kRows, seq_len_));
    symmetrize(false);
    if (config_.norm == Norm::LayerNorm)
      for (Index i = 0; i < seq_len_; ++i)
        row_sums_[i] = Eigen::Map<const Eigen::Array<Scalar, 1, Eigen::Dynamic>>(tokens + i * stride, dim_).sum();
  }

  /// One layer: scores and probabilities; with update_state, G becomes the next layer's Gram matrix.
  void step(bool update_state = true) {
    normalize();  // also copies N into score_rows_
    masked_softmax_rows<Scalar>(score_rows_.data(), prob_rows_.data(), rows_, seq_len_, key_begin_.data(),
                                key_end_.data(), scale_, shift_);
    if (!update_state) return;
    constexpr Index P = packet_size<Scalar>();
    // U = A N over each row block's visible keys.
    for (Index first = 0; first < seq_len_; first += kRows) {
      const auto [begin, end] = block_keys(first, first + kRows);
      strip_product<Scalar, kRows, false>(prob_rows_.data() + first * rows_ + begin, rows_,
                                          normalized_gram_.data() + begin * rows_, rows_, end - begin,
                                          product_.data() + first * rows_, rows_, 0, rows_ / P);
    }
    // Lower triangle of U A^T: (U A^T)_ik = sum_j U_ij A_kj over the keys j visible to query k.
    for (Index first = 0; first < seq_len_; first += kRows) {
      const Index keys_end = std::min(first + kRows, seq_len_);
      Index k = 0;
      for (; keys_end - k >= 3; k += 3) lower_tile<3>(first, k);
      if (keys_end - k == 2) lower_tile<2>(first, k);
      else if (keys_end - k == 1) lower_tile<1>(first, k);
    }
    symmetrize(config_.residual);
    if (!config_.residual) row_sums_.setZero();  // X' = A Y has zero row sums under LayerNorm (Y 1 = 0)
  }

  const Scalar* score_data() const { return score_rows_.data(); }
  const Scalar* prob_data() const { return prob_rows_.data(); }
  Index row_stride() const { return rows_; }

 private:
  std::pair<Index, Index> block_keys(Index first, Index last) const {
    last = std::min(last, seq_len_);
    Index begin = seq_len_, end = 0;
    for (Index i = first; i < last; ++i) {
      begin = std::min(begin, key_begin_[static_cast<std::size_t>(i)]);
      end = std::max(end, key_end_[static_cast<std::size_t>(i)]);
    }
    return {begin, end};
  }

  template <int Keys>
  void lower_tile(Index first, Index key) {
    constexpr Index P = packet_size<Scalar>();
    const auto [begin, end] = block_keys(key, key + Keys);
    const Index from = begin / P * P, to = round_up(end, P);
    dot_tile<Scalar, kRows, Keys>(product_.data() + first * rows_ + from, rows_, prob_rows_.data() + key * rows_ + from,
                                  rows_, to - from, lower_.data() + first * rows_ + key, rows_);
  }

  /// D and N = D H D from G (H = G - r r^T / d for LayerNorm), N copied into score_rows_ for the
  /// softmax; lengths_ = 1 / D. A row whose divisor is 0 (norm_eps = 0 and a zero or constant row)
  /// gets D = 0 and length 0: its N row and column are 0, as in normalize_rows.
  void normalize() {
    using namespace Eigen::internal;
    using Packet = PacketOf<Scalar>;
    constexpr Index P = packet_size<Scalar>();
    const Scalar eps = static_cast<Scalar>(config_.norm_eps);
    const Scalar inv_dim = Scalar(1) / static_cast<Scalar>(dim_);
    const bool centred = config_.norm == Norm::LayerNorm;
    for (Index i = 0; i < seq_len_; ++i) {
      const Scalar h = centred ? gram_(i, i) - row_sums_[i] * row_sums_[i] * inv_dim : gram_(i, i);
      Scalar divisor = 1;
      switch (config_.norm) {
        case Norm::L2: divisor = std::max(std::sqrt(std::max(h, Scalar(0))), eps); break;
        case Norm::LayerNorm:
        case Norm::RMSNorm: divisor = std::sqrt(std::max(h, Scalar(0)) * inv_dim + eps); break;
        case Norm::None: divisor = 1; break;
      }
      scaling_[i] = divisor > 0 ? Scalar(1) / divisor : Scalar(0);
      lengths_[i] = divisor;
      scaled_sums_[i] = scaling_[i] * row_sums_[i];
    }
    for (Index i = 0; i < seq_len_; ++i) {
      const Packet row_scale = pset1<Packet>(scaling_[i]), row_centre = pset1<Packet>(inv_dim * scaled_sums_[i]);
      const Scalar* g = gram_.data() + i * rows_;
      Scalar* n = normalized_gram_.data() + i * rows_;
      Scalar* scores = score_rows_.data() + i * rows_;
      for (Index c = 0; c < rows_; c += P) {
        Packet value = pmul(pmul(row_scale, pload<Packet>(g + c)), pload<Packet>(scaling_.data() + c));
        if (centred) value = psub(value, pmul(row_centre, pload<Packet>(scaled_sums_.data() + c)));
        pstore(n + c, value);
        pstore(scores + c, value);
      }
    }
  }

  /// gram_ = the symmetric matrix whose lower triangle is lower_ (+ V + V^T + G with V = U D^{-1}
  /// when `residual`), in packet blocks: block (b, c), b >= c, is L = W + V + G + V(c, b)^T, stored
  /// at (b, c) and transposed at (c, b).
  void symmetrize(bool residual) {
    using namespace Eigen::internal;
    using Packet = PacketOf<Scalar>;
    constexpr int P = packet_size<Scalar>();
    if (residual)
      for (Index i = 0; i < seq_len_; ++i)  // V = U D^{-1}, in place
        Eigen::Map<Eigen::Array<Scalar, 1, Eigen::Dynamic>>(product_.data() + i * rows_, rows_) *= lengths_.transpose();
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
    const Index blocks = round_up(seq_len_, P) / P;
    for (Index b = 0; b < blocks; ++b)
      for (Index c = 0; c <= b; ++c) {
        PacketBlock<Packet, P> sum;
        for (int t = 0; t < P; ++t) sum.packet[t] = pload<Packet>(lower_.data() + (b * P + t) * rows_ + c * P);
        if (residual) {
          PacketBlock<Packet, P> upper;
          for (int t = 0; t < P; ++t) upper.packet[t] = pload<Packet>(product_.data() + (c * P + t) * rows_ + b * P);
          if constexpr (P > 1) ptranspose(upper);
          for (int t = 0; t < P; ++t) {
            const Index at = (b * P + t) * rows_ + c * P;
            sum.packet[t] = padd(padd(sum.packet[t], upper.packet[t]),
                                 padd(pload<Packet>(product_.data() + at), pload<Packet>(gram_.data() + at)));
          }
        }
        if (b == c) {
          // A diagonal block: its lower triangle is right, its upper one partly unset. Take
          // (t, k) from the lower triangle for k <= t and from the transpose for k > t; entries
          // beyond S stay zero.
          PacketBlock<Packet, P> transposed = sum;
          if constexpr (P > 1) ptranspose(transposed);
          const Index valid = std::min<Index>(P, seq_len_ - b * P);
          for (int t = 0; t < P; ++t) {
            const Packet keep = t < valid ? pand(lower_lanes_[t], valid_lanes_[valid - 1]) : pzero(sum.packet[t]);
            const Packet mirror = t < valid ? pandnot(valid_lanes_[valid - 1], lower_lanes_[t]) : pzero(sum.packet[t]);
            pstore(gram_.data() + (b * P + t) * rows_ + c * P,
                   por(pand(keep, sum.packet[t]), pand(mirror, transposed.packet[t])));
          }
          continue;
        }
        for (int t = 0; t < P; ++t) pstore(gram_.data() + (b * P + t) * rows_ + c * P, sum.packet[t]);
        if constexpr (P > 1) ptranspose(sum);
        for (int t = 0; t < P; ++t) pstore(gram_.data() + (c * P + t) * rows_ + b * P, sum.packet[t]);
      }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
  }

  DecoderConfig config_;
  Index seq_len_, dim_, rows_ = 0;
  Scalar scale_, shift_;
  RowMatrix gram_, normalized_gram_, product_, lower_, score_rows_, prob_rows_;
  Eigen::Array<Scalar, Eigen::Dynamic, 1> row_sums_, scaling_, lengths_, scaled_sums_;
  PacketOf<Scalar> lower_lanes_[packet_size<Scalar>()], valid_lanes_[packet_size<Scalar>()];
  std::vector<Index> key_begin_, key_end_;
};

}  // namespace maskpos::detail
