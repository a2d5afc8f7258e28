#include <maskpos/analysis.hpp>
#include <maskpos/decoder.hpp>
#include <maskpos/monte_carlo.hpp>
#include <maskpos/rope.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

using maskpos::DecoderConfig;
using maskpos::Index;
using maskpos::Mask;
using maskpos::Norm;
using maskpos::RopeConfig;
using maskpos::RopeLayout;
using maskpos::RopeScaling;
using maskpos::RopeScalingKind;
using maskpos::RotaryEmbedding;

namespace {

const double kPi = 3.14159265358979323846;

Eigen::MatrixXd random_rows(Index S, Index d, unsigned seed) {
  // std::mt19937 is fully specified by the standard; only its raw output is used here.
  std::mt19937 engine(seed);
  Eigen::MatrixXd rows(S, d);
  for (Index i = 0; i < S; ++i)
    for (Index k = 0; k < d; ++k) rows(i, k) = static_cast<double>(engine()) / 4294967296.0 - 0.5;
  return rows;
}

// Plain RoPE frequencies theta^(-2k/r), written from the RoFormer definition.
std::vector<double> plain_frequencies(double theta, int r) {
  std::vector<double> f(static_cast<std::size_t>(r / 2));
  for (int k = 0; k < r / 2; ++k) f[static_cast<std::size_t>(k)] = 1.0 / std::pow(theta, 2.0 * k / r);
  return f;
}

// One configuration of every scaling variant, small enough for d = 12 (r = 10 rotary coordinates),
// with parameters chosen so that each variant actually changes some frequencies at S = 40.
std::vector<RopeConfig> every_variant(RopeLayout layout) {
  std::vector<RopeConfig> configs;
  auto add = [&](RopeScaling scaling) {
    RopeConfig c;
    c.theta = 500.0;
    c.rotary_dim = 10;
    c.layout = layout;
    c.position_offset = 3.5;
    c.scaling = std::move(scaling);
    configs.push_back(c);
  };
  add(RopeScaling::none());
  add(RopeScaling::linear(4.0));
  add(RopeScaling::dynamic_ntk(4.0, 16.0));
  add(RopeScaling::yarn(4.0, 64.0));
  add(RopeScaling::llama3(8.0, 1.0, 4.0, 64.0));
  add(RopeScaling::longrope({1.0, 1.1, 1.3, 2.0, 3.0}, {1.0, 1.5, 2.5, 6.0, 9.0}, 4.0, 16.0));
  return configs;
}

// The half-split coordinate j < r/2 pairs with j + r/2; interleaved pair k is (2k, 2k + 1).
// to_interleaved[c] is the interleaved index of half-split coordinate c (identity beyond r).
std::vector<Index> to_interleaved(Index r, Index d) {
  std::vector<Index> map(static_cast<std::size_t>(d));
  for (Index c = 0; c < d; ++c) map[static_cast<std::size_t>(c)] = c;
  for (Index j = 0; j < r / 2; ++j) {
    map[static_cast<std::size_t>(j)] = 2 * j;
    map[static_cast<std::size_t>(j + r / 2)] = 2 * j + 1;
  }
  return map;
}

// ---- an independent reference decoder with RoPE (plain loops, double, std::vector) ----------------

using Rows = std::vector<std::vector<double>>;

// Rotation of one row at position p with frequencies f and attention factor m, straight from the
// definition: pair (a, b) -> m (a cos - b sin, b cos + a sin), rest unchanged.
std::vector<double> rotate(const std::vector<double>& y, double p, const std::vector<double>& f, double m,
                           bool interleaved) {
  std::vector<double> out = y;
  const std::size_t half = f.size();
  for (std::size_t k = 0; k < half; ++k) {
    const std::size_t i1 = interleaved ? 2 * k : k, i2 = interleaved ? 2 * k + 1 : k + half;
    const double phi = p * f[k];
    out[i1] = m * (y[i1] * std::cos(phi) - y[i2] * std::sin(phi));
    out[i2] = m * (y[i2] * std::cos(phi) + y[i1] * std::sin(phi));
  }
  return out;
}

struct ReferenceLayer {
  Rows scores, probs;
};

std::vector<ReferenceLayer> reference_decoder(Rows x, int layers, const std::string& norm, double scale,
                                              const std::function<bool(int, int)>& visible,
                                              const std::vector<double>& f, double m, bool interleaved,
                                              double offset) {
  const int S = static_cast<int>(x.size()), d = static_cast<int>(x[0].size());
  std::vector<ReferenceLayer> out;
  for (int l = 0; l < layers; ++l) {
    Rows y = x, q = x;
    for (int i = 0; i < S; ++i) {
      double mean = 0, squares = 0, var = 0;
      for (double v : x[i]) mean += v / d;
      for (double v : x[i]) squares += v * v;
      for (double v : x[i]) var += (v - mean) * (v - mean) / d;
      for (int k = 0; k < d; ++k) {
        if (norm == "l2") y[i][k] = x[i][k] / std::max(std::sqrt(squares), 1e-12);
        if (norm == "layernorm") y[i][k] = (x[i][k] - mean) / std::sqrt(var + 1e-12);
        if (norm == "rmsnorm") y[i][k] = x[i][k] / std::sqrt(squares / d + 1e-12);
      }
      q[i] = rotate(y[i], i + offset, f, m, interleaved);
    }
    ReferenceLayer layer;
    layer.scores.assign(S, std::vector<double>(S, std::numeric_limits<double>::quiet_NaN()));
    layer.probs.assign(S, std::vector<double>(S, 0.0));
    for (int i = 0; i < S; ++i) {
      double largest = -std::numeric_limits<double>::infinity(), total = 0;
      for (int j = 0; j < S; ++j)
        if (visible(i, j)) {
          double dot = 0;
          for (int k = 0; k < d; ++k) dot += q[i][k] * q[j][k];
          layer.scores[i][j] = scale * dot;
          largest = std::max(largest, layer.scores[i][j]);
        }
      for (int j = 0; j < S; ++j)
        if (visible(i, j)) total += std::exp(layer.scores[i][j] - largest);
      for (int j = 0; j < S; ++j)
        if (visible(i, j)) layer.probs[i][j] = std::exp(layer.scores[i][j] - largest) / total;
    }
    Rows next(S, std::vector<double>(d));
    for (int i = 0; i < S; ++i)
      for (int k = 0; k < d; ++k) {
        double v = x[i][k];  // residual; values are the normalised, unrotated rows
        for (int j = 0; j < S; ++j) v += layer.probs[i][j] * y[j][k];
        next[i][k] = v;
      }
    x = next;
    out.push_back(layer);
  }
  return out;
}

}  // namespace

