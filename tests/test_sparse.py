"""Tests of the sparse-training engine: distributions, masks, RigL / SET / static, masked Optax."""
import collections
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import compiled_function_names
from moon_jax import sparse
from moon_jax.sparse.distribution import exact_counts


def small_params(key=0):
    """A tiny conv net's parameter tree (stem conv, one block conv, head) with biases and BN."""
    k = jax.random.split(jax.random.key(key), 4)
    return {
        "stem": {"kernel": jax.random.normal(k[0], (3, 3, 3, 16))},
        "bn": {"scale": jnp.ones(16), "bias": jnp.zeros(16)},
        "block": {"conv": {"kernel": jax.random.normal(k[1], (3, 3, 16, 32))}},
        "fc1": {"kernel": jax.random.normal(k[2], (32, 64)), "bias": jnp.zeros(64)},
        "head": {"kernel": jax.random.normal(k[3], (64, 11)), "bias": jnp.zeros(11)},
    }


def counts_of(masks):
    return [int(m.sum()) for m in jax.tree.leaves(masks)]


# ----------------------------------------------------------------------------- distributions
def test_leaf_rule_selects_kernels_and_honours_dense_options():
    params = small_params()
    names = set(sparse.sparsifiable_shapes(params, sparse.SparsityRule()))
    assert names == {"stem/kernel", "block/conv/kernel", "fc1/kernel", "head/kernel"}
    rule = sparse.SparsityRule(dense_first_layer=True, dense_last_layer=True)
    assert set(sparse.sparsifiable_shapes(params, rule)) == {"block/conv/kernel", "fc1/kernel"}


def test_erk_densities_match_closed_form():
    # Two layers, no overflow: density_l = eps * sum(shape)/prod(shape), eps from the budget.
    shapes = {"a": (3, 3, 16, 32), "b": (32, 64)}
    s = 0.9
    raw = {n: sum(sh) / math.prod(sh) for n, sh in shapes.items()}
    sizes = {n: math.prod(sh) for n, sh in shapes.items()}
    eps = (1 - s) * sum(sizes.values()) / sum(raw[n] * sizes[n] for n in shapes)
    got = sparse.layer_densities(shapes, s, "erk")
    for n in shapes:
        assert got[n] == pytest.approx(eps * raw[n], rel=1e-12)
        assert got[n] < 1


def test_erk_overflow_layer_becomes_dense_and_rest_resolved():
    # The tiny first layer would get density > 1: it is made dense, epsilon re-solved.
    shapes = {"tiny": (3, 3, 1, 4), "big1": (3, 3, 64, 64), "big2": (256, 256)}
    s = 0.8
    got = sparse.layer_densities(shapes, s, "erk")
    assert got["tiny"] == 1.0
    sizes = {n: math.prod(sh) for n, sh in shapes.items()}
    raw = {n: sum(sh) / math.prod(sh) for n, sh in shapes.items()}
    eps = ((1 - s) * sum(sizes.values()) - sizes["tiny"]) / (raw["big1"] * sizes["big1"] + raw["big2"] * sizes["big2"])
    assert got["big1"] == pytest.approx(eps * raw["big1"])
    assert got["big2"] == pytest.approx(eps * raw["big2"])
    total = sum(got[n] * sizes[n] for n in shapes)
    assert total == pytest.approx((1 - s) * sum(sizes.values()))


def test_er_ignores_kernel_dims_and_uniform_is_flat():
    shapes = {"a": (3, 3, 16, 32), "b": (5, 5, 16, 32)}
    er = sparse.layer_densities(shapes, 0.9, "er")
    assert er["a"] == pytest.approx(er["b"])
    uni = sparse.layer_densities(shapes, 0.7, "uniform")
    assert uni == {"a": pytest.approx(0.3), "b": pytest.approx(0.3)}


