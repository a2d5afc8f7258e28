// Cross-cutting robustness tests (issue 9, docs/reliability.md): every failure loud, every success
// reproducible. Validation messages, degenerate rows, masks, softmax range, determinism across
// thread counts and repeated runs for every method, float against double within a derived bound,
// and the command's memory guard.
#include <maskpos/analysis.hpp>
#include <maskpos/decoder.hpp>
#include <maskpos/gram.hpp>
#include <maskpos/inputs.hpp>
#include <maskpos/mask.hpp>
#include <maskpos/mean_field.hpp>
#include <maskpos/monte_carlo.hpp>
#include <maskpos/normalization.hpp>
#include <maskpos/npy.hpp>

#include <catch2/catch.hpp>

#include "reference.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using maskpos::Index;
using Catch::Matchers::Contains;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The message of the std::invalid_argument that `call` throws ("" when it throws nothing).
std::string invalid_argument_message(const std::function<void()>& call) {
  try {
    call();
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
  return "";
}

// Bitwise equality of two matrices (NaN entries included: masked entries are the same quiet NaN).
template <class Scalar>
bool same_bits(const maskpos::Matrix<Scalar>& a, const maskpos::Matrix<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<std::size_t>(a.size())) == 0;
}
template <class Scalar>
bool same_bits(const std::vector<maskpos::Matrix<Scalar>>& a, const std::vector<maskpos::Matrix<Scalar>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t l = 0; l < a.size(); ++l)
    if (!same_bits(a[l], b[l])) return false;
  return true;
}

// Deterministic S x d tokens with entries in [-1, 1] (no library code involved).
Eigen::MatrixXd lattice_tokens(Index S, Index d) {
  Eigen::MatrixXd x(S, d);
  for (Index i = 0; i < S; ++i)
    for (Index j = 0; j < d; ++j) x(i, j) = std::sin(0.7 * static_cast<double>(i * d + j) + 0.3);
  return x;
}

maskpos::DecoderConfig config_with(maskpos::Norm norm, maskpos::ScoreScale scale, maskpos::Mask mask, Index layers = 3) {
  maskpos::DecoderConfig config;
  config.norm = norm;
  config.scale = scale;
  config.mask = mask;
  config.layers = layers;
  return config;
}

// ---- validation -------------------------------------------------------------------------------

TEST_CASE("bad arguments: std::invalid_argument naming the parameter, the value and the rule") {
  struct Case {
    std::string what;
    std::function<void()> call;
    std::vector<std::string> needles;  // parameter, value, rule
  };
  const Eigen::MatrixXd tokens = lattice_tokens(4, 6);
  maskpos::DecoderConfig config;
  const std::vector<Case> cases = {
      {"layers", [&] { auto c = config; c.layers = 0; maskpos::forward<double>(c, tokens); }, {"layers L", "= 0", "L >= 1"}},
      {"norm_eps", [&] { auto c = config; c.norm_eps = -1; maskpos::forward<double>(c, tokens); }, {"norm_eps", "-1", "0 <= eps"}},
      {"norm_eps NaN", [&] { auto c = config; c.norm_eps = kNaN; maskpos::forward<double>(c, tokens); }, {"norm_eps", "nan", "eps"}},
      {"score scale", [&] { auto c = config; c.scale = maskpos::ScoreScale::custom(0); maskpos::forward<float>(c, tokens); },
       {"score scale", "= 0", "0 < c"}},
      {"score scale inf", [&] { auto c = config; c.scale = maskpos::ScoreScale::custom(kInf); maskpos::forward<float>(c, tokens); },
       {"score scale", "inf", "infinity"}},
      {"window", [&] { auto c = config; c.mask = maskpos::Mask::sliding_window(0); maskpos::forward<double>(c, tokens); },
       {"mask window w", "= 0", "w >= 1"}},
      {"prefix", [&] { auto c = config; c.mask = maskpos::Mask::prefix_lm(5); maskpos::forward<double>(c, tokens); },
       {"mask prefix P", "= 5", "P <= S = 4"}},
      {"empty tokens", [&] { maskpos::forward<double>(config, Eigen::MatrixXd(0, 3)); }, {"seq_len S", "= 0", "S >= 1"}},
      {"alpha", [&] { maskpos::InputSpec::gaussian(4, 8, 1.5).validate(); }, {"alpha", "1.5", "0 <= alpha <= 1"}},
      {"orthonormal", [&] { maskpos::InputSpec::orthonormal(8, 4).validate(); }, {"dim d", "= 4", "d >= S = 8"}},
      {"samples", [&] { maskpos::MonteCarloOptions o; o.samples = 0; maskpos::monte_carlo<float>(config, maskpos::InputSpec::gaussian(4, 8, 0), o); },
       {"samples B", "= 0", "B >= 1"}},
      {"threads", [&] { maskpos::MonteCarloOptions o; o.threads = -2; maskpos::monte_carlo<float>(config, maskpos::InputSpec::gaussian(4, 8, 0), o); },
       {"threads", "-2", "threads >= 0"}},
      {"gram shape", [&] { maskpos::MeanFieldInputs::gram(Eigen::MatrixXd::Identity(3, 4)); }, {"initial_gram shape", "3 x 4", "square"}},
      {"gram dim", [&] { maskpos::mean_field<double>(config, maskpos::MeanFieldInputs::alpha(4, 0.1), 0); }, {"dim d", "= 0", "d >= 1"}},
      {"gram rope", [&] { auto c = config; c.rope = maskpos::RopeConfig{}; maskpos::forward_gram<double>(c, tokens); },
       {"config.rope", "set", "empty"}},
      {"rope dim", [&] { auto c = config; c.rope = maskpos::RopeConfig{}; c.rope->rotary_dim = 3; maskpos::forward<double>(c, tokens); },
       {"rope rotary_dim r", "= 3", "r even"}},
  };
  for (const auto& c : cases) {
    const std::string message = invalid_argument_message(c.call);
    INFO(c.what << ": " << message);
    REQUIRE(!message.empty());
    CHECK(message.rfind("maskpos: ", 0) == 0);
    CHECK(message.find('\n') == std::string::npos);
    for (const auto& needle : c.needles) CHECK_THAT(message, Contains(needle));
  }
}

