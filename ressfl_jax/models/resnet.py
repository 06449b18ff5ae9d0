"""CIFAR ResNet-20/32 with option-A shortcuts, split at a layer index (spec §2.3).

Layer list: [0] stem Conv3x3(3->16, no bias) -> BN -> ReLU; then 3 stages of n basic blocks
(n = 3 for ResNet-20, 5 for ResNet-32) at 16, 32, 64 channels, the first block of stages 2 and 3
with stride 2. Layer i >= 1 is block (i - 1) % n of stage (i - 1) // n. The head is an 8x8
average pool and Dense(64 -> classes).

Init (spec §2.1): client convs He fan-out normal; server block convs and the head keep PyTorch
defaults.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ressfl_jax.models.layers import Conv, ConvBN, PooledHead, batch_norm, inits, scaled

DEPTHS = {"resnet20": 20, "resnet32": 32}
STAGE_WIDTHS = (16, 32, 64)


def _blocks_per_stage(depth: int) -> int:
    return (depth - 2) // 6


def layer_channels(depth: int, index: int, width_mult: float) -> int:
    """Output channels of layer ``index`` (0 = stem)."""
    if index == 0:
        return scaled(STAGE_WIDTHS[0], width_mult)
    return scaled(STAGE_WIDTHS[(index - 1) // _blocks_per_stage(depth)], width_mult)


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU.

    Option-A shortcut when the shape changes: every second pixel, then zero channels appended
    up to ``features`` (the reference appends C_in zero channels; equal at full width).
    """

    features: int
    strides: int = 1
    init_scheme: str = "torch"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, C] to [B, H / s, W / s, features]."""
        c_in = x.shape[-1]
        conv = dict(use_bias=False, impl=self.conv_impl, dtype=self.dtype)
        y = Conv(self.features, 3, strides=self.strides, padding=1, name="conv_a",
                 **inits(self.init_scheme, fan_in=c_in * 9), **conv)(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn_a")(y))
        y = Conv(self.features, 3, padding=1, name="conv_b",
                 **inits(self.init_scheme, fan_in=self.features * 9), **conv)(y)
        y = batch_norm(train, dtype=self.dtype, name="bn_b")(y)
        shortcut = x
        if self.strides != 1 or c_in != self.features:
            shortcut = x[:, ::self.strides, ::self.strides, :]
            b, h, w, _ = shortcut.shape
            zeros = jnp.zeros((b, h, w, self.features - c_in), shortcut.dtype)
            shortcut = jnp.concatenate([shortcut, zeros], axis=-1)
        return nn.relu(y + shortcut.astype(y.dtype))


class ResNetLayers(nn.Module):
    """Layers ``start <= i < stop`` of a CIFAR ResNet; layer i is submodule ``layer{i}``.

    Attributes:
      depth: 20 or 32.
      start, stop: the layer range (client: 0..cut, server: cut..3n+1).
      width_mult: channel multiplier.
      init_scheme: "he_fan_out" on the client, "torch" on the server (spec §2.1).
      conv_impl, dtype: see ``layers.Conv``.
    """

    depth: int
    start: int
    stop: int
    width_mult: float = 1.0
    init_scheme: str = "torch"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, C] to the output of layer ``stop - 1``."""
        n = _blocks_per_stage(self.depth)
        for i in range(self.start, self.stop):
            features = layer_channels(self.depth, i, self.width_mult)
            if i == 0:
                x = ConvBN(features, init_scheme=self.init_scheme, conv_impl=self.conv_impl,
                           dtype=self.dtype, name="layer0")(x, train)
            else:
                strides = 2 if (i - 1) >= n and (i - 1) % n == 0 else 1
                x = BasicBlock(features, strides, self.init_scheme, self.conv_impl, self.dtype,
                               name=f"layer{i}")(x, train)
        return x


def num_layers(arch: str) -> int:
    """Length of the layer list (10 for ResNet-20, 16 for ResNet-32)."""
    return 3 * _blocks_per_stage(DEPTHS[arch]) + 1


def make_parts(arch: str, *, cut_layer: int, num_classes: int, width_mult: float,
               conv_impl: str, dtype: Any) -> dict[str, Any]:
    """Client body, server body, head and split settings of ResNet ``arch``."""
    depth = DEPTHS[arch]
    common = dict(depth=depth, width_mult=width_mult, conv_impl=conv_impl, dtype=dtype)
    return dict(
        client_body=ResNetLayers(start=0, stop=cut_layer, init_scheme="he_fan_out", **common),
        server_body=ResNetLayers(start=cut_layer, stop=num_layers(arch), init_scheme="torch",
                                 **common),
        head=PooledHead(num_classes, 8, dtype),
        cut_channels=layer_channels(depth, cut_layer - 1, width_mult),
        compress_init="he_fan_out", expand_init="he_fan_out_zero_bias", mobilenet_quirks=False)
