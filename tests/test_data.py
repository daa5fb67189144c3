"""Tests of moon_jax.data: sources, geometry, augmentation, batching."""
from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import moon_jax
from moon_jax import data
from moon_jax.data import packed as packed_mod

SHARED_FILES = {
    # name, split -> (shape, label range or None for "all -1")
    ("cifar10", "test"): ((10000, 32, 32, 3), (0, 9)),
    ("mnist", "test"): ((10000, 28, 28, 1), (0, 9)),
    ("tin_resize", "test"): ((10000, 32, 32, 3), None),
    ("textures_subset", "test"): ((1200, 32, 32, 3), (0, 9)),
}


# ----------------------------------------------------------------------------------------------
# digits and digits_photos

def test_digits_splits_fixed_disjoint_complete():
    train, test = data.digits("train"), data.digits("test")
    assert len(train) == 1347 and len(test) == 450
    tr, te = data.digits_split_indices("train"), data.digits_split_indices("test")
    assert len(np.intersect1d(tr, te)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(1797))
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
        assert ds.images.shape[1:] == (8, 8, 1) and ds.image_shape == (8, 8, 1)
        assert ds.num_classes == 10 and ds.name == "digits"
        assert ds.class_names == tuple(str(i) for i in range(10))
        # stratified: every class in both splits, in proportion
        counts = np.bincount(ds.labels, minlength=10)
        assert counts.min() > 0 and ds.labels.min() == 0 and ds.labels.max() == 9
        assert set(np.unique(ds.images)) <= set(data.DIGITS_LEVELS.tolist())
    assert len(data.DIGITS_LEVELS) == 17 and data.DIGITS_LEVELS[0] == 0 and data.DIGITS_LEVELS[-1] == 255
    # test split is 25% of every class (+-1)
    all_counts = np.bincount(np.concatenate([train.labels, test.labels]))
    assert np.all(np.abs(np.bincount(test.labels) - 0.25 * all_counts) <= 1)


def test_digits_matches_sklearn_and_is_deterministic():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    test = data.digits("test")
    idx = data.digits_split_indices("test")
    expected = np.round(bunch.images[idx] * 255 / 16).astype(np.uint8)[..., None]
    assert np.array_equal(test.images, expected)
    assert np.array_equal(test.labels, bunch.target[idx])
    again = data.digits("test")
    assert np.array_equal(again.images, test.images) and np.array_equal(again.labels, test.labels)
    with pytest.raises(ValueError, match="splits"):
        data.digits("validation")


def test_digits_photos():
    a = data.digits_photos()
    assert a.images.shape == (450, 8, 8, 1) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int32 and np.all(a.labels == -1) and a.num_classes == 0
    assert a.name == "digits_photos"
    assert set(np.unique(a.images)) <= set(data.DIGITS_LEVELS.tolist())
    assert len(np.unique(a.images)) > 8  # real photo content, not a constant
    b = data.digits_photos()
    assert np.array_equal(a.images, b.images)
    c = data.digits_photos(num_examples=20, seed=1)
    assert c.images.shape == (20, 8, 8, 1) and not np.array_equal(c.images, a.images[:20])


# ----------------------------------------------------------------------------------------------
# synthetic noise

@pytest.mark.parametrize("make", [data.gaussian_noise, data.uniform_noise])
@pytest.mark.parametrize("shape", [(32, 32, 3), (8, 8, 1)])
def test_noise_shape_dtype_determinism(make, shape):
    a = make(50, shape, seed=3)
    assert a.images.shape == (50, *shape) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int32 and np.all(a.labels == -1)
    assert a.name == make.__name__
    assert np.array_equal(a.images, make(50, shape, seed=3).images)
    assert not np.array_equal(a.images, make(50, shape, seed=4).images)


def test_gaussian_noise_clips_and_uniform_does_not():
    g = data.gaussian_noise(200, (32, 32, 3)).images
    u = data.uniform_noise(200, (32, 32, 3)).images
    # N(0.5, 1) clipped to [0, 1]: P(x <= 0) = P(x >= 1) = Phi(-0.5) = 0.3085
    assert abs(np.mean(g == 0) - 0.3085) < 0.02
    assert abs(np.mean(g == 255) - 0.3085) < 0.02
    # U[0, 1]: only round-off reaches the end values (1/510 each)
    assert np.mean(u == 0) < 0.01 and np.mean(u == 255) < 0.01
    assert abs(u.mean() / 255 - 0.5) < 0.01


