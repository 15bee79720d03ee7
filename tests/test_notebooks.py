"""Every notebook in notebooks/ runs top to bottom in a Jupyter kernel with the reduced settings
(PKPD_NOTEBOOK_FAST=1), and shows no error and no warning.

Each notebook is executed by nbclient in an IPython kernel (ipykernel) started from this interpreter, as a user
running it in JupyterLab would (working directory notebooks/). The kernel's matplotlib backend is set to the
inline backend (``MPLBACKEND``): non-interactive (Agg rendering, no window), and every figure shows as a PNG in
the cell's outputs, which the test counts. A cell that raises fails the test with the notebook and the cell; so
does any error output or anything written to stderr (warnings, progress bars such as tqdm's "IProgress not
found"). The executed copy is written under pytest's ``tmp_path`` (never into notebooks/, which stays stripped).
The kernel's temporary folder (``TMPDIR``) is one under ``tmp_path`` too: a notebook that leaves a ``pkpd_nb*``
folder there fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "pkpd-test-python"
#: matplotlib's inline backend (matplotlib-inline, a dependency of ipykernel): renders with Agg, opens no window
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def test_notebooks_exist_and_are_committed_without_outputs():
    """The five notebooks of issue 7 are there; every notebook is valid nbformat 4.5 with a unique cell ``id``
    in every cell, and is stored stripped (no outputs, no execution counts) so that diffs stay readable."""
    names = [p.name[:2] for p in NOTEBOOKS]
    assert names[:5] == ["01", "02", "03", "04", "05"], names
    for path in NOTEBOOKS:
        raw = json.loads(path.read_text())
        assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5), (
            f"{path.name}: nbformat {raw['nbformat']}.{raw['nbformat_minor']}, expected 4.5"
        )
        ids = [cell.get("id") for cell in raw["cells"]]
        assert all(ids), f"{path.name}: cells without an id: {[i for i, c in enumerate(ids) if not c]}"
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"
        nbformat.validate(nbformat.from_dict(raw))
        for i, cell in enumerate(raw["cells"]):
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                    f"{path.name}, cell {i}: outputs committed; strip them (outputs [] and execution_count null)"
                )


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory):
    """A kernelspec running ipykernel with this very interpreter (the test's virtualenv), whatever other
    ``python3`` kernels the user's Jupyter paths hold."""
    from jupyter_client.kernelspec import KernelSpecManager

    kdir = tmp_path_factory.mktemp("kernels")
    (kdir / KERNEL_NAME).mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pkpd tests)",
        "language": "python",
    }
    (kdir / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kdir)])


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return _ANSI.sub("", "\n".join(output.get("traceback", [])) or f"{output['ename']}: {output['evalue']}")
    return str(output.get("data", {}).get("text/plain", ""))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_a_kernel(path, tmp_path, kernel_specs):
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown", "a notebook opens with its question"
    assert nb.cells[-1].cell_type == "markdown", "a notebook ends with its interpretation"
    scratch = tmp_path / "tmp"  # the kernel's temporary folder: what a notebook leaves there is seen below
    scratch.mkdir()
    env = dict(
        os.environ,
        TMPDIR=str(scratch),
        PKPD_NOTEBOOK_FAST="1",
        MPLBACKEND=INLINE_BACKEND,
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    sockets = Path(tempfile.mkdtemp(prefix="pkpd-kernel-"))  # short: a Unix socket path has at most 107 bytes
    # IPC transport (Unix sockets): ipykernel warns about an unencrypted TCP kernel otherwise
    km = AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=kernel_specs,
        transport="ipc",
        ip=str(sockets / "ipc"),
        connection_file=str(sockets / "kernel.json"),
    )
    client = NotebookClient(
        nb, km=km, timeout=900, startup_timeout=180, resources={"metadata": {"path": str(path.parent)}}
    )
    failure = None
    try:
        client.execute(env=env, cleanup_kc=True)  # cleanup_kc: shut the kernel down afterwards
    except Exception as exc:  # CellExecutionError (shown below by its cell), CellTimeoutError, DeadKernelError
        failure = exc
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a look after a failure
        shutil.rmtree(sockets, ignore_errors=True)

    code = [(i, cell) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    for i, cell in code:
        for out in cell.get("outputs", []):
            where = f"{path.name}, cell {i} (id {cell.get('id')}; executed copy {tmp_path / path.name})"
            if out.output_type == "error":
                pytest.fail(f"{where}: {out.ename}: {out.evalue}\n{_text(out)[-3000:]}")
            if out.output_type == "stream" and out.name == "stderr":
                pytest.fail(f"{where} wrote to stderr (a warning or progress bar; fix its cause):\n{out.text[:3000]}")
    if failure is not None:  # an error the cell outputs do not show (a timeout, a dead kernel)
        started = [i for i, cell in code if "iopub.execute_input" in cell.metadata.get("execution", {})]
        pytest.fail(
            f"{path.name}, cell {started[-1] if started else '(none started)'}: "
            f"{type(failure).__name__}: {str(failure)[-3000:]}"
        )

    left = sorted(p.name for p in scratch.glob("pkpd_nb*"))
    assert not left, f"{path.name} leaves its temporary folders behind: {left}"

    pngs = sum(
        "image/png" in out.get("data", {})
        for _, cell in code
        for out in cell.get("outputs", [])
        if out.output_type == "display_data"
    )
    assert pngs >= 1, f"{path.name}: no figure shown (no image/png display_data output)"
