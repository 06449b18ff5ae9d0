"""Clients sharded over devices and processes give the single-device run's results."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ressfl_jax import expert
from tests.helpers import records

SCRIPT = os.path.join(os.path.dirname(__file__), "sharded_run.py")


def _run(args, devices_per_process: int, **popen):
    flags = (os.environ.get("XLA_FLAGS", "")  # The caller's XLA flags, plus the devices.
             + f" --xla_force_host_platform_device_count={devices_per_process}").strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    # This test run's persistent compilation cache (tests/conftest.py): a program that one run
    # compiled (e.g. the data and evaluation programs every run makes) is loaded by the next.
    env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=str(
                   jax.config.jax_persistent_cache_min_compile_time_secs),
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=str(
                   jax.config.jax_persistent_cache_min_entry_size_bytes))
    return subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _finish(proc, timeout=900):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _records(workdir):
    return [{k: v for k, v in r.items() if k != "perf/images_per_sec"} for r in records(workdir)]


def _flat(tree):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def _assert_same_run(a, b):
    """Same logged metrics (up to float reduction order) and same final client and server."""
    ra, rb = _records(a), _records(b)
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    for x, y in zip(ra, rb):
        np.testing.assert_allclose([x[k] for k in sorted(x)], [y[k] for k in sorted(y)],
                                   rtol=2e-4, atol=1e-5)
    ea, eb = (expert.load_extractor(d, which="last") for d in (a, b))
    for name in ("client", "server"):
        np.testing.assert_allclose(_flat(getattr(ea, name)), _flat(getattr(eb, name)),
                                   rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    """The one-device, one-process run that both tests compare against (made once)."""
    single = str(tmp_path_factory.mktemp("single"))
    _finish(_run([single, 1], 1))
    return single


@pytest.mark.slow
def test_clients_sharded_over_4_devices_equal_one_device(tmp_path, single_device_run):
    four = str(tmp_path / "four")
    out = _finish(_run([four, -1], 4))
    assert "devices 4" in out
    _assert_same_run(single_device_run, four)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, single_device_run):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    multi = str(tmp_path / "multi")
    procs = [_run([multi, -1, i, 2, port], 2) for i in range(2)]
    outs = [_finish(p) for p in procs]
    assert all("devices 4" in o for o in outs)
    _assert_same_run(single_device_run, multi)
