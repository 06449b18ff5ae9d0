"""Step parity with the PyTorch reference: the same expert rounds, the same numbers?

  python -m experiments.reference_parity --reference=/work/ref/ResSFL \
      --torch_python=.venv-torch/bin/python --workdir=runs/parity

Why. The short CPU experts show no resistance (RESULTS.md). That is either the scale (the paper's
experts train 200 epochs on CIFAR) or a porting error. Unit tests check our minimax against our
own reading of the reference; this check runs the reference's OWN code and ours from the same
weights on the same batches and compares every updated weight.

Data. ``--rounds`` Fashion-MNIST training batches (classes 0-4, the offline default data),
lightly dithered (``dithered``: exact ties in max-pooling make even the reference disagree with
itself), are written to ``WORKDIR/batches.npz``.

The reference. ``experiments.torch_reference_step`` (run by ``--torch_python``, the torch
virtualenv) builds the reference's expert (VGG-11-bn, cutlayer 4, ``norelu_C8S1``,
``res_normN4C64`` simulated attacker, ``gan_adv_step1``, SSIM, alpha, tau; SGD lr 0.05, momentum
0.9, weight decay 5e-4; Adam 1e-3) and runs one ``V2_epoch`` body per batch with its own methods
(``gan_train_step``, ``train_target_step``, ``optimizer_step``), saving the weights at the start,
after round 1's attacker step, after round 1 and at the end. Three runs: 2 torch threads (THE
reference); 1 thread with round 1's decoder taken from the 2-thread run (the reference against
itself: the noise floor of every comparison); 2 threads with the attacker term's weight zeroed
(the clients' update without the penalty). Two settings differ from a training run, on both
sides: classifier dropout is 0 (random masks cannot be shared) and the learning rate is the
base value from round 1 (the reference's LR-0 first epoch would make the updates trivially
equal).

Ours, from the reference's initial weights (converted: ``to_flax``), K = 1:
  (A) round 1's attacker step (``ressfl.decoder_step``) against the reference's;
  (B) round 1's resistant step (``sfl.sequential_round`` with ``ressfl.make_penalty``) from the
      reference's own post-(A) decoder, so that (A)'s differences are not carried over; run
      also with alpha = 0, which gives the attacker term's own part of the client update;
  (C) ``--rounds`` full rounds (``ressfl.ressfl_step``) free-running, as training takes them.
Errors compare UPDATES, ``||(ours - start) - (ref - start)|| / ||ref - start||``, so that a
wrong update is not hidden by the large unchanged weights.

Checks (``WORKDIR/parity.json``, a table, exit status 1 if any fails): round-1 losses (attacker
SSIM loss, CE, CE + penalty) equal to 1e-5; (A) and (B) within ``--noise_factor`` times the
reference's own 1-vs-2-thread difference (or ``--tolerance``); the attacker term's part of the
client update, ours vs the reference's, within ``--penalty_tolerance``; (C)'s updates and every
round's losses within ``--noise_factor`` times the reference's own difference (or 1e-3 for
the losses).

``--setting=lite`` checks the transfer's ResSFL step instead: 2 clients (the reference's
``V2_epoch`` order, the server stepping after each client), ``conv_normN0C16`` attackers
updated every 5th round, client lr 0.005; there only (C) and the losses are compared.
"""

import argparse
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from experiments.torch_reference_step import SETTINGS, slot_name
from ressfl_jax import federated, optim
from ressfl_jax.data.sources import NORMALIZATION, load_dataset
from ressfl_jax.models import build_split_model
from ressfl_jax.models.decoders import build_decoder
from ressfl_jax.state import create_sfl_state
from ressfl_jax.training import ressfl, sfl

CIFAR10_MEAN, CIFAR10_STD = NORMALIZATION["cifar10"]  # the reference's, for dataset=cifar10

# Reference module path -> our module path, for VGG-11-bn, cutlayer 4, norelu_C8S1 and the
# decoders of the torch half's settings (torch_reference_step.SETTINGS).
CLIENT_MAP = {"0": "body/layer0/conv", "1": "body/layer0/bn", "4": "body/layer2/conv",
              "5": "body/layer2/bn", "8": "compress/Conv_0"}
