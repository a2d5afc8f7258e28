// libFuzzer target: the .npy reader (maskpos::parse_npy) on arbitrary bytes.
//
// Contract checked: malformed input throws std::runtime_error (anything else escaping, a crash or a
// sanitizer report is a bug); a file that parses converts to matrices when it is 2-D or 3-D, and a
// matrix written back with encode_npy in the file's dtype parses to the same values.
#include <maskpos/npy.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace {
bool same_value(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  maskpos::NpyArray array;
  try {
    array = maskpos::parse_npy(data, size, "fuzz.npy");
  } catch (const std::runtime_error&) {
    return 0;  // malformed: the documented outcome
  }
  // A parsed array holds exactly product(shape) values.
  std::size_t count = 1;
  for (std::size_t n : array.shape) count *= n;
  if (array.data.size() != count) std::abort();
  if (array.ndim() != 2 && array.ndim() != 3) return 0;

  std::vector<maskpos::Matrix<double>> matrices;
  try {
    matrices = maskpos::npy_to_matrices(array, "fuzz.npy");
  } catch (const std::runtime_error&) {
    return 0;
  }
  if (matrices.empty()) return 0;
  // Round trip through the writer: same shape, same values (NaN payloads may change).
  const std::vector<std::uint8_t> bytes = maskpos::encode_npy(matrices, array.dtype);
  const maskpos::NpyArray back = maskpos::parse_npy(bytes.data(), bytes.size(), "round-trip.npy");
  std::vector<std::size_t> expected_shape = array.shape;
  if (array.ndim() == 2) expected_shape.insert(expected_shape.begin(), 1);
  if (back.shape != expected_shape || back.data.size() != array.data.size()) std::abort();
  for (std::size_t k = 0; k < back.data.size(); ++k)
    if (!same_value(back.data[k], array.data[k])) std::abort();
  return 0;
}
