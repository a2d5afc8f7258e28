#include <maskpos/npy.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {
const double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string fixture(const std::string& name) { return std::string(MASKPOS_SOURCE_DIR) + "/tests/data/" + name; }

// A fresh, empty scratch directory under the build tree for one test case.
fs::path scratch_dir(const std::string& name) {
  const fs::path dir = fs::path(MASKPOS_BINARY_DIR) / "test_scratch" / "npy" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<std::string> directory_listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  return names;
}

std::vector<std::uint8_t> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Values equal as doubles, NaN equal to NaN.
bool same_value(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

bool same_matrix(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Eigen::Index i = 0; i < a.rows(); ++i)
    for (Eigen::Index j = 0; j < a.cols(); ++j)
      if (!same_value(a(i, j), b(i, j))) return false;
  return true;
}

// The closed forms of tests/data/make_fixtures.py, rounded to the stored element type.
double to_dtype(double v, bool float32) { return float32 ? static_cast<double>(static_cast<float>(v)) : v; }

Eigen::MatrixXd fixture_matrix(bool float32) {
  Eigen::MatrixXd a(4, 3);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) a(i, j) = j > i ? kNaN : to_dtype(10.0 * i + j + 0.25, float32);
  a(1, 0) = to_dtype(0.1, float32);
  return a;
}

std::vector<Eigen::MatrixXd> fixture_stack(bool float32) {
  std::vector<Eigen::MatrixXd> stack;
  for (int k = 0; k < 2; ++k) {
    Eigen::MatrixXd a(3, 4);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) a(i, j) = to_dtype(100.0 * k + 10.0 * i + j + 0.5, float32);
    a(0, 2) = kNaN;
    stack.push_back(a);
  }
  return stack;
}

// A .npy file assembled by hand: magic, version, header length (as given), header text, data.
std::vector<std::uint8_t> handmade(const std::string& header, std::size_t data_bytes, int major = 1,
                                   std::int64_t declared_length = -1) {
  const std::uint64_t length = declared_length >= 0 ? static_cast<std::uint64_t>(declared_length) : header.size();
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  // Sized once and filled by index (GCC 12 reports a false -Wstringop-overflow for vector::insert here).
  std::vector<std::uint8_t> bytes(8 + length_bytes + header.size() + data_bytes, 0);
  const char magic[] = "\x93NUMPY";
  for (std::size_t b = 0; b < 6; ++b) bytes[b] = static_cast<std::uint8_t>(magic[b]);
  bytes[6] = static_cast<std::uint8_t>(major);
  for (std::size_t b = 0; b < length_bytes; ++b) bytes[8 + b] = static_cast<std::uint8_t>(length >> (8 * b));
  for (std::size_t c = 0; c < header.size(); ++c) bytes[8 + length_bytes + c] = static_cast<std::uint8_t>(header[c]);
  return bytes;
}

std::string dict(const std::string& descr, const std::string& order, const std::string& shape) {
  return "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': " + shape + ", }\n";
}

// The std::runtime_error message parse_npy raises for `bytes`, "" when it does not throw.
// Any other exception type fails the test.
std::string parse_error(const std::vector<std::uint8_t>& bytes, const std::string& name = "bad.npy") {
  try {
    maskpos::parse_npy(bytes.data(), bytes.size(), name);
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "";
}
}  // namespace

