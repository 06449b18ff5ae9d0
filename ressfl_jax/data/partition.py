"""Client partitions, user sampling and per-epoch batch plans (ResSFL, Li et al., CVPR 2022; §5).

Pure, deterministic numpy. Host-side randomness comes from ``np.random.default_rng`` seeded with
an integer tuple that always contains a nonzero stream tag: numpy's ``SeedSequence`` treats
trailing zeros as absent ((s, e) and (s, e, 0) give the same stream), so the tag keeps e.g. the
user-sampling stream of an epoch distinct from user 0's batch stream. These streams are separate
from the JAX key streams of the train step.

Deliberate deviations from the reference (spec §5, §11):
  * IID splits always index a seeded random permutation; the reference splits SVHN, MNIST and
    FaceScrub in raw dataset order (label-skewed for class-sorted data).
  * Non-IID splits use the dataset's real class count; the reference hard-codes 100 classes, so
    its CIFAR-10 runs get int(p * 100) shards per user.
  * numpy's ``Generator`` replaces torch ``randperm`` / legacy ``np.random`` (seed 123), so the
    exact indices differ from the reference while the distributions match.
"""

import numpy as np

# Stream tags (nonzero, distinct).
_PORTION, _PARTITION, _SAMPLE, _PLAN = 1, 2, 3, 4


def _check_seed(seed: int, epoch: int = 0) -> None:
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")


