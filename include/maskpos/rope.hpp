/// @file rope.hpp
/// @brief Rotary position embeddings (RoPE) as real checkpoints run them: both pair layouts, partial
/// rotary dimension, arbitrary positions, and the frequency-scaling variants (linear, dynamic NTK,
/// YaRN, Llama-3, LongRoPE), with presets for the models of the paper's Sec. 5.2.
///
/// The decoder uses RoPE exactly as the paper's Sec. 5.1 does (NOTES Sec. 2): Q = K = RoPE(Y),
/// S = c Q K^T, values stay Y. Formulas follow Hugging Face transformers `modeling_rope_utils.py`;
/// docs/rope.md lists, variant by variant, where ggml's rope differs.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "detail/errors.hpp"
#include "types.hpp"

namespace maskpos {

/// Which coordinates form a rotation pair. Both rotate by +phi:
/// (a, b) -> (a cos phi - b sin phi, b cos phi + a sin phi).
enum class RopeLayout {
  HalfSplit,   ///< pairs (j, j + r/2): Llama, NeoX, Qwen, Phi as Hugging Face runs them; ggml's NEOX mode
  Interleaved  ///< pairs (2j, 2j + 1): GPT-J, RoFormer, ggml's "normal" mode
};

/// Frequency-scaling variants used by real checkpoints (Hugging Face `rope_type` in brackets).
enum class RopeScalingKind {
  None,        ///< plain RoPE ("default")
  Linear,      ///< position interpolation: every frequency / factor ("linear")
  DynamicNtk,  ///< the base grows with the current length beyond the original context ("dynamic")
  Yarn,        ///< NTK-by-parts ramp between interpolation and extrapolation + attention factor ("yarn")
  Llama3,      ///< Llama-3.1: low frequencies / factor, high kept, a smooth band between ("llama3")
  LongRope     ///< per-pair rescale factors, short or long set, + attention factor ("longrope")
};

/// "half-split" or "interleaved".
inline std::string to_string(RopeLayout layout) {
  switch (layout) {
    case RopeLayout::HalfSplit: return "half-split";
    case RopeLayout::Interleaved: return "interleaved";
  }
  return "?";
}

/// Inverse of to_string(RopeLayout); also accepts "neox" (half-split) and "gptj" (interleaved).
/// \throws std::invalid_argument for any other name
inline RopeLayout parse_rope_layout(const std::string& name) {
  if (name == "half-split" || name == "half" || name == "neox") return RopeLayout::HalfSplit;
  if (name == "interleaved" || name == "gptj") return RopeLayout::Interleaved;
  detail::throw_invalid("rope layout", name, "one of half-split (half, neox), interleaved (gptj)");
}

/// The Hugging Face `rope_type` spelling: "none", "linear", "dynamic", "yarn", "llama3", "longrope".
inline std::string to_string(RopeScalingKind kind) {
  switch (kind) {
    case RopeScalingKind::None: return "none";
    case RopeScalingKind::Linear: return "linear";
    case RopeScalingKind::DynamicNtk: return "dynamic";
    case RopeScalingKind::Yarn: return "yarn";
    case RopeScalingKind::Llama3: return "llama3";
    case RopeScalingKind::LongRope: return "longrope";
  }
  return "?";
}

/// Inverse of to_string(RopeScalingKind); "default" is accepted for "none" (Hugging Face's name).
/// \throws std::invalid_argument for any other name
inline RopeScalingKind parse_rope_scaling_kind(const std::string& name) {
  for (RopeScalingKind kind : {RopeScalingKind::None, RopeScalingKind::Linear, RopeScalingKind::DynamicNtk,
                               RopeScalingKind::Yarn, RopeScalingKind::Llama3, RopeScalingKind::LongRope})
    if (name == to_string(kind)) return kind;
  if (name == "default") return RopeScalingKind::None;
  detail::throw_invalid("rope scaling", name, "one of none (default), linear, dynamic, yarn, llama3, longrope");
}

/// Parameters of a frequency-scaling variant; only those of `kind` are read (and validated).
/// Field names follow Hugging Face's `rope_scaling` keys.
struct RopeScaling {
  RopeScalingKind kind = RopeScalingKind::None;
  double factor = 1.0;                  ///< linear, dynamic, yarn, llama3, longrope (> 0)
  double original_max_position = 8192; ///< dynamic, yarn, llama3, longrope: the pre-training context (> 0)
  double low_freq_factor = 1.0;         ///< llama3 (> 0)
  double high_freq_factor = 4.0;        ///< llama3 (> low_freq_factor)
  double beta_fast = 32.0;              ///< yarn: rotations at which the ramp starts (> beta_slow)
  double beta_slow = 1.0;               ///< yarn: rotations at which the ramp ends (> 0)
  bool truncate = true;                 ///< yarn: floor/ceil the correction range (Hugging Face default)
  double attention_factor = 0.0;        ///< yarn, longrope: 0 means the variant's default (see rope_frequencies)
  double mscale = 0.0;                  ///< yarn (DeepSeek): with mscale_all_dim, default attention factor ratio
  double mscale_all_dim = 0.0;          ///< yarn (DeepSeek); 0 = unset
  std::vector<double> short_factor;     ///< longrope: r/2 per-pair divisors up to the original context
  std::vector<double> long_factor;      ///< longrope: r/2 per-pair divisors beyond it

