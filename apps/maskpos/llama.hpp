// `maskpos llama`: the mean pre-softmax scores of every layer of a Llama-style checkpoint (paper
// Sec. 4.2 `nope_attns_all.png`, Sec. 5.2 `all_rope.png`) and, optionally, the sub-step Gram trace of
// one block (Sec. 4.2 `nope_params.png`), written as .npy files, summary.json and figures.
#pragma once

#include <CLI/CLI.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "common.hpp"

namespace maskpos::cli {

struct LlamaArgs {
  std::string model;        ///< checkpoint directory: config.json + *.safetensors
  std::string tokens;       ///< one sequence: "1,2,3" (commas and/or spaces)
  std::string tokens_file;  ///< one sequence: ids separated by commas or white space, over any lines
  std::string batch_file;   ///< a batch: one sequence per line, all of the same length
  bool tokens_given = false, tokens_file_given = false, batch_file_given = false;  ///< set by CommandLine::parse
  Index trace_layer = 0;    ///< 1-based block to trace (paper numbering); meaningful when trace_given
  bool trace_given = false;
  std::string mask = "causal";
  bool nope = false;
  std::string precision = "float";
  bool quiet = false;
  bool no_figure = false;
  std::string title;
  std::string out;
};

/// Registers the llama options on `command`.
void add_llama_options(CLI::App& command, LlamaArgs& args);

/// Checks the options without touching any file (the --model directory and the token files are
/// checked by llama_command). \throws UsageError naming the option
void check_llama_args(const LlamaArgs& args);

int llama_command(const LlamaArgs& args);

/// Draws the per-layer figure of a llama run into dir/<stem>.png and .svg: for every group of at
/// most 8 layers a row of raw scores ("Layer l") and a row of diagonal-normalized scores, every panel
/// with its own 1st/99th-percentile colour limits. Returns the files written.
std::vector<std::string> draw_llama_layers(const std::filesystem::path& dir, const std::string& stem, const std::string& title,
                                           const std::vector<Matrix<double>>& raw, const std::vector<Matrix<double>>& normalized);

/// The trace figure's title: "Sub-steps of layer <layer>, <title>" (layer 1-based).
std::string llama_trace_title(Index layer, const std::string& title);

/// Draws the sub-step trace (SubstepTrace::panels(), names "a_..." to "i_...") like `nope_params.png`
/// into dir/<stem>.png and .svg: three panels per row in the order (a)-(i); Gram panels show their lower triangle (the upper one is blank), score
/// panels their visible entries. Returns the files written.
std::vector<std::string> draw_llama_trace(const std::filesystem::path& dir, const std::string& stem, const std::string& title,
                                          const std::vector<NamedMatrix>& panels);

}  // namespace maskpos::cli