// ---- geometry ---------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("every variant and layout: the rotated part keeps its norm (times m), the rest passes through",
                   "", float, double) {
  using Scalar = TestType;
  const Index S = 40, d = 12;
  const Eigen::MatrixXd x = random_rows(S, d, 7);
  for (RopeLayout layout : {RopeLayout::HalfSplit, RopeLayout::Interleaved})
    for (const RopeConfig& config : every_variant(layout)) {
      INFO(maskpos::to_string(config.scaling.kind) << " " << maskpos::to_string(layout));
      RotaryEmbedding<Scalar> rope(config, d, S);
      const double m = rope.frequencies().attention_factor;
      maskpos::Matrix<Scalar> y = x.cast<Scalar>();
      rope.apply(y);
      const Index r = 10;
      for (Index i = 0; i < S; ++i) {
        // Rotated coordinates: the layout's pairs cover exactly 0..r-1 in both layouts.
        const double before = x.row(i).head(r).norm();
        const double after = y.row(i).head(r).template cast<double>().norm();
        // Each coordinate is a two-term combination with rounded cos/sin: a few epsilons relative.
        CHECK(after == Approx(m * before).epsilon(16 * std::numeric_limits<Scalar>::epsilon()));
        for (Index k = r; k < d; ++k) CHECK(y(i, k) == static_cast<Scalar>(x(i, k)));  // bit for bit
      }
    }
}

TEMPLATE_TEST_CASE("every variant: q(m).k(n) = q(m + t).k(n + t) (scores are relative)", "", float, double) {
  using Scalar = TestType;
  const Index d = 12;
  const Eigen::MatrixXd uv = random_rows(2, d, 11);
  for (RopeLayout layout : {RopeLayout::HalfSplit, RopeLayout::Interleaved})
    for (RopeConfig config : every_variant(layout))
      for (double t : {1.0, 37.0, 1000.0, -5.25}) {
        INFO(maskpos::to_string(config.scaling.kind) << " t = " << t);
        const double m0 = 9.0, n0 = 2.0;
        // Context length 40 for every row: dynamic NTK and LongRoPE pick one frequency set for the
        // whole sequence (as in Hugging Face), so all four rows share it.
        RotaryEmbedding<Scalar> rope(config, d, {m0, n0, m0 + t, n0 + t}, 40);
        maskpos::Matrix<Scalar> rows(4, d);
        rows.row(0) = uv.row(0).cast<Scalar>();
        rows.row(1) = uv.row(1).cast<Scalar>();
        rows.row(2) = uv.row(0).cast<Scalar>();
        rows.row(3) = uv.row(1).cast<Scalar>();
        rope.apply(rows);
        const double before = static_cast<double>(rows.row(0).dot(rows.row(1)));
        const double after = static_cast<double>(rows.row(2).dot(rows.row(3)));
        // Error budget: cos/sin rounded to Scalar (1 eps each), 2 roundings in each rotated coordinate
        // and d roundings in the dot product; |entries| <= 0.5, m <= 1.3, so the dot is bounded by
        // d * (m * 0.5 * sqrt(2))^2 < 11. Angles are formed in double: |angle| <= 1009 gives a
        // double argument error of ~1009 * 2^-53, negligible against float and < 1e-12 in double.
        const double eps = std::numeric_limits<Scalar>::epsilon();
        CHECK(std::fabs(before - after) <= (d + 8) * eps * 11.0 + 1e-12);
      }
}

