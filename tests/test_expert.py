"""Reading client extractors back from checkpoints, and the compatibility check."""

import chex
import jax
import numpy as np
import optax
import pytest

from ressfl_jax import checkpoints, expert
from ressfl_jax.models import build_split_model, feature_shape
from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.state import create_sfl_state
from ressfl_jax.training import ressfl

MODEL = build_split_model("vgg11_bn", cut_layer=2, bottleneck="norelu_C2S1", num_classes=10,
                          mean=(0.5,) * 3, std=(0.5,) * 3, width_mult=1 / 16)
META = {"kind": "pretrain", "arch": "vgg11_bn", "cut_layer": 2, "bottleneck": "norelu_C2S1",
        "width_mult": 0.0625, "image_shape": [32, 32, 3], "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5], "dataset": "synthetic"}


# Init keys are "rbg" keys: a threefry init of even a tiny VGG compiles ~4x slower on XLA-CPU
# (as in test_models.py); the initial weights' values are not what these tests check.
def init_key(seed):
    return jax.random.key(seed, impl="rbg")


def saved_state(tmp_path, which=checkpoints.BEST, steps=(4,)):
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_sfl_state(init_key(0), MODEL, client_tx=tx, server_tx=tx,
                             num_clients=2)
    feats = feature_shape(MODEL, (32, 32, 3))
    decoder = build_decoder("conv_normN0C8", feature_shape=feats)
    state = state.replace(decoders=ressfl.create_decoders(
        init_key(1), decoder, num_clients=2, feature_shape=feats, tx=optax.adam(1e-3)))
    # Make the two client copies differ so that the index is tested.
    state = state.replace(clients=state.clients.replace(
        params=jax.tree.map(lambda x: x.at[1].add(1.0), state.clients.params)))
    manager = checkpoints.make_manager(tmp_path / "run" / "checkpoints" / which, max_to_keep=3)
    for step in steps:
        checkpoints.save(manager, step, state, {"progress": {"epoch": step}, "run": META})
    manager.wait_until_finished()
    return state


@pytest.mark.parametrize("sub", ["run", "run/checkpoints", "run/checkpoints/best"])
def test_load_extractor_round_trip_bit_exact(tmp_path, sub):
    state = saved_state(tmp_path)
    ex = expert.load_extractor(str(tmp_path / sub))
    assert ex.meta == META and ex.step == 4 and ex.progress == {"epoch": 4}
    chex.assert_trees_all_equal(ex.client["params"],
                                jax.device_get(jax.tree.map(lambda x: x[0],
                                                            state.clients.params)))
    chex.assert_trees_all_equal(ex.client["batch_stats"],
                                jax.device_get(jax.tree.map(lambda x: x[0],
                                                            state.clients.batch_stats)))
    chex.assert_trees_all_equal(ex.server["params"], jax.device_get(state.server.params))
    chex.assert_trees_all_equal(ex.decoder["params"],
                                jax.device_get(jax.tree.map(lambda x: x[0],
                                                            state.decoders.params)))
    one = expert.load_extractor(str(tmp_path / sub), client_index=1)
    chex.assert_trees_all_equal(one.client["params"],
                                jax.device_get(jax.tree.map(lambda x: x[1],
                                                            state.clients.params)))
    # The restored client runs in the model.
    out = MODEL.client.apply({"params": ex.client["params"],
                              "batch_stats": ex.client["batch_stats"]},
                             np.zeros((1, 32, 32, 3), np.float32), train=False)
    assert out.shape == (1,) + feature_shape(MODEL, (32, 32, 3))


def test_load_extractor_picks_steps_and_last(tmp_path):
    saved_state(tmp_path, which=checkpoints.LAST, steps=(1, 2, 3))
    assert expert.load_extractor(str(tmp_path / "run"), which="last").step == 3
    assert expert.load_extractor(str(tmp_path / "run"), which="last", step=2).step == 2
    with pytest.raises(FileNotFoundError, match="No step 7"):
        expert.load_extractor(str(tmp_path / "run"), which="last", step=7)
    with pytest.raises(FileNotFoundError, match="checkpoints/best"):
        expert.load_extractor(str(tmp_path / "run"))  # no best/ here
    with pytest.raises(ValueError, match="client_index 5"):
        expert.load_extractor(str(tmp_path / "run"), which="last", client_index=5)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        expert.load_extractor(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="which"):
        expert.resolve_dir(str(tmp_path), which="newest")


def test_check_compatible_accepts_equal_metadata():
    expert.check_compatible(META, dict(META, mean=[0.5, 0.5, 0.5 + 1e-9]))
    expert.check_compatible(META, {"arch": "vgg11_bn"})  # absent keys are not checked


def test_check_compatible_names_every_mismatch():
    expected = dict(META, arch="resnet20", cut_layer=3, std=[0.3, 0.3, 0.3])
    with pytest.raises(ValueError) as err:
        expert.check_compatible(META, expected, source="runs/expert")
    message = str(err.value)
    assert "runs/expert" in message
    assert "arch: checkpoint has 'vgg11_bn', this run expects 'resnet20'" in message
    assert "cut_layer: checkpoint has 2, this run expects 3" in message
    assert "  std: " in message and "  bottleneck:" not in message
    with pytest.raises(ValueError, match="image_shape: not recorded"):
        expert.check_compatible({k: v for k, v in META.items() if k != "image_shape"}, META)
