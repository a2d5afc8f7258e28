#include <maskpos/decoder.hpp>
#include <maskpos/llama.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include "llama_reference.hpp"
#include "reference.hpp"

using maskpos::LlamaConfig;
using maskpos::LlamaLayerWeights;
using maskpos::LlamaModel;
using maskpos::Mask;
using maskpos::Norm;

namespace {

template <class Scalar>
maskpos::Matrix<Scalar> tensor_matrix(const llama_reference::TinyModel& m, const std::string& name) {
  const auto& t = m.tensors.at(name);
  maskpos::Matrix<Scalar> result(static_cast<Eigen::Index>(t.shape[0]), static_cast<Eigen::Index>(t.shape[1]));
  for (Eigen::Index i = 0; i < result.rows(); ++i)
    for (Eigen::Index j = 0; j < result.cols(); ++j)
      result(i, j) = static_cast<Scalar>(t.values[static_cast<std::size_t>(i * result.cols() + j)]);
  return result;
}

template <class Scalar>
maskpos::Vector<Scalar> tensor_vector(const llama_reference::TinyModel& m, const std::string& name) {
  const auto& t = m.tensors.at(name);
  maskpos::Vector<Scalar> result(static_cast<Eigen::Index>(t.shape[0]));
  for (Eigen::Index i = 0; i < result.size(); ++i) result(i) = static_cast<Scalar>(t.values[static_cast<std::size_t>(i)]);
  return result;
}

LlamaConfig tiny_config(const llama_reference::TinyModel& m) {
  LlamaConfig config;
  config.vocab_size = m.vocab;
  config.hidden_size = m.d;
  config.intermediate_size = m.F;
  config.layers = m.L;
  config.heads = m.H;
  config.kv_heads = m.Hkv;
  config.head_dim = m.dh;
  config.norm = Norm::RMSNorm;
  config.norm_eps = m.eps;
  if (m.rope) {
    maskpos::RopeConfig rope;
    rope.theta = m.theta;
    config.rope = rope;
  }
  return config;
}

// The tiny model placed into maskpos's in-memory structures by hand (not through the loader).
template <class Scalar>
LlamaModel<Scalar> to_model(const llama_reference::TinyModel& m) {
  std::vector<LlamaLayerWeights<Scalar>> layers;
  for (int l = 0; l < m.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LlamaLayerWeights<Scalar> w;
    w.input_norm_weight = tensor_vector<Scalar>(m, p + "input_layernorm.weight");
    w.q_proj = tensor_matrix<Scalar>(m, p + "self_attn.q_proj.weight");
    w.k_proj = tensor_matrix<Scalar>(m, p + "self_attn.k_proj.weight");
    w.v_proj = tensor_matrix<Scalar>(m, p + "self_attn.v_proj.weight");
    w.o_proj = tensor_matrix<Scalar>(m, p + "self_attn.o_proj.weight");
    w.post_norm_weight = tensor_vector<Scalar>(m, p + "post_attention_layernorm.weight");
    w.gate_proj = tensor_matrix<Scalar>(m, p + "mlp.gate_proj.weight");
    w.up_proj = tensor_matrix<Scalar>(m, p + "mlp.up_proj.weight");
    w.down_proj = tensor_matrix<Scalar>(m, p + "mlp.down_proj.weight");
    layers.push_back(std::move(w));
  }
  return LlamaModel<Scalar>(tiny_config(m), tensor_matrix<Scalar>(m, "model.embed_tokens.weight"), std::move(layers));
}

// Tolerance of the tiny model's forward pass in the compute type. Each output entry is reached
// through a chain of about 8 dot products per block (norm, Q/K/V, scores, A V, W_O, gate/up, down),
// each of length n <= 16 (d = 8, H d_h = 16, F = 12, S <= 7), i.e. a relative error of at most
// n u per product (Higham's gamma_n), 2 blocks: 2 * 8 * 16 u = 256 u. The softmax, the RMSNorm and
// silu are well conditioned at these magnitudes (scores are O(1)) and at most quadruple it:
// 1024 u relative to max(1, |value|).
template <class Scalar>
double forward_tolerance(double value) {
  return 1024 * static_cast<double>(std::numeric_limits<Scalar>::epsilon()) * std::max(1.0, std::fabs(value));
}

template <class Scalar, class MatrixType>
void check_close(const MatrixType& actual, const llama_reference::Rows& expected, const std::string& what) {
  REQUIRE(actual.rows() == static_cast<Eigen::Index>(expected.size()));
  for (std::size_t i = 0; i < expected.size(); ++i) {
    REQUIRE(actual.cols() == static_cast<Eigen::Index>(expected[i].size()));
    for (std::size_t j = 0; j < expected[i].size(); ++j) {
      const double want = expected[i][j];
      const double got = static_cast<double>(actual(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)));
      INFO(what << " (" << i << ", " << j << "): got " << got << ", want " << want);
      if (std::isnan(want)) {
        CHECK(std::isnan(got));
      } else {
        CHECK(std::fabs(got - want) <= forward_tolerance<Scalar>(want));
      }
    }
  }
}

