/// @file figure.hpp
/// @brief Publication-quality heatmap grids of score matrices (PNG, SVG, PDF) drawn with cairo, laid
///        out like the paper's figures.
///
/// Needs cairo and libpng: link the CMake target `maskpos::figures` (it exists when pkg-config finds
/// both; Debian: libcairo2-dev, libpng-dev; the default font is DejaVu Sans, Debian fonts-dejavu-core). The rest of
/// maskpos does not need it, and maskpos.hpp does not include this header.
///
/// A figure is a grid of heatmap panels (the paper: layers in columns, raw and "normalized" means in
/// rows). Each panel has a title, position ticks (0, 10, 20, ...) on both axes, the axis labels
/// "Key Position" and "Query Position", and its own colour bar; masked (NaN) entries stay blank. The
/// same drawing code writes PNG (raster, at FigureOptions::dpi) and SVG or PDF (vector text and
/// lines; the heatmap cells are an embedded image drawn without smoothing).
///
/// \code
/// #include <maskpos/maskpos.hpp>
/// #include <maskpos/figure.hpp>
/// int main() {
///   maskpos::DecoderConfig config;                        // 4 layers, L2, causal
///   auto inputs = maskpos::InputSpec::gaussian(50, 64, 0.2);
///   maskpos::MonteCarloOptions options;
///   options.samples = 5000;
///   auto result = maskpos::monte_carlo<float>(config, inputs, options);
///   std::vector<maskpos::Matrix<double>> normalized;
///   for (const auto& scores : result.mean_scores) normalized.push_back(maskpos::diagonal_normalize(scores));
///   maskpos::LayerGridOptions grid_options;
///   grid_options.raw_vmin = 0.0;
///   grid_options.raw_vmax = 1.0;
///   auto grid = maskpos::layer_grid("L2, alpha = 0.2", result.mean_scores, normalized, grid_options);
///   maskpos::save_figure(grid, "scores.png");
///   maskpos::save_figure(grid, "scores.pdf");
/// }
/// \endcode
///
/// Thread-safety: every function is reentrant; figures written concurrently to different paths do
/// not interact (cairo keeps no per-surface global state; its font caches are locked internally).
#pragma once

#include "analysis.hpp"
#include "detail/atomic_file.hpp"
#include "detail/colormap.hpp"
#include "detail/errors.hpp"
#include "types.hpp"

#include <cairo-pdf.h>
#include <cairo-svg.h>
#include <cairo.h>
#include <png.h>

#if defined(__SSSE3__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <future>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace maskpos {

/// Colour maps for heatmap panels.
enum class Colormap {
  Rocket,       ///< seaborn's "rocket" (black - purple - red - cream): the paper's map, the default
  Magma,        ///< matplotlib's "magma"
  BlueWhiteRed  ///< diverging blue - white - red, for signed data with limits symmetric about 0
};

/// How a panel's colour limits are chosen when vmin / vmax are not given.
enum class LimitRule {
  MinMax,     ///< minimum and maximum of the finite entries
  Percentile  ///< the lower / upper percentiles of the finite entries (the paper's real-model figures)
};

/// One heatmap: an S x S (or any rows x cols) matrix, query positions down, key positions across.
struct HeatmapPanel {
  Matrix<double> values;  ///< NaN (and +-inf) entries are masked: drawn blank
  std::string title;      ///< UTF-8; may be empty
  std::optional<double> vmin;  ///< lower colour limit; automatic (see limit_rule) when empty
  std::optional<double> vmax;  ///< upper colour limit; automatic when empty
  Colormap colormap = Colormap::Rocket;
  LimitRule limit_rule = LimitRule::MinMax;
  double lower_percentile = 1.0;   ///< for LimitRule::Percentile, in [0, 100]
  double upper_percentile = 99.0;  ///< for LimitRule::Percentile, in [0, 100]
};

/// A figure: an overall title, optional row labels (drawn vertically at the left), rows of panels.
struct FigureGrid {
  std::string title;                            ///< may be empty
  std::vector<std::string> row_labels;          ///< empty, or one per row
  std::vector<std::vector<HeatmapPanel>> rows;  ///< rows may hold different numbers of panels
};

/// Sizes and fonts. Lengths are in points (1/72 inch).
struct FigureOptions {
  double panel_size = 170.0;  ///< the longer side of each heatmap; \pre > 0
  double dpi = 150.0;         ///< PNG resolution (pixels per inch); \pre > 0
  double font_size = 9.0;     ///< tick labels; axis labels, titles and the figure title scale from it
  std::string font_family = "DejaVu Sans";
  bool axis_labels = true;    ///< draw x_label / y_label on every panel
  std::string x_label = "Key Position";
  std::string y_label = "Query Position";
};

/// Output format, chosen from the file name's extension.
enum class FigureFormat { Png, Svg, Pdf };

/// A rectangle in points, origin at the figure's top-left corner, y down.
struct Rect {
  double x = 0, y = 0, width = 0, height = 0;
};

/// Where one panel lands, and its resolved colour limits.
struct PanelLayout {
  Rect heatmap;    ///< the cells: cell (i, j) spans heatmap.x + j * w / cols ... (row i down)
  Rect colorbar;
  double vmin = 0, vmax = 1;
};

/// The whole figure's geometry.
struct FigureLayout {
  double width = 0, height = 0;  ///< points
  int png_width = 0, png_height = 0;  ///< pixels at FigureOptions::dpi: ceil(points * dpi / 72)
  std::vector<std::vector<PanelLayout>> panels;
};

/// Settings of layer_grid.
struct LayerGridOptions {
  std::optional<double> raw_vmin;  ///< limits shared by the raw row; default: min / max over all layers
  std::optional<double> raw_vmax;
  LimitRule normalized_rule = LimitRule::MinMax;  ///< per-panel limits of the normalized row
  Colormap raw_colormap = Colormap::Rocket;
  Colormap normalized_colormap = Colormap::Rocket;  ///< the paper uses rocket here too
  std::string layer_label = "Layer";  ///< titles read "<layer_label> l" and "<layer_label> l (Normalized)"
};

