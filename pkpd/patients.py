"""Patients, derived covariates and the SPINE-72 virtual population.

A :class:`Patient` holds what a clinician knows about one adult surgical patient (demographics, renal and
hepatic function, opioid tolerance, sleep apnea, type of surgery and pharmacogenetic results) and turns it
into the dataset covariate columns used by the drug library (:meth:`Patient.covariates`):

======================  ======  =================================================================
Column                  Unit    Meaning
======================  ======  =================================================================
``AGE``                 y       age
``MALE``                --      1 male, 0 female
``WT``                  kg      total body weight
``HT``                  cm      height
``BMI``                 kg/m2   body-mass index
``LBM``                 kg      lean body mass, James formula (models.md A13)
``FFM``                 kg      fat-free mass, Janmahasatian 2005 (**UNVERIFIED**)
``IBW``                 kg      ideal body weight, Devine 1974 (**UNVERIFIED**)
``SCR``                 mg/dL   serum creatinine (only when given)
``CRCL``                mL/min  creatinine clearance, Cockcroft-Gault 1976 with total body weight
                                (**UNVERIFIED**), or the value given; absent when neither is known
``HEPATIC``             --      0 none, 1 mild, 2 moderate, 3 severe hepatic impairment
``OPIOID_TOL``          --      1 opioid-tolerant
``OSA``                 --      1 obstructive sleep apnea or cardiopulmonary disease
``OPEN_SURGERY``        --      1 open, 0 minimally invasive surgery
``CYP2D6_AS``           --      CYP2D6 CPIC activity score (2.0 when not genotyped)
``CYP2D6_10_10``        --      1 for genotype CYP2D6 \\*10/\\*10
``CYP2C9_AS``           --      CYP2C9 CPIC activity score (2.0 when not genotyped)
``OPRM1_G``             --      number of OPRM1 118G alleles (0 when not genotyped)
======================  ======  =================================================================

Every formula and its source is listed in :data:`COVARIATE_FORMULAS`. The SPINE-72 benchmark population
(``shared/reference/clinical.md`` section 3.2) is sampled by :func:`spine72_population`, whose every
distribution parameter lives, with its source and an ``unverified`` flag, in :class:`PopulationSpec`.

Workflow::

    p = load_patient("examples/patient_spine.toml")
    p.covariates()["CRCL"]                       # Cockcroft-Gault, mL/min
    p.phenotypes()                               # {'CYP2D6': 'intermediate', 'CYP2C9': 'normal', ...}
    pop = spine72_population(1000, seed=1)       # one row per patient, ID 1..1000
    patients = patients_from_frame(pop)

Ungenotyped patients
--------------------
A gene that was not tested gets the population-typical normal-metabolizer value: CYP2D6 AS 2.0 (``*1/*1``,
the middle of the CPIC normal band 1.25-2.25, models.md D1), ``CYP2D6_10_10`` 0, CYP2C9 AS 2.0 (CPIC "NM AS
2", models.md D2), OPRM1 118G alleles 0 (``AA``). :meth:`Patient.genotype_known` and
:meth:`Patient.phenotypes` (label ``"unknown"``) record that the value is an assumption.

Random streams
--------------
:func:`spine72_population` draws every random variable from its own stream,
``numpy.random.default_rng([seed, 72, k])`` with a fixed stream number ``k`` per variable (see
``_STREAMS``), as uniform doubles transformed by inverse CDFs. The ``i``-th patient uses the ``i``-th draw of
each stream, so patient ``i`` does not depend on ``n`` (the first 100 patients of ``n = 1000`` are the
``n = 100`` population) and adding a new variable later does not change the existing ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from .drugs._base import Source
from .errors import PKPDError
from .genetics import (
    KNOWN_GENES,
    Genotype,
    GenotypeError,
    activity_score,
    parse_genotype,
    phenotype,
)

__all__ = [
    "COVARIATE_COLUMNS",
    "COVARIATE_FORMULAS",
    "GENOTYPE_COLUMNS",
    "HEPATIC_LEVELS",
    "PATIENT_FIELDS",
    "PHENOTYPE_COLUMNS",
    "TYPICAL_GENOTYPE_VALUES",
    "CovariateFormula",
    "Patient",
    "PatientError",
    "PatientGenotypeError",
    "PopulationSpec",
    "SpecParam",
    "bmi",
    "crcl_cockcroft_gault",
    "ffm_janmahasatian",
    "ibw_devine",
    "lbm_james",
    "load_patient",
    "patients_from_frame",
    "patients_to_frame",
    "require_covariates",
    "spine72_population",
]


class PatientError(PKPDError):
    """A patient description is invalid (impossible or implausible value, unknown key or category,
    duplicate gene), or a covariate that a computation needs is missing."""


class PatientGenotypeError(PatientError, GenotypeError):
    """A patient's genotype string is invalid. Both a :class:`PatientError` and a
    :class:`~pkpd.genetics.GenotypeError`; the message contains the genetics module's message."""


# --------------------------------------------------------------------------------------------------------
# Covariate formulas
# --------------------------------------------------------------------------------------------------------

_GK = "general knowledge, not in models.md"

_SRC_INPUT = Source("patient input", "given, not derived")
_SRC_BMI = Source("body-mass index definition (weight / height^2)", "definition; no fitted constants")
_SRC_JAMES = Source(
    "James formula as given in models.md A13 (Minto 1997 Anesthesiology 86:10; code in opentiva, PyTCI, SwiftTCI)",
    "men 1.1*W - 128*(W/H)^2; women 1.07*W - 148*(W/H)^2 (W kg, H cm)",
)
_SRC_JANMA = Source(
    "Janmahasatian 2005 Clin Pharmacokinet 44:1051",
    f"men 9270*W/(6680 + 216*BMI); women 9270*W/(8780 + 244*BMI); {_GK}",
    unverified=True,
)
_SRC_DEVINE = Source(
    "Devine 1974 Drug Intell Clin Pharm 8:650",
    f"men 50 + 2.3*(height in inches - 60); women 45.5 + 2.3*(height in inches - 60); {_GK}",
    unverified=True,
)
_SRC_CG = Source(
    "Cockcroft & Gault 1976 Nephron 16:31",
    f"(140 - age)*WT/(72*SCr), x0.85 for women; total body weight; {_GK}",
    unverified=True,
)
_SRC_CPIC_2D6 = Source("CPIC Crews 2021 Clin Pharmacol Ther 110:888", "activity score via pkpd.genetics; models.md D1")
_SRC_CPIC_2C9 = Source("CPIC Theken 2020 Clin Pharmacol Ther 108:191", "activity score via pkpd.genetics; models.md D2")
_SRC_LEE = Source(
    "Lee 2019 Drug Des Devel Ther 13:1751",
    "CYP2D6*10/*10 indicator of the tramadol model (models.md A5)",
)
_SRC_OPRM1 = Source("OPRM1 c.118A>G (rs1799971)", "count of G alleles via pkpd.genetics; clinical.md 5.2")


@dataclass(frozen=True)
class CovariateFormula:
    """How one covariate column is obtained.

    Attributes
    ----------
    name
        Column name.
    unit
        Unit (``"1"`` for indicators and scores).
    description
        What the column means.
    formula
        The formula, or ``"input"``.
    source
        Citation of the formula.
    unverified
        ``True`` when the formula is not in the shared reference notes (general knowledge).
    note
        Caveats.
    """

    name: str
    unit: str
    description: str
    formula: str
    source: Source
    unverified: bool = False
    note: str = ""


def _cf(*args: Any, **kw: Any) -> CovariateFormula:
    return CovariateFormula(*args, **kw)


