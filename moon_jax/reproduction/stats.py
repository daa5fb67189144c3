"""The numbers of the report: each run's metrics read from its eval.json, their mean ± sample
std over seeds per method, and paired differences between methods (same seed) or between a run's
weight average and its last iterate."""
from __future__ import annotations

import statistics
from typing import Mapping, Optional, Sequence

#: ``{(method, seed): {metric: value}}``: the metrics of every run (:func:`run_metrics`).
PerRun = Mapping[tuple[str, int], Mapping[str, float]]
#: ``(mean, sample std, number of seeds)``.
Stat = tuple[float, float, int]


def is_noise_set(name: str) -> bool:
    """Synthetic noise sets (``gaussian_noise``, ``uniform_noise``): not in the headline mean."""
    return "noise" in name


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def beyond_seed_noise(stat: Stat) -> bool:
    """Whether a paired difference over several seeds is at least two standard errors from 0
    (``|mean| >= 2 std / sqrt(n)``); never for a single seed."""
    mean, std, n = stat
    return n > 1 and mean != 0 and abs(mean) >= 2 * std / n ** 0.5


def _headline_means(per_set: Mapping[str, Mapping[str, float]], prefix: str = "") -> dict[str, float]:
    """Plain means of AUROC / FPR95 over the non-noise sets (``mean``) and the noise sets (``noise``)."""
    metrics = {}
    for group, names in (("mean", [n for n in per_set if n != "mean" and not is_noise_set(n)]),
                         ("noise", [n for n in per_set if n != "mean" and is_noise_set(n)])):
        if names:
            for key in ("auroc", "fpr95"):
                metrics[f"{prefix}{key}/{group}"] = statistics.fmean(per_set[n][key] for n in names)
    return metrics


def run_metrics(results: Mapping) -> dict[str, float]:
    """The numbers of one run's eval.json used here (fractions).

    ``acc``, ``ece``, ``nll``; ``train_acc`` (eval mode, fixed training subset) when recorded;
    for the primary score per-set AUROC / FPR95 (``auroc/<set>``, ``fpr95/<set>``), their mean
    over the non-noise sets (``auroc/mean``) and over the noise sets (``auroc/noise``); the same
    means for ``energy`` (``energy_auroc/mean``, ...); MOON's mean p(unknown) (``p_unknown/id``,
    ``p_unknown/<set>``) and the mean AUROC / FPR95 of its ``known_probability`` score
    (``known_probability_auroc/mean``); the last iterate's ``last_acc``, ``last_ece``,
    ``last_nll`` and primary-score means (``last_auroc/mean``, ``last_fpr95/mean``, ...) when the
    reported model is the weight average.
    """
    cls = results["classification"]
    ood = results["ood"][results["primary_score"]]
    metrics = {"acc": cls["acc"], "ece": cls["ece"], "nll": cls["nll"]}
    if "train_subset_classification" in results:
        metrics["train_acc"] = results["train_subset_classification"]["acc"]
    for name, values in ood.items():
        if name != "mean":
            metrics[f"auroc/{name}"] = values["auroc"]
            metrics[f"fpr95/{name}"] = values["fpr95"]
    metrics.update(_headline_means(ood))
    if "energy" in results["ood"]:
        metrics.update(_headline_means(results["ood"]["energy"], "energy_"))
    if "known_probability" in results["ood"]:
        metrics.update(_headline_means(results["ood"]["known_probability"], "known_probability_"))
    unknown = results.get("unknown_probability")
    if unknown:
        metrics["p_unknown/id"] = unknown["id"]
        metrics.update({f"p_unknown/{name}": value for name, value in unknown["ood"].items()})
    last = results.get("last_iterate")
    if last:
        metrics["last_acc"] = last["classification"]["acc"]
        metrics["last_ece"] = last["classification"]["ece"]
        metrics["last_nll"] = last["classification"]["nll"]
        metrics.update(_headline_means(last["ood"], "last_"))
    return metrics


def aggregate(per_run: PerRun) -> dict[str, dict[str, Stat]]:
    """``{method: {metric: (mean, std, number of seeds)}}`` from ``{(method, seed): metrics}``."""
    by_method: dict[str, dict[str, list[float]]] = {}
    for (method, _), metrics in per_run.items():
        for key, value in metrics.items():
            by_method.setdefault(method, {}).setdefault(key, []).append(value)
    return {m: {k: (*mean_std(v), len(v)) for k, v in metrics.items()} for m, metrics in by_method.items()}


def paired_difference(
    per_run: PerRun, better: str, baseline: str, metric: str,
    better_metric: Optional[str] = None, baseline_metric: Optional[str] = None,
) -> Optional[Stat]:
    """``better - baseline`` for ``metric`` over the seeds both have: (mean, std, n) or None.
    ``better_metric`` / ``baseline_metric`` read one side from another key (``last_<metric>``: the
    run's last iterate), so one method's weight average can be paired with its own last iterate."""
    better_metric, baseline_metric = better_metric or metric, baseline_metric or metric
    seeds = sorted({s for m, s in per_run if m == better} & {s for m, s in per_run if m == baseline})
    diffs = [per_run[(better, s)][better_metric] - per_run[(baseline, s)][baseline_metric] for s in seeds
             if better_metric in per_run[(better, s)] and baseline_metric in per_run[(baseline, s)]]
    return (*mean_std(diffs), len(diffs)) if diffs else None


def voting_difference(per_run: PerRun, method: str, metric: str) -> Optional[Stat]:
    """Weight average - last iterate of the same runs of ``method`` for ``metric`` (``acc``,
    ``ece`` or ``auroc/mean``): (mean, std, n seeds) or None. What the voting adds, free of the
    seed-to-seed spread that a comparison with a separate no-voting run carries."""
    return paired_difference(per_run, method, method, metric, baseline_metric=f"last_{metric}")
