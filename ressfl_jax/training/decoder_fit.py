"""Fitting an inversion decoder to (smashed data, image) pairs, the whole run in one jit.

Used twice with the same protocol (spec §4.3 and §7.3):

* the defender's phase 0 (``pre_GAN_train``): the simulated attacker is pre-trained on the
  frozen client's features of the source split before attacker-aware training starts;
* the model-inversion attack: the honest-but-curious server trains a decoder on its auxiliary
  data.

Protocol (reference defaults): a 90/10 train/validation split of the pairs (seeded), batch 32
reshuffled every epoch with the last partial batch kept, Adam 1e-3, decoder in train mode, loss
MSE (or -SSIM). Model selection, ``selection``:

* ``'best_batch'`` (the reference's, faithful): after each epoch every validation batch is run
  **in train mode** (its batch statistics update the running BN statistics, as the reference's
  validation does), and the weights and running statistics are kept whenever one single
  validation batch's loss beats the best so far. Noisy; the small last batch counts too.
* ``'val_mean'`` (clean): after each epoch the whole validation split is evaluated in eval mode
  and the weights with the lowest mean validation loss are kept. Never touches any test target.

The epoch loop, shuffling, validation and selection all run on device inside one
``lax.fori_loop``; ``fit_decoder`` compiles once per (decoder, shapes, settings).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ressfl_jax import losses, rng
from ressfl_jax.state import TrainState

SELECTIONS = ("best_batch", "val_mean")


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Decoder-fitting hyperparameters (defaults: the reference's attacker, spec §7.3)."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.1
    split_seed: int = 123
    selection: str = "best_batch"
    loss: str = "mse"          # 'mse' or 'ssim' (minimises -SSIM); phase 0 always uses 'mse'.

    def validate(self, num_pairs: int) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"Unknown decoder selection {self.selection!r}; choose one of "
                             f"{SELECTIONS}.")
        if self.loss not in losses.INVERSION_KINDS:
            raise ValueError(f"Unknown decoder loss {self.loss!r}; choose one of "
                             f"{losses.INVERSION_KINDS}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and "
                             f"{self.batch_size}.")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}.")
        n_val = num_pairs - _num_train(num_pairs, self.val_fraction)
        if n_val < 1 or num_pairs - n_val < 1:
            raise ValueError(f"{num_pairs} pairs cannot be split {1 - self.val_fraction:.0%}/"
                             f"{self.val_fraction:.0%} into non-empty train and validation sets.")


def split_indices(num_pairs: int, val_fraction: float, seed: int):
    """(train, val) pair indices: a seeded shuffle, the first ``1 - val_fraction`` for training.

    Pair i is the i-th image of the source split. The reference shuffles with NumPy's legacy
    global RNG seeded 123 (spec §4.3.4; ``np.random.RandomState(seed)`` is the same generator and
    algorithm), but it shuffles POSITIONS in its pair files' glob order, ``sorted`` names
    "{i}.jpg", i.e. i sorted as strings (0, 1, 10, 100, ...), and trains on the first
    floor(0.9 n). We map the positions back to i so that every pair lands in the same split as
    in the reference.
    """
    files = np.array(sorted(range(num_pairs), key=str))
    order = files[np.random.RandomState(seed).permutation(num_pairs)]
    n_train = _num_train(num_pairs, val_fraction)
    return order[:n_train], order[n_train:]


def _num_train(num_pairs: int, val_fraction: float) -> int:
    return int(np.floor((1.0 - val_fraction) * num_pairs))  # The reference's floor(0.9 n).


def _batches(n: int, batch_size: int):
    """(number of full batches, size of the partial last batch, 0 if none)."""
    return n // batch_size, n % batch_size


def _apply(decoder, params, stats, features, *, train: bool):
    variables = {"params": params, "batch_stats": stats}
    if not train:
        return decoder.apply(variables, features, train=False), stats
    recon, updates = decoder.apply(variables, features, train=True, mutable=["batch_stats"])
    return recon, updates.get("batch_stats", stats)


def _loss(recon, targets, kind: str):
    return losses.inversion_loss(recon, targets, kind=kind)


def _train_step(decoder, kind, state: TrainState, features, targets):
    def loss_fn(params):
        recon, stats = _apply(decoder, params, state.batch_stats, features, train=True)
        return _loss(recon, targets, kind), stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    with jax.numpy_dtype_promotion("standard"):  # optax Adam's int count (strict-mode tests).
        return state.apply_gradients(grads=grads, batch_stats=stats), loss


def _make_fit(decoder, settings: FitSettings, n_train: int, n_val: int):
    """The pure fit function for fixed sizes: (key, variables, tx-state...) -> results."""
    bs = settings.batch_size
    full_train, rest_train = _batches(n_train, bs)
    full_val, rest_val = _batches(n_val, bs)
    kind = settings.loss
    step = functools.partial(_train_step, decoder, kind)

    def train_epoch(state, key, feats, targets):
        order = jax.random.permutation(key, n_train)
        total = jnp.float32(0.0)
        if full_train:
            idx = order[:full_train * bs].reshape(full_train, bs)

            def body(state, i):
                return step(state, feats[i], targets[i])

            state, batch_losses = jax.lax.scan(body, state, idx)
            total += jnp.sum(batch_losses) * bs
        if rest_train:
            i = order[full_train * bs:]
            state, loss = step(state, feats[i], targets[i])
            total += loss * rest_train
        return state, total / n_train

    def val_batches(feats, targets):
        """[(features, targets)] for the validation split in order: full batches + the rest."""
        out = []
        if full_val:
            out.append((feats[:full_val * bs].reshape((full_val, bs) + feats.shape[1:]),
                        targets[:full_val * bs].reshape((full_val, bs) + targets.shape[1:])))
        if rest_val:
            out.append((feats[full_val * bs:][None], targets[full_val * bs:][None]))
        return out

    def validate_best_batch(state, best, feats, targets):
        """Train-mode validation, updating running stats; keeps the best single batch."""

        def body(carry, batch):
            stats, best = carry
            recon, stats = _apply(decoder, state.params, stats, batch[0], train=True)
            loss = _loss(recon, batch[1], kind)
            better = loss < best["loss"]
            best = jax.tree.map(lambda new, old: jnp.where(better, new, old),
                                {"loss": loss, "params": state.params, "batch_stats": stats},
                                best)
            return (stats, best), loss

        stats, total, count = state.batch_stats, jnp.float32(0.0), 0
        for chunk in val_batches(feats, targets):
            (stats, best), chunk_losses = jax.lax.scan(body, (stats, best), chunk)
            total += jnp.sum(chunk_losses) * chunk[0].shape[1]
            count += chunk[0].shape[0] * chunk[0].shape[1]
        return state.replace(batch_stats=stats), best, total / count

    def validate_mean(state, best, feats, targets):
        """Eval-mode validation on the whole split; keeps the best mean loss."""
        total = jnp.float32(0.0)
        for chunk in val_batches(feats, targets):
            def body(_, batch):
                recon, _ = _apply(decoder, state.params, state.batch_stats, batch[0],
                                  train=False)
                return None, _loss(recon, batch[1], kind)

            _, chunk_losses = jax.lax.scan(body, None, chunk)
            total += jnp.sum(chunk_losses) * chunk[0].shape[1]
        loss = total / n_val
        better = loss < best["loss"]
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old),
                            {"loss": loss, "params": state.params,
                             "batch_stats": state.batch_stats}, best)
        return state, best, loss

    validate = (validate_best_batch if settings.selection == "best_batch" else validate_mean)

    def fit(key, state, train_feats, train_targets, val_feats, val_targets):
        best = {"loss": jnp.float32(jnp.inf), "params": state.params,
                "batch_stats": state.batch_stats}
        history = {"train_loss": jnp.zeros((settings.epochs,), jnp.float32),
                   "val_loss": jnp.zeros((settings.epochs,), jnp.float32)}

        def epoch(e, carry):
            state, best, history = carry
            state, train_loss = train_epoch(state, jax.random.fold_in(key, e), train_feats,
                                            train_targets)
            state, best, val_loss = validate(state, best, val_feats, val_targets)
            history = {"train_loss": history["train_loss"].at[e].set(train_loss),
                       "val_loss": history["val_loss"].at[e].set(val_loss)}
            return state, best, history

        _, best, history = jax.lax.fori_loop(0, settings.epochs, epoch, (state, best, history))
        return best, history

    return fit


@functools.lru_cache(maxsize=16)
def _fit_program(decoder, settings: FitSettings, n_train: int, n_val: int):
    """The jitted, vmapped fit for fixed sizes, cached: repeated attacks reuse the compilation."""
    tx = optax.adam(settings.lr, b1=0.9, b2=0.999, eps=1e-8)
    fit = _make_fit(decoder, settings, n_train, n_val)

    def create(key, init_variables, example):
        init_key, shuffle_key = jax.random.split(key)
        variables = init_variables
        if variables is None:
            variables = decoder.init({"params": init_key}, example, train=False)
        state = TrainState.create(apply_fn=decoder.apply, params=variables["params"], tx=tx,
                                  batch_stats=variables.get("batch_stats", {}))
        return shuffle_key, state

    @jax.jit
    def fit_all(keys, init_variables, train_feats, train_targets, val_feats, val_targets):
        shuffle_keys, states = jax.vmap(create, in_axes=(0, None, None))(
            keys, init_variables, train_feats[:1])
        return jax.vmap(fit, in_axes=(0, 0, None, None, None, None))(
            shuffle_keys, states, train_feats, train_targets, val_feats, val_targets)

    return fit_all


def fit_decoders(keys, decoder, features, targets, settings: FitSettings = FitSettings(),
                 init_variables=None):
    """Trains ``S = len(keys)`` independent decoders at once (one vmapped, jitted program).

    Every fit sees the same seeded train/validation split; its key drives its initialisation
    (unless ``init_variables`` is given) and its per-epoch shuffles. The reference repeats an
    attack with several seeds and colluders as separate runs (spec §7.5); here they are one
    program.

    Args:
      keys: typed PRNG keys [S].
      decoder: a Linen decoder (``ressfl_jax.models.build_decoder``).
      features: float32 [N, h, w, c] smashed data (constants: the client is frozen).
      targets: float32 [N, H, W, 3] images in [0, 1] (JPEG round-tripped for parity).
      settings: ``FitSettings``.
      init_variables: optional {'params', 'batch_stats'} every fit starts from (default: a
        fresh initialisation per key).

    Returns:
      (variables, info): ``variables`` = {'params', 'batch_stats'} of the selected decoders,
      leaves stacked [S, ...]; ``info`` = {'best_val_loss': [S], 'train_loss': [S][epochs],
      'val_loss': [S][epochs], 'num_train': int, 'num_val': int} (host values).
    """
    features = jnp.asarray(features, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    if features.shape[0] != targets.shape[0]:
        raise ValueError(f"features and targets differ in length: {features.shape[0]} vs "
                         f"{targets.shape[0]}.")
    settings.validate(features.shape[0])
    train_idx, val_idx = split_indices(features.shape[0], settings.val_fraction,
                                       settings.split_seed)
    fit_all = _fit_program(decoder, settings, len(train_idx), len(val_idx))
    with rng.unpartitioned():  # One single-device program: its init and shuffles.
        best, history = fit_all(keys, init_variables, features[train_idx], targets[train_idx],
                                features[val_idx], targets[val_idx])
    best, history = jax.device_get((best, history))
    info = {"best_val_loss": [float(x) for x in best["loss"]],
            "train_loss": [[float(x) for x in row] for row in history["train_loss"]],
            "val_loss": [[float(x) for x in row] for row in history["val_loss"]],
            "num_train": len(train_idx), "num_val": len(val_idx)}
    return {"params": best["params"], "batch_stats": best["batch_stats"]}, info


def fit_decoder(key, decoder, features, targets, settings: FitSettings = FitSettings(),
                init_variables=None):
    """Trains one decoder (``fit_decoders`` with a single key); returns the selected weights.

    Returns:
      (variables, info): ``variables`` = {'params', 'batch_stats'} (unstacked); ``info`` =
      {'best_val_loss': float, 'train_loss': [epochs], 'val_loss': [epochs], 'num_train',
      'num_val'}.
    """
    variables, info = fit_decoders(jnp.stack([key]), decoder, features, targets, settings,
                                   init_variables)
    info = {k: v[0] if isinstance(v, list) else v for k, v in info.items()}
    return jax.tree.map(lambda x: x[0], variables), info


def reconstruction_metrics(decoder, variables, features, targets, *, batch_size: int = 500):
    """Per-image MSE / SSIM (reference variant) / PSNR of eval-mode reconstructions, averaged.

    Returns host floats {'mse', 'ssim', 'psnr'}; PSNR is the mean of per-image PSNRs (§7.4).
    """
    parts = [_per_image(decoder, variables, features[i:i + batch_size],
                        targets[i:i + batch_size])
             for i in range(0, len(features), batch_size)]
    mse, ssim, psnr = (np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(3))
    return {"mse": float(mse.mean()), "ssim": float(ssim.mean()), "psnr": float(psnr.mean())}


@functools.partial(jax.jit, static_argnums=0)
def _per_image(decoder, variables, features, targets):
    recon = decoder.apply(variables, features, train=False)
    return (losses.mse_per_image(recon, targets), losses.ssim_per_image(recon, targets),
            losses.psnr_per_image(recon, targets))
