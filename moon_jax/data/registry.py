"""One entry point for every dataset: :func:`load_dataset`.

Names:

* ``digits`` (splits train / test), ``digits_photos`` (test): built in, scikit-learn only;
* ``gaussian_noise``, ``uniform_noise`` (test): generated for the requested ``image_shape``;
* ``cifar10`` (train / test), ``tin_resize``, ``mnist``, ``textures_subset`` (test): packed
  ``.npz`` files (:mod:`moon_jax.data.packed`);
* ``cifar100``, ``svhn_cropped``, ``dtd``, ``places365_small``, ``imagenet2012`` and any
  ``'tfds:<name>'``: TensorFlow Datasets (:mod:`moon_jax.data.tfds_source`);
* a path: a folder of images (ImageFolder layout ``<path>/<split>/<label>/<image>`` for a
  labelled set), an OpenOOD-style image list ``.txt`` or a packed ``.npz``
  (:mod:`moon_jax.data.image_folder`; :func:`is_dataset_path` says when a name is a path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from moon_jax.data.dataset import ImageDataset, to_image_shape
from moon_jax.data.digits import digits, digits_photos
from moon_jax.data.image_folder import is_dataset_path, load_path_dataset
from moon_jax.data.packed import PACKED_FILES, load_packed_dataset
from moon_jax.data.synthetic import NOISE_NAMES, default_noise_count, gaussian_noise, uniform_noise
from moon_jax.data.tfds_source import TFDS_SPECS, load_tfds

BUILTIN_NAMES = ("digits", "digits_photos")
SOURCES = ("auto", "packed", "tfds")
#: Packed names that also exist in TFDS under these names (used with source='tfds').
_PACKED_TO_TFDS = {"cifar10": "cifar10", "mnist": "mnist"}


def available_datasets() -> tuple[str, ...]:
    """Every name :func:`load_dataset` accepts (plus any ``'tfds:<name>'``)."""
    names = list(BUILTIN_NAMES) + list(NOISE_NAMES) + list(PACKED_FILES)
    names += [n for n in TFDS_SPECS if n not in PACKED_FILES]
    return tuple(names)


def names_a_path(name) -> bool:
    """Whether a dataset ``name`` is read as a path: not a registered name nor ``'tfds:<name>'``,
    and a path by :func:`~moon_jax.data.image_folder.is_dataset_path`'s rule. The one answer to
    "name or path?" that configs, programs and loaders share."""
    return (isinstance(name, str) and name not in available_datasets() and not name.startswith("tfds:")
            and is_dataset_path(name))


def resolve_dataset_path(name):
    """``name`` as an absolute path when it names a path (so a run does not depend on the folder
    it was started from), else unchanged."""
    return str(Path(name).expanduser().resolve()) if names_a_path(name) else name


def source_kind(name: str, source: str = "auto") -> str:
    """Where :func:`load_dataset` reads ``name`` from: ``builtin``, ``packed``, ``path`` or ``tfds``.

    Lets callers hand each kind its own directory (packed ``.npz`` dir vs TFDS data dir).
    """
    if name.startswith("tfds:"):
        return "tfds"
    if name in BUILTIN_NAMES or name in NOISE_NAMES:
        return "builtin"
    if name in PACKED_FILES and source in ("auto", "packed"):
        return "packed"
    if name not in TFDS_SPECS and is_dataset_path(name):
        return "path"
    return "tfds"


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown dataset {name!r}; allowed names: {', '.join(available_datasets())}, "
                      f"'tfds:<name>' for any TFDS image dataset, or a path to a folder of images, an "
                      f"image list (.txt) or a packed .npz")


def _finish(ds: ImageDataset, image_shape, num_examples) -> ImageDataset:
    ds = ds.subset(num_examples)
    if image_shape is not None:
        ds = to_image_shape(ds, image_shape)
    return ds


def _only_test(name: str, split: str) -> None:
    if split != "test":
        raise ValueError(f"{name!r} is an OOD evaluation set with only split 'test', got {split!r}")


def load_dataset(name: str, split: str = "test", data_dir=None, source: str = "auto",
                 image_shape: Sequence[int] | None = None, num_examples: int | None = None,
                 seed: int = 0, image_size: int | None = None) -> ImageDataset:
    """Load dataset ``name`` / ``split`` as an :class:`ImageDataset`.

    Args:
      name: see the module docstring; :func:`available_datasets` lists them.
      split: ``'train'`` or ``'test'`` (OOD sets have only ``'test'``; TFDS names take TFDS
        split strings).
      data_dir: the packed-file directory for packed names (default
        :func:`moon_jax.data.default_data_dir`), the TFDS data dir for TFDS names (default
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      source: ``'auto'`` (packed files for the packed names, TFDS for the TFDS names, built-in
        generators for digits / noise), ``'packed'`` or ``'tfds'`` (any name is then looked up
        in TFDS; ``cifar10`` and ``mnist`` map to their TFDS names).
      image_shape: (H, W, C) to convert to (:func:`moon_jax.data.to_image_shape`); for the noise
        sets the generated shape (default 32x32x3); for TFDS the output geometry.
      num_examples: a fixed, uniformly drawn subset of that size (TFDS: the first examples of
        the split, which TFDS stores shuffled; noise / photo sets: how many to generate,
        default 1000 for 32x32 noise, 450 for 8x8 noise and digits_photos).
      seed: seed of the generated sets (noise, digits_photos).
      image_size: path datasets only: resize every image to a square of this size
        (:mod:`moon_jax.data.image_folder`; needed when a folder's images differ in size).

    Raises:
      ValueError: unknown name, split or source.
      DatasetNotFoundError: files of a known dataset are missing / not prepared, or a path
        does not exist.
      DatasetFormatError: a path dataset cannot be read (empty, unreadable files, layout).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if name.startswith("tfds:"):
        if source == "packed":
            raise ValueError(f"{name!r} is a TFDS name; it cannot be read with source='packed'")
        tfds_name = name[len("tfds:"):]
        if not tfds_name:
            raise _unknown(name)
        return load_tfds(tfds_name, split, data_dir=data_dir, image_shape=image_shape,
                         num_examples=num_examples)

    if source_kind(name, source) == "path":
        if source != "auto":
            raise ValueError(f"{name!r} is a path; it is read with source='auto'")
        ds = load_path_dataset(name, split, image_shape=image_shape, image_size=image_size)
        return ds.subset(num_examples)

    if name in BUILTIN_NAMES or name in NOISE_NAMES:
        if source != "auto":
            raise ValueError(f"{name!r} is built in (generated locally); use source='auto'")
        if name == "digits":
            return _finish(digits(split), image_shape, num_examples)
        _only_test(name, split)
        if name == "digits_photos":
            n = 450 if num_examples is None else num_examples
            return _finish(digits_photos(n, seed=seed), image_shape, None)
        shape = (32, 32, 3) if image_shape is None else tuple(image_shape)
        n = default_noise_count(shape) if num_examples is None else num_examples
        make = gaussian_noise if name == "gaussian_noise" else uniform_noise
        return make(n, shape, seed=seed)

    if name in PACKED_FILES and source in ("auto", "packed"):
        ds = load_packed_dataset(name, split, data_dir=data_dir)
        return _finish(ds, image_shape, num_examples)
    if name in PACKED_FILES:  # source == 'tfds'
        if name not in _PACKED_TO_TFDS:
            raise ValueError(f"{name!r} exists only as a packed file, not in TFDS; use source='auto'")
        return load_tfds(_PACKED_TO_TFDS[name], split, data_dir=data_dir, image_shape=image_shape,
                         num_examples=num_examples)

    if source == "packed":
        if name in TFDS_SPECS:
            raise ValueError(f"{name!r} has no packed file; packed datasets are {sorted(PACKED_FILES)}; "
                             f"use source='auto' or 'tfds'")
        raise _unknown(name)
    if name in TFDS_SPECS or source == "tfds":
        return load_tfds(name, split, data_dir=data_dir, image_shape=image_shape,
                         num_examples=num_examples)
    raise _unknown(name)
