// Draws a paper-like figure (Sec. 4.1, compare /work/shared/paper/figures/l2norm.png): mean scores of
// the parameter-free L2 decoder, S = 50, d = 64, 4 layers, alpha = 0.2, 5000 samples; top row the raw
// means on [0, 1], bottom row the diagonal-normalized means. Writes figure_demo.png and figure_demo.svg
// into the current directory (or the directory given as the first argument).
#include <maskpos/analysis.hpp>
#include <maskpos/figure.hpp>
#include <maskpos/monte_carlo.hpp>

#include <fmt/core.h>

#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  try {
    const std::string directory = argc > 1 ? std::string(argv[1]) + "/" : std::string();
    maskpos::DecoderConfig config;  // 4 layers, L2, causal mask, residual
    const auto inputs = maskpos::InputSpec::gaussian(50, 64, 0.2);
    maskpos::MonteCarloOptions options;
    options.samples = 5000;
    const auto result = maskpos::monte_carlo<float>(config, inputs, options);

    std::vector<maskpos::Matrix<double>> normalized;
    for (const auto& scores : result.mean_scores) normalized.push_back(maskpos::diagonal_normalize(scores));
    maskpos::LayerGridOptions grid_options;
    grid_options.raw_vmin = 0.0;  // the paper's colour range for the raw L2 scores
    grid_options.raw_vmax = 1.0;
    const auto grid = maskpos::layer_grid("L2 normalisation, causal mask, \u03b1 = 0.2 (5000 samples)",
                                          result.mean_scores, normalized, grid_options);
    for (const char* extension : {".png", ".svg"}) {
      const std::string path = directory + "figure_demo" + extension;
      maskpos::save_figure(grid, path);
      fmt::print("wrote {}\n", path);
    }
    return 0;
  } catch (const std::exception& error) {
    fmt::print(stderr, "figure_demo: {}\n", error.what());
    return 1;
  }
}
