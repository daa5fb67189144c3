"""Every OOD score moon-jax reports, one record each: the registry the evaluation loops over.

A score is a :class:`OODScore`: its name, its kind (what the evaluation must compute before it
can be scored), the function that turns one evaluated set into scores, the one-line description
the reports print, and the heads it applies to and is a default for. :data:`SCORES` lists them
in the order reports show them; adding a score is adding one entry there (its function lives in
:mod:`moon_jax.moon.scores` when it reads logits only, in
:mod:`moon_jax.evaluation.postprocessors` when it needs the network or its features).

Kinds (:data:`KINDS`):

* ``logits`` -- a function of the logits alone;
* ``model`` -- needs the network itself: ODIN scores the logits of its perturbed input;
* ``features`` -- needs the penultimate features and statistics of the ID training set's
  features (:func:`moon_jax.evaluation.postprocessors.fit_feature_statistics`).

Every score is "higher = more in-distribution" and float64 (see the two modules above for why).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from moon_jax.evaluation import postprocessors as pp
from moon_jax.moon import scores as logit_scores

#: The head of a model with MOON's unknown output (K+1 outputs) and of a plain classifier (K).
MOON_HEAD = "K+1"
PLAIN_HEAD = "K"
BOTH_HEADS = frozenset({MOON_HEAD, PLAIN_HEAD})
HEAD_NAMES = {MOON_HEAD: "K+1 (MOON)", PLAIN_HEAD: "plain K-class"}
KINDS = ("logits", "model", "features")


class SetOutputs(NamedTuple):
    """What the network gives for one evaluated set (float32 arrays, one row per image).

    Attributes:
      logits: (N, C) logits.
      features: (N, D) penultimate features; ``None`` when no feature score is evaluated.
      odin_logits: (N, C) logits of ODIN's perturbed input; ``None`` without ``odin``.
    """

    logits: np.ndarray
    features: Optional[np.ndarray] = None
    odin_logits: Optional[np.ndarray] = None


class ScoreContext(NamedTuple):
    """What every set is scored with: K, and what the model and feature scores were fitted to.

    Attributes:
      num_known: K.
      head: ``(kernel (D, C), bias (C,))`` of the classifier (ReAct recomputes logits).
      statistics: the ID training features' :class:`~moon_jax.evaluation.postprocessors.FeatureStatistics`.
      knn_k: KNN's neighbour rank.
    """

    num_known: int
    head: Optional[tuple] = None
    statistics: Optional[pp.FeatureStatistics] = None
    knn_k: int = pp.KNN_K


@dataclasses.dataclass(frozen=True)
class OODScore:
    """One OOD score.

    Attributes:
      name: the name in configs, ``--scores`` and eval.json.
      kind: one of :data:`KINDS`.
      compute: ``(SetOutputs, ScoreContext) -> (N,) float64 scores``.
      description: one line for captions: what it is and where it comes from.
      heads: the heads it can be computed for (:data:`MOON_HEAD`, :data:`PLAIN_HEAD`).
      default_for: the heads whose default score list includes it.
    """

    name: str
    kind: str
    compute: Callable[[SetOutputs, ScoreContext], np.ndarray]
    description: str
    heads: frozenset = BOTH_HEADS
    default_for: frozenset = BOTH_HEADS


def _of_logits(function: Callable[[np.ndarray, int], np.ndarray]) -> Callable[[SetOutputs, ScoreContext], np.ndarray]:
    """A logit score ``function(logits, K)`` as a registry ``compute``."""
    return lambda outputs, context: function(outputs.logits, context.num_known)


def _odin(outputs: SetOutputs, context: ScoreContext) -> np.ndarray:
    return pp.odin_score(outputs.odin_logits, context.num_known)


def _mahalanobis(outputs: SetOutputs, context: ScoreContext) -> np.ndarray:
    stats = context.statistics
    return pp.mahalanobis_score(outputs.features, stats.class_means, stats.precision)


def _knn(outputs: SetOutputs, context: ScoreContext) -> np.ndarray:
    return pp.knn_score(outputs.features, context.statistics.bank, context.knn_k)


def _react(outputs: SetOutputs, context: ScoreContext) -> np.ndarray:
    kernel, bias = context.head
    return pp.react_score(outputs.features, context.statistics.react_threshold, kernel, bias, context.num_known)


#: Every score, in the order reports list them; the first default of a head is its primary score.
SCORES = (
    OODScore("moon_msp", "logits", _of_logits(logit_scores.moon_msp),
             "softmax over all K+1 outputs, max over the first K (MOON reference)", default_for=frozenset({MOON_HEAD})),
    OODScore("msp", "logits", _of_logits(logit_scores.msp),
             "max softmax of the first K logits (Hendrycks & Gimpel 2017)"),
    OODScore("known_probability", "logits", _of_logits(logit_scores.known_probability),
             "1 - p(unknown) of the K+1 softmax (MOON)", heads=frozenset({MOON_HEAD}), default_for=frozenset({MOON_HEAD})),
    OODScore("max_logit", "logits", _of_logits(logit_scores.max_logit),
             "max of the first K logits (Hendrycks et al. 2022)"),
    OODScore("energy", "logits", _of_logits(logit_scores.energy),
             "logsumexp of the first K logits, T=1 (Liu et al. 2020)"),
    OODScore("odin", "model", _odin,
             f"max softmax at T={pp.ODIN_TEMPERATURE:g} after an eps={pp.ODIN_EPSILON} input perturbation "
             "(Liang et al. 2018)"),
    OODScore("mahalanobis", "features", _mahalanobis,
             "max over classes of -Mahalanobis^2 to train class means, shared covariance (Lee et al. 2018, OpenOOD mds)"),
    OODScore("knn", "features", _knn,
             f"-distance to the {pp.KNN_K}th nearest normalised train feature (Sun et al. 2022)"),
    OODScore("react", "features", _react,
             f"energy after clipping features at the {pp.REACT_PERCENTILE:g}th train percentile (Sun et al. 2021)"),
)
#: name -> record.
BY_NAME = {score.name: score for score in SCORES}
#: Every score name, in the order reports list them.
ALL_SCORES = tuple(BY_NAME)


def head_of(has_unknown: bool) -> str:
    """:data:`MOON_HEAD` for a model with the unknown output, else :data:`PLAIN_HEAD`."""
    return MOON_HEAD if has_unknown else PLAIN_HEAD


def default_scores(has_unknown: bool, kinds: Sequence[str] = KINDS) -> tuple[str, ...]:
    """The scores reported by default for the model's head, among ``kinds``; the first is the
    primary score (``moon_msp`` for a K+1 model, ``msp`` for a plain K model)."""
    head = head_of(has_unknown)
    return tuple(s.name for s in SCORES if head in s.default_for and s.kind in kinds)


def check_names(names: Sequence[str]) -> None:
    """Raises ``ValueError`` naming an unknown score or one listed twice: what can be checked
    before the model is known (``eval.py --scores``)."""
    for name in names:
        if name not in BY_NAME:
            raise ValueError(f"unknown OOD score {name!r}; allowed: {', '.join(ALL_SCORES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"OOD scores listed twice: {', '.join(names)}")


def validate_scores(names: Optional[Sequence[str]], has_unknown: bool) -> tuple[str, ...]:
    """``names`` checked (or the defaults when empty) for a model with or without the unknown
    output; raises ``ValueError`` naming a bad one."""
    names = tuple(names) if names else default_scores(has_unknown)
    check_names(names)
    head = head_of(has_unknown)
    for name in names:
        if head not in BY_NAME[name].heads:
            heads = " or ".join(HEAD_NAMES[h] for h in sorted(BY_NAME[name].heads))
            raise ValueError(f"score {name!r} needs a {heads} model")
    return names


def kinds_of(names: Sequence[str]) -> set[str]:
    """The kinds of the scores ``names``: what the evaluation must compute for them."""
    return {BY_NAME[name].kind for name in names}


def score_arrays(
    names: Sequence[str], id_outputs: SetOutputs, ood_outputs: Mapping[str, SetOutputs], context: ScoreContext
) -> dict:
    """``{name: {'id': (N,) scores, 'ood': {set: scores}}}``: every score of ``names`` on the ID
    test set and on every OOD set."""
    return {
        name: {
            "id": BY_NAME[name].compute(id_outputs, context),
            "ood": {s: BY_NAME[name].compute(outputs, context) for s, outputs in ood_outputs.items()},
        }
        for name in names
    }
