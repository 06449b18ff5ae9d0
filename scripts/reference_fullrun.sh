#!/usr/bin/env bash
# Whole runs of the ORIGINAL reference on Fashion-MNIST, CPU: its own main_MIA.py trains the
# expert (the Table 3 expert's knobs: VGG-11-bn cut 4, norelu_C8S1, gan_adv_step1, alpha 0.3,
# tau 0.5, res_normN4C64 simulated attacker, lr 0.05, 1 client) and the undefended model (same
# knobs, regularization None) for EPOCHS epochs (the first runs at LR 0, spec §4.6), then its
# own main_test_MIA.py attacks each one's best checkpoint with a fresh res_normN4C64 decoder
# (ATTACK_EPOCHS epochs; the scripts use 50). Nothing of the reference is edited: the scripts
# run from a copy of its tree in WORKDIR (they read and write relative to the working
# directory), .cuda() is neutralised from outside (experiments/torch_reference_script.py).
# The reference's FMNIST is all 60k training images of the 10 classes, nearest-resized to 32x32,
# no augmentation; it has no dataset_portion for FMNIST, so an epoch is 469 rounds.
# DATASET=cifar10: CIFAR-10 instead (391 rounds per epoch, the reference's crop/flip/rotation),
# written as torchvision's python layout from what our loader reads (CIFAR10: its data_dir,
# default scripts/get_cifar10.sh's place; PYTHON: our python, default .venv/bin/python) and
# read by the reference with REF_CIFAR_NO_MD5=1 (same images, not the official files' bytes).
#
# Prepare: WITH_TORCHVISION=1 bash scripts/setup_torch_reference.sh /work/ref/ResSFL
# Usage:   bash scripts/reference_fullrun.sh /work/ref/ResSFL WORKDIR
# Env:     EPOCHS (3), ATTACK_EPOCHS (20), RUNS ("expert vanilla"), DATASET (fmnist | cifar10),
#          REF_THREADS (2),
#          PARALLEL=1 (train, then attack, the runs side by side: for a GPU), TRAIN_S /
#          ATTACK_S (time limits per process; a cut training is attacked at its best saved
#          epoch), REF_DEVICE=cuda (the reference's own GPU calls), TORCH_PYTHON (default
#          .venv-torch/bin/python), TORCHVISION (a directory put on PYTHONPATH, default
#          .torchvision; empty: the python imports its own torchvision).
# Results: WORKDIR/saves/{expert,vanilla}/MIA.log ("MIA performance Score is (MSE, SSIM, PSNR)"
#          and "Best Average Validation Accuracy"), per-stage logs in WORKDIR/logs/.
# On the 2-core dev VM an expert epoch takes ~11 min, a vanilla epoch ~5, phase 0 ~20, a
# 20-epoch attack ~15.
set -euo pipefail
REF=$(cd "$1" && pwd)
WORK=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EPOCHS=${EPOCHS:-3}
ATTACK_EPOCHS=${ATTACK_EPOCHS:-20}
RUNS=${RUNS:-expert vanilla}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
DATASET=${DATASET:-fmnist}
case $DATASET in
  fmnist|cifar10) ;;
  *) echo "DATASET: fmnist or cifar10, not $DATASET" >&2; exit 2 ;;
esac
[ -f "$REF/main_MIA.py" ] || { echo "no main_MIA.py in $REF" >&2; exit 2; }
TORCH_PYTHON=${TORCH_PYTHON:-$ROOT/.venv-torch/bin/python}
TORCHVISION=${TORCHVISION-$ROOT/.torchvision}
TRAIN_S=${TRAIN_S:-100000}
ATTACK_S=${ATTACK_S:-100000}
if [ -n "$TORCHVISION" ]; then
  [ -f "$TORCHVISION/torchvision/__init__.py" ] || {
    echo "no torchvision in $TORCHVISION: run WITH_TORCHVISION=1 bash" \
      "scripts/setup_torch_reference.sh (or set TORCHVISION= to use the python's own)" >&2
    exit 2; }
  export PYTHONPATH="$TORCHVISION${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p "$WORK/logs" "$WORK/data/FashionMNIST/raw"
cp -rn "$REF"/. "$WORK"/
if [ "$DATASET" = cifar10 ]; then
  export REF_CIFAR_NO_MD5=1
  [ -f "$WORK/data/cifar-10-batches-py/test_batch" ] || (cd "$ROOT" && \
    "${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}" -c '
import sys
from ressfl_jax.data import sources
ds = sources.load_dataset("cifar10", data_dir=sys.argv[1] or None)
sources.write_cifar10_python(ds.train_images, ds.train_labels, ds.test_images, ds.test_labels,
                             sys.argv[2])' "${CIFAR10:-}" "$WORK/data/cifar-10-batches-py")
else
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
      t10k-labels-idx1-ubyte; do
    [ -f "$WORK/data/FashionMNIST/raw/$f" ] || \
      zcat "$FMNIST/$f.gz" > "$WORK/data/FashionMNIST/raw/$f"
  done
fi
cd "$WORK"
run() {
  local limit=$1 name=$2
  shift 2
  local rc=0
  timeout "$limit" "$TORCH_PYTHON" "$ROOT/experiments/torch_reference_script.py" "$@" || rc=$?
  # A cut training (rc 124) still has its best checkpoint: go on to the attack.
  [ $rc = 0 ] || echo "$(date -u +%T) $name, $1: exit $rc" >&2
}
# Runs "$@" in the background with PARALLEL=1, else in the foreground.
maybe_bg() { if [ "${PARALLEL:-0}" = 1 ]; then "$@" & else "$@"; fi; }
# main_test_MIA.py takes these too (and refuses the learning rates).
COMMON=(--arch=vgg11_bn --cutlayer=4 --batch_size=128 --num_client=1 --num_epochs="$EPOCHS"
  --dataset="$DATASET" --scheme=V2_epoch --random_seed=125 --bottleneck_option=norelu_C8S1
  --folder=saves)
for name in $RUNS; do
  case $name in
    expert) reg=(--regularization=gan_adv_step1 --regularization_strength=0.3
                 --ssim_threshold=0.5 --gan_AE_type=res_normN4C64 --gan_loss_type=SSIM) ;;
    vanilla) reg=(--regularization=None --regularization_strength=0) ;;
    *) echo "unknown run $name (expert, vanilla)" >&2; exit 2 ;;
  esac
  echo "$(date -u +%T) train $name"
  maybe_bg run "$TRAIN_S" "$name" main_MIA.py "${COMMON[@]}" --filename="$name" \
    --learning_rate=0.05 --local_lr=-1 "${reg[@]}" \
    > "logs/${name}_train.log" 2>&1
done
wait
for name in $RUNS; do
  echo "$(date -u +%T) attack $name"
  maybe_bg run "$ATTACK_S" "$name" main_test_MIA.py "${COMMON[@]}" --filename="$name" \
    --target_client=0 --test_best --attack_scheme=MIA --attack_epochs="$ATTACK_EPOCHS" \
    --average_time=1 --gan_AE_type=res_normN4C64 --regularization=None \
    --regularization_strength=0 > "logs/${name}_attack.log" 2>&1
done
wait
echo "$(date -u +%T) done"
for name in $RUNS; do
  echo "== $name"
  grep -h -A1 "Best Average Validation Accuracy\|MIA performance Score" "saves/$name/MIA.log" \
    | tail -4 || true
done
