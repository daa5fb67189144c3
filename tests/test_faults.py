"""Nothing lost when things go wrong: a full disk, Ctrl-C, two runs on one workdir, stale files
of a killed run, a damaged newest checkpoint, a read-only workdir, divergence, wrong value types.

Each fault is produced for real where the machine allows it (a small tmpfs, a read-only bind
mount, real signals, two processes); mounting needs root, as CI has.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_digits_config
from moon_jax.programs import explicit_overrides, prepare_config
from moon_jax.reproduction.records import save_records
from moon_jax.training.checkpoint import Checkpointer
from moon_jax.training.config import scale_phases_to_epochs
from moon_jax.training.files import WriteError, append_line, read_json_lines
from moon_jax.training.run_directory import RunDirectory

CONFIG_FILE = '''
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_digits_config


def get_config():
    config = tiny_digits_config()
    config.train.checkpoint_every_epochs = {checkpoint_every}
    config.train.epochs = {epochs}
    config.train.constant_lr_epochs = {epochs} // 4
    config.moon.averaging_epochs = {epochs} // 4
    return config
'''


#: A run long enough (40,000 steps) that it is still training whatever the machine's load when a
#: test signals it or starts a second run beside it.
LONG_RUN_EPOCHS = 4000


def config_file(tmp_path, epochs=8, checkpoint_every=1) -> Path:
    path = tmp_path / f"config_{epochs}_{checkpoint_every}.py"
    path.write_text(CONFIG_FILE.format(tests=str(REPO / "tests"), epochs=epochs, checkpoint_every=checkpoint_every))
    return path


def train_command(config, workdir, *extra):
    return [sys.executable, str(REPO / "train.py"), f"--config={config}", f"--workdir={workdir}", *extra]


def run(command, timeout=300):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def start(command):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error_line(stderr: str, *needles: str) -> str:
    """Exactly one ``error:`` line, no traceback, containing every needle; returns the line."""
    lines = error_lines(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def wait_for(predicate, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def metrics_lines(workdir) -> int:
    path = Path(workdir) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@contextlib.contextmanager
def mounted(target: Path, *options: str, source: str = "tmpfs"):
    """A mount for the duration of the block (skips the test where mounting is not allowed)."""
    target.mkdir(parents=True, exist_ok=True)
    kind = ["-t", "tmpfs"] if source == "tmpfs" else ["--bind"]
    out = subprocess.run(["mount", *kind, *(["-o", ",".join(options)] if options else []), source, str(target)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount here ({out.stderr.strip()}); CI runs as root and can")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill_disk(directory: Path, leave_bytes: int) -> Path:
    """Fills the filesystem of ``directory`` until ``leave_bytes`` are free; returns the filler."""
    filler = directory / "filler"
    free = shutil.disk_usage(directory).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))
    return filler


# ----------------------------------------------------------------------------- the full disk
@pytest.mark.slow
def test_full_disk_is_one_error_line_keeps_the_checkpoint_and_resumes(tmp_path):
    config = config_file(tmp_path)
    with mounted(tmp_path / "disk", "size=48m") as disk:
        workdir = disk / "run"
        out = run(train_command(config, workdir, "--stop_at_step=30"))
        assert out.returncode == 0, out.stderr[-3000:]
        assert Checkpointer(workdir).latest_step() == 30
        filler = fill_disk(disk, leave_bytes=16 * 1024)
        out = run(train_command(config, workdir))
        line = assert_one_error_line(out.stderr, "no space left", str(workdir), "MB needed", "re-run the same command")
        assert out.returncode == 2, out.stderr[-2000:]
        # every record in the log is whole, and the newest complete checkpoint is the one from before
        text = (workdir / "metrics.jsonl").read_text()
        assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines()), line
        assert Checkpointer(workdir).latest_step() == 30
        filler.unlink()
        out = run(train_command(config, workdir))
        assert out.returncode == 0, out.stderr[-3000:]
        assert "resuming" in out.stdout and "from the checkpoint at step 30" in out.stdout
        assert json.loads((workdir / "eval.json").read_text())["checkpoint_step"] == 80
        # eval.py on a full disk prints its table, then names the file it could not write
        filler = fill_disk(disk, leave_bytes=4 * 1024)
        out = run([sys.executable, str(REPO / "eval.py"), f"--workdir={workdir}", "--noplots"])
        assert out.returncode == 2
        assert_one_error_line(out.stderr, "no space left", str(workdir / "eval.json"))
        assert "| ACC | ECE |" in out.stdout
        filler.unlink()


def test_run_records_on_a_full_disk_keep_the_older_copy_and_reproduce_stops_before_training(tmp_path):
    """A run's records copied onto a full disk: one WriteError naming the file, and the older copy
    there stays whole; reproduce.py with a full --records folder prints one error line before it
    starts any run."""
    run_dir = tmp_path / "runs" / "rigl_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "eval.json").write_text(json.dumps({"version": 1}))
    with mounted(tmp_path / "disk", "size=1m") as disk:
        save_records([run_dir], disk)
        (run_dir / "eval.json").write_text(json.dumps({"version": 2, "padding": "x" * 200_000}))
        filler = fill_disk(disk, leave_bytes=16 * 1024)
        with pytest.raises(WriteError, match=f"no space left on the device to write {disk / 'rigl_s0' / 'eval.json'}"):
            save_records([run_dir], disk)
        assert json.loads((disk / "rigl_s0" / "eval.json").read_text()) == {"version": 1}
        filler.unlink()
        fill_disk(disk, leave_bytes=0)
        root = tmp_path / "root"
        out = run([sys.executable, str(REPO / "reproduce.py"), f"--config={REPO / 'configs' / 'default.py'}",
                   "--methods=rigl", f"--root={root}", f"--output={tmp_path / 'R.md'}", f"--records={disk}"])
        assert_one_error_line(out.stderr, "no space left", str(disk))
        assert out.returncode == 2 and not root.exists()

def test_a_failed_append_leaves_no_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    append_line(path, json.dumps({"step": 1}))
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(Exception, match="no space left on the device to write"):
        append_line(path, json.dumps({"step": 2, "loss": 0.5}))
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 7, "kind": "train", "loss": 1.0}\n{"step": 14, "kind": "tr')
    assert read_json_lines(path) == [{"step": 7, "kind": "train", "loss": 1.0}]
    assert "line 2 is incomplete" in capsys.readouterr().err
    run_dir = RunDirectory(tmp_path)
    run_dir.truncate_metrics(100)
    assert path.read_text() == '{"step": 7, "kind": "train", "loss": 1.0}\n'


# ----------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_says_so_and_resumes(tmp_path):
    config = config_file(tmp_path, epochs=LONG_RUN_EPOCHS, checkpoint_every=0)
    workdir = tmp_path / "run"
    process = start(train_command(config, workdir))
    assert wait_for(lambda: metrics_lines(workdir) >= 2, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("Ctrl-C: saved a checkpoint at step")]
    step = int(line.split("at step ")[1].split()[0])
    assert step > 0 and Checkpointer(workdir).latest_step() == step
    out = run(train_command(config, workdir, f"--stop_at_step={step + 3}"))
    assert out.returncode == 0 and f"from the checkpoint at step {step}" in out.stdout, out.stderr[-2000:]


def test_a_second_ctrl_c_aborts_at_once_saying_so():
    code = (
        "import os, signal, time\n"
        "from moon_jax.training.stopping import StopRequests\n"
        "with StopRequests(lambda: 'the checkpoint at step 5 is intact') as stops:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.2)\n"
        "    assert stops.requested == ('Ctrl-C', 130), stops.requested\n"
        "    print('first Ctrl-C noted', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "print('not aborted')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 130, out.stderr[-2000:]
    assert out.stdout.strip() == "first Ctrl-C noted"
    assert_one_error_line(out.stderr, "second Ctrl-C", "the checkpoint at step 5 is intact")


def test_stop_requests_restore_the_previous_handlers():
    from moon_jax.training.stopping import StopRequests

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopRequests():
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# ----------------------------------------------------------------------------- two runs, one workdir
@pytest.mark.slow
def test_a_second_run_on_the_same_workdir_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    config = config_file(tmp_path, epochs=LONG_RUN_EPOCHS, checkpoint_every=0)
    workdir = tmp_path / "run"
    first = start(train_command(config, workdir))
    assert wait_for(lambda: metrics_lines(workdir) >= 1, first)
    began = time.time()
    second = run(train_command(config, workdir), timeout=120)
    assert time.time() - began < 60
    assert second.returncode == 2
    assert_one_error_line(second.stderr, f"in use by another training run (process {first.pid}", "another --workdir")
    assert first.poll() is None  # the first run goes on untouched
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = run(train_command(config, workdir, "--stop_at_step=12"))
    assert third.returncode == 0, third.stderr[-3000:]


# ----------------------------------------------------------------------------- stale files
@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_leaves_nothing_stale(tmp_path):
    workdir = tmp_path / "run"
    killed = start(train_command(config_file(tmp_path, epochs=LONG_RUN_EPOCHS, checkpoint_every=0), workdir))
    assert wait_for(lambda: metrics_lines(workdir) >= 2, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    old_records = (workdir / "metrics.jsonl").read_text()
    assert Checkpointer(workdir).latest_step() is None
    other = config_file(tmp_path, epochs=8, checkpoint_every=1)
    out = run(train_command(other, workdir, "--stop_at_step=14"))
    assert out.returncode == 0, out.stderr[-3000:]
    (stale,) = [p for p in workdir.iterdir() if p.name.startswith("stale-")]
    assert (stale / "metrics.jsonl").read_text() == old_records
    assert json.loads((stale / "config.json").read_text())["train"]["epochs"] == LONG_RUN_EPOCHS
    assert json.loads((workdir / "config.json").read_text())["train"]["epochs"] == 8
    assert [r["step"] for r in read_json_lines(workdir / "metrics.jsonl")] == [7, 14]


# ----------------------------------------------------------------------------- damaged checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("finished")
    out = run(train_command(config_file(tmp_path), tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / "run"


def damage(workdir, step):
    for f in (Path(workdir) / "checkpoints" / str(step) / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_gives_way_to_the_newest_that_restores(tmp_path, finished_run):
    workdir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    steps = sorted(Checkpointer(workdir).all_steps())
    assert steps == [70, 80]
    damage(workdir, 80)
    out = run([sys.executable, str(REPO / "eval.py"), f"--workdir={workdir}", "--noplots"])
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [x for x in out.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "step 80" in warnings[0] and "step 70" in warnings[0], out.stderr[-3000:]
    assert len(out.stderr.splitlines()) <= 3, out.stderr
    assert json.loads((workdir / "eval.json").read_text())["checkpoint_step"] == 70
    assert (workdir / "checkpoints" / "80").is_dir()  # kept, not deleted
    # train.py resumes from step 70 and finishes the run again
    out = run(train_command(config_file(tmp_path), workdir))
    assert out.returncode == 0 and "from the checkpoint at step 70" in out.stdout, out.stderr[-3000:]
    assert (workdir / "damaged_checkpoints" / "80").is_dir()  # set aside, still kept
    # none restores: one error line
    for step in Checkpointer(workdir).all_steps():
        damage(workdir, step)
    out = run([sys.executable, str(REPO / "eval.py"), f"--workdir={workdir}", "--noplots"])
    assert out.returncode == 2
    assert_one_error_line(out.stderr, "no checkpoint in", "can be read")


# ----------------------------------------------------------------------------- write failures
@pytest.mark.slow
def test_a_read_only_workdir_prints_the_results_then_one_error_line(tmp_path, finished_run):
    source = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (source / "eval.json").unlink()
    with mounted(tmp_path / "readonly", "ro", source=str(source)) as workdir:
        out = run([sys.executable, str(REPO / "eval.py"), f"--workdir={workdir}"])
        assert out.returncode == 2
        assert_one_error_line(out.stderr, "read-only", str(workdir))
        assert "weight average of" in out.stdout  # the table came first
        out = run(train_command(config_file(tmp_path), workdir / "new"))
        assert out.returncode == 2
        assert_one_error_line(out.stderr, "read-only", str(workdir / "new"))


# ----------------------------------------------------------------------------- divergence
@pytest.mark.slow
def test_after_divergence_resuming_with_a_lower_learning_rate_works(tmp_path, finished_run):
    workdir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    shutil.rmtree(workdir / "checkpoints" / "80")
    config = config_file(tmp_path)
    refused = run(train_command(config, workdir, "--config.train.base_lr=0.05"))
    assert refused.returncode == 2 and "train.base_lr: checkpoint has 0.1, config has 0.05" in refused.stderr
    not_optimiser = run(train_command(config, workdir, "--config.sparse.sparsity=0.8",
                                      "--resume_with_changed=sparse.sparsity"))
    assert_one_error_line(not_optimiser.stderr, "sparse.sparsity cannot change within a run")
    out = run(train_command(config, workdir, "--config.train.base_lr=0.05", "--resume_with_changed=train.base_lr"))
    assert out.returncode == 0 and "from the checkpoint at step 70" in out.stdout, out.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["train"]["base_lr"] == 0.05


# ----------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("argument, needle", [
    ("--config.train.epochs=abc", "config.train.epochs"),
    ("--stop_at_step=soon", "stop_at_step"),
])
def test_a_value_of_the_wrong_type_is_one_error_line(tmp_path, argument, needle):
    out = run([sys.executable, str(REPO / "train.py"), argument, f"--workdir={tmp_path / 'run'}"], timeout=120)
    assert out.returncode == 2
    assert_one_error_line(out.stderr, needle)
    assert not (tmp_path / "run").exists()


def test_changing_the_epochs_scales_the_phases_unless_given():
    config = tiny_digits_config()  # 8 epochs: constant lr 2, warm-up 2, averaging 2, checkpoint every 2
    lines = []
    argv = ["train.py", "--config.train.epochs=16", "--config.moon.warmup_epochs=3"]
    config.train.epochs = 16
    config.moon.warmup_epochs = 3
    prepare_config(config, argv, file_epochs=8, say=lines.append)
    assert (config.train.constant_lr_epochs, config.moon.averaging_epochs, config.moon.warmup_epochs) == (4, 4, 3)
    assert (config.train.checkpoint_every_epochs, config.train.eval_every_epochs) == (4, 8)
    assert len(lines) == 1 and "train.constant_lr_epochs 2 -> 4" in lines[0] and "warmup" not in lines[0]
    assert explicit_overrides(argv) == {"train.epochs", "moon.warmup_epochs"}


def test_scaling_keeps_intervals_on_and_rounds_phases_down():
    config = tiny_digits_config()
    config.train.epochs = 3
    changed = scale_phases_to_epochs(config, 8)
    assert changed["train.checkpoint_every_epochs"] == (2, 1)
    assert changed["moon.averaging_epochs"] == (2, 0)


@pytest.mark.slow
def test_a_short_run_takes_one_option(tmp_path):
    out = run([sys.executable, str(REPO / "train.py"), "--config.train.epochs=3", f"--workdir={tmp_path / 'run'}",
               "--stop_at_step=2"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--config.train.epochs=3: phases scaled with it" in out.stdout


def test_a_relative_dataset_path_is_stored_resolved(tmp_path, monkeypatch):
    (tmp_path / "my_ood").mkdir()
    monkeypatch.chdir(tmp_path)
    config = tiny_digits_config()
    config.data.ood_datasets = ("./my_ood", "digits_photos")
    prepare_config(config, [], file_epochs=config.train.epochs, say=lambda _: None)
    assert config.data.ood_datasets == (str(tmp_path / "my_ood"), "digits_photos")


def test_a_users_ood_set_is_far_unless_named_near():
    from moon_jax.metrics import ood_groups
    from moon_jax.training.input_pipeline import ood_display_names

    labels = ood_display_names(["near:/data/my_cifar_like", "/data/my_noise", "mnist", "far:tin_resize"])
    assert labels == ["near:my_cifar_like", "my_noise", "mnist", "far:tin_resize"]
    assert ood_groups(labels) == {"near": ["near:my_cifar_like"], "far": ["my_noise", "mnist", "far:tin_resize"]}


def test_divergence_advice_without_a_checkpoint_says_what_works(tmp_path):
    from moon_jax.training.loop import CheckedSaver, NonFiniteError

    with RunDirectory(tmp_path) as run_dir:
        saver = CheckedSaver(run_dir, tiny_digits_config(), steps_per_epoch=10)
        with pytest.raises(NonFiniteError) as err:
            saver.stop_if_nonfinite(5)
    message = str(err.value)
    assert "at step 5 (epoch 1)" in message and "no checkpoint was saved yet" in message
    assert "--config.train.base_lr=0.05" in message and "starts a new run in this workdir" in message
    assert "resume" not in message
