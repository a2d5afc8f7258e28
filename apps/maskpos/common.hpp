// Shared pieces of the maskpos command: errors that map to exit codes, the staged output
// directory, the progress bar, JSON and .npy helpers.
#pragma once

#include <maskpos/figure.hpp>
#include <maskpos/maskpos.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace maskpos::cli {

using Json = nlohmann::ordered_json;

/// Bad input from the user (options, files): exit code 2 and one line.
struct UsageError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// All files of a command are written into a fresh staging directory next to DIR; commit() then
/// swaps it into place. On error (or without commit) the staging directory is removed, so DIR is
/// never created or left half-overwritten.
class OutputStage {
 public:
  explicit OutputStage(const std::filesystem::path& target);
  ~OutputStage();
  OutputStage(const OutputStage&) = delete;
  OutputStage& operator=(const OutputStage&) = delete;

  /// Path of `name` inside the staging directory.
  std::filesystem::path file(const std::string& name) const { return stage_ / name; }
  const std::filesystem::path& path() const { return stage_; }
  /// Replaces DIR by the staging directory.
  void commit();

 private:
  std::filesystem::path target_, stage_;
  bool committed_ = false;
};

/// Refuses an output path that cannot become a directory (an existing regular file, say), before
/// any work is done.
void check_output_dir(const std::filesystem::path& target);

/// A progress bar on stderr: samples done, rate, time left. Shown only when enabled (not --quiet),
/// stderr is a terminal, and the run has taken more than about a second.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled);
  void update(std::int64_t done, std::int64_t total);
  void finish();

 private:
  bool enabled_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

/// Writes JSON text (2-space indent) to `path`.
void write_json(const std::filesystem::path& path, const Json& json);

/// Writes one .npy per layer: <stem>_layer<l>.npy, l = 1..L.
void write_layers(const std::filesystem::path& dir, const std::string& stem, const std::vector<Matrix<double>>& layers);

/// Per-layer metrics of a score matrix, as JSON.
Json metrics_json(const Matrix<double>& scores);

/// Reads a 2-D [S, S] or 3-D [n, S, S] .npy file of scores; any problem becomes a UsageError naming the file.
std::vector<Matrix<double>> read_score_file(const std::string& path);

/// Draws `grid` to dir/<stem>.png and dir/<stem>.svg. Returns the file names.
std::vector<std::string> save_png_and_svg(const FigureGrid& grid, const std::filesystem::path& dir, const std::string& stem,
                                          const FigureOptions& options = {});

/// Draws raw and normalized rows, one column per layer, to <stem>.png and <stem>.svg (when the
/// figure module is available). Returns the files written.
std::vector<std::string> draw_layer_figure(const std::filesystem::path& dir, const std::string& stem, const std::string& title,
                                           const std::string& layer_label,
                                           const std::vector<Matrix<double>>& raw,
                                           const std::vector<Matrix<double>>& normalized,
                                           bool robust_limits = false);

}  // namespace maskpos::cli
