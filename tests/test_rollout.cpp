#include <maskpos/rollout.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

namespace {
const double kEps = std::numeric_limits<double>::epsilon();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

Eigen::MatrixXd matrix2(double a, double b, double c, double d) {
  Eigen::MatrixXd m(2, 2);
  m << a, b, c, d;
  return m;
}

// Uniform causal attention: row i attends equally to keys 0..i.
Eigen::MatrixXd uniform_causal(int S) {
  Eigen::MatrixXd a = Eigen::MatrixXd::Zero(S, S);
  for (int i = 0; i < S; ++i)
    for (int j = 0; j <= i; ++j) a(i, j) = 1.0 / (i + 1);
  return a;
}
}  // namespace

TEST_CASE("rollout of identity attention is the identity, for every lambda") {
  const std::vector<Eigen::MatrixXd> identity(3, Eigen::MatrixXd::Identity(4, 4));
  CHECK(maskpos::attention_rollout(identity) == Eigen::MatrixXd::Identity(4, 4));
  for (double lambda : {0.0, 0.3, 1.0}) CHECK(maskpos::residual_rollout(identity, lambda) == Eigen::MatrixXd::Identity(4, 4));
}

TEST_CASE("rollout against hand-computed 2x2 products") {
  // A(1) = [1 0; 1/4 3/4], A(2) = [1 0; 1/2 1/2]. All numbers are dyadic, so the products are exact.
  const std::vector<Eigen::MatrixXd> attention = {matrix2(1, 0, 0.25, 0.75), matrix2(1, 0, 0.5, 0.5)};
  // Plain: A(2) A(1) = [1 0; 1/2 + 1/8, 3/8].
  CHECK(maskpos::attention_rollout(attention) == matrix2(1, 0, 0.625, 0.375));
  // lambda = 1/2: R(1) = [1 0; 1/8 7/8], R(2) = [1 0; 1/4 3/4];
  // R(2) R(1) = [1 0; 1/4 + 3/4 * 1/8, 3/4 * 7/8] = [1 0; 11/32 21/32].
  CHECK(maskpos::residual_rollout(attention, 0.5) == matrix2(1, 0, 11.0 / 32, 21.0 / 32));
  CHECK(maskpos::residual_rollout(attention, 1.0) == maskpos::attention_rollout(attention));
  CHECK(maskpos::residual_rollout(attention, 0.0) == Eigen::MatrixXd::Identity(2, 2));
  // The order matters: with A(1) = [1/2 1/2; 0 1] and A(2) = [1 0; 1/2 1/2],
  // A(2) A(1) = [1/2 1/2; 1/4 3/4] whereas A(1) A(2) = [3/4 1/4; 1/2 1/2].
  CHECK(maskpos::attention_rollout({matrix2(0.5, 0.5, 0, 1), matrix2(1, 0, 0.5, 0.5)}) == matrix2(0.5, 0.5, 0.25, 0.75));
  CHECK(maskpos::attention_rollout({matrix2(1, 0, 0.5, 0.5), matrix2(0.5, 0.5, 0, 1)}) == matrix2(0.75, 0.25, 0.5, 0.5));
  // (Lower-triangular 2x2 stochastic matrices commute, so only this pair can detect a wrong order.)
  // Residual, lambda = 1/2: R(1) = [3/4 1/4; 0 1], R(2) = [1 0; 1/4 3/4],
  // R(2) R(1) = [3/4 1/4; 3/16 13/16].
  CHECK(maskpos::residual_rollout({matrix2(0.5, 0.5, 0, 1), matrix2(1, 0, 0.5, 0.5)}, 0.5) ==
        matrix2(0.75, 0.25, 3.0 / 16, 13.0 / 16));
}

