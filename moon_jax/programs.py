"""What the programs (train.py, eval.py, benchmarks, notebooks) share: ``train_and_evaluate``
(training with periodic and final evaluation), JAX's persistent compilation cache, turning known
failures into one clear message and an exit status instead of a stack trace, and the default
workdir.

This is program level: it imports ``moon_jax.training`` and ``moon_jax.evaluation``, and no
package of moon_jax imports it.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

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


def train_and_evaluate(config, workdir, evaluate_at_end: bool = True, stop_at_step: Optional[int] = None) -> dict:
    """Trains (resuming from ``workdir``) with periodic evaluation, then evaluates the final model.

    Returns the final evaluation results (:func:`moon_jax.evaluation.runner.evaluate_state`),
    also written to ``<workdir>/eval.json`` and printed as a Markdown table. With
    ``stop_at_step`` the run saves a checkpoint at that global step and returns ``{}`` (a later
    call continues it); ``evaluate_at_end=False`` returns ``{}`` after training.
    """
    import jax

    from moon_jax.evaluation import format_results
    from moon_jax.evaluation.runner import evaluate_state, periodic_classification
    from moon_jax.training import build_run, describe_method, train

    data, setup = build_run(config)
    state = train(config, workdir, data, setup, periodic_eval=periodic_classification(data, config), stop_at_step=stop_at_step)
    if state is None or not evaluate_at_end:
        return {}
    results = evaluate_state(setup, state, data, config)
    if jax.process_index() == 0:
        (Path(workdir) / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
        title = f"{config.data.dataset} / {config.model.name} / {describe_method(config)} ({results['model']})"
        print(format_results(results, title=title))
    return results


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

    path = config_path_argument(sys.argv)
    if path is not None:
        problem = config_file_problem(path)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(USER_ERROR)
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


def config_path_argument(argv) -> str | None:
    """The value of ``--config=PATH`` / ``--config PATH`` in ``argv`` (None when not given)."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def config_file_problem(path: str) -> str | None:
    """What is wrong with config file ``path`` (``file.py`` or ``file.py:argument``), as one line,
    or None when it loads and defines ``get_config``.

    Checked before ml_collections loads it, which reports a missing file, a syntax error or a
    missing ``get_config`` as a stack trace.
    """
    import importlib.util

    file = path.split(":", 1)[0]
    if not file:
        return "--config is empty; pass a config file such as configs/default.py"
    if not os.path.isfile(file):
        return (f"config file {file} not found (--config={path}, relative to {os.getcwd()}); "
                f"pass an existing file such as configs/default.py")
    try:
        spec = importlib.util.spec_from_file_location("_moon_jax_config_check", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as err:  # a user's file: any error it raises is reported, not traced
        where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        return f"config file {file} cannot be loaded{where}: {type(err).__name__}: {' '.join(str(err).split())}"
    if not callable(getattr(module, "get_config", None)):
        return f"config file {file} defines no get_config() function; start from configs/default.py"
    return None


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
    from moon_jax.training import CheckpointError, ConfigError, NonFiniteError, Preempted

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