@pytest.mark.parametrize("distribution", sparse.DISTRIBUTIONS)
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_plan_hits_exact_global_count(distribution, sparsity):
    shapes = sparse.sparsifiable_shapes(small_params(), sparse.SparsityRule())
    plan = sparse.plan_sparsity(shapes, sparsity, distribution)
    total = sum(math.prod(s) for s in shapes.values())
    assert plan.total_nonzeros == round((1 - sparsity) * total)
    assert plan.achieved_sparsity == 1 - plan.total_nonzeros / total
    for name, count in plan.counts.items():
        ideal = plan.densities[name] * math.prod(shapes[name])
        assert abs(count - ideal) <= 1.0 + 1e-9


def test_bad_distribution_and_sparsity_raise():
    with pytest.raises(ValueError, match="allowed: uniform, er, erk"):
        sparse.layer_densities({"a": (4, 4)}, 0.5, "bernoulli")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sparse.layer_densities({"a": (4, 4)}, 1.0, "erk")
    with pytest.raises(ValueError, match="unknown sparse method"):
        sparse.make_updater(small_params(), "snip")


def test_exact_counts_largest_remainder():
    got = exact_counts({"a": 0.25, "b": 0.25, "c": 0.25}, {"a": 10, "b": 10, "c": 10}, 8)
    assert got == {"a": 3, "b": 3, "c": 2}  # 2.5 each: remainders tie, first layers first


# ----------------------------------------------------------------------------- schedule
def test_drop_fraction_cosine_schedule_values():
    sched = sparse.UpdateSchedule(update_every=100, end_step=1000, drop_fraction=0.3)
    for step, want in [(0, 0.3), (250, 0.15 * (1 + math.cos(math.pi / 4))), (500, 0.15), (1000, 0.0), (5000, 0.0)]:
        assert float(sparse.drop_fraction_at(sched, step)) == pytest.approx(want, abs=1e-7)
    assert [int(s) for s in np.nonzero([bool(sparse.is_update_step(sched, t)) for t in range(1200)])[0]] == list(
        range(99, 1000, 100)
    )
    assert sparse.update_steps(sched, 1200) == list(range(99, 1000, 100))
    run = sparse.UpdateSchedule.for_run(total_steps=2000, update_every=80)
    assert run.end_step == 1500


# ----------------------------------------------------------------------------- masks and updates
@pytest.mark.parametrize("method", ["static", "set", "rigl"])
@pytest.mark.parametrize("distribution", sparse.DISTRIBUTIONS)
def test_counts_exact_after_init_and_every_update(method, distribution):
    params = small_params()
    sched = sparse.UpdateSchedule(update_every=1, end_step=50, drop_fraction=0.5)
    upd = sparse.make_updater(params, method, 0.9, distribution, sched)
    state, params = upd.init(params, jax.random.key(1))
    expected = [c for c in upd.nonzeros if c is not None]
    assert counts_of(state.masks) == expected
    update = jax.jit(upd.update)
    key = jax.random.key(2)
    changed = False
    for t in range(6):
        key, gk, wk = jax.random.split(key, 3)
        grads = jax.tree.map(lambda p: jax.random.normal(gk, p.shape), params)
        # perturb active weights the way training would
        params = sparse.apply_masks(
            jax.tree.map(lambda p: p + 0.1 * jax.random.normal(wk, p.shape), params), state.masks
        )
        new_state, params = update(state, params, grads)
        assert counts_of(new_state.masks) == expected
        changed |= not sparse.masks_equal(state.masks, new_state.masks)
        state = upd.advance(new_state)
        # inactive weights are exactly zero
        for mask, p in zip(
            jax.tree.leaves(state.masks, is_leaf=lambda x: x is None),
            jax.tree.leaves(params),
        ):
            if mask is not None:
                assert not np.any(np.asarray(p)[~np.asarray(mask)])
    assert changed == (method != "static")


