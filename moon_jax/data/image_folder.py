"""A user's own image sets, named by a path: a folder of images, an image list, a packed ``.npz``.

Wherever a dataset is named (``config.data.dataset``, ``config.data.ood_datasets``, ``eval.py
--ood``), a path works too (:func:`is_dataset_path` says when a name is read as one):

* **a folder** of images, searched recursively; every file whose extension Pillow registers
  (``PIL.Image.registered_extensions()``: PNG, JPEG, BMP, GIF, TIFF, WebP, ...) is an image;
  other files and hidden ones (``.name``) are ignored. Laid out as TFDS's ImageFolder expects,
  ``<path>/<split>/<label>/<image>`` with splits ``train`` and ``test``, it is a labelled
  dataset: class names are the sorted folder names of the ``train`` split, and an OOD
  evaluation reads its ``test`` split;
* **an image list** (``.txt``, OpenOOD's ``imglist`` format): one image per line, a path
  relative to the list file's folder (or absolute), optionally followed by an integer label
  (ignored for OOD sets); blank lines and ``#`` comments are skipped;
* **a packed ``.npz``** (the format of :mod:`moon_jax.data.packed`).

The set is named after the folder / file (``my_textures`` for ``data/my_textures/`` or
``my_textures.txt``), which is the name every table and ``eval.json`` show.

Conversion rule (OOD sets, and ID sets with an ``image_size``): each image is converted to RGB,
or to grey when the target has one channel (Pillow's mode conversion: palette and alpha images
are composited to RGB, alpha dropped; RGB -> grey by ITU-R 601-2 luminance; grey -> RGB by
replication); its shorter side is resized to the target and the centre window cropped (OpenOOD's
test preprocessing; a plain resize for images of the target's aspect ratio, such as MNIST into a
CIFAR model). Without a target (ID sets without ``image_size``) every image must already have
the same size; the set is grey when every image is grey, RGB otherwise.

Decoding happens once: the uint8 array is cached as ``.npy`` in
:func:`moon_jax.data.default_cache_dir`, keyed by the absolute path, every image file's relative
path, size and modification time, and the target shape, so a changed folder is decoded again.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from moon_jax.data.dataset import DatasetFormatError, DatasetNotFoundError, ImageDataset, convert_image, \
    to_image_shape
from moon_jax.data.packed import _atomic_save, default_cache_dir, load_packed

SPLITS = ("train", "test")
IMAGE_LIST_SUFFIX = ".txt"
PACKED_SUFFIX = ".npz"
#: Bump when the decoding / conversion rule changes, so old caches are not reused.
_CACHE_VERSION = "1"
_MAX_LISTED = 10


def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) that Pillow can open."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_dataset_path(name: str) -> bool:
    """Whether a dataset ``name`` is read as a path rather than looked up as a registered name.

    Rule: a name containing a path separator, starting with ``.`` or ``~``, ending in ``.npz`` or
    ``.txt``, or naming an existing file or folder is a path. Registered names (``mnist``, ...)
    and ``'tfds:<name>'`` are checked first by :func:`moon_jax.data.load_dataset`, so a folder
    called ``mnist`` in the working directory is reached as ``./mnist``.
    """
    if not isinstance(name, str) or not name or name.startswith("tfds:"):
        return False
    return ("/" in name or os.sep in name or name.startswith((".", "~"))
            or name.endswith((PACKED_SUFFIX, IMAGE_LIST_SUFFIX)) or os.path.exists(name))


def path_dataset_name(path) -> str:
    """The display name of a path dataset: the folder name, or the file name without suffix."""
    path = Path(path).expanduser()
    name = path.name if path.is_dir() or not path.suffix else path.stem
    return name or str(path)


def has_split_layout(path) -> bool:
    """Whether folder ``path`` is laid out as ``<path>/<split>/<label>/<image>`` (a ``train`` or
    ``test`` subfolder)."""
    path = Path(path)
    return any((path / split).is_dir() for split in SPLITS)


def check_dataset_path(path, purpose: str = "ood") -> Path:
    """Checks that ``path`` exists and has the layout ``purpose`` needs; returns it resolved.

    ``purpose``: ``'ood'`` (any folder, image list or ``.npz``) or ``'id'`` (a folder with
    ``train/<label>/`` and ``test/<label>/``, or an ``.npz`` file).

    Raises:
      DatasetNotFoundError: the path does not exist.
      DatasetFormatError: it exists but cannot be an image set (wrong suffix, wrong layout).
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise DatasetNotFoundError(
            f"dataset path {path} does not exist (resolved to {resolved}); expected a folder of images, "
            f"an image list ({IMAGE_LIST_SUFFIX}) or a packed {PACKED_SUFFIX} file")
    if resolved.is_file():
        if resolved.suffix.lower() not in (PACKED_SUFFIX, IMAGE_LIST_SUFFIX):
            raise DatasetFormatError(
                f"dataset path {path} is a file but neither an image list ({IMAGE_LIST_SUFFIX}) nor a packed "
                f"{PACKED_SUFFIX} file; pass the folder that holds the images")
        if purpose == "id" and resolved.suffix.lower() != PACKED_SUFFIX:
            raise DatasetFormatError(
                f"in-distribution dataset {path}: an image list has no train/test splits; use a folder laid out "
                f"as <path>/train/<label>/<image> and <path>/test/<label>/<image>")
        return resolved
    if purpose == "id":
        missing = [s for s in SPLITS if not (resolved / s).is_dir()]
        if missing:
            raise DatasetFormatError(
                f"in-distribution dataset folder {path} has no {' and no '.join(missing)} subfolder; expected "
                f"<path>/train/<label>/<image> and <path>/test/<label>/<image> (TFDS ImageFolder layout)")
    return resolved