TEST_CASE("npy: round trip of matrices, stacks and vectors in float64 and float32, NaN included") {
  const fs::path dir = scratch_dir("round_trip");
  Eigen::MatrixXd m(3, 5);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) m(i, j) = std::ldexp(1.0 + 0.1 * i, j - 2) * (j % 2 ? -1 : 1);
  m(0, 4) = kNaN;
  m(2, 1) = std::numeric_limits<double>::infinity();
  m(1, 3) = std::numeric_limits<double>::denorm_min();

  SECTION("float64 is exact") {
    const std::string path = (dir / "m.npy").string();
    maskpos::write_npy(path, m);
    const auto array = maskpos::read_npy(path);
    CHECK(array.shape == std::vector<std::size_t>{3, 5});
    CHECK(array.dtype == maskpos::NpyDtype::Float64);
    CHECK_FALSE(array.fortran_order);
    const auto back = maskpos::read_npy_matrices(path);
    REQUIRE(back.size() == 1);
    CHECK(same_matrix(back[0], m));
  }
  SECTION("float32 rounds each value to the nearest float, keeps NaN and infinity") {
    const std::string path = (dir / "m32.npy").string();
    maskpos::write_npy(path, m, maskpos::NpyDtype::Float32);
    const auto back = maskpos::read_npy_matrices(path);
    REQUIRE(back.size() == 1);
    Eigen::MatrixXd expected = m;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 5; ++j) expected(i, j) = static_cast<double>(static_cast<float>(m(i, j)));
    CHECK(same_matrix(back[0], expected));
    CHECK(maskpos::read_npy(path).dtype == maskpos::NpyDtype::Float32);
  }
  SECTION("3-D stacks") {
    const std::vector<Eigen::MatrixXd> stack = {m, 2 * m, -m, m.array() + 1.0};
    for (auto dtype : {maskpos::NpyDtype::Float64, maskpos::NpyDtype::Float32}) {
      const std::string path = (dir / "stack.npy").string();
      maskpos::write_npy(path, stack, dtype);
      CHECK(maskpos::read_npy(path).shape == std::vector<std::size_t>{4, 3, 5});
      const auto back = maskpos::read_npy_matrices(path);
      REQUIRE(back.size() == 4);
      for (std::size_t k = 0; k < 4; ++k) {
        Eigen::MatrixXd expected = stack[k];
        if (dtype == maskpos::NpyDtype::Float32) expected = expected.cast<float>().cast<double>();
        CHECK(same_matrix(back[k], expected));
      }
    }
  }
  SECTION("1-D vectors; an Eigen vector is a one-column matrix") {
    const std::string path = (dir / "v.npy").string();
    maskpos::write_npy(path, std::vector<double>{1.5, kNaN, -3.0});
    auto array = maskpos::read_npy(path);
    CHECK(array.shape == std::vector<std::size_t>{3});
    REQUIRE(array.data.size() == 3);
    CHECK(array.data[0] == 1.5);
    CHECK(std::isnan(array.data[1]));
    CHECK(array.data[2] == -3.0);
    Eigen::VectorXd v(2);
    v << 0.25, -0.5;
    maskpos::write_npy(path, v);
    array = maskpos::read_npy(path);
    CHECK(array.shape == std::vector<std::size_t>{2, 1});
    CHECK(array.data == std::vector<double>{0.25, -0.5});
    maskpos::write_npy(path, std::vector<double>(v.begin(), v.end()));
    array = maskpos::read_npy(path);
    CHECK(array.shape == std::vector<std::size_t>{2});
    CHECK(array.data == std::vector<double>{0.25, -0.5});
  }
  SECTION("empty matrices") {
    const std::string path = (dir / "empty.npy").string();
    maskpos::write_npy(path, Eigen::MatrixXd(0, 3));
    const auto back = maskpos::read_npy_matrices(path);
    REQUIRE(back.size() == 1);
    CHECK(back[0].rows() == 0);
    CHECK(back[0].cols() == 3);
  }
  SECTION("a stack of matrices of different sizes is a precondition violation") {
    const std::string path = (dir / "ragged.npy").string();
    CHECK_THROWS_AS(maskpos::write_npy(path, std::vector<Eigen::MatrixXd>{m, m.transpose()}), std::invalid_argument);
    CHECK_FALSE(fs::exists(path));
  }
}

TEST_CASE("npy: files written by numpy.save are read correctly (C and Fortran order, 2-D and 3-D)") {
  for (const bool float32 : {false, true}) {
    const std::string tag = float32 ? "f4" : "f8";
    for (const std::string order : {"c", "fortran"}) {
      INFO(tag << " " << order);
      const auto matrix = maskpos::read_npy(fixture("matrix_" + tag + "_" + order + ".npy"));
      CHECK(matrix.shape == std::vector<std::size_t>{4, 3});
      CHECK(matrix.fortran_order == (order == "fortran"));
      CHECK(matrix.dtype == (float32 ? maskpos::NpyDtype::Float32 : maskpos::NpyDtype::Float64));
      const auto matrices = maskpos::npy_to_matrices(matrix);
      REQUIRE(matrices.size() == 1);
      CHECK(same_matrix(matrices[0], fixture_matrix(float32)));

      const auto stack = maskpos::read_npy_matrices(fixture("stack_" + tag + "_" + order + ".npy"));
      const auto expected = fixture_stack(float32);
      REQUIRE(stack.size() == expected.size());
      for (std::size_t k = 0; k < stack.size(); ++k) CHECK(same_matrix(stack[k], expected[k]));
    }
  }
  const auto vector = maskpos::read_npy(fixture("vector_f8.npy"));
  REQUIRE(vector.shape == std::vector<std::size_t>{5});
  CHECK(vector.data[0] == -1.5);
  CHECK(std::isnan(vector.data[2]));
  CHECK(vector.data[4] == 2.5);
  CHECK_THROWS_WITH(maskpos::read_npy_matrices(fixture("vector_f8.npy")),
                    Catch::Contains("vector_f8.npy") && Catch::Contains("expected a 2-D or 3-D array"));
}

