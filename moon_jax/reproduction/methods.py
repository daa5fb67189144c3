"""The methods of the comparison: each one's ``--config.*`` switches and table label, the groups
``--methods`` names, and the paired comparisons the report makes besides the paper's main claims."""
from __future__ import annotations

from typing import NamedTuple

from moon_jax.sparse.algorithms import PRUNING_METHODS
from moon_jax.sparse.structure import parse_structure


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

#: The released MOON code's drop-fraction cosine length in iterations (its ``end_when = 70``).
RELEASED_COSINE_STEPS = 70
_AS_RELEASED = ("--config.moon.head=reference_k", f"--config.moon.dropconnect_rate={CIGL_DROP_RATE}",
                "--config.moon.averaging_trigger=reference",
                f"--config.sparse.drop_fraction_cosine_steps={RELEASED_COSINE_STEPS}",
                "--config.sparse.drop_count_rounding=ceil")

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
    # as the released reference code ran it: K outputs (the last class "unknown"), CigL's mask,
    # near-static masks (the drop fraction's cosine over 70 iterations, drop counts rounded up),
    # the averaging trigger of its trainer; with and without MOON's loss
    "released_moon_rigl": Method("MOON + {sparse} as released", "rigl", _MOON + _AS_RELEASED),
    "released_cigl_rigl": Method("CigL + {sparse} as released (no MOON loss)", "rigl",
                                 _MOON + _AS_RELEASED + ("--config.moon.loss_weighting=none",)),
    # the unknown output given targets: mixtures of two classes labelled unknown (after PROSER)
    "moon_rigl_placeholders": Method("MOON + {sparse} + placeholders", "rigl",
                                     _MOON + ("--config.moon.placeholders=True",)),
    # the factorial's fourth cell: weight averaging alone (K outputs, cross-entropy, no random mask)
    "averaged_rigl": Method("{sparse} + weight averaging", "rigl", _MOON + (
        "--config.moon.head=none", "--config.moon.loss_weighting=none")),
}
#: Pruning from dense and its variants (``moon_jax.sparse.ALGORITHMS``), each with and without MOON.
METHODS.update({name: Method("{sparse}", name, _NO_MOON) for name in PRUNING_METHODS})
METHODS.update({f"moon_{name}": Method("MOON + {sparse}", name, _MOON) for name in PRUNING_METHODS})
#: Each sparse algorithm alone, without MOON (the paper's first); ``moon_<name>`` is the same with MOON.
SOLO_SPARSE_METHODS = ("rigl", "set", "static") + tuple(PRUNING_METHODS)
PAPER_METHODS = ("dense", "rigl", "moon_rigl", "set", "moon_set")
ABLATION_METHODS = ("moon_rigl_no_loss", "moon_rigl_fixed_alpha", "moon_rigl_no_voting")
BASELINE_METHODS = ("mixup_rigl", "cigl_rigl")
#: MOON's loss and K+1 head (on / off) x CigL's random mask (on / off), every run weight-averaged,
#: so that each also gives its last iterate (issue: where the reference's gains come from).
FACTORIAL_METHODS = ("averaged_rigl", "moon_rigl", "cigl_rigl", "moon_cigl_rigl")
#: The released code's method with and without MOON's loss.
RELEASED_METHODS = ("released_moon_rigl", "released_cigl_rigl")
#: The groups ``--methods`` names; ``all`` lists the paper's methods first.
METHOD_GROUPS = {
    "paper": PAPER_METHODS,
    "ablations": ABLATION_METHODS,
    "baselines": BASELINE_METHODS,
    "factorial": FACTORIAL_METHODS,
    "released": RELEASED_METHODS,
    "pruning": PRUNING_METHODS + tuple(f"moon_{name}" for name in PRUNING_METHODS),
    "all": tuple(PAPER_METHODS) + tuple(ABLATION_METHODS) + tuple(BASELINE_METHODS) + tuple(
        m for m in METHODS if m not in PAPER_METHODS + ABLATION_METHODS + BASELINE_METHODS),
}
SPARSE_NAMES = {"static": "static", "set": "SET", "rigl": "RigL", "gmp": "GMP", "saliency": "saliency pruning",
                "random_pruning": "random pruning", "global_magnitude": "global magnitude pruning",
                "global_saliency": "global saliency pruning", "ste_magnitude": "STE magnitude pruning",
                "ste_random": "STE random pruning"}
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
    ("released_moon_rigl", "released_cigl_rigl", "(MOON's loss within the released code's method)"),
    ("moon_rigl_placeholders", "moon_rigl", "(placeholders give the unknown output targets)"),
)


def sparsity_level(sparse) -> str:
    """How sparse a run's masks are (``sparse``: its config's ``sparse`` section), as the tables
    name it after the algorithm: ``"90%"``; with a structure ``"2:4 (ERK 90% plan)"`` (an N:M
    layer is exactly N/M dense, the plan only says which layers are sparse: see
    :mod:`moon_jax.sparse.structure`), ``"90% in 4x4 blocks"`` or ``"90% by output channel"``."""
    shape = parse_structure(sparse.structure)
    percent = f"{100 * sparse.sparsity:g}%"
    if shape.kind == "nm":
        plan = sparse.distribution.upper() if sparse.distribution in ("erk", "er") else sparse.distribution
        return f"{shape.n}:{shape.m} ({plan} {percent} plan)"
    if shape.kind == "block":
        return f"{percent} in {shape.block[0]}x{shape.block[1]} blocks"
    if shape.kind == "channel":
        return f"{percent} by output channel"
    return percent


def method_label(method: str, level: str) -> str:
    """``"MOON + RigL 90%"`` for ``"moon_rigl"`` at level ``"90%"`` (:func:`sparsity_level`);
    ``"dense"`` for ``"dense"``."""
    spec = METHODS[method]
    base = "dense" if spec.sparse_method == "dense" else f"{SPARSE_NAMES[spec.sparse_method]} {level}"
    return spec.label.format(sparse=base)


def expand_methods(text: str) -> tuple[list[str], dict[str, list[int]]]:
    """``(methods, method_seeds)`` from a comma-separated list of method and group names, each
    optionally with its own seeds after ``@`` (``ablations@0``, ``rigl@0+1``); in order, once each.
    A method named again with other seeds gets those too (``rigl@0,rigl@1`` is ``rigl@0+1``).
    Raises ValueError for seeds that are not integers."""
    methods, method_seeds = [], {}
    for item in (n for n in text.split(",") if n):
        name, _, seeds = item.partition("@")
        for method in METHOD_GROUPS.get(name, (name,)):
            if method not in methods:
                methods.append(method)
            for seed in (int(s) for s in seeds.split("+") if s):
                if seed not in method_seeds.setdefault(method, []):
                    method_seeds[method].append(seed)
    return methods, method_seeds
