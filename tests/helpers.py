"""Helpers shared by the end-to-end test files: smoke configs and a run's metrics records."""

import json
import os

import ml_collections


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
