"""Shared layers for the split models: a CPU-friendly ``Conv``, PyTorch-style inits, BatchNorm.

Implements the building blocks of the ResSFL (Li et al., CVPR 2022) architectures (spec §2).

``Conv`` / ``ConvTranspose`` are drop-ins for ``flax.linen.Conv`` / ``ConvTranspose`` (same
``kernel`` and ``bias`` params) that can avoid XLA-CPU's convolution altogether: ungrouped convs
become im2col + one matmul, depthwise convs a sum of kh*kw scaled slices, transposed convs an
im2col over the stride-dilated input. XLA-CPU's convolution is pathologically slow for 3x3
convs on tiny spatial inputs with many channels (environment.md §3: 2x2 512->512 ~100x slower)
and slower than these paths elsewhere too: VGG-11-bn cut 4 + C8 at batch 128 trains at 13 img/s
with ``impl="xla"`` and 62 img/s with ``impl="auto"`` (BENCHMARKS.md). "auto" therefore uses the
matmul paths on the CPU backend and XLA's convolution on GPU/TPU.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "im2col", "tapwise")
# "auto" on CPU computes a stride-1 conv tap by tap (``_tapwise``) when both C_in and C_out are
# at least _TAPWISE_MIN_CHANNELS and the map has at most _TAPWISE_MAX_PIXELS pixels (in VGG-11:
# the server's 8x8 256->256, 4x4 and 2x2 convs); im2col otherwise. Alone (fwd + bwd, batch 128,
# 2-core dev VM) tapwise beat im2col on every wide conv (2x2 512->512 16 vs 29 ms, 8x8 128->256
# 54 vs 98, 16x16 64->128 105 vs 127, 32x32 64->64 at batch 32 78 vs 93) and lost on thin ones
# (8x8 128->8 14 vs 6, 32x32 64->3 47 vs 5). Inside the training steps only a narrow rule
# gains: this one, vanilla 1.24x, expert 1.13x, lite 1.16x (`experiments.benchmark
# --conv_impl=im2col,auto`, BENCHMARKS.md); tapwise for every conv with C >= 64 made the
# expert 0.86x and the res_normN4C64 attack 0.72x as fast.
_TAPWISE_MIN_CHANNELS = 256
_TAPWISE_MAX_PIXELS = 64

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


def _pair(value: int | Sequence[int] | None, name: str) -> tuple[int, int]:
    """(v, v) for an int (None: 1), else the 2-sequence as a tuple; all positive ints."""
    pair = (1, 1) if value is None else (value,) * 2 if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them; got {value!r}")
    return pair


def _pad_pairs(padding: Sequence) -> list[tuple[int, int]]:
    """Explicit padding: 2 spatial entries, each an int p (= (p, p)) or a (lo, hi) pair."""
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pads) != 2 or not all(len(p) == 2 and all(isinstance(v, int) for v in p)
                                 for p in pads):
        raise ValueError(f"padding must be 'SAME', 'VALID', an int or 2 (lo, hi) pairs; "
                         f"got {padding!r}")
    return pads


def _explicit_pads(padding: PaddingLike, in_hw: Sequence[int], ksize: tuple[int, int],
                   strides: tuple[int, int]) -> list[tuple[int, int]]:
    """(lo, hi) pairs per spatial dim of a forward conv, with lax's "SAME"/"VALID" rules."""
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    if padding in ("SAME", "VALID"):
        return [tuple(p) for p in lax.padtype_to_pads(in_hw, ksize, strides, padding)]
    if isinstance(padding, str):
        raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs; got {padding!r}")
    return _pad_pairs(padding)


