"""Baseline defenses vs ResSFL, one attack for all: ``python -m experiments.compare``.

  python -m experiments.compare --workdir=runs/compare_cpu   # reuses runs/pipeline_cpu_full's runs
  python -m experiments.compare --config=experiments/configs/compare.py:paper_cifar100 \\
      --config.data_dir=/data/cifar-100-python.tar.gz --config.expert=runs/expert_cifar10

Trains (or reuses) every method of the preset on the target task, attacks each with the same
attackers on the same targets (post-hoc defenses: the undefended model attacked with the
defense on its smashed data), and writes ``report.md`` (method, setting, accuracy, attack
MSE/SSIM/PSNR as the defender's worst case over attacker decoders, client FLOPs per image),
``tradeoff.png`` (accuracy vs attack MSE) and ``reconstructions.png``. See
``experiments/configs/compare.py`` for the methods and sweeps.
"""

import json
import os

import numpy as np

from experiments import attack, common, pipeline, pretrain, transfer
from experiments.configs import attack as attack_config
from experiments.configs import pretrain as pretrain_config
from experiments.configs import transfer as transfer_config
from ressfl_jax import defenses, metrics


def parse_posthoc(spec: str) -> list[tuple[str, float]]:
    """'laplace:10,20;topk:0.5' -> [('laplace', 10.0), ('laplace', 20.0), ('topk', 0.5)]."""
    settings = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kind, _, values = part.partition(":")
        if not values:
            raise ValueError(f"Bad posthoc entry {part!r}: use 'kind:s1,s2' (e.g. laplace:10).")
        for value in values.split(","):
            d = defenses.parse_defense(kind, float(value))
            settings.append((d.kind, d.strength))
    return settings


def _floats(spec: str) -> list[float]:
    return [float(v) for v in spec.split(",") if v.strip()]


def _train_config(config, *, mode="scratch", bottleneck=None, nopeek=0.0, alpha=None):
    t = transfer_config.get_config(config.train_preset)
    t.transfer.mode = mode
    if bottleneck is not None:
        t.model.bottleneck = bottleneck
    t.defense.nopeek_alpha = nopeek
    if alpha is not None:
        t.attacker.alpha = alpha
    if config.data_dir:
        t.data.data_dir = config.data_dir
    return t


def plan(config, workdir: str) -> list[dict]:
    """Every (method, setting) to report: its training run, and the attack's defense if any."""
    posthoc = parse_posthoc(config.posthoc)
    default_bottleneck = transfer_config.get_config(config.train_preset).model.bottleneck
    methods = [{"method": "vanilla", "setting": "no bottleneck",
                "dir": os.path.join(workdir, "vanilla"),
                "train": _train_config(config, bottleneck="None"), "defense": None}]
    for kind, strength in posthoc:
        methods.append({**methods[0], "method": f"{kind} (post-hoc)",
                        "setting": f"{kind} {strength:g}", "defense": (kind, strength)})
    for b in filter(None, (b.strip() for b in config.bottlenecks.split(","))):
        name = "transfer_scratch" if b == default_bottleneck else f"bottleneck_{b}"
        methods.append({"method": "bottleneck", "setting": b, "dir": os.path.join(workdir, name),
                        "train": _train_config(config, bottleneck=b), "defense": None})
    for a in _floats(config.nopeek):
        methods.append({"method": "NoPeek", "setting": f"alpha {a:g}",
                        "dir": os.path.join(workdir, f"nopeek_{a:g}"),
                        "train": _train_config(config, bottleneck="None", nopeek=a),
                        "defense": None})
    lite_alpha = transfer_config.get_config(config.train_preset).attacker.alpha
    for a in _floats(config.ressfl_alphas):
        name = "transfer_lite" if a == lite_alpha else f"transfer_lite_alpha{a:g}"
        methods.append({"method": "ResSFL", "setting": f"alpha {a:g}",
                        "dir": os.path.join(workdir, name),
                        "train": _train_config(config, mode="lite", alpha=a), "defense": None})
    return methods


