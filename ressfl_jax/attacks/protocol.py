"""One attack of one checkpoint, as the reference measures it (spec §7): every attacker, metrics.

``attack_client`` takes a frozen ``ClientModel`` and its dataset, picks the auxiliary data and
the targets, runs the learned attack with each decoder type (and optionally the optimisation
attack), and returns a JSON-ready result with the checkpoint's accuracy beside the metrics,
plus the images for reconstruction grids.
"""

import dataclasses
import time

import jax
import numpy as np

from ressfl_jax.attacks import learned, optimization
from ressfl_jax.training import decoder_fit

AUX_SOURCES = ("test", "train")


@dataclasses.dataclass(frozen=True)
class OptimizationSettings:
    """The optimisation attack (``MIA_mf``); ``steps == 0`` disables it."""

    steps: int = 0
    lr: float = 0.8
    tv_weight: float = 0.0
    num_targets: int = 128


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """Everything that defines an attack run (defaults: the reference's protocol, spec §1.3).

    Attributes:
      decoders: attacker decoder types, each trained and reported separately.
      fit: the decoder-fitting protocol (epochs, batch, lr, loss, selection, split).
      aux_source: 'test' (the reference: the attacked dataset's test split, 90/10 split) or
        'train' (the training split minus the targets; no test images are read).
      aux_max: > 0 caps the number of auxiliary images (the first ones), for quick runs.
      jpeg: JPEG(q75) round trip of every image used as ground truth (spec §7.4).
      seeds / colluders: repeats (mean/std over seeds; best over colluders per seed).
      optimization: the optimisation attack.
    """

    decoders: tuple[str, ...] = learned.REFERENCE_DECODERS
    fit: decoder_fit.FitSettings = decoder_fit.FitSettings()
    aux_source: str = "test"
    aux_max: int = 0
    jpeg: bool = True
    seeds: int = 1
    colluders: int = 1
    optimization: OptimizationSettings = OptimizationSettings()

    def validate(self) -> None:
        if self.aux_source not in AUX_SOURCES:
            raise ValueError(f"Unknown aux_source {self.aux_source!r}; choose one of "
                             f"{AUX_SOURCES}.")
        if not self.decoders:
            raise ValueError("No attacker decoders given; name at least one, e.g. "
                             "'res_normN4C64'.")
        if self.aux_max < 0 or self.optimization.steps < 0:
            raise ValueError(f"aux_max and optimization steps must be >= 0, got "
                             f"{self.aux_max} and {self.optimization.steps}.")


def aux_images(dataset, settings: AttackSettings, target_indices: np.ndarray) -> np.ndarray:
    """The attacker's auxiliary images (uint8), never containing a target."""
    if settings.aux_source == "test":
        images = dataset.test_images
    else:
        keep = np.ones(len(dataset.train_images), bool)
        keep[target_indices] = False
        images = dataset.train_images[keep]
    return images[:settings.aux_max] if settings.aux_max else images


def attack_client(key, client, dataset, target_images: np.ndarray, target_indices: np.ndarray,
                  settings: AttackSettings, *, target_defense=None):
    """Attacks one frozen client with every configured attacker.

    Args:
      key: typed PRNG key.
      client: a ``ressfl_jax.client_model.ClientModel`` (or anything with ``__call__``,
        ``apply``, ``accuracy`` and ``image_shape``).
      dataset: the attacked run's ``Dataset`` (test split for accuracy and auxiliary data).
      target_images: uint8 [T, H, W, 3], the private images to reconstruct.
      target_indices: their indices in ``dataset.train_images`` (excluded from 'train' aux
        data); empty if they come from elsewhere.
      target_defense: optional jittable ``(key, features) -> features`` test-time defense (e.g.
        ``functools.partial(defenses.apply_defense, spec)``), applied to the target features and
        to every evaluation batch.

    Returns:
      (result, images): ``result`` = {'accuracy', 'attacks': [per decoder], 'worst_case',
      'optimization' (or None), 'num_targets', 'num_aux', 'seconds'}; ``images`` = {'targets':
      float [T, H, W, 3] ground truth, decoder type or 'optimization': reconstructions}.
    """
    settings.validate()
    start = time.perf_counter()
    defense_key = jax.random.fold_in(key, 2 ** 30)  # A stream apart from the decoders' keys.
    accuracy = client.accuracy(dataset.test_images, dataset.test_labels, defense=target_defense,
                               key=jax.random.fold_in(defense_key, 0))
    aux = aux_images(dataset, settings, target_indices)
    data = learned.prepare_data(client, aux, target_images, jpeg=settings.jpeg,
                                target_defense=target_defense,
                                key=jax.random.fold_in(defense_key, 1))
    images = {"targets": np.asarray(data.target_truth)}
    attacks = []
    for i, decoder_type in enumerate(settings.decoders):
        result, recon = learned.learned_attack(
            jax.random.fold_in(key, i), data, decoder_type=decoder_type, settings=settings.fit,
            seeds=settings.seeds, colluders=settings.colluders)
        attacks.append(result)
        images[decoder_type] = recon
    result = {"accuracy": accuracy, "attacks": attacks,
              "worst_case": learned.worst_case(attacks), "optimization": None,
              "num_targets": int(len(target_images)), "num_aux": int(len(aux))}
    opt = settings.optimization
    if opt.steps:
        n = min(opt.num_targets, len(target_images))
        fakes, objective = optimization.invert_by_optimization(
            client.apply, data.target_features[:n], image_shape=tuple(client.image_shape),
            steps=opt.steps, lr=opt.lr, tv_weight=opt.tv_weight)
        metrics, _ = learned.evaluate_images(fakes, data.target_truth[:n])
        result["optimization"] = {**metrics, "steps": opt.steps, "num_targets": n,
                                  "final_objective": float(np.mean(objective))}
        images["optimization"] = np.asarray(fakes)
    result["seconds"] = time.perf_counter() - start
    return result, images
