"""End-to-end tests of the training loop: configs, steps, resume, learning on real data."""
import collections
import contextlib
import io
import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from conftest import CONFIG_NAMES, compiled_function_names, load_config, restore_final, short_digits_config, tiny_digits_config
from moon_jax.programs import train_and_evaluate
from moon_jax.devices import DataParallel
from moon_jax.training import build_run, compile_steps, create_train_state


def shrink(config, batch_size):
    config.train.batch_size = batch_size
    config.train.eval_batch_size = batch_size
    config.data.num_train_examples = 2 * batch_size
    config.data.num_test_examples = batch_size
    config.data.num_ood_examples = batch_size
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_builds_and_runs_two_steps(name):
    import tensorflow_datasets as tfds

    config = shrink(load_config(name), 4 if name == "imagenet_resnet50" else 8)
    if name == "imagenet_resnet50":
        config.model.width = 16  # the config's architecture, thinner, so CPU compiles in seconds
    with tfds.testing.mock_data(num_examples=16):
        data, setup = build_run(config)
    assert setup.moon_loss is not None and setup.model.num_outputs == data.num_classes + 1
    state = jax.jit(lambda k: create_train_state(setup, k, data.image_shape))(jax.random.PRNGKey(0))
    compiled = compile_steps(setup, DataParallel(setup.split.mesh))
    step, mask_step = compiled.train, compiled.mask_update
    rows = np.arange(2 * config.train.batch_size).reshape(2, -1)
    if hasattr(data.train, "images"):
        batches = [(data.train.images[r], data.train.labels[r]) for r in rows]
    else:
        with tfds.testing.mock_data(num_examples=16):
            batches = [data.train.get_batch(r % len(data.train), crop_seed=0) for r in rows]
    state, m1 = step(state, *batches[0])
    state, m2 = mask_step(state, *batches[1])
    assert int(state.step) == 2 and int(state.nonfinite_step) == -1
    assert int(m1["nonfinite_step"]) == -1 and int(m2["nonfinite_step"]) == -1
    assert np.isfinite(float(m1["loss"])) and np.isfinite(float(m2["loss"]))
    expected_counts = [c for c in setup.updater.nonzeros if c is not None]
    assert [int(m.sum()) for m in jax.tree.leaves(state.masks)] == expected_counts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny run, uninterrupted, trained and evaluated once for the tests that read it: its
    workdir, its results, what it printed and the names of the functions it compiled."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    printed = io.StringIO()
    with compiled_function_names() as compiles, contextlib.redirect_stdout(printed):
        results = train_and_evaluate(tiny_digits_config(), workdir)
    return SimpleNamespace(workdir=workdir, results=results, printed=printed.getvalue(), compiles=compiles)


def test_a_run_compiles_each_of_its_programs_once(tiny_run):
    counts = collections.Counter(tiny_run.compiles)
    assert counts["jit(train_step)"] >= 1  # the listener hears this run's compiles
    # at most once each (none when an earlier test of this process compiled the same program):
    # one eval forward pass serves the periodic evaluation, the weight average and the last
    # iterate; the reports' mask statistics are one program, shared by the run summary, the
    # logging intervals, the average's support check and the evaluation
    for name in ("train_step", "mask_update_step", "snapshot_step", "model_outputs", "odin_fn", "mask_statistics"):
        assert counts[f"jit({name})"] <= 1, (name, counts)
    assert not {"jit(_mean)", "jit(count_nonzero)", "jit(_where)"} & set(counts)  # no eager per-layer ops


def test_resume_equals_uninterrupted(tmp_path, tiny_run):
    config = tiny_digits_config()
    # interrupted twice: mid-epoch (step 37) and right after a mask update (step 45)
    assert train_and_evaluate(config, tmp_path / "b", evaluate_at_end=False, stop_at_step=37) == {}
    assert train_and_evaluate(config, tmp_path / "b", evaluate_at_end=False, stop_at_step=45) == {}
    train_and_evaluate(config, tmp_path / "b", evaluate_at_end=False)
    a, meta_a = restore_final(config, tiny_run.workdir)
    b, meta_b = restore_final(config, tmp_path / "b")
    assert meta_a["step"] == meta_b["step"] == 80
    flat_a, tree_a = jax.tree.flatten(a)
    flat_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the logged curves agree, except the two log windows (7 steps) a resumption cut short
    def curve(workdir):
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {(r["step"], r["kind"]): {k: v for k, v in r.items() if k != "time"} for r in records}

    curve_a, curve_b = curve(tiny_run.workdir), curve(tmp_path / "b")
    assert set(curve_a) == set(curve_b)
    cut = {(42, "train"), (49, "train")}
    assert {k: v for k, v in curve_a.items() if k not in cut} == {k: v for k, v in curve_b.items() if k not in cut}