  static RopeScaling none() { return {}; }
  static RopeScaling linear(double factor) {
    RopeScaling s;
    s.kind = RopeScalingKind::Linear;
    s.factor = factor;
    return s;
  }
  static RopeScaling dynamic_ntk(double factor, double original_max_position) {
    RopeScaling s;
    s.kind = RopeScalingKind::DynamicNtk;
    s.factor = factor;
    s.original_max_position = original_max_position;
    return s;
  }
  static RopeScaling yarn(double factor, double original_max_position, double beta_fast = 32.0,
                          double beta_slow = 1.0) {
    RopeScaling s;
    s.kind = RopeScalingKind::Yarn;
    s.factor = factor;
    s.original_max_position = original_max_position;
    s.beta_fast = beta_fast;
    s.beta_slow = beta_slow;
    return s;
  }
  static RopeScaling llama3(double factor, double low_freq_factor, double high_freq_factor,
                            double original_max_position) {
    RopeScaling s;
    s.kind = RopeScalingKind::Llama3;
    s.factor = factor;
    s.low_freq_factor = low_freq_factor;
    s.high_freq_factor = high_freq_factor;
    s.original_max_position = original_max_position;
    return s;
  }
  static RopeScaling longrope(std::vector<double> short_factor, std::vector<double> long_factor, double factor,
                              double original_max_position) {
    RopeScaling s;
    s.kind = RopeScalingKind::LongRope;
    s.short_factor = std::move(short_factor);
    s.long_factor = std::move(long_factor);
    s.factor = factor;
    s.original_max_position = original_max_position;
    return s;
  }
};

/// RoPE as applied to queries and keys: Q = RoPE(Y), K = RoPE(Y) (paper Sec. 5.1).
struct RopeConfig {
  double theta = 10000.0;                   ///< base; \pre theta > 0 (yarn: theta > 1)
  Index rotary_dim = 0;                     ///< r: even, 2 <= r <= d; 0 means the full width d
  RopeLayout layout = RopeLayout::HalfSplit;
  RopeScaling scaling;
  double position_offset = 0.0;             ///< added to every token position (finite)

  /// The paper's Sec. 5.1 RoPE: base 10000, r = d, half-split, no scaling.
  static RopeConfig paper() { return {}; }

  /// r for a model of width d.
  Index resolved_rotary_dim(Index dim) const { return rotary_dim == 0 ? dim : rotary_dim; }

