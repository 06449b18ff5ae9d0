"""``host_memory.keep_freed_memory``: a repeated jitted call stops page-faulting its scratch."""

import os
import subprocess
import sys

import pytest

from ressfl_jax import host_memory

# A jitted call with a 64 MB temporary (a [8192, 8] x [8, 2048] f32 product, the input of a
# second product; above glibc's 32 MB ceiling for serving blocks from the heap by default);
# prints the minor page faults per call over 3 calls after a warm-up.
_PROBE = r"""
import resource
from ressfl_jax import host_memory
applied = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: jnp.sum((a @ b) @ b.T))
a, b = jnp.ones((8192, 8), jnp.float32), jnp.ones((8, 2048), jnp.float32)
f(a, b).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(a, b).block_until_ready()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def _faults_per_call(switch: str):
    env = dict(os.environ, **{host_memory.ENV_SWITCH: switch})
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=300).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not host_memory.supported(), reason="needs glibc on Linux")
def test_freed_scratch_memory_is_reused_not_faulted_back_in():
    applied, tuned = _faults_per_call("1")
    off_applied, untuned = _faults_per_call("0")
    assert applied and not off_applied
    # 64 MB of temporaries = 16k pages per call when glibc maps and unmaps them each call.
    assert untuned > 10_000, untuned
    assert tuned < 1_000, tuned
