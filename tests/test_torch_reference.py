"""Tests for experiments.torch_reference, the PyTorch-reference timing harness.

The main venv has no torch: the config table, the argument parsing and the torchvision stub are
checked here without it; the end-to-end part needs torch and an extracted reference tree
(``RESSFL_REFERENCE``) and skips otherwise.
"""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import torch_reference as tr


def test_imports_are_stdlib_at_top_level_and_never_jax():
    with open(tr.__file__) as f:
        tree = ast.parse(f.read())
    top_level = {alias.name.split(".")[0] for node in tree.body
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import)
                               else [ast.alias(node.module)])}
    assert top_level <= set(sys.stdlib_module_names), top_level
    everywhere = {alias.name.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.Import) for alias in node.names}
    everywhere |= {node.module.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom)}
    assert not everywhere & {"jax", "jaxlib", "flax", "ressfl_jax"}, everywhere


def test_config_table():
    assert list(tr.CONFIGS) == ["vanilla_k1", "expert", "expert_hinge_active", "lite_k2",
                                "vanilla_k10", "vanilla_k100", "attack_res_normN4C64",
                                "attack_conv_normN0C16"]
    expert, active = tr.CONFIGS["expert"], tr.CONFIGS["expert_hinge_active"]
    assert (expert.regularization, expert.strength, expert.decoder, expert.interval) == (
        "gan_adv_step1", 0.3, "res_normN4C64", 1)
    assert (expert.ssim_threshold, active.ssim_threshold) == (0.5, 0.0)
    lite = tr.CONFIGS["lite_k2"]
    assert (lite.num_clients, lite.decoder, lite.interval, lite.local_lr, lite.lr) == (
        2, "conv_normN0C16", 5, 0.005, 0.05)
    assert lite.steps_per_call == 10  # a full interval cycle of 5 batch indices x 2 clients
    assert tr.CONFIGS["vanilla_k10"].steps_per_call == 10  # one round
    assert tr.CONFIGS["vanilla_k100"].steps_per_call == 100
    assert tr.CONFIGS["vanilla_k1"].steps_per_call == 1
    for name in ("attack_res_normN4C64", "attack_conv_normN0C16"):
        config = tr.CONFIGS[name]
        assert (config.kind, config.batch_size, config.num_clients) == ("attack", 32, 1)
    assert all(c.batch_size == 128 for c in tr.CONFIGS.values() if c.kind == "train")


def test_decoder_parts_and_descriptions():
    assert tr.decoder_parts("res_normN4C64") == ("res_normN_AE", 4, 64)
    assert tr.decoder_parts("conv_normN0C16") == ("conv_normN_AE", 0, 16)
    assert "gan_train_step" in tr.describe(tr.CONFIGS["lite_k2"])
    assert "gan_train_step" not in tr.describe(tr.CONFIGS["vanilla_k1"])
    assert "MIA.attack" in tr.describe(tr.CONFIGS["attack_res_normN4C64"])


