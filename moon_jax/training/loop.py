"""``train(config, workdir, data, setup)``: the training loop, resumable from its latest checkpoint.

Re-running the same command continues from the newest checkpoint in ``workdir``: the state holds
everything (parameters, BatchNorm statistics, optimizer state with the weight average, masks,
MOON state, step, key), and the data order is a pure function of (seed, epoch), so the data
position is the step itself. SIGTERM (preemption) and Ctrl-C save a checkpoint before exiting
(:mod:`moon_jax.training.stopping`); a non-finite loss or gradient stops the run with the previous
checkpoint intact (:class:`CheckedSaver`). The workdir's files belong to
:class:`~moon_jax.training.run_directory.RunDirectory`, which the run holds locked.

Around the jitted steps the loop keeps the device busy: it decides on the host which compiled
step runs (mask update, weight snapshot, or neither) from Python ints; it reads the metrics of
each logging interval one interval later (their device-to-host copy is started when they are
reduced, so reading them never waits for the queue of steps to drain); checkpoints are written
asynchronously (only the next save, or the end of the run, waits for one); and the BatchNorm
statistics of the weight average are recomputed only when a result uses them (the end of
training; evaluation of an earlier checkpoint recomputes them itself). Periodic evaluation is
the caller's (``periodic_eval``): this package does not import the evaluation package.
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moon_jax import moon, sparse
from moon_jax.data import ImageDataset, epoch_batch_indices
from moon_jax.training import steps
from moon_jax.training.config import describe_method, validate_config
from moon_jax.devices import DataParallel, to_global
from moon_jax.training.input_pipeline import DeviceDataset, HostStreamDataset, RunData, load_run_data
from moon_jax.training.reporting import IntervalReporter, MetricWriter, ProgressBar
from moon_jax.training.run_directory import RunDirectory
from moon_jax.training.setup import TrainingSetup, abstract_train_state, create_train_state, create_training_setup
from moon_jax.training.state import TrainState
from moon_jax.training.stopping import Preempted, StopRequests


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite."""


def log(message: str) -> None:
    """Prints on process 0 only (every process of a multi-host job runs the same loop)."""
    if jax.process_index() == 0:
        print(message, flush=True)


# ----------------------------------------------------------------------------- construction
def build_run(config: ml_collections.ConfigDict, with_ood: bool = True) -> tuple[RunData, TrainingSetup]:
    """Validates the config, loads the data, builds the setup over every device."""
    validate_config(config, num_devices=jax.device_count())
    data = load_run_data(config, with_ood=with_ood)
    setup = create_training_setup(
        config, len(data.train), data.num_classes, data.image_shape, data.mean, data.std, DataParallel().mesh
    )
    return data, setup


class CompiledSteps(NamedTuple):
    """The jitted steps of a setup, each compiled once (on first use) and reused: the hot
    ``train`` step, the small ``snapshot`` run after it at snapshot steps, the ``mask_update``
    iteration and the BatchNorm refresh's ``accumulate_batch_stats``."""

    train: Callable
    snapshot: Callable
    mask_update: Callable
    accumulate_batch_stats: Callable


def compile_steps(setup: TrainingSetup, placement: DataParallel) -> CompiledSteps:
    """Binds the setup to the step functions and jits them (state donated, replicated)."""
    out = (placement.replicated, placement.replicated)
    return CompiledSteps(
        train=jax.jit(functools.partial(steps.train_step, setup), donate_argnums=0, out_shardings=out),
        snapshot=jax.jit(steps.snapshot_step, donate_argnums=0, out_shardings=placement.replicated),
        mask_update=jax.jit(functools.partial(steps.mask_update_step, setup), donate_argnums=0, out_shardings=out),
        accumulate_batch_stats=_compile_batch_stats_pass(setup, placement),
    )


def _compile_batch_stats_pass(setup: TrainingSetup, placement: DataParallel) -> Callable:
    """The compiled :func:`~moon_jax.training.steps.accumulate_batch_stats`, its result replicated.

    A batch's BatchNorm statistics are means over the whole batch; split over devices, their
    sums are combined by an all-reduce whose order depends on the devices and processes. With
    ``train.exact_reduction`` the batch is first gathered whole onto every device (exact: data
    moves, nothing is summed) and each device computes the statistics itself, so the result is
    the same bits on any number of devices and processes, at ``devices x`` the compute of this
    one pass.
    """
    accumulate = jax.jit(functools.partial(steps.accumulate_batch_stats, setup), out_shardings=placement.replicated)
    if not setup.split.exact_reduction:
        return accumulate
    whole = jax.jit(lambda images: images, out_shardings=placement.replicated)
    return lambda params, acc, images, rng: accumulate(params, acc, whole(images), rng)


