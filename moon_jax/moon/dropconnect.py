"""CigL's random mask: weight-level DropConnect restored after the step (option, off by default).

The reference's ``Masking.step`` (inherited from CigL, Lei et al. ICLR 2023) zeroes a random 1%
(``1 / dpnum``, dpnum = 100) of each masked weight tensor before every forward pass; the
optimizer step is taken with those weights at zero, and at the next step each dropped weight is
restored to its value before the drop (the update it received while dropped is discarded, the
momentum it accumulated is kept).

Functionally: draw a keep-mask per sparsifiable kernel, run forward, backward and the optimizer on
``params * keep``, then take the optimizer's result where ``keep`` and the old value elsewhere
(:func:`restore_dropped`). This is not part of MOON as published, so it is off by default.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from moon_jax.sparse.leaves import SparsityRule, is_sparsifiable

PyTree = Any


def dropconnect_keep_masks(rng: jax.Array, params: PyTree, drop_rate: float, rule: SparsityRule = SparsityRule()) -> PyTree:
    """Bernoulli(1 - drop_rate) keep-masks at sparsifiable kernels, ``None`` elsewhere."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(rng, max(len(flat), 1))
    masks = [
        jax.random.bernoulli(keys[i], 1.0 - drop_rate, leaf.shape) if is_sparsifiable(path, leaf, rule) else None
        for i, (path, leaf) in enumerate(flat)
    ]
    return jax.tree.unflatten(treedef, masks)


def apply_keep_masks(params: PyTree, keep: PyTree) -> PyTree:
    """``params`` with the dropped weights set to zero."""
    return jax.tree.map(
        lambda k, p: p if k is None else jnp.where(k, p, jnp.zeros_like(p)), keep, params, is_leaf=lambda x: x is None
    )


def restore_dropped(new_params: PyTree, old_params: PyTree, keep: PyTree) -> PyTree:
    """The optimizer's result where kept, the pre-drop value where dropped."""
    return jax.tree.map(
        lambda k, n, o: n if k is None else jnp.where(k, n, o), keep, new_params, old_params, is_leaf=lambda x: x is None
    )
