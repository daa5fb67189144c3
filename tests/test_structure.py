"""Structured sparsity (moon_jax/sparse/structure.py): N:M groups, blocks and channels hold
exactly through init, drop and grow, in the updater and in training; the default stays
bit-identical to the unstructured engine."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, restore_final, run_python
from moon_jax.sparse import (
    UNSTRUCTURED,
    SparsityRule,
    Structure,
    UpdateSchedule,
    drop_and_grow,
    make_updater,
    parse_structure,
    sparse_optimizer,
    structured_count,
    structured_drop_and_grow,
    structured_random_mask,
    top_k_mask,
    top_structured_mask,
)

NM = parse_structure("nm_2,4")


# ----------------------------------------------------------------------------- independent checks
def nm_group_sums(mask, m):
    """Active weights per group of ``m`` consecutive inputs (axis -2), by a plain reshape."""
    *lead, n_in, n_out = mask.shape
    return np.asarray(mask).reshape(*lead, n_in // m, m, n_out).sum(axis=-2)


def unit_sums(mask, structure):
    """Active weights per block / channel of a mask's GEMM view ``(prod(shape[:-1]), out)``."""
    view = np.asarray(mask).reshape(-1, mask.shape[-1])
    if structure.kind == "channel":
        return view.sum(axis=0)
    r, c = structure.block
    return view.reshape(view.shape[0] // r, r, view.shape[1] // c, c).sum(axis=(1, 3))


def assert_structured(mask, structure, count):
    """``mask`` has exactly ``count`` active weights in the structure's pattern."""
    assert int(np.sum(mask)) == count
    if structure.kind == "nm":
        assert np.all(nm_group_sums(mask, structure.m) == structure.n)
    elif structure.kind in ("block", "channel"):
        sums = unit_sums(mask, structure)
        size = math.prod(mask.shape) // sums.size
        assert set(np.unique(sums)) <= {0, size}, "a unit is partly active"


def reference_nm_drop_and_grow(mask, drop, grow, k, count, n, m):
    """The rule in plain numpy: keep the ``count - k`` active weights of largest ``drop`` (ties:
    lower flat index), then every group grows back what it lost, by ``grow`` among its inactive."""
    mask, drop, grow = (np.asarray(x).reshape(-1) for x in (mask, drop, grow))
    active = np.flatnonzero(mask)
    order = active[np.lexsort((active, -drop[active]))]
    kept = np.zeros_like(mask)
    kept[order[: count - k]] = True
    index = np.arange(mask.size).reshape(*SHAPE[:-2], SHAPE[-2] // m, m, SHAPE[-1])
    groups = np.moveaxis(index, -2, -1).reshape(-1, m)
    new = kept.copy()
    for g in groups:
        lost = n - int(kept[g].sum())
        free = g[~kept[g]]
        new[free[np.lexsort((free, -grow[free]))][:lost]] = True
    return new.reshape(SHAPE)


def reference_unit_drop_and_grow(mask, drop, grow, k_units, structure):
    """Blocks / channels in plain numpy: units ranked by summed scores, whole units moved."""
    def to_units(x):
        return unit_sums(np.asarray(x, np.float64), structure).reshape(-1)

    active = np.flatnonzero(to_units(mask) > 0)
    d, g = to_units(drop), to_units(grow)
    kept = np.zeros(d.size, bool)
    kept[active[np.lexsort((active, -d[active]))][: active.size - k_units]] = True
    free = np.flatnonzero(~kept)
    new = kept.copy()
    new[free[np.lexsort((free, -g[free]))][:k_units]] = True
    return new


SHAPE = (3, 3, 8, 6)  # a conv kernel (kh, kw, in, out)


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("unstructured", Structure()),
        ("nm_2,4", Structure("nm", 2, 4)),
        ("2:4", Structure("nm", 2, 4)),
        (" NM_1,8 ", Structure("nm", 1, 8)),
        ("block_4,4", Structure("block", block=(4, 4))),
        ("block_2,8", Structure("block", block=(2, 8))),
        ("channel", Structure("channel")),
    ],
)
def test_parse_spellings_and_canonical_name(spec, expected):
    structure = parse_structure(spec)
    assert structure == expected
    assert parse_structure(str(structure)) == structure  # str() is a valid spelling
    assert parse_structure(structure) is structure


@pytest.mark.parametrize("bad", ["nm_4,4", "nm_3,2", "nm_0,4", "nm_2", "2:4:8", "block_4", "block_0,4", "columns", "", 3])
def test_parse_errors_name_the_value_and_the_spellings(bad):
    with pytest.raises(ValueError) as err:
        parse_structure(bad)
    assert repr(bad) in str(err.value) and "allowed: 'unstructured', 'nm_N,M'" in str(err.value)


