/// @file gram.hpp
/// @brief Gram-space propagation: the parameter-free decoder run exactly on G = X X^T instead of
/// on the S x d tokens X (NOTES Sec. 5; derivation in docs/large_width.md).
///
/// Nothing in a parameter-free layer mixes feature coordinates, so without RoPE one layer is a left
/// multiplication of the tokens,
/// \f[ X' = M X,\qquad M = A D + I \ (\text{or } A D \text{ without the residual}),\qquad
///     D = \mathrm{diag}(1/\nu_i), \f]
/// with \f$\nu_i\f$ the norm of row i (\f$\|x_i\|\f$ for L2, \f$\sqrt{\|x_i\|^2/d + \epsilon}\f$ for
/// RMSNorm). The scores \f$c\,D G D\f$, the probabilities and the next Gram \f$G' = M G M^\top\f$
/// therefore need only G: O(S^3) per layer instead of O(S^2 d).
///
/// LayerNorm centres each row, \f$x_i \mapsto x_i P\f$ with the feature-space projection
/// \f$P = I_d - \mathbf{1}\mathbf{1}^\top/d\f$. That is a right multiplication, but it commutes with
/// the layer: with \f$v = X\mathbf{1}\f$ (the row sums) the centred Gram is
/// \f$H = X P X^\top = G - v v^\top/d\f$, the layer is \f$X' = A D X P + X\f$, hence
/// \f$X' P = M X P\f$ and \f$H' = M H M^\top\f$, while \f$X'\mathbf{1} = v\f$ is left unchanged by the
/// residual (and is 0 without it). So LayerNorm propagates H exactly, with
/// \f$\nu_i = \sqrt{H_{ii}/d + \epsilon}\f$, and the Gram of the output is \f$H' + v v^\top/d\f$.
///
/// RoPE is not supported here: the rotation acts on each coordinate plane separately, so an exact
/// Gram-space version would need one S x S matrix per plane, which costs more than the feature-space
/// decoder. (The large-width limit with RoPE is in mean_field.hpp.)
#pragma once

#include <Eigen/Core>
#include <Eigen/Cholesky>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "decoder.hpp"
#include "detail/errors.hpp"
#include "mask.hpp"
#include "normalization.hpp"
#include "types.hpp"

namespace maskpos {

/// What one layer of Gram-space propagation produced (the Gram-space counterpart of LayerTrace).
template <class Scalar>
struct GramLayerTrace {
  Matrix<Scalar> scores;  ///< S x S scaled pre-softmax scores; masked entries NaN
  Matrix<Scalar> probs;   ///< S x S attention probabilities; masked entries 0
  Matrix<Scalar> gram;    ///< S x S Gram matrix X(l) X(l)^T of the layer output
};

/// One sequence described by its Gram matrix, its row sums (LayerNorm needs them) and its width.
template <class Scalar>
struct GramState {
  Matrix<Scalar> gram;      ///< G = X X^T (S x S, symmetric)
  Vector<Scalar> row_sums;  ///< v = X 1 (length S); read only by LayerNorm, may be empty otherwise
  Index dim = 0;            ///< d, the width of the tokens

