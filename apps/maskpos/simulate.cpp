#include "simulate.hpp"

#include <fmt/core.h>

#include <fstream>
#include <future>
#include <thread>

namespace maskpos::cli {

void add_simulate_options(CLI::App& command, SimulateArgs& args, bool with_out) {
  command.add_option("--seq-len", args.seq_len, "sequence length S")->capture_default_str();
  command.add_option("--dim", args.dim, "token width d (a --rope-preset sets 128 unless --dim is given)")->capture_default_str();
  command.add_option("--layers", args.layers, "number of layers L")->capture_default_str();
  command.add_option("--alpha", args.alpha, "cosine between distinct Gaussian tokens, in [0, 1]")->capture_default_str();
  command.add_option("--inputs", args.inputs, "gaussian | orthonormal")->capture_default_str();
  command.add_option("--norm", args.norm, "l2 | layernorm | rmsnorm | none")->capture_default_str();
  command.add_option("--norm-eps", args.norm_eps, "epsilon of the normalisation")->capture_default_str();
  command.add_option("--score-scale", args.score_scale, "1 | sqrt-d (1/sqrt(d)) | d (1/d) | a positive constant")
      ->capture_default_str();
  command.add_option("--mask", args.mask, "causal | bidirectional | sliding:W | prefix:P")->capture_default_str();
  command.add_flag("--no-residual", args.no_residual, "X <- A Y instead of X <- A Y + X");
  command.add_flag("--rope", args.rope, "apply RoPE to queries and keys (values stay unrotated)");
  command.add_option("--rope-theta", args.rope_theta, "RoPE base theta")->capture_default_str();
  command.add_option("--rope-layout", args.rope_layout, "half (Llama/NeoX) | interleaved (GPT-J)")->capture_default_str();
  command.add_option("--rope-dim", args.rope_dim, "rotary dimension r (even, <= d; default: the width)");
  command.add_option("--rope-scaling", args.rope_scaling, "none | linear | dynamic | yarn | llama3")->capture_default_str();
  command.add_option("--rope-factor", args.rope_factor, "scaling factor (linear, dynamic, yarn, llama3)")->capture_default_str();
  command.add_option("--rope-original-context", args.rope_original_context,
                     "original context length (dynamic, yarn, llama3)")->capture_default_str();
  command.add_option("--rope-low-freq-factor", args.rope_low_freq_factor, "llama3 low_freq_factor")->capture_default_str();
  command.add_option("--rope-high-freq-factor", args.rope_high_freq_factor, "llama3 high_freq_factor")->capture_default_str();
  command.add_option("--rope-beta-fast", args.rope_beta_fast, "yarn beta_fast")->capture_default_str();
  command.add_option("--rope-beta-slow", args.rope_beta_slow, "yarn beta_slow")->capture_default_str();
  command.add_option("--rope-attention-factor", args.rope_attention_factor,
                     "yarn attention factor (0: the default 0.1 ln(factor) + 1)")->capture_default_str();
  command.add_flag("--rope-no-truncate", args.rope_no_truncate, "yarn: do not round the correction range");
  command.add_option("--rope-preset", args.rope_preset, "llama3.1-8b | qwen3-8b | phi-4 (implies --rope)");
  command.add_option("--method", args.method, "monte-carlo | mean-field (the large-width limit)")->capture_default_str();
  command.add_option("--samples", args.samples, "Monte Carlo samples B")->capture_default_str();
  command.add_option("--seed", args.seed, "random seed")->capture_default_str();
  command.add_option("--threads", args.threads, "worker threads (0: all cores)")->capture_default_str();
  command.add_option("--precision", args.precision, "float | double (compute type; sums are always double)")
      ->capture_default_str();
  command.add_option("--path", args.path,
                     "auto | direct | gram | triangular: how each Monte Carlo sequence is propagated (auto: the "
                     "triangular frame for gaussian inputs without RoPE; direct and gram average over the same tokens)")
      ->capture_default_str();
  command.add_option("--max-memory", args.max_memory_mb,
                     "refuse runs whose estimated working memory exceeds this many MB (default: half the available memory)");
  command.add_flag("--quiet", args.quiet, "no progress bar and no summary line");
  command.add_flag("--no-figure", args.no_figure, "skip figure.png / figure.svg");
  command.add_option("--title", args.title, "figure title");
  if (with_out) command.add_option("--out", args.out, "output directory (replaced atomically)")->required();
}

namespace {

RopeConfig make_rope(const SimulateArgs& args) {
  RopeConfig rope;
  if (!args.rope_preset.empty()) rope = rope_preset(args.rope_preset).rope;
  else {
    rope.theta = args.rope_theta;
    rope.rotary_dim = args.rope_dim;
    rope.layout = parse_rope_layout(args.rope_layout);
    rope.scaling.kind = parse_rope_scaling_kind(args.rope_scaling);
    rope.scaling.factor = args.rope_factor;
    rope.scaling.original_max_position = args.rope_original_context;
    rope.scaling.low_freq_factor = args.rope_low_freq_factor;
    rope.scaling.high_freq_factor = args.rope_high_freq_factor;
    rope.scaling.beta_fast = args.rope_beta_fast;
    rope.scaling.beta_slow = args.rope_beta_slow;
    rope.scaling.attention_factor = args.rope_attention_factor;
    rope.scaling.truncate = !args.rope_no_truncate;
  }
  return rope;
}

/// Available memory from /proc/meminfo (MemAvailable), in bytes; 0 when unknown.
double available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kilobytes = 0;
  std::string unit;
  while (meminfo >> key >> kilobytes >> unit)
    if (key == "MemAvailable:") return kilobytes * 1024.0;
  return 0;
}

}  // namespace

