#include <maskpos/decoder.hpp>
#include <maskpos/inputs.hpp>

#include <Eigen/QR>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "reference.hpp"

using maskpos::DecoderConfig;
using maskpos::Mask;
using maskpos::Norm;

namespace {

// Every mask kind the decoder supports, with an independent statement of its rule.
struct MaskCase {
  Mask mask;
  std::function<bool(int, int)> visible;
};
std::vector<MaskCase> all_masks() {
  return {{Mask::causal(), [](int i, int j) { return j <= i; }},
          {Mask::bidirectional(), [](int, int) { return true; }},
          {Mask::sliding_window(3), [](int i, int j) { return j <= i && j > i - 3; }},
          {Mask::prefix_lm(4), [](int i, int j) { return j <= i || j < 4; }}};
}

Eigen::MatrixXd random_tokens(int S, int d, unsigned seed) {
  // std::mt19937 is fully specified by the standard; only its raw output is used here.
  std::mt19937 engine(seed);
  Eigen::MatrixXd tokens(S, d);
  for (int i = 0; i < S; ++i)
    for (int k = 0; k < d; ++k) tokens(i, k) = static_cast<double>(engine()) / 4294967296.0 - 0.5;
  return tokens;
}

reference::Rows to_rows(const Eigen::MatrixXd& m) {
  reference::Rows rows(static_cast<std::size_t>(m.rows()), std::vector<double>(static_cast<std::size_t>(m.cols())));
  for (Eigen::Index i = 0; i < m.rows(); ++i)
    for (Eigen::Index k = 0; k < m.cols(); ++k) rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)] = m(i, k);
  return rows;
}

}  // namespace

TEST_CASE("Fig. 1: layer-2 scores of three orthonormal tokens match the closed form") {
  // By hand (docs/theory.md): layer 1 has scores I, so A's rows are softmax(0..0, 1); X(1) = A + I,
  // whose rows scaled by (1 + e) and (2 + e) are (1, 1 + 2e, 0) and (1, 1, 2 + 2e). The layer-2 scores
  // are their cosines.
  const double e = std::exp(1.0);
  const double score_10 = 1.0 / std::sqrt(1.0 + (1 + 2 * e) * (1 + 2 * e));
  const double score_20 = 1.0 / std::sqrt(2.0 + (2 + 2 * e) * (2 + 2 * e));
  const double score_21 = (2 + 2 * e) / (std::sqrt(1.0 + (1 + 2 * e) * (1 + 2 * e)) * std::sqrt(2.0 + (2 + 2 * e) * (2 + 2 * e)));
  DecoderConfig config;
  config.layers = 2;
  const auto traces = maskpos::forward<double>(config, Eigen::MatrixXd::Identity(3, 3));
  // Every step is a handful of operations on numbers of order 1: 64 epsilons is ample.
  const double tolerance = 64 * std::numeric_limits<double>::epsilon();
  CHECK(traces[1].scores(1, 0) == Approx(score_10).margin(tolerance));
  CHECK(traces[1].scores(2, 0) == Approx(score_20).margin(tolerance));
  CHECK(traces[1].scores(2, 1) == Approx(score_21).margin(tolerance));
  // The paper's printed numbers, to its four decimals.
  CHECK(traces[1].scores(1, 0) == Approx(0.1535).margin(5e-5));
  CHECK(traces[1].scores(2, 0) == Approx(0.1321).margin(5e-5));
  CHECK(traces[1].scores(2, 1) == Approx(0.1508).margin(5e-5));
  for (int i = 0; i < 3; ++i) CHECK(traces[1].scores(i, i) == Approx(1.0).margin(tolerance));
  CHECK(std::isnan(traces[1].scores(0, 1)));
}

