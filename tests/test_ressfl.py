"""The ResSFL minimax: sign, role isolation, vmap == loop, hinge, interval."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ressfl_jax import federated, losses, optim
from ressfl_jax.models import build_split_model, feature_shape
from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.state import create_sfl_state, sync_clients
from ressfl_jax.training import ressfl, sfl

K, B = 2, 4


@pytest.fixture(scope="module")
def setup():
    # XLA's conv compiles ~25% faster than im2col here; test_models checks im2col == xla.
    model = build_split_model("vgg11_bn", cut_layer=4, bottleneck="norelu_C8S1", num_classes=10,
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), width_mult=1 / 16,
                              conv_impl="xla")
    shape = feature_shape(model)
    decoder = build_decoder("conv_normN0C16", feature_shape=shape, conv_impl="xla")
    tx = optim.make_sgd(0.05, momentum=0.9, weight_decay=5e-4)
    # The first K of 3 identical slots (create_sfl_state copies client 0 into every slot): the
    # 3-slot init program of this model is the one test_sfl.py and test_decoder_fit.py compile,
    # so a test run compiles it once for all three (persistent compilation cache). Init keys
    # are "rbg" keys: a threefry init of even this tiny VGG compiles ~4x slower on XLA-CPU (as
    # in test_models.py); the initial weights' values are not what these tests check.
    state = create_sfl_state(jax.random.key(0, impl="rbg"), model, client_tx=tx, server_tx=tx,
                             num_clients=3)
    state = jax.jit(lambda s: s.replace(clients=jax.tree.map(lambda x: x[:K], s.clients)))(state)
    decoders = ressfl.create_decoders(jax.random.key(1, impl="rbg"), decoder, num_clients=K,
                                      feature_shape=shape, tx=optax.adam(1e-3))
    state = state.replace(decoders=decoders)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (K, B, 32, 32, 3), np.uint8)),
             "label": jnp.asarray(rng.integers(0, 10, (K, B)), jnp.int32)}
    # Train the decoders a little so the penalty has something to fight.
    images = batch["image"].astype(jnp.float32) / 255.0
    step = jax.jit(functools.partial(ressfl.decoder_step, model=model, decoder=decoder,
                                     kind="mse", steps=5))
    state, _ = step(state, images)
    return model, decoder, state, batch


def step_fn(model, decoder, **kw):
    settings = dict(schedule="parallel", augment="none", alpha=0.0, threshold=0.0, kind="ssim",
                    interval=1, decoder_steps=1, steps_per_epoch=10)
    settings.update(kw)
    return jax.jit(ressfl.make_ressfl_step(model=model, decoder=decoder, **settings))


def attacker_loss(model, decoder, state, batch, kind):
    """Mean inversion loss (-SSIM or MSE) of each client's frozen decoder on its client."""
    images = batch["image"].astype(jnp.float32) / 255.0

    def one(client_params, client_stats, dec, x):
        features, _ = sfl.client_apply(model, client_params, client_stats, x, train=True)
        recon = decoder.apply({"params": dec.params, "batch_stats": dec.batch_stats}, features,
                              train=False)
        return losses.inversion_loss(recon, x, kind=kind)

    return float(jnp.mean(jax.vmap(one)(state.clients.params, state.clients.batch_stats,
                                        state.decoders, images)))


def test_decoder_step_changes_only_decoders(setup):
    model, decoder, state, batch = setup
    images = batch["image"].astype(jnp.float32) / 255.0
    new, loss = jax.jit(functools.partial(ressfl.decoder_step, model=model, decoder=decoder,
                                          kind="ssim", steps=2))(state, images)
    chex.assert_trees_all_equal(new.clients, state.clients)
    chex.assert_trees_all_equal(new.server, state.server)
    assert loss.shape == (K,)
    assert not np.allclose(np.asarray(jax.tree.leaves(new.decoders.params)[0]),
                           np.asarray(jax.tree.leaves(state.decoders.params)[0]))


@pytest.mark.parametrize("schedule,penalty_bn",
                         [("parallel", "eval"), ("sequential", "eval"), ("parallel", "batch")])
def test_resistant_step_leaves_decoders_bit_identical(setup, schedule, penalty_bn):
    model, decoder, state, batch = setup
    penalty = ressfl.make_penalty(decoder, alpha=0.5, threshold=0.0, kind="ssim",
                                  penalty_bn=penalty_bn)
    images = batch["image"].astype(jnp.float32) / 255.0
    new, metrics = jax.jit(functools.partial(sfl.ROUNDS[schedule], model=model,
                                             penalty=penalty))(
        state, images, batch["label"], jax.random.key(3))
    chex.assert_trees_all_equal(new.decoders, state.decoders)
    assert {"train/inversion_ssim", "train/inversion_mse", "train/penalty"} <= set(metrics)


