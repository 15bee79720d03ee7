"""Non-compartmental analysis (NCA) of observed concentration-time data.

:func:`nca` computes the usual single-profile NCA parameters per subject (``ID``; and per ``DVID`` when the
dataset has that column) from a NONMEM-format dataset: observations are ``EVID=0`` rows with ``MDV=0`` and a
concentration (column ``DV`` by default), doses are ``EVID`` 1 or 4 rows with ``AMT > 0``. Pure numpy/pandas.

Units (the toolkit's conventions): time h, dose mg, concentration mg/L. Hence AUC mg*h/L, AUMC mg*h^2/L,
lambda_z 1/h, half-life and MRT h, CL/F L/h and Vz/F L (see :data:`UNITS`). Other consistent units work too
(dose ug, concentration ug/L -> the same L/h and L), the code does no unit conversion.

Conventions (general knowledge, not in models.md; they follow Gabrielsson & Weiner, *Pharmacokinetic and
Pharmacodynamic Data Analysis: Concepts and Applications*, and the defaults of the R package PKNCA, which
match Phoenix WinNonlin's):

* **Time origin.** Times are hours since the subject's first dose. Observations before the first dose are
  ignored (with a note). A subject without dose records keeps its recorded times; its AUC starts at the
  first observation and CL/F is not computed.
* **Concentration at the dose time.** When there is no observation at the dose time, the profile starts at
  ``C = 0`` for ``route="extravascular"`` (also infusions, ``"iv_infusion"``). For ``route="iv_bolus"`` the
  concentration at time 0 (``C0``) is back-extrapolated log-linearly from the first two positive
  observations when they decline, otherwise the first positive observation is used (PKNCA's ``c0`` methods
  ``"c0"``, ``"logslope"``, ``"c1"``); an observation of 0 at the dose time is then taken as a pre-dose
  sample and replaced by ``C0``. ``C0`` enters AUC and AUMC, not Cmax/Tmax.
* **BLQ rule.** An observation is below the limit of quantification (BLQ) when the dataset has a ``BLQ``
  column equal to 1 on its row, or when its concentration is below the LLOQ (the ``lloq`` argument; else an
  ``LLOQ`` column); a concentration of exactly 0 is treated as BLQ too (PKNCA's convention: a reported 0 is
  "not measurable"). Cmax/Tmax are found on the quantified values; BLQ values **before Tmax are set to 0**,
  BLQ values **after Tmax are dropped** (AUC is interpolated across a dropped value; trailing ones end the
  profile at the last quantified value). PKNCA's default differs only for a BLQ value *between* the first
  quantified value and Tmax (PKNCA drops it, here it is 0).
* **AUC, AUMC.** ``"linear-up/log-down"`` (default): linear trapezoid where the concentration rises or is
  constant, log trapezoid where it falls between two positive values (exact for an exponential decline);
  ``"linear"``: linear trapezoid everywhere. AUClast and AUMClast run from the time origin to Tlast, the
  time of the last positive quantified concentration.
* **lambda_z** (terminal rate constant). Log-linear least squares of ``ln C`` on time over the last ``n``
  positive quantified points strictly after Tmax, for every ``n >= lambda_z_min_points``; fits with
  ``lambda_z <= 0`` are discarded; among the fits whose adjusted R^2 is within ``adj_r2_tolerance`` of the
  best one, the fit with the most points is chosen (PKNCA's ``adj.r.squared.factor`` rule, also WinNonlin's
  "best fit"). ``adj R^2 = 1 - (1 - R^2) (n - 1) / (n - 2)``.
* **Extrapolation.** ``AUCinf = AUClast + Clast / lambda_z`` (observed Clast), ``AUC_PEXTRAP = 100 (AUCinf -
  AUClast) / AUCinf``, ``AUMCinf = AUMClast + Tlast Clast / lambda_z + Clast / lambda_z^2``,
  ``MRT = AUMCinf / AUCinf`` (for an infusion subtract half the infusion duration yourself; for an
  extravascular dose MRT includes the mean absorption time).
* **Clearance, volume.** Single-dose profiles only (one dose record, no ADDL, no SS):
  ``CL_F = dose / AUCinf`` and ``VZ_F = dose / (lambda_z AUCinf)``; for an IV bolus F = 1 and they are CL and
  Vz.

References
----------
Gabrielsson J, Weiner D. Pharmacokinetic and Pharmacodynamic Data Analysis: Concepts and Applications,
5th ed. Swedish Pharmaceutical Press, 2016 (chapter on non-compartmental analysis) -- general knowledge.
Denney W, Duvvuri S, Buckeridge C. Simple, automatic noncompartmental analysis: the PKNCA R package.
J Pharmacokinet Pharmacodyn 2015;42(S1):S65 -- PKNCA conventions, general knowledge.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .data import validate_dataset
from .errors import DatasetError, DatasetViolation

__all__ = ["COLUMNS", "UNITS", "nca"]

#: Columns of the frame returned by :func:`nca` (``DVID`` only when profiles are split by DVID).
COLUMNS: tuple[str, ...] = (
    "ID",
    "DVID",
    "N_OBS",
    "N_BLQ",
    "DOSE",
    "N_DOSES",
    "C0",
    "CMAX",
    "TMAX",
    "CLAST",
    "TLAST",
    "AUCLAST",
    "AUMCLAST",
    "LAMBDA_Z",
    "HALF_LIFE",
    "R2",
    "R2_ADJ",
    "N_LAMBDA_Z",
    "LAMBDA_Z_START",
    "LAMBDA_Z_END",
    "AUCINF",
    "AUC_PEXTRAP",
    "AUMCINF",
    "MRT",
    "CL_F",
    "VZ_F",
    "NOTE",
)

#: Unit of every numeric output column (with dose in mg, concentration in mg/L, time in h).
UNITS: dict[str, str] = {
    "N_OBS": "count",
    "N_BLQ": "count",
    "DOSE": "mg",
    "N_DOSES": "count",
    "C0": "mg/L",
    "CMAX": "mg/L",
    "TMAX": "h",
    "CLAST": "mg/L",
    "TLAST": "h",
    "AUCLAST": "mg*h/L",
    "AUMCLAST": "mg*h^2/L",
    "LAMBDA_Z": "1/h",
    "HALF_LIFE": "h",
    "R2": "1",
    "R2_ADJ": "1",
    "N_LAMBDA_Z": "count",
    "LAMBDA_Z_START": "h",
    "LAMBDA_Z_END": "h",
    "AUCINF": "mg*h/L",
    "AUC_PEXTRAP": "%",
    "AUMCINF": "mg*h^2/L",
    "MRT": "h",
    "CL_F": "L/h",
    "VZ_F": "L",
}

_METHODS = ("linear-up/log-down", "linear")
_ROUTES = ("extravascular", "iv_bolus", "iv_infusion")
_PEXTRAP_WARN = 20.0  # % of AUCinf extrapolated above which a note is added (common acceptance limit)


# --------------------------------------------------------------------------------------------- public


def nca(
    data: pd.DataFrame | str | Path,
    *,
    dvid: float | Sequence[float] | None = None,
    lloq: float | str | None = None,
    method: str = "linear-up/log-down",
    route: str = "extravascular",
    conc: str = "DV",
    lambda_z_min_points: int = 3,
    adj_r2_tolerance: float = 1e-4,
) -> pd.DataFrame:
    """Non-compartmental analysis of every concentration-time profile of a dataset.

    Parameters
    ----------
    data
        NONMEM-format dataset: a frame or the path of a CSV file. It is validated with
        :func:`pkpd.data.validate_dataset` first. Observations are rows with ``EVID=0`` and ``MDV=0``; doses
        are rows with ``EVID`` 1 or 4 and ``AMT > 0`` (mg). TIME in h. Optional columns: ``DVID`` (analyte /
        output id), ``BLQ`` (1 = below the limit of quantification), ``LLOQ`` (mg/L, per row).
    dvid
        ``None``: one profile per ``ID``, or per ``ID`` and ``DVID`` when the dataset has a ``DVID`` column.
        A value or a sequence of values: analyse only the observations with these ``DVID`` values (the
        dataset must have a ``DVID`` column).
    lloq
        Lower limit of quantification (mg/L) applied to every observation, or the name of a column holding
        it per row. ``None``: the ``LLOQ`` column if there is one, else no limit. A concentration strictly
        below the limit is BLQ; so is any row with ``BLQ=1`` and any concentration equal to 0. BLQ values before Tmax are set to 0, those
        after Tmax are dropped (see the module docstring).
    method
        ``"linear-up/log-down"`` (default) or ``"linear"`` trapezoidal rule for AUC and AUMC.
    route
        ``"extravascular"`` (default; oral, sc, ...), ``"iv_infusion"`` (both start at C = 0 when the dose
        time has no observation) or ``"iv_bolus"`` (C0 back-extrapolated, see the module docstring).
    conc
        Column holding the concentrations (mg/L); ``"DV"`` by default, e.g. ``"CP"`` for the output of
        :func:`pkpd.simulate`.
    lambda_z_min_points
        Fewest points (>= 3) of a terminal log-linear fit.
    adj_r2_tolerance
        A fit with more points is preferred when its adjusted R^2 is within this amount of the best one.
        On densely sampled profiles (hundreds of points) the default 1e-4 can admit the end of a
        distribution phase; check ``LAMBDA_Z_START`` or lower the tolerance.

    Returns
    -------
    pandas.DataFrame
        One row per profile, columns :data:`COLUMNS` (``DVID`` only when profiles are split by it), in
        order of first appearance of the ID (then increasing DVID). Units in :data:`UNITS` (also in
        ``result.attrs["units"]``): concentrations mg/L, times h (since the first dose), AUC mg*h/L, AUMC
        mg*h^2/L, LAMBDA_Z 1/h, CL_F L/h, VZ_F L. ``N_OBS`` counts the observations used (quantified plus
        BLQ set to 0), ``N_BLQ`` the BLQ (or zero) observations, zeroed or dropped, ``N_DOSES`` the doses including
        ADDL repeats, ``DOSE`` the first dose (mg). Parameters that cannot be computed are NaN and ``NOTE``
        says why (fewer than ``lambda_z_min_points`` points after Tmax, multiple doses, ...); NOTE is ``""``
        when nothing is to be said.

    Raises
    ------
    DatasetError
        With 1-based data-row numbers: every problem :func:`~pkpd.data.validate_dataset` finds (including
        TIME decreasing within an ID), plus negative, missing or non-numeric concentrations on observation
        rows, two observations of one profile at the same time, TIME going back at a reset record, BLQ
        flags other than 0/1, a missing concentration / DVID column, and a dataset without observations.
    ValueError
        For an unknown ``method`` or ``route``, ``lambda_z_min_points < 3`` or a negative tolerance.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> t = np.array([0.5, 1, 2, 4, 8, 12, 24.0])
    >>> df = pd.DataFrame({"ID": 1, "TIME": np.r_[0.0, t], "EVID": np.r_[1, np.zeros(t.size)],
    ...                    "AMT": np.r_[100.0, np.zeros(t.size)], "DV": np.r_[np.nan, 2 * np.exp(-0.1 * t)]})
    >>> res = nca(df, route="iv_bolus")
    >>> round(float(res["LAMBDA_Z"].iloc[0]), 6), round(float(res["CL_F"].iloc[0]), 4)   # k, dose/AUCinf
    (0.1, 5.0)
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, _METHODS))}; got {method!r}")
    if route not in _ROUTES:
        raise ValueError(f"route must be one of {', '.join(map(repr, _ROUTES))}; got {route!r}")
    if (
        isinstance(lambda_z_min_points, bool)
        or not isinstance(lambda_z_min_points, numbers.Integral)
        or lambda_z_min_points < 3
    ):
        raise ValueError(
            f"lambda_z_min_points must be an integer >= 3 (adjusted R^2 needs 3 points); got {lambda_z_min_points!r}"
        )
    if not (isinstance(adj_r2_tolerance, numbers.Real) and adj_r2_tolerance >= 0):
        raise ValueError(f"adj_r2_tolerance must be a number >= 0; got {adj_r2_tolerance!r}")
    if isinstance(lloq, numbers.Real) and not isinstance(lloq, bool):
        if not (math.isfinite(lloq) and lloq >= 0):
            raise ValueError(f"lloq must be a finite concentration >= 0 (mg/L); got {lloq!r}")
    elif lloq is not None and not isinstance(lloq, str):
        raise ValueError(f"lloq must be a number (mg/L), a column name or None; got {lloq!r}")

    source = str(data) if isinstance(data, (str, Path)) else None
    frame = validate_dataset(data)
    prof = _collect(frame, dvid=dvid, lloq=lloq, conc=conc, source=source)

    rows = []
    for key in prof.order:
        rows.append(
            _subject_rows(
                prof, key, method=method, route=route, min_points=int(lambda_z_min_points), tol=float(adj_r2_tolerance)
            )
        )
    records = [r for group in rows for r in group]
    columns = [c for c in COLUMNS if c != "DVID" or prof.split_dvid]
    out = pd.DataFrame.from_records(records, columns=columns)
    for c in columns:
        if c not in ("NOTE",):
            out[c] = out[c].astype(float)
    # counts are whole numbers, and so are IDs and DVIDs that were written as such: integer columns (the CSV
    # then reads '1', not '1.0')
    for c in ("ID", "DVID", "N_OBS", "N_BLQ", "N_DOSES", "N_LAMBDA_Z"):
        if c in out and len(out) and np.all(np.isfinite(out[c])) and np.all(out[c] == np.round(out[c])):
            out[c] = out[c].astype(np.int64)
    out["NOTE"] = out["NOTE"].astype(object)
    out.attrs["units"] = {c: u for c, u in UNITS.items() if c in columns}
    return out


