/// @file normalization.hpp
/// @brief Row-wise token normalisations: L2 (the paper), LayerNorm, RMSNorm, none.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <string>

#include "detail/errors.hpp"
#include "types.hpp"

namespace maskpos {

/// How each token (row) is normalised before attention.
enum class Norm {
  L2,         ///< y = x / max(||x||, eps): unit rows (paper Sec. 2)
  LayerNorm,  ///< y = (x - mean(x)) / sqrt(var(x) + eps), population variance, no affine: ||y|| ~ sqrt(d)
  RMSNorm,    ///< y = x / sqrt(mean(x^2) + eps), no weight: ||y|| ~ sqrt(d)
  None        ///< y = x
};

inline std::string to_string(Norm norm) {
  switch (norm) {
    case Norm::L2: return "l2";
    case Norm::LayerNorm: return "layernorm";
    case Norm::RMSNorm: return "rmsnorm";
    case Norm::None: return "none";
  }
  return "?";
}

/// Writes the normalised rows of `tokens` into `normalized` (same shape; may alias `tokens`).
///
/// Degenerate rows have defined results: a zero row under L2 and a constant row under LayerNorm
/// both map to the zero row (the eps keeps the division finite), exactly as torch's
/// F.normalize and F.layer_norm do. With eps = 0 the divisor of such a row is 0: the row then maps
/// to the zero row as well (never 0/0 = NaN). (A constant row whose mean is not exactly
/// representable leaves rounding residue of order eps_machine |x| / sqrt(var + eps) under LayerNorm.)
/// \param eps  the epsilon of the norm (L2: lower bound on the norm; LayerNorm/RMSNorm: added to
///             the variance / mean square). \pre eps >= 0.
template <class Scalar, class Derived, class OutDerived>
void normalize_rows(const Eigen::MatrixBase<Derived>& tokens, Eigen::MatrixBase<OutDerived> const& normalized_,
                    Norm norm, double eps) {
  detail::check_scalar<Scalar>();
  auto& normalized = const_cast<Eigen::MatrixBase<OutDerived>&>(normalized_);
  const Index dim = tokens.cols();
  const Scalar eps_s = static_cast<Scalar>(eps);
  for (Index i = 0; i < tokens.rows(); ++i) {
    switch (norm) {
      case Norm::L2: {
        const Scalar length = tokens.row(i).norm();
        const Scalar divisor = length > eps_s ? length : eps_s;
        if (divisor > 0) normalized.row(i) = tokens.row(i) / divisor;
        else normalized.row(i).setZero();  // eps = 0 and a zero row
        break;
      }
      case Norm::LayerNorm: {
        const Scalar mean = tokens.row(i).mean();
        const Scalar var = (tokens.row(i).array() - mean).square().sum() / static_cast<Scalar>(dim);
        const Scalar divisor = std::sqrt(var + eps_s);
        if (divisor > 0) normalized.row(i) = (tokens.row(i).array() - mean) / divisor;
        else normalized.row(i).setZero();  // eps = 0 and a constant row
        break;
      }
      case Norm::RMSNorm: {
        const Scalar divisor = std::sqrt(tokens.row(i).squaredNorm() / static_cast<Scalar>(dim) + eps_s);
        if (divisor > 0) normalized.row(i) = tokens.row(i) / divisor;
        else normalized.row(i).setZero();  // eps = 0 and a zero row
        break;
      }
      case Norm::None: normalized.row(i) = tokens.row(i); break;
    }
  }
}

}  // namespace maskpos