SERVER_MAP = {"cloud/0": "expand/Conv_0",
              **{f"cloud/{c}": f"body/layer{layer}/conv" for c, layer in
                 ((1, 4), (4, 5), (8, 7), (11, 8), (15, 10), (18, 11))},
              **{f"cloud/{c + 1}": f"body/layer{layer}/bn" for c, layer in
                 ((1, 4), (4, 5), (8, 7), (11, 8), (15, 10), (18, 11))},
              "classifier/1": "head/fc1", "classifier/4": "head/fc2", "classifier/6": "head/fc3"}
DECODER_MAPS = {
    "res_normN4C64": {**{f"m.{2 * i}": f"ResBlock_{i}" for i in range(5)},
                      "m.10": "ConvTranspose_0", "m.11": "BatchNorm_0", "m.13": "ConvTranspose_1",
                      "m.14": "BatchNorm_1", "m.16": "ResBlock_5"},
    "conv_normN0C16": {"m.0": "Conv_0", "m.1": "BatchNorm_0", "m.3": "ConvTranspose_0",
                       "m.4": "BatchNorm_1", "m.6": "ConvTranspose_1", "m.7": "BatchNorm_2",
                       "m.9": "Conv_1", "m.10": "BatchNorm_3"}}
SUBMODULES = {"shortcut.0": "shortcut_conv", "shortcut.1": "shortcut_bn"}
LEAVES = {"weight": "params", "bias": "params", "running_mean": "batch_stats",
          "running_var": "batch_stats"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="extracted zlijingtao/ResSFL tree")
    parser.add_argument("--torch_python", default=".venv-torch/bin/python",
                        help="python of the torch virtualenv (scripts/setup_torch_reference.sh)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--setting", default="expert", choices=tuple(SETTINGS),
                        help="expert: 1 client, res_normN4C64, interval 1 (the pretraining "
                             "step); lite: 2 clients, conv_normN0C16, interval 5, client lr "
                             "0.005 (the transfer's ResSFL step; free-running checks only)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--tau", type=float, default=0.01,
                        help="SSIM threshold; small so that the hinge is active from round 1")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--noise_factor", type=float, default=5.0,
                        help="a part passes when our update's error is at most this many times "
                             "the reference's own error between 1 and 2 torch threads ...")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="... or at most this (for parts the reference computes "
                             "bit-identically across thread counts)")
    parser.add_argument("--dither", type=int, default=16,
                        help="add uniform integer noise in [0, dither] to the uint8 images "
                             "(0 = the raw images; see dithered())")
    parser.add_argument("--penalty_tolerance", type=float, default=0.05,
                        help="largest accepted relative error of the attacker term's part of "
                             "the client update")
    parser.add_argument("--data_dir", default="")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch_size < 2:
        parser.error(f"need rounds >= 1 and batch_size >= 2, got {args.rounds}, "
                     f"{args.batch_size}")
    if not os.path.isfile(os.path.join(args.reference, "MIA_torch.py")):
        parser.error(f"--reference={args.reference!r} holds no MIA_torch.py; pass an extracted "
                     "zlijingtao/ResSFL tree (see scripts/setup_torch_reference.sh).")
    if not os.access(args.torch_python, os.X_OK):
        parser.error(f"--torch_python={args.torch_python!r} is not an executable; create the "
                     "torch virtualenv with scripts/setup_torch_reference.sh.")
    return args


def _leaf(key: str, value: np.ndarray):
    """(collection, our leaf name, array in our layout) of one reference state_dict entry."""
    name = key.rsplit(".", 1)[1]
    if name == "weight" and value.ndim == 4:  # conv [O,I,kh,kw] / convT [I,O,kh,kw]
        return "params", "kernel", value.transpose(2, 3, 1, 0)
    if name == "weight" and value.ndim == 2:  # linear [O, I]
        return "params", "kernel", value.T
    if name == "weight":  # BatchNorm gamma
        return "params", "scale", value
    return LEAVES[name], {"running_mean": "mean", "running_var": "var"}.get(name, name), value


