/// @file monte_carlo.hpp
/// @brief The Monte Carlo driver: mean scores, mean probabilities and standard errors over many
/// random sequences, streamed (memory independent of the number of samples), multi-threaded, and
/// bit-identical for any thread count or any split of the sample range.
#pragma once

#include <Eigen/Core>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "decoder.hpp"
#include "detail/errors.hpp"
#include "detail/exact_sum.hpp"
#include "detail/frame_kernel.hpp"
#include "detail/gram_kernel.hpp"
#include "inputs.hpp"
#include "types.hpp"

namespace maskpos {

using detail::SumGrid;

/// How the Monte Carlo driver propagates each sequence. Direct and Gram average over exactly the
/// tokens of InputGenerator::generate and agree up to rounding; Triangular draws the same
/// distribution in each sequence's own frame, so its means agree with theirs within Monte Carlo error.
enum class MonteCarloPath {
  Auto,       ///< Triangular for Gaussian inputs without RoPE; otherwise Gram where it is measured to be
              ///< faster (no RoPE, 8 d > 3 S + 456), else Direct
  Direct,     ///< token space: S^2 d work per layer (detail::DecoderKernel)
  Gram,       ///< Gram space: about 2 S^3 / 3 per layer (detail::TiledGramKernel); \pre no RoPE
  Triangular  ///< token space in the sequence's triangular frame (InputGenerator::generate_triangular_into):
              ///< width min(S + 1, d), about S^3 / 3 per layer for causal masks; \pre Gaussian inputs, no RoPE
};

inline std::string to_string(MonteCarloPath path) {
  switch (path) {
    case MonteCarloPath::Auto: return "auto";
    case MonteCarloPath::Direct: return "direct";
    case MonteCarloPath::Gram: return "gram";
    case MonteCarloPath::Triangular: return "triangular";
  }
  return "?";
}

/// The path a Monte Carlo run of `config` over `inputs` takes when `requested` is asked for: Auto's
/// choice (see MonteCarloPath), any other path as given once it is checked to apply.
/// \throws std::invalid_argument for Gram or Triangular with RoPE, Triangular without Gaussian inputs
template <class Scalar>
MonteCarloPath resolve_path(const DecoderConfig& config, const InputSpec& inputs, MonteCarloPath requested) {
  MonteCarloPath path = requested;
  if (requested == MonteCarloPath::Auto) {
    if (inputs.kind == InputKind::Gaussian && !config.rope) path = MonteCarloPath::Triangular;
    else if (detail::TiledGramKernel<Scalar>::preferred(config, inputs.seq_len, inputs.dim)) path = MonteCarloPath::Gram;
    else path = MonteCarloPath::Direct;
  }
  if (path == MonteCarloPath::Gram || path == MonteCarloPath::Triangular)
    detail::require(!config.rope, "Monte Carlo path", to_string(path), "no RoPE (use auto or direct)");
  if (path == MonteCarloPath::Triangular)
    detail::require(inputs.kind == InputKind::Gaussian, "Monte Carlo path", to_string(path),
                    "gaussian inputs (" + to_string(inputs.kind) + " given; use auto or direct)");
  return path;
}

/// How many samples to draw, from which seed, on how many threads.
struct MonteCarloOptions {
  std::int64_t samples = 100000;   ///< B >= 1
  std::uint64_t seed = 0;
  std::uint64_t first_sample = 0;  ///< the run covers samples [first_sample, first_sample + B)
  int threads = 0;                 ///< 0: all hardware threads; \pre threads >= 0
  MonteCarloPath path = MonteCarloPath::Auto;
  /// Called from the calling thread with (samples done, samples in total); may be empty.
  std::function<void(std::int64_t, std::int64_t)> progress;
};

/// Per-layer Monte Carlo means (double, S x S). Masked score entries are NaN, masked probabilities 0.
struct MonteCarloResult {
  std::int64_t samples = 0;
  std::vector<Matrix<double>> mean_scores;    ///< E[S(l)], scaled, pre-softmax
  std::vector<Matrix<double>> mean_probs;     ///< E[A(l)]
  std::vector<Matrix<double>> stderr_scores;  ///< standard error of each mean score
  /// Tier-2 numerical status: values that were NaN, infinite or beyond the a-priori bound and
  /// were therefore left out of the sums. Zero in every healthy run.
  std::int64_t out_of_range = 0;
};

/// Streaming, exactly mergeable sums of scores, squared scores and probabilities per layer.
///
/// Two accumulators built for the same decoder and inputs can be merged in any order with
/// identical results (see detail::ExactSum). Thread safety: one accumulator per thread.
class MonteCarloAccumulator {
 public:
  /// \param grid  how finely each value is rounded before the exact sums (see detail::SumGrid):
  ///               monte_carlo_accumulate uses SumGrid::Float for float runs, SumGrid::Double for
  ///               double runs. Only accumulators with the same grid can be merged.
  /// \param lanes  0: the entries are added row by row (add_layer_rows: DecoderKernel,
  ///               TiledGramKernel); P >= 1: in packets of P queries (add_layer_packets:
  ///               detail::FrameKernel with P = its packet size), \pre a lower-triangular mask.
  ///               Only accumulators with the same layout can be merged.
  MonteCarloAccumulator(const DecoderConfig& config, const InputSpec& inputs, SumGrid grid = SumGrid::Double,
                        Index lanes = 0)
      : seq_len_(inputs.seq_len), mask_(config.mask), lanes_(lanes) {
    config.validate(inputs.seq_len, inputs.dim);
    detail::require(lanes >= 0, "accumulator lanes", lanes, "lanes >= 0 (0: rows, P: packets of P queries)");
    detail::require(lanes == 0 || mask_.is_lower_triangular(), "mask", mask_.name(),
                    "lower-triangular (causal) for an accumulator in query packets");
    Index offset = 0;
    if (lanes_ == 0) {
      // Visible entries row by row (each row's visible keys are one contiguous range): the order in
      // which DecoderKernel lays out its rows, so that add_layer_rows reads memory contiguously. Each
      // row starts at a multiple of kRowAlign entries (32 bytes of int32): the Float grid's packets
      // of a row are then aligned, never split across cache lines, and end in the row's own padding.
      for (Index i = 0; i < seq_len_; ++i) {
        const Index begin = mask_.first_key(i), end = mask_.end_key(i, seq_len_);
        rows_.push_back({begin, end, offset});
        offset += (end - begin + kRowAlign - 1) / kRowAlign * kRowAlign;
      }
    } else {
      // FrameKernel's layout: queries in packets of `lanes`, the partial one first (pad lanes of
      // padding); packet q holds one packet of entries per key it sees, keys 0 .. (q + 1) lanes - pad - 1.
      pad_ = detail::query_packet_pad(seq_len_, lanes_);
      for (Index q = 0; q * lanes_ < seq_len_ + pad_; ++q) {
        const Index keys = (q + 1) * lanes_ - pad_;
        packets_.push_back({offset, keys});
        offset += keys * lanes_;
      }
    }
    for (Index i = 0; i < seq_len_; ++i)
      for (Index j = mask_.first_key(i); j < mask_.end_key(i, seq_len_); ++j) visible_.emplace_back(i, j);
    const Index n = offset;
    for (Index l = 0; l < config.layers; ++l) {
      // A-priori bound on |score| (x2 margin for rounding in the float forward pass).
      const double bound = 2.0 * score_bound(config, inputs, l);
      // Squared scores are summed too: their bound must be a finite double.
      detail::require(bound * bound <= std::numeric_limits<double>::max(), "score bound of layer " + std::to_string(l + 1),
                      bound / 2, "|score| <= " + detail::to_text(std::sqrt(std::numeric_limits<double>::max()) / 2) +
                                     " (a Monte Carlo run sums squared scores, with a margin of 2, in double): lower the "
                                     "score scale" + (config.norm == Norm::None ? ", the token norms or the layers" : ""));
      score_sum_.emplace_back(n, bound, grid);
      score_square_sum_.emplace_back(n, bound * bound, grid);
      prob_sum_.emplace_back(n, 2.0, grid);
    }
  }

