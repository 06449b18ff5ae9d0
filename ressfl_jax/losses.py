"""Losses, image metrics and the sign conventions of the ResSFL minimax (spec §4.4, §4.7, §7.4).

All image functions take NHWC float images in [0, 1] (data range 1): decoders end in a sigmoid
and batches carry [0, 1] images, so no (de)normalisation happens here.

Minimax sign conventions (defined here and nowhere else):

* The simulated attacker (decoder) MINIMISES ``inversion_loss``: ``-SSIM(recon, images)`` in
  SSIM mode, ``MSE(recon, images)`` in MSE mode. Lower = better reconstruction.
* The defender (clients) MINIMISES ``CE + alpha * resistance_penalty``, where
  ``resistance_penalty`` is ``max(SSIM - tau, 0)`` in SSIM mode (plain ``SSIM`` when tau == 0,
  as the reference), or ``-MSE`` in MSE mode. Higher penalty = better reconstruction, so a
  positive alpha pushes the client toward features the decoder cannot invert.
The SSIM is the batch mean, one scalar per batch (spec §11.1.6): below tau the hinge gives the
batch exactly zero adversarial gradient.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
INVERSION_KINDS = ("ssim", "mse")


def cross_entropy(logits, labels):
    """Per-example softmax cross-entropy. logits [..., classes], labels int32 [...] -> [...]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def correct(logits, labels):
    """float32 [...] 1.0 where argmax(logits) == labels, else 0.0."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """1-D Gaussian of ``size`` taps normalised to sum 1 (the 2-D window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def filter_matrix(n: int, window: np.ndarray, padding: str) -> np.ndarray:
    """The 1-D filter along an axis of length ``n`` as a matrix: ``out = M @ x``.

    Row i holds the window centred on pixel i; taps that fall outside [0, n) are dropped, which
    is exactly zero padding of ``len(window) // 2`` ('same', [n, n]). For 'valid' row i holds
    the window starting at pixel i ([n - len(window) + 1, n]).
    """
    k = len(window)
    if padding == "same":
        rows, offset = n, -(k // 2)
    else:
        rows, offset = n - k + 1, 0
    if rows < 1:
        raise ValueError(f"SSIM window of {k} taps does not fit an image side of {n} with "
                         f"padding {padding!r}; use padding='same' or larger images.")
    m = np.zeros((rows, n))
    for i in range(rows):
        for t in range(k):
            if 0 <= i + t + offset < n:
                m[i, i + t + offset] = window[t]
    return m


def _filter(x, along_h, along_w):
    """Separable Gaussian filter of [B, H, W, C] per channel, given ``filter_matrix`` for H and W.

    Written as two small matmuls with banded (Toeplitz) matrices instead of depthwise
    convolutions: the same sums (float32, HIGHEST precision), but XLA-CPU's depthwise
    convolution made SSIM's value-and-gradient at [128, 32, 32, 3] ~40x slower (BENCHMARKS.md).
    """
    x = jnp.einsum("ik,bkwc->biwc", along_h, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("jk,bikc->bijc", along_w, x, precision=jax.lax.Precision.HIGHEST)


def ssim_map(x, y, *, padding: str = "same", window_size: int = 11, sigma: float = 1.5):
    """Per-pixel SSIM of two [B, H, W, C] image batches in [0, 1].

    Args:
      padding: "same" = the reference (pytorch_ssim): zero padding of window_size // 2, output
        [B, H, W, C], borders darkened by the padding. "valid" = the standard definition (as
        tf.image.ssim / scikit-image): only full windows, [B, H-10, W-10, C].

    Returns:
      float32 SSIM map.
    """
    if padding not in ("same", "valid"):
        raise ValueError(f"Unknown SSIM padding {padding!r}; choose 'same' or 'valid'.")
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"SSIM needs two [B, H, W, C] batches of one shape; got {x.shape} and "
                         f"{y.shape}.")
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    window = gaussian_window(window_size, sigma)
    along_h, along_w = (jnp.asarray(filter_matrix(n, window, padding), jnp.float32)
                        for n in x.shape[1:3])
    blur = functools.partial(_filter, along_h=along_h, along_w=along_w)
    mu_x, mu_y = blur(x), blur(y)
    sigma_xx = blur(x * x) - mu_x * mu_x
    sigma_yy = blur(y * y) - mu_y * mu_y
    sigma_xy = blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (sigma_xx + sigma_yy + SSIM_C2)
    return numerator / denominator


def ssim(x, y, *, padding: str = "same"):
    """Batch-mean SSIM (mean over batch, H, W and channels): the reference's scalar."""
    return jnp.mean(ssim_map(x, y, padding=padding))


def ssim_per_image(x, y, *, padding: str = "same"):
    """[B] SSIM of each image (the attack metric, spec §7.4)."""
    return jnp.mean(ssim_map(x, y, padding=padding), axis=(1, 2, 3))


def mse(x, y):
    """Mean squared error over all elements (scalar)."""
    return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)))


def mse_per_image(x, y):
    """[B] mean squared error of each [H, W, C] image."""
    return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))


def psnr_per_image(x, y, *, max_value: float = 1.0):
    """[B] PSNR in dB of each image: 10 log10(max^2 / MSE_i). Report the mean of these (§7.4)."""
    return 10.0 * jnp.log10(max_value ** 2 / mse_per_image(x, y))


def inversion_loss(recon, images, *, kind: str):
    """What the simulated attacker MINIMISES: -SSIM (kind 'ssim') or MSE (kind 'mse')."""
    if kind == "ssim":
        return -ssim(recon, images)
    if kind == "mse":
        return mse(recon, images)
    raise ValueError(f"Unknown inversion loss {kind!r}; choose one of {INVERSION_KINDS}.")


def resistance_penalty(recon, images, *, kind: str, threshold: float):
    """What the defender adds to CE (times alpha) and MINIMISES; see the module docstring.

    SSIM mode: ``max(SSIM - threshold, 0)`` for threshold > 0, else ``SSIM``. MSE mode: ``-MSE``
    (the reference applies no threshold there).
    """
    if kind == "ssim":
        value = ssim(recon, images)
        return jax.nn.relu(value - threshold) if threshold > 0 else value
    if kind == "mse":
        return -mse(recon, images)
    raise ValueError(f"Unknown inversion loss {kind!r}; choose one of {INVERSION_KINDS}.")