  /// Throws std::invalid_argument naming the first parameter out of range for width `dim`.
  void validate(Index dim) const {
    detail::require(theta > 0 && std::isfinite(theta), "rope theta", theta, "0 < theta < infinity");
    const Index r = resolved_rotary_dim(dim);
    detail::require(r >= 2 && r % 2 == 0 && r <= dim, "rope rotary_dim r", r,
                    "r even, 2 <= r <= d = " + detail::to_text(dim));
    detail::require(std::isfinite(position_offset), "rope position_offset", position_offset, "finite");
    const RopeScaling& s = scaling;
    const RopeScalingKind kind = s.kind;
    if (kind == RopeScalingKind::None) return;
    detail::require(s.factor > 0 && std::isfinite(s.factor), "rope scaling factor", s.factor,
                    "0 < factor < infinity");
    if (kind == RopeScalingKind::Linear) return;
    detail::require(s.original_max_position > 0 && std::isfinite(s.original_max_position),
                    "rope scaling original_max_position", s.original_max_position, "0 < value < infinity");
    switch (kind) {
      case RopeScalingKind::DynamicNtk:
        detail::require(r >= 4, "rope rotary_dim r", r, "r >= 4 for dynamic NTK (the base exponent is r / (r - 2))");
        break;
      case RopeScalingKind::Yarn:
        detail::require(theta > 1, "rope theta", theta, "theta > 1 for yarn (the correction range divides by ln theta)");
        detail::require(s.beta_slow > 0 && std::isfinite(s.beta_slow), "rope scaling beta_slow", s.beta_slow,
                        "0 < beta_slow < infinity");
        detail::require(s.beta_fast > s.beta_slow && std::isfinite(s.beta_fast), "rope scaling beta_fast",
                        s.beta_fast, "beta_fast > beta_slow = " + detail::to_text(s.beta_slow));
        detail::require(s.attention_factor >= 0 && std::isfinite(s.attention_factor), "rope scaling attention_factor",
                        s.attention_factor, "0 <= value < infinity (0: the default)");
        detail::require(s.mscale >= 0 && std::isfinite(s.mscale), "rope scaling mscale", s.mscale,
                        "0 <= value < infinity (0: unset)");
        detail::require(s.mscale_all_dim >= 0 && std::isfinite(s.mscale_all_dim), "rope scaling mscale_all_dim",
                        s.mscale_all_dim, "0 <= value < infinity (0: unset)");
        break;
      case RopeScalingKind::Llama3:
        detail::require(s.low_freq_factor > 0 && std::isfinite(s.low_freq_factor), "rope scaling low_freq_factor",
                        s.low_freq_factor, "0 < value < infinity");
        detail::require(s.high_freq_factor > s.low_freq_factor && std::isfinite(s.high_freq_factor),
                        "rope scaling high_freq_factor", s.high_freq_factor,
                        "high_freq_factor > low_freq_factor = " + detail::to_text(s.low_freq_factor));
        break;
      case RopeScalingKind::LongRope: {
        detail::require(s.attention_factor >= 0 && std::isfinite(s.attention_factor), "rope scaling attention_factor",
                        s.attention_factor, "0 <= value < infinity (0: the default)");
        const std::size_t pairs = static_cast<std::size_t>(r / 2);
        detail::require(s.short_factor.size() == pairs, "rope scaling short_factor length", s.short_factor.size(),
                        "r / 2 = " + detail::to_text(pairs));
        detail::require(s.long_factor.size() == pairs, "rope scaling long_factor length", s.long_factor.size(),
                        "r / 2 = " + detail::to_text(pairs));
        for (std::size_t k = 0; k < pairs; ++k) {
          detail::require(s.short_factor[k] > 0 && std::isfinite(s.short_factor[k]),
                          "rope scaling short_factor[" + std::to_string(k) + "]", s.short_factor[k], "0 < value < infinity");
          detail::require(s.long_factor[k] > 0 && std::isfinite(s.long_factor[k]),
                          "rope scaling long_factor[" + std::to_string(k) + "]", s.long_factor[k], "0 < value < infinity");
        }
        break;
      }
      default: break;
    }
  }
};

/// The resolved rotation frequencies of one RoPE configuration.
struct RopeFrequencies {
  std::vector<double> inv_freq;  ///< theta_k for pair k = 0..r/2-1 (radians per position)
  double attention_factor = 1.0; ///< multiplies the rotated coordinates of q and k; scores scale by its square
  Index rotary_dim = 0;          ///< r
  RopeLayout layout = RopeLayout::HalfSplit;
};

namespace detail {

/// YaRN's inverse dimension formula: the (fractional) pair index whose wavelength fits `rotations`
/// times into `context` positions, r ln(context / (2 pi rotations)) / (2 ln theta).
inline double yarn_correction_dim(double rotations, Index rotary_dim, double theta, double context) {
  const double pi = 3.14159265358979323846;
  return static_cast<double>(rotary_dim) * std::log(context / (rotations * 2.0 * pi)) / (2.0 * std::log(theta));
}

/// YaRN's magnitude correction 0.1 m ln(s) + 1 (1 for s <= 1).
inline double yarn_mscale(double scale, double m = 1.0) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

}  // namespace detail

/// Resolves the per-pair frequencies and the attention factor, all in double precision.
///
/// With r the rotary dimension, pair k = 0..r/2-1 and base theta, plain RoPE has
/// \f$ \theta_k = \theta^{-2k/r} \f$ and attention factor 1. The variants (Hugging Face
/// `modeling_rope_utils.py`; docs/rope.md compares them with ggml):
/// - Linear: \f$ \theta_k / s \f$ with s = factor.
/// - DynamicNtk: for a context L = seq_len > L0 = original_max_position the base becomes
///   \f$ \theta (sL/L0 - (s - 1))^{r/(r-2)} \f$; unchanged for L <= L0.
/// - Yarn: \f$ \theta_k = (1 - \gamma_k)\,\theta^{-2k/r} + \gamma_k\,\theta^{-2k/r}/s \f$ with the ramp
///   \f$ \gamma_k = \mathrm{clamp}((k - lo)/(hi - lo), 0, 1) \f$, lo and hi the correction dims of
///   beta_fast and beta_slow (floor/ceil if truncate, then clamped to [0, r - 1]; hi += 0.001 if equal).
///   Attention factor: the given one, else mscale(s, mscale)/mscale(s, mscale_all_dim) when both are
///   set, else \f$ 0.1 \ln s + 1 \f$ (1 for s <= 1).
/// - Llama3: wavelength \f$ \lambda_k = 2\pi/\theta_k \f$; kept if \f$ \lambda_k < L0/h \f$, divided by s
///   if \f$ \lambda_k > L0/l \f$, else \f$ (1 - \mu)\theta_k/s + \mu\theta_k \f$ with
///   \f$ \mu = (L0/\lambda_k - l)/(h - l) \f$ (l, h the low and high frequency factors).
/// - LongRope: \f$ \theta^{-2k/r} / f_k \f$ with f the long factors when seq_len > L0, else the short
///   ones; attention factor the given one, else \f$ \sqrt{1 + \ln s / \ln L0} \f$ (1 for s <= 1).
///
/// \param config   the RoPE configuration; \pre config.validate(dim) passes (checked)
/// \param dim      model (head) width d
/// \param seq_len  the current context length L (largest position + 1, as Hugging Face uses it); read
///                 only by DynamicNtk and LongRope. \pre seq_len >= 0
/// \return the frequencies (length r/2), the attention factor, r and the layout
inline RopeFrequencies rope_frequencies(const RopeConfig& config, Index dim, Index seq_len) {
  config.validate(dim);
  detail::require(seq_len >= 0, "rope seq_len", seq_len, "seq_len >= 0");
  const RopeScaling& s = config.scaling;
  RopeFrequencies result;
  result.rotary_dim = config.resolved_rotary_dim(dim);
  result.layout = config.layout;
  const Index r = result.rotary_dim;
  const std::size_t pairs = static_cast<std::size_t>(r / 2);
  const double r_double = static_cast<double>(r);
  const double context = static_cast<double>(seq_len);

  double base = config.theta;
  if (s.kind == RopeScalingKind::DynamicNtk && context > s.original_max_position)
    base *= std::pow(s.factor * context / s.original_max_position - (s.factor - 1.0), r_double / (r_double - 2.0));

  result.inv_freq.resize(pairs);
  for (std::size_t k = 0; k < pairs; ++k)
    result.inv_freq[k] = std::pow(base, -2.0 * static_cast<double>(k) / r_double);

  switch (s.kind) {
    case RopeScalingKind::None:
    case RopeScalingKind::DynamicNtk: break;
    case RopeScalingKind::Linear:
      for (double& f : result.inv_freq) f /= s.factor;
      break;
    case RopeScalingKind::Yarn: {
      double low = detail::yarn_correction_dim(s.beta_fast, r, config.theta, s.original_max_position);
      double high = detail::yarn_correction_dim(s.beta_slow, r, config.theta, s.original_max_position);
      if (s.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, r_double - 1.0);
      if (low == high) high += 0.001;  // as Hugging Face: avoids 0/0 when the range collapses
      for (std::size_t k = 0; k < pairs; ++k) {
        const double ramp = std::clamp((static_cast<double>(k) - low) / (high - low), 0.0, 1.0);
        const double extrapolated = result.inv_freq[k];
        result.inv_freq[k] = (1.0 - ramp) * extrapolated + ramp * (extrapolated / s.factor);
      }
      if (s.attention_factor > 0)
        result.attention_factor = s.attention_factor;
      else if (s.mscale > 0 && s.mscale_all_dim > 0)
        result.attention_factor = detail::yarn_mscale(s.factor, s.mscale) / detail::yarn_mscale(s.factor, s.mscale_all_dim);
      else
        result.attention_factor = detail::yarn_mscale(s.factor);
      break;
    }
    case RopeScalingKind::Llama3: {
      const double pi = 3.14159265358979323846;
      const double low_freq_wavelength = s.original_max_position / s.low_freq_factor;
      const double high_freq_wavelength = s.original_max_position / s.high_freq_factor;
      for (double& f : result.inv_freq) {
        const double wavelength = 2.0 * pi / f;
        if (wavelength < high_freq_wavelength) continue;
        if (wavelength > low_freq_wavelength) {
          f /= s.factor;
        } else {
          const double smooth = (s.original_max_position / wavelength - s.low_freq_factor) /
                                (s.high_freq_factor - s.low_freq_factor);
          f = (1.0 - smooth) * f / s.factor + smooth * f;
        }
      }
      break;
    }
    case RopeScalingKind::LongRope: {
      const std::vector<double>& divisors = context > s.original_max_position ? s.long_factor : s.short_factor;
      for (std::size_t k = 0; k < pairs; ++k) result.inv_freq[k] /= divisors[k];
      if (s.attention_factor > 0)
        result.attention_factor = s.attention_factor;
      else
        result.attention_factor =
            s.factor <= 1.0 ? 1.0 : std::sqrt(1.0 + std::log(s.factor) / std::log(s.original_max_position));
      break;
    }
  }
  return result;
}

/// A model's RoPE as published in its configuration, for Sec. 5.1-style runs with real frequency sets.
struct RopePreset {
  std::string name;   ///< the command line's spelling, e.g. "llama3.1-8b"
  std::string model;  ///< the checkpoint it describes
  Index head_dim = 0; ///< run with d = head_dim (rope.rotary_dim is set to it, so other d are rejected)
  RopeConfig rope;
};

/// The names rope_preset() accepts: "llama3.1-8b", "qwen3-8b", "qwen3-8b-yarn", "phi-4".
inline std::vector<std::string> rope_preset_names() { return {"llama3.1-8b", "qwen3-8b", "qwen3-8b-yarn", "phi-4"}; }

/// RoPE of a real model, from its Hugging Face config.json:
/// - "llama3.1-8b": meta-llama/Llama-3.1-8B, head dim 128, theta 500000, llama3 scaling (factor 8,
///   low 1, high 4, original context 8192), half-split.
/// - "qwen3-8b": Qwen/Qwen3-8B, head dim 128, theta 1000000, no scaling, half-split.
/// - "qwen3-8b-yarn": the same with the YaRN setting Qwen documents for long contexts (factor 4,
///   original context 32768).
/// - "phi-4": microsoft/phi-4, head dim 128 (5120 / 40 heads), theta 250000, no scaling, half-split.
/// \throws std::invalid_argument for an unknown name
inline RopePreset rope_preset(const std::string& name) {
  RopePreset preset;
  preset.name = name;
  preset.head_dim = 128;
  preset.rope.rotary_dim = 128;
  preset.rope.layout = RopeLayout::HalfSplit;
  if (name == "llama3.1-8b") {
    preset.model = "meta-llama/Llama-3.1-8B";
    preset.rope.theta = 500000.0;
    preset.rope.scaling = RopeScaling::llama3(8.0, 1.0, 4.0, 8192.0);
  } else if (name == "qwen3-8b" || name == "qwen3-8b-yarn") {
    preset.model = "Qwen/Qwen3-8B";
    preset.rope.theta = 1000000.0;
    if (name == "qwen3-8b-yarn") preset.rope.scaling = RopeScaling::yarn(4.0, 32768.0);
  } else if (name == "phi-4") {
    preset.model = "microsoft/phi-4";
    preset.rope.theta = 250000.0;
  } else {
    detail::throw_invalid("rope preset", name, "one of llama3.1-8b, qwen3-8b, qwen3-8b-yarn, phi-4");
  }
  return preset;
}

/// Rotates token rows by their positions.
///
/// Row i (position p_i) has, for pair k with coordinates (a, b) (layout-dependent), the angle
/// \f$ \phi = p_i \theta_k \f$ and becomes \f$ m(a\cos\phi - b\sin\phi,\ b\cos\phi + a\sin\phi) \f$ with m
/// the attention factor; coordinates r..d-1 pass through unchanged (as in Hugging Face and ggml).
/// Hence \f$ \langle q(p), k(p')\rangle \f$ of two rotated rows depends on p - p' only.
///
/// Precision: angles are formed and reduced in double precision even for Scalar = float; only the
/// final m cos(phi), m sin(phi) are rounded to Scalar. A float32 angle p theta_k (float32 theta_k
/// times float32 p, as Hugging Face forms it) carries an absolute error of order p theta_k 2^-24 that
/// grows linearly with the position: a few 1e-3 rad at p = 131072 and a few 1e-2 rad at p = 1e6
/// (docs/rope.md); in double it stays below 1e-9 rad there.
///
/// Thread safety: construction is independent per object; apply() is const and may be called
/// concurrently on different matrices.
///
/// Example (Sec. 5.1: relative scores of one rotated token against itself at shifted positions):
/// \code
/// #include <maskpos/rope.hpp>
/// #include <iostream>
/// int main() {
///   maskpos::RotaryEmbedding<double> rope(maskpos::RopeConfig::paper(), 8, 4);
///   Eigen::MatrixXd rows = Eigen::MatrixXd::Ones(4, 8);
///   rope.apply(rows);
///   std::cout << rows * rows.transpose() << "\n";  // Toeplitz: entry (i, j) depends on i - j only
/// }
/// \endcode
template <class Scalar>
class RotaryEmbedding {
 public:
  /// Positions 0..S-1 plus config.position_offset. The context length handed to rope_frequencies
  /// (read by dynamic NTK and LongRoPE) is the largest position + 1, as Hugging Face computes it.
  /// \pre seq_len >= 1, config.validate(dim) passes (std::invalid_argument otherwise)
  RotaryEmbedding(const RopeConfig& config, Index dim, Index seq_len)
      : RotaryEmbedding(config, dim, default_positions(config, seq_len), context_length(config, seq_len)) {}