def test_run_writes_results_and_averages_on_the_final_mask(tiny_run):
    results, out, workdir = tiny_run.results, tiny_run.printed, tiny_run.workdir
    assert "weight average of 3 snapshots" in out  # ends of epochs 6, 7, 8
    assert "| ACC | ECE |" in out and "AUROC" in out and "FPR95" in out
    saved = json.loads((workdir / "eval.json").read_text())
    assert saved["classification"]["acc"] == results["classification"]["acc"]
    assert set(saved["ood"]["moon_msp"]) == {"digits_photos", "gaussian_noise", "uniform_noise", "mean"}
    assert results["classification"]["acc"] > 0.8
    # the last iterate beside the average (primary score only), the training fit, p(unknown)
    last = saved["last_iterate"]
    assert last["model"] == "last iterate (step 80)" and last["score"] == "moon_msp"
    assert set(last["ood"]) == set(saved["ood"]["moon_msp"]) and 0.5 < last["classification"]["acc"] <= 1.0
    assert last["ood"]["mean"]["auroc"] != saved["ood"]["moon_msp"]["mean"]["auroc"]
    assert saved["train_subset_classification"]["num_examples"] == 320
    assert saved["train_subset_classification"]["acc"] > 0.8
    assert 0.0 < saved["unknown_probability"]["id"] < 1.0 and set(saved["unknown_probability"]["ood"]) == {
        "digits_photos", "gaussian_noise", "uniform_noise"}
    # measured density of the averaged model equals the final masks' density (exact zeros elsewhere)
    state, _ = restore_final(tiny_digits_config(), workdir)
    masks = [m for m in jax.tree.leaves(state.masks, is_leaf=lambda x: x is None) if m is not None]
    assert results["density"]["masked_weights"] == sum(m.size for m in masks)
    mask_density = sum(int(m.sum()) for m in masks) / results["density"]["masked_weights"]
    assert 0.05 < mask_density < 0.2
    assert results["density"]["masked_layers_nonzero_fraction"] == pytest.approx(mask_density, rel=1e-6)
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "eval"}
    alphas = [r["alpha"] for r in records if r["kind"] == "train"]
    assert alphas[0] == 0.0 and alphas[-1] == pytest.approx(1.0, rel=1e-4)


@pytest.mark.slow
def test_short_real_cifar10_run_learns(tmp_path):
    config = load_config("cifar10_resnet18")
    config.model.width = 8
    config.data.num_train_examples = 10000
    config.data.num_test_examples = 2000
    config.data.ood_datasets = ("mnist",)
    config.data.num_ood_examples = 1000
    config.train.epochs = 6
    config.train.constant_lr_epochs = 2
    config.train.eval_every_epochs = 0
    config.train.checkpoint_every_epochs = 0
    config.train.progress_bar = False
    config.moon.warmup_epochs = 2
    config.moon.averaging_epochs = 2
    config.sparse.end_fraction = 0.6
    results = train_and_evaluate(config, tmp_path)
    assert results["classification"]["acc"] > 0.40  # chance is 0.10; measured 0.497
    assert results["classification"]["ece"] < 0.15
    assert results["ood"]["moon_msp"]["mnist"]["auroc"] > 0.5


def test_cigl_random_mask_option_trains_and_keeps_masks(tmp_path):
    config = short_digits_config(epochs=4)
    config.moon.dropconnect_rate = 0.01  # the reference's CigL setting (dpnum = 100)
    results = train_and_evaluate(config, tmp_path)
    state, _ = restore_final(config, tmp_path)
    checked = 0
    for mask, p in zip(jax.tree.leaves(state.masks, is_leaf=lambda x: x is None), jax.tree.leaves(state.params)):
        if mask is not None:
            assert not np.any(np.asarray(p)[~np.asarray(mask)])
            checked += 1
    assert checked > 0, "no masked layer was checked"
    assert results["classification"]["acc"] > 0.5


def test_tensorboard_summaries_when_a_writer_is_installed(tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    class FakeWriter:
        def __init__(self, logdir):
            calls.append(("init", logdir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=FakeWriter))
    from moon_jax.training.reporting import MetricWriter, read_metrics

    writer = MetricWriter(tmp_path)
    writer.write(7, "train", {"loss": 0.5, "alpha": 0.25})
    writer.close()
    assert calls[0] == ("init", str(tmp_path / "tensorboard"))
    assert ("train/loss", 0.5, 7) in calls and ("train/alpha", 0.25, 7) in calls and calls[-1] == ("close",)
    assert read_metrics(tmp_path) == [dict(read_metrics(tmp_path)[0], step=7, kind="train", loss=0.5, alpha=0.25)]


def test_progress_in_a_log_is_one_line_per_five_percent():
    import io

    from moon_jax.training.reporting import ProgressBar

    log = io.StringIO()  # not a terminal
    bar = ProgressBar(1000, 0, stream=log)
    for step in range(1, 1001):
        bar.update(step, (step - 1) // 100, 10, {"loss": 1.0 / step, "accuracy": 0.5})
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 21  # the first update, then every 50 steps, the last at 1000
    assert lines[0].startswith("1/1000 (0%) epoch 1/10 loss 1 accuracy 0.5")
    assert lines[10].startswith("501/1000 (50%) epoch 6/10")
    assert lines[-1].startswith("1000/1000 (100%) epoch 10/10 loss 0.001") and "ETA 00:00" in lines[-1]
    assert "\r" not in log.getvalue()


def test_progress_on_a_terminal_is_a_rich_bar_redrawn_in_place():
    import io

    from moon_jax.training.reporting import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    bar = ProgressBar(100, 40, stream=term)  # a resumed run starts at step 40
    for step in range(41, 101):
        bar.update(step, 0, 1, {"loss": 0.25})
    bar.close()
    out = term.getvalue()
    assert "\r" in out and out.count("\n") <= 2  # redrawn in place, one final line
    assert "100/100" in out and "epoch 1/1 loss 0.25" in out and "it/s" in out
    disabled = Terminal()
    quiet = ProgressBar(100, 0, enabled=False, stream=disabled)
    quiet.update(50, 0, 1, {})
    quiet.close()
    assert disabled.getvalue() == ""


def test_tensorboard_event_file_is_written_with_the_declared_writer(tmp_path):
    from tensorboardX.event_file_writer import EventFileWriter  # noqa: F401  (the declared dependency)

    from moon_jax.training.reporting import MetricWriter

    writer = MetricWriter(tmp_path)
    writer.write(3, "train", {"loss": 0.5})
    writer.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"train/loss" in events[0].read_bytes()