RunSpec make_run_spec(const SimulateArgs& args) {
  RunSpec spec;
  auto& config = spec.config;
  config.layers = args.layers;
  config.norm = parse_norm(args.norm);
  config.norm_eps = args.norm_eps;
  config.scale = parse_score_scale(args.score_scale);
  config.mask = parse_mask(args.mask);
  config.residual = !args.no_residual;
  if (args.rope || !args.rope_preset.empty()) config.rope = make_rope(args);
  const InputKind kind = parse_input_kind(args.inputs);
  // A preset fixes the head dimension; --dim overrides it only when given explicitly.
  const Index dim = !args.rope_preset.empty() && !args.dim_given ? rope_preset(args.rope_preset).head_dim : args.dim;
  spec.inputs = kind == InputKind::Gaussian ? InputSpec::gaussian(args.seq_len, dim, args.alpha)
                                            : InputSpec::orthonormal(args.seq_len, dim);
  spec.inputs.alpha = args.alpha;
  if (args.method == "mean-field") spec.mean_field = true;
  else if (args.method != "monte-carlo") detail::throw_invalid("method", args.method, "monte-carlo or mean-field");
  if (args.precision == "double") spec.double_precision = true;
  else if (args.precision != "float") detail::throw_invalid("precision", args.precision, "float or double");
  spec.options.samples = args.samples;
  spec.options.seed = args.seed;
  spec.options.threads = args.threads;
  spec.options.path = parse_monte_carlo_path(args.path);
  spec.inputs.validate();
  // In the compute type of the run (the large-width engine always computes in double).
  if (spec.double_precision || spec.mean_field) config.validate_for<double>(spec.inputs.seq_len, spec.inputs.dim);
  else config.validate_for<float>(spec.inputs.seq_len, spec.inputs.dim);
  if (!spec.mean_field) {  // the path Auto takes is recorded in summary.json; a path that cannot apply is refused
    spec.options.path = spec.double_precision ? resolve_path<double>(config, spec.inputs, spec.options.path)
                                              : resolve_path<float>(config, spec.inputs, spec.options.path);
  }
  detail::require(args.samples >= 1, "samples", args.samples, "samples >= 1");
  detail::require(args.threads >= 0, "threads", args.threads, "threads >= 0 (0 = all cores)");
  detail::require(args.max_memory_mb >= 0, "max-memory", args.max_memory_mb, "max-memory >= 0 MB");

  // Working memory: per thread (monte_carlo starts at most one per sample), the exact sums (3 per layer,
  // 24 bytes per visible entry) and the kernel's S x S and S x d matrices; plus the double results (4 S x S
  // per layer). `maskpos reproduce` checks each of its runs here too.
  const double S = static_cast<double>(args.seq_len), d = static_cast<double>(dim), L = static_cast<double>(args.layers);
  const double threads = static_cast<double>(std::min<std::int64_t>(
      args.threads == 0 ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) : args.threads, args.samples));
  const double scalar = spec.double_precision ? 8.0 : 4.0;
  // The large-width engine works on a handful of S x S double matrices, whatever d.
  const double per_thread = spec.mean_field ? 0.0 : 3.0 * L * S * S * 24.0 + scalar * (4.0 * S * S + 6.0 * S * d) + 8.0 * (S + 1) * d;
  const double estimate = per_thread * threads + 4.0 * L * S * S * 8.0 + (spec.mean_field ? 12.0 * S * S * 8.0 : 0.0);
  const double available = available_memory_bytes();
  const double limit = args.max_memory_mb > 0 ? args.max_memory_mb * 1048576.0 : (available > 0 ? available / 2 : 8e9);
  if (estimate > limit)
    throw UsageError(fmt::format("estimated working memory {:.0f} MB exceeds the limit of {:.0f} MB; raise it with "
                                 "--max-memory MB (available: {:.0f} MB)",
                                 estimate / 1048576.0, limit / 1048576.0, available / 1048576.0));
  return spec;
}