TEMPLATE_TEST_CASE("softmax rows sum to one and masked probabilities are exactly zero", "", float, double) {
  const auto tokens = random_tokens(9, 7, 1);
  for (const auto& mask_case : all_masks())
    for (Norm norm : {Norm::L2, Norm::LayerNorm, Norm::RMSNorm, Norm::None}) {
      DecoderConfig config;
      config.mask = mask_case.mask;
      config.norm = norm;
      config.layers = 3;
      const auto traces = maskpos::forward<TestType>(config, tokens);
      for (const auto& trace : traces)
        for (int i = 0; i < 9; ++i) {
          // A row sum of at most 9 rounded terms in (0, 1]: within 9 epsilons of 1.
          CHECK(trace.probs.row(i).template cast<double>().sum() ==
                Approx(1.0).margin(9 * std::numeric_limits<TestType>::epsilon()));
          for (int j = 0; j < 9; ++j)
            if (!mask_case.visible(i, j)) {
              CHECK(trace.probs(i, j) == 0);
              CHECK(std::isnan(trace.scores(i, j)));
            } else {
              CHECK(std::isfinite(trace.scores(i, j)));
            }
        }
    }
}

TEMPLATE_TEST_CASE("the decoder matches an independent brute-force reference for every mask, norm and scale", "",
                   float, double) {
  // S = 11 and 19: one and two full blocks of 8 (float) or 4 (double) rows plus leftover rows in the
  // kernels' row-blocked softmax and normalisation; d = 5 leaves padding columns in every SIMD packet
  // width (LayerNorm's centring must not touch them), d = 8 none for float.
  const auto [S, d] = GENERATE(std::pair{11, 8}, std::pair{19, 5});
  const int L = 3;
  const auto tokens = random_tokens(S, d, 7);
  const std::vector<std::pair<maskpos::ScoreScale, double>> scales = {
      {maskpos::ScoreScale::one(), 1.0},
      {maskpos::ScoreScale::inv_sqrt_dim(), 1.0 / std::sqrt(double(d))},
      {maskpos::ScoreScale::inv_dim(), 1.0 / d},
      {maskpos::ScoreScale::custom(2.5), 2.5}};
  const std::vector<std::pair<Norm, std::string>> norms = {
      {Norm::L2, "l2"}, {Norm::LayerNorm, "layernorm"}, {Norm::RMSNorm, "rmsnorm"}, {Norm::None, "none"}};
  for (const auto& mask_case : all_masks())
    for (const auto& [norm, norm_name] : norms)
      for (const auto& [scale, factor] : scales)
        for (bool residual : {true, false}) {
          DecoderConfig config;
          config.layers = L;
          config.norm = norm;
          config.scale = scale;
          config.mask = mask_case.mask;
          config.residual = residual;
          const auto traces = maskpos::forward<TestType>(config, tokens);
          const auto expected = reference::decoder(to_rows(tokens), L, norm_name, factor, residual, mask_case.visible);
          // Values are O(sqrt(d)) at most with norms (O(2^L) without); a few hundred roundings per entry
          // over L layers: 1e3 epsilons of the compute type, relative to the magnitude.
          const double tolerance = 1e3 * std::numeric_limits<TestType>::epsilon();
          for (int l = 0; l < L; ++l)
            for (int i = 0; i < S; ++i) {
              for (int j = 0; j < S; ++j) {
                const double want = expected[l].scores[i][j];
                if (std::isnan(want)) continue;
                CHECK(double(traces[l].scores(i, j)) == Approx(want).margin(tolerance * (1 + std::fabs(want))));
                CHECK(double(traces[l].probs(i, j)) == Approx(expected[l].probs[i][j]).margin(tolerance));
              }
              for (int k = 0; k < d; ++k) {
                const double want = expected[l].output[i][k];
                CHECK(double(traces[l].output(i, k)) == Approx(want).margin(tolerance * (1 + std::fabs(want))));
              }
            }
        }
}

