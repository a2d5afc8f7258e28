// End-to-end tests of build/bin/maskpos: they run the executable and read what it wrote.
#include <maskpos/maskpos.hpp>
#include <maskpos/npy.hpp>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "cli_runner.hpp"

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;

namespace {

using cli_runner::fresh_dir;
using cli_runner::read_json;
using cli_runner::run;
using cli_runner::same_or_both_nan;

}  // namespace

TEST_CASE("simulate writes .npy files equal to the library called directly, and a summary") {
  const fs::path out = fresh_dir("simulate");
  const auto outcome = run("simulate --seq-len 9 --dim 16 --layers 3 --alpha 0.3 --samples 300 --seed 5 --threads 2 "
                           "--mask sliding:4 --quiet --out " + out.string());
  REQUIRE(outcome.exit_code == 0);
  maskpos::DecoderConfig config;
  config.layers = 3;
  config.mask = maskpos::Mask::sliding_window(4);
  maskpos::MonteCarloOptions options;
  options.samples = 300;
  options.seed = 5;
  options.threads = 1;  // the thread count does not change the bits
  const auto direct = maskpos::monte_carlo<float>(config, maskpos::InputSpec::gaussian(9, 16, 0.3), options);
  for (int l = 0; l < 3; ++l) {
    const std::string layer = std::to_string(l + 1);
    CHECK(same_or_both_nan(maskpos::read_npy_matrices((out / ("scores_layer" + layer + ".npy")).string()).at(0),
                           direct.mean_scores[static_cast<std::size_t>(l)]));
    CHECK(same_or_both_nan(maskpos::read_npy_matrices((out / ("probs_layer" + layer + ".npy")).string()).at(0),
                           direct.mean_probs[static_cast<std::size_t>(l)]));
    CHECK(same_or_both_nan(maskpos::read_npy_matrices((out / ("stderr_layer" + layer + ".npy")).string()).at(0),
                           direct.stderr_scores[static_cast<std::size_t>(l)]));
    CHECK(same_or_both_nan(maskpos::read_npy_matrices((out / ("normalized_layer" + layer + ".npy")).string()).at(0),
                           maskpos::diagonal_normalize(direct.mean_scores[static_cast<std::size_t>(l)])));
  }
  const auto summary = read_json(out / "summary.json");
  CHECK(summary["maskpos_version"] == maskpos::version_string);
  CHECK(summary["config"]["mask"] == "sliding:4");
  CHECK(summary["layers"].size() == 3);
  CHECK(summary["layers"][2]["non_relative_fraction"].get<double>() ==
        Approx(maskpos::non_relative_fraction(direct.mean_scores[2])));
  CHECK(summary["samples_per_second"].get<double>() > 0);
  CHECK(summary["config"]["path"] == "triangular");  // what auto takes for gaussian inputs without RoPE
  CHECK(fs::exists(out / "figure.png"));
  CHECK(fs::exists(out / "figure.svg"));
  fs::remove_all(out);
}

TEST_CASE("Fig. 1 through the command, with both methods") {
  for (const std::string method : {"monte-carlo", "mean-field"}) {
    const fs::path out = fresh_dir("fig1_" + method);
    const auto outcome = run("simulate --inputs orthonormal --seq-len 3 --dim 3 --layers 2 --samples 20 --method " + method +
                             " --precision double --quiet --no-figure --out " + out.string());
    REQUIRE(outcome.exit_code == 0);
    const auto scores = maskpos::read_npy_matrices((out / "scores_layer2.npy").string()).at(0);
    // The paper's four decimals (tests/test_decoder.cpp checks the closed form itself).
    CHECK(scores(1, 0) == Approx(0.1535).margin(5e-5));
    CHECK(scores(2, 0) == Approx(0.1321).margin(5e-5));
    CHECK(scores(2, 1) == Approx(0.1508).margin(5e-5));
    fs::remove_all(out);
  }
}