const std::vector<std::int64_t> kTokens = {3, 0, 10, 7, 7, 1, 4};

}  // namespace

TEMPLATE_TEST_CASE("the Llama forward pass matches an independent plain-loop reference", "", float, double) {
  for (const bool rope : {true, false}) {
    INFO((rope ? "RoPE" : "NoPE"));
    const auto tiny = llama_reference::make_tiny_model(17, rope);
    auto model = to_model<TestType>(tiny);
    const auto traces = maskpos::llama_forward(model, kTokens);
    const auto expected = llama_reference::forward(tiny, kTokens);
    REQUIRE(traces.size() == 2);
    for (std::size_t l = 0; l < 2; ++l) {
      check_close<TestType>(traces[l].scores, expected[l].scores, "scores layer " + std::to_string(l));
      check_close<TestType>(traces[l].output, expected[l].output, "output layer " + std::to_string(l));
      // Head-averaged probabilities: each head's causal row sums to 1 within S rounded terms.
      for (Eigen::Index i = 0; i < traces[l].probs.rows(); ++i)
        CHECK(static_cast<double>(traces[l].probs.row(i).sum()) ==
              Approx(1.0).margin(16 * std::numeric_limits<TestType>::epsilon()));
    }
  }
}

TEMPLATE_TEST_CASE("the sub-step trace and the per-layer mean scores match the reference averaged over a batch", "",
                   float, double) {
  const auto tiny = llama_reference::make_tiny_model(5, true);
  auto model = to_model<TestType>(tiny);
  const std::vector<maskpos::TokenIds> batch = {{1, 2, 3, 4, 5}, {9, 9, 0, 2, 6}};
  std::vector<std::vector<llama_reference::Layer>> runs;
  for (const auto& ids : batch) runs.push_back(llama_reference::forward(tiny, ids));
  // Batch mean of a per-sequence matrix, computed from the reference runs.
  auto mean = [&](const std::function<llama_reference::Rows(const std::vector<llama_reference::Layer>&)>& pick) {
    llama_reference::Rows total = pick(runs[0]);
    const auto second = pick(runs[1]);
    for (std::size_t i = 0; i < total.size(); ++i)
      for (std::size_t j = 0; j < total[i].size(); ++j) total[i][j] = (total[i][j] + second[i][j]) / 2;
    return total;
  };
  using llama_reference::gram;
  const auto trace = maskpos::llama_substep_trace(model, batch, 0);
  CHECK(trace.layer == 0);
  check_close<TestType>(trace.normed_gram, mean([](const auto& r) { return gram(r[0].normed); }), "(a)");
  check_close<TestType>(trace.scores, mean([](const auto& r) { return r[0].scores; }), "(b)");
  check_close<TestType>(trace.attended_gram, mean([](const auto& r) { return gram(r[0].attended); }), "(c)");
  check_close<TestType>(trace.projected_gram, mean([](const auto& r) { return gram(r[0].projected); }), "(d)");
  check_close<TestType>(trace.residual_gram, mean([](const auto& r) { return gram(r[0].residual); }), "(e)");
  check_close<TestType>(trace.post_norm_gram, mean([](const auto& r) { return gram(r[0].post_norm); }), "(f)");
  check_close<TestType>(trace.output_gram, mean([](const auto& r) { return gram(r[0].output); }), "(g)");
  check_close<TestType>(trace.next_normed_gram, mean([](const auto& r) { return gram(r[1].normed); }), "(h)");
  check_close<TestType>(trace.next_scores, mean([](const auto& r) { return r[1].scores; }), "(i)");

  const auto panels = trace.panels();
  REQUIRE(panels.size() == 9);
  CHECK(panels.front().name == "a_normed_gram");
  CHECK(panels.back().name == "i_next_scores");
  CHECK(panels[1].title == "Q(1) K(1)^T / sqrt(d)");

  // The last block has no "next" panels.
  const auto last = maskpos::llama_substep_trace(model, batch, 1);
  CHECK(last.panels().size() == 7);
  check_close<TestType>(last.scores, mean([](const auto& r) { return r[1].scores; }), "layer 2 (b)");

  const auto means = maskpos::llama_mean_scores(model, batch);
  REQUIRE(means.size() == 2);
  for (std::size_t l = 0; l < 2; ++l)
    check_close<TestType>(means[l], mean([l](const auto& r) { return r[l].scores; }), "mean scores " + std::to_string(l));
}

