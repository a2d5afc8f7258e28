/// @file llama.hpp
/// @brief A Llama-style decoder with learned weights (RMSNorm, grouped-query attention, optional RoPE,
/// any mask, SwiGLU), its forward pass, and the sub-step trace of paper Sec. 4.2.
///
/// One block, with Hugging Face's conventions (weights stored [out, in], \f$ y = x W^\top \f$):
/// \f[ Y = \mathrm{norm}_1(X),\quad Q_h = \mathrm{RoPE}(Y W_{Q,h}^\top),\ K_g = \mathrm{RoPE}(Y W_{K,g}^\top),
///     V_g = Y W_{V,g}^\top,\quad g = \lfloor h / (H / H_{kv}) \rfloor \f]
/// \f[ A_h = \mathrm{softmax}_\text{row}(\mathrm{mask}(c\,Q_h K_g^\top)),\ c = 1/\sqrt{d_h},\quad
///     O = [A_1 V_{g(1)}, \dots, A_H V_{g(H)}]\, W_O^\top + X \f]
/// \f[ X' = W_\text{down}\big(\mathrm{silu}(W_\text{gate} Z) \odot W_\text{up} Z\big) + O,\quad Z = \mathrm{norm}_2(O) \f]
/// with \f$ \mathrm{norm}(x) = w \odot x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \f$ for RMSNorm
/// (LayerNorm, L2 and no normalisation are also available, see Norm). A model is an embedding
/// table followed by L blocks; the final norm and the LM head are not needed for scores and are
/// not modelled. Optional extras used by real checkpoints: biases on the projections (Qwen2) and a
/// per-head RMSNorm of queries and keys before RoPE (Qwen3).
///
/// With identity projections, one head, no feed-forward, L2 normalisation and c = 1 the block is the
/// parameter-free layer of decoder.hpp (paper Sec. 2); the tests check exactly that.
///
/// Sec. 4.2 of the paper traces the Gram matrix after every sub-step of one block
/// (`nope_params.png`): llama_substep_trace computes those nine matrices averaged over a batch;
/// llama_mean_scores gives the head- and batch-averaged scaled pre-softmax scores of every layer
/// (`nope_attns_all.png`, `all_rope.png` of Sec. 5.2).
///
/// Thread safety: LlamaBlock and the weight sources hold scratch space and caches; use one per
/// thread. LlamaConfig and LlamaLayerWeights are plain values.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "decoder.hpp"
#include "detail/errors.hpp"
#include "mask.hpp"
#include "normalization.hpp"
#include "rope.hpp"
#include "types.hpp"

namespace maskpos {

/// Token ids of one sequence (tokenisation is out of scope: ids come from a file or the command line).
using TokenIds = std::vector<std::int64_t>;

/// The architecture of a Llama-style model (what `config.json` describes, see model_config.hpp).
struct LlamaConfig {
  Index vocab_size = 0;         ///< rows of the embedding table
  Index hidden_size = 0;        ///< d
  Index intermediate_size = 0;  ///< F, width of the SwiGLU hidden layer
  Index layers = 0;             ///< L
  Index heads = 0;              ///< H query heads
  Index kv_heads = 0;           ///< H_kv key/value heads; H must be a multiple (grouped-query attention)
  Index head_dim = 0;           ///< d_h (need not equal d / H)
  Norm norm = Norm::RMSNorm;    ///< the normalisation of both norms in a block
  double norm_eps = 1e-6;       ///< eps of the normalisation (RMSNorm: added to mean(x^2))
  double attention_scale = 0;   ///< c; 0 means 1 / sqrt(d_h)
  bool feed_forward = true;     ///< false drops norm_2 and the SwiGLU (X' = O)
  std::optional<RopeConfig> rope;  ///< RoPE on queries and keys (per head, width d_h), or none ("NoPE")
  Mask mask;                    ///< the attention mask (causal for every real decoder)

  /// c = attention_scale, or 1 / sqrt(d_h) when it is 0.
  double resolved_attention_scale() const {
    return attention_scale != 0 ? attention_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  }
  /// Query heads per key/value head.
  Index group_size() const { return heads / kv_heads; }

