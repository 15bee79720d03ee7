"""Non-opioid analgesic entries of the drug library (``shared/reference/models.md`` A7-A10, A12).

Entries: ``ibuprofen`` (Morse 2022), ``celecoxib`` (label values with a CYP2C9 activity-score effect),
``ketorolac`` (Valitalo 2017, both enantiomers, hand-built model ``ketorolac_valitalo2017``),
``gabapentin`` (Al-Zubaydi 2024, dose-dependent bioavailability), ``pregabalin`` (Shoji 2011),
``ketamine`` (racemic, Domino, as used by opentiva/stanpumpR) and ``s_ketamine`` (Simons 2022).
Acetaminophen lives in :mod:`.library`.

Every number carries the source tag of models.md (NL = nlmixr2lib transcription, OT = opentiva,
SP = stanpumpR, LBL = drug label, ABS = abstract). Values that are not in models.md are
``unverified=True`` and say where they come from. All entries use ``drug_class="non-opioid"`` (as
acetaminophen does); the pharmacological class (NSAID, gabapentinoid, NMDA antagonist) is the first note.

>>> from pkpd.drugs import get_drug
>>> get_drug("ketorolac").model
'ketorolac_valitalo2017'
"""

from __future__ import annotations

from ..models import CompartmentModel, Output, Route, register_model
from ..models import Param as ModelParam
from ._base import Covariate, Drug, Param, Source, micro_constant_params

__all__ = [
    "CELECOXIB",
    "DRUGS",
    "GABAPENTIN",
    "IBUPROFEN",
    "KETAMINE",
    "KETOROLAC",
    "KETOROLAC_MODEL",
    "PREGABALIN",
    "S_KETAMINE",
]

# --------------------------------------------------------------------------------------------------
# Ibuprofen: models.md A7, Morse 2022 (Eur J Drug Metab Pharmacokinet 47:497), ibuprofen column of
# Tables 2/3 as read in nlmixr2lib. Same conventions as ACETAMINOPHEN in library.py.
# --------------------------------------------------------------------------------------------------
_MORSE = "Morse 2022, Eur J Drug Metab Pharmacokinet 47:497"
_MORSE_T = Source(_MORSE, "Tables 2/3 (ibuprofen), via NL nlmixr2lib Morse_2022_ibuprofen (models.md A7)")

