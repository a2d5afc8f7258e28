/// @file mean_field.hpp
/// @brief The large-width limit of the Monte Carlo means: a deterministic recursion on S x S matrices
/// for every norm, mask and score scale, with or without RoPE (NOTES Sec. 5; docs/large_width.md).
///
/// The decoder acts on its input only through the Gram matrix (gram.hpp). For the paper's inputs the
/// Gram matrix concentrates, as d grows, on \f$G_0 = (1-\alpha) I + \alpha \mathbf{1}\mathbf{1}^\top\f$;
/// the limit runs the exact Gram recursion on that deterministic matrix,
/// \f[ S = c\,(D H D)\circ K,\quad A = \mathrm{softmax}_\text{row}(\mathrm{mask}(S)),\quad
///     H \leftarrow M H M^\top,\ M = A D + I, \f]
/// where \f$D = \mathrm{diag}(1/\nu_i)\f$ holds the inverse row norms of the normalisation
/// (\f$\nu_i = \sqrt{H_{ii}}\f$ for L2, \f$\sqrt{H_{ii}/d + \epsilon}\f$ for RMSNorm and LayerNorm),
/// LayerNorm starts from its expected centred Gram \f$H_0 = (1 - 1/d) G_0\f$, and K is all ones
/// without RoPE. With RoPE, \f$K_{ij} = \kappa(i - j)\f$ is the plane-averaged rotation kernel of
/// rope_mean_kernel(): every rotation plane carries the same share 2/d of the Gram matrix and keeps
/// it, because the same real M acts on every plane.
///
/// What the limit ignores: the O(1/sqrt(d)) fluctuations of the Gram matrix around its mean, which
/// bias the Monte Carlo mean by O(1/d) through the nonlinear norm and softmax; the bias is largest
/// when the softmax is sharp (LayerNorm or RMSNorm with the 1/sqrt(d) scale), where the Monte Carlo
/// mean is the ground truth.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "decoder.hpp"
#include "detail/errors.hpp"
#include "gram.hpp"
#include "rope.hpp"
#include "types.hpp"

namespace maskpos {

/// The input of the large-width limit: the limit G0 of the input Gram matrix.
///
/// With LayerNorm or RoPE the limit treats the tokens as seen in a uniformly random orthonormal frame
/// of R^d (isotropic), which is exactly true of the paper's Gaussian and orthonormal inputs; for L2,
/// RMSNorm and no norm without RoPE the frame does not matter at all.
struct MeanFieldInputs {
  Matrix<double> initial_gram;  ///< G0, S x S, symmetric positive semidefinite

  /// The paper's alpha-inputs (NOTES Sec. 3): \f$G_0 = (1-\alpha) I + \alpha \mathbf{1}\mathbf{1}^\top\f$,
  /// unit diagonal. \pre S >= 1, 0 <= alpha <= 1 (std::invalid_argument otherwise)
  static MeanFieldInputs alpha(Index S, double alpha) {
    detail::require(S >= 1, "seq_len S", S, "S >= 1");
    detail::require(alpha >= 0.0 && alpha <= 1.0, "alpha", alpha, "0 <= alpha <= 1");
    MeanFieldInputs inputs;
    inputs.initial_gram = Matrix<double>::Constant(S, S, alpha);
    inputs.initial_gram.diagonal().setOnes();
    return inputs;
  }

  /// S orthonormal tokens: G0 = I (paper Fig. 1). \pre S >= 1
  static MeanFieldInputs orthonormal(Index S) { return alpha(S, 0.0); }

  /// Any user-supplied Gram matrix.
  /// \pre G square, finite, symmetric and positive semidefinite up to rounding (see validate())
  static MeanFieldInputs gram(Matrix<double> G) {
    MeanFieldInputs inputs;
    inputs.initial_gram = std::move(G);
    inputs.validate();
    return inputs;
  }

  Index seq_len() const { return initial_gram.rows(); }

