"""Morphine milligram equivalents (MME) from opioid doses.

The oral and transdermal factors are the CDC 2022 table as recorded in ``shared/reference/models.md``
section C ("MME conversion factors, CDC 2022"; source: globalrph.com and medscape.org reproductions of
the CDC table). The CDC cautions that the factors are estimates and are **not for opioid rotation**.

The CDC table lists **no IV/parenteral factors** and models.md lists "IV MME factors" among the gaps
to fill (section E). IV entries therefore exist with ``factor=None, unverified=True``: :func:`mme`
refuses them unless the caller supplies a sourced factor with ``factor=...`` and
``allow_unverified=True``. No IV value is invented here.

Example::

    mme("oxycodone", 10)                        # 15.0 MME (10 mg x 1.5)
    daily_mme([("oxycodone", 5)] * 4 + [("tramadol", 50, "po")] * 3)   # 60.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelSpecError

__all__ = [
    "ALIASES",
    "ASSUMED_IV_FACTORS",
    "MME_FACTORS",
    "ROUTES",
    "MMEFactor",
    "daily_mme",
    "mme",
    "mme_table",
    "total_mme",
]


@dataclass(frozen=True)
class MMEFactor:
    """One MME conversion factor.

    Attributes
    ----------
    drug, route
        Canonical lower-case drug name and route (``"oral"``, ``"iv"`` or ``"transdermal"``).
    factor
        MME per unit of dose, or ``None`` when no sourced value exists.
    unit
        Dose unit the factor applies to: ``"per mg"`` or ``"per mcg/h"`` (transdermal patch rate;
        the product is MME/day).
    source
        Where the value comes from (as recorded in models.md), or why there is none.
    unverified
        ``True`` when the value is not backed by the cited source.
    note
        Caveats.
    """

    drug: str
    route: str
    factor: float | None
    unit: str
    source: str
    unverified: bool
    note: str = ""


_CDC = (
    "CDC 2022 Clinical Practice Guideline, MME conversion factor table (globalrph.com and medscape.org "
    "reproductions), as recorded in shared/reference/models.md section C"
)
_CDC_NOTE = "Estimate; not for opioid rotation (CDC caution)."
_IV_NOTE = (
    "CDC 2022 lists no IV/parenteral factors; models.md section E lists 'IV MME factors' as a gap. "
    "Supply a sourced factor via mme(..., factor=..., allow_unverified=True)."
)


def _cdc(drug: str, factor: float, unit: str = "per mg", note: str = "", route: str = "oral") -> MMEFactor:
    return MMEFactor(drug, route, factor, unit, _CDC, False, f"{note} {_CDC_NOTE}".strip())


#: Conversion factors keyed by ``(drug, route)``.
MME_FACTORS: dict[tuple[str, str], MMEFactor] = {
    (f.drug, f.route): f
    for f in (
        _cdc("codeine", 0.15),
        _cdc("fentanyl", 2.4, "per mcg/h", "Dose is the patch rate in mcg/h; result is MME/day.", "transdermal"),
        _cdc("hydrocodone", 1.0),
        _cdc("hydromorphone", 5.0),
        _cdc("methadone", 4.7, note="Single CDC 2022 factor (no dose tiers)."),
        _cdc("morphine", 1.0),
        _cdc("oxycodone", 1.5),
        _cdc("oxymorphone", 3.0),
        _cdc("tapentadol", 0.4, note="Footnoted in the CDC table; footnote text not read (models.md)."),
        _cdc("tramadol", 0.2, note="Footnoted in the CDC table; footnote text not read (models.md)."),
        MMEFactor("morphine", "iv", None, "per mg", "none (gap in models.md)", True, _IV_NOTE),
        MMEFactor("hydromorphone", "iv", None, "per mg", "none (gap in models.md)", True, _IV_NOTE),
        MMEFactor("fentanyl", "iv", None, "per mcg", "none (gap in models.md)", True, _IV_NOTE),
    )
}

#: IV factors the population simulator assumes (MME per mg IV), all UNVERIFIED: the CDC table has none.
#: Pass them explicitly: ``mme(drug, dose, "iv", factor=f.factor, allow_unverified=True)``.
ASSUMED_IV_FACTORS: dict[str, MMEFactor] = {
    "morphine": MMEFactor(
        "morphine",
        "iv",
        3.0,
        "per mg",
        "clinical.md 3.1: IV:oral morphine ~ 1:3",
        True,
        "no CDC value; ratio from the clinical notes",
    ),
    "hydromorphone": MMEFactor(
        "hydromorphone",
        "iv",
        15.0,
        "per mg",
        "derived: CDC oral hydromorphone 5 x IV:oral 3 (clinical.md 3.1)",
        True,
        "assumes hydromorphone's IV:oral ratio equals morphine's",
    ),
    "fentanyl": MMEFactor(
        "fentanyl",
        "iv",
        300.0,
        "per mg",
        "general knowledge: 0.1 mg IV fentanyl ~ 10 mg IV morphine",
        True,
        "x3 IV:oral morphine",
    ),
}

#: Accepted route spellings -> canonical route.
ROUTES: dict[str, str] = {
    "oral": "oral",
    "po": "oral",
    "iv": "iv",
    "intravenous": "iv",
    "transdermal": "transdermal",
    "td": "transdermal",
    "patch": "transdermal",
}

#: Brand-name aliases (single-ingredient products only, so the dose is unambiguous).
ALIASES: dict[str, str] = {"oxycontin": "oxycodone", "dilaudid": "hydromorphone"}


def _norm(name: str, what: str) -> str:
    if not isinstance(name, str):
        raise ModelSpecError(f"{what} must be a string, got {type(name).__name__}")
    return " ".join(name.strip().lower().split())


def _lookup(drug: str, route: str) -> MMEFactor:
    d = _norm(drug, "drug")
    d = ALIASES.get(d, d)
    drugs = sorted({k[0] for k in MME_FACTORS})
    if d not in drugs:
        raise ModelSpecError(f"Unknown opioid {drug!r} for MME; known drugs: {', '.join(drugs)}")
    r = _norm(route, "route")
    if r not in ROUTES:
        raise ModelSpecError(f"Unknown route {route!r}; accepted: {', '.join(ROUTES)}")
    r = ROUTES[r]
    entry = MME_FACTORS.get((d, r))
    if entry is None:
        have = sorted(k[1] for k in MME_FACTORS if k[0] == d)
        raise ModelSpecError(f"No MME factor for {d} by route {r!r}; available routes for {d}: {', '.join(have)}")
    return entry


def _check_dose(dose: Any) -> Any:
    if isinstance(dose, (str, bytes)):
        raise ModelSpecError(f"Dose must be numeric, got {dose!r}")
    if isinstance(dose, (list, tuple)):
        dose = np.asarray(dose, dtype=float)
    try:
        arr = np.asarray(dose, dtype=float)
    except TypeError:  # a traced jax value (TracerArrayConversionError): not checkable concretely
        return dose
    if np.any(arr < 0):
        raise ModelSpecError(f"Dose must be non-negative, got {dose!r}")
    return dose


def mme(
    drug: str, dose: Any, route: str = "oral", *, allow_unverified: bool = False, factor: float | None = None
) -> Any:
    """Convert an opioid dose to morphine milligram equivalents.

    Parameters
    ----------
    drug
        Opioid name, case-insensitive (aliases in :data:`ALIASES`).
    dose
        Dose in mg; for transdermal fentanyl the patch rate in mcg/h (result is then MME/day); for IV
        fentanyl, mcg. Scalar, numpy or jax array (plain arithmetic, so it is jit/grad-compatible).
    route
        ``"oral"``/``"po"`` (default), ``"iv"``/``"intravenous"``, ``"transdermal"``/``"td"``/``"patch"``.
    allow_unverified
        Must be ``True`` to use any factor not backed by the CDC 2022 table (a caller-supplied
        ``factor``, or a table entry marked ``unverified``).
    factor
        Caller-supplied MME per dose unit, overriding the table (requires ``allow_unverified=True``).
        Needed for IV routes, which have no sourced factor.

    Returns
    -------
    MME (mg oral morphine equivalents), same shape as ``dose``.

    Raises
    ------
    ModelSpecError
        Unknown drug/route, negative dose, or a factor without source and ``allow_unverified=False``.

    References
    ----------
    CDC 2022 Clinical Practice Guideline for Prescribing Opioids for Pain, MME conversion factor table
    (via shared/reference/models.md section C).
    """
    entry = _lookup(drug, route)
    dose = _check_dose(dose)
    if factor is not None:
        if not allow_unverified:
            raise ModelSpecError("A caller-supplied MME factor is not from the CDC table; pass allow_unverified=True")
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 0):
            raise ModelSpecError(f"factor must be a finite non-negative number, got {factor!r}")
        return dose * float(factor)
    if entry.factor is None:
        raise ModelSpecError(f"No sourced MME factor for {entry.drug} {entry.route}: {entry.note}")
    if entry.unverified and not allow_unverified:
        raise ModelSpecError(f"MME factor for {entry.drug} {entry.route} is unverified; pass allow_unverified=True")
    return dose * entry.factor


def _one(item: tuple, allow_unverified: bool) -> Any:
    if not 2 <= len(item) <= 3:
        raise ModelSpecError(f"Dose entry must be (drug, amount[, route]), got {item!r}")
    return mme(item[0], item[1], item[2] if len(item) == 3 else "oral", allow_unverified=allow_unverified)


def daily_mme(doses: Iterable[tuple], *, allow_unverified: bool = False) -> Any:
    """Total MME of the doses given in one 24-h day.

    Parameters
    ----------
    doses
        Iterable of ``(drug, amount, route)`` or ``(drug, amount)`` (route oral); amount in mg
        (transdermal fentanyl: patch rate in mcg/h, contributing MME/day).
    allow_unverified
        Passed to :func:`mme`.

    Returns
    -------
    MME/day (sum over entries; 0.0 when empty).
    """
    total: Any = 0.0
    for item in doses:
        total = total + _one(tuple(item), allow_unverified)
    return total


def total_mme(
    doses: Iterable[tuple], start_h: float = -math.inf, end_h: float = math.inf, *, allow_unverified: bool = False
) -> Any:
    """Total MME of the timed doses with ``start_h <= time_h < end_h``.

    Parameters
    ----------
    doses
        Iterable of ``(time_h, drug, amount[, route])``; time in hours, amount as in :func:`mme`.
    start_h, end_h
        Half-open window in hours (default: all doses).
    allow_unverified
        Passed to :func:`mme`.

    Returns
    -------
    Summed MME over the window (divide by the window length in days for an average MME/day).
    Transdermal patch entries contribute their MME/day rate once per entry.
    """
    if end_h < start_h:
        raise ModelSpecError(f"Window end ({end_h}) is before its start ({start_h})")
    total: Any = 0.0
    for item in doses:
        item = tuple(item)
        if len(item) < 3:
            raise ModelSpecError(f"Timed dose entry must be (time_h, drug, amount[, route]), got {item!r}")
        if start_h <= float(item[0]) < end_h:
            total = total + _one(item[1:], allow_unverified)
    return total


def mme_table() -> Any:
    """The conversion factors as a pandas DataFrame (columns = :class:`MMEFactor` fields), for reports."""
    import pandas as pd

    cols = ["drug", "route", "factor", "unit", "source", "unverified", "note"]
    return pd.DataFrame([[getattr(f, c) for c in cols] for f in MME_FACTORS.values()], columns=cols)
