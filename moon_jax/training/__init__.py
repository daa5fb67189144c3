"""The training loop and everything it needs: config, state and steps, data on device,
checkpoints, progress reporting."""
from moon_jax.training.checkpoint import CheckpointError, Checkpointer
from moon_jax.training.config import ConfigError, base_config, validate_config
from moon_jax.training.loop import NonFiniteError, Preempted, build_run, build_trainer, evaluate_state, train_and_evaluate
from moon_jax.training.trainer import TrainState, Trainer
