/// @file csv.hpp
/// @brief Matrices as comma-separated values for spreadsheets: one matrix row per line.
///
/// Format: values separated by ',', lines ended by '\n', no header line, no quoting. Each finite value
/// is written in the shortest decimal form that reads back to the same double (std::to_chars), e.g.
/// "0.1535", "-2", "1e-300". **A NaN (a masked entry) is written as an empty cell**, so spreadsheets show
/// the masked triangle blank and ignore it in sums and averages; +/-infinity is written "inf" / "-inf".
/// The file is written atomically (temporary file + rename); failures throw std::runtime_error naming
/// the file.
///
/// Thread-safety: reentrant.
#pragma once

#include <Eigen/Core>

#include <charconv>
#include <cmath>
#include <string>
#include <system_error>
#include <vector>

#include "detail/atomic_file.hpp"
#include "types.hpp"

namespace maskpos {

/// One CSV cell for `value` (see the file comment: empty for NaN, "inf"/"-inf", else shortest
/// round-trip decimal).
inline std::string csv_cell(double value) {
  if (std::isnan(value)) return {};
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  // 64 characters hold any double's shortest representation (at most 24), so this cannot fail.
  return std::string(buffer, result.ec == std::errc() ? result.ptr : buffer);
}

/// The CSV text of `matrix`: rows() lines of cols() cells.
inline std::string csv_text(const Matrix<double>& matrix) {
  std::string text;
  for (Index i = 0; i < matrix.rows(); ++i) {
    for (Index j = 0; j < matrix.cols(); ++j) {
      if (j > 0) text.push_back(',');
      text += csv_cell(matrix(i, j));
    }
    text.push_back('\n');
  }
  return text;
}

/// Writes `matrix` to `path` as CSV (format in the file comment). The file appears complete or not at
/// all. Throws std::runtime_error naming the file when it cannot be written.
inline void write_csv(const std::string& path, const Matrix<double>& matrix) {
  detail::write_file_atomically(path, csv_text(matrix));
}

}  // namespace maskpos
