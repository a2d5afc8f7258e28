// Paper Sec. 4.2 / 5.2 with learned weights: per-layer mean pre-softmax scores of a Llama-style model
// and the sub-step Gram trace of one block (the panels of nope_params.png), printed as metrics.
//
//   llama_trace                                   a small random NoPE model (no checkpoint needed)
//   llama_trace --model DIR --tokens 1,2,3,...    a Hugging Face checkpoint directory (config.json +
//                                                 *.safetensors); token ids from the command line
//   llama_trace --model DIR --tokens-file FILE    one sequence of ids per line (spaces or commas);
//                                                 all lines must have the same length (a batch)
// Options: --layer L (1-based block to trace, default 1), --nope (run without RoPE),
//          --mask causal|bidirectional|sliding:W|prefix:P, --double (compute in double).
//
// Memory: a checkpoint is streamed one block at a time and only the embedding rows of the given
// tokens are read, so the peak is about one block's weights plus B x S x d activations.
#include <maskpos/analysis.hpp>
#include <maskpos/checkpoint.hpp>
#include <maskpos/llama.hpp>

#include <fmt/core.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string model;
  std::vector<maskpos::TokenIds> batch;
  maskpos::Index layer = 1;
  bool nope = false;
  bool use_double = false;
  maskpos::Mask mask;
};

maskpos::TokenIds parse_ids(std::string text) {
  for (char& c : text)
    if (c == ',') c = ' ';
  std::istringstream in(text);
  maskpos::TokenIds ids;
  std::int64_t id;
  while (in >> id) ids.push_back(id);
  if (!in.eof()) throw std::invalid_argument("token ids must be integers: " + text);
  return ids;
}

maskpos::Mask parse_mask(const std::string& text) {
  if (text == "causal") return maskpos::Mask::causal();
  if (text == "bidirectional") return maskpos::Mask::bidirectional();
  if (text.rfind("sliding:", 0) == 0) return maskpos::Mask::sliding_window(std::stol(text.substr(8)));
  if (text.rfind("prefix:", 0) == 0) return maskpos::Mask::prefix_lm(std::stol(text.substr(7)));
  throw std::invalid_argument("unknown mask '" + text + "' (causal, bidirectional, sliding:W, prefix:P)");
}

Options parse(int argc, char** argv) {
  Options options;
  for (int k = 1; k < argc; ++k) {
    const std::string arg = argv[k];
    auto value = [&]() -> std::string {
      if (k + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++k];
    };
    if (arg == "--model") options.model = value();
    else if (arg == "--tokens") options.batch.push_back(parse_ids(value()));
    else if (arg == "--tokens-file") {
      std::ifstream in(value());
      if (!in) throw std::invalid_argument("cannot open the tokens file");
      std::string line;
      while (std::getline(in, line))
        if (line.find_first_not_of(" \t\r,") != std::string::npos) options.batch.push_back(parse_ids(line));
    } else if (arg == "--layer") options.layer = std::stol(value());
    else if (arg == "--nope") options.nope = true;
    else if (arg == "--double") options.use_double = true;
    else if (arg == "--mask") options.mask = parse_mask(value());
    else throw std::invalid_argument("unknown option " + arg);
  }
  return options;
}

// A small random NoPE model in the spirit of the paper's: weights N(0, 1/fan_in), norm weights 1.
template <class Scalar>
std::unique_ptr<maskpos::LlamaWeightSource<Scalar>> random_model() {
  maskpos::LlamaConfig config;
  config.vocab_size = 256;
  config.hidden_size = 128;
  config.intermediate_size = 344;
  config.layers = 6;
  config.heads = 8;
  config.kv_heads = 2;
  config.head_dim = 16;
  config.norm_eps = 1e-5;
  std::mt19937 engine(2509);
  std::normal_distribution<double> normal;
  auto matrix = [&](maskpos::Index rows, maskpos::Index cols) {
    maskpos::Matrix<Scalar> m(rows, cols);
    const double scale = 1.0 / std::sqrt(static_cast<double>(cols));
    for (maskpos::Index j = 0; j < cols; ++j)
      for (maskpos::Index i = 0; i < rows; ++i) m(i, j) = static_cast<Scalar>(scale * normal(engine));
    return m;
  };
  const maskpos::Index d = config.hidden_size, q = config.heads * config.head_dim, kv = config.kv_heads * config.head_dim,
                       F = config.intermediate_size;
  std::vector<maskpos::LlamaLayerWeights<Scalar>> layers(static_cast<std::size_t>(config.layers));
  for (auto& w : layers) {
    w.input_norm_weight = w.post_norm_weight = maskpos::Vector<Scalar>::Ones(d);
    w.q_proj = matrix(q, d);
    w.k_proj = matrix(kv, d);
    w.v_proj = matrix(kv, d);
    w.o_proj = matrix(d, q);
    w.gate_proj = matrix(F, d);
    w.up_proj = matrix(F, d);
    w.down_proj = matrix(d, F);
  }
  maskpos::Matrix<Scalar> embedding = matrix(config.vocab_size, d) * static_cast<Scalar>(std::sqrt(static_cast<double>(d)));
  return std::make_unique<maskpos::LlamaModel<Scalar>>(config, std::move(embedding), std::move(layers));
}