TEST_CASE("the two layouts give identical rotated rows and scores after the coordinate permutation") {
  const Index S = 9, d = 14, r = 10;
  const Eigen::MatrixXd x = random_rows(S, d, 3);
  const auto map = to_interleaved(r, d);
  Eigen::MatrixXd x_interleaved(S, d);
  for (Index c = 0; c < d; ++c) x_interleaved.col(map[static_cast<std::size_t>(c)]) = x.col(c);
  for (RopeConfig config : every_variant(RopeLayout::HalfSplit)) {
    INFO(maskpos::to_string(config.scaling.kind));
    RopeConfig interleaved = config;
    interleaved.layout = RopeLayout::Interleaved;
    Eigen::MatrixXd half_rows = x, inter_rows = x_interleaved;
    RotaryEmbedding<double>(config, d, S).apply(half_rows);
    RotaryEmbedding<double>(interleaved, d, S).apply(inter_rows);
    // Same pair values, same cos/sin, same operations: bit-identical after the permutation.
    for (Index c = 0; c < d; ++c) CHECK((inter_rows.col(map[static_cast<std::size_t>(c)]).array() == half_rows.col(c).array()).all());
    const Eigen::MatrixXd half_scores = half_rows * half_rows.transpose();
    const Eigen::MatrixXd inter_scores = inter_rows * inter_rows.transpose();
    // Only the summation order differs: d roundings on terms below 0.5^2 * 2 m^2.
    CHECK((half_scores - inter_scores).cwiseAbs().maxCoeff() <= d * 4.0 * std::numeric_limits<double>::epsilon());
  }
}

TEST_CASE("r < d leaves coordinates r..d-1 untouched and rotates the first r") {
  const Index S = 6, d = 16;
  const Eigen::MatrixXd x = random_rows(S, d, 5);
  for (RopeLayout layout : {RopeLayout::HalfSplit, RopeLayout::Interleaved})
    for (Index r : {2, 6, 10, 16}) {
      RopeConfig config;
      config.rotary_dim = r;
      config.layout = layout;
      Eigen::MatrixXd y = x;
      RotaryEmbedding<double>(config, d, S).apply(y);
      CHECK((y.rightCols(d - r).array() == x.rightCols(d - r).array()).all());
      // Position 0 has angle 0 (unchanged); every later row changes in pair 0 (theta_0 = 1 rad).
      CHECK((y.row(0).array() == x.row(0).array()).all());
      for (Index i = 1; i < S; ++i) CHECK((y.row(i).head(r) - x.row(i).head(r)).cwiseAbs().maxCoeff() > 1e-3);
    }
}

TEST_CASE("plain RoPE matches the paper's formula (Sec. 5.1, NOTES Sec. 2) with r < d and an offset") {
  const Index S = 7, d = 10;
  const Eigen::MatrixXd x = random_rows(S, d, 9);
  for (bool interleaved : {false, true}) {
    RopeConfig config;
    config.theta = 10000.0;
    config.rotary_dim = 8;
    config.position_offset = 100.0;
    config.layout = interleaved ? RopeLayout::Interleaved : RopeLayout::HalfSplit;
    Eigen::MatrixXd y = x;
    RotaryEmbedding<double>(config, d, S).apply(y);
    const auto f = plain_frequencies(10000.0, 8);
    for (Index i = 0; i < S; ++i) {
      std::vector<double> row(static_cast<std::size_t>(d));
      for (Index k = 0; k < d; ++k) row[static_cast<std::size_t>(k)] = x(i, k);
      const auto expected = rotate(row, 100.0 + static_cast<double>(i), f, 1.0, interleaved);
      // Angles up to 106 rad: argument error 106 * 2^-53 plus a few roundings.
      for (Index k = 0; k < d; ++k) CHECK(y(i, k) == Approx(expected[static_cast<std::size_t>(k)]).margin(1e-13));
    }
  }
}

// ---- frequency sets against the published formulas --------------------------------------------------

