/// @file exact_sum.hpp
/// @brief Order-independent (hence thread-count- and partition-independent) summation.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <vector>

namespace maskpos::detail {

__extension__ typedef __int128 Int128;

/// How finely ExactSum rounds each value before adding it exactly.
enum class SumGrid {
  /// 2^-(52 - kFlushLog2 - e) for |v| <= 2^e, blocks of doubles: for bound 1, 2^-41 ~ 4.5e-13.
  Double,
  /// 2^-(27 - e), blocks of 32-bit integers flushed every 15 additions: for bound 1, 2^-27 ~ 7.5e-9,
  /// at or below the float rounding of the values themselves (half an ulp of 1 is 6e-8), and 8 float
  /// values are rounded and added per AVX2 instruction instead of 4 doubles.
  Float
};

/// Sums many vectors of values so that the result does not depend on the order of the additions.
///
/// Each value v is first rounded to the grid 2^-q (q chosen from a bound |v| <= bound), i.e. to the
/// integer round(v 2^q). Sums of such integers are exact while they cannot overflow the block:
/// - SumGrid::Double: blocks are doubles, exact below 2^53; with |round(v 2^q)| <= 2^(52 - kFlushLog2)
///   and at most 2^kFlushLog2 additions between flushes, every partial sum is exact.
/// - SumGrid::Float: blocks are int32; |round(v 2^q)| <= 2^27 and at most 15 additions between
///   flushes keep every partial sum within 15 x 2^27 < 2^31 - 1.
/// Each flush moves the block into 128-bit integers (Float grid: into 64-bit integers, a vectorised
/// loop, which move into the 128-bit ones every 2^32 flushes: |partial sums| < 2^31 2^32 = 2^63).
/// Integer addition is associative, so any split
/// of the samples (threads, processes, machines) gives identical bits.
class ExactSum {
 public:
  static constexpr int kFlushLog2 = 11;       ///< Double grid: flush every 2048 additions
  static constexpr int kFloatBits = 27;       ///< Float grid: |integers| <= 2^27
  static constexpr int kFloatFlushEvery = 15;  ///< Float grid: flush every 15 additions (the most int32 allows)

  ExactSum() = default;
  /// \param size   number of entries
  /// \param bound  an upper bound on |v| for every value added (values beyond it are counted as
  ///               out of range and skipped; see out_of_range())
  /// \param grid   how finely values are rounded (see SumGrid)
  ExactSum(Eigen::Index size, double bound, SumGrid grid = SumGrid::Double) { reset(size, bound, grid); }

  void reset(Eigen::Index size, double bound, SumGrid grid = SumGrid::Double) {
    grid_ = grid;
    const int exponent = static_cast<int>(std::ceil(std::log2(bound > 0 ? bound : 1.0)));
    // Double: 2^q * bound <= 2^(52 - kFlushLog2) (one bit of headroom for the rounding).
    const int bits = grid == SumGrid::Double ? 52 - kFlushLog2 : kFloatBits;
    grid_log2_ = bits - exponent;
    scale_ = std::ldexp(1.0, grid_log2_);
    limit_ = std::ldexp(1.0, bits);
    flush_every_ = grid == SumGrid::Double ? (1 << kFlushLog2) : kFloatFlushEvery;
    block_.assign(grid == SumGrid::Double ? static_cast<std::size_t>(size) : 0, 0.0);
    // 8 spare entries: a vectorised caller may add zeros past the last entry.
    block32_.assign(grid == SumGrid::Float ? static_cast<std::size_t>(size) + 8 : 0, 0);
    total_.assign(static_cast<std::size_t>(size), 0);
    middle_.assign(grid == SumGrid::Float ? static_cast<std::size_t>(size) : 0, 0);
    middle_flushes_ = 0;
    pending_ = 0;
    count_ = 0;
    out_of_range_ = 0;
  }

  Eigen::Index size() const { return static_cast<Eigen::Index>(total_.size()); }
  SumGrid grid() const { return grid_; }
  int grid_log2() const { return grid_log2_; }
  std::int64_t out_of_range() const { return out_of_range_; }

  /// Adds values[k] to entry k, for k < size(). Counts as one addition per entry.
  void add(const double* values) {
    const std::size_t n = total_.size();
    for (std::size_t k = 0; k < n; ++k) {
      const double scaled = values[k] * scale_;
      if (std::fabs(scaled) <= limit_)
        add_integer(k, std::nearbyint(scaled));
      else
        ++out_of_range_;
    }
    commit();
  }

