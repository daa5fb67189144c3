"""Sparse training around any Optax optimizer in two calls: ``init`` and ``apply_gradients``.

What a user's loop would otherwise wire by hand (cf. jaxpruner's ``wrap_optax``): the masks and
their update schedule (:class:`moon_jax.sparse.SparseUpdater`), the masked optimizer
(:func:`moon_jax.sparse.masked_updates`), the choice between an optimizer iteration and a
mask-update iteration, and the optimizer-state reset of changed connections
(:func:`moon_jax.sparse.reset_optimizer_state`). One state object carries the masks, the
iteration count and the optimizer state.

A mask-update iteration (RigL / SET, every ``update_every`` iterations until ``end_step``; a
pruning iteration of the pruning methods, from ``start_step`` to ``end_step`` inclusive)
replaces the optimizer step, as in RigL (Evci et al. 2020, Alg. 1) and the MOON reference code:
the dense gradient decides which connections grow, and no optimizer update is applied in that
iteration. The branch is a ``jax.lax.cond``, which executes only the taken branch, so an ordinary
iteration costs the optimizer update plus one ``where`` per masked layer, like the trainer's own
step; ``dense`` and ``static`` have no branch at all.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import optax

from moon_jax.sparse.leaves import SparsityRule
from moon_jax.sparse.algorithms import get_algorithm
from moon_jax.sparse.optim import (masked_updates, reset_optimizer_state, straight_through_params,
                                   straight_through_updates, straight_through_weights)
from moon_jax.sparse.schedule import PruningSchedule, UpdateSchedule
from moon_jax.sparse.structure import Structure
from moon_jax.sparse.updaters import SparseState, SparseUpdater, make_updater

PyTree = Any


class SparseOptimizerState(NamedTuple):
    """State of :class:`SparseOptimizer`.

    Attributes:
      sparse: the masks, iteration count and PRNG key (:class:`SparseState`).
      opt_state: the state of the masked optimizer chain.
    """

    sparse: SparseState
    opt_state: Any


def update_masks(updater: SparseUpdater, sparse_state: SparseState, params: PyTree, opt_state: PyTree, grads: PyTree,
                 rng: Optional[jax.Array] = None) -> tuple[SparseState, PyTree, PyTree]:
    """A mask-update iteration's work, shared by :class:`SparseOptimizer` and the trainer's
    mask-update step: the updater's new masks and masked parameters, and the optimizer state.

    Scores read the stored parameters, and the optimizer state of grown and dropped connections
    is reset; the straight-through methods score their dense weights (kept in the optimizer
    state, which keeps training them unchanged)."""
    if updater.straight_through:
        sparse_state, params = updater.update(sparse_state, straight_through_weights(opt_state), grads, rng)
        return sparse_state, params, opt_state
    new_state, new_params = updater.update(sparse_state, params, grads, rng)
    return new_state, new_params, reset_optimizer_state(opt_state, new_params, sparse_state.masks, new_state.masks)


@dataclasses.dataclass(frozen=True, eq=False)
class SparseOptimizer:
    """A mask updater and a masked Optax optimizer driven together. Build it with
    :func:`sparse_optimizer`; its methods are pure and jit-compatible.

    Attributes:
      updater: the masks' method, plan and schedule.
      tx: ``optax.chain(masked_updates(optimizer), *then)``, or
        ``straight_through_updates(optimizer)`` first for the straight-through methods.
    """

    updater: SparseUpdater
    tx: optax.GradientTransformationExtraArgs

    def init(self, params: PyTree, rng: jax.Array) -> tuple[PyTree, SparseOptimizerState]:
        """Initial masks (random with the plan's exact per-layer counts, all True for pruning
        from dense); returns the masked parameters and the state."""
        sparse_state, params = self.updater.init(params, rng)
        return params, SparseOptimizerState(sparse=sparse_state, opt_state=self.tx.init(params))

    @staticmethod
    def step(state: SparseOptimizerState) -> jax.Array:
        """The number of iterations taken (mask updates included)."""
        return state.sparse.step

    @staticmethod
    def masks(state: SparseOptimizerState) -> PyTree:
        """The current masks (``None`` at dense leaves)."""
        return state.sparse.masks

    def dense_params(self, state: SparseOptimizerState) -> PyTree:
        """The dense weights the straight-through methods train (the parameters are these
        masked); ValueError for the other methods."""
        if not self.updater.straight_through:
            raise ValueError(f"method {self.updater.method!r} keeps no dense weights (not straight-through)")
        return straight_through_weights(state.opt_state)

    def apply_gradients(self, grads: PyTree, state: SparseOptimizerState, params: PyTree,
                        **extra_args) -> tuple[PyTree, SparseOptimizerState]:
        """One iteration: the masked optimizer update, or a mask update when the schedule says so.

        Args:
          grads: the dense gradient of the loss at ``params``.
          state: the state before this iteration.
          params: the current (masked) parameters.
          **extra_args: forwarded to the optimizer chain's ``update`` (e.g. ``take_snapshot=``
            for :func:`moon_jax.moon.weight_averaging`).

        Returns:
          ``(params, state)`` after the iteration; inactive weights are exactly zero.
        """

        def optimizer_iteration(operands):
            grads, state, params = operands
            updates, opt_state = self.tx.update(grads, state.opt_state, params, masks=state.sparse.masks,
                                                **extra_args)
            if self.updater.straight_through:  # exactly the masked dense weights
                return straight_through_params(opt_state, state.sparse.masks), state._replace(opt_state=opt_state)
            return optax.apply_updates(params, updates), state._replace(opt_state=opt_state)

        def mask_iteration(operands):
            grads, state, params = operands
            sparse_state, new_params, opt_state = update_masks(self.updater, state.sparse, params, state.opt_state,
                                                               grads)
            return new_params, SparseOptimizerState(sparse=sparse_state, opt_state=opt_state)

        operands = (grads, state, params)
        if self.updater.changes_masks:
            params, state = jax.lax.cond(self.updater.is_update_step(state.sparse.step), mask_iteration,
                                         optimizer_iteration, operands)
        else:
            params, state = optimizer_iteration(operands)
        return params, state._replace(sparse=self.updater.advance(state.sparse))


def sparse_optimizer(
    params: PyTree,
    optimizer: optax.GradientTransformation,
    method: str = "rigl",
    sparsity: float = 0.9,
    distribution: str = "erk",
    update_every: int = 100,
    end_step: int = 0,
    drop_fraction: float = 0.3,
    rule: SparsityRule = SparsityRule(),
    then: Sequence[optax.GradientTransformation] = (),
    structure: Union[str, Structure] = "unstructured",
    start_step: int = 0,
    initial_sparsity: float = 0.0,
) -> SparseOptimizer:
    """Sparse training with ``optimizer``: masks, their schedule and the masked update in one.

    Args:
      params: the parameter tree (only shapes are read).
      optimizer: any Optax optimizer (``optax.sgd``, ``optax.adamw``, a chain, ...).
      method, sparsity, distribution, rule, structure: see :func:`moon_jax.sparse.make_updater`;
        ``method`` is any :data:`moon_jax.sparse.METHODS` name, ``structure`` (e.g. ``"nm_2,4"``)
        the masks' pattern (:mod:`moon_jax.sparse.structure`).
      update_every, end_step, drop_fraction: the mask-update schedule of drop-and-grow methods
        (:class:`moon_jax.sparse.UpdateSchedule`; ``end_step`` 0 means masks never change).
      then: transformations applied after the masking, seeing the masked update (e.g.
        :func:`moon_jax.moon.weight_averaging`). With the straight-through methods the new
        parameters are the masked dense weights, while ``then`` sees ``params + update``: the
        same sum computed at another place in the compiled program, which can differ in the last
        bit of an active weight (measured: 1.2e-7 on weights of order 1); inactive weights are
        exactly zero in both.
      start_step, initial_sparsity: with ``end_step`` and ``update_every``, the pruning schedule
        of the pruning methods (:class:`moon_jax.sparse.PruningSchedule`: prune at
        ``start_step``, every ``update_every`` iterations after, and at ``end_step``, where the
        target ``sparsity`` is reached exactly; ``start_step == end_step`` prunes once).
    """
    algorithm = get_algorithm(method)
    schedule = UpdateSchedule(update_every=update_every, end_step=0 if algorithm.is_pruning else end_step,
                              drop_fraction=drop_fraction)
    pruning = PruningSchedule(start_step=start_step, end_step=end_step, update_every=update_every,
                              initial_sparsity=initial_sparsity) if algorithm.is_pruning else None
    updater = make_updater(params, method=method, sparsity=sparsity, distribution=distribution,
                           schedule=schedule, rule=rule, pruning=pruning, structure=structure)
    first = straight_through_updates(optimizer) if algorithm.straight_through else masked_updates(optimizer)
    return SparseOptimizer(updater=updater, tx=optax.chain(first, *then))
