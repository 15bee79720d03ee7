"""Self-contained HTML reports of run directories (``pkpd report RUN_DIR``).

One HTML file per run, readable offline and without JavaScript: PNG figures embedded as base64 data
URIs, the key tables as HTML tables (with the unit of every known column under its header), the command,
its inputs (path, SHA-256) and the package versions of the run (from its ``run.json``, see
:mod:`pkpd.manifest`).

Run types, detected from the files present (:func:`detect_run`):

=======================  ==========================================  =====================================
kind                     files that identify it                      key tables (HTML ``id``)
=======================  ==========================================  =====================================
``fit``                  ``fit.json`` + ``parameters.csv``           ``parameters``, ``objective``,
                                                                     ``fit-info``, ``nca``
``optimize``             ``comparison.csv`` + ``schedule.csv``       ``comparison``, ``schedule``
``trial``                ``summary.csv`` with a ``stratum`` column   ``trial-overall``, ``strata``,
                         + ``patients.csv``                          ``timings``
``simulate-population``  ``summary.csv`` with an ``outcome`` column  ``summary``, ``findings``, ``doses``
                         + ``patients.csv``/``.parquet``
``simulate-dataset``     ``<stem>.run.json`` of ``pkpd simulate``    ``subjects``, ``records``
                         beside the output CSV (or the CSV itself)
=======================  ==========================================  =====================================

Every report also has the tables ``inputs``, ``versions`` and ``files``, and every PNG of the run
directory (known figures with their own caption, any other one captioned as written by the run). A
population simulation shows its regimen (``regimen.txt``, ``<pre id="regimen">``); a shipped regimen is
an input with its file and SHA-256. Numbers are formatted for people (:func:`_fmt`: thousands separators,
4 significant digits, no exponent from 1e-4 to 1e15). A table wider than the page is folded into bands of
columns inside the same ``<table>`` (:func:`table`), so nothing hides behind a horizontal scrollbar.

>>> from pkpd.html_report import write_report
>>> write_report("theoph_fit")                       # doctest: +SKIP
PosixPath('theoph_fit/report.html')
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import standard_columns
from .errors import PKPDError
from .manifest import MANIFEST_NAME, read_manifest

__all__ = ["KINDS", "ReportError", "Run", "detect_run", "render_report", "write_report"]

KINDS = ("fit", "optimize", "trial", "simulate-population", "simulate-dataset")
REPORT_NAME = "report.html"
_MAX_ROWS = 60  # rows shown of a long table (the rest are counted, not shown)

#: Units of the columns (and outcome rows) the run types write; shown under each header.
UNITS: dict[str, str] = {
    "MME_0_24": "mg MME",
    "MME_0_48": "mg MME",
    "MME_0_72": "mg MME",
    "MME_mean": "mg MME",
    "MME_P90": "mg MME",
    "TIT3": "fraction of 0-72 h",
    "TIT4": "fraction of 0-72 h",
    "PAIN_AUC": "NRS·h",
    "PAIN_EXCESS": "NRS·h",
    "N_PCA": "doses",
    "N_PRN": "doses",
    "T_FIRST_RESCUE": "h",
    "MIN_VE": "fraction of baseline",
    "P_OIRD": "probability",
    "MAX_SEDATION": "index (0-1)",
    "P_PONV": "probability",
    "PEAK_BUPI": "ng/mL",
    "PEAK_BUPI_UNBOUND": "ng/mL",
    "LAST_INDEX": "ratio to threshold",
    "LAST_INDEX_max": "ratio to threshold",
    "MME_vs_C0_pct": "%",
    "MME_vs_C1_pct": "%",
    "n": "patients",
    "n_unsafe": "patients",
    "patients": "patients",
    "time_h": "h after surgery",
    "dose_mg": "mg",
    "total_mg": "mg",
    "TIME": "h",
    "AMT": "mg",
    "II": "h",
    "RATE": "mg/h",
    "DUR": "h",
    "CP": "mg/L",
    "CE": "mg/L",
    "CM": "mg/L",
    "Cmax": "mg/L",
    "Tmax": "h",
    "seconds": "s",
    "rse_pct": "%",
    "iiv_cv_pct": "%",
    "shrinkage_pct": "%",
    "eps_shrinkage_pct": "%",
    "WT": "kg",
    "AGE": "y",
    "CRCL": "mL/min",
}
_OUTCOME_NOTE = (
    "MME: oral morphine milligram equivalents (CDC 2022 factors); TIT3: fraction of 0-72 h with "
    "NRS <= 3; TIME_NRS_GE4 / TIME_NRS_GE7: fraction with NRS >= 4 (treat cut-off) / >= 7 (severe); "
    "LAST index >= 1 means a bupivacaine toxicity threshold is crossed."
)
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1100px;
padding:0 12px;color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.6em;border-bottom:3px solid #2a6ebb;padding-bottom:6px}h2{font-size:1.25em;margin-top:1.6em;
color:#2a6ebb}table{border-collapse:collapse;margin:8px 0 4px;font-size:.85em;max-width:100%}
th,td{border:1px solid #c8c8c8;padding:3px 7px;text-align:right;font-variant-numeric:tabular-nums}
th{background:#e8eef7}td.t,th.t{text-align:left;overflow-wrap:anywhere}th.band{background:#f3f6fb;
text-align:left;font-weight:600;color:#2a6ebb}caption{text-align:left;font-weight:600;padding:4px 0}
.unit{font-weight:400;color:#555;font-size:.85em}.note{color:#555;font-size:.85em}
figure{margin:12px 0}figure img{max-width:100%;height:auto;box-sizing:border-box;border:1px solid #ddd}figcaption{font-size:.85em;
color:#444}pre{background:#f5f5f7;padding:8px;font-size:.85em;white-space:pre-wrap;overflow-wrap:anywhere}
.warn{color:#9a4400}
"""


