// Microbenchmarks of the hot kernels. Run: build/bin/bench_kernels --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <maskpos/decoder.hpp>
#include <maskpos/inputs.hpp>
#include <maskpos/monte_carlo.hpp>

namespace {

// One decoder layer of the paper configuration (S = 50, d = 64, L2, causal) on one sequence.
template <class Scalar>
void decoder_layer(benchmark::State& state) {
  const auto S = static_cast<Eigen::Index>(state.range(0)), d = static_cast<Eigen::Index>(state.range(1));
  maskpos::DecoderConfig config;
  maskpos::detail::DecoderKernel<Scalar> kernel(config, S, d);
  maskpos::InputGenerator generator(maskpos::InputSpec::gaussian(S, d, 0.0), 0);
  maskpos::Matrix<Scalar> tokens, state_matrix;
  generator.generate(0, tokens);
  (void)state_matrix;
  for (auto _ : state) {
    kernel.state_rows() = tokens;  // S x d copy, small next to the layer
    kernel.step(true);
    benchmark::DoNotOptimize(kernel.score_data());
  }
  // Useful flops: the causal halves of Y Y^T and A Y, 2 S^2 d each (multiply-add = 2 flops).
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(S) * double(S) * double(d),
                                                 benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// Drawing the tokens of one sample (Philox + Box-Muller + normalisation), row-major.
void gaussian_inputs(benchmark::State& state) {
  const auto S = static_cast<Eigen::Index>(state.range(0)), d = static_cast<Eigen::Index>(state.range(1));
  maskpos::InputGenerator generator(maskpos::InputSpec::gaussian(S, d, 0.2), 0);
  // Row-major, as the Monte Carlo driver writes them into the kernel's state.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> tokens(S, d);
  std::uint64_t sample = 0;
  for (auto _ : state) {
    generator.generate_into<float>(sample++, tokens);
    benchmark::DoNotOptimize(tokens.data());
  }
}

// All L = 4 layers of one sample in Gram space (scores + probabilities, no accumulation).
template <class Scalar>
void gram_sample(benchmark::State& state) {
  const auto S = static_cast<Eigen::Index>(state.range(0)), d = static_cast<Eigen::Index>(state.range(1));
  maskpos::DecoderConfig config;
  maskpos::detail::DecoderKernel<Scalar> direct(config, S, d);
  maskpos::detail::TiledGramKernel<Scalar> gram(config, S, d);
  maskpos::InputGenerator generator(maskpos::InputSpec::gaussian(S, d, 0.2), 0);
  generator.generate_into<Scalar>(0, direct.state_rows());
  for (auto _ : state) {
    gram.load(direct.state_data(), direct.state_stride());
    for (int l = 0; l < 4; ++l) gram.step(l < 3);
    benchmark::DoNotOptimize(gram.score_data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(4 * 2.0 * double(S) * double(S) * double(d),
                                                 benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// The same sample in token space, the last layer without its A Y (as the Monte Carlo driver runs it).
template <class Scalar>
void direct_sample(benchmark::State& state) {
  const auto S = static_cast<Eigen::Index>(state.range(0)), d = static_cast<Eigen::Index>(state.range(1));
  maskpos::DecoderConfig config;
  maskpos::detail::DecoderKernel<Scalar> direct(config, S, d);
  maskpos::InputGenerator generator(maskpos::InputSpec::gaussian(S, d, 0.2), 0);
  maskpos::Matrix<Scalar> tokens;
  generator.generate(0, tokens);
  for (auto _ : state) {
    direct.state_rows() = tokens;
    for (int l = 0; l < 4; ++l) direct.step(l < 3);
    benchmark::DoNotOptimize(direct.score_data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(4 * 2.0 * double(S) * double(S) * double(d),
                                                 benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// One sample of the triangular path (tokens in their frame, L = 4, the last layer without A Y),
// drawing excluded: the row-major DecoderKernel (third argument 0) or the transposed FrameKernel
// (1), which the Monte Carlo driver runs for float (the same bits; tests/test_frame_kernel.cpp).
void frame_sample(benchmark::State& state) {
  const auto S = static_cast<Eigen::Index>(state.range(0)), d = static_cast<Eigen::Index>(state.range(1));
  maskpos::DecoderConfig config;
  maskpos::InputGenerator generator(maskpos::InputSpec::gaussian(S, d, 0.0), 0);
  const maskpos::TriangularFrame frame = generator.triangular_frame(false);
  maskpos::Matrix<float> tokens(S, frame.width);
  generator.generate_triangular_into<float>(0, tokens, false);
  if (state.range(2) == 0) {
    maskpos::detail::DecoderKernel<float> kernel(config, S, d, frame);
    for (auto _ : state) {
      kernel.state_rows() = tokens;
      for (int l = 0; l < 4; ++l) kernel.step(l < 3);
      benchmark::DoNotOptimize(kernel.score_data());
    }
  } else {
    maskpos::detail::FrameKernel<float> kernel(config, S, d, frame);
    for (auto _ : state) {
      kernel.input_rows() = tokens;
      kernel.load();
      for (int l = 0; l < 4; ++l) kernel.step(l < 3);
      benchmark::DoNotOptimize(kernel.score_data());
    }
  }
}

// Exact accumulation of one layer's float scores, squared scores and probabilities (S (S+1) / 2
// entries), on the Double grid (second argument 0) or the Float grid (1).
void accumulate_layer(benchmark::State& state) {
  const auto S = static_cast<Eigen::Index>(state.range(0));
  maskpos::DecoderConfig config;
  const auto inputs = maskpos::InputSpec::gaussian(S, 64, 0.2);
  maskpos::detail::DecoderKernel<float> kernel(config, S, 64);
  maskpos::InputGenerator generator(inputs, 0);
  generator.generate_into<float>(0, kernel.state_rows());
  kernel.step(false);
  maskpos::MonteCarloAccumulator sums(config, inputs, state.range(1) ? maskpos::SumGrid::Float : maskpos::SumGrid::Double);
  for (auto _ : state) {
    sums.add_layer_rows(0, kernel.score_data(), kernel.weight_data(), kernel.row_stride(), kernel.row_inverse());
    benchmark::ClobberMemory();
  }
  state.counters["entries"] = double(S * (S + 1) / 2);
}

// The raw normal stream: Philox4x32-10 + float Box-Muller, in chunks of 64.
void normal_stream(benchmark::State& state) {
  const auto n = static_cast<Eigen::Index>(state.range(0));
  maskpos::SampleStream stream(0);
  Eigen::ArrayXf normals(n);
  std::uint64_t sample = 0;
  for (auto _ : state) {
    stream.start_sample(sample++);
    stream.fill_normal(normals);
    benchmark::DoNotOptimize(normals.data());
  }
  state.counters["normals"] = double(n);
}

void philox_lanes(benchmark::State& state) {
  std::uint32_t words[4][maskpos::detail::kPhiloxLanes];
  std::uint32_t counter = 0;
  for (auto _ : state) {
    maskpos::detail::philox4x32_10_lanes(1, 2, counter, 0, 3, 4, words);
    counter += maskpos::detail::kPhiloxLanes;
    benchmark::DoNotOptimize(words);
  }
}

void box_muller(benchmark::State& state) {
  std::uint32_t words[4][maskpos::detail::kPhiloxLanes];
  maskpos::detail::philox4x32_10_lanes(1, 2, 0, 0, 3, 4, words);
  alignas(64) float out[64];
  for (auto _ : state) {
    benchmark::DoNotOptimize(words);
    maskpos::detail::box_muller_lanes(words, out);
    benchmark::DoNotOptimize(out);
  }
}

}  // namespace

BENCHMARK_TEMPLATE(gram_sample, float)->Args({50, 64})->Args({50, 128})->Args({50, 512});
BENCHMARK_TEMPLATE(direct_sample, float)->Args({50, 64})->Args({50, 128})->Args({50, 512});
BENCHMARK(frame_sample)->Args({50, 64, 0})->Args({50, 64, 1})->Args({128, 128, 0})->Args({128, 128, 1});
BENCHMARK(accumulate_layer)->Args({50, 0})->Args({50, 1});
BENCHMARK(normal_stream)->Arg(3264);
BENCHMARK(philox_lanes);
BENCHMARK(box_muller);
BENCHMARK_TEMPLATE(decoder_layer, float)->Args({50, 64})->Args({256, 64})->Args({50, 512});
BENCHMARK_TEMPLATE(decoder_layer, double)->Args({50, 64});
BENCHMARK(gaussian_inputs)->Args({50, 64});
BENCHMARK_MAIN();
