"""FLOPs accounting for sparse networks, as in the RigL paper (Evci et al. 2020, App. H).

Only convolutions and dense layers are counted (BatchNorm, activations, pooling and the loss are
a few percent at most and equal for every method). One multiply-accumulate is 2 FLOPs. A layer
with density d costs d times its dense FLOPs (an idealised sparse kernel).

Training cost per iteration (RigL App. H): the backward pass costs twice the forward pass
(gradients with respect to activations and to weights), so a sparse iteration costs
``3 * f_S``; a RigL mask-update iteration needs the *dense* gradient with respect to the weights,
so it costs ``2 * f_S + f_D``; dense training costs ``3 * f_D``. SET's random growth and the
static method cost ``3 * f_S`` throughout. Pruning from dense costs ``3 * f_S(t)`` with the
density in force at iteration ``t`` (dense before the first pruning; magnitude and random
pruning need no dense gradient, saliency only the active weights'); the straight-through methods
train every dense weight, so their weight gradient is dense: ``2 * f_S(t) + f_D``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moon_jax.sparse.schedule import UpdateSchedule, update_steps


@dataclasses.dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs of one conv/dense layer for one example."""

    name: str
    kind: str
    dense_flops: int
    density: float

    @property
    def sparse_flops(self) -> float:
        return self.dense_flops * self.density


def layer_flops(
    apply_fn: Callable[..., Any],
    variables: Any,
    input_shape: tuple[int, ...],
    densities: Optional[Mapping[str, float]] = None,
) -> list[LayerFlops]:
    """Per-layer forward FLOPs for one example of shape ``input_shape`` (no batch dim).

    ``apply_fn(variables, x)`` runs the model; shapes are traced with ``jax.eval_shape``, so
    nothing is computed. ``densities`` maps a kernel's name (``'block/conv1/kernel'``) to its
    density; missing names count as dense.
    """
    densities = densities or {}
    records: list[LayerFlops] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, (nn.Conv, nn.Dense)):
            return out
        name = "/".join(module.scope.path) + "/kernel"
        in_features = args[0].shape[-1]
        out_positions = math.prod(out.shape[1:-1])  # spatial positions (or tokens) per example
        if isinstance(module, nn.Conv):
            window = math.prod(module.kernel_size)
            macs = out_positions * window * (in_features // module.feature_group_count) * module.features
            kind = "conv"
        else:
            macs = out_positions * in_features * module.features
            kind = "dense"
        records.append(LayerFlops(name, kind, 2 * macs, float(densities.get(name, 1.0))))
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(apply_fn, variables, jnp.zeros((1,) + tuple(input_shape), jnp.float32))
    return records


@dataclasses.dataclass(frozen=True)
class FlopsReport:
    """Forward and training FLOPs of a run, per example and relative to dense."""

    dense_forward: float
    sparse_forward: float
    training_relative_to_dense: float
    method: str

    def describe(self) -> str:
        """The one line a run prints at its start: forward FLOPs per example, dense and sparse,
        and the training FLOPs against dense."""
        return (
            f"forward FLOPs/example: dense {self.dense_forward / 1e6:.2f} M, "
            f"sparse {self.sparse_forward / 1e6:.2f} M ({self.sparse_forward / self.dense_forward:.3f}x); "
            f"training FLOPs ({self.method}) {self.training_relative_to_dense:.3f}x dense"
        )


def training_flops_relative(
    method: str,
    sparse_forward: float,
    dense_forward: float,
    total_steps: int,
    schedule: Optional[UpdateSchedule] = None,
) -> float:
    """Training FLOPs of a run relative to dense training of the same length (RigL App. H)."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if method == "dense":
        return 1.0
    n_updates = len(update_steps(schedule, total_steps)) if (method == "rigl" and schedule) else 0
    total = 3.0 * sparse_forward * (total_steps - n_updates) + n_updates * (2.0 * sparse_forward + dense_forward)
    return total / (3.0 * dense_forward * total_steps)


def flops_report(
    apply_fn: Callable[..., Any],
    variables: Any,
    input_shape: tuple[int, ...],
    densities: Mapping[str, float],
    method: str,
    total_steps: int,
    schedule: Optional[UpdateSchedule] = None,
    phases: Sequence[tuple[int, Mapping[str, float]]] = (),
    straight_through: bool = False,
) -> FlopsReport:
    """Dense and sparse forward FLOPs per example and the run's training FLOPs vs dense; with
    ``phases`` (pruning from dense) the sparse forward is the final phase's and training FLOPs
    follow the phases (:func:`phased_training_flops_relative`)."""
    layers = layer_flops(apply_fn, variables, input_shape, densities)
    dense = float(sum(l.dense_flops for l in layers))
    if phases:  # pruning from dense: the density changes along the run
        relative = phased_training_flops_relative(layers, phases, straight_through)
        sparse = float(sum(l.dense_flops * phases[-1][1].get(l.name, 1.0) for l in layers))
        return FlopsReport(dense, sparse, relative, method)
    sparse = float(sum(l.sparse_flops for l in layers))
    relative = training_flops_relative(method, sparse, dense, total_steps, schedule)
    return FlopsReport(dense, sparse, relative, method)


def phased_training_flops_relative(
    layers: Sequence[LayerFlops], phases: Sequence[tuple[int, Mapping[str, float]]], straight_through: bool = False
) -> float:
    """Training FLOPs relative to dense over ``phases`` of ``(iterations, {layer: density})``
    (:meth:`moon_jax.sparse.SparseUpdater.density_phases`): ``3 * f_S`` per iteration at the
    phase's densities, ``2 * f_S + f_D`` when ``straight_through``."""
    dense = float(sum(l.dense_flops for l in layers))
    total = steps = 0.0
    for n, densities in phases:
        sparse = float(sum(l.dense_flops * densities.get(l.name, 1.0) for l in layers))
        total += n * ((2.0 * sparse + dense) if straight_through else 3.0 * sparse)
        steps += n
    return total / (3.0 * dense * steps) if steps else 1.0
