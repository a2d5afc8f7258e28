// The whole command line of `maskpos` as one object: parse (no side effects), then run. The fuzzer
// (fuzz/fuzz_command_line.cpp) drives parse() and check() with arbitrary argument vectors.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

#include "analyze.hpp"
#include "llama.hpp"
#include "reproduce.hpp"
#include "simulate.hpp"

namespace maskpos::cli {

class CommandLine {
 public:
  CommandLine();

  /// What parse() decided when the program should stop right away.
  struct Stop {
    int exit_code;        ///< 0 after --help / --version, 2 for bad input
    std::string message;  ///< help text (stdout) or a one-line error (stderr)
  };

  /// Parses argv; writes nothing. Returns a Stop for help, version or a parse error.
  std::optional<Stop> parse(int argc, const char* const* argv);

  /// Checks the parsed values as run() would, without computing or writing anything.
  /// \throws std::invalid_argument (UsageError) naming the option
  void check() const;

  /// Runs the chosen subcommand; exceptions propagate (main maps them to exit codes).
  int run() const;

 private:
  CLI::App app_;
  SimulateArgs simulate_;
  AnalyzeArgs analyze_;
  FigureArgs figure_;
  ReproduceArgs reproduce_;
  LlamaArgs llama_;
  CLI::App* simulate_cmd_ = nullptr;
  CLI::App* analyze_cmd_ = nullptr;
  CLI::App* figure_cmd_ = nullptr;
  CLI::App* reproduce_cmd_ = nullptr;
  CLI::App* llama_cmd_ = nullptr;
};

}  // namespace maskpos::cli
