"""Evaluation of a training state: which model to report (the weight average or the last
iterate), its measured and per-layer density, and the full ID + OOD evaluation with every score."""
from __future__ import annotations

import jax

from moon_jax.evaluation import postprocessors as pp
from moon_jax.evaluation.evaluate import ModelFunctions, evaluate_full, evaluate_logits, model_functions, predict_outputs
from moon_jax.training.input_pipeline import RunData
from moon_jax.moon import find_averaging_state
from moon_jax.training.trainer import TrainState, Trainer


def method_name(config) -> str:
    """``MOON + rigl 90% erk``-style description of a run's method, with its ablation and
    baseline switches in parentheses (e.g. ``rigl 90% erk (weight averaging, random mask 0.01)``)."""
    name = config.sparse.method
    if config.sparse.method != "dense":
        name += f" {100 * config.sparse.sparsity:g}% {config.sparse.distribution}"
    m, extras, prefix = config.moon, [], ""
    if m.enabled:
        prefix = "" if m.head == "none" else "MOON + "
        if m.head == "reference_k":
            extras.append("reference K-output head")
        if m.head != "none" and m.loss_weighting == "none":
            extras.append("no loss modification")
        if m.head != "none" and m.alpha_tuning == "fixed":
            extras.append(f"fixed alpha {m.fixed_alpha:g}")
        if not m.averaging_epochs and m.head != "none":
            extras.append("no voting")
        elif m.averaging_epochs and m.head == "none":
            extras.append("weight averaging")
        if m.dropconnect_rate:
            extras.append(f"random mask {m.dropconnect_rate:g}")
    if config.data.mixup_alpha:
        extras.append(f"Mixup {config.data.mixup_alpha:g}")
    return prefix + name + (f" ({', '.join(extras)})" if extras else "")


def averaged_model(state: TrainState):
    """``(params, batch_stats, snapshots)`` of the weight-averaged model, or ``None``."""
    avg = find_averaging_state(state.opt_state)
    if avg is None or int(avg.count) == 0:
        return None
    return avg.average, state.averaged_batch_stats, int(avg.count)


def evaluation_target(state: TrainState):
    """The model to report: the weight average when it exists, else the last iterate."""
    averaged = averaged_model(state)
    if averaged is not None:
        params, batch_stats, count = averaged
        return params, batch_stats, f"weight average of {count} snapshots"
    return state.params, state.batch_stats, f"last iterate (step {int(state.step)})"


def state_model_functions(trainer: Trainer, params, batch_stats) -> ModelFunctions:
    """The evaluated model's device functions through the trainer's own preprocessing and
    forward pass (``Trainer.logits``, ``Trainer.preprocess``, ``model.apply``)."""
    return model_functions(
        outputs=lambda v, images: trainer.logits(v["params"], v["batch_stats"], images, return_features=True),
        preprocess=lambda images: trainer.preprocess(images, None),
        apply=lambda v, x: trainer.model.apply(trainer._variables(v["params"], v["batch_stats"]), x, train=False),
        variables={"params": params, "batch_stats": batch_stats},
        head=params["head"],
        std=trainer.std,
        num_known=trainer.num_classes,
        mesh=trainer.mesh,
    )


def layer_density(trainer: Trainer, state: TrainState) -> dict:
    """Mask density of every sparsifiable layer (1.0 for a layer the distribution kept dense)."""
    return trainer.updater.layer_density_report(state.sparse.masks)


def evaluate_state(
    trainer: Trainer,
    state: TrainState,
    data: RunData,
    config,
    return_arrays: bool = False,
    train_examples: int = pp.TRAIN_FEATURE_EXAMPLES,
):
    """Full evaluation (ID + every OOD set, every score) of the model a state reports.

    Scores: ``config.eval.scores``, or every score that applies
    (:func:`postprocessors.default_scores`). Adds to the results of
    :func:`moon_jax.evaluation.evaluate_full` the keys ``model`` (which model), ``step``,
    ``density`` (measured), ``layer_density`` (per layer, of the masks), ``method``,
    ``dataset`` and ``architecture``. With ``return_arrays`` returns ``(results, EvalArrays)``.
    """
    params, batch_stats, description = evaluation_target(state)
    results, arrays = evaluate_full(
        state_model_functions(trainer, params, batch_stats),
        data.train, data.test, data.ood, trainer.num_classes, config.train.eval_batch_size,
        score_names=tuple(config.eval.scores) or None, ece_bins=config.eval.ece_bins,
        train_examples=train_examples,
    )
    results["model"] = description
    results["step"] = int(state.step)
    results["density"] = masked_density(state, params)
    results["layer_density"] = layer_density(trainer, state)
    results["method"] = method_name(config)
    results["dataset"] = config.data.dataset
    results["architecture"] = config.model.name
    if averaged_model(state) is not None and pp.SCORE_KINDS[results["primary_score"]] == "logits":
        results["last_iterate"] = last_iterate_results(trainer, state, data, config, results["primary_score"])
    return (results, arrays) if return_arrays else results


def last_iterate_results(trainer: Trainer, state: TrainState, data: RunData, config, score_name: str) -> dict:
    """What the voting adds: ACC / ECE / NLL and ``score_name``'s OOD metrics of the last iterate
    (its own BatchNorm statistics), for a run whose reported model is the weight average.

    One logits pass over the test and OOD sets and one logit score (not every score), so it adds
    well under the cost of the full evaluation. Keys: ``model``, ``classification`` (acc, ece,
    nll), ``score``, ``ood`` (per set and ``mean``, as ``results['ood'][score]``).
    """
    outputs = state_model_functions(trainer, state.params, state.batch_stats).outputs
    batch_size = config.train.eval_batch_size
    test_logits, _ = predict_outputs(outputs, data.test, batch_size)
    ood_logits = {name: predict_outputs(outputs, ds, batch_size)[0] for name, ds in data.ood.items()}
    results = evaluate_logits(test_logits, data.test.labels, ood_logits, trainer.num_classes, (score_name,),
                              config.eval.ece_bins)
    return {
        "model": f"last iterate (step {int(state.step)})",
        "classification": {k: results["classification"][k] for k in ("acc", "ece", "nll")},
        "score": score_name,
        "ood": results["ood"][score_name],
    }


def masked_density(state: TrainState, params) -> dict:
    """Measured density of the evaluated parameters over the masked layers."""
    masks = state.sparse.masks
    total = sum(m.size for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None) if m is not None)
    return {"masked_layers_nonzero_fraction": float(Trainer.masked_density(params, masks)), "masked_weights": total}
