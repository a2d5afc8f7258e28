/// @file model_config.hpp
/// @brief Reading a Hugging Face `config.json` (Llama, Mistral, Qwen2/3 layouts) into a LlamaConfig.
///
/// Fields read (Hugging Face names): `vocab_size`, `hidden_size`, `intermediate_size`,
/// `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads` (default: the number of heads),
/// `head_dim` (default hidden_size / heads), `rms_norm_eps` (default 1e-6), `hidden_act` (must be
/// "silu" when present: the block's feed-forward is SwiGLU), `rope_theta` (default 10000),
/// `partial_rotary_factor` (default 1), `rope_scaling` (null, or an object whose `rope_type` / `type`
/// is default, linear, dynamic, yarn or llama3, with its factor and parameters),
/// `max_position_embeddings` (the original context length when rope_scaling does not give one).
///
/// The config always describes a RoPE model; a "NoPE" checkpoint (paper Sec. 4.2) is run by
/// clearing the RoPE slot afterwards (`config.rope.reset()` or LlamaWeightSource::set_rope).
///
/// Dependency: nlohmann-json (Debian `nlohmann-json3-dev`, header-only), via safetensors.hpp.
/// Errors: std::runtime_error "maskpos: <file>: <problem>" naming the field.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

#include "llama.hpp"
#include "rope.hpp"
#include "safetensors.hpp"

namespace maskpos {

namespace detail {

/// A required (or defaulted) positive integer field.
inline Index json_positive_index(const nlohmann::json& json, const std::filesystem::path& path, const char* key,
                                 Index fallback = 0) {
  const auto found = json.find(key);
  if (found == json.end() || found->is_null()) {
    if (fallback > 0) return fallback;
    throw_file_error(path, std::string("\"") + key + "\" is missing");
  }
  if (!found->is_number_unsigned() || found->get<std::uint64_t>() == 0 ||
      found->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<Index>::max()))
    throw_file_error(path, std::string("\"") + key + "\" = " + found->dump() + " is not a positive integer");
  return static_cast<Index>(found->get<std::uint64_t>());
}

/// An optional finite number field.
inline double json_number(const nlohmann::json& json, const std::filesystem::path& path, const char* key,
                          double fallback) {
  const auto found = json.find(key);
  if (found == json.end() || found->is_null()) return fallback;
  if (!found->is_number() || !std::isfinite(found->get<double>()))
    throw_file_error(path, std::string("\"") + key + "\" = " + found->dump() + " is not a finite number");
  return found->get<double>();
}

}  // namespace detail

/// Reads the architecture of a Llama-style checkpoint.
///
/// \param path  `config.json`, or a directory holding it
/// \return the config, with a causal mask and RoPE as described by the file
/// \throws std::runtime_error naming the file and the field for a missing, mistyped or unsupported
///         field, and std::invalid_argument when the values are inconsistent (LlamaConfig::validate)
inline LlamaConfig read_llama_config(const std::filesystem::path& path) {
  const std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  if (!std::filesystem::exists(file)) detail::throw_file_error(file, "no such file");
  const nlohmann::json json = detail::read_json_file(file);
  if (!json.is_object()) detail::throw_file_error(file, "not a JSON object");
  LlamaConfig config;
  config.vocab_size = detail::json_positive_index(json, file, "vocab_size");
  config.hidden_size = detail::json_positive_index(json, file, "hidden_size");
  config.intermediate_size = detail::json_positive_index(json, file, "intermediate_size");
  config.layers = detail::json_positive_index(json, file, "num_hidden_layers");
  config.heads = detail::json_positive_index(json, file, "num_attention_heads");
  config.kv_heads = detail::json_positive_index(json, file, "num_key_value_heads", config.heads);
  config.head_dim = detail::json_positive_index(json, file, "head_dim", config.hidden_size / config.heads);
  config.norm = Norm::RMSNorm;
  config.norm_eps = detail::json_number(json, file, "rms_norm_eps", 1e-6);
  config.feed_forward = true;
  config.mask = Mask::causal();
  if (json.contains("hidden_act") && json["hidden_act"] != "silu")
    detail::throw_file_error(file, "\"hidden_act\" = " + json["hidden_act"].dump() +
                                       " is not supported (the Llama block's feed-forward is SwiGLU with silu)");

  RopeConfig rope;
  rope.theta = detail::json_number(json, file, "rope_theta", 10000.0);
  rope.layout = RopeLayout::HalfSplit;
  const double partial = detail::json_number(json, file, "partial_rotary_factor", 1.0);
  rope.rotary_dim = static_cast<Index>(std::floor(static_cast<double>(config.head_dim) * partial));
  const double max_positions = detail::json_number(json, file, "max_position_embeddings", 0.0);
  const auto scaling = json.find("rope_scaling");
  if (scaling != json.end() && !scaling->is_null()) {
    if (!scaling->is_object()) detail::throw_file_error(file, "\"rope_scaling\" is neither null nor an object");
    std::string type = "default";
    if (scaling->contains("rope_type") && (*scaling)["rope_type"].is_string()) type = (*scaling)["rope_type"];
    else if (scaling->contains("type") && (*scaling)["type"].is_string()) type = (*scaling)["type"];
    RopeScaling& s = rope.scaling;
    s.factor = detail::json_number(*scaling, file, "factor", 1.0);
    s.original_max_position =
        detail::json_number(*scaling, file, "original_max_position_embeddings", max_positions > 0 ? max_positions : 8192);
    if (type == "default") s.kind = RopeScalingKind::None;
    else if (type == "linear") s.kind = RopeScalingKind::Linear;
    else if (type == "dynamic") s.kind = RopeScalingKind::DynamicNtk;
    else if (type == "yarn") {
      s.kind = RopeScalingKind::Yarn;
      s.beta_fast = detail::json_number(*scaling, file, "beta_fast", 32.0);
      s.beta_slow = detail::json_number(*scaling, file, "beta_slow", 1.0);
      s.attention_factor = detail::json_number(*scaling, file, "attention_factor", 0.0);
      if (scaling->contains("truncate") && (*scaling)["truncate"].is_boolean()) s.truncate = (*scaling)["truncate"];
    } else if (type == "llama3") {
      s.kind = RopeScalingKind::Llama3;
      s.low_freq_factor = detail::json_number(*scaling, file, "low_freq_factor", 1.0);
      s.high_freq_factor = detail::json_number(*scaling, file, "high_freq_factor", 4.0);
    } else {
      detail::throw_file_error(file, "rope_scaling type \"" + type +
                                         "\" is not supported (default, linear, dynamic, yarn, llama3)");
    }
  }
  config.rope = rope;
  config.validate();
  return config;
}

}  // namespace maskpos
