"""Train a sparse (and optionally MOON) model, resuming from the latest checkpoint in --workdir.

    python train.py                                    # configs/default.py: MOON + RigL on digits
    python train.py --config configs/cifar10_resnet18.py --workdir runs/c10_moon_rigl
    python train.py --config configs/cifar10_resnet18.py --config.sparse.method=set --config.moon.enabled=False

Re-running the same command continues from the newest checkpoint. At the end the evaluation table
is printed and written to <workdir>/eval.json; `python eval.py --workdir ...` recomputes it.
"""
import os

from absl import app, flags

from moon_jax.programs import define_config_flag, quiet_library_logs, run_program

_HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS
define_config_flag(os.path.join(_HERE, "configs", "default.py"))
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results (default: runs/<config name>).")
flags.DEFINE_bool(
    "multihost", False,
    "Call jax.distributed.initialize() first (TPU pods, multi-node GPU); also set by the "
    "environment variable MOON_JAX_MULTIHOST=1.",
)
flags.DEFINE_integer(
    "stop_at_step", None,
    "Save a checkpoint and stop once this global step is reached (for time-limited sessions); "
    "re-run to continue.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    from moon_jax.programs import default_workdir, enable_compilation_cache, initialize_distributed, train_and_evaluate

    initialize_distributed(FLAGS.multihost)
    enable_compilation_cache()
    workdir = FLAGS.workdir or default_workdir(FLAGS["config"].config_filename)
    train_and_evaluate(FLAGS.config, workdir, stop_at_step=FLAGS.stop_at_step)


if __name__ == "__main__":
    run_program(lambda: app.run(main))