def test_a_structure_built_directly_is_validated_too():
    with pytest.raises(ValueError, match="needs 0 < N < M, got 4:2"):
        Structure("nm", 4, 2)
    with pytest.raises(ValueError, match=r"positive sizes, got \(0, 4\)"):
        Structure("block", block=(0, 4))
    with pytest.raises(ValueError, match="unknown structure kind 'rows'"):
        Structure("rows")


def test_config_field_is_validated_and_named_in_the_method():
    from conftest import load_config
    from moon_jax.training.config import ConfigError, describe_method, validate_config

    config = load_config("default")
    assert config.sparse.structure == "unstructured"
    config.sparse.structure = "nm_4,2"
    with pytest.raises(ConfigError, match=r"config.sparse.structure = 'nm_4,2' is not valid: .*N < M"):
        validate_config(config)
    config.sparse.structure = "2:4"
    validate_config(config)
    assert describe_method(config) == "MOON + rigl 90% erk 2:4"
    config.sparse.method = "dense"
    with pytest.raises(ConfigError, match="method dense has no masks"):
        validate_config(config)


# ----------------------------------------------------------------------------- counts and plans
def test_structured_counts_and_rounding():
    size = math.prod(SHAPE)  # 432
    assert structured_count(UNSTRUCTURED, SHAPE, 37) == 37
    assert structured_count(NM, SHAPE, 37) == 216  # N/M whatever the plan asked
    assert structured_count(parse_structure("1:8"), SHAPE, 37) == 54
    assert structured_count(NM, SHAPE, size) == size  # planned dense stays dense
    assert structured_count(NM, (3, 3, 3, 8), 20) == 216  # 3 inputs: not a multiple of 4, dense
    block = parse_structure("block_4,4")
    assert structured_count(block, (8, 8), 20) == 16  # 1.25 blocks -> 1
    assert structured_count(block, (8, 8), 24) == 32  # 1.5 -> 2 (half up)
    assert structured_count(block, (8, 8), 0) == 16  # at least one unit
    assert structured_count(block, (6, 8), 10) == 48  # 6 rows are not tiled by 4: dense
    assert structured_count(block, (3, 3, 4, 8), 100) == 96  # GEMM view 36 x 8: 6.25 blocks -> 6
    channel = parse_structure("channel")
    assert structured_count(channel, (3, 3, 4, 10), 100) == 108  # 100 / 36 = 2.78 -> 3 filters


def tree():
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    return {
        "stem": {"kernel": jax.random.normal(keys[0], (3, 3, 3, 8)), "bias": jnp.zeros(8)},
        "conv": {"kernel": jax.random.normal(keys[1], (3, 3, 8, 8))},
        "head": {"kernel": jax.random.normal(keys[2], (8, 4))},
    }


