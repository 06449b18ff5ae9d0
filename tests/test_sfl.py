"""SFL steps: vmap == loop over clients, sequential == parallel at K=1, no recompilation."""

import functools
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ressfl_jax import federated, losses, optim
from ressfl_jax.models import build_split_model
from ressfl_jax.state import create_sfl_state, sync_clients
from ressfl_jax.training import loop, sfl

K, B = 3, 4


@pytest.fixture(scope="module")
def model():
    # XLA's conv compiles ~25% faster than im2col here; test_models checks im2col == xla.
    return build_split_model("vgg11_bn", cut_layer=4, bottleneck="norelu_C8S1", num_classes=10,
                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), width_mult=1 / 16,
                             conv_impl="xla")


def make_state(model, num_clients, lr=0.1):
    """``create_sfl_state(..., num_clients)``: the first ``num_clients`` of K identical slots.

    Every state is built by the one K-slot init program (compiled once, then loaded from the
    compilation cache: ``lr`` is not part of it); its slots are copies of client 0, so the first
    ``num_clients`` of them are exactly what ``num_clients=num_clients`` builds. The init key is
    an "rbg" key: a threefry init of even this tiny VGG compiles ~4x slower on XLA-CPU (as in
    test_models.py), and no test here depends on the initial weights' values.
    """
    tx = optim.make_sgd(lr, momentum=0.9, weight_decay=5e-4)
    state = create_sfl_state(jax.random.key(0, impl="rbg"), model, client_tx=tx, server_tx=tx,
                             num_clients=K)
    if num_clients == K:
        return state
    return jax.jit(lambda s: s.replace(clients=jax.tree.map(lambda x: x[:num_clients],
                                                            s.clients)))(state)


def make_batch(num_clients, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (num_clients, B, 32, 32, 3), np.uint8)),
            "label": jnp.asarray(rng.integers(0, 10, (num_clients, B)), jnp.int32)}


def perturb_clients(state):
    """Makes the client copies differ so that per-client bookkeeping errors are visible."""
    def bump(x):
        scale = 1 + 0.1 * jnp.arange(x.shape[0], dtype=x.dtype)
        return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))
    return state.replace(clients=state.clients.replace(
        params=jax.tree.map(bump, state.clients.params)))


def test_parallel_step_equals_loop_over_clients(model):
    state = perturb_clients(make_state(model, K))
    batch = make_batch(K)
    key = jax.random.key(7)
    new_state, metrics = jax.jit(functools.partial(sfl.parallel_step, model=model,
                                                   augment="none"))(state, batch, key)

    # Oracle: explicit Python loop over clients, concatenated server batch.
    _, server_key = sfl.round_keys(key)
    images = batch["image"].astype(jnp.float32) / 255.0
    clients = [federated.unstack(state.clients, i) for i in range(K)]

    def loss_fn(client_params_list, server_params):
        feats, stats = [], []
        for i in range(K):
            f, s = sfl.client_apply(model, client_params_list[i], clients[i].batch_stats,
                                    images[i], train=True)
            feats.append(f)
            stats.append(s)
        logits, server_stats = sfl.server_apply(
            model, server_params, state.server.batch_stats, jnp.concatenate(feats),
            jax.random.fold_in(server_key, 0), train=True)
        ce = losses.cross_entropy(logits, batch["label"].reshape(-1)).reshape(K, B)
        return jnp.mean(ce), (stats, server_stats)

    (cg, sg), (stats, server_stats) = jax.jit(jax.grad(loss_fn, argnums=(0, 1), has_aux=True))(
        [c.params for c in clients], state.server.params)
    want_clients = [clients[i].apply_gradients(grads=jax.tree.map(lambda g: g * K, cg[i]),
                                               batch_stats=stats[i]) for i in range(K)]
    want_server = state.server.apply_gradients(grads=sg, batch_stats=server_stats)

    for i in range(K):
        chex.assert_trees_all_close(federated.unstack(new_state.clients, i).params,
                                    want_clients[i].params, atol=1e-5)
        chex.assert_trees_all_close(federated.unstack(new_state.clients, i).batch_stats,
                                    want_clients[i].batch_stats, atol=1e-5)
    chex.assert_trees_all_close(new_state.server.params, want_server.params, atol=1e-5)
    chex.assert_trees_all_close(new_state.server.batch_stats, want_server.batch_stats, atol=1e-5)
    assert int(new_state.step) == 1
    assert set(metrics) == {"train/ce_loss", "train/accuracy"}


