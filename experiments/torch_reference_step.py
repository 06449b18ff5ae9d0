"""Runs the ORIGINAL PyTorch ResSFL attacker-aware rounds on given batches; saves every weight.

The torch half of the step-parity check (``experiments.reference_parity`` is the JAX half and
the driver). Run with the torch virtualenv (``bash scripts/setup_torch_reference.sh PATH``):

  .venv-torch/bin/python -m experiments.torch_reference_step --reference=/work/ref/ResSFL \
      --batches=batches.npz --out=torch_step.npz --alpha=0.3 --tau=0.01

What it does. The reference's ``MIA`` object is built as ``main_MIA.py`` builds it
(``experiments.torch_reference.build_mia``: VGG-11-bn, cutlayer 4, ``norelu_C8S1``,
``gan_adv_step1``, SSIM loss, CIFAR-10 normalisation) for ``--setting``: ``expert`` (the
pretraining step: ``res_normN4C64`` simulated attacker updated every round) or ``lite`` (the
transfer's ResSFL clients: ``conv_normN0C16``, ``--optimize_computation 5``, client lr 0.005).
The number of clients K is the batches' (uint8 images [R, K, B, 32, 32, 3], int labels
[R, K, B]). Its initial weights are saved, and then for every round r and client k it runs the
body of ``V2_epoch`` with the reference's own methods: ``gan_train_step`` (when r is a multiple
of the interval), ``optimizer_zero_grad``, ``train_target_step``, ``optimizer_step``. The weights
(every client copy, server body, classifier, every decoder: parameters and BatchNorm running
statistics) at the start (``init/``), after round 1's attacker step (``mid/``, one client
only), after round 1 (``round1/``) and at the end (``final/``), and the losses, are saved to
``--out``.

Two settings are changed from outside so that the JAX side can compute the same numbers:
  * every ``nn.Dropout`` in the classifier gets p = 0 (their random masks cannot be shared);
  * the client and server learning rates are set to their base values: the reference's
    warm-up quirk (spec §4.6) makes them 0 for the whole first epoch, which would make the
    client and server updates trivially equal.
``--mid_decoder`` (teacher forcing: round 1's target step uses another run's decoder, so two
runs' target steps can be compared alone) and ``--penalty_off`` (alpha2 = 0: the same run
without the attacker term in the clients' loss) serve the parity check's noise floor and its
penalty-gradient comparison. Everything else (BatchNorm modes, SSIM, the hinge, SGD momentum
and coupled weight decay, Adam, which optimizers step) is the reference's own code. Only torch,
numpy and the standard library are imported.
"""

import argparse
import os
import sys
import tempfile

SEED = 123
# setting -> (decoder, interval = --optimize_computation, client lr = --local_lr, or None for
# the server's); the number of clients is the batches' K.
SETTINGS = {"expert": ("res_normN4C64", 1, None), "lite": ("conv_normN0C16", 5, 0.005)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="extracted zlijingtao/ResSFL tree")
    parser.add_argument("--batches", required=True, help="npz with uint8 'images' "
                        "[R, K, B, 32, 32, 3] and int 'labels' [R, K, B] (K clients)")
    parser.add_argument("--setting", default="expert", choices=tuple(SETTINGS),
                        help="expert: 1 client, res_normN4C64, interval 1; lite: the transfer's "
                             "ResSFL clients (conv_normN0C16, interval 5, client lr 0.005)")
    parser.add_argument("--out", required=True, help="output npz")
    parser.add_argument("--alpha", type=float, default=0.3, help="--regularization_strength")
    parser.add_argument("--tau", type=float, default=0.01, help="--ssim_threshold")
    parser.add_argument("--lr", type=float, default=0.05, help="--learning_rate (server)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--mid_decoder", default="",
                        help="npz of another run: after round 1's attacker step, load ITS "
                             "decoder ('mid/decoder/...') before the target step")
    parser.add_argument("--penalty_off", action="store_true",
                        help="zero the attacker term's weight (MIA.alpha2) after building: "
                             "the decoder still trains, the clients get only CE gradients")
    return parser.parse_args(argv)


def state_arrays(prefix, module):
    """{prefix/key: float array} of a module's state_dict (num_batches_tracked skipped)."""
    return {f"{prefix}/{key}": value.detach().cpu().numpy().copy()
            for key, value in module.state_dict().items()
            if not key.endswith("num_batches_tracked")}


def slot_name(kind, k):
    """Saved name of client copy / decoder ``k``: 'client', 'client1', ... ('decoder', ...)."""
    return f"{kind}{k}" if k else kind


