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
  std::vector<std::string> only;
  bool quiet = false;
};
void add_reproduce_options(CLI::App& command, ReproduceArgs& args);
int reproduce_command(const ReproduceArgs& args);

}  // namespace maskpos::cli
