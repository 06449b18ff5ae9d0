"""ressfl-jax: ResSFL (Li et al., CVPR 2022) in JAX/Flax.

Split federated learning that resists model-inversion attacks. Heavy imports live in the
submodules; importing the package itself is cheap (``load_client_model`` is imported on first
use).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_client_model"]


def __getattr__(name):
    if name == "load_client_model":
        from ressfl_jax.client_model import load_client_model
        return load_client_model
    raise AttributeError(f"module 'ressfl_jax' has no attribute {name!r}")