TEST_CASE("Llama-3.1-8B: pairs 0-28 unchanged, 29-34 smoothed, 35-63 divided by 8") {
  const auto preset = maskpos::rope_preset("llama3.1-8b");
  const auto freqs = maskpos::rope_frequencies(preset.rope, preset.head_dim, 50);
  const auto plain = plain_frequencies(500000.0, 128);
  REQUIRE(freqs.inv_freq.size() == 64);
  CHECK(freqs.attention_factor == 1.0);
  // Wavelength 2 pi 500000^(k/64) crosses 8192/4 = 2048 at k = 28.22 and 8192/1 at k = 34.98.
  for (std::size_t k = 0; k < 64; ++k) {
    INFO("pair " << k);
    const double rel = 1e-14;
    if (k <= 28) {
      CHECK(freqs.inv_freq[k] == Approx(plain[k]).epsilon(rel));
    } else if (k >= 35) {
      CHECK(freqs.inv_freq[k] == Approx(plain[k] / 8.0).epsilon(rel));
    } else {
      // llama.cpp's conversion script writes the same rule as a divisor: 1 / ((1 - mu)/8 + mu),
      // mu = (8192 / wavelength - 1) / (4 - 1).
      const double wavelength = 2 * kPi / plain[k];
      const double mu = (8192.0 / wavelength - 1.0) / 3.0;
      CHECK(mu > 0.0);
      CHECK(mu < 1.0);
      CHECK(freqs.inv_freq[k] == Approx(plain[k] / (1.0 / ((1.0 - mu) / 8.0 + mu))).epsilon(rel));
    }
  }
}

TEST_CASE("YaRN (Qwen3, d = 128, theta = 1e6, context 32768, factor 4): 0-23 unchanged, 40+ divided by 4") {
  const auto preset = maskpos::rope_preset("qwen3-8b-yarn");
  const auto freqs = maskpos::rope_frequencies(preset.rope, preset.head_dim, 50);
  const auto plain = plain_frequencies(1e6, 128);
  // Correction dims by hand: 128 ln(32768 / (2 pi 32)) / (2 ln 1e6) = 23.60 -> floor 23;
  // 128 ln(32768 / (2 pi)) / (2 ln 1e6) = 39.65 -> ceil 40. Ramp (k - 23) / 17.
  for (std::size_t k = 0; k < 64; ++k) {
    INFO("pair " << k);
    const double ramp = std::min(1.0, std::max(0.0, (static_cast<double>(k) - 23.0) / 17.0));
    const double expected = plain[k] * (1.0 - ramp) + plain[k] / 4.0 * ramp;
    CHECK(freqs.inv_freq[k] == Approx(expected).epsilon(1e-14));
    if (k <= 23) CHECK(freqs.inv_freq[k] == Approx(plain[k]).epsilon(1e-14));
    if (k >= 40) CHECK(freqs.inv_freq[k] == Approx(plain[k] / 4.0).epsilon(1e-14));
  }
  // 0.1 ln 4 + 1 = 1.138629...
  CHECK(freqs.attention_factor == Approx(1.13863).margin(5e-6));

  // truncate = false: the ramp runs between the unrounded dims 23.596 and 39.651.
  RopeConfig untruncated = preset.rope;
  untruncated.scaling.truncate = false;
  const auto smooth = maskpos::rope_frequencies(untruncated, 128, 50);
  const double low = 128 * std::log(32768.0 / (2 * kPi * 32)) / (2 * std::log(1e6));
  const double high = 128 * std::log(32768.0 / (2 * kPi)) / (2 * std::log(1e6));
  CHECK(low == Approx(23.596).margin(1e-3));
  CHECK(high == Approx(39.651).margin(1e-3));
  for (std::size_t k = 0; k < 64; ++k) {
    const double ramp = std::min(1.0, std::max(0.0, (static_cast<double>(k) - low) / (high - low)));
    CHECK(smooth.inv_freq[k] == Approx(plain[k] * (1.0 - ramp) + plain[k] / 4.0 * ramp).epsilon(1e-14));
  }

  // DeepSeek-V3 style: mscale = mscale_all_dim = 1 gives the ratio 1; an explicit factor wins.
  RopeConfig deepseek = preset.rope;
  deepseek.scaling.factor = 40.0;
  deepseek.scaling.mscale = 1.0;
  deepseek.scaling.mscale_all_dim = 1.0;
  CHECK(maskpos::rope_frequencies(deepseek, 128, 50).attention_factor == 1.0);
  deepseek.scaling.mscale = 0.707;
  CHECK(maskpos::rope_frequencies(deepseek, 128, 50).attention_factor ==
        Approx((0.1 * 0.707 * std::log(40.0) + 1) / (0.1 * std::log(40.0) + 1)).epsilon(1e-15));
  deepseek.scaling.attention_factor = 0.5;
  CHECK(maskpos::rope_frequencies(deepseek, 128, 50).attention_factor == 0.5);
}

