"""Run manifests: what command made a run directory, from which inputs, with which package versions.

Every ``pkpd simulate``, ``fit``, ``optimize`` and ``trial`` run writes a ``run.json`` beside its outputs
(:func:`write_manifest`); ``pkpd report`` reads it (:func:`read_manifest`) to state the inputs and
versions of the run. A simulation of a NONMEM-format dataset writes one file, not a directory, so its
manifest is ``<output stem>.run.json`` next to the output CSV (:func:`manifest_path`).

Layout of ``run.json``::

    {"manifest": 1,
     "command": "fit",                         # the pkpd sub-command
     "arguments": {"method": "laplace", ...},  # every option as given (paths as strings, enums by value)
     "inputs": {"data": {"path": "/abs/DATA.csv", "sha256": "..." , "bytes": 1234}, ...},
     "outputs": ["parameters.csv", ...],       # files written, relative to the manifest's directory
     "version": "0.1.0",                       # pkpd.__version__ (the installed distribution's)
     "commit": "1a2b3c4-dirty",                # git checkout of the package (see git_commit), or null
     "versions": {"python": "3.11.2", "pkpd": "0.1.0", "jax": "...", ...},
     "platform": "Linux-...-x86_64",
     "created_utc": "2026-11-25T10:00:00Z"}

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> p = write_manifest(d / "run.json", "trial", {"population": 10})
>>> read_manifest(p)["arguments"]
{'population': 10}
"""

from __future__ import annotations

import datetime as _dt
import enum
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import PKPDError

__all__ = [
    "MANIFEST_NAME",
    "PACKAGES",
    "file_sha256",
    "git_commit",
    "manifest_path",
    "package_versions",
    "read_manifest",
    "write_manifest",
]

#: File name of the manifest inside a run directory.
MANIFEST_NAME = "run.json"
#: Distributions whose versions a manifest records (``None`` where one is not installed).
PACKAGES = (
    "jax",
    "jaxlib",
    "numpy",
    "scipy",
    "pandas",
    "equinox",
    "diffrax",
    "numpyro",
    "arviz",
    "optax",
    "matplotlib",
    "typer",
)
_VERSION = 1


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 digest of the file at ``path`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Versions of Python, ``pkpd`` and the :data:`PACKAGES` (``None`` for a package not installed)."""
    import pkpd

    out: dict[str, str | None] = {"python": platform.python_version(), "pkpd": pkpd.__version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(root: str | Path | None = None) -> str | None:
    """The git commit the package runs from: its short hash, with ``-dirty`` appended when tracked files differ
    from it (untracked files do not count); ``None`` when ``root`` is not the top of a git checkout (an installed
    wheel) or git is not available.

    ``root`` defaults to the directory holding the ``pkpd`` package (the repository root for a checkout or an
    editable install). Git runs without taking the index lock, so a concurrent git command is not disturbed.
    """
    top = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(top), *args], capture_output=True, text=True, check=True, timeout=10, env=env
        ).stdout.strip()

    try:
        # a directory inside some other checkout (a virtual environment in a project) is not a checkout of pkpd
        if Path(git("rev-parse", "--show-toplevel")).resolve() != top.resolve():
            return None
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def manifest_path(output_file: str | Path) -> Path:
    """The manifest of a run whose output is one file: ``<stem>.run.json`` beside it
    (``pkpd simulate DATA.csv --out sim.csv`` -> ``sim.run.json``). A run directory's is ``<dir>/run.json``."""
    p = Path(output_file)
    return p.with_name(f"{p.stem}.{MANIFEST_NAME}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_manifest(
    path: str | Path,
    command: str,
    arguments: Mapping[str, Any],
    *,
    inputs: Mapping[str, str | Path | None] | None = None,
    outputs: Iterable[str | Path] = (),
    relative_to: str | Path | None = None,
) -> Path:
    """Write a run manifest (layout in the module docstring) and return its path.

    Parameters
    ----------
    path
        The manifest file (``run.json`` in a run directory; see :func:`manifest_path`).
    command
        The ``pkpd`` sub-command, e.g. ``"simulate"``.
    arguments
        Every argument and option of the command as given (paths and enums are stored as strings).
    inputs
        Input role -> file path (``None`` entries are skipped): each is recorded with its absolute path,
        SHA-256 digest and size in bytes, so a report can tell whether an input changed since the run.
    outputs
        Files the run wrote; stored relative to the manifest's directory where they lie inside it.
    relative_to
        The directory the outputs are stored relative to, when the manifest is written elsewhere first (in
        the staging directory of :func:`pkpd.interrupts.staged_outputs`); default: the manifest's directory.
    """
    path = Path(path)
    base = Path(relative_to if relative_to is not None else path.parent).resolve()
    files: dict[str, dict[str, Any]] = {}
    for role, p in (inputs or {}).items():
        if p is None:
            continue
        q = Path(p)
        if q.is_file():
            files[role] = {"path": str(q.resolve()), "sha256": file_sha256(q), "bytes": q.stat().st_size}
        else:  # a shipped name such as regimen C1: recorded as given
            files[role] = {"path": str(p), "sha256": None, "bytes": None}
    outs = []
    for o in outputs:
        q = Path(o).resolve()
        try:
            outs.append(str(q.relative_to(base)))
        except ValueError:
            outs.append(str(q))
    versions = package_versions()
    doc = {
        "manifest": _VERSION,
        "command": str(command),
        "arguments": _jsonable(dict(arguments)),
        "inputs": files,
        "outputs": outs,
        "version": versions["pkpd"],
        "commit": git_commit(),
        "versions": versions,
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest at ``path`` as a dict; :class:`PKPDError` when it is not a readable manifest."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PKPDError(f"cannot read the run manifest {p}: {exc}") from None
    if not isinstance(doc, dict) or "command" not in doc:
        raise PKPDError(f"{p} is not a pkpd run manifest (no 'command' key)")
    return doc
