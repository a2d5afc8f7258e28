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
  for (auto _ : state) {
    state.PauseTiming();
    state_matrix = tokens;
    state.ResumeTiming();
    kernel.layer(state_matrix);
    benchmark::DoNotOptimize(state_matrix.data());
  }
  // Useful flops: the causal halves of Y Y^T and A Y, 2 S^2 d each (multiply-add = 2 flops).
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(S) * double(S) * double(d),
                                                 benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// Drawing the tokens of one sample (Philox + Box-Muller + normalisation).
void gaussian_inputs(benchmark::State& state) {
  const auto S = static_cast<Eigen::Index>(state.range(0)), d = static_cast<Eigen::Index>(state.range(1));
  maskpos::InputGenerator generator(maskpos::InputSpec::gaussian(S, d, 0.2), 0);
  maskpos::Matrix<float> tokens;
  std::uint64_t sample = 0;
  for (auto _ : state) {
    generator.generate(sample++, tokens);
    benchmark::DoNotOptimize(tokens.data());
  }
}

}  // namespace

BENCHMARK_TEMPLATE(decoder_layer, float)->Args({50, 64})->Args({256, 64})->Args({50, 512});
BENCHMARK_TEMPLATE(decoder_layer, double)->Args({50, 64});
BENCHMARK(gaussian_inputs)->Args({50, 64});
BENCHMARK_MAIN();