  /// Throws std::invalid_argument naming the first parameter out of range.
  void validate() const {
    detail::require(vocab_size >= 1, "vocab_size", vocab_size, "vocab_size >= 1");
    detail::require(hidden_size >= 1, "hidden_size d", hidden_size, "d >= 1");
    detail::require(layers >= 1, "layers L", layers, "L >= 1");
    detail::require(heads >= 1, "heads H", heads, "H >= 1");
    detail::require(kv_heads >= 1 && heads % kv_heads == 0, "kv_heads H_kv", kv_heads,
                    "H_kv >= 1 dividing H = " + detail::to_text(heads));
    detail::require(head_dim >= 1, "head_dim d_h", head_dim, "d_h >= 1");
    if (feed_forward) detail::require(intermediate_size >= 1, "intermediate_size F", intermediate_size, "F >= 1");
    detail::require(norm_eps >= 0 && std::isfinite(norm_eps), "norm_eps", norm_eps, "0 <= eps < infinity");
    detail::require(attention_scale >= 0 && std::isfinite(attention_scale), "attention_scale", attention_scale,
                    "c > 0 (or 0 for 1 / sqrt(d_h))");
    if (rope) rope->validate(head_dim);
  }
};

/// The learned weights of one block, in Hugging Face's layout ([out, in] matrices). Empty vectors
/// mean "absent": a norm without weight (or bias) is not scaled (or shifted); a projection without
/// bias has none; without q_norm / k_norm weights there is no per-head query/key norm.
template <class Scalar>
struct LlamaLayerWeights {
  Vector<Scalar> input_norm_weight, input_norm_bias;  ///< norm_1: [d] each (input_layernorm)
  Matrix<Scalar> q_proj;                              ///< [H d_h, d]
  Matrix<Scalar> k_proj;                              ///< [H_kv d_h, d]
  Matrix<Scalar> v_proj;                              ///< [H_kv d_h, d]
  Matrix<Scalar> o_proj;                              ///< [d, H d_h]
  Vector<Scalar> q_bias, k_bias, v_bias, o_bias;      ///< optional projection biases
  Vector<Scalar> q_norm_weight, k_norm_weight;        ///< optional per-head RMSNorm weights, [d_h]
  Vector<Scalar> post_norm_weight, post_norm_bias;    ///< norm_2: [d] each (post_attention_layernorm)
  Matrix<Scalar> gate_proj;                           ///< [F, d]
  Matrix<Scalar> up_proj;                             ///< [F, d]
  Matrix<Scalar> down_proj;                           ///< [d, F]

  /// Throws std::invalid_argument naming the first weight whose shape does not fit `config`.
  /// \param label  names the block in the message, e.g. "layer 3"
  void validate(const LlamaConfig& config, const std::string& label = "block") const {
    const Index d = config.hidden_size, q_width = config.heads * config.head_dim,
                kv_width = config.kv_heads * config.head_dim, F = config.intermediate_size;
    const std::string where = label + " ";
    auto matrix = [&](const Matrix<Scalar>& m, Index rows, Index cols, const char* name) {
      if (m.rows() != rows || m.cols() != cols)
        detail::throw_invalid(where + name + " shape", detail::to_text(m.rows()) + " x " + detail::to_text(m.cols()),
                              "[" + detail::to_text(rows) + ", " + detail::to_text(cols) + "]");
    };
    auto optional_vector = [&](const Vector<Scalar>& v, Index size, const char* name) {
      if (v.size() != 0 && v.size() != size)
        detail::throw_invalid(where + name + " size", v.size(), "empty or " + detail::to_text(size));
    };
    optional_vector(input_norm_weight, d, "input_norm_weight");
    optional_vector(input_norm_bias, d, "input_norm_bias");
    matrix(q_proj, q_width, d, "q_proj");
    matrix(k_proj, kv_width, d, "k_proj");
    matrix(v_proj, kv_width, d, "v_proj");
    matrix(o_proj, d, q_width, "o_proj");
    optional_vector(q_bias, q_width, "q_bias");
    optional_vector(k_bias, kv_width, "k_bias");
    optional_vector(v_bias, kv_width, "v_bias");
    optional_vector(o_bias, d, "o_bias");
    optional_vector(q_norm_weight, config.head_dim, "q_norm_weight");
    optional_vector(k_norm_weight, config.head_dim, "k_norm_weight");
    if (config.feed_forward) {
      optional_vector(post_norm_weight, d, "post_norm_weight");
      optional_vector(post_norm_bias, d, "post_norm_bias");
      matrix(gate_proj, F, d, "gate_proj");
      matrix(up_proj, F, d, "up_proj");
      matrix(down_proj, d, F, "down_proj");
    }
  }
};

/// Where a Llama-style forward pass gets its weights: in memory (LlamaModel) or streamed from a
/// checkpoint one block at a time (LlamaCheckpoint in checkpoint.hpp), so that running a model never
/// needs more than one block's weights in memory.
///
/// The mask and the positional encoding may be changed between runs (they have no weights); the
/// shapes may not.
template <class Scalar>
class LlamaWeightSource {
 public:
  virtual ~LlamaWeightSource() = default;