/// The colour of a colour map at t in [0, 1] (clamped), sRGB channels in [0, 1].
inline std::array<double, 3> colormap_rgb(Colormap colormap, double t) {
  switch (colormap) {
    case Colormap::Magma: return detail::interpolate_anchors(detail::magma_anchors, t);
    case Colormap::BlueWhiteRed: return detail::interpolate_anchors(detail::blue_white_red_anchors, t);
    case Colormap::Rocket: break;
  }
  return detail::interpolate_anchors(detail::rocket_anchors, t);
}

/// The file format implied by a path's extension (.png, .svg, .pdf; any letter case).
/// \pre the extension is one of those three.
inline FigureFormat figure_format(const std::string& path) {
  const auto dot = path.find_last_of('.');
  const auto slash = path.find_last_of('/');
  std::string extension;
  if (dot != std::string::npos && (slash == std::string::npos || dot > slash)) extension = path.substr(dot + 1);
  for (char& c : extension) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (extension == "png") return FigureFormat::Png;
  if (extension == "svg") return FigureFormat::Svg;
  if (extension == "pdf") return FigureFormat::Pdf;
  detail::throw_invalid("path", path, "an extension .png, .svg or .pdf");
}

/// The colour limits a panel is drawn with: the given vmin / vmax, else the limit rule applied to the
/// finite entries. Automatic limits that coincide (a constant panel) are widened to v -+ 5% of |v|
/// (or -+ 0.05 when v = 0), so that the panel takes the map's middle colour and the colour bar keeps
/// readable ticks.
/// \pre values is not empty; with an automatic limit, values has a finite entry; given limits are
///      finite; the percentiles lie in [0, 100] with lower < upper; the resolved vmin < vmax.
/// \return {vmin, vmax}.
inline std::pair<double, double> panel_limits(const HeatmapPanel& panel) {
  detail::require(panel.values.size() > 0, "values", "empty matrix", "at least one entry");
  if (panel.vmin) detail::require(std::isfinite(*panel.vmin), "vmin", *panel.vmin, "a finite number");
  if (panel.vmax) detail::require(std::isfinite(*panel.vmax), "vmax", *panel.vmax, "a finite number");
  double low = 0.0, high = 0.0;
  if (!panel.vmin || !panel.vmax) {
    std::vector<double> finite;
    finite.reserve(static_cast<std::size_t>(panel.values.size()));
    for (Index k = 0; k < panel.values.size(); ++k)
      if (std::isfinite(panel.values.data()[k])) finite.push_back(panel.values.data()[k]);
    detail::require(!finite.empty(), "values", "no finite entry", "at least one finite entry for automatic limits");
    if (panel.limit_rule == LimitRule::Percentile) {
      detail::require(panel.lower_percentile >= 0.0 && panel.lower_percentile < panel.upper_percentile &&
                          panel.upper_percentile <= 100.0,
                      "lower_percentile, upper_percentile",
                      detail::to_text(panel.lower_percentile) + ", " + detail::to_text(panel.upper_percentile),
                      "0 <= lower_percentile < upper_percentile <= 100");
      low = percentile(finite, panel.lower_percentile);
      high = percentile(std::move(finite), panel.upper_percentile);
    } else {
      const auto [smallest, largest] = std::minmax_element(finite.begin(), finite.end());
      low = *smallest;
      high = *largest;
    }
    if (!panel.vmin && !panel.vmax && !(low < high)) {
      const double half_width = low == 0.0 ? 0.05 : 0.05 * std::fabs(low);
      high = low + half_width;
      low -= half_width;
    }
  }
  if (panel.vmin) low = *panel.vmin;
  if (panel.vmax) high = *panel.vmax;
  detail::require(low < high, "vmin, vmax", detail::to_text(low) + ", " + detail::to_text(high), "vmin < vmax");
  return {low, high};
}

namespace detail {

/// Owning handles for cairo objects.
struct CairoSurfaceDeleter {
  void operator()(cairo_surface_t* surface) const { cairo_surface_destroy(surface); }
};
struct CairoContextDeleter {
  void operator()(cairo_t* context) const { cairo_destroy(context); }
};
using SurfacePtr = std::unique_ptr<cairo_surface_t, CairoSurfaceDeleter>;
using ContextPtr = std::unique_ptr<cairo_t, CairoContextDeleter>;

/// Throws std::runtime_error unless cairo reports success.
inline void check_cairo(cairo_status_t status, const char* what) {
  if (status != CAIRO_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cairo ") + what + ": " + cairo_status_to_string(status));
}

/// A PNG file of 8-bit pixels in one of libpng's simplified-API formats (`format`, e.g. PNG_FORMAT_BGR),
/// rows `row_stride` bytes apart. Encoded with PNG_IMAGE_FLAG_FAST (no row filters, a fast zlib
/// level): cairo's own writer (adaptive filters, zlib's default level) takes about 5x as long on the
/// paper's figures for files about 30% smaller (see docs/performance.md). Failures throw
/// std::runtime_error.
inline std::vector<std::uint8_t> encode_png(const unsigned char* pixels, int width, int height, int row_stride,
                                            png_uint_32 format) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = format;
  image.flags = PNG_IMAGE_FLAG_FAST;
  // For 8-bit formats the row stride counts bytes.
  std::vector<std::uint8_t> bytes;
  bool closed = true;
#if defined(MASKPOS_DETAIL_POSIX_FILES)
  char* buffer = nullptr;
  std::size_t size = 0;
  std::FILE* stream = open_memstream(&buffer, &size);
  if (stream == nullptr) throw std::runtime_error("PNG output: open_memstream failed");
  const int written = png_image_write_to_stdio(&image, stream, 0, pixels, row_stride, nullptr);
  closed = std::fclose(stream) == 0;  // sets buffer and size
  std::unique_ptr<char, decltype(&std::free)> owner(buffer, &std::free);
  if (written && closed) bytes.assign(buffer, buffer + size);
#else
  png_alloc_size_t size = PNG_IMAGE_PNG_SIZE_MAX(image);
  bytes.resize(static_cast<std::size_t>(size));
  const int written = png_image_write_to_memory(&image, bytes.data(), &size, 0, pixels, row_stride, nullptr);
  bytes.resize(written ? static_cast<std::size_t>(size) : 0);
#endif
  const std::string problem = !written ? std::string(image.message) : !closed ? "closing the memory stream failed" : "";
  png_image_free(&image);
  if (!problem.empty()) throw std::runtime_error("libpng PNG output: " + problem);
  return bytes;
}

/// A flushed RGB24 image surface's pixels: what encode_rgb24_png needs without calling cairo.
struct Rgb24Pixels {
  unsigned char* data;
  int width, height, stride;
};

inline Rgb24Pixels rgb24_pixels(cairo_surface_t* surface) {
  cairo_surface_flush(surface);
  return {cairo_image_surface_get_data(surface), cairo_image_surface_get_width(surface),
          cairo_image_surface_get_height(surface), cairo_image_surface_get_stride(surface)};
}

/// The PNG file of an RGB24 image surface's pixels (an RGB PNG, see encode_png), taken from the
/// surface beforehand: no cairo call, so it may run on another thread while this one draws with
/// cairo. The pixels are packed to 8-bit B, G, R in place first, so the surface is spent.
inline std::vector<std::uint8_t> encode_rgb24_png(const Rgb24Pixels& pixels) {
  unsigned char* const data = pixels.data;
  const int width = pixels.width, height = pixels.height, stride = pixels.stride;
  for (int y = 0; y < height; ++y) {
    // RGB24 pixels are native-endian 32-bit words 0xXXRRGGBB. Byte 3x + 2 < 4x + 4: every pixel is
    // read before its bytes are overwritten.
    unsigned char* const row = data + static_cast<std::ptrdiff_t>(y) * stride;
    int x = 0;
#if defined(__SSSE3__)
    // Four pixels at a time (x86, so little-endian: a pixel's bytes are B, G, R, X): 16 bytes in, 12
    // out, stored as 16 whose last 4 land on bytes 3x + 12 .. 3x + 15 < 4x + 16, already read (and
    // overwritten by the next store, or beyond the row's packed 3 width bytes). The byte loop alone
    // took about 5 ms of the paper figure's 75 ms of CPU.
    const __m128i pack = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    for (; width - x >= 4; x += 4) {
      const __m128i four = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 4 * x));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + 3 * x), _mm_shuffle_epi8(four, pack));
    }
