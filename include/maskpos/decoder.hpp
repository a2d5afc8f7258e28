/// @file decoder.hpp
/// @brief The parameter-free decoder layer of the paper (NOTES Sec. 2) and its forward pass.
///
/// One layer, l = 1..L:
/// \f[ Y = \mathrm{norm}(X),\quad S = c\,QK^\top,\ Q = K = \mathrm{RoPE}(Y)\ \text{or}\ Y,\quad
///     A = \mathrm{softmax}_\text{row}(\mathrm{mask}(S)),\quad X \leftarrow A Y + X. \f]
/// No learned weights, no feed-forward; the residual can be switched off.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "detail/errors.hpp"
#include "detail/tile_kernels.hpp"
#include "mask.hpp"
#include "normalization.hpp"
#include "rope.hpp"
#include "types.hpp"

namespace maskpos {

/// The constant c that multiplies Q K^T before the softmax.
struct ScoreScale {
  enum class Kind { One, InvSqrtDim, InvDim, Custom };
  Kind kind = Kind::One;
  double value = 1.0;  ///< the constant for Kind::Custom

  static ScoreScale one() { return {Kind::One, 1.0}; }
  static ScoreScale inv_sqrt_dim() { return {Kind::InvSqrtDim, 0.0}; }
  static ScoreScale inv_dim() { return {Kind::InvDim, 0.0}; }
  /// \pre c finite and > 0
  static ScoreScale custom(double c) { return {Kind::Custom, c}; }

  /// c for width d.
  double factor(Index dim) const {
    switch (kind) {
      case Kind::One: return 1.0;
      case Kind::InvSqrtDim: return 1.0 / std::sqrt(static_cast<double>(dim));
      case Kind::InvDim: return 1.0 / static_cast<double>(dim);
      case Kind::Custom: return value;
    }
    return 1.0;
  }

  /// "1", "sqrt-d", "d" or the custom constant (the command line's spelling).
  std::string name() const {
    switch (kind) {
      case Kind::One: return "1";
      case Kind::InvSqrtDim: return "sqrt-d";
      case Kind::InvDim: return "d";
      case Kind::Custom: return detail::to_text(value);
    }
    return "?";
  }
};

/// Everything that defines the parameter-free decoder.
struct DecoderConfig {
  Index layers = 4;           ///< L >= 1
  Norm norm = Norm::L2;
  double norm_eps = 1e-12;    ///< eps of the normalisation (see normalize_rows)
  ScoreScale scale;
  Mask mask;
  bool residual = true;       ///< X <- A Y + X (the paper) or X <- A Y
  std::optional<RopeConfig> rope;  ///< the positional-encoding slot: none (NoPE) or RoPE

  /// Throws std::invalid_argument naming the first parameter out of range for sequences S x d.
  void validate(Index seq_len, Index dim) const {
    detail::require(seq_len >= 1, "seq_len S", seq_len, "S >= 1");
    detail::require(dim >= 1, "dim d", dim, "d >= 1");
    detail::require(layers >= 1, "layers L", layers, "L >= 1");
    detail::require(norm_eps >= 0 && std::isfinite(norm_eps), "norm_eps", norm_eps, "0 <= eps < infinity");
    if (scale.kind == ScoreScale::Kind::Custom)
      detail::require(scale.value > 0 && std::isfinite(scale.value), "score scale", scale.value, "0 < c < infinity");
    mask.validate(seq_len);
    if (rope) rope->validate(dim);
  }

  /// validate(), and what depends on the compute type Scalar: the score scale c must be a normal finite
  /// Scalar, and under L2, LayerNorm and RMSNorm every scaled score (at most score_bound()) must be
  /// finite in Scalar. (Without a norm the scores grow with the tokens; a Monte Carlo run then counts
  /// values beyond their bound in MonteCarloResult::out_of_range.)
  template <class Scalar>
  void validate_for(Index seq_len, Index dim) const {
    validate(seq_len, dim);
    const double c = scale.factor(dim), lowest = std::numeric_limits<Scalar>::min(),
                 largest = std::numeric_limits<Scalar>::max();
    const std::string type = detail::scalar_name<Scalar>();
    detail::require(c >= lowest && c <= largest, "score scale", c,
                    detail::to_text(lowest) + " <= c <= " + detail::to_text(largest) + " (a normal " + type +
                        ", the compute type)");
    if (norm == Norm::None) return;
    const double bound = score_bound(seq_len, dim, 1.0, 0);
    detail::require(bound <= largest, "score scale", c,
                    "the largest scaled score c max(1, f^2) |y|^2 = " + detail::to_text(bound) + " <= " +
                        detail::to_text(largest) + ", the largest " + type + " (|y|^2 = " +
                        (norm == Norm::L2 ? std::string("1") : "d = " + std::to_string(dim)) + " under " +
                        to_string(norm) + ", f the RoPE attention factor)");
  }

