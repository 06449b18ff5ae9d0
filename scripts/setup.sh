#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for ressfl-jax: the real Fashion-MNIST files (Debian's
# dataset-fashion-mnist), jemalloc (libjemalloc2: the entry points run on it, training rounds
# up to 1.15x faster on CPU, see ressfl_jax/host_memory.py) and a virtualenv in .venv with the
# pinned-by-lower-bound requirements. Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=()
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
[ -f "$FMNIST" ] || PACKAGES+=(dataset-fashion-mnist)
dpkg -s libjemalloc2 >/dev/null 2>&1 || PACKAGES+=(libjemalloc2)
if [ ${#PACKAGES[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${PACKAGES[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-test.txt
