"""Throughput of the jitted steps, optionally side by side with the PyTorch reference.

  python -m experiments.benchmark                                  # all steps, K = 1, 2, 10
  python -m experiments.benchmark --steps=vanilla --num_clients=1,2,10,100 \
      --schemes=parallel,sequential
  python -m experiments.benchmark --torch_reference=/work/ref/ResSFL --out=runs/bench
  python -m experiments.benchmark --steps=vanilla --num_clients=16 --devices=1,2,4,8 \
      --weak_scaling                       # K = 16 per device, sharded over 1..8 devices

Steps, at the paper's shapes (VGG-11-bn, cut 4, ``norelu_C8S1``, batch 128 per client, synthetic
CIFAR-sized data, augmentation off because the reference augments in its data loader, outside
its timed calls):
  ``vanilla``  one SFL round (K client steps).
  ``expert``   the expert's attacker-aware round: res_normN4C64 decoder update + CE + SSIM
               penalty, with the penalty's gradient every round (tau = 0: alpha * SSIM, the
               work of an open hinge; the reference's ``expert_hinge_active``).
  ``expert_hinge_off``  the same round with tau = 0.5 and the hinge closed (the fresh decoder's
               SSIM on these random images is ~0.18): no backward through the decoder, as in
               a run whose simulated attacker stays below tau (the reference's ``expert``).
  ``lite``     the transfer's lite round: conv_normN0C16, interval 5, tau 0.5 (hinge closed,
               as in the reference's ``lite_k2``); one call = 5 rounds.
  ``attack_<decoder>``  the MI attacker's decoder training, batch 32; one call = 10 steps.
Per setting: compile time, median seconds per call and its min-max over ``--repeats`` timed
calls, img/s (client samples per second), XLA's FLOP count of one call, achieved GFLOP/s and its
fraction of this device's measured f32 matmul peak, XLA's memory estimate of the program, and
the host's minor page faults and kernel (system) seconds per call (medians; see
``ressfl_jax/host_memory.py``).

``--torch_reference`` times the reference's own per-batch calls for the matching configurations
(``experiments/torch_reference.py`` in ``.venv-torch``) in alternating blocks with ours, and
reports ours/theirs. The reference's process inherits this one's host allocator (jemalloc where
installed, see ``ressfl_jax/host_memory.py``; ``RESSFL_JEMALLOC=0`` runs both on glibc).
Results go to ``--out``/benchmark.{json,md}.

``--devices`` shards the training steps' K client slots (and their decoders and optimizer
states) over that many devices, as ``run.devices`` does in training (``ressfl_jax/sharding.py``;
the server replicated). ``--weak_scaling`` reads ``--num_clients`` per device (K = that x
devices); otherwise a K not divisible by a device count is skipped. Each sharded setting
reports its img/s per device and its scaling efficiency: that per-device rate over the rate of
the one-device setting with the same clients per device (the issue's target: >= 90%).
"""

import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments import common, profiling
from ressfl_jax import host_memory, optim, sharding
from ressfl_jax.flops import lowered_flops
from ressfl_jax.models import build_split_model, feature_shape
from ressfl_jax.models.decoders import build_decoder, parse_decoder
from ressfl_jax.state import TrainState, create_sfl_state
from ressfl_jax.training import decoder_fit, ressfl, sfl

_STEPS = flags.DEFINE_list("steps", ["vanilla", "expert", "expert_hinge_off", "lite",
                                     "attack_res_normN4C64", "attack_conv_normN0C16"],
                           "Steps to time.")
_CLIENTS = flags.DEFINE_list("num_clients", ["1", "2", "10"], "K for the vanilla step.")
_SCHEMES = flags.DEFINE_list("schemes", ["parallel"], "Server schedules.")
_DEVICES = flags.DEFINE_list("devices", ["1"],
                             "Device counts to shard the training steps' clients over (-1: all).")