def _transpose_pad(k: int, s: int, padding: str) -> tuple[int, int]:
    """lax.conv_transpose's (lo, hi) padding of the dilated input for "SAME"/"VALID"."""
    if padding == "SAME":
        lo = k - 1 if s > k - 1 else -(-(k + s - 2) // 2)
        return lo, k + s - 2 - lo
    return k - 1, s - 1 + max(k - s, 0)


def _transpose_pads(padding: PaddingLike, ksize: tuple[int, int], strides: tuple[int, int]
                    ) -> list[tuple[int, int]]:
    """(lo, hi) pairs of the stride-dilated input, as ``lax.conv_transpose`` derives them."""
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    if padding in ("SAME", "VALID"):
        return [_transpose_pad(k, s, padding) for k, s in zip(ksize, strides)]
    if isinstance(padding, str):
        raise ValueError(f"ConvTranspose padding must be 'SAME', 'VALID', an int or pairs; "
                         f"got {padding!r}")
    return _pad_pairs(padding)


def _pad(x: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Zero-pads H and W by (lo, hi) (negative values crop)."""
    config = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _check_kernel_fits(padded_hw: Sequence[int], ksize: tuple[int, int]) -> None:
    """Raises ValueError if the padded input is smaller than the kernel."""
    (hp, wp), (kh, kw) = padded_hw, ksize
    if hp < kh or wp < kw:
        raise ValueError(f"padded input {hp}x{wp} is smaller than the {kh}x{kw} kernel")


def _shifted_slices(x: jax.Array, ksize: tuple[int, int], strides: tuple[int, int]
                    ) -> list[jax.Array]:
    """The kh*kw (strided) windows of a padded NHWC input, in (i, j) order, each [B, H', W', C]."""
    (kh, kw), (sh, sw) = ksize, strides
    hp, wp = x.shape[1:3]
    _check_kernel_fits((hp, wp), ksize)
    h, w = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    return [x[:, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _sum_tap_windows(z: jax.Array, ksize: tuple[int, int], strides: tuple[int, int]
                     ) -> jax.Array:
    """y[b, p, q] = sum over taps t = (i, j) of z[b, i + sh*p, j + sw*q, t]: the output-side
    conv's last step. z: [B, Hp, Wp, kh*kw, C] -> y: [B, H', W', C].

    Its gradient is written out (``_sum_tap_windows_bwd``). Left to autodiff, XLA-CPU built dz
    as one loop fusion that re-evaluated the incoming gradient's producers (a BatchNorm
    backward, which itself recomputes this sum) inside each of the kh*kw pads: 3.3 ms of a
    10.4 ms ``conv_normN0C16`` decoder step at batch 32.
    """
    windows = _shifted_slices(z, ksize, strides)  # each [B, H', W', kh*kw, C]
    y = windows[0][..., 0, :]
    for t in range(1, len(windows)):
        y = y + windows[t][..., t, :]
    return y


def _sum_tap_windows_fwd(z, ksize, strides):
    return _sum_tap_windows(z, ksize, strides), z.shape[1:3]


def _sum_tap_windows_bwd(ksize, strides, padded_hw, dy):
    """dz[:, i + sh*p, j + sw*q, (i, j)] = dy[:, p, q]: the kh*kw shifted windows of one
    stride-dilated, padded dy, stacked.

    dy passes an optimization barrier first, so it is computed once: without it XLA-CPU fused
    dy's producers (the sigmoid's and BatchNorm's backward) into each of the kh*kw copies, a
    quarter of the op time in a profile of the ``conv_normN0C16`` decoder step; the step ran
    1.05-1.20x faster without it (BENCHMARKS.md, "Output-side conv's gradient, once").
    """
    (kh, kw), (sh, sw), (hp, wp) = ksize, strides, padded_hw
    _, h, w, _ = dy.shape
    dy = lax.optimization_barrier(dy)
    # Dilated by the stride and padded to hp + kh - 1 rows: row kh - 1 + sh*p holds dy[p], so
    # tap (i, j)'s window starts at (kh - 1 - i, kw - 1 - j): the stride-1 windows of dyp in
    # reverse (i, j) order.
    dyp = lax.pad(dy, jnp.zeros((), dy.dtype),
                  [(0, 0, 0), (kh - 1, hp - (h - 1) * sh - 1, sh - 1),
                   (kw - 1, wp - (w - 1) * sw - 1, sw - 1), (0, 0, 0)])
    return (jnp.stack(_shifted_slices(dyp, ksize, (1, 1))[::-1], axis=3),)


_sum_tap_windows.defvjp(_sum_tap_windows_fwd, _sum_tap_windows_bwd)


def _im2col(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]],
            strides: tuple[int, int] = (1, 1)) -> jax.Array:
    """Ungrouped conv (NHWC, HWIO) as matmuls, no convolution op.

    With C_out >= C_in: pad -> concat of the kh*kw (strided) input windows -> one matmul
    (input-side im2col). With C_out < C_in the copy of kh*kw input windows would dwarf the
    output, so the kernel is applied first, as one matmul to kh*kw*C_out channels, and the
    kh*kw shifted windows of that product are summed (output-side); e.g. a decoder's last conv
    64 -> 3 at 32x32 moves 27 instead of 576 values per pixel.
    """
    kh, kw, c_in, c_out = kernel.shape
    if c_out < c_in and kh * kw > 1:
        # Padding commutes with the per-pixel product (zeros map to zeros, no bias here), so
        # pad the kh*kw*C_out product instead of the wider input: fewer bytes copied, and the
        # backward's input gradient comes out unpadded.
        b, h, w, _ = x.shape
        taps = kernel.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out)
        z = (x.reshape(b * h * w, c_in) @ taps).reshape(b, h, w, kh * kw, c_out)
        z = lax.pad(z, jnp.zeros((), z.dtype),
                    [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)] * 2)
        return _sum_tap_windows(z, (kh, kw), strides)
    xp = _pad(x, pads)
    slices = _shifted_slices(xp, (kh, kw), strides)
    cols = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
    b, h, w, _ = cols.shape                              # [B, H', W', kh*kw*C_in], (i, j, c)
    out = cols.reshape(b * h * w, kh * kw * c_in) @ kernel.reshape(kh * kw * c_in, c_out)
    return out.reshape(b, h, w, c_out)


def _tapwise(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Stride-1 ungrouped conv (NHWC, HWIO) as one matmul per kernel tap over only the outputs
    that tap reaches inside the unpadded input, summed: no im2col copy, and no multiplications
    by padding zeros (on a 2x2 map a 3x3 conv's padding is 5/9 of im2col's work, 4x4 31%,
    8x8 16%). Faster than ``_im2col`` on small maps of many channels (``_TAPWISE_MIN_CHANNELS``).
    """
    kh, kw, c_in, c_out = kernel.shape
    b, h, w, _ = x.shape
    (lo_h, hi_h), (lo_w, hi_w) = pads
    _check_kernel_fits((h + lo_h + hi_h, w + lo_w + hi_w), (kh, kw))
    ho, wo = h + lo_h + hi_h - kh + 1, w + lo_w + hi_w - kw + 1
    parts = []  # (outputs reached, their rectangle, the tap's product)
    for i in range(kh):
        p0, p1 = max(0, lo_h - i), min(ho, lo_h + h - i)  # outputs whose tap row i is inside
        for j in range(kw):
            q0, q1 = max(0, lo_w - j), min(wo, lo_w + w - j)
            if p0 >= p1 or q0 >= q1:
                continue
            xs = x[:, p0 + i - lo_h:p1 + i - lo_h, q0 + j - lo_w:q1 + j - lo_w, :]
            y = (xs.reshape(-1, c_in) @ kernel[i, j]).reshape(b, p1 - p0, q1 - q0, c_out)
            parts.append(((p1 - p0) * (q1 - q0), (p0, p1, q0, q1), y))
    # Summed into the largest part in place (``.at[].add``): padding each part to the full
    # output and adding took 10-30% more temporary memory and was 2-7% slower in the steps.
    parts.sort(key=lambda part: -part[0])
    if parts and parts[0][1] == (0, ho, 0, wo):
        out, parts = parts[0][2], parts[1:]
    else:  # no tap reaches every output (or none reaches any: all zeros)
        out = jnp.zeros((b, ho, wo, c_out), jnp.result_type(x, kernel))
    for _, (p0, p1, q0, q1), y in parts:
        out = out.at[:, p0:p1, q0:q1, :].add(y)
    return out


def _phase_taps(k: int, s: int, lo: int, n_in: int, n_out: int):
    """1-D polyphase plan of a transposed conv: per output phase r (outputs o = s*q + r), the
    taps t it uses and the input offset d of each (y[s*q + r] = sum_t x[q + d_t] * w[t])."""
    phases = []
    for r in range(s):
        taps = [(t, (r + t - lo) // s) for t in range(k) if (r + t - lo) % s == 0]
        phases.append((taps, len(range(r, n_out, s))))
    offsets = [d for taps, _ in phases for _, d in taps] or [0]
    pad_lo = max(0, -min(offsets))
    pad_hi = max([0] + [n - 1 + d - (n_in - 1) for taps, n in phases for _, d in taps])
    return phases, (pad_lo, pad_hi)


def _conv_transpose_phases(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]],
                           strides: tuple[int, int]) -> jax.Array:
    """Transposed conv (= stride-1 conv of the stride-dilated, padded input with HWIO
    ``kernel``) without the dilation's zeros: each of the sh*sw output phases is an im2col
    matmul over only the taps that meet real input pixels (a 3x3 stride-2 ConvT does 9 tap
    products per 4 outputs instead of 36), then the phases are interleaved."""
    b, h, w, _ = x.shape
    (kh, kw), (sh, sw) = kernel.shape[:2], strides
    out_h = (h - 1) * sh + 1 + pads[0][0] + pads[0][1] - kh + 1
    out_w = (w - 1) * sw + 1 + pads[1][0] + pads[1][1] - kw + 1
    rows, pad_h = _phase_taps(kh, sh, pads[0][0], h, out_h)
    cols, pad_w = _phase_taps(kw, sw, pads[1][0], w, out_w)
    xp = _pad(x, (pad_h, pad_w))
    outs = {}
    for rh, (taps_h, n_h) in enumerate(rows):
        for rw, (taps_w, n_w) in enumerate(cols):
            taps = [(th, tw, dh + pad_h[0], dw + pad_w[0])
                    for th, dh in taps_h for tw, dw in taps_w]
            if not taps or not n_h or not n_w:
                outs[rh, rw] = jnp.zeros((b, n_h, n_w, kernel.shape[-1]), x.dtype)
                continue
            slices = [xp[:, i:i + n_h, j:j + n_w, :] for _, _, i, j in taps]
            stacked = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
            weights = jnp.concatenate([kernel[th, tw] for th, tw, _, _ in taps], axis=0)
            outs[rh, rw] = (stacked.reshape(b * n_h * n_w, -1) @ weights).reshape(
                b, n_h, n_w, -1)
    if out_h % sh == 0 and out_w % sw == 0:  # Equal phases: interleave by stack + reshape.
        grid = jnp.stack([jnp.stack([outs[rh, rw] for rw in range(sw)], axis=3)
                          for rh in range(sh)], axis=2)  # [B, n_h, sh, n_w, sw, O]
        return grid.reshape(b, out_h, out_w, -1)
    y = jnp.zeros((b, out_h, out_w, kernel.shape[-1]), x.dtype)
    for (rh, rw), out in outs.items():
        y = y.at[:, rh::sh, rw::sw, :].set(out)
    return y


def _depthwise(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]],
               strides: tuple[int, int] = (1, 1)) -> jax.Array:
    """Depthwise conv (groups = C_in, kernel [kh, kw, 1, C_in * m]) as a sum of scaled slices.

    As in ``lax.conv_general_dilated``, output channel o reads input channel o // m.
    """
    kh, kw, one, c_out = kernel.shape
    c_in = x.shape[-1]
    if one != 1 or c_out % c_in:
        raise ValueError(f"depthwise kernel must be [kh, kw, 1, C_in * m] for C_in={c_in}; "
                         f"got {kernel.shape}")
    x = _pad(x, pads)
    if c_out != c_in:
        x = jnp.repeat(x, c_out // c_in, axis=-1)
    slices = _shifted_slices(x, (kh, kw), strides)
    taps = kernel.reshape(kh * kw, 1, 1, 1, c_out)
    y = slices[0] * taps[0]
    for t in range(1, kh * kw):
        y = y + slices[t] * taps[t]
    return y


def _check_impl(impl: str) -> None:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")


def _matmul_impl_wanted(impl: str) -> bool:
    """Whether ``impl`` asks for the conv-op-free paths: "im2col"/"tapwise", or "auto" on the
    CPU backend."""
    _check_impl(impl)
    return impl in ("im2col", "tapwise") or (impl == "auto" and jax.default_backend() == "cpu")


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
      impl: "xla" (always ``lax.conv_general_dilated``), "im2col" (ungrouped convs as im2col +
        one matmul, depthwise convs as a sum of kh*kw scaled slices; other grouped convs fall
        back to xla), "tapwise" (as "im2col", but stride-1 ungrouped convs as one matmul per
        kernel tap over its valid outputs, ``_tapwise``) or "auto" (on the CPU backend the
        "im2col" paths, with "tapwise" for stride-1 convs with C_in, C_out >= 256 on maps of
        <= 64 pixels; xla elsewhere).
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

    def _path(self, c_in: int, strides: tuple[int, int], hw: tuple[int, int]) -> str:
        """"tapwise", "im2col", "depthwise" or "xla": how this conv is computed on an input of
        ``c_in`` channels and ``hw`` spatial shape."""
        if not _matmul_impl_wanted(self.impl):
            return "xla"
        if self.feature_group_count == 1:
            tapwise = strides == (1, 1) and (
                self.impl == "tapwise"
                or self.impl == "auto" and min(c_in, self.features) >= _TAPWISE_MIN_CHANNELS
                and hw[0] * hw[1] <= _TAPWISE_MAX_PIXELS)
            return "tapwise" if tapwise else "im2col"
        return "depthwise" if self.feature_group_count == c_in else "xla"

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
        ksize = _pair(self.kernel_size, "kernel_size")
        strides = _pair(self.strides, "strides")
        c_in, groups = inputs.shape[-1], self.feature_group_count
        if c_in % groups or self.features % groups:
            raise ValueError(f"C_in={c_in} and features={self.features} must both be divisible "
                             f"by feature_group_count={groups}")
        kernel = self.param("kernel", self.kernel_init, ksize + (c_in // groups, self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        pads = _explicit_pads(self.padding, inputs.shape[1:3], ksize, strides)
        path = self._path(c_in, strides, inputs.shape[1:3])
        if path == "tapwise":
            y = _tapwise(x, kernel, pads)
        elif path == "im2col":
            y = _im2col(x, kernel, pads, strides)
        elif path == "depthwise":
            y = _depthwise(x, kernel, pads, strides)
        else:
            y = lax.conv_general_dilated(x, kernel, strides, pads,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=groups)
        if bias is not None:
            y = y + bias.reshape(1, 1, 1, -1)
        return y


class ConvTranspose(nn.Module):
    """Transposed 2D conv on NHWC inputs; a drop-in for ``nn.ConvTranspose`` (2D, no dilation).

    Same params as flax (``kernel`` [kh, kw, C_out, C_in] with ``transpose_kernel`` else
    [kh, kw, C_in, C_out], ``bias`` [C_out]) and the semantics of ``lax.conv_transpose``: a
    stride-1 conv of the input dilated by ``strides`` (zeros between pixels) and padded by
    ``padding`` ("SAME"/"VALID" as lax derives them, or explicit (lo, hi) pairs of the dilated
    input), with the kernel spatially flipped and its in/out axes swapped if ``transpose_kernel``.

    Attributes:
      features: C_out.
      kernel_size: (kh, kw) or an int.
      strides: (sh, sw), an int or None (1).
      padding: "SAME", "VALID", an int or per-dim (lo, hi) pairs ("CIRCULAR" is not supported).
      use_bias: whether to add a bias.
      transpose_kernel: flax's flag (True: the gradient-of-conv layout, as PyTorch's ConvT).
      dtype, param_dtype, kernel_init, bias_init: as ``Conv``.
      impl: "xla" (``lax.conv_transpose``), "im2col" (one im2col matmul per output phase, no
        dilation zeros; see ``_conv_transpose_phases``) or "auto" (im2col on the CPU backend,
        xla elsewhere).
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] | None = None
    padding: PaddingLike = "SAME"
    use_bias: bool = True
    transpose_kernel: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    impl: str = "auto"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps [B, H, W, C_in] to [B, H', W', C_out] (H' = (H - 1) * sh + 1 + pads - kh + 1)."""
        if inputs.ndim != 4:
            raise ValueError(f"ConvTranspose expects NHWC inputs [B, H, W, C]; got shape "
                             f"{inputs.shape}")
        ksize = _pair(self.kernel_size, "kernel_size")
        strides = _pair(self.strides, "strides")
        pads = _transpose_pads(self.padding, ksize, strides)
        c_in = inputs.shape[-1]
        io = (self.features, c_in) if self.transpose_kernel else (c_in, self.features)
        kernel = self.param("kernel", self.kernel_init, ksize + io, self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        if _matmul_impl_wanted(self.impl):
            hwio = jnp.flip(kernel, (0, 1)).swapaxes(2, 3) if self.transpose_kernel else kernel
            y = _conv_transpose_phases(x, hwio, pads, strides)
        else:
            y = lax.conv_transpose(x, kernel, strides, pads, transpose_kernel=self.transpose_kernel,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
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


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """PyTorch ``MaxPool2d(2, 2)`` on NHWC (an odd last row/column is dropped).

    A reshape + max instead of ``nn.max_pool``: same values, and XLA-CPU's gradient of
    ``reduce_window`` (select-and-scatter) is ~2.7x slower than the reshape-max gradient
    (fwd + bwd on [128, 32, 32, 64]: 194 ms vs 72 ms, 2 cores). Ties inside a window share the
    gradient instead of routing it to the first maximum; after a ReLU the only ties are zeros,
    whose gradient the ReLU discards, so training is unaffected.
    """
    b, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def avg_pool(x: jax.Array, window: int) -> jax.Array:
    """PyTorch ``avg_pool2d(x, window)`` on NHWC (stride = window, remainder dropped).

    A reshape and mean, like ``max_pool_2x2``: ``nn.avg_pool`` divides by a strong int32 (fails
    under strict dtype promotion), and ``lax.reduce_window`` with a traced init value is the
    generic reduction, which has no reverse-mode derivative (ResNet/MobileNet could not train
    under ``jit``).
    """
    b, h, w, c = x.shape
    x = x[:, :h - h % window, :w - w % window, :]
    return x.reshape(b, h // window, window, w // window, window, c).mean(axis=(2, 4))


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
