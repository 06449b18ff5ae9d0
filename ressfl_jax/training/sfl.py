"""Vanilla split federated learning steps (ResSFL spec §4.4, §5).

One training *round*: each of the K client slots processes one batch; the server trains on
their smashed data. Two server schedules:

* ``sequential`` (the reference's ``V2`` schedule): ``lax.scan`` over the clients, carrying the
  server state; the server takes one SGD step after each client's batch (K server steps per
  round), and only the active client's optimizer steps (PyTorch >= 2.0 semantics, spec §11.2).
* ``parallel`` (our default, faster): clients run vmapped, their features are concatenated
  into one ``[K*B, ...]`` batch, and the server takes ONE step with the gradient averaged over
  the K client batches (BatchNorm statistics over all K*B examples). Each client still gets the
  gradient of its own batch's mean loss. For K = 1 both schedules are identical.

Steps are pure ``(state, batch, key) -> (state, metrics)`` functions; the caller binds the
static settings with ``functools.partial`` and jits once with ``donate_argnums=0``.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ressfl_jax import augment as augment_lib
from ressfl_jax import losses
from ressfl_jax.models import SplitModel
from ressfl_jax.state import SFLState

SCHEDULES = ("parallel", "sequential")


def prepare_images(key, images, *, augment: str):
    """uint8/float [K, B, H, W, 3] -> augmented float32 [K, B, H, W, 3] in [0, 1].

    Each client gets its own augmentation key, split from ``key``.
    """
    images = augment_lib.to_float(images)
    if augment == "none":
        return images
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(functools.partial(augment_lib.augment_images, mode=augment))(keys, images)


def round_keys(key):
    """Named sub-streams of one round's key: (augmentation, server dropout)."""
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def client_apply(model: SplitModel, params, batch_stats, images, *, train: bool):
    """Client forward for ONE client. Returns (features, new_batch_stats)."""
    if not train:
        return model.client.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=False), batch_stats
    features, updates = model.client.apply({"params": params, "batch_stats": batch_stats},
                                           images, train=True, mutable=["batch_stats"])
    return features, updates.get("batch_stats", batch_stats)