def snapshot(mia, tag):
    """Every client copy, the server body, the classifier and every decoder under ``tag``."""
    out = {}
    parts = [("cloud", mia.model.cloud), ("classifier", mia.model.classifier)]
    for k, (client, decoder) in enumerate(zip(mia.model.local_list, mia.local_AE_list)):
        parts += [(slot_name("client", k), client), (slot_name("decoder", k), decoder)]
    for prefix, module in parts:
        out.update(state_arrays(f"{tag}/{prefix}", module))
    return out


def load_decoder(mia, path):
    """Loads decoder 0's parameters and BN statistics from ``path``'s 'mid/decoder/' entries."""
    import numpy as np
    import torch

    with np.load(path) as data:
        state = {key[len("mid/decoder/"):]: torch.from_numpy(data[key])
                 for key in data.files if key.startswith("mid/decoder/")}
    missing, unexpected = mia.local_AE_list[0].load_state_dict(state, strict=False)
    if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
        sys.exit(f"--mid_decoder={path!r} does not fit the decoder: missing {missing}, "
                 f"unexpected {unexpected}")


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(os.path.join(args.reference, "MIA_torch.py")):
        sys.exit(f"--reference={args.reference!r} holds no MIA_torch.py; pass an extracted "
                 "zlijingtao/ResSFL tree.")
    import numpy as np
    import torch

    from experiments import torch_reference as tr

    torch.set_num_threads(args.threads)
    data = np.load(args.batches)
    images, labels = data["images"], data["labels"]
    if images.dtype != np.uint8 or images.ndim != 6 or images.shape[-1] != 3:
        sys.exit(f"--batches images must be uint8 [R, K, B, H, W, 3], got {images.dtype} "
                 f"{images.shape}")
    num_rounds, num_clients = images.shape[:2]
    decoder, interval, local_lr = SETTINGS[args.setting]
    local_lr = args.lr if local_lr is None else local_lr
    if args.mid_decoder and num_clients != 1:
        sys.exit("--mid_decoder needs one client (the expert setting).")
    mia_torch = tr.load_reference(args.reference, device="cpu")
    config = tr.Config("parity", num_clients=int(num_clients), batch_size=int(images.shape[2]),
                       regularization="gan_adv_step1", strength=args.alpha,
                       ssim_threshold=args.tau, decoder=decoder, interval=interval, lr=args.lr,
                       local_lr=local_lr)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    mean = torch.tensor(tr.CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tr.CIFAR10_STD).view(1, 3, 1, 1)
    with tempfile.TemporaryDirectory(prefix="torch_ref_step_") as save_dir:
        mia = tr.build_mia(mia_torch, config, save_dir)
        for module in mia.model.classifier.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        for optimizer, lr in [(mia.optimizer, args.lr)] + [
                (o, local_lr) for o in mia.local_optimizer_list]:
            for group in optimizer.param_groups:
                group["lr"] = lr
        if args.penalty_off:
            mia.alpha2 = 0.0  # train_target_step's gan_loss = alpha2 * (ssim - tau)
        out = snapshot(mia, "init")
        decoder_loss, total, ce = [], [], []
        for r in range(num_rounds):  # r is V2_epoch's batch index b
            for k in range(num_clients):
                x = torch.from_numpy(images[r, k]).permute(0, 3, 1, 2).float() / 255.0
                x = (x - mean) / std  # what the reference's loader yields (ToTensor + Normalize)
                y = torch.from_numpy(labels[r, k].astype(np.int64))
                if r % mia.optimize_computation == 0:
                    for _ in range(mia.gan_num_step):
                        decoder_loss.append(float(mia.gan_train_step(
                            x, k, loss_type=mia.gan_loss_type)))
                if r == 0 and num_clients == 1:
                    out.update(snapshot(mia, "mid"))  # round 1 after the attacker's step
                    if args.mid_decoder:
                        load_decoder(mia, args.mid_decoder)
                mia.optimizer_zero_grad()
                total_loss, ce_loss = mia.train_target_step(x, y, k)
                mia.optimizer_step()
                total.append(float(total_loss))
                ce.append(float(ce_loss))
            if r == 0:
                out.update(snapshot(mia, "round1"))
        out.update(snapshot(mia, "final"))
        mia.writer.close()
    out.update({"decoder_loss": np.array(decoder_loss),
                "total_loss": np.array(total).reshape(num_rounds, num_clients),
                "ce_loss": np.array(ce).reshape(num_rounds, num_clients),
                "alpha": np.float64(args.alpha), "tau": np.float64(args.tau),
                "lr": np.float64(args.lr), "local_lr": np.float64(local_lr),
                "setting": np.array(args.setting), "torch_version": np.array(torch.__version__)})
    np.savez(args.out, **out)
    print(f"rounds {num_rounds} x clients {num_clients}: decoder loss {decoder_loss}, "
          f"total {total}, ce {ce}")


if __name__ == "__main__":
    main()