TEST_CASE("bidirectional: permuting the tokens permutes every score matrix") {
  const int S = 10, d = 16;
  const auto tokens = random_tokens(S, d, 3);
  std::vector<int> order(S);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 engine(5);
  std::shuffle(order.begin(), order.end(), engine);
  Eigen::MatrixXd permuted(S, d);
  for (int i = 0; i < S; ++i) permuted.row(i) = tokens.row(order[i]);
  DecoderConfig config;
  config.mask = Mask::bidirectional();
  const auto traces = maskpos::forward<double>(config, tokens);
  const auto permuted_traces = maskpos::forward<double>(config, permuted);
  for (std::size_t l = 0; l < traces.size(); ++l)
    for (int i = 0; i < S; ++i)
      for (int j = 0; j < S; ++j)
        CHECK(permuted_traces[l].scores(i, j) ==
              Approx(traces[l].scores(order[i], order[j])).margin(1e3 * std::numeric_limits<double>::epsilon()));
}

TEST_CASE("degenerate rows: a zero token under L2 and a constant token under LayerNorm become zero rows") {
  Eigen::MatrixXd tokens = random_tokens(4, 6, 9);
  tokens.row(0).setZero();
  DecoderConfig config;
  config.layers = 1;
  auto traces = maskpos::forward<double>(config, tokens);
  CHECK(traces[0].scores(0, 0) == 0.0);
  CHECK(traces[0].output.row(0).isZero(0));
  tokens.row(0).setConstant(3.0);
  config.norm = Norm::LayerNorm;
  traces = maskpos::forward<double>(config, tokens);
  CHECK(traces[0].scores(0, 0) == 0.0);
  CHECK(traces[0].output.row(0).isApprox(tokens.row(0)));  // residual only: A Y = 0 for row 0
}

TEST_CASE("bad decoder input raises std::invalid_argument naming the parameter") {
  DecoderConfig config;
  const Eigen::MatrixXd tokens = Eigen::MatrixXd::Identity(4, 4);
  auto fails_with = [&](const DecoderConfig& c, const Eigen::MatrixXd& x, const std::string& needle) {
    try {
      maskpos::forward<double>(c, x);
      FAIL("no exception for " << needle);
    } catch (const std::invalid_argument& error) {
      CHECK_THAT(error.what(), Catch::Contains(needle));
    }
  };
  fails_with(config, Eigen::MatrixXd(0, 4), "seq_len S");
  fails_with(config, Eigen::MatrixXd(4, 0), "dim d");
  DecoderConfig bad = config;
  bad.layers = 0;
  fails_with(bad, tokens, "layers L");
  bad = config;
  bad.mask = Mask::sliding_window(0);
  fails_with(bad, tokens, "mask window w");
  bad.mask = Mask::prefix_lm(5);
  fails_with(bad, tokens, "mask prefix P");
  bad = config;
  bad.scale = maskpos::ScoreScale::custom(-1);
  fails_with(bad, tokens, "score scale");
  Eigen::MatrixXd with_nan = tokens;
  with_nan(2, 1) = std::numeric_limits<double>::quiet_NaN();
  fails_with(config, with_nan, "tokens(2, 1)");
}

