"""Layer helpers shared by every model, so that all of them follow the same conventions.

The conventions matter outside this package: the sparse engine finds the first layer by the name
``stem`` and the classifier by the name ``head``; BatchNorm statistics are recomputed elsewhere
with :data:`BN_MOMENTUM`; OOD scores read ``features`` (the input of ``head``) in float32.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Flax's ``momentum`` is the weight of the old running average (PyTorch's momentum 0.1).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He et al. (2015) normal init on fan_out, as torchvision and the reference code use for convs.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel: int,
    strides: int = 1,
    *,
    dtype: Any,
    name: str | None = None,
    use_bias: bool = False,
) -> nn.Conv:
    """A square conv with PyTorch-style symmetric padding ``kernel // 2``.

    Explicit padding (instead of ``'SAME'``) keeps stride-2 layers aligned with the PyTorch
    reference: ``'SAME'`` pads (0, 1) on even inputs where PyTorch pads (1, 1).
    """
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=conv_init,
        dtype=dtype,
        name=name,
    )


def batch_norm(train: bool, *, dtype: Any, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with the package-wide momentum and epsilon (scale 1, bias 0 at init)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        name=name,
    )


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over the spatial axes of an NHWC tensor."""
    return jnp.mean(x, axis=(1, 2))


def classify(features: jnp.ndarray, num_outputs: int, return_features: bool):
    """Applies the ``head`` classifier in float32; call it from inside a compact ``__call__``.

    Features are cast to float32 first, so the head (params float32) computes and returns float32
    logits whatever the model's computation dtype.
    """
    features = features.astype(jnp.float32)
    logits = nn.Dense(num_outputs, name="head")(features)
    return (logits, features) if return_features else logits
