"""The paper's ablations and baselines as switches: no loss modification, fixed alpha, no voting,
Mixup, CigL's random mask in the reference's update order, and the reference's K-output head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import short_digits_config, tiny_digits_config
from moon_jax import moon, sparse
from moon_jax.data import mixup_batch
from moon_jax.training import build_run
from moon_jax.training.config import ConfigError, validate_config

LOGITS = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.5, 1.5, -1.0], [0.0, 3.0, 1.0]])  # K = 2 (+ unknown)
LABELS = jnp.array([0, 0, 0, 1])  # right, wrong (unknown wins), wrong (class 1 wins), right


def run_loss_over_epochs(config, epochs, steps_per_epoch=3):
    """``moon_loss`` at every step of ``epochs`` epochs on the fixed batch: (alphas, weight means, losses)."""
    state = moon.init_moon_state()
    alphas, weights, losses = [], [], []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            loss, (state, aux) = moon.moon_loss(LOGITS, LABELS, state, epoch, config)
            alphas.append(float(aux["alpha"]))
            weights.append(float(aux["weight_mean"]))
            losses.append(float(loss))
    return np.array(alphas), np.array(weights), np.array(losses)


def test_without_loss_modification_every_weight_is_one_and_the_loss_is_cross_entropy():
    config = moon.MoonLossConfig(total_epochs=6, warmup_epochs=1, weighting="none")
    alphas, weights, losses = run_loss_over_epochs(config, 6)
    ce = float(jnp.mean(moon.cross_entropy(LOGITS, LABELS)))
    np.testing.assert_allclose(weights, 1.0)
    np.testing.assert_allclose(losses, ce, rtol=1e-6)
    # the MOON loss on the same batch weighs the two misclassified rows up
    _, moon_weights, moon_losses = run_loss_over_epochs(moon.MoonLossConfig(total_epochs=6, warmup_epochs=1), 6)
    assert np.all(moon_weights[3:] > 1.0) and np.all(moon_losses[3:] > ce)


def test_fixed_alpha_is_constant_after_warmup_and_auto_alpha_ramps():
    fixed = moon.MoonLossConfig(total_epochs=6, warmup_epochs=2, alpha_tuning="fixed", fixed_alpha=0.5)
    alphas, weights, losses = run_loss_over_epochs(fixed, 6)
    np.testing.assert_array_equal(alphas[:6], 0.0)  # warm-up: 2 epochs x 3 steps
    np.testing.assert_array_equal(alphas[6:], 0.5)
    # w_i = 1 + alpha / (1 + alpha q_i) on the wrong rows, 1 on the right ones
    q = np.asarray(jax.nn.softmax(LOGITS, axis=-1))[:, -1]
    expected = np.mean([1.0, 1 + 0.5 / (1 + 0.5 * q[1]), 1 + 0.5 / (1 + 0.5 * q[2]), 1.0])
    np.testing.assert_allclose(weights[6:], expected, rtol=1e-6)
    auto_alphas, _, _ = run_loss_over_epochs(moon.MoonLossConfig(total_epochs=6, warmup_epochs=2), 6)
    per_epoch = auto_alphas[6::3]
    assert np.all(np.diff(per_epoch) > 0) and per_epoch[-1] == pytest.approx(1.0, rel=1e-5)
    # the reference's extra_c_loss_n: the same ramp from 1/64 (epochs 3..6: 1/64 + k (1 - 1/64) / 3)
    untuned = moon.MoonLossConfig(total_epochs=6, warmup_epochs=2, alpha_tuning="untuned_ramp")
    ramp = run_loss_over_epochs(untuned, 6)[0][6::3]
    np.testing.assert_allclose(ramp, [1 / 64 + k * (1 - 1 / 64) / 3 for k in range(4)], rtol=1e-5)


def test_mixup_mixes_a_batch_with_a_beta_coefficient():
    images = jnp.arange(4 * 2 * 2 * 1, dtype=jnp.float32).reshape(4, 2, 2, 1)
    mixed, perm, lam = mixup_batch(jax.random.key(3), images, 0.2)
    assert sorted(np.asarray(perm).tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[perm], rtol=1e-6)
    lams = np.array([float(mixup_batch(jax.random.key(i), images, 0.2)[2]) for i in range(400)])
    # Beta(0.2, 0.2): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.1786, mass near 0 and 1
    assert abs(lams.mean() - 0.5) < 0.06 and abs(lams.var() - 1 / (4 * 1.4)) < 0.03
    assert np.mean((lams < 0.1) | (lams > 0.9)) > 0.5


def test_mixed_labels_loss_is_the_lambda_mix_of_the_two_moon_losses():
    config = moon.MoonLossConfig(total_epochs=6, warmup_epochs=1)
    state = moon.init_moon_state()._replace(ewma=jnp.float32(0.7), ewma_steps=jnp.int32(5))
    partner = LABELS[jnp.array([3, 2, 1, 0])]

    def loss_fn(y):
        return moon.moon_loss(LOGITS, y, state, 3, config)

    loss, (mixed_state, _) = moon.mix_label_losses(loss_fn, LABELS, partner, 0.3)
    la, (sa, _) = loss_fn(LABELS)
    lb, (sb, _) = loss_fn(partner)
    assert float(loss) == pytest.approx(0.3 * float(la) + 0.7 * float(lb), rel=1e-6)
    assert float(mixed_state.ewma) == pytest.approx(0.3 * float(sa.ewma) + 0.7 * float(sb.ewma), rel=1e-6)
    assert int(mixed_state.ewma_steps) == 6


def test_reference_head_has_k_outputs_and_treats_the_last_class_as_unknown():
    assert moon.num_outputs(10, True, "reference_k") == 10
    assert moon.num_outputs(10, True, "k_plus_1") == 11
    assert moon.num_outputs(10, False, "k_plus_1") == 10
    # K = 3 outputs, the loss's "unknown" is class 2's output: examples of class 2 count as
    # predicted "unknown" when right, and their p_unknown is p(class 2)
    logits = jnp.array([[0.0, 0.0, 3.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    labels = jnp.array([2, 0, 0])  # right (class 2), right, wrong
    config = moon.MoonLossConfig(total_epochs=6, warmup_epochs=1, alpha_tuning="fixed", fixed_alpha=1.0)
    _, (_, aux) = moon.moon_loss(logits, labels, moon.init_moon_state(), 2, config)
    p = np.asarray(jax.nn.softmax(logits, axis=-1))
    assert float(aux["p_unknown"]) == pytest.approx(p[:, 2].mean(), rel=1e-6)
    assert float(aux["weight_mean"]) == pytest.approx((1 + 1 + 1 + 1 / (1 + p[2, 2])) / 3, rel=1e-6)

    config = tiny_digits_config()
    config.moon.head = "reference_k"
    _, setup = build_run(config, with_ood=False)
    assert setup.model.num_outputs == 10 and setup.moon_loss is not None


def test_head_none_builds_k_outputs_without_the_moon_loss_and_keeps_the_averaging():
    config = tiny_digits_config()
    config.moon.head = "none"
    config.moon.loss_weighting = "none"
    config.moon.dropconnect_rate = 0.01
    _, setup = build_run(config, with_ood=False)
    assert setup.model.num_outputs == 10 and setup.moon_loss is None and setup.schedule.averaging_epochs == 2
    assert moon.find_averaging_state(setup.tx.init({"w": jnp.zeros(2)})) is not None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("moon.head", "k", "allowed: k_plus_1, reference_k, none"),
        ("moon.loss_weighting", "ce", "allowed: unknown_aware, none"),
        ("moon.alpha_tuning", "off", "allowed: auto, fixed, untuned_ramp"),
        ("moon.fixed_alpha", -1.0, "must be in [0.0, inf]"),
        ("data.mixup_alpha", -0.2, "must be in [0.0, inf]"),
        ("moon.head", "none", "has no unknown output"),
    ],
)
def test_ablation_switches_are_validated(field, value, message):
    config = tiny_digits_config()
    group, name = field.split(".")
    config[group][name] = value
    with pytest.raises(ConfigError, match=None) as err:
        validate_config(config)
    assert message in str(err.value) and field in str(err.value)


def test_random_mask_needs_a_sparse_method():
    config = tiny_digits_config()
    config.sparse.method = "dense"
    config.moon.dropconnect_rate = 0.01
    with pytest.raises(ConfigError, match="moon.dropconnect_rate"):
        validate_config(config)


# ----------------------------------------------------------------------------- CigL, by hand
def reference_masking_step(w, w_raw, dp, new_dp, mask, buf, grad, lr, mu, wd, drop_rate):
    """One ``Masking.step`` of the reference (sparselearning/core.py) in numpy, on one tensor:
    apply_w_raw, apply_dropout (restore, new drop mask, zero), torch SGD (Nesterov, coupled weight
    decay), apply_mask, reset_momentum. ``dpnum = 1 / drop_rate``."""
    dpnum = 1.0 / drop_rate
    w_raw = w_raw * (1 - dp * mask) + w * dp * mask * (dpnum - 1) / dpnum
    w = w * dp * mask + w_raw * (1 - dp * mask) * dpnum / (dpnum - 1)
    dp = new_dp
    w = w * dp * mask
    d = grad + wd * w
    buf = mu * buf + d
    w = w - lr * (d + mu * buf)
    return w * mask, w_raw, dp, buf * mask


def test_random_dropconnect_follows_the_reference_update_order():
    lr, mu, wd, rate = 0.1, 0.9, 5e-4, 0.5
    mask = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float64)
    target = np.array([1.0, -2.0, 0.5, 3.0, -1.0, 2.0, -0.5, 4.0])
    w0 = np.array([0.3, 0.2, -0.4, 0.1, 0.6, -0.2, 0.5, 0.0])
    bias_target = np.array([1.0, -1.0])

    tx = moon.random_dropconnect(sparse.masked_updates(sparse.sgd_nesterov(lambda step: lr, mu, wd)), rate, seed=1)
    params = {"kernel": jnp.asarray(w0, jnp.float32), "bias": jnp.zeros(2, jnp.float32)}
    masks = {"kernel": jnp.asarray(mask, bool), "bias": None}
    state = tx.init(params)

    w, w_raw, dp, buf = w0.copy(), w0.copy(), np.ones(8), np.zeros(8)
    b, b_buf = np.zeros(2), np.zeros(2)
    newly_dropped_then_kept = 0
    pre_drop = np.full(8, np.nan)
    for step in range(6):
        grads = {"kernel": params["kernel"] - jnp.asarray(target, jnp.float32),
                 "bias": params["bias"] - jnp.asarray(bias_target, jnp.float32)}
        updates, state = tx.update(grads, state, params, masks=masks, step=step)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        new_dp = np.asarray(state.keep["kernel"], np.float64)
        assert state.keep["bias"].all()

        grad = w - target  # the gradient of the weights the forward pass saw
        previous_dp = dp
        w_before = w.copy()
        w, w_raw, dp, buf = reference_masking_step(w, w_raw, dp, new_dp, mask, buf, grad, lr, mu, wd, rate)
        d_b = (b - bias_target) + wd * b
        b_buf = mu * b_buf + d_b
        b = b - lr * (d_b + mu * b_buf)
        np.testing.assert_allclose(np.asarray(params["kernel"]), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(params["bias"]), b, rtol=1e-5, atol=1e-6)

        # a weight dropped now holds only this step's update (computed while it was active) ...
        newly = (previous_dp == 1) & (new_dp == 0) & (mask == 1)
        if newly.any():
            expected = -lr * (grad + mu * buf)[newly]  # zero weight: no weight decay term
            np.testing.assert_allclose(np.asarray(params["kernel"])[newly], expected, rtol=1e-5)
            assert np.all(np.abs(expected) > 1e-3)
        # ... and one dropped at the previous step was first put back to its value before the drop
        restored = (previous_dp == 0) & (mask == 1)
        if restored.any():
            newly_dropped_then_kept += int((restored & (new_dp == 1)).sum())
            np.testing.assert_allclose(np.asarray(state.saved["kernel"])[restored], pre_drop[restored], rtol=1e-6)
        pre_drop = np.where(newly, w_before, pre_drop)
        assert np.asarray(params["kernel"])[7] == 0.0  # inactive stays exactly zero
    assert newly_dropped_then_kept > 0  # the seed exercises a drop and a restore


def test_method_name_states_the_switches():
    from moon_jax.training import describe_method

    config = tiny_digits_config()
    assert describe_method(config) == "MOON + rigl 90% erk"
    config.moon.loss_weighting, config.moon.averaging_epochs = "none", 0
    assert describe_method(config) == "MOON + rigl 90% erk (no loss modification, no voting)"
    config.moon.head, config.moon.averaging_epochs, config.moon.dropconnect_rate = "none", 2, 0.01
    assert describe_method(config) == "rigl 90% erk (weight averaging, random mask 0.01)"
    config.moon.enabled, config.data.mixup_alpha = False, 0.2
    assert describe_method(config) == "rigl 90% erk (Mixup 0.2)"


@pytest.mark.slow
def test_mixup_with_moon_trains_through_the_loop(tmp_path):
    from moon_jax.programs import train_and_evaluate

    config = short_digits_config(epochs=5)
    config.data.mixup_alpha = 0.2
    results = train_and_evaluate(config, tmp_path)
    import json

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert all(np.isfinite(r["loss"]) for r in train) and train[-1]["alpha"] > 0
    assert results["classification"]["acc"] > 0.5  # chance is 0.1


def test_without_voting_there_is_no_weight_average():
    config = tiny_digits_config()
    config.moon.averaging_epochs = 0
    _, setup = build_run(config, with_ood=False)
    params = {"w": jnp.zeros(2)}
    assert setup.schedule.averaging_epochs == 0 and setup.moon_loss is not None
    assert moon.find_averaging_state(setup.tx.init(params)) is None
    assert not any(setup.schedule.is_snapshot_step(s) for s in range(setup.schedule.total_steps))
    config.moon.averaging_epochs = 2
    _, with_voting = build_run(config, with_ood=False)
    assert moon.find_averaging_state(with_voting.tx.init(params)) is not None