def to_flax(arrays: dict, tag: str, part: str, module_map: dict) -> dict:
    """Reference arrays ``{tag/prefix/...: array}`` -> {'params': ..., 'batch_stats': ...}.

    ``part`` is 'server' (prefixes cloud/ and classifier/) or a client/decoder slot's prefix
    ('client', 'client1', 'decoder', 'decoder1', ...: see ``torch_reference_step.snapshot``).
    """
    flat = {}
    prefixes = ("cloud", "classifier") if part == "server" else (part,)
    for full_key, value in arrays.items():
        head, _, key = full_key.partition("/")
        if head != tag:
            continue
        prefix, _, key = key.partition("/")
        if prefix not in prefixes:
            continue
        module, _ = key.rsplit(".", 1)
        lookup = f"{prefix}/{module}" if part == "server" else module
        ours = None
        for ref, mapped in module_map.items():
            if lookup == ref or lookup.startswith(ref + "."):
                rest = lookup[len(ref) + 1:]
                ours = mapped + ("/" + SUBMODULES.get(rest, rest) if rest else "")
                break
        if ours is None:
            raise KeyError(f"no mapping for reference entry {full_key!r}")
        collection, leaf, array = _leaf(key, value)
        flat[(collection, *ours.split("/"), leaf)] = jnp.asarray(array, jnp.float32)
    return traverse_util.unflatten_dict(flat)


def _check_same_structure(ours, converted, what):
    a = {k: v.shape for k, v in traverse_util.flatten_dict(ours).items()}
    b = {k: v.shape for k, v in traverse_util.flatten_dict(converted).items()}
    if a != b:
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        shapes = [k for k in set(a) & set(b) if a[k] != b[k]]
        raise ValueError(f"{what}: converted reference weights do not fit our model: missing "
                         f"{missing[:5]}, extra {extra[:5]}, shape mismatches {shapes[:5]}")


def dithered(images: np.ndarray, dither: int, seed: int = 0) -> np.ndarray:
    """uint8 images rescaled to [0, 255 - dither] plus uniform integer noise in [0, dither].

    Fashion-MNIST's black background (and the zero padding to 32x32) is exactly constant, so
    conv + BN + ReLU outputs tie exactly inside 2x2 max-pool windows. Which tied element gets
    the gradient then depends on 1-ulp differences in the conv sums: the reference's own update
    differs by ~3% between 1 and 2 torch threads on the raw images. Noise on every pixel (never
    clipped, so saturated white areas are not constant either) removes the ties, leaving a
    check that can see errors far smaller than that.
    """
    if dither <= 0:
        return images
    noise = np.random.default_rng(seed).integers(0, dither + 1, size=images.shape)
    scaled = np.round(images.astype(np.float64) * (255 - dither) / 255).astype(np.int32)
    return (scaled + noise).astype(np.uint8)


def write_batches(args) -> dict:
    """``--rounds`` x K batches of Fashion-MNIST 0-4, dithered: uint8 [R, K, B, 32, 32, 3]."""
    dataset = load_dataset("fmnist", data_dir=args.data_dir or None, classes=list(range(5)))
    shape = (args.rounds, num_clients(args), args.batch_size)
    n = int(np.prod(shape))
    images = np.asarray(dataset.train_images[:n]).reshape(*shape,
                                                          *dataset.train_images.shape[1:])
    images = dithered(images, args.dither)
    labels = np.asarray(dataset.train_labels[:n]).reshape(shape)
    np.savez(os.path.join(args.workdir, "batches.npz"), images=images, labels=labels)
    return {"images": images, "labels": labels.astype(np.int32)}


def num_clients(args) -> int:
    return 1 if args.setting == "expert" else 2


