"""When masks change and by how much: the RigL update schedule.

RigL (Evci et al. 2020, eq. 1 and section 3): every ``update_every`` iterations until
``end_step``, each sparse layer drops a fraction ``f_decay(t)`` of its active weights and grows as
many, with the cosine decay ``f_decay(t) = drop_fraction / 2 * (1 + cos(pi * t / end_step))``.

Iterations are counted from 0. Iteration ``t`` is an update iteration when ``(t + 1)`` is a
multiple of ``update_every`` and ``t < end_step``: with ``update_every = 80`` the 80th, 160th, ...
iteration updates, as in the reference code (which counts 1-based iterations). The reference
counts iterations *within each epoch* (4 updates per 391-iteration CIFAR epoch); we count them
globally, as RigL does.

The reference code also evaluates its cosine with a length of ``end_when = 70`` *iterations*
(a units bug: ``end_when`` is the number of mask-update *epochs*), so its drop fraction is
``0.3 (1 + cos(69 pi / 70)) / 2 ~= 1.5e-4`` from the first update on and RigL/SET are nearly
static there. Here the length is ``end_step`` iterations, which is what the method means;
``cosine_steps`` reproduces the released behaviour when asked (``cosine_steps = 70`` with
``drop_count_rounding = 'ceil'``, the reference's ``ceil(rate * nnz)``).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

DROP_COUNT_ROUNDINGS = ("floor", "ceil")


@dataclasses.dataclass(frozen=True)
class UpdateSchedule:
    """Mask-update schedule.

    Attributes:
      update_every: iterations between mask updates (RigL's delta T).
      end_step: no mask update at or after this iteration; the drop fraction reaches 0 here.
      drop_fraction: drop fraction at iteration 0 (RigL's alpha).
      cosine_steps: 0 (RigL): the cosine decays over ``end_step`` iterations. A positive value
        decays it over that many iterations instead and then holds it, as the released MOON code
        does with its ``end_when = 70`` read as iterations (:func:`drop_fraction_at`).
      drop_count_rounding: ``'floor'`` (RigL's code) or ``'ceil'`` (the MOON reference) of
        ``fraction * nnz``, the number of connections each layer replaces.
    """

    update_every: int = 100
    end_step: int = 0
    drop_fraction: float = 0.3
    cosine_steps: int = 0
    drop_count_rounding: str = "floor"

    def __post_init__(self):
        if self.update_every <= 0:
            raise ValueError(f"update_every must be positive, got {self.update_every}")
        if self.end_step < 0:
            raise ValueError(f"end_step must be >= 0, got {self.end_step}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1], got {self.drop_fraction}")
        if self.cosine_steps < 0:
            raise ValueError(f"cosine_steps must be >= 0, got {self.cosine_steps}")
        if self.drop_count_rounding not in DROP_COUNT_ROUNDINGS:
            raise ValueError(
                f"drop_count_rounding must be one of {', '.join(DROP_COUNT_ROUNDINGS)}, got {self.drop_count_rounding!r}")

    @classmethod
    def for_run(
        cls,
        total_steps: int,
        update_every: int = 100,
        drop_fraction: float = 0.3,
        end_fraction: float = 0.75,
    ) -> "UpdateSchedule":
        """Schedule whose updates stop after ``end_fraction`` of ``total_steps`` (RigL: 0.75)."""
        return cls(
            update_every=update_every,
            end_step=int(round(end_fraction * total_steps)),
            drop_fraction=drop_fraction,
        )


def drop_fraction_at(schedule: UpdateSchedule, step) -> jnp.ndarray:
    """Cosine-decayed drop fraction at iteration ``step`` (0 from ``end_step`` on).

    With ``cosine_steps = T > 0`` it is the released reference's schedule instead: its cosine
    decay is stepped after every optimizer iteration with that iteration's 0-based index and
    stops stepping at index ``T - 1``, so the fraction used at iteration ``t`` is
    ``drop_fraction / 2 * (1 + cos(pi * min(max(t - 1, 0), T - 1) / T))``: with ``T = 70`` and
    0.3 about 1.51e-4 from iteration 70 on (the reference's first update is at iteration 80).
    """
    if schedule.end_step == 0:
        return jnp.zeros((), jnp.float32)
    if schedule.cosine_steps:
        last = schedule.cosine_steps - 1
        t = jnp.clip(jnp.asarray(step, jnp.float32) - 1.0, 0.0, float(last))
        # a/2 (1 + cos x) = a cos^2(x/2): exact in float32 near x = pi, where the held value lies
        half_angle = jnp.pi * t / (2 * schedule.cosine_steps)
        return (schedule.drop_fraction * jnp.cos(half_angle) ** 2).astype(jnp.float32)
    progress = jnp.minimum(jnp.asarray(step, jnp.float32), schedule.end_step) / schedule.end_step
    return (0.5 * schedule.drop_fraction * (1.0 + jnp.cos(jnp.pi * progress))).astype(jnp.float32)


def drop_count(schedule: UpdateSchedule, fraction, nonzeros: int) -> jnp.ndarray:
    """How many of a layer's ``nonzeros`` active connections an update replaces at drop fraction
    ``fraction``: ``floor`` or ``ceil`` of ``fraction * nonzeros`` (float32), at most ``nonzeros``."""
    exact = fraction * jnp.float32(nonzeros)
    rounded = jnp.ceil(exact) if schedule.drop_count_rounding == "ceil" else jnp.floor(exact)
    return jnp.minimum(rounded, nonzeros).astype(jnp.int32)


def is_update_step(schedule: UpdateSchedule, step):
    """Whether iteration ``step`` (0-based) performs a mask update.

    A Python bool for a Python int (the training loop decides on the host, without touching the
    device), a traced bool inside ``jit``.
    """
    return ((step + 1) % schedule.update_every == 0) & (step < schedule.end_step)


def update_steps(schedule: UpdateSchedule, total_steps: int) -> list[int]:
    """All update iterations of a run of ``total_steps`` iterations (host-side helper)."""
    last = min(schedule.end_step, total_steps)
    return [t for t in range(schedule.update_every - 1, last, schedule.update_every)]


# ----------------------------------------------------------------------------- pruning from dense
@dataclasses.dataclass(frozen=True)
class PruningSchedule:
    """Gradual pruning from dense (Zhu & Gupta 2017, "To prune, or not to prune", section 3).

    Pruning iterations are ``start_step, start_step + update_every, ...`` up to ``end_step``, and
    ``end_step`` itself (the last, at the final sparsity, even when ``end_step - start_step`` is not
    a multiple of ``update_every``). ``start_step == end_step`` is one-shot pruning at that
    iteration. The sparsity at iteration ``t`` is :func:`pruning_sparsity_at`.

    Attributes:
      start_step: t0, the first pruning iteration (0-based).
      end_step: t0 + n * delta_t, the last pruning iteration; the final sparsity from here on.
      update_every: delta_t, iterations between pruning iterations.
      initial_sparsity: s_i, the sparsity scheduled at ``start_step`` (0: nothing pruned there).
    """

    start_step: int = 0
    end_step: int = 0
    update_every: int = 100
    initial_sparsity: float = 0.0

    def __post_init__(self):
        if self.update_every <= 0:
            raise ValueError(f"update_every must be positive, got {self.update_every}")
        if not 0 <= self.start_step <= self.end_step:
            raise ValueError(f"need 0 <= start_step <= end_step, got {self.start_step} and {self.end_step}")
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise ValueError(f"initial_sparsity must be in [0, 1), got {self.initial_sparsity}")

    @classmethod
    def for_run(cls, total_steps: int, update_every: int = 100, start_fraction: float = 0.1,
                end_fraction: float = 0.75) -> "PruningSchedule":
        """Pruning from ``start_fraction`` to ``end_fraction`` of ``total_steps`` (rounded)."""
        return cls(start_step=int(round(start_fraction * total_steps)),
                   end_step=int(round(end_fraction * total_steps)), update_every=update_every)

    @property
    def num_events(self) -> int:
        """How many pruning iterations there are (the end step included)."""
        return (self.end_step - self.start_step + self.update_every - 1) // self.update_every + 1

    def event_steps(self) -> list[int]:
        """Every pruning iteration, in order (host-side)."""
        return [min(self.start_step + j * self.update_every, self.end_step) for j in range(self.num_events)]


def pruning_sparsity_at(schedule: PruningSchedule, final_sparsity: float, step) -> float:
    """Zhu & Gupta 2017, eq. 1: ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``.

    ``s_i`` before ``t0``, ``s_f`` from ``t0 + n dt = end_step`` on (one-shot: ``s_f`` from
    ``t0``). Host-side Python floats: the per-layer counts of every pruning iteration are
    planned before training (:func:`pruning_event_index` finds them inside ``jit``).
    """
    s_i, s_f = schedule.initial_sparsity, final_sparsity
    if step >= schedule.end_step:
        return s_f
    if step < schedule.start_step:
        return s_i
    progress = (step - schedule.start_step) / (schedule.end_step - schedule.start_step)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def is_pruning_step(schedule: PruningSchedule, step):
    """Whether iteration ``step`` prunes: a Python bool for a Python int, traced inside ``jit``."""
    offset = step - schedule.start_step
    return (offset >= 0) & (step <= schedule.end_step) & ((offset % schedule.update_every == 0) | (step == schedule.end_step))


def pruning_event_index(schedule: PruningSchedule, step) -> jnp.ndarray:
    """Index into :meth:`PruningSchedule.event_steps` of the pruning iteration ``step`` (int32,
    jit-compatible; the last event from ``end_step`` on)."""
    step = jnp.asarray(step, jnp.int32)
    index = jnp.clip((step - schedule.start_step) // schedule.update_every, 0, schedule.num_events - 1)
    return jnp.where(step >= schedule.end_step, schedule.num_events - 1, index).astype(jnp.int32)
