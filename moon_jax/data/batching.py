"""Deterministic batching: the order of examples is a pure function of (seed, epoch).

Why: a run restarted from a checkpoint at epoch e must see exactly the batches it would have
seen, with no iterator state to save; and fixed batch shapes mean the jitted train / eval
steps compile once.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


def _check(n: int, batch_size: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of ``range(n)`` for ``epoch``: ``numpy.random.default_rng([seed, epoch])``.

    The same (n, seed, epoch) always gives the same permutation; different epochs give
    independent ones. ``seed`` and ``epoch`` must be non-negative integers.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    return rng.permutation(int(n)).astype(np.int64)


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of batches per epoch: ``n // batch_size`` with ``drop_last``, else ceil."""
    _check(n, batch_size)
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_batch_indices(n: int, batch_size: int, seed: int, epoch: int,
                        drop_last: bool = True) -> np.ndarray:
    """Example indices of every training batch of ``epoch``: int32 (steps, batch_size).

    Row s is batch s of :func:`epoch_permutation`. With ``drop_last`` the last
    ``n % batch_size`` examples of the permutation are skipped (a different subset each epoch).
    Without it the last batch is filled up with the first indices of the same permutation, so
    every example appears at least once and all batches keep the same shape.
    """
    steps = steps_per_epoch(n, batch_size, drop_last)
    perm = epoch_permutation(n, seed, epoch)
    total = steps * batch_size
    if total > n:
        perm = np.concatenate([perm, np.resize(perm, total - n)])
    return perm[:total].reshape(steps, batch_size).astype(np.int32)


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, valid)`` covering ``range(n)`` in order with a fixed batch shape.

    ``indices`` is int32 (batch_size,); the last batch is padded with index 0 (any valid index
    works, its results are discarded) and ``valid`` (bool, (batch_size,)) marks the real
    entries, so every example is evaluated exactly once with one compiled step.
    """
    _check(n, batch_size)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        idx = np.zeros((batch_size,), dtype=np.int32)
        idx[: stop - start] = np.arange(start, stop, dtype=np.int32)
        valid = np.zeros((batch_size,), dtype=bool)
        valid[: stop - start] = True
        yield idx, valid
