"""The model-inversion attack: learned decoders, the optimisation attack, targets, protocol."""

import dataclasses
import io
import pickle
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ressfl_jax.attacks import learned, optimization, protocol, targets
from ressfl_jax.training import decoder_fit


def blocky_images(n, seed=0):
    """Images that are constant on 4x4 blocks, so 8x8 average pooling loses nothing."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)


@dataclasses.dataclass(frozen=True, eq=False)
class FakeClient:
    """A client whose smashed data is a fixed function of the image (no checkpoint needed)."""

    kind: str
    image_shape: tuple = (32, 32, 3)

    def apply(self, images):
        images = jnp.asarray(images, jnp.float32)
        if self.kind == "identity":  # [B, 8, 8, 3]: the 4x4 block values, lossless here.
            return images[:, ::4, ::4, :]
        return jnp.zeros(images.shape[:1] + (8, 8, 3), jnp.float32)  # "constant"

    def __call__(self, images):
        images = np.asarray(images)
        return self.apply(images / 255.0 if images.dtype == np.uint8 else images)

    def accuracy(self, images, labels, *, defense=None, key=None):
        del images, labels, defense, key
        return 0.5


@dataclasses.dataclass
class FakeDataset:
    train_images: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def settings(**overrides):
    fit = decoder_fit.FitSettings(epochs=overrides.pop("epochs", 25), batch_size=16, lr=3e-3,
                                  selection=overrides.pop("selection", "val_mean"))
    return protocol.AttackSettings(decoders=("conv_normN0C16",), fit=fit, jpeg=False,
                                   **overrides)


@pytest.fixture(scope="module")
def dataset():
    return FakeDataset(train_images=blocky_images(160, 1), test_images=blocky_images(160, 2),
                       test_labels=np.zeros(160, np.int32))


def test_attack_inverts_an_identity_like_client_and_fails_on_a_constant_one(dataset):
    target_images = dataset.train_images[:16]
    var = float(np.var(target_images / 255.0))  # about 1/12 for uniform pixels
    results = {}
    for kind in ("identity", "constant"):
        result, images = protocol.attack_client(jax.random.key(0), FakeClient(kind), dataset,
                                                target_images, np.arange(16), settings())
        results[kind] = result["attacks"][0]
        assert result["accuracy"] == 0.5 and result["num_targets"] == 16
        assert images["conv_normN0C16"].shape == (16, 32, 32, 3)
    assert results["identity"]["mse"] < 0.1 * var
    assert results["identity"]["psnr"] > 20
    # Nothing to invert: the best the decoder can do is the mean image.
    assert results["constant"]["mse"] > 0.8 * var
    assert results["constant"]["ssim"] + 0.5 < results["identity"]["ssim"]


@pytest.mark.parametrize("selection", decoder_fit.SELECTIONS)
def test_decoder_selection_never_reads_the_targets(dataset, selection):
    # 80 pairs: 72 train + 8 val, whole batches of 8 (no partial batch: a smaller program).
    data = learned.prepare_data(FakeClient("identity"), dataset.test_images[:80],
                                dataset.train_images[:8], jpeg=False)
    poisoned = dataclasses.replace(data, target_truth=jnp.full_like(data.target_truth, jnp.nan))
    fit = decoder_fit.FitSettings(epochs=2, batch_size=8, selection=selection)
    # The clean selection with 2 colluders: picking one of them must not read the targets.
    colluders = 2 if selection == "val_mean" else 1
    clean, recon = learned.learned_attack(jax.random.key(0), data, decoder_type="conv_normN0C8",
                                          settings=fit, colluders=colluders)
    bad, bad_recon = learned.learned_attack(jax.random.key(0), poisoned,
                                            decoder_type="conv_normN0C8", settings=fit,
                                            colluders=colluders)
    # Training and selection are identical; only the final metrics see the (NaN) targets.
    assert clean["best_val_loss"] == bad["best_val_loss"]
    np.testing.assert_array_equal(recon, bad_recon)
    assert np.isfinite(clean["mse"]) and np.isnan(bad["mse"])


def test_metrics_match_numpy():
    rng = np.random.default_rng(0)
    truth = rng.uniform(size=(5, 32, 32, 3)).astype(np.float32)
    recon = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)
    means, per_image = learned.evaluate_images(recon, truth)
    mse = ((recon.astype(np.float64) - truth) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(per_image["mse"], mse, rtol=1e-5)
    np.testing.assert_allclose(means["mse"], mse.mean(), rtol=1e-5)
    # PSNR is the mean of per-image PSNRs (spec §7.4), not the PSNR of the mean MSE.
    np.testing.assert_allclose(means["psnr"], np.mean(10 * np.log10(1 / mse)), rtol=1e-5)
    assert means["psnr"] != pytest.approx(10 * np.log10(1 / mse.mean()), rel=1e-7)
    same, _ = learned.evaluate_images(truth, truth)
    assert same["mse"] == 0 and same["ssim"] == pytest.approx(1.0, abs=1e-5)


class ConstantDecoder:
    """Stacked 'decoders' that each output a constant c: MSE on 0.5-gray targets = (c - .5)^2."""

    def apply(self, variables, x, train):
        del train
        return jnp.broadcast_to(variables["c"], (x.shape[0], 32, 32, 3))


def evaluate_constants(cs, **kwargs):
    """``learned.evaluate`` of constant decoders ``cs`` (2 seeds x 3 colluders) on gray images."""
    return learned.evaluate(ConstantDecoder(), {"c": jnp.array(cs)}, jnp.zeros((4, 8, 8, 3)),
                            jnp.full((4, 32, 32, 3), 0.5), seeds=2, colluders=3, **kwargs)


def test_best_of_colluders_per_seed_then_mean_over_seeds():
    # seed 0: .1 .4 .3; seed 1: .6 .2 .45 (none exact: a perfect one has PSNR inf, std nan)
    metrics, recon = evaluate_constants([0.1, 0.4, 0.3, 0.6, 0.2, 0.45])
    best = np.array([(0.5 - 0.4) ** 2, (0.5 - 0.45) ** 2])  # per seed: the closest to 0.5
    np.testing.assert_allclose(metrics["mse_per_seed"], best, atol=1e-7)
    np.testing.assert_allclose(metrics["mse"], best.mean(), atol=1e-7)
    np.testing.assert_allclose(metrics["mse_std"], best.std(), atol=1e-7)
    np.testing.assert_allclose(recon, 0.4)  # seed 0's best colluder


def test_clean_selection_picks_colluders_by_validation_loss_not_targets():
    val_loss = [0.1, 0.9, 0.5, 0.3, 0.2, 0.9]  # seed 0 picks c = 0.1, seed 1 c = 0.2
    metrics, recon = evaluate_constants([0.1, 0.4, 0.3, 0.5, 0.2, 0.45], val_loss=val_loss)
    np.testing.assert_allclose(metrics["mse_per_seed"], [0.4 ** 2, 0.3 ** 2], atol=1e-6)
    np.testing.assert_allclose(metrics["psnr_per_seed"],
                               [10 * np.log10(1 / 0.16), 10 * np.log10(1 / 0.09)], rtol=1e-5)
    np.testing.assert_allclose(recon, 0.1)


def test_worst_case_picks_each_metric_separately():
    results = [{"decoder": "a", "mse": 0.02, "ssim": 0.5, "psnr": 17.0},
               {"decoder": "b", "mse": 0.03, "ssim": 0.6, "psnr": 16.0}]
    worst = learned.worst_case(results)
    assert worst == {"mse": 0.02, "mse_decoder": "a", "ssim": 0.6, "ssim_decoder": "b",
                     "psnr": 17.0, "psnr_decoder": "a"}


def test_optimization_attack_recovers_an_invertible_client():
    client = FakeClient("identity")
    images = jnp.asarray(blocky_images(3, 5) / 255.0, jnp.float32)
    fakes, objective = optimization.invert_by_optimization(
        client.apply, client.apply(images), image_shape=(32, 32, 3), steps=200, lr=0.05)
    np.testing.assert_allclose(fakes[:, ::4, ::4], images[:, ::4, ::4], atol=2e-2)
    assert float(jnp.max(objective)) < 1e-3


def test_optimization_attack_images_are_independent():
    # Summing per-image losses with elementwise Adam = optimising each image alone.
    client = FakeClient("identity")
    images = jnp.asarray(blocky_images(2, 6) / 255.0, jnp.float32)
    kwargs = dict(image_shape=(32, 32, 3), steps=20, lr=0.1, tv_weight=0.1)
    both, _ = optimization.invert_by_optimization(client.apply, client.apply(images), **kwargs)
    alone, _ = optimization.invert_by_optimization(client.apply, client.apply(images[1:]),
                                                   **kwargs)
    np.testing.assert_allclose(both[1], alone[0], atol=1e-6)


def test_total_variation_literal():
    x = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(1.0)
    # Vertical diffs: |0-1|, |0-0| -> mean 0.5; horizontal: |0-1|, |0-0| -> 0.5.
    np.testing.assert_allclose(optimization.total_variation(x), [1.0])


def test_tv_prior_enters_the_objective_and_smooths_the_inversion():
    # A client that sees every 4th pixel: the other 15/16 get no gradient from the features,
    # so without a prior they stay at the start (0) next to matched 0.5s; TV pulls them along.
    def every_4th(x):
        return x[:, ::4, ::4]

    fake = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
    target = jnp.full((2, 8, 8, 3), 0.5)
    base = optimization.per_image_objective(every_4th, fake, target, tv_weight=0.0,
                                            l2_weight=0.0)
    with_tv = optimization.per_image_objective(every_4th, fake, target, tv_weight=0.25,
                                               l2_weight=0.0)
    np.testing.assert_allclose(with_tv - base, 0.25 * optimization.total_variation(fake),
                               rtol=1e-6)
    kwargs = dict(image_shape=(32, 32, 3), steps=100, lr=0.05)
    plain, _ = optimization.invert_by_optimization(every_4th, target, **kwargs)
    smooth, _ = optimization.invert_by_optimization(every_4th, target, tv_weight=1.0,
                                                    **kwargs)
    tv_plain, tv_smooth = (optimization.total_variation(x) for x in (plain, smooth))
    assert np.all(tv_smooth < 0.5 * tv_plain), (tv_smooth, tv_plain)


def test_aux_data_never_contains_targets(dataset):
    s = settings(aux_source="train")
    aux = protocol.aux_images(dataset, s, np.arange(10))
    assert len(aux) == 150
    np.testing.assert_array_equal(aux, dataset.train_images[10:])
    assert len(protocol.aux_images(dataset, settings(aux_max=7), np.arange(10))) == 7
    with pytest.raises(ValueError, match="aux_source"):
        settings(aux_source="val").validate()


def test_sample_targets_is_seeded_and_checked():
    images = blocky_images(20)
    a, ia = targets.sample_targets(images, np.arange(5, 20), num=4, seed=1)
    b, ib = targets.sample_targets(images, np.arange(5, 20), num=4, seed=1)
    np.testing.assert_array_equal(ia, ib)
    assert np.all(ia >= 5) and len(set(ia.tolist())) == 4
    np.testing.assert_array_equal(a, images[ia])
    with pytest.raises(ValueError, match="Cannot draw 30"):
        targets.sample_targets(images, np.arange(20), num=30, seed=0)


def _fake_torch_file(path, array: np.ndarray):
    """Writes ``array`` in PyTorch's zip tensor format, using stand-in torch modules."""
    array = np.ascontiguousarray(array, np.float32)
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        return args

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__, FloatStorage.__module__ = "torch._utils", "torch"
    _rebuild_tensor_v2.__qualname__, FloatStorage.__qualname__ = ("_rebuild_tensor_v2",
                                                                   "FloatStorage")
    utils._rebuild_tensor_v2, torch.FloatStorage, torch._utils = (_rebuild_tensor_v2,
                                                                  FloatStorage, utils)

    class Tensor:
        def __reduce__(self):
            strides = tuple(s // 4 for s in array.strides)
            return (_rebuild_tensor_v2, (Storage(), 0, array.shape, strides, False, {}))

    class Storage:
        pass

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, "0", "cpu", array.size)
            return None

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(Tensor())
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k)
            else:
                sys.modules[k] = v
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/data/0", np.ascontiguousarray(array, np.float32).tobytes())


def test_reference_fixture_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    normalised = ((images / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
    _fake_torch_file(tmp_path / "test_cifar10_image.pt", normalised)
    _fake_torch_file(tmp_path / "test_cifar10_label.pt", np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(targets.read_torch_tensor(str(tmp_path /
                                                                "test_cifar10_image.pt")),
                                  normalised)
    got, labels = targets.load_reference_fixture(str(tmp_path), "cifar10", mean=mean, std=std)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, np.arange(4))
    with pytest.raises(FileNotFoundError, match="zlijingtao/ResSFL"):
        targets.load_reference_fixture(str(tmp_path), "svhn", mean=mean, std=std)
