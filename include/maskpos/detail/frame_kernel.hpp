/// @file frame_kernel.hpp
/// @brief detail::FrameKernel: the decoder layer on tokens in a triangular frame under a
/// lower-triangular mask, with the state held transposed (tokens along the SIMD lanes).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../decoder.hpp"
#include "../types.hpp"
#include "errors.hpp"
#include "packet_math.hpp"
#include "tile_kernels.hpp"

namespace maskpos::detail {

/// The query-packet layout FrameKernel writes and MonteCarloAccumulator::add_layer_packets reads:
/// queries in packets of `lanes`, the partial packet first, after this many padding lanes.
constexpr Index query_packet_pad(Index seq_len, Index lanes) { return (lanes - seq_len % lanes) % lanes; }
/// Where query packet q's block (its (q + 1) lanes key columns, a packet of `lanes` each) starts.
constexpr Index query_packet_block(Index q, Index lanes) { return lanes * lanes * q * (q + 1) / 2; }

/// One layer of the decoder for tokens written in their sequence's triangular frame (see
/// InputGenerator::generate_triangular_into) when every query i sees exactly the keys 0..i: the
/// same numbers as DecoderKernel with that frame, bit for bit, from a transposed layout.
///
/// The state is stored as X^T: feature k of token i at column i + pad of row k, where the pad
/// (P - S mod P) mod P puts the partial packet of tokens at the start, whose queries see the fewest
/// keys. Each packet q of P tokens is then a packet of queries, and every per-token quantity is a
/// lane-wise packet operation: the squared norms (summed over the feature rows), the row norm's
/// factors, the softmax over keys (each query packet's scores are stored as one block, a packet per
/// key column, see block_offset) and its totals, and the update X^T += Y^T W^T diag(1 / totals). No
/// transposes and no horizontal sums, and the products follow the triangle packet by packet: query
/// packet q needs the keys of packets 0..q, each to the support of its key, and the feature rows
/// below the support of its own last token. Both products run in tiles of two query packets (12
/// accumulators: enough independent multiply-add chains to cover their latency).
///
/// Every entry is computed by the operations DecoderKernel uses, in the same order: dot products and
/// updates as multiply-add chains over increasing feature and key indices (multiply-adds by exact
/// zeros aside), squared norms and softmax totals as P partial sums (over indices k mod P) joined by
/// the same pairwise tree. tests/test_frame_kernel.cpp checks the bits against DecoderKernel.
///
/// \pre no RoPE, a lower-triangular mask (Mask::is_lower_triangular), no LayerNorm (pass the centred
/// tokens with RMSNorm, as for DecoderKernel with a frame). Thread safety: none (one kernel per thread).
template <class Scalar>
class FrameKernel {
 public:
  using Packet = PacketOf<Scalar>;
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  static constexpr int P = packet_size<Scalar>();
  static constexpr int kKeys = 6;  ///< key columns per two-packet score tile (12 accumulators)
  static constexpr int kRows = 6;  ///< feature rows per two-packet update tile (12 accumulators)

  /// Whether the kernel can run `config` (see the class preconditions).
  static bool applies(const DecoderConfig& config) {
    return !config.rope && config.norm != Norm::LayerNorm && config.mask.is_lower_triangular();
  }

