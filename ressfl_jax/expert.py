"""Reading a client extractor out of any checkpoint the project writes, with compatibility checks.

ResSFL step 2 (transfer) initialises every client from the expert's resistant extractor, and the
attack queries a frozen client. Both go through ``load_extractor``: it restores a checkpoint
written by ``ressfl_jax.training.loop.fit`` (train, pretrain or transfer runs) without needing
the optimizer or config that produced it, and returns client 0's parameters and BatchNorm
statistics (all client copies are equal after FedAvg), the server, the decoder if any, and the
run metadata. ``check_compatible`` compares that metadata with what a new run expects and
refuses a mismatch with one message naming every differing key.
"""

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ressfl_jax import checkpoints

# Metadata keys that must agree for an extractor to be reused (the client's input and output).
COMPAT_KEYS = ("arch", "cut_layer", "bottleneck", "width_mult", "image_shape", "mean", "std")


@dataclasses.dataclass(frozen=True)
class Extractor:
    """A client extractor restored from a checkpoint (host arrays).

    Attributes:
      meta: the run metadata saved with the checkpoint (``experiments.common.run_meta``).
      progress: the loop's progress record (epoch, best accuracy, ...).
      step: the checkpoint's step (the epoch for loop checkpoints).
      directory: the checkpoint manager directory it came from.
      client: {'params', 'batch_stats'} of client copy ``client_index``.
      server: {'params', 'batch_stats'} of the server (body + classifier).
      decoder: {'params', 'batch_stats'} of that client's simulated attacker, or None.
    """

    meta: dict
    progress: dict
    step: int
    directory: str
    client: dict
    server: dict
    decoder: dict | None


def resolve_dir(path: str, which: str = "best") -> str:
    """Finds the checkpoint manager directory for ``path``.

    ``path`` may be a run's WORKDIR, its ``checkpoints/`` folder, or ``checkpoints/best`` /
    ``checkpoints/last`` itself; ``which`` picks best or last in the first two cases.
    """
    if which not in (checkpoints.BEST, checkpoints.LAST):
        raise ValueError(f"which must be {checkpoints.BEST!r} or {checkpoints.LAST!r}, "
                         f"got {which!r}.")
    path = os.path.abspath(path)
    for candidate in (os.path.join(path, "checkpoints", which), os.path.join(path, which),
                      path):
        if os.path.isdir(candidate) and _has_steps(candidate):
            return candidate
    raise FileNotFoundError(
        f"No checkpoint found at {path}: expected a run directory containing "
        f"checkpoints/{which}/<step>/ (as written by experiments.train / pretrain / transfer), "
        f"or the checkpoints/{which} directory itself. Check the path, or run the training "
        f"first.")


def _has_steps(directory: str) -> bool:
    return any(name.isdigit() for name in os.listdir(directory))


def _stats(tree: dict, index: int | None) -> dict:
    take = (lambda x: np.asarray(x)[index]) if index is not None else np.asarray
    return {"params": jax.tree.map(take, tree["params"]),
            "batch_stats": jax.tree.map(take, tree.get("batch_stats") or {})}


def load_extractor(path: str, *, which: str = "best", step: int | None = None,
                   client_index: int = 0) -> Extractor:
    """Restores client ``client_index``, the server and its decoder from a checkpoint.

    Args:
      path: run WORKDIR, its checkpoints folder, or a best/last manager directory.
      which: 'best' (by test accuracy, the reference's ``--test_best``) or 'last'.
      step: a specific saved step (epoch); default the latest in that directory.
      client_index: which client copy (after FedAvg all copies are equal).

    Raises:
      FileNotFoundError: no checkpoint at ``path`` (or no such ``step``).
      ValueError: ``client_index`` out of range.
    """
    directory = resolve_dir(path, which)
    manager = checkpoints.make_manager(directory, max_to_keep=None)
    steps = manager.all_steps()
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"No step {step} under {directory}; saved steps: "
                                f"{sorted(steps)}.")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=checkpoints.local_sharding()),
        meta=ocp.args.JsonRestore()))
    state, record = restored["state"], restored["meta"]
    num_clients = int(np.asarray(state["clients"]["step"]).shape[0])
    if not 0 <= client_index < num_clients:
        raise ValueError(f"client_index {client_index} out of range: the checkpoint has "
                         f"{num_clients} client copies.")
    decoders = state.get("decoders")
    return Extractor(meta=record.get("run", {}), progress=record.get("progress", {}),
                     step=int(step), directory=directory,
                     client=_stats(state["clients"], client_index),
                     server=_stats(state["server"], None),
                     decoder=_stats(decoders, client_index) if decoders else None)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return a == b


def check_compatible(meta: dict, expected: dict, *, keys=COMPAT_KEYS, source: str = "") -> None:
    """Raises ValueError naming every key in ``keys`` where ``meta`` and ``expected`` differ.

    Args:
      meta: the checkpoint's run metadata.
      expected: the new run's values for the same keys (keys absent here are not checked).
      source: where ``meta`` came from, for the message.
    """
    missing = [k for k in keys if k in expected and k not in meta]
    bad = [(k, meta.get(k), expected[k]) for k in keys
           if k in expected and k in meta and not _same(meta[k], expected[k])]
    if not (missing or bad):
        return
    lines = [f"  {k}: checkpoint has {a!r}, this run expects {b!r}" for k, a, b in bad]
    lines += [f"  {k}: not recorded in the checkpoint" for k in missing]
    raise ValueError(
        f"The checkpoint {source or ''} is incompatible with this run:\n" + "\n".join(lines) +
        "\nConfigure the run like the checkpoint (e.g. --config.model.arch / cut_layer / "
        "bottleneck / width_mult, or the same dataset for normalisation), or use a checkpoint "
        "trained with these settings.")
