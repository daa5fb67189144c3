"""Classification and calibration metrics (accuracy, ECE, NLL, Brier) in float64 NumPy.

Two ECE variants live here, on purpose:

* :func:`expected_calibration_error` / :func:`calibration_bins` -- moon-jax's default, the
  convention of Guo et al. 2017 ("On Calibration of Modern Neural Networks", ICML), as in
  their released code (gpleiss/temperature_scaling): 15 equal-width bins on [0, 1], a sample
  belongs to the bin (lo, hi], ECE = sum_b (n_b / N) |acc_b - conf_b|.
* :func:`reference_ece` -- the variant computed by the MOON reference code
  (github.com/StevenBoys/MOON, commit 22c1841, ``OODEvaluator.eval_acc``,
  inherited from OpenOOD v1): 10 bins [lo, hi),
  a confidence of exactly 1.0 is silently dropped, weights renormalised over the binned
  samples.  Kept only so that numbers can be compared with the paper's.

Everything is computed in float64.  Inputs may be NumPy or JAX arrays (anything
``np.asarray`` accepts); nothing here is traced or jitted -- these are evaluation-time
metrics on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import brentq

__all__ = [
    "DEFAULT_ECE_BINS",
    "REFERENCE_ECE_BINS",
    "CalibrationBins",
    "log_softmax64",
    "calibration_bins",
    "expected_calibration_error",
    "reference_ece",
    "negative_log_likelihood",
    "brier_score",
    "classification_metrics",
    "top1_confidence",
    "TEMPERATURE_FIT_FRACTION",
    "TEMPERATURE_SPLIT_SEED",
    "temperature_nll_gradient",
    "fit_temperature",
    "temperature_split",
    "temperature_scaling",
]

#: Share of the ID test set that temperature scaling is fitted on (the rest is evaluated).
TEMPERATURE_FIT_FRACTION = 0.2
#: Seed of the fixed random fit / evaluation split of the ID test set.
TEMPERATURE_SPLIT_SEED = 0
#: Range searched for the temperature (the fit stops at a bound if the optimum lies beyond).
TEMPERATURE_BOUNDS = (0.01, 100.0)

#: Number of ECE bins of moon-jax's default ECE (Guo et al. 2017).
DEFAULT_ECE_BINS = 15
#: Number of ECE bins of the MOON reference evaluator (``eval_acc(num_bins=10)``).
REFERENCE_ECE_BINS = 10


# ---------------------------------------------------------------------------------------
# input helpers
# ---------------------------------------------------------------------------------------


def _as_2d_float64(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_samples, num_classes); got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty; got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _as_labels(labels, num_samples: int, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != num_samples:
        raise ValueError(f"labels must have shape ({num_samples},); got {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        yi = y.astype(np.int64)
        if not np.array_equal(yi, y):
            raise ValueError("labels must be integer class indices")
        y = yi
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got range [{y.min()}, {y.max()}]"
        )
    return y


def _conf_correct(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    corr = np.asarray(correct).reshape(-1)
    if conf.shape != corr.shape:
        raise ValueError(
            f"confidences and correct must have the same length; got {conf.shape[0]} "
            f"and {corr.shape[0]}"
        )
    if conf.size == 0:
        raise ValueError("confidences must be non-empty")
    if np.isnan(conf).any():
        raise ValueError("confidences contain NaN")
    if conf.min() < 0.0 or conf.max() > 1.0:
        raise ValueError(
            f"confidences must lie in [0, 1]; got range [{conf.min()}, {conf.max()}]"
        )
    return conf, corr.astype(np.float64)


def _bin_edges(n_bins: int) -> np.ndarray:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins}")
    # np.linspace, as both reference codes (torch.linspace / np.linspace). NB the interior
    # edges are not the decimal values: for 10 bins edge 3 is 0.30000000000000004, edge 6 is
    # 0.6000000000000001, edge 7 is 0.7000000000000001; 0.5 and 1.0 are exact.
    return np.linspace(0.0, 1.0, int(n_bins) + 1)


def _binned(conf: np.ndarray, corr: np.ndarray, n_bins: int, closed: str) -> "CalibrationBins":
    """The single binning routine behind every ECE in this module.

    ``closed='right'``: bins (lo, hi] (Guo et al.), with confidence 0 put in the first bin,
    so every sample in [0, 1] is counted.  ``closed='left'``: bins [lo, hi) (MOON reference /
    OpenOOD v1); a confidence of exactly 1.0 (>= the last edge) falls in no bin and is
    dropped -- it is counted in ``num_dropped``.
    """
    edges = _bin_edges(n_bins)
    nb = edges.size - 1
    if closed == "right":
        # searchsorted(side='left') = i with edges[i-1] < x <= edges[i]  ->  bin i-1.
        idx = np.searchsorted(edges, conf, side="left") - 1
        idx = np.clip(idx, 0, nb - 1)  # x == 0 -> first bin
    elif closed == "left":
        # searchsorted(side='right') = i with edges[i-1] <= x < edges[i]  ->  bin i-1.
        idx = np.searchsorted(edges, conf, side="right") - 1  # x == 1.0 -> nb (no bin)
    else:  # pragma: no cover - internal
        raise ValueError(closed)
    keep = (idx >= 0) & (idx < nb)
    idx_k = idx[keep]
    counts = np.bincount(idx_k, minlength=nb).astype(np.int64)
    sum_conf = np.bincount(idx_k, weights=conf[keep], minlength=nb)
    sum_corr = np.bincount(idx_k, weights=corr[keep], minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / np.maximum(counts, 1), np.nan)
        acc = np.where(counts > 0, sum_corr / np.maximum(counts, 1), np.nan)
    return CalibrationBins(
        edges=edges,
        counts=counts,
        mean_confidence=mean_conf,
        accuracy=acc,
        num_dropped=int(conf.size - keep.sum()),
    )


def _ece_from_bins(bins: "CalibrationBins") -> float:
    """sum_b (n_b / sum_b n_b) |acc_b - conf_b| over non-empty bins; 0 if no sample is binned."""
    total = bins.counts.sum()
    if total == 0:
        return 0.0
    nz = bins.counts > 0
    gaps = np.abs(bins.accuracy[nz] - bins.mean_confidence[nz])
    return float(np.sum(bins.counts[nz] / total * gaps))


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------


class CalibrationBins(NamedTuple):
    """Per-bin statistics for a reliability diagram (and the ECE computed from them).

    Attributes:
      edges: (n_bins + 1,) bin edges, ``np.linspace(0, 1, n_bins + 1)``.
      counts: (n_bins,) number of samples per bin (int64).
      mean_confidence: (n_bins,) mean confidence per bin; NaN for empty bins.
      accuracy: (n_bins,) share of correct predictions per bin; NaN for empty bins.
      num_dropped: samples that fell in no bin (always 0 for the default (lo, hi]
        convention; the number of confidences equal to 1.0 for the reference [lo, hi) one).
    """

    edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    num_dropped: int


def log_softmax64(logits) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64.

    Why: calibration and OOD scores built from softmax probabilities saturate at exactly
    1.0 in float32 for logit gaps above ~17 (in float64 only above ~37), which creates ties
    and distorts ECE / FPR@95 (see the OpenOOD notes).  Computing ``z - max(z) -
    log(sum(exp(z - max(z))))`` in float64 keeps log-probabilities finite and accurate;
    exponentiate only when a probability is really needed.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0 or z.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last axis; got shape {z.shape}")
    m = np.max(z, axis=-1, keepdims=True)
    if not np.all(np.isfinite(m)):
        raise ValueError("logits must be finite (got NaN or an infinite row maximum)")
    shifted = z - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def calibration_bins(confidences, correct, n_bins: int = DEFAULT_ECE_BINS) -> CalibrationBins:
    """Reliability-diagram data under the Guo et al. 2017 binning convention.

    ``n_bins`` equal-width bins on [0, 1] (edges ``np.linspace(0, 1, n_bins + 1)``).  A
    sample belongs to the bin (lo, hi]: lower edge exclusive, upper edge inclusive, so a
    confidence of exactly 1.0 lands in the last bin (this happens: max-softmax saturates at
    1.0 even in float64 for logit gaps above ~37).  A confidence of exactly 0 (impossible
    for a max-softmax, which is >= 1/K) is put in the first bin rather than dropped, so every
    sample counts.  Membership is decided by exact float comparison with the linspace edges
    (e.g. with 10 bins, 0.5 is an exact edge and goes to bin (0.4, 0.5]; 0.3 lies just below
    the edge 0.30000000000000004 and goes to bin (0.2, 0.30000000000000004]).

    This is the one binning implementation used by :func:`expected_calibration_error`.

    Args:
      confidences: (N,) predicted confidence in [0, 1] (usually the max softmax probability).
      correct: (N,) bool / {0, 1}: whether the prediction whose confidence is given was right.
      n_bins: number of bins (default 15, as Guo et al.).

    Returns:
      :class:`CalibrationBins` (edges, counts, mean_confidence, accuracy, num_dropped=0).
    """
    conf, corr = _conf_correct(confidences, correct)
    return _binned(conf, corr, n_bins, closed="right")


def expected_calibration_error(confidences, correct, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """Expected Calibration Error, Guo et al. 2017 convention (moon-jax default).

    ECE = sum_b (n_b / N) |acc_b - conf_b| over the bins of :func:`calibration_bins`
    ((lo, hi], equal width, 15 by default), where conf_b is the mean confidence and acc_b the
    accuracy in bin b; empty bins contribute 0.  N is the number of evaluated samples (all of
    them are binned).  Pass in-distribution test samples only -- never OOD rows.

    Why this convention: it is the one of the paper that introduced ECE for deep nets
    (Guo et al. 2017, code gpleiss/temperature_scaling) and of torchmetrics' default; it
    counts confidence-1.0 samples, unlike the OpenOOD v1 / MOON evaluator
    (:func:`reference_ece`).
    """
    return _ece_from_bins(calibration_bins(confidences, correct, n_bins))


def reference_ece(confidences, correct, n_bins: int = REFERENCE_ECE_BINS) -> float:
    """ECE exactly as the MOON reference evaluator computes it (for comparison only).

    Source: github.com/StevenBoys/MOON @ 22c1841, its OOD evaluator's
    ``OODEvaluator.eval_acc`` (inherited from OpenOOD v1), which reports the paper's ECE.
    What that code does, precisely:

    * edges ``np.linspace(0, 1, num_bins + 1)`` with ``num_bins = 10`` (its docstring says 15,
      the default argument and the call site use 10);
    * sample i is in bin b iff ``edges[b] <= conf_i < edges[b + 1]`` -- bins [lo, hi), lower
      edge inclusive, upper exclusive;
    * hence a confidence of **exactly 1.0 falls in no bin and is silently dropped** (and so
      would anything outside [0, 1), which cannot happen for softmax outputs);
    * per non-empty bin: mean confidence and accuracy (prediction == label); empty bins are
      removed;
    * ECE = ``np.average(|mean_conf - acc|, weights=n_b / sum(n_b))`` -- the weights are
      **normalised by the number of binned samples** (N minus the dropped confidence-1.0
      samples), not by N.  So dropped samples vanish from numerator *and* denominator; if
      every sample is dropped the code returns 0.0.
    * In the reference the confidences are float32 ``torch.softmax`` outputs (so saturation at
      1.0 is frequent) compared against float64 edges; the comparison itself is exact, so
      passing float32 confidences here (they are widened to float64 exactly) reproduces its
      bin membership exactly.  Its per-bin means are then float32 ``np.mean``s; ours are
      float64, so on float32 inputs the value can differ from the reference's in the 8th
      digit (checked: <= 5e-8 on random cases; identical to ~1e-16 on float64 inputs).
      Its accuracy, reported alongside, counts all samples (see
      :func:`classification_metrics`).

    Args:
      confidences: (N,) confidence in [0, 1]; in the reference, max over all K+1 of the softmax
        over all K+1 outputs.
      correct: (N,) whether argmax (over all K+1 in the reference) equals the label.
      n_bins: 10 in the reference.

    Returns:
      The reference ECE as a float in [0, 1] (not x100).
    """
    conf, corr = _conf_correct(confidences, correct)
    return _ece_from_bins(_binned(conf, corr, n_bins, closed="left"))


def negative_log_likelihood(log_probs, labels) -> float:
    """Mean negative log-likelihood, -(1/N) sum_i log p(y_i | x_i).

    Takes log-probabilities (e.g. from :func:`log_softmax64`) rather than probabilities so
    that saturated predictions keep an accurate, finite loss.  A proper scoring rule; used
    with ECE as a calibration measure (Guo et al. 2017; Ovadia et al. 2019).
    """
    lp = _as_2d_float64(log_probs, "log_probs")
    y = _as_labels(labels, lp.shape[0], lp.shape[1])
    return float(-np.mean(lp[np.arange(lp.shape[0]), y]))


def brier_score(probs, labels) -> float:
    """Multi-class Brier score: mean over samples of sum_k (p_ik - 1[y_i = k])^2.

    Brier 1950's original multi-category definition (range [0, 2]), as used by Ovadia et al.
    2019 ("Can you trust your model's uncertainty?").  Not divided by the number of classes.
    """
    p = _as_2d_float64(probs, "probs")
    y = _as_labels(labels, p.shape[0], p.shape[1])
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _float32_softmax(logits: np.ndarray) -> np.ndarray:
    """softmax computed in float32 (approximating the reference's torch.softmax), as float64."""
    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float64)


