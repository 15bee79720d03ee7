"""Opioid entries of the drug library (``shared/reference/models.md`` sections A2-A6 and A13).

Entries: ``morphine`` (de Hoogd 2017, IV, with M6G; hand-built model ``morphine_dehoogd2017``),
``hydromorphone`` (Erlangen 2014 typical patient), ``fentanyl`` (Shafer 1990 with ke0),
``remifentanil`` (Minto 1997), ``tramadol`` (Lee 2019 SR with M1 and CYP2D6*10/*10) and ``codeine``
(Ashraf 2024 with morphine formation by CYP2D6 activity score). Oxycodone lives in :mod:`.library`.

Every number is taken from models.md with its source tag (NL = nlmixr2lib transcription, OT/PT/ST =
opentiva/PyTCI/SwiftTCI code, SP = stanpumpR, ABS = abstract). Values published per minute are
converted to per hour (``x 60``) and the parameter's ``note`` says so. Values models.md marks
**UNVERIFIED**, hand-set tool defaults and cross-study combinations carry ``unverified=True``.

>>> from pkpd.drugs import get_drug
>>> get_drug("codeine").cmt("po")
1
"""

from __future__ import annotations

from ..models import CompartmentModel, Output, register_model
from ..models import Param as ModelParam
from ._base import Covariate, Drug, Param, Source, micro_constant_params

__all__ = ["CODEINE", "DRUGS", "FENTANYL", "HYDROMORPHONE", "MORPHINE", "MORPHINE_MODEL", "REMIFENTANIL", "TRAMADOL"]

_PER_MIN = "published per minute; converted x 60 to per hour"

# --------------------------------------------------------------------------------------------------
# Morphine + M6G: models.md A2, de Hoogd 2017 (Clin Pharmacokinet 56:1577), Table 2 via NL
# deHoogd_2017_morphine. Hand-built structure (M6G formation delayed by 2 transit compartments).
# --------------------------------------------------------------------------------------------------


def _morphine_model() -> CompartmentModel:
    """The de Hoogd 2017 morphine/M6G structure (M3G omitted), with an optional oral depot.

    Compartments (CMT): 1 DEPOT, 2 CENTRAL (morphine), 3 PERIPH1, 4 PERIPH2, 5 TRANSIT1_M6G,
    6 TRANSIT2_M6G, 7 M6G. Morphine leaves CENTRAL with total clearance ``CL``; the part ``CLF6 * C``
    enters the M6G transit chain (rate ``KTR``), the rest (M3G formation and non-glucuronide routes)
    leaves the system. M6G is eliminated with ``CLM`` from volume ``VM``; ``CM`` is its concentration
    in morphine-mass equivalents (1:1 molar formation).
    """
    P = ModelParam
    params = (
        P("CL", "L/h", "total morphine clearance (M3G formation + M6G formation + non-glucuronide)"),
        P("CLF6", "L/h", "M6G formation clearance (part of CL)"),
        P("V1", "L", "morphine central volume"),
        P("Q2", "L/h", "inter-compartmental clearance, central <-> first peripheral"),
        P("V2", "L", "morphine first peripheral volume"),
        P("Q3", "L/h", "inter-compartmental clearance, central <-> second peripheral"),
        P("V3", "L", "morphine second peripheral volume"),
        P("KTR", "1/h", "transit rate constant of the M6G formation delay chain (2 transits)"),
        P("CLM", "L/h", "M6G elimination clearance"),
        P("VM", "L", "M6G volume of distribution"),
        P("KA", "1/h", "first-order absorption rate constant (oral doses into DEPOT)"),
    )
    c, p1, p2, t1, t2, m = 1, 2, 3, 4, 5, 6
    terms = (
        (0, 0, lambda p: -p["KA"]),
        (c, 0, lambda p: p["KA"]),
        (c, c, lambda p: -(p["CL"] + p["Q2"] + p["Q3"]) / p["V1"]),
        (p1, c, lambda p: p["Q2"] / p["V1"]),
        (c, p1, lambda p: p["Q2"] / p["V2"]),
        (p1, p1, lambda p: -p["Q2"] / p["V2"]),
        (p2, c, lambda p: p["Q3"] / p["V1"]),
        (c, p2, lambda p: p["Q3"] / p["V3"]),
        (p2, p2, lambda p: -p["Q3"] / p["V3"]),
        (t1, c, lambda p: p["CLF6"] / p["V1"]),
        (t1, t1, lambda p: -p["KTR"]),
        (t2, t1, lambda p: p["KTR"]),
        (t2, t2, lambda p: -p["KTR"]),
        (m, t2, lambda p: p["KTR"]),
        (m, m, lambda p: -p["CLM"] / p["VM"]),
    )
    return CompartmentModel(
        name="morphine_dehoogd2017",
        compartments=("DEPOT", "CENTRAL", "PERIPH1", "PERIPH2", "TRANSIT1_M6G", "TRANSIT2_M6G", "M6G"),
        params=params,
        central=c,
        volume="V1",
        linear_terms=terms,
        blocks=((0,), (c, p1, p2), (t1,), (t2,), (m,)),
        description=(
            "morphine 3-compartment disposition (de Hoogd 2017) with optional first-order oral "
            "depot; M6G formed through 2 transit compartments, 1-compartment M6G; M3G not modelled"
        ),
        outputs=(Output("CM", m, "VM", "mg/L", "M6G concentration (morphine-mass equivalents, 1:1 molar)"),),
        references=("de Hoogd 2017, Clin Pharmacokinet 56:1577",),
    )


