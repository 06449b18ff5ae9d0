"""Config for vanilla SFL (``python -m experiments.train``): every key is declared here.

Presets (``--config=experiments/configs/train.py:PRESET``):
  ``cpu``   (default) VGG-11-bn cut 4, 2 clients, real Fashion-MNIST; fits a 2-core machine.
  ``smoke`` tiny widths, synthetic data, a few steps: for tests.
  ``paper`` the reference's hyperparameters (CIFAR-10, VGG-11-bn cut 4, 200 epochs); needs
            ``--config.data.data_dir=/path/to/cifar-10-python.tar.gz``.
Override any key on the command line, e.g. ``--config.data.num_clients=10``.
"""

import ml_collections

from experiments import configs

PRESETS = ("cpu", "smoke", "paper")


def base_config() -> ml_collections.ConfigDict:
    """Keys shared by train / pretrain / transfer, with the reference's defaults."""
    c = ml_collections.ConfigDict()
    c.preset = ""

    c.model = ml_collections.ConfigDict()
    c.model.arch = "vgg11_bn"
    c.model.cut_layer = 4            # Reference numbering (spec §0): VGG cut 4 = paper "cut 2".
    c.model.bottleneck = "None"      # e.g. "norelu_C8S1" (spec §2.5).
    c.model.width_mult = 1.0
    c.model.conv_impl = "auto"       # "auto": im2col/tapwise matmuls on CPU, XLA conv elsewhere.
    c.model.dtype = "float32"        # Compute dtype: float32 | bfloat16 (mixed precision: bf16
    #                                  activations, float32 params, optimiser, BN stats, losses).

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "fashion_mnist"
    c.data.data_dir = ""             # "" = the dataset's default location.
    c.data.classes = ""              # "" = all; "0-4" or "5,6,7" = a class subset, relabelled.
    c.data.fmnist_resize = "nearest"  # 28->32 like the reference; "pad" pads 2 px instead.
    c.data.augment = "default"       # "default" = the dataset's (spec §4.8), or none|crop_flip|...
    c.data.num_clients = 2           # K: client slots active per epoch.
    c.data.client_sample_ratio = 1.0  # r < 1: K/r users, K sampled per epoch (spec §5).
    c.data.noniid = 1.0              # < 1: label shards, int(noniid * num_classes) classes/user.
    c.data.dataset_portion = 1.0
    c.data.batch_size = 128          # Per client.
    c.data.eval_batch_size = 500

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.05                # Server SGD LR.
    c.optim.local_lr = -1.0          # Client SGD LR; -1 = same as lr; 0 freezes the client.
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.milestones = (60, 120, 160)  # Epochs; scaled by 1/client_sample_ratio (spec §4.6).
    c.optim.gamma = 0.2
    c.optim.zero_lr_first_epoch = True  # The reference's LR-0 first epoch (spec §4.6).

    c.defense = ml_collections.ConfigDict()  # Training-time defenses (spec §8).
    c.defense.kind = "none"          # On the smashed data sent to the server while training:
    #                                  none|gaussian|laplace|dropout|topk (the reference applies
    #                                  these only at test time: see configs/attack.py).
    c.defense.strength = 0.0         # gaussian: epsilon; laplace: s (scale 1/s); dropout and
    #                                  topk: the ratio (ressfl_jax.defenses).
    c.defense.nopeek_alpha = 0.0     # > 0: loss CE + alpha * dCor(x, z) (NoPeek, trained).

    c.run = ml_collections.ConfigDict()
    c.run.seed = 123
    c.run.num_epochs = 200
    c.run.scheme = "parallel"        # Server schedule: parallel (fast) | sequential (reference V2).
    c.run.max_steps_per_epoch = 0    # 0 = full epochs; > 0 caps rounds per epoch.
    c.run.devices = 1                # Shard the client slots over devices: 1 = one device,
    #                                  -1 = every device (all processes), n = the first n.
    c.run.log_every_steps = 50
    c.run.eval_every_epochs = 1
    c.run.ckpt_every_epochs = 1
    c.run.keep_checkpoints = 2       # Newest periodic checkpoints kept in last/ (+ epoch 0).
    c.run.keep_epochs = ()           # Epochs also saved and kept, e.g. (1, 2, 5, 10, 20, 50, 100)
    #                                  as the reference's --save_more_checkpoints (Fig. 5).
    return c


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    """Applies the vanilla-SFL preset ``preset`` to a base config."""
    configs.check_preset(preset, PRESETS)
    c.preset = preset
    if preset == "cpu":
        c.data.dataset = "fashion_mnist"
        c.data.num_clients = 2
        c.optim.lr = 0.05
        c.optim.milestones = (2,)
        c.optim.zero_lr_first_epoch = False  # 2 epochs: an LR-0 epoch would waste half the run.
        c.run.num_epochs = 2
        c.run.log_every_steps = 10
    elif preset == "smoke":
        c.model.width_mult = 1 / 16
        # XLA's conv: the tests' end-to-end runs compile ~30% faster than with im2col ("auto"),
        # which tests/test_layers.py and test_models.py check against XLA's conv directly.
        c.model.conv_impl = "xla"
        c.data.dataset = "synthetic"
        c.data.batch_size = 8
        c.data.eval_batch_size = 64
        c.optim.lr = 0.05
        c.optim.milestones = (2,)
        c.optim.zero_lr_first_epoch = False
        c.run.num_epochs = 2
        c.run.max_steps_per_epoch = 4
        c.run.log_every_steps = 2
    elif preset == "paper":
        c.data.dataset = "cifar10"
        c.data.num_clients = 1
        c.run.num_epochs = 200
        c.run.scheme = "sequential"
        c.run.ckpt_every_epochs = 50
        c.run.log_every_steps = 100
    return c


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    return apply_preset(base_config(), preset or "cpu")
