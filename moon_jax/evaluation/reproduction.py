"""Reproducing the paper's comparison: train several methods x seeds with ``train.py``, evaluate
each run, and write one Markdown report (``docs/REPRODUCTION.md``) with the date, device, seeds,
exact commands, a summary table (mean ± std over seeds), per-OOD-set AUROC / FPR95, and the
paper's claims checked against what was measured.

The claims (Lei et al., Sec. 5 and Table 1): sparse training lowers OOD detection against dense
(mean AUROC), and MOON added to a sparse method raises its mean AUROC by several points at about
the same accuracy and with lower ECE. They are reported as paired differences (same seed), mean
± std over seeds, with the verdict for each direction as measured -- whichever way it goes.

Runs go through ``train.py`` as users run it (one subprocess each, its output appended to
``<workdir>/train.log``), ``parallel`` at a time. On one GPU several small runs (ResNet-18 on
CIFAR) do not fill it alone; concurrent processes do, each limited to a share of the GPU memory
(``XLA_PYTHON_CLIENT_MEM_FRACTION``). A rerun of the same command resumes every unfinished run
from its checkpoint and re-evaluates the finished ones (``train.py`` is idempotent).
"""
from __future__ import annotations

import datetime
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

# name -> (config.sparse.method, config.moon.enabled). Without MOON there is no K+1 head and no
# weight averaging (moon_jax.training.loop), as in the paper's baselines.
METHODS: dict[str, tuple[str, bool]] = {
    "dense": ("dense", False),
    "static": ("static", False),
    "set": ("set", False),
    "rigl": ("rigl", False),
    "moon_dense": ("dense", True),
    "moon_static": ("static", True),
    "moon_set": ("set", True),
    "moon_rigl": ("rigl", True),
}
PAPER_METHODS = ("dense", "rigl", "moon_rigl", "set", "moon_set")
SPARSE_NAMES = {"static": "static", "set": "SET", "rigl": "RigL"}


class RunSpec(NamedTuple):
    """One training run: which method and seed, where it writes, and the command that trains it."""

    method: str
    seed: int
    workdir: Path
    command: tuple[str, ...]


class RunOutcome(NamedTuple):
    """What running a :class:`RunSpec` gave: train.py's exit status and its wall time."""

    spec: RunSpec
    returncode: int
    seconds: float


def display_command(spec: RunSpec) -> str:
    """``spec``'s command as a user would type it: ``python train.py ...`` (the interpreter shown
    as ``python``, the script relative to the current directory)."""
    _, script, *args = spec.command
    return shlex.join(["python", os.path.relpath(script), *args])


def method_label(method: str, sparsity: float) -> str:
    """``"MOON + RigL 90%"`` for ``"moon_rigl"`` at 0.9; ``"dense"`` for ``"dense"``."""
    sparse_method, moon = METHODS[method]
    base = "dense" if sparse_method == "dense" else f"{SPARSE_NAMES[sparse_method]} {100 * sparsity:g}%"
    return ("MOON + " if moon else "") + base


def plan_runs(
    config_path: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    root,
    overrides: Sequence[str] = (),
    python: str = sys.executable,
    train_script: str = "train.py",
) -> list[RunSpec]:
    """The runs for every ``method x seed``: workdir ``<root>/<method>_s<seed>`` and its command.

    ``overrides`` are extra ``--config.a.b=value`` arguments shared by every run (e.g. a smaller
    model for a smoke test); they come before the method's own, which therefore win.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; allowed: {', '.join(METHODS)}")
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        raise ValueError(f"overrides must look like --config.a.b=value, got: {' '.join(bad)}")
    specs = []
    for method in methods:
        sparse_method, moon = METHODS[method]
        for seed in seeds:
            workdir = Path(root) / f"{method}_s{seed}"
            command = (
                python, train_script, f"--config={config_path}", f"--workdir={workdir}",
                *overrides,
                f"--config.seed={seed}", f"--config.sparse.method={sparse_method}", f"--config.moon.enabled={moon}",
            )
            specs.append(RunSpec(method, seed, workdir, command))
    return specs


def spec_config(spec: RunSpec):
    """The ConfigDict ``spec``'s train.py will run with: its config file plus its ``--config.*``
    overrides, parsed the way train.py parses them (ml_collections ``config_flags``)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["train.py", *[a for a in spec.command if a.startswith("--config")]]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "run config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


