"""``train_and_evaluate(config, workdir)``: a whole run, training then the final evaluation."""
from __future__ import annotations

from typing import Optional, Sequence

from moon_jax.evaluation.checkpoint_eval import report_and_save
from moon_jax.evaluation.runner import evaluate_state, outputs_program, periodic_classification
from moon_jax.training import build_run, train
from moon_jax.training.run_directory import RunDirectory


def train_and_evaluate(config, workdir, evaluate_at_end: bool = True, stop_at_step: Optional[int] = None,
                       allow_changed: Sequence[str] = (), plots: bool = True) -> dict:
    """Trains (resuming from ``workdir``) with periodic evaluation, then evaluates the final model.

    Returns the final evaluation results (:func:`moon_jax.evaluation.runner.evaluate_state`),
    printed as a Markdown table, then written with its plots (none with ``plots=False``) to
    ``<workdir>/eval.json`` as ``eval.py`` writes them. With ``stop_at_step`` the run saves a
    checkpoint at that global step and returns ``{}`` (a later call continues it);
    ``evaluate_at_end=False`` returns ``{}`` after training. ``allow_changed``: optimiser fields
    that may differ from the checkpoint's (:func:`moon_jax.training.train`).
    """
    data, setup = build_run(config)
    program = outputs_program(setup)  # one compiled forward pass for every evaluation of the run
    state = train(config, workdir, data, setup, periodic_eval=periodic_classification(data, config, program),
                  stop_at_step=stop_at_step, allow_changed=allow_changed)
    if state is None or not evaluate_at_end:
        return {}
    results, arrays = evaluate_state(setup, state, data, config, return_arrays=True, program=program)
    results["checkpoint_step"] = int(state.step)
    return report_and_save(RunDirectory(workdir), results, arrays, config, plots=plots)
