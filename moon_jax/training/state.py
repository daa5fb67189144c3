"""The changing half of a run: the state every step maps to the next, saved in checkpoints."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax

from moon_jax import moon

PyTree = Any


class TrainState(NamedTuple):
    """Everything needed to continue training exactly.

    Attributes:
      step: int32 number of iterations done (the run's one step counter).
      params: model parameters (exact zeros at inactive connections).
      batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
      opt_state: state of the optimizer chain (masked inner optimizer, weight averaging).
      masks: the sparse engine's masks (bool at sparse leaves, ``None`` at dense ones).
      moon: the MOON loss's auto-tuning state.
      averaged_batch_stats: BatchNorm statistics recomputed for the weight average.
      averaged_batch_stats_snapshots: the number of snapshots the average had when
        ``averaged_batch_stats`` were computed; they are current when it equals the average's
        count (the statistics are recomputed only when a result uses them).
      rng: uint32[2] base key; each iteration folds in its step.
      nonfinite_step: -1 while every loss and gradient was finite, else the first step at which
        one was not (the host stops the run at its next check, before anything is saved).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    masks: PyTree
    moon: moon.MoonState
    averaged_batch_stats: PyTree
    averaged_batch_stats_snapshots: jax.Array
    rng: jax.Array
    nonfinite_step: jax.Array