def test_dense_method_has_no_masks():
    params = small_params()
    upd = sparse.make_updater(params, "dense")
    state, out = upd.init(params, jax.random.key(0))
    assert all(m is None for m in jax.tree.leaves(state.masks, is_leaf=lambda x: x is None))
    assert jax.tree.all(jax.tree.map(jnp.array_equal, out, params))
    assert not upd.changes_masks


def hand_layer():
    """A 2x4 layer: active = {0,1,2,3}, inactive = {4,5,6,7}; the two smallest active weights
    have tiny gradients, so RigL does not grow them back."""
    w = jnp.array([[0.5, -0.1, 0.9, 0.05], [0.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[True, True, True, True], [False, False, False, False]])
    g = jnp.array([[9.0, 0.01, 9.0, 0.0], [0.2, -3.0, 0.7, 0.1]])
    return w, mask, g


def test_rigl_hand_built_drops_smallest_active_and_grows_top_gradient_inactive():
    w, mask, g = hand_layer()
    new = sparse.drop_and_grow(mask, jnp.abs(w), jnp.abs(g), k=2, nonzeros=4)
    # dropped: |0.05| (pos 3) and |-0.1| (pos 1); grown: |-3.0| (pos 5) and |0.7| (pos 6)
    want = jnp.array([[True, False, True, False], [False, True, True, False]])
    np.testing.assert_array_equal(new, want)


def test_rigl_full_update_zero_init_for_grown_and_dense_gradient_use():
    w, mask, g = hand_layer()
    params = {"layer": {"kernel": w}}
    upd = sparse.make_updater(params, "rigl", 0.5, "uniform", sparse.UpdateSchedule(1, 10, 0.5))
    state = sparse.SparseState(masks={"layer": {"kernel": mask}}, step=jnp.int32(0), rng=jax.random.key(0))
    new_state, new_params = upd.update(state, params, {"layer": {"kernel": g}})
    new_mask = new_state.masks["layer"]["kernel"]
    # drop fraction 0.5 at step 0 -> k = 2
    np.testing.assert_array_equal(new_mask, [[True, False, True, False], [False, True, True, False]])
    np.testing.assert_array_equal(
        new_params["layer"]["kernel"], np.array([[0.5, 0.0, 0.9, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    )


def test_rigl_ties_break_towards_lower_index():
    mask = jnp.array([True, True, False, False, False])
    w = jnp.array([1.0, 1.0, 0.0, 0.0, 0.0])
    g = jnp.array([0.0, 0.0, 1.0, 1.0, 1.0])
    new = sparse.drop_and_grow(mask, jnp.abs(w), jnp.abs(g), k=1, nonzeros=2)
    # tie on drop: the higher index is dropped; tie on grow: the lower index is grown
    np.testing.assert_array_equal(new, [True, False, True, False, False])


def test_dropped_and_regrown_connection_keeps_its_weight():
    mask = jnp.array([[True, True, False]])
    w = jnp.array([[0.3, 0.01, 0.0]])
    g = jnp.array([[0.0, 5.0, 1.0]])  # the dropped weight has the largest gradient
    params = {"l": {"kernel": w}}
    upd = sparse.make_updater(params, "rigl", 1 / 3, "uniform", sparse.UpdateSchedule(1, 10, 0.5))
    assert upd.nonzeros == (2,)
    state = sparse.SparseState({"l": {"kernel": mask}}, jnp.int32(0), jax.random.key(0))
    new_state, new_params = upd.update(state, params, {"l": {"kernel": g}})
    np.testing.assert_array_equal(new_state.masks["l"]["kernel"], mask)
    np.testing.assert_array_equal(new_params["l"]["kernel"], w)


def test_set_grows_only_inactive_and_uniformly():
    n = 40
    mask = jnp.arange(n) < 10
    w = jnp.where(mask, jnp.linspace(1.0, 2.0, n), 0.0)
    grown_counts = np.zeros(n)
    for seed in range(300):
        new = sparse.drop_and_grow(mask, jnp.abs(w), jax.random.uniform(jax.random.key(seed), (n,)), 3, 10)
        new = np.asarray(new)
        assert new.sum() == 10
        assert new[3:10].all()  # the 7 largest active weights are kept
        others = new.copy()
        others[3:10] = False
        assert others.sum() == 3  # 3 grown among {0, 1, 2 (just dropped)} U {10..39 (inactive)}
        grown_counts += others
    # grown positions spread over all 33 candidates (each expected 300*3/33 ~ 27)
    assert np.all(grown_counts[10:] > 5) and np.all(grown_counts[:3] > 5)


def test_selections_called_outside_jit_compile_once_per_shape():
    """Users' own loops call the selects eagerly; their radix passes are a ``fori_loop``, which
    would be traced and compiled again at every eager call (0.6 s each on CPU) were the selects
    not jitted themselves."""
    with compiled_function_names() as compiles:
        mask = jnp.arange(37) < 9
        for seed in range(3):
            grow = jax.random.uniform(jax.random.key(seed), (37,))
            assert int(sparse.drop_and_grow(mask, jnp.linspace(0.0, 1.0, 37), grow, 2 + seed, 9).sum()) == 9
            assert [int(m.sum()) for m in sparse.top_k_masks([grow, grow[:29]], [seed, 4])] == [seed, 4]
    counts = collections.Counter(compiles)
    assert counts["jit(top_k_mask)"] <= 1 and counts["jit(top_k_masks)"] <= 1, counts
    assert "jit(scan)" not in counts and "jit(while)" not in counts, counts  # no loop compiled on its own


def test_one_compilation_for_ten_updates():
    params = small_params()
    sched = sparse.UpdateSchedule(update_every=1, end_step=100, drop_fraction=0.3)
    upd = sparse.make_updater(params, "rigl", 0.9, "erk", sched)
    state, params = upd.init(params, jax.random.key(0))
    traces = []

    @jax.jit
    def step(state, params, grads):
        traces.append(1)
        state, params = upd.update(state, params, grads)
        return upd.advance(state), params

    key = jax.random.key(3)
    fractions = set()
    for _ in range(10):
        key, sub = jax.random.split(key)
        grads = jax.tree.map(lambda p: jax.random.normal(sub, p.shape), params)
        fractions.add(round(float(sparse.drop_fraction_at(sched, state.step)), 6))
        state, params = step(state, params, grads)
    assert int(state.step) == 10
    assert len(fractions) == 10  # k differed at every update
    assert len(traces) == 1
    assert step._cache_size() == 1


def test_maybe_update_gates_on_schedule_inside_jit():
    params = small_params()
    sched = sparse.UpdateSchedule(update_every=3, end_step=100, drop_fraction=0.5)
    upd = sparse.make_updater(params, "set", 0.8, "erk", sched)
    state, params = upd.init(params, jax.random.key(0))
    grads = jax.tree.map(jnp.ones_like, params)
    f = jax.jit(upd.maybe_update)
    s1, _ = f(state, params, grads)  # step 0: not an update step
    assert sparse.masks_equal(s1.masks, state.masks)
    s2, _ = f(state._replace(step=jnp.int32(2)), params, grads)  # step 2: (2+1) % 3 == 0
    assert not sparse.masks_equal(s2.masks, state.masks)


# ----------------------------------------------------------------------------- hypothesis
def largest_k(scores, k, candidates=None) -> np.ndarray:
    """The oracle of the top-k selections: a boolean mask over ``scores`` (flattened) of the ``k``
    largest among ``candidates`` (flat indices, increasing; all by default), ties to the lower
    index, as a stable descending sort orders them."""
    scores = np.asarray(scores).reshape(-1)
    candidates = np.arange(scores.size) if candidates is None else np.asarray(candidates)
    chosen = np.zeros(scores.size, bool)
    chosen[candidates[np.argsort(-scores[candidates], kind="stable")[:k]]] = True
    return chosen


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(
        st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=4
    ),
    sparsity=st.floats(0.0, 0.99),
    distribution=st.sampled_from(sparse.DISTRIBUTIONS),
    method=st.sampled_from(["set", "rigl"]),
    seed=st.integers(0, 2**16),
)
def test_property_counts_and_zeros(shapes, sparsity, distribution, method, seed):
    params = {f"l{i}": {"kernel": jnp.ones((k, k, a, b))} for i, (k, a, b) in enumerate(shapes)}
    sched = sparse.UpdateSchedule(update_every=1, end_step=10, drop_fraction=0.9)
    upd = sparse.make_updater(params, method, sparsity, distribution, sched)
    plan = upd.plan
    total = plan.total_size
    assert plan.total_nonzeros == round((1 - sparsity) * total)
    assert all(0 <= plan.counts[n] <= plan.sizes[n] for n in plan.counts)
    key = jax.random.key(seed)
    params = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
    state, params = upd.init(params, jax.random.key(seed + 1))
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed + 2), p.shape), params)
    new_state, new_params = upd.update(state, params, grads)
    for name, leaf_mask, leaf_new, leaf_p, leaf_before, leaf_grad, count in zip(
        upd.names,
        jax.tree.leaves(state.masks, is_leaf=lambda x: x is None),
        jax.tree.leaves(new_state.masks, is_leaf=lambda x: x is None),
        jax.tree.leaves(new_params),
        jax.tree.leaves(params),
        jax.tree.leaves(grads),
        upd.nonzeros,
    ):
        if count is None:
            assert leaf_mask is None and plan.counts[name] == plan.sizes[name]
            continue
        assert int(leaf_mask.sum()) == count == int(leaf_new.sum())
        assert not np.any(np.asarray(leaf_p)[~np.asarray(leaf_new)])
        # grown connections start at zero
        grown = np.asarray(leaf_new) & ~np.asarray(leaf_mask)
        assert not np.any(np.asarray(leaf_p)[grown])
        # The drop keeps the count - k active weights of largest magnitude, k = floor(0.9 * count)
        # at step 0; the grow adds k among the rest (a dropped weight may come back): by gradient
        # magnitude for RigL, at random for SET.
        k = int(np.floor(np.float32(0.9) * np.float32(count)))
        old, new = np.asarray(leaf_mask).reshape(-1), np.asarray(leaf_new).reshape(-1)
        kept = largest_k(np.abs(leaf_before), count - k, np.flatnonzero(old))
        assert np.all(new[kept]) and int((new & ~kept).sum()) == k
        if method == "rigl":
            expected = kept | largest_k(np.abs(leaf_grad), k, np.flatnonzero(~kept))
            np.testing.assert_array_equal(new, expected)


