"""How this project's programs draw random bits for initialisation.

JAX's default threefry PRNG is "partitionable" (``jax_threefry_partitionable``, on by default
since JAX 0.5): a sharded array of random bits can be generated without gathering. Every
initialisation here runs on one device and is then replicated or placed, so that property buys
nothing there, while XLA:CPU compiles the partitionable lowering of an init program several times
slower: the smoke VGG-11-bn's client + server init compiles in 17.8 s partitionable vs 3.8 s not
(dev VM, jax 0.10.2); a test run compiles dozens of such programs, and every CPU run pays it once.

``unpartitioned()`` scopes the non-partitionable lowering to the programs traced inside it,
whatever the user's global setting, so the values an init key gives are the same everywhere.
Used by: the SFL state's and the simulated attackers' init, and the attack's decoder fits (one
single-device program: their init and per-epoch shuffles). Training steps keep JAX's default:
their random ops (augmentation, dropout) are small and may run sharded.
"""

import jax


def unpartitioned():
    """Context manager: programs traced inside draw threefry bits with the non-partitionable
    lowering (fast to compile; the same values on every backend). Wrap the CALL of a jitted
    init function (its first call traces it), not the definition."""
    return jax.threefry_partitionable(False)
