"""Benchmark of the sparse engine: one RigL mask update, and a masked training step against a
dense one, for ResNet-18 (32x32) and ResNet-50 (224x224, 25.6M parameters).

    python benchmarks/sparse_engine.py                       # both models, sizes for this device
    python benchmarks/sparse_engine.py --models resnet18 --batch 128 --repeats 50

All numbers come from one process, on synthetic uint8 batches, after a warm-up (compilation
excluded); each time is the median of ``--repeats`` runs, synchronised with
``block_until_ready``. Rows:

* ``dense step``: the training step with no masks (plain SGD + Nesterov, cross-entropy);
* ``masked step``: the same step with RigL's masks at 90% (ResNet-18) / 80% (ResNet-50) ERK
  sparsity: masked gradients, masked updates (weights stay exactly zero);
* ``RigL update``: drop-and-grow of every layer from given dense gradients (the jitted update
  rule alone), and ``mask-update step``: the whole mask-update iteration (forward, dense
  backward, drop-and-grow, optimizer-state reset).

The ratio column is dense time / this row's time for steps (throughput relative to dense), and
the time relative to one dense step for updates.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from moon_jax import sparse
from moon_jax.devices import DataParallel
from moon_jax.training import base_config, compile_steps, create_train_state, create_training_setup

MODELS = {
    # name: (input shape, number of classes, sparsity)
    "resnet18": ((32, 32, 3), 10, 0.9),
    "resnet50": ((224, 224, 3), 1000, 0.8),
}


def make_setup(model: str, method: str, batch: int, dtype: str):
    shape, classes, sparsity = MODELS[model]
    config = base_config()
    config.model.name = model
    config.model.dtype = dtype
    config.train.batch_size = batch
    config.train.epochs = 100
    config.sparse.method = method
    config.sparse.sparsity = sparsity
    config.sparse.update_every = 100
    config.sparse.end_fraction = 0.75
    config.moon.enabled = False
    config.data.augment = "crop_flip" if shape[0] == 32 else "flip"
    num_train = batch * 100  # only sets steps_per_epoch
    mean, std = (0.5,) * 3, (0.25,) * 3
    return create_training_setup(config, num_train, classes, shape, mean, std)


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` (which must block until its result is ready), seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(model: str, batch: int, repeats: int, dtype: str) -> list[tuple[str, float, float]]:
    shape, classes, _ = MODELS[model]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, size=(batch,) + shape, dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, classes, size=(batch,), dtype=np.int32))
    rows = []
    results = {}
    for method in ("dense", "rigl"):
        setup = make_setup(model, method, batch, dtype)
        state = jax.jit(lambda k: create_train_state(setup, k, shape))(jax.random.PRNGKey(0))
        compiled = compile_steps(setup, DataParallel())
        step = compiled.train
        holder = {"state": state}

        def run_step():
            holder["state"], metrics = step(holder["state"], images, labels)
            jax.block_until_ready(metrics["loss"])

        for _ in range(3):
            run_step()
        results[method] = timed(run_step, repeats)
        if method == "rigl":
            state = holder["state"]
            grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(1), p.shape, p.dtype), state.params)
            update = jax.jit(setup.updater.update)
            engine_state = sparse.SparseState(masks=state.masks, step=state.step, rng=state.rng)

            def run_update():
                jax.block_until_ready(update(engine_state, state.params, grads))

            for _ in range(3):
                run_update()
            results["update"] = timed(run_update, repeats)

            def run_mask_step():
                holder["state"], metrics = compiled.mask_update(holder["state"], images, labels)
                jax.block_until_ready(metrics["loss"])

            for _ in range(3):
                run_mask_step()
            results["mask_step"] = timed(run_mask_step, repeats)
    dense = results["dense"]
    rows.append((f"{model} dense step (batch {batch})", dense, 1.0))
    rows.append((f"{model} masked RigL step (batch {batch})", results["rigl"], dense / results["rigl"]))
    rows.append((f"{model} RigL update (drop-and-grow only)", results["update"], results["update"] / dense))
    rows.append((f"{model} mask-update step (fwd + dense bwd + update)", results["mask_step"], results["mask_step"] / dense))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on GPU/TPU, 32 (ResNet-18) / 4 (ResNet-50) on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default: 30 on GPU/TPU, 5 on CPU")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    cpu = jax.devices()[0].platform == "cpu"
    repeats = args.repeats or (5 if cpu else 30)
    table = []
    for model in args.models.split(","):
        batch = args.batch or ((32 if model == "resnet18" else 4) if cpu else 128)
        table += bench_model(model, batch, repeats, args.dtype)
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(f"\nsparse engine benchmark on {device}, jax {jax.__version__}, {args.dtype}, median of {repeats}\n")
    print("| what | time (ms) | ratio |")
    print("| --- | ---: | ---: |")
    for name, seconds, ratio in table:
        kind = "x dense throughput" if "step (batch" in name else "x one dense step"
        print(f"| {name} | {1000 * seconds:.2f} | {ratio:.3f} {kind} |")


if __name__ == "__main__":
    main()
