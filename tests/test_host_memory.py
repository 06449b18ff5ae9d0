"""``host_memory``: with jemalloc (default where installed) or the glibc switch, a repeated
jitted call stops page-faulting its scratch."""

import os
import platform
import subprocess
import sys

import pytest

from ressfl_jax import host_memory

# A jitted call with a 64 MB temporary (a [8192, 8] x [8, 2048] f32 product, the input of a
# second product; above glibc's 32 MB ceiling for serving blocks from the heap by default);
# prints the fewest minor page faults of 5 calls after 5 warm-up calls. The fewest, because
# under jemalloc a call that XLA runs on a thread not used before faults its arena in once
# (seen under the CI's two busy pytest workers: one call in three, 16k faults); glibc without
# the switch faults on every call.
_PROBE = r"""
import resource
import sys
from ressfl_jax import host_memory
if "jemalloc" in sys.argv:
    host_memory.use_jemalloc()  # Replaces this process, unless RESSFL_JEMALLOC=0.
applied = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: jnp.sum((a @ b) @ b.T))
a, b = jnp.ones((8192, 8), jnp.float32), jnp.ones((8, 2048), jnp.float32)
for _ in range(5):  # Warm-up: under jemalloc each of XLA's threads' arenas fills once.
    f(a, b).block_until_ready()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(a, b).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, min(faults), host_memory.allocator())
"""


def _probe(*args: str, **environ: str):
    """(glibc switch applied, fewest faults per call, allocator) of the probe with ``environ``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "MALLOC_CONF", host_memory.ENV_REEXECUTED)}
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], env=env | environ,
                         capture_output=True, text=True, check=True, timeout=300).stdout.split()
    return out[0] == "True", int(out[1]), out[2]


def _faults_per_call(switch: str):
    applied, faults, _ = _probe(**{host_memory.ENV_SWITCH: switch})
    return applied, faults


@pytest.mark.skipif(not host_memory.supported(), reason="needs glibc on Linux")
def test_freed_scratch_memory_is_reused_not_faulted_back_in():
    applied, tuned = _faults_per_call("1")
    off_applied, untuned = _faults_per_call("0")
    assert applied and not off_applied
    # 64 MB of temporaries = 16k pages per call when glibc maps and unmaps them each call.
    assert untuned > 10_000, untuned
    assert tuned < 1_000, tuned


@pytest.mark.skipif(host_memory.jemalloc_path() is None or platform.system() != "Linux",
                    reason="needs jemalloc (apt-get install libjemalloc2) on Linux")
def test_use_jemalloc_reexecutes_once_with_jemalloc_and_stops_the_faults():
    _, faults, allocator = _probe("jemalloc", **{host_memory.ENV_SWITCH: "0"})
    assert allocator == "jemalloc"
    assert faults < 1_000, faults
    # Opted out: the same process stays on glibc and faults its 64 MB back in each call.
    _, faults, allocator = _probe("jemalloc", **{host_memory.ENV_JEMALLOC: "0"})
    assert allocator == "default"
    assert faults > 10_000, faults
    # The re-executed process never re-executes again (no loop if a preload did not take).
    _, _, allocator = _probe("jemalloc", **{host_memory.ENV_REEXECUTED: "1"})
    assert allocator == "default"


def test_jemalloc_environment_prepends_the_library_and_keeps_user_settings():
    env = host_memory.jemalloc_environment({"PATH": "/bin"}, "/lib/je.so")
    assert env == {"PATH": "/bin", "LD_PRELOAD": "/lib/je.so",
                   "MALLOC_CONF": host_memory.JEMALLOC_CONF, host_memory.ENV_REEXECUTED: "1"}
    env = host_memory.jemalloc_environment({"LD_PRELOAD": "/lib/other.so",
                                            "MALLOC_CONF": "narenas:2"}, "/lib/je.so")
    assert env["LD_PRELOAD"] == "/lib/je.so:/lib/other.so"
    assert env["MALLOC_CONF"] == "narenas:2"
