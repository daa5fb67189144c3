"""MOON + RigL at 90% sparsity inside a plain Flax / Optax training loop.

    python examples/own_training_loop.py

Nothing from moon_jax.training: the model, the loop and the evaluation are the user's own; the
library adds three things to them:

1. ``sparse.sparse_optimizer`` wraps the Optax optimizer: masks (ERK, 90% sparse), RigL's
   drop-and-grow schedule and the masked update, driven by ``init`` / ``apply_gradients``;
2. ``moon.moon_loss`` replaces the cross-entropy on a K+1-output model (the extra output is
   "unknown"), its alpha tuning state threaded through the step like any other state;
3. ``moon.weight_averaging`` after the optimizer keeps the running mean of the last epochs'
   weights, the model MOON reports.

Data: scikit-learn's 8x8 digits (1347 train / 450 test); OOD: 8x8 patches of natural photos.
Prints the test accuracy of the weight-averaged model and its OOD AUROC (MOON's MSP score).
"""
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout's moon_jax, installed or not
from moon_jax import data, metrics, moon, sparse  # noqa: E402

EPOCHS = 40
BATCH_SIZE = 64
AVERAGING_EPOCHS = 8  # weight-average the ends of the last 8 epochs
WARMUP_EPOCHS = 5  # plain cross-entropy before the unknown-aware loss


class MLP(nn.Module):
    num_outputs: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(512)(x))
        x = nn.relu(nn.Dense(512)(x))
        return nn.Dense(self.num_outputs)(x)


def preprocess(images):
    return images.astype(jnp.float32) / 255.0 - 0.5


def main():
    start = time.perf_counter()
    train, test = data.digits("train"), data.digits("test")
    ood = data.digits_photos(450)
    num_classes = train.num_classes
    steps_per_epoch = len(train) // BATCH_SIZE
    total_steps = EPOCHS * steps_per_epoch

    model = MLP(moon.num_outputs(num_classes, use_moon=True))  # K + 1 outputs
    params = model.init(jax.random.key(0), preprocess(train.images[:1]))["params"]

    # 1. Sparse training around an ordinary Optax optimizer; mask updates end before averaging.
    optimizer = sparse.sparse_optimizer(
        params,
        optax.sgd(optax.cosine_decay_schedule(0.05, total_steps, alpha=0.1), momentum=0.9, nesterov=True),
        method="rigl", sparsity=0.9, distribution="erk",
        update_every=20, end_step=(EPOCHS - AVERAGING_EPOCHS - 2) * steps_per_epoch,
        then=[moon.weight_averaging()],  # 3.
    )
    params, opt_state = optimizer.init(params, jax.random.key(1))

    # 2. MOON's loss and its tuning state.
    loss_config = moon.MoonLossConfig(total_epochs=EPOCHS, warmup_epochs=WARMUP_EPOCHS)
    moon_state = moon.init_moon_state()

    @jax.jit
    def train_step(params, opt_state, moon_state, images, labels):
        step = optimizer.step(opt_state)
        epoch = step // steps_per_epoch

        def loss_fn(p):
            logits = model.apply({"params": p}, preprocess(images))
            return moon.moon_loss(logits, labels, moon_state, epoch, loss_config)

        (loss, (moon_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        snapshot = moon.is_snapshot_step(step, steps_per_epoch, EPOCHS, AVERAGING_EPOCHS)
        params, opt_state = optimizer.apply_gradients(grads, opt_state, params, take_snapshot=snapshot)
        return params, opt_state, moon_state, loss

    rng = np.random.default_rng(0)
    for epoch in range(EPOCHS):
        order = rng.permutation(len(train))
        for i in range(steps_per_epoch):
            idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            params, opt_state, moon_state, loss = train_step(
                params, opt_state, moon_state, train.images[idx], train.labels[idx])
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}/{EPOCHS}  loss {float(loss):.4f}  alpha {float(moon_state.alpha):.4f}")

    averaged = moon.find_averaging_state(opt_state)  # the model MOON reports
    logits = jax.jit(lambda p, x: model.apply({"params": p}, preprocess(x)))
    test_logits = np.asarray(logits(averaged.average, test.images))
    ood_logits = np.asarray(logits(averaged.average, ood.images))

    accuracy = metrics.classification_metrics(test_logits, test.labels, num_classes)["acc"]
    auroc = metrics.ood_metrics(moon.scores.moon_msp(test_logits, num_classes),
                                moon.scores.moon_msp(ood_logits, num_classes))["auroc"]
    print(f"sparsity {100 * optimizer.updater.plan.achieved_sparsity:.1f}% ({optimizer.updater.plan.distribution}); "
          f"weight average of {int(averaged.count)} snapshots")
    print(f"test accuracy: {100 * accuracy:.2f}%")
    print(f"OOD AUROC (digits vs photo patches, moon_msp): {100 * auroc:.2f}%")
    print(f"time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