TEST_CASE("two layers of uniform causal attention: the last row favours the first key") {
  // Row 2 of A^2 = (1/3)(row 0 + row 1 + row 2 of A) = (1/3 + 1/6 + 1/9, 1/6 + 1/9, 1/9)
  //              = (11/18, 5/18, 2/18): the rollout bias towards early tokens of Wu et al. (2025).
  const std::vector<Eigen::MatrixXd> attention(2, uniform_causal(3));
  const auto influence = maskpos::last_row_influence(maskpos::attention_rollout(attention));
  REQUIRE(influence.size() == 3);
  // A few roundings of numbers <= 1 per entry: 8 eps is ample.
  CHECK(std::abs(influence[0] - 11.0 / 18) <= 8 * kEps);
  CHECK(std::abs(influence[1] - 5.0 / 18) <= 8 * kEps);
  CHECK(std::abs(influence[2] - 2.0 / 18) <= 8 * kEps);

  // Residual-aware, lambda = 1/2, one layer: R = I/2 + A/2, last row (1/6, 1/6, 1/2 + 1/6).
  const auto residual = maskpos::last_row_influence(maskpos::residual_rollout({uniform_causal(3)}, 0.5));
  CHECK(std::abs(residual[0] - 1.0 / 6) <= 4 * kEps);
  CHECK(std::abs(residual[2] - 2.0 / 3) <= 4 * kEps);
}

TEST_CASE("rollouts of row-stochastic causal attention are lower-triangular and row-stochastic; NaN = 0") {
  std::vector<Eigen::MatrixXd> attention, with_nan;
  for (int t = 0; t < 4; ++t) {
    Eigen::MatrixXd a = Eigen::MatrixXd::Zero(6, 6);
    for (int i = 0; i < 6; ++i) {
      for (int j = 0; j <= i; ++j) a(i, j) = 1.0 + std::sin(1.0 + t + 2.0 * i + 3.0 * j) * 0.9;
      a.row(i) /= a.row(i).sum();
    }
    attention.push_back(a);
    Eigen::MatrixXd masked = a;
    for (int i = 0; i < 6; ++i)
      for (int j = i + 1; j < 6; ++j) masked(i, j) = kNaN;
    with_nan.push_back(masked);
  }
  for (double lambda : {0.25, 1.0}) {
    const auto rollout = maskpos::residual_rollout(attention, lambda);
    CHECK(rollout == maskpos::residual_rollout(with_nan, lambda));
    for (int i = 0; i < 6; ++i) {
      // Each of 4 layers adds at most ~6 roundings per entry of sums of at most 6 terms: 64 eps.
      CHECK(std::abs(rollout.row(i).sum() - 1) <= 64 * kEps);
      for (int j = i + 1; j < 6; ++j) CHECK(rollout(i, j) == 0);
    }
  }
}

TEST_CASE("rollout of a forward() trace: one layer on orthonormal tokens in closed form") {
  // Layer 1 on orthonormal tokens: scores are 1 on the diagonal and 0 below, so the causal softmax of
  // row 2 is (1, 1, e) / (e + 2).
  maskpos::DecoderConfig config;
  config.layers = 1;
  const auto trace = maskpos::forward<double>(config, Eigen::MatrixXd::Identity(3, 3));
  const auto influence = maskpos::last_row_influence(maskpos::attention_rollout(maskpos::attention_matrices(trace)));
  const double e = std::exp(1.0);
  // The decoder's softmax rounds a handful of times: 16 eps.
  CHECK(std::abs(influence[0] - 1 / (e + 2)) <= 16 * kEps);
  CHECK(std::abs(influence[1] - 1 / (e + 2)) <= 16 * kEps);
  CHECK(std::abs(influence[2] - e / (e + 2)) <= 16 * kEps);
}

TEST_CASE("rollout preconditions") {
  CHECK_THROWS_AS(maskpos::attention_rollout({}), std::invalid_argument);
  CHECK_THROWS_AS(maskpos::attention_rollout({Eigen::MatrixXd::Identity(2, 2), Eigen::MatrixXd::Identity(3, 3)}),
                  std::invalid_argument);
  CHECK_THROWS_AS(maskpos::attention_rollout({Eigen::MatrixXd::Zero(2, 3)}), std::invalid_argument);
  CHECK_THROWS_AS(maskpos::residual_rollout({Eigen::MatrixXd::Identity(2, 2)}, 1.5), std::invalid_argument);
  CHECK_THROWS_AS(maskpos::residual_rollout({Eigen::MatrixXd::Identity(2, 2)}, -0.1), std::invalid_argument);
  CHECK_THROWS_AS(maskpos::last_row_influence(Eigen::MatrixXd(0, 0)), std::invalid_argument);
}
