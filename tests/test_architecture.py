"""The package structure holds: imports run one way (programs -> training / evaluation -> the
method and leaf packages), and the documentation cites only files the repository has."""
import ast
import os
import re

from conftest import REPO

PACKAGE = REPO / "moon_jax"
LEAVES = {"sparse", "moon", "models", "data", "metrics", "devices"}
PROGRAM_LEVEL = {"programs", "reproduction"}  # parts of moon_jax that only programs import


def package_imports() -> set[tuple[str, str]]:
    """``(importer, imported)`` pairs between the top-level parts of moon_jax."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        source = parts[0] if len(parts) > 1 else parts[0][:-3]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
                if node.module == "moon_jax":
                    modules = [f"moon_jax.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module.startswith("moon_jax.") and module.split(".")[1] != source:
                    edges.add((source, module.split(".")[1]))
    return edges


def test_imports_run_one_way():
    edges = package_imports()
    assert edges, "the import scan found nothing"
    upward = sorted(
        (a, b) for a, b in edges
        if (a in LEAVES and b not in LEAVES)
        or (a in ("training", "evaluation") and b in PROGRAM_LEVEL)
        or (a == "training" and b == "evaluation")
    )
    assert not upward, f"imports that run upwards: {upward}"
    mutual = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not mutual, f"packages that import each other: {mutual}"
    # the scan sees the layering it checks
    assert ("evaluation", "training") in edges and ("training", "sparse") in edges
    assert ("evaluation", "devices") in edges and ("training", "devices") in edges


def test_device_placement_sits_below_training_and_evaluation():
    """``devices`` serves both; neither reaches it through the other."""
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if "moon_jax.training.devices" in text:
            importers.add(str(path.relative_to(PACKAGE)))
    assert not importers, f"modules that import devices through training: {sorted(importers)}"
    assert not (PACKAGE / "training" / "devices.py").exists()


def test_the_reproduction_package_is_the_top_of_the_library():
    """moon_jax.reproduction (reproduce.py's driver) sits above everything else: no other part of
    moon_jax imports it, and it imports from moon_jax only what is below it -- programs (the
    programs' shared helpers), training, evaluation and the leaf packages."""
    edges = package_imports()
    importers = sorted(a for a, b in edges if b == "reproduction")
    assert not importers, f"parts of moon_jax that import the reproduction driver: {importers}"
    imported = {b for a, b in edges if a == "reproduction"}
    above = sorted(imported - {"programs", "training", "evaluation", *LEAVES})
    assert not above, f"the reproduction package imports {above}, which is not below it"
    # the scan sees the package's imports (its modules import one another and the layers below)
    assert {"training", "evaluation"} <= imported


def test_training_package_loads_without_evaluation():
    import subprocess
    import sys

    code = "import sys, moon_jax.training; print(any(m.startswith('moon_jax.evaluation') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# Output paths that programs write (named as defaults in their help), not files to read.
GENERATED = re.compile(r"^(runs/|docs/REPRODUCTION[A-Z_]*\.md$)")
# Bare names that are not files of the repository: what eval.py --compare and the device check
# write, and the placeholder for a user's config file in train.py's flag help.
NOT_FILES = {"report.md", "device_check.md", "comparison.md", "file.py"}
CITED_PATH = re.compile(r"(?<![\w./-])((?:[\w-]+/)+[\w.-]+\.(?:py|md|ipynb|toml|ya?ml))")
# A path above the repository: only the shared data folder (where the README says the data lives)
# may be named; any other is a file a user's checkout does not have.
OUTSIDE_PATH = re.compile(r"(?:\.\./)+[\w.-][\w./-]*")
SHARED_DATA = re.compile(r"^\.\./shared/data(/|\.?$)")
CITED_NAME = re.compile(r"(?<![\w./-])([\w-]+\.(?:py|md|ipynb|toml|ya?ml))(?![\w/-]|\.\w)")


def repository_file_names() -> set[str]:
    """The names of the repository's files, hidden folders (.git, .venv) and outputs left out."""
    names = set()
    for root, folders, files in os.walk(REPO):
        folders[:] = [f for f in folders if not f.startswith(".") and f not in ("runs", "__pycache__")]
        names.update(files)
    return names


def test_cited_files_exist():
    sources = [*PACKAGE.rglob("*.py"), *(REPO / "configs").glob("*.py"), *(REPO / "benchmarks").glob("*.py"),
               REPO / "train.py", REPO / "eval.py", REPO / "reproduce.py", REPO / "README.md"]
    names = repository_file_names()
    missing, checked = set(), 0
    for path in sources:
        text = path.read_text()
        for cited in CITED_PATH.findall(text):
            checked += 1
            if not GENERATED.match(cited) and not (REPO / cited).exists():
                missing.add(f"{path.relative_to(REPO)} cites {cited}")
        for cited in OUTSIDE_PATH.findall(text):
            checked += 1
            if not SHARED_DATA.match(cited):
                missing.add(f"{path.relative_to(REPO)} cites {cited}, outside the repository")
        # a bare name: a file of that name next to the citing file or anywhere in the repository
        for cited in CITED_NAME.findall(text):
            checked += 1
            if cited not in NOT_FILES and not (path.parent / cited).exists() and cited not in names:
                missing.add(f"{path.relative_to(REPO)} cites {cited}")
    assert checked > 0, "the citation scan found nothing"
    assert not missing, sorted(missing)


def test_each_package_lists_its_public_names():
    """A package's ``__init__`` re-exports names for users: its ``__all__`` lists exactly those,
    so ``from moon_jax.sparse import *``, linters and the docs agree on the public API."""
    import importlib

    checked = []
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        imported = {alias.asname or alias.name for node in tree.body
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moon_jax")
                    for alias in node.names}
        module = importlib.import_module(f"moon_jax.{init.parent.name}")
        listed = getattr(module, "__all__", None)
        assert listed is not None, f"{init.relative_to(REPO)} has no __all__"
        assert len(listed) == len(set(listed)), f"{init.relative_to(REPO)} lists a name twice"
        defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        defined |= {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                    if isinstance(target, ast.Name) and not target.id.startswith("_")}
        assert set(listed) == imported | defined, (init.relative_to(REPO), set(listed) ^ (imported | defined))
        assert all(hasattr(module, name) for name in listed)
        checked.append(init.parent.name)
    assert {"sparse", "moon", "training", "evaluation"} <= set(checked)