#: Every covariate column, in output order, with its formula and source.
COVARIATE_FORMULAS: Mapping[str, CovariateFormula] = MappingProxyType(
    {
        f.name: f
        for f in (
            _cf("AGE", "y", "age", "input (age_y)", _SRC_INPUT),
            _cf("MALE", "1", "1 male, 0 female", "input (sex)", _SRC_INPUT),
            _cf("WT", "kg", "total body weight", "input (weight_kg)", _SRC_INPUT),
            _cf("HT", "cm", "height", "input (height_cm)", _SRC_INPUT),
            _cf("BMI", "kg/m2", "body-mass index", "WT / (HT/100)^2", _SRC_BMI),
            _cf(
                "LBM",
                "kg",
                "lean body mass (James)",
                "men 1.1*WT - 128*(WT/HT)^2; women 1.07*WT - 148*(WT/HT)^2",
                _SRC_JAMES,
                note="The James formula peaks at BMI = 1.07e4/296 = 36.1 kg/m2 (women) and 1.1e4/256 = 43.0 "
                "kg/m2 (men) and decreases with weight above that (derived from the formula); LBM of obese "
                "patients is therefore underestimated. Published as James WPT, Research on obesity, HMSO 1976 "
                f"(citation: {_GK}).",
            ),
            _cf(
                "FFM",
                "kg",
                "fat-free mass (Janmahasatian)",
                "men 9270*WT/(6680 + 216*BMI); women 9270*WT/(8780 + 244*BMI)",
                _SRC_JANMA,
                unverified=True,
                note=_GK,
            ),
            _cf(
                "IBW",
                "kg",
                "ideal body weight (Devine)",
                "men 50 + 2.3*(HT/2.54 - 60); women 45.5 + 2.3*(HT/2.54 - 60)",
                _SRC_DEVINE,
                unverified=True,
                note=f"{_GK}. Applied as written below 60 inches (152.4 cm), where it extrapolates.",
            ),
            _cf("SCR", "mg/dL", "serum creatinine", "input (scr_mg_dl)", _SRC_INPUT),
            _cf(
                "CRCL",
                "mL/min",
                "creatinine clearance",
                "crcl_ml_min if given, else (140 - AGE)*WT/(72*SCR) x0.85 if female",
                _SRC_CG,
                unverified=True,
                note=f"{_GK}. Total body weight, unrounded SCr, not normalised to 1.73 m2. Absent when neither "
                "scr_mg_dl nor crcl_ml_min is given.",
            ),
            _cf(
                "HEPATIC",
                "1",
                "hepatic impairment 0 none, 1 mild, 2 moderate, 3 severe",
                "input (hepatic)",
                _SRC_INPUT,
            ),
            _cf("OPIOID_TOL", "1", "1 opioid-tolerant", "input (opioid_tolerant)", _SRC_INPUT),
            _cf("OSA", "1", "1 obstructive sleep apnea or cardiopulmonary disease", "input (osa)", _SRC_INPUT),
            _cf("OPEN_SURGERY", "1", "1 open, 0 minimally invasive surgery", "input (surgery)", _SRC_INPUT),
            _cf(
                "CYP2D6_AS",
                "1",
                "CYP2D6 activity score",
                "sum of allele activity values x copy number; 2.0 when not genotyped",
                _SRC_CPIC_2D6,
                note="'xN' counts as 2 copies (pkpd.genetics). Ungenotyped: 2.0 (*1/*1, normal metabolizer).",
            ),
            _cf(
                "CYP2D6_10_10",
                "1",
                "1 for CYP2D6 *10/*10",
                "1 if both alleles are a single copy of *10, else 0",
                _SRC_LEE,
            ),
            _cf(
                "CYP2C9_AS",
                "1",
                "CYP2C9 activity score",
                "sum of allele activity values; 2.0 when not genotyped",
                _SRC_CPIC_2C9,
                note="Per-allele CYP2C9 values other than *1 are UNVERIFIED in pkpd.genetics.",
            ),
            _cf("OPRM1_G", "1", "number of OPRM1 118G alleles", "count of G; 0 when not genotyped", _SRC_OPRM1),
        )
    }
)

#: Covariate column names in output order.
COVARIATE_COLUMNS: tuple[str, ...] = tuple(COVARIATE_FORMULAS)

#: Value used for a gene that was not genotyped (population-typical normal metabolizer / reference allele).
TYPICAL_GENOTYPE_VALUES: Mapping[str, float] = MappingProxyType(
    {"CYP2D6_AS": 2.0, "CYP2D6_10_10": 0.0, "CYP2C9_AS": 2.0, "OPRM1_G": 0.0}
)

#: Genotype string columns of a population frame (full strings, e.g. ``"CYP2D6 *1/*4"``).
GENOTYPE_COLUMNS: tuple[str, ...] = ("CYP2D6", "CYP2C9", "OPRM1")
#: Phenotype label columns of a population frame.
PHENOTYPE_COLUMNS: tuple[str, ...] = ("CYP2D6_PHENO", "CYP2C9_PHENO")

#: Hepatic impairment categories -> ``HEPATIC`` code.
HEPATIC_LEVELS: Mapping[str, int] = MappingProxyType({"none": 0, "mild": 1, "moderate": 2, "severe": 3})
_SEXES = ("female", "male")
_SURGERIES = ("open", "mis")


def _where_male(male: Any, m: Any, f: Any) -> Any:
    out = np.where(np.asarray(male, dtype=float) >= 0.5, m, f)
    return float(out) if out.ndim == 0 else out


def bmi(weight_kg: Any, height_cm: Any) -> Any:
    """Body-mass index, kg/m2: ``WT / (HT/100)**2``.

    Parameters
    ----------
    weight_kg, height_cm
        Scalars or numpy arrays.

    Returns
    -------
    float or numpy.ndarray
    """
    w = np.asarray(weight_kg, dtype=float)
    h = np.asarray(height_cm, dtype=float) / 100.0
    out = w / (h * h)
    return float(out) if out.ndim == 0 else out


def lbm_james(weight_kg: Any, height_cm: Any, male: Any) -> Any:
    """Lean body mass by the James formula (models.md A13), kg.

    Men ``1.1*W - 128*(W/H)**2``; women ``1.07*W - 148*(W/H)**2`` (W kg, H cm). The formula decreases with
    weight above BMI 36.1 (women) / 43.0 kg/m2 (men); see :data:`COVARIATE_FORMULAS`.

    Parameters
    ----------
    weight_kg, height_cm
        Scalars or numpy arrays.
    male
        1/``True`` for men, 0/``False`` for women (scalar or array).

    Returns
    -------
    float or numpy.ndarray
    """
    w = np.asarray(weight_kg, dtype=float)
    r = w / np.asarray(height_cm, dtype=float)
    return _where_male(male, 1.1 * w - 128.0 * r * r, 1.07 * w - 148.0 * r * r)


def ffm_janmahasatian(weight_kg: Any, height_cm: Any, male: Any) -> Any:
    """Fat-free mass by Janmahasatian 2005 (Clin Pharmacokinet 44:1051), kg. **UNVERIFIED** (general
    knowledge, not in models.md).

    Men ``9270*W / (6680 + 216*BMI)``; women ``9270*W / (8780 + 244*BMI)``.

    Parameters
    ----------
    weight_kg, height_cm
        Scalars or numpy arrays.
    male
        1/``True`` for men, 0/``False`` for women.

    Returns
    -------
    float or numpy.ndarray
    """
    w = np.asarray(weight_kg, dtype=float)
    b = np.asarray(bmi(weight_kg, height_cm), dtype=float)
    return _where_male(male, 9270.0 * w / (6680.0 + 216.0 * b), 9270.0 * w / (8780.0 + 244.0 * b))


def ibw_devine(height_cm: Any, male: Any) -> Any:
    """Ideal body weight by Devine 1974 (Drug Intell Clin Pharm 8:650), kg. **UNVERIFIED** (general
    knowledge, not in models.md).

    Men ``50 + 2.3*(height in inches - 60)``; women ``45.5 + 2.3*(height in inches - 60)``; 1 inch = 2.54 cm.

    Parameters
    ----------
    height_cm
        Scalar or numpy array.
    male
        1/``True`` for men, 0/``False`` for women.

    Returns
    -------
    float or numpy.ndarray
    """
    over = np.asarray(height_cm, dtype=float) / 2.54 - 60.0
    return _where_male(male, 50.0 + 2.3 * over, 45.5 + 2.3 * over)


def crcl_cockcroft_gault(age_y: Any, weight_kg: Any, scr_mg_dl: Any, male: Any) -> Any:
    """Creatinine clearance by Cockcroft & Gault 1976 (Nephron 16:31), mL/min, with total body weight.
    **UNVERIFIED** (general knowledge, not in models.md).

    ``(140 - age) * WT / (72 * SCr)``, times 0.85 for women.

    Parameters
    ----------
    age_y
        Age, years.
    weight_kg
        Total body weight, kg.
    scr_mg_dl
        Serum creatinine, mg/dL (> 0).
    male
        1/``True`` for men, 0/``False`` for women.

    Returns
    -------
    float or numpy.ndarray
    """
    base = (140.0 - np.asarray(age_y, dtype=float)) * np.asarray(weight_kg, dtype=float)
    base = base / (72.0 * np.asarray(scr_mg_dl, dtype=float))
    return _where_male(male, base, 0.85 * base)