  /// A bound on every |scaled score| of layer `layer` (0-based) for tokens of norm at most
  /// `max_token_norm`: c max(1, f^2) |y|^2, f RoPE's attention factor (1 without RoPE), with |y|^2 = 1
  /// under L2 and d under LayerNorm and RMSNorm; without a norm |y| = ||x(l)|| <= 2^l max ||x(0)|| (the
  /// residual at most doubles the largest row norm, since A is row-stochastic).
  double score_bound(Index seq_len, Index dim, double max_token_norm, Index layer) const {
    double rope_gain = 1.0;
    if (rope) {
      const double factor = rope_frequencies(*rope, dim, seq_len).attention_factor;
      rope_gain = std::max(1.0, factor * factor);
    }
    double norm_squared = 1.0;
    switch (norm) {
      case Norm::L2: norm_squared = 1.0; break;
      case Norm::LayerNorm:
      case Norm::RMSNorm: norm_squared = static_cast<double>(dim); break;
      case Norm::None: {
        const double growth = residual ? std::ldexp(1.0, static_cast<int>(layer)) : 1.0;
        const double largest_norm = growth * max_token_norm;
        norm_squared = largest_norm * largest_norm;
        break;
      }
    }
    return scale.factor(dim) * rope_gain * norm_squared;
  }
};

/// What one layer produced for one sequence.
template <class Scalar>
struct LayerTrace {
  Matrix<Scalar> scores;  ///< S x S scaled pre-softmax scores; masked entries NaN
  Matrix<Scalar> probs;   ///< S x S attention probabilities; masked entries 0
  Matrix<Scalar> output;  ///< S x d layer output X(l)
};

namespace detail {

/// The layer computation shared by forward() and the Monte Carlo driver: owns all scratch space,
/// so running a layer allocates nothing after construction.
///
/// Internally every matrix is row-major and padded (rows to a multiple of the row block and of the
/// SIMD packet, columns to a multiple of the packet), padding kept at zero:
/// - scores: for each block of kRows queries, only the keys visible to some query of the block are
///   computed (for the causal mask: the lower triangle plus the small triangles above the diagonal
///   inside each block), as register tiles of Q K^T from Q's rows and a transposed copy of K
///   (Q = K = Y, or RoPE(Y));
/// - the softmax runs over each row's contiguous visible range (contiguous memory, vectorised exp)
///   and leaves the rows unnormalised: weights W and one factor 1 / (row total) per row;
/// - the update A Y = diag(factors) W Y runs over each row block's visible key range only, the
///   factors and the residual add fused into the tiles' last step.
/// Only visible entries of scores() are meaningful; probs() is 0 on masked entries.
///
/// Given a TriangularFrame, the state holds the tokens in that frame (frame.width columns instead of
/// d; d still sets the score scale and the mean square of RMSNorm) and row i is taken to be zero from
/// column frame.support(i) on. When no query sees a later key (causal and sliding-window masks) the
/// layer keeps that shape, and both products skip the zeros: each tile of scores runs over the
/// support of its last key, each tile of A Y over the keys whose support reaches its columns, about
/// S^3 / 6 multiply-adds each instead of S^2 d / 2. Otherwise the rows are treated as dense.
/// \pre no RoPE and no LayerNorm with a frame (LayerNorm: pass the centred tokens with RMSNorm).
///
/// Thread safety: none (one kernel per thread; scores() and probs() fill caches).
template <class Scalar>
class DecoderKernel {
 public:
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  static constexpr Index kRows = 4;        ///< query rows per register tile
  static constexpr Index kScoreRows = 8;   ///< query rows per one-packet score tile (triangular rows)
  static constexpr Index kUpdateRows = 6;  ///< query rows per two-packet update tile (triangular rows)

