"""Test-wide JAX settings and shared fixtures.

* Strict promotion catches silent broadcasting and dtype bugs.
* A persistent compilation cache lets the many end-to-end runs that compile the same programs
  (resume == uninterrupted, repeated smoke runs) compile each one once. Under pytest-xdist the
  workers of one run share it (a directory named by the run's ``PYTEST_XDIST_TESTRUNUID``), so a
  program compiled by one worker is loaded, not recompiled, by the other; a serial run gets a
  fresh temporary directory.
* ``smoke_expert`` is made once per test run, also across xdist workers (a file lock: the first
  worker that needs it trains it, the others wait for it and reuse it).
* The heaviest test files run first (``pytest_collection_modifyitems``), so that under
  ``--dist loadfile`` the two workers do not end with one long file running alone.
"""

import contextlib
import fcntl
import os
import pathlib
import shutil
import tempfile
import uuid

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


def _shared_cache_dir(run_uid: str) -> str:
    """The compilation cache shared by the xdist workers of run ``run_uid``."""
    return os.path.join(tempfile.gettempdir(), f"ressfl_jax_test_xla_cache_{run_uid}")


def _cache_dir() -> str:
    run_uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_uid:
        global _CACHE
        _CACHE = tempfile.TemporaryDirectory(prefix="ressfl_jax_test_xla_cache_")
        return _CACHE.name
    path = _shared_cache_dir(run_uid)
    os.makedirs(path, exist_ok=True)
    return path


jax.config.update("jax_compilation_cache_dir", _cache_dir())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
    """The xdist controller fixes the run's uid itself, so that it can find the cache later,
    and keeps the file order below (xdist's default reorders files by their NUMBER of tests,
    which put the few-test, slow end-to-end files last: ~3 min with one worker idle)."""
    if (hasattr(config.option, "testrunuid") and config.option.testrunuid is None
            and not os.environ.get("PYTEST_XDIST_WORKER")):
        config.option.testrunuid = uuid.uuid4().hex
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# Seconds of each test file in a `pytest -n 2 --durations=0` run on the dev VM (2026-11-26;
# only their order matters: longest first, so the two workers finish together). The first file
# trains the shared smoke expert, so the other worker starts on files that do not need it.
# Files not listed run last, in collection order.
FILE_SECONDS = {
    "test_attack_experiment.py": 1000,  # first: trains smoke_expert (~60-80 s of its 144 s)
    "test_ressfl.py": 231,
    "test_layers.py": 229,
    "test_models.py": 202,
    "test_sfl.py": 184,
    "test_experiments.py": 130,
    "test_sharding.py": 118,
    "test_transfer.py": 111,
    "test_decoder_fit.py": 81,
    "test_benchmark.py": 75,
    "test_decoders.py": 72,
    "test_attack.py": 71,
    "test_mixed_precision.py": 65,
    "test_pretrain_experiment.py": 65,
    "test_compare.py": 52,
    "test_pipeline.py": 31,
    "test_expert.py": 29,
    "test_penalty_diagnosis.py": 20,
    "test_defenses.py": 16,
    "test_augment.py": 13,
    "test_rng.py": 11,
}


def pytest_collection_modifyitems(config, items):
    """Longest-first file order (a stable sort: tests keep their order within a file)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))


def pytest_sessionfinish(session):
    """The xdist controller removes the workers' shared compilation cache at the end."""
    run_uid = getattr(session.config.option, "testrunuid", None)
    if run_uid and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(_shared_cache_dir(run_uid), ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def smoke_expert(tmp_path_factory):
    """WORKDIR of one smoke-preset ``experiments.pretrain`` run (2 epochs, default keys), shared
    by the tests that need an expert checkpoint (pretrain, transfer, attack, compare, the public
    client-model API). Tests must not write into it."""
    from experiments import pretrain
    from experiments.configs import pretrain as pretrain_config

    def train(workdir: str) -> str:
        pretrain.run(pretrain_config.get_config("smoke"), workdir)
        return workdir

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return train(str(tmp_path_factory.mktemp("smoke_expert")))
    # The workers' basetemps (popen-gwN) share this run's parent directory.
    root = tmp_path_factory.getbasetemp().parent
    workdir, done = root / "smoke_expert", root / "smoke_expert.done"
    with _file_lock(root / "smoke_expert.lock"):
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # a worker that failed half-way
            train(str(workdir))
            done.touch()
    return str(workdir)
