"""The paper's claims checked against the runs: one Markdown bullet per claim or comparison, with
the measured paired differences (mean ± std over seeds) and the verdict whichever way it goes.

Every function that names methods takes ``level``: the runs' sparsity as the rows name it after
the algorithm (:func:`~moon_jax.reproduction.methods.sparsity_level`: "90%", "2:4 (ERK 90% plan)")."""
from __future__ import annotations

from collections import Counter
from typing import Optional

from moon_jax.reproduction.formatting import pm
from moon_jax.reproduction.methods import COMPARISONS, SOLO_SPARSE_METHODS, method_label
from moon_jax.reproduction.stats import PerRun, Stat, beyond_seed_noise, paired_difference, voting_difference


def _noise_note(diff: Stat) -> str:
    """``", within seed noise"`` when a paired difference over several seeds is smaller than two
    standard errors (std / sqrt(n)), so its sign is not evidence either way."""
    return ", within seed noise" if diff[2] > 1 and not beyond_seed_noise(diff) else ""


def _direction(diff: Stat, word: str = "higher", sign: int = 1) -> str:
    """``"higher"`` or ``"not higher"`` (``word``; ``sign=-1`` when a negative difference is the
    direction named, e.g. ``"lower"`` ECE) for a paired difference, with :func:`_noise_note`."""
    return ("" if sign * diff[0] > 0 else "not ") + word + _noise_note(diff)


def _metric_phrase(d_auroc: Stat, d_acc: Stat, d_ece: Stat, ece_verdict: bool = False) -> str:
    """``"mean AUROC x points (higher), ACC y, ECE z"`` for three paired differences, each with its
    noise note; ``ece_verdict`` says "(lower)" / "(not lower)" for ECE where the paper claims it."""
    ece_note = f" ({_direction(d_ece, 'lower', -1)})" if ece_verdict else _noise_note(d_ece)
    return (f"mean AUROC {pm(d_auroc)} points ({_direction(d_auroc)}), "
            f"ACC {pm(d_acc)}{_noise_note(d_acc)}, ECE {pm(d_ece)}{ece_note}")


def _seed_spread_line(per_run: PerRun, level: str) -> Optional[str]:
    """A bullet giving one-seed comparisons their scale: how much the paired difference
    ``moon_<x> - <x>`` (the one with the most seeds) moves between seeds. None without one."""
    methods = {m for m, _ in per_run}
    pairs = [(f"moon_{b}", b) for b in SOLO_SPARSE_METHODS if b in methods and f"moon_{b}" in methods]
    diffs = [(moon, base, {k: paired_difference(per_run, moon, base, k) for k in ("auroc/mean", "acc", "ece")})
             for moon, base in pairs]
    diffs = [d for d in diffs if None not in d[2].values() and d[2]["auroc/mean"][2] > 1]
    if not diffs:
        return None
    moon, base, d = max(diffs, key=lambda item: item[2]["auroc/mean"][2])
    std = lambda key: f"{100 * d[key][1]:.2f}"  # noqa: E731
    return (f"- A comparison over one seed has no spread of its own. For scale: {method_label(moon, level)} - "
            f"{method_label(base, level)} varies between seeds by a std of {std('auroc/mean')} points of mean AUROC, "
            f"{std('acc')} of ACC and {std('ece')} of ECE ({d['auroc/mean'][2]} paired seeds).")


def _sparse_claim_lines(per_run: PerRun, level: str, sparse_method: str, methods: set) -> list[str]:
    """The main claims for one sparse method: sparse - dense, MOON + sparse - sparse, and MOON's
    last iterate - sparse (what the loss does without the voting)."""
    lines = []
    if sparse_method in methods and "dense" in methods:
        diff = paired_difference(per_run, sparse_method, "dense", "auroc/mean")
        if diff is not None:
            verdict = ("holds" if diff[0] < 0 else "does not hold") + _noise_note(diff)
            lines.append(
                f"- Sparse training lowers OOD detection ({method_label(sparse_method, level)} - dense, mean AUROC): "
                f"{pm(diff)} points over {diff[2]} seed(s): {verdict}."
            )
    moon = f"moon_{sparse_method}"
    if sparse_method in methods and moon in methods:
        d_auroc = paired_difference(per_run, moon, sparse_method, "auroc/mean")
        d_fpr = paired_difference(per_run, moon, sparse_method, "fpr95/mean")
        d_acc = paired_difference(per_run, moon, sparse_method, "acc")
        d_ece = paired_difference(per_run, moon, sparse_method, "ece")
        if None in (d_auroc, d_fpr, d_acc, d_ece):
            return lines
        label, base = method_label(moon, level), method_label(sparse_method, level)
        lines.append(
            f"- {label} - {base}: mean AUROC {pm(d_auroc)} points ({_direction(d_auroc)}; "
            f"paper: several points higher), FPR95 {pm(d_fpr)}, "
            f"ACC {pm(d_acc)} ({'within' if abs(d_acc[0]) <= 0.005 else 'not within'} 0.5 points), ECE {pm(d_ece)} "
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
    return lines


def _comparison_lines(per_run: PerRun, level: str, methods: set) -> list[str]:
    """The ablations and baselines (:data:`~moon_jax.reproduction.methods.COMPARISONS`) as paired
    differences, each with what the paper says."""
    lines = []
    for method, baseline, claim in COMPARISONS:
        if method not in methods or baseline not in methods:
            continue
        d_auroc = paired_difference(per_run, method, baseline, "auroc/mean")
        d_acc = paired_difference(per_run, method, baseline, "acc")
        d_ece = paired_difference(per_run, method, baseline, "ece")
        if None in (d_auroc, d_acc, d_ece):
            continue
        lines.append(
            f"- {method_label(method, level)} - {method_label(baseline, level)}: "
            f"{_metric_phrase(d_auroc, d_acc, d_ece)}; {d_auroc[2]} paired seed(s). Paper: {claim}."
        )
    return lines


def _voting_lines(per_run: PerRun, level: str, methods: set) -> list[str]:
    """What the voting adds within the same runs (weight average - last iterate), per method."""
    lines = []
    for method in sorted(methods):
        d_auroc, d_acc, d_ece = (voting_difference(per_run, method, metric) for metric in ("auroc/mean", "acc", "ece"))
        if None in (d_auroc, d_acc, d_ece):
            continue
        lines.append(
            f"- The voting within the same runs ({method_label(method, level)}: weight average - last iterate): "
            f"{_metric_phrase(d_auroc, d_acc, d_ece)}; {d_auroc[2]} seed(s)."
            + (" Paper: the voting helps (Fig. 5)." if method.startswith("moon_") else "")
        )
    return lines


def claim_checks(per_run: PerRun, level: str) -> list[str]:
    """The paper's claims, each as one Markdown bullet with the measured paired differences."""
    methods = {m for m, _ in per_run}
    lines = [line for sparse_method in SOLO_SPARSE_METHODS
             for line in _sparse_claim_lines(per_run, level, sparse_method, methods)]
    lines += _comparison_lines(per_run, level, methods) + _voting_lines(per_run, level, methods)
    one_seed_method = 1 in Counter(m for m, _ in per_run).values()
    spread = _seed_spread_line(per_run, level) if one_seed_method else None  # scale for one-seed comparisons
    return lines + [spread] if lines and spread else lines
