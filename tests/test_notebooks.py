"""Every notebook in notebooks/ runs top to bottom with the reduced settings (PKPD_NOTEBOOK_FAST=1).

Cells are executed in one namespace with the non-interactive matplotlib backend, without a Jupyter kernel
(no extra dependency); a failing cell reports the notebook and the cell number.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_and_are_committed_without_outputs():
    """The five notebooks of issue 7 are there, and every notebook is stored stripped (no outputs, no execution
    counts) so that diffs stay readable."""
    names = [p.name[:2] for p in NOTEBOOKS]
    assert names[:5] == ["01", "02", "03", "04", "05"], names
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                    f"{path.name}, cell {i}: outputs committed; strip them (outputs [] and execution_count null)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("PKPD_NOTEBOOK_FAST", "1")
    nb = json.loads(path.read_text())
    assert nb["cells"][0]["cell_type"] == "markdown", "a notebook opens with its question"
    assert nb["cells"][-1]["cell_type"] == "markdown", "a notebook ends with its interpretation"
    ns: dict = {"__name__": "__notebook__"}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        try:
            exec(compile(src, f"{path.name}[cell {i}]", "exec"), ns)
        except Exception as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{path.name}, cell {i}: {type(exc).__name__}: {exc}")
    assert plt.get_fignums(), "a notebook ends with plots"
    plt.close("all")