# --------------------------------------------------------------------------------------------------------
# Patient
# --------------------------------------------------------------------------------------------------------

#: Accepted numeric ranges: field -> (low, high, low is exclusive, unit, why).
_RANGES: Mapping[str, tuple[float, float, bool, str, str]] = MappingProxyType(
    {
        "age_y": (18.0, 110.0, False, "years", "adults only"),
        "weight_kg": (25.0, 350.0, False, "kg", "plausible adult weight"),
        "height_cm": (120.0, 230.0, False, "cm", "plausible adult height"),
        "scr_mg_dl": (0.0, 20.0, True, "mg/dL", "serum creatinine"),
        "crcl_ml_min": (0.0, 400.0, True, "mL/min", "creatinine clearance"),
    }
)
#: Accepted BMI range (kg/m2). Above about 72 kg/m2 the James LBM of a woman becomes negative.
_BMI_RANGE = (12.0, 70.0)

#: Field names accepted by :class:`Patient` and :func:`load_patient`.
PATIENT_FIELDS: tuple[str, ...] = (
    "id",
    "age_y",
    "sex",
    "weight_kg",
    "height_cm",
    "scr_mg_dl",
    "crcl_ml_min",
    "hepatic",
    "opioid_tolerant",
    "osa",
    "surgery",
    "genotypes",
)


def _range_text(name: str) -> str:
    lo, hi, lo_open, unit, _ = _RANGES[name]
    left = f"> {lo:g}" if lo_open else f"{lo:g}"
    return f"{left} to {hi:g} {unit}"


def _check_number(name: str, value: Any) -> float:
    lo, hi, lo_open, unit, why = _RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PatientError(
            f"Patient field {name!r} = {value!r} is not a number; expected a number in the range "
            f"{_range_text(name)} ({why})."
        )
    v = float(value)
    bad_low = v <= lo if lo_open else v < lo
    if not math.isfinite(v) or bad_low or v > hi:
        raise PatientError(
            f"Patient field {name!r} = {value!r} {unit} is outside the accepted range {_range_text(name)} ({why})."
        )
    return v


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    s = value.strip().lower() if isinstance(value, str) else None
    if s not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise PatientError(f"Patient field {name!r} = {value!r} is not accepted; use one of {allowed}.")
    return s


def _check_flag(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value) in (0.0, 1.0):
        return bool(value)
    raise PatientError(f"Patient field {name!r} = {value!r} is not accepted; use true/false (or 1/0).")


def _parse_all(genotypes: tuple[str, ...]) -> dict[str, Genotype]:
    out: dict[str, Genotype] = {}
    for text in genotypes:
        if not isinstance(text, str):
            raise PatientError(
                f"Patient field 'genotypes' contains {text!r}, which is not a string; expected strings such as "
                "'CYP2D6 *1/*4', 'CYP2C9 *1/*3', 'OPRM1 A118G AG'."
            )
        try:
            g = parse_genotype(text)
        except GenotypeError as exc:
            raise PatientGenotypeError(f"Patient field 'genotypes' = {text!r}: {exc}") from exc
        if g.gene in out:
            raise PatientError(
                f"Patient field 'genotypes' lists gene {g.gene} twice ({out[g.gene].text!r} and {text!r}); "
                "give one genotype per gene."
            )
        out[g.gene] = g
    return out


