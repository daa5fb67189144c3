"""``train_and_evaluate(config, workdir)``: the whole run, resumable from its latest checkpoint.

Re-running the same command continues from the newest checkpoint in ``workdir``: the state holds
everything (parameters, BatchNorm statistics, optimizer state with the weight average, masks,
MOON state, step, key), and the data order is a pure function of (seed, epoch), so the data
position is the step itself. SIGTERM (preemption) saves a checkpoint before exiting; a
non-finite loss or gradient stops the run with the previous checkpoint intact.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from moon_jax import moon, sparse
from moon_jax.data import ImageDataset, epoch_batch_indices, steps_per_epoch
from moon_jax.evaluation.evaluate import evaluate_model, format_results, on_devices
from moon_jax.evaluation.runner import averaged_model, evaluate_state, masked_density, method_name
from moon_jax.models import create_model
from moon_jax.moon.averaging import init_batch_stats_accumulator
from moon_jax.sparse.leaves import SparsityRule
from moon_jax.training.checkpoint import Checkpointer
from moon_jax.training.config import ConfigError, validate_config
from moon_jax.training.input_pipeline import DeviceDataset, HostStreamDataset, RunData, load_run_data
from moon_jax.training.reporting import MetricWriter, ProgressBar
from moon_jax.moon import find_averaging_state
from moon_jax.training.trainer import TrainState, Trainer


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite."""


class Preempted(SystemExit):
    """SIGTERM arrived; a checkpoint was saved. Exit status 143 (128 + SIGTERM)."""

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


# ----------------------------------------------------------------------------- construction
def build_trainer(
    config: ml_collections.ConfigDict, num_train: int, num_classes: int, image_shape, mean, std, mesh: Optional[Mesh] = None
) -> Trainer:
    """The :class:`Trainer` a config describes, for a training set of ``num_train`` images.

    ``mesh``: the devices the batch is split over (``None``: the default device only).
    """
    spe = steps_per_epoch(num_train, config.train.batch_size)
    if spe == 0:
        raise ValueError(
            f"config.train.batch_size = {config.train.batch_size} is larger than the training set "
            f"({num_train} images): use a smaller batch size"
        )
    total_steps = spe * config.train.epochs
    end_step = int(round(config.sparse.end_fraction * total_steps))
    if config.sparse.method in ("set", "rigl") and config.sparse.update_every > end_step:
        raise ConfigError(
            f"config.sparse.update_every = {config.sparse.update_every} is not valid: mask updates stop at step "
            f"{end_step} (sparse.end_fraction {config.sparse.end_fraction} of {total_steps} steps = "
            f"{config.train.epochs} epochs x {spe}), so {config.sparse.method} would never update its masks; "
            f"use at most {max(end_step, 1)} or method 'static'"
        )
    use_moon = bool(config.moon.enabled)
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    model_kwargs = {"width": config.model.width} if config.model.width else {}
    model = create_model(
        config.model.name, moon.num_outputs(num_classes, use_moon, config.moon.head), dtype=dtype, **model_kwargs
    )
    schedule = sparse.UpdateSchedule(
        update_every=config.sparse.update_every,
        end_step=end_step,
        drop_fraction=config.sparse.drop_fraction,
    )
    rule = SparsityRule(
        dense_first_layer=config.sparse.dense_first_layer, dense_last_layer=config.sparse.dense_last_layer
    )
    abstract_params = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)), train=False)
    )["params"]
    updater = sparse.make_updater(
        abstract_params, config.sparse.method, config.sparse.sparsity, config.sparse.distribution, schedule, rule
    )
    lr = moon.cosine_then_constant(
        config.train.base_lr, config.train.lr_ini, config.train.lr_end, spe, config.train.epochs,
        config.train.constant_lr_epochs,
    )
    if config.train.optimizer == "sgd":
        inner = sparse.sgd_nesterov(lr, config.train.momentum, config.train.weight_decay, config.train.nesterov)
    else:
        inner = sparse.adamw(lr, weight_decay=config.train.weight_decay)
    averaging_epochs = config.moon.averaging_epochs if use_moon else 0
    parts = [sparse.masked_updates(inner)]
    if use_moon and config.moon.dropconnect_rate > 0:
        parts = [moon.random_dropconnect(parts[0], float(config.moon.dropconnect_rate), seed=config.seed)]
    if averaging_epochs:
        parts.append(moon.weight_averaging())
    tx = optax.chain(*parts)
    moon_config = (
        moon.MoonLossConfig(
            total_epochs=config.train.epochs,
            warmup_epochs=config.moon.warmup_epochs,
            ewma_mu=config.moon.ewma_mu,
            alpha_init_factor=config.moon.alpha_init_factor,
            alpha_final=config.moon.alpha_final,
            weighting=config.moon.loss_weighting,
            alpha_tuning=config.moon.alpha_tuning,
            fixed_alpha=config.moon.fixed_alpha,
        )
        if use_moon and config.moon.head != "none"
        else None
    )
    return Trainer(
        model=model,
        tx=tx,
        updater=updater,
        num_classes=num_classes,
        moon_config=moon_config,
        steps_per_epoch=spe,
        total_epochs=config.train.epochs,
        averaging_epochs=averaging_epochs,
        averaging_trigger=config.moon.averaging_trigger,
        augment=config.data.augment,
        mean=tuple(mean),
        std=tuple(std),
        lr_schedule=lr,
        rule=rule,
        num_shards=config.train.batch_shards or (mesh.size if mesh is not None else 1),
        mesh=mesh,
        exact_reduction=config.train.exact_reduction,
        mixup_alpha=float(config.data.mixup_alpha),
    )


