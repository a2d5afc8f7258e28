#include <maskpos/inputs.hpp>
#include <maskpos/random.hpp>

#include <catch2/catch.hpp>

#include <Random123/philox.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

using maskpos::InputSpec;

TEST_CASE("the sample stream is standard normal and depends only on (seed, sample)") {
  maskpos::SampleStream stream(7, 3);
  Eigen::ArrayXd draws(200001);
  stream.fill_normal(draws);
  const double n = static_cast<double>(draws.size());
  const double mean = draws.mean();
  const double var = (draws - mean).square().sum() / (n - 1);
  const double kurtosis = (draws - mean).pow(4).mean() / (var * var);
  // Standard errors for N(0,1): mean 1/sqrt(n), variance sqrt(2/n), kurtosis sqrt(24/n); 5 of each.
  CHECK(std::fabs(mean) < 5 / std::sqrt(n));
  CHECK(std::fabs(var - 1) < 5 * std::sqrt(2 / n));
  CHECK(std::fabs(kurtosis - 3) < 5 * std::sqrt(24 / n));
  Eigen::ArrayXd again(10), other_sample(10), other_seed(10);
  maskpos::SampleStream(7, 3).fill_normal(again);
  maskpos::SampleStream(7, 4).fill_normal(other_sample);
  maskpos::SampleStream(8, 3).fill_normal(other_seed);
  CHECK((again == draws.head(10)).all());
  CHECK((again != other_sample).all());
  CHECK((again != other_seed).all());
  stream.start_sample(3);
  Eigen::ArrayXd restarted(10);
  stream.fill_normal(restarted);
  CHECK((restarted == again).all());
}

