"""Test-wide JAX settings.

* Strict promotion catches silent broadcasting and dtype bugs.
* A persistent compilation cache (a fresh temporary directory per session) lets the many
  end-to-end runs that compile the same programs (resume == uninterrupted, repeated smoke runs)
  compile each one once.
"""

import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

_CACHE = tempfile.TemporaryDirectory(prefix="ressfl_jax_test_xla_cache_")
jax.config.update("jax_compilation_cache_dir", _CACHE.name)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def smoke_expert(tmp_path_factory):
    """WORKDIR of one smoke-preset ``experiments.pretrain`` run, shared by the tests that need
    an expert checkpoint (transfer, attack, the public client-model API)."""
    from experiments import pretrain
    from experiments.configs import pretrain as pretrain_config
    workdir = str(tmp_path_factory.mktemp("smoke_expert"))
    pretrain.run(pretrain_config.get_config("smoke"), workdir)
    return workdir
