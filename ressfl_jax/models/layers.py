"""Shared layers for the split models: a CPU-friendly ``Conv``, PyTorch-style inits, BatchNorm.

Implements the building blocks of the ResSFL (Li et al., CVPR 2022) architectures (spec §2).

``Conv`` is a drop-in for ``flax.linen.Conv`` (same ``kernel`` [kh, kw, C_in/groups, C_out] HWIO and
``bias`` [C_out] params) that can compute stride-1 convolutions as im2col + one matmul. XLA-CPU's
convolution is pathologically slow for 3x3 convs on tiny spatial inputs with many channels
(environment.md §3); im2col turns them into a well-tuned GEMM.

Measured (2 cores, batch 32, VGG-11 3x3 convs, fwd + grad wrt x and w, ms xla/im2col):
2x2 512-512 1073/10, 4x4 512-512 44/39, 4x4 256-512 22/19, 8x8 256-256 75/85, 8x8 128-256 40/42.
So "auto" uses im2col for spatial sides <= 4 (2x2: ~100x faster; 8x8: xla is ~10% faster).
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "im2col")
# "auto" uses im2col for 3x3 stride-1 convs on CPU when both spatial sides are <= this.
AUTO_IM2COL_MAX_SIDE = 4

Initializer = Any
PaddingLike = str | int | Sequence[tuple[int, int]]


def xavier_uniform() -> Initializer:
    """Xavier/Glorot uniform (gain 1), as PyTorch's ``xavier_uniform_``, for HWIO/[in, out]."""
    return nn.initializers.xavier_uniform()


def he_normal_fan_out() -> Initializer:
    """N(0, sqrt(2 / (kh * kw * C_out))): the CIFAR-ResNet conv init (fan-out He, not truncated)."""
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Conv/Linear kernels AND biases.

    Args:
      fan_in: PyTorch's fan-in: C_in/groups * kh * kw for Conv2d, in_features for Linear, and
        C_out * kh * kw for ConvTranspose2d (PyTorch reads dim 1 of its [C_in, C_out, kh, kw]).
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def inits(scheme: str, *, fan_in: int) -> dict[str, Initializer]:
    """``kernel_init``/``bias_init`` kwargs for one of the reference's init schemes (spec §2.1).

    Args:
      scheme: "xavier" (Xavier-uniform weights, zero bias), "torch" (PyTorch defaults),
        "he_fan_out" (He fan-out weights, PyTorch-default bias: the ResNet client) or
        "he_fan_out_zero_bias" (the ResNet server's top-level conv).
      fan_in: PyTorch's fan-in of the layer (see ``torch_default``).
    """
    if scheme == "xavier":
        return {"kernel_init": xavier_uniform(), "bias_init": nn.initializers.zeros_init()}
    if scheme == "torch":
        return {"kernel_init": torch_default(fan_in), "bias_init": torch_default(fan_in)}
    if scheme == "he_fan_out":
        return {"kernel_init": he_normal_fan_out(), "bias_init": torch_default(fan_in)}
    if scheme == "he_fan_out_zero_bias":
        return {"kernel_init": he_normal_fan_out(), "bias_init": nn.initializers.zeros_init()}
    raise ValueError(f"unknown init scheme {scheme!r}; expected xavier, torch, he_fan_out or "
                     "he_fan_out_zero_bias")


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch semantics; a drop-in for ``nn.BatchNorm``.

    Same variables as flax (params ``scale``/``bias``, batch_stats ``mean``/``var``). Unlike flax
    it (a) always normalises in float32 and returns ``dtype`` (default: the input's), so bf16
    compute works under strict dtype promotion, and (b) updates the running variance with the
    UNBIASED batch variance (n / (n - 1)), as PyTorch does; normalisation uses the biased one.

    Attributes:
      use_running_average: normalise with the running statistics (eval) instead of the batch's.
      momentum: running-average decay (flax convention: 0.9 = PyTorch momentum 0.1).
      epsilon: added to the variance.
      dtype: output dtype (None: the input's).
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises [..., C] per channel; updates ``batch_stats`` when training (not at init)."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)
        axes, bshape = tuple(range(x.ndim - 1)), (1,) * (x.ndim - 1) + (c,)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean.reshape(bshape)), axes)  # biased
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * (n / max(n - 1, 1))
        inv = scale * lax.rsqrt(var + self.epsilon)
        y = (x32 - mean.reshape(bshape)) * inv.reshape(bshape) + bias.reshape(bshape)
        return y.astype(self.dtype or x.dtype)


def batch_norm(train: bool, *, dtype: Any = None, name: str | None = None) -> BatchNorm:
    """BatchNorm with PyTorch defaults: momentum 0.1 (flax 0.9), eps 1e-5, gamma 1, beta 0."""
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                     name=name)