TEST_CASE("non-finite user tokens and Gram matrices are rejected at the first offending entry") {
  const Index S = 5, d = 4;
  maskpos::DecoderConfig config;
  config.layers = 2;
  // The message of every entry point that takes user tokens, and of every one that takes a Gram matrix.
  const auto token_messages = [&](const Eigen::MatrixXd& tokens) {
    return std::vector<std::string>{
        invalid_argument_message([&] { maskpos::forward<double>(config, tokens); }),
        invalid_argument_message([&] { maskpos::forward<float>(config, tokens); }),
        invalid_argument_message([&] { maskpos::forward_gram<double>(config, tokens); }),
        invalid_argument_message([&] { maskpos::InputSpec::user(tokens).validate(); }),
        invalid_argument_message([&] { maskpos::monte_carlo<float>(config, maskpos::InputSpec::user(tokens), {}); }),
        invalid_argument_message([&] { maskpos::monte_carlo<double>(config, maskpos::InputSpec::user(tokens), {}); })};
  };
  const auto gram_messages = [&](const Eigen::MatrixXd& gram) {
    return std::vector<std::string>{
        invalid_argument_message([&] { maskpos::MeanFieldInputs::gram(gram); }),
        invalid_argument_message([&] { maskpos::forward_gram<double>(config, maskpos::GramState<double>{gram, {}, d}); })};
  };
  for (const double bad : {kNaN, kInf, -kInf}) {
    // One offending entry: every entry point names exactly its position.
    Eigen::MatrixXd tokens = lattice_tokens(S, d);
    tokens(3, 2) = bad;
    const std::string value = maskpos::detail::to_text(bad);
    for (const auto& message : token_messages(tokens)) {
      INFO(message);
      CHECK_THAT(message, Contains("tokens(3, 2) = " + value));
      CHECK_THAT(message, Contains("finite"));
    }
    Eigen::MatrixXd gram = Eigen::MatrixXd::Identity(S, S);
    gram(4, 1) = bad;
    for (const auto& message : gram_messages(gram)) {
      INFO(message);
      CHECK_THAT(message, Contains("gram(4, 1) = " + value));
    }
  }
  // Several offending entries, placed so that a row-by-row and a column-by-column scan disagree:
  // every entry point reports the first in row order, (0, 3), as a reader lists a matrix (not (2, 0),
  // the first in Eigen's column-major storage).
  Eigen::MatrixXd tokens = lattice_tokens(S, d);
  Eigen::MatrixXd gram = Eigen::MatrixXd::Identity(S, S);
  for (auto* matrix : {&tokens, &gram}) {
    (*matrix)(0, 3) = kNaN;
    (*matrix)(2, 0) = kInf;
    (*matrix)(4, 1) = -kInf;
  }
  for (const auto& message : token_messages(tokens)) {
    INFO(message);
    CHECK_THAT(message, Contains("tokens(0, 3) = nan"));
  }
  for (const auto& message : gram_messages(gram)) {
    INFO(message);
    CHECK_THAT(message, Contains("gram(0, 3) = nan"));
  }
}

TEST_CASE("user tokens beyond the compute type's range: std::invalid_argument with the position and the allowed range") {
  const Index S = 4, d = 4;
  maskpos::DecoderConfig config;
  config.layers = 2;
  config.residual = false;  // layer 2 sees A Y only: the same for tokens of any scale under L2
  // 1e39 is finite in double but beyond float (max 3.4e38); 1e20 is a float, but a row holding it has
  // a squared norm of at least 1e40, beyond float too.
  for (const double huge : {1e39, 1e20}) {
    Eigen::MatrixXd tokens = lattice_tokens(S, d);
    tokens(1, 2) = huge;
    tokens(3, 0) = huge;
    const std::string value = maskpos::detail::to_text(huge);
    for (const auto& message :
         {invalid_argument_message([&] { maskpos::forward<float>(config, tokens); }),
          invalid_argument_message([&] { maskpos::forward_gram<float>(config, tokens); }),
          invalid_argument_message([&] { maskpos::monte_carlo<float>(config, maskpos::InputSpec::user(tokens), {}); })}) {
      INFO(message);
      CHECK(message.rfind("maskpos: tokens(1, 2) = " + value + ": must satisfy |x| <= ", 0) == 0);
      CHECK_THAT(message, Contains("float"));
    }
    // The same tokens are fine in double.
    const auto traces = maskpos::forward<double>(config, tokens);
    CHECK(traces.back().probs.allFinite());
  }
  // In double the squared norm overflows beyond 1.3e154 (sqrt of 1.8e308).
  Eigen::MatrixXd tokens = lattice_tokens(S, d);
  tokens(2, 3) = 1e160;
  CHECK_THAT(invalid_argument_message([&] { maskpos::forward<double>(config, tokens); }),
             Contains("tokens(2, 3) = 1e+160: must satisfy |x| <= ") && Contains("double"));
  // Inside the range, L2 does not see the scale: a row of 1e18 gives the scores of a row of 1 (its
  // squared norm 4e36 is a float).
  Eigen::MatrixXd ones = lattice_tokens(S, d);
  ones.row(1).setOnes();
  Eigen::MatrixXd large = ones;
  large.row(1) *= 1e18;
  const auto small_traces = maskpos::forward<float>(config, ones);
  const auto large_traces = maskpos::forward<float>(config, large);
  for (std::size_t l = 0; l < small_traces.size(); ++l) {
    CHECK(large_traces[l].probs.allFinite());
    CHECK((large_traces[l].probs - small_traces[l].probs).cwiseAbs().maxCoeff() <= 1e-6f);
  }
}