class ReportError(PKPDError):
    """The path is not a run directory ``pkpd report`` knows, or its files cannot be read."""


@dataclass(frozen=True)
class Run:
    """A detected run: ``kind`` (one of :data:`KINDS`), its directory, its manifest (``None`` when the
    run has no ``run.json``) and, for a dataset simulation, the output CSV."""

    kind: str
    root: Path
    manifest: dict | None
    output: Path | None = None

    def file(self, name: str) -> Path:
        return self.root / name


# ------------------------------------------------------------------------------------------------------
# detection
# ------------------------------------------------------------------------------------------------------
def _manifest_in(path: Path) -> dict | None:
    return read_manifest(path) if path.is_file() else None


def _csv_columns(path: Path) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, pd.errors.ParserError):
        return []


def _dataset_run(csv: Path, manifest_file: Path | None) -> Run:
    man = _manifest_in(manifest_file) if manifest_file is not None else None
    if man is not None and man.get("command") != "simulate":
        raise ReportError(
            f"{manifest_file} is the manifest of `pkpd {man.get('command')}`, not of a dataset simulation"
        )
    if not csv.is_file():
        raise ReportError(f"the simulation output {csv} named by {manifest_file} does not exist")
    return Run("simulate-dataset", csv.parent, man, csv)


def detect_run(path: str | Path) -> Run:
    """The run at ``path`` (a run directory, a dataset-simulation CSV or its ``.run.json``).

    Raises
    ------
    ReportError
        ``path`` does not exist, or holds none of the files of a known run type (the message lists what
        each type writes).
    """
    p = Path(path)
    if not p.exists():
        raise ReportError(f"the run directory {p} does not exist")
    if p.is_file():
        if p.name.endswith(f".{MANIFEST_NAME}") or p.name == MANIFEST_NAME:
            man = read_manifest(p)
            out = (man.get("outputs") or [None])[0]
            if man.get("command") != "simulate" or not out:
                return detect_run(p.parent)
            return _dataset_run((p.parent / out) if not Path(out).is_absolute() else Path(out), p)
        if p.suffix.lower() == ".csv":
            side = p.with_name(f"{p.stem}.{MANIFEST_NAME}")
            if side.is_file() or "CP" in _csv_columns(p):
                return _dataset_run(p, side if side.is_file() else None)
        raise ReportError(
            f"{p} is a file but not a pkpd simulation output (a CSV with a CP column) or a run "
            "manifest; give a run directory"
        )
    man = _manifest_in(p / MANIFEST_NAME)
    has = {f.name for f in p.iterdir() if f.is_file()}
    if {"fit.json", "parameters.csv"} <= has:
        return Run("fit", p, man)
    if {"comparison.csv", "schedule.csv"} <= has:
        return Run("optimize", p, man)
    if "summary.csv" in has and ({"patients.csv", "patients.parquet"} & has):
        cols = _csv_columns(p / "summary.csv")
        if "stratum" in cols:
            return Run("trial", p, man)
        if "outcome" in cols:
            return Run("simulate-population", p, man)
    sims = sorted(f for f in p.glob(f"*.{MANIFEST_NAME}"))
    sims = [f for f in sims if (read_manifest(f).get("command") == "simulate")]
    if len(sims) == 1:
        m = read_manifest(sims[0])
        out = (m.get("outputs") or [None])[0]
        if out:
            return _dataset_run(p / out if not Path(out).is_absolute() else Path(out), sims[0])
    if len(sims) > 1:
        example = p / sims[0].name.replace(f".{MANIFEST_NAME}", ".csv")
        raise ReportError(
            f"{p} holds {len(sims)} dataset simulations ({', '.join(f.name for f in sims)}); give "
            f"one output CSV, e.g. `pkpd report {example}`"
        )
    what = f" (its run.json names `pkpd {man['command']}`, but its output files are missing)" if man else ""
    raise ReportError(
        f"{p} is not a pkpd run directory{what}: expected fit.json + parameters.csv (pkpd fit), "
        "comparison.csv + schedule.csv (pkpd optimize), summary.csv + patients.csv (pkpd trial or "
        "pkpd simulate --regimen) or a <name>.run.json of pkpd simulate DATA"
    )


# ------------------------------------------------------------------------------------------------------
# HTML pieces
# ------------------------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


