#!/usr/bin/env bash
# From a fresh Debian machine: install what is missing, configure, build (Release, all cores) and
# run every test with ctest's summary. Extra arguments go to ctest (e.g. -R Parity).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${AIM_BUILD_DIR:-build}
jobs=$(nproc)

scripts/setup.sh
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAIM_PYTHON="$root/.venv/bin/python"
cmake --build "$build" --parallel "$jobs"
cd "$build"
# One intra-op thread per test process: ctest already runs tests in parallel.
OMP_NUM_THREADS=1 ctest --output-on-failure --parallel "$jobs" "$@"