# --------------------------------------------------------------------------------------------- data


class _Profiles:
    """Arrays of the validated dataset and the per-ID grouping (internal)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _numeric(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Float values of a column and a mask of cells that are present but not numbers."""
    raw = s.to_numpy(dtype=object)
    vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    blank = np.array(
        [
            c is None
            or c is pd.NA
            or (isinstance(c, float) and math.isnan(c))
            or (isinstance(c, str) and c.strip() in ("", "."))
            for c in raw
        ],
        dtype=bool,
    )
    bad = ~np.isfinite(vals) & ~blank
    vals = np.where(np.isfinite(vals), vals, np.nan)
    return vals, bad


def _rows(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in np.flatnonzero(mask))


def _collect(frame: pd.DataFrame, *, dvid, lloq, conc: str, source: str | None) -> _Profiles:
    n = len(frame)
    viol: list[DatasetViolation] = []

    def add(mask_or_rows, column, message):
        rows = _rows(mask_or_rows) if isinstance(mask_or_rows, np.ndarray) else tuple(mask_or_rows)
        viol.append(DatasetViolation(rows, column, message))

    ident = frame["ID"].to_numpy(float)
    time = frame["TIME"].to_numpy(float)
    evid = frame["EVID"].to_numpy(float)
    amt = frame["AMT"].to_numpy(float)
    mdv = frame["MDV"].to_numpy(float)
    addl = frame["ADDL"].to_numpy(float)
    ss = frame["SS"].to_numpy(float)
    obs = (evid == 0) & (mdv == 0)
    dose = np.isin(evid, (1.0, 4.0)) & (amt > 0)

    # ---- concentration column --------------------------------------------------------------------
    if conc not in frame.columns:
        add((), conc, f"concentration column {conc!r} is missing (columns: {', '.join(map(str, frame.columns))})")
        c = np.full(n, np.nan)
        c_bad = np.zeros(n, bool)
    else:
        c, c_bad = _numeric(frame[conc])

    # ---- BLQ flags and LLOQ ----------------------------------------------------------------------
    blq_flag = np.zeros(n, bool)
    if "BLQ" in frame.columns:
        b, b_bad = _numeric(frame["BLQ"])
        m = obs & (b_bad | (np.isfinite(b) & ~np.isin(b, (0.0, 1.0))))
        if m.any():
            add(m, "BLQ", "BLQ must be 0 (quantified) or 1 (below the limit of quantification) on observation rows")
        blq_flag = obs & (b == 1)
    if isinstance(lloq, str):
        if lloq not in frame.columns:
            add((), lloq, f"lloq={lloq!r} names a column the dataset does not have")
            limit = np.full(n, np.nan)
        else:
            limit, l_bad = _numeric(frame[lloq])
            m = obs & (l_bad | (limit < 0))
            if m.any():
                add(m, lloq, "LLOQ must be a concentration >= 0 (mg/L) or blank")
    elif lloq is not None:
        limit = np.full(n, float(lloq))
    elif "LLOQ" in frame.columns:
        limit, l_bad = _numeric(frame["LLOQ"])
        m = obs & (l_bad | (limit < 0))
        if m.any():
            add(m, "LLOQ", "LLOQ must be a concentration >= 0 (mg/L) or blank")
    else:
        limit = np.full(n, np.nan)

    if conc in frame.columns:
        m = obs & ~blq_flag & c_bad
        if m.any():
            add(m, conc, f"non-numeric concentration in column {conc} on observation rows (EVID 0, MDV 0)")
        m = obs & ~blq_flag & ~c_bad & np.isnan(c)
        if m.any():
            add(
                m,
                conc,
                f"missing concentration in column {conc} on observation rows (EVID 0, MDV 0); give a "
                "value, set MDV=1 to skip the row, or flag it BLQ=1",
            )
        m = obs & ~blq_flag & (c < 0)
        if m.any():
            add(
                m,
                conc,
                "negative concentration (mg/L); concentrations must be >= 0 (flag values below the "
                "limit of quantification with BLQ=1 or give an LLOQ)",
            )
    with np.errstate(invalid="ignore"):
        blq = obs & (blq_flag | (c == 0) | (np.isfinite(c) & np.isfinite(limit) & (c < limit)))

    # ---- DVID ------------------------------------------------------------------------------------
    has_dvid = "DVID" in frame.columns
    if has_dvid:
        dv_id, _ = _numeric(frame["DVID"])
        m = obs & np.isnan(dv_id)
        if m.any():
            add(m, "DVID", "DVID must be a number on every observation row")
    else:
        dv_id = np.zeros(n)
    selected = obs.copy()
    if dvid is not None:
        wanted = [float(dvid)] if isinstance(dvid, numbers.Real) else [float(x) for x in dvid]
        if not has_dvid:
            add((), "DVID", f"dvid={dvid!r} was given but the dataset has no DVID column")
        else:
            selected &= np.isin(dv_id, wanted)

    # ---- time order (validate_dataset allows a reset row to go back in time; NCA does not) -------
    same_id = np.zeros(n, bool)
    same_id[1:] = ident[1:] == ident[:-1]
    back = np.zeros(n, bool)
    back[1:] = same_id[1:] & (time[1:] < time[:-1])
    m = back & np.isin(evid, (3.0, 4.0))
    if m.any():
        add(
            m,
            "TIME",
            "TIME goes back at a reset record (EVID 3 or 4); NCA needs time non-decreasing within "
            "an ID: give each occasion its own ID",
        )

    # ---- duplicate observation times within a profile --------------------------------------------
    idx = np.flatnonzero(selected)
    if idx.size:
        key = pd.DataFrame({"ID": ident[idx], "DVID": dv_id[idx], "TIME": time[idx]})
        dup = key.duplicated(keep=False).to_numpy()
        if dup.any():
            m = np.zeros(n, bool)
            m[idx[dup]] = True
            add(
                m,
                "TIME",
                "two or more observations of one profile (ID"
                + ("/DVID" if has_dvid else "")
                + ") at the same TIME; NCA needs strictly increasing sampling times (average "
                "replicates or set MDV=1 on all but one)",
            )

    if not selected.any():
        what = f" with DVID in {dvid!r}" if dvid is not None else ""
        add(
            (),
            conc if conc in frame.columns else None,
            f"the dataset has no observations{what} (rows with EVID=0, MDV=0 and a concentration in column "
            f"{conc}); NCA needs at least one",
        )

    if viol:
        viol.sort(key=lambda v: v.rows[0] if v.rows else 0)
        raise DatasetError(viol, source=source)

    order = list(dict.fromkeys(ident.tolist()))
    return _Profiles(
        ident=ident,
        time=time,
        evid=evid,
        amt=amt,
        addl=addl,
        ss=ss,
        obs=selected,
        dose=dose,
        c=c,
        blq=blq,
        dv_id=dv_id,
        split_dvid=has_dvid,
        order=order,
    )


