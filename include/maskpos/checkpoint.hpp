/// @file checkpoint.hpp
/// @brief Llama-style models from a Hugging Face checkpoint directory (`config.json` + safetensors),
/// streamed one block at a time or loaded whole.
///
/// Tensor names follow Hugging Face's Llama layout, with or without the leading "model.":
/// `embed_tokens.weight`, `layers.{i}.input_layernorm.weight`, `layers.{i}.self_attn.{q,k,v,o}_proj.weight`
/// (and optional `.bias`), optional `layers.{i}.self_attn.{q,k}_norm.weight` (Qwen3),
/// `layers.{i}.post_attention_layernorm.weight`, `layers.{i}.mlp.{gate,up,down}_proj.weight`.
/// The final `norm.weight` and `lm_head.weight` are not read. Fused layouts (Phi-3's `qkv_proj`,
/// `gate_up_proj`) are not supported and are reported as missing tensors.
///
/// Memory: LlamaCheckpoint keeps one block's weights at a time and reads only the embedding rows
/// of the tokens asked for, so scores of a model larger than RAM (in the compute scalar) can
/// still be traced; load_llama_model reads everything into a LlamaModel.
///
/// Dependency: nlohmann-json (Debian `nlohmann-json3-dev`), link maskpos::checkpoint.
/// Thread safety: LlamaCheckpoint caches a block; use one per thread.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "llama.hpp"
#include "model_config.hpp"
#include "safetensors.hpp"

namespace maskpos {

/// A Llama-style model whose weights stay in the checkpoint until a block is needed.
template <class Scalar>
class LlamaCheckpoint final : public LlamaWeightSource<Scalar> {
 public:
  /// Opens `directory/config.json` and the safetensors weights of `directory` (single file or sharded).
  /// \throws std::runtime_error naming the file and the problem
  explicit LlamaCheckpoint(const std::filesystem::path& directory)
      : LlamaCheckpoint(read_llama_config(directory), directory) {}

  /// Uses `config` for the architecture and `weights` (a safetensors file, an index JSON or a directory).
  LlamaCheckpoint(LlamaConfig config, const std::filesystem::path& weights)
      : LlamaWeightSource<Scalar>(std::move(config)), tensors_(weights) {
    detail::check_scalar<Scalar>();
    prefix_ = tensors_.contains("model.embed_tokens.weight") || !tensors_.contains("embed_tokens.weight") ? "model." : "";
    // Fail early, with the checkpoint's own message, when the embedding is absent or mis-shaped.
    const LlamaConfig& c = this->config();
    tensors_.file_of(prefix_ + "embed_tokens.weight")
        .require_shape(tensors_.info(prefix_ + "embed_tokens.weight"),
                       {static_cast<std::uint64_t>(c.vocab_size), static_cast<std::uint64_t>(c.hidden_size)});
  }

  Matrix<Scalar> embed(const TokenIds& token_ids) override {
    this->check_token_ids(token_ids);
    std::vector<Index> rows(token_ids.begin(), token_ids.end());
    return tensors_.template read_rows<Scalar>(prefix_ + "embed_tokens.weight", this->config().vocab_size,
                                               this->config().hidden_size, rows);
  }

  const LlamaLayerWeights<Scalar>& layer(Index layer) override {
    const LlamaConfig& c = this->config();
    detail::require(layer >= 0 && layer < c.layers, "layer", layer, "0 <= layer < L = " + detail::to_text(c.layers));
    if (layer != cached_layer_) {
      cached_ = LlamaLayerWeights<Scalar>();  // release the previous block before reading the next
      cached_layer_ = -1;
      cached_ = read_layer(layer);
      cached_layer_ = layer;
    }
    return cached_;
  }

  /// Reads the weights of block `layer` (a fresh copy, not cached).
  LlamaLayerWeights<Scalar> read_layer(Index layer) const {
    const LlamaConfig& c = this->config();
    const Index d = c.hidden_size, q_width = c.heads * c.head_dim, kv_width = c.kv_heads * c.head_dim,
                F = c.intermediate_size;
    const std::string base = prefix_ + "layers." + std::to_string(layer) + ".";
    auto matrix = [&](const std::string& name, Index rows, Index cols) {
      return tensors_.template read_matrix<Scalar>(base + name, rows, cols);
    };
    auto optional = [&](const std::string& name, Index size) {
      return tensors_.contains(base + name) ? tensors_.template read_vector<Scalar>(base + name, size) : Vector<Scalar>();
    };
    LlamaLayerWeights<Scalar> w;
    w.input_norm_weight = tensors_.template read_vector<Scalar>(base + "input_layernorm.weight", d);
    w.input_norm_bias = optional("input_layernorm.bias", d);
    w.q_proj = matrix("self_attn.q_proj.weight", q_width, d);
    w.k_proj = matrix("self_attn.k_proj.weight", kv_width, d);
    w.v_proj = matrix("self_attn.v_proj.weight", kv_width, d);
    w.o_proj = matrix("self_attn.o_proj.weight", d, q_width);
    w.q_bias = optional("self_attn.q_proj.bias", q_width);
    w.k_bias = optional("self_attn.k_proj.bias", kv_width);
    w.v_bias = optional("self_attn.v_proj.bias", kv_width);
    w.o_bias = optional("self_attn.o_proj.bias", d);
    w.q_norm_weight = optional("self_attn.q_norm.weight", c.head_dim);
    w.k_norm_weight = optional("self_attn.k_norm.weight", c.head_dim);
    if (c.feed_forward) {
      w.post_norm_weight = tensors_.template read_vector<Scalar>(base + "post_attention_layernorm.weight", d);
      w.post_norm_bias = optional("post_attention_layernorm.bias", d);
      w.gate_proj = matrix("mlp.gate_proj.weight", F, d);
      w.up_proj = matrix("mlp.up_proj.weight", F, d);
      w.down_proj = matrix("mlp.down_proj.weight", d, F);
    }
    return w;
  }

  /// Reads the whole embedding table.
  Matrix<Scalar> read_embedding() const {
    return tensors_.template read_matrix<Scalar>(prefix_ + "embed_tokens.weight", this->config().vocab_size,
                                                 this->config().hidden_size);
  }

  const SafetensorsCheckpoint& tensors() const { return tensors_; }

 private:
  SafetensorsCheckpoint tensors_;
  std::string prefix_;
  LlamaLayerWeights<Scalar> cached_;
  Index cached_layer_ = -1;
};

/// Loads a whole checkpoint directory into memory (config.json + safetensors).
/// \param max_layers  when > 0, keeps only the first max_layers blocks (the config says so too)
template <class Scalar>
LlamaModel<Scalar> load_llama_model(const std::filesystem::path& directory, Index max_layers = 0) {
  LlamaConfig config = read_llama_config(directory);
  if (max_layers > 0 && max_layers < config.layers) config.layers = max_layers;
  const LlamaCheckpoint<Scalar> checkpoint(config, directory);
  std::vector<LlamaLayerWeights<Scalar>> layers;
  for (Index l = 0; l < config.layers; ++l) layers.push_back(checkpoint.read_layer(l));
  return LlamaModel<Scalar>(config, checkpoint.read_embedding(), std::move(layers));
}

}  // namespace maskpos