  const LlamaConfig& config() const { return config_; }
  /// Runs the model with another mask (e.g. bidirectional, the paper's control).
  void set_mask(const Mask& mask) { config_.mask = mask; }
  /// Runs the model with RoPE (or, with std::nullopt, without: "NoPE").
  void set_rope(const std::optional<RopeConfig>& rope) {
    if (rope) rope->validate(config_.head_dim);
    config_.rope = rope;
  }

  /// The embedding rows of `token_ids` (S x d). \pre 0 <= id < vocab_size (std::invalid_argument)
  virtual Matrix<Scalar> embed(const TokenIds& token_ids) = 0;
  /// The weights of block `layer` (0-based); the reference stays valid until the next call.
  virtual const LlamaLayerWeights<Scalar>& layer(Index layer) = 0;

 protected:
  explicit LlamaWeightSource(LlamaConfig config) : config_(std::move(config)) { config_.validate(); }

  /// Throws std::invalid_argument unless every id indexes the embedding table.
  void check_token_ids(const TokenIds& token_ids) const {
    detail::require(!token_ids.empty(), "number of token ids", token_ids.size(), ">= 1");
    for (std::size_t k = 0; k < token_ids.size(); ++k)
      detail::require(token_ids[k] >= 0 && token_ids[k] < config_.vocab_size, "token id #" + std::to_string(k),
                      token_ids[k], "0 <= id < vocab_size = " + detail::to_text(config_.vocab_size));
  }

 private:
  LlamaConfig config_;
};

/// A Llama-style model held in memory.
template <class Scalar>
class LlamaModel final : public LlamaWeightSource<Scalar> {
 public:
  /// \pre embedding is vocab_size x d; layers.size() == L; each block's shapes fit `config`
  ///      (std::invalid_argument otherwise)
  LlamaModel(LlamaConfig config, Matrix<Scalar> embedding, std::vector<LlamaLayerWeights<Scalar>> layers)
      : LlamaWeightSource<Scalar>(std::move(config)), embedding_(std::move(embedding)), layers_(std::move(layers)) {
    detail::check_scalar<Scalar>();
    const LlamaConfig& c = this->config();
    if (embedding_.rows() != c.vocab_size || embedding_.cols() != c.hidden_size)
      detail::throw_invalid("embedding shape", detail::to_text(embedding_.rows()) + " x " + detail::to_text(embedding_.cols()),
                            "[vocab_size, d] = [" + detail::to_text(c.vocab_size) + ", " + detail::to_text(c.hidden_size) + "]");
    detail::require(static_cast<Index>(layers_.size()) == c.layers, "number of layer weights", layers_.size(),
                    "== layers L = " + detail::to_text(c.layers));
    for (std::size_t l = 0; l < layers_.size(); ++l) layers_[l].validate(c, "layer " + std::to_string(l));
  }

  Matrix<Scalar> embed(const TokenIds& token_ids) override {
    this->check_token_ids(token_ids);
    Matrix<Scalar> rows(static_cast<Index>(token_ids.size()), embedding_.cols());
    for (std::size_t k = 0; k < token_ids.size(); ++k) rows.row(static_cast<Index>(k)) = embedding_.row(token_ids[k]);
    return rows;
  }
  const LlamaLayerWeights<Scalar>& layer(Index layer) override {
    detail::require(layer >= 0 && layer < this->config().layers, "layer", layer, "0 <= layer < L");
    return layers_[static_cast<std::size_t>(layer)];
  }
  const Matrix<Scalar>& embedding() const { return embedding_; }

