"""What one training step costs, from XLA's own cost analysis of the compiled step: the MOON +
RigL 90% step as the training loop builds it, against a plain Flax/Optax dense step of the same
ResNet-18.

    python benchmarks/step_cost.py                       # width 64, batch 128, fp32
    python benchmarks/step_cost.py --width 16 --batch 32 # quicker
    python benchmarks/step_cost.py --model small_cnn --batch 8  # a CPU smoke run (tiny stand-in model)

The plain step is what a user writes without this library: ``model.apply`` with mutable
BatchNorm statistics, ``optax.softmax_cross_entropy_with_integer_labels``, and
``optax.chain(add_decayed_weights(5e-4), sgd(lr, momentum=0.9, nesterov=True))``, on the same
uint8 batch with the same on-device augmentation and normalisation. Both steps donate their state.

Printed per step: bytes accessed and FLOPs (``compiled.cost_analysis()`` of the backend JAX runs
on), the arrays passed in and out, and the ratios to the plain step. The rows for the steps that
run rarely (the weight snapshot, run after the step once per averaging epoch; the mask update:
once per 80 iterations in the first 70% of training) are for information. The last line is
``bytes ratio X``: hot MOON + RigL step / plain dense step. Target on the CPU backend at width 64,
batch 128, fp32: X <= 1.02.

**Per algorithm** (``--algorithms``, default every one of ``moon_jax.sparse.METHODS``; ``none``
skips it): the hot step of MOON + each algorithm at 90% as the loop builds it, compiled, its bytes
against the plain step, and its mask-update step's. Masked methods store exact zeros and cost
what MOON + RigL costs; the straight-through ones (``ste_*``) also carry the dense weights in
the optimizer state (one more parameter-sized array read and written per step).

**Compile time** (``--compile-rounds``, default 3; 0 skips it). What a run compiles, measured as
XLA reports it (JAX's backend-compile events, by function, the persistent cache off), in fresh
processes, the plain loop and a MOON + RigL run taking turns, one round after another:

* the plain loop: ``model.init``, the plain step above, an eval-mode forward pass;
* a MOON + RigL 90% run: ``train_and_evaluate`` itself on a short CIFAR-10 run (2 steps an epoch
  over 4 epochs, every phase present: mask updates, a periodic evaluation, a checkpoint, the
  weight snapshot, the BatchNorm refresh, the final evaluation with every score), at the same
  width, batch and dtype (it reads CIFAR-10 from the packed copy, see the data README).

The table gives each function's median seconds over the rounds, then the sums: before the first
training step (the plain loop: init + step; the run: everything compiled up to and including its
hot step) and for the whole run. The last lines are ``compile ratio X`` (before the first step,
target <= 1.5) and ``compile ratio whole run Y`` (target <= 2.5).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from common import (CIFAR_MEAN, CIFAR_STD, IMAGE_SHAPE, MODELS, library_config, model_kwargs, model_title,
                    plain_dense_step, synthetic_batch)
from moon_jax import sparse
from moon_jax.models import create_model
from moon_jax.devices import DataParallel
from moon_jax.training import compile_steps, create_train_state, create_training_setup


def cost(compiled) -> tuple[float, float]:
    """(bytes accessed, flops) of a compiled computation."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("bytes accessed", float("nan"))), float(analysis.get("flops", float("nan")))


def count_arrays(*trees) -> int:
    return sum(len(jax.tree.leaves(t)) for t in trees)


def plain_step_cost(width: int, batch: int, dtype: str, model: str = "resnet18"):
    """The plain dense step compiled: ``(compiled, arrays in, arrays out)``."""
    step, state = plain_dense_step(width, dtype, model)
    images, labels = synthetic_batch(batch)
    out_shapes = jax.eval_shape(step, state, images, labels)
    return step.lower(state, images, labels).compile(), count_arrays(state, images, labels), count_arrays(out_shapes)


def loop_steps(method: str, width: int, batch: int, dtype: str, model: str = "resnet18"):
    """``(compiled steps, abstract state, batch)`` of MOON + ``method`` at 90% as the loop builds
    them (the reference recipe, CIFAR-10-sized)."""
    config = library_config(method, True, batch, dtype, width, model=model)
    setup = create_training_setup(config, 50000, 10, IMAGE_SHAPE, CIFAR_MEAN, CIFAR_STD, mesh=None)
    compiled = compile_steps(setup, DataParallel())
    state = jax.eval_shape(lambda: create_train_state(setup, jax.random.PRNGKey(0), IMAGE_SHAPE))
    return compiled, state, synthetic_batch(batch)


def moon_rigl_steps(width: int, batch: int, dtype: str, model: str = "resnet18"):
    """The training loop's compiled MOON + RigL 90% steps: ``{name: (compiled, in, out)}``."""
    compiled, state, (images, labels) = loop_steps("rigl", width, batch, dtype, model)  # the reference recipe
    variants = {
        "MOON + RigL 90%: hot step": (compiled.train, (state, images, labels)),
        "MOON + RigL 90%: snapshot after the step (rare)": (compiled.snapshot, (state,)),
        "MOON + RigL 90%: mask update (rare)": (compiled.mask_update, (state, images, labels)),
    }
    out = {}
    for name, (fn, args) in variants.items():
        out[name] = (fn.lower(*args).compile(), count_arrays(*args), count_arrays(jax.eval_shape(fn, *args)))
    return out