def build_run(config: ml_collections.ConfigDict, with_ood: bool = True):
    """Validates the config, loads the data, builds the trainer over every device: ``(data, trainer)``."""
    validate_config(config, num_devices=jax.device_count())
    data = load_run_data(config, with_ood=with_ood)
    mesh = Shardings().mesh
    trainer = build_trainer(config, len(data.train), data.num_classes, data.image_shape, data.mean, data.std, mesh)
    return data, trainer


class Shardings:
    """Data parallelism over every device: a 1-D mesh, batch split, state replicated."""

    def __init__(self, mesh: Optional[Mesh] = None):
        self.mesh = mesh if mesh is not None else Mesh(np.asarray(jax.devices()), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))


def abstract_state(trainer: Trainer, image_shape, sharding=None) -> TrainState:
    """Shapes and dtypes (and ``sharding``, if given) of a fresh state, to restore into."""
    shapes = jax.eval_shape(lambda: trainer.init_state(jax.random.PRNGKey(0), image_shape))
    if sharding is None:
        return shapes
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


# ----------------------------------------------------------------------------- helpers
def _refresh_averaged_batch_stats(state: TrainState, train: DeviceDataset, batch_size: int, seed: int, accumulate) -> TrainState:
    """Recomputes the averaged model's BatchNorm statistics with one pass over the train set.

    The pass uses a fixed order and fixed augmentation keys, so the result is a deterministic
    function of the averaged parameters (resumption stays exact).
    """
    avg = find_averaging_state(state.opt_state)
    if avg is None or not state.batch_stats:
        return state
    acc = init_batch_stats_accumulator(state.batch_stats)
    indices = epoch_batch_indices(train.size, batch_size, seed, 10**6)
    key = jax.random.PRNGKey(seed + 1)
    for i, row in enumerate(indices):
        images, _ = train.batch(row)
        acc = accumulate(avg.average, acc, images, jax.random.fold_in(key, i))
    return state._replace(averaged_batch_stats=acc.mean_stats)


def _mean_metrics(pending: list) -> dict:
    host = jax.device_get(pending)
    keys = [k for k in host[0] if k != "finite"]
    return {k: float(np.mean([m[k] for m in host])) for k in keys}


