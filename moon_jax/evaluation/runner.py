"""Evaluation of a training state: which model to report (the weight average or the last
iterate), its measured density, and the full ID + OOD evaluation."""
from __future__ import annotations

import jax
import numpy as np

from moon_jax.evaluation.evaluate import evaluate_model
from moon_jax.training.input_pipeline import RunData
from moon_jax.training.trainer import TrainState, Trainer, find_averaging_state


def method_name(config) -> str:
    """``MOON + rigl 90% erk``-style description of a run's method."""
    name = config.sparse.method
    if config.sparse.method != "dense":
        name += f" {100 * config.sparse.sparsity:g}% {config.sparse.distribution}"
    return ("MOON + " if config.moon.enabled else "") + name


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


def evaluate_state(trainer: Trainer, state: TrainState, data: RunData, config) -> dict:
    """Full evaluation (ID + every OOD set) of the model a state reports."""
    params, batch_stats, description = evaluation_target(state)
    logits_fn = jax.jit(lambda images: trainer.logits(params, batch_stats, images))
    results = evaluate_model(
        logits_fn, data.test, data.ood, trainer.num_classes, config.train.eval_batch_size,
        score_names=tuple(config.eval.scores) or None, ece_bins=config.eval.ece_bins,
    )
    results["model"] = description
    results["step"] = int(state.step)
    results["density"] = masked_density(state, params)
    results["method"] = method_name(config)
    return results


def masked_density(state: TrainState, params) -> dict:
    """Measured density of the evaluated parameters over the masked layers."""
    total = nonzero = 0
    masks = jax.tree.leaves(state.sparse.masks, is_leaf=lambda x: x is None)
    for mask, p in zip(masks, jax.tree.leaves(params)):
        if mask is not None:
            total += p.size
            nonzero += int(np.count_nonzero(np.asarray(p)))
    return {"masked_layers_nonzero_fraction": nonzero / total if total else 1.0, "masked_weights": total}