  /// Adds the visible entries of one layer of one sample (S x S matrices, query rows).
  template <class Scalar>
  void add_layer(Index layer, const Matrix<Scalar>& scores, const Matrix<Scalar>& probs) {
    // A row-major copy: the same bits as add_layer_rows<Scalar> on the kernel's rows.
    auto& score_copy = copy_buffer<Scalar>(0);
    auto& prob_copy = copy_buffer<Scalar>(1);
    score_copy = scores;
    prob_copy = probs;
    add_layer_rows<Scalar>(layer, score_copy.data(), prob_copy.data(), seq_len_);
  }

  /// Adds the visible entries of one layer of one sample, given row-major storage: entry (i, j) of
  /// the scores at scores[i row_stride + j], of the probabilities at probs[i row_stride + j], or,
  /// given `row_scale`, at probs[i row_stride + j] * row_scale[i] (rounded to Scalar: the
  /// unnormalised rows of DecoderKernel::weight_data() and its row_inverse()).
  ///
  /// One fused pass per row: each value is checked against the a-priori bounds, then score, squared
  /// score and probability are rounded to their grids and added (see detail::ExactSum). A row with
  /// a value out of range (or NaN) takes a slow path that skips exactly those values.
  template <class Scalar>
  void add_layer_rows(Index layer, const Scalar* scores, const Scalar* probs, Index row_stride,
                      const Scalar* row_scale = nullptr) {
    const std::size_t l = static_cast<std::size_t>(layer);
    detail::ExactSum &score_sum = score_sum_[l], &square_sum = score_square_sum_[l], &prob_sum = prob_sum_[l];
    if constexpr (std::is_same_v<Scalar, float>) {
      if (score_sum.grid() == SumGrid::Float) {
        add_rows_float(scores, probs, row_stride, row_scale, score_sum, square_sum, prob_sum);
        score_sum.commit();
        square_sum.commit();
        prob_sum.commit();
        return;
      }
    }
    for (Index i = 0; i < seq_len_; ++i) {
      const RowRange range = rows_[static_cast<std::size_t>(i)];
      const Scalar* score_row = scores + i * row_stride + range.begin;
      const Scalar* prob_row = probs + i * row_stride + range.begin;
      const Index n = range.end - range.begin;
      const Scalar factor = row_scale != nullptr ? row_scale[i] : Scalar(1);  // p * 1 = p exactly
      if (score_sum.grid() == SumGrid::Double) {
        add_row_double(score_row, prob_row, &factor, 0, n, range.offset, score_sum, square_sum, prob_sum);
      } else {
        for (Index k = 0; k < n; ++k) {
          const double s = static_cast<double>(score_row[k]);
          add_checked(score_sum, range.offset + k, s);
          add_checked(square_sum, range.offset + k, s * s);
          add_checked(prob_sum, range.offset + k, static_cast<double>(Scalar(prob_row[k] * factor)));
        }
      }
    }
    score_sum.commit();
    square_sum.commit();
    prob_sum.commit();
  }

