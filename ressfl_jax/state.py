"""Train state for split federated learning: stacked clients plus one server.

``SFLState`` invariant: every leaf of ``clients`` (and ``decoders``, when present) has a leading
axis of size ``num_clients`` (the client *slots*, spec §5); ``server`` is not stacked. Keys are
never stored: randomness is derived from ``step`` (a resumed run is exact given the step).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from ressfl_jax import federated, rng
from ressfl_jax.models import SplitModel


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm statistics (an empty dict for BN-free modules)."""

    batch_stats: Any = None


@flax.struct.dataclass
class SFLState:
    """State of an SFL run.

    Attributes:
      step: int32 scalar, the number of training rounds taken (one round = every active client
        processes one batch). The server's optimizer count may differ (sequential schedule).
      clients: TrainState with leaves [K, ...] (client models and their optimizers).
      server: TrainState (server body + classifier head).
      decoders: optional TrainState with leaves [K, ...] (per-client simulated attackers).
    """

    step: jax.Array
    clients: TrainState
    server: TrainState
    decoders: TrainState | None = None


def _split_vars(variables):
    variables = flax.core.unfreeze(variables)
    return variables["params"], variables.get("batch_stats", {})


def init_split_variables(key, model: SplitModel, image_shape=(32, 32, 3)):
    """Initialises client and server variables of ``model`` (pure; jit/eval_shape friendly).

    Returns:
      ((client_params, client_batch_stats), (server_params, server_batch_stats)).
    """
    client_key, server_key, dropout_key = jax.random.split(key, 3)
    images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    client_vars = model.client.init({"params": client_key}, images, train=False)
    features = model.client.apply(client_vars, images, train=False)
    server_vars = model.server.init({"params": server_key, "dropout": dropout_key}, features,
                                    train=False)
    return _split_vars(client_vars), _split_vars(server_vars)


def create_sfl_state(key, model: SplitModel, *, client_tx: optax.GradientTransformation,
                     server_tx: optax.GradientTransformation, num_clients: int,
                     image_shape=(32, 32, 3)) -> SFLState:
    """Builds the initial state: ``num_clients`` identical client copies and one server.

    All client copies equal client 0, as in the reference (V1/V2 schemes deep-copy it).

    Args:
      key: typed PRNG key for initialisation.
      model: the split model.
      client_tx / server_tx: optimizers.
      num_clients: K, the number of client slots.
      image_shape: (H, W, 3) of one input image.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")

    def create(key):
        (client_params, client_stats), (server_params, server_stats) = init_split_variables(
            key, model, image_shape)
        client = TrainState.create(apply_fn=model.client.apply, params=client_params,
                                   tx=client_tx, batch_stats=client_stats)
        server = TrainState.create(apply_fn=model.server.apply, params=server_params,
                                   tx=server_tx, batch_stats=server_stats)
        return SFLState(step=jnp.zeros((), jnp.int32),
                        clients=federated.replicate(client, num_clients), server=server)

    # One compiled program initialises everything (op-by-op init compiles each random op).
    with rng.unpartitioned():
        return jax.jit(create)(key)


def sync_clients(state: SFLState, *, sync_decoders: bool = False) -> SFLState:
    """FedAvg of client params and BN statistics (not optimizer state); optionally decoders."""
    clients = state.clients.replace(params=federated.fedavg(state.clients.params),
                                    batch_stats=federated.fedavg(state.clients.batch_stats))
    decoders = state.decoders
    if sync_decoders and decoders is not None:
        decoders = decoders.replace(params=federated.fedavg(decoders.params),
                                    batch_stats=federated.fedavg(decoders.batch_stats))
    return state.replace(clients=clients, decoders=decoders)