  /// \pre applies(config), frame.width >= 1 (std::invalid_argument otherwise)
  FrameKernel(const DecoderConfig& config, Index seq_len, Index dim, TriangularFrame frame)
      : config_(config), seq_len_(seq_len), dim_(dim), frame_(frame),
        scale_(static_cast<Scalar>(config.scale.factor(dim))) {
    check_scalar<Scalar>();
    config_.validate(seq_len, dim);
    require(!config_.rope, "RoPE", "on", "off for tokens in a triangular frame (RoPE is not rotation-invariant)");
    require(config_.norm != Norm::LayerNorm, "norm", "layernorm",
            "l2, rmsnorm or none for tokens in a triangular frame (pass the centred tokens with rmsnorm)");
    require(config_.mask.is_lower_triangular(), "mask", config_.mask.name(),
            "lower-triangular (causal) for the transposed frame kernel");
    require(frame_.width >= 1, "frame width", frame_.width, "width >= 1");
    pad_ = query_packet_pad(seq_len, P);
    columns_ = seq_len + pad_;
    packets_ = columns_ / P;
    features_ = round_up(frame_.width, P);
    shift_ = static_cast<Scalar>(softmax_shift(config_.norm == Norm::L2, config_.norm == Norm::RMSNorm,
                                               config_.scale.factor(dim), 1.0, dim));
    input_.setZero(columns_, features_);
    state_.setZero(features_, columns_);
    normalized_.setZero(features_, columns_);
    // Query packet q's block: its (q + 1) P key columns, one packet each (S^2 / 2 entries in all).
    scores_.setZero(block_offset(packets_));
    weights_.setZero(block_offset(packets_));
    inverse_.setZero(columns_);
    // depth_[q]: the support of packet q's last token, the feature rows any of its tokens can fill.
    depth_.resize(static_cast<std::size_t>(packets_));
    for (Index q = 0; q < packets_; ++q) depth_[static_cast<std::size_t>(q)] = frame_.support(q * P + P - 1 - pad_);
    // first_column_[k]: the first key column whose token can be non-zero in feature row k.
    first_column_.resize(static_cast<std::size_t>(features_));
    for (Index k = 0; k < features_; ++k) {
      Index c = pad_;
      while (c < columns_ && frame_.support(c - pad_) <= k) ++c;
      first_column_[static_cast<std::size_t>(k)] = c;
    }
    // column_depth_[c]: the support of key column c's token (0 for padding columns).
    column_depth_.resize(static_cast<std::size_t>(columns_));
    for (Index c = 0; c < columns_; ++c) column_depth_[static_cast<std::size_t>(c)] = c < pad_ ? 0 : frame_.support(c - pad_);
    // lanes_from_[t]: lanes t.. set, the queries of a packet that see its t-th key column.
    for (int t = 0; t < P; ++t) {
      alignas(EIGEN_MAX_ALIGN_BYTES) Scalar lanes[P];
      for (int l = 0; l < P; ++l) lanes[l] = l >= t ? Scalar(1) : Scalar(0);
      lanes_from_[t] = Eigen::internal::pcmp_eq(Eigen::internal::pload<Packet>(lanes),
                                                Eigen::internal::pset1<Packet>(Scalar(1)));
    }
  }

  const DecoderConfig& config() const { return config_; }

  /// Where the next sequence goes: S x frame.width row-major, zero beyond each row's support
  /// (what InputGenerator::generate_triangular_into writes); load() then transposes it in.
  auto input_rows() { return input_.block(pad_, 0, seq_len_, frame_.width); }

  /// The state becomes input_rows(), transposed (whole P x P blocks, zeros included).
  void load() {
    for (Index q = 0; q < packets_; ++q) {
      const Index rows = round_up(depth_[static_cast<std::size_t>(q)], P);
      for (Index k0 = 0; k0 < rows; k0 += P) {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // the vector type's alignment attribute, as in Eigen
#endif
        Eigen::internal::PacketBlock<Packet, P> block;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
        for (int l = 0; l < P; ++l)
          block.packet[l] = Eigen::internal::pload<Packet>(input_.data() + (q * P + l) * features_ + k0);
        transpose_inline(block);
        for (int m = 0; m < P; ++m) Eigen::internal::pstore(at(state_, k0 + m, q), block.packet[m]);
      }
    }
  }

  /// Runs one layer. With update_state = false only the scores and weights are computed (what the
  /// last layer of a Monte Carlo sample needs).
  void step(bool update_state = true) {
    normalize();
    scores();
    const bool fixed = std::isfinite(shift_);
    for (Index q = 0; q < packets_; ++q) {
      if (fixed) softmax_packet<true>(q);
      else softmax_packet<false>(q);
    }
    if (update_state) update();
  }

  // ---- the layout the Monte Carlo accumulator reads (MonteCarloAccumulator, query packets) ----

  /// Where query packet q's block starts in score_data() and weight_data(): packet q (queries
  /// q P - pad() .. q P + P - 1 - pad(), one per lane) sees the key columns c < (q + 1) P (key
  /// c - pad()), stored one packet per key column from there on, blocks one after the other.
  static constexpr Index block_offset(Index q) { return query_packet_block(q, P); }
  /// Query packet q's score against key column c (P lanes) at score_data() + block_offset(q) + c P;
  /// lanes of queries that do not see the key hold garbage.
  const Scalar* score_data() const { return scores_.data(); }
  /// The softmax weights exp(score - shift), laid out as the scores (0 on lanes that do not see the key).
  const Scalar* weight_data() const { return weights_.data(); }
  /// 1 / (the total of each query's weights), at lane q P + l for query q P + l - pad() (0 for padding).
  const Scalar* inverse_data() const { return inverse_.data(); }
  /// Columns of the transposed state (S + pad(), a multiple of P).
  Index stride() const { return columns_; }
  Index pad() const { return pad_; }

