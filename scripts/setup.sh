#!/usr/bin/env bash
# Installs everything the build, the tests and the tools need on a fresh Debian 12 machine.
# Idempotent; runs as root (no sudo). Debian packages through apt-get, Python packages into the
# project virtual environment .venv (git-ignored), pinned.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# PyTorch 2.11.0 on PyPI is built for CUDA 13.0, the toolkit of our machines and of the GPU image.
TORCH_VERSION=${AIM_TORCH_VERSION:-2.11.0}
# lpips (with torchvision, which it imports) is the reference of the LPIPS parity test; the
# constraints pin the torchvision that matches the default torch. tensorboard views a run's
# tensorboard/ folder (.venv/bin/tensorboard --logdir runs), and its event reader checks ours.
PY_PACKAGES=("torch==${TORCH_VERSION}" "numpy==2.2.6" "safetensors==0.6.2" "packaging==25.0" "pillow==11.3.0" "matplotlib==3.10.9"
             "torchvision" "lpips==0.1.4" "tensorboard==2.21.0")

DEB_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  python3 python3-venv python3-pip
  libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev libstb-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev zlib1g-dev libjpeg62-turbo-dev
  openmpi-bin libopenmpi-dev libgloo-dev
  clang libclang-rt-14-dev
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: missing Debian packages: ${missing[*]}" >&2
    echo "---> HINT: run scripts/setup.sh as root, or install them with apt-get" >&2
    exit 1
  fi
  echo "setup.sh: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian interpreter: its venv module comes from python3-venv installed above.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
if [ ! -x .venv/bin/python ]; then
  echo "setup.sh: creating .venv"
  "$PY" -m venv .venv
fi
# With the default torch, everything pip installs is pinned (scripts/python-constraints.txt);
# another AIM_TORCH_VERSION resolves its dependencies afresh.
constraints=()
[ "$TORCH_VERSION" = 2.11.0 ] && constraints=(-c "$root/scripts/python-constraints.txt")
stamp=.venv/.aim-packages
want="${PY_PACKAGES[*]}"
stamped="$want"  # and the constraints' digest, so that a changed pin installs again
if [ ${#constraints[@]} -gt 0 ]; then
  stamped="$want constraints $(sha256sum scripts/python-constraints.txt | cut -c1-16)"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$stamped" ]; then
  echo "setup.sh: installing Python packages: $want"
  # pip downloads every wheel (torch and its CUDA libraries: 2.6 GiB) into TMPDIR before it installs
  # them. /tmp may be a small tmpfs or a nearly full disk: keep the downloads beside .venv.
  # Measured on 2026-12-06 with torch 2.11.0: 7.4 GiB at the peak (2.6 GiB of downloads, 4.8 GiB
  # installed). With less, pip would fail part-way: say so before it starts. When this torch is
  # installed already (a changed pin or package list), its CUDA libraries and triton, which it
  # pins exactly, stay: the rest is about 350 MiB installed.
  need_mib=7400
  if .venv/bin/python -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" \
      2>/dev/null; then
    need_mib=1000
  fi
  free_mib=$(df -Pm "$root/.venv" | awk 'NR == 2 { print $4 }')
  if [ -n "$free_mib" ] && [ "$free_mib" -lt "$need_mib" ]; then
    echo "setup.sh: the Python packages need ${need_mib} MiB free in $root/.venv" \
      "while installing; found ${free_mib} MiB" >&2
    df -h "$root/.venv" >&2 || true
    exit 1
  fi
  pip_tmp="$root/.venv/.pip-tmp"
  rm -rf "$pip_tmp" && mkdir -p "$pip_tmp"
  if ! TMPDIR="$pip_tmp" .venv/bin/python -m pip install -q --disable-pip-version-check \
      --no-cache-dir "${constraints[@]}" "${PY_PACKAGES[@]}"; then
    rm -rf "$pip_tmp"
    echo "setup.sh: pip could not install: $want" >&2
    echo "setup.sh: free space where it writes ($root/.venv):" >&2
    df -h "$root/.venv" >&2 || true
    echo "---> HINT: they need about ${need_mib} MiB free there while installing" >&2
    exit 1
  fi
  rm -rf "$pip_tmp"
  echo "$stamped" > "$stamp"
fi
.venv/bin/python -c 'import torch; print("setup.sh: torch", torch.__version__, "cuda", torch.version.cuda)'
# The official AiM's library code (mamba_ssm 2.2.2, causal-conv1d 1.5.2, einops; pinned and
# hash-checked) into .official/, for the speed baseline tools/bench/official_baseline.py and its
# check against the fixtures in the tests.
.venv/bin/python tools/bench/official_baseline.py fetch .official