# ----------------------------------------------------------------------------- listing files
def _list_images(root: Path) -> list[Path]:
    """Every non-hidden file under ``root`` with an image extension, sorted by relative path."""
    exts = image_extensions()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith(".") and os.path.splitext(fname)[1].lower() in exts:
                found.append(Path(dirpath) / fname)
    return sorted(found, key=lambda f: f.relative_to(root).parts)


def _read_image_list(list_file: Path) -> list[Path]:
    """The image paths of an OpenOOD-style list file (labels, blank lines and comments dropped)."""
    paths = []
    for line_no, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            line = parts[0]
        rel = Path(line).expanduser()
        paths.append(rel if rel.is_absolute() else list_file.parent / rel)
    if not paths:
        raise DatasetFormatError(f"image list {list_file} lists no images (expected one relative path per line)")
    return paths


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _unreadable_error(where, names: list[str], total: int, missing: bool = False) -> DatasetFormatError:
    shown = ", ".join(names[:_MAX_LISTED]) + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
    if missing:
        return DatasetFormatError(
            f"{len(names)} of {total} images listed in {where} do not exist: {shown}; paths are relative to "
            f"the list file's folder")
    return DatasetFormatError(
        f"{len(names)} of {total} image files in {where} cannot be read by Pillow: {shown}; "
        f"remove or repair them")


