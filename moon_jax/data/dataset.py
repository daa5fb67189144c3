"""The in-memory image dataset type and geometry conversion between image shapes.

Every source in :mod:`moon_jax.data` returns an :class:`ImageDataset`: uint8 pixels in NHWC
layout plus int32 labels. Keeping pixels as uint8 on the host (4x smaller than float32) and
converting / normalising on the device (:mod:`moon_jax.data.augment`) is what lets CIFAR-size
sets sit in memory and stream to the accelerator cheaply.

OOD sets often have another geometry than the in-distribution (ID) model expects (MNIST is
28x28 grey, a CIFAR model takes 32x32 RGB); :func:`to_image_shape` converts them, the way
OpenOOD's test preprocessor does (resize + centre crop, grey replicated to three channels).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image


class DatasetNotFoundError(FileNotFoundError):
    """Raised when the files of a known dataset are not available locally.

    The message always names the dataset, the path(s) looked at, and how to provide the data.
    It subclasses :class:`FileNotFoundError` so generic ``except FileNotFoundError`` handlers
    keep working.
    """


class DatasetFormatError(ValueError):
    """Raised when a user's dataset exists but cannot be read as an image set: an empty folder,
    files Pillow cannot decode (named in the message), a wrong folder layout, mixed image sizes
    without a resize. The message names the path and what was expected."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image classification (or unlabelled OOD) set held in host memory.

    Attributes:
      images: uint8 array of shape (N, H, W, C), pixel values 0..255.
      labels: int32 array of shape (N,); -1 for every example of an unlabelled (OOD) set.
      num_classes: number of classes of the label space (0 for unlabelled generated sets).
      name: dataset name, e.g. ``'cifar10'`` or ``'gaussian_noise'``.
      class_names: names of the classes, ``len(class_names) == num_classes`` when known.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        images = self.images
        labels = self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"ImageDataset {self.name!r}: images must be a uint8 numpy array of shape "
                f"(N, H, W, C), got {type(images).__name__} "
                f"{getattr(images, 'dtype', None)} {getattr(images, 'shape', None)}")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int32 or labels.ndim != 1:
            raise ValueError(
                f"ImageDataset {self.name!r}: labels must be an int32 numpy array of shape (N,), "
                f"got {type(labels).__name__} {getattr(labels, 'dtype', None)} "
                f"{getattr(labels, 'shape', None)}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"ImageDataset {self.name!r}: {images.shape[0]} images but {labels.shape[0]} labels")
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "num_classes", int(self.num_classes))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, indices) -> "ImageDataset":
        """A new dataset with the examples at ``indices`` (any numpy index array or slice)."""
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def subset(self, num_examples: int | None, seed: int = 0) -> "ImageDataset":
        """``num_examples`` examples drawn uniformly without replacement (all when None).

        For quick runs on files stored sorted by class (the packed CIFAR-10 is): the first N
        would hold only the first classes. The draw is fixed by ``seed``; the kept examples stay
        in file order.
        """
        if num_examples is None or num_examples >= len(self):
            return self
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        keep = np.sort(np.random.default_rng(seed).permutation(len(self))[: int(num_examples)])
        return self.take(keep)


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) <= 0 or shape[2] not in (1, 3):
        raise ValueError(f"image_shape must be (H, W, C) with C in (1, 3), got {tuple(image_shape)}")
    return shape


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.ndim == 3 and image.shape[2] == 1:
        return Image.fromarray(image[:, :, 0], mode="L")
    if image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(image, mode="RGB")
    if image.ndim == 2:
        return Image.fromarray(image, mode="L")
    raise ValueError(f"expected an (H, W, 1) or (H, W, 3) uint8 image, got shape {image.shape}")