def classification_metrics(
    logits, labels, num_known: int | None = None, *, n_bins: int = DEFAULT_ECE_BINS,
    reference_float32: bool = False
) -> dict[str, float]:
    """Accuracy and calibration of an in-distribution test set, for K or K+1 (MOON) heads.

    Decision (moon-jax default): a K+1 model is
    judged as the K-class classifier it contains.  With ``num_known = K`` and ``logits`` of
    shape (N, K+1):

    * ``acc``: top-1 accuracy of argmax over the first K logits (the extra "unknown" logit can
      never be predicted; this is also how the reference's OOD csv predicts labels).
    * ``ece`` (``n_bins`` bins, 15 by default, Guo et al. 2017 (lo, hi]), ``nll``, ``brier``:
      from the softmax of the first K logits only, i.e. the known-class probabilities
      renormalised to sum to 1.  The calibration numbers are therefore those of a K-class
      classifier, directly comparable with a plain K-output model; the unknown logit's mass is
      an OOD signal, not a prediction.
      The ECE confidence is the max of that K-class softmax; "correct" is the ``acc`` criterion.
    * ``acc_reference``, ``ece_reference``: what the MOON reference evaluator
      (``eval_acc``) reports -- softmax over ALL K+1 outputs, prediction = argmax over all
      K+1 (an unknown-class prediction counts as wrong), confidence = max over all K+1, ECE by
      :func:`reference_ece` (10 bins [lo, hi), confidence 1.0 dropped, renormalised).
    * ``unknown_rate``: share of samples whose argmax over all outputs is an extra (>= K)
      output (0.0 for a plain model).

    For a plain K model (``num_known`` None or equal to ``logits.shape[1]``) ``acc_reference
    == acc`` and the two ECEs differ only in binning.

    Args:
      logits: (N, C) logits of ID test samples; C = K or K+1.
      labels: (N,) ints in [0, K).
      num_known: K, the number of known classes (default: C).
      n_bins: bins of ``ece`` (15 by default, Guo et al. 2017); the reference variant keeps 10.
      reference_float32: compute the reference variants' softmax in float32, as the reference
        (PyTorch float32) does, so that confidences that saturate to 1.0 in float32 are
        dropped from ``ece_reference`` as they are there.  Default False: float64 softmax
        (fewer samples at exactly 1.0; numbers can then differ slightly from the reference).

    Returns:
      dict with float values ``acc, ece, nll, brier, acc_reference, ece_reference,
      unknown_rate`` -- fractions, not x100.
    """
    z = _as_2d_float64(logits, "logits")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    n, c = z.shape
    k = c if num_known is None else int(num_known)
    if not 1 <= k <= c:
        raise ValueError(f"num_known must be in [1, {c}]; got {num_known}")
    y = _as_labels(labels, n, k)

    # --- moon-jax default: the K-class classifier inside the head -------------------------
    zk = z[:, :k]
    logp = log_softmax64(zk)
    pred = np.argmax(zk, axis=1)
    correct = pred == y
    conf = np.exp(logp[np.arange(n), pred])  # = max of the K-class softmax
    probs = np.exp(logp)

    # --- MOON reference evaluator: softmax and argmax over all outputs --------------------
    probs_all = _float32_softmax(z) if reference_float32 else np.exp(log_softmax64(z))
    pred_all = np.argmax(probs_all, axis=1)
    correct_all = pred_all == y  # pred_all >= k can never equal a label < k
    conf_all = probs_all[np.arange(n), pred_all]

    return {
        "acc": float(np.mean(correct)),
        "ece": expected_calibration_error(conf, correct, n_bins),
        "nll": negative_log_likelihood(logp, y),
        "brier": brier_score(probs, y),
        "acc_reference": float(np.mean(correct_all)),
        "ece_reference": reference_ece(conf_all, correct_all, REFERENCE_ECE_BINS),
        "unknown_rate": float(np.mean(np.argmax(z, axis=1) >= k)),
    }


