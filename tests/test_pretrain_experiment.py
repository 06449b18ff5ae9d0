"""End-to-end runs of ``experiments.pretrain`` on the smoke preset (tiny widths, synthetic)."""

import json
import os

import numpy as np
import pytest

from experiments import pretrain
from experiments.configs import pretrain as pretrain_config
from ressfl_jax import expert
from tests.helpers import records, smoke_config


def smoke(**overrides):
    return smoke_config(pretrain_config, **overrides)


@pytest.mark.slow
def test_smoke_pretrain_writes_an_expert(smoke_expert):
    # conftest's smoke_expert is `pretrain.run(get_config("smoke"), workdir)`.
    with open(os.path.join(smoke_expert, "summary.json")) as f:
        summary = json.load(f)
    assert summary["epochs"] == 2
    assert 0 < summary["prepare"]["val_mse"] < 1
    for key in ("train/inversion_ssim", "train/inversion_mse", "train/penalty",
                "attacker/recon_loss", "train/ce_loss", "train/accuracy"):
        assert np.isfinite(summary["last_train"][key]), key
    # Phase 0 is logged at step 0 and saved as checkpoint 0 (the epoch-0 model of Fig. 5).
    assert "prepare/val_mse" in records(smoke_expert)[0]
    ex0 = expert.load_extractor(smoke_expert, which="last", step=0)
    assert ex0.decoder is not None
    ex = expert.load_extractor(smoke_expert)
    assert ex.meta["kind"] == "pretrain" and ex.meta["bottleneck"] == "norelu_C8S1"
    assert ex.meta["attacker"]["decoder"] == "res_normN1C8"
    expert.check_compatible(ex.meta, {k: ex.meta[k] for k in expert.COMPAT_KEYS})


@pytest.mark.slow
def test_resume_after_phase0_equals_uninterrupted(smoke_expert, tmp_path):
    full = smoke_expert  # the uninterrupted run: the smoke preset's 2 epochs
    assert smoke()["run"]["num_epochs"] == 2
    part = str(tmp_path / "part")
    pretrain.run(smoke(**{"run.num_epochs": 1}), part)
    summary = pretrain.run(smoke(**{"run.num_epochs": 2}), part, resume=True)
    assert "prepare" in summary  # carried over from the checkpoint, not re-run

    def strip(recs):
        return [{k: v for k, v in r.items() if k != "perf/images_per_sec"} for r in recs]

    assert strip(records(part)) == strip(records(full))


@pytest.mark.parametrize("key, value, match", [
    ("attacker.decoder", "unet_C8", "unet_C8"),
    ("attacker.loss", "l1", "l1"),
    ("attacker.pretrain_source", "val", "pretrain_source"),
    ("attacker.pretrain_selection", "best_test", "best_test"),
    ("attacker.interval", 0, "interval"),
    ("attacker.alpha", -1.0, "alpha"),
    ("attacker.penalty_bn", "train", "penalty_bn"),
])
def test_bad_attacker_config_fails_early(tmp_path, key, value, match):
    with pytest.raises(ValueError, match=match):
        pretrain.run(smoke(**{key: value}), str(tmp_path))
