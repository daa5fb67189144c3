"""On-device augmentation and normalisation (pure, jittable JAX).

The reference (OpenOOD's CIFAR preprocessor) trains with torchvision
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` and normalises with per-dataset mean
and std. Here both run on the accelerator on a whole uint8 batch, with randomness only from an
explicit ``jax.random`` key, so a run is reproducible from its seed and the host only ships
uint8 pixels.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

#: Per-dataset channel mean and std of pixel/255 on the training split.
#: cifar10 / cifar100: the values used by OpenOOD and most CIFAR code;
#: imagenet2012: the torchvision ImageNet constants;
#: digits: computed from moon_jax's digits train split (1,347 images, mean 0.30528,
#: std 0.37584 of the round(v*255/16)/255 pixels; ``tests/test_data.py`` re-computes them);
#: mnist: the usual (0.1307, 0.3081) of the MNIST train split.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.3053,), (0.3758,)),
    "mnist": ((0.1307,), (0.3081,)),
}


def normalization_for(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel for in-distribution dataset ``name``.

    Accepts ``'tfds:<name>'`` as well. OOD sets are always normalised with the constants of the
    ID dataset the model was trained on, so only ID names are listed. Raises ValueError for
    other names, listing the known ones.
    """
    key = name.split(":", 1)[1] if name.startswith("tfds:") else name
    if key not in NORMALIZATION:
        raise ValueError(f"no normalisation constants for {name!r}; known: {sorted(NORMALIZATION)}")
    return NORMALIZATION[key]


def random_crop_flip(rng: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Per-example random crop with zero padding, then random horizontal flip (p = 0.5).

    Equivalent to torchvision ``RandomCrop(H, padding=padding)`` + ``RandomHorizontalFlip()``
    applied independently to every image of the (N, H, W, C) batch: the batch is zero-padded by
    ``padding`` pixels on each spatial side, an (H, W) window at a uniformly random offset in
    ``[0, 2 * padding]`` on each axis is cut out of each padded image, and each window is
    mirrored left-right with probability 1/2. Works on uint8 or float batches (the dtype is
    kept). Pure; ``padding = 0`` gives the flip alone. Jit it with ``padding`` static (the
    training step does), it then compiles once per batch shape / dtype / padding.
    """
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    key_crop, key_flip = jax.random.split(rng)
    offsets = jax.random.randint(key_crop, (n, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(key_flip, 0.5, (n,))

    def one(image, offset, flip):
        window = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, window[:, ::-1, :], window)

    return jax.vmap(one)(padded, offsets, flips)


AUGMENTATIONS = ("crop_flip", "flip", "none")


def augment_batch(rng: jax.Array, images: jax.Array, kind: str) -> jax.Array:
    """The on-device training augmentation named ``kind``.

    ``crop_flip``: 4-pixel zero-pad, random crop and horizontal flip (CIFAR); ``flip``: the flip
    alone (e.g. after host-side random-resized crops for ImageNet); ``none``: unchanged.
    """
    if kind == "crop_flip":
        return random_crop_flip(rng, images, padding=4)
    if kind == "flip":
        return random_crop_flip(rng, images, padding=0)
    if kind == "none":
        return images
    raise ValueError(f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTATIONS)}")


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """float32 ``(images / 255 - mean) / std`` with per-channel (last axis) mean and std.

    ``images`` holds 0..255 pixel values (uint8, or a float batch after augmentation).
    Pure and jittable.
    """
    mean = jnp.asarray(mean, dtype=jnp.float32)
    std = jnp.asarray(std, dtype=jnp.float32)
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    return (x - mean) / std


def mixup_batch(rng: jax.Array, images: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", ICLR, eq. 1).

    One coefficient ``lam ~ Beta(alpha, alpha)`` per batch and a random permutation ``perm`` of
    the batch, as the reference's Mixup trainer (``prepare_mixup``): returns
    ``(lam * x + (1 - lam) * x[perm], perm, lam)``. The labels are mixed by the loss,
    ``lam * L(y) + (1 - lam) * L(y[perm])``. ``images`` are floats (normalised: the mix of
    normalised images is the normalised mix).
    """
    lam_rng, perm_rng = jax.random.split(rng)
    lam = jax.random.beta(lam_rng, alpha, alpha).astype(images.dtype)
    perm = jax.random.permutation(perm_rng, images.shape[0])
    return lam * images + (1.0 - lam) * images[perm], perm, lam
