#!/usr/bin/env bash
# The prepared GPU check for a session that is lent a device machine (15 minutes of device time
# per session, one command <= 10 minutes). Prepare once on the dev machine:
#   bash scripts/prepare_device_check.sh /work/ref/ResSFL
# then call the device tool:  run(command="bash scripts/device_check.sh", carry=[".carry"],
# timeout_s=590). Every stage has its own time limit so that the command always returns its
# logs and JSON under $OUT; a stage cut by its limit keeps what it saved (checkpoints are
# atomic, so a killed pretrain is attacked at its last saved epochs).
#   1. bench/: experiments.benchmark, ours vs the reference's own CUDA calls, same GPU.
#   2. expert/ + vanilla/: the cpu preset's expert and vanilla model on ALL of Fashion-MNIST
#      classes 0-4 for as many epochs as fit, epochs 1,2,5,10,20 kept; then the res_normN4C64
#      attack on every kept epoch of both (MSE vs epoch: does resistance appear with length?).
# DEVICE_CHECK_SMOKE=1 runs the same script with the smoke presets (a CPU test of the script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_check}
mkdir -p "$OUT"
if [ -d .carry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .carry/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
(nvidia-smi -L; $PY -c "import jax; print('jax', jax.__version__, jax.devices())") \
  2>&1 | tee "$OUT/devices.log"

TORCH=""
if [ "${DEVICE_CHECK_SMOKE:-0}" = 1 ]; then
  BENCH="--steps=vanilla,attack_conv_normN0C8 --num_clients=1 --width_mult=0.0625 --repeats=2"
  PRE="--config=experiments/configs/pretrain.py:smoke"
  ATK="--config=experiments/configs/attack.py:smoke"
  EPOCHS=2 KEEP="(1,2)" T_BENCH=300 T_EXPERT=300 T_VANILLA=200 T_ATTACK=300
else
  BENCH="--steps=vanilla,expert,lite,attack_res_normN4C64,attack_conv_normN0C16"
  BENCH="$BENCH --num_clients=1,10,100 --repeats=6 --blocks=2"
  if [ -f .carry/ResSFL/MIA_torch.py ]; then
    TORCH="--torch_reference=.carry/ResSFL --torch_python=$PY --torch_device=cuda"
  fi
  PRE="--config=experiments/configs/pretrain.py:cpu --config.data.data_dir=.carry/fashion-mnist"
  PRE="$PRE --config.data.dataset_portion=1.0 --config.attacker.pretrain_epochs=10"
  ATK="--config=experiments/configs/attack.py:cpu --config.decoders=res_normN4C64"
  ATK="$ATK --config.optimization.steps=0 --config.aux_max=0 --config.epochs=20"
  EPOCHS=20 KEEP="(1,2,5,10,20)" T_BENCH=170 T_EXPERT=200 T_VANILLA=60 T_ATTACK=110
fi
COMMON="--config.run.num_epochs=$EPOCHS --config.optim.milestones=($EPOCHS,)"
COMMON="$COMMON --config.run.keep_epochs=$KEEP"

stage() {  # stage NAME SECONDS COMMAND...: runs with a limit, logs to $OUT/NAME.log.
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s"
  tail -n 25 "$OUT/$name.log"
}

# shellcheck disable=SC2086  # The option strings are meant to split.
stage bench "$T_BENCH" $PY -m experiments.benchmark $BENCH $TORCH --out="$OUT/bench"
# shellcheck disable=SC2086
stage expert "$T_EXPERT" $PY -m experiments.pretrain $PRE $COMMON --workdir="$OUT/expert"
# shellcheck disable=SC2086
stage vanilla "$T_VANILLA" $PY -m experiments.train $PRE $COMMON --workdir="$OUT/vanilla"
for run in expert vanilla; do
  # shellcheck disable=SC2086
  stage "attack_$run" "$T_ATTACK" $PY -m experiments.attack $ATK --config.step=all \
    --config.checkpoint="$OUT/$run" --workdir="$OUT/attack_$run"
done
# At most 8 files come back from the device tool: pack the logs, JSON, tables and PNG grids
# (not the checkpoints) into one archive, and leave only it and the devices log in $OUT.
(cd "$OUT" && find . \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.md' \
  -o -name '*.png' \) -print0 | tar -czf ../device_check_results.tgz --null -T -)
find "$OUT" -mindepth 1 -maxdepth 1 ! -name devices.log -exec rm -rf {} +
mv "$OUT/../device_check_results.tgz" "$OUT/results.tgz"
ls -la "$OUT"
