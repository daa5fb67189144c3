"""The factorial: MOON's loss and K+1 head (on / off) x CigL's random mask (on / off) x voting
(the weight average / its own last iterate, read within the same runs), as paired differences
over seeds, so that each effect is measured free of the seed-to-seed spread between runs.

Effects, per seed, then mean ± sample std over seeds (``y`` a metric of a cell, ``m`` MOON,
``c`` the CigL mask, ``v`` voting):

* main effect of a factor: the mean, over the levels of the other two, of ``y(on) - y(off)``;
* two-factor interaction: the difference of differences, ``[y(a on, b on) - y(a off, b on)] -
  [y(a on, b off) - y(a off, b off)]`` averaged over the third factor: how much the effect of
  ``a`` changes when ``b`` is added.

Voting's level "off" is the last iterate of the same run, which the evaluation records for the
primary score (mean AUROC / FPR95), ACC, ECE and NLL; for the energy score, whose last-iterate
value is not recorded, the other effects are measured on the weight averages alone and those
involving voting are "n/a". An effect exceeds seed noise when
``|mean| >= 2 std / sqrt(n)`` (:func:`~moon_jax.reproduction.stats.beyond_seed_noise`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from moon_jax.reproduction.formatting import pm
from moon_jax.reproduction.stats import PerRun, Stat, beyond_seed_noise, mean_std

#: The runs of each (MOON, CigL mask) cell, all weight-averaged.
CELLS = {(False, False): "averaged_rigl", (True, False): "moon_rigl",
         (False, True): "cigl_rigl", (True, True): "moon_cigl_rigl"}
#: (metric key, column name, decimals scale, digits, better direction: +1 higher, -1 lower).
METRICS = (("auroc/mean", "mean AUROC", 100.0, 2, 1), ("energy_auroc/mean", "energy AUROC", 100.0, 2, 1),
           ("fpr95/mean", "mean FPR95", 100.0, 2, -1), ("acc", "ACC", 100.0, 2, 1),
           ("ece", "ECE", 100.0, 2, -1), ("nll", "NLL", 1.0, 4, -1))
FACTORS = ("MOON loss + K+1 head", "CigL mask", "voting")

Cell = tuple[bool, bool, bool]  # (MOON, CigL, voting)


def _value(per_run: PerRun, cell: Cell, seed: int, metric: str) -> Optional[float]:
    """The metric of one cell at one seed: the run's weight average (voting on) or its last
    iterate (off); None when not recorded."""
    moon, cigl, voting = cell
    run = per_run.get((CELLS[(moon, cigl)], seed))
    if run is None:
        return None
    return run.get(metric if voting else f"last_{metric}")


def complete_seeds(per_run: PerRun) -> list[int]:
    """The seeds at which all four cells were run."""
    seeds = [{s for m, s in per_run if m == method} for method in CELLS.values()]
    return sorted(set.intersection(*seeds))


def _contrast(weights: dict[Cell, float]) -> Callable[[PerRun, int, str], Optional[float]]:
    """A linear contrast of the eight cells at one seed (None if a needed cell is missing)."""

    def at(per_run: PerRun, seed: int, metric: str) -> Optional[float]:
        values = {c: _value(per_run, c, seed, metric) for c in weights}
        if any(v is None for v in values.values()):
            return None
        return sum(w * values[c] for c, w in weights.items())

    return at


def _cells(votings=(False, True)):
    return [(m, c, v) for m in (False, True) for c in (False, True) for v in votings]


def _main_effect(factor: int, votings=(False, True)) -> dict[Cell, float]:
    share = 1.0 / (len(_cells(votings)) // 2)
    return {cell: (share if cell[factor] else -share) for cell in _cells(votings)}


def _interaction(a: int, b: int, votings=(False, True)) -> dict[Cell, float]:
    # difference of differences, averaged over the levels of the third factor taken
    share = 1.0 / (len(_cells(votings)) // 4)
    return {cell: share * (1 if cell[a] == cell[b] else -1) for cell in _cells(votings)}


_AVERAGE_ONLY = (True,)
#: (name, contrast over the eight cells, contrast over the weight averages alone or None): the
#: second serves metrics without a recorded last iterate (energy).
EFFECTS = (
    (FACTORS[0], _main_effect(0), _main_effect(0, _AVERAGE_ONLY)),
    (FACTORS[1], _main_effect(1), _main_effect(1, _AVERAGE_ONLY)),
    (FACTORS[2], _main_effect(2), None),
    (f"{FACTORS[0]} x {FACTORS[1]}", _interaction(0, 1), _interaction(0, 1, _AVERAGE_ONLY)),
    (f"{FACTORS[0]} x {FACTORS[2]}", _interaction(0, 2), None),
    (f"{FACTORS[1]} x {FACTORS[2]}", _interaction(1, 2), None),
)


def _per_seed(per_run: PerRun, weights: Optional[dict[Cell, float]], metric: str) -> list[float]:
    if weights is None:
        return []
    at = _contrast(weights)
    return [v for v in (at(per_run, s, metric) for s in complete_seeds(per_run)) if v is not None]


def effect(per_run: PerRun, contrasts: Sequence, metric: str) -> Optional[Stat]:
    """(mean, std, n seeds) of an effect's per-seed values (the first of ``contrasts`` that every
    complete seed can give), or None."""
    for weights in contrasts:
        values = _per_seed(per_run, weights, metric)
        if values:
            return (*mean_std(values), len(values))
    return None


def cell_table(per_run: PerRun) -> str:
    """Markdown: the eight cells (mean ± std over the complete seeds) for every metric."""
    seeds = complete_seeds(per_run)
    header = "| MOON loss + K+1 | CigL mask | model | " + " | ".join(m[1] for m in METRICS) + " |"
    lines = [header, "| --- | --- | --- |" + " ---: |" * len(METRICS)]
    for moon, cigl, voting in sorted(_cells(), key=lambda c: (c[0], c[1], not c[2])):
        cells = []
        for key, _, scale, digits, _ in METRICS:
            values = [_value(per_run, (moon, cigl, voting), s, key) for s in seeds]
            values = [v for v in values if v is not None]
            cells.append(pm((*mean_std(values), len(values)), scale, digits) if values else "n/a")
        lines.append(f"| {'on' if moon else 'off'} | {'on' if cigl else 'off'} | "
                     f"{'weight average' if voting else 'last iterate'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def effect_table(per_run: PerRun) -> str:
    """Markdown: every main effect and interaction for every metric, mean ± std over seeds, with
    ``*`` where it exceeds seed noise."""
    lines = ["| effect | " + " | ".join(m[1] for m in METRICS) + " |", "| --- |" + " ---: |" * len(METRICS)]
    for name, *contrasts in EFFECTS:
        cells = []
        for key, _, scale, digits, _ in METRICS:
            stat = effect(per_run, contrasts, key)
            cells.append("n/a" if stat is None else pm(stat, scale, digits) + (" *" if beyond_seed_noise(stat) else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(per_run: PerRun) -> list[str]:
    """One line per metric: which effects exceed seed noise, and in which direction."""
    lines = []
    for key, column, scale, digits, better in METRICS:
        found = []
        for name, *contrasts in EFFECTS:
            stat = effect(per_run, contrasts, key)
            if stat is not None and beyond_seed_noise(stat):
                word = "better" if better * stat[0] > 0 else "worse"
                found.append(f"{name} ({pm(stat, scale, digits)}, {word})")
        lines.append(f"- {column}: " + ("; ".join(found) if found else "no effect exceeds seed noise") + ".")
    return lines


def factorial_section(per_run: PerRun) -> str:
    """The report's factorial section, or "" when no seed has all four cells."""
    seeds = complete_seeds(per_run)
    if not seeds:
        return ""
    return "\n\n".join([
        "## The factorial: MOON's loss x CigL's mask x voting",
        f"Runs: {', '.join(CELLS.values())} at seeds {', '.join(map(str, seeds))}; every run is weight-averaged, "
        "and its last iterate is the voting factor's \"off\" level. Percent except NLL; mean ± std over seeds.",
        cell_table(per_run),
        "Effects as paired differences over seeds (on - off; an interaction is the change in the first factor's "
        "effect when the second is on, averaged over the third factor). `*`: beyond seed noise "
        "(|mean| >= 2 std / sqrt(n)). Energy has no recorded last iterate: its effects are measured on the weight "
        "averages alone, and those involving voting are n/a.",
        effect_table(per_run),
        "Which factor carries which effect:\n\n" + "\n".join(verdicts(per_run)),
    ])
