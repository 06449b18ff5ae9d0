"""Helpers shared by test files: smoke configs, a run's metrics records, tree comparisons."""

import json
import os

import jax
import ml_collections
import numpy as np


def smoke_config(config_module, **overrides) -> ml_collections.ConfigDict:
    """``config_module``'s smoke preset with ``group.key=value`` overrides, e.g.
    ``smoke_config(transfer_config, **{"transfer.mode": "naive"})``."""
    config = config_module.get_config("smoke")
    for dotted, value in overrides.items():
        group, key = dotted.split(".")
        config[group][key] = value
    return config


def records(workdir: str) -> list[dict]:
    """The rows of ``workdir``'s metrics.jsonl, in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def leaves_differ(a, b) -> list[bool]:
    """Per leaf of two equal-structure trees: does any element differ?"""
    return jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), a, b))