// Summary of a lower-triangular (or full) S x S matrix: the first-key column, the diagonal, the rest.
struct Summary {
  double first_column = 0, diagonal = 0, rest = 0, non_relative = 0;
};

Summary summarise(const maskpos::Matrix<double>& m, bool lower_only) {
  Summary s;
  maskpos::Matrix<double> masked = m;
  double first = 0, diagonal = 0, rest = 0;
  long n_first = 0, n_diagonal = 0, n_rest = 0;
  for (maskpos::Index i = 0; i < m.rows(); ++i)
    for (maskpos::Index j = 0; j < m.cols(); ++j) {
      if (lower_only && j > i) masked(i, j) = std::nan("");
      const double v = masked(i, j);
      if (std::isnan(v)) continue;
      if (i == j) diagonal += v, ++n_diagonal;
      else if (j == 0) first += v, ++n_first;
      else rest += v, ++n_rest;
    }
  s.first_column = n_first ? first / static_cast<double>(n_first) : std::nan("");
  s.diagonal = n_diagonal ? diagonal / static_cast<double>(n_diagonal) : std::nan("");
  s.rest = n_rest ? rest / static_cast<double>(n_rest) : std::nan("");
  s.non_relative = maskpos::non_relative_fraction(masked);
  return s;
}

template <class Scalar>
int run(const Options& options) {
  std::unique_ptr<maskpos::LlamaWeightSource<Scalar>> model;
  std::vector<maskpos::TokenIds> batch = options.batch;
  if (options.model.empty()) {
    model = random_model<Scalar>();
    std::mt19937 engine(42);
    for (int b = 0; b < 64; ++b) {
      maskpos::TokenIds ids;
      for (int i = 0; i < 50; ++i) ids.push_back(static_cast<std::int64_t>(engine() % 256));
      batch.push_back(ids);
    }
    fmt::print("random NoPE model (no --model given): L = 6, d = 128, 8 query heads of 16, 2 KV heads; B = 64, S = 50\n");
  } else {
    if (batch.empty()) throw std::invalid_argument("--model needs --tokens or --tokens-file");
    model = std::make_unique<maskpos::LlamaCheckpoint<Scalar>>(options.model);
    if (options.nope) model->set_rope(std::nullopt);
    const auto& c = model->config();
    fmt::print("{}: L = {}, d = {}, {} query heads of {}, {} KV heads, {}; B = {}, S = {}\n", options.model, c.layers,
               c.hidden_size, c.heads, c.head_dim, c.kv_heads, c.rope ? "RoPE" : "NoPE", batch.size(), batch.front().size());
  }
  model->set_mask(options.mask);
  const bool lower = options.mask.kind == maskpos::MaskKind::Causal;

  fmt::print("\nper-layer mean scaled pre-softmax scores (heads and batch averaged), mask {}\n", options.mask.name());
  fmt::print("{:>5} {:>12} {:>12} {:>12} {:>14}\n", "layer", "first key", "diagonal", "other", "non-relative");
  const auto means = maskpos::llama_mean_scores(*model, batch);
  for (std::size_t l = 0; l < means.size(); ++l) {
    const Summary s = summarise(means[l], false);
    fmt::print("{:>5} {:>12.4f} {:>12.4f} {:>12.4f} {:>14.4f}\n", l + 1, s.first_column, s.diagonal, s.rest, s.non_relative);
  }

  const maskpos::Index layer = options.layer - 1;
  fmt::print("\nsub-step trace of block {} (paper Sec. 4.2, nope_params.png); Grams summarised over {}\n", options.layer,
             lower ? "their lower triangle" : "all entries");
  fmt::print("{:<20} {:>12} {:>12} {:>12} {:>14}\n", "panel", "first key", "diagonal", "other", "non-relative");
  const auto trace = maskpos::llama_substep_trace(*model, batch, layer);
  for (const auto& panel : trace.panels()) {
    const Summary s = summarise(panel.values, lower);
    fmt::print("{:<20} {:>12.4g} {:>12.4g} {:>12.4g} {:>14.4f}   {}\n", panel.name, s.first_column, s.diagonal, s.rest,
               s.non_relative, panel.title);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse(argc, argv);
    return options.use_double ? run<double>(options) : run<float>(options);
  } catch (const std::exception& error) {
    fmt::print(stderr, "llama_trace: {}\n", error.what());
    return 1;
  }
}