def test_parse_args():
    args = tr.parse_args(["--reference=/ref", "--configs=vanilla_k1,lite_k2", "--repeats=2",
                          "--threads=1", "--out=x.json"])
    assert (args.reference, args.configs, args.repeats, args.threads, args.out) == (
        "/ref", ["vanilla_k1", "lite_k2"], 2, 1, "x.json")
    assert tr.parse_args(["--reference=/ref"]).configs == list(tr.CONFIGS)
    assert tr.parse_args(["--reference=/ref"]).device == "cpu"
    assert tr.parse_args(["--reference=/ref", "--device=cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        tr.parse_args(["--reference=/ref", "--device=tpu"])
    with pytest.raises(SystemExit):
        tr.parse_args(["--reference=/ref", "--configs=vanilla_k3"])
    with pytest.raises(SystemExit):
        tr.parse_args(["--reference=/ref", "--repeats=0"])


def test_stub_module_raises_on_use():
    stub = tr._Stub("torchvision.utils")
    with pytest.raises(RuntimeError, match="stubbed out"):
        stub.save_image(None, "x.jpg")
    with pytest.raises(AttributeError):
        stub.__path__  # noqa: B018  (the import system must not take it for a package path)


@pytest.mark.slow
def test_end_to_end_attack_config(tmp_path):
    pytest.importorskip("torch")
    reference = os.environ.get("RESSFL_REFERENCE", "")
    if not os.path.isfile(os.path.join(reference, "MIA_torch.py")):
        pytest.skip("set RESSFL_REFERENCE to an extracted zlijingtao/ResSFL tree")
    out = tmp_path / "out.json"
    (result,) = tr.main([f"--reference={reference}", "--configs=attack_conv_normN0C16",
                         "--repeats=1", "--threads=1", f"--out={out}"])
    assert result["images_per_sec"] > 0 and len(result["step_s"]) == 1
    assert result["device"] == "cpu"
    assert out.exists()


def test_reference_script_runner_refuses_bad_invocations(tmp_path, monkeypatch):
    """experiments.torch_reference_script: clear errors before torch is even imported."""
    from experiments import torch_reference_script as trs

    with pytest.raises(SystemExit, match="usage"):
        trs.main([])
    with pytest.raises(SystemExit, match="usage"):
        trs.main(["--dataset=fmnist"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="'main_MIA.py' is not in the working directory"):
        trs.main(["main_MIA.py", "--dataset=fmnist"])


def test_reference_script_runner_runs_the_script_with_cuda_neutralised(tmp_path, monkeypatch):
    """The script runs as __main__ with its arguments; .cuda() returns self (torch needed)."""
    torch = pytest.importorskip("torch")
    from experiments import torch_reference_script as trs

    (tmp_path / "probe.py").write_text(
        "import sys, torch\n"
        "t = torch.zeros(2)\n"
        "assert t.cuda() is t and __name__ == '__main__'\n"
        "open('out.txt', 'w').write(' '.join(sys.argv))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REF_DEVICE", raising=False)
    monkeypatch.setattr(torch.Tensor, "cuda", torch.Tensor.cuda)  # restored after the test
    monkeypatch.setattr(torch.nn.Module, "cuda", torch.nn.Module.cuda)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    trs.main(["probe.py", "--x=1"])
    assert (tmp_path / "out.txt").read_text() == "probe.py --x=1"


def test_reference_script_runner_lets_torchvision_read_our_cifar10(tmp_path):
    """REF_CIFAR_NO_MD5=1: torchvision's CIFAR10 reads write_cifar10_python's files (which are
    not the official bytes) instead of trying a download. Needs the torch virtualenv and its
    torchvision (scripts/setup_torch_reference.sh; TORCH_PYTHON / TORCHVISION as there)."""
    from ressfl_jax.data import sources

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torch_python = os.environ.get("TORCH_PYTHON", os.path.join(root, ".venv-torch/bin/python"))
    torchvision = os.environ.get("TORCHVISION", os.path.join(root, ".torchvision"))
    if not os.path.isfile(os.path.join(torchvision, "torchvision", "__init__.py")):
        pytest.skip(f"no torchvision in {torchvision}")
    if not os.path.isfile(torch_python):
        pytest.skip(f"no torch python at {torch_python}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(5)
    sources.write_cifar10_python(images, labels, images[:2], labels[:2],
                                 str(tmp_path / "data" / "cifar-10-batches-py"))
    (tmp_path / "probe.py").write_text(
        "import torchvision\n"
        "d = torchvision.datasets.CIFAR10(root='./data', train=True, download=True)\n"
        "open('out.txt', 'w').write(repr((d.data.tolist(), d.targets)))\n")
    script = os.path.join(root, "experiments", "torch_reference_script.py")
    subprocess.run([torch_python, script, "probe.py"], cwd=tmp_path, check=True, timeout=120,
                   env={**os.environ, "REF_CIFAR_NO_MD5": "1", "PYTHONPATH": torchvision})
    data, targets = ast.literal_eval((tmp_path / "out.txt").read_text())
    np.testing.assert_array_equal(np.asarray(data, np.uint8), images)
    assert targets == labels.tolist()
