"""A user's own image sets named by a path: folders, ImageFolder layouts, image lists, .npz files;
the programs with them; their error cases."""
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, load_config, run_python
from moon_jax import data
from moon_jax.data import DatasetFormatError, DatasetNotFoundError
from moon_jax.data import image_folder
from moon_jax.training.config import ConfigError, validate_config
from moon_jax.training.input_pipeline import ood_display_names


def _save(path, array, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def make_id_folder(root, size=(8, 8), per_class=(30, 10), classes=("cat", "ant", "bee"), seed=0):
    """``root/{train,test}/<class>/<i>.png``: RGB images whose bright channel is the class."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(classes):
            for i in range(n):
                img = rng.integers(0, 80, (*size, 3)).astype(np.uint8)
                img[..., c % 3] += 150
                _save(root / split / name / f"{i}.png", img)
    return root


def make_ood_folder(root, n=25, seed=1):
    """``n`` grey 12x16 PNGs in a nested folder, plus a JPEG of another size and a text file that
    is not an image (ignored)."""
    rng = np.random.default_rng(seed)
    for i in range(n - 1):
        _save(root / "nested" / f"{i:03d}.png", rng.integers(0, 255, (12, 16), dtype=np.uint8))
    _save(root / "photo.jpg", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), fmt="JPEG")
    (root / "README.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    return root


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOON_JAX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- OOD sets
def test_ood_folder_is_found_recursively_converted_and_named(tmp_path, cache):
    folder = make_ood_folder(tmp_path / "my_textures")
    ds = data.load_dataset(str(folder), "test", image_shape=(8, 8, 3))
    assert ds.name == "my_textures" and len(ds) == 25 and ds.images.shape == (25, 8, 8, 3)
    assert np.all(ds.labels == -1) and ds.num_classes == 0
    # Grey -> RGB replicates the channel; 12x16 -> shorter side to 8 and a centre crop.
    first = np.asarray(Image.open(folder / "nested" / "000.png"))
    resized = np.asarray(Image.fromarray(first).resize((11, 8), Image.BOX))[:, 1:9]
    np.testing.assert_array_equal(ds.images[0, :, :, 0], resized)
    np.testing.assert_array_equal(ds.images[0, :, :, 0], ds.images[0, :, :, 2])


def test_decoded_folder_is_cached_and_a_changed_file_decodes_again(tmp_path, cache, monkeypatch):
    folder = make_ood_folder(tmp_path / "ood", n=6)
    first = data.load_path_dataset(folder, image_shape=(8, 8, 1))
    assert len(list(cache.glob("ood-*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(image_folder, "decode_image_files", fail)
    again = data.load_path_dataset(folder, image_shape=(8, 8, 1))
    np.testing.assert_array_equal(first.images, again.images)
    monkeypatch.undo()
    monkeypatch.setenv("MOON_JAX_CACHE_DIR", str(cache))
    _save(folder / "nested" / "000.png", np.zeros((12, 16), np.uint8))
    changed = data.load_path_dataset(folder, image_shape=(8, 8, 1))
    assert np.all(changed.images[0] == 0) and len(list(cache.glob("ood-*.npy"))) == 2


def test_image_list_relative_paths_labels_and_comments(tmp_path, cache):
    folder = make_ood_folder(tmp_path / "imgs", n=5)
    listing = tmp_path / "benchmark_imglist.txt"
    listing.write_text("# OpenOOD style\nimgs/nested/000.png 3\n\nimgs/nested/001.png\nimgs/photo.jpg 0\n")
    ds = data.load_dataset(str(listing), "test", image_shape=(8, 8, 3))
    assert ds.name == "benchmark_imglist" and len(ds) == 3
    direct = data.load_dataset(str(folder), "test", image_shape=(8, 8, 3))
    np.testing.assert_array_equal(ds.images[0], direct.images[0])


def test_packed_npz_path(tmp_path, cache):
    encoded, offsets = [], [0]
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(buf, format="PNG")
        encoded.append(np.frombuffer(buf.getvalue(), np.uint8))
        offsets.append(offsets[-1] + len(encoded[-1]))
    path = tmp_path / "four_greys.npz"
    np.savez(path, encoded=np.concatenate(encoded), offsets=np.asarray(offsets, np.int64),
             labels=np.full(4, -1, np.int32), classes=np.asarray([], str), source=np.asarray("test"))
    ds = data.load_dataset(str(path), "test", image_shape=(8, 8, 3))
    assert ds.name == "four_greys" and ds.images.shape == (4, 8, 8, 3)
    assert [int(ds.images[i].mean()) for i in range(4)] == [0, 60, 120, 180]


def test_ood_error_cases_name_the_path(tmp_path, cache):
    with pytest.raises(DatasetNotFoundError, match=r"dataset path .*nowhere does not exist"):
        data.load_dataset(str(tmp_path / "nowhere"), "test")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(DatasetFormatError, match=r"folder .*empty holds no image files"):
        data.load_dataset(str(tmp_path / "empty"), "test")
    bad = make_ood_folder(tmp_path / "bad", n=3)
    (bad / "broken.png").write_bytes(b"not a png")
    (bad / "nested" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DatasetFormatError) as err:
        data.load_dataset(str(bad), "test", image_shape=(8, 8, 3))
    assert "2 of 5 image files" in str(err.value) and "broken.png" in str(err.value) and "nested/cut.jpg" in str(err.value)
    listing = tmp_path / "list.txt"
    listing.write_text("bad/nested/000.png\nbad/missing.png 1\n")
    with pytest.raises(DatasetFormatError, match=r"1 of 2 images listed in .* do not exist: bad/missing.png"):
        data.load_dataset(str(listing), "test")
    (tmp_path / "model.ckpt").write_text("x")
    with pytest.raises(DatasetFormatError, match="neither an image list"):
        data.load_dataset(str(tmp_path / "model.ckpt"), "test")


def test_ood_names_in_reports_are_folder_names_made_unique(tmp_path):
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "b" / "x").mkdir(parents=True)
    names = ["mnist", str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x") + "/", str(tmp_path / "l.txt")]
    assert ood_display_names(names) == ["mnist", "x", "x_2", "l"]


# ----------------------------------------------------------------------------- ID sets
def test_image_folder_layout_train_and_test(tmp_path, cache):
    root = make_id_folder(tmp_path / "shapes")
    train = data.load_dataset(str(root), "train")
    test = data.load_dataset(str(root), "test")
    assert train.class_names == ("ant", "bee", "cat") and train.num_classes == 3
    assert train.images.shape == (90, 8, 8, 3) and test.images.shape == (30, 8, 8, 3)
    assert np.bincount(train.labels).tolist() == [30, 30, 30]
    # label 0 = "ant" = the second folder made: bright channel 1
    assert train.images[train.labels == 0][..., 1].mean() > train.images[train.labels == 0][..., 0].mean() + 100
    assert train.name == "shapes"


def test_image_folder_needs_one_size_or_image_size(tmp_path, cache):
    root = make_id_folder(tmp_path / "mixed")
    _save(root / "train" / "ant" / "big.png", np.zeros((16, 12, 3), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"2 different sizes .*set config.data.image_size"):
        data.load_dataset(str(root), "train")
    ds = data.load_dataset(str(root), "train", image_size=6)
    assert ds.images.shape == (91, 6, 6, 3)


def test_truncated_image_in_a_training_folder_is_named(tmp_path, cache):
    root = make_id_folder(tmp_path / "t", size=(32, 32), per_class=(2, 1))
    whole = (root / "train" / "bee" / "1.png").read_bytes()
    (root / "train" / "bee" / "1.png").write_bytes(whole[: len(whole) // 2])  # the header still reads
    with pytest.raises(DatasetFormatError, match=r"1 of 6 image files in .*train cannot be read by Pillow: bee/1.png"):
        data.load_dataset(str(root), "train")


def test_resized_folder_is_cached_without_decoding_again(tmp_path, cache, monkeypatch):
    root = make_id_folder(tmp_path / "r", per_class=(2, 1))
    first = data.load_dataset(str(root), "train", image_size=4)
    monkeypatch.setattr(image_folder, "decode_image_files", lambda *a, **k: pytest.fail("decoded again"))
    np.testing.assert_array_equal(data.load_dataset(str(root), "train", image_size=4).images, first.images)
    assert first.images.shape == (6, 4, 4, 3)


def test_grey_image_folder_has_one_channel(tmp_path, cache):
    for split in ("train", "test"):
        for c in ("0", "1"):
            _save(tmp_path / "g" / split / c / "a.png", np.full((5, 5), 10 * int(c), np.uint8))
    assert data.load_dataset(str(tmp_path / "g"), "train").images.shape == (2, 5, 5, 1)


def test_image_folder_layout_errors(tmp_path, cache):
    root = make_id_folder(tmp_path / "ok", per_class=(2, 1))
    (root / "test" / "wolf").mkdir()
    _save(root / "test" / "wolf" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetFormatError, match="class folders the train split lacks: wolf"):
        data.load_dataset(str(root), "test")
    (tmp_path / "flat").mkdir()
    _save(tmp_path / "flat" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetFormatError, match="has no train and no test subfolder"):
        data.load_dataset(str(tmp_path / "flat"), "train")


def test_config_accepts_paths_and_names_bad_ones(tmp_path):
    root = make_id_folder(tmp_path / "mine", per_class=(1, 1))
    make_ood_folder(tmp_path / "ood", n=2)
    config = load_config("default")
    config.data.dataset = str(root)
    config.data.ood_datasets = (str(tmp_path / "ood"), "gaussian_noise")
    validate_config(config)
    config.data.image_size = 16
    validate_config(config)

    def fails(field, value, message):
        bad = load_config("default")
        node = bad
        *parents, leaf = field.split(".")
        for part in parents:
            node = node[part]
        with bad.ignore_type():
            node[leaf] = value
        with pytest.raises(ConfigError) as err:
            validate_config(bad)
        assert message in str(err.value), str(err.value)

    fails("data.dataset", str(tmp_path / "nope"), f"config.data.dataset = '{tmp_path / 'nope'}' is not valid: dataset path")
    fails("data.dataset", str(tmp_path / "ood"), "has no train and no test subfolder")
    fails("data.ood_datasets", ("mnist", str(tmp_path / "gone")), "does not exist")
    fails("data.ood_datasets", ("mnistt",), "or a path to a folder of images")
    fails("data.image_size", 32, "config.data.image_size = 32 is not valid: only a folder dataset")
    fails("data.image_size", -1, "must be an integer >= 0")
    for field, value, message in (("data.source", "tfds", "config.data.source = 'tfds' is not valid: a dataset given as a path"),
                                  ("data.stream_train", True, "config.data.stream_train = True is not valid: streaming")):
        bad = load_config("default")
        bad.data.dataset = str(root)
        with bad.ignore_type():
            bad.data[field.split(".")[1]] = value
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_config(bad)


# ----------------------------------------------------------------------------- the programs
@pytest.mark.slow
def test_train_on_an_image_folder_then_eval_with_own_ood_folder(tmp_path):
    root = make_id_folder(tmp_path / "shapes")
    ood = make_ood_folder(tmp_path / "pngs")
    workdir = tmp_path / "run"
    train = run_python([str(REPO / "train.py"), f"--workdir={workdir}", f"--config.data.dataset={root}",
                        f"--config.data.ood_datasets=('{ood}', 'gaussian_noise')", "--config.train.epochs=8",
                        "--config.train.batch_size=30", "--config.moon.warmup_epochs=2", "--config.moon.averaging_epochs=2",
                        "--config.train.constant_lr_epochs=2", "--config.sparse.update_every=4",
                        "--config.sparse.end_fraction=0.5", "--config.train.eval_every_epochs=0"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert re.search(r"^\| pngs \| 25 \|", train.stdout, re.M), train.stdout[-3000:]
    acc = float(re.search(r"^\| ([\d.]+) \| ([\d.]+) \|", train.stdout, re.M).group(1))
    assert acc > 90.0  # three colour-coded classes: a trained model separates them
    results = json.loads((workdir / "eval.json").read_text())
    assert results["num_classes"] == 3 and results["num_test"] == 30

    listing = tmp_path / "few.txt"
    listing.write_text("pngs/nested/000.png\npngs/nested/001.png 1\n")
    evaluation = run_python([str(REPO / "eval.py"), f"--workdir={workdir}", f"--ood={ood},{listing}", "--noplots"], cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert re.search(r"^\| pngs \| 25 \| [\d.]+ \|", evaluation.stdout, re.M), evaluation.stdout[:3000]
    assert re.search(r"^\| few \| 2 \| [\d.]+ \|", evaluation.stdout, re.M)
    assert json.loads((workdir / "eval.json").read_text())["ood_sizes"] == {"pngs": 25, "few": 2}

    (tmp_path / "empty").mkdir()
    bad = make_ood_folder(tmp_path / "bad", n=2)
    (bad / "x.png").write_bytes(b"junk")
    for ood_arg, message in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "holds no image files"),
                             (bad, "cannot be read by Pillow: x.png"), ("mnistt", "--ood: unknown OOD set 'mnistt'")):
        out = run_python([str(REPO / "eval.py"), f"--workdir={workdir}", f"--ood={ood_arg}", "--noplots"], cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert out.stderr.startswith("error: ")
    out = run_python([str(REPO / "eval.py"), f"--workdir={workdir}", "--step=99999"], cwd=tmp_path)
    assert out.returncode == 2 and "no checkpoint at step 99999" in out.stderr and "Traceback" not in out.stderr


def test_checkpoint_from_before_the_image_size_field_still_matches():
    from moon_jax.training.checkpoint import fingerprint, fingerprint_differences

    config = load_config("default")
    saved = fingerprint(config)
    del saved["data.image_size"]  # written by a version without the field
    assert fingerprint_differences(saved, fingerprint(config)) == []
    config.data.image_size = 16
    assert fingerprint_differences(saved, fingerprint(config)) == [
        "data.image_size: checkpoint has '<absent>', config has 16"]
