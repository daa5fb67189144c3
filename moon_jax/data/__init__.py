"""Datasets, on-device augmentation and deterministic batching for moon-jax.

Sources (all return :class:`ImageDataset`, uint8 NHWC images + int32 labels):

* :func:`digits` / :func:`digits_photos`: scikit-learn's bundled 8x8 digits and 8x8 photo
  patches; the offline default, nothing to download.
* :func:`gaussian_noise` / :func:`uniform_noise`: synthetic OOD sets (Hendrycks & Gimpel 2017).
* :func:`load_packed`: packed-image ``.npz`` files (CIFAR-10, TinyImageNet-resize, MNIST, a DTD
  subset) found via :func:`default_data_dir`, decoded once and cached.
* :func:`load_tfds` / :class:`TfdsArraySource`: TensorFlow Datasets via ``tfds.data_source``
  (no TensorFlow; ``tensorflow_datasets`` is imported only when used).
* :func:`load_path_dataset`: a user's own images, named by a path: a folder (ImageFolder layout
  ``<path>/<split>/<label>/<image>`` for a labelled set), an image list or a packed ``.npz``.
* :func:`load_dataset`: one entry point by name or path.

This package does not import ``tensorflow_datasets`` at import time.
"""
from moon_jax.data.augment import (AUGMENTATIONS, NORMALIZATION, augment_batch, mixup_batch, normalization_for, normalize,
                                   random_crop_flip)
from moon_jax.data.batching import (epoch_batch_indices, epoch_permutation, eval_batches,
                                    steps_per_epoch)
from moon_jax.data.dataset import (DatasetFormatError, DatasetNotFoundError, ImageDataset, convert_image, random_resized_crop,
                                   to_image_shape)
from moon_jax.data.digits import DIGITS_LEVELS, digits, digits_photos, digits_split_indices
from moon_jax.data.image_folder import (check_dataset_path, is_dataset_path, load_image_folder_split,
                                        load_path_dataset, path_dataset_name)
from moon_jax.data.packed import (PACKED_FILES, decode_images, default_cache_dir, default_data_dir,
                                  load_packed, load_packed_dataset, packed_path)
from moon_jax.data.registry import available_datasets, load_dataset, names_a_path, resolve_dataset_path, source_kind
from moon_jax.data.synthetic import default_noise_count, gaussian_noise, uniform_noise
from moon_jax.data.tfds_source import TFDS_SPECS, TfdsArraySource, TfdsSpec, load_tfds

__all__ = [
    "AUGMENTATIONS",
    "augment_batch",
    "mixup_batch",
    "random_resized_crop",
    "DIGITS_LEVELS",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageDataset",
    "NORMALIZATION",
    "PACKED_FILES",
    "TFDS_SPECS",
    "TfdsArraySource",
    "TfdsSpec",
    "available_datasets",
    "convert_image",
    "decode_images",
    "default_cache_dir",
    "default_data_dir",
    "default_noise_count",
    "digits",
    "digits_photos",
    "digits_split_indices",
    "epoch_batch_indices",
    "epoch_permutation",
    "eval_batches",
    "gaussian_noise",
    "check_dataset_path",
    "is_dataset_path",
    "load_dataset",
    "load_image_folder_split",
    "load_path_dataset",
    "path_dataset_name",
    "load_packed",
    "load_packed_dataset",
    "load_tfds",
    "normalization_for",
    "normalize",
    "packed_path",
    "random_crop_flip",
    "source_kind",
    "names_a_path",
    "resolve_dataset_path",
    "steps_per_epoch",
    "to_image_shape",
    "uniform_noise",
]
