"""A/B: XLA-CPU's YNNPACK fusion kinds, one process, alternating calls of two compiles.

Ad hoc (session 21, 2026-11-28, dev VM, jaxlib 0.10.2; run BESIDE a CIFAR-10 training, so the
ratios are rough): `default` is XLA-CPU's own choice (YNNPACK fuses dots, eltwise and reduce
ops); `dot_only` restricts YNNPACK to dots, which removes the materialised broadcasts (ReLU's
zero, BN bias) that the eltwise fusions take as operands. Prints, per step, the fusion counts of
the compiled entry computation and the median call time of each variant. Command (repo root):

    PYTHONPATH=. .venv/bin/python results/bench_cpu_2026-11-28_s21/ab_ynn_fusion.py \
        attack_conv_normN0C16 8
    PYTHONPATH=. .venv/bin/python results/bench_cpu_2026-11-28_s21/ab_ynn_fusion.py vanilla,expert 6

Measured (speed-up = default / dot_only time): attack_conv_normN0C16 0.77, vanilla 0.85,
expert 1.04. Dropped: YNNPACK's eltwise/reduce fusions pay overall.
"""
import sys, time, re, collections
import numpy as np
import jax
from absl import flags
from experiments import benchmark
flags.FLAGS(["x"])
steps = sys.argv[1].split(","); calls = int(sys.argv[2])
variants = {"default": {}, "dot_only": {"xla_cpu_experimental_ynn_fusion_type":
                                         "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}}
for spec in steps:
    step, k = (spec.split(":") + ["1"])[:2]
    comp = {}
    for name, opts in variants.items():
        fn, args, samples, _ = benchmark.build(step, int(k), "parallel")
        c = fn.lower(*args).compile(compiler_options=opts)
        txt = c.as_text(); entry = txt[txt.index("ENTRY"):]
        names = re.finditer(r"%([a-z_]+?)(?:\.\d+)? = ", entry)
        cnt = collections.Counter(m.group(1) for m in names)
        print(spec, name, "ynn", cnt["ynn_fusion"], "wrapped_broadcast", cnt["wrapped_broadcast"],
              "bitcast_broadcast_fusion", cnt["bitcast_broadcast_fusion"], flush=True)
        a = args
        for _ in range(2):
            out = c(*a); jax.block_until_ready(out); a = (out,) + tuple(a[1:])
        comp[name] = [c, a, []]
    for i in range(calls):
        for name in (list(comp) if i % 2 == 0 else list(comp)[::-1]):
            c, a, ts = comp[name]
            t = time.perf_counter(); out = c(*a); jax.block_until_ready(out)
            ts.append(time.perf_counter() - t); comp[name][1] = (out,) + tuple(a[1:])
    med = {n: float(np.median(v[2])) for n, v in comp.items()}
    print(spec, {n: round(m, 4) for n, m in med.items()},
          "speed-up", round(med["default"] / med["dot_only"], 3), flush=True)
