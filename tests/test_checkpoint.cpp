// Tests of checkpoint.hpp and model_config.hpp: a tiny random Llama model written by the test to a
// Hugging Face-style directory (config.json + safetensors in F32, F16 and BF16, single file and
// sharded), loaded by maskpos and run against independent references (plain loops in double, and
// PyTorch when /usr/bin/python3 has torch).
#include <maskpos/checkpoint.hpp>
#include <maskpos/model_config.hpp>

#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "llama_reference.hpp"
#include "safetensors_writer.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

fs::path scratch_dir(const std::string& name) {
  const fs::path dir = fs::path(MASKPOS_BINARY_DIR) / "test_scratch" / "checkpoint" / (name + "_" + std::to_string(::getpid()));  // CTest runs test cases in parallel
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::exception& error) {
    return error.what();
  }
  return "(no error)";
}

void write_config(const fs::path& dir, const llama_reference::TinyModel& m, const std::string& extra = "") {
  std::ofstream(dir / "config.json") << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\","
                                     << "\"vocab_size\": " << m.vocab << ", \"hidden_size\": " << m.d
                                     << ", \"intermediate_size\": " << m.F << ", \"num_hidden_layers\": " << m.L
                                     << ", \"num_attention_heads\": " << m.H << ", \"num_key_value_heads\": " << m.Hkv
                                     << ", \"head_dim\": " << m.dh << ", \"rms_norm_eps\": " << m.eps
                                     << ", \"rope_theta\": " << m.theta << ", \"hidden_act\": \"silu\"" << extra << "}";
}

// Writes the tiny model as a checkpoint directory; `dtype_of(name)` picks each tensor's dtype and
// `shards` > 1 spreads the tensors round-robin over that many files with an index.
void write_checkpoint(const fs::path& dir, const llama_reference::TinyModel& m,
                      const std::function<std::string(const std::string&)>& dtype_of, int shards = 1,
                      const std::string& skip = "") {
  write_config(dir, m);
  std::vector<std::vector<testio::Tensor>> files(static_cast<std::size_t>(shards));
  std::string weight_map;
  int k = 0;
  for (const auto& [name, tensor] : m.tensors) {
    if (name == skip) continue;
    const int shard = k++ % shards;
    files[static_cast<std::size_t>(shard)].push_back({name, dtype_of(name), tensor.shape, tensor.values});
    const std::string file = "model-0000" + std::to_string(shard + 1) + "-of-0000" + std::to_string(shards) + ".safetensors";
    weight_map += std::string(weight_map.empty() ? "" : ", ") + "\"" + name + "\": \"" + file + "\"";
  }
  if (shards == 1) {
    testio::write((dir / "model.safetensors").string(), files[0]);
    return;
  }
  for (int s = 0; s < shards; ++s)
    testio::write((dir / ("model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(shards) + ".safetensors")).string(),
                  files[static_cast<std::size_t>(s)]);
  std::ofstream(dir / "model.safetensors.index.json") << "{\"metadata\": {}, \"weight_map\": {" << weight_map << "}}";
}

// As in test_llama.cpp: about 8 dot products of length <= 16 per block, 2 blocks, gamma_n bounds
// (256 u), times 4 for the well-conditioned nonlinear steps: 1024 u relative to max(1, |value|).
// The stored values are exact in every dtype, so the dtype adds no error.
template <class Scalar>
double tolerance(double value) {
  return 1024 * static_cast<double>(std::numeric_limits<Scalar>::epsilon()) * std::max(1.0, std::fabs(value));
}

template <class Scalar, class MatrixType>
void check_close(const MatrixType& actual, const llama_reference::Rows& expected, double extra_relative = 0) {
  REQUIRE(actual.rows() == static_cast<Eigen::Index>(expected.size()));
  for (std::size_t i = 0; i < expected.size(); ++i)
    for (std::size_t j = 0; j < expected[i].size(); ++j) {
      const double want = expected[i][j];
      const double got = static_cast<double>(actual(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)));
      INFO("(" << i << ", " << j << "): got " << got << ", want " << want);
      if (std::isnan(want)) CHECK(std::isnan(got));
      else CHECK(std::fabs(got - want) <= tolerance<Scalar>(want) + extra_relative * std::max(1.0, std::fabs(want)));
    }
}

const maskpos::TokenIds kTokens = {4, 4, 1, 9, 0, 2};

}  // namespace