def steps_per_epoch(n_per_user: int, batch_size: int) -> int:
    """Batches per epoch, counting the last partial one as the reference does (spec §4.9)."""
    if batch_size < 1 or n_per_user < batch_size:
        raise ValueError(f"need 1 <= batch_size <= n_per_user, got batch_size={batch_size}, "
                         f"n_per_user={n_per_user}")
    return -(-n_per_user // batch_size)


def portion_indices(num_examples: int, portion: float, *, seed: int) -> np.ndarray:
    """A random subset of int(portion * num_examples) indices (``dataset_portion``).

    Like the reference, portion 1.0 still returns a random permutation of all indices.

    Args:
        num_examples: size N of the training set.
        portion: fraction in (0, 1].
        seed: non-negative int.

    Returns:
        [int(portion * N)] int64 distinct indices in [0, N), in random order.
    """
    _check_seed(seed)
    count = int(num_examples * portion)
    if not 0.0 < portion <= 1.0 or count < 1:
        raise ValueError(f"portion must be in (0, 1] and keep >= 1 example, got portion={portion}"
                         f" of num_examples={num_examples}")
    return np.random.default_rng((seed, _PORTION)).permutation(num_examples)[:count]


def partition_clients(labels: np.ndarray, num_users: int, *, noniid: float = 1.0,
                      num_classes: int, seed: int) -> np.ndarray:
    """Splits N examples among users in equal-sized, disjoint parts.

    IID (``noniid == 1``): user u gets the contiguous range [u * n, (u + 1) * n) of a seeded random
    permutation, n = N // num_users; the remainder is dropped. Non-IID (``noniid = p < 1``):
    m = int(p * num_classes) shards per user; indices are stably sorted by label and cut into
    m * num_users shards of N // num_users // m consecutive indices; each user gets m distinct
    shards drawn without replacement. To partition a ``portion_indices`` subset ``sub``, pass
    ``labels[sub]`` and map the result back with ``sub[result]``.

    Args:
        labels: [N] int class ids in [0, num_classes).
        num_users: number of users U >= 1.
        noniid: p in (0, 1]; 1 means IID.
        num_classes: the dataset's class count (used for m).
        seed: non-negative int.

    Returns:
        [U, n_per_user] int64 indices into ``labels``, each row sorted ascending.
    """
    _check_seed(seed)
    labels = np.asarray(labels)
    n = labels.shape[0]
    if labels.ndim != 1 or num_users < 1 or n // num_users < 1:
        raise ValueError(f"need 1-D labels and 1 <= num_users <= N, got labels.shape="
                         f"{labels.shape}, num_users={num_users}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, "
                         f"{labels.max()}]")
    rng = np.random.default_rng((seed, _PARTITION))
    if noniid == 1.0:
        per_user = n // num_users
        parts = rng.permutation(n)[:num_users * per_user].reshape(num_users, per_user)
        return np.sort(parts, axis=1).astype(np.int64)
    if not 0.0 < noniid < 1.0:
        raise ValueError(f"noniid must be in (0, 1], got {noniid}")
    m = int(noniid * num_classes)
    shard = n // num_users // m if m >= 1 else 0
    if m < 1 or shard < 1:
        raise ValueError(f"non-IID split impossible: m = int(noniid={noniid} * num_classes="
                         f"{num_classes}) = {m} shards per user of size N={n} // num_users="
                         f"{num_users} // m = {shard}; both must be >= 1")
    by_label = np.argsort(labels, kind="stable")
    shards = by_label[:m * num_users * shard].reshape(m * num_users, shard)
    # A permutation of all shards cut into U groups of m == each user drawing m distinct shards
    # without replacement from those left (the reference's sequential np.random.choice).
    drawn = rng.permutation(m * num_users).reshape(num_users, m)
    parts = shards[drawn].reshape(num_users, m * shard)
    return np.sort(parts, axis=1).astype(np.int64)


def sample_users(num_users: int, num_active: int, *, seed: int, epoch: int) -> np.ndarray:
    """Users active in an epoch (``client_sample_ratio``; spec §5).

    Args:
        num_users: U, total users.
        num_active: K in [1, U] client slots.
        seed: non-negative int.
        epoch: non-negative int.

    Returns:
        [K] int64: ``arange(U)`` when K == U, else K distinct users drawn for this (seed, epoch).
    """
    _check_seed(seed, epoch)
    if not 1 <= num_active <= num_users:
        raise ValueError(f"need 1 <= num_active <= num_users, got {num_active}, {num_users}")
    if num_active == num_users:
        return np.arange(num_users, dtype=np.int64)
    rng = np.random.default_rng((seed, epoch, _SAMPLE))
    return rng.choice(num_users, num_active, replace=False).astype(np.int64)


def epoch_plan(partitions: np.ndarray, users: np.ndarray, *, batch_size: int, seed: int,
               epoch: int) -> np.ndarray:
    """Fixed-shape batch indices of one epoch for the active users (spec §4.4 step 1).

    Each user reshuffles its partition with a per-(seed, epoch, user) permutation and walks it in
    batches. If the last batch would be partial, it is replaced by the first ``batch_size``
    indices of a fresh permutation, as the reference does, so every step has exactly
    ``batch_size`` samples and there are ceil(n_per_user / batch_size) steps.

    Args:
        partitions: [U, n_per_user] int indices into the training arrays (``partition_clients``).
        users: [K] int user ids in [0, U) (``sample_users``); slot k serves users[k].
        batch_size: B, with 1 <= B <= n_per_user.
        seed: non-negative int.
        epoch: non-negative int.

    Returns:
        [S, K, B] int32 indices into the training arrays, S = steps_per_epoch(n_per_user, B).
    """
    _check_seed(seed, epoch)
    users = np.asarray(users)
    num_users, n = partitions.shape
    if users.ndim != 1 or users.size < 1 or users.min() < 0 or users.max() >= num_users:
        raise ValueError(f"users must be a non-empty 1-D array of ids in [0, {num_users}), "
                         f"got {users}")
    steps = steps_per_epoch(n, batch_size)
    plan = np.empty((steps, users.size, batch_size), np.int32)
    for k, user in enumerate(users.tolist()):
        rng = np.random.default_rng((seed, epoch, _PLAN, user))
        order = rng.permutation(n)
        if n % batch_size:  # Replace the partial last batch with a fresh permutation's head.
            order = np.concatenate([order[:(steps - 1) * batch_size],
                                    rng.permutation(n)[:batch_size]])
        plan[:, k, :] = partitions[user][order].reshape(steps, batch_size)
    return plan
