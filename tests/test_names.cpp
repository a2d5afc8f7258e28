#include <maskpos/names.hpp>

#include <catch2/catch.hpp>

TEST_CASE("mask names round-trip and bad spellings are rejected") {
  for (const char* name : {"causal", "bidirectional", "sliding:1", "sliding:7", "prefix:0", "prefix:12"})
    CHECK(maskpos::parse_mask(name).name() == name);
  CHECK(maskpos::parse_mask("sliding:7").visible(10, 4));
  CHECK_FALSE(maskpos::parse_mask("sliding:7").visible(10, 3));
  for (const char* bad : {"", "causal ", "sliding:", "sliding:0", "sliding:-2", "prefix:-1", "prefix:x", "window:3"})
    CHECK_THROWS_WITH(maskpos::parse_mask(bad), Catch::Contains("mask") && Catch::Contains("sliding:W"));
}

TEST_CASE("norm, score scale and input names round-trip") {
  for (const char* name : {"l2", "layernorm", "rmsnorm", "none"}) CHECK(maskpos::to_string(maskpos::parse_norm(name)) == name);
  CHECK_THROWS_WITH(maskpos::parse_norm("L2"), Catch::Contains("norm"));
  CHECK(maskpos::parse_score_scale("sqrt-d").factor(64) == 0.125);
  CHECK(maskpos::parse_score_scale("d").factor(64) == 1.0 / 64);
  CHECK(maskpos::parse_score_scale("1").factor(64) == 1.0);
  CHECK(maskpos::parse_score_scale("0.25").factor(64) == 0.25);
  for (const char* bad : {"0", "-1", "nan", "inf", "sqrt", "1x"})
    CHECK_THROWS_WITH(maskpos::parse_score_scale(bad), Catch::Contains("score scale"));
  CHECK(maskpos::parse_input_kind("orthonormal") == maskpos::InputKind::Orthonormal);
  CHECK_THROWS_WITH(maskpos::parse_input_kind("user"), Catch::Contains("inputs"));
}

TEST_CASE("Monte Carlo path names round-trip") {
  for (const char* name : {"auto", "direct", "gram", "triangular"})
    CHECK(maskpos::to_string(maskpos::parse_monte_carlo_path(name)) == name);
  CHECK_THROWS_WITH(maskpos::parse_monte_carlo_path("Direct"), Catch::Contains("path") && Catch::Contains("triangular"));
}
