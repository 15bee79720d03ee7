"""Reading and validating NONMEM-format datasets.

A dataset is a table with one row per event record: doses (``EVID`` 1 or 4), observations (``EVID`` 0),
other events (``EVID`` 2) and resets (``EVID`` 3). The columns follow NONMEM's conventions
(:data:`STANDARD_COLUMNS`); any other column is a covariate.

The workflow is

* :func:`read_dataset` reads a CSV file as **strings** (nothing is coerced silently), strips the headers
  and upper-cases standard column names written in another case (``time`` -> ``TIME``);
* :func:`check_dataset` collects **every** problem of a (string or numeric) frame as
  :class:`~pkpd.errors.DatasetViolation` objects, each listing all the rows it concerns;
* :func:`validate_dataset` reads (when given a path), checks, raises one
  :class:`~pkpd.errors.DatasetError` listing all problems, or returns a normalized numeric frame.

Record selection (NONMEM ``$DATA IGNORE``/``ACCEPT``): :func:`filter_records` drops the rows whose first
column starts with ``#`` (or another ``IGNORE`` character), the rows flagged ``C`` in a column named ``C``
(NONMEM's comment column, never a covariate), and the rows ``IGNORE=(list)``/``ACCEPT=(list)`` conditions
select; :func:`renumber` reports later problems by the rows of the file. Output grids: :func:`parse_grid`
reads ``START:END:STEP``; :func:`add_grid` adds one output record per subject and grid time.

Row numbers are 1-based *data* rows: the header is not counted, so data row 1 is line 2 of a CSV file,
and row ``i + 1`` is ``df.iloc[i]``.

Cell conventions (NONMEM): ``"."`` means 0 in the standard columns other than ``ID`` and ``TIME`` (where it
is a violation); a blank cell of an optional standard column means 0, except ``DV`` where it means
missing (NaN). Units: TIME and II in h, RATE in amount units per h, AMT in amount units (mg for the
built-in models).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Sequence, cast

import numpy as np
import pandas as pd

from .errors import DatasetError, DatasetViolation, rows_text

__all__ = [
    "frame_sha256",
    "STANDARD_COLUMNS",
    "read_dataset",
    "check_dataset",
    "validate_dataset",
    "standard_columns",
    "numeric_column",
    "COMMENT_COLUMN",
    "Condition",
    "RecordFilter",
    "RecordFilterError",
    "FilteredRecords",
    "record_filter",
    "parse_conditions",
    "filter_records",
    "renumber",
    "GRID_COLUMN",
    "MAX_GRID_POINTS",
    "MAX_GRID_ROWS",
    "parse_grid",
    "add_grid",
    "GridRecords",
]

#: NONMEM data items understood by the toolkit, in the order new columns are appended.
STANDARD_COLUMNS: tuple[str, ...] = ("ID", "TIME", "EVID", "AMT", "CMT", "RATE", "II", "ADDL", "SS", "DV", "MDV")

#: Most additional doses (ADDL) one record may ask for: the engine expands every dose (100,000 is 11 years of
#: hourly doses); a larger value is a typing error and would exhaust memory.
MAX_ADDL = 100_000

_REQUIRED = ("ID", "TIME")
_DOSE_EVIDS = (1.0, 4.0)
_RESET_EVIDS = (3.0, 4.0)
_MAX_SHOWN = 5

# Strict decimal number: no thousands separators, no underscores, no "nan"/"inf" spelled out.
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")

# Cell kinds produced by :func:`_parse_cells`.
_OK, _BLANK, _DOT, _BAD = 0, 1, 2, 3


# --------------------------------------------------------------------------------------------- reading


def read_dataset(path: str | Path) -> pd.DataFrame:
    """Read a NONMEM-format CSV file without converting any cell.

    This is the one reader of dataset files: ``pkpd simulate``, ``pkpd fit``, ``pkpd forecast`` and
    :func:`pkpd.nca.nca` all read their files here, so they see the same cells.

    Parameters
    ----------
    path
        CSV file with a header line. Cells may use ``"."`` for 0 / missing, as NONMEM does. The encoding
        is UTF-8 (with or without a byte-order mark), UTF-16 or UTF-32 with a byte-order mark, UTF-16
        without one (recognised by its NUL bytes), else Latin-1. The delimiter is a comma, or the
        semicolon, tab or ``|`` the header line uses when it has no comma.

    Returns
    -------
    pandas.DataFrame
        The raw frame: every cell a string, headers stripped of whitespace, standard column names
        upper-cased (``time`` -> ``TIME``), a ``RangeIndex`` in file order. Conversion to numbers happens
        in :func:`validate_dataset`, so that non-numeric cells can be reported with their rows.

    Raises
    ------
    DatasetError
        If the file does not exist, is empty, cannot be decoded (the message names the encoding tried),
        is binary, is not a well-formed table, or has a data row with fewer fields than the header (the
        message names the rows and the delimiter).
    """
    p = Path(path)
    source = str(path)

    def fail(message: str, rows: tuple[int, ...] = ()) -> DatasetError:
        return DatasetError([DatasetViolation(rows, None, message)], source=source)

    if not p.exists():
        raise fail(f"file not found: {p} (check the path; relative paths start at {Path.cwd()})")
    if not p.is_file():
        raise fail(f"{p} is not a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {p}: {exc.strerror or exc}") from None
    text, encoding = _decode(data, fail)
    delimiter = _delimiter(text)
    shown = _DELIMITER_NAMES[delimiter]
    try:
        records = [
            r
            for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
            if r and not (len(r) == 1 and not r[0].strip())
        ]  # blank lines are skipped
    except csv.Error as exc:
        raise fail(f"not a well-formed CSV table ({exc}; delimiter {shown})") from None
    if not records:
        raise fail("the file is empty; a NONMEM dataset needs a header line and data rows")
    header = [_clean_header(h, i) for i, h in enumerate(records[0])]
    width = len(header)
    n_fields = np.array([len(r) for r in records[1:]], dtype=int)
    for mask, what in ((n_fields < width, "too few"), (n_fields > width, "too many")):
        if mask.any():
            counts = ", ".join(str(k) for k in sorted(set(n_fields[mask].tolist())))
            one = int(mask.sum()) == 1
            hint = (
                "a truncated line?" if what == "too few" else "a decimal comma or an unquoted delimiter inside a value?"
            )
            raise fail(
                f"not a well-formed CSV table: {what} fields, {'this row has' if one else 'these rows have'} "
                f"{counts} but the header has {width} (delimiter {shown}); {hint} Every row needs one "
                "value (or an empty field) per column",
                _rows(mask),
            )
    df = pd.DataFrame(records[1:] or None, columns=range(width), dtype=str)
    df.columns = header
    return _normalize_headers(df)


_DELIMITER_NAMES = {",": "comma ','", ";": "semicolon ';'", "\t": "tab", "|": "pipe '|'"}


def _decode(data: bytes, fail: Callable[[str], DatasetError]) -> tuple[str, str]:
    """The text of a dataset file and the encoding used (see :func:`read_dataset`)."""
    boms = (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    )
    encoding = next((enc for bom, enc in boms if data.startswith(bom)), None)
    if encoding is None and b"\x00" in data:
        if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
            raise fail(
                "this is a binary file (an Excel workbook?), not a CSV text file; export it as CSV "
                "(comma-separated, UTF-8)"
            )
        head = data[:4096]
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if odd > 0.3 * len(head[1::2]) and even == 0:
            encoding = "utf-16-le"
        elif even > 0.3 * len(head[0::2]) and odd == 0:
            encoding = "utf-16-be"
        else:
            raise fail(
                "the file contains NUL bytes and is not UTF-8, UTF-16 or UTF-32 text: not a CSV file? "
                "Save it as CSV (comma-separated, UTF-8)"
            )
    if encoding is not None:
        name = encoding.upper().replace("-SIG", "").replace("-LE", " (little-endian)").replace("-BE", " (big-endian)")
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise fail(
                f"cannot decode the file as {name} (byte {exc.start}: {exc.reason}); save it as CSV UTF-8"
            ) from None
    else:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = data.decode("latin-1"), "latin-1"  # every byte decodes
    if "\x00" in text:
        raise fail(
            f"the file contains NUL characters after decoding it as {encoding}: not a CSV text file? "
            "Save it as CSV (comma-separated, UTF-8)"
        )
    return text, encoding


def _delimiter(text: str) -> str:
    """The field delimiter: a comma, else the semicolon, tab or pipe of the header line (first non-blank)."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    if "," in header:
        return ","
    counts = {d: header.count(d) for d in (";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _clean_header(h: object, i: int) -> str:
    if h is None or (isinstance(h, float) and math.isnan(h)):
        return f"Unnamed: {i}"
    s = str(h).strip()
    return s if s else f"Unnamed: {i}"


def _normalize_headers(df: pd.DataFrame) -> pd.DataFrame:
    """Strip headers and upper-case standard column names written in another case (returns a copy)."""
    new = []
    for c in df.columns:
        name = str(c).strip()
        if name.upper() in STANDARD_COLUMNS:
            name = name.upper()
        new.append(name)
    out = frame_copy(df)
    out.columns = new
    return out


def frame_copy(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` that later changes to either frame do not reach the other: lazy under pandas'
    copy-on-write (always on from pandas 3; the data is copied only when one side writes), else deep."""
    major = int(pd.__version__.split(".")[0])
    cow = major >= 3 or bool(getattr(pd.options.mode, "copy_on_write", False) is True)
    return df.copy(deep=not cow)


# --------------------------------------------------------------------------------------------- parsing


class _LazyCells:
    """The original cells of a column (object array), built only when a message needs them: indexing
    (``raw[mask]``) converts the column then, so a valid column never makes one Python object per cell."""

    __slots__ = ("_s", "_arr")

    def __init__(self, s: pd.Series):
        self._s: pd.Series = s
        self._arr: np.ndarray | None = None

    def __getitem__(self, key: Any) -> Any:
        if self._arr is None:
            self._arr = self._s.to_numpy(dtype=object)
        return self._arr[key]


def _parse_cells(s: pd.Series) -> tuple[np.ndarray, np.ndarray, _LazyCells]:
    """Classify every cell of a column.

    Returns ``(values, kinds, raw)``: ``values`` float (NaN unless the cell is a finite number),
    ``kinds`` one of ``_OK``, ``_BLANK`` (empty or NaN), ``_DOT`` (``"."``), ``_BAD`` (anything else),
    ``raw`` the original cells (indexable like an object array) for messages.

    Numeric columns are classified with array operations, columns of strings one distinct text at a time
    (:func:`pandas.factorize`); only a column that mixes strings with other objects is read cell by cell.
    """
    raw = _LazyCells(s)
    n = len(s)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype=float, na_value=np.nan)
        kinds = np.where(np.isnan(values), _BLANK, np.where(np.isfinite(values), _OK, _BAD))
        values = np.where(kinds == _OK, values, np.nan)
        return values, kinds.astype(np.int8), raw
    if n and pd.api.types.infer_dtype(s, skipna=False) == "string":
        # every cell a str: classify each distinct text once (a column holds few distinct texts), then spread
        codes, uniq = pd.factorize(s.to_numpy(dtype=object), use_na_sentinel=False)
        parsed = [_parse_cell(u) for u in uniq]
        u_kinds = np.array([k for k, _ in parsed], dtype=np.int8)
        u_values = np.array([v for _, v in parsed], dtype=float)
        return u_values[codes], u_kinds[codes], raw
    values = np.full(n, np.nan)
    kinds = np.empty(n, dtype=np.int8)
    for i, cell in enumerate(s.to_numpy(dtype=object)):
        kinds[i], v = _parse_cell(cell)
        values[i] = v
    return values, kinds, raw


def _parse_cell(cell: object) -> tuple[int, float]:
    if cell is None or cell is pd.NA or cell is pd.NaT:
        return _BLANK, math.nan
    if isinstance(cell, (bool, np.bool_)):
        return _BAD, math.nan
    if isinstance(cell, numbers.Real):
        x = float(cell)
        if math.isnan(x):
            return _BLANK, math.nan
        return (_OK, x) if math.isfinite(x) else (_BAD, math.nan)
    if isinstance(cell, str):
        t = cell.strip()
        if not t:
            return _BLANK, math.nan
        if t == ".":
            return _DOT, math.nan
        if _NUMBER.match(t):
            x = float(t)
            return (_OK, x) if math.isfinite(x) else (_BAD, math.nan)
    return _BAD, math.nan


def _show(cell: object, kind: int) -> str:
    if kind == _BLANK:
        return "blank"
    if isinstance(cell, str):
        return repr(cell.strip())
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return repr(cell) if not isinstance(cell, numbers.Real) else str(cell)


def _fmt_values(cells: Sequence[object], kinds: Sequence[int] | None = None) -> str:
    """Up to five distinct offending values, in order of appearance."""
    shown: list[str] = []
    for j, c in enumerate(cells):
        text = _show(c, _OK if kinds is None else int(kinds[j]))
        if text not in shown:
            shown.append(text)
    head = ", ".join(shown[:_MAX_SHOWN])
    return head + (f" (+{len(shown) - _MAX_SHOWN} more)" if len(shown) > _MAX_SHOWN else "")


_DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+\s*$")


def _comma_hint(cells: Sequence[object]) -> str:
    """A hint when a bad cell looks like a number written with a decimal comma (``0,57``)."""
    if any(isinstance(c, str) and _DECIMAL_COMMA.match(c) for c in cells):
        return " (a decimal comma? write decimals with a point, 0.57)"
    return ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _rows(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in np.flatnonzero(mask))


def _is_int(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        out: np.ndarray = np.isfinite(x) & (x == np.round(x))
        return out


@dataclass
class _Analysis:
    """What :func:`_analyse` found: the violations and the effective standard columns."""

    violations: list[DatasetViolation]
    frame: pd.DataFrame  # headers normalized
    columns: dict[str, np.ndarray]  # effective float values of every standard column


# --------------------------------------------------------------------------------------------- checking


def check_dataset(
    df: pd.DataFrame,
    *,
    n_compartments: int | None = None,
    compartment_names: Sequence[str] | None = None,
    parameter_names: Collection[str] = (),
    required_covariates: Collection[str] = (),
    rate_compartments_forbidden: Collection[int] = (),
    model_name: str | None = None,
) -> list[DatasetViolation]:
    """Collect every problem of a NONMEM-format dataset.

    Parameters
    ----------
    df
        Raw string frame (from :func:`read_dataset`) or numeric frame. Standard column names are matched
        case-insensitively.
    n_compartments
        Number of compartments of the model; dose rows with ``CMT`` above it are reported. Defaults to
        ``len(compartment_names)`` when only the names are given; ``None`` and no names: not checked.
    compartment_names
        Compartment names in CMT order (``CMT=1`` is the first), used in messages.
    parameter_names
        Parameters of the parameter file; ``RATE=-1`` / ``RATE=-2`` into compartment ``n`` need ``R{n}`` /
        ``D{n}``.
    required_covariates
        Covariate columns the parameter file references; each must exist and be numeric on every row.
    rate_compartments_forbidden
        Compartments (1-based) into which the model cannot take an infusion (``RATE != 0``).
    model_name
        Model name used in messages (e.g. ``"2cmt_oral"``).

    Returns
    -------
    list of DatasetViolation
        Every problem found, sorted by first row (whole-dataset problems first); identical problems of
        one kind are grouped into one violation listing all their rows. Empty if the dataset is valid.
    """
    return _analyse(
        df,
        n_compartments=n_compartments,
        compartment_names=compartment_names,
        parameter_names=parameter_names,
        required_covariates=required_covariates,
        rate_compartments_forbidden=rate_compartments_forbidden,
        model_name=model_name,
    ).violations


def _analyse(
    df: pd.DataFrame,
    *,
    n_compartments: int | None,
    compartment_names: Sequence[str] | None,
    parameter_names: Collection[str] | None,
    required_covariates: Collection[str],
    rate_compartments_forbidden: Collection[int],
    model_name: str | None,
) -> _Analysis:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    frame = _normalize_headers(df)
    n = len(frame)
    out: list[DatasetViolation] = []

    def add(mask_or_rows: np.ndarray | Iterable[int], column: str | None, message: str) -> None:
        rows = _rows(mask_or_rows) if isinstance(mask_or_rows, np.ndarray) else tuple(mask_or_rows)
        out.append(DatasetViolation(rows, column, message))

    # ---- columns ----------------------------------------------------------------------------------
    names = list(frame.columns)
    first: dict[str, int] = {}
    for i, c in enumerate(names):
        first.setdefault(c, i)
    for c in first:
        k = names.count(c)
        if k > 1:
            add((), c, f"column {c} appears {k} times (standard names ignore case); keep one")
    if n == 0:
        add((), None, "the dataset has no data rows")

    def present(c: str) -> bool:
        return c in first

    def col(c: str) -> pd.Series:
        return frame.iloc[:, first[c]]

    for c in _REQUIRED:
        if not present(c):
            found = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            add((), c, f"required column {c} is missing (columns found: {found or 'none'})")

    # ---- cells of standard columns ------------------------------------------------------------------
    vals: dict[str, np.ndarray] = {}
    for c in STANDARD_COLUMNS:
        if not present(c):
            continue
        v, kinds, raw = _parse_cells(col(c))
        if c in _REQUIRED:
            bad = kinds != _OK
            if bad.any():
                unit = " (h)" if c == "TIME" else ""
                add(
                    bad,
                    c,
                    f"{c} must be a number{unit} on every row; found {_fmt_values(raw[bad], kinds[bad])}"
                    f"{_comma_hint(raw[bad])}",
                )
        else:
            bad = kinds == _BAD
            if bad.any():
                conv = "'.' means 0, blank means missing" if c == "DV" else "'.' or blank means 0"
                add(
                    bad,
                    c,
                    f"non-numeric values {_fmt_values(raw[bad], kinds[bad])}; use numbers ({conv})"
                    f"{_comma_hint(raw[bad])}",
                )
            v = v.copy()
            v[kinds == _DOT] = 0.0
            v[kinds == _BLANK] = np.nan if c == "DV" else 0.0
        vals[c] = v

    nan = np.full(n, np.nan)
    zeros = np.zeros(n)
    ident = vals.get("ID", nan)
    time = vals.get("TIME", nan)
    amt = vals.get("AMT", zeros)
    if "EVID" in vals:
        evid = vals["EVID"]
    else:
        with np.errstate(invalid="ignore"):
            evid = np.where(amt > 0, 1.0, 0.0)
            if "MDV" in vals:
                evid = np.where((vals["MDV"] == 1) & (amt == 0), 2.0, evid)
            evid = np.where(np.isnan(amt), np.nan, evid)
    evid_ok = np.isin(evid, (0.0, 1.0, 2.0, 3.0, 4.0))
    dose = np.isin(evid, _DOSE_EVIDS)
    if not present("AMT") and dose.any():
        add(dose, "AMT", "column AMT is missing but these rows are doses (EVID 1 or 4); add AMT (amount units)")
        amt = nan
    if "CMT" in vals:
        cmt = vals["CMT"]
    else:
        cmt = np.where(dose, 1.0, 0.0)  # no CMT: every dose goes to compartment 1
    rate = vals.get("RATE", zeros)
    ii = vals.get("II", zeros)
    addl = vals.get("ADDL", zeros)
    ss = vals.get("SS", zeros)
    dv = vals.get("DV", nan)
    if "MDV" in vals:
        mdv = vals["MDV"]
    else:
        mdv = np.where(np.isnan(evid), np.nan, np.where(evid != 0, 1.0, 0.0))

    if parameter_names is not None:
        out += _covariate_violations(frame, required_covariates)

    with np.errstate(invalid="ignore"):
        # ---- simple ranges ---------------------------------------------------------------------------
        m = time < 0
        if m.any():
            add(m, "TIME", "negative TIME; times (h) must be >= 0")
        m = np.isfinite(evid) & ~evid_ok
        if m.any() and present("EVID"):
            add(
                m,
                "EVID",
                "EVID must be 0 (observation), 1 (dose), 2 (other), 3 (reset) or 4 (reset and "
                f"dose); found {_fmt_values(evid[m])}",
            )
        m = np.isfinite(mdv) & ~np.isin(mdv, (0.0, 1.0))
        if m.any():
            add(m, "MDV", f"MDV must be 0 or 1; found {_fmt_values(mdv[m])}")
        m = amt < 0
        if m.any():
            add(m, "AMT", "negative AMT; amounts must be >= 0 (amount units)")

        # ---- record order ----------------------------------------------------------------------------
        _check_order(ident, time, evid, add)

        # ---- compartments ----------------------------------------------------------------------------
        n_cmt = n_compartments
        if n_cmt is None and compartment_names is not None:
            n_cmt = len(compartment_names)
        cnames = list(compartment_names) if compartment_names is not None else None
        cmt_int = _is_int(cmt)
        m = np.isfinite(cmt) & ~cmt_int
        if m.any():
            add(m, "CMT", f"CMT must be a whole compartment number; found {_fmt_values(cmt[m])}")
        allowed = f"1..{n_cmt}" if n_cmt is not None else ">= 1"
        m = dose & cmt_int & (cmt == 0)
        if m.any():
            add(m, "CMT", f"dose rows need a compartment number (CMT {allowed}); CMT 0 or '.' is not accepted")
        m = dose & cmt_int & (cmt < 0)
        if m.any():
            add(
                m,
                "CMT",
                f"negative CMT on a dose row (NONMEM's compartment turn-off) is not supported; use CMT {allowed}",
            )
        in_range = dose & cmt_int & (cmt >= 1)
        if n_cmt is not None:
            where = f"model {model_name}" if model_name else "the model"
            if cnames:
                has = ", ".join(f"{i}={nm}" for i, nm in enumerate(cnames[:n_cmt], start=1))
            else:
                has = f"compartments 1..{n_cmt}"
            for value in _unique(cmt[in_range & (cmt > n_cmt)]):
                m = in_range & (cmt == value)
                add(m, "CMT", f"CMT {_num(value)} does not exist in {where}, which has {has}")
            in_range = in_range & (cmt <= n_cmt)

        # ---- RATE ------------------------------------------------------------------------------------
        m = np.isfinite(rate) & (rate < 0) & ~np.isin(rate, (-1.0, -2.0))
        if m.any():
            add(
                m,
                "RATE",
                "RATE must be >= 0 (amount units/h), -1 (modeled rate) or -2 (modeled duration); "
                f"found {_fmt_values(rate[m])}",
            )
        forbidden = {int(c) for c in rate_compartments_forbidden}
        for c in sorted(forbidden):
            m = in_range & (cmt == c) & np.isfinite(rate) & (rate != 0)
            if m.any():
                label = f" ({c}={cnames[c - 1]})" if cnames and 1 <= c <= len(cnames) else ""
                add(m, "RATE", f"infusions into compartment {c} are not supported by this model{label}; set RATE=0")

        if parameter_names is not None:
            out += _rate_parameter_violations(cmt, rate, evid, n_cmt, parameter_names, rate_compartments_forbidden)

        # ---- II / ADDL -------------------------------------------------------------------------------
        m = ii < 0
        if m.any():
            add(m, "II", "negative II; the dosing interval (h) must be >= 0")
        m = np.isfinite(addl) & ((addl < 0) | ~_is_int(addl))
        if m.any():
            add(m, "ADDL", f"ADDL must be a whole number >= 0; found {_fmt_values(addl[m])}")
        m = np.isfinite(addl) & (addl > MAX_ADDL)
        if m.any():
            add(
                m,
                "ADDL",
                f"ADDL {_fmt_values(addl[m])} is too large: at most {MAX_ADDL:,} additional doses per "
                "record (every dose is expanded); split the record into several",
            )
        m = (addl > 0) & (ii == 0)
        if m.any():
            add(m, "ADDL", "ADDL > 0 needs II > 0 (the interval between the additional doses, h)")

        # ---- SS --------------------------------------------------------------------------------------
        m = ss == 3
        if m.any():
            add(m, "SS", "SS=3 is not supported; use SS=1 or SS=2")
        m = np.isfinite(ss) & ~np.isin(ss, (0.0, 1.0, 2.0, 3.0))
        if m.any():
            add(m, "SS", f"SS must be 0, 1 or 2; found {_fmt_values(ss[m])}")
        m = np.isfinite(evid) & evid_ok & ~dose & np.isfinite(ss) & (ss != 0)
        if m.any():
            add(m, "SS", "SS is set on a non-dose row (EVID not 1 or 4); SS applies only to doses")
        nothing = dose & (amt == 0) & np.isfinite(rate) & ~(rate > 0)
        ss_dose = dose & np.isin(ss, (1.0, 2.0))
        const_inf = ss_dose & (amt == 0) & (rate > 0)
        m = ss_dose & (ii == 0) & ~const_inf & ~nothing
        if m.any():
            add(
                m,
                "II",
                "SS=1 or 2 needs II > 0 (the dosing interval, h); only a steady-state constant "
                "infusion (SS=1, AMT=0, RATE>0) may have II=0",
            )
        m = const_inf & (ss == 2)
        if m.any():
            add(m, "SS", "SS=2 with a constant infusion (AMT=0, RATE>0, II=0) is not allowed; use SS=1")
        m = const_inf & (ss == 1) & (ii > 0)
        if m.any():
            add(m, "II", "a steady-state constant infusion (SS=1, AMT=0, RATE>0) needs II=0")

        # ---- empty doses -----------------------------------------------------------------------------
        m = dose & (ss == 0) & (amt == 0) & (rate > 0)
        if m.any():
            add(
                m,
                "AMT",
                "AMT=0 with RATE>0 is an infusion of nothing; give the infused amount in AMT "
                "(a steady-state constant infusion uses SS=1, II=0)",
            )
        if nothing.any():
            add(
                nothing,
                "AMT",
                "dose of 0: AMT=0 on a dose row (EVID 1 or 4); set AMT > 0 (amount units) "
                "or make the row a non-dose record (EVID 0 or 2)",
            )

    columns = {
        "ID": ident,
        "TIME": time,
        "EVID": evid,
        "AMT": amt,
        "CMT": cmt,
        "RATE": rate,
        "II": ii,
        "ADDL": addl,
        "SS": ss,
        "DV": dv,
        "MDV": mdv,
    }
    out.sort(key=lambda v: v.rows[0] if v.rows else 0)
    return _Analysis(out, frame, columns)


def _parameter_violations(
    frame: pd.DataFrame,
    columns: dict[str, np.ndarray],
    *,
    n_compartments: int | None,
    parameter_names: Collection[str],
    required_covariates: Collection[str],
    rate_compartments_forbidden: Collection[int],
) -> list[DatasetViolation]:
    """The problems that depend on the parameter file, as :func:`check_dataset` reports them: referenced
    covariate columns missing or not numeric, ``RATE=-1``/``-2`` doses into a compartment without
    ``R<n>``/``D<n>`` (``frame`` with normalized headers and ``columns`` the effective standard columns of
    :func:`_analyse`); sorted by first row."""
    out = _covariate_violations(frame, required_covariates)
    out += _rate_parameter_violations(
        columns["CMT"], columns["RATE"], columns["EVID"], n_compartments, parameter_names, rate_compartments_forbidden
    )
    out.sort(key=lambda v: v.rows[0] if v.rows else 0)
    return out


def _covariate_violations(frame: pd.DataFrame, required_covariates: Collection[str]) -> list[DatasetViolation]:
    """Covariate columns the parameter file references: present, and numeric on every row."""
    out: list[DatasetViolation] = []
    names = list(frame.columns)
    first: dict[str, int] = {}
    for i, c in enumerate(names):
        first.setdefault(c, i)
    for cov in required_covariates:
        if cov == COMMENT_COLUMN:
            out.append(
                DatasetViolation(
                    (),
                    cov,
                    f"column {cov} is NONMEM's comment flag (rows with C in it are "
                    "ignored), not a covariate; rename the covariate column",
                )
            )
        elif cov in first:
            _, kinds, raw = _parse_cells(frame.iloc[:, first[cov]])
            bad = kinds != _OK
            if bad.any():
                out.append(
                    DatasetViolation(
                        _rows(bad),
                        cov,
                        f"covariate {cov} must be numeric on every row; found "
                        f"{_fmt_values(raw[bad], kinds[bad])}{_comma_hint(raw[bad])}",
                    )
                )
        else:
            near = [c for c in names if c.lower() == str(cov).lower()]
            hint = f" (found {near[0]!r}; covariate names are case-sensitive)" if near else ""
            out.append(
                DatasetViolation(
                    (), cov, f"parameter file references column {cov}, which the dataset does not have{hint}"
                )
            )
    return out


def _rate_parameter_violations(
    cmt: np.ndarray,
    rate: np.ndarray,
    evid: np.ndarray,
    n_compartments: int | None,
    parameter_names: Collection[str],
    rate_compartments_forbidden: Collection[int],
) -> list[DatasetViolation]:
    """``RATE=-1``/``-2`` doses into compartment ``n`` need ``R<n>``/``D<n>`` in the parameter file."""
    out: list[DatasetViolation] = []
    with np.errstate(invalid="ignore"):
        dose = np.isin(evid, _DOSE_EVIDS)
        in_range = dose & _is_int(cmt) & (cmt >= 1)
        if n_compartments is not None:
            in_range = in_range & (cmt <= n_compartments)
        forbidden = sorted({int(c) for c in rate_compartments_forbidden})
        is_forbidden = np.isin(cmt, forbidden) if forbidden else np.zeros(len(cmt), dtype=bool)
        params = set(parameter_names)
        for code, prefix, what in ((-2.0, "D", "modeled duration"), (-1.0, "R", "modeled rate")):
            sel = in_range & (rate == code) & ~is_forbidden
            for value in _unique(cmt[sel]):
                need = f"{prefix}{_num(value)}"
                if need not in params:
                    out.append(
                        DatasetViolation(
                            _rows(sel & (cmt == value)),
                            "RATE",
                            f"RATE={_num(code)} ({what}) needs parameter {need} in the parameter file",
                        )
                    )
    return out


def _unique(x: np.ndarray) -> list[float]:
    return [float(u) for u in np.unique(x[np.isfinite(x)])]


def _check_order(
    ident: np.ndarray,
    time: np.ndarray,
    evid: np.ndarray,
    add: Callable[[np.ndarray | Iterable[int], str | None, str], None],
) -> None:
    """TIME must not decrease within an ID (except on an EVID 3/4 row); each ID must be one block.

    Rows whose ID is missing are skipped (already reported) and do not split a block. Vectorized: the
    check is linear in the number of rows.
    """
    f = np.nonzero(np.isfinite(ident))[0]
    if f.size == 0:
        return
    idf, tf, evf = ident[f], time[f], evid[f]
    m = f.size
    ar = np.arange(m)
    new_block = np.ones(m, bool)
    new_block[1:] = idf[1:] != idf[:-1]
    block_start = np.maximum.accumulate(np.where(new_block, ar, 0))
    fin = np.isfinite(tf)
    last_fin = np.maximum.accumulate(np.where(fin, ar, -1))
    prev = np.concatenate([[-1], last_fin[:-1]])
    has_prev = prev >= block_start
    prev_t = tf[np.maximum(prev, 0)]
    decreasing = fin & has_prev & (tf < prev_t) & ~np.isin(evf, _RESET_EVIDS)
    if decreasing.any():
        add(
            tuple(int(f[i]) + 1 for i in np.nonzero(decreasing)[0]),
            "TIME",
            "TIME decreases within an ID; sort each subject's records by TIME (only a reset row, EVID 3 or 4, "
            "may go back in time)",
        )
    starts = np.nonzero(new_block)[0]
    ends = np.append(starts[1:], m) - 1
    bid = idf[starts]
    uniq, counts = np.unique(bid, return_counts=True)
    for x in uniq[counts > 1]:
        spans = [(int(f[a]), int(f[b])) for a, b in zip(starts[bid == x], ends[bid == x])]
        rows = tuple(r + 1 for a, b in spans[1:] for r in range(a, b + 1))
        text = ", ".join(f"{a + 1}-{b + 1}" if b > a else f"{a + 1}" for a, b in spans)
        add(
            rows,
            "ID",
            f"ID {_num(x)} appears in {len(spans)} separate blocks of rows ({text}); keep each "
            "subject's records together (NONMEM would treat each block as a new subject)",
        )


def standard_columns(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The effective values of every standard column, under the same rules as :func:`validate_dataset`.

    Commands that need more columns than :func:`validate_dataset` checks (``pkpd fit``: DV, DVID,
    BLQ...) read EVID, MDV, DV and the rest here, so that ``"."`` and blank mean the same in every
    command.

    Parameters
    ----------
    df
        Raw string frame (from :func:`read_dataset`) or numeric frame; standard column names are matched
        case-insensitively.

    Returns
    -------
    dict of str to numpy.ndarray
        One float64 array (one value per row) for each name of :data:`STANDARD_COLUMNS`: ``"."`` and
        blank -> 0 (``DV``: ``"."`` -> 0, blank -> NaN), absent columns defaulted as in
        :func:`validate_dataset` (EVID from AMT and MDV, MDV from EVID, CMT 1 on doses). A cell that is
        not a number is NaN (:func:`check_dataset` reports it). Units as in the dataset (TIME and II h,
        AMT amount units, RATE amount units per h).
    """
    res = _analyse(
        df,
        n_compartments=None,
        compartment_names=None,
        parameter_names=(),
        required_covariates=(),
        rate_compartments_forbidden=(),
        model_name=None,
    )
    return {c: np.asarray(res.columns[c], dtype=np.float64) for c in STANDARD_COLUMNS}


def numeric_column(values: pd.Series | Sequence[object]) -> np.ndarray:
    """Float values of a non-standard column (covariate, DVID, BLQ, LLOQ, OCC...) under the dataset rules.

    Parameters
    ----------
    values
        The column's cells (strings as read by :func:`read_dataset`, or numbers).

    Returns
    -------
    numpy.ndarray
        float64, one value per cell, in the column's units: a decimal number as written; ``"."``, blank
        and anything else (text, ``inf``, ``nan``) NaN.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    v, _, _ = _parse_cells(s)
    return v


# --------------------------------------------------------------------------------------------- validating


def validate_dataset(
    df_or_path: pd.DataFrame | str | Path,
    *,
    n_compartments: int | None = None,
    compartment_names: Sequence[str] | None = None,
    parameter_names: Collection[str] | None = (),
    required_covariates: Collection[str] = (),
    rate_compartments_forbidden: Collection[int] = (),
    model_name: str | None = None,
) -> pd.DataFrame:
    """Read (if given a path), check and normalize a NONMEM-format dataset.

    Parameters
    ----------
    df_or_path
        A frame (raw strings or numbers) or the path of a CSV file (read with :func:`read_dataset`).
    n_compartments, compartment_names, parameter_names, required_covariates, rate_compartments_forbidden, model_name
        As in :func:`check_dataset`; ``parameter_names=None`` leaves out the checks that depend on the
        parameter file (referenced covariates, ``R<n>``/``D<n>`` for ``RATE=-1``/``-2``), which
        :class:`pkpd.Simulator` runs for each parameter set.

    Returns
    -------
    pandas.DataFrame
        A new frame, rows in the original order (same index), columns in the original order with the
        missing standard columns appended in :data:`STANDARD_COLUMNS` order. Every standard column is
        float64, with defaults: ``"."``/blank -> 0 (``DV``: blank -> NaN); absent ``EVID`` -> 1 where
        ``AMT > 0``, 2 where ``MDV = 1`` and ``AMT = 0``, else 0; absent ``AMT``, ``RATE``, ``II``,
        ``ADDL``, ``SS`` -> 0; absent ``CMT`` -> 1 on dose rows and 0 (NONMEM's default observation
        compartment) elsewhere; absent ``MDV`` -> 1 where ``EVID != 0`` else 0; absent ``DV`` -> NaN.
        Other (covariate) columns whose cells are all numbers, blank or ``"."`` become float64 (blank and
        ``"."`` -> NaN); the rest, and a column named ``C`` (NONMEM's comment flag, never a covariate:
        :func:`filter_records`), are left unchanged.

    Raises
    ------
    DatasetError
        Listing every violation (see :func:`check_dataset`); ``source`` is the path, or ``None`` for a
        frame.
    """
    source: str | None = None
    if isinstance(df_or_path, (str, Path)):
        source = str(df_or_path)
        df = read_dataset(df_or_path)
    elif isinstance(df_or_path, pd.DataFrame):
        df = df_or_path
    else:
        raise TypeError(f"expected a pandas DataFrame or a path, got {type(df_or_path).__name__}")
    result = _analyse(
        df,
        n_compartments=n_compartments,
        compartment_names=compartment_names,
        parameter_names=parameter_names,
        required_covariates=required_covariates,
        rate_compartments_forbidden=rate_compartments_forbidden,
        model_name=model_name,
    )
    if result.violations:
        raise DatasetError(result.violations, source=source)

    out = result.frame
    for c in out.columns:
        if c in STANDARD_COLUMNS or c == COMMENT_COLUMN:  # C: NONMEM's comment flag, never a covariate
            continue
        converted = _covariate_to_float(out[c])
        if converted is not None:
            out[c] = converted
    for c in STANDARD_COLUMNS:
        out[c] = np.asarray(result.columns[c], dtype=np.float64)
    return out


def _covariate_to_float(s: pd.Series) -> np.ndarray | None:
    """float64 values of a covariate column whose cells are all numbers, blank or '.', else ``None``."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return None
    values, kinds, _ = _parse_cells(s)
    if (kinds == _BAD).any():
        return None
    return values


# --------------------------------------------------------------------------------------------- IGNORE/ACCEPT

#: Name of NONMEM's comment-flag column: never a covariate; rows whose cell starts with ``C`` are dropped.
COMMENT_COLUMN = "C"

# NONMEM's relational operators (and the Fortran-90 / C spellings NM-TRAN also accepts), canonical forms
_OPERATORS = {
    ".EQ.": ".EQ.",
    ".NE.": ".NE.",
    ".GT.": ".GT.",
    ".GE.": ".GE.",
    ".LT.": ".LT.",
    ".LE.": ".LE.",
    ".EQN.": ".EQN.",
    ".NEN.": ".NEN.",
    "==": ".EQ.",
    "/=": ".NE.",
    "!=": ".NE.",
    ">=": ".GE.",
    "<=": ".LE.",
    ">": ".GT.",
    "<": ".LT.",
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(\.[A-Za-z]{2,3}\.|==|/=|!=|>=|<=|>|<)\s*(.*?)\s*$")
_OPERATOR_LIST = ".EQ., .NE., .GT., .GE., .LT., .LE. (also .EQN., .NEN., ==, /=, !=, >, >=, <, <=)"


class RecordFilterError(DatasetError):
    """An IGNORE/ACCEPT option is malformed or cannot be applied to the dataset (the message names it)."""


@dataclass(frozen=True)
class Condition:
    """One NONMEM ``$DATA`` condition ``COLUMN.OP.VALUE`` (e.g. ``DV.EQ.0``, ``TIME.GT.24``).

    ``.EQ.``/``.NE.`` compare numerically when the value and the cell are numbers (``"."`` and blank cells
    count as 0, as in NM-TRAN), else as text (stripped); ``.EQN.``/``.NEN.``, ``.GT.``, ``.GE.``, ``.LT.``
    and ``.LE.`` are numeric and need a number as value and in every cell of the column. Values are in the
    column's own units (TIME in h).
    """

    column: str
    op: str  # canonical: .EQ., .NE., .GT., .GE., .LT., .LE., .EQN., .NEN.
    value: str
    text: str  # as written, for messages

    @property
    def numeric(self) -> bool:
        return self.op not in (".EQ.", ".NE.")

    def mask(
        self, frame: pd.DataFrame, what: str, source: str | None = None, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows (bool, one per row of ``frame``) where the condition holds; ``what`` ("IGNORE"/"ACCEPT")
        names the option in errors, ``rows`` the 1-based data row of each row of ``frame`` (default 1..n)."""
        names = list(frame.columns)
        col = self.column.upper() if self.column.upper() in STANDARD_COLUMNS else self.column
        if col not in names:
            near = [c for c in names if str(c).lower() == col.lower()]
            hint = (
                f" (found {near[0]!r}; names other than the standard columns are case-sensitive)"
                if near
                else f"; columns: {', '.join(map(str, names[:15]))}{', ...' if len(names) > 15 else ''}"
            )
            raise _filter_error(
                f"{what} condition {self.text!r} names column {self.column}, which the dataset does not have{hint}",
                source,
            )
        cells = frame.iloc[:, names.index(col)]
        values, kinds, raw = _parse_cells(cells)
        values = np.where((kinds == _DOT) | (kinds == _BLANK), 0.0, values)  # NM-TRAN: null fields are 0
        v_kind, v = _parse_cell(self.value)
        v = 0.0 if v_kind == _DOT else v
        v_ok = v_kind in (_OK, _DOT)
        if self.numeric:
            if not v_ok:
                raise _filter_error(
                    f"{what} condition {self.text!r}: {self.op} compares numbers, and {self.value!r} is not a number",
                    source,
                )
            bad = kinds == _BAD
            if bad.any():
                raise _filter_error(
                    f"{what} condition {self.text!r}: {self.op} compares numbers, and column "
                    f"{col} holds {_fmt_values(raw[bad], kinds[bad])} (not a number) on "
                    f"{_rows_text(_rows(bad) if rows is None else tuple(int(r) for r in rows[bad]))}"
                    "; use .EQ./.NE. to compare text",
                    source,
                )
        with np.errstate(invalid="ignore"):
            if self.op in (".EQ.", ".NE.", ".EQN.", ".NEN."):
                if v_ok:
                    num = kinds != _BAD
                    eq = np.where(num, values == v, False)
                    if not self.numeric and (~num).any():  # text cells: compare the text
                        text = np.array([str(c).strip() for c in raw[~num]], dtype=object)
                        eq[~num] = text == self.value
                else:
                    eq = cells.astype(str).str.strip().to_numpy() == self.value
                return eq if self.op in (".EQ.", ".EQN.") else ~eq
            return {".GT.": values > v, ".GE.": values >= v, ".LT.": values < v, ".LE.": values <= v}[self.op]


@dataclass(frozen=True)
class RecordFilter:
    """NONMEM ``$DATA`` record selection: ``IGNORE=c`` characters, ``IGNORE=(list)`` or ``ACCEPT=(list)``.

    Attributes
    ----------
    chars
        ``IGNORE=c`` rules: a row whose first column's first non-blank character is ``c`` is dropped;
        ``"@"``: the first non-blank character is a letter or ``@`` (header lines). ``#`` is always among
        them (NONMEM's default).
    ignore
        Conditions (OR-ed, as NONMEM's comma): a row where any holds is dropped.
    accept
        Conditions (OR-ed): a row is kept only where one holds. Not together with ``ignore``, as in NONMEM.

    Whatever the options, a column named ``C`` is NONMEM's comment flag: rows whose ``C`` cell starts with
    ``C`` (or ``c``) are dropped, and the column is never a covariate.
    """

    chars: tuple[str, ...] = ("#",)
    ignore: tuple[Condition, ...] = ()
    accept: tuple[Condition, ...] = ()

    def describe(self) -> str:
        """The options in NONMEM syntax, e.g. ``IGNORE=# IGNORE=(DV.EQ.0)``."""
        parts = [f"IGNORE={c}" for c in self.chars]
        for name, conds in (("IGNORE", self.ignore), ("ACCEPT", self.accept)):
            if conds:
                parts.append(f"{name}=({','.join(c.column + c.op + c.value for c in conds)})")
        return " ".join(parts)


@dataclass(frozen=True)
class FilteredRecords:
    """What :func:`filter_records` kept and dropped.

    Attributes
    ----------
    frame
        The kept rows (a new ``RangeIndex``), columns unchanged.
    rows
        1-based data-row numbers of the kept rows in the input (``int64``), to report problems of the kept
        rows by their place in the file (:func:`renumber`).
    dropped
        ``{reason: 1-based rows}`` of the dropped rows, in the order the rules were applied.
    """

    frame: pd.DataFrame
    rows: np.ndarray
    dropped: dict[str, tuple[int, ...]]

    @property
    def n_dropped(self) -> int:
        return sum(len(r) for r in self.dropped.values())

    def message(self) -> str | None:
        """One line for the user (``None`` when nothing was dropped): how many rows, why, which."""
        if not self.dropped:
            return None
        n = self.n_dropped
        why = "; ".join(f"{len(r)} {reason} ({_rows_text(r)})" for reason, r in self.dropped.items())
        return f"ignored {n} of {n + len(self.frame)} data row{'s' if n + len(self.frame) != 1 else ''}: {why}"


def _rows_text(rows: Sequence[int]) -> str:
    return rows_text(rows, limit=10)


def _filter_error(message: str, source: str | None = None) -> RecordFilterError:
    return RecordFilterError([DatasetViolation((), None, message)], source=source)


def _as_list(spec: str | Iterable[Any] | None) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    return [str(s) for s in spec]


def parse_conditions(text: str, what: str = "IGNORE") -> tuple[Condition, ...]:
    """Conditions of one ``IGNORE=(list)``/``ACCEPT=(list)`` option: ``"(DV.EQ.0,TIME.GT.24)"``; the
    ``IGNORE=``/``ACCEPT=`` prefix and the parentheses are optional.

    Raises
    ------
    RecordFilterError
        Naming the condition that cannot be read and what a condition looks like.
    """
    body = text.strip()
    if re.match(rf"^{what}\s*=", body, re.IGNORECASE):
        body = body.split("=", 1)[1].strip()
    if body.startswith("(") != body.endswith(")"):
        raise _filter_error(f"{what} option {text!r}: unbalanced parentheses; write e.g. {what}=(DV.EQ.0,TIME.GT.24)")
    if body.startswith("("):
        body = body[1:-1]
    conds = []
    for part in body.split(","):
        m = _CONDITION.match(part)
        if not part.strip():
            raise _filter_error(f"{what} option {text!r}: an empty condition (two commas, or a trailing comma?)")
        if m is None:
            raise _filter_error(
                f"{what} condition {part.strip()!r} is not COLUMN.OP.VALUE (e.g. DV.EQ.0, "
                f"TIME.GT.24); operators: {_OPERATOR_LIST}"
            )
        column, op, value = m.group(1), m.group(2).upper(), m.group(3)
        if op not in _OPERATORS:
            raise _filter_error(
                f"{what} condition {part.strip()!r}: unknown operator {m.group(2)}; use {_OPERATOR_LIST}"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if not value:
            raise _filter_error(f"{what} condition {part.strip()!r} has no value after {m.group(2)}")
        conds.append(Condition(column, _OPERATORS[op], value, part.strip()))
    return tuple(conds)


def record_filter(ignore: str | Iterable[str] | None = None, accept: str | Iterable[str] | None = None) -> RecordFilter:
    """A :class:`RecordFilter` from NONMEM-style options.

    Parameters
    ----------
    ignore
        One option or a list of them: a single character (``"#"``, ``"@"``, ``"C"``; ``IGNORE=`` prefix and
        quotes optional) or a condition list (``"(DV.EQ.0,TIME.GT.24)"``). Given characters are added to
        ``#`` (NONMEM's default, always applied here). ``None``: ``IGNORE=#``.
    accept
        One condition list or several (``"(DVID.EQ.1)"``); their conditions are OR-ed.

    Raises
    ------
    RecordFilterError
        A malformed option (named), or conditions in both IGNORE and ACCEPT (NONMEM allows one of them).
    """
    chars: list[str] = []
    ignore_c: list[Condition] = []
    accept_c: list[Condition] = []
    for item in _as_list(ignore):
        t = item.strip()
        if re.match(r"^IGNORE\s*=", t, re.IGNORECASE):
            t = t.split("=", 1)[1].strip()
        if len(t) == 3 and t[0] == t[2] and t[0] in "'\"":
            t = t[1]
        if len(t) == 1:
            if t == "(" or t.isspace():
                raise _filter_error(f"IGNORE option {item!r}: {t!r} cannot be a comment character")
            chars.append(t)
        elif not t:
            raise _filter_error("IGNORE option '': give a character (#, @, C) or conditions such as (DV.EQ.0)")
        else:
            ignore_c.extend(parse_conditions(t, "IGNORE"))
    for item in _as_list(accept):
        accept_c.extend(parse_conditions(item, "ACCEPT"))
    if ignore_c and accept_c:
        raise _filter_error(
            "IGNORE conditions and ACCEPT conditions cannot be combined (NONMEM allows one list "
            f"or the other): IGNORE=({','.join(c.text for c in ignore_c)}), "
            f"ACCEPT=({','.join(c.text for c in accept_c)}); express the selection with one of them"
        )
    return RecordFilter(tuple(dict.fromkeys(["#"] + chars)), tuple(ignore_c), tuple(accept_c))


def _first_chars(s: pd.Series) -> np.ndarray:
    """The first non-blank character of every cell ('' for blank/NaN); numbers as written by ``str``."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return np.full(len(s), "", dtype=object)  # a number starts with a digit, a sign or a point
    text = s.astype(object).where(s.notna(), "").astype(str).str.lstrip()
    first: np.ndarray = text.str[:1].to_numpy(dtype=object)
    return first


def filter_records(
    df: pd.DataFrame,
    ignore: str | Iterable[str] | None = None,
    accept: str | Iterable[str] | None = None,
    *,
    source: str | None = None,
) -> FilteredRecords:
    """Drop the rows NONMEM's ``$DATA IGNORE``/``ACCEPT`` options (and the ``C`` comment column) drop.

    Applied in this order: the comment column ``C`` (rows whose ``C`` cell starts with ``C`` or ``c``), the
    ``IGNORE=c`` characters on the first column (``#`` and the given ones; ``@``: a letter or ``@``), then
    the ``IGNORE=(list)`` or ``ACCEPT=(list)`` conditions on the rows left (see :class:`Condition`).

    Parameters
    ----------
    df
        Raw frame (:func:`read_dataset`) or numeric frame.
    ignore, accept
        As for :func:`record_filter`, or a :class:`RecordFilter` as ``ignore``.
    source
        The file, for messages.

    Returns
    -------
    FilteredRecords
        The kept rows, their 1-based row numbers in ``df``, and the dropped rows by reason.

    Raises
    ------
    RecordFilterError
        A malformed option, a condition naming a column the dataset lacks, or a numeric comparison on a
        cell that is not a number (rows named); every message names the condition.
    """
    try:
        filt = ignore if isinstance(ignore, RecordFilter) else record_filter(ignore, accept)
    except RecordFilterError as exc:
        raise RecordFilterError(exc.violations, source=source) from None
    frame = _normalize_headers(df)
    n = len(frame)
    keep = np.ones(n, dtype=bool)
    dropped: dict[str, tuple[int, ...]] = {}

    def drop(mask: np.ndarray, reason: str) -> None:
        mask = mask & keep
        if mask.any():
            dropped[reason] = _rows(mask)
            keep[mask] = False

    names = [str(c) for c in frame.columns]
    if COMMENT_COLUMN in names:
        first = _first_chars(frame.iloc[:, names.index(COMMENT_COLUMN)])
        drop(np.isin(first, ("C", "c")), f"commented (C in column {COMMENT_COLUMN})")
    if n and len(names):
        first = _first_chars(frame.iloc[:, 0])
        for ch in filt.chars:
            if ch == "@":
                m = np.array([bool(c) and (c.isalpha() or c == "@") for c in first], dtype=bool)
            else:
                m = first == ch
            drop(m, f"by IGNORE={ch} (column {names[0]})")
    for what, conds in (("IGNORE", filt.ignore), ("ACCEPT", filt.accept)):
        if not conds:
            continue
        hit = np.zeros(n, dtype=bool)
        idx = np.flatnonzero(keep)  # conditions are tested on the rows still kept (a comment row is not data)
        sub = frame.iloc[idx]
        for c in conds:
            hit[idx] |= c.mask(sub, what, source, rows=idx + 1)
        listed = ",".join(c.text for c in conds)
        drop(hit if what == "IGNORE" else ~hit, f"by {what}=({listed})")
    # the input's own columns (names as given): the output of a simulation repeats them
    out = df.iloc[np.flatnonzero(keep)].reset_index(drop=True) if not keep.all() else df.reset_index(drop=True)
    return FilteredRecords(out, np.flatnonzero(keep).astype(np.int64) + 1, dropped)


def renumber(exc: DatasetError, rows: np.ndarray, source: str | None = None) -> DatasetError:
    """``exc`` with its row numbers translated: row ``r`` of the checked frame is data row ``rows[r - 1]``
    of the file (:attr:`FilteredRecords.rows`; rows added by a grid map to the row they copy)."""
    rows = np.asarray(rows)
    out = []
    for v in exc.violations:
        mapped = tuple(sorted({int(rows[r - 1]) for r in v.rows if 1 <= r <= len(rows)}))
        out.append(DatasetViolation(mapped, v.column, v.message))
    new = (
        type(exc)(out, source=source or exc.source)
        if type(exc) in (DatasetError, RecordFilterError)
        else DatasetError(out, source=source or exc.source)
    )
    return new


# --------------------------------------------------------------------------------------------- output grid

#: Most times one output grid may hold.
MAX_GRID_POINTS = 1_000_000
#: Most rows a grid may add to a dataset (IDs x grid times): each is simulated and written.
MAX_GRID_ROWS = 10_000_000
#: Name of the output column that marks the rows a grid added (1) and the dataset's own rows (0).
GRID_COLUMN = "GRID"

_GRID_HELP = "START:END:STEP (e.g. 0:24:0.5, in the dataset's time unit, h) or a list of times (0,0.5,1,2)"


def parse_grid(grid: str | Sequence[float] | np.ndarray) -> np.ndarray:
    """The times of an output grid, sorted and distinct.

    Parameters
    ----------
    grid
        ``"START:END:STEP"`` (END included when it falls on the grid; ``0:24:0.5`` is 0, 0.5, ..., 24), a
        comma-separated list of times (``"0,0.5,1,2,4"``), or an array of times. Units: the dataset's time
        unit (h for the built-in models).

    Returns
    -------
    numpy.ndarray
        float64 times (h), increasing. ``START:END:STEP`` times are ``START + k * STEP`` computed in
        decimal, so ``0:1:0.1`` gives exactly ``0.3``, not ``0.30000000000000004``.

    Raises
    ------
    GridError
        One message: not numbers, END <= START, STEP <= 0, an empty or non-finite list, or more than
        :data:`MAX_GRID_POINTS` times.
    """
    from decimal import Decimal, InvalidOperation

    from .errors import GridError

    if isinstance(grid, str):
        text = grid.strip()
        if ":" in text:
            parts = [p.strip() for p in text.split(":")]
            if len(parts) != 3:
                raise GridError(f"grid {grid!r}: expected START:END:STEP with three numbers (e.g. 0:24:0.5, h)")
            bad = [p for p in parts if not _NUMBER.match(p)]
            if bad:
                raise GridError(
                    f"grid {grid!r}: {bad[0]!r} is not a number; expected START:END:STEP (e.g. 0:24:0.5, h)"
                )
            start, end, step = (Decimal(p) for p in parts)
            if step <= 0:
                raise GridError(f"grid {grid!r}: STEP must be > 0 (h), got {parts[2]}")
            if end <= start:
                raise GridError(f"grid {grid!r}: END ({parts[1]}) must be greater than START ({parts[0]})")
            n = int((end - start) // step) + 1
            if n > MAX_GRID_POINTS:
                raise GridError(
                    f"grid {grid!r} has {n:,} points, more than {MAX_GRID_POINTS:,}; use a larger STEP "
                    "or a shorter range"
                )
            digits = max(0, -min(cast(int, d.as_tuple().exponent) for d in (start, step)))  # finite: an int
            scale = 10**digits
            s_int, p_int = int(start * scale), int(step * scale)
            last = abs(s_int) + (n - 1) * p_int
            if digits <= 15 and last < 2**53:  # exact integers, one correctly rounded division
                return (s_int + p_int * np.arange(n, dtype=np.int64)) / float(scale)
            return float(start) + float(step) * np.arange(n)
        try:
            values = [float(Decimal(p.strip())) for p in text.split(",")] if text else []
        except InvalidOperation:
            raise GridError(f"grid {grid!r} is not {_GRID_HELP}") from None
        times = np.asarray(values, dtype=float)
    else:
        try:
            times = np.asarray(grid, dtype=float)
        except (TypeError, ValueError):
            raise GridError(f"grid must be {_GRID_HELP}; got {type(grid).__name__} that is not numbers") from None
        if times.ndim != 1:
            raise GridError(f"grid must be a one-dimensional array of times (h); got shape {times.shape}")
    if times.size == 0:
        raise GridError(f"grid is empty; give {_GRID_HELP}")
    if not np.isfinite(times).all():
        raise GridError(
            "grid times must be finite numbers (h); found " + ", ".join(str(x) for x in times[~np.isfinite(times)][:3])
        )
    times = np.unique(times)
    if times.size > MAX_GRID_POINTS:
        raise GridError(f"grid has {times.size:,} times, more than {MAX_GRID_POINTS:,}")
    return times


@dataclass(frozen=True)
class GridRecords:
    """A dataset with output-grid rows added (:func:`add_grid`).

    Attributes
    ----------
    frame
        The validated numeric frame with the grid rows in place (new ``RangeIndex``).
    base
        The output's input columns with the grid rows in place and a last column :data:`GRID_COLUMN` (1 on
        grid rows), or ``None`` when no base was given.
    source
        For every row, the 0-based row of the input frame it is (input rows) or copies its covariates from
        (grid rows).
    is_grid
        True on the rows the grid added.
    """

    frame: pd.DataFrame
    base: pd.DataFrame | None
    source: np.ndarray
    is_grid: np.ndarray


def add_grid(
    frame: pd.DataFrame,
    times: str | Sequence[float] | np.ndarray,
    *,
    interpolation: str = "nocb",
    base: pd.DataFrame | None = None,
) -> GridRecords:
    """Add one output record (``EVID=2``, ``MDV=1``) per grid time to every subject of a dataset.

    Parameters
    ----------
    frame
        Validated numeric frame (:func:`validate_dataset`).
    times
        Grid (anything :func:`parse_grid` accepts), in the dataset's time unit (h).
    interpolation
        ``"nocb"`` or ``"locf"``, as the simulation will use: a grid row copies the other columns
        (covariates) from the record whose values the simulation uses at that time, so adding the grid
        changes no prediction at the dataset's own records: the next record (NOCB; after the last record,
        the last) or the previous one (LOCF; before the first record, the first).
    base
        The same rows as the output shows them (raw strings or the caller's frame): grid rows get the ID
        cell of their subject, ``TIME``, ``EVID=2``, ``MDV=1``, ``AMT``, ``RATE``, ``II``, ``ADDL``, ``SS``
        0, ``CMT`` 0 and a blank ``DV`` in the standard columns it has, the source record's cells elsewhere.

    Returns
    -------
    GridRecords

    Notes
    -----
    Grid rows go after the records with the same time (a grid time at a dose time shows the amount after
    that dose, as the dose record does). An ID whose records go back in time at a reset (``EVID`` 3/4) has
    one block per such period; the first block gets every grid time, each later block the grid times from
    its first record on.

    Raises
    ------
    GridError
        A malformed grid, or more than :data:`MAX_GRID_ROWS` rows added.
    """
    from .errors import GridError

    if interpolation not in ("nocb", "locf"):
        raise ValueError(f"interpolation must be 'nocb' or 'locf', got {interpolation!r}")
    g = parse_grid(times)
    n = len(frame)
    ident = frame["ID"].to_numpy()
    t = frame["TIME"].to_numpy(float)
    new_blk = np.ones(n, dtype=bool)
    new_blk[1:] = (ident[1:] != ident[:-1]) | (t[1:] < t[:-1])
    starts = np.flatnonzero(new_blk)
    first_of_id = np.ones(len(starts), dtype=bool)
    first_of_id[1:] = ident[starts[1:]] != ident[starts[:-1]]
    # grid times per block: all for an ID's first block, those >= the block's first time for later blocks
    lo = np.where(first_of_id, 0, np.searchsorted(g, t[starts], side="left"))
    counts = len(g) - lo
    total = int(counts.sum())
    if total > MAX_GRID_ROWS:
        raise GridError(
            f"the grid adds {total:,} rows ({len(g):,} times x {len(starts):,} subjects), more than "
            f"{MAX_GRID_ROWS:,}; use a larger STEP or a shorter range"
        )
    blk = np.repeat(np.arange(len(starts)), counts)
    k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    gt = g[lo[blk] + k]
    # order: by block, then time; input rows before grid rows at equal times; input rows keep their order
    blk_all = np.concatenate([np.cumsum(new_blk) - 1, blk])
    t_all = np.concatenate([t, gt])
    flag = np.concatenate([np.zeros(n, np.int8), np.ones(total, np.int8)])
    seq = np.concatenate([np.arange(n), np.arange(total)])
    order = np.lexsort((seq, flag, t_all, blk_all))
    is_grid = flag[order].astype(bool)
    # the record each grid row copies, within its block: the previous input row in this order (the last
    # with time <= g; LOCF) or the next one (the first with time > g; NOCB), else the other one
    m = n + total
    at = np.arange(m)
    prev = np.maximum.accumulate(np.where(~is_grid, at, -1))
    nxt = np.minimum.accumulate(np.where(~is_grid, at, m)[::-1])[::-1]
    b_sorted = blk_all[order]
    prev_ok = (prev >= 0) & (b_sorted[np.maximum(prev, 0)] == b_sorted)
    next_ok = (nxt < m) & (b_sorted[np.minimum(nxt, m - 1)] == b_sorted)
    pick = np.where(next_ok, nxt, prev) if interpolation == "nocb" else np.where(prev_ok, prev, nxt)
    source = np.where(is_grid, order[np.clip(pick, 0, m - 1)], order)  # input rows: themselves
    src = np.empty(total, dtype=np.int64)
    src[order[is_grid] - n] = source[is_grid]  # per grid row, in the order the grid rows were made

    def with_grid(df: pd.DataFrame, numeric: bool) -> pd.DataFrame:
        rows = df.iloc[src].reset_index(drop=True)
        names = [str(c).strip().upper() for c in df.columns]
        values = {
            "ID": None,
            "TIME": gt,
            "EVID": 2.0,
            "MDV": 1.0,
            "AMT": 0.0,
            "RATE": 0.0,
            "II": 0.0,
            "ADDL": 0.0,
            "SS": 0.0,
            "CMT": 0.0,
            "DV": np.nan,
        }
        for j, name in enumerate(names):
            if name not in values or (name == "ID"):
                continue
            col = df.columns[j]
            v = values[name]
            if numeric or pd.api.types.is_numeric_dtype(df[col].dtype):
                arr = np.broadcast_to(np.asarray(v, float), (total,)).copy()
                if (
                    not numeric
                    and pd.api.types.is_integer_dtype(df[col].dtype)
                    and np.isfinite(arr).all()
                    and (arr == np.round(arr)).all()
                ):
                    arr = arr.astype(df[col].dtype)  # an integer column stays integer where it can
                rows[col] = arr
            else:  # text cells, written as a number would be
                if name == "TIME":
                    rows[col] = [_num_text(x) for x in gt]
                elif name == "DV":
                    rows[col] = ""
                else:
                    rows[col] = _num(v)
        out = pd.concat([df.reset_index(drop=True), rows], ignore_index=True)
        return out.iloc[order].reset_index(drop=True)

    new_frame = with_grid(frame, numeric=True)
    new_base = None
    if base is not None:
        if GRID_COLUMN in [str(c) for c in base.columns]:
            raise GridError(
                f"the dataset already has a column {GRID_COLUMN}, which marks the grid rows in the output; rename it"
            )
        b = base.reset_index(drop=True)
        new_base = with_grid(b, numeric=False)
        new_base[GRID_COLUMN] = is_grid.astype(np.int64)
    return GridRecords(new_frame, new_base, source, is_grid)


def _num_text(x: float) -> str:
    """A time as a CSV cell: shortest repr, integers without a decimal point (``24``, ``0.5``)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def frame_sha256(frame: Any, *, dtypes: bool = False) -> str:
    """Hex SHA-256 digest of a :class:`pandas.DataFrame`'s content (pandas' per-row hashes, index left out) and
    column names; with ``dtypes`` also the column types."""
    h = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    h.update(",".join(map(str, frame.columns)).encode())
    if dtypes:
        h.update(",".join(map(str, frame.dtypes)).encode())
    return h.hexdigest()
