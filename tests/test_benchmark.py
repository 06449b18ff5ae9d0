"""``experiments.benchmark`` end to end at tiny width (the numbers themselves are not tested)."""

import json

from absl import flags

from experiments import benchmark
from ressfl_jax.flops import compiled_flops, lowered_flops


def test_benchmark_writes_every_setting(tmp_path):
    # lite is built (its samples checked) but not timed: its 5-round program is the costliest
    # compile here, and it is timed by the same code path as vanilla.
    flags.FLAGS(["benchmark", "--steps=vanilla,attack_conv_normN0C16",
                 "--num_clients=1,2", "--width_mult=0.0625", "--batch_size=4", "--repeats=1",
                 # XLA's conv compiles faster than im2col; test_models checks im2col == xla.
                 "--conv_impl=xla", f"--out={tmp_path}"])
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
        assert "ratio_vs_torch" not in r  # no --torch_reference
    assert abs(scaled / direct - 1) < 0.02
    # One lite call is a whole interval cycle: 5 rounds x 2 clients x 4 images.
    assert lite_samples == 40
    assert report["matmul_peak_gflops"] > 0
    rows = [line for line in (tmp_path / "benchmark.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| step")]
    assert len(rows) == 3
