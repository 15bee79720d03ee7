"""Analgesic regimens as data: scheduled doses, PRN rules, PCA and non-drug modalities.

Time convention: hours relative to the **end of surgery** (t = 0); pre-operative doses at negative times
(e.g. -2 h), intra-operative ones at e.g. -1 h; default horizon 72 h. Doses in mg (or mg/kg of ``WT``),
rates in mg/h (or mg/kg/h), PCA lockout in minutes.

* Data model (:mod:`regimens._model`): :class:`Scheduled` (with conditional :class:`Adjustment` s such as
  ``"AGE >= 65 or WT < 50"`` -> 15 mg), :class:`PRN`, :class:`PCA`, :class:`Modality` and :class:`Regimen`,
  whose :meth:`Regimen.dose_events` expands the deterministic doses for one patient into
  :class:`DoseEvent` s. Every item is validated at construction (drug and route exist in
  :mod:`pkpd.drugs`, positive doses, stop after start...) and errors are :class:`RegimenError`
  (a :class:`pkpd.errors.PKPDError`).
* Formats: TOML (:func:`load_regimen`, :meth:`Regimen.to_toml`) and a short text form, one item per line
  (:func:`parse_regimen_text`, :meth:`Regimen.to_text`); both round-trip exactly.
* Limits (:mod:`regimens.limits`): :data:`LIMITS` (label maxima with sources and UNVERIFIED flags as in
  ``shared/reference/models.md`` C, CPIC caps from D) and :func:`check_regimen`, a worst-case checker.
* Shipped regimens (``regimens/data/``): ``C0`` (opioid-centric), ``C1`` (ERAS) and the Iyer 2023 calibration
  arms ``IYER_PLACEBO``, ``IYER_APAP``, ``IYER_KETOROLAC``: :func:`get_regimen`, :func:`list_regimens`.

>>> from regimens import get_regimen, check_regimen
>>> c1 = get_regimen("C1")
>>> [f.severity for f in check_regimen(c1, {"AGE": 50, "WT": 70, "CRCL": 100, "HEPATIC": 0})]
[]
"""

from ._condition import KNOWN_COVARIATES, Condition, ConditionError, RegimenError
from ._model import (
    MODALITY_KINDS,
    PCA,
    PRN,
    Adjustment,
    DoseEvent,
    Modality,
    Regimen,
    Scheduled,
    normalize_route,
)
from .io import (
    DATA_DIR,
    get_regimen,
    list_regimens,
    load_regimen,
    parse_regimen_toml,
    save_regimen,
)
from .limits import (
    LIMITS,
    DoseCaps,
    Finding,
    LabelLimit,
    check_regimen,
    dose_caps,
    format_findings,
    limits_for,
)
from .text import RegimenParseError, parse_regimen_text

__all__ = [
    "DATA_DIR",
    "KNOWN_COVARIATES",
    "LIMITS",
    "MODALITY_KINDS",
    "PCA",
    "PRN",
    "Adjustment",
    "Condition",
    "ConditionError",
    "DoseEvent",
    "Finding",
    "LabelLimit",
    "Modality",
    "Regimen",
    "RegimenError",
    "RegimenParseError",
    "Scheduled",
    "check_regimen",
    "format_findings",
    "get_regimen",
    "limits_for",
    "dose_caps",
    "DoseCaps",
    "list_regimens",
    "load_regimen",
    "normalize_route",
    "parse_regimen_text",
    "parse_regimen_toml",
    "save_regimen",
]