def training_batches(data: RunData, placement: DataParallel, config):
    """The training set as the loop reads it: on the device(s) when it fits in memory, else
    streamed from the host with prefetching."""
    if isinstance(data.train, ImageDataset):
        return DeviceDataset(data.train, placement.replicated, placement.batch)
    return HostStreamDataset(data.train, placement.batch, config.seed, config.data.random_resized_crop)


# ----------------------------------------------------------------------------- BatchNorm refresh
def refresh_averaged_batch_stats(
    state: TrainState, train_data, batch_size: int, seed: int, accumulate: Callable
) -> TrainState:
    """Recomputes the weight average's BatchNorm statistics with one pass over the train set
    (``accumulate``: the compiled :func:`~moon_jax.training.steps.accumulate_batch_stats`).

    The pass uses a fixed order and fixed augmentation keys, so the result is a deterministic
    function of the averaged parameters (resumption stays exact). A no-op when the statistics
    are already those of the current average or the model has no BatchNorm. The new statistics
    keep the state's placement (global arrays: a multi-host job checkpoints them).
    """
    found = moon.find_averaging_state(state.opt_state)
    if found is None or not state.batch_stats:
        return state
    count = int(found.count)
    if count == 0 or int(state.averaged_batch_stats_snapshots) == count:
        return state
    # placed like the state, so that the first call compiles the same program as the rest
    acc = jax.device_put(moon.init_batch_stats_accumulator(state.batch_stats), found.count.sharding)
    indices = epoch_batch_indices(train_data.size, batch_size, seed, 10**6)
    key = jax.random.PRNGKey(seed + 1)
    for i, row in enumerate(indices):
        images, _ = train_data.batch(row)
        acc = accumulate(found.average, acc, images, jax.random.fold_in(key, i))
    return state._replace(
        averaged_batch_stats=acc.mean_stats,
        averaged_batch_stats_snapshots=to_global(np.int32(count), state.averaged_batch_stats_snapshots.sharding),
    )


# ----------------------------------------------------------------------------- saving
class CheckedSaver:
    """Saves checkpoints of a run only when the state is finite; a NaN/inf stops the run with
    :class:`NonFiniteError`, naming the step and what actually works next."""

    def __init__(self, run_dir: RunDirectory, config, steps_per_epoch: int):
        self.checkpointer = run_dir.checkpointer
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self._params_finite = jax.jit(
            lambda params: jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        )

    def save(self, state: TrainState, step: int) -> None:
        """Checks that ``state`` is finite, then starts an asynchronous save at ``step``."""
        bad = int(state.nonfinite_step)
        if bad < 0 and not bool(self._params_finite(state.params)):
            bad = step - 1  # a non-finite gradient at the last step, which no loss has shown yet
        self.stop_if_nonfinite(bad)
        self.checkpointer.save(step, state, self.config, {"epoch": step // self.steps_per_epoch,
                                                          "steps_per_epoch": self.steps_per_epoch})

    def stop_if_nonfinite(self, bad: int) -> None:
        """Raises :class:`NonFiniteError` when ``bad`` (the first non-finite step, or -1) is set."""
        if bad < 0:
            return
        self.checkpointer.wait_until_finished()
        last = self.checkpointer.latest_step()
        lower = self.config.train.base_lr / 2
        if last is None:
            advice = (f"no checkpoint was saved yet, so the same command with a lower learning rate (e.g. "
                      f"--config.train.base_lr={lower:g}) starts a new run in this workdir")
        else:
            advice = (f"the last good checkpoint is step {last} in {self.checkpointer.directory}. Training is "
                      f"deterministic: the same command diverges again. Either continue from step {last} with a "
                      f"lower learning rate (--config.train.base_lr={lower:g} --resume_with_changed=train.base_lr) "
                      f"or start again in a new --workdir")
        raise NonFiniteError(
            f"training stopped: the loss or a gradient became NaN/inf at step {bad} (epoch "
            f"{bad // self.steps_per_epoch + 1}); nothing after it was saved; {advice} (or check the data)."
        )

    def abort_message(self) -> str:
        """What an interrupted run leaves to resume from, for its ``error:`` line."""
        last = self.checkpointer.latest_step()
        return (f"the checkpoint at step {last} in {self.checkpointer.directory} is intact; re-run to resume from it"
                if last is not None else "no checkpoint was saved yet")