# --------------------------------------------------------------------------------------------- per subject


def _empty(**kw) -> dict:
    rec = {c: np.nan for c in COLUMNS}
    rec["NOTE"] = ""
    rec.update(kw)
    return rec


def _subject_rows(p: _Profiles, key: float, *, method: str, route: str, min_points: int, tol: float) -> list:
    rows = p.ident == key
    d = rows & p.dose
    n_doses = int(np.sum(1 + p.addl[d])) if d.any() else 0
    multi = n_doses > 1 or bool(np.any(p.ss[d] != 0))
    first_dose = float(p.amt[d][0]) if d.any() else np.nan
    t0 = float(p.time[d][0]) if d.any() else 0.0
    base_notes = []
    if not d.any():
        base_notes.append("no dose record: times as recorded, AUC from the first observation, CL_F not computed")
    elif multi:
        base_notes.append("multiple doses or steady state: CL_F and VZ_F not computed (single-dose parameters)")

    o = rows & p.obs
    if not o.any():
        rec = _empty(ID=key, N_OBS=0, N_BLQ=0, DOSE=first_dose, N_DOSES=n_doses)
        rec["NOTE"] = "; ".join(base_notes + ["no observations"])
        if p.split_dvid:
            rec["DVID"] = np.nan
        return [rec]

    out = []
    for dv in sorted(set(p.dv_id[o].tolist())) if p.split_dvid else [None]:
        m = o if dv is None else o & (p.dv_id == dv)
        notes = list(base_notes)
        t = p.time[m] - t0
        c = p.c[m]
        blq = p.blq[m]
        early = t < 0
        if d.any() and early.any():
            notes.append(f"{int(early.sum())} observation(s) before the first dose ignored")
            t, c, blq = t[~early], c[~early], blq[~early]
        rec = _profile(
            t, c, blq, has_dose=bool(d.any()), method=method, route=route, min_points=min_points, tol=tol, notes=notes
        )
        rec.update(ID=key, DOSE=first_dose, N_DOSES=n_doses)
        if dv is not None:
            rec["DVID"] = dv
        if not multi and d.any() and np.isfinite(rec["AUCINF"]):
            rec["CL_F"] = first_dose / rec["AUCINF"]
            rec["VZ_F"] = first_dose / (rec["LAMBDA_Z"] * rec["AUCINF"])
        rec["NOTE"] = "; ".join(notes)
        out.append(rec)
    return out


