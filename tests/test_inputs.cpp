#include <maskpos/inputs.hpp>
#include <maskpos/random.hpp>

#include <catch2/catch.hpp>

#include <Random123/philox.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using maskpos::InputSpec;

TEST_CASE("the sample stream is standard normal and depends only on (seed, sample)") {
  maskpos::SampleStream stream(7, 3);
  Eigen::ArrayXd draws(200001);
  stream.fill_normal(draws);
  const double n = static_cast<double>(draws.size());
  const double mean = draws.mean();
  const double var = (draws - mean).square().sum() / (n - 1);
  const double kurtosis = (draws - mean).pow(4).mean() / (var * var);
  // Standard errors for N(0,1): mean 1/sqrt(n), variance sqrt(2/n), kurtosis sqrt(24/n); 5 of each.
  CHECK(std::fabs(mean) < 5 / std::sqrt(n));
  CHECK(std::fabs(var - 1) < 5 * std::sqrt(2 / n));
  CHECK(std::fabs(kurtosis - 3) < 5 * std::sqrt(24 / n));
  Eigen::ArrayXd again(10), other_sample(10), other_seed(10);
  maskpos::SampleStream(7, 3).fill_normal(again);
  maskpos::SampleStream(7, 4).fill_normal(other_sample);
  maskpos::SampleStream(8, 3).fill_normal(other_seed);
  CHECK((again == draws.head(10)).all());
  CHECK((again != other_sample).all());
  CHECK((again != other_seed).all());
  stream.start_sample(3);
  Eigen::ArrayXd restarted(10);
  stream.fill_normal(restarted);
  CHECK((restarted == again).all());
}

