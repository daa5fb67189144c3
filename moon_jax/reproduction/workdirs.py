"""Where the driver's runs live: the name of each run's workdir under ``--root``, and the driver's
own records there (train.py's output in ``train.log``, one wall-time line per train.py
invocation). The files themselves belong to the run directory
(:class:`moon_jax.training.run_directory.RunDirectory`), which spells their names."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

from moon_jax.training.files import WALL_TIME
from moon_jax.training.run_directory import RunDirectory

#: Each run's workdir under the root: ``<method>_s<seed>``.
RUN_DIR = "{method}_s{seed}"
WALL_TIME_FILE = WALL_TIME


def run_workdir(root, method: str, seed: int) -> Path:
    """The workdir of ``method`` at ``seed`` under ``root``."""
    return Path(root) / RUN_DIR.format(method=method, seed=seed)


def record_wall_time(outcome) -> None:
    """Appends one invocation's wall time and exit status (a
    :class:`~moon_jax.reproduction.runner.RunOutcome`) to the run's wall-time records."""
    RunDirectory(outcome.spec.workdir).append_wall_time(
        {"seconds": round(outcome.seconds, 3), "returncode": outcome.returncode,
         "finished_at": datetime.datetime.now().isoformat(timespec="seconds")})


def wall_time_records(workdir) -> list[dict]:
    """The wall-time records of a run, one per train.py invocation (none if absent)."""
    return RunDirectory(workdir).read_wall_times()


def total_wall_time(workdir) -> Optional[float]:
    """Seconds of every train.py invocation of a run (resumptions summed), or None if unknown."""
    records = wall_time_records(workdir)
    return sum(record["seconds"] for record in records) if records else None
