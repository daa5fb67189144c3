"""Reliability: exact resume after SIGKILL, SIGTERM saves, NaN stops cleanly, bad configs and
checkpoints give clear errors."""
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, load_config, restore_final, run_python, tiny_config_file, tiny_digits_config
from moon_jax.programs import train_and_evaluate
from moon_jax.training import Checkpointer, ConfigError, NonFiniteError, build_run, steps, validate_config
from moon_jax.training.checkpoint import CheckpointError

TINY = {"checkpoint_every_epochs": 1}  # the tiny run, checkpointed every epoch


def tiny_config():
    return tiny_digits_config(**TINY)


def assert_states_identical(a, b):
    flat_a, tree_a = jax.tree.flatten(a)
    flat_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run of the tiny config and its final state."""
    workdir = tmp_path_factory.mktemp("reference")
    config = tiny_config()
    train_and_evaluate(config, workdir, evaluate_at_end=False)
    return restore_final(config, workdir)[0]


def start_training(tmp_path, workdir):
    config_file = tiny_config_file(tmp_path / "tiny_config.py", **TINY)
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), f"--config={config_file}", f"--workdir={workdir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_records(workdir, count, process, timeout=120):
    """Waits until metrics.jsonl has ``count`` lines (or the process ended)."""
    path = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, reference_run):
    workdir = tmp_path / "victim"
    rng = random.Random(1234)
    kills = 0
    for _ in range(3):
        before = len((workdir / "metrics.jsonl").read_text().splitlines()) if (workdir / "metrics.jsonl").exists() else 0
        process = start_training(tmp_path, workdir)
        if wait_for_records(workdir, before + rng.randint(1, 4), process):
            time.sleep(rng.uniform(0.0, 0.3))
            process.send_signal(signal.SIGKILL)
            kills += process.wait() == -signal.SIGKILL
        else:
            process.wait()
    assert kills >= 2  # it really was killed, more than once
    process = start_training(tmp_path, workdir)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    state, meta = restore_final(tiny_config(), workdir)
    assert meta["step"] == 80
    assert_states_identical(state, reference_run)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_is_identical(tmp_path, reference_run):
    workdir = tmp_path / "preempted"
    process = start_training(tmp_path, workdir)
    assert wait_for_records(workdir, 3, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    assert "SIGTERM: saved a checkpoint at step" in err
    step = int(err.split("saved a checkpoint at step ")[1].split()[0])
    assert Checkpointer(workdir).latest_step() == step
    process = start_training(tmp_path, workdir)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert_states_identical(restore_final(tiny_config(), workdir)[0], reference_run)


def test_nan_stops_with_step_and_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config()
    original = steps.loss_and_grads

    def poisoned(setup, state, forward_params, images, labels, rng):
        loss, grads, batch_stats, moon_state, aux = original(setup, state, forward_params, images, labels, rng)
        bad = state.step >= 25
        loss = jnp.where(bad, jnp.nan, loss)
        grads = jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), grads)
        return loss, grads, batch_stats, moon_state, aux

    monkeypatch.setattr(steps, "loss_and_grads", poisoned)
    with pytest.raises(NonFiniteError) as err:
        train_and_evaluate(config, tmp_path, evaluate_at_end=False)
    message = str(err.value)
    assert "at step 25" in message and "last good checkpoint is step 20" in message
    monkeypatch.undo()
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.all_steps() == [10, 20]  # nothing saved after the NaN
    state, _ = restore_final(config, tmp_path)
    assert int(state.step) == 20 and int(state.nonfinite_step) == -1
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def test_nan_gradient_with_finite_loss_stops_before_anything_is_saved(tmp_path, monkeypatch):
    # the step checks only the loss: a NaN gradient shows as a NaN loss one step later
    config = tiny_config()
    original = steps.loss_and_grads

    def poisoned(setup, state, forward_params, images, labels, rng):
        loss, grads, batch_stats, moon_state, aux = original(setup, state, forward_params, images, labels, rng)
        grads = jax.tree.map(lambda g: jnp.where(state.step == 25, jnp.nan, g), grads)
        return loss, grads, batch_stats, moon_state, aux

    monkeypatch.setattr(steps, "loss_and_grads", poisoned)
    with pytest.raises(NonFiniteError, match="at step 26.*last good checkpoint is step 20"):
        train_and_evaluate(config, tmp_path, evaluate_at_end=False)
    assert Checkpointer(tmp_path).all_steps() == [10, 20]


BAD_CONFIGS = [
    ("sparse.sparsity", 1.0, "config.sparse.sparsity = 1.0 is not valid: must be in [0.0, 1.0)"),
    ("sparse.sparsity", -0.1, "config.sparse.sparsity = -0.1 is not valid: must be in [0.0, 1.0)"),
    ("sparse.method", "snip", "config.sparse.method = 'snip' is not valid: allowed: dense, static, set, rigl"),
    ("sparse.distribution", "bernoulli", "config.sparse.distribution = 'bernoulli' is not valid: allowed: uniform, er, erk"),
    ("model.name", "resnet34", "config.model.name = 'resnet34' is not valid: allowed: mlp, small_cnn, resnet18"),
    ("data.dataset", "imagenette", "config.data.dataset = 'imagenette' is not valid: allowed: digits"),
    ("data.ood_datasets", ("svhn",), "config.data.ood_datasets = 'svhn' is not valid"),
    ("train.batch_size", 0, "config.train.batch_size = 0 is not valid: must be an integer >= 1"),
    ("train.epochs", -3, "config.train.epochs = -3 is not valid: must be an integer >= 1"),
    ("train.base_lr", 0.0, "config.train.base_lr = 0.0 is not valid: must be in (0.0, inf]"),
    ("train.optimizer", "lamb", "config.train.optimizer = 'lamb' is not valid: allowed: sgd, adamw"),
    ("train.constant_lr_epochs", 60, "config.train.constant_lr_epochs = 60 is not valid: must be smaller than train.epochs = 60"),
    ("sparse.end_fraction", 0.9, "config.sparse.end_fraction = 0.9 is not valid: mask updates must stop before weight averaging starts"),
    ("moon.warmup_epochs", 59, "config.moon.warmup_epochs = 59 is not valid: MOON needs train.epochs (60) > warmup_epochs + 1"),
    ("moon.averaging_trigger", "swa", "config.moon.averaging_trigger = 'swa' is not valid: allowed: epoch, reference"),
    ("sparse.update_every", 0, "config.sparse.update_every = 0 is not valid: must be an integer >= 1"),
    ("data.augment", "mixup", "config.data.augment = 'mixup' is not valid: allowed: crop_flip, flip, none"),
    ("moon.enabled", "yes", "config.moon.enabled = 'yes' is not valid: must be True or False"),
]


@pytest.mark.parametrize("field,value,message", BAD_CONFIGS, ids=[f"{f}={v}" for f, v, _ in BAD_CONFIGS])
def test_bad_config_values_are_named(field, value, message):
    config = load_config("default")
    node = config
    *parents, leaf = field.split(".")
    for part in parents:
        node = node[part]
    with config.ignore_type():
        node[leaf] = value
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert message in str(err.value)


def test_batch_not_divisible_by_devices_is_an_error():
    config = load_config("default")
    config.train.batch_size = 60
    with pytest.raises(ConfigError, match=r"config.train.batch_size = 60 is not valid: must be divisible by the number of devices \(8\)"):
        validate_config(config, num_devices=8)


def test_unknown_field_is_an_error():
    config = load_config("default")
    config.unlock()
    config.train.epoch = 3
    with pytest.raises(ConfigError, match="config.train.epoch is not a known field"):
        validate_config(config)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    config = tiny_config()
    config.train.epochs = 8
    train_and_evaluate(config, workdir, evaluate_at_end=False, stop_at_step=30)
    return workdir


def run_eval(workdir):
    return run_python([str(REPO / "eval.py"), f"--workdir={workdir}"], timeout=300)


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_newest_checkpoint_is_one_warning_and_the_older_one_is_used(tmp_path, trained_workdir):
    workdir = copy_run(trained_workdir, tmp_path / "run")
    latest = Checkpointer(workdir).latest_step()
    files = sorted(p for p in (workdir / "checkpoints" / str(latest) / "state").rglob("*") if p.is_file() and p.stat().st_size > 1000)
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=f"step {latest}.*corrupt or partial"):
        restore_final(tiny_config(), workdir)
    out = run_eval(workdir)
    older = max(s for s in Checkpointer(workdir).all_steps() if s != latest)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (warning,) = [x for x in out.stderr.splitlines() if "corrupt or partial" in x]
    assert warning.startswith("warning:") and f"using the checkpoint at step {older}" in warning
    process = start_training(tmp_path, workdir)  # train.py resumes from the older one
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and f"from the checkpoint at step {older}" in out, err[-3000:]
    assert "corrupt or partial" in err and "Traceback" not in err


def test_corrupt_metadata_is_one_clear_line(tmp_path, trained_workdir):
    workdir = copy_run(trained_workdir, tmp_path / "run")
    steps = Checkpointer(workdir).all_steps()
    for step in sorted(steps, reverse=True):
        for f in (workdir / "checkpoints" / str(step) / "meta").rglob("*"):
            if f.is_file():
                f.write_text("{not json")
        out = run_eval(workdir)
        assert "unreadable metadata" in out.stderr and "Traceback" not in out.stderr
        if step != min(steps):  # an older checkpoint is left: a warning, and it is evaluated
            assert out.returncode == 0 and out.stderr.startswith("warning:"), out.stderr[-3000:]
    assert out.returncode == 2 and len([x for x in out.stderr.splitlines() if x.startswith("error:")]) == 1


def test_checkpoint_of_another_run_is_refused(tmp_path, trained_workdir):
    workdir = copy_run(trained_workdir, tmp_path / "run")
    config = tiny_config()
    config.sparse.sparsity = 0.8
    with pytest.raises(CheckpointError, match=r"different run:\n  sparse.sparsity: checkpoint has 0.9, config has 0.8"):
        train_and_evaluate(config, workdir, evaluate_at_end=False)


def test_checkpoint_of_another_model_shape_is_refused(tmp_path, trained_workdir):
    workdir = copy_run(trained_workdir, tmp_path / "run")
    meta_dir = workdir / "checkpoints" / str(Checkpointer(workdir).latest_step()) / "meta"
    # the same config, but the checkpoint claims other shapes (as an older code version would)
    meta_file = next(p for p in meta_dir.rglob("*") if p.is_file())
    meta = json.loads(meta_file.read_text())
    key = next(iter(meta["shapes"]))
    meta["shapes"][key] = [1, 2, 3]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="holds a state of another shape"):
        restore_final(tiny_config(), workdir)


def test_missing_dataset_names_dataset_and_path(tmp_path):
    out = run_python([str(REPO / "train.py"), "--config", str(REPO / "configs" / "cifar10_resnet18.py"),
                      f"--config.data.data_dir={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'run'}"], timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cifar10" in out.stderr and str(tmp_path / "nowhere") in out.stderr
    assert "MOON_JAX_DATA_DIR" in out.stderr and "Traceback" not in out.stderr


def test_schedule_longer_than_the_run_is_an_error():
    config = load_config("default")
    config.sparse.update_every = 5000  # the digits run has 1260 steps, updates stop at 945
    with pytest.raises(ConfigError, match=r"config.sparse.update_every = 5000 is not valid: mask updates stop at step 945"):
        build_run(config, with_ood=False)
