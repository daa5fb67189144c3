"""What a config builds, one small function per config group (as flax's ImageNet example has
``create_model``, ``create_learning_rate_fn``, ``create_train_state``), and the fresh state.

:func:`create_training_setup` puts the pieces together into a :class:`TrainingSetup`, the static
half of a run; :class:`~moon_jax.training.state.TrainState` is the changing half, and the step
functions (:mod:`moon_jax.training.steps`) map one to the next.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from moon_jax import moon, sparse
from moon_jax.data import steps_per_epoch as count_steps_per_epoch
from moon_jax.data.augment import augment_batch, normalize
from moon_jax.models import create_model as build_registered_model
from moon_jax.sparse.leaves import SparsityRule
from moon_jax.training.config import ConfigError
from moon_jax.training.state import TrainState


# ----------------------------------------------------------------------------- small pieces
@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """uint8 images -> the network's input: on-device augmentation (training only), then
    per-channel normalisation ``(x / 255 - mean) / std``."""

    augment: str
    mean: tuple
    std: tuple

    def __call__(self, images: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
        """Augments when ``rng`` is given (and augmentation is on), then normalises."""
        if rng is not None:
            images = augment_batch(rng, images, self.augment)
        return normalize(images, self.mean, self.std).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class EpochSchedule:
    """The run's epoch arithmetic and when MOON takes weight snapshots.

    Attributes:
      steps_per_epoch: iterations per epoch.
      epochs: epochs of the run.
      averaging_epochs: epochs of weight averaging at the end (0: none).
      averaging_trigger: ``epoch`` or ``reference`` (:func:`moon_jax.moon.is_snapshot_step`).
    """

    steps_per_epoch: int
    epochs: int
    averaging_epochs: int = 0
    averaging_trigger: str = "epoch"

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def is_snapshot_step(self, step: int) -> bool:
        """Host-side (Python ints, no device work): whether iteration ``step`` takes a snapshot."""
        return moon.is_snapshot_step(
            step, self.steps_per_epoch, self.epochs, self.averaging_epochs, self.averaging_trigger
        )


@dataclasses.dataclass(frozen=True)
class BatchSplit:
    """How one global batch is computed: ``num_shards`` equal shards, each with its own BatchNorm
    statistics and gradient (per-device BatchNorm, as in data-parallel training), spread over
    ``mesh`` (``None``: the default device), their results averaged. The result depends on
    ``num_shards``, not on the number of devices. ``exact_reduction`` averages the shards in a
    fixed order (all-gather, then one sum), so any device count gives bit-identical results, at
    ``devices x`` the gradient traffic of an all-reduce."""

    num_shards: int = 1
    mesh: Optional[Mesh] = None
    exact_reduction: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingSetup:
    """The static half of a run: everything built from the config, grouped by concern.

    Attributes:
      model: the Flax module (K or K+1 outputs).
      num_classes: K, the number of known classes.
      tx: the optimizer chain: ``sparse.masked_updates(inner)``, then weight averaging when on.
      learning_rate_fn: learning rate as a function of the global iteration.
      updater: the sparse engine (any :data:`moon_jax.sparse.METHODS` algorithm).
      moon_loss: the MOON loss hyper-parameters, or ``None`` for plain cross-entropy.
      mixup_alpha: Mixup's Beta parameter (0: off); each batch shard is mixed within itself.
      placeholders: the placeholders' settings, or ``None`` when off (``config.moon.placeholders``).
      preprocess: augmentation and normalisation.
      schedule: epochs, steps per epoch, weight-snapshot steps.
      split: how a batch is split over shards and devices.
    """

    model: nn.Module
    num_classes: int
    tx: optax.GradientTransformationExtraArgs
    learning_rate_fn: Callable[[Any], Any]
    updater: sparse.SparseUpdater
    moon_loss: Optional[moon.MoonLossConfig]
    mixup_alpha: float
    preprocess: Preprocessing
    schedule: EpochSchedule
    split: BatchSplit
    placeholders: Optional[moon.PlaceholderConfig] = None

    @property
    def uses_averaging(self) -> bool:
        return self.schedule.averaging_epochs > 0

    def is_mask_update_step(self, step: int) -> bool:
        """Host-side: whether iteration ``step`` runs the mask-update step."""
        return bool(self.updater.is_update_step(int(step)))

    def variables(self, params, batch_stats) -> dict:
        """The ``variables`` dict of ``model.apply``."""
        return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


# ----------------------------------------------------------------------------- one per group
def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """``config.model``: the network, with K+1 outputs under MOON (K otherwise)."""
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    kwargs = {"width": config.model.width} if config.model.width else {}
    outputs = moon.num_outputs(num_classes, bool(config.moon.enabled), config.moon.head)
    return build_registered_model(config.model.name, outputs, dtype=dtype, **kwargs)


def create_epoch_schedule(config: ml_collections.ConfigDict, num_train: int) -> EpochSchedule:
    """``config.train`` epochs and batch size over ``num_train`` images, and MOON's averaging."""
    spe = count_steps_per_epoch(num_train, config.train.batch_size)
    if spe == 0:
        raise ConfigError(
            f"config.train.batch_size = {config.train.batch_size} is not valid: larger than the training set "
            f"({num_train} images); use at most {num_train}"
        )
    return EpochSchedule(
        steps_per_epoch=spe,
        epochs=config.train.epochs,
        averaging_epochs=config.moon.averaging_epochs if config.moon.enabled else 0,
        averaging_trigger=config.moon.averaging_trigger,
    )


