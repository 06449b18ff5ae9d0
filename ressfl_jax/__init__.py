"""ressfl-jax: ResSFL (Li et al., CVPR 2022) in JAX/Flax.

Split federated learning that resists model-inversion attacks. Heavy imports live in the
submodules; importing the package itself is cheap.
"""

__version__ = "0.1.0"
