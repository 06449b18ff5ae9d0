"""Reproduces the 16-epoch run's lite-vs-naive numbers (RESULTS.md bullet "At 16 epochs naive loses
part of the resistance"): relative L2 distances of the final client/server arrays, and the lite
attacker's logged SSIM/penalty from round 750 on. Run from the repo root on the dev VM, where
runs/cifar10_split16 holds the checkpoints (or give another run's folder, e.g. the second
seed's runs/cifar10_split16_seed1):
  PYTHONPATH=. .venv/bin/python RESULTS_DIR/compare_lite_naive.py [RUN]
"""
import json
import sys

import jax
import numpy as np

from ressfl_jax.client_model import load_client_model

RUN = sys.argv[1] if len(sys.argv) > 1 else "runs/cifar10_split16"


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


m = {k: load_client_model(f"{RUN}/transfer_{k}", which="last") for k in ("lite", "naive")}
e = load_client_model(f"{RUN}/expert", which="best")
for part in ("client", "server"):
    a, b, x = (flat(getattr(r, part)) for r in (m["lite"], m["naive"], e))
    print(f"{part}: lite vs naive rel L2 {np.linalg.norm(a - b) / np.linalg.norm(b):.4f}")
    if x.size == a.size:
        print(f"  vs expert: lite {np.linalg.norm(a - x) / np.linalg.norm(x):.4f}, "
              f"naive {np.linalg.norm(b - x) / np.linalg.norm(x):.4f}")
rows = [json.loads(line) for line in open(f"{RUN}/transfer_lite/metrics.jsonl")]
rows = [r for r in rows if "train/inversion_ssim" in r and r["step"] >= 750]
ssim = [r["train/inversion_ssim"] for r in rows]
pen = [r["train/penalty"] for r in rows]
print(f"lite attacker from round 750: SSIM {min(ssim):.3f}-{max(ssim):.3f}, penalty > 0 in "
      f"{sum(p > 0 for p in pen)} of {len(pen)} windows, max {max(pen):.2g}")