TEST_CASE("config.json is read with Hugging Face's names and defaults") {
  const fs::path dir = scratch_dir("config");
  std::ofstream(dir / "config.json") << R"({"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "hidden_act": "silu", "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}})";
  const maskpos::LlamaConfig config = maskpos::read_llama_config(dir);
  CHECK(config.vocab_size == 128256);
  CHECK(config.hidden_size == 4096);
  CHECK(config.intermediate_size == 14336);
  CHECK(config.layers == 32);
  CHECK(config.heads == 32);
  CHECK(config.kv_heads == 8);
  CHECK(config.head_dim == 128);  // default hidden_size / heads
  CHECK(config.norm_eps == 1e-5);
  CHECK(config.resolved_attention_scale() == Approx(1 / std::sqrt(128.0)));
  REQUIRE(config.rope);
  CHECK(config.rope->theta == 500000.0);
  CHECK(config.rope->resolved_rotary_dim(128) == 128);
  CHECK(config.rope->scaling.kind == maskpos::RopeScalingKind::Llama3);
  CHECK(config.rope->scaling.factor == 8.0);
  CHECK(config.rope->scaling.original_max_position == 8192);
  CHECK(config.mask.kind == maskpos::MaskKind::Causal);

  // Qwen3-style: explicit head_dim different from hidden / heads, no rope_scaling, partial rotary.
  std::ofstream(dir / "config.json") << R"({"vocab_size": 10, "hidden_size": 12, "intermediate_size": 5,
    "num_hidden_layers": 1, "num_attention_heads": 4, "head_dim": 8, "rope_scaling": null, "partial_rotary_factor": 0.5})";
  const auto qwen = maskpos::read_llama_config(dir / "config.json");
  CHECK(qwen.kv_heads == 4);
  CHECK(qwen.head_dim == 8);
  CHECK(qwen.rope->theta == 10000.0);
  CHECK(qwen.rope->resolved_rotary_dim(8) == 4);
  CHECK(qwen.rope->scaling.kind == maskpos::RopeScalingKind::None);
}

TEST_CASE("bad config.json files give errors naming the file and the field") {
  const fs::path dir = scratch_dir("bad_config");
  const std::string base = R"("vocab_size": 10, "intermediate_size": 5, "num_hidden_layers": 1, "num_attention_heads": 2)";
  auto error_for = [&](const std::string& text) {
    std::ofstream(dir / "config.json") << text;
    return error_of([&] { maskpos::read_llama_config(dir); });
  };
  CHECK_THAT(error_for("{" + base + "}"), Contains("config.json") && Contains("\"hidden_size\" is missing"));
  CHECK_THAT(error_for("{" + base + ", \"hidden_size\": -4}"), Contains("\"hidden_size\" = -4 is not a positive integer"));
  CHECK_THAT(error_for("{" + base + ", \"hidden_size\": 4, \"hidden_act\": \"gelu\"}"), Contains("\"hidden_act\""));
  CHECK_THAT(error_for("{" + base + ", \"hidden_size\": 4, \"rope_scaling\": {\"rope_type\": \"longrope\"}}"),
             Contains("rope_scaling type \"longrope\" is not supported"));
  CHECK_THAT(error_for("{" + base + ", \"hidden_size\": 4, \"num_key_value_heads\": 3}"), Contains("kv_heads"));
  CHECK_THAT(error_for("{\"hidden_size\": "), Contains("config.json") && Contains("not valid JSON"));
  CHECK_THAT(error_of([&] { maskpos::read_llama_config(dir / "absent.json"); }), Contains("no such file"));
}

