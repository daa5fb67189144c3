"""The reproduction program (reproduce.py) and its package (moon_jax.reproduction): run
planning, config checks, aggregation over seeds, the paper's claims as paired differences, and
one real end-to-end run on digits."""
import json
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import REPO
from moon_jax import reproduction as rp
from moon_jax.reproduction.claims import _noise_note
from moon_jax.reproduction.driver import default_title, run_results, train_runs
from moon_jax.evaluation.evaluate import FORMAT_VERSION
from moon_jax.reproduction.records import RECORD_FILES, holds_records_only, recorded_results
from moon_jax.training.checkpoint import CheckpointError
from moon_jax.reproduction.formatting import pm
from moon_jax.training.config import ConfigError

DEFAULT_CONFIG = str(REPO / "configs" / "default.py")


def fake_results(acc, ece, nll, aurocs, fprs, primary="msp"):
    """An eval.json-shaped dict with the given numbers (fractions) for two OOD sets."""
    ood = {name: {"auroc": a, "fpr95": f} for name, a, f in zip(("near_set", "far_set"), aurocs, fprs)}
    ood["mean"] = {"auroc": sum(aurocs) / 2, "fpr95": sum(fprs) / 2}
    return {"classification": {"acc": acc, "ece": ece, "nll": nll}, "primary_score": primary, "ood": {primary: ood},
            "num_test": 100}


def full_fake_results(acc, train_acc, aurocs, noise_auroc, energy_aurocs, p_unknown=None, last=None):
    """An eval.json as evaluate_state now writes it: a noise set, energy, train accuracy, and for
    MOON runs p(unknown) and the last iterate."""
    sets = ("tin_resize", "mnist", "gaussian_noise")
    primary = "moon_msp" if p_unknown else "msp"

    def per_set(values):
        table = {n: {"auroc": a, "fpr95": 1 - a} for n, a in zip(sets, values)}
        table["mean"] = {"auroc": sum(values) / 3, "fpr95": 1 - sum(values) / 3}  # eval.py's mean has the noise
        return table

    results = {
        "classification": {"acc": acc, "ece": 0.05, "nll": 0.5}, "primary_score": primary, "num_test": 100,
        "ood": {primary: per_set((*aurocs, noise_auroc)), "energy": per_set((*energy_aurocs, 0.99))},
        "ood_sizes": {n: 10 for n in sets}, "train_subset_classification": {"acc": train_acc, "num_examples": 50},
    }
    if p_unknown:
        results["unknown_probability"] = {"id": p_unknown[0], "ood": dict(zip(sets, p_unknown[1:]))}
    if last:
        results["last_iterate"] = {"classification": {"acc": last[0], "ece": 0.1, "nll": 0.6}, "score": primary,
                                   "ood": per_set((*last[1:], 0.5))}
    return results


def test_plan_runs_builds_one_command_per_method_and_seed(tmp_path):
    specs = rp.plan_runs("configs/x.py", ["dense", "moon_rigl"], [0, 2], tmp_path, ["--config.model.width=8"],
                         python="py", train_script="train.py")
    assert [(s.method, s.seed) for s in specs] == [("dense", 0), ("moon_rigl", 0), ("dense", 2), ("moon_rigl", 2)]
    assert specs[3].workdir == tmp_path / "moon_rigl_s2"
    assert specs[3].command == (
        "py", "train.py", "--config=configs/x.py", f"--workdir={tmp_path / 'moon_rigl_s2'}", "--config.model.width=8",
        "--config.seed=2", "--config.sparse.method=rigl", "--config.moon.enabled=True",
    )
    assert specs[0].command[-2:] == ("--config.sparse.method=dense", "--config.moon.enabled=False")
    quiet = rp.plan_runs("configs/x.py", ["dense"], [0], tmp_path, python="py", plots=False)[0]
    assert quiet.command == specs[0].command[:4] + specs[0].command[5:] + ("--noplots",)
    with pytest.raises(ValueError, match="unknown method.*rigel"):
        rp.plan_runs("c.py", ["rigel"], [0], tmp_path)
    with pytest.raises(ValueError, match="--config.a.b=value"):
        rp.plan_runs("c.py", ["rigl"], [0], tmp_path, ["--seed=3"])


def test_a_run_is_complete_only_with_its_evaluation_a_clean_exit_and_the_same_config(tmp_path):
    spec, other_seed = rp.plan_runs(DEFAULT_CONFIG, ["rigl"], [0, 1], tmp_path)
    spec.workdir.mkdir(parents=True)
    assert not rp.run_is_complete(spec)  # nothing there
    (spec.workdir / "config.json").write_text(rp.spec_config(spec).to_json_best_effort(indent=2) + "\n")
    rp.record_wall_time(rp.RunOutcome(spec, 0, 10.0))
    assert not rp.run_is_complete(spec)  # trained, but no eval.json
    (spec.workdir / "eval.json").write_text("{}")
    assert rp.run_is_complete(spec)
    rp.record_wall_time(rp.RunOutcome(spec, 143, 5.0))  # a later invocation was stopped
    assert not rp.run_is_complete(spec)
    rp.record_wall_time(rp.RunOutcome(spec, 0, 5.0))
    assert rp.run_is_complete(spec)
    # the same workdir asked to hold another config (here: another seed) is not this run
    assert not rp.run_is_complete(other_seed._replace(workdir=spec.workdir))


