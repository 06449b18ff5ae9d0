"""Orbax round trips, metadata, and crash safety (a partial save is ignored)."""

import os

import chex
import jax
import jax.numpy as jnp
import pytest

from ressfl_jax import checkpoints, optim
from ressfl_jax.models import build_split_model
from ressfl_jax.state import create_sfl_state


MODEL = build_split_model("vgg11_bn", cut_layer=2, bottleneck="None", num_classes=10,
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), width_mult=1 / 16)
TX = optim.make_sgd(optim.make_schedule(base_lr=0.1, updates_per_epoch=5, milestones=(2,),
                                        gamma=0.2, zero_first_epoch=True),
                    momentum=0.9, weight_decay=5e-4)


def small_state(seed=0):
    # An "rbg" init key: a threefry init of even a tiny VGG compiles ~4x slower on XLA-CPU (as
    # in test_models.py); the round trips hold whatever the values.
    return create_sfl_state(jax.random.key(seed, impl="rbg"), MODEL, client_tx=TX, server_tx=TX,
                            num_clients=2)


def test_round_trip_against_abstract_tree(tmp_path):
    state = small_state()
    state = state.replace(step=jnp.asarray(17, jnp.int32))
    manager = checkpoints.make_manager(tmp_path / "last", max_to_keep=2)
    checkpoints.save(manager, 3, state, {"progress": {"epoch": 3}, "arch": "vgg11_bn"})
    manager.wait_until_finished()
    target = checkpoints.abstract(small_state(seed=1))
    restored, meta = checkpoints.restore(checkpoints.make_manager(tmp_path / "last",
                                                                  max_to_keep=2), target)
    chex.assert_trees_all_equal(restored, state)
    assert meta == {"progress": {"epoch": 3}, "arch": "vgg11_bn"}
    assert checkpoints.read_meta(tmp_path / "last")["arch"] == "vgg11_bn"


def test_partial_save_is_ignored(tmp_path):
    state = small_state()
    manager = checkpoints.make_manager(tmp_path / "last", max_to_keep=2)
    checkpoints.save(manager, 1, state, {"epoch": 1})
    manager.wait_until_finished()
    # What a `kill -9` during the save of step 2 leaves behind: a temporary directory.
    partial = tmp_path / "last" / "2.orbax-checkpoint-tmp-1234567"
    os.makedirs(partial / "state")
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    manager = checkpoints.make_manager(tmp_path / "last", max_to_keep=2)
    assert manager.latest_step() == 1
    restored, meta = checkpoints.restore(manager, checkpoints.abstract(state))
    chex.assert_trees_all_equal(restored, state)


def test_restore_without_checkpoint_names_directory(tmp_path):
    manager = checkpoints.make_manager(tmp_path / "empty", max_to_keep=1)
    with pytest.raises(FileNotFoundError, match="empty"):
        checkpoints.restore(manager, checkpoints.abstract(small_state()))
