"""Out-of-distribution detection metrics: AUROC, FPR@95%TPR, AUPR-In, AUPR-Out.

Conventions follow OpenOOD (Yang et al., "OpenOOD: Benchmarking Generalized OOD Detection",
NeurIPS 2022 Datasets & Benchmarks; v1.5: Zhang et al. 2023) and the MOON reference code
(github.com/StevenBoys/MOON @ 22c1841, its OOD metrics, an OpenOOD v1
copy), with one deliberate fix: the FPR@TPR lookup uses the complete ROC curve
(``drop_intermediate=False``).  With sklearn's default ``drop_intermediate=True`` (which the
reference uses) collinear ROC points are removed, which can delete the first point with
TPR >= 0.95 and inflate FPR@95 on tied scores; AUROC is unaffected.

Scores follow the "higher = more in-distribution" convention (MSP, MaxLogit, energy,
Hendrycks & Gimpel 2017).  All numbers are fractions in [0, 1], not x100.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "CONVENTION_CAPTION",
    "OOD_METRIC_KEYS",
    "ood_metrics",
    "ood_table_mean",
    "group_means",
    "NEAR_OOD_SETS",
    "ood_group",
    "split_group_prefix",
    "GROUP_PREFIXES",
    "ood_groups",
]

#: OOD sets counted as **near-OOD**; every other OOD set is far-OOD. OpenOOD v1.5's CIFAR
#: benchmarks (its evaluation API's dataset lists): for ID CIFAR-10 near = {CIFAR-100,
#: TinyImageNet}, for ID CIFAR-100 near = {CIFAR-10, TinyImageNet}; far = {MNIST, SVHN, Textures,
#: Places365}. Here ``tin_resize`` is the resized TinyImageNet; ``cifar10`` is an OOD set only when
#: the ID set is another dataset (CIFAR-100). Everything else -- ``mnist``, ``textures_subset``,
#: TFDS ``svhn_cropped`` / ``dtd`` / ``places365_small``, the noise sets, ``digits_photos`` -- is
#: far-OOD. A ``tfds:`` prefix is ignored.
NEAR_OOD_SETS = ("tin_resize", "cifar100", "cifar10")

#: One-line description of the default convention, for table captions.
CONVENTION_CAPTION = (
    "OOD metrics (OpenOOD v1 / MOON reference convention): ID is the positive class and "
    "scores are higher for ID; FPR@95 = share of OOD samples accepted when 95% of ID samples "
    "are accepted, read at the first ROC point with TPR >= 0.95 (no interpolation) of "
    "sklearn roc_curve(drop_intermediate=False) in float64; AUROC, AUPR-In (ID positive) and "
    "AUPR-Out (OOD positive, negated scores) by the trapezoid rule (sklearn auc); fractions, "
    "dataset groups averaged per dataset (not pooled)."
)

#: Keys of the dict returned by :func:`ood_metrics`.
OOD_METRIC_KEYS = ("auroc", "fpr95", "aupr_in", "aupr_out")


def _scores(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty; need at least one score")
    if np.isnan(a).any():
        raise ValueError(
            f"{name} contains {int(np.isnan(a).sum())} NaN value(s); OOD scores must be finite "
            "(check the model outputs / score function)"
        )
    if np.isinf(a).any():
        raise ValueError(
            f"{name} contains infinite value(s); OOD scores must be finite (sklearn's ROC "
            "rejects them) -- use log-space or finite surrogates"
        )
    return a


def ood_metrics(
    id_scores, ood_scores, positive: str = "id", tpr_level: float = 0.95
) -> dict[str, float]:
    """AUROC, FPR@``tpr_level``TPR, AUPR-In and AUPR-Out of one ID-vs-OOD split.

    Scores: higher = more in-distribution (e.g. MSP, Hendrycks & Gimpel 2017).

    ``positive='id'`` (default; MOON reference / OpenOOD v1, and the classic ODIN /
    Hendrycks wording):

    * ROC: ``sklearn.metrics.roc_curve(is_id, scores, drop_intermediate=False)``, float64.
    * ``fpr95``: FPR at the FIRST ROC point whose TPR >= ``tpr_level`` -- the share of OOD
      samples accepted as ID at the threshold where (at least) 95% of ID samples are accepted.
      No interpolation.  Each distinct score is one threshold, so with ties between ID and OOD
      scores the point lies at the end of the tie (the pessimistic side: all tied OOD samples
      count as accepted).  ``drop_intermediate=False`` keeps every threshold; sklearn's
      default can drop the first qualifying point and report a larger FPR (see module doc).
    * ``auroc``: ``sklearn.metrics.auc(fpr, tpr)`` (trapezoid rule) = ``roc_auc_score`` = the
      Mann-Whitney statistic P(s_id > s_ood) + 0.5 P(s_id = s_ood).

    ``positive='ood'`` (OpenOOD v1.5): ROC on ``is_ood`` with ``-scores``; AUROC is the same,
    but ``fpr95`` becomes the share of ID samples rejected when 95% of OOD is caught.

    Both conventions report the same AUPRs (OpenOOD computes them the same way in v1 and v1.5):

    * ``aupr_in``: ``precision_recall_curve(is_id, scores)`` integrated with
      ``auc(recall, precision)`` (trapezoid, as OpenOOD; not ``average_precision_score``).
    * ``aupr_out``: ``precision_recall_curve(is_ood, -scores)``, likewise.  (The reference
      uses ``1 - scores``; same ordering, same value.)

    Args:
      id_scores: (N_id,) scores of in-distribution test samples.
      ood_scores: (N_ood,) scores of OOD samples.
      positive: 'id' (default) or 'ood' -- which class is positive for the ROC / FPR lookup.
      tpr_level: TPR level of the FPR lookup, in (0, 1] (default 0.95).

    Returns:
      dict ``{'auroc', 'fpr95', 'aupr_in', 'aupr_out'}`` of floats in [0, 1].

    Raises:
      ValueError: on empty inputs, NaN / infinite scores, unknown ``positive`` or a bad
        ``tpr_level``.
    """
    s_id = _scores(id_scores, "id_scores")
    s_ood = _scores(ood_scores, "ood_scores")
    if positive not in ("id", "ood"):
        raise ValueError(f"positive must be 'id' or 'ood'; got {positive!r}")
    if not (0.0 < float(tpr_level) <= 1.0):
        raise ValueError(f"tpr_level must be in (0, 1]; got {tpr_level}")

    scores = np.concatenate([s_id, s_ood])
    is_id = np.concatenate([np.ones(s_id.size, np.int64), np.zeros(s_ood.size, np.int64)])
    is_ood = 1 - is_id

    if positive == "id":
        fpr, tpr, _ = skm.roc_curve(is_id, scores, drop_intermediate=False)
    else:
        fpr, tpr, _ = skm.roc_curve(is_ood, -scores, drop_intermediate=False)
    fpr = np.asarray(fpr, np.float64)
    tpr = np.asarray(tpr, np.float64)
    hits = np.flatnonzero(tpr >= tpr_level)
    if hits.size == 0:  # cannot happen on a complete ROC (last TPR is 1.0); guard anyway
        raise RuntimeError(
            f"ROC curve never reaches TPR >= {tpr_level} (max TPR {tpr.max()}); "
            "refusing to report argmax's silent index 0"
        )
    fpr_at = float(fpr[hits[0]])
    auroc = float(skm.auc(fpr, tpr))

    prec_in, rec_in, _ = skm.precision_recall_curve(is_id, scores)
    prec_out, rec_out, _ = skm.precision_recall_curve(is_ood, -scores)
    return {
        "auroc": auroc,
        "fpr95": fpr_at,
        "aupr_in": float(skm.auc(rec_in, prec_in)),
        "aupr_out": float(skm.auc(rec_out, prec_out)),
    }


def ood_table_mean(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Plain (unweighted) mean over OOD datasets of each metric.

    ``results`` maps dataset name -> metric dict (e.g. from :func:`ood_metrics`).  Each
    dataset counts once regardless of its size -- the OpenOOD / MOON reference "nearood" /
    "farood" row is ``np.mean`` over the per-dataset rows, not a metric of the pooled scores.
    Only metrics present for every dataset are averaged (a mismatch raises).
    """
    if not results:
        raise ValueError("results is empty; nothing to average")
    names = list(results)
    keys = list(results[names[0]])
    for name in names[1:]:
        if set(results[name]) != set(keys):
            raise ValueError(
                f"metric keys differ between datasets: {names[0]!r} has {sorted(keys)}, "
                f"{name!r} has {sorted(results[name])}"
            )
    return {
        k: float(np.mean(np.asarray([results[n][k] for n in names], dtype=np.float64)))
        for k in keys
    }


