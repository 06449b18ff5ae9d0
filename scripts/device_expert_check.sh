#!/usr/bin/env bash
# Expert-length GPU check: experts (and optionally a vanilla twin) trained side by side on the
# GPU, then a FRESH res_normN4C64 attacker on chosen saved epochs of each, side by side.
#   run(command="bash scripts/device_expert_check.sh", carry=[".carry"], timeout_s=270)
# Settings (environment): RUNS (default "eval batch": penalty_bn of each expert; "vanilla" adds
# the undefended model, trained by experiments.train), EPOCHS (20), STEPS (the kept, attacked
# epochs, "10,20"), MILESTONES (LR decays x0.2, "($EPOCHS,)"; e.g. "(6,12,16)" for the
# reference's 60/120/160 of 200 scaled to 20 epochs: on CPU the resistance came in the decay
# epochs, RESULTS.md "Two LR decays"), TOTAL (deadline in seconds, 235). Every stage ends
# by the deadline.
# The 2026-11-26 H100 run (defaults) asked: does a fresh attacker still succeed after 10 and 20
# epochs, and with the penalty's decoder BatchNorm in batch mode? (Yes and yes: RESULTS.md,
# "Resistance on a GPU".) Seen there: ~3.6 s per epoch of 30k images per expert beside another,
# ~55 s of start-up and compiles per process, ~55 s to the first attacked checkpoint and ~15 s
# per further one. For a longer run in one full call (~9.5 min), e.g.
#   RUNS="eval vanilla" EPOCHS=80 STEPS=40,80 TOTAL=560 bash scripts/device_expert_check.sh
# with timeout_s=590. KEEP="eval vanilla" keeps those run folders (checkpoints) beside results.tgz.
# DEVICE_CHECK_SMOKE=1: the smoke presets (a CPU test). DATASET=cifar10: the
# paper's CIFAR-10 expert (preset paper_cifar10, phase 0 of 5 epochs, no LR-0 first epoch) and
# attacks on 5,000 test images; DATA_DIR names the data (default: the loader's, see
# scripts/get_cifar10.sh). On the dev CPU, e.g.
#   PYTHON=.venv/bin/python OUT=runs/cifar10 DATASET=cifar10
#   RUNS="eval vanilla" EPOCHS=3 STEPS=1,3 TOTAL=100000 bash scripts/device_expert_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_expert_check}
# shellcheck source=scripts/device_common.sh
source scripts/device_common.sh
if [ "${DEVICE_CHECK_SMOKE:-0}" = 1 ]; then
  PRE="--config=experiments/configs/pretrain.py:smoke"
  ATK="--config=experiments/configs/attack.py:smoke"
  EPOCHS=${EPOCHS:-2} STEPS=${STEPS:-1,2} TOTAL=${TOTAL:-600}
elif [ "${DATASET:-fmnist}" = cifar10 ]; then  # The paper's own expert data (all 50k).
  PRE="--config=experiments/configs/pretrain.py:paper_cifar10 --config.attacker.pretrain_epochs=5"
  PRE="$PRE --config.optim.zero_lr_first_epoch=False --config.run.ckpt_every_epochs=1"
  PRE="$PRE${DATA_DIR:+ --config.data.data_dir=$DATA_DIR}"
  ATK="--config=experiments/configs/attack.py:cpu --config.decoders=res_normN4C64"
  ATK="$ATK --config.optimization.steps=0 --config.aux_max=5000 --config.epochs=20"
  EPOCHS=${EPOCHS:-20} STEPS=${STEPS:-10,20} TOTAL=${TOTAL:-235}
else
  PRE="--config=experiments/configs/pretrain.py:cpu --config.data.data_dir=.carry/fashion-mnist"
  PRE="$PRE --config.data.dataset_portion=1.0 --config.attacker.pretrain_epochs=5"
  ATK="--config=experiments/configs/attack.py:cpu --config.decoders=res_normN4C64"
  ATK="$ATK --config.optimization.steps=0 --config.aux_max=0 --config.epochs=20"
  EPOCHS=${EPOCHS:-20} STEPS=${STEPS:-10,20} TOTAL=${TOTAL:-235}
fi
PRE="$PRE --config.run.num_epochs=$EPOCHS --config.optim.milestones=${MILESTONES:-($EPOCHS,)}"
PRE="$PRE --config.run.keep_epochs=($STEPS)"
RUNS=${RUNS:-eval batch}
set_deadline "$TOTAL"

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.4
# Attacks need ~55 s to the first checkpoint and ~15 s per further one (H100). Each run is
# attacked as soon as its own training ends (a vanilla run's attack overlaps the experts').
T=$(limit 100000 $((45 + 15 * $(echo "$STEPS" | tr ',' '\n' | grep -c .))))
for run in $RUNS; do
  case $run in
    vanilla) main=experiments.train extra=() ;;
    eval|batch) main=experiments.pretrain extra=(--config.attacker.penalty_bn="$run") ;;
    *) echo "RUNS: unknown run '$run' (use eval, batch, vanilla)"; exit 2 ;;
  esac
  (
    # shellcheck disable=SC2086  # The option strings are meant to split.
    stage "train_$run" "$T" $PY -m $main $PRE "${extra[@]}" --workdir="$OUT/$run"
    # shellcheck disable=SC2086
    stage "attack_$run" "$(limit 100000 6)" $PY -m experiments.attack $ATK --config.which=last \
      --config.step="$STEPS" --config.checkpoint="$OUT/$run" --workdir="$OUT/attack_$run"
  ) &
done
wait
for run in $RUNS; do
  echo "== $run: test accuracy per epoch; co-trained attacker (experts); fresh attack"
  tr '\r' '\n' < "$OUT/train_$run.log" | grep -o "epoch [0-9]*: test accuracy [0-9.]*" \
    | sed 's/test accuracy //' | tr '\n' ';'
  echo
  [ "$run" != vanilla ] && $PY - "$OUT/$run/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if "train/inversion_ssim" in r]
for r in rows[:: max(1, len(rows) // 8)] + rows[-1:]:
    print("  step %d epoch %s: co-trained attacker ssim %.3f mse %.4f, ce %.3f" % (
        r["step"], r.get("epoch"), r["train/inversion_ssim"], r["train/inversion_mse"],
        r["train/ce_loss"]))
EOF
  print_attacks "$OUT/attack_$run" "  fresh attack "
done
# shellcheck disable=SC2086  # KEEP: names to keep beside results.tgz (e.g. "eval vanilla").
pack_results ${KEEP:-}
