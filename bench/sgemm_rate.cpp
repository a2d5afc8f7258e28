// The machine's single-precision matrix-product rate on T threads: each thread multiplies its own
// n x n float matrices with Eigen (single-threaded GEMM, the project's SIMD flags) for about a
// second; prints the aggregate GFLOP/s (2 n^3 per product), best of three rounds.
//
//   build/bin/sgemm_rate [--threads T] [--size n]
#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  int threads = 1;
  Eigen::Index n = 1024;
  for (int a = 1; a + 1 < argc; a += 2) {
    const std::string flag = argv[a];
    if (flag == "--threads") threads = std::stoi(argv[a + 1]);
    else if (flag == "--size") n = std::stol(argv[a + 1]);
  }
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    std::atomic<long> products{0};
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        const Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n);
        Eigen::MatrixXf c(n, n);
        (void)t;
        while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(1000)) {
          c.noalias() = a * b;
          products.fetch_add(1);
        }
      });
    for (auto& thread : pool) thread.join();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, 2.0 * double(n) * double(n) * double(n) * double(products.load()) / seconds * 1e-9);
  }
  std::printf("%.1f\n", best);
  return 0;
}
