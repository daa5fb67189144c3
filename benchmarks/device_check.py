"""Everything worth measuring on a GPU lent for a few minutes, in one command that keeps to a time
budget and writes a few small files (Markdown and JSON tables) into an output folder.

    python3 benchmarks/device_check.py --out "$OUT" --wheels .whl --data .device_data   # a GPU, ~520 s
    python benchmarks/device_check.py --smoke --out /tmp/device_check                 # CPU, tiny sizes

docs/DEVICE.md gives the exact steps (wheels, data, the device call). Phases, in order, each with
a share of ``--budget-seconds`` as its time limit (a phase that finishes early leaves its time to
the comparison):

1. ``wheels`` (with ``--wheels``): the carried wheels installed into a scratch folder that every
   child process has on its path (the GPU machine has no network).
2. ``versions`` (6%): device, driver, and the versions of Python, JAX and the libraries.
3. ``throughput_float32`` (28%), ``throughput_bfloat16`` (12%): ``benchmarks/train_throughput.py``
   alone on the device; the real training loop in float32 only.
4. ``comparison`` (the rest, at least a third, less 3% kept for the report): dense, RigL and MOON +
   RigL of ``configs/cifar10_resnet18.py``, seed 0, three ``train.py`` at once (as ``reproduce.py
   --parallel=3`` runs them), for as many epochs as the time left allows: the epoch count comes
   from the float32 throughput just measured (or ``--comparison-epochs``), the recipe's phases
   scaled with it; when not even two epochs fit, ``--stop_at_step`` stops the runs early. A guard
   sends SIGTERM to any run still training shortly before the phase's end (train.py saves a
   checkpoint and exits 143) and kills whatever is left at the end; the report says per run how
   far it got: steps and epochs, the evaluation when it finished, else its last metrics.
5. ``step_cost``: ``benchmarks/step_cost.py`` in float32 and bfloat16, two processes that only
   compile, run beside the comparison (no device memory preallocated; 12% of the budget on their
   own when the comparison is not run), so their minute goes to training.

A phase that fails or runs out of time is recorded (exit status, the last lines of its output)
and the next one runs. Written into ``--out`` (nothing large, no checkpoints):
``device_check.md`` (every table), ``device_check.json`` (the same numbers), ``comparison.md``
(the reproduction report of the finished runs) and ``logs.txt`` (the end of every child's output).

``--smoke`` runs the same phases on the CPU with a tiny stand-in model and a slice of the data
(tests/test_device_check.py), so that the first real run on a GPU has already worked once.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
OUTPUT_FILES = ("device_check.md", "device_check.json", "comparison.md", "logs.txt")
PHASES = ("versions", "step_cost", "throughput_float32", "throughput_bfloat16", "comparison")
#: Each phase's time limit as a share of the budget; the comparison gets what is left.
SHARES = {"versions": 0.06, "step_cost": 0.12, "throughput_float32": 0.28, "throughput_bfloat16": 0.12}
REPORT_SHARE = 0.03  # kept back for writing the report
COMPARISON_CONFIG = "configs/cifar10_resnet18.py"
COMPARISON_METHODS = ("dense", "rigl", "moon_rigl")
PARALLEL = 3
MIN_EPOCHS = 2  # MOON needs train.epochs > warmup_epochs + 1
SLACK = 1.25  # the measured step rates leave out periodic evaluation and three processes' host work
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"  # compiles ~2x faster
LOG_LINES = 40  # lines of each child's output kept in logs.txt


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each phase runs: the real sizes on a GPU, tiny ones for the CPU smoke run."""

    step_cost: tuple[str, ...]
    throughput: tuple[str, ...]
    comparison_overrides: tuple[str, ...]
    max_epochs: int  # the recipe's length caps the comparison
    train_images: int  # training images of the comparison runs
    batch: int
    fixed_startup_seconds: float  # imports, data decoding, evaluation compile of one train.py
    eval_reserve_seconds: float  # the final evaluation of a run
    grace_seconds: float  # from SIGTERM to the phase's end: a checkpoint is saved in it
    assumed_images_per_second: float  # per run, when nothing was measured