  // ---- low-level interface for fused accumulation of several sums in one pass ----
  // Add round(v scale()) to block()[k] (Double grid) or block32()[k] (Float grid) for every entry k of
  // one sample (after checking |v scale()| <= limit(), else count it with skip()), then call
  // commit() once per sample.

  /// The pending block of grid integers held in doubles (Double grid).
  double* block() { return block_.data(); }
  /// The pending block of grid integers (Float grid; size() + 8 entries, the last 8 must stay 0;
  /// aligned to EIGEN_MAX_ALIGN_BYTES).
  std::int32_t* block32() { return block32_.data(); }
  /// 2^q: values are multiplied by it and rounded to integers.
  double scale() const { return scale_; }
  /// Largest admissible |v scale()|.
  double limit() const { return limit_; }
  /// Records `count` values left out as out of range.
  void skip(std::int64_t count) { out_of_range_ += count; }
  /// Adds the integer `value` (|value| <= limit()) to entry k.
  void add_integer(std::size_t k, double value) {
    if (grid_ == SumGrid::Double) block_[k] += value;
    else block32_[k] += static_cast<std::int32_t>(value);
  }
  /// Ends one addition (one sample) after its values were added to the block.
  void commit() {
    ++count_;
    if (++pending_ == flush_every_) flush();
  }

  /// Moves the pending block into the 128-bit totals.
  void flush() {
    for (std::size_t k = 0; k < block_.size(); ++k) {
      total_[k] += static_cast<Int128>(static_cast<std::int64_t>(block_[k]));
      block_[k] = 0.0;
    }
    if (!block32_.empty()) {
      for (std::size_t k = 0; k < middle_.size(); ++k) {
        middle_[k] += block32_[k];
        block32_[k] = 0;
      }
      if (++middle_flushes_ == kMiddleFlushes) flush_middle();
    }
    pending_ = 0;
  }

  /// Adds another sum of the same size and grid (exact).
  void merge(ExactSum other) {
    other.flush();
    other.flush_middle();
    flush();
    flush_middle();
    for (std::size_t k = 0; k < total_.size(); ++k) total_[k] += other.total_[k];
    count_ += other.count_;
    out_of_range_ += other.out_of_range_;
  }

  /// Number of add() / commit() calls.
  std::int64_t count() const { return count_; }

  /// The exact sum of entry k (after flushing), rounded to long double.
  long double total(Eigen::Index k) const {
    const std::size_t index = static_cast<std::size_t>(k);
    Int128 sum = total_[index];
    if (!block_.empty()) sum += static_cast<Int128>(static_cast<std::int64_t>(block_[index]));
    if (!block32_.empty()) sum += static_cast<Int128>(block32_[index]) + static_cast<Int128>(middle_[index]);
    return std::ldexp(static_cast<long double>(sum), -grid_log2_);
  }

  bool compatible(const ExactSum& other) const {
    return other.total_.size() == total_.size() && other.grid_log2_ == grid_log2_ && other.grid_ == grid_;
  }

 private:
  static constexpr std::int64_t kMiddleFlushes = std::int64_t{1} << 32;

  /// Moves the 64-bit partial sums (Float grid) into the 128-bit totals.
  void flush_middle() {
    for (std::size_t k = 0; k < middle_.size(); ++k) {
      total_[k] += static_cast<Int128>(middle_[k]);
      middle_[k] = 0;
    }
    middle_flushes_ = 0;
  }

  SumGrid grid_ = SumGrid::Double;
  int grid_log2_ = 0;
  double scale_ = 1.0, limit_ = 1.0;
  int flush_every_ = 1 << kFlushLog2;
  std::vector<double> block_;
  std::vector<std::int32_t, Eigen::aligned_allocator<std::int32_t>> block32_;  ///< aligned for packet access
  std::vector<Int128> total_;
  std::vector<std::int64_t> middle_;  ///< Float grid: flushed int32 blocks, 2^32 flushes at most
  std::int64_t middle_flushes_ = 0;
  int pending_ = 0;
  std::int64_t count_ = 0;
  std::int64_t out_of_range_ = 0;
};

}  // namespace maskpos::detail
