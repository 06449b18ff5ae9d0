"""Ad hoc A/B of BENCHMARKS.md "Output-side conv's gradient, once" (2026-11-27, dev VM).

The benchmark's ``build`` compiled twice, with the output-side conv's gradient as it was before
commit 51412b6 ("old": kh*kw interior-padded copies of dy, no barrier; kept here on purpose, it
is the measured baseline) and as it is in ``ressfl_jax.models.layers`` ("new"), then timed in
alternating calls; prints the median per call and old/new. From the repository root:

  python results/bench_cpu_2026-11-27_s20/ab_output_side_grad.py \
      attack_conv_normN0C16,attack_res_normN4C64,lite:2,expert,vanilla old,new 9

(``step:K`` picks K clients, default 1.) The "quiet, jemalloc" column ran with
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`` and 11 calls, the other columns
without it. The "beside a training" column was measured by an earlier draft of this script
whose "new" variant was the same code.
"""
import functools
import sys
import time

sys.path.insert(0, ".")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from jax import lax  # noqa: E402

from experiments import benchmark  # noqa: E402
from ressfl_jax.models import layers  # noqa: E402

flags.FLAGS(["ab"])
new = layers._sum_tap_windows


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def old(z, ksize, strides):
    return new(z, ksize, strides)


def _old_fwd(z, ksize, strides):
    return new(z, ksize, strides), z.shape[1:3]


def _old_bwd(ksize, strides, padded_hw, dy):
    (kh, kw), (sh, sw), (hp, wp) = ksize, strides, padded_hw
    _, h, w, _ = dy.shape
    zero = jnp.zeros((), dy.dtype)
    grads = [lax.pad(dy, zero, [(0, 0, 0), (i, hp - i - (h - 1) * sh - 1, sh - 1),
                                (j, wp - j - (w - 1) * sw - 1, sw - 1), (0, 0, 0)])
             for i in range(kh) for j in range(kw)]
    return (jnp.stack(grads, axis=3),)


old.defvjp(_old_fwd, _old_bwd)
VARIANTS = {"old": old, "new": new}


def main(steps, names, reps):
    for step in steps:
        built = {}
        for name in names:
            layers._sum_tap_windows = VARIANTS[name]
            kind, _, k = step.partition(":")
            fn, args, _, _ = benchmark.build(kind, int(k or 1), "parallel")
            fn = fn.lower(*args).compile()
            built[name] = [fn, (jax.block_until_ready(fn(*args)),) + tuple(args[1:])]
        layers._sum_tap_windows = new
        times = {name: [] for name in names}
        for r in range(reps):
            for name in (names if r % 2 == 0 else names[::-1]):
                fn, args = built[name]
                start = time.perf_counter()
                out = jax.block_until_ready(fn(*args))
                times[name].append(time.perf_counter() - start)
                built[name][1] = (out,) + tuple(args[1:])
        base = np.median(times[names[0]])
        print(step, " ".join(f"{k}={np.median(v) * 1e3:.1f}ms({base / np.median(v):.2f}x)"
                             for k, v in times.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2].split(","), int(sys.argv[3]))
