#include <maskpos/gram.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using maskpos::DecoderConfig;
using maskpos::Mask;
using maskpos::Norm;

namespace {

Eigen::MatrixXd random_tokens(int S, int d, unsigned seed, double offset = 0.0) {
  // std::mt19937 is fully specified by the standard; only its raw output is used here.
  std::mt19937 engine(seed);
  Eigen::MatrixXd tokens(S, d);
  for (int i = 0; i < S; ++i)
    for (int k = 0; k < d; ++k) tokens(i, k) = static_cast<double>(engine()) / 4294967296.0 - 0.5 + offset;
  return tokens;
}

std::vector<Mask> all_masks() {
  return {Mask::causal(),       Mask::bidirectional(), Mask::sliding_window(3),
          Mask::prefix_lm(4),   Mask::prefix_lm(1),    Mask::prefix_lm(0)};
}

// Largest |a - b| / (1 + |b|) over the visible entries (NaN in b marks a masked entry, which must be NaN in a too).
template <class A, class B>
double largest_relative_gap(const A& a, const B& b) {
  double gap = 0;
  for (Eigen::Index j = 0; j < b.cols(); ++j)
    for (Eigen::Index i = 0; i < b.rows(); ++i) {
      const double want = static_cast<double>(b(i, j)), got = static_cast<double>(a(i, j));
      if (std::isnan(want)) {
        if (!std::isnan(got)) return std::numeric_limits<double>::infinity();
        continue;
      }
      gap = std::max(gap, std::fabs(got - want) / (1 + std::fabs(want)));
    }
  return gap;
}

}  // namespace

TEMPLATE_TEST_CASE("Gram-space and feature-space propagation agree to rounding error for every norm, mask and scale",
                   "", float, double) {
  const int L = 4;
  const std::vector<maskpos::ScoreScale> scales = {maskpos::ScoreScale::one(), maskpos::ScoreScale::inv_sqrt_dim(),
                                                   maskpos::ScoreScale::inv_dim()};
  // d < S and d > S; an offset of 0.3 gives the rows of the second case a mean comparable to their
  // spread, so LayerNorm's centring (G - v v^T / d) is really exercised.
  for (const auto& [S, d, offset] : {std::tuple<int, int, double>{11, 8, 0.0}, {9, 40, 0.3}}) {
    const Eigen::MatrixXd tokens = random_tokens(S, d, 11u + static_cast<unsigned>(d), offset);
    for (const auto& mask : all_masks())
      for (Norm norm : {Norm::L2, Norm::LayerNorm, Norm::RMSNorm, Norm::None})
        for (const auto& scale : scales)
          for (bool residual : {true, false}) {
            DecoderConfig config;
            config.layers = L;
            config.norm = norm;
            config.scale = scale;
            config.mask = mask;
            config.residual = residual;
            INFO("S = " << S << ", d = " << d << ", mask " << mask.name() << ", norm " << maskpos::to_string(norm)
                        << ", scale " << scale.name() << ", residual " << residual);
            const auto features = maskpos::forward<TestType>(config, tokens);
            const auto grams = maskpos::forward_gram<TestType>(config, tokens);
            REQUIRE(grams.size() == features.size());
            // Both runs are backward-stable evaluations of the same L-layer map: each entry is a sum of at
            // most max(S, d) = 40 rounded products per step, a handful of steps per layer, and the softmax
            // passes relative errors on unamplified (scores are O(1) for L2, O(c d) <= 40 otherwise, where
            // a large score only sharpens the softmax). test_decoder.cpp bounds forward() against an exact
            // reference by 1e3 epsilons in the same setting; the two runs may err in opposite directions,
            // hence 2e3 epsilons, relative to 1 + |value|.
            const double tolerance = 2e3 * std::numeric_limits<TestType>::epsilon();
            for (int l = 0; l < L; ++l) {
              INFO("layer " << l + 1);
              const auto& feature = features[static_cast<std::size_t>(l)];
              const auto& gram = grams[static_cast<std::size_t>(l)];
              CHECK(largest_relative_gap(gram.scores, feature.scores) <= tolerance);
              CHECK(largest_relative_gap(gram.probs, feature.probs) <= tolerance);
              const Eigen::MatrixXd output = feature.output.template cast<double>();
              const Eigen::MatrixXd output_gram = output * output.transpose();
              // The output Gram grows like 2^l without a norm: compare relative to its largest entry.
              const double size = output_gram.cwiseAbs().maxCoeff();
              CHECK(largest_relative_gap(gram.gram.template cast<double>() / size, output_gram / size) <= tolerance);
            }
          }
  }
}

