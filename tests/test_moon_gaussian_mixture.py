"""The paper's Gaussian-mixture analysis as a test.

Three 2-D Gaussian components (sd 1) at radius 2.5, overlapping enough that some training points
are misclassified (MOON only reweights misclassified points). A small MLP is trained twice with
identical initialisation, data order and optimizer: once with plain cross-entropy over K outputs,
once with MOON (K+1 outputs, warm-up, auto-tuned alpha). Points far from every component, in the
low-density centre of the mixture and in the gaps between components (2.5 sd from every mean),
must receive clearly lower confidence from the MOON model, while accuracy stays the same.
"""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from moon_jax import moon
from moon_jax.moon import scores

K = 3
RADIUS = 2.5
ANGLES = np.deg2rad([90.0, 210.0, 330.0])
GAP_ANGLES = np.deg2rad([30.0, 150.0, 270.0])


class TwoLayerMLP(nn.Module):
    num_outputs: int

    @nn.compact
    def __call__(self, x):
        for width in (64, 64):
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_outputs)(x)


def mixture(seed, n_per_class=300):
    rng = np.random.default_rng(seed)
    means = RADIUS * np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
    x = np.concatenate([rng.normal(means[k], 1.0, size=(n_per_class, 2)) for k in range(K)])
    return x.astype(np.float32), np.repeat(np.arange(K), n_per_class).astype(np.int32)


def far_points(seed):
    rng = np.random.default_rng(seed)
    centre = rng.normal(0.0, 0.3, size=(60, 2))
    gaps = RADIUS * np.stack([np.cos(GAP_ANGLES), np.sin(GAP_ANGLES)], 1).repeat(20, 0)
    gaps = gaps + rng.normal(0.0, 0.3, size=gaps.shape)
    return centre.astype(np.float32), gaps.astype(np.float32)


def train(use_moon, seed, epochs=40, batch_size=64):
    x, y = mixture(seed)
    model = TwoLayerMLP(K + 1 if use_moon else K)
    params = model.init(jax.random.key(seed), x[:1])
    steps_per_epoch = len(x) // batch_size
    lr = moon.cosine_then_constant(0.05, 1.0, 0.1, steps_per_epoch, epochs, 0)
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.trace(0.9, nesterov=True))
    opt_state = tx.init(params)
    cfg = moon.MoonLossConfig(total_epochs=epochs, warmup_epochs=5)

    @jax.jit
    def step(params, opt_state, moon_state, xb, yb, epoch, t):
        def loss_fn(p):
            logits = model.apply(p, xb)
            if use_moon:
                return moon.moon_loss(logits, yb, moon_state, epoch, cfg)
            return moon.cross_entropy(logits, yb).mean(), (moon_state, {})

        (_, (moon_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: -lr(t) * u, updates)
        return optax.apply_updates(params, updates), opt_state, moon_state

    moon_state = moon.init_moon_state()
    t = 0
    for epoch in range(epochs):
        order = np.random.default_rng((seed, epoch)).permutation(len(x))
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            params, opt_state, moon_state = step(params, opt_state, moon_state, x[idx], y[idx], epoch, t)
            t += 1

    def confidence(points):
        logits = np.asarray(model.apply(params, points))
        return scores.moon_msp(logits, K) if use_moon else scores.msp(logits, K)

    x_test, y_test = mixture(seed + 100)
    accuracy = float(np.mean(scores.predict(np.asarray(model.apply(params, x_test)), K) == y_test))
    centre, gaps = far_points(seed + 200)
    return accuracy, float(confidence(centre).mean()), float(confidence(gaps).mean()), float(moon_state.alpha)


@pytest.mark.slow
def test_moon_lowers_confidence_far_from_every_component():
    seeds = (0, 1, 2)
    ce = np.array([train(False, s)[:3] for s in seeds])
    mo = [train(True, s) for s in seeds]
    alphas = [m[3] for m in mo]
    mo = np.array([m[:3] for m in mo])
    assert np.allclose(alphas, 1.0, rtol=1e-5)  # alpha ramped to alpha_final
    # accuracy unchanged (within one test point in 900 per seed on average)
    assert abs(ce[:, 0].mean() - mo[:, 0].mean()) < 0.005
    # centre of the mixture: MOON clearly less confident, on every seed
    assert np.all(mo[:, 1] < ce[:, 1] - 0.02), (ce[:, 1], mo[:, 1])
    assert ce[:, 1].mean() - mo[:, 1].mean() > 0.04
    # gaps between components: lower on average
    assert ce[:, 2].mean() - mo[:, 2].mean() > 0.02, (ce[:, 2], mo[:, 2])
