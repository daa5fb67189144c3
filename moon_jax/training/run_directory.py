"""The run directory (``--workdir``): the one owner of every file a run keeps there.

Layout::

    <workdir>/checkpoints/     orbax checkpoints (state + JSON record of the run)
    <workdir>/config.json      the config of the run that owns the checkpoints
    <workdir>/metrics.jsonl    append-only training and periodic-evaluation records
    <workdir>/tensorboard/     the same records as TensorBoard scalars
    <workdir>/eval.json        the final evaluation (plots beside it)
    <workdir>/train.log        a driver's capture of train.py's output (reproduction runs)
    <workdir>/wall_time.jsonl  a driver's record of each train.py invocation
    <workdir>/.moon_jax.lock   held by the training process that owns the directory
    <workdir>/stale-<time>/    files of an earlier run that never saved a checkpoint
    <workdir>/damaged_checkpoints/  checkpoints that could not be restored, set aside by a resume

Every file is written and read through :mod:`moon_jax.training.files` (a failed write is one
:class:`~moon_jax.training.files.WriteError` line naming the path and loses nothing complete;
JSON is replaced atomically; a torn line of an append-only log is skipped with a warning); a
second training process on the same directory is refused by :class:`WorkdirLock`.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional

from moon_jax.training.checkpoint import CheckpointError, Checkpointer
from moon_jax.training.config import config_from_dict
from moon_jax.training.files import (CHECKPOINTS, CONFIG, DAMAGED_CHECKPOINTS, LOCK, METRICS, RESULTS, RUN_OUTPUTS,
                                     STALE_PREFIX, TENSORBOARD, TRAIN_LOG, WALL_TIME, append_line, read_json_lines,
                                     write_error, write_text_atomically)


class WorkdirBusyError(RuntimeError):
    """Another live process holds the run directory."""


class WorkdirLock:
    """An exclusive lock on a run directory, held while a run trains there.

    An OS file lock (``flock``) on ``<workdir>/.moon_jax.lock``: the kernel releases it when its
    process ends, however it ends (SIGKILL included), so a killed run never leaves the directory
    locked. The file records who holds it, for the refusal message.
    """

    def __init__(self, directory):
        self.path = Path(directory) / LOCK
        self._file = None

    def acquire(self) -> None:
        """Takes the lock or raises :class:`WorkdirBusyError` naming the holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as err:
            raise write_error(self.path, err) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise WorkdirBusyError(
                f"{self.path.parent} is in use by another training run ({_describe_holder(holder)}); wait for it to "
                f"finish or stop it, or use another --workdir") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        except OSError:
            pass  # the lock holds without the note of who holds it
        self._file = handle

    def release(self) -> None:
        """Releases the lock (a second run may then use the workdir); safe to call twice."""
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return (f"process {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder.get('command', '?')}")
    except (ValueError, KeyError, TypeError):
        return "a process that left no record"


class RunDirectory:
    """Paths, checkpoints, config, metrics and results of one run directory.

    One :class:`~moon_jax.training.checkpoint.Checkpointer` is opened per object (on first use)
    and closed by :meth:`close` (or the ``with`` block).
    """

    def __init__(self, path, checkpoints_to_keep: int = 2):
        self.path = Path(path)
        self.checkpoints_to_keep = checkpoints_to_keep
        self._checkpointer = None

    # paths
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def damaged_checkpoints_dir(self) -> Path:
        return self.path / DAMAGED_CHECKPOINTS

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def train_log_path(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def wall_time_path(self) -> Path:
        return self.path / WALL_TIME

    # checkpoints
    @property
    def checkpointer(self):
        """The run's checkpointer (creates ``checkpoints/`` when it is first opened)."""
        if self._checkpointer is None:
            self._checkpointer = Checkpointer(self.path, self.checkpoints_to_keep)
        return self._checkpointer

    def has_checkpoint_directory(self) -> bool:
        """Whether the workdir holds a checkpoints folder (an earlier run of it started)."""
        return self.checkpoints_dir.is_dir()

    def lock(self) -> WorkdirLock:
        """The exclusive training lock of this directory (use as a context manager)."""
        return WorkdirLock(self.path)

    def close(self) -> None:
        """Waits for a checkpoint being written and releases the checkpointer."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # a new run
    def move_stale_outputs(self) -> Optional[Path]:
        """Moves the outputs of an earlier run that saved no checkpoint (config, metrics,
        TensorBoard, results) into ``stale-<time>/``, so that a new run starts clean and nothing
        is deleted. Returns the folder, or None when there was nothing to move."""
        stale = [self.path / name for name in RUN_OUTPUTS if (self.path / name).exists()]
        if not stale:
            return None
        target = self.path / (STALE_PREFIX + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        suffix = 1
        while target.exists():
            target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
            suffix += 1
        try:
            target.mkdir(parents=True)
            for item in stale:
                item.rename(target / item.name)
        except OSError as err:
            raise write_error(target, err) from None
        return target

    # config
    def write_config(self, config) -> None:
        """Writes ``config.json`` (the config of the run that owns the checkpoints)."""
        write_text_atomically(self.config_path, config.to_json_best_effort(indent=2) + "\n")

    def config_matches(self, config) -> bool:
        """Whether ``config.json`` exists and holds exactly ``config``."""
        try:
            return json.loads(self.config_path.read_text()) == json.loads(config.to_json_best_effort())
        except (OSError, ValueError):
            return False

    def read_saved_config(self, step: Optional[int] = None):
        """The config a checkpoint (the newest readable one by default) was trained with."""
        meta = self.checkpointer.read_meta(step, fall_back=step is None)
        if "config" not in meta:
            raise CheckpointError(f"the checkpoint in {self.path} has no saved config; it is not a moon-jax checkpoint")
        return config_from_dict(meta["config"])

    # metrics
    def append_metrics(self, record: dict) -> None:
        """Appends one record to ``metrics.jsonl`` as one whole line (never a torn one)."""
        append_line(self.metrics_path, json.dumps(record))

    def read_metrics(self, kind: Optional[str] = None) -> list[dict]:
        """The records of ``metrics.jsonl`` (of one ``kind`` if given); a torn line is skipped."""
        return [r for r in read_json_lines(self.metrics_path) if kind is None or r.get("kind") == kind]

    def truncate_metrics(self, step: int) -> None:
        """Drops records written after ``step`` (by a run that stopped before its next checkpoint)
        and any torn line."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in read_json_lines(self.metrics_path) if r.get("step", 0) <= step]
        write_text_atomically(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # results
    def write_results(self, results: dict, path=None) -> Path:
        """Writes ``eval.json`` (or ``path``) atomically; returns where."""
        path = Path(path) if path else self.results_path
        write_text_atomically(path, json.dumps(results, indent=2) + "\n")
        return path

    def read_results(self) -> Optional[dict]:
        """``eval.json``, or None when absent or unreadable (a later evaluation rewrites it)."""
        try:
            return json.loads(self.results_path.read_text())
        except (OSError, ValueError):
            return None

    # a driver's records
    def append_wall_time(self, record: dict[str, Any]) -> None:
        """Appends one invocation's wall-time record (written by the reproduction driver)."""
        append_line(self.wall_time_path, json.dumps(record))

    def read_wall_times(self) -> list[dict]:
        """The wall-time records, oldest first (none when the file does not exist)."""
        return read_json_lines(self.wall_time_path)