# ----------------------------------------------------------------------------- decoding
def _cache_key(root: Path, files: Sequence[Path], target) -> str:
    h = hashlib.sha256(f"{_CACHE_VERSION}\0{root}\0{target}".encode())
    for f in files:
        try:
            st = f.stat()
            h.update(f"\0{f}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"\0{f}\0missing".encode())
    return h.hexdigest()[:24]


_GREY_MODES = ("L", "1", "I", "I;16", "F")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _headers(files: Sequence[Path], root: Path, where) -> list[tuple[tuple[int, int], str]]:
    """(size, mode) of every file from its header alone (no pixel decoding); unreadable files
    are all named in one error."""
    headers, unreadable = [], []
    for f in files:
        try:
            with Image.open(f) as image:
                headers.append((image.size, image.mode))
        except _READ_ERRORS:
            unreadable.append(_relative(f, root))
    if unreadable:
        raise _unreadable_error(where, unreadable, len(files))
    return headers


def image_channels(files: Sequence[Path], root: Path, where=None) -> int:
    """1 when every image is grey, else 3 (the channel rule of sets read without a target)."""
    headers = _headers(files, root, where or root)
    return 1 if all(mode in _GREY_MODES for _, mode in headers) else 3


def _to_array(image: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
    h, w, c = shape
    mode = "L" if c == 1 else "RGB"
    if image.mode != mode:
        if mode == "RGB" and image.mode in ("P", "PA", "LA", "RGBA"):
            image = image.convert("RGBA")  # palettes with transparency resolve through RGBA
        image = image.convert(mode)
    array = np.asarray(image, dtype=np.uint8).reshape(image.size[1], image.size[0], c)
    if array.shape[:2] != (h, w):
        array = convert_image(array, shape, keep_aspect=True)
    return array


def decode_image_files(files: Sequence[Path], root: Path, image_shape=None, where=None,
                       image_size: int | None = None) -> np.ndarray:
    """Decode ``files`` with Pillow into one uint8 (N, H, W, C) array, one image at a time.

    With ``image_shape`` = (H, W, C) every image is converted by the module's rule (channel
    conversion, shorter side resized, centre crop); without it every image must have the same
    size, and the result is grey (C = 1) when every image is grey, else RGB. ``image_size``
    (without ``image_shape``): convert to ``image_size`` x ``image_size`` with that channel rule.

    Raises:
      DatasetFormatError: some files cannot be decoded (all of them are named), or, without
        ``image_shape``, the images have different sizes.
    """
    where = where or root
    if not files:
        raise DatasetFormatError(f"{where} holds no image files (extensions Pillow reads, e.g. .png, .jpg)")
    if image_shape is None and image_size:
        image_shape = (int(image_size), int(image_size), image_channels(files, root, where))
    if image_shape is None:
        headers = _headers(files, root, where)
        sizes: dict = {}
        for f, (size, _) in zip(files, headers):
            sizes.setdefault(size, _relative(f, root))
        if len(sizes) > 1:
            examples = "; ".join(f"{w}x{h} ({name})" for (w, h), name in list(sizes.items())[:4])
            raise DatasetFormatError(
                f"images in {where} have {len(sizes)} different sizes ({examples}); set config.data.image_size "
                f"to resize them all to one square size")
        (w, h), = sizes
        c = 1 if all(mode in _GREY_MODES for _, mode in headers) else 3
        shape = (h, w, c)
    else:
        shape = tuple(int(d) for d in image_shape)
    out = np.empty((len(files), *shape), dtype=np.uint8)
    unreadable = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as image:
                image.load()
                out[i] = _to_array(image, shape)
        except _READ_ERRORS:
            unreadable.append(_relative(f, root))
    if unreadable:
        raise _unreadable_error(where, unreadable, len(files))
    return out


def _decode_cached(files: Sequence[Path], root: Path, image_shape, where, cache_dir, use_cache: bool,
                   cache_name: str | None = None, image_size: int | None = None) -> np.ndarray:
    target = None if image_shape is None else tuple(int(d) for d in image_shape)
    key_target = (target, None if target else image_size)
    cache_file = None
    if use_cache:
        base = Path(cache_dir) if cache_dir else default_cache_dir()
        cache_file = base / f"{cache_name or path_dataset_name(root)}-{_cache_key(root, files, key_target)}.npy"
        if cache_file.is_file():
            try:
                cached = np.load(cache_file, allow_pickle=False)
                if cached.dtype == np.uint8 and cached.ndim == 4 and cached.shape[0] == len(files):
                    return cached
            except (OSError, ValueError, EOFError):
                pass
    images = decode_image_files(files, root, target, where, image_size=image_size)
    if cache_file is not None:
        try:
            _atomic_save(cache_file, images)
        except OSError as e:  # read-only home etc.: still usable, only slower
            warnings.warn(f"could not write decoded-image cache {cache_file}: {e}")
    return images


# ----------------------------------------------------------------------------- public loaders
def class_names_of(path) -> tuple[str, ...]:
    """Class names of an ImageFolder-layout folder: the sorted subfolder names of its ``train``
    split (of ``test`` when there is no ``train``)."""
    path = Path(path)
    split_dir = path / "train" if (path / "train").is_dir() else path / "test"
    return tuple(sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")))


def load_image_folder_split(path, split: str, image_size: int | None = None, cache_dir=None,
                            use_cache: bool = True) -> ImageDataset:
    """Split ``split`` of an ImageFolder-layout folder ``<path>/<split>/<label>/<image>``.

    Labels index :func:`class_names_of` (sorted folder names of ``train``); a class folder of
    ``test`` that ``train`` lacks is an error. ``image_size``: resize every image to
    ``image_size`` x ``image_size`` by the module's rule (needed when sizes differ).

    Raises:
      DatasetNotFoundError / DatasetFormatError: see :func:`check_dataset_path`; an empty split,
        a class folder without images, unreadable files (named), mixed sizes without
        ``image_size``.
    """
    root = check_dataset_path(path, "id")
    if split not in SPLITS:
        raise DatasetFormatError(f"dataset folder {path} has splits {', '.join(SPLITS)}; got split {split!r}")
    classes = class_names_of(root)
    split_dir = root / split
    if not classes:
        raise DatasetFormatError(f"{root / 'train'} has no class subfolders; expected <path>/train/<label>/<image>")
    present = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    extra = [c for c in present if c not in classes]
    if extra:
        raise DatasetFormatError(
            f"{split_dir} has class folders the train split lacks: {', '.join(extra)}; every test class must "
            f"also be a train class")
    files, labels = [], []
    for label, name in enumerate(classes):
        if not (split_dir / name).is_dir():
            continue
        found = _list_images(split_dir / name)
        if split == "train" and not found:
            raise DatasetFormatError(f"class folder {split_dir / name} holds no image files")
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetFormatError(f"{split_dir} holds no image files in its class folders (<label>/<image>)")
    images = _decode_cached(files, split_dir, None, split_dir, cache_dir, use_cache,
                            cache_name=f"{path_dataset_name(root)}-{split}", image_size=image_size)
    return ImageDataset(images=images, labels=np.asarray(labels, np.int32), num_classes=len(classes),
                        name=path_dataset_name(root), class_names=classes)


def load_path_dataset(path, split: str = "test", image_shape: Sequence[int] | None = None,
                      image_size: int | None = None, cache_dir=None, use_cache: bool = True) -> ImageDataset:
    """A dataset named by a path (see the module docstring), as an :class:`ImageDataset`.

    Args:
      path: a folder, an image list (``.txt``) or a packed ``.npz``.
      split: ``'train'`` needs an ImageFolder layout (or a ``.npz``); ``'test'`` reads the
        ``test`` split of an ImageFolder layout, else every image found.
      image_shape: (H, W, C) to convert to (OOD sets: the in-distribution shape).
      image_size: ImageFolder splits only: resize to a square size (see
        :func:`load_image_folder_split`).

    Unlabelled sets (plain folders, image lists) have labels -1 and ``num_classes`` 0.
    """
    root = check_dataset_path(path, "id" if split == "train" else "ood")
    if root.is_file() and root.suffix.lower() == PACKED_SUFFIX:
        ds = load_packed(root, name=path_dataset_name(root), cache_dir=cache_dir, use_cache=use_cache)
        return ds if image_shape is None else to_image_shape(ds, image_shape, keep_aspect=True)
    if root.is_dir() and has_split_layout(root):
        ds = load_image_folder_split(root, split, image_size=image_size, cache_dir=cache_dir, use_cache=use_cache)
        return ds if image_shape is None else to_image_shape(ds, image_shape, keep_aspect=True)
    if split != "test":
        raise DatasetFormatError(
            f"{path} is an unlabelled image set (usable as an OOD set, split 'test'); a training set needs "
            f"<path>/train/<label>/<image>")
    if root.is_file():
        files, where = _read_image_list(root), f"image list {root}"
        missing = [_relative(f, root.parent) for f in files if not f.is_file()]
        if missing:
            raise _unreadable_error(where, missing, len(files), missing=True)
        base = root.parent
    else:
        files, where, base = _list_images(root), root, root
        if not files:
            raise DatasetFormatError(
                f"folder {root} holds no image files (searched recursively for extensions Pillow reads, "
                f"e.g. .png, .jpg)")
    images = _decode_cached(files, base, image_shape, where, cache_dir, use_cache, image_size=image_size)
    return ImageDataset(images=images, labels=np.full(len(images), -1, np.int32), num_classes=0,
                        name=path_dataset_name(root))
