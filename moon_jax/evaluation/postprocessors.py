"""The OOD scores that need more than logits: the network itself (ODIN) or its features.

Scores ("postprocessors" in OpenOOD's vocabulary: Yang et al. 2022, "OpenOOD: Benchmarking
Generalized Out-of-Distribution Detection", NeurIPS Datasets & Benchmarks; Zhang et al. 2023,
v1.5) are "higher = more in-distribution". They come in three kinds; the registry of every score
(name, kind, function, description, defaults) is :mod:`moon_jax.evaluation.score_registry`:

* ``logits`` -- a NumPy float64 function of the logits (:mod:`moon_jax.moon.scores`):
  ``moon_msp``, ``msp``, ``known_probability``, ``max_logit``, ``energy``.
* ``model`` -- needs the network itself: ``odin`` (input gradients, :func:`odin_logits`).
* ``features`` -- needs the penultimate features of the evaluated images and statistics of the
  ID **training** set's features (:func:`fit_feature_statistics`): ``mahalanobis``, ``knn``,
  ``react``.

For a K+1 (MOON) model MSP, MaxLogit, energy, ODIN and ReAct use the first K logits (the unknown
output left out); Mahalanobis and KNN use the penultimate features, and Mahalanobis has one
Gaussian per known class. The definitions follow OpenOOD's implementations (read, not copied), with their default hyper-parameters:

* ODIN (Liang, Li & Srikant 2018, "Enhancing the Reliability of Out-of-distribution Image
  Detection in Neural Networks", ICLR; OpenOOD ``odin``): T = 1000, eps = 0.0014.
* Mahalanobis (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution
  Samples and Adversarial Attacks", NeurIPS), in OpenOOD's ``mds`` form: penultimate features
  only, no input pre-processing, no layer ensemble.
* KNN (Sun, Ming, Zhu & Li 2022, "Out-of-Distribution Detection with Deep Nearest Neighbors",
  ICML; OpenOOD ``knn``): k = 50 on L2-normalised features.
* ReAct (Sun, Guo & Li 2021, "ReAct: Out-of-distribution Detection With Rectified
  Activations", NeurIPS; OpenOOD ``react``): clip at the 90th percentile, then energy. It is
  the score of this set that interacts most with sparsity: sparse networks have fewer but
  larger activations.

Everything except :func:`odin_logits` (a JAX function meant to be jitted) is host-side NumPy in
float64.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from moon_jax.moon import scores as logit_scores

#: ODIN's temperature and input-perturbation size (Liang et al. 2018; OpenOOD's defaults).
ODIN_TEMPERATURE = 1000.0
ODIN_EPSILON = 0.0014
#: KNN's neighbour rank (Sun et al. 2022; OpenOOD's default).
KNN_K = 50
#: ReAct's clipping percentile of the ID activations (Sun et al. 2021; OpenOOD's default).
REACT_PERCENTILE = 90.0
#: At most this many ID training images (a fixed, seeded random subset) give the feature
#: statistics of Mahalanobis, KNN and ReAct.
TRAIN_FEATURE_EXAMPLES = 10_000
#: Seed of that subset.
TRAIN_FEATURE_SEED = 0


# --------------------------------------------------------------------------------- features
class FeatureStatistics(NamedTuple):
    """What the feature scores know about the ID training set (all float64).

    Attributes:
      class_means: (K, D) mean penultimate feature of each known class (NaN rows for classes
        absent from the training subset; they are skipped).
      precision: (D, D) pseudo-inverse of the shared covariance of class-centred features.
      bank: (M, D) L2-normalised training features (KNN's neighbours).
      react_threshold: ReAct's clipping value, the percentile of all training activations.
      num_train: M, the number of training images used.
    """

    class_means: np.ndarray
    precision: np.ndarray
    bank: np.ndarray
    react_threshold: float
    num_train: int


def _features64(features, name: str = "features") -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array; got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} contain NaN or inf")
    return f


def l2_normalise(features) -> np.ndarray:
    """Rows divided by their L2 norm plus 1e-10 (OpenOOD's KNN normaliser; an all-zero feature,
    possible after ReLU in a sparse net, stays zero instead of becoming NaN)."""
    f = _features64(features)
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-10)


def fit_class_gaussian(features, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision of one shared covariance (Lee et al. 2018).

    As OpenOOD's ``mds`` setup: the mean of each class's training features; the features of
    each class minus its mean, pooled, give one covariance estimated like scikit-learn's
    ``EmpiricalCovariance()`` (maximum likelihood, i.e. divided by N, around the pooled mean,
    which is zero up to rounding); its pseudo-inverse ``scipy.linalg.pinvh`` (the call
    ``EmpiricalCovariance`` makes) is the precision. The pseudo-inverse matters for sparse
    networks, whose dead ReLU units make the covariance singular.

    Returns:
      ``(class_means (K, D), precision (D, D))``; a class without training examples gets a NaN
      mean row (and no say in the score).
    """
    f = _features64(features, "train features")
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != f.shape[0]:
        raise ValueError(f"{f.shape[0]} features but {y.shape[0]} labels")
    means = np.full((num_classes, f.shape[1]), np.nan)
    centred = np.empty_like(f)
    for c in range(num_classes):
        rows = y == c
        if rows.any():
            means[c] = f[rows].mean(axis=0)
            centred[rows] = f[rows] - means[c]
    known = (y >= 0) & (y < num_classes)
    centred = centred[known]
    centred = centred - centred.mean(axis=0)
    covariance = centred.T @ centred / centred.shape[0]
    return means, scipy.linalg.pinvh(covariance, check_finite=False)


def mahalanobis_score(features, class_means, precision) -> np.ndarray:
    """``max_c -(f - mu_c)^T P (f - mu_c)``: minus the squared Mahalanobis distance to the
    closest class mean (OpenOOD ``mds``). Classes with a NaN mean are skipped.

    Computed as ``f^T P f - 2 f^T P mu_c + mu_c^T P mu_c`` with two matrix products (in float64;
    the cost is N x D x (D + K) instead of N x K x D^2 for the direct form).
    """
    f = _features64(features)
    means = np.asarray(class_means, dtype=np.float64)
    means = means[~np.isnan(means).any(axis=1)]
    if means.shape[0] == 0:
        raise ValueError("no class has a mean: the training subset has no labelled example")
    p = np.asarray(precision, dtype=np.float64)
    fp = f @ p
    distances = (
        np.sum(fp * f, axis=1)[:, None] - 2.0 * fp @ means.T + np.sum((means @ p) * means, axis=1)[None, :]
    )
    return -distances.min(axis=1)


def knn_score(features, bank, k: int = KNN_K, chunk: int = 1024) -> np.ndarray:
    """``-(Euclidean distance to the k-th nearest neighbour in bank)`` of L2-normalised features.

    ``bank`` holds the L2-normalised ID training features (:func:`l2_normalise`). Brute force,
    ``chunk`` query rows at a time, in float64. OpenOOD's faiss ``IndexFlatL2`` returns squared
    distances and scores ``-d^2``; that is a monotone transform of this score, so every OOD
    metric (AUROC, FPR95, AUPR) is the same; the distance itself is the paper's score.
    """
    q = l2_normalise(features)
    b = _features64(bank, "bank")
    if not 1 <= k <= b.shape[0]:
        raise ValueError(f"k = {k} needs 1 <= k <= {b.shape[0]} (the bank size)")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"features have {q.shape[1]} dimensions, the bank {b.shape[1]}")
    bb = np.sum(b * b, axis=1)
    out = np.empty(q.shape[0])
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk]
        d2 = np.sum(qc * qc, axis=1)[:, None] + bb[None, :] - 2.0 * qc @ b.T
        kth = np.partition(d2, k - 1, axis=1)[:, k - 1]
        out[start:start + chunk] = -np.sqrt(np.maximum(kth, 0.0))
    return out