Simulation run_simulation(const SimulateArgs& args, const RunSpec& spec) {
  Simulation run;
  run.spec = spec;
  const auto start = std::chrono::steady_clock::now();
  if (spec.mean_field) {
    const auto inputs = spec.inputs.kind == InputKind::Orthonormal ? MeanFieldInputs::orthonormal(spec.inputs.seq_len)
                                                                   : MeanFieldInputs::alpha(spec.inputs.seq_len, spec.inputs.alpha);
    const auto result = mean_field<double>(spec.config, inputs, spec.inputs.dim);
    run.scores = result.scores;
    run.probs = result.probs;
  } else {
    ProgressBar progress(!args.quiet);
    MonteCarloOptions options = spec.options;
    options.progress = [&](std::int64_t done, std::int64_t total) { progress.update(done, total); };
    const auto result = spec.double_precision ? monte_carlo<double>(spec.config, spec.inputs, options)
                                              : monte_carlo<float>(spec.config, spec.inputs, options);
    progress.finish();
    run.scores = result.mean_scores;
    run.probs = result.mean_probs;
    run.stderr_scores = result.stderr_scores;
    run.out_of_range = result.out_of_range;
  }
  run.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& scores : run.scores) run.normalized.push_back(diagonal_normalize(scores));
  return run;
}

Json config_json(const SimulateArgs& args, const RunSpec& spec) {
  const auto& config = spec.config;
  Json json;
  json["seq_len"] = spec.inputs.seq_len;
  json["dim"] = spec.inputs.dim;
  json["layers"] = config.layers;
  json["inputs"] = to_string(spec.inputs.kind);
  json["alpha"] = spec.inputs.alpha;
  json["norm"] = to_string(config.norm);
  json["norm_eps"] = config.norm_eps;
  json["score_scale"] = config.scale.name();
  json["score_scale_factor"] = config.scale.factor(spec.inputs.dim);
  json["mask"] = config.mask.name();
  json["residual"] = config.residual;
  if (config.rope) {
    const auto& rope = *config.rope;
    const auto frequencies = rope_frequencies(rope, spec.inputs.dim, spec.inputs.seq_len);
    Json r;
    if (!args.rope_preset.empty()) r["preset"] = args.rope_preset;
    r["theta"] = rope.theta;
    r["layout"] = to_string(rope.layout);
    r["rotary_dim"] = frequencies.rotary_dim;
    r["scaling"] = to_string(rope.scaling.kind);
    r["factor"] = rope.scaling.factor;
    r["original_context"] = rope.scaling.original_max_position;
    r["low_freq_factor"] = rope.scaling.low_freq_factor;
    r["high_freq_factor"] = rope.scaling.high_freq_factor;
    r["beta_fast"] = rope.scaling.beta_fast;
    r["beta_slow"] = rope.scaling.beta_slow;
    r["truncate"] = rope.scaling.truncate;
    r["attention_factor"] = frequencies.attention_factor;
    json["rope"] = r;
  } else {
    json["rope"] = nullptr;
  }
  json["method"] = spec.mean_field ? "mean-field" : "monte-carlo";
  if (!spec.mean_field) {
    json["samples"] = spec.options.samples;
    json["seed"] = spec.options.seed;
    json["threads"] = spec.options.threads;
    json["path"] = to_string(spec.options.path);
  }
  json["precision"] = spec.double_precision ? "double" : "float";
  return json;
}

