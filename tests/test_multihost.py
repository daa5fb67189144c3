"""A multi-host job on one machine: two ``train.py`` processes x 4 virtual CPU devices, talking
through JAX's coordination service and gloo over the loopback interface.

With the batch in 8 shards averaged in a fixed order (``train.batch_shards=8``,
``train.exact_reduction=True``) the job must give what one process with 8 devices gives:
identical masks and the same eval.json. Its checkpoint, written by both processes, must be
evaluated by ``eval.py`` in one process. SIGTERM to one process must stop both at the same step
with a checkpoint; a SIGKILL of one process must stop the other with one ``error:`` line within a
bounded time; and starting both again must resume to the same final eval.json as the
uninterrupted job. Every wait has a timeout, so nothing can hang CI.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import REPO
from moon_jax.devices import DataParallel
from moon_jax.programs.runtime import PEER_LOST
from moon_jax.training import Checkpointer, abstract_train_state, build_run
from moon_jax.training.config import config_from_dict

CONFIG_FILE = '''
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_digits_config


def get_config():
    config = tiny_digits_config()
    config.train.checkpoint_every_epochs = 1
    config.train.eval_batch_size = 400
    config.train.batch_shards = 8
    config.train.exact_reduction = True
    return config
'''

RUN_TIMEOUT_S = 600
#: How long the processes may take to stop after a signal to one of them.
STOP_BOUND_S = 60
#: eval.json fields that name when or where, not what.
VOLATILE = ("evaluated_at", "plots")
TIMINGS: dict = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("MOON_JAX_MULTIHOST", None)
    return env


class Job:
    """Processes of one ``train.py`` / ``eval.py`` job, output in ``<log>.<process>.out/err``."""

    def __init__(self, tmp_path: Path, workdir: Path, processes: int, name: str = "", program: str = "train.py",
                 extra=()):
        config = tmp_path / "tiny_multihost.py"
        config.write_text(CONFIG_FILE.format(tests=str(REPO / "tests")))
        self.logs = []
        self.processes = []
        port = free_port()
        for index in range(processes):
            args = [sys.executable, str(REPO / program), f"--workdir={workdir}", *extra]
            if program == "train.py":
                args.append(f"--config={config}")
            if processes > 1:
                args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                         f"--process_id={index}"]
            log = tmp_path / f"{name or workdir.name}.{index}"
            out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")
            self.logs.append(log)
            self.processes.append(subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=err,
                                                   env=environment(8 // processes)))
            out.close()
            err.close()

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        """Exit statuses of every process; all are killed when one overruns ``timeout``."""
        deadline = time.time() + timeout
        try:
            return [p.wait(timeout=max(deadline - time.time(), 1)) for p in self.processes]
        finally:
            self.kill()

    def kill(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    def stderr(self, index: int) -> str:
        return Path(f"{self.logs[index]}.err").read_text()

    def check_success(self) -> None:
        codes = self.wait()
        assert codes == [0] * len(codes), "\n".join(self.stderr(i)[-3000:] for i in range(len(codes)))


def timed(name: str, job: Job) -> None:
    start = time.time()
    job.check_success()
    TIMINGS[name] = round(time.time() - start, 1)


def results(path: Path) -> dict:
    record = json.loads(path.read_text())
    return {k: v for k, v in record.items() if k not in VOLATILE}


def final_state(workdir: Path):
    """The final train state of a run, restored in this (one-device) process."""
    config = config_from_dict(json.loads((workdir / "config.json").read_text()))
    data, setup = build_run(config, with_ood=False)
    abstract = abstract_train_state(setup, data.image_shape, DataParallel().replicated)
    state, _ = Checkpointer(workdir).restore(abstract, config)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def wait_for_checkpoint(workdir: Path, step: int, job: Job, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / str(step)).is_dir():
        assert time.time() < deadline and all(p.poll() is None for p in job.processes), "no checkpoint appeared"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2 x 4 job and the 1 x 8 run of the same config."""
    tmp_path = tmp_path_factory.mktemp("multihost")
    two, one = tmp_path / "two_by_four", tmp_path / "one_by_eight"
    timed("2x4 run", Job(tmp_path, two, 2))
    timed("1x8 run", Job(tmp_path, one, 1))
    return tmp_path, two, one


