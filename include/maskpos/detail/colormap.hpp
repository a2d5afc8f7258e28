/// @file colormap.hpp
/// @brief Private colour tables and colour-limit helpers for maskpos/figure.hpp (no cairo needed).
///
/// The sequential maps are sampled from published lookup tables of 256 sRGB entries each: every 8th
/// entry (0, 8, ..., 248), the last one (255) and entry 4, 34 anchors, interpolated linearly in
/// between. Linear interpolation over a spacing of h entries misses a skipped entry by about
/// h^2/8 * |f''|; the curvature is largest at the dark end, hence the extra anchor at entry 4 (without
/// it magma's blue channel misses entry 4 by 1.05 8-bit units). tests/test_figure.cpp checks entries
/// between anchors across the range to within one 8-bit unit (the largest miss there is 0.66 units).
/// - rocket: seaborn's `_rocket_lut` (seaborn/cm.py, BSD-3-Clause, Michael Waskom), the colormap of
///   every heatmap in the paper.
/// - magma: matplotlib's `_magma_data` (matplotlib/_cm_listed.py; the viridis-family maps by
///   Nathaniel J. Smith and Stefan van der Walt, CC0).
/// Thread-safety: every function here is pure; the tables are constants.
#pragma once

#include "errors.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace maskpos::detail {

/// One table anchor: position in the 256-entry source table, then sRGB in [0, 1].
struct ColourAnchor {
  double index;
  double red, green, blue;
};

// clang-format off
inline constexpr std::array<ColourAnchor, 34> rocket_anchors{{
  {  0, 0.01060815, 0.01808215, 0.10018654}, {  4, 0.02759119, 0.02818316, 0.11483751},
  {  8, 0.05032105, 0.03936808, 0.13020508},
  { 16, 0.09572396, 0.06050127, 0.16200507}, { 24, 0.14066867, 0.07782240, 0.19452676},
  { 32, 0.18643324, 0.09165431, 0.22699705}, { 40, 0.23334047, 0.10263737, 0.25697736},
  { 48, 0.28144375, 0.11104133, 0.28354890}, { 56, 0.33067031, 0.11701189, 0.30632563},
  { 64, 0.38092887, 0.12061482, 0.32506528}, { 72, 0.43214263, 0.12179973, 0.33966284},
  { 80, 0.48426077, 0.12036349, 0.35010104}, { 88, 0.53726173, 0.11587369, 0.35642903},
  { 96, 0.59096382, 0.10810205, 0.35847347}, {104, 0.64483795, 0.09808910, 0.35533555},
  {112, 0.69803757, 0.08897226, 0.34629860}, {120, 0.74919318, 0.08820542, 0.33107204},
  {128, 0.79650140, 0.10506637, 0.31063031}, {136, 0.83850183, 0.14025098, 0.28768780},
  {144, 0.87507281, 0.18587368, 0.26529697}, {152, 0.90530097, 0.23854541, 0.24748098},
  {160, 0.92676657, 0.29823282, 0.24285536}, {168, 0.94036561, 0.36020899, 0.25734661},
  {176, 0.94914549, 0.42038251, 0.28780969}, {184, 0.95510255, 0.47787236, 0.32862553},
  {192, 0.95922872, 0.53307513, 0.37488950}, {200, 0.96201757, 0.58647675, 0.42491751},
  {208, 0.96372785, 0.63843852, 0.47905028}, {216, 0.96479861, 0.68910113, 0.53756026},
  {224, 0.96592829, 0.73844258, 0.60053991}, {232, 0.96810471, 0.78634563, 0.66773889},
  {240, 0.97169389, 0.83320847, 0.73716071}, {248, 0.97628674, 0.87986189, 0.80578830},
  {255, 0.98137749, 0.92061729, 0.86536915},
}};

inline constexpr std::array<ColourAnchor, 34> magma_anchors{{
  {  0, 0.001462, 0.000466, 0.013866}, {  4, 0.005950, 0.004843, 0.037130},
  {  8, 0.013708, 0.011771, 0.068667},
  { 16, 0.039608, 0.031090, 0.133515}, { 24, 0.074257, 0.052017, 0.202660},
  { 32, 0.113094, 0.065492, 0.276784}, { 40, 0.159018, 0.068354, 0.352688},
  { 48, 0.211718, 0.061992, 0.418647}, { 56, 0.265447, 0.060237, 0.461840},
  { 64, 0.316654, 0.071690, 0.485380}, { 72, 0.366012, 0.090314, 0.497960},
  { 80, 0.414709, 0.110431, 0.504662}, { 88, 0.463508, 0.129893, 0.507652},
  { 96, 0.512831, 0.148179, 0.507648}, {104, 0.562866, 0.165368, 0.504692},
  {112, 0.613617, 0.181811, 0.498536}, {120, 0.664915, 0.198075, 0.488836},
  {128, 0.716387, 0.214982, 0.475290}, {136, 0.767398, 0.233705, 0.457755},
  {144, 0.816914, 0.255895, 0.436461}, {152, 0.863320, 0.283729, 0.412403},
  {160, 0.904281, 0.319610, 0.388137}, {168, 0.937221, 0.364929, 0.368567},
  {176, 0.960949, 0.418323, 0.359630}, {184, 0.976690, 0.476226, 0.364466},
  {192, 0.986700, 0.535582, 0.382210}, {200, 0.992785, 0.594891, 0.410283},
  {208, 0.996096, 0.653659, 0.446213}, {216, 0.997325, 0.711848, 0.488154},
  {224, 0.996898, 0.769591, 0.534892}, {232, 0.995131, 0.827052, 0.585701},
  {240, 0.992440, 0.884330, 0.640099}, {248, 0.989434, 0.941470, 0.697519},
  {255, 0.987053, 0.991438, 0.749504},
}};

