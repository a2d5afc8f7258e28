// The large-width limit (mean_field.hpp) against the Monte Carlo driver (monte_carlo.hpp).
//
// Prints, for the paper's Sec. 4.1 setting (L2, alpha = 0.2, S = 50, 4 layers), the largest |difference|
// between the Monte Carlo mean scores and the limit per layer at d = 64, 256 and 1024, with the largest
// Monte Carlo standard error and the noise-corrected RMS bias; then the LayerNorm cases where the limit
// is accurate (scores / d) and where it is not (scores / sqrt(d)); the RoPE case of Sec. 5.1; and timings.
//
// Usage: mean_field_vs_monte_carlo [samples per run, default 10000] [threads, default 2]
#include <maskpos/analysis.hpp>
#include <maskpos/gram.hpp>
#include <maskpos/mean_field.hpp>
#include <maskpos/monte_carlo.hpp>

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

struct Difference {
  double largest = 0, largest_se = 0, bias_rms = 0;
};

// Over the visible entries: max |MC - limit|, max SE, and sqrt(mean(diff^2) - mean(SE^2)) (the RMS bias).
Difference compare(const Eigen::MatrixXd& mean, const Eigen::MatrixXd& error, const Eigen::MatrixXd& limit) {
  Difference out;
  double squares = 0, variances = 0;
  int count = 0;
  for (Eigen::Index j = 0; j < limit.cols(); ++j)
    for (Eigen::Index i = 0; i < limit.rows(); ++i)
      if (!std::isnan(limit(i, j))) {
        const double gap = mean(i, j) - limit(i, j);
        out.largest = std::max(out.largest, std::fabs(gap));
        out.largest_se = std::max(out.largest_se, error(i, j));
        squares += gap * gap;
        variances += error(i, j) * error(i, j);
        ++count;
      }
  out.bias_rms = std::sqrt(std::max(0.0, (squares - variances) / count));
  return out;
}

double off_diagonal_correlation(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  double n = 0, sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
  for (Eigen::Index j = 0; j < a.cols(); ++j)
    for (Eigen::Index i = 0; i < a.rows(); ++i)
      if (i != j && !std::isnan(a(i, j)) && !std::isnan(b(i, j))) {
        n += 1, sa += a(i, j), sb += b(i, j), saa += a(i, j) * a(i, j), sbb += b(i, j) * b(i, j), sab += a(i, j) * b(i, j);
      }
  return (sab - sa * sb / n) / std::sqrt((saa - sa * sa / n) * (sbb - sb * sb / n));
}

void table(const std::string& title, const maskpos::DecoderConfig& config, double alpha, const std::vector<int>& dims,
           const maskpos::MonteCarloOptions& options) {
  fmt::print("\n{} (alpha = {}, S = 50, B = {} per width)\n", title, alpha, options.samples);
  fmt::print("{:>6} {:>6} {:>14} {:>12} {:>12}\n", "d", "layer", "max|MC-limit|", "max SE", "bias RMS");
  for (int d : dims) {
    const auto limit_start = Clock::now();
    const auto limit = maskpos::mean_field<double>(config, maskpos::MeanFieldInputs::alpha(50, alpha), d);
    const double limit_ms = seconds_since(limit_start) * 1e3;
    const auto start = Clock::now();
    const auto run = maskpos::monte_carlo<float>(config, maskpos::InputSpec::gaussian(50, d, alpha), options);
    const double elapsed = seconds_since(start);
    for (std::size_t l = 0; l < limit.scores.size(); ++l) {
      const Difference gap = compare(run.mean_scores[l], run.stderr_scores[l], limit.scores[l]);
      fmt::print("{:>6} {:>6} {:>14.5f} {:>12.5f} {:>12.5f}\n", d, l + 1, gap.largest, gap.largest_se, gap.bias_rms);
    }
    fmt::print("{:>6} (Monte Carlo {:.1f} s on {} threads; limit {:.3f} ms)\n", "", elapsed, options.threads, limit_ms);
  }
}

}  // namespace

