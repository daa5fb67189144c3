"""Packed-image ``.npz`` files: real image sets without the internet and without TensorFlow.

Format (one split per file, read with ``numpy.load``):

* ``encoded``  uint8 (total_bytes,): every image's encoded bytes (JPEG or PNG), back to back;
* ``offsets``  int64 (n + 1,): image i is ``encoded[offsets[i]:offsets[i + 1]]``;
* ``labels``   int32 (n,): class index, -1 for unlabelled (OOD) sets;
* ``classes``  str (k,): class names; ``source`` str (): provenance.

Decoding is done once with Pillow; the decoded uint8 array is cached as ``.npy`` in
:func:`default_cache_dir`, keyed by the source file's absolute path, size and modification time,
so later loads are a single ``numpy.load``. The data files are never part of the project: they
are found through :func:`default_data_dir`.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from moon_jax.data.dataset import DatasetNotFoundError, ImageDataset

#: Dataset name -> {split: file name} for the packed sets.
PACKED_FILES: dict[str, dict[str, str]] = {
    "cifar10": {"train": "cifar10_train.npz", "test": "cifar10_test.npz"},
    "tin_resize": {"test": "ood_tin_resize.npz"},
    "mnist": {"test": "mnist_test.npz"},
    "textures_subset": {"test": "ood_textures_subset.npz"},
}

DATA_DIR_ENV = "MOON_JAX_DATA_DIR"
CACHE_DIR_ENV = "MOON_JAX_CACHE_DIR"


def default_data_dir() -> Path:
    """Directory holding the packed ``.npz`` files.

    Resolution order: the ``MOON_JAX_DATA_DIR`` environment variable if set; else
    ``<repository root>/../shared/data`` if it exists (the repository root is the directory that
    contains the ``moon_jax`` package; CI and the development machines put the shared data
    there); else ``./data`` under the current working directory.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import moon_jax

    repo_root = Path(moon_jax.__file__).resolve().parent.parent
    shared = (repo_root.parent / "shared" / "data").resolve()
    if shared.is_dir():
        return shared
    return Path.cwd() / "data"


def default_cache_dir() -> Path:
    """Directory for decoded-image caches: ``$MOON_JAX_CACHE_DIR`` if set, else
    ``~/.cache/moon_jax``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "moon_jax"


def decode_images(encoded: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode every image of a packed file with Pillow into one uint8 (N, H, W, C) array.

    The mode of the first image decides the channels: 'L' (grey) gives C = 1, anything else is
    converted to RGB (C = 3). All images must have the same size.
    """
    n = int(offsets.shape[0]) - 1
    if n <= 0:
        raise ValueError("packed file holds no images")
    data = np.ascontiguousarray(encoded, dtype=np.uint8).tobytes()
    bounds = [int(x) for x in offsets]  # Python ints: much faster slicing than numpy scalars

    def _open(i):
        return Image.open(io.BytesIO(data[bounds[i]:bounds[i + 1]]))

    first = _open(0)
    mode = "L" if first.mode in ("L", "1", "I;16", "I") else "RGB"
    w, h = first.size
    c = 1 if mode == "L" else 3
    out = np.empty((n, h, w, c), dtype=np.uint8)
    for i in range(n):
        img = first if i == 0 else _open(i)
        if img.size != (w, h):
            raise ValueError(f"packed image {i} has size {img.size}, expected {(w, h)}")
        if img.mode != mode:
            img = img.convert(mode)
        out[i] = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(h, w, c)
    return out


def _cache_file(path: Path, cache_dir: Path) -> Path:
    st = path.stat()
    key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    digest = hashlib.sha256(key).hexdigest()[:24]
    return cache_dir / f"{path.stem}-{digest}.npy"