def top1_confidence(logits, labels, num_known: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)`` of the K-class classifier, the inputs of a reliability diagram.

    Confidence = max of the float64 softmax of the first K logits; correct = argmax of the
    first K logits equals the label -- the quantities behind ``ece`` of
    :func:`classification_metrics`.
    """
    z = _as_2d_float64(logits, "logits")
    k = z.shape[1] if num_known is None else int(num_known)
    y = _as_labels(labels, z.shape[0], k)
    logp = log_softmax64(z[:, :k])
    pred = np.argmax(z[:, :k], axis=1)
    return np.exp(logp[np.arange(z.shape[0]), pred]), pred == y


# ---------------------------------------------------------------------------------------
# temperature scaling (Guo et al. 2017)
# ---------------------------------------------------------------------------------------


def temperature_nll_gradient(logits, labels, inverse_temperature: float) -> float:
    """d NLL / d beta of the logits scaled by ``beta = 1 / T``.

    NLL(beta) = mean_i [logsumexp(beta z_i) - beta z_{i, y_i}] is convex in beta (a log-sum-exp
    of linear functions minus a linear one), and its derivative mean_i [E_{p_beta}[z_i] -
    z_{i, y_i}] is non-decreasing, so the minimiser is the unique root of this function.
    """
    z = _as_2d_float64(logits, "logits")
    y = _as_labels(labels, z.shape[0], z.shape[1])
    p = np.exp(log_softmax64(float(inverse_temperature) * z))
    return float(np.mean(np.sum(p * z, axis=1) - z[np.arange(z.shape[0]), y]))


def fit_temperature(logits, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Temperature scaling ("On Calibration of Modern Neural Networks", ICML 2017) is the
    one-parameter post-hoc calibration that papers compare against: it changes confidences but
    not predictions (accuracy is unchanged). Guo et al. fit T with L-BFGS on a validation set;
    here the NLL is minimised exactly in beta = 1/T, where it is convex, by finding the root of
    its derivative (:func:`temperature_nll_gradient`) with Brent's method. If the minimum lies
    outside ``bounds`` (e.g. a training set classified perfectly, where the NLL keeps falling
    as T -> 0), the nearest bound is returned.

    Args:
      logits: (N, C) logits of the classifier to calibrate (pass the first K of a K+1 model).
      labels: (N,) ints in [0, C).
      bounds: (T_min, T_max) searched.

    Returns:
      The fitted temperature as a float.
    """
    z = _as_2d_float64(logits, "logits")
    y = _as_labels(labels, z.shape[0], z.shape[1])
    t_min, t_max = (float(b) for b in bounds)
    if not 0.0 < t_min < t_max:
        raise ValueError(f"bounds must satisfy 0 < T_min < T_max; got {bounds}")
    beta_lo, beta_hi = 1.0 / t_max, 1.0 / t_min
    g_lo = temperature_nll_gradient(z, y, beta_lo)
    g_hi = temperature_nll_gradient(z, y, beta_hi)
    if g_lo >= 0.0:
        return t_max
    if g_hi <= 0.0:
        return t_min
    beta = brentq(lambda b: temperature_nll_gradient(z, y, b), beta_lo, beta_hi, xtol=1e-14, rtol=1e-14, maxiter=200)
    return float(1.0 / beta)