TEST_CASE("a score scale that the compute type cannot hold is rejected for that type") {
  const Eigen::MatrixXd tokens = lattice_tokens(4, 8);
  maskpos::DecoderConfig config;
  config.layers = 2;
  for (const double c : {1e300, 1e-300}) {
    // Finite and positive in double, but inf or 0 in float.
    config.scale = maskpos::ScoreScale::custom(c);
    const std::string value = maskpos::detail::to_text(c);
    for (const auto& message :
         {invalid_argument_message([&] { maskpos::forward<float>(config, tokens); }),
          invalid_argument_message([&] { maskpos::forward_gram<float>(config, tokens); }),
          invalid_argument_message([&] { maskpos::mean_field<float>(config, maskpos::MeanFieldInputs::alpha(4, 0.2), 8); }),
          invalid_argument_message([&] { maskpos::monte_carlo<float>(config, maskpos::InputSpec::gaussian(4, 8, 0.2), {}); })}) {
      INFO(message);
      CHECK(message.rfind("maskpos: score scale = " + value + ": must satisfy ", 0) == 0);
      CHECK_THAT(message, Contains("float"));
    }
    // In double the scale is fine for a single sequence: probabilities stay finite and sum to 1.
    const auto traces = maskpos::forward<double>(config, tokens);
    CHECK(traces.back().probs.allFinite());
    CHECK(((traces.back().probs.rowwise().sum().array() - 1).abs() <= 1e-15).all());
  }
  // LayerNorm rows have |y|^2 = d = 8: scaled scores reach 8 c, beyond float for c = 1e38 but not 1e37.
  config.norm = maskpos::Norm::LayerNorm;
  config.scale = maskpos::ScoreScale::custom(1e38);
  CHECK_THAT(invalid_argument_message([&] { maskpos::forward<float>(config, tokens); }),
             Contains("score scale = " + maskpos::detail::to_text(1e38) + ": must satisfy") && Contains("float"));
  config.scale = maskpos::ScoreScale::custom(1e37);
  CHECK(maskpos::forward<float>(config, tokens).back().probs.allFinite());
  // The Monte Carlo driver also sums squared scores in double: (1e300)^2 overflows it.
  config.norm = maskpos::Norm::L2;
  config.scale = maskpos::ScoreScale::custom(1e300);
  CHECK_THAT(invalid_argument_message([&] { maskpos::monte_carlo<double>(config, maskpos::InputSpec::gaussian(4, 8, 0.2), {}); }),
             Contains("score bound of layer 1 = " + maskpos::detail::to_text(1e300) + ": must satisfy") && Contains("double"));
}

TEST_CASE("user inputs whose tokens are not seq_len x dim are rejected") {
  maskpos::DecoderConfig config;
  for (const auto& [rows, cols] : std::vector<std::pair<Index, Index>>{{3, 4}, {5, 6}, {0, 0}}) {
    const maskpos::InputSpec spec{maskpos::InputKind::User, 5, 4, 0.0, lattice_tokens(rows, cols)};
    const std::string shape = "tokens shape = " + std::to_string(rows) + " x " + std::to_string(cols);
    for (const auto& message : {invalid_argument_message([&] { spec.validate(); }),
                                invalid_argument_message([&] { maskpos::monte_carlo<float>(config, spec, {}); })}) {
      INFO(message);
      CHECK_THAT(message, Contains(shape) && Contains("seq_len x dim = 5 x 4"));
    }
  }
  CHECK_NOTHROW(maskpos::InputSpec::user(lattice_tokens(5, 4)).validate());
}

TEST_CASE("empty .npy shapes cost neither memory nor time (found by fuzz_npy)") {
  // shape (2^40, 0, 3): no data bytes, but 2^40 matrix objects would need 26 TB.
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776, 0, 3), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::vector<std::uint8_t> bytes = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<std::uint8_t>(header.size()), 0};
  bytes.insert(bytes.end(), header.begin(), header.end());
  const maskpos::NpyArray array = maskpos::parse_npy(bytes.data(), bytes.size(), "stack.npy");
  CHECK(array.data.empty());
  CHECK_THROWS_WITH(maskpos::npy_to_matrices(array, "stack.npy"),
                    Contains("stack.npy") && Contains("a stack of empty matrices") && Contains("(1099511627776, 0, 3)"));
  // shape (2^39, 0): a 2-D matrix without columns comes back at once (no loop over its 2^39 rows).
  header = "{'descr': '<f8', 'fortran_order': False, 'shape': (549755813888, 0), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  bytes = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<std::uint8_t>(header.size()), 0};
  bytes.insert(bytes.end(), header.begin(), header.end());
  const auto tall = maskpos::npy_to_matrices(maskpos::parse_npy(bytes.data(), bytes.size(), "tall.npy"), "tall.npy");
  REQUIRE(tall.size() == 1);
  CHECK(tall[0].rows() == 549755813888);
  CHECK(tall[0].cols() == 0);
  // A hand-made NpyArray whose data does not fill its shape is refused, not read past its end.
  maskpos::NpyArray short_array;
  short_array.shape = {3, 4};
  short_array.data.assign(11, 1.0);
  CHECK_THROWS_WITH(maskpos::npy_to_matrices(short_array, "short"), Contains("short") && Contains("11 values"));
  short_array.shape = {2, 3, 2};
  short_array.data.assign(13, 1.0);
  CHECK_THROWS_WITH(maskpos::npy_to_matrices(short_array, "short"), Contains("13 values"));
  // A 2-D empty matrix is still returned as such.
  maskpos::NpyArray empty;
  empty.shape = {0, 3};
  REQUIRE(maskpos::npy_to_matrices(empty).size() == 1);
  CHECK(maskpos::npy_to_matrices(empty)[0].cols() == 3);
}

