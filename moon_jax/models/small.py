"""Small models for flat or tiny inputs (tests, 8x8 digits, 28x28 MNIST-like images)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from moon_jax.models.common import batch_norm, classify, conv, global_avg_pool


class MLP(nn.Module):
    """Multi-layer perceptron: flatten, ``Dense + ReLU`` per hidden width, then ``head``.

    A plain fully connected baseline (as in the sparse-training literature's MNIST LeNet-300-100
    experiments, LeCun et al. 1998) that runs in milliseconds, for quick experiments and tests.
    It has no BatchNorm, so its variables hold only ``params``.

    Attributes:
      num_outputs: K, or K + 1 with MOON's "unknown" output.
      hidden: widths of the hidden layers; the first one is named ``stem``.
      dtype: computation dtype (params stay float32; logits are float32).
    """

    num_outputs: int
    hidden: Sequence[int] = (256, 256)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        if not self.hidden:
            raise ValueError("MLP needs at least one hidden layer (the 'stem').")
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            name = "stem" if i == 0 else f"hidden{i}"
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=name)(x))
        return classify(x, self.num_outputs, return_features)


class SmallCNN(nn.Module):
    """A few ``conv3x3 + BN + ReLU`` layers, global average pooling, then ``head``.

    A cheap convolutional model for tiny images (8x8x1 digits, 28x28 MNIST): the first conv keeps
    the resolution, each later one halves it (stride 2), so 8x8 ends at 2x2 and 28x28 at 7x7.

    Attributes:
      num_outputs: K, or K + 1 with MOON's "unknown" output.
      widths: channels of the conv layers; the first one is named ``stem``.
      dtype: computation dtype (params stay float32; logits are float32).
    """

    num_outputs: int
    widths: Sequence[int] = (32, 64, 128)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        if not self.widths:
            raise ValueError("SmallCNN needs at least one conv layer (the 'stem').")
        for i, width in enumerate(self.widths):
            name = "stem" if i == 0 else f"conv{i}"
            bn_name = "stem_bn" if i == 0 else f"bn{i}"
            x = conv(width, 3, 1 if i == 0 else 2, dtype=self.dtype, name=name)(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=bn_name)(x))
        return classify(global_avg_pool(x), self.num_outputs, return_features)
