"""Runs the ORIGINAL PyTorch ResSFL expert step on given batches and saves every weight.

The torch half of the step-parity check (``experiments.reference_parity`` is the JAX half and
the driver). Run with the torch virtualenv (``bash scripts/setup_torch_reference.sh PATH``):

  .venv-torch/bin/python -m experiments.torch_reference_step --reference=/work/ref/ResSFL \
      --batches=batches.npz --out=torch_step.npz --alpha=0.3 --tau=0.01

What it does. The reference's ``MIA`` object is built as ``main_MIA.py`` builds the expert
(``experiments.torch_reference.build_mia``: VGG-11-bn, cutlayer 4, ``norelu_C8S1``,
``gan_adv_step1``, ``res_normN4C64`` simulated attacker, SSIM loss, CIFAR-10 normalisation), its
initial weights are saved, and then for every batch in ``--batches`` (uint8 images
[R, B, 32, 32, 3] and int labels [R, B]) it runs the body of ``V2_epoch`` for client 0 with
the reference's own methods: ``gan_train_step``, ``optimizer_zero_grad``,
``train_target_step``, ``optimizer_step``. The final weights (client, server body, classifier,
decoder: parameters and BatchNorm running statistics) and each round's decoder loss, total loss
and cross-entropy are saved to ``--out``.

Two settings are changed from outside so that the JAX side can compute the same numbers:
  * every ``nn.Dropout`` in the classifier gets p = 0 (their random masks cannot be shared);
  * the client and server learning rates are set to their base values: the reference's
    warm-up quirk (spec §4.6) makes them 0 for the whole first epoch, which would make the
    client and server updates trivially equal.
``--mid_decoder`` (teacher forcing: round 1's target step uses another run's decoder, so two
runs' target steps can be compared alone) and ``--penalty_off`` (alpha2 = 0: the same run
without the attacker term in the clients' loss) serve the parity check's noise floor and its
penalty-gradient comparison. Everything else (BatchNorm modes, SSIM, the hinge, SGD momentum and coupled weight decay,
Adam) is the reference's own code. Only torch, numpy and the standard library are imported.
"""

import argparse
import os
import sys
import tempfile

SEED = 123


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="extracted zlijingtao/ResSFL tree")
    parser.add_argument("--batches", required=True, help="npz with uint8 'images' [R,B,32,32,3] "
                        "and int 'labels' [R,B]")
    parser.add_argument("--out", required=True, help="output npz")
    parser.add_argument("--alpha", type=float, default=0.3, help="--regularization_strength")
    parser.add_argument("--tau", type=float, default=0.01, help="--ssim_threshold")
    parser.add_argument("--lr", type=float, default=0.05, help="--learning_rate (= local_lr)")
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


def snapshot(mia, tag):
    out = {}
    for prefix, module in (("client", mia.model.local_list[0]), ("cloud", mia.model.cloud),
                           ("classifier", mia.model.classifier),
                           ("decoder", mia.local_AE_list[0])):
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
    if images.dtype != np.uint8 or images.ndim != 5 or images.shape[-1] != 3:
        sys.exit(f"--batches images must be uint8 [R, B, H, W, 3], got {images.dtype} "
                 f"{images.shape}")
    mia_torch = tr.load_reference(args.reference, device="cpu")
    config = tr.Config("parity", batch_size=int(images.shape[1]),
                       regularization="gan_adv_step1", strength=args.alpha,
                       ssim_threshold=args.tau, decoder="res_normN4C64", lr=args.lr)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    mean = torch.tensor(tr.CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tr.CIFAR10_STD).view(1, 3, 1, 1)
    with tempfile.TemporaryDirectory(prefix="torch_ref_step_") as save_dir:
        mia = tr.build_mia(mia_torch, config, save_dir)
        for module in mia.model.classifier.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        for optimizer in [mia.optimizer] + list(mia.local_optimizer_list):
            for group in optimizer.param_groups:
                group["lr"] = args.lr
        if args.penalty_off:
            mia.alpha2 = 0.0  # train_target_step's gan_loss = alpha2 * (ssim - tau)
        out = snapshot(mia, "init")
        decoder_loss, total, ce = [], [], []
        for r in range(images.shape[0]):
            x = torch.from_numpy(images[r]).permute(0, 3, 1, 2).float() / 255.0
            x = (x - mean) / std  # what the reference's loader yields (ToTensor + Normalize)
            y = torch.from_numpy(labels[r].astype(np.int64))
            for _ in range(mia.gan_num_step):  # interval 1: every round
                decoder_loss.append(float(mia.gan_train_step(x, 0, loss_type=mia.gan_loss_type)))
            if r == 0:
                out.update(snapshot(mia, "mid"))  # round 1 after the attacker's step
                if args.mid_decoder:
                    load_decoder(mia, args.mid_decoder)
            mia.optimizer_zero_grad()
            total_loss, ce_loss = mia.train_target_step(x, y, 0)
            mia.optimizer_step()
            if r == 0:
                out.update(snapshot(mia, "round1"))
            total.append(float(total_loss))
            ce.append(float(ce_loss))
        out.update(snapshot(mia, "final"))
        mia.writer.close()
    out.update({"decoder_loss": np.array(decoder_loss), "total_loss": np.array(total),
                "ce_loss": np.array(ce), "alpha": np.float64(args.alpha),
                "tau": np.float64(args.tau), "lr": np.float64(args.lr),
                "torch_version": np.array(torch.__version__)})
    np.savez(args.out, **out)
    print(f"rounds {images.shape[0]}: decoder loss {decoder_loss}, total {total}, ce {ce}")


if __name__ == "__main__":
    main()