  /// The Gram state of the S x d tokens X. \pre all entries finite (checked by forward_gram).
  template <class Derived>
  static GramState from_tokens(const Eigen::MatrixBase<Derived>& tokens) {
    detail::check_scalar<Scalar>();
    GramState state;
    const Matrix<Scalar> rows = tokens.template cast<Scalar>();
    state.gram.noalias() = rows * rows.transpose();
    state.gram = (state.gram + state.gram.transpose().eval()) * Scalar(0.5);  // exactly symmetric
    state.row_sums = rows.rowwise().sum();
    state.dim = tokens.cols();
    return state;
  }
};

namespace detail {

/// True when every visible key of query i satisfies j <= i, so A (and M = A D + I) is lower triangular.
inline bool keys_never_after_query(const Mask& mask) {
  return mask.kind == MaskKind::Causal || mask.kind == MaskKind::SlidingWindow ||
         (mask.kind == MaskKind::PrefixLM && mask.prefix <= 1);
}

/// Throws std::invalid_argument unless `gram` is square, finite and symmetric up to rounding
/// (|G_ij - G_ji| <= sqrt(eps) sqrt(G_ii G_jj), eps that of Scalar) with a non-negative diagonal; with `check_psd`
/// also positive semidefinite up to rounding (no pivot of the pivoted LDL^T below -sqrt(eps) max G_ii).
template <class Scalar>
void validate_gram(const Matrix<Scalar>& gram, const std::string& name, bool check_psd) {
  require(gram.rows() >= 1 && gram.rows() == gram.cols(), name + " shape", std::to_string(gram.rows()) + " x " +
          std::to_string(gram.cols()), "square, S x S with S >= 1");
  require_finite(gram, name);
  const Index S = gram.rows();
  // Messages are built only on failure: this check runs on every call.
  for (Index i = 0; i < S; ++i)
    if (!(gram(i, i) >= 0))
      throw_invalid(name + "(" + std::to_string(i) + ", " + std::to_string(i) + ")", gram(i, i),
                    ">= 0 (a Gram matrix has a non-negative diagonal)");
  const double symmetry_tolerance = std::sqrt(static_cast<double>(std::numeric_limits<Scalar>::epsilon()));
  for (Index j = 0; j < S; ++j)
    for (Index i = j + 1; i < S; ++i) {
      const double scale = std::sqrt(static_cast<double>(gram(i, i)) * static_cast<double>(gram(j, j)));
      const double gap = std::fabs(static_cast<double>(gram(i, j)) - static_cast<double>(gram(j, i)));
      if (!(gap <= symmetry_tolerance * scale + std::numeric_limits<double>::min()))
        throw_invalid(name + "(" + std::to_string(i) + ", " + std::to_string(j) + ") - " + name + "(" +
                          std::to_string(j) + ", " + std::to_string(i) + ")",
                      gap, "|G_ij - G_ji| <= sqrt(eps) sqrt(G_ii G_jj) (a Gram matrix is symmetric)");
    }
  if (!check_psd) return;
  const Scalar largest = gram.diagonal().maxCoeff();
  const Eigen::LDLT<Matrix<Scalar>> factor((gram + gram.transpose()) / Scalar(2));
  const Scalar lowest = factor.vectorD().minCoeff();
  require(lowest >= -std::sqrt(std::numeric_limits<Scalar>::epsilon()) * largest, name + " smallest LDL^T pivot",
          lowest, "positive semidefinite up to rounding (pivot >= -sqrt(eps) max_i G_ii)");
}

/// One parameter-free layer on the Gram matrix that fixes the row norms: G for L2, RMSNorm and no
/// norm, the centred Gram H = X P X^T for LayerNorm (see the file comment). Optionally the scores are
/// multiplied entrywise by a relative kernel kappa(|i - j|) (the large-width RoPE limit, mean_field.hpp).
///
/// Owns its scratch space; running a layer allocates nothing after construction.
/// Thread safety: one kernel per thread.
template <class Scalar>
class GramKernel {
 public:
  /// \param lag_kernel  empty, or kappa(0..S-1): the score of (i, j) is multiplied by kappa(|i - j|)
  /// \pre config.validate(seq_len, dim) passes (checked by the callers)
  GramKernel(const DecoderConfig& config, Index seq_len, Index dim, std::vector<double> lag_kernel = {})
      : config_(config),
        seq_len_(seq_len),
        dim_(dim),
        scale_(static_cast<Scalar>(config.scale.factor(dim))),
        lower_(keys_never_after_query(config.mask)),
        lag_kernel_(std::move(lag_kernel)) {
    check_scalar<Scalar>();
    inv_norm_.resize(seq_len);
    scores_.setZero(seq_len, seq_len);
    probs_.setZero(seq_len, seq_len);
    mix_.setZero(seq_len, seq_len);
    product_.resize(seq_len, seq_len);
  }

  const Matrix<Scalar>& scores() const { return scores_; }  ///< only visible entries are meaningful
  const Matrix<Scalar>& probs() const { return probs_; }    ///< 0 on masked entries
  const Vector<Scalar>& inv_norm() const { return inv_norm_; }