def test_sequential_step_equals_loop_over_clients(model):
    state = perturb_clients(make_state(model, K))
    batch = make_batch(K, seed=1)
    key = jax.random.key(3)
    step = jax.jit(functools.partial(sfl.sequential_step, model=model, augment="none"))
    new_state, _ = step(state, batch, key)

    # Oracle: one-client rounds in a Python loop, carrying the server; each client must see
    # the server as updated by the previous clients and the same dropout key as in the scan.
    server = state.server
    _, server_key = sfl.round_keys(key)

    def loss_fn(cp, sp, client_stats, server_stats, images, labels, dropout_key):
        f, cs = sfl.client_apply(model, cp, client_stats, images, train=True)
        logits, ss = sfl.server_apply(model, sp, server_stats, f, dropout_key, train=True)
        return jnp.mean(losses.cross_entropy(logits, labels)), (cs, ss)

    # One compiled oracle for every client (its inputs are arguments, not closed-over values).
    grad_fn = jax.jit(jax.grad(loss_fn, argnums=(0, 1), has_aux=True))
    for i in range(K):
        client = federated.unstack(state.clients, i)
        images = batch["image"][i].astype(jnp.float32) / 255.0
        (cg, sg), (cs, ss) = grad_fn(client.params, server.params, client.batch_stats,
                                     server.batch_stats, images, batch["label"][i],
                                     jax.random.fold_in(server_key, i))
        server = server.apply_gradients(grads=sg, batch_stats=ss)
        want = client.apply_gradients(grads=cg, batch_stats=cs)
        chex.assert_trees_all_close(federated.unstack(new_state.clients, i).params,
                                    want.params, atol=1e-5)
    chex.assert_trees_all_close(new_state.server.params, server.params, atol=1e-5)
    chex.assert_trees_all_close(new_state.server.batch_stats, server.batch_stats, atol=1e-5)


def test_sequential_equals_parallel_for_one_client(model):
    state = make_state(model, 1)
    batch = make_batch(1, seed=2)
    key = jax.random.key(11)
    outs = [jax.jit(functools.partial(step, model=model, augment="crop_flip"))(state, batch, key)
            for step in (sfl.parallel_step, sfl.sequential_step)]
    chex.assert_trees_all_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-5)


def test_training_lowers_loss_on_a_fixed_batch(model):
    state = make_state(model, 2, lr=0.05)
    batch = make_batch(2, seed=4)
    step = jax.jit(sfl.make_train_step(model=model, schedule="parallel", augment="none"),
                   donate_argnums=0)
    first = None
    for i in range(15):
        state, metrics = step(state, batch, jax.random.key(i))
        first = float(metrics["train/ce_loss"]) if first is None else first
    assert float(metrics["train/ce_loss"]) < 0.85 * first  # Dropout 0.5 in the head: noisy.


def test_no_recompilation_on_second_step(model, caplog):
    step = jax.jit(sfl.make_train_step(model=model, schedule="sequential", augment="crop_flip"),
                   donate_argnums=0)
    state = make_state(model, 2)
    state, _ = step(state, make_batch(2, seed=0), jax.random.key(0))
    caplog.set_level(logging.WARNING)
    with jax.log_compiles():
        state, _ = step(state, make_batch(2, seed=1), jax.random.key(1))
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]


def test_sync_averages_params_and_batch_stats_not_momentum(model):
    state = perturb_clients(make_state(model, K))
    state, _ = jax.jit(functools.partial(sfl.parallel_step, model=model, augment="none"))(
        state, make_batch(K), jax.random.key(0))
    synced = sync_clients(state)
    for tree in (synced.clients.params, synced.clients.batch_stats):
        for leaf in jax.tree.leaves(tree):
            np.testing.assert_allclose(leaf[0], leaf[-1], rtol=1e-6)
    mean = jax.tree.map(lambda x: jnp.mean(x, 0), state.clients.params)
    chex.assert_trees_all_close(federated.unstack(synced.clients.params, 1), mean, atol=1e-6)
    # Momentum buffers belong to client slots and are not averaged (reference semantics).
    chex.assert_trees_all_equal(synced.clients.opt_state, state.clients.opt_state)


def test_unknown_schedule_is_rejected(model):
    with pytest.raises(ValueError, match="'v2'"):
        sfl.make_train_step(model=model, schedule="v2", augment="none")


