// `maskpos llama --model DIR --tokens ... --out DIR`: mean scores and the sub-step trace of a checkpoint.
#include "llama.hpp"

#include <maskpos/checkpoint.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

namespace maskpos::cli {

namespace fs = std::filesystem;

void add_llama_options(CLI::App& command, LlamaArgs& args) {
  command.add_option("--model", args.model, "checkpoint directory: config.json + *.safetensors (Hugging Face layout)")
      ->required();
  command.add_option("--tokens", args.tokens, "one sequence of token ids, e.g. 1,450,4996 (commas or spaces)");
  command.add_option("--tokens-file", args.tokens_file, "a file holding one sequence of ids (commas or white space)");
  command.add_option("--batch-file", args.batch_file,
                     "a file with one sequence per line, all of the same length (scores are averaged over them)");
  command.add_option("--trace-layer", args.trace_layer,
                     "also trace the sub-steps of block L (1-based; paper Sec. 4.2, nope_params.png)");
  command.add_option("--mask", args.mask, "causal | bidirectional | sliding:W | prefix:P")->capture_default_str();
  command.add_flag("--nope", args.nope, "run without RoPE (a NoPE checkpoint's config.json still names a rope_theta)");
  command.add_option("--precision", args.precision, "float | double (compute type; means are taken in double)")
      ->capture_default_str();
  command.add_option("--title", args.title, "figure title (default: the model directory and the batch shape)");
  command.add_flag("--no-figure", args.no_figure, "skip figure.* and trace.*");
  command.add_flag("--quiet", args.quiet, "print nothing on success");
  command.add_option("--out", args.out, "output directory (replaced atomically)")->required();
}

namespace {

/// The ids in `text` (separated by commas and/or white space). `where` names the source in errors.
TokenIds parse_ids(const std::string& text, const std::string& where) {
  std::string spaced = text;
  std::replace(spaced.begin(), spaced.end(), ',', ' ');
  std::istringstream fields(spaced);
  TokenIds ids;
  std::string field;
  while (fields >> field) {
    Index id = 0;
    if (!detail::parse_integer(field, id)) throw UsageError(where + ": '" + field + "' is not an integer token id");
    if (id < 0) throw UsageError(where + ": token id " + field + " is negative");
    ids.push_back(static_cast<std::int64_t>(id));
  }
  return ids;
}

int count_token_sources(const LlamaArgs& args) {
  return static_cast<int>(args.tokens_given) + static_cast<int>(args.tokens_file_given) +
         static_cast<int>(args.batch_file_given);
}

/// "--tokens", "--tokens-file F" or "--batch-file F", for error messages.
std::string token_source(const LlamaArgs& args) {
  return args.tokens_given ? std::string("--tokens") : args.tokens_file_given ? "--tokens-file " + args.tokens_file
                                                                              : "--batch-file " + args.batch_file;
}

std::string read_text(const std::string& path, const std::string& option) {
  std::error_code error;
  if (!fs::is_regular_file(path, error)) throw UsageError(option + " " + path + ": not a readable file");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in && !in.eof()) throw UsageError(option + " " + path + ": cannot read");
  return text.str();
}

/// The batch described by --tokens, --tokens-file or --batch-file (exactly one is given).
std::vector<TokenIds> read_batch(const LlamaArgs& args) {
  std::vector<TokenIds> batch;
  if (args.tokens_given) {
    batch.push_back(parse_ids(args.tokens, "--tokens"));
  } else if (args.tokens_file_given) {
    batch.push_back(parse_ids(read_text(args.tokens_file, "--tokens-file"), "--tokens-file " + args.tokens_file));
  } else {
    std::istringstream lines(read_text(args.batch_file, "--batch-file"));
    std::string line;
    for (int number = 1; std::getline(lines, line); ++number) {
      const std::string where = fmt::format("--batch-file {} line {}", args.batch_file, number);
      TokenIds ids = parse_ids(line, where);
      if (ids.empty()) continue;  // blank lines separate nothing
      if (!batch.empty() && ids.size() != batch.front().size())
        throw UsageError(fmt::format("{}: {} token ids, but the first sequence has {} (all must have the same length)",
                                     where, ids.size(), batch.front().size()));
      batch.push_back(std::move(ids));
    }
  }
  if (batch.empty() || batch.front().empty())
    throw UsageError(token_source(args) + ": no token ids");
  return batch;
}

/// Drops the library's "maskpos: " prefix so the message can be prefixed with the option.
std::string without_prefix(const char* what) {
  std::string text = what;
  if (text.rfind("maskpos: ", 0) == 0) text.erase(0, 9);
  return text;
}

/// What a run computes.
struct LlamaRun {
  LlamaConfig config;
  std::vector<TokenIds> batch;
  std::vector<Matrix<double>> scores, normalized;
  std::optional<SubstepTrace> trace;
  double wall_seconds = 0;
};

template <class Scalar>
LlamaRun run_model(const LlamaArgs& args, const Mask& mask, std::vector<TokenIds> batch) {
  std::optional<LlamaCheckpoint<Scalar>> model;
  // A missing or malformed checkpoint is bad input: exit 2, naming the directory and the file.
  try {
    model.emplace(args.model);
    if (args.nope) model->set_rope(std::nullopt);
  } catch (const std::exception& error) {
    throw UsageError("--model " + args.model + ": " + without_prefix(error.what()));
  }
  model->set_mask(mask);
  const LlamaConfig& config = model->config();
  const Index S = static_cast<Index>(batch.front().size());
  try {
    mask.validate(S);
  } catch (const std::invalid_argument& error) {
    throw UsageError("--mask " + args.mask + ": " + without_prefix(error.what()));
  }
  for (std::size_t b = 0; b < batch.size(); ++b)
    for (std::size_t k = 0; k < batch[b].size(); ++k)
      if (batch[b][k] >= config.vocab_size)
        throw UsageError(fmt::format("{}: token id {} (sequence {}, 0-based position {}) is outside the vocabulary: "
                                     "0 <= id < vocab_size = {}",
                                     token_source(args), batch[b][k], b + 1, k, config.vocab_size));
  if (args.trace_given && args.trace_layer > config.layers)
    throw UsageError(fmt::format("--trace-layer {}: the model has {} layers (1 <= L <= {})", args.trace_layer, config.layers,
                                 config.layers));

  LlamaRun run;
  run.config = config;
  const auto start = std::chrono::steady_clock::now();
  try {
    run.scores = llama_mean_scores(*model, batch);
    if (args.trace_given) run.trace = llama_substep_trace(*model, batch, args.trace_layer - 1);
  } catch (const std::runtime_error& error) {  // a tensor missing, mis-shaped or truncated in a block
    throw UsageError("--model " + args.model + ": " + without_prefix(error.what()));
  }
  run.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& scores : run.scores) run.normalized.push_back(diagonal_normalize(scores));
  run.batch = std::move(batch);
  return run;
}

