#include <maskpos/monte_carlo.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "reference.hpp"

using maskpos::DecoderConfig;
using maskpos::InputSpec;
using maskpos::MonteCarloOptions;

namespace {

bool same_bits(const maskpos::MonteCarloResult& a, const maskpos::MonteCarloResult& b) {
  auto equal = [](const Eigen::MatrixXd& x, const Eigen::MatrixXd& y) {
    // NaN marks masked entries: compare those by position, the rest by value.
    return x.rows() == y.rows() && ((x.array() == y.array()) || (x.array().isNaN() && y.array().isNaN())).all();
  };
  if (a.samples != b.samples) return false;
  for (std::size_t l = 0; l < a.mean_scores.size(); ++l)
    if (!equal(a.mean_scores[l], b.mean_scores[l]) || !equal(a.mean_probs[l], b.mean_probs[l]) ||
        !equal(a.stderr_scores[l], b.stderr_scores[l]))
      return false;
  return true;
}

MonteCarloOptions options_with(std::int64_t samples, int threads, std::uint64_t first = 0,
                               maskpos::MonteCarloPath path = maskpos::MonteCarloPath::Auto) {
  MonteCarloOptions options;
  options.path = path;
  options.samples = samples;
  options.threads = threads;
  options.seed = 42;
  options.first_sample = first;
  return options;
}

}  // namespace

TEMPLATE_TEST_CASE("same seed, same bits for 1, 2 and 4 threads and on a repeated run", "", float, double) {
  DecoderConfig config;
  config.layers = 3;
  const auto inputs = InputSpec::gaussian(12, 16, 0.3);
  for (auto path : {maskpos::MonteCarloPath::Direct, maskpos::MonteCarloPath::Gram, maskpos::MonteCarloPath::Triangular}) {
    const auto one = maskpos::monte_carlo<TestType>(config, inputs, options_with(300, 1, 0, path));
    CHECK(same_bits(one, maskpos::monte_carlo<TestType>(config, inputs, options_with(300, 2, 0, path))));
    CHECK(same_bits(one, maskpos::monte_carlo<TestType>(config, inputs, options_with(300, 4, 0, path))));
    CHECK(same_bits(one, maskpos::monte_carlo<TestType>(config, inputs, options_with(300, 1, 0, path))));
    CHECK(one.out_of_range == 0);
  }
}

TEST_CASE("ExactSum's float grid: the largest admissible integers add up exactly across its flushes") {
  // Bound 1 puts the float grid at 2^27 (kFloatBits): every admissible integer has |value| <= 2^27.
  // 1000 samples of +2^27, -2^27 and 2^27 - 1 per entry must total exactly 1000 times each (an
  // int32 block that went longer than 15 additions between flushes would wrap past 2^31 - 1). The
  // totals are integers times 2^-27, exact in long double.
  using maskpos::detail::ExactSum;
  ExactSum sum(3, 1.0, maskpos::detail::SumGrid::Float);
  REQUIRE(sum.scale() == std::ldexp(1.0, ExactSum::kFloatBits));
  REQUIRE(sum.limit() == std::ldexp(1.0, ExactSum::kFloatBits));
  const double largest = sum.limit();
  constexpr int kSamples = 1000;
  for (int b = 0; b < kSamples; ++b) {
    sum.add_integer(0, largest);
    sum.add_integer(1, -largest);
    sum.add_integer(2, largest - 1);
    sum.commit();
  }
  CHECK(sum.total(0) == static_cast<long double>(kSamples));
  CHECK(sum.total(1) == -static_cast<long double>(kSamples));
  CHECK(sum.total(2) == kSamples * (1.0L - std::ldexp(1.0L, -ExactSum::kFloatBits)));
  CHECK(sum.count() == kSamples);
}

