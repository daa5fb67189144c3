"""The flags and ``main`` of the ``train.py`` program, installed as ``moon-jax-train`` too (its usage is in
``train.py``'s docstring)."""
import sys

from absl import app, flags

from moon_jax.programs.cli import (bundled_config, default_workdir, define_config_flag, load_config_file, parse_flags,
                                   prepare_config, quiet_library_logs, run_program)
from moon_jax.programs.run import train_and_evaluate
from moon_jax.programs.runtime import define_distributed_flags, distributed_job_from_flags, enable_compilation_cache

FLAGS = flags.FLAGS
define_config_flag(bundled_config("default.py"))
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results (default: runs/<config name>).")
define_distributed_flags()
flags.DEFINE_integer(
    "stop_at_step", None,
    "Save a checkpoint and stop once this global step is reached (for time-limited sessions); "
    "re-run to continue.",
)
flags.DEFINE_boolean("plots", True, "Write the final evaluation's PNG plots beside eval.json (--noplots skips them).")
flags.DEFINE_list(
    "resume_with_changed", [],
    "Config fields that may differ from the checkpoint's when resuming: optimiser settings only "
    "(train.base_lr, train.lr_ini, train.lr_end, train.weight_decay, train.momentum), e.g. to "
    "continue with a lower learning rate after a divergence.",
)


def main(argv):
    """``train.py``'s absl entry point: the config from ``--config`` (with its overrides) trained
    and evaluated in ``--workdir``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    with distributed_job_from_flags():
        _train(FLAGS["config"].config_filename)


def _train(config_path: str) -> None:
    enable_compilation_cache()
    config = prepare_config(FLAGS.config, sys.argv, load_config_file(config_path).train.epochs)
    workdir = FLAGS.workdir or default_workdir(config_path)
    train_and_evaluate(config, workdir, stop_at_step=FLAGS.stop_at_step, allow_changed=FLAGS.resume_with_changed,
                       plots=FLAGS.plots)


def run() -> None:
    """The ``train.py`` / ``moon-jax-train`` command."""
    run_program(lambda: app.run(main, flags_parser=parse_flags))