TEST_CASE("the softmax's exp: within 2 float ulps of exp in double, flushed below 2^-125, NaN kept") {
  using Packet = maskpos::detail::PacketOf<float>;
  constexpr int P = maskpos::detail::packet_size<float>();
  // Cephes' expf polynomial has a relative error below 1.7e-7 (its documentation) plus the final
  // rounding: under 2 ulps of the result. The reference is exp in double, rounded error-free here.
  // The InRange variant (no clamps, for arguments known to lie in [-86.5, 88]) is held to the same.
  double worst = 0, worst_in_range = 0;
  alignas(64) float in[P], out[P], out_in_range[P];
  for (double x = -86.0; x < 1.0; x += 1.0e-3) {
    for (int k = 0; k < P; ++k) in[k] = static_cast<float>(x + 1.0e-4 * k);
    Eigen::internal::pstore(out, maskpos::detail::exp_packet<float>(Eigen::internal::pload<Packet>(in)));
    Eigen::internal::pstore(out_in_range, maskpos::detail::exp_packet<float, true>(Eigen::internal::pload<Packet>(in)));
    for (int k = 0; k < P; ++k) {
      const double want = std::exp(static_cast<double>(in[k]));
      const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(want)) - 23);
      worst = std::max(worst, std::fabs(out[k] - want) / ulp);
      worst_in_range = std::max(worst_in_range, std::fabs(out_in_range[k] - want) / ulp);
    }
  }
  CHECK(worst < 2.0);
  CHECK(worst_in_range < 2.0);
  // Below the flush threshold (true values under 3e-38) the result is exactly 0; NaN stays NaN.
  for (int k = 0; k < P; ++k) in[k] = k == 0 ? std::numeric_limits<float>::quiet_NaN() : -86.6f - 10.0f * static_cast<float>(k);
  Eigen::internal::pstore(out, maskpos::detail::exp_packet<float>(Eigen::internal::pload<Packet>(in)));
  CHECK(std::isnan(out[0]));
  for (int k = 1; k < P; ++k) CHECK(out[k] == 0.0f);
}

TEST_CASE("packet square roots are correctly rounded, the same bits on every processor") {
  using Packet = maskpos::detail::PacketOf<float>;
  constexpr int P = maskpos::detail::packet_size<float>();
  // The reference: sqrt in double of the float input, rounded once to float. That is the correctly
  // rounded float square root (53 >= 2 x 24 + 2 bits: rounding twice cannot differ for sqrt), i.e.
  // what IEEE 754 prescribes, so exact equality is required. Eigen's own psqrt fails this (its
  // default fast path, rsqrtps plus one Newton step, is a few ulps off and flushes subnormals to 0).
  std::mt19937 random(7);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-149, 127);
  std::vector<float> values{0.0f, 1.0f, 2.0f, 0.25f, std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::min(), std::numeric_limits<float>::max(),
                            1.0f - std::numeric_limits<float>::epsilon() / 2, 48 * 0.6931472f};
  for (int k = 0; k < 100000; ++k) values.push_back(std::ldexp(mantissa(random), exponent(random)));
  while (values.size() % P != 0) values.push_back(3.0f);
  alignas(64) float out[P];
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < values.size(); i += P) {
    Eigen::internal::pstore(out, maskpos::detail::sqrt_packet(Eigen::internal::ploadu<Packet>(values.data() + i)));
    for (int k = 0; k < P; ++k)
      if (out[k] != static_cast<float>(std::sqrt(static_cast<double>(values[i + k])))) ++mismatches;
  }
  CHECK(mismatches == 0);
  alignas(64) float negative[P];
  std::fill(negative, negative + P, -1.0f);
  Eigen::internal::pstore(out, maskpos::detail::sqrt_packet(Eigen::internal::pload<Packet>(negative)));
  CHECK(std::isnan(out[0]));
}

namespace {

// Rows of `tokens` in the frame of the Gram-Schmidt of [extra; tokens] (LQ by Householder QR of the
// transpose, in double): the same dot products, lower-trapezoidal, width min(n, rank).
Eigen::MatrixXd in_triangular_frame(const Eigen::MatrixXd& tokens, const Eigen::MatrixXd& extra, Eigen::Index width) {
  Eigen::MatrixXd all(extra.rows() + tokens.rows(), tokens.cols());
  all << extra, tokens;
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(all.transpose());
  const Eigen::MatrixXd lower = qr.matrixQR().triangularView<Eigen::Upper>().toDenseMatrix().transpose();
  return lower.block(extra.rows(), 0, tokens.rows(), width);
}

}  // namespace

