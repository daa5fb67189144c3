"""Training throughput of ResNet-18 on 32x32 images: a plain Flax/Optax dense step beside the
library's dense, RigL 90% and MOON + RigL 90% steps, and the real training loop.

    python benchmarks/train_throughput.py                            # GPU: batch 128, fp32
    python benchmarks/train_throughput.py --batch 512 --dtype bfloat16
    python benchmarks/train_throughput.py --width 8 --batch 32 --steps 8 --update-every 8 --repeats 3 \\
        --loop-train-examples 512 --loop-epochs 8                    # a CPU smoke run

Everything runs in one process, so the ratios compare like with like.

**Steps.** Each configuration runs ``--steps`` iterations back to back with one block at the end
(the device queue stays full, as in training), after a warm-up that compiles every variant. The
library's steps follow the real schedule: RigL and MOON + RigL run their mask-update step at
every ``--update-every``-th iteration (so its cost is amortised as in training) and MOON takes a
weight snapshot at the last iteration of the window (once per epoch in training). The
configurations are measured in turn, ``--repeats`` rounds interleaved (plain, dense, RigL, MOON,
plain, dense, ...), so a slow phase of the machine hits them all; each row prints the min /
median / max images/s over the rounds, and the ratio of medians to the plain dense step.

**Real loop.** ``training.train`` itself -- input pipeline from the packed CIFAR-10 (dataset on
device), logging, asynchronous checkpoints every epoch, weight snapshots, the BatchNorm refresh at
the end -- for dense and for MOON + RigL, ``--loop-epochs`` epochs over ``--loop-train-examples``
training images, in fresh workdirs, without the persistent compilation cache. Two figures per run:
steady-state images/s from the median epoch time over epochs 2 to E - 1 (each epoch timed by a
per-epoch callback that waits for the device; the median leaves out the few epochs that compile
something: the weight-snapshot step, and on small runs the metric summary of the first logging
interval, so give it at least 6 epochs, 8 on a CPU smoke run), and the wall time of the whole call, compilation included (what the
user waits for). The ratio is MOON + RigL / dense of the same loop.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from common import METHODS, library_config, library_steps, plain_dense_step, synthetic_batch
from moon_jax.devices import DataParallel
from moon_jax.training import build_run, train


def timed_window(run_steps) -> float:
    """Seconds for one window of steps, blocked once at the end."""
    t0 = time.perf_counter()
    jax.block_until_ready(run_steps())
    return time.perf_counter() - t0


def plain_runner(width: int, dtype: str, batch: int, steps: int, placement: DataParallel):
    step, state = plain_dense_step(width, dtype)
    images, labels = synthetic_batch(batch, placement.batch)
    holder = {"state": state}

    def run():
        loss = None
        for _ in range(steps):
            holder["state"], loss = step(holder["state"], images, labels)
        return loss

    return run


def library_runner(method: str, moon: bool, width: int, dtype: str, batch: int, steps: int, update_every: int, placement):
    config = library_config(method, moon, batch, dtype, width, update_every)
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


def real_loop(method: str, moon: bool, args) -> tuple[float, float]:
    """``(steady-state images/s, wall seconds of the whole call)`` of ``training.train``."""
    config = library_config(method, moon, args.batch, args.dtype, args.width, args.update_every)
    config.data.dataset = "cifar10"
    config.data.num_train_examples = args.loop_train_examples
    config.data.ood_datasets = ()
    config.train.epochs = args.loop_epochs
    config.train.constant_lr_epochs = 1
    config.train.checkpoint_every_epochs = 1
    config.train.eval_every_epochs = 1
    config.train.progress_bar = False
    config.moon.warmup_epochs = 1
    config.moon.averaging_epochs = 1 if moon else 0
    config.sparse.end_fraction = (args.loop_epochs - 1.5) / args.loop_epochs
    ends = []

    def mark_epoch_end(setup, state):
        jax.block_until_ready(state.params)
        ends.append(time.perf_counter())
        return {}

    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        data, setup = build_run(config, with_ood=False)
        train(config, os.path.join(workdir, "run"), data, setup, periodic_eval=mark_epoch_end)
        wall = time.perf_counter() - t0
    epoch_seconds = statistics.median(np.diff(ends))
    return setup.schedule.steps_per_epoch * args.batch / epoch_seconds, wall


def describe(values: list[float]) -> str:
    return f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the real network)")
    parser.add_argument("--steps", type=int, default=80, help="steps per timed window")
    parser.add_argument("--update-every", type=int, default=80, help="mask update every this many steps")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--loop-epochs", type=int, default=6, help="epochs of the real-loop runs (0: skip them; else at least 4)")
    parser.add_argument("--loop-train-examples", type=int, default=50000)
    args = parser.parse_args()
    os.environ["MOON_JAX_COMPILATION_CACHE"] = "0"

    placement = DataParallel()
    runners = {"plain Flax/Optax dense": plain_runner(args.width, args.dtype, args.batch, args.steps, placement)}
    for label, method, moon in METHODS:
        runners[label] = library_runner(method, moon, args.width, args.dtype, args.batch, args.steps, args.update_every, placement)
    for run in runners.values():  # warm-up: compiles every variant
        timed_window(run)
    rates = {label: [] for label in runners}
    for _ in range(args.repeats):
        for label, run in runners.items():
            rates[label].append(args.steps * args.batch / timed_window(run))

    device = jax.devices()[0]
    print(
        f"\nResNet-18 (width {args.width}) 32x32 training throughput, batch {args.batch}, {args.dtype}, on "
        f"{jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}; windows of "
        f"{args.steps} steps (mask update every {args.update_every}), {args.repeats} interleaved rounds\n"
    )
    print("| what | images/s min / median / max | ratio (median) |")
    print("| --- | ---: | ---: |")
    plain = statistics.median(rates["plain Flax/Optax dense"])
    for label, values in rates.items():
        print(f"| {label} step | {describe(values)} | {statistics.median(values) / plain:.3f} x plain dense |")
    if args.loop_epochs:
        loops = {label: real_loop(method, moon, args) for label, method, moon in (METHODS[0], METHODS[2])}
        dense_rate, dense_wall = loops["dense"]
        for label, (rate, wall) in loops.items():
            print(
                f"| real loop, {label}: {args.loop_epochs} epochs x {args.loop_train_examples} images | "
                f"{rate:,.0f} (steady); whole call {wall:.1f} s | {rate / dense_rate:.3f} x dense loop "
                f"(whole call {dense_wall / wall:.3f}) |"
            )


if __name__ == "__main__":
    main()
