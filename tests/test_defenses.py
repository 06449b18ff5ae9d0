"""Smashed-data defenses (noise, dropout, top-k) and the NoPeek distance correlation (spec §8)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ressfl_jax import defenses

# One compiled program per function (op-by-op dispatch compiles every op: slow on a busy CPU).
topk = jax.jit(defenses.topk_prune, static_argnames=("ratio", "per_example"))
dropout = jax.jit(defenses.dropout, static_argnames="rate")
gaussian = jax.jit(defenses.gaussian_noise)
laplace = jax.jit(defenses.laplace_noise)
dcor = jax.jit(defenses.distance_correlation)


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def numpy_dcor(x, y):
    """float64 transcription of the reference's ``dist_corr`` (utils.py), centring as written."""
    x, y = (np.asarray(v, np.float64).reshape(v.shape[0], -1) for v in (x, y))
    n, eps = float(x.shape[0]), 1e-7

    def centred(v):
        r = np.sum(v * v, axis=1).reshape(-1, 1)
        d = np.sqrt(np.maximum(r - 2 * v @ v.T + r.T, eps))
        return d - d.mean(axis=1) - d.mean(axis=0)[:, None] + d.mean()

    a, b = centred(x), centred(y)
    dcov = np.sqrt(eps + np.sum(a * b) / n ** 2)
    dvar_x = np.sqrt(eps + np.sum(a * a) / n ** 2)
    dvar_y = np.sqrt(eps + np.sum(b * b) / n ** 2)
    return dcov / (np.sqrt(eps + dvar_x * dvar_y) + eps)


# --- top-k pruning ---------------------------------------------------------------------------

SMALL = np.array([[3.0, -1.0, 0.5], [-2.0, 4.0, 0.5]], np.float32).reshape(2, 1, 1, 3)


