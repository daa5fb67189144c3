"""Evaluate the model saved in a training workdir: ACC, ECE, NLL and OOD detection per set.

    python eval.py --workdir runs/default
    python eval.py --workdir runs/c10 --ood=tin_resize,mnist --scores=moon_msp,energy

The run's config is read from its checkpoint. The weight-averaged model is evaluated when the run
has one (MOON), else the last iterate. Prints a Markdown table and writes <workdir>/eval.json
(or --output).
"""
from absl import app, flags

from moon_jax.programs import quiet_library_logs, run_program

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.", required=True)
flags.DEFINE_list("ood", None, "OOD sets to evaluate (default: the run's config.data.ood_datasets).")
flags.DEFINE_list("scores", None, "OOD scores (default: all MOON scores for K+1 models, MSP and energy otherwise).")
flags.DEFINE_string("data_dir", None, "Where the datasets are (default: the run's config / MOON_JAX_DATA_DIR).")
flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default: the run's config.train.eval_batch_size).")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
flags.DEFINE_string("output", None, "JSON output path (default: <workdir>/eval.json).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    from moon_jax.evaluation.checkpoint_eval import evaluate_workdir

    evaluate_workdir(
        FLAGS.workdir,
        ood=FLAGS.ood,
        scores=FLAGS.scores,
        data_dir=FLAGS.data_dir,
        batch_size=FLAGS.batch_size,
        step=FLAGS.step,
        output=FLAGS.output,
    )


if __name__ == "__main__":
    run_program(lambda: app.run(main))