def _profile(t, c, blq, *, has_dose: bool, method: str, route: str, min_points: int, tol: float, notes: list) -> dict:
    """NCA of one profile; ``t`` (h since the dose) strictly increasing, ``blq`` flags BLQ values."""
    rec = _empty(N_BLQ=int(blq.sum()))
    quant = ~blq
    if not quant.any():
        notes.append("all observations BLQ")
        rec.update(N_OBS=int(blq.size), CMAX=0.0, AUCLAST=0.0, AUMCLAST=0.0)
        return rec
    tq, cq = t[quant], c[quant]
    imax = int(np.argmax(cq))  # first occurrence
    cmax, tmax = float(cq[imax]), float(tq[imax])
    keep = quant | (t < tmax)  # BLQ before Tmax -> 0, after Tmax -> dropped
    tt = t[keep]
    cc = np.where(blq, 0.0, c)[keep]
    rec.update(N_OBS=int(keep.sum()), CMAX=cmax, TMAX=tmax)
    pos = cc > 0
    if not pos.any():
        notes.append("no positive concentration: Tlast, AUC and lambda_z not computed")
        return rec
    ilast = int(np.flatnonzero(pos)[-1])
    tlast, clast = float(tt[ilast]), float(cc[ilast])
    rec.update(TLAST=tlast, CLAST=clast)

    # ---- points integrated: from the time origin (dose) to Tlast ---------------------------------
    ti, ci = tt[: ilast + 1], cc[: ilast + 1]
    if has_dose and route == "iv_bolus":
        if ti[0] == 0 and ci[0] == 0:  # pre-dose sample at the dose time
            ti, ci = ti[1:], ci[1:]
        if ti[0] == 0:
            c0 = float(ci[0])
        else:
            c0 = _back_extrapolate(ti, ci, notes)
            ti, ci = np.r_[0.0, ti], np.r_[c0, ci]
        rec["C0"] = c0
    elif has_dose and ti[0] > 0:
        ti, ci = np.r_[0.0, ti], np.r_[0.0, ci]
    auc, aumc = _auc_aumc(ti, ci, log_down=(method == "linear-up/log-down"))
    rec.update(AUCLAST=auc, AUMCLAST=aumc)

    # ---- terminal phase --------------------------------------------------------------------------
    cand = pos & (tt > tmax)
    fit = _lambda_z(tt[cand], cc[cand], min_points=min_points, tol=tol)
    if fit is None:
        n_c = int(cand.sum())
        notes.append(
            f"lambda_z not estimated: {n_c} positive point(s) after Tmax, fewer than {min_points} or no declining fit"
        )
        return rec
    lam, r2, r2adj, npts, tstart, tend = fit
    aucinf = auc + clast / lam
    aumcinf = aumc + tlast * clast / lam + clast / lam**2
    pext = 100.0 * (aucinf - auc) / aucinf
    rec.update(
        LAMBDA_Z=lam,
        HALF_LIFE=math.log(2.0) / lam,
        R2=r2,
        R2_ADJ=r2adj,
        N_LAMBDA_Z=npts,
        LAMBDA_Z_START=tstart,
        LAMBDA_Z_END=tend,
        AUCINF=aucinf,
        AUC_PEXTRAP=pext,
        AUMCINF=aumcinf,
        MRT=aumcinf / aucinf,
    )
    if pext > _PEXTRAP_WARN:
        notes.append(f"AUC extrapolated {pext:.1f} % > {_PEXTRAP_WARN:g} %: AUCINF unreliable")
    return rec