@dataclass(frozen=True)
class Patient:
    """One adult surgical patient.

    Parameters
    ----------
    age_y
        Age, years (18 to 110).
    sex
        ``"female"`` or ``"male"`` (case-insensitive; stored lower-case).
    weight_kg
        Total body weight, kg (25 to 350). Together with ``height_cm`` the BMI must lie in 12 to 70 kg/m2.
    height_cm
        Height, cm (120 to 230).
    scr_mg_dl
        Serum creatinine, mg/dL (> 0 to 20), or ``None``.
    crcl_ml_min
        Creatinine clearance, mL/min (> 0 to 400), or ``None``. When given it overrides the Cockcroft-Gault
        value computed from ``scr_mg_dl`` (e.g. a measured clearance).
    hepatic
        Hepatic impairment: ``"none"``, ``"mild"``, ``"moderate"`` or ``"severe"``.
    opioid_tolerant
        Chronic opioid use (opioid-tolerant).
    osa
        Obstructive sleep apnea or cardiopulmonary disease.
    surgery
        ``"open"`` or ``"mis"`` (minimally invasive).
    genotypes
        Genotype strings for :func:`pkpd.genetics.parse_genotype`, at most one per gene, e.g.
        ``("CYP2D6 *1/*4", "CYP2C9 *1/*3", "OPRM1 A118G AG")``. A list is converted to a tuple.
    id
        Patient identifier (integer or non-empty string), or ``None``.

    Raises
    ------
    PatientError
        A value outside its accepted range, an unknown category, a duplicate gene, a BMI outside 12-70
        kg/m2. Each message names the field, the value and the accepted range with units.
    PatientGenotypeError
        An invalid genotype string (subclass of both :class:`PatientError` and
        :class:`~pkpd.genetics.GenotypeError`; the genetics message is included).
    """

    age_y: float
    sex: str
    weight_kg: float
    height_cm: float
    scr_mg_dl: float | None = None
    crcl_ml_min: float | None = None
    hepatic: str = "none"
    opioid_tolerant: bool = False
    osa: bool = False
    surgery: str = "open"
    genotypes: tuple[str, ...] = ()
    id: int | str | None = None
    _parsed: Mapping[str, Genotype] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("age_y", "weight_kg", "height_cm"):
            set_(self, name, _check_number(name, getattr(self, name)))
        for name in ("scr_mg_dl", "crcl_ml_min"):
            if getattr(self, name) is not None:
                set_(self, name, _check_number(name, getattr(self, name)))
        set_(self, "sex", _check_choice("sex", self.sex, _SEXES))
        set_(self, "hepatic", _check_choice("hepatic", self.hepatic, tuple(HEPATIC_LEVELS)))
        set_(self, "surgery", _check_choice("surgery", self.surgery, _SURGERIES))
        set_(self, "opioid_tolerant", _check_flag("opioid_tolerant", self.opioid_tolerant))
        set_(self, "osa", _check_flag("osa", self.osa))
        b = bmi(self.weight_kg, self.height_cm)
        if not _BMI_RANGE[0] <= b <= _BMI_RANGE[1]:
            raise PatientError(
                f"Patient fields 'weight_kg' = {self.weight_kg:g} kg and 'height_cm' = {self.height_cm:g} cm give "
                f"BMI {b:.1f} kg/m2, outside the accepted range {_BMI_RANGE[0]:g} to {_BMI_RANGE[1]:g} kg/m2 "
                "(implausible; the James lean-body-mass formula fails there)."
            )
        gts = self.genotypes
        if isinstance(gts, str):
            raise PatientError(
                f"Patient field 'genotypes' = {gts!r} is a single string; give a list of genotype strings, "
                f"e.g. [{gts!r}]."
            )
        try:
            gts = tuple(g.strip() if isinstance(g, str) else g for g in gts)
        except TypeError:
            raise PatientError(
                f"Patient field 'genotypes' = {gts!r} is not a list of genotype strings such as 'CYP2D6 *1/*4'."
            ) from None
        set_(self, "genotypes", gts)
        set_(self, "_parsed", MappingProxyType(_parse_all(gts)))
        pid = self.id
        if isinstance(pid, (np.integer,)):
            pid = int(pid)
            set_(self, "id", pid)
        if pid is not None and (
            isinstance(pid, bool) or not isinstance(pid, (int, str)) or (isinstance(pid, str) and not pid.strip())
        ):
            raise PatientError(f"Patient field 'id' = {pid!r} is not accepted; use an integer or a non-empty string.")

    # ---------------------------------------------------------------- genetics

    def _gene(self, gene: str) -> str:
        g = str(gene).strip().upper()
        if g not in KNOWN_GENES:
            raise PatientError(f"Unknown gene {gene!r}; known genes: {', '.join(KNOWN_GENES)}.")
        return g

    def genotype_known(self, gene: str) -> bool:
        """Whether ``gene`` (``"CYP2D6"``, ``"CYP2C9"``, ``"OPRM1"``) was genotyped.

        Raises
        ------
        PatientError
            For a gene unknown to :mod:`pkpd.genetics`.
        """
        return self._gene(gene) in self._parsed

    def genotype(self, gene: str) -> Genotype | None:
        """The parsed genotype of ``gene``, or ``None`` when it was not genotyped."""
        return self._parsed.get(self._gene(gene))

    def phenotypes(self) -> dict[str, str]:
        """Phenotype label per known gene (:func:`pkpd.genetics.phenotype`); ``"unknown"`` when not genotyped.

        Returns
        -------
        dict
            ``{"CYP2D6": "intermediate", "CYP2C9": "normal", "OPRM1": "A/A"}`` for example.
        """
        return {g: (phenotype(self._parsed[g]).label if g in self._parsed else "unknown") for g in KNOWN_GENES}

    # ---------------------------------------------------------------- covariates

    @property
    def male(self) -> bool:
        """``True`` for a man."""
        return self.sex == "male"

    @property
    def crcl(self) -> float | None:
        """Creatinine clearance (mL/min): ``crcl_ml_min`` if given, else Cockcroft-Gault from ``scr_mg_dl``,
        else ``None``."""
        if self.crcl_ml_min is not None:
            return self.crcl_ml_min
        if self.scr_mg_dl is not None:
            return crcl_cockcroft_gault(self.age_y, self.weight_kg, self.scr_mg_dl, self.male)
        return None

    def covariates(self) -> dict[str, float]:
        """Dataset covariate columns (see the module docstring and :data:`COVARIATE_FORMULAS`).

        ``SCR`` is present only when ``scr_mg_dl`` is given, ``CRCL`` only when ``scr_mg_dl`` or
        ``crcl_ml_min`` is given. Genotype covariates of an ungenotyped gene take
        :data:`TYPICAL_GENOTYPE_VALUES`.

        Returns
        -------
        dict
            Column name -> float, in :data:`COVARIATE_COLUMNS` order.
        """
        male = self.male
        w, h = self.weight_kg, self.height_cm
        cov: dict[str, float] = {
            "AGE": self.age_y,
            "MALE": 1.0 if male else 0.0,
            "WT": w,
            "HT": h,
            "BMI": bmi(w, h),
            "LBM": lbm_james(w, h, male),
            "FFM": ffm_janmahasatian(w, h, male),
            "IBW": ibw_devine(h, male),
        }
        if self.scr_mg_dl is not None:
            cov["SCR"] = self.scr_mg_dl
        crcl = self.crcl
        if crcl is not None:
            cov["CRCL"] = float(crcl)
        cov["HEPATIC"] = float(HEPATIC_LEVELS[self.hepatic])
        cov["OPIOID_TOL"] = 1.0 if self.opioid_tolerant else 0.0
        cov["OSA"] = 1.0 if self.osa else 0.0
        cov["OPEN_SURGERY"] = 1.0 if self.surgery == "open" else 0.0
        cov.update(TYPICAL_GENOTYPE_VALUES)
        g2d6 = self._parsed.get("CYP2D6")
        if g2d6 is not None:
            cov["CYP2D6_AS"] = float(activity_score(g2d6))
            cov["CYP2D6_10_10"] = 1.0 if g2d6.alleles == ("*10", "*10") else 0.0
        g2c9 = self._parsed.get("CYP2C9")
        if g2c9 is not None:
            cov["CYP2C9_AS"] = float(activity_score(g2c9))
        oprm1 = self._parsed.get("OPRM1")
        if oprm1 is not None:
            cov["OPRM1_G"] = float(sum(a == "G" for a in oprm1.alleles))
        return {k: cov[k] for k in COVARIATE_COLUMNS if k in cov}

    # ---------------------------------------------------------------- conversion

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``None`` values left out), accepted by :func:`load_patient`."""
        out: dict[str, Any] = {}
        for name in PATIENT_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            out[name] = list(v) if name == "genotypes" else v
        return out

    def to_toml(self) -> str:
        """The patient as TOML text readable by :func:`load_patient`."""
        lines = []
        for k, v in self.to_dict().items():
            if isinstance(v, bool):
                txt = "true" if v else "false"
            elif isinstance(v, (int, float)):
                txt = repr(v)
            elif isinstance(v, str):
                txt = json.dumps(v)
            else:
                txt = "[" + ", ".join(json.dumps(s) for s in v) + "]"
            lines.append(f"{k} = {txt}")
        return "\n".join(lines) + "\n"

    def to_row(self) -> dict[str, Any]:
        """One population-frame row: ``ID``, ``SEX``, the covariates, genotype strings (``None`` when not
        genotyped) and phenotype labels (see :func:`spine72_population`)."""
        row: dict[str, Any] = {"ID": self.id, "SEX": self.sex}
        row.update(self.covariates())
        for gene in GENOTYPE_COLUMNS:
            g = self._parsed.get(gene)
            row[gene] = g.text if g is not None else None
        ph = self.phenotypes()
        for col in PHENOTYPE_COLUMNS:
            row[col] = ph[col.removesuffix("_PHENO")]
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | pd.Series) -> Patient:
        """Build a patient from one row of a population frame (:func:`spine72_population`) or any mapping
        with the same column names.

        Uses ``ID``, ``AGE``, ``SEX`` (else ``MALE``), ``WT``, ``HT``, ``SCR``, ``CRCL``, ``HEPATIC``,
        ``OPIOID_TOL``, ``OSA``, ``OPEN_SURGERY`` and the genotype columns ``CYP2D6``, ``CYP2C9``, ``OPRM1``
        (full strings such as ``"CYP2D6 *1/*4"``, or just ``"*1/*4"``). Missing or NaN optional columns mean
        "not given". ``CRCL`` is taken as an override only when ``SCR`` is absent or when it differs from the
        Cockcroft-Gault value. Derived columns (BMI, LBM, activity scores...) are recomputed, not read.

        Raises
        ------
        PatientError
            A required column (``AGE``, ``WT``, ``HT`` and ``SEX`` or ``MALE``) is missing, or a value is
            invalid.
        """

        def get(key: str) -> Any:
            v = row.get(key) if hasattr(row, "get") else None
            if v is None:
                return None
            if isinstance(v, str):
                return v if v.strip() else None
            try:
                if pd.isna(v):
                    return None
            except (TypeError, ValueError):
                pass
            return v.item() if isinstance(v, np.generic) else v

        missing = [k for k in ("AGE", "WT", "HT") if get(k) is None]
        if get("SEX") is None and get("MALE") is None:
            missing.append("SEX or MALE")
        if missing:
            raise PatientError(f"Row {dict(row)!r} lacks required column(s): {', '.join(missing)}.")
        sex = get("SEX")
        if sex is None:
            sex = "male" if _check_flag("MALE", get("MALE")) else "female"
        hep = get("HEPATIC")
        hepatic = "none"
        if hep is not None:
            codes = {float(v): k for k, v in HEPATIC_LEVELS.items()}
            if isinstance(hep, bool) or not isinstance(hep, (int, float)) or float(hep) not in codes:
                raise PatientError(f"Column 'HEPATIC' = {hep!r} is not accepted; use 0, 1, 2 or 3.")
            hepatic = codes[float(hep)]
        open_s = get("OPEN_SURGERY")
        surgery = "open" if open_s is None or _check_flag("OPEN_SURGERY", open_s) else "mis"
        gts = []
        for gene in GENOTYPE_COLUMNS:
            txt = get(gene)
            if txt is None:
                continue
            txt = str(txt).strip()
            if not txt.upper().startswith(gene):
                txt = f"{gene} {txt}"
            gts.append(txt)
        age, wt, scr, crcl = get("AGE"), get("WT"), get("SCR"), get("CRCL")
        male = str(sex).strip().lower() == "male"
        if scr is not None and crcl is not None:
            try:
                cg = crcl_cockcroft_gault(float(age), float(wt), float(scr), male)
                if math.isclose(float(crcl), cg, rel_tol=1e-9, abs_tol=1e-9):
                    crcl = None
            except (TypeError, ValueError, ZeroDivisionError):
                pass
        return cls(
            age_y=age,
            sex=sex,
            weight_kg=wt,
            height_cm=get("HT"),
            scr_mg_dl=scr,
            crcl_ml_min=crcl,
            hepatic=hepatic,
            opioid_tolerant=bool(get("OPIOID_TOL") is not None and _check_flag("OPIOID_TOL", get("OPIOID_TOL"))),
            osa=bool(get("OSA") is not None and _check_flag("OSA", get("OSA"))),
            surgery=surgery,
            genotypes=tuple(gts),
            id=get("ID"),
        )


# --------------------------------------------------------------------------------------------------------
# Covariate requirements, TOML, frames
# --------------------------------------------------------------------------------------------------------

_HOW_TO_GIVE: Mapping[str, str] = MappingProxyType(
    {
        "AGE": "give age_y",
        "MALE": "give sex",
        "WT": "give weight_kg",
        "HT": "give height_cm",
        "BMI": "give weight_kg and height_cm",
        "LBM": "give weight_kg, height_cm and sex",
        "FFM": "give weight_kg, height_cm and sex",
        "IBW": "give height_cm and sex",
        "SCR": "give scr_mg_dl",
        "CRCL": "give scr_mg_dl or crcl_ml_min",
        "HEPATIC": "give hepatic",
        "OPIOID_TOL": "give opioid_tolerant",
        "OSA": "give osa",
        "OPEN_SURGERY": "give surgery",
        "CYP2D6_AS": "give a CYP2D6 genotype, e.g. 'CYP2D6 *1/*4'",
        "CYP2D6_10_10": "give a CYP2D6 genotype, e.g. 'CYP2D6 *1/*4'",
        "CYP2C9_AS": "give a CYP2C9 genotype, e.g. 'CYP2C9 *1/*3'",
        "OPRM1_G": "give an OPRM1 genotype, e.g. 'OPRM1 A118G AG'",
    }
)


def _is_missing_value(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def require_covariates(cov: Mapping[str, Any] | pd.DataFrame, names: Iterable[str], who: str) -> None:
    """Check that every covariate in ``names`` is present (and not NaN) in ``cov``.

    Parameters
    ----------
    cov
        A covariate mapping (e.g. :meth:`Patient.covariates`) or a dataset :class:`pandas.DataFrame` (a
        column with any NaN counts as missing; the message names the IDs concerned).
    names
        Column names needed.
    who
        Who needs them (a drug or model name), used in the message.

    Raises
    ------
    PatientError
        Listing every missing covariate and how to supply it, e.g.
        ``"pregabalin needs CRCL: give scr_mg_dl or crcl_ml_min"``.
    """
    problems: list[str] = []
    is_frame = isinstance(cov, pd.DataFrame)
    for name in dict.fromkeys(names):
        how = _HOW_TO_GIVE.get(name, f"add column {name}")
        if is_frame:
            if name not in cov.columns:
                problems.append(f"{name}: {how}")
                continue
            bad = cov[name].isna().to_numpy()
            if bad.any():
                ids = cov.loc[bad, "ID"].unique().tolist() if "ID" in cov.columns else []
                shown = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
                where = f" (NaN for ID {shown})" if ids else " (NaN in some rows)"
                problems.append(f"{name}{where}: {how}")
        elif name not in cov or _is_missing_value(cov[name]):
            problems.append(f"{name}: {how}")
    if not problems:
        return
    if len(problems) == 1:
        raise PatientError(f"{who} needs {problems[0]}")
    raise PatientError(f"{who} needs {len(problems)} missing covariates: " + "; ".join(problems))


def load_patient(path_or_mapping: str | Path | Mapping[str, Any]) -> Patient:
    """Read a patient from a TOML file or a mapping with the :class:`Patient` field names.

    Example TOML::

        id = "spine-001"
        age_y = 62
        sex = "female"
        weight_kg = 78
        height_cm = 165
        scr_mg_dl = 0.9
        surgery = "open"
        genotypes = ["CYP2D6 *1/*4", "CYP2C9 *1/*1", "OPRM1 A118G AA"]

    A top-level ``[patient]`` table is also accepted (then it must be the only key).

    Raises
    ------
    PatientError
        Unreadable file, TOML syntax error, unknown keys (the message lists the allowed keys), missing
        required keys, or any invalid value (see :class:`Patient`).
    """
    where = "mapping"
    if isinstance(path_or_mapping, Mapping):
        data = dict(path_or_mapping)
    else:
        path = Path(path_or_mapping)
        where = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PatientError(f"Cannot read patient file {where}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise PatientError(f"Patient file {where} is not valid TOML: {exc}") from exc
    if set(data) == {"patient"} and isinstance(data["patient"], Mapping):
        data = dict(data["patient"])
    unknown = sorted(set(data) - set(PATIENT_FIELDS))
    if unknown:
        raise PatientError(
            f"Patient {where}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(PATIENT_FIELDS)}."
        )
    required = [f.name for f in dataclasses.fields(Patient) if f.init and f.default is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise PatientError(f"Patient {where}: missing required key(s) {', '.join(missing)}.")
    if "genotypes" in data and isinstance(data["genotypes"], list):
        data["genotypes"] = tuple(data["genotypes"])
    return Patient(**data)


def patients_from_frame(df: pd.DataFrame) -> list[Patient]:
    """One :class:`Patient` per row of a population frame (see :meth:`Patient.from_row`).

    A NONMEM dataset with several records per ID is reduced to its first record per ID.
    """
    if "ID" in df.columns and df["ID"].duplicated().any():
        df = df.drop_duplicates("ID", keep="first")
    return [Patient.from_row(r) for r in df.to_dict(orient="records")]


def patients_to_frame(patients: Iterable[Patient]) -> pd.DataFrame:
    """A population frame (columns as :func:`spine72_population`) from patients (:meth:`Patient.to_row`).
    Columns that no patient has (e.g. ``SCR``) are left out; a patient without them gets NaN."""
    rows = [p.to_row() for p in patients]
    if not rows:
        return pd.DataFrame(columns=["ID", "SEX", *COVARIATE_COLUMNS, *GENOTYPE_COLUMNS, *PHENOTYPE_COLUMNS])
    df = pd.DataFrame(rows)
    order = ["ID", "SEX", *COVARIATE_COLUMNS, *GENOTYPE_COLUMNS, *PHENOTYPE_COLUMNS]
    return df[[c for c in order if c in df.columns]]


# --------------------------------------------------------------------------------------------------------
# SPINE-72 population
# --------------------------------------------------------------------------------------------------------

_CLIN32 = "clinical.md 3.2 (SPINE-72 benchmark population table)"
_ASSUME = "assumption of this module (general knowledge; not in models.md or clinical.md)"


def _src(detail: str, unverified: bool = False, citation: str = _CLIN32) -> Source:
    return Source(citation, detail, unverified=unverified)


@dataclass(frozen=True)
class SpecParam:
    """One distribution parameter of :class:`PopulationSpec`.

    Attributes
    ----------
    value
        The parameter (a number, a tuple, or a mapping; see the field's description in
        :class:`PopulationSpec`).
    source
        Where it comes from.
    unverified
        ``True`` when the reference marks it **UNVERIFIED** or it is an assumption of this module.
    note
        Caveats, derivations.
    """

    value: Any
    source: Source
    unverified: bool = False
    note: str = ""


def _sp(value: Any, detail: str, unverified: bool = False, note: str = "", citation: str = _CLIN32) -> SpecParam:
    return SpecParam(value, _src(detail, unverified, citation), unverified, note)


_CYP2D6_PHENOS = ("poor", "intermediate", "normal", "ultrarapid")
_CYP2C9_CLASSES = ("AS2", "AS1.5", "AS1", "AS<=0.5")


#: Default SPINE-72 distribution parameters (see :class:`PopulationSpec`).
_SPEC_DEFAULTS: Mapping[str, SpecParam] = MappingProxyType(
    {
        "age": _sp(
            (57.0, 12.0, 18.0, 90.0),
            "Age ~ N(57, 12) (Iyer mean 57.1)",
            note="clipping to 18-90 y is an assumption of this module (adult elective surgery); it moves the mean "
            "by about 0.01 y",
        ),
        "p_female": _sp(0.5, "50% female"),
        "weight": _sp((85.0, 17.0), "weight 85 +- 17 kg (UNVERIFIED in clinical.md)", unverified=True),
        "weight_sex_difference": _sp(
            14.0,
            "men about 14 kg heavier than women (adult US/European surveys, general knowledge)",
            unverified=True,
            citation=_ASSUME,
        ),
        "weight_height_corr": _sp(
            0.4,
            "within-sex correlation of weight and height about 0.4 (general knowledge)",
            True,
            citation=_ASSUME,
        ),
        "weight_clip": _sp((40.0, 200.0), "plausible adult surgical weights", True, citation=_ASSUME),
        "bmi_clip": _sp((15.0, 60.0), "plausible BMI range", True, citation=_ASSUME),
        "height_female": _sp(
            (162.0, 7.0, 140.0, 195.0), "adult women ~ N(162, 7) cm (general knowledge)", True, citation=_ASSUME
        ),
        "height_male": _sp(
            (176.0, 7.0, 150.0, 210.0), "adult men ~ N(176, 7) cm (general knowledge)", True, citation=_ASSUME
        ),
        "scr_female": _sp(
            (0.75, 0.22, 0.4, 3.0),
            "women: log-normal, median 0.75 mg/dL, log-SD 0.22 (general knowledge; reference range ~0.5-1.1)",
            True,
            citation=_ASSUME,
        ),
        "scr_male": _sp(
            (0.95, 0.22, 0.5, 3.0),
            "men: log-normal, median 0.95 mg/dL, log-SD 0.22 (general knowledge; reference range ~0.7-1.3)",
            True,
            citation=_ASSUME,
        ),
        "hepatic": _sp(
            (1.0, 0.0, 0.0, 0.0),
            "no hepatic impairment (clinical.md 3.2 does not specify any)",
            True,
            citation=_ASSUME,
        ),
        "p_opioid_tolerant": _sp(0.25, "25% opioid-tolerant (UNVERIFIED prevalence)", unverified=True),
        "p_osa": _sp(0.20, "20% with OSA or cardiopulmonary disease"),
        "p_open_surgery": _sp(
            1.0,
            "Surgery: 1-2-level posterior lumbar fusion",
            note="treated as open surgery for every patient (OPEN_SURGERY = 1); a minimally invasive arm needs a "
            "user override",
        ),
        "cyp2d6_phenotypes": _sp(
            MappingProxyType({"poor": 0.07, "intermediate": 0.12, "normal": 0.79, "ultrarapid": 0.02}),
            "CYP2D6 PM 7%, IM 12%, NM 79%, UM 2%",
        ),
        "cyp2d6_diplotypes": _sp(
            MappingProxyType(
                {
                    "poor": (("*4/*4", 0.70), ("*4/*5", 0.20), ("*3/*4", 0.10)),
                    "intermediate": (
                        ("*1/*4", 0.55),
                        ("*1/*5", 0.15),
                        ("*4/*41", 0.15),
                        ("*4/*10", 0.05),
                        ("*41/*41", 0.05),
                        ("*10/*10", 0.05),
                    ),
                    "normal": (
                        ("*1/*1", 0.40),
                        ("*1/*2", 0.25),
                        ("*2/*2", 0.10),
                        ("*1/*41", 0.12),
                        ("*2/*41", 0.05),
                        ("*1/*9", 0.04),
                        ("*1/*10", 0.04),
                    ),
                    "ultrarapid": (("*1/*1x2", 0.60), ("*1/*2x2", 0.40)),
                }
            ),
            "diplotype mix within each CYP2D6 phenotype (European-like; general knowledge)",
            True,
            citation=_ASSUME,
            note="only the phenotype frequencies are in clinical.md; the split sets the activity-score "
            "distribution (e.g. IM AS 1 vs 0.25-0.5) and the *10/*10 share (0.6% overall)",
        ),
        "cyp2c9_classes": _sp(
            MappingProxyType({"AS2": 0.65, "AS1.5": 0.20, "AS1": 0.13, "AS<=0.5": 0.02}),
            "CYP2C9 activity score 2 / 1.5 / 1 / <= 0.5 at about 65/20/13/2% (UNVERIFIED)",
            unverified=True,
        ),
        "cyp2c9_diplotypes": _sp(
            MappingProxyType(
                {
                    "AS2": (("*1/*1", 1.0),),
                    "AS1.5": (("*1/*2", 1.0),),
                    "AS1": (("*1/*3", 0.85), ("*2/*2", 0.15)),
                    "AS<=0.5": (("*2/*3", 0.75), ("*3/*3", 0.25)),
                }
            ),
            "diplotype mix within each CYP2C9 activity-score class (European-like; general knowledge)",
            True,
            citation=_ASSUME,
            note="*3/*3 share 0.25 x 2% = 0.5% overall, matching clinical.md 3.2 / models.md D2 (Kirchheiner "
            "2003: about 0.5% of Caucasians); CYP2C9 allele values of *2 and *3 are UNVERIFIED in pkpd.genetics",
        ),
        "p_oprm1_carrier": _sp(
            0.15,
            "OPRM1 A118G carriers 15% (UNVERIFIED)",
            unverified=True,
            note="GG vs AG split by Hardy-Weinberg equilibrium (an assumption): q = 1 - sqrt(1 - 0.15) = 0.078, "
            "GG = q^2 = 0.61%, AG = 14.39%",
        ),
    }
)


@dataclass(frozen=True)
class PopulationSpec:
    """Every distribution parameter of the SPINE-72 virtual population, with source and ``unverified`` flag.

    Each field is a :class:`SpecParam`; change one with :meth:`with_values` (which marks the new value as a
    user override) or :func:`dataclasses.replace`. :meth:`describe` tabulates them all.

    Attributes
    ----------
    age
        ``(mean, sd, low, high)`` years: normal, clipped to ``[low, high]``.
    p_female
        Probability of a woman.
    weight
        ``(mean, sd)`` kg of the whole population (both sexes together).
    weight_sex_difference
        Mean weight of men minus women, kg. The sex means are ``mean -/+ difference/2`` and the within-sex SD
        ``sqrt(sd**2 - difference**2/4)``, so that (with equal sexes) the population mean and SD are
        ``weight`` exactly.
    weight_height_corr
        Correlation of weight with the within-sex height z-score.
    weight_clip
        ``(low, high)`` kg.
    bmi_clip
        ``(low, high)`` kg/m2: weight is then clipped so that the BMI lies in this range.
    height_female, height_male
        ``(mean, sd, low, high)`` cm: normal, clipped.
    scr_female, scr_male
        ``(median, log_sd, low, high)`` mg/dL: log-normal, clipped.
    hepatic
        Probabilities of ``("none", "mild", "moderate", "severe")``.
    p_opioid_tolerant, p_osa, p_open_surgery
        Probabilities.
    cyp2d6_phenotypes
        ``{phenotype: probability}`` for poor, intermediate, normal, ultrarapid.
    cyp2d6_diplotypes
        ``{phenotype: ((diplotype, weight), ...)}``: the diplotypes (``"*1/*4"``) that realise each
        phenotype and their relative weights within it.
    cyp2c9_classes
        ``{class: probability}`` for activity-score classes ``AS2``, ``AS1.5``, ``AS1``, ``AS<=0.5``.
    cyp2c9_diplotypes
        ``{class: ((diplotype, weight), ...)}``.
    p_oprm1_carrier
        Probability of at least one 118G allele; GG versus AG by Hardy-Weinberg (see :meth:`oprm1_probs`).

    Raises
    ------
    PatientError
        Malformed values: probabilities outside [0, 1] or not summing to 1, SD <= 0, empty clip ranges, a
        diplotype that does not parse or does not realise the phenotype / activity-score class it is listed
        under (checked with :mod:`pkpd.genetics`).
    """

    age: SpecParam = _SPEC_DEFAULTS["age"]
    p_female: SpecParam = _SPEC_DEFAULTS["p_female"]
    weight: SpecParam = _SPEC_DEFAULTS["weight"]
    weight_sex_difference: SpecParam = _SPEC_DEFAULTS["weight_sex_difference"]
    weight_height_corr: SpecParam = _SPEC_DEFAULTS["weight_height_corr"]
    weight_clip: SpecParam = _SPEC_DEFAULTS["weight_clip"]
    bmi_clip: SpecParam = _SPEC_DEFAULTS["bmi_clip"]
    height_female: SpecParam = _SPEC_DEFAULTS["height_female"]
    height_male: SpecParam = _SPEC_DEFAULTS["height_male"]
    scr_female: SpecParam = _SPEC_DEFAULTS["scr_female"]
    scr_male: SpecParam = _SPEC_DEFAULTS["scr_male"]
    hepatic: SpecParam = _SPEC_DEFAULTS["hepatic"]
    p_opioid_tolerant: SpecParam = _SPEC_DEFAULTS["p_opioid_tolerant"]
    p_osa: SpecParam = _SPEC_DEFAULTS["p_osa"]
    p_open_surgery: SpecParam = _SPEC_DEFAULTS["p_open_surgery"]
    cyp2d6_phenotypes: SpecParam = _SPEC_DEFAULTS["cyp2d6_phenotypes"]
    cyp2d6_diplotypes: SpecParam = _SPEC_DEFAULTS["cyp2d6_diplotypes"]
    cyp2c9_classes: SpecParam = _SPEC_DEFAULTS["cyp2c9_classes"]
    cyp2c9_diplotypes: SpecParam = _SPEC_DEFAULTS["cyp2c9_diplotypes"]
    p_oprm1_carrier: SpecParam = _SPEC_DEFAULTS["p_oprm1_carrier"]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not isinstance(getattr(self, f.name), SpecParam):
                raise PatientError(
                    f"PopulationSpec field {f.name!r} must be a SpecParam (value, source, unverified, note); "
                    f"use PopulationSpec().with_values({f.name}=...) to change a value."
                )
        self._check()

    # ---------------------------------------------------------------- validation

    def _check(self) -> None:
        def prob(name: str, p: Any) -> float:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
                raise PatientError(f"PopulationSpec {name} = {p!r} must be a probability in [0, 1].")
            return float(p)

        def probs(name: str, ps: Mapping[str, Any], keys: Sequence[str]) -> None:
            if set(ps) != set(keys):
                raise PatientError(
                    f"PopulationSpec {name} must have exactly the keys {', '.join(keys)}; got "
                    f"{', '.join(map(str, ps))}."
                )
            total = sum(prob(f"{name}[{k}]", v) for k, v in ps.items())
            if abs(total - 1.0) > 1e-9:
                raise PatientError(f"PopulationSpec {name} probabilities sum to {total:g}, not 1.")

        def normal(name: str, v: Any, n: int) -> None:
            if len(v) != n or v[1] <= 0 or (n == 4 and not v[2] < v[3]):
                raise PatientError(
                    f"PopulationSpec {name} = {v!r} must be (center, sd > 0"
                    + (", low, high) with low < high." if n == 4 else ").")
                )

        normal("age", self.age.value, 4)
        lo_age, hi_age = self.age.value[2:]
        if lo_age < _RANGES["age_y"][0] or hi_age > _RANGES["age_y"][1]:
            raise PatientError(
                f"PopulationSpec age clip range {lo_age:g}-{hi_age:g} years must lie within {_range_text('age_y')}."
            )
        normal("weight", self.weight.value, 2)
        normal("height_female", self.height_female.value, 4)
        normal("height_male", self.height_male.value, 4)
        normal("scr_female", self.scr_female.value, 4)
        normal("scr_male", self.scr_male.value, 4)
        for name in ("height_female", "height_male"):
            lo, hi = getattr(self, name).value[2:]
            if lo < _RANGES["height_cm"][0] or hi > _RANGES["height_cm"][1]:
                raise PatientError(
                    f"PopulationSpec {name} clip range {lo:g}-{hi:g} cm must lie within {_range_text('height_cm')}."
                )
        for name in ("scr_female", "scr_male"):
            lo, hi = getattr(self, name).value[2:]
            if lo <= 0 or hi > _RANGES["scr_mg_dl"][1]:
                raise PatientError(
                    f"PopulationSpec {name} clip range {lo:g}-{hi:g} mg/dL must lie within {_range_text('scr_mg_dl')}."
                )
        wlo, whi = self.weight_clip.value
        if not (_RANGES["weight_kg"][0] <= wlo < whi <= _RANGES["weight_kg"][1]):
            raise PatientError(
                f"PopulationSpec weight_clip {wlo:g}-{whi:g} kg must lie within {_range_text('weight_kg')}."
            )
        blo, bhi = self.bmi_clip.value
        if not (_BMI_RANGE[0] <= blo < bhi <= _BMI_RANGE[1]):
            raise PatientError(
                f"PopulationSpec bmi_clip {blo:g}-{bhi:g} kg/m2 must lie within "
                f"{_BMI_RANGE[0]:g} to {_BMI_RANGE[1]:g} kg/m2."
            )
        _, sd_w = self.weight.value
        d = float(self.weight_sex_difference.value)
        if not 0 <= d / 2 < sd_w:
            raise PatientError(
                f"PopulationSpec weight_sex_difference = {d:g} kg must be >= 0 and below twice "
                f"the weight SD ({sd_w:g} kg)."
            )
        rho = self.weight_height_corr.value
        if not -1.0 < float(rho) < 1.0:
            raise PatientError(f"PopulationSpec weight_height_corr = {rho!r} must lie in (-1, 1).")
        hep = tuple(self.hepatic.value)
        if len(hep) != 4:
            raise PatientError(
                f"PopulationSpec hepatic = {hep!r} must hold 4 probabilities (none, mild, moderate, severe)."
            )
        probs("hepatic", dict(zip(HEPATIC_LEVELS, hep, strict=True)), tuple(HEPATIC_LEVELS))
        for name in ("p_female", "p_opioid_tolerant", "p_osa", "p_open_surgery", "p_oprm1_carrier"):
            prob(name, getattr(self, name).value)
        probs("cyp2d6_phenotypes", self.cyp2d6_phenotypes.value, _CYP2D6_PHENOS)
        probs("cyp2c9_classes", self.cyp2c9_classes.value, _CYP2C9_CLASSES)
        self._check_diplotypes("CYP2D6", self.cyp2d6_diplotypes.value, self.cyp2d6_phenotypes.value)
        self._check_diplotypes("CYP2C9", self.cyp2c9_diplotypes.value, self.cyp2c9_classes.value)

    @staticmethod
    def _check_diplotypes(gene: str, table: Mapping[str, Any], classes: Mapping[str, float]) -> None:
        name = f"{gene.lower()}_diplotypes"
        for cls_, p in classes.items():
            entries = table.get(cls_, ())
            if p > 0 and not entries:
                raise PatientError(
                    f"PopulationSpec {name} has no diplotype for {gene} class {cls_!r} (probability {p:g})."
                )
            if entries and (sum(w for _, w in entries) <= 0 or any(w < 0 for _, w in entries)):
                raise PatientError(f"PopulationSpec {name}[{cls_!r}] weights must be >= 0 with a positive sum.")
            for dip, _ in entries:
                try:
                    ph = phenotype(f"{gene} {dip}")
                except GenotypeError as exc:
                    raise PatientError(f"PopulationSpec {name}[{cls_!r}]: {exc}") from exc
                got = ph.label if gene == "CYP2D6" else _cyp2c9_class(ph.activity_score)
                if got != cls_:
                    raise PatientError(
                        f"PopulationSpec {name}: {gene} {dip} is listed under {cls_!r} but pkpd.genetics gives "
                        f"{got!r} (activity score {ph.activity_score})."
                    )
        extra = set(table) - set(classes)
        if extra:
            raise PatientError(f"PopulationSpec {name} has unknown classes {sorted(extra)}.")

    # ---------------------------------------------------------------- helpers

    def with_values(self, **values: Any) -> PopulationSpec:
        """A copy with new values, each marked as a user override (``unverified=True``).

        Example: ``PopulationSpec().with_values(p_open_surgery=0.5, p_opioid_tolerant=0.4)``.
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise PatientError(
                f"PopulationSpec has no field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}."
            )
        new = {
            k: v
            if isinstance(v, SpecParam)
            else SpecParam(
                MappingProxyType(dict(v)) if isinstance(v, Mapping) else v,
                Source("user override"),
                True,
                "set by with_values",
            )
            for k, v in values.items()
        }
        return dataclasses.replace(self, **new)

    def oprm1_probs(self) -> tuple[float, float, float]:
        """``(P(AA), P(AG), P(GG))`` from the carrier probability under Hardy-Weinberg equilibrium."""
        c = float(self.p_oprm1_carrier.value)
        q = 1.0 - math.sqrt(1.0 - c)
        gg = q * q
        return 1.0 - c, c - gg, gg

    def describe(self) -> pd.DataFrame:
        """One row per parameter: name, value, source, unverified, note."""
        rows = []
        for f in dataclasses.fields(self):
            sp: SpecParam = getattr(self, f.name)
            value = dict(sp.value) if isinstance(sp.value, Mapping) else sp.value
            rows.append(
                {
                    "name": f.name,
                    "value": value,
                    "source": str(sp.source),
                    "unverified": sp.unverified,
                    "note": sp.note,
                }
            )
        return pd.DataFrame(rows)


