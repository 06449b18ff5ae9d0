"""Attacker-aware training: the ResSFL minimax (Li et al., CVPR 2022, Algorithm 1; spec §4).

Each round (reference ``V2_epoch`` order, spec §4.4):

1. ``decoder_step`` (the simulated attacker), only on rounds whose within-epoch index is a
   multiple of ``interval``, ``decoder_steps`` times: every client slot's decoder learns to
   invert its client's smashed data. The client runs in eval mode and its features are constants
   (``stop_gradient``); the decoder runs in train mode. Only ``state.decoders`` changes.
2. ``resistant step``: clients and server minimise ``CE + alpha * resistance_penalty`` with the
   decoders frozen (eval mode, parameters closed over as constants). The penalty's gradient
   reaches only the clients. Only clients and server change.

Sign conventions are defined once in ``ressfl_jax.losses``. Per-client decoders are stacked
``[K, ...]`` like the clients and vmapped; the whole round is one jitted program with the
interval handled by ``lax.cond`` (no host round trips).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from ressfl_jax import federated, losses, optim, rng
from ressfl_jax.state import SFLState, TrainState
from ressfl_jax.training import decoder_fit, sfl


def create_decoders(key, decoder, *, num_clients: int, feature_shape, tx) -> TrainState:
    """Stacked decoder states [K, ...], all copies equal (the reference's per-client AEs).

    Args:
      decoder: a Linen decoder (``ressfl_jax.models.decoders.build_decoder``).
      feature_shape: (h, w, c) of one client's smashed data.
      tx: the decoder optimizer (Adam 1e-3 in the reference).
    """

    def create(key):
        variables = decoder.init({"params": key}, jnp.zeros((1,) + tuple(feature_shape)),
                                 train=False)
        state = TrainState.create(apply_fn=decoder.apply, params=variables["params"], tx=tx,
                                  batch_stats=variables.get("batch_stats", {}))
        return federated.replicate(state, num_clients)

    with rng.unpartitioned():
        return jax.jit(create)(key)


def _decoder_apply(decoder, dec: TrainState, params, features, *, train: bool):
    variables = {"params": params, "batch_stats": dec.batch_stats}
    if not train:
        return decoder.apply(variables, features, train=False), dec.batch_stats
    recon, updates = decoder.apply(variables, features, train=True, mutable=["batch_stats"])
    return recon, updates.get("batch_stats", dec.batch_stats)


def decoder_step(state: SFLState, images, *, model, decoder, kind: str, steps: int = 1):
    """The simulated attacker's update for every client slot (vmapped over K).

    Args:
      state: SFLState with ``decoders``.
      images: float32 [K, B, H, W, 3] in [0, 1], the (augmented) round batch.
      kind: inversion loss, 'ssim' (maximise SSIM) or 'mse' (minimise MSE).
      steps: decoder updates per call (the reference's ``gan_adv_stepN``).

    Returns:
      (state with new decoders, [K] decoder loss of the last update).
    """

    def one(dec, client_params, client_stats, x):
        features, _ = sfl.client_apply(model, client_params, client_stats, x, train=False)
        features = jax.lax.stop_gradient(features)  # The attacker cannot change the client.

        def update(_, carry):
            dec, _ = carry

            def loss_fn(params):
                recon, stats = _decoder_apply(decoder, dec, params, features, train=True)
                return losses.inversion_loss(recon, x, kind=kind), stats

            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(dec.params)
            # optax's Adam bias correction mixes int counts and floats: allow that under the
            # strict promotion our tests enable.
            with jax.numpy_dtype_promotion("standard"):
                return dec.apply_gradients(grads=grads, batch_stats=stats), loss

        return jax.lax.fori_loop(0, steps, update, (dec, jnp.float32(0.0)))

    decoders, loss = jax.vmap(one)(state.decoders, state.clients.params,
                                   state.clients.batch_stats, images)
    return state.replace(decoders=decoders), loss


PENALTY_BN = ("eval", "batch")


def check_penalty_bn(penalty_bn: str) -> None:
    if penalty_bn not in PENALTY_BN:
        raise ValueError(f"Unknown penalty_bn {penalty_bn!r}; choose one of {PENALTY_BN} "
                         "('eval' = the reference's running statistics).")


def make_penalty(decoder, *, alpha: float, threshold: float, kind: str,
                 penalty_bn: str = "eval"):
    """``(decoder_k, features_k, images_k) -> (alpha * penalty, metrics)`` for the sfl rounds.

    The decoder is frozen: ``stop_gradient`` on its parameters, so the penalty's gradient flows
    only through the features into the client. ``penalty_bn`` picks the decoder's BatchNorm
    statistics: 'eval' (the reference: running averages) or 'batch' (this batch's statistics,
    as the decoder sees them when it trains; the running averages are not updated). With an
    SSIM hinge (threshold > 0) the metrics carry ``sfl.PENALTY_GATE``, so that rounds whose
    attackers are all at or below the threshold skip the backward pass through the decoder.
    """
    check_penalty_bn(penalty_bn)

    def penalty(dec, features, images):
        params = jax.lax.stop_gradient(dec.params)
        recon, _ = _decoder_apply(decoder, dec, params, features, train=penalty_bn == "batch")
        value = losses.resistance_penalty(recon, images, kind=kind, threshold=threshold)
        recon = jax.lax.stop_gradient(recon)
        metrics = {"train/inversion_ssim": losses.ssim(recon, images),
                   "train/inversion_mse": losses.mse(recon, images),
                   "train/penalty": jax.lax.stop_gradient(value)}
        if kind == "ssim" and threshold > 0:  # The hinge max(SSIM - tau, 0) has a zero
            metrics[sfl.PENALTY_GATE] = jax.lax.stop_gradient(value) > 0  # gradient at <= 0.
        return alpha * value, metrics

    return penalty


def ressfl_step(state: SFLState, batch, key, *, model, decoder, augment: str, schedule: str,
                alpha: float, threshold: float, kind: str, interval: int, decoder_steps: int,
                steps_per_epoch: int, smash=None, penalty_bn: str = "eval"):
    """One attacker-aware round: (maybe) decoder update, then the resistant step.

    Args:
      batch: {'image': uint8 or float [K, B, H, W, 3], 'label': int32 [K, B]}.
      key: typed PRNG key of this round (augmentation and server dropout).
      interval: the decoder is updated on rounds with (step mod steps_per_epoch) mod interval
        == 0 (the reference's ``optimize_computation``); the penalty applies on every round.
      smash: optional defense on the smashed data sent to the server (``sfl.parallel_round``).
      penalty_bn: the frozen decoder's BatchNorm mode in the penalty (``make_penalty``).

    Returns:
      (new_state, metrics): CE, accuracy, the attacker's SSIM/MSE on this batch, the penalty,
      and 'attacker/recon_loss' (with its '#weight': the fraction of rounds that updated).
    """
    aug_key, server_key = sfl.round_keys(key)
    images = sfl.prepare_images(aug_key, batch["image"], augment=augment)
    update = functools.partial(decoder_step, images=images, model=model, decoder=decoder,
                               kind=kind, steps=decoder_steps)
    if interval == 1:
        do_update = jnp.bool_(True)
        state, dec_loss = update(state)
    else:
        do_update = (state.step % steps_per_epoch) % interval == 0
        num_clients = batch["label"].shape[0]
        state, dec_loss = jax.lax.cond(
            do_update, update, lambda s: (s, jnp.zeros((num_clients,), jnp.float32)), state)
    penalty = make_penalty(decoder, alpha=alpha, threshold=threshold, kind=kind,
                           penalty_bn=penalty_bn)
    state, metrics = sfl.ROUNDS[schedule](state, images, batch["label"], server_key,
                                          model=model, penalty=penalty, smash=smash)
    weight = do_update.astype(jnp.float32)
    metrics["attacker/recon_loss"] = jnp.mean(dec_loss) * weight
    metrics["attacker/recon_loss#weight"] = weight
    return state, metrics


def make_ressfl_step(*, model, decoder, schedule: str, augment: str, alpha: float,
                     threshold: float, kind: str, interval: int, decoder_steps: int,
                     steps_per_epoch: int, smash=None, penalty_bn: str = "eval"):
    """Validates the settings and binds them: ``(state, batch, key) -> (state, metrics)``."""
    sfl.check_schedule(schedule)
    if kind not in losses.INVERSION_KINDS:
        raise ValueError(f"Unknown inversion loss {kind!r}; choose one of "
                         f"{losses.INVERSION_KINDS}.")
    for name, value in (("interval", interval), ("decoder_steps", decoder_steps),
                        ("steps_per_epoch", steps_per_epoch)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if alpha < 0:
        raise ValueError(f"alpha (reg_strength) must be >= 0, got {alpha}.")
    check_penalty_bn(penalty_bn)
    return functools.partial(ressfl_step, model=model, decoder=decoder, augment=augment,
                             schedule=schedule, alpha=alpha, threshold=threshold, kind=kind,
                             interval=interval, decoder_steps=decoder_steps,
                             steps_per_epoch=steps_per_epoch, smash=smash,
                             penalty_bn=penalty_bn)


def make_decoder_tx(*, lr: float = 1e-3, updates_per_epoch: int, milestones, gamma: float):
    """Adam for the simulated attacker with the reference's per-epoch multistep decay (§4.2)."""
    schedule = optim.make_schedule(base_lr=lr, updates_per_epoch=updates_per_epoch,
                                   milestones=milestones, gamma=gamma, zero_first_epoch=False)
    return optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)


def pretrain_decoders(state: SFLState, key, *, model, decoder, images, targets,
                      settings: decoder_fit.FitSettings):
    """Phase 0 (spec §4.3): pre-trains the simulated attacker before attacker-aware training.

    The decoder of client slot 0 is fitted (MSE, a fresh Adam, ``settings``) to client 0's
    eval-mode smashed data of ``images``, then copied into every slot. The reference pre-trains
    each slot separately on identical inputs; at this point all client copies (and decoder
    initialisations) are equal, so one fit replicated is the same computation done once.
    The main decoder optimizer state is left untouched (the reference's main Adam starts empty).

    Args:
      images: uint8 [N, H, W, 3], the attacker's source split (reference: the test split).
      targets: uint8 [N, H, W, 3], the reconstruction targets (reference: JPEG round-tripped
        ``images``).
      settings: decoder fitting protocol (reference: 30 epochs, batch 32, best single val batch).

    Returns:
      (state with pre-trained decoders, metrics): host floats 'val_mse', 'val_ssim', 'val_psnr'
      of the selected decoder on the validation split (eval mode), 'best_val_loss', 'epochs'.
    """
    if state.decoders is None:
        raise ValueError("pretrain_decoders needs a state with decoders (create_decoders).")
    client = jax.tree.map(lambda x: x[0], state.clients)
    features = sfl.client_features(model, client.params, client.batch_stats, images)
    target_floats = jnp.asarray(targets, jnp.float32) / 255.0
    slot0 = jax.tree.map(lambda x: x[0], state.decoders)
    variables, info = decoder_fit.fit_decoder(
        key, decoder, features, target_floats, settings,
        init_variables={"params": slot0.params, "batch_stats": slot0.batch_stats})
    _, val_idx = decoder_fit.split_indices(len(targets), settings.val_fraction,
                                           settings.split_seed)
    quality = decoder_fit.reconstruction_metrics(decoder, variables, features[val_idx],
                                                 target_floats[val_idx])
    num_clients = state.clients.step.shape[0]
    decoders = state.decoders.replace(
        params=federated.replicate(jax.device_put(variables["params"]), num_clients),
        batch_stats=federated.replicate(jax.device_put(variables["batch_stats"]), num_clients))
    metrics = {"val_mse": quality["mse"], "val_ssim": quality["ssim"],
               "val_psnr": quality["psnr"], "best_val_loss": info["best_val_loss"],
               "epochs": settings.epochs, "num_pairs": len(targets)}
    return state.replace(decoders=decoders), metrics