TEST_CASE("merged half-runs equal one full run, bit for bit, for any split") {
  DecoderConfig config;
  config.layers = 2;
  config.norm = maskpos::Norm::LayerNorm;
  config.scale = maskpos::ScoreScale::inv_dim();
  const auto inputs = InputSpec::gaussian(10, 12, 0.2);
  for (auto path : {maskpos::MonteCarloPath::Direct, maskpos::MonteCarloPath::Gram, maskpos::MonteCarloPath::Triangular}) {
    const auto full = maskpos::monte_carlo<float>(config, inputs, options_with(500, 2, 0, path));
    for (std::int64_t split : {250, 137, 1}) {
      auto first = maskpos::monte_carlo_accumulate<float>(config, inputs, options_with(split, 1, 0, path));
      const auto second = maskpos::monte_carlo_accumulate<float>(config, inputs, options_with(500 - split, 2, split, path));
      first.merge(second);
      CHECK(same_bits(full, first.result()));
    }
  }
}

TEST_CASE("the Monte Carlo mean is the mean of the independent reference over the same inputs") {
  DecoderConfig config;
  config.layers = 3;
  config.mask = maskpos::Mask::sliding_window(4);
  const auto inputs = InputSpec::gaussian(7, 5, 0.4);
  const int B = 64;
  // Direct: the path that averages over exactly InputGenerator::generate's tokens.
  const auto result = maskpos::monte_carlo<double>(config, inputs, options_with(B, 2, 0, maskpos::MonteCarloPath::Direct));
  maskpos::InputGenerator generator(inputs, 42);
  std::vector<Eigen::MatrixXd> sum(3, Eigen::MatrixXd::Zero(7, 7));
  for (int b = 0; b < B; ++b) {
    Eigen::MatrixXd tokens;
    generator.generate(static_cast<std::uint64_t>(b), tokens);
    reference::Rows rows(7, std::vector<double>(5));
    for (int i = 0; i < 7; ++i)
      for (int k = 0; k < 5; ++k) rows[i][k] = tokens(i, k);
    const auto layers = reference::decoder(rows, 3, "l2", 1.0, true, [](int i, int j) { return j <= i && j > i - 4; });
    for (int l = 0; l < 3; ++l)
      for (int i = 0; i < 7; ++i)
        for (int j = 0; j < 7; ++j) sum[l](i, j) += layers[l].scores[i][j];
  }
  for (int l = 0; l < 3; ++l)
    for (int i = 0; i < 7; ++i)
      for (int j = 0; j < 7; ++j) {
        const double want = sum[l](i, j) / B;
        if (std::isnan(want)) {
          CHECK(std::isnan(result.mean_scores[l](i, j)));
        } else {
          // double forward pass (~1e3 eps) plus the accumulator's grid 2^-40 per value.
          CHECK(result.mean_scores[l](i, j) == Approx(want).margin(1e-11));
        }
      }
}

