"""Federated averaging over the stacked client axis (ResSFL spec §4.4 "end of each epoch", §5).

Per-client trees are stacked on axis 0 (``[K, ...]``). FedAvg replaces every client's copy with
the (optionally weighted) mean over the K copies. The reference averages model weights *and*
BatchNorm running statistics, but not optimizer (momentum) state, which stays per client slot.
"""

import jax
import jax.numpy as jnp


def fedavg(stacked, weights=None):
    """Averages a stacked pytree over axis 0 and broadcasts the mean back to every client.

    Args:
      stacked: pytree whose leaves are float arrays [K, ...].
      weights: optional [K] non-negative weights (e.g. client dataset sizes); equal if None.

    Returns:
      A pytree of the same structure and shapes in which every client holds the mean.
    """

    def avg(x):
        if weights is None:
            mean = jnp.mean(x, axis=0)
        else:
            w = jnp.asarray(weights, x.dtype)
            mean = jnp.tensordot(w / jnp.sum(w), x, axes=1)
        return jnp.broadcast_to(mean, x.shape).astype(x.dtype)

    return jax.tree.map(avg, stacked)


def stack(trees):
    """Stacks a list of identically-structured pytrees on a new leading client axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(stacked, index: int):
    """Returns client ``index`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[index], stacked)


def replicate(tree, num_clients: int):
    """Stacks ``num_clients`` identical copies of ``tree`` (the reference deep-copies client 0)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients,) + jnp.shape(x)), tree)
