"""layers.Conv / layers.ConvTranspose: the im2col, tapwise and depthwise paths equal XLA's conv.

Tiny float32 shapes; every path is checked forward and by its gradient wrt input AND params,
unbatched, under ``jax.vmap`` over stacked params (K client models) and inside ``lax.scan``.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ressfl_jax.models import layers
from ressfl_jax.models.layers import Conv, ConvTranspose

TOL = dict(rtol=1e-5, atol=1e-5)
KEY = functools.partial(jax.random.key, impl="rbg")


def _loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply(params, x)))


def _value_and_grads(module, params, x):
    """(output, d loss / d params, d loss / d x) for a nonlinear scalar loss."""
    grads = jax.grad(functools.partial(_loss, module), argnums=(0, 1))(params, x)
    return module.apply(params, x), *grads


@functools.partial(jax.jit, static_argnums=0)
def _jit_value_and_grads(module, params, x):
    return _value_and_grads(module, params, x)


@functools.partial(jax.jit, static_argnums=0)
def _init(module, key, x):
    return module.init(key, x)


def _assert_same(fast, reference, x):
    """``fast`` has ``reference``'s param tree and output and gradients (wrt params and x)."""
    ref_params = reference.init(KEY(1), x)
    chex.assert_trees_all_equal_shapes_and_dtypes(fast.init(KEY(1), x), ref_params)
    chex.assert_trees_all_close(fast.init(KEY(1), x), ref_params)  # same init
    chex.assert_trees_all_close(_jit_value_and_grads(fast, ref_params, x),
                                _jit_value_and_grads(reference, ref_params, x), **TOL)
    return ref_params


def _conv_ops(module, x) -> int:
    params = jax.eval_shape(lambda x: module.init(KEY(0), x), x)
    return str(jax.make_jaxpr(module.apply)(params, x)).count("conv_general_dilated")


CONV_CASES = [  # (kernel, strides, padding, side)
    (3, 1, 1, 6), (3, 2, 1, 8), (3, 2, 1, 7), (1, 1, 0, 5), (1, 2, 0, 6),
    (3, 1, "SAME", 5), (3, 2, "SAME", 8), (3, 2, "SAME", 7), (3, 1, "VALID", 6),
    (3, 2, "VALID", 7), (1, 2, "SAME", 5), (5, 1, 2, 6), (2, 2, "SAME", 7),
    ((3, 1), (2, 1), ((2, 0), (0, 1)), 6), (3, 1, ((0, 1), (2, -1)), 6),
]


@pytest.mark.parametrize("kernel,strides,padding,side", CONV_CASES)
def test_im2col_conv_matches_xla(kernel, strides, padding, side):
    x = jax.random.normal(KEY(0), (2, side, side + 1, 3))
    make = functools.partial(Conv, 4, kernel, strides=strides, padding=padding)
    _assert_same(make(impl="im2col"), make(impl="xla"), x)
    assert _conv_ops(make(impl="im2col"), x) == 0


@pytest.mark.parametrize("kernel,strides,padding,side", [
    c for c in CONV_CASES if c[1] == 1] + [(5, 1, 2, 2), (5, 1, 3, 1), (3, 1, ((4, 0), (0, 0)), 2)])
def test_tapwise_conv_matches_xla(kernel, strides, padding, side):
    # Incl. maps smaller than the kernel, negative pads (crops), and a tap row that lies
    # entirely in the padding for every output ((4, 0) with a 2-row input).
    x = jax.random.normal(KEY(0), (2, side, side + 1, 3))
    make = functools.partial(Conv, 4, kernel, strides=strides, padding=padding)
    _assert_same(make(impl="tapwise"), make(impl="xla"), x)
    assert _conv_ops(make(impl="tapwise"), x) == 0


