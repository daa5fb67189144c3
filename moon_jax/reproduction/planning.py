"""Planning the runs: one train.py command per method x seed, each run's config as train.py will
parse it, the check of every config before anything runs, and whether a run is already done."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence

from absl import flags
from ml_collections import config_flags

from moon_jax.programs.cli import config_error_detail, load_config_file, prepare_config
from moon_jax.reproduction.methods import METHODS
from moon_jax.reproduction.workdirs import run_workdir, wall_time_records
from moon_jax.training.config import ConfigError, validate_config
from moon_jax.training.run_directory import RunDirectory


class RunSpec(NamedTuple):
    """One training run: which method and seed, where it writes, and the command that trains it."""

    method: str
    seed: int
    workdir: Path
    command: tuple[str, ...]


def plan_runs(
    config_path: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    root,
    overrides: Sequence[str] = (),
    python: str = sys.executable,
    train_script: str = "train.py",
    method_seeds: Optional[Mapping[str, Sequence[int]]] = None,
    plots: bool = True,
) -> list[RunSpec]:
    """The runs for every ``method x seed``: workdir ``<root>/<method>_s<seed>`` and its command.

    Ordered seed by seed (every method of the first seed, then the next seed), so that a long job
    cut short still holds complete paired comparisons. ``method_seeds`` gives some methods their
    own seeds (e.g. the ablations over one seed, the paper's methods over three).
    ``overrides`` are extra ``--config.a.b=value`` arguments shared by every run (e.g. a smaller
    model for a smoke test); they come before the method's own, which therefore win.
    ``plots=False`` adds ``--noplots``: train.py's final evaluation then writes no PNGs.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; allowed: {', '.join(METHODS)}")
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        raise ValueError(f"overrides must look like --config.a.b=value, got: {' '.join(bad)}")
    seeds_of = {m: list((method_seeds or {}).get(m, seeds)) for m in methods}
    all_seeds = sorted({s for m in methods for s in seeds_of[m]}, key=lambda s: min(
        seeds_of[m].index(s) for m in methods if s in seeds_of[m]))
    specs = []
    for seed in all_seeds:
        for method in methods:
            if seed not in seeds_of[method]:
                continue
            spec = METHODS[method]
            workdir = run_workdir(root, method, seed)
            command = (
                python, train_script, f"--config={config_path}", f"--workdir={workdir}",
                *overrides,
                f"--config.seed={seed}", f"--config.sparse.method={spec.sparse_method}", *spec.overrides,
                *(() if plots else ("--noplots",)),
            )
            specs.append(RunSpec(method, seed, workdir, command))
    return specs


def spec_config(spec: RunSpec):
    """The ConfigDict ``spec``'s train.py will run with: its config file plus its ``--config.*``
    overrides, parsed the way train.py parses them (ml_collections ``config_flags``)."""
    argv = ["train.py", *[a for a in spec.command if a.startswith("--config")]]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "run config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    file_epochs = load_config_file(flag_values["config"].config_filename).train.epochs
    return prepare_config(flag_values.config, argv, file_epochs, say=lambda _: None)


def check_specs(specs: Sequence[RunSpec]) -> None:
    """Validates every run's config before any run starts, so a bad combination (say, a schedule
    that only the MOON runs reject) fails in seconds, not after hours of the other runs.
    Raises :class:`~moon_jax.training.config.ConfigError` naming the run."""
    for spec in specs:
        try:
            config = spec_config(spec)
        except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as err:
            raise ConfigError(f"run {spec.method} seed {spec.seed}: {config_error_detail(err)}") from err
        try:
            validate_config(config)
        except ConfigError as err:
            raise ConfigError(f"run {spec.method} seed {spec.seed}: {err}") from err


def run_is_complete(spec: RunSpec) -> bool:
    """True when ``spec``'s workdir holds a finished run of exactly this config: an ``eval.json``,
    a last recorded train.py invocation that exited 0, and a saved ``config.json`` equal to the
    config ``spec``'s command gives. Re-running the driver skips such runs: starting train.py on
    them would only evaluate them again and add that time to the run's wall time."""
    run_dir = RunDirectory(spec.workdir)
    if not (run_dir.results_path.exists() and run_dir.config_path.exists()):
        return False
    records = wall_time_records(spec.workdir)
    if not records or records[-1]["returncode"] != 0:
        return False
    return run_dir.config_matches(spec_config(spec))
