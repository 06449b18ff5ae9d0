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
#
# Prepare: WITH_TORCHVISION=1 bash scripts/setup_torch_reference.sh /work/ref/ResSFL
# Usage:   bash scripts/reference_fullrun.sh /work/ref/ResSFL WORKDIR
# Env:     EPOCHS (3), ATTACK_EPOCHS (20), RUNS ("expert vanilla"), REF_THREADS (2).
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
[ -f "$REF/main_MIA.py" ] || { echo "no main_MIA.py in $REF" >&2; exit 2; }
[ -f "$ROOT/.torchvision/torchvision/__init__.py" ] || {
  echo "no .torchvision: run WITH_TORCHVISION=1 bash scripts/setup_torch_reference.sh" >&2
  exit 2; }
mkdir -p "$WORK/logs" "$WORK/data/FashionMNIST/raw"
cp -rn "$REF"/. "$WORK"/
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
    t10k-labels-idx1-ubyte; do
  [ -f "$WORK/data/FashionMNIST/raw/$f" ] || zcat "$FMNIST/$f.gz" > "$WORK/data/FashionMNIST/raw/$f"
done
cd "$WORK"
export PYTHONPATH="$ROOT/.torchvision"
run() { "$ROOT/.venv-torch/bin/python" "$ROOT/experiments/torch_reference_script.py" "$@"; }
COMMON=(--arch=vgg11_bn --cutlayer=4 --batch_size=128 --num_client=1 --num_epochs="$EPOCHS"
  --dataset=fmnist --scheme=V2_epoch --random_seed=125 --learning_rate=0.05 --local_lr=-1
  --bottleneck_option=norelu_C8S1 --folder=saves)
for name in $RUNS; do
  case $name in
    expert) reg=(--regularization=gan_adv_step1 --regularization_strength=0.3
                 --ssim_threshold=0.5 --gan_AE_type=res_normN4C64 --gan_loss_type=SSIM) ;;
    vanilla) reg=(--regularization=None --regularization_strength=0) ;;
    *) echo "unknown run $name (expert, vanilla)" >&2; exit 2 ;;
  esac
  echo "$(date -u +%T) train $name"
  run main_MIA.py "${COMMON[@]}" --filename="$name" "${reg[@]}" > "logs/${name}_train.log" 2>&1
done
for name in $RUNS; do
  echo "$(date -u +%T) attack $name"
  run main_test_MIA.py "${COMMON[@]}" --filename="$name" --target_client=0 --test_best \
    --attack_scheme=MIA --attack_epochs="$ATTACK_EPOCHS" --average_time=1 \
    --gan_AE_type=res_normN4C64 --regularization=None --regularization_strength=0 \
    > "logs/${name}_attack.log" 2>&1
done
echo "$(date -u +%T) done"
for name in $RUNS; do
  echo "== $name"; grep -h -A1 "Best Average Validation Accuracy\|MIA performance Score" \
    "saves/$name/MIA.log" | tail -4
done
