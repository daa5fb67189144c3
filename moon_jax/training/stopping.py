"""Stopping a run on request: SIGTERM (preemption) and SIGINT (Ctrl-C) ask the training loop to
save a checkpoint and stop; a second Ctrl-C aborts at once; in a multi-process job every process
stops at the same step."""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Optional

import jax

from moon_jax.devices import max_over_processes


class Preempted(SystemExit):
    """SIGTERM or Ctrl-C arrived and a checkpoint was saved. Exit status 143 (128 + SIGTERM) or
    130 (128 + SIGINT)."""

    def __init__(self, message: str, code: int = 143):
        super().__init__(code)
        self.message = message


class StopRequests:
    """While active (a ``with`` block), SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to
    stop after the current step: it saves a checkpoint, says so in one line and exits with 143 or
    130. A second Ctrl-C aborts at once (the checkpoint being written is abandoned; the complete
    ones before it are intact). The previous handlers are restored on exit. Outside the main
    thread (signals cannot be caught there) it does nothing.

    In a multi-process job (a ``mesh`` spanning several processes) the signal reaches the
    processes at different steps, yet all must stop at the same one (they write the checkpoint
    together, and every compiled step needs all of them). The loop calls :meth:`at_interval` at
    each logging interval: every process contributes the request it has (a tiny all-reduce), and
    the answer is read one interval later, at the same step everywhere, so :attr:`decided` changes
    there and only there.
    """

    _SIGNALS = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("Ctrl-C", 130)}

    def __init__(self, describe_abort: Callable[[], str] = lambda: "", mesh=None):
        self.requested: Optional[tuple[str, int]] = None
        self._describe_abort = describe_abort
        self._previous: dict = {}
        self._shared = mesh is not None and jax.process_count() > 1
        self._agreed: Optional[tuple[str, int]] = None
        self._in_flight: Optional[jax.Array] = None
        self._largest = max_over_processes(mesh) if self._shared else None

    @property
    def decided(self) -> Optional[tuple[str, int]]:
        """``(name, exit status)`` once the loop is to stop (every process at the same step)."""
        return self._agreed if self._shared else self.requested

    def at_interval(self) -> None:
        """Multi-process jobs: reads the answer started at the previous interval and starts this
        one's (every process calls it at the same steps). One process: nothing to agree on."""
        if not self._shared:
            return
        if self._in_flight is not None and self._agreed is None:
            code = int(self._in_flight)
            if code:
                name = next(n for n, c in self._SIGNALS.values() if c == code)
                self._agreed = (name if self.requested else f"{name} sent to another process of the job", code)
        self._in_flight = self._largest(self.requested[1] if self.requested else 0)
        self._in_flight.copy_to_host_async()

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            print(f"error: second Ctrl-C: aborting at once without saving; {self._describe_abort()}",
                  file=sys.stderr, flush=True)
            os._exit(130)
        self.requested = self._SIGNALS[signum]

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
