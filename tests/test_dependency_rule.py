"""The dependency rule of docs/design.md: ``regimens`` depends on ``pkpd``; ``pkpd`` never imports
``regimens`` (nor ``cli``).

Every ``import``/``from ... import`` statement in ``pkpd/`` is read with :mod:`ast` (module level and
inside functions alike, since a lazy import is still a dependency), plus ``importlib.import_module`` /
``__import__`` calls with a literal name. A known exception would be listed in ``KNOWN_EXCEPTIONS`` with
its reason (there is none); the test fails on any new one, and also when a listed exception is gone (so the
list cannot go stale).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("regimens", "cli")

#: file -> why it still imports regimens (to be removed when the module moves or the call is inverted). Empty:
#: the last one, pkpd/population_checks.py, moved to regimens/population_checks.py (issue 24).
KNOWN_EXCEPTIONS: dict[str, str] = {}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
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
    src.write_text(
        "import os\nfrom . import x\n\ndef f():\n    from regimens import check_regimen\n"
        "    import regimens.optimize as o\n    import importlib\n"
        "    importlib.import_module('regimens.io')\n    __import__('cli')\n"
    )
    mods = sorted(m for _, m in _imports(src))
    assert mods == sorted(["os", "regimens", "regimens.optimize", "importlib", "regimens.io", "cli"])


# ------------------------------------------------------------------------------------------------------------
# No import circles, no private names across packages (issue 24)
# ------------------------------------------------------------------------------------------------------------
PACKAGES = ("pkpd", "regimens")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (module level and inside functions; ``if TYPE_CHECKING:``
    blocks left out, they never run). ``from . import x`` names the submodule ``x``, not the package."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for n in ast.walk(stmt)
        }
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, each sorted (the package's Tarjan,
    :func:`pkpd.models.user.strongly_connected`, which orders a user model's equations)."""
    from pkpd.models.user import strongly_connected

    comps = strongly_connected({k: sorted(v) for k, v in sorted(graph.items())})
    return sorted(list(c) for c in comps if len(c) > 1)


def test_no_import_circles():
    """No two modules of pkpd or regimens import each other, directly or through others (function-level
    imports count: they hide a circle, they do not remove it)."""
    cycles = _cycles(_import_graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_hidden_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_private_names_across_packages():
    """regimens and cli use pkpd's public names only (and pkpd never imports regimens): no
    ``from pkpd.x import _name`` and no ``pkpd._module``. (benchmarks/ may time private kernels.)"""
    bad = []
    files = [ROOT / "cli.py", *sorted((ROOT / "regimens").rglob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and node.module
                and node.module.split(".")[0] == "pkpd"
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                private += [p for p in node.module.split(".") if p.startswith("_") and not p.startswith("__")]
                if private:
                    bad.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.module} {private}")
    assert not bad, "private names of pkpd used outside it: " + "; ".join(bad)