Json llama_config_json(const LlamaConfig& c) {
  Json json;
  json["vocab_size"] = c.vocab_size;
  json["hidden_size"] = c.hidden_size;
  json["intermediate_size"] = c.intermediate_size;
  json["layers"] = c.layers;
  json["heads"] = c.heads;
  json["kv_heads"] = c.kv_heads;
  json["head_dim"] = c.head_dim;
  json["norm"] = to_string(c.norm);
  json["norm_eps"] = c.norm_eps;
  json["attention_scale"] = c.resolved_attention_scale();
  json["feed_forward"] = c.feed_forward;
  if (c.rope) {
    const RopeConfig& rope = *c.rope;
    Json r;
    r["theta"] = rope.theta;
    r["layout"] = to_string(rope.layout);
    r["rotary_dim"] = rope.rotary_dim;
    r["scaling"] = to_string(rope.scaling.kind);
    r["factor"] = rope.scaling.factor;
    json["rope"] = r;
  } else {
    json["rope"] = nullptr;
  }
  json["mask"] = c.mask.name();
  return json;
}

std::string default_title(const LlamaArgs& args, const LlamaRun& run) {
  if (!args.title.empty()) return args.title;
  const fs::path model = fs::path(args.model).lexically_normal();
  const std::string name = (model.filename().empty() ? model.parent_path() : model).filename().string();
  return fmt::format("{}{}: B={} S={}, {} mask", name, run.config.rope ? "" : " (NoPE)", run.batch.size(),
                     run.batch.front().size(), run.config.mask.name());
}

void save_run(const LlamaArgs& args, const LlamaRun& run, const fs::path& dir) {
  write_layers(dir, "scores", run.scores);
  write_layers(dir, "normalized", run.normalized);
  Json summary;
  summary["maskpos_version"] = version_string;
  summary["command"] = "llama";
  summary["model"] = fs::absolute(args.model).lexically_normal().string();
  summary["config"] = llama_config_json(run.config);
  summary["precision"] = args.precision;
  summary["batch_size"] = run.batch.size();
  summary["seq_len"] = run.batch.front().size();
  summary["tokens"] = run.batch.size() * run.batch.front().size();
  const std::string title = default_title(args, run);
  summary["title"] = title;
  Json layers = Json::array();
  for (std::size_t l = 0; l < run.scores.size(); ++l) {
    Json layer;
    layer["layer"] = l + 1;
    layer.update(metrics_json(run.scores[l]));
    layers.push_back(layer);
  }
  summary["layers"] = layers;
  std::vector<NamedMatrix> panels;
  if (run.trace) {
    panels = run.trace->panels();
    Json trace;
    trace["layer"] = run.trace->layer + 1;
    Json files = Json::array();
    for (const auto& panel : panels) {
      const std::string file = "trace_" + panel.name + ".npy";
      write_npy((dir / file).string(), panel.values);
      Json entry;
      entry["name"] = panel.name;
      entry["title"] = panel.title;
      entry["file"] = file;
      files.push_back(entry);
    }
    trace["panels"] = files;
    summary["trace"] = trace;
  }
  if (!args.no_figure) {
    std::vector<std::string> figures = draw_llama_layers(dir, "figure", title, run.scores, run.normalized);
    if (run.trace) {
      const auto more = draw_llama_trace(dir, "trace", llama_trace_title(run.trace->layer + 1, title), panels);
      figures.insert(figures.end(), more.begin(), more.end());
    }
    summary["figures"] = figures;
  }
  summary["wall_seconds"] = run.wall_seconds;
  write_json(dir / "summary.json", summary);
}

}  // namespace