def test_nm_plan_density_sparsity_and_dense_rules():
    upd = make_updater(tree(), "rigl", 0.9, "uniform", structure="nm_2,4")
    counts = dict(zip(upd.names, upd.nonzeros))
    assert counts == {"conv/kernel": 288, "head/kernel": 16, "stem/bias": None, "stem/kernel": None}
    assert upd.plan.is_dense("stem/kernel")  # 3 input channels: not a multiple of 4
    assert upd.plan.densities["conv/kernel"] == 0.5
    same = make_updater(tree(), "rigl", 0.6, "uniform", structure="nm_2,4")
    assert same.nonzeros == upd.nonzeros  # the sparsity value does not change an N:M layer
    erk = make_updater(tree(), "rigl", 0.6, "erk", structure="nm_2,4")
    assert make_updater(tree(), "rigl", 0.6, "erk").plan.is_dense("head/kernel")
    assert dict(zip(erk.names, erk.nonzeros)) == {**counts, "head/kernel": None}  # ERK's dense layer stays dense
    last = make_updater(tree(), "rigl", 0.9, "uniform", rule=SparsityRule(dense_last_layer=True), structure="nm_2,4")
    assert dict(zip(last.names, last.nonzeros))["head/kernel"] is None  # the flags still apply
    assert all(c is None for c in make_updater(tree(), "static", 0.0, structure="nm_2,4").nonzeros)
    with pytest.raises(ValueError, match="'dense' does not support the nm_2,4 structure"):
        make_updater(tree(), "dense", structure="nm_2,4")  # no masks to structure


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("spec", ["nm_2,4", "nm_1,4", "nm_3,8", "block_4,2", "channel"])
@pytest.mark.parametrize("shape", [(8, 6), SHAPE])
def test_random_mask_has_exact_structure(spec, shape):
    structure = parse_structure(spec)
    count = structured_count(structure, shape, math.prod(shape) // 3)
    for seed in range(3):
        assert_structured(structured_random_mask(jax.random.PRNGKey(seed), shape, count, structure), structure, count)


def test_nm_selection_keeps_top_n_per_group_ties_to_lower_index():
    scores = jnp.array([[0.1, 5.0], [0.9, 5.0], [0.3, 5.0], [0.7, 5.0], [2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    mask = np.asarray(top_structured_mask(scores, 8, NM))
    expected = np.array([[0, 1], [1, 1], [0, 0], [1, 0], [1, 1], [1, 1], [0, 0], [0, 0]], bool)
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("spec", ["block_2,2", "channel"])
def test_unit_selection_keeps_units_of_largest_summed_score(spec):
    structure = parse_structure(spec)
    scores = jnp.arange(32.0).reshape(4, 8) % 5  # hand-checkable sums
    count = structured_count(structure, (4, 8), 12)
    mask = np.asarray(top_structured_mask(scores, count, structure))
    sums = unit_sums(np.asarray(scores), structure).reshape(-1)
    units = unit_sums(mask, structure).reshape(-1) > 0
    best = np.lexsort((np.arange(sums.size), -sums))[: units.sum()]
    assert set(np.flatnonzero(units)) == set(best)
    assert_structured(mask, structure, count)


def test_nm_drop_and_grow_matches_the_reference_and_keeps_every_group_at_n():
    count = structured_count(NM, SHAPE, 0)
    update = jax.jit(lambda mask, d, g, k: structured_drop_and_grow(mask, d, g, k, count, NM))
    rng = np.random.default_rng(0)
    mask = structured_random_mask(jax.random.PRNGKey(0), SHAPE, count, NM)
    for step in range(25):
        k = int(rng.integers(0, count + 1)) if step % 5 else (0 if step == 0 else count)
        drop, grow = np.abs(rng.normal(size=SHAPE)).astype(np.float32), np.abs(rng.normal(size=SHAPE)).astype(np.float32)
        new = update(mask, drop, grow, jnp.int32(k))  # traced k: one compilation
        np.testing.assert_array_equal(np.asarray(new), reference_nm_drop_and_grow(mask, drop, grow, k, count, 2, 4))
        assert_structured(new, NM, count)
        mask = new
    assert update._cache_size() == 1


@pytest.mark.parametrize("spec", ["block_2,3", "channel"])
def test_unit_drop_and_grow_moves_whole_units_like_the_reference(spec):
    structure = parse_structure(spec)
    count = structured_count(structure, SHAPE, 150)
    unit = math.prod(SHAPE) // unit_sums(np.zeros(SHAPE), structure).size
    update = jax.jit(lambda mask, d, g, k: structured_drop_and_grow(mask, d, g, k, count, structure))
    rng = np.random.default_rng(1)
    mask = structured_random_mask(jax.random.PRNGKey(1), SHAPE, count, structure)
    for _ in range(15):
        k = int(rng.integers(0, count + 1))
        drop, grow = np.abs(rng.normal(size=SHAPE)).astype(np.float32), np.abs(rng.normal(size=SHAPE)).astype(np.float32)
        new = update(mask, drop, grow, jnp.int32(k))
        expected = reference_unit_drop_and_grow(mask, drop, grow, k // unit, structure)
        np.testing.assert_array_equal(unit_sums(new, structure).reshape(-1) > 0, expected)
        assert_structured(new, structure, count)
        mask = new


# ----------------------------------------------------------------------------- the default is unchanged
# Masks of the pre-structure engine (commit 74ed859, moon_jax/sparse/updaters.py) for tree() at
# sparsity 0.8 ERK, PRNGKey(42): per method, init then one update, leaves conv, head; np.packbits.
GOLDEN = {
    "rigl": ["08a001442440008820400098010084010002002020001000220001120100008081840094", "3b48a6f37fe3",
             "08a00150a0400000304000980300846100000000005010000000081200100106008080e2", "8f492556fdf7"],
    "set": ["08a001442440008820400098010084010002002020001000220001120100008081840094", "3b48a6f37fe3",
            "08a2034020400020204800b8000085110000040000065040004418120800002000000180", "3f5d95775ce1"],
}


def golden_tree(seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {"conv": {"kernel": jax.random.normal(keys[0], (3, 3, 4, 8)), "bias": jnp.zeros(8)},
            "head": {"kernel": jax.random.normal(keys[1], (8, 6))}}


@pytest.mark.parametrize("method", ["rigl", "set"])
@pytest.mark.parametrize("structure", [None, "unstructured", UNSTRUCTURED])
def test_default_unstructured_masks_are_bit_identical_to_before(method, structure):
    extra = {} if structure is None else {"structure": structure}
    schedule = UpdateSchedule(update_every=1, end_step=10, drop_fraction=0.5)
    upd = make_updater(golden_tree(7), method, 0.8, "erk", schedule, **extra)
    state, params = upd.init(golden_tree(7), jax.random.PRNGKey(42))
    updated, _ = upd.update(state, params, golden_tree(8))
    packed = [np.packbits(np.asarray(m).reshape(-1)).tobytes().hex()
              for m in jax.tree.leaves(state.masks) + jax.tree.leaves(updated.masks)]
    assert packed == GOLDEN[method]


def test_unstructured_functions_are_the_plain_ones():
    key = jax.random.PRNGKey(3)
    drop, grow = jax.random.uniform(key, SHAPE), jax.random.uniform(jax.random.PRNGKey(4), SHAPE)
    mask = structured_random_mask(key, SHAPE, 100, UNSTRUCTURED)
    np.testing.assert_array_equal(mask, top_k_mask(jax.random.uniform(key, SHAPE), 100))
    np.testing.assert_array_equal(structured_drop_and_grow(mask, drop, grow, 30, 100, UNSTRUCTURED),
                                  drop_and_grow(mask, drop, grow, 30, 100))


# ----------------------------------------------------------------------------- updater and training
def assert_tree_structured(masks, params, upd):
    checked = 0
    for mask, p, count in zip(jax.tree.leaves(masks, is_leaf=lambda x: x is None), jax.tree.leaves(params), upd.nonzeros):
        assert (mask is None) == (count is None)
        if mask is not None:
            assert_structured(mask, upd.structure, count)
            assert not np.any(np.asarray(p)[~np.asarray(mask)])
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("method", ["static", "set", "rigl"])
@pytest.mark.parametrize("spec", ["nm_2,4", "block_2,2", "channel"])
def test_sparse_optimizer_keeps_the_structure_through_training(method, spec):
    params = tree()
    opt = sparse_optimizer(params, optax.sgd(0.1, momentum=0.9), method=method, sparsity=0.5,
                           distribution="uniform", update_every=2, end_step=12, drop_fraction=0.9, structure=spec)
    assert opt.updater.structure == parse_structure(spec)
    params, state = opt.init(params, jax.random.PRNGKey(0))
    first = state.sparse.masks
    target = jax.random.normal(jax.random.PRNGKey(9), (5, 4))
    x = jax.random.normal(jax.random.PRNGKey(10), (5, 6, 6, 3))

    def loss(p):
        h = jax.lax.conv_general_dilated(x, p["stem"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.lax.conv_general_dilated(jnp.tanh(h), p["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.mean((jnp.mean(jnp.tanh(h), axis=(1, 2)) @ p["head"]["kernel"] - target) ** 2)

    step = jax.jit(lambda p, s: opt.apply_gradients(jax.grad(loss)(p), s, p))
    for _ in range(14):
        params, state = step(params, state)
        assert_tree_structured(state.sparse.masks, params, opt.updater)
    moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(state.sparse.masks)))
    assert moved == (method != "static")


def test_config_structure_reaches_the_run_updater():
    from conftest import tiny_digits_config
    from moon_jax.training import build_run

    config = tiny_digits_config()
    config.sparse.structure = "2:4"
    _, setup = build_run(config, with_ood=False)
    upd = setup.updater
    assert upd.structure == NM
    densities = {n: upd.plan.counts[n] / upd.plan.sizes[n] for n in upd.plan.shapes}
    # the stem has 1 input channel (grayscale), not a multiple of 4; ERK 90% keeps the head dense
    assert densities == {"stem/kernel": 1.0, "conv1/kernel": 0.5, "conv2/kernel": 0.5, "head/kernel": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("moon, method", [(True, "rigl"), (False, "set")])
def test_train_py_with_nm_2_4_keeps_every_group_at_two(tmp_path, moon, method):
    from moon_jax.evaluation.checkpoint_eval import load_run_config

    workdir = tmp_path / "run"
    out = run_python([str(REPO / "train.py"), f"--workdir={workdir}", "--config.sparse.structure=nm_2,4",
                      "--config.train.epochs=2", f"--config.moon.enabled={moon}", f"--config.sparse.method={method}",
                      "--config.train.progress_bar=False"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "and the nm_2,4 structure" in out.stdout + out.stderr  # the run summary says so
    config = load_run_config(workdir)
    assert config.sparse.structure == "nm_2,4" and config.moon.enabled == moon
    state, _ = restore_final(config, workdir)
    masked = 0
    for mask, p in zip(jax.tree.leaves(state.masks, is_leaf=lambda x: x is None), jax.tree.leaves(state.params)):
        if mask is not None:
            assert np.all(nm_group_sums(mask, 4) == 2)
            assert np.all(nm_group_sums(np.asarray(p) != 0, 4) <= 2)  # the weights themselves are 2:4
            masked += 1
    assert masked == 2  # conv1, conv2 (the 1-channel stem and ERK's dense head are not masked)
