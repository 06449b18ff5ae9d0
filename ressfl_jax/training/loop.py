"""The epoch loop shared by every experiment: train rounds, FedAvg, evaluate, checkpoint, log.

Order per epoch (spec §4.4): pick the active users, run ``steps`` rounds (each a jitted pure
step on device-resident data indexed by a host-side plan), FedAvg the client slots, evaluate
client copy 0 on the test split, save ``best`` when accuracy improves and ``last`` every
``ckpt_every_epochs`` and at the end. Randomness: per-epoch data order from
``np.random.default_rng((seed, epoch, ...))``; per-round keys ``fold_in(train_key, step)``, so a
resumed run repeats an uninterrupted one exactly.
"""

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ressfl_jax import checkpoints, metrics, sharding
from ressfl_jax.data import partition
from ressfl_jax.state import SFLState, sync_clients
from ressfl_jax.training import sfl


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """Plain settings of the loop (experiments translate their config into this)."""

    num_epochs: int
    seed: int
    batch_size: int
    log_every_steps: int
    eval_every_epochs: int
    ckpt_every_epochs: int
    max_steps_per_epoch: int = 0  # 0: full epochs.
    eval_batch_size: int = 500
    keep_checkpoints: int = 2
    sync_decoders: bool = False
    devices: int = 1  # Devices the client slots are sharded over (-1: all; see sharding.py).
    keep_epochs: tuple[int, ...] = ()  # Also saved and never deleted (the reference's
    #                                    --save_more_checkpoints: 1, 2, 5, 10, 20, 50, 100).


def device_data(images: np.ndarray, labels: np.ndarray):
    """Puts a uint8 image array and int32 labels on the default device once."""
    return {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}