TEST_CASE("linear and dynamic NTK scaling follow their closed forms") {
  RopeConfig config;
  config.theta = 10000.0;
  config.scaling = RopeScaling::linear(4.0);
  const auto plain = plain_frequencies(10000.0, 64);
  auto linear = maskpos::rope_frequencies(config, 64, 50);
  for (std::size_t k = 0; k < 32; ++k) CHECK(linear.inv_freq[k] == Approx(plain[k] / 4.0).epsilon(1e-15));

  config.scaling = RopeScaling::dynamic_ntk(2.0, 2048.0);
  // Within the original context nothing changes.
  const auto inside = maskpos::rope_frequencies(config, 64, 2048);
  for (std::size_t k = 0; k < 32; ++k) CHECK(inside.inv_freq[k] == Approx(plain[k]).epsilon(1e-15));
  // Beyond it, L = 8192: the base becomes theta (2 * 4 - 1)^(64/62), by design the lowest frequency
  // theta^(-62/64) is divided by exactly 2 * 8192 / 2048 - 1 = 7 and theta_0 = 1 stays.
  const auto outside = maskpos::rope_frequencies(config, 64, 8192);
  CHECK(outside.inv_freq[0] == 1.0);
  CHECK(outside.inv_freq[31] == Approx(plain[31] / 7.0).epsilon(1e-14));
  const double base = 10000.0 * std::pow(7.0, 64.0 / 62.0);
  for (std::size_t k = 0; k < 32; ++k)
    CHECK(outside.inv_freq[k] == Approx(std::pow(base, -2.0 * static_cast<double>(k) / 64.0)).epsilon(1e-14));
  // The decoder's embedding uses the largest position + 1 as the context: offset 8142 + S = 50.
  config.position_offset = 8142.0;
  RotaryEmbedding<double> rope(config, 64, 50);
  CHECK(rope.frequencies().inv_freq[31] == Approx(plain[31] / 7.0).epsilon(1e-14));
}

TEST_CASE("LongRoPE: short factors up to the original context, long beyond, sqrt(1 + ln s / ln L0)") {
  // Phi-3-mini-128k's shape of configuration: factor 131072 / 4096 = 32, so the default attention
  // factor is sqrt(1 + ln 32 / ln 4096) = sqrt(1 + 5/12) = sqrt(17/12).
  std::vector<double> short_factor(4), long_factor(4);
  for (std::size_t k = 0; k < 4; ++k) {
    short_factor[k] = 1.0 + 0.1 * static_cast<double>(k);
    long_factor[k] = 2.0 + 3.0 * static_cast<double>(k);
  }
  RopeConfig config;
  config.scaling = RopeScaling::longrope(short_factor, long_factor, 32.0, 4096.0);
  const auto plain = plain_frequencies(10000.0, 8);
  const auto within = maskpos::rope_frequencies(config, 8, 4096);
  const auto beyond = maskpos::rope_frequencies(config, 8, 4097);
  for (std::size_t k = 0; k < 4; ++k) {
    CHECK(within.inv_freq[k] == Approx(plain[k] / short_factor[k]).epsilon(1e-15));
    CHECK(beyond.inv_freq[k] == Approx(plain[k] / long_factor[k]).epsilon(1e-15));
  }
  CHECK(within.attention_factor == Approx(std::sqrt(17.0 / 12.0)).epsilon(1e-15));
}

TEST_CASE("presets and names round-trip, unknown names are rejected") {
  for (const auto& name : maskpos::rope_preset_names()) {
    const auto preset = maskpos::rope_preset(name);
    CHECK(preset.name == name);
    CHECK(preset.head_dim == 128);
    CHECK(maskpos::rope_frequencies(preset.rope, preset.head_dim, 50).inv_freq.size() == 64);
  }
  CHECK(maskpos::rope_preset("qwen3-8b").rope.theta == 1e6);
  CHECK(maskpos::rope_preset("qwen3-8b").rope.scaling.kind == RopeScalingKind::None);
  CHECK(maskpos::rope_preset("phi-4").rope.theta == 250000.0);
  CHECK(maskpos::rope_preset("phi-4").rope.scaling.kind == RopeScalingKind::None);
  const auto llama = maskpos::rope_preset("llama3.1-8b").rope;
  CHECK(llama.theta == 500000.0);
  CHECK(llama.scaling.kind == RopeScalingKind::Llama3);
  CHECK(llama.scaling.factor == 8.0);
  CHECK(llama.scaling.low_freq_factor == 1.0);
  CHECK(llama.scaling.high_freq_factor == 4.0);
  CHECK(llama.scaling.original_max_position == 8192.0);
  // Qwen3-8B: theta^(-2k/128) with theta = 1e6, i.e. 10^(-6k/64).
  const auto qwen = maskpos::rope_frequencies(maskpos::rope_preset("qwen3-8b").rope, 128, 50);
  for (std::size_t k = 0; k < 64; ++k)
    CHECK(qwen.inv_freq[k] == Approx(std::pow(10.0, -6.0 * static_cast<double>(k) / 64.0)).epsilon(1e-14));
  CHECK_THROWS_WITH(maskpos::rope_preset("llama-2"), Catch::Contains("rope preset"));
  // A preset fixes r = head_dim, so a narrower decoder is refused rather than silently changed.
  CHECK_THROWS_WITH(maskpos::rope_frequencies(llama, 64, 50), Catch::Contains("rotary_dim"));

  for (RopeScalingKind kind : {RopeScalingKind::None, RopeScalingKind::Linear, RopeScalingKind::DynamicNtk,
                               RopeScalingKind::Yarn, RopeScalingKind::Llama3, RopeScalingKind::LongRope})
    CHECK(maskpos::parse_rope_scaling_kind(maskpos::to_string(kind)) == kind);
  CHECK(maskpos::to_string(RopeScalingKind::Yarn) == "yarn");
  CHECK(maskpos::parse_rope_scaling_kind("default") == RopeScalingKind::None);
  CHECK_THROWS_WITH(maskpos::parse_rope_scaling_kind("ntk-by-parts"), Catch::Contains("rope scaling"));
  for (RopeLayout layout : {RopeLayout::HalfSplit, RopeLayout::Interleaved})
    CHECK(maskpos::parse_rope_layout(maskpos::to_string(layout)) == layout);
  CHECK(maskpos::parse_rope_layout("neox") == RopeLayout::HalfSplit);
  CHECK(maskpos::parse_rope_layout("gptj") == RopeLayout::Interleaved);
  CHECK_THROWS_WITH(maskpos::parse_rope_layout("diagonal"), Catch::Contains("rope layout"));
}