  /// \pre no RoPE with a frame; \pre frame->width >= 1
  DecoderKernel(const DecoderConfig& config, Index seq_len, Index dim, std::optional<TriangularFrame> frame = {})
      : config_(config), seq_len_(seq_len), dim_(dim), width_(frame ? frame->width : dim),
        scale_(static_cast<Scalar>(config.scale.factor(dim))) {
    check_scalar<Scalar>();
    config_.validate(seq_len, dim);
    require(!(frame && config_.rope), "RoPE", "on", "off for tokens in a triangular frame (RoPE is not rotation-invariant)");
    require(width_ >= 1, "frame width", width_, "width >= 1");
    require(!(frame && config_.norm == Norm::LayerNorm), "norm", "layernorm",
            "l2, rmsnorm or none for tokens in a triangular frame (centring would fill the zeros: pass the centred "
            "tokens with rmsnorm instead)");
    constexpr Index P = packet_size<Scalar>();
    // Row blocks never reach past S (see in_row_blocks); keys are read in whole packets.
    rows_ = round_up(seq_len, std::max<Index>(kRows, P));
    cols_ = round_up(width_, P);
    double rope_factor = 1.0;
    if (config_.rope) {
      rope_.emplace(*config_.rope, dim, seq_len);
      rotated_.setZero(rows_, cols_);
      rope_factor = rope_->frequencies().attention_factor;
      build_rotation_tables();
    }
    shift_ = static_cast<Scalar>(softmax_shift(config_.norm == Norm::L2,
                                               config_.norm == Norm::LayerNorm || config_.norm == Norm::RMSNorm,
                                               config_.scale.factor(dim), rope_factor, dim));
    state_.setZero(rows_, cols_);
    normalized_.setZero(rows_, cols_);
    {
      alignas(EIGEN_MAX_ALIGN_BYTES) Scalar lanes[P];
      for (Index k = 0; k < P; ++k) lanes[k] = cols_ - P + k < width_ ? Scalar(1) : Scalar(0);
      last_columns_ = Eigen::internal::pcmp_eq(Eigen::internal::pload<PacketOf<Scalar>>(lanes),
                                               Eigen::internal::pset1<PacketOf<Scalar>>(Scalar(1)));
    }
    score_rows_.setZero(rows_, rows_);
    prob_rows_.setZero(rows_, rows_);
    row_inverse_.setZero(rows_);
    key_begin_.resize(static_cast<std::size_t>(seq_len));
    key_end_.resize(static_cast<std::size_t>(seq_len));
    bool no_later_keys = true;
    for (Index i = 0; i < seq_len; ++i) {
      key_begin_[static_cast<std::size_t>(i)] = config_.mask.first_key(i);
      key_end_[static_cast<std::size_t>(i)] = config_.mask.end_key(i, seq_len);
      no_later_keys = no_later_keys && key_end_[static_cast<std::size_t>(i)] <= i + 1;
    }
    // The support of each row and, per column packet, the first row that reaches it.
    support_.assign(static_cast<std::size_t>(seq_len), width_);
    const bool triangular = frame && no_later_keys;  // rows keep their frame's support through a layer
    if (triangular)
      for (Index j = 0; j < seq_len; ++j) support_[static_cast<std::size_t>(j)] = frame->support(j);
    // Rows [0, triangle_end_) are shorter than the frame (the tall tiles' part; beyond it rows are
    // full width, where kRows x 3 tiles are faster).
    triangle_end_ = 0;
    while (triangular && triangle_end_ < seq_len && support_[static_cast<std::size_t>(triangle_end_)] < width_) ++triangle_end_;
    packet_first_key_.assign(static_cast<std::size_t>(cols_ / P), 0);
    for (Index c = 0; c < cols_ / P; ++c) {
      Index j = 0;
      while (j < seq_len && support_[static_cast<std::size_t>(j)] <= c * P) ++j;
      packet_first_key_[static_cast<std::size_t>(c)] = j;
    }
    transposed_.setZero(cols_, rows_);
  }

  const DecoderConfig& config() const { return config_; }

  /// S x S scores of the last layer (column-major copy, filled on first use after a layer).
  const Matrix<Scalar>& scores() const {
    if (!scores_cached_) {
      scores_cache_ = score_rows_.topLeftCorner(seq_len_, seq_len_);
      scores_cached_ = true;
    }
    return scores_cache_;
  }
  /// S x S probabilities of the last layer (column-major copy, filled on first use after a layer).
  const Matrix<Scalar>& probs() const {
    if (!probs_cached_) {
      probs_cache_ = row_inverse_.head(seq_len_).asDiagonal() * prob_rows_.topLeftCorner(seq_len_, seq_len_);
      probs_cached_ = true;
    }
    return probs_cache_;
  }

