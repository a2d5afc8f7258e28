// `maskpos analyze FILE.npy ...` and `maskpos figure DIR`.
#include "analyze.hpp"

#include "llama.hpp"

#include <fmt/core.h>

#include <fstream>

namespace maskpos::cli {

namespace fs = std::filesystem;

void add_analyze_options(CLI::App& command, AnalyzeArgs& args) {
  command.add_option("files", args.files, "score files: 2-D [S, S] or 3-D [n, S, S] .npy (float32 or float64)")
      ->required();
  command.add_option("--mask", args.mask, "causal (entries above the diagonal are ignored) | bidirectional")
      ->capture_default_str();
  command.add_option("--title", args.title, "figure title");
  command.add_flag("--no-figure", args.no_figure, "skip figure.png / figure.svg");
  command.add_flag("--quiet", args.quiet, "print nothing on success");
  command.add_option("--out", args.out, "output directory (replaced atomically)")->required();
}

int analyze_command(const AnalyzeArgs& args) {
  if (args.mask != "causal" && args.mask != "bidirectional")
    throw UsageError("--mask " + args.mask + ": must be causal or bidirectional");
  check_output_dir(args.out);
  const bool causal = args.mask == "causal";
  std::vector<Matrix<double>> raw, normalized;
  Json metrics = Json::array();
  for (const auto& path : args.files) {
    const auto matrices = read_score_file(path);
    for (std::size_t k = 0; k < matrices.size(); ++k) {
      Matrix<double> scores = matrices[k];
      // Masked entries: above the diagonal for causal files, and every non-finite entry (real models'
      // masked scores are -inf or a large negative constant; the latter is caught by the causal rule).
      for (Index j = 0; j < scores.cols(); ++j)
        for (Index i = 0; i < scores.rows(); ++i)
          if ((causal && j > i) || !std::isfinite(scores(i, j))) scores(i, j) = std::numeric_limits<double>::quiet_NaN();
      Json entry;
      entry["file"] = path;
      entry["index"] = k;
      entry["seq_len"] = scores.rows();
      entry.update(metrics_json(scores));
      metrics.push_back(entry);
      normalized.push_back(diagonal_normalize(scores));
      raw.push_back(std::move(scores));
    }
  }
  OutputStage stage(args.out);
  for (std::size_t k = 0; k < raw.size(); ++k) {
    write_npy(stage.file(fmt::format("scores_{}.npy", k + 1)).string(), raw[k]);
    write_npy(stage.file(fmt::format("normalized_{}.npy", k + 1)).string(), normalized[k]);
  }
  write_json(stage.file("metrics.json"), metrics);
  if (!args.no_figure) {
    const std::string title = args.title.empty() ? fmt::format("maskpos analyze ({} mask)", args.mask) : args.title;
    draw_layer_figure(stage.path(), "figure", title, "Matrix", raw, normalized, true);
  }
  stage.commit();
  return 0;
}

namespace {
std::vector<Matrix<double>> read_numbered(const fs::path& dir, const std::string& pattern) {
  std::vector<Matrix<double>> layers;
  for (int k = 1;; ++k) {
    const fs::path path = dir / fmt::format(fmt::runtime(pattern), k);
    if (!fs::exists(path)) break;
    auto matrices = read_score_file(path.string());
    layers.push_back(std::move(matrices.front()));
  }
  return layers;
}
}  // namespace

int figure_command(const FigureArgs& args) {
  const fs::path dir(args.dir);
  if (!fs::is_directory(dir)) throw UsageError("DIR " + args.dir + ": not a directory");
  std::string title = "maskpos";
  bool robust_limits = false;
  std::vector<Matrix<double>> raw = read_numbered(dir, "scores_layer{}.npy");
  std::vector<Matrix<double>> normalized = read_numbered(dir, "normalized_layer{}.npy");
  std::string label = "Layer";
  if (raw.empty()) {  // the output of `maskpos analyze`
    raw = read_numbered(dir, "scores_{}.npy");
    normalized = read_numbered(dir, "normalized_{}.npy");
    label = "Matrix";
    robust_limits = true;
  }
  if (raw.empty())
    throw UsageError("DIR " + args.dir + ": holds neither scores_layer<l>.npy (simulate) nor scores_<k>.npy (analyze)");
  if (normalized.size() != raw.size()) {
    normalized.clear();
    for (const auto& m : raw) normalized.push_back(diagonal_normalize(m));
  }
  const fs::path summary = dir / "summary.json";
  bool llama_run = false;
  Json trace = nullptr;
  if (fs::exists(summary)) {
    try {
      std::ifstream in(summary);
      const Json json = Json::parse(in);
      if (json.contains("title")) title = json["title"].get<std::string>();
      else title = fmt::format("maskpos {} (redrawn)", json.value("config", Json::object()).value("method", "run"));
      llama_run = json.value("command", "") == "llama";
      if (llama_run && json.contains("trace")) trace = json["trace"];
    } catch (const std::exception& error) {
      throw UsageError(summary.string() + ": malformed JSON: " + error.what());
    }
  }
  if (!args.title.empty()) title = args.title;
  if (!llama_run) {
    draw_layer_figure(dir, "figure", title, label, raw, normalized, robust_limits);
    return 0;
  }
  // The output of `maskpos llama`: its own layout, and the sub-step trace when there is one.
  draw_llama_layers(dir, "figure", title, raw, normalized);
  if (!trace.is_null()) {
    std::vector<NamedMatrix> panels;
    try {
      for (const auto& panel : trace.at("panels"))
        panels.push_back({panel.at("name").get<std::string>(), panel.at("title").get<std::string>(),
                          read_score_file((dir / panel.at("file").get<std::string>()).string()).front()});
      draw_llama_trace(dir, "trace", llama_trace_title(trace.at("layer").get<Index>(), title), panels);
    } catch (const Json::exception& error) {
      throw UsageError(summary.string() + ": malformed trace entry: " + error.what());
    }
  }
  return 0;
}

}  // namespace maskpos::cli