def test_tapwise_skips_the_products_with_padding():
    # A 3x3 conv on a 2x2 map, pad 1: each output sees 4 of its 9 taps inside the input.
    x = jnp.ones((1, 2, 2, 8))
    flops = {impl: jax.jit(Conv(8, 3, padding=1, impl=impl).apply).lower(
        Conv(8, 3, padding=1).init(KEY(0), x), x).cost_analysis()["flops"]
        for impl in ("im2col", "tapwise")}
    dot_flops = {"im2col": 2 * 4 * 9 * 8 * 8, "tapwise": 2 * 16 * 8 * 8}
    for impl, dots in dot_flops.items():  # + bias adds and the taps' sums: a few hundred
        assert dots <= flops[impl] < dots + 600, (impl, flops[impl])


@pytest.mark.parametrize("c_in,c_out,strides,side,path", [
    (256, 256, 1, 8, "tapwise"), (256, 512, 1, 4, "tapwise"), (512, 512, 1, 2, "tapwise"),
    (128, 256, 1, 8, "im2col"), (256, 256, 1, 16, "im2col"), (512, 8, 1, 2, "im2col"),
    (256, 256, 2, 8, "im2col")])
def test_auto_picks_tapwise_for_wide_convs_on_small_maps_on_cpu(c_in, c_out, strides, side, path):
    conv = Conv(c_out, 3, strides=strides, padding=1)
    expected = path if jax.default_backend() == "cpu" else "xla"
    assert conv._path(c_in, (strides, strides), (side, side)) == expected
    assert conv.clone(impl="tapwise")._path(c_in, (strides, strides), (side, side)) == (
        "tapwise" if strides == 1 else "im2col")


@pytest.mark.parametrize("kernel,strides,padding,side", CONV_CASES)
def test_im2col_conv_with_fewer_outputs_than_inputs_matches_xla(kernel, strides, padding, side):
    # C_out < C_in takes the output-side path (kernel first, then the product padded, or
    # cropped by negative pads, and its shifted windows summed).
    x = jax.random.normal(KEY(0), (2, side, side + 1, 5))
    make = functools.partial(Conv, 2, kernel, strides=strides, padding=padding)
    _assert_same(make(impl="im2col"), make(impl="xla"), x)
    assert _conv_ops(make(impl="im2col"), x) == 0


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("kernel,strides,padding,side", [
    (3, 1, 1, 6), (3, 2, 1, 8), (3, 2, 1, 7), (3, 2, "SAME", 6), (3, 1, "VALID", 5),
    (1, 2, 0, 5), (5, 2, 2, 7)])
def test_depthwise_conv_matches_xla(kernel, strides, padding, side, multiplier):
    x = jax.random.normal(KEY(0), (2, side, side, 3))
    make = functools.partial(Conv, 3 * multiplier, kernel, strides=strides, padding=padding,
                             feature_group_count=3, use_bias=False)
    params = _assert_same(make(impl="im2col"), make(impl="xla"), x)
    assert params["params"]["kernel"].shape == (kernel, kernel, 1, 3 * multiplier)
    assert _conv_ops(make(impl="im2col"), x) == 0


def test_other_grouped_convs_fall_back_to_xla():
    x = jax.random.normal(KEY(0), (2, 5, 5, 4))
    make = functools.partial(Conv, 6, 3, padding=1, feature_group_count=2)
    _assert_same(make(impl="im2col"), make(impl="xla"), x)
    assert _conv_ops(make(impl="im2col"), x) == 1


@pytest.mark.parametrize("kernel,strides,padding,side", [
    (3, 2, ((1, 2), (1, 2)), 4), (3, 2, ((1, 2), (1, 2)), 5), (3, 1, 1, 5), (3, 2, "SAME", 4),
    (3, 2, "VALID", 3), (1, 2, "SAME", 4), (4, 2, 1, 3), (2, 3, "VALID", 3), (3, 2, 0, 3),
    (3, 2, ((0, -1), (2, 1)), 4)])