TEST_CASE("npy: the writer produces the same bytes as numpy.save") {
  // numpy.save pads the header to a multiple of 64 bytes, writes version 1.0 and C order: our bytes
  // must equal the fixtures byte for byte.
  CHECK(maskpos::encode_npy(fixture_matrix(false)) == file_bytes(fixture("matrix_f8_c.npy")));
  CHECK(maskpos::encode_npy(fixture_matrix(false), maskpos::NpyDtype::Float32) == file_bytes(fixture("matrix_f4_c.npy")));
  CHECK(maskpos::encode_npy(fixture_stack(false)) == file_bytes(fixture("stack_f8_c.npy")));
  CHECK(maskpos::encode_npy(fixture_stack(false), maskpos::NpyDtype::Float32) == file_bytes(fixture("stack_f4_c.npy")));
}

TEST_CASE("npy: other header spellings NumPy accepts are read") {
  // Double quotes, no trailing comma, extra spaces, keys in another order, version 2.0 and 3.0.
  const std::string header = "{\"shape\" : ( 2 , 1 ) , \"fortran_order\":False,\"descr\":\"<f8\"}";
  for (int major : {1, 2, 3}) {
    auto bytes = handmade(header, 16, major);
    const auto array = maskpos::parse_npy(bytes.data(), bytes.size(), "x.npy");
    CHECK(array.shape == std::vector<std::size_t>{2, 1});
  }
  auto scalar = handmade(dict("<f8", "False", "()"), 8);
  CHECK(maskpos::parse_npy(scalar.data(), scalar.size(), "x.npy").data.size() == 1);
  auto zero = handmade(dict("<f4", "True", "(0, 7)"), 0);
  CHECK(maskpos::parse_npy(zero.data(), zero.size(), "x.npy").data.empty());
}

TEST_CASE("npy: malformed files raise std::runtime_error naming the file and the problem") {
  const auto valid = handmade(dict("<f8", "False", "(2, 2)"), 32);
  REQUIRE(parse_error(valid).empty());

  auto bad_magic = valid;
  bad_magic[3] = 'X';
  CHECK_THAT(parse_error(bad_magic), Catch::Contains("bad.npy") && Catch::Contains("bad magic"));
  CHECK_THAT(parse_error({}), Catch::Contains("bad magic"));
  CHECK_THAT(parse_error({0x93, 'N', 'U', 'M', 'P', 'Y', 1}), Catch::Contains("truncated preamble"));
  CHECK_THAT(parse_error({0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 5}), Catch::Contains("truncated preamble"));

  auto version = valid;
  version[6] = 4;
  CHECK_THAT(parse_error(version), Catch::Contains("unsupported format version 4.0"));
  version[6] = 1;
  version[7] = 1;
  CHECK_THAT(parse_error(version), Catch::Contains("unsupported format version 1.1"));

  CHECK_THAT(parse_error(handmade(dict("<i4", "False", "(2, 2)"), 16)), Catch::Contains("unsupported dtype '<i4'"));
  CHECK_THAT(parse_error(handmade(dict("<f2", "False", "(2, 2)"), 8)), Catch::Contains("unsupported dtype '<f2'"));
  CHECK_THAT(parse_error(handmade(dict(">f8", "False", "(2, 2)"), 32)), Catch::Contains("big-endian"));
  CHECK_THAT(parse_error(handmade(dict("|O", "False", "(2, 2)"), 32)), Catch::Contains("object dtype"));
  CHECK_THAT(parse_error(handmade("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,), }", 16)),
             Catch::Contains("structured"));

  CHECK_THAT(parse_error(handmade(dict("<f8", "False", "(2, 2)"), 31)),
             Catch::Contains("truncated data") && Catch::Contains("32 bytes, 31 present"));
  CHECK_THAT(parse_error(handmade(dict("<f8", "False", "(2, 2)"), 40)), Catch::Contains("size mismatch"));
  CHECK_THAT(parse_error(handmade(dict("<f8", "False", "(3, 2)"), 32)), Catch::Contains("truncated data"));
  CHECK_THAT(parse_error(handmade(dict("<f8", "False", "(4294967296, 4294967296)"), 32)),
             Catch::Contains("too large"));
  CHECK_THAT(parse_error(handmade(dict("<f8", "False", "(99999999999999999999999, 2)"), 32)),
             Catch::Contains("dimension too large"));

  CHECK_THAT(parse_error(handmade(dict("<f8", "False", "(2, 2)"), 32, 2, 0xFFFFFFFFll)),
             Catch::Contains("absurd header length 4294967295"));
  CHECK_THAT(parse_error(handmade(dict("<f8", "False", "(2, 2)"), 0, 1, 9000)), Catch::Contains("truncated header"));

  // Bad dict syntax, each a different way.
  const std::vector<std::pair<std::string, std::string>> bad_dicts = {
      {"['descr', '<f8']", "must start with '{'"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2)", "expected ',' or '}'"},
      {"{'descr' '<f8', 'fortran_order': False, 'shape': (2, 2)}", "expected ':'"},
      {"{'descr': '<f8, 'fortran_order': False, 'shape': (2, 2)}", "expected ',' or '}'"},
      {"{'descr': '<f8', 'fortran_order': 0, 'shape': (2, 2)}", "True or False"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': [2, 2]}", "must be a tuple"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, -2)}", "non-negative integer"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (4)}", "(n,)"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2 2)}", "expected ',' or ')'"},
      {"{'descr': '<f8', 'fortran_order': False}", "missing key 'shape'"},
      {"{'descr': '<f8', 'shape': (2, 2)}", "missing key 'fortran_order'"},
      {"{'fortran_order': False, 'shape': (2, 2)}", "missing key 'descr'"},
      {"{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (2, 2)}", "duplicate key 'descr'"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), 'extra': 1}", "unexpected key 'extra'"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2)} junk", "after the closing '}'"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), 'descr", "unterminated string"},
      {std::string("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2)}") + '\0', "NUL"},
  };
  for (const auto& [header, problem] : bad_dicts) {
    INFO(header);
    const std::string message = parse_error(handmade(header, 32));
    CHECK_THAT(message, Catch::Contains("bad.npy") && Catch::Contains(problem));
  }
  std::string shape = "(";
  for (int k = 0; k < 33; ++k) shape += "1, ";
  shape += ")";
  CHECK_THAT(parse_error(handmade(dict("<f8", "False", shape), 8)), Catch::Contains("more than 32 dimensions"));
}

