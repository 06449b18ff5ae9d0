"""Times the ORIGINAL PyTorch ResSFL code's own per-batch calls, for comparison with ressfl_jax.

Run with the torch virtualenv (``bash scripts/setup_torch_reference.sh /work/ref/ResSFL``):

  .venv-torch/bin/python -m experiments.torch_reference --reference=/work/ref/ResSFL \
      --configs=vanilla_k1,expert --repeats=5 --threads=2 --out=torch_ref.json

Method. For each configuration (``CONFIGS``) the reference's ``MIA_torch.MIA`` object is built
exactly as ``main_MIA.py`` builds it (VGG-11-bn, cutlayer 4, ``norelu_C8S1``, CIFAR-10 shapes),
then one *call* runs the reference's own methods in the order of the body of ``MIA.__call__``'s
``V2_epoch`` loop: ``gan_train_step`` (only when ``gan_adv`` is on and ``batch % interval == 0``,
``gan_num_step`` times), ``optimizer_zero_grad``, ``train_target_step``, ``optimizer_step``. A
call covers ``batches_per_call`` batch indices x ``num_clients`` clients, so a 10-client round or
a full 5-batch interval cycle is one call. The attack configurations call ``MIA.attack`` (the MI
attacker's decoder training loop, MSE, Adam 1e-3, batch 32) for one epoch over ``batches_per_call``
synthetic (image, 8x8x8 smashed data) batches and no validation batches. One warm-up call, then
``--repeats`` timed calls (``time.perf_counter``; CPU ops are synchronous and every step ends in a
``.cpu().numpy()`` or ``.item()`` host copy). Reported per client step = call time / steps per
call; images/s = client samples per call / median call time. Data loading, epoch-end FedAvg,
validation and logging are outside the timed region (the reference's DataLoader augments in 4
worker processes, overlapping the step).

Monkeypatches, all applied from outside (the reference's files are never edited):
  * ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return ``self``: the reference runs on CPU
    (``--device=cpu``, the default). With ``--device=cuda`` (a GPU machine) they are left alone:
    the reference moves its models and each batch to the GPU itself, as in its own runs, and
    every timed call ends with ``torch.cuda.synchronize()``.
  * ``torchvision`` (imported at module level by MIA_torch, utils and datasets_torch, needed only
    by data loading and image saving) is a stub package whose attributes raise when called.
  * ``MIA_torch.get_cifar10_trainloader`` / ``get_cifar10_testloader`` return in-memory
    DataLoaders of synthetic data (random uint8 images normalised with the CIFAR-10 mean/std,
    random labels): nothing is downloaded.
  * The MIA object gets a quiet logger and a temporary ``save_dir``; for the attack timing its
    TensorBoard writer is a no-op (``attack`` writes a histogram of every decoder parameter per
    epoch, which is per-epoch logging, not per-batch work).
Only torch, numpy and the standard library are imported (plus the reference from its path);
torch is imported lazily so that the config table and argument parsing need no torch.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import types

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # datasets_torch.CIFAR10_TRAIN_MEAN / STD
CIFAR10_STD = (0.247, 0.243, 0.261)
SEED = 123  # main_MIA.py's default --random_seed; synthetic data is drawn after this seeding


@dataclasses.dataclass(frozen=True)
class Config:
    """One timed configuration (reference knob names in comments)."""

    name: str
    kind: str = "train"  # "train": SFL step(s); "attack": MI attacker decoder steps
    num_clients: int = 1  # --num_client
    batch_size: int = 128  # --batch_size (per client); 32 for the attack
    regularization: str = "None"  # --regularization
    strength: float = 0.0  # --regularization_strength (alpha)
    ssim_threshold: float = 0.0  # --ssim_threshold (tau)
    decoder: str = "custom"  # --gan_AE_type (defender's local decoder, or attacker's decoder)
    interval: int = 1  # --optimize_computation
    lr: float = 0.05  # --learning_rate (server)
    local_lr: float = -1.0  # --local_lr (client; -1 = same as lr)
    batches_per_call: int = 1  # batch indices per timed call

    @property
    def steps_per_call(self):
        """Client steps (train) or decoder steps (attack) in one timed call."""
        return self.batches_per_call * (self.num_clients if self.kind == "train" else 1)


_EXPERT = dict(regularization="gan_adv_step1", strength=0.3, decoder="res_normN4C64")
CONFIGS = {c.name: c for c in (
    Config("vanilla_k1"),
    Config("expert", ssim_threshold=0.5, **_EXPERT),
    Config("expert_hinge_active", ssim_threshold=0.0, **_EXPERT),
    Config("lite_k2", num_clients=2, regularization="gan_adv_step1", strength=0.3,
           ssim_threshold=0.5, decoder="conv_normN0C16", interval=5, local_lr=0.005,
           batches_per_call=5),
    Config("vanilla_k10", num_clients=10),
    Config("vanilla_k100", num_clients=100),  # the reference's loop over 100 clients
    Config("attack_res_normN4C64", kind="attack", batch_size=32, decoder="res_normN4C64",
           batches_per_call=10),
    Config("attack_conv_normN0C16", kind="attack", batch_size=32, decoder="conv_normN0C16",
           batches_per_call=10),
)}


def decoder_parts(decoder):
    """Splits a decoder type string, e.g. "res_normN4C64" -> ("res_normN_AE", 4, 64)."""
    family, sizes = decoder.split("N")
    depth, width = sizes.split("C")
    return f"{family}N_AE", int(depth), int(width)


def describe(config):
    """Returns a plain-words description of what one timed call of `config` runs."""
    if config.kind == "attack":
        class_name, depth, width = decoder_parts(config.decoder)
        return (f"MIA.attack(num_epochs=1, decoder=architectures.{class_name}(N={depth}, "
                f"internal_nc={width}, input 8x8x8, sigmoid), Adam(lr=1e-3), loss_type='MSE') over "
                f"{config.batches_per_call} batches of {config.batch_size}, empty testloader, "
                "writer no-op; per step = call / batches")
    body = "optimizer_zero_grad(); train_target_step(x, y, k); optimizer_step()"
    if config.regularization != "None":
        body = (f"gan_train_step(x, k, 'SSIM') if b % {config.interval} == 0; " + body)
    return (f"MIA(vgg11_bn, cut 4, norelu_C8S1, V2_epoch, num_client={config.num_clients}, "
            f"regularization={config.regularization}, alpha={config.strength}, "
            f"tau={config.ssim_threshold}, gan_AE_type={config.decoder}, lr={config.lr}, "
            f"local_lr={config.local_lr}): for b in range({config.batches_per_call}), "
            f"k in range({config.num_clients}): {body}")


def parse_args(argv=None):
    """Parses the command line; `--configs` is validated against `CONFIGS`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="extracted zlijingtao/ResSFL tree")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated subset of: " + ",".join(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after 1 warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cpu: .cuda() neutralised; cuda: the reference's own GPU calls")
    parser.add_argument("--out", default="", help="optional JSON output path")
    args = parser.parse_args(argv)
    args.configs = [name for name in args.configs.split(",") if name]
    unknown = [name for name in args.configs if name not in CONFIGS]
    if unknown or args.repeats < 1 or args.threads < 1:
        parser.error(f"unknown configs {unknown} (choose from {list(CONFIGS)}), or "
                     f"repeats/threads < 1")
    return args