@pytest.mark.parametrize("transpose_kernel", [True, False])
def test_conv_transpose_matches_flax(kernel, strides, padding, side, transpose_kernel):
    x = jax.random.normal(KEY(0), (2, side, side + 1, 3))
    kwargs = dict(kernel_size=(kernel, kernel), strides=(strides, strides), padding=padding,
                  transpose_kernel=transpose_kernel)
    flax_conv_t = nn.ConvTranspose(4, **kwargs)
    for impl in ("im2col", "xla"):
        _assert_same(ConvTranspose(4, **kwargs, impl=impl), flax_conv_t, x)
    assert _conv_ops(ConvTranspose(4, **kwargs, impl="im2col"), x) == 0
    # "auto" is the im2col program on the CPU backend, xla's elsewhere (same jaxpr: no compile).
    params = _init(flax_conv_t, KEY(1), x)
    same = "im2col" if jax.default_backend() == "cpu" else "xla"
    assert (str(jax.make_jaxpr(ConvTranspose(4, **kwargs, impl="auto").apply)(params, x))
            == str(jax.make_jaxpr(ConvTranspose(4, **kwargs, impl=same).apply)(params, x)))
    assert _conv_ops(ConvTranspose(4, **kwargs, impl="xla"), x) == 1


def test_conv_transpose_as_used_by_decoders_keeps_names_and_init():
    # Decoders and the bottleneck's Expand name it ConvTranspose_<i>, with flax's param names.
    class Net(nn.Module):
        impl: str | None

        @nn.compact
        def __call__(self, x):
            kwargs = dict(strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True)
            if self.impl is None:
                return nn.ConvTranspose(5, (3, 3), **kwargs)(x)
            return ConvTranspose(5, (3, 3), **kwargs, impl=self.impl)(x)

    x = jax.random.normal(KEY(0), (2, 4, 4, 3))
    reference = Net(None).init(KEY(1), x)
    assert jax.tree.map(jnp.shape, reference) == {
        "params": {"ConvTranspose_0": {"kernel": (3, 3, 5, 3), "bias": (5,)}}}
    for impl in ("im2col", "xla"):
        _assert_same(Net(impl), Net(None), x)


def _batched_cases():
    """(name, module, x [2, ...]) for the vmap and scan checks."""
    x = jax.random.normal(KEY(0), (2, 8, 8, 4))
    return [
        ("conv3x3", Conv(6, 3, padding=1, impl="im2col"), x),
        ("conv3x3 s2", Conv(6, 3, strides=2, padding=1, impl="im2col"), x),
        ("depthwise s2", Conv(4, 3, strides=2, padding=1, feature_group_count=4,
                              impl="im2col"), x),
        ("conv_t", ConvTranspose(5, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                                 transpose_kernel=True, impl="im2col"), x),
    ]


@pytest.mark.parametrize("case", range(4))
def test_vmap_over_stacked_params_and_scan_match_unbatched(case):
    _, module, x = _batched_cases()[case]
    params = jax.vmap(lambda k: module.init(k, x))(jax.random.split(KEY(1), 2))
    xs = jnp.stack([x, x[:, ::-1]])  # K = 2 clients, each [2, 8, 8, 4]
    step = functools.partial(_value_and_grads, module)
    expected = [step(jax.tree.map(lambda p: p[k], params), xs[k]) for k in range(2)]
    expected = jax.tree.map(lambda *leaves: jnp.stack(leaves), *expected)
    chex.assert_trees_all_close(jax.jit(jax.vmap(step))(params, xs), expected, **TOL)
    _, scanned = jax.jit(lambda p, xs: jax.lax.scan(lambda c, a: (c, step(*a)), 0.0, (p, xs))
                         )(params, xs)
    chex.assert_trees_all_close(scanned, expected, **TOL)


@pytest.mark.parametrize("side", [2, 8, 32])
def test_auto_uses_no_conv_op_on_cpu(side):
    x = jax.ShapeDtypeStruct((2, side, side, 4), jnp.float32)
    on_cpu = jax.default_backend() == "cpu"
    for module, xla_ops in [
            (Conv(4, 3, padding=1), 1), (Conv(8, 3, strides=2, padding=1), 1),
            (Conv(8, 1, strides=2, padding=0), 1),
            (Conv(4, 3, padding=1, feature_group_count=4), 1),
            (ConvTranspose(4, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                           transpose_kernel=True), 1)]:
        assert _conv_ops(module, x) == (0 if on_cpu else xla_ops)
        assert _conv_ops(module.clone(impl="xla"), x) == xla_ops


