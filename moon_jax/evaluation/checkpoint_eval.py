"""eval.py's work: rebuild a run from its checkpoint and evaluate the model it saved."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import jax
import ml_collections

from moon_jax.evaluation.evaluate import format_results
from moon_jax.training.checkpoint import CheckpointError, Checkpointer
from moon_jax.training.config import base_config
from moon_jax.evaluation.runner import evaluate_state, method_name
from moon_jax.training.loop import abstract_state, build_run


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
) -> dict:
    """Evaluates the checkpoint (latest, or ``step``) of a training workdir; prints and saves."""
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
    data, trainer = build_run(config)
    checkpointer = Checkpointer(workdir)
    state, _ = checkpointer.restore(abstract_state(trainer, data.image_shape), config, step)
    results = evaluate_state(trainer, state, data, config)
    results["checkpoint_step"] = int(state.step)
    if jax.process_index() == 0:
        path = Path(output) if output else workdir / "eval.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(format_results(results, title=f"{config.data.dataset} / {config.model.name} / {method_name(config)} ({results['model']})"))
        print(f"\nwritten to {path}")
    return results