TEST_CASE("float tensors get double-precision angles: no error growth with the position") {
  RopeConfig config;
  config.theta = 10000.0;
  const Index d = 8;
  const std::vector<double> positions = {3.0, 1234.0, 131071.0, 1000003.0};
  RotaryEmbedding<float> rope(config, d, positions, 1000004);
  Eigen::MatrixXf rows = Eigen::MatrixXf::Ones(4, d);
  rope.apply(rows);
  const auto f = plain_frequencies(10000.0, 8);
  double worst = 0, worst_naive = 0;
  for (std::size_t i = 0; i < positions.size(); ++i) {
    const auto exact = rotate(std::vector<double>(d, 1.0), positions[i], f, 1.0, false);
    for (Index k = 0; k < d; ++k)
      worst = std::max(worst, std::fabs(rows(static_cast<Index>(i), k) - exact[static_cast<std::size_t>(k)]));
    // What a float32 angle (as in Hugging Face's float32 inv_freq @ position_ids) would give.
    for (std::size_t k = 1; k < 4; ++k) {
      const float phi = static_cast<float>(positions[i]) * static_cast<float>(f[k]);
      worst_naive = std::max(worst_naive, std::fabs(std::cos(static_cast<double>(phi)) - std::cos(positions[i] * f[k])));
    }
  }
  // Only cos/sin are rounded to float, then one product and one sum of |values| <= 1: 4 float epsilons.
  CHECK(worst <= 4 * std::numeric_limits<float>::epsilon());
  // The float32-angle alternative is off by orders of magnitude at p = 1e6 (absolute angle error
  // ~ p theta_k 2^-24 ~ 1e-2): the test above would catch a float angle.
  CHECK(worst_naive > 1000 * std::numeric_limits<float>::epsilon());
}

// ---- decoder integration ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("the decoder with RoPE matches an independent reference for every mask, norm and layout", "",
                   float, double) {
  using Scalar = TestType;
  const int S = 7, d = 10;
  const Eigen::MatrixXd tokens = random_rows(S, d, 21);
  Rows rows(S, std::vector<double>(d));
  for (int i = 0; i < S; ++i)
    for (int k = 0; k < d; ++k) rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)] = tokens(i, k);
  struct MaskCase {
    Mask mask;
    std::function<bool(int, int)> visible;
  };
  const std::vector<MaskCase> masks = {{Mask::causal(), [](int i, int j) { return j <= i; }},
                                       {Mask::bidirectional(), [](int, int) { return true; }},
                                       {Mask::sliding_window(3), [](int i, int j) { return j <= i && j > i - 3; }},
                                       {Mask::prefix_lm(3), [](int i, int j) { return j <= i || j < 3; }}};
  const std::vector<std::pair<Norm, std::string>> norms = {
      {Norm::L2, "l2"}, {Norm::LayerNorm, "layernorm"}, {Norm::RMSNorm, "rmsnorm"}, {Norm::None, "none"}};
  for (const auto& mask_case : masks)
    for (const auto& [norm, norm_name] : norms)
      for (bool interleaved : {false, true}) {
        DecoderConfig config;
        config.layers = 3;
        config.mask = mask_case.mask;
        config.norm = norm;
        config.scale = norm == Norm::L2 ? maskpos::ScoreScale::one() : maskpos::ScoreScale::inv_dim();
        RopeConfig rope;
        rope.theta = 100.0;
        rope.rotary_dim = 8;
        rope.position_offset = 2.0;
        rope.layout = interleaved ? RopeLayout::Interleaved : RopeLayout::HalfSplit;
        rope.scaling = RopeScaling::yarn(2.0, 16.0, 4.0, 1.0);  // attention factor 1.069 scales the scores
        config.rope = rope;
        // Reference frequencies from the YaRN formula, independently: theta = 100, r = 8, L0 = 16,
        // dims 8 ln(16/(2 pi 4))/(2 ln 100) = -0.39 -> 0 and 8 ln(16/(2 pi))/(2 ln 100) = 0.81 -> 1.
        const auto plain = plain_frequencies(100.0, 8);
        std::vector<double> f = {plain[0], plain[1] / 2.0, plain[2] / 2.0, plain[3] / 2.0};
        const double m = 0.1 * std::log(2.0) + 1.0;
        const auto expected = reference_decoder(rows, 3, norm_name, config.scale.factor(d), mask_case.visible, f, m,
                                                interleaved, 2.0);
        const auto traces = maskpos::forward<Scalar>(config, tokens);
        INFO(config.mask.name() << " " << norm_name << (interleaved ? " interleaved" : " half-split"));
        // Scores are O(1) (L2) or O(1) after the 1/d scale; errors grow mildly over 3 layers: 256 eps.
        const double tolerance = 256 * std::numeric_limits<Scalar>::epsilon() * (norm == Norm::None ? 8.0 : 1.0);
        for (int l = 0; l < 3; ++l)
          for (int i = 0; i < S; ++i)
            for (int j = 0; j < S; ++j) {
              const double want = expected[static_cast<std::size_t>(l)].scores[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
              const double got = static_cast<double>(traces[static_cast<std::size_t>(l)].scores(i, j));
              if (std::isnan(want)) {
                CHECK(std::isnan(got));
              } else {
                CHECK(got == Approx(want).margin(tolerance * std::max(1.0, std::fabs(want))));
              }
            }
      }
}