#endif
    for (; x < width; ++x) {
      std::uint32_t pixel;
      std::memcpy(&pixel, row + 4 * x, sizeof pixel);
      row[3 * x] = static_cast<unsigned char>(pixel);
      row[3 * x + 1] = static_cast<unsigned char>(pixel >> 8);
      row[3 * x + 2] = static_cast<unsigned char>(pixel >> 16);
    }
  }
  return encode_png(data, width, height, stride, PNG_FORMAT_BGR);
}

/// The same from the surface itself.
inline std::vector<std::uint8_t> encode_rgb24_png(cairo_surface_t* surface) { return encode_rgb24_png(rgb24_pixels(surface)); }

/// The PNG file of ARGB32 words that are opaque or fully transparent (so that premultiplied and
/// straight alpha agree), rows `row_stride` bytes apart.
inline std::vector<std::uint8_t> encode_argb32_png(const unsigned char* data, int width, int height, int row_stride) {
  const std::uint32_t probe = 0x01020304u;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  // ARGB32 words 0xAARRGGBB are the bytes B, G, R, A on little-endian machines, A, R, G, B on big-endian ones.
  const png_uint_32 format = first == 0x04 ? PNG_FORMAT_BGRA : PNG_FORMAT_ARGB;
  return encode_png(data, width, height, row_stride, format);
}

/// Attaches to an ARGB32 image surface its PNG file `png` (encode_argb32_png of its pixels, e.g.
/// encoded ahead of time from cell_pixels) as CAIRO_MIME_TYPE_PNG data: the SVG backend then embeds
/// those bytes instead of encoding the image itself, slowly (see encode_png).
inline void attach_png(cairo_surface_t* image, std::vector<std::uint8_t> png) {
  auto* bytes = new std::vector<std::uint8_t>(std::move(png));
  const cairo_status_t status = cairo_surface_set_mime_data(
      image, CAIRO_MIME_TYPE_PNG, bytes->data(), bytes->size(),
      [](void* owned) { delete static_cast<std::vector<std::uint8_t>*>(owned); }, bytes);
  if (status != CAIRO_STATUS_SUCCESS) delete bytes;
  check_cairo(status, "PNG mime data");
}

/// The same, encoding the surface's own pixels.
inline void attach_png(cairo_surface_t* image) {
  cairo_surface_flush(image);
  attach_png(image, encode_argb32_png(cairo_image_surface_get_data(image), cairo_image_surface_get_width(image),
                                      cairo_image_surface_get_height(image), cairo_image_surface_get_stride(image)));
}

/// Most colour-bar ticks (matplotlib shows up to about 8 on a bar of this size).
inline constexpr int colorbar_max_ticks = 8;

/// Font sizes and fixed lengths of the layout, in points, derived from FigureOptions (matplotlib's
/// proportions: ticks 3.5 long, 3.5 from their labels, 0.8-wide lines).
struct FigureStyle {
  double tick_font, label_font, title_font, figure_title_font, row_label_font;
  double tick_length = 3.5, tick_pad = 3.5, label_pad = 4.0, title_pad = 6.0, line_width = 0.8;
  double colorbar_gap, colorbar_width, column_gap, row_gap, margin = 10.0;

  explicit FigureStyle(const FigureOptions& options)
      : tick_font(options.font_size),
        label_font(options.font_size * 10.0 / 9.0),
        title_font(options.font_size * 12.0 / 9.0),
        figure_title_font(options.font_size * 15.0 / 9.0),
        row_label_font(options.font_size * 12.0 / 9.0),
        colorbar_gap(0.05 * options.panel_size),
        colorbar_width(0.055 * options.panel_size),
        column_gap(0.08 * options.panel_size),
        row_gap(0.06 * options.panel_size) {}
};

enum class FontWeight { Normal, Bold };

/// pi / 2: text rotated by minus this reads upwards.
inline constexpr double quarter_turn = 1.57079632679489661923;

