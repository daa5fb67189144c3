"""The whole reproduction as ``reproduce.py`` runs it: plan and check the runs, train the ones not
yet done, evaluate each (reusing an up-to-date eval.json), and write the report with the device,
the config file's docstring as the scale, and the notes."""
from __future__ import annotations

import ast
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import jax

from moon_jax.evaluation.checkpoint_eval import load_run_config
from moon_jax.evaluation.compare import load_or_evaluate
from moon_jax.sparse.structure import parse_structure
from moon_jax.training.checkpoint import CheckpointError
from moon_jax.training.config import ConfigError
from moon_jax.reproduction.methods import sparsity_level
from moon_jax.reproduction.planning import RunSpec, check_specs, plan_runs, run_is_complete
from moon_jax.reproduction.records import (check_records_folder, holds_records_only, recorded_config, recorded_results,
                                           restore_records, save_records)
from moon_jax.reproduction.report import reproduction_report
from moon_jax.reproduction.runner import RunOutcome, run_all

JPEG_NOTE = (
    "The CIFAR-10 in ../shared/data is a JPEG copy (quality about 75), not the original PNG-lossless "
    "images, so accuracy sits a little under published figures for the same recipe."
)


class Request(NamedTuple):
    """What to reproduce (``reproduce.py``'s flags).

    Attributes:
      config: the train.py config file of every run.
      methods: method names, in the report's order.
      method_seeds: the seeds of the methods given their own (``ablations@0``).
      seeds: the seeds of the other methods.
      root: the parent of the run workdirs.
      output: the Markdown report's path.
      invocation: the command as typed, for the report.
      overrides: ``--config.a.b=value`` arguments for every run.
      parallel: runs at once.
      title: the report's title (None: from the config).
      notes: lines for the report's notes.
      eval_only: no training, only evaluation and the report.
      plots: write each run's PNG plots.
      records: where the runs' records are kept (:mod:`~moon_jax.reproduction.records`): runs
        missing under ``root`` are restored from there first; each run is written there when it
        finishes and again once evaluated.
    """

    config: str
    methods: Sequence[str]
    method_seeds: Mapping[str, Sequence[int]]
    seeds: Sequence[int]
    root: str
    output: str
    invocation: str
    overrides: Sequence[str] = ()
    parallel: int = 1
    title: Optional[str] = None
    notes: Sequence[str] = ()
    eval_only: bool = False
    plots: bool = True
    records: Optional[str] = None


def config_docstring(path: str) -> str:
    """The module docstring of a config file (its scale and why), or ""."""
    try:
        return ast.get_docstring(ast.parse(Path(path).read_text())) or ""
    except (OSError, SyntaxError):
        return ""


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description() -> str:
    """``"1 x NVIDIA H100 (gpu)"``, or for CPUs ``"1 x cpu (cpu, 2 CPU cores: <model>)"``."""
    devices = jax.devices()
    device = f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}"
    return device + (f", {os.cpu_count()} CPU cores: {cpu_model()})" if devices[0].platform == "cpu" else ")")


def train_runs(
    specs: Sequence[RunSpec], parallel: int, eval_only: bool, log: Callable[[str], None] = print,
    records: Optional[str] = None,
) -> list[RunOutcome]:
    """Trains every run not yet complete (none with ``eval_only``); a skipped run's outcome is
    exit status 0 and no wall time. With ``records``, each run that finishes has its records
    saved there at once, so that a machine lost later loses no finished run."""
    if eval_only:
        return [RunOutcome(s, 0, None) for s in specs]
    done = [s for s in specs if run_is_complete(s)]
    for spec in done:
        log(f"already done: {spec.method} seed {spec.seed} ({spec.workdir})")

    def keep_records(outcome: RunOutcome) -> None:
        if records and outcome.returncode == 0:
            save_records([outcome.spec.workdir], records)

    ran = iter(run_all([s for s in specs if s not in done], parallel, log=log, on_finished=keep_records))
    return [RunOutcome(s, 0, None) if s in done else next(ran) for s in specs]