def react_threshold(train_features, percentile: float = REACT_PERCENTILE) -> float:
    """ReAct's clipping value: the ``percentile`` of every activation of every ID training
    feature vector (OpenOOD: ``np.percentile(activations.flatten(), 90)``)."""
    return float(np.percentile(_features64(train_features, "train features").ravel(), percentile))


def react_logits(features, threshold: float, kernel, bias) -> np.ndarray:
    """Logits recomputed by the classifier head from features clipped above at ``threshold``:
    ``min(f, c) @ kernel + bias`` (float64)."""
    clipped = np.minimum(_features64(features), float(threshold))
    return clipped @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)


def react_score(features, threshold: float, kernel, bias, num_known: int) -> np.ndarray:
    """ReAct: energy (T = 1) of the first K logits of the clipped features (Sun et al. 2021)."""
    return logit_scores.energy(react_logits(features, threshold, kernel, bias), num_known)


def fit_feature_statistics(
    train_features, train_labels, num_known: int, percentile: float = REACT_PERCENTILE
) -> FeatureStatistics:
    """Mahalanobis's Gaussians, KNN's neighbour bank and ReAct's threshold from ID training
    features (penultimate features of the evaluated model, no augmentation)."""
    f = _features64(train_features, "train features")
    means, precision = fit_class_gaussian(f, train_labels, num_known)
    return FeatureStatistics(
        class_means=means,
        precision=precision,
        bank=l2_normalise(f),
        react_threshold=react_threshold(f, percentile),
        num_train=int(f.shape[0]),
    )


