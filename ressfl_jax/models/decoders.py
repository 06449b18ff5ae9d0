"""Inversion decoders (spec §3): the model-inversion attackers mapping smashed data to images.

ResSFL (Li et al., CVPR 2022) trains a simulated attacker (the defender's decoder, Xavier init)
against the client and evaluates with a fresh one (the attacker's, PyTorch default init; §2.1).
Families (§3.1): ``conv_normN{N}C{C}`` (§3.3, conv-BN-ReLU), ``res_normN{N}C{C}`` (§3.4,
pre-activation residual blocks) and ``custom`` (§3.5, BN-free). Each upsamples [B, h, w, c] by
U = floor(log2(32 / h)) stride-2 transposed convs to a [B, 32, 32, 3] sigmoid image. PyTorch's
ConvT(k3, s2, p1, output_pad 1) is Flax ``ConvTranspose`` with strides 2, padding ((1, 2), (1, 2))
and ``transpose_kernel=True`` (§3.7): ``kernel[ky, kx, o, i] == torch_weight[i, o, ky, kx]``.
"""

import dataclasses
import warnings
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ressfl_jax.models.layers import CONV_IMPLS, Conv, ConvTranspose, batch_norm, inits

DECODER_FAMILIES = ("conv_norm", "res_norm", "custom")
DECODER_INITS = ("xavier", "torch")
_VALID_FORMS = "'conv_normN{N}C{C}' (e.g. 'conv_normN0C16'), 'res_normN{N}C{C}' or 'custom'"


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """A parsed decoder type string.

    Attributes:
      family: one of ``DECODER_FAMILIES``.
      depth: N, the number of middle layers / blocks (0 for ``custom``).
      width: C, the internal channel count (0 for ``custom``, whose widths follow the input).
    """

    family: str
    depth: int = 0
    width: int = 64


def parse_decoder(decoder_type: str) -> DecoderSpec:
    """Parses a decoder type string with the reference's rules (spec §3.1).

    ``custom`` must match exactly; the other families match by substring ("conv_normN" first).
    N is read between "...normN" and the first "C", C between the first and second "C". If either
    fails to parse, the reference silently falls back to N=0, C=64 (here with a warning).

    Args:
      decoder_type: e.g. "conv_normN0C16", "res_normN4C64" or "custom".

    Returns:
      The parsed spec.

    Raises:
      ValueError: for an unknown family, or N < 0 / C < 1.
    """
    if not isinstance(decoder_type, str):
        raise ValueError(f"decoder type must be a string: {_VALID_FORMS}; got {decoder_type!r}")
    if decoder_type == "custom":
        return DecoderSpec("custom", 0, 0)
    for family in ("conv_norm", "res_norm"):
        tag = family + "N"
        if tag not in decoder_type:
            continue
        try:  # the same splits as the reference, so odd strings parse identically
            after = decoder_type.split(tag)[1]
            depth, width = int(after.split("C")[0]), int(after.split("C")[1])
        except (IndexError, ValueError):
            warnings.warn(f"could not read N and C from decoder type {decoder_type!r}; using the "
                          "reference's fallback N=0, C=64", stacklevel=2)
            depth, width = 0, 64
        if depth < 0 or width < 1:
            raise ValueError(f"decoder type {decoder_type!r} gives N={depth}, C={width}; "
                             "need N >= 0 and C >= 1")
        return DecoderSpec(family, depth, width)
    raise ValueError(f"unknown decoder type {decoder_type!r}; valid forms are {_VALID_FORMS}")


def num_upsamplings(h: int, image_size: int = 32) -> int:
    """U = floor(log2(image_size / h)), the number of 2x upsamplings (spec §3.2).

    Args:
      h: feature height; 0 means the features are logits (then U = log2(image_size), e.g. 5).
      image_size: output image height.

    Returns:
      U >= 0.

    Raises:
      ValueError: for h < 0, image_size < 1, or h > image_size.
    """
    if h < 0 or image_size < 1 or h > image_size:
        raise ValueError(f"cannot upsample features of height {h} to an image of height "
                         f"{image_size}; need 0 <= h <= image_size (0 = logits)")
    ratio = image_size if h == 0 else image_size // h  # floor(log2(a/b)) == floor(log2(a//b))
    return ratio.bit_length() - 1


