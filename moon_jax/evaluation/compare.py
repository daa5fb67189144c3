"""``eval.py --compare DIR1 DIR2 ...``: one table across runs (e.g. dense vs RigL vs MOON) and a
``report.md`` with that table and every run's plots.

Which numbers: each workdir's ``eval.json`` is reused when it is up to date -- written by this
version's evaluator (``format_version``) for the workdir's latest checkpoint, and, when plots
are wanted, with every plot it lists still on disk. Otherwise the workdir is evaluated again
(:func:`moon_jax.evaluation.checkpoint_eval.evaluate_workdir`, which rewrites its eval.json and
plots). ``--ood`` / ``--scores`` force a new evaluation (an old eval.json may use other sets).
The evaluation is deterministic, so a reused and a recomputed eval.json hold the same numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from moon_jax.evaluation.evaluate import FORMAT_VERSION
from moon_jax.evaluation.plots import PLOT_FILES
from moon_jax.evaluation.report import ece_bins, format_percent
from moon_jax.training.checkpoint import CheckpointError, Checkpointer

REPORT_NAME = "report.md"
COLUMNS = ("run", "method", "model", "score", "ACC", "ECE", "NLL", "AUROC", "FPR95", "near AUROC", "far AUROC")
CAPTION = (
    "ACC, ECE ({bins}), NLL of the K-class softmax on the ID test set; AUROC / FPR95: plain mean over "
    "the OOD sets of the run's primary score (`moon_msp` for MOON, `msp` otherwise), ID positive; "
    "near / far AUROC: the same mean over OpenOOD's near-OOD / far-OOD sets (n/a: no set in the "
    "group). Percent except NLL."
)


def ece_bins_phrase(runs: Sequence[tuple[str, Mapping]]) -> str:
    """``'15 bins'`` when every run's ECE used the same number of bins; otherwise each run's
    number, with a warning that those ECEs are not comparable."""
    bins = {name: ece_bins(results) for name, results in runs}
    if len(set(bins.values())) == 1:
        return f"{next(iter(bins.values()))} bins"
    return "bins differ: " + ", ".join(f"{name} {n}" for name, n in bins.items()) + "; those ECEs are not comparable"


def caption(runs: Sequence[tuple[str, Mapping]]) -> str:
    """The caption under the comparison table of ``runs`` (:data:`CAPTION` with their ECE bins)."""
    return CAPTION.format(bins=ece_bins_phrase(runs))


def eval_json_is_current(workdir, plots: bool) -> bool:
    """Whether ``<workdir>/eval.json`` can be reused (see the module docstring)."""
    workdir = Path(workdir)
    path = workdir / "eval.json"
    if not path.exists():
        return False
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    if results.get("format_version") != FORMAT_VERSION:
        return False
    step = results.get("checkpoint_step", results.get("step"))
    if step is None or step != Checkpointer(workdir).latest_step():
        return False
    if plots and not (results.get("plots") and all((workdir / name).exists() for name in results["plots"])):
        return False
    return True


def load_or_evaluate(workdir, plots: bool = True, force: bool = False, **evaluate_kwargs) -> tuple[dict, bool]:
    """``(results, evaluated)``: the up-to-date eval.json of ``workdir``, or a fresh evaluation."""
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(f"{workdir} has no checkpoints/ directory: --compare takes `python train.py` workdirs")
    if not force and eval_json_is_current(workdir, plots):
        return json.loads((workdir / "eval.json").read_text()), False
    from moon_jax.evaluation.checkpoint_eval import evaluate_workdir

    return evaluate_workdir(workdir, plots=plots, verbose=False, **evaluate_kwargs), True


def run_names(workdirs: Sequence) -> list[str]:
    """A short name per run: the workdir's folder name, or its path where names repeat."""
    bases = [Path(w).name or str(w) for w in workdirs]
    return [b if bases.count(b) == 1 else str(w) for b, w in zip(bases, workdirs)]


