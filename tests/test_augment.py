"""Tests for ressfl_jax.augment: pure-JAX crop / flip / rotate."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ressfl_jax import augment


def _pattern(batch, size=32):
    """[B, S, S, 3] float32 with distinct, nonzero values (so windows are identifiable)."""
    values = np.arange(1, batch * size * size * 3 + 1, dtype=np.float32)
    return values.reshape(batch, size, size, 3) / values.size


def _window_of(out, image):
    """(dy, dx, flipped) such that ``out`` is that window of the 4-px zero-padded ``image``."""
    size = image.shape[0]
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
               if np.array_equal(out, (lambda w: w[:, ::-1] if flip else w)(
                   padded[dy:dy + size, dx:dx + size]))]
    assert len(matches) == 1, matches
    return matches[0]


def test_to_float():
    images = jnp.array([[0, 51, 255]], jnp.uint8)
    out = augment.to_float(images)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]])
    # Float images are already in [0, 1]: only the dtype changes (no second division).
    floats = augment.to_float(jnp.array([[0.0, 0.2, 1.0]], jnp.float16))
    assert floats.dtype == jnp.float32
    np.testing.assert_allclose(floats, [[0.0, 0.2, 1.0]], rtol=1e-3)


@pytest.mark.parametrize("mode", augment.MODES)
def test_shapes_dtype_range(mode):
    images = jnp.asarray(_pattern(4))
    out = augment.augment_images(jax.random.key(0), images, mode=mode)
    assert out.shape == images.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = augment.augment_images(jax.random.key(0), images, mode=mode)
    np.testing.assert_array_equal(out, again)  # Deterministic for a fixed key.


def test_none_is_identity_and_bad_mode():
    images = jnp.asarray(_pattern(2))
    np.testing.assert_array_equal(augment.augment_images(jax.random.key(1), images, mode="none"),
                                  images)
    with pytest.raises(ValueError, match="'cutout'"):
        augment.augment_images(jax.random.key(1), images, mode="cutout")


def test_crop_flip_outputs_are_padded_windows():
    images = _pattern(64, size=8)
    out = np.asarray(augment.augment_images(jax.random.key(3), jnp.asarray(images),
                                            mode="crop_flip"))
    found = [_window_of(out[i], images[i]) for i in range(64)]
    flips = sum(f for _, _, f in found)
    assert 16 <= flips <= 48  # p = 0.5 per image.
    assert len({(dy, dx) for dy, dx, _ in found}) > 20  # Independent offsets per image.
    assert {dy for dy, _, _ in found} <= set(range(9))


def test_rotate_geometry():
    image = jnp.asarray(_pattern(1)[0])
    np.testing.assert_array_equal(augment._rotate(image, jnp.float32(0.0)), image)
    # Counter-clockwise by 90 degrees about the centre, as torchvision's positive angles.
    np.testing.assert_array_equal(augment._rotate(image, jnp.float32(np.pi / 2)),
                                  jnp.rot90(image, axes=(0, 1)))
    small = np.asarray(augment._rotate(image, jnp.float32(np.radians(15.0))))
    assert (small[0, 0] == 0).all() and (small[16, 16] == image[16, 16]).all()
    assert np.isin(small, np.append(np.asarray(image).ravel(), 0.0)).all()  # Nearest, zero fill.


def test_crop_flip_rotate_fills_corners():
    images = jnp.ones((16, 32, 32, 3), jnp.float32)
    out = np.asarray(augment.augment_images(jax.random.key(0), images, mode="crop_flip_rotate"))
    assert set(np.unique(out).tolist()) <= {0.0, 1.0}
    assert (out == 0).mean() > 0.01  # Padding and rotation corners are zero.


def test_jit_and_vmap_over_clients():
    images = jnp.broadcast_to(jnp.asarray(_pattern(4)), (3, 4, 32, 32, 3))  # [C, B, H, W, 3]
    keys = jax.random.split(jax.random.key(7), 3)
    per_client = jax.jit(jax.vmap(functools.partial(augment.augment_images, mode="crop_flip")))
    out = per_client(keys, images)
    assert out.shape == images.shape
    np.testing.assert_array_equal(out[1], augment.augment_images(keys[1], images[1],
                                                                 mode="crop_flip"))
    assert not np.array_equal(out[0], out[1]) and not np.array_equal(out[1], out[2])
