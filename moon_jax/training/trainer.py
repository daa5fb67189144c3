"""The training step: forward, loss (MOON or cross-entropy), gradients, masked optimizer,
weight averaging; the mask-update step; evaluation logits; BatchNorm refresh.

Everything here is a pure function of an explicit :class:`TrainState`; the caller wraps each
public step in one ``jax.jit``. A :class:`Trainer` holds only static configuration (the model,
the optimizer, the sparse updater, schedules).

Order of one iteration (reference ``base_trainer.train_epoch``): forward -> loss -> gradients ->
either a mask update (RigL / SET; that iteration takes no optimizer step, as in the reference and
in RigL's code) or a masked optimizer step -> weight-average snapshot when scheduled. The learning
rate follows the global iteration, mask-update iterations included.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jax.sharding import Mesh, PartitionSpec

from moon_jax import moon, sparse
from moon_jax.data.augment import augment_batch, mixup_batch, normalize
from moon_jax.models import BN_MOMENTUM
from moon_jax.moon.averaging import BatchStatsAccumulator, find_averaging_state
from moon_jax.sparse.leaves import SparsityRule

PyTree = Any


class TrainState(NamedTuple):
    """Everything needed to continue training exactly (saved in checkpoints).

    Attributes:
      step: int32 number of iterations done.
      params: model parameters (exact zeros at inactive connections).
      batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
      opt_state: state of the optimizer chain (masked inner optimizer, weight averaging).
      sparse: masks, step and key of the sparse engine.
      moon: the MOON loss's auto-tuning state.
      averaged_batch_stats: BatchNorm statistics recomputed for the averaged parameters.
      rng: uint32[2] base key; each iteration folds in its step.
      nonfinite_step: -1 while every loss and gradient was finite, else the first bad step
        (the state then holds the last good values).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    sparse: sparse.SparseState
    moon: moon.MoonState
    averaged_batch_stats: PyTree
    rng: jax.Array
    nonfinite_step: jax.Array


