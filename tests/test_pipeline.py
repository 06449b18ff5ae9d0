"""``experiments.pipeline``: pretrain -> transfer -> attack -> table, reusing finished stages."""

import os
import shutil

import pytest

from experiments import pipeline
from experiments.configs import pipeline as pipeline_config


@pytest.mark.slow
def test_smoke_pipeline_reuses_stages_and_writes_the_table(smoke_expert, tmp_path):
    config = pipeline_config.get_config("smoke")
    config.modes = "lite,scratch"
    config.source_vanilla = False
    # One stage alone (as a process beside others would): scratch needs no expert; no report.
    config.stages = "scratch"
    alone = pipeline.run(config, str(tmp_path))
    assert [r["method"] for r in alone["rows"]] == ["scratch"]
    assert sorted(os.listdir(tmp_path)) == ["transfer_scratch"]
    # The expert stage exists already (a copy of the shared smoke expert): it is reused, and so
    # is scratch.
    shutil.copytree(smoke_expert, tmp_path / "expert")
    config.stages = ""
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
    assert summary["rows"][2] == alone["rows"][0]


def test_unknown_stage_is_refused_with_the_pipelines_stages(tmp_path):
    config = pipeline_config.get_config("smoke")
    config.modes, config.source_vanilla = "lite,scratch", False
    for stages, bad in (("expert,naive", "naive"), ("vanilla", "vanilla")):
        config.stages = stages
        with pytest.raises(ValueError, match=rf"\['{bad}'\].*\['expert', 'lite', 'scratch'\]"):
            pipeline.run(config, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_unknown_mode_is_refused(tmp_path):
    config = pipeline_config.get_config("smoke")
    config.modes = "lite,finetune"
    with pytest.raises(ValueError, match="finetune"):
        pipeline.run(config, str(tmp_path))


def test_a_stage_made_with_another_config_is_refused(tmp_path):
    config = pipeline_config.get_config("smoke")
    other = pipeline_config.get_config("smoke").expert
    other.run.num_epochs = 7
    (tmp_path / "expert").mkdir()
    (tmp_path / "expert" / "config.json").write_text(other.to_json())
    (tmp_path / "expert" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match=r"run\.num_epochs: saved 7, requested 2"):
        pipeline.run(config, str(tmp_path))


def test_reuse_check_accepts_the_same_config_and_path_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    config = pipeline_config.get_config("smoke").attack
    config.checkpoint = "ckpt"
    (tmp_path / "config.json").write_text(config.to_json())
    config.checkpoint = str(tmp_path / "ckpt")          # the same folder, spelled absolute
    pipeline.check_reusable(config, str(tmp_path))
    config.checkpoint = str(tmp_path)                   # another folder
    with pytest.raises(ValueError, match="checkpoint"):
        pipeline.check_reusable(config, str(tmp_path))


def test_cpu_preset_scales_every_stage_and_cpu_full_is_the_stage_presets():
    from experiments.configs import attack, pretrain, transfer
    fast, full = pipeline_config.get_config("cpu"), pipeline_config.get_config("cpu_full")
    for stage in (fast.expert, fast.target):
        assert stage.data.dataset_portion == 0.1 and stage.run.num_epochs == 1
        assert stage.attacker.pretrain_epochs == 2
    assert fast.attack.aux_max == 1000 and fast.attack.optimization.steps == 0
    assert full.expert.to_json() == pretrain.get_config("cpu").to_json()
    assert full.target.to_json() == transfer.get_config("cpu").to_json()
    assert full.attack.to_json() == attack.get_config("cpu").to_json()


def test_cifar10_split_preset_transfers_between_disjoint_class_halves():
    from experiments.configs import attack, pretrain, transfer
    c = pipeline_config.get_config("cifar10_split")
    e, t = c.expert, c.target
    # The paper's expert and Table 3 transfer settings, on the two halves of CIFAR-10.
    assert (e.data.dataset, e.data.classes, t.data.dataset, t.data.classes) == (
        "cifar10", "0-4", "cifar10", "5-9")
    for key in ("arch", "cut_layer", "bottleneck", "width_mult"):   # transfer's check passes
        assert e.model[key] == t.model[key] == pretrain.get_config("paper_cifar10").model[key]
    paper_target = transfer.get_config("paper_cifar10_to_cifar100")
    assert (t.data.num_clients, t.run.scheme, t.attacker.decoder, t.attacker.interval) == (
        2, "sequential", "conv_normN0C16", 5) == (
        paper_target.data.num_clients, paper_target.run.scheme, paper_target.attacker.decoder,
        paper_target.attacker.interval)
    assert (e.attacker.decoder, e.attacker.alpha, e.attacker.threshold, e.optim.lr) == (
        "res_normN4C64", 0.3, 0.5, 0.05)
    # Cut to 2 cores: 5 + 3 epochs, the LR milestone at each stage's last epoch, no LR-0 epoch.
    assert (e.run.num_epochs, e.optim.milestones, t.run.num_epochs, t.optim.milestones) == (
        5, (5,), 3, (3,))
    assert not e.optim.zero_lr_first_epoch and not t.optim.zero_lr_first_epoch
    assert e.data.dataset_portion == t.data.dataset_portion == 1.0
    assert c.attack.decoders == "res_normN4C64" and c.attack.aux_max == 5000
    assert c.attack.epochs == 20 and c.attack.targets == attack.get_config().targets == "train"


def test_only_expert_modes_record_the_expert_path():
    from experiments import transfer
    assert [transfer.expert_for(m, "E") for m in ("lite", "naive", "freeze")] == ["E"] * 3
    assert transfer.expert_for("scratch", "E") == ""
    assert transfer.expert_for("attacker_aware_from_scratch", "E") == ""
