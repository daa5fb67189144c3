"""Tests of moon_jax.evaluation: every OOD score against a direct NumPy computation on a small
fixed model, hand-worked ODIN / Mahalanobis / ReAct cases, KNN against brute force, temperature
scaling, near/far group means, the plots, and ``eval.py --compare`` on two tiny runs."""
import json
import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from sklearn.covariance import EmpiricalCovariance

from conftest import REPO, tiny_digits_config
from moon_jax.data import ImageDataset
from moon_jax.evaluation import postprocessors as pp
from moon_jax.evaluation import score_registry as registry
from moon_jax.evaluation.evaluate import (
    evaluate_full,
    evaluate_logits,
    flax_model_functions,
    results_from_scores,
)
from moon_jax.evaluation.report import format_results
from moon_jax.evaluation.compare import caption, comparison_table
from moon_jax.evaluation.plots import BIN_COUNT_AXES, PLOT_FILES, plot_reliability, reliability_figure, write_plots
from moon_jax.metrics import (
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    ood_group,
    ood_groups,
    ood_metrics,
    temperature_nll_gradient,
    temperature_scaling,
    temperature_split,
    top1_confidence,
)
from moon_jax.models import MLP

K = 3
MEAN, STD = (0.3,), (0.2,)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------- tiny model
def _images(rng, n, labels=None):
    """8x8x1 uint8 images; with labels, class c is brighter in row band c (so features differ)."""
    images = rng.integers(0, 120, size=(n, 8, 8, 1))
    if labels is not None:
        for c in range(K):
            images[labels == c, 2 * c:2 * c + 3] += 130
    return np.clip(images, 0, 255).astype(np.uint8)


