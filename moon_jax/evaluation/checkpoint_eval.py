"""eval.py's work: rebuild a run from its checkpoint, evaluate the model it saved, write eval.json
and the plots next to it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import jax
import ml_collections

from moon_jax.devices import DataParallel
from moon_jax.evaluation import postprocessors as pp
from moon_jax.evaluation.report import format_results
from moon_jax.evaluation.plots import write_plots
from moon_jax.evaluation.runner import evaluate_state
from moon_jax.evaluation.score_registry import validate_scores
from moon_jax.training import (
    CheckpointError,
    ConfigError,
    abstract_train_state,
    build_run,
    describe_method,
)
from moon_jax.training.files import write_error
from moon_jax.training.run_directory import RunDirectory


def load_run_config(workdir, step: Optional[int] = None) -> ml_collections.ConfigDict:
    """The config a checkpoint (the newest readable one by default) was trained with."""
    with RunDirectory(workdir) as run_dir:
        return run_dir.read_saved_config(step)


def results_title(config, results: dict) -> str:
    """The heading of a run's evaluation report (dataset / model / method (which model))."""
    return f"{config.data.dataset} / {config.model.name} / {describe_method(config)} ({results['model']})"


def report_and_save(
    run_dir: RunDirectory,
    results: dict,
    arrays,
    config,
    output: Optional[str] = None,
    plots: bool = True,
    verbose: bool = True,
) -> dict:
    """Prints the evaluation report (``verbose``), then writes the plots (unless ``plots`` is
    false; ``results['plots']`` lists them) and ``eval.json`` (or ``output``), on process 0.

    The report is printed before anything is written, so a failed write (one
    :class:`~moon_jax.training.files.WriteError` naming the path) loses no result.
    """
    results["plots"] = []
    if jax.process_index() != 0:
        return results
    path = Path(output) if output else run_dir.results_path
    title = results_title(config, results)
    if verbose:
        print(format_results(results, title=title), flush=True)
    if plots and arrays is not None:
        try:
            results["plots"] = write_plots(path.parent, results, arrays, run_dir.read_metrics(), title)
        except OSError as err:
            raise write_error(path.parent, err) from None
    run_dir.write_results(results, path)
    if verbose:
        print(f"\nwritten to {path}")
        if results["plots"]:
            print(f"plots in {path.parent}: {', '.join(results['plots'])}")
    return results


def evaluate_workdir(
    workdir,
    ood: Optional[Sequence[str]] = None,
    scores: Optional[Sequence[str]] = None,
    data_dir: Optional[str] = None,
    batch_size: Optional[int] = None,
    step: Optional[int] = None,
    output: Optional[str] = None,
    plots: bool = True,
    train_examples: int = pp.TRAIN_FEATURE_EXAMPLES,
    verbose: bool = True,
) -> dict:
    """Evaluates the checkpoint (the newest that restores, or ``step``) of a training workdir;
    prints, then saves.

    Writes the results to ``output`` (default ``<workdir>/eval.json``) and, unless ``plots`` is
    false, the PNGs of :mod:`moon_jax.evaluation.plots` into the same directory (the training
    curves from ``<workdir>/metrics.jsonl``); ``results['plots']`` lists the files written.
    ``verbose``: print the Markdown report.
    """
    run_dir = RunDirectory(workdir)
    if not run_dir.has_checkpoint_directory():
        raise CheckpointError(
            f"{workdir} has no checkpoints/ directory: pass the --workdir a `python train.py` run wrote"
        )
    with run_dir:
        config = run_dir.read_saved_config(step)
        if ood is not None:
            config.data.ood_datasets = tuple(ood)
        if scores is not None:
            config.eval.scores = tuple(scores)
        if data_dir is not None:
            config.data.data_dir = data_dir
        if batch_size is not None:
            config.train.eval_batch_size = batch_size
        data, setup = build_run(config)
        try:
            validate_scores(config.eval.scores, setup.model.num_outputs == setup.num_classes + 1)
        except ValueError as err:
            raise ConfigError(f"--scores: {err}") from None
        abstract = abstract_train_state(setup, data.image_shape, DataParallel(setup.split.mesh).replicated)
        if step is None:
            state, _ = run_dir.checkpointer.restore_newest(abstract, config)
        else:
            state, _ = run_dir.checkpointer.restore(abstract, config, step)
    results, arrays = evaluate_state(setup, state, data, config, return_arrays=True, train_examples=train_examples)
    results["checkpoint_step"] = int(state.step)
    return report_and_save(run_dir, results, arrays, config, output=output, plots=plots, verbose=verbose)