# --------------------------------------------------------------------------------- ODIN
def odin_perturbation(
    apply_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    std: Sequence[float],
    num_known: int,
    temperature: float = ODIN_TEMPERATURE,
    epsilon: float = ODIN_EPSILON,
) -> jax.Array:
    """ODIN's perturbed input (Liang et al. 2018), exactly as OpenOOD's ``odin`` computes it.

    ``x`` is the normalised input batch (NHWC, channels last) and ``apply_fn`` maps it to
    logits. With z = the first K logits / T and the predicted class c = argmax z, the loss is
    the cross-entropy ``-log softmax(z)[c]``; its input gradient g is reduced to its sign
    (+1 where g >= 0, -1 elsewhere: OpenOOD's ``(g >= 0) * 2 - 1``, so a zero gradient counts as
    +1), divided by the per-channel normalisation ``std`` (the step is eps in pixel units), and
    ``x - eps * sign(g) / std`` is returned. Examples do not interact (evaluation mode), so the
    summed loss gives every example its own gradient.
    """
    std = jnp.asarray(std, dtype=x.dtype)

    def loss(inputs):
        z = apply_fn(inputs)[:, :num_known].astype(jnp.float32) / temperature
        predicted = jax.lax.stop_gradient(jnp.argmax(z, axis=1))
        log_probs = jax.nn.log_softmax(z, axis=1)
        return -jnp.sum(jnp.take_along_axis(log_probs, predicted[:, None], axis=1))

    gradient = jax.grad(loss)(x)
    sign = jnp.where(gradient >= 0, 1.0, -1.0).astype(x.dtype)
    return x - epsilon * sign / std


def odin_logits(
    apply_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    std: Sequence[float],
    num_known: int,
    temperature: float = ODIN_TEMPERATURE,
    epsilon: float = ODIN_EPSILON,
) -> jax.Array:
    """Logits of ODIN's perturbed input (:func:`odin_perturbation`); :func:`odin_score` turns
    them into the score on the host (float64, where T = 1000 does not lose the ordering)."""
    return apply_fn(odin_perturbation(apply_fn, x, std, num_known, temperature, epsilon))


def odin_score(perturbed_logits, num_known: int, temperature: float = ODIN_TEMPERATURE) -> np.ndarray:
    """ODIN's score: max of ``softmax(z_1..K / T)`` of the perturbed input's logits."""
    return logit_scores.msp_at_temperature(perturbed_logits, num_known, temperature)


def score_settings(num_train: Optional[int] = None, knn_k: int = KNN_K, react_threshold_value: Optional[float] = None) -> dict:
    """The hyper-parameters of the model and feature scores, for eval.json."""
    out = {
        "odin": {"temperature": ODIN_TEMPERATURE, "epsilon": ODIN_EPSILON},
        "knn": {"k": int(knn_k), "features": "L2-normalised penultimate"},
        "mahalanobis": {"covariance": "shared, class-centred, pseudo-inverse"},
        "react": {"percentile": REACT_PERCENTILE},
    }
    if num_train is not None:
        out["train_features"] = int(num_train)
    if react_threshold_value is not None:
        out["react"]["threshold"] = float(react_threshold_value)
    return out
