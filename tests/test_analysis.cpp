#include <maskpos/analysis.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

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

// ---- distance profile, locality, first-key contrast, percentiles, score_metrics -------------------

namespace {
// m(i, j) = i + 2 j on and below the diagonal, NaN above (S x S).
Eigen::MatrixXd causal_linear(int S) {
  Eigen::MatrixXd m = Eigen::MatrixXd::Constant(S, S, kNaN);
  for (int i = 0; i < S; ++i)
    for (int j = 0; j <= i; ++j) m(i, j) = i + 2.0 * j;
  return m;
}

std::string fixture(const std::string& name) { return std::string(MASKPOS_SOURCE_DIR) + "/tests/data/" + name; }

// Reads the float64 C-order .npy fixture written by make_fixtures.py, independently of npy.hpp: the
// header is skipped by its stored length and the data is taken as raw little-endian doubles.
Eigen::MatrixXd read_square_f8_fixture(const std::string& path, int S) {
  std::ifstream in(path, std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() >= 10);
  const std::size_t header = bytes[8] + 256u * bytes[9];
  REQUIRE(bytes.size() == 10 + header + 8u * static_cast<std::size_t>(S * S));
  Eigen::MatrixXd m(S, S);
  for (int i = 0; i < S; ++i)
    for (int j = 0; j < S; ++j) std::memcpy(&m(i, j), bytes.data() + 10 + header + 8 * (i * S + j), 8);
  return m;
}
}  // namespace

TEST_CASE("distance profile of a causal matrix: closed form per distance") {
  // On diagonal k of m(i, j) = i + 2 j the entries are 3 i - 2 k for i = k..S-1: S - k consecutive
  // multiples of 3, mean 3 (S - 1 + k) / 2 - 2 k, population variance 9 ((S - k)^2 - 1) / 12.
  const int S = 5;
  const auto profile = maskpos::distance_profile(causal_linear(S));
  REQUIRE(profile.distance.size() == static_cast<std::size_t>(S));
  for (int k = 0; k < S; ++k) {
    const auto u = static_cast<std::size_t>(k);
    CHECK(profile.distance[u] == k);
    CHECK(profile.count[u] == S - k);
    CHECK(profile.mean[u] == Approx(1.5 * (S - 1 + k) - 2.0 * k).epsilon(1e-15));
    const double n = S - k;
    CHECK(profile.std_dev[u] == Approx(std::sqrt(9.0 * (n * n - 1) / 12.0)).epsilon(1e-14).margin(1e-15));
  }
}

TEST_CASE("distance profile of a bidirectional matrix covers negative distances") {
  Eigen::MatrixXd m(3, 3);
  m << 1, 2, 3, 4, 5, 6, 7, 8, 9;
  const auto profile = maskpos::distance_profile(m);
  CHECK(profile.distance == std::vector<Eigen::Index>{-2, -1, 0, 1, 2});
  CHECK(profile.count == std::vector<Eigen::Index>{1, 2, 3, 2, 1});
  // Diagonals: {3}, {2, 6}, {1, 5, 9}, {4, 8}, {7}.
  CHECK(profile.mean == std::vector<double>{3, 4, 5, 6, 7});
  CHECK(profile.std_dev[1] == 2.0);
  CHECK(profile.std_dev[2] == Approx(std::sqrt(32.0 / 3.0)).epsilon(1e-15));
  CHECK_THROWS_AS(maskpos::distance_profile(Eigen::MatrixXd::Zero(2, 3)), std::invalid_argument);
}

TEST_CASE("locality: Spearman +1 when scores rise towards the diagonal, -1 when they fall") {
  const int S = 6;
  Eigen::MatrixXd rising = Eigen::MatrixXd::Constant(S, S, kNaN), falling = rising;
  for (int i = 0; i < S; ++i)
    for (int j = 0; j <= i; ++j) {
      rising(i, j) = std::exp(0.3 * j) + (i == j ? -100 : 0);  // the diagonal is excluded: its value is irrelevant
      falling(i, j) = -rising(i, j);
    }
  const auto rows = maskpos::row_locality(rising);
  CHECK(std::isnan(rows[0]));  // no off-diagonal key
  CHECK(std::isnan(rows[1]));  // one off-diagonal key
  for (int i = 2; i < S; ++i) CHECK(rows[static_cast<std::size_t>(i)] == Approx(1.0).epsilon(1e-15));
  CHECK(maskpos::locality(rising) == Approx(1.0).epsilon(1e-15));
  CHECK(maskpos::locality(falling) == Approx(-1.0).epsilon(1e-15));
}

TEST_CASE("locality: ties get average ranks; bidirectional rows use the closeness -|i - j|") {
  // Row 3 keys 0, 1, 2 with scores 1, 1, 2: ranks of the closeness (1, 2, 3), of the scores
  // (1.5, 1.5, 3); their Pearson correlation is 1.5 / sqrt(2 * 1.5) = sqrt(3) / 2.
  Eigen::MatrixXd m = Eigen::MatrixXd::Constant(4, 4, kNaN);
  m(3, 0) = 1;
  m(3, 1) = 1;
  m(3, 2) = 2;
  m(3, 3) = 7;
  CHECK(maskpos::locality(m) == Approx(std::sqrt(3.0) / 2).epsilon(1e-15));

  // Full matrix with score -|i - j|: rows 0 and 2 correlate perfectly (+1); in row 1 both keys are at
  // distance 1, so the closeness does not vary and the row is skipped.
  Eigen::MatrixXd full(3, 3);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) full(i, j) = -std::abs(i - j);
  const auto rows = maskpos::row_locality(full);
  CHECK(rows[0] == Approx(1.0));
  CHECK(std::isnan(rows[1]));
  CHECK(rows[2] == Approx(1.0));
  CHECK(maskpos::locality(full) == Approx(1.0));

  // Constant scores: no rank variation anywhere, locality undefined.
  Eigen::MatrixXd flat = Eigen::MatrixXd::Ones(4, 4);
  CHECK(std::isnan(maskpos::locality(flat)));
}

