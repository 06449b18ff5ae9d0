"""``experiments.penalty_diagnosis``: the saved attacker scored in each BatchNorm view."""

import numpy as np
import pytest

import ressfl_jax
from experiments import penalty_diagnosis
from ressfl_jax import losses
from ressfl_jax.data import load_dataset
from ressfl_jax.models.decoders import build_decoder


@pytest.mark.slow
def test_four_views_and_the_decoders_own_view_by_hand(smoke_expert):
    result = penalty_diagnosis.diagnose(smoke_expert, num_images=40, batch_size=20)
    assert result["num_images"] == 40 and result["decoder"] == "res_normN1C8"
    views = {(r["client"], r["decoder"]): r for r in result["rows"]}
    assert set(views) == {(c, d) for c in ("train", "eval") for d in ("train", "eval")}
    # The decoder's own update: eval-mode client features, decoder on each batch's statistics.
    client = ressfl_jax.load_client_model(smoke_expert, which="last")
    decoder = build_decoder("res_normN1C8", feature_shape=client.feature_shape,
                            image_shape=client.image_shape, conv_impl="xla")
    images = load_dataset("synthetic").test_images[:40]
    ssims, mses = [], []
    for batch in (images[:20], images[20:]):
        x = batch.astype(np.float32) / 255.0
        recon, _ = decoder.apply(client.decoder, client(batch), train=True,
                                 mutable=["batch_stats"])
        ssims.append(losses.ssim(recon, x))
        mses.append(losses.mse(recon, x))
    np.testing.assert_allclose(views[("eval", "train")]["ssim"], np.mean(ssims), rtol=1e-4)
    np.testing.assert_allclose(views[("eval", "train")]["mse"], np.mean(mses), rtol=1e-4)
    # Batch statistics and running statistics give different reconstructions.
    assert views[("train", "eval")]["ssim"] != views[("train", "train")]["ssim"]
    assert "| train | eval | penalty (penalty_bn='eval'" in penalty_diagnosis.table(result)


def test_fewer_images_than_a_batch_is_refused(smoke_expert):
    with pytest.raises(ValueError, match="num_images=10 is less than one batch of 20"):
        penalty_diagnosis.diagnose(smoke_expert, num_images=10, batch_size=20)
