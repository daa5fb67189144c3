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

Runs of one MOON level only (e.g. ``averaged_rigl`` and ``cigl_rigl``, the loss off) give the
two-factor design CigL's mask x voting at that level (:func:`design`): its two main effects and
their interaction, by the same formulas with the MOON factor held fixed.
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
BOTH_LEVELS = (False, True)

Cell = tuple[bool, bool, bool]  # (MOON, CigL, voting)


def _value(per_run: PerRun, cell: Cell, seed: int, metric: str) -> Optional[float]:
    """The metric of one cell at one seed: the run's weight average (voting on) or its last
    iterate (off); None when not recorded."""
    moon, cigl, voting = cell
    run = per_run.get((CELLS[(moon, cigl)], seed))
    if run is None:
        return None
    return run.get(metric if voting else f"last_{metric}")


def complete_seeds(per_run: PerRun, moons: Sequence[bool] = BOTH_LEVELS) -> list[int]:
    """The seeds at which every cell of the MOON levels ``moons`` was run (all four by default)."""
    seeds = [{s for m, s in per_run if m == CELLS[(moon, cigl)]} for moon in moons for cigl in BOTH_LEVELS]
    return sorted(set.intersection(*seeds))


def design(per_run: PerRun) -> tuple[bool, ...]:
    """The MOON levels the factorial can use: both when some seed has all four cells, else the
    one level (loss off, then on) at which some seed has both CigL cells; () when neither."""
    for moons in (BOTH_LEVELS, (False,), (True,)):
        if complete_seeds(per_run, moons):
            return moons
    return ()


def _contrast(weights: dict[Cell, float]) -> Callable[[PerRun, int, str], Optional[float]]:
    """A linear contrast of the eight cells at one seed (None if a needed cell is missing)."""

    def at(per_run: PerRun, seed: int, metric: str) -> Optional[float]:
        values = {c: _value(per_run, c, seed, metric) for c in weights}
        if any(v is None for v in values.values()):
            return None
        return sum(w * values[c] for c, w in weights.items())

    return at


def _cells(votings=BOTH_LEVELS, moons=BOTH_LEVELS):
    return [(m, c, v) for m in moons for c in BOTH_LEVELS for v in votings]


