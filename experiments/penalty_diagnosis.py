"""Through which BatchNorm view is a run's simulated attacker fooled? (issues 3-5: "find out why")

  python -m experiments.penalty_diagnosis --checkpoint=runs/pipeline_cpu_full/expert \\
      [--which=last] [--step=N] [--num_images=2000] [--out=DIR]

An attacker-aware run (``experiments.pretrain``, or ``transfer`` in an attacker-aware mode)
saves, beside each client, the simulated attacker it trained against. In training that decoder
meets the client's smashed data in two different BatchNorm settings:

* the resistant step (the penalty the client minimises): client in train mode (this batch's
  statistics), decoder in eval mode (its running statistics) with ``penalty_bn='eval'``, the
  reference's choice; in train mode with ``penalty_bn='batch'``;
* the decoder's own update: client in eval mode (running statistics), decoder in train mode.

This scores the saved decoder on held-out images (the run's test split, in training-sized
batches) in all four (client mode, decoder mode) combinations: mean SSIM (the reference's
variant, what the hinge thresholds) and MSE. If the penalty's view is much worse than the
decoder's own view, the client has learnt to defeat the penalty through a statistics mismatch
rather than by removing information from its features, and a fresh attacker (``experiments.attack``)
will invert it. Writes ``OUT/penalty_diagnosis.json`` and prints a table.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import attack, common
from ressfl_jax import augment, host_memory, losses
from ressfl_jax.client_model import load_client_model
from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.training import sfl

MODES = ("train", "eval")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags, defined only when run as a program (absl flags are global: the
    tests import this module beside experiments.benchmark, which has its own --batch_size)."""
    flags.DEFINE_string("checkpoint", "", "Run WORKDIR of an attacker-aware run.")
    flags.DEFINE_string("which", "last", "'best' or 'last' checkpoint.")
    flags.DEFINE_integer("step", None, "A saved step (epoch); default the latest.")
    flags.DEFINE_integer("num_images", 2000, "Held-out test images scored (whole batches).")
    flags.DEFINE_integer("batch_size", 0,
                         "Batch size of the train-mode statistics; 0 = the run's.")
    flags.DEFINE_string("data_dir", "", "New location of the run's dataset, if it moved.")
    flags.DEFINE_string("out", "", "Output directory; default CHECKPOINT/penalty_diagnosis.")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _scores(model, decoder, client_mode, decoder_mode, client, dec, batches):
    """Mean SSIM and MSE of the decoder's reconstructions over [nb, B, H, W, 3] uint8 batches."""

    def one(images):
        x = augment.to_float(images)
        z, _ = sfl.client_apply(model, client["params"], client["batch_stats"], x,
                                train=client_mode == "train")
        if decoder_mode == "train":  # This batch's statistics; running stats not updated.
            recon, _ = decoder.apply(dec, z, train=True, mutable=["batch_stats"])
        else:
            recon = decoder.apply(dec, z, train=False)
        return losses.ssim(recon, x), losses.mse(recon, x)

    ssim, mse = jax.lax.map(one, batches)
    return jnp.mean(ssim), jnp.mean(mse)


def diagnose(checkpoint: str, *, which: str = "last", step: int | None = None,
             num_images: int = 2000, batch_size: int = 0, data_dir: str = "") -> dict:
    """The saved decoder's SSIM / MSE in each (client mode, decoder mode); see the docstring."""
    client = load_client_model(checkpoint, which=which, step=step)
    attacker = client.meta.get("attacker")
    if client.decoder is None or not attacker:
        raise ValueError(f"{checkpoint} holds no simulated attacker: pass an attacker-aware run "
                         "(experiments.pretrain, or transfer with mode lite / "
                         "attacker_aware_from_scratch).")
    config = attack.run_data_config(client.meta, data_dir)
    batch_size = batch_size or int(config.data.batch_size)
    dataset = common.load_data(config)
    nb = min(num_images, len(dataset.test_images)) // batch_size
    if nb < 1:
        raise ValueError(f"num_images={num_images} is less than one batch of {batch_size}.")
    images = dataset.test_images[:nb * batch_size]
    batches = jnp.asarray(images.reshape((nb, batch_size) + images.shape[1:]))
    decoder = build_decoder(attacker["decoder"], feature_shape=client.feature_shape,
                            image_shape=client.image_shape,
                            conv_impl=config.model.get("conv_impl", "auto"))
    rows = []
    for client_mode in MODES:
        for decoder_mode in MODES:
            ssim, mse = _scores(client.model, decoder, client_mode, decoder_mode, client.client,
                                client.decoder, batches)
            rows.append({"client": client_mode, "decoder": decoder_mode,
                         "ssim": float(ssim), "mse": float(mse)})
    return {"checkpoint": os.path.abspath(checkpoint), "which": which, "step": client.step,
            "decoder": attacker["decoder"], "threshold": attacker.get("threshold"),
            "penalty_bn": config.attacker.get("penalty_bn", "eval"),
            "num_images": nb * batch_size, "batch_size": batch_size, "rows": rows}


VIEWS = {("train", "eval"): "penalty (penalty_bn='eval', the reference's)",
         ("train", "train"): "penalty (penalty_bn='batch')",
         ("eval", "train"): "the decoder's own update",
         ("eval", "eval"): "an attacker querying the deployed client"}


def table(result: dict) -> str:
    lines = ["| client BN | decoder BN | where training uses it | SSIM | MSE |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['client']} | {r['decoder']} | {VIEWS[(r['client'], r['decoder'])]} "
                     f"| {r['ssim']:.3f} | {r['mse']:.4f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    host_memory.keep_freed_memory()  # Before JAX's first computation (see its docstring).
    if not FLAGS.checkpoint:
        raise app.UsageError("Pass --checkpoint=RUN_WORKDIR (an attacker-aware run).")
    result = diagnose(FLAGS.checkpoint, which=FLAGS.which, step=FLAGS.step,
                      num_images=FLAGS.num_images, batch_size=FLAGS.batch_size,
                      data_dir=FLAGS.data_dir)
    out = FLAGS.out or os.path.join(FLAGS.checkpoint, "penalty_diagnosis")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "penalty_diagnosis.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"{result['checkpoint']} ({result['which']} step {result['step']}), decoder "
          f"{result['decoder']}, tau {result['threshold']}, {result['num_images']} test images "
          f"in batches of {result['batch_size']}:")
    print(table(result))


if __name__ == "__main__":
    host_memory.use_jemalloc()  # Re-executes once with jemalloc where installed (docstring).
    define_flags()
    app.run(main)