  /// Adds the visible entries of one layer of one sample given in query packets (the layout of
  /// detail::FrameKernel; \pre the accumulator was built with lanes = that kernel's packet size):
  /// with pad = (lanes - S mod lanes) mod lanes, query i is lane (i + pad) mod lanes of packet
  /// q = (i + pad) / lanes; packet q's block starts at detail::query_packet_block(q, lanes) =
  /// lanes^2 q (q + 1) / 2 and holds one packet of lanes per key column c = j + pad < (q + 1) lanes.
  /// Query i's score against key j is scores[query_packet_block(q, lanes) + c lanes + lane], its
  /// probability weights[...] (at the same place) times inverse[q lanes + lane], rounded to Scalar.
  /// Lanes of keys a query does not see are ignored.
  template <class Scalar>
  void add_layer_packets(Index layer, const Scalar* scores, const Scalar* weights, const Scalar* inverse) {
    // (Checked without building the message's strings unless it fails: this runs L times per sample.)
    if (lanes_ <= 0) detail::throw_invalid("accumulator lanes", lanes_, "lanes >= 1 for add_layer_packets (use add_layer_rows)");
    const std::size_t l = static_cast<std::size_t>(layer);
    detail::ExactSum &score_sum = score_sum_[l], &square_sum = score_square_sum_[l], &prob_sum = prob_sum_[l];
    bool vectorised = false;
    if constexpr (std::is_same_v<Scalar, float>) {
      if (score_sum.grid() == SumGrid::Float) {
        add_packets_float(scores, weights, inverse, score_sum, square_sum, prob_sum);
        vectorised = true;
      }
    }
    for (std::size_t q = 0; q < packets_.size() && !vectorised; ++q) {
      // Key j's packet: the lanes from max(0, j + pad - q lanes) on see it.
      const Index column = static_cast<Index>(q) * lanes_;
      for (Index j = 0; j < packets_[q].keys; ++j) {
        const Index first_lane = std::max<Index>(0, j + pad_ - column), n = lanes_ - first_lane;
        const Index at = detail::query_packet_block(static_cast<Index>(q), lanes_) + (j + pad_) * lanes_ + first_lane;
        const Index index = packets_[q].offset + j * lanes_ + first_lane;
        if (score_sum.grid() == SumGrid::Double) {
          add_row_double(scores + at, weights + at, inverse + column + first_lane, 1, n, index, score_sum, square_sum, prob_sum);
        } else {
          for (Index k = 0; k < n; ++k) {
            const double s = static_cast<double>(scores[at + k]);
            add_checked(score_sum, index + k, s);
            add_checked(square_sum, index + k, s * s);
            add_checked(prob_sum, index + k, static_cast<double>(Scalar(weights[at + k] * inverse[column + first_lane + k])));
          }
        }
      }
    }
    score_sum.commit();
    square_sum.commit();
    prob_sum.commit();
  }

