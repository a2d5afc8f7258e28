/// @file analysis.hpp
/// @brief Measurements of score matrices: the paper's diagonal normalisation, the best relative
/// (Toeplitz) approximation and the non-relative fraction. NaN entries are "masked" everywhere.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <vector>

#include "types.hpp"

namespace maskpos {

/// Mean of the visible (non-NaN) entries of each diagonal of a square matrix.
///
/// Entry k + (S - 1) holds the mean of the entries (i, i - k), for k = -(S-1)..S-1 (k > 0: below the
/// main diagonal, key before query). Diagonals with no visible entry hold NaN.
/// \pre scores is square
inline std::vector<double> diagonal_means(const Matrix<double>& scores) {
  const Index S = scores.rows();
  std::vector<double> sum(static_cast<std::size_t>(2 * S - 1), 0.0);
  std::vector<Index> count(sum.size(), 0);
  for (Index j = 0; j < S; ++j)
    for (Index i = 0; i < S; ++i)
      if (!std::isnan(scores(i, j))) {
        const std::size_t k = static_cast<std::size_t>(i - j + S - 1);
        sum[k] += scores(i, j);
        ++count[k];
      }
  for (std::size_t k = 0; k < sum.size(); ++k)
    sum[k] = count[k] > 0 ? sum[k] / static_cast<double>(count[k]) : std::numeric_limits<double>::quiet_NaN();
  return sum;
}

/// T(S): every visible entry replaced by the mean of its diagonal (the best purely relative,
/// Toeplitz, approximation in least squares over the visible entries). Masked entries stay NaN.
inline Matrix<double> relative_projection(const Matrix<double>& scores) {
  const Index S = scores.rows();
  const auto means = diagonal_means(scores);
  Matrix<double> projection = scores;
  for (Index j = 0; j < S; ++j)
    for (Index i = 0; i < S; ++i)
      if (!std::isnan(scores(i, j))) projection(i, j) = means[static_cast<std::size_t>(i - j + S - 1)];
  return projection;
}

/// The paper's "normalized" view (NOTES Sec. 4): each diagonal (fixed i - j) minus its own mean,
/// S - T(S). Masked entries stay NaN, so a causal matrix is normalised over its lower triangle and a
/// bidirectional one over both triangles.
inline Matrix<double> diagonal_normalize(const Matrix<double>& scores) {
  return scores - relative_projection(scores);
}

/// Share of the variation of the visible strictly-off-diagonal entries that no relative pattern explains:
/// sum (S - T(S))^2 / sum (S - mean(S))^2. 0 for a Toeplitz matrix, 1 when every diagonal has mean
/// zero; NaN when the off-diagonal entries do not vary at all.
inline double non_relative_fraction(const Matrix<double>& scores) {
  const Index S = scores.rows();
  const Matrix<double> projection = relative_projection(scores);
  double sum = 0;
  Index count = 0;
  for (Index j = 0; j < S; ++j)
    for (Index i = 0; i < S; ++i)
      if (i != j && !std::isnan(scores(i, j))) {
        sum += scores(i, j);
        ++count;
      }
  if (count == 0) return std::numeric_limits<double>::quiet_NaN();
  const double mean = sum / static_cast<double>(count);
  double residual = 0, total = 0;
  for (Index j = 0; j < S; ++j)
    for (Index i = 0; i < S; ++i)
      if (i != j && !std::isnan(scores(i, j))) {
        residual += (scores(i, j) - projection(i, j)) * (scores(i, j) - projection(i, j));
        total += (scores(i, j) - mean) * (scores(i, j) - mean);
      }
  return total > 0 ? residual / total : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace maskpos
