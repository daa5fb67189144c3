"""Sparse training around any Optax optimizer in two calls: ``init`` and ``apply_gradients``.

What a user's loop would otherwise wire by hand (cf. jaxpruner's ``wrap_optax``): the masks and
their update schedule (:class:`moon_jax.sparse.SparseUpdater`), the masked optimizer
(:func:`moon_jax.sparse.masked_updates`), the choice between an optimizer iteration and a
mask-update iteration, and the optimizer-state reset of changed connections
(:func:`moon_jax.sparse.reset_optimizer_state`). One state object carries the masks, the
iteration count and the optimizer state.

A mask-update iteration (RigL / SET, every ``update_every`` iterations until ``end_step``)
replaces the optimizer step, as in RigL (Evci et al. 2020, Alg. 1) and the MOON reference code:
the dense gradient decides which connections grow, and no optimizer update is applied in that
iteration. The branch is a ``jax.lax.cond``, which executes only the taken branch, so an ordinary
iteration costs the optimizer update plus one ``where`` per masked layer, like the trainer's own
step; ``dense`` and ``static`` have no branch at all.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence, Union

import jax
import optax

from moon_jax.sparse.leaves import SparsityRule
from moon_jax.sparse.optim import masked_updates, reset_optimizer_state
from moon_jax.sparse.schedule import UpdateSchedule
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


@dataclasses.dataclass(frozen=True, eq=False)
class SparseOptimizer:
    """A mask updater and a masked Optax optimizer driven together. Build it with
    :func:`sparse_optimizer`; its methods are pure and jit-compatible.

    Attributes:
      updater: the masks' method, plan and schedule.
      tx: ``optax.chain(masked_updates(optimizer), *then)``.
    """

    updater: SparseUpdater
    tx: optax.GradientTransformationExtraArgs

    def init(self, params: PyTree, rng: jax.Array) -> tuple[PyTree, SparseOptimizerState]:
        """Random masks with the plan's exact per-layer counts; returns the masked parameters
        and the state."""
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
            return optax.apply_updates(params, updates), state._replace(opt_state=opt_state)

        def mask_iteration(operands):
            grads, state, params = operands
            sparse_state, new_params = self.updater.update(state.sparse, params, grads)
            opt_state = reset_optimizer_state(state.opt_state, new_params, state.sparse.masks, sparse_state.masks)
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
) -> SparseOptimizer:
    """Sparse training with ``optimizer``: masks, their schedule and the masked update in one.

    Args:
      params: the parameter tree (only shapes are read).
      optimizer: any Optax optimizer (``optax.sgd``, ``optax.adamw``, a chain, ...).
      method, sparsity, distribution, rule, structure: see :func:`moon_jax.sparse.make_updater`
        (``structure``, e.g. ``"nm_2,4"``, is the masks' pattern, :mod:`moon_jax.sparse.structure`).
      update_every, end_step, drop_fraction: the mask-update schedule
        (:class:`moon_jax.sparse.UpdateSchedule`; ``end_step`` 0 means masks never change).
      then: transformations applied after the masking, seeing the masked update (e.g.
        :func:`moon_jax.moon.weight_averaging`).
    """
    schedule = UpdateSchedule(update_every=update_every, end_step=end_step, drop_fraction=drop_fraction)
    updater = make_updater(params, method=method, sparsity=sparsity, distribution=distribution,
                           schedule=schedule, rule=rule, structure=structure)
    tx = optax.chain(masked_updates(optimizer), *then)
    return SparseOptimizer(updater=updater, tx=tx)
