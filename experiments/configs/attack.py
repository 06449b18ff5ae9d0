"""Config for the model-inversion attack (``python -m experiments.attack``): every key is here.

  python -m experiments.attack --config.checkpoint=runs/pretrain_cpu --workdir=runs/attack_x
  python -m experiments.attack --config=experiments/configs/attack.py:cpu \\
      --config.checkpoint=runs/train_cpu --config.step=all        # MSE vs epoch (Fig. 5)

Presets (``--config=experiments/configs/attack.py:PRESET``):
  ``reference`` (default) the reference's protocol (spec §1.3, §7): the 4 attacker decoders,
            50 epochs, batch 32, Adam 1e-3, MSE, best-single-validation-batch selection, the
            test split as auxiliary data, JPEG ground truth, best of K-1 colluders.
  ``cpu``   the same protocol, cut down to fit a 2-core machine (2 decoders, fewer epochs and
            auxiliary images).
  ``smoke`` tiny: for tests.
"""

import ml_collections

from experiments import configs

PRESETS = ("reference", "cpu", "smoke")


def get_config(preset: str = "reference") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = ""
    # What to attack.
    c.checkpoint = ""            # A run WORKDIR (or its checkpoints dir). Required.
    c.which = "best"             # 'best' (highest test accuracy, --test_best) or 'last'.
    c.step = ""                  # '' = newest of `which`; 'N' = saved step (epoch) N;
    #                              'all' = every saved step in last/ (MSE vs epoch);
    #                              '10,20' = those saved steps of `which`.
    c.data_dir = ""              # '' = where the attacked run read its data.
    # The attacker (spec §7.2-7.3).
    c.decoders = "conv_normN0C16,res_normN0C16,res_normN2C32,res_normN4C64"
    c.epochs = 50
    c.batch_size = 32
    c.lr = 1e-3
    c.loss = "mse"               # 'mse' or 'ssim' (maximised).
    c.selection = "best_batch"   # 'best_batch' (reference) | 'val_mean' (clean, eval mode).
    c.val_fraction = 0.1
    c.split_seed = 123
    c.aux_source = "test"        # 'test' (reference) | 'train' (training split minus targets).
    c.aux_max = 0                # > 0: use only the first N auxiliary images.
    c.jpeg = True                # JPEG(q75) round trip of every ground-truth image (§7.4).
    c.seeds = 1                  # Repeats with different keys: mean and std (average_time).
    c.colluders = -1             # Decoders per seed, best one kept; -1 = K-1 (reference).
    # Targets (spec §7.1, §10).
    c.targets = "train"          # 'train': sampled from the training split (clients' private
    #                              data); 'reference': the reference's 128 fixture images.
    c.reference_dir = ""         # Checkout of zlijingtao/ResSFL, for targets='reference'.
    c.num_targets = 128
    # A test-time defense on the smashed data (spec §8: the reference's post-hoc Table 4
    # defenses): applied to the targets' features and to every accuracy batch; the attacker
    # still trains on clean features. none|gaussian|laplace|dropout|topk.
    c.defense_kind = "none"
    c.defense_strength = 0.0     # gaussian: epsilon; laplace: s (scale 1/s); dropout/topk: ratio.
    # The optimisation attack (MIA_mf, spec §7.6); 0 steps = off.
    c.optimization = ml_collections.ConfigDict()
    c.optimization.steps = 0     # The reference: 3000.
    c.optimization.lr = 0.8
    c.optimization.tv_weight = 0.0
    c.optimization.num_targets = 128
    # Outputs and randomness.
    c.grid_images = 16           # Targets shown in the reconstruction grids.
    c.seed = 123
    c.conv_impl = "auto"
    return apply_preset(c, preset or "reference")


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    configs.check_preset(preset, PRESETS)
    c.preset = preset
    if preset == "cpu":
        c.decoders = "conv_normN0C16,res_normN4C64"
        c.epochs = 10
        c.aux_max = 3000
        c.optimization.steps = 300
        c.optimization.num_targets = 32
    elif preset == "smoke":
        c.decoders = "conv_normN0C8"
        c.conv_impl = "xla"          # Compiles faster; see configs/train.py's smoke preset.
        c.epochs = 2
        c.batch_size = 8
        c.aux_max = 40
        c.num_targets = 8
        c.grid_images = 4
        c.optimization.steps = 3
        c.optimization.num_targets = 4
    return c