IBUPROFEN = Drug(
    name="ibuprofen",
    drug_class="non-opioid",
    model="2cmt_oral",
    params=(
        Param(
            "CL",
            3.79,
            "L/h",
            "clearance (standard 70 kg, 1.76 m man)",
            _MORSE_T,
            iiv_sd=0.221,
            note="size model (NFM with Ffat,CL = 0.863, exponent 0.75) not implemented: see notes",
        ),
        Param(
            "V1",
            6.05,
            "L",
            "central volume (standard 70 kg man)",
            _MORSE_T,
            iiv_sd=0.302,
            note="size model (NFM with Ffat,V = 0.718, exponent 1) not implemented: see notes",
        ),
        Param("Q", 10.5, "L/h", "inter-compartmental clearance Q2", _MORSE_T, iiv_sd=0.660),
        Param("V2", 4.37, "L", "peripheral volume", _MORSE_T, iiv_sd=0.530),
        Param("F1", 0.941, "1", "oral bioavailability (doses into DEPOT, CMT 1)", _MORSE_T, iiv_sd=0.051),
        Param("TABS", 26.7, "min", "absorption half-life T1/2abs, fasted tablet", _MORSE_T, iiv_sd=0.787),
        Param("TLAG", 6.66, "min", "absorption lag time, fasted tablet", _MORSE_T, iiv_sd=0.809),
        Param(
            "KA",
            "log(2) / (TABS / 60)",
            "1/h",
            "first-order absorption rate constant, ln2/T1/2abs (≈ 1.56 1/h)",
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
    covariates=(),
    routes={"po": 1},
    notes=(
        "Class: NSAID (non-selective COX inhibitor).",
        "IIV is given as log-scale SD (iiv_sd), as in the source.",
        (
            "Size model NOT implemented: Morse 2022 scales CL/Q with (NFM/NFMstd)^0.75 (Ffat,CL = 0.863) and "
            "volumes with (NFM/NFMstd)^1 (Ffat,V = 0.718). Unlike acetaminophen (Ffat,V = 1, so V ∝ WT/70), both "
            "need the Janmahasatian FFM and NFMstd, which models.md does not give; all values are for the "
            "standard 70 kg, 1.76 m man."
        ),
        (
            "Absorption values are for the fasted tablet. Fed tablet: T1/2abs ×1.59 and Tlag ×3.65 (Morse 2022 "
            "via NL); not applied by param_spec (scale TABS/TLAG by hand for fed dosing)."
        ),
        (
            "Caveat (models.md A7): simulations of the printed parameters fall 10-30 % below the paper's Table 4 "
            "Cmax medians (about 0.74 of the median for the fasted ibuprofen tablet per the nlmixr2lib vignette)."
        ),
        (
            "CYP2C9: ibuprofen is a CYP2C9 substrate with CPIC dosing advice by activity score (models.md D2), "
            "but models.md gives no quantitative PK effect for ibuprofen, so no CYP2C9_AS covariate is applied; "
            "apply the CPIC dose caps (pkpd.genetics) instead."
        ),
        (
            "Route: only 'po'. Morse 2022 also fitted IV ibuprofen data (F is relative to IV), so IV doses into "
            "CENTRAL (CMT 2) are structurally valid; no 'iv' route is declared because only oral ibuprofen is "
            "intended here (add 'iv': 2 if IV ibuprofen is needed)."
        ),
        "Studied: 116 healthy adults (18-49 y, 49-116 kg); not post-surgical patients.",
        (
            "External check (tests): Morse 2022 Table 4 (via the NL vignette), 300 mg fasted tablet: Cmax median "
            "24.1 mg/L (p10-p90 13.3-40.8), Tmax 0.94 h (0.48-1.67); the typical simulation gives 17.6 mg/L "
            "(0.73 of the median, the known bias) at 1.04 h."
        ),
    ),
    references=(
        (
            "Morse 2022, Eur J Drug Metab Pharmacokinet 47:497 (Tables 2/3 and Table 4; read via nlmixr2lib "
            "Morse_2022_ibuprofen and the shared acetaminophen/ibuprofen vignette)."
        ),
        "CPIC Theken 2020, Clin Pharmacol Ther 108:191 (CYP2C9 and NSAIDs; dosing advice only).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Celecoxib: models.md A8 (label values; CYP2C9 effects from two abstracts). No population model exists
# in models.md, so this is a 1-compartment model built from apparent (oral) label values.
# --------------------------------------------------------------------------------------------------
_CELEBREX = "Celebrex (celecoxib) FDA label"
_LBL_A8 = Source(_CELEBREX, "LBL, label text on medlibrary.org (models.md A8)")
_LBL_T1 = Source(
    _CELEBREX,
    "older label Table 1 (single 200 mg dose, fasting, n=36: Tmax 2.8 h (37 % CV)), "
    "read on a healthscout.com copy; NOT in models.md",
    unverified=True,
)
_ARCH = Source(
    "Arch Pharm Res 2017 (doi 10.1007/s12272-016-0861-2)",
    "ABS: CYP2C9 IM (*1/*3, *1/*13; Korean) CL/F -39.6 %, AUC ×1.63 (models.md A8)",
)
_KIRCH = Source(
    "Kirchheiner 2003, Pharmacogenetics 13:473",
    "ABS: CYP2C9*3/*3 'oral CL reduced more than 2-fold' (models.md A8; first-author attribution "
    "UNVERIFIED per models.md)",
)

CELECOXIB = Drug(
    name="celecoxib",
    drug_class="non-opioid",
    model="1cmt_oral",
    params=(
        Param(
            "CLNM",
            30.0,
            "L/h",
            "apparent clearance CL/F, CYP2C9 normal metabolizer (AS 2)",
            _LBL_A8,
            note="label ≈500 mL/min = 30 L/h (unit conversion mL/min -> L/h); the label does not state the "
            "genotype, taken as the NM (AS 2) reference",
        ),
        Param(
            "V",
            400.0,
            "L",
            "apparent volume V/F (label Vss/F ≈400 L used as the single volume)",
            _LBL_A8,
            note="a 1-compartment model with V = Vss/F; CL/F and V/F give t1/2 = 0.693*400/30 = 9.2 h, "
            "16 % below the label's 'effective' t1/2 ≈11 h (the label values are rounded and from "
            "different analyses)",
        ),
        Param(
            "KA",
            1.0,
            "1/h",
            "first-order absorption rate constant",
            _LBL_T1,
            unverified=True,
            note="not in models.md: chosen so that the model's Tmax equals the label Table 1 mean Tmax "
            "2.8 h with CL/F = 30 L/h and V/F = 400 L (ln(ka/k)/(ka - k) = 2.8 h gives ka = 1.00 1/h)",
        ),
        Param(
            "FIM",
            0.604,
            "1",
            "CL/F of CYP2C9 AS 1 (*1/*3) relative to AS 2",
            _ARCH,
            note="1 - 0.396 (CL/F -39.6 %); implies AUC ×1/0.604 = 1.66, vs the reported AUC ×1.63",
        ),
        Param(
            "FPM",
            0.5,
            "1",
            "CL/F of CYP2C9 AS 0 (*3/*3) relative to AS 2",
            _KIRCH,
            unverified=True,
            note="the source says 'reduced more than 2-fold': 0.5 is the bound of that statement (the "
            "smallest reduction consistent with it), so PM exposure is at least this and may be higher; "
            "it under-predicts rather than over-predicts PM exposure (not conservative for toxicity)",
        ),
        Param(
            "CL",
            "CLNM * (FIM + (1 - FIM) * (min(CYP2C9_AS, 2) - 1) if CYP2C9_AS >= 1 "
            "else FPM + (FIM - FPM) * max(CYP2C9_AS, 0))",
            "L/h",
            "apparent clearance CL/F by CYP2C9 activity score",
            Source(
                "Arch Pharm Res 2017 (AS 1); Kirchheiner 2003 (AS 0); label (AS 2)",
                "derived (models.md A8/D2): piecewise-linear interpolation in CYP2C9_AS between the "
                "anchors AS 2 (1), AS 1 (FIM), AS 0 (FPM)",
                unverified=True,
            ),
            unverified=True,
            note="ASSUMPTION: CL/F is linear in the activity score between the published anchors, so AS 1.5 "
            "(e.g. *1/*2) -> (1 + FIM)/2 = 0.802 and AS 0.5 (e.g. *2/*3) -> (FIM + FPM)/2 = 0.552 of NM. "
            "No celecoxib data for AS 1.5 or 0.5 are in models.md. AS is clamped to [0, 2].",
        ),
    ),
    covariates=(),
    routes={"po": 1},
    notes=(
        "Class: NSAID (COX-2 selective).",
        (
            "No population-PK model with CYP2C9 covariates was found (models.md A8 gap): parameters are the "
            "label's apparent values (CL/F, Vss/F) in a 1-compartment model; no IIV is given (label CVs are "
            "not population-model omegas)."
        ),
        (
            "CYP2C9 effect is a derived expression of CYP2C9_AS (AS 2 -> 1, AS 1 -> 0.604, AS 0 -> 0.5 of NM CL/F, "
            "linear in between: an assumption, see the CL note). AS 0 uses the bound of 'more than 2-fold': "
            "true *3/*3 exposure may be higher."
        ),
        (
            "Distribution is collapsed into one compartment (V = Vss/F), so the early peak is under-predicted: "
            "about 0.41 mg/L after 200 mg vs the label mean Cmax 0.705 mg/L (38 % CV)."
        ),
        (
            "Not implemented: elderly (>65 y) steady-state Cmax +40 % / AUC +50 % (LBL); food (high-fat meal "
            "delays Tmax 1-2 h, AUC +10-20 %); less-than-proportional exposure above 200 mg (solubility)."
        ),
        "KA is not in models.md (derived from the label Tmax 2.8 h; UNVERIFIED).",
    ),
    references=(
        "Celebrex (celecoxib) FDA label (medlibrary.org text; models.md A8); older label Table 1 (healthscout.com).",
        "Arch Pharm Res 2017, doi 10.1007/s12272-016-0861-2 (CYP2C9 IM; abstract).",
        "Kirchheiner 2003, Pharmacogenetics 13:473 (CYP2C9*3/*3; abstract).",
        "CPIC Theken 2020, Clin Pharmacol Ther 108:191 (CYP2C9 phenotypes and NSAID dosing).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Ketorolac: models.md A9, Valitalo 2017 (Br J Clin Pharmacol 83:1966), Table 2 via NL. Two 3-compartment
# systems (S and R) in one hand-built model; one dose record is split half to each central compartment.
# --------------------------------------------------------------------------------------------------


def _ratio(a, b):
    return lambda p: p[a] / p[b]


def _neg_sum_ratio(nums, den):
    return lambda p: -sum(p[n] for n in nums) / p[den]


def _three_cmt_terms(c, s):
    """Linear terms of one 3-compartment system: CENTRAL at index ``c``; parameter suffix ``s``."""
    p1, p2 = c + 1, c + 2
    cl, v1, q2, v2, q3, v3 = (f"{n}{s}" for n in ("CL", "V1", "Q2", "V2", "Q3", "V3"))
    return (
        (c, c, _neg_sum_ratio((cl, q2, q3), v1)),
        (p1, c, _ratio(q2, v1)),
        (c, p1, _ratio(q2, v2)),
        (p1, p1, lambda p: -p[q2] / p[v2]),
        (p2, c, _ratio(q3, v1)),
        (c, p2, _ratio(q3, v3)),
        (p2, p2, lambda p: -p[q3] / p[v3]),
    )


def _enantiomer_params(s, label):
    return (
        ModelParam(f"CL{s}", "L/h", f"{label}-ketorolac clearance"),
        ModelParam(f"V1{s}", "L", f"{label}-ketorolac central volume"),
        ModelParam(f"Q2{s}", "L/h", f"{label}-ketorolac inter-compartmental clearance, central <-> shallow periph."),
        ModelParam(f"V2{s}", "L", f"{label}-ketorolac shallow peripheral volume"),
        ModelParam(f"Q3{s}", "L/h", f"{label}-ketorolac inter-compartmental clearance, central <-> deep periph."),
        ModelParam(f"V3{s}", "L", f"{label}-ketorolac deep peripheral volume"),
    )


KETOROLAC_MODEL = register_model(
    CompartmentModel(
        name="ketorolac_valitalo2017",
        compartments=("CENTRAL_S", "PERIPH1_S", "PERIPH2_S", "CENTRAL_R", "PERIPH1_R", "PERIPH2_R"),
        params=_enantiomer_params("S", "S")
        + _enantiomer_params("R", "R")
        + (ModelParam("FS", "1", "fraction of a racemic dose record delivered to the S system (rest to R)"),),
        central=0,
        volume="V1S",
        linear_terms=_three_cmt_terms(0, "S") + _three_cmt_terms(3, "R"),
        blocks=((0, 1, 2), (3, 4, 5)),
        description=(
            "racemic ketorolac as two independent 3-compartment systems (S: CMT 1-3, R: CMT 4-6), no "
            "interconversion; a bolus dose record into CMT 1 is split FS to CENTRAL_S and 1-FS to "
            "CENTRAL_R; CP = S-ketorolac, CR = R-ketorolac"
        ),
        routes={0: (Route(0, "FS"), Route(3, "FS", complement=True))},
        outputs=(Output("CR", 3, "V1R", "mg/L", "R-ketorolac plasma concentration"),),
        references=("Valitalo PA et al. Br J Clin Pharmacol 2017;83:1966-1975.",),
    )
)

_VALITALO = "Valitalo 2017, Br J Clin Pharmacol 83:1966"
_VAL_T2 = Source(_VALITALO, "Table 2, via NL nlmixr2lib Valitalo_2017_ketorolac (models.md A9)")
_VAL_DOSE = Source(_VALITALO, "models.md A9: 'Dose: give half the racemic dose to each enantiomer'")
_VAL_SALT = Source(
    _VALITALO,
    "NL nlmixr2lib Valitalo_2017_ketorolac population notes: '30 mg ... equivalent to "
    "20.345 mg pure ketorolac per dose'; NOT in models.md",
    unverified=True,
)
_Q_NOTE = (
    "models.md names the inter-compartmental clearances Q1 (central <-> V2) and Q2 (central <-> V3); "
    "here they are Q2x and Q3x after the peripheral volume they connect"
)
_V_IIV = "one eta shared by V1, V2 and V3 of this enantiomer (fully correlated); iiv_sd repeats it on each"


def _ketorolac_params():
    out = []
    for s, vals, sd_cl, sd_v in (
        ("S", (3.96, 3.74, 20.0, 3.86, 1.3, 3.3), 0.232, 0.238),
        ("R", (1.12, 3.4, 3.86, 2.29, 0.58, 4.88), 0.289, 0.227),
    ):
        cl, v1, q2, v2, q3, v3 = vals
        who = "71-kg non-pregnant woman"
        out += [
            Param(f"CL{s}", cl, "L/h", f"{s}-ketorolac clearance ({who})", _VAL_T2, iiv_sd=sd_cl),
            Param(f"V1{s}", v1, "L", f"{s}-ketorolac central volume ({who})", _VAL_T2, iiv_sd=sd_v, note=_V_IIV),
            Param(f"Q2{s}", q2, "L/h", f"{s}-ketorolac Q1 (central <-> shallow peripheral V2)", _VAL_T2, note=_Q_NOTE),
            Param(
                f"V2{s}", v2, "L", f"{s}-ketorolac shallow peripheral volume ({who})", _VAL_T2, iiv_sd=sd_v, note=_V_IIV
            ),
            Param(f"Q3{s}", q3, "L/h", f"{s}-ketorolac Q2 (central <-> deep peripheral V3)", _VAL_T2, note=_Q_NOTE),
            Param(
                f"V3{s}", v3, "L", f"{s}-ketorolac deep peripheral volume ({who})", _VAL_T2, iiv_sd=sd_v, note=_V_IIV
            ),
        ]
    out += [
        Param(
            "FS",
            0.5,
            "1",
            "fraction of the racemic dose that is S-ketorolac",
            _VAL_DOSE,
            note="racemate = 1:1; the rest (1 - FS) goes to CENTRAL_R (CMT 4)",
        ),
        Param(
            "SALT",
            0.678,
            "1",
            "ketorolac (free acid) per mg of ketorolac tromethamine",
            _VAL_SALT,
            unverified=True,
            note="20.345/30 = 0.678 (= molar-mass ratio 255.3/376.4). The model was fitted to ketorolac "
            "amounts per nlmixr2lib; the labelled doses (15/30 mg) are of the tromethamine salt. "
            "Not in models.md: check against the paper",
        ),
        Param(
            "F1",
            "SALT",
            "1",
            "bioavailable fraction of a CMT-1 dose record: salt -> ketorolac conversion",
            _VAL_SALT,
            unverified=True,
            note="makes AMT the labelled ketorolac tromethamine dose; set F1 = F4 = 1 to dose ketorolac acid",
        ),
        Param(
            "F4",
            "SALT",
            "1",
            "bioavailable fraction of a dose record into CENTRAL_R (CMT 4)",
            _VAL_SALT,
            unverified=True,
            note="same conversion for records given straight to the R system (used for infusions, which "
            "are not split: see notes)",
        ),
    ]
    return tuple(out)


_VAL_WT = Source(_VALITALO, "Table 2 via NL: (WT/71)^0.536 on CL, (WT/71)^0.807 on V1, V2, V3 (models.md A9)")
_VAL_MALE = Source(_VALITALO, "Table 2 via NL: male ×1.363 on CL of both enantiomers (models.md A9)")

KETOROLAC = Drug(
    name="ketorolac",
    drug_class="non-opioid",
    model="ketorolac_valitalo2017",
    params=_ketorolac_params(),
    covariates=tuple(
        [Covariate(f"CL{s}", "WT", "power", 71.0, 0.536, _VAL_WT) for s in "SR"]
        + [Covariate(f"{v}{s}", "WT", "power", 71.0, 0.807, _VAL_WT) for s in "SR" for v in ("V1", "V2", "V3")]
        + [
            Covariate(
                f"CL{s}",
                "MALE",
                "indicator",
                None,
                1.363,
                _VAL_MALE,
                note="the typical values are for women; MALE = 1 multiplies CL by 1.363",
            )
            for s in "SR"
        ]
    ),
    routes={"iv": 1},
    notes=(
        "Class: NSAID (non-selective COX inhibitor); analgesic activity resides in S-ketorolac.",
        (
            "Hand-built model 'ketorolac_valitalo2017': S system CMT 1-3 (CP = S-ketorolac, the active enantiomer), "
            "R system CMT 4-6 (output CR). A bolus dose record into CMT 1 is split FS = 0.5 to each central "
            "compartment (no interconversion). Total racemic concentration = CP + CR."
        ),
        (
            "Infusions: the engine splits only bolus records (RATE = 0); an infusion record into CMT 1 would go "
            "to S alone. Give an infusion as two records, each with half the labelled dose and half the rate: "
            "one into CMT 1 (S) and one into CMT 4 (R); F1 = F4 = SALT convert both."
        ),
        (
            "Doses: AMT is the labelled ketorolac tromethamine dose; F1 = SALT = 0.678 converts it to ketorolac "
            "(the amount the model was fitted to, per nlmixr2lib; UNVERIFIED, not in models.md)."
        ),
        (
            "Typical subject: a 71-kg non-pregnant woman. Covariates: (WT/71)^0.536 on CL, (WT/71)^0.807 on all "
            "volumes, male ×1.363 on CL. The at-delivery factor (CL ×1.554 in models.md; nlmixr2lib also scales "
            "the volumes ×1.273) is NOT used: it concerns women immediately after Caesarean delivery."
        ),
        (
            "IIV (log-scale SD): CL S 0.232, R 0.289; volumes S 0.238, R 0.227 with one eta shared by V1, V2, V3 "
            "(the data model cannot express this correlation)."
        ),
        (
            "Studied: 67 adults aged 19-44 y (41 women at Caesarean delivery, postpartum and non-pregnant women, "
            "12 men after minor eye surgery); single IV dose. No elderly, renal impairment or repeated dosing."
        ),
        (
            "Published checks: models.md/clinical.md give no ketorolac concentrations or half-lives. Over a 3-9 h "
            "window the model's apparent half-lives (S 2.3 h, R 3.9 h) match Hayball 1994 (IM, n = 4, sampled for "
            "9 h: S 2.35 ± 0.23 h, R 3.62 ± 0.79 h; abstract, not in models.md) and the label's ≈2.5 h / ≈5 h. "
            "The R terminal half-life of the model (≈10 h, deep compartment) only shows after ~24 h."
        ),
        (
            "Discrepancy: the model's S:R AUC ratio is CL_R/CL_S = 0.28 (0.38 over 0-9 h), lower than Hayball "
            "1994's 0.442 ± 0.043 (4 volunteers, IM); not resolved here."
        ),
    ),
    references=(
        ("Valitalo 2017, Br J Clin Pharmacol 83:1966 (Table 2; read via nlmixr2lib Valitalo_2017_ketorolac)."),
        (
            "Hayball 1994, Br J Clin Pharmacol 37:75 (enantiomer half-lives and AUC ratio after IM racemate; "
            "abstract PMC1364714, not in models.md)."
        ),
        "Ketorolac tromethamine label (enantiomer half-lives; read on drug-label copies, not in models.md).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Gabapentin: models.md A10, Al-Zubaydi 2024 (Pharmaceutics 16:1514) via NL. 1-cmt, saturable F.
# --------------------------------------------------------------------------------------------------
_ALZ = "Al-Zubaydi 2024, Pharmaceutics 16:1514"
_ALZ_T = Source(_ALZ, "Table 2, via NL nlmixr2lib AlZubaydi_2024_gabapentin (models.md A10)")
_ALZ_F = Source(
    _ALZ,
    "saturable F = Dmax/(D50 + Dose) per administered dose; Dmax, D50 fixed from Carlsson 2009 (models.md A10, NL)",
)

GABAPENTIN = Drug(
    name="gabapentin",
    drug_class="non-opioid",
    model="1cmt_oral",
    params=(
        Param(
            "CL",
            5.73,
            "L/h",
            "clearance (apparent; at serum creatinine 1.3 mg/dL)",
            _ALZ_T,
            iiv_sd=0.28,
            note="F is modelled explicitly (F1), so CL is the clearance of absorbed drug",
        ),
        Param(
            "V",
            44.61,
            "L",
            "volume of distribution",
            _ALZ_T,
            iiv_sd=0.77,
            note="no covariate (WT, IBW, LBM, BMI tested and rejected)",
        ),
        Param("KA", 0.778, "1/h", "first-order absorption rate constant (fixed in the source)", _ALZ_T),
        Param("DMAX", 823.0, "mg", "maximal absorbed amount Dmax (fixed, from Carlsson 2009)", _ALZ_F),
        Param("DOSE50", 1120.0, "mg", "dose at half-maximal absorption D50 (fixed, from Carlsson 2009)", _ALZ_F),
        Param(
            "F1",
            "DMAX / (DOSE50 + AMT)",
            "1",
            "bioavailability of each dose into DEPOT (CMT 1)",
            _ALZ_F,
            note="evaluated on each dose record with that record's AMT (the administered dose), so 300 mg "
            "-> 0.580, 600 mg -> 0.478, 1200 mg -> 0.355. One dose must be one record: splitting a "
            "dose over several records at the same time would raise F",
        ),
    ),
    covariates=(
        Covariate("CL", "SCR", "power", 1.3, -0.89, _ALZ_T, note="(SCr/1.3 mg/dL)^-0.89; 1.3 mg/dL is the cohort mean"),
    ),
    routes={"po": 1},
    notes=(
        "Class: gabapentinoid (alpha-2-delta ligand); renally eliminated.",
        (
            "Saturable bioavailability F = Dmax/(D50 + Dose) is the derived parameter F1 = DMAX/(DOSE50 + AMT), "
            "evaluated by pkpd.simulate on each dose record with that record's AMT (ADDL copies and SS doses use "
            "the same record, so the same F). covariates_needed() therefore lists AMT, a standard NONMEM column."
        ),
        "IIV (log-scale SD): CL 0.28, V 0.77. Renal function enters through serum creatinine only.",
        (
            "Studied: 82 hospitalised adults (22-93 y, SCr 0.4-3.8 mg/dL), sparse TDM samples, single doses "
            "100-1200 mg; ka fixed (few absorption-phase samples). TDM range used there: 2-20 ug/mL, toxic "
            ">= 25 ug/mL (models.md C)."
        ),
        "Extrapolation below SCr 0.4 or above 3.8 mg/dL, or to dialysis, is outside the data.",
    ),
    references=(
        "Al-Zubaydi 2024, Pharmaceutics 16:1514 (Table 2, Eq. 1; read via nlmixr2lib AlZubaydi_2024_gabapentin).",
        "Carlsson 2009 (Dmax/D50 of the saturable absorption, as fixed by Al-Zubaydi 2024).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Pregabalin: models.md A10, Shoji 2011 (Br J Clin Pharmacol 72:63), Table 3 via NL. 1-cmt oral.
# --------------------------------------------------------------------------------------------------
_SHOJI = "Shoji 2011, Br J Clin Pharmacol 72:63"
_SHOJI_T = Source(_SHOJI, "Table 3, via NL nlmixr2lib Shoji_2011_pregabalin (models.md A10)")

PREGABALIN = Drug(
    name="pregabalin",
    drug_class="non-opioid",
    model="1cmt_oral",
    params=(
        Param(
            "CLCR",
            0.0462,
            "L/h per mL/min",
            "slope of CL/F on Cockcroft-Gault CrCL (at IBW 62 kg)",
            _SHOJI_T,
            iiv_cv=0.148,
            note="IIV 14.8 % CV is on CL/F",
        ),
        Param("CRCLBP", 107.0, "mL/min", "CrCL break point above which CL/F no longer rises", _SHOJI_T),
        Param(
            "CL",
            "CLCR * min(CRCL, CRCLBP)",
            "L/h",
            "apparent clearance CL/F",
            Source(_SHOJI, "CL/F = 0.0462 × min(CrCL, 107) × (IBW/62)^0.354 (models.md A10)"),
            note="the IBW factor is the covariate on CLCR; no intercept (source)",
        ),
        Param(
            "VPOP",
            35.6,
            "L",
            "apparent volume V/F for a man with IBW 62 kg, BMI 25, age 59",
            _SHOJI_T,
            iiv_cv=0.0854,
            note="IIV 8.54 % CV is on V/F",
        ),
        Param(
            "FEMV",
            0.906,
            "1",
            "female / male ratio of V/F",
            _SHOJI_T,
            note="models.md: ×0.906^female; MALE = 1 means male, so the factor is FEMV**(1 - MALE)",
        ),
        Param(
            "V",
            "VPOP * FEMV**(1 - MALE)",
            "L",
            "apparent volume V/F",
            Source(_SHOJI, "V/F = 35.6 ×(IBW/62)^0.819 ×(BMI/25)^0.525 ×(AGE/59)^-0.125 ×0.906^female (models.md A10)"),
            note="IBW, BMI and AGE effects are covariates on VPOP; the sex factor is written here because "
            "the dataset column is MALE (1 = male) while the source codes female",
        ),
        Param("KA", 7.99, "1/h", "first-order absorption rate constant (fasted)", _SHOJI_T, iiv_cv=0.932),
        Param("ALAG1", 0.243, "h", "absorption lag time tlag (fasted)", _SHOJI_T),
    ),
    covariates=(
        Covariate("CLCR", "IBW", "power", 62.0, 0.354, _SHOJI_T),
        Covariate("VPOP", "IBW", "power", 62.0, 0.819, _SHOJI_T),
        Covariate("VPOP", "BMI", "power", 25.0, 0.525, _SHOJI_T),
        Covariate("VPOP", "AGE", "power", 59.0, -0.125, _SHOJI_T),
    ),
    routes={"po": 1},
    notes=(
        "Class: gabapentinoid (alpha-2-delta ligand); renally eliminated, dose-independent F.",
        (
            "CL/F = 0.0462 × min(CRCL, 107) × (IBW/62)^0.354 L/h (CRCL = Cockcroft-Gault, mL/min, not "
            "BSA-normalised); V/F = 35.6 ×(IBW/62)^0.819 ×(BMI/25)^0.525 ×(AGE/59)^-0.125 ×0.906^(1 - MALE) L."
        ),
        "IIV as CV: CL/F 14.8 %, V/F 8.54 %, ka 93.2 %.",
        ("Fasted values. Fed (high-fat meal): ka ×0.070, tlag ×1.811 (Shoji 2011 via NL); not applied by param_spec."),
        (
            "Studied: 616 subjects from 14 trials (healthy, renal impairment, post-herpetic neuralgia, diabetic "
            "neuropathy; 19-101 y; CrCL 10-230 mL/min); not post-surgical patients. No dialysis."
        ),
        (
            "Published check: models.md gives no pregabalin half-life or concentration; tests use the label "
            "half-life ≈6.3 h in normal renal function (read on a WEB page quoting the label; not in models.md)."
        ),
    ),
    references=(
        "Shoji 2011, Br J Clin Pharmacol 72:63 (Table 3; read via nlmixr2lib Shoji_2011_pregabalin).",
        "Lyrica (pregabalin) label: half-life ≈6.3 h (WEB quote, droracle.ai; not in models.md).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Ketamine (racemic): models.md A12, Domino model as coded in opentiva (OT) and stanpumpR (SP).
# Micro-constants per minute; converted to the 3cmt_iv parameterisation (L, L/h).
# --------------------------------------------------------------------------------------------------
_DOMINO = "Domino (PMID 7198883; SP cites Clin Pharmacol Ther 36:645-653, year UNVERIFIED)"
_DOM_OT = Source(_DOMINO, "OT opentiva/ketamine.py (Domino class); same constants in SP (models.md A12)")
_DOM_DER = "derived from the Domino micro-constants (models.md A12)"

KETAMINE = Drug(
    name="ketamine",
    drug_class="non-opioid",
    model="3cmt_iv",
    params=(
        Param("V1KG", 0.063, "L/kg", "central volume per kg of total body weight", _DOM_OT),
        Param("K10", 0.4381, "1/min", "elimination rate constant k10", _DOM_OT),
        Param("K12", 0.5921, "1/min", "rate constant central -> compartment 2", _DOM_OT),
        Param("K13", 0.590, "1/min", "rate constant central -> compartment 3", _DOM_OT),
        Param("K21", 0.247, "1/min", "rate constant compartment 2 -> central", _DOM_OT),
        Param("K31", 0.0146, "1/min", "rate constant compartment 3 -> central", _DOM_OT),
        Param("V1", "V1KG * WT", "L", "central volume (V1 = 0.063·WT L)", Source(_DOMINO, _DOM_DER)),
        *micro_constant_params(Source(_DOMINO, _DOM_DER)),
    ),
    covariates=(),
    routes={"iv": 1},
    notes=(
        "Class: NMDA-receptor antagonist (racemic ketamine).",
        (
            "Domino model as used for TCI by opentiva and stanpumpR: all volumes and clearances scale linearly "
            "with WT (V1 = 0.063·WT L; micro-constants fixed). No IIV, no age/sex covariates."
        ),
        (
            "The primary paper was not read (models.md: year UNVERIFIED); values are those of two independent "
            "code implementations that agree (OT, SP)."
        ),
        (
            "Analgesic target range used by stanpumpR: 0.10-0.16 ug/mL (typical 0.12; comment cites 'Moen 2013 "
            "review'). Norketamine is not modelled. No effect compartment (opentiva's ke0 is not in models.md)."
        ),
    ),
    references=(
        (
            "Domino, Clin Pharmacol Ther 36:645-653 (PMID 7198883; year UNVERIFIED); via opentiva/ketamine.py and "
            "stanpumpR drugDefaults_global.csv."
        ),
    ),
)

# --------------------------------------------------------------------------------------------------
# S-ketamine: models.md A12, Simons 2022 (Front Pain Res 3:946486), Table 4 via NL. Parent only.
# --------------------------------------------------------------------------------------------------
_SIMONS = "Simons 2022, Front Pain Res 3:946486"
_SIM_T = Source(_SIMONS, "Table 4, via NL nlmixr2lib Simons_2022_s_ketamine (models.md A12)")
_SIM_ALLO = Source(
    _SIMONS, "models.md A12: 'allometric exponents not printed; nlmixr2lib assumed 0.75/1'", unverified=True
)

S_KETAMINE = Drug(
    name="s_ketamine",
    drug_class="non-opioid",
    model="3cmt_iv",
    params=(
        Param(
            "V1", 11.6, "L", "central volume VK1 (70 kg)", _SIM_T, iiv_sd=0.057**0.5, note="IIV ω² 0.057 -> SD 0.239"
        ),
        Param("V2", 39.0, "L", "peripheral volume VK2 (70 kg)", _SIM_T),
        Param("V3", 174.0, "L", "peripheral volume VK3 (70 kg)", _SIM_T),
        Param(
            "CLK1",
            1.48,
            "L/min",
            "elimination clearance CLK1 (70 kg)",
            _SIM_T,
            iiv_sd=0.029**0.5,
            note="IIV ω² 0.029 -> SD 0.170",
        ),
        Param("CLK2", 2.43, "L/min", "inter-compartmental clearance CLK2 (70 kg)", _SIM_T),
        Param(
            "CLK3",
            1.21,
            "L/min",
            "inter-compartmental clearance CLK3 (70 kg)",
            _SIM_T,
            iiv_sd=0.026**0.5,
            note="IIV ω² 0.026 -> SD 0.161",
        ),
        Param(
            "CL",
            "CLK1 * 60",
            "L/h",
            "clearance (≈88.8 L/h at 70 kg)",
            Source(_SIMONS, "unit conversion"),
            note="L/min -> L/h (×60)",
        ),
        Param(
            "Q2",
            "CLK2 * 60",
            "L/h",
            "inter-compartmental clearance to V2",
            Source(_SIMONS, "unit conversion"),
            note="L/min -> L/h (×60); CLK2 connects VK1 with VK2, CLK3 VK1 with VK3 (NL model file)",
        ),
        Param(
            "Q3",
            "CLK3 * 60",
            "L/h",
            "inter-compartmental clearance to V3",
            Source(_SIMONS, "unit conversion"),
            note="L/min -> L/h (×60)",
        ),
    ),
    covariates=tuple(
        [Covariate(p, "WT", "power", 70.0, 0.75, _SIM_ALLO, unverified=True) for p in ("CLK1", "CLK2", "CLK3")]
        + [Covariate(p, "WT", "power", 70.0, 1.0, _SIM_ALLO, unverified=True) for p in ("V1", "V2", "V3")]
    ),
    routes={"iv": 1},
    notes=(
        "Class: NMDA-receptor antagonist (S-enantiomer, esketamine).",
        (
            "IV disposition only: the oral thin-film absorption and the S-norketamine model (80 % of metabolised "
            "S-ketamine assumed to form S-norketamine; CLN1 1.00 L/min, VN2 221 L) are not included."
        ),
        (
            "Weight scaling (WT/70)^0.75 on clearances and ^1 on volumes is nlmixr2lib's assumption (exponents "
            "not printed in the paper): UNVERIFIED."
        ),
        "Studied: 20 healthy volunteers (20 mg IV and oral thin film); not post-surgical patients.",
        (
            "No published S-ketamine concentration is in models.md/clinical.md; tests check only internal "
            "consistency (derived vs simulated half-life)."
        ),
    ),
    references=("Simons 2022, Front Pain Res 3:946486 (Table 4; read via nlmixr2lib Simons_2022_s_ketamine).",),
)

DRUGS: tuple[Drug, ...] = (IBUPROFEN, CELECOXIB, KETOROLAC, GABAPENTIN, PREGABALIN, KETAMINE, S_KETAMINE)
