"""Public API for auditors: a trained client model as a plain function (``load_client_model``).

Any checkpoint the project writes (``experiments.train``, ``pretrain``, ``transfer``) can be
opened without the config or code that produced it::

    import ressfl_jax
    client = ressfl_jax.load_client_model("runs/pretrain_cpu")       # best checkpoint
    features = client(images)        # images: [N, 32, 32, 3] float in [0, 1] -> smashed data
    client.dataset, client.mean, client.std, client.feature_shape   # metadata

The model is rebuilt from the checkpoint's metadata (arch, cut layer, bottleneck, width,
normalisation, classes); the client runs in eval mode (BatchNorm running statistics), as the
reference queries it for attacks (spec §7.1).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ressfl_jax import augment, expert
from ressfl_jax.models import SplitModel, build_split_model
from ressfl_jax.training import loop, sfl


def model_from_meta(meta: dict, *, conv_impl: str = "auto") -> SplitModel:
    """Rebuilds the split model described by a checkpoint's run metadata."""
    missing = [k for k in ("arch", "cut_layer", "bottleneck", "num_classes", "mean", "std")
               if k not in meta]
    if missing:
        raise ValueError(f"Checkpoint metadata lacks {missing}: it was not written by "
                         f"ressfl_jax's training loop, so the model cannot be rebuilt.")
    return build_split_model(meta["arch"], cut_layer=int(meta["cut_layer"]),
                             bottleneck=meta["bottleneck"], num_classes=int(meta["num_classes"]),
                             mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                             width_mult=float(meta.get("width_mult", 1.0)), conv_impl=conv_impl)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashable by identity (jit static).
class ClientModel:
    """A frozen client model restored from a checkpoint; call it on images to get smashed data.

    Attributes:
      meta: the run metadata saved with the checkpoint (arch, cut_layer, bottleneck, dataset,
        classes, mean, std, image_shape, feature_shape, config, code version, ...).
      step: the checkpoint's step (epoch); ``directory``: the checkpoint manager directory.
      model: the rebuilt ``SplitModel``.
      client / server: {'params', 'batch_stats'} (host arrays).
      decoder: the run's simulated attacker {'params', 'batch_stats'}, or None.
    """

    meta: dict
    step: int
    directory: str
    model: SplitModel
    client: dict
    server: dict
    decoder: dict | None

    @property
    def dataset(self) -> str:
        return self.meta.get("dataset", "")

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta["std"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["image_shape"])

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["feature_shape"])

    def __call__(self, images, *, batch_size: int = 500) -> jax.Array:
        """Smashed data of ``images``.

        Args:
          images: [N, H, W, 3], float in [0, 1] or uint8 (0..255); host or device array.
          batch_size: images per jitted call (the result does not depend on it).

        Returns:
          float32 [N, h, w, c] on the default device.
        """
        images = np.asarray(images) if not isinstance(images, jax.Array) else images
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must be [N, {', '.join(map(str, self.image_shape))}] "
                             f"(this checkpoint's image_shape); got {tuple(images.shape)}")
        return sfl.client_features(self.model, self.client["params"],
                                   self.client["batch_stats"], images, batch_size=batch_size)

    def apply(self, images) -> jax.Array:
        """Jittable pure form: float [N, H, W, 3] in [0, 1] -> [N, h, w, c] (eval mode)."""
        return sfl.client_apply(self.model, self.client["params"], self.client["batch_stats"],
                                augment.to_float(images), train=False)[0]

    def accuracy(self, images: np.ndarray, labels: np.ndarray, *, defense=None, key=None,
                 batch_size: int = 500) -> float:
        """Test accuracy of this client with the checkpoint's server (eval mode).

        Args:
          images: uint8 [N, H, W, 3]; labels: int [N].
          defense: optional jittable ``(key, features) -> features`` applied to the smashed
            data of every batch (a test-time defense, as the reference applies to every
            validation batch); batch i uses ``fold_in(key, i)``.
          key: typed PRNG key for a random ``defense``.
        """
        batches = loop.eval_batches(images, np.asarray(labels, np.int32), batch_size)
        key = jax.random.key(0) if key is None else key
        sums = _accuracy_sums(self.model, defense, self.client, self.server, batches, key)
        return float(sums["correct"] / sums["count"])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _accuracy_sums(model, defense, client, server, batches, key):
    def one(args):
        batch, index = args
        defend = None if defense is None else functools.partial(
            defense, jax.random.fold_in(key, index))
        return sfl.eval_sums(model, client, server, batch, defense=defend)

    num = batches["label"].shape[0]
    sums = jax.lax.map(one, (batches, jnp.arange(num)))
    return jax.tree.map(jnp.sum, sums)


def load_client_model(path: str, *, which: str = "best", step: int | None = None,
                      client_index: int = 0, conv_impl: str = "auto") -> ClientModel:
    """Opens a checkpoint written by any ressfl-jax run as a ``ClientModel``.

    Args:
      path: the run's WORKDIR, its ``checkpoints/`` folder, or ``checkpoints/{best,last}``.
      which: 'best' (highest test accuracy, the reference's ``--test_best``) or 'last'.
      step: a specific saved step (epoch); default the newest in that directory.
      client_index: which client copy (after FedAvg all copies are equal).
      conv_impl: conv implementation of the rebuilt model (``layers.Conv.impl``).

    Raises:
      FileNotFoundError: no checkpoint at ``path`` (the message says what was expected).
      ValueError: metadata that does not describe a ressfl-jax model.
    """
    ex = expert.load_extractor(path, which=which, step=step, client_index=client_index)
    return ClientModel(meta=ex.meta, step=ex.step, directory=ex.directory,
                       model=model_from_meta(ex.meta, conv_impl=conv_impl), client=ex.client,
                       server=ex.server, decoder=ex.decoder)
