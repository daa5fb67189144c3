"""The process around a run: multi-host initialisation and JAX's persistent compilation cache."""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from typing import Iterator, Optional

from absl import flags

from moon_jax.training import Preempted
from moon_jax.training.config import ConfigError

#: Exit status of a process that stops because another process of its multi-host job stopped.
PEER_LOST = 4


def define_distributed_flags() -> None:
    """Defines ``--multihost`` and the explicit coordinator settings of train.py and eval.py.

    Left out, JAX finds the coordinator, the process count and this process's id itself on TPU
    pods, Slurm, Open MPI and Kubernetes; a plain set of processes (several CPU processes on one
    machine, GPU nodes without a scheduler) names them.
    """
    flags.DEFINE_bool(
        "multihost", False,
        "Call jax.distributed.initialize() first (TPU pods, multi-node GPU); also set by the environment "
        "variable MOON_JAX_MULTIHOST=1 or by any of the three flags below.")
    flags.DEFINE_string(
        "coordinator_address", None,
        "host:port of process 0's coordinator, the same for every process (default: found by JAX, or "
        "JAX_COORDINATOR_ADDRESS).")
    flags.DEFINE_integer("num_processes", None, "Number of processes of the job (default: found by JAX).")
    flags.DEFINE_integer("process_id", None, "This process's id, 0 .. num_processes-1 (default: found by JAX).")


@contextlib.contextmanager
def distributed_job_from_flags() -> Iterator[None]:
    """:func:`distributed_job` with the flags of :func:`define_distributed_flags`."""
    values = flags.FLAGS
    with distributed_job(values.multihost, values.coordinator_address, values.num_processes, values.process_id):
        yield


@contextlib.contextmanager
def distributed_job(requested: bool, coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                    process_id: Optional[int] = None) -> Iterator[None]:
    """The body of a program, run as one process of a multi-host job when asked
    (:func:`initialize_distributed`). Other processes are told this one finished when the body
    returns or stops for SIGTERM / Ctrl-C (:class:`~moon_jax.training.Preempted`: every process
    stops at the same step); any other end (an error, a kill) stops them (:class:`Lifeline`)."""
    lifeline = initialize_distributed(requested, coordinator_address, num_processes, process_id)
    try:
        yield
    except Preempted:
        if lifeline is not None:
            lifeline.finish()
        raise
    if lifeline is not None:
        lifeline.finish()


def multihost_requested(requested: bool, *settings) -> bool:
    """Whether to start a multi-host job: ``--multihost``, ``MOON_JAX_MULTIHOST=1``, or any
    explicit coordinator setting."""
    return (requested or os.environ.get("MOON_JAX_MULTIHOST", "") not in ("", "0")
            or any(s is not None for s in settings))


def initialize_distributed(requested: bool, coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None, process_id: Optional[int] = None
                           ) -> Optional["Lifeline"]:
    """``jax.distributed.initialize(...)`` when asked (:func:`multihost_requested`).

    Settings left ``None`` are found by JAX: on TPU pods from the TPU metadata; on Slurm from
    ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``,
    ``SLURM_LOCALID`` (one GPU per process); with Open MPI from ``OMPI_*``; the coordinator also
    from ``JAX_COORDINATOR_ADDRESS`` (or its port from ``JAX_COORDINATOR_PORT``). On CPU the
    processes exchange data through gloo over TCP. Every process then runs the same program and
    sees every device of the job; process 0 alone writes logs and results, orbax coordinates
    the checkpoint writes. Returns the process's :class:`Lifeline` (None with one process).
    Raises :class:`ConfigError` when the settings are incomplete or the coordinator is not
    reached within ``initialization_timeout`` (300 s).
    """
    if not multihost_requested(requested, coordinator_address, num_processes, process_id):
        return None
    import jax

    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(
            f"--multihost: jax.distributed.initialize failed ({' '.join(str(err).split())}); outside a TPU pod, "
            f"Slurm or Open MPI pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I to every "
            f"process") from None
    if jax.process_count() == 1:
        return None
    return Lifeline.connect(jax.process_index(), jax.process_count())


