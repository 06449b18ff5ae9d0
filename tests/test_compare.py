"""``experiments.compare``: the defense sweep, one attack protocol for all, the report."""

import os

import pytest

from experiments import compare
from experiments.configs import compare as compare_config


def test_parse_posthoc():
    assert compare.parse_posthoc("laplace:10,12.5; topk:0.5;") == [
        ("laplace", 10.0), ("laplace", 12.5), ("topk", 0.5)]
    with pytest.raises(ValueError, match="kind:s1,s2"):
        compare.parse_posthoc("laplace")
    with pytest.raises(ValueError, match="ratio"):
        compare.parse_posthoc("dropout:1.5")
    with pytest.raises(ValueError, match="blur"):
        compare.parse_posthoc("blur:1")


def test_cpu_plan_reuses_the_pipeline_runs(tmp_path):
    methods = compare.plan(compare_config.get_config("cpu"), str(tmp_path))
    names = [(m["method"], m["setting"], os.path.basename(m["dir"]), m["defense"])
             for m in methods]
    assert names == [
        ("vanilla", "no bottleneck", "vanilla", None),
        ("gaussian (post-hoc)", "gaussian 5", "vanilla", ("gaussian", 5.0)),
        ("gaussian (post-hoc)", "gaussian 10", "vanilla", ("gaussian", 10.0)),
        ("laplace (post-hoc)", "laplace 10", "vanilla", ("laplace", 10.0)),
        ("laplace (post-hoc)", "laplace 20", "vanilla", ("laplace", 20.0)),
        ("dropout (post-hoc)", "dropout 0.2", "vanilla", ("dropout", 0.2)),
        ("topk (post-hoc)", "topk 0.5", "vanilla", ("topk", 0.5)),
        ("bottleneck", "norelu_C4S1", "bottleneck_norelu_C4S1", None),
        ("bottleneck", "norelu_C8S1", "transfer_scratch", None),  # the pipeline's scratch run
        ("NoPeek", "alpha 1", "nopeek_1", None),
        ("ResSFL", "alpha 0.3", "transfer_lite", None)]           # the pipeline's lite run
    nopeek = methods[9]["train"]
    assert nopeek.defense.nopeek_alpha == 1.0 and nopeek.model.bottleneck == "None"
    assert methods[-1]["train"].transfer.mode == "lite"


@pytest.mark.parametrize("preset,source,target", [("paper_cifar100", "cifar10", "cifar100"),
                                                   ("paper_cifar10", "cifar100", "cifar10")])
def test_paper_presets_train_the_reference_table4_sweeps(tmp_path, preset, source, target):
    config = compare_config.get_config(preset)
    methods = compare.plan(config, str(tmp_path))
    settings = [m["setting"] for m in methods]
    assert settings[:4] == ["no bottleneck", "laplace 10", "laplace 12.5", "laplace 20"]
    assert {"norelu_C16S1", "alpha 2", "alpha 0.3", "topk 0.7"} <= set(settings)
    for m in methods:
        assert m["train"].data.dataset == target
    assert methods[-1]["train"].transfer.mode == "lite"
    from experiments.configs import pretrain as pretrain_config
    assert pretrain_config.get_config(config.pretrain_preset).data.dataset == source


@pytest.mark.slow
def test_smoke_compare_writes_report_plot_and_grids(smoke_expert, tmp_path):
    config = compare_config.get_config("smoke")
    config.expert = smoke_expert
    summary = compare.run(config, str(tmp_path))
    rows = {(r["method"], r["setting"]): r for r in summary["rows"]}
    assert set(rows) == {("vanilla", "no bottleneck"), ("laplace (post-hoc)", "laplace 10"),
                         ("NoPeek", "alpha 1"), ("ResSFL", "alpha 0.3")}
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and 0 < row["attack_mse"] < 1
    # The post-hoc defense attacks the vanilla model: same training run, own attack.
    assert os.path.exists(tmp_path / "vanilla" / "attack_laplace_10" / "summary.json")
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("| method | setting | accuracy |") and "NoPeek" in report
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000
    assert (tmp_path / "reconstructions.png").exists()
    assert summary["grid_rows"][0] == "targets" and len(summary["grid_rows"]) == 5