def server_apply(model: SplitModel, params, batch_stats, features, dropout_key, *, train: bool):
    """Server forward (body + head). Returns (logits, new_batch_stats)."""
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        return model.server.apply(variables, features, train=False), batch_stats
    logits, updates = model.server.apply(variables, features, train=True,
                                         rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", batch_stats)


def _metrics(ce, correct, penalty_metrics=None):
    """Scalar metrics; per-client penalty metrics [K] are averaged over clients."""
    metrics = {"train/ce_loss": jnp.mean(ce), "train/accuracy": jnp.mean(correct)}
    metrics.update({k: jnp.mean(v) for k, v in (penalty_metrics or {}).items()})
    return metrics


def _no_penalty(decoder, features, images):
    del decoder, features, images
    return jnp.float32(0.0), {}


# A penalty's optional metric: a bool that is False when the penalty's gradient is exactly zero
# on this batch (e.g. the SSIM hinge at or below its threshold); see ``apply_penalty``.
PENALTY_GATE = "#gate"


def apply_penalty(penalty: Callable, decoders, features, images, *, stacked: bool):
    """``penalty`` on one client's features, or vmapped over stacked clients [K, ...].

    If the penalty's metrics hold ``PENALTY_GATE``, its backward pass runs under a
    ``lax.cond`` and is skipped when no client's gate is open: the gradient is then exactly
    zero. For ResSFL's SSIM hinge that skips the backward through the frozen decoder (PyTorch
    skips it too: a hinge below its threshold is the constant 0, with no graph); the expert's
    round on the dev CPU gets ~8% faster (BENCHMARKS.md). Values and gradients equal plain
    autodiff's; the residuals are kept, so an open gate costs nothing extra. The gate is
    popped from the metrics. Only ``features`` is differentiated: ``decoders`` and ``images``
    are constants of the round (as every penalty here treats them).

    Returns:
      (penalty values, [K] if stacked, else a scalar; metrics).
    """
    fn = jax.vmap(penalty) if stacked else penalty
    if penalty is _no_penalty:
        return fn(decoders, features, images)

    def split(f):
        value, metrics = fn(decoders, f, images)
        metrics = dict(metrics)
        return value, (metrics, metrics.pop(PENALTY_GATE, None))

    @jax.custom_vjp
    def gated(f):
        value, (metrics, _) = split(f)
        return value, metrics

    def gated_fwd(f):
        value, vjp, (metrics, gate) = jax.vjp(split, f, has_aux=True)
        return (value, metrics), (vjp, gate)

    def gated_bwd(residuals, cotangents):
        vjp, gate = residuals
        if gate is None:
            return vjp(cotangents[0])
        skipped = jnp.zeros(features.shape, features.dtype)
        return (jax.lax.cond(jnp.any(gate), lambda: vjp(cotangents[0])[0], lambda: skipped),)

    gated.defvjp(gated_fwd, gated_bwd)
    return gated(features)


def _smash_key(server_key, client_index):
    """The key of client ``client_index``'s defense on its smashed data this round."""
    return jax.random.fold_in(jax.random.fold_in(server_key, 1), client_index)


def parallel_round(state: SFLState, images, labels, server_key, *, model: SplitModel,
                   penalty: Callable = _no_penalty, smash: Callable | None = None):
    """Parallel-schedule round on prepared images; see ``parallel_step``.

    Args:
      images: float32 [K, B, H, W, 3] in [0, 1] (already augmented).
      labels: int32 [K, B].
      server_key: key for the server's dropout.
      penalty: ``(decoder_k, features_k, images_k) -> (scalar, metrics)`` added to client k's
        loss (the attacker-aware term or NoPeek; ``decoder_k`` is client k's slice of
        ``state.decoders``). Its gradient reaches only the client: it does not depend on the
        server.
      smash: optional ``(key, features_k) -> features_k``, a defense applied to what client k
        sends (e.g. noise on the smashed data), after the penalty, before the server.
    """
    num_clients, batch_size = labels.shape

    def loss_fn(client_params, server_params):
        forward = functools.partial(client_apply, model, train=True)
        features, client_stats = jax.vmap(forward)(client_params, state.clients.batch_stats,
                                                   images)
        penalties, penalty_metrics = apply_penalty(penalty, state.decoders, features, images,
                                                    stacked=True)
        if smash is not None:
            keys = jax.vmap(functools.partial(_smash_key, server_key))(jnp.arange(num_clients))
            features = jax.vmap(smash)(keys, features)
        # [K, B, h, w, c] -> [K*B, h, w, c]: the server sees one concatenated batch.
        flat = features.reshape((num_clients * batch_size,) + features.shape[2:])
        logits, server_stats = server_apply(model, server_params, state.server.batch_stats, flat,
                                            jax.random.fold_in(server_key, 0), train=True)
        logits = logits.reshape(num_clients, batch_size, -1)
        ce = losses.cross_entropy(logits, labels)  # [K, B]
        # Sum over clients of each client's own loss: client k's gradient is that of its own
        # batch (CE mean + penalty).
        total = jnp.sum(jnp.mean(ce, axis=1) + penalties)
        return total, (ce, logits, client_stats, server_stats, penalty_metrics)

    grads, aux = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(state.clients.params,
                                                                 state.server.params)
    client_grads, server_grads = grads
    ce, logits, client_stats, server_stats, penalty_metrics = aux
    # The summed loss gives the server K times the mean CE gradient; use the mean.
    server_grads = jax.tree.map(lambda g: g / num_clients, server_grads)
    clients = jax.vmap(lambda c, g, s: c.apply_gradients(grads=g, batch_stats=s))(
        state.clients, client_grads, client_stats)
    server = state.server.apply_gradients(grads=server_grads, batch_stats=server_stats)
    new_state = state.replace(step=state.step + 1, clients=clients, server=server)
    return new_state, _metrics(ce, losses.correct(logits, labels), penalty_metrics)


def sequential_round(state: SFLState, images, labels, server_key, *, model: SplitModel,
                     penalty: Callable = _no_penalty, smash: Callable | None = None):
    """Sequential-schedule (reference V2) round on prepared images; see ``parallel_round``."""
    num_clients = labels.shape[0]

    def one_client(server, xs):
        client, decoder, client_images, client_labels, index = xs

        def loss_fn(client_params, server_params):
            features, client_stats = client_apply(model, client_params, client.batch_stats,
                                                  client_images, train=True)
            penalty_value, penalty_metrics = apply_penalty(penalty, decoder, features,
                                                            client_images, stacked=False)
            if smash is not None:
                features = smash(_smash_key(server_key, index), features)
            logits, server_stats = server_apply(model, server_params, server.batch_stats,
                                                features, jax.random.fold_in(server_key, index),
                                                train=True)
            ce = losses.cross_entropy(logits, client_labels)  # [B]
            return jnp.mean(ce) + penalty_value, (ce, logits, client_stats, server_stats,
                                                  penalty_metrics)

        grads, aux = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(client.params, server.params)
        ce, logits, client_stats, server_stats, penalty_metrics = aux
        server = server.apply_gradients(grads=grads[1], batch_stats=server_stats)
        client = client.apply_gradients(grads=grads[0], batch_stats=client_stats)
        return server, (client, ce, losses.correct(logits, client_labels), penalty_metrics)

    server, (clients, ce, correct, penalty_metrics) = jax.lax.scan(
        one_client, state.server,
        (state.clients, state.decoders, images, labels, jnp.arange(num_clients)))
    new_state = state.replace(step=state.step + 1, clients=clients, server=server)
    return new_state, _metrics(ce, correct, penalty_metrics)


ROUNDS = {"parallel": parallel_round, "sequential": sequential_round}


def parallel_step(state: SFLState, batch, key, *, model: SplitModel, augment: str,
                  penalty: Callable = _no_penalty, smash: Callable | None = None):
    """One round with the ``parallel`` server schedule (vanilla, or with a training defense).

    Args:
      state: SFLState with K client slots.
      batch: {'image': uint8 or float [K, B, H, W, 3], 'label': int32 [K, B]}.
      key: typed PRNG key for this round.
      penalty, smash: optional training-time defenses, see ``parallel_round``.

    Returns:
      (new_state, metrics) with scalar metrics 'train/ce_loss' and 'train/accuracy' (plus the
      penalty's metrics).
    """
    aug_key, server_key = round_keys(key)
    images = prepare_images(aug_key, batch["image"], augment=augment)
    return parallel_round(state, images, batch["label"], server_key, model=model,
                          penalty=penalty, smash=smash)


def sequential_step(state: SFLState, batch, key, *, model: SplitModel, augment: str,
                    penalty: Callable = _no_penalty, smash: Callable | None = None):
    """One round with the reference's ``sequential`` (V2) schedule; see parallel_step."""
    aug_key, server_key = round_keys(key)
    images = prepare_images(aug_key, batch["image"], augment=augment)
    return sequential_round(state, images, batch["label"], server_key, model=model,
                            penalty=penalty, smash=smash)


def check_schedule(schedule: str) -> None:
    if schedule not in ROUNDS:
        raise ValueError(f"Unknown server schedule {schedule!r}; choose one of {SCHEDULES}.")


def make_train_step(*, model: SplitModel, schedule: str, augment: str,
                    penalty: Callable | None = None, smash: Callable | None = None):
    """Returns the unjitted ``(state, batch, key) -> (state, metrics)`` for ``schedule``.

    ``penalty`` / ``smash``: optional training-time defenses (see ``parallel_round``); None
    means none.
    """
    check_schedule(schedule)
    penalty = _no_penalty if penalty is None else penalty
    step = parallel_step if schedule == "parallel" else sequential_step
    return functools.partial(step, model=model, augment=augment, penalty=penalty, smash=smash)


def eval_step(state: SFLState, batch, *, model: SplitModel, client_index: int = 0):
    """Test-set evaluation of one client copy (after FedAvg all copies are equal).

    Args:
      batch: {'image': uint8 [N, H, W, 3], 'label': int32 [N], 'mask': bool [N]}; masked-out
        rows are padding so every eval batch has a static shape.

    Returns:
      {'correct': float32 sum, 'count': float32 sum, 'ce_sum': float32 sum} over unmasked rows.
    """
    client = jax.tree.map(lambda x: x[client_index], state.clients)
    return eval_sums(model, {"params": client.params, "batch_stats": client.batch_stats},
                     {"params": state.server.params, "batch_stats": state.server.batch_stats},
                     batch)


def eval_sums(model: SplitModel, client_vars, server_vars, batch, *, defense=None):
    """Eval-mode sums of correct predictions, count and CE for ONE client and the server.

    Args:
      client_vars / server_vars: {'params', 'batch_stats'} (unstacked).
      batch: {'image', 'label', 'mask'} as in ``eval_step``.
      defense: optional ``features -> features`` applied to the smashed data before the server
        (a test-time defense).
    """
    images = augment_lib.to_float(batch["image"])
    features, _ = client_apply(model, client_vars["params"], client_vars["batch_stats"], images,
                               train=False)
    if defense is not None:
        features = defense(features)
    logits, _ = server_apply(model, server_vars["params"], server_vars["batch_stats"], features,
                             None, train=False)
    mask = batch["mask"].astype(jnp.float32)
    return {"correct": jnp.sum(losses.correct(logits, batch["label"]) * mask),
            "count": jnp.sum(mask),
            "ce_sum": jnp.sum(losses.cross_entropy(logits, batch["label"]) * mask)}


def client_features(model: SplitModel, params, batch_stats, images, *, batch_size: int = 500):
    """Eval-mode smashed data of ONE client for many images, in fixed-size jitted batches.

    Args:
      params / batch_stats: one client's variables (unstacked).
      images: uint8 or float [N, H, W, 3] (floats in [0, 1]); host or device array.

    Returns:
      float32 [N, h, w, c] on device. Eval-mode BatchNorm makes this independent of the batch
      size (the reference uses batch size 1 here, spec §7.2).
    """
    n = images.shape[0]
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    images = jnp.asarray(images)
    images = jnp.concatenate([images, jnp.zeros((pad,) + images.shape[1:], images.dtype)])
    images = images.reshape((nb, batch_size) + images.shape[1:])
    features = _features_jit(model, params, batch_stats, images)
    return features.reshape((nb * batch_size,) + features.shape[2:])[:n]


@functools.partial(jax.jit, static_argnums=0)
def _features_jit(model, params, batch_stats, batches):
    def one(x):
        return client_apply(model, params, batch_stats, augment_lib.to_float(x), train=False)[0]

    return jax.lax.map(one, batches)
