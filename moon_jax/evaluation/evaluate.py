"""Evaluation of a trained model: accuracy and calibration on the ID test set, OOD detection on
every OOD set with every score, and the Markdown table users read.

Logits are computed on the device with a fixed batch shape (the last batch padded), brought to
the host, and every metric is computed there in float64 (:mod:`moon_jax.metrics`).
"""
from __future__ import annotations

import datetime
from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from moon_jax.data import ImageDataset, eval_batches
from moon_jax.metrics import CONVENTION_CAPTION, OOD_METRIC_KEYS, classification_metrics, ood_metrics, ood_table_mean
from moon_jax.moon import scores as score_lib


def predict_logits(logits_fn: Callable[[np.ndarray], jax.Array], dataset: ImageDataset, batch_size: int) -> np.ndarray:
    """Logits of every example of ``dataset`` as float32 numpy, in order.

    ``logits_fn`` maps a uint8 batch of exactly ``batch_size`` images to logits (it is called
    with the same shape every time, so a jitted function compiles once).
    """
    outputs = []
    pending = []
    for indices, valid in eval_batches(len(dataset), batch_size):
        pending.append((logits_fn(dataset.images[indices]), int(valid.sum())))
        if len(pending) >= 8:  # bounded number of batches in flight
            outputs.extend(np.asarray(jax.device_get(l))[:n] for l, n in pending)
            pending = []
    outputs.extend(np.asarray(jax.device_get(l))[:n] for l, n in pending)
    return np.concatenate(outputs, axis=0).astype(np.float32)


def evaluate_logits(
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    ood_logits: Mapping[str, np.ndarray],
    num_classes: int,
    score_names: Optional[Sequence[str]] = None,
    ece_bins: int = 15,
) -> dict:
    """All metrics from logits: classification on ID test, OOD per set and score, means.

    Returns a JSON-ready dict: ``classification`` (acc, ece, nll, brier, acc_reference,
    ece_reference, unknown_rate), ``ood[score][set]`` (auroc, fpr95, aupr_in, aupr_out) with a
    ``mean`` entry, ``primary_score``, ``scores`` and the metric ``convention``.
    """
    has_unknown = test_logits.shape[1] == num_classes + 1
    score_names = tuple(score_names) if score_names else score_lib.default_scores(has_unknown)
    for name in score_names:
        if name not in score_lib.MOON_SCORES:
            raise ValueError(f"unknown OOD score {name!r}; allowed: {', '.join(score_lib.MOON_SCORES)}")
        if name == "known_probability" and not has_unknown:
            raise ValueError("score 'known_probability' needs a K+1 (MOON) model")
    results = {
        "classification": classification_metrics(test_logits, test_labels, num_known=num_classes, n_bins=ece_bins),
        "num_test": int(len(test_labels)),
        "num_classes": int(num_classes),
        "has_unknown_output": bool(has_unknown),
        "scores": list(score_names),
        "primary_score": score_names[0],
        "ood": {},
        "ood_sizes": {name: int(len(l)) for name, l in ood_logits.items()},
        "convention": CONVENTION_CAPTION,
    }
    for score_name in score_names:
        id_scores = score_lib.score(score_name, test_logits, num_classes)
        per_set = {
            set_name: ood_metrics(id_scores, score_lib.score(score_name, logits, num_classes))
            for set_name, logits in ood_logits.items()
        }
        if per_set:
            per_set["mean"] = ood_table_mean(per_set)
        results["ood"][score_name] = per_set
    return results


def evaluate_model(
    logits_fn: Callable[[np.ndarray], jax.Array],
    test: ImageDataset,
    ood: Mapping[str, ImageDataset],
    num_classes: int,
    batch_size: int,
    score_names: Optional[Sequence[str]] = None,
    ece_bins: int = 15,
) -> dict:
    """Predicts every set with ``logits_fn`` and computes :func:`evaluate_logits`."""
    test_logits = predict_logits(logits_fn, test, batch_size)
    ood_logits = {name: predict_logits(logits_fn, ds, batch_size) for name, ds in ood.items()}
    results = evaluate_logits(test_logits, test.labels, ood_logits, num_classes, score_names, ece_bins)
    results["evaluated_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    return results


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}"


def format_results(results: Mapping, title: str = "") -> str:
    """The Markdown report of :func:`evaluate_logits` results (numbers in percent)."""
    cls = results["classification"]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [
        "| ACC | ECE | NLL | Brier | ACC (ref.) | ECE (ref.) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {_pct(cls['acc'])} | {_pct(cls['ece'])} | {cls['nll']:.4f} | {cls['brier']:.4f} | "
        f"{_pct(cls['acc_reference'])} | {_pct(cls['ece_reference'])} |",
        "",
        f"ACC: argmax over the first K = {results['num_classes']} outputs; ECE: 15 equal-width bins "
        "(lo, hi] on top-1 confidence of the K-class softmax; (ref.): the MOON reference evaluator "
        "(argmax over all outputs, 10 bins [lo, hi)). ID test set: "
        f"{results['num_test']} images.",
    ]
    primary = results["primary_score"]
    per_set = results["ood"].get(primary, {})
    if per_set:
        lines += [
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
                f"| {label} | {n} | {_pct(m['auroc'])} | {_pct(m['fpr95'])} | {_pct(m['aupr_in'])} | {_pct(m['aupr_out'])} |"
            )
        others = [s for s in results["scores"] if s != primary and results["ood"].get(s)]
        if others:
            lines += ["", "Mean over OOD sets for every score:", "", "| score | AUROC | FPR95 | AUPR-In | AUPR-Out |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            for s in results["scores"]:
                m = results["ood"][s]["mean"]
                lines.append(f"| {s} | {_pct(m['auroc'])} | {_pct(m['fpr95'])} | {_pct(m['aupr_in'])} | {_pct(m['aupr_out'])} |")
        lines += ["", results["convention"]]
    return "\n".join(lines)


def headline(results: Mapping) -> dict:
    """The four numbers of the one-line summary: ACC, ECE, mean AUROC, mean FPR95."""
    out = {"acc": results["classification"]["acc"], "ece": results["classification"]["ece"]}
    per_set = results["ood"].get(results["primary_score"], {})
    if "mean" in per_set:
        out.update(auroc=per_set["mean"]["auroc"], fpr95=per_set["mean"]["fpr95"])
    return out


__all__ = ["predict_logits", "evaluate_logits", "evaluate_model", "format_results", "headline", "OOD_METRIC_KEYS"]
