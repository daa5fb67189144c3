"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from moon_jax.models.common import batch_norm, classify, conv, global_avg_pool


class WideBasicBlock(nn.Module):
    """Pre-activation block ``BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3`` plus shortcut.

    When the width or stride changes, the shortcut is a 1x1 conv applied to the *activated*
    input (BN-ReLU is shared with the main path), as in the authors' reference code; otherwise
    it is the raw input.
    """

    features: int
    strides: int = 1
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        projection = self.strides != 1 or x.shape[-1] != self.features
        act = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        y = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(act)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
        if self.dropout_rate > 0:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        if projection:
            x = conv(self.features, 1, self.strides, dtype=self.dtype, name="proj_conv")(act)
        return x + y


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016) for 32x32 images; WRN-28-10 by default.

    A 3x3 ``stem`` conv with 16 channels, three groups of ``(depth - 4) / 6`` pre-activation
    blocks of widths ``16k, 32k, 64k`` (strides 1, 2, 2), a final BN-ReLU, global average pool
    and ``head``. WRN-28-10 has 36.5M params at K=10.

    Attributes:
      num_outputs: K, or K + 1 with MOON's "unknown" output.
      depth: total depth; ``depth - 4`` must be divisible by 6.
      widen_factor: k, the width multiplier.
      dropout_rate: dropout between the two convs of each block; with ``train=True`` and a
        positive rate, ``apply`` needs a ``'dropout'`` rng.
      dtype: computation dtype (params stay float32; logits are float32).
    """

    num_outputs: int
    depth: int = 28
    widen_factor: int = 10
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {self.depth}.")
        blocks_per_group = (self.depth - 4) // 6
        x = conv(16, 3, dtype=self.dtype, name="stem")(x)
        for group, width in enumerate((16, 32, 64)):
            for b in range(blocks_per_group):
                x = WideBasicBlock(
                    features=width * self.widen_factor,
                    strides=2 if group > 0 and b == 0 else 1,
                    dropout_rate=self.dropout_rate,
                    dtype=self.dtype,
                    name=f"group{group + 1}_block{b + 1}",
                )(x, train)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="final_bn")(x))
        return classify(global_avg_pool(x), self.num_outputs, return_features)