TEMPLATE_TEST_CASE("both propagation paths give the mean of the independent reference for every norm, mask and residual",
                   "", float, double) {
  // S = 7 fits one or two SIMD row blocks with padding; S = 19 spans several blocks (the Gram
  // path's symmetrisation mirrors the diagonal blocks and transposes the others).
  const int S = GENERATE(7, 19);
  const int d = 6, L = 3, B = 6;
  const std::vector<std::pair<maskpos::Norm, std::string>> norms = {{maskpos::Norm::L2, "l2"},
                                                                     {maskpos::Norm::LayerNorm, "layernorm"},
                                                                     {maskpos::Norm::RMSNorm, "rmsnorm"},
                                                                     {maskpos::Norm::None, "none"}};
  const std::vector<std::pair<maskpos::Mask, std::function<bool(int, int)>>> masks = {
      {maskpos::Mask::causal(), [](int i, int j) { return j <= i; }},
      {maskpos::Mask::bidirectional(), [](int, int) { return true; }},
      {maskpos::Mask::sliding_window(3), [](int i, int j) { return j <= i && j > i - 3; }},
      {maskpos::Mask::prefix_lm(4), [](int i, int j) { return j <= i || j < 4; }}};
  const auto inputs = InputSpec::gaussian(S, d, 0.3);
  maskpos::InputGenerator generator(inputs, 42);
  std::vector<reference::Rows> samples;
  for (int b = 0; b < B; ++b) {
    Eigen::MatrixXd tokens;
    generator.generate(static_cast<std::uint64_t>(b), tokens);
    reference::Rows rows(S, std::vector<double>(d));
    for (int i = 0; i < S; ++i)
      for (int k = 0; k < d; ++k) rows[i][k] = tokens(i, k);
    samples.push_back(rows);
  }
  for (const auto& [norm, norm_name] : norms)
    for (const auto& [mask, visible] : masks)
      for (bool residual : {true, false}) {
        DecoderConfig config;
        config.layers = L;
        config.norm = norm;
        config.mask = mask;
        config.residual = residual;
        config.scale = maskpos::ScoreScale::inv_sqrt_dim();
        std::vector<Eigen::MatrixXd> want(L, Eigen::MatrixXd::Zero(S, S));
        for (const auto& rows : samples) {
          const auto layers = reference::decoder(rows, L, norm_name, 1 / std::sqrt(double(d)), residual, visible);
          for (int l = 0; l < L; ++l)
            for (int i = 0; i < S; ++i)
              for (int j = 0; j < S; ++j) want[l](i, j) += layers[l].scores[i][j] / B;
        }
        for (auto path : {maskpos::MonteCarloPath::Direct, maskpos::MonteCarloPath::Gram}) {
          const auto result = maskpos::monte_carlo<TestType>(config, inputs, options_with(B, 2, 0, path));
          for (int l = 0; l < L; ++l)
            for (int i = 0; i < S; ++i)
              for (int j = 0; j < S; ++j) {
                if (!visible(i, j)) {
                  CHECK(std::isnan(result.mean_scores[l](i, j)));
                  continue;
                }
                // 1e3 double epsilons per value as in test_decoder, times 100 for the Gram path's
                // cancellation in G - r r^T / d and the growth of unnormalised rows (Norm::None,
                // up to 2^L); the accumulator's grid adds at most 2^-42 (double) or 2^-27 (float) of
                // the bound, both far below. The compute type's epsilon sets the scale.
                const double tolerance = 1e5 * std::numeric_limits<TestType>::epsilon() * (1 + std::fabs(want[l](i, j)));
                CHECK(result.mean_scores[l](i, j) == Approx(want[l](i, j)).margin(tolerance));
              }
        }
      }
}

TEST_CASE("the standard error shrinks like 1/sqrt(B)") {
  DecoderConfig config;
  config.layers = 2;
  const auto inputs = InputSpec::gaussian(8, 16, 0.2);
  const auto small = maskpos::monte_carlo<float>(config, inputs, options_with(1000, 2));
  const auto large = maskpos::monte_carlo<float>(config, inputs, options_with(4000, 2));
  // Expected ratio sqrt(4000/1000) = 2. The sample standard deviation of B Gaussian-ish values has a
  // relative error of about 1/sqrt(2B) (2.2% at B = 1000), and the tails of scores are lighter than
  // Gaussian; the median over the 28 off-diagonal entries of layer 2 is within 10% with a wide margin.
  std::vector<double> ratios;
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < i; ++j) ratios.push_back(small.stderr_scores[1](i, j) / large.stderr_scores[1](i, j));
  std::nth_element(ratios.begin(), ratios.begin() + static_cast<long>(ratios.size() / 2), ratios.end());
  CHECK(ratios[ratios.size() / 2] == Approx(2.0).margin(0.2));
}