def run_torch(args, name: str, *, threads: int, extra=()) -> dict:
    """Runs the torch half (``experiments.torch_reference_step``); returns its arrays."""
    out = os.path.join(args.workdir, f"torch_{name}.npz")
    batches = os.path.join(args.workdir, "batches.npz")
    command = [args.torch_python, "-m", "experiments.torch_reference_step",
               f"--reference={args.reference}", f"--batches={batches}", f"--out={out}",
               f"--alpha={args.alpha}", f"--tau={args.tau}", f"--lr={args.lr}",
               f"--threads={threads}", f"--setting={args.setting}", *extra]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(command, check=True, cwd=root, stdout=subprocess.DEVNULL)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def part_names(num: int) -> list[str]:
    """Client and decoder slot names of ``num`` clients, and the server."""
    return ([slot_name("client", k) for k in range(num)] + ["server"]
            + [slot_name("decoder", k) for k in range(num)])


def table(part: str, decoder_type: str) -> dict:
    if part == "server":
        return SERVER_MAP
    return CLIENT_MAP if part.startswith("client") else DECODER_MAPS[decoder_type]


def snapshot(ref: dict, tag: str, args) -> dict:
    """{part: {'params', 'batch_stats'}} of the reference's weights saved under ``tag``."""
    decoder_type = SETTINGS[args.setting][0]
    return {part: to_flax(ref, tag, part, table(part, decoder_type))
            for part in part_names(num_clients(args))}


def build(args, ref: dict):
    """Our model and decoder, and our state holding the reference's initial weights."""
    decoder_type, _, local_lr = SETTINGS[args.setting]
    model = build_split_model("vgg11_bn", cut_layer=4, bottleneck="norelu_C8S1", num_classes=10,
                              mean=CIFAR10_MEAN, std=CIFAR10_STD)
    head = model.server.head.clone(dropout_rate=0.0)
    model = model._replace(server=model.server.clone(head=head))
    decoder = build_decoder(decoder_type, feature_shape=(8, 8, 8))
    sgd = functools.partial(optim.make_sgd, momentum=0.9, weight_decay=5e-4)
    num = num_clients(args)
    state = create_sfl_state(jax.random.key(0), model, num_clients=num, server_tx=sgd(args.lr),
                             client_tx=sgd(args.lr if local_lr is None else local_lr))
    state = state.replace(decoders=ressfl.create_decoders(
        jax.random.key(1), decoder, num_clients=num, feature_shape=(8, 8, 8),
        tx=optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)))
    init = snapshot(ref, "init", args)
    for part, ours in unstack(state).items():
        _check_same_structure(ours, init[part], part)
    return model, decoder, load(state, init), init


def load(state, weights: dict, kinds=("client", "server", "decoder")):
    """``state`` with the given kinds' params and BN statistics replaced (optimizers kept)."""
    num = state.clients.step.shape[0]

    def stacked(kind, collection):
        return federated.stack([weights[slot_name(kind, k)][collection] for k in range(num)])

    if "client" in kinds:
        state = state.replace(clients=state.clients.replace(
            params=stacked("client", "params"), batch_stats=stacked("client", "batch_stats")))
    if "server" in kinds:
        state = state.replace(server=state.server.replace(
            params=weights["server"]["params"], batch_stats=weights["server"]["batch_stats"]))
    if "decoder" in kinds:
        state = state.replace(decoders=state.decoders.replace(
            params=stacked("decoder", "params"), batch_stats=stacked("decoder", "batch_stats")))
    return state


def unstack(state) -> dict:
    """{part: {'params', 'batch_stats'}} of every client slot, the server, every decoder slot."""
    out = {"server": {"params": state.server.params, "batch_stats": state.server.batch_stats}}
    for k in range(state.clients.step.shape[0]):
        for kind, slots in (("client", state.clients), ("decoder", state.decoders)):
            out[slot_name(kind, k)] = {"params": federated.unstack(slots.params, k),
                                       "batch_stats": federated.unstack(slots.batch_stats, k)}
    return out


def _batch(batches, r):
    return jnp.asarray(batches["images"][r]), jnp.asarray(batches["labels"][r])