def _cyp2c9_class(score: float | None) -> str:
    if score is None:
        return "unknown"
    if score >= 2.0:
        return "AS2"
    if score >= 1.5:
        return "AS1.5"
    if score >= 1.0:
        return "AS1"
    return "AS<=0.5"


#: Random stream number of each sampled variable (never renumber: it would change every population).
_STREAMS: Mapping[str, int] = MappingProxyType(
    {
        "sex": 1,
        "age": 2,
        "height": 3,
        "weight": 4,
        "scr": 5,
        "hepatic": 6,
        "opioid_tol": 7,
        "osa": 8,
        "surgery": 9,
        "cyp2d6": 10,
        "cyp2c9": 11,
        "oprm1": 12,
    }
)
_DOMAIN = 72  # SPINE-72: separates these streams from other uses of default_rng([seed, k])
_U_EPS = 2.0**-54


def _uniforms(seed: int, stream: str, n: int) -> np.ndarray:
    """``n`` uniforms in (0, 1); the i-th depends only on (seed, stream, i)."""
    u = np.random.default_rng([seed, _DOMAIN, _STREAMS[stream]]).random(n)
    return np.clip(u, _U_EPS, 1.0 - _U_EPS)


def _categorical(u: np.ndarray, probs: Sequence[float]) -> np.ndarray:
    cum = np.cumsum(np.asarray(probs, dtype=float))
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