def temperature_split(
    num_examples: int, fit_fraction: float = TEMPERATURE_FIT_FRACTION, seed: int = TEMPERATURE_SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random ``(fit, evaluate)`` split of ``range(num_examples)``, both sorted.

    ``round(fit_fraction * N)`` indices (at least 1, leaving at least 1) are drawn with
    ``np.random.default_rng(seed).permutation``; the others are the evaluation part.
    """
    n = int(num_examples)
    if n < 2:
        raise ValueError(f"temperature scaling needs at least 2 examples; got {n}")
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1); got {fit_fraction}")
    n_fit = min(max(int(round(fit_fraction * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit:])


def temperature_scaling(
    logits,
    labels,
    num_known: int | None = None,
    fit_fraction: float = TEMPERATURE_FIT_FRACTION,
    seed: int = TEMPERATURE_SPLIT_SEED,
    n_bins: int = DEFAULT_ECE_BINS,
) -> dict:
    """Temperature scaling as a calibration baseline, fitted and evaluated on disjoint ID images.

    The ID test set is split once at random (:func:`temperature_split`: ``fit_fraction`` = 20%
    to fit T, the other 80% to evaluate); T is fitted by :func:`fit_temperature` on the first K
    logits of the fit part; ACC / ECE / NLL / Brier of the model before and after scaling are
    both measured on the evaluation part, so the two rows are on the same images (they differ
    from the full-test-set numbers of :func:`classification_metrics`).

    Returns:
      ``{'temperature', 'fit_fraction', 'seed', 'num_fit', 'num_eval', 'uncalibrated':
      {acc, ece, nll, brier}, 'calibrated': {acc, ece, nll, brier}}`` (fractions).
    """
    z = _as_2d_float64(logits, "logits")
    k = z.shape[1] if num_known is None else int(num_known)
    zk = z[:, :k]
    y = _as_labels(labels, z.shape[0], k)
    fit, evaluate = temperature_split(z.shape[0], fit_fraction, seed)
    t = fit_temperature(zk[fit], y[fit])
    keys = ("acc", "ece", "nll", "brier")

    def summary(x):
        m = classification_metrics(x, y[evaluate], n_bins=n_bins)
        return {key: m[key] for key in keys}

    return {
        "temperature": t,
        "fit_fraction": float(fit_fraction),
        "seed": int(seed),
        "num_fit": int(fit.size),
        "num_eval": int(evaluate.size),
        "uncalibrated": summary(zk[evaluate]),
        "calibrated": summary(zk[evaluate] / t),
    }
