#pragma once
// Subcommands of the `aim` executable. Each registers its flags on the CLI11 app and returns
// the function that runs it; errors are thrown as aim::Error and reported by main().
#include <CLI/CLI.hpp>

#include <functional>

namespace aim::cli {

using Runner = std::function<int()>;

/// `aim info <config.yaml | config.json | checkpoint dir>`: architecture, parameter counts,
/// memory estimates.
Runner add_info_command(CLI::App& app);

}  // namespace aim::cli
