"""Training throughput of ResNet-18 on 32x32 images: dense vs RigL 90% vs MOON + RigL 90%.

    python benchmarks/train_throughput.py                  # batch 128 and 512, fp32 and bf16
    python benchmarks/train_throughput.py --batches 128 --dtypes float32 --steps 100
    python benchmarks/train_throughput.py --real-data      # + the real input pipeline on CIFAR-10

One process, one table. Per configuration: the median time of a training step on a synthetic
uint8 batch (on-device augmentation included), after warm-up; for RigL the mask-update step is
timed too and amortised at the default schedule (one mask update every ``--update-every`` = 80
iterations): ``(79 * step + mask_step) / 80``. images/s = batch / amortised step time; the ratio
column is relative to dense at the same batch size and dtype.

``--real-data`` adds, per batch size and dtype, the throughput of MOON + RigL over one epoch of
real CIFAR-10 (``../shared/data`` or ``MOON_JAX_DATA_DIR``) with the training loop's own input
pipeline (dataset on device, per-step gather), to compare with the synthetic figure.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from moon_jax.data import epoch_batch_indices
from moon_jax.training.config import base_config
from moon_jax.training.input_pipeline import DeviceDataset
from moon_jax.training.loop import Shardings, build_trainer

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def make_trainer(method: str, moon: bool, batch: int, dtype: str, update_every: int, width: int, mesh):
    config = base_config()
    config.model.name = "resnet18"
    config.model.dtype = dtype
    config.model.width = width
    config.train.batch_size = batch
    config.sparse.method = method
    config.sparse.update_every = update_every
    config.moon.enabled = moon
    return build_trainer(config, 50000, 10, (32, 32, 3), CIFAR_MEAN, CIFAR_STD, mesh)


def median_time(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_trainer(trainer, batch: int, steps: int, shard: Shardings) -> tuple[float, float]:
    """(median train-step seconds, median mask-update-step seconds or 0)."""
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8), shard.batch)
    labels = jax.device_put(rng.integers(0, 10, (batch,), dtype=np.int32), shard.batch)
    init = jax.jit(lambda k: trainer.init_state(k, (32, 32, 3)), out_shardings=shard.replicated)
    holder = {"state": init(jax.random.PRNGKey(0))}
    out = (shard.replicated, shard.replicated)
    step = jax.jit(trainer.train_step, donate_argnums=0, out_shardings=out)

    def run(fn):
        holder["state"], metrics = fn(holder["state"], images, labels)
        jax.block_until_ready(metrics["loss"])

    for _ in range(5):
        run(step)
    t_step = median_time(lambda: run(step), steps)
    t_mask = 0.0
    if trainer.updater.changes_masks:
        mask_step = jax.jit(trainer.mask_update_step, donate_argnums=0, out_shardings=out)
        for _ in range(3):
            run(mask_step)
        t_mask = median_time(lambda: run(mask_step), max(steps // 5, 3))
    return t_step, t_mask


def real_data_epoch(trainer, batch: int, shard: Shardings, max_steps: int) -> float:
    """images/s of MOON + RigL over (up to ``max_steps`` of) one real CIFAR-10 epoch."""
    from moon_jax.data import load_dataset

    train = DeviceDataset(load_dataset("cifar10", "train"), shard.replicated, shard.batch)
    init = jax.jit(lambda k: trainer.init_state(k, (32, 32, 3)), out_shardings=shard.replicated)
    state = init(jax.random.PRNGKey(0))
    out = (shard.replicated, shard.replicated)
    step = jax.jit(trainer.train_step, donate_argnums=0, out_shardings=out)
    mask_step = jax.jit(trainer.mask_update_step, donate_argnums=0, out_shardings=out)
    rows = epoch_batch_indices(train.size, batch, 0, 0)[:max_steps]
    for fn in (step, mask_step):  # compile both outside the timed epoch
        state, metrics = fn(state, *train.batch(rows[0]))
    jax.block_until_ready(metrics["loss"])
    t0 = time.perf_counter()
    for i, (images, labels) in enumerate(train.epoch_batches(rows, 0, 0)):
        fn = mask_step if trainer.is_mask_update_step(i) else step
        state, metrics = fn(state, images, labels)
    jax.block_until_ready(metrics["loss"])
    return len(rows) * batch / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on GPU/TPU, 5 on CPU)")
    parser.add_argument("--update-every", type=int, default=80)
    parser.add_argument("--width", type=int, default=0, help="ResNet base width (0 = 64, the real ResNet-18)")
    parser.add_argument("--real-data", action="store_true")
    parser.add_argument("--real-steps", type=int, default=390, help="steps of the real-data epoch")
    args = parser.parse_args()
    cpu = jax.devices()[0].platform == "cpu"
    steps = args.steps or (5 if cpu else 50)
    shard = Shardings()
    rows = []
    for dtype in args.dtypes.split(","):
        for batch in map(int, args.batches.split(",")):
            results = {}
            for label, method, moon in (("dense", "dense", False), ("RigL 90%", "rigl", False), ("MOON + RigL 90%", "rigl", True)):
                trainer = make_trainer(method, moon, batch, dtype, args.update_every, args.width, shard.mesh)
                t_step, t_mask = time_trainer(trainer, batch, steps, shard)
                amortised = t_step if not t_mask else ((args.update_every - 1) * t_step + t_mask) / args.update_every
                results[label] = (t_step, t_mask, amortised)
            dense = results["dense"][2]
            for label, (t_step, t_mask, amortised) in results.items():
                rows.append((dtype, batch, label, t_step, t_mask, batch / amortised, dense / amortised))
            if args.real_data:
                trainer = make_trainer("rigl", True, batch, dtype, args.update_every, args.width, shard.mesh)
                ips = real_data_epoch(trainer, batch, shard, args.real_steps)
                synthetic = batch / results["MOON + RigL 90%"][2]
                rows.append((dtype, batch, "MOON + RigL 90%, real CIFAR-10 epoch", float("nan"), float("nan"), ips, ips / synthetic))
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(f"\nResNet-18 32x32 training throughput on {device}, jax {jax.__version__}, median of {steps} steps, "
          f"mask update every {args.update_every} iterations\n")
    print("| dtype | batch | method | step (ms) | mask-update step (ms) | images/s | ratio |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for dtype, batch, label, t_step, t_mask, ips, ratio in rows:
        step_ms = "" if np.isnan(t_step) else f"{1000 * t_step:.2f}"
        mask_ms = "" if np.isnan(t_mask) or not t_mask else f"{1000 * t_mask:.2f}"
        what = "x synthetic" if "real" in label else "x dense"
        print(f"| {dtype} | {batch} | {label} | {step_ms} | {mask_ms} | {ips:,.0f} | {ratio:.3f} {what} |")


if __name__ == "__main__":
    main()