  /// Runs one layer: `state` (S x d) becomes the layer output.
  void layer(Matrix<Scalar>& state) {
    state_rows() = state;
    step(true);
    state = state_rows();
  }

  // ---- the allocation-free interface of the Monte Carlo driver ----

  /// The S x d layer input / output held by the kernel (row-major; S x frame width with a frame,
  /// zero beyond each row's support).
  auto state_rows() { return state_.topLeftCorner(seq_len_, width_); }

  /// Runs one layer on state_rows(). With update_state = false only scores and probabilities are
  /// computed (the state is left as it was): what the last layer of a Monte Carlo sample needs.
  void step(bool update_state = true) {
    scores_cached_ = probs_cached_ = false;
    normalize();
    RowMatrix* query = &normalized_;
    if (rope_) {
      rotate();
      query = &rotated_;
    }
    transpose_keys(*query);
    // Where rows are triangular (rows < triangle_end_), narrower and taller tiles follow the triangle
    // more closely: scores in one-packet tiles of kScoreRows rows (each runs exactly as deep as its
    // own key packet needs), the update in two-packet tiles of kUpdateRows rows (12 accumulators).
    // The rest, and dense rows, in kRows x 3 tiles. (Measured with mc_paper, single thread: each beat
    // kRows x 3 and the other shapes tried; docs/performance.md.)
    Index first = 0;
    for (; triangle_end_ - first >= kScoreRows; first += kScoreRows) score_block<kScoreRows, 1>(*query, first);
    in_row_blocks(first, [&](auto rows, Index at) { score_block<decltype(rows)::value, 3>(*query, at); });
    softmax();
    if (!update_state) return;
    first = 0;
    for (; triangle_end_ - first >= kUpdateRows; first += kUpdateRows) update_block<kUpdateRows, 2>(first);
    in_row_blocks(first, [&](auto rows, Index at) { update_block<decltype(rows)::value, 3>(at); });
  }

  /// Row i of the state starts at state_data() + i state_stride(); rows and columns beyond S x d are zero.
  const Scalar* state_data() const { return state_.data(); }
  Index state_stride() const { return cols_; }

  /// Row i of the last scores starts at score_data() + i row_stride() (entries of visible keys valid).
  const Scalar* score_data() const { return score_rows_.data(); }
  /// Row i of the last layer's softmax weights exp(score - shift) starts at weight_data() + i
  /// row_stride() (0 on masked keys); its probabilities are those weights times row_inverse()[i].
  const Scalar* weight_data() const { return prob_rows_.data(); }
  /// 1 / (the total of row i's weights), i < S.
  const Scalar* row_inverse() const { return row_inverse_.data(); }
  Index row_stride() const { return rows_; }

 private:
  /// Calls block(rows, at) on rows [first, S) in blocks of kRows rows and, if S - first is not a
  /// multiple of kRows, one last block of exactly the rows left (rows a std::integral_constant): a
  /// whole block there would multiply padding rows (at S = 50 the last block has two rows; four
  /// would add 13% to the scores' packet multiply-adds and 10% to the update's, counted by
  /// replaying the tiling).
  template <class Block>
  EIGEN_ALWAYS_INLINE void in_row_blocks(Index first, Block&& block) {
    static_assert(kRows == 4, "the remainders below are 1 to 3 rows");
    for (; seq_len_ - first >= kRows; first += kRows) block(std::integral_constant<int, kRows>(), first);
    switch (seq_len_ - first) {
      case 3: block(std::integral_constant<int, 3>(), first); break;
      case 2: block(std::integral_constant<int, 2>(), first); break;
      case 1: block(std::integral_constant<int, 1>(), first); break;
      default: break;
    }
  }

  /// Scores of queries [first, first + Rows): Y Y^T over the key packets that hold their visible
  /// keys; the tile of packets c.. runs over the columns its last key can fill.
  template <int Rows, int Widest>
  void score_block(const RowMatrix& query, Index first) {
    constexpr Index P = packet_size<Scalar>();
    const auto [begin, end] = block_keys(first, Rows);
    const auto key_columns = [this](Index c, int packets, Index depth) {
      const Index last_key = std::min((c + packets) * P, seq_len_) - 1;
      return std::pair<Index, Index>{0, std::min(depth, support_[static_cast<std::size_t>(last_key)])};
    };
    const Index last_query = std::min(first + Rows, seq_len_) - 1;
    strip_product<Scalar, Rows, false, Widest>(query.data() + first * cols_, cols_, transposed_.data(), rows_,
                                               support_[static_cast<std::size_t>(last_query)],
                                               score_rows_.data() + first * rows_, rows_, begin / P, (end + P - 1) / P,
                                               key_columns);
  }