TEST_CASE("causal mask: positional information appears from layer 2 on, not in layer 1") {
  DecoderConfig config;
  config.layers = 3;
  const int S = 12;
  const auto inputs = InputSpec::gaussian(S, 32, 0.2);
  const auto result = maskpos::monte_carlo<float>(config, inputs, options_with(20000, 2));
  // Reversing the order maps the pair (i, j) to (S-1-j, S-1-i), at the same distance. The tokens are
  // exchangeable, so a position-free layer gives equal means for both (layer 1 scores are plain
  // cosines of the inputs). Under the null the difference of two estimates is within 5 combined
  // standard errors (the max over 66 pairs of |N(0,1)| exceeds 5 with probability < 4e-5).
  auto largest_z = [&](int layer) {
    double z = 0;
    for (int i = 0; i < S; ++i)
      for (int j = 0; j < i; ++j) {
        const int ri = S - 1 - j, rj = S - 1 - i;
        const double diff = result.mean_scores[layer](i, j) - result.mean_scores[layer](ri, rj);
        const double se = std::hypot(result.stderr_scores[layer](i, j), result.stderr_scores[layer](ri, rj));
        z = std::max(z, std::fabs(diff) / se);
      }
    return z;
  };
  CHECK(largest_z(0) < 5.0);
  CHECK(largest_z(1) > 20.0);
  CHECK(largest_z(2) > 20.0);
}

TEST_CASE("bad Monte Carlo input raises std::invalid_argument naming the parameter") {
  DecoderConfig config;
  auto fails_with = [&](const DecoderConfig& c, const InputSpec& in, const MonteCarloOptions& o, const std::string& needle) {
    try {
      maskpos::monte_carlo<float>(c, in, o);
      FAIL("no exception for " << needle);
    } catch (const std::invalid_argument& error) {
      CHECK_THAT(error.what(), Catch::Contains(needle));
    }
  };
  const auto ok = options_with(10, 1);
  fails_with(config, InputSpec::gaussian(0, 8, 0.0), ok, "seq_len S");
  fails_with(config, InputSpec::gaussian(8, 0, 0.0), ok, "dim d");
  fails_with(config, InputSpec::gaussian(8, 8, 1.5), ok, "alpha");
  fails_with(config, InputSpec::gaussian(8, 8, -0.1), ok, "alpha");
  fails_with(config, InputSpec::orthonormal(8, 4), ok, "dim d");
  DecoderConfig window = config;
  window.mask = maskpos::Mask::sliding_window(0);
  fails_with(window, InputSpec::gaussian(8, 8, 0.0), ok, "mask window w");
  DecoderConfig prefix = config;
  prefix.mask = maskpos::Mask::prefix_lm(9);
  fails_with(prefix, InputSpec::gaussian(8, 8, 0.0), ok, "mask prefix P");
  fails_with(config, InputSpec::gaussian(8, 8, 0.0), options_with(10, -1), "threads");
  fails_with(config, InputSpec::gaussian(8, 8, 0.0), options_with(0, 1), "samples B");
}

