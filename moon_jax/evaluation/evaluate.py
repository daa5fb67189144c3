"""Evaluation of a trained model: accuracy and calibration on the ID test set (with temperature
scaling as the post-hoc baseline), OOD detection on every OOD set with every score, near-/far-OOD
group means, and the Markdown tables users read.

Model outputs (logits, penultimate features, ODIN's perturbed logits) are computed on the device
with a fixed batch shape (the last batch padded), brought to the host, and every score and metric
is computed there in float64 (:mod:`moon_jax.metrics`, :mod:`moon_jax.evaluation.postprocessors`).

Two entry points:

* :func:`evaluate_logits` / :func:`evaluate_model` -- logit scores only (what the training loop
  needs for its periodic evaluation);
* :func:`evaluate_full` -- every score, including ODIN (needs the network's input gradients) and
  the feature scores (need penultimate features of ID training images); it also returns the raw
  score arrays the plots are drawn from.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np

from moon_jax.data import ImageDataset, eval_batches
from moon_jax.evaluation import postprocessors as pp
from moon_jax.metrics import (
    CONVENTION_CAPTION,
    OOD_METRIC_KEYS,
    classification_metrics,
    group_means,
    ood_groups,
    ood_metrics,
    ood_table_mean,
    temperature_scaling,
)
from moon_jax.moon import scores as score_lib
from moon_jax.devices import on_devices

#: Version of the eval.json layout; ``eval.py --compare`` re-evaluates older files.
#: 2: + ``ood_groups``, ``ood_group_members``, ``temperature_scaling``, ``score_settings``,
#: model and feature scores. 3: + ``train_subset_classification``, ``unknown_probability`` and
#: (runs with weight averaging) ``last_iterate``.
FORMAT_VERSION = 3


# --------------------------------------------------------------------------------- predicting
def predict_outputs(fn: Callable[[np.ndarray], object], dataset: ImageDataset, batch_size: int):
    """``fn`` applied to every example of ``dataset``, in order: a pytree of float32 numpy arrays.

    ``fn`` maps a uint8 batch of exactly ``batch_size`` images to an array or a tuple of arrays
    with a leading batch axis (it is called with the same shape every time, so a jitted function
    compiles once); padded rows are dropped.
    """
    chunks = []
    pending = []

    def flush():
        for out, n in pending:
            chunks.append(jax.tree.map(lambda a: np.asarray(a)[:n], jax.device_get(out)))
        pending.clear()

    for indices, valid in eval_batches(len(dataset), batch_size):
        pending.append((fn(dataset.images[indices]), int(valid.sum())))
        if len(pending) >= 8:  # bounded number of batches in flight
            flush()
    flush()
    return jax.tree.map(lambda *parts: np.concatenate(parts, axis=0).astype(np.float32), *chunks)


def predict_logits(logits_fn: Callable[[np.ndarray], jax.Array], dataset: ImageDataset, batch_size: int) -> np.ndarray:
    """Logits of every example of ``dataset`` as float32 numpy, in order (:func:`predict_outputs`)."""
    return predict_outputs(logits_fn, dataset, batch_size)


def train_feature_subset(train, num_examples: int = pp.TRAIN_FEATURE_EXAMPLES, seed: int = pp.TRAIN_FEATURE_SEED) -> ImageDataset:
    """A fixed random subset (file order kept) of at most ``num_examples`` ID training images.

    ``train`` is an :class:`ImageDataset`, or a TFDS source read on demand (``get_batch``) for
    training sets that do not fit in memory. The images are the stored ones (no augmentation).
    """
    if isinstance(train, ImageDataset):
        return train.subset(num_examples, seed=seed)
    n = len(train)
    keep = np.arange(n) if num_examples >= n else np.sort(np.random.default_rng(seed).permutation(n)[:num_examples])
    images, labels = [], []
    for start in range(0, keep.size, 1024):
        batch_images, batch_labels = train.get_batch(keep[start:start + 1024])
        images.append(batch_images)
        labels.append(batch_labels)
    return ImageDataset(
        images=np.concatenate(images), labels=np.concatenate(labels).astype(np.int32),
        num_classes=train.num_classes, name=f"{getattr(train, 'name', 'train')}_subset",
    )


# --------------------------------------------------------------------------------- results
class EvalArrays(NamedTuple):
    """The raw arrays behind an evaluation, for plots.

    Attributes:
      test_logits: (N, C) float32 logits of the ID test set.
      test_labels: (N,) labels.
      num_classes: K.
      scores: score name -> ``{'id': (N,) scores, 'ood': {set name: scores}}`` (float64).
    """

    test_logits: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    scores: dict


def logit_score_arrays(names: Sequence[str], test_logits, ood_logits: Mapping[str, np.ndarray], num_classes: int) -> dict:
    """``{name: {'id': ..., 'ood': {set: ...}}}`` for the logit scores among ``names``."""
    return {
        name: {
            "id": score_lib.score(name, test_logits, num_classes),
            "ood": {s: score_lib.score(name, logits, num_classes) for s, logits in ood_logits.items()},
        }
        for name in names
        if pp.SCORE_KINDS[name] == "logits"
    }


def results_from_scores(
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    score_arrays: Mapping[str, Mapping],
    ood_sizes: Mapping[str, int],
    num_classes: int,
    score_names: Sequence[str],
    ece_bins: int = 15,
) -> dict:
    """The JSON-ready results from the ID logits and every score's ID / OOD arrays.

    Keys: ``classification`` (acc, ece, nll, brier, acc_reference, ece_reference,
    unknown_rate), ``temperature_scaling`` (:func:`moon_jax.metrics.temperature_scaling`),
    ``ood[score][set]`` (auroc, fpr95, aupr_in, aupr_out) with a ``mean`` entry,
    ``ood_groups[score]`` (``near`` / ``far`` / ``all`` plain means, OpenOOD style),
    ``ood_group_members``, ``primary_score`` (the first of ``score_names``), ``scores``,
    ``ood_sizes``, the metric ``convention`` and ``format_version``; for a K+1 model scored with
    ``known_probability``, ``unknown_probability`` (mean p(unknown) on the ID test set, ``id``,
    and on each OOD set, ``ood[set]``).
    """
    has_unknown = test_logits.shape[1] == num_classes + 1
    set_names = list(ood_sizes)
    members = ood_groups(set_names)
    results = {
        "format_version": FORMAT_VERSION,
        "classification": classification_metrics(test_logits, test_labels, num_known=num_classes, n_bins=ece_bins),
        "temperature_scaling": temperature_scaling(test_logits, test_labels, num_known=num_classes, n_bins=ece_bins),
        "num_test": int(len(test_labels)),
        "num_classes": int(num_classes),
        "has_unknown_output": bool(has_unknown),
        "scores": list(score_names),
        "primary_score": score_names[0],
        "ood": {},
        "ood_groups": {},
        "ood_group_members": members,
        "ood_sizes": {name: int(n) for name, n in ood_sizes.items()},
        "convention": CONVENTION_CAPTION,
    }
    for name in score_names:
        arrays = score_arrays[name]
        per_set = {s: ood_metrics(arrays["id"], arrays["ood"][s]) for s in set_names}
        if per_set:
            groups = group_means(per_set, members)
            groups["all"] = ood_table_mean(per_set)
            per_set["mean"] = groups["all"]
            results["ood_groups"][name] = groups
        results["ood"][name] = per_set
    if "known_probability" in score_arrays:
        # mean p(unknown) = 1 - mean(1 - p_unknown): does the K+1 output fire on OOD data at all?
        known = score_arrays["known_probability"]
        results["unknown_probability"] = {
            "id": float(1.0 - np.mean(known["id"])),
            "ood": {s: float(1.0 - np.mean(known["ood"][s])) for s in set_names},
        }
    return results


def evaluate_logits(
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    ood_logits: Mapping[str, np.ndarray],
    num_classes: int,
    score_names: Optional[Sequence[str]] = None,
    ece_bins: int = 15,
) -> dict:
    """All metrics computable from logits alone (logit scores only; see :func:`results_from_scores`).

    Default scores: :func:`moon_jax.moon.scores.default_logit_scores`. A model or feature score
    (``odin``, ``mahalanobis``, ...) raises: use :func:`evaluate_full`.
    """
    has_unknown = test_logits.shape[1] == num_classes + 1
    names = pp.validate_scores(score_names or score_lib.default_logit_scores(has_unknown), has_unknown)
    needs_model = [n for n in names if pp.SCORE_KINDS[n] != "logits"]
    if needs_model:
        raise ValueError(f"scores {', '.join(needs_model)} need the model, not just logits: use evaluate_full")
    arrays = logit_score_arrays(names, test_logits, ood_logits, num_classes)
    sizes = {name: len(l) for name, l in ood_logits.items()}
    return results_from_scores(test_logits, test_labels, arrays, sizes, num_classes, names, ece_bins)


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


@dataclasses.dataclass(frozen=True)
class ModelFunctions:
    """The evaluated model as :func:`evaluate_full` needs it.

    Attributes:
      outputs: uint8 batch -> ``(logits, penultimate features)``, called with a fixed shape.
      head: ``(kernel (D, C), bias (C,))`` of the classifier, as numpy (ReAct recomputes logits).
      odin: uint8 batch -> logits of ODIN's perturbed input (:func:`postprocessors.odin_logits`);
        needed only for the ``odin`` score.
    """

    outputs: Callable[[np.ndarray], tuple]
    head: tuple
    odin: Optional[Callable[[np.ndarray], jax.Array]] = None


def model_functions(
    outputs: Callable[[object, np.ndarray], tuple],
    preprocess: Callable[[np.ndarray], jax.Array],
    apply: Callable[[object, jax.Array], jax.Array],
    variables,
    head: Mapping,
    std: Sequence[float],
    num_known: int,
    odin: bool = True,
    mesh=None,
) -> ModelFunctions:
    """Jitted :class:`ModelFunctions` from the pieces of a model.

    The model's ``variables`` are passed to the jitted functions as arguments, never closed
    over: a closure would bake every weight into the compiled program as a constant (slow to
    compile, and a copy in memory).

    Args:
      outputs: ``(variables, uint8 batch) -> (logits, penultimate features)`` (e.g.
        ``training.steps.model_outputs(..., return_features=True)``).
      preprocess: uint8 batch -> the normalised input the network sees (``TrainingSetup.preprocess``).
      apply: ``(variables, normalised input) -> logits``; ODIN differentiates it with respect to
        its input.
      variables: the model's parameters (and BatchNorm statistics), any pytree.
      head: the classifier's parameters ``{'kernel': (D, C), 'bias': (C,)}``.
      std: per-channel normalisation std (ODIN's step is divided by it, as in OpenOOD).
      num_known: K.
      odin: also build ODIN's function.
      mesh: devices to split each batch over (:func:`on_devices`); ``None``: default device.
    """

    def odin_fn(variables, images):
        return pp.odin_logits(lambda x: apply(variables, x), preprocess(images), std, num_known)

    return ModelFunctions(
        outputs=on_devices(outputs, variables, mesh),
        head=(np.asarray(head["kernel"]), np.asarray(head["bias"])),
        odin=on_devices(odin_fn, variables, mesh) if odin else None,
    )


def flax_model_functions(model, variables, mean: Sequence[float], std: Sequence[float], num_known: int) -> ModelFunctions:
    """:func:`model_functions` of a Flax model whose ``apply(variables, x, train=False,
    return_features=True)`` returns ``(logits, penultimate features)`` and whose classifier is
    ``variables['params']['head']`` (every moon-jax model), with inputs normalised as in training,
    ``(images / 255 - mean) / std`` per channel."""
    from moon_jax.data.augment import normalize

    def preprocess(images):
        return normalize(images, mean, std)

    def apply(variables, x):
        return model.apply(variables, x, train=False)

    def outputs(variables, images):
        return model.apply(variables, preprocess(images), train=False, return_features=True)

    return model_functions(outputs, preprocess, apply, variables, variables["params"]["head"], std, num_known)


def evaluate_full(
    model: ModelFunctions,
    train,
    test: ImageDataset,
    ood: Mapping[str, ImageDataset],
    num_classes: int,
    batch_size: int,
    score_names: Optional[Sequence[str]] = None,
    ece_bins: int = 15,
    train_examples: int = pp.TRAIN_FEATURE_EXAMPLES,
    knn_k: int = pp.KNN_K,
) -> tuple[dict, EvalArrays]:
    """Every metric with every score (default :func:`postprocessors.default_scores`).

    The feature scores' statistics come from the penultimate features of a fixed subset of at
    most ``train_examples`` ID training images (:func:`train_feature_subset`) computed with the
    evaluated model; KNN's k is capped at that subset's size.

    Returns:
      ``(results, arrays)``: the JSON-ready dict of :func:`results_from_scores` plus
      ``score_settings``, ``evaluated_at`` and ``train_subset_classification`` (accuracy of the
      evaluated model on the fixed training subset, eval mode: does it fit its training set?),
      and the :class:`EvalArrays` for plots.
    """
    test_logits, test_features = predict_outputs(model.outputs, test, batch_size)
    has_unknown = test_logits.shape[1] == num_classes + 1
    names = pp.validate_scores(score_names, has_unknown)
    ood_outputs = {name: predict_outputs(model.outputs, ds, batch_size) for name, ds in ood.items()}
    ood_logits = {name: out[0] for name, out in ood_outputs.items()}
    arrays = logit_score_arrays(names, test_logits, ood_logits, num_classes)

    settings = None
    if "odin" in names:
        if model.odin is None:
            raise ValueError("score 'odin' needs ModelFunctions.odin")
        perturbed = {name: predict_outputs(model.odin, ds, batch_size) for name, ds in ood.items()}
        arrays["odin"] = {
            "id": pp.odin_score(predict_outputs(model.odin, test, batch_size), num_classes),
            "ood": {name: pp.odin_score(l, num_classes) for name, l in perturbed.items()},
        }
    feature_names = [n for n in names if pp.SCORE_KINDS[n] == "features"]
    # The training-set fit, on the same fixed subset the feature scores use (one forward pass).
    subset = train_feature_subset(train, train_examples)
    train_logits, train_features = predict_outputs(model.outputs, subset, batch_size)
    train_fit = {
        "acc": float(np.mean(score_lib.predict(train_logits, num_classes) == np.asarray(subset.labels))),
        "num_examples": int(len(subset.labels)),
    }
    if feature_names:
        stats = pp.fit_feature_statistics(train_features, subset.labels, num_classes)
        k = min(knn_k, stats.num_train)
        for name in feature_names:
            arrays[name] = {
                "id": pp.feature_score(name, test_features, stats, model.head, num_classes, k),
                "ood": {
                    s: pp.feature_score(name, out[1], stats, model.head, num_classes, k) for s, out in ood_outputs.items()
                },
            }
        settings = pp.score_settings(stats.num_train, k, stats.react_threshold)
    elif "odin" in names:
        settings = pp.score_settings()

    sizes = {name: len(l) for name, l in ood_logits.items()}
    results = results_from_scores(test_logits, test.labels, arrays, sizes, num_classes, names, ece_bins)
    if settings is not None:
        results["score_settings"] = settings
    results["train_subset_classification"] = train_fit
    results["evaluated_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    return results, EvalArrays(test_logits, np.asarray(test.labels), int(num_classes), arrays)


# --------------------------------------------------------------------------------- reports
def format_percent(x: Optional[float]) -> str:
    """A fraction as a percentage with two decimals for the tables; ``n/a`` for ``None``."""
    return "n/a" if x is None else f"{100.0 * x:.2f}"


def _classification_lines(results: Mapping) -> list[str]:
    cls = results["classification"]
    return [
        "| ACC | ECE | NLL | Brier | ACC (ref.) | ECE (ref.) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {format_percent(cls['acc'])} | {format_percent(cls['ece'])} | {cls['nll']:.4f} | {cls['brier']:.4f} | "
        f"{format_percent(cls['acc_reference'])} | {format_percent(cls['ece_reference'])} |",
        "",
        f"ACC: argmax over the first K = {results['num_classes']} outputs; ECE: 15 equal-width bins "
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
    descriptions = "; ".join(f"`{s}`: {pp.SCORE_DESCRIPTIONS[s]}" for s in scores)
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


__all__ = [
    "FORMAT_VERSION",
    "EvalArrays",
    "ModelFunctions",
    "evaluate_full",
    "evaluate_logits",
    "evaluate_model",
    "format_results",
    "headline",
    "logit_score_arrays",
    "flax_model_functions",
    "model_functions",
    "predict_logits",
    "predict_outputs",
    "results_from_scores",
    "train_feature_subset",
    "OOD_METRIC_KEYS",
]
