"""Attack targets: the private images a curious server tries to reconstruct (spec §7.1, §10).

Two sources:

* ``sample_targets``: a seeded sample of a client's private *training* images (the reference's
  fixtures were one batch from a client's training loader), for any dataset we can load.
* ``load_reference_fixture``: the reference's own 128 evaluation images
  (``test_{dataset}_image.pt`` in a checkout of zlijingtao/ResSFL), read without PyTorch, so
  numbers on CIFAR/SVHN/MNIST are measured on exactly the reference's targets. The files hold
  normalised NCHW float tensors; they are de-normalised to uint8 NHWC here (the values land
  exactly on multiples of 1/255, spec §10).
"""

import os
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8,
                   "HalfStorage": np.float16}


class _TorchUnpickler(pickle.Unpickler):
    """Reads a PyTorch zip-format tensor pickle into NumPy (tensors only, no torch import)."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a tensor file")

    def persistent_load(self, pid):
        _, dtype, key, _, numel = pid
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        return np.frombuffer(raw, dtype=dtype, count=numel)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    del unused
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride)).copy()


def read_torch_tensor(path: str) -> np.ndarray:
    """Reads one tensor saved with ``torch.save`` (zip format) as a NumPy array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No tensor file at {path}.")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path} is not a PyTorch zip-format tensor file.")
        with archive.open(pkl[0]) as f:
            return _TorchUnpickler(f, archive, pkl[0].rsplit("/", 1)[0]).load()


def load_reference_fixture(directory: str, dataset: str, *, mean, std):
    """The reference's 128 target images of ``dataset`` as uint8 [128, 32, 32, 3] and labels.

    Args:
      directory: a checkout of zlijingtao/ResSFL (holding ``test_{name}_image.pt``).
      dataset: our dataset name (``fashion_mnist`` maps to the file name ``fmnist``).
      mean, std: the dataset's normalisation; (F)MNIST files are in [-1, 1] instead (§4.8).

    Raises:
      FileNotFoundError: the fixture file is absent (the message names the path).
    """
    name = {"fashion_mnist": "fmnist"}.get(dataset, dataset)
    image_path = os.path.join(directory, f"test_{name}_image.pt")
    if not os.path.isfile(image_path):
        raise FileNotFoundError(
            f"No reference fixture at {image_path}: pass a checkout of github.com/zlijingtao/"
            f"ResSFL (it ships test_{{cifar10,cifar100,svhn,mnist,fmnist,facescrub}}_image.pt), "
            f"or use attack.targets='train' to sample targets from the training split.")
    x = read_torch_tensor(image_path).astype(np.float64).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if name in ("mnist", "fmnist"):
        x = (x + 1.0) / 2.0
    else:
        x = x * np.asarray(std, np.float64) + np.asarray(mean, np.float64)
    images = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    labels = read_torch_tensor(os.path.join(directory, f"test_{name}_label.pt"))
    return images, labels.astype(np.int32)


def sample_targets(images: np.ndarray, indices: np.ndarray, *, num: int, seed: int):
    """``num`` images drawn without replacement (seeded) from ``images[indices]``.

    Args:
      images: uint8 [N, H, W, 3]; indices: int [M], e.g. one client's training partition.

    Returns:
      (uint8 [num, H, W, 3], the chosen indices into ``images``).
    """
    indices = np.asarray(indices).reshape(-1)
    if not 1 <= num <= len(indices):
        raise ValueError(f"Cannot draw {num} attack targets from {len(indices)} images; use "
                         f"1 <= num_targets <= {len(indices)}.")
    chosen = np.sort(np.random.default_rng(seed).choice(indices, size=num, replace=False))
    return images[chosen], chosen
