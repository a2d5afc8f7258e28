#include <maskpos/analysis.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

namespace {
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// A causal Toeplitz matrix t(i - j) with NaN above the diagonal.
Eigen::MatrixXd causal_toeplitz(int S) {
  Eigen::MatrixXd m = Eigen::MatrixXd::Constant(S, S, kNaN);
  for (int i = 0; i < S; ++i)
    for (int j = 0; j <= i; ++j) m(i, j) = std::sin(0.7 * (i - j)) + 0.1 * (i - j);
  return m;
}
}  // namespace

TEST_CASE("diagonal normalisation of a Toeplitz matrix is exactly zero; non-relative fraction 0") {
  const auto m = causal_toeplitz(9);
  const auto normalized = maskpos::diagonal_normalize(m);
  for (int i = 0; i < 9; ++i)
    for (int j = 0; j < 9; ++j) {
      if (j > i) CHECK(std::isnan(normalized(i, j)));
      // Each diagonal's entries are bit-identical, and the mean of n equal doubles computed as a sum
      // divided by n is within n/2 ulps of the value: 9 * 4 eps of the largest |t| (~1.6).
      else CHECK(std::fabs(normalized(i, j)) <= 36 * std::numeric_limits<double>::epsilon() * 2);
    }
  CHECK(maskpos::non_relative_fraction(m) == Approx(0.0).margin(1e-20));
}

TEST_CASE("non-relative fraction is 1 when every diagonal has mean zero, between for key-only patterns") {
  // Signs alternating along each diagonal, on an even number of entries per off-diagonal.
  const int S = 8;
  Eigen::MatrixXd alternating = Eigen::MatrixXd::Constant(S, S, kNaN);
  for (int i = 0; i < S; ++i)
    for (int j = 0; j <= i; ++j) alternating(i, j) = (j % 2 == 0 ? 1.0 : -1.0) * (1 + i - j);
  // Diagonal k has S - k entries; keep only diagonals with an even count so the means vanish.
  for (int i = 0; i < S; ++i)
    for (int j = 0; j <= i; ++j)
      if ((S - (i - j)) % 2 != 0) alternating(i, j) = kNaN;
  CHECK(maskpos::non_relative_fraction(alternating) == Approx(1.0).epsilon(1e-12));

  Eigen::MatrixXd key_only = Eigen::MatrixXd::Constant(S, S, kNaN);
  for (int i = 0; i < S; ++i)
    for (int j = 0; j <= i; ++j) key_only(i, j) = j;
  const double fraction = maskpos::non_relative_fraction(key_only);
  CHECK(fraction > 0.0);
  CHECK(fraction < 1.0);
}

TEST_CASE("bidirectional matrices are normalised over both triangles") {
  Eigen::MatrixXd m(3, 3);
  m << 1, 2, 3, 4, 5, 6, 7, 8, 9;
  const auto normalized = maskpos::diagonal_normalize(m);
  // Diagonal i - j = 1 holds 4 and 8 (mean 6); i - j = -1 holds 2 and 6 (mean 4).
  CHECK(normalized(1, 0) == -2.0);
  CHECK(normalized(2, 1) == 2.0);
  CHECK(normalized(0, 1) == -2.0);
  CHECK(normalized(1, 2) == 2.0);
  CHECK(normalized(2, 0) == 0.0);
}
