"""FedAvg and stacking on literal trees."""

import chex
import jax.numpy as jnp
import numpy as np

from ressfl_jax import federated


def test_fedavg_literal_tree():
    stacked = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]]), "b": {"x": jnp.array([0.0, 4.0])}}
    out = federated.fedavg(stacked)
    chex.assert_trees_all_close(out, {"w": jnp.array([[2.0, 4.0], [2.0, 4.0]]),
                                      "b": {"x": jnp.array([2.0, 2.0])}})


def test_fedavg_weighted():
    stacked = {"w": jnp.array([[1.0], [4.0]])}
    out = federated.fedavg(stacked, weights=jnp.array([3.0, 1.0]))
    np.testing.assert_allclose(out["w"], [[1.75], [1.75]])


def test_stack_unstack_replicate():
    trees = [{"a": jnp.array([1.0, 2.0])}, {"a": jnp.array([3.0, 4.0])}]
    stacked = federated.stack(trees)
    assert stacked["a"].shape == (2, 2)
    chex.assert_trees_all_equal(federated.unstack(stacked, 1), trees[1])
    rep = federated.replicate({"a": jnp.array([5.0])}, 3)
    np.testing.assert_array_equal(rep["a"], [[5.0], [5.0], [5.0]])