def _atomic_save(target: Path, array: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache may be shared read-only
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_packed(path, name: str | None = None, cache_dir=None,
                use_cache: bool = True) -> ImageDataset:
    """Load one packed ``.npz`` file as an :class:`ImageDataset`, decoding images once.

    Args:
      path: the ``.npz`` file.
      name: dataset name to record (default: the file's stem).
      cache_dir: where decoded arrays are cached (default :func:`default_cache_dir`).
      use_cache: read/write the decoded-image cache. The cache file is keyed by the absolute
        path, size and mtime of ``path`` (a changed file gets a new cache entry) and written
        atomically (temp file + rename), so concurrent loaders never see a partial file.

    Sets whose labels are all -1 are unlabelled: ``num_classes`` is 0 and ``class_names`` empty.

    Raises:
      DatasetNotFoundError: ``path`` does not exist.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DatasetNotFoundError(
            f"packed dataset file not found: {path}. Point MOON_JAX_DATA_DIR (or "
            f"config.data.data_dir) at the directory that holds it.")
    with np.load(path, allow_pickle=False) as z:
        labels = np.asarray(z["labels"], dtype=np.int32)
        classes = tuple(str(c) for c in np.asarray(z["classes"]).reshape(-1))
        images = None
        cache_file = None
        if use_cache:
            cache_file = _cache_file(path, Path(cache_dir) if cache_dir else default_cache_dir())
            if cache_file.is_file():
                try:
                    cached = np.load(cache_file, allow_pickle=False)
                    if cached.dtype == np.uint8 and cached.ndim == 4 and cached.shape[0] == len(labels):
                        images = cached
                except (OSError, ValueError, EOFError):
                    images = None
        if images is None:
            images = decode_images(z["encoded"], z["offsets"])
            if cache_file is not None:
                try:
                    _atomic_save(cache_file, images)
                except OSError as e:  # read-only home etc.: still usable, only slower
                    warnings.warn(f"could not write decoded-image cache {cache_file}: {e}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels")
    unlabelled = labels.size > 0 and bool(np.all(labels == -1))
    return ImageDataset(images=images, labels=labels,
                        num_classes=0 if unlabelled else len(classes),
                        name=name or path.stem,
                        class_names=() if unlabelled else classes)


def packed_path(name: str, split: str, data_dir=None) -> Path:
    """Path of the ``.npz`` file of packed dataset ``name``/``split`` under ``data_dir``
    (default :func:`default_data_dir`). Raises ValueError for unknown names or splits."""
    if name not in PACKED_FILES:
        raise ValueError(f"unknown packed dataset {name!r}; packed datasets are {sorted(PACKED_FILES)}")
    files = PACKED_FILES[name]
    if split not in files:
        raise ValueError(f"packed dataset {name!r} has splits {sorted(files)}, got split={split!r}")
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return (base / files[split]).resolve()


def load_packed_dataset(name: str, split: str = "test", data_dir=None,
                        cache_dir=None) -> ImageDataset:
    """Load packed dataset ``name`` (``cifar10``, ``tin_resize``, ``mnist``, ``textures_subset``)
    split ``split`` from ``data_dir`` (default :func:`default_data_dir`).

    Raises:
      DatasetNotFoundError: the file is missing; the message names the dataset, the exact path
        looked at and how to provide the data.
      ValueError: unknown name or split.
    """
    path = packed_path(name, split, data_dir)
    if not path.is_file():
        how = ("passed as data_dir" if data_dir is not None else
               f"from ${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else
               "the default: ../shared/data next to the repository, else ./data")
        tfds_hint = ""
        if name in ("cifar10", "mnist"):
            tfds_hint = (f" Alternatively load it from TensorFlow Datasets with source='tfds' "
                         f"(name 'tfds:{name}') after preparing it (see moon_jax.data.load_tfds).")
        raise DatasetNotFoundError(
            f"dataset {name!r} split {split!r} not found: looked for {path} (data dir {how}). "
            f"Provide the packed file {PACKED_FILES[name][split]!r} (format: encoded/offsets/"
            f"labels/classes/source, see moon_jax/data/packed.py) in a directory and set the "
            f"environment variable {DATA_DIR_ENV} or config.data.data_dir to it.{tfds_hint}")
    return load_packed(path, name=name, cache_dir=cache_dir)
