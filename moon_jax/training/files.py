"""The run directory's file names, and the one way each kind of file is written and read.

Every write either completes or leaves the file as it was and raises :class:`WriteError` with one
line naming the path (no space left, a read-only or forbidden directory); JSON files are
replaced atomically; a torn last line of an append-only log (a crash or a full disk mid-write) is
dropped with a warning when read. :mod:`moon_jax.training.run_directory` lays a run's files out
with these names and helpers, :mod:`moon_jax.training.checkpoint` reports its write failures
through them.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

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
