"""Defenses on the smashed data and the NoPeek regulariser (ResSFL, Li et al., CVPR 2022, Table 4).

Exact semantics of the reference's defenses (spec §8, §4.1). Each operates on the client
features ``z`` (float [B, h, w, c], NHWC) and is a small pure jittable function, usable inside a
jitted training step and at attack time. In the reference every one of them is post-hoc: applied
to each validation batch and to each target activation of a model trained without it.

Strength conventions (the reference's ``--regularization_strength``, kept by ``DefenseSpec``):

* ``gaussian`` (reference ``local_dp``): strength = epsilon, noise std ``dp_sigma(epsilon)``.
* ``laplace`` (reference ``local_dp_laplace``): strength = s, Laplace scale ``b = 1 / s``.
* ``dropout``: strength = rate p in [0, 1); NO 1/(1-p) rescaling of the kept values.
* ``topk`` (reference ``topkprune``): strength = ratio p in [0, 1) of values zeroed.
"""

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp

DEFENSE_KINDS = ("none", "gaussian", "laplace", "dropout", "topk")
DP_DELTA = 1e-4  # The reference writes "10e-5", which is 1e-4.
DCOR_EPS = 1e-7  # The reference's sigma: distance floor and stabiliser of sqrt and division.


def dp_sigma(epsilon: float, *, delta: float = DP_DELTA) -> float:
    """Gaussian-mechanism noise std of the reference's ``local_dp``: sqrt(2 ln(1.25/delta)) / eps.

    This is the classic Gaussian-mechanism calibration for (epsilon, delta)-DP of ONE element with
    L2 sensitivity 1, applied per element exactly as the reference does. The features z are
    unbounded (no clipping), so it is the reference's formula for the noise scale, not a
    calibrated DP guarantee. dp_sigma(1.0) = 4.3436 for delta 1e-4 (4.8448 for delta 1e-5).

    Args:
      epsilon: privacy parameter (the defense strength), > 0.
      delta: failure probability, in (0, 1.25).

    Returns:
      The per-element noise standard deviation (a Python float).
    """
    if not epsilon > 0 or not 0 < delta < 1.25:
        raise ValueError(f"dp_sigma needs epsilon > 0 and 0 < delta < 1.25; got epsilon={epsilon}"
                         f", delta={delta}.")
    return math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def laplace_scale(strength: float) -> float:
    """Laplace scale b = 1 / strength of the reference's ``local_dp_laplace`` (s=10 -> b=0.1)."""
    if not strength > 0:
        raise ValueError(f"Laplace strength must be > 0 (scale b = 1/strength); got {strength}.")
    return 1.0 / strength


def _sample_like(sampler, key: jax.Array, z: jax.Array, dtype=None) -> jax.Array:
    """``sampler(key, [z.size], dtype)`` reshaped to z.shape.

    Same values as drawing z.shape directly (partitionable threefry counts in flat order), but
    XLA:CPU compiles a rank-1 draw far faster than a rank-4 one (1 s vs 9 s for [64, 8, 8, 16]).
    """
    return sampler(key, (z.size,), dtype or z.dtype).reshape(z.shape)


def gaussian_noise(key: jax.Array, z: jax.Array, *, sigma) -> jax.Array:
    """Adds i.i.d. N(0, sigma^2) noise to every element of z.

    Args:
      key: typed PRNG key (``jax.random.key``).
      z: features, float [...] (e.g. [B, h, w, c]).
      sigma: noise standard deviation, >= 0 (see ``dp_sigma`` for the reference's epsilon).

    Returns:
      ``z + noise``, same shape and dtype as z.
    """
    return z + sigma * _sample_like(jax.random.normal, key, z)


def laplace_noise(key: jax.Array, z: jax.Array, *, scale) -> jax.Array:
    """Adds i.i.d. Laplace(0, b=scale) noise (std = sqrt(2) * scale) to every element of z.

    Args:
      key: typed PRNG key.
      z: features, float [...].
      scale: Laplace scale b > 0; the reference's strength s means ``scale = laplace_scale(s)``.

    Returns:
      ``z + noise``, same shape and dtype as z.
    """
    return z + scale * _sample_like(jax.random.laplace, key, z)


def dropout(key: jax.Array, z: jax.Array, *, rate) -> jax.Array:
    """Zeroes each element of z independently with probability ``rate``; kept values UNSCALED.

    Unlike ``flax.linen.Dropout`` there is no 1/(1-rate) rescaling (reference quirk, spec §8).

    Args:
      key: typed PRNG key.
      z: features, float [...].
      rate: drop probability in [0, 1).

    Returns:
      z with dropped elements set to 0, same shape and dtype.
    """
    if isinstance(rate, numbers.Real) and not 0 <= rate < 1:
        raise ValueError(f"dropout rate must be in [0, 1); got {rate}.")
    drop = _sample_like(jax.random.uniform, key, z, jnp.float32) < rate  # reference: rand < p
    return jnp.where(drop, jnp.zeros_like(z), z)