  /// Throws std::invalid_argument unless G0 is square (S >= 1), finite, has a non-negative diagonal,
  /// is symmetric (|G_ij - G_ji| <= sqrt(eps) sqrt(G_ii G_jj)) and positive semidefinite up to rounding
  /// (every pivot of its pivoted LDL^T factorisation >= -sqrt(eps) max_i G_ii).
  void validate() const { detail::validate_gram(initial_gram, "initial_gram", true); }
};

/// Per-layer large-width limits of the Monte Carlo means (same conventions as MonteCarloResult).
template <class Scalar>
struct MeanFieldResult {
  std::vector<Matrix<Scalar>> scores;  ///< limit of E[S(l)]: scaled, pre-softmax; masked entries NaN
  std::vector<Matrix<Scalar>> probs;   ///< limit of E[A(l)]; masked entries 0
  std::vector<Matrix<Scalar>> grams;   ///< limit of E[X(l) X(l)^T], the Gram matrix of the layer output
};

/// The plane-averaged RoPE score kernel \f$\kappa(\Delta)\f$, \f$\Delta = 0..S-1\f$ (it is even in \f$\Delta\f$).
///
/// RoPE rotates plane k of query i by \f$p_i\theta_k\f$ and multiplies the rotated coordinates by the
/// attention factor \f$a\f$; the d - r pass-through coordinates are left alone. For tokens that are
/// isotropic in R^d each plane carries 2/d of the Gram matrix and the pass-through block (d - r)/d, so
/// \f[ \kappa(\Delta) = a^2\,\frac{2}{d}\sum_{k=0}^{r/2-1}\cos(\Delta\,\theta_k) + \frac{d-r}{d}. \f]
/// It does not depend on the layout (which coordinates are paired) nor on the position offset.
///
/// \param rope  \pre rope.validate(dim) passes; \param dim  d; \param seq_len  S >= 1 (dynamic NTK reads it)
/// \return S values
inline std::vector<double> rope_mean_kernel(const RopeConfig& rope, Index dim, Index seq_len) {
  detail::require(seq_len >= 1, "seq_len S", seq_len, "S >= 1");
  const RopeFrequencies frequencies = rope_frequencies(rope, dim, seq_len);
  const double d = static_cast<double>(dim);
  const double factor = frequencies.attention_factor;
  std::vector<double> kernel(static_cast<std::size_t>(seq_len));
  for (Index lag = 0; lag < seq_len; ++lag) {
    double sum = 0;
    for (double theta : frequencies.inv_freq) sum += std::cos(static_cast<double>(lag) * theta);
    kernel[static_cast<std::size_t>(lag)] =
        factor * factor * (2.0 / d) * sum + static_cast<double>(dim - frequencies.rotary_dim) / d;
  }
  return kernel;
}

/// The large-width limit of the decoder's mean scores and probabilities (file comment, NOTES Sec. 5).
///
/// \param config  the decoder (any norm, scale, mask, residual, RoPE); \pre config.validate_for<Scalar>(S, dim) passes
/// \param inputs  the limit Gram matrix G0 of the inputs; \pre inputs.validate() passes
/// \param dim     d: it sets the score scale (1/sqrt(d), 1/d), the value scale of LayerNorm and RMSNorm
///                (rows of norm sqrt(d)), LayerNorm's centring (1 - 1/d) and RoPE's planes
/// \return per-layer limits, layer 1 first. Cost O(L S^3), independent of d and of any sample count.
///
/// Thread safety: a pure function; concurrent calls are safe.
///
/// Example (paper Sec. 4.1: L2, alpha = 0.2, S = 50, 4 layers; the Monte Carlo mean at d = 64 is within
/// about 0.013 of this, at d = 1024 within about 0.0012; docs/large_width.md has the table):
/// \code
/// #include <maskpos/mean_field.hpp>
/// #include <iostream>
/// int main() {
///   maskpos::DecoderConfig config;  // 4 layers, L2, causal, residual
///   auto limit = maskpos::mean_field<double>(config, maskpos::MeanFieldInputs::alpha(50, 0.2), 64);
///   std::cout << limit.scores[3](49, 0) << "\n";
/// }
/// \endcode
template <class Scalar>
MeanFieldResult<Scalar> mean_field(const DecoderConfig& config, const MeanFieldInputs& inputs, Index dim) {
  detail::check_scalar<Scalar>();
  inputs.validate();
  const Index S = inputs.seq_len();
  config.validate_for<Scalar>(S, dim);
  // G0 is cast to Scalar: its entries must fit with room for the residual's growth (M / 4, M the
  // largest Scalar), the bound detail::require_tokens puts on squared token norms.
  const double largest = static_cast<double>(std::numeric_limits<Scalar>::max());
  detail::require_finite(inputs.initial_gram, "initial_gram", largest / 4,
                         " = M / 4 with M = " + detail::to_text(largest) + " the largest " +
                             detail::scalar_name<Scalar>() + " (the Gram matrix is cast to the compute type)");
  std::vector<double> lag_kernel;
  if (config.rope) lag_kernel = rope_mean_kernel(*config.rope, dim, S);
  const Matrix<Scalar> start = ((inputs.initial_gram + inputs.initial_gram.transpose()) * 0.5).template cast<Scalar>();
  // LayerNorm: E[X P X^T] = G0 - E[v v^T]/d with E[v v^T] = G0 for isotropic tokens; the residual keeps
  // v = X 1 and so adds E[v v^T]/d = G0/d back to the output Gram (gram.hpp).
  const bool centred = config.norm == Norm::LayerNorm;
  const Scalar inv_dim = Scalar(1) / static_cast<Scalar>(dim);
  Matrix<Scalar> gram = centred ? Matrix<Scalar>(start * (Scalar(1) - inv_dim)) : start;
  Matrix<Scalar> offset = centred && config.residual ? Matrix<Scalar>(start * inv_dim) : Matrix<Scalar>::Zero(S, S);
  detail::GramKernel<Scalar> kernel(config, S, dim, std::move(lag_kernel));
  MeanFieldResult<Scalar> result;
  for (Index l = 0; l < config.layers; ++l) {
    kernel.layer(gram);
    auto [scores, probs] = detail::masked_copies(config.mask, kernel.scores(), kernel.probs());
    result.scores.push_back(std::move(scores));
    result.probs.push_back(std::move(probs));
    result.grams.push_back(centred ? Matrix<Scalar>(gram + offset) : gram);
  }
  return result;
}

}  // namespace maskpos
