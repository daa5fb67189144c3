"""TensorFlow Datasets (TFDS) as a source, read without TensorFlow.

``tfds.data_source`` (tensorflow-datasets >= 4.9) gives random-access sequences over datasets
prepared in the ArrayRecord format and decodes images to NumPy; it needs the ``array_record``
package but not TensorFlow (``tfds.load`` does need TensorFlow). This is the path for users who
have TFDS data (e.g. on Colab): prepare once where TensorFlow and the internet are available::

    tfds build cifar10 --file_format=array_record --data_dir=/path/to/tfds

then copy ``<data_dir>/<name>/<version>/`` to the training machine and pass ``data_dir`` (or set
``TFDS_DATA_DIR``). Nothing is downloaded here (``download=False`` by default).

TFDS is an optional dependency: it is imported inside the functions only, so
``import moon_jax.data`` never imports ``tensorflow_datasets``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from moon_jax.data.dataset import (DatasetNotFoundError, ImageDataset, _check_shape, convert_image,
                                   random_resized_crop)


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """How a TFDS image dataset is turned into fixed-geometry uint8 arrays.

    Attributes:
      image_shape: default (H, W, C); None keeps the native (fixed) shape.
      crop_fraction: for resizing: the shorter side goes to ``side / crop_fraction`` and the
        centre window is cropped (1.0: resize shorter side to the target, centre crop).
      label_key: feature holding the class index (None: unlabelled, labels are -1).
    """

    image_shape: tuple[int, int, int] | None
    crop_fraction: float = 1.0
    label_key: str | None = "label"


#: Defaults for the TFDS names this project uses. dtd and places365_small serve as OOD sets for
#: 32x32 CIFAR models (OpenOOD's Texture / Places365), hence 32x32x3; imagenet2012 uses the
#: standard evaluation geometry (resize 256, centre crop 224).
TFDS_SPECS: dict[str, TfdsSpec] = {
    "cifar10": TfdsSpec((32, 32, 3)),
    "cifar100": TfdsSpec((32, 32, 3)),
    "svhn_cropped": TfdsSpec((32, 32, 3)),
    "dtd": TfdsSpec((32, 32, 3)),
    "places365_small": TfdsSpec((32, 32, 3)),
    "imagenet2012": TfdsSpec((224, 224, 3), crop_fraction=0.875),
}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TFDS datasets need the optional dependencies tensorflow-datasets and array_record: "
            "pip install 'moon-jax[tfds]' (TensorFlow itself is not needed).") from e
    return tfds


def _resolved_tfds_data_dir(data_dir) -> str:
    if data_dir is not None:
        return str(data_dir)
    env = os.environ.get("TFDS_DATA_DIR")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _not_prepared_message(tfds, name: str, split: str, data_dir, error: Exception) -> str:
    where = _resolved_tfds_data_dir(data_dir)
    cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
    cause = f"{type(error).__name__}: {cause[:300]}" if cause else type(error).__name__
    version_dir = f"{where}/{name}/<version>"
    detail = f" Underlying error: {cause}."
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        version_dir = str(builder.data_dir)
        if builder.is_prepared():
            fmt = getattr(builder.info, "file_format", None)
            detail = (f" It is prepared in {version_dir}, but tfds.data_source could not open "
                      f"split {split!r} (file format {fmt}; random access needs ArrayRecord: "
                      f"convert with `tfds convert_format --root_data_dir={where} "
                      f"--out_file_format=array_record` or rebuild with `tfds build {name} "
                      f"--file_format=array_record`; check the split name). Underlying error: "
                      f"{cause}.")
        else:
            detail = f" It is not prepared there: no dataset files in {version_dir}."
    except Exception:  # the message must not fail because TFDS cannot make the builder
        pass
    manual = (" imagenet2012 is a manual download: put ILSVRC2012_img_train.tar and "
              "ILSVRC2012_img_val.tar in <dir>/downloads/manual first;" if name == "imagenet2012"
              else "")
    return (
        f"TFDS dataset {name!r} (split {split!r}) is not available in TFDS data_dir {where!r} "
        f"(nothing is downloaded here: download=False).{detail} To prepare it: on a machine with "
        f"internet and TensorFlow run `tfds build {name} --file_format=array_record "
        f"--data_dir=<dir>`;{manual} then copy <dir>/{name}/<version>/ to "
        f"<data_dir>/{name}/<version>/ on this machine and pass that <data_dir> as data_dir "
        f"(config.data.data_dir) or set the TFDS_DATA_DIR environment variable.")


class TfdsArraySource:
    """Lazy random-access view of a TFDS split with a fixed image geometry.

    Images are read and decoded only for the indices asked for, so sets that do not fit in
    memory (imagenet2012) can be batched on demand. Variable-size images are resized (shorter
    side, then centre crop, Pillow) to ``image_shape``.

    Attributes:
      name, split: the TFDS name and split.
      image_shape: (H, W, C) of the images :meth:`get_batch` returns.
      num_classes, class_names: from the dataset's label feature (0 / () when unlabelled).
    """

    def __init__(self, name: str, split: str, data_dir=None, image_shape: Sequence[int] | None = None,
                 download: bool = False):
        """Open ``name``/``split`` with ``tfds.data_source`` (no TensorFlow needed).

        Args:
          name: TFDS name, e.g. ``'cifar10'`` or ``'imagenet2012'`` (any TFDS image dataset with
            an ``image`` feature works; the names of :data:`TFDS_SPECS` have defaults).
          split: TFDS split string, e.g. ``'train'``, ``'test'``, ``'validation'``.
          data_dir: TFDS data dir (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
          image_shape: output (H, W, C); default from :data:`TFDS_SPECS`, else the native shape.
          download: let TFDS download and prepare (needs internet and TensorFlow).

        Raises:
          DatasetNotFoundError: the dataset is not prepared under ``data_dir``.
          ValueError: TFDS does not know ``name``.
        """
        tfds = _import_tfds()
        self.name = name
        self.split = split
        self.data_dir = data_dir
        spec = TFDS_SPECS.get(name, TfdsSpec(None))
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(f"TFDS does not know a dataset named {name!r}: {e}".splitlines()[0]) from e
        except Exception as e:  # not prepared, wrong format, no network, unknown split
            raise DatasetNotFoundError(_not_prepared_message(tfds, name, split, data_dir, e)) from e
        self._source = source
        features = source.dataset_info.features
        if "image" not in features:
            raise ValueError(f"TFDS dataset {name!r} has no 'image' feature "
                             f"(features: {list(features.keys())})")
        label_key = spec.label_key if spec.label_key in features else None
        self._label_key = label_key
        if label_key is not None:
            label_feature = features[label_key]
            self.num_classes = int(getattr(label_feature, "num_classes", 0) or 0)
            self.class_names = tuple(str(n) for n in getattr(label_feature, "names", ()) or ())
        else:
            self.num_classes = 0
            self.class_names = ()
        native = tuple(features["image"].shape)
        if image_shape is None:
            image_shape = spec.image_shape
        if image_shape is None:
            if any(d is None for d in native):
                raise ValueError(
                    f"TFDS dataset {name!r} has variable-size images {native}; pass image_shape=(H, W, C)")
            image_shape = native
        self.image_shape = _check_shape(image_shape)
        self._crop_fraction = spec.crop_fraction
        self._batched_read = hasattr(source, "__getitems__")

    def __len__(self) -> int:
        return len(self._source)

    def _read(self, indices: list[int]) -> list:
        if self._batched_read:
            try:
                return list(self._source.__getitems__(indices))
            except TypeError:  # some wrappers (e.g. tfds.testing.mock_data) lack batched reads
                self._batched_read = False
        return [self._source[i] for i in indices]

    def _fix_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        if image.shape == self.image_shape:
            return image
        return convert_image(image, self.image_shape, keep_aspect=True,
                             crop_fraction=self._crop_fraction)

    def get_batch(self, indices, crop_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read, decode and resize the examples at ``indices``.

        With ``crop_seed`` each image gets a random resized crop (training augmentation), drawn
        from ``numpy.random.default_rng([crop_seed, index])`` so it is reproducible; without it
        the evaluation geometry (resize + centre crop).

        Returns:
          images: uint8 (len(indices), H, W, C); labels: int32 (len(indices),), -1 when the
          dataset has no labels.
        """
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        n = len(self)
        for i in idx:
            if not 0 <= i < n:
                raise IndexError(f"index {i} out of range for {self.name}/{self.split} of size {n}")
        images = np.empty((len(idx), *self.image_shape), dtype=np.uint8)
        labels = np.full((len(idx),), -1, dtype=np.int32)
        for j, example in enumerate(self._read(idx)):
            if crop_seed is None:
                images[j] = self._fix_image(example["image"])
            else:
                rng = np.random.default_rng([int(crop_seed), idx[j]])
                images[j] = random_resized_crop(np.asarray(example["image"]), self.image_shape, rng)
            if self._label_key is not None:
                labels[j] = int(example[self._label_key])
        return images, labels

    def to_dataset(self, num_examples: int | None = None, batch_size: int = 1024) -> ImageDataset:
        """Gather the first ``num_examples`` examples (all when None) into an ImageDataset."""
        n = len(self) if num_examples is None else min(int(num_examples), len(self))
        images = np.empty((n, *self.image_shape), dtype=np.uint8)
        labels = np.empty((n,), dtype=np.int32)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            images[start:stop], labels[start:stop] = self.get_batch(np.arange(start, stop))
        return ImageDataset(images=images, labels=labels, num_classes=self.num_classes,
                            name=self.name, class_names=self.class_names)


def load_tfds(name: str, split: str, data_dir=None, image_shape: Sequence[int] | None = None,
              num_examples: int | None = None, download: bool = False) -> ImageDataset:
    """Load a TFDS split into memory as an :class:`ImageDataset` without TensorFlow.

    Supported with defaults: ``cifar10``, ``cifar100``, ``svhn_cropped`` (32x32x3),
    ``dtd``, ``places365_small`` (resized to 32x32x3 for use as OOD sets of CIFAR models) and
    ``imagenet2012`` (224x224x3, resize 256 + centre crop; prefer :class:`TfdsArraySource` for
    it, the full set does not fit in memory). ``image_shape`` overrides the default geometry;
    ``num_examples`` keeps only the first examples.

    Raises:
      DatasetNotFoundError: not prepared under ``data_dir`` (message says how to prepare it).
      ValueError: unknown TFDS name.
    """
    source = TfdsArraySource(name, split, data_dir=data_dir, image_shape=image_shape,
                             download=download)
    return source.to_dataset(num_examples=num_examples)
