"""The Markdown report: the summary, per-OOD-set and unknown-output tables, the paper's claims as
measured (:mod:`moon_jax.reproduction.claims`), and the runs with their commands and wall times.

Every function that names methods takes ``level``: the runs' sparsity as the rows name it after
the algorithm (:func:`~moon_jax.reproduction.methods.sparsity_level`: "90%", "2:4 (ERK 90% plan)")."""
from __future__ import annotations

import datetime
import os
import shlex
from typing import Mapping, Optional, Sequence

from moon_jax.reproduction.claims import claim_checks
from moon_jax.reproduction.factorial import factorial_section
from moon_jax.reproduction.formatting import cell, pm, pm_significant
from moon_jax.reproduction.methods import method_label
from moon_jax.reproduction.planning import RunSpec
from moon_jax.reproduction.records import holds_records_only
from moon_jax.reproduction.runner import RunOutcome
from moon_jax.reproduction.stats import Stat, aggregate, is_noise_set, run_metrics
from moon_jax.reproduction.workdirs import WallTime, wall_time_summary

#: ``{method: {metric: (mean, std, n)}}`` (:func:`~moon_jax.reproduction.stats.aggregate`).
Stats = Mapping[str, Mapping[str, Stat]]


def display_command(spec: RunSpec) -> str:
    """``spec``'s command as a user would type it: ``python train.py ...`` (the interpreter shown
    as ``python``, the script relative to the current directory)."""
    _, script, *args = spec.command
    return shlex.join(["python", os.path.relpath(script), *args])


def summary_table(
    stats: Stats, methods: Sequence[str], level: str, scores: Optional[Mapping[str, str]] = None
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
            f"| {method_label(method, level)} | {s['acc'][2]} | {cell(s, 'train_acc')} | {pm(s['acc'])} | "
            f"{pm(s['ece'])} | {pm(s['nll'], 1.0, 4)} | {scores.get(method, '')} | {cell(s, 'auroc/mean')} | "
            f"{cell(s, 'fpr95/mean')} | {cell(s, 'auroc/noise')} | {cell(s, 'energy_auroc/mean')} | "
            f"{cell(s, 'energy_fpr95/mean')} | {cell(s, 'wall_s', 1 / 60, 1)} |"
        )
    return "\n".join(lines)


def _set_names(stats: Stats, methods: Sequence[str], prefix: str, skip: Sequence[str]) -> list[str]:
    """The OOD set names of the keys ``<prefix>/<set>`` of ``methods``' stats, in first-seen order,
    without ``skip``."""
    sets = []
    for method in methods:
        for key in stats.get(method, {}):
            name = key.split("/", 1)[1] if key.startswith(f"{prefix}/") else None
            if name and name not in skip and name not in sets:
                sets.append(name)
    return sets


