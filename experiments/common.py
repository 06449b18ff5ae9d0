"""Config -> library objects, shared by the experiment entry points.

This is the only layer that reads ``ml_collections`` configs; it passes explicit keyword
arguments into ``ressfl_jax``.
"""

import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

import ressfl_jax
from ressfl_jax import defenses, host_memory, optim
from ressfl_jax.data import load_dataset, partition
from ressfl_jax.models import build_split_model, feature_shape
from ressfl_jax.training import loop, sfl

AUGMENT_MODES = ("none", "crop_flip", "crop_flip_rotate")


def parse_classes(spec: str) -> list[int] | None:
    """'' -> None (all classes); '0-4' -> [0..4]; '5,7,9' -> [5, 7, 9]."""
    spec = spec.strip()
    if not spec:
        return None
    try:
        if "-" in spec and "," not in spec:
            lo, hi = (int(x) for x in spec.split("-"))
            return list(range(lo, hi + 1))
        return [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"Bad data.classes {spec!r}: use '' (all), a range '0-4' or a list "
                         f"'5,6,7'.") from None


def validate(config) -> None:
    """Checks config values that the library cannot check early; raises ValueError."""
    if config.run.scheme not in sfl.SCHEDULES:
        raise ValueError(f"Unknown run.scheme {config.run.scheme!r}; choose one of "
                         f"{sfl.SCHEDULES}.")
    if config.data.augment != "default" and config.data.augment not in AUGMENT_MODES:
        raise ValueError(f"Unknown data.augment {config.data.augment!r}; choose 'default' or one "
                         f"of {AUGMENT_MODES}.")
    if not 0 < config.data.client_sample_ratio <= 1:
        raise ValueError(f"data.client_sample_ratio must be in (0, 1], got "
                         f"{config.data.client_sample_ratio}.")
    if not 0 < config.data.dataset_portion <= 1:
        raise ValueError(f"data.dataset_portion must be in (0, 1], got "
                         f"{config.data.dataset_portion}.")
    for key in ("num_clients", "batch_size", "eval_batch_size"):
        if config.data[key] < 1:
            raise ValueError(f"data.{key} must be >= 1, got {config.data[key]}.")
    for key in ("num_epochs", "log_every_steps", "eval_every_epochs", "ckpt_every_epochs"):
        if config.run[key] < 1:
            raise ValueError(f"run.{key} must be >= 1, got {config.run[key]}.")


def training_defenses(config, dataset):
    """(penalty or None, smash or None) of the ``defense`` group, for the SFL rounds."""
    d = config.defense
    smash = defenses.make_smash(defenses.parse_defense(d.kind, d.strength))
    penalty = None
    if d.nopeek_alpha:
        penalty = defenses.make_nopeek_penalty(alpha=d.nopeek_alpha, mean=dataset.mean,
                                               std=dataset.std)
    return penalty, smash


def aware_smash(config, dataset):
    """The training-time smash defense for attacker-aware runs (NoPeek cannot be combined)."""
    penalty, smash = training_defenses(config, dataset)
    if penalty is not None:
        raise ValueError("defense.nopeek_alpha cannot be combined with attacker-aware training "
                         "(both are client penalties); set one of them.")
    return smash


def make_train_step(config, model, dataset):
    """The vanilla SFL round with the configured training-time defenses."""
    penalty, smash = training_defenses(config, dataset)
    return sfl.make_train_step(model=model, schedule=config.run.scheme,
                               augment=augment_mode(config, dataset), penalty=penalty,
                               smash=smash)


def load_data(config):
    return load_dataset(config.data.dataset, data_dir=config.data.data_dir or None,
                        classes=parse_classes(config.data.classes),
                        fmnist_resize=config.data.fmnist_resize)


def augment_mode(config, dataset) -> str:
    return dataset.augment if config.data.augment == "default" else config.data.augment


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
    """``config.model.dtype`` as a jnp dtype (the models keep float32 params either way)."""
    name = config.model.dtype
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"model.dtype={name!r} is not supported; choose one of "
                         f"{tuple(COMPUTE_DTYPES)} (bfloat16 = mixed precision).")
    return COMPUTE_DTYPES[name]


def build_model(config, dataset):
    return build_split_model(config.model.arch, cut_layer=config.model.cut_layer,
                             bottleneck=config.model.bottleneck, num_classes=dataset.num_classes,
                             mean=dataset.mean, std=dataset.std,
                             width_mult=config.model.width_mult,
                             conv_impl=config.model.conv_impl, dtype=compute_dtype(config))


def num_users(config) -> int:
    return int(round(config.data.num_clients / config.data.client_sample_ratio))


def make_partitions(config, dataset) -> np.ndarray:
    """int [U, n_per_user] indices into the training arrays (portion, then IID/non-IID split)."""
    subset = partition.portion_indices(len(dataset.train_labels), config.data.dataset_portion,
                                       seed=config.run.seed)
    parts = partition.partition_clients(dataset.train_labels[subset], num_users(config),
                                        noniid=config.data.noniid,
                                        num_classes=dataset.num_classes, seed=config.run.seed)
    return subset[parts]


