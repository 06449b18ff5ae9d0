"""ResSFL step 2, resistance transfer to a new task: ``python -m experiments.transfer``.

  python -m experiments.transfer                     # cpu preset: lite, expert runs/pretrain_cpu
  python -m experiments.transfer --config.transfer.mode=naive --workdir=runs/transfer_naive
  python -m experiments.transfer \\
      --config=experiments/configs/transfer.py:paper_cifar10_to_cifar100 \\
      --config.data.data_dir=/data/cifar-100-python.tar.gz --config.transfer.expert=runs/expert

The expert's client extractor (its best checkpoint, arch/cut/bottleneck checked) initialises all
K clients, and the server body too; the classifier head is new. Modes and their settings are
described in ``experiments/configs/transfer.py``. The summary records the client-side FLOPs per
client step with and without the attacker-aware term (``run.client_flops``).
"""

import dataclasses

from absl import logging

from experiments import attacker_aware, common
from experiments.configs.transfer import MODES
from ressfl_jax import expert, transfer
from ressfl_jax.state import create_sfl_state
from ressfl_jax.training import loop

EXPERT_MODES = ("lite", "naive", "freeze")
AWARE_MODES = ("lite", "attacker_aware_from_scratch")
NORMALIZATIONS = ("expert", "target")


def expert_for(mode: str, expert_dir: str) -> str:
    """``transfer.expert`` for a run in ``mode``: ``expert_dir`` for the modes that load the
    expert, '' for the others, so that equal runs record equal configs (the pipeline and the
    comparison reuse each other's runs only when their configs match)."""
    return expert_dir if mode in EXPERT_MODES else ""


def validate(config) -> None:
    common.validate(config)
    t = config.transfer
    if t.mode not in MODES:
        raise ValueError(f"Unknown transfer.mode {t.mode!r}; choose one of {MODES}.")
    if t.normalization not in NORMALIZATIONS:
        raise ValueError(f"Unknown transfer.normalization {t.normalization!r}; choose one of "
                         f"{NORMALIZATIONS}.")
    if t.mode in EXPERT_MODES and not t.expert:
        raise ValueError(f"transfer.mode={t.mode!r} needs the expert: pass "
                         f"--config.transfer.expert=EXPERT_WORKDIR (an experiments.pretrain "
                         f"run), or use mode 'scratch'.")
    if t.client_lr < 0:
        raise ValueError(f"transfer.client_lr must be >= 0, got {t.client_lr}.")
    if t.mode in AWARE_MODES:
        attacker_aware.validate(config.attacker)


def client_lr(config) -> float:
    """The clients' SGD LR for the mode (freeze: 0; lite/naive: transfer.client_lr)."""
    mode = config.transfer.mode
    if mode == "freeze":
        return 0.0
    if mode in ("lite", "naive"):
        return config.transfer.client_lr
    return config.optim.lr if config.optim.local_lr < 0 else config.optim.local_lr


def load_expert(config, dataset):
    """(extractor, dataset with the normalisation the client will use); checks compatibility."""
    t = config.transfer
    ex = expert.load_extractor(t.expert, which=t.which)
    expected = {"arch": config.model.arch, "cut_layer": config.model.cut_layer,
                "bottleneck": config.model.bottleneck, "width_mult": config.model.width_mult,
                "image_shape": list(dataset.train_images.shape[1:])}
    expert.check_compatible(ex.meta, expected, source=ex.directory)
    if t.normalization == "expert":
        dataset = dataclasses.replace(dataset, mean=tuple(ex.meta["mean"]),
                                      std=tuple(ex.meta["std"]))
    elif (list(dataset.mean), list(dataset.std)) != (ex.meta["mean"], ex.meta["std"]):
        logging.warning("The client normalises with the target dataset's statistics, not the "
                        "expert's (%s, %s), as the reference does.", ex.meta["mean"],
                        ex.meta["std"])
    return ex, dataset


def run(config, workdir: str, *, resume: bool = False) -> dict:
    """Runs the configured transfer mode; returns the summary written to WORKDIR/summary.json."""
    validate(config)
    t = config.transfer
    dataset = common.load_data(config)
    ex = None
    if t.mode in EXPERT_MODES:
        ex, dataset = load_expert(config, dataset)
    model = common.build_model(config, dataset)
    partitions = common.make_partitions(config, dataset)
    steps = common.steps_per_epoch(config, partitions)
    client_tx, server_tx = common.make_optimizers(config, steps, local_lr=client_lr(config))
    init_key, train_key = common.root_keys(config.run.seed)
    image_shape = tuple(dataset.train_images.shape[1:])
    state = create_sfl_state(init_key, model, client_tx=client_tx, server_tx=server_tx,
                             num_clients=config.data.num_clients, image_shape=image_shape)
    if ex is not None:
        state = transfer.load_expert(state, client=ex.client,
                                     server=ex.server if t.load_server else None)
    augment = common.augment_mode(config, dataset)
    meta = common.run_meta(config, dataset, model, kind="transfer")
    meta["transfer"] = {"mode": t.mode, "client_lr": client_lr(config),
                        "expert": ex.directory if ex else None,
                        "expert_step": ex.step if ex else None,
                        "expert_dataset": ex.meta.get("dataset") if ex else None,
                        "expert_classes": ex.meta.get("classes") if ex else None}
    prepare, decoder = None, None
    if t.mode in AWARE_MODES:
        interval = t.scratch_interval if t.mode == "attacker_aware_from_scratch" else None
        aware = attacker_aware.setup(config, config.attacker, state=state, model=model,
                                     dataset=dataset, steps=steps, augment=augment,
                                     init_key=init_key, interval=interval,
                                     smash=common.aware_smash(config, dataset))
        state, train_step, prepare, decoder = (aware.state, aware.train_step, aware.prepare,
                                               aware.decoder)
        meta["attacker"] = aware.meta
    else:
        train_step = common.make_train_step(config, model, dataset)
    meta["client_flops"] = attacker_aware.client_flops(
        config, model, state, decoder, image_shape=image_shape,
        interval=meta["attacker"]["interval"] if decoder is not None else 1)
    common.write_config(config, workdir)
    settings = dataclasses.replace(common.loop_settings(config),
                                   sync_decoders=config.attacker.decoder_sync)
    return loop.fit(state, settings=settings, workdir=workdir, train_step=train_step,
                    model=model, dataset=dataset, partitions=partitions,
                    num_active=config.data.num_clients, train_key=train_key, meta=meta,
                    resume=resume, prepare=prepare)


if __name__ == "__main__":
    common.cli(run, name="transfer", report=common.report_training)
