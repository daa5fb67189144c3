"""``eval.py --compare DIR1 DIR2 ...``: one table across runs (e.g. dense vs RigL vs MOON) and a
``report.md`` with that table and every run's plots.

Like with like: a mean over three OOD sets beside a mean over one says nothing, so

* runs with different ID sets (``dataset``) get one table each, headed by the ID set;
* within a table, AUROC / FPR95 / near / far AUROC are means over the OOD sets **every** run of
  the table was evaluated on. When the runs' OOD sets are the same (the usual case) these are
  the means their eval.json holds; otherwise they are recomputed over the shared sets alone, and
  a line under the table names the shared sets and, per run, the sets left out (with no shared
  set the columns are n/a and the line lists each run's sets);
* a line under the table names each run's primary score when they differ otherwise than by the
  usual pairing (``moon_msp`` for a K+1 model, ``msp`` for a K-class one), and the caption gives
  each run's ECE bins when they differ.

Which numbers: each workdir's ``eval.json`` is reused when it is up to date -- written by this
version's evaluator (``format_version``) for the workdir's latest checkpoint, and, when plots
are wanted, with every plot it lists still on disk. Otherwise the workdir is evaluated again
(:func:`moon_jax.evaluation.checkpoint_eval.evaluate_workdir`, which rewrites its eval.json and
plots). ``--ood`` / ``--scores`` force a new evaluation (an old eval.json may use other sets).
The evaluation is deterministic, so a reused and a recomputed eval.json hold the same numbers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from moon_jax.evaluation.evaluate import FORMAT_VERSION
from moon_jax.evaluation.plots import PLOT_FILES
from moon_jax.evaluation.report import ece_bins, format_percent
from moon_jax.evaluation.score_registry import default_scores
from moon_jax.metrics import group_means, ood_groups, ood_table_mean
from moon_jax.evaluation.checkpoint_eval import evaluate_workdir
from moon_jax.training.checkpoint import CheckpointError
from moon_jax.training.run_directory import RunDirectory

REPORT_NAME = "report.md"
COLUMNS = ("run", "method", "model", "score", "ACC", "ECE", "NLL", "AUROC", "FPR95", "near AUROC", "far AUROC")
CAPTION = (
    "ACC, ECE ({bins}), NLL of the K-class softmax on the ID test set; AUROC / FPR95: plain mean over "
    "the OOD sets every run of the table shares (all of its sets unless a line under the table says "
    "otherwise) of the run's primary score (`moon_msp` for MOON, `msp` otherwise), ID positive; "
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
    run_dir = RunDirectory(workdir)
    results = run_dir.read_results()
    if results is None or results.get("format_version") != FORMAT_VERSION:
        return False
    step = results.get("checkpoint_step", results.get("step"))
    with run_dir:
        if step is None or step != run_dir.checkpointer.latest_step():
            return False
    if plots and not (results.get("plots") and all((run_dir.path / name).exists() for name in results["plots"])):
        return False
    return True


def load_or_evaluate(workdir, plots: bool = True, force: bool = False, **evaluate_kwargs) -> tuple[dict, bool]:
    """``(results, evaluated)``: the up-to-date eval.json of ``workdir``, or a fresh evaluation."""
    run_dir = RunDirectory(workdir)
    if not run_dir.has_checkpoint_directory():
        raise CheckpointError(f"{workdir} has no checkpoints/ directory: --compare takes `python train.py` workdirs")
    if not force and eval_json_is_current(workdir, plots):
        return run_dir.read_results(), False
    return evaluate_workdir(workdir, plots=plots, verbose=False, **evaluate_kwargs), True


def run_names(workdirs: Sequence) -> list[str]:
    """A short name per run: the workdir's folder name, or its path where names repeat."""
    bases = [Path(w).name or str(w) for w in workdirs]
    return [b if bases.count(b) == 1 else str(w) for b, w in zip(bases, workdirs)]


def ood_set_names(results: Mapping) -> list[str]:
    """The OOD sets a run was evaluated on, in its own order."""
    return list(results.get("ood_sizes", {}))


def shared_ood_sets(runs: Sequence[tuple[str, Mapping]]) -> list[str]:
    """The OOD sets every run of ``runs`` was evaluated on, in the first run's order."""
    first, *others = [ood_set_names(results) for _, results in runs]
    return [name for name in first if all(name in sets for sets in others)]


