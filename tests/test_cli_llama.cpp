// End-to-end tests of `maskpos llama`: a tiny random checkpoint is written by the test
// (tests/safetensors_writer.hpp), build/bin/maskpos runs on it, and what it wrote is compared with
// llama_mean_scores / llama_substep_trace called directly on the same checkpoint.
#include <maskpos/analysis.hpp>
#include <maskpos/checkpoint.hpp>
#include <maskpos/npy.hpp>
#include <maskpos/version.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "safetensors_writer.hpp"

namespace fs = std::filesystem;

namespace {

using cli_runner::fresh_dir;
using cli_runner::read_json;
using cli_runner::run;
using cli_runner::same_or_both_nan;

Eigen::MatrixXd read_matrix(const fs::path& path) { return maskpos::read_npy_matrices(path.string()).at(0); }

// A tiny Llama checkpoint: V = 16, d = 8, F = 12, L = 3 blocks, 4 query heads of 4 and 2 KV heads,
// RoPE in the config. Values k / 256 (projections), k / 64 (norm weights) and k / 32 (embeddings)
// are exact in F32, so the file holds exactly these numbers.
constexpr int kVocab = 16, kDim = 8, kHidden = 12, kLayers = 3, kHeads = 4, kKvHeads = 2, kHeadDim = 4;

void write_checkpoint(const fs::path& dir, unsigned seed, const std::string& skip = "") {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": "
                                     << kVocab << ", \"hidden_size\": " << kDim << ", \"intermediate_size\": " << kHidden
                                     << ", \"num_hidden_layers\": " << kLayers << ", \"num_attention_heads\": " << kHeads
                                     << ", \"num_key_value_heads\": " << kKvHeads << ", \"head_dim\": " << kHeadDim
                                     << ", \"rms_norm_eps\": 1e-05, \"rope_theta\": 100.0, \"hidden_act\": \"silu\"}";
  std::mt19937 engine(seed);
  auto tensor = [&](const std::string& name, std::vector<std::uint64_t> shape, double denominator, int low, int high) {
    testio::Tensor t{name, "F32", shape, {}};
    std::uint64_t count = 1;
    for (const auto extent : shape) count *= extent;
    for (std::uint64_t k = 0; k < count; ++k)
      t.values.push_back((low + static_cast<int>(engine() % static_cast<unsigned>(high - low + 1))) / denominator);
    return t;
  };
  auto u = [](int n) { return static_cast<std::uint64_t>(n); };
  std::vector<testio::Tensor> tensors = {tensor("model.embed_tokens.weight", {u(kVocab), u(kDim)}, 32, -127, 127)};
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    tensors.push_back(tensor(p + "input_layernorm.weight", {u(kDim)}, 64, 32, 127));
    tensors.push_back(tensor(p + "self_attn.q_proj.weight", {u(kHeads * kHeadDim), u(kDim)}, 256, -127, 127));
    tensors.push_back(tensor(p + "self_attn.k_proj.weight", {u(kKvHeads * kHeadDim), u(kDim)}, 256, -127, 127));
    tensors.push_back(tensor(p + "self_attn.v_proj.weight", {u(kKvHeads * kHeadDim), u(kDim)}, 256, -127, 127));
    tensors.push_back(tensor(p + "self_attn.o_proj.weight", {u(kDim), u(kHeads * kHeadDim)}, 256, -127, 127));
    tensors.push_back(tensor(p + "post_attention_layernorm.weight", {u(kDim)}, 64, 32, 127));
    tensors.push_back(tensor(p + "mlp.gate_proj.weight", {u(kHidden), u(kDim)}, 256, -127, 127));
    tensors.push_back(tensor(p + "mlp.up_proj.weight", {u(kHidden), u(kDim)}, 256, -127, 127));
    tensors.push_back(tensor(p + "mlp.down_proj.weight", {u(kDim), u(kHidden)}, 256, -127, 127));
  }
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [&](const testio::Tensor& t) { return t.name == skip; }),
                tensors.end());
  testio::write((dir / "model.safetensors").string(), tensors);
}

const std::vector<maskpos::TokenIds> kBatch = {{3, 1, 4, 1, 5, 9, 2}, {6, 5, 3, 5, 8, 9, 7}, {0, 15, 0, 15, 2, 2, 11}};

}  // namespace