def _back_extrapolate(t: np.ndarray, c: np.ndarray, notes: list) -> float:
    """C0 of an IV bolus from the first two positive points (PKNCA ``logslope``, else ``c1``)."""
    p = np.flatnonzero(c > 0)
    if p.size >= 2:
        (t1, c1), (t2, c2) = (t[p[0]], c[p[0]]), (t[p[1]], c[p[1]])
        if c2 < c1:
            return float(c1 * math.exp(math.log(c1 / c2) / (t2 - t1) * t1))
    notes.append("C0 set to the first positive concentration (first two do not decline)")
    return float(c[p[0]])


# --------------------------------------------------------------------------------------------- numerics


def _aumc_log_factor(x: np.ndarray) -> np.ndarray:
    """``(1 - exp(-x) (1 + x)) / x^2``, with a series for small ``x`` (no cancellation)."""
    x = np.asarray(x, float)
    out = np.empty_like(x)
    small = x < 0.5
    xs = x[small]
    term = np.full_like(xs, 0.5)  # n = 0 term of sum (-1)^n x^n (n+1)/(n+2)!
    acc = term.copy()
    fact = 2.0
    for k in range(1, 25):
        fact *= k + 2
        acc = acc + (-xs) ** k * (k + 1) / fact
    out[small] = acc
    xl = x[~small]
    out[~small] = (1.0 - np.exp(-xl) * (1.0 + xl)) / xl**2
    return out


