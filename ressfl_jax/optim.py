"""Optimisers and learning-rate schedules, as the ResSFL reference runs them (spec §4.2, §4.6).

Server and clients each use SGD with momentum 0.9 and *coupled* weight decay 5e-4 on every
parameter (PyTorch's ``SGD(weight_decay=...)`` adds ``wd * p`` to the gradient before the
momentum buffer), which is ``add_decayed_weights`` followed by ``sgd`` in optax.

The schedule is a function of the optimizer's own update count, so it needs to know how many
updates one epoch holds: clients update once per round, the server once per round (parallel
schedule) or once per client per round (sequential schedule).
"""

from collections.abc import Sequence

import jax.numpy as jnp
import optax


def multistep_lr(epoch, *, base_lr: float, milestones: Sequence[int], gamma: float,
                 zero_first_epoch: bool):
    """Learning rate for a 1-based ``epoch`` (int or traced int array).

    ``base_lr * gamma ** #{m in milestones : m <= epoch}``; with ``zero_first_epoch`` epoch 1
    runs at LR 0, the reference's accidental warm-up (spec §4.6: momentum buffers and BN
    statistics still accumulate during that epoch).
    """
    epoch = jnp.asarray(epoch)
    num_decays = sum((epoch >= m).astype(jnp.int32) for m in milestones) if milestones else 0
    lr = base_lr * jnp.power(jnp.float32(gamma), jnp.asarray(num_decays, jnp.float32))
    if zero_first_epoch:
        lr = jnp.where(epoch <= 1, jnp.float32(0.0), lr)
    return lr


def make_schedule(*, base_lr: float, updates_per_epoch: int, milestones: Sequence[int],
                  gamma: float, zero_first_epoch: bool) -> optax.Schedule:
    """An optax schedule (update count -> LR) that is constant within each epoch."""
    if updates_per_epoch < 1:
        raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
    milestones = tuple(int(m) for m in milestones)

    def schedule(count):
        epoch = count // updates_per_epoch + 1
        return multistep_lr(epoch, base_lr=base_lr, milestones=milestones, gamma=gamma,
                            zero_first_epoch=zero_first_epoch)

    return schedule


def make_sgd(schedule: optax.ScalarOrSchedule, *, momentum: float,
             weight_decay: float) -> optax.GradientTransformation:
    """PyTorch-style SGD: coupled weight decay on all parameters, heavy-ball momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum if momentum else None))

