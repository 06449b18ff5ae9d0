"""Model-inversion attack on any checkpoint the project writes: ``python -m experiments.attack``.

  python -m experiments.attack --config.checkpoint=runs/pretrain_cpu --workdir=runs/attack_x
  python -m experiments.attack --config=experiments/configs/attack.py:cpu \\
      --config.checkpoint=runs/train_cpu --config.step=all --workdir=runs/attack_epochs

For each attacked checkpoint (spec §7): the checkpoint's test accuracy; every attacker decoder
trained on the auxiliary data and its MSE / SSIM / PSNR on the targets; the defender's worst
case; optionally the optimisation attack. Outputs in WORKDIR: ``summary.json``,
``steps/<which>_<step>.json`` (one per attacked checkpoint; ``--resume`` skips those already
done), reconstruction grids ``recon/<which>_<step>.png`` (first row: targets; then one row per
attacker, in ``summary.json['grid_rows']`` order), TensorBoard scalars/images, ``metrics.jsonl``.
"""

import json
import os

import jax
import ml_collections
import numpy as np

from experiments import common
from ressfl_jax import checkpoints, defenses, expert, metrics
from ressfl_jax.attacks import protocol, targets
from ressfl_jax.client_model import load_client_model
from ressfl_jax.models.decoders import parse_decoder
from ressfl_jax.training import decoder_fit

TARGET_SOURCES = ("train", "reference")


def settings_from(config, num_clients: int) -> protocol.AttackSettings:
    decoders = tuple(d.strip() for d in config.decoders.split(",") if d.strip())
    for decoder_type in decoders:
        parse_decoder(decoder_type)  # Fails now, not after the first attack.
    fit = decoder_fit.FitSettings(epochs=config.epochs, batch_size=config.batch_size,
                                  lr=config.lr, val_fraction=config.val_fraction,
                                  split_seed=config.split_seed, selection=config.selection,
                                  loss=config.loss)
    fit.validate(1000)
    colluders = max(1, num_clients - 1) if config.colluders < 0 else config.colluders
    opt = protocol.OptimizationSettings(steps=config.optimization.steps,
                                        lr=config.optimization.lr,
                                        tv_weight=config.optimization.tv_weight,
                                        num_targets=config.optimization.num_targets)
    settings = protocol.AttackSettings(decoders=decoders, fit=fit, aux_source=config.aux_source,
                                       aux_max=config.aux_max, jpeg=config.jpeg,
                                       seeds=config.seeds, colluders=colluders, optimization=opt)
    settings.validate()
    return settings


def attacked_steps(config) -> list[tuple[str, int | None]]:
    """[(which, step)] to attack: one checkpoint, a listed few, or every saved one ('all')."""
    if config.which not in (checkpoints.BEST, checkpoints.LAST):
        raise ValueError(f"which must be 'best' or 'last', got {config.which!r}.")
    step = str(config.step).strip()
    if step == "all":
        directory = expert.resolve_dir(config.checkpoint, checkpoints.LAST)
        manager = checkpoints.make_manager(directory, max_to_keep=None)
        return [(checkpoints.LAST, s) for s in sorted(manager.all_steps())]
    steps = [s.strip() for s in step.split(",") if s.strip()]  # '10,20': those saved steps
    if not all(s.isdigit() for s in steps):
        raise ValueError(f"step must be '', 'all', a saved step number or a comma-separated "
                         f"list of them (e.g. '10,20'); got {step!r}.")
    return [(config.which, int(s)) for s in steps] or [(config.which, None)]


def load_targets(config, dataset):
    """(uint8 [T, H, W, 3] targets, their indices in the training split or [])."""
    if config.targets == "reference":
        images, _ = targets.load_reference_fixture(config.reference_dir, dataset.name,
                                                   mean=dataset.mean, std=dataset.std)
        return images[:config.num_targets], np.zeros((0,), np.int64)
    return targets.sample_targets(dataset.train_images, np.arange(len(dataset.train_images)),
                                  num=config.num_targets, seed=config.seed)


def run_data_config(meta: dict, data_dir: str):
    """The attacked run's data config (from its checkpoint), with an optional new location."""
    data = ml_collections.ConfigDict(meta["config"])
    if data_dir:
        data.data.data_dir = data_dir
    return data


