"""The factorial's effects (MOON's loss x CigL's mask x voting) as paired differences over seeds."""
import itertools

import pytest

from moon_jax.reproduction import factorial
from moon_jax.reproduction.stats import beyond_seed_noise

METRIC_KEYS = ("auroc/mean", "fpr95/mean", "acc", "ece", "nll")


def synthetic_runs(noise=None):
    """Four methods x 3 seeds whose metric is ``0.6 + 0.02 m + 0.01 c + 0.005 v + 0.004 m c``
    plus a per-seed offset shared by every cell (and ``noise[(m, c, v, seed)]`` if given)."""
    per_run = {}
    for (moon, cigl), method in factorial.CELLS.items():
        for seed in (0, 1, 2):
            run = {}
            for voting in (False, True):
                value = 0.6 + 0.02 * moon + 0.01 * cigl + 0.005 * voting + 0.004 * moon * cigl + 0.03 * seed
                value += (noise or {}).get((moon, cigl, voting, seed), 0.0)
                for key in METRIC_KEYS:
                    run[key if voting else f"last_{key}"] = value
            run["energy_auroc/mean"] = 0.5
            per_run[(method, seed)] = run
    return per_run


def effects_of(per_run, metric="auroc/mean"):
    return {name: factorial.effect(per_run, contrasts, metric) for name, *contrasts in factorial.EFFECTS}


def test_main_effects_and_interactions_recover_the_model():
    effects = effects_of(synthetic_runs())
    expected = {"MOON loss + K+1 head": 0.022, "CigL mask": 0.012, "voting": 0.005,
                "MOON loss + K+1 head x CigL mask": 0.004, "MOON loss + K+1 head x voting": 0.0,
                "CigL mask x voting": 0.0}
    for name, value in expected.items():
        mean, std, n = effects[name]
        assert mean == pytest.approx(value, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12) and n == 3
    # the seed offset cancels in every paired difference: nonzero effects exceed seed noise
    assert beyond_seed_noise(effects["voting"]) and not beyond_seed_noise(effects["CigL mask x voting"])


def test_noise_larger_than_an_effect_is_reported_as_such():
    noise = {(m, c, v, s): 0.02 * ((-1) ** s) * (1 if m else -1)
             for m, c, v, s in itertools.product((False, True), (False, True), (False, True), (0, 1, 2))}
    effects = effects_of(synthetic_runs(noise))
    mean, std, n = effects["MOON loss + K+1 head"]
    assert mean == pytest.approx(0.022 + 0.04 / 3, abs=1e-9) and std > 0.03
    assert not beyond_seed_noise(effects["MOON loss + K+1 head"])
    assert beyond_seed_noise(effects["CigL mask"])
    verdict = {line.split(":")[0]: line for line in factorial.verdicts(synthetic_runs(noise))}
    assert "CigL mask (" in verdict["- mean AUROC"] and "MOON loss + K+1 head (" not in verdict["- mean AUROC"]
    assert "worse" in verdict["- mean FPR95"]  # FPR95 and ECE: higher is worse


def test_energy_has_no_last_iterate_so_its_effects_use_the_weight_averages():
    per_run = synthetic_runs()
    for run in per_run.values():
        run["energy_auroc/mean"] = run["auroc/mean"]  # weight average only, as eval.json records
    effects = effects_of(per_run, "energy_auroc/mean")
    assert effects["voting"] is None and effects["CigL mask x voting"] is None
    assert effects["MOON loss + K+1 head"][0] == pytest.approx(0.022, abs=1e-12)  # 0.02 + 0.004 x mean(c)
    assert effects["MOON loss + K+1 head x CigL mask"][0] == pytest.approx(0.004, abs=1e-12)
    assert "n/a" in factorial.effect_table(per_run)


def test_section_needs_a_seed_with_all_four_cells():
    per_run = synthetic_runs()
    assert factorial.complete_seeds(per_run) == [0, 1, 2]
    del per_run[("cigl_rigl", 2)]
    assert factorial.complete_seeds(per_run) == [0, 1]
    section = factorial.factorial_section(per_run)
    assert "seeds 0, 1" in section and section.count("| on | on |") == 2
    # without a seed that has all four cells: the two-factor design at the MOON level that has both
    without_moon_rigl = {k: v for k, v in per_run.items() if k[0] != "moon_rigl"}
    assert factorial.design(without_moon_rigl) == (False,)
    assert "CigL's mask x voting, MOON's loss off" in factorial.factorial_section(without_moon_rigl)
    assert factorial.factorial_section({k: v for k, v in without_moon_rigl.items() if k[0] != "averaged_rigl"}) == ""


def test_one_moon_level_gives_cigl_voting_and_their_interaction():
    """Part 4's runs (averaged_rigl and cigl_rigl, the loss off): the two-factor design recovers
    the model's CigL and voting effects and their interaction, and leaves MOON's effects out."""
    noise = {(False, True, v, s): 0.003 * s for v in (False, True) for s in (0, 1, 2)}  # CigL x voting 0
    per_run = {k: v for k, v in synthetic_runs(noise).items() if k[0] in ("averaged_rigl", "cigl_rigl")}
    for (method, seed), run in per_run.items():  # an interaction: voting adds 0.006 more under CigL's mask
        if method == "cigl_rigl":
            run["auroc/mean"] += 0.006
    assert factorial.design(per_run) == (False,)
    found = {name: factorial.effect(per_run, contrasts, "auroc/mean") for name, *contrasts in factorial.effects((False,))}
    assert set(found) == {"CigL mask", "voting", "CigL mask x voting"}
    assert found["CigL mask"][0] == pytest.approx(0.01 + 0.003 + 0.003, abs=1e-12)  # + mean noise, + half the 0.006
    assert found["voting"][0] == pytest.approx(0.005 + 0.003, abs=1e-12)
    assert found["CigL mask x voting"][0] == pytest.approx(0.006, abs=1e-12) and found["voting"][2] == 3
    section = factorial.factorial_section(per_run)
    assert "Runs: averaged_rigl, cigl_rigl at seeds 0, 1, 2" in section
    assert section.count("| off | on |") == 2 and "| on |" not in section.replace("| off | on |", "")
    assert "| MOON loss + K+1 head" not in section.split("| effect |")[1]  # no MOON effects in the table
