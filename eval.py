"""Evaluate the model saved in a training workdir: ACC, calibration (ECE, NLL, Brier, temperature
scaling), OOD detection per set and per near/far group with every score, and plots.

    python eval.py --workdir runs/default
    python eval.py --workdir runs/c10 --ood=tin_resize,mnist --scores=moon_msp,energy,knn
    python eval.py --compare runs/dense runs/rigl runs/moon_rigl --output=reports/

The run's config is read from its checkpoint. The weight-averaged model is evaluated when the run
has one (MOON), else the last iterate. Prints Markdown tables and writes <workdir>/eval.json (or
--output) with reliability.png, roc.png, score_hist.png, layer_density.png and
training_curves.png next to it (--noplots skips them).

--compare DIR1 DIR2 ...: one table across runs, printed and written to <--output or the current
directory>/report.md with every run's plots. A workdir's eval.json is reused when this version
wrote it for the latest checkpoint (and its plots exist); otherwise the workdir is evaluated.
"""
from moon_jax.programs.eval_main import run

if __name__ == "__main__":
    run()
