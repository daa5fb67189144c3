"""Data parallelism over several devices (8 virtual CPU devices via XLA_FLAGS).

With the global batch split into the same number of shards (``train.batch_shards``) and the
shards averaged in a fixed order (``train.exact_reduction``), an 8-device run and a 1-device run
must agree: identical masks, parameters and metrics to float tolerance, after 300 steps that
include 24 RigL mask updates, MOON's warm-up and alpha ramp, and weight averaging.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

RUNNER = r'''
import json, sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from conftest import restore_final, tiny_digits_config
from moon_jax.programs import train_and_evaluate
from moon_jax.training import build_run

config = tiny_digits_config()
config.train.epochs = 30
config.train.constant_lr_epochs = 3
config.train.eval_batch_size = 400
config.train.batch_shards = 8
config.train.exact_reduction = {exact}
config.moon.warmup_epochs = 3
config.moon.averaging_epochs = 3
config.sparse.update_every = 10
config.sparse.end_fraction = 0.8
workdir = sys.argv[1]
results = train_and_evaluate(config, workdir)
data, setup = build_run(config, with_ood=False)
state, _ = restore_final(config, workdir)
leaves = jax.tree_util.tree_flatten_with_path(state)[0]
np.savez(workdir + "/final.npz", **{{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}})
json.dump({{"devices": jax.device_count(), "shards": setup.split.num_shards, "results": results}}, open(workdir + "/summary.json", "w"))
'''


def run(tmp_path, name, devices, exact=True):
    workdir = tmp_path / name
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(tests=str(REPO / "tests"), exact=exact))
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run([sys.executable, str(script), str(workdir)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["devices"] == devices and summary["shards"] == 8
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return dict(np.load(workdir / "final.npz")), summary["results"], records


@pytest.mark.slow
def test_eight_devices_equal_one_device(tmp_path):
    one, results_one, log_one = run(tmp_path, "one", 1)
    eight, results_eight, log_eight = run(tmp_path, "eight", 8)
    assert one.keys() == eight.keys()
    masks = [k for k in one if ".masks" in k and one[k].dtype == bool]
    assert len(masks) >= 2
    for key in masks:
        np.testing.assert_array_equal(one[key], eight[key], err_msg=key)
    for key in one:
        if key.startswith(".params"):
            np.testing.assert_allclose(one[key], eight[key], rtol=1e-5, atol=1e-6, err_msg=key)
        elif one[key].dtype.kind == "f":
            np.testing.assert_allclose(one[key], eight[key], rtol=1e-4, atol=1e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(one[key], eight[key], err_msg=key)
    assert int(one[".step"]) == 300
    # the logged curves and the final evaluation agree
    assert [r["step"] for r in log_one] == [r["step"] for r in log_eight]
    for a, b in zip(log_one, log_eight):
        for k in a:
            if k not in ("step", "kind", "time"):
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], k)
    assert results_one["classification"]["acc"] == results_eight["classification"]["acc"]
    assert results_one["ood"]["moon_msp"]["mean"]["auroc"] == pytest.approx(results_eight["ood"]["moon_msp"]["mean"]["auroc"], abs=1e-4)


@pytest.mark.slow
def test_all_reduce_mode_runs_on_eight_devices(tmp_path):
    _, results, log = run(tmp_path, "psum", 8, exact=False)
    assert all(np.isfinite(r["loss"]) for r in log if r["kind"] == "train")
    assert results["classification"]["acc"] > 0.8