# ----------------------------------------------------------------------------- masked optax
@pytest.mark.parametrize(
    "inner",
    [
        lambda: sparse.sgd_nesterov(lambda s: 0.1, momentum=0.9, weight_decay=5e-4),
        lambda: sparse.adamw(lambda s: 1e-2, weight_decay=1e-2),
        lambda: optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9)),
    ],
)
def test_masked_weights_stay_exactly_zero_after_optimizer_steps(inner):
    params = small_params()
    upd = sparse.make_updater(params, "static", 0.9, "erk")
    state, params = upd.init(params, jax.random.key(0))
    tx = sparse.masked_updates(inner())
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key, step):
        grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
        updates, opt_state = tx.update(grads, opt_state, params, masks=state.masks, step=step)
        return optax.apply_updates(params, updates), opt_state

    key = jax.random.key(1)
    for t in range(5):
        key, sub = jax.random.split(key)
        params, opt_state = step(params, opt_state, sub, t)
    masks = jax.tree.leaves(state.masks, is_leaf=lambda x: x is None)
    for mask, p in zip(masks, jax.tree.leaves(params)):
        if mask is not None:
            p = np.asarray(p)
            assert np.all(p[~np.asarray(mask)] == 0.0)
            assert np.all(p[np.asarray(mask)] != 0.0)
    # every param-shaped optimizer state is zero at inactive positions
    checked = 0
    for leaf in jax.tree.leaves(opt_state):
        for mask, p in zip(masks, jax.tree.leaves(params)):
            if mask is not None and getattr(leaf, "shape", None) == p.shape and leaf.shape == mask.shape:
                assert np.all(np.asarray(leaf)[~np.asarray(mask)] == 0.0)
                checked += 1
    assert checked > 0, "no optimizer state was checked"