TEST_CASE("the vectorised Philox lanes are Random123's Philox4x32-10") {
  // Random123's own implementation is the independent reference.
  for (std::uint64_t seed : {0ull, 42ull, 0x123456789abcdefull})
    for (std::uint32_t first : {0u, 16u, 0xfffffff0u}) {
      std::uint32_t words[4][maskpos::detail::kPhiloxLanes];
      maskpos::detail::philox4x32_10_lanes(7u, 9u, first, 3u, static_cast<std::uint32_t>(seed),
                                           static_cast<std::uint32_t>(seed >> 32), words);
      r123::Philox4x32 philox;
      const r123::Philox4x32::key_type key = {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
      for (int j = 0; j < maskpos::detail::kPhiloxLanes; ++j) {
        const r123::Philox4x32::ctr_type counter = {{7u, 9u, first + static_cast<std::uint32_t>(j), 3u}};
        const auto expected = philox(counter, key);
        for (int w = 0; w < 4; ++w) CHECK(words[w][j] == expected.v[w]);
      }
    }
}

TEST_CASE("Box-Muller pairs are independent normals with a uniform angle") {
  // Chunks hold [r cos | r sin] blocks of 16: entry k and k + 16 of a 32-block are one pair.
  maskpos::SampleStream stream(11, 0);
  const int chunks = 4000;
  Eigen::ArrayXf draws(chunks * 64);
  stream.fill_normal(draws);
  double cross = 0, cross_squares = 0, skew = 0;
  std::vector<double> octants(8, 0.0);
  const double pairs = chunks * 32.0;
  const double pi = 3.14159265358979323846;
  for (int c = 0; c < chunks * 2; ++c)
    for (int j = 0; j < 16; ++j) {
      const double x = draws[c * 32 + j], y = draws[c * 32 + 16 + j];
      cross += x * y;
      cross_squares += x * x * y * y;
      skew += x * x * x + y * y * y;
      const double angle = std::atan2(y, x) + pi;  // in [0, 2 pi]
      octants[std::min(7, static_cast<int>(angle / (pi / 4)))] += 1;
    }
  // For independent N(0,1): E[xy] = 0 (sd 1 per pair), E[x^2 y^2] = 1 (sd sqrt(E x^4 E y^4 - 1) = sqrt(8)),
  // E[x^3] = 0 (sd sqrt(15)); each octant holds 1/8 of the angles (binomial sd). Bounds: 5 standard errors.
  CHECK(std::fabs(cross / pairs) < 5 / std::sqrt(pairs));
  CHECK(std::fabs(cross_squares / pairs - 1) < 5 * std::sqrt(8 / pairs));
  CHECK(std::fabs(skew / (2 * pairs)) < 5 * std::sqrt(15 / (2 * pairs)));
  for (double count : octants) CHECK(std::fabs(count / pairs - 0.125) < 5 * std::sqrt(0.125 * 0.875 / pairs));
}

TEST_CASE("how the normals of a sample are requested never changes them") {
  maskpos::SampleStream whole(5, 9), pieces(5, 9);
  Eigen::ArrayXf all(300);
  whole.fill_normal(all);
  Eigen::ArrayXf part(300);
  int begin = 0;
  for (int size : {1, 70, 64, 3, 100, 62}) {
    pieces.fill_normal(part.data() + begin, size);
    begin += size;
  }
  CHECK((part == all).all());
  Eigen::ArrayXd widened(300);
  maskpos::SampleStream(5, 9).fill_normal(widened);
  CHECK((widened == all.cast<double>()).all());
}

TEST_CASE("alpha-correlated Gaussian tokens: unit norm, pairwise cosine alpha for large d") {
  for (double alpha : {0.0, 0.2, 0.6}) {
    maskpos::InputGenerator generator(InputSpec::gaussian(6, 8192, alpha), 1);
    Eigen::MatrixXd tokens;
    double mean_cosine = 0;
    int pairs = 0;
    for (std::uint64_t b = 0; b < 4; ++b) {
      generator.generate(b, tokens);
      for (int i = 0; i < 6; ++i) {
        CHECK(tokens.row(i).norm() == Approx(1.0).margin(1e-12));
        for (int j = 0; j < i; ++j, ++pairs) mean_cosine += tokens.row(i).dot(tokens.row(j));
      }
    }
    mean_cosine /= pairs;
    // cos = (z_i + l c).(z_j + l c) / norms -> l^2 / (1 + l^2) = alpha; each cosine fluctuates by
    // O(1/sqrt(d)) = 0.011, and the 60 cosines share only 4 directions c: 0.02 is 4 standard errors.
    CHECK(mean_cosine == Approx(alpha).margin(0.02));
  }
  maskpos::InputGenerator equal(InputSpec::gaussian(5, 16, 1.0), 1);
  Eigen::MatrixXf tokens;
  equal.generate(0, tokens);
  for (int i = 1; i < 5; ++i) CHECK(tokens.row(i) == tokens.row(0));
}

TEST_CASE("orthonormal tokens are orthonormal and differ between samples") {
  maskpos::InputGenerator generator(InputSpec::orthonormal(10, 12), 3);
  Eigen::MatrixXd first, second;
  generator.generate(0, first);
  generator.generate(1, second);
  CHECK((first * first.transpose() - Eigen::MatrixXd::Identity(10, 10)).cwiseAbs().maxCoeff() < 1e-13);
  CHECK((first - second).cwiseAbs().maxCoeff() > 0.1);
}

TEST_CASE("user tokens are used as given and validated") {
  Eigen::MatrixXd tokens = Eigen::MatrixXd::Random(4, 3);
  maskpos::InputGenerator generator(InputSpec::user(tokens), 0);
  Eigen::MatrixXd out;
  generator.generate(5, out);
  CHECK(out == tokens);
  tokens(1, 2) = INFINITY;
  CHECK_THROWS_WITH(InputSpec::user(tokens).validate(), Catch::Contains("tokens(1, 2)"));
}

TEST_CASE("Box-Muller lanes follow their formula, evaluated in double with libm") {
  // Words from std::mt19937 (fully specified), the outputs against the documented transform:
  // u = (2 (w >> 9) + 1) 2^-24, r = sqrt(-2 ln u), t = q pi/2 + (f - 1/2) pi/2 with q = w >> 30 and
  // f = (((w >> 6) & 0xFFFFFE) | 1) 2^-24. Float error budget, relative to max(1, r) (r <= 5.77):
  // the float angle (two roundings, 1.2e-7 rad), the truncated sin/cos series (2.5e-8), their float
  // evaluation and the radius's log and square root (a few ulps each): below 8 float epsilons.
  std::mt19937 engine(2024);
  std::uint32_t words[4][maskpos::detail::kPhiloxLanes];
  constexpr int N = maskpos::detail::kPhiloxLanes;
  float out[4 * N];
  double worst = 0;
  for (int round = 0; round < 2000; ++round) {
    for (auto& row : words)
      for (auto& w : row) w = static_cast<std::uint32_t>(engine());
    maskpos::detail::box_muller_lanes(words, out);
    for (int pair = 0; pair < 2; ++pair)
      for (int j = 0; j < N; ++j) {
        const std::uint32_t radius_word = words[2 * pair][j], angle_word = words[2 * pair + 1][j];
        const double u = std::ldexp(static_cast<double>(((radius_word >> 9) << 1) | 1u), -24);
        const double r = std::sqrt(-2.0 * std::log(u));
        const double f = std::ldexp(static_cast<double>(((angle_word >> 6) & 0xFFFFFEu) | 1u), -24);
        const double t = (angle_word >> 30) * (std::acos(-1.0) / 2) + (f - 0.5) * (std::acos(-1.0) / 2);
        const double scale = std::max(1.0, r);
        worst = std::max(worst, std::fabs(out[2 * pair * N + j] - r * std::cos(t)) / scale);
        worst = std::max(worst, std::fabs(out[2 * pair * N + N + j] - r * std::sin(t)) / scale);
      }
  }
  CHECK(worst < 8 * std::numeric_limits<float>::epsilon());
}