TEST_CASE("llama: scores, normalized scores and the sub-step trace equal the library called directly") {
  const fs::path model = fresh_dir("model");
  write_checkpoint(model, 7);
  const fs::path batch_file = model / "batch.txt";
  std::ofstream(batch_file) << "3 1 4 1 5 9 2\n\n6,5,3,5,8,9,7\n 0, 15 0 15 2 2 11 \n";  // separators and a blank line
  const fs::path out = fresh_dir("out");
  const auto outcome = run("llama --model " + model.string() + " --batch-file " + batch_file.string() +
                           " --trace-layer 2 --quiet --out " + out.string());
  INFO(outcome.stderr_text);
  REQUIRE(outcome.exit_code == 0);

  maskpos::LlamaCheckpoint<float> direct(model);
  const auto scores = maskpos::llama_mean_scores(direct, kBatch);
  REQUIRE(scores.size() == static_cast<std::size_t>(kLayers));
  for (int l = 0; l < kLayers; ++l) {
    const std::string layer = std::to_string(l + 1);
    const auto& expected = scores[static_cast<std::size_t>(l)];
    CHECK(same_or_both_nan(read_matrix(out / ("scores_layer" + layer + ".npy")), expected));
    CHECK(same_or_both_nan(read_matrix(out / ("normalized_layer" + layer + ".npy")), maskpos::diagonal_normalize(expected)));
  }
  const auto panels = maskpos::llama_substep_trace(direct, kBatch, 1).panels();
  REQUIRE(panels.size() == 9);  // block 2 of 3: the next block's panels (h), (i) exist
  for (const auto& panel : panels) {
    INFO(panel.name);
    CHECK(same_or_both_nan(read_matrix(out / ("trace_" + panel.name + ".npy")), panel.values));
  }

  const auto summary = read_json(out / "summary.json");
  CHECK(summary["maskpos_version"] == maskpos::version_string);
  CHECK(summary["command"] == "llama");
  CHECK(summary["config"]["layers"] == kLayers);
  CHECK(summary["config"]["vocab_size"] == kVocab);
  CHECK(summary["config"]["mask"] == "causal");
  CHECK(summary["config"]["rope"]["theta"] == 100.0);
  CHECK(summary["batch_size"] == 3);
  CHECK(summary["seq_len"] == 7);
  CHECK(summary["tokens"] == 21);
  REQUIRE(summary["layers"].size() == static_cast<std::size_t>(kLayers));
  CHECK(summary["layers"][2]["non_relative_fraction"].get<double>() == Approx(maskpos::non_relative_fraction(scores[2])));
  CHECK(summary["trace"]["layer"] == 2);
  CHECK(summary["trace"]["panels"].size() == 9);
  for (const char* file : {"figure.png", "figure.svg", "trace.png", "trace.svg"}) CHECK(fs::exists(out / file));
  // `maskpos figure DIR` redraws both figures from the saved files.
  fs::remove(out / "figure.png");
  fs::remove(out / "trace.png");
  CHECK(run("figure " + out.string()).exit_code == 0);
  CHECK(fs::exists(out / "figure.png"));
  CHECK(fs::exists(out / "trace.png"));
  fs::remove_all(out);
  fs::remove_all(model);
}

TEST_CASE("llama: --tokens / --tokens-file, --nope, --mask and --precision double reach the model") {
  const fs::path model = fresh_dir("model_options");
  write_checkpoint(model, 11);
  const maskpos::TokenIds tokens = {2, 7, 1, 8, 2, 8, 1, 8};
  const fs::path tokens_file = model / "tokens.txt";
  std::ofstream(tokens_file) << "2, 7, 1,\n8 2\n8,1,8\n";  // one sequence over several lines
  const fs::path out_tokens = fresh_dir("out_tokens"), out_file = fresh_dir("out_tokens_file");
  const std::string options = " --nope --mask sliding:3 --precision double --trace-layer 3 --no-figure --quiet --out ";
  const auto first = run("llama --model " + model.string() + " --tokens 2,7,1,8,2,8,1,8" + options + out_tokens.string());
  const auto second = run("llama --model " + model.string() + " --tokens-file " + tokens_file.string() + options + out_file.string());
  INFO(first.stderr_text << second.stderr_text);
  REQUIRE(first.exit_code == 0);
  REQUIRE(second.exit_code == 0);

  maskpos::LlamaCheckpoint<double> direct(model);
  direct.set_rope(std::nullopt);
  direct.set_mask(maskpos::Mask::sliding_window(3));
  const auto scores = maskpos::llama_mean_scores(direct, {tokens});
  const auto panels = maskpos::llama_substep_trace(direct, {tokens}, 2).panels();
  REQUIRE(panels.size() == 7);  // the last block has no next block: no (h), (i)
  for (const fs::path& out : {out_tokens, out_file}) {
    for (int l = 0; l < kLayers; ++l)
      CHECK(same_or_both_nan(read_matrix(out / ("scores_layer" + std::to_string(l + 1) + ".npy")),
                             scores[static_cast<std::size_t>(l)]));
    for (const auto& panel : panels) CHECK(same_or_both_nan(read_matrix(out / ("trace_" + panel.name + ".npy")), panel.values));
    CHECK(!fs::exists(out / "trace_h_next_normed_gram.npy"));
    CHECK(!fs::exists(out / "figure.png"));
    const auto summary = read_json(out / "summary.json");
    CHECK(summary["config"]["rope"].is_null());
    CHECK(summary["config"]["mask"] == "sliding:3");
    CHECK(summary["precision"] == "double");
    fs::remove_all(out);
  }
  // The sliding window hides keys more than 2 positions back: NaN there, finite inside.
  CHECK(std::isnan(scores[0](5, 2)));
  CHECK(std::isfinite(scores[0](5, 3)));
  fs::remove_all(model);
}