def run(config, workdir: str, *, resume: bool = False) -> dict:
    """Trains/reuses and attacks every planned method; returns the summary with the rows."""
    del resume  # Every stage is reused or resumed on its own.
    runs_dir = config.runs_dir or workdir
    methods = plan(config, runs_dir)
    expert_dir = config.expert or os.path.join(runs_dir, "expert")
    if any(m["train"].transfer.mode == "lite" for m in methods) and not config.expert:
        pipeline.reuse_or_run(pretrain.run, pretrain_config.get_config(config.pretrain_preset),
                              expert_dir)
    rows, grids = [], {}
    for m in methods:
        m["train"].transfer.expert = transfer.expert_for(m["train"].transfer.mode, expert_dir)
        trained = pipeline.reuse_or_run(transfer.run, m["train"], m["dir"])
        a = attack_config.get_config(config.attack_preset)
        a.checkpoint, a.which = m["dir"], config.which
        attack_dir = os.path.join(m["dir"], "attack")
        if m["defense"]:
            a.defense_kind, a.defense_strength = m["defense"]
            attack_dir += "_{}_{:g}".format(*m["defense"])
        attacked = pipeline.reuse_or_run(attack.run, a, attack_dir)
        row = pipeline.table_row(m["method"], pipeline.task_name(trained), trained, attacked)
        row.update(setting=m["setting"], accuracy=attacked["accuracy"])
        rows.append(row)
        grids[f"{m['method']} {m['setting']}"] = _strongest_recon(attack_dir, attacked)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(table(rows) + "\n")
    _tradeoff_plot(rows, os.path.join(workdir, "tradeoff.png"))
    _side_by_side(grids, os.path.join(workdir, "reconstructions.png"))
    summary = {"rows": rows, "grid_rows": ["targets", *grids],
               "config": json.loads(config.to_json())}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _strongest_recon(attack_dir: str, attacked: dict):
    """(targets, reconstructions of the decoder with the lowest MSE) from the attack's npz."""
    with np.load(os.path.join(attack_dir, "recon",
                              f"{attacked['which']}_{attacked['step']}.npz")) as arrays:
        return arrays["targets"], arrays[attacked["worst_case"]["mse_decoder"]]


def _side_by_side(grids: dict, path: str) -> None:
    targets = next(iter(grids.values()))[0]
    metrics.save_png(path, metrics.image_grid([targets] + [r for _, r in grids.values()]))


def _tradeoff_plot(rows: list[dict], path: str) -> None:
    import matplotlib  # Lazy: only this report draws plots.
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    xs, ys = [r["attack_mse"] for r in rows], [r["accuracy"] for r in rows]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed = []  # Labels of points close to earlier ones (a label is wide) go below them.
    for method in dict.fromkeys(r["method"] for r in rows):
        points = [r for r in rows if r["method"] == method]
        ax.scatter([r["attack_mse"] for r in points], [r["accuracy"] for r in points],
                   label=method)
        for r in points:
            x, y = r["attack_mse"], r["accuracy"]
            near = sum(abs(x - px) < 0.12 * span_x and abs(y - py) < 0.04 * span_y
                       for px, py in placed)
            placed.append((x, y))
            ax.annotate(r["setting"], (x, y), fontsize=7, textcoords="offset points",
                        xytext=(3, 3) if not near else (14, -12 * near),
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="gray") if near else None)
    ax.set_xlabel("attack MSE (worst case over attacker decoders; higher = more private)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    """Markdown: method, setting, accuracy, MSE, SSIM, PSNR, client FLOPs per image."""
    lines = ["| method | setting | accuracy | attack MSE (decoder) | SSIM | PSNR | "
             "client MFLOP/img |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        flops = r["client_mflops_per_image"]
        lines.append(f"| {r['method']} | {r['setting']} | {r['accuracy']:.4f} | "
                     f"{r['attack_mse']:.4f} ({r['attack_mse_decoder']}) | "
                     f"{r['attack_ssim']:.3f} | {r['attack_psnr']:.2f} | "
                     f"{pipeline.fmt(flops, '.0f')} |")
    return "\n".join(lines)


def report(summary: dict, workdir: str) -> None:
    print(table(summary["rows"]))
    print(f"report in {workdir}/report.md, {workdir}/tradeoff.png, "
          f"{workdir}/reconstructions.png")


if __name__ == "__main__":
    common.cli(run, name="compare", report=report)
