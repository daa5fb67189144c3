"""Masks and the mask-update rules of every algorithm of :mod:`moon_jax.sparse.algorithms`
behind one interface.

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
* **static**: masks never change; **dense**: no masks at all;
* **pruning from dense** (``gmp``, ``saliency``, ``random_pruning``, ``global_*``, ``ste_*``):
  masks start all True; at every pruning iteration of a :class:`PruningSchedule` each layer keeps
  exactly its scheduled count of the best-scoring connections (global ones: exactly the
  scheduled total over all sparse layers), chosen among its active ones (so pruning only
  removes), or among all positions for ``ste_magnitude`` (straight-through: the dense weights
  keep training, so a pruned weight can come back).

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
import itertools
import math
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from moon_jax.sparse.algorithms import SCORES, Algorithm, get_algorithm
from moon_jax.sparse.distribution import SparsityPlan, plan_sparsity
from moon_jax.sparse.leaves import SparsityRule, leaf_names, sparsifiable_shapes
from moon_jax.sparse.schedule import (PruningSchedule, UpdateSchedule, drop_count, drop_fraction_at, is_pruning_step,
                                      is_update_step, pruning_event_index, pruning_sparsity_at)
from moon_jax.sparse.selection import (drop_and_grow, drop_and_grow_many, random_mask, top_k_mask,  # noqa: F401 (re-exported)
                                       top_k_masks, uniform_draws)
from moon_jax.sparse.structure import (UNSTRUCTURED, Structure, parse_structure, structure_plan,
                                       structured_drop_and_grow, top_structured_mask)

PyTree = Any


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


@jax.jit
def masked_density(params: PyTree, masks: PyTree) -> jax.Array:
    """Share of nonzero weights over the masked layers, measured on the values (a JAX scalar):
    the achieved density of the weights themselves, whatever the masks say."""
    nonzero = total = 0
    for mask, p in zip(jax.tree.leaves(masks, is_leaf=_is_none), jax.tree.leaves(params)):
        if mask is not None:
            nonzero = nonzero + jnp.count_nonzero(p)
            total += p.size
    return jnp.asarray(nonzero, jnp.float32) / max(total, 1)


@jax.jit
def mask_statistics(params: PyTree, masks: PyTree) -> dict:
    """What the reports read about the masks and the weights under them, as one program (each
    of these as its own small program would compile separately, for nothing):

    * ``layer_density``: per parameter leaf in flatten order, its mask's share of True
      (``None`` for a dense leaf);
    * ``density``: the share of True over all masks together;
    * ``nonzero_fraction``: :func:`masked_density` (lower than ``density`` right after a mask
      update, since grown weights start at 0);
    * ``nonzero_outside``: nonzero weights at positions the masks mark inactive (0 for weights
      kept on their masks; for a weight average, 0 unless a mask update happened after
      averaging began).
    """
    leaves = jax.tree.leaves(masks, is_leaf=_is_none)
    kept = [m for m in leaves if m is not None]
    outside = jnp.zeros((), jnp.int32)
    for mask, p in zip(leaves, jax.tree.leaves(params)):
        if mask is not None:
            outside = outside + jnp.count_nonzero(jnp.where(mask, 0, p))
    return {
        "layer_density": [None if m is None else jnp.mean(m) for m in leaves],
        "density": sum(jnp.sum(m, dtype=jnp.float32) for m in kept) / max(sum(m.size for m in kept), 1),
        "nonzero_fraction": masked_density(params, masks),
        "nonzero_outside": outside,
    }


_NEG_INF = -float("inf")  # below every score: never selected while k allows


def initial_masks(algorithm: Algorithm, keys: jax.Array, shapes: list[tuple[int, ...]], nonzeros: list[int],
                  structure: Structure = UNSTRUCTURED) -> list[jax.Array]:
    """The masks layers start from: for the algorithms that are sparse from the start, layer
    ``i`` random with exactly ``nonzeros[i]`` active positions in the pattern of ``structure``
    (:func:`~moon_jax.sparse.structure.structured_random_mask` with ``keys[i]``, its draws made in one program by
    :func:`uniform_draws`); all True for pruning from dense."""
    if not algorithm.sparse_at_init:
        return [jnp.ones(shape, bool) for shape in shapes]
    draws = uniform_draws(keys, shapes)
    if structure.is_unstructured:
        return top_k_masks(draws, nonzeros)
    return [top_structured_mask(d, count, structure) for d, count in zip(draws, nonzeros)]


def _placed(leaves: list, positions: list[int], values) -> list:
    """A copy of ``leaves`` with ``values`` put at ``positions`` (the masked leaves' indices):
    how the selections made for the masked layers go back into the full list of leaves."""
    placed = list(leaves)
    for i, value in zip(positions, values):
        placed[i] = value
    return placed


def select_global(scores: list[jax.Array], k) -> list[jax.Array]:
    """Masks of the ``k`` best scores over several layers together (one global threshold; an
    exact total, per-layer counts as the scores fall): :func:`top_k_mask` over the concatenation."""
    flat = jnp.concatenate([s.reshape(-1).astype(jnp.float32) for s in scores])
    chosen = top_k_mask(flat, k)
    bounds = list(itertools.accumulate(s.size for s in scores))[:-1]
    return [m.reshape(s.shape) for m, s in zip(jnp.split(chosen, bounds), scores)]


@dataclasses.dataclass(frozen=True, eq=False)
class SparseUpdater:
    """One interface for every algorithm of :data:`moon_jax.sparse.ALGORITHMS` (cf. jaxpruner's
    updaters).

    Build it with :func:`make_updater`. Its methods are pure and jit-compatible; the updater
    itself holds only static configuration (method, schedules, exact per-layer counts).

    Attributes:
      method: a :data:`moon_jax.sparse.METHODS` name.
      schedule: when and how much drop-and-grow methods change masks.
      plan: exact per-layer counts at the final sparsity (empty for ``dense``); for the global
        methods only its total is binding (per-layer counts follow the scores).
      rule: which leaves are sparsifiable.
      nonzeros: per parameter leaf in flatten order, the static count of a masked leaf at the
        final sparsity, or ``None`` for a dense leaf.
      names: parameter leaf names in flatten order.
      pruning: when pruning-from-dense methods prune (``None`` for the others).
      event_counts: for per-layer pruning, the exact count of every masked leaf (flatten order)
        at every pruning iteration of ``pruning``; for global pruning, the exact total.
      structure: the mask pattern every masked leaf keeps through init, drop and grow
        (:mod:`moon_jax.sparse.structure`; unstructured by default).
    """

    method: str
    schedule: UpdateSchedule
    plan: SparsityPlan
    rule: SparsityRule
    nonzeros: tuple[Optional[int], ...]
    names: tuple[str, ...]
    pruning: Optional[PruningSchedule] = None
    event_counts: tuple[tuple[int, ...], ...] = ()
    structure: Structure = UNSTRUCTURED

    @property
    def algorithm(self) -> Algorithm:
        """The registry entry of :attr:`method`."""
        return get_algorithm(self.method)

    # ----------------------------------------------------------------- construction
    def init(self, params: PyTree, rng: jax.Array) -> tuple[SparseState, PyTree]:
        """Initial masks (random with the plan's exact counts, or all True for pruning from
        dense); returns the state and masked params."""
        leaves, treedef = jax.tree.flatten(params)
        mask_rng, state_rng = jax.random.split(rng)
        keys = jax.random.split(mask_rng, max(len(leaves), 1))
        masked = [i for i, count in enumerate(self.nonzeros) if count is not None]
        chosen = initial_masks(self.algorithm, keys[jnp.asarray(masked, jnp.int32)] if masked else keys[:0],
                               [leaves[i].shape for i in masked], [self.nonzeros[i] for i in masked], self.structure)
        masks = jax.tree.unflatten(treedef, _placed([None] * len(leaves), masked, chosen))
        state = SparseState(masks=masks, step=jnp.zeros((), jnp.int32), rng=state_rng)
        return state, apply_masks(params, masks)

    # ----------------------------------------------------------------- updates
    @property
    def changes_masks(self) -> bool:
        """Whether this method ever updates masks (drop-and-grow with updates scheduled, or
        pruning)."""
        if self.algorithm.is_pruning:
            return self.pruning is not None
        return self.algorithm.changes_masks and self.schedule.end_step > 0

    @property
    def straight_through(self) -> bool:
        """Whether the optimizer trains dense weights (kept in
        :func:`moon_jax.sparse.straight_through_updates`' state) behind masked ones."""
        return self.algorithm.straight_through

    def is_update_step(self, step):
        """Whether iteration ``step`` performs a mask update for this method (a Python bool for
        a Python int, a traced bool inside ``jit``)."""
        if not self.changes_masks:
            return False
        if self.algorithm.is_pruning:
            return is_pruning_step(self.pruning, step)
        return is_update_step(self.schedule, step)

    def update(
        self, state: SparseState, params: PyTree, grads: PyTree, rng: Optional[jax.Array] = None
    ) -> tuple[SparseState, PyTree]:
        """The mask update at the current step; ``grads`` must be the dense gradient.

        ``params`` are the weights scores read: the stored (masked) ones, or for the
        straight-through methods the dense ones. Returns the new state and ``params`` masked by
        the new masks. ``rng`` defaults to ``fold_in(state.rng, state.step)``. The step counter
        is not advanced here (see :meth:`advance`). For ``dense``/``static`` this returns its
        inputs.
        """
        if not self.changes_masks:
            return state, params
        if rng is None:
            rng = jax.random.fold_in(state.rng, state.step)
        mask_leaves, treedef = jax.tree.flatten(state.masks, is_leaf=_is_none)
        param_leaves = treedef.flatten_up_to(params)
        grad_leaves = treedef.flatten_up_to(grads)
        keys = jax.random.split(rng, max(len(mask_leaves), 1))
        if self.algorithm.is_pruning:
            new_masks = self._prune(state.step, mask_leaves, param_leaves, grad_leaves, keys)
        else:
            new_masks = self._drop_and_grow(state.step, mask_leaves, param_leaves, grad_leaves, keys)
        new_masks = jax.tree.unflatten(treedef, new_masks)
        return state._replace(masks=new_masks), apply_masks(params, new_masks)

    def _drop_and_grow(self, step, masks, params, grads, keys) -> list:
        """RigL / SET: every masked layer replaces ``floor(f(t) * nnz_l)`` connections (or the
        ceiling, :func:`~moon_jax.sparse.schedule.drop_count`), keeping its structure."""
        fraction = drop_fraction_at(self.schedule, step)
        drop, grow = SCORES[self.algorithm.drop_score], SCORES[self.algorithm.grow_score]
        masked = [i for i, m in enumerate(masks) if m is not None]
        counts = [self.nonzeros[i] for i in masked]
        ks = [drop_count(self.schedule, fraction, count) for count in counts]
        drops = [drop(params[i], grads[i], keys[i]) for i in masked]
        grows = [grow(params[i], grads[i], keys[i]) for i in masked]
        if self.structure.is_unstructured:
            chosen = drop_and_grow_many([masks[i] for i in masked], drops, grows, ks, counts)
        else:
            chosen = [structured_drop_and_grow(masks[i], d, g, k, count, self.structure)
                      for i, d, g, k, count in zip(masked, drops, grows, ks, counts)]
        return _placed(masks, masked, chosen)

    def _prune(self, step, masks, params, grads, keys) -> list:
        """Pruning: keep the scheduled count of the best-scoring candidates (the active
        connections, or every position for ``ste_magnitude``), per layer or globally."""
        table = jnp.asarray(self.event_counts, jnp.int32)[pruning_event_index(self.pruning, step)]
        score = SCORES[self.algorithm.drop_score]
        masked = [i for i, m in enumerate(masks) if m is not None]
        scores = []
        for i in masked:
            s = score(params[i], grads[i], keys[i]).astype(jnp.float32)
            scores.append(s if self.algorithm.prunes_from_all else jnp.where(masks[i], s, _NEG_INF))
        if self.algorithm.scope == "global":
            kept = select_global(scores, table[0])
        else:
            kept = top_k_masks(scores, [table[j] for j in range(len(scores))])
        return _placed(masks, masked, kept)

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
    def density_phases(self, total_steps: int) -> list[tuple[int, dict[str, float]]]:
        """Host-side, for FLOPs accounting: ``(iterations, {layer: density})`` for each stretch
        of a ``total_steps`` run over which the pruning methods' masks are fixed (dense until the
        first pruning, then each pruning iteration's counts); ``[]`` for the other methods. For
        the global methods, whose per-layer counts depend on the scores, every masked layer is
        given the global density (the total is exact, its split an estimate)."""
        if not self.algorithm.is_pruning:
            return []
        masked = [(n, self.plan.sizes[n]) for n, c in zip(self.names, self.nonzeros) if c is not None]
        bounds = [t for t in self.pruning.event_steps() if t < total_steps]
        phases = [(bounds[0] if bounds else total_steps, {n: 1.0 for n, _ in masked})]
        for j, start in enumerate(bounds):
            end = bounds[j + 1] if j + 1 < len(bounds) else total_steps
            row = self.event_counts[j]
            if self.algorithm.scope == "global":
                density = row[0] / sum(size for _, size in masked)
                phases.append((end - start, {n: density for n, _ in masked}))
            else:
                phases.append((end - start, {n: c / size for (n, size), c in zip(masked, row)}))
        return phases

    def layer_density_report(self, masks: PyTree, params: PyTree) -> dict[str, float]:
        """Mask density of every sparsifiable layer (1.0 for those kept dense), host-side
        (through :func:`mask_statistics`, which the training reports compile anyway)."""
        densities = [None if d is None else float(d) for d in mask_statistics(params, masks)["layer_density"]]
        return {name: 1.0 if d is None else d for name, d in zip(self.names, densities) if name in self.plan.shapes}


def _leaf_counts(params: PyTree, plan: SparsityPlan) -> tuple[tuple[Optional[int], ...], tuple[str, ...]]:
    names = tuple(leaf_names(params))
    counts = tuple(
        plan.counts[n] if n in plan.counts and not plan.is_dense(n) else None for n in names
    )
    return counts, names


def pruning_event_counts(
    shapes: dict[str, tuple[int, ...]],
    masked: list[str],
    final_sparsity: float,
    distribution: str,
    pruning: PruningSchedule,
    erk_power_scale: float = 1.0,
    scope: str = "layer",
) -> tuple[tuple[int, ...], ...]:
    """Exact counts at every pruning iteration (host-side, before training).

    Per layer: the ``distribution``'s exact plan (:func:`plan_sparsity`) at Zhu & Gupta's
    sparsity of that iteration, for the ``masked`` layers; at the last iteration exactly the final
    plan's counts. Largest-remainder rounding can make a layer's count rise by one from one
    iteration to the next, which pruning cannot do; such a count is raised to the next
    iteration's (so counts never rise and the final ones are exact; an intermediate total can
    then exceed the plan's by a few weights). Global: ``round((1 - s_t) * N)`` over the masked
    layers, one number per iteration.
    """
    sizes = {n: math.prod(shapes[n]) for n in masked}
    sparsities = [pruning_sparsity_at(pruning, final_sparsity, t) for t in pruning.event_steps()]
    if scope == "global":
        total = sum(sizes.values())
        return tuple((int(round((1.0 - s) * total)),) for s in sparsities)
    rows = [[plan_sparsity(shapes, s, distribution, erk_power_scale).counts[n] for n in masked] for s in sparsities]
    for j in range(len(rows) - 2, -1, -1):
        rows[j] = [max(a, b) for a, b in zip(rows[j], rows[j + 1])]
    return tuple(tuple(r) for r in rows)


def make_updater(
    params: PyTree,
    method: str = "rigl",
    sparsity: float = 0.9,
    distribution: str = "erk",
    schedule: Optional[UpdateSchedule] = None,
    rule: SparsityRule = SparsityRule(),
    erk_power_scale: float = 1.0,
    pruning: Optional[PruningSchedule] = None,
    structure: Union[str, Structure] = "unstructured",
) -> SparseUpdater:
    """Builds the updater for a parameter tree (only shapes are read).

    ``dense`` ignores ``sparsity``; every other method needs ``0 <= sparsity < 1``. Pruning
    methods prune on ``pruning`` (default: one-shot at iteration 0); the global ones mask every
    sparsifiable layer (``distribution`` does not apply; the plan is uniform, its total exact).
    ``structure`` (a :class:`~moon_jax.sparse.structure.Structure` or its spelling, e.g.
    ``"nm_2,4"``) sets the masks' pattern for the algorithms that support it; it adjusts the
    plan's per-layer counts (:func:`structure_plan`).
    """
    algorithm = get_algorithm(method)
    structure = parse_structure(structure)
    if structure.kind not in algorithm.supports_structures:
        raise ValueError(f"sparse method {method!r} does not support the {structure} structure; it supports: "
                         f"{', '.join(algorithm.supports_structures)}")
    schedule = schedule or UpdateSchedule()
    shapes = sparsifiable_shapes(params, rule)
    global_scope = algorithm.scope == "global"
    plan = plan_sparsity(shapes, 0.0 if method == "dense" else sparsity, "uniform" if global_scope else distribution,
                         erk_power_scale)
    plan = structure_plan(plan, structure)
    counts, names = _leaf_counts(params, plan)
    if global_scope:  # every sparsifiable layer competes, even one the plan would keep dense
        counts = tuple(plan.counts[n] if n in plan.counts else None for n in names)
    if not algorithm.is_pruning:
        return SparseUpdater(method=method, schedule=schedule, plan=plan, rule=rule, nonzeros=counts, names=names,
                             structure=structure)
    pruning = pruning or PruningSchedule(update_every=schedule.update_every)
    if pruning.initial_sparsity > sparsity:
        raise ValueError(f"initial_sparsity {pruning.initial_sparsity} exceeds the final sparsity {sparsity}")
    masked = [n for n, c in zip(names, counts) if c is not None]
    event_counts = pruning_event_counts(shapes, masked, sparsity, distribution, pruning, erk_power_scale,
                                        algorithm.scope)
    return SparseUpdater(method=method, schedule=schedule, plan=plan, rule=rule, nonzeros=counts, names=names,
                         pruning=pruning, event_counts=event_counts)


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
