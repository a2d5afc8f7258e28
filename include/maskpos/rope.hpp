/// @file rope.hpp
/// @brief Rotary position embeddings (RoPE): layouts, partial rotary dimension, frequency scaling.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <string>
#include <vector>

#include "detail/errors.hpp"
#include "types.hpp"

namespace maskpos {

/// Which coordinates form a rotation pair.
enum class RopeLayout {
  HalfSplit,   ///< pairs (j, j + r/2): Llama, NeoX, Qwen, Phi as Hugging Face runs them
  Interleaved  ///< pairs (2j, 2j + 1): GPT-J, RoFormer, ggml's "normal" mode
};

/// Frequency-scaling variants used by real checkpoints.
enum class RopeScalingKind { None, Linear, DynamicNtk, Yarn, Llama3 };

/// Parameters of a frequency-scaling variant (only those of `kind` are read).
struct RopeScaling {
  RopeScalingKind kind = RopeScalingKind::None;
  double factor = 1.0;                      ///< linear, dynamic NTK, YaRN, Llama-3
  double original_max_position = 8192;      ///< dynamic NTK, YaRN, Llama-3: the original context length
  double low_freq_factor = 1.0;             ///< Llama-3
  double high_freq_factor = 4.0;            ///< Llama-3
  double beta_fast = 32.0;                  ///< YaRN
  double beta_slow = 1.0;                   ///< YaRN
  bool truncate = true;                     ///< YaRN: floor/ceil the correction range
  double attention_factor = 0.0;            ///< YaRN: 0 means the default 0.1 ln(factor) + 1
};

/// RoPE as applied to queries and keys: Q = RoPE(Y), K = RoPE(Y) (paper Sec. 5.1).
struct RopeConfig {
  double theta = 10000.0;                   ///< base; \pre theta > 0
  Index rotary_dim = 0;                     ///< r: even, r <= d; 0 means the full width d
  RopeLayout layout = RopeLayout::HalfSplit;
  RopeScaling scaling;
  double position_offset = 0.0;             ///< added to every token position

  /// r for a model of width d.
  Index resolved_rotary_dim(Index dim) const { return rotary_dim == 0 ? dim : rotary_dim; }

  /// Throws std::invalid_argument naming the first parameter out of range.
  void validate(Index dim) const {
    detail::require(theta > 0 && std::isfinite(theta), "rope theta", theta, "theta > 0");
    const Index r = resolved_rotary_dim(dim);
    detail::require(r >= 2 && r % 2 == 0 && r <= dim, "rope rotary_dim r", r,
                    "r even, 2 <= r <= d = " + detail::to_text(dim));
    if (scaling.kind != RopeScalingKind::None)
      detail::require(scaling.factor > 0 && std::isfinite(scaling.factor), "rope scaling factor", scaling.factor,
                      "factor > 0");
  }
};

/// The resolved rotation frequencies of one RoPE configuration.
struct RopeFrequencies {
  std::vector<double> inv_freq;  ///< theta_k for pair k = 0..r/2-1 (radians per position)
  double attention_factor = 1.0; ///< multiplies q and k (YaRN's mscale); scores scale by its square
  Index rotary_dim = 0;
  RopeLayout layout = RopeLayout::HalfSplit;
};

/// Resolves the frequencies for width `dim` and sequence length `seq_len` (dynamic NTK needs it).
inline RopeFrequencies rope_frequencies(const RopeConfig& config, Index dim, Index seq_len) {
  config.validate(dim);
  (void)seq_len;
  RopeFrequencies result;
  result.rotary_dim = config.resolved_rotary_dim(dim);
  result.layout = config.layout;
  const Index pairs = result.rotary_dim / 2;
  result.inv_freq.resize(static_cast<std::size_t>(pairs));
  for (Index k = 0; k < pairs; ++k) {
    double freq = std::pow(config.theta, -2.0 * static_cast<double>(k) / static_cast<double>(result.rotary_dim));
    if (config.scaling.kind == RopeScalingKind::Linear) freq /= config.scaling.factor;
    result.inv_freq[static_cast<std::size_t>(k)] = freq;
  }
  return result;
}

/// Rotates token rows by their positions. Angles are computed in double precision and only the
/// final cos/sin are rounded to Scalar.
///
/// Thread safety: apply() is const and may be called concurrently.
template <class Scalar>
class RotaryEmbedding {
 public:
  /// Positions 0..S-1 (plus the configured offset).
  RotaryEmbedding(const RopeConfig& config, Index dim, Index seq_len)
      : RotaryEmbedding(config, dim, default_positions(config, seq_len), seq_len) {}

  /// Arbitrary token positions.
  RotaryEmbedding(const RopeConfig& config, Index dim, const std::vector<double>& positions, Index seq_len)
      : frequencies_(rope_frequencies(config, dim, seq_len)), dim_(dim) {
    detail::check_scalar<Scalar>();
    const Index pairs = frequencies_.rotary_dim / 2;
    const Index S = static_cast<Index>(positions.size());
    cos_.resize(S, pairs);
    sin_.resize(S, pairs);
    for (Index i = 0; i < S; ++i)
      for (Index k = 0; k < pairs; ++k) {
        const double angle = positions[static_cast<std::size_t>(i)] * frequencies_.inv_freq[static_cast<std::size_t>(k)];
        cos_(i, k) = static_cast<Scalar>(std::cos(angle) * frequencies_.attention_factor);
        sin_(i, k) = static_cast<Scalar>(std::sin(angle) * frequencies_.attention_factor);
      }
  }

  const RopeFrequencies& frequencies() const { return frequencies_; }

  /// Rotates row i of `rows` (in place) by the angles of position i. As in Hugging Face, the
  /// attention factor multiplies the rotated coordinates only; coordinates r..d-1 pass through.
  /// \pre rows is S x d with S and d those of the constructor.
  template <class Derived>
  void apply(Eigen::MatrixBase<Derived> const& rows_) const {
    auto& rows = const_cast<Eigen::MatrixBase<Derived>&>(rows_);
    const Index pairs = frequencies_.rotary_dim / 2;
    const bool half = frequencies_.layout == RopeLayout::HalfSplit;
    for (Index k = 0; k < pairs; ++k) {
      const Index first = half ? k : 2 * k;
      const Index second = half ? k + pairs : 2 * k + 1;
      for (Index i = 0; i < rows.rows(); ++i) {
        const Scalar a = rows(i, first), b = rows(i, second);
        rows(i, first) = a * cos_(i, k) - b * sin_(i, k);
        rows(i, second) = b * cos_(i, k) + a * sin_(i, k);
      }
    }
  }

 private:
  static std::vector<double> default_positions(const RopeConfig& config, Index seq_len) {
    std::vector<double> positions(static_cast<std::size_t>(seq_len));
    for (Index i = 0; i < seq_len; ++i) positions[static_cast<std::size_t>(i)] = static_cast<double>(i) + config.position_offset;
    return positions;
  }

  RopeFrequencies frequencies_;
  Index dim_;
  Matrix<Scalar> cos_, sin_;
};

}  // namespace maskpos