TEST_CASE("analysis of a non-square or empty score matrix: std::invalid_argument or an empty result, never out of bounds") {
  const Eigen::MatrixXd wide = Eigen::MatrixXd::Ones(3, 5);
  for (const auto& message : {invalid_argument_message([&] { maskpos::diagonal_means(wide); }),
                              invalid_argument_message([&] { maskpos::diagonal_normalize(wide); }),
                              invalid_argument_message([&] { maskpos::non_relative_fraction(wide); }),
                              invalid_argument_message([&] { maskpos::score_metrics(wide); })}) {
    INFO(message);
    CHECK_THAT(message, Contains("scores size = 3x5") && Contains("a square matrix"));
  }
  const Eigen::MatrixXd empty(0, 0);
  CHECK(maskpos::diagonal_means(empty).empty());
  CHECK(maskpos::diagonal_normalize(empty).size() == 0);
  CHECK(std::isnan(maskpos::non_relative_fraction(empty)));
  CHECK(std::isnan(maskpos::score_metrics(empty).locality));
}

// ---- degenerate rows ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("a zero row under L2 and a constant row under LayerNorm map to the zero row",
                   "", float, double) {
  using Scalar = TestType;
  // Rows: zero, constant 3 (exactly representable, so the mean is exact), and a regular row.
  maskpos::Matrix<Scalar> tokens(3, 4);
  tokens << 0, 0, 0, 0, 3, 3, 3, 3, 1, -2, 0.5, 4;
  for (const double eps : {0.0, 1e-12, 1e-5}) {
    INFO("eps = " << eps);
    maskpos::Matrix<Scalar> out(3, 4);
    maskpos::normalize_rows<Scalar>(tokens, out, maskpos::Norm::L2, eps);
    CHECK(out.row(0).isZero(0));
    CHECK(std::abs(out.row(2).norm() - 1) <= 8 * std::numeric_limits<Scalar>::epsilon());  // unit row, rounding
    maskpos::normalize_rows<Scalar>(tokens, out, maskpos::Norm::LayerNorm, eps);
    CHECK(out.row(0).isZero(0));
    CHECK(out.row(1).isZero(0));
    CHECK(out.allFinite());
    maskpos::normalize_rows<Scalar>(tokens, out, maskpos::Norm::RMSNorm, eps);
    CHECK(out.row(0).isZero(0));
    CHECK(out.allFinite());
  }
  // Through the decoder and the Gram engine with the default eps (eps = 0: the next test): a zero token
  // scores 0 and everything stays finite.
  for (const maskpos::Norm norm : {maskpos::Norm::L2, maskpos::Norm::LayerNorm, maskpos::Norm::RMSNorm}) {
    auto config = config_with(norm, maskpos::ScoreScale::one(), maskpos::Mask::causal(), 2);
    config.norm_eps = 1e-12;
    config.residual = false;  // keep the zero row zero in layer 2 as well
    const maskpos::Matrix<double> input = tokens.template cast<double>();
    const auto traces = maskpos::forward<Scalar>(config, input);
    const auto grams = maskpos::forward_gram<Scalar>(config, input);
    for (std::size_t l = 0; l < traces.size(); ++l) {
      INFO("norm " << maskpos::to_string(norm) << ", layer " << l + 1);
      CHECK(traces[l].probs.allFinite());
      CHECK(grams[l].probs.allFinite());
      CHECK((traces[l].scores.array().isFinite() || traces[l].scores.array().isNaN()).all());
      // Row 0 sees only itself (causal): a zero row scores 0 against itself.
      CHECK(traces[l].scores(0, 0) == 0);
      CHECK(grams[l].scores(0, 0) == 0);
    }
  }
}

