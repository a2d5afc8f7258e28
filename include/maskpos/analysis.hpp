/// @file analysis.hpp
/// @brief Measurements of score matrices: the paper's diagonal normalisation, the best relative
/// (Toeplitz) approximation, the non-relative fraction, distance profiles, locality, the first-key
/// contrast, percentile colour limits and all of them at once (score_metrics). NaN entries are
/// "masked" everywhere.
///
/// Conventions: scores(i, j) is query i, key j; i - j is the distance (positive: the key is earlier).
/// Thread-safety: every function is pure (no shared state) and may be called concurrently.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "detail/errors.hpp"
#include "types.hpp"

namespace maskpos {

/// Mean of the visible (non-NaN) entries of each diagonal of a square matrix.
///
/// Entry k + (S - 1) holds the mean of the entries (i, i - k), for k = -(S-1)..S-1 (k > 0: below the
/// main diagonal, key before query). Diagonals with no visible entry hold NaN.
/// \pre scores is square (else std::invalid_argument: a wider matrix would index before the first diagonal)
inline std::vector<double> diagonal_means(const Matrix<double>& scores) {
  detail::require(scores.rows() == scores.cols(), "diagonal_means: scores size",
                  std::to_string(scores.rows()) + "x" + std::to_string(scores.cols()), "a square matrix");
  const Index S = scores.rows();
  std::vector<double> sum(S == 0 ? 0 : static_cast<std::size_t>(2 * S - 1), 0.0);  // 0 x 0: no diagonal
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
/// \pre scores is square (std::invalid_argument otherwise; so for diagonal_normalize and non_relative_fraction)
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

namespace detail {

inline void require_square(const Matrix<double>& scores, const char* function) {
  require(scores.rows() == scores.cols(), std::string(function) + ": scores size",
          std::to_string(scores.rows()) + "x" + std::to_string(scores.cols()), "a square matrix");
}

/// 1-based ranks of `values`, ties receiving the average of the ranks they span (the "average" method of
/// scipy.stats.rankdata).
inline std::vector<double> average_ranks(const std::vector<double>& values) {
  std::vector<std::size_t> order(values.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(values.size());
  for (std::size_t start = 0; start < order.size();) {
    std::size_t end = start + 1;
    while (end < order.size() && values[order[end]] == values[order[start]]) ++end;
    // Positions start..end-1 (0-based) share the mean of the ranks start+1..end.
    const double rank = 0.5 * static_cast<double>(start + 1 + end);
    for (std::size_t k = start; k < end; ++k) ranks[order[k]] = rank;
    start = end;
  }
  return ranks;
}

/// Pearson correlation of two equally long samples; NaN when either has zero variance.
inline double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  const double mean_x = std::accumulate(x.begin(), x.end(), 0.0) / n;
  const double mean_y = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t k = 0; k < x.size(); ++k) {
    sxy += (x[k] - mean_x) * (y[k] - mean_y);
    sxx += (x[k] - mean_x) * (x[k] - mean_x);
    syy += (y[k] - mean_y) * (y[k] - mean_y);
  }
  if (!(sxx > 0) || !(syy > 0)) return std::numeric_limits<double>::quiet_NaN();
  return sxy / std::sqrt(sxx * syy);
}

}  // namespace detail

/// Mean and spread of the score per distance i - j (NOTES Sec. 4: the relative part of a pattern).
struct DistanceProfile {
  std::vector<Index> distance;   ///< i - j, ascending; only distances with at least one visible entry
  std::vector<double> mean;      ///< mean of the visible scores at that distance
  std::vector<double> std_dev;   ///< population standard deviation (divisor n, as numpy.std)
  std::vector<Index> count;      ///< number of visible entries at that distance
};

/// The distance profile of a square score matrix: a causal matrix gives distances 0..S-1, a
/// bidirectional one -(S-1)..S-1 (negative: the key comes after the query).
/// \pre scores is square (else std::invalid_argument)
inline DistanceProfile distance_profile(const Matrix<double>& scores) {
  detail::require_square(scores, "distance_profile");
  const Index S = scores.rows();
  DistanceProfile profile;
  for (Index k = -(S - 1); k <= S - 1; ++k) {
    // Diagonal k holds (i, i - k) for max(0, k) <= i < min(S, S + k).
    double sum = 0;
    Index count = 0;
    for (Index i = std::max<Index>(0, k); i < std::min(S, S + k); ++i)
      if (!std::isnan(scores(i, i - k))) {
        sum += scores(i, i - k);
        ++count;
      }
    if (count == 0) continue;
    const double mean = sum / static_cast<double>(count);
    double squares = 0;
    for (Index i = std::max<Index>(0, k); i < std::min(S, S + k); ++i)
      if (!std::isnan(scores(i, i - k))) squares += (scores(i, i - k) - mean) * (scores(i, i - k) - mean);
    profile.distance.push_back(k);
    profile.mean.push_back(mean);
    profile.std_dev.push_back(std::sqrt(squares / static_cast<double>(count)));
    profile.count.push_back(count);
  }
  return profile;
}

/// Per-query locality: for row i, the Spearman rank correlation between the closeness -|i - j| of key j
/// and the score (i, j), over the visible keys j != i. For a causal row the closeness is j - i, so this
/// is the rank correlation with the key position. +1: strictly nearer keys score strictly higher; -1:
/// the reverse. Ties get average ranks. Rows with fewer than 2 visible off-diagonal keys, or whose
/// scores (or closenesses) are all tied, are NaN.
/// \pre scores is square (else std::invalid_argument)
inline std::vector<double> row_locality(const Matrix<double>& scores) {
  detail::require_square(scores, "row_locality");
  const Index S = scores.rows();
  std::vector<double> locality(static_cast<std::size_t>(S), std::numeric_limits<double>::quiet_NaN());
  std::vector<double> closeness, values;
  for (Index i = 0; i < S; ++i) {
    closeness.clear();
    values.clear();
    for (Index j = 0; j < S; ++j)
      if (j != i && !std::isnan(scores(i, j))) {
        closeness.push_back(-static_cast<double>(i > j ? i - j : j - i));
        values.push_back(scores(i, j));
      }
    if (values.size() < 2) continue;
    locality[static_cast<std::size_t>(i)] = detail::pearson(detail::average_ranks(closeness), detail::average_ranks(values));
  }
  return locality;
}

/// Locality of a score matrix: row_locality averaged over the rows where it is defined (NaN when no row
/// is). Positive when, query by query, nearer keys score higher.
/// \pre scores is square (else std::invalid_argument)
inline double locality(const Matrix<double>& scores) {
  const auto rows = row_locality(scores);
  double sum = 0;
  Index count = 0;
  for (double r : rows)
    if (!std::isnan(r)) {
      sum += r;
      ++count;
    }
  return count > 0 ? sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

/// The signature of the paper's causal figures (NOTES Sec. 4: "low in the first key column"): the mean
/// of the visible entries of column 0 below the diagonal, (i, 0) for i >= 1, minus the mean of the other
/// visible strictly-lower entries (i, j) with 1 <= j < i. Negative when the first key scores low. NaN when
/// either set is empty (S < 3 or everything masked).
/// \pre scores is square (else std::invalid_argument)
inline double first_key_contrast(const Matrix<double>& scores) {
  detail::require_square(scores, "first_key_contrast");
  const Index S = scores.rows();
  double first_sum = 0, other_sum = 0;
  Index first_count = 0, other_count = 0;
  for (Index j = 0; j < S; ++j)
    for (Index i = j + 1; i < S; ++i)
      if (!std::isnan(scores(i, j))) {
        (j == 0 ? first_sum : other_sum) += scores(i, j);
        ++(j == 0 ? first_count : other_count);
      }
  if (first_count == 0 || other_count == 0) return std::numeric_limits<double>::quiet_NaN();
  return first_sum / static_cast<double>(first_count) - other_sum / static_cast<double>(other_count);
}

/// The percent-th percentile of the finite entries of `values` (NaN and +/-infinity are ignored), with
/// NumPy's default rule (numpy.percentile, method "linear"): sort the n finite values x_0 <= ... <=
/// x_{n-1}, h = (n - 1) percent / 100, g = h - floor(h), and return
/// \f$ x_{\lfloor h \rfloor} + g (x_{\lfloor h \rfloor + 1} - x_{\lfloor h \rfloor}) \f$, evaluated like
/// NumPy's _lerp (from the upper end when g >= 0.5) so the result matches NumPy to the last bit.
/// \return NaN when there is no finite value
/// \pre 0 <= percent <= 100 (else std::invalid_argument)
inline double percentile(std::vector<double> values, double percent) {
  detail::require(percent >= 0 && percent <= 100, "percentile", percent, "0 <= percent <= 100");
  values.erase(std::remove_if(values.begin(), values.end(), [](double v) { return !std::isfinite(v); }), values.end());
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  const double h = static_cast<double>(n - 1) * (percent / 100.0);
  if (h >= static_cast<double>(n - 1)) return values[n - 1];
  const double below = std::floor(h);
  const std::size_t lo = static_cast<std::size_t>(below);
  const double g = h - below, a = values[lo], b = values[lo + 1];
  const double difference = b - a;
  return g >= 0.5 ? b - difference * (1 - g) : a + difference * g;
}

/// A colour range [low, high] for a heat map.
struct ColourLimits {
  double low = std::numeric_limits<double>::quiet_NaN();
  double high = std::numeric_limits<double>::quiet_NaN();
};

/// Colour limits from percentiles of the finite entries (NOTES Sec. 4, real models: 1st and 99th), so a
/// few extreme entries do not wash out the picture. Both NaN when no entry is finite.
/// \pre 0 <= low_percent <= high_percent <= 100 (else std::invalid_argument)
inline ColourLimits colour_limits(const Matrix<double>& scores, double low_percent = 1, double high_percent = 99) {
  detail::require(low_percent <= high_percent, "colour_limits: low_percent", low_percent,
                  "low_percent <= high_percent = " + detail::to_text(high_percent));
  const std::vector<double> values(scores.data(), scores.data() + scores.size());
  return {percentile(values, low_percent), percentile(values, high_percent)};
}

/// Every per-layer number the command line reports, computed at once.
struct ScoreMetrics {
  Index size = 0;                    ///< S
  Index visible_off_diagonal = 0;    ///< visible entries with i != j
  double mean_diagonal = std::numeric_limits<double>::quiet_NaN();      ///< mean of the visible (i, i)
  double mean_off_diagonal = std::numeric_limits<double>::quiet_NaN();  ///< mean of the visible i != j
  double non_relative_fraction = std::numeric_limits<double>::quiet_NaN();  ///< see non_relative_fraction
  /// Population standard deviation of the diagonal-normalised entries S - T(S) over the finite i != j:
  /// the size of the non-relative pattern in score units (the spread of the paper's bottom-row plots).
  double normalized_spread = std::numeric_limits<double>::quiet_NaN();
  double locality = std::numeric_limits<double>::quiet_NaN();            ///< see locality
  double first_key_contrast = std::numeric_limits<double>::quiet_NaN();  ///< see first_key_contrast
  ColourLimits colour_limits;             ///< 1st / 99th percentiles of the finite scores
  ColourLimits normalized_colour_limits;  ///< 1st / 99th percentiles of the finite S - T(S)
};

/// All of ScoreMetrics for one score matrix (NaN = masked).
/// \pre scores is square (else std::invalid_argument)
inline ScoreMetrics score_metrics(const Matrix<double>& scores) {
  detail::require_square(scores, "score_metrics");
  const Index S = scores.rows();
  ScoreMetrics metrics;
  metrics.size = S;
  double diagonal_sum = 0, off_sum = 0;
  Index diagonal_count = 0;
  for (Index j = 0; j < S; ++j)
    for (Index i = 0; i < S; ++i)
      if (!std::isnan(scores(i, j))) {
        if (i == j) {
          diagonal_sum += scores(i, j);
          ++diagonal_count;
        } else {
          off_sum += scores(i, j);
          ++metrics.visible_off_diagonal;
        }
      }
  if (diagonal_count > 0) metrics.mean_diagonal = diagonal_sum / static_cast<double>(diagonal_count);
  if (metrics.visible_off_diagonal > 0)
    metrics.mean_off_diagonal = off_sum / static_cast<double>(metrics.visible_off_diagonal);

  const Matrix<double> normalized = diagonal_normalize(scores);
  // Over the finite normalised entries (an infinite score makes its diagonal's normalised entries NaN).
  double sum = 0;
  Index count = 0;
  for (Index j = 0; j < S; ++j)
    for (Index i = 0; i < S; ++i)
      if (i != j && std::isfinite(normalized(i, j))) {
        sum += normalized(i, j);
        ++count;
      }
  if (count > 0) {
    const double mean = sum / static_cast<double>(count);
    double squares = 0;
    for (Index j = 0; j < S; ++j)
      for (Index i = 0; i < S; ++i)
        if (i != j && std::isfinite(normalized(i, j))) squares += (normalized(i, j) - mean) * (normalized(i, j) - mean);
    metrics.normalized_spread = std::sqrt(squares / static_cast<double>(count));
  }
  metrics.non_relative_fraction = non_relative_fraction(scores);
  metrics.locality = locality(scores);
  metrics.first_key_contrast = first_key_contrast(scores);
  metrics.colour_limits = colour_limits(scores);
  metrics.normalized_colour_limits = colour_limits(normalized);
  return metrics;
}

}  // namespace maskpos