def test_masked_sgd_matches_pytorch_sgd_nesterov_formula():
    # Dense leaf: torch.optim.SGD(lr, momentum=mu, nesterov=True, weight_decay=wd):
    #   d = g + wd*p ; buf = mu*buf + d ; p -= lr*(d + mu*buf)
    lr, mu, wd = 0.1, 0.9, 5e-4
    p = {"w": {"bias": jnp.array([1.0, -2.0])}}
    tx = sparse.masked_updates(sparse.sgd_nesterov(lambda s: lr, mu, wd))
    masks = {"w": {"bias": None}}
    st = tx.init(p)
    buf = np.zeros(2)
    pn = np.array([1.0, -2.0])
    for g in ([0.5, 0.1], [-0.2, 0.3]):
        u, st = tx.update({"w": {"bias": jnp.array(g)}}, st, p, masks=masks, step=0)
        p = optax.apply_updates(p, u)
        d = np.array(g) + wd * pn
        buf = mu * buf + d
        pn = pn - lr * (d + mu * buf)
    np.testing.assert_allclose(p["w"]["bias"], pn, rtol=1e-6)


def test_reset_optimizer_state_zeroes_grown_and_dropped():
    params = {"l": {"kernel": jnp.array([1.0, 2.0, 0.0, 0.0]), "bias": jnp.ones(2)}}
    old = {"l": {"kernel": jnp.array([True, True, False, False]), "bias": None}}
    new = {"l": {"kernel": jnp.array([True, False, True, False]), "bias": None}}
    tx = optax.chain(sparse.masked_updates(optax.adam(1e-3)), optax.scale(1.0))
    opt_state = tx.init(params)
    filled = jax.tree.map(lambda x: jnp.full_like(x, 7.0) if x.ndim else x, opt_state)
    reset = sparse.reset_optimizer_state(filled, params, old, new)
    adam_state = reset[0].inner_state[0]
    for moment in (adam_state.mu, adam_state.nu):
        np.testing.assert_array_equal(moment["l"]["kernel"], [7.0, 0.0, 0.0, 0.0])
        np.testing.assert_array_equal(moment["l"]["bias"], [7.0, 7.0])
    assert int(adam_state.count) == int(filled[0].inner_state[0].count)