  /// X^T: feature k of token i at state_data()[k stride() + i + pad()].
  const Scalar* state_data() const { return state_.data(); }

 private:
  Scalar* at(RowMatrix& m, Index row, Index packet) { return m.data() + row * columns_ + packet * P; }
  /// Key column c of query packet q in scores_ or weights_.
  static Scalar* entry(Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& m, Index c, Index q) {
    return m.data() + block_offset(q) + c * P;
  }
  const Scalar* at(const RowMatrix& m, Index row, Index packet) const { return m.data() + row * columns_ + packet * P; }

  /// The pairwise tree of lane_totals: ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)) for P = 8.
  static EIGEN_ALWAYS_INLINE Packet tree_total(Packet (&partial)[P]) {
    for (int width = P / 2; width >= 1; width /= 2)
      for (int t = 0; t < width; ++t) partial[t] = Eigen::internal::padd(partial[t], partial[t + width]);
    return partial[0];
  }

  /// normalized_ = the normalised tokens, a packet of tokens at a time (DecoderKernel::normalize_block).
  void normalize() {
    using namespace Eigen::internal;
    const Scalar inv_dim = Scalar(1) / static_cast<Scalar>(dim_), eps = static_cast<Scalar>(config_.norm_eps);
    for (Index q = 0; q < packets_; ++q) {
      const Index rows = round_up(depth_[static_cast<std::size_t>(q)], P);
      Packet factor = pset1<Packet>(Scalar(1));
      if (config_.norm != Norm::None) {
        Packet square[P];
        for (int m = 0; m < P; ++m) square[m] = pset1<Packet>(Scalar(0));
        for (Index k0 = 0; k0 < rows; k0 += P)
          for (int m = 0; m < P; ++m) {
            const Packet x = pload<Packet>(at(state_, k0 + m, q));
            square[m] = pmadd(x, x, square[m]);
          }
        const Packet totals = tree_total(square);
        const Packet divisor = config_.norm == Norm::L2
                                   ? pmax(sqrt_packet(totals), pset1<Packet>(eps))
                                   : sqrt_packet(pmadd(totals, pset1<Packet>(inv_dim), pset1<Packet>(eps)));
        factor = pand(pcmp_lt(pset1<Packet>(Scalar(0)), divisor), pdiv(pset1<Packet>(Scalar(1)), divisor));
      }
      for (Index k = 0; k < rows; ++k) pstore(at(normalized_, k, q), pmul(pload<Packet>(at(state_, k, q)), factor));
    }
  }

  /// Scores of queries against keys, in tiles of Queries packets of queries (q ..) x Keys key
  /// columns (c0 ..), `depth` feature rows deep (the support of the tile's last key).
  template <int Queries, int Keys>
  EIGEN_ALWAYS_INLINE void score_tile(Index q, Index c0, Index depth) {
    using namespace Eigen::internal;
    Packet acc[Queries][Keys];
    for (int u = 0; u < Queries; ++u)
      for (int t = 0; t < Keys; ++t) acc[u][t] = pset1<Packet>(Scalar(0));
    const Scalar* keys = normalized_.data() + c0;
    for (Index k = 0; k < depth; ++k) {
      Packet query[Queries];
      for (int u = 0; u < Queries; ++u) query[u] = pload<Packet>(at(normalized_, k, q + u));
      for (int t = 0; t < Keys; ++t) {
        const Packet key = pset1<Packet>(keys[k * columns_ + t]);
        for (int u = 0; u < Queries; ++u) acc[u][t] = pmadd(query[u], key, acc[u][t]);
      }
    }
    const bool rescale = scale_ != Scalar(1);
    const Packet scale = pset1<Packet>(scale_);
    for (int u = 0; u < Queries; ++u)
      for (int t = 0; t < Keys; ++t) pstore(entry(scores_, c0 + t, q + u), rescale ? pmul(acc[u][t], scale) : acc[u][t]);
  }

