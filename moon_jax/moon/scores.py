"""OOD scores for a K+1 MOON model and for plain K-class models (higher = more in-distribution).

All scores are computed on the host in float64 from the logits: a float32 softmax saturates at
exactly 1.0 for confident sparse networks, and the resulting ties distort FPR@95
(``ood_evaluation_notes.md``, section 1.1).

* :func:`moon_msp` (the default for MOON, as the reference evaluates it,
  ``openood/postprocessors/base_postprocessor.py``): the softmax over all K+1 outputs, then the
  maximum over the first K. The unknown output works by taking probability mass from the known
  classes.
* :func:`msp`: maximum softmax probability over the first K logits alone (Hendrycks & Gimpel
  2017); for a plain K-class model this is the standard MSP.
* :func:`known_probability`: ``1 - p_unknown`` of the softmax over K+1.
* :func:`energy`: ``T * logsumexp(z_1..K / T)`` over the first K logits (Liu et al. 2020), T=1.

The predicted class is always the argmax over the first K logits (:func:`predict`).
"""
from __future__ import annotations

import numpy as np

from moon_jax.metrics.calibration import log_softmax64 as log_softmax

MOON_SCORES = ("moon_msp", "msp", "known_probability", "energy")


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


def known_probability(logits, num_known: int) -> np.ndarray:
    """``1 - p_unknown`` with the softmax over all K+1 outputs (needs a K+1 model)."""
    x = _as64(logits)
    if x.shape[1] != num_known + 1:
        raise ValueError(f"known_probability needs K+1 = {num_known + 1} outputs, got {x.shape[1]}")
    return -np.expm1(log_softmax(x)[:, -1])


def energy(logits, num_known: int, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(z_1..K / T)`` of the first K logits."""
    x = _as64(logits)[:, :num_known] / temperature
    m = x.max(axis=1)
    return temperature * (m + np.log(np.exp(x - m[:, None]).sum(axis=1)))


def predict(logits, num_known: int) -> np.ndarray:
    """Predicted class: argmax over the first K logits."""
    return _as64(logits)[:, :num_known].argmax(axis=1)


def score(name: str, logits, num_known: int) -> np.ndarray:
    """The score called ``name`` (one of :data:`MOON_SCORES`)."""
    functions = {"moon_msp": moon_msp, "msp": msp, "known_probability": known_probability, "energy": energy}
    if name not in functions:
        raise ValueError(f"unknown score {name!r}; allowed: {', '.join(MOON_SCORES)}")
    return functions[name](logits, num_known)


def default_scores(has_unknown: bool) -> tuple[str, ...]:
    """Scores reported by default: all four for a K+1 model, MSP and energy otherwise."""
    return MOON_SCORES if has_unknown else ("msp", "energy")
