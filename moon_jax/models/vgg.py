"""VGG-16 with BatchNorm, CIFAR variant (Simonyan & Zisserman, ICLR 2015; Ioffe & Szegedy 2015)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from moon_jax.models.common import batch_norm, classify, conv, global_avg_pool

# Configuration "D": conv widths, "M" = 2x2 max-pool.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16 (configuration D, Simonyan & Zisserman 2015) with BatchNorm, for 32x32 images.

    The 13 convs are each ``conv3x3 + BN + ReLU``; five 2x2 max-pools bring 32x32 to 1x1, then
    a global average pool (identity at 32x32, and size-agnostic otherwise) gives 512 features and
    a single linear ``head`` replaces the three ImageNet fully connected layers, as in the CIFAR
    VGG-16 of the sparse-training literature (14.7M params at K=10).

    Unlike the other models, the convs keep their bias by default (``conv_bias=True``): that is
    the standard PyTorch VGG-16-BN (``nn.Conv2d`` default, also in MOON's reference code) and its
    parameter count. The bias is redundant before BN and stays dense (only kernels are masked).

    Attributes:
      num_outputs: K, or K + 1 with MOON's "unknown" output.
      conv_bias: give each conv a bias (PyTorch default); ``False`` drops 4,224 params.
      dtype: computation dtype (params stay float32; logits are float32).
    """

    num_outputs: int
    conv_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        i = 0
        for layer in VGG16_CONFIG:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            name, bn_name = ("stem", "stem_bn") if i == 0 else (f"conv{i}", f"bn{i}")
            x = conv(layer, 3, dtype=self.dtype, name=name, use_bias=self.conv_bias)(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=bn_name)(x))
            i += 1
        return classify(global_avg_pool(x), self.num_outputs, return_features)