def algorithm_costs(methods, width: int, batch: int, dtype: str, model: str = "resnet18") -> dict:
    """``{method: (hot-step cost, mask-update cost, arrays in)}`` of MOON + each method at 90%,
    each a ``(bytes accessed, flops)`` pair."""
    out = {}
    for method in methods:
        compiled, state, (images, labels) = loop_steps(method, width, batch, dtype, model)
        hot = cost(compiled.train.lower(state, images, labels).compile())
        mask = cost(compiled.mask_update.lower(state, images, labels).compile())
        out[method] = (hot, mask, count_arrays(state, images, labels))
    return out


def algorithm_table(costs: dict, base_bytes: float) -> list[str]:
    """Markdown lines: per algorithm, the hot and mask-update steps' bytes against the plain step."""
    lines = ["| MOON + method 90% | straight-through | hot step bytes (MB) | hot step bytes vs plain | "
             "mask update bytes vs plain | arrays in |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for method, ((hot, _), (mask, _), arrays) in costs.items():
        algorithm = sparse.get_algorithm(method)
        ste = "yes" if algorithm.straight_through else "no"
        mask_ratio = f"{mask / base_bytes:.4f}" if algorithm.changes_masks else "- (never runs)"
        lines.append(f"| {method} | {ste} | {hot / 1e6:,.1f} | {hot / base_bytes:.4f} | {mask_ratio} | {arrays} |")
    return lines


# ----------------------------------------------------------------------------- compile time
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
#: Where a run's compiles stop counting as "before the first step": its hot step.
HOT_STEP = "train_step"


def record_compiles() -> list[tuple[str, float]]:
    """Starts recording every backend compile of this process as ``(function, seconds)``."""
    from jax._src import monitoring  # the listener API that carries the function name

    compiles: list[tuple[str, float]] = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append((str(kwargs.get("fun_name", "?")), float(duration)))

    monitoring.register_event_duration_secs_listener(listener)
    return compiles


def plain_loop_compiles(width: int, batch: int, dtype: str, model_name: str = "resnet18") -> dict:
    """The plain loop's compiles: init and step (before its first step), then an eval forward."""
    compiles = record_compiles()
    step, state = plain_dense_step(width, dtype, model_name)  # compiles model.init
    images, labels = synthetic_batch(batch)
    state, loss = step(state, images, labels)
    jax.block_until_ready(loss)
    before = len(compiles)
    model = create_model(model_name, 10, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
                         **model_kwargs(model_name, width))
    forward = jax.jit(lambda v, x: model.apply(v, x.astype(jnp.float32) / 255.0, train=False))
    jax.block_until_ready(forward({"params": state[0], "batch_stats": state[1]}, images))
    return {"compiles": compiles, "before_first_step": before}


def run_compiles(width: int, batch: int, dtype: str, model_name: str = "resnet18") -> dict:
    """A short MOON + RigL 90% run's compiles (``train_and_evaluate``, every phase present)."""
    from moon_jax.programs import train_and_evaluate

    # mask updates at iterations 1 and 3: the first iteration is a hot step, as in every real
    # configuration (with update_every=1 the first iterations would all be mask updates)
    config = library_config("rigl", True, batch, dtype, width, update_every=2, model=model_name)
    config.data.dataset = "cifar10"
    config.data.ood_datasets = ("tin_resize", "gaussian_noise")
    config.data.num_train_examples = 2 * batch
    config.data.num_test_examples = batch
    config.data.num_ood_examples = batch
    config.train.epochs, config.train.constant_lr_epochs = 4, 1
    config.train.eval_batch_size = batch
    config.train.log_every_steps = 2
    config.train.eval_every_epochs, config.train.checkpoint_every_epochs = 2, 2
    config.train.progress_bar = False
    config.moon.warmup_epochs, config.moon.averaging_epochs = 1, 1
    config.sparse.end_fraction = 0.5
    compiles = record_compiles()
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir)
    hot = [i for i, (name, _) in enumerate(compiles) if HOT_STEP in name]
    return {"compiles": compiles, "before_first_step": hot[0] + 1 if hot else len(compiles)}


def compile_worker(kind: str, width: int, batch: int, dtype: str, model_name: str) -> None:
    """One fresh process's measurement, printed as one JSON line.

    CPU steps run synchronously here (set before the backend starts; it only concerns the CPU
    backend): a run compiles some functions after its first step, and on the CPU a step still
    executing would take the cores from that compile and inflate its seconds (measured: the mask
    update's 3.9 s read 6.7 s); on an accelerator the two do not compete. Nothing compiled
    changes."""
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    measure = plain_loop_compiles if kind == "plain" else run_compiles
    print("COMPILES " + json.dumps(measure(width, batch, dtype, model_name)), flush=True)