_WEAK = flags.DEFINE_bool("weak_scaling", False,
                          "--num_clients counts clients per device (K = that x devices).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Per-client batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 6, "Timed calls per setting (after one warm-up).")
_BLOCKS = flags.DEFINE_integer("blocks", 2, "Alternating ours/theirs blocks (torch mode).")
_CONV = flags.DEFINE_list("conv_impl", ["auto"],
                          "Conv implementations (layers.CONV_IMPLS); several are timed side by "
                          "side, round-robin in one process.")
_WIDTH = flags.DEFINE_float("width_mult", 1.0, "Channel width multiplier (tests: 1/16).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(common.COMPUTE_DTYPES),
                           "Compute dtype of models and decoders (bfloat16: mixed precision, "
                           "float32 params).")
_TORCH = flags.DEFINE_string("torch_reference", "", "Checkout of zlijingtao/ResSFL.")
_TORCH_PY = flags.DEFINE_string("torch_python", ".venv-torch/bin/python", "Torch interpreter.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads.")
_TORCH_DEVICE = flags.DEFINE_enum("torch_device", "cpu", ["cpu", "cuda"],
                                  "Where the reference runs: cpu (.cuda() neutralised) or cuda.")
_OUT = flags.DEFINE_string("out", "", "Output directory for benchmark.json / benchmark.md.")
_PROFILE = flags.DEFINE_integer("profile_calls", 0,
                                "After timing, trace this many calls of each setting with "
                                "jax.profiler (first block only) and write the top ops per "
                                "setting to --out/profile.md (0: no profile).")

# Our setting -> the torch harness's configuration of the same work.
TORCH_NAMES = {("vanilla", 1): "vanilla_k1", ("vanilla", 10): "vanilla_k10",
               ("vanilla", 100): "vanilla_k100",
               ("expert", 1): "expert_hinge_active", ("expert_hinge_off", 1): "expert",
               ("lite", 2): "lite_k2",
               ("attack_res_normN4C64", 1): "attack_res_normN4C64",
               ("attack_conv_normN0C16", 1): "attack_conv_normN0C16"}


def matmul_peak(dtype="float32") -> float:
    """Measured GFLOP/s of a square ``dtype`` matmul on the default device.

    2048^2 on CPU; 8192^2 on an accelerator, where a small product is mostly launch latency.
    """
    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (n, n)), jnp.dtype(dtype))
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(5 if n == 2048 else 20):
        start = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def setting_flops(step: str, k: int, scheme: str, conv_impl: str = "im2col") -> float:
    """FLOPs of one timed call of a setting: its arithmetic, as XLA counts it before compiling.

    With ``conv_impl="im2col"`` every conv is a matmul, whose FLOPs XLA counts exactly
    (2*M*N*K); XLA's count of its own convolution ops misses part of the backward pass. The
    benchmark's FLOP/s on an accelerator use this count. The vanilla step's work is linear in K
    (K client batches, one server batch of K*B), so it is counted at K=1 and scaled. XLA counts
    both branches of a ``lax.cond``: ``expert_hinge_off`` subtracts the penalty's backward,
    which its closed hinge skips (``lite``'s closed hinge and its decoder update on 1 round of
    5 are counted in full: about 1% of its call).
    """
    fn, args, _, flops = build(step, 1 if step == "vanilla" else k, scheme, conv_impl)
    if flops is not None:  # the attack's call: counted per decoder step by ``build``
        return flops
    if step == "expert_hinge_off":
        return lowered_flops(fn, *args) - _penalty_backward_flops(conv_impl)
    return (k if step == "vanilla" else 1) * lowered_flops(fn, *args)


