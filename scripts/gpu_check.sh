#!/usr/bin/env bash
# The one command for the GPU machine: build the CUDA configuration against the preinstalled
# PyTorch's LibTorch, run the whole test suite, then the model-level parity tests with the model
# on the GPU, and print a short table last.
#
#   scripts/gpu_check.sh --fetch   # here (with registries): download the Debian -dev packages
#                                  # into .deb/ so they travel with the tree
#   scripts/gpu_check.sh           # there: unpack .deb/ into a private prefix, build, test
#   scripts/gpu_check.sh --gpu     # there, for a short lease: build, then only the tests that use
#                                  # the GPU (one process), the sanitizers and the AiM-L benchmarks
#
# The GPU machine reaches no package registry, so its Debian dependencies come as .deb files
# unpacked with dpkg -x (never installed into /).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
DEBS=(libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
      libcli11-dev libstb-dev libstb0 nlohmann-json3-dev libgtest-dev libgmock-dev googletest
      libgloo-dev  # headers only: LibTorch holds Gloo itself but ships none of its headers
      zlib1g-dev)  # its libz.so links to the system's /lib/x86_64-linux-gnu/libz.so.1.2.13; where
                   # that is absent, CMake's FindZLIB takes the package's libz.a instead

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p .deb && cd .deb
  apt-get download "${DEBS[@]}"
  echo "gpu_check.sh: $(ls ./*.deb | wc -l) packages in .deb/ (pass carry: [\".deb\"] to the device run)"
  exit 0
fi