  /// Runs one layer: `gram` (G, or H for LayerNorm) becomes M gram M^T.
  void layer(Matrix<Scalar>& gram) {
    const Scalar eps = static_cast<Scalar>(config_.norm_eps);
    const Scalar width = static_cast<Scalar>(dim_);
    for (Index i = 0; i < seq_len_; ++i) {
      const Scalar square = gram(i, i) > 0 ? gram(i, i) : Scalar(0);
      switch (config_.norm) {
        case Norm::L2: {
          const Scalar length = std::sqrt(square);
          const Scalar divisor = length > eps ? length : eps;
          // eps = 0 and a zero row: the row maps to zero, as in normalize_rows.
          inv_norm_(i) = divisor > 0 ? Scalar(1) / divisor : Scalar(0);
          break;
        }
        case Norm::LayerNorm:
        case Norm::RMSNorm: {
          const Scalar divisor = std::sqrt(square / width + eps);
          inv_norm_(i) = divisor > 0 ? Scalar(1) / divisor : Scalar(0);
          break;
        }
        case Norm::None: inv_norm_(i) = Scalar(1); break;
      }
    }
    masked_softmax(gram);
    // M = A D (+ I); then gram <- M gram M^T = M (M gram)^T, using gram = gram^T.
    for (Index j = 0; j < seq_len_; ++j) mix_.col(j) = probs_.col(j) * inv_norm_(j);
    if (config_.residual) mix_.diagonal().array() += Scalar(1);
    if (lower_) {
      product_.noalias() = mix_.template triangularView<Eigen::Lower>() * gram;
      gram.noalias() = mix_.template triangularView<Eigen::Lower>() * product_.transpose();
    } else {
      product_.noalias() = mix_ * gram;
      gram.noalias() = mix_ * product_.transpose();
    }
    // Exact arithmetic gives a symmetric result; keep it symmetric to the last bit.
    product_ = gram.transpose();
    gram = (gram + product_) * Scalar(0.5);
  }