  /// Calls tile(width, at) over [begin, end) in tiles of Width, then one tile of the rest (width a
  /// std::integral_constant, so every tile is unrolled).
  template <int Width, class Tile>
  static EIGEN_ALWAYS_INLINE void in_tiles(Index begin, Index end, Tile&& tile) {
    for (; end - begin >= Width; begin += Width) tile(std::integral_constant<int, Width>(), begin);
    if constexpr (Width > 1) {
      if (end - begin == Width - 1) tile(std::integral_constant<int, Width - 1>(), begin);
      else if (end > begin) in_tiles<Width - 1>(begin, end, tile);
    }
  }

  /// All scores: query packets in pairs from the last. A pair shares the key columns up to the end
  /// of its first packet, in tiles of 2 packets x kKeys keys (2 kKeys accumulators: enough
  /// independent multiply-add chains to cover their latency, 2 + kKeys loads each step); the
  /// second packet's own key packet goes alone.
  void scores() {
    const auto depth = [&](Index c) { return column_depth_[static_cast<std::size_t>(c)]; };
    Index q = packets_ - 1;
    for (; q >= 1; q -= 2) {
      in_tiles<kKeys>(0, q * P, [&](auto keys, Index c0) {
        score_tile<2, decltype(keys)::value>(q - 1, c0, depth(c0 + decltype(keys)::value - 1));
      });
      score_tile<1, P>(q, q * P, depth(q * P + P - 1));
    }
    if (q == 0) score_tile<1, P>(0, 0, depth(P - 1));
  }

  /// Softmax weights of query packet q over key columns [pad, (q + 1) P), totals and their inverse.
  /// Key columns before the packet's own (c < q P) are seen by all its lanes; the lanes of column
  /// c = q P + t that see it are lanes t.. (this also masks the padding queries of packet 0).
  template <bool Fixed>
  void softmax_packet(Index q) {
    using namespace Eigen::internal;
    const Index first = pad_, diagonal = std::max(q * P, first), end = q * P + P;
    const auto visible = [&](Index c) { return lanes_from_[c - q * P]; };
    const Packet lowest = pset1<Packet>(std::numeric_limits<Scalar>::lowest());
    Packet shift = pset1<Packet>(shift_);
    if constexpr (!Fixed) {
      Packet row_max = lowest;
      for (Index c = first; c < diagonal; ++c) row_max = pmax(row_max, pload<Packet>(entry(scores_, c, q)));
      for (Index c = diagonal; c < end; ++c) row_max = pmax(row_max, pselect(visible(c), pload<Packet>(entry(scores_, c, q)), lowest));
      shift = row_max;
    }
    // kExpGroup keys' exponentials interleaved (independent chains side by side), masked on the diagonal.
    constexpr int G = kExpGroup;
    const auto exponentials = [&](Index c, auto group, auto masked) {
      constexpr int N = decltype(group)::value;
      Packet e[N];
      for (int g = 0; g < N; ++g) e[g] = psub(pload<Packet>(entry(scores_, c + g, q)), shift);
      exp_packets<Scalar, Fixed, N>(e);
      for (int g = 0; g < N; ++g) pstore(entry(weights_, c + g, q), decltype(masked)::value ? pand(visible(c + g), e[g]) : e[g]);
    };
    Index c = first;
    for (; diagonal - c >= G; c += G) exponentials(c, std::integral_constant<int, G>(), std::false_type());
    for (; c < diagonal; ++c) exponentials(c, std::integral_constant<int, 1>(), std::false_type());
    for (; end - c >= G; c += G) exponentials(c, std::integral_constant<int, G>(), std::true_type());
    for (; c < end; ++c) exponentials(c, std::integral_constant<int, 1>(), std::true_type());
    // The totals over keys j = c - pad as P partial sums over j mod P, in increasing j.
    Packet partial[P];
    for (int m = 0; m < P; ++m) partial[m] = pset1<Packet>(Scalar(0));
    for (Index j0 = 0; first + j0 < end; j0 += P)
      for (int m = 0; m < P; ++m)  // (m a constant after unrolling: the partial sums stay in registers)
        if (first + j0 + m < end) partial[m] = padd(partial[m], pload<Packet>(entry(weights_, first + j0 + m, q)));
    const Packet total = tree_total(partial);
    // Padding queries see no key: their total is 0 and their inverse 0 (not infinity).
    pstore(inverse_.data() + q * P,
           pand(pcmp_lt(pset1<Packet>(Scalar(0)), total), pdiv(pset1<Packet>(Scalar(1)), total)));
  }