REAL = Sizes(
    step_cost=("--compile-rounds", "1", "--algorithms", "rigl,gmp,ste_magnitude"),
    throughput=("--repeats", "3", "--steps", "80", "--loop-train-examples", "12800", "--loop-epochs", "7"),
    comparison_overrides=(),
    max_epochs=100, train_images=50000, batch=128,
    fixed_startup_seconds=30.0, eval_reserve_seconds=60.0, grace_seconds=30.0, assumed_images_per_second=3000.0,
)
SMOKE = Sizes(
    step_cost=("--model", "small_cnn", "--batch", "8", "--compile-rounds", "0"),
    throughput=("--model", "small_cnn", "--batch", "16", "--steps", "4", "--update-every", "2", "--repeats", "2",
                "--loop-train-examples", "256", "--loop-epochs", "7"),
    comparison_overrides=(
        "--config.model.name=small_cnn", "--config.data.num_train_examples=256", "--config.data.num_test_examples=200",
        "--config.data.num_ood_examples=200", "--config.train.batch_size=32", "--config.train.eval_batch_size=100",
        "--config.train.log_every_steps=4", "--config.sparse.update_every=2",
    ),
    max_epochs=5, train_images=256, batch=32,
    fixed_startup_seconds=20.0, eval_reserve_seconds=40.0, grace_seconds=15.0, assumed_images_per_second=200.0,
)


# ----------------------------------------------------------------------------- time and processes
class Clock:
    """The budget: seconds since the start and seconds left."""

    def __init__(self, budget: float):
        self.start = time.monotonic()
        self.budget = budget

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


@dataclasses.dataclass
class PhaseResult:
    """How a phase went: ``status`` is ok, failed, timed out or skipped; ``output`` is what its
    child printed on stdout (the tables), ``error_tail`` the last lines of its stderr."""

    name: str
    status: str
    seconds: float = 0.0
    time_limit: float = 0.0
    returncode: Optional[int] = None
    command: str = ""
    output: str = ""
    error_tail: str = ""
    note: str = ""

    def summary(self) -> dict:
        """The result without its output, for the JSON file."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "output"}


def tail(text: str, lines: int = LOG_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def stop_process_group(proc: subprocess.Popen, wait_seconds: float = 3.0) -> None:
    """SIGTERM to a child's process group (it was started in its own session), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_seconds)
        except subprocess.TimeoutExpired:
            pass


def start_children(jobs: Sequence[tuple[str, Sequence[str], Optional[dict]]], log_dir: Path) -> list[tuple]:
    """Starts ``(name, command, env)`` jobs at once, each in its own process group, stdout and
    stderr to files in ``log_dir``."""
    started = []
    for name, command, env in jobs:
        out, err = open(log_dir / f"{name}.out", "w"), open(log_dir / f"{name}.err", "w")
        proc = subprocess.Popen(list(command), cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)
        started.append((name, command, proc, out, err, time.monotonic()))
    return started


