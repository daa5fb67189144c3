"""Tests for moon_jax.metrics (calibration + OOD). Numbers are hand-computed where possible."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from moon_jax.metrics import (
    CONVENTION_CAPTION,
    brier_score,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
    group_means,
    log_softmax64,
    negative_log_likelihood,
    ood_metrics,
    ood_table_mean,
    reference_ece,
)

EDGES10 = np.linspace(0.0, 1.0, 11)


# ----------------------------------------------------------------------------------------
# float facts the hand cases rely on
# ----------------------------------------------------------------------------------------


def test_linspace_edge_representation():
    assert EDGES10[5] == 0.5  # 0.5 is an exact edge
    assert EDGES10[3] == 0.30000000000000004 and EDGES10[3] > 0.3  # 0.3 is NOT an edge
    assert EDGES10[10] == 1.0


# ----------------------------------------------------------------------------------------
# ECE (Guo) and the reference variant
# ----------------------------------------------------------------------------------------

# conf 1.0 (x2), exact edge 0.5, near-edge 0.3, 0.92, 0.55
CONF = np.array([1.0, 1.0, 0.5, 0.3, 0.92, 0.55])
CORR = np.array([1, 0, 1, 0, 1, 1], dtype=bool)


def test_guo_bins_hand_case():
    b = calibration_bins(CONF, CORR, n_bins=10)
    # (lo, hi]: 1.0,1.0,0.92 -> bin 9; 0.5 -> bin 4 (0.4, 0.5]; 0.3 -> bin 2; 0.55 -> bin 5
    np.testing.assert_array_equal(b.counts, [0, 0, 1, 0, 1, 1, 0, 0, 0, 3])
    assert b.num_dropped == 0
    np.testing.assert_array_equal(b.edges, EDGES10)
    assert b.mean_confidence[9] == pytest.approx(2.92 / 3, abs=1e-15)
    assert b.accuracy[9] == pytest.approx(2 / 3, abs=1e-15)
    assert b.mean_confidence[4] == 0.5 and b.accuracy[4] == 1.0
    assert b.mean_confidence[2] == 0.3 and b.accuracy[2] == 0.0
    # empty bins: NaN statistics, zero count
    assert np.isnan(b.mean_confidence[0]) and np.isnan(b.accuracy[7])


def test_guo_ece_hand_case():
    # bin9: 3/6*|2.92/3-2/3| ; bin4: 1/6*0.5 ; bin2: 1/6*0.3 ; bin5: 1/6*0.45
    expected = (0.92 + 0.5 + 0.3 + 0.45) / 6  # = 2.17/6
    assert expected_calibration_error(CONF, CORR, n_bins=10) == pytest.approx(expected, abs=1e-14)


def test_reference_ece_hand_case_differs():
    # [lo, hi): both 1.0 dropped; 0.5 joins 0.55 in [0.5, 0.6); 0.3 -> [0.2, 0.3000..04);
    # 0.92 -> [0.9, 1.0). Weights normalised by the 4 binned samples, not 6.
    expected = (2 * abs(0.525 - 1.0) + abs(0.3 - 0.0) + abs(0.92 - 1.0)) / 4  # = 1.33/4
    got = reference_ece(CONF, CORR, n_bins=10)
    assert got == pytest.approx(expected, abs=1e-14)
    assert got == pytest.approx(0.3325, abs=1e-14)
    assert expected_calibration_error(CONF, CORR, n_bins=10) == pytest.approx(2.17 / 6)
    assert got != pytest.approx(expected_calibration_error(CONF, CORR, n_bins=10))


def test_exact_edge_value_goes_to_different_bins():
    e = EDGES10[3]  # 0.30000000000000004
    g = calibration_bins([e, 0.5], [1, 1], n_bins=10)
    assert g.counts[2] == 1 and g.counts[4] == 1  # upper-inclusive
    # reference: lower-inclusive -> bins 3 and 5; a single 1.0 is dropped
    assert reference_ece([e], [0], n_bins=10) == pytest.approx(e)
    assert reference_ece([1.0], [0], n_bins=10) == 0.0  # everything dropped -> 0.0
    assert expected_calibration_error([1.0], [0], n_bins=10) == 1.0  # Guo counts it


def test_confidence_zero_goes_to_first_bin():
    b = calibration_bins([0.0, 0.05], [0, 1], n_bins=10)
    np.testing.assert_array_equal(b.counts[:2], [2, 0])
    assert expected_calibration_error([0.0, 0.05], [0, 1], n_bins=10) == pytest.approx(
        abs(0.025 - 0.5)
    )


def test_empty_bins_and_perfect_calibration():
    conf = np.array([0.75, 0.75, 0.75, 0.75, 1.0, 1.0])
    corr = np.array([1, 1, 1, 0, 1, 1])
    assert expected_calibration_error(conf, corr) == 0.0
    b = calibration_bins(conf, corr)
    assert b.counts.sum() == 6 and (b.counts > 0).sum() == 2  # 13 empty bins
    assert reference_ece(conf, corr) == 0.0
    # a single populated bin among empty ones: ECE is just that bin's gap
    assert expected_calibration_error([0.8, 0.8], [0, 0]) == pytest.approx(0.8)


def _guo_oracle(conf, corr, n_bins):
    edges = np.linspace(0, 1, n_bins + 1)
    n, ece = len(conf), 0.0
    for i in range(n_bins):
        m = (conf > edges[i]) & (conf <= edges[i + 1])
        if i == 0:
            m |= conf == 0.0
        if m.any():
            ece += m.sum() / n * abs(corr[m].mean() - conf[m].mean())
    return ece


def _reference_oracle(conf, corr, n_bins):
    edges = np.linspace(0, 1, n_bins + 1)
    gaps, counts = [], []
    for i in range(n_bins):
        m = (conf >= edges[i]) & (conf < edges[i + 1])
        if m.any():
            gaps.append(abs(conf[m].mean() - corr[m].mean()))
            counts.append(m.sum())
    if not counts:
        return 0.0
    return float(np.average(gaps, weights=np.array(counts) / np.sum(counts)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.9, 1.0, 0.33, 0.999]),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([1, 3, 10, 15]),
)
def test_ece_matches_loop_oracles(pairs, n_bins):
    conf = np.array([p[0] for p in pairs])
    corr = np.array([p[1] for p in pairs], dtype=float)
    assert expected_calibration_error(conf, corr, n_bins) == pytest.approx(
        _guo_oracle(conf, corr, n_bins), abs=1e-12
    )
    assert reference_ece(conf, corr, n_bins) == pytest.approx(
        _reference_oracle(conf, corr, n_bins), abs=1e-12
    )


def test_ece_input_validation():
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, np.nan], [1, 0])
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError):
        expected_calibration_error([], [])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [1, 0])


# ----------------------------------------------------------------------------------------
# log-softmax, NLL, Brier
# ----------------------------------------------------------------------------------------


def test_log_softmax64_stable_and_float64():
    z = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    lp = log_softmax64(z)
    assert lp.dtype == np.float64 and np.all(np.isfinite(lp))
    assert lp[0, 0] == 0.0 and lp[0, 1] == -1000.0
    ref = np.array([1.0, 2.0, 3.0]) - math.log(math.exp(1) + math.exp(2) + math.exp(3))
    np.testing.assert_allclose(lp[1], ref, rtol=0, atol=1e-14)


def test_nll_and_brier_hand_values():
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    y = np.array([0, 1])
    assert negative_log_likelihood(np.log(p), y) == pytest.approx(
        (-math.log(0.7) - math.log(0.25)) / 2, abs=1e-14
    )
    # sample 0: .09+.04+.01 = .14 ; sample 1: .0625+.5625+.25 = .875
    assert brier_score(p, y) == pytest.approx((0.14 + 0.875) / 2, abs=1e-14)
    assert brier_score(np.eye(3), [0, 1, 2]) == 0.0
    assert brier_score([[0.0, 1.0]], [0]) == 2.0  # range [0, 2]
    with pytest.raises(ValueError):
        brier_score(p, [0, 3])


# ----------------------------------------------------------------------------------------
# classification_metrics
# ----------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_classification_metrics_k_plus_1_toy():
    # K = 2 known classes + unknown column
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, -1.0]])
    labels = np.array([0, 1, 1])
    m = classification_metrics(logits, labels, num_known=2)
    # first-K argmax: [0, 1, 0] -> 2/3 correct; all-(K+1) argmax: [0, 2(unknown), 0] -> 1/3
    assert m["acc"] == pytest.approx(2 / 3)
    assert m["acc_reference"] == pytest.approx(1 / 3)
    assert m["unknown_rate"] == pytest.approx(1 / 3)
    # K-class softmax confidences: s0 sigmoid(2) (bin 13 of 15), s1 and s2 sigmoid(1) (bin 10)
    c2, c1 = _sigmoid(2.0), _sigmoid(1.0)
    ece = (1 / 3) * abs(c2 - 1.0) + (2 / 3) * abs(c1 - 0.5)
    assert m["ece"] == pytest.approx(ece, abs=1e-14)
    nll = (-math.log(c2) - math.log(c1) - math.log(1 - c1)) / 3
    assert m["nll"] == pytest.approx(nll, abs=1e-14)
    brier = (2 * (1 - c2) ** 2 + 2 * (1 - c1) ** 2 + 2 * c1**2) / 3
    assert m["brier"] == pytest.approx(brier, abs=1e-14)
    # reference: softmax over all 3; confidences 0.787 (bin 7, right), 0.844 (bin 8, wrong),
    # 0.665 (bin 6, wrong) -> three singleton bins
    e = math.e
    r0 = e**2 / (e**2 + 2)
    r1 = e**3 / (1 + e + e**3)
    r2 = e / (e + 1 + 1 / e)
    assert m["ece_reference"] == pytest.approx((abs(r0 - 1) + r1 + r2) / 3, abs=1e-14)


def test_classification_metrics_plain_model_reference_equals_plain():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 5)) * 3
    labels = rng.integers(0, 5, size=200)
    m = classification_metrics(logits, labels)
    assert m == classification_metrics(logits, labels, num_known=5)
    assert m["acc_reference"] == m["acc"] and m["unknown_rate"] == 0.0
    p = np.exp(log_softmax64(logits))
    conf, corr = p.max(1), p.argmax(1) == labels
    assert m["ece"] == pytest.approx(expected_calibration_error(conf, corr, 15), abs=1e-15)
    assert m["ece_reference"] == pytest.approx(reference_ece(conf, corr, 10), abs=1e-15)


def test_classification_metrics_saturation_and_float32_reference():
    logits = np.array([[20.0, 0.0], [50.0, 0.0]])
    labels = np.array([0, 0])
    m64 = classification_metrics(logits, labels)
    m32 = classification_metrics(logits, labels, reference_float32=True)
    # float64: first conf = 1 - 2.06e-9 (binned), second saturates to exactly 1.0 (dropped)
    c = _sigmoid(20.0)
    assert c < 1.0 and _sigmoid(50.0) == 1.0
    assert m64["ece_reference"] == pytest.approx(1.0 - c, rel=1e-6)
    assert m32["ece_reference"] == 0.0  # both saturate in float32 -> all dropped
    assert m64["ece"] == pytest.approx((1.0 - c) / 2, rel=1e-6)  # Guo keeps the 1.0 sample


def test_classification_metrics_accepts_jax_arrays():
    import jax.numpy as jnp

    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, -1.0]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    a = classification_metrics(jnp.asarray(logits), jnp.asarray(labels), num_known=2)
    b = classification_metrics(logits, labels, num_known=2)
    assert a == b


def test_classification_metrics_validation():
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((2, 3)), [0, 2], num_known=2)  # label = unknown index
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((2, 3)), [0, 1], num_known=4)
    with pytest.raises(ValueError):
        classification_metrics(np.array([[np.nan, 0.0]]), [0])


# ----------------------------------------------------------------------------------------
# OOD metrics
# ----------------------------------------------------------------------------------------


def _mann_whitney(s_id, s_ood):
    s_id = np.asarray(s_id, float)[:, None]
    s_ood = np.asarray(s_ood, float)[None, :]
    return float(((s_id > s_ood) + 0.5 * (s_id == s_ood)).mean())


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=1, max_size=30),
    st.lists(st.integers(-3, 3), min_size=1, max_size=30),
)
def test_auroc_equals_sklearn_and_mann_whitney(s_id, s_ood):
    m = ood_metrics(s_id, s_ood)
    y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    s = np.r_[s_id, s_ood].astype(float)
    mw = _mann_whitney(s_id, s_ood)
    assert m["auroc"] == pytest.approx(mw, abs=1e-12)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    m2 = ood_metrics(s_id, s_ood, positive="ood")
    assert m2["auroc"] == pytest.approx(mw, abs=1e-12)
    assert m2["aupr_in"] == m["aupr_in"] and m2["aupr_out"] == m["aupr_out"]
    for k in ("auroc", "fpr95", "aupr_in", "aupr_out"):
        assert 0.0 <= m[k] <= 1.0
    # FPR95 (ID positive) = share of OOD >= the largest threshold that accepts >= 95% of ID
    sid = np.asarray(s_id, float)
    thr = max(t for t in np.unique(sid) if (sid >= t).mean() >= 0.95)
    assert m["fpr95"] == pytest.approx(float((np.asarray(s_ood) >= thr).mean()), abs=1e-12)


def test_perfect_detector():
    m = ood_metrics([5.0, 6.0, 7.0, 8.0], [0.0, 1.0, 2.0])
    assert m == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}


def test_reversed_detector():
    m = ood_metrics([0.0, 1.0, 2.0], [5.0, 6.0, 7.0, 8.0])
    assert m["auroc"] == 0.0 and m["fpr95"] == 1.0
    assert m["aupr_in"] < 0.5 and m["aupr_out"] < 0.6


def test_random_detector_large_n():
    rng = np.random.default_rng(1234)
    m = ood_metrics(rng.normal(size=20000), rng.normal(size=20000))
    assert abs(m["auroc"] - 0.5) < 0.02
    assert abs(m["fpr95"] - 0.95) < 0.02
    assert abs(m["aupr_in"] - 0.5) < 0.02 and abs(m["aupr_out"] - 0.5) < 0.02


def test_fpr95_hand_case_with_ties():
    # 20 ID: 19 at 2.0, 1 at 1.0; 10 OOD: 2 at 2.0 (tied with ID), 3 at 1.0, 5 at 0.0
    s_id = [2.0] * 19 + [1.0]
    s_ood = [2.0] * 2 + [1.0] * 3 + [0.0] * 5
    # threshold 2.0 accepts 19/20 = 95% of ID and the 2 tied OOD (pessimistic side) -> 0.2
    assert ood_metrics(s_id, s_ood)["fpr95"] == pytest.approx(0.2, abs=1e-15)
    # at TPR 100% the threshold is 1.0: OOD accepted 5/10
    assert ood_metrics(s_id, s_ood, tpr_level=1.0)["fpr95"] == pytest.approx(0.5, abs=1e-15)
    # AUROC by hand: 19 ID@2: (8 + 0.5*2) each; ID@1: 5 + 0.5*3
    assert ood_metrics(s_id, s_ood)["auroc"] == pytest.approx(
        (19 * 9 + 6.5) / 200, abs=1e-15
    )


def test_fpr95_drop_intermediate_case():
    # ROC (ID positive) points: (0, .9) @10, (.05, .95) @5, (.10, 1.0) @4 -- collinear, so
    # sklearn's default drop_intermediate=True removes the (.05, .95) point.
    s_id = np.r_[np.full(18, 10.0), 5.0, 4.0]
    s_ood = np.r_[5.0, 4.0, np.zeros(18)]
    m = ood_metrics(s_id, s_ood)
    assert m["fpr95"] == pytest.approx(0.05, abs=1e-15)
    y = np.r_[np.ones(20), np.zeros(20)]
    f, t, _ = roc_curve(y, np.r_[s_id, s_ood])  # default drop_intermediate=True
    default_lookup = f[np.argmax(t >= 0.95)]
    assert default_lookup == pytest.approx(0.10)
    assert default_lookup > m["fpr95"]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.r_[s_id, s_ood]))


def test_positive_id_vs_ood_asymmetric():
    s_id = [4.0, 3.0, 2.0, 1.0]
    s_ood = [1.0, 1.0, 0.0, 2.5, 5.0]
    mi = ood_metrics(s_id, s_ood, positive="id")
    mo = ood_metrics(s_id, s_ood, positive="ood")
    # AUROC by hand: 4 + 4 + 3 + (1 + 0.5*2) = 13 of 20 pairs
    assert mi["auroc"] == pytest.approx(0.65, abs=1e-15)
    assert mo["auroc"] == pytest.approx(0.65, abs=1e-15)
    # ID positive: accept all 4 ID (threshold 1.0) -> OOD accepted {1,1,2.5,5} = 4/5
    assert mi["fpr95"] == pytest.approx(0.8, abs=1e-15)
    # OOD positive: catch all 5 OOD (incl. the 5.0) -> every ID rejected = 1.0
    assert mo["fpr95"] == 1.0
    # lower level: first point with TPR >= .5 at threshold 3.0, one OOD (5.0) above -> 0.2
    assert ood_metrics(s_id, s_ood, tpr_level=0.5)["fpr95"] == pytest.approx(0.2)


def test_ood_input_validation():
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([0.1, np.nan], [0.2])
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([0.1], [np.nan])
    with pytest.raises(ValueError, match="empty"):
        ood_metrics([], [0.2])
    with pytest.raises(ValueError, match="empty"):
        ood_metrics([0.1], [])
    with pytest.raises(ValueError):
        ood_metrics([0.1], [0.2], positive="both")
    with pytest.raises(ValueError):
        ood_metrics([0.1], [0.2], tpr_level=0.0)
    with pytest.raises(ValueError):
        ood_metrics([0.1], [np.inf])


def test_ood_accepts_jax_arrays_float64():
    import jax.numpy as jnp

    a = ood_metrics(jnp.asarray([0.9, 0.8, 0.7], dtype=jnp.float32), jnp.asarray([0.75, 0.1]))
    b = ood_metrics(np.float32([0.9, 0.8, 0.7]), np.float32([0.75, 0.1]))
    assert a == b and a["auroc"] == pytest.approx(5 / 6)


def test_table_and_group_means():
    res = {
        "cifar100": {"auroc": 0.8, "fpr95": 0.5, "aupr_in": 0.7, "aupr_out": 0.9},
        "tin": {"auroc": 0.9, "fpr95": 0.3, "aupr_in": 0.8, "aupr_out": 0.6},
        "svhn": {"auroc": 0.6, "fpr95": 0.7, "aupr_in": 0.5, "aupr_out": 0.4},
    }
    mean = ood_table_mean(res)
    assert mean["auroc"] == pytest.approx((0.8 + 0.9 + 0.6) / 3)
    assert mean["fpr95"] == pytest.approx(0.5)
    g = group_means(res, {"near": ["cifar100", "tin"], "far": ["svhn"]})
    assert g["near"]["auroc"] == pytest.approx(0.85) and g["near"]["aupr_out"] == pytest.approx(0.75)
    assert g["far"] == res["svhn"]
    with pytest.raises(KeyError):
        group_means(res, {"near": ["mnist"]})
    with pytest.raises(ValueError):
        ood_table_mean({})
    with pytest.raises(ValueError):
        ood_table_mean({"a": {"auroc": 1.0}, "b": {"fpr95": 0.0}})


def test_plain_mean_not_pooled():
    # set sizes differ: plain mean of per-set AUROCs != AUROC of pooled OOD scores
    s_id = [1.0, 2.0, 3.0, 4.0]
    a, b = [0.0], [2.5] * 9
    per = {"a": ood_metrics(s_id, a), "b": ood_metrics(s_id, b)}
    pooled = ood_metrics(s_id, a + b)["auroc"]
    assert ood_table_mean(per)["auroc"] == pytest.approx((1.0 + 0.5) / 2)
    assert pooled == pytest.approx(0.55)


def test_caption_mentions_convention():
    for word in ("ID is the positive", "95%", "first ROC point", "drop_intermediate=False",
                 "float64", "trapezoid"):
        assert word in CONVENTION_CAPTION