TEMPLATE_TEST_CASE("norm_eps = 0: zero and constant rows map to the zero row in every engine, as in the reference",
                   "", float, double) {
  using Scalar = TestType;
  // Row 0 is zero; under the causal mask with the residual it stays zero in every layer (it sees only
  // itself, and its normalised row is 0). Row 2 is constant in layer 1. d = 8 is a power of two, so the
  // mean and 1/d are exact and the constant row centres to exactly 0 in every engine. The tokens are
  // float-representable, so both precisions see the same input.
  const Index S = 5, d = 8, L = 3;
  Eigen::MatrixXd tokens = lattice_tokens(S, d).cast<float>().cast<double>();
  tokens.row(0).setZero();
  tokens.row(2).setConstant(2.0);
  reference::Rows rows(static_cast<std::size_t>(S), std::vector<double>(static_cast<std::size_t>(d)));
  for (Index i = 0; i < S; ++i)
    for (Index k = 0; k < d; ++k) rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)] = tokens(i, k);
  // Scores in [-1, 1] for every norm (c = 1 for unit rows, 1/d for rows of norm sqrt(d)).
  const double tolerance = std::is_same_v<Scalar, float> ? 2e-5 : 1e-12;
  for (const auto& [norm, name] : std::vector<std::pair<maskpos::Norm, std::string>>{
           {maskpos::Norm::L2, "l2"}, {maskpos::Norm::LayerNorm, "layernorm"}, {maskpos::Norm::RMSNorm, "rmsnorm"}}) {
    auto config = config_with(norm, norm == maskpos::Norm::L2 ? maskpos::ScoreScale::one() : maskpos::ScoreScale::inv_dim(),
                              maskpos::Mask::causal(), L);
    config.norm_eps = 0;
    // The independent reference (tests/reference.hpp) with eps = 1e-300: no regular row notices so small
    // an eps, and it divides a degenerate row's zeros by sqrt(1e-300) > 0, i.e. maps it to the zero row.
    const auto expected = reference::decoder(rows, static_cast<int>(L), name, config.scale.factor(d), true,
                                             [](int i, int j) { return j <= i; }, 1e-300);
    const auto traces = maskpos::forward<Scalar>(config, tokens);
    const auto grams = maskpos::forward_gram<Scalar>(config, tokens);
    // Monte Carlo on both paths: every sample is these tokens, so the means are their scores.
    std::vector<maskpos::MonteCarloResult> runs;
    for (const auto path : {maskpos::MonteCarloPath::Direct, maskpos::MonteCarloPath::Gram}) {
      maskpos::MonteCarloOptions options;
      options.samples = 3;
      options.threads = 1;
      options.path = path;
      runs.push_back(maskpos::monte_carlo<Scalar>(config, maskpos::InputSpec::user(tokens), options));
      CHECK(runs.back().out_of_range == 0);
    }
    for (Index l = 0; l < L; ++l) {
      const auto& want = expected[static_cast<std::size_t>(l)];
      const std::size_t layer = static_cast<std::size_t>(l);
      INFO("norm " << name << ", layer " << l + 1);
      // A zero normalised row scores exactly 0 against itself.
      CHECK(traces[layer].scores(0, 0) == 0);
      CHECK(grams[layer].scores(0, 0) == 0);
      for (Index i = 0; i < S; ++i)
        for (Index j = 0; j <= i; ++j) {
          const double score = want.scores[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
          const double prob = want.probs[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
          INFO("(" << i << ", " << j << "): reference score " << score << ", probability " << prob);
          CHECK(std::abs(static_cast<double>(traces[layer].scores(i, j)) - score) <= tolerance);
          CHECK(std::abs(static_cast<double>(traces[layer].probs(i, j)) - prob) <= tolerance);
          CHECK(std::abs(static_cast<double>(grams[layer].scores(i, j)) - score) <= tolerance);
          CHECK(std::abs(static_cast<double>(grams[layer].probs(i, j)) - prob) <= tolerance);
          for (const auto& run : runs) {
            CHECK(std::abs(run.mean_scores[layer](i, j) - score) <= tolerance);
            CHECK(std::abs(run.mean_probs[layer](i, j) - prob) <= tolerance);
          }
        }
    }
  }
}

// ---- masks --------------------------------------------------------------------------------------

TEST_CASE("no mask kind ever leaves a query row without a visible key") {
  for (Index S = 1; S <= 9; ++S) {
    std::vector<maskpos::Mask> masks = {maskpos::Mask::causal(), maskpos::Mask::bidirectional()};
    for (Index w : {Index(1), Index(2), S, S + 3}) masks.push_back(maskpos::Mask::sliding_window(w));
    for (Index P = 0; P <= S; ++P) masks.push_back(maskpos::Mask::prefix_lm(P));
    for (const auto& mask : masks) {
      INFO("S = " << S << ", mask " << mask.name());
      REQUIRE_NOTHROW(mask.validate(S));
      for (Index i = 0; i < S; ++i) {
        // The rule: the diagonal is always visible, and the visible keys are the range [first, end).
        CHECK(mask.visible(i, i));
        const Index first = mask.first_key(i), end = mask.end_key(i, S);
        CHECK(first <= i);
        CHECK(i < end);
        CHECK(end <= S);
        for (Index j = 0; j < S; ++j) CHECK(mask.visible(i, j) == (first <= j && j < end));
      }
      // The forward pass: every probability row sums to 1 over the visible keys and is 0 elsewhere.
      auto config = config_with(maskpos::Norm::L2, maskpos::ScoreScale::one(), mask, 2);
      const auto traces = maskpos::forward<double>(config, lattice_tokens(S, 5));
      for (const auto& trace : traces) {
        // S terms in [0, 1], each with relative error <= a few eps: |sum - 1| <= 4 S eps.
        CHECK(((trace.probs.rowwise().sum().array() - 1).abs() <= 4.0 * static_cast<double>(S) * 2.2e-16).all());
        for (Index i = 0; i < S; ++i)
          for (Index j = 0; j < S; ++j)
            if (!mask.visible(i, j)) CHECK(trace.probs(i, j) == 0);
      }
    }
  }
}

// ---- softmax range ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("the softmax never overflows, for any score scale", "", float, double) {
  using Scalar = TestType;
  const Index S = 6;
  // LayerNorm with scale 1 gives self-scores equal to d: exp(4096) overflows both float and double
  // unless the row maximum is subtracted first.
  const Index d = 4096;
  Eigen::MatrixXd tokens = Eigen::MatrixXd::Zero(S, d);
  for (Index i = 0; i < S; ++i)
    for (Index j = 0; j < d; ++j) tokens(i, j) = std::sin(0.37 * static_cast<double>((i + 1) * (j + 2)));
  // The largest custom scale whose value is finite in Scalar with room for scores up to d.
  const double huge_scale = std::is_same_v<Scalar, float> ? 1e30 : 1e300;
  for (const auto& [norm, scale] : std::vector<std::pair<maskpos::Norm, maskpos::ScoreScale>>{
           {maskpos::Norm::LayerNorm, maskpos::ScoreScale::one()},
           {maskpos::Norm::RMSNorm, maskpos::ScoreScale::one()},
           {maskpos::Norm::L2, maskpos::ScoreScale::custom(1e30)},
           {maskpos::Norm::L2, maskpos::ScoreScale::custom(huge_scale / static_cast<double>(d))}}) {
    for (const auto& mask : {maskpos::Mask::causal(), maskpos::Mask::bidirectional()}) {
      INFO("norm " << maskpos::to_string(norm) << ", scale " << scale.name() << ", mask " << mask.name());
      auto config = config_with(norm, scale, mask, 2);
      config.residual = false;
      const auto traces = maskpos::forward<Scalar>(config, tokens);
      for (const auto& trace : traces) {
        REQUIRE(trace.probs.allFinite());
        // Distinct tokens of equal norm: each token's self-score is the strictly largest of its row
        // (Cauchy-Schwarz), so with scores this far apart the softmax is one-hot on the diagonal.
        // Layer 1 only: layer 2's inputs are the one-hot outputs, i.e. the same tokens normalised.
        CHECK(((trace.probs.rowwise().sum().array() - 1).abs() <= 8 * std::numeric_limits<Scalar>::epsilon()).all());
      }
      CHECK(traces[0].probs.isApprox(maskpos::Matrix<Scalar>::Identity(S, S), Scalar(0)));
    }
  }
}