std::string describe(const SimulateArgs& args, const RunSpec& spec) {
  if (!args.title.empty()) return args.title;
  const auto& c = spec.config;
  std::string text = fmt::format("{} S={} d={} {} scale={} {}", spec.mean_field ? "mean-field" : "Monte Carlo",
                                 spec.inputs.seq_len, spec.inputs.dim, to_string(c.norm), c.scale.name(), c.mask.name());
  if (spec.inputs.kind == InputKind::Gaussian) text += fmt::format(" alpha={}", spec.inputs.alpha);
  else text += " orthonormal";
  if (c.rope) text += fmt::format(" RoPE theta={}", c.rope->theta);
  if (!c.residual) text += " no-residual";
  if (!spec.mean_field) text += fmt::format(" B={}", spec.options.samples);
  return text;
}

void save_simulation(const SimulateArgs& args, const Simulation& run, const std::filesystem::path& dir) {
  // The arrays are written on another thread while this one computes the metrics and draws the
  // figure: each file is fsync'ed, and those waits on the disk (about 7 ms for the 16 files of the
  // paper run here) then overlap with the drawing. A write error reaches the caller through get()
  // below; if the drawing throws first, the future's destructor waits for the writes before the
  // stage is removed.
  std::future<void> arrays = std::async(std::launch::async, [&run, &dir] {
    write_layers(dir, "scores", run.scores);
    write_layers(dir, "probs", run.probs);
    if (!run.stderr_scores.empty()) write_layers(dir, "stderr", run.stderr_scores);
    write_layers(dir, "normalized", run.normalized);
  });
  Json summary;
  summary["maskpos_version"] = version_string;
  summary["config"] = config_json(args, run.spec);
  Json layers = Json::array();
  for (std::size_t l = 0; l < run.scores.size(); ++l) {
    Json layer;
    layer["layer"] = l + 1;
    layer.update(metrics_json(run.scores[l]));
    if (!run.stderr_scores.empty()) {
      const auto& se = run.stderr_scores[l];
      layer["max_stderr"] = se.array().isNaN().select(0.0, se.array()).maxCoeff();
    }
    layers.push_back(layer);
  }
  summary["layers"] = layers;
  summary["wall_seconds"] = run.wall_seconds;
  if (!run.spec.mean_field) {
    summary["samples"] = run.spec.options.samples;
    summary["samples_per_second"] = static_cast<double>(run.spec.options.samples) / run.wall_seconds;
    summary["out_of_range_values"] = run.out_of_range;
  }
  if (!args.no_figure) {
    summary["figures"] = draw_layer_figure(dir, "figure", describe(args, run.spec), "Layer", run.scores, run.normalized);
  }
  arrays.get();
  write_json(dir / "summary.json", summary);
}

int simulate_command(const SimulateArgs& args) {
  check_output_dir(args.out);
  const RunSpec spec = make_run_spec(args);
  const Simulation run = run_simulation(args, spec);
  if (run.out_of_range > 0)
    throw std::runtime_error(fmt::format("{} values were NaN, infinite or beyond the a-priori bound and were left out; "
                                         "no output written", run.out_of_range));
  OutputStage stage(args.out);
  save_simulation(args, run, stage.path());
  stage.commit();
  if (!args.quiet) {
    const double fraction = non_relative_fraction(run.scores.back());
    fmt::print("maskpos simulate: {} layers in {:.3f} s; last layer non-relative fraction {:.4f}; wrote {}\n",
               run.scores.size(), run.wall_seconds, fraction, args.out);
  }
  return 0;
}

}  // namespace maskpos::cli