def check_specs(specs: Sequence[RunSpec]) -> None:
    """Validates every run's config before any run starts, so a bad combination (say, a schedule
    that only the MOON runs reject) fails in seconds, not after hours of the other runs.
    Raises :class:`~moon_jax.training.config.ConfigError` naming the run."""
    from absl import flags

    from moon_jax.programs import config_error_detail
    from moon_jax.training.config import ConfigError, validate_config

    for spec in specs:
        try:
            config = spec_config(spec)
        except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as err:
            raise ConfigError(f"run {spec.method} seed {spec.seed}: {config_error_detail(err)}") from err
        try:
            validate_config(config)
        except ConfigError as err:
            raise ConfigError(f"run {spec.method} seed {spec.seed}: {err}") from err


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
) -> list[RunOutcome]:
    """Runs every spec's command, at most ``parallel`` at once, output appended to
    ``<workdir>/train.log``. A failed run is reported and the others go on. Returns the outcomes
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
                spec.workdir.mkdir(parents=True, exist_ok=True)
                logfile = open(spec.workdir / "train.log", "a")
                logfile.write(f"$ {shlex.join(spec.command)}\n")
                logfile.flush()
                proc = subprocess.Popen(spec.command, cwd=cwd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
                running[index] = (proc, time.perf_counter(), logfile)
                log(f"started {spec.method} seed {spec.seed} -> {spec.workdir}/train.log")
            time.sleep(poll_seconds)
            for index in [i for i, (proc, _, _) in running.items() if proc.poll() is not None]:
                proc, start, logfile = running.pop(index)
                logfile.close()
                spec = specs[index]
                outcome = RunOutcome(spec, proc.returncode, time.perf_counter() - start)
                outcomes[index] = outcome
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {spec.workdir}/train.log)"
                log(f"{status}: {spec.method} seed {spec.seed} in {outcome.seconds:.1f} s")
    finally:
        _stop_children(running, log)
    return [outcomes[i] for i in range(len(specs))]


def _stop_children(running: Mapping[int, tuple], log: Callable[[str], None]) -> None:
    """When run_all is interrupted (Ctrl-C, SIGTERM turned into SystemExit): SIGTERM to every
    train.py still running, which saves a checkpoint and exits, so a re-run resumes them."""
    for proc, _, _ in running.values():
        if proc.poll() is None:
            proc.terminate()
    for proc, _, logfile in running.values():
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()
    if running:
        log(f"stopped {len(running)} running train.py process(es) with SIGTERM (each saves a checkpoint once "
            "training has started): re-run the same command to resume")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_metrics(results: Mapping) -> dict[str, float]:
    """The numbers of one run's eval.json used here (fractions): acc, ece, nll, and for the
    primary score the mean and per-set AUROC / FPR95 (``auroc/<set>``, ``fpr95/<set>``)."""
    cls = results["classification"]
    ood = results["ood"][results["primary_score"]]
    metrics = {"acc": cls["acc"], "ece": cls["ece"], "nll": cls["nll"]}
    for name, values in ood.items():
        metrics[f"auroc/{name}"] = values["auroc"]
        metrics[f"fpr95/{name}"] = values["fpr95"]
    return metrics


def aggregate(per_run: Mapping[tuple[str, int], Mapping[str, float]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{method: {metric: (mean, std, number of seeds)}}`` from ``{(method, seed): metrics}``."""
    by_method: dict[str, dict[str, list[float]]] = {}
    for (method, _), metrics in per_run.items():
        for key, value in metrics.items():
            by_method.setdefault(method, {}).setdefault(key, []).append(value)
    return {m: {k: (*_mean_std(v), len(v)) for k, v in metrics.items()} for m, metrics in by_method.items()}


def paired_difference(
    per_run: Mapping[tuple[str, int], Mapping[str, float]], better: str, baseline: str, metric: str
) -> Optional[tuple[float, float, int]]:
    """``better - baseline`` for ``metric`` over the seeds both have: (mean, std, n) or None."""
    seeds = sorted({s for m, s in per_run if m == better} & {s for m, s in per_run if m == baseline})
    diffs = [per_run[(better, s)][metric] - per_run[(baseline, s)][metric] for s in seeds
             if metric in per_run[(better, s)] and metric in per_run[(baseline, s)]]
    return (*_mean_std(diffs), len(diffs)) if diffs else None


def _pm(stat: tuple[float, float, int], scale: float = 100.0, digits: int = 2) -> str:
    mean, std, n = stat
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if n > 1 else "")


def _noise_note(diff: tuple[float, float, int]) -> str:
    """``", within seed noise"`` when a paired difference over several seeds is smaller than two
    standard errors (std / sqrt(n)), so its sign is not evidence either way."""
    mean, std, n = diff
    return ", within seed noise" if n > 1 and abs(mean) < 2 * std / n ** 0.5 else ""