 private:
  Matrix<Scalar> embedding_;
  std::vector<LlamaLayerWeights<Scalar>> layers_;
};

/// Gram matrices (token x token, in double) after the sub-steps of one block, for one sequence.
struct BlockGrams {
  Matrix<double> normed;     ///< Y Y^T, Y = norm_1(X)
  Matrix<double> attended;   ///< (A V)(A V)^T, A V = the H head outputs side by side (S x H d_h)
  Matrix<double> projected;  ///< (A V W_O^T)(A V W_O^T)^T
  Matrix<double> residual;   ///< O O^T, O = A V W_O^T + X
  Matrix<double> post_norm;  ///< norm_2(O) norm_2(O)^T (empty without feed-forward)
  Matrix<double> output;     ///< X' X'^T
};

namespace detail {

/// out = bias + weight .* norm(x) row-wise; empty weight / bias are skipped. `out` may alias `x`.
template <class Scalar>
void weighted_norm(const Matrix<Scalar>& x, Norm norm, double eps, const Vector<Scalar>& weight,
                   const Vector<Scalar>& bias, Matrix<Scalar>& out) {
  out.resize(x.rows(), x.cols());
  normalize_rows<Scalar>(x, out, norm, eps);
  if (weight.size() != 0) out.array().rowwise() *= weight.transpose().array();
  if (bias.size() != 0) out.rowwise() += bias.transpose();
}

template <class Scalar>
Matrix<double> gram(const Matrix<Scalar>& rows) {
  const Matrix<double> wide = rows.template cast<double>();
  return wide * wide.transpose();
}

}  // namespace detail

/// One Llama-style block with its scratch space, for sequences of a fixed length S.
///
/// Thread safety: run() mutates scratch space; use one LlamaBlock per thread.
template <class Scalar>
class LlamaBlock {
 public:
  /// \pre config.validate() and config.mask.validate(seq_len) pass (std::invalid_argument)
  LlamaBlock(const LlamaConfig& config, Index seq_len)
      : config_(config), seq_len_(seq_len), scale_(static_cast<Scalar>(config.resolved_attention_scale())) {
    detail::check_scalar<Scalar>();
    config_.validate();
    detail::require(seq_len >= 1, "seq_len S", seq_len, "S >= 1");
    config_.mask.validate(seq_len);
    if (config_.rope) rope_.emplace(*config_.rope, config_.head_dim, seq_len);
    head_probs_.setZero(seq_len, seq_len);
  }