def primary_score_means(results: Mapping, sets: Sequence[str]) -> tuple[dict, dict]:
    """``(mean, group means)`` of the run's primary score over the OOD sets ``sets``.

    When ``sets`` are all of the run's sets, the means its eval.json holds; otherwise plain means
    over ``sets`` alone, as the evaluation takes them (:func:`moon_jax.metrics.ood_table_mean`,
    :func:`moon_jax.metrics.group_means`); ``({}, {})`` for no set.
    """
    primary = results["primary_score"]
    per_set = results["ood"].get(primary, {})
    if set(sets) == set(ood_set_names(results)):
        return per_set.get("mean", {}), results.get("ood_groups", {}).get(primary, {})
    if not sets:
        return {}, {}
    chosen = {name: per_set[name] for name in sets}
    return ood_table_mean(chosen), group_means(chosen, ood_groups(list(sets)))


def comparison_row(name: str, results: Mapping, sets: Optional[Sequence[str]] = None) -> list[str]:
    """The table cells of one run (:data:`COLUMNS`), its OOD means over ``sets`` (default: all of
    its OOD sets; :func:`primary_score_means`)."""
    cls = results["classification"]
    primary = results["primary_score"]
    mean, groups = primary_score_means(results, ood_set_names(results) if sets is None else sets)
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


def ood_coverage_notes(runs: Sequence[tuple[str, Mapping]], shared: Sequence[str]) -> list[str]:
    """The line under a table whose runs were evaluated on different OOD sets: which sets its
    means cover and which each run had besides; none when the runs' sets are the same."""
    left_out = {name: [s for s in ood_set_names(results) if s not in shared] for name, results in runs}
    if not any(left_out.values()):
        return []
    if not shared:
        sets = "; ".join(f"{name}: {', '.join(ood_set_names(results)) or 'none'}" for name, results in runs)
        return [f"No OOD set is common to all runs, so AUROC / FPR95 / near / far AUROC are n/a. OOD sets: {sets}."]
    extra = "; ".join(f"{name}: {', '.join(sets)}" for name, sets in left_out.items() if sets)
    return [f"The runs were evaluated on different OOD sets: AUROC / FPR95 / near / far AUROC are means over the "
            f"OOD sets all of them share ({', '.join(shared)}). Left out: {extra}."]


def primary_score_notes(runs: Sequence[tuple[str, Mapping]]) -> list[str]:
    """The line under a table whose runs' primary scores differ otherwise than by the usual
    pairing (each run's default: ``moon_msp`` for K+1, ``msp`` for K); none otherwise."""
    primaries = {name: results["primary_score"] for name, results in runs}
    defaults = all(results["primary_score"] == default_scores(bool(results.get("has_unknown_output")))[0]
                   for _, results in runs)
    if len(set(primaries.values())) == 1 or defaults:
        return []
    scores = ", ".join(f"{name} `{score}`" for name, score in primaries.items())
    return [f"The runs' primary scores differ ({scores}): their AUROC / FPR95 measure different scores."]


def runs_by_id_set(runs: Sequence[tuple[str, Mapping]]) -> dict[str, list[tuple[str, Mapping]]]:
    """``runs`` grouped by ID set (``results['dataset']``), in the order of first appearance."""
    groups: dict[str, list[tuple[str, Mapping]]] = {}
    for name, results in runs:
        groups.setdefault(results.get("dataset", "?"), []).append((name, results))
    return groups


def _table_lines(runs: Sequence[tuple[str, Mapping]]) -> list[str]:
    """One table of runs on the same ID set, its means over their shared OOD sets, and its notes."""
    shared = shared_ood_sets(runs)
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| --- | --- | --- | --- |" + " ---: |" * (len(COLUMNS) - 4),
    ]
    lines += ["| " + " | ".join(comparison_row(name, results, shared)) + " |" for name, results in runs]
    notes = ood_coverage_notes(runs, shared) + primary_score_notes(runs)
    return lines + ([""] + notes if notes else [])


def comparison_table(runs: Sequence[tuple[str, Mapping]]) -> str:
    """Markdown table, one row per ``(name, results)``: one table per ID set, each headed by its
    ID set when there are several, with the notes of the module docstring under it."""
    groups = runs_by_id_set(runs)
    blocks = []
    for id_set, members in groups.items():
        heading = [f"ID set `{id_set}` (not comparable with the other ID sets' tables):", ""] if len(groups) > 1 else []
        blocks.append("\n".join(heading + _table_lines(members)))
    return "\n\n".join(blocks)


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
        log(f"{name}: {'evaluated' if evaluated else 'read the up-to-date'} {RunDirectory(workdir).results_path}")
        runs.append((name, Path(workdir), results))
    table = comparison_table([(n, r) for n, _, r in runs])
    report = write_report(Path(output_dir) if output_dir else Path.cwd(), runs)
    return table, report, [r for _, _, r in runs]
