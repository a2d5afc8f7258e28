/// @file decoder.hpp
/// @brief The parameter-free decoder layer of the paper (NOTES Sec. 2) and its forward pass.
///
/// One layer, l = 1..L:
/// \f[ Y = \mathrm{norm}(X),\quad S = c\,QK^\top,\ Q = K = \mathrm{RoPE}(Y)\ \text{or}\ Y,\quad
///     A = \mathrm{softmax}_\text{row}(\mathrm{mask}(S)),\quad X \leftarrow A Y + X. \f]
/// No learned weights, no feed-forward; the residual can be switched off.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "detail/errors.hpp"
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
/// Only visible entries of scores() are meaningful; probs() is 0 on masked entries.
template <class Scalar>
class DecoderKernel {
 public:
  DecoderKernel(const DecoderConfig& config, Index seq_len, Index dim)
      : config_(config), seq_len_(seq_len), dim_(dim), scale_(static_cast<Scalar>(config.scale.factor(dim))) {
    check_scalar<Scalar>();
    config_.validate(seq_len, dim);
    if (config_.rope) rope_.emplace(*config_.rope, dim, seq_len);
    normalized_.resize(seq_len, dim);
    scores_.setZero(seq_len, seq_len);
    probs_.setZero(seq_len, seq_len);
    update_.resize(seq_len, dim);
    if (rope_) rotated_.resize(seq_len, dim);
  }

  const DecoderConfig& config() const { return config_; }
  const Matrix<Scalar>& scores() const { return scores_; }
  const Matrix<Scalar>& probs() const { return probs_; }

  /// Runs one layer: `state` (S x d) becomes the layer output.
  void layer(Matrix<Scalar>& state) {
    normalize_rows<Scalar>(state, normalized_, config_.norm, config_.norm_eps);
    const Matrix<Scalar>* query = &normalized_;
    if (rope_) {
      rotated_ = normalized_;
      rope_->apply(rotated_);
      query = &rotated_;
    }
    const bool lower = config_.mask.is_lower_triangular();
    if (lower)
      scores_.template triangularView<Eigen::Lower>() = (*query) * query->transpose();
    else
      scores_.noalias() = (*query) * query->transpose();
    masked_softmax();
    if (lower) {
      if (config_.residual)
        state.noalias() += probs_.template triangularView<Eigen::Lower>() * normalized_;
      else
        state.noalias() = probs_.template triangularView<Eigen::Lower>() * normalized_;
    } else {
      update_.noalias() = probs_ * normalized_;
      if (config_.residual)
        state += update_;
      else
        state = update_;
    }
  }

 private:
  /// Scales the visible scores and writes the row softmax over visible keys into probs_.
  /// Subtracting the row maximum keeps exp() in (0, 1]: no overflow for any score scale.
  void masked_softmax() {
    for (Index i = 0; i < seq_len_; ++i) {
      const Index begin = config_.mask.first_key(i), end = config_.mask.end_key(i, seq_len_);
      Scalar row_max = -std::numeric_limits<Scalar>::infinity();
      for (Index j = begin; j < end; ++j) {
        scores_(i, j) *= scale_;
        row_max = scores_(i, j) > row_max ? scores_(i, j) : row_max;
      }
      Scalar total = 0;
      for (Index j = begin; j < end; ++j) {
        probs_(i, j) = std::exp(scores_(i, j) - row_max);
        total += probs_(i, j);
      }
      const Scalar inv_total = Scalar(1) / total;
      for (Index j = begin; j < end; ++j) probs_(i, j) *= inv_total;
    }
  }

  DecoderConfig config_;
  Index seq_len_, dim_;
  Scalar scale_;
  std::optional<RotaryEmbedding<Scalar>> rope_;
  Matrix<Scalar> normalized_, rotated_, scores_, probs_, update_;
};

/// Throws std::invalid_argument at the first non-finite entry of a user-supplied matrix.
template <class Derived>
void require_finite(const Eigen::MatrixBase<Derived>& values, const std::string& name) {
  for (Index j = 0; j < values.cols(); ++j)
    for (Index i = 0; i < values.rows(); ++i)
      if (!std::isfinite(static_cast<double>(values(i, j))))
        throw_invalid(name + "(" + std::to_string(i) + ", " + std::to_string(j) + ")", values(i, j),
                      "finite (no NaN or infinity)");
}

}  // namespace detail

/// Runs the decoder on one sequence and returns every layer's scores, probabilities and output.
///
/// \param config  the decoder; \pre config.validate(S, d) passes
/// \param tokens  S x d input tokens (rows); \pre all entries finite
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
  config.validate(S, d);
  detail::require_finite(tokens, "tokens");
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
