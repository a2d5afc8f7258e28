// Tests of maskpos/figure.hpp (and its private helpers in detail/colormap.hpp).
//
// Expected colours are typed in from the published lookup tables (seaborn/cm.py `_rocket_lut`,
// matplotlib/_cm_listed.py `_magma_data`, 256 entries each), including entries between the anchors the
// header keeps; expected percentiles were computed with NumPy's np.percentile (default "linear").
#include <maskpos/figure.hpp>

#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using maskpos::Colormap;
using maskpos::Matrix;

const double masked = std::numeric_limits<double>::quiet_NaN();  // a masked (NaN) entry

// A published table entry: index in the 256-entry table and its sRGB value.
struct TableEntry {
  int index;
  std::array<double, 3> rgb;
};

// Entries typed in from seaborn's _rocket_lut. 0, 128 and 255 are anchors of the header's table;
// 2, 6, 100, 124, 131 and 252 lie between anchors.
const std::vector<TableEntry> rocket_entries = {
    {0, {0.01060815, 0.01808215, 0.10018654}},   {2, {0.01831941, 0.02297660, 0.10738511}},
    {6, {0.03853466, 0.03365771, 0.12245873}},
    {100, {0.61792306, 0.10325288, 0.35760108}}, {124, {0.77344838, 0.09405684, 0.32136808}},
    {128, {0.79650140, 0.10506637, 0.31063031}}, {131, {0.81291606, 0.11645784, 0.30213802}},
    {252, {0.97912374, 0.90313207, 0.83979337}}, {255, {0.98137749, 0.92061729, 0.86536915}},
};
// Entries typed in from matplotlib's _magma_data (0 and 255 are anchors; 2, 6, 100 and 220 are not).
const std::vector<TableEntry> magma_entries = {
    {0, {0.001462, 0.000466, 0.013866}},   {2, {0.003279, 0.002305, 0.023708}},
    {6, {0.009426, 0.008022, 0.052844}},
    {100, {0.537755, 0.156894, 0.506551}}, {220, {0.997285, 0.740772, 0.510983}},
    {255, {0.987053, 0.991438, 0.749504}},
};

// Linear interpolation between the header's anchors (4 to 8 entries apart) misses the entries above by
// at most 0.66 / 255 (computed with NumPy from the tables): within one 8-bit unit.
constexpr double table_tolerance = 1.0 / 255.0;
// A rendered pixel adds the 8-bit rounding of the colour (half a unit) to that: 1.5 units, so a
// difference of at most 2 integer units.
constexpr int pixel_tolerance = 2;

// A fresh, empty directory for one test case (test cases may run in parallel as separate processes).
fs::path output_directory(const std::string& name) {
  const fs::path directory = fs::path(MASKPOS_BINARY_DIR) / "test_figure_output" / name;
  fs::remove_all(directory);
  fs::create_directories(directory);
  return directory;
}

std::vector<std::string> directory_entries(const fs::path& directory) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string file_start(const fs::path& path, std::size_t count) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes(count, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(count));
  bytes.resize(static_cast<std::size_t>(in.gcount()));
  return bytes;
}

// A PNG read back with cairo's own reader.
struct Png {
  maskpos::detail::SurfacePtr surface;
  int width() const { return cairo_image_surface_get_width(surface.get()); }
  int height() const { return cairo_image_surface_get_height(surface.get()); }
  std::array<int, 3> pixel(int x, int y) const {
    const unsigned char* data = cairo_image_surface_get_data(surface.get());
    const int stride = cairo_image_surface_get_stride(surface.get());
    std::uint32_t value = 0;
    std::memcpy(&value, data + static_cast<std::ptrdiff_t>(y) * stride + 4 * x, sizeof value);
    return {static_cast<int>((value >> 16) & 0xFF), static_cast<int>((value >> 8) & 0xFF),
            static_cast<int>(value & 0xFF)};
  }
};

Png read_png(const fs::path& path) {
  Png png{maskpos::detail::SurfacePtr(cairo_image_surface_create_from_png(path.c_str()))};
  REQUIRE(cairo_surface_status(png.surface.get()) == CAIRO_STATUS_SUCCESS);
  cairo_surface_flush(png.surface.get());
  return png;
}