class _Stub(types.ModuleType):
    """A stand-in module: any attribute is a callable that raises when used."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name} is stubbed out by torch_reference")
        return unavailable


class _NullWriter:
    """A SummaryWriter stand-in whose methods do nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _install_torchvision_stub():
    """Registers a stub `torchvision` package unless a real one imports."""
    try:
        import torchvision  # noqa: F401  (a real, matching install is used as is)
        return
    except ImportError:
        pass
    for name in ("torchvision", "torchvision.utils", "torchvision.datasets",
                 "torchvision.transforms", "torchvision.transforms.transforms"):
        sys.modules[name] = _Stub(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])


def load_reference(path, device="cpu"):
    """Imports the reference from `path` with the monkeypatches of the module docstring.

    Args:
      path: directory holding MIA_torch.py.
      device: 'cpu' (``.cuda()`` becomes a no-op) or 'cuda' (the reference's own GPU calls).

    Returns:
      The imported ``MIA_torch`` module.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    os.environ.setdefault("MPLBACKEND", "Agg")  # utils.py imports pyplot
    _install_torchvision_stub()
    if device == "cpu":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    sys.path.insert(0, os.path.abspath(path))
    import MIA_torch

    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)

    def synthetic_loader(num_batches, batch_size, shuffle):
        n = num_batches * batch_size
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8).float() / 255.0
        labels = torch.randint(0, 10, (n,))
        dataset = TensorDataset((images - mean) / std, labels)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)

    def trainloader(batch_size=16, num_client=1, **kwargs):
        del kwargs
        return [synthetic_loader(5, batch_size, True) for _ in range(num_client)], None, None

    def testloader(batch_size=16, **kwargs):
        del kwargs
        return synthetic_loader(1, batch_size, False), None, None

    MIA_torch.get_cifar10_trainloader = trainloader
    MIA_torch.get_cifar10_testloader = testloader
    return MIA_torch


def build_mia(mia_torch, config, save_dir):
    """Builds the reference's MIA object for `config` as main_MIA.py would (stdout silenced)."""
    logger = logging.getLogger(f"torch_reference.{config.name}")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    gan = config.kind == "train" and config.regularization != "None"
    with contextlib.redirect_stdout(io.StringIO()):  # VGG.__init__ prints the whole model
        return mia_torch.MIA(
            "vgg11_bn", 4, config.batch_size if config.kind == "train" else 128, n_epochs=200,
            scheme="V2_epoch", num_client=config.num_clients, dataset="cifar10", logger=logger,
            save_dir=save_dir, regularization_option=config.regularization if gan else "None",
            regularization_strength=config.strength if gan else 0.0,
            learning_rate=config.lr, local_lr=config.local_lr,
            gan_AE_type=config.decoder if gan else "custom", bottleneck_option="norelu_C8S1",
            optimize_computation=config.interval, gan_loss_type="SSIM",
            ssim_threshold=config.ssim_threshold)