// ---- determinism --------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("Monte Carlo: same seed, same bits, for 1, 2 and 4 threads and across repeated runs", "", float,
                   double) {
  using Scalar = TestType;
  std::vector<std::pair<maskpos::DecoderConfig, maskpos::InputSpec>> setups;
  setups.emplace_back(config_with(maskpos::Norm::L2, maskpos::ScoreScale::one(), maskpos::Mask::causal()),
                      maskpos::InputSpec::gaussian(12, 16, 0.2));
  setups.emplace_back(config_with(maskpos::Norm::LayerNorm, maskpos::ScoreScale::inv_sqrt_dim(), maskpos::Mask::sliding_window(4)),
                      maskpos::InputSpec::gaussian(12, 16, 0.5));
  auto rope = config_with(maskpos::Norm::L2, maskpos::ScoreScale::one(), maskpos::Mask::bidirectional());
  rope.rope = maskpos::RopeConfig{};
  setups.emplace_back(rope, maskpos::InputSpec::orthonormal(10, 16));
  setups.emplace_back(config_with(maskpos::Norm::RMSNorm, maskpos::ScoreScale::inv_dim(), maskpos::Mask::prefix_lm(3)),
                      maskpos::InputSpec::gaussian(9, 8, 0.0));
  for (const auto& [config, inputs] : setups) {
    maskpos::MonteCarloOptions options;
    options.samples = 200;  // > 32 per chunk x 4 threads: every thread gets work, in a racy order
    options.seed = 12345;
    options.threads = 1;
    const auto reference = maskpos::monte_carlo<Scalar>(config, inputs, options);
    REQUIRE(reference.out_of_range == 0);
    for (const int threads : {1, 2, 4, 2, 4}) {
      options.threads = threads;
      const auto again = maskpos::monte_carlo<Scalar>(config, inputs, options);
      INFO("norm " << maskpos::to_string(config.norm) << ", threads " << threads);
      CHECK(same_bits(again.mean_scores, reference.mean_scores));
      CHECK(same_bits(again.mean_probs, reference.mean_probs));
      CHECK(same_bits(again.stderr_scores, reference.stderr_scores));
    }
    // Every propagation path (token space, Gram space, the triangular frame) is deterministic in the same way.
    for (const auto path : {maskpos::MonteCarloPath::Direct, maskpos::MonteCarloPath::Gram, maskpos::MonteCarloPath::Triangular}) {
      if (path != maskpos::MonteCarloPath::Direct && config.rope) continue;  // only the direct path has RoPE
      if (path == maskpos::MonteCarloPath::Triangular && inputs.kind != maskpos::InputKind::Gaussian) continue;
      options.path = path;
      options.threads = 1;
      const auto one = maskpos::monte_carlo<Scalar>(config, inputs, options);
      for (const int threads : {2, 4, 4}) {
        options.threads = threads;
        const auto again = maskpos::monte_carlo<Scalar>(config, inputs, options);
        INFO("norm " << maskpos::to_string(config.norm) << ", path " << static_cast<int>(path) << ", threads " << threads);
        CHECK(same_bits(again.mean_scores, one.mean_scores));
        CHECK(same_bits(again.mean_probs, one.mean_probs));
        CHECK(same_bits(again.stderr_scores, one.stderr_scores));
      }
    }
    options.path = maskpos::MonteCarloPath::Auto;
    // The check can fail: another seed gives other bits.
    options.seed = 12346;
    CHECK_FALSE(same_bits(maskpos::monte_carlo<Scalar>(config, inputs, options).mean_scores, reference.mean_scores));
  }
}

TEMPLATE_TEST_CASE("forward, forward_gram and mean_field: same bits on repeated and concurrent calls", "", float, double) {
  using Scalar = TestType;
  const Eigen::MatrixXd tokens = lattice_tokens(11, 13);
  auto config = config_with(maskpos::Norm::LayerNorm, maskpos::ScoreScale::inv_dim(), maskpos::Mask::causal(), 4);
  auto rope_config = config_with(maskpos::Norm::L2, maskpos::ScoreScale::one(), maskpos::Mask::sliding_window(5), 4);
  rope_config.rope = maskpos::RopeConfig{};
  rope_config.rope->rotary_dim = 12;

  // Every method's outputs as one list of matrices.
  const std::vector<std::function<std::vector<maskpos::Matrix<Scalar>>()>> methods = {
      [&] {
        std::vector<maskpos::Matrix<Scalar>> out;
        for (const auto& c : {config, rope_config})
          for (const auto& t : maskpos::forward<Scalar>(c, tokens)) out.insert(out.end(), {t.scores, t.probs, t.output});
        return out;
      },
      [&] {
        std::vector<maskpos::Matrix<Scalar>> out;
        for (const auto& t : maskpos::forward_gram<Scalar>(config, tokens)) out.insert(out.end(), {t.scores, t.probs, t.gram});
        return out;
      },
      [&] {
        std::vector<maskpos::Matrix<Scalar>> out;
        for (const auto& c : {config, rope_config}) {
          const auto limit = maskpos::mean_field<Scalar>(c, maskpos::MeanFieldInputs::alpha(11, 0.3), 64);
          for (std::size_t l = 0; l < limit.scores.size(); ++l) out.insert(out.end(), {limit.scores[l], limit.probs[l], limit.grams[l]});
        }
        return out;
      },
  };
  for (std::size_t m = 0; m < methods.size(); ++m) {
    INFO("method " << m);
    const auto reference = methods[m]();
    CHECK(same_bits(methods[m](), reference));
    for (const int threads : {1, 2, 4}) {
      std::vector<std::vector<maskpos::Matrix<Scalar>>> results(static_cast<std::size_t>(threads));
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { results[static_cast<std::size_t>(t)] = methods[m](); });
      for (auto& thread : pool) thread.join();
      for (const auto& result : results) CHECK(same_bits(result, reference));
    }
  }
}

