"""The step functions: pure maps of a :class:`TrainState` given a :class:`TrainingSetup`.

The caller binds the setup and wraps each in one ``jax.jit`` (see
:func:`moon_jax.training.loop.compile_steps`). Order of one iteration (reference
``base_trainer.train_epoch``): forward -> loss -> gradients -> either a mask update (RigL / SET;
that iteration takes no optimizer step, as in the reference and in RigL's code) or a masked
optimizer step -> weight-average snapshot when scheduled. The learning rate follows the global
iteration, mask-update iterations included.

The hot step does a dense step's work plus the mask work: the weight average is touched only by
:func:`snapshot_step`, a small function run after the step at the snapshot steps (decided on the
host), the
non-finite guard is one scalar marker set from the loss (the host stops the run before anything
is saved), and bookkeeping such as the measured density runs at logging time, not here.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from moon_jax import moon, sparse
from moon_jax.data.augment import mixup_batch
from moon_jax.models import BN_MOMENTUM
from moon_jax.devices import DATA_AXIS
from moon_jax.training.setup import TrainingSetup
from moon_jax.training.state import TrainState

PyTree = Any


def loss_and_grads(setup: TrainingSetup, state: TrainState, forward_params, images, labels, rng):
    """Loss (MOON's or cross-entropy), dense gradients, new BatchNorm and MOON state, and the
    step's metrics, on one batch shard."""
    aug_rng, dropout_rng = jax.random.split(rng)
    x = setup.preprocess(images, aug_rng)
    epoch = state.step // setup.schedule.steps_per_epoch
    if setup.placeholders is not None:
        placeholder_x, placeholder_counts = moon.make_placeholders(
            jax.random.fold_in(rng, 2), x, labels, setup.placeholders.mix_alpha)
    if setup.mixup_alpha > 0:
        x, perm, lam = mixup_batch(jax.random.fold_in(rng, 1), x, setup.mixup_alpha)

    def labels_loss(logits, y):
        if setup.moon_loss is not None:
            return moon.moon_loss(logits, y, state.moon, epoch, setup.moon_loss)
        ce = jnp.mean(moon.cross_entropy(logits, y))
        return ce, (state.moon, {"ce": ce})

    def loss_fn(params):
        logits, updates = setup.model.apply(
            setup.variables(params, state.batch_stats), x, train=True, mutable=["batch_stats"],
            rngs={"dropout": dropout_rng},
        )
        if setup.mixup_alpha > 0:  # Zhang et al. 2018: lam * L(y_a) + (1 - lam) * L(y_b)
            loss, (moon_state, aux) = moon.mix_label_losses(lambda y: labels_loss(logits, y), labels, labels[perm], lam)
        else:
            loss, (moon_state, aux) = labels_loss(logits, labels)
        known = logits[:, : setup.num_classes]
        aux = dict(aux, accuracy=jnp.mean(jnp.argmax(known, axis=-1) == labels))
        if setup.placeholders is not None:
            placeholder_term, placeholder_aux = _placeholder_term(setup, params, state, placeholder_x,
                                                                  placeholder_counts, epoch, dropout_rng)
            loss = loss + placeholder_term
            aux = dict(aux, **placeholder_aux)
        return loss, (updates.get("batch_stats", {}), moon_state, aux)

    (loss, (batch_stats, moon_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(forward_params)
    return loss, grads, batch_stats, moon_state, aux


def _placeholder_term(setup: TrainingSetup, params, state: TrainState, images, counts, epoch, dropout_rng):
    """The placeholders' weighted loss (0 during warm-up) and their metrics; their forward pass's
    BatchNorm statistics are discarded (:mod:`moon_jax.moon.placeholders`)."""
    logits, _ = setup.model.apply(
        setup.variables(params, state.batch_stats), images, train=True, mutable=["batch_stats"],
        rngs={"dropout": jax.random.fold_in(dropout_rng, 1)},
    )
    config = setup.placeholders
    loss = moon.placeholder_loss(logits, counts, setup.num_classes)
    p_unknown = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, setup.num_classes]
    aux = {"placeholder_ce": loss, "placeholder_p_unknown": moon.counted_mean(p_unknown, counts)}
    return moon.placeholders_active(config, epoch) * config.weight * loss, aux


def _average_shards(stacked: jax.Array) -> jax.Array:
    """Mean over the leading (shard) axis for floats; the first shard's value for integers."""
    if jnp.issubdtype(stacked.dtype, jnp.floating):
        return jnp.mean(stacked, axis=0)
    return stacked[0]


def data_parallel_loss_and_grads(setup: TrainingSetup, state: TrainState, forward_params, images, labels, rng):
    """:func:`loss_and_grads` per batch shard (:class:`~moon_jax.training.setup.BatchSplit`),
    averaged over the shards.

    Each device computes its shards with the same per-shard computation, so splitting the shards
    over more devices changes nothing but speed. Floating-point results (loss, gradients,
    BatchNorm statistics, MOON's EWMA and alpha, metrics) are averaged over shards; integer ones
    (MOON's epoch counters) agree across shards and are taken from the first. MOON's EWMA and
    alpha are linear in the batch statistic, so the average of the shards' new states is the
    state of the averaged statistic.
    """
    split = setup.split
    mesh = split.mesh if split.mesh is not None and split.mesh.size > 1 else None  # 1 device: no collectives
    devices = 1 if mesh is None else mesh.size
    if split.num_shards % devices or images.shape[0] % split.num_shards:
        raise ValueError(
            f"batch of {images.shape[0]} cannot be split into {split.num_shards} shards over {devices} devices"
        )
    local_shards = split.num_shards // devices

    def local(state, forward_params, images, labels, rng):
        if local_shards == 1 and mesh is None:  # one shard: nothing to stack or average
            return loss_and_grads(setup, state, forward_params, images, labels, jax.random.fold_in(rng, 0))
        first = jax.lax.axis_index(DATA_AXIS) * local_shards if mesh is not None else 0
        xs = images.reshape((local_shards, -1) + images.shape[1:])
        ys = labels.reshape((local_shards, -1))
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, first + i))(jnp.arange(local_shards))
        if split.exact_reduction:
            # One compiled shard computation reused for every shard (a loop), so a shard
            # computes bit-identically whichever device and position it has.
            out = jax.lax.map(lambda a: loss_and_grads(setup, state, forward_params, *a), (xs, ys, keys))
        else:
            # Unrolled: XLA on CPU runs convolutions inside a loop ~10x slower.
            shards = [loss_and_grads(setup, state, forward_params, xs[i], ys[i], keys[i]) for i in range(local_shards)]
            out = jax.tree.map(lambda *t: jnp.stack(t), *shards)
        if mesh is not None and split.exact_reduction:
            out = jax.tree.map(lambda t: jax.lax.all_gather(t, DATA_AXIS, tiled=True), out)
        out = jax.tree.map(_average_shards, out)
        if mesh is not None and not split.exact_reduction:
            out = jax.tree.map(
                lambda t: jax.lax.pmean(t, DATA_AXIS) if jnp.issubdtype(t.dtype, jnp.floating) else t, out
            )
        return out

    if mesh is None:
        return local(state, forward_params, images, labels, rng)
    replicated, batch = PartitionSpec(), PartitionSpec(DATA_AXIS)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(replicated, replicated, batch, batch, replicated),
        out_specs=replicated,
        check_vma=False,
    )(state, forward_params, images, labels, rng)


