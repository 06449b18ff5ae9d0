"""Throughput benchmark of the jitted SFL training step: ``python -m experiments.benchmark``.

Times the vanilla SFL round (VGG-11-bn by default, paper shapes: cut 4, batch 128 per client)
for a grid of settings in ONE process, alternating them, and prints compile time, median step
time with its spread, img/s and the ratio to the first setting. Example (the CPU conv fix):

  python -m experiments.benchmark --conv_impl=xla,auto --num_clients=1 --repeats=5

Writes a JSON list of results to --out if given.
"""

import itertools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ressfl_jax import optim
from ressfl_jax.models import build_split_model
from ressfl_jax.state import create_sfl_state
from ressfl_jax.training import sfl

_ARCH = flags.DEFINE_string("arch", "vgg11_bn", "Architecture.")
_CUT = flags.DEFINE_integer("cut_layer", 4, "Cut layer (reference numbering).")
_BOTTLENECK = flags.DEFINE_string("bottleneck", "None", "Bottleneck option.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Per-client batch size.")
_CONV = flags.DEFINE_list("conv_impl", ["xla", "auto"], "Conv implementations to compare.")
_CLIENTS = flags.DEFINE_list("num_clients", ["1"], "Numbers of client slots K.")
_SCHEMES = flags.DEFINE_list("scheme", ["parallel"], "Server schedules.")
_WIDTH = flags.DEFINE_float("width_mult", 1.0, "Channel width multiplier.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds per setting (after one warm-up).")
_OUT = flags.DEFINE_string("out", "", "Optional JSON output path.")


def bench_setting(*, arch, cut_layer, bottleneck, batch_size, conv_impl, num_clients, scheme,
                  width_mult):
    """Builds the step for one setting; returns (compiled step, state, batch)."""
    model = build_split_model(arch, cut_layer=cut_layer, bottleneck=bottleneck, num_classes=10,
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), width_mult=width_mult,
                              conv_impl=conv_impl)
    tx = optim.make_sgd(0.01, momentum=0.9, weight_decay=5e-4)
    state = create_sfl_state(jax.random.key(0), model, client_tx=tx, server_tx=tx,
                             num_clients=num_clients)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (num_clients, batch_size, 32, 32, 3),
                                               np.uint8)),
             "label": jnp.asarray(rng.integers(0, 10, (num_clients, batch_size)), jnp.int32)}
    step = jax.jit(sfl.make_train_step(model=model, schedule=scheme, augment="crop_flip"),
                   donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    return compiled, state, batch, time.perf_counter() - start


def main(argv):
    del argv
    settings = [dict(conv_impl=c, num_clients=int(k), scheme=s) for c, k, s in
                itertools.product(_CONV.value, _CLIENTS.value, _SCHEMES.value)]
    common = dict(arch=_ARCH.value, cut_layer=_CUT.value, bottleneck=_BOTTLENECK.value,
                  batch_size=_BATCH.value, width_mult=_WIDTH.value)
    prepared = []
    for setting in settings:
        compiled, state, batch, compile_s = bench_setting(**common, **setting)
        state, metrics = compiled(state, batch, jax.random.key(1))  # Warm-up.
        jax.block_until_ready(metrics)
        prepared.append([compiled, state, batch, compile_s, []])
    # Alternate settings round-robin so that machine noise hits all of them alike.
    for r in range(_REPEATS.value):
        for item in prepared:
            compiled, state, batch = item[:3]
            start = time.perf_counter()
            state, metrics = compiled(state, batch, jax.random.key(r + 2))
            jax.block_until_ready(metrics)
            item[4].append(time.perf_counter() - start)
            item[1] = state
    results = []
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{common['arch']} cut {common['cut_layer']} bottleneck {common['bottleneck']}, "
          f"batch {common['batch_size']}/client, width x{common['width_mult']}")
    print(f"{'conv_impl':>9} {'K':>4} {'scheme':>10} {'compile s':>9} {'median s':>9} "
          f"{'min-max s':>13} {'img/s':>8} {'ratio':>6}")
    base = None
    for setting, item in zip(settings, prepared):
        times = item[4]
        median = statistics.median(times)
        rate = setting["num_clients"] * common["batch_size"] / median
        base = base or rate
        results.append({**common, **setting, "compile_s": item[3], "step_s": times,
                        "median_s": median, "images_per_sec": rate, "ratio": rate / base,
                        "device": jax.devices()[0].device_kind})
        print(f"{setting['conv_impl']:>9} {setting['num_clients']:>4} {setting['scheme']:>10} "
              f"{item[3]:>9.1f} {median:>9.3f} {min(times):>6.3f}-{max(times):<6.3f} "
              f"{rate:>8.1f} {rate / base:>6.2f}")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
