"""Training: the config and its validation, what the config builds (setup), the state and the
jitted steps, the resumable loop, the run directory and its checkpoints, progress reporting
(device placement is :mod:`moon_jax.devices`, below this package and evaluation).

Imports only the method and leaf packages (``sparse``, ``moon``, ``models``, ``data``); periodic
and final evaluation come from the caller (``moon_jax.programs.train_and_evaluate``).
"""
from moon_jax.training.checkpoint import CheckpointError, Checkpointer
from moon_jax.training.config import ConfigError, base_config, describe_method, scaled_reference_recipe, validate_config
from moon_jax.training.input_pipeline import RunData, load_run_data
from moon_jax.training.loop import (
    NonFiniteError,
    build_run,
    compile_steps,
    refresh_averaged_batch_stats,
    train,
    training_batches,
)
from moon_jax.training.setup import (
    BatchSplit,
    EpochSchedule,
    Preprocessing,
    TrainingSetup,
    abstract_train_state,
    create_batch_split,
    create_epoch_schedule,
    create_learning_rate_fn,
    create_model,
    create_moon_loss,
    create_optimizer,
    create_sparse_updater,
    create_train_state,
    create_training_setup,
)
from moon_jax.training.state import TrainState
from moon_jax.training.stopping import Preempted, StopRequests

__all__ = [
    "BatchSplit",
    "CheckpointError",
    "Checkpointer",
    "ConfigError",
    "EpochSchedule",
    "NonFiniteError",
    "Preempted",
    "Preprocessing",
    "RunData",
    "StopRequests",
    "TrainState",
    "TrainingSetup",
    "abstract_train_state",
    "base_config",
    "build_run",
    "compile_steps",
    "create_batch_split",
    "create_epoch_schedule",
    "create_learning_rate_fn",
    "create_model",
    "create_moon_loss",
    "create_optimizer",
    "create_sparse_updater",
    "create_train_state",
    "create_training_setup",
    "describe_method",
    "load_run_data",
    "refresh_averaged_batch_stats",
    "scaled_reference_recipe",
    "train",
    "training_batches",
    "validate_config",
]
