"""Reproduce the paper's comparison: train dense, RigL, MOON + RigL, SET and MOON + SET with
train.py, evaluate each run on every OOD set, and write one report (docs/REPRODUCTION.md).

    # CIFAR-10 / ResNet-18 / 90% ERK with the reference schedule (needs a GPU: 5 x 100 epochs)
    python reproduce.py --parallel=5
    # three seeds
    python reproduce.py --seeds=0,1,2 --parallel=5
    # the digits default job and its baselines on a laptop (the README's results table)
    python reproduce.py --config=configs/default.py --seeds=0,1,2 --root=runs/repro_digits \\
        --output=runs/repro_digits/REPRODUCTION.md
    # the CPU-scale comparison (2 CPU cores, ~15 min a run): the paper's methods x 3 seeds, the
    # ablations and baselines x 1 seed; run it in the background, re-run the same command to resume
    python reproduce.py --config=configs/cifar10_cpu.py --seeds=0,1,2 \\
        --methods=paper,ablations@0,baselines@0,moon_rigl_reference_head@0 \\
        --root=runs/repro_cpu --output=docs/REPRODUCTION_CPU.md --noplots
    # a CPU smoke test of the whole path: any --config.a.b=value is passed to every run
    python reproduce.py --root=runs/repro_smoke --output=runs/repro_smoke/REPRODUCTION.md \\
        --config.model.width=8 --config.train.epochs=4 --config.moon.warmup_epochs=1 \\
        --config.moon.averaging_epochs=1 --config.sparse.end_fraction=0.5 --config.data.num_train_examples=2000

Methods (--methods, comma-separated; or a group: paper, ablations, baselines, pruning, all; a name or group
with @ and seeds joined by + runs over those seeds instead of --seeds, e.g. ablations@0):
  dense, static, set, rigl, moon_dense, moon_static, moon_set, moon_rigl; the paper's Figure 5
  ablations moon_rigl_no_loss (K+1 head, plain cross-entropy), moon_rigl_fixed_alpha,
  moon_rigl_no_voting (and moon_rigl_untuned_ramp, the reference's ramp without the EWMA); Figure 3's baselines mixup_rigl (Mixup, alpha 0.2) and cigl_rigl (CigL's
  1% random mask + weight averaging, K outputs); moon_rigl_reference_head (the reference's
  10-output CIFAR-10 head) and moon_cigl_rigl (MOON with CigL's mask, as the reference ran it);
  pruning from dense (group pruning): gmp, saliency, random_pruning, global_magnitude,
  global_saliency, ste_magnitude, ste_random, each also with MOON (moon_gmp, ...).
  With --methods=all the report lists the paper's methods first.

Each run is `python train.py --config=... --workdir=<root>/<method>_s<seed> ...` with its output in
<workdir>/train.log; --parallel=N runs N at once (on one GPU each gets 0.9/N of its memory).
Running the same command again skips finished runs, resumes unfinished ones and rebuilds the report.
--eval_only rebuilds the report from the workdirs without training.
--records=DIR keeps each finished run's small files (config.json, eval.json, train.log, wall_time.jsonl) in
DIR/<method>_s<seed>/, e.g. to commit beside the report; on another machine the same command restores
them under --root, counts those runs as finished (their eval.json as recorded) and trains only the rest.
"""
import os
import shlex
import signal
import sys

from absl import app, flags

from moon_jax.programs import parse_flags as parse_program_flags
from moon_jax.programs import quiet_library_logs, run_program
from moon_jax.reproduction import Request, expand_methods, reproduce
from moon_jax.training.config import ConfigError

_HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/cifar10_resnet18.py", "train.py config file of every run.")
flags.DEFINE_string(
    "methods", "paper",
    "Comma-separated method names or groups (paper, ablations, baselines, all), each optionally with its own seeds "
    "after @ joined by + (ablations@0, rigl@0+1).",
)
flags.DEFINE_list("seeds", ["0"], "Seeds of the methods given without @.")
flags.DEFINE_string("root", "runs/repro", "Parent of the run workdirs.")
flags.DEFINE_integer("parallel", 1, "Runs at once (GPU: 3-5 for ResNet-18 on CIFAR).")
flags.DEFINE_string("output", "docs/REPRODUCTION.md", "The Markdown report.")
flags.DEFINE_string("title", None, "Report title (default: from the config).")
flags.DEFINE_multi_string("note", [], "A line for the report's notes (repeatable).")
flags.DEFINE_boolean("eval_only", False, "No training: evaluate the workdirs and write the report.")
flags.DEFINE_boolean("plots", True, "Write each run's PNG plots (--noplots skips them).")
flags.DEFINE_string(
    "records", None,
    "Where the runs' records are kept (config.json, eval.json, train.log, wall_time.jsonl: enough to rebuild the "
    "report without checkpoints): runs missing under --root are restored from there first, finished ones copied "
    "there last.")


def parse_flags(argv):
    """absl parses this program's flags; the ``--config.a.b=value`` arguments are the runs'
    overrides, passed on in order to every train.py. Returns ``(remaining argv, overrides)``."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    own = [argv[0], *(a for a in argv[1:] if not a.startswith("--config."))]
    return parse_program_flags(own), overrides


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)  # unwinds run_all, which stops its train.py processes cleanly


def main(args):
    argv, overrides = args
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (run overrides look like --config.a.b=value)")
    quiet_library_logs()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        methods, method_seeds = expand_methods(FLAGS.methods)
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise ConfigError(f"--methods={FLAGS.methods} --seeds={','.join(FLAGS.seeds)}: seeds are integers, "
                          "after @ joined by +, e.g. ablations@0+1") from None
    request = Request(
        FLAGS.config, methods, method_seeds, seeds, FLAGS.root, FLAGS.output,
        invocation=shlex.join(["python", "reproduce.py", *sys.argv[1:]]), overrides=overrides,
        parallel=FLAGS.parallel, title=FLAGS.title, notes=FLAGS.note, eval_only=FLAGS.eval_only, plots=FLAGS.plots,
        records=FLAGS.records,
    )
    return reproduce(request, train_script=os.path.join(_HERE, "train.py"))


if __name__ == "__main__":
    run_program(lambda: app.run(main, flags_parser=parse_flags))
