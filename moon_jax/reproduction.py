"""Reproducing the paper's comparison (a program-level driver beside ``moon_jax.programs``):
train several methods x seeds with ``train.py``, evaluate each run, and write one Markdown report
(``docs/REPRODUCTION.md``, ``docs/REPRODUCTION_CPU.md``) with the scale and why, date, machine,
exact commands, wall time per run, summary tables (mean ± sample std over seeds), per-OOD-set AUROC
/ FPR95, MOON's p(unknown) and the voting's effect, and the paper's claims checked against what was
measured.

The claims (Lei et al., Sec. 5 and Table 1): sparse training lowers OOD detection against dense
(mean AUROC), and MOON added to a sparse method raises its mean AUROC by several points at about
the same accuracy and with lower ECE; Figure 5's ablations (each of MOON's parts helps) and
Figure 3's baselines (Mixup, CigL). They are reported as paired differences (same seed), mean
± std over seeds, with the verdict for each direction as measured -- whichever way it goes.

The headline mean AUROC / FPR95 is over the OOD sets that are not synthetic noise (for CIFAR-10:
Tiny ImageNet resized, MNIST, the Textures subset, the paper's benchmark); the noise sets are shown
in a separate column.

Runs go through ``train.py`` as users run it (one subprocess each, its output appended to
``<workdir>/train.log``), ``parallel`` at a time. On one GPU several small runs (ResNet-18 on
CIFAR) do not fill it alone; concurrent processes do, each limited to a share of the GPU memory
(``XLA_PYTHON_CLIENT_MEM_FRACTION``). A rerun of the same command resumes every unfinished run
from its checkpoint and re-evaluates the finished ones (``train.py`` is idempotent). Each
invocation's wall time per run is appended to ``<workdir>/wall_time.jsonl``; the report shows
the sum.

Nothing in the ``moon_jax`` packages imports this module.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

class Method(NamedTuple):
    """A method of the comparison: its label and the ``--config.*`` overrides that make it.

    Attributes:
      label: the table's name, ``{sparse}`` standing for e.g. ``RigL 90%``.
      sparse_method: ``config.sparse.method``.
      overrides: further ``--config.a.b=value`` arguments (after the shared ones, so they win).
    """

    label: str
    sparse_method: str
    overrides: tuple[str, ...]


_NO_MOON = ("--config.moon.enabled=False",)
_MOON = ("--config.moon.enabled=True",)
#: Mixup's Beta parameter of the reference code's Mixup training config.
MIXUP_ALPHA = 0.2
#: CigL's drop rate in the reference (``Masking.dpnum = 100``).
CIGL_DROP_RATE = 0.01

#: Every method by name. Without MOON there is no K+1 head and no weight averaging
#: (``moon.enabled = False``), as in the paper's baselines.
METHODS: dict[str, Method] = {
    "dense": Method("dense", "dense", _NO_MOON),
    "static": Method("{sparse}", "static", _NO_MOON),
    "set": Method("{sparse}", "set", _NO_MOON),
    "rigl": Method("{sparse}", "rigl", _NO_MOON),
    "moon_dense": Method("MOON + dense", "dense", _MOON),
    "moon_static": Method("MOON + {sparse}", "static", _MOON),
    "moon_set": Method("MOON + {sparse}", "set", _MOON),
    "moon_rigl": Method("MOON + {sparse}", "rigl", _MOON),
    # Figure 5: MOON without one of its parts
    "moon_rigl_no_loss": Method("MOON + {sparse}, no loss modification", "rigl",
                                _MOON + ("--config.moon.loss_weighting=none",)),
    "moon_rigl_fixed_alpha": Method("MOON + {sparse}, fixed alpha", "rigl", _MOON + ("--config.moon.alpha_tuning=fixed",)),
    "moon_rigl_untuned_ramp": Method("MOON + {sparse}, alpha ramp without the EWMA", "rigl",
                                     _MOON + ("--config.moon.alpha_tuning=untuned_ramp",)),
    "moon_rigl_no_voting": Method("MOON + {sparse}, no voting", "rigl", _MOON + ("--config.moon.averaging_epochs=0",)),
    # Figure 3's baselines
    "mixup_rigl": Method("Mixup + {sparse}", "rigl", _NO_MOON + (f"--config.data.mixup_alpha={MIXUP_ALPHA}",)),
    "cigl_rigl": Method("CigL + {sparse}", "rigl", _MOON + (
        "--config.moon.head=none", "--config.moon.loss_weighting=none", f"--config.moon.dropconnect_rate={CIGL_DROP_RATE}")),
    # what the reference's code ran
    "moon_rigl_reference_head": Method("MOON + {sparse}, reference K-output head", "rigl",
                                       _MOON + ("--config.moon.head=reference_k",)),
    "moon_cigl_rigl": Method("MOON + {sparse} + CigL mask", "rigl",
                             _MOON + (f"--config.moon.dropconnect_rate={CIGL_DROP_RATE}",)),
}
PAPER_METHODS = ("dense", "rigl", "moon_rigl", "set", "moon_set")
ABLATION_METHODS = ("moon_rigl_no_loss", "moon_rigl_fixed_alpha", "moon_rigl_no_voting")
BASELINE_METHODS = ("mixup_rigl", "cigl_rigl")
SPARSE_NAMES = {"static": "static", "set": "SET", "rigl": "RigL"}
#: (method, baseline, what the paper says) for the paired comparisons besides the main claims.
COMPARISONS = (
    ("moon_rigl", "moon_rigl_no_loss", "the loss modification helps (Fig. 5)"),
    ("moon_rigl", "moon_rigl_fixed_alpha", "the auto-tuning helps (Fig. 5)"),
    ("moon_rigl", "moon_rigl_untuned_ramp", "(the auto-tuning against the reference's untuned ramp)"),
    ("moon_rigl", "moon_rigl_no_voting", "the voting helps (Fig. 5)"),
    ("moon_rigl", "mixup_rigl", "MOON beats Mixup (Fig. 3)"),
    ("moon_rigl", "cigl_rigl", "MOON beats CigL (Fig. 3)"),
    ("moon_rigl_reference_head", "rigl", "(the reference's K-output head against plain RigL)"),
    ("moon_rigl_reference_head", "moon_rigl", "(the reference's K-output head against the K+1 head)"),
    ("moon_cigl_rigl", "moon_rigl", "(CigL's random mask added to MOON, as the reference always ran)"),
)


def is_noise_set(name: str) -> bool:
    """Synthetic noise sets (``gaussian_noise``, ``uniform_noise``): not in the headline mean."""
    return "noise" in name


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
    spec = METHODS[method]
    base = "dense" if spec.sparse_method == "dense" else f"{SPARSE_NAMES[spec.sparse_method]} {100 * sparsity:g}%"
    return spec.label.format(sparse=base)


def plan_runs(
    config_path: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    root,
    overrides: Sequence[str] = (),
    python: str = sys.executable,
    train_script: str = "train.py",
    method_seeds: Optional[Mapping[str, Sequence[int]]] = None,
) -> list[RunSpec]:
    """The runs for every ``method x seed``: workdir ``<root>/<method>_s<seed>`` and its command.

    Ordered seed by seed (every method of the first seed, then the next seed), so that a long job
    cut short still holds complete paired comparisons. ``method_seeds`` gives some methods their
    own seeds (e.g. the ablations over one seed, the paper's methods over three).
    ``overrides`` are extra ``--config.a.b=value`` arguments shared by every run (e.g. a smaller
    model for a smoke test); they come before the method's own, which therefore win.
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
            workdir = Path(root) / f"{method}_s{seed}"
            command = (
                python, train_script, f"--config={config_path}", f"--workdir={workdir}",
                *overrides,
                f"--config.seed={seed}", f"--config.sparse.method={spec.sparse_method}", *spec.overrides,
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


def run_is_complete(spec: RunSpec) -> bool:
    """True when ``spec``'s workdir holds a finished run of exactly this config: an ``eval.json``,
    a last recorded train.py invocation that exited 0, and a saved ``config.json`` equal to the
    config ``spec``'s command gives. Re-running the driver skips such runs: starting train.py on
    them would only evaluate them again and add that time to the run's wall time."""
    workdir = Path(spec.workdir)
    saved_config = workdir / "config.json"
    if not ((workdir / "eval.json").exists() and saved_config.exists()):
        return False
    records = _wall_time_records(workdir)
    if not records or records[-1]["returncode"] != 0:
        return False
    return json.loads(saved_config.read_text()) == json.loads(spec_config(spec).to_json_best_effort())


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
                record_wall_time(outcome)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {spec.workdir}/train.log)"
                log(f"{status}: {spec.method} seed {spec.seed} in {outcome.seconds:.1f} s")
    finally:
        _stop_children(specs, running, log)
    return [outcomes[i] for i in range(len(specs))]


WALL_TIME_FILE = "wall_time.jsonl"


def record_wall_time(outcome: RunOutcome) -> None:
    """Appends one invocation's wall time and exit status to ``<workdir>/wall_time.jsonl``."""
    with open(outcome.spec.workdir / WALL_TIME_FILE, "a") as f:
        f.write(json.dumps({"seconds": round(outcome.seconds, 3), "returncode": outcome.returncode,
                            "finished_at": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")


def total_wall_time(workdir) -> Optional[float]:
    """Seconds of every train.py invocation of a run (resumptions summed), or None if unknown."""
    records = _wall_time_records(workdir)
    return sum(record["seconds"] for record in records) if records else None


def _wall_time_records(workdir) -> list[dict]:
    """The records of ``<workdir>/wall_time.jsonl``, one per train.py invocation (none if absent)."""
    path = Path(workdir) / WALL_TIME_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _headline_means(per_set: Mapping[str, Mapping[str, float]], prefix: str = "") -> dict[str, float]:
    """Plain means of AUROC / FPR95 over the non-noise sets (``mean``) and the noise sets (``noise``)."""
    metrics = {}
    for group, names in (("mean", [n for n in per_set if n != "mean" and not is_noise_set(n)]),
                         ("noise", [n for n in per_set if n != "mean" and is_noise_set(n)])):
        if names:
            for key in ("auroc", "fpr95"):
                metrics[f"{prefix}{key}/{group}"] = statistics.fmean(per_set[n][key] for n in names)
    return metrics


def run_metrics(results: Mapping) -> dict[str, float]:
    """The numbers of one run's eval.json used here (fractions).

    ``acc``, ``ece``, ``nll``; ``train_acc`` (eval mode, fixed training subset) when recorded;
    for the primary score per-set AUROC / FPR95 (``auroc/<set>``, ``fpr95/<set>``), their mean
    over the non-noise sets (``auroc/mean``) and over the noise sets (``auroc/noise``); the same
    means for ``energy`` (``energy_auroc/mean``, ...); MOON's mean p(unknown) (``p_unknown/id``,
    ``p_unknown/<set>``); the last iterate's ``last_acc``, ``last_ece`` and ``last_auroc/mean``
    when the reported model is the weight average.
    """
    cls = results["classification"]
    ood = results["ood"][results["primary_score"]]
    metrics = {"acc": cls["acc"], "ece": cls["ece"], "nll": cls["nll"]}
    if "train_subset_classification" in results:
        metrics["train_acc"] = results["train_subset_classification"]["acc"]
    for name, values in ood.items():
        if name != "mean":
            metrics[f"auroc/{name}"] = values["auroc"]
            metrics[f"fpr95/{name}"] = values["fpr95"]
    metrics.update(_headline_means(ood))
    if "energy" in results["ood"]:
        metrics.update(_headline_means(results["ood"]["energy"], "energy_"))
    unknown = results.get("unknown_probability")
    if unknown:
        metrics["p_unknown/id"] = unknown["id"]
        metrics.update({f"p_unknown/{name}": value for name, value in unknown["ood"].items()})
    last = results.get("last_iterate")
    if last:
        metrics["last_acc"] = last["classification"]["acc"]
        metrics["last_ece"] = last["classification"]["ece"]
        metrics.update({k: v for k, v in _headline_means(last["ood"], "last_").items() if k.startswith("last_auroc")})
    return metrics


def aggregate(per_run: Mapping[tuple[str, int], Mapping[str, float]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{method: {metric: (mean, std, number of seeds)}}`` from ``{(method, seed): metrics}``."""
    by_method: dict[str, dict[str, list[float]]] = {}
    for (method, _), metrics in per_run.items():
        for key, value in metrics.items():
            by_method.setdefault(method, {}).setdefault(key, []).append(value)
    return {m: {k: (*_mean_std(v), len(v)) for k, v in metrics.items()} for m, metrics in by_method.items()}


def paired_difference(
    per_run: Mapping[tuple[str, int], Mapping[str, float]], better: str, baseline: str, metric: str,
    better_metric: Optional[str] = None, baseline_metric: Optional[str] = None,
) -> Optional[tuple[float, float, int]]:
    """``better - baseline`` for ``metric`` over the seeds both have: (mean, std, n) or None.
    ``better_metric`` / ``baseline_metric`` read one side from another key (``last_<metric>``: the
    run's last iterate), so one method's weight average can be paired with its own last iterate."""
    better_metric, baseline_metric = better_metric or metric, baseline_metric or metric
    seeds = sorted({s for m, s in per_run if m == better} & {s for m, s in per_run if m == baseline})
    diffs = [per_run[(better, s)][better_metric] - per_run[(baseline, s)][baseline_metric] for s in seeds
             if better_metric in per_run[(better, s)] and baseline_metric in per_run[(baseline, s)]]
    return (*_mean_std(diffs), len(diffs)) if diffs else None


def voting_difference(
    per_run: Mapping[tuple[str, int], Mapping[str, float]], method: str, metric: str
) -> Optional[tuple[float, float, int]]:
    """Weight average - last iterate of the same runs of ``method`` for ``metric`` (``acc``,
    ``ece`` or ``auroc/mean``): (mean, std, n seeds) or None. What the voting adds, free of the
    seed-to-seed spread that a comparison with a separate no-voting run carries."""
    return paired_difference(per_run, method, method, metric, baseline_metric=f"last_{metric}")


def _pm(stat: tuple[float, float, int], scale: float = 100.0, digits: int = 2) -> str:
    mean, std, n = stat
    mean = round(scale * mean, digits) + 0.0  # + 0.0: no "-0.00"
    return f"{mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if n > 1 else "")


def _pm_significant(stat: tuple[float, float, int], scale: float = 100.0, digits: int = 2) -> str:
    """Like :func:`_pm` with ``digits`` significant digits of the mean (the std to the same
    decimal place), for quantities that span orders of magnitude (p(unknown): 40% or 0.0015%)."""
    mean = stat[0]
    decimals = 0 if mean == 0 else max(0, digits - 1 - math.floor(math.log10(abs(scale * mean))))
    return _pm(stat, scale, decimals)


def _noise_note(diff: tuple[float, float, int]) -> str:
    """``", within seed noise"`` when a paired difference over several seeds is smaller than two
    standard errors (std / sqrt(n)), so its sign is not evidence either way."""
    mean, std, n = diff
    return ", within seed noise" if n > 1 and abs(mean) < 2 * std / n ** 0.5 else ""


def _direction(diff: tuple[float, float, int], word: str = "higher", sign: int = 1) -> str:
    """``"higher"`` or ``"not higher"`` (``word``; ``sign=-1`` when a negative difference is the
    direction named, e.g. ``"lower"`` ECE) for a paired difference, with :func:`_noise_note`."""
    return ("" if sign * diff[0] > 0 else "not ") + word + _noise_note(diff)


def _metric_phrase(
    d_auroc: tuple[float, float, int], d_acc: tuple[float, float, int], d_ece: tuple[float, float, int],
    ece_verdict: bool = False,
) -> str:
    """``"mean AUROC x points (higher), ACC y, ECE z"`` for three paired differences, each with its
    noise note; ``ece_verdict`` says "(lower)" / "(not lower)" for ECE where the paper claims it."""
    ece_note = f" ({_direction(d_ece, 'lower', -1)})" if ece_verdict else _noise_note(d_ece)
    return (f"mean AUROC {_pm(d_auroc)} points ({_direction(d_auroc)}), "
            f"ACC {_pm(d_acc)}{_noise_note(d_acc)}, ECE {_pm(d_ece)}{ece_note}")


def _seed_spread_line(per_run: Mapping[tuple[str, int], Mapping[str, float]], sparsity: float) -> Optional[str]:
    """A bullet giving one-seed comparisons their scale: how much the paired difference
    ``moon_<x> - <x>`` (the one with the most seeds) moves between seeds. None without one."""
    methods = {m for m, _ in per_run}
    pairs = [(f"moon_{b}", b) for b in ("rigl", "set", "static") if b in methods and f"moon_{b}" in methods]
    diffs = [(moon, base, {k: paired_difference(per_run, moon, base, k) for k in ("auroc/mean", "acc", "ece")})
             for moon, base in pairs]
    diffs = [d for d in diffs if None not in d[2].values() and d[2]["auroc/mean"][2] > 1]
    if not diffs:
        return None
    moon, base, d = max(diffs, key=lambda item: item[2]["auroc/mean"][2])
    std = lambda key: f"{100 * d[key][1]:.2f}"  # noqa: E731
    return (f"- A comparison over one seed has no spread of its own. For scale: {method_label(moon, sparsity)} - "
            f"{method_label(base, sparsity)} varies between seeds by a std of {std('auroc/mean')} points of mean AUROC, "
            f"{std('acc')} of ACC and {std('ece')} of ECE ({d['auroc/mean'][2]} paired seeds).")


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
                f"- {label} - {base}: mean AUROC {_pm(d_auroc)} points ({_direction(d_auroc)}; "
                f"paper: several points higher), FPR95 {_pm(d_fpr)}, "
                f"ACC {_pm(d_acc)} ({'within' if abs(d_acc[0]) <= 0.005 else 'not within'} 0.5 points), ECE {_pm(d_ece)} "
                f"({_direction(d_ece, 'lower', -1)}); {d_auroc[2]} paired seed(s)."
            )
            last = {k: paired_difference(per_run, moon, sparse_method, k, better_metric=f"last_{k}")
                    for k in ("auroc/mean", "acc", "ece")}
            if None not in last.values():  # separates what the loss does from what the voting adds
                lines.append(
                    f"- {label}, last iterate - {base} (the loss without the voting): "
                    f"{_metric_phrase(last['auroc/mean'], last['acc'], last['ece'], ece_verdict=True)}; "
                    f"{last['auroc/mean'][2]} paired seed(s)."
                )
    for method, baseline, claim in COMPARISONS:
        if method not in methods or baseline not in methods:
            continue
        d_auroc = paired_difference(per_run, method, baseline, "auroc/mean")
        d_acc = paired_difference(per_run, method, baseline, "acc")
        d_ece = paired_difference(per_run, method, baseline, "ece")
        if None in (d_auroc, d_acc, d_ece):
            continue
        lines.append(
            f"- {method_label(method, sparsity)} - {method_label(baseline, sparsity)}: "
            f"{_metric_phrase(d_auroc, d_acc, d_ece)}; {d_auroc[2]} paired seed(s). Paper: {claim}."
        )
    for method in sorted(methods):
        d_auroc, d_acc, d_ece = (voting_difference(per_run, method, metric) for metric in ("auroc/mean", "acc", "ece"))
        if None in (d_auroc, d_acc, d_ece):
            continue
        lines.append(
            f"- The voting within the same runs ({method_label(method, sparsity)}: weight average - last iterate): "
            f"{_metric_phrase(d_auroc, d_acc, d_ece)}; {d_auroc[2]} seed(s)."
            + (" Paper: the voting helps (Fig. 5)." if method.startswith("moon_") else "")
        )
    spread = _seed_spread_line(per_run, sparsity)
    return lines + [spread] if lines and spread else lines


def _cell(stats: Mapping[str, tuple[float, float, int]], key: str, scale: float = 100.0, digits: int = 2) -> str:
    return _pm(stats[key], scale, digits) if key in stats else "n/a"


def summary_table(
    stats: Mapping[str, Mapping[str, tuple[float, float, int]]],
    methods: Sequence[str],
    sparsity: float,
    scores: Optional[Mapping[str, str]] = None,
) -> str:
    """Markdown: one row per method (mean ± std over seeds): training accuracy, ACC / ECE / NLL,
    the primary score's mean AUROC / FPR95 over the non-noise OOD sets, its noise-set AUROC, the
    same means for energy, and the wall time per run in minutes."""
    scores = scores or {}
    lines = [
        "| method | seeds | train ACC | ACC | ECE | NLL | score | mean AUROC | mean FPR95 | noise AUROC | "
        "energy AUROC | energy FPR95 | minutes / run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in methods:
        if method not in stats:
            continue
        s = stats[method]
        lines.append(
            f"| {method_label(method, sparsity)} | {s['acc'][2]} | {_cell(s, 'train_acc')} | {_pm(s['acc'])} | "
            f"{_pm(s['ece'])} | {_pm(s['nll'], 1.0, 4)} | {scores.get(method, '')} | {_cell(s, 'auroc/mean')} | "
            f"{_cell(s, 'fpr95/mean')} | {_cell(s, 'auroc/noise')} | {_cell(s, 'energy_auroc/mean')} | "
            f"{_cell(s, 'energy_fpr95/mean')} | {_cell(s, 'wall_s', 1 / 60, 1)} |"
        )
    return "\n".join(lines)


def moon_table(stats: Mapping[str, Mapping[str, tuple[float, float, int]]], methods: Sequence[str], sparsity: float) -> str:
    """Markdown: for runs with an unknown output or a weight average, the mean p(unknown) on the
    ID test set and each OOD set, and the last iterate's ACC / mean AUROC beside the average's."""
    sets = []
    for method in methods:
        for key in stats.get(method, {}):
            if key.startswith("p_unknown/") and key != "p_unknown/id" and key.split("/", 1)[1] not in sets:
                sets.append(key.split("/", 1)[1])
    lines = [
        "| method | p(unknown) ID | " + " | ".join(f"p(unknown) {n}" for n in sets)
        + " | ACC average | ACC last iterate | mean AUROC average | mean AUROC last iterate |",
        "| --- | ---: |" + " ---: |" * len(sets) + " ---: | ---: | ---: | ---: |",
    ]
    rows = 0
    for method in methods:
        s = stats.get(method, {})
        if "p_unknown/id" not in s and "last_acc" not in s:
            continue
        rows += 1
        cells = [_pm_significant(s[k]) if k in s else "n/a" for k in ["p_unknown/id"] + [f"p_unknown/{n}" for n in sets]]
        average = "last_acc" in s
        cells += [_cell(s, "acc") if average else "n/a", _cell(s, "last_acc"),
                  _cell(s, "auroc/mean") if average else "n/a", _cell(s, "last_auroc/mean")]
        lines.append(f"| {method_label(method, sparsity)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if rows else ""


def per_set_table(stats: Mapping[str, Mapping[str, tuple[float, float, int]]], methods: Sequence[str], sparsity: float) -> str:
    """Markdown: one row per method, AUROC / FPR95 for every OOD set (mean ± std over seeds)."""
    sets = []
    for method in methods:
        for key in stats.get(method, {}):
            name = key.split("/", 1)[1] if key.startswith("auroc/") else None
            if name and name not in ("mean", "noise") and name not in sets:
                sets.append(name)
    sets.sort(key=is_noise_set)  # noise sets last
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
    scale: str = "",
) -> str:
    """The whole Markdown report (see the module docstring). ``scale``: the scale of the runs
    and why it was chosen (e.g. the config file's docstring)."""
    per_run = {key: run_metrics(r) for key, r in results.items()}
    for o in outcomes:
        seconds = total_wall_time(o.spec.workdir)
        if (o.spec.method, o.spec.seed) in per_run and seconds is not None:
            per_run[(o.spec.method, o.spec.seed)]["wall_s"] = seconds
    stats = aggregate(per_run)
    scores = {m: f"`{r['primary_score']}`" for (m, _), r in results.items()}
    seeds = sorted({s for _, s in per_run} | {o.spec.seed for o in outcomes})
    first = next(iter(results.values()), {})
    date = date or datetime.date.today().isoformat()
    all_sets = list(first.get("ood_sizes", {}))
    headline_sets = ", ".join(n for n in all_sets if not is_noise_set(n)) or "the non-noise sets"
    noise_sets = ", ".join(n for n in all_sets if is_noise_set(n)) or "none"
    lines = [f"# {title}", "", f"Measured {date} on {device}; seeds {', '.join(map(str, seeds))}. Made by `{invocation}`."]
    if scale:
        lines += ["", "## Scale and why", "", scale.strip()]
    lines += [
        "",
        "## Summary",
        "",
        summary_table(stats, methods, sparsity, scores),
        "",
        f"ACC, ECE ({first.get('ece_bins', 15)} bins), NLL of the K-class softmax on the {first.get('num_test', '?')} ID test images; train ACC: "
        "the same model in eval mode on a fixed subset of (at most 10,000) stored training images. score: the run's "
        "primary score, the paper's (`moon_msp` for a K+1 head: softmax over K+1 outputs, max over the first K; MSP "
        f"otherwise). mean AUROC / FPR95: plain mean over {headline_sets}; noise AUROC: mean "
        f"over {noise_sets}, not in the headline; energy: the same means for the energy score. ID positive (OpenOOD v1, "
        "as the MOON reference evaluates). Runs with voting are evaluated as the weight average. Percent except NLL; "
        "mean ± sample std over seeds; minutes / run: train.py's wall time (resumptions summed, evaluation included).",
        "",
        "## Per OOD set",
        "",
        per_set_table(stats, methods, sparsity),
        "",
        "AUROC / FPR95 of the primary score per set.",
    ]
    moon_part = moon_table(stats, methods, sparsity)
    if moon_part:
        lines += [
            "", "## The unknown output and the voting", "", moon_part, "",
            "p(unknown): mean softmax probability of the K+1-th output, percent, 2 significant digits (runs with a K+1 head). Last iterate: the "
            "final weights with their own BatchNorm statistics, primary score only (what the voting adds).",
        ]
    if "moon_rigl_reference_head" in stats:
        lines += [
            "", "The reference's K-output head has no unknown output: the loss treated the last real class's output "
            "as \"unknown\", and the run is evaluated as a K-class model (MSP over the K outputs, accuracy over all "
            "K classes), which is what the reference's postprocessor computed for its 10-output CIFAR-10 network.",
        ]
    lines += [
        "",
        "## The paper's claims, as measured",
        "",
        *(claim_checks(per_run, sparsity) or ["- (needs dense and the sparse methods with and without MOON)"]),
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += ["", "## Runs", "",
              "| method | seed | exit | wall time of this invocation (s) | wall time, all invocations (s) | command |",
              "| --- | ---: | ---: | ---: | ---: | --- |"]
    for o in outcomes:
        total = total_wall_time(o.spec.workdir)
        total_cell = f"{total:.1f}" if total is not None else "n/a"
        lines.append(f"| {o.spec.method} | {o.spec.seed} | {o.returncode} | {o.seconds:.1f} | {total_cell} | "
                     f"`{display_command(o.spec)}` |")
    lines += ["", "Evaluate again or compare with `python eval.py --compare " + " ".join(str(o.spec.workdir) for o in outcomes) + "`."]
    return "\n".join(lines) + "\n"
