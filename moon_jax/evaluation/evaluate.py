"""Evaluation of a trained model: accuracy and calibration on the ID test set (with temperature
scaling as the post-hoc baseline), OOD detection on every OOD set with every score, near-/far-OOD
group means. The Markdown tables users read are :mod:`moon_jax.evaluation.report`.

Model outputs (logits, penultimate features, ODIN's perturbed logits) are computed on the device
with a fixed batch shape (the last batch padded), brought to the host, and every score and metric
is computed there in float64 (:mod:`moon_jax.metrics`; every score is one record of
:mod:`moon_jax.evaluation.score_registry`).

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
from moon_jax.evaluation import score_registry as registry
from moon_jax.evaluation.score_registry import ScoreContext, SetOutputs
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
from moon_jax.data.augment import normalize
from moon_jax.devices import on_devices
from moon_jax.moon.scores import predict

#: Version of the eval.json layout; ``eval.py --compare`` re-evaluates older files.
#: 2: + ``ood_groups``, ``ood_group_members``, ``temperature_scaling``, ``score_settings``,
#: model and feature scores. 3: + ``train_subset_classification``, ``unknown_probability`` and
#: (runs with weight averaging) ``last_iterate``. 4: + ``ece_bins``.
FORMAT_VERSION = 4


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
    ``ece_bins`` (the equal-width bins of ``ece`` and of temperature scaling's ECEs; the
    reference's ``ece_reference`` keeps its 10),
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
        "ece_bins": int(ece_bins),
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

    Default scores: the logit scores among the model's defaults
    (:func:`moon_jax.evaluation.score_registry.default_scores`). A model or feature score
    (``odin``, ``mahalanobis``, ...) raises: use :func:`evaluate_full`.
    """
    has_unknown = test_logits.shape[1] == num_classes + 1
    names = registry.validate_scores(score_names or registry.default_scores(has_unknown, kinds=("logits",)), has_unknown)
    needs_model = [n for n in names if registry.BY_NAME[n].kind != "logits"]
    if needs_model:
        raise ValueError(f"scores {', '.join(needs_model)} need the model, not just logits: use evaluate_full")
    ood_outputs = {name: SetOutputs(logits) for name, logits in ood_logits.items()}
    arrays = registry.score_arrays(names, SetOutputs(test_logits), ood_outputs, ScoreContext(num_classes))
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
    outputs: Optional[Callable[[object, np.ndarray], tuple]],
    preprocess: Callable[[np.ndarray], jax.Array],
    apply: Callable[[object, jax.Array], jax.Array],
    variables,
    head: Mapping,
    std: Sequence[float],
    num_known: int,
    odin: bool = True,
    mesh=None,
    outputs_program: Optional[Callable] = None,
) -> ModelFunctions:
    """Jitted :class:`ModelFunctions` from the pieces of a model.

    The model's ``variables`` are passed to the jitted functions as arguments, never closed
    over: a closure would bake every weight into the compiled program as a constant (slow to
    compile, and a copy in memory).

    Args:
      outputs: ``(variables, uint8 batch) -> (logits, penultimate features)`` (e.g.
        ``training.steps.model_outputs(..., return_features=True)``); ``None`` when
        ``outputs_program`` is given.
      preprocess: uint8 batch -> the normalised input the network sees (``TrainingSetup.preprocess``).
      apply: ``(variables, normalised input) -> logits``; ODIN differentiates it with respect to
        its input.
      variables: the model's parameters (and BatchNorm statistics), any pytree.
      head: the classifier's parameters ``{'kernel': (D, C), 'bias': (C,)}``.
      std: per-channel normalisation std (ODIN's step is divided by it, as in OpenOOD).
      num_known: K.
      odin: also build ODIN's function.
      mesh: devices to split each batch over (:func:`on_devices`); ``None``: default device.
      outputs_program: ``outputs`` already compiled by :func:`moon_jax.devices.batched_device_function`
        (``(variables, images) -> outputs``), to reuse one compiled forward pass for several
        models of the same shapes; ``None`` compiles ``outputs`` here.
    """

    if outputs is None and outputs_program is None:
        raise ValueError("model_functions needs outputs or outputs_program")

    def odin_fn(variables, images):
        return pp.odin_logits(lambda x: apply(variables, x), preprocess(images), std, num_known)

    return ModelFunctions(
        outputs=(on_devices(outputs, variables, mesh) if outputs_program is None
                 else lambda images: outputs_program(variables, images)),
        head=(np.asarray(head["kernel"]), np.asarray(head["bias"])),
        odin=on_devices(odin_fn, variables, mesh) if odin else None,
    )


