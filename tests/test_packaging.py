"""What an installed user gets: the console commands, the configs inside the wheel, every import
declared as a dependency."""
import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from moon_jax.programs.cli import bundled_config, find_config_file


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_the_two_commands(tmp_path):
    source = tmp_path / "source"  # setuptools builds in the source tree: a copy keeps the checkout clean
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "runs", "build", "dist", "*.egg-info", "__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("moon_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    configs = {Path(n).name for n in names if "/data/share/moon-jax/configs/" in n}
    assert configs == {p.name for p in (REPO / "configs").glob("*.py")}
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "moon-jax-train = moon_jax.programs.train_main:run" in entry_points
    assert "moon-jax-eval = moon_jax.programs.eval_main:run" in entry_points


def test_a_config_path_outside_the_checkout_finds_the_bundled_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config_file("configs/cifar10_cpu.py") == bundled_config("cifar10_cpu.py")
    assert find_config_file("configs/cifar10_cpu.py:arg") == bundled_config("cifar10_cpu.py") + ":arg"
    assert find_config_file("configs/nothing_like_it.py") == "configs/nothing_like_it.py"
    (tmp_path / "mine.py").write_text("def get_config(): pass\n")
    assert find_config_file("mine.py") == "mine.py"


# Distributions whose import name differs from their name on PyPI.
IMPORT_NAMES = {"scikit-learn": "sklearn", "pillow": "PIL", "absl-py": "absl", "orbax-checkpoint": "orbax",
                "tensorflow-datasets": "tensorflow_datasets"}


def declared_import_names() -> set[str]:
    """The import names of pyproject.toml's runtime dependencies and of its `tfds` extra (the
    package imports TFDS lazily), read from the file itself."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["tfds"]
    names = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] for requirement in requirements}
    return {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names}


def test_every_third_party_import_is_a_declared_dependency():
    declared = declared_import_names()
    assert {"jax", "sklearn", "PIL", "orbax", "tensorflow_datasets"} <= declared  # the name mapping at work
    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for path in (REPO / "moon_jax").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - stdlib - {"moon_jax"}
    assert third_party, "the scan found no imports"
    assert third_party <= declared, sorted(third_party - declared)