def comparison_row(name: str, results: Mapping) -> list[str]:
    """The table cells of one run (:data:`COLUMNS`)."""
    cls = results["classification"]
    primary = results["primary_score"]
    mean = results["ood"].get(primary, {}).get("mean", {})
    groups = results.get("ood_groups", {}).get(primary, {})
    return [
        name,
        results.get("method", ""),
        results.get("model", ""),
        f"`{primary}`",
        format_percent(cls["acc"]),
        format_percent(cls["ece"]),
        f"{cls['nll']:.4f}",
        format_percent(mean.get("auroc")),
        format_percent(mean.get("fpr95")),
        format_percent(groups.get("near", {}).get("auroc")),
        format_percent(groups.get("far", {}).get("auroc")),
    ]


def comparison_table(runs: Sequence[tuple[str, Mapping]]) -> str:
    """Markdown table, one row per ``(name, results)``."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| --- | --- | --- | --- |" + " ---: |" * (len(COLUMNS) - 4),
    ]
    lines += ["| " + " | ".join(comparison_row(name, results)) + " |" for name, results in runs]
    return "\n".join(lines)


def _run_section(name: str, workdir: Path, results: Mapping, report_dir: Path) -> list[str]:
    lines = ["", f"## {name}", "", f"`{workdir}`: {results.get('dataset', '?')} / {results.get('architecture', '?')} / "
             f"{results.get('method', '?')}, {results.get('model', '?')}, step {results.get('step', '?')}."]
    ts = results.get("temperature_scaling")
    if ts:
        lines += ["", f"Temperature scaling: T = {ts['temperature']:.3f}; on the {ts['num_eval']}-image evaluation split "
                  f"ECE {format_percent(ts['uncalibrated']['ece'])} -> {format_percent(ts['calibrated']['ece'])}, "
                  f"NLL {ts['uncalibrated']['nll']:.4f} -> {ts['calibrated']['nll']:.4f}."]
    plots = [p for p in PLOT_FILES.values() if p in results.get("plots", []) and (workdir / p).exists()]
    if plots:
        lines.append("")
        for plot in plots:
            rel = Path(os.path.relpath(workdir / plot, report_dir)).as_posix()
            lines.append(f"![{name}: {plot[:-4]}]({rel})")
    return lines


def write_report(directory, runs: Sequence[tuple[str, Path, Mapping]]) -> Path:
    """Writes ``<directory>/report.md``: the comparison table, its caption and each run's plots
    (linked relative to the report, so the folder can be moved together with the runs)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    named = [(n, r) for n, _, r in runs]
    lines = ["# moon-jax comparison", "", comparison_table(named), "", caption(named)]
    for name, workdir, results in runs:
        lines += _run_section(name, Path(workdir).resolve(), results, directory.resolve())
    path = directory / REPORT_NAME
    path.write_text("\n".join(lines) + "\n")
    return path


def compare_workdirs(
    workdirs: Sequence,
    output_dir=None,
    plots: bool = True,
    ood: Optional[Sequence[str]] = None,
    scores: Optional[Sequence[str]] = None,
    log=print,
    **evaluate_kwargs,
) -> tuple[str, Path, list[dict]]:
    """Evaluates (or reads) every workdir, prints one table, writes the report.

    ``output_dir``: where ``report.md`` goes (default: the current directory). Returns
    ``(table, report path, results per run)``.
    """
    if not workdirs:
        raise ValueError("--compare needs at least one workdir")
    force = ood is not None or scores is not None
    names = run_names(workdirs)
    runs = []
    for name, workdir in zip(names, workdirs):
        results, evaluated = load_or_evaluate(workdir, plots=plots, force=force, ood=ood, scores=scores, **evaluate_kwargs)
        log(f"{name}: {'evaluated' if evaluated else 'read the up-to-date'} {Path(workdir) / 'eval.json'}")
        runs.append((name, Path(workdir), results))
    table = comparison_table([(n, r) for n, _, r in runs])
    report = write_report(Path(output_dir) if output_dir else Path.cwd(), runs)
    return table, report, [r for _, _, r in runs]
