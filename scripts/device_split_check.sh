#!/usr/bin/env bash
# The CIFAR-10 class-split transfer (pipeline preset cifar10_split: expert on classes 0-4 ->
# lite / naive / scratch on classes 5-9 -> a fresh res_normN4C64 attack on every model) at a
# GPU's length, its stages side by side as separate processes on the one GPU (each stage is
# latency-bound at K <= 2, so they overlap well):
#   on the dev machine: CARRY=cifar10 bash scripts/prepare_device_check.sh
#   run(command="bash scripts/device_split_check.sh", carry=[".carry"], timeout_s=590)
# 1. side by side: the expert | its vanilla twin | scratch (needs no expert), each then
#    attacked by its own process;
# 2. as soon as the expert's checkpoint is written: the transfers from it (lite, naive, ...)
#    side by side, each then attacked;
# 3. the pipeline once more over the finished stages (it reuses them): the table.
# Settings (environment): EXPERT_EPOCHS (100), TARGET_EPOCHS (60), EXPERT_MILESTONES and
# TARGET_MILESTONES (LR decays x0.2; default: the reference's 60/120/160 of 200 scaled to the
# stage's length, e.g. "(30,60,80)" for 100 epochs, since on CPU the resistance came in the
# decay epochs, RESULTS.md "Two LR decays"; the smoke preset: its last epoch), MODES
# ("lite,naive,scratch"), TOTAL (deadline in seconds, 550),
# DATA_DIR (.carry/cifar10: the carry's subset, 4,000 training images per CIFAR batch, so about
# 10k per half, and 5,000 test images), KEEP (run folders kept beside results.tgz, e.g.
# "split"). DEVICE_CHECK_SMOKE=1: the pipeline's smoke preset (a CPU test). Every stage ends by
# the deadline; what finished is in the table and in results.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_split_check}
# shellcheck source=scripts/device_common.sh
source scripts/device_common.sh
MODES=${MODES:-lite,naive,scratch}
if [ "${DEVICE_CHECK_SMOKE:-0}" = 1 ]; then
  CFG=(--config=experiments/configs/pipeline.py:smoke)
  EXPERT_EPOCHS=${EXPERT_EPOCHS:-2} TARGET_EPOCHS=${TARGET_EPOCHS:-1} TOTAL=${TOTAL:-900}
  EXPERT_MILESTONES=${EXPERT_MILESTONES:-($EXPERT_EPOCHS,)}
  TARGET_MILESTONES=${TARGET_MILESTONES:-($TARGET_EPOCHS,)}
else
  DATA_DIR=${DATA_DIR:-.carry/cifar10}
  CFG=(--config=experiments/configs/pipeline.py:cifar10_split
       --config.expert.data.data_dir="$DATA_DIR" --config.target.data.data_dir="$DATA_DIR")
  EXPERT_EPOCHS=${EXPERT_EPOCHS:-100} TARGET_EPOCHS=${TARGET_EPOCHS:-60} TOTAL=${TOTAL:-550}
  reference_milestones() { echo "($(($1 * 3 / 10)),$(($1 * 6 / 10)),$(($1 * 8 / 10)))"; }
  EXPERT_MILESTONES=${EXPERT_MILESTONES:-$(reference_milestones "$EXPERT_EPOCHS")}
  TARGET_MILESTONES=${TARGET_MILESTONES:-$(reference_milestones "$TARGET_EPOCHS")}
fi
CFG+=(--config.modes="$MODES"
      --config.expert.run.num_epochs="$EXPERT_EPOCHS"
      --config.expert.optim.milestones="$EXPERT_MILESTONES"
      --config.target.run.num_epochs="$TARGET_EPOCHS"
      --config.target.optim.milestones="$TARGET_MILESTONES")
W=$OUT/split
ALL=(expert vanilla ${MODES//,/ })  # Every stage of this pipeline, in its table's order.
set_deadline "$TOTAL"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.15  # Up to 5 processes share the GPU.

dir_of() {  # A stage's folder under the pipeline's workdir.
  case $1 in expert) echo "$W/expert" ;; vanilla) echo "$W/vanilla_source" ;;
    *) echo "$W/transfer_$1" ;; esac
}
launch() {  # One stage (and its attack) in its own pipeline process, in the background.
  stage "stage_$1" "$(limit 100000 25)" $PY -m experiments.pipeline "${CFG[@]}" \
    --config.stages="$1" --workdir="$W" &
}

from_expert=()
launch expert
expert_pid=$!
launch vanilla
for mode in ${MODES//,/ }; do
  case $mode in scratch|attacker_aware_from_scratch) launch "$mode" ;;
    *) from_expert+=("$mode") ;; esac
done
while [ ! -f "$W/expert/summary.json" ] && kill -0 "$expert_pid" 2> /dev/null; do sleep 2; done
if [ -f "$W/expert/summary.json" ]; then
  for mode in "${from_expert[@]}"; do launch "$mode"; done
else
  echo "== the expert did not finish: no transfer from it"
fi
wait

finished=()
for s in "${ALL[@]}"; do
  [ -f "$(dir_of "$s")/attack/summary.json" ] && finished+=("$s")
done
if [ "${#finished[@]}" -eq "${#ALL[@]}" ]; then
  stages=""  # Every stage: the pipeline writes report.md and summary.json.
else
  stages=$(IFS=,; echo "${finished[*]}")
  echo "== finished only: ${stages:-none}"
fi
if [ "${#finished[@]}" -gt 0 ]; then
  STAGE_TAIL=20 stage table "$(limit 100000 1)" $PY -m experiments.pipeline "${CFG[@]}" \
    --config.stages="$stages" --workdir="$W"
fi
for s in "${ALL[@]}"; do
  echo "== $s: test accuracy per epoch"
  tr '\r' '\n' < "$OUT/stage_$s.log" | grep -o "epoch [0-9]*: test accuracy [0-9.]*" \
    | sed 's/test accuracy //' | tr '\n' ';'
  echo
done
# shellcheck disable=SC2086  # KEEP: names to keep beside results.tgz (e.g. "split").
pack_results ${KEEP:-}
