"""The notebooks run end to end (nbclient), as an analyst would run them, and are committed with
their outputs, plots included, so a reader sees the figures without running anything."""

from __future__ import annotations

import copy

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # executes the notebooks

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _images(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_is_committed_with_its_plots(path):
    committed = nbformat.read(path, as_version=4)
    assert path.stat().st_size < 2_000_000, "keep a committed notebook under 2 MB"
    assert _images(committed) >= 2, "commit the notebook executed (make notebooks), with its plots"
    notebook = copy.deepcopy(committed)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    errors = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"
    ]
    assert not errors, errors
    assert _images(notebook) == _images(committed)  # the same figures as committed
