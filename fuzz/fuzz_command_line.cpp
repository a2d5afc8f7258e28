// libFuzzer target: the maskpos command line (apps/maskpos/command_line.hpp) on arbitrary argv.
//
// The input is split into arguments at NUL and newline bytes; "maskpos" is prepended as argv[0].
// CommandLine::parse() must either stop (help, version, or exit code 2 with one line) or accept;
// then CommandLine::check() validates like run() would and may throw only std::invalid_argument
// (the command's exit code 2). Anything else escaping, a crash or a sanitizer report is a bug.
// run() is never called: nothing is computed and nothing is written, whatever --out says.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "command_line.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> arguments{"maskpos"};
  std::string current;
  for (std::size_t k = 0; k < size; ++k) {
    const char c = static_cast<char>(data[k]);
    if (c == '\0' || c == '\n') {
      arguments.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  if (!current.empty()) arguments.push_back(current);
  std::vector<const char*> argv;
  for (const auto& argument : arguments) argv.push_back(argument.c_str());
  argv.push_back(nullptr);

  maskpos::cli::CommandLine command_line;
  if (const auto stop = command_line.parse(static_cast<int>(arguments.size()), argv.data())) {
    if (stop->exit_code != 0 && stop->exit_code != 2) std::abort();
    if (stop->exit_code == 2) {
      // One line: the message ends in its only newline.
      const auto newline = stop->message.find('\n');
      if (newline == std::string::npos || newline + 1 != stop->message.size()) std::abort();
    }
    return 0;
  }
  try {
    command_line.check();
  } catch (const std::invalid_argument&) {
    // Bad input: the command prints one line and exits with 2.
  }
  return 0;
}
