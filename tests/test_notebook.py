"""notebooks/colab_tpu.ipynb executes top to bottom on CPU (tiny config, TFDS mock data)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO


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
    assert len(images) >= 4  # reliability, ROC, score histograms, layer density, training curves
