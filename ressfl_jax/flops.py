"""Client-side compute of one training step, counted by XLA (the paper's "low overhead" claim).

``client_step_flops`` lowers the client's share of a step with and without the attacker-aware
term and reads XLA's FLOP count of the lowered program (``cost_analysis``, no compilation: for
the cpu preset's VGG-11-bn with a conv_normN0C16 attacker, 2.1 s instead of 14.2 s to compile
the three programs, dev VM; its counts, 127.1 / 146.5 MFLOP per image, are 1.7% below the
compiled program's). With im2col convs (``conv_impl="auto"`` on CPU) every conv is a matmul that
XLA counts exactly; with XLA's conv op the count misses part of the backward pass (yet it is the
only count that sees convs on a GPU, where compiled cuDNN calls count 0). Per client step:

* vanilla: client forward + backward (train mode) on a batch;
* attacker-aware: the same with the frozen decoder's penalty backpropagated into the client, plus
  ``decoder_steps / interval`` simulated-attacker updates (client eval-mode forward, decoder
  forward + backward + Adam), amortised over the interval.
"""

import jax
import jax.numpy as jnp
import optax

from ressfl_jax import losses
from ressfl_jax.training import sfl


def cost_flops(cost) -> float:
    """The FLOP count in a ``Lowered`` / ``Compiled`` program's ``cost_analysis()`` (0 if none)."""
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def _abstract_on_cpu(args):
    """``args`` as shape/dtype structs placed on the host CPU device (nothing is copied)."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), a.dtype, sharding=cpu)
                        if hasattr(a, "dtype") else a, args)


def lowered_flops(fn, *args) -> float:
    """XLA's FLOP count of ``fn(*args)`` from the lowered, not yet compiled, program.

    Needs no compilation (about a second for a full VGG step) and counts the program as
    written, so it is the same on every backend: on a GPU the compiled program's count would
    miss every convolution (cuDNN custom calls count as 0 FLOPs). The program is lowered for
    the host CPU whatever the default backend: on a GPU, jax 0.11's ``Lowered.cost_analysis()``
    returns None (the CUDA plugin has no cost analysis; measured on an H100, 2026-11-26).
    """
    fn = fn if hasattr(fn, "lower") else jax.jit(fn)
    return cost_flops(fn.lower(*_abstract_on_cpu(args)).cost_analysis())


def compiled_flops(fn, *args) -> float:
    """XLA's FLOP count of the compiled ``jax.jit(fn)(*args)`` (compiles; no execution)."""
    fn = fn if hasattr(fn, "lower") else jax.jit(fn)
    return cost_flops(fn.lower(*args).compile().cost_analysis())


def client_step_flops(model, client_vars, *, batch_size: int, image_shape, decoder=None,
                      decoder_vars=None, interval: int = 1, decoder_steps: int = 1,
                      kind: str = "ssim", threshold: float = 0.5) -> dict:
    """FLOPs per client step (one batch of ``batch_size``), vanilla vs attacker-aware.

    Args:
      model: the SplitModel; client_vars: one client's {'params', 'batch_stats'}.
      decoder / decoder_vars: the simulated attacker (None: only 'vanilla' is returned).
      interval, decoder_steps, kind, threshold: the attacker-aware settings.

    Returns:
      {'vanilla': F, 'attacker_aware': F', 'overhead': F'/F - 1} (floats; the last two only
      with a decoder).
    """
    images = jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32)
    params, stats = client_vars["params"], client_vars["batch_stats"]

    def features(p, x):
        return sfl.client_apply(model, p, stats, x, train=True)[0]

    def vanilla(p, x):
        out, vjp = jax.vjp(lambda p: features(p, x), p)
        return vjp(jnp.ones_like(out))  # The server's gradient arrives as a cotangent.

    result = {"vanilla": lowered_flops(vanilla, params, images)}
    if decoder is None:
        return result

    def with_penalty(p, dv, x):
        def loss(p):
            z = features(p, x)
            recon = decoder.apply(jax.lax.stop_gradient(dv), z, train=False)
            penalty = losses.resistance_penalty(recon, x, kind=kind, threshold=threshold)
            return jnp.sum(z) + penalty  # jnp.sum(z): the server's cotangent, as above.
        return jax.grad(loss)(p)

    tx = optax.adam(1e-3)

    def decoder_update(p, dv, x):
        z = jax.lax.stop_gradient(sfl.client_apply(model, p, stats, x, train=False)[0])

        def loss(dp):
            recon, _ = decoder.apply({**dv, "params": dp}, z, train=True,
                                     mutable=["batch_stats"])
            return losses.inversion_loss(recon, x, kind=kind)

        grads = jax.grad(loss)(dv["params"])
        with jax.numpy_dtype_promotion("standard"):
            updates, _ = tx.update(grads, tx.init(dv["params"]), dv["params"])
        return optax.apply_updates(dv["params"], updates)

    aware = (lowered_flops(with_penalty, params, decoder_vars, images)
             + lowered_flops(decoder_update, params, decoder_vars, images)
             * decoder_steps / interval)
    overhead = aware / result["vanilla"] - 1.0 if result["vanilla"] else float("nan")
    result.update(attacker_aware=aware, overhead=overhead)
    return result