def test_a_finished_run_is_kept_as_records_the_moment_it_ends_and_a_failed_one_is_not(tmp_path):
    """train_runs(records=...) copies a run's small files as soon as it exits 0 (a machine lost
    afterwards loses no finished run); a failed run leaves no records, and a workdir holding only
    records gives its eval.json as recorded, or one error line when that is of an older format."""
    records = tmp_path / "records"
    planned, bad = rp.plan_runs(DEFAULT_CONFIG, ["rigl", "moon_rigl"], [0], tmp_path / "runs")
    write = f"import json, sys; open(sys.argv[1], 'w').write(json.dumps({{'format_version': {FORMAT_VERSION}, 'x': 1}}))"
    good = planned._replace(command=(sys.executable, "-c", write, str(planned.workdir / "eval.json")))
    bad = bad._replace(command=(sys.executable, "-c", "raise SystemExit(3)"))
    seen = []
    outcomes = train_runs([good, bad], parallel=1, eval_only=False, records=str(records),
                          log=lambda line: seen.append((line, sorted(p.name for p in records.glob("*")))))
    assert [o.returncode for o in outcomes] == [0, 3]
    assert seen[2][0].startswith("started moon_rigl seed 0") and seen[2][1] == ["rigl_s0"]  # kept before the next run began
    assert sorted(p.name for p in (records / "rigl_s0").iterdir()) == sorted({"eval.json", "train.log", "wall_time.jsonl"})
    assert not (records / "moon_rigl_s0").exists()
    kept = records / "rigl_s0"
    assert not holds_records_only(kept)  # no config.json: not a run's records
    (kept / "config.json").write_text(rp.spec_config(planned).to_json_best_effort(indent=2) + "\n")
    assert holds_records_only(kept) and run_results(kept, plots=False) == {"format_version": FORMAT_VERSION, "x": 1}
    assert rp.run_is_complete(planned._replace(workdir=kept))  # counts as finished without a checkpoint
    (kept / "eval.json").write_text(json.dumps({"format_version": FORMAT_VERSION - 1}))
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION - 1}, not format {FORMAT_VERSION}.*train the run again"):
        recorded_results(kept)
    assert set(RECORD_FILES) == {"config.json", "eval.json", "train.log", "wall_time.jsonl"}


