"""Pieces the benchmark scripts share: the plain Flax/Optax dense step they compare against, the
library's configured steps, and a synthetic CIFAR-shaped batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moon_jax.data.augment import augment_batch, normalize
from moon_jax.models import create_model
from moon_jax.devices import DataParallel
from moon_jax.training import TrainingSetup, base_config, compile_steps, create_train_state, create_training_setup

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE = (32, 32, 3)

# (label, sparse method, MOON) of the library's configurations the benchmarks time
METHODS = (("dense", "dense", False), ("RigL 90%", "rigl", False), ("MOON + RigL 90%", "rigl", True))


def synthetic_batch(batch: int, sharding=None):
    """A fixed random uint8 CIFAR-shaped batch and its int32 labels (on ``sharding``)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch,) + IMAGE_SHAPE, dtype=np.uint8)
    labels = rng.integers(0, 10, (batch,), dtype=np.int32)
    if sharding is None:
        return jnp.asarray(images), jnp.asarray(labels)
    return jax.device_put(images, sharding), jax.device_put(labels, sharding)


#: Models the benchmarks can time: the real network, and a tiny stand-in for CPU smoke runs (its
#: steps compile in about a second, so a whole benchmark fits in a test).
MODELS = ("resnet18", "small_cnn")


def model_kwargs(model: str, width: int) -> dict:
    """Constructor arguments of ``model``: ResNet-18 takes the base width, the small CNN none."""
    return {"width": width} if model == "resnet18" else {}


def model_title(model: str, width: int) -> str:
    """``ResNet-18 width 64`` (or the stand-in model's name) for a table's heading."""
    return f"ResNet-18 width {width}" if model == "resnet18" else model


def plain_dense_step(width: int, dtype: str, model: str = "resnet18"):
    """What a user writes without this library: ``(jitted step, initial state)`` of a dense
    ``model`` (ResNet-18 by default) trained with cross-entropy and
    ``optax.chain(add_decayed_weights(5e-4), sgd(0.1, momentum=0.9, nesterov=True))``, on uint8
    batches with the same on-device augmentation and normalisation as the library's step. The
    state is donated."""
    compute_dtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    model = create_model(model, 10, dtype=compute_dtype, **model_kwargs(model, width))
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1,) + IMAGE_SHAPE), train=False))(jax.random.PRNGKey(0))
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True))
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]), jax.random.PRNGKey(1))

    def step(state, images, labels):
        params, batch_stats, opt_state, key = state
        key, aug_key = jax.random.split(key)
        x = normalize(augment_batch(aug_key, images, "crop_flip"), CIFAR_MEAN, CIFAR_STD).astype(jnp.float32)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats, opt_state, key), loss

    return jax.jit(step, donate_argnums=0), state


def library_config(method: str, moon: bool, batch: int, dtype: str, width: int, update_every: int = 80,
                   model: str = "resnet18"):
    """The reference recipe (``base_config``) with one method, batch size, dtype, model and width
    (the width applies to ResNet-18 only)."""
    config = base_config()
    config.model.name = model
    config.model.width = model_kwargs(model, width).get("width", 0)
    config.model.dtype = dtype
    config.train.batch_size = batch
    config.sparse.method = method
    config.sparse.update_every = update_every
    config.moon.enabled = moon
    return config


def library_steps(config, placement: DataParallel | None = None) -> tuple[TrainingSetup, object, object]:
    """``(setup, compiled steps, fresh state)`` of a config, as the training loop builds them
    (CIFAR-10-sized: 50,000 training images, 10 classes)."""
    placement = placement or DataParallel()
    setup = create_training_setup(config, 50000, 10, IMAGE_SHAPE, CIFAR_MEAN, CIFAR_STD, placement.mesh)
    init = jax.jit(lambda k: create_train_state(setup, k, IMAGE_SHAPE), out_shardings=placement.replicated)
    return setup, compile_steps(setup, placement), init(jax.random.PRNGKey(0))
