#include <maskpos/detail/frame_kernel.hpp>
#include <maskpos/inputs.hpp>
#include <maskpos/monte_carlo.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using maskpos::DecoderConfig;
using maskpos::Index;
using maskpos::Norm;

namespace {

// Bit-for-bit equality (NaN equal to NaN), for values the two kernels compute the same way.
template <class Scalar>
bool same_bits(Scalar a, Scalar b) {
  return std::memcmp(&a, &b, sizeof(Scalar)) == 0 || (std::isnan(a) && std::isnan(b));
}

}  // namespace

TEMPLATE_TEST_CASE("the transposed frame kernel gives DecoderKernel's bits in every layer", "", float, double) {
  // Expected values: detail::DecoderKernel with the same frame (itself checked against the
  // independent reference decoder in test_decoder). FrameKernel is written to perform, entry by
  // entry, the same floating-point operations in the same order (see its class comment), so
  // scores, probabilities and the layer outputs must agree exactly, not within a tolerance. The
  // cases cover every padding of the first query packet (S mod P), frames narrower than S
  // (trapezoid rows) and wider, a lead vector, every norm the frame admits, score scales 1 and
  // 1 / sqrt(d) (the rescaling pass), the row-maximum shift (no norm), the residual on and off,
  // both lower-triangular masks, and a zero token with norm_eps = 0.
  using Scalar = TestType;
  constexpr Index P = maskpos::detail::packet_size<Scalar>();
  const auto [S, d] = GENERATE(std::pair{1, 4}, std::pair{7, 16}, std::pair{8, 9}, std::pair{11, 8},
                               std::pair{19, 40}, std::pair{50, 64}, std::pair{37, 20});
  const double alpha = GENERATE(0.0, 0.3);
  // A zero token with norm_eps = 0: both kernels map it to the zero row (its divisor is 0), never to NaN.
  const bool zero_token = GENERATE(false, true);
  const int L = 3;
  for (Norm norm : {Norm::L2, Norm::RMSNorm, Norm::None})
    for (bool residual : {true, false})
      for (bool unit_scale : {true, false})
        for (const maskpos::Mask& mask : {maskpos::Mask::causal(), maskpos::Mask::prefix_lm(1)}) {
          DecoderConfig config;
          config.layers = L;
          config.norm = norm;
          config.residual = residual;
          config.mask = mask;
          if (!unit_scale) config.scale = maskpos::ScoreScale::inv_sqrt_dim();
          if (zero_token) config.norm_eps = 0.0;
          REQUIRE(maskpos::detail::FrameKernel<Scalar>::applies(config));
          maskpos::InputGenerator generator(maskpos::InputSpec::gaussian(S, d, alpha), 7);
          const maskpos::TriangularFrame frame = generator.triangular_frame(false);
          maskpos::Matrix<Scalar> state(S, frame.width);
          generator.generate_triangular_into<Scalar>(3, state, false);
          if (zero_token) state.row(S / 2).setZero();
          maskpos::detail::DecoderKernel<Scalar> rows(config, S, d, frame);
          maskpos::detail::FrameKernel<Scalar> packets(config, S, d, frame);
          packets.input_rows() = state;
          packets.load();
          const Index pad = packets.pad(), stride = packets.stride();  // state: feature k of token i at k stride + i + pad
          using Kernel = maskpos::detail::FrameKernel<Scalar>;
          REQUIRE((S + pad) % P == 0);
          REQUIRE(pad < P);
          for (int l = 0; l < L; ++l) {
            rows.layer(state);
            packets.step(true);
            INFO("S " << S << ", d " << d << ", alpha " << alpha << ", zero token " << zero_token << ", norm " << maskpos::to_string(norm) << ", residual "
                      << residual << ", unit scale " << unit_scale << ", mask " << mask.name() << ", layer " << l);
            int mismatches = 0;
            for (Index i = 0; i < S; ++i) {
              for (Index j = 0; j <= i; ++j) {
                // The layout documented in FrameKernel: query packet q's block, key column j + pad, lane.
                const Index at = Kernel::block_offset((i + pad) / P) + (j + pad) * P + (i + pad) % P;
                const Scalar probability = packets.weight_data()[at] * packets.inverse_data()[i + pad];
                mismatches += !same_bits(packets.score_data()[at], rows.scores()(i, j));
                mismatches += !same_bits(probability, rows.probs()(i, j));
              }
              for (Index k = 0; k < frame.width; ++k)
                mismatches += !same_bits(packets.state_data()[k * stride + i + pad], state(i, k));
            }
            CHECK(mismatches == 0);
            int not_finite = 0;
            for (Index i = 0; i < S; ++i)
              for (Index k = 0; k < frame.width; ++k) not_finite += !std::isfinite(state(i, k));
            CHECK(not_finite == 0);
          }
        }
}

