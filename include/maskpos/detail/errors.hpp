/// @file errors.hpp
/// @brief Tier-1 errors: the one way maskpos reports bad user input.
#pragma once

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

namespace maskpos::detail {

/// Formats a value for an error message (integers as integers, doubles with full precision).
template <class T>
std::string to_text(const T& value) {
  std::ostringstream out;
  out.precision(17);
  out << value;
  return out.str();
}

/// Throws std::invalid_argument of the form "maskpos: <parameter> = <value>: must satisfy <rule>".
template <class T>
[[noreturn]] void throw_invalid(const std::string& parameter, const T& value, const std::string& rule) {
  throw std::invalid_argument("maskpos: " + parameter + " = " + to_text(value) + ": must satisfy " + rule);
}

/// Throws unless `condition` holds; see throw_invalid for the message.
template <class T>
void require(bool condition, const std::string& parameter, const T& value, const std::string& rule) {
  if (!condition) throw_invalid(parameter, value, rule);
}

/// True for a finite number (neither NaN nor infinite).
inline bool is_finite(double value) { return std::isfinite(value); }

}  // namespace maskpos::detail