TEST_CASE("the mean-field method writes the large-width engine matrices") {
  const fs::path out = fresh_dir("mean_field");
  REQUIRE(run("simulate --method mean-field --seq-len 20 --dim 32 --layers 3 --alpha 0.5 --rope --rope-theta 500 "
              "--norm rmsnorm --score-scale sqrt-d --quiet --no-figure --out " + out.string())
              .exit_code == 0);
  maskpos::DecoderConfig config;
  config.layers = 3;
  config.norm = maskpos::Norm::RMSNorm;
  config.scale = maskpos::ScoreScale::inv_sqrt_dim();
  maskpos::RopeConfig rope;
  rope.theta = 500;
  config.rope = rope;
  const auto direct = maskpos::mean_field<double>(config, maskpos::MeanFieldInputs::alpha(20, 0.5), 32);
  for (int l = 0; l < 3; ++l) {
    const std::string layer = std::to_string(l + 1);
    CHECK(same_or_both_nan(maskpos::read_npy_matrices((out / ("scores_layer" + layer + ".npy")).string()).at(0),
                           direct.scores[static_cast<std::size_t>(l)]));
    CHECK(same_or_both_nan(maskpos::read_npy_matrices((out / ("probs_layer" + layer + ".npy")).string()).at(0),
                           direct.probs[static_cast<std::size_t>(l)]));
  }
  CHECK_FALSE(fs::exists(out / "stderr_layer1.npy"));
  CHECK(read_json(out / "summary.json")["config"]["method"] == "mean-field");
  fs::remove_all(out);
}

TEST_CASE("analyze: metrics of a Toeplitz and of a key-only score file") {
  const fs::path dir = fresh_dir("analyze_in");
  fs::create_directories(dir);
  const int S = 12;
  std::vector<Eigen::MatrixXd> stack(2, Eigen::MatrixXd(S, S));
  for (int i = 0; i < S; ++i)
    for (int j = 0; j < S; ++j) {
      stack[0](i, j) = j <= i ? std::cos(0.3 * (i - j)) : -1e9;  // a real model's masked entries: a large negative
      stack[1](i, j) = j <= i ? 0.1 * j : -INFINITY;
    }
  maskpos::write_npy((dir / "scores.npy").string(), stack);
  const fs::path out = fresh_dir("analyze_out");
  REQUIRE(run("analyze " + (dir / "scores.npy").string() + " --out " + out.string()).exit_code == 0);
  const auto metrics = read_json(out / "metrics.json");
  REQUIRE(metrics.size() == 2);
  CHECK(metrics[0]["non_relative_fraction"].get<double>() == Approx(0.0).margin(1e-20));
  CHECK(metrics[1]["non_relative_fraction"].get<double>() > 0.0);
  const auto normalized = maskpos::read_npy_matrices((out / "normalized_1.npy").string()).at(0);
  CHECK(std::isnan(normalized(0, 1)));
  CHECK(fs::exists(out / "figure.png"));
  // Redraw from the saved files.
  fs::remove(out / "figure.png");
  CHECK(run("figure " + out.string()).exit_code == 0);
  CHECK(fs::exists(out / "figure.png"));
  fs::remove_all(dir);
  fs::remove_all(out);
}

TEST_CASE("bad input: exit code 2, one line naming the option, DIR untouched") {
  const fs::path out = fresh_dir("bad");
  fs::create_directories(out);
  { std::ofstream(out / "keep.txt") << "previous result\n"; }
  const fs::path missing = fresh_dir("never_created");
  const fs::path garbage = fresh_dir("garbage.npy");
  { std::ofstream(garbage) << "this is not a numpy file"; }
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"simulate --seq-len 0", "seq_len"},
      {"simulate --dim 0", "dim"},
      {"simulate --alpha 1.5", "alpha"},
      {"simulate --seq-len abc", "--seq-len"},
      {"simulate --mask sliding:0", "mask"},
      {"simulate --mask diagonal", "mask"},
      {"simulate --norm L3", "norm"},
      {"simulate --score-scale -2", "score scale"},
      {"simulate --score-scale 1e300", "a normal float"},  // fine in double, inf in float (the default precision)
      {"simulate --threads -1", "threads"},
      {"simulate --samples 0", "samples"},
      {"simulate --inputs orthonormal --seq-len 8 --dim 4", "dim"},
      {"simulate --rope --rope-dim 3", "rotary"},
      {"simulate --method exact", "method"},
      {"simulate --precision half", "precision"},
      {"simulate --path fast", "path"},
      {"simulate --path gram --rope", "no RoPE"},
      {"simulate --path triangular --inputs orthonormal", "gaussian inputs"},
      {"simulate --no-such-option", "no-such-option"},
      {"analyze " + missing.string() + "/none.npy", "none.npy"},
      {"analyze " + garbage.string(), "garbage"},
  };
  cli_runner::check_bad_input(cases, out, missing);
  fs::remove_all(out);
  fs::remove(garbage);
}

