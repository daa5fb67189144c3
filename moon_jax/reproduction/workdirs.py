"""Where the driver's runs keep their files: the name of each run's workdir under ``--root`` and
the files the driver reads and writes there, with the wall-time records (one line per train.py
invocation). The one place these names are spelled."""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Optional

#: Each run's workdir under the root: ``<method>_s<seed>``.
RUN_DIR = "{method}_s{seed}"
#: train.py's output, appended to by each invocation.
TRAIN_LOG = "train.log"
#: One JSON line per train.py invocation: seconds, exit status, when it finished.
WALL_TIME_FILE = "wall_time.jsonl"
#: What train.py writes: the evaluation at the end and the run's config.
EVAL_FILE = "eval.json"
CONFIG_FILE = "config.json"


def run_workdir(root, method: str, seed: int) -> Path:
    """The workdir of ``method`` at ``seed`` under ``root``."""
    return Path(root) / RUN_DIR.format(method=method, seed=seed)


def record_wall_time(outcome) -> None:
    """Appends one invocation's wall time and exit status (a
    :class:`~moon_jax.reproduction.runner.RunOutcome`) to ``<workdir>/wall_time.jsonl``."""
    with open(Path(outcome.spec.workdir) / WALL_TIME_FILE, "a") as f:
        f.write(json.dumps({"seconds": round(outcome.seconds, 3), "returncode": outcome.returncode,
                            "finished_at": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")


def wall_time_records(workdir) -> list[dict]:
    """The records of ``<workdir>/wall_time.jsonl``, one per train.py invocation (none if absent)."""
    path = Path(workdir) / WALL_TIME_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def total_wall_time(workdir) -> Optional[float]:
    """Seconds of every train.py invocation of a run (resumptions summed), or None if unknown."""
    records = wall_time_records(workdir)
    return sum(record["seconds"] for record in records) if records else None