inline void set_font(cairo_t* context, const FigureOptions& options, double size, FontWeight weight) {
  cairo_select_font_face(context, options.font_family.c_str(), CAIRO_FONT_SLANT_NORMAL,
                         weight == FontWeight::Bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(context, size);
}

/// Unhinted metrics, so that text measures the same on every surface type.
inline void set_font_options(cairo_t* context) {
  cairo_font_options_t* font_options = cairo_font_options_create();
  cairo_font_options_set_hint_metrics(font_options, CAIRO_HINT_METRICS_OFF);
  cairo_font_options_set_hint_style(font_options, CAIRO_HINT_STYLE_NONE);
  cairo_set_font_options(context, font_options);
  cairo_font_options_destroy(font_options);
}

inline double text_width(cairo_t* context, const std::string& text) {
  cairo_text_extents_t extents;
  cairo_text_extents(context, text.c_str(), &extents);
  return extents.x_advance;
}

/// Height of a line of text in the current font (ascent + descent).
inline double line_height(cairo_t* context) {
  cairo_font_extents_t extents;
  cairo_font_extents(context, &extents);
  return extents.ascent + extents.descent;
}

/// Draws text with its box anchored at (x, y): halign 0 = left edge, 0.5 = centre, 1 = right edge;
/// valign likewise from the top of the line box (ascent) to its bottom (descent). `angle` in radians
/// rotates the text about the anchor (-pi/2: reading upwards).
inline void draw_text(cairo_t* context, const std::string& text, double x, double y, double halign,
                      double valign, double angle = 0.0) {
  if (text.empty()) return;
  cairo_font_extents_t font;
  cairo_font_extents(context, &font);
  const double width = text_width(context, text);
  cairo_save(context);
  cairo_translate(context, x, y);
  cairo_rotate(context, angle);
  cairo_move_to(context, -halign * width, -valign * (font.ascent + font.descent) + font.ascent);
  cairo_show_text(context, text.c_str());
  cairo_restore(context);
}

/// Position ticks for an axis of n cells: nice multiples of 1, 2, 2.5, 5 x 10^k in [0, n - 1].
inline std::vector<double> position_ticks(Index cells) {
  if (cells <= 1) return {0.0};
  return nice_ticks(0.0, static_cast<double>(cells - 1), 6).first;
}

inline std::string integer_text(double value) { return std::to_string(static_cast<long long>(std::llround(value))); }

/// Rounds a length in points to whole pixels at `points_per_pixel`.
inline double snap(double value, double points_per_pixel) {
  return std::round(value / points_per_pixel) * points_per_pixel;
}

/// Measures everything and places every panel. Also validates the grid and the options.
inline FigureLayout layout_figure(cairo_t* context, const FigureGrid& grid, const FigureOptions& options) {
  require(std::isfinite(options.panel_size) && options.panel_size > 0.0, "panel_size", options.panel_size,
          "a finite size > 0 (points)");
  require(std::isfinite(options.dpi) && options.dpi > 0.0, "dpi", options.dpi, "a finite resolution > 0");
  require(std::isfinite(options.font_size) && options.font_size > 0.0, "font_size", options.font_size,
          "a finite size > 0 (points)");
  require(!grid.rows.empty(), "rows", grid.rows.size(), "at least one row of panels");
  require(grid.row_labels.empty() || grid.row_labels.size() == grid.rows.size(), "row_labels",
          grid.row_labels.size(), "empty or one label per row (" + to_text(grid.rows.size()) + ")");
  const FigureStyle style(options);
  const double pixel = 72.0 / options.dpi;

  FigureLayout layout;
  double max_y_tick_width = 0.0, max_colorbar_label_width = 0.0;
  bool any_title = false;
  std::size_t columns = 0;
  set_font(context, options, style.tick_font, FontWeight::Normal);
  for (std::size_t r = 0; r < grid.rows.size(); ++r) {
    require(!grid.rows[r].empty(), "rows[" + to_text(r) + "]", "empty", "at least one panel per row");
    columns = std::max(columns, grid.rows[r].size());
    std::vector<PanelLayout> row_layout;
    for (const HeatmapPanel& panel : grid.rows[r]) {
      PanelLayout placed;
      std::tie(placed.vmin, placed.vmax) = panel_limits(panel);
      for (const double tick : position_ticks(panel.values.rows()))
        max_y_tick_width = std::max(max_y_tick_width, text_width(context, integer_text(tick)));
      const auto [ticks, step] = nice_ticks(placed.vmin, placed.vmax, colorbar_max_ticks);
      for (const std::string& label : tick_labels(ticks, step))
        max_colorbar_label_width = std::max(max_colorbar_label_width, text_width(context, label));
      any_title = any_title || !panel.title.empty();
      row_layout.push_back(placed);
    }
    layout.panels.push_back(std::move(row_layout));
  }
  const double tick_line = line_height(context);
  set_font(context, options, style.label_font, FontWeight::Normal);
  const double label_line = options.axis_labels ? line_height(context) : 0.0;
  set_font(context, options, style.title_font, FontWeight::Normal);
  const double title_line = any_title ? line_height(context) : 0.0;
  set_font(context, options, style.figure_title_font, FontWeight::Normal);
  const double figure_title_line = grid.title.empty() ? 0.0 : line_height(context);
  set_font(context, options, style.row_label_font, FontWeight::Normal);
  const bool any_row_label = std::any_of(grid.row_labels.begin(), grid.row_labels.end(),
                                         [](const std::string& label) { return !label.empty(); });
  const double row_label_width = any_row_label ? line_height(context) + style.title_pad : 0.0;

  // One cell of the grid: [y label][y ticks][heatmap][gap][colour bar][ticks + labels].
  const double left = (options.axis_labels ? label_line + style.label_pad : 0.0) + max_y_tick_width +
                      style.tick_pad + style.tick_length;
  const double right = style.colorbar_gap + style.colorbar_width + style.tick_length + style.tick_pad +
                       max_colorbar_label_width;
  const double top = any_title ? title_line + style.title_pad : 0.0;
  const double bottom = style.tick_length + style.tick_pad + tick_line +
                        (options.axis_labels ? style.label_pad + label_line : 0.0);
  const double cell_width = left + options.panel_size + right;
  const double cell_height = top + options.panel_size + bottom;
  const double origin_x = style.margin + row_label_width;
  const double origin_y = style.margin + (grid.title.empty() ? 0.0 : figure_title_line + style.title_pad * 1.5);
  layout.width = origin_x + static_cast<double>(columns) * cell_width +
                 static_cast<double>(columns - 1) * style.column_gap + style.margin;
  layout.height = origin_y + static_cast<double>(grid.rows.size()) * cell_height +
                  static_cast<double>(grid.rows.size() - 1) * style.row_gap + style.margin;
  layout.png_width = static_cast<int>(std::ceil(layout.width / pixel - 1e-9));
  layout.png_height = static_cast<int>(std::ceil(layout.height / pixel - 1e-9));

  for (std::size_t r = 0; r < grid.rows.size(); ++r) {
    for (std::size_t c = 0; c < grid.rows[r].size(); ++c) {
      const Matrix<double>& values = grid.rows[r][c].values;
      const double longer = static_cast<double>(std::max(values.rows(), values.cols()));
      const double cell_x = origin_x + static_cast<double>(c) * (cell_width + style.column_gap);
      const double cell_y = origin_y + static_cast<double>(r) * (cell_height + style.row_gap);
      Rect& heatmap = layout.panels[r][c].heatmap;
      heatmap.x = snap(cell_x + left, pixel);
      heatmap.y = snap(cell_y + top, pixel);
      heatmap.width = std::max(pixel, snap(options.panel_size * static_cast<double>(values.cols()) / longer, pixel));
      heatmap.height = std::max(pixel, snap(options.panel_size * static_cast<double>(values.rows()) / longer, pixel));
      Rect& colorbar = layout.panels[r][c].colorbar;
      colorbar.x = snap(heatmap.x + heatmap.width + style.colorbar_gap, pixel);
      colorbar.y = heatmap.y;
      colorbar.width = std::max(pixel, snap(style.colorbar_width, pixel));
      colorbar.height = heatmap.height;
    }
  }
  return layout;
}

/// The pixels of cell_image: ARGB32 words, row-major, cols x block wide.
inline std::vector<std::uint32_t> cell_pixels(const Matrix<double>& values, Colormap colormap, double vmin, double vmax,
                                              int block = 1) {
  const int cols = static_cast<int>(values.cols());
  const int rows = static_cast<int>(values.rows());
  const int width = cols * block;
  std::vector<std::uint32_t> pixels(static_cast<std::size_t>(width) * static_cast<std::size_t>(rows * block));
  const auto to_byte = [](double channel) {
    return static_cast<std::uint32_t>(std::lround(std::clamp(channel, 0.0, 1.0) * 255.0));
  };
  std::vector<std::uint32_t> colours(static_cast<std::size_t>(cols));
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      const double value = values(i, j);
      std::uint32_t& colour = colours[static_cast<std::size_t>(j)];
      if (!std::isfinite(value)) {
        colour = 0u;  // transparent: the background shows through
        continue;
      }
      const auto rgb = colormap_rgb(colormap, (value - vmin) / (vmax - vmin));
      colour = 0xFF000000u | (to_byte(rgb[0]) << 16) | (to_byte(rgb[1]) << 8) | to_byte(rgb[2]);
    }
    // The block's first pixel row, cell by cell, then copies of it (no division per pixel: it was
    // most of the cells' time in vector output, where blocks are about 512 / S pixels wide).
    std::uint32_t* const first = pixels.data() + static_cast<std::ptrdiff_t>(i) * block * width;
    for (int j = 0; j < cols; ++j) std::fill_n(first + j * block, block, colours[static_cast<std::size_t>(j)]);
    for (int y = 1; y < block; ++y)
      std::copy_n(first, width, first + static_cast<std::ptrdiff_t>(y) * width);
  }
  return pixels;
}

