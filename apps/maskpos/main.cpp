// The maskpos command: simulate, analyze, figure, reproduce, llama. Exit codes: 0 success, 2 bad input
// (one line on stderr, nothing written), 1 any other failure (one line on stderr).
#include <fmt/core.h>

#include <exception>
#include <string>

namespace {
// One line, without the library's own "maskpos: " prefix (main adds it).
std::string one_line(const char* what) {
  std::string text = what;
  if (text.rfind("maskpos: ", 0) == 0) text.erase(0, 9);
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  return text;
}
}  // namespace

#include "command_line.hpp"

int main(int argc, char** argv) {
  maskpos::cli::CommandLine command_line;
  if (const auto stop = command_line.parse(argc, argv)) {
    fmt::print(stop->exit_code == 0 ? stdout : stderr, "{}", stop->message);
    return stop->exit_code;
  }
  try {
    return command_line.run();
  } catch (const std::invalid_argument& error) {  // includes UsageError
    fmt::print(stderr, "maskpos: error: {}\n", one_line(error.what()));
    return 2;
  } catch (const std::exception& error) {
    fmt::print(stderr, "maskpos: failed: {}\n", one_line(error.what()));
    return 1;
  }
}