TEST_CASE("the vectorised Philox lanes are Random123's Philox4x32-10") {
  // Random123's own implementation is the independent reference.
  for (std::uint64_t seed : {0ull, 42ull, 0x123456789abcdefull})
    for (std::uint32_t first : {0u, 16u, 0xfffffff0u}) {
      std::uint32_t words[4][maskpos::detail::kPhiloxLanes];
      maskpos::detail::philox4x32_10_lanes(7u, 9u, first, 3u, static_cast<std::uint32_t>(seed),
                                           static_cast<std::uint32_t>(seed >> 32), words);
      r123::Philox4x32 philox;
      const r123::Philox4x32::key_type key = {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
      for (int j = 0; j < maskpos::detail::kPhiloxLanes; ++j) {
        const r123::Philox4x32::ctr_type counter = {{7u, 9u, first + static_cast<std::uint32_t>(j), 3u}};
        const auto expected = philox(counter, key);
        for (int w = 0; w < 4; ++w) CHECK(words[w][j] == expected.v[w]);
      }
    }
}

TEST_CASE("Box-Muller pairs are independent normals with a uniform angle") {
  // Chunks hold [r cos | r sin] blocks of 16: entry k and k + 16 of a 32-block are one pair.
  maskpos::SampleStream stream(11, 0);
  const int chunks = 4000;
  Eigen::ArrayXf draws(chunks * 64);
  stream.fill_normal(draws);
  double cross = 0, cross_squares = 0, skew = 0;
  std::vector<double> octants(8, 0.0);
  const double pairs = chunks * 32.0;
  const double pi = 3.14159265358979323846;
  for (int c = 0; c < chunks * 2; ++c)
    for (int j = 0; j < 16; ++j) {
      const double x = draws[c * 32 + j], y = draws[c * 32 + 16 + j];
      cross += x * y;
      cross_squares += x * x * y * y;
      skew += x * x * x + y * y * y;
      const double angle = std::atan2(y, x) + pi;  // in [0, 2 pi]
      octants[std::min(7, static_cast<int>(angle / (pi / 4)))] += 1;
    }
  // For independent N(0,1): E[xy] = 0 (sd 1 per pair), E[x^2 y^2] = 1 (sd sqrt(E x^4 E y^4 - 1) = sqrt(8)),
  // E[x^3] = 0 (sd sqrt(15)); each octant holds 1/8 of the angles (binomial sd). Bounds: 5 standard errors.
  CHECK(std::fabs(cross / pairs) < 5 / std::sqrt(pairs));
  CHECK(std::fabs(cross_squares / pairs - 1) < 5 * std::sqrt(8 / pairs));
  CHECK(std::fabs(skew / (2 * pairs)) < 5 * std::sqrt(15 / (2 * pairs)));
  for (double count : octants) CHECK(std::fabs(count / pairs - 0.125) < 5 * std::sqrt(0.125 * 0.875 / pairs));
}

TEST_CASE("how the normals of a sample are requested never changes them") {
  maskpos::SampleStream whole(5, 9), pieces(5, 9);
  Eigen::ArrayXf all(300);
  whole.fill_normal(all);
  Eigen::ArrayXf part(300);
  int begin = 0;
  for (int size : {1, 70, 64, 3, 100, 62}) {
    pieces.fill_normal(part.data() + begin, size);
    begin += size;
  }
  CHECK((part == all).all());
  Eigen::ArrayXd widened(300);
  maskpos::SampleStream(5, 9).fill_normal(widened);
  CHECK((widened == all.cast<double>()).all());
}

TEST_CASE("alpha-correlated Gaussian tokens: unit norm, pairwise cosine alpha for large d") {
  for (double alpha : {0.0, 0.2, 0.6}) {
    maskpos::InputGenerator generator(InputSpec::gaussian(6, 8192, alpha), 1);
    Eigen::MatrixXd tokens;
    double mean_cosine = 0;
    int pairs = 0;
    for (std::uint64_t b = 0; b < 4; ++b) {
      generator.generate(b, tokens);
      for (int i = 0; i < 6; ++i) {
        CHECK(tokens.row(i).norm() == Approx(1.0).margin(1e-12));
        for (int j = 0; j < i; ++j, ++pairs) mean_cosine += tokens.row(i).dot(tokens.row(j));
      }
    }
    mean_cosine /= pairs;
    // cos = (z_i + l c).(z_j + l c) / norms -> l^2 / (1 + l^2) = alpha; each cosine fluctuates by
    // O(1/sqrt(d)) = 0.011, and the 60 cosines share only 4 directions c: 0.02 is 4 standard errors.
    CHECK(mean_cosine == Approx(alpha).margin(0.02));
  }
  maskpos::InputGenerator equal(InputSpec::gaussian(5, 16, 1.0), 1);
  Eigen::MatrixXf tokens;
  equal.generate(0, tokens);
  for (int i = 1; i < 5; ++i) CHECK(tokens.row(i) == tokens.row(0));
}

TEST_CASE("orthonormal tokens are orthonormal and differ between samples") {
  maskpos::InputGenerator generator(InputSpec::orthonormal(10, 12), 3);
  Eigen::MatrixXd first, second;
  generator.generate(0, first);
  generator.generate(1, second);
  CHECK((first * first.transpose() - Eigen::MatrixXd::Identity(10, 10)).cwiseAbs().maxCoeff() < 1e-13);
  CHECK((first - second).cwiseAbs().maxCoeff() > 0.1);
}

TEST_CASE("user tokens are used as given and validated") {
  Eigen::MatrixXd tokens = Eigen::MatrixXd::Random(4, 3);
  maskpos::InputGenerator generator(InputSpec::user(tokens), 0);
  Eigen::MatrixXd out;
  generator.generate(5, out);
  CHECK(out == tokens);
  tokens(1, 2) = INFINITY;
  CHECK_THROWS_WITH(InputSpec::user(tokens).validate(), Catch::Contains("tokens(1, 2)"));
}

TEST_CASE("Box-Muller lanes follow their formula, evaluated in double with libm") {
  // Words from std::mt19937 (fully specified), the outputs against the documented transform:
  // u = (2 (w >> 9) + 1) 2^-24, r = sqrt(-2 ln u), t = q pi/2 + (f - 1/2) pi/2 with q = w >> 30 and
  // f = (((w >> 6) & 0xFFFFFE) | 1) 2^-24. Float error budget, relative to max(1, r) (r <= 5.77):
  // the float angle (two roundings, 1.2e-7 rad), the truncated sin/cos series (2.5e-8), their float
  // evaluation and the radius's log and square root (a few ulps each): below 8 float epsilons.
  std::mt19937 engine(2024);
  std::uint32_t words[4][maskpos::detail::kPhiloxLanes];
  constexpr int N = maskpos::detail::kPhiloxLanes;
  float out[4 * N];
  double worst = 0;
  for (int round = 0; round < 2000; ++round) {
    for (auto& row : words)
      for (auto& w : row) w = static_cast<std::uint32_t>(engine());
    maskpos::detail::box_muller_lanes(words, out);
    for (int pair = 0; pair < 2; ++pair)
      for (int j = 0; j < N; ++j) {
        const std::uint32_t radius_word = words[2 * pair][j], angle_word = words[2 * pair + 1][j];
        const double u = std::ldexp(static_cast<double>(((radius_word >> 9) << 1) | 1u), -24);
        const double r = std::sqrt(-2.0 * std::log(u));
        const double f = std::ldexp(static_cast<double>(((angle_word >> 6) & 0xFFFFFEu) | 1u), -24);
        const double t = (angle_word >> 30) * (std::acos(-1.0) / 2) + (f - 0.5) * (std::acos(-1.0) / 2);
        const double scale = std::max(1.0, r);
        worst = std::max(worst, std::fabs(out[2 * pair * N + j] - r * std::cos(t)) / scale);
        worst = std::max(worst, std::fabs(out[2 * pair * N + N + j] - r * std::sin(t)) / scale);
      }
  }
  CHECK(worst < 8 * std::numeric_limits<float>::epsilon());
}

TEST_CASE("the Box-Muller log gives Eigen's plog bits on every uniform it can see, and libm's value") {
  // Exhaustive over the 2^23 uniforms u = (2 k + 1) 2^-24 the radius is taken of, plus random
  // positive normal floats. Expected bits: Eigen's own plog, whose operations the fast version
  // repeats in the same order (only frexp and the special cases differ), so any difference is a
  // bug. Expected value: log in double, within the Cephes logf bound (about 1 ulp of the result;
  // 2 allowed). The ulp is floored at that of 2^-24, the smallest |ln u| Box-Muller sees, so that
  // ln 1 = 0 (reachable by the random floats) has one.
  using Packet = maskpos::detail::PacketOf<float>;
  constexpr int P = maskpos::detail::packet_size<float>();
  alignas(64) float in[4 * P], fast[4 * P], eigen[4 * P];
  std::size_t mismatches = 0;
  double worst = 0;
  auto check = [&]() {
    Packet x[4];
    for (int g = 0; g < 4; ++g) x[g] = Eigen::internal::pload<Packet>(in + g * P);
    maskpos::detail::log_positive_normal_packets<float, 4>(x);
    for (int g = 0; g < 4; ++g) {
      Eigen::internal::pstore(fast + g * P, x[g]);
      Eigen::internal::pstore(eigen + g * P, Eigen::internal::plog(Eigen::internal::pload<Packet>(in + g * P)));
    }
    for (int k = 0; k < 4 * P; ++k) {
      if (std::memcmp(&fast[k], &eigen[k], sizeof(float)) != 0) ++mismatches;
      const double want = std::log(static_cast<double>(in[k]));
      const double ulp = std::ldexp(1.0, std::max(std::ilogb(static_cast<float>(want)), -24) - 23);
      worst = std::max(worst, std::fabs(fast[k] - want) / ulp);
    }
  };
  const std::uint32_t count = std::uint32_t{1} << 23;
  for (std::uint32_t k = 0; k < count; k += 4 * P) {
    for (int j = 0; j < 4 * P; ++j) in[j] = std::ldexp(static_cast<float>(2 * (k + j) + 1), -24);
    check();
  }
  std::mt19937 engine(11);
  std::uniform_int_distribution<std::uint32_t> normal_bits(0x00800000u, 0x7f7fffffu);
  for (int round = 0; round < 20000; ++round) {
    for (float& v : in) {
      const std::uint32_t b = normal_bits(engine);
      std::memcpy(&v, &b, sizeof v);
    }
    check();
  }
  CHECK(mismatches == 0);
  CHECK(worst <= 2.0);
}

TEST_CASE("chi variates have the moments of the length of a standard normal vector") {
  // E[chi^2] = k, Var[chi^2] = 2k, E[chi^4] = k (k + 2); E[chi] = sqrt(2) Gamma((k + 1) / 2) / Gamma(k / 2).
  // Tolerances: 5 standard errors of the sample mean of N draws (sd of chi^2 is sqrt(2k), sd of chi is
  // sqrt(k - E[chi]^2)); 5 sigma over the 12 checks fails by chance with probability < 1e-5.
  const int N = 40000;
  for (const int k : {1, 2, 3, 10, 64, 511}) {
    maskpos::SampleStream stream(11, static_cast<std::uint64_t>(k));
    double sum = 0, sum2 = 0;
    for (int n = 0; n < N; ++n) {
      const double chi = maskpos::draw_chi(stream, k);
      REQUIRE(chi >= 0);
      sum += chi;
      sum2 += chi * chi;
    }
    const double mean_chi = std::sqrt(2.0) * std::exp(std::lgamma((k + 1) / 2.0) - std::lgamma(k / 2.0));
    INFO("dof " << k);
    CHECK(std::fabs(sum2 / N - k) < 5 * std::sqrt(2.0 * k / N));
    CHECK(std::fabs(sum / N - mean_chi) < 5 * std::sqrt((k - mean_chi * mean_chi) / N));
  }
  maskpos::SampleStream stream(11, 0);
  CHECK(maskpos::draw_chi(stream, 0) == 0.0);
}

TEST_CASE("the uniform sequence is uniform on (0, 1) and leaves the normals unchanged") {
  maskpos::SampleStream stream(5, 9), plain(5, 9);
  const int N = 100000;
  double sum = 0, sum2 = 0, lowest = 1, highest = 0;
  Eigen::ArrayXf mixed(3 * N), normals(3 * N);
  for (int n = 0; n < N; ++n) {
    stream.fill_normal(mixed.data() + 3 * n, 3);  // interleaved with the uniforms
    const double u = stream.next_uniform();
    sum += u;
    sum2 += u * u;
    lowest = std::min(lowest, u);
    highest = std::max(highest, u);
  }
  plain.fill_normal(normals.data(), normals.size());
  CHECK((mixed == normals).all());
  // Mean 1/2 (sd 1/sqrt(12)), second moment 1/3 (sd sqrt(1/5 - 1/9)); 5 standard errors each.
  CHECK(std::fabs(sum / N - 0.5) < 5 * std::sqrt(1.0 / 12 / N));
  CHECK(std::fabs(sum2 / N - 1.0 / 3) < 5 * std::sqrt((1.0 / 5 - 1.0 / 9) / N));
  CHECK(lowest > 0);
  CHECK(highest < 1);
  maskpos::SampleStream again(5, 9);
  again.fill_normal(mixed.data(), 3);
  maskpos::SampleStream fresh(5, 9);
  CHECK(again.next_uniform() == fresh.next_uniform());  // the uniforms do not depend on the normals read
}

namespace {

// The dot products of one sample's token pairs (i > j), pooled over samples: sums of x and x^2.
struct PairMoments {
  Eigen::MatrixXd sum, square;
  int samples = 0;
  explicit PairMoments(int S) : sum(Eigen::MatrixXd::Zero(S, S)), square(Eigen::MatrixXd::Zero(S, S)) {}
  void add(const Eigen::MatrixXd& rows) {
    const Eigen::MatrixXd gram = rows * rows.transpose();
    sum += gram;
    square += gram.cwiseProduct(gram);
    ++samples;
  }
  double mean(int i, int j) const { return sum(i, j) / samples; }
  double stderr_of_mean(int i, int j) const {
    const double m = mean(i, j);
    return std::sqrt(std::max(0.0, square(i, j) / samples - m * m) / (samples - 1));
  }
};

Eigen::MatrixXd centred(const Eigen::MatrixXd& tokens) {
  return tokens.colwise() - tokens.rowwise().mean();
}

}  // namespace

TEST_CASE("triangular frame: its shape, unit rows and zeros beyond each row's support") {
  using Frame = maskpos::TriangularFrame;
  auto frame_of = [](InputSpec spec, bool drop_mean) { return maskpos::InputGenerator(spec, 1).triangular_frame(drop_mean); };
  auto same = [](Frame a, Frame b) { return a.width == b.width && a.lead == b.lead; };
  CHECK(same(frame_of(InputSpec::gaussian(50, 64, 0.0), false), Frame{50, 0}));
  CHECK(same(frame_of(InputSpec::gaussian(50, 64, 0.2), false), Frame{51, 1}));
  CHECK(same(frame_of(InputSpec::gaussian(50, 64, 0.2), true), Frame{51, 1}));
  CHECK(same(frame_of(InputSpec::gaussian(50, 50, 0.2), true), Frame{49, 1}));
  CHECK(same(frame_of(InputSpec::gaussian(12, 8, 0.5), false), Frame{8, 1}));
  CHECK(same(frame_of(InputSpec::gaussian(12, 8, 1.0), false), Frame{1, 1}));
  CHECK(same(frame_of(InputSpec::gaussian(5, 1, 0.0), true), Frame{1, 0}));
  CHECK_THROWS_AS(frame_of(InputSpec::orthonormal(4, 8), false), std::invalid_argument);
  {
    maskpos::InputGenerator generator(InputSpec::gaussian(12, 8, 0.3), 3);
    Eigen::MatrixXd wrong(12, 9);  // the frame is 8 wide
    CHECK_THROWS_WITH(generator.generate_triangular_into<double>(0, wrong, false),
                      Catch::Contains("frame rows shape") && Catch::Contains("12 x 8"));
    Eigen::MatrixXd column_major(12, 8);
    generator.generate_triangular_into<double>(4, column_major, false);  // not row-major: through a buffer
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> row_major(12, 8);
    generator.generate_triangular_into<double>(4, row_major, false);
    CHECK((column_major.array() == Eigen::MatrixXd(row_major).array()).all());
  }
  for (const double alpha : {0.0, 0.3, 1.0})
    for (const bool drop_mean : {false, true}) {
      const auto spec = InputSpec::gaussian(12, 8, alpha);
      maskpos::InputGenerator generator(spec, 3);
      const Frame frame = generator.triangular_frame(drop_mean);
      Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rows(12, frame.width);
      for (std::uint64_t b = 0; b < 20; ++b) {
        rows.setConstant(7.0);  // every entry is written
        generator.generate_triangular_into<double>(b, rows, drop_mean);
        for (int i = 0; i < 12; ++i) {
          INFO("alpha " << alpha << ", drop_mean " << drop_mean << ", row " << i);
          CHECK((rows.row(i).tail(frame.width - frame.support(i)).array() == 0).all());
          // The inputs are unit vectors; with drop_mean the frame holds their part orthogonal to 1.
          if (drop_mean) CHECK(rows.row(i).norm() < 1 + 1e-6);
          else CHECK(rows.row(i).norm() == Approx(1.0).epsilon(1e-6));  // float normals, double arithmetic
        }
      }
    }
}

TEST_CASE("triangular frame: token dot products have the distribution of the direct tokens'") {
  // Independent uniform unit vectors in R^d (alpha = 0): E[x_i . x_j] = 0, E[(x_i . x_j)^2] = 1/d, and
  // E[(x . 1/sqrt(d))^2] = 1/d for any isotropic x, so the part orthogonal to 1 has E[|x_perp|^2] =
  // 1 - 1/d for every alpha < 1. For alpha > 0 the triangular rows are compared with generate()'s
  // tokens (another seed) by a two-sample z score. S = 12 > d = 8 covers the trapezoid rows beyond d.
  // 5 standard errors per check: over the ~300 checks a false alarm has probability < 2e-4.
  const int S = 12, d = 8, B = 20000;
  for (const double alpha : {0.0, 0.5})
    for (const bool drop_mean : {false, true}) {
      const auto spec = InputSpec::gaussian(S, d, alpha);
      maskpos::InputGenerator frame_generator(spec, 21), token_generator(spec, 22);
      const int width = static_cast<int>(frame_generator.triangular_frame(drop_mean).width);
      PairMoments framed(S), direct(S);
      Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rows(S, width);
      Eigen::MatrixXd tokens;
      for (int b = 0; b < B; ++b) {
        frame_generator.generate_triangular_into<double>(static_cast<std::uint64_t>(b), rows, drop_mean);
        framed.add(rows);
        token_generator.generate(static_cast<std::uint64_t>(b), tokens);
        direct.add(drop_mean ? centred(tokens) : tokens);
      }
      INFO("alpha " << alpha << ", drop_mean " << drop_mean);
      for (int i = 0; i < S; ++i) {
        const double want_norm = drop_mean ? 1.0 - 1.0 / d : 1.0;
        if (drop_mean) CHECK(std::fabs(framed.mean(i, i) - want_norm) < 5 * framed.stderr_of_mean(i, i));
        for (int j = 0; j < i; ++j) {
          INFO("pair (" << i << ", " << j << ")");
          const double z = (framed.mean(i, j) - direct.mean(i, j)) /
                           std::hypot(framed.stderr_of_mean(i, j), direct.stderr_of_mean(i, j));
          CHECK(std::fabs(z) < 5);
          if (alpha == 0.0 && !drop_mean) {
            CHECK(std::fabs(framed.mean(i, j)) < 5 * framed.stderr_of_mean(i, j));
            // sd of (x_i . x_j)^2 is sqrt(3 / (d (d + 2)) - 1 / d^2) for uniform unit vectors
            const double sd = std::sqrt(3.0 / (d * (d + 2)) - 1.0 / (d * d));
            CHECK(std::fabs(framed.square(i, j) / B - 1.0 / d) < 5 * sd / std::sqrt(double(B)));
          }
        }
      }
    }
}
