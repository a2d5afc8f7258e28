#include "command_line.hpp"

#include <fmt/core.h>

namespace maskpos::cli {

CommandLine::CommandLine()
    : app_(fmt::format("maskpos {}: how the causal mask, normalisation and RoPE create positional information",
                       version_string),
           "maskpos") {
  app_.require_subcommand(1);
  app_.set_version_flag("--version", version_string);
  simulate_cmd_ = app_.add_subcommand("simulate", "run the parameter-free decoder (Monte Carlo or large-width limit)");
  add_simulate_options(*simulate_cmd_, simulate_);
  analyze_cmd_ = app_.add_subcommand("analyze", "metrics, normalized matrices and figure of score files (.npy)");
  add_analyze_options(*analyze_cmd_, analyze_);
  figure_cmd_ = app_.add_subcommand("figure", "redraw the figure of a finished simulate or analyze run");
  figure_cmd_->add_option("DIR", figure_.dir, "the run's output directory")->required();
  figure_cmd_->add_option("--title", figure_.title, "figure title");
  reproduce_cmd_ = app_.add_subcommand("reproduce", "regenerate every simulated figure of the paper with its theory");
  add_reproduce_options(*reproduce_cmd_, reproduce_);
  llama_cmd_ = app_.add_subcommand("llama", "mean scores and the sub-step trace of a Llama-style checkpoint (Sec. 4.2, 5.2)");
  add_llama_options(*llama_cmd_, llama_);
}

std::optional<CommandLine::Stop> CommandLine::parse(int argc, const char* const* argv) {
  try {
    app_.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    const auto parsed = app_.get_subcommands();
    return Stop{0, parsed.empty() ? app_.help() : parsed.front()->help()};
  } catch (const CLI::CallForAllHelp&) {
    return Stop{0, app_.help("", CLI::AppFormatMode::All)};
  } catch (const CLI::CallForVersion&) {
    return Stop{0, std::string(version_string) + "\n"};
  } catch (const CLI::ParseError& error) {
    std::string message = error.what();
    for (char& c : message)
      if (c == '\n' || c == '\r') c = ' ';
    return Stop{2, "maskpos: error: " + (message.empty() ? std::string("invalid command line") : message) + "\n"};
  }
  simulate_.dim_given = simulate_cmd_->count("--dim") > 0;
  llama_.trace_given = llama_cmd_->count("--trace-layer") > 0;
  llama_.tokens_given = llama_cmd_->count("--tokens") > 0;
  llama_.tokens_file_given = llama_cmd_->count("--tokens-file") > 0;
  llama_.batch_file_given = llama_cmd_->count("--batch-file") > 0;
  return std::nullopt;
}

void CommandLine::check() const {
  if (*simulate_cmd_) {
    (void)make_run_spec(simulate_);
  } else if (*analyze_cmd_) {
    if (analyze_.mask != "causal" && analyze_.mask != "bidirectional")
      throw UsageError("--mask " + analyze_.mask + ": must be causal or bidirectional");
  } else if (*reproduce_cmd_) {
    check_reproduce_args(reproduce_);
  } else if (*llama_cmd_) {
    check_llama_args(llama_);
  }
}

int CommandLine::run() const {
  if (*simulate_cmd_) return simulate_command(simulate_);
  if (*analyze_cmd_) return analyze_command(analyze_);
  if (*figure_cmd_) return figure_command(figure_);
  if (*reproduce_cmd_) return reproduce_command(reproduce_);
  if (*llama_cmd_) return llama_command(llama_);
  return 1;
}

}  // namespace maskpos::cli