def finish_children(started: list[tuple], time_limit: float, log_dir: Path) -> list[PhaseResult]:
    """Waits for started children until ``time_limit`` seconds after their start, stops those
    still running, and returns one result per child."""
    results = []
    for name, command, proc, out, err, t0 in started:
        try:
            proc.wait(timeout=max(0.0, t0 + time_limit - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            stop_process_group(proc)
            timed_out = True
        out.close()
        err.close()
        results.append(child_result(name, command, proc.returncode, timed_out, time.monotonic() - t0, time_limit, log_dir))
    return results


def run_children(jobs: Sequence[tuple[str, Sequence[str], Optional[dict]]], time_limit: float, log_dir: Path) -> list[PhaseResult]:
    """Runs jobs at once (:func:`start_children`), each stopped at ``time_limit`` seconds."""
    return finish_children(start_children(jobs, log_dir), time_limit, log_dir)


def child_result(name, command, returncode, timed_out, seconds, time_limit, log_dir: Path) -> PhaseResult:
    """A finished child's result, read from its output files."""
    output = (log_dir / f"{name}.out").read_text(errors="replace")
    errors = (log_dir / f"{name}.err").read_text(errors="replace")
    status = "timed out" if timed_out else ("ok" if returncode == 0 else "failed")
    return PhaseResult(name, status, round(seconds, 1), round(time_limit, 1), returncode,
                       shlex.join(str(c) for c in command), output, tail(errors, 20))


def child_env(base: dict, repo_first: Sequence[str] = ()) -> dict:
    """The children's environment: the repository (and installed wheels) first on the path, so
    the checkout's ``moon_jax`` is the one imported, and unbuffered output, so that what a child
    printed before a time limit stopped it is kept."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *repo_first, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def phase_limit(name: str, clock: Clock, phases: Sequence[str]) -> float:
    """``name``'s time limit: its share of the budget, within the time left after keeping the
    report's share and, when the comparison runs later, a third of the budget for it."""
    keep = REPORT_SHARE * clock.budget + (clock.budget / 3 if "comparison" in phases and name != "comparison" else 0)
    return max(0.0, min(SHARES[name] * clock.budget, clock.left() - keep))


# ----------------------------------------------------------------------------- the phases
def install_wheels(wheel_dir: Path, site: Path, python: str, log_dir: Path) -> PhaseResult:
    """Installs every wheel of ``wheel_dir`` into ``site`` without the network or dependencies."""
    wheels = sorted(str(p) for p in wheel_dir.glob("*.whl"))
    if not wheels:
        return PhaseResult("wheels", "failed", note=f"no .whl files in {wheel_dir}")
    command = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--upgrade", "--target", str(site), *wheels]
    result = run_children([("wheels", command, dict(os.environ))], 120, log_dir)[0]
    result.note = ", ".join(Path(w).name for w in wheels)
    return result


def print_versions() -> None:
    """(Run as a child: it initialises the accelerator.) Prints the device and library versions
    as one JSON object."""
    from importlib import metadata

    import jax

    packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "scikit-learn", "pillow",
                "ml_collections", "tensorboardX", "absl-py", "rich", "matplotlib")
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    devices = jax.devices()
    memory = getattr(devices[0], "memory_stats", lambda: None)() or {}
    import moon_jax

    print(json.dumps({
        "python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(), "device_count": len(devices),
        "device_kind": devices[0].device_kind, "platform": devices[0].platform,
        "device_memory_gib": round(memory["bytes_limit"] / 2**30, 1) if "bytes_limit" in memory else None,
        "moon_jax": str(Path(moon_jax.__file__).parent), "packages": versions,
    }))


def nvidia_smi() -> str:
    """``nvidia-smi``'s name, memory, driver and clocks of each GPU, or why there is none."""
    query = "name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=15)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"not available ({type(err).__name__})"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown (no git checkout)"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"


def versions_phase(python: str, env: dict, limit: float, log_dir: Path) -> tuple[PhaseResult, dict]:
    """The device and versions (``print_versions`` in a child), nvidia-smi and the commit."""
    result = run_children([("versions", [python, __file__, "--print-versions"], env)], limit, log_dir)[0]
    info = {"nvidia_smi": nvidia_smi(), "commit": git_commit()}
    try:
        info.update(json.loads(result.output.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        if result.status == "ok":
            result.status, result.note = "failed", "printed no JSON"
    return result, info


def step_cost_jobs(python: str, env: dict, sizes: Sizes) -> list[tuple]:
    """``step_cost.py`` in float32 and bfloat16: two processes that compile and hardly use the
    device, so they can run at once and beside the comparison (no memory preallocated)."""
    env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    script = str(BENCHMARKS / "step_cost.py")
    return [(f"step_cost_{dtype}", [python, script, *sizes.step_cost, "--dtype", dtype], env)
            for dtype in ("float32", "bfloat16")]


def throughput_phase(dtype: str, python: str, env: dict, sizes: Sizes, limit: float, log_dir: Path) -> tuple[PhaseResult, dict]:
    """``train_throughput.py`` in ``dtype`` (the real loop in float32 only) and its JSON numbers."""
    json_path = log_dir / f"throughput_{dtype}.json"
    loop = () if dtype == "float32" else ("--loop-epochs", "0")
    command = [python, str(BENCHMARKS / "train_throughput.py"), *sizes.throughput, *loop, "--dtype", dtype,
               "--json", str(json_path)]
    result = run_children([(f"throughput_{dtype}", command, env)], limit, log_dir)[0]
    try:
        numbers = json.loads(json_path.read_text())
    except (OSError, ValueError):
        numbers = {}
    return result, numbers


# ----------------------------------------------------------------------------- the comparison's length
def median_rate(throughput: dict, label: str) -> Optional[float]:
    rates = throughput.get("steps", {}).get("rates", {}).get(label) or []
    return statistics.median(rates) if rates else None


def per_run_rates(throughput: dict, assumed: float) -> tuple[dict, str]:
    """Images/s of one dense, RigL and MOON + RigL run alone on the device, and where they come
    from: the real loop's steady rates (RigL's scaled by its step rate against dense's), else the
    step rates less a fifth for the loop's own work, else ``assumed``."""
    loops = throughput.get("loops", {})
    dense_loop = (loops.get("dense") or {}).get("steady_images_per_second")
    moon_loop = (loops.get("MOON + RigL 90%") or {}).get("steady_images_per_second")
    steps = {m: median_rate(throughput, label) for m, label in
             (("dense", "dense"), ("rigl", "RigL 90%"), ("moon_rigl", "MOON + RigL 90%"))}
    if dense_loop and moon_loop:
        rigl = dense_loop * steps["rigl"] / steps["dense"] if steps["rigl"] and steps["dense"] else (dense_loop + moon_loop) / 2
        return {"dense": dense_loop, "rigl": rigl, "moon_rigl": moon_loop}, "the float32 real loop's steady rates"
    if all(steps.values()):
        return {m: 0.8 * r for m, r in steps.items()}, "the float32 step rates less a fifth"
    return {m: assumed for m in COMPARISON_METHODS}, f"nothing measured: an assumed {assumed:g} images/s per run"


def startup_seconds(throughput: dict, sizes: Sizes) -> float:
    """Seconds before a comparison run trains at full speed: the real loop's whole call less its
    epochs (setup and compilation), more when three runs share too few CPU cores, plus a fixed
    part for imports, the OOD sets and the evaluation's compilation."""
    args, overheads = throughput.get("args", {}), []
    for loop in throughput.get("loops", {}).values():
        rate = loop.get("steady_images_per_second")
        if rate and args.get("batch"):
            epoch_images = args["loop_train_examples"] // args["batch"] * args["batch"]
            overheads.append(loop["wall_seconds"] - args["loop_epochs"] * epoch_images / rate)
    contention = 1.5 * max(1.0, PARALLEL / (os.cpu_count() or 1))
    return sizes.fixed_startup_seconds + contention * max(overheads, default=30.0)


def plan_epochs(seconds: float, epoch_seconds: float, startup: float, eval_reserve: float, steps_per_epoch: int,
                max_epochs: int, min_epochs: int = MIN_EPOCHS) -> dict:
    """How long the comparison runs can be in ``seconds``: ``{"epochs": E, "stop_at_step": N or
    None}``. E epochs (at most ``max_epochs``) when startup, E epochs and the evaluation fit;
    else ``min_epochs`` with ``stop_at_step`` at the steps that fit (no evaluation); ``epochs``
    None when not one step fits."""
    epochs = math.floor((seconds - startup - eval_reserve) / epoch_seconds) if epoch_seconds > 0 else max_epochs
    if epochs >= min_epochs:
        return {"epochs": min(epochs, max_epochs), "stop_at_step": None}
    steps = math.floor((seconds - startup) / epoch_seconds * steps_per_epoch)
    if steps < 1:
        return {"epochs": None, "stop_at_step": None}
    return {"epochs": min_epochs, "stop_at_step": min(steps, min_epochs * steps_per_epoch - 1)}


def override_value(overrides: Sequence[str], field: str, default: int) -> int:
    """The integer a ``--config.<field>=N`` override gives (the last one wins), else ``default``."""
    for override in reversed(overrides):
        if override.startswith(f"--config.{field}="):
            return int(override.split("=", 1)[1])
    return default


def comparison_plan(seconds: float, throughput: dict, sizes: Sizes, overrides: Sequence[str],
                    forced_epochs: Optional[int]) -> dict:
    """The comparison's epochs (or stop step) for ``seconds``, with the estimate behind it."""
    batch = override_value(overrides, "train.batch_size", sizes.batch)
    steps_per_epoch = (override_value(overrides, "data.num_train_examples", sizes.train_images) or sizes.train_images) // batch
    rates, source = per_run_rates(throughput, sizes.assumed_images_per_second)
    epoch_seconds = SLACK * steps_per_epoch * batch * sum(1 / r for r in rates.values())
    startup = startup_seconds(throughput, sizes)
    plan = {"seconds": round(seconds, 1), "steps_per_epoch": steps_per_epoch, "batch": batch, "rates_source": source,
            "images_per_second_alone": {m: round(r, 1) for m, r in rates.items()},
            "epoch_seconds_three_at_once": round(epoch_seconds, 2), "startup_seconds": round(startup, 1),
            "eval_reserve_seconds": sizes.eval_reserve_seconds}
    if forced_epochs:
        plan.update(epochs=forced_epochs, stop_at_step=None, why="--comparison-epochs")
    else:
        plan.update(plan_epochs(seconds, epoch_seconds, startup, sizes.eval_reserve_seconds, steps_per_epoch,
                                sizes.max_epochs), why="estimated")
    return plan


# ----------------------------------------------------------------------------- the comparison runs
def comparison_specs(plan: dict, sizes: Sizes, extra_overrides: Sequence[str], root: Path, python: str):
    """The three train.py runs (``reproduce.py``'s plan), with the planned epochs and stop step."""
    from moon_jax.reproduction.planning import RunSpec, check_specs, plan_runs

    overrides = [*sizes.comparison_overrides, *extra_overrides, f"--config.train.epochs={plan['epochs']}"]
    specs = plan_runs(str(REPO / COMPARISON_CONFIG), COMPARISON_METHODS, [0], root, overrides, python=python,
                      train_script=str(REPO / "train.py"))
    check_specs(specs)
    if plan["stop_at_step"]:
        specs = [RunSpec(s.method, s.seed, s.workdir, (*s.command, f"--stop_at_step={plan['stop_at_step']}")) for s in specs]
    return specs


def training_finished(log_path: Path) -> bool:
    """Whether train.py has logged the end of training (it is evaluating now)."""
    try:
        return "training done:" in log_path.read_text(errors="replace")
    except OSError:
        return False


def run_guarded(specs, env: dict, seconds: float, grace: float) -> list[dict]:
    """Runs the specs at once; ``grace`` seconds before ``seconds`` are up, SIGTERM to every run
    still training (it saves a checkpoint and exits 143; a run already evaluating goes on), and at
    the end SIGKILL to what is left. Returns per run: exit status, seconds, what the guard did."""
    from moon_jax.reproduction.workdirs import open_train_log

    t0 = time.monotonic()
    runs = []
    for spec in specs:
        log = open_train_log(spec)
        proc = subprocess.Popen(spec.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        runs.append({"spec": spec, "proc": proc, "log": log, "log_path": Path(log.name), "guard": None, "seconds": None})
    while any(r["proc"].poll() is None for r in runs):
        now = time.monotonic() - t0
        for run in (r for r in runs if r["proc"].poll() is None):
            if now >= seconds:
                stop_process_group(run["proc"])
                run["guard"] = "killed at the phase's end"
            elif now >= seconds - grace and run["guard"] is None and not training_finished(run["log_path"]):
                run["proc"].send_signal(signal.SIGTERM)
                run["guard"] = "SIGTERM: time guard"
        for run in runs:
            if run["seconds"] is None and run["proc"].poll() is not None:
                run["seconds"] = time.monotonic() - t0
        time.sleep(0.5)
    for run in runs:
        run["log"].close()
        run["seconds"] = run["seconds"] or time.monotonic() - t0
    return runs


def checkpoint_steps(workdir: Path) -> list[int]:
    """The steps of the complete checkpoints in a workdir (orbax names them by step)."""
    from moon_jax.training.run_directory import RunDirectory

    directory = RunDirectory(workdir).checkpoints_dir
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def run_progress(run: dict, planned_epochs: int, batch: int) -> dict:
    """How far a comparison run got: steps, epochs, checkpoints, its measured images/s, and the
    evaluation (when it finished) or its last metrics."""
    from moon_jax.training.run_directory import RunDirectory

    spec, run_dir = run["spec"], RunDirectory(run["spec"].workdir)
    log_text = run["log_path"].read_text(errors="replace") if run["log_path"].exists() else ""
    shape = re.search(r"(\d+) epochs x (\d+) steps", log_text)
    steps_per_epoch = int(shape.group(2)) if shape else None
    train_rows, eval_rows = run_dir.read_metrics("train"), run_dir.read_metrics("eval")
    checkpoints = checkpoint_steps(spec.workdir)
    step = max([r["step"] for r in train_rows + eval_rows] + checkpoints + [0])
    progress = {
        "method": spec.method, "returncode": run["proc"].returncode, "seconds": round(run["seconds"], 1),
        "guard": run["guard"], "step": step, "total_steps": steps_per_epoch * planned_epochs if steps_per_epoch else None,
        "epochs": round(step / steps_per_epoch, 2) if steps_per_epoch else None, "planned_epochs": planned_epochs,
        "checkpoints": checkpoints, "images_per_second": measured_rate(train_rows, batch),
        "last_train": train_rows[-1] if train_rows else None, "last_eval": eval_rows[-1] if eval_rows else None,
        "evaluated": run_dir.results_path.exists(), "final": final_metrics(run_dir), "log_tail": tail(log_text, 15),
    }
    progress["status"] = run_status(progress)
    return progress


def final_metrics(run_dir) -> Optional[dict]:
    """ACC, ECE, NLL and the primary score's mean AUROC (non-noise OOD sets) of a finished run's
    eval.json, in percent (NLL as is), or None before its evaluation."""
    from moon_jax.reproduction.stats import run_metrics

    results = run_dir.read_results() if run_dir.results_path.exists() else None
    if not results:
        return None
    metrics = run_metrics(results)
    return {k: round(100 * metrics[k], 2) if k != "nll" else round(metrics[k], 4)
            for k in ("acc", "ece", "nll", "auroc/mean") if k in metrics}


def measured_rate(train_rows: list[dict], batch: int) -> Optional[float]:
    """Training images/s between the first and the last logged training records."""
    if len(train_rows) < 2 or train_rows[-1]["time"] <= train_rows[0]["time"]:
        return None
    return round((train_rows[-1]["step"] - train_rows[0]["step"]) * batch / (train_rows[-1]["time"] - train_rows[0]["time"]), 1)


def run_status(progress: dict) -> str:
    """One phrase: finished and evaluated, stopped by the guard (where), stopped at the stop step, failed."""
    where = f"at step {progress['step']}" + (f" of {progress['total_steps']}" if progress["total_steps"] else "")
    if progress["evaluated"] and progress["returncode"] == 0:
        return "finished and evaluated"
    if progress["guard"]:
        saved = "checkpoint saved" if progress["checkpoints"] else "no checkpoint"
        return f"stopped by the time guard {where} ({progress['guard']}; exit {progress['returncode']}; {saved})"
    if progress["returncode"] == 0:
        return f"stopped {where} (--stop_at_step; checkpoint saved, no evaluation)"
    return f"failed {where} (exit {progress['returncode']}; see the log tail)"


def comparison_phase(args, sizes: Sizes, clock: Clock, throughput: dict, env: dict, scratch: Path) -> tuple[PhaseResult, dict]:
    """Plans, runs and follows the comparison within the time left less the report's share."""
    t0 = time.monotonic()
    seconds = clock.left() - REPORT_SHARE * clock.budget
    from moon_jax.reproduction.runner import child_environment

    plan = comparison_plan(seconds, throughput, sizes, [*sizes.comparison_overrides, *args.override], args.comparison_epochs)
    if plan["epochs"] is None:
        return PhaseResult("comparison", "skipped", note=f"not one step fits in {seconds:.0f} s"), {"plan": plan, "runs": []}
    specs = comparison_specs(plan, sizes, args.override, scratch / "comparison", sys.executable)
    env = child_environment(PARALLEL, dict(env, MOON_JAX_COMPILATION_CACHE=str(scratch / "xla_cache")))
    runs = run_guarded(specs, env, seconds - (time.monotonic() - t0), sizes.grace_seconds)
    record_wall_times(runs)
    progress = [run_progress(run, plan["epochs"], plan["batch"]) for run in runs]
    ok = all(p["status"] == "finished and evaluated" for p in progress)
    note = "; ".join(f"{p['method']}: {p['status']}" for p in progress)
    result = PhaseResult("comparison", "ok" if ok else "stopped", round(time.monotonic() - t0, 1), round(seconds, 1),
                         0 if ok else None, note=note)
    return result, {"plan": plan, "runs": progress, "specs": specs, "outcomes": runs}


def record_wall_times(runs: list[dict]) -> None:
    """Each run's wall time and exit status in its workdir, as reproduce.py records them."""
    from moon_jax.reproduction.runner import RunOutcome
    from moon_jax.reproduction.workdirs import record_wall_time

    for run in runs:
        record_wall_time(RunOutcome(run["spec"], run["proc"].returncode, run["seconds"]))


# ----------------------------------------------------------------------------- the report
def comparison_report(comparison: dict, device: str, invocation: str) -> str:
    """The reproduction report (``reproduce.py``'s) of the runs that finished and were evaluated."""
    from moon_jax.evaluation.checkpoint_eval import load_run_config
    from moon_jax.reproduction.driver import config_docstring
    from moon_jax.reproduction.methods import sparsity_level
    from moon_jax.reproduction.report import reproduction_report
    from moon_jax.reproduction.runner import RunOutcome
    from moon_jax.training.run_directory import RunDirectory

    results, outcomes = {}, []
    for run in comparison.get("outcomes", []):
        spec = run["spec"]
        outcomes.append(RunOutcome(spec, run["proc"].returncode, run["seconds"]))
        if run["proc"].returncode == 0 and RunDirectory(spec.workdir).results_path.exists():
            results[(spec.method, spec.seed)] = RunDirectory(spec.workdir).read_results()
    if not results:
        return "No comparison run finished its evaluation: see device_check.md for how far each got.\n"
    first_run = next(r["spec"].workdir for r in comparison["outcomes"] if (r["spec"].method, r["spec"].seed) in results)
    level = sparsity_level(load_run_config(first_run).sparse)
    return reproduction_report(
        f"Device check: {COMPARISON_CONFIG}, {comparison['plan']['epochs']} epochs", outcomes, results,
        COMPARISON_METHODS, level, device, invocation, scale=config_docstring(str(REPO / COMPARISON_CONFIG)))


def device_line(info: dict) -> str:
    if "device_kind" not in info:
        return "unknown device (the versions phase failed)"
    return f"{info['device_count']} x {info['device_kind']} ({info['platform']})"


def phases_table(results: Sequence[PhaseResult]) -> list[str]:
    lines = ["| phase | status | seconds | time limit (s) | exit | note |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in results:
        note = r.note.replace("|", "/")
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.time_limit:.0f} | "
                     f"{'' if r.returncode is None else r.returncode} | {note} |")
    return lines


def versions_table(info: dict) -> list[str]:
    lines = ["| what | value |", "| --- | --- |"]
    for key, value in info.items():
        if key == "packages":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        lines.append(f"| {key} | {str(value).replace(chr(10), '; ').replace('|', '/')} |")
    return lines


def progress_table(comparison: dict) -> list[str]:
    plan = comparison["plan"]
    stop = f", stopped at step {plan['stop_at_step']}" if plan.get("stop_at_step") else ""
    lines = [
        f"Planned: {plan['epochs']} epochs of {plan['steps_per_epoch']} steps{stop} ({plan['why']}; "
        f"{plan['seconds']:.0f} s for the phase; one epoch of the three runs at once estimated at "
        f"{plan['epoch_seconds_three_at_once']:.1f} s from {plan['rates_source']}; startup "
        f"{plan['startup_seconds']:.0f} s, evaluation {plan['eval_reserve_seconds']:.0f} s).", "",
        "| method | status | steps | epochs | seconds | images/s while training | checkpoints | last metrics (final: percent) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for p in comparison["runs"]:
        lines.append(f"| {p['method']} | {p['status']} | {p['step']} | {p['epochs']} | {p['seconds']:.1f} | "
                     f"{p['images_per_second'] or 'n/a'} | {', '.join(map(str, p['checkpoints'])) or 'none'} | "
                     f"{last_metrics(p)} |")
    return lines


def last_metrics(progress: dict) -> str:
    """The final evaluation's headline (percent), else the last periodic evaluation or training
    record, else "none"."""
    if progress["final"]:
        return "final: " + ", ".join(f"{k} {v}" for k, v in progress["final"].items())
    last = progress["last_eval"] or progress["last_train"]
    if not last:
        return "none"
    values = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "time", "kind") and isinstance(v, float))
    return f"{last['kind']} at step {last['step']}: {values}"


def shift_headings(markdown: str, levels: int = 2) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown, flags=re.M)


def markdown_report(header: dict, results: Sequence[PhaseResult], info: dict, comparison: dict, comparison_md: str) -> str:
    """device_check.md: the phases, the device, every benchmark table, the comparison's progress
    and its report, and the failures with the end of their output."""
    by_name = {r.name: r for r in results}
    lines = [f"# Device check, {header['date']}", "",
             f"{device_line(info)}; commit {info.get('commit', '?')}; budget {header['budget_seconds']:.0f} s, "
             f"used {header['elapsed_seconds']:.0f} s{'; SMOKE RUN (CPU, tiny sizes)' if header['smoke'] else ''}. "
             f"Made by `{header['command']}`.", "", "## Phases", "", *phases_table(results),
             "", "## Device and versions", "", *versions_table(info)]
    for name, title in (("step_cost_float32", "Step cost, float32"), ("step_cost_bfloat16", "Step cost, bfloat16"),
                        ("throughput_float32", "Training throughput, float32"),
                        ("throughput_bfloat16", "Training throughput, bfloat16")):
        if name in by_name:
            lines += ["", f"## {title}", "", by_name[name].output.strip() or f"(no output: {by_name[name].status})"]
    if comparison:
        lines += ["", "## Comparison: how far each run got", "", *progress_table(comparison),
                  "", "## Comparison report", "", shift_headings(comparison_md).strip()]
    failed = [r for r in results if r.status in ("failed", "timed out")]
    if failed:
        lines += ["", "## Failures and time limits", ""]
        for r in failed:
            lines += [f"**{r.name}**: {r.status}, exit {r.returncode}; `{r.command}`", "", "```",
                      r.error_tail or "(no stderr)", "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def logs_text(results: Sequence[PhaseResult], comparison: dict) -> str:
    parts = [f"==== {r.name} ({r.status}, exit {r.returncode})\n$ {r.command}\n-- stdout\n{tail(r.output)}\n"
             f"-- stderr\n{r.error_tail}\n" for r in results if r.command]
    parts += [f"==== train.py {p['method']} ({p['status']})\n{p['log_tail']}\n" for p in comparison.get("runs", [])]
    return "\n".join(parts)


def write_outputs(out: Path, header: dict, results, info: dict, comparison: dict) -> None:
    """Writes the four output files (small: tables and log tails only)."""
    out.mkdir(parents=True, exist_ok=True)
    comparison_md = ""
    if comparison:
        try:
            comparison_md = comparison_report(comparison, device_line(info), header["command"])
        except Exception as err:  # the report must not lose the rest of the measurements
            comparison_md = f"The comparison report failed: {type(err).__name__}: {err}\n"
    (out / "comparison.md").write_text(comparison_md or "The comparison phase did not run.\n")
    (out / "device_check.md").write_text(markdown_report(header, results, info, comparison, comparison_md))
    summary = {**header, "phases": [r.summary() for r in results], "versions": info,
               "comparison": {k: v for k, v in comparison.items() if k in ("plan", "runs")}}
    (out / "device_check.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "logs.txt").write_text(logs_text(results, comparison))


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    parser.add_argument("--budget-seconds", type=float, default=None, help="the whole run's time (default 520; smoke 600)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model and data: checks the script itself")
    parser.add_argument("--wheels", default=None, help="folder of wheels to install first (no network needed)")
    parser.add_argument("--data", default=None, help="folder of the packed .npz data (sets MOON_JAX_DATA_DIR)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--comparison-epochs", type=int, default=None, help="epochs of the comparison runs instead of the estimate")
    parser.add_argument("--override", action="append", default=[], help="a --config.a.b=value for every comparison run (repeatable)")
    parser.add_argument("--scratch", default=None, help="working folder (default: a new temporary folder)")
    parser.add_argument("--print-versions", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    if not args.print_versions and not args.out:
        parser.error("--out is required when $OUT is not set")
    if args.budget_seconds is None:
        args.budget_seconds = 600.0 if args.smoke else 520.0
    return args


def base_environment(args, site: Path) -> dict:
    """The environment every child starts from: the data folder, the CPU for a smoke run."""
    env = dict(os.environ)
    if args.data:
        env["MOON_JAX_DATA_DIR"] = str(Path(args.data).resolve())
        os.environ["MOON_JAX_DATA_DIR"] = env["MOON_JAX_DATA_DIR"]
    if args.smoke:  # the CPU, and XLA's cheapest compiles: a smoke run's numbers are not its point
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS"), SMOKE_XLA_FLAGS]))
    return child_env(env, [str(site)] if site.exists() else [])


def run_phases(args, clock: Clock, scratch: Path) -> tuple[list[PhaseResult], dict, dict]:
    """Every selected phase in order; returns the results, the versions and the comparison."""
    sizes, phases, python = (SMOKE if args.smoke else REAL), args.phases.split(","), sys.executable
    logs, site = scratch / "logs", scratch / "site"
    logs.mkdir(parents=True, exist_ok=True)
    results, info, comparison, throughput = [], {}, {}, {}
    if args.wheels:
        results.append(install_wheels(Path(args.wheels), site, python, logs))
        sys.path[:0] = [str(site)]
    sys.path[:0] = [str(REPO)]
    env = base_environment(args, site)
    if "versions" in phases:
        result, info = versions_phase(python, env, phase_limit("versions", clock, phases), logs)
        results.append(result)
    beside_comparison = "step_cost" in phases and "comparison" in phases
    if "step_cost" in phases and not beside_comparison:
        results += run_children(step_cost_jobs(python, env, sizes), phase_limit("step_cost", clock, phases), logs)
    for dtype in ("float32", "bfloat16"):
        if f"throughput_{dtype}" in phases:
            result, numbers = throughput_phase(dtype, python, env, sizes, phase_limit(f"throughput_{dtype}", clock, phases), logs)
            results.append(result)
            throughput = numbers if dtype == "float32" else throughput
    if "comparison" in phases:
        step_cost = start_children(step_cost_jobs(python, env, sizes), logs) if beside_comparison else []
        try:
            result, comparison = comparison_phase(args, sizes, clock, throughput, env, scratch)
        except Exception as err:  # recorded; the report is still written
            result = PhaseResult("comparison", "failed", note=f"{type(err).__name__}: {err}")
        if step_cost:  # they may go on until the report's share of the budget
            ran_for = time.monotonic() - step_cost[0][5]
            results += finish_children(step_cost, ran_for + max(0.0, clock.left() - REPORT_SHARE * clock.budget), logs)
        results.append(result)
    return results, info, comparison


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.print_versions:
        print_versions()
        return 0
    clock = Clock(args.budget_seconds)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="device_check_"))
    results, info, comparison = run_phases(args, clock, scratch)
    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": shlex.join(["python", "benchmarks/device_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "budget_seconds": args.budget_seconds, "elapsed_seconds": round(clock.elapsed(), 1), "smoke": args.smoke}
    write_outputs(Path(args.out), header, results, info, comparison)
    print((Path(args.out) / "device_check.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