  /// Runs the block in place: `state` (S x d, the block input X) becomes its output X'.
  /// \param weights  \pre shapes fit the config (std::invalid_argument otherwise)
  /// \param grams    when not null, receives the sub-step Gram matrices
  void run(const LlamaLayerWeights<Scalar>& weights, Matrix<Scalar>& state, BlockGrams* grams = nullptr) {
    const LlamaConfig& c = config_;
    detail::require(state.rows() == seq_len_ && state.cols() == c.hidden_size, "block input shape",
                    detail::to_text(state.rows()) + " x " + detail::to_text(state.cols()),
                    "S x d = " + detail::to_text(seq_len_) + " x " + detail::to_text(c.hidden_size));
    weights.validate(c);
    const Index dh = c.head_dim;
    detail::weighted_norm(state, c.norm, c.norm_eps, weights.input_norm_weight, weights.input_norm_bias, normed_);
    if (grams) grams->normed = detail::gram(normed_);
    queries_.noalias() = normed_ * weights.q_proj.transpose();
    keys_.noalias() = normed_ * weights.k_proj.transpose();
    values_.noalias() = normed_ * weights.v_proj.transpose();
    if (weights.q_bias.size()) queries_.rowwise() += weights.q_bias.transpose();
    if (weights.k_bias.size()) keys_.rowwise() += weights.k_bias.transpose();
    if (weights.v_bias.size()) values_.rowwise() += weights.v_bias.transpose();
    for (Index h = 0; h < c.heads; ++h) prepare_head(queries_, h, weights.q_norm_weight);
    for (Index g = 0; g < c.kv_heads; ++g) prepare_head(keys_, g, weights.k_norm_weight);

    mean_scores_.setZero(seq_len_, seq_len_);
    mean_probs_.setZero(seq_len_, seq_len_);
    attended_.resize(seq_len_, c.heads * dh);
    for (Index h = 0; h < c.heads; ++h) {
      const Index g = h / c.group_size();
      head_scores_.noalias() = scale_ * (queries_.middleCols(h * dh, dh) * keys_.middleCols(g * dh, dh).transpose());
      masked_softmax();
      attended_.middleCols(h * dh, dh).noalias() = head_probs_ * values_.middleCols(g * dh, dh);
      for (Index i = 0; i < seq_len_; ++i)
        for (Index j = c.mask.first_key(i); j < c.mask.end_key(i, seq_len_); ++j) {
          mean_scores_(i, j) += static_cast<double>(head_scores_(i, j));
          mean_probs_(i, j) += static_cast<double>(head_probs_(i, j));
        }
    }
    const double inv_heads = 1.0 / static_cast<double>(c.heads);
    for (Index j = 0; j < seq_len_; ++j)
      for (Index i = 0; i < seq_len_; ++i)
        mean_scores_(i, j) = c.mask.visible(i, j) ? mean_scores_(i, j) * inv_heads : std::numeric_limits<double>::quiet_NaN();
    mean_probs_ *= inv_heads;
    if (grams) grams->attended = detail::gram(attended_);

    projected_.noalias() = attended_ * weights.o_proj.transpose();
    if (weights.o_bias.size()) projected_.rowwise() += weights.o_bias.transpose();
    if (grams) grams->projected = detail::gram(projected_);
    state += projected_;
    if (grams) grams->residual = detail::gram(state);

    if (c.feed_forward) {
      detail::weighted_norm(state, c.norm, c.norm_eps, weights.post_norm_weight, weights.post_norm_bias, normed_);
      if (grams) grams->post_norm = detail::gram(normed_);
      gate_.noalias() = normed_ * weights.gate_proj.transpose();
      up_.noalias() = normed_ * weights.up_proj.transpose();
      // SwiGLU: silu(z) = z / (1 + e^{-z}); for z -> -inf the quotient tends to -0, no overflow trouble.
      gate_ = (gate_.array() / (Scalar(1) + (-gate_.array()).exp())) * up_.array();
      state.noalias() += gate_ * weights.down_proj.transpose();
    } else if (grams) {
      grams->post_norm.resize(0, 0);
    }
    if (grams) grams->output = detail::gram(state);
  }

  /// Scaled pre-softmax scores c Q_h K_g^T of the last run, averaged over the H heads; masked entries NaN.
  const Matrix<double>& mean_scores() const { return mean_scores_; }
  /// Attention probabilities of the last run averaged over the heads; masked entries 0.
  const Matrix<double>& mean_probs() const { return mean_probs_; }
  const LlamaConfig& config() const { return config_; }

 private:
  /// Per-head query/key norm (Qwen3) and RoPE on head `head` of `projected` (S x heads d_h).
  void prepare_head(Matrix<Scalar>& projected, Index head, const Vector<Scalar>& norm_weight) {
    const Index dh = config_.head_dim;
    auto block = projected.middleCols(head * dh, dh);
    if (norm_weight.size() != 0) {
      normalize_rows<Scalar>(block, block, Norm::RMSNorm, config_.norm_eps);
      block.array().rowwise() *= norm_weight.transpose().array();
    }
    if (rope_) rope_->apply(block);
  }

  /// head_probs_ = row softmax of head_scores_ over the visible keys, 0 elsewhere. Subtracting the
  /// row maximum keeps every exp() in (0, 1].
  void masked_softmax() {
    head_probs_.setZero();
    for (Index i = 0; i < seq_len_; ++i) {
      const Index begin = config_.mask.first_key(i), end = config_.mask.end_key(i, seq_len_);
      Scalar row_max = -std::numeric_limits<Scalar>::infinity();
      for (Index j = begin; j < end; ++j) row_max = head_scores_(i, j) > row_max ? head_scores_(i, j) : row_max;
      Scalar total = 0;
      for (Index j = begin; j < end; ++j) total += head_probs_(i, j) = std::exp(head_scores_(i, j) - row_max);
      for (Index j = begin; j < end; ++j) head_probs_(i, j) /= total;
    }
  }