  /// Rows [first, first + Rows) of the update: state (+)= A Y over their visible keys, A Y as
  /// diag(row_inverse_) (W Y) from the softmax weights W; keys before the first one that reaches
  /// column packet c contribute zeros there and are skipped.
  template <int Rows, int Widest>
  void update_block(Index first) {
    constexpr Index P = packet_size<Scalar>();
    const auto [begin, end] = block_keys(first, Rows);
    const Scalar* probs = prob_rows_.data() + first * rows_ + begin;
    const Scalar* values = normalized_.data() + begin * cols_;
    Scalar* out = state_.data() + first * cols_;
    const auto skip = [this, begin = begin](Index c, int, Index depth) {
      return std::pair<Index, Index>{std::max<Index>(0, packet_first_key_[static_cast<std::size_t>(c)] - begin), depth};
    };
    const Scalar* scale = row_inverse_.data() + first;
    if (config_.residual)
      strip_product<Scalar, Rows, true, Widest, decltype(skip), true>(probs, rows_, values, cols_, end - begin, out, cols_, 0,
                                                                      cols_ / P, skip, scale);
    else
      strip_product<Scalar, Rows, false, Widest, decltype(skip), true>(probs, rows_, values, cols_, end - begin, out, cols_, 0,
                                                                       cols_ / P, skip, scale);
  }

  /// The union of the visible key ranges of queries [first, first + rows).
  EIGEN_ALWAYS_INLINE std::pair<Index, Index> block_keys(Index first, Index rows) const {
    const Index last = std::min(first + rows, seq_len_);
    Index begin = seq_len_, end = 0;
    for (Index i = first; i < last; ++i) {
      begin = std::min(begin, key_begin_[static_cast<std::size_t>(i)]);
      end = std::max(end, key_end_[static_cast<std::size_t>(i)]);
    }
    return {begin, end};
  }

  /// normalized_ = norm(state_) row by row (the formulas of normalize_rows), a packet's width of
  /// rows at a time: their sums are reduced together by one transpose, their scale factors come
  /// from one packet square root and division. A row whose divisor is 0 (a zero row with
  /// norm_eps = 0) becomes the zero row, as in normalize_rows. Padding columns stay zero.
  void normalize() {
    if (config_.norm == Norm::LayerNorm) normalize_rows_of<true>();
    else normalize_rows_of<false>();
  }

  template <bool Centred>
  void normalize_rows_of() {
    constexpr int P = packet_size<Scalar>();
    Index i = 0;
    for (; seq_len_ - i >= P; i += P) normalize_block<P, Centred>(i);
    for (; i < seq_len_; ++i) normalize_block<1, Centred>(i);
  }