# ----------------------------------------------------------------------------- the run
def open_run(run_dir: RunDirectory, config, setup: TrainingSetup, data: RunData, placement: DataParallel,
             allow_changed: Sequence[str] = ()) -> TrainState:
    """The state to train from: the newest checkpoint that restores, or a new one. A new run
    starts clean (an earlier run's outputs without a checkpoint are moved aside); ``config.json``
    always describes the run that owns the checkpoints."""
    primary = jax.process_index() == 0
    checkpointer = run_dir.checkpointer
    if checkpointer.latest_step() is None:
        if primary:
            moved = run_dir.move_stale_outputs()
            if moved is not None:
                log(f"this workdir held the outputs of a run that saved no checkpoint: moved to {moved}")
            run_dir.write_config(config)
        init = jax.jit(lambda key: create_train_state(setup, key, data.image_shape), out_shardings=placement.replicated)
        log(f"new run in {run_dir.path}")
        return init(jax.random.PRNGKey(config.seed))
    abstract = abstract_train_state(setup, data.image_shape, placement.replicated)
    state, meta = checkpointer.restore_newest(abstract, config, allow_changed=allow_changed)
    step = int(meta["step"])
    log(f"resuming {run_dir.path} from the checkpoint at step {step} (epoch {meta.get('epoch', '?')})")
    if primary:
        for moved in checkpointer.set_aside_damaged(run_dir.damaged_checkpoints_dir):
            log(f"the damaged checkpoint is kept in {moved}")
        run_dir.truncate_metrics(step)
        if not run_dir.config_matches(config):
            run_dir.write_config(config)
    return state


def train(
    config: ml_collections.ConfigDict,
    workdir,
    data: RunData,
    setup: TrainingSetup,
    periodic_eval: Optional[Callable[[TrainingSetup, TrainState], dict]] = None,
    stop_at_step: Optional[int] = None,
    allow_changed: Sequence[str] = (),
) -> Optional[TrainState]:
    """Trains (resuming from ``workdir`` if a checkpoint is there) and returns the final state.

    The final state's weight average (when there is one) has its BatchNorm statistics
    recomputed, and is saved. ``periodic_eval(setup, state)`` runs every
    ``config.train.eval_every_epochs`` epochs (not after the last one); its float results are
    logged as ``eval`` records. With ``stop_at_step`` the run saves a checkpoint at that global
    step and returns ``None`` (a later call continues it). ``allow_changed``: config fields
    (optimiser settings only, see :data:`~moon_jax.training.checkpoint.RESUMABLE_CHANGES`) that
    may differ from the checkpoint's. The workdir is locked while the run trains (on process 0
    of a multi-host job): a second run there is refused.
    """
    run_dir = RunDirectory(workdir, config.train.checkpoints_to_keep)
    primary = jax.process_index() == 0
    lock = run_dir.lock() if primary else contextlib.nullcontext()
    with lock, run_dir:
        return _train_locked(config, run_dir, data, setup, periodic_eval, stop_at_step, allow_changed)