@pytest.mark.slow
def test_two_processes_match_one_process_with_eight_devices(runs):
    _, two, one = runs
    output = {name: (two.parent / name).read_text() for name in ("two_by_four.0.out", "two_by_four.1.out",
                                                                "two_by_four.1.err")}
    assert "devices: 8 x cpu" in output["two_by_four.0.out"]
    assert "[Gloo]" in output["two_by_four.1.out"] + output["two_by_four.1.err"]  # really two processes over gloo
    assert results(two / "eval.json") == results(one / "eval.json")
    a, b = final_state(two), final_state(one)
    assert a.keys() == b.keys()
    masks = [k for k in a if ".masks" in k and a[k].dtype == bool]
    assert len(masks) >= 2
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (two / "metrics.jsonl").read_text().count("\n") == (one / "metrics.jsonl").read_text().count("\n")


@pytest.mark.slow
def test_the_cooperative_checkpoint_is_evaluated_in_one_process(runs):
    tmp_path, two, _ = runs
    output = tmp_path / "single" / "eval.json"
    start = time.time()
    Job(tmp_path, two, 1, "eval", program="eval.py", extra=[f"--output={output}", "--noplots"]).check_success()
    TIMINGS["eval.py, 1 process"] = round(time.time() - start, 1)
    assert results(output) == results(two / "eval.json")


def signal_process_1(tmp_path: Path, workdir: Path, name: str, step: int, signum: int):
    """Starts a 2-process job, sends ``signum`` to process 1 once the checkpoint of ``step`` is
    written, and returns the job and its exit statuses (all within :data:`STOP_BOUND_S`)."""
    job = Job(tmp_path, workdir, 2, name)
    wait_for_checkpoint(workdir, step, job)
    job.processes[1].send_signal(signum)
    sent = time.time()
    codes = job.wait(timeout=STOP_BOUND_S)
    TIMINGS[f"{signal.Signals(signum).name} to process 1 -> all stopped"] = round(time.time() - sent, 1)
    return job, codes


@pytest.mark.slow
def test_stops_of_one_process_and_both_resume_to_the_same_result(runs):
    tmp_path, two, _ = runs
    workdir = tmp_path / "stopped"
    # SIGTERM to one process: both agree on a step, save one checkpoint there and exit with 143
    job, codes = signal_process_1(tmp_path, workdir, "terminated", 20, signal.SIGTERM)
    assert codes == [143, 143], job.stderr(0)[-3000:] + job.stderr(1)[-3000:]
    saved = [int(line.split("at step ")[1].split()[0]) for i in (0, 1) for line in job.stderr(i).splitlines()
             if "saved a checkpoint" in line]
    assert len(saved) == 2 and saved[0] == saved[1] > 20 and (workdir / "checkpoints" / str(saved[0])).is_dir()

    # SIGKILL of one process: the other stops at once with one error line
    job, codes = signal_process_1(tmp_path, workdir, "killed", 40, signal.SIGKILL)
    assert codes == [PEER_LOST, -signal.SIGKILL], job.stderr(0)[-3000:]
    errors = [line for line in job.stderr(0).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "process 1" in errors[0], job.stderr(0)[-3000:]
    assert "Traceback" not in job.stderr(0) and "Check failure" not in job.stderr(0)
    assert not (workdir / "eval.json").exists()

    resumed = Job(tmp_path, workdir, 2, "resumed")
    timed("resume of both processes", resumed)
    assert "resuming" in Path(f"{resumed.logs[0]}.out").read_text()
    assert results(workdir / "eval.json") == results(two / "eval.json")
    print("multihost timings (s):", TIMINGS)