  /// Arbitrary token positions (row i gets positions[i]; position_offset is not added here).
  /// \param seq_len  the context length for rope_frequencies (dynamic NTK, LongRoPE), usually max position + 1
  /// \pre positions finite, seq_len >= 0, config.validate(dim) passes (std::invalid_argument otherwise)
  RotaryEmbedding(const RopeConfig& config, Index dim, const std::vector<double>& positions, Index seq_len)
      : frequencies_(rope_frequencies(config, dim, seq_len)), dim_(dim), positions_(positions) {
    detail::check_scalar<Scalar>();
    for (std::size_t i = 0; i < positions_.size(); ++i)
      detail::require(std::isfinite(positions_[i]), "rope position[" + std::to_string(i) + "]", positions_[i], "finite");
    const Index pairs = frequencies_.rotary_dim / 2;
    const Index S = static_cast<Index>(positions_.size());
    cos_.resize(S, pairs);
    sin_.resize(S, pairs);
    for (Index k = 0; k < pairs; ++k)
      for (Index i = 0; i < S; ++i) {
        const double phi = angle(i, k);
        cos_(i, k) = static_cast<Scalar>(std::cos(phi) * frequencies_.attention_factor);
        sin_(i, k) = static_cast<Scalar>(std::sin(phi) * frequencies_.attention_factor);
      }
  }

