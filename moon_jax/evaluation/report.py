"""The Markdown report of an evaluation: the tables ``train.py`` and ``eval.py`` print.

Pure formatting of the JSON-ready results of :mod:`moon_jax.evaluation.evaluate` (numbers in
percent except NLL and Brier); nothing here computes a metric.
"""
from __future__ import annotations

from typing import Mapping, Optional

from moon_jax.evaluation.score_registry import BY_NAME
from moon_jax.metrics import DEFAULT_ECE_BINS


def format_percent(x: Optional[float]) -> str:
    """A fraction as a percentage with two decimals for the tables; ``n/a`` for ``None``."""
    return "n/a" if x is None else f"{100.0 * x:.2f}"


def ece_bins(results: Mapping) -> int:
    """The number of ECE bins the results were computed with (``config.eval.ece_bins``); results
    written before the number was recorded used the default, 15."""
    return int(results.get("ece_bins", DEFAULT_ECE_BINS))



def _classification_lines(results: Mapping) -> list[str]:
    cls = results["classification"]
    return [
        "| ACC | ECE | NLL | Brier | ACC (ref.) | ECE (ref.) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {format_percent(cls['acc'])} | {format_percent(cls['ece'])} | {cls['nll']:.4f} | {cls['brier']:.4f} | "
        f"{format_percent(cls['acc_reference'])} | {format_percent(cls['ece_reference'])} |",
        "",
        f"ACC: argmax over the first K = {results['num_classes']} outputs; ECE: {ece_bins(results)} equal-width bins "
        "(lo, hi] on top-1 confidence of the K-class softmax; (ref.): the MOON reference evaluator "
        "(argmax over all outputs, 10 bins [lo, hi)). ID test set: "
        f"{results['num_test']} images.",
    ]


def _primary_lines(results: Mapping) -> list[str]:
    primary = results["primary_score"]
    per_set = results["ood"].get(primary, {})
    lines = [
        "",
        f"OOD detection, score `{primary}`:",
        "",
        "| OOD set | n | AUROC | FPR95 | AUPR-In | AUPR-Out |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in per_set.items():
        n = results["ood_sizes"].get(name, "")
        label = "**mean**" if name == "mean" else name
        lines.append(
            f"| {label} | {n} | {format_percent(m['auroc'])} | {format_percent(m['fpr95'])} | {format_percent(m['aupr_in'])} | {format_percent(m['aupr_out'])} |"
        )
    return lines


def _every_score_lines(results: Mapping) -> list[str]:
    scores = [s for s in results["scores"] if results["ood"].get(s)]
    lines = ["", "Mean over OOD sets for every score:", "", "| score | AUROC | FPR95 | AUPR-In | AUPR-Out |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for s in scores:
        m = results["ood"][s]["mean"]
        lines.append(f"| {s} | {format_percent(m['auroc'])} | {format_percent(m['fpr95'])} | {format_percent(m['aupr_in'])} | {format_percent(m['aupr_out'])} |")
    return lines


def _per_set_lines(results: Mapping) -> list[str]:
    """AUROC / FPR95 of every score on every set, then the near / far / all group means."""
    scores = [s for s in results["scores"] if results["ood"].get(s)]
    sets = list(results["ood_sizes"])
    groups = [g for g in ("near", "far") if g in results.get("ood_group_members", {})]
    header = sets + [f"{g}-OOD" for g in groups] + ["all"]
    lines = [
        "",
        "AUROC / FPR95 of every score per OOD set and per OpenOOD group (plain mean over the group's sets; "
        + "; ".join(f"{g}-OOD: {', '.join(results['ood_group_members'][g])}" for g in groups)
        + "):",
        "",
        "| score | " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * len(header),
    ]
    for s in scores:
        cells = [results["ood"][s][name] for name in sets]
        cells += [results["ood_groups"][s][g] for g in groups] + [results["ood_groups"][s]["all"]]
        lines.append(f"| {s} | " + " | ".join(f"{format_percent(m['auroc'])} / {format_percent(m['fpr95'])}" for m in cells) + " |")
    descriptions = "; ".join(f"`{s}`: {BY_NAME[s].description}" for s in scores)
    lines += ["", f"Scores (higher = more in-distribution): {descriptions}."]
    settings = results.get("score_settings", {})
    if "train_features" in settings:
        lines.append(
            f"Feature statistics from {settings['train_features']} ID training images (no augmentation); "
            f"KNN k = {settings['knn']['k']}; ReAct threshold {settings['react']['threshold']:.4g}."
        )
    return lines


def _temperature_lines(results: Mapping) -> list[str]:
    ts = results.get("temperature_scaling")
    if not ts:
        return []
    lines = [
        "",
        f"Temperature scaling (Guo et al. 2017), T = {ts['temperature']:.4f}:",
        "",
        "| model | ACC | ECE | NLL | Brier |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (("uncalibrated", "as trained"), ("calibrated", "temperature-scaled")):
        m = ts[key]
        lines.append(f"| {label} | {format_percent(m['acc'])} | {format_percent(m['ece'])} | {m['nll']:.4f} | {m['brier']:.4f} |")
    lines += [
        "",
        f"T minimises the NLL of the first K logits on a fixed random {100 * ts['fit_fraction']:g}% of the ID test "
        f"set ({ts['num_fit']} images, seed {ts['seed']}); both rows are measured on the other "
        f"{ts['num_eval']} images, so they differ from the full-test-set row above.",
    ]
    return lines


def format_results(results: Mapping, title: str = "") -> str:
    """The Markdown report of an evaluation (numbers in percent except NLL and Brier).

    Order: classification table; the primary score's per-set table (with its ``**mean**`` row);
    the mean of every score; AUROC / FPR95 of every score per set and near / far group;
    temperature scaling; the metric convention.
    """
    lines = [f"### {title}", ""] if title else []
    lines += _classification_lines(results)
    if results["ood"].get(results["primary_score"]):
        lines += _primary_lines(results)
        if len([s for s in results["scores"] if results["ood"].get(s)]) > 1:
            lines += _every_score_lines(results)
        if "ood_groups" in results:
            lines += _per_set_lines(results)
    lines += _temperature_lines(results)
    if results["ood"].get(results["primary_score"]):
        lines += ["", results["convention"]]
    return "\n".join(lines)


def headline(results: Mapping) -> dict:
    """The four numbers of the one-line summary: ACC, ECE, mean AUROC, mean FPR95."""
    out = {"acc": results["classification"]["acc"], "ece": results["classification"]["ece"]}
    per_set = results["ood"].get(results["primary_score"], {})
    if "mean" in per_set:
        out.update(auroc=per_set["mean"]["auroc"], fpr95=per_set["mean"]["fpr95"])
    return out