def vanilla_step(model):
    """The plain SFL round: the attacker-aware round's alpha = 0 arm (a zero-weight penalty adds
    an exactly zero gradient; test_hinge_above_one_equals_vanilla checks the rounds agree when
    the penalty is inactive). One program, shared by the tests below."""
    return jax.jit(sfl.make_train_step(model=model, schedule="parallel", augment="none"))


@pytest.mark.parametrize("kind", ["ssim", "mse"])
def test_minimax_sign_positive_alpha_hurts_the_decoder(setup, kind):
    model, decoder, state, batch = setup
    # interval > steps: the decoders stay frozen except on round 0; compare clients only.
    results = {}
    for alpha in (0.0, 10.0):
        s = state
        step = (vanilla_step(model) if alpha == 0 else
                step_fn(model, decoder, alpha=alpha, kind=kind, interval=10, steps_per_epoch=10))
        s = s.replace(step=jnp.asarray(1, jnp.int32))  # Round 1: no decoder update.
        for i in range(3):
            s, _ = step(s, batch, jax.random.key(i))
        chex.assert_trees_all_equal(s.decoders, state.decoders)
        results[alpha] = attacker_loss(model, decoder, s, batch, kind)
    # Same start, same batches, same keys: only alpha differs, so any gap is the penalty's.
    assert results[10.0] > results[0.0] + 1e-4 * abs(results[0.0]), results


def test_hinge_above_one_equals_vanilla(setup):
    model, decoder, state, batch = setup
    key = jax.random.key(5)
    s = state.replace(step=jnp.asarray(1, jnp.int32))
    defended, _ = step_fn(model, decoder, alpha=5.0, threshold=1.0, interval=2)(s, batch, key)
    vanilla, _ = vanilla_step(model)(s, batch, key)
    chex.assert_trees_all_close(defended.clients, vanilla.clients, atol=1e-6)
    chex.assert_trees_all_close(defended.server, vanilla.server, atol=1e-6)


def test_vmapped_decoders_equal_loop(setup):
    model, decoder, state, batch = setup
    # SGD, not Adam: a conv bias feeding BatchNorm has a zero true gradient, and Adam's
    # normalisation would blow its float noise up to lr-sized steps in both computations.
    sgd = ressfl.create_decoders(jax.random.key(1, impl="rbg"), decoder, num_clients=K,
                                 feature_shape=feature_shape(model), tx=optax.sgd(0.1))
    state = state.replace(decoders=sgd.replace(params=jax.tree.map(
        lambda x: x * (1 + 0.1 * jnp.arange(K, dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))),
        sgd.params)))
    images = batch["image"].astype(jnp.float32) / 255.0
    new, loss = ressfl.decoder_step(state, images, model=model, decoder=decoder, kind="mse")
    for i in range(K):
        one = state.replace(clients=jax.tree.map(lambda x, i=i: x[i:i + 1], state.clients),
                            decoders=jax.tree.map(lambda x, i=i: x[i:i + 1], state.decoders))
        want, want_loss = ressfl.decoder_step(one, images[i:i + 1], model=model,
                                              decoder=decoder, kind="mse")
        chex.assert_trees_all_close(federated.unstack(new.decoders, i),
                                    federated.unstack(want.decoders, 0), atol=1e-5)
        np.testing.assert_allclose(loss[i], want_loss[0], rtol=1e-5)


def test_interval_updates_decoder_only_on_multiples(setup):
    model, decoder, state, batch = setup
    step = step_fn(model, decoder, alpha=0.3, threshold=0.0, interval=3, steps_per_epoch=7)
    for round_index, updates in ((7, True), (8, False), (10, True), (11, False)):
        s = state.replace(step=jnp.asarray(round_index, jnp.int32))
        new, metrics = step(s, batch, jax.random.key(0))
        changed = not np.array_equal(np.asarray(jax.tree.leaves(new.decoders.params)[0]),
                                     np.asarray(jax.tree.leaves(s.decoders.params)[0]))
        assert changed == updates, round_index
        assert float(metrics["attacker/recon_loss#weight"]) == float(updates)


def test_bad_settings(setup):
    model, decoder, _, _ = setup
    with pytest.raises(ValueError, match="'l2'"):
        step_fn(model, decoder, kind="l2")
    with pytest.raises(ValueError, match="interval"):
        step_fn(model, decoder, interval=0)
    with pytest.raises(ValueError, match="alpha"):
        step_fn(model, decoder, alpha=-1.0)


