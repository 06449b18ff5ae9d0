cd /work/main
for m in lite scratch; do
  .venv/bin/python -m experiments.attack --config=experiments/configs/attack.py:cpu \
    --config.checkpoint=runs/cifar10_split_k100_seed1/transfer_$m --config.which=best \
    --config.decoders=res_normN4C64 --config.epochs=20 --config.aux_max=5000 \
    --config.optimization.steps=0 --config.colluders=1 \
    --workdir=runs/cifar10_split_k100_seed1/transfer_$m/attack
done
