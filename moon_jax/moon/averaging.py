"""MOON's "voting": epoch-wise weight averaging, and BatchNorm statistics for the average.

The reference code (github StevenBoys/MOON: its training pipeline, base trainer and averaging
utility) keeps a uniform running mean of the network's parameters over the
last ``deduct`` (20 of 100) epochs, during which the learning rate is constant: it copies the
network at the end of epoch ``E - deduct`` and then averages it with the network after each of the
first 10% of iterations of every later epoch (``(step - 1) // (iters // 10) == 0``). After every
averaging epoch, the BatchNorm statistics of the averaged model are recomputed from scratch with
one pass over the training data (``bn_update``).

moon-jax defaults to one snapshot per epoch (the paper's "epoch-wise" averaging): at the end of
every epoch from ``E - deduct`` (1-based) to ``E``, ``deduct + 1`` snapshots. ``trigger =
'reference'`` reproduces the reference's snapshots. Both are uniform averages of iterates taken at
the constant learning rate.

Averaging is an Optax transformation placed last in the optimizer chain: it passes updates
through unchanged and, when told to (``take_snapshot=True``), folds ``params + updates`` into the
running mean. Parameters are exactly zero at inactive positions after every masked step, so the
average of snapshots that share one mask has exactly that mask's support.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
TRIGGERS = ("epoch", "reference")


class AveragingState(NamedTuple):
    """Running mean of parameter snapshots.

    Attributes:
      average: the mean of the snapshots taken so far (zeros before the first).
      count: number of snapshots taken (int32).
    """

    average: PyTree
    count: jax.Array


def weight_averaging() -> optax.GradientTransformationExtraArgs:
    """Optax transformation keeping a uniform running mean of the parameters it sees.

    ``update(updates, state, params, *, take_snapshot=False)``: updates pass through unchanged;
    with ``take_snapshot`` true (a traced bool is fine) the new parameters ``params + updates``
    are added to the mean: ``avg <- avg + (new - avg) / (count + 1)``.
    """

    def init_fn(params):
        return AveragingState(
            average=jax.tree.map(jnp.zeros_like, params), count=jnp.zeros((), jnp.int32)
        )

    def update_fn(updates, state, params=None, *, take_snapshot=False, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("weight_averaging needs `params` in update()")
        if take_snapshot is False:
            return updates, state
        return updates, add_snapshot(state, optax.apply_updates(params, updates), take_snapshot)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_averaging_state(opt_state: PyTree) -> "AveragingState | None":
    """The :class:`AveragingState` inside an optimizer state (e.g. an ``optax.chain``'s), or
    ``None`` when the chain has no :func:`weight_averaging`."""
    return optax.tree_utils.tree_get(opt_state, "AveragingState")


def averaged_params(opt_state: PyTree) -> "tuple[PyTree, int] | None":
    """``(average, number of snapshots)`` of the weight average in an optimizer state, or
    ``None`` when there is no averaging or no snapshot yet (host-side: reads the count)."""
    found = find_averaging_state(opt_state)
    if found is None or int(found.count) == 0:
        return None
    return found.average, int(found.count)


def add_snapshot(state: AveragingState, params: PyTree, take_snapshot=True) -> AveragingState:
    """Folds ``params`` into the running mean when ``take_snapshot`` (else returns ``state``).

    A Python ``False`` returns ``state`` itself, so a compiled step that never snapshots neither
    reads nor writes the average; a traced bool selects inside the computation.
    """
    if take_snapshot is False:
        return state
    take = jnp.asarray(take_snapshot, bool)
    count = state.count + take.astype(jnp.int32)
    scale = 1.0 / jnp.maximum(count, 1).astype(jnp.float32)

    def fold(avg, new):
        updated = avg + (new.astype(avg.dtype) - avg) * scale.astype(avg.dtype)
        return jnp.where(take, updated, avg)

    return AveragingState(average=jax.tree.map(fold, state.average, params), count=count)


def snapshot_into(opt_state: PyTree, params: PyTree) -> PyTree:
    """``opt_state`` with ``params`` folded into the weight average it holds (a no-op without
    :func:`weight_averaging`): the snapshot as a small function of its own, run after an
    ordinary step at the snapshot steps, so that no second copy of the whole training step has
    to be compiled for them. Identical to ``update(..., take_snapshot=True)``, whose new
    parameters ``params + updates`` are the ones the step returns."""
    is_average = lambda node: isinstance(node, AveragingState)  # noqa: E731
    return jax.tree.map(lambda node: add_snapshot(node, params) if is_average(node) else node, opt_state,
                        is_leaf=is_average)


def averaging_start_epoch(total_epochs: int, averaging_epochs: int) -> int:
    """0-based epoch at whose end the first snapshot is taken (``E - deduct`` in 1-based)."""
    return total_epochs - averaging_epochs - 1


def is_snapshot_step(step, steps_per_epoch: int, total_epochs: int, averaging_epochs: int, trigger: str = "epoch"):
    """Whether the optimizer step at 0-based iteration ``step`` is followed by a snapshot.

    ``epoch``: the last iteration of every epoch from ``E - deduct`` (1-based) to ``E``.
    ``reference``: the last iteration of epoch ``E - deduct``, then the first
    ``steps_per_epoch // 10`` iterations of every later epoch.
    Python ints give a Python bool (no device work: the training loop decides on the host);
    traced values give a traced bool. ``averaging_epochs = 0`` never snapshots.
    """
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown averaging trigger {trigger!r}; allowed: {', '.join(TRIGGERS)}")
    if isinstance(step, int):
        if averaging_epochs <= 0:
            return False
        epoch, in_epoch = divmod(step, steps_per_epoch)
        start = averaging_start_epoch(total_epochs, averaging_epochs)
        last_of_epoch = in_epoch == steps_per_epoch - 1
        if trigger == "epoch":
            return epoch >= start and last_of_epoch
        return (epoch == start and last_of_epoch) or (epoch > start and in_epoch < max(steps_per_epoch // 10, 1))
    if averaging_epochs <= 0:
        return jnp.zeros((), bool)
    step = jnp.asarray(step)
    epoch = step // steps_per_epoch
    in_epoch = step % steps_per_epoch
    start = averaging_start_epoch(total_epochs, averaging_epochs)
    last_of_epoch = in_epoch == steps_per_epoch - 1
    if trigger == "epoch":
        return jnp.logical_and(epoch >= start, last_of_epoch)
    first_tenth = in_epoch < max(steps_per_epoch // 10, 1)
    return jnp.logical_or(
        jnp.logical_and(epoch == start, last_of_epoch),
        jnp.logical_and(epoch > start, first_tenth),
    )


# ----------------------------------------------------------------------------- BatchNorm refresh
class BatchStatsAccumulator(NamedTuple):
    """Sample-weighted running mean of per-batch BatchNorm statistics.

    Attributes:
      mean_stats: running mean of each batch's (mean, var) statistics, the ``batch_stats`` tree.
      examples: number of examples folded in so far.
    """

    mean_stats: PyTree
    examples: jax.Array


def init_batch_stats_accumulator(batch_stats: PyTree) -> BatchStatsAccumulator:
    """An empty accumulator with the structure of ``batch_stats``."""
    return BatchStatsAccumulator(
        mean_stats=jax.tree.map(jnp.zeros_like, batch_stats), examples=jnp.zeros((), jnp.float32)
    )


def accumulate_batch_stats(
    apply_fn: Callable[..., Any],
    params: PyTree,
    acc: BatchStatsAccumulator,
    images: jax.Array,
    bn_momentum: float,
    num_valid=None,
) -> BatchStatsAccumulator:
    """Adds one batch's BatchNorm statistics (train-mode forward of ``params``) to ``acc``.

    Flax's BatchNorm returns ``momentum * old + (1 - momentum) * batch``; running it from zero
    statistics and dividing by ``1 - momentum`` recovers the batch's own statistics exactly. The
    batches are then averaged weighted by their size, as the reference's ``bn_update``
    (cumulative moving average, momentum ``b / (n + b)``). ``num_valid`` (default: the batch size)
    is the batch's weight; all examples of the batch enter its statistics.
    """
    zeros = jax.tree.map(jnp.zeros_like, acc.mean_stats)
    _, updated = apply_fn(
        {"params": params, "batch_stats": zeros}, images, train=True, mutable=["batch_stats"]
    )
    batch = jax.tree.map(lambda s: s / (1.0 - bn_momentum), updated["batch_stats"])
    weight = jnp.asarray(images.shape[0] if num_valid is None else num_valid, jnp.float32)
    examples = acc.examples + weight
    frac = weight / jnp.maximum(examples, 1.0)
    mean_stats = jax.tree.map(lambda m, b: m + (b - m) * frac, acc.mean_stats, batch)
    return BatchStatsAccumulator(mean_stats=mean_stats, examples=examples)
