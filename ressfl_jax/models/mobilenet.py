"""MobileNetV2, kuangliu CIFAR variant as modified by the ResSFL reference (spec §2.4).

Layer list: [0] stem Conv3x3(3->32, stride 1, no bias) -> BN (**no ReLU**, quirk); [1..7] the
stages (expansion, out, blocks, stride) below; [8] Conv1x1(320->1280, no bias) -> BN (no ReLU).
Layer i goes to the client iff i < cut_layer. The head is a 4x4 average pool and
Dense(1280 -> classes). Bottleneck quirks (ReLU always, 1x1 server conv) live in ``split.py``.
"""

from typing import Any

import flax.linen as nn
import jax

from ressfl_jax.models.layers import Conv, ConvBN, PooledHead, batch_norm, inits, scaled

STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
STEM_WIDTH, LAST_WIDTH = 32, 1280
NUM_LAYERS = len(STAGES) + 2


def layer_channels(index: int, width_mult: float) -> int:
    """Output channels of layer ``index`` (0 = stem, 1..7 = stages, 8 = last 1x1 conv)."""
    if index == 0:
        return scaled(STEM_WIDTH, width_mult)
    if index <= len(STAGES):
        return scaled(STAGES[index - 1][1], width_mult)
    return scaled(LAST_WIDTH, width_mult)


class Block(nn.Module):
    """Inverted residual: 1x1 expand -> BN -> ReLU -> 3x3 depthwise(stride) -> BN -> ReLU ->
    1x1 project -> BN, plus a shortcut for stride 1 only (identity, or 1x1 conv + BN)."""

    features: int
    expansion: int
    strides: int
    init_scheme: str = "torch"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, C] to [B, H / strides, W / strides, features]."""
        c_in = x.shape[-1]
        planes = self.expansion * c_in
        common = dict(init_scheme=self.init_scheme, conv_impl=self.conv_impl, dtype=self.dtype)
        y = ConvBN(planes, 1, name="expand", **common)(x, train)
        y = Depthwise(self.strides, name="depthwise", **common)(y, train)
        y = ConvBN(self.features, 1, relu=False, name="project", **common)(y, train)
        if self.strides != 1:
            return y
        if c_in != self.features:
            x = ConvBN(self.features, 1, relu=False, name="shortcut", **common)(x, train)
        return y + x


class Depthwise(nn.Module):
    """3x3 depthwise conv (pad 1, no bias) -> BN -> ReLU."""

    strides: int
    init_scheme: str = "torch"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, C] to [B, H / strides, W / strides, C]."""
        c = x.shape[-1]
        x = Conv(c, 3, strides=self.strides, padding=1, feature_group_count=c, use_bias=False,
                 impl=self.conv_impl, dtype=self.dtype, name="conv",
                 **inits(self.init_scheme, fan_in=9))(x)  # PyTorch fan-in: C_in / groups * 3 * 3
        return nn.relu(batch_norm(train, dtype=self.dtype, name="bn")(x))


class MobileNetLayers(nn.Module):
    """Layers ``start <= i < stop`` of MobileNetV2; layer i is submodule ``layer{i}``.

    Attributes:
      start, stop: the layer range (client: 0..cut, server: cut..9).
      width_mult: channel multiplier (hidden planes = expansion * scaled input channels).
      init_scheme: "xavier" on the client, "torch" on the server (spec §2.1).
      conv_impl, dtype: see ``layers.Conv``.
    """

    start: int
    stop: int
    width_mult: float = 1.0
    init_scheme: str = "torch"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, C] to the output of layer ``stop - 1``."""
        common = dict(init_scheme=self.init_scheme, conv_impl=self.conv_impl, dtype=self.dtype)
        for i in range(self.start, self.stop):
            features = layer_channels(i, self.width_mult)
            if i == 0:  # [quirk] no ReLU after the stem BN
                x = ConvBN(features, 3, relu=False, name="layer0", **common)(x, train)
            elif i <= len(STAGES):
                expansion, _, num_blocks, strides = STAGES[i - 1]
                x = Stage(features, expansion, num_blocks, strides, name=f"layer{i}",
                          **common)(x, train)
            else:  # [quirk] no ReLU after the last BN either
                x = ConvBN(features, 1, relu=False, name=f"layer{i}", **common)(x, train)
        return x


class Stage(nn.Module):
    """``num_blocks`` inverted-residual blocks; only the first one uses ``strides``."""

    features: int
    expansion: int
    num_blocks: int
    strides: int
    init_scheme: str = "torch"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, C] to [B, H / strides, W / strides, features]."""
        for j in range(self.num_blocks):
            x = Block(self.features, self.expansion, self.strides if j == 0 else 1,
                      self.init_scheme, self.conv_impl, self.dtype, name=f"block{j}")(x, train)
        return x


def num_layers(arch: str) -> int:
    """Length of the layer list (9: stem, 7 stages, last conv)."""
    del arch
    return NUM_LAYERS


def make_parts(arch: str, *, cut_layer: int, num_classes: int, width_mult: float,
               conv_impl: str, dtype: Any) -> dict[str, Any]:
    """Client body, server body, head and split settings of MobileNetV2."""
    del arch
    common = dict(width_mult=width_mult, conv_impl=conv_impl, dtype=dtype)
    return dict(
        client_body=MobileNetLayers(start=0, stop=cut_layer, init_scheme="xavier", **common),
        server_body=MobileNetLayers(start=cut_layer, stop=NUM_LAYERS, init_scheme="torch",
                                    **common),
        head=PooledHead(num_classes, 4, dtype),
        cut_channels=layer_channels(cut_layer - 1, width_mult),
        compress_init="xavier", expand_init="torch", mobilenet_quirks=True)
