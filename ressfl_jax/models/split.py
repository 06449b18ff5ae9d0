"""Split models for ResSFL (Li et al., CVPR 2022): a client feature extractor and a server.

``build_split_model(arch, cut_layer=...)`` puts the architecture's layers with reference index
``< cut_layer`` on the client (after input normalisation), followed by the client half of the
optional ``CxSy`` bottleneck (spec §2.5). The server is the bottleneck's other half, the
remaining layers and the classifier head. ``cut_layer`` is the reference's ``--cutlayer``, which
counts entries of the layer list (max-pools included for VGG); the paper counts client conv
layers instead (spec §0):

| paper            | arch        | cut_layer | client output | bottleneck in the scripts |
|------------------|-------------|-----------|---------------|---------------------------|
| VGG-11 cut 1     | vgg11_bn    | 2         | 16x16x64      | norelu_C1S1  -> 16x16x1   |
| VGG-11 cut 2     | vgg11_bn    | 4 (main)  | 8x8x128       | norelu_C8S1  -> 8x8x8     |
| VGG-11 cut 3     | vgg11_bn    | 5         | 8x8x256       | norelu_C12S1 -> 8x8x12    |
| ResNet-20 cut 2  | resnet20    | 2         | 32x32x16      | norelu_C1S2  -> 16x16x1   |
| ResNet-20 cut 3  | resnet20    | 3         | 32x32x16      | norelu_C1S1  -> 32x32x1   |
| ResNet-20 cut 4  | resnet20    | 4         | 32x32x16      | norelu_C2S1  -> 32x32x2   |
| MobileNetV2 cut 2| mobilenetv2 | 2         | 32x32x16      | norelu_C1S1  -> 32x32x1   |
| MobileNetV2 cut 3| mobilenetv2 | 3         | 32x32x24      | norelu_C2S1  -> 32x32x2   |
| MobileNetV2 cut 4| mobilenetv2 | 4         | 16x16x32      | norelu_C4S1  -> 16x16x4   |

MobileNetV2 quirks (spec §2.4): its bottleneck always applies ReLU (``norelu`` is ignored) and
its stride-1 server conv is 1x1. For stride >= 2 the reference crashes; here MobileNetV2 uses
the generic stride path (with the forced ReLU).

Variables: ``params`` plus ``batch_stats``. A half without any BatchNorm (e.g. a ``vgg11``
client, or a ``resnet20`` server at cut 10 without a bottleneck) has NO ``batch_stats``
collection at all; callers treat a missing collection as ``{}`` (flax accepts ``{}`` back).

Param tree: client ``{'body': {'layer<i>': ...}, 'compress': ...}``, server
``{'expand': ..., 'body': {'layer<i>': ...}, 'head': ...}``; ``layer<i>`` uses the reference
index, so a layer has the same name whatever the cut.
"""

import math
from numbers import Real
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ressfl_jax.models import mobilenet, resnet, vgg
from ressfl_jax.models.bottleneck import Compress, Expand, parse_bottleneck
from ressfl_jax.models.layers import CONV_IMPLS

_FAMILIES = {**{a: vgg for a in vgg.VARIANTS}, **{a: resnet for a in resnet.DEPTHS},
             "mobilenetv2": mobilenet}
ARCHS = tuple(_FAMILIES)


class SplitClient(nn.Module):
    """Client: normalise -> layers [0, cut) -> optional bottleneck ``Compress``.

    Attributes:
      mean, std: per-channel input normalisation (RGB), applied first.
      body: the client layers.
      compress: the client half of the bottleneck, or None.
      dtype: compute dtype.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    body: nn.Module
    compress: nn.Module | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """Computes the smashed data.

        Args:
          images: [B, H, W, 3] float in [0, 1] (NOT normalised; this module normalises).
          train: BatchNorm uses batch statistics (and updates ``batch_stats``) when True.

        Returns:
          features: [B, h, w, c] in ``dtype``.
        """
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"client expects float images in [0, 1], got dtype {images.dtype}; "
                             "convert uint8 images with images.astype(jnp.float32) / 255")
        if images.ndim != 4 or images.shape[-1] != len(self.mean):
            raise ValueError(f"client expects images [B, H, W, {len(self.mean)}], got shape "
                             f"{images.shape}")
        mean = jnp.asarray(self.mean, jnp.float32).reshape(1, 1, 1, -1)
        std = jnp.asarray(self.std, jnp.float32).reshape(1, 1, 1, -1)
        x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)
        x = self.body(x, train)
        return x if self.compress is None else self.compress(x)


class SplitServer(nn.Module):
    """Server: optional bottleneck ``Expand`` -> layers [cut, end) -> head.

    Attributes:
      body: the server layers.
      head: the classifier head.
      expand: the server half of the bottleneck, or None.
    """

    body: nn.Module
    head: nn.Module
    expand: nn.Module | None = None

    @nn.compact
    def __call__(self, features: jax.Array, train: bool) -> jax.Array:
        """Classifies smashed data.

        Args:
          features: [B, h, w, c] float, the client's output.
          train: BN batch statistics and dropout (needs rng 'dropout') when True.

        Returns:
          logits: [B, num_classes] float32.
        """
        x = features if self.expand is None else self.expand(features)
        x = self.body(x, train)
        return self.head(x, train).astype(jnp.float32)


class SplitModel(NamedTuple):
    """A built split model; ``bottleneck`` is the option string as given (or None)."""

    client: nn.Module
    server: nn.Module
    arch: str
    cut_layer: int
    bottleneck: str | None


def num_layers(arch: str) -> int:
    """Length of ``arch``'s reference layer list; valid cut layers are 1..num_layers(arch)."""
    _check_arch(arch)
    return _FAMILIES[arch].num_layers(arch)


