// The maskpos command: simulate, analyze, figure, reproduce. Exit codes: 0 success, 2 bad input
// (one line on stderr, nothing written), 1 any other failure.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <exception>

#include "analyze.hpp"
#include "reproduce.hpp"
#include "simulate.hpp"

int main(int argc, char** argv) {
  using namespace maskpos::cli;
  CLI::App app{fmt::format("maskpos {}: how the causal mask, normalisation and RoPE create positional information",
                           maskpos::version_string),
               "maskpos"};
  app.require_subcommand(1);
  app.set_version_flag("--version", maskpos::version_string);

  SimulateArgs simulate;
  auto* simulate_cmd = app.add_subcommand("simulate", "run the parameter-free decoder (Monte Carlo or large-width limit)");
  add_simulate_options(*simulate_cmd, simulate);

  AnalyzeArgs analyze;
  auto* analyze_cmd = app.add_subcommand("analyze", "metrics, normalized matrices and figure of score files (.npy)");
  add_analyze_options(*analyze_cmd, analyze);

  FigureArgs figure;
  auto* figure_cmd = app.add_subcommand("figure", "redraw the figure of a finished simulate or analyze run");
  figure_cmd->add_option("DIR", figure.dir, "the run's output directory")->required();
  figure_cmd->add_option("--title", figure.title, "figure title");

  ReproduceArgs reproduce;
  auto* reproduce_cmd = app.add_subcommand("reproduce", "regenerate every simulated figure of the paper with its theory");
  add_reproduce_options(*reproduce_cmd, reproduce);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    const auto parsed = app.get_subcommands();
    fmt::print("{}", parsed.empty() ? app.help() : parsed.front()->help());
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    fmt::print("{}", app.help("", CLI::AppFormatMode::All));
    return 0;
  } catch (const CLI::CallForVersion&) {
    fmt::print("{}\n", maskpos::version_string);
    return 0;
  } catch (const CLI::ParseError& error) {
    // Subcommand help (--help after a subcommand) arrives as CallForHelp too; anything else is bad input.
    std::string message = error.what();
    for (char& c : message)
      if (c == '\n') c = ' ';
    fmt::print(stderr, "maskpos: error: {}\n", message.empty() ? "invalid command line" : message);
    return 2;
  }
  simulate.dim_given = simulate_cmd->count("--dim") > 0;
  try {
    if (*simulate_cmd) return simulate_command(simulate);
    if (*analyze_cmd) return analyze_command(analyze);
    if (*figure_cmd) return figure_command(figure);
    if (*reproduce_cmd) return reproduce_command(reproduce);
  } catch (const std::invalid_argument& error) {  // includes UsageError
    fmt::print(stderr, "maskpos: error: {}\n", error.what());
    return 2;
  } catch (const std::exception& error) {
    fmt::print(stderr, "maskpos: failed: {}\n", error.what());
    return 1;
  }
  return 1;
}