TEST_CASE("first-key contrast: closed form on m(i, j) = i + 2 j") {
  // Column 0 below the diagonal: 1, 2, 3 (mean 2); other strictly-lower entries (2,1) = 4, (3,1) = 5,
  // (3,2) = 7 (mean 16/3): contrast 2 - 16/3 = -10/3.
  CHECK(maskpos::first_key_contrast(causal_linear(4)) == Approx(-10.0 / 3).epsilon(1e-15));
  // Only strictly-lower entries count, so a bidirectional matrix gives the same number.
  Eigen::MatrixXd full = causal_linear(4);
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j) full(i, j) = 1000;
  CHECK(maskpos::first_key_contrast(full) == Approx(-10.0 / 3).epsilon(1e-15));
  CHECK(std::isnan(maskpos::first_key_contrast(causal_linear(2))));  // no entry off column 0
}

TEST_CASE("percentiles and colour limits equal numpy.percentile on the fixture") {
  // Values printed by tests/data/make_fixtures.py (numpy 1.24.2, np.percentile of the finite entries
  // of percentile_scores.npy). Our percentile replicates NumPy's arithmetic step by step, so the results
  // are expected to be bit-identical; the sort order of equal values cannot change a value.
  const auto scores = read_square_f8_fixture(fixture("percentile_scores.npy"), 12);
  const std::vector<double> values(scores.data(), scores.data() + scores.size());
  CHECK(maskpos::percentile(values, 1) == -1.7393704087235684);
  CHECK(maskpos::percentile(values, 99) == 1.8303990097640364);
  CHECK(maskpos::percentile(values, 0) == -1.8765035457308972);
  CHECK(maskpos::percentile(values, 100) == 2.064945514451254);
  CHECK(maskpos::percentile(values, 50) == -0.16367838176265265);
  CHECK(maskpos::percentile(values, 37.5) == -0.40888864592145524);
  const auto limits = maskpos::colour_limits(scores);
  CHECK(limits.low == -1.7393704087235684);
  CHECK(limits.high == 1.8303990097640364);
}

TEST_CASE("percentile: closed forms and preconditions") {
  // Four values: h = 3 p / 100; p = 50 -> h = 1.5 -> 2.5; p = 25 -> h = 0.75 -> 1.75.
  const std::vector<double> v = {4, kNaN, 1, 3, 2, std::numeric_limits<double>::infinity()};
  CHECK(maskpos::percentile(v, 50) == 2.5);
  CHECK(maskpos::percentile(v, 25) == 1.75);
  CHECK(maskpos::percentile(v, 0) == 1);
  CHECK(maskpos::percentile(v, 100) == 4);
  CHECK(maskpos::percentile({5.0}, 30) == 5);
  CHECK(std::isnan(maskpos::percentile({kNaN}, 30)));
  CHECK_THROWS_AS(maskpos::percentile(v, 101), std::invalid_argument);
  CHECK_THROWS_AS(maskpos::percentile(v, -1), std::invalid_argument);
  CHECK_THROWS_AS(maskpos::colour_limits(Eigen::MatrixXd::Ones(2, 2), 60, 40), std::invalid_argument);
}

TEST_CASE("score_metrics gathers the individual measures; normalized spread closed form") {
  // 3x3 causal with (1,0) = a, (2,1) = c, (2,0) = b: the distance-1 diagonal {a, c} normalises to
  // +/-(a - c)/2, distance 2 to 0; so the off-diagonal normalised entries are (a-c)/2, 0, (c-a)/2 with
  // mean 0 and population std |a - c| / sqrt(6).
  const double a = 0.5, b = -0.25, c = 0.2;
  Eigen::MatrixXd m = Eigen::MatrixXd::Constant(3, 3, kNaN);
  m(0, 0) = m(1, 1) = m(2, 2) = 1;
  m(1, 0) = a;
  m(2, 0) = b;
  m(2, 1) = c;
  const auto metrics = maskpos::score_metrics(m);
  CHECK(metrics.size == 3);
  CHECK(metrics.visible_off_diagonal == 3);
  CHECK(metrics.mean_diagonal == 1);
  CHECK(metrics.mean_off_diagonal == Approx((a + b + c) / 3).epsilon(1e-15));
  CHECK(metrics.normalized_spread == Approx(std::abs(a - c) / std::sqrt(6.0)).epsilon(1e-14));
  CHECK(metrics.non_relative_fraction == maskpos::non_relative_fraction(m));
  CHECK(metrics.first_key_contrast == Approx((a + b) / 2 - c).epsilon(1e-15));
  // Only row 2 has two off-diagonal keys, and the nearer one scores higher (c > b): locality +1.
  CHECK(metrics.locality == Approx(1.0));
  CHECK(metrics.colour_limits.low == maskpos::colour_limits(m).low);
  CHECK(metrics.colour_limits.high == maskpos::colour_limits(m).high);
  CHECK(metrics.normalized_colour_limits.high == maskpos::colour_limits(maskpos::diagonal_normalize(m)).high);

  const auto toeplitz = maskpos::score_metrics(causal_toeplitz(9));
  CHECK(toeplitz.normalized_spread <= 1e-14);
}
