"""ResSFL step 1: attacker-aware pretraining of the resistant extractor.

  python -m experiments.pretrain                                  # cpu preset, runs/pretrain_cpu
  python -m experiments.pretrain --config=experiments/configs/pretrain.py:paper_cifar10 \\
      --config.data.data_dir=/data/cifar-10-python.tar.gz --workdir=runs/expert_cifar10
  python -m experiments.pretrain --workdir=runs/pretrain_cpu --resume

Phase 0 pre-trains the simulated attacker on the frozen initial client (spec §4.3); then every
round updates the attacker (every ``interval`` rounds) and trains clients + server on
CE + alpha * penalty (spec §4.4). The checkpoints under WORKDIR/checkpoints/{best,last} carry the
extractor (client params + BN statistics), the server, the decoder and the metadata that
``experiments.transfer`` checks.
"""

import dataclasses

from experiments import attacker_aware, common
from ressfl_jax.state import create_sfl_state
from ressfl_jax.training import loop


def run(config, workdir: str, *, resume: bool = False) -> dict:
    """Trains the expert as configured; returns the summary written to WORKDIR/summary.json."""
    common.validate(config)
    attacker_aware.validate(config.attacker)
    dataset = common.load_data(config)
    model = common.build_model(config, dataset)
    partitions = common.make_partitions(config, dataset)
    steps = common.steps_per_epoch(config, partitions)
    client_tx, server_tx = common.make_optimizers(config, steps)
    init_key, train_key = common.root_keys(config.run.seed)
    state = create_sfl_state(init_key, model, client_tx=client_tx, server_tx=server_tx,
                             num_clients=config.data.num_clients,
                             image_shape=dataset.train_images.shape[1:])
    aware = attacker_aware.setup(config, config.attacker, state=state, model=model,
                                 dataset=dataset, steps=steps,
                                 augment=common.augment_mode(config, dataset), init_key=init_key,
                                 smash=common.aware_smash(config, dataset))
    meta = common.run_meta(config, dataset, model, kind="pretrain")
    meta["attacker"] = aware.meta
    meta["client_flops"] = attacker_aware.client_flops(
        config, model, aware.state, aware.decoder, image_shape=dataset.train_images.shape[1:],
        interval=config.attacker.interval)
    common.write_config(config, workdir)
    settings = dataclasses.replace(common.loop_settings(config),
                                   sync_decoders=config.attacker.decoder_sync)
    return loop.fit(aware.state, settings=settings, workdir=workdir,
                    train_step=aware.train_step, model=model, dataset=dataset,
                    partitions=partitions, num_active=config.data.num_clients,
                    train_key=train_key, meta=meta, resume=resume, prepare=aware.prepare)


if __name__ == "__main__":
    common.cli(run, name="pretrain", report=common.report_training)
