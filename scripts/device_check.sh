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
# Stage times seen on an H100 (2026-11-26, 540 s in all; results/h100_2026-11-26/): bench 110 s
# (cut: the reference's K=10 block had not finished), bench_lite_attack ~60 s, bench_bf16 cut at
# 50 s while compiling, expert 30 epochs 179 s beside vanilla (~60 s), attacks ~55 s to the first
# checkpoint then ~15 s per checkpoint (cut at 119 s after epoch 5). Give the next run's time to
# what is still missing (bf16, the reference's K=10, the expert's later epochs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_check}
STAGE_TAIL=25
# shellcheck source=scripts/device_common.sh
source scripts/device_common.sh
(nvidia-smi -L; $PY -c "import jax; print('jax', jax.__version__, jax.devices())"; \
  $PY -m pip list 2>/dev/null | grep -iE "^(jax|jaxlib|flax|optax|orbax-checkpoint|chex|torch|numpy) ") \
  2>&1 | tee "$OUT/devices.log"

TORCH=""
if [ "${DEVICE_CHECK_SMOKE:-0}" = 1 ]; then
  BENCH1="--steps=vanilla --num_clients=1 --width_mult=0.0625 --repeats=2"
  BENCH2="--steps=attack_conv_normN0C8 --width_mult=0.0625 --repeats=2"
  BENCH3="--steps=vanilla --num_clients=2 --width_mult=0.0625 --repeats=2 --dtype=bfloat16"
  PRE="--config=experiments/configs/pretrain.py:smoke"
  ATK="--config=experiments/configs/attack.py:smoke"
  EPOCHS=2 KEEP="(1,2)" TOTAL=${DEVICE_CHECK_SECONDS:-900}
  T_BENCH1=200 T_BENCH2=150 T_BENCH3=150 T_TRAIN=300
else
  BENCH1="--steps=vanilla,expert --num_clients=1,10,100 --repeats=10 --blocks=1"
  BENCH2="--steps=lite,attack_res_normN4C64,attack_conv_normN0C16 --repeats=10 --blocks=1"
  BENCH3="--steps=vanilla,expert --num_clients=1,100 --repeats=10 --dtype=bfloat16"
  if [ -f .carry/ResSFL/MIA_torch.py ]; then
    TORCH="--torch_reference=.carry/ResSFL --torch_python=$PY --torch_device=cuda"
  fi
  PRE="--config=experiments/configs/pretrain.py:cpu --config.data.data_dir=.carry/fashion-mnist"
  PRE="$PRE --config.data.dataset_portion=1.0 --config.attacker.pretrain_epochs=10"
  ATK="--config=experiments/configs/attack.py:cpu --config.decoders=res_normN4C64"
  ATK="$ATK --config.optimization.steps=0 --config.aux_max=0 --config.epochs=20"
  EPOCHS=30 KEEP="(1,2,5,10,20,30)" TOTAL=${DEVICE_CHECK_SECONDS:-540}
  T_BENCH1=110 T_BENCH2=90 T_BENCH3=50 T_TRAIN=260
fi
COMMON="--config.run.num_epochs=$EPOCHS --config.optim.milestones=($EPOCHS,)"
COMMON="$COMMON --config.run.keep_epochs=$KEEP"
# Every stage ends by the script's deadline (TOTAL seconds after its start), whatever it is.
set_deadline "$TOTAL"

# 1. Throughput, alone on the GPU: ours, then the reference's own CUDA calls (f32), then bf16.
# shellcheck disable=SC2086  # The option strings are meant to split.
stage bench "$(limit $T_BENCH1 300)" $PY -m experiments.benchmark $BENCH1 $TORCH --out="$OUT/bench"
# shellcheck disable=SC2086
stage bench_lite_attack "$(limit $T_BENCH2 250)" $PY -m experiments.benchmark $BENCH2 $TORCH \
  --out="$OUT/bench_lite_attack"
# shellcheck disable=SC2086
stage bench_bf16 "$(limit $T_BENCH3 230)" $PY -m experiments.benchmark $BENCH3 \
  --out="$OUT/bench_bf16"

# 2. The expert and its vanilla twin side by side on the GPU (each small enough to leave it
#    mostly idle), then the attack on every kept epoch of both, also side by side.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.4
T=$(limit $T_TRAIN 110)
# shellcheck disable=SC2086
stage expert "$T" $PY -m experiments.pretrain $PRE $COMMON --workdir="$OUT/expert" &
# shellcheck disable=SC2086
stage vanilla "$T" $PY -m experiments.train $PRE $COMMON --workdir="$OUT/vanilla" &
wait
T=$(limit 300 8)
for run in expert vanilla; do
  # shellcheck disable=SC2086
  stage "attack_$run" "$T" $PY -m experiments.attack $ATK --config.step=all \
    --config.checkpoint="$OUT/$run" --workdir="$OUT/attack_$run" &
done
wait
for run in expert vanilla; do
  echo "== $run: test accuracy per epoch; attack MSE/SSIM per kept epoch"
  grep -h "test accuracy" "$OUT/$run.log" | tr '\r' '\n' | grep -o "epoch [0-9]*: test accuracy [0-9.]*" | tr '\n' ';'
  echo
  print_attacks "$OUT/attack_$run"
done
for b in bench bench_lite_attack bench_bf16; do cat "$OUT/$b/benchmark.md" 2>/dev/null; done
pack_results devices.log
ls -la "$OUT"
