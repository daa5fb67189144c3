"""Masks and the mask-update rules: dense, static, SET and RigL behind one interface.

Masks are a pytree with the structure of the parameters: a boolean array at every sparse leaf and
``None`` at every dense leaf (biases, normalisation parameters, layers the distribution kept
dense). Parameters are stored with exact zeros at inactive positions, so the ordinary forward pass
of the unmasked network *is* the masked forward pass, and ``jax.grad`` with respect to the
parameters returns the dense gradient, including at inactive positions, which RigL needs for
growing.

Update rules are pure functions ``(state, params, grads, rng) -> (state, params)``:

* **RigL** (Evci et al. 2020, Alg. 1): per layer drop the ``k`` active weights of smallest
  magnitude, then grow the ``k`` positions with the largest dense-gradient magnitude among those
  inactive after the drop (just-dropped ones included);
* **SET** (Mocanu et al. 2018): drop by magnitude, grow ``k`` positions uniformly at random among
  the inactive ones (exactly ``k``; the reference draws a Bernoulli per position);
* **static**: masks never change; **dense**: no masks at all.

``k = floor(f(t) * nnz_l)`` with ``f`` the cosine-decayed drop fraction
(:mod:`moon_jax.sparse.schedule`); RigL's official code floors, the MOON reference takes the
ceiling (``drop_count_rounding = 'ceil'``). ``nnz_l`` is the layer's exact, static
count, so every update keeps it exactly. Selection is by rank (an exact byte-wise radix select,
:func:`top_k_mask`), so ``k`` can be a traced value and one compilation serves every update;
ties break towards the lower flat index.

A connection that is dropped and grown again in the same update keeps its weight and optimizer
state (RigL's official ``reinit_when_same=False``); the MOON reference zeroes its weight. All
other grown connections start at exactly zero (they were inactive, hence zero), and their
optimizer state is reset by :func:`moon_jax.sparse.optim.reset_optimizer_state`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from moon_jax.sparse.distribution import SparsityPlan, plan_sparsity
from moon_jax.sparse.leaves import SparsityRule, leaf_names, sparsifiable_shapes
from moon_jax.sparse.schedule import UpdateSchedule, drop_count, drop_fraction_at, is_update_step
from moon_jax.sparse.selection import drop_and_grow, random_mask, top_k_mask  # noqa: F401 (re-exported)
from moon_jax.sparse.structure import Structure, UNSTRUCTURED, parse_structure, structure_plan
from moon_jax.sparse.structure import structured_drop_and_grow, structured_random_mask

PyTree = Any
METHODS = ("dense", "static", "set", "rigl")


class SparseState(NamedTuple):
    """Everything the sparse engine carries between steps.

    Attributes:
      masks: bool arrays at sparse leaves, ``None`` at dense leaves.
      step: int32 count of training iterations taken (mask updates included).
      rng: PRNG key from which per-update keys are folded (SET growth).
    """

    masks: PyTree
    step: jax.Array
    rng: jax.Array


def _is_none(x) -> bool:
    return x is None


def map_masked(fn, masks: PyTree, *trees: PyTree, dense=None) -> PyTree:
    """Applies ``fn(mask, *leaves)`` at sparse leaves and ``dense(*leaves)`` at dense ones.

    With ``dense=None`` a dense leaf maps to the first tree's leaf unchanged.
    """

    def leaf(mask, *xs):
        if mask is None:
            return dense(*xs) if dense is not None else xs[0]
        return fn(mask, *xs)

    return jax.tree.map(leaf, masks, *trees, is_leaf=_is_none)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes the inactive weights of ``params`` (dense leaves pass through)."""
    return map_masked(lambda m, p: jnp.where(m, p, jnp.zeros_like(p)), masks, params)


def masked_density(params: PyTree, masks: PyTree) -> jax.Array:
    """Share of nonzero weights over the masked layers, measured on the values (a JAX scalar):
    the achieved density of the weights themselves, whatever the masks say."""
    nonzero = total = 0
    for mask, p in zip(jax.tree.leaves(masks, is_leaf=_is_none), jax.tree.leaves(params)):
        if mask is not None:
            nonzero = nonzero + jnp.count_nonzero(p)
            total += p.size
    return jnp.asarray(nonzero, jnp.float32) / max(total, 1)