def test_noise_defaults_through_load_dataset():
    assert len(data.load_dataset("gaussian_noise", "test")) == 1000
    d8 = data.load_dataset("uniform_noise", "test", image_shape=(8, 8, 1))
    assert d8.images.shape == (450, 8, 8, 1)
    assert data.load_dataset("gaussian_noise", "test", num_examples=7).images.shape == (7, 32, 32, 3)


# ----------------------------------------------------------------------------------------------
# packed .npz files from the shared data dir

@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """A fresh decoded-image cache for this module (decoded once, reused by the tests)."""
    return tmp_path_factory.mktemp("moon_jax_cache")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MOON_JAX_DATA_DIR", raising=False)
    repo_root = Path(moon_jax.__file__).resolve().parent.parent
    expected = (repo_root.parent / "shared" / "data").resolve()
    assert data.default_data_dir() == expected
    assert (expected / "cifar10_test.npz").is_file()
    monkeypatch.setenv("MOON_JAX_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path


@pytest.mark.parametrize("name,split", sorted(SHARED_FILES))
def test_packed_shared_files(name, split, shared_cache, monkeypatch):
    monkeypatch.delenv("MOON_JAX_DATA_DIR", raising=False)
    monkeypatch.setenv("MOON_JAX_CACHE_DIR", str(shared_cache))
    shape, label_range = SHARED_FILES[(name, split)]
    ds = data.load_dataset(name, split)
    assert ds.images.shape == shape and ds.images.dtype == np.uint8
    assert ds.labels.shape == (shape[0],) and ds.labels.dtype == np.int32
    assert ds.name == name
    if label_range is None:
        assert np.all(ds.labels == -1) and ds.num_classes == 0
    else:
        lo, hi = label_range
        assert ds.labels.min() == lo and ds.labels.max() == hi
        assert ds.num_classes == hi + 1 == len(ds.class_names)
        assert len(np.unique(ds.labels)) == hi + 1
    assert 20 < ds.images.mean() < 235 and ds.images.std() > 20  # real pixels, not blank
    if name == "cifar10":
        assert ds.class_names[0] == "airplane" and ds.class_names[-1] == "truck"
        assert np.all(np.bincount(ds.labels) == 1000)


def test_packed_cifar10_train_header_and_first_images():
    # Decoding all 50,000 train images takes ~10 s; check the file's index and the first images.
    path = data.packed_path("cifar10", "train")
    assert path == data.default_data_dir() / "cifar10_train.npz"
    with np.load(path) as z:
        labels, offsets, encoded = z["labels"], z["offsets"], z["encoded"]
        assert labels.shape == (50000,) and offsets.shape == (50001,)
        assert np.all(np.bincount(labels) == 5000)
        images = data.decode_images(encoded, offsets[:65])
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8


def test_packed_cache_used_on_second_load(tmp_path, monkeypatch):
    monkeypatch.setenv("MOON_JAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MOON_JAX_DATA_DIR", raising=False)
    first = data.load_dataset("textures_subset", "test")
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("decoder called although a cache exists")

    monkeypatch.setattr(packed_mod, "decode_images", fail)
    second = data.load_dataset("textures_subset", "test")
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.labels, second.labels)
    assert first.class_names == second.class_names


def _write_packed(path: Path, images: np.ndarray, labels, classes, fmt="PNG"):
    chunks, offsets = [], [0]
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format=fmt)
        chunks.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets.append(offsets[-1] + len(chunks[-1]))
    np.savez(path, encoded=np.concatenate(chunks), offsets=np.asarray(offsets, np.int64),
             labels=np.asarray(labels, np.int32), classes=np.asarray(classes), source=np.asarray("test"))


@pytest.mark.parametrize("channels", [1, 3])
def test_load_packed_roundtrip_and_cache_key(tmp_path, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 7, channels), dtype=np.uint8)
    path = tmp_path / "tiny.npz"
    _write_packed(path, images, [0, 1, 2, 1, 0], ["a", "b", "c"])
    cache = tmp_path / "cache"
    ds = data.load_packed(path, cache_dir=cache)
    assert np.array_equal(ds.images, images)  # PNG is lossless
    assert ds.num_classes == 3 and ds.class_names == ("a", "b", "c") and ds.name == "tiny"
    assert len(list(cache.glob("*.npy"))) == 1
    # a rewritten file (new size / mtime) gets a new cache entry, never the stale one
    new_images = images[:4][::-1].copy()
    _write_packed(path, new_images, [-1] * 4, ["ood"])
    os.utime(path, ns=(0, 10**18))
    ds2 = data.load_packed(path, cache_dir=cache)
    assert np.array_equal(ds2.images, new_images) and np.all(ds2.labels == -1)
    assert ds2.num_classes == 0 and ds2.class_names == ()
    assert len(list(cache.glob("*.npy"))) == 2


