#include <maskpos/safetensors.hpp>

#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>

#include "safetensors_writer.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using maskpos::SafetensorsCheckpoint;
using maskpos::SafetensorsFile;

namespace {

fs::path scratch_dir(const std::string& name) {
  const fs::path dir = fs::path(MASKPOS_BINARY_DIR) / "test_scratch" / "safetensors" / (name + "_" + std::to_string(::getpid()));  // CTest runs test cases in parallel
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// k / 256 for k in [-127, 127]: 7 significant bits and exponents in [-8, -1], so exact in F32,
// BF16 (8 significant bits) and normal F16 (11 bits, smallest normal 2^-14).
std::vector<double> exact_values(std::size_t count, int seed) {
  std::vector<double> values(count);
  for (std::size_t k = 0; k < count; ++k) {
    const long step = (static_cast<long>(k) * 37 + seed * 11) % 255 - 127;
    values[k] = static_cast<double>(step) / 256.0;
  }
  return values;
}

std::string read_error(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("F16 decoding matches the IEEE-754 binary16 definition for all 65536 bit patterns") {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const int sign = (bits >> 15) & 1, exponent = (bits >> 10) & 31, mantissa = bits & 1023;
    double expected;
    if (exponent == 0) expected = std::ldexp(mantissa / 1024.0, -14);
    else if (exponent == 31) expected = mantissa == 0 ? std::numeric_limits<double>::infinity() : std::nan("");
    else expected = std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
    if (sign) expected = -expected;
    const float decoded = maskpos::detail::f16_to_float(static_cast<std::uint16_t>(bits));
    INFO("bits " << bits);
    if (std::isnan(expected)) {
      CHECK(std::isnan(decoded));
    } else {
      // Every binary16 value is a binary32 value: the widening is exact, not approximate.
      CHECK(static_cast<double>(decoded) == expected);
      CHECK(std::signbit(decoded) == (sign == 1));
    }
  }
}

TEST_CASE("BF16 decoding gives the documented values") {
  using maskpos::detail::bf16_to_float;
  CHECK(bf16_to_float(0x3F80) == 1.0f);
  CHECK(bf16_to_float(0xC000) == -2.0f);
  CHECK(bf16_to_float(0x3E80) == 0.25f);
  CHECK(bf16_to_float(0x4049) == 3.140625f);  // 0x40490000: pi truncated to 8 significant bits
  CHECK(bf16_to_float(0x7F7F) == std::ldexp(255.0f / 128.0f, 127));  // largest finite bfloat16
  CHECK(bf16_to_float(0x0001) == std::ldexp(1.0f, -133));              // smallest subnormal
  CHECK(std::isinf(bf16_to_float(0xFF80)));
  CHECK(bf16_to_float(0xFF80) < 0);
  CHECK(std::isnan(bf16_to_float(0x7FC0)));
}

TEMPLATE_TEST_CASE("tensors of every dtype read back exactly as matrices, vectors and rows", "", float, double) {
  const fs::path dir = scratch_dir("roundtrip");
  const auto matrix_values = exact_values(3 * 5, 1);
  const auto vector_values = exact_values(7, 2);
  std::vector<testio::Tensor> tensors;
  for (const std::string dtype : {"F32", "F16", "BF16"}) {
    tensors.push_back({"matrix." + dtype, dtype, {3, 5}, matrix_values});
    tensors.push_back({"vector." + dtype, dtype, {7}, vector_values});
  }
  testio::write((dir / "model.safetensors").string(), tensors);

  const SafetensorsCheckpoint checkpoint(dir);  // a directory holding model.safetensors
  CHECK(checkpoint.names().size() == 6);
  for (const std::string dtype : {"F32", "F16", "BF16"}) {
    INFO(dtype);
    const auto matrix = checkpoint.read_matrix<TestType>("matrix." + dtype, 3, 5);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 5; ++j) CHECK(static_cast<double>(matrix(i, j)) == matrix_values[static_cast<std::size_t>(i * 5 + j)]);
    const auto vector = checkpoint.read_vector<TestType>("vector." + dtype, 7);
    for (int k = 0; k < 7; ++k) CHECK(static_cast<double>(vector(k)) == vector_values[static_cast<std::size_t>(k)]);
    const auto rows = checkpoint.read_rows<TestType>("matrix." + dtype, 3, 5, {2, 0, 2});
    REQUIRE(rows.rows() == 3);
    for (int j = 0; j < 5; ++j) {
      CHECK(static_cast<double>(rows(0, j)) == matrix_values[static_cast<std::size_t>(10 + j)]);
      CHECK(static_cast<double>(rows(1, j)) == matrix_values[static_cast<std::size_t>(j)]);
      CHECK(static_cast<double>(rows(2, j)) == matrix_values[static_cast<std::size_t>(10 + j)]);
    }
    CHECK(checkpoint.info("matrix." + dtype).dtype ==
          (dtype == "F32" ? maskpos::TensorDtype::F32 : dtype == "F16" ? maskpos::TensorDtype::F16 : maskpos::TensorDtype::BF16));
  }
  CHECK(checkpoint.files().front()->metadata().at("format") == "pt");
  CHECK_THROWS_AS(checkpoint.read_rows<TestType>("matrix.F32", 3, 5, {3}), std::invalid_argument);
}

TEST_CASE("a tensor larger than the staging buffer is read completely and in order") {
  const fs::path dir = scratch_dir("large");
  // 600 x 1024 F16 = 1.2 MB, more than one 1 MiB chunk; values k / 256 cycle through the exact set.
  const auto values = exact_values(600 * 1024, 3);
  testio::write((dir / "large.safetensors").string(), {{"big", "F16", {600, 1024}, values}});
  const SafetensorsFile file(dir / "large.safetensors");
  const auto matrix = file.read_matrix<float>("big", 600, 1024);
  std::size_t mismatches = 0;
  for (Eigen::Index i = 0; i < 600; ++i)
    for (Eigen::Index j = 0; j < 1024; ++j)
      mismatches += static_cast<double>(matrix(i, j)) != values[static_cast<std::size_t>(i * 1024 + j)];
  CHECK(mismatches == 0);
}

TEST_CASE("a sharded checkpoint is read through its index") {
  const fs::path dir = scratch_dir("sharded");
  const auto a = exact_values(6, 4), b = exact_values(4, 5);
  testio::write((dir / "model-00001-of-00002.safetensors").string(), {{"first", "BF16", {2, 3}, a}});
  testio::write((dir / "model-00002-of-00002.safetensors").string(), {{"second", "F16", {4}, b}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata": {"total_size": 20}, "weight_map": {"first": "model-00001-of-00002.safetensors",
            "second": "model-00002-of-00002.safetensors"}})";
  const SafetensorsCheckpoint checkpoint(dir);
  CHECK(checkpoint.files().size() == 2);
  const auto first = checkpoint.read_matrix<double>("first", 2, 3);
  CHECK(first(1, 2) == a[5]);
  CHECK(checkpoint.read_vector<double>("second", 4)(3) == b[3]);
  CHECK_THAT(read_error([&] { checkpoint.info("third"); }), Contains("missing tensor 'third'"));