def _average_shards(stacked: jax.Array) -> jax.Array:
    """Mean over the leading (shard) axis for floats; the first shard's value for integers."""
    if jnp.issubdtype(stacked.dtype, jnp.floating):
        return jnp.mean(stacked, axis=0)
    return stacked[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """Static description of a run; its methods are the pure steps.

    Attributes:
      model: the Flax module (K or K+1 outputs).
      tx: the optimizer chain, ``masked_updates(inner)`` followed by weight averaging when enabled.
      updater: the sparse engine.
      num_classes: K, the number of known classes.
      moon_config: the MOON loss hyper-parameters, or ``None`` for plain cross-entropy.
      steps_per_epoch: iterations per epoch.
      total_epochs: epochs of the run.
      averaging_epochs: epochs of weight averaging at the end (0: none).
      averaging_trigger: ``epoch`` or ``reference``.
      augment: the on-device augmentation (``crop_flip``, ``flip`` or ``none``).
      mean, std: per-channel normalisation constants.
      lr_schedule: learning rate as a function of the global iteration.
      rule: which leaves are sparsifiable.
      num_shards: the global batch is split into this many equal shards; each shard has its own
        BatchNorm statistics and gradient (per-device BatchNorm, as in data-parallel training),
        and the shards' gradients, BatchNorm statistics, MOON statistics and metrics are
        averaged. The result depends on ``num_shards``, not on the number of devices.
      mesh: the devices the shards are spread over (a 1-D mesh with axis ``data``); ``None``
        runs every shard on the default device.
      mixup_alpha: Mixup's Beta parameter (0: off); each batch shard is mixed within itself.
      exact_reduction: compute every shard with one compiled loop body and average the shards
        in a fixed order (all-gather, then one sum), so that any number of devices gives
        bit-identical gradients; costs ``devices x`` gradient bytes of communication instead of
        an all-reduce's ~2x, and a loop over shards where a device holds several.
    """

    model: nn.Module
    tx: optax.GradientTransformationExtraArgs
    updater: sparse.SparseUpdater
    num_classes: int
    moon_config: Optional[moon.MoonLossConfig]
    steps_per_epoch: int
    total_epochs: int
    averaging_epochs: int
    averaging_trigger: str
    augment: str
    mean: tuple
    std: tuple
    lr_schedule: Callable[[Any], Any]
    rule: SparsityRule = SparsityRule()
    num_shards: int = 1
    mesh: Optional[Mesh] = None
    exact_reduction: bool = False
    mixup_alpha: float = 0.0

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.total_epochs

    @property
    def uses_moon(self) -> bool:
        return self.moon_config is not None

    # ------------------------------------------------------------------ state
    def init_state(self, rng: jax.Array, input_shape: tuple[int, ...]) -> TrainState:
        """Fresh state: initialised model, random masks with exact counts, optimizer state."""
        init_rng, mask_rng, state_rng = jax.random.split(rng, 3)
        variables = self.model.init(init_rng, jnp.zeros((1,) + tuple(input_shape), jnp.float32), train=False)
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        sparse_state, params = self.updater.init(params, mask_rng)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=self.tx.init(params),
            sparse=sparse_state,
            moon=moon.init_moon_state(),
            averaged_batch_stats=batch_stats,
            rng=state_rng,
            nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    # ------------------------------------------------------------------ pieces
    def preprocess(self, images: jax.Array, rng: Optional[jax.Array]) -> jax.Array:
        """uint8 batch -> augmented (when ``rng`` is given and augmentation is on), normalised."""
        if rng is not None:
            images = augment_batch(rng, images, self.augment)
        return normalize(images, self.mean, self.std).astype(jnp.float32)

    def _variables(self, params, batch_stats):
        return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}

    def _loss_and_grads(self, state: TrainState, forward_params, images, labels, rng):
        aug_rng, dropout_rng = jax.random.split(rng)
        x = self.preprocess(images, aug_rng)
        epoch = state.step // self.steps_per_epoch
        if self.mixup_alpha > 0:
            x, perm, lam = mixup_batch(jax.random.fold_in(rng, 1), x, self.mixup_alpha)

        def labels_loss(logits, y):
            if self.uses_moon:
                return moon.moon_loss(logits, y, state.moon, epoch, self.moon_config)
            ce = jnp.mean(moon.cross_entropy(logits, y))
            return ce, (state.moon, {"ce": ce})

        def loss_fn(params):
            logits, updates = self.model.apply(
                self._variables(params, state.batch_stats),
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_rng},
            )
            if self.mixup_alpha > 0:
                loss, (moon_state, aux) = moon.mix_label_losses(lambda y: labels_loss(logits, y), labels, labels[perm], lam)
            else:
                loss, (moon_state, aux) = labels_loss(logits, labels)
            known = logits[:, : self.num_classes]
            aux = dict(aux, accuracy=jnp.mean(jnp.argmax(known, axis=-1) == labels))
            return loss, (updates.get("batch_stats", {}), moon_state, aux)

        (loss, (batch_stats, moon_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(forward_params)
        return loss, grads, batch_stats, moon_state, aux

    def _sharded_loss_and_grads(self, state: TrainState, forward_params, images, labels, rng):
        """:meth:`_loss_and_grads` per batch shard, averaged over the shards.

        Each device computes its shards with the same per-shard computation, so splitting the
        shards over more devices changes nothing but speed.
        Floating-point results (loss, gradients, BatchNorm statistics, MOON's EWMA and alpha,
        metrics) are averaged over shards; integer ones (MOON's epoch counters) agree across
        shards and are taken from the first. MOON's EWMA and alpha are linear in the batch
        statistic, so the average of the shards' new states is the state of the averaged
        statistic.
        """
        mesh = self.mesh if self.mesh is not None and self.mesh.size > 1 else None  # 1 device: no collectives
        devices = 1 if mesh is None else mesh.size
        if self.num_shards % devices or images.shape[0] % self.num_shards:
            raise ValueError(
                f"batch of {images.shape[0]} cannot be split into {self.num_shards} shards over {devices} devices"
            )
        local_shards = self.num_shards // devices

        def local(state, forward_params, images, labels, rng):
            first = jax.lax.axis_index("data") * local_shards if mesh is not None else 0
            xs = images.reshape((local_shards, -1) + images.shape[1:])
            ys = labels.reshape((local_shards, -1))
            keys = jax.vmap(lambda i: jax.random.fold_in(rng, first + i))(jnp.arange(local_shards))
            if self.exact_reduction:
                # One compiled shard computation reused for every shard (a loop), so a shard
                # computes bit-identically whichever device and position it has.
                out = jax.lax.map(lambda a: self._loss_and_grads(state, forward_params, *a), (xs, ys, keys))
            else:
                # Unrolled: XLA on CPU runs convolutions inside a loop ~10x slower.
                shards = [self._loss_and_grads(state, forward_params, xs[i], ys[i], keys[i]) for i in range(local_shards)]
                out = jax.tree.map(lambda *t: jnp.stack(t), *shards)
            if mesh is not None and self.exact_reduction:
                out = jax.tree.map(lambda t: jax.lax.all_gather(t, "data", tiled=True), out)
            out = jax.tree.map(_average_shards, out)
            if mesh is not None and not self.exact_reduction:
                out = jax.tree.map(
                    lambda t: jax.lax.pmean(t, "data") if jnp.issubdtype(t.dtype, jnp.floating) else t, out
                )
            return out

        if mesh is None:
            return local(state, forward_params, images, labels, rng)
        replicated, split = PartitionSpec(), PartitionSpec("data")
        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(replicated, replicated, split, split, replicated),
            out_specs=replicated,
            check_vma=False,
        )(state, forward_params, images, labels, rng)

    def _finalize(self, old: TrainState, new: TrainState, loss, grads, aux) -> tuple[TrainState, dict]:
        """Keeps the old state if the loss or a gradient is not finite; records the first bad step."""
        finite = jnp.logical_and(jnp.isfinite(loss), jnp.isfinite(optax.tree.norm(grads)))
        guarded = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        nonfinite_step = jnp.where(
            jnp.logical_and(~finite, old.nonfinite_step < 0), old.step, old.nonfinite_step
        )
        guarded = guarded._replace(step=old.step + 1, nonfinite_step=nonfinite_step)
        metrics = dict(aux, loss=loss, lr=self.lr_schedule(old.step), finite=finite)
        if self.updater.method != "dense":
            metrics["density"] = self.masked_density(guarded.params, guarded.sparse.masks)
        return guarded, metrics

    @staticmethod
    def masked_density(params: PyTree, masks: PyTree) -> jax.Array:
        """Share of nonzero weights over the masked layers (measured on the values)."""
        nonzero = total = 0
        for mask, p in zip(jax.tree.leaves(masks, is_leaf=lambda x: x is None), jax.tree.leaves(params)):
            if mask is not None:
                nonzero = nonzero + jnp.count_nonzero(p)
                total += p.size
        return jnp.asarray(nonzero, jnp.float32) / max(total, 1)

    # ------------------------------------------------------------------ steps
    def train_step(self, state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, dict]:
        """One masked optimizer iteration on a uint8 batch."""
        rng = jax.random.fold_in(state.rng, state.step)
        step_rng, _ = jax.random.split(rng)  # the key earlier versions used: same results as before
        loss, grads, batch_stats, moon_state, aux = self._sharded_loss_and_grads(state, state.params, images, labels, step_rng)
        snapshot = moon.is_snapshot_step(
            state.step, self.steps_per_epoch, self.total_epochs, self.averaging_epochs, self.averaging_trigger
        )
        updates, opt_state = self.tx.update(
            grads, state.opt_state, state.params, masks=state.sparse.masks, step=state.step, take_snapshot=snapshot
        )
        params = optax.apply_updates(state.params, updates)
        new = state._replace(
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            sparse=self.updater.advance(state.sparse),
            moon=moon_state,
        )
        return self._finalize(state, new, loss, grads, aux)

    def mask_update_step(self, state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, dict]:
        """A mask-update iteration: dense gradient, drop-and-grow, no optimizer step.

        The optimizer state of grown and dropped connections is reset.
        """
        rng = jax.random.fold_in(state.rng, state.step)
        step_rng, update_rng = jax.random.split(rng)
        loss, grads, batch_stats, moon_state, aux = self._sharded_loss_and_grads(state, state.params, images, labels, step_rng)
        sparse_state, params = self.updater.update(state.sparse, state.params, grads, update_rng)
        opt_state = sparse.reset_optimizer_state(state.opt_state, params, state.sparse.masks, sparse_state.masks)
        new = state._replace(
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            sparse=self.updater.advance(sparse_state),
            moon=moon_state,
        )
        return self._finalize(state, new, loss, grads, aux)

    def is_mask_update_step(self, step: int) -> bool:
        """Host-side, from Python ints only (no device round trip in the loop): whether iteration
        ``step`` runs :meth:`mask_update_step`."""
        return bool(self.updater.is_update_step(int(step)))

    # ------------------------------------------------------------------ evaluation
    def logits(self, params: PyTree, batch_stats: PyTree, images: jax.Array, return_features: bool = False):
        """Eval-mode logits (and penultimate features) of a uint8 batch."""
        x = self.preprocess(images, None)
        return self.model.apply(self._variables(params, batch_stats), x, train=False, return_features=return_features)

    def accumulate_batch_stats(self, params: PyTree, acc: BatchStatsAccumulator, images: jax.Array, rng: jax.Array):
        """Adds a training batch's BatchNorm statistics of ``params`` to ``acc``."""
        x = self.preprocess(images, rng)
        return moon.accumulate_batch_stats(self.model.apply, params, acc, x, BN_MOMENTUM)