def _sample_diplotypes(gene: str, u: np.ndarray, classes: Mapping[str, float], table: Mapping[str, Any]) -> np.ndarray:
    """Diplotype strings ``"<gene> <diplotype>"`` from a flattened (class x diplotype) table."""
    names: list[str] = []
    probs: list[float] = []
    for cls_, p in classes.items():
        entries = table.get(cls_, ())
        total = sum(w for _, w in entries)
        for dip, w in entries:
            names.append(f"{gene} {dip}")
            probs.append(float(p) * w / total)
    idx = _categorical(u, probs)
    return np.asarray(names, dtype=object)[idx]


def spine72_population(n: int, seed: int, spec: PopulationSpec | None = None) -> pd.DataFrame:
    """Sample the SPINE-72 virtual population (clinical.md 3.2).

    Parameters
    ----------
    n
        Number of patients (>= 1). clinical.md 3.2 uses 1,000 for development and 10,000 for reporting.
    seed
        Non-negative integer. The same ``(seed, spec)`` gives the same table; patient ``i`` does not depend
        on ``n`` (see "Random streams" in the module docstring).
    spec
        Distribution parameters; default :class:`PopulationSpec`.

    Returns
    -------
    pandas.DataFrame
        One row per patient: ``ID`` (1..n), ``SEX`` (``"female"``/``"male"``), every column of
        :data:`COVARIATE_COLUMNS` (floats; all present since every patient has a serum creatinine),
        genotype strings ``CYP2D6``, ``CYP2C9``, ``OPRM1`` (e.g. ``"CYP2D6 *1/*4"``, ``"OPRM1 A118G AG"``)
        and phenotype labels ``CYP2D6_PHENO``, ``CYP2C9_PHENO`` (from :func:`pkpd.genetics.phenotype`).

    Notes
    -----
    Sampling (all parameters in ``spec``): sex Bernoulli; age normal, clipped; height normal by sex,
    clipped; weight normal by sex correlated with the height z-score, clipped to ``weight_clip`` and to
    ``bmi_clip``; SCr log-normal by sex, clipped; hepatic category, opioid tolerance, OSA, open surgery
    independent categorical / Bernoulli; CYP2D6 phenotype then diplotype; CYP2C9 activity-score class then
    diplotype; OPRM1 AA/AG/GG by Hardy-Weinberg. Derived covariates use the functions of this module.

    Raises
    ------
    PatientError
        ``n`` < 1 or ``seed`` not a non-negative integer.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PatientError(f"spine72_population: n = {n!r} must be an integer >= 1.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PatientError(f"spine72_population: seed = {seed!r} must be a non-negative integer.")
    spec = PopulationSpec() if spec is None else spec
    n, seed = int(n), int(seed)

    def z(stream: str) -> np.ndarray:
        return ndtri(_uniforms(seed, stream, n))

    male = _uniforms(seed, "sex", n) >= float(spec.p_female.value)

    a_mu, a_sd, a_lo, a_hi = spec.age.value
    age = np.clip(a_mu + a_sd * z("age"), a_lo, a_hi)

    hf, hm = spec.height_female.value, spec.height_male.value
    zh = z("height")
    height = np.where(male, np.clip(hm[0] + hm[1] * zh, hm[2], hm[3]), np.clip(hf[0] + hf[1] * zh, hf[2], hf[3]))

    w_mu, w_sd = spec.weight.value
    d = float(spec.weight_sex_difference.value)
    sd_within = math.sqrt(w_sd**2 - d**2 / 4.0)
    rho = float(spec.weight_height_corr.value)
    zw = rho * zh + math.sqrt(1.0 - rho * rho) * z("weight")
    weight = np.where(male, w_mu + d / 2.0, w_mu - d / 2.0) + sd_within * zw
    weight = np.clip(weight, *spec.weight_clip.value)
    h2 = (height / 100.0) ** 2
    weight = np.clip(weight, spec.bmi_clip.value[0] * h2, spec.bmi_clip.value[1] * h2)

    sf, sm = spec.scr_female.value, spec.scr_male.value
    zs = z("scr")
    scr = np.where(
        male,
        np.clip(sm[0] * np.exp(sm[1] * zs), sm[2], sm[3]),
        np.clip(sf[0] * np.exp(sf[1] * zs), sf[2], sf[3]),
    )

    hepatic = _categorical(_uniforms(seed, "hepatic", n), tuple(spec.hepatic.value)).astype(float)
    opioid_tol = (_uniforms(seed, "opioid_tol", n) < float(spec.p_opioid_tolerant.value)).astype(float)
    osa = (_uniforms(seed, "osa", n) < float(spec.p_osa.value)).astype(float)
    open_s = (_uniforms(seed, "surgery", n) < float(spec.p_open_surgery.value)).astype(float)

    cyp2d6 = _sample_diplotypes(
        "CYP2D6", _uniforms(seed, "cyp2d6", n), spec.cyp2d6_phenotypes.value, spec.cyp2d6_diplotypes.value
    )
    cyp2c9 = _sample_diplotypes(
        "CYP2C9", _uniforms(seed, "cyp2c9", n), spec.cyp2c9_classes.value, spec.cyp2c9_diplotypes.value
    )
    oprm1_n_g = _categorical(_uniforms(seed, "oprm1", n), spec.oprm1_probs())
    oprm1 = np.asarray(["OPRM1 A118G AA", "OPRM1 A118G AG", "OPRM1 A118G GG"], dtype=object)[oprm1_n_g]

    def lookup(values: np.ndarray, fn: Any) -> np.ndarray:
        cache = {v: fn(v) for v in set(values.tolist())}
        return np.asarray([cache[v] for v in values.tolist()])

    ph2d6 = {v: phenotype(v) for v in set(cyp2d6.tolist())}
    ph2c9 = {v: phenotype(v) for v in set(cyp2c9.tolist())}
    cols: dict[str, Any] = {
        "ID": np.arange(1, n + 1, dtype=np.int64),
        "SEX": np.where(male, "male", "female"),
        "AGE": age,
        "MALE": male.astype(float),
        "WT": weight,
        "HT": height,
        "BMI": bmi(weight, height),
        "LBM": lbm_james(weight, height, male),
        "FFM": ffm_janmahasatian(weight, height, male),
        "IBW": ibw_devine(height, male),
        "SCR": scr,
        "CRCL": crcl_cockcroft_gault(age, weight, scr, male),
        "HEPATIC": hepatic,
        "OPIOID_TOL": opioid_tol,
        "OSA": osa,
        "OPEN_SURGERY": open_s,
        "CYP2D6_AS": lookup(cyp2d6, lambda v: float(ph2d6[v].activity_score)).astype(float),
        "CYP2D6_10_10": lookup(cyp2d6, lambda v: float(parse_genotype(v).alleles == ("*10", "*10"))).astype(float),
        "CYP2C9_AS": lookup(cyp2c9, lambda v: float(ph2c9[v].activity_score)).astype(float),
        "OPRM1_G": oprm1_n_g.astype(float),
        "CYP2D6": cyp2d6.astype(str),
        "CYP2C9": cyp2c9.astype(str),
        "OPRM1": oprm1.astype(str),
        "CYP2D6_PHENO": lookup(cyp2d6, lambda v: ph2d6[v].label).astype(str),
        "CYP2C9_PHENO": lookup(cyp2c9, lambda v: ph2c9[v].label).astype(str),
    }
    return pd.DataFrame(cols)