/// An image surface of `rows x cols` blocks of `block x block` pixels, each block the colour of its
/// cell (transparent when masked). Blocks larger than one pixel keep cells sharp in SVG viewers, which
/// smooth embedded images when they scale them up.
inline SurfacePtr cell_image(const Matrix<double>& values, Colormap colormap, double vmin, double vmax, int block = 1) {
  const int width = static_cast<int>(values.cols()) * block, height = static_cast<int>(values.rows()) * block;
  const std::vector<std::uint32_t> pixels = cell_pixels(values, colormap, vmin, vmax, block);
  SurfacePtr image(cairo_image_surface_create(CAIRO_FORMAT_ARGB32, width, height));
  check_cairo(cairo_surface_status(image.get()), "cell image");
  cairo_surface_flush(image.get());
  unsigned char* data = cairo_image_surface_get_data(image.get());
  const int stride = cairo_image_surface_get_stride(image.get());
  for (int y = 0; y < height; ++y)
    std::memcpy(data + static_cast<std::ptrdiff_t>(y) * stride, pixels.data() + static_cast<std::ptrdiff_t>(y) * width,
                static_cast<std::size_t>(width) * sizeof(std::uint32_t));
  cairo_surface_mark_dirty(image.get());
  return image;
}

/// The block size of a panel's cells in vector output: about 512 pixels across the panel.
inline int vector_block(const HeatmapPanel& panel) {
  const Index longer = std::max(panel.values.rows(), panel.values.cols());
  return static_cast<int>(std::clamp<Index>((512 + longer - 1) / longer, 1, 64));
}

/// Paints `image` stretched over `rect` without smoothing (one flat square per cell).
inline void paint_image(cairo_t* context, cairo_surface_t* image, const Rect& rect, cairo_filter_t filter,
                        cairo_extend_t extend) {
  const double image_width = cairo_image_surface_get_width(image);
  const double image_height = cairo_image_surface_get_height(image);
  cairo_save(context);
  cairo_rectangle(context, rect.x, rect.y, rect.width, rect.height);
  cairo_clip(context);
  cairo_translate(context, rect.x, rect.y);
  cairo_scale(context, rect.width / image_width, rect.height / image_height);
  cairo_set_source_surface(context, image, 0.0, 0.0);
  cairo_pattern_set_filter(cairo_get_source(context), filter);
  cairo_pattern_set_extend(cairo_get_source(context), extend);
  cairo_paint(context);
  cairo_restore(context);
}

inline void stroke_frame(cairo_t* context, const Rect& rect, double line_width) {
  cairo_set_line_width(context, line_width);
  cairo_rectangle(context, rect.x, rect.y, rect.width, rect.height);
  cairo_stroke(context);
}

inline void line(cairo_t* context, double x0, double y0, double x1, double y1) {
  cairo_move_to(context, x0, y0);
  cairo_line_to(context, x1, y1);
  cairo_stroke(context);
}

