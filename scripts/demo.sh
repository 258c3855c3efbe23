#!/usr/bin/env bash
# The whole pipeline on built-in data, from a fresh machine: install and build if needed, make the
# procedural shapes dataset, train the tokenizer (stage 1), tokenize the images, train a small AiM
# (stage 2), score it on held-out codes, sample every class at several guidance scales, let the
# learning-free analyser judge the samples, and print a report.
#
#   scripts/demo.sh                 full demo (12-15 minutes on 2 CPU cores with AMX, 28 with AVX2 only)
#   scripts/demo.sh --quick         smaller and shorter (4-7 minutes; what CI runs)
#   options: --out DIR (default runs/demo or runs/demo_quick in the repository; a relative DIR is
#            taken from the current folder; new, empty or an earlier demo's), --no-build (use an
#            existing build), --min-accuracy F (exit non-zero when the sample accuracy at any cfg
#            is below the fraction F, e.g. 0.9)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
caller=$PWD
cd "$root"

quick=0
build_it=1
vq_extra=()
out=""
min_accuracy=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --no-build) build_it=0 ;;
    --out|--min-accuracy)
      if [[ $# -lt 2 || -z "$2" ]]; then echo "demo.sh: $1 needs a value" >&2; exit 2; fi
      if [[ $1 == --out ]]; then
        out="$2"
        [[ "$out" = /* ]] || out="$caller/$out"  # relative to where it was called from
      else
        min_accuracy="$2"
        if ! [[ "$min_accuracy" =~ ^(0(\.[0-9]*)?|1(\.0*)?|\.[0-9]+)$ ]]; then
          echo "demo.sh: --min-accuracy: expected a fraction in [0, 1] (0.25 = 25%), found '$min_accuracy'" >&2
          exit 2
        fi
      fi
      shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (expected --quick, --out DIR, --no-build, --min-accuracy F)" >&2
       exit 2 ;;
  esac
  shift
done

if [[ -z "$out" ]]; then
  if [[ $quick == 1 ]]; then out=runs/demo_quick; else out=runs/demo; fi
fi
# (Before the build, which can take half an hour on a fresh machine.)
# The stages delete data/, vq/, aim/, samples/, ... inside --out: only a demo's folder (it has
# timings.txt from the start) or an empty one is taken.
if [[ -e "$out" && ! -f "$out/timings.txt" && -n "$(ls -A "$out" 2>/dev/null)" ]]; then
  echo "demo.sh: --out $out: holds files of something other than a demo, which the demo would delete" >&2
  echo "---> HINT: give a new or empty folder, or the folder of an earlier demo" >&2
  exit 2
fi
case "$out" in
  *,*) echo "demo.sh: --out $out: contains a comma, which aim sample --prompt takes as a separator" >&2
       exit 2 ;;
esac

build=${AIM_BUILD_DIR:-build}
if [[ $build_it == 1 ]]; then
  scripts/setup.sh
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAIM_PYTHON="$root/.venv/bin/python" >/dev/null
  cmake --build "$build" --parallel "$(nproc)" --target aim
fi
aim="$root/$build/aim"
[[ "$build" = /* ]] && aim="$build/aim"
if [[ ! -x "$aim" ]]; then
  echo "demo.sh: $aim not found: build first (run without --no-build)" >&2
  exit 1
fi
python="$root/.venv/bin/python"
[[ -x "$python" ]] || python=$(command -v python3)

# Sizes. The full demo is the one measured in docs/perf.md; the quick one only shows every stage
# working (CI checks that its samples are far above chance).
if [[ $quick == 1 ]]; then
  per_class=300; heldout_per_class=10
  vq_steps=600; aim_steps=400; cfgs="3"; per_class_samples=10
  # fp32 tokenizer: colour appears around step 600, and in bf16 on a CPU with AMX it had not yet
  # (held-out PSNR 20 dB, every shape beige, analyser 2-20% on the reconstructions) where fp32
  # reached 24.4 dB and 58% (docs/perf.md, 2026-12-02).
  # It also keeps the batch of 16 it was measured with (the full demo's tokenizer takes 12).
  vq_extra=(--set train.precision=fp32 --set train.global_batch=16 --set train.micro_batch=16)
else
  per_class=1000; heldout_per_class=20
  vq_steps=3000; aim_steps=1800; cfgs="2 3 4"; per_class_samples=20
fi
# Guidance only among the conditional model's top-90% tokens: at cfg 4 unguarded guidance turned
# discs into crescents and put stray colours into shapes (docs/perf.md, "Guidance in the tails").
cfg_top_p=0.9
# Intra-op threads: all cores unless the caller chose.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
timings="$out/timings.txt"
: > "$timings"
t_start=$SECONDS

stage() {  # stage NAME COMMAND...: run, show its output, record its time
  local name=$1; shift
  local t0=$SECONDS
  echo
  echo "== $name"
  "$@"
  echo "$name $((SECONDS - t0))" >> "$timings"
}

classes=0,1,2,3,4,5,6,7,8,9

# The stages are functions run under this script's `set -euo pipefail`: a failing command or
# pipeline stops the demo there (paths reach them as variables, never re-quoted into a string).
make_data() {
  rm -rf "$out/data"
  "$aim" make-dataset shapes --out "$out/data/train" --per-class $per_class --size 64 --seed 0
  "$aim" make-dataset shapes --out "$out/data/heldout" --per-class $heldout_per_class --size 64 --seed 1
  "$aim" analyse-shapes "$out/data/train" --json "$out/data/analysis.json" | grep -E '^(analysed|accuracy)'
}
stage "dataset" make_data

# The data were made anew, so runs of an earlier demo in the same --out are stale: train afresh
# (aim train refuses to start a new run over an existing one).
rm -rf "$out/vq" "$out/aim"
stage "tokenizer training" "$aim" train-vq configs/vq_demo.yaml --out "$out/vq" \
  --set data.images="$out/data/train" --set train.max_steps=$vq_steps "${vq_extra[@]}"

evaluate_tokenizer() {
  rm -rf "$out/vq_eval" "$out/vq_eval.json"
  "$aim" eval-vq --vq "$out/vq" --data "$out/data/heldout" --image-size 64 \
    --json "$out/vq_eval.json" --save-recon "$out/vq_eval/recon"
  echo 'the analyser on the reconstructions of the held-out images:'
  "$aim" analyse-shapes "$out/vq_eval/recon" --json "$out/vq_eval/analysis.json" | grep -E '^(accuracy|  confused)'
}
stage "tokenizer evaluation" evaluate_tokenizer

# Codes of an earlier run's tokenizer in the same --out are stale: extract afresh.
rm -f "$out/codes.safetensors" "$out"/codes.safetensors.*
stage "tokenization" "$aim" extract-codes --data "$out/data/train" --vq "$out/vq" \
  --out "$out/codes.safetensors" --aug flip --image-size 64

stage "AiM training" "$aim" train configs/aim_demo.yaml --out "$out/aim" \
  --set data.codes="$out/codes.safetensors" --set vq.weights="$out/vq" \
  --set train.max_steps=$aim_steps

# The held-out images as codes; the model's loss on them, its recurrent decoder checked against
# the parallel pass, and what the official decoder's position shift would cost this model.
held_out_loss() {
  rm -f "$out/heldout.codes" "$out/heldout.codes".* "$out/heldout_loss.json" "$out/heldout_loss_offset1.json"
  "$aim" extract-codes --data "$out/data/heldout" --vq "$out/vq" --out "$out/heldout.codes" --aug none \
    --image-size 64 | tail -n 1
  "$aim" eval-loss --ckpt "$out/aim" --codes "$out/heldout.codes" --recurrent --quiet \
    --json "$out/heldout_loss.json" --heatmap "$out/heldout_loss.png"
  "$aim" eval-loss --ckpt "$out/aim" --codes "$out/heldout.codes" --decode-position-offset 1 --quiet \
    --json "$out/heldout_loss_offset1.json" | grep -F "decoder's positions"
}
stage "held-out loss" held_out_loss

sample_at() {  # sample_at CFG
  local cfg=$1
  rm -rf "$out/samples/cfg$cfg" "$out/samples/cfg$cfg.png" "$out/samples/cfg$cfg.json"
  mkdir -p "$out/samples"
  "$aim" sample --ckpt "$out/aim" --class $classes --num $per_class_samples --cfg "$cfg" --cfg-top-p $cfg_top_p \
    --seed 1 --batch-size 100 --outdir "$out/samples/cfg$cfg" --out "$out/samples/cfg$cfg.png" --nrow $per_class_samples
  "$aim" analyse-shapes "$out/samples/cfg$cfg" --json "$out/samples/cfg$cfg.json"
}
for cfg in $cfgs; do
  stage "sampling cfg $cfg" sample_at "$cfg"
done
# Continuation: the top half (4 of 8 token rows) of one held-out image per class, read in one
# parallel pass, and 5 continuations of each in its own class.
continue_prompts() {
  local prompts d first
  prompts=""
  for d in "$out"/data/heldout/*/; do
    first=$(ls "$d"*.png | head -n 1)
    prompts+=${prompts:+,}$first
  done
  rm -rf "$out/samples/continue" "$out/samples/continue.png" "$out/samples/continue.json"
  "$aim" sample --ckpt "$out/aim" --prompt "$prompts" --prompt-rows 4 --class $classes --num 5 --cfg 3 \
    --cfg-top-p $cfg_top_p --seed 1 --batch-size 50 --outdir "$out/samples/continue" --out "$out/samples/continue.png"
  "$aim" analyse-shapes "$out/samples/continue" --json "$out/samples/continue.json" | grep -E '^accuracy'
}
stage "continuation" continue_prompts
echo "total $((SECONDS - t_start))" >> "$timings"

echo
report_args=(--out "$out" --cfgs $cfgs)
[[ -n "$min_accuracy" ]] && report_args+=(--min-accuracy "$min_accuracy")
[[ $quick == 0 ]] && report_args+=(--targets)
"$python" scripts/demo_report.py "${report_args[@]}"