/// A simple diverging map, piecewise linear in sRGB through three anchors: the end colours of
/// Moreland's "cool to warm" map (59, 76, 192) and (180, 4, 38), with white in the middle. Meant for
/// signed panels with limits symmetric about zero.
inline constexpr std::array<ColourAnchor, 3> blue_white_red_anchors{{
  {  0, 59.0 / 255.0, 76.0 / 255.0, 192.0 / 255.0},
  {127.5, 1.0, 1.0, 1.0},
  {255, 180.0 / 255.0, 4.0 / 255.0, 38.0 / 255.0},
}};
// clang-format on

/// sRGB colour with channels in [0, 1].
using Rgb = std::array<double, 3>;

/// Interpolates an anchor table at t in [0, 1] (clamped); t = 0 is entry 0 and t = 1 entry 255.
template <std::size_t N>
Rgb interpolate_anchors(const std::array<ColourAnchor, N>& anchors, double t) {
  const double position = std::clamp(t, 0.0, 1.0) * anchors.back().index;
  std::size_t upper = 1;
  while (upper + 1 < N && anchors[upper].index < position) ++upper;
  const ColourAnchor& a = anchors[upper - 1];
  const ColourAnchor& b = anchors[upper];
  const double w = std::clamp((position - a.index) / (b.index - a.index), 0.0, 1.0);
  return {a.red + w * (b.red - a.red), a.green + w * (b.green - a.green), a.blue + w * (b.blue - a.blue)};
}

/// Tick positions for the range [low, high]: multiples of the smallest "nice" step (1, 2, 2.5 or 5
/// times a power of ten) that puts at most `max_ticks` ticks inside the range, like matplotlib's
/// MaxNLocator.
/// \pre low < high, both finite; max_ticks >= 2.
/// \return the ticks inside [low, high] (a tolerance of 1e-9 step admits ends hit up to rounding),
///         and the step.
inline std::pair<std::vector<double>, double> nice_ticks(double low, double high, int max_ticks) {
  const double span = high - low;
  // The answer lies between span / max_ticks and span (two ticks at most one span apart); search the
  // nice steps of the decade below span / max_ticks upwards.
  const double magnitude = std::pow(10.0, std::floor(std::log10(span / static_cast<double>(max_ticks))));
  double step = 10.0 * magnitude;
  const auto count = [&](double candidate) {
    return std::floor(high / candidate + 1e-9) - std::ceil(low / candidate - 1e-9) + 1.0;
  };
  bool found = false;
  for (const double decade : {1.0, 10.0, 100.0}) {
    for (const double mantissa : {1.0, 2.0, 2.5, 5.0}) {
      const double candidate = mantissa * decade * magnitude;
      if (count(candidate) <= static_cast<double>(max_ticks)) {
        step = candidate;
        found = true;
        break;
      }
    }
    if (found) break;
  }
  std::vector<double> ticks;
  const double first = std::ceil(low / step - 1e-9);
  const double last = std::floor(high / step + 1e-9);
  for (double k = first; k <= last; k += 1.0) {
    const double tick = k * step;
    ticks.push_back(std::fabs(tick) < 1e-9 * step ? 0.0 : tick);
  }
  return {ticks, step};
}

/// Formats colour-bar tick labels: fixed notation with as many decimals as the step needs (0.25 ->
/// two), scientific notation when the ticks are tiny or huge; a true minus sign (U+2212) as in
/// matplotlib.
inline std::vector<std::string> tick_labels(const std::vector<double>& ticks, double step) {
  double largest = 0.0;
  for (const double tick : ticks) largest = std::max(largest, std::fabs(tick));
  const bool scientific = largest >= 1e5 || (largest > 0.0 && largest < 1e-3);
  int decimals = 0;
  if (!scientific) {
    // Smallest number of decimals that prints the step exactly (to 1e-6 relative).
    while (decimals < 8) {
      const double scaled = step * std::pow(10.0, decimals);
      if (std::fabs(scaled - std::round(scaled)) < 1e-6 * std::max(1.0, scaled)) break;
      ++decimals;
    }
  }
  std::vector<std::string> labels;
  for (const double tick : ticks) {
    char buffer[64];
    if (scientific) {
      std::snprintf(buffer, sizeof buffer, "%.1e", tick);
    } else {
      std::snprintf(buffer, sizeof buffer, "%.*f", decimals, tick);
    }
    std::string text = buffer;
    if (!text.empty() && text.front() == '-') {
      text = (std::fabs(tick) == 0.0 || text.find_first_not_of("-0.e+") == std::string::npos)
                 ? text.substr(1)
                 : "\xE2\x88\x92" + text.substr(1);
    }
    labels.push_back(text);
  }
  return labels;
}

}  // namespace maskpos::detail