void check_llama_args(const LlamaArgs& args) {
  if (count_token_sources(args) != 1)
    throw UsageError("give exactly one of --tokens, --tokens-file and --batch-file");
  if (args.tokens_given && parse_ids(args.tokens, "--tokens").empty()) throw UsageError("--tokens: no token ids");
  if (args.trace_given && args.trace_layer < 1)
    throw UsageError(fmt::format("--trace-layer {}: layers are numbered from 1", args.trace_layer));
  try {
    (void)parse_mask(args.mask);
  } catch (const std::invalid_argument& error) {
    throw UsageError("--mask " + args.mask + ": " + without_prefix(error.what()));
  }
  if (args.precision != "float" && args.precision != "double")
    throw UsageError("--precision " + args.precision + ": must be float or double");
}

int llama_command(const LlamaArgs& args) {
  check_llama_args(args);
  check_output_dir(args.out);
  std::error_code error;
  if (!fs::is_directory(args.model, error)) throw UsageError("--model " + args.model + ": not a directory");
  std::vector<TokenIds> batch = read_batch(args);
  const Mask mask = parse_mask(args.mask);
  const LlamaRun run = args.precision == "double" ? run_model<double>(args, mask, std::move(batch))
                                                  : run_model<float>(args, mask, std::move(batch));
  OutputStage stage(args.out);
  save_run(args, run, stage.path());
  stage.commit();
  if (!args.quiet)
    fmt::print("maskpos llama: {} layers, B = {}, S = {} in {:.3f} s; last layer non-relative fraction {:.4f}; wrote {}\n",
               run.scores.size(), run.batch.size(), run.batch.front().size(), run.wall_seconds,
               non_relative_fraction(run.scores.back()), args.out);
  return 0;
}

std::string llama_trace_title(Index layer, const std::string& title) {
  return fmt::format("Sub-steps of layer {}, {}", layer, title);
}

std::vector<std::string> draw_llama_layers(const fs::path& dir, const std::string& stem, const std::string& title,
                                           const std::vector<Matrix<double>>& raw, const std::vector<Matrix<double>>& normalized) {
  // At most 8 layers per row, the rows balanced (22 layers: 8, 8, 6); each group gives a raw row and
  // a normalized row. Every panel has its own 1st/99th-percentile limits, as the paper's real-model
  // figures (the layers' ranges differ by orders of magnitude, and attention sinks are outliers).
  constexpr std::size_t kMaxColumns = 8;
  const std::size_t groups = (raw.size() + kMaxColumns - 1) / kMaxColumns;
  const std::size_t columns = (raw.size() + groups - 1) / groups;
  FigureGrid grid;
  grid.title = title;
  for (std::size_t first = 0; first < raw.size(); first += columns) {
    const std::size_t last = std::min(raw.size(), first + columns);
    for (int row = 0; row < 2; ++row) {
      grid.rows.emplace_back();
      for (std::size_t l = first; l < last; ++l) {
        HeatmapPanel panel;
        panel.values = row == 0 ? raw[l] : normalized[l];
        panel.title = fmt::format("Layer {}{}", l + 1, row == 0 ? "" : " (Normalized)");
        panel.limit_rule = LimitRule::Percentile;
        grid.rows.back().push_back(std::move(panel));
      }
    }
  }
  return save_png_and_svg(grid, dir, stem);
}

std::vector<std::string> draw_llama_trace(const fs::path& dir, const std::string& stem, const std::string& title,
                                          const std::vector<NamedMatrix>& panels) {
  // nope_params.png: 3 x 3 panels (a)-(i), each with its own colour bar (minimum to maximum of what is
  // shown); the symmetric Grams show their lower triangle only, the scores their visible entries.
  constexpr std::size_t kColumns = 3;
  FigureGrid grid;
  grid.title = title;
  for (std::size_t k = 0; k < panels.size(); ++k) {
    if (k % kColumns == 0) grid.rows.emplace_back();
    const NamedMatrix& named = panels[k];
    HeatmapPanel panel;
    panel.values = named.values;
    if (named.name.find("gram") != std::string::npos)
      for (Index j = 1; j < panel.values.cols(); ++j)
        panel.values.col(j).head(std::min(j, panel.values.rows())).setConstant(std::numeric_limits<double>::quiet_NaN());
    panel.title = "(" + named.name.substr(0, 1) + ") " + named.title;
    grid.rows.back().push_back(std::move(panel));
  }
  FigureOptions options;
  options.panel_size = 200;  // room for the panels' formula titles
  return save_png_and_svg(grid, dir, stem, options);
}

}  // namespace maskpos::cli
