#include <maskpos/inputs.hpp>
#include <maskpos/random.hpp>

#include <catch2/catch.hpp>

#include <cmath>

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