def create_learning_rate_fn(config: ml_collections.ConfigDict, schedule: EpochSchedule) -> Callable:
    """``config.train``: ``base_lr`` x the reference's cosine-then-constant multiplier."""
    t = config.train
    return moon.cosine_then_constant(
        t.base_lr, t.lr_ini, t.lr_end, schedule.steps_per_epoch, t.epochs, t.constant_lr_epochs
    )


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: Callable, averaging: bool
) -> optax.GradientTransformationExtraArgs:
    """``config.train`` optimizer wrapped so masked weights stay zero (inside CigL's random mask
    when ``config.moon.dropconnect_rate`` is set; training dense weights behind the masks for the
    straight-through methods), then weight averaging."""
    t = config.train
    if t.optimizer == "sgd":
        inner = sparse.sgd_nesterov(learning_rate_fn, t.momentum, t.weight_decay, t.nesterov)
    else:
        inner = sparse.adamw(learning_rate_fn, weight_decay=t.weight_decay)
    straight_through = sparse.get_algorithm(config.sparse.method).straight_through
    parts = [sparse.straight_through_updates(inner) if straight_through else sparse.masked_updates(inner)]
    if config.moon.enabled and config.moon.dropconnect_rate > 0:
        parts = [moon.random_dropconnect(parts[0], float(config.moon.dropconnect_rate), seed=config.seed)]
    if averaging:
        parts.append(moon.weight_averaging())
    return optax.chain(*parts)


def create_sparse_updater(
    config: ml_collections.ConfigDict, model: nn.Module, image_shape, total_steps: int
) -> sparse.SparseUpdater:
    """``config.sparse``: method, per-layer counts for the model's shapes, mask-update schedule
    (drop-and-grow methods) or pruning schedule (pruning methods: ``prune_start_fraction`` to
    ``prune_end_fraction`` of ``total_steps``, every ``update_every`` iterations)."""
    s = config.sparse
    algorithm = sparse.get_algorithm(s.method)
    end_step = int(round(s.end_fraction * total_steps))
    if algorithm.schedule == "drop_and_grow" and s.update_every > end_step:
        raise ConfigError(
            f"config.sparse.update_every = {s.update_every} is not valid: mask updates stop at step "
            f"{end_step} (sparse.end_fraction {s.end_fraction} of {total_steps} steps), so "
            f"{s.method} would never update its masks; use at most {max(end_step, 1)} or method 'static'"
        )
    pruning = None
    if algorithm.is_pruning:
        pruning = sparse.PruningSchedule.for_run(total_steps, s.update_every, s.prune_start_fraction,
                                                 s.prune_end_fraction)
        if pruning.end_step >= total_steps:
            raise ConfigError(
                f"config.sparse.prune_end_fraction = {s.prune_end_fraction} is not valid: the last pruning "
                f"iteration {pruning.end_step} is not before the end of the run ({total_steps} steps); use less")
    abstract_params = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)), train=False)
    )["params"]
    schedule = sparse.UpdateSchedule(
        update_every=s.update_every, end_step=end_step, drop_fraction=s.drop_fraction,
        cosine_steps=s.drop_fraction_cosine_steps, drop_count_rounding=s.drop_count_rounding,
    )
    rule = SparsityRule(dense_first_layer=s.dense_first_layer, dense_last_layer=s.dense_last_layer)
    return sparse.make_updater(abstract_params, s.method, s.sparsity, s.distribution, schedule, rule, pruning=pruning,
                               structure=s.structure)


