"""CigL's random mask: weight-level DropConnect in the reference's update order (option, off by
default).

CigL (Lei et al., "Calibrating the Rigged Lottery: Making All Tickets Reliable", ICLR 2023) and
the MOON reference code (github StevenBoys/MOON and StevenBoys/CigL: their ``Masking.step``,
dpnum = 100, i.e. a 1% drop rate) keep a random drop mask over the masked weight tensors. Per optimizer iteration ``t``, after
``loss.backward()`` gave the gradient ``g_t`` of the weights the forward pass saw:

1. ``apply_w_raw``: remember the current value of every weight that was kept at ``t - 1``;
2. ``apply_dropout``: put the remembered value back into every weight dropped at ``t - 1``
   (discarding what it held), draw a new drop mask, and zero the newly dropped weights;
3. ``optimizer.step()``: the SGD step with ``g_t`` on those weights -- a newly dropped weight is
   zero now, so it becomes ``0 + update_t``, where ``update_t`` comes from a gradient computed
   while it was active (and its weight decay acts on the zero);
4. ``apply_mask``: the sparse mask.

So the forward pass of iteration ``t + 1`` sees each newly dropped weight at ``update_t`` (close to
zero, not zero), and step 2 of iteration ``t + 1`` restores it to its value before the drop; its
momentum keeps ``g_t``. The reference never restores the weights dropped at the last iteration
before evaluating or averaging, and neither does this module. Mask-update iterations leave the
drop mask alone (``truncate_weights`` does not touch it), as here: :func:`random_dropconnect` acts
only inside the optimizer's update. The reference's ``w_raw * 0.99`` / ``/ 0.99`` bookkeeping is
an exact round trip and is left out.

:func:`random_dropconnect` is that order as an Optax wrapper around the masked optimizer: its
state holds the drop mask of the previous iteration and the remembered values.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from moon_jax.sparse.updaters import apply_masks, map_masked

PyTree = Any


class DropConnectState(NamedTuple):
    """State of :func:`random_dropconnect`.

    Attributes:
      inner_state: the wrapped optimizer's state.
      keep: the keep-mask drawn at the previous iteration (True = kept), with the parameters'
        structure (always True at dense leaves). All True before the first iteration (the
        reference starts with ``dp = 1``).
      saved: the value each weight had when it was last kept (the reference's ``w_raw``).
      key: the base key of the drop masks; iteration ``step`` draws with ``fold_in(key, step)``.
    """

    inner_state: Any
    keep: PyTree
    saved: PyTree
    key: jax.Array


def dropconnect_keep_masks(rng: jax.Array, masks: PyTree, drop_rate: float) -> PyTree:
    """Bernoulli(1 - drop_rate) keep-masks with the shapes of the sparse ``masks`` (``None`` at
    dense leaves)."""
    leaves, treedef = jax.tree.flatten(masks, is_leaf=lambda x: x is None)
    keys = jax.random.split(rng, max(len(leaves), 1))
    keep = [None if m is None else jax.random.bernoulli(keys[i], 1.0 - drop_rate, m.shape) for i, m in enumerate(leaves)]
    return jax.tree.unflatten(treedef, keep)


def restore_dropped(params: PyTree, saved: PyTree, keep: PyTree, masks: PyTree) -> PyTree:
    """``params`` with every active weight dropped by ``keep`` set back to its ``saved`` value
    (the reference's ``apply_dropout`` first line); inactive weights keep their (zero) value."""
    return map_masked(
        lambda m, p, s, k: jnp.where(jnp.logical_and(m, jnp.logical_not(k)), s, p), masks, params, saved, keep
    )


def random_dropconnect(
    inner: optax.GradientTransformation, drop_rate: float, seed: int = 0
) -> optax.GradientTransformationExtraArgs:
    """Wraps the masked optimizer ``inner`` with CigL's random mask in the reference's order.

    ``update(grads, state, params, *, masks, step, **extra)``: ``grads`` were computed on
    ``params`` as they are (the previous iteration's drops in place). The weights dropped at the
    previous iteration are restored, a new keep-mask is drawn (``fold_in(key, step)``), the newly
    dropped weights are zeroed, and ``inner`` (which must keep inactive weights at zero, e.g.
    :func:`moon_jax.sparse.masked_updates`) updates those parameters with ``grads``. The
    returned updates take ``params`` to that result. ``masks`` and the remaining extra arguments
    are forwarded to ``inner``.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return DropConnectState(
            inner_state=inner.init(params),
            keep=jax.tree.map(lambda p: jnp.ones(p.shape, bool), params),
            saved=params,
            key=jax.random.PRNGKey(seed),
        )

    def update_fn(grads, state, params=None, *, masks=None, step=None, **extra_args):
        if params is None or masks is None or step is None:
            raise ValueError("random_dropconnect needs `params`, `masks=` and `step=` in update()")
        restored = restore_dropped(params, state.saved, state.keep, masks)
        keep = dropconnect_keep_masks(jax.random.fold_in(state.key, step), masks, drop_rate)
        dropped = apply_masks(restored, keep)
        keep_all = jax.tree.map(
            lambda k, p: jnp.ones(p.shape, bool) if k is None else k, keep, params, is_leaf=lambda x: x is None
        )
        inner_updates, inner_state = inner.update(grads, state.inner_state, dropped, masks=masks, step=step, **extra_args)
        new_params = optax.apply_updates(dropped, inner_updates)
        updates = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new_params, params)
        return updates, DropConnectState(inner_state=inner_state, keep=keep_all, saved=restored, key=state.key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