/// Draws one panel: cells, frame, position ticks and labels, title, axis labels, colour bar.
/// \param cell_png for vector output (SVG / PDF), the cells' PNG file (vector_cell_pngs), consumed;
///        null for raster output. Vector output embeds the cells as blocks of pixels (about 512
///        pixels across the panel), so that viewers that smooth images still show sharp cells.
inline void draw_panel(cairo_t* context, const HeatmapPanel& panel, const PanelLayout& placed,
                       const FigureOptions& options, const FigureStyle& style,
                       std::vector<std::uint8_t>* cell_png = nullptr) {
  const bool vector = cell_png != nullptr;
  const Rect& heatmap = placed.heatmap;
  const Index rows = panel.values.rows();
  const Index cols = panel.values.cols();
  const int block = vector ? vector_block(panel) : 1;
  SurfacePtr cells = cell_image(panel.values, panel.colormap, placed.vmin, placed.vmax, block);
  if (vector) attach_png(cells.get(), std::move(*cell_png));
  paint_image(context, cells.get(), heatmap, CAIRO_FILTER_NEAREST, CAIRO_EXTEND_NONE);

  cairo_set_source_rgb(context, 0.0, 0.0, 0.0);
  cairo_set_line_width(context, style.line_width);
  stroke_frame(context, heatmap, style.line_width);

  // Position ticks at cell centres, like matplotlib's imshow.
  set_font(context, options, style.tick_font, FontWeight::Normal);
  const double cell_width = heatmap.width / static_cast<double>(cols);
  const double cell_height = heatmap.height / static_cast<double>(rows);
  const double bottom = heatmap.y + heatmap.height;
  double y_tick_width = 0.0;
  for (const double tick : position_ticks(cols)) {
    const double x = heatmap.x + (tick + 0.5) * cell_width;
    line(context, x, bottom, x, bottom + style.tick_length);
    draw_text(context, integer_text(tick), x, bottom + style.tick_length + style.tick_pad, 0.5, 0.0);
  }
  for (const double tick : position_ticks(rows)) {
    const double y = heatmap.y + (tick + 0.5) * cell_height;
    line(context, heatmap.x, y, heatmap.x - style.tick_length, y);
    const std::string label = integer_text(tick);
    y_tick_width = std::max(y_tick_width, text_width(context, label));
    draw_text(context, label, heatmap.x - style.tick_length - style.tick_pad, y, 1.0, 0.5);
  }
  const double tick_line = line_height(context);

  if (options.axis_labels) {
    set_font(context, options, style.label_font, FontWeight::Normal);
    draw_text(context, options.x_label, heatmap.x + heatmap.width / 2.0,
              bottom + style.tick_length + style.tick_pad + tick_line + style.label_pad, 0.5, 0.0);
    draw_text(context, options.y_label,
              heatmap.x - style.tick_length - style.tick_pad - y_tick_width - style.label_pad,
              heatmap.y + heatmap.height / 2.0, 0.5, 1.0, -detail::quarter_turn);
  }
  if (!panel.title.empty()) {
    set_font(context, options, style.title_font, FontWeight::Normal);
    draw_text(context, panel.title, heatmap.x + heatmap.width / 2.0, heatmap.y - style.title_pad, 0.5, 1.0);
  }

  // Colour bar: a 256-step vertical ramp, smoothed between steps, top = vmax.
  const Rect& colorbar = placed.colorbar;
  constexpr int steps = 256;
  Matrix<double> ramp(steps, 1);
  for (int k = 0; k < steps; ++k) ramp(k, 0) = 1.0 - (k + 0.5) / steps;
  SurfacePtr ramp_image = cell_image(ramp, panel.colormap, 0.0, 1.0);
  paint_image(context, ramp_image.get(), colorbar, CAIRO_FILTER_BILINEAR, CAIRO_EXTEND_PAD);
  cairo_set_source_rgb(context, 0.0, 0.0, 0.0);
  stroke_frame(context, colorbar, style.line_width);
  set_font(context, options, style.tick_font, FontWeight::Normal);
  const auto [ticks, step] = nice_ticks(placed.vmin, placed.vmax, colorbar_max_ticks);
  const auto labels = tick_labels(ticks, step);
  const double right = colorbar.x + colorbar.width;
  for (std::size_t k = 0; k < ticks.size(); ++k) {
    const double y = colorbar.y + colorbar.height * (placed.vmax - ticks[k]) / (placed.vmax - placed.vmin);
    line(context, right, y, right + style.tick_length, y);
    draw_text(context, labels[k], right + style.tick_length + style.tick_pad, y, 0.0, 0.5);
  }
}

/// Draws the whole figure in points onto `context` (already scaled for the surface).
/// \param cell_pngs for vector output, the panels' cell PNG files in grid order (vector_cell_pngs),
///        consumed; null for raster output.
inline void draw_figure(cairo_t* context, const FigureGrid& grid, const FigureLayout& layout,
                        const FigureOptions& options, std::vector<std::vector<std::uint8_t>>* cell_pngs = nullptr) {
  std::size_t panel_index = 0;
  const FigureStyle style(options);
  set_font_options(context);
  cairo_set_source_rgb(context, 1.0, 1.0, 1.0);
  cairo_paint(context);
  cairo_set_line_cap(context, CAIRO_LINE_CAP_BUTT);
  cairo_set_line_join(context, CAIRO_LINE_JOIN_MITER);
  for (std::size_t r = 0; r < grid.rows.size(); ++r)
    for (std::size_t c = 0; c < grid.rows[r].size(); ++c)
      draw_panel(context, grid.rows[r][c], layout.panels[r][c], options, style,
                 cell_pngs != nullptr ? &(*cell_pngs)[panel_index++] : nullptr);
  cairo_set_source_rgb(context, 0.0, 0.0, 0.0);
  if (!grid.title.empty()) {
    set_font(context, options, style.figure_title_font, FontWeight::Normal);
    draw_text(context, grid.title, layout.width / 2.0, style.margin, 0.5, 0.0);
  }
  set_font(context, options, style.row_label_font, FontWeight::Bold);
  for (std::size_t r = 0; r < grid.row_labels.size(); ++r) {
    const Rect& first = layout.panels[r].front().heatmap;
    draw_text(context, grid.row_labels[r], style.margin, first.y + first.height / 2.0, 0.5, 0.0, -detail::quarter_turn);
  }
}