MORPHINE_MODEL = register_model(_morphine_model())

_HOOGD = "de Hoogd 2017, Clin Pharmacokinet 56:1577"
_HOOGD_T2 = Source(_HOOGD, "Table 2, via NL nlmixr2lib deHoogd_2017_morphine (models.md A2)")
_HOOGD_NG = Source(_HOOGD, "NL interpretation (models.md A2): fixed at 35% of total CL at 70 kg per Methods 2.4")
_HOOGD_DER = Source(
    _HOOGD,
    "derived: morphine elimination = M3G + M6G formation + non-glucuronide CL (models.md A2; NL model structure)",
)
_HOOGD_WT = Source(_HOOGD, "TBW covariate, reference 98.5 kg, via NL (models.md A2)")
_FRANKEN = "Franken 2016, Clin Pharmacokinet 55:697"
_FRANKEN_NL = Source(_FRANKEN, "via NL nlmixr2lib Franken_2015_morphine (models.md A2); cross-study use here")

MORPHINE = Drug(
    name="morphine",
    drug_class="opioid",
    model="morphine_dehoogd2017",
    params=(
        Param(
            "CLF3",
            44.88,
            "L/h",
            "M3G formation clearance (M3G itself not modelled)",
            _HOOGD_T2,
            iiv_cv=0.208,
            note=f"0.748 L/min; {_PER_MIN}",
        ),
        Param(
            "CLF6",
            7.74,
            "L/h",
            "M6G formation clearance at 98.5 kg",
            _HOOGD_T2,
            note=f"0.129 L/min at TBW 98.5 kg; {_PER_MIN}",
        ),
        Param(
            "CLNG",
            28.83,
            "L/h",
            "non-glucuronide morphine clearance (fixed)",
            _HOOGD_NG,
            note=f"0.4805 L/min; {_PER_MIN}. nlmixr2lib's reading of Methods 2.4 (35% of total CL of a "
            "70-kg subject); no TBW effect",
        ),
        Param(
            "CL",
            "CLF3 + CLF6 + CLNG",
            "L/h",
            "total morphine clearance (derived; 81.45 L/h at 98.5 kg)",
            _HOOGD_DER,
            note="sum of the three elimination routes of the source model: 0.748 + 0.129 + "
            "0.4805 = 1.3575 L/min at 98.5 kg (1.373 L/min at 70 kg through the TBW effect "
            "on M6G formation)",
        ),
        Param("V1", 4.62, "L", "morphine central volume (V1M)", _HOOGD_T2),
        Param("V2", 9.52, "L", "morphine first peripheral volume (V4M in the source)", _HOOGD_T2),
        Param("V3", 118.0, "L", "morphine second peripheral volume (V5M in the source) at 98.5 kg", _HOOGD_T2),
        Param(
            "Q2",
            48.84,
            "L/h",
            "inter-compartmental clearance V1 <-> V2 (source Q2)",
            _HOOGD_T2,
            note=f"0.814 L/min; {_PER_MIN}",
        ),
        Param(
            "Q3",
            77.4,
            "L/h",
            "inter-compartmental clearance V1 <-> V3 (source Q3)",
            _HOOGD_T2,
            note=f"1.29 L/min; {_PER_MIN}",
        ),
        Param(
            "KTR",
            9.54,
            "1/h",
            "M6G formation-delay transit rate (n = 2 transits)",
            _HOOGD_T2,
            iiv_cv=0.368,
            note=f"0.159 1/min; {_PER_MIN}. Mean transit time 2/KTR = 12.6 min",
        ),
        Param(
            "VM",
            5.29,
            "L",
            "M6G volume of distribution",
            _HOOGD_T2,
            note="the source sets VM3G = VM6G (structural equality); its IIV is not in models.md and is not given here",
        ),
        Param(
            "CLM",
            8.94,
            "L/h",
            "M6G elimination clearance at 98.5 kg",
            _HOOGD_T2,
            note=f"0.149 L/min at TBW 98.5 kg; {_PER_MIN}",
        ),
        Param(
            "KA",
            6.0,
            "1/h",
            "absorption rate constant of oral IR liquid (route 'po', cross-study)",
            _FRANKEN_NL,
            unverified=True,
            note="Franken 2016 value (itself fixed from literature) combined with de Hoogd's IV disposition: "
            "a cross-study construction of this library, flagged for that reason",
        ),
        Param(
            "F1",
            0.30,
            "1",
            "oral bioavailability of doses into DEPOT (route 'po', cross-study)",
            _FRANKEN_NL,
            iiv_cv=0.378,
            unverified=True,
            note="Franken 2016 (palliative patients) combined with de Hoogd's IV disposition: cross-study "
            "construction, flagged for that reason",
        ),
    ),
    covariates=(
        Covariate("CLF6", "WT", "power", 98.5, -0.329, _HOOGD_WT),
        Covariate("V3", "WT", "power", 98.5, 0.483, _HOOGD_WT),
        Covariate("CLM", "WT", "power", 98.5, -1.03, _HOOGD_WT),
    ),
    routes={"po": 1, "iv": 2},
    notes=(
        (
            "Active moiety: morphine (CP, mg/L). M6G (CM) is an active metabolite reported alongside, in "
            "morphine-mass equivalents (1:1 molar formation; multiply by MW M6G / MW morphine for M6G mass)."
        ),
        (
            "Studied: IV morphine in 20 morbidly obese surgical patients + 20 volunteers (models.md A2; per the "
            "nlmixr2lib file: bariatric surgery, 56-252 kg, 20-59 y, sampling to 7 h). TBW effects on M6G "
            "formation, M6G elimination and V3 (reference 98.5 kg); no TBW effect on morphine CL."
        ),
        (
            "M3G omitted: its formation clearance (CLF3) is kept as part of morphine elimination, but the M3G "
            "transit chain (n = 5) and compartment of the source model are not represented."
        ),
        (
            "Non-glucuronide CL (0.4805 L/min) is nlmixr2lib's interpretation of the paper's Methods 2.4 "
            "(35% of total CL at 70 kg), not a printed estimate."
        ),
        "IIV (CV) is given on CLF3 (20.8%) and KTR (36.8%) as in the source; none on CL as a whole.",
        (
            "Route 'po' is CROSS-STUDY: Franken 2016 oral F 0.30 and IR-liquid ka 6 1/h (palliative patients, "
            "fitted with Franken's own disposition) on de Hoogd's IV disposition. Both values are flagged "
            "unverified. No first-pass M6G formation is modelled (general knowledge, not in models.md: oral "
            "morphine forms extra M6G presystemically, so oral M6G is likely under-predicted)."
        ),
        (
            "External checks (tests): total CL vs 1.35 L/min and M6G tmax vs 53 min after a bolus, both from the "
            "cardiac-surgery IV PCA study (Eur J Drug Metab Pharmacokinet 2021;46:249)."
        ),
        "Doses are in mg of morphine as given; concentrations are in the dose's mass units per L.",
    ),
    references=(
        "de Hoogd 2017, Clin Pharmacokinet 56:1577 (Table 2; read via nlmixr2lib deHoogd_2017_morphine).",
        "Franken 2016, Clin Pharmacokinet 55:697 (oral F and ka; via nlmixr2lib Franken_2015_morphine).",
        "Morphine/M6G in cardiac surgery, Eur J Drug Metab Pharmacokinet 2021;46:249-263 (abstract; checks).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Hydromorphone: models.md A3, Anesthesiology 2014;120:378 (Erlangen group), typical 67-y 70-kg patient.
# --------------------------------------------------------------------------------------------------
_ERL = "Erlangen group (Jeleazcov, attribution UNVERIFIED) 2014, Anesthesiology 120:378"
_ERL_ABS = Source(_ERL, "abstract, typical patient 67 y 70 kg (models.md A3; ABS PubMed 23958818)")
_SP_HM = Source("stanpumpR (Shafer), R/drugs_hydromorphone.R", "tool default set by hand (models.md A3, SP)")

HYDROMORPHONE = Drug(
    name="hydromorphone",
    drug_class="opioid",
    model="3cmt_oral",
    params=(
        Param(
            "CL",
            60.6,
            "L/h",
            "elimination clearance CL1 (typical 67 y, 70 kg)",
            _ERL_ABS,
            note=f"1.01 L/min; {_PER_MIN}. Age effect (falls 43% from 40 to 80 y) not implemented",
        ),
        Param("V1", 3.35, "L", "central volume (typical 67 y, 70 kg)", _ERL_ABS),
        Param("Q2", 88.2, "L/h", "inter-compartmental clearance CL2", _ERL_ABS, note=f"1.47 L/min; {_PER_MIN}"),
        Param("V2", 13.9, "L", "first peripheral volume", _ERL_ABS),
        Param("Q3", 84.6, "L/h", "inter-compartmental clearance CL3", _ERL_ABS, note=f"1.41 L/min; {_PER_MIN}"),
        Param("V3", 145.0, "L", "second peripheral volume", _ERL_ABS),
        Param(
            "KA",
            0.6,
            "1/h",
            "oral absorption rate constant (route 'po')",
            _SP_HM,
            unverified=True,
            note=f"0.01 1/min; {_PER_MIN}. Hand-set stanpumpR default, not a fitted value",
        ),
        Param(
            "F1",
            0.6,
            "1",
            "oral bioavailability of doses into DEPOT (route 'po')",
            _SP_HM,
            unverified=True,
            note="hand-set stanpumpR default, not a fitted value",
        ),
    ),
    covariates=(),
    routes={"po": 1, "iv": 2},
    notes=(
        "Active moiety: hydromorphone (CP, mg/L); no metabolite is modelled.",
        (
            "Studied: 49 adults aged 40-81 y after cardiac surgery (postoperative TCI then PCA; arterial "
            "samples per the abstract). Values are the typical patient, 67 y and 70 kg."
        ),
        (
            "Age on CL1 and V1 and weight scaling of all parameters are in the source model, but their "
            "equations are UNVERIFIED in models.md and are NOT implemented: the entry is the 67-y 70-kg typical "
            "patient for everyone. The abstract says CL1 falls 43% from 40 to 80 y and the context-sensitive "
            "half-time rises from 26 to 84 min, so younger patients will clear faster than predicted."
        ),
        "IIV not read (not in models.md).",
        (
            "Route 'po' uses stanpumpR's hand-set oral F 0.6 and ka 0.01/min on the Erlangen IV disposition; "
            "both flagged unverified. No oral hydromorphone population model is in models.md."
        ),
        (
            "External check (tests): context-sensitive half-time of the typical 67-y patient lies between the "
            "published 26 min (40 y) and 84 min (80 y)."
        ),
    ),
    references=(
        (
            "Anesthesiology 2014;120:378-391 (Erlangen group; first author Jeleazcov per models.md, attribution "
            "UNVERIFIED), abstract via PubMed 23958818."
        ),
        "stanpumpR (StevenLShafer/stanpumpR) R/drugs_hydromorphone.R, HEAD ace20c9 (oral F and ka).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Fentanyl: models.md A4 and B1, Shafer 1990 micro-constants and ke0 (opentiva/fentanyl.py).
# --------------------------------------------------------------------------------------------------
_SHAFER = "Shafer 1990, Anesthesiology (PMID 2248388)"
_SHAFER_OT = Source(_SHAFER, "micro-constants via OT opentiva/fentanyl.py (models.md A4)")
_SHAFER_KE0 = Source(_SHAFER, "ke0 via OT opentiva/fentanyl.py (models.md A4, B1)")
_SHAFER_DER = Source(_SHAFER, "derived from the micro-constants (models.md A4)")

FENTANYL = Drug(
    name="fentanyl",
    drug_class="opioid",
    model="3cmt_iv_effect",
    params=(
        Param("V1", 6.09, "L", "central volume", _SHAFER_OT),
        Param("K10MIN", 0.0827, "1/min", "elimination rate constant k10 (per minute, as published)", _SHAFER_OT),
        Param("K12MIN", 0.471, "1/min", "rate constant central -> first peripheral k12 (per minute)", _SHAFER_OT),
        Param("K13MIN", 0.225, "1/min", "rate constant central -> second peripheral k13 (per minute)", _SHAFER_OT),
        Param("K21MIN", 0.102, "1/min", "rate constant first peripheral -> central k21 (per minute)", _SHAFER_OT),
        Param("K31MIN", 0.006, "1/min", "rate constant second peripheral -> central k31 (per minute)", _SHAFER_OT),
        Param("KE0MIN", 0.12, "1/min", "effect-site equilibration rate constant ke0 (per minute)", _SHAFER_KE0),
        *micro_constant_params(_SHAFER_DER, k10="K10MIN", k12="K12MIN", k13="K13MIN", k21="K21MIN", k31="K31MIN"),
        Param(
            "KE0",
            "KE0MIN * 60",
            "1/h",
            "effect-site equilibration rate constant (derived; 7.2 1/h)",
            _SHAFER_DER,
            note=f"0.12 1/min; {_PER_MIN}",
        ),
    ),
    covariates=(),
    routes={"iv": 1},
    notes=(
        "Active moiety: fentanyl; analgesia and adverse effects are driven by the effect-site output CE (mg/L).",
        (
            "Population: models.md gives only 'valid for 40-90 kg' for the Shafer set; no covariates, no IIV. "
            "Outside 40-90 kg the fixed volumes are not appropriate."
        ),
        (
            "ke0 0.12 1/min is the value coded with the Shafer set (opentiva; stanpumpR time to peak effect "
            "3.694 min). Yassen 2007's respiratory-depression ke0 is much slower (0.0422 1/min): CE here is "
            "not the respiratory effect site."
        ),
        "Micro-constants are stored as published (per minute); CL, Q and V are derived (see notes).",
    ),
    references=(
        "Shafer 1990, Anesthesiology (PMID 2248388); parameters via opentiva/opentiva fentanyl.py.",
        "stanpumpR (StevenLShafer/stanpumpR) time to peak effect-site concentration 3.694 min (models.md B1).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Remifentanil: models.md A13, Minto 1997 (Anesthesiology 86:10); equations of AGE and LBM (James).
# --------------------------------------------------------------------------------------------------
_MINTO = "Minto 1997, Anesthesiology 86:10"
_MINTO_EQ = Source(_MINTO, "equations via OT opentiva, PT PyTCI and ST SwiftTCI, which agree (models.md A13)")
_MINTO_KE0 = Source(_MINTO, "ke0 equation via OT/PT/ST (models.md A13, B1)")
_A = "(AGE - 40)"
_L = "(LBM - 55)"

REMIFENTANIL = Drug(
    name="remifentanil",
    drug_class="opioid",
    model="3cmt_iv_effect",
    params=(
        Param(
            "V1",
            f"5.1 - 0.0201*{_A} + 0.072*{_L}",
            "L",
            "central volume (Minto equation)",
            _MINTO_EQ,
            note="V1 = 5.1 - 0.0201*(Age-40) + 0.072*(LBM-55); LBM by the James formula (column LBM)",
        ),
        Param(
            "V2",
            f"9.82 - 0.0811*{_A} + 0.108*{_L}",
            "L",
            "first peripheral volume (Minto equation)",
            _MINTO_EQ,
            note="V2 = 9.82 - 0.0811*(Age-40) + 0.108*(LBM-55)",
        ),
        Param("V3", 5.42, "L", "second peripheral volume", _MINTO_EQ),
        Param(
            "CL",
            f"60 * (2.6 - 0.0162*{_A} + 0.0191*{_L})",
            "L/h",
            "elimination clearance CL1",
            _MINTO_EQ,
            note=f"CL1 = 2.6 - 0.0162*(Age-40) + 0.0191*(LBM-55) L/min; {_PER_MIN}",
        ),
        Param(
            "Q2",
            f"60 * (2.05 - 0.0301*{_A})",
            "L/h",
            "inter-compartmental clearance CL2",
            _MINTO_EQ,
            note=f"CL2 = 2.05 - 0.0301*(Age-40) L/min; {_PER_MIN}",
        ),
        Param(
            "Q3",
            f"60 * (0.076 - 0.00113*{_A})",
            "L/h",
            "inter-compartmental clearance CL3",
            _MINTO_EQ,
            note=f"CL3 = 0.076 - 0.00113*(Age-40) L/min; {_PER_MIN}. Reaches 0 at 107 y",
        ),
        Param(
            "KE0",
            f"60 * (0.595 - 0.007*{_A})",
            "1/h",
            "effect-site equilibration rate constant (EEG)",
            _MINTO_KE0,
            note=f"ke0 = 0.595 - 0.007*(Age-40) 1/min; {_PER_MIN}",
        ),
    ),
    covariates=(),
    routes={"iv": 1},
    notes=(
        "Active moiety: remifentanil; the effect-site output CE (mg/L) follows the EEG ke0 of Minto 1997.",
        (
            "Covariates enter as equations of the dataset columns AGE (years) and LBM (James formula, kg: men "
            "1.1*W - 128*(W/H)^2, women 1.07*W - 148*(W/H)^2); the entry needs both columns."
        ),
        "IIV not given in the code sources (UNVERIFIED in models.md); none is provided.",
        (
            "Studied population not described in models.md (general knowledge, not in models.md: healthy adult "
            "volunteers over a wide age range; UNVERIFIED). The linear equations go non-physiological at extreme "
            "ages (CL3 reaches 0 at 107 y)."
        ),
        (
            "External check (tests): Minto clearance at the Eleveld 2017 reference age vs the Eleveld reference "
            "CL 2.58 L/min (models.md A13 alternative model)."
        ),
    ),
    references=(
        "Minto 1997, Anesthesiology 86:10 (equations via opentiva, PyTCI and SwiftTCI).",
        "Eleveld 2017 remifentanil model (reference values via opentiva; used only as an external check).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Tramadol + M1: models.md A5, Lee 2019 (Drug Des Devel Ther 13:1751), Table 2 via NL Lee_2019_tramadol.
# --------------------------------------------------------------------------------------------------
_LEE = "Lee 2019, Drug Des Devel Ther 13:1751"
_LEE_T2 = Source(_LEE, "Table 2, via NL nlmixr2lib Lee_2019_tramadol (models.md A5)")
_LEE_COV = Source(_LEE, "CYP2D6*10/*10 effect, via NL (models.md A5, D1)")
_LEE_DER = Source(_LEE, "derived: parallel non-M1 and M1-formation routes (models.md A5)")

TRAMADOL = Drug(
    name="tramadol",
    drug_class="opioid",
    model="1cmt_zofo_metabolite",
    params=(
        Param(
            "CLNM",
            16.9,
            "L/h",
            "apparent non-M1 elimination clearance CL/F, reference genotype (*wt/*wt)",
            _LEE_T2,
            iiv_sd=0.2429,
            note="source names it CL/F; IIV omega^2 0.059 -> SD sqrt(0.059) = 0.2429",
        ),
        Param(
            "CLPM",
            4.11,
            "L/h",
            "apparent M1 formation clearance CLPM/F, reference genotype (*wt/*wt)",
            _LEE_T2,
            iiv_sd=0.1304,
            note="IIV omega^2 0.017 -> SD 0.1304",
        ),
        Param(
            "D6CL",
            0.351,
            "1",
            "fractional reduction of CL/F (non-M1) in CYP2D6*10/*10",
            _LEE_COV,
            note="CL/F x (1 - 0.351*G), G = column CYP2D6_10_10 (-35.1%)",
        ),
        Param(
            "D6PM",
            0.528,
            "1",
            "fractional reduction of CLPM/F (M1 formation) in CYP2D6*10/*10",
            _LEE_COV,
            note="CLPM/F x (1 - 0.528*G), G = column CYP2D6_10_10 (-52.8%)",
        ),
        Param(
            "CLNMI",
            "CLNM * (1 - D6CL * CYP2D6_10_10)",
            "L/h",
            "individual non-M1 CL/F (genotype applied)",
            _LEE_COV,
            note="written as an expression because the genotype column name has underscores, "
            "which Covariate does not accept; same as an indicator effect with factor 0.649",
        ),
        Param(
            "CLPMI",
            "CLPM * (1 - D6PM * CYP2D6_10_10)",
            "L/h",
            "individual M1 formation CLPM/F (genotype applied)",
            _LEE_COV,
            note="indicator effect with factor 0.472, written as an expression",
        ),
        Param(
            "CL",
            "CLNMI + CLPMI",
            "L/h",
            "total apparent tramadol clearance (derived; 21.01 L/h reference, 12.91 L/h *10/*10)",
            _LEE_DER,
            note="CL/F and CLPM/F are parallel first-order routes out of CENTRAL, so total CL = sum",
        ),
        Param(
            "FM",
            "CLPMI / (CLNMI + CLPMI)",
            "1",
            "fraction of tramadol elimination forming M1 (derived; 0.196 reference, 0.150 *10/*10)",
            _LEE_DER,
            note="FM = CLPM/(CL/F + CLPM) so that FM*CL = CLPM (M1 formation clearance)",
        ),
        Param("V", 59.9, "L", "apparent volume V/F", _LEE_T2, iiv_sd=0.1517, note="IIV omega^2 0.023 -> SD 0.1517"),
        Param("KA", 0.095, "1/h", "first-order absorption rate constant (first-order fraction)", _LEE_T2),
        Param("FFO", 0.88, "1", "fraction of the dose absorbed first-order (source Fr)", _LEE_T2),
        Param(
            "FZO",
            "1 - FFO",
            "1",
            "fraction of the dose given as lagged zero-order input into CENTRAL (0.12)",
            Source(_LEE, "derived: 1 - Fr, the zero-order share of each dose (models.md A5)"),
            note="complement of Fr: the source splits each dose into Fr (depot) and 1 - Fr (CMT 2)",
        ),
        Param(
            "DZO",
            1.93,
            "h",
            "duration of the zero-order input (source D2)",
            _LEE_T2,
            iiv_sd=0.4012,
            note="IIV omega^2 0.161 -> SD 0.4012",
        ),
        Param("ALAG2", 1.63, "h", "lag of the zero-order input into CENTRAL (source ALAG2, CMT 2 here too)", _LEE_T2),
        Param(
            "CLM",
            15.8,
            "L/h",
            "apparent M1 elimination clearance CLM/F",
            _LEE_T2,
            note="apparent: MW ratio, F and the CYP2D6 fraction are absorbed into CLM/F and VM/F",
        ),
        Param("VM", 8.63, "L", "apparent M1 volume VM/F", _LEE_T2),
    ),
    covariates=(),
    routes={"po_er": 1},
    notes=(
        (
            "Active moiety: M1 (O-desmethyltramadol, output CM) for the opioid analgesia, since CPIC ties "
            "tramadol response to CYP2D6 (models.md D1); parent tramadol (CP) adds a non-opioid component "
            "(general knowledge, not in models.md). CM is in tramadol-mass equivalents on apparent volumes."
        ),
        (
            "Studied: 22 Korean men on SR 100 mg q12h (models.md A5; per the nlmixr2lib file: healthy "
            "volunteers aged 20-40 y, tramadol HCl, genotypes *wt/*wt and *10/*10 only). Not post-surgical, no "
            "women, no elderly; no weight, age or renal covariates."
        ),
        (
            "Route 'po_er' (SR tablet): one dose record into DEPOT is split into 0.88 first-order (KA) and 0.12 "
            "zero-order into CENTRAL over DZO after lag ALAG2. Not for IR capsules (no IR model here). ALAG2 "
            "would also delay any dose given directly into CMT 2."
        ),
        (
            "Genotype: only the CYP2D6*10/*10 indicator (column CYP2D6_10_10) of Lee 2019 is implemented; "
            "poor and ultrarapid metabolisers are outside the study (CPIC: avoid tramadol in PM and UM)."
        ),
        "All clearances and volumes are apparent (/F); IIV as log-scale SD from the source's omega^2.",
    ),
    references=(
        "Lee 2019, Drug Des Devel Ther 13:1751 (Table 2; read via nlmixr2lib Lee_2019_tramadol).",
        "FDA tramadol label via SNPedia (models.md D1): PM parent ~20% higher, M1 ~40% lower (direction only).",
    ),
)

# --------------------------------------------------------------------------------------------------
# Codeine -> morphine: models.md A6, Ashraf 2024 (Clin Pharmacokinet 63:1547), Table 2 via NL.
# --------------------------------------------------------------------------------------------------
_ASHRAF = "Ashraf 2024, Clin Pharmacokinet 63:1547"
_ASHRAF_T2 = Source(_ASHRAF, "Table 2, via NL nlmixr2lib Ashraf_2024_codeine (models.md A6)")
_ASHRAF_ALLO = Source(_ASHRAF, "allometry (WT/80)^0.75 on CL, ^1 on V, codeine and morphine (models.md A6)")
_ASHRAF_AS = Source(_ASHRAF, "f = 0.16*exp(1.00*(AS - 2)); Online Resource Eq. 11, via NL (models.md A6)")
_ASHRAF_DER = Source(_ASHRAF, "fm = f/(1 + f), Online Resource Eq. 14, via NL (models.md A6)")

CODEINE = Drug(
    name="codeine",
    drug_class="opioid",
    model="1cmt_oral_metabolite",
    params=(
        Param(
            "KA",
            8.74,
            "1/h",
            "codeine absorption rate constant",
            _ASHRAF_T2,
            iiv_sd=3.75,
            note="IIV SD 3.75 on the log scale (barely identifiable with two samples per patient)",
        ),
        Param("CL", 110.0, "L/h", "codeine total clearance at 80 kg", _ASHRAF_T2),
        Param("V", 427.5, "L", "codeine central volume at 80 kg", _ASHRAF_T2, iiv_sd=0.181),
        Param("F1", 0.84, "1", "codeine oral bioavailability (doses into DEPOT)", _ASHRAF_T2, iiv_sd=0.024),
        Param(
            "FMR",
            0.16,
            "1",
            "codeine -> morphine ratio f before rescaling, at CYP2D6 AS 2",
            _ASHRAF_T2,
            iiv_sd=0.334,
            note="theta_A of Eq. 11; IIV (SD 0.334) acts on f before the f/(1+f) rescaling",
        ),
        Param("GAS", 1.00, "1", "exponential CYP2D6 activity-score effect on f (per AS unit)", _ASHRAF_AS),
        Param(
            "FAS",
            "FMR * exp(GAS * (CYP2D6_AS - 2))",
            "1",
            "individual f at the patient's activity score",
            _ASHRAF_AS,
            note="f = 0.16*exp(1.00*(AS - 2)); written as an expression because the column "
            "name CYP2D6_AS has an underscore, which Covariate does not accept",
        ),
        Param(
            "FM",
            "FAS / (1 + FAS)",
            "1",
            "fraction of codeine elimination forming morphine (0.138 at AS 2)",
            _ASHRAF_DER,
            note="fm = f/(1+f) keeps the fraction in (0, 1): AS 0 -> 0.021, 1 -> 0.056, "
            "2 -> 0.138, 3 -> 0.303 (models.md A6)",
        ),
        Param("CLM", 357.5, "L/h", "morphine clearance at 80 kg (codeine-mass equivalents)", _ASHRAF_T2, iiv_sd=0.062),
        Param("VM", 22.8, "L", "morphine central volume at 80 kg (codeine-mass equivalents)", _ASHRAF_T2),
    ),
    covariates=(
        Covariate("CL", "WT", "power", 80.0, 0.75, _ASHRAF_ALLO),
        Covariate("V", "WT", "power", 80.0, 1.0, _ASHRAF_ALLO),
        Covariate("CLM", "WT", "power", 80.0, 0.75, _ASHRAF_ALLO),
        Covariate("VM", "WT", "power", 80.0, 1.0, _ASHRAF_ALLO),
    ),
    routes={"po": 1},
    notes=(
        (
            "Active moiety: morphine (output CM, mg/L): analgesia comes from the morphine formed by CYP2D6 "
            "(CPIC: diminished analgesia in poor metabolisers, models.md D1); codeine (CP) is the prodrug."
        ),
        (
            "CM is the morphine concentration on the assay scale, with amounts carried in codeine-mass "
            "equivalents as in the source (no MW ratio; it is absorbed into the morphine volume and CL)."
        ),
        (
            "Studied: 997 Finnish adults, single 60 mg oral codeine before ambulatory surgery (models.md A6, "
            "D1; per the nlmixr2lib file: given with 1 g paracetamol, two samples per patient). Reference "
            "weight 80 kg."
        ),
        (
            "The C6G and M3G compartments of the source are not modelled; codeine elimination not forming "
            "morphine (1 - FM) leaves the system."
        ),
        (
            "The exponential activity-score model leaves fm about 0.021 at AS 0 (models.md A6): a model "
            "artefact, not evidence of residual CYP2D6 activity in poor metabolisers (CPIC: avoid codeine in "
            "PM and UM)."
        ),
    ),
    references=(
        (
            "Ashraf 2024, Clin Pharmacokinet 63:1547 (Table 2, Online Resource Eqs. 11-14; via nlmixr2lib "
            "Ashraf_2024_codeine)."
        ),
        "CPIC CYP2D6 guideline, Crews 2021, Clin Pharmacol Ther 110:888 (activity scores; models.md D1).",
    ),
)

DRUGS: tuple[Drug, ...] = (MORPHINE, HYDROMORPHONE, FENTANYL, REMIFENTANIL, TRAMADOL, CODEINE)