  // The index lists a tensor that its shard does not hold.
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"first": "model-00001-of-00002.safetensors", "ghost": "model-00001-of-00002.safetensors"}})";
  CHECK_THAT(read_error([&] { SafetensorsCheckpoint broken(dir); }),
             Contains("model-00001-of-00002.safetensors") && Contains("missing tensor 'ghost'"));
  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map": {"first": "absent.safetensors"}})";
  CHECK_THAT(read_error([&] { SafetensorsCheckpoint broken(dir); }), Contains("absent.safetensors") && Contains("does not exist"));
  std::ofstream(dir / "model.safetensors.index.json") << "{\"weight_map\": ";
  CHECK_THAT(read_error([&] { SafetensorsCheckpoint broken(dir); }), Contains("model.safetensors.index.json") && Contains("not valid JSON"));
}

TEST_CASE("malformed safetensors files give errors naming the file and the problem") {
  const fs::path dir = scratch_dir("malformed");
  const std::string path = (dir / "bad.safetensors").string();
  const std::vector<unsigned char> eight_bytes(8, 0);
  auto open_error = [&] { return read_error([&] { SafetensorsFile file(path); }); };
  auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
  };

  SECTION("file shorter than the length field") {
    std::ofstream(path, std::ios::binary) << "abc";
    CHECK_THAT(open_error(), Contains(path) && Contains("too short"));
  }
  SECTION("header length beyond the end of the file") {
    const std::string header = "{" + entry("w", "F32", "[2]", "[0,8]") + "}";
    testio::write_raw(path, header.size() + 100, header, eight_bytes);
    CHECK_THAT(open_error(), Contains(path) && Contains("runs past the end of the file"));
  }
  SECTION("absurdly large header length") {
    testio::write_raw(path, std::uint64_t(1) << 40, "{}", {});
    CHECK_THAT(open_error(), Contains(path) && Contains("100 MB"));
  }
  SECTION("header that is not JSON") {
    const std::string header = "{\"w\": {\"dtype\": \"F32\",";
    testio::write_raw(path, header.size(), header, eight_bytes);
    CHECK_THAT(open_error(), Contains(path) && Contains("not valid JSON"));
  }
  SECTION("header that is JSON but not an object") {
    testio::write_raw(path, 7, "[1,2,3]", {});
    CHECK_THAT(open_error(), Contains("not a JSON object"));
  }
  SECTION("unknown dtype") {
    const std::string header = "{" + entry("w", "Q4_K", "[2]", "[0,8]") + "}";
    testio::write_raw(path, header.size(), header, eight_bytes);
    CHECK_THAT(open_error(), Contains(path) && Contains("'w'") && Contains("unsupported dtype \"Q4_K\""));
  }
  SECTION("offsets beyond the data section") {
    const std::string header = "{" + entry("w", "F32", "[4]", "[0,16]") + "}";
    testio::write_raw(path, header.size(), header, eight_bytes);
    CHECK_THAT(open_error(), Contains(path) && Contains("'w'") && Contains("run past the data section"));
  }
  SECTION("offsets whose length does not match dtype and shape") {
    const std::string header = "{" + entry("w", "F32", "[3]", "[0,8]") + "}";
    testio::write_raw(path, header.size(), header, eight_bytes);
    CHECK_THAT(open_error(), Contains("'w'") && Contains("needs 12"));
  }
  SECTION("offsets that end before they begin") {
    const std::string header = "{" + entry("w", "F32", "[0]", "[8,0]") + "}";
    testio::write_raw(path, header.size(), header, eight_bytes);
    CHECK_THAT(open_error(), Contains("end before they begin"));
  }
  SECTION("negative or non-integer offsets and shapes") {
    std::string header = "{" + entry("w", "F32", "[2]", "[-8,0]") + "}";
    testio::write_raw(path, header.size(), header, eight_bytes);
    CHECK_THAT(open_error(), Contains("data_offsets"));
    header = "{" + entry("w", "F32", "[2.5]", "[0,8]") + "}";
    testio::write_raw(path, header.size(), header, eight_bytes);
    CHECK_THAT(open_error(), Contains("shape entries"));
  }
  SECTION("overlapping tensors") {
    const std::string header = "{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F16", "[2]", "[6,10]") + "}";
    testio::write_raw(path, header.size(), header, std::vector<unsigned char>(16, 0));
    CHECK_THAT(open_error(), Contains(path) && Contains("'a'") && Contains("'b'") && Contains("overlap"));
  }
  SECTION("missing tensor and wrong shape") {
    testio::write(path, {{"w", "F32", {2, 2}, {0.5, 0.25, -1, 2}}});
    const SafetensorsFile file(path);
    CHECK_THAT(read_error([&] { file.read_matrix<double>("v", 2, 2); }), Contains(path) && Contains("missing tensor 'v'"));
    CHECK_THAT(read_error([&] { file.read_matrix<double>("w", 4, 1); }),
               Contains("'w' has shape [2, 2], expected [4, 1]"));
    CHECK(file.read_matrix<double>("w", 2, 2)(1, 0) == -1);
  }
  SECTION("a file truncated after it was opened") {
    testio::write(path, {{"w", "F32", {4}, {0.5, 0.25, -1, 2}}});
    const SafetensorsFile file(path);
    fs::resize_file(path, fs::file_size(path) - 4);
    CHECK_THAT(read_error([&] { file.read_vector<double>("w", 4); }), Contains("file ended while reading tensor 'w'"));
  }
  SECTION("a path that does not exist") {
    CHECK_THAT(read_error([&] { SafetensorsCheckpoint checkpoint(dir / "nothing.safetensors"); }), Contains("no such file"));
    CHECK_THAT(read_error([&] { SafetensorsCheckpoint checkpoint(dir); }), Contains("neither"));
  }
}