def run_results(workdir, plots: bool) -> dict:
    """A finished run's eval.json: evaluated from its checkpoint where not up to date, or as
    recorded when the workdir holds only the run's records."""
    if holds_records_only(workdir):
        return recorded_results(workdir)
    return load_or_evaluate(workdir, plots=plots)[0]


def run_config(workdir):
    """A finished run's config: its checkpoint's, or its records' ``config.json``."""
    return recorded_config(workdir) if holds_records_only(workdir) else load_run_config(workdir)


def evaluate_runs(outcomes: Sequence[RunOutcome], plots: bool) -> tuple[dict, list[RunOutcome]]:
    """``(results, failed)``: the eval.json of every run that exited 0, by ``(method, seed)``
    (evaluated where not up to date), and the runs that failed or could not be evaluated."""
    results, failed = {}, [o for o in outcomes if o.returncode != 0]
    for outcome in outcomes:
        if outcome.returncode != 0:
            continue
        try:
            results[(outcome.spec.method, outcome.spec.seed)] = run_results(outcome.spec.workdir, plots)
        except CheckpointError as err:
            print(f"error: {outcome.spec.workdir}: {err}", file=sys.stderr)
            failed.append(outcome)
    return results, failed


def _report_notes(config, notes: Sequence[str], failed: Sequence[RunOutcome]) -> list[str]:
    """The user's notes, the JPEG note for the local CIFAR-10 copy, and a line on failed runs."""
    notes = list(notes)
    if config.data.dataset == "cifar10" and config.data.source != "tfds":
        notes.append(JPEG_NOTE)
    if failed:
        notes.append(f"{len(failed)} run(s) failed and are left out of the tables: see the Runs table and their train.log.")
    return notes


def default_title(config) -> str:
    """``"Reproduction: <dataset> / <model> / <sparsity>"``: the sparsity as the tables name it
    (:func:`~moon_jax.reproduction.methods.sparsity_level`) with its distribution, e.g. ``90% erk``
    or ``90% in 4x4 blocks, erk``; an N:M level names its plan already (``2:4 (ERK 90% plan)``)."""
    level, kind = sparsity_level(config.sparse), parse_structure(config.sparse.structure).kind
    if kind == "unstructured":
        level = f"{level} {config.sparse.distribution}"
    elif kind != "nm":
        level = f"{level}, {config.sparse.distribution}"
    return f"Reproduction: {config.data.dataset} / {config.model.name} / {level}"


def reproduce(request: Request, train_script: str = "train.py") -> int:
    """Runs ``request`` and writes its report; the exit status: 0, or 1 when a run failed or none
    finished. Raises ``ConfigError`` (naming the run) for a bad method, override or config before
    any run starts."""
    try:
        specs = plan_runs(request.config, request.methods, request.seeds, request.root, request.overrides,
                          train_script=train_script, method_seeds=request.method_seeds, plots=request.plots)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_specs(specs)
    if request.records:
        check_records_folder(request.records)
        for workdir in restore_records(request.records, request.root, [(s.method, s.seed) for s in specs]):
            print(f"restored from the records in {request.records}: {workdir}")
    outcomes = train_runs(specs, request.parallel, request.eval_only, records=request.records)
    results, failed = evaluate_runs(outcomes, request.plots)
    if request.records:
        save_records([o.spec.workdir for o in outcomes if (o.spec.method, o.spec.seed) in results], request.records)
    if not results:
        print("error: no run finished; nothing to report (see the train.log of each workdir)", file=sys.stderr)
        return 1
    config = run_config(next(o.spec.workdir for o in outcomes if (o.spec.method, o.spec.seed) in results))
    report = reproduction_report(
        request.title or default_title(config), outcomes, results, request.methods, sparsity_level(config.sparse),
        device_description(), request.invocation, _report_notes(config, request.notes, failed),
        scale=config_docstring(request.config))
    output = Path(request.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(report)
    print(f"report written to {output}")
    return 1 if failed else 0
