"""The algorithm registry and pruning from dense: Zhu & Gupta's schedule, exact per-layer and
global counts, straight-through training, the trainer's dense-to-sparse runs and their resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import restore_final, short_digits_config
from moon_jax import sparse
from moon_jax.programs import train_and_evaluate
from moon_jax.training.config import ConfigError, validate_config

NEW_METHODS = ("gmp", "saliency", "random_pruning", "global_magnitude", "global_saliency", "ste_magnitude",
               "ste_random")


def mlp_params(seed=0):
    """Two sparse kernels of different shapes (so ERK gives them different densities), a bias."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"l1": {"kernel": jax.random.normal(k1, (32, 64)), "bias": jnp.zeros(64)},
            "l2": {"kernel": jax.random.normal(k2, (64, 8))}}


def mask_counts(masks):
    return [int(m.sum()) for m in jax.tree.leaves(masks)]


def kernels(tree):
    return [tree["l1"]["kernel"], tree["l2"]["kernel"]]


def test_registry_declares_every_method_and_rejects_unknown_ones():
    assert sparse.METHODS[:4] == ("dense", "static", "set", "rigl")
    assert set(NEW_METHODS) == set(sparse.PRUNING_METHODS)
    for name, a in sparse.ALGORITHMS.items():
        structures = sparse.STRUCTURES if name in ("static", "set", "rigl") else ("unstructured",)
        assert a.name == name and a.supports_structures == structures and a.description
        assert a.drop_score in (None, *sparse.SCORES) and a.grow_score in (None, *sparse.SCORES)
    assert sparse.ALGORITHMS["rigl"].grow_score == "gradient" and sparse.ALGORITHMS["set"].grow_score == "random"
    assert [n for n, a in sparse.ALGORITHMS.items() if a.scope == "global"] == ["global_magnitude", "global_saliency"]
    assert [n for n, a in sparse.ALGORITHMS.items() if a.straight_through] == ["ste_magnitude", "ste_random"]
    with pytest.raises(ValueError, match="unknown sparse method 'magnitude'; allowed: dense, static"):
        sparse.make_updater(mlp_params(), "magnitude")
    with pytest.raises(ValueError, match="'gmp' does not support the nm_2,4 structure; it supports: unstructured"):
        sparse.make_updater(mlp_params(), "gmp", structure="nm_2,4")


def test_pruning_schedule_is_zhu_and_gupta_eq_1():
    s = sparse.PruningSchedule(start_step=10, end_step=50, update_every=10)
    assert s.event_steps() == [10, 20, 30, 40, 50]
    # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, s_i = 0, s_f = 0.9, n dt = 40
    for t, expected in [(0, 0.0), (10, 0.0), (20, 0.9 - 0.9 * 0.75 ** 3), (30, 0.9 - 0.9 * 0.125),
                        (40, 0.9 - 0.9 * 0.25 ** 3), (50, 0.9), (99, 0.9)]:
        assert sparse.pruning_sparsity_at(s, 0.9, t) == pytest.approx(expected, abs=1e-12)
    assert sparse.pruning_sparsity_at(sparse.PruningSchedule(10, 50, 10, initial_sparsity=0.5), 0.9, 30) == \
        pytest.approx(0.9 - 0.4 * 0.125)
    assert [t for t in range(60) if sparse.is_pruning_step(s, t)] == [10, 20, 30, 40, 50]
    assert [t for t in range(60) if bool(jax.jit(lambda t: sparse.is_pruning_step(s, t))(t))] == [10, 20, 30, 40, 50]
    # the end step prunes even off the grid; start == end is one-shot pruning to s_f
    assert sparse.PruningSchedule(0, 25, 10).event_steps() == [0, 10, 20, 25]
    one_shot = sparse.PruningSchedule(start_step=7, end_step=7, update_every=3)
    assert one_shot.event_steps() == [7] and sparse.pruning_sparsity_at(one_shot, 0.8, 7) == 0.8
    assert [t for t in range(20) if sparse.is_pruning_step(one_shot, t)] == [7]
    with pytest.raises(ValueError, match="start_step <= end_step"):
        sparse.PruningSchedule(start_step=5, end_step=4)