def test_concurrent_runs_share_the_accelerator_memory():
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in rp.child_environment(1, {})
    assert rp.child_environment(4, {})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
    assert rp.child_environment(4, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"


def test_spec_config_applies_overrides_like_train_py(tmp_path):
    spec = rp.plan_runs(DEFAULT_CONFIG, ["set"], [3], tmp_path, ["--config.train.epochs=7"])[0]
    config = rp.spec_config(spec)
    assert (config.seed, config.train.epochs, config.sparse.method, config.moon.enabled) == (3, 7, "set", False)
    assert config.data.dataset == "digits"


def test_check_specs_names_the_run_and_the_field_before_anything_runs(tmp_path):
    # 12 epochs with 3 averaging epochs: mask updates must end before 75%, the default job's
    # end_fraction is 0.75, so only the MOON run (which averages) is invalid.
    overrides = ["--config.train.epochs=12", "--config.moon.averaging_epochs=3"]
    rp.check_specs(rp.plan_runs(DEFAULT_CONFIG, ["rigl"], [0], tmp_path, overrides))
    with pytest.raises(ConfigError, match=r"run moon_rigl seed 0: config\.sparse\.end_fraction = 0\.75"):
        rp.check_specs(rp.plan_runs(DEFAULT_CONFIG, ["rigl", "moon_rigl"], [0], tmp_path, overrides))
    with pytest.raises(ConfigError, match=r"run dense seed 1: .*epochz.*Did you mean \"epochs\""):
        rp.check_specs(rp.plan_runs(DEFAULT_CONFIG, ["dense"], [1], tmp_path, ["--config.train.epochz=3"]))
    assert not any(tmp_path.iterdir())


def test_aggregate_and_paired_differences():
    per_run = {
        ("rigl", 0): {"acc": 0.90, "auroc/mean": 0.80},
        ("rigl", 1): {"acc": 0.92, "auroc/mean": 0.84},
        ("moon_rigl", 0): {"acc": 0.91, "auroc/mean": 0.86},
        ("moon_rigl", 1): {"acc": 0.90, "auroc/mean": 0.88},
        ("moon_rigl", 2): {"acc": 0.95, "auroc/mean": 0.99},  # no rigl seed 2: not paired
    }
    stats = rp.aggregate(per_run)
    mean, std, n = stats["rigl"]["auroc/mean"]
    assert (mean, n) == (pytest.approx(0.82), 2) and std == pytest.approx(0.02828427, rel=1e-6)  # ddof=1
    assert stats["moon_rigl"]["acc"][2] == 3
    diff = rp.paired_difference(per_run, "moon_rigl", "rigl", "auroc/mean")
    assert diff[0] == pytest.approx(0.05) and diff[1] == pytest.approx(0.01414214, rel=1e-6) and diff[2] == 2
    assert rp.paired_difference(per_run, "moon_rigl", "dense", "acc") is None


def test_claims_are_reported_whichever_way_they_go():
    results = {
        ("dense", 0): fake_results(0.95, 0.02, 0.2, (0.90, 0.96), (0.30, 0.10)),
        ("rigl", 0): fake_results(0.94, 0.04, 0.25, (0.86, 0.90), (0.40, 0.20)),
        ("moon_rigl", 0): fake_results(0.943, 0.03, 0.22, (0.89, 0.95), (0.35, 0.12), primary="moon_msp"),
        ("set", 0): fake_results(0.94, 0.03, 0.25, (0.85, 0.91), (0.40, 0.20)),
        ("moon_set", 0): fake_results(0.92, 0.05, 0.3, (0.84, 0.90), (0.45, 0.25), primary="moon_msp"),
    }
    lines = rp.claim_checks({k: rp.run_metrics(r) for k, r in results.items()}, "90%")
    text = "\n".join(lines)
    assert "(RigL 90% - dense, mean AUROC): -5.00 points over 1 seed(s): holds." in text
    assert ("MOON + RigL 90% - RigL 90%: mean AUROC 4.00 points (higher; paper: several points higher), "
            "FPR95 -6.50, ACC 0.30 (within 0.5 points), ECE -1.00 (lower)") in text
    assert ("MOON + SET 90% - SET 90%: mean AUROC -1.00 points (not higher; paper: several points higher), "
            "FPR95 5.00, ACC -2.00 (not within 0.5 points), ECE 2.00 (not lower)") in text


def test_a_difference_smaller_than_two_standard_errors_is_called_noise():
    per_run = {("rigl", s): {"auroc/mean": 0.80} for s in range(3)}
    per_run.update({("moon_rigl", 0): {"auroc/mean": 0.90}, ("moon_rigl", 1): {"auroc/mean": 0.70},
                    ("moon_rigl", 2): {"auroc/mean": 0.83}})
    diff = rp.paired_difference(per_run, "moon_rigl", "rigl", "auroc/mean")  # +0.01 +- 0.10
    assert _noise_note(diff) == ", within seed noise"
    assert _noise_note((0.05, 0.01, 3)) == ""  # 0.05 > 2 * 0.01 / sqrt(3)
    assert _noise_note((0.01, 0.5, 1)) == ""  # one seed: no noise estimate


def test_report_tables_hold_the_runs_numbers(tmp_path):
    specs = rp.plan_runs("configs/c.py", ["dense", "rigl"], [0, 1], tmp_path)
    outcomes = [rp.RunOutcome(s, 0, 12.5) for s in specs]
    results = {
        ("dense", 0): fake_results(0.95, 0.02, 0.2, (0.90, 0.96), (0.30, 0.10)),
        ("dense", 1): fake_results(0.97, 0.04, 0.3, (0.92, 0.98), (0.20, 0.10)),
        ("rigl", 0): fake_results(0.94, 0.04, 0.25, (0.86, 0.90), (0.40, 0.20)),
        ("rigl", 1): fake_results(0.94, 0.04, 0.25, (0.86, 0.90), (0.40, 0.20)),
    }
    report = rp.reproduction_report("T", outcomes, results, ["dense", "rigl"], "90%", "dev", "cmd", ["a note"], date="2026-01-02")
    assert "Measured 2026-01-02 on dev; seeds 0, 1. Made by `cmd`." in report
    assert ("| dense | 2 | n/a | 96.00 ± 1.41 | 3.00 ± 1.41 | 0.2500 ± 0.0707 | `msp` | 94.00 ± 1.41 | 17.50 ± 3.54 | "
            "n/a | n/a | n/a | n/a |") in report
    assert "| RigL 90% | 2 | n/a | 94.00 ± 0.00 | 4.00 ± 0.00 | 0.2500 ± 0.0000 | `msp` | 88.00 ± 0.00 | 30.00 ± 0.00 |" in report
    assert "| dense | 91.00 ± 1.41 / 25.00 ± 7.07 | 97.00 ± 1.41 / 10.00 ± 0.00 |" in report
    assert "- a note" in report
    assert re.search(r"\| rigl \| 1 \| 0 \| 12\.5 \| n/a \| `python \S*train\.py --config=configs/c\.py", report)
    assert "## The unknown output and the voting" not in report  # no MOON run


def test_report_separates_noise_sets_and_shows_energy_train_accuracy_p_unknown_last_iterate_and_wall_time(tmp_path):
    specs = rp.plan_runs("configs/c.py", ["rigl", "moon_rigl"], [0, 1], tmp_path)
    outcomes = [rp.RunOutcome(s, 0, 3.0) for s in specs]
    wall = {("rigl", 0): 600.0, ("rigl", 1): 660.0, ("moon_rigl", 0): 720.0, ("moon_rigl", 1): 780.0}
    for spec in specs:
        seconds = wall[(spec.method, spec.seed)]
        spec.workdir.mkdir(parents=True)
        rp.record_wall_time(rp.RunOutcome(spec, 143, seconds - 100.0))  # preempted, then resumed
        rp.record_wall_time(rp.RunOutcome(spec, 0, 100.0))
    results = {
        ("rigl", 0): full_fake_results(0.80, 0.99, (0.70, 0.80), 0.95, (0.72, 0.82)),
        ("rigl", 1): full_fake_results(0.82, 1.00, (0.72, 0.82), 0.97, (0.74, 0.84)),
        ("moon_rigl", 0): full_fake_results(0.81, 0.98, (0.74, 0.86), 0.60, (0.70, 0.80), (0.02, 0.10, 0.20, 1.2e-5),
                                            last=(0.79, 0.70, 0.80)),
        ("moon_rigl", 1): full_fake_results(0.81, 1.00, (0.76, 0.84), 0.60, (0.70, 0.80), (0.04, 0.12, 0.22, 1.8e-5),
                                            last=(0.77, 0.72, 0.82)),
    }
    report = rp.reproduction_report("T", outcomes, results, ["rigl", "moon_rigl"], "90%", "dev", "cmd",
                                    date="2026-01-02", scale="Width 8, 10,000 images: it fits its training set.")
    assert "## Scale and why\n\nWidth 8, 10,000 images: it fits its training set." in report
    # headline mean over tin_resize and mnist only; the noise set in its own column; 10 / 11 / 12 / 13 minutes
    assert ("| RigL 90% | 2 | 99.50 ± 0.71 | 81.00 ± 1.41 | 5.00 ± 0.00 | 0.5000 ± 0.0000 | `msp` | 76.00 ± 1.41 | "
            "24.00 ± 1.41 | 96.00 ± 1.41 | 78.00 ± 1.41 | 22.00 ± 1.41 | 10.5 ± 0.7 |") in report
    assert ("| MOON + RigL 90% | 2 | 99.00 ± 1.41 | 81.00 ± 0.00 | 5.00 ± 0.00 | 0.5000 ± 0.0000 | `moon_msp` | "
            "80.00 ± 0.00 | 20.00 ± 0.00 | 60.00 ± 0.00 | 75.00 ± 0.00 | 25.00 ± 0.00 | 12.5 ± 0.7 |") in report
    assert "| method | tin_resize AUROC / FPR95 | mnist AUROC / FPR95 | gaussian_noise AUROC / FPR95 |" in report
    # p(unknown) ID / per set (2 significant digits: a tiny one is not shown as 0.00), then ACC and
    # mean AUROC of the average beside the last iterate's
    assert ("| MOON + RigL 90% | 3.0 ± 1.4 | 11 ± 1 | 21 ± 1 | 0.0015 ± 0.0004 | 81.00 ± 0.00 | "
            "78.00 ± 1.41 | 80.00 ± 0.00 | 76.00 ± 1.41 |") in report
    assert "- MOON + RigL 90% - RigL 90%: mean AUROC 4.00 ± 1.41 points (higher" in report
    assert "| moon_rigl | 1 | 0 | 3.0 | 780.0 |" in report


def test_an_invocation_killed_with_the_machine_leaves_the_wall_time_unknown_not_short(tmp_path):
    """The driver records an invocation's time when it ends; one killed with the machine (a
    restart, SIGKILL) leaves no record, and a sum of the others would look like the whole run."""
    [spec] = rp.plan_runs("configs/c.py", ["averaged_rigl"], [0], tmp_path)
    for _ in range(3):  # trained, killed; resumed, killed; evaluated
        rp.open_train_log(spec).close()
    rp.record_wall_time(rp.RunOutcome(spec, 0, 196.7))
    assert rp.wall_time_summary(spec.workdir) == (None, 2)
    with open(spec.workdir / "train.log", "a") as log:  # train.py's own output does not count as an invocation
        log.write("  $ python train.py --workdir=x\n$ a line without a workdir\n$ 'unbalanced --workdir=x\n")
    assert rp.wall_time_summary(spec.workdir) == (None, 2)
    results = {("averaged_rigl", 0): full_fake_results(0.60, 1.00, (0.62, 0.64), 0.5, (0.66, 0.68), last=(0.59, 0.61, 0.63))}
    report = rp.reproduction_report("T", [rp.RunOutcome(spec, 0, 196.7)], results, ["averaged_rigl"], "90%", "dev", "cmd")
    assert "| averaged_rigl | 0 | 0 | 196.7 | n/a (2 invocations ended without a record) |" in report
    assert "skipped: not trained" not in report
    skipped = rp.reproduction_report("T", [rp.RunOutcome(spec, 0, None)], results, ["averaged_rigl"], "90%", "dev", "cmd")
    assert "| averaged_rigl | 0 | 0 | skipped | n/a (2 invocations" in skipped and "skipped: not trained" in skipped
    summary = next(line for line in report.splitlines() if line.startswith("| RigL 90% + weight averaging | 1 |"))
    assert summary.endswith("| n/a |")  # minutes / run: unknown, not 3.3
    # the voting table of K-output runs has no p(unknown) columns, and every row the header's width
    table = report.split("## The unknown output and the voting")[1].strip().splitlines()[:3]
    assert table[0] == "| method | ACC average | ACC last iterate | mean AUROC average | mean AUROC last iterate |"
    assert [line.count("|") for line in table] == [6, 6, 6]
    assert table[2] == "| RigL 90% + weight averaging | 60.00 | 59.00 | 63.00 | 62.00 |"
    # recorded again: the time is known once every started invocation has its record
    rp.record_wall_time(rp.RunOutcome(spec, 137, 3000.0))
    rp.record_wall_time(rp.RunOutcome(spec, 137, 2000.0))
    assert rp.wall_time_summary(spec.workdir) == (pytest.approx(5196.7), 0)


def test_every_ablation_and_baseline_is_a_method_with_its_switches(tmp_path):
    tails = {s.method: s.command[5:] for s in rp.plan_runs("c.py", list(rp.METHODS), [0], tmp_path)}
    assert tails["moon_rigl_no_loss"] == ("--config.sparse.method=rigl", "--config.moon.enabled=True",
                                          "--config.moon.loss_weighting=none")
    assert tails["moon_rigl_fixed_alpha"][-1] == "--config.moon.alpha_tuning=fixed"
    assert tails["moon_rigl_no_voting"][-1] == "--config.moon.averaging_epochs=0"
    assert tails["mixup_rigl"][-2:] == ("--config.moon.enabled=False", "--config.data.mixup_alpha=0.2")
    assert tails["cigl_rigl"][-3:] == ("--config.moon.head=none", "--config.moon.loss_weighting=none",
                                       "--config.moon.dropconnect_rate=0.01")
    assert tails["moon_rigl_reference_head"][-1] == "--config.moon.head=reference_k"
    assert rp.method_label("moon_rigl_no_voting", "90%") == "MOON + RigL 90%, no voting"
    assert rp.method_label("cigl_rigl", "80%") == "CigL + RigL 80%"
    # each algorithm alone has its MOON variant, and the claims pair them
    assert {n for n, m in rp.METHODS.items() if m.label == "{sparse}" and m.sparse_method != "dense"} == set(
        rp.SOLO_SPARSE_METHODS) and all(f"moon_{n}" in rp.METHODS for n in rp.SOLO_SPARSE_METHODS)
    # every method's config is valid on the default job
    rp.check_specs(rp.plan_runs(DEFAULT_CONFIG, list(rp.METHODS), [0], tmp_path))
    assert rp.expand_methods("rigl,ablations,rigl") == (["rigl", *rp.ABLATION_METHODS], {})
    methods, _ = rp.expand_methods("all")
    assert methods[:5] == list(rp.PAPER_METHODS) and set(methods) == set(rp.METHODS)
    # the paper's methods over three seeds, the ablations over one: seed by seed
    methods, method_seeds = rp.expand_methods("rigl,moon_rigl,ablations@0,mixup_rigl@1+0")
    assert method_seeds == {**{m: [0] for m in rp.ABLATION_METHODS}, "mixup_rigl": [1, 0]}
    # a method named again adds its seeds rather than replacing the earlier ones
    assert rp.expand_methods("rigl@0,moon_rigl@0,rigl@2+0,moon_rigl@1") == (
        ["rigl", "moon_rigl"], {"rigl": [0, 2], "moon_rigl": [0, 1]})
    specs = rp.plan_runs("c.py", methods, [0, 1, 2], tmp_path, method_seeds=method_seeds)
    assert [(s.method, s.seed) for s in specs] == [
        ("rigl", 0), ("moon_rigl", 0), *[(m, 0) for m in rp.ABLATION_METHODS], ("mixup_rigl", 0),
        ("rigl", 1), ("moon_rigl", 1), ("mixup_rigl", 1), ("rigl", 2), ("moon_rigl", 2)]


def test_ablation_comparisons_are_paired_differences_with_the_paper_claim():
    per_run = {("moon_rigl", 0): {"auroc/mean": 0.80, "acc": 0.9, "ece": 0.02},
               ("moon_rigl_no_voting", 0): {"auroc/mean": 0.83, "acc": 0.9, "ece": 0.03}}
    text = "\n".join(rp.claim_checks(per_run, "90%"))
    assert ("- MOON + RigL 90% - MOON + RigL 90%, no voting: mean AUROC -3.00 points (not higher), ACC 0.00, "
            "ECE -1.00; 1 paired seed(s). Paper: the voting helps (Fig. 5).") in text


def test_voting_is_measured_within_the_same_runs_and_one_seed_comparisons_get_the_seed_spread():
    per_run = {}
    for seed, (auroc, last_auroc, acc, last_acc) in enumerate([(0.80, 0.79, 0.60, 0.59), (0.70, 0.70, 0.62, 0.60),
                                                                (0.75, 0.77, 0.61, 0.61)]):
        per_run[("moon_rigl", seed)] = {"auroc/mean": auroc, "last_auroc/mean": last_auroc, "acc": acc,
                                        "last_acc": last_acc, "ece": 0.20, "last_ece": 0.21}
        per_run[("rigl", seed)] = {"auroc/mean": 0.76 + 0.01 * seed, "acc": 0.60, "ece": 0.22, "fpr95/mean": 0.9}
        per_run[("moon_rigl", seed)]["fpr95/mean"] = 0.9
    per_run[("moon_rigl_no_loss", 0)] = {"auroc/mean": 0.78, "acc": 0.60, "ece": 0.22}
    diff = rp.voting_difference(per_run, "moon_rigl", "auroc/mean")  # +0.01, 0.00, -0.02
    assert diff[0] == pytest.approx(-0.01 / 3) and diff[1] == pytest.approx(0.01527525, rel=1e-6) and diff[2] == 3
    assert rp.voting_difference(per_run, "rigl", "acc") is None  # no last iterate recorded
    text = "\n".join(rp.claim_checks(per_run, "90%"))
    assert ("- The voting within the same runs (MOON + RigL 90%: weight average - last iterate): mean AUROC -0.33 ± 1.53 "
            "points (not higher, within seed noise), ACC 1.00 ± 1.00, within seed noise, ECE -1.00 ± 0.00; 3 seed(s).") in text
    assert "3 seed(s). Paper: the voting helps (Fig. 5)." in text  # MOON's voting is the paper's Figure 5
    # the loss alone: MOON's last iterate against the baseline, paired by seed (+3, -7, -1 AUROC points)
    assert ("- MOON + RigL 90%, last iterate - RigL 90% (the loss without the voting): mean AUROC -1.67 ± 5.03 "
            "points (not higher, within seed noise), ACC 0.00 ± 1.00, within seed noise, ECE -1.00 ± 0.00 (lower); "
            "3 paired seed(s).") in text
    assert rp.paired_difference(per_run, "moon_rigl", "rigl", "acc", better_metric="last_acc")[2] == 3
    assert rp.paired_difference(per_run, "moon_rigl", "rigl", "acc", better_metric="last_nll") is None
    # either side can read another key: a run's average against its own last iterate, or a baseline's missing one
    assert rp.paired_difference(per_run, "moon_rigl", "moon_rigl", "ece", baseline_metric="last_ece") == (
        pytest.approx(-0.01), pytest.approx(0.0), 3)
    assert rp.paired_difference(per_run, "moon_rigl", "rigl", "acc", baseline_metric="last_acc") is None
    per_run[("cigl_rigl", 0)] = {"auroc/mean": 0.78, "last_auroc/mean": 0.76, "acc": 0.6, "last_acc": 0.59,
                                 "ece": 0.2, "last_ece": 0.21}
    cigl = [line for line in rp.claim_checks(per_run, "90%") if "(CigL + RigL 90%: weight average" in line]
    assert cigl == ["- The voting within the same runs (CigL + RigL 90%: weight average - last iterate): mean AUROC "
                    "2.00 points (higher), ACC 1.00, ECE -1.00; 1 seed(s)."]  # CigL's averaging: no Fig. 5
    # the one-seed ablation is put against how much MOON + RigL - RigL moves between seeds: 4, -7, -3 points
    assert ("- MOON + RigL 90% - MOON + RigL 90%, no loss modification: mean AUROC 2.00 points (higher), ACC 0.00, "
            "ECE -2.00; 1 paired seed(s).") in text
    assert text.endswith("varies between seeds by a std of 5.57 points of mean AUROC, 1.00 of ACC and 0.00 of ECE "
                         "(3 paired seeds).")


def test_tables_name_the_mask_structure_and_every_algorithm_gets_its_moon_claim():
    sparse = lambda structure, distribution="erk": SimpleNamespace(  # noqa: E731
        sparsity=0.9, structure=structure, distribution=distribution)
    assert rp.sparsity_level(sparse("unstructured")) == "90%"
    assert rp.sparsity_level(sparse("nm_2,4")) == "2:4 (ERK 90% plan)"
    assert rp.sparsity_level(sparse("1:8", "uniform")) == "1:8 (uniform 90% plan)"
    assert rp.sparsity_level(sparse("block_4,2")) == "90% in 4x2 blocks"
    assert rp.sparsity_level(sparse("channel")) == "90% by output channel"
    assert rp.method_label("moon_rigl", rp.sparsity_level(sparse("nm_2,4"))) == "MOON + RigL 2:4 (ERK 90% plan)"
    # the report's title too (it read "90% erk" for a 2:4 run, whose sparse layers are 50% dense)
    titles = {structure: default_title(SimpleNamespace(
        data=SimpleNamespace(dataset="cifar10"), model=SimpleNamespace(name="resnet18"), sparse=sparse(structure)))
        for structure in ("unstructured", "nm_2,4", "block_4,2")}
    assert titles == {"unstructured": "Reproduction: cifar10 / resnet18 / 90% erk",
                      "nm_2,4": "Reproduction: cifar10 / resnet18 / 2:4 (ERK 90% plan)",
                      "block_4,2": "Reproduction: cifar10 / resnet18 / 90% in 4x2 blocks, erk"}
    # a dense-to-sparse method and its MOON variant get the paper's main comparison, as RigL does
    per_run = {}
    for seed, (base, moon) in enumerate([(0.60, 0.62), (0.61, 0.62), (0.62, 0.66)]):
        per_run[("gmp", seed)] = {"auroc/mean": base, "fpr95/mean": 0.9, "acc": 0.6, "ece": 0.20}
        per_run[("moon_gmp", seed)] = {"auroc/mean": moon, "fpr95/mean": 0.9, "acc": 0.6, "ece": 0.15}
    lines = rp.claim_checks(per_run, "90%")
    line = lines[0]
    assert not any("no spread of its own" in x for x in lines)  # every comparison here has its three seeds
    assert line.startswith("- MOON + GMP 90% - GMP 90%: mean AUROC 2.33 ± 1.53 points (higher; paper: ")
    assert line.endswith("ECE -5.00 ± 0.00 (lower); 3 paired seed(s).")


def test_a_mean_that_rounds_to_zero_prints_without_a_sign():
    assert pm((-0.00003, 0.0018, 3)) == "0.00 ± 0.18"
    assert pm((-0.0003, 0.0, 1)) == "-0.03"


@pytest.mark.slow
def test_reproduce_script_end_to_end_on_digits(tmp_path):
    """Two real runs through train.py, then the report: its numbers are each run's eval.json; the
    runs' records alone rebuild it elsewhere."""
    root, output, records = tmp_path / "runs", tmp_path / "REPRODUCTION.md", tmp_path / "records"
    args = [
        str(REPO / "reproduce.py"), f"--config={DEFAULT_CONFIG}", "--methods=rigl,moon_rigl",
        "--seeds=0", f"--root={root}", f"--output={output}", "--noplots", "--parallel=2", f"--records={records}",
        "--config.train.epochs=12", "--config.moon.warmup_epochs=2", "--config.moon.averaging_epochs=3",
        "--config.sparse.end_fraction=0.6", "--config.train.eval_every_epochs=0", "--config.train.checkpoint_every_epochs=6",
    ]
    out = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    report = output.read_text()
    for method, label in (("rigl", "RigL 90%"), ("moon_rigl", "MOON + RigL 90%")):
        results = json.loads((root / f"{method}_s0" / "eval.json").read_text())
        cls, photos = results["classification"], results["ood"][results["primary_score"]]["digits_photos"]
        train_acc = results["train_subset_classification"]["acc"]
        noise = [results["ood"][results["primary_score"]][n]["auroc"] for n in ("gaussian_noise", "uniform_noise")]
        # the headline mean is over the non-noise sets (here digits_photos alone); noise in its own column
        row = (f"| {label} | 1 | {100 * train_acc:.2f} | {100 * cls['acc']:.2f} | {100 * cls['ece']:.2f} | "
               f"{cls['nll']:.4f} | `{results['primary_score']}` | {100 * photos['auroc']:.2f} | "
               f"{100 * photos['fpr95']:.2f} | {100 * sum(noise) / 2:.2f} |")
        assert row in report, report
        assert "--config.sparse.method=rigl" in (root / f"{method}_s0" / "train.log").read_text()
        assert not list((root / f"{method}_s0").glob("*.png"))  # --noplots reaches train.py's evaluation
    assert results["primary_score"] == "moon_msp" and results["model"].startswith("weight average of")
    assert "| MOON + RigL 90% | " in report.split("## The unknown output and the voting")[1].split("##")[0]
    assert "## Scale and why\n\nThe embedded offline default" in report
    assert "- MOON + RigL 90% - RigL 90%: mean AUROC" in report
    assert "Measured " in report and "seeds 0." in report
    # Re-running skips the finished runs (no train.py, so no second evaluation and no time added
    # to their wall time) and rebuilds the same tables.
    again = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done: rigl seed 0" in again.stdout and "already done: moon_rigl seed 0" in again.stdout
    assert (root / "rigl_s0" / "train.log").read_text().count("$ ") == 1

    def tables(text):  # skips the title and date lines
        return text.split("## Runs")[0].split("\n", 3)[3]

    assert tables(output.read_text()) == tables(report)
    # On another machine (a fresh --root), the same command restores the finished runs from their
    # records, without checkpoints, trains nothing and gives the same tables.
    assert sorted(p.name for p in (records / "moon_rigl_s0").iterdir()) == sorted(RECORD_FILES)
    elsewhere = tmp_path / "elsewhere"
    moved = [f"--root={elsewhere}" if a.startswith("--root=") else a for a in args]
    restored = subprocess.run([sys.executable, *moved], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert f"restored from the records in {records}: {elsewhere / 'rigl_s0'}" in restored.stdout
    assert "already done: moon_rigl seed 0" in restored.stdout
    assert not (elsewhere / "rigl_s0" / "checkpoints").exists()
    assert tables(output.read_text()) == tables(report)
    restored_report = output.read_text()
    assert "Read from their records, without checkpoints" in restored_report and "eval.py --compare" not in restored_report
    assert "eval.py --compare" in report and "Read from their records" not in report


@pytest.mark.slow
def test_sigterm_stops_the_runs_with_a_checkpoint_and_a_rerun_resumes(tmp_path):
    root, output = tmp_path / "runs", tmp_path / "REPRODUCTION.md"
    args = [
        sys.executable, str(REPO / "reproduce.py"), f"--config={DEFAULT_CONFIG}", "--methods=rigl",
        f"--root={root}", f"--output={output}", "--noplots", "--config.train.log_every_steps=5",
    ]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = root / "rigl_s0" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stdout
    assert "stopped 1 running train.py process(es)" in stdout
    log = (root / "rigl_s0" / "train.log").read_text()
    saved = re.search(r"SIGTERM: saved a checkpoint at step (\d+)", log)
    assert saved, log[-2000:]
    assert (root / "rigl_s0" / "checkpoints" / saved.group(1)).is_dir()
    assert not output.exists()
    [stopped] = rp.wall_time_records(root / "rigl_s0")  # the stopped invocation's time counts too
    assert stopped["returncode"] == 128 + signal.SIGTERM and stopped["seconds"] > 0

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = (root / "rigl_s0" / "train.log").read_text().split("SIGTERM: saved")[1]
    assert f"from the checkpoint at step {saved.group(1)}" in resumed
    assert "| RigL 90% | 1 |" in output.read_text()
    first, second = rp.wall_time_records(root / "rigl_s0")
    assert first == stopped and second["returncode"] == 0
    assert rp.wall_time_summary(root / "rigl_s0") == (pytest.approx(first["seconds"] + second["seconds"]), 0)


@pytest.mark.parametrize("name, steps_per_epoch", [("cifar10_cpu", 40), ("cifar10_cpu_large", 160)])
def test_cpu_config_keeps_every_phase_of_the_reference_recipe_in_proportion(name, steps_per_epoch):
    from conftest import load_config
    from moon_jax.training.config import validate_config

    cpu, reference = load_config(name), load_config("cifar10_resnet18")
    validate_config(cpu)
    assert cpu.data.num_train_examples // cpu.train.batch_size == steps_per_epoch
    assert cpu.model.width == 16 and cpu.data.augment == "flip" and cpu.train.epochs == 40
    share = lambda c, n: n / c.train.epochs  # noqa: E731
    for field in ("warmup_epochs", "averaging_epochs"):
        assert share(cpu, cpu.moon[field]) == share(reference, reference.moon[field])
    assert share(cpu, cpu.train.constant_lr_epochs) == share(reference, reference.train.constant_lr_epochs)
    assert cpu.sparse.end_fraction == reference.sparse.end_fraction == 0.7
    # mask updates per epoch as the reference's (every 80 of 390 iterations: 4.9 an epoch)
    assert 390 / reference.sparse.update_every == pytest.approx(4.9, abs=0.03)
    assert steps_per_epoch / cpu.sparse.update_every == pytest.approx(4.9, abs=0.15)
    for group, field in (("train", "base_lr"), ("train", "lr_ini"), ("train", "lr_end"), ("train", "batch_size"),
                         ("train", "weight_decay"), ("sparse", "sparsity"), ("sparse", "drop_fraction"),
                         ("moon", "alpha_init_factor"), ("moon", "alpha_final")):
        assert cpu[group][field] == reference[group][field]


def test_scaled_reference_recipe_at_the_reference_length_is_the_reference_recipe():
    from moon_jax.training.config import base_config, scaled_reference_recipe

    scaled, reference = scaled_reference_recipe(epochs=100, steps_per_epoch=390).to_dict(), base_config().to_dict()
    assert scaled["data"].pop("num_train_examples") == 49_920  # 390 whole batches of the 50,000 images
    assert reference["data"].pop("num_train_examples") == 0
    for field, value in (("log_every_steps", 390), ("eval_every_epochs", 0), ("checkpoint_every_epochs", 10)):
        assert scaled["train"].pop(field) == value
        reference["train"].pop(field)
    assert scaled == reference
    tenth = scaled_reference_recipe(epochs=10, steps_per_epoch=39)
    assert (tenth.moon.warmup_epochs, tenth.moon.averaging_epochs, tenth.train.constant_lr_epochs) == (0, 2, 2)
    assert tenth.sparse.update_every == 8
