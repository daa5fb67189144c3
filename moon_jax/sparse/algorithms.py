"""Every sparse algorithm as one entry of one registry: what it does, declared, not branched on.

An :class:`Algorithm` says whether the masks change, by which score connections are dropped
(pruned) and grown, whether the selection is per layer or global, whether training is
straight-through and which mask structures it supports. :class:`moon_jax.sparse.SparseUpdater`
reads these fields; adding an algorithm is adding an entry here (and a score in :data:`SCORES`
if it needs a new one).

Three families:

* **fixed masks**: ``dense`` (no masks), ``static`` (a random mask, never changed);
* **drop and grow** at a constant count (RigL, SET): masks start random at the target sparsity;
  every ``update_every`` iterations until ``end_step`` each layer drops and grows the same number
  of connections (:mod:`moon_jax.sparse.schedule`, cosine-decayed fraction);
* **pruning from dense** (gradual magnitude pruning, Zhu & Gupta 2017; saliency; random; their
  global and straight-through variants): masks start all True; at every pruning iteration of
  :class:`moon_jax.sparse.PruningSchedule` each layer (or, for global ones, the model) keeps
  exactly the count the cubic schedule asks for at that iteration.

Scores are ``score(weights, grads, key) -> array`` with larger meaning "keep" / "grow".
Mask structures (:mod:`moon_jax.sparse.structure`): ``static``, ``set`` and ``rigl`` keep N:M,
block and channel patterns through init, drop and grow. The pruning methods are unstructured only:
an N:M layer's density is fixed at N/M, so a gradual schedule has nothing to schedule, and
block / channel pruning would need the schedule's exact counts in whole units.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

#: The mask structures an algorithm can declare (:data:`moon_jax.sparse.structure.KINDS`).
STRUCTURES = ("unstructured", "nm", "block", "channel")

# The schedule families (Algorithm.schedule).
FIXED = "fixed"
DROP_AND_GROW = "drop_and_grow"
PRUNING = "pruning"


def magnitude_score(weights, grads, key):
    """``|w|``: magnitude pruning / RigL's and SET's drop criterion (Han et al. 2015)."""
    del grads, key
    return jnp.abs(weights)


def saliency_score(weights, grads, key):
    """``|w * dL/dw|``: the first-order Taylor estimate of the loss change when a weight is
    removed (Molchanov et al. 2017, eq. 8; SNIP's connection sensitivity, Lee et al. 2019)."""
    del key
    return jnp.abs(weights * grads)


def gradient_score(weights, grads, key):
    """``|dL/dw|`` of the dense gradient: RigL's grow criterion (Evci et al. 2020, Alg. 1)."""
    del weights, key
    return jnp.abs(grads)


def random_score(weights, grads, key):
    """Uniform noise: SET's growth (Mocanu et al. 2018) and random pruning."""
    del grads
    return jax.random.uniform(key, weights.shape)


#: Score name -> ``score(weights, grads, key)``; larger is kept (drop scores) or grown.
SCORES: dict[str, Callable] = {
    "magnitude": magnitude_score,
    "saliency": saliency_score,
    "gradient": gradient_score,
    "random": random_score,
}


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One sparse algorithm, declared.

    Attributes:
      name: the ``sparse.method`` / ``sparse_optimizer(method=...)`` name.
      description: one line for tables and ``--help``.
      schedule: ``fixed`` (masks never change), ``drop_and_grow`` (constant count, RigL's
        cosine schedule) or ``pruning`` (from dense, Zhu & Gupta's cubic schedule).
      drop_score: what is kept when connections are dropped or pruned (a :data:`SCORES` name), or
        ``None`` when masks never change.
      grow_score: what grows after a drop (a :data:`SCORES` name), or ``None`` (pruning only
        removes).
      scope: ``layer`` (every layer keeps its own exact count) or ``global`` (one threshold over
        all sparse layers: the total count is exact, per-layer counts follow the scores).
      straight_through: dense weights are kept and updated by the optimizer at every position,
        the forward pass uses the masked weights, and the gradient with respect to a masked
        weight is applied to its dense weight (Bengio et al. 2013's straight-through estimator).
      prunes_from_all: pruning chooses among all positions, not only the active ones, so a
        pruned connection whose (dense, straight-through) weight grew back returns; counts stay
        exact, but pruning is then not nested.
      sparse_at_init: masks start at the target sparsity (random); else all True (dense).
      supports_structures: the mask structures the algorithm can select under.
      reference: the paper the algorithm follows.
    """

    name: str
    description: str
    schedule: str
    drop_score: Optional[str] = None
    grow_score: Optional[str] = None
    scope: str = "layer"
    straight_through: bool = False
    prunes_from_all: bool = False
    sparse_at_init: bool = True
    supports_structures: tuple[str, ...] = ("unstructured",)
    reference: str = ""

    @property
    def changes_masks(self) -> bool:
        """Whether the algorithm ever changes its masks (given a schedule with updates)."""
        return self.schedule != FIXED

    @property
    def is_pruning(self) -> bool:
        """Whether masks start dense and are pruned by :class:`moon_jax.sparse.PruningSchedule`."""
        return self.schedule == PRUNING


def _pruning(name, description, score, scope="layer", straight_through=False, prunes_from_all=False,
             reference="") -> Algorithm:
    return Algorithm(name=name, description=description, schedule=PRUNING, drop_score=score, scope=scope,
                     straight_through=straight_through, prunes_from_all=prunes_from_all, sparse_at_init=False,
                     reference=reference)


_ZHU_GUPTA = "Zhu & Gupta 2017, To prune, or not to prune (eq. 1)"
#: Every algorithm by name, in the order tables list them.
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("dense", "no masks: every weight trains", FIXED, sparse_at_init=False),
    Algorithm("static", "a random mask with exact per-layer counts, never changed", FIXED,
              supports_structures=STRUCTURES, reference="Evci et al. 2020 (the static baseline)"),
    Algorithm("set", "drop by magnitude, regrow at random", DROP_AND_GROW, "magnitude", "random",
              supports_structures=STRUCTURES, reference="Mocanu et al. 2018, SET"),
    Algorithm("rigl", "drop by magnitude, regrow by dense-gradient magnitude", DROP_AND_GROW, "magnitude",
              "gradient", supports_structures=STRUCTURES, reference="Evci et al. 2020, RigL (Alg. 1)"),
    _pruning("gmp", "gradual magnitude pruning from dense, per layer (one-shot when start == end)",
             "magnitude", reference=_ZHU_GUPTA),
    _pruning("saliency", "gradual pruning by abs(w * grad), per layer", "saliency",
             reference="Molchanov et al. 2017 (eq. 8) on " + _ZHU_GUPTA),
    _pruning("random_pruning", "gradual pruning at random, per layer", "random", reference=_ZHU_GUPTA),
    _pruning("global_magnitude", "gradual magnitude pruning, one threshold over all sparse layers",
             "magnitude", scope="global", reference=_ZHU_GUPTA),
    _pruning("global_saliency", "gradual pruning by abs(w * grad), one threshold over all sparse layers",
             "saliency", scope="global", reference=_ZHU_GUPTA),
    _pruning("ste_magnitude", "straight-through magnitude pruning: dense weights train, the forward "
             "pass keeps the largest abs(w) (pruned weights can come back)", "magnitude", straight_through=True,
             prunes_from_all=True, reference="Bengio et al. 2013 (STE) on " + _ZHU_GUPTA),
    _pruning("ste_random", "straight-through random pruning: dense weights train, the forward pass "
             "uses a nested random mask", "random", straight_through=True,
             reference="Bengio et al. 2013 (STE) on " + _ZHU_GUPTA),
)}
#: The method names, in registry order (``sparse.method``'s choices).
METHODS = tuple(ALGORITHMS)
#: The pruning-from-dense methods (Zhu & Gupta's schedule: ``sparse.prune_*_fraction``).
PRUNING_METHODS = tuple(n for n, a in ALGORITHMS.items() if a.is_pruning)


def get_algorithm(name: str) -> Algorithm:
    """The registry entry of ``name``; ValueError listing the names for an unknown one."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown sparse method {name!r}; allowed: {', '.join(METHODS)}")
    return ALGORITHMS[name]


def algorithms_table() -> str:
    """A Markdown table of the registry (README, ``--help``)."""
    lines = ["| method | masks | drop / prune by | grow by | scope | straight-through | structures | what |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a in ALGORITHMS.values():
        lines.append(f"| `{a.name}` | {a.schedule} | {a.drop_score or '-'} | {a.grow_score or '-'} | {a.scope} | "
                     f"{'yes' if a.straight_through else 'no'} | {', '.join(a.supports_structures)} | {a.description} |")
    return "\n".join(lines)
