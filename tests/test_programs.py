"""train.py and eval.py as users run them (subprocesses)."""
import json
import re

import pytest

from conftest import REPO, run_python


def table_numbers(text):
    """The headline numbers of the printed table: ACC, ECE and the OOD mean row."""
    acc_row = re.search(r"^\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
    mean_row = re.search(r"^\| \*\*mean\*\* \|  \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
    assert acc_row and mean_row, text
    return acc_row.groups()[:2] + mean_row.groups()


@pytest.mark.slow
def test_default_job_then_eval_prints_the_same_numbers(tmp_path):
    workdir = tmp_path / "run"
    train = run_python([str(REPO / "train.py"), f"--workdir={workdir}"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "| ACC | ECE |" in train.stdout and "AUROC" in train.stdout and "FPR95" in train.stdout
    evaluation = run_python([str(REPO / "eval.py"), f"--workdir={workdir}"], cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    trained, evaluated = table_numbers(train.stdout), table_numbers(evaluation.stdout)
    assert trained == evaluated
    acc, ece, auroc, fpr95 = map(float, trained)
    assert acc > 95.0 and auroc > 90.0  # percent; the digits job reaches ~98 / ~97
    results = json.loads((workdir / "eval.json").read_text())
    assert results["model"].startswith("weight average of 11 snapshots")


def test_mistyped_config_field_is_named(tmp_path):
    out = run_python([str(REPO / "train.py"), "--config.train.epoch=3", f"--workdir={tmp_path}"], cwd=tmp_path)
    assert out.returncode == 2
    assert "epoch" in out.stderr and 'Did you mean "epochs"' in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_config_value_is_named(tmp_path):
    out = run_python([str(REPO / "train.py"), "--config.sparse.sparsity=1.5", f"--workdir={tmp_path}"], cwd=tmp_path)
    assert out.returncode == 2
    assert "config.sparse.sparsity = 1.5" in out.stderr and "[0.0, 1.0)" in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_without_checkpoint_is_a_clear_error(tmp_path):
    out = run_python([str(REPO / "eval.py"), f"--workdir={tmp_path}"], cwd=tmp_path)
    assert out.returncode == 2
    assert "no checkpoints/ directory" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("content,message", [
    (None, "config file {path} not found"),
    ("x = (\n", "config file {path} cannot be loaded (line 1): SyntaxError"),
    ("VALUE = 1\n", "config file {path} defines no get_config() function"),
], ids=["missing", "syntax_error", "no_get_config"])
def test_bad_config_file_is_one_error_line(tmp_path, content, message):
    path = tmp_path / "my_config.py"
    if content is not None:
        path.write_text(content)
    out = run_python([str(REPO / "train.py"), f"--config={path}", f"--workdir={tmp_path / 'run'}"], cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: " + message.format(path=path)), out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_batch_larger_than_the_training_set_is_a_config_error(tmp_path):
    out = run_python([str(REPO / "train.py"), "--config.train.batch_size=5000", f"--workdir={tmp_path}"], cwd=tmp_path)
    assert out.returncode == 2
    assert ("error: config.train.batch_size = 5000 is not valid: larger than the training set (1347 images); "
            "use at most 1347") in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_unknown_ood_set_is_named_before_loading(tmp_path):
    out = run_python([str(REPO / "eval.py"), f"--workdir={tmp_path}", "--ood=mnist,svhn"], cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: --ood: unknown OOD set 'svhn'") and "Traceback" not in out.stderr
