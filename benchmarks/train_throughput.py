"""Training throughput of ResNet-18 on 32x32 images: a plain Flax/Optax dense step beside the
library's dense, RigL 90% and MOON + RigL 90% steps, and the real training loop.

    python benchmarks/train_throughput.py                            # GPU: batch 128, fp32
    python benchmarks/train_throughput.py --batch 512 --dtype bfloat16
    python benchmarks/train_throughput.py --width 8 --batch 32 --steps 8 --update-every 8 --repeats 3 \\
        --loop-train-examples 512 --loop-epochs 8                    # a CPU smoke run
    python benchmarks/train_throughput.py --model small_cnn --batch 16 --steps 4 --update-every 2 \\
        --repeats 2 --loop-train-examples 256 --loop-epochs 7        # seconds: a tiny stand-in model

Everything runs in one process, so the ratios compare like with like.

**Steps.** Each configuration runs ``--steps`` iterations back to back with one block at the end
(the device queue stays full, as in training), after a warm-up that compiles every variant. The
library's steps follow the real schedule: RigL and MOON + RigL run their mask-update step at
every ``--update-every``-th iteration (so its cost is amortised as in training) and MOON takes a
weight snapshot at the last iteration of the window (once per epoch in training). The
configurations are measured in turn, ``--repeats`` rounds interleaved (plain, dense, RigL, MOON,
plain, dense, ...), so a slow phase of the machine hits them all; each row prints the min /
median / max images/s over the rounds, and the ratio of medians to the plain dense step.

**Compilation is kept out of the steady figures.** JAX reports every trace, lowering and XLA
compilation through ``jax.monitoring``; a window (or epoch) during which any of them happened is
left out of the min / median / max, and the seconds spent compiling are printed separately. So
a late compilation (a variant the warm-up missed, a retrace) shows as a count under the table
instead of as a slow round.

**Real loop.** ``training.train`` itself -- input pipeline from the packed CIFAR-10 (dataset on
device), logging, asynchronous checkpoints every ``train.checkpoint_every_epochs`` epochs as the
reference recipe has it (5), weight snapshots, the BatchNorm refresh at the end -- for dense and
for MOON + RigL, ``--loop-epochs`` epochs over ``--loop-train-examples`` training images, in fresh
workdirs, without the persistent compilation cache. Two figures per run: steady-state images/s
from the median time of the compile-free epochs among epochs 2 to E - 1 (each epoch timed by a
per-epoch callback that waits for the device; the default 7 epochs put the checkpoint after
epoch 5 inside a timed epoch), and the wall time of the whole call, compilation included (what
the user waits for), with the seconds it spent compiling. The ratio is MOON + RigL / dense of the
same loop.

``--json PATH`` also writes every number as JSON (``benchmarks/device_check.py`` reads it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import jax

from common import METHODS, MODELS, library_config, library_steps, model_title, plain_dense_step, synthetic_batch
from moon_jax.devices import DataParallel
from moon_jax.training import build_run, train

#: The jax.monitoring duration events of compilation: tracing to a jaxpr, lowering it, and XLA's compile.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileMonitor:
    """Counts the compilation events JAX reports (``jax.monitoring``) and the seconds they took,
    so that a timed window can tell whether something compiled inside it."""

    def __init__(self):
        self.events = 0
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            self.events += 1
            self.seconds += duration

    def mark(self) -> tuple[int, float]:
        """``(events, seconds)`` so far, to subtract from a later mark."""
        return self.events, self.seconds


def timed_window(run_steps, monitor: CompileMonitor) -> tuple[float, int]:
    """``(seconds, compilation events)`` of one window of steps, blocked once at the end."""
    events_before, _ = monitor.mark()
    t0 = time.perf_counter()
    jax.block_until_ready(run_steps())
    return time.perf_counter() - t0, monitor.mark()[0] - events_before


def plain_runner(width: int, dtype: str, batch: int, steps: int, placement: DataParallel, model: str = "resnet18"):
    step, state = plain_dense_step(width, dtype, model)
    images, labels = synthetic_batch(batch, placement.batch)
    holder = {"state": state}

    def run():
        loss = None
        for _ in range(steps):
            holder["state"], loss = step(holder["state"], images, labels)
        return loss

    return run


def library_runner(method: str, moon: bool, width: int, dtype: str, batch: int, steps: int, update_every: int, placement,
                   model: str = "resnet18"):
    config = library_config(method, moon, batch, dtype, width, update_every, model)
    setup, compiled, state = library_steps(config, placement)
    images, labels = synthetic_batch(batch, placement.batch)
    holder = {"state": state}
    updates_masks = setup.updater.changes_masks

    def run():
        metrics = None
        for i in range(steps):
            if updates_masks and (i + 1) % update_every == 0:
                holder["state"], metrics = compiled.mask_update(holder["state"], images, labels)
            else:
                snapshot = setup.uses_averaging and i == steps - 1
                holder["state"], metrics = compiled.train(holder["state"], images, labels)
                if snapshot:
                    holder["state"] = compiled.snapshot(holder["state"])
        return metrics["loss"]

    return run


def time_steps(runners: dict, args, monitor: CompileMonitor) -> dict:
    """Warm-up (compiles every variant), then ``--repeats`` interleaved rounds: per label, the
    images/s of each compile-free window, the windows left out, and the warm-up's compile seconds."""
    _, compile_before = monitor.mark()
    for run in runners.values():
        timed_window(run, monitor)
    warmup_compile = monitor.mark()[1] - compile_before
    rates = {label: [] for label in runners}
    left_out = {label: 0 for label in runners}
    for _ in range(args.repeats):
        for label, run in runners.items():
            seconds, compiled = timed_window(run, monitor)
            if compiled:
                left_out[label] += 1
            else:
                rates[label].append(args.steps * args.batch / seconds)
    return {"rates": rates, "windows_left_out": left_out, "warmup_compile_seconds": warmup_compile}


