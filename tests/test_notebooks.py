"""Every notebook runs top to bottom in its short mode and stores no error output."""

import json
import os

import pytest

from conftest import REPO, data_dir

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NEEDS_DATA = ("02_", "03_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_short_mode(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if path.name.startswith(NEEDS_DATA):
        monkeypatch.setenv("MAMLX_DATA_DIR", str(data_dir()))
    monkeypatch.setenv("MAMLX_NOTEBOOK_SHORT", "1")
    monkeypatch.setenv("MAMLX_CACHE", os.environ.get("MAMLX_CACHE", str(tmp_path / "cache")))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebook_has_no_error_output(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{path.name} stores an error output"
