"""Where the driver's runs live: the name of each run's workdir under ``--root``, and the driver's
own records there (train.py's output in ``train.log``, one wall-time line per train.py
invocation). The files themselves belong to the run directory
(:class:`moon_jax.training.run_directory.RunDirectory`), which spells their names."""
from __future__ import annotations

import datetime
import shlex
from pathlib import Path
from typing import IO, Optional

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
    that an invocation that ended without a wall-time record is known (:func:`unrecorded_invocations`)."""
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


def unrecorded_invocations(workdir) -> int:
    """How many train.py invocations of a run ended without a wall-time record: those the driver
    started (its command lines in ``train.log``) less those recorded. The driver records each
    invocation when it ends, or when it is stopped itself; one killed with the machine (a restart,
    SIGKILL) leaves none."""
    path = RunDirectory(workdir).train_log_path
    if not path.exists():
        return 0
    with open(path, errors="replace") as log:
        started = sum(line.startswith(INVOCATION_PREFIX) for line in log)
    return max(0, started - len(wall_time_records(workdir)))


def total_wall_time(workdir) -> Optional[float]:
    """Seconds of every train.py invocation of a run (resumptions summed); None if unknown: no
    record, or an invocation that left none (:func:`unrecorded_invocations`), whose time a sum of
    the others would leave out."""
    records = wall_time_records(workdir)
    if not records or unrecorded_invocations(workdir):
        return None
    return sum(record["seconds"] for record in records)
