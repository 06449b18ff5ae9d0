"""SSIM / MSE / PSNR against float64 NumPy and scikit-image oracles; minimax sign conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ressfl_jax import losses


def numpy_ssim_map(x, y, padding):
    """float64 reference: direct (non-separable) 2-D 11x11 Gaussian window, sigma 1.5."""
    g = losses.gaussian_window(11, 1.5)
    window = np.outer(g, g)

    def filt(img):  # img [H, W]
        if padding == "same":
            img = np.pad(img, 5)
        h, w = img.shape[0] - 10, img.shape[1] - 10
        out = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                out[i, j] = np.sum(img[i:i + 11, j:j + 11] * window)
        return out

    crop = 0 if padding == "same" else 10
    maps = np.zeros((x.shape[0], x.shape[1] - crop, x.shape[2] - crop, x.shape[3]))
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    for b in range(x.shape[0]):
        for c in range(x.shape[3]):
            a, d = x[b, :, :, c].astype(np.float64), y[b, :, :, c].astype(np.float64)
            mu_a, mu_d = filt(a), filt(d)
            saa = filt(a * a) - mu_a ** 2
            sdd = filt(d * d) - mu_d ** 2
            sad = filt(a * d) - mu_a * mu_d
            maps[b, :, :, c] = ((2 * mu_a * mu_d + c1) * (2 * sad + c2)
                                / ((mu_a ** 2 + mu_d ** 2 + c1) * (saa + sdd + c2)))
    return maps


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    # y correlated with x so SSIM is far from 0 and from 1.
    y = np.clip(0.7 * x + 0.3 * rng.uniform(size=x.shape), 0, 1).astype(np.float32)
    return x, y


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ssim_matches_float64_numpy(images, padding):
    x, y = images
    want = numpy_ssim_map(x, y, padding)
    got = np.asarray(losses.ssim_map(jnp.asarray(x), jnp.asarray(y), padding=padding))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(float(losses.ssim(x, y, padding=padding)), want.mean(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(losses.ssim_per_image(x, y, padding=padding)),
                               want.mean(axis=(1, 2, 3)), atol=1e-5)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ssim_of_non_square_images_matches_float64_numpy(padding):
    # H != W: the two filter matrices must act on their own axes.
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(1, 12, 17, 2)).astype(np.float32)
    y = np.clip(0.6 * x + 0.4 * rng.uniform(size=x.shape), 0, 1).astype(np.float32)
    got = np.asarray(losses.ssim_map(jnp.asarray(x), jnp.asarray(y), padding=padding))
    np.testing.assert_allclose(got, numpy_ssim_map(x, y, padding), atol=1e-5)


def test_filter_matrix_is_zero_padded_correlation():
    window = np.array([0.25, 0.5, 0.25])
    np.testing.assert_array_equal(losses.filter_matrix(4, window, "same"), [
        [0.5, 0.25, 0, 0], [0.25, 0.5, 0.25, 0], [0, 0.25, 0.5, 0.25], [0, 0, 0.25, 0.5]])
    np.testing.assert_array_equal(losses.filter_matrix(4, window, "valid"), [
        [0.25, 0.5, 0.25, 0], [0, 0.25, 0.5, 0.25]])
    with pytest.raises(ValueError, match="side of 8"):
        losses.ssim(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)), padding="valid")


def test_valid_ssim_matches_scikit_image(images):
    x, y = images
    for b in range(x.shape[0]):
        want = structural_similarity(x[b].astype(np.float64), y[b].astype(np.float64),
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1.0,
                                     channel_axis=-1)
        got = float(losses.ssim_per_image(x[b:b + 1], y[b:b + 1], padding="valid")[0])
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_ssim_of_identical_images_is_one(images):
    x, _ = images
    np.testing.assert_allclose(float(losses.ssim(x, x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(losses.ssim(x, x, padding="valid")), 1.0, atol=1e-6)


def test_ssim_gradient_is_finite(images):
    x, y = images
    grad = jax.grad(lambda a: losses.ssim(a, jnp.asarray(y)))(jnp.asarray(x))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_mse_and_psnr_literals():
    x = jnp.zeros((2, 2, 2, 1))
    y = jnp.stack([jnp.full((2, 2, 1), 0.1), jnp.full((2, 2, 1), 0.01)])
    np.testing.assert_allclose(np.asarray(losses.mse_per_image(x, y)), [0.01, 1e-4], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.psnr_per_image(x, y)), [20.0, 40.0], rtol=1e-5)
    np.testing.assert_allclose(float(losses.mse(x, y)), (0.01 + 1e-4) / 2, rtol=1e-6)


def test_sign_conventions(images):
    x, y = images
    s = float(losses.ssim(x, y))
    assert float(losses.inversion_loss(x, y, kind="ssim")) == pytest.approx(-s)
    assert float(losses.inversion_loss(x, y, kind="mse")) == pytest.approx(float(losses.mse(x, y)))
    # Hinge: zero (and zero gradient) below the threshold, SSIM - tau above it.
    assert float(losses.resistance_penalty(x, y, kind="ssim", threshold=s + 0.1)) == 0.0
    grad = jax.grad(lambda a: losses.resistance_penalty(a, jnp.asarray(y), kind="ssim",
                                                        threshold=s + 0.1))(jnp.asarray(x))
    assert not np.any(np.asarray(grad))
    assert float(losses.resistance_penalty(x, y, kind="ssim", threshold=s - 0.1)) == \
        pytest.approx(0.1, abs=1e-5)
    assert float(losses.resistance_penalty(x, y, kind="ssim", threshold=0.0)) == pytest.approx(s)
    assert float(losses.resistance_penalty(x, y, kind="mse", threshold=0.5)) == \
        pytest.approx(-float(losses.mse(x, y)))


def test_bad_kind_and_padding():
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="'l1'"):
        losses.inversion_loss(x, x, kind="l1")
    with pytest.raises(ValueError, match="'full'"):
        losses.ssim(x, x, padding="full")
