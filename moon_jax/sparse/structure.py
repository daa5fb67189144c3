"""Structured sparsity: N:M groups, blocks and whole channels, kept through drop and grow.

A :class:`Structure` says which patterns a layer's mask may take; the functions here create,
select and update masks of one kernel so that the pattern holds exactly at every step:

* ``unstructured``: any set of weights (the default; the same functions, and so the same bits,
  as before structures existed).
* ``nm_N,M`` (also ``N:M``): in every group of ``M`` consecutive weights along the kernel's
  *input* axis (axis -2 of a Flax kernel: ``in`` of a Dense ``(in, out)``, ``in`` of a Conv
  ``(kh, kw, in, out)``), exactly ``N`` are active, e.g. 2:4 for GPUs with sparse tensor cores.
  Groups run along the input channels at each kernel position and output, which is what NVIDIA's
  ASP (``m4n2_1d`` over the ``(kh*kw*out, in)`` view of a conv weight) and TensorRT ("every four
  input channels of each output channel and kernel position hold at least two zeros") accept. In
  the ``(kh, kw, in)`` order of the flattened reduction dimension (cuDNN's KRSC layout) these
  groups are also consecutive runs of it, so the mask fits both readings.
* ``block_R,C``: units are ``R x C`` blocks of the kernel's 2-D GEMM view ``(prod(shape[:-1]),
  out)``, i.e. rows over the flattened reduction dimension, columns over outputs.
* ``channel``: units are whole output channels (filters of a conv, columns of a Dense kernel).

**How dense.** An N:M layer has density exactly ``N/M``, whatever the layer-wise distribution
planned: the plan only decides *which* layers are sparse (the first/last-layer flags, layers ERK
made dense, ``sparsity = 0``) and those stay dense; every other layer is N:M, so
``sparse.sparsity`` matters only through that choice (``distribution = uniform`` makes every
sparsifiable layer N:M). Blocks and channels follow the plan: a layer keeps
``round(planned_count / unit_size)`` units (half up), at least one, so its count is a whole number
of units and may differ from the plan by up to half a unit.

**Shapes that do not fit** are kept dense, as ASP skips layers it cannot sparsify: an N:M layer
whose input size is not a multiple of ``M`` (a stem conv over 1 or 3 image channels), a block
layer whose GEMM view is not tiled by the block. :func:`structure_plan` turns them into dense
entries of the plan, so the run's summary, density report and FLOPs count them as such.

**Drop and grow.** RigL/SET replace ``k`` weights per update; with structure: N:M drops the ``k``
lowest-scoring active weights of the layer (as unstructured), then every group that lost ``d``
grows ``d`` of its own inactive positions by grow score, so each group holds ``N`` again. Blocks
and channels drop the ``k / unit_size`` units with the smallest summed drop score (``sum |w|``) and
grow as many by summed grow score (``sum |grad|``, or summed noise for SET: sums of i.i.d. noise
rank units uniformly at random); ``k / unit_size`` is floored, as RigL floors ``k``, so a layer of
few large units moves only when ``k`` reaches a whole unit. Ties break towards the lower index, as in
:func:`moon_jax.sparse.selection.top_k_mask`; every function is jittable with static shapes and a
traced ``k``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Union

import jax
import jax.numpy as jnp

from moon_jax.sparse.distribution import SparsityPlan
from moon_jax.sparse.selection import (
    drop_and_grow,
    order_preserving_keys,
    random_mask,
    top_k_mask,
)

KINDS = ("unstructured", "nm", "block", "channel")
SPELLINGS = "'unstructured', 'nm_N,M' or 'N:M' (0 < N < M, e.g. nm_2,4), 'block_R,C' (e.g. block_4,4), 'channel'"


@dataclasses.dataclass(frozen=True)
class Structure:
    """Which mask patterns a layer may take (build it with :func:`parse_structure`; a value
    outside the allowed ones raises ``ValueError``, whichever way it is built).

    Attributes:
      kind: ``unstructured``, ``nm``, ``block`` or ``channel``.
      n, m: for ``nm``, ``n`` active weights in every group of ``m`` along the input axis.
      block: for ``block``, the ``(rows, columns)`` of one block of the GEMM view.
    """

    kind: str = "unstructured"
    n: int = 0
    m: int = 0
    block: tuple[int, int] = (0, 0)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown structure kind {self.kind!r}; allowed: {SPELLINGS}")
        if self.kind == "nm" and not 0 < self.n < self.m:
            raise ValueError(f"N:M keeps N of every M weights and needs 0 < N < M, got {self.n}:{self.m} "
                             f"(for dense layers use sparse.method = dense); allowed: {SPELLINGS}")
        if self.kind == "block" and min(self.block) < 1:
            raise ValueError(f"blocks need positive sizes, got {self.block}; allowed: {SPELLINGS}")

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"nm_{self.n},{self.m}"
        if self.kind == "block":
            return f"block_{self.block[0]},{self.block[1]}"
        return self.kind

    @property
    def is_unstructured(self) -> bool:
        """Whether any set of weights is allowed (the default)."""
        return self.kind == "unstructured"


UNSTRUCTURED = Structure()


def _integer_pair(text: str, spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[,:]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"structure {spec!r} needs two integers; allowed: {SPELLINGS}")
    return int(match[1]), int(match[2])


def _from_text(text: str, spec: str) -> Structure:
    if text in ("unstructured", "channel"):
        return Structure(kind=text)
    if text.startswith("block_"):
        return Structure(kind="block", block=_integer_pair(text.removeprefix("block_"), spec))
    if text.startswith("nm_") or ":" in text:
        n, m = _integer_pair(text.removeprefix("nm_"), spec)
        return Structure(kind="nm", n=n, m=m)
    raise ValueError(f"unknown sparsity structure {spec!r}; allowed: {SPELLINGS}")


def parse_structure(spec: Union[str, Structure]) -> Structure:
    """The :class:`Structure` a string names (a :class:`Structure` passes through).

    Accepts ``unstructured``, ``nm_N,M`` (jaxpruner's spelling) or ``N:M``, ``block_R,C`` and
    ``channel``; anything else raises ``ValueError`` naming the value and the allowed spellings,
    so a config typo stops before a run starts.
    """
    if isinstance(spec, Structure):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"structure {spec!r} is not a string; allowed: {SPELLINGS}")
    try:
        return _from_text(spec.strip().lower(), spec)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if repr(spec) in message else f"structure {spec!r}: {message}") from None


# ----------------------------------------------------------------------------- counts
def fits(structure: Structure, shape: tuple[int, ...]) -> bool:
    """Whether a kernel of ``shape`` can carry the structure exactly (else it is kept dense):
    N:M needs the input size ``shape[-2]`` to be a multiple of ``M``, blocks need the GEMM view
    ``(prod(shape[:-1]), shape[-1])`` tiled by the block."""
    if structure.kind == "nm":
        return shape[-2] % structure.m == 0
    if structure.kind == "block":
        rows, cols = structure.block
        return math.prod(shape[:-1]) % rows == 0 and shape[-1] % cols == 0
    return True


def unit_size(structure: Structure, shape: tuple[int, ...]) -> int:
    """Weights in one unit that is kept or dropped whole: 1 for unstructured and N:M (whose units
    are single weights, grouped), a block's area, a channel's ``prod(shape[:-1])``."""
    if structure.kind == "block":
        return structure.block[0] * structure.block[1]
    if structure.kind == "channel":
        return math.prod(shape[:-1])
    return 1


def structured_count(structure: Structure, shape: tuple[int, ...], planned: int) -> int:
    """The exact number of active weights of a kernel of ``shape`` whose plan asked for
    ``planned`` (see the module docstring): the plan's count when unstructured; the whole layer
    when the plan keeps it dense or the shape does not fit; ``size * N / M`` for N:M; for blocks
    and channels ``round(planned / unit)`` units (half up), at least one."""
    size = math.prod(shape)
    if structure.is_unstructured:
        return planned
    if planned >= size or not fits(structure, shape):
        return size
    if structure.kind == "nm":
        return size // structure.m * structure.n
    unit = unit_size(structure, shape)
    units = min(max(math.floor(planned / unit + 0.5), 1), size // unit)
    return units * unit


def structure_plan(plan: SparsityPlan, structure: Structure) -> SparsityPlan:
    """``plan`` with every layer's count replaced by :func:`structured_count` (the plan itself
    when unstructured); layers that end up dense are then dense entries of the plan, and N:M
    layers report their density ``N/M`` instead of the distribution's."""
    if structure.is_unstructured:
        return plan
    counts = {n: structured_count(structure, s, plan.counts[n]) for n, s in plan.shapes.items()}
    densities = dict(plan.densities)
    if structure.kind == "nm":
        densities = {n: counts[n] / math.prod(s) for n, s in plan.shapes.items()}
    return dataclasses.replace(plan, counts=counts, densities=densities)


