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
run rarely (the weight-snapshot variant: once per averaging epoch; the mask update: once per 80
iterations in the first 70% of training) are for information. The last line is
``bytes ratio X``: hot MOON + RigL step / plain dense step. Target on the CPU backend at width 64,
batch 128, fp32: X <= 1.02.
"""
from __future__ import annotations

import argparse
import functools

import jax

from common import (CIFAR_MEAN, CIFAR_STD, IMAGE_SHAPE, MODELS, library_config, model_title, plain_dense_step,
                    synthetic_batch)
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


def moon_rigl_steps(width: int, batch: int, dtype: str, model: str = "resnet18"):
    """The training loop's compiled MOON + RigL 90% steps: ``{name: (compiled, in, out)}``."""
    config = library_config("rigl", True, batch, dtype, width, model=model)  # the reference recipe
    setup = create_training_setup(config, 50000, 10, IMAGE_SHAPE, CIFAR_MEAN, CIFAR_STD, mesh=None)
    compiled = compile_steps(setup, DataParallel())
    state = jax.eval_shape(lambda: create_train_state(setup, jax.random.PRNGKey(0), IMAGE_SHAPE))
    images, labels = synthetic_batch(batch)
    variants = {
        "MOON + RigL 90%: hot step": (compiled.train, {"take_snapshot": False}),
        "MOON + RigL 90%: snapshot step (rare)": (compiled.train, {"take_snapshot": True}),
        "MOON + RigL 90%: mask update (rare)": (compiled.mask_update, {}),
    }
    out = {}
    for name, (fn, kwargs) in variants.items():
        lowered = fn.lower(state, images, labels, **kwargs)
        shapes = jax.eval_shape(functools.partial(fn, **kwargs), state, images, labels)
        out[name] = (lowered.compile(), count_arrays(state, images, labels), count_arrays(shapes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the real network)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--model", default="resnet18", choices=MODELS, help="small_cnn: a tiny stand-in for smoke runs")
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
