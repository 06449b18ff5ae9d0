"""Config -> attacker-aware training pieces, shared by ``pretrain`` and ``transfer`` (spec §4).

Reads the ``attacker`` config group (``configs/pretrain.py:attacker_config``) and builds the
simulated attacker (decoder), its optimizer and stacked per-client states, the jitted-to-be
ResSFL round, and the phase-0 pre-training hook that ``loop.fit`` runs once before epoch 1.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from absl import logging

from experiments import common
from ressfl_jax import flops
from ressfl_jax.data.jpeg import jpeg_round_trip
from ressfl_jax.models import feature_shape
from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.training import decoder_fit, ressfl

PRETRAIN_SOURCES = ("test", "train")


class AttackerAware(NamedTuple):
    """What ``setup`` builds: the state with decoders, the round, phase 0, and metadata."""

    state: Any
    train_step: Callable
    prepare: Callable | None
    decoder: Any
    meta: dict


def validate(a) -> None:
    """Checks the ``attacker`` group; raises ValueError naming the bad key."""
    if a.pretrain_source not in PRETRAIN_SOURCES:
        raise ValueError(f"Unknown attacker.pretrain_source {a.pretrain_source!r}; choose one "
                         f"of {PRETRAIN_SOURCES}.")
    if a.pretrain_selection not in decoder_fit.SELECTIONS:
        raise ValueError(f"Unknown attacker.pretrain_selection {a.pretrain_selection!r}; "
                         f"choose one of {decoder_fit.SELECTIONS}.")
    for key in ("interval", "decoder_steps", "pretrain_batch_size"):
        if a[key] < 1:
            raise ValueError(f"attacker.{key} must be >= 1, got {a[key]}.")
    if a.alpha < 0:
        raise ValueError(f"attacker.alpha must be >= 0, got {a.alpha}.")
    if a.penalty_bn not in ressfl.PENALTY_BN:
        raise ValueError(f"Unknown attacker.penalty_bn {a.penalty_bn!r}; choose one of "
                         f"{ressfl.PENALTY_BN}.")
    for key in ("pretrain_epochs", "pretrain_max_pairs"):
        if a[key] < 0:
            raise ValueError(f"attacker.{key} must be >= 0, got {a[key]}.")


def phase0_images(a, dataset):
    """(source images, targets) of phase 0, uint8 [N, H, W, 3] (spec §4.3 steps 2-3)."""
    images = dataset.test_images if a.pretrain_source == "test" else dataset.train_images
    if a.pretrain_max_pairs:
        images = images[:a.pretrain_max_pairs]
    return images, (jpeg_round_trip(images) if a.jpeg else images)


def setup(config, a, *, state, model, dataset, steps: int, augment: str, init_key,
          interval: int | None = None, smash=None):
    """Adds decoders to ``state`` and builds the attacker-aware round; see ``AttackerAware``.

    Args:
      config: the run config (``run.scheme``, ``optim`` milestones, ``data``, ``model``).
      a: the ``attacker`` config group.
      state: the initial SFLState (clients already in their final initial values: phase 0
        trains on the client as it is when training starts).
      steps: rounds per epoch.
      interval: overrides ``a.interval`` (attacker_aware_from_scratch).
      smash: optional training-time defense on the smashed data (``common.training_defenses``).
    """
    validate(a)
    interval = a.interval if interval is None else interval
    image_shape = tuple(dataset.train_images.shape[1:])
    feats = feature_shape(model, image_shape)
    decoder = build_decoder(a.decoder, feature_shape=feats, image_shape=image_shape,
                            conv_impl=config.model.conv_impl,
                            dtype=common.compute_dtype(config))
    milestones = [int(round(m / config.data.client_sample_ratio))
                  for m in config.optim.milestones]
    decoder_tx = ressfl.make_decoder_tx(
        lr=a.decoder_lr, updates_per_epoch=math.ceil(steps / interval) * a.decoder_steps,
        milestones=milestones, gamma=config.optim.gamma)
    state = state.replace(decoders=ressfl.create_decoders(
        jax.random.fold_in(init_key, 1), decoder, num_clients=config.data.num_clients,
        feature_shape=feats, tx=decoder_tx))
    train_step = ressfl.make_ressfl_step(
        model=model, decoder=decoder, schedule=config.run.scheme, augment=augment,
        alpha=a.alpha, threshold=a.threshold, kind=a.loss, interval=interval,
        decoder_steps=a.decoder_steps, steps_per_epoch=steps, smash=smash,
        penalty_bn=a.penalty_bn)
    prepare = None
    if a.pretrain_epochs:
        fit_settings = decoder_fit.FitSettings(epochs=a.pretrain_epochs,
                                               batch_size=a.pretrain_batch_size, lr=1e-3,
                                               selection=a.pretrain_selection, loss="mse")

        def prepare(state):
            images, targets = phase0_images(a, dataset)
            logging.warning("Phase 0: pre-training the simulated attacker %s on %d %s images "
                            "for %d epochs.", a.decoder, len(images), a.pretrain_source,
                            a.pretrain_epochs)
            return ressfl.pretrain_decoders(state, jax.random.fold_in(init_key, 2),
                                            model=model, decoder=decoder, images=images,
                                            targets=targets, settings=fit_settings)

    meta = {"decoder": a.decoder, "alpha": a.alpha, "threshold": a.threshold, "loss": a.loss,
            "interval": interval, "decoder_steps": a.decoder_steps}
    return AttackerAware(state, train_step, prepare, decoder, meta)


def client_flops(config, model, state, decoder=None, *, image_shape, interval: int = 1) -> dict:
    """Client FLOPs per client step (XLA's count), with the attacker term when ``decoder``."""
    one = jax.tree.map(lambda x: x[0], state.clients)
    client_vars = {"params": one.params, "batch_stats": one.batch_stats}
    kwargs = dict(batch_size=config.data.batch_size, image_shape=tuple(image_shape))
    if decoder is None:
        return flops.client_step_flops(model, client_vars, **kwargs)
    dec = jax.tree.map(lambda x: x[0], state.decoders)
    a = config.attacker
    return flops.client_step_flops(
        model, client_vars, decoder=decoder,
        decoder_vars={"params": dec.params, "batch_stats": dec.batch_stats}, interval=interval,
        decoder_steps=a.decoder_steps, kind=a.loss, threshold=a.threshold, **kwargs)