def _check_arch(arch) -> None:
    if arch not in _FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")


def _check_args(arch, cut_layer, num_classes, mean, std, width_mult, conv_impl, dtype) -> None:
    _check_arch(arch)
    n = _FAMILIES[arch].num_layers(arch)
    if isinstance(cut_layer, bool) or not isinstance(cut_layer, int) or not 1 <= cut_layer <= n:
        raise ValueError(f"cut_layer={cut_layer!r} is out of range for {arch}: use an int in "
                         f"1..{n} (the reference --cutlayer; layers with index < cut_layer go to "
                         "the client)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: use a positive int")
    if (isinstance(width_mult, bool) or not isinstance(width_mult, Real)
            or not math.isfinite(width_mult) or width_mult <= 0):
        raise ValueError(f"width_mult={width_mult!r}: use a finite number > 0 (1.0 = reference "
                         "width; tests use 1/16)")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={conv_impl!r}: use one of {', '.join(CONV_IMPLS)}")
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != 3 or not all(isinstance(v, Real) for v in value):
            raise ValueError(f"{name}={value!r}: use 3 per-channel (RGB) numbers")
    if not all(s > 0 for s in std):
        raise ValueError(f"std={std!r}: every entry must be > 0")
    try:
        is_float = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        is_float = False
    if not is_float:
        raise ValueError(f"dtype={dtype!r}: use a float dtype such as jnp.float32 or "
                         "jnp.bfloat16")


def build_split_model(arch: str, *, cut_layer: int, bottleneck: str | None, num_classes: int,
                      mean: tuple[float, float, float], std: tuple[float, float, float],
                      width_mult: float = 1.0, conv_impl: str = "auto",
                      dtype: Any = jnp.float32) -> SplitModel:
    """Builds the client and server halves of ``arch`` split at ``cut_layer``.

    Args:
      arch: one of ``ARCHS`` ("vgg11_bn", "vgg11", "vgg13_bn", "vgg13", "resnet20",
        "resnet32", "mobilenetv2").
      cut_layer: reference ``--cutlayer`` (see the module docstring), 1..num_layers(arch).
      bottleneck: option string such as "norelu_C8S1" (spec §2.5), or None / "None".
      num_classes: classifier outputs.
      mean, std: RGB normalisation applied by the client to [0, 1] images.
      width_mult: scales every conv/dense channel count (round, at least 1); not the
        bottleneck's channel count.
      conv_impl: ``layers.Conv.impl`` for every conv ("auto", "xla", "im2col" or "tapwise").
      dtype: compute dtype (params stay float32; logits are float32).

    Returns:
      SplitModel(client, server, arch, cut_layer, bottleneck).

    Raises:
      ValueError: on any bad argument, naming the value and the valid choices.
    """
    _check_args(arch, cut_layer, num_classes, mean, std, width_mult, conv_impl, dtype)
    spec = parse_bottleneck(bottleneck)
    parts = _FAMILIES[arch].make_parts(arch, cut_layer=cut_layer, num_classes=num_classes,
                                       width_mult=width_mult, conv_impl=conv_impl, dtype=dtype)
    compress = expand = None
    if spec is not None:
        quirks = parts["mobilenet_quirks"]
        compress = Compress(spec, init_scheme=parts["compress_init"], force_relu=quirks,
                            conv_impl=conv_impl, dtype=dtype)
        expand = Expand(spec, parts["cut_channels"], init_scheme=parts["expand_init"],
                        force_relu=quirks, pointwise=quirks, conv_impl=conv_impl, dtype=dtype)
    client = SplitClient(tuple(float(m) for m in mean), tuple(float(s) for s in std),
                         parts["client_body"], compress, dtype)
    server = SplitServer(parts["server_body"], parts["head"], expand)
    return SplitModel(client, server, arch, cut_layer, bottleneck)


def feature_shape(model: SplitModel, image_shape: tuple[int, int, int] = (32, 32, 3)
                  ) -> tuple[int, int, int]:
    """Shape (h, w, c) of one image's smashed data, via ``jax.eval_shape`` (no compute)."""
    def features(images):
        out, _ = model.client.init_with_output({"params": jax.random.key(0)}, images,
                                               train=False)
        return out

    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    return tuple(int(d) for d in jax.eval_shape(features, images).shape[1:])
