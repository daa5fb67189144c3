"""The command line of the programs: the ``--config`` flag and its overrides, the config as the
user meant it (phases scaled to a changed epoch count, dataset paths resolved), the default
workdir, and known failures turned into one ``error:`` line and an exit status instead of a
stack trace.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable, Iterable

from absl import flags, logging
from ml_collections import config_flags

from moon_jax.data import DatasetFormatError, DatasetNotFoundError, resolve_dataset_path
from moon_jax.metrics import split_group_prefix
from moon_jax.training import CheckpointError, ConfigError, NonFiniteError, Preempted
from moon_jax.training.config import scale_phases_to_epochs
from moon_jax.training.files import WriteError
from moon_jax.training.run_directory import WorkdirBusyError

# Exit statuses: 2 for a problem the user can fix (config, data, checkpoint, workdir, disk), 3 for
# a diverged run, 130 for Ctrl-C (128 + SIGINT), 143 for preemption (128 + SIGTERM).
USER_ERROR = 2
DIVERGED = 3
INTERRUPTED = 130


def quiet_library_logs() -> None:
    """Orbax logs every checkpoint step at INFO through absl; show warnings only unless the user
    asked for a verbosity (``--verbosity`` / ``-v``)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def bundled_configs_dir() -> str:
    """Where the repository's ``configs/`` are: beside the package in a checkout (or an editable
    install), else where a wheel installs them (``<prefix>/share/moon-jax/configs``)."""
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
    if os.path.isdir(checkout):
        return checkout
    return os.path.join(sys.prefix, "share", "moon-jax", "configs")


def bundled_config(name: str) -> str:
    """The path of the bundled config file ``name`` (e.g. ``default.py``)."""
    return os.path.join(bundled_configs_dir(), name)


def find_config_file(path: str) -> str:
    """``path`` (``file.py[:argument]``) when it exists, else the bundled config of that file name
    when there is one (``--config configs/cifar10_cpu.py`` works outside the repository), else
    ``path`` unchanged (and :func:`config_file_problem` says what is wrong)."""
    file, sep, argument = path.partition(":")
    if not file or os.path.isfile(file):
        return path
    bundled = bundled_config(os.path.basename(file))
    return bundled + sep + argument if os.path.isfile(bundled) else path


def default_workdir(config_path: str) -> str:
    """``runs/<config file name>`` for a config file path (``runs/default`` for the default)."""
    name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    return os.path.join("runs", name)


def define_config_flag(default_path: str) -> None:
    """Defines ``--config`` (a config file plus ``--config.a.b=value`` overrides).

    ml_collections applies the overrides while the flag is defined; a mistyped field then raises
    deep inside it. Report it as one line naming the override instead.
    """
    path = config_path_argument(sys.argv)
    if path is not None:
        path = find_config_file(path)
        set_config_path_argument(sys.argv, path)
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


def _load_module(file: str):
    spec = importlib.util.spec_from_file_location("_moon_jax_config_file", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_config_path_argument(argv: list[str], path: str) -> None:
    """Rewrites the ``--config`` value in ``argv`` (in place) to ``path``."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            argv[i] = f"--config={path}"
        elif arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = path


def load_config_file(path: str):
    """``get_config()`` (or ``get_config(argument)``) of config file ``path`` (``file.py`` or
    ``file.py:argument``), without command-line overrides."""
    file, _, argument = path.partition(":")
    module = _load_module(file)
    return module.get_config(argument) if argument else module.get_config()


def config_file_problem(path: str) -> str | None:
    """What is wrong with config file ``path`` (``file.py`` or ``file.py:argument``), as one line,
    or None when it loads and defines ``get_config``.

    Checked before ml_collections loads it, which reports a missing file, a syntax error or a
    missing ``get_config`` as a stack trace.
    """
    file = path.split(":", 1)[0]
    if not file:
        return "--config is empty; pass a config file such as configs/default.py"
    if not os.path.isfile(file):
        return (f"config file {file} not found (--config={path}, relative to {os.getcwd()}); "
                f"pass an existing file such as configs/default.py")
    try:
        module = _load_module(file)
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for ``app.run(..., flags_parser=parse_flags)``, with a value of the
    wrong type (``--config.train.epochs=abc``, ``--stop_at_step=x``) reported as one ``error:``
    line and exit status 2, like every other config mistake, instead of absl's FATAL message."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {' '.join(str(err).split())} (see --help)", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR)


def explicit_overrides(argv: Iterable[str]) -> set[str]:
    """The config fields given on the command line (``--config.train.epochs=3`` -> ``train.epochs``)."""
    return {a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")}


def prepare_config(config, argv: Iterable[str], file_epochs: int, say: Callable[[str], None] = print):
    """The config as the user meant it: when ``train.epochs`` was changed on the command line
    (from the config file's ``file_epochs``), the recipe's phases that were not are scaled with
    it, and one line says which; dataset paths are made absolute, so a run does not depend on the
    folder it was started from."""
    explicit = explicit_overrides(argv)
    with config.unlocked():
        if "train.epochs" in explicit:
            scaled = scale_phases_to_epochs(config, file_epochs, keep=explicit)
            if scaled:
                say(f"--config.train.epochs={config.train.epochs}: phases scaled with it ("
                    + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in scaled.items())
                    + "); give any of them explicitly to keep its value")
        config.data.dataset = resolve_dataset_path(config.data.dataset)
        config.data.ood_datasets = tuple(_resolve_ood_name(name) for name in config.data.ood_datasets)
    return config


def _resolve_ood_name(name: str) -> str:
    group, rest = split_group_prefix(name)
    return f"{group}:{resolve_dataset_path(rest)}" if group else resolve_dataset_path(name)


def run_program(main: Callable[[], None]) -> None:
    """Runs ``main``, printing known errors as ``error: ...`` on stderr with an exit status."""
    try:
        main()
    except Preempted as stop:
        print(stop.message, file=sys.stderr, flush=True)
        sys.exit(stop.code)
    except (ConfigError, DatasetNotFoundError, DatasetFormatError, CheckpointError, WriteError, WorkdirBusyError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR)
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(DIVERGED)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C) outside the training steps; every checkpoint saved so far is intact",
              file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED)
