"""Exact rank selection on score arrays: the primitives every mask rule is built from.

:func:`top_k_mask` keeps exactly ``k`` entries (``k`` may be traced, ties break towards the lower
flat index); :func:`drop_and_grow` is one layer's RigL/SET update on top of it and
:func:`random_mask` a uniformly random mask with an exact count. They live apart from
:mod:`moon_jax.sparse.updaters` so that :mod:`moon_jax.sparse.structure` can apply them to units
(blocks, channels) while the updater applies the structures; ``updaters`` re-exports them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def order_preserving_keys(x: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 values (negatives flipped, sign bit set on the
    rest); -0.0 is mapped to 0.0 first so that equal floats get equal keys."""
    x = x.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.zeros_like(x), x), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def top_k_mask(scores: jax.Array, k) -> jax.Array:
    """Boolean mask with exactly ``k`` True entries at the ``k`` largest ``scores``.

    ``k`` may be traced. Ties break deterministically towards the lower flat index, so the
    result never depends on the backend. An exact radix select instead of a sort: the k-th
    largest value is found one byte at a time from the most significant one, over
    order-preserving integer keys of the float32 scores (4 passes, each a 256-bin histogram of
    the next byte among the keys that share the bytes chosen so far), then ties at that value are
    taken in index order. O(n) work per pass, no data-dependent shapes, and few kernels: on CPU
    about as fast as the bit-by-bit select (32 counting passes) it replaced and 10x faster than
    an argsort for a 2.4M-weight layer. ``-inf`` sorts lowest, NaN highest.
    """
    flat = scores.reshape(-1)
    keys = order_preserving_keys(flat)
    k = jnp.asarray(k, jnp.int32)
    prefix = jnp.uint32(0)  # the bytes of the k-th largest key found so far
    above = jnp.int32(0)  # keys whose leading bytes already exceed the prefix
    digits = jnp.arange(256, dtype=jnp.int32)
    for shift in (24, 16, 8, 0):
        candidates = jnp.ones(keys.shape, jnp.int32) if shift == 24 else ((keys >> (shift + 8)) == prefix).astype(jnp.int32)
        digit = ((keys >> shift) & 0xFF).astype(jnp.int32)
        counts = jnp.zeros(256, jnp.int32).at[digit].add(candidates)
        at_least = jnp.cumsum(counts[::-1])[::-1]  # candidates whose byte is >= d
        chosen = jnp.max(jnp.where(above + at_least >= k, digits, 0))
        above = above + at_least[chosen] - counts[chosen]
        prefix = (prefix << 8) | chosen.astype(jnp.uint32)
    larger = keys > prefix
    ties = keys == prefix
    tie_rank = jnp.cumsum(ties, dtype=jnp.int32)
    return (larger | (ties & (tie_rank <= k - jnp.sum(larger, dtype=jnp.int32)))).reshape(scores.shape)


def drop_and_grow(mask: jax.Array, drop_score: jax.Array, grow_score: jax.Array, k, nonzeros: int) -> jax.Array:
    """One layer's update: keep the ``nonzeros - k`` best active, grow the ``k`` best inactive.

    Args:
      mask: the layer's current boolean mask, with exactly ``nonzeros`` True entries.
      drop_score: larger is kept (|w| for RigL and SET).
      grow_score: larger is grown (|dense grad| for RigL, uniform noise for SET).
      k: number of connections to replace (traced int).
      nonzeros: the layer's static count of active connections.
    """
    neg_inf = jnp.array(-jnp.inf, jnp.float32)
    kept = top_k_mask(jnp.where(mask, drop_score.astype(jnp.float32), neg_inf), nonzeros - k)
    grown = top_k_mask(jnp.where(kept, neg_inf, grow_score.astype(jnp.float32)), k)
    return jnp.logical_or(kept, grown)


def random_mask(key: jax.Array, shape: tuple[int, ...], nonzeros: int) -> jax.Array:
    """A mask with exactly ``nonzeros`` active positions, uniformly at random."""
    return top_k_mask(jax.random.uniform(key, shape), nonzeros)
