"""A finished run's records: the few small files from which its rows of a report are rebuilt
without its checkpoints -- ``config.json``, ``eval.json`` and the driver's ``train.log`` and
``wall_time.jsonl`` (tens of kilobytes, against megabytes of checkpoints).

``reproduce.py --records=DIR`` copies them to ``DIR/<method>_s<seed>/`` for every run that
finished, so that they can be kept (committed beside the report) where checkpoints cannot. Copied
back under a ``--root``, such a workdir counts as finished as before
(:func:`~moon_jax.reproduction.planning.run_is_complete` reads only these files), and the driver
takes its ``eval.json`` as recorded: with no checkpoint, the run cannot be evaluated again. A long
reproduction thus survives the loss of its machine one finished run at a time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import ml_collections

from moon_jax.evaluation.evaluate import FORMAT_VERSION
from moon_jax.reproduction.workdirs import run_workdir
from moon_jax.training.checkpoint import CheckpointError
from moon_jax.training.config import config_from_dict
from moon_jax.training.files import CONFIG, RESULTS, TRAIN_LOG, WALL_TIME, write_error, write_text_atomically
from moon_jax.training.run_directory import RunDirectory

#: The files of a run that its records keep.
RECORD_FILES = (CONFIG, RESULTS, WALL_TIME, TRAIN_LOG)


def holds_records_only(workdir) -> bool:
    """Whether ``workdir`` holds a run's records (an ``eval.json`` and a ``config.json``) and no
    checkpoints: a run restored from ``--records``, whose results can only be read."""
    run_dir = RunDirectory(workdir)
    return (not run_dir.has_checkpoint_directory() and run_dir.results_path.exists()
            and run_dir.config_path.exists())


def recorded_results(workdir) -> dict:
    """The ``eval.json`` of a records-only workdir. Raises ``CheckpointError`` when it is
    unreadable or of an older evaluation format: with no checkpoint it cannot be rebuilt."""
    results = RunDirectory(workdir).read_results()
    if results is None or results.get("format_version") != FORMAT_VERSION:
        found = "unreadable" if results is None else f"format {results.get('format_version')}"
        raise CheckpointError(
            f"{workdir} holds only a run's records and its eval.json is {found}, not format {FORMAT_VERSION}; "
            "it cannot be evaluated again without its checkpoints: train the run again (delete the workdir)")
    return results


def recorded_config(workdir) -> ml_collections.ConfigDict:
    """The config of a records-only workdir, from its ``config.json``."""
    return config_from_dict(json.loads(RunDirectory(workdir).config_path.read_text()))


def check_records_folder(destination) -> None:
    """Creates ``destination`` and writes and removes a 4 KB file in it (about a run's
    ``config.json``), so that a folder that cannot hold the records fails before any run starts.
    Raises ``WriteError`` naming it."""
    probe = Path(destination) / ".moon_jax_records_probe"
    try:
        Path(destination).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(destination, err) from None
    write_text_atomically(probe, " " * 4096)
    probe.unlink()


def _copy_records(source: Path, target: Path) -> None:
    """Each record file of ``source`` into ``target``, each replaced in one step: a full disk
    leaves the older copy whole (``WriteError``), never half a file."""
    for name in RECORD_FILES:
        if (source / name).exists():
            write_text_atomically(target / name, (source / name).read_text(errors="replace"))


def save_records(workdirs: Iterable, destination) -> list[Path]:
    """Copies the record files of each finished run's workdir to ``destination/<workdir name>/``
    (replacing older copies; a file the run lacks is skipped). Returns the folders written.
    Raises ``WriteError`` when one cannot be written."""
    written = []
    for workdir in map(Path, workdirs):
        target = Path(destination) / workdir.name
        if target.resolve() == workdir.resolve():
            continue
        _copy_records(workdir, target)
        written.append(target)
    return written


def restore_records(source, root, runs: Iterable[tuple[str, int]]) -> list[Path]:
    """Copies the records of each ``(method, seed)`` kept under ``source`` to its workdir under
    ``root``, where that workdir does not exist yet (nothing is overwritten). Returns the
    workdirs restored."""
    restored = []
    for method, seed in runs:
        kept, workdir = run_workdir(source, method, seed), run_workdir(root, method, seed)
        if kept.is_dir() and not workdir.exists():
            _copy_records(kept, workdir)
            restored.append(workdir)
    return restored
