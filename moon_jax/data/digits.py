"""The offline default: scikit-learn's bundled 8x8 digits, and an 8x8 photo-patch OOD set.

``digits`` is scikit-learn's ``load_digits``: 1,797 8x8 handwritten digits with 17 grey levels
(0..16), the test part of the UCI "Optical Recognition of Handwritten Digits" set (optdigits;
Alpaydin & Kaynak 1998, UCI ML repository, CC BY 4.0). It ships inside the scikit-learn wheel,
so the whole train -> score -> metrics loop runs anywhere with nothing downloaded.

``digits_photos`` is its OOD companion: 8x8 grey patches of the two photos that scikit-learn
bundles (``load_sample_images``: china.jpg and flower.jpg, CC BY 2.0), requantised to the same
17 grey levels so that a detector cannot separate ID from OOD by the set of pixel values alone.
"""
from __future__ import annotations

import functools

import numpy as np

from moon_jax.data.dataset import ImageDataset

DIGITS_NUM_EXAMPLES = 1797
DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0
DIGITS_SPLITS = ("train", "test")
#: The 17 uint8 values that digits pixels (0..16) map to: round(v * 255 / 16).
DIGITS_LEVELS = np.round(np.arange(17) * 255.0 / 16.0).astype(np.uint8)


def _scale_levels(values: np.ndarray) -> np.ndarray:
    """Map grey levels 0..16 to uint8 by round(v * 255 / 16) (numpy rounds half to even)."""
    return np.round(np.asarray(values, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = _scale_levels(bunch.images)[..., None]  # (1797, 8, 8, 1)
    labels = bunch.target.astype(np.int32)
    index = np.arange(labels.shape[0])
    train_idx, test_idx = train_test_split(
        index, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=labels)
    for a in (images, labels, train_idx, test_idx):
        a.setflags(write=False)
    return images, labels, np.asarray(train_idx), np.asarray(test_idx)


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits()`` of a split of the fixed stratified split.

    The split is ``train_test_split(test_size=0.25, random_state=0, stratify=y)``: 1,347 train
    and 450 test images, the same on every machine and every call.
    """
    _, _, train_idx, test_idx = _digits_arrays()
    if split == "train":
        return train_idx.copy()
    if split == "test":
        return test_idx.copy()
    raise ValueError(f"digits has splits {DIGITS_SPLITS}, got split={split!r}")


def digits(split: str = "train") -> ImageDataset:
    """scikit-learn's 8x8 digits as uint8 (N, 8, 8, 1), 10 classes, fixed stratified split.

    Pixel values 0..16 become round(v * 255 / 16), so only the 17 values of
    :data:`DIGITS_LEVELS` occur. ``split`` is ``'train'`` (1,347 images) or ``'test'`` (450).
    """
    images, labels, _, _ = _digits_arrays()
    idx = digits_split_indices(split)
    return ImageDataset(images=images[idx], labels=labels[idx], num_classes=10, name="digits",
                        class_names=tuple(str(d) for d in range(10)))


def _sample_photos_grey() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images  # needs Pillow to read the JPEGs
    from PIL import Image

    photos = load_sample_images().images
    return [np.asarray(Image.fromarray(p).convert("L"), dtype=np.float64) for p in photos]


def digits_photos(num_examples: int = 450, seed: int = 0, window: int = 32) -> ImageDataset:
    """Far-OOD set for ``digits``: 8x8 grey patches of scikit-learn's two sample photos.

    Each example is a ``window`` x ``window`` crop at a position drawn with
    ``numpy.random.default_rng(seed)`` from one of the photos (chosen at random too), converted
    to grey (ITU-R 601-2 luminance), area-downsampled to 8x8 (mean of each
    ``window/8`` x ``window/8`` block), requantised to the digits' 17 levels
    (round(mean * 16 / 255)) and scaled to uint8 exactly like :func:`digits`. Deterministic for a
    given (num_examples, seed, window). Labels are -1 (unlabelled). The default of 450 matches
    the digits test split.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if window % 8 != 0 or window <= 0:
        raise ValueError(f"window must be a positive multiple of 8, got {window}")
    photos = _sample_photos_grey()
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(photos), size=num_examples)
    block = window // 8
    out = np.empty((num_examples, 8, 8, 1), dtype=np.uint8)
    for i, p in enumerate(which):
        photo = photos[p]
        top = rng.integers(0, photo.shape[0] - window + 1)
        left = rng.integers(0, photo.shape[1] - window + 1)
        crop = photo[top:top + window, left:left + window]
        small = crop.reshape(8, block, 8, block).mean(axis=(1, 3))
        levels = np.clip(np.round(small * 16.0 / 255.0), 0, 16)
        out[i, :, :, 0] = _scale_levels(levels)
    return ImageDataset(images=out, labels=np.full((num_examples,), -1, dtype=np.int32),
                        num_classes=0, name="digits_photos", class_names=())
