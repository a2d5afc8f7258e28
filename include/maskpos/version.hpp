/// @file version.hpp
/// @brief The one place where the maskpos version is defined (CMake reads it from here).
#pragma once

#define MASKPOS_VERSION_MAJOR 0
#define MASKPOS_VERSION_MINOR 1
#define MASKPOS_VERSION_PATCH 0

namespace maskpos {
/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
}  // namespace maskpos
