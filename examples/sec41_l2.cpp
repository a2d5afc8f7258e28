// Paper Sec. 4.1 (l2norm.png, l2norm_alpha.png): B = 100000, S = 50, d = 64, 4 layers, L2
// normalisation, causal mask, alpha in {0, 0.2} and {0.4, 0.6, 0.8}. From layer 2 on the mean scores
// depend on position: low in the first key column, growing towards the diagonal, more so with depth
// and with alpha. Also reports, for alpha = 0.2, the largest difference between float and double
// runs and between two seeds.
//
// Usage: sec41_l2 [B] [threads] [out_dir]   (defaults: 100000, all cores, no files)
#include "sec41_summary.hpp"

int main(int argc, char** argv) {
  const auto options = sec41::Options::from_args(argc, argv);
  maskpos::DecoderConfig config;  // 4 layers, L2, scale 1, causal, residual
  fmt::print("Sec. 4.1: L2 normalisation, S = 50, d = 64, 4 layers, causal\n");
  maskpos::MonteCarloResult alpha02;
  for (double alpha : {0.0, 0.2, 0.4, 0.6, 0.8}) {
    auto result = sec41::report("l2", config, alpha, options);
    if (alpha == 0.2) alpha02 = std::move(result);
  }
  const auto in_double = sec41::run<double>(config, 0.2, options);
  const auto other_seed = sec41::run<float>(config, 0.2, options, 1);
  fmt::print("\nalpha = 0.2, largest |difference| per layer: float vs double (same seed) | seed 0 vs seed 1\n");
  for (std::size_t l = 0; l < alpha02.mean_scores.size(); ++l)
    fmt::print("  layer {}: {:9.2e} | {:9.2e}\n", l + 1,
               sec41::max_abs_difference(alpha02.mean_scores[l], in_double.mean_scores[l]),
               sec41::max_abs_difference(alpha02.mean_scores[l], other_seed.mean_scores[l]));
  return 0;
}
