#!/usr/bin/env bash
# The main job on the offline default data: set up, then run the whole ResSFL pipeline on real
# Fashion-MNIST (expert on classes 0-4, transfer to classes 5-9; lite, naive, scratch; every
# model attacked) and print the privacy/utility table. Extra arguments go to
# experiments.pipeline. Finished stages under runs/pipeline_cpu are reused on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.pipeline --workdir=runs/pipeline_cpu "$@"
