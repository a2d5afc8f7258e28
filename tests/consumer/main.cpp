// Fig. 1 through the consumer's own build: exits 0 when the layer-2 score (1,0) is 0.1535.
#include <maskpos/maskpos.hpp>

#include <cmath>
#include <cstdio>

int main() {
  maskpos::DecoderConfig config;
  config.layers = 2;
  const auto traces = maskpos::forward<double>(config, Eigen::MatrixXd::Identity(3, 3));
  const double score = traces[1].scores(1, 0);
  std::printf("maskpos %s: layer-2 score (1,0) = %.4f\n", maskpos::version_string, score);
  return std::fabs(score - 0.1535) < 5e-5 ? 0 : 1;
}
