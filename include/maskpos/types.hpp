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
