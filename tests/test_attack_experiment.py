"""``experiments.attack`` end to end, and the public ``load_client_model`` API."""

import json
import os

import chex
import jax
import numpy as np
import pytest

import ressfl_jax
from experiments import attack
from experiments.configs import attack as attack_config
from ressfl_jax import expert
from ressfl_jax.data import load_dataset


def smoke(checkpoint, **overrides):
    config = attack_config.get_config("smoke")
    config.checkpoint = checkpoint
    for key, value in overrides.items():
        config[key] = value
    return config


def test_load_client_model_is_the_checkpointed_client(smoke_expert):
    client = ressfl_jax.load_client_model(smoke_expert)
    ex = expert.load_extractor(smoke_expert)
    assert client.dataset == "synthetic" and client.image_shape == (32, 32, 3)
    assert client.feature_shape == (8, 8, 8) and client.step == ex.step
    images = load_dataset("synthetic").test_images[:5]
    features = client(images)
    assert features.shape == (5, 8, 8, 8)
    direct = client.model.client.apply(ex.client, images.astype(np.float32) / 255.0,
                                       train=False)
    np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(client.apply)(images / 255.0), direct, rtol=1e-5,
                               atol=1e-6)
    chex.assert_trees_all_equal(client.client, ex.client)
    with pytest.raises(ValueError, match="image_shape"):
        client(images[:, :16])


def test_client_model_accuracy_matches_the_training_loop(smoke_expert):
    client = ressfl_jax.load_client_model(smoke_expert, which="last")
    with open(os.path.join(smoke_expert, "summary.json")) as f:
        summary = json.load(f)
    data = load_dataset("synthetic")
    assert client.accuracy(data.test_images, data.test_labels) == pytest.approx(
        summary["final_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_attacked_steps_takes_a_list_of_saved_steps(smoke_expert):
    config = smoke(smoke_expert, step="2, 1", which="last")
    assert attack.attacked_steps(config) == [("last", 2), ("last", 1)]
    with pytest.raises(ValueError, match="comma-separated"):
        attack.attacked_steps(smoke(smoke_expert, step="1,x"))


@pytest.mark.slow
def test_attack_every_saved_step(smoke_expert, tmp_path):
    summary = attack.run(smoke(smoke_expert, step="all"), str(tmp_path))
    # last/ keeps epoch 0 (the initial model, after phase 0) and the 2 newest epochs.
    assert [r["step"] for r in summary["results"]] == [0, 1, 2]
    for result in summary["results"]:
        assert 0 <= result["accuracy"] <= 1
        assert result["num_targets"] == 8 and result["num_aux"] == 40
        (a,) = result["attacks"]
        assert a["decoder"] == "conv_normN0C8" and 0 < a["mse"] < 1
        assert result["worst_case"]["mse"] == a["mse"]
        assert np.isfinite(result["optimization"]["mse"])
        assert os.path.exists(tmp_path / "steps" / f"last_{result['step']}.json")
        assert os.path.exists(tmp_path / "recon" / f"last_{result['step']}.png")
    assert summary["grid_rows"] == ["targets", "conv_normN0C8", "optimization"]
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["results"][2]["step"] == 2
    # The grid's arrays: the first grid_images (smoke: 4) targets, one row per grid row, in
    # grid_rows order.
    with np.load(tmp_path / "recon" / "last_2.npz") as grid:
        assert list(grid) == summary["grid_rows"]
        assert {grid[k].shape for k in grid} == {(4, 32, 32, 3)}
    # Scalars per attacked step, in metrics.jsonl and TensorBoard event files.
    with open(tmp_path / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert [r["step"] for r in logged] == [0, 1, 2]
    for row, result in zip(logged, summary["results"]):
        assert row["attack/worst_case/mse"] == pytest.approx(result["worst_case"]["mse"])
        assert row["attack/conv_normN0C8/ssim"] == pytest.approx(result["attacks"][0]["ssim"])
        assert row["attack/accuracy"] == pytest.approx(result["accuracy"])
        assert "attack/optimization/psnr" in row
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
    # Resuming reuses finished steps instead of attacking them again.
    again = attack.run(smoke(smoke_expert, step="all"), str(tmp_path), resume=True)
    assert again["results"] == summary["results"]


@pytest.mark.parametrize("overrides, error, match", [
    ({"checkpoint": ""}, ValueError, "config.checkpoint"),
    ({"targets": "test"}, ValueError, "targets"),
    ({"step": "latest"}, ValueError, "step"),
    ({"decoders": "unet_C8"}, ValueError, "unet_C8"),
    ({"selection": "best_test"}, ValueError, "best_test"),
    ({"aux_source": "val"}, ValueError, "aux_source"),
    ({"targets": "reference", "reference_dir": "/nonexistent"}, FileNotFoundError,
     "zlijingtao/ResSFL"),
])
def test_bad_attack_config_fails_early(smoke_expert, tmp_path, overrides, error, match):
    config = smoke(smoke_expert)
    for key, value in overrides.items():
        config[key] = value
    with pytest.raises(error, match=match):
        attack.run(config, str(tmp_path))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint found"):
        attack.run(smoke(str(tmp_path / "nothing")), str(tmp_path / "out"))
