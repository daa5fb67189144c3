"""Tests of the MOON module: loss, alpha auto-tuning, averaging, BN refresh, scores."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moon_jax import moon
from moon_jax.moon import scores


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- loss
LOGITS = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.5, 1.5, -1.0]])  # K = 2, last = unknown
LABELS = jnp.array([0, 0, 0])  # right, wrong (unknown wins), wrong (class 1 wins)


def hand_terms():
    # p for each row, by hand: row 0: e^2/(e^2+2); row 1: 1/(1+e+e^2) for class 0 ...
    e = math.e
    p0 = [e**2 / (e**2 + 2), 1 / (e**2 + 2), 1 / (e**2 + 2)]
    p1 = [1 / (1 + e + e**2), e / (1 + e + e**2), e**2 / (1 + e + e**2)]
    s2 = math.exp(0.5) + math.exp(1.5) + math.exp(-1.0)
    p2 = [math.exp(0.5) / s2, math.exp(1.5) / s2, math.exp(-1.0) / s2]
    h = [-math.log(p0[0]), -math.log(p1[0]), -math.log(p2[0])]
    q = [p0[2], p1[2], p2[2]]
    return h, q


def test_loss_warmup_is_plain_ce_over_k_plus_1_and_tracks_ewma():
    cfg = moon.MoonLossConfig(total_epochs=20, warmup_epochs=5)
    h, q = hand_terms()
    loss, (state, aux) = moon.moon_loss(LOGITS, LABELS, moon.init_moon_state(), 0, cfg)
    assert float(loss) == pytest.approx(sum(h) / 3, rel=1e-6)
    tau = sum((1 - qi) * hi for qi, hi in zip(q, h)) / 3
    assert float(state.ewma) == pytest.approx(tau, rel=1e-6)  # first tau initialises the EWMA
    assert float(state.alpha) == 0.0 and int(state.alpha_epoch) == -1
    # second step: EWMA update with mu = 0.05
    _, (state2, _) = moon.moon_loss(LOGITS * 0.5, LABELS, state, 4, cfg)
    h2 = -np.log(softmax64(np.asarray(LOGITS) * 0.5)[:, 0])
    q2 = softmax64(np.asarray(LOGITS) * 0.5)[:, 2]
    tau2 = float(np.mean((1 - q2) * h2))
    assert float(state2.ewma) == pytest.approx(0.05 * tau2 + 0.95 * tau, rel=1e-6)


def test_loss_after_warmup_weights_wrong_predictions():
    cfg = moon.MoonLossConfig(total_epochs=20, warmup_epochs=5)
    h, q = hand_terms()
    alpha = 0.7
    state = moon.MoonState(
        alpha=jnp.float32(alpha), alpha_increment=jnp.float32(0.1), alpha_epoch=jnp.int32(6),
        ewma=jnp.float32(1.0), ewma_steps=jnp.int32(100),
    )
    loss, (new_state, _) = moon.moon_loss(LOGITS, LABELS, state, 5, cfg)  # 1-based epoch 6
    weights = [1.0, 1 + alpha / (1 + alpha * q[1]), 1 + alpha / (1 + alpha * q[2])]
    assert float(loss) == pytest.approx(sum(hi * wi for hi, wi in zip(h, weights)) / 3, rel=1e-6)
    assert float(new_state.alpha) == pytest.approx(alpha)  # same epoch: no ramp
    # next epoch: alpha ramps by its increment
    _, (ramped, _) = moon.moon_loss(LOGITS, LABELS, state, 6, cfg)
    assert float(ramped.alpha) == pytest.approx(alpha + 0.1)
    assert int(ramped.alpha_epoch) == 7


def test_loss_clips_unknown_probability_and_gradient_flows_through_weight():
    cfg = moon.MoonLossConfig(total_epochs=20, warmup_epochs=0)
    logits = jnp.array([[0.0, 0.0, 40.0]])  # p_unknown rounds to 1 in float32
    state = moon.init_moon_state()._replace(alpha=jnp.float32(2.0), alpha_epoch=jnp.int32(1), ewma_steps=jnp.int32(1))
    loss, _ = moon.moon_loss(logits, jnp.array([0]), state, 0, cfg)
    h = 40.0 + math.log(1 + 2 * math.exp(-40.0))
    q = 1 - 1e-7
    assert float(loss) == pytest.approx(h * (1 + 2.0 / (1 + 2.0 * q)), rel=1e-5)

    # the weight is not detached: the gradient differs from that of h * stop_gradient(w)
    def with_weight(z):
        return moon.moon_loss(z, jnp.array([0]), state, 0, cfg)[0]

    def detached(z):
        zz = jax.lax.stop_gradient(z)
        p_unk = jax.nn.softmax(zz)[0, -1]
        w = 1 + 2.0 / (1 + 2.0 * p_unk)
        return moon.cross_entropy(z, jnp.array([0]))[0] * w

    z = jnp.array([[0.3, 0.1, 0.8]])
    assert float(with_weight(z)) == pytest.approx(float(detached(z)), rel=1e-6)
    assert not np.allclose(jax.grad(with_weight)(z), jax.grad(detached)(z))


def test_alpha_sequence_matches_closed_form():
    cfg = moon.MoonLossConfig(total_epochs=12, warmup_epochs=3, alpha_init_factor=64.0, alpha_final=1.0)
    steps_per_epoch = 4
    rng = np.random.default_rng(0)
    state = moon.init_moon_state()
    step = jax.jit(lambda z, y, s, e: moon.moon_loss(z, y, s, e, cfg))
    ewma = None
    alpha_by_epoch = {}
    alpha_first = None
    for epoch in range(cfg.total_epochs):
        for _ in range(steps_per_epoch):
            z = rng.normal(size=(16, 5)).astype(np.float32)
            y = rng.integers(0, 4, size=16)
            _, (state, aux) = step(jnp.asarray(z), jnp.asarray(y), state, epoch)
            p = softmax64(z)
            h = -np.log(p[np.arange(16), y])
            q = p[:, -1] if epoch + 1 <= cfg.warmup_epochs else np.minimum(p[:, -1], 1 - 1e-7)
            tau = float(np.mean((1 - q) * h))
            ewma = tau if ewma is None else 0.05 * tau + 0.95 * ewma
            if epoch + 1 == cfg.warmup_epochs + 1 and alpha_first is None:
                alpha_first = ewma / 64.0
        alpha_by_epoch[epoch + 1] = float(state.alpha)
    assert float(state.ewma) == pytest.approx(ewma, rel=1e-4)
    assert alpha_by_epoch[cfg.warmup_epochs + 1] == pytest.approx(alpha_first, rel=1e-4)
    for e1, alpha in alpha_by_epoch.items():
        assert alpha == pytest.approx(moon.alpha_closed_form(alpha_first, e1, cfg), rel=1e-4, abs=1e-7)
    assert alpha_by_epoch[cfg.total_epochs] == pytest.approx(cfg.alpha_final, rel=1e-5)
    assert step._cache_size() == 1


def test_loss_config_validation():
    with pytest.raises(ValueError, match="total_epochs > warmup_epochs"):
        moon.MoonLossConfig(total_epochs=6, warmup_epochs=5)


def test_loss_and_state_run_inside_scan():
    cfg = moon.MoonLossConfig(total_epochs=10, warmup_epochs=2)
    z = jax.random.normal(jax.random.key(0), (30, 8, 4))
    y = jax.random.randint(jax.random.key(1), (30, 8), 0, 3)

    def body(state, inputs):
        i, zi, yi = inputs
        loss, (state, _) = moon.moon_loss(zi, yi, state, i // 3, cfg)
        return state, (loss, state.alpha)

    final, (losses, alphas) = jax.lax.scan(body, moon.init_moon_state(), (jnp.arange(30), z, y))
    assert np.all(np.isfinite(losses))
    assert np.all(np.asarray(alphas[:6]) == 0.0) and float(alphas[6]) > 0.0
    assert float(alphas[-1]) == pytest.approx(1.0, rel=1e-5)  # epoch 10 = last epoch


# ----------------------------------------------------------------------------- averaging
def test_averaging_transform_equals_mean_of_snapshots():
    params = {"w": jnp.array([1.0, 0.0, -2.0], jnp.float32), "b": jnp.float32(0.5)}
    tx = optax.chain(optax.sgd(0.1), moon.weight_averaging())
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads, take):
        updates, state = tx.update(grads, state, params, take_snapshot=take)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(0)
    snapshots = []
    for t in range(12):
        grads = {"w": jnp.asarray(rng.normal(size=3), jnp.float32), "b": jnp.float32(rng.normal())}
        take = t % 3 == 2
        params, state = step(params, state, grads, take)
        if take:
            snapshots.append(jax.tree.map(np.asarray, params))
    avg_state = state[1]
    assert int(avg_state.count) == 4
    for key in ("w", "b"):
        np.testing.assert_allclose(avg_state.average[key], np.mean([s[key] for s in snapshots], axis=0), rtol=1e-6)
    assert step._cache_size() == 1


def test_averaging_keeps_exact_zeros_of_a_fixed_mask():
    state = moon.AveragingState(average={"w": jnp.zeros(4)}, count=jnp.int32(0))
    for v in ([1.0, 0.0, 2.0, 0.0], [3.0, 0.0, -1.0, 0.0]):
        state = moon.add_snapshot(state, {"w": jnp.array(v)})
    np.testing.assert_array_equal(np.asarray(state.average["w"]) == 0, [False, True, False, True])


def test_snapshot_triggers():
    spe, epochs, deduct = 20, 10, 3
    steps = np.arange(spe * epochs)
    epoch_wise = np.asarray(moon.is_snapshot_step(steps, spe, epochs, deduct, "epoch"))
    # ends of 1-based epochs 7, 8, 9, 10 -> 0-based 6..9
    assert list(np.nonzero(epoch_wise)[0]) == [spe * e - 1 for e in (7, 8, 9, 10)]
    ref = np.asarray(moon.is_snapshot_step(steps, spe, epochs, deduct, "reference"))
    want = [spe * 7 - 1] + [spe * e + i for e in (7, 8, 9) for i in range(2)]
    assert list(np.nonzero(ref)[0]) == want
    assert not np.any(np.asarray(moon.is_snapshot_step(steps, spe, epochs, 0)))
    # the training loop's host-side decision (Python ints -> Python bools) agrees everywhere
    for trigger, traced in (("epoch", epoch_wise), ("reference", ref)):
        host = [moon.is_snapshot_step(int(s), spe, epochs, deduct, trigger) for s in steps]
        assert all(type(h) is bool for h in host) and host == list(traced)
    assert moon.is_snapshot_step(spe * epochs - 1, spe, epochs, 0) is False
    with pytest.raises(ValueError, match="allowed: epoch, reference"):
        moon.is_snapshot_step(0, spe, epochs, deduct, "swa")


def test_reference_lr_schedule():
    sched = moon.cosine_then_constant(0.1, 1.2, 0.08, steps_per_epoch=10, total_epochs=100, constant_epochs=20)
    assert float(sched(0)) == pytest.approx(0.12)
    assert float(sched(400)) == pytest.approx(0.1 * (0.08 + 1.12 * 0.5))
    assert float(sched(799)) == pytest.approx(0.008, rel=1e-3)
    assert float(sched(800)) == pytest.approx(0.008)
    assert float(sched(999)) == pytest.approx(0.008)


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(4, name="stem")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(3, name="head")(nn.relu(x))


def test_bn_refresh_recomputes_only_batch_statistics():
    model = BNNet()
    x = jax.random.normal(jax.random.key(0), (64, 5)) * 3.0 + 1.0
    variables = model.init(jax.random.key(1), x[:2])
    acc = moon.init_batch_stats_accumulator(variables["batch_stats"])
    accumulate = jax.jit(lambda p, a, xb: moon.accumulate_batch_stats(model.apply, p, a, xb, 0.9))
    for xb in jnp.split(x, 4):
        acc = accumulate(variables["params"], acc, xb)
    assert accumulate._cache_size() == 1
    # per-batch statistics of the stem's output, averaged over the 4 batches
    hidden = x @ variables["params"]["stem"]["kernel"] + variables["params"]["stem"]["bias"]
    means = [np.mean(np.asarray(b), axis=0) for b in np.split(np.asarray(hidden), 4)]
    variances = [np.var(np.asarray(b), axis=0) for b in np.split(np.asarray(hidden), 4)]
    stats = acc.mean_stats["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["var"], np.mean(variances, axis=0), rtol=1e-4, atol=1e-5)
    assert float(acc.examples) == 64
    # the accumulated statistics have exactly batch_stats' structure, nothing else
    assert jax.tree.structure(acc.mean_stats) == jax.tree.structure(variables["batch_stats"])


# ----------------------------------------------------------------------------- scores
def test_scores_against_direct_numpy():
    z = np.array([[3.0, 1.0, 0.5], [0.0, 0.0, 4.0], [1.0, 2.0, 0.0]])
    p = softmax64(z)
    np.testing.assert_allclose(scores.moon_msp(z, 2), p[:, :2].max(axis=1))
    np.testing.assert_allclose(scores.msp(z, 2), softmax64(z[:, :2]).max(axis=1))
    np.testing.assert_allclose(scores.known_probability(z, 2), 1 - p[:, 2])
    np.testing.assert_allclose(scores.energy(z, 2), np.log(np.exp(z[:, :2]).sum(axis=1)))
    np.testing.assert_array_equal(scores.predict(z, 2), [0, 0, 1])
    with pytest.raises(ValueError, match="allowed"):
        scores.score("odin", z, 2)


def test_scores_float64_avoid_saturation_ties():
    z = np.array([[40.0, 0.0, 0.0], [30.0, 0.0, 0.0]], np.float32)
    s = scores.moon_msp(z, 2)
    assert s[0] > s[1]  # float32 softmax would give 1.0 for both


def test_averaging_and_snapshot_schedule_run_inside_scan():
    params = {"w": jnp.zeros(3, jnp.float32)}
    tx = optax.chain(optax.sgd(1.0), moon.weight_averaging())
    grads = -jnp.arange(1, 41, dtype=jnp.float32)[:, None] * jnp.ones((40, 3))  # params become 1, 3, 6, ...

    def body(carry, inputs):
        params, state = carry
        step, g = inputs
        take = moon.is_snapshot_step(step, 10, 4, 1, "epoch")  # ends of epochs 3 and 4
        updates, state = tx.update({"w": g}, state, params, take_snapshot=take)
        params = optax.apply_updates(params, updates)
        return (params, state), params["w"][0]

    (params, state), trajectory = jax.lax.scan(body, (params, tx.init(params)), (jnp.arange(40), grads))
    avg = state[1]
    assert int(avg.count) == 2
    np.testing.assert_allclose(avg.average["w"], (trajectory[29] + trajectory[39]) / 2, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0])
def test_unknown_logit_rises_only_for_examples_above_the_cross_entropy_threshold(alpha):
    # the module docstring's claim: a misclassified example raises the unknown logit (negative
    # gradient) only when its cross-entropy h exceeds (1 + alpha) / alpha^2; correct ones never do
    cfg = moon.MoonLossConfig(total_epochs=20, warmup_epochs=2, alpha_tuning="fixed", fixed_alpha=alpha)
    state = moon.init_moon_state()
    threshold = (1 + alpha) / alpha**2

    def logits_with_cross_entropy(h, predicted_logit):
        # classes: 0 (the label), 1 (logit `predicted_logit`), 2 (far below), unknown (q about 6e-6)
        rest = math.exp(predicted_logit) + math.exp(-30.0) + math.exp(-12.0)
        p_label = math.exp(-h)
        return jnp.array([[math.log(p_label * rest / (1 - p_label)), predicted_logit, -30.0, -12.0]])

    def unknown_logit_gradient(logits):
        grad = jax.grad(lambda z: moon.moon_loss(z, jnp.array([0]), state, 5, cfg)[0])(logits)
        return float(grad[0, -1])

    below = logits_with_cross_entropy(0.8 * threshold, 0.0)
    above = logits_with_cross_entropy(1.25 * threshold, 0.0)
    for logits, h in ((below, 0.8 * threshold), (above, 1.25 * threshold)):
        assert int(jnp.argmax(logits[0])) == 1  # misclassified: class 1 wins
        assert float(moon.cross_entropy(logits, jnp.array([0]))[0]) == pytest.approx(h, rel=1e-4)
    assert unknown_logit_gradient(below) > 0  # descent lowers the unknown logit
    assert unknown_logit_gradient(above) < 0  # descent raises it
    correct = jnp.array([[3.0, 0.0, -30.0, -12.0]])
    assert unknown_logit_gradient(correct) > 0


def test_a_snapshot_taken_after_the_step_equals_one_taken_inside_it():
    """The training loop folds the new parameters into the average with a small function run
    after the step (no second compiled copy of the step); it must equal the transformation's own
    ``take_snapshot=True``."""
    params = {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.ones(3)}
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), moon.weight_averaging())
    state = tx.init(params)
    for i in range(4):
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1)), params)
        inside_updates, inside = tx.update(grads, state, params, take_snapshot=True)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        after = moon.snapshot_into(state, params)
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), inside, after))
        assert int(moon.find_averaging_state(after).count) == int(moon.find_averaging_state(state).count) + 1
        state = after
    assert moon.snapshot_into({"no": "averaging"}, params) == {"no": "averaging"}
