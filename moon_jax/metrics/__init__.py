"""Evaluation metrics: accuracy and calibration (Guo et al. 2017 ECE, NLL, Brier) and OOD
detection (AUROC, FPR@95, AUPR-In/Out; OpenOOD / Hendrycks & Gimpel 2017 conventions).

All host-side NumPy in float64; inputs may be NumPy or JAX arrays.
"""

from moon_jax.metrics.calibration import (
    DEFAULT_ECE_BINS,
    REFERENCE_ECE_BINS,
    CalibrationBins,
    brier_score,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
    TEMPERATURE_FIT_FRACTION,
    TEMPERATURE_SPLIT_SEED,
    fit_temperature,
    log_softmax64,
    negative_log_likelihood,
    reference_ece,
    temperature_nll_gradient,
    temperature_scaling,
    temperature_split,
    top1_confidence,
)
from moon_jax.metrics.ood import (
    CONVENTION_CAPTION,
    NEAR_OOD_SETS,
    OOD_METRIC_KEYS,
    group_means,
    ood_group,
    split_group_prefix,
    ood_groups,
    ood_metrics,
    ood_table_mean,
)

__all__ = [
    "DEFAULT_ECE_BINS",
    "REFERENCE_ECE_BINS",
    "CalibrationBins",
    "brier_score",
    "calibration_bins",
    "classification_metrics",
    "expected_calibration_error",
    "log_softmax64",
    "negative_log_likelihood",
    "reference_ece",
    "TEMPERATURE_FIT_FRACTION",
    "TEMPERATURE_SPLIT_SEED",
    "fit_temperature",
    "temperature_nll_gradient",
    "temperature_scaling",
    "temperature_split",
    "top1_confidence",
    "CONVENTION_CAPTION",
    "NEAR_OOD_SETS",
    "OOD_METRIC_KEYS",
    "group_means",
    "ood_group",
    "split_group_prefix",
    "ood_groups",
    "ood_metrics",
    "ood_table_mean",
]