  /// Adds another accumulator of the same decoder and inputs. \pre compatible (else invalid_argument).
  void merge(const MonteCarloAccumulator& other) {
    detail::require(other.score_sum_.size() == score_sum_.size() && other.seq_len_ == seq_len_ &&
                        other.visible_ == visible_ && other.lanes_ == lanes_ &&
                        score_sum_[0].compatible(other.score_sum_[0]),
                    "merged accumulator", "incompatible", "the same decoder configuration and input shape");
    for (std::size_t l = 0; l < score_sum_.size(); ++l) {
      score_sum_[l].merge(other.score_sum_[l]);
      score_square_sum_[l].merge(other.score_square_sum_[l]);
      prob_sum_[l].merge(other.prob_sum_[l]);
    }
  }

  /// Samples added so far.
  std::int64_t samples() const { return score_sum_.empty() ? 0 : score_sum_[0].count(); }

  /// Means and standard errors. The variance is E[s^2] - E[s]^2 from the exact sums, evaluated in
  /// long double; with B samples the standard error is sqrt(var B / (B - 1) / B).
  MonteCarloResult result() const {
    MonteCarloResult out;
    out.samples = samples();
    const long double B = static_cast<long double>(out.samples);
    for (std::size_t l = 0; l < score_sum_.size(); ++l) {
      Matrix<double> mean = Matrix<double>::Constant(seq_len_, seq_len_, std::numeric_limits<double>::quiet_NaN());
      Matrix<double> error = mean;
      Matrix<double> probs = Matrix<double>::Zero(seq_len_, seq_len_);
      for (const auto& [i, j] : visible_) {
        const Index index = entry_index(i, j);
        const long double m = score_sum_[l].total(index) / B;
        const long double second = score_square_sum_[l].total(index) / B;
        const long double var = std::max<long double>(second - m * m, 0.0L);
        mean(i, j) = static_cast<double>(m);
        error(i, j) = out.samples > 1 ? static_cast<double>(std::sqrt(var / (B - 1))) : std::numeric_limits<double>::quiet_NaN();
        probs(i, j) = static_cast<double>(prob_sum_[l].total(index) / B);
      }
      out.mean_scores.push_back(std::move(mean));
      out.stderr_scores.push_back(std::move(error));
      out.mean_probs.push_back(std::move(probs));
      out.out_of_range += score_sum_[l].out_of_range() + score_square_sum_[l].out_of_range() + prob_sum_[l].out_of_range();
    }
    return out;
  }

  /// A-priori bound on |score| at layer `layer` (0-based): DecoderConfig::score_bound for the inputs'
  /// largest token norm (1 for Gaussian and orthonormal inputs).
  static double score_bound(const DecoderConfig& config, const InputSpec& inputs, Index layer) {
    return config.score_bound(inputs.seq_len, inputs.dim, inputs.max_token_norm(), layer);
  }

 private:
  static void add_checked(detail::ExactSum& sum, Index k, double value) {
    const double scaled = value * sum.scale();
    if (std::fabs(scaled) <= sum.limit()) sum.add_integer(static_cast<std::size_t>(k), std::nearbyint(scaled));
    else sum.skip(1);
  }

  /// Double grid: score, squared score (exact in double for float scores) and probability are
  /// rounded with the 1.5 * 2^52 trick and added to the double blocks. A row with a value out of
  /// range (or NaN) takes a slow path that skips exactly those values.
  template <class Scalar>
  static void add_row_double(const Scalar* score_row, const Scalar* prob_row, const Scalar* factor, Index factor_step,
                             Index n, Index offset, detail::ExactSum& score_sum, detail::ExactSum& square_sum,
                             detail::ExactSum& prob_sum) {
    constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52: (x + kRound) - kRound rounds x to an integer
    double* const s_out = score_sum.block() + offset;
    double* const q_out = square_sum.block() + offset;
    double* const p_out = prob_sum.block() + offset;
    const double score_scale = score_sum.scale(), square_scale = square_sum.scale(), prob_scale = prob_sum.scale();
    const double score_limit = score_sum.limit(), square_limit = square_sum.limit(), prob_limit = prob_sum.limit();
    int bad = 0;
    for (Index k = 0; k < n; ++k) {
      const double s = static_cast<double>(score_row[k]), p = static_cast<double>(Scalar(prob_row[k] * factor[k * factor_step]));
      bad |= static_cast<int>(!(std::fabs(s * score_scale) <= score_limit)) |
             static_cast<int>(!(s * s * square_scale <= square_limit)) |
             static_cast<int>(!(std::fabs(p * prob_scale) <= prob_limit));
    }
    if (bad == 0) {
      for (Index k = 0; k < n; ++k) {
        const double s = static_cast<double>(score_row[k]), p = static_cast<double>(Scalar(prob_row[k] * factor[k * factor_step]));
        s_out[k] += (s * score_scale + kRound) - kRound;
        q_out[k] += (s * s * square_scale + kRound) - kRound;
        p_out[k] += (p * prob_scale + kRound) - kRound;
      }
      return;
    }
    for (Index k = 0; k < n; ++k) {
      const double s = static_cast<double>(score_row[k]);
      add_checked(score_sum, offset + k, s);
      add_checked(square_sum, offset + k, s * s);
      add_checked(prob_sum, offset + k, static_cast<double>(Scalar(prob_row[k] * factor[k * factor_step])));
    }
  }