def _prune_flat(flat: jax.Array, num_zeroed: int) -> jax.Array:
    """Zeroes the ``num_zeroed`` smallest signed values of a 1-D array (ties: lowest index)."""
    if num_zeroed == 0:
        return flat
    # lax.top_k breaks ties toward the lower index, so exactly num_zeroed entries are chosen.
    _, index = jax.lax.top_k(-flat, num_zeroed)
    return flat.at[index].set(0, unique_indices=True)


def topk_prune(z: jax.Array, *, ratio: float, per_example: bool = False) -> jax.Array:
    """Zeroes the int(ratio * numel) smallest SIGNED values of z, keeping the rest.

    Exactly ``numel - int(ratio * numel)`` values keep their value (``numel * ratio`` as in the
    reference's Python float product); ties among equal values are broken deterministically by
    flat (row-major) index, lowest zeroed first.

    Args:
      z: features, float [B, ...].
      ratio: fraction in [0, 1) of values to zero; static (it sets a shape).
      per_example: False (the reference's default) flattens the WHOLE tensor, batch included, so
        the count is over ``z.size`` and depends on the batch. True prunes each example
        separately: int(ratio * z[0].size) values are zeroed in every example.

    Returns:
      Pruned z, same shape and dtype.
    """
    if not isinstance(ratio, numbers.Real) or not 0 <= ratio < 1:
        raise ValueError(f"top-k prune ratio must be a static float in [0, 1); got {ratio!r}.")
    if per_example:
        rows = z.reshape(z.shape[0], -1)  # [B, h*w*c]
        num_zeroed = int(rows.shape[1] * ratio)
        return jax.vmap(lambda row: _prune_flat(row, num_zeroed))(rows).reshape(z.shape)
    return _prune_flat(z.reshape(-1), int(z.size * ratio)).reshape(z.shape)


def _pairwise_distances(a: jax.Array) -> jax.Array:
    """[n, d] -> [n, n] Euclidean distances sqrt(max(|a|^2 - 2 a.b + |b|^2, 1e-7)) via matmul."""
    sq = jnp.sum(a * a, axis=1, keepdims=True)  # [n, 1]
    gram = jnp.matmul(a, a.T, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPU
    return jnp.sqrt(jnp.maximum(sq - 2.0 * gram + sq.T, DCOR_EPS))


def _double_centre(d: jax.Array) -> jax.Array:
    """Subtracts row and column means of an [n, n] matrix and adds back the grand mean."""
    return d - jnp.mean(d, axis=0, keepdims=True) - jnp.mean(d, axis=1, keepdims=True) + jnp.mean(d)


def distance_correlation(x: jax.Array, z: jax.Array) -> jax.Array:
    """Sample distance correlation of the reference's NoPeek loss (spec §8), differentiable.

    Both inputs are flattened per example. With A, B the double-centred pairwise distance
    matrices: dCov = sqrt(1e-7 + sum(A*B)/n^2), dVarX = sqrt(1e-7 + sum(A*A)/n^2), likewise
    dVarY, and dCor = dCov / (sqrt(1e-7 + dVarX * dVarY) + 1e-7). dCor(x, x) = 1 - O(1e-7).

    Args:
      x: [n, ...] float; NoPeek passes the NORMALISED input batch (see ``nopeek_penalty``).
      z: [n, ...] float, e.g. the smashed data [n, h, w, c].

    Returns:
      float32 scalar in [0, ~1]. This biased (V-statistic) estimate of independent x and z is
      not near 0 in high dimension: about 0.15 for scalar features at n=128, 0.5 for 12 and 8.
    """
    if x.shape[0] != z.shape[0] or x.shape[0] < 2:
        raise ValueError(f"distance_correlation needs two batches of one size n >= 2; got x "
                         f"{x.shape} and z {z.shape}.")
    n = x.shape[0]
    a = _double_centre(_pairwise_distances(x.reshape(n, -1).astype(jnp.float32)))
    b = _double_centre(_pairwise_distances(z.reshape(n, -1).astype(jnp.float32)))
    dcov = jnp.sqrt(DCOR_EPS + jnp.sum(a * b) / n ** 2)
    dvar_x = jnp.sqrt(DCOR_EPS + jnp.sum(a * a) / n ** 2)
    dvar_z = jnp.sqrt(DCOR_EPS + jnp.sum(b * b) / n ** 2)
    return dcov / (jnp.sqrt(DCOR_EPS + dvar_x * dvar_z) + DCOR_EPS)


def nopeek_penalty(images: jax.Array, z: jax.Array, *, mean, std) -> jax.Array:
    """dCor(normalised images, z): the NoPeek term (total loss = CE + alpha * this).

    Our batches carry [0, 1] images and the client normalises inside the network; the reference
    takes dCor of the normalised input, so this normalises the same way first.

    Args:
      images: [n, H, W, C] float in [0, 1].
      z: [n, ...] smashed data.
      mean, std: length-C per-channel normalisation (as given to the client model).

    Returns:
      float32 scalar.
    """
    mean = jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, -1)
    std = jnp.asarray(std, jnp.float32).reshape(1, 1, 1, -1)
    return distance_correlation((images.astype(jnp.float32) - mean) / std, z)