def _dataset(images, labels, name):
    return ImageDataset(images=images, labels=np.asarray(labels, np.int32), num_classes=K, name=name)


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer MLP (stem Dense 12 + ReLU, head Dense K+1) with fixed random parameters, its
    evaluation with every score, and the data it saw."""
    rng = np.random.default_rng(0)
    model = MLP(num_outputs=K + 1, hidden=(12,))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    train_labels = np.arange(90) % K
    test_labels = rng.integers(0, K, 40)
    train = _dataset(_images(rng, 90, train_labels), train_labels, "train")
    test = _dataset(_images(rng, 40, test_labels), test_labels, "test")
    ood = {
        "cifar100": _dataset(_images(rng, 30), np.full(30, -1), "cifar100"),
        "gaussian_noise": _dataset(rng.integers(0, 256, (25, 8, 8, 1)).astype(np.uint8), np.full(25, -1), "noise"),
    }
    fns = flax_model_functions(model, variables, MEAN, STD, K)
    results, arrays = evaluate_full(fns, train, test, ood, K, batch_size=16, knn_k=5)
    return dict(params=jax.tree.map(np.asarray, variables["params"]), train=train, test=test, ood=ood,
                results=results, arrays=arrays)


def test_evaluation_records_train_fit_and_mean_unknown_probability(tiny):
    params, results = tiny["params"], tiny["results"]
    train_logits, _, _ = np_forward(params, tiny["train"].images)
    expected_acc = np.mean(train_logits[:, :K].argmax(axis=1) == tiny["train"].labels)
    assert results["train_subset_classification"] == {"acc": pytest.approx(expected_acc, abs=1e-12), "num_examples": 90}
    unknown = results["unknown_probability"]
    test_logits, _, _ = np_forward(params, tiny["test"].images)
    assert unknown["id"] == pytest.approx(np_softmax(test_logits)[:, -1].mean(), rel=1e-5)
    for name, ds in tiny["ood"].items():
        z, _, _ = np_forward(params, ds.images)
        assert unknown["ood"][name] == pytest.approx(np_softmax(z)[:, -1].mean(), rel=1e-5)


def np_forward(params, images):
    """The MLP in float64 NumPy: normalised input, ReLU features, logits."""
    x = (images.astype(np.float64) / 255.0 - MEAN[0]) / STD[0]
    x = x.reshape(len(x), -1)
    h = np.maximum(x @ params["stem"]["kernel"].astype(np.float64) + params["stem"]["bias"], 0.0)
    return h @ params["head"]["kernel"].astype(np.float64) + params["head"]["bias"], h, x


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_odin_score(params, images, temperature=1000.0, epsilon=0.0014):
    """ODIN by hand: backpropagation through the MLP written out in NumPy."""
    w1, b1 = params["stem"]["kernel"].astype(np.float64), params["stem"]["bias"].astype(np.float64)
    wh = params["head"]["kernel"].astype(np.float64)
    z, _, x = np_forward(params, images)
    zk = z[:, :K] / temperature
    p = np_softmax(zk)
    onehot = np.eye(K)[zk.argmax(axis=1)]
    dz = np.zeros_like(z)
    dz[:, :K] = (p - onehot) / temperature  # d CE / d logits, unknown output not involved
    dh = dz @ wh.T
    da = dh * ((x @ w1 + b1) > 0)
    dx = da @ w1.T
    sign = np.where(dx >= 0, 1.0, -1.0)
    x_perturbed = x - epsilon * sign / STD[0]
    h = np.maximum(x_perturbed @ w1 + b1, 0.0)
    z_perturbed = h @ wh + params["head"]["bias"]
    return np_softmax(z_perturbed[:, :K] / temperature).max(axis=1), z_perturbed


def np_scores(tiny, images):
    """Every score of ``images`` computed directly in NumPy from the definitions."""
    params = tiny["params"]
    z, h, _ = np_forward(params, images)
    _, h_train, _ = np_forward(params, tiny["train"].images)
    y_train = tiny["train"].labels
    p_all, p_known = np_softmax(z), np_softmax(z[:, :K])
    # Mahalanobis: class means, shared covariance of class-centred train features (sklearn), max of -d^2
    means = np.stack([h_train[y_train == c].mean(axis=0) for c in range(K)])
    precision = EmpiricalCovariance().fit(h_train - means[y_train]).precision_
    d2 = np.stack([np.einsum("nd,de,ne->n", h - means[c], precision, h - means[c]) for c in range(K)], axis=1)
    # KNN, k = 5: distance to the 5th nearest normalised train feature
    unit = lambda f: f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-10)
    dist = np.linalg.norm(unit(h)[:, None, :] - unit(h_train)[None, :, :], axis=2)
    # ReAct: clip at the 90th percentile of train activations, energy of the first K logits
    threshold = np.percentile(h_train, 90)
    z_react = np.minimum(h, threshold) @ params["head"]["kernel"] + params["head"]["bias"]
    return {
        "moon_msp": p_all[:, :K].max(axis=1),
        "msp": p_known.max(axis=1),
        "known_probability": 1.0 - p_all[:, K],
        "max_logit": z[:, :K].max(axis=1),
        "energy": np.log(np.exp(z[:, :K]).sum(axis=1)),
        "odin": np_odin_score(params, images)[0],
        "mahalanobis": -d2.min(axis=1),
        "knn": -np.sort(dist, axis=1)[:, 4],
        "react": np.log(np.exp(z_react[:, :K]).sum(axis=1)),
    }


# --------------------------------------------------------------------------------- every score
TOLERANCE = {"odin": dict(rtol=0, atol=1e-9), "mahalanobis": dict(rtol=1e-4, atol=1e-6)}


@pytest.mark.parametrize("name", registry.ALL_SCORES)
def test_every_score_matches_numpy(tiny, name):
    arrays = tiny["arrays"].scores[name]
    expected = np_scores(tiny, tiny["test"].images)[name]
    np.testing.assert_allclose(arrays["id"], expected, **TOLERANCE.get(name, dict(rtol=1e-5, atol=1e-6)))
    for set_name, ds in tiny["ood"].items():
        expected = np_scores(tiny, ds.images)[name]
        np.testing.assert_allclose(arrays["ood"][set_name], expected, **TOLERANCE.get(name, dict(rtol=1e-5, atol=1e-6)))
        m = tiny["results"]["ood"][name][set_name]
        assert m == pytest.approx(ood_metrics(arrays["id"], arrays["ood"][set_name]))


def test_default_scores_and_settings(tiny):
    results = tiny["results"]
    assert results["scores"] == list(registry.ALL_SCORES) and results["primary_score"] == "moon_msp"
    assert registry.default_scores(False)[0] == "msp" and "known_probability" not in registry.default_scores(False)
    s = results["score_settings"]
    assert s["odin"] == {"temperature": 1000.0, "epsilon": 0.0014}
    assert s["knn"]["k"] == 5 and s["train_features"] == 90
    _, h_train, _ = np_forward(tiny["params"], tiny["train"].images)
    assert s["react"]["threshold"] == pytest.approx(np.percentile(h_train, 90), rel=1e-5)


def test_odin_perturbed_logits_match_numpy_and_differ_from_plain(tiny):
    params, images = tiny["params"], tiny["test"].images
    expected = np_odin_score(params, images)[1]
    model = MLP(num_outputs=K + 1, hidden=(12,))
    x = (images.astype(np.float32) / 255.0 - MEAN[0]) / STD[0]
    got = pp.odin_logits(lambda v: model.apply({"params": params}, v), jnp.asarray(x), STD, K)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
    plain = np_forward(params, images)[0]
    assert np.abs(expected - plain).max() > 1e-3  # the perturbation is not a no-op


def test_odin_hand_worked_linear_case():
    # logits z = x @ W for a 1x1 image with 3 channels (std 0.5, 0.25, 0.1); x = (0.3, 0.1, 0.7)
    # z = (0.3 + 0.2, -0.3) -> predicted class 0; d CE / d z = (p0 - 1, p1) / T = (-p1, p1) / T
    # d CE / d x = W (d CE / d z) = (-2 p1, -2 p1, 0) / T -> signs (-1, -1, +1 for the zero gradient)
    # x' = x - eps * sign / std = (0.3 + 0.0028, 0.1 + 0.0056, 0.7 - 0.014)
    w = jnp.asarray([[1.0, -1.0], [2.0, 0.0], [0.0, 0.0]])
    apply = lambda v: v.reshape(v.shape[0], -1) @ w
    x = jnp.asarray([0.3, 0.1, 0.7]).reshape(1, 1, 1, 3)
    std = (0.5, 0.25, 0.1)
    perturbed = pp.odin_perturbation(apply, x, std, num_known=2)
    np.testing.assert_allclose(np.asarray(perturbed).ravel(), [0.3028, 0.1056, 0.686], rtol=0, atol=1e-7)
    logits = pp.odin_logits(apply, x, std, num_known=2)
    np.testing.assert_allclose(np.asarray(logits).ravel(), [0.3028 + 0.2112, -0.3028], atol=1e-6)
    gap = (0.3028 + 0.2112 + 0.3028) / 1000.0  # softmax of 2 logits at T: sigmoid of their gap
    assert pp.odin_score(logits, 2)[0] == pytest.approx(1.0 / (1.0 + math.exp(-gap)), abs=1e-9)


# --------------------------------------------------------------------------------- features
def test_mahalanobis_hand_worked_2d_case():
    # class 0 around (0, 0), class 1 around (10, 0); centred points are (+-1, 0), (0, +-2) in both
    # shared covariance (ML, / 8) = diag(0.5, 2) -> precision diag(2, 0.5)
    offsets = np.array([[-1, 0], [1, 0], [0, -2], [0, 2]], np.float64)
    features = np.concatenate([offsets, offsets + [10, 0]])
    labels = np.array([0] * 4 + [1] * 4)
    means, precision = pp.fit_class_gaussian(features, labels, 2)
    np.testing.assert_allclose(means, [[0, 0], [10, 0]], atol=1e-15)
    np.testing.assert_allclose(precision, np.diag([2.0, 0.5]), atol=1e-12)
    # (1, 2): d^2 = 2*1 + 0.5*4 = 4 to class 0 (164 to class 1); (6, 0): 72 vs 2*16 = 32; (10, 4): 0.5*16 = 8
    score = pp.mahalanobis_score([[1, 2], [6, 0], [10, 4]], means, precision)
    np.testing.assert_allclose(score, [-4.0, -32.0, -8.0], atol=1e-12)


def test_mahalanobis_uses_the_pseudo_inverse_for_a_dead_unit():
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(size=(50, 3)), np.zeros((50, 1))], axis=1)  # unit 4 never fires
    labels = rng.integers(0, 2, 50)
    means, precision = pp.fit_class_gaussian(features, labels, 2)
    reference = EmpiricalCovariance().fit(features - means[labels]).precision_
    np.testing.assert_allclose(precision, reference, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(pp.mahalanobis_score(features[:5] + 1.0, means, precision)))


def test_knn_matches_brute_force():
    rng = np.random.default_rng(2)
    bank_raw = rng.normal(size=(200, 6))
    queries = np.concatenate([rng.normal(size=(37, 6)), np.zeros((1, 6))])  # a dead (all-zero) feature too
    bank = pp.l2_normalise(bank_raw)
    got = pp.knn_score(queries, bank, k=50, chunk=16)
    unit = queries / (np.linalg.norm(queries, axis=1, keepdims=True) + 1e-10)
    expected = np.array([-np.sort(np.linalg.norm(bank - q, axis=1))[49] for q in unit])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert got[-1] == pytest.approx(-1.0)  # zero vector: every unit-norm neighbour is at distance 1
    with pytest.raises(ValueError, match="k = 201"):
        pp.knn_score(queries, bank, k=201)


def test_react_clips_then_takes_energy():
    train = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0]])  # 10 activations 0..9
    threshold = pp.react_threshold(train, 90)
    assert threshold == pytest.approx(8.1)  # np.percentile's linear interpolation of 0..9
    features = np.array([[0.5, 30.0], [9.0, 0.1]])
    kernel = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0]])  # third output: MOON's unknown, ignored
    bias = np.array([0.0, 0.5, 0.0])
    np.testing.assert_allclose(pp.react_logits(features, threshold, kernel, bias),
                               [[0.5, 8.6, 43.0], [8.1, 0.6, 41.0]])
    expected = [np.log(np.exp(0.5) + np.exp(8.6)), np.log(np.exp(8.1) + np.exp(0.6))]
    np.testing.assert_allclose(pp.react_score(features, threshold, kernel, bias, num_known=2), expected, rtol=1e-12)


def test_the_registry_gives_each_score_one_record_and_the_defaults():
    assert len(registry.ALL_SCORES) == len(set(registry.ALL_SCORES)) == len(registry.SCORES)
    assert all(s.kind in registry.KINDS and s.description and s.default_for <= s.heads for s in registry.SCORES)
    assert registry.default_scores(True, kinds=("logits",)) == ("moon_msp", "msp", "known_probability", "max_logit", "energy")
    assert registry.default_scores(False, kinds=("logits",)) == ("msp", "max_logit", "energy")
    assert registry.default_scores(False) == ("msp", "max_logit", "energy", "odin", "mahalanobis", "knn", "react")
    with pytest.raises(ValueError, match="listed twice"):
        registry.check_names(["msp", "knn", "msp"])


def test_eval_py_checks_score_names_through_the_registry(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--workdir={tmp_path}", "--scores=msp,mds"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: --scores: unknown OOD score 'mds'; allowed: {', '.join(registry.ALL_SCORES)}")


def test_unknown_scores_are_named():
    with pytest.raises(ValueError, match="unknown OOD score 'mds'"):
        registry.validate_scores(["mds"], True)
    with pytest.raises(ValueError, match="K\\+1"):
        registry.validate_scores(["known_probability"], False)
    with pytest.raises(ValueError, match="evaluate_full"):
        evaluate_logits(np.zeros((4, 3)), np.zeros(4, int), {}, 3, ["knn"])


# --------------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature):
    rng = np.random.default_rng(3)
    true_logits = rng.normal(scale=2.0, size=(20000, 5))
    # labels drawn from softmax(true_logits): that model is calibrated by construction
    probs = np_softmax(true_logits)
    labels = (probs.cumsum(axis=1) > rng.random((20000, 1))).argmax(axis=1)
    observed = true_logits * true_temperature  # over- (T > 1) or under-confident (T < 1)
    t = fit_temperature(observed, labels)
    assert t == pytest.approx(true_temperature, rel=0.03)
    assert temperature_nll_gradient(observed, labels, 1.0 / t) == pytest.approx(0.0, abs=1e-9)


def test_temperature_scaling_report_uses_disjoint_splits():
    fit, evaluate = temperature_split(450)
    assert fit.size == 90 and evaluate.size == 360 and not set(fit) & set(evaluate)
    np.testing.assert_array_equal(temperature_split(450)[0], fit)  # fixed by the seed
    rng = np.random.default_rng(4)
    true_logits = rng.normal(scale=3.0, size=(2000, 4))
    labels = (np_softmax(true_logits).cumsum(axis=1) > rng.random((2000, 1))).argmax(axis=1)
    logits = np.concatenate([true_logits * 3.0, np.zeros((2000, 1))], axis=1)  # K+1: the last is ignored
    report = temperature_scaling(logits, labels, num_known=4)
    assert report["num_fit"] == 400 and report["num_eval"] == 1600
    assert report["temperature"] == pytest.approx(3.0, rel=0.1)
    assert report["calibrated"]["acc"] == report["uncalibrated"]["acc"]
    assert report["calibrated"]["nll"] < report["uncalibrated"]["nll"]
    assert report["calibrated"]["ece"] < 0.5 * report["uncalibrated"]["ece"]


# --------------------------------------------------------------------------------- groups
def test_near_far_groups_and_their_means():
    names = ["tin_resize", "mnist", "tfds:cifar100", "svhn_cropped", "places365_small", "digits_photos", "cifar10"]
    assert ood_groups(names) == {"near": ["tin_resize", "tfds:cifar100", "cifar10"],
                                 "far": ["mnist", "svhn_cropped", "places365_small", "digits_photos"]}
    assert ood_group("gaussian_noise") == "far" and ood_groups(["mnist"]) == {"far": ["mnist"]}
    rng = np.random.default_rng(5)
    id_scores = rng.normal(2.0, 1.0, 200)
    shifts = {"tin_resize": 1.5, "cifar100": 1.0, "mnist": -1.0, "gaussian_noise": 0.0, "dtd": 0.5}
    arrays = {"msp": {"id": id_scores, "ood": {n: rng.normal(s, 1.0, 100) for n, s in shifts.items()}}}
    logits = rng.normal(size=(200, 3))
    results = results_from_scores(logits, rng.integers(0, 3, 200), arrays, {n: 100 for n in shifts}, 3, ["msp"])
    per_set = results["ood"]["msp"]
    groups = results["ood_groups"]["msp"]
    assert results["ood_group_members"] == {"near": ["tin_resize", "cifar100"], "far": ["mnist", "gaussian_noise", "dtd"]}
    for key in ("auroc", "fpr95", "aupr_in", "aupr_out"):
        assert groups["near"][key] == pytest.approx((per_set["tin_resize"][key] + per_set["cifar100"][key]) / 2)
        far = [per_set[n][key] for n in ("mnist", "gaussian_noise", "dtd")]
        assert groups["far"][key] == pytest.approx(sum(far) / 3)
        assert groups["all"][key] == per_set["mean"][key] == pytest.approx(np.mean([per_set[n][key] for n in shifts]))
    text = format_results(results)
    assert "near-OOD: tin_resize, cifar100" in text and "| msp |" in text


def test_format_results_keeps_the_lines_programs_parse(tiny):
    text = format_results(tiny["results"], title="tiny")
    acc = re.search(r"^\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
    mean = re.search(r"^\| \*\*mean\*\* \|  \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
    cls, primary = tiny["results"]["classification"], tiny["results"]["ood"]["moon_msp"]["mean"]
    assert float(acc.group(1)) == round(100 * cls["acc"], 2) and float(acc.group(2)) == round(100 * cls["ece"], 2)
    assert float(mean.group(1)) == round(100 * primary["auroc"], 2)
    assert float(mean.group(2)) == round(100 * primary["fpr95"], 2)
    assert "| ACC | ECE |" in text and "AUROC" in text and "FPR95" in text
    ts = tiny["results"]["temperature_scaling"]
    assert f"T = {ts['temperature']:.4f}" in text and "20% of the ID test set" in text
    assert "near-OOD: cifar100" in text and "far-OOD: gaussian_noise" in text


# --------------------------------------------------------------------------------- plots
def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)
    assert image.std() > 0.01  # not a blank canvas


def test_plots_are_written_and_readable(tiny, tmp_path):
    results = dict(tiny["results"], layer_density={"stem/kernel": 1.0, "hidden1/kernel": 0.1, "head/kernel": 0.5},
                   density={"masked_layers_nonzero_fraction": 0.2}, method="MOON + rigl 90% erk")
    records = [{"step": s, "kind": "train", "loss": 1.0 / s, "accuracy": 1 - 1.0 / s, "alpha": s / 100, "density": 0.1}
               for s in range(1, 100, 7)] + [{"step": 50, "kind": "eval", "acc": 0.9, "ece": 0.05, "nll": 0.3}]
    written = write_plots(tmp_path, results, tiny["arrays"], records, title="tiny")
    assert written == list(PLOT_FILES.values())
    for name in written:
        _check_png(tmp_path / name)
    # no OOD sets, no layer densities, no records: only the reliability diagram
    bare = dict(tiny["results"], primary_score="msp")
    arrays = tiny["arrays"]._replace(scores={"msp": {"id": tiny["arrays"].scores["msp"]["id"], "ood": {}}})
    assert write_plots(tmp_path / "bare", bare, arrays, []) == ["reliability.png"]
    _check_png(tmp_path / "bare" / "reliability.png")


def test_reliability_diagram_writes_how_many_images_each_bin_holds(tiny):
    arrays, ts = tiny["arrays"], tiny["results"]["temperature_scaling"]
    figure = reliability_figure(arrays.test_logits, arrays.test_labels, K, ts["temperature"], n_bins=10)
    as_trained, scaled = [ax for ax in figure.axes if ax.get_label() == BIN_COUNT_AXES]
    counts = calibration_bins(*top1_confidence(arrays.test_logits, arrays.test_labels, K), 10).counts
    assert [int(t.get_text()) for t in as_trained.texts] == [int(c) for c in counts if c > 0]
    assert [int(p.get_height()) for p in as_trained.patches] == [int(c) for c in counts if c > 0]
    assert sum(int(t.get_text()) for t in scaled.texts) == ts["num_eval"]  # the 80% evaluation split
    assert all("(10 bins, n = " in ax.get_title() for ax in figure.axes if ax.get_title())


def test_a_non_default_ece_bins_shows_in_eval_json_the_captions_and_the_plot(tiny, tmp_path):
    arrays = tiny["arrays"]
    results = evaluate_logits(arrays.test_logits, arrays.test_labels, {}, K, ece_bins=7)
    saved = json.loads(json.dumps(results))  # what eval.json holds
    assert saved["ece_bins"] == 7 and tiny["results"]["ece_bins"] == 15
    confidence, correct = top1_confidence(arrays.test_logits, arrays.test_labels, K)
    assert saved["classification"]["ece"] == pytest.approx(expected_calibration_error(confidence, correct, 7))
    text = format_results(saved)
    assert "ECE: 7 equal-width bins" in text and "15 equal-width" not in text
    assert "ECE (7 bins)" in caption([("a", saved)])
    assert "ECE (bins differ: a 7, b 15; those ECEs are not comparable)" in caption([("a", saved), ("b", tiny["results"])])
    write_plots(tmp_path / "written", saved, arrays, [])
    plot_reliability(tmp_path / "direct.png", arrays.test_logits, arrays.test_labels, K,
                     saved["temperature_scaling"]["temperature"], n_bins=7)
    assert (tmp_path / "written" / "reliability.png").read_bytes() == (tmp_path / "direct.png").read_bytes()


# --------------------------------------------------------------------------------- --compare
def _tiny_run_config(moon: bool):
    config = tiny_digits_config()
    config.data.num_train_examples = 192
    config.data.num_test_examples = 200
    config.data.num_ood_examples = 100
    config.train.epochs = 6
    config.train.eval_batch_size = 100
    config.train.eval_every_epochs = 3
    config.train.checkpoint_every_epochs = 3
    config.sparse.end_fraction = 0.5
    if not moon:
        config.moon.enabled = False
        config.sparse.method = "dense"
    return config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from moon_jax.programs import train_and_evaluate

    root = tmp_path_factory.mktemp("runs")
    for name, moon in (("moon_rigl", True), ("dense", False)):
        train_and_evaluate(_tiny_run_config(moon), root / name)
    return root


def _fake_results(ood_shifts, score="msp", dataset="digits", seed=0):
    """The results of a 3-class run (no unknown output) whose OOD sets are ``ood_shifts``'s keys."""
    rng = np.random.default_rng(seed)
    arrays = {score: {"id": rng.normal(2.0, 1.0, 200), "ood": {n: rng.normal(s, 1.0, 100) for n, s in ood_shifts.items()}}}
    results = results_from_scores(rng.normal(size=(200, 3)), rng.integers(0, 3, 200), arrays,
                                  {n: 100 for n in ood_shifts}, 3, [score])
    return dict(results, dataset=dataset, method="dense", model="last iterate (step 10)")


