"""The learning-based model-inversion attack (the reference's ``MIA``, spec §7.2-7.5).

An honest-but-curious server holds a frozen client model (a checkpoint) and auxiliary images of
the same distribution. It queries the client (eval mode) on the auxiliary images, trains a
decoder from smashed data back to images (MSE, Adam 1e-3, batch 32, 50 epochs by default, the
90/10 split and model selection of ``decoder_fit``), and then reconstructs the private targets
from their smashed data alone. Metrics are per image in [0, 1] space against the (JPEG
round-tripped, as the reference) targets, then averaged: MSE, SSIM (reference variant), PSNR
(mean of per-image PSNRs).

Repeats: ``seeds`` (the reference's ``average_time``: mean and population std over seeds) and
``colluders`` (the reference trains one decoder per colluding client copy and keeps, per seed,
the best MSE, SSIM and PSNR over them, spec §7.5). All ``seeds x colluders`` decoders of one
type train together as one vmapped program. Selection never sees the targets: they enter only
after training, in ``evaluate``.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ressfl_jax import losses
from ressfl_jax.data.jpeg import jpeg_round_trip
from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.training import decoder_fit

REFERENCE_DECODERS = ("conv_normN0C16", "res_normN0C16", "res_normN2C32", "res_normN4C64")


@dataclasses.dataclass(frozen=True)
class AttackData:
    """What the attacker works with, all on [0, 1] scale.

    Attributes:
      aux_features: float32 [N, h, w, c], the client's smashed data of the auxiliary images.
      aux_targets: float32 [N, H, W, 3], the auxiliary images (JPEG round-tripped if asked).
      target_features: float32 [T, h, w, c], the smashed data the attacker intercepts.
      target_truth: float32 [T, H, W, 3], the private images it should reconstruct (JPEG
        round-tripped if asked: the reference's ground truth, spec §7.4).
    """

    aux_features: jax.Array
    aux_targets: jax.Array
    target_features: jax.Array
    target_truth: jax.Array


def to_unit(images: np.ndarray, *, jpeg: bool) -> jax.Array:
    """uint8 [N, H, W, 3] -> float32 in [0, 1], after a JPEG(q75, 4:2:0) round trip if ``jpeg``."""
    images = jpeg_round_trip(images) if jpeg else np.asarray(images)
    return jnp.asarray(images, jnp.float32) / 255.0


def prepare_data(client, aux_images: np.ndarray, target_images: np.ndarray, *, jpeg: bool,
                 target_defense=None, key=None) -> AttackData:
    """Queries the frozen client on the auxiliary and target images.

    Args:
      client: ``images uint8/float [N, H, W, 3] -> smashed data`` (e.g. a ``ClientModel``).
      aux_images / target_images: uint8 [N, H, W, 3].
      jpeg: round-trip all images through JPEG before using them as ground truth.
      target_defense: optional ``(key, features) -> features`` applied to the targets'
        smashed data only (a test-time defense; the attacker trains on clean features, as the
        reference); ``key`` is its PRNG key.
    """
    target_features = client(target_images)
    if target_defense is not None:
        target_features = target_defense(key, target_features)
    return AttackData(aux_features=client(aux_images), aux_targets=to_unit(aux_images, jpeg=jpeg),
                      target_features=jnp.asarray(target_features, jnp.float32),
                      target_truth=to_unit(target_images, jpeg=jpeg))


def _image_metrics(recon, truth):
    """Per-image MSE, SSIM (reference variant) and PSNR, each [T]."""
    return (losses.mse_per_image(recon, truth), losses.ssim_per_image(recon, truth),
            losses.psnr_per_image(recon, truth))


def evaluate_images(recon, truth):
    """Means over images of per-image MSE / SSIM / PSNR (spec §7.4); also the per-image values.

    Args:
      recon, truth: float [T, H, W, 3] on [0, 1] scale (recon may leave it; it is not clamped).
    """
    mse, ssim, psnr = jax.device_get(jax.jit(_image_metrics)(recon, truth))
    return ({"mse": float(mse.mean()), "ssim": float(ssim.mean()), "psnr": float(psnr.mean())},
            {"mse": mse, "ssim": ssim, "psnr": psnr})


@functools.partial(jax.jit, static_argnums=0)
def _per_image_metrics(decoder, variables, features, truth):
    """Eval-mode reconstructions of every stacked decoder: metrics [S, T] and recon [S, T, ...]."""

    def one(v):
        recon = decoder.apply(v, features, train=False)
        return _image_metrics(recon, truth) + (recon,)

    return jax.lax.map(one, variables)


def evaluate(decoder, variables, features, truth, *, seeds: int, colluders: int,
             val_loss=None):
    """Metrics of ``seeds * colluders`` stacked decoders on the targets (spec §7.4-7.5).

    Args:
      val_loss: None (the reference): per seed, the best MSE, SSIM and PSNR over colluders,
        each on the targets (they may come from different colluders). Or each decoder's
        attacker-side validation loss [S] (clean): per seed, the colluder with the lowest one,
        all three metrics from it, so no choice reads the targets.

    Returns:
      (metrics, recon): metrics = {'mse', 'ssim', 'psnr'} means over seeds of the per-seed
      values, their population std over seeds ('*_std'), and 'per_seed' lists; ``recon``
      float32 [T, H, W, 3] from seed 0's chosen decoder (reference: its lowest target MSE).
    """
    mse, ssim, psnr, recon = jax.device_get(
        _per_image_metrics(decoder, variables, features, truth))
    shape = (seeds, colluders)
    mse, ssim, psnr = (m.mean(1).reshape(shape) for m in (mse, ssim, psnr))  # per decoder
    if val_loss is None:  # Per seed: the best over colluders (spec §7.5).
        best = {"mse": mse.min(1), "ssim": ssim.max(1), "psnr": psnr.max(1)}
        chosen = int(np.argmin(mse[0]))
    else:
        pick = np.argmin(np.asarray(val_loss).reshape(shape), axis=1)
        rows = np.arange(seeds)
        best = {"mse": mse[rows, pick], "ssim": ssim[rows, pick], "psnr": psnr[rows, pick]}
        chosen = int(pick[0])
    metrics = {}
    for name, values in best.items():
        metrics[name] = float(values.mean())
        metrics[f"{name}_std"] = float(values.std())
        metrics[f"{name}_per_seed"] = [float(v) for v in values]
    return metrics, np.asarray(recon[chosen])


def learned_attack(key, data: AttackData, *, decoder_type: str,
                   settings: decoder_fit.FitSettings, seeds: int = 1, colluders: int = 1,
                   conv_impl: str = "auto"):
    """Trains ``seeds * colluders`` decoders of one type and attacks the targets.

    Args:
      key: typed PRNG key (decoder initialisations and shuffles).
      data: ``prepare_data`` output.
      decoder_type: e.g. 'res_normN4C64' (spec §3); initialised with PyTorch defaults, as the
        reference's attacker.
      settings: the decoder-fitting protocol (reference: 50 epochs, batch 32, Adam 1e-3, MSE,
        best single validation batch).

    Returns:
      (result, recon): result = metrics (see ``evaluate``) plus 'decoder', 'best_val_loss'
      (per fit) and 'val_loss' (per epoch, first fit); recon float32 [T, H, W, 3].
    """
    if seeds < 1 or colluders < 1:
        raise ValueError(f"seeds and colluders must be >= 1, got {seeds} and {colluders}.")
    feature_shape = tuple(data.aux_features.shape[1:])
    decoder = build_decoder(decoder_type, feature_shape=feature_shape,
                            image_shape=tuple(data.aux_targets.shape[1:]), init="torch",
                            conv_impl=conv_impl)
    keys = jax.random.split(key, seeds * colluders)
    variables, info = decoder_fit.fit_decoders(keys, decoder, data.aux_features,
                                               data.aux_targets, settings)
    # The clean selection (val_mean) also picks colluders on the attacker's validation loss.
    clean = settings.selection == "val_mean"
    metrics, recon = evaluate(decoder, variables, data.target_features, data.target_truth,
                              seeds=seeds, colluders=colluders,
                              val_loss=info["best_val_loss"] if clean else None)
    result = {"decoder": decoder_type, **metrics, "best_val_loss": info["best_val_loss"],
              "val_loss": info["val_loss"][0], "num_aux_train": info["num_train"],
              "num_aux_val": info["num_val"]}
    return result, recon


def worst_case(results: list[dict]) -> dict:
    """The defender's worst case over attacks: lowest MSE, highest SSIM and PSNR (may differ)."""
    if not results:
        raise ValueError("worst_case needs at least one attack result.")
    by_mse = min(results, key=lambda r: r["mse"])
    return {"mse": by_mse["mse"], "mse_decoder": by_mse["decoder"],
            "ssim": max(r["ssim"] for r in results),
            "ssim_decoder": max(results, key=lambda r: r["ssim"])["decoder"],
            "psnr": max(r["psnr"] for r in results),
            "psnr_decoder": max(results, key=lambda r: r["psnr"])["decoder"]}
