// An independent, deliberately plain reference of the parameter-free decoder (NOTES Sec. 2), written
// from the paper's equations with loops in double precision and std::vector storage; it shares no
// code with include/maskpos. Used by the tests as the ground truth for one sequence.
#pragma once

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace reference {

using Rows = std::vector<std::vector<double>>;

struct Layer {
  Rows scores;  // NaN where masked
  Rows probs;   // 0 where masked
  Rows output;
};

// norm: "l2", "layernorm", "rmsnorm", "none"; visible(i, j): the mask; scale: c.
inline std::vector<Layer> decoder(Rows x, int layers, const std::string& norm, double scale, bool residual,
                                  const std::function<bool(int, int)>& visible, double eps = 1e-12) {
  const int S = static_cast<int>(x.size());
  const int d = static_cast<int>(x[0].size());
  std::vector<Layer> out;
  for (int l = 0; l < layers; ++l) {
    Rows y = x;
    for (int i = 0; i < S; ++i) {
      double mean = 0, squares = 0;
      for (int k = 0; k < d; ++k) mean += x[i][k];
      mean /= d;
      for (int k = 0; k < d; ++k) squares += x[i][k] * x[i][k];
      double centred_var = 0;
      for (int k = 0; k < d; ++k) centred_var += (x[i][k] - mean) * (x[i][k] - mean);
      centred_var /= d;
      for (int k = 0; k < d; ++k) {
        if (norm == "l2") y[i][k] = x[i][k] / std::max(std::sqrt(squares), eps);
        else if (norm == "layernorm") y[i][k] = (x[i][k] - mean) / std::sqrt(centred_var + eps);
        else if (norm == "rmsnorm") y[i][k] = x[i][k] / std::sqrt(squares / d + eps);
      }
    }
    Layer layer;
    layer.scores.assign(S, std::vector<double>(S, std::numeric_limits<double>::quiet_NaN()));
    layer.probs.assign(S, std::vector<double>(S, 0.0));
    for (int i = 0; i < S; ++i) {
      double largest = -std::numeric_limits<double>::infinity();
      for (int j = 0; j < S; ++j) {
        if (!visible(i, j)) continue;
        double dot = 0;
        for (int k = 0; k < d; ++k) dot += y[i][k] * y[j][k];
        layer.scores[i][j] = scale * dot;
        largest = std::max(largest, layer.scores[i][j]);
      }
      double total = 0;
      for (int j = 0; j < S; ++j)
        if (visible(i, j)) total += std::exp(layer.scores[i][j] - largest);
      for (int j = 0; j < S; ++j)
        if (visible(i, j)) layer.probs[i][j] = std::exp(layer.scores[i][j] - largest) / total;
    }
    Rows next(S, std::vector<double>(d, 0.0));
    for (int i = 0; i < S; ++i)
      for (int k = 0; k < d; ++k) {
        double value = residual ? x[i][k] : 0.0;
        for (int j = 0; j < S; ++j) value += layer.probs[i][j] * y[j][k];
        next[i][k] = value;
      }
    x = next;
    layer.output = x;
    out.push_back(layer);
  }
  return out;
}

}  // namespace reference
