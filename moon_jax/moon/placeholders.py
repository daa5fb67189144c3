"""Placeholders: synthesised examples labelled as the unknown class, so that MOON's K+1-th output
receives a positive target without any OOD data.

MOON's loss only ever reaches the unknown output through misclassified training examples, and a
network that fits its training set leaves it near zero on every input (``moon_jax.moon.loss``).
PROSER (Zhou, Ye, Zhan, "Learning Placeholders for Open-Set Recognition", CVPR 2021, section 3.2,
"data placeholders") gives the extra class targets by mixing pairs of training examples of
different classes and labelling each mixture as the extra class: a mixture of two classes lies
between them, where an input that belongs to neither class should be recognised as unknown.

What this module does, and why each setting was fixed in advance (nothing here was tuned on any
set a report shows):

* **Input mixup, not PROSER's hidden-layer mixup.** PROSER mixes the features of a middle block of
  its network (a hand-chosen split point per backbone). MOON is sold as a plug-in for any network
  and sparse method; mixing inputs needs no split of the model and works for every architecture
  here unchanged. The cost is that input mixtures are easier to tell from single images than
  feature mixtures are (they show two overlaid objects); the reports measure whether this is
  enough for the unknown output to fire on real OOD images.
* **Pairs:** the batch's first half is paired with its second half (example ``i`` with
  ``i + B/2``), as PROSER pairs two halves of a shuffled batch; batches are shuffled, so the
  pairs are random. A pair of the same class is no placeholder (its mixture is that class) and
  is left out of the loss, so about ``(1 - 1/K)`` of the ``B/2`` pairs count.
* **Coefficient:** one ``lam ~ Beta(a, a)`` per pair with ``a = 1`` (uniform on [0, 1]), PROSER's
  choice. A mixture with ``lam`` near 0 or 1 looks like one class and is labelled unknown all the
  same: the loss then trades the unknown output against that class near the data, which is the
  boundary PROSER's placeholders are meant to draw.
* **Loss:** the placeholders' mean cross-entropy towards the unknown output, with weight 1 beside
  the batch's own loss (a placeholder counts as much as a real example), only in the
  unknown-aware phase (after MOON's warm-up, when the unknown output is meant to learn).
* **BatchNorm:** the placeholders run through the network in a forward pass of their own whose
  batch statistics are discarded, so the real examples' normalisation and the running statistics
  used at test time are those of real images only.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from moon_jax.moon.loss import cross_entropy


@dataclasses.dataclass(frozen=True)
class PlaceholderConfig:
    """Settings of the placeholders (``config.moon.placeholder_*``).

    Attributes:
      mix_alpha: the Beta(a, a) parameter of each pair's coefficient (PROSER: 1).
      weight: weight of the placeholders' mean cross-entropy in the loss.
      warmup_epochs: no placeholder loss in the first ``warmup_epochs`` epochs (MOON's warm-up).
    """

    mix_alpha: float = 1.0
    weight: float = 1.0
    warmup_epochs: int = 5

    def __post_init__(self):
        if self.mix_alpha <= 0:
            raise ValueError(f"mix_alpha must be positive, got {self.mix_alpha}")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


def make_placeholders(rng: jax.Array, images: jax.Array, labels: jax.Array, mix_alpha: float):
    """``(mixtures, counts)``: one mixture per pair (example ``i`` of the first half with ``i`` of
    the second), ``lam * x_a + (1 - lam) * x_b`` with ``lam ~ Beta(mix_alpha, mix_alpha)`` per
    pair, and whether each pair's classes differ (only those are placeholders).

    ``images`` are floats (after normalisation: the mixture of normalised images is the
    normalised mixture); an odd batch leaves its last example out.
    """
    half = images.shape[0] // 2
    first, second = images[:half], images[half: 2 * half]
    lam = jax.random.beta(rng, mix_alpha, mix_alpha, (half,)).astype(images.dtype)
    lam = lam.reshape((half,) + (1,) * (images.ndim - 1))
    mixtures = lam * first + (1.0 - lam) * second
    return mixtures, labels[:half] != labels[half: 2 * half]


def counted_mean(values: jax.Array, counts: jax.Array) -> jax.Array:
    """Mean of ``values`` over the placeholders that count (0 if none does)."""
    weights = counts.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def placeholder_loss(logits: jax.Array, counts: jax.Array, unknown_class: int) -> jax.Array:
    """Mean cross-entropy of the counted placeholders towards output ``unknown_class`` (0 if no
    pair counts)."""
    targets = jnp.full(logits.shape[:1], unknown_class, jnp.int32)
    return counted_mean(cross_entropy(logits, targets), counts)


def placeholders_active(config: PlaceholderConfig, epoch) -> jax.Array:
    """1.0 in the unknown-aware phase (0-based ``epoch >= warmup_epochs``), else 0.0."""
    return (jnp.asarray(epoch) >= config.warmup_epochs).astype(jnp.float32)
