"""Synthetic noise OOD sets for any image geometry.

These are the standard synthetic OOD sets of Hendrycks & Gimpel, "A Baseline for Detecting
Misclassified and Out-of-Distribution Examples in Neural Networks" (ICLR 2017), section 3:
"Gaussian" noise is i.i.d. per pixel from N(0.5, 1) clipped to [0, 1], "Uniform" noise is
i.i.d. U[0, 1]. They are named as what they are (``gaussian_noise``, ``uniform_noise``) and
never stand in for a real dataset. Values are converted to uint8 by round(x * 255) so they
go through the same normalisation as real images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from moon_jax.data.dataset import ImageDataset, _check_shape

NOISE_NAMES = ("gaussian_noise", "uniform_noise")


def default_noise_count(image_shape: Sequence[int]) -> int:
    """Default number of noise images: 450 for the 8x8 digits geometry, else 1000."""
    shape = tuple(int(d) for d in image_shape)
    return 450 if shape[:2] == (8, 8) else 1000


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _noise_dataset(name: str, x: np.ndarray) -> ImageDataset:
    return ImageDataset(images=_to_uint8(x), labels=np.full((x.shape[0],), -1, dtype=np.int32),
                        num_classes=0, name=name, class_names=())


def gaussian_noise(num_examples: int, image_shape: Sequence[int] = (32, 32, 3),
                   seed: int = 0) -> ImageDataset:
    """Gaussian-noise OOD images: each pixel i.i.d. N(0.5, 1) clipped to [0, 1] (Hendrycks &
    Gimpel 2017), as uint8 round(x * 255), shape (num_examples, *image_shape), labels -1.

    With unit variance about 31% of the pixels clip to 0 and 31% to 255. Deterministic for a
    given seed (``numpy.random.default_rng(seed)``).
    """
    shape = _check_shape(image_shape)
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=0.5, scale=1.0, size=(num_examples, *shape))
    return _noise_dataset("gaussian_noise", x)


def uniform_noise(num_examples: int, image_shape: Sequence[int] = (32, 32, 3),
                  seed: int = 0) -> ImageDataset:
    """Uniform-noise OOD images: each pixel i.i.d. U[0, 1] (Hendrycks & Gimpel 2017), as uint8
    round(x * 255), shape (num_examples, *image_shape), labels -1. Deterministic for a seed."""
    shape = _check_shape(image_shape)
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(num_examples, *shape))
    return _noise_dataset("uniform_noise", x)
