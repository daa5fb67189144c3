"""What a run tells its user while it runs: a progress bar with ETA (``rich``), JSON-lines metrics
(``metrics.jsonl``) and TensorBoard summaries (``tensorboardX``), and the logging intervals whose
means they show."""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp

from moon_jax import sparse
from moon_jax.training.files import write_error
from moon_jax.training.run_directory import RunDirectory


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _describe(epoch: int, total_epochs: int, metrics: Mapping[str, float]) -> str:
    parts = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    return f"epoch {epoch + 1}/{total_epochs} {parts}".rstrip()


class ProgressBar:
    """On a terminal, a ``rich`` progress bar redrawn in place (bar, steps, epoch and metrics,
    rate, ETA); elsewhere (a log file, CI) a plain line at most every 5% of the run and at the
    end, so logs stay short and greppable.

    The rate and ETA exclude the time before the first update (the compilation).
    """

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True, stream=None):
        self.total = total_steps
        self.start = start_step
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0: Optional[float] = None
        self._step0 = start_step
        self._next_line = start_step
        self._progress = None
        self._task = None

    def _start_rich(self, step: int) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn)

        self._progress = Progress(
            BarColumn(bar_width=24), MofNCompleteColumn(), TextColumn("{task.description}"),
            TextColumn("{task.fields[rate]}"), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(file=self.stream), transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=self.total, completed=step, rate="")

    def update(self, step: int, epoch: int, total_epochs: int, metrics: Mapping[str, float]) -> None:
        """Shows progress after ``step`` iterations have been done."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._step0 = now, step
        done = step - self._step0
        rate = done / (now - self._t0) if done > 0 and now > self._t0 else 0.0
        description = _describe(epoch, total_epochs, metrics)
        if self.interactive:
            if self._progress is None:
                self._start_rich(step)
            self._progress.update(self._task, completed=step, description=description,
                                  rate=f"{rate:.1f} it/s" if rate > 0 else "")
            return
        if step >= self._next_line or step >= self.total:
            eta = _format_duration((self.total - step) / rate) if rate > 0 else "--:--"
            self.stream.write(f"{step}/{self.total} ({100 * step // max(self.total, 1)}%) {description} | "
                              f"{rate:.1f} it/s ETA {eta}\n")
            self.stream.flush()
            self._next_line = step + max(self.total // 20, 1)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class MetricWriter:
    """Appends metrics as JSON lines to the run directory's ``metrics.jsonl`` and writes them as
    TensorBoard scalars to its ``tensorboard/`` (``tensorboardX``, a dependency of moon-jax).

    A failed write (a full disk, say) raises one
    :class:`~moon_jax.training.files.WriteError` and leaves no torn line; TensorBoard is
    flushed with each record, so its failures surface here too rather than in a background
    thread.
    """

    def __init__(self, run_dir, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
        self._tb = None
        if enabled:
            self._tb = _tensorboard_writer(self.run_dir.tensorboard_dir)

    def write(self, step: int, kind: str, values: Mapping[str, float]) -> None:
        """Records ``values`` (floats) of a ``kind`` (``train``, ``eval``, ...) at ``step``."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
        record.update({k: float(v) for k, v in values.items()})
        self.run_dir.append_metrics(record)
        if self._tb is not None:
            try:
                for key, value in values.items():
                    self._tb.add_scalar(f"{kind}/{key}", float(value), int(step))
                self._tb.flush()
            except OSError as err:
                raise write_error(self.run_dir.tensorboard_dir, err) from None

    def close(self) -> None:
        if self._tb is not None:
            tb, self._tb = self._tb, None
            try:
                tb.flush()
                tb.close()
            except OSError as err:
                raise write_error(self.run_dir.tensorboard_dir, err) from None


def _tensorboard_writer(directory: Path):
    """A ``tensorboardX.SummaryWriter`` for ``directory``; ``None`` with a warning when the
    package is broken or missing (metrics.jsonl is still written)."""
    try:
        from tensorboardX import SummaryWriter
    except Exception as err:  # a broken or missing optional piece must not stop a run
        warnings.warn(f"TensorBoard summaries are off: tensorboardX cannot be imported ({err}); "
                      f"`pip install tensorboardX` (metrics.jsonl is still written)")
        return None
    try:
        return SummaryWriter(str(directory))
    except OSError as err:
        raise write_error(directory, err) from None


def read_metrics(workdir, kind: Optional[str] = None) -> list[dict]:
    """The records of ``<workdir>/metrics.jsonl`` (of one ``kind`` if given); a torn line is
    skipped with a warning."""
    return RunDirectory(workdir).read_metrics(kind)


# ----------------------------------------------------------------------------- logging intervals
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


class IntervalReporter:
    """The logging intervals of a run: collects each step's metrics; when an interval closes,
    reduces it on the device and starts its copy to the host, and writes the previous interval
    (whose values have arrived by then) to the metrics log and the progress bar. Reading an
    interval one interval late never waits for the queue of steps to drain."""

    def __init__(self, writer: MetricWriter, bar: ProgressBar, epochs: int, masked: bool,
                 stop_if_nonfinite: Callable[[int], None]):
        self.writer, self.bar, self.epochs = writer, bar, epochs
        self.stop_if_nonfinite = stop_if_nonfinite
        self.records: list = []
        self.in_flight: Optional[_PendingSummary] = None
        self.masked = masked

    def add(self, metrics: dict) -> None:
        """Keeps one step's metrics (device arrays, read only when the interval closes)."""
        self.records.append(metrics)

    def close_interval(self, step: int, epoch: int, state) -> None:
        """Closes the interval that ends at ``step`` (``state``: the train state there, for the
        densities of a masked run)."""
        extra = _densities(state.params, state.masks) if self.masked else {}
        self.flush()
        self.in_flight = _start_summary(self.records, step, epoch, extra)
        self.records = []

    def flush(self) -> None:
        """Writes the interval in flight, if any."""
        summary, self.in_flight = self.in_flight, None
        if summary is None:
            return
        values = {k: float(v) for k, v in jax.device_get(summary.values).items()}
        self.stop_if_nonfinite(int(values.pop("nonfinite_step")))
        self.writer.write(summary.step, "train", values)
        self.bar.update(summary.step, summary.epoch, self.epochs,
                        {k: values[k] for k in ("loss", "accuracy") if k in values})


def _densities(params, masks) -> dict:
    """``density``: the fraction of masked weights the masks keep; ``nonzero_fraction``: the
    fraction that is nonzero (lower right after a mask update, since grown weights start at 0)."""
    stats = sparse.mask_statistics(params, masks)
    return {"density": stats["density"], "nonzero_fraction": stats["nonzero_fraction"]}
