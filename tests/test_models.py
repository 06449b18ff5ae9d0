"""Split models: shapes, literal parameter counts, bottleneck grammar, im2col, init, BN, errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ressfl_jax import losses
from ressfl_jax.models import (ARCHS, BottleneckSpec, build_split_model, feature_shape,
                               parse_bottleneck)
from ressfl_jax.models.bottleneck import Compress, Expand
from ressfl_jax.models.layers import (BatchNorm, Conv, avg_pool, he_normal_fan_out,
                                      torch_default)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
W = 1 / 16
BOTTLENECKS = (None, "norelu_C8S1", "C4S2", "noRELU_C1S2")


def build(arch, cut, bottleneck=None, width_mult=W, **kwargs):
    return build_split_model(arch, cut_layer=cut, bottleneck=bottleneck, num_classes=10,
                             mean=MEAN, std=STD, width_mult=width_mult, **kwargs)


def abstract_init(model, batch=2):
    """(client variables, features, server variables, logits) as ShapeDtypeStructs."""
    def init(images):
        features, client_vars = model.client.init_with_output(
            {"params": jax.random.key(0)}, images, train=False)
        logits, server_vars = model.server.init_with_output(
            {"params": jax.random.key(1)}, features, train=False)
        return client_vars, features, server_vars, logits

    return jax.eval_shape(init, jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32))


def rng(seed):
    # rbg keys: a threefry init of a tiny VGG server compiles ~6x slower (6 s vs 1 s) on 2 cores.
    return jax.random.key(seed, impl="rbg")


def init_vars(model, x):
    """Real (jitted) init: (client variables, server variables, eval-mode features)."""
    def init(x):
        client_vars = model.client.init({"params": rng(0)}, x, train=False)
        features = model.client.apply(client_vars, x, train=False)
        server_vars = model.server.init({"params": rng(1)}, features, train=False)
        return client_vars, server_vars, features

    return jax.jit(init)(x)


def num_params(variables) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def images(batch=2, seed=0):
    return jax.random.uniform(jax.random.key(seed), (batch, 32, 32, 3))


# Smashed-data shapes at width 1/16 without a bottleneck (64 -> 4, 128 -> 8, 256 -> 16, ...).
PLAIN_SHAPES = [
    ("vgg11_bn", 1, (32, 32, 4)), ("vgg11_bn", 2, (16, 16, 4)), ("vgg11_bn", 4, (8, 8, 8)),
    ("vgg11_bn", 5, (8, 8, 16)), ("vgg11_bn", 13, (1, 1, 32)), ("vgg11", 4, (8, 8, 8)),
    ("vgg13_bn", 6, (8, 8, 8)), ("vgg13", 15, (1, 1, 32)),
    ("resnet20", 1, (32, 32, 1)), ("resnet20", 3, (32, 32, 1)), ("resnet20", 5, (16, 16, 2)),
    ("resnet20", 10, (8, 8, 4)), ("resnet32", 7, (16, 16, 2)),
    ("mobilenetv2", 1, (32, 32, 2)), ("mobilenetv2", 2, (32, 32, 1)),
    ("mobilenetv2", 4, (16, 16, 2)), ("mobilenetv2", 9, (4, 4, 80)),
]


@pytest.mark.parametrize("arch,cut,expected", PLAIN_SHAPES)
def test_feature_and_logit_shapes_without_bottleneck(arch, cut, expected):
    _, features, _, logits = abstract_init(build(arch, cut))
    assert features.shape == (2, *expected)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


@pytest.mark.parametrize("bottleneck", BOTTLENECKS[1:])
@pytest.mark.parametrize("arch,cut,size", [("vgg11_bn", 4, 8), ("vgg11", 2, 16),
                                           ("resnet20", 3, 32), ("resnet32", 7, 16),
                                           ("mobilenetv2", 4, 16)])
def test_feature_and_logit_shapes_with_bottleneck(arch, cut, size, bottleneck):
    spec = parse_bottleneck(bottleneck)
    _, features, _, logits = abstract_init(build(arch, cut, bottleneck))
    side = size // spec.stride
    assert features.shape == (2, side, side, spec.channels)  # C is NOT scaled by width_mult
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("arch,cut,bottleneck,expected", [
    ("vgg11_bn", 2, "norelu_C1S1", (16, 16, 1)), ("vgg11_bn", 4, "norelu_C8S1", (8, 8, 8)),
    ("vgg11_bn", 4, "None", (8, 8, 128)), ("vgg11_bn", 5, "norelu_C12S1", (8, 8, 12)),
    ("resnet20", 2, "norelu_C1S2", (16, 16, 1)), ("resnet20", 4, "norelu_C2S1", (32, 32, 2)),
    ("mobilenetv2", 3, "norelu_C2S1", (32, 32, 2)), ("mobilenetv2", 4, "norelu_C4S1", (16, 16, 4)),
])
def test_paper_cuts_full_width(arch, cut, bottleneck, expected):
    """The spec §0 table: paper cut -> reference cut_layer -> smashed-data shape."""
    assert feature_shape(build(arch, cut, bottleneck, width_mult=1.0)) == expected


@pytest.mark.parametrize("arch,cut,bottleneck,client,total", [
    # 3*9*64+64 + 2*64 (BN) + 64*9*128+128 + 2*128 = 76,032 (spec §2.2 / §11.5).
    ("vgg11_bn", 4, None, 76_032, 9_756_426),
    ("vgg11_bn", 4, "norelu_C8S1", 85_256, 9_774_994),   # + 128*9*8+8 (server: + 8*9*128+128)
    ("vgg11_bn", 2, "norelu_C1S1", 2_497, 9_757_643),
    ("vgg11_bn", 5, "norelu_C12S1", 399_372, 9_811_990),
    ("vgg11", 4, None, 75_648, 9_750_922),
    ("resnet20", 1, None, 464, 269_722),                 # the well-known CIFAR ResNet-20 count
    ("resnet20", 2, "norelu_C1S2", 5_281, 270_027),      # server ConvT(1->16): 9*16+16
    ("resnet32", 1, None, 464, 464_154),
    ("mobilenetv2", 1, None, 928, 2_296_922),            # kuangliu MobileNetV2, 10 classes
])
def test_parameter_counts_full_width(arch, cut, bottleneck, client, total):
    client_vars, _, server_vars, _ = abstract_init(build(arch, cut, bottleneck, width_mult=1.0),
                                                   batch=1)
    assert num_params(client_vars) == client
    assert num_params(client_vars) + num_params(server_vars) == total


def test_param_tree_uses_reference_layer_indices():
    client_vars, _, server_vars, _ = abstract_init(build("vgg11_bn", 4, "norelu_C8S1"))
    assert set(client_vars["params"]) == {"body", "compress"}
    assert set(client_vars["params"]["body"]) == {"layer0", "layer2"}  # 1 and 3 are max-pools
    assert set(server_vars["params"]) == {"expand", "body", "head"}
    assert set(server_vars["params"]["body"]) == {"layer4", "layer5", "layer7", "layer8",
                                                  "layer10", "layer11"}
    assert set(client_vars["batch_stats"]["body"]["layer0"]["bn"]) == {"mean", "var"}


@pytest.mark.parametrize("text,expected", [
    ("norelu_C1S1", BottleneckSpec(3, 1, 1, False)),
    ("norelu_C1S2", BottleneckSpec(3, 1, 2, False)),
    ("norelu_C2S1", BottleneckSpec(3, 2, 1, False)),
    ("norelu_C4S1", BottleneckSpec(3, 4, 1, False)),
    ("norelu_C8S1", BottleneckSpec(3, 8, 1, False)),
    ("norelu_C12S1", BottleneckSpec(3, 12, 1, False)),
    ("norelu_C16S1", BottleneckSpec(3, 16, 1, False)),
    ("noRELU_C8S1", BottleneckSpec(3, 8, 1, False)),
    ("noRELU_C12S1", BottleneckSpec(3, 12, 1, False)),
    ("noReLU_C8S1", BottleneckSpec(3, 8, 1, False)),
    ("C8S1", BottleneckSpec(3, 8, 1, True)), ("C4S2", BottleneckSpec(3, 4, 2, True)),
    ("C4S4", BottleneckSpec(3, 4, 4, True)), ("C8", BottleneckSpec(3, 8, 1, True)),
    ("K5C8S1", BottleneckSpec(5, 8, 1, True)), ("norelu_K1C4S1", BottleneckSpec(1, 4, 1, False)),
    # Parse failures fall back to k3 c8 s1 WITH ReLU, even after a norelu prefix.
    ("S2", BottleneckSpec(3, 8, 1, True)), ("norelu_CxS1", BottleneckSpec(3, 8, 1, True)),
    ("C8S", BottleneckSpec(3, 8, 1, True)),
    # Off: neither "C" nor "S" in the string.
    (None, None), ("", None), ("None", None), ("none", None), ("norelu", None),
])
def test_parse_bottleneck_literals(text, expected):
    assert parse_bottleneck(text) == expected


@pytest.mark.parametrize("text", ["C0S1", "C8S0", "K2C8S1", "K0C8S1"])
def test_parse_bottleneck_rejects_unusable_values(text):
    with pytest.raises(ValueError, match=text):
        parse_bottleneck(text)


def test_bottleneck_num_extra_layers():
    assert [BottleneckSpec(stride=s).num_extra for s in (1, 2, 3, 4, 8)] == [0, 0, 0, 1, 2]


@pytest.mark.parametrize("side", [2, 4, 8])
def test_im2col_matches_xla(side):
    x = jax.random.normal(jax.random.key(0), (2, side, side, 8))
    xla, im2col = Conv(16, 3, padding=1, impl="xla"), Conv(16, 3, padding=1, impl="im2col")
    params = xla.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, im2col.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, params)

    def loss(conv, p, x):
        return jnp.sum(jnp.sin(conv.apply(p, x)))

    np.testing.assert_allclose(im2col.apply(params, x), xla.apply(params, x), atol=1e-4)
    g_xla = jax.grad(lambda p, x: loss(xla, p, x), argnums=(0, 1))(params, x)
    g_im2col = jax.grad(lambda p, x: loss(im2col, p, x), argnums=(0, 1))(params, x)
    chex.assert_trees_all_close(g_im2col, g_xla, atol=1e-4)


@pytest.mark.parametrize("arch,bottleneck,impl", [("vgg11_bn", "norelu_C8S1", "im2col"),
                                                    ("resnet20", "C4S2", "im2col"),
                                                    ("vgg11_bn", "norelu_C8S1", "tapwise")])
def test_whole_split_model_im2col_matches_xla(arch, bottleneck, impl):
    # The smoke presets (end-to-end tests) use XLA's conv; CPU users get im2col and tapwise
    # ("auto"). They must train the same model: train-mode logits, BN statistics and every
    # gradient.
    x = images(4)
    labels = jnp.arange(4) % 10
    xla, im2col = build(arch, 4, bottleneck, conv_impl="xla"), build(arch, 4, bottleneck,
                                                                      conv_impl=impl)
    client_vars, server_vars, _ = init_vars(xla, x)

    def loss(model, client_params, server_params):
        features, client_upd = model.client.apply(
            {**client_vars, "params": client_params}, x, train=True, mutable=["batch_stats"])
        logits, server_upd = model.server.apply(
            {**server_vars, "params": server_params}, features, train=True,
            mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
        ce = jnp.mean(losses.cross_entropy(logits, labels))
        return ce, (logits, client_upd, server_upd)

    def run(model):
        return jax.jit(jax.grad(lambda c, s: loss(model, c, s), argnums=(0, 1), has_aux=True))(
            client_vars["params"], server_vars["params"])

    (grads_xla, aux_xla), (grads_im2col, aux_im2col) = run(xla), run(im2col)
    chex.assert_trees_all_close(aux_im2col, aux_xla, atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(grads_im2col, grads_xla, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kernel,padding", [(1, 0), (5, 2), (3, "SAME"), (3, "VALID")])
def test_im2col_other_kernels(kernel, padding):
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    conv = Conv(4, kernel, padding=padding, impl="xla")
    params = conv.init(jax.random.key(1), x)
    np.testing.assert_allclose(Conv(4, kernel, padding=padding, impl="im2col").apply(params, x),
                               conv.apply(params, x), atol=1e-4)


@pytest.fixture(scope="module")
def vgg():
    model = build("vgg11_bn", 4, "norelu_C8S1")
    client_vars, server_vars, features = init_vars(model, images())
    return model, client_vars, server_vars, features


def test_vgg_init_statistics(vgg):
    _, client_vars, server_vars, _ = vgg
    client, server = client_vars["params"], server_vars["params"]
    conv = client["body"]["layer2"]["conv"]
    assert not np.any(conv["bias"]) and not np.any(client["compress"]["Conv_0"]["bias"])
    fan_in, fan_out = 9 * 4, 9 * 8  # xavier: |w| <= sqrt(6 / (fan_in + fan_out))
    assert np.max(np.abs(conv["kernel"])) <= math.sqrt(6 / (fan_in + fan_out))
    np.testing.assert_array_equal(client["body"]["layer0"]["bn"]["scale"], 1.0)
    fc1 = server["head"]["fc1"]  # torch default: kernel and bias in +-1/sqrt(fan_in), fan_in 32
    for leaf in (fc1["kernel"], fc1["bias"]):
        assert np.any(leaf) and np.max(np.abs(leaf)) <= 1 / math.sqrt(32)
    expand_bias = server["expand"]["Conv_0"]["bias"]  # Conv(8 -> 8, 3x3): fan_in 72
    assert np.any(expand_bias) and np.max(np.abs(expand_bias)) <= 1 / math.sqrt(72)


def test_resnet_init_schemes():
    client_vars, server_vars, _ = init_vars(build("resnet20", 2, "norelu_C1S1"), images())
    server = server_vars["params"]
    client_bias = client_vars["params"]["compress"]["Conv_0"]["bias"]
    assert np.any(client_bias) and np.max(np.abs(client_bias)) <= 1 / math.sqrt(9)  # C0=1
    assert not np.any(server["expand"]["Conv_0"]["bias"])  # top-level server conv: zero bias


def test_init_function_statistics():
    kernel = he_normal_fan_out()(jax.random.key(0), (3, 3, 64, 64))
    np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (9 * 64)), rtol=0.03)
    bias = torch_default(576)(jax.random.key(1), (4096,))
    assert np.max(np.abs(bias)) <= 1 / 24 and np.max(np.abs(bias)) > 0.9 / 24


def test_batch_norm_updates_only_in_train_mode(vgg):
    model, client_vars, _, _ = vgg
    out_eval = model.client.apply(client_vars, images(), train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(out_eval[1]["batch_stats"], client_vars["batch_stats"])
    _, updates = model.client.apply(client_vars, images(), train=True, mutable=["batch_stats"])
    mean = updates["batch_stats"]["body"]["layer0"]["bn"]["mean"]
    assert np.all(mean != client_vars["batch_stats"]["body"]["layer0"]["bn"]["mean"])


def test_batch_norm_matches_pytorch_semantics():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2)) * 3.0 + 1.0
    bn = BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(1), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    xs = np.asarray(x).reshape(-1, 2)
    mean, var = xs.mean(0), xs.var(0)  # biased variance normalises
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 2), (xs - mean) / np.sqrt(var + 1e-5),
                               atol=1e-5)
    stats = updates["batch_stats"]  # PyTorch: momentum 0.1, UNBIASED variance in the average
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)
    eval_out = BatchNorm(use_running_average=True).apply({**variables, **updates}, x)
    expected = (xs - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
    np.testing.assert_allclose(np.asarray(eval_out).reshape(-1, 2), expected, atol=1e-5)


def test_dropout_only_in_train_mode(vgg):
    model, _, server_vars, features = vgg
    eval_logits = model.server.apply(server_vars, features, train=False)
    assert eval_logits.shape == (2, 10)

    @jax.jit
    def train_logits(key):
        logits, _ = model.server.apply(server_vars, features, train=True, mutable=["batch_stats"],
                                       rngs={"dropout": key})
        return logits

    assert not np.allclose(train_logits(rng(0)), train_logits(rng(1)))
    np.testing.assert_array_equal(train_logits(rng(2)), train_logits(rng(2)))


def test_client_normalises_first(vgg):
    model, client_vars, _, _ = vgg
    identity = build_split_model("vgg11_bn", cut_layer=4, bottleneck="norelu_C8S1",
                                 num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                 width_mult=W)
    x = images()
    normalised = (x - jnp.asarray(MEAN).reshape(1, 1, 1, 3)) / jnp.asarray(STD).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(model.client.apply(client_vars, x, train=False),
                               identity.client.apply(client_vars, normalised, train=False),
                               atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        model.client.apply(client_vars, jnp.zeros((1, 32, 32, 3), jnp.uint8), train=False)


def test_norelu_signed_but_mobilenet_forces_relu():
    vgg_model = build("vgg11_bn", 2, "norelu_C4S1")
    mobile = build("mobilenetv2", 2, "norelu_C4S1")
    for model, signed in ((vgg_model, True), (mobile, False)):
        features = jax.jit(lambda x: model.client.init_with_output(  # noqa: B023
            {"params": rng(0)}, x, train=False)[0])(images())
        assert bool(np.any(features < 0)) == signed
    _, _, server_vars, _ = abstract_init(mobile)
    assert server_vars["params"]["expand"]["Conv_0"]["kernel"].shape == (1, 1, 4, 1)  # 1x1 conv


@pytest.mark.parametrize("stride", [2, 4])
def test_expand_inverts_compress_shape(stride):
    spec = BottleneckSpec(channels=3, stride=stride)
    x = jax.ShapeDtypeStruct((1, 8, 8, 5), jnp.float32)
    z, _ = jax.eval_shape(lambda x: Compress(spec).init_with_output(rng(0), x), x)
    assert z.shape == (1, 8 // stride, 8 // stride, 3)
    y, _ = jax.eval_shape(lambda z: Expand(spec, out_channels=5).init_with_output(rng(1), z), z)
    assert y.shape == x.shape


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = build("resnet20", 2, "norelu_C1S1", dtype=jnp.bfloat16)
    client_vars, features, server_vars, logits = abstract_init(model)
    assert features.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves((client_vars, server_vars))} == {jnp.dtype("float32")}


def test_bn_free_halves_have_no_batch_stats():
    client_vars, _, server_vars, _ = abstract_init(build("vgg11", 4))
    assert "batch_stats" not in client_vars and "batch_stats" not in server_vars
    _, _, server_vars, _ = abstract_init(build("resnet20", 10))
    assert "batch_stats" not in server_vars
    model = build("vgg11", 1)  # callers pass {} for the missing collection
    params = model.client.init({"params": rng(0)}, images(1), train=False)["params"]
    _, updates = model.client.apply({"params": params, "batch_stats": {}}, images(1), train=True,
                                    mutable=["batch_stats"])
    assert not updates.get("batch_stats", {})


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="vgg99"), r"unknown arch 'vgg99'.*vgg11_bn.*resnet20.*mobilenetv2"),
    (dict(cut_layer=0), r"cut_layer=0 is out of range for vgg11_bn.*1\.\.13"),
    (dict(cut_layer=14), r"cut_layer=14 is out of range for vgg11_bn.*1\.\.13"),
    (dict(arch="resnet20", cut_layer=11), r"cut_layer=11 .*resnet20.*1\.\.10"),
    (dict(arch="mobilenetv2", cut_layer=10), r"cut_layer=10 .*mobilenetv2.*1\.\.9"),
    (dict(width_mult=0.0), r"width_mult=0\.0"),
    (dict(conv_impl="fast"), r"conv_impl='fast'.*auto"),
    (dict(bottleneck="C0S1"), r"C0S1"),
    (dict(std=(0.5, 0.0, 0.5)), r"std="),
])
def test_clear_errors(kwargs, match):
    args = dict(arch="vgg11_bn", cut_layer=4, bottleneck=None, num_classes=10, mean=MEAN,
                std=STD, width_mult=W, conv_impl="auto")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_split_model(args.pop("arch"), **args)


def test_archs_listed():
    assert set(ARCHS) >= {"vgg11_bn", "vgg11", "resnet20", "mobilenetv2"}


@pytest.mark.parametrize("arch,bottleneck", [("vgg11_bn", "C4S2"), ("resnet20", "C4S2"),
                                               ("mobilenetv2", "C4S4")])
def test_auto_conv_impl_uses_no_conv_op_on_cpu(arch, bottleneck):
    # Every conv of the models (strided, 1x1, depthwise, transposed) avoids XLA-CPU's conv.
    model, x = build(arch, 3, bottleneck), jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    client_vars, features, server_vars, _ = abstract_init(model)
    jaxprs = [jax.make_jaxpr(lambda v, x: model.client.apply(v, x, train=False))(client_vars, x),
              jax.make_jaxpr(lambda v, f: model.server.apply(v, f, train=False))(server_vars,
                                                                                 features)]
    used = any("conv_general_dilated" in str(jaxpr) for jaxpr in jaxprs)
    assert used != (jax.default_backend() == "cpu")


def test_modules_can_be_initialised_directly():
    # A field named ``init`` would shadow ``nn.Module.init``; the scheme is ``init_scheme``.
    spec = BottleneckSpec(channels=2, stride=2)
    z = jax.ShapeDtypeStruct((1, 4, 4, 2), jnp.float32)
    params = jax.eval_shape(lambda z: Expand(spec, out_channels=5).init(rng(0), z), z)["params"]
    assert params["ConvTranspose_0"]["kernel"].shape[:2] == (3, 3)


def test_avg_pool_literal_values_and_gradient_under_jit():
    # torch avg_pool2d(x, 2) on a 5x5 map: 2x2 means, the last row/column dropped.
    x = jnp.arange(25, dtype=jnp.float32).reshape(1, 5, 5, 1)
    np.testing.assert_array_equal(avg_pool(x, 2)[0, :, :, 0], [[3.0, 5.0], [13.0, 15.0]])
    # Differentiable under jit (a traced reduce_window init once made it the generic, and
    # non-differentiable, reduction): each kept pixel gets 1/4, dropped ones 0.
    grad = jax.jit(jax.grad(lambda x: jnp.sum(avg_pool(x, 2))))(x)[0, :, :, 0]
    expected = np.zeros((5, 5), np.float32)
    expected[:4, :4] = 0.25
    np.testing.assert_array_equal(grad, expected)