class Lifeline:
    """A TCP connection between process 0 and every other process of a job, so that when one
    process dies (killed, crashed, out of memory) the others stop at once with one ``error:``
    line and exit status :data:`PEER_LOST` instead of waiting forever in a collective (gloo has
    no timeout) or being aborted by JAX's coordination service with a stack trace.

    The kernel closes a process's sockets however it ends, so its peers see the connection close;
    a process that finished sends ``done`` first. Process 0 listens on a free port and publishes it
    in JAX's key-value store; the others connect to it at the coordinator's host. When process 0
    stops because another did, its own connections close and the rest follow. A whole host lost
    (no connection close) is left to JAX's heartbeats (100 s).
    """

    _KEY = "moon_jax/lifeline"
    _DONE = b"done\n"

    def __init__(self, index: int, count: int):
        self.index, self.count = index, count
        self.finished = False
        self._connections: list[socket.socket] = []

    @classmethod
    def connect(cls, index: int, count: int, timeout_s: float = 300.0) -> "Lifeline":
        """Opens the lifeline of process ``index`` of ``count`` (every process calls this)."""
        from jax._src import distributed  # the coordination client; jax has no public accessor

        client = distributed.global_state.client
        lifeline = cls(index, count)
        if index == 0:
            server = socket.create_server(("", 0))
            client.key_value_set(cls._KEY, str(server.getsockname()[1]))
            for _ in range(count - 1):
                server.settimeout(timeout_s)
                conn, _ = server.accept()
                peer = int(conn.recv(16).decode().strip() or -1)
                lifeline._watch(conn, peer)
            server.close()
        else:
            port = int(client.blocking_key_value_get(cls._KEY, int(timeout_s * 1000)))
            host = distributed.global_state.coordinator_address.rsplit(":", 1)[0].strip("[]")
            conn = socket.create_connection((host, port), timeout=timeout_s)
            conn.sendall(f"{index}\n".encode())
            lifeline._watch(conn, 0)
        return lifeline

    def _watch(self, conn: socket.socket, peer: int) -> None:
        conn.settimeout(None)
        self._connections.append(conn)
        threading.Thread(target=self._wait_for, args=(conn, peer), daemon=True, name=f"lifeline-{peer}").start()

    def _wait_for(self, conn: socket.socket, peer: int) -> None:
        """Blocks until ``peer``'s connection says ``done`` or closes; a close stops this process."""
        try:
            message = conn.recv(len(self._DONE))
        except OSError:
            message = b""
        if message == self._DONE or self.finished:
            return
        print(f"error: process {peer} of this {self.count}-process job stopped before finishing (killed, crashed or "
              f"out of memory; see its output), so process {self.index} stops too. Every complete checkpoint is "
              f"intact: start all {self.count} processes again with the same command to resume.",
              file=sys.stderr, flush=True)
        os._exit(PEER_LOST)

    def finish(self) -> None:
        """Tells the peers this process finished normally."""
        self.finished = True
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.sendall(self._DONE)


def compilation_cache_dir() -> Optional[str]:
    """Where compiled XLA programs are cached across runs, or ``None`` when turned off.

    ``MOON_JAX_COMPILATION_CACHE``: a directory, or ``0`` / ``off`` to turn the cache off;
    default ``$XDG_CACHE_HOME/moon_jax/xla`` (``~/.cache/moon_jax/xla``).
    """
    setting = os.environ.get("MOON_JAX_COMPILATION_CACHE", "")
    if setting.lower() in ("0", "off", "false", "no"):
        return None
    if setting:
        return setting
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "moon_jax", "xla")


def enable_compilation_cache() -> Optional[str]:
    """Turns on JAX's persistent compilation cache in :func:`compilation_cache_dir`, so a re-run
    (a resumed run, eval.py on the same model) loads its compiled steps instead of compiling
    them again. Returns the directory, or ``None`` when turned off."""
    directory = compilation_cache_dir()
    if directory is None:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


