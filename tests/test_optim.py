"""LR schedule and SGD semantics against the reference (spec §4.2, §4.6, §11.6)."""

import jax.numpy as jnp
import numpy as np
import pytest

from ressfl_jax import optim


@pytest.mark.parametrize("epoch, factor", [(1, 0.0), (2, 1.0), (59, 1.0), (60, 0.2),
                                           (120, 0.04), (160, 0.008), (200, 0.008)])
def test_reference_schedule(epoch, factor):
    lr = optim.multistep_lr(epoch, base_lr=0.05, milestones=(60, 120, 160), gamma=0.2,
                            zero_first_epoch=True)
    np.testing.assert_allclose(float(lr), 0.05 * factor, rtol=1e-6)


def test_schedule_counts_updates_per_epoch():
    schedule = optim.make_schedule(base_lr=1.0, updates_per_epoch=10, milestones=(2,),
                                   gamma=0.5, zero_first_epoch=True)
    assert [float(schedule(jnp.asarray(c))) for c in (0, 9, 10, 19, 20)] == [0, 0, 0.5, 0.5, 0.5]


def test_sgd_matches_pytorch_coupled_weight_decay():
    # torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4), two steps with grad 0.5:
    # d1 = 0.5 + 5e-4*1 = 0.5005; buf = d1; p1 = 1 - 0.1*0.5005 = 0.94995
    # d2 = 0.5 + 5e-4*0.94995; buf = 0.9*0.5005 + d2 = 0.950924975; p2 = 0.8548575025
    tx = optim.make_sgd(0.1, momentum=0.9, weight_decay=5e-4)
    params = {"p": jnp.array(1.0)}
    opt_state = tx.init(params)
    expected = [0.94995, 0.8548575025]
    for want in expected:
        updates, opt_state = tx.update({"p": jnp.array(0.5)}, opt_state, params)
        params = {"p": params["p"] + updates["p"]}
        np.testing.assert_allclose(float(params["p"]), want, rtol=1e-6)


def test_bad_updates_per_epoch():
    with pytest.raises(ValueError, match="updates_per_epoch"):
        optim.make_schedule(base_lr=0.1, updates_per_epoch=0, milestones=(), gamma=0.2,
                            zero_first_epoch=False)