namespace {

// A model whose block is the parameter-free layer: identity projections, one head of width d,
// no feed-forward, no norm weights; the embedding table holds the input tokens as rows 0..S-1.
template <class Scalar>
LlamaModel<Scalar> identity_model(const Eigen::MatrixXd& tokens, int layers, Norm norm, double eps, double scale,
                                  const Mask& mask) {
  const Eigen::Index S = tokens.rows(), d = tokens.cols();
  LlamaConfig config;
  config.vocab_size = S;
  config.hidden_size = d;
  config.layers = layers;
  config.heads = config.kv_heads = 1;
  config.head_dim = d;
  config.feed_forward = false;
  config.norm = norm;
  config.norm_eps = eps;
  config.attention_scale = scale;
  config.mask = mask;
  LlamaLayerWeights<Scalar> w;
  w.q_proj = w.k_proj = w.v_proj = w.o_proj = maskpos::Matrix<Scalar>::Identity(d, d);
  return LlamaModel<Scalar>(config, tokens.cast<Scalar>(),
                            std::vector<LlamaLayerWeights<Scalar>>(static_cast<std::size_t>(layers), w));
}

Eigen::MatrixXd uniform_tokens(int S, int d, unsigned seed) {
  std::mt19937 engine(seed);
  Eigen::MatrixXd tokens(S, d);
  for (int i = 0; i < S; ++i)
    for (int k = 0; k < d; ++k) tokens(i, k) = static_cast<double>(engine()) / 4294967296.0 - 0.5;
  return tokens;
}

}  // namespace

