"""OOD scores read off the logits alone, for K+1 MOON models and plain K-class models.

Every score is "higher = more in-distribution" and is computed on the host in float64: a float32
softmax saturates at exactly 1.0 for confident sparse networks, and the resulting ties distort
FPR@95 (``tests/test_moon.py``, ``test_scores_float64_avoid_saturation_ties``). For a K+1
model every score except ``moon_msp`` and ``known_probability`` uses the first K logits only (the
unknown output left out), so that the same score means the same thing for a MOON model and for
its baseline.

* :func:`moon_msp` (the default for MOON, as the reference evaluates it with
  OpenOOD's base postprocessor): the softmax over all K+1 outputs, then the
  maximum over the first K. The unknown output works by taking probability mass from the known
  classes.
* :func:`msp`: maximum softmax probability of the first K logits (Hendrycks & Gimpel 2017, "A
  Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks",
  ICLR; OpenOOD ``msp``); for a plain K-class model this is the standard MSP.
* :func:`known_probability`: ``1 - p_unknown`` of the softmax over K+1.
* :func:`max_logit`: the largest of the first K logits (Hendrycks et al. 2022, "Scaling
  Out-of-Distribution Detection for Real-World Settings", ICML; OpenOOD ``mls``).
* :func:`energy`: ``T * logsumexp(z_1..K / T)`` over the first K logits, T = 1 (Liu et al. 2020,
  "Energy-based Out-of-distribution Detection", NeurIPS; OpenOOD ``ebo``).
* :func:`msp_at_temperature`: max of ``softmax(z_1..K / T)``; ODIN's score once its input
  perturbation is done (:mod:`moon_jax.evaluation.postprocessors`).

Scores that need the network itself (ODIN) or its penultimate features (Mahalanobis, KNN,
ReAct) live in :mod:`moon_jax.evaluation.postprocessors`; the registry of every score the
evaluation reports (name, kind, function, description, defaults) is
:mod:`moon_jax.evaluation.score_registry`. These functions stay pure and know nothing of it.

The predicted class is always the argmax over the first K logits (:func:`predict`).
"""
from __future__ import annotations

import numpy as np

from moon_jax.metrics.calibration import log_softmax64 as log_softmax

def _as64(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {x.shape}")
    return x


def moon_msp(logits, num_known: int) -> np.ndarray:
    """max over the first K of softmax over all K+1 outputs (the reference's MOON score)."""
    return np.exp(log_softmax(logits)[:, :num_known].max(axis=1))


def msp(logits, num_known: int) -> np.ndarray:
    """Maximum softmax probability of the first K logits (the unknown output left out)."""
    return np.exp(log_softmax(_as64(logits)[:, :num_known]).max(axis=1))


def msp_at_temperature(logits, num_known: int, temperature: float) -> np.ndarray:
    """max of ``softmax(z_1..K / T)``: MSP of temperature-scaled logits (ODIN's final score).

    At ODIN's T = 1000 every probability is close to 1/K, so the score must be computed in
    float64 from the logits (float32 probabilities would tie).
    """
    return np.exp(log_softmax(_as64(logits)[:, :num_known] / float(temperature)).max(axis=1))


def known_probability(logits, num_known: int) -> np.ndarray:
    """``1 - p_unknown`` with the softmax over all K+1 outputs (needs a K+1 model)."""
    x = _as64(logits)
    if x.shape[1] != num_known + 1:
        raise ValueError(f"known_probability needs K+1 = {num_known + 1} outputs, got {x.shape[1]}")
    return -np.expm1(log_softmax(x)[:, -1])


def max_logit(logits, num_known: int) -> np.ndarray:
    """MaxLogit: the largest of the first K logits (no softmax, so it does not saturate)."""
    return _as64(logits)[:, :num_known].max(axis=1)


def energy(logits, num_known: int, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(z_1..K / T)`` of the first K logits."""
    x = _as64(logits)[:, :num_known] / temperature
    m = x.max(axis=1)
    return temperature * (m + np.log(np.exp(x - m[:, None]).sum(axis=1)))


def predict(logits, num_known: int) -> np.ndarray:
    """Predicted class: argmax over the first K logits."""
    return _as64(logits)[:, :num_known].argmax(axis=1)


#: The logit scores of this module by name (for :func:`score`).
LOGIT_FUNCTIONS = {f.__name__: f for f in (moon_msp, msp, known_probability, max_logit, energy)}


def score(name: str, logits, num_known: int) -> np.ndarray:
    """The logit score called ``name`` (a key of :data:`LOGIT_FUNCTIONS`), for callers that pick
    a score by name without the evaluation package."""
    if name not in LOGIT_FUNCTIONS:
        raise ValueError(f"unknown logit score {name!r}; allowed: {', '.join(LOGIT_FUNCTIONS)}")
    return LOGIT_FUNCTIONS[name](logits, num_known)