# ----------------------------------------------------------------------------- FLOPs
class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), padding="SAME", name="stem")(x)  # 6x6 out
        x = nn.Conv(4, (3, 3), strides=2, padding="SAME", name="conv2")(x)  # 3x3 out
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(5, name="head")(x)


def test_flops_hand_computed():
    model = TinyNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))
    layers = sparse.layer_flops(model.apply, variables, (6, 6, 2), {"conv2/kernel": 0.25})
    got = {l.name: (l.dense_flops, l.sparse_flops) for l in layers}
    assert got["stem/kernel"] == (2 * 36 * 9 * 2 * 8, 2 * 36 * 9 * 2 * 8)
    assert got["conv2/kernel"] == (2 * 9 * 9 * 8 * 4, 0.25 * 2 * 9 * 9 * 8 * 4)
    assert got["head/kernel"] == (2 * 36 * 5, 2 * 36 * 5)


def test_training_flops_relative_rigl_accounting():
    sched = sparse.UpdateSchedule(update_every=10, end_step=50)
    # 5 updates (steps 9..49) in 100 steps: (95*3*fs + 5*(2fs+fd)) / (300 fd)
    rel = sparse.training_flops_relative("rigl", 0.1, 1.0, 100, sched)
    assert rel == pytest.approx((95 * 0.3 + 5 * 1.2) / 300)
    assert sparse.training_flops_relative("set", 0.1, 1.0, 100, sched) == pytest.approx(0.1)
    assert sparse.training_flops_relative("dense", 0.1, 1.0, 100, sched) == 1.0


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.sampled_from([-np.inf, -2.5, -0.0, 0.0, 1e-30, 0.5, 0.5, 3.0, np.inf]), min_size=1, max_size=40),
    k_frac=st.floats(0.0, 1.0),
)
def test_top_k_mask_equals_a_stable_sort(values, k_frac):
    scores = np.asarray(values, np.float32)
    k = int(round(k_frac * scores.size))
    got = np.asarray(sparse.top_k_mask(jnp.asarray(scores), k))
    assert got.sum() == k
    np.testing.assert_array_equal(got, largest_k(scores, k))  # -0.0 and 0.0 tie, as they do in the sort