TEMPLATE_TEST_CASE("a kernel on tokens in their triangular frame gives the decoder of the tokens", "", float, double) {
  // The frame keeps every dot product, so every norm that sees only dot products (L2, RMSNorm, none;
  // LayerNorm through the part orthogonal to 1, run as RMSNorm over d) gives the same scores and
  // probabilities, and the outputs the same Gram matrix. Expected values: the independent reference
  // on the original tokens. S = 11 > d = 8 gives trapezoid rows; S = 19 and 23 < d = 40 wide rows (23:
  // the tall tiles leave a remainder of 5 rows, whose kRows blocks reach row 25); a lead
  // vector shifts every support by one. Causal and sliding-window masks skip the zeros; the others
  // take the dense path. Tolerance as in the reference test above (1e3 epsilons, relative).
  using Scalar = TestType;
  const auto [S, d] = GENERATE(std::pair{11, 8}, std::pair{19, 40}, std::pair{23, 40});
  const int lead = GENERATE(0, 1);
  const int L = 3;
  const Eigen::MatrixXd tokens = random_tokens(S, d, 17), extra = random_tokens(lead, d, 18);
  const std::vector<std::pair<Norm, std::string>> norms = {
      {Norm::L2, "l2"}, {Norm::LayerNorm, "layernorm"}, {Norm::RMSNorm, "rmsnorm"}, {Norm::None, "none"}};
  const double tolerance = 1e3 * std::numeric_limits<Scalar>::epsilon();
  for (const auto& mask_case : all_masks())
    for (const auto& [norm, norm_name] : norms)
      for (bool residual : {true, false}) {
        DecoderConfig config;
        config.layers = L;
        config.norm = norm;
        config.scale = maskpos::ScoreScale::inv_sqrt_dim();
        config.mask = mask_case.mask;
        config.residual = residual;
        const bool centre = norm == Norm::LayerNorm;
        const Eigen::MatrixXd seen = centre ? Eigen::MatrixXd(tokens.colwise() - tokens.rowwise().mean()) : tokens;
        const Eigen::MatrixXd seen_extra = centre ? Eigen::MatrixXd(extra.colwise() - extra.rowwise().mean()) : extra;
        const maskpos::TriangularFrame frame{std::min<Eigen::Index>(S + lead, d - (centre ? 1 : 0)), lead};
        DecoderConfig frame_config = config;
        if (centre) frame_config.norm = Norm::RMSNorm;
        maskpos::detail::DecoderKernel<Scalar> kernel(frame_config, S, d, frame);
        maskpos::Matrix<Scalar> state = in_triangular_frame(seen, seen_extra, frame.width).cast<Scalar>();
        const auto expected = reference::decoder(to_rows(tokens), L, norm_name, 1 / std::sqrt(double(d)), residual,
                                                 mask_case.visible);
        for (int l = 0; l < L; ++l) {
          kernel.layer(state);
          Eigen::MatrixXd output(S, d);
          for (int i = 0; i < S; ++i)
            for (int k = 0; k < d; ++k) output(i, k) = expected[l].output[i][k];
          if (centre) output = output.colwise() - output.rowwise().mean();
          const Eigen::MatrixXd want_gram = output * output.transpose();
          const Eigen::MatrixXd gram = state.template cast<double>() * state.template cast<double>().transpose();
          INFO("S " << S << ", lead " << lead << ", norm " << norm_name << ", residual " << residual << ", layer " << l);
          for (int i = 0; i < S; ++i)
            for (int j = 0; j < S; ++j) {
              CHECK(gram(i, j) == Approx(want_gram(i, j)).margin(tolerance * (1 + std::fabs(want_gram(i, j)))));
              const double want = expected[l].scores[i][j];
              if (std::isnan(want)) continue;
              CHECK(double(kernel.scores()(i, j)) == Approx(want).margin(tolerance * (1 + std::fabs(want))));
              CHECK(double(kernel.probs()(i, j)) == Approx(expected[l].probs[i][j]).margin(tolerance));
            }
        }
      }
}