@dataclasses.dataclass(frozen=True)
class DefenseSpec:
    """A test-time defense on the smashed data: ``kind`` in DEFENSE_KINDS and its ``strength``.

    Frozen and hashable, so it can be bound with ``functools.partial`` or passed as a static
    argument of ``jax.jit``. The strength's meaning per kind is in the module docstring; it is
    ignored for 'none'. Build it with ``parse_defense`` (or directly; both validate).
    """
    kind: str
    strength: float = 0.0

    def __post_init__(self):
        if self.kind not in DEFENSE_KINDS:
            raise ValueError(f"Unknown defense kind {self.kind!r}; choose one of {DEFENSE_KINDS}.")
        s = self.strength
        if not isinstance(s, numbers.Real) or not math.isfinite(s):
            raise ValueError(f"Defense strength must be a finite number; got {s!r}.")
        if self.kind in ("gaussian", "laplace") and not s > 0:
            raise ValueError(f"{self.kind} noise strength must be > 0 (it is epsilon for "
                             f"'gaussian', 1/scale for 'laplace'); got {s}.")
        if self.kind in ("dropout", "topk") and not 0 <= s < 1:
            raise ValueError(f"{self.kind} ratio must be in [0, 1); got {s}.")


def parse_defense(kind: str, strength: float = 0.0) -> DefenseSpec:
    """Validated ``DefenseSpec`` from a kind name (case-insensitive) and a strength.

    Raises:
      ValueError: unknown kind, or a strength out of range for it (noise strengths must be > 0;
        dropout and top-k ratios in [0, 1)). The message names the bad value.
    """
    if not isinstance(kind, str):
        raise ValueError(f"Defense kind must be a string, one of {DEFENSE_KINDS}; got {kind!r}.")
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"Defense strength must be a number; got {strength!r}.") from None
    return DefenseSpec(kind.strip().lower(), strength)


def apply_defense(spec: DefenseSpec, key: jax.Array | None, z: jax.Array) -> jax.Array:
    """Applies ``spec`` to the smashed data z ([B, h, w, c]); jittable with spec static.

    Args:
      spec: the defense; top-k prunes the whole tensor (the reference's default).
      key: typed PRNG key; required for 'gaussian', 'laplace' and 'dropout', else unused.
      z: features, float [B, h, w, c].

    Returns:
      Defended z, same shape and dtype.
    """
    if spec.kind == "none":
        return z
    if spec.kind == "topk":
        return topk_prune(z, ratio=spec.strength)
    if key is None:
        raise ValueError(f"Defense {spec.kind!r} is random: pass a jax.random.key, not None.")
    if spec.kind == "gaussian":
        return gaussian_noise(key, z, sigma=dp_sigma(spec.strength))
    if spec.kind == "laplace":
        return laplace_noise(key, z, scale=laplace_scale(spec.strength))
    return dropout(key, z, rate=spec.strength)


def make_smash(spec: DefenseSpec):
    """``(key, z) -> z'`` for the SFL rounds' ``smash`` hook, or None for 'none'."""
    if spec.kind == "none":
        return None
    return functools.partial(apply_defense, spec)


def make_nopeek_penalty(*, alpha: float, mean, std):
    """The SFL rounds' ``penalty`` hook for NoPeek: ``alpha * dCor(normalised x, z)`` (spec §8).

    Returns ``(decoder, features, images) -> (alpha * dcor, {'train/dcor': dcor})``; the
    decoder argument is unused (there is no simulated attacker).
    """
    if alpha < 0:
        raise ValueError(f"NoPeek alpha must be >= 0, got {alpha}.")

    def penalty(decoder, features, images):
        del decoder
        value = nopeek_penalty(images, features, mean=mean, std=std)
        return alpha * value, {"train/dcor": jax.lax.stop_gradient(value)}

    return penalty
