// `maskpos reproduce`: every simulated figure of the paper, each next to its large-width theory.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "common.hpp"

namespace maskpos::cli {

struct ReproduceArgs {
  std::string out;
  std::int64_t samples = 100000;
  std::uint64_t seed = 0;
  int threads = 0;
  double max_memory_mb = 0;  ///< per run, as `maskpos simulate --max-memory` (0: half of MemAvailable)
  std::vector<std::string> only;
  bool quiet = false;
};
void add_reproduce_options(CLI::App& command, ReproduceArgs& args);

/// Checks every run the arguments select as `maskpos simulate` checks its own (arguments, estimated
/// working memory against --max-memory), computing and writing nothing. \throws UsageError / std::invalid_argument
void check_reproduce_args(const ReproduceArgs& args);

int reproduce_command(const ReproduceArgs& args);

}  // namespace maskpos::cli
