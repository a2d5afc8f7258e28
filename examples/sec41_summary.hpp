// Shared by sec41_l2 and sec41_layernorm: run one Sec. 4.1 configuration, print a per-layer summary
// next to the large-width limit, and optionally write the mean scores as .npy.
#pragma once

#include <maskpos/maskpos.hpp>

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>

namespace sec41 {

struct Options {
  std::int64_t samples = 100000;
  int threads = 0;
  std::string out_dir;  ///< empty: no files

  static Options from_args(int argc, char** argv) {
    Options options;
    if (argc > 1) options.samples = std::atoll(argv[1]);
    if (argc > 2) options.threads = std::atoi(argv[2]);
    if (argc > 3) options.out_dir = argv[3];
    return options;
  }
};

/// Largest |a - b| over the entries where both are finite.
inline double max_abs_difference(const maskpos::Matrix<double>& a, const maskpos::Matrix<double>& b) {
  return (a - b).array().isNaN().select(0.0, (a - b).array().abs()).maxCoeff();
}

template <class Scalar>
maskpos::MonteCarloResult run(const maskpos::DecoderConfig& config, double alpha, const Options& options,
                              std::uint64_t seed = 0) {
  maskpos::MonteCarloOptions mc;
  mc.samples = options.samples;
  mc.threads = options.threads;
  mc.seed = seed;
  return maskpos::monte_carlo<Scalar>(config, maskpos::InputSpec::gaussian(50, 64, alpha), mc);
}

/// Runs one configuration (S = 50, d = 64) and prints: per layer the mean of the first key column,
/// of the keys next to the diagonal and of all off-diagonal keys, the non-relative fraction, the
/// largest standard error, and the largest difference from the large-width limit.
inline maskpos::MonteCarloResult report(const std::string& label, const maskpos::DecoderConfig& config, double alpha,
                                        const Options& options) {
  const auto start = std::chrono::steady_clock::now();
  const auto result = run<float>(config, alpha, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto theory = maskpos::mean_field<double>(config, maskpos::MeanFieldInputs::alpha(50, alpha), 64);
  fmt::print("\n{}, alpha = {} (B = {}, {:.2f} s)\n", label, alpha, result.samples, seconds);
  fmt::print("  layer  first key  next to diag  off-diagonal  non-relative  max SE     max|MC - theory|\n");
  for (std::size_t l = 0; l < result.mean_scores.size(); ++l) {
    const auto& mean = result.mean_scores[l];
    double first = 0, near = 0, all = 0;
    int n_all = 0;
    for (int i = 1; i < 50; ++i) {
      first += mean(i, 0);
      near += mean(i, i - 1);
      for (int j = 0; j < i; ++j, ++n_all) all += mean(i, j);
    }
    const auto& se = result.stderr_scores[l];
    fmt::print("  {:5d}  {:9.4f}  {:12.4f}  {:12.4f}  {:12.4f}  {:9.2e}  {:9.4f}\n", l + 1, first / 49, near / 49,
               all / n_all, maskpos::non_relative_fraction(mean), se.array().isNaN().select(0.0, se.array()).maxCoeff(),
               max_abs_difference(mean, theory.scores[l]));
    if (!options.out_dir.empty())
      maskpos::write_npy(fmt::format("{}/{}_alpha{}_scores_layer{}.npy", options.out_dir, label, alpha, l + 1), mean);
  }
  return result;
}

}  // namespace sec41
