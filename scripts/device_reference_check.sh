#!/usr/bin/env bash
# Whole-run check against the ORIGINAL reference on a GPU of the `device` tool: the reference's
# own main_MIA.py trains its expert and its undefended model on Fashion-MNIST (CUDA, the
# knobs of scripts/reference_fullrun.sh), its own main_test_MIA.py attacks each one's best
# checkpoint (fresh res_normN4C64), and, side by side on the same GPU, OUR expert and vanilla
# model at the same settings (paper presets on fashion_mnist: all 10 classes, 60k images,
# nearest-resized, no augmentation, the LR-0 first epoch, a 30-epoch phase 0 on the test split)
# are attacked by experiments.attack with the reference's protocol and its 128 target images.
# Question: does the reference's own code make an expert a fresh attacker cannot invert, at a
# length ours does not (RESULTS.md "Resistance experiments at a glance")? Then the port is wrong.
#   run(command="bash scripts/device_reference_check.sh", carry=[".carry"], timeout_s=590)
# Env: EPOCHS (10), ATTACK_EPOCHS (20), TOTAL (deadline in s, 560), SIDES ("ref ours").
# Prepare: bash scripts/prepare_device_check.sh /work/ref/ResSFL (adds .carry/tv, a
# torchvision wheel for the device's torch, used only if that torch has none).
# DATASET=cifar10: both sides on the CIFAR-10 subset of `CARRY=cifar10 bash
# scripts/prepare_device_check.sh /work/ref/ResSFL` (.carry/cifar10; the reference reads it as
# torchvision's layout, see reference_fullrun.sh), our attack on 128 training images (the
# reference's CIFAR-10 targets are test images its attacker trains on: README,
# "Design choices").
# DEVICE_CHECK_SMOKE=1: a CPU test of the plumbing (smoke presets; the reference cut early).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_reference_check}
# shellcheck source=scripts/device_common.sh
source scripts/device_common.sh
SIDES=${SIDES:-ref ours}
if [ "${DEVICE_CHECK_SMOKE:-0}" = 1 ]; then
  EPOCHS=${EPOCHS:-1} ATTACK_EPOCHS=${ATTACK_EPOCHS:-1} TOTAL=${TOTAL:-240}
  PRE="--config=experiments/configs/pretrain.py:smoke"
  VAN="--config=experiments/configs/train.py:smoke --config.model.bottleneck=norelu_C8S1"
  ATK="--config=experiments/configs/attack.py:smoke"
  REF_ENV=(REF_DEVICE=cpu)
  TORCH_PYTHON=${TORCH_PYTHON:-$PWD/.venv-torch/bin/python}
  DATA=/usr/share/datasets/fashion-mnist
  REF=${REF:-/work/ref/ResSFL}
  TORCHVISION=${TORCHVISION-$PWD/.torchvision}
else
  EPOCHS=${EPOCHS:-10} ATTACK_EPOCHS=${ATTACK_EPOCHS:-20} TOTAL=${TOTAL:-560}
  REF=.carry/ResSFL
  ATK="--config=experiments/configs/attack.py:reference --config.decoders=res_normN4C64"
  ATK="$ATK --config.epochs=$ATTACK_EPOCHS"
  if [ "${DATASET:-fmnist}" = cifar10 ]; then
    DATA=$PWD/.carry/cifar10
    D="--config.data.dataset=cifar10 --config.data.data_dir=$DATA"
  else
    DATA=$PWD/.carry/fashion-mnist
    D="--config.data.dataset=fashion_mnist --config.data.data_dir=$DATA"
    ATK="$ATK --config.targets=reference --config.reference_dir=$REF"
  fi
  PRE="--config=experiments/configs/pretrain.py:paper_cifar10 $D"
  VAN="--config=experiments/configs/train.py:paper $D --config.model.bottleneck=norelu_C8S1"
  REF_ENV=(REF_DEVICE=cuda)
  TORCH_PYTHON=$PY
  TORCHVISION=""
  if ! $PY -c "import torchvision" > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/tv .carry/tv/*.whl || exit 1
    TORCHVISION=/tmp/tv
  fi
fi
RUN="--config.run.num_epochs=$EPOCHS --config.run.ckpt_every_epochs=1"
set_deadline "$TOTAL"
# Training until ~45% of the time is left (the attacks need it: the reference's ~10k
# one-image queries and JPEG files, then its decoder epochs), then the attacks.
TRAIN_S=$(limit $((TOTAL * 55 / 100)) 60)
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.25
has() { [[ " $SIDES " == *" $1 "* ]]; }
if has ref; then
  # shellcheck disable=SC2046
  env "${REF_ENV[@]}" TORCH_PYTHON="$TORCH_PYTHON" TORCHVISION="$TORCHVISION" PARALLEL=1 \
    EPOCHS="$EPOCHS" ATTACK_EPOCHS="$ATTACK_EPOCHS" FMNIST="$DATA" TRAIN_S="$TRAIN_S" \
    DATASET="${DATASET:-fmnist}" CIFAR10="$DATA" PYTHON="$PY" \
    ATTACK_S=$(limit 100000 20) \
    bash scripts/reference_fullrun.sh "$REF" "$OUT/ref" > "$OUT/ref.log" 2>&1 &
fi
if has ours; then
  # shellcheck disable=SC2086  # The option strings are meant to split.
  stage ours_expert "$TRAIN_S" $PY -m experiments.pretrain $PRE $RUN --workdir="$OUT/expert" &
  p1=$!
  # shellcheck disable=SC2086
  stage ours_vanilla "$TRAIN_S" $PY -m experiments.train $VAN $RUN --config.data.num_clients=1 \
    --workdir="$OUT/vanilla" &
  wait $p1 $!
  T=$(limit 100000 15)
  for run in expert vanilla; do
    # shellcheck disable=SC2086
    stage "ours_attack_$run" "$T" $PY -m experiments.attack $ATK --config.which=best \
      --config.checkpoint="$OUT/$run" --workdir="$OUT/attack_$run" &
  done
fi
wait
cat "$OUT/ref.log" 2>/dev/null
for run in expert vanilla; do
  [ -f "$OUT/ours_$run.log" ] || continue
  echo "== ours, $run: test accuracy per epoch; attack on the best epoch"
  tr '\r' '\n' < "$OUT/ours_$run.log" | grep -o "epoch [0-9]*: test accuracy [0-9.]*" \
    | sed 's/test accuracy //' | tr '\n' ';'
  echo
  print_attacks "$OUT/attack_$run" "  "
done
if [ -d "$OUT/ref" ]; then  # the reference's logs, without its tree, JPEG and tensor folders
  mkdir -p "$OUT/ref_logs"
  cp "$OUT"/ref/logs/*.log "$OUT/ref_logs/" 2>/dev/null
  for run in expert vanilla; do
    cp "$OUT/ref/saves/$run/MIA.log" "$OUT/ref_logs/${run}_MIA.log" 2>/dev/null
  done
  rm -rf "$OUT/ref"
fi
pack_results