/// A scratch context for measuring text.
inline ContextPtr measuring_context() {
  static_assert(sizeof(int) >= 4, "maskpos figures: int must hold pixel sizes");
  SurfacePtr surface(cairo_image_surface_create(CAIRO_FORMAT_ARGB32, 1, 1));
  ContextPtr context(cairo_create(surface.get()));
  set_font_options(context.get());
  return context;
}

/// Appends the bytes cairo hands over to a byte buffer (cairo_write_func_t).
inline cairo_status_t append_to_buffer(void* closure, const unsigned char* data, unsigned int length) {
  auto& buffer = *static_cast<std::vector<std::uint8_t>*>(closure);
  buffer.insert(buffer.end(), data, data + length);
  return CAIRO_STATUS_SUCCESS;
}

}  // namespace detail

/// The geometry save_figure will use: figure size, each heatmap's and colour bar's rectangle (in
/// points) and each panel's resolved colour limits.
/// \pre as for save_figure.
inline FigureLayout figure_layout(const FigureGrid& grid, const FigureOptions& options = {}) {
  detail::ContextPtr context = detail::measuring_context();
  return detail::layout_figure(context.get(), grid, options);
}

namespace detail {

/// A figure drawn for one file format: the PNG's pixels (an RGB24 image surface, still to be
/// encoded) or the finished SVG / PDF bytes.
struct DrawnFigure {
  SurfacePtr raster;
  std::vector<std::uint8_t> bytes;
};

/// The PNG files draw_panel attaches to the panels' cell images in vector output, in grid order:
/// computed from cell_pixels without cairo, so they can be encoded on other threads while cairo
/// draws on this one. With parts > 1 only the panels part, part + parts, ... are encoded (the rest
/// are left empty), so that `parts` threads can share the work.
inline std::vector<std::vector<std::uint8_t>> vector_cell_pngs(const FigureGrid& grid, const FigureLayout& layout,
                                                               std::size_t part = 0, std::size_t parts = 1) {
  std::vector<std::vector<std::uint8_t>> pngs;
  for (std::size_t r = 0; r < grid.rows.size(); ++r)
    for (std::size_t c = 0; c < grid.rows[r].size(); ++c) {
      pngs.emplace_back();
      if ((pngs.size() - 1) % parts != part) continue;
      const HeatmapPanel& panel = grid.rows[r][c];
      const PanelLayout& placed = layout.panels[r][c];
      const int block = vector_block(panel);
      const std::vector<std::uint32_t> pixels = cell_pixels(panel.values, panel.colormap, placed.vmin, placed.vmax, block);
      const int width = static_cast<int>(panel.values.cols()) * block;
      pngs.back() = encode_argb32_png(reinterpret_cast<const unsigned char*>(pixels.data()), width,
                                      static_cast<int>(panel.values.rows()) * block, width * 4);
    }
  return pngs;
}

/// \param cell_pngs vector formats: the panels' cell PNG files (vector_cell_pngs) if encoded ahead,
///        consumed; null to encode them here.
inline DrawnFigure draw_for_format(const FigureGrid& grid, FigureFormat format, const FigureLayout& layout,
                                   const FigureOptions& options,
                                   std::vector<std::vector<std::uint8_t>>* cell_pngs = nullptr) {
  DrawnFigure drawn;
  if (format == FigureFormat::Png) {
    drawn.raster.reset(cairo_image_surface_create(CAIRO_FORMAT_RGB24, layout.png_width, layout.png_height));
    check_cairo(cairo_surface_status(drawn.raster.get()), "image surface");
    ContextPtr context(cairo_create(drawn.raster.get()));
    cairo_scale(context.get(), options.dpi / 72.0, options.dpi / 72.0);
    draw_figure(context.get(), grid, layout, options);
    check_cairo(cairo_status(context.get()), "drawing");
    return drawn;
  }
  std::vector<std::vector<std::uint8_t>> own_cell_pngs;
  if (cell_pngs == nullptr) {
    own_cell_pngs = vector_cell_pngs(grid, layout);
    cell_pngs = &own_cell_pngs;
  }
  SurfacePtr surface(format == FigureFormat::Svg
                         ? cairo_svg_surface_create_for_stream(append_to_buffer, &drawn.bytes, layout.width, layout.height)
                         : cairo_pdf_surface_create_for_stream(append_to_buffer, &drawn.bytes, layout.width, layout.height));
  check_cairo(cairo_surface_status(surface.get()), "vector surface");
  {
    ContextPtr context(cairo_create(surface.get()));
    draw_figure(context.get(), grid, layout, options, cell_pngs);
    check_cairo(cairo_status(context.get()), "drawing");
  }
  cairo_surface_finish(surface.get());
  check_cairo(cairo_surface_status(surface.get()), format == FigureFormat::Svg ? "SVG output" : "PDF output");
  return drawn;
}

}  // namespace detail

/// Draws `grid` and writes it to `path`, atomically (a temporary file in the same directory, renamed
/// over `path` when complete). The format follows the extension: .png (raster at options.dpi), .svg
/// or .pdf (vector; size in points).
/// \param grid the panels; see HeatmapPanel for the colour limits.
/// \param path output file; its directory must exist.
/// \param options sizes and fonts.
/// \pre the extension is .png, .svg or .pdf; at least one row; every row has a panel; row_labels is
///      empty or has one label per row; every panel satisfies panel_limits' preconditions; the options
///      are positive and finite. Violations throw std::invalid_argument naming the parameter.
/// I/O and cairo failures throw std::runtime_error and leave `path` as it was.
inline void save_figure(const FigureGrid& grid, const std::string& path, const FigureOptions& options = {}) {
  const FigureFormat format = figure_format(path);
  const FigureLayout layout = figure_layout(grid, options);
  // Render into memory, then write atomically (detail/atomic_file.hpp): a failed drawing never
  // touches `path`.
  detail::DrawnFigure drawn = detail::draw_for_format(grid, format, layout, options);
  if (drawn.raster) drawn.bytes = detail::encode_rgb24_png(drawn.raster.get());
  detail::write_file_atomically(path, drawn.bytes);
}