TEST_CASE("Gram space reproduces Fig. 1 from the identity Gram matrix") {
  DecoderConfig config;
  config.layers = 2;
  const maskpos::GramState<double> state{Eigen::MatrixXd::Identity(3, 3), {}, 3};
  const auto traces = maskpos::forward_gram<double>(config, state);
  // Closed forms of docs/theory.md (independent of the code): e = exp(1).
  const double e = std::exp(1.0);
  const double n1 = std::sqrt(1 + (1 + 2 * e) * (1 + 2 * e)), n2 = std::sqrt(2 + (2 + 2 * e) * (2 + 2 * e));
  const double tolerance = 64 * std::numeric_limits<double>::epsilon();  // a handful of O(1) operations
  CHECK(traces[1].scores(1, 0) == Approx(1 / n1).margin(tolerance));
  CHECK(traces[1].scores(2, 0) == Approx(1 / n2).margin(tolerance));
  CHECK(traces[1].scores(2, 1) == Approx((2 + 2 * e) / (n1 * n2)).margin(tolerance));
  CHECK(std::isnan(traces[1].scores(0, 1)));
  CHECK(traces[1].probs(0, 2) == 0.0);
  // Layer-1 output X(1) = A(1) + I: its Gram row 0 is (4, 2/(1+e), 2/(2+e)).
  CHECK(traces[0].gram(0, 0) == Approx(4.0).margin(tolerance));
  CHECK(traces[0].gram(1, 0) == Approx(2 / (1 + e)).margin(tolerance));
  CHECK(traces[0].gram(2, 0) == Approx(2 / (2 + e)).margin(tolerance));
}

TEST_CASE("LayerNorm in Gram space depends on the tokens only through G and v = X 1") {
  // Two token matrices with the same G and the same row sums v: X and X R, with R an orthogonal map
  // that fixes the all-ones direction (a reflection in a plane orthogonal to 1). Their LayerNorm
  // scores must coincide in feature space; Gram space sees the same inputs, so must give the same too.
  const int S = 6, d = 5;
  const Eigen::MatrixXd tokens = random_tokens(S, d, 3, 0.2);
  Eigen::VectorXd u(d);
  u << 1, -1, 0, 0, 0;  // orthogonal to 1
  u.normalize();
  const Eigen::MatrixXd reflection = Eigen::MatrixXd::Identity(d, d) - 2 * u * u.transpose();
  DecoderConfig config;
  config.norm = Norm::LayerNorm;
  config.scale = maskpos::ScoreScale::inv_dim();
  const auto direct = maskpos::forward<double>(config, tokens);
  const auto reflected = maskpos::forward<double>(config, tokens * reflection);
  const auto gram = maskpos::forward_gram<double>(config, tokens);
  const double tolerance = 2e3 * std::numeric_limits<double>::epsilon();  // as in the test above
  for (int l = 0; l < 4; ++l) {
    CHECK(largest_relative_gap(reflected[static_cast<std::size_t>(l)].scores, direct[static_cast<std::size_t>(l)].scores) <= tolerance);
    CHECK(largest_relative_gap(gram[static_cast<std::size_t>(l)].scores, direct[static_cast<std::size_t>(l)].scores) <= tolerance);
  }
  // The centring matters: dropping v (treating the rows as centred) changes the result.
  maskpos::GramState<double> state = maskpos::GramState<double>::from_tokens(tokens);
  state.row_sums.setZero();
  const auto wrong = maskpos::forward_gram<double>(config, state);
  CHECK(largest_relative_gap(wrong[1].scores, direct[1].scores) > 1e-3);
}

TEST_CASE("bad Gram-space input raises std::invalid_argument naming the parameter") {
  DecoderConfig config;
  const auto message_of = [&](const maskpos::GramState<double>& state, const DecoderConfig& used) {
    try {
      maskpos::forward_gram<double>(used, state);
    } catch (const std::invalid_argument& error) {
      return std::string(error.what());
    }
    return std::string("no exception");
  };
  const Eigen::MatrixXd identity = Eigen::MatrixXd::Identity(4, 4);
  CHECK_THAT(message_of({Eigen::MatrixXd::Identity(4, 3), {}, 4}, config), Catch::Contains("gram shape"));
  Eigen::MatrixXd asymmetric = identity;
  asymmetric(2, 1) = 0.5;
  CHECK_THAT(message_of({asymmetric, {}, 4}, config), Catch::Contains("symmetric"));
  Eigen::MatrixXd not_finite = identity;
  not_finite(1, 1) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THAT(message_of({not_finite, {}, 4}, config), Catch::Contains("gram(1, 1)"));
  Eigen::MatrixXd negative = identity;
  negative(3, 3) = -1;
  CHECK_THAT(message_of({negative, {}, 4}, config), Catch::Contains("non-negative diagonal"));
  CHECK_THAT(message_of({identity, {}, 0}, config), Catch::Contains("dim d"));
  DecoderConfig layer_norm;
  layer_norm.norm = Norm::LayerNorm;
  CHECK_THAT(message_of({identity, {}, 4}, layer_norm), Catch::Contains("row_sums length"));
  DecoderConfig rope;
  rope.rope = maskpos::RopeConfig{};
  CHECK_THAT(message_of({identity, {}, 4}, rope), Catch::Contains("config.rope"));
  Eigen::MatrixXd tokens = Eigen::MatrixXd::Ones(3, 2);
  tokens(0, 1) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(maskpos::forward_gram<double>(config, tokens), std::invalid_argument);
}