def _explicit_pads(padding: PaddingLike, ksize: tuple[int, int], strides: tuple[int, int]
                   ) -> list[tuple[int, int]] | str:
    """(lo, hi) pairs per spatial dim; "SAME" stays a string only where it is not symmetric."""
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    if padding == "VALID":
        return [(0, 0)] * 2
    if padding == "SAME":
        if strides == (1, 1) and all(k % 2 == 1 for k in ksize):
            return [(k // 2, k // 2) for k in ksize]
        return padding
    if isinstance(padding, str):
        raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs; got {padding!r}")
    return [tuple(p) for p in padding]


def _im2col(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Stride-1 ungrouped conv as pad -> concat of kh*kw shifted slices -> matmul (NHWC, HWIO)."""
    kh, kw, c_in, c_out = kernel.shape
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    b, hp, wp, _ = x.shape
    h, w = hp - kh + 1, wp - kw + 1
    cols = jnp.concatenate([x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)],
                           axis=-1)                      # [B, H, W, kh*kw*C_in], (i, j, c) order
    out = cols.reshape(b * h * w, kh * kw * c_in) @ kernel.reshape(kh * kw * c_in, c_out)
    return out.reshape(b, h, w, c_out)


class Conv(nn.Module):
    """2D convolution on NHWC inputs; a drop-in for ``nn.Conv`` with a selectable implementation.

    Attributes:
      features: C_out.
      kernel_size: (kh, kw) or an int.
      strides: (sh, sw) or an int.
      padding: "SAME", "VALID", an int (symmetric, PyTorch-style) or per-dim (lo, hi) pairs.
      feature_group_count: groups (C_in for a depthwise conv).
      use_bias: whether to add a bias.
      dtype: compute dtype (None: inferred from inputs and params); params stay ``param_dtype``.
      param_dtype: dtype of ``kernel`` and ``bias``.
      kernel_init / bias_init: initializers.
      impl: "xla" (lax.conv), "im2col" (every stride-1 ungrouped conv as a matmul; others fall
        back to xla) or "auto" (im2col only on the CPU backend for 3x3 stride-1 ungrouped convs
        with both spatial sides <= ``AUTO_IM2COL_MAX_SIDE``).
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    feature_group_count: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    impl: str = "auto"

    def _use_im2col(self, x_shape, ksize, strides, pads) -> bool:
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"Conv impl must be one of {CONV_IMPLS}, got {self.impl!r}")
        if (self.impl == "xla" or strides != (1, 1) or self.feature_group_count != 1
                or isinstance(pads, str)):
            return False
        if self.impl == "im2col":
            return True
        small = max(x_shape[1], x_shape[2]) <= AUTO_IM2COL_MAX_SIDE
        return jax.default_backend() == "cpu" and ksize == (3, 3) and small

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the conv.

        Args:
          inputs: [B, H, W, C_in] float.

        Returns:
          [B, H', W', C_out] in the compute dtype.
        """
        if inputs.ndim != 4:
            raise ValueError(f"Conv expects NHWC inputs [B, H, W, C]; got shape {inputs.shape}")
        ksize = ((self.kernel_size,) * 2 if isinstance(self.kernel_size, int)
                 else tuple(self.kernel_size))
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        c_in = inputs.shape[-1]
        if c_in % self.feature_group_count:
            raise ValueError(f"C_in={c_in} is not divisible by groups={self.feature_group_count}")
        kernel = self.param("kernel", self.kernel_init,
                            ksize + (c_in // self.feature_group_count, self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        pads = _explicit_pads(self.padding, ksize, strides)
        if self._use_im2col(inputs.shape, ksize, strides, pads):
            y = _im2col(x, kernel, pads)
        else:
            y = lax.conv_general_dilated(x, kernel, strides, pads,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=self.feature_group_count)
        if bias is not None:
            y = y + bias.reshape(1, 1, 1, -1)
        return y


def scaled(channels: int, width_mult: float) -> int:
    """Channel count ``channels`` scaled by ``width_mult``: round, at least 1."""
    return max(1, int(round(channels * width_mult)))


class ConvBN(nn.Module):
    """Conv (k x k, PyTorch padding k // 2) -> optional BatchNorm -> optional ReLU.

    Attributes:
      features: C_out.
      kernel_size: k.
      strides: conv stride.
      use_bias: conv bias (VGG: True; ResNet/MobileNet: False).
      use_bn: BatchNorm after the conv.
      relu: ReLU at the end.
      init_scheme: init scheme name for ``inits``.
      conv_impl, dtype: see ``Conv``.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    use_bias: bool = False
    use_bn: bool = True
    relu: bool = True
    init_scheme: str = "torch"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, H, W, C_in] to [B, H / strides, W / strides, features]."""
        k = self.kernel_size
        x = Conv(self.features, k, strides=self.strides, padding=k // 2, use_bias=self.use_bias,
                 impl=self.conv_impl, dtype=self.dtype, name="conv",
                 **inits(self.init_scheme, fan_in=x.shape[-1] * k * k))(x)
        if self.use_bn:
            x = batch_norm(train, dtype=self.dtype, name="bn")(x)
        return nn.relu(x) if self.relu else x


def avg_pool(x: jax.Array, window: int) -> jax.Array:
    """PyTorch ``avg_pool2d(x, window)`` on NHWC (stride = window, remainder dropped).

    ``nn.avg_pool`` divides by a strong int32 and fails under strict dtype promotion.
    """
    dims = (1, window, window, 1)
    summed = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, dims, dims, "VALID")
    return summed / (window * window)


class PooledHead(nn.Module):
    """``avg_pool2d(x, pool)``, flatten, Dense(num_classes): the ResNet and MobileNetV2 heads."""

    num_classes: int
    pool: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps [B, pool, pool, C] to logits [B, num_classes]."""
        del train  # no dropout or BN in the head
        x = avg_pool(x, self.pool)
        x = x.reshape(x.shape[0], -1)  # [B, C] for 32x32 inputs
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc",
                        **inits("torch", fan_in=x.shape[-1]))(x)