@settings(max_examples=30, deadline=None)
@given(
    arrays=st.lists(st.lists(st.sampled_from([-np.inf, -2.5, -0.0, 0.0, 1e-30, 0.5, 3.0, np.inf, np.nan]),
                             min_size=1, max_size=30), min_size=1, max_size=5),
    k_fracs=st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5),
)
def test_top_k_masks_of_many_arrays_equal_each_arrays_own(arrays, k_fracs):
    scores = [jnp.asarray(a, jnp.float32) for a in arrays]
    ks = [int(round(f * s.size)) for f, s in zip(k_fracs, scores)]
    for got, s, k in zip(sparse.top_k_masks(scores, ks), scores, ks):
        assert int(got.sum()) == k
        np.testing.assert_array_equal(got, sparse.top_k_mask(s, k))


def test_drop_and_grow_of_many_layers_equals_each_layers_own():
    keys = jax.random.split(jax.random.PRNGKey(5), 9)
    shapes, counts, ks = [(6, 7), (50,), (3, 3, 4)], [10, 25, 30], [3, 0, 6]
    masks = [sparse.random_mask(keys[i], s, c) for i, (s, c) in enumerate(zip(shapes, counts))]
    drops = [jnp.round(jax.random.normal(keys[3 + i], s) * 4) for i, s in enumerate(shapes)]  # ties
    grows = [jnp.abs(jnp.round(jax.random.normal(keys[6 + i], s) * 4)) for i, s in enumerate(shapes)]
    many = sparse.drop_and_grow_many(masks, drops, grows, ks, counts)
    for got, m, d, g, k, c in zip(many, masks, drops, grows, ks, counts):
        np.testing.assert_array_equal(got, sparse.drop_and_grow(m, d, g, k, c))
        assert int(got.sum()) == c


def test_uniform_draws_are_jax_uniform_draws_from_one_hash():
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    shapes = [(3, 3, 2, 5), (7,), (1,), (40, 33)]
    for draws in (sparse.uniform_draws(keys, shapes), jax.jit(lambda k: sparse.uniform_draws(k, shapes))(keys)):
        for got, key, shape in zip(draws, keys, shapes):
            np.testing.assert_array_equal(got, jax.random.uniform(key, shape))
    jaxpr = str(jax.make_jaxpr(lambda k: sparse.uniform_draws(k, shapes))(keys))
    assert jaxpr.count("threefry2x32") == 1  # one hash for the four arrays
    typed = jax.random.split(jax.random.key(7), 4)  # new-style keys: the same, one hash too
    for got, key, shape in zip(sparse.uniform_draws(typed, shapes), typed, shapes):
        np.testing.assert_array_equal(got, jax.random.uniform(key, shape))
    assert str(jax.make_jaxpr(lambda k: sparse.uniform_draws(k, shapes))(typed)).count("threefry2x32") == 1
    rbg = jax.random.split(jax.random.key(7, impl="rbg"), 2)  # another generator: drawn one by one
    for got, key in zip(sparse.uniform_draws(rbg, shapes[:2]), rbg):
        np.testing.assert_array_equal(got, jax.random.uniform(key, got.shape))