@pytest.mark.parametrize("schedule", sfl.SCHEDULES)
def test_smash_defense_changes_only_what_the_server_sees(model, schedule):
    state, batch, key = make_state(model, 2), make_batch(2), jax.random.key(3)
    plain = sfl.make_train_step(model=model, schedule=schedule, augment="none")
    identity = sfl.make_train_step(model=model, schedule=schedule, augment="none",
                                   smash=lambda k, z: z)
    chex.assert_trees_all_equal(jax.jit(plain)(state, batch, key),
                                jax.jit(identity)(state, batch, key))
    # The server sees zeros: its input carries no information, so the clients get no CE
    # gradient (only weight decay moves them) and the server still trains its head.
    zeros = sfl.make_train_step(model=model, schedule=schedule, augment="none",
                                smash=lambda k, z: 0.0 * z)
    new, _ = jax.jit(zeros)(state, batch, key)
    decayed = jax.tree.map(lambda p: p * (1 - 0.1 * 5e-4), state.clients.params)
    chex.assert_trees_all_close(new.clients.params, decayed, rtol=1e-6, atol=1e-7)
    # Noise: a random defense is keyed per round (same key, same result; another key differs).
    noisy = jax.jit(sfl.make_train_step(model=model, schedule=schedule, augment="none",
                                        smash=lambda k, z: z + jax.random.normal(k, z.shape)))
    a, _ = noisy(state, batch, key)
    b, _ = noisy(state, batch, key)
    c, _ = noisy(state, batch, jax.random.key(4))
    chex.assert_trees_all_equal(a.server.params, b.server.params)
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a.server.params),
                                                     jax.tree.leaves(c.server.params)))


@pytest.mark.parametrize("stacked", [True, False])
def test_apply_penalty_skips_the_backward_when_every_gate_is_closed(stacked):
    """A gated penalty's backward runs only if a gate is open; its gradient is autodiff's."""
    backward_calls = []

    @jax.custom_vjp
    def probe(f):  # identity whose backward reports to the host
        return f

    def probe_bwd(_, g):
        jax.debug.callback(lambda: backward_calls.append(1))
        return (g,)

    probe.defvjp(lambda f: (f, None), probe_bwd)

    def penalty(threshold, features, images):
        value = jax.nn.relu(jnp.sum(jnp.sin(probe(features)) * images) - threshold)
        return value, {"value": value, sfl.PENALTY_GATE: value > 0}

    def plain(threshold, features, images):
        value, metrics = penalty(threshold, features, images)
        return value, {"value": metrics["value"]}

    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    images = jnp.asarray(rng.uniform(size=(2, 3, 4)), jnp.float32)
    sums = jnp.sum(jnp.sin(features) * images, axis=(1, 2))
    opened, closed = sums - 1.0, sums + 1.0  # per-client thresholds
    if stacked:  # both hinges open; client 0 at its threshold (closed), 1 open; both closed
        cases = [(opened, True), (jnp.stack([sums[0], opened[1]]), True), (closed, False)]
        feats, imgs = features, images
    else:  # client 0 alone: open, closed
        cases = [(opened[0], True), (closed[0], False)]
        feats, imgs = features[0], images[0]
    for thresholds, runs in cases:

        def total(f, fn, thresholds=thresholds):
            values, metrics = sfl.apply_penalty(fn, thresholds, f, imgs, stacked=stacked)
            return jnp.sum(values), metrics

        backward_calls.clear()
        (value, metrics), grad = jax.jit(jax.value_and_grad(
            functools.partial(total, fn=penalty), has_aux=True))(feats)
        jax.effects_barrier()
        assert bool(backward_calls) == runs, (thresholds, backward_calls)
        (want_value, want_metrics), want = jax.value_and_grad(
            functools.partial(total, fn=plain), has_aux=True)(feats)
        assert set(metrics) == {"value"}
        np.testing.assert_allclose(value, want_value, rtol=1e-6)
        np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)
        if not runs:
            np.testing.assert_array_equal(grad, np.zeros_like(grad))
        else:
            assert np.abs(np.asarray(grad)).max() > 0


def test_the_loops_step_donates_the_state_not_the_data(model):
    # loop.make_indexed_step donates the state: XLA writes the new state into the old one's
    # buffers (no second copy of every client, optimizer and server state at the peak), while
    # the device-resident dataset it gathers each round's batch from stays alive.
    state = make_state(model, K)
    rng = np.random.default_rng(0)
    data = {"image": jnp.asarray(rng.integers(0, 256, (4 * B, 32, 32, 3), np.uint8)),
            "label": jnp.asarray(rng.integers(0, 10, (4 * B,)), jnp.int32)}
    step = loop.make_indexed_step(sfl.make_train_step(model=model, schedule="parallel",
                                                      augment="none"))
    new, _ = step(state, data, jnp.arange(K * B).reshape(K, B), jax.random.key(0))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(data))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new))
