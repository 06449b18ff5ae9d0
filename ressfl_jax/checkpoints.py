"""Orbax checkpoints: atomic, resumable, with the run's metadata beside the arrays.

Layout under ``WORKDIR/checkpoints/``:
  ``last/<epoch>/``  periodic checkpoints (the newest few are kept),
  ``best/<epoch>/``  the best-by-test-accuracy checkpoint (one kept).
Each checkpoint holds two items: ``state`` (the array pytree, restored against an abstract tree
from ``jax.eval_shape``) and ``meta`` (JSON: epoch, step, best accuracy, dataset/arch metadata,
config). Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-save (even ``kill -9``) leaves the previous checkpoints intact and the partial one ignored.
"""

import os

import jax
import orbax.checkpoint as ocp

LAST = "last"
BEST = "best"


def make_manager(directory, *, max_to_keep: int | None,
                 keep_steps: tuple[int, ...] = ()) -> ocp.CheckpointManager:
    """A CheckpointManager with items ``state`` and ``meta`` at ``directory``.

    Keeps the newest ``max_to_keep`` steps (all if None) plus every step in ``keep_steps``
    (e.g. the epoch-0 checkpoint written before training).
    """
    policy = None
    if max_to_keep is not None and keep_steps:
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(max_to_keep),
            ocp.checkpoint_managers.CustomSteps(list(keep_steps))])
        max_to_keep = None
    # Multi-process jobs save synchronously: orbax's async commit thread runs its own
    # cross-process barriers, and a 2-process CPU run was seen to hang in one of them (process
    # 0 waiting in the async barrier for last/1 while process 1 had finished). One process keeps
    # the async save (the next epoch trains while the previous checkpoint is written).
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           cleanup_tmp_directories=True,
                                           preservation_policy=policy,
                                           enable_async_checkpointing=jax.process_count() == 1)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Saves ``state`` (array pytree) and ``meta`` (JSON-serialisable dict) as ``step``."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)


def local_sharding() -> jax.sharding.Sharding:
    """Where restored arrays go unless a target says otherwise: this process's first device
    (so a checkpoint written by a multi-device run loads on one device)."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract(tree):
    """ShapeDtypeStructs for a concrete or abstract pytree (the target of a restore).

    Leaves without a sharding (e.g. from ``jax.eval_shape``) get ``local_sharding()``.
    """
    default = local_sharding()

    def one(x):
        struct = ocp.utils.to_shape_dtype_struct(x)
        if getattr(struct, "sharding", None) is None:
            struct = jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=default)
        return struct

    return jax.tree.map(one, tree)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restores (state, meta) at ``step`` (default: latest). Raises FileNotFoundError if none."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No complete checkpoint under {manager.directory}.")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


def read_meta(directory, step: int | None = None) -> dict:
    """Reads only the JSON metadata of a checkpoint (no arrays), e.g. to check compatibility."""
    manager = make_manager(directory, max_to_keep=None)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No complete checkpoint under {os.path.abspath(directory)}.")
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