TEMPLATE_TEST_CASE("a tiny checkpoint in F32, F16 and BF16 runs like the plain-loop reference", "", float, double) {
  const auto tiny = llama_reference::make_tiny_model(23, true);
  const auto expected = llama_reference::forward(tiny, kTokens);
  for (const std::string dtype : {"F32", "F16", "BF16"}) {
    INFO(dtype);
    const fs::path dir = scratch_dir("tiny_" + dtype);
    write_checkpoint(dir, tiny, [&](const std::string&) { return dtype; });
    maskpos::LlamaCheckpoint<TestType> streamed(dir);
    const auto traces = maskpos::llama_forward(streamed, kTokens);
    REQUIRE(traces.size() == 2);
    for (std::size_t l = 0; l < 2; ++l) {
      check_close<TestType>(traces[l].scores, expected[l].scores);
      check_close<TestType>(traces[l].output, expected[l].output);
    }
    auto loaded = maskpos::load_llama_model<TestType>(dir);
    const auto again = maskpos::llama_forward(loaded, kTokens);
    CHECK(again[1].output == traces[1].output);  // same weights, same operations
    auto one_layer = maskpos::load_llama_model<TestType>(dir, 1);
    CHECK(one_layer.config().layers == 1);
  }

  SECTION("sharded, with a different dtype in each shard, and without RoPE") {
    const auto nope = llama_reference::make_tiny_model(23, false);
    const fs::path dir = scratch_dir("tiny_sharded");
    write_checkpoint(dir, nope, [](const std::string& name) { return name.size() % 3 == 0 ? "F16" : name.size() % 3 == 1 ? "BF16" : "F32"; }, 3);
    maskpos::LlamaCheckpoint<TestType> streamed(dir);
    CHECK(streamed.tensors().files().size() == 3);
    streamed.set_rope(std::nullopt);
    const auto traces = maskpos::llama_forward(streamed, kTokens);
    const auto nope_expected = llama_reference::forward(nope, kTokens);
    for (std::size_t l = 0; l < 2; ++l) check_close<TestType>(traces[l].scores, nope_expected[l].scores);
  }
}

TEST_CASE("a checkpoint without a tensor the block needs names the tensor") {
  const auto tiny = llama_reference::make_tiny_model(2, true);
  const fs::path dir = scratch_dir("missing");
  write_checkpoint(dir, tiny, [](const std::string&) { return "BF16"; }, 1, "model.layers.1.mlp.up_proj.weight");
  maskpos::LlamaCheckpoint<float> streamed(dir);
  CHECK_NOTHROW(streamed.layer(0));
  CHECK_THAT(error_of([&] { streamed.layer(1); }),
             Contains("model.safetensors") && Contains("missing tensor 'model.layers.1.mlp.up_proj.weight'"));
  write_checkpoint(dir, tiny, [](const std::string&) { return "F32"; }, 1, "model.embed_tokens.weight");
  CHECK_THAT(error_of([&] { maskpos::LlamaCheckpoint<float> broken(dir); }), Contains("missing tensor 'model.embed_tokens.weight'"));
}