def test_packed_missing_file_error(tmp_path, monkeypatch):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("cifar10", "test", data_dir=tmp_path)
    msg = str(info.value)
    assert str((tmp_path / "cifar10_test.npz").resolve()) in msg
    assert "cifar10" in msg and "MOON_JAX_DATA_DIR" in msg and "tfds" in msg
    assert isinstance(info.value, FileNotFoundError)
    monkeypatch.setenv("MOON_JAX_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="ood_tin_resize.npz"):
        data.load_dataset("tin_resize", "test")
    with pytest.raises(data.DatasetNotFoundError, match="nothing.npz"):
        data.load_packed(tmp_path / "nothing.npz")


def test_unknown_names_and_splits():
    with pytest.raises(ValueError) as info:
        data.load_dataset("lsun_fake", "test")
    for allowed in ("digits", "gaussian_noise", "cifar10", "tin_resize", "imagenet2012", "tfds:"):
        assert allowed in str(info.value)
    assert not isinstance(info.value, FileNotFoundError)
    with pytest.raises(ValueError, match="splits"):
        data.load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="only split 'test'"):
        data.load_dataset("gaussian_noise", "train")
    with pytest.raises(ValueError, match="source"):
        data.load_dataset("digits", "train", source="web")
    with pytest.raises(ValueError, match="only as a packed file"):
        data.load_dataset("tin_resize", "test", source="tfds")


def test_load_dataset_options():
    ds = data.load_dataset("digits", "train", num_examples=10, image_shape=(16, 16, 3))
    assert ds.images.shape == (10, 16, 16, 3)
    assert np.array_equal(ds.labels, data.digits("train").subset(10).labels)  # a fixed random subset
    photos = data.load_dataset("digits_photos", "test", num_examples=30)
    assert photos.images.shape == (30, 8, 8, 1)
    assert set(data.available_datasets()) >= {"digits", "digits_photos", "gaussian_noise", "uniform_noise",
                                              "cifar10", "tin_resize", "mnist", "textures_subset"}


# ----------------------------------------------------------------------------------------------
# TFDS (mocked; no real TFDS data and no TensorFlow here)

TFDS_CASES = {
    # name: (requested image_shape or None, expected shape, num_classes)
    "cifar10": (None, (32, 32, 3), 10),
    "cifar100": (None, (32, 32, 3), 100),
    "svhn_cropped": (None, (32, 32, 3), 10),
    "dtd": ((32, 32, 3), (32, 32, 3), 47),
    "places365_small": ((64, 48, 3), (64, 48, 3), 365),
    "imagenet2012": ((40, 40, 3), (40, 40, 3), 1000),
}


