"""benchmarks/device_check.py: the smoke run writes every file and table the GPU run writes, the
time guard stops the comparison cleanly and says how far it got, and the pieces behind them (the
epoch plan, a failing or overlong child) behave."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "benchmarks"))
import device_check  # noqa: E402

needs_data = pytest.mark.skipif(not (SHARED_DATA / "cifar10_train.npz").exists(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def decoded_images():
    """Decodes the packed sets into this session's image cache first, so that the three train.py
    at once start from it, as on any machine where they ran before, and the time limits measure
    the script rather than the JPEG decoder."""
    from moon_jax.data.packed import load_packed_dataset

    for name, split in (("cifar10", "train"), ("cifar10", "test"), ("tin_resize", "test"), ("mnist", "test"),
                        ("textures_subset", "test")):
        load_packed_dataset(name, split)


def run_script(out, *args, timeout=900):
    command = [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--smoke", "--out", str(out), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@needs_data
def test_smoke_run_writes_every_table(tmp_path, decoded_images):
    out = tmp_path / "out"
    done = run_script(out, "--budget-seconds", "600", "--scratch", str(tmp_path / "scratch"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(device_check.OUTPUT_FILES)
    summary = json.loads((out / "device_check.json").read_text())
    statuses = {p["name"]: p["status"] for p in summary["phases"]}
    assert statuses == {name: "ok" for name in ("versions", "step_cost_float32", "step_cost_bfloat16",
                                                "throughput_float32", "throughput_bfloat16", "comparison")}, statuses
    assert summary["versions"]["platform"] == "cpu" and summary["versions"]["packages"]["jax"]
    report = (out / "device_check.md").read_text()
    for heading in ("## Phases", "## Device and versions", "## Step cost, float32", "## Step cost, bfloat16",
                    "## Training throughput, float32", "## Training throughput, bfloat16",
                    "## Comparison: how far each run got", "## Comparison report"):
        assert heading in report, heading
    assert report.count("bytes ratio 1.") == 2  # both dtypes' step costs, the MOON step about the plain one
    assert "| real loop, MOON + RigL 90%" in report and "compile-free" in report
    runs = summary["comparison"]["runs"]
    assert [r["method"] for r in runs] == list(device_check.COMPARISON_METHODS)
    assert all(r["status"] == "finished and evaluated" for r in runs), runs
    plan = summary["comparison"]["plan"]
    assert 2 <= plan["epochs"] <= device_check.SMOKE.max_epochs and plan["why"] == "estimated"
    assert all(r["step"] == plan["epochs"] * plan["steps_per_epoch"] for r in runs)
    comparison = (out / "comparison.md").read_text()
    assert "## Summary" in comparison and "MOON + RigL 90%" in comparison
    assert sum(p.stat().st_size for p in out.iterdir()) < 1_000_000  # tables, not checkpoints


@pytest.mark.slow
@needs_data
def test_time_guard_stops_the_comparison_cleanly(tmp_path, decoded_images):
    """A comparison far longer than its time: SIGTERM before the end, a checkpoint, exit 0, and
    the report says where each run stopped."""
    out = tmp_path / "out"
    done = run_script(out, "--phases", "comparison", "--budget-seconds", "150", "--comparison-epochs", "400",
                      "--override=--config.data.num_train_examples=2048", "--scratch", str(tmp_path / "scratch"),
                      timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "device_check.json").read_text())
    assert summary["elapsed_seconds"] < 150
    runs = summary["comparison"]["runs"]
    assert len(runs) == 3
    for run in runs:
        assert run["guard"] and run["status"].startswith("stopped by the time guard"), run["status"]
        assert not run["evaluated"]
    # at least one run had reached training, stopped with a checkpoint at the step it reached
    trained = [r for r in runs if r["step"] > 0]
    assert trained and all(r["returncode"] == 143 and r["checkpoints"][-1] == r["step"] for r in trained), runs
    report = (out / "device_check.md").read_text()
    assert "stopped by the time guard at step" in report and "of 25600" in report
    assert "No comparison run finished" in (out / "comparison.md").read_text()


def test_plan_fits_whole_epochs_then_falls_back_to_a_stop_step():
    fits = device_check.plan_epochs(300, epoch_seconds=20, startup=60, eval_reserve=60, steps_per_epoch=390, max_epochs=100)
    assert fits == {"epochs": 9, "stop_at_step": None}
    capped = device_check.plan_epochs(10_000, 20, 60, 60, 390, max_epochs=100)
    assert capped["epochs"] == 100
    short = device_check.plan_epochs(100, epoch_seconds=40, startup=60, eval_reserve=60, steps_per_epoch=390, max_epochs=100)
    assert short == {"epochs": 2, "stop_at_step": 390}  # 40 s of training: one epoch, no evaluation
    assert device_check.plan_epochs(50, 40, 60, 60, 390, 100) == {"epochs": None, "stop_at_step": None}


def test_rates_come_from_the_real_loop_else_the_steps_else_an_assumption():
    steps = {"rates": {"dense": [100.0], "RigL 90%": [50.0], "MOON + RigL 90%": [40.0]}}
    loops = {"dense": {"steady_images_per_second": 80.0}, "MOON + RigL 90%": {"steady_images_per_second": 30.0}}
    rates, source = device_check.per_run_rates({"steps": steps, "loops": loops}, assumed=7.0)
    assert rates == {"dense": 80.0, "rigl": 40.0, "moon_rigl": 30.0} and "real loop" in source
    rates, source = device_check.per_run_rates({"steps": steps}, assumed=7.0)
    assert rates == {"dense": 80.0, "rigl": 40.0, "moon_rigl": 32.0} and "step rates" in source
    rates, source = device_check.per_run_rates({}, assumed=7.0)
    assert set(rates.values()) == {7.0} and "assumed" in source


def test_a_failing_or_overlong_child_is_recorded_not_raised(tmp_path):
    fail = [sys.executable, "-c", "import sys; print('table'); print('boom', file=sys.stderr); sys.exit(3)"]
    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    failed, timed_out = device_check.run_children([("fail", fail, None), ("slow", slow, None)], 3, tmp_path)
    assert (failed.status, failed.returncode, failed.output.strip(), failed.error_tail) == ("failed", 3, "table", "boom")
    assert timed_out.status == "timed out" and timed_out.output.strip() == "started" and timed_out.seconds < 30


def test_the_plan_counts_steps_with_the_runs_overrides():
    plan = device_check.comparison_plan(
        1000, {}, device_check.SMOKE, [*device_check.SMOKE.comparison_overrides, "--config.data.num_train_examples=2048"], None)
    assert (plan["steps_per_epoch"], plan["batch"]) == (64, 32)
    assert device_check.comparison_plan(1000, {}, device_check.REAL, [], 7)["steps_per_epoch"] == 390


def test_compile_table_sums_and_ratios():
    import step_cost

    def measurement(compiles, before):
        return {"compiles": compiles, "before_first_step": before}

    rounds = [
        {"plain": measurement([("init", 2.0), ("step", 4.0), ("forward", 1.0)], 2),
         "library": measurement([("<lambda>", 3.0), ("train_step", 5.0), ("mask_update_step", 2.0), ("_mean", 0.5),
                                 ("_mean", 0.5)], 2)},
        {"plain": measurement([("init", 4.0), ("step", 4.0), ("forward", 1.0)], 2),
         "library": measurement([("<lambda>", 5.0), ("train_step", 5.0), ("mask_update_step", 2.0)], 2)},
    ]
    lines = step_cost.compile_table(rounds)
    assert "| MOON + RigL run | `_mean` | 0.50 | 1 |" in lines  # median of 1.0 and 0.0 seconds, of 2 and 0 compiles
    assert "| before the first step | 7.00 | 9.00 | 1.29 |" in lines
    assert "| whole run | 8.00 | 11.50 | 1.44 |" in lines
    assert lines[-2:] == ["compile ratio 1.29", "compile ratio whole run 1.44"]
