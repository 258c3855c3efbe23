#!/usr/bin/env bash
# From a fresh machine: install, build, and run what the pipeline has today on built-in data.
# Today that is the language model: the paper's four sizes summarised, and the official tiny
# checkpoint in tests/fixtures loaded and checked against the official outputs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${AIM_BUILD_DIR:-build}
scripts/setup.sh
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAIM_PYTHON="$root/.venv/bin/python" >/dev/null
cmake --build "$build" --parallel "$(nproc)"
aim="$build/aim"
"$aim" --version
for size in aim_b aim_l aim_xl aim_1b; do
  echo "== $size"
  "$aim" info "configs/$size.yaml" | grep -E "d_model x n_layer|conditioning|total|batch 16"
done
echo "== official snapshot layout (tests/fixtures/aim/mamba2_tiny)"
"$aim" info tests/fixtures/aim/mamba2_tiny
echo "== parity with the official implementation"
"$build/tests/aim_tests" --gtest_filter='Fixtures/AimParity.*' | grep -E "case|diff|OK|PASSED|FAILED"
