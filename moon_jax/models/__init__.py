"""Flax (linen) models for sparse training and MOON.

Every model follows the same conventions, which the sparse engine and the OOD scores rely on:

* the first layer is named ``stem`` and the classifier is ``nn.Dense(num_outputs, name='head')``;
* ``num_outputs`` is K, or K + 1 with MOON's "unknown" output;
* ``dtype`` is the computation dtype; params stay float32 and logits are always float32;
* ``model.apply(variables, x, train=False, return_features=False)`` returns logits ``(N,
  num_outputs)``, or ``(logits, features)`` with ``features`` the float32 input of ``head``;
* every BatchNorm uses :data:`BN_MOMENTUM` (and epsilon 1e-5).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from moon_jax.models.common import BN_EPSILON, BN_MOMENTUM
from moon_jax.models.resnet import BasicBlock, BottleneckBlock, ResNet, ResNet18, ResNet50
from moon_jax.models.small import MLP, SmallCNN
from moon_jax.models.vgg import VGG16
from moon_jax.models.wide_resnet import WideResNet

_REGISTRY = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "vgg16": VGG16,
    "wrn28_10": WideResNet,  # its defaults are depth 28, widen factor 10
    "resnet50": ResNet50,
}
MODEL_NAMES = tuple(_REGISTRY)


def create_model(name: str, num_outputs: int, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
    """Builds the model registered as ``name`` (one of :data:`MODEL_NAMES`).

    ``kwargs`` go to the module's constructor (e.g. ``hidden=(128,)`` for ``'mlp'``,
    ``dropout_rate=0.3`` for ``'wrn28_10'``), so configs can pick a model by name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; allowed names: {', '.join(MODEL_NAMES)}.")
    return _REGISTRY[name](num_outputs=num_outputs, dtype=dtype, **kwargs)


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
    """Initialises ``model`` for inputs of shape ``input_shape`` (one example, no batch axis).

    Returns the variables dict (``params``, and ``batch_stats`` when the model has BatchNorm).
    The init is jitted: un-jitted, initialising ResNet-50 or WRN-28-10 runs every op eagerly.
    """
    shape = (1,) + tuple(input_shape)
    init = jax.jit(lambda key: model.init(key, jnp.zeros(shape, jnp.float32), train=False))
    return dict(init(rng))


__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "BasicBlock",
    "BottleneckBlock",
    "MLP",
    "MODEL_NAMES",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "SmallCNN",
    "VGG16",
    "WideResNet",
    "create_model",
    "init_variables",
]