def steps_per_epoch(config, partitions) -> int:
    steps = partition.steps_per_epoch(partitions.shape[1], config.data.batch_size)
    cap = config.run.max_steps_per_epoch
    return min(steps, cap) if cap else steps


def make_optimizers(config, steps: int, *, local_lr: float | None = None):
    """(client_tx, server_tx): reference SGD with per-epoch multistep schedules (spec §4.2/4.6).

    ``local_lr`` overrides the clients' LR (default: ``optim.local_lr``, -1 = ``optim.lr``).
    """
    milestones = [int(round(m / config.data.client_sample_ratio)) for m in config.optim.milestones]
    server_updates = steps * (config.data.num_clients if config.run.scheme == "sequential" else 1)
    if local_lr is None:
        local_lr = config.optim.lr if config.optim.local_lr < 0 else config.optim.local_lr
    txs = []
    for lr, updates in ((local_lr, steps), (config.optim.lr, server_updates)):
        schedule = optim.make_schedule(base_lr=lr, updates_per_epoch=updates,
                                       milestones=milestones, gamma=config.optim.gamma,
                                       zero_first_epoch=config.optim.zero_lr_first_epoch)
        txs.append(optim.make_sgd(schedule, momentum=config.optim.momentum,
                                  weight_decay=config.optim.weight_decay))
    return tuple(txs)


def run_meta(config, dataset, model, *, kind: str) -> dict:
    """Metadata saved with every checkpoint (for compatibility checks and the public API)."""
    return {
        "kind": kind,
        "code_version": ressfl_jax.__version__,
        "arch": config.model.arch,
        "cut_layer": config.model.cut_layer,
        "bottleneck": config.model.bottleneck,
        "width_mult": config.model.width_mult,
        "dataset": dataset.name,
        "classes": parse_classes(config.data.classes),
        "num_classes": dataset.num_classes,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "image_shape": list(dataset.train_images.shape[1:]),
        "feature_shape": list(feature_shape(model, tuple(dataset.train_images.shape[1:]))),
        "num_clients": config.data.num_clients,
        "config": json.loads(config.to_json()),
    }


def loop_settings(config) -> loop.LoopSettings:
    return loop.LoopSettings(
        num_epochs=config.run.num_epochs, seed=config.run.seed,
        batch_size=config.data.batch_size, log_every_steps=config.run.log_every_steps,
        eval_every_epochs=config.run.eval_every_epochs,
        ckpt_every_epochs=config.run.ckpt_every_epochs,
        max_steps_per_epoch=config.run.max_steps_per_epoch,
        eval_batch_size=config.data.eval_batch_size,
        keep_checkpoints=config.run.keep_checkpoints, devices=config.run.devices,
        keep_epochs=tuple(int(e) for e in config.run.keep_epochs))


def root_keys(seed: int):
    """Named PRNG streams (style b5): init = fold_in(root, 0), train = fold_in(root, 1)."""
    root = jax.random.key(seed)
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


def write_config(config, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))


def cli(run: Callable, *, name: str, report: Callable[[dict, str], None]) -> None:
    """Runs an experiment from the command line: ``--config=FILE[:PRESET] --workdir --resume``.

    Flags are defined here, when the module runs as ``__main__``, not at import: tests and the
    pipeline import several experiment modules into one process, and absl flags are global.

    Args:
      run: ``run(config, workdir, *, resume) -> summary``.
      name: the experiment's name; its config is ``experiments/configs/NAME.py`` and the default
        workdir ``runs/NAME_PRESET``.
      report: prints the summary for a person: ``report(summary, workdir)``.
    """
    default = os.path.join(os.path.dirname(__file__), "configs", f"{name}.py")
    config_flag = config_flags.DEFINE_config_file("config", default,
                                                  "Config file, optionally with :PRESET.",
                                                  lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None,
                                       f"Output directory (default runs/{name}_PRESET).")
    resume_flag = flags.DEFINE_bool("resume", False,
                                    "Continue from the latest checkpoint in workdir.")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        host_memory.keep_freed_memory()  # Before JAX's first computation (see its docstring).
        if os.environ.get("RESSFL_DISTRIBUTED") == "1":
            jax.distributed.initialize()  # Cluster from the environment (SLURM, TPU pods).
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
        config = config_flag.value
        workdir = workdir_flag.value or os.path.join("runs",
                                                     f"{name}_{config.preset or 'custom'}")
        report(run(config, workdir, resume=resume_flag.value), workdir)

    host_memory.use_jemalloc()  # Re-executes once with jemalloc where installed (docstring).
    app.run(main)


def report_training(summary: dict, workdir: str) -> None:
    """The one-line result of a training run (train / pretrain / transfer)."""
    prep = summary.get("prepare")
    if prep:
        print(f"phase 0: attacker val MSE {prep['val_mse']:.4f}, SSIM {prep['val_ssim']:.3f} "
              f"({prep['seconds']:.0f} s)")
    print(f"final test accuracy {summary['final_accuracy']:.4f} "
          f"(best {summary['best_accuracy']:.4f} at epoch {summary['best_epoch']}), "
          f"{summary['images_per_sec']:.1f} img/s, wall {summary['wall_seconds']:.0f} s; "
          f"summary in {workdir}/summary.json")
