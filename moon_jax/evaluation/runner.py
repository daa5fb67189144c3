"""Evaluation of a training state: which model to report (the weight average or the last
iterate), its measured and per-layer density, the full ID + OOD evaluation with every score, and
the short periodic evaluation the training loop runs as a callback."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax

from moon_jax import moon, sparse
from moon_jax.evaluation import postprocessors as pp
from moon_jax.evaluation.score_registry import BY_NAME
from moon_jax.evaluation.evaluate import (
    ModelFunctions,
    evaluate_full,
    evaluate_logits,
    evaluate_model,
    model_functions,
    predict_outputs,
)
from moon_jax.training import (
    RunData,
    TrainingSetup,
    TrainState,
    compile_steps,
    describe_method,
    refresh_averaged_batch_stats,
    training_batches,
)
from moon_jax.devices import DataParallel, batched_device_function
from moon_jax.training.steps import model_outputs


def with_current_average_batch_stats(setup: TrainingSetup, state: TrainState, data: RunData, config) -> TrainState:
    """``state`` with the weight average's BatchNorm statistics recomputed if they are stale
    (a checkpoint saved before the end of training, e.g. with ``--stop_at_step``)."""
    found = moon.find_averaging_state(state.opt_state)
    if found is None or int(found.count) == int(state.averaged_batch_stats_snapshots):
        return state
    placement = DataParallel(setup.split.mesh)
    accumulate = compile_steps(setup, placement).accumulate_batch_stats
    return refresh_averaged_batch_stats(
        state, training_batches(data, placement, config), config.train.batch_size, config.seed, accumulate
    )


def evaluation_target(state: TrainState):
    """``(params, batch_stats, description)`` of the model to report: the weight average when it
    exists, else the last iterate."""
    averaged = moon.averaged_params(state.opt_state)
    if averaged is not None:
        params, count = averaged
        return params, state.averaged_batch_stats, f"weight average of {count} snapshots"
    return state.params, state.batch_stats, f"last iterate (step {int(state.step)})"


def outputs_program(setup: TrainingSetup) -> Callable:
    """The setup's eval forward pass, ``(variables, uint8 batch) -> (logits, penultimate
    features)``, compiled on first use: one program for the periodic evaluation, the reported
    model and the last iterate of a run (each new jit of it would compile again)."""
    return batched_device_function(functools.partial(model_outputs, setup, return_features=True), setup.split.mesh)


def state_model_functions(setup: TrainingSetup, params, batch_stats, program: Optional[Callable] = None) -> ModelFunctions:
    """The evaluated model's device functions through the training setup's own preprocessing
    and forward pass (``program``: an :func:`outputs_program` to reuse)."""
    return model_functions(
        outputs=None,
        preprocess=setup.preprocess,
        apply=lambda v, x: setup.model.apply(setup.variables(v["params"], v["batch_stats"]), x, train=False),
        variables={"params": params, "batch_stats": batch_stats},
        head=params["head"],
        std=setup.preprocess.std,
        num_known=setup.num_classes,
        mesh=setup.split.mesh,
        outputs_program=program if program is not None else outputs_program(setup),
    )


def density_record(params, masks) -> dict:
    """Measured density of ``params`` over the masked layers, and how many weights those hold."""
    total = sum(m.size for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None) if m is not None)
    nonzero = float(sparse.mask_statistics(params, masks)["nonzero_fraction"])
    return {"masked_layers_nonzero_fraction": nonzero, "masked_weights": total}


def evaluate_state(
    setup: TrainingSetup,
    state: TrainState,
    data: RunData,
    config,
    return_arrays: bool = False,
    train_examples: int = pp.TRAIN_FEATURE_EXAMPLES,
    program: Optional[Callable] = None,
):
    """Full evaluation (ID + every OOD set, every score) of the model a state reports.

    Scores: ``config.eval.scores``, or every score that applies
    (:func:`score_registry.default_scores`). Adds to the results of
    :func:`moon_jax.evaluation.evaluate_full` the keys ``model`` (which model), ``step``,
    ``density`` (measured), ``layer_density`` (per layer, of the masks), ``method``,
    ``dataset`` and ``architecture``. With ``return_arrays`` returns ``(results, EvalArrays)``.
    ``program``: the run's :func:`outputs_program` if it has one (else one is compiled here and
    serves the last iterate too).
    """
    program = program or outputs_program(setup)
    state = with_current_average_batch_stats(setup, state, data, config)
    params, batch_stats, description = evaluation_target(state)
    results, arrays = evaluate_full(
        state_model_functions(setup, params, batch_stats, program),
        data.train, data.test, data.ood, setup.num_classes, config.train.eval_batch_size,
        score_names=tuple(config.eval.scores) or None, ece_bins=config.eval.ece_bins,
        train_examples=train_examples,
    )
    results["model"] = description
    results["step"] = int(state.step)
    results["density"] = density_record(params, state.masks)
    results["layer_density"] = setup.updater.layer_density_report(state.masks, params)
    results["method"] = describe_method(config)
    results["dataset"] = config.data.dataset
    results["architecture"] = config.model.name
    if moon.averaged_params(state.opt_state) is not None and BY_NAME[results["primary_score"]].kind == "logits":
        results["last_iterate"] = last_iterate_results(setup, state, data, config, results["primary_score"], program)
    return (results, arrays) if return_arrays else results


def last_iterate_results(setup: TrainingSetup, state: TrainState, data: RunData, config, score_name: str,
                         program: Optional[Callable] = None) -> dict:
    """What the voting adds: ACC / ECE / NLL and ``score_name``'s OOD metrics of the last iterate
    (its own BatchNorm statistics), for a run whose reported model is the weight average.

    One logits pass over the test and OOD sets and one logit score (not every score), so it adds
    well under the cost of the full evaluation. Keys: ``model``, ``classification`` (acc, ece,
    nll), ``score``, ``ood`` (per set and ``mean``, as ``results['ood'][score]``).
    """
    outputs = state_model_functions(setup, state.params, state.batch_stats, program).outputs
    batch_size = config.train.eval_batch_size
    test_logits, _ = predict_outputs(outputs, data.test, batch_size)
    ood_logits = {name: predict_outputs(outputs, ds, batch_size)[0] for name, ds in data.ood.items()}
    results = evaluate_logits(test_logits, data.test.labels, ood_logits, setup.num_classes, (score_name,),
                              config.eval.ece_bins)
    return {
        "model": f"last iterate (step {int(state.step)})",
        "classification": {k: results["classification"][k] for k in ("acc", "ece", "nll")},
        "score": score_name,
        "ood": results["ood"][score_name],
    }


def periodic_classification(data: RunData, config, program: Optional[Callable] = None) -> Callable[[TrainingSetup, TrainState], dict]:
    """The training loop's periodic evaluation: ACC / ECE / NLL of the current iterate on the ID
    test set, through ``program`` (the run's :func:`outputs_program`; built on the first call if
    ``None``)."""
    compiled = {"outputs": program} if program is not None else {}

    def evaluate(setup: TrainingSetup, state: TrainState) -> dict:
        if "outputs" not in compiled:
            compiled["outputs"] = outputs_program(setup)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        results = evaluate_model(
            lambda images: compiled["outputs"](variables, images)[0], data.test, {}, setup.num_classes,
            config.train.eval_batch_size, ece_bins=config.eval.ece_bins,
        )
        cls = results["classification"]
        return {"acc": cls["acc"], "ece": cls["ece"], "nll": cls["nll"]}

    return evaluate