@pytest.mark.parametrize("penalty_bn", ressfl.PENALTY_BN)
def test_penalty_bn_picks_the_decoders_batchnorm_statistics(setup, penalty_bn):
    model, decoder, state, _ = setup
    dec = jax.tree.map(lambda x: x[0], state.decoders)
    client = jax.tree.map(lambda x: x[0], state.clients)
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(B, 32, 32, 3)), jnp.float32)
    features, _ = sfl.client_apply(model, client.params, client.batch_stats, images, train=True)
    penalty = ressfl.make_penalty(decoder, alpha=2.0, threshold=0.0, kind="ssim",
                                  penalty_bn=penalty_bn)
    value, metrics = penalty(dec, features, images)
    variables = {"params": dec.params, "batch_stats": dec.batch_stats}
    if penalty_bn == "eval":
        recon = decoder.apply(variables, features, train=False)
    else:  # This batch's statistics, as in the decoder's own training step.
        recon, _ = decoder.apply(variables, features, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(value, 2.0 * losses.ssim(recon, images), rtol=1e-5)
    np.testing.assert_allclose(metrics["train/inversion_ssim"], losses.ssim(recon, images),
                               rtol=1e-5)


def test_penalty_bn_modes_differ_and_bad_value_is_refused(setup):
    model, decoder, state, batch = setup
    key = jax.random.key(7)
    s = state.replace(step=jnp.asarray(1, jnp.int32))
    # alpha and interval of test_minimax_sign_positive_alpha_hurts_the_decoder[ssim]'s alpha > 0
    # step, so that its "eval" program is compiled once for both tests.
    out = {bn: step_fn(model, decoder, alpha=10.0, interval=10, penalty_bn=bn)(s, batch, key)[1]
           for bn in ressfl.PENALTY_BN}
    assert float(out["eval"]["train/inversion_ssim"]) != float(out["batch"]["train/inversion_ssim"])
    with pytest.raises(ValueError, match="penalty_bn 'train'"):
        step_fn(model, decoder, penalty_bn="train")


def _without_gate(penalty):
    """``penalty`` with its hinge gate dropped: plain autodiff through the decoder."""

    def plain(*args):
        value, metrics = penalty(*args)
        return value, {k: v for k, v in metrics.items() if k != sfl.PENALTY_GATE}

    return plain


@pytest.mark.parametrize("schedule", sfl.SCHEDULES)
def test_hinge_gate_equals_plain_autodiff(setup, schedule):
    """One client's hinge open, the other's closed: the gated round (the backward through the
    decoders runs, under the cond) equals plain autodiff's; a gate closed for both (any()
    mistaken for all()) would give the open client vanilla's update instead. All closed is
    test_hinge_above_one_equals_vanilla: the skipped backward gives vanilla's round."""
    model, decoder, state, batch = setup
    images = batch["image"].astype(jnp.float32) / 255.0
    features = jax.vmap(lambda p, s, x: sfl.client_apply(model, p, s, x, train=True)[0])(
        state.clients.params, state.clients.batch_stats, images)
    probe = ressfl.make_penalty(decoder, alpha=1.0, threshold=0.0, kind="ssim")
    ssims = np.asarray(jax.vmap(probe)(state.decoders, features, images)[0])
    assert ssims.min() > 0 and ssims.max() - ssims.min() > 1e-4, ssims
    threshold = float(ssims.mean())  # between the two clients' SSIMs
    penalty = ressfl.make_penalty(decoder, alpha=10.0, threshold=threshold, kind="ssim")
    out = {}
    for name, p in (("gated", penalty), ("plain", _without_gate(penalty))):
        out[name] = jax.jit(functools.partial(sfl.ROUNDS[schedule], model=model, penalty=p))(
            state, images, batch["label"], jax.random.key(3))
    (gated, gated_metrics), (plain, plain_metrics) = out["gated"], out["plain"]
    assert sfl.PENALTY_GATE not in gated_metrics
    chex.assert_trees_all_close(gated_metrics, plain_metrics, rtol=1e-6)
    # atol: float noise on gradients that are zero in exact arithmetic (conv biases before BN).
    chex.assert_trees_all_close(gated.clients, plain.clients, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(gated.server, plain.server, rtol=1e-6, atol=1e-6)


def test_decoder_sync_averages_decoders_only_when_asked(setup):
    state = setup[2]
    # The setup's decoders trained on different clients' images, so the slots differ.
    assert any(not np.array_equal(x[0], x[1]) for x in jax.tree.leaves(state.decoders.params))
    kept = sync_clients(state)
    chex.assert_trees_all_equal(kept.decoders, state.decoders)
    synced = sync_clients(state, sync_decoders=True)
    for name in ("params", "batch_stats"):
        mean = jax.tree.map(lambda x: jnp.mean(x, 0), getattr(state.decoders, name))
        for k in range(K):
            chex.assert_trees_all_close(federated.unstack(getattr(synced.decoders, name), k),
                                        mean, atol=1e-7)
    # Adam's moments belong to the slots, as the clients' momentum does (reference semantics).
    chex.assert_trees_all_equal(synced.decoders.opt_state, state.decoders.opt_state)
    chex.assert_trees_all_equal(synced.clients.params, kept.clients.params)
