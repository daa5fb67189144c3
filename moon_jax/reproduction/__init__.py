"""Reproducing the paper's comparison (a program-level driver beside ``moon_jax.programs``, run by
``reproduce.py``): train several methods x seeds with ``train.py``, evaluate each run, and write
one Markdown report (at ``--output``, by default ``docs/REPRODUCTION.md``; e.g. the committed
``docs/REPRODUCTION_CPU.md``) with the scale and why, date, machine, exact commands, wall time per
run, summary tables (mean ± sample std over seeds), per-OOD-set AUROC / FPR95, MOON's p(unknown)
and the voting's effect, and the paper's claims checked against what was measured.

The claims (Lei et al., Sec. 5 and Table 1): sparse training lowers OOD detection against dense
(mean AUROC), and MOON added to a sparse method raises its mean AUROC by several points at about
the same accuracy and with lower ECE; Figure 5's ablations (each of MOON's parts helps) and
Figure 3's baselines (Mixup, CigL). They are reported as paired differences (same seed), mean
± std over seeds, with the verdict for each direction as measured -- whichever way it goes.

The headline mean AUROC / FPR95 is over the OOD sets that are not synthetic noise (for CIFAR-10:
Tiny ImageNet resized, MNIST, the Textures subset, the paper's benchmark); the noise sets are shown
in a separate column.

Runs go through ``train.py`` as users run it (one subprocess each, its output appended to
``<workdir>/train.log``), ``parallel`` at a time. On one GPU several small runs (ResNet-18 on
CIFAR) do not fill it alone; concurrent processes do, each limited to a share of the GPU memory
(``XLA_PYTHON_CLIENT_MEM_FRACTION``). A rerun of the same command resumes every unfinished run
from its checkpoint and re-evaluates the finished ones (``train.py`` is idempotent). Each
invocation's wall time per run is appended to ``<workdir>/wall_time.jsonl``; the report shows
the sum, or says which invocations left no record (the driver writes each invocation's command
to ``train.log`` first, so one killed with the machine is counted).

One module per job: ``methods`` (the catalogue, groups, labels, comparisons), ``workdirs`` (the
run directories' file names, the wall-time records), ``records`` (a finished run's small files,
kept without its checkpoints and restored), ``planning`` (the runs and their configs),
``runner`` (the train.py subprocesses), ``stats`` (metrics, means over seeds, paired
differences), ``formatting``, ``claims`` and ``report`` (the Markdown), ``driver`` (all of it,
for ``reproduce.py``). It uses ``moon_jax.programs``, ``training`` and ``evaluation``; nothing in
the ``moon_jax`` packages imports it.
"""
from moon_jax.reproduction.claims import claim_checks
from moon_jax.reproduction.driver import Request, reproduce
from moon_jax.reproduction.methods import (
    ABLATION_METHODS,
    BASELINE_METHODS,
    CIGL_DROP_RATE,
    COMPARISONS,
    METHOD_GROUPS,
    METHODS,
    MIXUP_ALPHA,
    PAPER_METHODS,
    SOLO_SPARSE_METHODS,
    SPARSE_NAMES,
    Method,
    expand_methods,
    method_label,
    sparsity_level,
)
from moon_jax.reproduction.planning import RunSpec, check_specs, plan_runs, run_is_complete, spec_config
from moon_jax.reproduction.report import display_command, moon_table, per_set_table, reproduction_report, summary_table
from moon_jax.reproduction.runner import RunOutcome, child_environment, run_all
from moon_jax.reproduction.stats import aggregate, is_noise_set, paired_difference, run_metrics, voting_difference
from moon_jax.reproduction.workdirs import (WALL_TIME_FILE, WallTime, open_train_log, record_wall_time,
                                           wall_time_records, wall_time_summary)

__all__ = [
    "ABLATION_METHODS", "BASELINE_METHODS", "CIGL_DROP_RATE", "COMPARISONS", "METHODS", "METHOD_GROUPS",
    "MIXUP_ALPHA", "PAPER_METHODS", "SOLO_SPARSE_METHODS", "SPARSE_NAMES", "WALL_TIME_FILE", "WallTime", "Method", "Request", "RunOutcome", "RunSpec",
    "aggregate", "check_specs", "child_environment", "claim_checks", "display_command", "expand_methods",
    "is_noise_set", "method_label", "moon_table", "open_train_log", "paired_difference", "per_set_table", "plan_runs",
    "record_wall_time", "reproduce", "reproduction_report", "run_all", "run_is_complete", "run_metrics",
    "sparsity_level", "spec_config", "summary_table", "voting_difference",
    "wall_time_records", "wall_time_summary",
]
