"""Residual networks (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

One module, :class:`ResNet`, covers both families: basic blocks with the CIFAR stem
(:class:`ResNet18`) and bottleneck blocks with the ImageNet stem (:class:`ResNet50`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from moon_jax.models.common import batch_norm, classify, conv, global_avg_pool


class _Block(nn.Module):
    """Fields shared by the residual blocks: output width of the block's convs and stride."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32

    def shortcut(self, x, out_channels: int, train: bool):
        """Identity, or a 1x1 conv + BN projection when the stride or the width changes."""
        if self.strides == 1 and x.shape[-1] == out_channels:
            return x
        x = conv(out_channels, 1, self.strides, dtype=self.dtype, name="proj_conv")(x)
        return batch_norm(train, dtype=self.dtype, name="proj_bn")(x)


class BasicBlock(_Block):
    """Two 3x3 convs with BN (ResNet-18/34); output width ``features``."""

    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
        y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        y = batch_norm(train, dtype=self.dtype, name="bn2")(y)
        return nn.relu(y + self.shortcut(x, self.features, train))


class BottleneckBlock(_Block):
    """1x1 reduce, 3x3 (carrying the stride, torchvision "v1.5"), 1x1 expand by 4 (ResNet-50+)."""

    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = self.features * self.expansion
        y = conv(self.features, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
        y = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
        y = conv(out, 1, dtype=self.dtype, name="conv3")(y)
        y = batch_norm(train, dtype=self.dtype, name="bn3")(y)
        return nn.relu(y + self.shortcut(x, out, train))


class ResNet(nn.Module):
    """Generic ResNet (He et al. 2016): stem, four stages of residual blocks, pool, ``head``.

    Stage ``i`` has ``stage_sizes[i]`` blocks of base width ``width * 2**i``; its first block
    strides by 2 (except in stage 0) and projects the shortcut when the shape changes.

    Attributes:
      num_outputs: K, or K + 1 with MOON's "unknown" output.
      stage_sizes: number of blocks per stage.
      bottleneck: bottleneck blocks (expansion 4) instead of basic blocks.
      imagenet_stem: 7x7/2 conv + 3x3/2 max-pool for 224x224 inputs; otherwise the CIFAR stem,
        a 3x3/1 conv without pooling, which keeps 32x32 inputs at full resolution.
      width: base width (64 in the paper; smaller for quick runs and tests).
      dtype: computation dtype (params stay float32; logits are float32).
    """

    num_outputs: int
    width: int = 64
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    imagenet_stem: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        if self.imagenet_stem:
            x = conv(self.width, 7, 2, dtype=self.dtype, name="stem")(x)
        else:
            x = conv(self.width, 3, 1, dtype=self.dtype, name="stem")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="stem_bn")(x))
        if self.imagenet_stem:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        block_cls = BottleneckBlock if self.bottleneck else BasicBlock
        for stage, num_blocks in enumerate(self.stage_sizes):
            for b in range(num_blocks):
                x = block_cls(
                    features=self.width * 2**stage,
                    strides=2 if stage > 0 and b == 0 else 1,
                    dtype=self.dtype,
                    name=f"stage{stage + 1}_block{b + 1}",
                )(x, train)
        return classify(global_avg_pool(x), self.num_outputs, return_features)


class ResNet18(ResNet):
    """ResNet-18 for 32x32 images (CIFAR variant: 3x3 stem, no max-pool; 11.2M params at K=10).

    He et al. 2016, with the CIFAR adaptation used by the sparse-training literature
    (RigL, Evci et al. 2020; MOON's reference code).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    imagenet_stem: bool = False


class ResNet50(ResNet):
    """ResNet-50 for 224x224 ImageNet images (bottlenecks [3, 4, 6, 3]; 25.6M params at K=1000).

    He et al. 2016, with the stride on the 3x3 conv of each bottleneck as in torchvision
    ("ResNet v1.5"), the variant RigL (Evci et al. 2020) trains.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    bottleneck: bool = True
    imagenet_stem: bool = True
