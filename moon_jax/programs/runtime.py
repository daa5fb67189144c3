"""The process around a run: multi-host initialisation and JAX's persistent compilation cache."""
from __future__ import annotations

import os
from typing import Optional


def initialize_distributed(requested: bool) -> None:
    """``jax.distributed.initialize()`` when asked (flag or ``MOON_JAX_MULTIHOST=1``).

    On TPU pods and Slurm/Kubernetes GPU clusters JAX finds the coordinator by itself; every
    process then runs the same program, sees every device of the job, and process 0 alone writes
    logs and results (orbax coordinates the checkpoint writes).
    """
    import jax

    if requested or os.environ.get("MOON_JAX_MULTIHOST", "") not in ("", "0"):
        jax.distributed.initialize()


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


