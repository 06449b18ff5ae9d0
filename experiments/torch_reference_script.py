"""Runs one of the ORIGINAL reference's scripts (``main_MIA.py``, ``main_test_MIA.py``) unchanged.

Whole-run comparisons with the reference (``scripts/reference_fullrun.sh``): its own training
loop, phase 0, checkpoint selection and MI attack, end to end, not only its per-batch calls
(``experiments.torch_reference``) or single rounds (``experiments.torch_reference_step``).
Run with the torch virtualenv, from a COPY of the reference tree (its scripts read and write
relative to the working directory), with a real ``torchvision`` importable (the reference loads
Fashion-MNIST and saves its JPEG pairs with it; ``WITH_TORCHVISION=1 bash
scripts/setup_torch_reference.sh`` installs one under ``.torchvision``):

  cd COPY && PYTHONPATH=/path/to/.torchvision /path/to/.venv-torch/bin/python \
      /path/to/experiments/torch_reference_script.py main_MIA.py --dataset=fmnist ...

The one change, from outside: ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return
``self`` unless ``REF_DEVICE=cuda``, so the reference runs on a machine without a GPU.
``REF_THREADS`` sets torch's intra-op threads (default 2). ``REF_CIFAR_NO_MD5=1`` makes
torchvision's CIFAR datasets accept files by existence instead of the official files' MD5s, for
CIFAR written by ``ressfl_jax.data.sources.write_cifar10_python`` (same images, other bytes).
Standard library + torch only.
"""

import os
import runpy
import sys


def main(argv):
    if not argv or not argv[0].endswith(".py"):
        raise SystemExit("usage: torch_reference_script.py SCRIPT.py [its arguments]")
    script = argv[0]
    if not os.path.isfile(script):
        raise SystemExit(f"{script!r} is not in the working directory {os.getcwd()!r}: run "
                         "from a copy of the reference tree.")
    import torch

    if os.environ.get("REF_DEVICE", "cpu") != "cuda":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    if os.environ.get("REF_CIFAR_NO_MD5") == "1":
        import torchvision.datasets.cifar as cifar

        cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
    torch.set_num_threads(int(os.environ.get("REF_THREADS", "2")))
    os.environ.setdefault("MPLBACKEND", "Agg")  # utils.py imports pyplot
    sys.path.insert(0, os.getcwd())
    sys.argv = list(argv)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
