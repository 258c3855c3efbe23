#!/usr/bin/env bash
# From a fresh machine: install, build, and run what the pipeline has today on built-in data.
# Today: the paper's four sizes summarised, a grid sampled from the official tiny checkpoint in
# tests/fixtures, and that checkpoint checked against the official outputs.
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
echo "== sampling from the official tiny checkpoint (random weights: noise images, real pipeline)"
mkdir -p runs/demo
"$aim" sample --ckpt tests/fixtures/aim/mamba2_tiny --vq-config configs/fixture_tiny_vq.json \
  --class 0,1,2,3 --num 4 --cfg 3 --seed 1 --out runs/demo/fixture_grid.png --tokens runs/demo/fixture_tokens.safetensors
echo "== parity with the official implementation"
"$build/tests/aim_tests" --gtest_filter='Fixtures/AimParity.*' | grep -E "case|diff|OK|PASSED|FAILED"