@dataclasses.dataclass(frozen=True, eq=False)
class SparseUpdater:
    """One interface for dense, static, SET and RigL training (cf. jaxpruner's updaters).

    Build it with :func:`make_updater`. Its methods are pure and jit-compatible; the updater
    itself holds only static configuration (method, schedule, exact per-layer counts).

    Attributes:
      method: one of ``dense``, ``static``, ``set``, ``rigl``.
      schedule: when and how much the masks change.
      plan: exact per-layer counts (empty for ``dense``).
      rule: which leaves are sparsifiable.
      nonzeros: per parameter leaf in flatten order, the static count of a masked leaf, or
        ``None`` for a dense leaf.
      names: parameter leaf names in flatten order.
      structure: the mask pattern every masked leaf keeps through init, drop and grow
        (:mod:`moon_jax.sparse.structure`; unstructured by default).
    """

    method: str
    schedule: UpdateSchedule
    plan: SparsityPlan
    rule: SparsityRule
    nonzeros: tuple[Optional[int], ...]
    names: tuple[str, ...]
    structure: Structure = UNSTRUCTURED

    # ----------------------------------------------------------------- construction
    def init(self, params: PyTree, rng: jax.Array) -> tuple[SparseState, PyTree]:
        """Random masks with the plan's exact counts; returns the state and masked params."""
        leaves, treedef = jax.tree.flatten(params)
        mask_rng, state_rng = jax.random.split(rng)
        keys = jax.random.split(mask_rng, max(len(leaves), 1))
        masks = [
            None if count is None else structured_random_mask(keys[i], leaf.shape, count, self.structure)
            for i, (leaf, count) in enumerate(zip(leaves, self.nonzeros))
        ]
        masks = jax.tree.unflatten(treedef, masks)
        state = SparseState(masks=masks, step=jnp.zeros((), jnp.int32), rng=state_rng)
        return state, apply_masks(params, masks)

    # ----------------------------------------------------------------- updates
    @property
    def changes_masks(self) -> bool:
        """Whether this method ever updates masks (SET and RigL)."""
        return self.method in ("set", "rigl") and self.schedule.end_step > 0

    def is_update_step(self, step):
        """Whether iteration ``step`` performs a mask update for this method (a Python bool for
        a Python int, a traced bool inside ``jit``)."""
        if not self.changes_masks:
            return False
        return is_update_step(self.schedule, step)

    def update(
        self, state: SparseState, params: PyTree, grads: PyTree, rng: Optional[jax.Array] = None
    ) -> tuple[SparseState, PyTree]:
        """Drop-and-grow at the current step; ``grads`` must be the dense gradient.

        ``rng`` defaults to ``fold_in(state.rng, state.step)``. The step counter is not advanced
        here (see :meth:`advance`). For ``dense``/``static`` this returns its inputs.
        """
        if not self.changes_masks:
            return state, params
        if rng is None:
            rng = jax.random.fold_in(state.rng, state.step)
        fraction = drop_fraction_at(self.schedule, state.step)
        mask_leaves, treedef = jax.tree.flatten(state.masks, is_leaf=_is_none)
        param_leaves = treedef.flatten_up_to(params)
        grad_leaves = treedef.flatten_up_to(grads)
        keys = jax.random.split(rng, max(len(mask_leaves), 1))
        new_masks = []
        for i, (mask, param, grad, count) in enumerate(
            zip(mask_leaves, param_leaves, grad_leaves, self.nonzeros)
        ):
            if mask is None:
                new_masks.append(None)
                continue
            k = drop_count(self.schedule, fraction, count)
            if self.method == "rigl":
                grow_score = jnp.abs(grad)
            else:
                grow_score = jax.random.uniform(keys[i], mask.shape)
            new_masks.append(structured_drop_and_grow(mask, jnp.abs(param), grow_score, k, count, self.structure))
        new_masks = jax.tree.unflatten(treedef, new_masks)
        return state._replace(masks=new_masks), apply_masks(params, new_masks)

    def maybe_update(
        self, state: SparseState, params: PyTree, grads: PyTree, rng: Optional[jax.Array] = None
    ) -> tuple[SparseState, PyTree]:
        """:meth:`update` when the schedule says so, else the inputs (``lax.cond``)."""
        if not self.changes_masks:
            return state, params
        return jax.lax.cond(
            self.is_update_step(state.step),
            lambda s, p, g: self.update(s, p, g, rng),
            lambda s, p, g: (s, p),
            state,
            params,
            grads,
        )

    @staticmethod
    def advance(state: SparseState) -> SparseState:
        """Counts one training iteration."""
        return state._replace(step=state.step + 1)

    # ----------------------------------------------------------------- reporting
    def layer_density_report(self, masks: PyTree) -> dict[str, float]:
        """Mask density of every sparsifiable layer (1.0 for those kept dense), host-side."""
        leaves = jax.tree.leaves(masks, is_leaf=_is_none)
        return {
            name: 1.0 if mask is None else float(jnp.mean(mask))
            for name, mask in zip(self.names, leaves)
            if name in self.plan.shapes
        }


def _leaf_counts(params: PyTree, plan: SparsityPlan) -> tuple[tuple[Optional[int], ...], tuple[str, ...]]:
    names = tuple(leaf_names(params))
    counts = tuple(
        plan.counts[n] if n in plan.counts and not plan.is_dense(n) else None for n in names
    )
    return counts, names


def make_updater(
    params: PyTree,
    method: str = "rigl",
    sparsity: float = 0.9,
    distribution: str = "erk",
    schedule: Optional[UpdateSchedule] = None,
    rule: SparsityRule = SparsityRule(),
    erk_power_scale: float = 1.0,
    structure: Union[str, Structure] = "unstructured",
) -> SparseUpdater:
    """Builds the updater for a parameter tree (only shapes are read).

    ``dense`` ignores ``sparsity``; every other method needs ``0 <= sparsity < 1``. ``structure``
    (a :class:`~moon_jax.sparse.structure.Structure` or its spelling, e.g. ``"nm_2,4"``) sets the
    masks' pattern; it adjusts the plan's per-layer counts (:func:`structure_plan`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sparse method {method!r}; allowed: {', '.join(METHODS)}")
    schedule = schedule or UpdateSchedule()
    shapes = sparsifiable_shapes(params, rule)
    plan = plan_sparsity(shapes, 0.0 if method == "dense" else sparsity, distribution, erk_power_scale)
    structure = parse_structure(structure)
    plan = structure_plan(plan, structure)
    counts, names = _leaf_counts(params, plan)
    return SparseUpdater(
        method=method, schedule=schedule, plan=plan, rule=rule, nonzeros=counts, names=names, structure=structure
    )


def masks_equal(a: PyTree, b: PyTree) -> bool:
    """Host-side: same structure and identical boolean masks."""
    la, ta = jax.tree.flatten(a, is_leaf=_is_none)
    lb, tb = jax.tree.flatten(b, is_leaf=_is_none)
    if ta != tb:
        return False
    return all(
        (x is None and y is None) or (x is not None and y is not None and bool(jnp.array_equal(x, y)))
        for x, y in zip(la, lb)
    )
