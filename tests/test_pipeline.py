"""``experiments.pipeline``: pretrain -> transfer -> attack -> table, reusing finished stages."""

import os
import shutil

import pytest

from experiments import pipeline
from experiments.configs import pipeline as pipeline_config


@pytest.mark.slow
def test_smoke_pipeline_reuses_stages_and_writes_the_table(smoke_expert, tmp_path):
    # The expert stage exists already (a copy of the shared smoke expert): it is reused.
    shutil.copytree(smoke_expert, tmp_path / "expert")
    config = pipeline_config.get_config("smoke")
    config.modes = "lite,scratch"
    config.source_vanilla = False
    summary = pipeline.run(config, str(tmp_path))
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["expert (source task)", "ResSFL (lite)", "scratch"]
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and 0 < row["attack_mse"] < 1
        assert row["client_mflops_per_image"] > 0
    assert rows["ResSFL (lite)"]["client_overhead"] > 0
    assert rows["scratch"]["client_overhead"] is None
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("| method | task | accuracy |") and "ResSFL (lite)" in report
    for stage in ("transfer_lite", "transfer_scratch"):
        assert os.path.exists(tmp_path / stage / "attack" / "summary.json")
    # A second run reuses everything (it would fail if it retrained: workdirs hold checkpoints).
    again = pipeline.run(config, str(tmp_path))
    assert again["rows"] == summary["rows"]


def test_unknown_mode_is_refused(tmp_path):
    config = pipeline_config.get_config("smoke")
    config.modes = "lite,finetune"
    with pytest.raises(ValueError, match="finetune"):
        pipeline.run(config, str(tmp_path))
