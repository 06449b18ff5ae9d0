"""Decoder fitting (phase 0 and the attack's protocol), JPEG targets, phase 0 on an SFL state."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ressfl_jax import losses, optim
from ressfl_jax.data.jpeg import jpeg_round_trip
from ressfl_jax.models import build_split_model, feature_shape
from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.state import create_sfl_state
from ressfl_jax.training import decoder_fit, ressfl

FEATURES = (8, 8, 4)


def toy_pairs(n=40, seed=0):
    """Images whose 4x4-average-pooled versions (plus a zero channel) are the 'features'."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, 32, 32, 3)).astype(np.float32)
    images = np.repeat(np.repeat(images[:, ::4, ::4], 4, axis=1), 4, axis=2)  # blocky
    features = np.concatenate([images[:, ::4, ::4], np.zeros((n, 8, 8, 1), np.float32)], -1)
    return jnp.asarray(features), jnp.asarray(images)


# XLA's conv compiles ~25% faster than im2col here; test_models checks im2col == xla.
DECODER = build_decoder("conv_normN0C8", feature_shape=FEATURES, conv_impl="xla")


def test_split_indices_is_the_references_split():
    # The reference (utils.apply_transform over ImageTensorFolder): files "{i}.jpg" in sorted
    # glob order, positions shuffled by the legacy global RNG seeded 123 (RandomState(123) is
    # that generator, without touching the global one), the first floor(0.9 n) train.
    for n in (10, 12, 1000):
        names = sorted(f"{i}.jpg" for i in range(n))
        positions = list(range(n))
        np.random.RandomState(123).shuffle(positions)
        ids = [int(names[p][:-4]) for p in positions]
        split = int(np.floor(0.9 * n))
        train, val = decoder_fit.split_indices(n, 0.1, 123)
        assert train.tolist() == ids[:split] and val.tolist() == ids[split:]
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))
    train, val = decoder_fit.split_indices(12, 0.1, 123)  # Literal: string order matters here.
    assert val.tolist() == [9, 10] and train.tolist()[:4] == [3, 0, 2, 7]


def fit_settings(selection):
    """The settings of every fit of ``toy_pairs()`` below: one compiled program per selection
    (``decoder_fit._fit_program`` caches it by decoder, settings and sizes)."""
    return decoder_fit.FitSettings(epochs=6, batch_size=8, lr=3e-3, val_fraction=0.1,
                                   selection=selection)


@pytest.mark.parametrize("selection", decoder_fit.SELECTIONS)
def test_fit_learns_and_selects(selection):
    features, images = toy_pairs()
    # 36 train pairs at batch 8 = 4 full batches + a partial one of 4; 4 val pairs = 1 partial.
    settings = fit_settings(selection)
    variables, info = decoder_fit.fit_decoder(jax.random.key(0), DECODER, features, images,
                                              settings)
    assert info["num_train"] == 36 and info["num_val"] == 4
    assert info["train_loss"][-1] < info["train_loss"][0]
    assert np.isfinite(info["best_val_loss"])
    if selection == "val_mean":
        # Clean selection: the best mean validation loss over epochs.
        np.testing.assert_allclose(info["best_val_loss"], min(info["val_loss"]), rtol=1e-6)
    else:
        # One validation batch's loss can only be at or below the epoch's mean.
        assert info["best_val_loss"] <= min(info["val_loss"]) + 1e-7
    init = DECODER.init(jax.random.key(1), features[:1], train=False)
    chex.assert_trees_all_equal_shapes(variables, {"params": init["params"],
                                                   "batch_stats": init["batch_stats"]})


def test_val_mean_selection_returns_the_weights_it_scored():
    features, images = toy_pairs()
    settings = fit_settings("val_mean")
    variables, info = decoder_fit.fit_decoder(jax.random.key(0), DECODER, features, images,
                                              settings)
    _, val = decoder_fit.split_indices(len(images), 0.1, 123)
    recon = DECODER.apply(variables, features[val], train=False)
    np.testing.assert_allclose(float(losses.mse(recon, images[val])), info["best_val_loss"],
                               rtol=1e-5)


def test_fit_is_deterministic_given_the_key():
    features, images = toy_pairs()
    settings = fit_settings(decoder_fit.FitSettings().selection)
    a, _ = decoder_fit.fit_decoder(jax.random.key(3), DECODER, features, images, settings)
    b, _ = decoder_fit.fit_decoder(jax.random.key(3), DECODER, features, images, settings)
    chex.assert_trees_all_equal(a, b)


