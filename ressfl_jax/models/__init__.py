"""Split client/server models of ResSFL (Li et al., CVPR 2022): VGG, CIFAR ResNet, MobileNetV2.

``build_split_model`` is the entry point; see ``split.py`` for the paper-cut to ``cut_layer`` map.
"""

from ressfl_jax.models.bottleneck import BottleneckSpec, parse_bottleneck
from ressfl_jax.models.split import ARCHS, SplitModel, build_split_model, feature_shape, num_layers

__all__ = ["ARCHS", "BottleneckSpec", "SplitModel", "build_split_model", "feature_shape",
           "num_layers", "parse_bottleneck"]
