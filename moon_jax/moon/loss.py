"""MOON's unknown-aware loss with automatic tuning of its coefficient alpha.

The network has K+1 outputs; the last one is "unknown" and never receives a target. For a batch
with logits z (N, K+1) and labels y in {0..K-1} (notation of the reference code's
extra-class loss, github StevenBoys/MOON, a modified Deep Abstaining Classifier loss, Thulasidasan et
al. 2019):

* ``h_i = -log softmax(z_i)[y_i]``: cross-entropy over all K+1 outputs;
* ``q_i = min(p_unknown_i, 1 - 1e-7)``: the unknown probability, clipped;
* ``c_i = 1`` when ``argmax(z_i)`` over all K+1 outputs equals ``y_i`` (an "unknown" prediction
  counts as wrong), else 0.

Warm-up (1-based epochs ``e <= warmup_epochs``, reference 5): ``L = mean_i h_i``.
Unknown-aware phase: ``L = mean_i h_i * w_i`` with
``w_i = c_i + (1 - c_i) * (1 + alpha / (1 + alpha * q_i))``. The weight is *not* detached (the
gradient flows through ``q_i``), as in the reference; alpha itself is a constant.

Auto-tuning (the DAC scheme): at every training step, in both phases,
``tau = mean_i (1 - q_i) * h_i`` (detached; ``q`` unclipped during warm-up, as the reference) and
an EWMA ``m <- mu * tau + (1 - mu) * m`` (mu = 0.05, ``m`` starts at the first tau). At the first
step of epoch ``e0 = warmup_epochs + 1``: ``alpha = m / alpha_init_factor`` (reference ``w_out2``
= 64) and ``delta = (alpha_final - alpha) / (E - e0)`` (``alpha_final`` = reference ``w_out`` =
1.0, E total epochs). At the first step of each later epoch: ``alpha <- alpha + delta``, so
``alpha_e = alpha_e0 + (e - e0) * delta`` reaches ``alpha_final`` at the last epoch.

When the unknown output rises: for a misclassified example the gradient of ``h_i * w_i`` with
respect to the unknown logit is ``q [1 + alpha / (1 + alpha q) - h alpha^2 (1 - q) / (1 + alpha q)^2]``
(``h``'s softmax denominator pushes the unknown logit down; the weight, which falls as ``q``
grows, pushes it up). For small ``q`` gradient descent raises the unknown logit only when
``h > (1 + alpha) / alpha^2``: ``h > 2`` (``p_y < 0.14``) at ``alpha = 1``, ``h > 6`` at 0.5, ``h > 110``
at 0.1. Correct examples (``w = 1``) always push it down. With the reference's ramp (alpha about
EWMA / 64, i.e. 0.01-0.03, after warm-up, reaching 1.0 only at the last epoch) the unknown output
therefore learns only from training examples that are still badly misclassified late in training;
on a network that fits its training set by then it stays near zero on every input, and MOON's
loss acts as an up-weighting of misclassified examples by about ``1 + alpha``.

Ablations (the paper's Figure 5), as :class:`MoonLossConfig` fields:

* ``weighting = 'none'``: no loss modification, ``w_i = 1`` for every example (the K+1 head
  trained with plain cross-entropy; the unknown output only ever gets pushed down);
* ``alpha_tuning = 'fixed'``: alpha is ``fixed_alpha`` at every step of the unknown-aware phase
  instead of the EWMA-initialised linear ramp;
* ``alpha_tuning = 'untuned_ramp'``: the same linear ramp, started from ``1 / alpha_init_factor``
  instead of ``EWMA / alpha_init_factor`` (the reference code's other extra-class loss variant,
  which replaces the EWMA by 1.0).

Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", ICLR): the batch loss of
mixed inputs is ``lam * L(y_a) + (1 - lam) * L(y_b)`` (:func:`mix_label_losses`), the standard
form, which for cross-entropy equals the soft-label cross-entropy of the reference's Mixup trainer
(in the MOON reference code; that trainer has no unknown-aware loss). For MOON each of
the two terms is the unknown-aware loss with its own labels (so "correct" is judged against each
label), and the tuning state is mixed the same way.

Everything the tuning needs is a :class:`MoonState` pytree carried through the jitted step and
saved with checkpoints. Epochs are passed 0-based (as the training loop counts them) and
converted to the reference's 1-based numbering inside.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

UNKNOWN_PROB_CLIP = 1e-7
WEIGHTINGS = ("unknown_aware", "none")
ALPHA_TUNINGS = ("auto", "fixed", "untuned_ramp")


@dataclasses.dataclass(frozen=True)
class MoonLossConfig:
    """Hyper-parameters of the unknown-aware loss (reference README values by default).

    Attributes:
      total_epochs: E, the length of the run in epochs (alpha reaches ``alpha_final`` there).
      warmup_epochs: plain cross-entropy epochs before the unknown-aware loss (reference: 5).
      ewma_mu: EWMA coefficient of the tuning statistic (reference: 0.05).
      alpha_init_factor: alpha at epoch ``warmup + 1`` is EWMA / this (reference ``w_out2``: 64).
      alpha_final: alpha at the last epoch (reference ``w_out``: 1.0).
      weighting: ``'unknown_aware'`` (MOON) or ``'none'`` (ablation: weight 1 for every example).
      alpha_tuning: ``'auto'`` (MOON's EWMA-initialised ramp), ``'fixed'`` or
        ``'untuned_ramp'`` (ablations).
      fixed_alpha: alpha over the whole unknown-aware phase with ``alpha_tuning = 'fixed'``.
        Default 1.0, the reference README's ``w_out``: the value the tuned ramp ends at, and the
        coefficient of the fixed-weight loss left commented out in the reference's
        base trainer (``1 + w_out / (1 + w_out2 * p_unknown)``).
    """

    total_epochs: int
    warmup_epochs: int = 5
    ewma_mu: float = 0.05
    alpha_init_factor: float = 64.0
    alpha_final: float = 1.0
    weighting: str = "unknown_aware"
    alpha_tuning: str = "auto"
    fixed_alpha: float = 1.0

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.alpha_tuning not in ALPHA_TUNINGS:
            raise ValueError(f"alpha_tuning must be one of {', '.join(ALPHA_TUNINGS)}, got {self.alpha_tuning!r}")
        if self.fixed_alpha < 0:
            raise ValueError(f"fixed_alpha must be >= 0, got {self.fixed_alpha}")
        if self.total_epochs <= self.warmup_epochs + 1:
            raise ValueError(
                f"MOON needs total_epochs > warmup_epochs + 1 so that alpha can ramp; got "
                f"total_epochs={self.total_epochs}, warmup_epochs={self.warmup_epochs}"
            )
        if not 0.0 < self.ewma_mu <= 1.0:
            raise ValueError(f"ewma_mu must be in (0, 1], got {self.ewma_mu}")
        if self.alpha_init_factor <= 0:
            raise ValueError(f"alpha_init_factor must be positive, got {self.alpha_init_factor}")


class MoonState(NamedTuple):
    """The auto-tuning state of the loss.

    Attributes:
      alpha: current loss coefficient (0 until it is set after warm-up).
      alpha_increment: per-epoch increase of alpha (delta).
      alpha_epoch: 1-based epoch at which alpha was last set; -1 before it is first set.
      ewma: EWMA of ``tau = mean((1 - q) * h)``.
      ewma_steps: number of EWMA updates so far (0: the next tau initialises it).
    """

    alpha: jax.Array
    alpha_increment: jax.Array
    alpha_epoch: jax.Array
    ewma: jax.Array
    ewma_steps: jax.Array


def init_moon_state() -> MoonState:
    """The state before the first training step."""
    return MoonState(
        alpha=jnp.zeros((), jnp.float32),
        alpha_increment=jnp.zeros((), jnp.float32),
        alpha_epoch=jnp.full((), -1, jnp.int32),
        ewma=jnp.zeros((), jnp.float32),
        ewma_steps=jnp.zeros((), jnp.int32),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy ``-log softmax(logits)[label]`` in float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def moon_loss(
    logits: jax.Array,
    labels: jax.Array,
    state: MoonState,
    epoch,
    config: MoonLossConfig,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, tuple[MoonState, dict]]:
    """MOON's training loss for a batch and the updated tuning state.

    Args:
      logits: (N, K+1) logits; the last column is the unknown output.
      labels: (N,) int labels in ``0..K-1``.
      state: the :class:`MoonState` before this step.
      epoch: 0-based epoch of this step (traced int is fine).
      config: loss hyper-parameters.
      weights: optional (N,) 0/1 example weights (padding); the batch means become weighted
        means. ``None`` means every example counts.

    Returns:
      ``(loss, (new_state, aux))`` with ``aux`` scalar diagnostics (``ce``, ``tau``, ``alpha``,
      ``p_unknown``, ``weight_mean``). Suitable for ``jax.value_and_grad(..., has_aux=True)``.
    """
    logits = logits.astype(jnp.float32)
    if weights is None:
        weights = jnp.ones(logits.shape[:1], jnp.float32)
    weights = weights.astype(jnp.float32)
    total_weight = jnp.maximum(jnp.sum(weights), 1.0)

    def batch_mean(x):
        return jnp.sum(x * weights) / total_weight

    log_probs = jax.nn.log_softmax(logits, axis=-1)
    h = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    p_unknown = jnp.exp(log_probs[:, -1])

    epoch_1 = jnp.asarray(epoch, jnp.int32) + 1
    in_warmup = epoch_1 <= config.warmup_epochs
    q = jnp.where(in_warmup, p_unknown, jnp.minimum(p_unknown, 1.0 - UNKNOWN_PROB_CLIP))

    tau = jax.lax.stop_gradient(batch_mean((1.0 - q) * h))
    ewma = jnp.where(
        state.ewma_steps == 0, tau, config.ewma_mu * tau + (1.0 - config.ewma_mu) * state.ewma
    )

    first_set = jnp.logical_and(~in_warmup, state.alpha_epoch < 0)
    ramp = jnp.logical_and(~in_warmup, jnp.logical_and(state.alpha_epoch >= 0, epoch_1 > state.alpha_epoch))
    alpha_first = (1.0 if config.alpha_tuning == "untuned_ramp" else ewma) / config.alpha_init_factor
    increment_first = (config.alpha_final - alpha_first) / (config.total_epochs - epoch_1).astype(jnp.float32)
    alpha = jnp.where(first_set, alpha_first, jnp.where(ramp, state.alpha + state.alpha_increment, state.alpha))
    increment = jnp.where(first_set, increment_first, state.alpha_increment)
    alpha_epoch = jnp.where(jnp.logical_or(first_set, ramp), epoch_1, state.alpha_epoch)
    if config.alpha_tuning == "fixed":
        alpha = jnp.where(in_warmup, 0.0, jnp.float32(config.fixed_alpha))
    alpha = jax.lax.stop_gradient(alpha)

    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if config.weighting == "none":
        sample_weight = jnp.ones_like(h)
    else:
        sample_weight = correct + (1.0 - correct) * (1.0 + alpha / (1.0 + alpha * q))
    loss = jnp.where(in_warmup, batch_mean(h), batch_mean(h * sample_weight))

    new_state = MoonState(
        alpha=alpha.astype(jnp.float32),
        alpha_increment=increment.astype(jnp.float32),
        alpha_epoch=alpha_epoch.astype(jnp.int32),
        ewma=ewma.astype(jnp.float32),
        ewma_steps=state.ewma_steps + 1,
    )
    aux = {
        "ce": batch_mean(h),
        "tau": tau,
        "alpha": alpha,
        "p_unknown": batch_mean(p_unknown),
        "weight_mean": jnp.where(in_warmup, 1.0, batch_mean(sample_weight)),
    }
    return loss, (new_state, aux)


def mix_label_losses(loss_fn, labels: jax.Array, partner_labels: jax.Array, lam):
    """Mixup's loss ``lam * L(labels) + (1 - lam) * L(partner_labels)`` for a loss with state.

    ``loss_fn(labels) -> (loss, (state, aux))`` (e.g. :func:`moon_loss` with everything but the
    labels bound). Floating-point leaves of the two states and of ``aux`` are mixed with the same
    weights (MOON's EWMA and first alpha are linear in the batch statistic, so the mixed state is
    the state of the mixed statistic); integer leaves (epoch counters) agree and are taken from
    the first.
    """
    loss_a, (state_a, aux_a) = loss_fn(labels)
    loss_b, (state_b, aux_b) = loss_fn(partner_labels)

    def mix(a, b):
        a, b = jnp.asarray(a), jnp.asarray(b)
        return lam * a + (1.0 - lam) * b if jnp.issubdtype(a.dtype, jnp.floating) else a

    return mix(loss_a, loss_b), (jax.tree.map(mix, state_a, state_b), jax.tree.map(mix, aux_a, aux_b))


def alpha_closed_form(alpha_first: float, epoch_1: int, config: MoonLossConfig) -> float:
    """alpha in 1-based epoch ``epoch_1`` given its value at ``e0 = warmup + 1`` (0 before)."""
    e0 = config.warmup_epochs + 1
    if epoch_1 < e0:
        return 0.0
    delta = (config.alpha_final - alpha_first) / (config.total_epochs - e0)
    return alpha_first + (epoch_1 - e0) * delta
