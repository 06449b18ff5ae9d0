"""Test-wide JAX settings: strict promotion catches silent broadcasting and dtype bugs."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
