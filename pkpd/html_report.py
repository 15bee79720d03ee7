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

Every report also has the tables ``inputs``, ``versions`` and ``files``.

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

from ._errors import PKPDError
from .manifest import MANIFEST_NAME, read_manifest

__all__ = ["KINDS", "ReportError", "Run", "detect_run", "render_report", "write_report"]

KINDS = ("fit", "optimize", "trial", "simulate-population", "simulate-dataset")
REPORT_NAME = "report.html"
_MAX_ROWS = 60  # rows shown of a long table (the rest are counted, not shown)

#: Units of the columns (and outcome rows) the run types write; shown under each header.
UNITS: dict[str, str] = {
    "MME_0_24": "mg MME", "MME_0_48": "mg MME", "MME_0_72": "mg MME", "MME_mean": "mg MME", "MME_P90": "mg MME",
    "TIT3": "fraction of 0-72 h", "TIT4": "fraction of 0-72 h", "PAIN_AUC": "NRS·h", "PAIN_EXCESS": "NRS·h",
    "N_PCA": "doses", "N_PRN": "doses", "T_FIRST_RESCUE": "h", "MIN_VE": "fraction of baseline",
    "P_OIRD": "probability", "MAX_SEDATION": "index (0-1)", "P_PONV": "probability", "PEAK_BUPI": "ng/mL",
    "PEAK_BUPI_UNBOUND": "ng/mL", "LAST_INDEX": "ratio to threshold", "LAST_INDEX_max": "ratio to threshold",
    "MME_vs_C0_pct": "%", "MME_vs_C1_pct": "%", "n": "patients", "n_unsafe": "patients", "patients": "patients",
    "time_h": "h after surgery", "dose_mg": "mg", "total_mg": "mg", "TIME": "h", "AMT": "mg", "II": "h",
    "RATE": "mg/h", "DUR": "h",
    "CP": "mg/L", "CE": "mg/L", "CM": "mg/L", "Cmax": "mg/L", "Tmax": "h", "seconds": "s", "rse_pct": "%",
    "iiv_cv_pct": "%", "shrinkage_pct": "%", "eps_shrinkage_pct": "%", "WT": "kg", "AGE": "y", "CRCL": "mL/min",
}
_OUTCOME_NOTE = ("MME: oral morphine milligram equivalents (CDC 2022 factors); TIT3: fraction of 0-72 h with "
                 "NRS <= 3; TIME_NRS_GE4 / TIME_NRS_GE7: fraction with NRS >= 4 (treat cut-off) / >= 7 (severe); "
                 "LAST index >= 1 means a bupivacaine toxicity threshold is crossed.")
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.6em;border-bottom:3px solid #2a6ebb;padding-bottom:6px}h2{font-size:1.25em;margin-top:1.6em;
color:#2a6ebb}table{border-collapse:collapse;margin:8px 0 4px;font-size:.85em}th,td{border:1px solid #c8c8c8;
padding:3px 7px;text-align:right}th{background:#e8eef7}td.t,th.t{text-align:left}caption{text-align:left;
font-weight:600;padding:4px 0}.unit{font-weight:400;color:#555;font-size:.85em}.note{color:#555;font-size:.85em}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#444}
div.wrap{overflow-x:auto}pre{background:#f5f5f7;padding:8px;overflow-x:auto;font-size:.85em}.warn{color:#9a4400}
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
        raise ReportError(f"{manifest_file} is the manifest of `pkpd {man.get('command')}`, not of a dataset "
                          "simulation")
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
        raise ReportError(f"{p} is a file but not a pkpd simulation output (a CSV with a CP column) or a run "
                          "manifest; give a run directory")
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
        raise ReportError(f"{p} holds {len(sims)} dataset simulations ({', '.join(f.name for f in sims)}); give "
                          f"one output CSV, e.g. `pkpd report {example}`")
    what = f" (its run.json names `pkpd {man['command']}`, but its output files are missing)" if man else ""
    raise ReportError(f"{p} is not a pkpd run directory{what}: expected fit.json + parameters.csv (pkpd fit), "
                      "comparison.csv + schedule.csv (pkpd optimize), summary.csv + patients.csv (pkpd trial or "
                      "pkpd simulate --regimen) or a <name>.run.json of pkpd simulate DATA")


# ------------------------------------------------------------------------------------------------------
# HTML pieces
# ------------------------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):d}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        if f != 0 and (abs(f) >= 1e6 or abs(f) < 1e-3):
            return f"{f:.3e}"
        return f"{f:.4g}"
    return str(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def table(df: pd.DataFrame, table_id: str, caption: str, *, units: Mapping[str, str] | None = None,
          index: bool = False, max_rows: int = _MAX_ROWS, note: str = "") -> str:
    """An HTML table of ``df`` (escaped; numbers to 4 significant digits; the unit of each known column
    under its header; at most ``max_rows`` rows, the rest counted in the caption)."""
    units = {**UNITS, **(units or {})}
    d = df.reset_index() if index else df
    shown = d.head(max_rows)
    more = f" (first {len(shown)} of {len(d)} rows)" if len(d) > len(shown) else ""
    head = []
    for c in d.columns:
        u = units.get(str(c))
        num = pd.api.types.is_numeric_dtype(d[c]) and not pd.api.types.is_bool_dtype(d[c])
        head.append(f"<th class=\"{'' if num else 't'}\">{_e(c)}"
                    + (f"<br><span class=\"unit\">{_e(u)}</span>" if u else "") + "</th>")
    rows = []
    for rec in shown.itertuples(index=False):
        cells = []
        for v in rec:
            cls = "" if _is_num(v) else " class=\"t\""
            cells.append(f"<td{cls}>{_e(_fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = "".join(rows) or f"<tr><td class=\"t\" colspan=\"{max(len(d.columns), 1)}\">(no rows)</td></tr>"
    out = (f"<div class=\"wrap\"><table id=\"{_e(table_id)}\"><caption>{_e(caption)}{_e(more)}</caption><thead><tr>"
           f"{''.join(head)}</tr></thead><tbody>{body}</tbody></table></div>")
    return out + (f"<p class=\"note\">{_e(note)}</p>" if note else "")


def _kv_table(pairs: Sequence[tuple[str, Any]], table_id: str, caption: str, headers=("item", "value")) -> str:
    return table(pd.DataFrame([(k, _fmt(v) if not isinstance(v, str) else v) for k, v in pairs],
                              columns=list(headers)), table_id, caption, max_rows=10_000)


def _png_bytes(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(b"\x89PNG") else None


def figure(png: bytes, caption: str) -> str:
    """A ``<figure>`` with the PNG embedded as a base64 data URI."""
    b64 = base64.b64encode(png).decode("ascii")
    return (f"<figure><img alt=\"{_e(caption)}\" src=\"data:image/png;base64,{b64}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _figures(run: Run, names: Sequence[tuple[str, str]]) -> str:
    parts = []
    for name, cap in names:
        for f in sorted(run.root.glob(name)):
            png = _png_bytes(f)
            if png is not None:
                parts.append(figure(png, f"{f.name}: {cap}"))
    return "".join(parts) or "<p class=\"note\">(no figures in the run directory)</p>"


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
    keep = [c for c in ("name", "kind", "description", "unit", "estimate", "se", "rse_pct", "ci_low", "ci_high",
                        "iiv_cv_pct", "shrinkage_pct", "rhat", "ess_bulk", "fixed") if c in par]
    parts = [table(par[keep], "parameters", "Parameter estimates (unit column: the parameter's unit; IIV "
                   "rows are omega^2 variances)", max_rows=500,
                   note="SE: standard error (Laplace: delta method) or posterior SD (NUTS/SVI); 95 % CI.")]
    if run.file("objective.json").is_file():
        obj = _read_json(run.file("objective.json"), "the objective")
        parts.append(_kv_table([(k, v) for k, v in obj.items()], "objective",
                               "Objective: -2LL with all constants, OFV (NONMEM), AIC, BIC / WAIC"))
    parts.append(_kv_table([("method", info.get("method")), ("structure", info.get("structure")),
                            ("converged", info.get("converged")), ("message", info.get("message")),
                            *[(f"time {k}", v) for k, v in (info.get("times_s") or {}).items()],
                            *[("note", n) for n in (info.get("notes") or []) + (info.get("problem_notes") or [])]],
                           "fit-info", "Estimation (times in s)"))
    if run.file("nca.csv").is_file():
        parts.append(table(_read_csv(run.file("nca.csv"), "the NCA table"), "nca",
                           "Non-compartmental analysis of the observed data", max_rows=30))
    figs = _figures(run, [("gof.png", "observed vs PRED and IPRED"), ("residuals.png", "CWRES and NPDE"),
                          ("vpc.png", "visual predictive check"), ("individual*.png", "individual fits"),
                          ("trace.png", "posterior draws")])
    title = f"Population fit ({info.get('method', '?')}, {info.get('structure', '?')})"
    return title, "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + figs


def _compact_schedule(sched: pd.DataFrame) -> pd.DataFrame:
    """One row per drug and route: number of doses, dose(s) in mg, total mg and the dosing times (h)."""
    if not {"drug", "route", "dose_mg", "time_h"} <= set(sched.columns):
        return sched
    rows = []
    for (drug, route), g in sched.groupby(["drug", "route"], sort=False):
        rows.append({"drug": drug, "route": route, "doses": len(g),
                     "dose_mg": ", ".join(f"{x:g}" for x in dict.fromkeys(g["dose_mg"].astype(float))),
                     "total_mg": float(g["dose_mg"].sum()),
                     "time_h": ", ".join(f"{x:g}" for x in g["time_h"].astype(float))})
    return pd.DataFrame(rows)


def _optimize_sections(run: Run) -> tuple[str, str]:
    comp = _read_csv(run.file("comparison.csv"), "the comparison table")
    sched = _read_csv(run.file("schedule.csv"), "the schedule")
    parts = []
    expl = run.file("explanation.txt")
    if expl.is_file() and "THIS PROPOSAL IS THE FALLBACK" in expl.read_text():
        parts.append("<p id=\"fallback\" style=\"border:2px solid #b8860b;padding:0.5em\"><b>Fallback, not an "
                     "optimized schedule:</b> no searched schedule met every constraint of the exact evaluation, so "
                     "this is C1's schedule (the standard of care) within the patient's limits, with C1's rescue policy (see Why).</p>")
    if expl.is_file() and "THIS PROPOSAL IS WORSE THAN" in expl.read_text():
        parts.append("<p id=\"worse\" style=\"border:2px solid #b22222;padding:0.5em\"><b>Worse than the comparator:"
                     "</b> the proposal uses more opioid and keeps pain in target for less time than C1 (adapted to "
                     "the patient's limits where C1 as written is not allowed); prefer the comparator (see Why).</p>")
    parts += [table(comp, "comparison", "Proposal vs C0 (opioid-centric) and C1 (ERAS), same variability draws "
                   "(mean over draws; MME_P90: 90th percentile; 'C0/C1 adapted': the comparator within this "
                   "patient's limits, where the comparator as written is not allowed)", note=_OUTCOME_NOTE),
             table(_compact_schedule(sched), "schedule", "Proposed scheduled doses by product (as-needed rescue as "
                   "in C1; schedule.csv has one row per dose)", max_rows=500)]
    if run.file("explanation.txt").is_file():
        lines = [ln for ln in run.file("explanation.txt").read_text().splitlines() if ln.strip()]
        parts.append("<h3>Why</h3><ul id=\"explanation\">" + "".join(f"<li>{_e(ln)}</li>" for ln in lines) + "</ul>")
    if run.file("regimen.txt").is_file():
        parts.append("<h3>Regimen (text form, reusable with <code>pkpd simulate --regimen</code>)</h3><pre>"
                     + _e(run.file("regimen.txt").read_text()) + "</pre>")
    figs = _figures(run, [("schedule.png", "doses over time"), ("bands.png", "pain, opioid effect, bupivacaine")])
    return "Personalized schedule (pkpd optimize)", "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + figs


def _trial_sections(run: Run) -> tuple[str, str]:
    summ = _read_csv(run.file("summary.csv"), "the trial summary")
    parts = [table(summ[summ["stratum"] == "all"], "trial-overall", "All patients: proposal vs C0 and C1",
                   note=_OUTCOME_NOTE),
             table(summ[summ["stratum"] != "all"], "strata", "By genotype stratum (CYP2D6 and CYP2C9 phenotype)",
                   max_rows=500)]
    pat_file = run.file("patients.csv")
    if pat_file.is_file():
        pat = _read_csv(pat_file, "the per-patient table")
        if "SAFE" in pat:
            bad = pat[~pat["SAFE"].astype(bool)]
            cols = [c for c in ("ID", "CYP2D6_PHENO", "CYP2C9_PHENO", "WHY") if c in pat]
            parts.append(table(bad[cols], "unsafe", f"Proposals that failed a hard check: {len(bad)} of {len(pat)}"))
    if run.file("timings.json").is_file():
        tim = _read_json(run.file("timings.json"), "the timings")
        parts.append(table(pd.DataFrame({"stage": list(tim), "seconds": [float(v) for v in tim.values()]}),
                           "timings", "Time per stage"))
    figs = _figures(run, [("trial.png", "72-h MME and time in target by regimen")])
    return "SPINE-72 virtual trial (pkpd trial)", "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + figs


def _population_sections(run: Run) -> tuple[str, str]:
    summ = _read_csv(run.file("summary.csv"), "the outcome summary")
    parts = [table(summ, "summary", "Outcomes over the virtual patients (mean, SD, 10th/50th/90th percentile)",
                   units={"outcome": ""}, note=_OUTCOME_NOTE + " Units per outcome: " + "; ".join(
                       f"{o} {UNITS[o]}" for o in summ["outcome"] if o in UNITS))]
    if run.file("findings.csv").is_file():
        parts.append(table(_read_csv(run.file("findings.csv"), "the findings"), "findings",
                           "Label-limit and CPIC findings (patients affected)"))
    if run.file("doses.csv").is_file():
        d = _read_csv(run.file("doses.csv"), "the dose record")
        if len(d):
            g = d.groupby(["DRUG", "ROUTE", "KIND"], sort=False)["AMT"].agg(["count", "sum"]).reset_index()
            g.columns = ["drug", "route", "kind", "doses", "total_mg"]
            parts.append(table(g, "doses", "Realized doses, all patients"))
    figs = _figures(run, [("bands.png", "pain, opioid effect and bupivacaine bands"), ("mme.png", "72-h MME")])
    reg = (run.manifest or {}).get("arguments", {}).get("regimen")
    return f"Population simulation{f' of regimen {reg}' if reg else ''} (pkpd simulate --regimen)", (
        "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + figs)


def _cp_plot(frame: pd.DataFrame, title: str, max_ids: int = 20) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i in list(dict.fromkeys(frame["ID"].tolist()))[:max_ids]:
        sub = frame[frame["ID"] == i]
        ax.plot(sub["TIME"].to_numpy(float), sub["CP"].to_numpy(float), marker=".", markersize=3, linewidth=1)
    ax.set_xlabel("TIME (h)")
    ax.set_ylabel("CP (mg/L)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _numeric(g: pd.DataFrame, col: str) -> pd.Series:
    """A dataset column as numbers ('.' and blank as 0, the README's rule for standard columns); 0 if absent."""
    if col not in g:
        return pd.Series(0.0, index=g.index)
    return pd.to_numeric(g[col].astype(str).str.strip().replace({".": "0", "": "0"}), errors="coerce").fillna(0.0)


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
        amt = _numeric(g, "AMT")
        # a dose record with ADDL = n stands for 1 + n doses (NONMEM additional doses at interval II)
        given = (amt > 0) & (_numeric(g, "EVID").isin([1.0, 4.0]) if "EVID" in g else True)
        times = 1.0 + _numeric(g, "ADDL").clip(lower=0)
        rows.append({"ID": i, "records": len(g), "observations": len(o),
                     "doses": int(times[given].sum()), "AMT": float((amt * times)[given].sum()),
                     "Cmax": float(o["CP"].iloc[k]) if k is not None else np.nan,
                     "Tmax": float(o["TIME"].iloc[k]) if k is not None else np.nan})
    subj = pd.DataFrame(rows)
    args = (run.manifest or {}).get("arguments", {})
    model = f"model {args['model']}" if args.get("model") else "model named in the parameter file"
    parts = [table(subj, "subjects", "Per subject: records, dosing (doses and AMT: every dose, ADDL additional doses "
                   "included, and their total, mg) and the peak of CP over "
                   "the observation records", note="Cmax/Tmax are read off the records of the dataset, "
                   "not interpolated."),
             table(res, "records", f"Output records ({model}; compartment amounts in mg, EFFECT in mg/L)", max_rows=25)]
    figs = []
    for o in (run.manifest or {}).get("outputs", [])[1:]:
        png = _png_bytes(run.root / o)
        if png is not None:
            figs.append(figure(png, f"{Path(o).name}: CP vs TIME (written by --plot)"))
    if not figs:
        figs.append(figure(_cp_plot(obs, f"{run.output.name}: CP vs TIME"),
                           "CP (mg/L) vs TIME (h), first 20 subjects (drawn by pkpd report)"))
    return f"Dataset simulation {run.output.name} (pkpd simulate DATA)", (
        "<h2>Results</h2>" + "".join(parts) + "<h2>Figures</h2>" + "".join(figs))


_SECTIONS = {"fit": _fit_sections, "optimize": _optimize_sections, "trial": _trial_sections,
             "simulate-population": _population_sections, "simulate-dataset": _dataset_sections}


def _provenance(run: Run) -> str:
    man = run.manifest
    parts = []
    if man is None:
        parts.append("<p class=\"warn\">This run has no run.json: it was made before run manifests existed, so "
                     "its command, inputs and versions are not recorded.</p>")
        if run.kind == "fit" and run.file("fit.json").is_file():
            info = _read_json(run.file("fit.json"), "the fit summary")
            parts.append(_kv_table([("data", info.get("data") or "(in memory)"),
                                    ("model", info.get("model") or "(in memory)")], "inputs",
                                   "Inputs recorded in fit.json (no SHA-256)"))
            parts.append(_kv_table(sorted((info.get("versions") or {}).items()), "versions",
                                   "Package versions recorded in fit.json", ("package", "version")))
        else:
            parts.append(_kv_table([], "inputs", "Inputs (not recorded)"))
            parts.append(_kv_table([], "versions", "Package versions (not recorded)", ("package", "version")))
        return "".join(parts)
    args = man.get("arguments", {})
    argv = man.get("argv") or []
    if argv and Path(str(argv[0])).name == "pkpd":  # the console script: the command line as typed
        parts.append("<h3>Command</h3><pre id=\"command\">" + _e(" ".join(["pkpd", *map(str, argv[1:])])) + "</pre>")
    parts.append(_kv_table([("command", f"pkpd {man.get('command', '?')}")]
                           + [(k, "–" if v is None else json.dumps(v) if not isinstance(v, str) else v)
                              for k, v in args.items()], "arguments",
                           "Arguments and options of the run (defaults included)", ("argument", "value")))
    inputs = [(role, d.get("path"), d.get("sha256") or "–", d.get("bytes"))
              for role, d in man.get("inputs", {}).items()]
    rows = []
    for role, path, sha, size in inputs:
        now = "–"
        if sha != "–" and path and Path(path).is_file():
            from .manifest import file_sha256

            now = "unchanged" if file_sha256(path) == sha else "CHANGED since the run"
        elif sha != "–":
            now = "file no longer there"
        rows.append((role, path, sha, size, now))
    parts.append(table(pd.DataFrame(rows, columns=["input", "path", "sha256", "bytes", "now"]), "inputs",
                       "Inputs (SHA-256 at the time of the run; 'now' compares with the file today)"))
    parts.append(_kv_table(sorted((man.get("versions") or {}).items()), "versions", "Package versions of the run",
                           ("package", "version")))
    parts.append(_kv_table([("created (UTC)", man.get("created_utc")), ("platform", man.get("platform"))], "run-info",
                           "Run"))
    return "".join(parts)


def _files_table(run: Run) -> str:
    files = sorted(f for f in run.root.iterdir() if f.is_file() and f.name != REPORT_NAME) if run.kind != \
        "simulate-dataset" else [run.root / o for o in ((run.manifest or {}).get("outputs") or [run.output.name])]
    rows = [(f.name, f.stat().st_size if f.is_file() else None) for f in files]
    return table(pd.DataFrame(rows, columns=["file", "bytes"]), "files", f"Files of the run in {run.root}",
                 max_rows=500)


def render_report(path: str | Path | Run) -> str:
    """The HTML report of the run at ``path`` (see the module docstring; or of a detected :class:`Run`)."""
    run = path if isinstance(path, Run) else detect_run(path)
    title, body = _SECTIONS[run.kind](run)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class=\"note\">Run type <b id=\"run-kind\">{_e(run.kind)}</b>; "
            f"{_e(run.output or run.root)}; report written {_e(now)} by pkpd report.</p>"
            + body + "<h2>Inputs and versions</h2>" + _provenance(run) + "<h2>Files</h2>" + _files_table(run)
            + "</body></html>\n")


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
        out = (run.output.with_name(f"{run.output.stem}.report.html") if run.kind == "simulate-dataset"
               else run.root / REPORT_NAME)
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"the report path {out} is a directory; give a file name with --out")
    if out.exists() and not force:
        raise ReportError(f"the report {out} already exists; pass --force to overwrite it, or choose another --out")
    if not out.parent.is_dir():
        raise ReportError(f"cannot write the report {out}: directory {out.parent} does not exist")
    text = render_report(run)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write the report {out}: {exc}") from None
    return out
