"""``experiments.benchmark`` end to end at tiny width (the numbers themselves are not tested)."""

import gzip
import json
import os
import subprocess
import sys

import jax
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


FAKE_TORCH = """#!/bin/sh
# Stands in for the torch interpreter: logs its arguments and writes the reference harness's
# JSON (experiments/torch_reference.py) with a canned 0.01 s per client step.
echo "$@" >> "$(dirname "$0")/calls"
[ -n "$FAIL" ] && exit 3
for a in "$@"; do case $a in --out=*) out=${a#--out=};; --configs=*) cfg=${a#--configs=};; esac
done
printf '[{"name": "%s", "step_s": [0.01, 0.01]}]' "$cfg" > "$out"
"""


def _fake_reference(tmp_path):
    reference = tmp_path / "ResSFL"
    reference.mkdir()
    (reference / "MIA_torch.py").write_text("")
    python = tmp_path / "fake_python"
    python.write_text(FAKE_TORCH)
    python.chmod(0o755)
    return reference, python


@pytest.mark.parametrize("fail", [False, True])
def test_torch_reference_blocks_alternate_and_give_ratios(tmp_path, monkeypatch, fail):
    reference, python = _fake_reference(tmp_path)
    if fail:
        monkeypatch.setenv("FAIL", "1")
    out = tmp_path / "out"
    flags.FLAGS(["benchmark", "--steps=attack_conv_normN0C16", "--width_mult=0.0625",
                 "--repeats=4", "--blocks=2", "--conv_impl=xla", f"--out={out}",
                 f"--torch_reference={reference}", f"--torch_python={python}"])
    try:
        benchmark.main([])
    finally:
        flags.FLAGS.unparse_flags()
    calls = (tmp_path / "calls").read_text().splitlines()
    (r,) = json.loads((out / "benchmark.json").read_text())["results"]
    if fail:  # ours are kept; the reference's failure ends the alternation
        assert len(calls) == 1 and len(r["times"]) == 4 and "ratio_vs_torch" not in r
        return
    # Two blocks of ours (4 timed calls each, pooled) alternate with two of the reference's
    # (repeats // blocks = 2 calls each), which times the same work under its own name.
    assert len(calls) == 2 and len(r["times"]) == 8
    assert all(f"--reference={reference}" in c and "--configs=attack_conv_normN0C16" in c
               and "--repeats=2" in c and "--device=cpu" in c for c in calls)
    assert r["torch_images_per_sec"] == pytest.approx(32 / 0.01)  # the attack's batch is 32
    assert r["ratio_vs_torch"] == pytest.approx(r["images_per_sec"] / 3200)
    assert "ours/torch" in (out / "benchmark.md").read_text()


def test_a_bad_torch_reference_is_refused_before_timing(tmp_path):
    reference, python = _fake_reference(tmp_path)
    with pytest.raises(ValueError, match="no MIA_torch.py there"):
        benchmark.check_torch_reference(str(tmp_path), str(python))
    with pytest.raises(ValueError, match="setup_torch_reference.sh"):
        benchmark.check_torch_reference(str(reference), str(tmp_path / "no_python"))
    benchmark.check_torch_reference(str(reference), str(python))


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


def test_settings_shard_training_steps_and_skip_uneven_splits(capsys):
    got = benchmark.make_settings(["vanilla", "lite", "attack_conv_normN0C16"], [2, 3],
                                  ["parallel"], ["auto"], [1, 2])
    assert got == [("vanilla", 2, "parallel", "auto", 1), ("vanilla", 3, "parallel", "auto", 1),
                   ("vanilla", 2, "parallel", "auto", 2), ("lite", 2, "parallel", "auto", 1),
                   ("lite", 2, "parallel", "auto", 2),
                   ("attack_conv_normN0C16", 1, "parallel", "auto", 1)]
    assert "skipping vanilla K=3 on 2 devices" in capsys.readouterr().out
    # Weak scaling: K counts clients per device; the expert's one client becomes one per device.
    weak = benchmark.make_settings(["vanilla", "expert"], [3], ["parallel", "sequential"],
                                   ["xla"], [1, 4], weak_scaling=True)
    assert [(s, k, sc, n) for s, k, sc, _, n in weak] == [
        ("vanilla", 3, "parallel", 1), ("vanilla", 3, "sequential", 1),
        ("vanilla", 12, "parallel", 4), ("vanilla", 12, "sequential", 4),
        ("expert", 1, "parallel", 1), ("expert", 1, "sequential", 1),
        ("expert", 4, "parallel", 4), ("expert", 4, "sequential", 4)]


def test_scaling_efficiency_compares_equal_clients_per_device():
    rows = [dict(step="vanilla", scheme="parallel", conv_impl="xla", num_clients=k, devices=n,
                 images_per_sec=v)
            for k, n, v in [(4, 1, 100.0), (8, 2, 180.0), (8, 1, 120.0), (16, 4, 100.0)]]
    benchmark.add_scaling(rows)
    assert [r["images_per_sec_per_device"] for r in rows] == [100.0, 90.0, 120.0, 25.0]
    # 2 devices x 4 clients vs 1 device x 4 clients: 90 / 100. No 1-device K=4 baseline for
    # 4 devices x 4 clients? It is the first row: 25 / 100.
    assert "scaling_efficiency" not in rows[0] and "scaling_efficiency" not in rows[2]
    assert rows[1]["scaling_efficiency"] == pytest.approx(0.9)
    assert rows[3]["scaling_efficiency"] == pytest.approx(0.25)


def test_device_counts_name_the_devices_and_the_fix():
    assert benchmark.device_counts(["1", "-1"]) == [1, jax.device_count()]
    with pytest.raises(ValueError, match=r"--devices=99: this job sees .*device_count=N"):
        benchmark.device_counts(["99"])


SHARDED_BUILD = """
import jax, numpy as np
from absl import flags
from experiments import benchmark
flags.FLAGS(["benchmark", "--width_mult=0.0625", "--batch_size=4", "--conv_impl=xla"])
outs = []
for n in (1, 2):
    fn, args, samples, _ = benchmark.build("vanilla", 4, "parallel", devices=n)
    state = fn(*args)
    leaf = jax.tree.leaves(state.clients.params)[0]
    assert len(leaf.sharding.device_set) == n, leaf.sharding
    assert samples == 16
    outs.append(jax.device_get((state.clients.params, state.server.params)))
for a, b in zip(*(jax.tree.leaves(o) for o in outs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("OK")
"""


def test_sharded_build_runs_the_same_round_on_two_devices():
    # Its own process: the device count is fixed when JAX starts.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip())
    out = subprocess.run([sys.executable, "-c", SHARDED_BUILD], env=env, capture_output=True,
                         text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
