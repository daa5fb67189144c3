"""Evaluation of trained models: ID accuracy and calibration (with temperature scaling), OOD
detection with every score (:mod:`~moon_jax.evaluation.score_registry`), near/far-OOD groups,
reports (:mod:`~moon_jax.evaluation.report`), plots (:mod:`~moon_jax.evaluation.plots`, imported on demand: it needs matplotlib) and
the comparison of runs (:mod:`~moon_jax.evaluation.compare`)."""
from moon_jax.evaluation.evaluate import (
    EvalArrays,
    ModelFunctions,
    evaluate_full,
    evaluate_logits,
    evaluate_model,
    flax_model_functions,
    model_functions,
    predict_logits,
    predict_outputs,
)
from moon_jax.evaluation.report import format_results, headline

__all__ = [
    "EvalArrays",
    "ModelFunctions",
    "evaluate_full",
    "evaluate_logits",
    "evaluate_model",
    "flax_model_functions",
    "format_results",
    "headline",
    "model_functions",
    "predict_logits",
    "predict_outputs",
]