#: Columns whose numbers are labels (no thousands separators): subject IDs, codes, seeds.
_CODE_COLUMNS = {"ID", "DVID", "CMT", "EVID", "MDV", "OCC", "SS", "BLQ", "GRID", "seed", "year"}


def _fmt_float(f: float, digits: int = 4) -> str:
    """A number for people: ``digits`` significant digits, thousands separators, no exponent from 1e-4
    to 1e15 (``2600000.0`` -> ``2,600,000``; ``1234.567`` -> ``1,235``; ``0.012345`` -> ``0.01235``)."""
    if math.isnan(f):
        return "–"
    if math.isinf(f):
        return "∞" if f > 0 else "−∞"
    a = abs(f)
    if a == 0:
        return "0"
    if a < 1e-4 or a >= 1e15:
        return f"{f:.{max(digits - 1, 1)}g}"
    r = float(f"{f:.{digits}g}")
    if abs(r) >= 10 ** (digits - 1):  # an integer once rounded: the significant digits, then zeros
        return f"{r:,.0f}"
    return f"{f:.{digits}g}"


def _fmt(v: Any, code: bool = False) -> str:
    """A cell for people: ``–`` for missing, yes/no, integers with thousands separators (not when
    ``code``: IDs and other labels), floats by :func:`_fmt_float`."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):d}" if code else f"{int(v):,d}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if code and math.isfinite(f) and f == round(f):
            return f"{int(f):d}"
        return _fmt_float(f)
    return str(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


#: Width budget of one table (CSS px): the page is at most 1,100 px wide; a table whose columns would be
#: wider is folded into bands of columns (see :func:`table`).
_TABLE_BUDGET_PX = 1000
_TEXT_WRAP_CHARS = 28  # a text cell wraps (overflow-wrap: anywhere) beyond about this many characters


def _column_px(header: str, unit: str, cells: Sequence[str], text: bool) -> float:
    """Estimated width (CSS px) of one column at the report's table font (13.6 px system-ui): bold
    header characters ~8.5 px, unit ~6.8 px, digits ~7.6 px, plus padding and border; a text column
    is counted at most :data:`_TEXT_WRAP_CHARS` wide, since its cells wrap."""
    longest = max((len(c) for c in cells), default=0)
    if text:
        longest = min(longest, _TEXT_WRAP_CHARS)
        head = min(len(header), _TEXT_WRAP_CHARS)
    else:
        head = len(header)
    return max(8.5 * head, 6.8 * len(unit), 7.6 * longest) + 16.0


def _bands(widths: Sequence[float], budget: float = _TABLE_BUDGET_PX) -> list[list[int]]:
    """Column indices of each band: all columns when they fit ``budget``; else the first (key) column
    followed by the largest equal share of the others such that the widest band, column by column
    (bands share the table's columns), fits."""
    n = len(widths)
    if n <= 2 or sum(widths) <= budget:
        return [list(range(n))]
    rest = list(range(1, n))
    for k in range(len(rest), 0, -1):
        groups = [rest[i : i + k] for i in range(0, len(rest), k)]
        pos = [max(widths[g[j]] for g in groups if j < len(g)) for j in range(k)]
        if widths[0] + sum(pos) <= budget or k == 1:
            return [[0, *g] for g in groups]
    return [list(range(n))]  # pragma: no cover - k == 1 always returns


def table(
    df: pd.DataFrame,
    table_id: str,
    caption: str,
    *,
    units: Mapping[str, str] | None = None,
    index: bool = False,
    max_rows: int = _MAX_ROWS,
    note: str = "",
) -> str:
    """An HTML table of ``df`` that fits the page.

    Cells are escaped; numbers are formatted for people (4 significant digits, thousands separators, no
    exponent between 1e-4 and 1e15; IDs and codes as written); the unit of each known column is shown
    under its header; at most ``max_rows`` rows are shown, the rest counted in the caption. Text cells
    wrap. A table with more columns than fit the page (:data:`_TABLE_BUDGET_PX`) is folded, not
    scrolled: its columns are shown in bands, one under the other in the same ``<table>``, each band
    headed by its column names and repeating the first (key) column, so that no column is ever hidden
    behind a scrollbar.
    """
    units = {**UNITS, **(units or {})}
    d = df.reset_index() if index else df
    shown = d.head(max_rows)
    more = f" (first {len(shown)} of {len(d)} rows)" if len(d) > len(shown) else ""
    cols = list(d.columns)
    code = [str(c) in _CODE_COLUMNS or str(c).upper() == "ID" or str(c).endswith("_id") for c in cols]
    num = [pd.api.types.is_numeric_dtype(d[c]) and not pd.api.types.is_bool_dtype(d[c]) for c in cols]
    cells = [
        [("" if _is_num(v) else ' class="t"', _fmt(v, code[j])) for j, v in enumerate(rec)]
        for rec in shown.itertuples(index=False)
    ]
    head = []
    widths = []
    for j, c in enumerate(cols):
        u = units.get(str(c)) or ""
        head.append(
            f'<th class="{"" if num[j] else "t"}">{_e(c)}'
            + (f'<br><span class="unit">{_e(u)}</span>' if u else "")
            + "</th>"
        )
        widths.append(_column_px(str(c), u, [r[j][1] for r in cells], not num[j]))
    bands = _bands(widths)
    parts = []
    for b, band in enumerate(bands):
        rows = "".join("<tr>" + "".join(f"<td{r[j][0]}>{_e(r[j][1])}</td>" for j in band) + "</tr>" for r in cells)
        rows = rows or f'<tr><td class="t" colspan="{max(len(band), 1)}">(no rows)</td></tr>'
        hrow = "<tr>" + "".join(head[j] for j in band) + "</tr>"
        if b == 0:
            parts.append(f"<thead>{hrow}</thead><tbody>{rows}</tbody>")
        else:
            span = max(len(g) for g in bands)
            what = f"columns {band[1] + 1}-{band[-1] + 1} of {len(cols)} (continued; first column repeated)"
            parts.append(f'<tbody><tr><th class="band" colspan="{span}">{_e(what)}</th></tr>{hrow}{rows}</tbody>')
    fold = f" (shown in {len(bands)} bands of columns)" if len(bands) > 1 else ""
    out = (
        f'<table id="{_e(table_id)}"><caption>{_e(caption)}{_e(more)}{_e(fold)}</caption>' + "".join(parts) + "</table>"
    )
    return out + (f'<p class="note">{_e(note)}</p>' if note else "")


def _kv_table(pairs: Sequence[tuple[str, Any]], table_id: str, caption: str, headers=("item", "value")) -> str:
    return table(
        pd.DataFrame([(k, _fmt(v) if not isinstance(v, str) else v) for k, v in pairs], columns=list(headers)),
        table_id,
        caption,
        max_rows=10_000,
    )


def _png_bytes(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(b"\x89PNG") else None


def figure(png: bytes, caption: str) -> str:
    """A ``<figure>`` with the PNG embedded as a base64 data URI."""
    b64 = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _figures(run: Run, names: Sequence[tuple[str, str]]) -> str:
    """Every PNG of the run directory as a figure: first those matching the ``(glob, caption)`` pairs
    of ``names`` in that order, then any other PNG the run wrote (captioned as such), so that the report
    never leaves out a figure."""
    parts = []
    seen: set[str] = set()
    pairs = [*names, ("*.png", "figure written by the run")]
    for name, cap in pairs:
        for f in sorted(run.root.glob(name)):
            if f.name in seen:
                continue
            png = _png_bytes(f)
            if png is not None:
                seen.add(f.name)
                parts.append(figure(png, f"{f.name}: {cap}"))
    return "".join(parts) or '<p class="note">(no figures in the run directory)</p>'


#: Captions of the figures of a fit (pkpd.fit.FitResult.save), in report order.
FIT_FIGURES = (
    ("gof.png", "observed vs population (PRED) and individual (IPRED) predictions, with LOWESS smooths"),
    ("residuals.png", "CWRES and NPDE vs time and vs PRED, with LOWESS smooths"),
    ("qq.png", "normal QQ plots of CWRES and NPDE"),
    ("abs_iwres.png", "|IWRES| vs IPRED, with a LOWESS smooth"),
    ("vpc.png", "visual predictive check (observed and simulated percentiles per time bin, BLQ counted)"),
    ("pcvpc.png", "prediction-corrected VPC (per stratum with --vpc-stratify)"),
    ("individual*.png", "individual fits on a dense time grid: DV, IPRED and PRED"),
    ("eta.png", "random-effect (eta) estimates with the model's N(0, omega^2) density"),
    ("eta_pairs.png", "random-effect estimates, pairs"),
    ("eta_covariates.png", "random-effect estimates vs covariates (units from the model's [covariates] table)"),
    ("trace.png", "posterior draws per chain (ArviZ trace)"),
    ("rank.png", "rank plots of the posterior draws (ArviZ)"),
)


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ReportError(f"cannot read {what} {path}: {exc}") from None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {what} {path}: {exc}") from None


# ------------------------------------------------------------------------------------------------------
# sections per run type
# ------------------------------------------------------------------------------------------------------
def _fit_sections(run: Run) -> tuple[str, str]:
    info = _read_json(run.file("fit.json"), "the fit summary")
    par = _read_csv(run.file("parameters.csv"), "the parameter table")
    keep = [
        c
        for c in (
            "name",
            "kind",
            "description",
            "unit",
            "estimate",
            "se",
            "rse_pct",
            "ci_low",
            "ci_high",
            "iiv_cv_pct",
            "shrinkage_pct",
            "rhat",
            "ess_bulk",
            "fixed",
        )
        if c in par
    ]
    parts = [
        table(
            par[keep],
            "parameters",
            "Parameter estimates (unit column: the parameter's unit; IIV rows are omega^2 variances)",
            max_rows=500,
            note="SE: standard error (Laplace: delta method) or posterior SD (NUTS/SVI); 95 % CI.",
        )
    ]
    if run.file("objective.json").is_file():
        obj = _read_json(run.file("objective.json"), "the objective")
        parts.append(
            _kv_table(
                [(k, v) for k, v in obj.items()],
                "objective",
                "Objective: -2LL with all constants, OFV (NONMEM), AIC, BIC / WAIC",
            )
        )
    parts.append(
        _kv_table(
            [
                ("method", info.get("method")),
                ("structure", info.get("structure")),
                ("converged", info.get("converged")),
                ("message", info.get("message")),
                *[(f"time {k}", v) for k, v in (info.get("times_s") or {}).items()],
                *[("note", n) for n in (info.get("notes") or []) + (info.get("problem_notes") or [])],
            ],
            "fit-info",
            "Estimation (times in s)",
        )
    )
    if run.file("nca.csv").is_file():
        parts.append(
            table(
                _read_csv(run.file("nca.csv"), "the NCA table"),
                "nca",
                "Non-compartmental analysis of the observed data",
                max_rows=30,
            )
        )
    figs = _figures(run, FIT_FIGURES)
    title = f"Population fit ({info.get('method', '?')}, {info.get('structure', '?')})"
    return title, "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + figs


def _compact_schedule(sched: pd.DataFrame) -> pd.DataFrame:
    """One row per drug and route: number of doses, dose(s) in mg, total mg and the dosing times (h)."""
    if not {"drug", "route", "dose_mg", "time_h"} <= set(sched.columns):
        return sched
    rows = []
    for (drug, route), g in sched.groupby(["drug", "route"], sort=False):
        rows.append(
            {
                "drug": drug,
                "route": route,
                "doses": len(g),
                "dose_mg": ", ".join(f"{x:g}" for x in dict.fromkeys(g["dose_mg"].astype(float))),
                "total_mg": float(g["dose_mg"].sum()),
                "time_h": ", ".join(f"{x:g}" for x in g["time_h"].astype(float)),
            }
        )
    return pd.DataFrame(rows)


def _optimize_sections(run: Run) -> tuple[str, str]:
    comp = _read_csv(run.file("comparison.csv"), "the comparison table")
    sched = _read_csv(run.file("schedule.csv"), "the schedule")
    parts = []
    expl = run.file("explanation.txt")
    if expl.is_file() and "THIS PROPOSAL IS THE FALLBACK" in expl.read_text():
        parts.append(
            '<p id="fallback" style="border:2px solid #b8860b;padding:0.5em"><b>Fallback, not an '
            "optimized schedule:</b> no searched schedule met every constraint of the exact evaluation, so "
            "this is C1's schedule (the standard of care) within the patient's limits, with C1's rescue policy (see Why).</p>"
        )
    if expl.is_file() and "THIS PROPOSAL IS WORSE THAN" in expl.read_text():
        parts.append(
            '<p id="worse" style="border:2px solid #b22222;padding:0.5em"><b>Worse than the comparator:'
            "</b> the proposal uses more opioid and keeps pain in target for less time than C1 (adapted to "
            "the patient's limits where C1 as written is not allowed); prefer the comparator (see Why).</p>"
        )
    parts += [
        table(
            comp,
            "comparison",
            "Proposal vs C0 (opioid-centric) and C1 (ERAS), same variability draws "
            "(mean over draws; MME_P90: 90th percentile; 'C0/C1 adapted': the comparator within this "
            "patient's limits, where the comparator as written is not allowed)",
            note=_OUTCOME_NOTE,
        ),
        table(
            _compact_schedule(sched),
            "schedule",
            "Proposed scheduled doses by product (as-needed rescue as in C1; schedule.csv has one row per dose)",
            max_rows=500,
        ),
    ]
    if run.file("explanation.txt").is_file():
        lines = [ln for ln in run.file("explanation.txt").read_text().splitlines() if ln.strip()]
        parts.append('<h3>Why</h3><ul id="explanation">' + "".join(f"<li>{_e(ln)}</li>" for ln in lines) + "</ul>")
    if run.file("regimen.txt").is_file():
        parts.append(
            "<h3>Regimen (text form, reusable with <code>pkpd simulate --regimen</code>)</h3>"
            '<pre id="regimen">' + _e(run.file("regimen.txt").read_text()) + "</pre>"
        )
    figs = _figures(
        run,
        [
            ("schedule.png", "the proposed doses over time, by drug"),
            (
                "bands.png",
                "pain (NRS) and opioid effect (Ce/EC50) of the proposal, median and 10-90 % "
                "band over the patient's draws, with C1's median pain",
            ),
            (
                "concentrations.png",
                "plasma concentration of every drug of the proposal (mg/L), "
                "median and 10-90 % band, with toxicity limits where they apply",
            ),
        ],
    )
    return "Personalized schedule (pkpd optimize)", "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + figs


def _trial_sections(run: Run) -> tuple[str, str]:
    summ = _read_csv(run.file("summary.csv"), "the trial summary")
    parts = [
        table(
            summ[summ["stratum"] == "all"], "trial-overall", "All patients: proposal vs C0 and C1", note=_OUTCOME_NOTE
        ),
        table(
            summ[summ["stratum"] != "all"], "strata", "By genotype stratum (CYP2D6 and CYP2C9 phenotype)", max_rows=500
        ),
    ]
    pat_file = run.file("patients.csv")
    if pat_file.is_file():
        pat = _read_csv(pat_file, "the per-patient table")
        if "SAFE" in pat:
            bad = pat[~pat["SAFE"].astype(bool)]
            cols = [c for c in ("ID", "CYP2D6_PHENO", "CYP2C9_PHENO", "WHY") if c in pat]
            parts.append(table(bad[cols], "unsafe", f"Proposals that failed a hard check: {len(bad)} of {len(pat)}"))
    if run.file("timings.json").is_file():
        tim = _read_json(run.file("timings.json"), "the timings")
        parts.append(
            table(
                pd.DataFrame({"stage": list(tim), "seconds": [float(v) for v in tim.values()]}),
                "timings",
                "Time per stage",
            )
        )
    figs = _figures(run, [("trial.png", "72-h MME and time in target by regimen")])
    return "SPINE-72 virtual trial (pkpd trial)", "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + figs


def _population_sections(run: Run) -> tuple[str, str]:
    summ = _read_csv(run.file("summary.csv"), "the outcome summary")
    parts = [
        table(
            summ,
            "summary",
            "Outcomes over the virtual patients (mean, SD, 10th/50th/90th percentile)",
            units={"outcome": ""},
            note=_OUTCOME_NOTE
            + " Units per outcome: "
            + "; ".join(f"{o} {UNITS[o]}" for o in summ["outcome"] if o in UNITS),
        )
    ]
    if run.file("findings.csv").is_file():
        parts.append(
            table(
                _read_csv(run.file("findings.csv"), "the findings"),
                "findings",
                "Label-limit and CPIC findings (patients affected)",
            )
        )
    if run.file("doses.csv").is_file():
        d = _read_csv(run.file("doses.csv"), "the dose record")
        if len(d):
            g = d.groupby(["DRUG", "ROUTE", "KIND"], sort=False)["AMT"].agg(["count", "sum"]).reset_index()
            g.columns = ["drug", "route", "kind", "doses", "total_mg"]
            parts.append(table(g, "doses", "Realized doses, all patients"))
    bupi = (
        "PEAK_BUPI" in set(summ["outcome"])
        and float(
            pd.to_numeric(
                summ.set_index("outcome").loc["PEAK_BUPI"].drop("outcome", errors="ignore"), errors="coerce"
            ).max()
        )
        > 0
    )
    bands = "pain (NRS) and opioid effect (Ce/EC50, summed), median and 10-90 % band over the patients" + (
        ", and total bupivacaine plasma concentration (ng/mL, log scale, CNS threshold 2,000 ng/mL)"
        if bupi
        else " (the regimen gives no bupivacaine: no bupivacaine panel)"
    )
    figs = _figures(
        run, [("bands.png", bands), ("mme.png", "distribution of the 72-h MME over the patients, mean and P90 marked")]
    )
    reg = (run.manifest or {}).get("arguments", {}).get("regimen")
    return f"Population simulation{f' of regimen {reg}' if reg else ''} (pkpd simulate --regimen)", (
        _regimen_section(run) + "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + figs
    )


def _regimen_section(run: Run) -> str:
    """The regimen simulated: ``regimen.txt`` of the run (its text form), else the regimen file the
    manifest records (a user's file or the shipped TOML), else a note that it is not recorded."""
    head = "<h2>Regimen</h2>"
    if run.file("regimen.txt").is_file():
        return (
            head + '<p class="note">regimen.txt: the regimen as simulated, in the text form that '
            '<code>pkpd simulate --regimen regimen.txt</code> reads back.</p><pre id="regimen">'
            + _e(run.file("regimen.txt").read_text())
            + "</pre>"
        )
    entry = ((run.manifest or {}).get("inputs") or {}).get("regimen") or {}
    path = Path(entry["path"]) if entry.get("path") else None
    if path is not None and path.is_file():
        return (
            head
            + f'<p class="note">The regimen file of the run, {_e(path)}:</p><pre id="regimen">'
            + _e(path.read_text())
            + "</pre>"
        )
    return (
        head + '<p class="warn" id="regimen">The regimen\'s text is not recorded in this run (run made '
        "before regimen.txt was written).</p>"
    )


def _dataset_model(run: Run) -> Any:
    """The model a dataset simulation ran: its ``--model``, else the model named by its parameter file (the
    manifest's ``params`` input, read again); ``None`` when neither names a model that can be loaded now."""
    from .models import get_model
    from .simulate import load_params

    man = run.manifest or {}
    name = man.get("arguments", {}).get("model")
    if not name:
        params = man.get("inputs", {}).get("params", {}).get("path")
        try:
            name = load_params(params).model if params else None
        except (PKPDError, OSError, ValueError):
            name = None
    try:
        return get_model(name) if name else None
    except (PKPDError, OSError, KeyError, ValueError):
        return None


def _dense_curves(run: Run) -> tuple[pd.DataFrame | None, Any, str]:
    """A dataset simulation run again on a dense grid over its records (:func:`pkpd.simulate.dense_grid`) from
    the inputs its manifest records, for the report's figure: ``(curves, model, "")``. Only when the data and
    parameter files are still there with the SHA-256 the run recorded; otherwise ``(None, None, why)``."""
    from .manifest import file_sha256
    from .simulate import simulate_dataset

    man = run.manifest or {}
    paths = {}
    for role in ("data", "params"):
        entry = man.get("inputs", {}).get(role) or {}
        path = entry.get("path")
        if not path or not Path(path).is_file():
            return None, None, f"the run's {role} file {path or '(not recorded)'} is not there"
        if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            return None, None, f"the run's {role} file {path} changed since the run"
        paths[role] = path
    args = man.get("arguments", {})
    opts = {k: args.get(k) or None for k in ("model", "solver", "ode_method", "interpolation", "ignore", "accept")}
    try:
        again = simulate_dataset(paths["data"], paths["params"], plot=True, **opts)
    except PKPDError as exc:
        return None, None, f"simulating the run again failed: {exc}"
    return again.curves, again.model, ""


def _cp_plot(frame: pd.DataFrame, title: str, model: Any = None, max_ids: int = 20) -> bytes:
    """PNG of CP against TIME of a dataset simulation's records, drawn by :func:`pkpd.simulate.profiles_figure`
    (one line per ID with a per-ID legend, the output's unit from ``model``; grid rows as lines and observation
    records as dots when the output has a grid). Without a model (none can be resolved from the run): CP in
    mg/L, the unit of the built-in models."""
    from types import SimpleNamespace

    from .simulate import profiles_figure

    if model is None:
        model = SimpleNamespace(name="", output_units={"CP": "mg/L"}, outputs=())
    fig, _, _ = profiles_figure(frame, model, output="CP", max_ids=max_ids)
    fig.axes[0].set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _dataset_sections(run: Run) -> tuple[str, str]:
    assert run.output is not None
    res = _read_csv(run.output, "the simulation output")
    if not {"ID", "TIME", "CP"} <= set(res.columns):
        raise ReportError(f"{run.output} has no ID, TIME and CP columns: not a `pkpd simulate` output")
    obs = res[res["EVID"] == 0] if "EVID" in res and (res["EVID"] == 0).any() else res
    rows = []
    for i, g in res.groupby("ID", sort=False):
        o = obs[obs["ID"] == i]
        k = int(np.nanargmax(o["CP"].to_numpy(float))) if len(o) and np.isfinite(o["CP"]).any() else None
        cols = standard_columns(g)  # '.' and blank as 0, EVID from AMT where absent: the dataset rules
        amt = cols["AMT"]
        # a dose record with ADDL = n stands for 1 + n doses (NONMEM additional doses at interval II)
        given = (amt > 0) & np.isin(cols["EVID"], (1.0, 4.0))
        times = 1.0 + np.clip(cols["ADDL"], 0.0, None)
        rows.append(
            {
                "ID": i,
                "records": len(g),
                "observations": len(o),
                "doses": int(times[given].sum()),
                "AMT": float((amt * times)[given].sum()),
                "Cmax": float(o["CP"].iloc[k]) if k is not None else np.nan,
                "Tmax": float(o["TIME"].iloc[k]) if k is not None else np.nan,
            }
        )
    subj = pd.DataFrame(rows)
    args = (run.manifest or {}).get("arguments", {})
    model = f"model {args['model']}" if args.get("model") else "model named in the parameter file"
    parts = [
        table(
            subj,
            "subjects",
            "Per subject: records, dosing (doses and AMT: every dose, ADDL additional doses "
            "included, and their total, mg) and the peak of CP over "
            "the observation records",
            note="Cmax/Tmax are read off the records of the dataset, not interpolated.",
        ),
        table(res, "records", f"Output records ({model}; compartment amounts in mg, EFFECT in mg/L)", max_rows=25),
    ]
    figs = []
    for o in (run.manifest or {}).get("outputs", [])[1:]:
        png = _png_bytes(run.root / o)
        if png is not None:
            figs.append(figure(png, f"{Path(o).name}: CP vs TIME (written by --plot)"))
    if not figs:
        from .simulate import _output_unit

        model = _dataset_model(run)
        unit = _output_unit(model, "CP") if model is not None else "mg/L"
        # lines on a dense grid: the output's own grid rows, else the run simulated again from its inputs
        curves, why = None, ""
        if "GRID" not in res.columns:
            curves, model_again, why = _dense_curves(run)
        if curves is not None:
            png = _cp_plot(curves, f"{run.output.name}: CP vs TIME", model_again)
            how = (
                "on a dense grid, simulated again by pkpd report from the run's data and parameter files "
                "(SHA-256 checked)"
            )
        else:
            png = _cp_plot(res, f"{run.output.name}: CP vs TIME", model)
            how = "drawn by pkpd report" + ("" if "GRID" in res.columns else f" through the output records: {why}")
        figs.append(figure(png, f"CP ({unit}) vs TIME (h), first 20 subjects ({how})"))
    return f"Dataset simulation {run.output.name} (pkpd simulate DATA)", (
        "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + "".join(figs)
    )


_SECTIONS = {
    "fit": _fit_sections,
    "optimize": _optimize_sections,
    "trial": _trial_sections,
    "simulate-population": _population_sections,
    "simulate-dataset": _dataset_sections,
}


def _provenance(run: Run) -> str:
    man = run.manifest
    parts = []
    if man is None:
        parts.append(
            '<p class="warn">This run has no run.json: it was made before run manifests existed, so '
            "its command, inputs and versions are not recorded.</p>"
        )
        if run.kind == "fit" and run.file("fit.json").is_file():
            info = _read_json(run.file("fit.json"), "the fit summary")
            parts.append(
                _kv_table(
                    [("data", info.get("data") or "(in memory)"), ("model", info.get("model") or "(in memory)")],
                    "inputs",
                    "Inputs recorded in fit.json (no SHA-256)",
                )
            )
            parts.append(
                _kv_table(
                    sorted((info.get("versions") or {}).items()),
                    "versions",
                    "Package versions recorded in fit.json",
                    ("package", "version"),
                )
            )
        else:
            parts.append(_kv_table([], "inputs", "Inputs (not recorded)"))
            parts.append(_kv_table([], "versions", "Package versions (not recorded)", ("package", "version")))
        return "".join(parts)
    args = man.get("arguments", {})
    argv = man.get("argv") or []
    if argv and Path(str(argv[0])).name == "pkpd":  # the console script: the command line as typed
        parts.append('<h3>Command</h3><pre id="command">' + _e(" ".join(["pkpd", *map(str, argv[1:])])) + "</pre>")
    parts.append(
        _kv_table(
            [("command", f"pkpd {man.get('command', '?')}")]
            + [(k, "–" if v is None else json.dumps(v) if not isinstance(v, str) else v) for k, v in args.items()],
            "arguments",
            "Arguments and options of the run (defaults included)",
            ("argument", "value"),
        )
    )
    inputs = [
        (role, d.get("path"), d.get("sha256") or "–", d.get("bytes")) for role, d in man.get("inputs", {}).items()
    ]
    rows = []
    for role, path, sha, size in inputs:
        now = "–"
        if sha != "–" and path and Path(path).is_file():
            from .manifest import file_sha256

            now = "unchanged" if file_sha256(path) == sha else "CHANGED since the run"
        elif sha != "–":
            now = "file no longer there"
        rows.append((role, path, sha, size, now))
    parts.append(
        table(
            pd.DataFrame(rows, columns=["input", "path", "sha256", "bytes", "now"]),
            "inputs",
            "Inputs (SHA-256 at the time of the run; 'now' compares with the file today)",
        )
    )
    parts.append(
        _kv_table(
            sorted((man.get("versions") or {}).items()),
            "versions",
            "Package versions of the run",
            ("package", "version"),
        )
    )
    parts.append(
        _kv_table([("created (UTC)", man.get("created_utc")), ("platform", man.get("platform"))], "run-info", "Run")
    )
    return "".join(parts)


def _files_table(run: Run) -> str:
    files = (
        sorted(f for f in run.root.iterdir() if f.is_file() and f.name != REPORT_NAME)
        if run.kind != "simulate-dataset"
        else [run.root / o for o in ((run.manifest or {}).get("outputs") or [run.output.name])]
    )
    rows = [(f.name, f.stat().st_size if f.is_file() else None) for f in files]
    return table(
        pd.DataFrame(rows, columns=["file", "bytes"]), "files", f"Files of the run in {run.root}", max_rows=500
    )


def render_report(path: str | Path | Run) -> str:
    """The HTML report of the run at ``path`` (see the module docstring; or of a detected :class:`Run`)."""
    run = path if isinstance(path, Run) else detect_run(path)
    title, body = _SECTIONS[run.kind](run)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="note">Run type <b id="run-kind">{_e(run.kind)}</b>; '
        f"{_e(run.output or run.root)}; report written {_e(now)} by pkpd report.</p>"
        + body
        + "<h2>Inputs and versions</h2>"
        + _provenance(run)
        + "<h2>Files</h2>"
        + _files_table(run)
        + "</body></html>\n"
    )


def write_report(path: str | Path, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Write the HTML report of the run at ``path``; returns the file written.

    Parameters
    ----------
    path
        Run directory (or dataset-simulation CSV).
    out
        Report file; default ``report.html`` in the run directory (``<stem>.report.html`` beside a
        dataset-simulation CSV).
    force
        Overwrite an existing report file.

    Raises
    ------
    ReportError
        Unknown or unreadable run, or ``out`` exists and ``force`` is false, or cannot be written.
    """
    run = detect_run(path)
    if out is None:
        out = (
            run.output.with_name(f"{run.output.stem}.report.html")
            if run.kind == "simulate-dataset"
            else run.root / REPORT_NAME
        )
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"the report path {out} is a directory; give a file name with --out")
    if out.exists() and not force:
        raise ReportError(f"the report {out} already exists; pass --force to overwrite it, or choose another --out")
    if not out.parent.is_dir():
        raise ReportError(f"cannot write the report {out}: directory {out.parent} does not exist")
    text = render_report(run)
    from .interrupts import staged_outputs

    try:
        with staged_outputs() as stage:  # an interrupted write leaves no half report, and an earlier one intact
            stage.path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write the report {out}: {exc}") from None
    return out
