"""Config for ResSFL step 2, resistance transfer (``python -m experiments.transfer``).

Every key is declared here (shared keys in ``configs/train.py:base_config``, the attacker group
in ``configs/pretrain.py:attacker_config``) plus the ``transfer`` group.

Modes (``--config.transfer.mode``, spec §6; K = ``data.num_clients``):
  ``lite``     ResSFL: the expert's extractor in every client, then SFL on the target task with
               the lite attacker-aware term (``attacker``: conv_normN0C16, interval 5, alpha 0.3,
               tau 0.5, phase 0 on the loaded client); clients at ``transfer.client_lr`` (0.005),
               the server at ``optim.lr`` (0.05).
  ``naive``    the expert's extractor, low client LR, no attacker term (``finetune_lowLRsimple``).
  ``freeze``   the expert's extractor with client LR 0. As in the reference the client's
               BatchNorm layers stay in train mode, so its running statistics keep adapting to
               the target data (and are FedAvg-ed); the weights never change.
  ``scratch``  no expert, plain SFL with clients at ``optim.local_lr``: the undefended baseline.
  ``attacker_aware_from_scratch``  no expert, the full attacker-aware training by the clients
               (the ``attacker`` group with ``transfer.scratch_interval``): the costly
               alternative ResSFL avoids.

Presets (``--config=experiments/configs/transfer.py:PRESET``):
  ``cpu``   (default) Fashion-MNIST classes 5-9 (the source expert used 0-4), half the
            training split (15k images), 2 clients, 2 epochs, expert ``runs/pretrain_cpu``;
            fits a 2-core machine.
  ``smoke`` tiny widths, synthetic data: for tests (give ``transfer.expert``).
  ``paper_cifar10_to_cifar100`` / ``paper_cifar100_to_cifar10``: the reference's Table 3 lite
            run (VGG-11-bn cut 4, norelu_C8S1, K=2, 200 epochs); give ``data.data_dir`` and
            ``transfer.expert``.
"""

import ml_collections

from experiments import configs
from experiments.configs import pretrain, train

PRESETS = ("cpu", "smoke", "paper_cifar10_to_cifar100", "paper_cifar100_to_cifar10")
MODES = ("lite", "naive", "freeze", "scratch", "attacker_aware_from_scratch")


def base_config() -> ml_collections.ConfigDict:
    c = train.base_config()
    c.model.bottleneck = "norelu_C8S1"
    c.attacker = pretrain.attacker_config()
    c.attacker.decoder = "conv_normN0C16"  # The lite simulated attacker.
    c.attacker.interval = 5
    c.transfer = ml_collections.ConfigDict()
    c.transfer.mode = "lite"
    c.transfer.expert = ""            # The expert run's WORKDIR (experiments.pretrain output).
    c.transfer.which = "best"         # 'best' (the reference copies checkpoint_*_best) | 'last'.
    c.transfer.load_server = True     # Also load the server body (all reference scripts do).
    c.transfer.normalization = "expert"  # 'expert': the client keeps normalising inputs with
    #                                      the expert's mean/std; 'target': the target dataset's
    #                                      (the reference, whose normalisation is in the data).
    c.transfer.client_lr = 0.005      # Client SGD LR of lite / naive (freeze uses 0).
    c.transfer.scratch_interval = 1   # Decoder interval of attacker_aware_from_scratch.
    return c


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    configs.check_preset(preset, PRESETS)
    if preset == "smoke":
        train.apply_preset(c, "smoke")
        c.attacker.decoder = "conv_normN0C8"
        c.attacker.interval = 2
        c.attacker.pretrain_epochs = 2
        c.attacker.pretrain_batch_size = 16
        c.attacker.pretrain_max_pairs = 100
    elif preset == "cpu":
        train.apply_preset(c, "cpu")
        c.data.classes = "5-9"
        c.data.dataset_portion = 0.5
        c.transfer.expert = "runs/pretrain_cpu"
        c.attacker.pretrain_epochs = 5
    else:
        train.apply_preset(c, "paper")
        source, target = preset[len("paper_"):].split("_to_")
        c.data.dataset = target
        c.data.num_clients = 2
        c.run.scheme = "sequential"
        c.transfer.normalization = "target"
        c.transfer.expert = f"runs/expert_{source}"
    c.preset = preset
    return c


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    return apply_preset(base_config(), preset or "cpu")
