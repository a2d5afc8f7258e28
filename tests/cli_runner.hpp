// Shared by the end-to-end tests of build/bin/maskpos (test_cli.cpp, test_cli_llama.cpp): run the
// executable, capture its stderr, make scratch directories, read what it wrote.
#pragma once

#include <maskpos/npy.hpp>

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace cli_runner {

namespace fs = std::filesystem;

inline const std::string& executable() {
  static const std::string path = std::string(MASKPOS_BINARY_DIR) + "/bin/maskpos";
  return path;
}

struct Outcome {
  int exit_code;
  std::string stderr_text;
};

/// Runs `maskpos <arguments>` (trusted test strings, passed through the shell), capturing stderr.
inline Outcome run(const std::string& arguments) {
  const fs::path log = fs::temp_directory_path() / ("maskpos_cli_test_" + std::to_string(::getpid()) + ".log");
  const std::string command = executable() + " " + arguments + " > /dev/null 2> " + log.string();
  const int status = std::system(command.c_str());
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(log);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

/// A path under the temporary directory, unique to this process (CTest runs cases in parallel),
/// that does not exist yet.
inline fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("maskpos_cli_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  return dir;
}

inline nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

/// Equal entries, NaN where the other is NaN (masked entries).
inline bool same_or_both_nan(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         ((a.array() == b.array()) || (a.array().isNaN() && b.array().isNaN())).all();
}

/// Runs every (arguments, needle) case against an existing DIR `out` holding only keep.txt and
/// against a DIR `missing` that does not exist: each must exit with code 2 and one stderr line that
/// contains `needle`, leave `out` as it was, not create `missing`, and leave no staging directory.
inline void check_bad_input(const std::vector<std::pair<std::string, std::string>>& cases, const fs::path& out,
                            const fs::path& missing) {
  for (const auto& [arguments, needle] : cases) {
    for (const fs::path& target : {out, missing}) {
      const auto outcome = run(arguments + " --quiet --out " + target.string());
      INFO(arguments << " -> " << outcome.stderr_text);
      CHECK(outcome.exit_code == 2);
      CHECK(outcome.stderr_text.find(needle) != std::string::npos);
      CHECK(std::count(outcome.stderr_text.begin(), outcome.stderr_text.end(), '\n') == 1);
    }
    CHECK(!fs::exists(missing));
    CHECK(std::distance(fs::directory_iterator(out), fs::directory_iterator{}) == 1);
    CHECK(fs::exists(out / "keep.txt"));
  }
  for (const auto& entry : fs::directory_iterator(fs::temp_directory_path()))
    CHECK(entry.path().filename().string().find(out.filename().string() + ".tmp") == std::string::npos);
}

}  // namespace cli_runner
