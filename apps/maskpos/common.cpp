#include "common.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>

namespace maskpos::cli {

namespace fs = std::filesystem;

void check_output_dir(const fs::path& target) {
  std::error_code error;
  if (fs::exists(target, error) && !fs::is_directory(target, error))
    throw UsageError("--out " + target.string() + ": exists and is not a directory");
  const fs::path parent = fs::absolute(target).parent_path();
  if (!fs::is_directory(parent, error))
    throw UsageError("--out " + target.string() + ": the parent directory " + parent.string() + " does not exist");
  if (access(parent.c_str(), W_OK) != 0)
    throw UsageError("--out " + target.string() + ": the parent directory " + parent.string() + " is not writable");
}

OutputStage::OutputStage(const fs::path& target) : target_(fs::absolute(target).lexically_normal()) {
  if (target_.filename().empty()) target_ = target_.parent_path();
  check_output_dir(target_);
  std::random_device entropy;
  for (int attempt = 0; attempt < 100; ++attempt) {
    stage_ = target_.parent_path() / fmt::format(".{}.tmp-{:08x}", target_.filename().string(), entropy());
    if (fs::create_directory(stage_)) return;
  }
  throw std::runtime_error("cannot create a staging directory next to " + target_.string());
}

OutputStage::~OutputStage() {
  if (!committed_) {
    std::error_code ignored;
    fs::remove_all(stage_, ignored);
  }
}

void OutputStage::commit() {
  // Move an existing DIR aside, move the stage into place, then delete the old one: at every moment
  // DIR is either the complete old result or the complete new one.
  std::error_code error;
  fs::path old;
  if (fs::exists(target_, error)) {
    old = stage_;
    old += ".old";
    fs::rename(target_, old);
  }
  fs::rename(stage_, target_);
  committed_ = true;
  if (!old.empty()) fs::remove_all(old, error);
}

ProgressBar::ProgressBar(bool enabled)
    : enabled_(enabled && isatty(fileno(stderr)) != 0), start_(std::chrono::steady_clock::now()), last_(start_) {}

void ProgressBar::update(std::int64_t done, std::int64_t total) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (elapsed < 1.0 || (shown_ && std::chrono::duration<double>(now - last_).count() < 0.1 && done < total)) return;
  last_ = now;
  shown_ = true;
  const double fraction = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const double rate = static_cast<double>(done) / elapsed;
  const double left = rate > 0 ? static_cast<double>(total - done) / rate : 0.0;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  fmt::print(stderr, "\r[{}{}] {:3.0f}% {}/{} samples, {:.0f}/s, {:.1f} s left ", std::string(static_cast<std::size_t>(filled), '#'),
             std::string(static_cast<std::size_t>(kWidth - filled), ' '), 100 * fraction, done, total, rate, left);
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (shown_) fmt::print(stderr, "\n");
  shown_ = false;
}

void write_json(const fs::path& path, const Json& json) {
  detail::write_file_atomically(path.string(), json.dump(2) + "\n");
}

void write_layers(const std::filesystem::path& dir, const std::string& stem, const std::vector<Matrix<double>>& layers) {
  for (std::size_t l = 0; l < layers.size(); ++l)
    write_npy((dir / fmt::format("{}_layer{}.npy", stem, l + 1)).string(), layers[l]);
}

namespace {
Json number_or_null(double value) { return std::isfinite(value) ? Json(value) : Json(nullptr); }
}  // namespace

Json metrics_json(const Matrix<double>& scores) {
  const ScoreMetrics metrics = score_metrics(scores);
  Json json;
  json["non_relative_fraction"] = number_or_null(metrics.non_relative_fraction);
  json["locality_spearman"] = number_or_null(metrics.locality);
  json["first_key_contrast"] = number_or_null(metrics.first_key_contrast);
  json["normalized_spread"] = number_or_null(metrics.normalized_spread);
  json["mean_off_diagonal"] = number_or_null(metrics.mean_off_diagonal);
  return json;
}

std::vector<Matrix<double>> read_score_file(const std::string& path) {
  std::vector<Matrix<double>> matrices;
  try {
    matrices = read_npy_matrices(path);
  } catch (const std::exception& error) {
    throw UsageError(error.what());
  }
  for (const auto& m : matrices)
    if (m.rows() != m.cols())
      throw UsageError(fmt::format("{}: score matrices must be square [S, S] or [n, S, S], got [{}, {}]", path, m.rows(), m.cols()));
  return matrices;
}

std::vector<std::string> draw_layer_figure(const std::filesystem::path& dir, const std::string& stem, const std::string& title,
                                           const std::string& layer_label,
                                           const std::vector<Matrix<double>>& raw,
                                           const std::vector<Matrix<double>>& normalized, bool robust_limits) {
  LayerGridOptions options;
  options.layer_label = layer_label;
  if (robust_limits) {
    // Real models' scores have outliers (attention sinks): 1st-99th percentile limits, as the paper.
    double low = std::numeric_limits<double>::infinity(), high = -low;
    for (const auto& m : raw) {
      const ColourLimits limits = colour_limits(m);
      low = std::min(low, limits.low);
      high = std::max(high, limits.high);
    }
    if (low < high) {
      options.raw_vmin = low;
      options.raw_vmax = high;
    }
    options.normalized_rule = LimitRule::Percentile;
  }
  return save_png_and_svg(layer_grid(title, raw, normalized, options), dir, stem);
}

std::vector<std::string> save_png_and_svg(const FigureGrid& grid, const std::filesystem::path& dir, const std::string& stem,
                                          const FigureOptions& options) {
  // Drawn one after the other (cairo numbers its surfaces process-wide: the SVG's bytes must not
  // depend on a concurrent drawing); the PNG is encoded while the SVG is drawn.
  const std::vector<std::string> names{stem + ".png", stem + ".svg"};
  save_figures(grid, {(dir / names[0]).string(), (dir / names[1]).string()}, options);
  return names;
}

}  // namespace maskpos::cli