def _penalty_backward_flops(conv_impl: str) -> float:
    """FLOPs of the expert penalty's backward through the frozen decoder to the features."""
    model = _model(conv_impl)
    decoder, decoders = _simulated_attacker("expert", model, conv_impl, num_clients=1)
    dec = jax.tree.map(lambda x: x[0], decoders)
    penalty = ressfl.make_penalty(decoder, alpha=_ALPHA, threshold=0.0, kind="ssim")
    z = jnp.zeros((_BATCH.value,) + tuple(feature_shape(model)), jnp.float32)
    x = jnp.zeros((_BATCH.value, 32, 32, 3), jnp.float32)
    value = lambda z: penalty(dec, z, x)[0]  # noqa: E731
    return lowered_flops(jax.grad(value), z) - lowered_flops(value, z)


def _dtype():
    return common.COMPUTE_DTYPES[_DTYPE.value]


_ALPHA = 0.3  # the penalty weight of the expert and lite rounds (reference: 0.3)


def _simulated_attacker(step: str, model, conv_impl: str, num_clients: int):
    """(decoder, its stacked states [K]) of a training step's simulated attacker: the expert's
    res_normN4C64 or lite's conv_normN0C16, Adam 1e-3, the same initial weights everywhere."""
    feats = feature_shape(model)
    decoder = build_decoder("res_normN4C64" if step.startswith("expert") else "conv_normN0C16",
                            feature_shape=feats, conv_impl=conv_impl, dtype=_dtype())
    return decoder, ressfl.create_decoders(jax.random.key(2), decoder, num_clients=num_clients,
                                           feature_shape=feats, tx=optax.adam(1e-3))


def _model(conv_impl):
    return build_split_model("vgg11_bn", cut_layer=4, bottleneck="norelu_C8S1", num_classes=10,
                             mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261),
                             width_mult=_WIDTH.value, conv_impl=conv_impl,
                             dtype=_dtype())


def _batch(k, b, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (k, b, 32, 32, 3), np.uint8)),
            "label": jnp.asarray(rng.integers(0, 10, (k, b)), jnp.int32)}


def build(step: str, k: int, scheme: str, conv_impl: str | None = None, devices: int = 1):
    """(call, args, samples per call, FLOPs per call or None) for one setting.

    ``call(*args)`` returns the new args[0]. FLOPs are None where XLA's count of the compiled
    ``call`` is the whole call (no loops). ``conv_impl`` defaults to the first ``--conv_impl``.
    ``devices`` > 1 shards a training step's client slots over that many devices.
    """
    if devices != 1:
        fn, (state, batch, key), samples, flops = build(step, k, scheme, conv_impl)
        mesh = sharding.client_mesh(devices)
        sharding.check_divisible(k, mesh)
        shardings = sharding.state_shardings(state, mesh)
        state = sharding.put(state, shardings)
        batch = sharding.put(batch, jax.tree.map(lambda _: sharding.by_client(mesh), batch))
        key = jax.device_put(key, sharding.replicated(mesh))
        # The output keeps the input's layout, so every timed call runs the compiled program.
        fn = jax.jit(fn, donate_argnums=0, out_shardings=shardings)
        return fn, (state, batch, key), samples, flops
    conv_impl = conv_impl or _CONV.value[0]
    model, b = _model(conv_impl), _BATCH.value
    tx = optim.make_sgd(0.05, momentum=0.9, weight_decay=5e-4)
    if step.startswith("attack_"):
        feats = feature_shape(model)
        decoder = build_decoder(step[len("attack_"):], feature_shape=feats, init="torch",
                                conv_impl=conv_impl, dtype=_dtype())
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(10, 32) + feats), jnp.float32)
        y = jnp.asarray(rng.uniform(size=(10, 32, 32, 32, 3)), jnp.float32)
        v = decoder.init(jax.random.key(0), x[0], train=False)
        state = TrainState.create(apply_fn=decoder.apply, params=v["params"],
                                  tx=optax.adam(1e-3), batch_stats=v["batch_stats"])
        one = functools.partial(decoder_fit._train_step, decoder, "mse")

        def call(state, x, y):
            return jax.lax.scan(lambda s, xy: one(s, *xy), state, (x, y))[0]

        # XLA's cost analysis counts a scan body once, so count one decoder step, times 10.
        flops = 10 * lowered_flops(lambda s, x, y: one(s, x, y)[0], state, x[0], y[0])
        return jax.jit(call, donate_argnums=0), (state, x, y), 10 * 32, flops
    state = create_sfl_state(jax.random.key(0), model, client_tx=tx, server_tx=tx,
                             num_clients=k)
    batch, key = _batch(k, b), jax.random.key(1)
    if step == "vanilla":
        fn = sfl.make_train_step(model=model, schedule=scheme, augment="none")
        return (jax.jit(lambda s, bt, key: fn(s, bt, key)[0], donate_argnums=0),
                (state, batch, key), k * b, None)
    interval = rounds = 1 if step.startswith("expert") else 5
    decoder, decoders = _simulated_attacker(step, model, conv_impl, num_clients=k)
    state = state.replace(decoders=decoders)
    threshold = 0.0 if step == "expert" else 0.5  # "expert": the penalty's gradient always
    fn = ressfl.make_ressfl_step(model=model, decoder=decoder, schedule=scheme, augment="none",
                                 alpha=_ALPHA, threshold=threshold, kind="ssim", interval=interval,
                                 decoder_steps=1, steps_per_epoch=100 * interval)

    def call(state, batch, key):  # ``rounds`` rounds: a whole interval cycle.
        for r in range(rounds):
            state, _ = fn(state, batch, jax.random.fold_in(key, r))
        return state

    return jax.jit(call, donate_argnums=0), (state, batch, key), rounds * k * b, None


