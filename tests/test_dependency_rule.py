"""The dependency rule of docs/design.md: ``regimens`` depends on ``pkpd``; ``pkpd`` never imports
``regimens`` (nor ``cli``).

Every ``import``/``from ... import`` statement in ``pkpd/`` is read with :mod:`ast` (module level and
inside functions alike, since a lazy import is still a dependency), plus ``importlib.import_module`` /
``__import__`` calls with a literal name. The one known exception is listed in ``KNOWN_EXCEPTIONS`` with
its reason; the test fails on any new one, and also when a listed exception is gone (so the list cannot
go stale).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("regimens", "cli")

#: file -> why it still imports regimens (to be removed when the module moves or the call is inverted).
KNOWN_EXCEPTIONS = {
    "pkpd/population_checks.py": "regimen_findings() calls regimens.check_regimen for `pkpd simulate --regimen` "
                                 "(a lazy import inside the function; found when this test was written)",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value))
    return out


def _violations() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "pkpd").rglob("*.py")):
        for line, mod in _imports(path):
            if mod.split(".")[0] in FORBIDDEN:
                found.setdefault(path.relative_to(ROOT).as_posix(), []).append(f"line {line}: {mod}")
    return found


def test_pkpd_does_not_import_regimens():
    found = _violations()
    new = {f: v for f, v in found.items() if f not in KNOWN_EXCEPTIONS}
    assert not new, f"pkpd must not import regimens or cli (docs/design.md): {new}"
    gone = sorted(set(KNOWN_EXCEPTIONS) - set(found))
    assert not gone, f"no longer imports regimens, remove from KNOWN_EXCEPTIONS: {gone}"


def test_the_scan_sees_lazy_and_dynamic_imports(tmp_path):
    """The scanner itself: module-level, function-level, relative and importlib imports."""
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom . import x\n\ndef f():\n    from regimens import check_regimen\n"
                   "    import regimens.optimize as o\n    import importlib\n"
                   "    importlib.import_module('regimens.io')\n    __import__('cli')\n")
    mods = sorted(m for _, m in _imports(src))
    assert mods == sorted(["os", "regimens", "regimens.optimize", "importlib", "regimens.io", "cli"])
