/// @file maskpos.hpp
/// @brief Everything in one include (except the checkpoint readers safetensors.hpp, model_config.hpp and
/// checkpoint.hpp, which need nlohmann-json: include them yourself and link maskpos::checkpoint).
#pragma once

#include "analysis.hpp"
#include "csv.hpp"
#include "decoder.hpp"
#include "gram.hpp"
#include "inputs.hpp"
#include "llama.hpp"
#include "mask.hpp"
#include "mean_field.hpp"
#include "monte_carlo.hpp"
#include "names.hpp"
#include "normalization.hpp"
#include "npy.hpp"
#include "random.hpp"
#include "rollout.hpp"
#include "rope.hpp"
#include "types.hpp"
#include "version.hpp"