  /// Feature rows [k0, k0 + Rows) of the update of Queries packets of queries (q ..): over the
  /// key columns from the first that reaches row k0 to `shared_end` for all of them, then on to
  /// `end` for the last one, X^T (+)= (Y^T W^T) / totals.
  template <int Queries, int Rows>
  EIGEN_ALWAYS_INLINE void update_tile(Index q, Index k0, Index shared_end, Index end) {
    using namespace Eigen::internal;
    Packet acc[Queries][Rows];
    for (int u = 0; u < Queries; ++u)
      for (int t = 0; t < Rows; ++t) acc[u][t] = pset1<Packet>(Scalar(0));
    const Scalar* values = normalized_.data() + k0 * columns_;
    Index c = first_column_[static_cast<std::size_t>(k0)];
    for (; c < shared_end; ++c) {
      Packet weight[Queries];
      for (int u = 0; u < Queries; ++u) weight[u] = pload<Packet>(entry(weights_, c, q + u));
      for (int t = 0; t < Rows; ++t) {
        const Packet value = pset1<Packet>(values[t * columns_ + c]);
        for (int u = 0; u < Queries; ++u) acc[u][t] = pmadd(value, weight[u], acc[u][t]);
      }
    }
    for (; c < end; ++c) {
      const Packet weight = pload<Packet>(entry(weights_, c, q + Queries - 1));
      for (int t = 0; t < Rows; ++t) acc[Queries - 1][t] = pmadd(pset1<Packet>(values[t * columns_ + c]), weight, acc[Queries - 1][t]);
    }
    for (int u = 0; u < Queries; ++u) {
      const Packet inverse = pload<Packet>(inverse_.data() + (q + u) * P);
      for (int t = 0; t < Rows; ++t) {
        Scalar* out = at(state_, k0 + t, q + u);
        pstore(out, config_.residual ? pmadd(acc[u][t], inverse, pload<Packet>(out)) : pmul(acc[u][t], inverse));
      }
    }
  }

  /// The update, query packets in pairs from the last as in scores(): the pair's shared feature
  /// rows (below the first packet's depth) in tiles of 2 packets x kRows rows, the second packet's
  /// other rows alone.
  void update() {
    Index q = packets_ - 1;
    for (; q >= 1; q -= 2) {
      const Index shared_rows = round_up(depth_[static_cast<std::size_t>(q - 1)], P);
      const Index rows = round_up(depth_[static_cast<std::size_t>(q)], P);
      in_tiles<kRows>(0, shared_rows, [&](auto tile_rows, Index k0) {
        update_tile<2, decltype(tile_rows)::value>(q - 1, k0, q * P, q * P + P);
      });
      for (Index k0 = shared_rows; k0 < rows; k0 += P) update_tile<1, P>(q, k0, q * P + P, q * P + P);
    }
    if (q == 0)
      for (Index k0 = 0; k0 < round_up(depth_[0], P); k0 += P) update_tile<1, P>(0, k0, P, P);
  }

  DecoderConfig config_;
  Index seq_len_, dim_;
  TriangularFrame frame_;
  Scalar scale_, shift_ = 0;
  Index columns_ = 0, pad_ = 0, packets_ = 0, features_ = 0;
  RowMatrix input_;       ///< (pad + S) x features: the tokens, row-major, padding rows zero
  RowMatrix state_;       ///< features x columns: X^T
  RowMatrix normalized_;  ///< features x columns: Y^T
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> scores_;   ///< per query packet q, from block_offset(q): key column c's scores at c P
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> weights_;  ///< as scores_: exp(score - shift), 0 on masked lanes
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> inverse_;  ///< per query lane: 1 / total (0 for padding)
  std::vector<Index> depth_;         ///< per packet: the support of its last token
  std::vector<Index> column_depth_;  ///< per key column: the support of its token (0 for padding)
  std::vector<Index> first_column_;  ///< per feature row: the first key column non-zero in it
  Packet lanes_from_[P];             ///< lanes t.. set
};

}  // namespace maskpos::detail