  LlamaConfig config_;
  Index seq_len_;
  Scalar scale_;
  std::optional<RotaryEmbedding<Scalar>> rope_;
  Matrix<Scalar> normed_, queries_, keys_, values_, head_scores_, head_probs_, attended_, projected_, gate_, up_;
  Matrix<double> mean_scores_, mean_probs_;
};

/// Runs the model on one sequence.
///
/// \param model      the weights; blocks are requested in order 0..L-1, once each
/// \param token_ids  \pre non-empty, every id in [0, vocab_size) (std::invalid_argument)
/// \return L traces: head-averaged scaled pre-softmax scores (masked NaN), head-averaged
///         probabilities (masked 0), and the block output (the residual stream, before any final norm)
template <class Scalar>
std::vector<LayerTrace<Scalar>> llama_forward(LlamaWeightSource<Scalar>& model, const TokenIds& token_ids) {
  const LlamaConfig& config = model.config();
  Matrix<Scalar> state = model.embed(token_ids);
  LlamaBlock<Scalar> block(config, state.rows());
  std::vector<LayerTrace<Scalar>> traces;
  for (Index l = 0; l < config.layers; ++l) {
    block.run(model.layer(l), state);
    traces.push_back({block.mean_scores().template cast<Scalar>(), block.mean_probs().template cast<Scalar>(), state});
  }
  return traces;
}

namespace detail {

/// Embeds every sequence of a batch; all must have the same length.
template <class Scalar>
std::vector<Matrix<Scalar>> embed_batch(LlamaWeightSource<Scalar>& model, const std::vector<TokenIds>& batch) {
  require(!batch.empty(), "batch size B", batch.size(), "B >= 1");
  std::vector<Matrix<Scalar>> states;
  for (std::size_t b = 0; b < batch.size(); ++b) {
    require(batch[b].size() == batch.front().size(), "length of sequence #" + std::to_string(b), batch[b].size(),
            "== length of sequence #0 = " + to_text(batch.front().size()));
    states.push_back(model.embed(batch[b]));
  }
  return states;
}

}  // namespace detail

/// The scaled pre-softmax scores of every layer, averaged over heads and over a batch of
/// sequences of equal length (paper Sec. 4.2 `nope_attns_all.png`, Sec. 5.2 `all_rope.png`).
///
/// Runs layer by layer over the whole batch, so each block's weights are requested once; the
/// residual streams of all B sequences (B x S x d scalars) are kept. For a large batch, call this
/// on chunks and combine the means weighted by the chunk sizes.
/// \param batch  \pre B >= 1 sequences of the same length S >= 1, ids in [0, vocab_size)
/// \return L matrices S x S, layer 1 first; masked entries NaN
template <class Scalar>
std::vector<Matrix<double>> llama_mean_scores(LlamaWeightSource<Scalar>& model, const std::vector<TokenIds>& batch) {
  const LlamaConfig& config = model.config();
  std::vector<Matrix<Scalar>> states = detail::embed_batch(model, batch);
  const Index S = states.front().rows();
  LlamaBlock<Scalar> block(config, S);
  std::vector<Matrix<double>> means;
  for (Index l = 0; l < config.layers; ++l) {
    const LlamaLayerWeights<Scalar>& weights = model.layer(l);
    Matrix<double> sum = Matrix<double>::Zero(S, S);
    for (auto& state : states) {
      block.run(weights, state);
      sum += block.mean_scores();  // NaN on masked entries stays NaN
    }
    means.push_back(sum / static_cast<double>(states.size()));
  }
  return means;
}

/// A matrix with a file-safe name and a figure title (used to write `.npy` files and draw panels).
struct NamedMatrix {
  std::string name;   ///< e.g. "b_scores"
  std::string title;  ///< e.g. "Q(1) K(1)^T / sqrt(d)"
  Matrix<double> values;
};

/// The sub-step Gram matrices of paper Sec. 4.2 (`nope_params.png`, panels (a)-(i)) for block l,
/// averaged over a batch. All are S x S; Grams are full symmetric matrices (the figure shows
/// their lower triangle); scores have NaN on masked entries.
struct SubstepTrace {
  Index layer = 0;                  ///< l, 0-based (the paper's layer l + 1)
  Matrix<double> normed_gram;       ///< (a) Y Y^T, Y = norm_1(X)
  Matrix<double> scores;            ///< (b) c Q K^T averaged over heads
  Matrix<double> attended_gram;     ///< (c) (A V)(A V)^T, heads side by side
  Matrix<double> projected_gram;    ///< (d) (A V W_O)(A V W_O)^T
  Matrix<double> residual_gram;     ///< (e) O O^T, O = A V W_O + X
  Matrix<double> post_norm_gram;    ///< (f) norm_2(O) norm_2(O)^T (empty without feed-forward)
  Matrix<double> output_gram;       ///< (g) X X^T, X = FFN(norm_2(O)) + O
  Matrix<double> next_normed_gram;  ///< (h) Y Y^T of block l + 1 (empty when l is the last block)
  Matrix<double> next_scores;       ///< (i) c Q K^T of block l + 1 (empty when l is the last block)

