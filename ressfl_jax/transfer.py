"""Resistance transfer (ResSFL step 2, spec §6): the expert's extractor initialises every client.

``load_expert`` puts the expert's client (parameters and BatchNorm statistics) into every client
slot of a freshly built SFL state for the target task and, as every reference script does
(``--load_from_checkpoint_server``), the server body including the bottleneck's server half.
The classifier head is NOT loaded: it is freshly initialised for the target task's classes
(the reference hard-codes that off). Optimizer states stay fresh, as in the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ressfl_jax import federated
from ressfl_jax.state import SFLState

HEAD = "head"  # The server's classifier head (``SplitServer``'s param tree key).


def _check_same_structure(name: str, fresh, loaded) -> None:
    """Raises ValueError naming every leaf whose path or shape differs."""
    fresh_leaves = {jax.tree_util.keystr(p): np.shape(v)
                    for p, v in jax.tree_util.tree_leaves_with_path(fresh)}
    loaded_leaves = {jax.tree_util.keystr(p): np.shape(v)
                     for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
    problems = [f"  {k}: expert {loaded_leaves.get(k)}, this model {fresh_leaves.get(k)}"
                for k in sorted(set(fresh_leaves) | set(loaded_leaves))
                if fresh_leaves.get(k) != loaded_leaves.get(k)]
    if problems:
        raise ValueError(f"The expert's {name} does not fit this model (path: shape):\n"
                         + "\n".join(problems[:10])
                         + ("\n  ..." if len(problems) > 10 else "")
                         + "\nBuild the target model with the expert's arch, cut_layer, "
                         "bottleneck and width_mult.")


def _as_device(tree, like):
    return jax.tree.map(lambda x, ref: jnp.asarray(x, ref.dtype), tree, like)


def load_expert(state: SFLState, *, client: dict, server: dict | None) -> SFLState:
    """Copies the expert into a fresh SFL state (one stacked copy per client slot).

    Args:
      state: the target run's initial state (clients stacked [K, ...]).
      client: the expert client's {'params', 'batch_stats'} (unstacked, e.g. from
        ``expert.load_extractor``).
      server: the expert server's {'params', 'batch_stats'}, or None to keep the fresh server.
        Everything but the classifier head is loaded.

    Returns:
      The state with every client slot equal to the expert's client (bit for bit) and the
      server body loaded; optimizer states, step and decoders unchanged.

    Raises:
      ValueError: the expert's trees do not match the model (names every differing leaf).
    """
    num_clients = state.clients.step.shape[0]
    one = jax.tree.map(lambda x: x[0], state.clients)
    for part in ("params", "batch_stats"):
        _check_same_structure(f"client {part}", getattr(one, part) or {}, client[part] or {})
    clients = state.clients.replace(
        params=federated.replicate(_as_device(client["params"], one.params), num_clients),
        batch_stats=federated.replicate(_as_device(client["batch_stats"], one.batch_stats),
                                        num_clients))
    new_server = state.server
    if server is not None:
        updates = {}
        for part in ("params", "batch_stats"):
            fresh = dict(getattr(state.server, part) or {})
            body = {k: v for k, v in (server[part] or {}).items() if k != HEAD}
            fresh_body = {k: v for k, v in fresh.items() if k != HEAD}
            _check_same_structure(f"server {part} (head excluded)", fresh_body, body)
            updates[part] = {**fresh, **_as_device(body, fresh_body)}
        new_server = state.server.replace(**updates)
    return state.replace(clients=clients, server=new_server)