TEST_CASE("every subcommand has --help") {
  for (const char* command : {"--help", "simulate --help", "analyze --help", "figure --help", "reproduce --help"})
    CHECK(run(command).exit_code == 0);
}

TEST_CASE("reproduce checks every run's working memory before it starts, as simulate does") {
  const fs::path out = fresh_dir("reproduce_bad");
  fs::create_directories(out);
  { std::ofstream(out / "keep.txt") << "previous result\n"; }
  const fs::path missing = fresh_dir("reproduce_never_created");
  // One run of l2norm at --threads 10^6 (B = 10^6 samples, so all 10^6 threads would start): per thread the
  // exact sums 3 L S^2 24 = 720000 bytes, the kernel 4 (4 S^2 + 6 S d) = 116800, the input buffers
  // 8 (S + 1) d = 26112; plus the results 4 L S^2 8 = 320000 once: 8.629e11 bytes = 822937 MB.
  const std::string huge = "reproduce --threads 1000000 --samples 1000000";
  cli_runner::check_bad_input({{huge, "estimated working memory 822937 MB exceeds the limit of"},
                               {"reproduce --only fig1 --samples 10 --threads 1 --max-memory 0.001", "exceeds the limit of 0 MB"},
                               {"reproduce --max-memory -1", "max-memory"},
                               {"reproduce --threads -1", "threads"},
                               {"reproduce --samples 0", "samples"},
                               {"reproduce --only fig9", "fig9"}},
                              out, missing);
  // Refused before any run starts: without --quiet every finished run prints a line, and there is none.
  const auto loud = run(huge + " --out " + out.string());
  INFO(loud.stderr_text);
  CHECK(loud.exit_code == 2);
  CHECK(std::count(loud.stderr_text.begin(), loud.stderr_text.end(), '\n') == 1);
  // The same run fits once the limit allows it (fig1: S = 3, d = 3, 2 layers; 2328 bytes on one thread).
  const fs::path good = fresh_dir("reproduce_fig1");
  REQUIRE(run("reproduce --only fig1 --samples 10 --threads 1 --max-memory 1 --quiet --out " + good.string()).exit_code == 0);
  CHECK(fs::exists(good / "index.html"));
  CHECK(fs::exists(good / "fig1" / "orthonormal" / "monte-carlo" / "summary.json"));
  fs::remove_all(out);
  fs::remove_all(good);
}

TEST_CASE("simulate --path picks the Monte Carlo path, and summary.json records the one taken") {
  const std::string common = "simulate --seq-len 7 --dim 8 --layers 2 --samples 200 --seed 3 --quiet --no-figure ";
  for (const auto& [flags, path] : std::vector<std::pair<std::string, std::string>>{
           {"", "triangular"}, {"--path direct", "direct"}, {"--path gram", "gram"}, {"--inputs orthonormal", "direct"},
           {"--rope", "direct"}, {"--path triangular --precision double", "triangular"}}) {
    const fs::path out = fresh_dir("path");
    INFO(flags);
    REQUIRE(run(common + flags + " --out " + out.string()).exit_code == 0);
    CHECK(read_json(out / "summary.json")["config"]["path"] == path);
    fs::remove_all(out);
  }
  // The direct path averages over exactly the library's tokens: the same bits as the library call.
  const fs::path out = fresh_dir("path_direct");
  REQUIRE(run(common + "--path direct --out " + out.string()).exit_code == 0);
  maskpos::DecoderConfig config;
  config.layers = 2;
  maskpos::MonteCarloOptions options;
  options.samples = 200;
  options.seed = 3;
  options.path = maskpos::MonteCarloPath::Direct;
  const auto direct = maskpos::monte_carlo<float>(config, maskpos::InputSpec::gaussian(7, 8, 0.0), options);
  CHECK(same_or_both_nan(maskpos::read_npy_matrices((out / "scores_layer2.npy").string()).at(0), direct.mean_scores[1]));
  fs::remove_all(out);
}