def _main_effect(factor: int, votings=BOTH_LEVELS, moons=BOTH_LEVELS) -> dict[Cell, float]:
    cells = _cells(votings, moons)
    share = 1.0 / (len(cells) // 2)
    return {cell: (share if cell[factor] else -share) for cell in cells}


def _interaction(a: int, b: int, votings=BOTH_LEVELS, moons=BOTH_LEVELS) -> dict[Cell, float]:
    # difference of differences, averaged over the levels of the other factors taken
    cells = _cells(votings, moons)
    share = 1.0 / (len(cells) // 4)
    return {cell: share * (1 if cell[a] == cell[b] else -1) for cell in cells}


_AVERAGE_ONLY = (True,)


def effects(moons: Sequence[bool] = BOTH_LEVELS) -> tuple:
    """(name, contrast over the cells, contrast over the weight averages alone or None) for each
    effect the MOON levels ``moons`` allow; the second contrast serves metrics without a recorded
    last iterate (energy). With one MOON level: CigL's mask, voting and their interaction."""
    def one(factor):
        return _main_effect(factor, moons=moons), _main_effect(factor, _AVERAGE_ONLY, moons)

    cigl_x_voting = (f"{FACTORS[1]} x {FACTORS[2]}", _interaction(1, 2, moons=moons), None)
    if len(moons) == 1:
        return ((FACTORS[1], *one(1)), (FACTORS[2], _main_effect(2, moons=moons), None), cigl_x_voting)
    return (
        (FACTORS[0], *one(0)),
        (FACTORS[1], *one(1)),
        (FACTORS[2], _main_effect(2), None),
        (f"{FACTORS[0]} x {FACTORS[1]}", _interaction(0, 1), _interaction(0, 1, _AVERAGE_ONLY)),
        (f"{FACTORS[0]} x {FACTORS[2]}", _interaction(0, 2), None),
        cigl_x_voting,
    )


#: The full design's effects (all four cells).
EFFECTS = effects()


def _per_seed(per_run: PerRun, weights: Optional[dict[Cell, float]], metric: str) -> list[float]:
    if weights is None:
        return []
    at = _contrast(weights)
    seeds = complete_seeds(per_run, sorted({cell[0] for cell in weights}))
    return [v for v in (at(per_run, s, metric) for s in seeds) if v is not None]


def effect(per_run: PerRun, contrasts: Sequence, metric: str) -> Optional[Stat]:
    """(mean, std, n seeds) of an effect's per-seed values (the first of ``contrasts`` that every
    complete seed can give), or None."""
    for weights in contrasts:
        values = _per_seed(per_run, weights, metric)
        if values:
            return (*mean_std(values), len(values))
    return None


def cell_table(per_run: PerRun) -> str:
    """Markdown: the cells of the design (eight, or four at one MOON level; mean ± std over the
    complete seeds) for every metric."""
    moons = design(per_run)
    seeds = complete_seeds(per_run, moons)
    header = "| MOON loss + K+1 | CigL mask | model | " + " | ".join(m[1] for m in METRICS) + " |"
    lines = [header, "| --- | --- | --- |" + " ---: |" * len(METRICS)]
    for moon, cigl, voting in sorted(_cells(moons=moons), key=lambda c: (c[0], c[1], not c[2])):
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
    for name, *contrasts in effects(design(per_run)):
        cells = []
        for key, _, scale, digits, _ in METRICS:
            stat = effect(per_run, contrasts, key)
            cells.append("n/a" if stat is None else pm(stat, scale, digits) + (" *" if beyond_seed_noise(stat) else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(per_run: PerRun) -> list[str]:
    """One line per metric: which effects exceed seed noise, and in which direction."""
    lines, measured = [], effects(design(per_run))
    for key, column, scale, digits, better in METRICS:
        found = []
        for name, *contrasts in measured:
            stat = effect(per_run, contrasts, key)
            if stat is not None and beyond_seed_noise(stat):
                word = "better" if better * stat[0] > 0 else "worse"
                found.append(f"{name} ({pm(stat, scale, digits)}, {word})")
        lines.append(f"- {column}: " + ("; ".join(found) if found else "no effect exceeds seed noise") + ".")
    return lines


def factorial_section(per_run: PerRun) -> str:
    """The report's factorial section: the three-factor design when some seed has all four cells,
    else CigL's mask x voting at the one MOON level whose two cells some seed has; "" when none."""
    moons = design(per_run)
    if not moons:
        return ""
    seeds = complete_seeds(per_run, moons)
    title = ("The factorial: MOON's loss x CigL's mask x voting" if len(moons) == 2 else
             f"The factorial: CigL's mask x voting, MOON's loss {'on' if moons[0] else 'off'}")
    runs = [method for (moon, _), method in CELLS.items() if moon in moons]
    return "\n\n".join([
        f"## {title}",
        f"Runs: {', '.join(runs)} at seeds {', '.join(map(str, seeds))}; every run is weight-averaged, "
        "and its last iterate is the voting factor's \"off\" level. Percent except NLL; mean ± std over seeds.",
        cell_table(per_run),
        "Effects as paired differences over seeds (on - off; an interaction is the change in the first factor's "
        "effect when the second is on, averaged over the third factor if there is one). `*`: beyond seed noise "
        "(|mean| >= 2 std / sqrt(n)). Energy has no recorded last iterate: its effects are measured on the weight "
        "averages alone, and those involving voting are n/a.",
        effect_table(per_run),
        "Which factor carries which effect:\n\n" + "\n".join(verdicts(per_run)),
    ])
