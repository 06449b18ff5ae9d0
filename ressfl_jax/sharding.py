"""Clients sharded over devices: one ``jax.sharding.Mesh`` axis, ``jit`` (no ``pmap``).

The stacked client state (every leaf of ``state.clients`` and ``state.decoders`` has a leading
axis of K client slots) and each round's batch [K, B, ...] are split along a mesh axis named
``clients``; the server and the step counter are replicated. The jitted step is unchanged: XLA
partitions the vmapped client computation, gathers the smashed data for the server (parallel
schedule) and all-reduces the server's gradient. With several processes
(``jax.distributed.initialize``) the mesh spans every process's devices; each process holds
the full (small, in-memory) dataset and computes the same epoch plan, and builds the global
arrays from its local copy (``global_array``).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CLIENTS = "clients"


def client_mesh(num_devices: int = -1) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` global devices (-1: all of them)."""
    devices = jax.devices()
    n = len(devices) if num_devices == -1 else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"run.devices={num_devices}: this job sees {len(devices)} devices "
                         f"({devices[0].platform}); use -1 (all) or 1..{len(devices)}.")
    return Mesh(np.asarray(devices[:n]), (CLIENTS,))


def check_divisible(num_clients: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if num_clients % n:
        raise ValueError(f"{num_clients} client slots cannot be split evenly over {n} devices; "
                         f"use data.num_clients divisible by {n}, or run.devices dividing "
                         f"{num_clients}.")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def by_client(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the ``clients`` mesh axis."""
    return NamedSharding(mesh, PartitionSpec(CLIENTS))


def state_shardings(state, mesh: Mesh):
    """Shardings for an ``SFLState``: clients and decoders by client, the rest replicated."""
    rep, split = replicated(mesh), by_client(mesh)
    shardings = jax.tree.map(lambda _: rep, state)
    shardings = shardings.replace(clients=jax.tree.map(lambda _: split, state.clients))
    if state.decoders is not None:
        shardings = shardings.replace(decoders=jax.tree.map(lambda _: split, state.decoders))
    return shardings


def global_array(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full (same values everywhere)."""
    local = np.asarray(local)
    return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])


def put(tree, shardings):
    """Places a pytree of host or device arrays with the given shardings (multi-process safe)."""
    return jax.tree.map(lambda x, s: global_array(np.asarray(jax.device_get(x)), s)
                        if jax.process_count() > 1 else jax.device_put(x, s), tree, shardings)


def to_host(tree):
    """``jax.device_get`` that also reads replicated arrays spanning several processes.

    A replicated global array is not fully addressable from one process; its local shard holds
    the whole value.
    """
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return np.asarray(jax.device_get(x))
    return jax.tree.map(get, tree)
