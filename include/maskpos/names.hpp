/// @file names.hpp
/// @brief The text spellings of masks, norms, score scales, input kinds and Monte Carlo paths (the
/// command line's and summary.json's), with parsers that round-trip the to_string/name() functions.
#pragma once

#include <cmath>
#include <cstdlib>
#include <string>

#include "decoder.hpp"
#include "detail/errors.hpp"
#include "inputs.hpp"
#include "mask.hpp"
#include "monte_carlo.hpp"
#include "normalization.hpp"

namespace maskpos {

namespace detail {
/// Parses a whole string as a number; false when anything is left over or nothing was read.
inline bool parse_number(const std::string& text, double& value) {
  if (text.empty()) return false;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size();
}
inline bool parse_integer(const std::string& text, Index& value) {
  if (text.empty()) return false;
  char* end = nullptr;
  const long long parsed = std::strtoll(text.c_str(), &end, 10);
  value = static_cast<Index>(parsed);
  return end == text.c_str() + text.size();
}
}  // namespace detail

/// "causal", "bidirectional", "sliding:W" (W >= 1) or "prefix:P" (P >= 0). \throws std::invalid_argument
inline Mask parse_mask(const std::string& text) {
  const std::string allowed = "causal, bidirectional, sliding:W with W >= 1, or prefix:P with P >= 0";
  if (text == "causal") return Mask::causal();
  if (text == "bidirectional") return Mask::bidirectional();
  const auto colon = text.find(':');
  Index value = 0;
  if (colon != std::string::npos && detail::parse_integer(text.substr(colon + 1), value)) {
    const std::string kind = text.substr(0, colon);
    if (kind == "sliding" && value >= 1) return Mask::sliding_window(value);
    if (kind == "prefix" && value >= 0) return Mask::prefix_lm(value);
  }
  detail::throw_invalid("mask", text, allowed);
}

/// "l2", "layernorm", "rmsnorm" or "none". \throws std::invalid_argument
inline Norm parse_norm(const std::string& text) {
  for (Norm norm : {Norm::L2, Norm::LayerNorm, Norm::RMSNorm, Norm::None})
    if (to_string(norm) == text) return norm;
  detail::throw_invalid("norm", text, "one of l2, layernorm, rmsnorm, none");
}

/// "1", "sqrt-d" (1/sqrt(d)), "d" (1/d) or a positive finite constant. \throws std::invalid_argument
inline ScoreScale parse_score_scale(const std::string& text) {
  if (text == "1") return ScoreScale::one();
  if (text == "sqrt-d") return ScoreScale::inv_sqrt_dim();
  if (text == "d") return ScoreScale::inv_dim();
  double value = 0;
  if (detail::parse_number(text, value) && value > 0 && std::isfinite(value)) return ScoreScale::custom(value);
  detail::throw_invalid("score scale", text, "1, sqrt-d (1/sqrt(d)), d (1/d) or a positive constant");
}

/// "gaussian" or "orthonormal" (user inputs come from a file, not a name). \throws std::invalid_argument
inline InputKind parse_input_kind(const std::string& text) {
  if (text == "gaussian") return InputKind::Gaussian;
  if (text == "orthonormal") return InputKind::Orthonormal;
  detail::throw_invalid("inputs", text, "gaussian or orthonormal");
}

/// "auto", "direct", "gram" or "triangular". \throws std::invalid_argument
inline MonteCarloPath parse_monte_carlo_path(const std::string& text) {
  for (MonteCarloPath path : {MonteCarloPath::Auto, MonteCarloPath::Direct, MonteCarloPath::Gram, MonteCarloPath::Triangular})
    if (to_string(path) == text) return path;
  detail::throw_invalid("path", text, "one of auto, direct, gram, triangular");
}

}  // namespace maskpos
