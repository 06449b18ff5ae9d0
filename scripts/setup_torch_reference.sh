#!/usr/bin/env bash
# Sets up the PyTorch side of the throughput comparison (experiments/torch_reference.py):
#   * .venv-torch: a CPU build of torch 2.13.0 plus what the reference imports at module level
#     (numpy, thop, matplotlib, tensorboard for torch.utils.tensorboard, pillow, tqdm).
#     torchvision is NOT installed (the PyPI wheel does not match torch 2.13.0); the harness
#     replaces it with a stub module from outside.
#   * with WITH_TORCHVISION=1, torchvision 0.28.0 (the release of torch 2.13) under .torchvision,
#     for whole runs of the reference's own scripts (scripts/reference_fullrun.sh): installed
#     without dependencies (its PyPI wheel pins the CUDA torch build); its compiled ops are built
#     for that build and do not load against torch 2.13.0+cpu, so they and their meta
#     registrations are removed: the reference uses only the pure-Python datasets, transforms and
#     save_image (JPEG via PIL). Used through PYTHONPATH only, so the benchmark harness keeps
#     its stub.
#   * optionally, the reference snapshot (zlijingtao/ResSFL) extracted to the directory given as
#     the first argument, from the bare mirror in $RESSFL_MIRROR.
# Idempotent: re-running only installs or extracts what is missing.
#
# Usage: bash scripts/setup_torch_reference.sh [REFERENCE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv-torch/bin/python ]; then
  "$PYTHON" -m venv .venv-torch
fi
if ! .venv-torch/bin/python -c "import torch, numpy, thop, matplotlib, tensorboard, PIL, tqdm" \
    2>/dev/null; then
  .venv-torch/bin/python -m pip install -q torch==2.13.0 numpy thop matplotlib tensorboard \
    pillow tqdm
fi

if [ "${WITH_TORCHVISION:-0}" = 1 ] && [ ! -f .torchvision/torchvision/__init__.py ]; then
  tmp=$(mktemp -d)
  .venv-torch/bin/python -m pip download -q torchvision==0.28.0 --no-deps -d "$tmp"
  .venv-torch/bin/python -m pip install -q --no-deps --target .torchvision "$tmp"/torchvision-*.whl
  echo "# removed by setup_torch_reference.sh: the compiled ops do not load on torch+cpu" \
    > .torchvision/torchvision/_meta_registrations.py
  rm -f .torchvision/torchvision/_C.so
  rm -rf "$tmp"
  PYTHONPATH=.torchvision .venv-torch/bin/python -c \
    "import torchvision.datasets, torchvision.transforms, torchvision.utils"
fi

if [ $# -ge 1 ]; then
  REF_DIR=$1
  MIRROR=${RESSFL_MIRROR:-/work/.mirror/zlijingtao+ResSFL/repo}
  if [ ! -f "$REF_DIR/MIA_torch.py" ]; then
    mkdir -p "$REF_DIR"
    git --git-dir="$MIRROR" archive HEAD | tar -x -C "$REF_DIR"
  fi
  REF_DIR=$(cd "$REF_DIR" && pwd)
  echo "Reference extracted; pass --reference=$REF_DIR"
fi
echo ".venv-torch ready: .venv-torch/bin/python -m experiments.torch_reference --help"
