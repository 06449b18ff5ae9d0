"""``experiments.benchmark`` end to end at tiny width (the numbers themselves are not tested)."""

import gzip
import json

import pytest
from absl import flags

from experiments import benchmark, profiling
from ressfl_jax.flops import compiled_flops, lowered_flops


def test_benchmark_writes_every_setting(tmp_path):
    # lite is built (its samples checked) but not timed: its 5-round program is the costliest
    # compile here, and it is timed by the same code path as vanilla.
    flags.FLAGS(["benchmark", "--steps=vanilla,attack_conv_normN0C16",
                 "--num_clients=1,2", "--width_mult=0.0625", "--batch_size=4", "--repeats=1",
                 # XLA's conv compiles faster than im2col; test_models checks im2col == xla.
                 "--conv_impl=xla", "--profile_calls=1", f"--out={tmp_path}"])
    try:
        benchmark.main([])
        # The attack call scans 10 decoder steps; XLA's cost analysis counts a scan body once,
        # so the reported FLOPs must be ~10x what it says for the whole call.
        fn, args, _, flops = benchmark.build("attack_conv_normN0C16", 1, "parallel")
        xla_count = compiled_flops(fn, *args)
        assert 9 * xla_count < flops < 11 * xla_count
        # On a GPU, compiled convs are cuDNN calls that XLA counts as 0 FLOPs: there the
        # FLOPs are counted on the lowered im2col program, the vanilla step's at K=1 scaled by
        # K. The scaling must match the K=2 program's own count (lowering only, no compile).
        scaled = benchmark.setting_flops("vanilla", 2, "parallel")
        fn2, args2, _, _ = benchmark.build("vanilla", 2, "parallel", "im2col")
        direct = lowered_flops(fn2, *args2)
        lite_samples = benchmark.build("lite", 2, "parallel")[2]
    finally:
        flags.FLAGS.unparse_flags()
    with open(tmp_path / "benchmark.json") as f:
        report = json.load(f)
    got = [(r["step"], r["num_clients"]) for r in report["results"]]
    assert got == [("vanilla", 1), ("vanilla", 2), ("attack_conv_normN0C16", 1)]
    for r in report["results"]:
        assert r["flops"] > 0 and r["images_per_sec"] > 0 and len(r["times"]) == 1
        assert len(r["minor_faults"]) == len(r["system_s"]) == 1 and r["minor_faults"][0] >= 0
        assert "ratio_vs_torch" not in r  # no --torch_reference
    assert abs(scaled / direct - 1) < 0.02
    # One lite call is a whole interval cycle: 5 rounds x 2 clients x 4 images.
    assert lite_samples == 40
    assert report["matmul_peak_gflops"] > 0
    assert report["host_peak_rss_mb"] > 50  # the interpreter, jax and the compiled programs
    rows = [line for line in (tmp_path / "benchmark.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| step")]
    assert len(rows) == 3
    # --profile_calls: one top-ops table per setting, with XLA op names (not runtime wrappers).
    profile = (tmp_path / "profile.md").read_text()
    assert profile.count("| op | ms per call |") == 3
    assert "ThunkExecutor::" not in profile and "| `$" not in profile


def _write_trace(path, events):
    path.mkdir(parents=True)
    with gzip.open(path / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_op_times_sums_device_events_per_name(tmp_path):
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}}]
    events = meta + [
        {"ph": "X", "pid": 7, "name": "fusion.3", "dur": 1500.0},
        {"ph": "X", "pid": 7, "name": "fusion.3", "dur": 500.0},
        {"ph": "X", "pid": 7, "name": "gemm", "dur": 250.0},
        {"ph": "X", "pid": 1, "name": "host_only", "dur": 9e6},  # not the device's: dropped
        {"ph": "i", "pid": 7, "name": "instant"},  # no duration: dropped
    ]
    _write_trace(tmp_path / "plugins" / "profile" / "run1", events)
    rows = profiling.op_times(str(tmp_path))
    assert [(r["name"], r["total_ms"], r["count"]) for r in rows] == [
        ("fusion.3", 2.0, 2), ("gemm", 0.25, 1)]
    assert rows[0]["process"] == "/device:GPU:0"
    table = profiling.markdown(rows, calls=2, wall_s=0.004)
    assert "| `fusion.3` | 1.000 | 88.9 | 1.0 | /device:GPU:0 |" in table
    assert "2.00 ms wall per call" in table


def test_op_times_on_cpu_drops_python_frames_and_runtime_wrappers(tmp_path):
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
              {"ph": "X", "pid": 1, "name": "$api.py:10 block_until_ready", "dur": 5.0},
              {"ph": "X", "pid": 1, "name": "ThunkExecutor::Execute", "dur": 5.0},
              {"ph": "X", "pid": 1, "name": "dot.4", "dur": 3.0}]
    _write_trace(tmp_path / "t", events)
    assert [r["name"] for r in profiling.op_times(str(tmp_path))] == ["dot.4"]


def test_op_times_names_a_missing_trace(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .*trace.json.gz under"):
        profiling.op_times(str(tmp_path))


def test_benchmark_refuses_unknown_steps():
    benchmark.check_steps(["vanilla", "expert", "expert_hinge_off", "lite",
                           "attack_res_normN4C64"])
    with pytest.raises(ValueError, match="unknown step 'experts'"):
        benchmark.check_steps(["vanilla", "experts"])
    with pytest.raises(ValueError, match="unknown decoder type 'res_norm'"):
        benchmark.check_steps(["attack_res_norm"])
