"""Config for the defense comparison (``python -m experiments.compare``): every key is here.

All methods train on the target task of the transfer preset (the reference's Table 4 uses
CIFAR-100, VGG-11-bn cut 4, K=2) and are attacked by the same attackers on the same targets:

  ``vanilla``          plain SFL without a bottleneck; the post-hoc defenses below are applied to
                       this one model at test time only (as the reference's Table 4 does).
  ``posthoc``          'kind:s1,s2;kind:...' over gaussian (epsilon), laplace (s, scale 1/s),
                       dropout (rate), topk (ratio): each setting is one attack of ``vanilla``.
  ``bottlenecks``      bottleneck-only models (trained, no regularisation).
  ``nopeek``           NoPeek weights alpha (trained: CE + alpha * dCor, no bottleneck).
  ``ressfl_alphas``    ResSFL (transfer ``lite`` from the expert) for each alpha.

Training runs and their attacks live under ``runs_dir`` (cpu: runs/pipeline_cpu_full, shared
with ``experiments.pipeline:cpu_full``, whose expert, ``transfer_scratch`` (= the norelu_C8S1
bottleneck-only model) and ``transfer_lite`` runs are reused). Outputs in WORKDIR:
``report.md``, ``tradeoff.png``, ``reconstructions.png`` (targets, then each method's
strongest attacker), ``summary.json``.

Presets: ``cpu`` (Fashion-MNIST 5-9, short sweeps; declared below), ``smoke`` (tests),
``paper_cifar100`` (the reference's Table 4: CIFAR-10 expert -> CIFAR-100 target, its sweeps;
needs data_dir and the expert) and ``paper_cifar10`` (the same sweeps in the other direction,
CIFAR-100 expert -> CIFAR-10 target, the paper's second transfer setting; the reference
reports no Table 4 for it).
"""

import ml_collections

from experiments import configs

PRESETS = ("cpu", "smoke", "paper_cifar10", "paper_cifar100")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    preset = preset or "cpu"
    configs.check_preset(preset, PRESETS)
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.train_preset = "smoke" if preset == "smoke" else "cpu"   # configs/transfer.py preset.
    c.pretrain_preset = c.train_preset                          # configs/pretrain.py preset.
    c.attack_preset = c.train_preset                            # configs/attack.py preset.
    c.runs_dir = "runs/pipeline_cpu_full" if preset == "cpu" else ""  # '' = WORKDIR.
    c.data_dir = ""                   # Overrides data.data_dir of every training run.
    c.expert = ""                     # An existing expert WORKDIR; '' = pretrain one here.
    c.posthoc = "gaussian:5,10;laplace:10,20;dropout:0.2;topk:0.5"
    c.bottlenecks = "norelu_C4S1,norelu_C8S1"
    c.nopeek = "1.0"
    c.ressfl_alphas = "0.3"
    c.which = "best"
    if preset == "smoke":
        c.posthoc = "laplace:10"
        c.bottlenecks = ""
        c.nopeek = "1.0"
    elif preset in ("paper_cifar100", "paper_cifar10"):
        c.train_preset, c.pretrain_preset = (
            ("paper_cifar10_to_cifar100", "paper_cifar10") if preset == "paper_cifar100"
            else ("paper_cifar100_to_cifar10", "paper_cifar100"))
        c.attack_preset = "reference"
        c.posthoc = "laplace:10,12.5,20;dropout:0.15,0.2,0.25;topk:0.5,0.6,0.7"
        c.bottlenecks = "norelu_C4S1,norelu_C8S1,norelu_C16S1"
        c.nopeek = "1.0,1.5,2.0"
        c.ressfl_alphas = "0.3"
    return c