  template <int Rows, bool Centred>
  void normalize_block(Index row0) {
    using namespace Eigen::internal;
    using Packet = PacketOf<Scalar>;
    constexpr int P = packet_size<Scalar>();
    // Columns beyond the support of the block's last row are zero (and stay zero in normalized_).
    const Index packets = round_up(support_[static_cast<std::size_t>(row0 + Rows - 1)], P) / P;
    const Scalar* x = state_.data() + row0 * cols_;
    Scalar* y = normalized_.data() + row0 * cols_;
    const Scalar inv_dim = Scalar(1) / static_cast<Scalar>(dim_);
    alignas(EIGEN_MAX_ALIGN_BYTES) Scalar mean[Rows > P ? Rows : P], factor[Rows > P ? Rows : P];
    const bool scaled = config_.norm != Norm::None;
    Packet mean_packet[Rows];
    if constexpr (Centred) {  // the mean first, then the variance about it (two passes, as normalize_rows)
      Packet sum[Rows];
      for (int r = 0; r < Rows; ++r) sum[r] = pset1<Packet>(Scalar(0));
      for (Index c = 0; c < packets; ++c)
        for (int r = 0; r < Rows; ++r) sum[r] = padd(sum[r], pload<Packet>(x + r * cols_ + c * P));
      lane_totals<Scalar, Rows>(sum, mean);
      for (int r = 0; r < Rows; ++r) mean_packet[r] = pset1<Packet>(mean[r] * inv_dim);
    }
    if (scaled) {
      Packet square[Rows];
      for (int r = 0; r < Rows; ++r) square[r] = pset1<Packet>(Scalar(0));
      for (Index c = 0; c < packets; ++c)
        for (int r = 0; r < Rows; ++r) {
          Packet v = pload<Packet>(x + r * cols_ + c * P);
          if constexpr (Centred) v = pand(psub(v, mean_packet[r]), column_mask(c));
          square[r] = pmadd(v, v, square[r]);
        }
      lane_totals<Scalar, Rows>(square, factor);
    } else {
      std::fill(factor, factor + (Rows > P ? Rows : P), Scalar(0));
    }
    const Scalar eps = static_cast<Scalar>(config_.norm_eps);
    // The factors of the block's rows at once, in one packet (a block of fewer rows fills its first
    // lanes), so every row gets the same operations whichever block it falls in; the mean square
    // plus eps is one explicit multiply-add (were it written a * b + c, the compiler could contract
    // it in one place and not in another, and rows would round differently: FrameKernel must match).
    static_assert(Rows <= P, "a block holds at most a packet of rows");
    if constexpr (P > 1) {
      for (int r = Rows; r < P; ++r) factor[r] = Scalar(1);  // unused lanes
      const Packet totals = pload<Packet>(factor);
      Packet divisor = pset1<Packet>(Scalar(1));
      if (config_.norm == Norm::L2) divisor = pmax(sqrt_packet(totals), pset1<Packet>(eps));
      else if (scaled) divisor = sqrt_packet(pmadd(totals, pset1<Packet>(inv_dim), pset1<Packet>(eps)));
      const Packet positive = pcmp_lt(pset1<Packet>(Scalar(0)), divisor);
      pstore(factor, pand(positive, pdiv(pset1<Packet>(Scalar(1)), divisor)));
    } else {
      for (int r = 0; r < Rows; ++r) {
        Scalar divisor = 1;
        if (config_.norm == Norm::L2) divisor = std::max(std::sqrt(factor[r]), eps);
        else if (scaled) divisor = std::sqrt(pmadd(factor[r], inv_dim, eps));
        factor[r] = divisor > 0 ? Scalar(1) / divisor : Scalar(0);
      }
    }
    Packet f[Rows];
    for (int r = 0; r < Rows; ++r) f[r] = pset1<Packet>(factor[r]);
    for (Index c = 0; c < packets; ++c)
      for (int r = 0; r < Rows; ++r) {
        Packet v = pload<Packet>(x + r * cols_ + c * P);
        if constexpr (Centred) v = pand(psub(v, mean_packet[r]), column_mask(c));
        pstore(y + r * cols_ + c * P, pmul(v, f[r]));
      }
  }

  /// transposed_ = keys^T for rows < S (the keys: normalized_ or, with RoPE, rotated_): a packet's
  /// width of rows at a time, one register transpose per column packet within their support.
  void transpose_keys(const RowMatrix& keys) {
    using namespace Eigen::internal;
    using Packet = PacketOf<Scalar>;
    constexpr int P = packet_size<Scalar>();
    Index row0 = 0;
    if constexpr (P > 1) {
      for (; seq_len_ - row0 >= P; row0 += P) {
        const Index packets = round_up(support_[static_cast<std::size_t>(row0 + P - 1)], P) / P;
        for (Index c = 0; c < packets; ++c) {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // the vector type's alignment attribute, as in Eigen
#endif
          PacketBlock<Packet, P> block;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
          for (int r = 0; r < P; ++r) block.packet[r] = pload<Packet>(keys.data() + (row0 + r) * cols_ + c * P);
          transpose_inline(block);
          for (int k = 0; k < P; ++k) pstoreu(transposed_.data() + (c * P + k) * rows_ + row0, block.packet[k]);
        }
      }
    }
    for (; row0 < seq_len_; ++row0)
      for (Index k = 0; k < support_[static_cast<std::size_t>(row0)]; ++k) transposed_(k, row0) = keys(row0, k);
  }

  /// All-ones lanes for the columns < d of packet c, zero lanes for the padding.
  PacketOf<Scalar> column_mask(Index c) const {
    return c + 1 < cols_ / packet_size<Scalar>() ? Eigen::internal::ptrue(PacketOf<Scalar>()) : last_columns_;
  }

