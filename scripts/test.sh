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
rc=0
OMP_NUM_THREADS=1 ctest --output-on-failure --parallel "$jobs" "$@" || rc=$?

# ctest counts a suite as one entry: one whose CPU cases pass and whose GPU cases skip is
# "passed". Add up the GoogleTest cases that skipped, by reason (tests/test_main.cpp prints
# "[ aim skip ] Suite.Test: reason" for each), and name the passed entries that skipped some.
log=Testing/Temporary/LastTest.log
if [ -f "$log" ]; then
  awk '
    /^[0-9]+\/[0-9]+ Test: / { entry = $0; sub(/^[0-9]+\/[0-9]+ Test: /, "", entry); ran = 0; skips = 0; next }
    /^\[==========\] [0-9]+ tests? from .* ran\./ { ran = $2 }
    /^\[ aim skip \] / {
      reason = $0; sub(/^\[ aim skip \] [^ ]+: /, "", reason)
      by_reason[reason]++; total++; skips++
    }
    /^Test Passed\./ && skips > 0 && skips < ran { partial = partial sprintf("\n  %s (%d of %d)", entry, skips, ran); npartial++ }
    /^Test Passed\./ || /^Test Failed/ || /^Test Skipped/ { skips = 0 }
    END {
      if (total == 0) { print "GoogleTest cases skipped: none"; exit }
      printf "GoogleTest cases skipped: %d, by reason:\n", total; fflush()
      for (r in by_reason) printf "%7d  %s\n", by_reason[r], r | "sort -rn"
      close("sort -rn")
      if (npartial > 0) printf "Entries counted as passed that skipped some of their cases (%d):%s\n", npartial, partial
    }' "$log"
fi
exit "$rc"
