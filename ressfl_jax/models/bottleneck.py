"""The ``CxSy`` bottleneck at the cut (spec §2.5): client-side ``Compress``, server ``Expand``.

ResSFL (Li et al., CVPR 2022) shrinks the smashed data with a small conv layer on the client
(e.g. ``norelu_C8S1``: 128x8x8 -> 8x8x8, raw signed output) and undoes it on the server.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax

from ressfl_jax.models.layers import Conv, ConvTranspose, inits

_NO_RELU_TAGS = ("noRELU", "norelu", "noReLU")


@dataclasses.dataclass(frozen=True)
class BottleneckSpec:
    """A parsed bottleneck option.

    Attributes:
      kernel: kernel size k of the stride-1 conv (stride >= 2 always uses 3x3).
      channels: channel count c of the smashed data (NOT scaled by ``width_mult``).
      stride: total spatial down-sampling s (1, or >= 2: log2(s/2) + 1 stride-2 convs).
      relu: whether a ReLU follows (``norelu`` prefix: False; MobileNet forces True).
    """

    kernel: int = 3
    channels: int = 8
    stride: int = 1
    relu: bool = True

    @property
    def num_extra(self) -> int:
        """Number of additional stride-2 layers for stride >= 2 (the reference's log2(s // 2))."""
        return int(math.log2(self.stride // 2)) if self.stride >= 2 else 0


def parse_bottleneck(spec: str | None) -> BottleneckSpec | None:
    """Parses a bottleneck option string with the reference's rules (spec §2.5).

    The bottleneck is on iff the string contains "C" or "S" (so None, "" and "None" give None).
    ``K<k>`` is read between "K" and "C" (default 3), ``C<c>`` between "C" and "S", ``S<s>``
    after "S" (default 1). If any of these fails to parse, the fallback is k3 c8 s1 with ReLU.

    Args:
      spec: e.g. "norelu_C8S1", "noRELU_C1S2", "K5C8S1", "C4S2", "None" or None.

    Returns:
      The parsed spec, or None when no bottleneck is requested.

    Raises:
      ValueError: for values the grammar parses but no layer can use (c < 1, s < 1, even or
        non-positive k), naming the value.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise ValueError(f"bottleneck must be a string like 'norelu_C8S1' or None, got {spec!r}")
    if "C" not in spec and "S" not in spec:
        return None
    try:  # the same string splits as the reference, so odd strings parse identically
        relu = not any(tag in spec for tag in _NO_RELU_TAGS)
        kernel = int(spec.split("C")[0].split("K")[1]) if "K" in spec else 3
        channels = int(spec.split("S")[0].split("C")[1])
        stride = int(spec.split("S")[1]) if "S" in spec else 1
    except (IndexError, ValueError):
        return BottleneckSpec(kernel=3, channels=8, stride=1, relu=True)
    if channels < 1 or stride < 1 or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"bottleneck {spec!r} gives kernel={kernel}, channels={channels}, "
                         f"stride={stride}; need channels >= 1, stride >= 1 and an odd kernel >= 1 "
                         "(e.g. 'norelu_C8S1', 'K5C8S1', 'C4S2')")
    return BottleneckSpec(kernel=kernel, channels=channels, stride=stride, relu=relu)


class Compress(nn.Module):
    """Client half of the bottleneck: C0 -> c channels, spatial / s.

    Attributes:
      spec: the parsed bottleneck.
      init_scheme: scheme name for ``layers.inits`` ("xavier" for VGG/MobileNet, "he_fan_out"
        for ResNet).
      force_relu: MobileNet quirk: ReLU even with ``norelu`` (spec §2.4).
      conv_impl: ``Conv.impl``.
      dtype: compute dtype.
    """

    spec: BottleneckSpec
    init_scheme: str = "xavier"
    force_relu: bool = False
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [B, H, W, C0] to the smashed data [B, H/s, W/s, c] (H/s rounded up per stride 2)."""
        spec, relu = self.spec, self.spec.relu or self.force_relu
        c, c0 = spec.channels, x.shape[-1]
        if spec.stride == 1:
            k = spec.kernel
            return self._act(Conv(c, k, padding=k // 2, impl=self.conv_impl, dtype=self.dtype,
                                  **inits(self.init_scheme, fan_in=c0 * k * k))(x), relu)
        # Explicit (1, 1) padding as in PyTorch; "SAME" would pad (0, 1) for stride 2.
        x = Conv(c, 3, strides=2, padding=1, impl=self.conv_impl, dtype=self.dtype,
                 **inits(self.init_scheme, fan_in=c0 * 9))(x)
        for _ in range(spec.num_extra):
            x = self._act(x, relu)
            x = Conv(c, 3, strides=2, padding=1, impl=self.conv_impl, dtype=self.dtype,
                     **inits(self.init_scheme, fan_in=c * 9))(x)
        return self._act(x, relu)

    @staticmethod
    def _act(x, relu: bool):
        return nn.relu(x) if relu else x


class Expand(nn.Module):
    """Server half of the bottleneck: c -> C0 channels, spatial * s.

    Attributes:
      spec: the parsed bottleneck.
      out_channels: C0, the client's channel count before the bottleneck.
      init_scheme: scheme of the stride-1 conv ("torch" for VGG/MobileNet,
        "he_fan_out_zero_bias" for ResNet). Transposed convs always keep PyTorch defaults
        (spec §2.1).
      force_relu: MobileNet quirk: ReLU even with ``norelu``.
      pointwise: MobileNet quirk: the stride-1 conv is 1x1 whatever K says.
      conv_impl: ``Conv.impl``.
      dtype: compute dtype.
    """

    spec: BottleneckSpec
    out_channels: int
    init_scheme: str = "torch"
    force_relu: bool = False
    pointwise: bool = False
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """Maps the smashed data [B, h, w, c] to [B, h*s', w*s', C0] (s' = 2 ** (num_extra + 1))."""
        spec, relu = self.spec, self.spec.relu or self.force_relu
        c = z.shape[-1]
        if spec.stride == 1:
            k = 1 if self.pointwise else spec.kernel
            x = Conv(self.out_channels, k, padding=k // 2, impl=self.conv_impl, dtype=self.dtype,
                     **inits(self.init_scheme, fan_in=c * k * k))(z)
            return nn.relu(x) if relu else x
        x = z
        for _ in range(spec.num_extra):
            x = self._conv_t(c)(x)
            x = nn.relu(x) if relu else x
        x = self._conv_t(self.out_channels)(x)
        return nn.relu(x) if relu else x

    def _conv_t(self, features: int) -> ConvTranspose:
        # PyTorch ConvT(k3, s2, pad 1, output_pad 1) maps H -> 2H; in flax that is padding (1, 2)
        # with transpose_kernel=True (then output pixels align exactly as in PyTorch, spec §3.7).
        # PyTorch's fan-in of a ConvTranspose2d is C_out * k * k (spec §2.1).
        return ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                             transpose_kernel=True, impl=self.conv_impl, dtype=self.dtype,
                             **inits("torch", fan_in=features * 9))