TEMPLATE_TEST_CASE("the triangular path agrees with the direct path within Monte Carlo error", "", float, double) {
  // Two independent estimates (different seeds) of the same means: their difference over the combined
  // standard error is N(0, 1) up to the error of the standard errors (relative 1/sqrt(2B) = 0.5% at
  // B = 20000). Each check allows 5: over the ~10^4 checks below a false alarm has probability < 6e-3.
  // Configurations: the paper's (S = 50, d = 64), a trapezoid frame (S = 24 > d = 12), LayerNorm
  // with both scales, RMSNorm and no norm, no residual, and the masks with and without later keys.
  struct Case {
    int S, d;
    double alpha;
    maskpos::Norm norm;
    maskpos::ScoreScale scale;
    maskpos::Mask mask;
    bool residual;
    std::int64_t samples;
  };
  using maskpos::Mask;
  using maskpos::Norm;
  using maskpos::ScoreScale;
  const std::vector<Case> cases = {
      {50, 64, 0.2, Norm::L2, ScoreScale::one(), Mask::causal(), true, 20000},
      {24, 12, 0.0, Norm::L2, ScoreScale::one(), Mask::causal(), true, 20000},
      {24, 12, 0.5, Norm::LayerNorm, ScoreScale::inv_dim(), Mask::causal(), true, 20000},
      {20, 32, 0.2, Norm::LayerNorm, ScoreScale::inv_sqrt_dim(), Mask::sliding_window(5), true, 20000},
      {20, 16, 0.3, Norm::RMSNorm, ScoreScale::inv_dim(), Mask::bidirectional(), true, 20000},
      {20, 16, 0.3, Norm::None, ScoreScale::inv_dim(), Mask::prefix_lm(6), false, 20000},
      {16, 8, 1.0, Norm::L2, ScoreScale::one(), Mask::causal(), true, 2000}};
  for (const auto& c : cases) {
    DecoderConfig config;
    config.layers = 4;
    config.norm = c.norm;
    config.scale = c.scale;
    config.mask = c.mask;
    config.residual = c.residual;
    const auto inputs = InputSpec::gaussian(c.S, c.d, c.alpha);
    auto options = options_with(c.samples, 2, 0, maskpos::MonteCarloPath::Direct);
    const auto direct = maskpos::monte_carlo<TestType>(config, inputs, options);
    options.path = maskpos::MonteCarloPath::Triangular;
    options.seed = 43;
    const auto framed = maskpos::monte_carlo<TestType>(config, inputs, options);
    CHECK(framed.out_of_range == 0);
    double largest_z = 0;
    for (int l = 0; l < 4; ++l)
      for (int i = 0; i < c.S; ++i)
        for (int j = 0; j < c.S; ++j) {
          if (!c.mask.visible(i, j)) continue;
          // Entries constant in every sample (diagonal scores under a norm) have zero standard error:
          // there the paths differ by rounding only, a few tens of epsilons of the compute type.
          const double rounding = 64 * std::numeric_limits<TestType>::epsilon() * (1 + std::fabs(direct.mean_scores[l](i, j)));
          const double spread =
              std::max(std::hypot(direct.stderr_scores[l](i, j), framed.stderr_scores[l](i, j)), rounding);
          const double difference = framed.mean_scores[l](i, j) - direct.mean_scores[l](i, j);
          // alpha = 1: every token is the same, each score is a constant (zero spread up to rounding).
          if (c.alpha == 1.0) CHECK(std::fabs(difference) < 1e3 * std::numeric_limits<TestType>::epsilon());
          else largest_z = std::max(largest_z, std::fabs(difference) / spread);
        }
    INFO("S " << c.S << ", d " << c.d << ", alpha " << c.alpha << ", norm " << maskpos::to_string(c.norm));
    CHECK(largest_z < 5);
    WARN("largest |z| " << largest_z);
  }
}

TEST_CASE("Auto takes the triangular frame for Gaussian inputs without RoPE, and the frame refuses the rest") {
  DecoderConfig config;
  config.layers = 2;
  const auto inputs = InputSpec::gaussian(9, 16, 0.2);
  const auto automatic = maskpos::monte_carlo<float>(config, inputs, options_with(200, 2));
  CHECK(same_bits(automatic, maskpos::monte_carlo<float>(config, inputs, options_with(200, 2, 0, maskpos::MonteCarloPath::Triangular))));
  CHECK_FALSE(same_bits(automatic, maskpos::monte_carlo<float>(config, inputs, options_with(200, 2, 0, maskpos::MonteCarloPath::Direct))));
  const auto triangular = options_with(10, 1, 0, maskpos::MonteCarloPath::Triangular);
  CHECK_THROWS_WITH(maskpos::monte_carlo<float>(config, InputSpec::orthonormal(9, 16), triangular),
                    Catch::Contains("Monte Carlo path") && Catch::Contains("gaussian inputs"));
  // d = 1 under LayerNorm: nothing is left orthogonal to 1, every token normalises to 0 and every score is 0.
  config.norm = maskpos::Norm::LayerNorm;
  const auto flat = maskpos::monte_carlo<float>(config, InputSpec::gaussian(5, 1, 0.3), options_with(50, 2, 0, maskpos::MonteCarloPath::Triangular));
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j <= i; ++j) CHECK(flat.mean_scores[1](i, j) == 0.0);
  config.norm = maskpos::Norm::L2;
  config.rope = maskpos::RopeConfig{};
  CHECK_THROWS_WITH(maskpos::monte_carlo<float>(config, inputs, triangular),
                    Catch::Contains("Monte Carlo path") && Catch::Contains("no RoPE"));
}
