"""Running the planned runs: each train.py as a subprocess (``parallel`` at a time, each with its
share of the accelerator memory), its output in ``<workdir>/train.log`` and its wall time in
``<workdir>/wall_time.jsonl``; when interrupted, the running train.py processes are stopped so
that they save a checkpoint."""
from __future__ import annotations

import os
import subprocess
import time
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

from moon_jax.reproduction.planning import RunSpec
from moon_jax.reproduction.workdirs import open_train_log, record_wall_time
from moon_jax.training.files import TRAIN_LOG


class RunOutcome(NamedTuple):
    """What running a :class:`RunSpec` gave: train.py's exit status and its wall time; ``seconds``
    is None for a run not trained by this invocation of the driver (finished earlier, or
    ``--eval_only``)."""

    spec: RunSpec
    returncode: int
    seconds: Optional[float]


def child_environment(parallel: int, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment of each train.py: with ``parallel`` > 1 concurrent runs, each gets an
    equal share of 90% of the accelerator memory (JAX preallocates 75% otherwise, and the second
    process would run out), unless the user set ``XLA_PYTHON_CLIENT_MEM_FRACTION`` already."""
    env = dict(os.environ if base is None else base)
    if parallel > 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / parallel:.3f}"
    return env


def run_all(
    specs: Sequence[RunSpec],
    parallel: int = 1,
    cwd=None,
    log: Callable[[str], None] = print,
    poll_seconds: float = 0.5,
    on_finished: Optional[Callable[[RunOutcome], None]] = None,
) -> list[RunOutcome]:
    """Runs every spec's command, at most ``parallel`` at once, output appended to
    ``<workdir>/train.log``. A failed run is reported and the others go on; ``on_finished`` is
    called with each outcome as its run ends (its wall time recorded). Returns the outcomes
    in the order of ``specs``. If interrupted, running train.py processes get SIGTERM (they save a
    checkpoint) before the exception propagates."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    env = child_environment(parallel)
    pending = list(enumerate(specs))
    running: dict[int, tuple[subprocess.Popen, float, object]] = {}
    outcomes: dict[int, RunOutcome] = {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                index, spec = pending.pop(0)
                logfile = open_train_log(spec)
                proc = subprocess.Popen(spec.command, cwd=cwd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
                running[index] = (proc, time.perf_counter(), logfile)
                log(f"started {spec.method} seed {spec.seed} -> {spec.workdir}/{TRAIN_LOG}")
            time.sleep(poll_seconds)
            for index in [i for i, (proc, _, _) in running.items() if proc.poll() is not None]:
                proc, start, logfile = running.pop(index)
                logfile.close()
                spec = specs[index]
                outcome = RunOutcome(spec, proc.returncode, time.perf_counter() - start)
                outcomes[index] = outcome
                record_wall_time(outcome)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {spec.workdir}/{TRAIN_LOG})"
                log(f"{status}: {spec.method} seed {spec.seed} in {outcome.seconds:.1f} s")
                if on_finished is not None:
                    on_finished(outcome)
    finally:
        _stop_children(specs, running, log)
    return [outcomes[i] for i in range(len(specs))]


def _stop_children(specs: Sequence[RunSpec], running: Mapping[int, tuple], log: Callable[[str], None]) -> None:
    """When run_all is interrupted (Ctrl-C, SIGTERM turned into SystemExit): SIGTERM to every
    train.py still running, which saves a checkpoint and exits, so a re-run resumes them. Their
    wall time is recorded with their exit status, so that a run's total counts every invocation."""
    for proc, _, _ in running.values():
        if proc.poll() is None:
            proc.terminate()
    for index, (proc, start, logfile) in running.items():
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()
        record_wall_time(RunOutcome(specs[index], proc.returncode, time.perf_counter() - start))
    if running:
        log(f"stopped {len(running)} running train.py process(es) with SIGTERM (each saves a checkpoint once "
            "training has started): re-run the same command to resume")