def run(config, workdir: str, *, resume: bool = False) -> dict:
    """Attacks the configured checkpoint(s); returns the summary written to WORKDIR."""
    if not config.checkpoint:
        raise ValueError("No checkpoint to attack: pass --config.checkpoint=RUN_WORKDIR (a "
                         "directory written by experiments.train / pretrain / transfer).")
    if config.targets not in TARGET_SOURCES:
        raise ValueError(f"Unknown targets {config.targets!r}; choose one of {TARGET_SOURCES}.")
    steps = attacked_steps(config)
    spec = defenses.parse_defense(config.defense_kind, config.defense_strength)
    target_defense = defenses.make_smash(spec)
    first = load_client_model(config.checkpoint, which=steps[0][0], step=steps[0][1],
                              conv_impl=config.conv_impl)
    settings = settings_from(config, int(first.meta.get("num_clients", 1)))
    dataset = common.load_data(run_data_config(first.meta, config.data_dir))
    target_images, target_indices = load_targets(config, dataset)
    os.makedirs(os.path.join(workdir, "steps"), exist_ok=True)
    os.makedirs(os.path.join(workdir, "recon"), exist_ok=True)
    # On resume, keep every record already in metrics.jsonl (a step beyond any epoch).
    writer = metrics.MetricWriter(workdir, resume_step=2 ** 31 if resume else None)
    results = []
    try:
        for i, (which, step) in enumerate(steps):
            client = first if i == 0 else load_client_model(
                config.checkpoint, which=which, step=step, conv_impl=config.conv_impl)
            name = f"{which}_{client.step}"
            path = os.path.join(workdir, "steps", f"{name}.json")
            if resume and os.path.exists(path):
                with open(path) as f:
                    results.append(json.load(f))
                continue
            result, images = protocol.attack_client(
                jax.random.key(config.seed), client, dataset, target_images, target_indices,
                settings, target_defense=target_defense)
            result.update(which=which, step=client.step,  # Loop checkpoints: step = epoch.
                          defense={"kind": spec.kind, "strength": spec.strength})
            _write_json(path, result)
            _write_images(writer, workdir, name, client.step, images, config.grid_images)
            writer.write_scalars(client.step, _scalars(result))
            results.append(result)
    finally:
        writer.close()
    summary = {"checkpoint": os.path.abspath(config.checkpoint), "meta": first.meta,
               "grid_rows": ["targets", *settings.decoders]
               + (["optimization"] if settings.optimization.steps else []),
               "results": results, **results[-1]}
    common.write_config(config, workdir)
    _write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def _scalars(result: dict) -> dict:
    scalars = {"attack/accuracy": result["accuracy"]}
    for attack in result["attacks"]:
        for key in ("mse", "ssim", "psnr"):
            scalars[f"attack/{attack['decoder']}/{key}"] = attack[key]
    for key in ("mse", "ssim", "psnr"):
        scalars[f"attack/worst_case/{key}"] = result["worst_case"][key]
    if result["optimization"]:
        for key in ("mse", "ssim", "psnr"):
            scalars[f"attack/optimization/{key}"] = result["optimization"][key]
    return scalars


def _write_images(writer, workdir, name, step, images, n):
    """The grid PNG, TensorBoard image, and the grid's arrays (``recon/NAME.npz``, for
    side-by-side comparisons of several attacked models)."""
    n = min([n] + [len(v) for v in images.values()])
    rows = {k: np.asarray(v[:n], np.float32) for k, v in images.items()}
    grid = metrics.image_grid(list(rows.values()))
    metrics.save_png(os.path.join(workdir, "recon", f"{name}.png"), grid)
    np.savez_compressed(os.path.join(workdir, "recon", f"{name}.npz"), **rows)
    writer.write_images(step, {"attack/reconstructions": grid})


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)


def report(summary: dict, workdir: str) -> None:
    """Prints one line per attacked checkpoint and attacker."""
    for result in summary["results"]:
        print(f"{result['which']} step {result['step']}: accuracy {result['accuracy']:.4f}")
        for attack in result["attacks"]:
            print(f"  {attack['decoder']:>16}: MSE {attack['mse']:.4f}  SSIM "
                  f"{attack['ssim']:.3f}  PSNR {attack['psnr']:.2f}")
        if result["optimization"]:
            o = result["optimization"]
            print(f"  {'optimization':>16}: MSE {o['mse']:.4f}  SSIM {o['ssim']:.3f}  PSNR "
                  f"{o['psnr']:.2f}")
    print(f"summary in {workdir}/summary.json, grids in {workdir}/recon/")


if __name__ == "__main__":
    common.cli(run, name="attack", report=report)