def test_compare_takes_means_over_the_ood_sets_all_runs_share():
    wide = _fake_results({"tin_resize": 1.5, "mnist": -1.0, "dtd": 0.5}, seed=1)
    narrow = _fake_results({"mnist": 0.0}, seed=2)
    text = comparison_table([("wide", wide), ("narrow", narrow)])
    rows = {cells[0]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| "))}
    pct = lambda x: f"{100 * x:.2f}"
    for name, results in (("wide", wide), ("narrow", narrow)):
        mnist = results["ood"]["msp"]["mnist"]
        assert rows[name][7:] == [pct(mnist["auroc"]), pct(mnist["fpr95"]), "n/a", pct(mnist["auroc"])]
    assert pct(wide["ood"]["msp"]["mean"]["auroc"]) not in text  # the 3-set mean is not shown beside a 1-set one
    assert ("The runs were evaluated on different OOD sets: AUROC / FPR95 / near / far AUROC are means over the OOD "
            "sets all of them share (mnist). Left out: wide: tin_resize, dtd.") in text
    # the same OOD sets: the runs' own means, no note
    same = comparison_table([("a", wide), ("b", _fake_results({"tin_resize": 0.0, "mnist": 0.0, "dtd": 0.0}, seed=3))])
    assert "different OOD sets" not in same and pct(wide["ood"]["msp"]["mean"]["auroc"]) in same
    # no shared set: n/a, and each run's sets are named
    apart = comparison_table([("wide", wide), ("other", _fake_results({"svhn_cropped": 0.0}, seed=4))])
    assert "No OOD set is common to all runs" in apart and "other: svhn_cropped" in apart
    # other ID sets: a table each; other primary scores: said under the table
    split = comparison_table([("wide", wide), ("c100", _fake_results({"mnist": 0.0}, dataset="cifar100"))])
    assert "ID set `digits`" in split and "ID set `cifar100`" in split and "different OOD sets" not in split
    scored = comparison_table([("wide", wide), ("energy", _fake_results({"tin_resize": 1.0, "mnist": 0.0, "dtd": 0.0},
                                                                       score="energy"))])
    assert "The runs' primary scores differ (wide `msp`, energy `energy`)" in scored


def _table_rows(text):
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("moon_rigl", "dense"):
            rows[cells[0]] = cells
    return rows


def test_compare_two_runs_prints_the_expected_table(two_runs, tmp_path):
    dirs = [str(two_runs / "moon_rigl"), str(two_runs / "dense")]
    out = subprocess.run([sys.executable, str(REPO / "eval.py"), "--compare", *dirs, f"--output={tmp_path}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| run | method | model | score | ACC | ECE | NLL | AUROC | FPR95 | near AUROC | far AUROC |" in out.stdout
    rows = _table_rows(out.stdout)
    assert set(rows) == {"moon_rigl", "dense"}
    for name, cells in rows.items():
        results = json.loads((two_runs / name / "eval.json").read_text())
        cls, primary = results["classification"], results["primary_score"]
        mean = results["ood"][primary]["mean"]
        far = results["ood_groups"][primary]["far"]
        pct = lambda x: f"{100 * x:.2f}"
        assert cells == [name, results["method"], results["model"], f"`{primary}`", pct(cls["acc"]), pct(cls["ece"]),
                         f"{cls['nll']:.4f}", pct(mean["auroc"]), pct(mean["fpr95"]), "n/a", pct(far["auroc"])]
        assert results["plots"] == list(PLOT_FILES.values())
        for plot in results["plots"]:
            _check_png(two_runs / name / plot)
    assert rows["moon_rigl"][1] == "MOON + rigl 90% erk" and rows["moon_rigl"][3] == "`moon_msp`"
    assert rows["dense"][1] == "dense" and rows["dense"][3] == "`msp`"
    assert rows["moon_rigl"][2] == "weight average of 3 snapshots"  # ends of epochs 4, 5, 6
    report = (tmp_path / "report.md").read_text()
    assert _table_rows(report) == rows
    for name in ("moon_rigl", "dense"):
        assert f"## {name}" in report
        for plot in PLOT_FILES.values():
            link = re.search(rf"!\[{name}: {plot[:-4]}\]\(([^)]+)\)", report)
            assert link and (tmp_path / link.group(1)).resolve() == (two_runs / name / plot).resolve()
    # a second --compare reuses the up-to-date eval.json files and prints the same table
    again = subprocess.run([sys.executable, str(REPO / "eval.py"), "--compare", *dirs, f"--output={tmp_path}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("read the up-to-date") == 2 and _table_rows(again.stdout) == rows


def test_noplots_writes_json_only(two_runs, tmp_path):
    from moon_jax.evaluation.checkpoint_eval import evaluate_workdir

    results = evaluate_workdir(two_runs / "dense", output=str(tmp_path / "e.json"), plots=False, verbose=False)
    assert results["plots"] == [] and sorted(p.name for p in tmp_path.iterdir()) == ["e.json"]
    saved = json.loads((tmp_path / "e.json").read_text())
    reference = json.loads((two_runs / "dense" / "eval.json").read_text())
    assert saved["ood"] == reference["ood"] and saved["temperature_scaling"] == reference["temperature_scaling"]
    assert saved["layer_density"] and set(saved["layer_density"].values()) == {1.0}  # dense: every layer 1.0