def measure_in_fresh_process(kind: str, args) -> dict:
    """Runs :func:`compile_worker` in a new Python process (no compilation cache)."""
    env = dict(os.environ, MOON_JAX_COMPILATION_CACHE="0", JAX_ENABLE_COMPILATION_CACHE="false")
    command = [sys.executable, os.path.abspath(__file__), f"--compile-worker={kind}", f"--width={args.width}",
               f"--batch={args.batch}", f"--dtype={args.dtype}", f"--model={args.model}"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    lines = [x for x in out.stdout.splitlines() if x.startswith("COMPILES ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"the {kind} compile measurement failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1][len("COMPILES "):])


def compile_table(rounds: list[dict[str, dict]]) -> list[str]:
    """Markdown lines: median seconds per function and side, the sums, and the two ratios."""
    def per_function(measurement):
        totals: dict[str, float] = {}
        for name, seconds in measurement["compiles"]:
            totals[name] = totals.get(name, 0.0) + seconds
        return totals

    def sums(measurement):
        seconds = [s for _, s in measurement["compiles"]]
        return sum(seconds[: measurement["before_first_step"]]), sum(seconds)

    lines = ["| side | function | compile seconds (median) | times compiled |", "| --- | --- | ---: | ---: |"]
    for side in ("plain", "library"):
        names = sorted({n for r in rounds for n, _ in r[side]["compiles"]})
        for name in names:
            values = [per_function(r[side]).get(name, 0.0) for r in rounds]
            count = statistics.median(sum(n == name for n, _ in r[side]["compiles"]) for r in rounds)
            label = "plain loop" if side == "plain" else "MOON + RigL run"
            lines.append(f"| {label} | `{name}` | {statistics.median(values):.2f} | {count:g} |")
    before = {side: statistics.median(sums(r[side])[0] for r in rounds) for side in ("plain", "library")}
    whole = {side: statistics.median(sums(r[side])[1] for r in rounds) for side in ("plain", "library")}
    lines += [
        "",
        "| compiled | plain loop (s) | MOON + RigL run (s) | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| before the first step | {before['plain']:.2f} | {before['library']:.2f} | {before['library'] / before['plain']:.2f} |",
        f"| whole run | {whole['plain']:.2f} | {whole['library']:.2f} | {whole['library'] / whole['plain']:.2f} |",
        "",
        f"compile ratio {before['library'] / before['plain']:.2f}",
        f"compile ratio whole run {whole['library'] / whole['plain']:.2f}",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the real network)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--model", default="resnet18", choices=MODELS, help="small_cnn: a tiny stand-in for smoke runs")
    parser.add_argument("--compile-rounds", type=int, default=3,
                        help="rounds of the compile-time measurement (plain loop and run in fresh processes); 0 skips it")
    parser.add_argument("--algorithms", default="all",
                        help="comma-separated sparse methods for the per-algorithm table; 'all' (default) or 'none'")
    parser.add_argument("--compile-worker", choices=("plain", "library"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile_worker:
        compile_worker(args.compile_worker, args.width, args.batch, args.dtype, args.model)
        return

    rows = {"plain Flax/Optax dense step": plain_step_cost(args.width, args.batch, args.dtype, args.model)}
    rows.update(moon_rigl_steps(args.width, args.batch, args.dtype, args.model))
    base_bytes, base_flops = cost(rows["plain Flax/Optax dense step"][0])
    device = jax.devices()[0]
    print(
        f"{model_title(args.model, args.width)}, batch {args.batch}, {args.dtype}, backend {device.platform} "
        f"({device.device_kind}), jax {jax.__version__}"
    )
    print("| step | bytes accessed (MB) | GFLOPs | arrays in / out | bytes vs plain | FLOPs vs plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (compiled, n_in, n_out) in rows.items():
        b, f = cost(compiled)
        print(f"| {name} | {b / 1e6:,.1f} | {f / 1e9:,.2f} | {n_in} / {n_out} | {b / base_bytes:.4f} | {f / base_flops:.4f} |")
    hot_bytes, _ = cost(rows["MOON + RigL 90%: hot step"][0])
    print(f"bytes ratio {hot_bytes / base_bytes:.4f}")
    methods = sparse.METHODS if args.algorithms == "all" else [m for m in args.algorithms.split(",") if m != "none"]
    if methods:
        print("\nPer algorithm (MOON + each method at 90%, the plain step = 1):\n")
        print("\n".join(algorithm_table(algorithm_costs(methods, args.width, args.batch, args.dtype, args.model),
                                         base_bytes)))
    if args.compile_rounds:
        rounds = []
        for i in range(args.compile_rounds):
            order = ("plain", "library") if i % 2 == 0 else ("library", "plain")
            t0 = time.perf_counter()
            rounds.append({kind: measure_in_fresh_process(kind, args) for kind in order})
            print(f"compile round {i + 1}/{args.compile_rounds}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        print(f"\nCompile time, {args.compile_rounds} rounds in fresh processes (persistent cache off):\n")
        print("\n".join(compile_table(rounds)))


if __name__ == "__main__":
    main()