def _truncate_metrics_log(workdir: Path, step: int) -> None:
    """Drops records written after ``step`` by a run that crashed before its next checkpoint."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _write_config(workdir: Path, config) -> None:
    path = workdir / "config.json"
    if not path.exists():
        path.write_text(config.to_json_best_effort(indent=2) + "\n")


# ----------------------------------------------------------------------------- the run
def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir, evaluate_at_end: bool = True, stop_at_step: Optional[int] = None
) -> dict:
    """Trains (resuming from ``workdir`` if a checkpoint is there), evaluates, writes results.

    Returns the final evaluation results (see :func:`moon_jax.evaluation.evaluate_logits`); they
    are also written to ``<workdir>/eval.json`` and printed as a Markdown table. With
    ``stop_at_step`` the run saves a checkpoint at that global step and returns ``{}`` (a later
    call continues it).
    """
    workdir = Path(workdir)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    data, trainer = build_run(config)
    shard = Shardings(trainer.mesh)
    checkpointer = Checkpointer(workdir, config.train.checkpoints_to_keep)
    writer = MetricWriter(workdir, enabled=primary)

    image_shape = data.image_shape
    latest = checkpointer.latest_step()
    if latest is None:
        init = jax.jit(lambda key: trainer.init_state(key, image_shape), out_shardings=shard.replicated)
        state = init(jax.random.PRNGKey(config.seed))
        if primary:
            _write_config(workdir, config)
        _log(f"new run in {workdir}")
    else:
        state, meta = checkpointer.restore(abstract_state(trainer, image_shape, shard.replicated), config)
        _log(f"resuming {workdir} from the checkpoint at step {latest} (epoch {meta.get('epoch', '?')})")
        if primary:
            _truncate_metrics_log(workdir, latest)
    _print_run_summary(config, data, trainer, state)

    state_out = (shard.replicated, shard.replicated)
    train_step = jax.jit(trainer.train_step, donate_argnums=0, out_shardings=state_out)
    mask_step = jax.jit(trainer.mask_update_step, donate_argnums=0, out_shardings=state_out)
    accumulate = jax.jit(trainer.accumulate_batch_stats)
    if isinstance(data.train, ImageDataset):
        train_data = DeviceDataset(data.train, shard.replicated, shard.batch)
    else:
        train_data = HostStreamDataset(data.train, shard.batch, config.seed, config.data.random_resized_crop)

    preempted = {"flag": False}

    def on_sigterm(signum, frame):
        preempted["flag"] = True

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) if _is_main_thread() else None
    spe = trainer.steps_per_epoch
    total = trainer.total_steps
    step = int(state.step)
    bar = ProgressBar(total, step, enabled=config.train.progress_bar and primary)
    pending: list = []
    start_time = time.time()

    def save(state, step):
        checkpointer.save(step, state, config, {"epoch": step // spe, "steps_per_epoch": spe})

    def check_finite(state, step):
        bad = int(state.nonfinite_step)
        if bad >= 0:
            last = checkpointer.latest_step()
            where = f"the last good checkpoint is step {last} in {checkpointer.directory}" if last is not None else "no checkpoint was saved yet"
            raise NonFiniteError(
                f"training stopped: the loss or a gradient became NaN/inf at step {bad} "
                f"(epoch {bad // spe + 1}); nothing after it was saved and {where}. Lower "
                f"config.train.base_lr (now {config.train.base_lr}) or check the data, then re-run the same "
                f"command to resume from that checkpoint."
            )

    try:
        while step < total:
            epoch, first = divmod(step, spe)
            indices = epoch_batch_indices(train_data.size, config.train.batch_size, config.seed, epoch)
            for images, labels in train_data.epoch_batches(indices, first, epoch):
                fn = mask_step if trainer.is_mask_update_step(step) else train_step
                state, metrics = fn(state, images, labels)
                pending.append(metrics)
                step += 1
                if step % config.train.log_every_steps == 0 or step == total or preempted["flag"]:
                    values = _mean_metrics(pending)
                    pending = []
                    check_finite(state, step)
                    writer.write(step, "train", values)
                    bar.update(step, epoch, trainer.total_epochs, {k: values[k] for k in ("loss", "accuracy") if k in values})
                if stop_at_step is not None and step >= stop_at_step and step < total:
                    check_finite(state, step)
                    save(state, step)
                    _log(f"stopped at step {step} (stop_at_step); re-run to continue")
                    return {}
                if preempted["flag"]:
                    check_finite(state, step)
                    save(state, step)
                    raise Preempted(
                        f"SIGTERM: saved a checkpoint at step {step} in {checkpointer.directory}; "
                        "re-run the same command to resume"
                    )
            epoch_done = step // spe
            snapshot_epoch = trainer.averaging_epochs and epoch_done - 1 >= moon.averaging_start_epoch(
                trainer.total_epochs, trainer.averaging_epochs
            )
            if snapshot_epoch and (config.moon.bn_refresh == "every_epoch" or step == total):
                state = _refresh_averaged_batch_stats(state, train_data, config.train.batch_size, config.seed, accumulate)
            eval_every = config.train.eval_every_epochs
            if eval_every and epoch_done % eval_every == 0 and step < total:
                check_finite(state, step)
                _periodic_eval(trainer, state, data, config, writer, step)
            if config.train.checkpoint_every_epochs and epoch_done % config.train.checkpoint_every_epochs == 0:
                check_finite(state, step)
                save(state, step)
        check_finite(state, step)
        if checkpointer.latest_step() != step:
            save(state, step)
    finally:
        bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    _log(f"training done: {total} steps in {time.time() - start_time:.1f} s (this session)")
    _check_average_density(state)
    if not evaluate_at_end:
        return {}
    results = evaluate_state(trainer, state, data, config)
    if primary:
        (workdir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
        print(format_results(results, title=f"{config.data.dataset} / {config.model.name} / {method_name(config)} ({results['model']})"))
    writer.close()
    return results


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _print_run_summary(config, data: RunData, trainer: Trainer, state: TrainState) -> None:
    plan = trainer.updater.plan
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    _log(
        f"{method_name(config)} | model {config.model.name} ({n_params:,} params, "
        f"{trainer.model.num_outputs} outputs) | data {config.data.dataset}: {len(data.train)} train, "
        f"{len(data.test)} test, OOD {', '.join(f'{k} ({len(v)})' for k, v in data.ood.items()) or 'none'} | "
        f"{trainer.total_epochs} epochs x {trainer.steps_per_epoch} steps | devices: {jax.device_count()} x {jax.devices()[0].platform}"
    )
    if config.sparse.method != "dense":
        _log(
            f"sparsity: {plan.total_nonzeros:,} of {plan.total_size:,} sparsifiable weights active "
            f"(achieved sparsity {plan.achieved_sparsity:.6f}, target {plan.target_sparsity}); "
            f"{sum(c is not None for c in trainer.updater.nonzeros)} masked layers, "
            f"{sum(plan.is_dense(n) for n in plan.shapes)} kept dense by the {plan.distribution} distribution"
        )
    densities = trainer.updater.layer_density_report(state.sparse.masks)
    report = sparse.flops_report(
        lambda v, x: trainer.model.apply(v, x, train=False),
        trainer._variables(state.params, state.batch_stats),
        data.image_shape,
        densities,
        config.sparse.method,
        trainer.total_steps,
        trainer.updater.schedule,
    )
    _log(report.describe())


def _periodic_eval(trainer: Trainer, state: TrainState, data: RunData, config, writer: MetricWriter, step: int) -> None:
    logits_fn = on_devices(
        lambda v, images: trainer.logits(v["params"], v["batch_stats"], images),
        {"params": state.params, "batch_stats": state.batch_stats},
        trainer.mesh,
    )
    results = evaluate_model(logits_fn, data.test, {}, trainer.num_classes, config.train.eval_batch_size, ece_bins=config.eval.ece_bins)
    cls = results["classification"]
    writer.write(step, "eval", {"acc": cls["acc"], "ece": cls["ece"], "nll": cls["nll"]})


def _check_average_density(state: TrainState) -> None:
    """The average must have the final mask's support: no mask update after averaging began."""
    averaged = averaged_model(state)
    if averaged is None:
        return
    params, _, count = averaged
    masks = jax.tree.leaves(state.sparse.masks, is_leaf=lambda x: x is None)
    outside = 0
    for mask, p in zip(masks, jax.tree.leaves(params)):
        if mask is not None:
            outside += int(np.count_nonzero(np.asarray(p)[~np.asarray(mask)]))
    if outside:
        raise AssertionError(
            f"the weight average has {outside} nonzero weights outside the final mask: a mask update "
            "happened after averaging started (config.sparse.end_fraction too large?)"
        )
    density = masked_density(state, params)["masked_layers_nonzero_fraction"]
    _log(f"weight average: {count} snapshots, all on the final mask; measured density of masked layers {density:.6f}")
