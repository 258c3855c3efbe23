#!/usr/bin/env bash
# Runs one command of a benchmark program and passes when it exits with STATUS and its output
# (stdout and stderr) contains TEXT. Timings are printed, never checked.
#   tests/bench_smoke.sh STATUS TEXT PROGRAM [ARGS...]
set -uo pipefail
want=$1 text=$2
shift 2
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne "$want" ]; then
  echo "bench_smoke: $1 exited with status $rc, expected $want" >&2
  exit 1
fi
if ! grep -qF -- "$text" <<<"$out"; then
  echo "bench_smoke: the output of $1 lacks '$text'" >&2
  exit 1
fi