TEMPLATE_TEST_CASE("with identity projections, one head and no feed-forward the block is the parameter-free decoder",
                   "", float, double) {
  const int S = 7, d = 6, L = 3;
  const Eigen::MatrixXd tokens = uniform_tokens(S, d, 11);
  maskpos::TokenIds ids;
  for (int i = 0; i < S; ++i) ids.push_back(i);
  reference::Rows rows(S, std::vector<double>(d));
  for (int i = 0; i < S; ++i)
    for (int k = 0; k < d; ++k) rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)] = tokens(i, k);
  const std::vector<std::pair<Mask, std::function<bool(int, int)>>> masks = {
      {Mask::causal(), [](int i, int j) { return j <= i; }},
      {Mask::bidirectional(), [](int, int) { return true; }},
      {Mask::sliding_window(2), [](int i, int j) { return j <= i && j > i - 2; }},
      {Mask::prefix_lm(3), [](int i, int j) { return j <= i || j < 3; }}};
  // Unit rows and scores in [-1, 1] (L2) or O(sqrt(d)) (RMSNorm / sqrt(d)): 3 layers of dot products of
  // length <= 7 plus a softmax: 1e3 epsilons of the compute type, relative to max(1, |value|), as in
  // test_decoder.cpp.
  const double tolerance = 1e3 * static_cast<double>(std::numeric_limits<TestType>::epsilon());
  for (const auto& [mask, visible] : masks) {
    for (const std::string norm : {"l2", "rmsnorm"}) {
      INFO(mask.name() << ", " << norm);
      const double eps = norm == "l2" ? 1e-12 : 1e-6;
      const double scale = norm == "l2" ? 1.0 : 1.0 / std::sqrt(static_cast<double>(d));
      auto model = identity_model<TestType>(tokens, L, norm == "l2" ? Norm::L2 : Norm::RMSNorm, eps, scale, mask);
      const auto traces = maskpos::llama_forward(model, ids);
      const auto expected = reference::decoder(rows, L, norm, scale, true, visible, eps);
      for (int l = 0; l < L; ++l)
        for (int i = 0; i < S; ++i)
          for (int j = 0; j < S; ++j) {
            const double want = expected[static_cast<std::size_t>(l)].scores[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
            const double got = static_cast<double>(traces[static_cast<std::size_t>(l)].scores(i, j));
            if (std::isnan(want)) CHECK(std::isnan(got));
            else CHECK(std::fabs(got - want) <= tolerance * std::max(1.0, std::fabs(want)));
          }
    }
  }

  // With RoPE on queries and keys (values unrotated in both), against maskpos::forward.
  maskpos::RopeConfig rope;
  rope.theta = 100.0;
  maskpos::DecoderConfig decoder;
  decoder.layers = L;
  decoder.rope = rope;
  auto model = identity_model<TestType>(tokens, L, Norm::L2, 1e-12, 1.0, Mask::causal());
  model.set_rope(rope);
  const auto traces = maskpos::llama_forward(model, ids);
  const auto expected = maskpos::forward<double>(decoder, tokens);
  for (int l = 0; l < L; ++l)
    for (int i = 0; i < S; ++i)
      for (int j = 0; j <= i; ++j)
        CHECK(static_cast<double>(traces[static_cast<std::size_t>(l)].scores(i, j)) ==
              Approx(expected[static_cast<std::size_t>(l)].scores(i, j)).margin(tolerance));
}

TEST_CASE("bad inputs to the Llama model are rejected with std::invalid_argument") {
  const auto tiny = llama_reference::make_tiny_model(3, true);
  auto model = to_model<double>(tiny);
  CHECK_THROWS_WITH(maskpos::llama_forward(model, {0, 11}), Catch::Contains("token id #1") && Catch::Contains("vocab_size = 11"));
  CHECK_THROWS_AS(maskpos::llama_forward(model, {-1}), std::invalid_argument);
  CHECK_THROWS_AS(maskpos::llama_forward(model, {}), std::invalid_argument);
  CHECK_THROWS_WITH(maskpos::llama_mean_scores(model, {{1, 2}, {1, 2, 3}}), Catch::Contains("length of sequence #1"));
  CHECK_THROWS_WITH(maskpos::llama_substep_trace(model, {{1, 2}}, 2), Catch::Contains("trace layer l"));

  LlamaConfig config = tiny_config(tiny);
  config.kv_heads = 3;
  CHECK_THROWS_WITH(config.validate(), Catch::Contains("kv_heads"));
  config = tiny_config(tiny);
  config.head_dim = 3;  // odd: RoPE needs pairs
  CHECK_THROWS_WITH(config.validate(), Catch::Contains("rotary_dim"));

  // A block whose k_proj has the shape of q_proj (no grouped-query attention).
  std::vector<LlamaLayerWeights<double>> layers(2, model.layer(0));
  layers[1].k_proj = layers[1].q_proj;
  CHECK_THROWS_WITH(LlamaModel<double>(tiny_config(tiny), model.embedding(), layers),
                    Catch::Contains("layer 1 k_proj shape") && Catch::Contains("[8, 8]"));
  CHECK_THROWS_WITH(LlamaModel<double>(tiny_config(tiny), model.embedding().topRows(4), layers),
                    Catch::Contains("embedding shape"));
}