  /// The non-empty panels in the order of `nope_params.png`, named "a_normed_gram" ... "i_next_scores",
  /// with titles using the paper's 1-based layer numbers.
  std::vector<NamedMatrix> panels() const {
    const std::string now = "(" + std::to_string(layer + 1) + ")", next = "(" + std::to_string(layer + 2) + ")";
    std::vector<NamedMatrix> all = {
        {"a_normed_gram", "Y" + now + " Y" + now + "^T  (Y = LN(X))", normed_gram},
        {"b_scores", "Q" + now + " K" + now + "^T / sqrt(d)", scores},
        {"c_attended_gram", "(A" + now + "V" + now + ")(A" + now + "V" + now + ")^T", attended_gram},
        {"d_projected_gram", "(A" + now + "V" + now + "W_O" + now + ")(...)^T", projected_gram},
        {"e_residual_gram", "O" + now + " O" + now + "^T  (O = AVW_O + X)", residual_gram},
        {"f_post_norm_gram", "LN(O" + now + ") LN(O" + now + ")^T", post_norm_gram},
        {"g_output_gram", "X" + now + " X" + now + "^T  (X = FFN(LN(O)) + O)", output_gram},
        {"h_next_normed_gram", "Y" + next + " Y" + next + "^T", next_normed_gram},
        {"i_next_scores", "Q" + next + " K" + next + "^T / sqrt(d)", next_scores}};
    std::vector<NamedMatrix> present;
    for (auto& panel : all)
      if (panel.values.size() != 0) present.push_back(std::move(panel));
    return present;
  }
};

/// The sub-step trace of paper Sec. 4.2 for block `layer`, averaged over a batch of sequences of
/// equal length. Blocks 0..layer+1 are requested once each (later blocks are not touched).
/// \param layer  \pre 0 <= layer < L (std::invalid_argument); panels (h), (i) need layer + 1 < L
/// \param batch  \pre as for llama_mean_scores
template <class Scalar>
SubstepTrace llama_substep_trace(LlamaWeightSource<Scalar>& model, const std::vector<TokenIds>& batch, Index layer) {
  const LlamaConfig& config = model.config();
  detail::require(layer >= 0 && layer < config.layers, "trace layer l", layer,
                  "0 <= l < L = " + detail::to_text(config.layers));
  std::vector<Matrix<Scalar>> states = detail::embed_batch(model, batch);
  const Index S = states.front().rows();
  const double inv_batch = 1.0 / static_cast<double>(states.size());
  LlamaBlock<Scalar> block(config, S);
  SubstepTrace trace;
  trace.layer = layer;
  auto add = [&](Matrix<double>& total, const Matrix<double>& term) {
    if (term.size() == 0) return;
    if (total.size() == 0) total = Matrix<double>::Zero(term.rows(), term.cols());
    total += inv_batch * term;
  };
  const Index last = layer + 1 < config.layers ? layer + 1 : layer;
  for (Index l = 0; l <= last; ++l) {
    const LlamaLayerWeights<Scalar>& weights = model.layer(l);
    for (auto& state : states) {
      if (l < layer) {
        block.run(weights, state);
        continue;
      }
      BlockGrams grams;
      block.run(weights, state, &grams);
      if (l == layer) {
        add(trace.normed_gram, grams.normed);
        add(trace.scores, block.mean_scores());
        add(trace.attended_gram, grams.attended);
        add(trace.projected_gram, grams.projected);
        add(trace.residual_gram, grams.residual);
        add(trace.post_norm_gram, grams.post_norm);
        add(trace.output_gram, grams.output);
      } else {
        add(trace.next_normed_gram, grams.normed);
        add(trace.next_scores, block.mean_scores());
      }
    }
  }
  return trace;
}

}  // namespace maskpos
