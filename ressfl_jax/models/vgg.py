"""VGG for 32x32 inputs, split at an entry of its layer list (spec §2.2; ResSFL main setting).

The layer list counts conv blocks AND max-pools, e.g. config "A" (VGG-11) is
64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M (13 entries, indices 0..12). A conv entry is
Conv3x3(pad 1, bias) -> [BatchNorm] -> ReLU; "M" is MaxPool 2x2 / 2. The head (server side) is
flatten -> Dropout(0.5) -> Dense(512) -> ReLU -> Dropout(0.5) -> Dense(512) -> ReLU -> Dense.
"""

from typing import Any

import flax.linen as nn
import jax

from ressfl_jax.models.layers import ConvBN, inits, max_pool_2x2, scaled

CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}
# arch name -> (config, batch_norm)
VARIANTS = {
    "vgg11_bn": ("A", True),
    "vgg11": ("A", False),
    "vgg13_bn": ("B", True),
    "vgg13": ("B", False),
}


def channels_after(config: str, num_entries: int, width_mult: float) -> int:
    """Channel count after the first ``num_entries`` entries of ``config`` (3 for none)."""
    convs = [v for v in CONFIGS[config][:num_entries] if v != "M"]
    return scaled(convs[-1], width_mult) if convs else 3


class VGGLayers(nn.Module):
    """Entries ``start <= i < stop`` of a VGG layer list; conv entry i is submodule ``layer{i}``.

    Attributes:
      config: "A" (VGG-11) or "B" (VGG-13).
      start, stop: the entry range (client: 0..cut, server: cut..len).
      use_bn: BatchNorm after each conv (the ``_bn`` variants).
      width_mult: channel multiplier.
      init_scheme: init scheme ("xavier" on the client, "torch" on the server).
      conv_impl, dtype: see ``layers.Conv``.
    """

    config: str
    start: int
    stop: int
    use_bn: bool = True
    width_mult: float = 1.0
    init_scheme: str = "torch"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, C] to [B, H / 2**pools, W / 2**pools, C'] (entries in the range)."""
        for i in range(self.start, self.stop):
            v = CONFIGS[self.config][i]
            if v == "M":
                x = max_pool_2x2(x)
            else:
                x = ConvBN(scaled(v, self.width_mult), use_bias=True, use_bn=self.use_bn,
                           init_scheme=self.init_scheme, conv_impl=self.conv_impl, dtype=self.dtype,
                           name=f"layer{i}")(x, train)
        return x


class VGGHead(nn.Module):
    """Classifier: flatten -> 2x [Dropout(0.5) -> Dense(512*w) -> ReLU] -> Dense(num_classes).

    PyTorch-default init (U(+-1/sqrt(fan_in)) for weights and biases). Dropout needs the
    'dropout' rng only when ``train`` is True. ``dropout_rate`` is the reference's 0.5; the
    step-parity check against the reference (``experiments.reference_parity``) sets 0 on both
    sides, since random masks cannot be shared between frameworks.
    """

    num_classes: int
    width_mult: float = 1.0
    dtype: Any = None
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, 1, 1, C] (any [B, ...]) to logits [B, num_classes]."""
        x = x.reshape(x.shape[0], -1)  # [B, H*W*C]; H = W = 1 for 32x32 inputs
        hidden = scaled(512, self.width_mult)
        for name in ("fc1", "fc2"):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.Dense(hidden, dtype=self.dtype, name=name,
                         **inits("torch", fan_in=x.shape[-1]))(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc3",
                        **inits("torch", fan_in=x.shape[-1]))(x)


def num_layers(arch: str) -> int:
    """Length of the layer list of VGG variant ``arch`` (13 for VGG-11)."""
    return len(CONFIGS[VARIANTS[arch][0]])


def make_parts(arch: str, *, cut_layer: int, num_classes: int, width_mult: float,
               conv_impl: str, dtype: Any) -> dict[str, Any]:
    """Client body, server body, head and split settings of VGG variant ``arch``."""
    config, use_bn = VARIANTS[arch]
    common = dict(config=config, use_bn=use_bn, width_mult=width_mult, conv_impl=conv_impl,
                  dtype=dtype)
    return dict(
        client_body=VGGLayers(start=0, stop=cut_layer, init_scheme="xavier", **common),
        server_body=VGGLayers(start=cut_layer, stop=len(CONFIGS[config]), init_scheme="torch",
                              **common),
        head=VGGHead(num_classes, width_mult, dtype),
        cut_channels=channels_after(config, cut_layer, width_mult),
        compress_init="xavier", expand_init="torch", mobilenet_quirks=False)
