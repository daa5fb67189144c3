"""Gradual magnitude pruning (Zhu & Gupta 2017) of your own Flax model in your own Optax loop.

    python examples/gradual_pruning.py [method]      # gmp (default), or any moon_jax.sparse.METHODS

The model trains dense, then ``sparse.sparse_optimizer`` prunes it every ``update_every``
iterations from ``start_step`` to ``end_step`` along the cubic schedule
``s_t = s_f (1 - (1 - (t - t0) / (n dt))^3)``, each layer keeping exactly its ERK count, and
the final 90% from ``end_step`` on; it then fine-tunes on the final mask. The library adds one
call (the optimizer) and one line in the step (``apply_gradients``); the rest is the user's.

Data: scikit-learn's 8x8 digits (1347 train / 450 test). Prints the sparsity along the way, the
exact count of active weights at the end and the test accuracy.
"""
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout's moon_jax, installed or not
from moon_jax import data, sparse  # noqa: E402

EPOCHS = 30
BATCH_SIZE = 64


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32) / 255.0 - 0.5
        x = nn.relu(nn.Dense(256)(x))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


def main(method: str = "gmp"):
    train, test = data.digits("train"), data.digits("test")
    steps_per_epoch = len(train) // BATCH_SIZE
    total_steps = EPOCHS * steps_per_epoch
    model = MLP()
    params = model.init(jax.random.key(0), train.images[:1])["params"]

    # Prune from 20% to 60% of training, every 10 iterations, to 90% sparsity; fine-tune after.
    start_step, end_step = total_steps // 5, 3 * total_steps // 5
    optimizer = sparse.sparse_optimizer(params, optax.adam(1e-3), method=method, sparsity=0.9,
                                        distribution="erk", update_every=10, start_step=start_step,
                                        end_step=end_step)
    params, state = optimizer.init(params, jax.random.key(1))

    @jax.jit
    def train_step(params, state, images, labels):
        def loss_fn(p):
            logits = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        return optimizer.apply_gradients(grads, state, params)

    masked = [c is not None for c in optimizer.updater.nonzeros]  # the layers with a mask, in leaf order
    masked_size = sum(p.size for p, m in zip(jax.tree.leaves(params), masked) if m)

    def active(params):
        return sum(int(jnp.count_nonzero(p)) for p, m in zip(jax.tree.leaves(params), masked) if m)
    rng = np.random.default_rng(0)
    for epoch in range(EPOCHS):
        order = rng.permutation(len(train))
        for i in range(steps_per_epoch):
            idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            params, state = train_step(params, state, train.images[idx], train.labels[idx])
        if (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1}/{EPOCHS}  step {int(optimizer.step(state))}  "
                  f"sparsity of the masked layers {100 * (1 - active(params) / masked_size):.2f}%")

    target = sum(c for c in optimizer.updater.nonzeros if c is not None)
    accuracy = float(jnp.mean(jnp.argmax(model.apply({"params": params}, test.images), -1) == test.labels))
    print(f"{method}: pruned at steps {start_step}..{end_step} of {total_steps}; "
          f"{active(params)} of {masked_size} masked weights active (target {target})")
    print(f"test accuracy: {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main(*sys.argv[1:])
