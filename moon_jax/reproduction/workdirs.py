"""Where the driver's runs live: the name of each run's workdir under ``--root``, and the driver's
own records there (train.py's output in ``train.log``, one wall-time line per train.py
invocation). The files themselves belong to the run directory
(:class:`moon_jax.training.run_directory.RunDirectory`), which spells their names."""
from __future__ import annotations

import datetime
import shlex
from pathlib import Path
from typing import IO, NamedTuple, Optional

from moon_jax.training.files import WALL_TIME
from moon_jax.training.run_directory import RunDirectory

#: Each run's workdir under the root: ``<method>_s<seed>``.
RUN_DIR = "{method}_s{seed}"
WALL_TIME_FILE = WALL_TIME
#: How a line of ``train.log`` starts that the driver wrote before starting train.py (the command follows).
INVOCATION_PREFIX = "$ "


def run_workdir(root, method: str, seed: int) -> Path:
    """The workdir of ``method`` at ``seed`` under ``root``."""
    return Path(root) / RUN_DIR.format(method=method, seed=seed)


def open_train_log(spec) -> IO[str]:
    """Opens the run's ``train.log`` (a :class:`~moon_jax.reproduction.planning.RunSpec`'s) for
    appending train.py's output, after a line with the command: one such line per invocation, so
    that an invocation that ended without a wall-time record is known (:func:`wall_time_summary`)."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    log = open(RunDirectory(spec.workdir).train_log_path, "a")
    log.write(f"{INVOCATION_PREFIX}{shlex.join(spec.command)}\n")
    log.flush()
    return log


def record_wall_time(outcome) -> None:
    """Appends one invocation's wall time and exit status (a
    :class:`~moon_jax.reproduction.runner.RunOutcome`) to the run's wall-time records."""
    RunDirectory(outcome.spec.workdir).append_wall_time(
        {"seconds": round(outcome.seconds, 3), "returncode": outcome.returncode,
         "finished_at": datetime.datetime.now().isoformat(timespec="seconds")})


def wall_time_records(workdir) -> list[dict]:
    """The wall-time records of a run, one per train.py invocation (none if absent)."""
    return RunDirectory(workdir).read_wall_times()


def _is_invocation_line(line: str) -> bool:
    """Whether a ``train.log`` line is one the driver wrote before starting train.py (see
    :func:`open_train_log`): the prefix, then a command with a ``--workdir=`` argument; train.py's
    own output does not count even if a line of it starts the same way."""
    if not line.startswith(INVOCATION_PREFIX):
        return False
    try:
        words = shlex.split(line[len(INVOCATION_PREFIX):])
    except ValueError:
        return False
    return any(word.startswith("--workdir=") for word in words)


class WallTime(NamedTuple):
    """A run's wall time over its train.py invocations: ``seconds`` summed (resumptions included),
    None when unknown; ``unrecorded``: how many invocations ended without a record."""
    seconds: Optional[float]
    unrecorded: int


def wall_time_summary(workdir) -> WallTime:
    """The run's total wall time and how many of its invocations left no record. The driver
    records each invocation when it ends, or when it is stopped itself; one killed with the machine
    (a restart, SIGKILL) leaves none, and is found as a command line in ``train.log`` without its
    record. The total is then None, as it is with no record at all: a sum of the others would look
    like the whole run."""
    records = wall_time_records(workdir)
    path = RunDirectory(workdir).train_log_path
    started = 0
    if path.exists():
        with open(path, errors="replace") as log:
            started = sum(_is_invocation_line(line) for line in log)
    unrecorded = max(0, started - len(records))
    if not records or unrecorded:
        return WallTime(None, unrecorded)
    return WallTime(sum(record["seconds"] for record in records), 0)
