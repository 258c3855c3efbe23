#!/usr/bin/env bash
# The paper's evaluation of a checkpoint: 50,000 samples with uniformly drawn class labels, as the
# LlamaGen evaluation AiM's README points to draws them, and the published sampling settings, on
# every local GPU through mpirun; then `aim eval` against ADM's ImageNet 256x256 reference batch
# (IS, FID, sFID, precision, recall).
#
#   scripts/fid.sh CKPT OUTDIR [extra aim sample flags, e.g. --cfg 1.75 --seed 1; those the script
#                               sets (--num-samples, --labels, --preset, --batch-size, --device,
#                               --npz) through the variables below]
#
# Environment:
#   AIM_FID_REF            reference batch (default VIRTUAL_imagenet256_labeled.npz)
#   AIM_INCEPTION_WEIGHTS  FID Inception-v3 .safetensors (tools/convert_checkpoint.py --kind inception)
#   AIM_NPROC              processes (default: the GPUs in CUDA_VISIBLE_DEVICES when set, else the
#                          number nvidia-smi lists; 1 on the CPU)
#   AIM_DEVICE             cuda (default) or cpu (a check of the pipeline on a few samples)
#   AIM_NUM_SAMPLES        samples (default 50000)
#   AIM_BATCH_SIZE         images per sampling batch and rank (default 125)
#   AIM_FID_LABELS         random (default, the published protocol) or balanced (50 per class)
#   AIM_BUILD_DIR          build directory (default build; a relative one is taken from the
#                          repository, as scripts/demo.sh and scripts/test.sh take it)
# Writes OUTDIR/samples.npz (resumable: finished batches stay in OUTDIR/samples.npz.parts/),
# OUTDIR/eval.txt and OUTDIR/eval.json.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [[ $# -lt 2 ]]; then
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
ckpt=$1
outdir=$2
shift 2

build=${AIM_BUILD_DIR:-build}
[[ "$build" = /* ]] || build="$root/$build"
aim="$build/aim"
ref=${AIM_FID_REF:-VIRTUAL_imagenet256_labeled.npz}
inception=${AIM_INCEPTION_WEIGHTS:-}
num=${AIM_NUM_SAMPLES:-50000}
batch=${AIM_BATCH_SIZE:-125}

fail() { echo "fid.sh: $*" >&2; exit 1; }
[[ -x "$aim" ]] || fail "no aim executable at $aim; ---> HINT: run scripts/test.sh or set AIM_BUILD_DIR"
[[ -e "$ckpt" ]] || fail "checkpoint '$ckpt' does not exist"
[[ -f "$ref" ]] || fail "reference batch '$ref' not found (set AIM_FID_REF); ---> HINT: download VIRTUAL_imagenet256_labeled.npz from the ADM evaluations README (github.com/openai/guided-diffusion/tree/main/evaluations)"
[[ -n "$inception" && -f "$inception" ]] || fail "set AIM_INCEPTION_WEIGHTS to the converted FID Inception weights (found '${inception}'); ---> HINT: python3 tools/convert_checkpoint.py pt_inception-2015-12-05-6726825d.pth --kind inception --out pt_inception.safetensors"

device=${AIM_DEVICE:-cuda}
[[ "$device" == cuda || "$device" == cpu ]] || fail "AIM_DEVICE: expected cuda or cpu, found '$device'"
if [[ -n "${AIM_NPROC:-}" ]]; then
  nproc_gpu=$AIM_NPROC
elif [[ "$device" == cpu ]]; then
  nproc_gpu=1
elif [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
  # The GPUs this job may use (a scheduler's share of the node), not every GPU nvidia-smi lists.
  nproc_gpu=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c '[^[:space:]]' || true)
elif command -v nvidia-smi >/dev/null 2>&1; then
  nproc_gpu=$(nvidia-smi -L | grep -c '^GPU' || true)
else
  nproc_gpu=0
fi
[[ "$nproc_gpu" =~ ^[0-9]+$ && "$nproc_gpu" -ge 1 ]] || fail "no GPU found (CUDA_VISIBLE_DEVICES '${CUDA_VISIBLE_DEVICES:-}', nvidia-smi -L lists none; AIM_NPROC '${AIM_NPROC:-}'); 50,000 samples need GPUs ---> HINT: AIM_DEVICE=cpu AIM_NUM_SAMPLES=100 checks the pipeline on the CPU"

mkdir -p "$outdir"
launch=()
if [[ "$nproc_gpu" -gt 1 ]]; then
  command -v mpirun >/dev/null || fail "mpirun not found (apt-get install openmpi-bin), needed for $nproc_gpu GPUs"
  launch=(mpirun -np "$nproc_gpu")
  [[ $(id -u) == 0 ]] && launch+=(--allow-run-as-root)
fi

echo "== sampling $num images on $nproc_gpu process(es), device $device -> $outdir/samples.npz"
"${launch[@]}" "$aim" sample --ckpt "$ckpt" --num-samples "$num" --labels "${AIM_FID_LABELS:-random}" --preset fid \
  --batch-size "$batch" --device "$device" --npz "$outdir/samples.npz" "$@"

echo "== evaluating against $ref"
"$aim" eval --samples "$outdir/samples.npz" --ref "$ref" --inception "$inception" --device "$device" \
  --json "$outdir/eval.json" | tee "$outdir/eval.txt"
