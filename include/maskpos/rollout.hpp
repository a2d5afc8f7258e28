/// @file rollout.hpp
/// @brief Attention rollout across layers: how much each input position flows into each output
/// position, plain (Wu et al., ICML 2025) and residual-aware (arXiv 2602.16837).
///
/// With A(t) the S x S attention matrix of layer t (rows: queries, row-stochastic):
/// \f[ P = A(L) \cdots A(2) A(1), \qquad
///     P_\lambda = R(L) \cdots R(1),\ R(t) = (1 - \lambda) I + \lambda A(t). \f]
/// P(i, j) is the share of input position j in output position i. Under a causal mask P is lower
/// triangular and, as a product of row-stochastic matrices, row-stochastic. The last row of P is the
/// influence profile of the inputs on the last token, the one that predicts the next token.
///
/// Masked entries may be given as 0 (as in LayerTrace::probs) or NaN; both mean "no attention".
/// Note: the rollout of mean attention matrices (MonteCarloResult::mean_probs) is not the mean of the
/// per-sequence rollouts; it is the usual approximation in the position-bias literature.
///
/// Thread-safety: pure functions, safe to call concurrently.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <string>
#include <vector>

#include "decoder.hpp"
#include "detail/errors.hpp"
#include "types.hpp"

namespace maskpos {

namespace detail {

inline void require_attention_stack(const std::vector<Matrix<double>>& attention, const char* function) {
  require(!attention.empty(), std::string(function) + ": number of layers", attention.size(), "at least one");
  const Index S = attention[0].rows();
  for (std::size_t t = 0; t < attention.size(); ++t)
    require(attention[t].rows() == S && attention[t].cols() == S,
            std::string(function) + ": attention[" + std::to_string(t) + "] size",
            std::to_string(attention[t].rows()) + "x" + std::to_string(attention[t].cols()),
            "square and the size of attention[0], " + std::to_string(S) + "x" + std::to_string(S));
}

inline Matrix<double> masked_as_zero(const Matrix<double>& attention) {
  return attention.unaryExpr([](double a) { return std::isnan(a) ? 0.0 : a; });
}

}  // namespace detail

/// Residual-aware attention rollout P = R(L) ... R(1) with R(t) = (1 - lambda) I + lambda A(t)
/// (arXiv 2602.16837). lambda = 1 is the plain rollout, lambda = 0 the identity.
/// \param attention  A(1), ..., A(L) in layer order (first layer first); NaN entries count as 0
/// \param lambda     weight of the attention path against the residual path
/// \pre at least one layer, all S x S with the same S; 0 <= lambda <= 1 (else std::invalid_argument)
/// \return the S x S rollout matrix
inline Matrix<double> residual_rollout(const std::vector<Matrix<double>>& attention, double lambda) {
  detail::require_attention_stack(attention, "residual_rollout");
  detail::require(lambda >= 0 && lambda <= 1, "residual_rollout: lambda", lambda, "0 <= lambda <= 1");
  const Index S = attention[0].rows();
  Matrix<double> rollout = Matrix<double>::Identity(S, S);
  for (const auto& layer : attention) {
    const Matrix<double> step = (1 - lambda) * Matrix<double>::Identity(S, S) + lambda * detail::masked_as_zero(layer);
    rollout = step * rollout;
  }
  return rollout;
}

/// Plain attention rollout P = A(L) ... A(1) (Wu, Wang, Jegelka, Jadbabaie, ICML 2025).
/// \param attention  A(1), ..., A(L) in layer order; NaN entries count as 0
/// \pre at least one layer, all S x S with the same S (else std::invalid_argument)
inline Matrix<double> attention_rollout(const std::vector<Matrix<double>>& attention) {
  detail::require_attention_stack(attention, "attention_rollout");
  Matrix<double> rollout = detail::masked_as_zero(attention[0]);
  for (std::size_t t = 1; t < attention.size(); ++t) rollout = detail::masked_as_zero(attention[t]) * rollout;
  return rollout;
}

/// The attention probabilities of a forward() trace, converted to double, in layer order; feed them to
/// attention_rollout or residual_rollout.
template <class Scalar>
std::vector<Matrix<double>> attention_matrices(const std::vector<LayerTrace<Scalar>>& trace) {
  std::vector<Matrix<double>> attention;
  attention.reserve(trace.size());
  for (const auto& layer : trace) attention.push_back(layer.probs.template cast<double>());
  return attention;
}

/// The last-row influence profile: entry j is the share of input position j in the last output position,
/// rollout(S - 1, j). For a row-stochastic rollout the entries sum to 1.
/// \pre rollout has at least one row (else std::invalid_argument)
inline std::vector<double> last_row_influence(const Matrix<double>& rollout) {
  detail::require(rollout.rows() >= 1, "last_row_influence: rollout rows", rollout.rows(), "at least 1");
  std::vector<double> influence(static_cast<std::size_t>(rollout.cols()));
  for (Index j = 0; j < rollout.cols(); ++j) influence[static_cast<std::size_t>(j)] = rollout(rollout.rows() - 1, j);
  return influence;
}

}  // namespace maskpos
