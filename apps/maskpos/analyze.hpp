// `maskpos analyze` (metrics of score files) and `maskpos figure` (redraw a finished run).
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "common.hpp"

namespace maskpos::cli {

struct AnalyzeArgs {
  std::vector<std::string> files;
  std::string mask = "causal";
  std::string title;
  bool no_figure = false;
  bool quiet = false;
  std::string out;
};
void add_analyze_options(CLI::App& command, AnalyzeArgs& args);
int analyze_command(const AnalyzeArgs& args);

struct FigureArgs {
  std::string dir;
  std::string title;
};
int figure_command(const FigureArgs& args);

}  // namespace maskpos::cli
