"""The whole ResSFL pipeline and its privacy/utility table: ``python -m experiments.pipeline``.

  python -m experiments.pipeline --workdir=runs/pipeline_cpu          # the README's main job
  python -m experiments.pipeline --config=experiments/configs/pipeline.py:smoke

Pretrain the expert (and, for comparison, train the same model on the same source task without
the defense) -> transfer to the target task (lite = ResSFL, naive, scratch, ...) ->
attack every model with the same attackers on the same targets -> ``WORKDIR/report.md`` and
``WORKDIR/summary.json``: method, accuracy, attack MSE/SSIM/PSNR (the defender's worst case over
the attacker decoders), the optimisation attack, client FLOPs per image and training img/s.
Stages whose ``summary.json`` already exists are reused if their saved config is the requested
one; a stage made with another config stops the pipeline with the keys that differ (delete the
stage's folder to redo it). ``--config.stages=expert,vanilla`` (say) runs only those stages and
their attacks, and writes no report: separate processes can run stages side by side
(``scripts/device_split_check.sh``), and a last call with every stage reuses them and writes it.
"""

import copy
import json
import os

from absl import logging

from experiments import attack, common, pretrain, train, transfer
from experiments.configs.transfer import MODES


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(a, b) -> bool:
    """Equal values; two spellings of one existing path (relative, absolute) are equal."""
    if a == b:
        return True
    return (isinstance(a, str) and isinstance(b, str) and os.path.exists(a)
            and os.path.exists(b) and os.path.samefile(a, b))


def check_reusable(config, workdir: str) -> None:
    """Raises unless WORKDIR's saved ``config.json`` agrees with ``config`` on every key both
    have (a key added to the code since the run was made is not a difference): a stage made
    at another scale or with other settings is never silently reused."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = _flatten(json.load(f))
    wanted = _flatten(json.loads(config.to_json()))
    differ = {k: (saved[k], wanted[k]) for k in saved.keys() & wanted.keys()
              if not _same(saved[k], wanted[k])}
    if differ:
        lines = "; ".join(f"{k}: saved {a!r}, requested {b!r}"
                          for k, (a, b) in sorted(differ.items()))
        raise ValueError(
            f"{workdir} holds a run made with another config ({lines}). Delete {workdir} to "
            "rerun that stage, or pass another --workdir.")


def reuse_or_run(run_fn, config, workdir: str) -> dict:
    """Runs a stage unless WORKDIR/summary.json exists (then it is reused, if its config is the
    requested one); resumes a stage that was interrupted."""
    path = os.path.join(workdir, "summary.json")
    check_reusable(config, workdir)
    if os.path.exists(path):
        logging.warning("Reusing %s", workdir)
        with open(path) as f:
            return json.load(f)
    resume = os.path.isdir(os.path.join(workdir, "checkpoints")) or os.path.isdir(
        os.path.join(workdir, "steps"))
    return run_fn(config, workdir, resume=resume)


def table_row(method: str, task: str, train: dict, attacked: dict) -> dict:
    worst = attacked["worst_case"]
    flops = train.get("run", {}).get("client_flops") or {}
    per_image = flops.get("attacker_aware", flops.get("vanilla"))
    batch = train["config"]["data"]["batch_size"]
    opt = attacked.get("optimization") or {}
    return {"method": method, "task": task, "accuracy": train["best_accuracy"],
            "attack_mse": worst["mse"], "attack_mse_decoder": worst["mse_decoder"],
            "attack_ssim": worst["ssim"], "attack_psnr": worst["psnr"],
            "optimization_mse": opt.get("mse"),
            "client_mflops_per_image": per_image / batch / 1e6 if per_image else None,
            "client_overhead": flops.get("overhead"),
            "images_per_sec": train["images_per_sec"], "wall_seconds": train["wall_seconds"]}


def task_name(summary: dict) -> str:
    data = summary["config"]["data"]
    return f"{data['dataset']} {data['classes'] or 'all'}"


def selected_stages(config, modes: list[str]) -> list[str]:
    """The stages this call runs (``config.stages``; all of them if empty), checked."""
    every = ["expert"] + (["vanilla"] if config.source_vanilla else []) + modes
    wanted = [s.strip() for s in config.stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in every]
    if unknown:
        raise ValueError(f"Unknown stages {unknown} in --config.stages; this pipeline's "
                         f"stages are {every} (modes from --config.modes, 'vanilla' only "
                         "with --config.source_vanilla).")
    return wanted or every


def run(config, workdir: str, *, resume: bool = False) -> dict:
    """Runs (or reuses) every stage; returns the summary with the table rows."""
    del resume  # Every stage is reused or resumed on its own.
    modes = [m.strip() for m in config.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"Unknown transfer modes {unknown}; choose from {MODES}.")
    stages = selected_stages(config, modes)
    expert_dir = os.path.join(workdir, "expert")
    source = config.expert
    trained, dirs = {}, {}
    if "expert" in stages:
        trained["expert (source task)"] = reuse_or_run(pretrain.run, source, expert_dir)
        dirs["expert (source task)"] = expert_dir
    if "vanilla" in stages:
        # The same model, data and schedule as the expert, without the attacker-aware term.
        dirs["vanilla (source task)"] = os.path.join(workdir, "vanilla_source")
        trained["vanilla (source task)"] = reuse_or_run(train.run, source,
                                                         dirs["vanilla (source task)"])
    for mode in (m for m in modes if m in stages):
        t = copy.deepcopy(config.target)
        t.transfer.mode = mode
        t.transfer.expert = transfer.expert_for(mode, expert_dir)
        name = "ResSFL (lite)" if mode == "lite" else mode
        dirs[name] = os.path.join(workdir, f"transfer_{mode}")
        trained[name] = reuse_or_run(transfer.run, t, dirs[name])
    rows = []
    for name, summary in trained.items():
        a = copy.deepcopy(config.attack)
        a.checkpoint, a.which = dirs[name], config.which
        attacked = reuse_or_run(attack.run, a, os.path.join(dirs[name], "attack"))
        rows.append(table_row(name, task_name(summary), summary, attacked))
    result = {"rows": rows, "config": json.loads(config.to_json())}
    if config.stages.strip():
        return result  # A partial call (maybe one of several side by side) writes no report.
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(table(rows) + "\n")
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def fmt(value, spec: str) -> str:
    """A table cell: ``format(value, spec)``, or '-' for None."""
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """The privacy/utility table in Markdown (higher attack MSE = more private)."""
    lines = ["| method | task | accuracy | attack MSE (decoder) | SSIM | PSNR | optim. MSE | "
             "client MFLOP/img | overhead | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['task']} | {r['accuracy']:.4f} | {r['attack_mse']:.4f} "
            f"({r['attack_mse_decoder']}) | {r['attack_ssim']:.3f} | {r['attack_psnr']:.2f} | "
            f"{fmt(r['optimization_mse'], '.4f')} | {fmt(r['client_mflops_per_image'], '.0f')}"
            f" | {fmt(r['client_overhead'], '+.0%')} | {fmt(r['images_per_sec'], '.0f')} |")
    return "\n".join(lines)


def report(summary: dict, workdir: str) -> None:
    print(table(summary["rows"]))
    print(f"report in {workdir}/report.md")


if __name__ == "__main__":
    common.cli(run, name="pipeline", report=report)
