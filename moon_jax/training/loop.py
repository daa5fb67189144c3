"""``train(config, workdir, data, setup)``: the training loop, resumable from its latest checkpoint.

Re-running the same command continues from the newest checkpoint in ``workdir``: the state holds
everything (parameters, BatchNorm statistics, optimizer state with the weight average, masks,
MOON state, step, key), and the data order is a pure function of (seed, epoch), so the data
position is the step itself. SIGTERM (preemption) saves a checkpoint before exiting; a
non-finite loss or gradient stops the run with the previous checkpoint intact.

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

import functools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moon_jax import moon, sparse
from moon_jax.data import ImageDataset, epoch_batch_indices
from moon_jax.training import steps
from moon_jax.training.checkpoint import Checkpointer
from moon_jax.training.config import describe_method, validate_config
from moon_jax.training.devices import DataParallel
from moon_jax.training.input_pipeline import DeviceDataset, HostStreamDataset, RunData, load_run_data
from moon_jax.training.reporting import MetricWriter, ProgressBar
from moon_jax.training.setup import TrainingSetup, abstract_train_state, create_train_state, create_training_setup
from moon_jax.training.state import TrainState


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite."""


class Preempted(SystemExit):
    """SIGTERM arrived; a checkpoint was saved. Exit status 143 (128 + SIGTERM)."""

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message


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
    """The jitted steps of a setup, each compiled once (on first use) and reused.

    ``train`` takes ``take_snapshot`` as a static argument: two variants, the one that
    snapshots runs only at snapshot steps.
    """

    train: Callable
    mask_update: Callable
    accumulate_batch_stats: Callable