def measure(settings, flops, profile_calls=0):
    """Compiles every setting, times them round-robin, optionally profiles; returns results.

    ``flops[(step, k, scheme)]``: the setting's nominal FLOPs per call (``setting_flops``).
    """
    prepared = []
    for step, k, scheme, conv_impl, devices in settings:
        fn, args, samples, _ = build(step, k, scheme, conv_impl, devices)
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - start
        mem = compiled.memory_analysis()
        peak_bytes = None if mem is None else (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                               + mem.output_size_in_bytes)
        start = time.perf_counter()
        args = (jax.block_until_ready(compiled(*args)),) + args[1:]  # warm-up
        # One line per setting as it goes: a run cut by a time limit still says where it was.
        print(f"{step} K={k} {scheme} {conv_impl} devices={devices}: compiled in "
              f"{compile_s:.1f} s, first call {time.perf_counter() - start:.2f} s", flush=True)
        prepared.append(dict(step=step, num_clients=k, scheme=scheme, conv_impl=conv_impl,
                             devices=devices, compiled=compiled,
                             args=args, samples=samples, compile_s=compile_s,
                             flops=flops[(step, k, scheme)],
                             memory_bytes=peak_bytes,
                             times=[], minor_faults=[], system_s=[]))
    for _ in range(_REPEATS.value):
        for p in prepared:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            p["args"] = (jax.block_until_ready(p["compiled"](*p["args"])),) + p["args"][1:]
            p["times"].append(time.perf_counter() - start)
            # Host page faults and kernel time of the call (ressfl_jax/host_memory.py).
            after = resource.getrusage(resource.RUSAGE_SELF)
            p["minor_faults"].append(after.ru_minflt - usage.ru_minflt)
            p["system_s"].append(after.ru_stime - usage.ru_stime)
    if profile_calls:  # After the timing, so that tracing cannot disturb it.
        for p in prepared:
            trace_dir = os.path.join(_OUT.value or ".", "profile",
                                     f"{p['step']}_k{p['num_clients']}_{p['scheme']}"
                                     f"_{p['conv_impl']}_d{p['devices']}")
            rows, wall_s, p["args"] = profiling.profile_calls(
                p["compiled"], p["args"], calls=profile_calls, trace_dir=trace_dir)
            p["profile"] = profiling.markdown(rows, calls=profile_calls, wall_s=wall_s)
    keys = ("step", "num_clients", "scheme", "conv_impl", "devices", "compile_s", "flops",
            "memory_bytes", "times", "minor_faults", "system_s", "samples", "profile")
    return [{k: p[k] for k in keys if k in p} for p in prepared]