def make_call(mia_torch, config, save_dir):
    """Returns (call, mia): `call()` runs one timed call of `config`, returning #hinge steps."""
    import torch

    mia = build_mia(mia_torch, config, save_dir)
    if config.kind == "train":
        batches = [list(loader) for loader in mia.client_dataloader]  # 5 per client

        def call():
            hinge_active = 0
            for b in range(config.batches_per_call):
                for k in range(config.num_clients):  # body of MIA.__call__, V2_epoch
                    images, labels = batches[k][b % len(batches[k])]
                    if mia.gan_regularizer and b % mia.optimize_computation == 0:
                        for _ in range(mia.gan_num_step):
                            mia.gan_train_step(images, k, loss_type=mia.gan_loss_type)
                    mia.optimizer_zero_grad()
                    total_loss, ce_loss = mia.train_target_step(images, labels, k)
                    mia.optimizer_step()
                    hinge_active += float(total_loss) != float(ce_loss)
            return hinge_active
        return call, mia

    # Decoder built as MIA.MIA_attack builds it (PyTorch default init, no init_weights).
    class_name, depth, width = decoder_parts(config.decoder)
    channels, dim = mia.model.get_smashed_data_size()[1:3]  # 8, 8 for cut 4 + norelu_C8S1
    decoder = getattr(mia_torch.architectures, class_name)(
        N=depth, internal_nc=width, input_nc=channels, output_nc=3, input_dim=dim, output_dim=32,
        activation=mia.gan_AE_activation).cuda()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    loader = [(torch.rand(config.batch_size, 3, 32, 32),
               torch.randn(config.batch_size, channels, dim, dim))
              for _ in range(config.batches_per_call)]
    mia.writer.close()
    mia.writer = _NullWriter()
    paths = {"model_path": os.path.join(save_dir, "attack.pt"), "train_output_path": save_dir}

    def call():
        mia.attack(1, decoder, optimizer, loader, [], mia.logger, paths, config.batch_size,
                   loss_type="MSE")
        return 0
    return call, mia


def time_config(mia_torch, config, *, repeats, threads, device="cpu"):
    """Builds `config`, warms up once and times `repeats` calls; returns the result dict."""
    import numpy as np
    import torch

    torch.manual_seed(SEED)  # MIA.__init__ reseeds both with 123 too (its default random_seed)
    np.random.seed(SEED)
    with tempfile.TemporaryDirectory(prefix=f"torch_ref_{config.name}_") as save_dir:
        call, mia = make_call(mia_torch, config, save_dir)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        call()  # warm-up
        sync()
        call_s, hinge = [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            hinge += call()
            sync()
            call_s.append(time.perf_counter() - start)
        mia.writer.close()
    steps = config.steps_per_call
    step_s = [s / steps for s in call_s]
    result = {
        "name": config.name,
        "images_per_sec": steps * config.batch_size / statistics.median(call_s),
        "median_s": statistics.median(step_s), "min_s": min(step_s), "max_s": max(step_s),
        "step_s": step_s, "batch_size": config.batch_size,
        "num_clients": config.num_clients, "steps_per_call": steps,
        "timed": describe(config), "torch_version": torch.__version__, "threads": threads,
        "device": device}
    if config.kind == "train" and config.regularization != "None":
        result["hinge_active_fraction"] = hinge / (steps * repeats)
    return result


def main(argv=None):
    """Entry point: times each requested configuration, prints a table, writes JSON."""
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device=cuda: torch sees no GPU here; use --device=cpu.")
    mia_torch = load_reference(args.reference, args.device)
    results = []
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")
    print(f"{'config':<24}{'img/s':>10}{'median s/step':>15}{'min':>10}{'max':>10}")
    for name in args.configs:
        r = time_config(mia_torch, CONFIGS[name], repeats=args.repeats, threads=args.threads,
                        device=args.device)
        results.append(r)
        print(f"{name:<24}{r['images_per_sec']:>10.1f}{r['median_s']:>15.4f}"
              f"{r['min_s']:>10.4f}{r['max_s']:>10.4f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
