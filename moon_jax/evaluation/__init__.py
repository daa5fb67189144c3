"""Evaluation of trained models: ID accuracy and calibration, OOD detection, reports."""
from moon_jax.evaluation.evaluate import evaluate_logits, evaluate_model, format_results, headline, predict_logits
