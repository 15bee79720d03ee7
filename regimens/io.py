"""Regimen files: TOML and the short text form, and the regimens shipped in ``regimens/data/``.

TOML layout (every table key is a field of the matching class; omitted keys take the class default)::

    name = "C0"
    description = "..."
    horizon_h = 72.0
    references = ["...", "..."]

    [[scheduled]]                         # regimens.Scheduled
    drug = "ketorolac"
    route = "iv"
    dose_mg = 30.0
    every_h = 6.0
    start_h = 0.0
    stop_h = 48.0
    adjustments = [{ when = "AGE >= 65", dose_mg = 15.0, reason = "Toradol label" }]

    [[prn]]                               # regimens.PRN
    drug = "oxycodone"
    route = "po"
    dose_mg = 5.0
    threshold_nrs = 4.0
    min_interval_h = 4.0

    [[pca]]                               # regimens.PCA
    drug = "hydromorphone"
    demand_mg = 0.2
    lockout_min = 10.0
    stop_h = 24.0

    [[modality]]                          # regimens.Modality
    kind = "tens"
    windows = [[0.0, 2.0], [8.0, 10.0]]
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
from pathlib import Path
from typing import Any

from ._condition import RegimenError
from ._format import format_regimen_toml
from ._model import PCA, PRN, Adjustment, Modality, Regimen, Scheduled

__all__ = [
    "DATA_DIR",
    "format_regimen_toml",
    "get_regimen",
    "list_regimens",
    "load_regimen",
    "parse_regimen_toml",
    "regimen_file",
    "save_regimen",
]

#: Folder of the shipped regimen files (``<NAME>.toml``).
DATA_DIR = Path(__file__).resolve().parent / "data"

_TABLES: dict[str, type] = {"scheduled": Scheduled, "prn": PRN, "pca": PCA, "modality": Modality}
_TOP = ("name", "description", "horizon_h", "references", "structures", *_TABLES)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _header_lines(text: str, table: str) -> list[int]:
    pat = re.compile(rf"^[ \t]*\[\[[ \t]*{table}[ \t]*\]\]", re.MULTILINE)
    return [text.count("\n", 0, m.start()) + 1 for m in pat.finditer(text)]


def parse_regimen_toml(
    text: str, source: str = "<string>", *, default_name: str | None = None, base: str | Path | None = None
) -> Regimen:
    """Build a :class:`Regimen` from TOML text.

    Parameters
    ----------
    text
        TOML with ``name``, ``description``, ``horizon_h``, ``references`` and ``[[scheduled]]``, ``[[prn]]``,
        ``[[pca]]``, ``[[modality]]`` tables (see the module docstring).
    source
        Where the text comes from (used in error messages).
    default_name
        Name used when the file has no ``name`` key.
    base
        Folder that relative model-file paths of ``[structures]`` start from (default: the working directory;
        :func:`load_regimen` passes the regimen file's folder).

    Raises
    ------
    RegimenError
        Invalid TOML, an unknown key, a wrong type or an invalid item; the message names the table, the
        item number and its line.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegimenError(f"{source}: invalid TOML: {exc}") from None
    unknown = [k for k in data if k not in _TOP]
    if unknown:
        hint = " (the table is [[modality]])" if "modalities" in unknown else ""
        raise RegimenError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
            f"{hint}; known keys: {', '.join(_TOP)}"
        )
    kw: dict[str, Any] = {}
    for table, cls in _TABLES.items():
        rows = data.get(table, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise RegimenError(f"{source}: {table!r} must be an array of tables, written [[{table}]]")
        lines = _header_lines(text, table)
        items = []
        for k, row in enumerate(rows):
            where = f"{source}: [[{table}]] item {k + 1}"
            if k < len(lines):
                where += f" (line {lines[k]})"
            allowed = _fields(cls)
            bad = [key for key in row if key not in allowed]
            if bad:
                raise RegimenError(
                    f"{where}: unknown key{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
                    f"known keys: {', '.join(allowed)}"
                )
            row = dict(row)
            try:
                if cls is Scheduled and "adjustments" in row:
                    adj = row["adjustments"]
                    if not isinstance(adj, list) or not all(isinstance(a, dict) for a in adj):
                        raise RegimenError(
                            "adjustments must be a list of tables "
                            '[{ when = "AGE >= 65", dose_mg = 15.0, reason = "..." }]'
                        )
                    for a in adj:
                        bad = [key for key in a if key not in _fields(Adjustment)]
                        if bad:
                            raise RegimenError(f"adjustment: unknown key {bad[0]!r}; known keys: when, dose_mg, reason")
                    row["adjustments"] = tuple(Adjustment(**a) for a in adj)
                if cls is Modality and "windows" in row:
                    row["windows"] = tuple(tuple(w) if isinstance(w, list) else w for w in row["windows"])
                items.append(cls(**row))
            except TypeError as exc:  # a missing required key
                raise RegimenError(f"{where}: {exc}".replace("__init__() ", "")) from None
            except RegimenError as exc:
                raise RegimenError(f"{where}: {exc}") from None
        kw[{"modality": "modalities"}.get(table, table)] = tuple(items)
    name = data.get("name", default_name)
    if name is None:
        raise RegimenError(f"{source}: missing key 'name' (e.g. name = \"C1\")")
    kw["structures"] = _read_structures(data.get("structures", {}), source, base)
    refs = data.get("references", [])
    if isinstance(refs, str) or not isinstance(refs, list):
        raise RegimenError(f'{source}: references must be a list of strings, e.g. references = ["Iyer 2023"]')
    try:
        return Regimen(
            name=name,
            description=data.get("description", ""),
            horizon_h=data.get("horizon_h", 72.0),
            references=tuple(refs),
            **kw,
        )
    except RegimenError as exc:
        raise RegimenError(f"{source}: {exc}") from None


def _read_structures(table: Any, source: str, base: str | Path | None) -> tuple[tuple[str, str], ...]:
    """The ``[structures]`` table: drug -> model file (resolved against ``base``), each file compiled now so that
    a missing file or a malformed or unsuitable structure is reported with the regimen file."""
    from pkpd.drugs.structure import regimen_entry
    from pkpd.errors import PKPDError

    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise RegimenError(
            f'{source}: [structures] maps drug names to model files, e.g. [structures] oxycodone = "oxycodone.toml"'
        )
    folder = Path.cwd() if base is None else Path(base)
    out = []
    for drug, file in table.items():
        path = Path(file) if Path(file).is_absolute() else folder / file
        if not path.is_file():
            raise RegimenError(f"{source}: [structures] {drug}: the model file {str(path)!r} does not exist")
        try:
            regimen_entry(drug, {drug: str(path)})
        except PKPDError as exc:
            raise RegimenError(f"{source}: [structures] {drug}: {exc}") from None
        out.append((drug, str(path.resolve())))
    return tuple(out)


def load_regimen(path: str | Path) -> Regimen:
    """Read a regimen file: TOML (``.toml``) or the short text form (any other suffix, e.g. ``.txt``).

    A file without a ``name`` is named after its stem.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegimenError(f"cannot read regimen file {str(p)!r}: {exc.strerror or exc}") from None
    if p.suffix.lower() == ".toml":
        return parse_regimen_toml(text, str(p), default_name=p.stem, base=p.parent)
    from .text import parse_regimen_text

    try:
        return parse_regimen_text(text, name=p.stem)
    except RegimenError as exc:  # keep the type and its line/token attributes; name the file
        exc.args = (f"{p}: {exc}",)
        raise


def save_regimen(regimen: Regimen, path: str | Path) -> Path:
    """Write ``regimen`` as TOML (``.toml``) or in the text form (any other suffix); returns the path."""
    p = Path(path)
    p.write_text(regimen.to_toml() if p.suffix.lower() == ".toml" else regimen.to_text(), encoding="utf-8")
    return p


# --------------------------------------------------------------------------------------------------------
# Writing TOML (no third-party writer needed)
# --------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------
# Shipped regimens
# --------------------------------------------------------------------------------------------------------


def list_regimens() -> list[str]:
    """Names of the shipped regimens (``regimens/data/*.toml``), sorted."""
    return sorted(p.stem for p in DATA_DIR.glob("*.toml"))


@functools.cache
def _load_shipped(stem: str) -> Regimen:
    return load_regimen(DATA_DIR / f"{stem}.toml")


def regimen_file(spec: str | Path) -> Path | None:
    """The file a regimen argument names: the path itself when it is a file, else the shipped regimen's
    TOML file (``regimens/data/<NAME>.toml``, name case-insensitive), else ``None``. Run manifests record
    this file with its SHA-256, so a shipped regimen's content is recorded like a user's file.

    >>> regimen_file("c1").name
    'C1.toml'
    """
    path = Path(spec)
    if path.is_file():
        return path
    key = str(spec).strip().upper()
    return next((DATA_DIR / f"{stem}.toml" for stem in list_regimens() if stem.upper() == key), None)


def get_regimen(name: str) -> Regimen:
    """A shipped regimen by name (case-insensitive), e.g. ``get_regimen("C0")``.

    Raises
    ------
    RegimenError
        For an unknown name; the message lists the shipped regimens.
    """
    names = list_regimens()
    key = str(name).strip().upper()
    for stem in names:
        if stem.upper() == key:
            return _load_shipped(stem)
    raise RegimenError(f"unknown regimen {name!r}; shipped regimens: {', '.join(names)}")
