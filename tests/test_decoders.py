"""Tests for ressfl_jax.models.decoders (spec §3, §11.5-11.6)."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ressfl_jax.models.decoders import (DECODER_FAMILIES, DecoderSpec, build_decoder,
                                        num_upsamplings, parse_decoder)
from tests.helpers import leaves_differ

# rbg keys: threefry's uniform compiles in ~1 s per distinct parameter shape on 2 busy cores,
# rbg's in ~0.1 s; the init schemes do not depend on the PRNG implementation.
KEY = functools.partial(jax.random.key, impl="rbg")
FEATURE_SHAPES = [(8, 8, 8), (16, 16, 1), (32, 32, 2), (4, 4, 16), (8, 8, 128)]
TINY_TYPES = {"conv_norm": "conv_normN1C4", "res_norm": "res_normN1C4", "custom": "custom"}


def _abstract_variables(decoder, feature_shape, batch=2):
    init = functools.partial(decoder.init, train=False)  # train must stay a Python bool
    return jax.eval_shape(init, {"params": jax.random.key(0)}, jnp.zeros((batch, *feature_shape)))


@functools.cache  # tests share models; eager init shares per-shape op compiles across models
def _init(decoder_type, feature_shape, batch=2, **kwargs):
    decoder = build_decoder(decoder_type, feature_shape=feature_shape, **kwargs)
    features = jax.random.normal(KEY(1), (batch, *feature_shape))
    return decoder, features, decoder.init({"params": KEY(0)}, features)


# Hand counts on 8x8x8 (U = 2); conv k x k (a -> b) with bias = 9ab + b, BN(n) = 2n (gamma, beta).
# conv_normN0C16: conv 8->16 1168 + BN 32, 2x [convT 16->16 2320 + BN 32], conv 16->3 435 + BN 6
#   = 6,345 (spec §11.6).
# ResBlock(a->b) = BN(a) 2a + conv a->b + BN(b) 2b + conv b->b [+ 1x1 shortcut ab + BN(b) 2b].
# res_normN0C16: RB(8->16) 16+1168+32+2320+128+32 = 3,696; 2x [convT 2320 + BN 32] = 4,704;
#   RB(16->3) 32+435+6+84+48+6 = 611; total 9,011 (spec §3.4: ~9k).
# res_normN2C32: RB(8->32) 16+2336+64+9248+256+64 = 11,984; 2x RB(32->32) 2x(64+9248)x2 = 37,248;
#   2x [convT 9248 + BN 64] = 18,624; RB(32->3) 64+867+6+84+96+6 = 1,123; total 68,979 (~69k).
# res_normN4C64: RB(8->64) 42,384 + 4x RB(64->64) 296,448 + 2x (36,928 + 128) 74,112
#   + RB(64->3) 2,147 = 415,091 (spec §11.6).
# custom: conv 8->4 292, convT 4->4 148, conv 4->4 148, convT 4->3 111 = 699.
@pytest.mark.parametrize("decoder_type, feature_shape, expected", [
    ("conv_normN0C16", (8, 8, 8), 6_345),
    ("res_normN0C16", (8, 8, 8), 9_011),
    ("res_normN2C32", (8, 8, 8), 68_979),
    ("res_normN4C64", (8, 8, 8), 415_091),
    ("res_normN4C64", (8, 8, 128), 492_131),  # spec §11.5: 492k
    ("res_normN4C64", (16, 16, 1), 447_653),  # spec §11.5: 448k
    ("custom", (8, 8, 8), 699),
])
def test_parameter_counts(decoder_type, feature_shape, expected):
    variables = _abstract_variables(build_decoder(decoder_type, feature_shape=feature_shape),
                                    feature_shape)
    assert sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"])) == expected


@pytest.mark.parametrize("decoder_type", ["conv_normN0C16", "res_normN4C64", "custom"])
@pytest.mark.parametrize("feature_shape", FEATURE_SHAPES)
def test_output_shape_full_width(decoder_type, feature_shape):
    decoder = build_decoder(decoder_type, feature_shape=feature_shape)
    variables = _abstract_variables(decoder, feature_shape, batch=3)
    apply = functools.partial(decoder.apply, train=False)
    recon = jax.eval_shape(apply, variables, jnp.zeros((3, *feature_shape)))
    assert recon.shape == (3, 32, 32, 3) and recon.dtype == jnp.float32


@pytest.mark.parametrize("family, feature_shape", [
    *[(family, (8, 8, 8)) for family in DECODER_FAMILIES],
    ("res_norm", (16, 16, 1)), ("conv_norm", (32, 32, 2)), ("res_norm", (4, 4, 16)),
    ("res_norm", (8, 8, 128)),
])
def test_forward_in_unit_range(family, feature_shape):
    decoder, features, variables = _init(TINY_TYPES[family], feature_shape)
    recon, _ = decoder.apply(variables, 10.0 * features, train=True, mutable=["batch_stats"])
    chex.assert_shape(recon, (2, 32, 32, 3))
    chex.assert_tree_all_finite(recon)
    assert recon.dtype == jnp.float32
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


def test_logits_input():
    decoder = build_decoder("conv_normN0C4", feature_shape=(0, 0, 10))
    assert decoder.upsamplings == 5
    logits = jax.random.normal(KEY(1), (2, 10))  # [B, classes] -> [B, 1, 1, classes]
    variables = decoder.init({"params": KEY(0)}, logits)
    recon = decoder.apply(variables, logits)
    chex.assert_shape(recon, (2, 32, 32, 3))


def test_parse_decoder():
    assert parse_decoder("conv_normN0C16") == DecoderSpec("conv_norm", 0, 16)
    assert parse_decoder("res_normN4C64") == DecoderSpec("res_norm", 4, 64)
    assert parse_decoder("res_normN2C32") == DecoderSpec("res_norm", 2, 32)
    assert parse_decoder("custom").family == "custom"
    with pytest.warns(UserWarning, match="fallback"):
        assert parse_decoder("conv_normNxC16") == DecoderSpec("conv_norm", 0, 64)
    with pytest.warns(UserWarning):
        assert parse_decoder("res_normN2") == DecoderSpec("res_norm", 0, 64)  # no "C"
    for bad in ("simple", "conv_norm", "customX", "", None):
        with pytest.raises(ValueError, match="conv_normN"):
            parse_decoder(bad)
    with pytest.raises(ValueError, match="C=0"):
        parse_decoder("conv_normN0C0")


def test_num_upsamplings():
    assert [num_upsamplings(h) for h in (32, 16, 8, 5, 4, 1, 0)] == [0, 1, 2, 2, 3, 5, 5]
    with pytest.raises(ValueError):
        num_upsamplings(33)


@pytest.mark.parametrize("feature_shape, match", [
    ((5, 5, 8), r"\(5, 5, 8\)"),  # 5 * 4 = 20 != 32
    ((8, 16, 8), r"\(8, 16, 8\)"),  # non-square: 32 x 64
    ((64, 64, 3), r"\(64, 64, 3\)"),
    ((8, 8, 0), r"\(8, 8, 0\)"),
    ((-8, -8, 8), r"\(-8, -8, 8\)"),
    ((0, 8, 8), r"\(0, 8, 8\)"),
    ((8, 8), r"\(8, 8\)"),
])
def test_bad_feature_shapes_raise(feature_shape, match):
    with pytest.raises(ValueError, match=match):
        build_decoder("res_normN0C16", feature_shape=feature_shape)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="init"):
        build_decoder("conv_normN0C16", feature_shape=(8, 8, 8), init="he")
    with pytest.raises(ValueError, match="conv_impl"):
        build_decoder("conv_normN0C16", feature_shape=(8, 8, 8), conv_impl="cudnn")
    with pytest.raises(ValueError, match="unknown decoder type"):
        build_decoder("unet", feature_shape=(8, 8, 8))
    with pytest.raises(ValueError, match="custom"):  # 1 channel cannot be halved for U = 2
        build_decoder("custom", feature_shape=(8, 8, 1))
    decoder, _, variables = _init("conv_normN1C4", (8, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 8, 8, 8\]"):
        decoder.apply(variables, jnp.zeros((2, 4, 4, 8)))


@pytest.mark.parametrize("family", ["conv_norm", "res_norm"])
def test_batch_stats_and_input_gradients(family):
    decoder, features, variables = _init(TINY_TYPES[family], (8, 8, 8))
    _, updates = decoder.apply(variables, features, train=True, mutable=["batch_stats"])
    assert all(leaves_differ(variables["batch_stats"], updates["batch_stats"]))
    _, frozen = decoder.apply(variables, features, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(frozen["batch_stats"], variables["batch_stats"])

    def loss(x):
        recon, _ = decoder.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.mean(recon ** 2)

    grads = jax.jit(jax.grad(loss))(features)
    chex.assert_tree_all_finite(grads)
    assert float(jnp.abs(grads).max()) > 0.0


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_inits(family):
    for init in ("xavier", "torch"):
        _, _, variables = _init(TINY_TYPES[family], (8, 8, 8), init=init)
        leaves = jax.tree.leaves(variables["params"],
                                 is_leaf=lambda t: isinstance(t, dict) and "kernel" in t)
        layers = [leaf for leaf in leaves if isinstance(leaf, dict)]
        assert len(layers) > 3
        for layer in layers:
            kernel = layer["kernel"]  # [kh, kw, a, b]; a = C_out for ConvTranspose
            # PyTorch fan_in: C_in*k*k for conv, C_out*k*k for convT: kernel dims 0-2 for both.
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:3]))
            bias = np.asarray(layer.get("bias", []))  # the 1x1 shortcut conv has no bias
            if init == "xavier":
                assert not np.any(bias)
            else:
                assert np.all(bias != 0.0) and np.all(np.abs(bias) <= bound)
                assert np.abs(kernel).max() <= bound


def test_conv_transpose_matches_pytorch_definition():
    # PyTorch ConvT(k3, s2, p1, output_pad 1), weight w [C_in, C_out, 3, 3]:
    # out[2i - 1 + ky, 2j - 1 + kx, o] += x[i, j, c] * w[c, o, ky, kx], cropped to [0, 2H).
    decoder, _, variables = _init("custom", (16, 16, 2), init="torch")  # conv 2->2, convT 2->3
    params = variables["params"]["ConvTranspose_0"]
    weight = np.asarray(params["kernel"]).transpose(3, 2, 0, 1)  # [3, 3, C_out, C_in] -> torch
    x = np.asarray(jax.random.normal(KEY(2), (1, 4, 5, 2)))
    expected = np.zeros((1, 9, 11, 3))  # one spare row/col on each side, cropped below
    for i, j, ky, kx in np.ndindex(4, 5, 3, 3):
        expected[0, 2 * i + ky, 2 * j + kx] += x[0, i, j] @ weight[:, :, ky, kx]
    expected = expected[:, 1:9, 1:11] + np.asarray(params["bias"])
    got = decoder.layers.conv_t(3).apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_conv_impls_agree():
    decoder, features, variables = _init("res_normN1C4", (4, 4, 16), conv_impl="xla")
    other = build_decoder("res_normN1C4", feature_shape=(4, 4, 16), conv_impl="im2col")
    np.testing.assert_allclose(decoder.apply(variables, features), other.apply(variables, features),
                               rtol=1e-5, atol=1e-5)