def summarise(result: dict, peak: float) -> dict:
    """Adds median, img/s, GFLOP/s and the fraction of the matmul peak from ``times``."""
    median = statistics.median(result["times"])
    return result | {"median_s": median, "images_per_sec": result["samples"] / median,
                     "gflops_per_sec": result["flops"] / median / 1e9,
                     "peak_fraction": result["flops"] / median / 1e9 / peak}


def torch_block(names, repeats):
    """Runs the reference harness once for ``names``; returns {name: result}."""
    out = os.path.join(_OUT.value or ".", "torch_block.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = [_TORCH_PY.value, "-m", "experiments.torch_reference",
           f"--reference={_TORCH.value}", f"--configs={','.join(names)}",
           f"--repeats={repeats}", f"--threads={_THREADS.value}",
           f"--device={_TORCH_DEVICE.value}", f"--out={out}"]
    with open(os.path.join(os.path.dirname(out), "torch_block.log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    with open(out) as f:
        return {r["name"]: r for r in json.load(f)}


TRAIN_STEPS = ("vanilla", "expert", "expert_hinge_off", "lite")


def device_counts(values) -> list[int]:
    """``--devices`` as ints (-1: every device), each checked against this job's devices."""
    available = jax.device_count()
    counts = []
    for v in values:
        n = available if int(v) == -1 else int(v)
        if not 1 <= n <= available:
            raise ValueError(f"--devices={v}: this job sees {available} "
                             f"{jax.default_backend()} device(s); use -1 (all) or 1..{available} "
                             "(on CPU, simulate more with XLA_FLAGS="
                             "--xla_force_host_platform_device_count=N).")
        counts.append(n)
    return counts


def make_settings(steps, num_clients, schemes, conv_impls, devices, weak_scaling=False):
    """(step, K, scheme, conv_impl, devices) tuples: vanilla at every K, lite at K=2 and the
    expert at K=1 (times the device count under weak scaling), attacks once on one device.
    A training setting whose K does not split evenly over its devices is left out (said)."""
    settings = []
    for step in steps:
        attack = step.startswith("attack_")
        per = num_clients if step == "vanilla" else [2] if step == "lite" else [1]
        for n in [1] if attack else devices:
            for k in per:
                total = k * n if weak_scaling else k
                if total % n:
                    print(f"skipping {step} K={total} on {n} devices: K must be divisible by "
                          "the device count", flush=True)
                    continue
                settings += [(step, total, sc, impl, n)
                             for sc in (["parallel"] if attack else schemes)
                             for impl in conv_impls]
    return settings


def check_steps(steps) -> None:
    """Raises ValueError naming a step that is neither a training step nor attack_<decoder>."""
    for step in steps:
        if step in TRAIN_STEPS:
            continue
        if not step.startswith("attack_"):
            raise ValueError(f"unknown step {step!r} in --steps; choose from {TRAIN_STEPS} or "
                             "attack_<decoder type> (e.g. attack_res_normN4C64)")
        parse_decoder(step[len("attack_"):])  # its own clear error for a bad decoder type


def check_torch_reference(reference: str, python: str) -> None:
    """Raises ValueError, before anything is timed, if ``--torch_reference`` is not a checkout
    of the reference or ``--torch_python`` is not an interpreter (both named, with the fix)."""
    if not os.path.isfile(os.path.join(reference, "MIA_torch.py")):
        raise ValueError(f"--torch_reference={reference}: no MIA_torch.py there; give a checkout "
                         "of github zlijingtao/ResSFL (its top folder).")
    if shutil.which(python) is None:
        raise ValueError(f"--torch_python={python}: not an executable; create the torch "
                         f"virtualenv with `bash scripts/setup_torch_reference.sh {reference}` "
                         "or pass its python.")


def main(argv):
    del argv
    check_steps(_STEPS.value)
    if _TORCH.value:
        check_torch_reference(_TORCH.value, _TORCH_PY.value)
    host_memory.keep_freed_memory()  # Before JAX's first computation (see its docstring).
    settings = make_settings(_STEPS.value, [int(k) for k in _CLIENTS.value], _SCHEMES.value,
                             _CONV.value, device_counts(_DEVICES.value), _WEAK.value)
    # Nominal FLOPs (every conv as its full matmul) on every backend and conv path, so FLOP/s
    # compare across paths (tapwise skips the padding's products); counted once per setting.
    flops = {key: setting_flops(*key) for key in sorted({s[:3] for s in settings})}
    peak = matmul_peak(_DTYPE.value)
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} dev)"
    blocks = _BLOCKS.value if _TORCH.value else 1
    ours, theirs = [], {}
    names = sorted({TORCH_NAMES[(s, k)] for s, k, _, _, n in settings
                    if (s, k) in TORCH_NAMES and n == 1})
    for block in range(blocks):  # Alternate ours and theirs: machine noise hits both alike.
        ours.append(measure(settings, flops, _PROFILE.value if block == 0 else 0))
        if block == 0 and _PROFILE.value:
            _write_profiles(ours[0], device)
        _report(ours, theirs, device, peak)  # Ours are kept even if the reference fails.
        if _TORCH.value and names:
            try:
                block = torch_block(names, max(2, _REPEATS.value // blocks))
            except (subprocess.CalledProcessError, OSError) as e:
                print(f"the reference's block failed ({e}); its log: "
                      f"{os.path.join(_OUT.value or '.', 'torch_block.log')}", file=sys.stderr)
                break
            for name, r in block.items():
                theirs.setdefault(name, []).extend(r["step_s"])
    print(_report(ours, theirs, device, peak))


def _write_profiles(results, device):
    """Writes each profiled setting's top-ops table to --out/profile.md (and prints it)."""
    text = "\n\n".join(f"### {r['step']}, K={r['num_clients']}, {r['scheme']}, "
                        f"{r['conv_impl']} ({device}, "
                        f"{_DTYPE.value})\n\n{r['profile']}" for r in results if "profile" in r)
    print(text)
    os.makedirs(_OUT.value or ".", exist_ok=True)
    with open(os.path.join(_OUT.value or ".", "profile.md"), "w") as f:
        f.write(text + "\n")


def _report(ours, theirs, device, peak) -> str:
    """Pools each setting's times over the blocks, adds the reference's ratio, writes --out."""
    results = []
    for blocks_of_one in zip(*ours):  # The same setting in every block: pool its times.
        pooled = {key: [v for b in blocks_of_one for v in b[key]]
                  for key in ("times", "minor_faults", "system_s")}
        r = summarise(blocks_of_one[0] | pooled, peak)
        results.append(r)
        torch_name = TORCH_NAMES.get((r["step"], r["num_clients"]))
        if torch_name in theirs and r["devices"] == 1:  # The reference runs on one device.
            per_step = statistics.median(theirs[torch_name])  # seconds per client step
            batch = 32 if r["step"].startswith("attack_") else _BATCH.value
            r["torch_name"], r["torch_images_per_sec"] = torch_name, batch / per_step
            r["ratio_vs_torch"] = r["images_per_sec"] / r["torch_images_per_sec"]
    add_scaling(results)
    # This process's peak resident memory so far (Linux reports KiB): host buffers, XLA's CPU
    # temporaries and what the allocator keeps (the allocator A/B compares it).
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    allocator = host_memory.allocator()
    device_peak_mb = device_peak_memory_mb()
    table = _markdown(results, device, peak, _DTYPE.value, allocator, peak_rss_mb,
                      device_peak_mb)
    if _OUT.value:
        os.makedirs(_OUT.value, exist_ok=True)
        with open(os.path.join(_OUT.value, "benchmark.json"), "w") as f:
            json.dump({"device": device, "dtype": _DTYPE.value, "allocator": allocator,
                       "malloc_conf": os.environ.get("MALLOC_CONF"),
                       "host_peak_rss_mb": peak_rss_mb,
                       "device_peak_memory_mb": device_peak_mb,
                       "matmul_peak_gflops": peak, "argv": sys.argv,
                       "results": results}, f, indent=2)
        with open(os.path.join(_OUT.value, "benchmark.md"), "w") as f:
            f.write(table + "\n")
    return table


def device_peak_memory_mb() -> float | None:
    """The largest peak of device memory in use so far over the local devices (the allocator's
    own count, GPU/TPU), or None where the backend keeps none (CPU): one number for the whole
    process, every setting so far; per setting, XLA's estimate is the "memory MB" column."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) / 2 ** 20 if peaks else None


def add_scaling(results) -> None:
    """Per-device img/s of every setting, and for sharded ones the scaling efficiency: per-device
    img/s over the img/s of the one-device setting with the same clients per device."""
    def key(r):
        return (r["step"], r["scheme"], r["conv_impl"], r["num_clients"] // r["devices"])

    single = {key(r): r["images_per_sec"] for r in results if r["devices"] == 1}
    for r in results:
        r["images_per_sec_per_device"] = r["images_per_sec"] / r["devices"]
        if r["devices"] > 1 and key(r) in single:
            r["scaling_efficiency"] = r["images_per_sec_per_device"] / single[key(r)]


def _markdown(results, device, peak, dtype="float32", allocator="default",
              peak_rss_mb=None, device_peak_mb=None) -> str:
    rss = "" if peak_rss_mb is None else f"; host peak RSS {peak_rss_mb:,.0f} MB"
    if device_peak_mb is not None:
        rss += f"; device peak memory in use {device_peak_mb:,.0f} MB"
    lines = [f"device: {device}; compute dtype {dtype}; measured {dtype} matmul peak "
             f"{peak:.0f} GFLOP/s; host allocator {allocator}{rss}",
             "", "| step | K | devices | scheme | conv | compile s | median s | min-max s | "
             "img/s | img/s per device | scaling | GFLOP/s | % peak | memory MB | "
             "page faults/call | system s/call | torch img/s | ours/torch |",
             "|" + "---|" * 18]
    for r in results:
        mem = "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 2 ** 20:.0f}"
        torch = (f"{r['torch_images_per_sec']:.0f} | {r['ratio_vs_torch']:.2f}"
                 if "ratio_vs_torch" in r else "- | -")
        scaling = (f"{100 * r['scaling_efficiency']:.0f}%" if "scaling_efficiency" in r
                   else "-")
        lines.append(f"| {r['step']} | {r['num_clients']} | {r['devices']} | {r['scheme']} | "
                     f"{r['conv_impl']} | "
                     f"{r['compile_s']:.1f} | {r['median_s']:.3f} | {min(r['times']):.3f}-"
                     f"{max(r['times']):.3f} | {r['images_per_sec']:.0f} | "
                     f"{r['images_per_sec_per_device']:.0f} | {scaling} | "
                     f"{r['gflops_per_sec']:.0f} | {100 * r['peak_fraction']:.0f} | {mem} | "
                     f"{statistics.median(r['minor_faults']):.0f} | "
                     f"{statistics.median(r['system_s']):.3f} | {torch} |")
    return "\n".join(lines)


if __name__ == "__main__":
    host_memory.use_jemalloc()  # Re-executes once with jemalloc where installed (docstring).
    app.run(main)
