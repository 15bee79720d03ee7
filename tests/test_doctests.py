"""The ``>>>`` examples in the package docstrings run as tests.

Every module of ``pkpd``, ``regimens`` and ``cli.py`` whose source holds a ``>>>`` line is found by reading the
files (no import of the modules without examples) and its examples are run with :mod:`doctest`, from the
repository root (examples name files such as ``examples/models/theoph.toml`` relative to it). An example that
needs a long computation or files a reader does not have carries ``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules_with_examples() -> list[str]:
    files = sorted((ROOT / "pkpd").rglob("*.py")) + sorted((ROOT / "regimens").rglob("*.py")) + [ROOT / "cli.py"]
    out = []
    for f in files:
        if ">>>" not in f.read_text(encoding="utf-8"):
            continue
        parts = f.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


MODULES = _modules_with_examples()


def test_examples_are_found():
    # a broken search would make the parametrized test below pass on nothing
    assert len(MODULES) >= 10, MODULES
    assert "pkpd.simulate" in MODULES and "regimens" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    assert tests, f"{name}: a '>>>' line in the source, but no example found in its docstrings"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    for t in tests:
        runner.run(t, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed\n{report.getvalue()}"