  /// The Float grid for float values: v 2^q is exact in float (a power-of-two scale) and rounded
  /// to the nearest int32 (ties to even; with AVX2 eight at a time), the squared score is the float
  /// product s * s and the probability the float product w * factor (weight times its row's
  /// 1 / total, or 1). The scalar form adds one entry, skipping each value out of range (or NaN).
  struct FloatGrid {
    float score_scale, square_scale, prob_scale, limit;  // limit: 2^27 for every Float-grid sum
    std::int32_t *s_out, *q_out, *p_out;
    detail::ExactSum *score_sum, *square_sum, *prob_sum;

    FloatGrid(detail::ExactSum& s, detail::ExactSum& q, detail::ExactSum& p)
        : score_scale(static_cast<float>(s.scale())), square_scale(static_cast<float>(q.scale())),
          prob_scale(static_cast<float>(p.scale())), limit(static_cast<float>(s.limit())), s_out(s.block32()),
          q_out(q.block32()), p_out(p.block32()), score_sum(&s), square_sum(&q), prob_sum(&p) {}

    void add(Index index, float s, float w, float factor) const {
      const float qs = s * score_scale, qq = (s * s) * square_scale, qp = (w * factor) * prob_scale;
      if (std::fabs(qs) <= limit) s_out[index] += static_cast<std::int32_t>(std::nearbyint(qs));
      else score_sum->skip(1);
      if (qq <= limit) q_out[index] += static_cast<std::int32_t>(std::nearbyint(qq));
      else square_sum->skip(1);
      if (std::fabs(qp) <= limit) p_out[index] += static_cast<std::int32_t>(std::nearbyint(qp));
      else prob_sum->skip(1);
    }
  };

#if defined(__AVX2__)
  /// FloatGrid's constants as packets (hoisted out of the loops over rows or packets).
  struct FloatGridPackets {
    __m256 scale_s, scale_q, scale_p, bound, magnitude;
    explicit FloatGridPackets(const FloatGrid& grid)
        : scale_s(_mm256_set1_ps(grid.score_scale)), scale_q(_mm256_set1_ps(grid.square_scale)),
          scale_p(_mm256_set1_ps(grid.prob_scale)), bound(_mm256_set1_ps(grid.limit)),
          magnitude(_mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))) {}

    /// FloatGrid::add on eight entries from `index` on (a multiple of 8): false, and nothing added,
    /// when a value is out of range (the caller then adds them one by one).
    bool add(const FloatGrid& grid, Index index, __m256 s, __m256 w, __m256 factor) const {
      const __m256 qs = _mm256_mul_ps(s, scale_s), qq = _mm256_mul_ps(_mm256_mul_ps(s, s), scale_q),
                   qp = _mm256_mul_ps(_mm256_mul_ps(w, factor), scale_p);
      const __m256 ok = _mm256_and_ps(
          _mm256_and_ps(_mm256_cmp_ps(_mm256_and_ps(qs, magnitude), bound, _CMP_LE_OQ), _mm256_cmp_ps(qq, bound, _CMP_LE_OQ)),
          _mm256_cmp_ps(_mm256_and_ps(qp, magnitude), bound, _CMP_LE_OQ));
      if (_mm256_movemask_ps(ok) != 0xff) return false;
      auto add_to = [](std::int32_t* out, __m256 value) {  // aligned: the layouts start packets at multiples of 8
        __m256i* at = reinterpret_cast<__m256i*>(out);
        _mm256_store_si256(at, _mm256_add_epi32(_mm256_load_si256(at), _mm256_cvtps_epi32(value)));
      };
      add_to(grid.s_out + index, qs);
      add_to(grid.q_out + index, qq);
      add_to(grid.p_out + index, qp);
      return true;
    }
  };
