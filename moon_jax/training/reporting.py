"""What a run tells its user while it runs: a progress bar with ETA, JSON-lines metrics, and
TensorBoard summaries when a TensorBoard writer is installed."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Mapping, Optional


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """One line, rewritten in place on a terminal; elsewhere (a log file, CI) a line at most
    every 5% of the run and at the end.

    The ETA is measured from the rate since the bar started, excluding the first step (the
    compilation).
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

    def update(self, step: int, epoch: int, total_epochs: int, metrics: Mapping[str, float]) -> None:
        """Shows progress after ``step`` iterations have been done."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._step0 = now, step
        done = step - self._step0
        rate = done / (now - self._t0) if done > 0 and now > self._t0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * step / max(self.total, 1))
        parts = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} epoch {epoch + 1}/{total_epochs} "
            f"{parts} | {rate:.1f} it/s ETA {_format_duration(eta) if rate > 0 else '--:--'}"
        )
        if self.interactive:
            self.stream.write("\r" + line[:200].ljust(120))
        elif step >= self._next_line or step >= self.total:
            self.stream.write(line + "\n")
            self._next_line = step + max(self.total // 20, 1)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()


class MetricWriter:
    """Appends metrics as JSON lines to ``<workdir>/metrics.jsonl``; also to TensorBoard when a
    writer is installed (``tensorboardX``, or ``torch.utils.tensorboard``)."""

    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            self._tb = _tensorboard_writer(Path(workdir) / "tensorboard")

    def write(self, step: int, kind: str, values: Mapping[str, float]) -> None:
        """Records ``values`` (floats) of a ``kind`` (``train``, ``eval``, ...) at ``step``."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
        record.update({k: float(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{kind}/{key}", float(value), int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def _tensorboard_writer(directory: Path):
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            writer_cls = __import__(module, fromlist=["SummaryWriter"]).SummaryWriter
        except Exception:  # not installed, or its optional pieces are missing
            continue
        return writer_cls(str(directory))
    return None


def read_metrics(workdir, kind: Optional[str] = None) -> list[dict]:
    """The records of ``<workdir>/metrics.jsonl`` (of one ``kind`` if given)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
