// The paper's Monte Carlo simulation as one timed program, for measuring maskpos from outside the
// process (wall time, peak memory) until and alongside `maskpos simulate`.
//
//   build/bin/mc_paper [--samples B] [--seq-len S] [--dim d] [--layers L] [--norm l2|layernorm|rmsnorm|none]
//                      [--scale 1|sqrt-d|d] [--rope THETA] [--alpha A] [--threads T] [--seed N]
//                      [--scalar float|double] [--path auto|direct|gram|triangular] [--quiet]
//
// Prints the wall time of the simulation, samples/s and the useful GFLOP/s: the causal halves of
// Y Y^T and of A Y in every layer, 2 S^2 d flops per layer and sample (a multiply-add counts 2).
#include <maskpos/monte_carlo.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

[[noreturn]] void usage(const char* message) {
  std::fprintf(stderr, "mc_paper: %s\n", message);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  maskpos::DecoderConfig config;
  maskpos::InputSpec inputs = maskpos::InputSpec::gaussian(50, 64, 0.2);
  maskpos::MonteCarloOptions options;
  std::string scalar = "float";
  bool quiet = false;
  for (int a = 1; a < argc; ++a) {
    const std::string flag = argv[a];
    if (flag == "--quiet") {
      quiet = true;
      continue;
    }
    if (a + 1 >= argc) usage(("missing value after " + flag).c_str());
    const std::string value = argv[++a];
    if (flag == "--samples") options.samples = std::stoll(value);
    else if (flag == "--seq-len") inputs.seq_len = std::stol(value);
    else if (flag == "--dim") inputs.dim = std::stol(value);
    else if (flag == "--layers") config.layers = std::stol(value);
    else if (flag == "--alpha") inputs.alpha = std::stod(value);
    else if (flag == "--threads") options.threads = std::stoi(value);
    else if (flag == "--seed") options.seed = std::stoull(value);
    else if (flag == "--scalar") scalar = value;
    else if (flag == "--path") {
      if (value == "auto") options.path = maskpos::MonteCarloPath::Auto;
      else if (value == "direct") options.path = maskpos::MonteCarloPath::Direct;
      else if (value == "gram") options.path = maskpos::MonteCarloPath::Gram;
      else if (value == "triangular") options.path = maskpos::MonteCarloPath::Triangular;
      else usage("--path must be auto, direct, gram or triangular");
    }
    else if (flag == "--rope") {
      maskpos::RopeConfig rope;
      rope.theta = std::stod(value);
      config.rope = rope;
    } else if (flag == "--norm") {
      if (value == "l2") config.norm = maskpos::Norm::L2;
      else if (value == "layernorm") config.norm = maskpos::Norm::LayerNorm;
      else if (value == "rmsnorm") config.norm = maskpos::Norm::RMSNorm;
      else if (value == "none") config.norm = maskpos::Norm::None;
      else usage("--norm must be l2, layernorm, rmsnorm or none");
    } else if (flag == "--scale") {
      if (value == "1") config.scale = maskpos::ScoreScale::one();
      else if (value == "sqrt-d") config.scale = maskpos::ScoreScale::inv_sqrt_dim();
      else if (value == "d") config.scale = maskpos::ScoreScale::inv_dim();
      else config.scale = maskpos::ScoreScale::custom(std::stod(value));
    } else {
      usage(("unknown option " + flag).c_str());
    }
  }
  if (scalar != "float" && scalar != "double") usage("--scalar must be float or double");

  const auto start = std::chrono::steady_clock::now();
  const maskpos::MonteCarloResult result = scalar == "float" ? maskpos::monte_carlo<float>(config, inputs, options)
                                                             : maskpos::monte_carlo<double>(config, inputs, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const double S = static_cast<double>(inputs.seq_len), d = static_cast<double>(inputs.dim);
  const double flops = 2.0 * S * S * d * static_cast<double>(config.layers) * static_cast<double>(options.samples);
  const auto last = static_cast<std::size_t>(config.layers - 1);
  const maskpos::MonteCarloPath path = scalar == "float" ? maskpos::resolve_path<float>(config, inputs, options.path)
                                                          : maskpos::resolve_path<double>(config, inputs, options.path);
  std::printf("samples=%lld S=%ld d=%ld L=%ld norm=%s rope=%s threads=%d scalar=%s\n",
              static_cast<long long>(options.samples), static_cast<long>(inputs.seq_len), static_cast<long>(inputs.dim),
              static_cast<long>(config.layers), maskpos::to_string(config.norm).c_str(), config.rope ? "yes" : "no",
              options.threads, scalar.c_str());
  // useful_gflops: the useful work, 2 S^2 d per layer and sequence, per second, whatever the
  // path computes (the triangular frame and Gram space do fewer multiply-adds for the same result).
  std::printf("path=%s wall_s=%.4f samples_per_s=%.0f us_per_sample_per_thread=%.2f useful_gflops=%.2f\n",
              maskpos::to_string(path).c_str(), seconds,
              static_cast<double>(options.samples) / seconds,
              seconds * 1e6 / static_cast<double>(options.samples) *
                  (options.threads == 0 ? static_cast<double>(std::thread::hardware_concurrency()) : options.threads),
              flops / seconds * 1e-9);
  if (!quiet)
    std::printf("layer %zu: mean score (S-1, 0) = %.6f +- %.6f, (S-1, S-2) = %.6f, out_of_range = %lld\n", last + 1,
                result.mean_scores[last](inputs.seq_len - 1, 0), result.stderr_scores[last](inputs.seq_len - 1, 0),
                result.mean_scores[last](inputs.seq_len - 1, inputs.seq_len - 2),
                static_cast<long long>(result.out_of_range));
  return 0;
}
