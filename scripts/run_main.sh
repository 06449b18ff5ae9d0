#!/usr/bin/env bash
# The main job on the offline default data: set up, then train vanilla SFL (VGG-11-bn, cut 4,
# 2 clients) on real Fashion-MNIST. Extra arguments are passed to experiments.train.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.train --config=experiments/configs/train.py:cpu \
  --workdir=runs/train_cpu "$@"
