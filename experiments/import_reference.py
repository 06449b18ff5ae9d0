"""Imports a model trained by the ORIGINAL reference as a ressfl-jax checkpoint.

So that our attack (``experiments.attack``) and the public API (``load_client_model``) can
measure the reference's own models, e.g. those of ``scripts/reference_fullrun.sh``:

  python -m experiments.import_reference --run_dir=RUN/saves/expert --which=best \\
      --torch_python=.venv-torch/bin/python --workdir=runs/ref_expert
  python -m experiments.attack --config.checkpoint=runs/ref_expert --workdir=runs/ref_expert/attack

The reference saves a V2-scheme model as ``checkpoint_f_{which}.tar`` (client copy 0),
``checkpoint_cloud_{which}.tar`` (server body) and ``checkpoint_classifier_{which}.tar``
(``MIA.save_model``). The torch virtualenv reads them into an npz; here every array is mapped
onto our model with the mapping of the step-parity check (``experiments.reference_parity``):
VGG-11-bn, cutlayer 4, ``norelu_C8S1``, one client. The checkpoint is written as our runs write
theirs (``WORKDIR/checkpoints/best/<epoch>``, metadata of ``experiments/configs/train.py``'s
``paper`` preset for ``--dataset``, kind ``reference_import``): its input normalisation is our
dataset's, which for Fashion-MNIST is the reference's (x / 127.5 - 1). A reference model of
another architecture or bottleneck is refused (the mapping would not fit).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from experiments import common
from experiments.configs import train as train_config
from experiments.reference_parity import (CLIENT_MAP, SERVER_MAP, _check_same_structure, load,
                                          to_flax)
from ressfl_jax import checkpoints
from ressfl_jax.state import create_sfl_state

TAG = "ckpt"
# Runs in the torch virtualenv: the three state_dicts -> one npz ({TAG}/client|cloud|classifier/
# key). BatchNorm's num_batches_tracked counters are dropped (we keep no such counter).
_TORCH_READER = f"""
import sys, numpy as np, torch
run_dir, which, out = sys.argv[1:4]
arrays = {{}}
for part, name in (("client", "f"), ("cloud", "cloud"), ("classifier", "classifier")):
    sd = torch.load(f"{{run_dir}}/checkpoint_{{name}}_{{which}}.tar", map_location="cpu")
    for key, value in sd.items():
        if not key.endswith("num_batches_tracked"):
            arrays[f"{TAG}/{{part}}/{{key}}"] = value.detach().cpu().numpy()
np.savez(out, **arrays)
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True,
                        help="the reference run's folder, e.g. saves/expert (holding "
                             "checkpoint_f_best.tar, checkpoint_cloud_best.tar, ...)")
    parser.add_argument("--which", default="best", help="'best' or an epoch number")
    parser.add_argument("--workdir", required=True, help="where our checkpoint is written")
    parser.add_argument("--torch_python", default=".venv-torch/bin/python",
                        help="python of the torch virtualenv (scripts/setup_torch_reference.sh)")
    parser.add_argument("--dataset", default="fashion_mnist",
                        help="the reference run's --dataset, in our names")
    parser.add_argument("--data_dir", default="", help="our data location for --dataset")
    parser.add_argument("--epoch", type=int, default=0,
                        help="step to save under (the reference's file does not say its epoch)")
    args = parser.parse_args(argv)
    for name in ("f", "cloud", "classifier"):
        path = os.path.join(args.run_dir, f"checkpoint_{name}_{args.which}.tar")
        if not os.path.isfile(path):
            parser.error(f"{path!r} does not exist: --run_dir must be a reference run folder "
                         f"(saves/NAME) with its checkpoint_*_{args.which}.tar files.")
    return args


def read_reference(run_dir: str, which: str, torch_python: str) -> dict:
    """The reference checkpoint's arrays, ``{TAG/part/key: array}``, read by torch."""
    if not os.access(torch_python, os.X_OK):
        raise SystemExit(f"--torch_python={torch_python!r} is not an executable; create the "
                         "torch virtualenv with scripts/setup_torch_reference.sh.")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ref.npz")
        subprocess.run([torch_python, "-c", _TORCH_READER, run_dir, which, out], check=True)
        with np.load(out) as data:
            return {k: data[k] for k in data.files}


def make_config(dataset: str, data_dir: str = ""):
    """Our config describing the reference's expert/vanilla model (paper preset, 1 client)."""
    config = train_config.get_config("paper")
    config.data.dataset = dataset
    config.data.data_dir = data_dir
    config.model.bottleneck = "norelu_C8S1"
    config.data.num_clients = 1
    return config


def import_arrays(arrays: dict, config, workdir: str, *, epoch: int, source: dict) -> str:
    """Writes ``arrays`` (reference layout) as our checkpoint under ``workdir``; returns its dir.

    Raises:
      ValueError: the arrays do not fit our model of ``config`` (names or shapes).
    """
    dataset = common.load_data(config)
    model = common.build_model(config, dataset)
    client_tx, server_tx = common.make_optimizers(config, 1)
    state = create_sfl_state(jax.random.key(0), model, client_tx=client_tx, server_tx=server_tx,
                             num_clients=1, image_shape=dataset.train_images.shape[1:])
    try:
        weights = {part: to_flax(arrays, TAG, part, table)
                   for part, table in (("client", CLIENT_MAP), ("server", SERVER_MAP))}
    except KeyError as e:
        raise ValueError(f"not a VGG-11-bn cutlayer-4 norelu_C8S1 reference model: {e}") from e
    ours = {"client": jax.tree.map(lambda x: x[0], {"params": state.clients.params,
                                                    "batch_stats": state.clients.batch_stats}),
            "server": {"params": state.server.params, "batch_stats": state.server.batch_stats}}
    for part in ours:
        _check_same_structure(ours[part], weights[part], part)
    state = load(state, weights, kinds=("client", "server"))
    meta = common.run_meta(config, dataset, model, kind="reference_import")
    meta["reference_source"] = source
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", checkpoints.BEST)
    manager = checkpoints.make_manager(directory, max_to_keep=None)
    checkpoints.save(manager, epoch, state, {"run": meta, "progress": {"epoch": epoch}})
    manager.wait_until_finished()
    common.write_config(config, workdir)
    return directory


def main(argv=None):
    args = parse_args(argv)
    arrays = read_reference(args.run_dir, args.which, args.torch_python)
    config = make_config(args.dataset, args.data_dir)
    directory = import_arrays(arrays, config, args.workdir, epoch=args.epoch,
                              source={"run_dir": os.path.abspath(args.run_dir),
                                      "which": args.which})
    print(f"wrote {directory}/{args.epoch} ({len(arrays)} reference arrays)")


if __name__ == "__main__":
    main(sys.argv[1:])