 private:
  /// Visible scores c D gram D (times the lag kernel) and their row softmax, as in DecoderKernel.
  void masked_softmax(const Matrix<Scalar>& gram) {
    for (Index i = 0; i < seq_len_; ++i) {
      const Index begin = config_.mask.first_key(i), end = config_.mask.end_key(i, seq_len_);
      Scalar row_max = -std::numeric_limits<Scalar>::infinity();
      for (Index j = begin; j < end; ++j) {
        Scalar score = scale_ * (inv_norm_(i) * gram(i, j) * inv_norm_(j));
        if (!lag_kernel_.empty())
          score *= static_cast<Scalar>(lag_kernel_[static_cast<std::size_t>(i > j ? i - j : j - i)]);
        scores_(i, j) = score;
        row_max = score > row_max ? score : row_max;
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
  bool lower_;
  std::vector<double> lag_kernel_;
  Vector<Scalar> inv_norm_;
  Matrix<Scalar> scores_, probs_, mix_, product_;
};

/// The scores with masked entries NaN and the probabilities with masked entries 0 (LayerTrace's convention).
template <class Scalar>
std::pair<Matrix<Scalar>, Matrix<Scalar>> masked_copies(const Mask& mask, const Matrix<Scalar>& scores,
                                                       const Matrix<Scalar>& probs) {
  const Index S = scores.rows();
  Matrix<Scalar> shown = Matrix<Scalar>::Constant(S, S, std::numeric_limits<Scalar>::quiet_NaN());
  Matrix<Scalar> weights = Matrix<Scalar>::Zero(S, S);
  for (Index j = 0; j < S; ++j)
    for (Index i = 0; i < S; ++i)
      if (mask.visible(i, j)) {
        shown(i, j) = scores(i, j);
        weights(i, j) = probs(i, j);
      }
  return {std::move(shown), std::move(weights)};
}

}  // namespace detail

/// Runs the decoder (without RoPE) on one sequence given only its Gram state; exact up to rounding.
///
/// Per layer, with \f$\nu_i\f$ the row norm of the configured normalisation (file comment):
/// \f[ S = c\,D H D,\quad A = \mathrm{softmax}_\text{row}(\mathrm{mask}(S)),\quad
///     H \leftarrow M H M^\top,\ M = A D + I, \f]
/// where H = G, except for LayerNorm, where \f$H = G - v v^\top/d\f$ is the centred Gram.
/// Cost O(S^3) per layer, independent of d: faster than forward() when d is much larger than S.
///
/// Accuracy: as forward(), except that LayerNorm forms \f$H_{ii} = G_{ii} - v_i^2/d\f$ once, which loses
/// relative accuracy \f$\approx \epsilon\,G_{ii}/H_{ii}\f$ when the rows have a large mean.
///
/// \param config  the decoder; \pre config.validate_for<Scalar>(S, d) passes and config.rope is empty
/// \param state   G (S x S, finite, symmetric up to rounding: |G_ij - G_ji| <= sqrt(eps) sqrt(G_ii G_jj),
///                non-negative diagonal), d >= 1, and for
///                LayerNorm the row sums v (length S, finite)
/// \return L traces (scores, probabilities, output Gram), layer 1 first
///
/// Thread safety: a pure function; concurrent calls are safe.
///
/// Example (paper Fig. 1 from the Gram matrix of three orthonormal tokens):
/// \code
/// #include <maskpos/gram.hpp>
/// #include <iostream>
/// int main() {
///   maskpos::DecoderConfig config;
///   config.layers = 2;
///   maskpos::GramState<double> state{Eigen::MatrixXd::Identity(3, 3), {}, 3};
///   auto traces = maskpos::forward_gram<double>(config, state);
///   std::cout << traces[1].scores << "\n";  // (1,0) = 0.1535, (2,0) = 0.1321, (2,1) = 0.1508
/// }
/// \endcode
template <class Scalar>
std::vector<GramLayerTrace<Scalar>> forward_gram(const DecoderConfig& config, const GramState<Scalar>& state) {
  detail::check_scalar<Scalar>();
  const Index S = state.gram.rows(), d = state.dim;
  detail::validate_gram(state.gram, "gram", false);
  config.validate_for<Scalar>(S, d);
  detail::require(!config.rope.has_value(), "config.rope", "set",
                  "empty: Gram-space propagation is exact only without RoPE (use forward() or mean_field())");
  const bool centred = config.norm == Norm::LayerNorm;
  if (centred) {
    detail::require(state.row_sums.size() == S, "row_sums length", state.row_sums.size(),
                    "S = " + std::to_string(S) + " (LayerNorm needs the row sums v = X 1)");
    detail::require_finite(state.row_sums, "row_sums");
  }
  // H: the Gram that fixes the norms (centred for LayerNorm); `offset` = v v^T / d is what the
  // unchanged row sums add back to the output Gram.
  Matrix<Scalar> gram = (state.gram + state.gram.transpose()) * Scalar(0.5);
  Matrix<Scalar> offset;
  if (centred) {
    offset.noalias() = state.row_sums * state.row_sums.transpose() / static_cast<Scalar>(d);
    gram -= offset;
  }
  detail::GramKernel<Scalar> kernel(config, S, d);
  std::vector<GramLayerTrace<Scalar>> traces;
  traces.reserve(static_cast<std::size_t>(config.layers));
  for (Index l = 0; l < config.layers; ++l) {
    kernel.layer(gram);
    GramLayerTrace<Scalar> trace;
    std::tie(trace.scores, trace.probs) = detail::masked_copies(config.mask, kernel.scores(), kernel.probs());
    // Without the residual the output is A Y, whose rows are centred under LayerNorm: v becomes 0.
    if (centred && !config.residual) offset.setZero();
    trace.gram = centred ? Matrix<Scalar>(gram + offset) : gram;
    traces.push_back(std::move(trace));
  }
  return traces;
}

/// Convenience: forward_gram() on the Gram state of the S x d tokens X (scores and probabilities equal
/// forward(config, tokens)'s to rounding error). \pre tokens as for forward(); see forward_gram(config, state).
template <class Scalar, class Derived>
std::vector<GramLayerTrace<Scalar>> forward_gram(const DecoderConfig& config, const Eigen::MatrixBase<Derived>& tokens) {
  detail::require_tokens<Scalar>(tokens, "tokens");
  return forward_gram<Scalar>(config, GramState<Scalar>::from_tokens(tokens));
}

}  // namespace maskpos