  /// The rotation of RotaryEmbedding::apply as two row-major tables: rotated(i, c) = y(i, c)
  /// rope_cos_(i, c) + y(i, partner(c)) rope_sin_(i, c), with the sign of the sine folded in and
  /// (cos, sin) = (1, 0) beyond the rotary dimension. For the half-split layout with half a
  /// multiple of the packet size, partner(c) = c +- half is a whole packet away: two packet loads,
  /// a product and a multiply-add per packet. Otherwise a scalar loop over the partner indices.
  void build_rotation_tables() {
    const RotaryEmbedding<Scalar>& rope = *rope_;
    const Index rotary = rope.frequencies().rotary_dim, half = rotary / 2;
    const double factor = rope.frequencies().attention_factor;
    rope_cos_.setZero(rows_, cols_);
    rope_sin_.setZero(rows_, cols_);
    rope_partner_.resize(static_cast<std::size_t>(cols_));
    for (Index c = 0; c < cols_; ++c) rope_partner_[static_cast<std::size_t>(c)] = c;
    for (Index k = 0; k < half; ++k) {
      const auto [first, second] = rope.coordinates(k);
      rope_partner_[static_cast<std::size_t>(first)] = second;
      rope_partner_[static_cast<std::size_t>(second)] = first;
    }
    for (Index i = 0; i < seq_len_; ++i) {
      for (Index c = 0; c < dim_; ++c) rope_cos_(i, c) = Scalar(1);
      for (Index k = 0; k < half; ++k) {
        const auto [first, second] = rope.coordinates(k);
        const double phi = rope.angle(i, k);
        const Scalar cosine = static_cast<Scalar>(std::cos(phi) * factor), sine = static_cast<Scalar>(std::sin(phi) * factor);
        rope_cos_(i, first) = rope_cos_(i, second) = cosine;
        rope_sin_(i, first) = -sine;
        rope_sin_(i, second) = sine;
      }
    }
    constexpr Index P = packet_size<Scalar>();
    packet_half_ = rope.frequencies().layout == RopeLayout::HalfSplit && half % P == 0 ? half : 0;
  }

  /// rotated_ = RoPE(normalized_) for rows < S (see build_rotation_tables).
  void rotate() {
    using namespace Eigen::internal;
    using Packet = PacketOf<Scalar>;
    constexpr Index P = packet_size<Scalar>();
    for (Index i = 0; i < seq_len_; ++i) {
      const Scalar* y = normalized_.data() + i * cols_;
      const Scalar* cosine = rope_cos_.data() + i * cols_;
      const Scalar* sine = rope_sin_.data() + i * cols_;
      Scalar* out = rotated_.data() + i * cols_;
      if (packet_half_ > 0) {
        const Index half = packet_half_;
        for (Index c = 0; c < cols_; c += P) {
          const Index partner = c < half ? c + half : c < 2 * half ? c - half : c;
          pstore(out + c, pmadd(pload<Packet>(y + partner), pload<Packet>(sine + c),
                                pmul(pload<Packet>(y + c), pload<Packet>(cosine + c))));
        }
      } else {
        for (Index c = 0; c < cols_; ++c)
          out[c] = y[c] * cosine[c] + y[rope_partner_[static_cast<std::size_t>(c)]] * sine[c];
      }
    }
  }

  void softmax() {
    masked_softmax_rows<Scalar>(score_rows_.data(), prob_rows_.data(), rows_, seq_len_, key_begin_.data(),
                                key_end_.data(), scale_, shift_, row_inverse_.data());
  }