def _auc_aumc(t: np.ndarray, c: np.ndarray, *, log_down: bool) -> tuple[float, float]:
    """AUC and AUMC over the points ``(t, c)`` (linear or linear-up/log-down trapezoids)."""
    if t.size < 2:
        return 0.0, 0.0
    t1, t2, c1, c2 = t[:-1], t[1:], c[:-1], c[1:]
    dt = t2 - t1
    auc = dt * (c1 + c2) / 2.0
    aumc = dt * (t1 * c1 + t2 * c2) / 2.0
    if log_down:
        seg = (c2 < c1) & (c2 > 0)
        if seg.any():
            a, b, h = c1[seg], c2[seg], dt[seg]
            x = np.log(a / b)  # = k * dt of the exponential through both points
            auc_log = a * h * (-np.expm1(-x)) / x
            auc[seg] = auc_log
            aumc[seg] = t1[seg] * auc_log + a * h**2 * _aumc_log_factor(x)
    return float(auc.sum()), float(aumc.sum())


def _lambda_z(t: np.ndarray, c: np.ndarray, *, min_points: int, tol: float):
    """Best-fit terminal log-linear regression; ``None`` when no fit qualifies.

    Returns ``(lambda_z, R2, adjusted R2, n points, first time, last time)``.
    """
    n_all = t.size
    if n_all < min_points:
        return None
    y = np.log(c)
    fits = []
    for n in range(min_points, n_all + 1):
        x, yy = t[-n:], y[-n:]
        xm, ym = x.mean(), yy.mean()
        sxx = float(np.sum((x - xm) ** 2))
        sxy = float(np.sum((x - xm) * (yy - ym)))
        syy = float(np.sum((yy - ym) ** 2))
        if sxx <= 0 or syy <= 0:
            continue
        slope = sxy / sxx
        if not slope < 0:
            continue
        resid = yy - ym - slope * (x - xm)
        ss_res = float(np.sum(resid**2))
        r2 = 1.0 - ss_res / syy
        r2adj = 1.0 - (1.0 - r2) * (n - 1) / (n - 2)
        fits.append((n, -slope, r2, r2adj))
    if not fits:
        return None
    best = max(f[3] for f in fits)
    n, lam, r2, r2adj = max((f for f in fits if f[3] >= best - tol), key=lambda f: f[0])
    return lam, r2, r2adj, n, float(t[-n]), float(t[-1])
