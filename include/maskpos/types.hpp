/// @file types.hpp
/// @brief The Eigen types maskpos passes around, and the scalar-type check every template makes.
#pragma once

#include <Eigen/Core>

#include <type_traits>

namespace maskpos {

using Index = Eigen::Index;

/// Dense matrix over Scalar: tokens are rows (S x d), score matrices are S x S (query row, key column).
template <class Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// The shape of token rows written in a sequence's own triangular frame (see
/// InputGenerator::generate_triangular_into): `width` columns, and row i zero from column
/// support(i) = min(i + 1 + lead, width) on. Gram-Schmidt of the sequence's vectors, taken in order,
/// gives such rows: token i lies in the span of the first i + 1 + lead of them.
struct TriangularFrame {
  Index width = 1;  ///< columns of the frame, >= 1
  Index lead = 0;   ///< vectors of the frame that come before token 0 (the shared direction c: 1)

  /// The number of leading columns of row i that can be non-zero.
  Index support(Index row) const { return row + 1 + lead < width ? row + 1 + lead : width; }
};

namespace detail {
template <class Scalar>
constexpr void check_scalar() {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "maskpos: the scalar type must be float or double");
}

/// "float" or "double", for error messages.
template <class Scalar>
constexpr const char* scalar_name() {
  check_scalar<Scalar>();
  return std::is_same_v<Scalar, float> ? "float" : "double";
}
}  // namespace detail

}  // namespace maskpos