// A PNG file in memory decoded by cairo's own reader (libpng), independent of maskpos' encoder.
maskpos::detail::SurfacePtr decode_png(const std::vector<std::uint8_t>& png) {
  struct Reader {
    const std::vector<std::uint8_t>* bytes;
    std::size_t at = 0;
  } reader{&png};
  maskpos::detail::SurfacePtr decoded(cairo_image_surface_create_from_png_stream(
      [](void* closure, unsigned char* out, unsigned int count) {
        auto& r = *static_cast<Reader*>(closure);
        if (r.at + count > r.bytes->size()) return CAIRO_STATUS_READ_ERROR;
        std::memcpy(out, r.bytes->data() + r.at, count);
        r.at += count;
        return CAIRO_STATUS_SUCCESS;
      },
      &reader));
  REQUIRE(cairo_surface_status(decoded.get()) == CAIRO_STATUS_SUCCESS);
  cairo_surface_flush(decoded.get());
  return decoded;
}

// The pixel at the centre of cell (i, j) of a panel.
std::array<int, 3> cell_pixel(const Png& png, const maskpos::PanelLayout& panel, const Matrix<double>& values,
                              Eigen::Index i, Eigen::Index j, double dpi) {
  const double scale = dpi / 72.0;
  const double x = panel.heatmap.x + (static_cast<double>(j) + 0.5) * panel.heatmap.width / static_cast<double>(values.cols());
  const double y = panel.heatmap.y + (static_cast<double>(i) + 0.5) * panel.heatmap.height / static_cast<double>(values.rows());
  return png.pixel(static_cast<int>(std::floor(x * scale)), static_cast<int>(std::floor(y * scale)));
}

void check_pixel_matches(const std::array<int, 3>& pixel, const std::array<double, 3>& expected) {
  for (int channel = 0; channel < 3; ++channel) {
    INFO("channel " << channel << ": pixel " << pixel[static_cast<std::size_t>(channel)] << ", table "
                    << expected[static_cast<std::size_t>(channel)] * 255.0);
    CHECK(std::abs(pixel[static_cast<std::size_t>(channel)] -
                   static_cast<int>(std::lround(expected[static_cast<std::size_t>(channel)] * 255.0))) <= pixel_tolerance);
  }
}

// A square ramp: cell (i, j) = (size * i + j) / 255, masked above the diagonal when `causal`.
Matrix<double> table_ramp(Eigen::Index size, bool causal) {
  Matrix<double> values(size, size);
  for (Eigen::Index i = 0; i < size; ++i)
    for (Eigen::Index j = 0; j < size; ++j)
      values(i, j) = causal && j > i ? masked : static_cast<double>(size * i + j) / 255.0;
  return values;
}

maskpos::FigureGrid one_panel_grid(Matrix<double> values) {
  maskpos::HeatmapPanel panel;
  panel.values = std::move(values);
  panel.title = "panel";
  maskpos::FigureGrid grid;
  grid.rows.push_back({panel});
  return grid;
}

