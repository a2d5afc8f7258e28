/// @file mask.hpp
/// @brief Attention masks: which keys a query may see (causal, bidirectional, sliding window, prefix-LM).
#pragma once

#include <Eigen/Core>

#include <string>

#include "detail/errors.hpp"

namespace maskpos {

/// The kinds of attention mask maskpos studies.
enum class MaskKind {
  Causal,         ///< key j visible to query i iff j <= i (the paper)
  Bidirectional,  ///< every key visible (the paper's non-causal control)
  SlidingWindow,  ///< key j visible iff i - w < j <= i
  PrefixLM        ///< bidirectional inside the first P tokens, causal after them
};

/// An attention mask. Every mask kind keeps the diagonal (j = i) visible, so no query row is ever
/// left without a visible key; this is the rule that makes the masked softmax always well defined.
struct Mask {
  MaskKind kind = MaskKind::Causal;
  Eigen::Index window = 0;  ///< w for SlidingWindow (w >= 1; w = 1 sees only the diagonal)
  Eigen::Index prefix = 0;  ///< P for PrefixLM (0 <= P <= S; P = 0 is the causal mask)

  static Mask causal() { return {MaskKind::Causal, 0, 0}; }
  static Mask bidirectional() { return {MaskKind::Bidirectional, 0, 0}; }
  /// \pre w >= 1
  static Mask sliding_window(Eigen::Index w) { return {MaskKind::SlidingWindow, w, 0}; }
  /// \pre 0 <= P (and P <= S, checked by validate against the sequence length)
  static Mask prefix_lm(Eigen::Index P) { return {MaskKind::PrefixLM, 0, P}; }

  /// True when query i may attend to key j.
  bool visible(Eigen::Index query, Eigen::Index key) const {
    switch (kind) {
      case MaskKind::Causal: return key <= query;
      case MaskKind::Bidirectional: return true;
      case MaskKind::SlidingWindow: return key <= query && query - window < key;
      case MaskKind::PrefixLM: return key <= query || key < prefix;
    }
    return false;
  }

  /// True when the visible keys of every query are exactly 0..query (a lower-triangular mask).
  bool is_lower_triangular() const {
    return kind == MaskKind::Causal || (kind == MaskKind::PrefixLM && prefix <= 1);
  }

  /// First visible key of query i (the visible keys of a row are always a contiguous range).
  Eigen::Index first_key(Eigen::Index query) const {
    if (kind == MaskKind::SlidingWindow) return query - window + 1 > 0 ? query - window + 1 : 0;
    if (kind == MaskKind::Bidirectional) return 0;
    return 0;
  }
  /// One past the last visible key of query i, for a sequence of length S.
  Eigen::Index end_key(Eigen::Index query, Eigen::Index seq_len) const {
    switch (kind) {
      case MaskKind::Bidirectional: return seq_len;
      case MaskKind::PrefixLM: return query + 1 > prefix ? query + 1 : prefix;
      default: return query + 1;
    }
  }

  /// Throws std::invalid_argument unless the mask fits a sequence of length seq_len.
  /// \pre SlidingWindow: window >= 1; PrefixLM: 0 <= prefix <= seq_len.
  void validate(Eigen::Index seq_len) const {
    if (kind == MaskKind::SlidingWindow) detail::require(window >= 1, "mask window w", window, "w >= 1");
    if (kind == MaskKind::PrefixLM)
      detail::require(prefix >= 0 && prefix <= seq_len, "mask prefix P", prefix,
                      "0 <= P <= S = " + detail::to_text(seq_len));
  }

  /// Human-readable name, also accepted by the command line: causal, bidirectional, sliding:W, prefix:P.
  std::string name() const {
    switch (kind) {
      case MaskKind::Causal: return "causal";
      case MaskKind::Bidirectional: return "bidirectional";
      case MaskKind::SlidingWindow: return "sliding:" + std::to_string(window);
      case MaskKind::PrefixLM: return "prefix:" + std::to_string(prefix);
    }
    return "?";
  }
};

}  // namespace maskpos