TEMPLATE_TEST_CASE("the decoder's rotation tables: whole-packet and scalar paths match the reference", "", float, double) {
  // d = 40 with r = 32 (half 16, a whole number of packets for float and double: the packet path)
  // and r = 30 (half 15: the scalar path), both layouts (interleaved always takes the scalar path).
  using Scalar = TestType;
  const int S = 13, d = 40;
  const Eigen::MatrixXd tokens = random_rows(S, d, 5);
  Rows rows(S, std::vector<double>(d));
  for (int i = 0; i < S; ++i)
    for (int k = 0; k < d; ++k) rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)] = tokens(i, k);
  for (int rotary : {32, 30})
    for (bool interleaved : {false, true})
      for (Norm norm : {Norm::L2, Norm::LayerNorm}) {
        DecoderConfig config;
        config.layers = 2;
        config.norm = norm;
        config.scale = maskpos::ScoreScale::inv_sqrt_dim();
        RopeConfig rope;
        rope.theta = 500.0;
        rope.rotary_dim = rotary;
        rope.layout = interleaved ? RopeLayout::Interleaved : RopeLayout::HalfSplit;
        config.rope = rope;
        const auto expected = reference_decoder(rows, 2, norm == Norm::L2 ? "l2" : "layernorm", config.scale.factor(d),
                                                [](int i, int j) { return j <= i; }, plain_frequencies(500.0, rotary),
                                                1.0, interleaved, 0.0);
        const auto traces = maskpos::forward<Scalar>(config, tokens);
        INFO("r = " << rotary << (interleaved ? " interleaved " : " half-split ") << (norm == Norm::L2 ? "l2" : "layernorm"));
        // Scores are at most sqrt(d) = 6.3 after the 1/sqrt(d) scale under LayerNorm; 40-term dot
        // products over two layers: 256 epsilons relative to max(1, |score|), as above.
        const double tolerance = 256 * std::numeric_limits<Scalar>::epsilon();
        for (int l = 0; l < 2; ++l)
          for (int i = 0; i < S; ++i)
            for (int j = 0; j <= i; ++j) {
              const double want = expected[static_cast<std::size_t>(l)].scores[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
              const double got = static_cast<double>(traces[static_cast<std::size_t>(l)].scores(i, j));
              CHECK(got == Approx(want).margin(tolerance * std::max(1.0, std::fabs(want))));
            }
      }
}

TEST_CASE("the Monte Carlo driver runs RoPE with every mask and norm, all values in range") {
  const auto inputs = maskpos::InputSpec::gaussian(8, 16, 0.3);
  maskpos::MonteCarloOptions options;
  options.samples = 64;
  options.threads = 2;
  for (Mask mask : {Mask::causal(), Mask::bidirectional(), Mask::sliding_window(3), Mask::prefix_lm(2)})
    for (Norm norm : {Norm::L2, Norm::LayerNorm, Norm::RMSNorm, Norm::None}) {
      DecoderConfig config;
      config.layers = 3;
      config.mask = mask;
      config.norm = norm;
      config.scale = maskpos::ScoreScale::inv_dim();
      RopeConfig rope;
      rope.scaling = RopeScaling::yarn(4.0, 4.0);
      config.rope = rope;
      const auto result = maskpos::monte_carlo<float>(config, inputs, options);
      INFO(mask.name() << " " << maskpos::to_string(norm));
      CHECK(result.out_of_range == 0);
      for (Index l = 0; l < 3; ++l)
        for (Index i = 0; i < 8; ++i)
          for (Index j = 0; j < 8; ++j)
            CHECK(std::isnan(result.mean_scores[static_cast<std::size_t>(l)](i, j)) == !mask.visible(i, j));
    }
}

