"""Training-time image augmentation in pure JAX (ResSFL, Li et al., CVPR 2022; spec §4.8).

Runs inside the jitted train step on images already in [0, 1]; vmap it over a client axis with
one key per client. The reference's CIFAR/SVHN transform is, in order: random 32x32 crop after
4 px zero padding, horizontal flip with p = 0.5, random rotation in +-15 degrees (nearest,
zero fill). Normalisation is not done here: it is the client model's first op.
"""

import functools
import math

import jax
import jax.numpy as jnp

MODES = ("none", "crop_flip", "crop_flip_rotate")
PAD = 4
MAX_DEGREES = 15.0


def to_float(images: jax.Array) -> jax.Array:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float images (already in [0, 1]) -> f32."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)
    return images.astype(jnp.float32) / 255.0


def _crop(image: jax.Array, offset: jax.Array) -> jax.Array:
    """[H, W, C] -> its [H, W, C] window at `offset` ([2] int32 in [0, 2 PAD]) when padded."""
    h, w, c = image.shape
    padded = jnp.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
    return jax.lax.dynamic_slice(padded, (offset[0], offset[1], jnp.int32(0)), (h, w, c))


def _rotate(image: jax.Array, angle: jax.Array) -> jax.Array:
    """Rotates [H, W, C] counter-clockwise by ``angle`` radians (scalar float32).

    Inverse mapping about the centre ((W - 1) / 2, (H - 1) / 2), as torchvision/PIL do: each
    output pixel reads the nearest source pixel; sources outside the image give 0.
    """
    h, w, _ = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    dy = jnp.arange(h, dtype=jnp.float32)[:, None] - cy  # [H, 1]
    dx = jnp.arange(w, dtype=jnp.float32)[None, :] - cx  # [1, W]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Forward CCW rotation on screen (y down) maps (dx, dy) to (c dx + s dy, -s dx + c dy); the
    # inverse below gives, for every output pixel, where it came from.
    # Nearest source pixel; floor(v + 0.5) rounds ties up as PIL's NEAREST sampler does.
    src_x = jnp.floor(cx + cos * dx - sin * dy + 0.5).astype(jnp.int32)  # [H, W]
    src_y = jnp.floor(cy + sin * dx + cos * dy + 0.5).astype(jnp.int32)  # [H, W]
    valid = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    gathered = image[jnp.clip(src_y, 0, h - 1), jnp.clip(src_x, 0, w - 1)]  # [H, W, C]
    return jnp.where(valid[:, :, None], gathered, jnp.zeros_like(gathered))


@functools.partial(jax.jit, static_argnames="mode")
def augment_images(key: jax.Array, images: jax.Array, *, mode: str) -> jax.Array:
    """Randomly augments a batch, independently per image.

    Args:
        key: typed PRNG key (``jax.random.key``).
        images: [B, H, W, C] float32 in [0, 1].
        mode: "none" (identity), "crop_flip" (pad-4 random crop, then horizontal flip with
            p = 0.5) or "crop_flip_rotate" (then a uniform +-15 degree rotation, nearest, zero
            fill).

    Returns:
        [B, H, W, C] images, same dtype, values still in [0, 1].
    """
    if mode not in MODES:
        raise ValueError(f"unknown augmentation mode {mode!r}; expected one of {MODES}")
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    if mode == "none":
        return images
    batch = images.shape[0]
    crop_key, flip_key, rotate_key = jax.random.split(key, 3)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * PAD + 1, dtype=jnp.int32)
    images = jax.vmap(_crop)(images, offsets)
    flip = jax.random.bernoulli(flip_key, 0.5, (batch,))
    images = jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
    if mode == "crop_flip_rotate":
        limit = math.radians(MAX_DEGREES)
        angles = jax.random.uniform(rotate_key, (batch,), jnp.float32, -limit, limit)
        images = jax.vmap(_rotate)(images, angles)
    return images