def test_event_counts_are_the_plans_exact_counts_at_the_scheduled_sparsity():
    params = mlp_params()
    pruning = sparse.PruningSchedule(start_step=0, end_step=30, update_every=10)
    updater = sparse.make_updater(params, "gmp", 0.9, "erk", pruning=pruning)
    shapes = sparse.sparsifiable_shapes(params, sparse.SparsityRule())
    names = list(shapes)
    for row, t in zip(updater.event_counts, pruning.event_steps()):
        plan = sparse.plan_sparsity(shapes, sparse.pruning_sparsity_at(pruning, 0.9, t), "erk")
        assert list(row) == [plan.counts[n] for n in names]
    final = sparse.plan_sparsity(shapes, 0.9, "erk")
    assert list(updater.event_counts[-1]) == [final.counts[n] for n in names]
    assert updater.event_counts[0] == (32 * 64, 64 * 8)  # s_i = 0: nothing pruned at t0
    assert final.counts[names[0]] / 2048 != final.counts[names[1]] / 512  # ERK: different densities


def run_loop(optimizer, params, steps, grad_fn=None):
    """``steps`` iterations of ``optimizer`` with a fixed pseudo-gradient; masks after every one."""
    params, state = optimizer.init(params, jax.random.key(1))
    step = jax.jit(optimizer.apply_gradients)
    history = []
    for t in range(steps):
        grads = grad_fn(params, t) if grad_fn else jax.tree.map(lambda p: jnp.cos(p * (t + 1)), params)
        params, state = step(grads, state, params)
        history.append((params, state))
    return params, state, history


@pytest.mark.parametrize("method", ["gmp", "saliency", "random_pruning"])
def test_per_layer_pruning_keeps_exact_scheduled_counts_and_only_removes(method):
    params = mlp_params()
    opt = sparse.sparse_optimizer(params, optax.sgd(0.01), method=method, sparsity=0.9, update_every=3,
                                  start_step=2, end_step=11)
    assert opt.updater.pruning.event_steps() == [2, 5, 8, 11]
    _, _, history = run_loop(opt, params, 14)
    events = dict(zip(opt.updater.pruning.event_steps(), opt.updater.event_counts))
    counts = [mask_counts(s.sparse.masks) for _, s in history]
    assert counts[0] == counts[1] == [2048, 512]  # dense before t0
    for t, (p, s) in enumerate(history):
        latest = max((e for e in events if e <= t), default=None)
        assert counts[t] == (list(events[latest]) if latest is not None else [2048, 512]), t
        for m, w in zip(kernels(s.sparse.masks), kernels(p)):
            assert not np.any(np.asarray(w)[~np.asarray(m)])  # pruned weights are exactly zero
        if t:  # pruning only removes
            before = kernels(history[t - 1][1].sparse.masks)
            assert all(not np.any(np.asarray(m) & ~np.asarray(b)) for m, b in zip(kernels(s.sparse.masks), before))
    assert counts[5] != counts[8] != counts[11]
    assert counts[11] == [c for c in opt.updater.nonzeros if c is not None]  # the final plan at the end step


def test_magnitude_and_saliency_prune_the_lowest_scores():
    params = {"l": {"kernel": jnp.arange(1.0, 17.0).reshape(4, 4)}}
    grads = {"l": {"kernel": jnp.arange(16.0, 0.0, -1.0).reshape(4, 4) ** 2}}  # reverses the order of |w|
    for method, expected in [("gmp", np.arange(16) >= 12), ("saliency", (np.arange(1, 17) * np.arange(16, 0, -1) ** 2)
                                                            >= np.sort(np.arange(1, 17) * np.arange(16, 0, -1) ** 2)[-4])]:
        updater = sparse.make_updater(params, method, 0.75, "uniform")  # one-shot at step 0
        state, p = updater.init(params, jax.random.key(0))
        state, p = updater.update(state, p, grads)
        np.testing.assert_array_equal(np.asarray(state.masks["l"]["kernel"]).reshape(-1), expected)


