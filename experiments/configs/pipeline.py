"""Config for the whole ResSFL pipeline (``python -m experiments.pipeline``): every key is here.

Stages: pretrain the expert (``configs/pretrain.py``) and, with ``source_vanilla``, the same
model without the defense -> transfer to the target task in each of
``modes`` (``configs/transfer.py``) -> attack every resulting model (``configs/attack.py``)
-> a privacy/utility table. Each stage uses the named preset of its
own config; a stage whose ``summary.json`` exists is reused, not rerun.

Presets:
  ``cpu``   (default) the offline default on a 2-core machine: Fashion-MNIST classes 0-4 for
            the expert, classes 5-9 for the target task, VGG-11-bn cut 4 + norelu_C8S1, K=2.
  ``smoke`` tiny widths and synthetic data: for tests.
"""

import ml_collections

from experiments import configs

PRESETS = ("cpu", "smoke")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    preset = preset or "cpu"
    configs.check_preset(preset, PRESETS)
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.pretrain_preset = preset       # Preset of configs/pretrain.py for the expert.
    c.transfer_preset = preset       # Preset of configs/transfer.py for every mode.
    c.attack_preset = preset         # Preset of configs/attack.py for every attack.
    c.modes = "lite,naive,scratch"   # Transfer modes to run (configs/transfer.py: MODES).
    c.source_vanilla = True          # Also train + attack the undefended model on the source
    #                                  task (the expert's comparison: same model and schedule).
    c.which = "best"                 # Checkpoint attacked: best test accuracy (reference).
    return c