def compile_steps(setup: TrainingSetup, placement: DataParallel) -> CompiledSteps:
    """Binds the setup to the step functions and jits them (state donated, replicated)."""
    out = (placement.replicated, placement.replicated)
    return CompiledSteps(
        train=jax.jit(
            functools.partial(steps.train_step, setup), donate_argnums=0, out_shardings=out,
            static_argnames="take_snapshot",
        ),
        mask_update=jax.jit(functools.partial(steps.mask_update_step, setup), donate_argnums=0, out_shardings=out),
        accumulate_batch_stats=jax.jit(functools.partial(steps.accumulate_batch_stats, setup)),
    )


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
    are already those of the current average or the model has no BatchNorm.
    """
    found = moon.find_averaging_state(state.opt_state)
    if found is None or not state.batch_stats:
        return state
    count = int(found.count)
    if count == 0 or int(state.averaged_batch_stats_snapshots) == count:
        return state
    acc = moon.init_batch_stats_accumulator(state.batch_stats)
    indices = epoch_batch_indices(train_data.size, batch_size, seed, 10**6)
    key = jax.random.PRNGKey(seed + 1)
    for i, row in enumerate(indices):
        images, _ = train_data.batch(row)
        acc = accumulate(found.average, acc, images, jax.random.fold_in(key, i))
    return state._replace(
        averaged_batch_stats=acc.mean_stats,
        averaged_batch_stats_snapshots=jnp.asarray(count, jnp.int32),
    )


# ----------------------------------------------------------------------------- metrics
@jax.jit
def _summarize(records: list) -> dict:
    """Mean of every float metric over a logging interval; the latest non-finite marker."""
    out = {k: jnp.mean(jnp.stack([r[k] for r in records])) for k in records[0] if k != "nonfinite_step"}
    out["nonfinite_step"] = records[-1]["nonfinite_step"]
    return out


class _PendingSummary(NamedTuple):
    step: int
    epoch: int
    values: dict


def _start_summary(records: list, step: int, epoch: int, extra: dict) -> _PendingSummary:
    """Reduces the interval's metrics on the device (plus ``extra`` device scalars measured at
    its end) and starts their copy to the host."""
    values = dict(_summarize(records), **extra)
    for v in values.values():
        v.copy_to_host_async()
    return _PendingSummary(step, epoch, values)


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
def train(
    config: ml_collections.ConfigDict,
    workdir,
    data: RunData,
    setup: TrainingSetup,
    periodic_eval: Optional[Callable[[TrainingSetup, TrainState], dict]] = None,
    stop_at_step: Optional[int] = None,
) -> Optional[TrainState]:
    """Trains (resuming from ``workdir`` if a checkpoint is there) and returns the final state.

    The final state's weight average (when there is one) has its BatchNorm statistics
    recomputed, and is saved. ``periodic_eval(setup, state)`` runs every
    ``config.train.eval_every_epochs`` epochs (not after the last one); its float results are
    logged as ``eval`` records. With ``stop_at_step`` the run saves a checkpoint at that global
    step and returns ``None`` (a later call continues it).
    """
    workdir = Path(workdir)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    placement = DataParallel(setup.split.mesh)
    checkpointer = Checkpointer(workdir, config.train.checkpoints_to_keep)
    writer = MetricWriter(workdir, enabled=primary)
    schedule = setup.schedule
    spe, total = schedule.steps_per_epoch, schedule.total_steps

    latest = checkpointer.latest_step()
    if latest is None:
        init = jax.jit(lambda key: create_train_state(setup, key, data.image_shape), out_shardings=placement.replicated)
        state = init(jax.random.PRNGKey(config.seed))
        if primary:
            _write_config(workdir, config)
        log(f"new run in {workdir}")
    else:
        state, meta = checkpointer.restore(abstract_train_state(setup, data.image_shape, placement.replicated), config)
        log(f"resuming {workdir} from the checkpoint at step {latest} (epoch {meta.get('epoch', '?')})")
        if primary:
            _truncate_metrics_log(workdir, latest)
    _print_run_summary(config, data, setup, state)

    compiled = compile_steps(setup, placement)
    density = jax.jit(sparse.masked_density)
    params_finite = jax.jit(lambda params: jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])))
    train_data = training_batches(data, placement, config)

    preempted = {"flag": False}

    def on_sigterm(signum, frame):
        preempted["flag"] = True

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) if _is_main_thread() else None
    step = int(state.step)
    bar = ProgressBar(total, step, enabled=config.train.progress_bar and primary)
    records: list = []
    in_flight: Optional[_PendingSummary] = None
    start_time = time.time()

    def save(state, step):
        bad = int(state.nonfinite_step)
        if bad < 0 and not bool(params_finite(state.params)):
            bad = step - 1  # a non-finite gradient at the last step, which no loss has shown yet
        stop_if_nonfinite(bad)
        checkpointer.save(step, state, config, {"epoch": step // spe, "steps_per_epoch": spe})

    def stop_if_nonfinite(bad: int):
        if bad >= 0:
            checkpointer.wait_until_finished()
            last = checkpointer.latest_step()
            where = f"the last good checkpoint is step {last} in {checkpointer.directory}" if last is not None else "no checkpoint was saved yet"
            raise NonFiniteError(
                f"training stopped: the loss or a gradient became NaN/inf at step {bad} "
                f"(epoch {bad // spe + 1}); nothing after it was saved and {where}. Lower "
                f"config.train.base_lr (now {config.train.base_lr}) or check the data, then re-run the same "
                f"command to resume from that checkpoint."
            )

    def report(summary: Optional[_PendingSummary]) -> None:
        """Writes a finished interval's metrics (a host read of values already on their way)."""
        if summary is None:
            return
        values = {k: float(v) for k, v in jax.device_get(summary.values).items()}
        stop_if_nonfinite(int(values.pop("nonfinite_step")))
        writer.write(summary.step, "train", values)
        bar.update(summary.step, summary.epoch, schedule.epochs, {k: values[k] for k in ("loss", "accuracy") if k in values})

    def end_interval(epoch: int) -> None:
        """Closes a logging interval: reports the previous one, starts this one's summary."""
        nonlocal records, in_flight
        extra = {"density": density(state.params, state.masks)} if setup.updater.method != "dense" else {}
        report(in_flight)
        in_flight = _start_summary(records, step, epoch, extra)
        records = []

    def flush() -> None:
        nonlocal in_flight
        report(in_flight)
        in_flight = None

    try:
        while step < total:
            epoch, first = divmod(step, spe)
            indices = epoch_batch_indices(train_data.size, config.train.batch_size, config.seed, epoch)
            for images, labels in train_data.epoch_batches(indices, first, epoch):
                if setup.is_mask_update_step(step):
                    state, metrics = compiled.mask_update(state, images, labels)
                else:
                    state, metrics = compiled.train(state, images, labels, take_snapshot=schedule.is_snapshot_step(step))
                records.append(metrics)
                step += 1
                if step % config.train.log_every_steps == 0 or step == total or preempted["flag"]:
                    end_interval(epoch)
                stopping = preempted["flag"] or (stop_at_step is not None and step >= stop_at_step and step < total)
                if stopping:
                    flush()
                    save(state, step)
                    checkpointer.wait_until_finished()
                    if preempted["flag"]:
                        raise Preempted(
                            f"SIGTERM: saved a checkpoint at step {step} in {checkpointer.directory}; "
                            "re-run the same command to resume"
                        )
                    log(f"stopped at step {step} (stop_at_step); re-run to continue")
                    return None
            epoch_done = step // spe
            if step == total and setup.uses_averaging:
                state = refresh_averaged_batch_stats(state, train_data, config.train.batch_size, config.seed, compiled.accumulate_batch_stats)
            eval_every = config.train.eval_every_epochs
            if periodic_eval is not None and eval_every and epoch_done % eval_every == 0 and step < total:
                stop_if_nonfinite(int(state.nonfinite_step))
                writer.write(step, "eval", periodic_eval(setup, state))
            every = config.train.checkpoint_every_epochs
            if step < total and every and epoch_done % every == 0:
                save(state, step)
        flush()
        if checkpointer.latest_step() != step:
            save(state, step)
        checkpointer.wait_until_finished()
    finally:
        bar.close()
        writer.close()
        checkpointer.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    log(f"training done: {total} steps in {time.time() - start_time:.1f} s (this session)")
    _check_average_support(state)
    return state


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


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
        )
    report = sparse.flops_report(
        lambda v, x: setup.model.apply(v, x, train=False),
        setup.variables(state.params, state.batch_stats),
        data.image_shape,
        setup.updater.layer_density_report(state.masks),
        config.sparse.method,
        setup.schedule.total_steps,
        setup.updater.schedule,
    )
    log(report.describe())


def _check_average_support(state: TrainState) -> None:
    """The average must have the final mask's support: no mask update after averaging began."""
    averaged = moon.averaged_params(state.opt_state)
    if averaged is None:
        return
    params, count = averaged
    outside = moon.weights_outside_masks(params, state.masks)
    if outside:
        raise AssertionError(
            f"the weight average has {outside} nonzero weights outside the final mask: a mask update "
            "happened after averaging started (config.sparse.end_fraction too large?)"
        )
    density = float(sparse.masked_density(params, state.masks))
    log(f"weight average: {count} snapshots, all on the final mask; measured density of masked layers {density:.6f}")