def attacker_phase(state, batches, *, model, decoder):
    """Round 1's simulated-attacker update alone (``ressfl.decoder_step``)."""
    images, _ = _batch(batches, 0)
    images = sfl.prepare_images(jax.random.key(0), images, augment="none")
    step = jax.jit(functools.partial(ressfl.decoder_step, model=model, decoder=decoder,
                                     kind="ssim", steps=1))
    state, _ = step(state, images)
    return state


def resistant_phase(args, state, batches, *, model, decoder, alpha):
    """Round 1's client + server update alone (the sequential round with the SSIM hinge)."""
    images, labels = _batch(batches, 0)
    images = sfl.prepare_images(jax.random.key(0), images, augment="none")
    penalty = ressfl.make_penalty(decoder, alpha=alpha, threshold=args.tau, kind="ssim")
    step = jax.jit(functools.partial(sfl.sequential_round, model=model, penalty=penalty))
    state, _ = step(state, images, labels, jax.random.key(1))
    return state


def free_run(args, state, batches, *, model, decoder):
    """``--rounds`` full rounds (``ressfl.ressfl_step``), as a training run takes them."""
    step = jax.jit(ressfl.make_ressfl_step(
        model=model, decoder=decoder, schedule="sequential", augment="none", alpha=args.alpha,
        threshold=args.tau, kind="ssim", interval=SETTINGS[args.setting][1], decoder_steps=1,
        steps_per_epoch=1000))
    history = []
    for r in range(args.rounds):
        images, labels = _batch(batches, r)
        state, metrics = step(state, {"image": images, "label": labels}, jax.random.key(r))
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _delta(a, b):
    return jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)


def update_error(start, ours, ref) -> dict:
    """Relative error of our update (ours - start) vs the reference's (ref - start)."""
    d_ours, d_ref = _delta(ours, start), _delta(ref, start)
    total = float(np.linalg.norm(_flat(d_ours) - _flat(d_ref)) / np.linalg.norm(_flat(d_ref)))
    worst, worst_key = 0.0, ""
    flat_o, flat_r = traverse_util.flatten_dict(d_ours), traverse_util.flatten_dict(d_ref)
    for key, r in flat_r.items():
        norm = np.linalg.norm(r)
        err = float(np.linalg.norm(flat_o[key] - r) / norm) if norm > 0 else 0.0
        if err > worst:
            worst, worst_key = err, "/".join(key)
    return {"error": total, "worst_leaf": worst_key, "worst_leaf_error": worst}


def compare(args, start, ours, ref, ref_1, parts) -> dict:
    """Per part/collection: our error, the reference's own (1 vs 2 threads), pass/fail."""
    rows = {}
    for part in parts:
        for collection in ("params", "batch_stats"):
            row = update_error(start[part][collection], ours[part][collection],
                               ref[part][collection])
            row["reference_self_error"] = update_error(
                start[part][collection], ref_1[part][collection],
                ref[part][collection])["error"]
            row["allowed"] = max(args.noise_factor * row["reference_self_error"],
                                 args.tolerance)
            row["passed"] = row["error"] <= row["allowed"]
            rows[f"{part}/{collection}"] = row
    return rows


def _relative(a: float, b: float) -> float:
    """|a - b| relative to b for |b| >= 1, absolute below (the decoder loss is about -0.05)."""
    return abs(a - b) / max(abs(b), 1.0)