  DecoderConfig config_;
  Index seq_len_, dim_, width_, rows_ = 0, cols_ = 0;
  Scalar scale_, shift_;
  std::optional<RotaryEmbedding<Scalar>> rope_;
  RowMatrix rope_cos_, rope_sin_;      ///< the rotation as row-major tables (build_rotation_tables)
  std::vector<Index> rope_partner_;    ///< the coordinate each coordinate is paired with
  Index packet_half_ = 0;              ///< half the rotary dimension when the packet path applies, else 0
  RowMatrix state_, normalized_, rotated_, score_rows_;
  RowMatrix prob_rows_;  ///< the softmax weights; row i times row_inverse_[i] is A's row i
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> row_inverse_;
  RowMatrix transposed_;  ///< the keys transposed (cols_ x rows_): normalized_^T, or rotated_^T with RoPE
  PacketOf<Scalar> last_columns_;  ///< lanes of the last column packet that hold columns < d
  std::vector<Index> key_begin_, key_end_;
  Index triangle_end_ = 0;               ///< rows before it are shorter than width_ (0 unless triangular)
  std::vector<Index> support_;           ///< columns of row j that can be non-zero (width_ for dense rows)
  std::vector<Index> packet_first_key_;  ///< per column packet, the first key row non-zero in it
  mutable Matrix<Scalar> scores_cache_, probs_cache_;
  mutable bool scores_cached_ = false, probs_cached_ = false;
};

/// Throws std::invalid_argument at the first entry, row by row ((0, 0), (0, 1), ..., (1, 0), ...), of a
/// user-supplied matrix that is not finite or, given a `limit`, exceeds it in magnitude (`why` says why).
template <class Derived>
void require_finite(const Eigen::MatrixBase<Derived>& values, const std::string& name,
                    double limit = std::numeric_limits<double>::infinity(), const std::string& why = "") {
  for (Index i = 0; i < values.rows(); ++i)
    for (Index j = 0; j < values.cols(); ++j) {
      const double value = static_cast<double>(values(i, j));
      if (!std::isfinite(value) || std::fabs(value) > limit)
        throw_invalid(name + "(" + std::to_string(i) + ", " + std::to_string(j) + ")", values(i, j),
                      std::isfinite(value) ? "|x| <= " + to_text(limit) + why : "finite (no NaN or infinity)");
    }
}

/// Throws std::invalid_argument at the first entry, row by row, of user-supplied S x d tokens that is not
/// finite or exceeds sqrt(M / (4 d)) in magnitude, M the largest Scalar: then every squared row norm is
/// at most M / 4, finite in Scalar with room for the residual's growth.
template <class Scalar, class Derived>
void require_tokens(const Eigen::MatrixBase<Derived>& tokens, const std::string& name) {
  const double largest = std::numeric_limits<Scalar>::max(), d = static_cast<double>(tokens.cols());
  require_finite(tokens, name, std::sqrt(largest / (4 * d)),
                 " = sqrt(M / (4 d)) with M = " + to_text(largest) + " the largest " + scalar_name<Scalar>() +
                     " and d = " + to_text(tokens.cols()) + " (squared row norms must stay finite in " +
                     scalar_name<Scalar>() + ")");
}

}  // namespace detail

/// Runs the decoder on one sequence and returns every layer's scores, probabilities and output.
///
/// \param config  the decoder; \pre config.validate_for<Scalar>(S, d) passes
/// \param tokens  S x d input tokens (rows); \pre all entries finite, |x| <= sqrt(M / (4 d)) with M the
///                largest Scalar (see detail::require_tokens)
/// \return L traces, layer 1 first
///
/// Example (paper Fig. 1: three orthonormal tokens, L2, causal, two layers):
/// \code
/// #include <maskpos/decoder.hpp>
/// #include <iostream>
/// int main() {
///   maskpos::DecoderConfig config;
///   config.layers = 2;
///   auto traces = maskpos::forward<double>(config, Eigen::MatrixXd::Identity(3, 3));
///   std::cout << traces[1].scores << "\n";  // (1,0) = 0.1535, (2,0) = 0.1321, (2,1) = 0.1508
/// }
/// \endcode
template <class Scalar, class Derived>
std::vector<LayerTrace<Scalar>> forward(const DecoderConfig& config, const Eigen::MatrixBase<Derived>& tokens) {
  detail::check_scalar<Scalar>();
  const Index S = tokens.rows(), d = tokens.cols();
  config.validate_for<Scalar>(S, d);
  detail::require_tokens<Scalar>(tokens, "tokens");
  detail::DecoderKernel<Scalar> kernel(config, S, d);
  Matrix<Scalar> state = tokens.template cast<Scalar>();
  std::vector<LayerTrace<Scalar>> traces;
  traces.reserve(static_cast<std::size_t>(config.layers));
  for (Index l = 0; l < config.layers; ++l) {
    kernel.layer(state);
    LayerTrace<Scalar> trace;
    trace.scores = Matrix<Scalar>::Constant(S, S, std::numeric_limits<Scalar>::quiet_NaN());
    trace.probs = Matrix<Scalar>::Zero(S, S);
    for (Index i = 0; i < S; ++i)
      for (Index j = 0; j < S; ++j)
        if (config.mask.visible(i, j)) {
          trace.scores(i, j) = kernel.scores()(i, j);
          trace.probs(i, j) = kernel.probs()(i, j);
        }
    trace.output = state;
    traces.push_back(std::move(trace));
  }
  return traces;
}

}  // namespace maskpos
