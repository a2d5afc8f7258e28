// `maskpos simulate`: any configuration of the parameter-free decoder from the shell.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <vector>

#include "common.hpp"

namespace maskpos::cli {

struct SimulateArgs {
  Index seq_len = 50;
  Index dim = 64;
  bool dim_given = true;  ///< false when --dim was not on the command line (a preset then sets d)
  Index layers = 4;
  double alpha = 0.0;
  std::string inputs = "gaussian";
  std::string norm = "l2";
  double norm_eps = 1e-12;
  std::string score_scale = "1";
  std::string mask = "causal";
  bool no_residual = false;
  bool rope = false;
  double rope_theta = 10000.0;
  std::string rope_layout = "half";
  Index rope_dim = 0;
  std::string rope_scaling = "none";
  double rope_factor = 1.0;
  double rope_original_context = 8192;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  double rope_beta_fast = 32.0;
  double rope_beta_slow = 1.0;
  double rope_attention_factor = 0.0;
  bool rope_no_truncate = false;
  std::string rope_preset;
  std::string method = "monte-carlo";
  std::int64_t samples = 100000;
  std::uint64_t seed = 0;
  int threads = 0;
  std::string precision = "float";
  std::string path = "auto";  ///< Monte Carlo path (see MonteCarloPath)
  bool quiet = false;
  bool no_figure = false;
  double max_memory_mb = 0;  ///< 0: the default limit, half of MemAvailable (see make_run_spec)
  std::string out;
  std::string title;  ///< figure title (default: a description of the configuration)
};

/// Registers the simulate options on `command` (with defaults from `args`).
void add_simulate_options(CLI::App& command, SimulateArgs& args, bool with_out = true);

/// The decoder, inputs and method described by the options. \throws UsageError / std::invalid_argument
struct RunSpec {
  DecoderConfig config;
  InputSpec inputs;
  bool mean_field = false;
  bool double_precision = false;
  MonteCarloOptions options;
};
/// Also estimates the run's working memory and refuses it (UsageError) beyond --max-memory.
RunSpec make_run_spec(const SimulateArgs& args);

/// The results of one run.
struct Simulation {
  RunSpec spec;
  std::vector<Matrix<double>> scores, probs, stderr_scores, normalized;
  double wall_seconds = 0;
  std::int64_t out_of_range = 0;
};

Simulation run_simulation(const SimulateArgs& args, const RunSpec& spec);

/// The configuration as JSON (summary.json's "config").
Json config_json(const SimulateArgs& args, const RunSpec& spec);

/// Writes scores/probs/stderr/normalized .npy, summary.json and the figure into the stage.
void save_simulation(const SimulateArgs& args, const Simulation& run, const std::filesystem::path& dir);

/// A one-line description of the run, used as the figure title.
std::string describe(const SimulateArgs& args, const RunSpec& spec);

int simulate_command(const SimulateArgs& args);

}  // namespace maskpos::cli