TEST_CASE("Sec. 5.1: RoPE + causal mask is non-relative from layer 2 on, bidirectional stays relative") {
  // Small version of the paper's run (S = 50, d = 64, B = 1e5): S = 16, d = 32, B = 20000, 4 layers, L2.
  const Index S = 16, layers = 4;
  const auto inputs = maskpos::InputSpec::gaussian(S, 32, 0.0);
  maskpos::MonteCarloOptions options;
  options.samples = 20000;
  options.seed = 51;
  options.threads = 2;
  DecoderConfig config;
  config.layers = layers;
  config.rope = RopeConfig::paper();
  // z = (diagonal-normalised mean) / (standard error of the mean) per visible off-diagonal entry.
  // Under "purely relative" each z is at most about N(0, 1) in size (subtracting the diagonal's mean
  // only shrinks the variance); over at most 240 entries, P(max |z| > 5) < 240 * 5.7e-7 = 1.4e-4.
  auto largest_z = [&](const maskpos::MonteCarloResult& result, Index l) {
    const auto normalized = maskpos::diagonal_normalize(result.mean_scores[static_cast<std::size_t>(l)]);
    double z = 0;
    for (Index i = 0; i < S; ++i)
      for (Index j = 0; j < S; ++j)
        if (i != j && !std::isnan(normalized(i, j)))
          z = std::max(z, std::fabs(normalized(i, j)) / result.stderr_scores[static_cast<std::size_t>(l)](i, j));
    return z;
  };
  config.mask = Mask::bidirectional();
  const auto bidirectional = maskpos::monte_carlo<float>(config, inputs, options);
  for (Index l = 0; l < layers; ++l) {
    INFO("bidirectional layer " << l + 1);
    CHECK(largest_z(bidirectional, l) < 5.0);
  }
  config.mask = Mask::causal();
  const auto causal = maskpos::monte_carlo<float>(config, inputs, options);
  {
    INFO("causal layer 1");
    CHECK(largest_z(causal, 0) < 5.0);
  }
  for (Index l = 1; l < layers; ++l) {
    INFO("causal layer " << l + 1);
    CHECK(largest_z(causal, l) > 20.0);
  }
}

// ---- bad input ---------------------------------------------------------------------------------------

TEST_CASE("bad RoPE input raises std::invalid_argument naming the parameter") {
  auto fails_with = [](RopeConfig config, Index dim, const std::string& needle) {
    try {
      maskpos::rope_frequencies(config, dim, 16);
      FAIL("no exception for " << needle);
    } catch (const std::invalid_argument& error) {
      CHECK_THAT(error.what(), Catch::Contains(needle));
    }
  };
  RopeConfig c;
  c.rotary_dim = 7;
  fails_with(c, 16, "rotary_dim");
  c.rotary_dim = 18;
  fails_with(c, 16, "rotary_dim");
  c = RopeConfig{};
  c.theta = 0.0;
  fails_with(c, 16, "theta");
  c.theta = -3.0;
  fails_with(c, 16, "theta");
  for (auto scaling : {RopeScaling::linear(0.0), RopeScaling::dynamic_ntk(-1.0, 8.0), RopeScaling::yarn(0.0, 8.0),
                       RopeScaling::llama3(-2.0, 1.0, 4.0, 8192.0)}) {
    c = RopeConfig{};
    c.scaling = scaling;
    fails_with(c, 16, "factor");
  }
  c = RopeConfig{};
  c.scaling = RopeScaling::yarn(4.0, 4096.0, 1.0, 1.0);
  fails_with(c, 16, "beta_fast");
  c.scaling = RopeScaling::yarn(4.0, 4096.0, 0.5, 1.0);
  fails_with(c, 16, "beta_fast");
  c.scaling = RopeScaling::yarn(4.0, 0.0);
  fails_with(c, 16, "original_max_position");
  c.scaling = RopeScaling::llama3(8.0, 4.0, 4.0, 8192.0);
  fails_with(c, 16, "high_freq_factor");
  c.scaling = RopeScaling::longrope({1.0, 1.0}, {1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0}, 4.0, 16.0);
  fails_with(c, 16, "short_factor length");
  c = RopeConfig{};
  c.position_offset = std::numeric_limits<double>::infinity();
  fails_with(c, 16, "position_offset");
  // Through the decoder: the same message.
  DecoderConfig decoder;
  RopeConfig odd;
  odd.rotary_dim = 3;
  decoder.rope = odd;
  CHECK_THROWS_WITH(maskpos::forward<double>(decoder, Eigen::MatrixXd::Identity(4, 4)), Catch::Contains("rotary_dim"));
}
