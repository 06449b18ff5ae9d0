"""Mixed precision (``model.dtype=bfloat16``): bf16 compute, float32 params, state and losses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import common
from experiments.configs import train as train_config
from ressfl_jax import optim
from ressfl_jax.models import build_split_model, feature_shape
from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.state import create_sfl_state, init_split_variables
from ressfl_jax.training import ressfl, sfl
from tests.helpers import leaves_differ

K, B = 2, 4


# Init keys are "rbg" keys: a threefry init of even a tiny VGG compiles ~4x slower on XLA-CPU
# (as in test_models.py); the initial weights' values are not what these tests check.
def init_key(seed):
    return jax.random.key(seed, impl="rbg")


def build(dtype):
    # XLA's conv compiles faster than im2col; test_layers.py checks im2col's bf16 compute and
    # test_models.py a bf16 model with the default ("auto": im2col on CPU) convs.
    return build_split_model("vgg11_bn", cut_layer=4, bottleneck="norelu_C8S1", num_classes=10,
                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), width_mult=1 / 16,
                             dtype=dtype, conv_impl="xla")


def test_bf16_forward_is_close_to_f32_with_the_same_float32_params():
    f32, bf16 = build(jnp.float32), build(jnp.bfloat16)
    # One compiled init each (op-by-op init of the im2col model takes ~40 s on XLA-CPU).
    (cp, cs), (sp, ss) = jax.jit(lambda k: init_split_variables(k, f32))(init_key(0))
    (cp16, _), (sp16, _) = jax.jit(lambda k: init_split_variables(k, bf16))(init_key(0))
    chex.assert_trees_all_equal(cp16, cp)  # Same float32 params: the dtype is compute only.
    chex.assert_trees_all_equal(sp16, sp)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(B, 32, 32, 3)), jnp.float32)

    def logits(model):
        @jax.jit
        def f(x):
            z, _ = sfl.client_apply(model, cp, cs, x, train=False)
            return z, sfl.server_apply(model, sp, ss, z, None, train=False)[0]
        return f(x)

    (z32, want), (z16, got) = logits(f32), logits(bf16)
    assert z32.dtype == jnp.float32 and z16.dtype == jnp.bfloat16
    assert got.dtype == jnp.float32  # Logits/loss stay float32.
    assert float(jnp.max(jnp.abs(got - want))) < 0.05 * float(jnp.max(jnp.abs(want))) + 1e-3
    assert not np.array_equal(np.asarray(got), np.asarray(want))  # bf16 really computed.


def test_bf16_attacker_aware_step_keeps_float32_state():
    model = build(jnp.bfloat16)
    shape = feature_shape(model)
    decoder = build_decoder("conv_normN0C16", feature_shape=shape, dtype=jnp.bfloat16,
                            conv_impl="xla")
    tx = optim.make_sgd(0.05, momentum=0.9, weight_decay=5e-4)
    state = create_sfl_state(init_key(0), model, client_tx=tx, server_tx=tx,
                             num_clients=K)
    state = state.replace(decoders=ressfl.create_decoders(
        init_key(1), decoder, num_clients=K, feature_shape=shape, tx=optax.adam(1e-3)))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (K, B, 32, 32, 3), np.uint8)),
             "label": jnp.asarray(rng.integers(0, 10, (K, B)), jnp.int32)}
    step = jax.jit(ressfl.make_ressfl_step(
        model=model, decoder=decoder, schedule="parallel", augment="none", alpha=0.3,
        threshold=0.0, kind="ssim", interval=1, decoder_steps=1, steps_per_epoch=10))
    new_state, metrics = step(state, batch, jax.random.key(2))
    dtypes = {x.dtype for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert any(leaves_differ(new_state.clients.params, state.clients.params))


def test_config_dtype_reaches_the_model_and_bad_names_fail():
    config = train_config.get_config("smoke")
    assert common.compute_dtype(config) == jnp.float32
    config.model.dtype = "bfloat16"
    assert common.compute_dtype(config) == jnp.bfloat16
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match="model.dtype='float16'"):
        common.compute_dtype(config)


def test_bf16_vanilla_step_runs_with_float32_params():
    model = build(jnp.bfloat16)
    tx = optim.make_sgd(0.05, momentum=0.9, weight_decay=5e-4)
    state = create_sfl_state(init_key(0), model, client_tx=tx, server_tx=tx,
                             num_clients=K)
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (K, B, 32, 32, 3), np.uint8)),
             "label": jnp.asarray(rng.integers(0, 10, (K, B)), jnp.int32)}
    step = jax.jit(sfl.make_train_step(model=model, schedule="parallel", augment="none"))
    new_state, metrics = step(state, batch, jax.random.key(3))
    assert {x.dtype for x in jax.tree.leaves(new_state.clients.params)} == {jnp.dtype("float32")}
    assert np.isfinite(float(metrics["train/ce_loss"]))