def _train_locked(config, run_dir: RunDirectory, data: RunData, setup: TrainingSetup, periodic_eval,
                  stop_at_step: Optional[int], allow_changed: Sequence[str]) -> Optional[TrainState]:
    primary = jax.process_index() == 0
    placement = DataParallel(setup.split.mesh)
    schedule = setup.schedule
    spe, total = schedule.steps_per_epoch, schedule.total_steps
    state = open_run(run_dir, config, setup, data, placement, allow_changed)
    _print_run_summary(config, data, setup, state)

    compiled = compile_steps(setup, placement)
    train_data = training_batches(data, placement, config)
    saver = CheckedSaver(run_dir, config, spe)
    writer = MetricWriter(run_dir, enabled=primary)
    bar = ProgressBar(total, int(state.step), enabled=config.train.progress_bar and primary)
    reporter = IntervalReporter(writer, bar, schedule.epochs, setup.updater.method != "dense", saver.stop_if_nonfinite)
    step = int(state.step)
    start_time = time.time()
    try:
        with StopRequests(saver.abort_message, placement.mesh) as stops:
            while step < total:
                epoch, first = divmod(step, spe)
                indices = epoch_batch_indices(train_data.size, config.train.batch_size, config.seed, epoch)
                for images, labels in train_data.epoch_batches(indices, first, epoch):
                    if setup.is_mask_update_step(step):
                        state, metrics = compiled.mask_update(state, images, labels)
                    else:
                        state, metrics = compiled.train(state, images, labels)
                        if schedule.is_snapshot_step(step):
                            state = compiled.snapshot(state)
                    reporter.add(metrics)
                    step += 1
                    if step % config.train.log_every_steps == 0 or step == total or stops.decided:
                        reporter.close_interval(step, epoch, state)
                        stops.at_interval()
                    if stops.decided or (stop_at_step is not None and stop_at_step <= step < total):
                        reporter.flush()
                        saver.save(state, step)
                        saver.checkpointer.wait_until_finished()
                        if stops.decided:
                            name, code = stops.decided
                            raise Preempted(f"{name}: saved a checkpoint at step {step} in "
                                            f"{saver.checkpointer.directory}; re-run the same command to resume", code)
                        log(f"stopped at step {step} (stop_at_step); re-run to continue")
                        return None
                epoch_done = step // spe
                if step == total and setup.uses_averaging:
                    state = refresh_averaged_batch_stats(state, train_data, config.train.batch_size, config.seed,
                                                         compiled.accumulate_batch_stats)
                eval_every = config.train.eval_every_epochs
                if periodic_eval is not None and eval_every and epoch_done % eval_every == 0 and step < total:
                    saver.stop_if_nonfinite(int(state.nonfinite_step))
                    writer.write(step, "eval", periodic_eval(setup, state))
                every = config.train.checkpoint_every_epochs
                if step < total and every and epoch_done % every == 0:
                    saver.save(state, step)
            reporter.flush()
            if saver.checkpointer.latest_step() != step:
                saver.save(state, step)
            saver.checkpointer.wait_until_finished()
    finally:
        bar.close()
        writer.close()
    log(f"training done: {total} steps in {time.time() - start_time:.1f} s (this session)")
    _check_average_support(state)
    return state


def _print_run_summary(config, data: RunData, setup: TrainingSetup, state: TrainState) -> None:
    plan = setup.updater.plan
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    log(
        f"{describe_method(config)} | model {config.model.name} ({n_params:,} params, "
        f"{setup.model.num_outputs} outputs) | data {config.data.dataset}: {len(data.train)} train, "
        f"{len(data.test)} test, OOD {', '.join(f'{k} ({len(v)})' for k, v in data.ood.items()) or 'none'} | "
        f"{setup.schedule.epochs} epochs x {setup.schedule.steps_per_epoch} steps | devices: {jax.device_count()} x {jax.devices()[0].platform}"
    )
    if config.sparse.method != "dense":
        log(
            f"sparsity: {plan.total_nonzeros:,} of {plan.total_size:,} sparsifiable weights active "
            f"(achieved sparsity {plan.achieved_sparsity:.6f}, target {plan.target_sparsity}); "
            f"{sum(c is not None for c in setup.updater.nonzeros)} masked layers, "
            f"{sum(plan.is_dense(n) for n in plan.shapes)} kept dense by the {plan.distribution} distribution"
            + ("" if setup.updater.structure.is_unstructured else f" and the {setup.updater.structure} structure")
        )
    pruning = setup.updater.pruning
    if pruning is not None:
        log(
            f"pruning from dense ({config.sparse.method}, Zhu & Gupta's cubic schedule): {pruning.num_events} pruning "
            f"iterations from step {pruning.start_step} every {pruning.update_every} to step {pruning.end_step}, "
            f"where the target is reached exactly"
        )
    report = sparse.flops_report(
        lambda v, x: setup.model.apply(v, x, train=False),
        setup.variables(state.params, state.batch_stats),
        data.image_shape,
        setup.updater.layer_density_report(state.masks, state.params),
        config.sparse.method,
        setup.schedule.total_steps,
        setup.updater.schedule,
        phases=setup.updater.density_phases(setup.schedule.total_steps),
        straight_through=setup.updater.straight_through,
    )
    log(report.describe())


def _check_average_support(state: TrainState) -> None:
    """The average must have the final mask's support: no mask update after averaging began."""
    averaged = moon.averaged_params(state.opt_state)
    if averaged is None:
        return
    params, count = averaged
    stats = sparse.mask_statistics(params, state.masks)
    outside = int(stats["nonzero_outside"])
    if outside:
        raise AssertionError(
            f"the weight average has {outside} nonzero weights outside the final mask: a mask update "
            "happened after averaging started (config.sparse.end_fraction too large?)"
        )
    density = float(stats["nonzero_fraction"])
    log(f"weight average: {count} snapshots, all on the final mask; measured density of masked layers {density:.6f}")