template <class Function>
void check_invalid(Function&& function, const std::string& parameter) {
  try {
    function();
    FAIL("expected std::invalid_argument naming " << parameter);
  } catch (const std::invalid_argument& error) {
    INFO(error.what());
    CHECK(std::string(error.what()).find(parameter) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("colormap_rgb follows the published rocket and magma tables") {
  for (const auto& [colormap, entries] : {std::pair{Colormap::Rocket, rocket_entries}, std::pair{Colormap::Magma, magma_entries}}) {
    for (const TableEntry& entry : entries) {
      INFO("table entry " << entry.index);
      const auto rgb = maskpos::colormap_rgb(colormap, entry.index / 255.0);
      for (std::size_t channel = 0; channel < 3; ++channel) CHECK(rgb[channel] == Approx(entry.rgb[channel]).margin(table_tolerance));
    }
    // Out-of-range positions clamp to the ends.
    CHECK(maskpos::colormap_rgb(colormap, -0.5) == maskpos::colormap_rgb(colormap, 0.0));
    CHECK(maskpos::colormap_rgb(colormap, 1.5) == maskpos::colormap_rgb(colormap, 1.0));
  }
  // Rocket is the paper's dark-to-light map: its lightness (here the channel sum) rises monotonically.
  double previous = -1.0;
  for (int k = 0; k <= 255; ++k) {
    const auto rgb = maskpos::colormap_rgb(Colormap::Rocket, k / 255.0);
    const double sum = rgb[0] + rgb[1] + rgb[2];
    CHECK(sum > previous);
    previous = sum;
  }
  // The diverging map: Moreland's cool-warm end colours (59, 76, 192) and (180, 4, 38), white between.
  const auto blue = maskpos::colormap_rgb(Colormap::BlueWhiteRed, 0.0);
  const auto white = maskpos::colormap_rgb(Colormap::BlueWhiteRed, 0.5);
  const auto red = maskpos::colormap_rgb(Colormap::BlueWhiteRed, 1.0);
  CHECK(blue[0] * 255.0 == Approx(59.0));
  CHECK(blue[2] * 255.0 == Approx(192.0));
  CHECK(white == std::array<double, 3>{1.0, 1.0, 1.0});
  CHECK(red[0] * 255.0 == Approx(180.0));
  CHECK(red[1] * 255.0 == Approx(4.0));
}

TEST_CASE("percentile follows NumPy's default linear rule") {
  // np.percentile([3, -1, 7.5, 2, 10, 0.25, 4], q)
  const std::vector<double> values = {3.0, -1.0, 7.5, 2.0, 10.0, 0.25, 4.0};
  CHECK(maskpos::percentile(values, 0.0) == -1.0);
  CHECK(maskpos::percentile(values, 1.0) == Approx(-0.925).epsilon(1e-14));
  CHECK(maskpos::percentile(values, 25.0) == Approx(1.125).epsilon(1e-14));
  CHECK(maskpos::percentile(values, 50.0) == 3.0);
  CHECK(maskpos::percentile(values, 99.0) == Approx(9.849999999999998).epsilon(1e-14));
  CHECK(maskpos::percentile(values, 100.0) == 10.0);
  // np.percentile(np.arange(101.0)**2 / 7, q)
  std::vector<double> squares;
  for (int k = 0; k <= 100; ++k) squares.push_back(k * k / 7.0);
  CHECK(maskpos::percentile(squares, 1.0) == Approx(0.14285714285714285).epsilon(1e-14));
  CHECK(maskpos::percentile(squares, 99.0) == Approx(1400.142857142857).epsilon(1e-14));
  CHECK(maskpos::percentile(squares, 33.3) == Approx(158.44285714285712).epsilon(1e-12));
  CHECK(std::isnan(maskpos::percentile({}, 50.0)));  // no finite value: NaN (figures reject such panels)
  check_invalid([&] { maskpos::percentile(values, 101.0); }, "percentile");
}

TEST_CASE("panel_limits: given, min/max, percentile, constant panels and invalid limits") {
  maskpos::HeatmapPanel panel;
  panel.values = Matrix<double>(2, 3);
  panel.values << 0.5, masked, -2.0, 4.0, std::numeric_limits<double>::infinity(), 1.0;
  CHECK(maskpos::panel_limits(panel) == std::pair{-2.0, 4.0});  // NaN and inf are masked, not limits
  panel.vmin = -1.0;
  CHECK(maskpos::panel_limits(panel) == std::pair{-1.0, 4.0});
  panel.vmax = 3.0;
  CHECK(maskpos::panel_limits(panel) == std::pair{-1.0, 3.0});

  maskpos::HeatmapPanel squares;
  squares.values = Matrix<double>(101, 1);
  for (int k = 0; k <= 100; ++k) squares.values(k, 0) = k * k / 7.0;
  squares.limit_rule = maskpos::LimitRule::Percentile;  // 1st and 99th, the paper's real-model rule
  const auto [low, high] = maskpos::panel_limits(squares);
  CHECK(low == Approx(0.14285714285714285).epsilon(1e-14));
  CHECK(high == Approx(1400.142857142857).epsilon(1e-14));

  maskpos::HeatmapPanel constant;
  constant.values = Matrix<double>::Constant(3, 3, 2.0);
  CHECK(maskpos::panel_limits(constant) == std::pair{1.9, 2.1});  // 2 -+ 5 % of 2
  constant.values.setZero();
  CHECK(maskpos::panel_limits(constant) == std::pair{-0.05, 0.05});

  maskpos::HeatmapPanel invalid;
  check_invalid([&] { maskpos::panel_limits(invalid); }, "values");  // empty matrix
  invalid.values = Matrix<double>::Constant(2, 2, masked);
  check_invalid([&] { maskpos::panel_limits(invalid); }, "values");  // nothing finite to scale by
  invalid.values.setOnes();
  invalid.vmin = 1.0;
  invalid.vmax = 1.0;
  check_invalid([&] { maskpos::panel_limits(invalid); }, "vmin");
  invalid.vmax = 0.5;
  check_invalid([&] { maskpos::panel_limits(invalid); }, "vmin");
  invalid.vmax = masked;
  check_invalid([&] { maskpos::panel_limits(invalid); }, "vmax");
  invalid.vmin.reset();
  invalid.vmax.reset();
  invalid.limit_rule = maskpos::LimitRule::Percentile;
  invalid.lower_percentile = 99.0;
  invalid.upper_percentile = 1.0;
  check_invalid([&] { maskpos::panel_limits(invalid); }, "lower_percentile");
}

TEST_CASE("ticks: the paper's position ticks and matplotlib-like colour-bar labels") {
  using maskpos::detail::nice_ticks;
  // Axes of the paper's figures: 50 positions -> 0..40 by 10 (l2norm.png); 1024 positions -> 0..1000
  // by 200 (the query axis of all_rope.png).
  CHECK(maskpos::detail::position_ticks(50) == std::vector<double>{0, 10, 20, 30, 40});
  CHECK(maskpos::detail::position_ticks(1024) == std::vector<double>{0, 200, 400, 600, 800, 1000});
  // The raw colour bar on [0, 1]: 0.0, 0.2, ..., 1.0 as in l2norm.png.
  const auto [unit_ticks, unit_step] = nice_ticks(0.0, 1.0, maskpos::detail::colorbar_max_ticks);
  CHECK(unit_step == Approx(0.2));
  CHECK(maskpos::detail::tick_labels(unit_ticks, unit_step) ==
        std::vector<std::string>{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"});
  // Signed ranges print a true minus sign (U+2212) and a plain 0.
  const auto [signed_ticks, signed_step] = nice_ticks(-0.0011, 0.0012, 6);
  CHECK(signed_step == Approx(0.0005));
  CHECK(maskpos::detail::tick_labels(signed_ticks, signed_step) ==
        std::vector<std::string>{"\xE2\x88\x92" "0.0010", "\xE2\x88\x92" "0.0005", "0.0000", "0.0005", "0.0010"});
  // Never more ticks than asked for, always at least two inside the range.
  for (const auto& [low, high] : {std::pair{0.0, 1.0}, std::pair{-0.27, 0.04}, std::pair{1.9, 2.1}, std::pair{3e-7, 9e-7}}) {
    const auto ticks = nice_ticks(low, high, 8).first;
    CHECK(ticks.size() >= 2);
    CHECK(ticks.size() <= 8);
    CHECK(ticks.front() >= low - 1e-12);
    CHECK(ticks.back() <= high + 1e-12);
  }
}

TEST_CASE("save_figure: PNG size, cell colours from the table, blank masked cells") {
  const fs::path directory = output_directory("png");
  // Panel 1: rocket on [0, 1], cell (i, j) = (16 i + j) / 255 -> table entry 16 i + j; four cells
  // (entries 1, 15, 120, 239, none of the typed ones) masked.
  // Panel 2: magma, automatic min/max limits, unmasked: entry 16 i + j again (min 0, max 255 / 255).
  // Panel 3: percentile limits (1st, 99th): the extreme cells clamp to the ends of the map.
  maskpos::HeatmapPanel rocket;
  rocket.values = table_ramp(16, false);
  const std::vector<std::pair<int, int>> masked_cells = {{0, 1}, {0, 15}, {7, 8}, {14, 15}};
  for (const auto& [i, j] : masked_cells) rocket.values(i, j) = masked;
  rocket.title = "rocket";
  rocket.vmin = 0.0;
  rocket.vmax = 1.0;
  maskpos::HeatmapPanel magma;
  magma.values = table_ramp(16, false);
  magma.title = "magma";
  magma.colormap = Colormap::Magma;
  maskpos::HeatmapPanel clamped = rocket;
  clamped.values = table_ramp(16, false);
  clamped.vmin.reset();
  clamped.vmax.reset();
  clamped.limit_rule = maskpos::LimitRule::Percentile;
  maskpos::FigureGrid grid;
  grid.title = "test figure";
  grid.row_labels = {"first", "second"};
  grid.rows = {{rocket, magma}, {clamped}};

  maskpos::FigureOptions options;
  options.dpi = 100.0;
  const fs::path path = directory / "grid.png";
  maskpos::save_figure(grid, path.string(), options);
  const maskpos::FigureLayout layout = maskpos::figure_layout(grid, options);
  const Png png = read_png(path);
  CHECK(png.width() == layout.png_width);
  CHECK(png.height() == layout.png_height);
  CHECK(layout.png_width == static_cast<int>(std::ceil(layout.width * options.dpi / 72.0 - 1e-9)));
  CHECK(layout.png_height == static_cast<int>(std::ceil(layout.height * options.dpi / 72.0 - 1e-9)));
  // Panels lie inside the figure; the heatmap is panel_size on its longer side (to a pixel).
  for (const auto& row : layout.panels)
    for (const auto& panel : row) {
      CHECK(panel.heatmap.width == Approx(options.panel_size).margin(72.0 / options.dpi));
      CHECK(panel.colorbar.x + panel.colorbar.width < layout.width);
      CHECK(panel.heatmap.y + panel.heatmap.height < layout.height);
    }

  const auto check_entries = [&](const maskpos::PanelLayout& placed, const Matrix<double>& values,
                                 const std::vector<TableEntry>& entries) {
    for (const TableEntry& entry : entries) {
      INFO("table entry " << entry.index);
      check_pixel_matches(cell_pixel(png, placed, values, entry.index / 16, entry.index % 16, options.dpi), entry.rgb);
    }
  };
  check_entries(layout.panels[0][0], rocket.values, rocket_entries);
  check_entries(layout.panels[0][1], magma.values, magma_entries);
  CHECK(layout.panels[1][0].vmin == Approx(2.55 / 255.0));  // np.percentile(range(256), 1) = 2.55
  check_entries(layout.panels[1][0], clamped.values, {rocket_entries.front(), rocket_entries.back()});

  // Masked cells show the white background.
  for (const auto& [i, j] : masked_cells)
    CHECK(cell_pixel(png, layout.panels[0][0], rocket.values, i, j, options.dpi) == std::array<int, 3>{255, 255, 255});

  // Twice the resolution, twice the pixels (each size is rounded up once: within 2 pixels).
  options.dpi = 200.0;
  maskpos::save_figure(grid, path.string(), options);
  const Png fine = read_png(path);
  CHECK(std::abs(fine.width() - 2 * png.width()) <= 2);
  CHECK(std::abs(fine.height() - 2 * png.height()) <= 2);
}

TEST_CASE("save_figure: SVG and PDF from the same drawing code") {
  const fs::path directory = output_directory("vector");
  const auto grid = one_panel_grid(table_ramp(10, true));
  maskpos::save_figure(grid, (directory / "figure.svg").string());
  maskpos::save_figure(grid, (directory / "figure.PDF").string());  // the extension's case does not matter
  CHECK(file_start(directory / "figure.svg", 5) == "<?xml");
  CHECK(file_start(directory / "figure.svg", 400).find("<svg") != std::string::npos);
  CHECK(file_start(directory / "figure.PDF", 5) == "%PDF-");
  CHECK(directory_entries(directory) == std::vector<std::string>{"figure.PDF", "figure.svg"});
  // Vector output is sized in points: the SVG header states the layout's width.
  const maskpos::FigureLayout layout = maskpos::figure_layout(grid);
  const std::string header = file_start(directory / "figure.svg", 400);
  const auto width_at = header.find("width=\"");
  REQUIRE(width_at != std::string::npos);
  CHECK(std::stod(header.substr(width_at + 7)) == Approx(layout.width).epsilon(1e-5));
}

// Standard base64 (RFC 4648, with padding), written here for the test.
std::string base64(const std::vector<std::uint8_t>& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string text;
  for (std::size_t k = 0; k < bytes.size(); k += 3) {
    const std::size_t n = std::min<std::size_t>(3, bytes.size() - k);
    std::uint32_t group = 0;
    for (std::size_t b = 0; b < 3; ++b) group = (group << 8) | (b < n ? bytes[k + b] : 0u);
    for (std::size_t c = 0; c < 4; ++c) text += c <= n ? alphabet[(group >> (18 - 6 * c)) & 63u] : '=';
  }
  return text;
}

TEST_CASE("save_figures: the files save_figure writes, PNGs encoded on their own threads") {
  const fs::path one_by_one = output_directory("figures_single"), together = output_directory("figures_together");
  const auto grid = one_panel_grid(table_ramp(10, true));
  for (const char* name : {"a.png", "b.svg", "c.png"}) maskpos::save_figure(grid, (one_by_one / name).string());
  maskpos::save_figures(grid, {(together / "a.png").string(), (together / "b.svg").string(), (together / "c.png").string()});
  CHECK(directory_entries(together) == std::vector<std::string>{"a.png", "b.svg", "c.png"});
  const auto bytes = [](const fs::path& path) { return file_start(path, std::size_t(1) << 26); };
  // The PNGs byte for byte. The SVGs up to their numbers: cairo numbers surfaces process-wide, so
  // two drawings in one process differ in their image ids (between runs of a program they agree).
  const auto without_digits = [](std::string text) {
    text.erase(std::remove_if(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }), text.end());
    return text;
  };
  for (const char* name : {"a.png", "c.png"}) {
    INFO(name);
    CHECK(bytes(together / name) == bytes(one_by_one / name));
  }
  CHECK(bytes(together / "a.png") == bytes(together / "c.png"));
  const std::string svg = bytes(together / "b.svg");
  CHECK(svg.size() > 1000);
  CHECK(without_digits(svg) == without_digits(bytes(one_by_one / "b.svg")));

  // A bad path anywhere in the list: std::invalid_argument before anything is drawn or written.
  const fs::path untouched = output_directory("figures_invalid");
  check_invalid([&] { maskpos::save_figures(grid, {(untouched / "a.png").string(), (untouched / "b.jpg").string()}); },
                "path");
  CHECK(directory_entries(untouched).empty());
}

TEST_CASE("SVG cells: the PNG maskpos encodes decodes to the drawn pixels, and is what the SVG embeds") {
  // The cells of a vector figure are drawn as an image with a PNG attached (detail::attach_png), which
  // cairo's SVG backend embeds as is. Decoding it with cairo's own PNG reader (libpng) must give back
  // every pixel exactly: opaque colours, and 0 for the transparent (masked) cells.
  const Matrix<double> values = table_ramp(10, true);
  const int block = 3;
  maskpos::detail::SurfacePtr cells = maskpos::detail::cell_image(values, maskpos::Colormap::Rocket, 0.0, 1.0, block);
  maskpos::detail::attach_png(cells.get());
  const unsigned char* data = nullptr;
  unsigned long length = 0;
  cairo_surface_get_mime_data(cells.get(), CAIRO_MIME_TYPE_PNG, &data, &length);
  REQUIRE(data != nullptr);
  const std::vector<std::uint8_t> png(data, data + length);
  const maskpos::detail::SurfacePtr decoded = decode_png(png);
  REQUIRE(cairo_image_surface_get_width(decoded.get()) == 10 * block);
  REQUIRE(cairo_image_surface_get_height(decoded.get()) == 10 * block);
  int transparent = 0;
  for (int y = 0; y < 10 * block; ++y)
    for (int x = 0; x < 10 * block; ++x) {
      std::uint32_t drawn = 0, read = 0;
      std::memcpy(&drawn, cairo_image_surface_get_data(cells.get()) + y * cairo_image_surface_get_stride(cells.get()) + 4 * x, 4);
      std::memcpy(&read, cairo_image_surface_get_data(decoded.get()) + y * cairo_image_surface_get_stride(decoded.get()) + 4 * x, 4);
      INFO("pixel (" << x << ", " << y << ")");
      REQUIRE(read == drawn);
      transparent += drawn == 0u;
    }
  CHECK(transparent == 45 * block * block);  // the 45 masked cells above the diagonal

  // The SVG of a one-panel figure of the same values embeds exactly those bytes (the vector block
  // size differs from 3, so encode the figure's own cell image the same way).
  const fs::path directory = output_directory("svg_cells");
  maskpos::save_figure(one_panel_grid(values), (directory / "figure.svg").string());
  const maskpos::FigureLayout layout = maskpos::figure_layout(one_panel_grid(values));
  const int figure_block = (512 + 10 - 1) / 10;
  maskpos::detail::SurfacePtr figure_cells = maskpos::detail::cell_image(
      values, maskpos::Colormap::Rocket, layout.panels[0][0].vmin, layout.panels[0][0].vmax, figure_block);
  maskpos::detail::attach_png(figure_cells.get());
  cairo_surface_get_mime_data(figure_cells.get(), CAIRO_MIME_TYPE_PNG, &data, &length);
  std::ifstream svg(directory / "figure.svg");
  const std::string text((std::istreambuf_iterator<char>(svg)), std::istreambuf_iterator<char>());
  CHECK(text.find(base64(std::vector<std::uint8_t>(data, data + length))) != std::string::npos);
}

TEST_CASE("encode_rgb24_png: the raster's pixels come back exactly, for every row width") {
  // encode_rgb24_png packs each row's 32-bit pixels to 3 bytes in place (4 pixels at a time with
  // SSSE3, the rest one by one) before libpng encodes them. Widths 1 to 13 cover rows with no whole
  // group of 4, whole groups only, and every tail length; random bytes (including the unused X byte)
  // catch a byte taken from the wrong place. Decoded by libpng through cairo: exact equality.
  std::mt19937 random(20261205);
  for (int width = 1; width <= 13; ++width) {
    const int height = 3;
    maskpos::detail::SurfacePtr raster(cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height));
    REQUIRE(cairo_surface_status(raster.get()) == CAIRO_STATUS_SUCCESS);
    cairo_surface_flush(raster.get());
    unsigned char* data = cairo_image_surface_get_data(raster.get());
    const int stride = cairo_image_surface_get_stride(raster.get());
    std::vector<std::uint32_t> expected;
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) {
        const std::uint32_t pixel = static_cast<std::uint32_t>(random());
        std::memcpy(data + y * stride + 4 * x, &pixel, 4);
        expected.push_back(pixel & 0x00FFFFFFu);
      }
    cairo_surface_mark_dirty(raster.get());
    const maskpos::detail::SurfacePtr decoded = decode_png(maskpos::detail::encode_rgb24_png(raster.get()));
    REQUIRE(cairo_image_surface_get_width(decoded.get()) == width);
    REQUIRE(cairo_image_surface_get_height(decoded.get()) == height);
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) {
        std::uint32_t read = 0;
        std::memcpy(&read, cairo_image_surface_get_data(decoded.get()) + y * cairo_image_surface_get_stride(decoded.get()) + 4 * x, 4);
        INFO("width " << width << ", pixel (" << x << ", " << y << ")");
        REQUIRE((read & 0x00FFFFFFu) == expected[static_cast<std::size_t>(y * width + x)]);
      }
  }
}

TEST_CASE("save_figure: invalid input throws std::invalid_argument naming the parameter, writes nothing") {
  const fs::path directory = output_directory("invalid");
  const std::string path = (directory / "figure.png").string();
  check_invalid([&] { maskpos::save_figure(one_panel_grid(Matrix<double>()), path); }, "values");
  auto reversed = one_panel_grid(table_ramp(4, true));
  reversed.rows[0][0].vmin = 1.0;
  reversed.rows[0][0].vmax = 0.0;
  check_invalid([&] { maskpos::save_figure(reversed, path); }, "vmin");
  const auto grid = one_panel_grid(table_ramp(4, true));
  check_invalid([&] { maskpos::save_figure(grid, (directory / "figure.jpg").string()); }, "path");
  check_invalid([&] { maskpos::save_figure(grid, (directory / "figure").string()); }, "path");
  check_invalid([&] { maskpos::save_figure(maskpos::FigureGrid{}, path); }, "rows");
  auto labelled = grid;
  labelled.row_labels = {"a", "b"};
  check_invalid([&] { maskpos::save_figure(labelled, path); }, "row_labels");
  auto ragged = grid;
  ragged.rows.emplace_back();
  check_invalid([&] { maskpos::save_figure(ragged, path); }, "rows[1]");
  maskpos::FigureOptions options;
  options.dpi = 0.0;
  check_invalid([&] { maskpos::save_figure(grid, path, options); }, "dpi");
  options = {};
  options.panel_size = -1.0;
  check_invalid([&] { maskpos::save_figure(grid, path, options); }, "panel_size");
  CHECK(directory_entries(directory).empty());
}

TEST_CASE("save_figure writes atomically: no temporary file left, old file replaced, ordinary mode") {
  const fs::path directory = output_directory("atomic");
  const fs::path path = directory / "figure.png";
  { std::ofstream(path) << "old content"; }
  maskpos::save_figure(one_panel_grid(table_ramp(6, true)), path.string());
  CHECK(directory_entries(directory) == std::vector<std::string>{"figure.png"});
  CHECK(file_start(path, 8) == "\x89PNG\r\n\x1a\n");
  // A new file gets mode 0666 minus the umask, as any file the user creates (not a temp file's 0600).
  fs::remove(path);
  maskpos::save_figure(one_panel_grid(table_ramp(6, true)), path.string());
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat status {};
  REQUIRE(::stat(path.c_str(), &status) == 0);
  CHECK((status.st_mode & 0777) == (0666 & ~mask));
  // A directory that does not exist is an I/O failure (std::runtime_error), and leaves nothing behind.
  CHECK_THROWS_AS(maskpos::save_figure(one_panel_grid(table_ramp(6, true)), (directory / "missing" / "f.svg").string()),
                  std::runtime_error);
  CHECK(directory_entries(directory) == std::vector<std::string>{"figure.png"});
}

TEST_CASE("layer_grid builds the paper's layout: layers in columns, raw and normalized rows") {
  std::vector<Matrix<double>> raw, normalized;
  for (int layer = 0; layer < 3; ++layer) {
    raw.push_back(table_ramp(5, true) * (layer + 1));   // finite entries span [0, (layer + 1) * 24 / 255]
    normalized.push_back(table_ramp(5, true) - Matrix<double>::Constant(5, 5, 0.01 * layer));
  }
  const auto grid = maskpos::layer_grid("title", raw, normalized);
  REQUIRE(grid.rows.size() == 2);
  REQUIRE(grid.rows[0].size() == 3);
  REQUIRE(grid.rows[1].size() == 3);
  CHECK(grid.title == "title");
  CHECK(grid.rows[0][0].title == "Layer 1");
  CHECK(grid.rows[1][2].title == "Layer 3 (Normalized)");
  for (const auto& panel : grid.rows[0]) {  // shared raw limits: min and max over all layers
    CHECK(*panel.vmin == 0.0);
    CHECK(*panel.vmax == Approx(3.0 * 24.0 / 255.0));
  }
  for (const auto& panel : grid.rows[1]) {  // normalized panels scale on their own
    CHECK_FALSE(panel.vmin.has_value());
    CHECK_FALSE(panel.vmax.has_value());
  }
  maskpos::LayerGridOptions options;
  options.raw_vmin = 0.0;
  options.raw_vmax = 1.0;
  const auto raw_only = maskpos::layer_grid("", raw, {}, options);
  CHECK(raw_only.rows.size() == 1);
  CHECK(*raw_only.rows[0][1].vmax == 1.0);
  check_invalid([&] { maskpos::layer_grid("", {}, {}); }, "raw");
  check_invalid([&] { maskpos::layer_grid("", raw, {raw[0]}); }, "normalized");
}
