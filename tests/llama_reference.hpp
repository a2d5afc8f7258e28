// A tiny random Llama-style model described as named tensors in Hugging Face's layout, and an
// independent, deliberately plain forward pass of it: loops in double over std::vector, written from
// the equations of the Llama architecture (RMSNorm with weight, grouped-query attention, RoPE in the
// half-split layout, causal softmax, SwiGLU, residuals). It shares no code with include/maskpos.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace llama_reference {

using Rows = std::vector<std::vector<double>>;

struct NamedTensor {
  std::vector<std::uint64_t> shape;
  std::vector<double> values;  // row-major
};

struct TinyModel {
  int vocab = 11, d = 8, F = 12, L = 2, H = 4, Hkv = 2, dh = 4;
  double eps = 1e-5;
  bool rope = true;
  double theta = 10000.0;
  std::map<std::string, NamedTensor> tensors;  // Hugging Face names

  double at(const std::string& name, std::size_t row, std::size_t col) const {
    const auto& t = tensors.at(name);
    return t.values[row * static_cast<std::size_t>(t.shape.back()) + col];
  }
};

// Values chosen to be exact in F32, F16 and BF16 (at most 7 significant bits, normal F16 exponents),
// so the same model is stored bit-exactly in every dtype:
//   projections k / 256, k in [-127, 127];  norm weights k / 64, k in [32, 127];  embeddings k / 32.
inline TinyModel make_tiny_model(unsigned seed, bool rope = true) {
  TinyModel m;
  m.rope = rope;
  std::mt19937 engine(seed);
  auto integer = [&](int low, int high) { return low + static_cast<int>(engine() % static_cast<unsigned>(high - low + 1)); };
  auto matrix = [&](int rows, int cols, double denominator, int low, int high) {
    NamedTensor t{{static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols)}, {}};
    for (int k = 0; k < rows * cols; ++k) t.values.push_back(integer(low, high) / denominator);
    return t;
  };
  auto vector = [&](int size) {
    NamedTensor t{{static_cast<std::uint64_t>(size)}, {}};
    for (int k = 0; k < size; ++k) t.values.push_back(integer(32, 127) / 64.0);
    return t;
  };
  m.tensors["model.embed_tokens.weight"] = matrix(m.vocab, m.d, 32.0, -127, 127);
  for (int l = 0; l < m.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m.tensors[p + "input_layernorm.weight"] = vector(m.d);
    m.tensors[p + "self_attn.q_proj.weight"] = matrix(m.H * m.dh, m.d, 256.0, -127, 127);
    m.tensors[p + "self_attn.k_proj.weight"] = matrix(m.Hkv * m.dh, m.d, 256.0, -127, 127);
    m.tensors[p + "self_attn.v_proj.weight"] = matrix(m.Hkv * m.dh, m.d, 256.0, -127, 127);
    m.tensors[p + "self_attn.o_proj.weight"] = matrix(m.d, m.H * m.dh, 256.0, -127, 127);
    m.tensors[p + "post_attention_layernorm.weight"] = vector(m.d);
    m.tensors[p + "mlp.gate_proj.weight"] = matrix(m.F, m.d, 256.0, -127, 127);
    m.tensors[p + "mlp.up_proj.weight"] = matrix(m.F, m.d, 256.0, -127, 127);
    m.tensors[p + "mlp.down_proj.weight"] = matrix(m.d, m.F, 256.0, -127, 127);
  }
  m.tensors["model.norm.weight"] = vector(m.d);
  return m;
}

// Everything one layer computes for one sequence.
struct Layer {
  Rows normed;     // Y
  Rows scores;     // c Q_h K_g^T averaged over heads, NaN where masked
  Rows attended;   // A V, heads side by side
  Rows projected;  // A V W_O^T
  Rows residual;   // O
  Rows post_norm;  // norm_2(O)
  Rows output;     // X'
};

inline Rows linear(const TinyModel& m, const Rows& x, const std::string& name) {
  const auto& t = m.tensors.at(name);
  const std::size_t out = t.shape[0], in = t.shape[1];
  Rows y(x.size(), std::vector<double>(out, 0.0));
  for (std::size_t i = 0; i < x.size(); ++i)
    for (std::size_t o = 0; o < out; ++o) {
      double sum = 0;
      for (std::size_t k = 0; k < in; ++k) sum += x[i][k] * t.values[o * in + k];
      y[i][o] = sum;
    }
  return y;
}

inline Rows rms_norm(const TinyModel& m, const Rows& x, const std::string& weight) {
  Rows y = x;
  for (std::size_t i = 0; i < x.size(); ++i) {
    double mean_square = 0;
    for (double v : x[i]) mean_square += v * v;
    mean_square /= static_cast<double>(x[i].size());
    for (std::size_t k = 0; k < x[i].size(); ++k)
      y[i][k] = m.tensors.at(weight).values[k] * x[i][k] / std::sqrt(mean_square + m.eps);
  }
  return y;
}

