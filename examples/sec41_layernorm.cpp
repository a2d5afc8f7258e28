// Paper Sec. 4.1 (layernorm.png): LayerNorm (no affine, eps 1e-12) instead of L2, scores divided by
// sqrt(d) (colour range [0, 8]) or by d (range [0, 1]); B = 100000, S = 50, d = 64, 4 layers, causal,
// alpha in {0, 0.2}. With / sqrt(d) the softmax is so sharp that almost nothing changes; with / d the
// positional pattern is strong. Where the softmax is sharp the large-width limit is off (the Monte
// Carlo mean is then the ground truth): compare the last column.
//
// Usage: sec41_layernorm [B] [threads] [out_dir]   (defaults: 100000, all cores, no files)
#include "sec41_summary.hpp"

int main(int argc, char** argv) {
  const auto options = sec41::Options::from_args(argc, argv);
  maskpos::DecoderConfig config;
  config.norm = maskpos::Norm::LayerNorm;
  fmt::print("Sec. 4.1: LayerNorm, S = 50, d = 64, 4 layers, causal\n");
  for (const auto& [label, scale] : {std::make_pair(std::string("layernorm_sqrt_d"), maskpos::ScoreScale::inv_sqrt_dim()),
                                     std::make_pair(std::string("layernorm_d"), maskpos::ScoreScale::inv_dim())}) {
    config.scale = scale;
    for (double alpha : {0.0, 0.2}) sec41::report(label, config, alpha, options);
  }
  return 0;
}