def make_indexed_step(train_step: Callable, state_shardings=None):
    """Jits ``train_step`` behind an index gather: (state, data, indices [K,B], train_key).

    The round key is ``fold_in(train_key, state.step)``, derived on device (no host sync).
    ``state_shardings`` (multi-device runs) pins the new state's layout to the input's.
    """

    def indexed(state, data, indices, train_key):
        batch = {"image": data["image"][indices], "label": data["label"][indices]}
        state, step_metrics = train_step(state, batch, jax.random.fold_in(train_key, state.step))
        if state_shardings is not None:
            state = jax.lax.with_sharding_constraint(state, state_shardings)
        return state, step_metrics

    return jax.jit(indexed, donate_argnums=0)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Pads the test split to [nb, batch, ...] with a mask, so evaluation has static shapes."""
    n = len(labels)
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
    mask = np.arange(nb * batch_size) < n
    shape = (nb, batch_size)
    return {"image": jnp.asarray(images.reshape(shape + images.shape[1:])),
            "label": jnp.asarray(labels.reshape(shape).astype(np.int32)),
            "mask": jnp.asarray(mask.reshape(shape))}


def make_evaluate(model):
    """Jitted test-set evaluation of client copy 0 + server: returns accuracy and mean CE."""

    def evaluate(state, batches):
        sums = jax.lax.map(lambda b: sfl.eval_step(state, b, model=model), batches)
        sums = jax.tree.map(jnp.sum, sums)
        return {"eval/accuracy": sums["correct"] / sums["count"],
                "eval/ce_loss": sums["ce_sum"] / sums["count"]}

    return jax.jit(evaluate)


def _epoch_plan(settings: LoopSettings, partitions, num_active: int, epoch: int):
    users = partition.sample_users(len(partitions), num_active, seed=settings.seed, epoch=epoch)
    plan = partition.epoch_plan(partitions, users, batch_size=settings.batch_size,
                                seed=settings.seed, epoch=epoch)
    if settings.max_steps_per_epoch:
        plan = plan[:settings.max_steps_per_epoch]
    return plan


def fit(state: SFLState, *, settings: LoopSettings, workdir: str, train_step: Callable, model,
        dataset, partitions: np.ndarray, num_active: int, train_key, meta: dict,
        resume: bool, prepare: Callable | None = None) -> dict:
    """Trains ``state`` for ``settings.num_epochs`` epochs; returns the run summary.

    Args:
      state: the initial SFLState (used as the restore target when resuming).
      train_step: unjitted pure ``(state, batch, key) -> (state, metrics)``.
      model: the SplitModel (for evaluation).
      dataset: a ``ressfl_jax.data.Dataset``.
      partitions: int [U, n_per_user] indices of each user's training examples.
      num_active: K, the number of client slots (users sampled per epoch).
      train_key: typed PRNG key of the training stream.
      meta: JSON-serialisable run metadata saved with every checkpoint.
      resume: continue from the latest checkpoint in ``workdir`` if there is one.
      prepare: optional ``state -> (state, metrics)`` run once before epoch 1 of a fresh run
        (e.g. the simulated attacker's pre-training, spec §4.3); its host-float metrics are
        logged at step 0 and kept in the summary under ``prepare``.

    A fresh run first saves its initial state (after ``prepare``) as checkpoint 0 in ``last/``,
    kept for good: the epoch-0 model that the reference's Fig. 5 attacks (and never saves), and
    the reason a resumed run never repeats ``prepare``.
    """
    place_indices = np.asarray  # Host [K, B] batch indices -> what the step takes.
    state_shardings = None
    sync = functools.partial(_sync, sync_decoders=settings.sync_decoders)
    reshard = _identity
    place_replicated = _identity  # Train/test arrays every device reads.
    if settings.devices != 1:
        mesh = sharding.client_mesh(settings.devices)
        sharding.check_divisible(num_active, mesh)
        state_shardings = sharding.state_shardings(state, mesh)
        state = sharding.put(state, state_shardings)
        place_indices = functools.partial(sharding.global_array,
                                          sharding=sharding.by_client(mesh))
        # Every program that returns the state pins its layout, so the compiled step always
        # receives the shardings it was compiled for.
        reshard = jax.jit(lambda s: s, out_shardings=state_shardings)
        sync = jax.jit(functools.partial(sync_clients, sync_decoders=settings.sync_decoders),
                       donate_argnums=0, out_shardings=state_shardings)
        place_replicated = functools.partial(_put_replicated, mesh=mesh)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    last_manager = checkpoints.make_manager(os.path.join(ckpt_dir, checkpoints.LAST),
                                            max_to_keep=settings.keep_checkpoints,
                                            keep_steps=(0,) + tuple(settings.keep_epochs))
    best_manager = checkpoints.make_manager(os.path.join(ckpt_dir, checkpoints.BEST),
                                            max_to_keep=1)
    progress_meta = {"epoch": 0, "best_accuracy": -1.0, "best_epoch": 0, "train_seconds": 0.0,
                     "train_images": 0, "wall_seconds": 0.0, "compile_seconds": 0.0}
    if last_manager.latest_step() is not None:
        if not resume:
            raise FileExistsError(f"{ckpt_dir} already holds checkpoints. Pass --resume to "
                                  f"continue that run, or choose a new --workdir.")
        state, saved = checkpoints.restore(last_manager, checkpoints.abstract(state))
        state = reshard(state)
        progress_meta = saved["progress"]
    start_epoch = progress_meta["epoch"] + 1
    primary = jax.process_index() == 0  # Multi-process jobs: only process 0 writes files.
    step = int(sharding.to_host(state.step))
    writer = metrics.MetricWriter(workdir, resume_step=step if start_epoch > 1 else None,
                                  enabled=primary)
    writer.write_text("config", "```\n" + json.dumps(meta, indent=2, default=str) + "\n```")
    if last_manager.latest_step() is None:
        if prepare is not None:
            start = time.perf_counter()
            state, prepare_metrics = prepare(state)
            state = reshard(state)
            progress_meta["prepare"] = {**prepare_metrics,
                                        "seconds": time.perf_counter() - start}
            writer.write_scalars(0, {f"prepare/{k}": v for k, v in prepare_metrics.items()
                                     if isinstance(v, (int, float))})
        checkpoints.save(last_manager, 0, state, {"progress": progress_meta, "run": meta})
        last_manager.wait_until_finished()

    evaluate = make_evaluate(model)
    data = place_replicated(device_data(dataset.train_images, dataset.train_labels))
    test = place_replicated(eval_batches(dataset.test_images, dataset.test_labels,
                                         settings.eval_batch_size))
    first_plan = _epoch_plan(settings, partitions, num_active, 1)
    steps_per_epoch = len(first_plan)
    # Compile ahead of time so that img/s excludes compilation (reported separately).
    start = time.perf_counter()
    step_fn = make_indexed_step(train_step, state_shardings).lower(
        state, data, place_indices(first_plan[0]), train_key).compile()
    progress_meta["compile_seconds"] = time.perf_counter() - start
    images_per_step = num_active * settings.batch_size
    progress = metrics.Progress(total_steps=settings.num_epochs * steps_per_epoch,
                                initial_step=step, images_per_step=images_per_step,
                                enabled=primary)
    buffer = metrics.MetricBuffer()
    last_eval = {}

    def flush(epoch):
        scalars = buffer.flush(step)
        if scalars:
            n_steps = step - flush.last_logged
            rate = progress.update(n_steps, epoch=epoch, loss=scalars["train/ce_loss"])
            writer.write_scalars(step, {**scalars, "perf/images_per_sec": rate, "epoch": epoch})
            progress_meta["train_seconds"] += n_steps * images_per_step / rate
            progress_meta["train_images"] += n_steps * images_per_step
            progress_meta["last_train"] = {k: float(v) for k, v in scalars.items()}
            flush.last_logged = step

    flush.last_logged = step
    try:
        for epoch in range(start_epoch, settings.num_epochs + 1):
            epoch_start = time.perf_counter()
            plan = _epoch_plan(settings, partitions, num_active, epoch)
            for indices in plan:
                state, step_metrics = step_fn(state, data, place_indices(indices), train_key)
                step += 1
                buffer.append(step, step_metrics)
                if step % settings.log_every_steps == 0:
                    flush(epoch)
            flush(epoch)  # Checks for NaN before anything is saved.
            state = sync(state)
            last = epoch == settings.num_epochs
            if epoch % settings.eval_every_epochs == 0 or last:
                last_eval = {k: float(v)
                             for k, v in sharding.to_host(evaluate(state, test)).items()}
                writer.write_scalars(step, {**last_eval, "epoch": epoch})
                progress.write(f"epoch {epoch}: test accuracy {last_eval['eval/accuracy']:.4f}")
            progress_meta["epoch"] = epoch
            progress_meta["wall_seconds"] += time.perf_counter() - epoch_start
            record = {"progress": progress_meta, "run": meta}
            if last_eval and last_eval["eval/accuracy"] > progress_meta["best_accuracy"]:
                progress_meta.update(best_accuracy=last_eval["eval/accuracy"], best_epoch=epoch)
                checkpoints.save(best_manager, epoch, state, record)
            if epoch % settings.ckpt_every_epochs == 0 or last or epoch in settings.keep_epochs:
                checkpoints.save(last_manager, epoch, state, record)
            progress.reset_timer()
    finally:
        last_manager.wait_until_finished()
        best_manager.wait_until_finished()
        progress.close()
        writer.close()
    return _write_summary(workdir, progress_meta, last_eval, step, meta, write=primary)


def _identity(tree):
    return tree


def _put_replicated(tree, mesh):
    return sharding.put(tree, jax.tree.map(lambda _: sharding.replicated(mesh), tree))


@functools.partial(jax.jit, static_argnums=1, donate_argnums=0)
def _sync(state, sync_decoders):
    return sync_clients(state, sync_decoders=sync_decoders)


def _write_summary(workdir, progress_meta, last_eval, step, meta, *, write: bool = True) -> dict:
    seconds = progress_meta["train_seconds"]
    summary = {
        "final_accuracy": last_eval.get("eval/accuracy"),
        "best_accuracy": progress_meta["best_accuracy"],
        "best_epoch": progress_meta["best_epoch"],
        "epochs": progress_meta["epoch"],
        "steps": step,
        "wall_seconds": progress_meta["wall_seconds"],
        "train_seconds": seconds,
        "compile_seconds": progress_meta["compile_seconds"],
        "images_per_sec": progress_meta["train_images"] / seconds if seconds else None,
        "config": meta.get("config"),
        "run": {k: v for k, v in meta.items() if k != "config"},
    }
    summary["last_train"] = progress_meta.get("last_train", {})
    if "prepare" in progress_meta:
        summary["prepare"] = progress_meta["prepare"]
    if not write:
        return summary
    tmp = os.path.join(workdir, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    os.replace(tmp, os.path.join(workdir, "summary.json"))
    return summary
