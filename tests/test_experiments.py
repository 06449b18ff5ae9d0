"""End-to-end runs of ``experiments.train`` on the smoke preset (tiny widths, synthetic data)."""

import glob
import json
import os

import numpy as np
import pytest

from experiments import train
from experiments.configs import train as train_config
from tests.helpers import records, smoke_config


def smoke(**overrides):
    return smoke_config(train_config, **overrides)


@pytest.mark.slow
def test_smoke_run_writes_everything(tmp_path):
    summary = train.run(smoke(), str(tmp_path))
    assert summary["epochs"] == 2 and summary["steps"] == 8
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert summary["images_per_sec"] > 0
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert os.path.isdir(tmp_path / "checkpoints" / "last" / "2")
    assert os.listdir(tmp_path / "checkpoints" / "best")
    saved = json.load(open(tmp_path / "summary.json"))
    assert saved["final_accuracy"] == summary["final_accuracy"]
    assert json.load(open(tmp_path / "config.json"))["preset"] == "smoke"
    recs = records(tmp_path)
    assert [r["step"] for r in recs if "train/ce_loss" in r] == [2, 4, 6, 8]
    assert all(np.isfinite(r["train/ce_loss"]) for r in recs if "train/ce_loss" in r)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["parallel", "sequential"])
def test_resume_equals_uninterrupted(tmp_path, scheme):
    full = str(tmp_path / "full")
    train.run(smoke(**{"run.num_epochs": 3, "run.scheme": scheme}), full)
    part = str(tmp_path / "part")
    train.run(smoke(**{"run.num_epochs": 1, "run.scheme": scheme}), part)
    train.run(smoke(**{"run.num_epochs": 3, "run.scheme": scheme}), part, resume=True)

    def strip(recs):
        return [{k: v for k, v in r.items() if k != "perf/images_per_sec"} for r in recs]

    assert strip(records(part)) == strip(records(full))


@pytest.mark.slow
def test_existing_workdir_needs_resume(tmp_path):
    train.run(smoke(**{"run.num_epochs": 1}), str(tmp_path))
    with pytest.raises(FileExistsError, match="--resume"):
        train.run(smoke(**{"run.num_epochs": 1}), str(tmp_path))


@pytest.mark.slow
def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
    train.run(smoke(**{"run.num_epochs": 1}), str(tmp_path))
    good = sorted(os.listdir(tmp_path / "checkpoints" / "last"))
    with pytest.raises(FloatingPointError, match=r"steps \d+\.\.\d+"):
        train.run(smoke(**{"run.num_epochs": 3, "optim.lr": 1e30}), str(tmp_path), resume=True)
    assert sorted(os.listdir(tmp_path / "checkpoints" / "last")) == good


@pytest.mark.slow
def test_client_sampling_runs_with_static_shapes(tmp_path):
    # 2 slots, 4 users: a different pair of users each epoch; the AOT-compiled step would raise
    # if any epoch needed another shape.
    summary = train.run(smoke(**{"data.client_sample_ratio": 0.5, "run.num_epochs": 3}),
                        str(tmp_path))
    assert summary["epochs"] == 3


@pytest.mark.parametrize("key, value, match", [
    ("run.scheme", "V2_epoch", "run.scheme"),
    ("data.augment", "rotate", "data.augment"),
    ("data.client_sample_ratio", 0.0, "client_sample_ratio"),
    ("data.classes", "a-b", "data.classes"),
    ("model.arch", "vgg12", "vgg12"),
    ("model.cut_layer", 99, "99"),
    ("data.dataset", "no_such_dataset", "no_such_dataset"),
])
def test_bad_config_fails_early_with_clear_error(tmp_path, key, value, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train.run(smoke(**{key: value}), str(tmp_path))
