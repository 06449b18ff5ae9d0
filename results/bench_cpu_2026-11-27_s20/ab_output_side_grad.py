"""Ad hoc A/B: the benchmark's build() with variants of layers._sum_tap_windows's VJP."""
import functools, sys, time
sys.path.insert(0, '.')
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from absl import flags
from experiments import benchmark
from ressfl_jax.models import layers
flags.FLAGS(['x'])

orig = layers._sum_tap_windows
fwd_sum = orig.__wrapped__ if hasattr(orig, '__wrapped__') else None

def make(bwd_kind):
    @functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
    def f(z, ksize, strides):
        return orig(z, ksize, strides)
    def fwd(z, ksize, strides):
        return orig(z, ksize, strides), z.shape[1:3]
    def bwd(ksize, strides, padded_hw, dy):
        (kh, kw), (sh, sw), (hp, wp) = ksize, strides, padded_hw
        _, h, w, _ = dy.shape
        zero = jnp.zeros((), dy.dtype)
        if bwd_kind in ("barrier", "barrier_once"):
            dy = lax.optimization_barrier(dy)
        if bwd_kind == "barrier_once" and (sh, sw) == (1, 1):
            dyp = lax.pad(dy, zero, [(0, 0, 0), (kh - 1, hp - h, 0), (kw - 1, wp - w, 0), (0, 0, 0)])
            grads = [dyp[:, kh - 1 - i:kh - 1 - i + hp, kw - 1 - j:kw - 1 - j + wp, :]
                     for i in range(kh) for j in range(kw)]
            return (jnp.stack(grads, axis=3),)
        grads = []
        for i in range(kh):
            for j in range(kw):
                grads.append(lax.pad(dy, zero, [(0, 0, 0), (i, hp - i - (h - 1) * sh - 1, sh - 1),
                                                 (j, wp - j - (w - 1) * sw - 1, sw - 1), (0, 0, 0)]))
        return (jnp.stack(grads, axis=3),)
    f.defvjp(fwd, bwd)
    return f

variants = {"new": orig, "old": make("old"), "orig": orig, "barrier": make("barrier"), "barrier_once": make("barrier_once")}
steps = sys.argv[1].split(",")
names = sys.argv[2].split(",")
reps = int(sys.argv[3])
for step in steps:
    built = {}
    for name in names:
        layers._sum_tap_windows = variants[name]
        st, _, k = step.partition(":"); fn, args, n, _ = benchmark.build(st, int(k or 1), "parallel")
        fn = fn.lower(*args).compile()
        args = (jax.block_until_ready(fn(*args)),) + tuple(args[1:])
        built[name] = [fn, args]
    layers._sum_tap_windows = orig
    times = {name: [] for name in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            fn, args = built[name]
            t = time.perf_counter()
            out = jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t)
            built[name][1] = (out,) + tuple(args[1:])
    base = np.median(times[names[0]])
    print(step, " ".join(f"{k}={np.median(v)*1e3:.1f}ms({base/np.median(v):.2f}x)" for k, v in times.items()), flush=True)
