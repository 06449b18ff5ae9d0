#!/usr/bin/env bash
# Ad hoc (session 15): the attack stage of `PYTHON=.venv/bin/python OUT=runs/cifar10_e5 DATA=cifar10
# RUNS="eval vanilla" EPOCHS=5 STEPS=5 bash scripts/device_expert_check.sh`, started per run as
# soon as that run's training has written summary.json (the orchestrating script was stopped).
cd /work/main
ATK="--config=experiments/configs/attack.py:cpu --config.decoders=res_normN4C64"
ATK="$ATK --config.optimization.steps=0 --config.aux_max=5000 --config.epochs=20"
for run in vanilla eval; do
  (
    while [ ! -f runs/cifar10_e5/$run/summary.json ]; do sleep 20; done
    echo "$(date -u +%T) attack $run"
    .venv/bin/python -m experiments.attack $ATK --config.which=last --config.step=5 \
      --config.checkpoint=runs/cifar10_e5/$run --workdir=runs/cifar10_e5/attack_$run \
      > runs/cifar10_e5/attack_$run.log 2>&1
    echo "$(date -u +%T) attack $run: exit $?"
  ) &
done
wait
