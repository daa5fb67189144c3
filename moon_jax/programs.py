"""What train.py and eval.py share: turning known failures into one clear message and an exit
status instead of a stack trace, and the default workdir."""
from __future__ import annotations

import os
import sys
from typing import Callable

# Exit statuses: 2 for a problem the user can fix (config, data, checkpoint), 3 for a diverged
# run, 143 for preemption (128 + SIGTERM).
USER_ERROR = 2
DIVERGED = 3


def quiet_library_logs() -> None:
    """Orbax logs every checkpoint step at INFO through absl; show warnings only unless the user
    asked for a verbosity (``--verbosity`` / ``-v``)."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def initialize_distributed(requested: bool) -> None:
    """``jax.distributed.initialize()`` when asked (flag or ``MOON_JAX_MULTIHOST=1``).

    On TPU pods and Slurm/Kubernetes GPU clusters JAX finds the coordinator by itself; every
    process then runs the same program, sees every device of the job, and process 0 alone writes
    logs and results (orbax coordinates the checkpoint writes).
    """
    import jax

    if requested or os.environ.get("MOON_JAX_MULTIHOST", "") not in ("", "0"):
        jax.distributed.initialize()


def default_workdir(config_path: str) -> str:
    """``runs/<config file name>`` for a config file path (``runs/default`` for the default)."""
    name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    return os.path.join("runs", name)


def define_config_flag(default_path: str) -> None:
    """Defines ``--config`` (a config file plus ``--config.a.b=value`` overrides).

    ml_collections applies the overrides while the flag is defined; a mistyped field then raises
    deep inside it. Report it as one line naming the override instead.
    """
    from ml_collections import config_flags

    try:
        config_flags.DEFINE_config_file("config", default_path, "Run configuration file.", lock_config=True)
    except (AttributeError, KeyError, ValueError, TypeError) as err:
        overrides = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
        print(
            f"error: a config override is not valid ({config_error_detail(err)}); overrides given: {', '.join(overrides) or 'none'}. "
            f"Fields are listed in moon_jax/training/config.py (base_config).",
            file=sys.stderr,
        )
        sys.exit(USER_ERROR)


def config_error_detail(err: BaseException) -> str:
    """The innermost message of an error ml_collections raised while applying overrides, on one
    line."""
    inner = err
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    return " ".join(str(inner.args[0] if inner.args else inner).split())


def run_program(main: Callable[[], None]) -> None:
    """Runs ``main``, printing known errors as ``error: ...`` on stderr with an exit status."""
    from moon_jax.data import DatasetFormatError, DatasetNotFoundError
    from moon_jax.training.checkpoint import CheckpointError
    from moon_jax.training.config import ConfigError
    from moon_jax.training.loop import NonFiniteError, Preempted

    try:
        main()
    except Preempted as stop:
        print(stop.message, file=sys.stderr, flush=True)
        sys.exit(stop.code)
    except (ConfigError, DatasetNotFoundError, DatasetFormatError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR)
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(DIVERGED)
