// The `aim` executable: subcommands, one error report, non-zero exit on any failure.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <iostream>

#include "aim/cli/commands.h"
#include "aim/core/build_info.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/ops/dispatch.h"

int main(int argc, char** argv) {
  aim::tune_host_allocator();
  CLI::App app{"aim: autoregressive image generation with Mamba (AiM) - train, sample, evaluate"};
  app.require_subcommand(0, 1);
  bool version = false;
  app.add_flag("--version", version, "print the build (aim, LibTorch, CUDA) and exit");
  std::vector<aim::cli::Runner> runners;
  runners.push_back(aim::cli::add_info_command(app));
  runners.push_back(aim::cli::add_extract_codes_command(app));
  runners.push_back(aim::cli::add_sample_command(app));
  runners.push_back(aim::cli::add_train_command(app));
  runners.push_back(aim::cli::add_train_vq_command(app));
  runners.push_back(aim::cli::add_eval_vq_command(app));
  runners.push_back(aim::cli::add_eval_loss_command(app));
  runners.push_back(aim::cli::add_eval_command(app));
  runners.push_back(aim::cli::add_make_dataset_command(app));
  runners.push_back(aim::cli::add_analyse_shapes_command(app));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (version) {
      const char* isa = aim::ops::cpu_kernel_isa();  // throws on a bad AIM_CPU_ISA
      std::cout << aim::build_info() << " | CPU kernels " << (aim::ops::cpu_kernels_enabled() ? isa : "off")
                << "\n";
      return 0;
    }
    for (auto& run : runners) {
      const int rc = run();
      if (rc >= 0) return rc;
    }
  } catch (const aim::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  std::cout << app.help() << "\n";
  return 2;
}
