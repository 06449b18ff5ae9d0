"""Config for the whole ResSFL pipeline (``python -m experiments.pipeline``): every key is here.

Stages: pretrain the expert (the ``expert`` group, a ``configs/pretrain.py`` config) and, with
``source_vanilla``, the same model without the defense -> transfer to the target task in each
of ``modes`` (the ``target`` group, a ``configs/transfer.py`` config whose ``transfer.mode``
and ``transfer.expert`` the pipeline sets) -> attack every resulting model (the ``attack``
group, a ``configs/attack.py`` config) -> a privacy/utility table. Any stage key can be
overridden: ``--config.expert.run.num_epochs=4 --config.attack.epochs=50``. A stage whose
``summary.json`` exists is reused, not rerun, if its saved config equals the requested one
(otherwise the pipeline stops and names the keys that differ).

Presets:
  ``cpu``      (default) the README's main job, <= 20 minutes on a 2-core machine: Fashion-MNIST
               classes 0-4 for the expert, classes 5-9 for the target task, VGG-11-bn cut 4 +
               norelu_C8S1, K=2; every stage cut to 10% of its training split (3k images) and
               one epoch, phase 0 to 2 epochs on 2,000 images, the attack to 1,000 auxiliary
               images and no optimisation attack. It shows the pipeline end to end; at this
               scale the privacy numbers cannot separate the methods (RESULTS.md).
  ``cpu_full`` the stages' own ``cpu`` presets (2 epochs, 35-50% of the splits, the optimisation
               attack): about 75 minutes on 2 cores.
  ``cifar10_split`` the paper's data, split as the ``cpu`` preset splits Fashion-MNIST: the
               ``paper_cifar10`` expert on CIFAR-10 classes 0-4 (all 25k images, 5 epochs,
               5-epoch phase 0, no LR-0 epoch, one LR milestone at the last epoch), the
               ``paper_cifar10_to_cifar100`` transfer (K=2, sequential, lite
               conv_normN0C16 every 5 rounds) on classes 5-9 for 3 epochs, and a fresh
               res_normN4C64 attack (20 epochs, 5,000 test images). Needs CIFAR-10 (``bash
               scripts/get_cifar10.sh``); 80 minutes on 2 cores (dev VM, 2026-11-27). A
               stand-in for the paper's CIFAR-10 -> CIFAR-100 transfer, whose CIFAR-100 has no
               offline source here.
  ``smoke``    tiny widths and synthetic data: for tests.
"""

import ml_collections

from experiments import configs
from experiments.configs import attack, pretrain, transfer

PRESETS = ("cpu", "cpu_full", "cifar10_split", "smoke")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    preset = preset or "cpu"
    configs.check_preset(preset, PRESETS)
    stage_preset = "smoke" if preset == "smoke" else "cpu"
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.expert = pretrain.get_config(stage_preset)   # The expert (and the source vanilla model).
    c.target = transfer.get_config(stage_preset)   # Every transfer mode (mode/expert set here).
    c.attack = attack.get_config(stage_preset)     # Every attack (checkpoint/which set here).
    c.modes = "lite,naive,scratch"   # Transfer modes to run (configs/transfer.py: MODES).
    c.source_vanilla = True          # Also train + attack the undefended model on the source
    #                                  task (the expert's comparison: same model and schedule).
    c.which = "best"                 # Checkpoint attacked: best test accuracy (reference).
    c.stages = ""                    # Run only these stages now ("expert", "vanilla" and modes,
    #                                  comma-separated; "" = all): separate processes can train
    #                                  (and attack) stages side by side, e.g. the expert beside
    #                                  vanilla and scratch on one GPU; such a partial call writes
    #                                  no report, a last call with all stages reuses them and
    #                                  writes it. A transfer from the expert needs it finished.
    if preset == "cpu":
        for stage in (c.expert, c.target):
            stage.data.dataset_portion = 0.1
            stage.run.num_epochs = 1
            stage.attacker.pretrain_epochs = 2
            stage.attacker.pretrain_max_pairs = 2000
        c.attack.aux_max = 1000
        c.attack.optimization.steps = 0
    elif preset == "cifar10_split":
        c.expert = pretrain.get_config("paper_cifar10")
        c.expert.data.classes = "0-4"
        c.target = transfer.get_config("paper_cifar10_to_cifar100")
        c.target.data.dataset = "cifar10"
        c.target.data.classes = "5-9"
        for stage, epochs in ((c.expert, 5), (c.target, 3)):
            stage.run.num_epochs = epochs
            stage.optim.milestones = (epochs,)
            stage.optim.zero_lr_first_epoch = False
            stage.run.ckpt_every_epochs = 1
            stage.run.log_every_steps = 50
            stage.attacker.pretrain_epochs = 5
        c.attack.decoders = "res_normN4C64"
        c.attack.epochs = 20
        c.attack.aux_max = 5000
        c.attack.optimization.steps = 0
    return c
