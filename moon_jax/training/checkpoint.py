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

import errno
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from moon_jax.training.config import base_config
from moon_jax.training.files import CHECKPOINTS, CONFIG, WriteError, free_bytes, warn, write_error

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


#: Fields a run may resume with changed values when asked to (``train.py --resume_with_changed``):
#: optimiser settings that change no shape and no state, e.g. a lower learning rate after a
#: divergence.
RESUMABLE_CHANGES = ("train.base_lr", "train.lr_ini", "train.lr_end", "train.weight_decay", "train.momentum")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial, corrupt, or belongs to another run."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read (partial, truncated or corrupt)."""


#: Free space kept beyond a checkpoint's estimated size before a save starts.
SAVE_MARGIN_BYTES = 1 << 20


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
        self.directory = Path(workdir).absolute() / CHECKPOINTS
        self._pending = None
        self._reported_damaged: set[int] = set()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> Optional[int]:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of the checkpoints the directory holds."""
        return list(self._manager.all_steps())

    def save(self, step: int, state, config: ml_collections.ConfigDict, extra: Optional[dict] = None) -> None:
        """Starts writing a checkpoint of ``state`` at ``step`` and returns once the arrays are
        copied off the device; the files are written in the background (orbax's asynchronous
        save). The next save, :meth:`wait_until_finished` or :meth:`close` waits for it.

        Raises :class:`~moon_jax.training.files.WriteError` before writing anything when
        the disk lacks room for the state (so the newest complete checkpoint is never the one
        the disk filled up under), or when the write itself fails.
        """
        self.wait_until_finished()
        needed = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
        free = free_bytes(self.directory)
        if free is not None and free < needed + SAVE_MARGIN_BYTES:
            raise write_error(self.directory / str(step), OSError(errno.ENOSPC, "no space"), needed + SAVE_MARGIN_BYTES)
        meta = {
            "step": int(step),
            "config": json.loads(config.to_json_best_effort()),
            "fingerprint": fingerprint(config),
            "shapes": describe_shapes(state),
        }
        meta.update(extra or {})
        self._pending = (int(step), needed)
        try:
            self._manager.save(
                int(step),
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as err:  # orbax wraps the OSError in its own types
            raise self._save_failure(err) from None

    def wait_until_finished(self) -> None:
        """Blocks until the checkpoint being written (if any) is complete on disk; a failed
        background write raises :class:`~moon_jax.training.files.WriteError`."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise self._save_failure(err) from None
        self._pending = None

    def _save_failure(self, err: BaseException) -> WriteError:
        step, needed = self._pending or (None, None)
        self._pending = None
        target = self.directory / str(step) if step is not None else self.directory
        return write_error(target, err, needed)

    def read_meta(self, step: Optional[int] = None, fall_back: bool = False) -> dict:
        """The JSON record of a checkpoint (the latest by default). With ``fall_back`` a damaged
        newest record gives way to the newest readable one, with a warning."""
        if fall_back:
            return self._newest_readable(self.read_meta)[1]
        step = self._require_step(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax raises many types for damaged files
            raise DamagedCheckpointError(
                f"the checkpoint at step {step} in {self.directory} has an unreadable metadata record "
                f"({_one_line(err)}); it is corrupt or partial"
            ) from None
        return dict(restored.meta)

    def _newest_readable(self, read):
        """``(step, read(step))`` for the newest step whose checkpoint ``read`` can read; each
        damaged newer one is named in a warning line and kept on disk. Raises
        :class:`CheckpointError` when none can be read."""
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            self._require_step(None)
        damaged = []
        for step in steps:
            try:
                result = read(step)
            except DamagedCheckpointError as err:
                damaged.append((step, str(err)))
                continue
            for bad_step, why in damaged:
                if bad_step not in self._reported_damaged:
                    warn(f"{why}; using the checkpoint at step {step} instead (step {bad_step} is kept on disk)")
                    self._reported_damaged.add(bad_step)
            return step, result
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be read (steps {', '.join(str(s) for s, _ in damaged)}; "
            f"newest: {damaged[0][1]}); start again with a new --workdir (the damaged ones are kept)"
        )

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

    def check_compatible(self, meta: dict, config: ml_collections.ConfigDict, allow_changed: Sequence[str] = ()) -> None:
        """Raises :class:`CheckpointError` if the checkpoint was made by a different run (fields
        in ``allow_changed``, a subset of :data:`RESUMABLE_CHANGES`, may differ)."""
        bad = [f for f in allow_changed if f not in RESUMABLE_CHANGES]
        if bad:
            raise CheckpointError(f"--resume_with_changed: {', '.join(bad)} cannot change within a run; allowed: "
                                  f"{', '.join(RESUMABLE_CHANGES)}")
        saved = {k: v for k, v in meta.get("fingerprint", {}).items() if k not in allow_changed}
        current = {k: v for k, v in fingerprint(config).items() if k not in allow_changed}
        differences = fingerprint_differences(saved, current)
        if differences:
            raise CheckpointError(
                f"the checkpoint in {self.directory} was made by a different run:\n  "
                + "\n  ".join(differences)
                + "\nUse the config it was trained with (saved in its metadata and in "
                f"{self.directory.parent / CONFIG}) or a new --workdir."
            )

    def restore(self, abstract_state, config: ml_collections.ConfigDict, step: Optional[int] = None,
                allow_changed: Sequence[str] = ()):
        """Restores the state at ``step`` (latest by default) into the structure of ``abstract_state``.

        Returns ``(state, meta)``. Raises :class:`CheckpointError` if the checkpoint is from
        another run, or is partial or corrupt.
        """
        step = self._require_step(step)
        meta = self.read_meta(step)
        self.check_compatible(meta, config, allow_changed)
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
            raise DamagedCheckpointError(
                f"the checkpoint at step {step} in {self.directory} could not be read "
                f"({_one_line(err)}); it is corrupt or partial"
            ) from None
        return restored.state, meta

    def set_aside_damaged(self, destination) -> list[Path]:
        """Moves the damaged checkpoints found so far (newer than the one restored) into
        ``destination``, kept for inspection, so that training past their steps can save again.
        Returns where they went."""
        moved = []
        for step in sorted(self._reported_damaged):
            source = self.directory / str(step)
            if not source.exists():
                continue
            target = Path(destination) / str(step)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    target = target.with_name(f"{step}.{len(list(target.parent.iterdir()))}")
                source.rename(target)
            except OSError as err:
                raise write_error(target, err) from None
            moved.append(target)
        if moved:
            self._manager.reload()
        return moved

    def restore_newest(self, abstract_state, config: ml_collections.ConfigDict, allow_changed: Sequence[str] = ()):
        """:meth:`restore` of the newest checkpoint that restores: a damaged newer one is named
        in one warning line and kept. Returns ``(state, meta)``; raises :class:`CheckpointError`
        when none restores, or when the run's checkpoints belong to another run."""
        return self._newest_readable(lambda step: self.restore(abstract_state, config, step, allow_changed))[1]

    def close(self) -> None:
        """Waits for a checkpoint being written, then releases the manager's threads."""
        try:
            self._manager.close()
        except Exception as err:
            raise self._save_failure(err) from None


def _one_line(err: BaseException) -> str:
    """An exception as ``Type: first line`` (storage libraries' messages run to many lines)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
