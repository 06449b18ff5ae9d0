#!/usr/bin/env bash
# Prepares, on the development machine, what scripts/device_check.sh needs on a GPU machine of
# the `device` tool (which has JAX, flax, optax, orbax, chex and torch, but no internet):
#   .carry/whl/            wheels of the Python packages that machine lacks (ml_collections,
#                          tensorboardX; thop, which the reference imports), for its Python 3.12;
#   .carry/tv/             a torchvision wheel for the device's torch (2.11 as of 2026-11-26:
#                          torchvision 0.26.0; TORCHVISION_VERSION to change), installed there
#                          by scripts/device_reference_check.sh only if that torch has none;
#   .carry/fashion-mnist/  the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist);
#   .carry/ResSFL/         a checkout of zlijingtao/ResSFL (argument 1; optional), for the
#                          side-by-side benchmark. Never committed: .carry/ is git-ignored.
# Then, from the session: device run(command="bash scripts/device_check.sh", carry=[".carry"]).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry/whl .carry/fashion-mnist
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 --platform any -d .carry/whl \
  ml_collections==1.1.0 tensorboardX==2.6.5 thop==0.1.1.post2209072238
mkdir -p .carry/tv
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 -d .carry/tv \
  "torchvision==${TORCHVISION_VERSION:-0.26.0}"
cp /usr/share/datasets/fashion-mnist/*.gz .carry/fashion-mnist/
if [ -n "${1:-}" ]; then
  rm -rf .carry/ResSFL
  cp -r "$1" .carry/ResSFL
  rm -rf .carry/ResSFL/.git
fi
du -sh .carry