#endif

  /// Row layout, Float grid.
  void add_rows_float(const float* scores, const float* probs, Index row_stride, const float* row_scale,
                      detail::ExactSum& score_sum, detail::ExactSum& square_sum, detail::ExactSum& prob_sum) const {
    // The constants once per layer, then every row (each row's set-up used to be a call of its own).
    const FloatGrid grid(score_sum, square_sum, prob_sum);
#if defined(__AVX2__)
    const FloatGridPackets packets(grid);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#endif
    for (Index i = 0; i < seq_len_; ++i) {
      const RowRange range = rows_[static_cast<std::size_t>(i)];
      const float* const score_row = scores + i * row_stride + range.begin;
      const float* const prob_row = probs + i * row_stride + range.begin;
      const Index n = range.end - range.begin;
      const float factor = row_scale != nullptr ? row_scale[i] : 1.0f;  // p * 1 = p exactly
      Index k = 0;
#if defined(__AVX2__)
      const __m256 row_factor = _mm256_set1_ps(factor);
      for (; k < n; k += 8) {
        // Whole packets load plainly; the last one of a row only its n - k valid lanes (the others
        // read as 0 and add 0 to the row's padding).
        __m256 s, p;
        if (n - k >= 8) {
          s = _mm256_loadu_ps(score_row + k);
          p = _mm256_loadu_ps(prob_row + k);
        } else {
          const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - k)), lanes);
          s = _mm256_maskload_ps(score_row + k, valid);
          p = _mm256_maskload_ps(prob_row + k, valid);
        }
        if (!packets.add(grid, range.offset + k, s, p, row_factor)) break;  // the scalar loop does the rest
      }
#endif
      for (; k < n; ++k) grid.add(range.offset + k, score_row[k], prob_row[k], factor);
    }
  }

  /// Query-packet layout (FrameKernel), Float grid. The lanes a packet's queries do not see (of
  /// its own keys, and padding queries) are added as zeros.
  void add_packets_float(const float* scores, const float* weights, const float* inverse,
                         detail::ExactSum& score_sum, detail::ExactSum& square_sum, detail::ExactSum& prob_sum) const {
    const FloatGrid grid(score_sum, square_sum, prob_sum);
    const Index lanes = lanes_;
#if defined(__AVX2__)
    const FloatGridPackets packets(grid);
    const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#endif
    for (std::size_t q = 0; q < packets_.size(); ++q) {
      const PacketRange range = packets_[q];
      const Index column = static_cast<Index>(q) * lanes;
      const Index block = detail::query_packet_block(static_cast<Index>(q), lanes);
      const float* const factor = inverse + column;
      const auto add_one_by_one = [&](Index j, Index index, const float* s, const float* w) {
        for (Index l = 0; l < lanes; ++l)
          if (column + l - pad_ >= j) grid.add(index + l, s[l], w[l], factor[l]);
      };
      Index j = 0;
#if defined(__AVX2__)
      if (lanes == 8) {
        // Keys j < shared are seen by every lane (no padding lanes outside the first packet); the
        // lanes l >= j + pad - column see key j >= shared.
        const Index shared = std::max<Index>(0, column - pad_ + 1);
        const __m256 row_factor = _mm256_load_ps(factor);
        for (; j < range.keys; ++j) {
          const float* const s = scores + block + (j + pad_) * lanes;
          const float* const w = weights + block + (j + pad_) * lanes;
          const Index index = range.offset + j * lanes;
          __m256 score = _mm256_load_ps(s), weight = _mm256_load_ps(w);
          if (j >= shared) {  // the lanes that do not see key j add zeros, whatever they hold
            const __m256 unseen = _mm256_castsi256_ps(
                _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(j + pad_ - column)), lane_index));
            score = _mm256_andnot_ps(unseen, score);
            weight = _mm256_andnot_ps(unseen, weight);
          }
          if (!packets.add(grid, index, score, weight, row_factor)) add_one_by_one(j, index, s, w);
        }
      }
