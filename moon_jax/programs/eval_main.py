"""The flags and ``main`` of the ``eval.py`` program, installed as ``moon-jax-eval`` too (its usage is in
``eval.py``'s docstring)."""
from absl import app, flags

from moon_jax import data
from moon_jax.evaluation.checkpoint_eval import evaluate_workdir
from moon_jax.evaluation.compare import compare_workdirs
from moon_jax.evaluation.score_registry import check_names
from moon_jax.metrics import split_group_prefix
from moon_jax.programs.cli import parse_flags, quiet_library_logs, run_program
from moon_jax.programs.runtime import define_distributed_flags, distributed_job_from_flags, enable_compilation_cache
from moon_jax.training.config import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
flags.DEFINE_boolean(
    "compare", False,
    "Compare the workdirs given as arguments: one table per ID set, and report.md. OOD means cover only the OOD "
    "sets all runs of a table share; a line under the table names what each run's mean left out.",
)
flags.DEFINE_list(
    "ood", None,
    "OOD sets to evaluate (default: the run's config.data.ood_datasets): registered names, or paths to a folder of "
    "images, an image list (.txt) or a packed .npz, reported under the folder / file name; a path is far-OOD "
    "unless written near:<path>.",
)
flags.DEFINE_list(
    "scores", None,
    "OOD scores, the first one primary (default: every score that applies, moon_msp first for K+1 models, msp "
    "otherwise). Allowed: the names in SCORES of moon_jax/evaluation/score_registry.py (moon_msp, knn, ...); a "
    "wrong name is answered with the full list.",
)
flags.DEFINE_string("data_dir", None, "Where the datasets are (default: the run's config / MOON_JAX_DATA_DIR).")
flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default: the run's config.train.eval_batch_size).")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
flags.DEFINE_string(
    "output", None,
    "JSON output path, plots go next to it (default: <workdir>/eval.json); with --compare, the directory of "
    "report.md (default: the current directory).",
)
define_distributed_flags()
flags.DEFINE_boolean("plots", True, "Write the PNG plots (--noplots skips them).")
flags.DEFINE_integer(
    "train_features", 10000,
    "At most this many ID training images (fixed random subset) give the statistics of mahalanobis, knn, react.",
)


def _check_scores(names):
    """Unknown or repeated score names stop eval.py with one line (exit status 2) before the
    checkpoint loads; the score registry (moon_jax/evaluation/score_registry.py) decides."""
    try:
        check_names(names or ())
    except ValueError as err:
        raise ConfigError(f"--scores: {err}") from None


def _check_ood(names):
    """Unknown OOD names and bad OOD paths stop eval.py with one line (exit status 2) before the
    checkpoint loads."""

    for name in names or ():
        name = split_group_prefix(name)[1]
        if name in data.available_datasets() or name.startswith("tfds:"):
            continue
        if not data.names_a_path(name):
            raise ConfigError(
                f"--ood: unknown OOD set {name!r}; allowed: {', '.join(data.available_datasets())}, 'tfds:<name>', "
                f"or a path to a folder of images, an image list (.txt) or a packed .npz")
        try:
            data.check_dataset_path(name, "ood")
        except (data.DatasetNotFoundError, data.DatasetFormatError) as err:
            raise ConfigError(f"--ood: {err}") from None


def main(argv):
    """``eval.py``'s absl entry point: the flags checked, then a run evaluated (or runs compared)."""
    quiet_library_logs()
    _check_scores(FLAGS.scores)
    _check_ood(FLAGS.ood)
    with distributed_job_from_flags():
        _evaluate(argv)


def _evaluate(argv):
    enable_compilation_cache()
    if FLAGS.compare:
        workdirs = argv[1:]
        if not workdirs:
            raise app.UsageError("--compare needs workdirs: eval.py --compare DIR1 DIR2 ...")
        if FLAGS.workdir or FLAGS.step is not None:
            raise app.UsageError("--compare takes workdirs as arguments; --workdir and --step do not apply")
        table, report, _ = compare_workdirs(
            workdirs, output_dir=FLAGS.output, plots=FLAGS.plots, ood=FLAGS.ood, scores=FLAGS.scores,
            data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size, train_examples=FLAGS.train_features,
        )
        print(table)
        print(f"\nreport written to {report}")
        return
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (to compare runs, add --compare)")
    if not FLAGS.workdir:
        raise app.UsageError("pass --workdir=<a train.py workdir>, or --compare DIR1 DIR2 ...")
    evaluate_workdir(
        FLAGS.workdir,
        ood=FLAGS.ood,
        scores=FLAGS.scores,
        data_dir=FLAGS.data_dir,
        batch_size=FLAGS.batch_size,
        step=FLAGS.step,
        output=FLAGS.output,
        plots=FLAGS.plots,
        train_examples=FLAGS.train_features,
    )


def run() -> None:
    """The ``eval.py`` / ``moon-jax-eval`` command."""
    run_program(lambda: app.run(main, flags_parser=parse_flags))