@pytest.mark.parametrize("method", ["global_magnitude", "global_saliency"])
def test_global_pruning_hits_the_exact_global_count_with_differing_layer_densities(method):
    params = mlp_params()
    params["l2"]["kernel"] = params["l2"]["kernel"] * 4.0  # larger weights: l2 keeps a larger share
    opt = sparse.sparse_optimizer(params, optax.sgd(0.01), method=method, sparsity=0.8, update_every=2,
                                  start_step=0, end_step=4, distribution="erk")
    final, state, history = run_loop(opt, params, 6, grad_fn=lambda p, t: jax.tree.map(jnp.ones_like, p))
    totals = [sum(mask_counts(s.sparse.masks)) for _, s in history]
    target = [round((1 - sparse.pruning_sparsity_at(opt.updater.pruning, 0.8, t)) * 2560) for t in (0, 2, 4)]
    assert totals[0] == target[0] and totals[2] == target[1] and totals[4] == totals[5] == target[2] == 512
    l1, l2 = mask_counts(state.sparse.masks)
    assert l1 + l2 == 512 and l2 / 512 > 2 * l1 / 2048  # one threshold: per-layer densities differ
    # the last pruning (t = 4) scored the weights entering it: every kept one is at least as large
    # as every one it pruned, across layers (saliency with unit gradients is |w| too)
    scores = [np.abs(np.asarray(w)) for w in kernels(history[3][0])]
    before, after = kernels(history[3][1].sparse.masks), kernels(state.sparse.masks)
    kept = np.concatenate([s[np.asarray(a)] for s, a in zip(scores, after)])
    pruned = np.concatenate([s[np.asarray(b) & ~np.asarray(a)] for s, a, b in zip(scores, after, before)])
    assert pruned.size == 768 - 512 and kept.min() >= pruned.max()


@pytest.mark.parametrize("method", ["ste_magnitude", "ste_random"])
def test_straight_through_trains_dense_weights_behind_a_sparse_forward(method):
    params = mlp_params()
    opt = sparse.sparse_optimizer(params, optax.sgd(0.1), method=method, sparsity=0.75, update_every=2,
                                  start_step=0, end_step=2, distribution="uniform")
    p0, s0 = opt.init(params, jax.random.key(1))
    step = jax.jit(opt.apply_gradients)
    grads = jax.tree.map(jnp.ones_like, params)
    p, s = step(grads, s0, p0)  # t = 0: s_i = 0, nothing pruned yet
    p, s = step(grads, s, p)
    p, s = step(grads, s, p)  # t = 2: pruned to 25% density
    assert mask_counts(s.sparse.masks) == [512, 128]
    dense_before = opt.dense_params(s)
    for _ in range(3):
        p, s = step(grads, s, p)
    dense = opt.dense_params(s)
    for m, w, d, d0 in zip(kernels(s.sparse.masks), kernels(p), kernels(dense), kernels(dense_before)):
        m = np.asarray(m)
        assert not np.any(np.asarray(w)[~m])  # the forward pass (the parameters) is sparse
        np.testing.assert_array_equal(np.asarray(w)[m], np.asarray(d)[m])  # ... the dense weights, masked
        # the gradient reached the pruned weights: each moved by 3 * lr * 1
        np.testing.assert_allclose(np.asarray(d)[~m], np.asarray(d0)[~m] - 0.3, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="keeps no dense weights"):
        sparse.sparse_optimizer(params, optax.sgd(0.1), method="gmp").dense_params(s)


def test_ste_magnitude_brings_back_a_pruned_weight_that_grew():
    params = {"l": {"kernel": jnp.array([[4.0, 3.0], [2.0, 1.0]])}}
    opt = sparse.sparse_optimizer(params, optax.sgd(1.0), method="ste_magnitude", sparsity=0.5, update_every=2,
                                  start_step=0, end_step=2, distribution="uniform", initial_sparsity=0.5)
    p, s = opt.init(params, jax.random.key(0))
    step = jax.jit(opt.apply_gradients)
    p, s = step(jax.tree.map(jnp.zeros_like, p), s, p)  # t = 0: keeps 4 and 3
    np.testing.assert_array_equal(np.asarray(p["l"]["kernel"]), [[4.0, 3.0], [0.0, 0.0]])
    p, s = step({"l": {"kernel": jnp.array([[0.0, 0.0], [0.0, -9.0]])}}, s, p)  # dense 1 -> 10 (pruned)
    p, s = step(jax.tree.map(jnp.zeros_like, p), s, p)  # t = 2: 10 and 4 are the largest
    np.testing.assert_array_equal(np.asarray(p["l"]["kernel"]), [[4.0, 0.0], [0.0, 10.0]])