@pytest.mark.parametrize("ratio, per_example, expected", [
    # whole tensor: int(0.5 * 6) = 3 zeroed: -2, -1 and the FIRST 0.5 (tie -> lower flat index).
    (0.5, False, [[3.0, 0.0, 0.0], [0.0, 4.0, 0.5]]),
    # whole tensor: int(0.7 * 6) = 4 zeroed.
    (0.7, False, [[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]),
    # per example: int(0.5 * 3) = 1 zeroed in each example.
    (0.5, True, [[3.0, 0.0, 0.5], [0.0, 4.0, 0.5]]),
    # per example: int(0.7 * 3) = 2 zeroed in each example.
    (0.7, True, [[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]),
    (0.0, False, [[3.0, -1.0, 0.5], [-2.0, 4.0, 0.5]]),
])
def test_topk_prune_literal(ratio, per_example, expected):
    out = topk(SMALL, ratio=ratio, per_example=per_example)
    np.testing.assert_array_equal(np.asarray(out).reshape(2, 3), np.array(expected, np.float32))


def test_topk_prune_keeps_largest_signed_values_of_whole_batch():
    z = normal(0, (4, 3, 3, 5))  # 180 distinct values
    out = np.asarray(topk(z, ratio=0.7))
    kept = out != 0
    # int(180 * 0.7) = int(125.99999999999999) = 125, exactly the reference's float truncation.
    assert kept.sum() == 180 - int(180 * 0.7) == 55
    np.testing.assert_array_equal(out[kept], z[kept])  # kept values are untouched
    assert z[kept].min() > z[~kept].max()  # and they are the largest signed ones
    # The batch shares one budget: the examples keep different counts.
    assert len(set(kept.reshape(4, -1).sum(1).tolist())) > 1


def test_topk_prune_per_example_and_ties_give_exact_count():
    out = np.asarray(topk(normal(1, (4, 2, 2, 5)), ratio=0.6, per_example=True)).reshape(4, -1)
    np.testing.assert_array_equal((out != 0).sum(1), [8, 8, 8, 8])  # 20 - int(0.6 * 20)
    ties = np.ones((2, 1, 1, 5), np.float32)  # all equal: the first 7 flat entries go
    np.testing.assert_array_equal(np.asarray(topk(ties, ratio=0.7)).reshape(-1),
                                  [0, 0, 0, 0, 0, 0, 0, 1, 1, 1])


# --- dropout and noise -------------------------------------------------------------------------

def test_dropout_rate_zero_is_identity():
    z = normal(2, (2, 4, 4, 3))
    np.testing.assert_array_equal(dropout(jax.random.key(3), z, rate=0.0), z)


def test_dropout_drops_rate_fraction_without_rescaling():
    z = 1.0 + np.random.default_rng(4).random((64, 8, 8, 16), np.float32)  # 65536 in [1, 2)
    out = np.asarray(dropout(jax.random.key(5), z, rate=0.25))
    kept = out != 0
    assert abs(kept.mean() - 0.75) < 0.01  # binomial std is 0.0017
    np.testing.assert_array_equal(out[kept], z[kept])  # no 1/(1-p) factor
    np.testing.assert_array_equal(out, dropout(jax.random.key(5), z, rate=0.25))
    assert (out != np.asarray(dropout(jax.random.key(6), z, rate=0.25))).any()


def test_gaussian_noise_std_and_determinism():
    z = np.zeros((256, 16, 16, 4), np.float32)
    noise = np.asarray(gaussian(jax.random.key(7), z, sigma=0.5))
    assert abs(noise.std() - 0.5) < 0.005 and abs(noise.mean()) < 0.005
    np.testing.assert_array_equal(noise, gaussian(jax.random.key(7), z, sigma=0.5))
    assert (noise != np.asarray(gaussian(jax.random.key(8), z, sigma=0.5))).any()


def test_laplace_noise_scale_and_determinism():
    z = np.full((256, 16, 16, 4), 2.0, np.float32)
    out = np.asarray(laplace(jax.random.key(9), z, scale=0.1))
    noise = out - 2.0
    assert abs(np.abs(noise).mean() - 0.1) < 0.002  # E|X| = b
    assert abs(noise.std() - 0.1 * math.sqrt(2)) < 0.003  # std = sqrt(2) b
    np.testing.assert_array_equal(out, laplace(jax.random.key(9), z, scale=0.1))


def test_defenses_keep_bfloat16():
    def all_defenses(key, z):
        return (defenses.gaussian_noise(key, z, sigma=0.1),
                defenses.laplace_noise(key, z, scale=0.1),
                defenses.dropout(key, z, rate=0.5), defenses.topk_prune(z, ratio=0.5))

    z = jnp.ones((2, 3, 3, 4), jnp.bfloat16)
    for out in jax.jit(all_defenses)(jax.random.key(0), z):
        assert out.dtype == jnp.bfloat16 and out.shape == z.shape


def test_strength_mappings():
    # sqrt(2 ln(1.25 / 1e-4)) = sqrt(2 ln 12500); the reference's delta "10e-5" is 1e-4.
    assert defenses.dp_sigma(1.0) == pytest.approx(4.343612, abs=1e-6)
    assert defenses.dp_sigma(2.0) == pytest.approx(2.171806, abs=1e-6)
    assert defenses.dp_sigma(1.0, delta=1e-5) == pytest.approx(4.844805, abs=1e-6)
    assert [defenses.laplace_scale(s) for s in (10.0, 12.5, 20.0)] == pytest.approx(
        [0.1, 0.08, 0.05])


# --- distance correlation --------------------------------------------------------------------

def test_distance_correlation_self_similarity_and_oracle():
    x = normal(10, (128, 4, 4, 3))
    flat = x.reshape(128, 48).astype(np.float64)
    q, _ = np.linalg.qr(normal(11, (48, 48)).astype(np.float64))
    similar = (2.5 * flat @ q + 1.0).astype(np.float32)  # rotation, scale, shift: dCor stays 1
    linear = (flat @ normal(12, (48, 16))).astype(np.float32).reshape(128, 2, 2, 4)
    assert float(dcor(x, x)) == pytest.approx(1.0, abs=1e-3)
    assert float(dcor(x, similar.reshape(128, 4, 4, 3))) == pytest.approx(1.0, abs=1e-3)
    value = float(dcor(x, linear))  # a general linear map keeps it high
    assert value > 0.8
    assert value == pytest.approx(numpy_dcor(x, linear), abs=1e-4)


def test_distance_correlation_of_independent_samples_is_small():
    # Scalar features: the biased (V-statistic) dCor of independent samples grows with the
    # dimension (about 0.5 for 12 vs 8 features at n=128), so test the low-dimensional case.
    x, z = normal(13, (128, 1)), normal(14, (128, 1))
    value = float(dcor(x, z))
    assert value < 0.2
    assert value == pytest.approx(numpy_dcor(x, z), abs=1e-4)
    assert float(dcor(x, x ** 2)) > 0.4  # nonlinear dependence with zero linear correlation


def test_distance_correlation_gradients_are_finite():
    grad_fn = jax.jit(jax.grad(defenses.distance_correlation, argnums=1))
    x, z = normal(15, (16, 4, 4, 3)), normal(16, (16, 2, 2, 4))
    z[1] = z[0]  # duplicate rows hit the 1e-7 distance floor
    grad = grad_fn(x, z)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0
    assert bool(jnp.all(jnp.isfinite(grad_fn(x, np.ones_like(z)))))  # all distances at the floor


def test_nopeek_penalty_normalises_images():
    images = np.random.default_rng(17).random((32, 4, 4, 3), np.float32)
    z = normal(18, (32, 2, 2, 4))
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    expected = numpy_dcor((images - np.array(mean)) / np.array(std), z)
    got = jax.jit(functools.partial(defenses.nopeek_penalty, mean=mean, std=std))(images, z)
    # float32 |a|^2 - 2 a.b + |b|^2 of normalised images (|a|^2 ~ 60) cancels: a float32 NumPy
    # transcription is already 1.5e-5 off the float64 value, and XLA's summation order moves
    # the jitted result by a few 1e-6 more depending on the CPU (2e-5 on an AVX-512 VM).
    assert float(got) == pytest.approx(expected, abs=1e-4)


def test_distance_correlation_rejects_mismatched_batches():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 3\)"):
        defenses.distance_correlation(np.ones((4, 3), np.float32), np.ones((5, 3), np.float32))


# --- declarative wrapper -----------------------------------------------------------------------

@pytest.mark.parametrize("kind, strength", [
    ("none", 0.0), ("gaussian", 10.0), ("Laplace", 12.5), ("dropout", 0.2), ("topk", 0.5)])
def test_apply_defense_under_jit_dispatches_with_reference_scales(kind, strength):
    spec = defenses.parse_defense(kind, strength)
    key, z = jax.random.key(19), normal(20, (4, 2, 2, 8))
    out = jax.jit(defenses.apply_defense, static_argnums=0)(spec, key, z)
    expected = {"none": lambda: z,
                "gaussian": lambda: gaussian(key, z, sigma=defenses.dp_sigma(10.0)),
                "laplace": lambda: laplace(key, z, scale=0.08),
                "dropout": lambda: dropout(key, z, rate=0.2),
                "topk": lambda: topk(z, ratio=0.5)}[spec.kind]()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert out.shape == z.shape and out.dtype == z.dtype
    if kind == "topk":
        assert int(np.sum(np.asarray(out) != 0)) == 128 - 64


def test_apply_defense_with_bound_spec():
    spec = defenses.DefenseSpec("dropout", 0.2)
    assert spec == defenses.parse_defense(" DROPOUT ", 0.2) and hash(spec) == hash(
        defenses.parse_defense("dropout", 0.2))
    bound = jax.jit(functools.partial(defenses.apply_defense, spec))
    z = normal(21, (4, 2, 2, 8))
    np.testing.assert_array_equal(bound(jax.random.key(22), z),
                                  dropout(jax.random.key(22), z, rate=0.2))


@pytest.mark.parametrize("kind, strength, message", [
    ("gauss", 1.0, "'gauss'"),
    ("dropout", 1.0, "1.0"),
    ("dropout", -0.1, "-0.1"),
    ("topk", 1.5, "1.5"),
    ("gaussian", 0.0, "0.0"),
    ("laplace", -2.0, "-2.0"),
    ("laplace", float("nan"), "nan"),
    ("dropout", "lots", "'lots'"),
])
def test_parse_defense_rejects_bad_specs(kind, strength, message):
    with pytest.raises(ValueError, match=message):
        defenses.parse_defense(kind, strength)


def test_bad_direct_arguments_raise():
    with pytest.raises(ValueError, match="1.0"):
        defenses.topk_prune(np.ones((2, 3), np.float32), ratio=1.0)
    with pytest.raises(ValueError, match="1.0"):
        defenses.dropout(jax.random.key(0), np.ones((2, 3), np.float32), rate=1.0)
    with pytest.raises(ValueError, match="jax.random.key"):
        defenses.apply_defense(defenses.parse_defense("dropout", 0.1), None, np.ones((2, 3)))
    with pytest.raises(ValueError, match="epsilon=0"):
        defenses.dp_sigma(0)


def test_nopeek_penalty_hook_for_the_sfl_rounds():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(8, 4, 4, 3)), jnp.float32)
    z = jnp.asarray(rng.normal(size=(8, 2, 2, 2)), jnp.float32)
    penalty = defenses.make_nopeek_penalty(alpha=1.5, mean=(0.5,) * 3, std=(0.25,) * 3)
    value, metrics = penalty(None, z, images)
    dcor = defenses.nopeek_penalty(images, z, mean=(0.5,) * 3, std=(0.25,) * 3)
    np.testing.assert_allclose(value, 1.5 * dcor, rtol=1e-6)
    np.testing.assert_allclose(metrics["train/dcor"], dcor, rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        defenses.make_nopeek_penalty(alpha=-1.0, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_make_smash():
    assert defenses.make_smash(defenses.parse_defense("none")) is None
    smash = defenses.make_smash(defenses.parse_defense("topk", 0.5))
    z = jnp.arange(8.0).reshape(2, 2, 2, 1)
    np.testing.assert_array_equal(smash(None, z).reshape(-1), [0, 0, 0, 0, 4, 5, 6, 7])