  const RopeFrequencies& frequencies() const { return frequencies_; }
  const std::vector<double>& positions() const { return positions_; }
  Index dim() const { return dim_; }

  /// The angle p_i theta_k of row i, pair k, in double precision.
  double angle(Index i, Index k) const {
    return positions_[static_cast<std::size_t>(i)] * frequencies_.inv_freq[static_cast<std::size_t>(k)];
  }

  /// Coordinate indices (first, second) of pair k in this layout.
  std::pair<Index, Index> coordinates(Index k) const {
    const Index half = frequencies_.rotary_dim / 2;
    return frequencies_.layout == RopeLayout::HalfSplit ? std::pair<Index, Index>{k, k + half}
                                                        : std::pair<Index, Index>{2 * k, 2 * k + 1};
  }

  /// Rotates row i of `rows` in place by the angles of position i.
  /// \pre rows is S x d with S = positions().size() and d = dim() (debug assertion)
  template <class Derived>
  void apply(const Eigen::MatrixBase<Derived>& rows_) const {
    // Eigen's idiom for writable expressions (blocks, maps) passed by const reference.
    auto& rows = const_cast<Eigen::MatrixBase<Derived>&>(rows_);
    assert(rows.rows() == cos_.rows() && rows.cols() == dim_);
    const Index pairs = frequencies_.rotary_dim / 2;
    const Index S = rows.rows();
    for (Index k = 0; k < pairs; ++k) {
      const auto [first, second] = coordinates(k);
      for (Index i = 0; i < S; ++i) {
        const Scalar a = rows(i, first), b = rows(i, second);
        rows(i, first) = a * cos_(i, k) - b * sin_(i, k);
        rows(i, second) = b * cos_(i, k) + a * sin_(i, k);
      }
    }
  }

 private:
  static std::vector<double> default_positions(const RopeConfig& config, Index seq_len) {
    detail::require(seq_len >= 1, "rope seq_len", seq_len, "seq_len >= 1");
    std::vector<double> positions(static_cast<std::size_t>(seq_len));
    for (Index i = 0; i < seq_len; ++i)
      positions[static_cast<std::size_t>(i)] = static_cast<double>(i) + config.position_offset;
    return positions;
  }

  /// floor(largest position) + 1, at least 0 (a non-finite offset is rejected by validate() later).
  static Index context_length(const RopeConfig& config, Index seq_len) {
    const double largest = static_cast<double>(seq_len - 1) + config.position_offset;
    if (!(largest >= 0)) return 0;
    if (largest >= 9.0e18) return std::numeric_limits<Index>::max();
    return static_cast<Index>(std::floor(largest)) + 1;
  }

  RopeFrequencies frequencies_;
  Index dim_;
  std::vector<double> positions_;
  Matrix<Scalar> cos_, sin_;
};

}  // namespace maskpos
