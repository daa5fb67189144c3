"""The reference training recipe's learning-rate schedule and the K+1 head size.

Learning rate (the reference's base trainer, ``lr_tmp`` with ``cosine_annealing``):
``base_lr * m(t)`` where the multiplier ``m`` follows a cosine from ``lr_ini`` to ``lr_end`` over the
first ``(E - deduct)`` epochs, per iteration, and stays at ``lr_end`` for the last ``deduct``
epochs, during which the weights are averaged. README values: base 0.1, lr_ini 1.2, lr_end 0.08,
deduct 20 of 100, i.e. 0.12 -> 0.008, then 0.008.
"""
from __future__ import annotations

import jax.numpy as jnp


#: MOON's output heads: ``k_plus_1`` (K+1 outputs, the last is "unknown"), ``reference_k`` (the
#: reference's CIFAR-10 network: K outputs, so the loss treats the last real class's output as
#: "unknown"; its ``--classes 11`` flag never reaches the network), ``none`` (K outputs and plain
#: cross-entropy: the voting and CigL's random mask without MOON's head and loss).
HEADS = ("k_plus_1", "reference_k", "none")


def num_outputs(num_classes: int, use_moon: bool, head: str = "k_plus_1") -> int:
    """K+1 outputs for MOON's ``k_plus_1`` head (the last is "unknown"), K otherwise."""
    if head not in HEADS:
        raise ValueError(f"unknown MOON head {head!r}; allowed: {', '.join(HEADS)}")
    return num_classes + 1 if use_moon and head == "k_plus_1" else num_classes


def cosine_then_constant(base_lr: float, lr_ini: float, lr_end: float, steps_per_epoch: int, total_epochs: int, constant_epochs: int):
    """Learning rate at global iteration ``t``: cosine ``lr_ini -> lr_end`` then constant ``lr_end``.

    ``lr(t) = base * (lr_end + (lr_ini - lr_end) * (1 + cos(pi * t / T)) / 2)`` for
    ``t < T = (E - deduct) * steps_per_epoch``, and ``base * lr_end`` after.
    """
    cosine_steps = max((total_epochs - constant_epochs) * steps_per_epoch, 1)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        cos = lr_end + (lr_ini - lr_end) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, cosine_steps) / cosine_steps))
        return base_lr * jnp.where(t < cosine_steps, cos, lr_end)

    return schedule
