"""Orbax checkpoints of the whole :class:`TrainState`, with the run's identity beside it.

A checkpoint holds the state pytree (params, BatchNorm statistics, optimizer state with the
weight average, masks, MOON state, step, key) and a JSON record: the config, a fingerprint of
the fields that define the run, the step and epoch, and a description of the state's shapes.
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a crash
during a save leaves the previous checkpoint intact and no partial one visible.

Resuming or evaluating with a checkpoint whose fingerprint differs from the current config (a
different model, dataset, sparsity, method, ...) is refused with one clear error.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

# Fields that may change between a run and its resumption / evaluation without changing what is
# being trained.
OPERATIONAL_FIELDS = (
    "data.data_dir",
    "data.tfds_data_dir",
    "data.ood_datasets",
    "data.num_ood_examples",
    "data.source",
    "train.eval_batch_size",
    "train.log_every_steps",
    "train.eval_every_epochs",
    "train.checkpoint_every_epochs",
    "train.checkpoints_to_keep",
    "train.progress_bar",
    "eval",
    "train.exact_reduction",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial, corrupt, or belongs to another run."""


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = prefix + key
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields that define the run (everything but :data:`OPERATIONAL_FIELDS`)."""
    flat = _flatten(config)
    return {
        k: v
        for k, v in flat.items()
        if not any(k == f or k.startswith(f + ".") for f in OPERATIONAL_FIELDS)
    }


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable ``field: saved -> current`` lines for every differing field.

    A field the checkpoint lacks (added to :func:`moon_jax.training.config.base_config` after it
    was written) differs only when the current value is not the field's default.
    """
    from moon_jax.training.config import base_config

    defaults = fingerprint(base_config())
    lines = []
    for key in sorted(set(saved) | set(current)):
        if key not in saved and key in current and key in defaults and current[key] == defaults[key]:
            continue
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if a != b and not (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b)):
            lines.append(f"{key}: checkpoint has {a!r}, config has {b!r}")
    return lines


def describe_shapes(state) -> dict[str, list[int]]:
    """Shape of every leaf of the state, by path (to explain mismatches)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in flat}


class Checkpointer:
    """Saves and restores train states under ``<workdir>/checkpoints``."""

    def __init__(self, workdir, max_to_keep: int = 2):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> Optional[int]:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, config: ml_collections.ConfigDict, extra: Optional[dict] = None) -> None:
        """Starts writing a checkpoint of ``state`` at ``step`` and returns once the arrays are
        copied off the device; the files are written in the background (orbax's asynchronous
        save). The next save, :meth:`wait_until_finished` or :meth:`close` waits for it."""
        meta = {
            "step": int(step),
            "config": json.loads(config.to_json_best_effort()),
            "fingerprint": fingerprint(config),
            "shapes": describe_shapes(state),
        }
        meta.update(extra or {})
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def wait_until_finished(self) -> None:
        """Blocks until the checkpoint being written (if any) is complete on disk."""
        self._manager.wait_until_finished()

    def read_meta(self, step: Optional[int] = None) -> dict:
        """The JSON record of a checkpoint (the latest by default)."""
        step = self._require_step(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax raises many types for damaged files
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} has an unreadable metadata record "
                f"({type(err).__name__}: {err}); it is corrupt or partial. Delete "
                f"{self.directory / str(step)} to fall back to an older checkpoint."
            ) from err
        return dict(restored.meta)

    def _require_step(self, step: Optional[int]) -> int:
        if step is None:
            step = self.latest_step()
        if step is None:
            raise CheckpointError(
                f"no checkpoint found in {self.directory}: train first with "
                f"`python train.py --workdir {self.directory.parent}` (or point --workdir at a run)"
            )
        steps = self.all_steps()
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint at step {step} in {self.directory}; the steps saved are "
                f"{', '.join(map(str, sorted(steps))) or 'none'} (leave --step out for the latest)"
            )
        return step

    def check_compatible(self, meta: dict, config: ml_collections.ConfigDict) -> None:
        """Raises :class:`CheckpointError` if the checkpoint was made by a different run."""
        differences = fingerprint_differences(meta.get("fingerprint", {}), fingerprint(config))
        if differences:
            raise CheckpointError(
                f"the checkpoint in {self.directory} was made by a different run:\n  "
                + "\n  ".join(differences)
                + "\nUse the config it was trained with (saved in its metadata and in "
                f"{self.directory.parent / 'config.json'}) or a new --workdir."
            )

    def restore(self, abstract_state, config: ml_collections.ConfigDict, step: Optional[int] = None):
        """Restores the state at ``step`` (latest by default) into the structure of ``abstract_state``.

        Returns ``(state, meta)``. Raises :class:`CheckpointError` if the checkpoint is from
        another run, or is partial or corrupt.
        """
        step = self._require_step(step)
        meta = self.read_meta(step)
        self.check_compatible(meta, config)
        expected = describe_shapes(abstract_state)
        saved = meta.get("shapes")
        if saved is not None and saved != expected:
            diff = [k for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)][:5]
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} holds a state of another shape "
                f"than this config builds (first differences: {', '.join(diff)}); it comes from "
                f"another model or code version. Use a new --workdir."
            )
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        except Exception as err:
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} could not be read "
                f"({type(err).__name__}: {err}); it is corrupt or partial. Delete "
                f"{self.directory / str(step)} to fall back to an older checkpoint."
            ) from err
        return restored.state, meta

    def close(self) -> None:
        """Waits for a checkpoint being written, then releases the manager's threads."""
        self._manager.close()
