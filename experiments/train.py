"""Vanilla split federated learning (no defense): ``python -m experiments.train``.

  python -m experiments.train --config=experiments/configs/train.py:cpu --workdir=runs/train_cpu
  python -m experiments.train --workdir=runs/train_cpu --resume   # continue a killed run
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import common
from ressfl_jax.state import create_sfl_state
from ressfl_jax.training import loop, sfl

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "train.py"),
    "Config file, optionally with :PRESET.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/train_PRESET).")
_RESUME = flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in workdir.")


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
    train_step = sfl.make_train_step(model=model, schedule=config.run.scheme,
                                     augment=common.augment_mode(config, dataset))
    common.write_config(config, workdir)
    return loop.fit(state, settings=common.loop_settings(config), workdir=workdir,
                    train_step=train_step, model=model, dataset=dataset, partitions=partitions,
                    num_active=config.data.num_clients, train_key=train_key,
                    meta=common.run_meta(config, dataset, model, kind="train"), resume=resume)


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("runs", f"train_{config.preset or 'custom'}")
    summary = run(config, workdir, resume=_RESUME.value)
    print(f"final test accuracy {summary['final_accuracy']:.4f} "
          f"(best {summary['best_accuracy']:.4f} at epoch {summary['best_epoch']}), "
          f"{summary['images_per_sec']:.1f} img/s, wall {summary['wall_seconds']:.0f} s; "
          f"summary in {workdir}/summary.json")


if __name__ == "__main__":
    app.run(main)
