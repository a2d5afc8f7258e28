#include <maskpos/csv.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

namespace {
const double kNaN = std::numeric_limits<double>::quiet_NaN();

fs::path scratch_dir(const std::string& name) {
  const fs::path dir = fs::path(MASKPOS_BINARY_DIR) / "test_scratch" / "csv" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string file_text(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}
}  // namespace

TEST_CASE("csv: layout, NaN as an empty cell, infinities, shortest round-trip decimals") {
  Eigen::MatrixXd m(2, 3);
  m << 1, kNaN, 0.5, -std::numeric_limits<double>::infinity(), 0.1535, 1e-300;
  CHECK(maskpos::csv_text(m) == "1,,0.5\n-inf,0.1535,1e-300\n");
  CHECK(maskpos::csv_text(Eigen::MatrixXd(0, 0)).empty());
}

TEST_CASE("csv: every written value reads back to the same double") {
  Eigen::MatrixXd m(4, 4);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) m(i, j) = std::sin(1.0 + i * 7.0 + j) * std::pow(10.0, 3 * (i - j));
  std::istringstream lines(maskpos::csv_text(m));
  std::string line;
  for (int i = 0; i < 4; ++i) {
    REQUIRE(std::getline(lines, line));
    std::istringstream cells(line);
    std::string cell;
    for (int j = 0; j < 4; ++j) {
      REQUIRE(std::getline(cells, cell, ','));
      CHECK(std::strtod(cell.c_str(), nullptr) == m(i, j));
    }
  }
}

TEST_CASE("csv: write_csv writes atomically and names the file on failure") {
  const fs::path dir = scratch_dir("write");
  Eigen::MatrixXd m = Eigen::MatrixXd::Identity(2, 2);
  m(0, 1) = kNaN;
  maskpos::write_csv((dir / "m.csv").string(), m);
  CHECK(file_text(dir / "m.csv") == "1,\n0,1\n");
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);  // no temporary left

  const std::string bad = (dir / "missing" / "m.csv").string();
  CHECK_THROWS_WITH(maskpos::write_csv(bad, m), Catch::Contains(bad));
  CHECK_THROWS_AS(maskpos::write_csv(bad, m), std::runtime_error);
}
