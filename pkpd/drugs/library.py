"""Drug library: sourced population-PK entries mapped onto the built-in structural models.

Every number below is taken from ``shared/reference/models.md`` (sections named per entry) with the
source tag given there (NL = nlmixr2/nlmixr2lib transcription of the paper's table). Values marked
**UNVERIFIED** there carry ``unverified=True`` here. Derived values say so in ``note``.

>>> from pkpd.drugs import get_drug
>>> oxy = get_drug("oxycodone")
>>> oxy.cmt("po_er")
2
"""

from __future__ import annotations

from ..errors import ModelSpecError
from ._base import Covariate, Drug, Param, Source

__all__ = ["ACETAMINOPHEN", "OXYCODONE", "get_drug", "list_drugs"]

# --------------------------------------------------------------------------------------------------
# Oxycodone: models.md A1, Agema 2021 (Cancers 13:2768), Table 2 as read in nlmixr2lib.
# --------------------------------------------------------------------------------------------------
_AGEMA = "Agema 2021, Cancers 13:2768"
_AGEMA_T2 = Source(_AGEMA, "Table 2, via NL nlmixr2lib Agema_2021_oxycodone (models.md A1)")
_AGEMA_DERIVED = Source(
    _AGEMA,
    "derived: CL/F = (k30 + k34) * V/F; models.md A1 notes: "
    "'total elimination is k = 0.098 1/h, so CL/F ≈ 61 L/h (my derivation)'",
)
_AGEMA_STRUCT = Source(_AGEMA, "structure: separate first-order IR and ER depots (models.md A1 notes)")