def create_moon_loss(config: ml_collections.ConfigDict) -> Optional[moon.MoonLossConfig]:
    """``config.moon``: the unknown-aware loss's hyper-parameters, or ``None`` without MOON (or
    with ``head = 'none'``: K outputs and cross-entropy, as CigL)."""
    m = config.moon
    if not m.enabled or m.head == "none":
        return None
    return moon.MoonLossConfig(
        total_epochs=config.train.epochs,
        warmup_epochs=m.warmup_epochs,
        ewma_mu=m.ewma_mu,
        alpha_init_factor=m.alpha_init_factor,
        alpha_final=m.alpha_final,
        weighting=m.loss_weighting,
        alpha_tuning=m.alpha_tuning,
        fixed_alpha=m.fixed_alpha,
    )


def create_placeholders(config: ml_collections.ConfigDict) -> Optional[moon.PlaceholderConfig]:
    """``config.moon.placeholder_*``: the placeholders' settings, or ``None`` when off."""
    m = config.moon
    if not (m.enabled and m.placeholders):
        return None
    return moon.PlaceholderConfig(
        mix_alpha=float(m.placeholder_mix_alpha), weight=float(m.placeholder_weight), warmup_epochs=m.warmup_epochs)


def create_batch_split(config: ml_collections.ConfigDict, mesh: Optional[Mesh]) -> BatchSplit:
    """``config.train.batch_shards`` / ``exact_reduction`` over ``mesh``."""
    devices = mesh.size if mesh is not None else 1
    return BatchSplit(
        num_shards=config.train.batch_shards or devices, mesh=mesh, exact_reduction=config.train.exact_reduction
    )


def create_training_setup(
    config: ml_collections.ConfigDict,
    num_train: int,
    num_classes: int,
    image_shape,
    mean,
    std,
    mesh: Optional[Mesh] = None,
) -> TrainingSetup:
    """Everything the config builds for a training set of ``num_train`` images of
    ``image_shape`` with ``num_classes`` classes normalised by ``mean`` / ``std``."""
    schedule = create_epoch_schedule(config, num_train)
    model = create_model(config, num_classes)
    learning_rate_fn = create_learning_rate_fn(config, schedule)
    return TrainingSetup(
        model=model,
        num_classes=num_classes,
        tx=create_optimizer(config, learning_rate_fn, averaging=schedule.averaging_epochs > 0),
        learning_rate_fn=learning_rate_fn,
        updater=create_sparse_updater(config, model, image_shape, schedule.total_steps),
        moon_loss=create_moon_loss(config),
        mixup_alpha=float(config.data.mixup_alpha),
        preprocess=Preprocessing(config.data.augment, tuple(mean), tuple(std)),
        schedule=schedule,
        split=create_batch_split(config, mesh),
        placeholders=create_placeholders(config),
    )


# ----------------------------------------------------------------------------- the state
def create_train_state(setup: TrainingSetup, rng: jax.Array, image_shape) -> TrainState:
    """Fresh state: initialised model, random masks with exact counts, optimizer state."""
    init_rng, mask_rng, state_rng = jax.random.split(rng, 3)
    variables = setup.model.init(init_rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    batch_stats = variables.get("batch_stats", {})
    sparse_state, params = setup.updater.init(variables["params"], mask_rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=setup.tx.init(params),
        masks=sparse_state.masks,
        moon=moon.init_moon_state(),
        averaged_batch_stats=batch_stats,
        averaged_batch_stats_snapshots=jnp.zeros((), jnp.int32),
        rng=state_rng,
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )


def abstract_train_state(setup: TrainingSetup, image_shape, sharding=None) -> TrainState:
    """Shapes and dtypes (and ``sharding``, if given) of a fresh state, to restore into."""
    shapes = jax.eval_shape(lambda: create_train_state(setup, jax.random.PRNGKey(0), image_shape))
    if sharding is None:
        return shapes
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