def group_means(
    results: Mapping[str, Mapping[str, float]], groups: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Per-group plain means (e.g. ``{'near': [...], 'far': [...]}``) via :func:`ood_table_mean`.

    As in OpenOOD's near-/far-OOD rows: each listed dataset counts once.  Every listed name
    must be in ``results``; groups must be non-empty.
    """
    out: dict[str, dict[str, float]] = {}
    for group, members in groups.items():
        members = list(members)
        if not members:
            raise ValueError(f"group {group!r} lists no datasets")
        missing = [m for m in members if m not in results]
        if missing:
            raise KeyError(f"group {group!r}: no results for {missing}")
        out[group] = ood_table_mean({m: results[m] for m in members})
    return out


#: A user's own OOD set is far-OOD unless its name says otherwise: ``near:<name or path>`` (or
#: ``far:...``, to be explicit) puts it in that group, and the prefix stays in its display name so
#: that every table shows the grouping.
GROUP_PREFIXES = ("near:", "far:")


def split_group_prefix(name: str) -> tuple[Optional[str], str]:
    """``('near' | 'far' | None, the name without the prefix)`` (:data:`GROUP_PREFIXES`)."""
    for prefix in GROUP_PREFIXES:
        if name.startswith(prefix):
            return prefix[:-1], name[len(prefix):]
    return None, name


def ood_group(name: str) -> str:
    """``'near'`` or ``'far'``: the group a ``near:`` / ``far:`` prefix gives, else the OpenOOD
    group of the OOD set ``name`` (:data:`NEAR_OOD_SETS`)."""
    group, name = split_group_prefix(name)
    if group is not None:
        return group
    base = name[len("tfds:"):] if name.startswith("tfds:") else name
    return "near" if base in NEAR_OOD_SETS else "far"


def ood_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """The non-empty groups of ``names``: ``{'near': [...], 'far': [...]}`` in the given order.

    A group with no member is left out (so :func:`group_means` never sees an empty group); the
    digits job's OOD sets, for instance, are all far-OOD.
    """
    out: dict[str, list[str]] = {"near": [], "far": []}
    for name in names:
        out[ood_group(name)].append(name)
    return {group: members for group, members in out.items() if members}
