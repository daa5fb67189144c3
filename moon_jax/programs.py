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


def default_workdir(config_path: str) -> str:
    """``runs/<config file name>`` for a config file path (``runs/default`` for the default)."""
    name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    return os.path.join("runs", name)


def run_program(main: Callable[[], None]) -> None:
    """Runs ``main``, printing known errors as ``error: ...`` on stderr with an exit status."""
    from moon_jax.data import DatasetNotFoundError
    from moon_jax.training.checkpoint import CheckpointError
    from moon_jax.training.config import ConfigError
    from moon_jax.training.loop import NonFiniteError, Preempted

    try:
        main()
    except Preempted as stop:
        print(stop.message, file=sys.stderr, flush=True)
        sys.exit(stop.code)
    except (ConfigError, DatasetNotFoundError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR)
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(DIVERGED)
