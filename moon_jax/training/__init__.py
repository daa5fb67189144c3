"""The training loop and everything it needs: config, state and steps, data on device,
checkpoints, progress reporting.

The loop's names (``train_and_evaluate``, ``build_run``, ...) are loaded on first use, so that
``moon_jax.evaluation`` can import the state types from here without a cycle.
"""
from moon_jax.training.checkpoint import CheckpointError, Checkpointer
from moon_jax.training.config import ConfigError, base_config, validate_config
from moon_jax.training.trainer import TrainState, Trainer

_LOOP_NAMES = ("NonFiniteError", "Preempted", "build_run", "build_trainer", "train_and_evaluate")


def __getattr__(name):
    if name in _LOOP_NAMES:
        from moon_jax.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'moon_jax.training' has no attribute {name!r}")