int main(int argc, char** argv) {
  maskpos::MonteCarloOptions options;
  options.samples = argc > 1 ? std::atoll(argv[1]) : 10000;
  options.threads = argc > 2 ? std::atoi(argv[2]) : 2;
  options.seed = 2509;

  maskpos::DecoderConfig l2;  // 4 layers, L2, causal, residual, score scale 1 (paper Sec. 4.1)
  table("L2, scores x 1", l2, 0.2, {64, 256, 1024}, options);

  maskpos::DecoderConfig layer_norm = l2;
  layer_norm.norm = maskpos::Norm::LayerNorm;
  layer_norm.scale = maskpos::ScoreScale::inv_dim();
  table("LayerNorm, scores / d (soft softmax: the limit is accurate)", layer_norm, 0.2, {64, 256}, options);
  layer_norm.scale = maskpos::ScoreScale::inv_sqrt_dim();
  table("LayerNorm, scores / sqrt(d) (sharp softmax: fluctuations matter)", layer_norm, 0.2, {64, 256}, options);

  maskpos::DecoderConfig rope = l2;
  rope.rope = maskpos::RopeConfig{};  // theta 10000, rotary dim = d, half-split (paper Sec. 5.1)
  fmt::print("\nRoPE (theta 10000, d = 64, alpha = 0.5, causal): correlation of the diagonal-normalized patterns\n");
  {
    const auto limit = maskpos::mean_field<double>(rope, maskpos::MeanFieldInputs::alpha(50, 0.5), 64);
    const auto run = maskpos::monte_carlo<float>(rope, maskpos::InputSpec::gaussian(50, 64, 0.5), options);
    for (std::size_t l = 0; l < limit.scores.size(); ++l) {
      const Difference gap = compare(run.mean_scores[l], run.stderr_scores[l], limit.scores[l]);
      fmt::print("  layer {}: correlation {:.5f}, max|MC-limit| {:.5f} (max SE {:.5f})\n", l + 1,
                 l == 0 ? std::nan("") : off_diagonal_correlation(maskpos::diagonal_normalize(run.mean_scores[l]),
                                                                  maskpos::diagonal_normalize(limit.scores[l])),
                 gap.largest, gap.largest_se);
    }
  }

  fmt::print("\nTimings (one thread for the limit)\n");
  {
    const auto inputs = maskpos::MeanFieldInputs::alpha(50, 0.2);
    const int repeats = 2000;
    const auto start = Clock::now();
    double sink = 0;
    for (int r = 0; r < repeats; ++r) sink += maskpos::mean_field<double>(l2, inputs, 64).scores[3](49, 0);
    fmt::print("  limit, S = 50, 4 layers, no RoPE:          {:9.1f} us per call  (checksum {:.4f})\n",
               seconds_since(start) / repeats * 1e6, sink / repeats);
  }
  {
    const auto inputs = maskpos::MeanFieldInputs::alpha(50, 0.5);
    const int repeats = 200;
    const auto start = Clock::now();
    for (int r = 0; r < repeats; ++r) (void)maskpos::mean_field<double>(rope, inputs, 64);
    fmt::print("  limit, S = 50, 4 layers, RoPE d = 64:      {:9.1f} us per call\n", seconds_since(start) / repeats * 1e6);
  }
  {
    const auto inputs = maskpos::MeanFieldInputs::alpha(1024, 0.5);
    const auto start = Clock::now();
    const auto limit = maskpos::mean_field<double>(rope, inputs, 128);
    fmt::print("  limit, S = 1024, 4 layers, RoPE d = 128:   {:9.1f} ms per call  (score (1023, 0) = {:.4f})\n",
               seconds_since(start) * 1e3, limit.scores[3](1023, 0));
  }
  {
    // One sequence at d much larger than S: Gram space against feature space.
    maskpos::InputGenerator generator(maskpos::InputSpec::gaussian(50, 8192, 0.2), 1);
    Eigen::MatrixXf tokens;
    generator.generate(0, tokens);
    const int repeats = 20;
    auto start = Clock::now();
    for (int r = 0; r < repeats; ++r) (void)maskpos::forward<float>(l2, tokens);
    const double feature = seconds_since(start) / repeats;
    start = Clock::now();
    for (int r = 0; r < repeats; ++r) (void)maskpos::forward_gram<float>(l2, tokens);
    const double gram = seconds_since(start) / repeats;
    fmt::print("  one sequence S = 50, d = 8192, 4 layers:   forward {:.2f} ms, forward_gram {:.2f} ms (incl. X X^T)\n",
               feature * 1e3, gram * 1e3);
  }
  return 0;
}