def test_bfloat16_compute():
    x = jax.random.normal(KEY(0), (2, 6, 6, 4))
    for module in (Conv(4, 3, strides=2, padding=1, dtype=jnp.bfloat16, impl="im2col"),
                   Conv(4, 3, padding=1, feature_group_count=4, dtype=jnp.bfloat16,
                        impl="im2col"),
                   ConvTranspose(4, 3, strides=2, padding=((1, 2), (1, 2)),
                                 transpose_kernel=True, dtype=jnp.bfloat16, impl="im2col")):
        params = module.init(KEY(1), x)
        assert jax.tree.leaves(params)[0].dtype == jnp.float32
        y = module.apply(params, x)
        assert y.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(y, np.float32),
                                   module.clone(impl="xla").apply(params, x).astype(jnp.float32),
                                   rtol=0.05, atol=0.05)


@pytest.mark.parametrize("module,shape,match", [
    (Conv(4, 3, impl="cudnn"), (1, 4, 4, 2), "impl"),
    (Conv(4, 3, feature_group_count=3), (1, 4, 4, 2), "divisible"),
    (Conv(4, 3, strides=0), (1, 4, 4, 2), "strides"),
    (Conv(4, (3, 3, 3)), (1, 4, 4, 2), "kernel_size"),
    (Conv(4, 3, padding="CIRCULAR"), (1, 4, 4, 2), "padding"),
    (Conv(4, 3, padding=((1, 1),)), (1, 4, 4, 2), "padding"),
    (Conv(4, 5, padding=0, impl="im2col"), (1, 4, 4, 2), "smaller than"),
    (Conv(4, 5, padding=0, impl="tapwise"), (1, 4, 4, 2), "padded input 4x4 is smaller than"),
    (Conv(4, 3), (4, 4, 2), "NHWC"),
    (ConvTranspose(4, 3, padding="CIRCULAR"), (1, 4, 4, 2), "padding"),
    (ConvTranspose(4, 3, impl="fast"), (1, 4, 4, 2), "impl"),
    (ConvTranspose(4, 3), (4, 4, 2), "NHWC"),
])
def test_clear_errors(module, shape, match):
    with pytest.raises(ValueError, match=match):
        module.init(KEY(0), jnp.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 5, 7, 2)])
def test_max_pool_2x2_matches_flax_values_and_gradient(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    want = nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(layers.max_pool_2x2(x), want)
    # Without ties (continuous random data) the gradients are identical too.
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(layers.max_pool_2x2(x))))(x)
    want_grad = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), strides=(2, 2)))))(x)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("ksize,strides,padded", [
    ((3, 3), (1, 1), (7, 8)), ((3, 3), (2, 2), (8, 9)), ((2, 3), (2, 1), (7, 6))])
def test_tap_window_sum_gradient_is_autodiffs(ksize, strides, padded):
    # The output-side conv's written-out VJP equals autodiff of the plain sum of tap windows.
    z = jax.random.normal(KEY(3), (2,) + padded + (ksize[0] * ksize[1], 3))

    def plain(z):
        windows = layers._shifted_slices(z, ksize, strides)
        return sum(w[..., t, :] for t, w in enumerate(windows))

    y = layers._sum_tap_windows(z, ksize, strides)
    np.testing.assert_allclose(y, plain(z), rtol=1e-6, atol=1e-6)
    dy = jax.random.normal(KEY(4), y.shape)
    got = jax.vjp(lambda z: layers._sum_tap_windows(z, ksize, strides), z)[1](dy)
    want = jax.vjp(plain, z)[1](dy)
    np.testing.assert_array_equal(got[0], want[0])
