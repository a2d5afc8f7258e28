// Paper Sec. 5.1: RoPE x causal mask. B = 100000 sequences, S = 50, d = 64, 4 layers, L2, RoPE with
// theta = 10000 (half-split, r = d); alpha in {0, 0.5} with the causal mask and alpha = 0 with the
// bidirectional mask. Prints, per layer, the spread of the diagonal-normalised mean scores (each
// diagonal i - j minus its own mean: the paper's bottom-row view) next to the Monte Carlo standard
// error. Causal: the spread exceeds the error by far from layer 2 on (a non-relative pattern).
// Bidirectional: spread of the order of the noise (the paper: about 1e-3).
//
// Usage: sec51_rope [B] [threads]   (defaults: 100000, all cores)
#include <maskpos/analysis.hpp>
#include <maskpos/monte_carlo.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

struct Case {
  std::string label;
  maskpos::Mask mask;
  double alpha;
};

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t samples = argc > 1 ? std::atoll(argv[1]) : 100000;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 0;
  const maskpos::Index S = 50, d = 64, layers = 4;

  maskpos::DecoderConfig config;
  config.layers = layers;
  config.norm = maskpos::Norm::L2;
  config.rope = maskpos::RopeConfig::paper();  // theta 10000, r = d, half-split

  const std::vector<Case> cases = {{"causal, alpha = 0", maskpos::Mask::causal(), 0.0},
                                   {"causal, alpha = 0.5", maskpos::Mask::causal(), 0.5},
                                   {"bidirectional, alpha = 0", maskpos::Mask::bidirectional(), 0.0}};
  fmt::print("Sec. 5.1: RoPE (theta 10000) + L2, B = {}, S = {}, d = {}, {} layers (float)\n", samples, S, d, layers);
  fmt::print("spread = max - min, rms = root mean square of the diagonal-normalised mean scores (off-diagonal);\n"
             "se = median standard error of a mean score; max|z| = largest |normalised| / se\n");
  for (const Case& c : cases) {
    config.mask = c.mask;
    maskpos::MonteCarloOptions options;
    options.samples = samples;
    options.threads = threads;
    options.seed = 51;
    const auto start = std::chrono::steady_clock::now();
    const auto result = maskpos::monte_carlo<float>(config, maskpos::InputSpec::gaussian(S, d, c.alpha), options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print("\n{} ({:.1f} s, {} values out of range)\n", c.label, seconds, result.out_of_range);
    fmt::print("  layer    spread       rms        se     max|z|  non-relative fraction\n");
    for (maskpos::Index l = 0; l < layers; ++l) {
      const auto& mean = result.mean_scores[static_cast<std::size_t>(l)];
      const auto& error = result.stderr_scores[static_cast<std::size_t>(l)];
      const auto normalized = maskpos::diagonal_normalize(mean);
      double low = 0, high = 0, squares = 0, z = 0;
      std::vector<double> errors;
      for (maskpos::Index i = 0; i < S; ++i)
        for (maskpos::Index j = 0; j < S; ++j) {
          if (i == j || std::isnan(normalized(i, j))) continue;
          const double v = normalized(i, j);
          low = std::min(low, v);
          high = std::max(high, v);
          squares += v * v;
          errors.push_back(error(i, j));
          z = std::max(z, std::fabs(v) / error(i, j));
        }
      std::nth_element(errors.begin(), errors.begin() + static_cast<long>(errors.size() / 2), errors.end());
      fmt::print("  {:5d}  {:9.2e}  {:9.2e}  {:9.2e}  {:8.1f}  {:8.3f}\n", l + 1, high - low,
                 std::sqrt(squares / static_cast<double>(errors.size())), errors[errors.size() / 2], z,
                 maskpos::non_relative_fraction(mean));
    }
  }
  return 0;
}