#endif
      for (; j < range.keys; ++j)
        add_one_by_one(j, range.offset + j * lanes, scores + block + (j + pad_) * lanes, weights + block + (j + pad_) * lanes);
    }
  }

  /// The storage index of visible entry (query i, key j).
  Index entry_index(Index i, Index j) const {
    if (lanes_ == 0) {
      const RowRange& row = rows_[static_cast<std::size_t>(i)];
      return row.offset + j - row.begin;
    }
    const Index q = (i + pad_) / lanes_;
    return packets_[static_cast<std::size_t>(q)].offset + j * lanes_ + (i + pad_) % lanes_;
  }

  struct PacketRange {
    Index offset, keys;  ///< a query packet's entries: `keys` packets of lanes_ from `offset` on
  };
  struct RowRange {
    Index begin, end, offset;  ///< visible keys [begin, end) of a row, stored from `offset` on
  };
  static constexpr Index kRowAlign = 8;
  Index seq_len_;
  Mask mask_;
  Index lanes_ = 0, pad_ = 0;             ///< 0: row layout; else query packets of lanes_, pad_ padding lanes first
  std::vector<RowRange> rows_;            ///< row layout
  std::vector<PacketRange> packets_;      ///< query-packet layout
  std::vector<std::pair<Index, Index>> visible_;  ///< (query, key), row by row
  std::vector<detail::ExactSum> score_sum_, score_square_sum_, prob_sum_;
  template <class Scalar>
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  template <class Scalar>
  RowMatrix<Scalar>& copy_buffer(int which) {
    if constexpr (std::is_same_v<Scalar, float>) return float_copies_[which];
    else return double_copies_[which];
  }
  RowMatrix<float> float_copies_[2];    ///< add_layer only
  RowMatrix<double> double_copies_[2];  ///< add_layer only
};

namespace detail {
/// One worker's share of a Monte Carlo run: chunks of kMonteCarloChunk samples taken from the shared
/// counter `next` until none is left, run_sample(first_sample + b) for each; the worker that
/// `reports` passes the running count to options.progress. (Always inlined: written as a lambda
/// that GCC did not inline, it left the paper configuration about 0.1 us per sample slower,
/// `mc_paper --threads 1`.)
inline constexpr std::int64_t kMonteCarloChunk = 32;
template <class RunSample>
EIGEN_ALWAYS_INLINE void for_each_chunk(std::atomic<std::int64_t>& next, std::atomic<std::int64_t>& done,
                                        std::int64_t total, const MonteCarloOptions& options, bool reports,
                                        RunSample&& run_sample) {
  for (;;) {
    const std::int64_t begin = next.fetch_add(kMonteCarloChunk);
    if (begin >= total) break;
    const std::int64_t end = std::min(begin + kMonteCarloChunk, total);
    for (std::int64_t b = begin; b < end; ++b) run_sample(options.first_sample + static_cast<std::uint64_t>(b));
    const std::int64_t finished = done.fetch_add(end - begin) + (end - begin);
    if (reports && options.progress) options.progress(finished, total);
  }
}
}  // namespace detail

