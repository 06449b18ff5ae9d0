"""``ressfl_jax.rng``: init programs draw the same values whatever JAX's global PRNG setting."""

import chex
import jax
import optax
import pytest

from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.training import ressfl


@pytest.mark.parametrize("global_partitionable", [True, False])
def test_init_values_do_not_depend_on_the_global_threefry_setting(global_partitionable):
    decoder = build_decoder("conv_normN0C16", feature_shape=(4, 4, 2), image_shape=(8, 8, 3),
                            conv_impl="xla")

    def create():
        return ressfl.create_decoders(jax.random.key(3), decoder, num_clients=2,
                                      feature_shape=(4, 4, 2), tx=optax.sgd(0.1))

    with jax.threefry_partitionable(global_partitionable):
        got = create()
    with jax.threefry_partitionable(False):  # what rng.unpartitioned() scopes
        want = create()
    chex.assert_trees_all_equal(got.params, want.params)
    # And the scoping matters: the partitionable lowering draws other values.
    with jax.threefry_partitionable(True):
        other = jax.jit(lambda k: decoder.init({"params": k}, jax.numpy.zeros((1, 4, 4, 2)),
                                               train=False))(jax.random.key(3))
    assert not all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool((a == b).all()), other["params"],
        jax.tree.map(lambda x: x[0], want.params))))