// ---- float against double -------------------------------------------------------------------------

// A first-order bound on |score_float - score_exact| per layer for one sequence, from a standard
// rounding-error analysis (u = 2^-24, gamma_n ~ n u), using the row norms of the double run:
//   e_l     direction error of the normalised rows:   2 E_x / r_i + (d + 4) u ||x_i|| / r_i (+ 8 u with RoPE)
//           (r_i = ||x_i|| for L2, ||x_i - mean|| for LayerNorm; the norm costs gamma_d, the division u)
//   sigma_l score error:                              c N^2 (2 e_l + (d + 2) u)   (N = 1 for L2, sqrt(d) for LayerNorm)
//   pi_l    l1 error of a probability row:            2 sigma_l + (S + 4) u       (softmax Jacobian, exp and sum)
//   E_x     state error after the layer:              E_x + N (pi_l + e_l + (S + 2) u) + u max ||x||
// starting from E_x = input_error: u max ||x_0|| when the float run sees the double tokens rounded to
// float; (d + 8) u for the Gaussian inputs of a float Monte Carlo run, which InputGenerator normalises in
// float (|r| costs gamma_d, z + lambda c and lambda c 2u, the reciprocal square root and product 3u, and
// the double run's own tokens are within 2u of exact). A double run has the same analysis with 2^-53,
// which is negligible here; the 1.5 factor covers second order.
struct FloatErrorBound {
  std::vector<double> scores;  // per layer
  std::vector<double> probs;   // per layer: bounds every entry (an entry is at most the row's l1 error)
};

FloatErrorBound float_error_bound(const maskpos::DecoderConfig& config, const Eigen::MatrixXd& tokens, double input_error) {
  const double u = std::ldexp(1.0, -24);
  const Index S = tokens.rows(), d = tokens.cols();
  const bool layer_norm = config.norm == maskpos::Norm::LayerNorm;
  const double N = layer_norm ? std::sqrt(static_cast<double>(d)) : 1.0;
  const double c = config.scale.factor(d);
  const double Sd = static_cast<double>(S), dd = static_cast<double>(d);
  const auto traces = maskpos::forward<double>(config, tokens);
  Eigen::MatrixXd state = tokens;
  double state_error = input_error;
  FloatErrorBound bound;
  for (Index l = 0; l < config.layers; ++l) {
    double direction_error = 0;
    for (Index i = 0; i < S; ++i) {
      const double norm = state.row(i).norm();
      const double r = layer_norm ? (state.row(i).array() - state.row(i).mean()).matrix().norm() : norm;
      direction_error = std::max(direction_error, (2 * state_error + (dd + 4) * u * norm) / r);
    }
    if (config.rope) direction_error += 8 * u;
    const double sigma = c * N * N * (2 * direction_error + (dd + 2) * u);
    const double pi = 2 * sigma + (Sd + 4) * u;
    state = traces[static_cast<std::size_t>(l)].output;
    state_error += N * (pi + direction_error + (Sd + 2) * u) + u * state.rowwise().norm().maxCoeff();
    bound.scores.push_back(1.5 * sigma);
    bound.probs.push_back(1.5 * pi);
  }
  return bound;
}

// The paper's configurations (NOTES Sec. 4), at S = 50, d = 64, 4 layers.
std::vector<std::pair<std::string, std::pair<maskpos::DecoderConfig, double>>> paper_configurations() {
  std::vector<std::pair<std::string, std::pair<maskpos::DecoderConfig, double>>> out;
  const auto add = [&](const std::string& name, maskpos::DecoderConfig config, double alpha) {
    config.layers = 4;
    out.push_back({name, {config, alpha}});
  };
  add("L2 alpha 0", config_with(maskpos::Norm::L2, maskpos::ScoreScale::one(), maskpos::Mask::causal()), 0.0);
  add("L2 alpha 0.8", config_with(maskpos::Norm::L2, maskpos::ScoreScale::one(), maskpos::Mask::causal()), 0.8);
  add("LayerNorm 1/sqrt(d)", config_with(maskpos::Norm::LayerNorm, maskpos::ScoreScale::inv_sqrt_dim(), maskpos::Mask::causal()), 0.2);
  add("LayerNorm 1/d", config_with(maskpos::Norm::LayerNorm, maskpos::ScoreScale::inv_dim(), maskpos::Mask::causal()), 0.2);
  auto rope = config_with(maskpos::Norm::L2, maskpos::ScoreScale::one(), maskpos::Mask::causal());
  rope.rope = maskpos::RopeConfig{};
  add("RoPE causal alpha 0.5", rope, 0.5);
  rope.mask = maskpos::Mask::bidirectional();
  add("RoPE non-causal alpha 0", rope, 0.0);
  return out;
}