@pytest.mark.parametrize("name", sorted(TFDS_CASES))
def test_tfds_mock_shapes(name, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    image_shape, expected, num_classes = TFDS_CASES[name]
    with tfds.testing.mock_data(num_examples=5):
        ds = data.load_dataset(f"tfds:{name}", "train", data_dir=tmp_path, image_shape=image_shape)
        default = data.load_tfds(name, "test", data_dir=tmp_path, num_examples=3)
        source = data.TfdsArraySource(name, "test", data_dir=tmp_path, image_shape=(16, 16, 1))
        batch_images, batch_labels = source.get_batch(np.array([4, 0, 4]))
    assert ds.images.shape == (5, *expected) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (5,) and ds.labels.dtype == np.int32
    assert np.all((ds.labels >= 0) & (ds.labels < num_classes))
    assert ds.num_classes == num_classes == len(ds.class_names) and ds.name == name
    assert ds.images.std() > 10  # random mock pixels survived the conversion
    assert default.images.shape == (3, *data.TFDS_SPECS[name].image_shape)
    assert len(source) == 5
    assert batch_images.shape == (3, 16, 16, 1) and batch_labels.dtype == np.int32
    assert np.array_equal(batch_images[0], batch_images[2])


def test_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_tfds("cifar100", "test", data_dir=tmp_path)
    msg = str(info.value)
    assert "'cifar100'" in msg and str(tmp_path) in msg
    assert "tfds build cifar100" in msg and "TFDS_DATA_DIR" in msg
    with pytest.raises(data.DatasetNotFoundError, match="imagenet2012"):
        data.load_dataset("imagenet2012", "validation", data_dir=tmp_path)
    with pytest.raises(ValueError):
        data.load_tfds("no_such_dataset_xyz", "test", data_dir=tmp_path)


def test_import_does_not_import_tfds():
    code = ("import moon_jax.data, sys; "
            "assert 'tensorflow_datasets' not in sys.modules; assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------------------------
# geometry

def _dataset(images, name="x"):
    return data.ImageDataset(images=images, labels=np.zeros(len(images), np.int32), num_classes=1,
                             name=name, class_names=("a",))


def test_to_image_shape_grey_to_rgb_and_resize():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(4, 28, 28, 1), dtype=np.uint8)
    ds = _dataset(grey)
    same = data.to_image_shape(ds, (28, 28, 3))
    assert same.images.shape == (4, 28, 28, 3)
    assert all(np.array_equal(same.images[..., c], grey[..., 0]) for c in range(3))
    big = data.to_image_shape(ds, (32, 32, 3))
    assert big.images.shape == (4, 32, 32, 3) and big.images.dtype == np.uint8
    assert np.array_equal(big.images[..., 0], big.images[..., 2])
    assert np.array_equal(big.labels, ds.labels) and big.name == "x"
    # constant images stay constant under resizing
    const = data.to_image_shape(_dataset(np.full((2, 28, 28, 1), 77, np.uint8)), (32, 32, 3))
    assert np.all(const.images == 77)
    # 2x downscale is a box (area) average
    blocks = np.kron(np.array([[0, 100], [200, 40]], np.uint8), np.ones((2, 2), np.uint8))
    quad = np.array([[0, 50], [150, 250]], np.uint8).repeat(2, 0).repeat(2, 1)
    img = np.stack([blocks, quad])[..., None]  # (2, 4, 4, 1)
    small = data.to_image_shape(_dataset(img), (2, 2, 1)).images[..., 0]
    assert np.array_equal(small[0], [[0, 100], [200, 40]])
    assert np.array_equal(small[1], [[0, 50], [150, 250]])
    assert data.to_image_shape(ds, (28, 28, 1)) is ds


def test_to_image_shape_rgb_to_grey_matches_pillow():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(3, 10, 12, 3), dtype=np.uint8)
    grey = data.to_image_shape(_dataset(rgb), (10, 12, 1)).images
    for i in range(3):
        assert np.array_equal(grey[i, :, :, 0], np.asarray(Image.fromarray(rgb[i]).convert("L")))
    resized = data.to_image_shape(_dataset(rgb), (5, 6, 1)).images
    assert resized.shape == (3, 5, 6, 1)


def test_convert_image_keep_aspect_centre_crop():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # bright centre half
    out = data.convert_image(img, (10, 10, 3), keep_aspect=True)
    assert out.shape == (10, 10, 3) and np.all(out == 255)


def test_image_dataset_validation():
    with pytest.raises(ValueError, match="uint8"):
        data.ImageDataset(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32), 1, "x")
    with pytest.raises(ValueError, match="labels"):
        data.ImageDataset(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int32), 1, "x")
    ds = data.ImageDataset(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2, np.int32), 1, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "y"


# ----------------------------------------------------------------------------------------------
# augmentation and normalisation

def _find_window(out, padded):
    """All (dy, dx, flipped) for which ``out`` is that window of ``padded``."""
    h, w = out.shape[:2]
    hits = []
    for dy in range(padded.shape[0] - h + 1):
        for dx in range(padded.shape[1] - w + 1):
            win = padded[dy:dy + h, dx:dx + w]
            if np.array_equal(out, win):
                hits.append((dy, dx, False))
            if np.array_equal(out, win[:, ::-1]):
                hits.append((dy, dx, True))
    return hits


def test_random_crop_flip_is_window_of_padded_image():
    n, h, w, c = 64, 8, 8, 2
    base = (np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c) + 1)  # distinct, non-zero
    images = np.broadcast_to(base, (n, h, w, c)).copy()
    out = np.asarray(data.random_crop_flip(jax.random.PRNGKey(0), jnp.asarray(images)))
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(base, ((4, 4), (4, 4), (0, 0)))
    found = []
    for i in range(n):
        hits = _find_window(out[i], padded)
        assert len(hits) == 1, (i, hits)
        found.append(hits[0])
    dys, dxs, flips = map(np.array, zip(*found))
    # every offset of the 4-pixel padding occurs, on each axis (the window search tries only these)
    assert set(dys) == set(dxs) == set(range(9))
    assert len(set(zip(dys, dxs))) > 20  # offsets vary per example
    assert 0.25 < flips.mean() < 0.75  # p = 0.5 flip


