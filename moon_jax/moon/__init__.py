"""The MOON method: K+1 head, unknown-aware loss with auto-tuned alpha, epoch-wise weight
averaging ("voting"), OOD scores, and CigL's optional random mask.

Differences from the reference code (github StevenBoys/MOON, commit 22c1841), each on purpose:

* head: K+1 outputs by default (the reference's CIFAR-10 config builds 10; its ``--classes 11``
  flag is not wired to the network); ``head = 'reference_k'`` builds the reference's K;
* averaging: one snapshot per epoch over the last ``deduct + 1`` epoch ends (the paper's
  "epoch-wise"); the reference's trigger (first 10% of iterations of each epoch) is an option;
  BatchNorm statistics of the average are recomputed from per-batch (biased) variances, where
  PyTorch's running variance uses the unbiased batch variance;
* CigL's 1% random mask: off by default (always on in the reference, not part of MOON as
  published); when on, it follows the reference's order of operations (dropconnect.py);
* accuracy and ECE: argmax over the first K and 15 bins (lo, hi] by default; the reference's
  variant (argmax over K+1, 10 bins [lo, hi)) is reported beside them;
* placeholders (off by default, not in the reference): mixtures of two classes labelled unknown,
  after PROSER, so that the unknown output gets a target (placeholders.py);
* mask-update schedule (sparse engine): the cosine drop fraction decays over the mask-update
  period, not over 70 iterations as the reference's units bug makes it.
"""
from moon_jax.moon.averaging import (
    TRIGGERS,
    AveragingState,
    BatchStatsAccumulator,
    accumulate_batch_stats,
    add_snapshot,
    snapshot_into,
    averaged_params,
    averaging_start_epoch,
    find_averaging_state,
    init_batch_stats_accumulator,
    is_snapshot_step,
    weight_averaging,
)
from moon_jax.moon.dropconnect import DropConnectState, dropconnect_keep_masks, random_dropconnect, restore_dropped
from moon_jax.moon.loss import (
    ALPHA_TUNINGS,
    WEIGHTINGS,
    MoonLossConfig,
    MoonState,
    alpha_closed_form,
    cross_entropy,
    init_moon_state,
    mix_label_losses,
    moon_loss,
)
from moon_jax.moon.placeholders import (PlaceholderConfig, counted_mean, make_placeholders, placeholder_loss,
                                        placeholders_active)
from moon_jax.moon.recipe import HEADS, cosine_then_constant, num_outputs
from moon_jax.moon import scores

__all__ = [
    "ALPHA_TUNINGS",
    "HEADS",
    "TRIGGERS",
    "WEIGHTINGS",
    "AveragingState",
    "BatchStatsAccumulator",
    "DropConnectState",
    "MoonLossConfig",
    "MoonState",
    "PlaceholderConfig",
    "accumulate_batch_stats",
    "add_snapshot",
    "alpha_closed_form",
    "averaged_params",
    "averaging_start_epoch",
    "cosine_then_constant",
    "counted_mean",
    "cross_entropy",
    "dropconnect_keep_masks",
    "find_averaging_state",
    "init_batch_stats_accumulator",
    "init_moon_state",
    "is_snapshot_step",
    "make_placeholders",
    "mix_label_losses",
    "moon_loss",
    "num_outputs",
    "placeholder_loss",
    "placeholders_active",
    "random_dropconnect",
    "restore_dropped",
    "scores",
    "snapshot_into",
    "weight_averaging",
]
