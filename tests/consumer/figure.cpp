// maskpos::figures through the consumer's own build: draws a 3 x 3 panel to consumer_figure.svg.
#include <maskpos/figure.hpp>

#include <cstdio>

int main() {
  maskpos::HeatmapPanel panel;
  panel.values = Eigen::MatrixXd::Identity(3, 3);
  panel.title = "identity";
  maskpos::FigureGrid grid;
  grid.rows.push_back({panel});
  maskpos::save_figure(grid, "consumer_figure.svg");
  std::printf("maskpos::figures: wrote consumer_figure.svg\n");
  return 0;
}