// Rotates every head of `x` (S x heads dh): pairs (j, j + dh/2), angle p theta^(-2j/dh) at position p.
inline void rotate(const TinyModel& m, Rows& x, int heads) {
  const int half = m.dh / 2;
  for (std::size_t p = 0; p < x.size(); ++p)
    for (int h = 0; h < heads; ++h)
      for (int j = 0; j < half; ++j) {
        const double angle = static_cast<double>(p) * std::pow(m.theta, -2.0 * j / m.dh);
        const double a = x[p][static_cast<std::size_t>(h * m.dh + j)], b = x[p][static_cast<std::size_t>(h * m.dh + j + half)];
        x[p][static_cast<std::size_t>(h * m.dh + j)] = a * std::cos(angle) - b * std::sin(angle);
        x[p][static_cast<std::size_t>(h * m.dh + j + half)] = b * std::cos(angle) + a * std::sin(angle);
      }
}

// The causal forward pass; returns every layer's intermediate results.
inline std::vector<Layer> forward(const TinyModel& m, const std::vector<std::int64_t>& ids) {
  const std::size_t S = ids.size();
  Rows x(S, std::vector<double>(static_cast<std::size_t>(m.d)));
  for (std::size_t i = 0; i < S; ++i)
    for (int k = 0; k < m.d; ++k) x[i][static_cast<std::size_t>(k)] = m.at("model.embed_tokens.weight", static_cast<std::size_t>(ids[i]), static_cast<std::size_t>(k));
  std::vector<Layer> layers;
  for (int l = 0; l < m.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer out;
    out.normed = rms_norm(m, x, p + "input_layernorm.weight");
    Rows q = linear(m, out.normed, p + "self_attn.q_proj.weight");
    Rows k = linear(m, out.normed, p + "self_attn.k_proj.weight");
    const Rows v = linear(m, out.normed, p + "self_attn.v_proj.weight");
    if (m.rope) {
      rotate(m, q, m.H);
      rotate(m, k, m.Hkv);
    }
    out.scores.assign(S, std::vector<double>(S, std::numeric_limits<double>::quiet_NaN()));
    out.attended.assign(S, std::vector<double>(static_cast<std::size_t>(m.H * m.dh), 0.0));
    for (int h = 0; h < m.H; ++h) {
      const int g = h / (m.H / m.Hkv);
      for (std::size_t i = 0; i < S; ++i) {
        std::vector<double> logits(i + 1);
        double largest = -std::numeric_limits<double>::infinity();
        for (std::size_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int c = 0; c < m.dh; ++c) dot += q[i][static_cast<std::size_t>(h * m.dh + c)] * k[j][static_cast<std::size_t>(g * m.dh + c)];
          logits[j] = dot / std::sqrt(static_cast<double>(m.dh));
          largest = std::max(largest, logits[j]);
          out.scores[i][j] = (h == 0 ? 0.0 : out.scores[i][j]) + logits[j] / m.H;
        }
        double total = 0;
        for (std::size_t j = 0; j <= i; ++j) total += std::exp(logits[j] - largest);
        for (std::size_t j = 0; j <= i; ++j) {
          const double prob = std::exp(logits[j] - largest) / total;
          for (int c = 0; c < m.dh; ++c)
            out.attended[i][static_cast<std::size_t>(h * m.dh + c)] += prob * v[j][static_cast<std::size_t>(g * m.dh + c)];
        }
      }
    }
    out.projected = linear(m, out.attended, p + "self_attn.o_proj.weight");
    out.residual = x;
    for (std::size_t i = 0; i < S; ++i)
      for (int c = 0; c < m.d; ++c) out.residual[i][static_cast<std::size_t>(c)] += out.projected[i][static_cast<std::size_t>(c)];
    out.post_norm = rms_norm(m, out.residual, p + "post_attention_layernorm.weight");
    const Rows gate = linear(m, out.post_norm, p + "mlp.gate_proj.weight");
    const Rows up = linear(m, out.post_norm, p + "mlp.up_proj.weight");
    Rows hidden = gate;
    for (std::size_t i = 0; i < S; ++i)
      for (int f = 0; f < m.F; ++f) {
        const double z = gate[i][static_cast<std::size_t>(f)];
        hidden[i][static_cast<std::size_t>(f)] = z / (1.0 + std::exp(-z)) * up[i][static_cast<std::size_t>(f)];
      }
    const Rows down = linear(m, hidden, p + "mlp.down_proj.weight");
    out.output = out.residual;
    for (std::size_t i = 0; i < S; ++i)
      for (int c = 0; c < m.d; ++c) out.output[i][static_cast<std::size_t>(c)] += down[i][static_cast<std::size_t>(c)];
    x = out.output;
    layers.push_back(out);
  }
  return layers;
}

// G = R R^T.
inline Rows gram(const Rows& rows) {
  Rows g(rows.size(), std::vector<double>(rows.size(), 0.0));
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (std::size_t j = 0; j < rows.size(); ++j)
      for (std::size_t k = 0; k < rows[i].size(); ++k) g[i][j] += rows[i][k] * rows[j][k];
  return g;
}

}  // namespace llama_reference
