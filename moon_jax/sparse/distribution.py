"""Layer-wise sparsity: how a global sparsity target is shared among layers.

Three distributions (RigL, Evci et al. 2020, section 3 "Sparsity distribution"):

* ``uniform``: every sparse layer has the global density ``1 - s``.
* ``er`` (Erdos-Renyi, Mocanu et al. 2018): density of layer l proportional to
  ``(n_in + n_out) / (n_in * n_out)`` (for a conv kernel ``(kh, kw, n_in, n_out)`` the kernel
  dimensions are ignored).
* ``erk`` (Erdos-Renyi-Kernel): density proportional to ``sum(shape) / prod(shape)``, raised to
  ``erk_power_scale`` (1 by default).

For ``er``/``erk`` a global factor epsilon is solved so that the layers together keep
``(1 - s) * N`` weights; a layer whose density ``epsilon * raw_l`` would exceed 1 is made dense
and epsilon is re-solved over the others, until no layer exceeds 1 (epsilon only grows in that
loop, so making every offending layer dense at once gives the same result as one at a time).

Unlike the reference code (an i.i.d. Bernoulli draw per weight, exact only in expectation),
every layer gets an *exact* integer count of nonzeros: the real-valued counts
``density_l * size_l`` are floored and the remaining weights are handed out by largest
remainder, so the total is exactly ``round((1 - s) * N)``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

DISTRIBUTIONS = ("uniform", "er", "erk")


def _raw_score(shape: tuple[int, ...], distribution: str, power: float) -> float:
    if distribution == "er":
        n_in, n_out = shape[-2], shape[-1]
        return ((n_in + n_out) / (n_in * n_out)) ** power
    return (sum(shape) / math.prod(shape)) ** power


def layer_densities(
    shapes: Mapping[str, tuple[int, ...]],
    sparsity: float,
    distribution: str = "erk",
    erk_power_scale: float = 1.0,
) -> dict[str, float]:
    """Real-valued density per layer for a global ``sparsity`` over the given layers."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown sparsity distribution {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}"
        )
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    density = 1.0 - sparsity
    if distribution == "uniform" or sparsity == 0.0:
        return {name: density for name in shapes}

    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: _raw_score(shape, distribution, erk_power_scale) for name, shape in shapes.items()}
    dense: set[str] = set()
    epsilon = 0.0
    while True:
        sparse_names = [n for n in shapes if n not in dense]
        if not sparse_names:
            break
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in sparse_names)
        epsilon = budget / divisor
        overflow = {n for n in sparse_names if epsilon * raw[n] > 1.0}
        if not overflow:
            break
        dense |= overflow
    return {n: 1.0 if n in dense else epsilon * raw[n] for n in shapes}


def exact_counts(densities: Mapping[str, float], sizes: Mapping[str, int], target_total: int) -> dict[str, int]:
    """Integer counts close to ``density * size`` that sum exactly to ``target_total``.

    Floors every real-valued count, then adds one weight to the layers with the largest
    fractional parts (ties: first layer first) until the total is reached; never exceeds a
    layer's size.
    """
    ideal = {n: min(densities[n], 1.0) * sizes[n] for n in sizes}
    counts = {n: min(int(math.floor(ideal[n] + 1e-9)), sizes[n]) for n in sizes}
    missing = target_total - sum(counts.values())
    order = sorted(sizes, key=lambda n: -(ideal[n] - math.floor(ideal[n] + 1e-9)))
    while missing > 0:
        progressed = False
        for name in order:
            if missing == 0:
                break
            if counts[name] < sizes[name]:
                counts[name] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    for name in reversed(order):
        if missing >= 0:
            break
        if counts[name] > 0:
            counts[name] -= 1
            missing += 1
    return counts


@dataclasses.dataclass(frozen=True)
class SparsityPlan:
    """Exact per-layer nonzero counts for the sparsifiable layers of one model.

    Attributes:
      shapes: layer name -> kernel shape, in parameter-tree order.
      counts: layer name -> exact number of nonzero (active) weights.
      densities: layer name -> the real-valued density the distribution asked for.
      target_sparsity: the requested global sparsity over these layers.
      distribution: ``uniform``, ``er`` or ``erk``.
    """

    shapes: Mapping[str, tuple[int, ...]]
    counts: Mapping[str, int]
    densities: Mapping[str, float]
    target_sparsity: float
    distribution: str

    @property
    def sizes(self) -> dict[str, int]:
        return {n: math.prod(s) for n, s in self.shapes.items()}

    @property
    def total_size(self) -> int:
        return sum(self.sizes.values())

    @property
    def total_nonzeros(self) -> int:
        return sum(self.counts.values())

    @property
    def achieved_sparsity(self) -> float:
        """Exact global sparsity over the sparsifiable layers: 1 - nonzeros / size."""
        total = self.total_size
        return 1.0 - self.total_nonzeros / total if total else 0.0

    def is_dense(self, name: str) -> bool:
        """True when the distribution kept this layer fully dense (it needs no mask)."""
        return self.counts[name] == self.sizes[name]

    def table(self) -> str:
        """A Markdown table of per-layer shapes, counts and densities."""
        lines = ["| layer | shape | nonzeros | size | density |", "| --- | --- | ---: | ---: | ---: |"]
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            lines.append(
                f"| {name} | {'x'.join(map(str, shape))} | {self.counts[name]} | {size} | "
                f"{self.counts[name] / size:.4f} |"
            )
        lines.append(
            f"| total | | {self.total_nonzeros} | {self.total_size} | "
            f"{1.0 - self.achieved_sparsity:.6f} |"
        )
        return "\n".join(lines)


def plan_sparsity(
    shapes: Mapping[str, tuple[int, ...]],
    sparsity: float,
    distribution: str = "erk",
    erk_power_scale: float = 1.0,
) -> SparsityPlan:
    """Exact per-layer nonzero counts hitting ``round((1 - sparsity) * N)`` in total."""
    densities = layer_densities(shapes, sparsity, distribution, erk_power_scale)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    target_total = int(round((1.0 - sparsity) * sum(sizes.values())))
    counts = exact_counts(densities, sizes, target_total)
    return SparsityPlan(
        shapes=dict(shapes),
        counts=counts,
        densities=densities,
        target_sparsity=sparsity,
        distribution=distribution,
    )
