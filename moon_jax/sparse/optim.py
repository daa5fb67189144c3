"""Masked optimizer updates as an Optax GradientTransformation.

:func:`masked_updates` wraps any inner optimizer (SGD with Nesterov momentum, AdamW, ...). Its ``update``
takes the current masks as an extra keyword argument (``optax.chain`` forwards it) and

1. zeroes the gradient at inactive positions before the inner optimizer sees it, so momentum and
   Adam moments of inactive connections stay exactly zero;
2. sets the update at inactive positions to ``-params``, so that ``params + updates`` is exactly
   zero there after every step, whatever the inner optimizer (weight decay included) computed.

After a mask update, :func:`reset_optimizer_state` zeroes the optimizer state (momentum, Adam
moments) of every connection that was grown or dropped, as RigL prescribes; the reference code
does the same by multiplying the momentum buffer with the new mask.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from moon_jax.sparse.updaters import apply_masks, map_masked

PyTree = Any


class MaskedUpdatesState(NamedTuple):
    """State of :func:`masked_updates`: the inner optimizer's state."""

    inner_state: Any


def _to_zero_where_inactive(updates: PyTree, params: PyTree, masks: PyTree) -> PyTree:
    """``updates`` where active, ``-params`` where inactive: ``params + updates`` is then exactly
    zero at every inactive position."""
    return map_masked(lambda m, u, p: jnp.where(m, u, -p).astype(u.dtype), masks, updates, params)


def masked_updates(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that inactive weights get no gradient and stay exactly zero.

    ``update(updates, state, params, *, masks, **extra)``: ``masks`` is the mask pytree of
    :class:`moon_jax.sparse.updaters.SparseState` (``None`` at dense leaves); ``params`` is
    required. Extra keyword arguments are forwarded to ``inner``.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return MaskedUpdatesState(inner_state=inner.init(params))

    def update_fn(updates, state, params=None, *, masks=None, **extra_args):
        if params is None:
            raise ValueError("moon_jax.sparse.masked_updates needs `params` in update()")
        if masks is None:
            raise ValueError("moon_jax.sparse.masked_updates needs `masks=` in update()")
        grads = map_masked(lambda m, g: jnp.where(m, g, jnp.zeros_like(g)), masks, updates)
        new_updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        new_updates = _to_zero_where_inactive(new_updates, params, masks)
        return new_updates, MaskedUpdatesState(inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class StraightThroughState(NamedTuple):
    """State of :func:`straight_through_updates`.

    Attributes:
      inner_state: the inner optimizer's state (of the dense weights).
      dense: the dense weights the optimizer trains; the model's parameters are these, masked.
    """

    inner_state: Any
    dense: PyTree


def straight_through_updates(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` for straight-through training (Bengio et al. 2013; jaxpruner's ``ste_*``).

    The state keeps the dense weights; ``inner`` updates them with the gradient at *every*
    position: the gradient of the loss with respect to the masked weight is used as the gradient
    of its dense weight, so pruned weights keep training and can return at the next pruning
    iteration. The returned updates take the (masked) ``params`` to the new dense weights masked
    (up to rounding: :func:`straight_through_params` gives them exactly):
    ``u`` where active (``params`` equal the dense weights there, so ``params + u`` is exactly
    the dense update), ``-params`` where inactive (exactly zero). Same signature as
    :func:`masked_updates`: ``update(updates, state, params, *, masks, **extra)``.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return StraightThroughState(inner_state=inner.init(params), dense=params)

    def update_fn(updates, state, params=None, *, masks=None, **extra_args):
        if params is None or masks is None:
            raise ValueError("moon_jax.sparse.straight_through_updates needs `params` and `masks=` in update()")
        new_updates, inner_state = inner.update(updates, state.inner_state, state.dense, **extra_args)
        dense = optax.apply_updates(state.dense, new_updates)
        new_updates = _to_zero_where_inactive(new_updates, params, masks)
        return new_updates, StraightThroughState(inner_state=inner_state, dense=dense)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def straight_through_weights(opt_state: PyTree) -> PyTree:
    """The dense weights inside an optimizer state built with :func:`straight_through_updates`
    (ValueError when there are none)."""
    nodes = [n for n in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, StraightThroughState))
             if isinstance(n, StraightThroughState)]
    if len(nodes) != 1:
        raise ValueError(f"expected one straight_through_updates state in the optimizer state, found {len(nodes)}")
    return nodes[0].dense


def straight_through_params(opt_state: PyTree, masks: PyTree) -> PyTree:
    """The parameters of a straight-through model: its dense weights (in ``opt_state``) masked.

    Exactly what ``params + updates`` of :func:`straight_through_updates` means; use it instead
    of applying the updates, which XLA may round differently from the dense weights' own update
    (a fused multiply-add in one place and not the other: an ulp apart, drifting)."""
    return apply_masks(straight_through_weights(opt_state), masks)


def _param_shaped(node: Any, treedef, shapes) -> bool:
    try:
        leaves, node_def = jax.tree.flatten(node)
    except Exception:  # pragma: no cover - unflattenable nodes are not param trees
        return False
    if node_def != treedef:
        return False
    return all(getattr(l, "shape", None) == s for l, s in zip(leaves, shapes))


def reset_optimizer_state(opt_state: PyTree, params: PyTree, old_masks: PyTree, new_masks: PyTree) -> PyTree:
    """Zeroes optimizer state at connections grown or dropped between two masks.

    Walks ``opt_state`` for :class:`MaskedUpdatesState` nodes and, inside them, for every sub-tree with
    the parameters' structure and shapes (momentum traces, Adam ``mu``/``nu``, ...); those are
    kept only where the connection is active in both masks. Scalars such as step counts are
    left alone.
    """
    treedef = jax.tree.structure(params)
    shapes = [p.shape for p in jax.tree.leaves(params)]
    keep = map_masked(jnp.logical_and, old_masks, new_masks)

    def reset_param_tree(node):
        if not _param_shaped(node, treedef, shapes):
            return node
        return map_masked(lambda k, s: jnp.where(k, s, jnp.zeros_like(s)), keep, node)

    def reset_masked(node):
        if not isinstance(node, MaskedUpdatesState):
            return node
        inner = jax.tree.map(
            reset_param_tree,
            node.inner_state,
            is_leaf=lambda x: _param_shaped(x, treedef, shapes),
        )
        return MaskedUpdatesState(inner_state=inner)

    return jax.tree.map(reset_masked, opt_state, is_leaf=lambda x: isinstance(x, MaskedUpdatesState))


def scale_by_schedule_at_step(schedule) -> optax.GradientTransformationExtraArgs:
    """Multiplies updates by ``-schedule(step)`` with the *global* iteration passed as ``step=``.

    Optax's own schedules count the optimizer's updates; the reference steps its learning-rate
    scheduler on every iteration, mask-update iterations (which skip the optimizer) included.
    Passing the global iteration keeps the two in step.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, step=None, **extra_args):
        del params, extra_args
        if step is None:
            raise ValueError("scale_by_schedule_at_step needs `step=` in update()")
        lr = schedule(step)
        return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sgd_nesterov(schedule, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = True):
    """PyTorch-style SGD: ``g + wd * w``, Nesterov momentum, learning rate at the global step.

    Matches ``torch.optim.SGD(momentum=0.9, nesterov=True, weight_decay=5e-4)`` (dampening 0),
    the reference optimizer.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=nesterov),
        scale_by_schedule_at_step(schedule),
    )


def adamw(schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4):
    """AdamW (decoupled weight decay) with the learning rate at the global step."""
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay),
        scale_by_schedule_at_step(schedule),
    )