def flax_model_functions(model, variables, mean: Sequence[float], std: Sequence[float], num_known: int) -> ModelFunctions:
    """:func:`model_functions` of a Flax model whose ``apply(variables, x, train=False,
    return_features=True)`` returns ``(logits, penultimate features)`` and whose classifier is
    ``variables['params']['head']`` (every moon-jax model), with inputs normalised as in training,
    ``(images / 255 - mean) / std`` per channel."""
    def preprocess(images):
        return normalize(images, mean, std)

    def apply(variables, x):
        return model.apply(variables, x, train=False)

    def outputs(variables, images):
        return model.apply(variables, preprocess(images), train=False, return_features=True)

    return model_functions(outputs, preprocess, apply, variables, variables["params"]["head"], std, num_known)


def predict_set(model: ModelFunctions, dataset: ImageDataset, batch_size: int, with_odin: bool) -> SetOutputs:
    """Logits and penultimate features of every image of ``dataset`` and, ``with_odin``, the
    logits of ODIN's perturbed input: what the scores of the registry read."""
    logits, features = predict_outputs(model.outputs, dataset, batch_size)
    odin_logits = predict_outputs(model.odin, dataset, batch_size) if with_odin else None
    return SetOutputs(logits, features, odin_logits)


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
    """Every metric with every score (default :func:`score_registry.default_scores`).

    The feature scores' statistics come from the penultimate features of a fixed subset of at
    most ``train_examples`` ID training images (:func:`train_feature_subset`) computed with the
    evaluated model; KNN's k is capped at that subset's size.

    Returns:
      ``(results, arrays)``: the JSON-ready dict of :func:`results_from_scores` plus
      ``score_settings``, ``evaluated_at`` and ``train_subset_classification`` (accuracy of the
      evaluated model on the fixed training subset, eval mode: does it fit its training set?),
      and the :class:`EvalArrays` for plots.
    """
    has_unknown = np.shape(model.head[0])[-1] == num_classes + 1
    names = registry.validate_scores(score_names, has_unknown)
    kinds = registry.kinds_of(names)
    with_odin = "model" in kinds
    if with_odin and model.odin is None:
        raise ValueError("score 'odin' needs ModelFunctions.odin")
    id_outputs = predict_set(model, test, batch_size, with_odin)
    ood_outputs = {name: predict_set(model, ds, batch_size, with_odin) for name, ds in ood.items()}
    # The training-set fit, on the same fixed subset the feature scores use (one forward pass).
    subset = train_feature_subset(train, train_examples)
    train_logits, train_features = predict_outputs(model.outputs, subset, batch_size)
    train_fit = {
        "acc": float(np.mean(predict(train_logits, num_classes) == np.asarray(subset.labels))),
        "num_examples": int(len(subset.labels)),
    }
    stats = pp.fit_feature_statistics(train_features, subset.labels, num_classes) if "features" in kinds else None
    k = min(knn_k, stats.num_train) if stats else knn_k
    arrays = registry.score_arrays(names, id_outputs, ood_outputs, ScoreContext(num_classes, model.head, stats, k))
    settings = None
    if stats:
        settings = pp.score_settings(stats.num_train, k, stats.react_threshold)
    elif with_odin:
        settings = pp.score_settings()

    test_logits = id_outputs.logits
    sizes = {name: len(outputs.logits) for name, outputs in ood_outputs.items()}
    results = results_from_scores(test_logits, test.labels, arrays, sizes, num_classes, names, ece_bins)
    if settings is not None:
        results["score_settings"] = settings
    results["train_subset_classification"] = train_fit
    results["evaluated_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    return results, EvalArrays(test_logits, np.asarray(test.labels), int(num_classes), arrays)


__all__ = [
    "FORMAT_VERSION",
    "EvalArrays",
    "ModelFunctions",
    "evaluate_full",
    "evaluate_logits",
    "evaluate_model",
    "flax_model_functions",
    "model_functions",
    "predict_logits",
    "predict_outputs",
    "predict_set",
    "results_from_scores",
    "train_feature_subset",
    "OOD_METRIC_KEYS",
]