# ----------------------------------------------------------------------------- sparse_optimizer
def _hand_wired(params, grads_seq, updater, tx, rng):
    """The loop sparse_optimizer replaces, written out: mask update or masked optimizer step."""
    state, params = updater.init(params, rng)
    opt_state = tx.init(params)
    mask_update, reset, optimizer_update = jax.jit(updater.update), jax.jit(sparse.reset_optimizer_state), jax.jit(tx.update)
    for grads in grads_seq:
        if updater.is_update_step(int(state.step)):
            new_state, params = mask_update(state, params, grads)
            opt_state = reset(opt_state, params, state.masks, new_state.masks)
            state = new_state
        else:
            updates, opt_state = optimizer_update(grads, opt_state, params, masks=state.masks)
            params = optax.apply_updates(params, updates)
        state = updater.advance(state)
    return params, state, opt_state


def two_layer_params():
    k = jax.random.split(jax.random.key(5), 2)
    return {"fc1": {"kernel": jax.random.normal(k[0], (24, 32)), "bias": jnp.zeros(32)},
            "fc2": {"kernel": jax.random.normal(k[1], (32, 16))}}


def test_sparse_optimizer_equals_the_hand_wired_loop_and_keeps_masks_exact():
    params = two_layer_params()
    keys = jax.random.split(jax.random.key(3), 12)
    grads_seq = [jax.tree.map(lambda p, i=i: jax.random.normal(keys[i], p.shape), params) for i in range(12)]
    opt = sparse.sparse_optimizer(params, optax.sgd(0.1, momentum=0.9), method="rigl", sparsity=0.8,
                                  update_every=3, end_step=9)
    p, state = opt.init(params, jax.random.key(0))
    initial_masks = opt.masks(state)
    step = jax.jit(opt.apply_gradients)
    for grads in grads_seq:
        p, state = step(grads, state, p)
    expected_params, expected_sparse, _ = _hand_wired(
        params, grads_seq, opt.updater, sparse.masked_updates(optax.sgd(0.1, momentum=0.9)), jax.random.key(0))
    assert int(opt.step(state)) == 12
    assert sparse.masks_equal(opt.masks(state), expected_sparse.masks)
    assert not sparse.masks_equal(opt.masks(state), initial_masks)  # RigL changed them (steps 2, 5, 8)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(expected_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert counts_of(opt.masks(state)) == counts_of(initial_masks)
    for leaf, masked in zip(jax.tree.leaves(p), jax.tree.leaves(sparse.apply_masks(p, opt.masks(state)))):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(masked))  # inactive weights exactly zero


def test_sparse_optimizer_static_never_branches_and_forwards_extra_args():
    params = two_layer_params()
    seen = []

    def record():
        def update(updates, state, params=None, *, take_snapshot=False, **extra):
            seen.append(take_snapshot)
            return updates, state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

    opt = sparse.sparse_optimizer(params, optax.sgd(0.1), method="static", sparsity=0.5, then=[record()])
    p, state = opt.init(params, jax.random.key(0))
    masks = opt.masks(state)
    grads = jax.tree.map(jnp.ones_like, params)
    p, state = opt.apply_gradients(grads, state, p, take_snapshot=True)
    assert seen == [True] and sparse.masks_equal(opt.masks(state), masks) and int(opt.step(state)) == 1