def _finish(setup: TrainingSetup, old: TrainState, new: TrainState, loss, aux) -> tuple[TrainState, dict]:
    """Counts the step, records the first step with a non-finite loss, and collects the metrics.

    Only the loss is checked here: checking the gradients too would make the step write them to
    memory and read them back (4 parameter-sized passes; the fused optimizer update otherwise
    consumes them in registers). A NaN/inf gradient makes the parameters non-finite, hence the
    next step's loss; the host also checks the parameters before every save.
    """
    finite = jnp.isfinite(loss)
    nonfinite_step = jnp.where(jnp.logical_and(~finite, old.nonfinite_step < 0), old.step, old.nonfinite_step)
    new = new._replace(step=old.step + 1, nonfinite_step=nonfinite_step)
    metrics = dict(aux, loss=loss, lr=setup.learning_rate_fn(old.step), nonfinite_step=nonfinite_step)
    return new, metrics


def train_step(setup: TrainingSetup, state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, dict]:
    """One masked optimizer iteration on a uint8 batch."""
    rng = jax.random.fold_in(state.rng, state.step)
    step_rng, _ = jax.random.split(rng)  # the second key was CigL's; kept so results do not change
    loss, grads, batch_stats, moon_state, aux = data_parallel_loss_and_grads(
        setup, state, state.params, images, labels, step_rng
    )
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params, masks=state.masks, step=state.step)
    if setup.updater.straight_through:  # exactly the masked dense weights (params + updates may round apart)
        params = sparse.straight_through_params(opt_state, state.masks)
    else:
        params = optax.apply_updates(state.params, updates)
    new = state._replace(params=params, batch_stats=batch_stats, opt_state=opt_state, moon=moon_state)
    return _finish(setup, state, new, loss, aux)


def snapshot_step(state: TrainState) -> TrainState:
    """Folds the current parameters into the weight average (MOON's voting, at the end of an
    averaging epoch): run right after the :func:`train_step` whose parameters are the snapshot."""
    return state._replace(opt_state=moon.snapshot_into(state.opt_state, state.params))


def mask_update_step(setup: TrainingSetup, state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, dict]:
    """A mask-update iteration: dense gradient, drop-and-grow or pruning, no optimizer step.

    The optimizer state of grown and dropped connections is reset (straight-through methods keep
    theirs: their dense weights train on).
    """
    rng = jax.random.fold_in(state.rng, state.step)
    step_rng, update_rng = jax.random.split(rng)
    loss, grads, batch_stats, moon_state, aux = data_parallel_loss_and_grads(
        setup, state, state.params, images, labels, step_rng
    )
    engine_state = sparse.SparseState(masks=state.masks, step=state.step, rng=update_rng)
    engine_state, params, opt_state = sparse.update_masks(
        setup.updater, engine_state, state.params, state.opt_state, grads, update_rng)
    new = state._replace(
        params=params, batch_stats=batch_stats, opt_state=opt_state, masks=engine_state.masks, moon=moon_state
    )
    return _finish(setup, state, new, loss, aux)


def model_outputs(setup: TrainingSetup, variables: dict, images: jax.Array, return_features: bool = False):
    """Eval-mode logits (and penultimate features) of a uint8 batch; ``variables`` holds
    ``params`` and ``batch_stats``."""
    x = setup.preprocess(images)
    return setup.model.apply(
        setup.variables(variables["params"], variables["batch_stats"]), x, train=False, return_features=return_features
    )


def accumulate_batch_stats(setup: TrainingSetup, params: PyTree, acc: moon.BatchStatsAccumulator, images: jax.Array, rng: jax.Array):
    """Adds a training batch's BatchNorm statistics of ``params`` to ``acc`` (the BatchNorm
    refresh of the weight average, :func:`moon_jax.moon.accumulate_batch_stats`)."""
    return moon.accumulate_batch_stats(setup.model.apply, params, acc, setup.preprocess(images, rng), BN_MOMENTUM)
