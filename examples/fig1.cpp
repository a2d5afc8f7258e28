// Paper Fig. 1: three orthonormal tokens, L2 normalisation, causal mask, two layers.
// Prints the layer-2 score matrix: (1,0) = 0.1535, (2,0) = 0.1321, (2,1) = 0.1508.
#include <maskpos/decoder.hpp>

#include <fmt/core.h>

int main() {
  maskpos::DecoderConfig config;
  config.layers = 2;
  const auto traces = maskpos::forward<double>(config, Eigen::MatrixXd::Identity(3, 3));
  for (std::size_t layer = 0; layer < traces.size(); ++layer) {
    fmt::print("layer {} scores (query rows, key columns; masked entries blank)\n", layer + 1);
    const auto& scores = traces[layer].scores;
    for (Eigen::Index i = 0; i < scores.rows(); ++i) {
      for (Eigen::Index j = 0; j <= i; ++j) fmt::print(" {:7.4f}", scores(i, j));
      fmt::print("\n");
    }
  }
  return 0;
}