def loop_config(method: str, moon: bool, args):
    """The reference recipe shrunk to the real-loop run: ``--loop-epochs`` epochs over
    ``--loop-train-examples`` images, a timing callback every epoch, checkpoints at the recipe's
    interval, MOON's warm-up and averaging one epoch each."""
    config = library_config(method, moon, args.batch, args.dtype, args.width, args.update_every, args.model)
    config.data.dataset = "cifar10"
    config.data.num_train_examples = args.loop_train_examples
    config.data.ood_datasets = ()
    config.train.epochs = args.loop_epochs
    config.train.constant_lr_epochs = 1
    config.train.eval_every_epochs = 1  # the timing callback
    config.train.progress_bar = False
    config.moon.warmup_epochs = 1
    config.moon.averaging_epochs = 1 if moon else 0
    config.sparse.end_fraction = (args.loop_epochs - 1.5) / args.loop_epochs
    return config


def real_loop(method: str, moon: bool, args, monitor: CompileMonitor) -> dict:
    """``training.train`` timed: steady images/s over the compile-free epochs 2 to E - 1, how
    many epochs that is, the whole call's seconds and the seconds it spent compiling."""
    config = loop_config(method, moon, args)
    marks = []  # (time, compilation events so far) at each epoch end

    def mark_epoch_end(setup, state):
        jax.block_until_ready(state.params)
        marks.append((time.perf_counter(), monitor.mark()[0]))
        return {}

    events_before, compile_before = monitor.mark()
    # the run's own log lines go to stderr, so that stdout holds the table alone
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        data, setup = build_run(config, with_ood=False)
        train(config, os.path.join(workdir, "run"), data, setup, periodic_eval=mark_epoch_end)
        wall = time.perf_counter() - t0
    epochs = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
    clean = [seconds for seconds, compiled in epochs if not compiled]
    images = setup.schedule.steps_per_epoch * args.batch
    return {
        "steady_images_per_second": images / statistics.median(clean) if clean else None,
        "compile_free_epochs": len(clean),
        "timed_epochs": len(epochs),
        "wall_seconds": wall,
        "compile_seconds": monitor.mark()[1] - compile_before,
        "compile_events": monitor.mark()[0] - events_before,
    }