TEST_CASE("npy: read_npy names the path; every prefix and random corruption of a file fails cleanly") {
  const fs::path dir = scratch_dir("corrupt");
  const std::string missing = (dir / "missing.npy").string();
  CHECK_THROWS_WITH(maskpos::read_npy(missing), Catch::Contains(missing) && Catch::Contains("cannot open"));
  CHECK_THROWS_WITH(maskpos::read_npy(dir.string()), Catch::Contains(dir.string()) && Catch::Contains("is a directory"));

  const auto bytes = file_bytes(fixture("stack_f4_fortran.npy"));
  REQUIRE(bytes.size() > 128);
  // Every strict prefix is malformed; parse_npy must throw, never read past the end (run under ASan to
  // check the latter).
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const std::vector<std::uint8_t> prefix(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    INFO("prefix of " << n << " bytes");
    CHECK_FALSE(parse_error(prefix).empty());
  }
  // Random byte corruption (fixed seed): either a valid parse or a std::runtime_error, nothing else.
  std::mt19937 rng(12345);
  for (int trial = 0; trial < 2000; ++trial) {
    auto corrupted = bytes;
    const int flips = 1 + trial % 4;
    for (int f = 0; f < flips; ++f)
      corrupted[rng() % 128] = static_cast<std::uint8_t>(rng());  // within the preamble and header
    CHECK_NOTHROW(parse_error(corrupted));
  }
}

TEST_CASE("npy: writes are atomic: no temporary left behind, failures leave nothing") {
  const fs::path dir = scratch_dir("atomic");
  const Eigen::MatrixXd m = Eigen::MatrixXd::Identity(3, 3);

  const std::string path = (dir / "ok.npy").string();
  maskpos::write_npy(path, m);
  maskpos::write_npy(path, 2 * m);  // overwrite an existing file
  CHECK(directory_listing(dir) == std::vector<std::string>{"ok.npy"});
  CHECK(same_matrix(maskpos::read_npy_matrices(path)[0], 2 * m));

  const std::string no_dir = (dir / "no_such_dir" / "x.npy").string();
  CHECK_THROWS_WITH(maskpos::write_npy(no_dir, m), Catch::Contains(no_dir) && Catch::Contains("temporary file"));
  CHECK_FALSE(fs::exists(dir / "no_such_dir"));

  // The rename onto an existing directory fails after the temporary was written: it must be removed.
  fs::create_directory(dir / "occupied");
  const std::string occupied = (dir / "occupied").string();
  CHECK_THROWS_AS(maskpos::write_npy(occupied, m), std::runtime_error);
  auto listing = directory_listing(dir);
  std::sort(listing.begin(), listing.end());
  CHECK(listing == std::vector<std::string>{"occupied", "ok.npy"});
  CHECK(fs::is_empty(dir / "occupied"));
}
