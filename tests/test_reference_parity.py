"""Tests for the step-parity check against the PyTorch reference (experiments.reference_parity).

Without torch: the weight conversion (every entry of the reference expert's state_dicts, by
name and shape as the reference saves them, lands on exactly our model's parameter tree; conv
and linear layouts against literal oracles), the dithering, and argument errors. The end-to-end
check needs the torch virtualenv and an extracted reference (``RESSFL_REFERENCE``,
``RESSFL_TORCH_PYTHON``) and skips otherwise.
"""

import ast
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import reference_parity as rp
from ressfl_jax.models import build_split_model
from ressfl_jax.models.decoders import build_decoder

SHAPES = pathlib.Path(__file__).parent / "data" / "reference_expert_state_dict_shapes.json"


def _our_shapes():
    """Abstract {part: {'params', 'batch_stats'}} of the expert the parity check builds."""
    model = build_split_model("vgg11_bn", cut_layer=4, bottleneck="norelu_C8S1", num_classes=10,
                              mean=rp.CIFAR10_MEAN, std=rp.CIFAR10_STD)
    decoder = build_decoder("res_normN4C64", feature_shape=(8, 8, 8))
    images = jnp.zeros((1, 32, 32, 3))
    client = jax.eval_shape(lambda: model.client.init({"params": jax.random.key(0)}, images,
                                                      train=False))
    features = jnp.zeros((1, 8, 8, 8))
    server = jax.eval_shape(lambda: model.server.init({"params": jax.random.key(0)}, features,
                                                      train=False))
    dec = jax.eval_shape(lambda: decoder.init({"params": jax.random.key(0)}, features,
                                              train=False))
    return {"client": dict(client), "server": dict(server), "decoder": dict(dec)}


def test_every_reference_entry_maps_onto_our_tree():
    shapes = json.loads(SHAPES.read_text())
    fake = {f"init/{key}": np.zeros(shape, np.float32) for key, shape in shapes.items()}
    ours = _our_shapes()
    for part in rp.part_names(1):
        converted = rp.to_flax(fake, "init", part, rp.table(part, "res_normN4C64"))
        rp._check_same_structure(ours[part], converted, part)  # raises on any mismatch
    # The reference's 152 entries (num_batches_tracked excluded) are all used.
    assert len(shapes) == 152


def test_lite_decoder_map_and_slot_names():
    assert rp.part_names(2) == ["client", "client1", "server", "decoder", "decoder1"]
    decoder = build_decoder("conv_normN0C16", feature_shape=(8, 8, 8))
    ours = jax.eval_shape(lambda: decoder.init({"params": jax.random.key(0)},
                                               jnp.zeros((1, 8, 8, 8)), train=False))
    # The reference's conv_normN_AE(N=0, internal_nc=16): conv, BN, ReLU, convT, BN, ReLU,
    # convT, BN, ReLU, conv, BN, sigmoid (state_dict layout as the reference saves it).
    shapes = {"m.0.weight": (16, 8, 3, 3), "m.0.bias": (16,), "m.3.weight": (16, 16, 3, 3),
              "m.3.bias": (16,), "m.6.weight": (16, 16, 3, 3), "m.6.bias": (16,),
              "m.9.weight": (3, 16, 3, 3), "m.9.bias": (3,)}
    for index, width in ((1, 16), (4, 16), (7, 16), (10, 3)):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"m.{index}.{leaf}"] = (width,)
    fake = {f"init/decoder1/{key}": np.zeros(shape, np.float32) for key, shape in shapes.items()}
    converted = rp.to_flax(fake, "init", "decoder1", rp.table("decoder1", "conv_normN0C16"))
    rp._check_same_structure(dict(ours), converted, "decoder1")


def test_unmapped_entry_is_refused():
    with pytest.raises(KeyError, match="client/3.weight"):
        rp.to_flax({"init/client/3.weight": np.zeros((2, 2, 3, 3))}, "init", "client",
                   rp.CLIENT_MAP)


def test_structure_mismatch_names_the_part():
    ours = {"params": {"a": jax.ShapeDtypeStruct((2,), jnp.float32)}}
    with pytest.raises(ValueError, match="decoder: .*shape mismatches"):
        rp._check_same_structure(ours, {"params": {"a": np.zeros(3)}}, "decoder")