OXYCODONE = Drug(
    name="oxycodone",
    drug_class="opioid",
    model="1cmt_dual",
    params=(
        Param("KA", 3.61, "1/h", "absorption rate constant, IR tablet (DEPOT_FAST, CMT 1)", _AGEMA_T2),
        Param(
            "KA2", 0.329, "1/h", "absorption rate constant, ER tablet (separate depot, DEPOT_SLOW, CMT 2)", _AGEMA_T2
        ),
        Param("V", 619.0, "L", "apparent volume of distribution V/F (oral; F not separately identified)", _AGEMA_T2),
        Param(
            "K30",
            0.01224,
            "1/h",
            "elimination rate constant by routes other than noroxycodone formation",
            _AGEMA_T2,
            note="fixed in the source model",
        ),
        Param(
            "K34",
            0.086,
            "1/h",
            "rate constant of noroxycodone formation",
            _AGEMA_T2,
            iiv_cv=0.357,
            note="IIV 35.7 % CV is on k34 only (so it acts on part of CL, not on CL as a whole)",
        ),
        Param(
            "CL",
            "(K30 + K34) * V",
            "L/h",
            "apparent clearance CL/F (derived; ≈ 60.8 L/h)",
            _AGEMA_DERIVED,
            note="the source is parameterized with micro-constants; parent disposition is 1-cmt with total "
            "elimination k = k30 + k34 = 0.09824 1/h, so CL/F = k*V/F. The metabolite compartments "
            "(noroxycodone, oxymorphone) of the source model are not represented.",
        ),
        Param(
            "FR",
            1.0,
            "1",
            "fraction of a CMT-1 dose absorbed by the fast route (1: IR doses are all fast)",
            _AGEMA_STRUCT,
            note="the source uses separate IR and ER depots, not a split dose: IR doses go to "
            "CMT 1 with FR = 1, ER tablets go to CMT 2 (absorbed with KA2)",
        ),
    ),
    covariates=(),
    routes={"po": 1, "po_er": 2},
    notes=(
        "No covariates: Agema 2021 retained none (WT, age, CYP2D6 IM, CYP3A4*22, UGT2B7 were screened).",
        (
            "No age covariate. Saari 2012 (Br J Anaesth 108:491, IV, 19-89 y) shows clearance falls with age, "
            "which matters for older spine patients, but its equation form is UNVERIFIED in models.md, so it is "
            "NOT implemented here."
        ),
        "Apparent (oral) parameters: V and CL are V/F and CL/F; not for IV doses (no IV route).",
        "Residual error in the source: 39.7 % proportional (not used by simulate).",
        "Studied population: 28 cancer-pain inpatients, not post-surgical patients.",
        (
            "External check: tests compare ER 10 mg q12h steady state with Reder 1996 (Clin Ther 18:95) "
            "Cmax 15.1±4.7 ng/mL, Tmax 3.2 h."
        ),
    ),
    references=(
        "Agema 2021, Cancers 13:2768 (Table 2; read via nlmixr2lib Agema_2021_oxycodone).",
        "Saari 2012, Br J Anaesth 108:491 (age effect on clearance; form UNVERIFIED, not used).",
        "Reder 1996, Clin Ther 18:95 (steady-state validation data; abstract).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Acetaminophen: models.md A7, Morse 2022 (Eur J Drug Metab Pharmacokinet 47:497), Tables 2/3 as read
# in nlmixr2lib (Morse_2022_acetaminophen and the shared vignette). 2-compartment, IV + oral.
# --------------------------------------------------------------------------------------------------
_MORSE = "Morse 2022, Eur J Drug Metab Pharmacokinet 47:497"
_MORSE_T = Source(_MORSE, "Tables 2/3, via NL nlmixr2lib Morse_2022_acetaminophen (models.md A7)")
_MORSE_SIZE = Source(
    _MORSE, "size model, via NL (models.md A7): V ∝ (NFM/NFMstd)^1 with Ffat,V = 1, so NFM = WT and NFMstd = 70 kg"
)

ACETAMINOPHEN = Drug(
    name="acetaminophen",
    drug_class="non-opioid",
    model="2cmt_oral",
    params=(
        Param(
            "CL",
            24.0,
            "L/h",
            "clearance (standard 70 kg, 1.76 m man)",
            _MORSE_T,
            iiv_sd=0.173,
            note="size model on CL (NFM with Ffat,CL = 0.816, Janmahasatian FFM) not implemented: "
            "the FFM equation and NFMstd are not given in models.md",
        ),
        Param("V1", 43.7, "L", "central volume (standard 70 kg man)", _MORSE_T, iiv_sd=0.537),
        Param(
            "Q",
            43.5,
            "L/h",
            "inter-compartmental clearance Q2",
            _MORSE_T,
            iiv_sd=0.615,
            note="size model on clearances not implemented (see CL)",
        ),
        Param("V2", 29.7, "L", "peripheral volume", _MORSE_T, iiv_sd=0.466),
        Param("F1", 0.859, "1", "oral bioavailability (doses into DEPOT, CMT 1)", _MORSE_T, iiv_sd=0.145),
        Param("TABS", 11.5, "min", "absorption half-life T1/2abs, fasted tablet", _MORSE_T, iiv_sd=0.856),
        Param("TLAG", 5.30, "min", "absorption lag time, fasted tablet", _MORSE_T, iiv_sd=0.960),
        Param(
            "KA",
            "log(2) / (TABS / 60)",
            "1/h",
            "first-order absorption rate constant, ln2/T1/2abs (≈ 3.62 1/h)",
            Source(_MORSE, "derived from T1/2abs (models.md A7)"),
            note="unit conversion min -> h",
        ),
        Param(
            "ALAG1",
            "TLAG / 60",
            "h",
            "lag of doses into DEPOT (CMT 1)",
            Source(_MORSE, "derived from Tlag (models.md A7)"),
            note="unit conversion min -> h",
        ),
    ),
    covariates=(
        Covariate("V1", "WT", "power", 70.0, 1.0, _MORSE_SIZE),
        Covariate(
            "V2",
            "WT",
            "power",
            70.0,
            1.0,
            _MORSE_SIZE,
            unverified=True,
            note="models.md writes 'V ∝ (NFM/NFMstd)^1' without naming V1/V2; applying it to V2 is "
            "this library's reading",
        ),
    ),
    routes={"po": 1, "iv": 2},
    notes=(
        "IIV is given as log-scale SD (iiv_sd), as in the source.",
        (
            "Absorption values are for the fasted tablet. Fed: T1/2abs ×1.87 and Tlag ×4.63 (Morse 2022 via NL); "
            "not applied by param_spec (scale TABS/TLAG by hand for fed dosing)."
        ),
        (
            "Size model on CL and Q (NFM with Ffat,CL = 0.816, Janmahasatian FFM, exponent 0.75) NOT "
            "implemented: models.md does not give the FFM equation or NFMstd. CL and Q are 70-kg values."
        ),
        (
            "Caveat (models.md A7, nlmixr2lib vignette): simulations of the printed parameters fall 10-30 % "
            "below the paper's Table 4 Cmax medians."
        ),
        "IV doses go to CENTRAL (CMT 2); F1 applies to oral doses only. Studied: 116 healthy adults.",
        "No published acetaminophen concentrations are given in models.md, so no external data check.",
    ),
    references=(
        (
            "Morse 2022, Eur J Drug Metab Pharmacokinet 47:497 (Tables 2/3; read via nlmixr2lib "
            "Morse_2022_acetaminophen and vignette)."
        ),
    ),
)


def _collect() -> dict[str, Drug]:
    from . import local_anesthetics, nonopioids, opioids

    out: dict[str, Drug] = {}
    for d in (OXYCODONE, ACETAMINOPHEN, *opioids.DRUGS, *nonopioids.DRUGS, *local_anesthetics.DRUGS):
        if d.name in out:
            raise ModelSpecError(f"drug {d.name!r} defined twice in the library")
        out[d.name] = d
    return out


_DRUGS: dict[str, Drug] = _collect()

#: Other names users write for library drugs.
ALIASES: dict[str, str] = {
    "paracetamol": "acetaminophen",
    "apap": "acetaminophen",
    "exparel": "bupivacaine_liposomal",
    "liposomal_bupivacaine": "bupivacaine_liposomal",
    "oxycontin": "oxycodone",
    "dilaudid": "hydromorphone",
    "toradol": "ketorolac",
    "celebrex": "celecoxib",
    "neurontin": "gabapentin",
    "lyrica": "pregabalin",
}


def list_drugs() -> list[str]:
    """Names of the drugs in the library, sorted."""
    return sorted(_DRUGS)


def get_drug(name: str) -> Drug:
    """The library entry for ``name`` (case-insensitive); :class:`ModelSpecError` for unknown names."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in _DRUGS:
        raise ModelSpecError(f"unknown drug {name!r}; known drugs: {', '.join(list_drugs())}")
    return _DRUGS[key]