TEST_CASE("float and double runs of the paper configurations agree within the derived bound") {
  const Index S = 50, d = 64;
  for (const auto& [name, setup] : paper_configurations()) {
    const auto& [config, alpha] = setup;
    INFO(name);
    const maskpos::InputSpec inputs = maskpos::InputSpec::gaussian(S, d, alpha);
    // Per sequence: forward<float> against forward<double> on the same float-representable tokens.
    maskpos::InputGenerator generator(inputs, 7);
    std::vector<double> score_bound(static_cast<std::size_t>(config.layers), 0.0), prob_bound = score_bound,
                        sequence_bound = score_bound;
    const double u = std::ldexp(1.0, -24);
    constexpr std::int64_t kSamples = 48;
    for (std::int64_t b = 0; b < kSamples; ++b) {
      Eigen::MatrixXd tokens;
      generator.generate(static_cast<std::uint64_t>(b), tokens);
      const FloatErrorBound bound = float_error_bound(config, tokens, u * tokens.rowwise().norm().maxCoeff());
      // The Monte Carlo comparison below: the float run's own tokens differ by the float generation.
      const FloatErrorBound generated = float_error_bound(config, tokens, (static_cast<double>(d) + 8) * u);
      const auto in_float = maskpos::forward<float>(config, tokens);
      const auto in_double = maskpos::forward<double>(config, tokens);
      for (std::size_t l = 0; l < in_float.size(); ++l) {
        const Eigen::MatrixXd visible = in_double[l].scores.array().isNaN().select(0.0, in_double[l].scores);
        const Eigen::MatrixXd visible_f =
            in_float[l].scores.cast<double>().array().isNaN().select(0.0, in_float[l].scores.cast<double>());
        const double score_gap = (visible_f - visible).cwiseAbs().maxCoeff();
        const double prob_gap = (in_float[l].probs.cast<double>() - in_double[l].probs).cwiseAbs().maxCoeff();
        CHECK(score_gap <= bound.scores[l]);
        CHECK(prob_gap <= bound.probs[l]);
        sequence_bound[l] = std::max(sequence_bound[l], bound.scores[l]);
        score_bound[l] = std::max(score_bound[l], generated.scores[l]);
        prob_bound[l] = std::max(prob_bound[l], generated.probs[l]);
      }
    }
    // Monte Carlo: both runs draw the same float normals (InputGenerator), so the two means differ by
    // the mean of per-sample errors, each within the per-sample bound with generated inputs, plus
    // the float run's summation grid (detail::SumGrid::Float): values are rounded to a step 2^(e - 27)
    // with 2^e < 2 x (2 x score_bound), i.e. by at most score_bound 2^-26 (probabilities: bound 2, 2^-27).
    maskpos::MonteCarloOptions options;
    options.samples = kSamples;
    options.seed = 7;
    options.threads = 2;
    const auto mean_float = maskpos::monte_carlo<float>(config, inputs, options);
    const auto mean_double = maskpos::monte_carlo<double>(config, inputs, options);
    for (std::size_t l = 0; l < mean_float.mean_scores.size(); ++l) {
      const Eigen::MatrixXd gap = (mean_float.mean_scores[l] - mean_double.mean_scores[l]).array().isNaN().select(
          0.0, mean_float.mean_scores[l] - mean_double.mean_scores[l]);
      const double grid = maskpos::MonteCarloAccumulator::score_bound(config, inputs, static_cast<Index>(l)) * std::ldexp(1.0, -26);
      INFO("layer " << l + 1 << ": largest gap " << gap.cwiseAbs().maxCoeff() << ", bound " << score_bound[l] + grid);
      CHECK(gap.cwiseAbs().maxCoeff() <= score_bound[l] + grid);
      CHECK((mean_float.mean_probs[l] - mean_double.mean_probs[l]).cwiseAbs().maxCoeff() <= prob_bound[l] + std::ldexp(1.0, -27));
    }
    // The bound is informative where the softmax is smooth: under L2 the scores lie in [0, 1], and the
    // per-sequence bound stays a few percent of that range at layer 4 (measured gaps: at most 4e-7 per
    // sequence, 1e-7 between the Monte Carlo means; docs/reliability.md has the table).
    if (config.norm == maskpos::Norm::L2) CHECK(sequence_bound.back() < 0.05);
  }
}

// ---- the command's memory guard -------------------------------------------------------------------

struct Outcome {
  int exit_code;
  std::string stderr_text;
};

Outcome run_maskpos(const std::string& arguments) {
  const std::string binary = std::string(MASKPOS_BINARY_DIR) + "/bin/maskpos";
  const auto log = std::filesystem::temp_directory_path() / ("maskpos_reliability_" + std::to_string(::getpid()) + ".log");
  const int status = std::system((binary + " " + arguments + " > /dev/null 2> " + log.string()).c_str());
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::filesystem::remove(log);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

TEST_CASE("maskpos simulate estimates working memory and refuses beyond --max-memory") {
  if (!std::filesystem::exists(std::string(MASKPOS_BINARY_DIR) + "/bin/maskpos")) {
    WARN("build/bin/maskpos is not built here (it needs cairo, CLI11, nlohmann-json): skipped");
    return;
  }
  const auto out = std::filesystem::temp_directory_path() / ("maskpos_reliability_out_" + std::to_string(::getpid()));
  std::filesystem::remove_all(out);
  // S = 100000, L = 4: the exact sums alone take 3 L S^2 24 bytes = 2.9e12 bytes per thread.
  const Outcome huge = run_maskpos("simulate --seq-len 100000 --threads 1 --quiet --out " + out.string());
  INFO(huge.stderr_text);
  CHECK(huge.exit_code == 2);
  CHECK_THAT(huge.stderr_text, Contains("estimated working memory"));
  CHECK_THAT(huge.stderr_text, Contains("--max-memory"));
  CHECK(std::count(huge.stderr_text.begin(), huge.stderr_text.end(), '\n') == 1);
  // A small run refused by a tiny explicit limit (S = 50, L = 4: 720 kB of sums > 0.1 MB)...
  const Outcome tight = run_maskpos("simulate --samples 10 --threads 1 --quiet --no-figure --max-memory 0.1 --out " + out.string());
  CHECK(tight.exit_code == 2);
  CHECK_THAT(tight.stderr_text, Contains("exceeds the limit of 0 MB"));
  // ...and accepted once the user raises it.
  const Outcome raised = run_maskpos("simulate --samples 10 --threads 1 --quiet --no-figure --max-memory 64 --out " + out.string());
  CHECK(raised.exit_code == 0);
  CHECK(std::filesystem::exists(out / "summary.json"));
  std::filesystem::remove_all(out);
}

}  // namespace
