"""Shared test helpers: loading the repository's config files and small run configs."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG_NAMES = ("default", "cifar10_resnet18", "cifar10_cpu", "cifar10_cpu_large", "cifar100_resnet18", "imagenet_resnet50")
SHARED_DATA = REPO.parent / "shared" / "data"


def load_config(name: str):
    """``get_config()`` of ``configs/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_digits_config():
    """The default job shrunk to 8 epochs x 10 steps, with every mechanism still active:
    RigL updates every 5 steps until step 48, MOON warm-up 2 epochs, averaging over 2 epochs."""
    config = load_config("default")
    config.data.num_train_examples = 320
    config.train.batch_size = 32
    config.train.epochs = 8
    config.train.constant_lr_epochs = 2
    config.train.log_every_steps = 7
    config.train.eval_every_epochs = 4
    config.train.checkpoint_every_epochs = 2
    config.train.progress_bar = False
    config.sparse.update_every = 5
    config.sparse.end_fraction = 0.6
    config.moon.warmup_epochs = 2
    config.moon.averaging_epochs = 2
    return config


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Decoded-image caches go to a per-session temporary directory, not ~/.cache."""
    if "MOON_JAX_CACHE_DIR" not in os.environ:
        os.environ["MOON_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("moon_jax_cache"))
    yield
