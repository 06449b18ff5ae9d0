"""Tests for experiments.import_reference (a reference-trained model as our checkpoint).

No torch here: a model of ours is written out in the reference's state_dict layout (the inverse
of the import's mapping, written independently below: PyTorch's [O, I, kh, kw] convs, [O, I]
linears, BN weight/bias/running_mean/running_var) and imported back; the restored client and
server must equal it exactly, and the public API must compute the same smashed data.
"""

import jax
import numpy as np
import pytest

from experiments import import_reference as ir
from experiments.reference_parity import CLIENT_MAP, SERVER_MAP
from ressfl_jax import load_client_model
from tests.test_data import _write_idx_set


def _write_tiny_fmnist(directory):
    rng = np.random.default_rng(0)
    _write_idx_set(directory, rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
                   rng.integers(0, 10, 6, dtype=np.uint8),
                   rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
                   rng.integers(0, 10, 4, dtype=np.uint8))


def _subtree(tree, path):
    for name in path.split("/"):
        tree = tree[name]
    return tree


def _to_reference(weights: dict, part: str, table: dict) -> dict:
    """Our {'params', 'batch_stats'} of ``part`` -> {f'ckpt/{prefix}/{module}.{leaf}': array}."""
    out = {}
    for ref_module, ours in table.items():
        prefix, module = (ref_module.split("/", 1) if part == "server"
                          else (part, ref_module))
        head = f"{ir.TAG}/{prefix}/{module}."
        params = _subtree(weights["params"], ours)
        if "kernel" in params:
            kernel = np.asarray(params["kernel"])
            out[head + "weight"] = (kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4
                                    else kernel.T)
        else:  # BatchNorm
            out[head + "weight"] = np.asarray(params["scale"])
            stats = _subtree(weights["batch_stats"], ours)
            out[head + "running_mean"] = np.asarray(stats["mean"])
            out[head + "running_var"] = np.asarray(stats["var"])
        out[head + "bias"] = np.asarray(params["bias"])
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fmnist")
    _write_tiny_fmnist(str(data_dir))
    config = ir.make_config("fashion_mnist", str(data_dir))
    dataset = ir.common.load_data(config)
    model = ir.common.build_model(config, dataset)
    client_tx, server_tx = ir.common.make_optimizers(config, 1)
    state = ir.create_sfl_state(jax.random.key(7), model, client_tx=client_tx,
                                server_tx=server_tx, num_clients=1,
                                image_shape=dataset.train_images.shape[1:])
    rng = np.random.default_rng(1)  # non-trivial BN statistics, so that a swap would show
    stats = jax.tree.map(lambda x: rng.uniform(0.5, 2.0, x.shape).astype(np.float32),
                         (state.clients.batch_stats, state.server.batch_stats))
    client = {"params": jax.tree.map(lambda x: x[0], state.clients.params),
              "batch_stats": jax.tree.map(lambda x: x[0], stats[0])}
    server = {"params": state.server.params, "batch_stats": stats[1]}
    arrays = {**_to_reference(client, "client", CLIENT_MAP),
              **_to_reference(server, "server", SERVER_MAP)}
    workdir = str(tmp_path_factory.mktemp("imported"))
    ir.import_arrays(arrays, config, workdir, epoch=3, source={"run_dir": "x", "which": "best"})
    return config, arrays, client, server, workdir, dataset


def test_import_round_trip_is_exact(imported):
    _, _, client, server, workdir, dataset = imported
    loaded = load_client_model(workdir)
    assert loaded.step == 3 and loaded.meta["kind"] == "reference_import"
    assert loaded.meta["mean"] == [0.5, 0.5, 0.5] and loaded.meta["bottleneck"] == "norelu_C8S1"
    for want, got in ((client, loaded.client), (server, loaded.server)):
        jax.tree.map(np.testing.assert_array_equal, want, got)
    images = dataset.test_images.astype(np.float32) / 255.0
    features = loaded(images)
    assert features.shape == (4, 8, 8, 8)
    expected = loaded.model.client.apply(
        {"params": client["params"], "batch_stats": client["batch_stats"]},
        (images - 0.5) / 0.5, train=False)
    np.testing.assert_allclose(np.asarray(features), np.asarray(expected), rtol=1e-5,
                               atol=1e-5)


def test_import_refuses_arrays_that_do_not_fit(imported, tmp_path):
    config, arrays, *_ = imported
    bad = dict(arrays)
    key = f"{ir.TAG}/client/4.weight"
    bad[key] = bad[key][:, :3]  # conv 64 -> 128 with 3 input channels
    with pytest.raises(ValueError,
                       match="client: converted reference weights do not fit our model"):
        ir.import_arrays(bad, config, str(tmp_path), epoch=0, source={})
    bad = dict(arrays)
    bad[f"{ir.TAG}/client/9.weight"] = np.zeros(3, np.float32)  # a layer we do not have
    with pytest.raises(ValueError, match="not a VGG-11-bn cutlayer-4 norelu_C8S1"):
        ir.import_arrays(bad, config, str(tmp_path), epoch=0, source={})


def test_missing_reference_files_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ir.parse_args([f"--run_dir={tmp_path}", f"--workdir={tmp_path}/out"])
    assert f"{tmp_path}/checkpoint_f_best.tar' does not exist" in capsys.readouterr().err
