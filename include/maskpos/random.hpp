/// @file random.hpp
/// @brief Counter-based random streams (Philox4x32-10 from Random123): sample b's numbers depend
/// only on (seed, b), so results never depend on the thread count or on the order samples run in.
#pragma once

#include <Random123/philox.h>

#include <Eigen/Core>

#include <cstdint>

#include "types.hpp"

namespace maskpos {

/// The standard-normal stream of one Monte Carlo sample.
///
/// Philox4x32-10 is keyed by the 64-bit seed; the counter holds the 64-bit sample index and a
/// 32-bit block number, so distinct samples (and distinct seeds) never share a counter value.
/// Normals come from the Box-Muller transform in double precision, evaluated with Eigen's
/// vectorised log/sin/cos; the bits are identical on every run and for every thread count of the
/// same build (a build with different SIMD flags may round the transcendental functions
/// differently).
///
/// Thread safety: one stream per thread; reuse it across samples with start_sample().
class SampleStream {
 public:
  explicit SampleStream(std::uint64_t seed, std::uint64_t sample = 0) : sample_(sample) {
    key_ = {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
  }

  /// Restarts the stream at the beginning of sample `sample` (keeps the buffers: no allocation).
  void start_sample(std::uint64_t sample) {
    sample_ = sample;
    block_ = 0;
  }

  /// Fills `out` with independent standard normals, continuing the stream.
  void fill_normal(Eigen::Ref<Eigen::ArrayXd> out) {
    const Index n = out.size();
    const Index pairs = (n + 1) / 2;
    uniform_a_.resize(pairs);
    uniform_b_.resize(pairs);
    Index filled = 0;
    while (filled < pairs) {
      const r123::Philox4x32::ctr_type counter = {{static_cast<std::uint32_t>(sample_),
                                                   static_cast<std::uint32_t>(sample_ >> 32), block_++, 0u}};
      const auto bits = generator_(counter, key_);
      // (x + 0.5) / 2^32 lies strictly inside (0, 1): the logarithm below is always finite.
      constexpr double kTwoToMinus32 = 1.0 / 4294967296.0;
      uniform_a_[filled] = (static_cast<double>(bits.v[0]) + 0.5) * kTwoToMinus32;
      uniform_b_[filled] = (static_cast<double>(bits.v[1]) + 0.5) * kTwoToMinus32;
      if (++filled == pairs) break;
      uniform_a_[filled] = (static_cast<double>(bits.v[2]) + 0.5) * kTwoToMinus32;
      uniform_b_[filled] = (static_cast<double>(bits.v[3]) + 0.5) * kTwoToMinus32;
      ++filled;
    }
    constexpr double kTwoPi = 6.283185307179586476925286766559;
    radius_ = (-2.0 * uniform_a_.log()).sqrt();
    angle_ = kTwoPi * uniform_b_;
    // Interleaved (cos, sin) pairs: the first call after start_sample(b) is a prefix of any longer one.
    Eigen::Map<Eigen::ArrayXd, 0, Eigen::InnerStride<2>> cosines(out.data(), pairs);
    Eigen::Map<Eigen::ArrayXd, 0, Eigen::InnerStride<2>> sines(out.data() + 1, n / 2);
    cosines = radius_ * angle_.cos();
    sines = radius_.head(n / 2) * angle_.head(n / 2).sin();
  }

 private:
  r123::Philox4x32 generator_;
  r123::Philox4x32::key_type key_;
  std::uint64_t sample_;
  std::uint32_t block_ = 0;
  Eigen::ArrayXd uniform_a_, uniform_b_, radius_, angle_;
};

}  // namespace maskpos
