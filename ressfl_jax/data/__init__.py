"""Data for ResSFL (Li et al., CVPR 2022): in-memory loading and client partitions (§4.8, §5).

``sources`` loads uint8 NHWC images without TensorFlow; ``partition`` splits the training set
among users and plans each epoch's fixed-shape batches. Augmentation lives in
``ressfl_jax.augment`` because it runs inside the jitted step.
"""

from ressfl_jax.data.partition import epoch_plan
from ressfl_jax.data.partition import partition_clients
from ressfl_jax.data.partition import portion_indices
from ressfl_jax.data.partition import sample_users
from ressfl_jax.data.partition import steps_per_epoch
from ressfl_jax.data.sources import Dataset
from ressfl_jax.data.sources import load_dataset
from ressfl_jax.data.sources import NORMALIZATION

__all__ = [
    "Dataset",
    "NORMALIZATION",
    "epoch_plan",
    "load_dataset",
    "partition_clients",
    "portion_indices",
    "sample_users",
    "steps_per_epoch",
]