def test_random_crop_flip_flip_only_and_determinism():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((32, 6, 6, 3), dtype=np.float32))
    key = jax.random.PRNGKey(3)
    out = np.asarray(data.random_crop_flip(key, images, padding=0))
    assert out.dtype == np.float32
    imgs = np.asarray(images)
    flipped = [np.array_equal(out[i], imgs[i, :, ::-1]) for i in range(32)]
    kept = [np.array_equal(out[i], imgs[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)
    again = np.asarray(data.random_crop_flip(key, images, padding=0))
    assert np.array_equal(out, again)
    a = np.asarray(data.random_crop_flip(key, images))
    b = np.asarray(data.random_crop_flip(key, images))
    c = np.asarray(data.random_crop_flip(jax.random.PRNGKey(4), images))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_random_crop_flip_compiles_once():
    traces = []

    @jax.jit
    def step(key, images):
        traces.append(1)  # Python side effect: runs only while tracing
        return data.normalize(data.random_crop_flip(key, images), *data.normalization_for("cifar10"))

    images = jnp.zeros((4, 32, 32, 3), jnp.uint8)
    for i in range(4):
        out = step(jax.random.PRNGKey(i), images + i)
    assert out.shape == (4, 32, 32, 3) and out.dtype == jnp.float32
    assert len(traces) == 1


def test_normalize_values():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    x = np.array([[[[0, 255, 51]]], [[[255, 0, 102]]]], np.uint8)  # (2, 1, 1, 3)
    y = np.asarray(data.normalize(jnp.asarray(x), mean, std))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0, 0, 0], [-1.0, 3.0, 0.2], rtol=1e-6)
    np.testing.assert_allclose(y[1, 0, 0], [1.0, -1.0, 0.4], rtol=1e-6)
    jitted = jax.jit(lambda v: data.normalize(v, mean, std))
    np.testing.assert_allclose(np.asarray(jitted(jnp.asarray(x))), y, rtol=1e-6)


def test_normalization_constants():
    assert data.normalization_for("cifar10") == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert data.normalization_for("tfds:cifar100") == data.NORMALIZATION["cifar100"]
    assert data.normalization_for("imagenet2012")[1] == (0.229, 0.224, 0.225)
    pixels = data.digits("train").images / 255.0
    mean, std = data.normalization_for("digits")
    assert abs(mean[0] - pixels.mean()) < 1e-4 and abs(std[0] - pixels.std()) < 1e-4
    with pytest.raises(ValueError, match="cifar10"):
        data.normalization_for("gaussian_noise")


# ----------------------------------------------------------------------------------------------
# batching

def test_epoch_permutation_deterministic_and_complete():
    p0 = data.epoch_permutation(1000, seed=7, epoch=0)
    assert np.array_equal(p0, data.epoch_permutation(1000, seed=7, epoch=0))
    assert np.array_equal(np.sort(p0), np.arange(1000))
    p1 = data.epoch_permutation(1000, seed=7, epoch=1)
    assert np.array_equal(np.sort(p1), np.arange(1000)) and not np.array_equal(p0, p1)
    assert not np.array_equal(p0, data.epoch_permutation(1000, seed=8, epoch=0))


def test_epoch_batch_indices():
    assert data.steps_per_epoch(1000, 128) == 7
    assert data.steps_per_epoch(1000, 128, drop_last=False) == 8
    assert data.steps_per_epoch(1024, 128, drop_last=False) == 8
    b = data.epoch_batch_indices(1000, 128, seed=1, epoch=3)
    assert b.shape == (7, 128) and b.dtype == np.int32
    assert len(np.unique(b)) == 7 * 128
    assert np.array_equal(b.reshape(-1), data.epoch_permutation(1000, 1, 3)[:896])
    assert np.array_equal(b, data.epoch_batch_indices(1000, 128, seed=1, epoch=3))
    assert not np.array_equal(b, data.epoch_batch_indices(1000, 128, seed=1, epoch=4))
    full = data.epoch_batch_indices(1000, 128, seed=1, epoch=3, drop_last=False)
    assert full.shape == (8, 128)
    assert np.array_equal(np.unique(full), np.arange(1000))  # every example at least once
    assert np.array_equal(full[:7], b)


def test_eval_batches_cover_everything_once():
    seen = []
    shapes = set()
    for idx, valid in data.eval_batches(1003, 100):
        shapes.add((idx.shape, valid.shape, idx.dtype, valid.dtype))
        seen.extend(idx[valid].tolist())
    assert shapes == {((100,), (100,), np.dtype(np.int32), np.dtype(bool))}
    assert seen == list(range(1003))
    batches = list(data.eval_batches(1003, 100))
    assert len(batches) == 11 and batches[-1][1].sum() == 3
    assert list(data.eval_batches(0, 10)) == []
    assert [v.sum() for _, v in data.eval_batches(200, 100)] == [100, 100]
