"""The evaluation as pictures: PNG files written next to eval.json.

* ``reliability.png`` -- reliability diagram (Guo et al. 2017, Fig. 1 style): accuracy against
  confidence in the ECE bins (``config.eval.ece_bins``, 15 by default), with the number of
  images in each bin under it, for the model as trained (whole ID test set) and after
  temperature scaling (the 80% evaluation split);
* ``roc.png`` -- ROC curve of the primary score for every OOD set (ID positive, as the metrics);
* ``score_hist.png`` -- histograms of the primary score, ID test set against each OOD set;
* ``layer_density.png`` -- density of every sparsifiable layer's mask (1.0 for dense layers);
* ``training_curves.png`` -- loss, accuracy, MOON's alpha and density over training steps, from
  ``<workdir>/metrics.jsonl``.

Each plot is one function of plain arrays / dicts that writes one file. matplotlib's object API
with the Agg canvas is used (no pyplot, no global state, no display needed).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from moon_jax.evaluation.report import ece_bins
from moon_jax.metrics import DEFAULT_ECE_BINS, calibration_bins, ood_metrics, temperature_split, top1_confidence

#: Plot name -> file name, in the order reports show them.
PLOT_FILES = {
    "reliability": "reliability.png",
    "roc": "roc.png",
    "score_hist": "score_hist.png",
    "layer_density": "layer_density.png",
    "training_curves": "training_curves.png",
}
DPI = 110
#: Label of the reliability diagram's axes that show how many images each bin holds.
BIN_COUNT_AXES = "images per bin"


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _bin_count_panel(ax, centres: np.ndarray, counts: np.ndarray, width: float) -> None:
    """Bars of how many images each confidence bin holds, each bar's count written above it
    (log scale: the last bin usually holds most of the test set)."""
    filled = counts > 0
    ax.bar(centres[filled], counts[filled], width=width, edgecolor="black", color="tab:grey")
    for centre, count in zip(centres[filled], counts[filled]):
        ax.text(centre, count * 1.3, str(int(count)), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.set(xlim=(0, 1), ylim=(0.7, max(int(counts.max()), 1) * 40), ylabel="images")
    ax.set_label(BIN_COUNT_AXES)


def _reliability_panel(ax, count_ax, confidence: np.ndarray, correct: np.ndarray, n_bins: int, title: str) -> None:
    bins = calibration_bins(confidence, correct, n_bins)
    width = 1.0 / n_bins
    centres = bins.edges[:-1] + width / 2
    filled = bins.counts > 0
    ax.bar(centres[filled], bins.accuracy[filled], width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(
        centres[filled], bins.mean_confidence[filled] - bins.accuracy[filled], bottom=bins.accuracy[filled],
        width=width, edgecolor="tab:red", color="tab:red", alpha=0.3, label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    total = bins.counts.sum()
    ece = float(np.sum(bins.counts[filled] / total * np.abs(bins.accuracy[filled] - bins.mean_confidence[filled])))
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.set_title(f"{title}\nECE {100 * ece:.2f}% ({n_bins} bins, n = {total})", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    _bin_count_panel(count_ax, centres, bins.counts, width)
    count_ax.set_xlabel("confidence (max softmax of the first K)")


def reliability_figure(
    logits, labels, num_classes: int, temperature: Optional[float] = None,
    fit_fraction: float = 0.2, seed: int = 0, n_bins: int = DEFAULT_ECE_BINS,
) -> Figure:
    """The reliability diagram of the K-class classifier as a figure: per panel, accuracy against
    confidence in ``n_bins`` bins, and under it how many images each bin holds (the axes labelled
    :data:`BIN_COUNT_AXES`, one text per non-empty bin), so that a bar of 3 images is not read
    like a bar of 3,000. With ``temperature`` a second panel shows the temperature-scaled model
    on the evaluation part of :func:`temperature_split`."""
    panels = 1 if temperature is None else 2
    figure = _figure(4.6 * panels, 5.6)
    grid = figure.add_gridspec(2, panels, height_ratios=(3, 1))

    def panel(column: int, confidence: np.ndarray, correct: np.ndarray, title: str) -> None:
        ax = figure.add_subplot(grid[0, column])
        _reliability_panel(ax, figure.add_subplot(grid[1, column], sharex=ax), confidence, correct, n_bins, title)

    panel(0, *top1_confidence(logits, labels, num_classes), "as trained, ID test set")
    if temperature is not None:
        _, evaluate = temperature_split(len(labels), fit_fraction, seed)
        scaled = np.asarray(logits, np.float64)[evaluate, :num_classes] / temperature
        panel(1, *top1_confidence(scaled, np.asarray(labels)[evaluate], num_classes),
              f"temperature-scaled (T = {temperature:.3f}), {100 * (1 - fit_fraction):g}% split")
    return figure


def plot_reliability(
    path, logits, labels, num_classes: int, temperature: Optional[float] = None,
    fit_fraction: float = 0.2, seed: int = 0, n_bins: int = DEFAULT_ECE_BINS,
) -> Path:
    """Writes :func:`reliability_figure` to ``path``."""
    return _save(reliability_figure(logits, labels, num_classes, temperature, fit_fraction, seed, n_bins), path)


def plot_roc(path, id_scores, ood_scores: Mapping[str, np.ndarray], score_name: str) -> Path:
    """One ROC curve per OOD set (ID is the positive class; TPR = share of ID accepted)."""
    figure = _figure(5.2, 4.8)
    ax = figure.add_subplot(1, 1, 1)
    id_scores = np.asarray(id_scores, np.float64)
    for name, scores in ood_scores.items():
        scores = np.asarray(scores, np.float64)
        is_id = np.concatenate([np.ones(id_scores.size), np.zeros(scores.size)])
        fpr, tpr, _ = roc_curve(is_id, np.concatenate([id_scores, scores]), drop_intermediate=False)
        m = ood_metrics(id_scores, scores)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name}: AUROC {100 * m['auroc']:.2f}, FPR95 {100 * m['fpr95']:.2f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR (share of OOD accepted)", ylabel="TPR (share of ID accepted)")
    ax.set_title(f"ROC, score {score_name} (ID positive)", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    return _save(figure, path)


def plot_score_histograms(path, id_scores, ood_scores: Mapping[str, np.ndarray], score_name: str, bins: int = 50) -> Path:
    """ID vs OOD histograms of one score, one panel per OOD set (share of each set per bin,
    log scale, so that the thin tails that decide FPR95 are visible)."""
    names = list(ood_scores)
    columns = min(3, max(len(names), 1))
    rows = max(1, math.ceil(len(names) / columns))
    figure = _figure(4.2 * columns, 3.2 * rows)
    id_scores = np.asarray(id_scores, np.float64)
    for i, name in enumerate(names or [None]):
        ax = figure.add_subplot(rows, columns, i + 1)
        groups = [("ID test", id_scores, "tab:blue")]
        if name is not None:
            groups.append((name, np.asarray(ood_scores[name], np.float64), "tab:orange"))
        lo = min(g[1].min() for g in groups)
        hi = max(g[1].max() for g in groups)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for label, values, colour in groups:
            ax.hist(values, bins=edges, weights=np.full(values.size, 1.0 / values.size), alpha=0.55, color=colour, label=label)
        ax.set_yscale("log")
        ax.set(xlabel=score_name, ylabel="share of the set")
        ax.set_title(f"ID vs {name}" if name else "ID test", fontsize=9)
        ax.legend(fontsize=7)
    return _save(figure, path)


def _network_order(names: Sequence[str]) -> list[str]:
    """Parameter names come sorted alphabetically; show the ``stem`` first and the ``head`` last."""
    return sorted(names, key=lambda n: 0 if n.startswith("stem") else 2 if n.startswith("head") else 1)


def plot_layer_density(path, densities: Mapping[str, float], title: str = "") -> Path:
    """Horizontal bars: density of each sparsifiable layer's mask (dense layers, 1.0, in grey),
    ``stem`` at the top and ``head`` at the bottom."""
    names = _network_order(list(densities))
    values = np.asarray([densities[n] for n in names], np.float64)
    figure = _figure(6.4, 1.2 + 0.32 * max(len(names), 1))
    ax = figure.add_subplot(1, 1, 1)
    colours = ["tab:grey" if v >= 1.0 else "tab:green" for v in values]
    y = np.arange(len(names))
    ax.barh(y, values, color=colours)
    for yi, v in zip(y, values):
        ax.text(min(v, 1.0) + 0.01, yi, f"{100 * v:.1f}%", va="center", fontsize=7)
    ax.set_yticks(y, labels=names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.12), xlabel="density of the mask (share of active weights)")
    ax.set_title(title or "per-layer density (grey: kept dense)", fontsize=10)
    return _save(figure, path)


def _series(records: Sequence[Mapping], kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(r["step"], r[key]) for r in records if r.get("kind") == kind and key in r]
    if not rows:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*rows)
    return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def plot_training_curves(path, records: Sequence[Mapping], title: str = "") -> Path:
    """Loss, accuracy (train and periodic eval), MOON's alpha and density against the step.

    ``records`` are the lines of ``metrics.jsonl`` (:func:`moon_jax.training.reporting.read_metrics`).
    A quantity the run did not record (alpha without MOON, density of a dense run) says so.
    """
    figure = _figure(9.0, 6.4)
    panels = [
        ("loss", [("train", "loss", "train loss"), ("eval", "nll", "test NLL")], None),
        ("accuracy", [("train", "accuracy", "train"), ("eval", "acc", "test")], (0, 1.02)),
        ("MOON alpha", [("train", "alpha", "alpha")], None),
        ("density", [("train", "density", "mask"), ("train", "nonzero_fraction", "nonzero weights")], None),
    ]
    for i, (label, curves, ylim) in enumerate(panels):
        ax = figure.add_subplot(2, 2, i + 1)
        drawn = 0
        for kind, key, name in curves:
            steps, values = _series(records, kind, key)
            if steps.size:
                ax.plot(steps, values, marker="o" if kind == "eval" else None, markersize=3, label=name)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not recorded by this run", ha="center", va="center", transform=ax.transAxes)
        elif len(curves) > 1:
            ax.legend(fontsize=7)
        if label == "loss" and drawn:
            ax.set_yscale("log")
        if ylim and drawn:
            ax.set_ylim(*ylim)
        ax.set(xlabel="step", ylabel=label)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def write_plots(directory, results: Mapping, arrays, records: Optional[Sequence[Mapping]] = None, title: str = "") -> list[str]:
    """Writes every plot the evaluation has data for into ``directory``; returns the file names.

    ``arrays`` is the :class:`moon_jax.evaluation.EvalArrays` of the evaluation; ``records`` the
    run's ``metrics.jsonl`` lines (no training-curve plot when empty or None). ROC and
    histograms need at least one OOD set; the density plot needs ``results['layer_density']``.
    """
    directory = Path(directory)
    written = []
    ts = results.get("temperature_scaling") or {}
    plot_reliability(
        directory / PLOT_FILES["reliability"], arrays.test_logits, arrays.test_labels, arrays.num_classes,
        ts.get("temperature"), ts.get("fit_fraction", 0.2), ts.get("seed", 0), ece_bins(results),
    )
    written.append(PLOT_FILES["reliability"])
    primary = results["primary_score"]
    if arrays.scores.get(primary, {}).get("ood"):
        id_scores, ood_scores = arrays.scores[primary]["id"], arrays.scores[primary]["ood"]
        plot_roc(directory / PLOT_FILES["roc"], id_scores, ood_scores, primary)
        plot_score_histograms(directory / PLOT_FILES["score_hist"], id_scores, ood_scores, primary)
        written += [PLOT_FILES["roc"], PLOT_FILES["score_hist"]]
    if results.get("layer_density"):
        density = results.get("density", {}).get("masked_layers_nonzero_fraction")
        label = f"per-layer mask density, {results.get('method', '')}" + (
            f" (masked layers, measured: {100 * density:.2f}%)" if density is not None else "")
        plot_layer_density(directory / PLOT_FILES["layer_density"], results["layer_density"], label)
        written.append(PLOT_FILES["layer_density"])
    if records:
        plot_training_curves(directory / PLOT_FILES["training_curves"], records, title)
        written.append(PLOT_FILES["training_curves"])
    return written
