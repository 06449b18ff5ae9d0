"""Vanilla split federated learning (no defense): ``python -m experiments.train``.

  python -m experiments.train --config=experiments/configs/train.py:cpu --workdir=runs/train_cpu
  python -m experiments.train --workdir=runs/train_cpu --resume   # continue a killed run
"""

from experiments import attacker_aware, common
from ressfl_jax.state import create_sfl_state
from ressfl_jax.training import loop


def run(config, workdir: str, *, resume: bool = False) -> dict:
    """Trains vanilla SFL as configured; returns the summary written to WORKDIR/summary.json."""
    common.validate(config)
    dataset = common.load_data(config)
    model = common.build_model(config, dataset)
    partitions = common.make_partitions(config, dataset)
    client_tx, server_tx = common.make_optimizers(config, common.steps_per_epoch(config,
                                                                                 partitions))
    init_key, train_key = common.root_keys(config.run.seed)
    state = create_sfl_state(init_key, model, client_tx=client_tx, server_tx=server_tx,
                             num_clients=config.data.num_clients,
                             image_shape=dataset.train_images.shape[1:])
    train_step = common.make_train_step(config, model, dataset)
    meta = common.run_meta(config, dataset, model, kind="train")
    meta["client_flops"] = attacker_aware.client_flops(
        config, model, state, image_shape=dataset.train_images.shape[1:])
    common.write_config(config, workdir)
    return loop.fit(state, settings=common.loop_settings(config), workdir=workdir,
                    train_step=train_step, model=model, dataset=dataset, partitions=partitions,
                    num_active=config.data.num_clients, train_key=train_key, meta=meta,
                    resume=resume)


if __name__ == "__main__":
    common.cli(run, name="train", report=common.report_training)