# ----------------------------------------------------------------------------- views
def _to_groups(x: jax.Array, m: int) -> jax.Array:
    """``(..., in, out)`` -> ``(groups, m)``: each row one group of ``m`` consecutive inputs."""
    *lead, n_in, n_out = x.shape
    grouped = x.reshape(*lead, n_in // m, m, n_out)
    return jnp.swapaxes(grouped, -1, -2).reshape(-1, m)


def _from_groups(g: jax.Array, shape: tuple[int, ...], m: int) -> jax.Array:
    """Inverse of :func:`_to_groups`."""
    *lead, n_in, n_out = shape
    grouped = g.reshape(*lead, n_in // m, n_out, m)
    return jnp.swapaxes(grouped, -1, -2).reshape(shape)


def _group_ranks(scores: jax.Array, candidates: jax.Array) -> jax.Array:
    """Per row of ``(groups, m)`` scores, each entry's rank among the row's ``candidates``
    (0 = largest; equal scores rank the lower index first), from the same order-preserving keys
    as :func:`top_k_mask`. O(m^2) per group, which is small for the ``m`` hardware uses."""
    keys = order_preserving_keys(scores)
    m = scores.shape[-1]
    lower = jnp.arange(m)[None, :] < jnp.arange(m)[:, None]  # [i, j]: j < i
    beats = (keys[:, None, :] > keys[:, :, None]) | ((keys[:, None, :] == keys[:, :, None]) & lower[None])
    return jnp.sum(beats & candidates[:, None, :], axis=-1)


def _top_in_groups(scores: jax.Array, candidates: jax.Array, counts) -> jax.Array:
    """Per group, the ``counts`` (per group, broadcast) best-scoring candidates."""
    return candidates & (_group_ranks(scores, candidates) < counts)


def _to_units(structure: Structure, x: jax.Array) -> jax.Array:
    """Sums ``x`` over every block or channel: the units' aggregated scores (float32)."""
    x = x.astype(jnp.float32)
    if structure.kind == "channel":
        return jnp.sum(x.reshape(-1, x.shape[-1]), axis=0)
    rows, cols = structure.block
    view = x.reshape(-1, rows, x.shape[-1] // cols, cols)
    return jnp.sum(view, axis=(1, 3))


def _from_units(structure: Structure, units: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Spreads a per-unit mask over the weights of each unit."""
    if structure.kind == "channel":
        return jnp.broadcast_to(units, shape)
    rows, cols = structure.block
    spread = jnp.broadcast_to(units[:, None, :, None], (units.shape[0], rows, units.shape[1], cols))
    return spread.reshape(shape)


# ----------------------------------------------------------------------------- masks
def top_structured_mask(scores: jax.Array, count: int, structure: Structure) -> jax.Array:
    """The best-scoring mask of the structure with exactly ``count`` active weights (a count from
    :func:`structured_count`): unstructured, the ``count`` largest scores; N:M, the ``N`` largest
    of every group; blocks and channels, the ``count / unit`` units of largest summed score. Ties
    break towards the lower index."""
    if structure.is_unstructured:
        return top_k_mask(scores, count)
    if structure.kind == "nm":
        groups = _to_groups(scores, structure.m)
        every = jnp.ones(groups.shape, bool)
        return _from_groups(_top_in_groups(groups, every, structure.n), scores.shape, structure.m)
    units = top_k_mask(_to_units(structure, scores), count // unit_size(structure, scores.shape))
    return _from_units(structure, units, scores.shape)


def structured_random_mask(key: jax.Array, shape: tuple[int, ...], count: int, structure: Structure) -> jax.Array:
    """A uniformly random mask of the structure with exactly ``count`` active weights;
    unstructured it is :func:`moon_jax.sparse.selection.random_mask` itself (same key, same
    bits)."""
    if structure.is_unstructured:
        return random_mask(key, shape, count)
    return top_structured_mask(jax.random.uniform(key, shape), count, structure)


def structured_drop_and_grow(
    mask: jax.Array, drop_score: jax.Array, grow_score: jax.Array, k, count: int, structure: Structure
) -> jax.Array:
    """One layer's RigL/SET update that keeps the structure (see the module docstring).

    Args:
      mask: the layer's current mask, of the structure, with exactly ``count`` active weights.
      drop_score: larger is kept (|w|).
      grow_score: larger is grown (|dense grad| for RigL, uniform noise for SET).
      k: weights to replace (traced int); blocks and channels replace ``k // unit`` whole units.
      count: the layer's static active count.
    """
    if structure.is_unstructured:
        return drop_and_grow(mask, drop_score, grow_score, k, count)
    if structure.kind == "nm":
        neg_inf = jnp.array(-jnp.inf, jnp.float32)
        kept = top_k_mask(jnp.where(mask, drop_score.astype(jnp.float32), neg_inf), count - k)
        kept_groups = _to_groups(kept, structure.m)
        lost = structure.n - jnp.sum(kept_groups, axis=-1, keepdims=True, dtype=jnp.int32)
        grown = _top_in_groups(_to_groups(grow_score, structure.m), ~kept_groups, lost)
        return _from_groups(kept_groups | grown, mask.shape, structure.m)
    unit = unit_size(structure, mask.shape)
    units = drop_and_grow(
        _to_units(structure, mask) > 0,
        _to_units(structure, drop_score),
        _to_units(structure, grow_score),
        jnp.asarray(k, jnp.int32) // unit,
        count // unit,
    )
    return _from_units(structure, units, mask.shape)
