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

What goes wrong with files is handled here, once: every write either completes or leaves the
file as it was and raises :class:`WriteError` with one line naming the path (no space left, a
read-only or forbidden directory); JSON files are replaced atomically; a torn last line of an
append-only log (a crash or a full disk mid-write) is dropped with a warning when read; a second
training process on the same directory is refused by :class:`WorkdirLock`.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Optional

from moon_jax.training.config import config_from_dict

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
RESULTS = "eval.json"
TRAIN_LOG = "train.log"
WALL_TIME = "wall_time.jsonl"
LOCK = ".moon_jax.lock"
STALE_PREFIX = "stale-"
DAMAGED_CHECKPOINTS = "damaged_checkpoints"
#: The files a training run writes itself (a driver's train.log and wall_time.jsonl are not).
RUN_OUTPUTS = (CONFIG, METRICS, TENSORBOARD, RESULTS)


class WriteError(RuntimeError):
    """A file of the run could not be written (no space, read-only, permission); nothing that
    was complete before is lost."""


class WorkdirBusyError(RuntimeError):
    """Another live process holds the run directory."""


def warn(message: str) -> None:
    """One ``warning:`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _megabytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def free_bytes(path) -> Optional[int]:
    """Free bytes on the filesystem holding ``path`` (its nearest existing parent), or None."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_error(path, err: BaseException, needed_bytes: Optional[int] = None) -> WriteError:
    """The one-line :class:`WriteError` for a failed write of ``path`` (the cause found in
    ``err``'s chain), naming the space needed when the disk is full."""
    cause = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    code = getattr(cause, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path)
        need = f"about {_megabytes(needed_bytes)} needed, " if needed_bytes else ""
        have = f"{_megabytes(free)} free" if free is not None else "free space unknown"
        return WriteError(f"no space left on the device to write {path} ({need}{have}); free some space or "
                          f"use another --workdir, then re-run the same command: nothing complete was lost")
    if code == errno.EROFS:
        return WriteError(f"cannot write {path}: the file system is read-only; use a writable --workdir (or --output)")
    if code in (errno.EACCES, errno.EPERM):
        return WriteError(f"cannot write {path}: permission denied; use a --workdir (or --output) you may write to")
    detail = " ".join(str(cause if cause is not None else err).split())
    return WriteError(f"cannot write {path} ({type(cause or err).__name__}: {detail})")


def write_text_atomically(path, text: str) -> None:
    """Replaces ``path`` with ``text`` in one step (temporary file, fsync, rename): readers see
    the old or the new file, never half of one. Raises :class:`WriteError`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err, len(text.encode())) from None


def append_line(path, line: str) -> None:
    """Appends ``line`` (plus a newline) to ``path``; if the write fails part-way the file is cut
    back to its previous end, so no torn line is left. Raises :class:`WriteError`."""
    data = (line + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise write_error(path, err, len(data)) from None
    try:
        start = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as err:
            os.ftruncate(fd, start)
            raise write_error(path, err, len(data)) from None
    finally:
        os.close(fd)


def read_json_lines(path) -> list[dict]:
    """The records of an append-only JSON-lines file (none if absent). A line that does not
    parse (torn by a crash or a full disk) is skipped with one warning, never fatal."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warn(f"{path} line {number} is incomplete (a crash or a full disk cut it); it is skipped")
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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
            from moon_jax.training.checkpoint import Checkpointer  # checkpoint.py imports this module

            self._checkpointer = Checkpointer(self.path, self.checkpoints_to_keep)
        return self._checkpointer

    def has_checkpoint_directory(self) -> bool:
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
        from moon_jax.training.checkpoint import CheckpointError  # checkpoint.py imports this module

        meta = self.checkpointer.read_meta(step, fall_back=step is None)
        if "config" not in meta:
            raise CheckpointError(f"the checkpoint in {self.path} has no saved config; it is not a moon-jax checkpoint")
        return config_from_dict(meta["config"])

    # metrics
    def append_metrics(self, record: dict) -> None:
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
        append_line(self.wall_time_path, json.dumps(record))

    def read_wall_times(self) -> list[dict]:
        return read_json_lines(self.wall_time_path)
