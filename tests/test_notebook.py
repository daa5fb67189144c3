"""notebooks/colab_tpu.ipynb executes top to bottom on CPU (tiny config, TFDS mock data)."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO
from moon_jax.evaluation.plots import PLOT_FILES


@pytest.mark.slow
def test_colab_notebook_executes_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("MOON_JAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MOON_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    notebook = nbformat.read(REPO / "notebooks" / "colab_tpu.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "\n".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "| ACC | ECE |" in outputs and "AUROC" in outputs
    assert (tmp_path / "run" / "eval.json").exists()
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    # reliability, ROC, score histograms, layer density, training curves: each written and shown
    assert {p.name for p in (tmp_path / "run").glob("*.png")} == set(PLOT_FILES.values())
    assert len(images) == len(PLOT_FILES)


def test_colab_install_cell_names_what_to_upload_when_nothing_is_there(tmp_path, monkeypatch):
    import importlib.util

    notebook = nbformat.read(REPO / "notebooks" / "colab_tpu.ipynb", as_version=4)
    settings, install = [c.source for c in notebook.cells if c.cell_type == "code"][:2]
    assert "MOON_JAX_SOURCE" in settings and "pip" in install
    monkeypatch.setenv("MOON_JAX_SOURCE", str(tmp_path / "no_checkout"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "moon_jax" else real_find_spec(name, *a))
    namespace = {}
    exec(settings, namespace)
    with pytest.raises(SystemExit, match=r"^error: moon-jax is not installed and neither a checkout .*no_checkout"):
        exec(install, namespace)
