"""Train a sparse (and optionally MOON) model, resuming from the latest checkpoint in --workdir.

    python train.py                                    # configs/default.py: MOON + RigL on digits
    python train.py --config configs/cifar10_resnet18.py --workdir runs/c10_moon_rigl
    python train.py --config configs/cifar10_resnet18.py --config.sparse.method=set --config.moon.enabled=False

Re-running the same command continues from the newest checkpoint. At the end the evaluation table
is printed and written to <workdir>/eval.json with its plots (--noplots skips them);
`python eval.py --workdir ...` recomputes it. Ctrl-C or SIGTERM saves a checkpoint and stops (a second Ctrl-C aborts at once).
"""
from moon_jax.programs.train_main import run

if __name__ == "__main__":
    run()