/// Runs samples [first_sample, first_sample + B) and returns their (mergeable) sums.
///
/// \pre options.samples >= 1, options.threads >= 0, config and inputs valid (std::invalid_argument otherwise)
template <class Scalar>
MonteCarloAccumulator monte_carlo_accumulate(const DecoderConfig& config, const InputSpec& inputs,
                                             const MonteCarloOptions& options) {
  detail::check_scalar<Scalar>();
  inputs.validate();
  config.validate_for<Scalar>(inputs.seq_len, inputs.dim);
  if (inputs.kind == InputKind::User) detail::require_tokens<Scalar>(inputs.tokens, "tokens");
  detail::require(options.samples >= 1, "samples B", options.samples, "B >= 1");
  detail::require(options.threads >= 0, "threads", options.threads, "threads >= 0 (0 = all cores)");
  const int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = static_cast<int>(std::min<std::int64_t>(options.threads == 0 ? hardware : options.threads,
                                                              options.samples));
  const MonteCarloPath path = resolve_path<Scalar>(config, inputs, options.path);
  const bool use_triangular = path == MonteCarloPath::Triangular, use_gram = path == MonteCarloPath::Gram;
  // LayerNorm sees only the part of each token orthogonal to 1: in the frame of that part it is
  // RMSNorm with the mean square still taken over d (the centred row's variance).
  DecoderConfig frame_config = config;
  if (frame_config.norm == Norm::LayerNorm) frame_config.norm = Norm::RMSNorm;
  const bool drop_mean = config.norm == Norm::LayerNorm;
  const std::int64_t total = options.samples;
  std::atomic<std::int64_t> next{0}, done{0};
  const SumGrid grid = std::is_same_v<Scalar, float> ? SumGrid::Float : SumGrid::Double;
  // Float runs in the frame under a lower-triangular mask take the transposed kernel (the same bits,
  // faster; docs/performance.md); its entries come in query packets. (Double runs keep DecoderKernel:
  // with the double grid's sums in packets of 4 they were slower, 53 against 44 us per sample.)
  const bool use_frame_kernel =
      use_triangular && std::is_same_v<Scalar, float> && detail::FrameKernel<Scalar>::applies(frame_config);
  const Index lanes = use_frame_kernel ? detail::packet_size<Scalar>() : 0;
  std::vector<MonteCarloAccumulator> partial(static_cast<std::size_t>(threads),
                                             MonteCarloAccumulator(config, inputs, grid, lanes));
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(threads));

  auto work = [&](int worker) {
    try {
      InputGenerator generator(inputs, options.seed);
      MonteCarloAccumulator& sums = partial[static_cast<std::size_t>(worker)];
      std::optional<TriangularFrame> frame;
      if (use_triangular) frame = generator.triangular_frame(drop_mean);
      // The last layer's output is never looked at: its A Y is skipped (step(false)).
      if (use_frame_kernel) {
        detail::FrameKernel<Scalar> kernel(frame_config, inputs.seq_len, inputs.dim, *frame);
        detail::for_each_chunk(next, done, total, options, worker == 0, [&](std::uint64_t sample) {
          generator.generate_triangular_into<Scalar>(sample, kernel.input_rows(), drop_mean);
          kernel.load();
          for (Index l = 0; l < config.layers; ++l) {
            kernel.step(l + 1 < config.layers);
            sums.add_layer_packets(l, kernel.score_data(), kernel.weight_data(), kernel.inverse_data());
          }
        });
        return;
      }
      // The Gram and direct kernels start from tokens in the direct kernel's padded row-major state.
      detail::DecoderKernel<Scalar> kernel(use_triangular ? frame_config : config, inputs.seq_len, inputs.dim, frame);
      std::optional<detail::TiledGramKernel<Scalar>> gram;
      if (use_gram) gram.emplace(config, inputs.seq_len, inputs.dim);
      detail::for_each_chunk(next, done, total, options, worker == 0, [&](std::uint64_t sample) {
        if (frame) generator.generate_triangular_into<Scalar>(sample, kernel.state_rows(), drop_mean);
        else generator.generate_into<Scalar>(sample, kernel.state_rows());
        if (gram) {
          gram->load(kernel.state_data(), kernel.state_stride());
          for (Index l = 0; l < config.layers; ++l) {
            gram->step(l + 1 < config.layers);
            sums.add_layer_rows(l, gram->score_data(), gram->prob_data(), gram->row_stride());
          }
          return;
        }
        for (Index l = 0; l < config.layers; ++l) {
          kernel.step(l + 1 < config.layers);
          sums.add_layer_rows(l, kernel.score_data(), kernel.weight_data(), kernel.row_stride(), kernel.row_inverse());
        }
      });
    } catch (...) {
      errors[static_cast<std::size_t>(worker)] = std::current_exception();
      next.store(total);  // stop the other workers early
    }
  };

  std::vector<std::thread> pool;
  for (int w = 1; w < threads; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& thread : pool) thread.join();
  for (const auto& error : errors)
    if (error) std::rethrow_exception(error);
  for (int w = 1; w < threads; ++w) partial[0].merge(partial[static_cast<std::size_t>(w)]);
  if (options.progress) options.progress(total, total);
  return std::move(partial[0]);
}

/// Monte Carlo means and standard errors of the decoder's scores and probabilities.
///
/// \param config   the decoder (paper Sec. 2)
/// \param inputs   the input distribution (paper Sec. 3)
/// \param options  samples, seed, first sample, threads, progress callback
/// \return per-layer means (double); identical bits for any thread count
///
/// Example (paper Sec. 4.1, L2, alpha = 0.2):
/// \code
/// #include <maskpos/monte_carlo.hpp>
/// #include <iostream>
/// int main() {
///   maskpos::DecoderConfig config;                      // 4 layers, L2, causal, residual
///   auto inputs = maskpos::InputSpec::gaussian(50, 64, 0.2);
///   maskpos::MonteCarloOptions options;
///   options.samples = 10000;
///   auto result = maskpos::monte_carlo<float>(config, inputs, options);
///   std::cout << result.mean_scores[3](49, 0) << " +- " << result.stderr_scores[3](49, 0) << "\n";
/// }
/// \endcode
template <class Scalar>
MonteCarloResult monte_carlo(const DecoderConfig& config, const InputSpec& inputs, const MonteCarloOptions& options) {
  return monte_carlo_accumulate<Scalar>(config, inputs, options).result();
}

}  // namespace maskpos
