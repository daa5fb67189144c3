"""Where the reference's gains come from: the released code's drop-fraction schedule (its units
bug, reproduced on request) and placeholders, mixtures of two classes labelled "unknown"."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_digits_config
from moon_jax import moon, sparse
from moon_jax.programs import train_and_evaluate
from moon_jax.reproduction.methods import CIGL_DROP_RATE, METHODS, RELEASED_COSINE_STEPS
from moon_jax.training import build_run, create_train_state
from moon_jax.training.config import ConfigError, validate_config
from moon_jax.training.steps import train_step

# The reference's CIFAR-10 schedule: updates every 80 iterations in the first 70 of 100 epochs of
# 391 iterations, alpha0 = 0.3, its CosineDecay stepped with T_max = end_when = 70.
RELEASED = sparse.UpdateSchedule(update_every=80, end_step=70 * 391, drop_fraction=0.3,
                                 cosine_steps=RELEASED_COSINE_STEPS, drop_count_rounding="ceil")


def reference_cosine_decay(t_max, calls, alpha0=0.3):
    """The released CosineDecay's rate after ``calls`` optimizer iterations, written from its
    definition: ``step(s)`` with ``s = 0, 1, ...`` sets alpha0 (1 + cos(pi s / T)) / 2 while
    ``s < T`` and is ignored afterwards."""
    rate = alpha0
    for s in range(calls):
        if s < t_max:
            rate = alpha0 * (1 + math.cos(math.pi * s / t_max)) / 2
    return rate


@pytest.mark.parametrize("step", [0, 1, 2, 36, 69, 70, 71, 79, 159, 5000, 27000])
def test_released_schedule_gives_the_reference_drop_fractions(step):
    # iteration `step` (0-based) follows `step` optimizer iterations of the reference
    assert float(sparse.drop_fraction_at(RELEASED, step)) == pytest.approx(
        reference_cosine_decay(70, step), rel=1e-5, abs=1e-9)


def test_released_schedule_is_near_static_and_rounds_up():
    first_update = sparse.update_steps(RELEASED, 100 * 391)[0]
    assert first_update == 79
    fraction = float(sparse.drop_fraction_at(RELEASED, first_update))
    assert fraction == pytest.approx(0.15 * (1 + math.cos(69 * math.pi / 70)), rel=1e-5)
    assert fraction == pytest.approx(1.51e-4, rel=1e-2)
    # ceil(rate * nnz): 1 connection of a small layer, 16 of a 100,000-weight one (floor: 0 and 15)
    assert [int(sparse.schedule.drop_count(RELEASED, fraction, n)) for n in (1000, 100_000)] == [1, 16]
    floor = sparse.UpdateSchedule(update_every=80, end_step=70 * 391, cosine_steps=70)
    assert [int(sparse.schedule.drop_count(floor, fraction, n)) for n in (1000, 100_000)] == [0, 15]
    # the default (RigL) schedule decays over the update period instead
    rigl = sparse.UpdateSchedule(update_every=80, end_step=70 * 391, drop_fraction=0.3)
    assert float(sparse.drop_fraction_at(rigl, first_update)) > 0.29


def test_released_update_replaces_exactly_the_rounded_up_count():
    params = {"a": {"kernel": jnp.zeros((40, 50))}, "b": {"kernel": jnp.zeros((50, 30))}}
    updater = sparse.make_updater(params, "rigl", 0.8, "uniform", RELEASED)
    state, params = updater.init(params, jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    params = {"a": {"kernel": jax.random.normal(keys[0], (40, 50)) * state.masks["a"]["kernel"]},
              "b": {"kernel": jax.random.normal(keys[1], (50, 30)) * state.masks["b"]["kernel"]}}
    grads = {"a": {"kernel": jax.random.normal(keys[2], (40, 50))}, "b": {"kernel": jax.random.normal(keys[3], (50, 30))}}
    new_state, _ = updater.update(state._replace(step=jnp.int32(79)), params, grads)
    for name, count in (("a", 400), ("b", 300)):
        old, new = state.masks[name]["kernel"], new_state.masks[name]["kernel"]
        assert int(new.sum()) == count
        assert int(jnp.sum(old & ~new)) == math.ceil(1.5106e-4 * count) == 1


def test_released_methods_set_every_switch_of_the_released_code():
    config = tiny_digits_config()
    for override in METHODS["released_moon_rigl"].overrides:
        field, value = override[len("--config."):].split("=")
        section, key = field.split(".")
        current = config[section][key]
        config[section][key] = type(current)(value == "True") if isinstance(current, bool) else type(current)(value)
    validate_config(config)
    _, setup = build_run(config, with_ood=False)
    assert setup.updater.schedule.cosine_steps == 70 and setup.updater.schedule.drop_count_rounding == "ceil"
    assert setup.model.num_outputs == 10 and setup.schedule.averaging_trigger == "reference"
    # CigL's random mask wraps the masked optimizer, at the reference's rate
    assert config.moon.dropconnect_rate == CIGL_DROP_RATE == 0.01
    assert isinstance(setup.tx.init({"w": jnp.zeros(2)})[0], moon.DropConnectState)
    assert "loss_weighting=none" in METHODS["released_cigl_rigl"].overrides[-1]


@pytest.mark.parametrize("field, value, message", [
    ("sparse.drop_fraction_cosine_steps", -1, ">= 0"),
    ("sparse.drop_count_rounding", "round", "floor"),
    ("moon.placeholder_mix_alpha", 0.0, "moon.placeholder_mix_alpha"),
])
def test_schedule_and_placeholder_switches_are_validated(field, value, message):
    config = tiny_digits_config()
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_placeholders_need_the_k_plus_1_head():
    config = tiny_digits_config()
    config.moon.placeholders = True
    config.moon.head = "reference_k"
    with pytest.raises(ConfigError, match="moon.placeholders.*k_plus_1"):
        validate_config(config)


def test_placeholders_mix_two_different_classes_and_are_labelled_unknown():
    images = jnp.arange(8, dtype=jnp.float32).reshape(8, 1, 1, 1) * jnp.ones((8, 2, 2, 1))
    labels = jnp.array([0, 1, 2, 3, 0, 5, 2, 7])
    mixtures, counts = moon.make_placeholders(jax.random.PRNGKey(0), images, labels, 1.0)
    assert mixtures.shape == (4, 2, 2, 1)
    np.testing.assert_array_equal(counts, [False, True, False, True])  # pairs (0,4) and (2,6) share a class
    lam = (mixtures[:, 0, 0, 0] - images[4:, 0, 0, 0]) / (images[:4, 0, 0, 0] - images[4:, 0, 0, 0])
    np.testing.assert_allclose(mixtures, lam[:, None, None, None] * images[:4] + (1 - lam[:, None, None, None]) * images[4:],
                               rtol=1e-6)
    assert np.all((lam >= 0) & (lam <= 1)) and len(set(np.round(np.asarray(lam), 6))) == 4
    # the loss is the cross-entropy towards output K, over the counted pairs only
    logits = jax.random.normal(jax.random.PRNGKey(1), (4, 11))
    expected = -np.mean(np.asarray(jax.nn.log_softmax(logits))[[1, 3], 10])
    assert float(moon.placeholder_loss(logits, counts, 10)) == pytest.approx(expected, rel=1e-6)
    assert float(moon.placeholder_loss(logits, jnp.zeros(4, bool), 10)) == 0.0


def _first_step(config, images, labels):
    data, setup = build_run(config, with_ood=False)
    state = create_train_state(setup, jax.random.PRNGKey(0), data.image_shape)
    return setup, jax.jit(lambda s: train_step(setup, s, images, labels))(state)


def test_placeholders_leave_batch_statistics_alone_and_act_only_after_warm_up():
    config = tiny_digits_config()
    data, _ = build_run(config, with_ood=False)
    images, labels = data.train.images[:32], data.train.labels[:32]
    placeholder_config = tiny_digits_config()
    placeholder_config.moon.placeholders = True
    plain_setup, (plain, plain_metrics) = _first_step(config, images, labels)
    setup, (with_placeholders, metrics) = _first_step(placeholder_config, images, labels)
    assert plain_setup.placeholders is None and setup.placeholders is not None
    # warm-up (epoch 0 of 2): the same loss and the same new state, BatchNorm statistics included
    assert float(metrics["loss"]) == float(plain_metrics["loss"]) and float(metrics["placeholder_ce"]) > 0
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(with_placeholders)):
        np.testing.assert_array_equal(a, b)
    # after warm-up (epoch 3 of 10-step epochs) the placeholders' cross-entropy is added, weight 1
    late = plain._replace(step=jnp.int32(30))
    _, late_plain = jax.jit(lambda s: train_step(plain_setup, s, images, labels))(late)
    _, late_with = jax.jit(lambda s: train_step(setup, s, images, labels))(late)
    assert float(late_with["loss"]) == pytest.approx(
        float(late_plain["loss"]) + float(late_with["placeholder_ce"]), rel=1e-5)


def test_unknown_output_fires_on_placeholders_in_a_tiny_run(tmp_path):
    config = tiny_digits_config()
    config.moon.placeholders = True
    train_and_evaluate(config, tmp_path, evaluate_at_end=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    p_unknown = [r["placeholder_p_unknown"] for r in rows if "placeholder_p_unknown" in r]
    assert len(p_unknown) >= 5
    print("p(unknown) on placeholders, per logged step:", np.round(p_unknown, 3))
    # from about 1 / (K + 1) before training to most of the mass once they are learned
    assert p_unknown[0] < 0.1 and np.mean(p_unknown[-3:]) > 0.35