def convert_image(image: np.ndarray, image_shape: Sequence[int], keep_aspect: bool = False,
                  crop_fraction: float = 1.0) -> np.ndarray:
    """Convert one uint8 (h, w, c) image to ``image_shape`` = (H, W, C) with Pillow.

    Channels: grey -> RGB replicates the channel; RGB -> grey uses Pillow's ITU-R 601-2
    luminance (L = 0.299 R + 0.587 G + 0.114 B).
    Size: with ``keep_aspect=False`` the image is resized straight to (H, W); with
    ``keep_aspect=True`` its shorter side is resized to ``ceil(side / crop_fraction)`` of the
    target and the centre (H, W) window is cropped (torchvision ``Resize`` + ``CenterCrop``;
    ``crop_fraction=0.875`` gives the ImageNet "resize 256, crop 224" evaluation).
    Downscaling uses box (area) filtering, upscaling bilinear interpolation.
    """
    h_out, w_out, c_out = _check_shape(image_shape)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8:
        raise ValueError(f"convert_image expects uint8 pixels, got {image.dtype}")
    pil = _to_pil(image)
    h, w = image.shape[:2]
    if keep_aspect:
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        # Resize so the target window (enlarged by 1/crop_fraction) just fits, then crop.
        scale = max(h_out / h, w_out / w) / crop_fraction
        new_h = max(h_out, int(round(h * scale)))
        new_w = max(w_out, int(round(w * scale)))
    else:
        new_h, new_w = h_out, w_out
    if (new_h, new_w) != (h, w):
        resample = Image.BOX if (new_h <= h and new_w <= w) else Image.BILINEAR
        pil = pil.resize((new_w, new_h), resample=resample)
    if (new_h, new_w) != (h_out, w_out):
        top = (new_h - h_out) // 2
        left = (new_w - w_out) // 2
        pil = pil.crop((left, top, left + w_out, top + h_out))
    target_mode = "L" if c_out == 1 else "RGB"
    if pil.mode != target_mode:
        pil = pil.convert(target_mode)
    out = np.asarray(pil, dtype=np.uint8)
    if out.ndim == 2:
        out = out[:, :, None]
    return out


def random_resized_crop(image: np.ndarray, image_shape: Sequence[int], rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)) -> np.ndarray:
    """Inception-style crop (Szegedy et al. 2015; torchvision ``RandomResizedCrop``), host-side.

    A window covering a uniform ``scale`` share of the image area, with a log-uniform aspect
    ``ratio``, is cut at a uniform position and resized to ``image_shape`` (bilinear); after 10
    failed draws the whole image is centre-cropped instead. ``rng`` makes it reproducible.
    """
    h_out, w_out, c_out = _check_shape(image_shape)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    h, w = image.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw = int(round(np.sqrt(target * aspect)))
        ch = int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            break
    else:
        return convert_image(image, image_shape, keep_aspect=True)
    pil = _to_pil(image[top:top + ch, left:left + cw])
    pil = pil.resize((w_out, h_out), resample=Image.BILINEAR)
    target_mode = "L" if c_out == 1 else "RGB"
    if pil.mode != target_mode:
        pil = pil.convert(target_mode)
    out = np.asarray(pil, dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out


def to_image_shape(dataset: ImageDataset, image_shape: Sequence[int],
                   keep_aspect: bool = False) -> ImageDataset:
    """Convert every image of ``dataset`` to ``image_shape`` = (H, W, C).

    Why: OOD evaluation feeds foreign sets through a model trained on the ID geometry, e.g.
    MNIST (28x28x1) into a CIFAR ResNet (32x32x3). Grey is replicated to RGB, RGB reduced to
    luminance, and the spatial size changed with Pillow (see :func:`convert_image`). Returns
    ``dataset`` itself when the shape already matches.
    """
    shape = _check_shape(image_shape)
    if dataset.image_shape == shape:
        return dataset
    h, w, c = shape
    src_h, src_w, src_c = dataset.image_shape
    images = dataset.images
    if (src_h, src_w) == (h, w) and not keep_aspect:
        # Channel change only: do it in numpy (same result as Pillow's convert, much faster).
        if src_c == 1 and c == 3:
            out = np.repeat(images, 3, axis=3)
        else:  # RGB -> L with Pillow's integer formula: (R*299 + G*587 + B*114 + 500) // 1000
            rgb = images.astype(np.uint32)
            lum = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
            out = lum.astype(np.uint8)[..., None]
    else:
        out = np.empty((len(dataset), h, w, c), dtype=np.uint8)
        for i in range(len(dataset)):
            out[i] = convert_image(images[i], shape, keep_aspect=keep_aspect)
    return dataclasses.replace(dataset, images=out)
