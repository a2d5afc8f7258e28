/// @file exact_sum.hpp
/// @brief Order-independent (hence thread-count- and partition-independent) summation.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <vector>

namespace maskpos::detail {

__extension__ typedef __int128 Int128;

/// Sums many vectors of doubles so that the result does not depend on the order of the additions.
///
/// Each value v is first rounded to the grid 2^-q (q chosen from a bound |v| <= bound), i.e. to the
/// integer round(v 2^q). Sums of such integers are exact in double while they stay below 2^53:
/// with |round(v 2^q)| <= 2^(53 - kFlushLog2) and at most 2^kFlushLog2 additions between flushes,
/// every partial sum is exact. Each flush moves the block into 128-bit integers. Integer addition is
/// associative, so any split of the samples (threads, processes, machines) gives identical bits.
///
/// The rounding error of one value is at most 2^-(q+1) <= bound 2^-(53 - kFlushLog2): for
/// bound = 1 that is 2^-42 ~ 2.3e-13, far below float precision.
class ExactSum {
 public:
  static constexpr int kFlushLog2 = 11;  ///< flush every 2048 additions

  ExactSum() = default;
  /// \param size   number of entries
  /// \param bound  an upper bound on |v| for every value added (values beyond it are counted as
  ///               out of range and skipped; see out_of_range())
  ExactSum(Eigen::Index size, double bound) { reset(size, bound); }

  void reset(Eigen::Index size, double bound) {
    // 2^q * bound <= 2^(52 - kFlushLog2) (one bit of headroom for the rounding).
    const int exponent = static_cast<int>(std::ceil(std::log2(bound > 0 ? bound : 1.0)));
    grid_log2_ = 52 - kFlushLog2 - exponent;
    scale_ = std::ldexp(1.0, grid_log2_);
    limit_ = std::ldexp(1.0, 52 - kFlushLog2);
    block_.assign(static_cast<std::size_t>(size), 0.0);
    total_.assign(static_cast<std::size_t>(size), 0);
    pending_ = 0;
    count_ = 0;
    out_of_range_ = 0;
  }

  Eigen::Index size() const { return static_cast<Eigen::Index>(block_.size()); }
  int grid_log2() const { return grid_log2_; }
  std::int64_t out_of_range() const { return out_of_range_; }

  /// Adds values[k] to entry k, for k < size(). Counts as one addition per entry.
  void add(const double* values) {
    constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52: (x + kRound) - kRound rounds x to an integer
    const std::size_t n = block_.size();
    double* block = block_.data();
    bool in_range = true;
    for (std::size_t k = 0; k < n; ++k) {
      const double scaled = values[k] * scale_;
      in_range &= std::fabs(scaled) <= limit_;  // false for NaN as well
    }
    if (!in_range) {
      for (std::size_t k = 0; k < n; ++k) {
        const double scaled = values[k] * scale_;
        if (std::fabs(scaled) <= limit_)
          block[k] += (scaled + kRound) - kRound;
        else
          ++out_of_range_;
      }
    } else {
      for (std::size_t k = 0; k < n; ++k) block[k] += (values[k] * scale_ + kRound) - kRound;
    }
    ++count_;
    if (++pending_ == (1 << kFlushLog2)) flush();
  }

  // ---- low-level interface for fused accumulation of several sums in one pass ----
  // Add round(v scale()) to block()[k] for every entry k of one sample (after checking
  // |v scale()| <= limit(), else count it with skip()), then call commit() once per sample.

  /// The pending block of grid integers (held in doubles).
  double* block() { return block_.data(); }
  /// 2^q: values are multiplied by it and rounded to integers.
  double scale() const { return scale_; }
  /// Largest admissible |v scale()|.
  double limit() const { return limit_; }
  /// Records `count` values left out as out of range.
  void skip(std::int64_t count) { out_of_range_ += count; }
  /// Ends one addition (one sample) after its values were added to block().
  void commit() {
    ++count_;
    if (++pending_ == (1 << kFlushLog2)) flush();
  }

  /// Moves the pending block into the 128-bit totals.
  void flush() {
    for (std::size_t k = 0; k < block_.size(); ++k) {
      total_[k] += static_cast<Int128>(static_cast<std::int64_t>(block_[k]));
      block_[k] = 0.0;
    }
    pending_ = 0;
  }

  /// Adds another sum of the same size and grid (exact).
  void merge(ExactSum other) {
    other.flush();
    flush();
    for (std::size_t k = 0; k < total_.size(); ++k) total_[k] += other.total_[k];
    count_ += other.count_;
    out_of_range_ += other.out_of_range_;
  }

  /// Number of add() calls.
  std::int64_t count() const { return count_; }

  /// The exact sum of entry k (after flushing), rounded to long double.
  long double total(Eigen::Index k) const {
    const std::size_t index = static_cast<std::size_t>(k);
    const Int128 sum = total_[index] + static_cast<Int128>(static_cast<std::int64_t>(block_[index]));
    return std::ldexp(static_cast<long double>(sum), -grid_log2_);
  }

  bool compatible(const ExactSum& other) const {
    return other.block_.size() == block_.size() && other.grid_log2_ == grid_log2_;
  }

 private:
  int grid_log2_ = 0;
  double scale_ = 1.0, limit_ = 1.0;
  std::vector<double> block_;
  std::vector<Int128> total_;
  int pending_ = 0;
  std::int64_t count_ = 0;
  std::int64_t out_of_range_ = 0;
};

}  // namespace maskpos::detail