class _Layers(NamedTuple):
    """Layer factories sharing the init scheme, conv implementation and compute dtype."""

    init: str
    impl: str
    dtype: Any

    def conv(self, features: int, c_in: int, kernel: int = 3, use_bias: bool = True,
             name: str | None = None) -> Conv:
        """Conv k x k, stride 1, pad k // 2 (PyTorch fan_in = C_in * k * k)."""
        return Conv(features, kernel_size=kernel, padding=kernel // 2, use_bias=use_bias,
                    dtype=self.dtype, impl=self.impl, name=name,
                    **inits(self.init, fan_in=c_in * kernel * kernel))

    def conv_t(self, features: int) -> ConvTranspose:
        """ConvT(k3, s2, p1, output_pad 1): H -> 2H (PyTorch fan_in = C_out * 3 * 3)."""
        return ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                             transpose_kernel=True, dtype=self.dtype, impl=self.impl,
                             **inits(self.init, fan_in=features * 9))

    def bn(self, train: bool, name: str | None = None) -> nn.BatchNorm:
        """BatchNorm with PyTorch defaults."""
        return batch_norm(train, dtype=self.dtype, name=name)


class ResBlock(nn.Module):
    """Pre-activation ResBlock(a -> b) of the reference (spec §3.4); no activation after the sum.

    Attributes:
      features: b, the output channels.
      layers: the layer factories.
    """

    features: int
    layers: _Layers

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, a] to [B, H, W, b]."""
        make, c_in = self.layers, x.shape[-1]
        y = nn.relu(make.bn(train, "bn0")(x))
        y = nn.relu(make.bn(train, "bn1")(make.conv(self.features, c_in, name="conv1")(y)))
        y = make.conv(self.features, self.features, name="conv2")(y)
        shortcut = x  # on the raw block input, not the pre-activated one
        if c_in != self.features:
            shortcut = make.conv(self.features, c_in, 1, use_bias=False, name="shortcut_conv")(x)
            shortcut = make.bn(train, "shortcut_bn")(shortcut)
        return y + shortcut


class Decoder(nn.Module):
    """An inversion decoder; build it with ``build_decoder``, which validates the shapes.

    Attributes:
      spec: the parsed type string.
      feature_shape: (h, w, c) of one feature map; (0, 0, classes) for logits.
      upsamplings: U.
      out_channels: image channels (3).
      layers: the layer factories.
    """

    spec: DecoderSpec
    feature_shape: tuple[int, int, int]
    upsamplings: int
    out_channels: int
    layers: _Layers

    @nn.compact
    def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
        """Reconstructs images from smashed data.

        Args:
          features: [B, h, w, c] float (NHWC smashed data); for logits, [B, classes].
          train: use batch statistics and update ``batch_stats`` (needs mutable=['batch_stats']).

        Returns:
          recon: [B, H, W, 3] float32 in [0, 1].
        """
        h, w, c = self.feature_shape
        if h == 0:  # logits [B, classes] -> [B, 1, 1, classes]
            features = features.reshape(features.shape[0], 1, 1, -1)
            h, w = 1, 1
        if features.ndim != 4 or features.shape[1:] != (h, w, c):
            raise ValueError(f"decoder built for features [B, {h}, {w}, {c}] got shape "
                             f"{features.shape}")
        x = features.astype(self.layers.dtype) if self.layers.dtype is not None else features
        body = {"conv_norm": self._conv_norm, "res_norm": self._res_norm,
                "custom": self._custom}[self.spec.family]
        return nn.sigmoid(body(x, train)).astype(jnp.float32)

    def _conv_norm(self, x: jax.Array, train: bool) -> jax.Array:
        make, width, u = self.layers, self.spec.width, self.upsamplings
        x = nn.relu(make.bn(train)(make.conv(width, x.shape[-1])(x)))
        for _ in range(self.spec.depth):
            x = nn.relu(make.bn(train)(make.conv(width, width)(x)))
        for stage in range(max(2, u)):  # stages A, B (3x3 conv when U is too small), extra U - 2
            layer = make.conv_t(width) if stage < u else make.conv(width, width)
            x = nn.relu(make.bn(train)(layer(x)))
        return make.bn(train)(make.conv(self.out_channels, width)(x))

    def _res_norm(self, x: jax.Array, train: bool) -> jax.Array:
        make, width, u = self.layers, self.spec.width, self.upsamplings
        for _ in range(1 + self.spec.depth):
            x = nn.relu(ResBlock(width, make)(x, train))
        for stage in range(max(2, u)):
            if stage < u:
                x = nn.relu(make.bn(train)(make.conv_t(width)(x)))
            else:
                x = nn.relu(ResBlock(width, make)(x, train))
        return ResBlock(self.out_channels, make)(x, train)

    def _custom(self, x: jax.Array, train: bool) -> jax.Array:
        del train  # no BN
        make, nc = self.layers, x.shape[-1]
        if self.upsamplings == 0:
            x = nn.relu(make.conv(nc, nc)(x))
            return make.conv(self.out_channels, nc)(x)
        for _ in range(self.upsamplings - 1):  # halve the channels at each doubling
            x = nn.relu(make.conv(nc // 2, nc)(x))
            x = nn.relu(make.conv_t(nc // 2)(x))
            nc //= 2
        x = nn.relu(make.conv(nc, nc)(x))
        return make.conv_t(self.out_channels)(x)


def build_decoder(decoder_type: str, *, feature_shape: tuple[int, int, int],
                  image_shape: tuple[int, int, int] = (32, 32, 3), init: str = "xavier",
                  conv_impl: str = "auto", dtype: Any = jnp.float32) -> nn.Module:
    """Builds an inversion decoder for smashed data of a given shape (spec §3).

    Args:
      decoder_type: a type string, see ``parse_decoder``.
      feature_shape: (h, w, c) of the smashed data, all positive; (0, 0, classes) for logits.
      image_shape: (H, W, 3) of the reconstruction; H must equal h * 2**U (also for w).
      init: "xavier" (the defender's decoders: Xavier-uniform weights, zero biases) or "torch"
        (the attacker's decoders: PyTorch defaults U(+-1/sqrt(fan_in)) for weights and biases).
      conv_impl: implementation of the 3x3 convs, see ``layers.Conv``.
      dtype: compute dtype (params stay float32; the output is float32).

    Returns:
      A ``Decoder``: ``init({'params': key}, features, train=False)`` and
      ``apply(variables, features, train=True, mutable=['batch_stats'])``.

    Raises:
      ValueError: for a bad type string, init or conv_impl, or shapes that cannot be matched.
    """
    spec = parse_decoder(decoder_type)
    if init not in DECODER_INITS:
        raise ValueError(f"decoder init must be one of {DECODER_INITS}, got {init!r}")
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    feature_shape = tuple(int(d) for d in feature_shape)
    image_shape = tuple(int(d) for d in image_shape)
    logits = len(feature_shape) == 3 and feature_shape[:2] == (0, 0) and feature_shape[2] > 0
    if len(feature_shape) != 3 or (min(feature_shape) < 1 and not logits):
        raise ValueError(f"feature_shape must be (h, w, c) with positive dims, or (0, 0, classes) "
                         f"for logits; got {feature_shape}")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive dims; got {image_shape}")
    h, w, c = feature_shape
    u = num_upsamplings(h, image_shape[0]) if h <= image_shape[0] else 0
    out_side = (max(h, 1) << u, max(w, 1) << u)
    if out_side != image_shape[:2]:
        raise ValueError(f"features {feature_shape} upsample by 2**{u} to {out_side}, not the "
                         f"image size {image_shape[:2]} of image_shape {image_shape}")
    if spec.family == "custom" and c >> max(u - 1, 0) < 1:
        raise ValueError(f"custom decoder halves the {c} channels of features {feature_shape} "
                         f"{u - 1} times; need at least {1 << (u - 1)}")
    return Decoder(spec=spec, feature_shape=feature_shape, upsamplings=u,
                   out_channels=image_shape[2], layers=_Layers(init, conv_impl, dtype))