def moon_table(stats: Stats, methods: Sequence[str], level: str) -> str:
    """Markdown: for runs with an unknown output or a weight average, the mean p(unknown) on the
    ID test set and each OOD set, and the last iterate's ACC / mean AUROC beside the average's."""
    shown = [m for m in methods if "p_unknown/id" in stats.get(m, {}) or "last_acc" in stats.get(m, {})]
    # p(unknown) columns only when a run has an unknown output
    unknown_keys = (["p_unknown/id", *(f"p_unknown/{n}" for n in _set_names(stats, methods, "p_unknown", ("id",)))]
                    if any("p_unknown/id" in stats[m] for m in shown) else [])
    columns = [f"p(unknown) {'ID' if k == 'p_unknown/id' else k.split('/', 1)[1]}" for k in unknown_keys]
    columns += ["ACC average", "ACC last iterate", "mean AUROC average", "mean AUROC last iterate"]
    lines = ["| method | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for method in shown:
        s = stats[method]
        cells = [pm_significant(s[k]) if k in s else "n/a" for k in unknown_keys]
        average = "last_acc" in s
        cells += [cell(s, "acc") if average else "n/a", cell(s, "last_acc"),
                  cell(s, "auroc/mean") if average else "n/a", cell(s, "last_auroc/mean")]
        lines.append(f"| {method_label(method, level)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if shown else ""


def unknown_scores_table(stats: Stats, methods: Sequence[str], level: str) -> str:
    """Markdown: mean AUROC / FPR95 of ``moon_msp`` (the primary score of a K+1 head) and of
    ``known_probability`` for the runs that recorded the latter; "" when none did."""
    lines = ["| method | moon_msp AUROC | moon_msp FPR95 | known_probability AUROC | known_probability FPR95 |",
             "| --- | ---: | ---: | ---: | ---: |"]
    rows = [m for m in methods if "known_probability_auroc/mean" in stats.get(m, {})]
    for method in rows:
        s = stats[method]
        lines.append(f"| {method_label(method, level)} | {cell(s, 'auroc/mean')} | {cell(s, 'fpr95/mean')} | "
                     f"{cell(s, 'known_probability_auroc/mean')} | {cell(s, 'known_probability_fpr95/mean')} |")
    return "\n".join(lines) if rows else ""


def per_set_table(stats: Stats, methods: Sequence[str], level: str) -> str:
    """Markdown: one row per method, AUROC / FPR95 for every OOD set (mean ± std over seeds)."""
    sets = _set_names(stats, methods, "auroc", ("mean", "noise"))
    sets.sort(key=is_noise_set)  # noise sets last
    header = "| method | " + " | ".join(f"{s} AUROC / FPR95" for s in sets) + " |"
    lines = [header, "| --- |" + " ---: |" * len(sets)]
    for method in methods:
        if method not in stats:
            continue
        s = stats[method]
        cells = [f"{pm(s[f'auroc/{n}'])} / {pm(s[f'fpr95/{n}'])}" if f"auroc/{n}" in s else "n/a" for n in sets]
        lines.append(f"| {method_label(method, level)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_run_with_wall_time(results: Mapping[tuple[str, int], Mapping], wall_times: Mapping[tuple[str, int], WallTime]) -> dict:
    """Each evaluated run's metrics (:func:`~moon_jax.reproduction.stats.run_metrics`) with its
    total wall time (``wall_s``) where known."""
    per_run = {key: run_metrics(r) for key, r in results.items()}
    for key, wall in wall_times.items():
        if key in per_run and wall.seconds is not None:
            per_run[key]["wall_s"] = wall.seconds
    return per_run


def _summary_note(first: Mapping) -> str:
    """What the summary table's columns measure, with the OOD sets of the headline and noise means."""
    all_sets = list(first.get("ood_sizes", {}))
    headline_sets = ", ".join(n for n in all_sets if not is_noise_set(n)) or "the non-noise sets"
    noise_sets = ", ".join(n for n in all_sets if is_noise_set(n)) or "none"
    return (
        f"ACC, ECE ({first.get('ece_bins', 15)} bins), NLL of the K-class softmax on the {first.get('num_test', '?')} ID test images; train ACC: "
        "the same model in eval mode on a fixed subset of (at most 10,000) stored training images. score: the run's "
        "primary score, the paper's (`moon_msp` for a K+1 head: softmax over K+1 outputs, max over the first K; MSP "
        f"otherwise). mean AUROC / FPR95: plain mean over {headline_sets}; noise AUROC: mean "
        f"over {noise_sets}, not in the headline; energy: the same means for the energy score. ID positive (OpenOOD v1, "
        "as the MOON reference evaluates). Runs with voting are evaluated as the weight average. Percent except NLL; "
        "mean ± sample std over seeds; minutes / run: train.py's wall time (resumptions summed, evaluation included; "
        "left out where an invocation ended without a record, see Runs)."
    )


def _moon_section(stats: Stats, methods: Sequence[str], level: str) -> list[str]:
    """The unknown output and the voting (runs with a K+1 head or a weight average), and a note on
    the reference's K-output head when it ran; no lines without such runs."""
    lines = []
    moon_part = moon_table(stats, methods, level)
    if moon_part:
        lines += [
            "", "## The unknown output and the voting", "", moon_part, "",
            "p(unknown): mean softmax probability of the K+1-th output, percent, 2 significant digits (runs with a K+1 head). Last iterate: the "
            "final weights with their own BatchNorm statistics, primary score only (what the voting adds).",
        ]
    scores_part = unknown_scores_table(stats, methods, level)
    if scores_part:
        lines += [
            "", "AUROC of the two scores that read the unknown output (mean over the non-noise OOD sets): `moon_msp` "
            "(softmax over K+1 outputs, max over the first K) and `known_probability` (1 - p(unknown)).", "", scores_part,
        ]
    if "moon_rigl_reference_head" in stats:
        lines += [
            "", "The reference's K-output head has no unknown output: the loss treated the last real class's output "
            "as \"unknown\", and the run is evaluated as a K-class model (MSP over the K outputs, accuracy over all "
            "K classes), which is what the reference's postprocessor computed for its 10-output CIFAR-10 network.",
        ]
    return lines


def _runs_section(outcomes: Sequence[RunOutcome], wall_times: Mapping[tuple[str, int], WallTime]) -> list[str]:
    """The runs table (exit status, wall times, the exact command), the eval.py line that compares
    the runs with checkpoints, and which runs were read from their records alone."""
    lines = ["", "## Runs", "",
             "| method | seed | exit | wall time in this command (s) | wall time, all invocations (s) | command |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for o in outcomes:
        total, lost = wall_times[(o.spec.method, o.spec.seed)]
        this_cell = f"{o.seconds:.1f}" if o.seconds is not None else "skipped"
        total_cell = f"{total:.1f}" if total is not None else "n/a"
        if lost:
            total_cell += f" ({lost} invocation{'s' if lost > 1 else ''} ended without a record)"
        lines.append(f"| {o.spec.method} | {o.spec.seed} | {o.returncode} | {this_cell} | {total_cell} | "
                     f"`{display_command(o.spec)}` |")
    if any(o.seconds is None for o in outcomes):
        lines += ["", "skipped: not trained by the command that made this report (finished before it, or "
                      "`--eval_only`); its time is under \"all invocations\"."]
    recorded = [o for o in outcomes if holds_records_only(o.spec.workdir)]
    checkpointed = [o for o in outcomes if o not in recorded]
    if checkpointed:
        lines += ["", "Evaluate again or compare with `python eval.py --compare "
                  + " ".join(str(o.spec.workdir) for o in checkpointed) + "`."]
    if recorded:
        lines += ["", "Read from their records, without checkpoints (`--records`; they cannot be evaluated again): "
                  + ", ".join(f"{o.spec.method} seed {o.spec.seed}" for o in recorded) + "."]
    return lines


def reproduction_report(
    title: str,
    outcomes: Sequence[RunOutcome],
    results: Mapping[tuple[str, int], Mapping],
    methods: Sequence[str],
    level: str,
    device: str,
    invocation: str,
    notes: Sequence[str] = (),
    date: Optional[str] = None,
    scale: str = "",
) -> str:
    """The whole Markdown report (see :mod:`moon_jax.reproduction`). ``level``: the runs' sparsity
    as the tables name it (:func:`~moon_jax.reproduction.methods.sparsity_level`, e.g. "90%" or
    "2:4 (ERK 90% plan)"); ``scale``: the scale of the runs and why it was chosen (e.g. the config
    file's docstring)."""
    wall_times = {(o.spec.method, o.spec.seed): wall_time_summary(o.spec.workdir) for o in outcomes}
    per_run = _per_run_with_wall_time(results, wall_times)
    stats = aggregate(per_run)
    scores = {m: f"`{r['primary_score']}`" for (m, _), r in results.items()}
    seeds = sorted({s for _, s in per_run} | {o.spec.seed for o in outcomes})
    first = next(iter(results.values()), {})
    date = date or datetime.date.today().isoformat()
    lines = [f"# {title}", "", f"Measured {date} on {device}; seeds {', '.join(map(str, seeds))}. Made by `{invocation}`."]
    if scale:
        lines += ["", "## Scale and why", "", scale.strip()]
    lines += [
        "", "## Summary", "", summary_table(stats, methods, level, scores), "", _summary_note(first),
        "", "## Per OOD set", "", per_set_table(stats, methods, level), "",
        "AUROC / FPR95 of the primary score per set.",
        *_moon_section(stats, methods, level),
        *(["", factorial_section(per_run)] if factorial_section(per_run) else []),
        "", "## The paper's claims, as measured", "",
        *(claim_checks(per_run, level) or ["- (needs dense and the sparse methods with and without MOON)"]),
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += _runs_section(outcomes, wall_times)
    return "\n".join(lines) + "\n"