TEST_CASE("the transposed frame kernel refuses what it cannot run") {
  const maskpos::TriangularFrame frame{8, 0};
  DecoderConfig config;
  config.mask = maskpos::Mask::sliding_window(3);
  CHECK_FALSE(maskpos::detail::FrameKernel<float>::applies(config));
  CHECK_THROWS_WITH((maskpos::detail::FrameKernel<float>(config, 8, 16, frame)), Catch::Contains("mask = sliding:3"));
  config = DecoderConfig{};
  config.norm = Norm::LayerNorm;
  CHECK_THROWS_WITH((maskpos::detail::FrameKernel<float>(config, 8, 16, frame)), Catch::Contains("norm = layernorm"));
  config = DecoderConfig{};
  config.rope = maskpos::RopeConfig{};
  CHECK_THROWS_WITH((maskpos::detail::FrameKernel<float>(config, 8, 16, frame)), Catch::Contains("RoPE = on"));
}

TEST_CASE("an accumulator in query packets sums exactly what one in rows sums") {
  // The same values added through add_layer_rows (row layout, the reference: its own tests check it
  // against plain sums) and through add_layer_packets (query packets of 8 lanes, AVX2's path where
  // built, and of 3 lanes, the scalar path) must give identical results, for the float and the
  // double grid. Lanes of keys a query does not see carry NaN in the packet layout: they must be
  // ignored (not summed, not counted as out of range). One visible score is NaN in both layouts:
  // it must be counted out of range once per sum that sees it, in both.
  const Index S = 13;
  DecoderConfig config;
  config.layers = 1;
  const auto inputs = maskpos::InputSpec::gaussian(S, 16, 0.0);
  std::mt19937 engine(5);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (const maskpos::SumGrid grid : {maskpos::SumGrid::Float, maskpos::SumGrid::Double})
    for (const Index lanes : {Index(8), Index(3)}) {
      INFO("lanes " << lanes << ", grid " << (grid == maskpos::SumGrid::Float ? "float" : "double"));
      maskpos::MonteCarloAccumulator by_rows(config, inputs, grid), by_packets(config, inputs, grid, lanes);
      const Index pad = (lanes - S % lanes) % lanes, packets = (S + pad) / lanes;
      const auto entry = [&](Index i, Index j) {  // add_layer_packets' documented layout
        const Index q = (i + pad) / lanes;
        return static_cast<std::size_t>(lanes * lanes * q * (q + 1) / 2 + (j + pad) * lanes + (i + pad) % lanes);
      };
      for (int sample = 0; sample < 20; ++sample) {
        std::vector<float> scores(static_cast<std::size_t>(S * S)), weights(scores.size()), inverse(static_cast<std::size_t>(S));
        // Packet layout: 32-byte aligned, NaN wherever no visible entry lives.
        std::vector<float, Eigen::aligned_allocator<float>> packet_scores(
            static_cast<std::size_t>(lanes * lanes * packets * (packets + 1) / 2), std::numeric_limits<float>::quiet_NaN());
        std::vector<float, Eigen::aligned_allocator<float>> packet_weights(packet_scores),
            packet_inverse(static_cast<std::size_t>(S + pad), 0.0f);
        for (Index i = 0; i < S; ++i) {
          inverse[static_cast<std::size_t>(i)] = packet_inverse[static_cast<std::size_t>(i + pad)] = 0.3f + 0.05f * uniform(engine);  // probabilities w inverse <= e 0.35 < 1
          for (Index j = 0; j <= i; ++j) {
            float score = uniform(engine);
            if (sample == 4 && i == 9 && j == 2) score = std::numeric_limits<float>::quiet_NaN();
            const float weight = std::exp(score);
            scores[static_cast<std::size_t>(i * S + j)] = score;
            weights[static_cast<std::size_t>(i * S + j)] = weight;
            packet_scores[entry(i, j)] = score;
            packet_weights[entry(i, j)] = weight;
          }
        }
        by_rows.add_layer_rows<float>(0, scores.data(), weights.data(), S, inverse.data());
        by_packets.add_layer_packets<float>(0, packet_scores.data(), packet_weights.data(), packet_inverse.data());
      }
      const auto want = by_rows.result(), got = by_packets.result();
      CHECK(want.out_of_range == 3);  // the NaN score, its square and its probability exp(NaN)
      CHECK(got.out_of_range == want.out_of_range);
      int mismatches = 0;
      for (Index i = 0; i < S; ++i)
        for (Index j = 0; j < S; ++j) {
          mismatches += !same_bits(got.mean_scores[0](i, j), want.mean_scores[0](i, j));
          mismatches += !same_bits(got.stderr_scores[0](i, j), want.stderr_scores[0](i, j));
          mismatches += !same_bits(got.mean_probs[0](i, j), want.mean_probs[0](i, j));
        }
      CHECK(mismatches == 0);
      CHECK_THROWS_WITH(by_rows.merge(by_packets), Catch::Contains("merged accumulator"));
    }
}