namespace {

// PyTorch reference: parses the safetensors file itself (struct + json + numpy; BF16 widened by a
// 16-bit shift) and runs the model with torch ops in float64, Hugging Face style (rotate_half RoPE
// with cat(freqs, freqs), repeat_interleave for grouped-query attention, -inf causal mask).
const char* kTorchScript = R"PY(
import json, struct, sys
import numpy as np
import torch
model_dir, out_dir = sys.argv[1], sys.argv[2]
tokens = [int(t) for t in sys.argv[3].split(",")]
config = json.load(open(model_dir + "/config.json"))
raw = open(model_dir + "/model.safetensors", "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8:8 + n])
data = raw[8 + n:]
def tensor(name):
    entry = header[name]
    begin, end = entry["data_offsets"]
    chunk = data[begin:end]
    if entry["dtype"] == "F32":
        array = np.frombuffer(chunk, dtype="<f4").astype(np.float64)
    elif entry["dtype"] == "F16":
        array = np.frombuffer(chunk, dtype="<f2").astype(np.float64)
    else:
        array = (np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return torch.from_numpy(array.reshape(entry["shape"]).copy())
H, Hkv = config["num_attention_heads"], config["num_key_value_heads"]
dh, eps, theta = config["head_dim"], config["rms_norm_eps"], config["rope_theta"]
use_rope = sys.argv[4] == "rope"
def rms(x, w):
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))
def rotate_half(x):
    return torch.cat((-x[..., dh // 2:], x[..., :dh // 2]), dim=-1)
S = len(tokens)
inv_freq = 1.0 / (theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))
freqs = torch.outer(torch.arange(S, dtype=torch.float64), inv_freq)
emb = torch.cat((freqs, freqs), dim=-1)
cos, sin = emb.cos(), emb.sin()
mask = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
x = tensor("model.embed_tokens.weight")[tokens]
for l in range(config["num_hidden_layers"]):
    p = "model.layers.%d." % l
    y = rms(x, tensor(p + "input_layernorm.weight"))
    q = (y @ tensor(p + "self_attn.q_proj.weight").T).view(S, H, dh).transpose(0, 1)
    k = (y @ tensor(p + "self_attn.k_proj.weight").T).view(S, Hkv, dh).transpose(0, 1)
    v = (y @ tensor(p + "self_attn.v_proj.weight").T).view(S, Hkv, dh).transpose(0, 1)
    if use_rope:
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
    k = k.repeat_interleave(H // Hkv, dim=0)
    v = v.repeat_interleave(H // Hkv, dim=0)
    scores = (q @ k.transpose(1, 2)) / dh ** 0.5
    scores = scores.masked_fill(mask, float("-inf"))
    attended = torch.softmax(scores, dim=-1) @ v
    o = x + attended.transpose(0, 1).reshape(S, H * dh) @ tensor(p + "self_attn.o_proj.weight").T
    z = rms(o, tensor(p + "post_attention_layernorm.weight"))
    gate = z @ tensor(p + "mlp.gate_proj.weight").T
    up = z @ tensor(p + "mlp.up_proj.weight").T
    x = o + (torch.nn.functional.silu(gate) * up) @ tensor(p + "mlp.down_proj.weight").T
    mean_scores = scores.mean(0).masked_fill(mask, float("nan"))
    np.savetxt(out_dir + "/scores_%d.txt" % l, mean_scores.numpy(), fmt="%.17g")
    np.savetxt(out_dir + "/output_%d.txt" % l, x.numpy(), fmt="%.17g")
)PY";

bool torch_available() { return std::system("/usr/bin/python3 -c 'import torch, numpy' > /dev/null 2>&1") == 0; }

llama_reference::Rows read_text_matrix(const fs::path& path) {
  std::ifstream in(path);
  llama_reference::Rows rows;
  std::string line, token;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::vector<double> row;
    while (words >> token) row.push_back(std::strtod(token.c_str(), nullptr));  // strtod reads "nan"
    if (!row.empty()) rows.push_back(row);
  }
  return rows;
}

}  // namespace

TEMPLATE_TEST_CASE("a tiny BF16 / F16 / F32 checkpoint runs like a PyTorch reference", "", float, double) {
  if (!torch_available()) {
    WARN("skipped: /usr/bin/python3 has no torch and numpy (Debian python3-torch, python3-numpy)");
    return;
  }
  for (const bool rope : {true, false}) {
    const auto tiny = llama_reference::make_tiny_model(31, rope);
    const fs::path dir = scratch_dir(rope ? "torch_rope" : "torch_nope");
    // Mixed dtypes in one file: the PyTorch side decodes each entry by its own dtype.
    write_checkpoint(dir, tiny, [](const std::string& name) {
      return name.find("proj") != std::string::npos ? "BF16" : name.find("norm") != std::string::npos ? "F16" : "F32";
    });
    std::ofstream(dir / "reference.py") << kTorchScript;
    std::string ids;
    for (const auto id : kTokens) ids += (ids.empty() ? "" : ",") + std::to_string(id);
    const std::string command = "/usr/bin/python3 '" + (dir / "reference.py").string() + "' '" + dir.string() + "' '" +
                                dir.string() + "' " + ids + " " + (rope ? "rope" : "nope");
    REQUIRE(std::system(command.c_str()) == 0);
    maskpos::LlamaCheckpoint<TestType> model(dir);
    if (!rope) model.set_rope(std::nullopt);
    const auto traces = maskpos::llama_forward(model, kTokens);
    for (std::size_t l = 0; l < 2; ++l) {
      INFO((rope ? "RoPE" : "NoPE") << " layer " << l);
      check_close<TestType>(traces[l].scores, read_text_matrix(dir / ("scores_" + std::to_string(l) + ".txt")));
      check_close<TestType>(traces[l].output, read_text_matrix(dir / ("output_" + std::to_string(l) + ".txt")));
    }
  }
}