/// save_figure for several files of the same figure (e.g. figure.png and figure.svg), faster: the
/// figures are drawn one after the other on this thread, while the PNG encodings (libpng, most of a
/// PNG's time) run on other threads: each raster PNG once it is drawn, and the cell images the
/// vector files embed before anything is drawn. Every file is byte-identical to what save_figure
/// writes: cairo, which numbers its surfaces process-wide (the SVG's image ids), runs on this
/// thread only. Nothing is written until every file is drawn and encoded; each is then written
/// atomically.
/// \pre as for save_figure, for every path (checked before anything is drawn).
inline void save_figures(const FigureGrid& grid, const std::vector<std::string>& paths, const FigureOptions& options = {}) {
  std::vector<FigureFormat> formats;
  for (const std::string& path : paths) formats.push_back(figure_format(path));
  const FigureLayout layout = figure_layout(grid, options);
  // Declared before the encodings: a future of std::async waits for its thread when destroyed (also
  // when an exception leaves early), and the surfaces must outlive the threads reading them.
  std::vector<detail::DrawnFigure> drawn(paths.size());
  std::vector<std::future<std::vector<std::uint8_t>>> encoded(paths.size());
  // The cell images of the vector files: two threads, each encoding every other panel (they take
  // longer than drawing the raster; measured on the paper figure).
  constexpr std::size_t kCellParts = 2;
  std::vector<std::future<std::vector<std::vector<std::uint8_t>>>> cell_parts;
  if (std::any_of(formats.begin(), formats.end(), [](FigureFormat format) { return format != FigureFormat::Png; }))
    for (std::size_t part = 0; part < kCellParts; ++part)
      cell_parts.push_back(std::async(std::launch::async, [&grid, &layout, part] {
        return detail::vector_cell_pngs(grid, layout, part, kCellParts);
      }));
  const auto take_cells = [&] {  // \pre !cell_parts.empty()
    std::vector<std::vector<std::uint8_t>> pngs = cell_parts[0].get();
    for (std::size_t part = 1; part < cell_parts.size(); ++part) {
      std::vector<std::vector<std::uint8_t>> more = cell_parts[part].get();
      for (std::size_t k = part; k < pngs.size(); k += cell_parts.size()) pngs[k] = std::move(more[k]);
    }
    cell_parts.clear();
    return pngs;
  };
  for (std::size_t f = 0; f < paths.size(); ++f) {
    // The first vector file takes the cells encoded ahead; any further one encodes its own.
    std::vector<std::vector<std::uint8_t>> cell_pngs;
    if (formats[f] != FigureFormat::Png && !cell_parts.empty()) cell_pngs = take_cells();
    drawn[f] = detail::draw_for_format(grid, formats[f], layout, options, cell_pngs.empty() ? nullptr : &cell_pngs);
    if (drawn[f].raster) {
      const detail::Rgb24Pixels pixels = detail::rgb24_pixels(drawn[f].raster.get());
      encoded[f] = std::async(std::launch::async, [pixels] { return detail::encode_rgb24_png(pixels); });
    }
  }
  for (std::size_t f = 0; f < paths.size(); ++f)
    if (encoded[f].valid()) drawn[f].bytes = encoded[f].get();
  for (std::size_t f = 0; f < paths.size(); ++f) detail::write_file_atomically(paths[f], drawn[f].bytes);
}

/// The paper's layout: layers in columns; row 1 the raw mean scores ("Layer l") with colour limits
/// shared by all layers, row 2 (when `normalized` is not empty) the diagonal-normalized scores
/// ("Layer l (Normalized)") with per-panel limits.
/// \param title the figure's title (may be empty).
/// \param raw one matrix per layer (e.g. MonteCarloResult::mean_scores).
/// \param normalized empty, or one matrix per layer (e.g. diagonal_normalize of each raw matrix).
/// \pre raw is not empty; normalized is empty or raw.size() long; with automatic raw limits the raw
///      matrices have a finite entry.
/// \return the grid, ready for save_figure.
inline FigureGrid layer_grid(const std::string& title, const std::vector<Matrix<double>>& raw,
                             const std::vector<Matrix<double>>& normalized, const LayerGridOptions& options = {}) {
  detail::require(!raw.empty(), "raw", raw.size(), "at least one layer");
  detail::require(normalized.empty() || normalized.size() == raw.size(), "normalized", normalized.size(),
                  "empty or one matrix per layer (" + detail::to_text(raw.size()) + ")");
  std::optional<double> shared_min = options.raw_vmin, shared_max = options.raw_vmax;
  if (!shared_min || !shared_max) {
    double low = std::numeric_limits<double>::infinity(), high = -low;
    for (const Matrix<double>& layer : raw)
      for (Index k = 0; k < layer.size(); ++k)
        if (std::isfinite(layer.data()[k])) {
          low = std::min(low, layer.data()[k]);
          high = std::max(high, layer.data()[k]);
        }
    detail::require(low <= high, "raw", "no finite entry", "at least one finite entry for automatic limits");
    if (!(low < high)) {
      const double half_width = low == 0.0 ? 0.05 : 0.05 * std::fabs(low);
      high = low + half_width;
      low -= half_width;
    }
    if (!shared_min) shared_min = low;
    if (!shared_max) shared_max = high;
  }
  FigureGrid grid;
  grid.title = title;
  grid.rows.emplace_back();
  for (std::size_t l = 0; l < raw.size(); ++l) {
    HeatmapPanel panel;
    panel.values = raw[l];
    panel.title = options.layer_label + " " + std::to_string(l + 1);
    panel.vmin = shared_min;
    panel.vmax = shared_max;
    panel.colormap = options.raw_colormap;
    grid.rows.back().push_back(std::move(panel));
  }
  if (!normalized.empty()) {
    grid.rows.emplace_back();
    for (std::size_t l = 0; l < normalized.size(); ++l) {
      HeatmapPanel panel;
      panel.values = normalized[l];
      panel.title = options.layer_label + " " + std::to_string(l + 1) + " (Normalized)";
      panel.colormap = options.normalized_colormap;
      panel.limit_rule = options.normalized_rule;
      grid.rows.back().push_back(std::move(panel));
    }
  }
  return grid;
}

}  // namespace maskpos