def describe(values: list[float]) -> str:
    if not values:
        return "n/a (every window compiled)"
    return f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}"


def median_or_none(values: list[float]):
    return statistics.median(values) if values else None


def ratio(value, base) -> str:
    return f"{value / base:.3f}" if value and base else "n/a"


def print_step_table(steps: dict, args) -> None:
    device = jax.devices()[0]
    print(
        f"\n{model_title(args.model, args.width)} 32x32 training throughput, batch {args.batch}, {args.dtype}, on "
        f"{jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}; windows of "
        f"{args.steps} steps (mask update every {args.update_every}), {args.repeats} interleaved rounds\n"
    )
    print("| what | images/s min / median / max | ratio (median) |")
    print("| --- | ---: | ---: |")
    plain = median_or_none(steps["rates"]["plain Flax/Optax dense"])
    for label, values in steps["rates"].items():
        print(f"| {label} step | {describe(values)} | {ratio(median_or_none(values), plain)} x plain dense |")


def print_loop_rows(loops: dict, args) -> None:
    dense = loops["dense"]
    for label, loop in loops.items():
        rate = loop["steady_images_per_second"]
        steady = f"{rate:,.0f}" if rate else "n/a"
        print(
            f"| real loop, {label}: {args.loop_epochs} epochs x {args.loop_train_examples} images | "
            f"{steady} (steady, {loop['compile_free_epochs']} compile-free of {loop['timed_epochs']} timed epochs); "
            f"whole call {loop['wall_seconds']:.1f} s, compiling {loop['compile_seconds']:.1f} s | "
            f"{ratio(rate, dense['steady_images_per_second'])} x dense loop "
            f"(whole call {ratio(dense['wall_seconds'], loop['wall_seconds'])}) |"
        )


def print_compile_note(steps: dict) -> None:
    left_out = {label: n for label, n in steps["windows_left_out"].items() if n}
    note = ", ".join(f"{label} {n}" for label, n in left_out.items()) or "none"
    print(f"\nCompiling: {steps['warmup_compile_seconds']:.1f} s in the warm-up; windows left out because "
          f"something compiled in them: {note}.")


def write_json(path, results: dict) -> None:
    """Writes ``results`` to ``path`` (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the real network)")
    parser.add_argument("--model", default="resnet18", choices=MODELS, help="small_cnn: a tiny stand-in for smoke runs")
    parser.add_argument("--steps", type=int, default=80, help="steps per timed window")
    parser.add_argument("--update-every", type=int, default=80, help="mask update every this many steps")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--loop-epochs", type=int, default=7, help="epochs of the real-loop runs (0: skip them; else at least 4)")
    parser.add_argument("--loop-train-examples", type=int, default=50000)
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    return parser.parse_args()


def main():
    args = parse_args()
    os.environ["MOON_JAX_COMPILATION_CACHE"] = "0"
    monitor = CompileMonitor()
    placement = DataParallel()
    runners = {"plain Flax/Optax dense": plain_runner(args.width, args.dtype, args.batch, args.steps, placement, args.model)}
    for label, method, moon in METHODS:
        runners[label] = library_runner(method, moon, args.width, args.dtype, args.batch, args.steps, args.update_every,
                                        placement, args.model)
    steps = time_steps(runners, args, monitor)
    print_step_table(steps, args)
    results = {"args": vars(args), "device_kind": jax.devices()[0].device_kind, "steps": steps, "loops": {}}
    write_json(args.json, results)
    if args.loop_epochs:
        for label, method, moon in (METHODS[0], METHODS[2]):
            results["loops"][label] = real_loop(method, moon, args, monitor)
            write_json(args.json, results)  # what is measured so far survives a time limit
        print_loop_rows(results["loops"], args)
    print_compile_note(steps)


if __name__ == "__main__":
    main()