mode=full
[ "${1:-}" = "--gpu" ] && mode=gpu
out=${OUT:-$root/build-gpu/out}
mkdir -p "$out"
prefix=/tmp/aim-deps
rm -rf "$prefix" && mkdir -p "$prefix"
if ls .deb/*.deb >/dev/null 2>&1; then
  for f in .deb/*.deb; do dpkg -x "$f" "$prefix"; done
else
  echo "gpu_check.sh: no .deb/ folder: run 'scripts/gpu_check.sh --fetch' where apt works and carry .deb" >&2
fi
# Debian's CMake package files live under the prefix; point every search there.
libdir="$prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}"
export CPATH="$prefix/usr/include:${CPATH:-}"
PY=${AIM_PYTHON:-$(command -v python3)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'

status_build=FAIL status_tests=FAIL status_parity=FAIL status_sanitize=SKIP
targets=""
[ "$mode" = gpu ] && targets="--target aim aim_tests bench_train bench_ops bench_sample"
# The tests that launch CUDA work (kernel tests, CUDA op cases); the model parity and training
# tests follow with the model on the GPU.
gpu_filter='*Cuda*:*cuda*:*CUDA*'
# Small cases of the kernel tests for the sanitizers (10-100x slower under them).
sanitize_filter='*CausalConv1dCuda*B1_*:*CausalConv1dUpdateCuda*B1_*:*CausalConv1dUpdateCuda*B2_*:*CausalConv1dCuda*B3_*:*NormsCuda*Edge*:*SsdStateUpdate*cuda*:*SsdDecodeStepCuda*B1_*:*SsdDecodeStepCuda*B3_*:*LinearCrossEntropyCuda*N1_*:*LinearCrossEntropyCuda*N257*:*SsdScanCuda*Edge_B1_L1_*:*SsdScanCuda*Edge_B1_L33_*:*SsdScanCuda*Edge_B1_L40_H8_P32_G4_N16_*:*SelectiveScanCuda*Edge_*:*SelectiveScanCudaStep*:*SampleTokensCuda.StepOnTheDevice*'

t0=$(date +%s)
# The emulated-kernel tests are CI's stand-in for this machine: not built here.
if cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DAIM_CUDA=ON -DAIM_FUZZ=OFF \
      -DAIM_BUILD_EMU_TESTS=OFF \
      -DAIM_PYTHON="$PY" -DCMAKE_PREFIX_PATH="$prefix/usr;$libdir/cmake;$prefix/usr/share/cmake" \
      -DSTB_INCLUDE_DIR="$prefix/usr/include/stb" 2>&1 | tee "$out/configure.log" | tail -5 &&
   cmake --build build-gpu --parallel "$(nproc)" $targets 2>&1 | tee "$out/build.log" | tail -5; then
  [ -x build-gpu/tests/aim_tests ] && status_build=OK
fi
t1=$(date +%s)
if [ "$status_build" = OK ]; then
  if [ "$mode" = full ]; then
    (cd build-gpu && ctest --output-on-failure --parallel "$(nproc)" 2>&1 | tee "$out/ctest.log" | tail -15) &&
      status_tests=OK
  else
    # One process: CUDA start-up once instead of once per test.
    build-gpu/tests/aim_tests --gtest_filter="$gpu_filter" > "$out/ctest.log" 2>&1 && status_tests=OK
    grep -E "^\[  (FAILED|PASSED|SKIPPED) " "$out/ctest.log" | tail -20
  fi
  AIM_TEST_DEVICE=cuda build-gpu/tests/aim_tests --gtest_filter='*Parity*:TrainerTest.LossFalls*:TrainerTest.Bf16*' 2>&1 |
    tee "$out/parity_cuda.log" | grep -E "case|max\|diff\||PASSED|FAILED" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] && status_parity=OK
  if command -v compute-sanitizer >/dev/null; then
    status_sanitize=OK
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 9 build-gpu/tests/aim_tests \
        --gtest_filter="$sanitize_filter" > "$out/sanitize_$tool.log" 2>&1 || status_sanitize=FAIL
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$out/sanitize_$tool.log" | tail -3
    done
  fi
fi
t2=$(date +%s)
status_bench=SKIP
if [ "$status_build" = OK ]; then
  status_bench=OK
  configs="aim_b aim_l"; precision=both
  [ "$mode" = gpu ] && configs="aim_l" && precision=bf16
  for c in $configs; do
    build-gpu/bench/bench_ops configs/$c.yaml --micro 64 --repeats 10 2>&1 | tee -a "$out/bench_ops.log" || status_bench=FAIL
    build-gpu/bench/bench_train configs/$c.yaml --micro 64 --steps 10 --warmup 3 --precision $precision \
      --kernels both 2>&1 | tee -a "$out/bench_train.log" || status_bench=FAIL
  done
  # Sampling: model steps (eager and CUDA graph) against the step's memory roofline, and decode.
  for b in 1 16 64 256; do
    novq=""; [ "$b" -ge 64 ] && novq=--no-vq  # the fp32 decode of 64+ images at once: memory
    build-gpu/bench/bench_sample configs/aim_l.yaml --batch $b --cfg 1.75 --dtype bf16 --device cuda $novq \
      2>&1 | tee -a "$out/bench_sample.log" || status_bench=FAIL
  done
  # The bf16 ssm state (aim sample --ssm-state bf16) where state traffic matters most.
  build-gpu/bench/bench_sample configs/aim_l.yaml --batch 256 --cfg 1.75 --dtype bf16 --ssm-state bf16 \
    --device cuda --no-vq 2>&1 | tee -a "$out/bench_sample.log" || status_bench=FAIL
fi
t3=$(date +%s)
gpu_cases=$(grep -cE '^\[ +OK \].*cuda' "$out/ctest.log" 2>/dev/null || echo 0)
skipped=$(grep -c "SKIPPED" "$out/ctest.log" 2>/dev/null || echo 0)
echo
echo "| step                          | result | seconds |"
echo "|-------------------------------|--------|---------|"
printf "| build (CUDA, sm_90a + PTX)    | %-6s | %7d |\n" "$status_build" $((t1 - t0))
printf "| tests (%-4s)                  | %-6s | %7d |\n" "$mode" "$status_tests" $((t2 - t1))
printf "| parity + training, on CUDA    | %-6s |         |\n" "$status_parity"
printf "| compute-sanitizer mem/race    | %-6s |         |\n" "$status_sanitize"
printf "| bench_ops, _train, _sample    | %-6s | %7d |\n" "$status_bench" $((t3 - t2))
grep -E "^(causal|add_|gated|rms|lm_head|ssd|selective)" "$out/bench_ops.log" 2>/dev/null || true
grep -E "^config|^\| (model|generate|roofline|VQ|end)" "$out/bench_sample.log" 2>/dev/null || true
grep -E "^(fp32|bf16) |speed-up" "$out/bench_train.log" 2>/dev/null || true
echo "GPU: $(cat "$out/gpu.txt"); skipped tests in ctest log: $skipped"
[ "$status_build$status_tests$status_parity" = OKOKOK ] && [ "$status_sanitize" != FAIL ]