def claim_checks(per_run: Mapping[tuple[str, int], Mapping[str, float]], sparsity: float) -> list[str]:
    """The paper's claims, each as one Markdown bullet with the measured paired differences."""
    methods = {m for m, _ in per_run}
    lines = []
    for sparse_method in ("rigl", "set", "static"):
        if sparse_method in methods and "dense" in methods:
            diff = paired_difference(per_run, sparse_method, "dense", "auroc/mean")
            if diff is not None:
                verdict = ("holds" if diff[0] < 0 else "does not hold") + _noise_note(diff)
                lines.append(
                    f"- Sparse training lowers OOD detection ({method_label(sparse_method, sparsity)} - dense, mean AUROC): "
                    f"{_pm(diff)} points over {diff[2]} seed(s): {verdict}."
                )
        moon = f"moon_{sparse_method}"
        if sparse_method in methods and moon in methods:
            d_auroc = paired_difference(per_run, moon, sparse_method, "auroc/mean")
            d_fpr = paired_difference(per_run, moon, sparse_method, "fpr95/mean")
            d_acc = paired_difference(per_run, moon, sparse_method, "acc")
            d_ece = paired_difference(per_run, moon, sparse_method, "ece")
            if None in (d_auroc, d_fpr, d_acc, d_ece):
                continue
            label, base = method_label(moon, sparsity), method_label(sparse_method, sparsity)
            lines.append(
                f"- {label} - {base}: mean AUROC {_pm(d_auroc)} points ({'higher' if d_auroc[0] > 0 else 'not higher'}{_noise_note(d_auroc)}; "
                f"paper: several points higher), FPR95 {_pm(d_fpr)}, ACC {_pm(d_acc)} "
                f"({'within' if abs(d_acc[0]) <= 0.005 else 'not within'} 0.5 points), ECE {_pm(d_ece)} "
                f"({'lower' if d_ece[0] < 0 else 'not lower'}{_noise_note(d_ece)}); {d_auroc[2]} paired seed(s)."
            )
    return lines


def summary_table(stats: Mapping[str, Mapping[str, tuple[float, float, int]]], methods: Sequence[str], sparsity: float) -> str:
    """Markdown: one row per method, ACC / ECE / NLL / mean AUROC / mean FPR95 (mean ± std)."""
    lines = ["| method | seeds | ACC | ECE | NLL | mean AUROC | mean FPR95 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method in methods:
        if method not in stats:
            continue
        s = stats[method]
        lines.append(
            f"| {method_label(method, sparsity)} | {s['acc'][2]} | {_pm(s['acc'])} | {_pm(s['ece'])} | "
            f"{_pm(s['nll'], 1.0, 4)} | {_pm(s['auroc/mean'])} | {_pm(s['fpr95/mean'])} |"
        )
    return "\n".join(lines)


def per_set_table(stats: Mapping[str, Mapping[str, tuple[float, float, int]]], methods: Sequence[str], sparsity: float) -> str:
    """Markdown: one row per method, AUROC / FPR95 for every OOD set (mean ± std over seeds)."""
    sets = []
    for method in methods:
        for key in stats.get(method, {}):
            name = key.split("/", 1)[1] if key.startswith("auroc/") else None
            if name and name != "mean" and name not in sets:
                sets.append(name)
    header = "| method | " + " | ".join(f"{s} AUROC / FPR95" for s in sets) + " |"
    lines = [header, "| --- |" + " ---: |" * len(sets)]
    for method in methods:
        if method not in stats:
            continue
        s = stats[method]
        cells = [f"{_pm(s[f'auroc/{n}'])} / {_pm(s[f'fpr95/{n}'])}" if f"auroc/{n}" in s else "n/a" for n in sets]
        lines.append(f"| {method_label(method, sparsity)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reproduction_report(
    title: str,
    outcomes: Sequence[RunOutcome],
    results: Mapping[tuple[str, int], Mapping],
    methods: Sequence[str],
    sparsity: float,
    device: str,
    invocation: str,
    notes: Sequence[str] = (),
    date: Optional[str] = None,
) -> str:
    """The whole Markdown report (see the module docstring)."""
    per_run = {key: run_metrics(r) for key, r in results.items()}
    stats = aggregate(per_run)
    seeds = sorted({s for _, s in per_run} | {o.spec.seed for o in outcomes})
    first = next(iter(results.values()), {})
    date = date or datetime.date.today().isoformat()
    lines = [
        f"# {title}",
        "",
        f"Measured {date} on {device}; seeds {', '.join(map(str, seeds))}. Made by `{invocation}`.",
        "",
        summary_table(stats, methods, sparsity),
        "",
        f"ACC, ECE (15 bins), NLL of the K-class softmax on the {first.get('num_test', '?')} ID test images; mean "
        "AUROC / FPR95: plain mean over the OOD sets of the run's primary score (`moon_msp` with MOON: softmax over "
        "K+1 outputs, max over the first K; MSP otherwise), ID positive (OpenOOD v1, as the MOON reference evaluates); "
        "MOON runs are the epoch-wise weight average. Percent except NLL; mean ± sample std over seeds.",
        "",
        "## Per OOD set",
        "",
        per_set_table(stats, methods, sparsity),
        "",
        "## The paper's claims, as measured",
        "",
        *(claim_checks(per_run, sparsity) or ["- (needs dense and the sparse methods with and without MOON)"]),
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += ["", "## Runs", "", "| method | seed | exit | wall time of this invocation (s) | command |", "| --- | ---: | ---: | ---: | --- |"]
    for o in outcomes:
        lines.append(f"| {o.spec.method} | {o.spec.seed} | {o.returncode} | {o.seconds:.1f} | `{display_command(o.spec)}` |")
    lines += ["", "Evaluate again or compare with `python eval.py --compare " + " ".join(str(o.spec.workdir) for o in outcomes) + "`."]
    return "\n".join(lines) + "\n"