@pytest.mark.slow
@pytest.mark.parametrize("method,moon", [(m, i % 2 == 0) for i, m in enumerate(NEW_METHODS)])
def test_dense_to_sparse_run_reaches_the_target_at_its_end_step_and_resumes_bit_identically(tmp_path, method, moon):
    """train_and_evaluate on the digits job: pruning 10%..50% of 40 steps (steps 4..20, every 5),
    MOON on or off; interrupted just before the end step (GMP also just after it, the first step
    that holds the target), resumed bit-identically."""
    config = short_digits_config(4)
    config.sparse.method, config.moon.enabled = method, moon
    config.sparse.prune_start_fraction, config.sparse.prune_end_fraction = 0.1, 0.5
    train_and_evaluate(config, tmp_path / "a", evaluate_at_end=False)
    for stop in (20, 21) if method == "gmp" else (20,):
        assert train_and_evaluate(config, tmp_path / "b", evaluate_at_end=False, stop_at_step=stop) == {}
        state, meta = restore_final(config, tmp_path / "b")
        total = sum(mask_counts(state.masks))
        target = sum(n for n in restore_final_counts(config) if n is not None)
        assert (total == target) == (stop == 21), (stop, total, target)  # the end step (20) reaches it
    train_and_evaluate(config, tmp_path / "b", evaluate_at_end=False)
    a, meta_a = restore_final(config, tmp_path / "a")
    b, meta_b = restore_final(config, tmp_path / "b")
    assert meta_a["step"] == meta_b["step"] == 40
    assert sum(mask_counts(a.masks)) == sum(n for n in restore_final_counts(config) if n is not None)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    if sparse.ALGORITHMS[method].straight_through:  # the forward weights are exactly the dense ones, masked
        dense = sparse.straight_through_weights(a.opt_state)
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(sparse.apply_masks(dense, a.masks))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        pruned = [np.asarray(d)[~np.asarray(m)] for d, m in zip(jax.tree.leaves(dense), jax.tree.leaves(
            a.masks, is_leaf=lambda x: x is None)) if m is not None]
        assert all(np.count_nonzero(p) == p.size for p in pruned)  # the pruned weights trained on


def restore_final_counts(config):
    from moon_jax.training import build_run

    _, setup = build_run(config, with_ood=False)
    assert setup.updater.pruning.end_step == 20
    return setup.updater.nonzeros


@pytest.mark.parametrize("field,value,message", [
    ("sparse.method", "magnitude", "allowed: dense, static, set, rigl, gmp"),
    ("sparse.prune_start_fraction", 0.8, "pruning must start no later than it ends"),
    ("sparse.prune_end_fraction", 1.0, r"must be in \[0.0, 1.0\)"),
    ("sparse.prune_start_fraction", -0.1, r"must be in \[0.0, 1.0\)"),
])
def test_config_rejects_bad_pruning_settings(field, value, message):
    config = short_digits_config(4)
    config.sparse.method = "gmp"
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=f"config.{field} = .* is not valid: {message}"):
        validate_config(config)


def test_config_rejects_pruning_into_averaging_and_ste_with_cigl():
    config = short_digits_config(4)  # averaging over the last epoch: from 75% of the steps
    config.sparse.method, config.sparse.prune_end_fraction = "gmp", 0.75
    with pytest.raises(ConfigError, match="config.sparse.prune_end_fraction = 0.75 is not valid: mask updates must stop"):
        validate_config(config)
    config.sparse.method, config.sparse.prune_end_fraction, config.moon.dropconnect_rate = "ste_magnitude", 0.5, 0.01
    with pytest.raises(ConfigError, match="config.moon.dropconnect_rate = 0.01 is not valid: .*straight-through"):
        validate_config(config)
    config.moon.dropconnect_rate = 0.0
    validate_config(config)


def test_readme_lists_the_registry_as_it_is():
    from conftest import REPO

    assert sparse.algorithms_table() in (REPO / "README.md").read_text()


def test_training_flops_follow_the_pruning_schedule():
    params = mlp_params()
    layers = [sparse.flops.LayerFlops("l1/kernel", "dense", 2 * 32 * 64, 1.0),
              sparse.flops.LayerFlops("l2/kernel", "dense", 2 * 64 * 8, 1.0)]
    one_shot = sparse.make_updater(params, "gmp", 0.75, "uniform", pruning=sparse.PruningSchedule(30, 30, 10))
    phases = one_shot.density_phases(100)
    assert phases == [(30, {"l1/kernel": 1.0, "l2/kernel": 1.0}), (70, {"l1/kernel": 0.25, "l2/kernel": 0.25})]
    # dense for 30 iterations, then a quarter of the FLOPs for 70: (30 + 70 / 4) / 100
    assert sparse.flops.phased_training_flops_relative(layers, phases) == pytest.approx(0.475)
    # straight-through: the weight gradient stays dense, 2 f_S + f_D a sparse iteration
    assert sparse.flops.phased_training_flops_relative(layers, phases, straight_through=True) == \
        pytest.approx((30 + 70 * 1.5 / 3) / 100)
    assert sparse.make_updater(params, "rigl").density_phases(100) == []