def test_conv_and_linear_layouts_match_pytorch_definitions():
    rng = np.random.default_rng(0)
    # Conv2d weight [O, I, kh, kw], padding 1: out[o, y, x] = sum w[o, i, ky, kx] *
    # in[i, y + ky - 1, x + kx - 1].
    weight = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    x = rng.normal(size=(1, 4, 5, 3)).astype(np.float32)  # NHWC
    collection, name, kernel = rp._leaf("0.weight", weight)
    assert (collection, name, kernel.shape) == ("params", "kernel", (3, 3, 3, 2))
    got = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 4, 5, 2), np.float32)
    for y, xx, o, i, ky, kx in np.ndindex(4, 5, 2, 3, 3, 3):
        expected[0, y, xx, o] += weight[o, i, ky, kx] * padded[0, y + ky, xx + kx, i]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
    # Linear weight [O, I]: y = x @ W.T.
    linear = rng.normal(size=(4, 6)).astype(np.float32)
    _, name, kernel = rp._leaf("1.weight", linear)
    features = rng.normal(size=(2, 6)).astype(np.float32)
    np.testing.assert_allclose(features @ kernel, features @ linear.T, rtol=1e-6)
    assert rp._leaf("1.weight", np.ones(4))[:2] == ("params", "scale")
    assert rp._leaf("1.running_var", np.ones(4))[:2] == ("batch_stats", "var")
    assert rp._leaf("1.running_mean", np.ones(4))[:2] == ("batch_stats", "mean")


def test_dithered_breaks_constant_regions_without_clipping():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[1] = 255  # a saturated image: clipping would leave it constant
    out = rp.dithered(images, 16)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert out[0].max() <= 16 and out[1].min() >= 255 - 16
    assert out[0].std() > 3 and out[1].std() > 3
    np.testing.assert_array_equal(rp.dithered(images, 0), images)
    np.testing.assert_array_equal(rp.dithered(images, 16), out)  # seeded


def test_update_error_is_relative_to_the_reference_update():
    start = {"w": np.zeros(4)}
    ref = {"w": np.array([1.0, 0.0, 0.0, 0.0])}
    ours = {"w": np.array([1.0, 0.1, 0.0, 0.0])}
    result = rp.update_error(start, ours, ref)
    assert result["error"] == pytest.approx(0.1)
    assert result["worst_leaf"] == "w"


def test_bad_arguments_are_refused_early(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rp.parse_args([f"--reference={tmp_path}", f"--workdir={tmp_path}/w"])
    assert "holds no MIA_torch.py" in capsys.readouterr().err
    (tmp_path / "MIA_torch.py").write_text("")
    with pytest.raises(SystemExit):
        rp.parse_args([f"--reference={tmp_path}", f"--workdir={tmp_path}/w",
                       "--torch_python=/nonexistent/python"])
    assert "torch virtualenv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rp.parse_args([f"--reference={tmp_path}", f"--workdir={tmp_path}/w", "--rounds=0"])


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["expert", "lite"])
def test_end_to_end_parity_with_the_reference(tmp_path, setting):
    reference = os.environ.get("RESSFL_REFERENCE", "")
    torch_python = os.environ.get("RESSFL_TORCH_PYTHON", "")
    if not (os.path.isfile(os.path.join(reference, "MIA_torch.py"))
            and os.access(torch_python, os.X_OK)):
        pytest.skip("set RESSFL_REFERENCE (an extracted zlijingtao/ResSFL tree) and "
                    "RESSFL_TORCH_PYTHON (the torch virtualenv's python)")
    with pytest.raises(SystemExit) as exit_info:
        rp.main([f"--reference={reference}", f"--torch_python={torch_python}",
                 f"--workdir={tmp_path}", "--rounds=2", "--batch_size=32",
                 f"--setting={setting}"])
    report = json.loads((tmp_path / "parity.json").read_text())
    assert exit_info.value.code == 0, report["checks"]
    assert report["hinge_active_rounds"] == 2
    assert report["num_clients"] == (1 if setting == "expert" else 2)


def test_torch_half_imports_only_the_standard_library_at_top_level():
    from experiments import torch_reference_step as step
    with open(step.__file__) as f:
        tree = ast.parse(f.read())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                 for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in tree.body
                  if isinstance(node, ast.ImportFrom)}
    assert top_level <= set(sys.stdlib_module_names), top_level
    args = step.parse_args(["--reference=/ref", "--batches=b.npz", "--out=o.npz",
                            "--mid_decoder=m.npz", "--penalty_off"])
    assert (args.alpha, args.tau, args.lr, args.mid_decoder, args.penalty_off) == (
        0.3, 0.01, 0.05, "m.npz", True)