def expert_phases(args, report, state, init, batches, *, model, decoder, ref):
    """The expert setting's round-1 phase checks (A), (B) and the penalty part; adds to report.

    Returns (the 1-thread reference run, {check: passed}).
    """
    ref_1 = run_torch(args, "threads1_forced", threads=1,
                      extra=[f"--mid_decoder={os.path.join(args.workdir, 'torch_threads2.npz')}"])
    ref_off = run_torch(args, "threads2_penalty_off", threads=2, extra=["--penalty_off"])
    mid, round1 = (snapshot(ref, tag, args) for tag in ("mid", "round1"))
    mid_1, round1_1 = (snapshot(ref_1, tag, args) for tag in ("mid", "round1"))
    round1_off = snapshot(ref_off, "round1", args)
    # (A) The attacker's step from the common start.
    ours_a = unstack(attacker_phase(state, batches, model=model, decoder=decoder))
    # (B) The resistant step, from the reference's own state after (A) (teacher forcing): a
    # difference here is the client/server update's alone, not the decoder's carried over.
    forced = load(state, mid, kinds=("decoder",))
    ours_b = unstack(resistant_phase(args, forced, batches, model=model, decoder=decoder,
                                     alpha=args.alpha))
    ours_b0 = unstack(resistant_phase(args, forced, batches, model=model, decoder=decoder,
                                      alpha=0.0))
    # The attacker term's own contribution to the client's round-1 update, ours and theirs.
    client = lambda snap: snap["client"]["params"]  # noqa: E731
    penalty_ours = _flat(_delta(client(ours_b), client(ours_b0)))
    penalty_ref = _flat(_delta(client(round1), client(round1_off)))
    report["attacker_step"] = compare(args, init, ours_a, mid, mid_1, ("decoder",))
    report["resistant_step"] = compare(args, init, ours_b, round1, round1_1,
                                       ("client", "server"))
    report["client_penalty_share"] = float(
        np.linalg.norm(penalty_ref) / np.linalg.norm(_flat(_delta(client(round1),
                                                                  client(init)))))
    report["client_penalty_error"] = float(np.linalg.norm(penalty_ours - penalty_ref)
                                           / np.linalg.norm(penalty_ref))
    return ref_1, {"attacker step within the reference's noise":
            all(v["passed"] for v in report["attacker_step"].values()),
            "resistant step within the reference's noise":
            all(v["passed"] for v in report["resistant_step"].values()),
            f"the attacker term's update within {args.penalty_tolerance:g}":
            report["client_penalty_error"] <= args.penalty_tolerance}