TEST_CASE("llama: bad input gives exit code 2, one line naming the problem, DIR untouched") {
  const fs::path model = fresh_dir("model_good");
  write_checkpoint(model, 3);
  const fs::path no_layer = fresh_dir("model_missing_tensor");
  write_checkpoint(no_layer, 3, "model.layers.1.mlp.down_proj.weight");
  const fs::path garbage_config = fresh_dir("model_garbage_config");
  write_checkpoint(garbage_config, 3);
  std::ofstream(garbage_config / "config.json") << "{ this is not json";
  const fs::path truncated = fresh_dir("model_truncated");
  write_checkpoint(truncated, 3);
  fs::resize_file(truncated / "model.safetensors", fs::file_size(truncated / "model.safetensors") / 2);
  const fs::path ragged = model / "ragged.txt", empty = model / "empty.txt";
  std::ofstream(ragged) << "1 2 3\n4 5\n";
  std::ofstream(empty) << "\n  \n";

  const std::string good = "llama --model " + model.string() + " ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"llama --model " + model.string() + "_absent --tokens 1,2", "_absent"},
      {"llama --model " + no_layer.string() + " --tokens 1,2", "down_proj"},
      {"llama --model " + garbage_config.string() + " --tokens 1,2", "config.json"},
      {"llama --model " + truncated.string() + " --tokens 1,2", "model.safetensors"},
      {good + "--tokens 1,16,2", "vocab"},
      {good + "--tokens=-1,2", "negative"},
      {good + "--tokens 1,two", "two"},
      {good + "--tokens ''", "no token ids"},
      {good + "--tokens-file " + empty.string(), "no token ids"},
      {good + "--tokens-file " + (model / "absent.txt").string(), "absent.txt"},
      {good + "--batch-file " + ragged.string(), "same length"},
      {good + "--tokens 1,2 --trace-layer 0", "--trace-layer"},
      {good + "--tokens 1,2 --trace-layer 4", "--trace-layer"},
      {good + "--tokens 1,2 --mask diagonal", "mask"},
      {good + "--tokens 1,2 --mask prefix:3", "mask"},  // a prefix longer than the sequence
      {good + "--tokens 1,2 --precision half", "precision"},
      {good + "--tokens 1,2 --batch-file " + ragged.string(), "exactly one"},
      {good, "exactly one"},
      {"llama --tokens 1,2", "--model"},
  };
  const fs::path out = fresh_dir("bad");
  fs::create_directories(out);
  { std::ofstream(out / "keep.txt") << "previous result\n"; }
  const fs::path missing = fresh_dir("never_created");
  cli_runner::check_bad_input(cases, out, missing);
  // The same good command succeeds and replaces DIR.
  REQUIRE(run(good + "--tokens 1,2,3 --no-figure --quiet --out " + out.string()).exit_code == 0);
  CHECK(!fs::exists(out / "keep.txt"));
  CHECK(fs::exists(out / "scores_layer3.npy"));
  for (const fs::path& dir : {out, model, no_layer, garbage_config, truncated}) fs::remove_all(dir);
}

TEST_CASE("llama has --help") { CHECK(run("llama --help").exit_code == 0); }
