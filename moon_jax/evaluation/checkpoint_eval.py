"""eval.py's work: rebuild a run from its checkpoint, evaluate the model it saved, write eval.json
and the plots next to it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import jax
import ml_collections

from moon_jax.evaluation import postprocessors as pp
from moon_jax.evaluation.report import format_results
from moon_jax.evaluation.plots import write_plots
from moon_jax.evaluation.runner import evaluate_state
from moon_jax.evaluation.score_registry import validate_scores
from moon_jax.training import (
    CheckpointError,
    Checkpointer,
    ConfigError,
    DataParallel,
    abstract_train_state,
    base_config,
    build_run,
    describe_method,
)
from moon_jax.training.reporting import read_metrics


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
    """A full ConfigDict from a saved JSON config: base defaults updated with ``values``.

    JSON turns tuples into lists; fields whose default is a tuple get tuples back.
    """
    config = base_config()

    def update(node: ml_collections.ConfigDict, saved: dict, prefix: str):
        for key, value in saved.items():
            if key not in node:
                raise CheckpointError(
                    f"the checkpoint's config has a field config.{prefix}{key} this version does not know; "
                    "it was written by another moon-jax version"
                )
            if isinstance(node[key], ml_collections.ConfigDict):
                update(node[key], value, prefix + key + ".")
            elif isinstance(node[key], tuple):
                node[key] = tuple(value)
            else:
                node[key] = value

    update(config, values, "")
    return config


def load_run_config(workdir, step: Optional[int] = None) -> ml_collections.ConfigDict:
    """The config a checkpoint was trained with."""
    meta = Checkpointer(workdir).read_meta(step)
    if "config" not in meta:
        raise CheckpointError(f"the checkpoint in {workdir} has no saved config; it is not a moon-jax checkpoint")
    return config_from_dict(meta["config"])


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
    """Evaluates the checkpoint (latest, or ``step``) of a training workdir; prints and saves.

    Writes the results to ``output`` (default ``<workdir>/eval.json``) and, unless ``plots`` is
    false, the PNGs of :mod:`moon_jax.evaluation.plots` into the same directory (the training
    curves from ``<workdir>/metrics.jsonl``); ``results['plots']`` lists the files written.
    ``verbose``: print the Markdown report.
    """
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(
            f"{workdir} has no checkpoints/ directory: pass the --workdir a `python train.py` run wrote"
        )
    config = load_run_config(workdir, step)
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
    checkpointer = Checkpointer(workdir)
    replicated = DataParallel(setup.split.mesh).replicated
    state, _ = checkpointer.restore(abstract_train_state(setup, data.image_shape, replicated), config, step)
    checkpointer.close()
    results, arrays = evaluate_state(setup, state, data, config, return_arrays=True, train_examples=train_examples)
    results["checkpoint_step"] = int(state.step)
    results["plots"] = []
    if jax.process_index() == 0:
        path = Path(output) if output else workdir / "eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"{config.data.dataset} / {config.model.name} / {describe_method(config)} ({results['model']})"
        if plots:
            results["plots"] = write_plots(path.parent, results, arrays, read_metrics(workdir), title)
        path.write_text(json.dumps(results, indent=2) + "\n")
        if verbose:
            print(format_results(results, title=title))
            print(f"\nwritten to {path}")
            if results["plots"]:
                print(f"plots in {path.parent}: {', '.join(results['plots'])}")
    return results
