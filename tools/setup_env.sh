#!/usr/bin/env bash
# Sets up (or checks) the project's virtual environment at .venv in the repo root.
#
#   bash tools/setup_env.sh              # Python environment only
#   bash tools/setup_env.sh --with-slurm # also install Slurm + munge from Debian (needs root)
#
# Idempotent: when everything is already installed it only verifies imports (a few seconds).
# A Detectron2 that is already importable in the environment (e.g. built from source) is kept.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PAPLOSS_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
WITH_SLURM=0
for arg in "$@"; do
  case "$arg" in
    --with-slurm) WITH_SLURM=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

say() { echo "[setup] $*"; }

TORCH_SPEC=("torch==2.14.1" "torchvision==0.29.1")
RUNTIME_DEPS=(
  "numpy" "scipy" "Pillow<10" "pycocotools" "fvcore" "iopath" "yacs" "tabulate" "termcolor"
  "cloudpickle" "tqdm" "tensorboard" "omegaconf" "hydra-core" "matplotlib" "submitit" "pyyaml"
  "cmaes" "setuptools<81" "pytest" "pytest-timeout"
)

if [ "$WITH_SLURM" = 1 ]; then
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    say "Slurm and munge already installed"
  else
    say "installing Slurm + munge from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  fi
fi

STAMP="$VENV/.paploss-setup-stamp"
WANT_STAMP=$(cat "$0" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
CHECK='import torch, torchvision, detectron2, pycocotools, scipy, submitit, cmaes, paploss'

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT_STAMP" ] \
    && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  say "environment at .venv is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment .venv"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  say "installing ${TORCH_SPEC[*]}"
  "${PIP[@]}" install -q "${TORCH_SPEC[@]}"
fi

say "installing runtime dependencies"
"${PIP[@]}" install -q "${RUNTIME_DEPS[@]}"

if "$PY" -c 'import detectron2' 2>/dev/null; then
  say "keeping the Detectron2 already installed ($("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))'))"
else
  # Detectron2 is not on the registry under its own name. pb1-detectron2==0.6 carries the official
  # v0.6 Python sources without the C++ part; build it with an empty extension module.
  say "installing Detectron2 v0.6 sources (pb1-detectron2) with an empty compiled module"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  if "$PY" -c 'import sys, pip; v=tuple(int(x) for x in pip.__version__.split(".")[:2]); sys.exit(v >= (26, 2))'; then :; else
    "${PIP[@]}" install -q "pip<26.2"
  fi
  "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$WORK" "pb1-detectron2==0.6"
  tar -xzf "$WORK"/pb1*detectron2-0.6.tar.gz -C "$WORK"
  SRC=$(find "$WORK" -maxdepth 1 -mindepth 1 -type d | head -n1)
  mkdir -p "$SRC/detectron2/layers/csrc"
  cat > "$SRC/detectron2/layers/csrc/vision.cpp" <<'CPP'
// Python-only build: no compiled ops, only the version queries used by collect_env_info().
#include <torch/extension.h>
#include <string>
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", []() { return std::string("none (Python-only build)"); });
  m.def("get_cuda_version", []() { return std::string("none (Python-only build)"); });
}
CPP
  MAX_JOBS=2 "${PIP[@]}" install -q --no-build-isolation --no-deps "$SRC"
fi

say "installing paploss (editable)"
"${PIP[@]}" install -q --no-build-isolation --no-deps -e "$ROOT"

"$PY" -c "$CHECK"
echo "$WANT_STAMP" > "$STAMP"
say "done: activate with 'source .venv/bin/activate'"
