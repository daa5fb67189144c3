"""Reproduce the paper's comparison: train dense, RigL, MOON + RigL, SET and MOON + SET with
train.py, evaluate each run on every OOD set, and write one report (docs/REPRODUCTION.md).

    # CIFAR-10 / ResNet-18 / 90% ERK with the reference schedule (needs a GPU: 5 x 100 epochs)
    python benchmarks/reproduce.py --parallel=5
    # three seeds
    python benchmarks/reproduce.py --seeds=0,1,2 --parallel=5
    # the digits default job and its baselines on a laptop (the README's results table)
    python benchmarks/reproduce.py --config=configs/default.py --seeds=0,1,2 --root=runs/repro_digits \\
        --output=runs/repro_digits/REPRODUCTION.md
    # the CPU-scale comparison (2 CPU cores, ~15 min a run): the paper's methods x 3 seeds, the
    # ablations and baselines x 1 seed; run it in the background, re-run the same command to resume
    python benchmarks/reproduce.py --config=configs/cifar10_cpu.py --seeds=0,1,2 \\
        --methods=paper,ablations@0,baselines@0,moon_rigl_reference_head@0 \\
        --root=runs/repro_cpu --output=docs/REPRODUCTION_CPU.md --no-plots
    # a CPU smoke test of the whole path: any --config.a.b=value is passed to every run
    python benchmarks/reproduce.py --root=runs/repro_smoke --output=runs/repro_smoke/REPRODUCTION.md \\
        --config.model.width=8 --config.train.epochs=4 --config.moon.warmup_epochs=1 \\
        --config.moon.averaging_epochs=1 --config.sparse.end_fraction=0.5 --config.data.num_train_examples=2000

Methods (--methods, comma-separated; or a group: paper, ablations, baselines, all; a name or group
with @ and seeds joined by + runs over those seeds instead of --seeds, e.g. ablations@0):
  dense, static, set, rigl, moon_dense, moon_static, moon_set, moon_rigl; the paper's Figure 5
  ablations moon_rigl_no_loss (K+1 head, plain cross-entropy), moon_rigl_fixed_alpha,
  moon_rigl_no_voting (and moon_rigl_untuned_ramp, the reference's ramp without the EWMA); Figure 3's baselines mixup_rigl (Mixup, alpha 0.2) and cigl_rigl (CigL's
  1% random mask + weight averaging, K outputs); moon_rigl_reference_head (the reference's
  10-output CIFAR-10 head) and moon_cigl_rigl (MOON with CigL's mask, as the reference ran it).
  With --methods=all the report lists the paper's methods first.

Each run is `python train.py --config=... --workdir=<root>/<method>_s<seed> ...` with its output in
<workdir>/train.log; --parallel=N runs N at once (on one GPU each gets 0.9/N of its memory).
Running the same command again skips finished runs, resumes unfinished ones and rebuilds the report.
--eval-only rebuilds the report from the workdirs without training.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from moon_jax.reproduction import (  # noqa: E402
    ABLATION_METHODS,
    BASELINE_METHODS,
    METHODS,
    PAPER_METHODS,
    RunOutcome,
    check_specs,
    plan_runs,
    reproduction_report,
    run_all,
    run_is_complete,
)

JPEG_NOTE = (
    "The CIFAR-10 in ../shared/data is a JPEG copy (quality about 75), not the original PNG-lossless "
    "images, so accuracy sits a little under published figures for the same recipe."
)


METHOD_GROUPS = {
    "paper": PAPER_METHODS,
    "ablations": ABLATION_METHODS,
    "baselines": BASELINE_METHODS,
    "all": tuple(PAPER_METHODS) + tuple(ABLATION_METHODS) + tuple(BASELINE_METHODS) + tuple(
        m for m in METHODS if m not in PAPER_METHODS + ABLATION_METHODS + BASELINE_METHODS),
}


def expand_methods(text: str) -> tuple[list[str], dict[str, list[int]]]:
    """``(methods, method_seeds)`` from a comma-separated list of method and group names, each
    optionally with its own seeds after ``@`` (``ablations@0``, ``rigl@0+1``); in order, once each.
    A method named again with other seeds gets those too (``rigl@0,rigl@1`` is ``rigl@0+1``)."""
    methods, method_seeds = [], {}
    for item in (n for n in text.split(",") if n):
        name, _, seeds = item.partition("@")
        for method in METHOD_GROUPS.get(name, (name,)):
            if method not in methods:
                methods.append(method)
            for seed in (int(s) for s in seeds.split("+") if s):
                if seed not in method_seeds.setdefault(method, []):
                    method_seeds[method].append(seed)
    return methods, method_seeds


def config_docstring(path: str) -> str:
    """The module docstring of a config file (its scale and why), or ""."""
    import ast

    try:
        return ast.get_docstring(ast.parse(Path(path).read_text())) or ""
    except (OSError, SyntaxError):
        return ""


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", default="configs/cifar10_resnet18.py", help="train.py config file")
    parser.add_argument("--methods", default="paper",
                        help=f"comma-separated names or groups ({', '.join(METHOD_GROUPS)}), from: {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--root", default="runs/repro", help="parent of the run workdirs")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (GPU: 3-5 for ResNet-18 on CIFAR)")
    parser.add_argument("--output", default="docs/REPRODUCTION.md", help="the Markdown report")
    parser.add_argument("--title", default=None, help="report title (default: from the config)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    parser.add_argument("--eval-only", action="store_true", help="no training: evaluate the workdirs and write the report")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write each run's PNG plots")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (run overrides look like --config.a.b=value)")
    args.overrides = rest
    try:
        args.methods, args.method_seeds = expand_methods(args.methods)
    except ValueError:
        parser.error(f"--methods={args.methods}: seeds after @ are integers joined by +, e.g. ablations@0+1")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)  # unwinds run_all, which stops its train.py processes cleanly


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    from moon_jax.training.config import ConfigError

    try:
        specs = plan_runs(args.config, args.methods, args.seeds, args.root, args.overrides,
                          train_script=str(_ROOT / "train.py"), method_seeds=args.method_seeds)
        check_specs(specs)
    except (ValueError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.eval_only:
        outcomes = [RunOutcome(s, 0, 0.0) for s in specs]
    else:
        done = [s for s in specs if run_is_complete(s)]
        for spec in done:
            print(f"already done: {spec.method} seed {spec.seed} ({spec.workdir})")
        ran = iter(run_all([s for s in specs if s not in done], args.parallel))
        outcomes = [RunOutcome(s, 0, 0.0) if s in done else next(ran) for s in specs]

    import jax

    from moon_jax.evaluation.checkpoint_eval import load_run_config
    from moon_jax.evaluation.compare import load_or_evaluate
    from moon_jax.training.checkpoint import CheckpointError

    results, failed = {}, [o for o in outcomes if o.returncode != 0]
    for outcome in outcomes:
        if outcome.returncode != 0:
            continue
        try:
            results[(outcome.spec.method, outcome.spec.seed)], _ = load_or_evaluate(outcome.spec.workdir, plots=args.plots)
        except CheckpointError as err:
            print(f"error: {outcome.spec.workdir}: {err}", file=sys.stderr)
            failed.append(outcome)
    if not results:
        print("error: no run finished; nothing to report (see the train.log of each workdir)", file=sys.stderr)
        return 1

    first = next(o.spec.workdir for o in outcomes if (o.spec.method, o.spec.seed) in results)
    config = load_run_config(first)
    devices = jax.devices()
    device = f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}"
    device += f", {os.cpu_count()} CPU cores: {cpu_model()})" if devices[0].platform == "cpu" else ")"
    notes = list(args.note)
    if config.data.dataset == "cifar10" and config.data.source != "tfds":
        notes.append(JPEG_NOTE)
    if failed:
        notes.append(f"{len(failed)} run(s) failed and are left out of the tables: see the Runs table and their train.log.")
    title = args.title or f"Reproduction: {config.data.dataset} / {config.model.name} / {100 * config.sparse.sparsity:g}% {config.sparse.distribution}"
    invocation = shlex.join(["python", "benchmarks/reproduce.py", *argv])
    report = reproduction_report(title, outcomes, results, args.methods, config.sparse.sparsity, device, invocation, notes,
                                 scale=config_docstring(args.config))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(report)
    print(f"report written to {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