def reference_losses(ref: dict, args) -> list[dict]:
    """Per round: the reference's mean over clients of CE, CE + penalty and (on rounds that
    update the attacker) the attacker's loss."""
    interval = SETTINGS[args.setting][1]
    per_update = np.asarray(ref["decoder_loss"]).reshape(-1, num_clients(args))
    rows = []
    for r in range(args.rounds):
        updated = r % interval == 0
        rows.append({"ce": float(np.mean(ref["ce_loss"][r])),
                     "total": float(np.mean(ref["total_loss"][r])),
                     "decoder_loss": (float(np.mean(per_update[r // interval]))
                                      if updated else None)})
    return rows


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    batches = write_batches(args)
    # The reference with 2 torch threads, and with 1 (its own noise floor).
    ref = run_torch(args, "threads2", threads=2)
    model, decoder, state, init = build(args, ref)
    report = {
        "setting": args.setting, "num_clients": num_clients(args), "rounds": args.rounds,
        "batch_size": args.batch_size, "alpha": args.alpha, "tau": args.tau, "lr": args.lr,
        "dither": args.dither, "torch_version": str(ref["torch_version"]),
        "jax_version": jax.__version__, "losses": []}
    checks = {}
    if args.setting == "expert":
        ref_1, checks = expert_phases(args, report, state, init, batches, model=model,
                                      decoder=decoder, ref=ref)
    else:
        ref_1 = run_torch(args, "threads1", threads=1)
    # (C) --rounds full rounds, free-running, as training takes them.
    ours_c, history = free_run(args, state, batches, model=model, decoder=decoder)
    report["free_run"] = compare(args, init, unstack(ours_c), snapshot(ref, "final", args),
                                 snapshot(ref_1, "final", args), part_names(num_clients(args)))
    self_rows = reference_losses(ref_1, args)
    for r, (metrics, theirs) in enumerate(zip(history, reference_losses(ref, args))):
        row = {"round": r + 1,
               "ce": {"ours": metrics["train/ce_loss"], "reference": theirs["ce"]},
               "total": {"ours": metrics["train/ce_loss"]
                         + args.alpha * metrics["train/penalty"],
                         "reference": theirs["total"]},
               "attacker_ssim_ours": metrics["train/inversion_ssim"]}
        if theirs["decoder_loss"] is not None:
            row["decoder_loss"] = {"ours": metrics["attacker/recon_loss"],
                                   "reference": theirs["decoder_loss"]}
        for key in ("ce", "total", "decoder_loss"):
            if key in row:
                row[key]["reference_1_thread"] = self_rows[r][key]
        report["losses"].append(row)
    keys = ("decoder_loss", "ce", "total")
    first = report["losses"][0]
    round1_loss_error = max(_relative(first[k]["ours"], first[k]["reference"])
                            for k in keys if k in first)
    loss_error = max(_relative(row[k]["ours"], row[k]["reference"])
                     for row in report["losses"] for k in keys if k in row)
    loss_noise = max(_relative(row[k]["reference_1_thread"], row[k]["reference"])
                     for row in report["losses"] for k in keys if k in row)
    loss_allowed = max(args.noise_factor * loss_noise, 1e-3)
    report.update({
        "round1_loss_error": round1_loss_error, "loss_error": loss_error,
        "loss_reference_self_error": loss_noise, "loss_allowed": loss_allowed,
        "hinge_active_rounds": int(sum(row["total"]["reference"] != row["ce"]["reference"]
                                       for row in report["losses"]))})
    checks = {"round-1 losses equal (<= 1e-5)": round1_loss_error <= 1e-5, **checks,
              f"{args.rounds} free-running rounds within the reference's noise":
                  all(v["passed"] for v in report["free_run"].values()),
              f"losses of all {args.rounds} rounds within the reference's noise":
                  loss_error <= loss_allowed}
    report["checks"] = checks
    report["passed"] = all(checks.values())
    with open(os.path.join(args.workdir, "parity.json"), "w") as f:
        json.dump(report, f, indent=2)
    _print(args, report)
    sys.exit(0 if report["passed"] else 1)


def _print(args, report):
    print(f"setting {args.setting}: {report['num_clients']} client(s), batch {args.batch_size}, "
          f"{args.rounds} rounds, alpha {args.alpha}, tau {args.tau}")
    print(f"{'update (relative error)':34s} {'ours vs ref':>11s} {'ref vs ref':>11s} "
          f"{'allowed':>8s}  worst leaf")
    for phase in ("attacker_step", "resistant_step", "free_run"):
        for name, v in report.get(phase, {}).items():
            label = f"{phase} {name}" if phase != "free_run" else f"{args.rounds} rounds {name}"
            print(f"{label:34s} {v['error']:11.2e} {v['reference_self_error']:11.2e} "
                  f"{v['allowed']:8.1e}  {v['worst_leaf']} ({v['worst_leaf_error']:.1e})"
                  + ("" if v["passed"] else "  (over)"))
    if "client_penalty_share" in report:
        print(f"the attacker term's part of the client's round-1 update (alpha {args.alpha} "
              f"minus alpha 0): {report['client_penalty_share']:.2e} of the update; ours vs "
              f"the reference's: {report['client_penalty_error']:.2e}")
    print(f"hinge active in {report['hinge_active_rounds']} of {args.rounds} reference rounds")
    for row in report["losses"]:
        print(f"round {row['round']}: " + ", ".join(
            f"{k} ours {row[k]['ours']:.6f} ref {row[k]['reference']:.6f}"
            for k in ("decoder_loss", "ce", "total") if k in row))
    print(f"largest loss difference: ours vs ref {report['loss_error']:.1e}, ref vs ref "
          f"{report['loss_reference_self_error']:.1e}, allowed {report['loss_allowed']:.1e}")
    for name, ok in report["checks"].items():
        print(f"[{'ok' if ok else 'FAIL'}] {name}")
    print("PASSED" if report["passed"] else "FAILED")


if __name__ == "__main__":
    main()
