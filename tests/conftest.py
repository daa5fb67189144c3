"""Shared test helpers: loading the repository's config files, small run configs, running the
programs, restoring a run's final state, listening to JAX's compilations."""
import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Scripts run as subprocesses from elsewhere (the multi-device runner, the example, the notebook's
# kernel) import this checkout's moon_jax, not another one installed in editable mode.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
CONFIG_NAMES = ("default", "cifar10_resnet18", "cifar10_cpu", "cifar10_cpu_large", "cifar100_resnet18", "imagenet_resnet50")
SHARED_DATA = REPO.parent / "shared" / "data"


def load_config(name: str):
    """``get_config()`` of ``configs/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_digits_config(checkpoint_every_epochs: int = 2):
    """The default job shrunk to 8 epochs x 10 steps, with every mechanism still active:
    RigL updates every 5 steps until step 48, MOON warm-up 2 epochs, averaging over 2 epochs."""
    config = load_config("default")
    config.data.num_train_examples = 320
    config.train.batch_size = 32
    config.train.epochs = 8
    config.train.constant_lr_epochs = 2
    config.train.log_every_steps = 7
    config.train.eval_every_epochs = 4
    config.train.checkpoint_every_epochs = checkpoint_every_epochs
    config.train.progress_bar = False
    config.sparse.update_every = 5
    config.sparse.end_fraction = 0.6
    config.moon.warmup_epochs = 2
    config.moon.averaging_epochs = 2
    return config


def short_digits_config(epochs: int):
    """:func:`tiny_digits_config` cut to ``epochs`` epochs: MOON warm-up and averaging one epoch
    each, RigL updates over the first half."""
    config = tiny_digits_config()
    config.train.epochs = epochs
    config.moon.warmup_epochs = 1
    config.moon.averaging_epochs = 1
    config.sparse.end_fraction = 0.5
    return config


def tiny_config_file(path: Path, **arguments) -> Path:
    """Writes a config file for ``train.py --config`` whose ``get_config()`` is
    ``tiny_digits_config(**arguments)``; returns ``path``."""
    path.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nfrom conftest import tiny_digits_config\n\n\n"
        f"def get_config():\n    return tiny_digits_config(**{arguments!r})\n"
    )
    return path


def run_python(args, cwd=None, timeout=600):
    """``python <args>`` in ``cwd`` (this interpreter): the completed process, output as text."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def restore_final(config, workdir):
    """The latest checkpoint of the run of ``config`` in ``workdir``: ``(state, meta)``."""
    from moon_jax.training import Checkpointer, abstract_train_state, build_run

    data, setup = build_run(config, with_ood=False)
    return Checkpointer(workdir).restore(abstract_train_state(setup, data.image_shape), config)


@contextlib.contextmanager
def compiled_function_names():
    """Yields a list that collects the name of every function JAX compiles inside the ``with``
    block (``"jit(train_step)"``, ...), so tests can count recompilations."""
    from jax._src import monitoring  # the listener API that names the compiled function

    names = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name")))

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Decoded-image caches go to a per-session temporary directory, not ~/.cache."""
    if "MOON_JAX_CACHE_DIR" not in os.environ:
        os.environ["MOON_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("moon_jax_cache"))
    yield
