#include "reproduce.hpp"

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <fstream>

#include "simulate.hpp"

namespace maskpos::cli {

namespace {

/// One simulated configuration of a paper figure.
struct PaperRun {
  std::string name;   ///< sub-directory and row label
  SimulateArgs args;  ///< the configuration (method and output are set per use)
};

/// One paper figure: its runs and how to draw them.
struct PaperFigure {
  std::string name;         ///< as in the paper's figures/ folder
  std::string paper_file;   ///< the paper's figure file
  std::string settings;     ///< human-readable settings
  std::vector<PaperRun> runs;
  std::optional<std::pair<double, double>> raw_limits;  ///< the paper's colour range, when it fixes one
  bool normalized_rows = false;                         ///< draw the diagonal-normalized view too
};

SimulateArgs paper_defaults(const ReproduceArgs& options) {
  SimulateArgs args;  // S = 50, d = 64, L = 4, L2, causal, residual, theta 10000
  args.samples = options.samples;
  args.seed = options.seed;
  args.threads = options.threads;
  args.max_memory_mb = options.max_memory_mb;
  args.quiet = true;
  args.no_figure = true;
  return args;
}

std::string alpha_label(double alpha) { return fmt::format("alpha={}", alpha); }

std::vector<PaperFigure> paper_figures(const ReproduceArgs& options) {
  std::vector<PaperFigure> figures;
  {
    PaperFigure fig{"fig1", "fig1_heatmaps.png",
                    "3 orthonormal tokens, L2, causal, 2 layers; layer-2 scores (1,0) = 0.1535, (2,0) = 0.1321, (2,1) = 0.1508",
                    {}, std::make_pair(0.0, 1.0), false};
    SimulateArgs args = paper_defaults(options);
    args.seq_len = 3;
    args.dim = 3;
    args.layers = 2;
    args.inputs = "orthonormal";
    args.samples = std::min<std::int64_t>(options.samples, 1000);  // every sample is the same up to a rotation
    fig.runs.push_back({"orthonormal", args});
    figures.push_back(fig);
  }
  auto l2_figure = [&](const std::string& name, const std::vector<double>& alphas) {
    PaperFigure fig{name, name + ".png",
                    fmt::format("B = {}, S = 50, d = 64, 4 layers, L2, causal, alpha in {{{}}}, colour range [0, 1]",
                                options.samples, fmt::join(alphas, ", ")),
                    {}, std::make_pair(0.0, 1.0), false};
    for (double alpha : alphas) {
      SimulateArgs args = paper_defaults(options);
      args.alpha = alpha;
      fig.runs.push_back({alpha_label(alpha), args});
    }
    figures.push_back(fig);
  };
  l2_figure("l2norm", {0.0, 0.2});
  l2_figure("l2norm_alpha", {0.4, 0.6, 0.8});
  for (const std::string scale : {"sqrt-d", "d"}) {
    PaperFigure fig{"layernorm_" + (scale == "d" ? std::string("d") : std::string("sqrt_d")), "layernorm.png",
                    fmt::format("B = {}, S = 50, d = 64, 4 layers, LayerNorm (eps 1e-12), scores / {}, alpha in {{0, 0.2}}, "
                                "colour range {}",
                                options.samples, scale == "d" ? "d" : "sqrt(d)", scale == "d" ? "[0, 1]" : "[0, 8]"),
                    {}, scale == "d" ? std::make_pair(0.0, 1.0) : std::make_pair(0.0, 8.0), false};
    for (double alpha : {0.0, 0.2}) {
      SimulateArgs args = paper_defaults(options);
      args.norm = "layernorm";
      args.score_scale = scale;
      args.alpha = alpha;
      fig.runs.push_back({alpha_label(alpha), args});
    }
    figures.push_back(fig);
  }
  auto rope_figure = [&](const std::string& name, double alpha, const std::string& mask) {
    PaperFigure fig{name, name + ".png",
                    fmt::format("RoPE (theta 10000, half-split) + L2, B = {}, S = 50, d = 64, 4 layers, alpha = {}, {} mask; "
                                "bottom rows: each diagonal minus its mean",
                                options.samples, alpha, mask),
                    {}, std::make_pair(0.0, 1.0), true};
    SimulateArgs args = paper_defaults(options);
    args.rope = true;
    args.alpha = alpha;
    args.mask = mask;
    fig.runs.push_back({alpha_label(alpha), args});
    figures.push_back(fig);
  };
  rope_figure("rope_causal_0", 0.0, "causal");
  rope_figure("rope_causal_05", 0.5, "causal");
  rope_figure("rope_noncausal_0", 0.0, "bidirectional");
  return figures;
}

/// Every row of a figure is drawn twice: the Monte Carlo mean, then the large-width theory.
constexpr const char* kMethods[] = {"monte-carlo", "mean-field"};

SimulateArgs with_method(const PaperRun& run, const char* method) {
  SimulateArgs args = run.args;
  args.method = method;
  return args;
}

/// The figures --only selects, every run checked by make_run_spec (its arguments and its working memory
/// against --max-memory: the runs go one after another, so each must fit) before anything is computed.
std::vector<PaperFigure> checked_figures(const ReproduceArgs& args) {
  auto figures = paper_figures(args);
  for (const auto& name : args.only)
    if (std::none_of(figures.begin(), figures.end(), [&](const PaperFigure& f) { return f.name == name; }))
      throw UsageError("--only " + name + ": unknown figure (see maskpos reproduce --help)");
  if (!args.only.empty())
    figures.erase(std::remove_if(figures.begin(), figures.end(),
                                 [&](const PaperFigure& f) {
                                   return std::find(args.only.begin(), args.only.end(), f.name) == args.only.end();
                                 }),
                  figures.end());
  for (const auto& figure : figures)
    for (const auto& run : figure.runs)
      for (const char* method : kMethods) (void)make_run_spec(with_method(run, method));
  return figures;
}

HeatmapPanel panel(const Matrix<double>& values, const std::string& title, std::optional<std::pair<double, double>> limits,
                   bool diverging) {
  HeatmapPanel p;
  p.values = values;
  p.title = title;
  if (limits) {
    p.vmin = limits->first;
    p.vmax = limits->second;
  }
  (void)diverging;
  return p;
}

}  // namespace

void add_reproduce_options(CLI::App& command, ReproduceArgs& args) {
  command.add_option("--out", args.out, "output directory (replaced atomically)")->required();
  command.add_option("--samples", args.samples, "Monte Carlo samples per configuration (the paper: 100000)")
      ->capture_default_str();
  command.add_option("--seed", args.seed, "random seed")->capture_default_str();
  command.add_option("--threads", args.threads, "worker threads (0: all cores)")->capture_default_str();
  command.add_option("--max-memory", args.max_memory_mb,
                     "refuse to start when a run's estimated working memory exceeds this many MB (default: half the "
                     "available memory)");
  command.add_option("--only", args.only, "reproduce only these figures (fig1, l2norm, l2norm_alpha, layernorm_sqrt_d, "
                                          "layernorm_d, rope_causal_0, rope_causal_05, rope_noncausal_0)");
  command.add_flag("--quiet", args.quiet, "no progress lines");
}

void check_reproduce_args(const ReproduceArgs& args) { (void)checked_figures(args); }

int reproduce_command(const ReproduceArgs& args) {
  check_output_dir(args.out);
  const auto figures = checked_figures(args);
  const auto start = std::chrono::steady_clock::now();
  OutputStage stage(args.out);
  std::string html = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>maskpos reproduce</title>\n"
                     "<style>body{font-family:sans-serif;max-width:1400px;margin:auto} img{max-width:100%}"
                     " td,th{padding:2px 8px;text-align:left}</style></head><body>\n";
  html += fmt::format("<h1>maskpos {}: the paper's simulated figures</h1>\n<p>Each figure shows the Monte Carlo mean "
                      "(rows marked MC) next to the large-width theory (rows marked theory). Paper: arXiv 2509.21042.</p>\n",
                      version_string);
  Json index = Json::array();
  for (const auto& figure : figures) {
    FigureGrid grid;
    grid.title = figure.name + " (paper: " + figure.paper_file + ")";
    std::vector<std::vector<HeatmapPanel>> raw_rows, normalized_rows;
    Json figure_json;
    figure_json["name"] = figure.name;
    figure_json["paper_figure"] = figure.paper_file;
    figure_json["settings"] = figure.settings;
    html += fmt::format("<h2>{}</h2>\n<p>Paper figure: <code>{}</code>. Settings: {}.</p>\n", figure.name, figure.paper_file,
                        figure.settings);
    html += "<table><tr><th>run</th><th>method</th><th>layer</th><th>non-relative fraction</th><th>first-key contrast</th>"
            "<th>locality</th><th>max |MC - theory|</th></tr>\n";
    for (const auto& run : figure.runs) {
      std::vector<Simulation> results;
      for (const char* method : kMethods) {
        const SimulateArgs args_for = with_method(run, method);
        const RunSpec spec = make_run_spec(args_for);
        Simulation result = run_simulation(args_for, spec);
        if (result.out_of_range > 0)
          throw std::runtime_error(fmt::format("{} / {}: {} values out of range", figure.name, run.name, result.out_of_range));
        const std::string dir = figure.name + "/" + run.name + "/" + method;
        std::filesystem::create_directories(stage.file(dir));
        save_simulation(args_for, result, stage.file(dir));
        if (!args.quiet)
          fmt::print(stderr, "maskpos reproduce: {} {} {}: {:.2f} s\n", figure.name, run.name, method, result.wall_seconds);
        results.push_back(std::move(result));
      }
      const auto& mc = results[0];
      const auto& theory = results[1];
      std::vector<HeatmapPanel> mc_raw, th_raw, mc_norm, th_norm;
      for (std::size_t l = 0; l < mc.scores.size(); ++l) {
        const std::string layer = fmt::format("Layer {}, {}", l + 1, run.name);
        mc_raw.push_back(panel(mc.scores[l], layer + " (MC)", figure.raw_limits, false));
        th_raw.push_back(panel(theory.scores[l], layer + " (theory)", figure.raw_limits, false));
        mc_norm.push_back(panel(mc.normalized[l], layer + " (MC, normalized)", std::nullopt, false));
        th_norm.push_back(panel(theory.normalized[l], layer + " (theory, normalized)", std::nullopt, false));
        const double difference = (mc.scores[l] - theory.scores[l]).array().isNaN().select(0.0, (mc.scores[l] - theory.scores[l]).array().abs()).maxCoeff();
        for (int m = 0; m < 2; ++m) {
          const auto metrics = metrics_json(results[static_cast<std::size_t>(m)].scores[l]);
          auto show = [&](const char* key) {
            return metrics[key].is_null() ? std::string("n/a") : fmt::format("{:.4f}", metrics[key].get<double>());
          };
          html += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n", run.name,
                              m == 0 ? "MC" : "theory", l + 1, show("non_relative_fraction"), show("first_key_contrast"),
                              show("locality_spearman"), m == 0 ? fmt::format("{:.4f}", difference) : "");
        }
        figure_json["max_abs_difference_mc_theory"].push_back(difference);
      }
      raw_rows.push_back(mc_raw);
      raw_rows.push_back(th_raw);
      grid.row_labels.push_back(run.name + " MC");
      grid.row_labels.push_back(run.name + " theory");
      if (figure.normalized_rows) {
        normalized_rows.push_back(mc_norm);
        normalized_rows.push_back(th_norm);
      }
    }
    html += "</table>\n";
    for (auto& row : raw_rows) grid.rows.push_back(std::move(row));
    for (std::size_t r = 0; r < normalized_rows.size(); ++r) {
      grid.rows.push_back(std::move(normalized_rows[r]));
      grid.row_labels.push_back(r % 2 == 0 ? "normalized MC" : "normalized theory");
    }
    save_png_and_svg(grid, stage.path(), figure.name);
    html += fmt::format("<p><a href=\"{0}.svg\"><img src=\"{0}.png\" alt=\"{0}\"></a></p>\n", figure.name);
    index.push_back(figure_json);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  html += fmt::format("<p>Generated by <code>maskpos reproduce</code> in {:.1f} s.</p>\n</body></html>\n", seconds);
  detail::write_file_atomically(stage.file("index.html").string(), html);
  write_json(stage.file("index.json"), index);
  stage.commit();
  if (!args.quiet) fmt::print("maskpos reproduce: {} figures in {:.1f} s; open {}/index.html\n", figures.size(), seconds, args.out);
  return 0;
}

}  // namespace maskpos::cli