def test_stacked_fits_equal_separate_fits():
    # Seeds and colluders train as one vmapped program over S keys: each fit must be the fit
    # its key makes alone. Compared by what the fit does, not weight by weight: the conv
    # biases in front of BatchNorm get a zero gradient up to rounding, which Adam scales to
    # full-size steps, so they (and the running means that absorb them) differ between any
    # two compilations while leaving every output unchanged (the reference's too).
    features, images = toy_pairs()
    settings = fit_settings(decoder_fit.FitSettings().selection)
    keys = jax.random.split(jax.random.key(5), 2)
    both, info = decoder_fit.fit_decoders(keys, DECODER, features, images, settings)
    assert info["best_val_loss"][0] != info["best_val_loss"][1]  # different inits
    for i in range(2):
        alone, alone_info = decoder_fit.fit_decoder(keys[i], DECODER, features, images,
                                                    settings)
        np.testing.assert_allclose(info["val_loss"][i], alone_info["val_loss"], rtol=1e-5)
        np.testing.assert_allclose(info["train_loss"][i], alone_info["train_loss"], rtol=1e-5)
        # Eval mode: the running means track those biases only on average (0.2% here).
        mine = jax.tree.map(lambda x: x[i], both)
        recon = DECODER.apply(mine, features, train=False)
        np.testing.assert_allclose(recon, DECODER.apply(alone, features, train=False),
                                   atol=5e-3)
        other = DECODER.apply(jax.tree.map(lambda x: x[1 - i], both), features, train=False)
        assert np.max(np.abs(recon - other)) > 0.05  # what a mixed-up key would look like


@pytest.mark.parametrize("kwargs, n, match", [
    ({"selection": "best_test"}, 40, "best_test"),
    ({"loss": "l1"}, 40, "l1"),
    ({"val_fraction": 1.5}, 40, "val_fraction"),
    ({"epochs": 0}, 40, "epochs"),
    ({}, 1, "1 pairs"),  # floor(0.9) = 0 training pairs.
])
def test_bad_fit_settings_raise(kwargs, n, match):
    features, images = toy_pairs(n)
    with pytest.raises(ValueError, match=match):
        decoder_fit.fit_decoder(jax.random.key(0), DECODER, features, images,
                                decoder_fit.FitSettings(**kwargs))


def test_mismatched_lengths_raise():
    features, images = toy_pairs()
    with pytest.raises(ValueError, match="40 vs 39"):
        decoder_fit.fit_decoder(jax.random.key(0), DECODER, features, images[:39])


def test_reconstruction_metrics_match_direct_computation():
    features, images = toy_pairs(12)
    variables = DECODER.init(jax.random.key(0), features[:1], train=False)
    got = decoder_fit.reconstruction_metrics(DECODER, variables, features, images, batch_size=5)
    recon = np.asarray(DECODER.apply(variables, features, train=False), np.float64)
    x = np.asarray(images, np.float64)
    mse = ((recon - x) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(got["mse"], mse.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["psnr"], (10 * np.log10(1 / mse)).mean(), rtol=1e-5)
    np.testing.assert_allclose(got["ssim"],
                               float(jnp.mean(losses.ssim_per_image(recon, images))), rtol=1e-5)


def test_jpeg_round_trip():
    rng = np.random.default_rng(0)
    flat = np.full((2, 32, 32, 3), 128, np.uint8)
    np.testing.assert_array_equal(jpeg_round_trip(flat), flat)  # a flat image survives JPEG
    noise = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = jpeg_round_trip(noise)
    assert out.dtype == np.uint8 and out.shape == noise.shape
    mse = np.mean((out / 255.0 - noise / 255.0) ** 2)
    assert 0.001 < mse < 0.1  # lossy on noise, but an image
    np.testing.assert_array_equal(jpeg_round_trip(noise), out)  # deterministic
    with pytest.raises(ValueError, match="uint8"):
        jpeg_round_trip(noise.astype(np.float32))


def test_pretrain_decoders_touches_only_decoder_weights():
    # The model, optimizer and slot count of test_sfl.py and test_ressfl.py: a test run
    # compiles this init program once for the three files (persistent compilation cache).
    # Init keys are "rbg" keys: a threefry init compiles ~4x slower on XLA-CPU.
    model = build_split_model("vgg11_bn", cut_layer=4, bottleneck="norelu_C8S1", num_classes=10,
                              mean=(0.5,) * 3, std=(0.5,) * 3, width_mult=1 / 16,
                              conv_impl="xla")
    tx = optim.make_sgd(0.1, momentum=0.9, weight_decay=5e-4)
    state = create_sfl_state(jax.random.key(0, impl="rbg"), model, client_tx=tx, server_tx=tx,
                             num_clients=3)
    feats = feature_shape(model, (32, 32, 3))
    decoder = build_decoder("conv_normN0C8", feature_shape=feats, conv_impl="xla")
    state = state.replace(decoders=ressfl.create_decoders(
        jax.random.key(1, impl="rbg"), decoder, num_clients=3, feature_shape=feats,
        tx=optax.adam(1e-3)))
    images = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    before = jax.device_get(state)
    settings = decoder_fit.FitSettings(epochs=2, batch_size=8)
    new, metrics = ressfl.pretrain_decoders(state, jax.random.key(2), model=model,
                                            decoder=decoder, images=images, targets=images,
                                            settings=settings)
    chex.assert_trees_all_equal(new.clients, before.clients)
    chex.assert_trees_all_equal(new.server, before.server)
    chex.assert_trees_all_equal(new.decoders.opt_state, before.decoders.opt_state)
    for k in (1, 2):  # every slot got the same fitted decoder
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[k], new.decoders.params),
                                    jax.tree.map(lambda x: x[0], new.decoders.params))
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           new.decoders.params, before.decoders.params)
    assert any(jax.tree.leaves(changed))
    assert set(metrics) >= {"val_mse", "val_ssim", "val_psnr", "best_val_loss"}
    assert 0 < metrics["val_mse"] < 1
