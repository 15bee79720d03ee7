"""Local-anesthetic entries (models.md A11) and local-anesthetic systemic toxicity (LAST) thresholds (C).

Three entries, collected by :mod:`pkpd.drugs.library`:

``bupivacaine``
    Plain bupivacaine HCl. Burm 1987 two-compartment disposition with the inter-compartmental clearance
    derived from the published terminal half-life (see :func:`burm_intercompartmental_clearance`) and a
    first-order tissue-absorption depot for infiltration / perineural injection; IV doses go to CENTRAL.
``bupivacaine_liposomal``
    Liposomal bupivacaine (Exparel). No population model is published (models.md A11 "gap"), so this is
    this project's biphasic depot-release model on the same Burm disposition, calibrated by
    ``benchmarks/calibrate_liposomal_bupivacaine.py`` to the label NCA data. Site-specific parameter sets
    are in :data:`LIPOSOMAL_SITE_FITS` (:func:`bupivacaine_liposomal_for_site`).
``ropivacaine``
    Ollier 2015 plane-block model with total and unbound drug and a postoperative rise of AAG-like
    binding sites. Elimination acts on unbound drug, so the model (``ropivacaine_ollier2015``, registered
    here) is nonlinear and is solved with the ODE solver. ``CP`` is the TOTAL concentration; the unbound
    concentration is :func:`ropivacaine_unbound` of it.

:data:`LAST_THRESHOLDS` lists the toxicity thresholds of models.md section C in mg/L.

Units: time h, amount mg, volume L, clearance L/h, rate constants 1/h, concentration mg/L (= ug/mL).

>>> from pkpd.drugs import get_drug
>>> get_drug("exparel").name
'bupivacaine_liposomal'
>>> round(last_threshold("bupivacaine", "total", "CNS").value, 3)
2.0
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ..errors import ModelSpecError
from ..models import CompartmentModel, register_model
from ..models import Param as ModelParam
from ._base import Covariate, Drug, Param, Source

__all__ = [
    "BUPIVACAINE",
    "BUPIVACAINE_LIPOSOMAL",
    "DRUGS",
    "EXPAREL_LABEL_LIMITS",
    "LAST_THRESHOLDS",
    "LIPOSOMAL_SITE_FITS",
    "ROPIVACAINE",
    "ROPIVACAINE_MODEL",
    "ToxicityThreshold",
    "bupivacaine_liposomal_for_site",
    "burm_intercompartmental_clearance",
    "last_threshold",
    "ropivacaine_binding_sites",
    "ropivacaine_unbound",
]

_GK = "general knowledge, not in models.md"

# ==================================================================================================
# Bupivacaine, plain: models.md A11. Burm 1987 (Clin Pharmacokinet 13:191) disposition as quoted by a
# public R source (looks like a stanpumpR development file); tissue absorption ka from the same file.
# ==================================================================================================
_BURM = "Burm 1987, Clin Pharmacokinet 13:191"
_BURM_SRC = Source(
    _BURM,
    "IV tracer, surgical adults: Vc 33 L, Vss 68 L, CL 0.52 L/min, terminal t1/2 143 min; "
    "models.md A11, read in a public R source quoting Burm (looks like a stanpumpR "
    "development file)",
)
_BURM_DERIVED = Source(
    _BURM,
    "derived from Vc, Vss, CL and terminal t1/2 (models.md A11); derivation by this "
    "library, see burm_intercompartmental_clearance",
)
_KA_SRC = Source(
    "Robison 1991, Br J Anaesth 66:228",
    "ka 0.0187 1/min (provisional, fitted to one peak: mean 1.66 ug/mL after 168.75 mg femoral + "
    "sciatic block); models.md A11, same public R source as the Burm disposition",
)
_FU_SRC = Source("bupivacaine plasma protein binding about 95 %", _GK, unverified=True)

#: Published Burm 1987 values in the source's units (models.md A11), used by the derivation below.
BURM_1987 = {"Vc_L": 33.0, "Vss_L": 68.0, "CL_L_per_min": 0.52, "t_half_terminal_min": 143.0}


def burm_intercompartmental_clearance(v1: float, vss: float, cl: float, t_half: float) -> float:
    """Inter-compartmental clearance Q giving a 2-compartment model a prescribed terminal half-life.

    For ``dx/dt = K x`` with ``k10 = CL/V1``, ``k12 = Q/V1``, ``k21 = Q/V2`` (``V2 = Vss - V1``) the
    disposition rate constants ``alpha > beta`` satisfy ``alpha + beta = k10 + k12 + k21`` and
    ``alpha * beta = k10 * k21``. Eliminating ``alpha`` with ``beta = ln 2 / t_half`` gives an equation
    linear in ``Q``::

        beta**2 - beta*k10 - Q*beta*(1/V1 + 1/V2) + Q*k10/V2 = 0
        Q = beta*(k10 - beta) / (k10/V2 - beta*(1/V1 + 1/V2))

    A positive solution exists iff ``beta < CL/Vss`` (the terminal phase must be slower than the
    well-stirred one-compartment rate). Burm 1987: 143 min > ln2*Vss/CL = 90.6 min, so it exists.

    Parameters
    ----------
    v1, vss
        Central volume and steady-state volume (same volume unit).
    cl
        Clearance (volume unit per time unit).
    t_half
        Terminal half-life (same time unit as ``cl``).

    Returns
    -------
    float
        Q in the volume and time units of the inputs (Burm, L and min: 0.3208 L/min = 19.25 L/h).
    """
    v2 = vss - v1
    beta = math.log(2.0) / t_half
    k10 = cl / v1
    den = k10 / v2 - beta * (1.0 / v1 + 1.0 / v2)
    if not (v2 > 0 and beta < cl / vss and den > 0):
        raise ModelSpecError("no 2-compartment model has this terminal half-life (need t1/2 > ln2*Vss/CL)")
    return beta * (k10 - beta) / den


_Q_EXPR = "LAMZ * (CL / V1 - LAMZ) / (CL / V1 / V2 - LAMZ * (1 / V1 + 1 / V2))"
_Q_NOTE = (
    "Burm 1987 gives Vc, Vss, CL and the terminal t1/2 but no Q. Q is the unique value for which the "
    "smaller eigenvalue of the 2-cmt rate matrix equals LAMZ = ln2/t1/2: from alpha+beta = k10+k12+k21 "
    "and alpha*beta = k10*k21 with beta = LAMZ, Q = beta*(k10-beta)/(k10/V2 - beta*(1/V1+1/V2)), "
    "k10 = CL/V1. Value 0.3208 L/min = 19.25 L/h (alpha: t1/2 23.3 min). Checked against numpy "
    "eigenvalues in tests/test_drugs_local_anesthetics.py."
)

_BURM_PARAMS = (
    Param("V1", 33.0, "L", "central volume Vc", _BURM_SRC),
    Param("VSS", 68.0, "L", "volume of distribution at steady state", _BURM_SRC),
    Param(
        "V2",
        "VSS - V1",
        "L",
        "peripheral volume, Vss - Vc (= 35 L)",
        _BURM_DERIVED,
        note="2-compartment model: Vss = V1 + V2",
    ),
    Param("CL", 31.2, "L/h", "total (IV) clearance", _BURM_SRC, note="0.52 L/min x 60 (source in L/min)"),
    Param("THALF", 143.0, "min", "terminal elimination half-life", _BURM_SRC),
    Param(
        "LAMZ",
        "log(2) / (THALF / 60)",
        "1/h",
        "terminal disposition rate constant (beta = 0.2908 1/h)",
        _BURM_DERIVED,
        note="unit conversion min -> h",
    ),
    Param("Q", _Q_EXPR, "L/h", "inter-compartmental clearance (derived, = 19.25 L/h)", _BURM_DERIVED, note=_Q_NOTE),
    Param(
        "FU",
        0.05,
        "1",
        "unbound fraction in plasma (for LAST risk from total concentrations)",
        _FU_SRC,
        unverified=True,
        note=f"{_GK}: bupivacaine is about 95 % protein bound (mostly AAG); AAG rises "
        "after surgery, so the unbound fraction is time-varying. Not used by the model.",
    ),
)

BUPIVACAINE = Drug(
    name="bupivacaine",
    drug_class="local-anesthetic",
    model="2cmt_oral",
    params=_BURM_PARAMS
    + (
        Param(
            "KA",
            1.122,
            "1/h",
            "first-order absorption from the injection site (infiltration / perineural)",
            _KA_SRC,
            note="0.0187 1/min x 60. Provisional: fitted to one mean peak (Robison 1991, femoral + "
            "sciatic block). Martin & Neill 1987 abdominal infiltration suggests ka ~0.024 1/min "
            "(1.44 1/h); absorption is site dependent.",
        ),
    ),
    routes={"infiltration": 1, "perineural": 1, "iv": 2},
    notes=(
        (
            "Plain bupivacaine HCl. Disposition: Burm 1987 (IV tracer in surgical adults), 2-cmt. "
            "Q is derived from the terminal t1/2 (parameter Q note)."
        ),
        (
            "Absorption from the injection site is first order with a provisional ka fitted to a single mean peak "
            "(Robison 1991: 1.66 ug/mL after 168.75 mg femoral + sciatic block). Site matters: Martin & Neill 1987, "
            "Br J Anaesth 59:1425, 200 mg abdominal infiltration peaked at 2.23 ug/mL (ka ~0.024 1/min). For "
            "spine-wound infiltration, treat ka as uncertain between these."
        ),
        "Complete absorption from the depot is assumed (F1 = 1); no IIV is published for this model.",
        "Routes: 'infiltration' and 'perineural' dose into DEPOT (CMT 1); 'iv' doses into CENTRAL (CMT 2).",
        (
            "LAST thresholds (total 2.0 mg/L CNS, 4.0 mg/L cardiac; unbound 0.3 mg/L): see LAST_THRESHOLDS. "
            "FU (unbound fraction 0.05) is general knowledge, UNVERIFIED."
        ),
        (
            "Sum bupivacaine from all sources (plain + liposomal) when checking thresholds: both entries share the "
            "linear Burm disposition, so their simulated CP add."
        ),
    ),
    references=(
        "Burm 1987, Clin Pharmacokinet 13:191 (disposition; read via a public R source, models.md A11).",
        "Robison 1991, Br J Anaesth 66:228 (mean peak 1.66 ug/mL after 168.75 mg femoral + sciatic block).",
        "Martin & Neill 1987, Br J Anaesth 59:1425 (200 mg abdominal infiltration, peak 2.23 ug/mL).",
    ),
)

# ==================================================================================================
# Liposomal bupivacaine (Exparel): no population model published (models.md A11 gap). This project's
# biphasic depot-release model on the Burm disposition, calibrated to the label NCA (LBL, exparel.com
# pharmacokinetics page) by benchmarks/calibrate_liposomal_bupivacaine.py.
# ==================================================================================================
_LBL = "Exparel label NCA (LBL: exparel.com pharmacokinetics page; models.md A11)"

#: Release parameters fitted by ``benchmarks/calibrate_liposomal_bupivacaine.py`` (scipy least squares on
#: simulated Cmax, Tmax and terminal half-life, log residuals; 3 parameters on 3 targets per site).
#: FR: immediately available fraction (absorbed with KA, 1/h); 1 - FR: liposomal fraction released
#: first-order with KA2 (1/h). ``fitted_to`` names the label data used; the rest was only compared.
LIPOSOMAL_SITE_FITS: dict[str, dict] = {
    "hemorrhoidectomy": {
        "FR": 0.1962,
        "KA": 3.055,
        "KA2": 0.02888,
        "FR_CV": 0.45,
        "FR_CV_note": "0.45 gives a peak-concentration CV of 41 % after 266 mg, the label's 353/867 ng/mL "
        "(this project's choice; the label gives only the Cmax SD)",
        "fitted_to": "266 mg: Cmax 867 ng/mL, Tmax 0.5 h, t1/2 24 h",
    },
    "bunionectomy": {
        "FR": 0.3040,
        "KA": 0.2783,
        "KA2": 0.02039,
        "FR_CV": 0.62,
        "FR_CV_note": "0.62 gives a peak-concentration CV of about 56 % after 106 mg, the label's 92.7/166 "
        "ng/mL (this project's choice; the label gives only the Cmax SD)",
        "fitted_to": "106 mg: Cmax 166 ng/mL, Tmax 2 h, t1/2 34 h",
    },
}

#: Label limits (models.md C, LBL 2018 highlights; the 96-h rule as recorded in clinical.md 3.1).
EXPAREL_LABEL_LIMITS = {
    "max_infiltration_mg": 266.0,
    "max_interscalene_mg": 133.0,
    "no_other_local_anesthetic_within_h": 96.0,
}

_CAL_NOTE = (
    "this project's calibration, not a published estimate: fitted by "
    "benchmarks/calibrate_liposomal_bupivacaine.py to the {site} label NCA ({data}); Burm 1987 "
    "disposition held fixed"
)


def _liposomal_params(site: str) -> tuple[Param, ...]:
    fit = LIPOSOMAL_SITE_FITS[site]
    src = Source(_LBL, f"calibrated by this project to the {site} NCA ({fit['fitted_to']})")
    note = _CAL_NOTE.format(site=site, data=fit["fitted_to"])
    return _BURM_PARAMS + (
        Param(
            "FR",
            fit["FR"],
            "1",
            "immediately available (extra-liposomal / early-release) fraction of the dose, absorbed with KA",
            src,
            iiv_cv=fit["FR_CV"],
            note=note + ". Larger than the formulation's free-drug content: it lumps free drug and liposomes that "
            "break up early at the site. IIV (CV, log-normal): " + fit["FR_CV_note"],
        ),
        Param("KA", fit["KA"], "1/h", "absorption rate constant of the immediately available fraction", src, note=note),
        Param(
            "KA2",
            fit["KA2"],
            "1/h",
            "first-order release rate constant of the liposomal fraction "
            f"(release t1/2 = {math.log(2) / fit['KA2']:.1f} h)",
            src,
            note=note + ". Release is much slower than disposition (beta 0.29 1/h), so the terminal "
            "half-life is ln2/KA2 (flip-flop).",
        ),
    )


_LIPO_NOTES = (
    (
        "NO published population PK model exists for liposomal bupivacaine (models.md A11 gap). This entry is this "
        "project's empirical biphasic depot-release model: Burm 1987 disposition (as plain bupivacaine) with a "
        "dose into DEPOT_FAST (CMT 1) split into an immediately available fraction FR absorbed with KA and a "
        "liposomal fraction 1 - FR released first-order with KA2 (model 2cmt_dual)."
    ),
    (
        "Why first-order release: the label reports terminal half-lives of 24-34 h against 2.4 h for plain "
        "bupivacaine, i.e. release-rate-limited (flip-flop) kinetics; one first-order rate reproduces a terminal "
        "half-life exactly and, with FR and KA, the early peak: three parameters identifiable from the three NCA "
        "numbers per site (Cmax, Tmax, t1/2). A more detailed law (Weibull, two liposome pools) is not identifiable "
        "from these data."
    ),
    (
        "Calibration (benchmarks/calibrate_liposomal_bupivacaine.py): FITTED to the label hemorrhoidectomy NCA "
        "(266 mg: Cmax 867 ng/mL, Tmax 0.5 h, t1/2 24 h), the default here, and separately to bunionectomy "
        "(106 mg: Cmax 166 ng/mL, Tmax 2 h, t1/2 34 h), available via bupivacaine_liposomal_for_site. ONLY "
        "COMPARED (not fitted): 266 mg SC in volunteers Cmax 129 +- 47 ng/mL (Clin Drug Investig 2017) and 266 mg in "
        "Chinese adults, geometric mean Cmax 170.9 ng/mL rising through 24 h (BMC Anesthesiol 2021). The default "
        "over-predicts both (Cmax 867 ng/mL: 6.7x and 5.1x); the bunionectomy set at 266 mg gives 417 ng/mL (3.2x and "
        "2.4x); neither reproduces a profile rising through 24 h, which first-order release cannot produce "
        "together with an early peak. A joint fit of one set to both label sites misses them by 30-100 % (script "
        "output), hence the site-specific sets."
    ),
    (
        "The default (hemorrhoidectomy, highly vascular perianal site) gives the highest Cmax of the published "
        "data: conservative for LAST margins, optimistic for duration of analgesia."
    ),
    (
        "Site drives Tmax (and Cmax per mg): 0.5 h after hemorrhoidectomy vs 2 h after bunionectomy, Cmax/dose "
        "3.3 vs 1.6 ng/mL per mg. Spine-wound infiltration (paraspinal muscle and subcutaneous tissue) lies "
        "between these sites; no spine PK data are in models.md, so simulate both site sets as bounds."
    ),
    (
        "Label limits: maximum 266 mg (20 mL) for infiltration, 133 mg for interscalene block; not bioequivalent "
        "to bupivacaine HCl (models.md C, LBL). No other local anaesthetic within 96 h (clinical.md 3.1, LB label; "
        "the exact label wording was not re-read here): simulate cumulative bupivacaine from all sources."
    ),
    (
        "Complete release and absorption assumed (F = 1). Between-patient variability: the label gives only the "
        "Cmax SD (hemorrhoidectomy 353 of 867 ng/mL, CV 41 %; bunionectomy 92.7 of 166 ng/mL, CV 56 %), so the "
        "immediately available fraction FR carries a log-normal IIV chosen to reproduce that CV (FR_CV of "
        "LIPOSOMAL_SITE_FITS; the typical values stay the label fit, so the population mean Cmax lies about 7 % "
        "above the label mean). With it the probability of a total peak above 2,000 ng/mL after 266 mg is a real "
        "tail probability (about 1-2 % at the hemorrhoidectomy site), not a constant."
    ),
)


def bupivacaine_liposomal_for_site(site: str) -> Drug:
    """The liposomal-bupivacaine entry with the release parameters calibrated to one surgical site.

    Parameters
    ----------
    site
        A key of :data:`LIPOSOMAL_SITE_FITS`: ``"hemorrhoidectomy"`` (the library default, highest Cmax)
        or ``"bunionectomy"`` (slower early absorption, longer terminal half-life).

    Returns
    -------
    Drug
        A copy of :data:`BUPIVACAINE_LIPOSOMAL` named ``bupivacaine_liposomal_<site>`` (not in the library).
    """
    if site not in LIPOSOMAL_SITE_FITS:
        raise ModelSpecError(f"unknown site {site!r}; calibrated sites: {sorted(LIPOSOMAL_SITE_FITS)}")
    return dataclasses.replace(
        BUPIVACAINE_LIPOSOMAL, name=f"bupivacaine_liposomal_{site}", params=_liposomal_params(site)
    )


BUPIVACAINE_LIPOSOMAL = Drug(
    name="bupivacaine_liposomal",
    drug_class="local-anesthetic",
    model="2cmt_dual",
    params=_liposomal_params("hemorrhoidectomy"),
    routes={"infiltration": 1},
    notes=_LIPO_NOTES,
    references=(
        (
            "Exparel label NCA (exparel.com pharmacokinetics page; models.md A11): bunionectomy 106 mg Cmax 166 "
            "(SD 92.7) ng/mL, Tmax 2 h, t1/2 34 h; hemorrhoidectomy 266 mg Cmax 867 (353) ng/mL, Tmax 0.5 h, "
            "t1/2 24 h."
        ),
        "Exparel 2018 label highlights (models.md C): 266 mg maximum for infiltration, 133 mg interscalene.",
        "Clin Drug Investig 2017, doi 10.1007/s40261-017-0495-2 (266 mg SC volunteers; compared only).",
        "BMC Anesthesiol 2021, doi 10.1186/s12871-021-01407-5 (266 mg Chinese adults; compared only).",
        "Burm 1987, Clin Pharmacokinet 13:191 (disposition, shared with plain bupivacaine).",
    ),
)

# ==================================================================================================
# Ropivacaine: Ollier 2015 (Br J Clin Pharmacol 80:67), TAP block, via NL nlmixr2lib
# Ollier_2015_ropivacaine (Table 2). Total + unbound drug with AAG-like binding sites.
# ==================================================================================================
_OLLIER = "Ollier 2015, Br J Clin Pharmacol 80:67"
_OLLIER_T2 = Source(_OLLIER, "Table 2, via NL nlmixr2lib Ollier_2015_ropivacaine (models.md A11)")
_OLLIER_CONV = Source(
    _OLLIER, "Table 2 value (uM) converted to mg/L with the molecular weight MW; via NL (models.md A11)"
)
_MW_SRC = Source("ropivacaine free base C17H26N2O, 274.4 g/mol", _GK, unverified=True)

#: Molecular weight of ropivacaine (free base), g/mol: general knowledge, not in models.md (UNVERIFIED).
ROPIVACAINE_MW = 274.4
#: Ollier 2015 typical binding values (Table 2 via NL, models.md A11) in the source's molar units.
OLLIER_2015 = {"Kd_uM": 0.557, "BS0_uM": 71.2, "kin_uM_per_h": 1.57, "t_kin_h": 12.0}


def _unbound_from_total(c, b, kd, xp):
    """Unbound concentration from total ``c`` with ``b`` binding sites (1:1, dissociation constant ``kd``).

    Solves ``c = cu + b*cu/(kd + cu)``, i.e. ``cu**2 + (kd + b - c)*cu - kd*c = 0``, positive root, in the
    cancellation-free form for either sign of ``kd + b - c``. All in one concentration unit.
    """
    c = xp.maximum(c, 0.0)
    bq = kd + b - c
    disc = xp.sqrt(bq * bq + 4.0 * kd * c)
    pos = bq >= 0.0
    # bq >= 0: 2*kd*c/(bq + disc) (denominator >= kd + b > 0); bq < 0: (disc - bq)/2 (no cancellation)
    den = xp.where(pos, bq + disc, 1.0)
    return xp.where(pos, 2.0 * kd * c / den, 0.5 * (disc - bq))


def _binding_sites(t, b0, kin, tkin, xp):
    return b0 + kin * xp.maximum(t - tkin, 0.0)


def ropivacaine_binding_sites(
    t_h,
    *,
    bs0_um: float = OLLIER_2015["BS0_uM"],
    kin_um_per_h: float = OLLIER_2015["kin_uM_per_h"],
    t_kin_h: float = OLLIER_2015["t_kin_h"],
    mw: float = ROPIVACAINE_MW,
):
    """Total binding-site concentration (free + occupied) of the Ollier 2015 model, in mg/L-equivalents.

    ``B(t) = BS0 + kin * max(t - t_kin, 0)``: constant 71.2 uM until 12 h, then produced at 1.57 uM/h.
    Binding and unbinding conserve free + occupied sites, so B(t) is known without solving the model.

    Parameters
    ----------
    t_h
        Hours since the first block (Ollier: first TAP bolus at incision). Array-like.
    bs0_um, kin_um_per_h, t_kin_h
        Ollier 2015 values by default (Table 2 via NL).
    mw
        Molecular weight (g/mol) for uM -> mg/L (general knowledge, UNVERIFIED).

    Returns
    -------
    numpy.ndarray
        Binding capacity in mg/L of ropivacaine it can bind.
    """
    t = np.asarray(t_h, dtype=float)
    return _binding_sites(t, bs0_um, kin_um_per_h, t_kin_h, np) * mw / 1000.0


def ropivacaine_unbound(
    total_mg_per_L,
    t_h,
    *,
    bs0_um: float = OLLIER_2015["BS0_uM"],
    kin_um_per_h: float = OLLIER_2015["kin_uM_per_h"],
    kd_um: float = OLLIER_2015["Kd_uM"],
    t_kin_h: float = OLLIER_2015["t_kin_h"],
    mw: float = ROPIVACAINE_MW,
):
    """Unbound ropivacaine concentration from the total, by the Ollier 2015 binding equation.

    Solves ``total = Cu + B(t)*Cu/(Kd + Cu)`` for ``Cu`` (rapid 1:1 binding equilibrium), with ``B(t)``
    from :func:`ropivacaine_binding_sites`. Use it on the entry's simulated ``CP`` (total) to compare with
    the unbound LAST threshold (0.6 mg/L, Knudsen 1997).

    Parameters
    ----------
    total_mg_per_L
        Total plasma concentration (mg/L). Array-like, broadcast with ``t_h``.
    t_h
        Hours since the first block (the entry's time convention).
    bs0_um, kin_um_per_h, kd_um, t_kin_h
        Binding parameters in the source's molar units (Ollier 2015 typical values by default).
    mw
        Molecular weight (g/mol), general knowledge (UNVERIFIED).

    Returns
    -------
    numpy.ndarray
        Unbound concentration (mg/L).

    Examples
    --------
    >>> cu = ropivacaine_unbound(1.0, 0.0)          # 1 mg/L total before the AAG rise
    >>> round(float(cu / 1.0), 4)                   # unbound fraction ~ Kd/(Kd + B) = 0.0078
    0.0082
    """
    c = np.asarray(total_mg_per_L, dtype=float)
    b = ropivacaine_binding_sites(t_h, bs0_um=bs0_um, kin_um_per_h=kin_um_per_h, t_kin_h=t_kin_h, mw=mw)
    return _unbound_from_total(c, b, kd_um * mw / 1000.0, np)


def _ropivacaine_nonlinear(t, x, p, forcing):
    """Unbound-drug elimination: ``dA/dt -= CLU * Cu(A/V, B(t))`` (CENTRAL holds total drug, mg)."""
    ctot = x[1] / p["V"]
    b = _binding_sites(t, p["BS0"], p["KIN"], p["TKIN"], jnp)
    cu = _unbound_from_total(ctot, b, p["KD"], jnp)
    return jnp.zeros(2, dtype=x.dtype).at[1].add(-p["CLU"] * cu)


ROPIVACAINE_MODEL = register_model(
    CompartmentModel(
        name="ropivacaine_ollier2015",
        compartments=("DEPOT", "CENTRAL"),
        params=(
            ModelParam("KA", "1/h", "first-order absorption from the block site"),
            ModelParam("V", "L", "apparent volume V/F shared by unbound and bound drug"),
            ModelParam("CLU", "L/h", "apparent clearance CL/F of UNBOUND drug"),
            ModelParam("KD", "mg/L", "dissociation constant of drug-binding-site complex"),
            ModelParam("BS0", "mg/L", "binding sites from 0 to TKIN (drug-mass equivalents)"),
            ModelParam("KIN", "mg/L/h", "zero-order production of binding sites from TKIN on"),
            ModelParam(
                "TKIN", "h", "time (since the first block) at which binding-site production starts", lower=-math.inf
            ),
        ),
        central=1,
        volume="V",
        linear_terms=((0, 0, lambda p: -p["KA"]), (1, 0, lambda p: p["KA"])),
        blocks=((0,), (1,)),
        description=(
            "ropivacaine, Ollier 2015: 1-cmt, first-order absorption; CENTRAL holds TOTAL drug with "
            "rapid 1:1 binding to sites B(t) = BS0 + KIN*max(t - TKIN, 0); elimination CLU*Cu of the "
            "unbound concentration (nonlinear). CP = total concentration. Model time = hours since the "
            "first block."
        ),
        nonlinear=_ropivacaine_nonlinear,
        references=(f"{_OLLIER} (doi 10.1111/bcp.12582).",),
    )
)

ROPIVACAINE = Drug(
    name="ropivacaine",
    drug_class="local-anesthetic",
    model="ropivacaine_ollier2015",
    params=(
        Param(
            "KA",
            3.58,
            "1/h",
            "first-order absorption rate constant from the TAP (plane-block) site",
            _OLLIER_T2,
            iiv_sd=0.854,
        ),
        Param(
            "V", 103.0, "L", "apparent volume V/F (70 kg), shared by unbound and bound drug", _OLLIER_T2, iiv_sd=0.452
        ),
        Param(
            "CLU",
            1310.0,
            "L/h",
            "apparent clearance CL/F of UNBOUND ropivacaine",
            _OLLIER_T2,
            iiv_sd=0.410,
            note="620 L/h if >= 3 liver segments were resected (Ollier's covariate); not implemented: no "
            "dataset column describes liver resection (HEPATIC is hepatic impairment, not resection)",
        ),
        Param(
            "KDUM",
            0.557,
            "uM",
            "dissociation constant of the ropivacaine-binding-site complex",
            _OLLIER_T2,
            note="fixed in the source (strong prior; no RSE)",
        ),
        Param("BS0UM", 71.2, "uM", "binding-site concentration from 0 to 12 h", _OLLIER_T2, iiv_sd=0.443),
        Param(
            "KINUM",
            1.57,
            "uM/h",
            "binding-site production rate from 12 h",
            _OLLIER_T2,
            iiv_sd=0.150,
            note="Table 2 labels the unit 1/h; NL reads it as uM/h (the ODE needs a concentration rate)",
        ),
        Param(
            "TKIN",
            12.0,
            "h",
            "time after the first block at which binding-site production starts",
            _OLLIER_T2,
            note="Ollier: sites approximated constant between the first two doses (0-12 h), "
            "production from the 2nd bolus (12 h post-incision)",
        ),
        Param(
            "MW",
            ROPIVACAINE_MW,
            "g/mol",
            "molecular weight of ropivacaine (free base)",
            _MW_SRC,
            unverified=True,
            note=f"{_GK}; consistent with Ollier's 3 mg/kg = 10.9 umol/kg (NL vignette)",
        ),
        Param(
            "KD",
            "KDUM * MW / 1000",
            "mg/L",
            "Kd in mg/L (= 0.1528 mg/L)",
            _OLLIER_CONV,
            note="uM x g/mol = ug/L; / 1000 -> mg/L",
        ),
        Param(
            "BS0",
            "BS0UM * MW / 1000",
            "mg/L",
            "binding sites 0-12 h in mg/L-equivalents (= 19.54 mg/L)",
            _OLLIER_CONV,
            note="uM -> mg/L with MW",
        ),
        Param(
            "KIN",
            "KINUM * MW / 1000",
            "mg/L/h",
            "binding-site production in mg/L/h (= 0.4308 mg/L/h)",
            _OLLIER_CONV,
            note="uM/h -> mg/L/h with MW",
        ),
    ),
    covariates=(
        Covariate(
            "V",
            "WT",
            "power",
            70.0,
            1.28,
            _OLLIER_T2,
            note="source: ln(theta) = ln(theta_pop) + 1.28*(ln WT - ln 70), i.e. the power form",
        ),
    ),
    routes={"infiltration": 1},
    notes=(
        (
            "Ollier 2015: 16 liver-resection patients, TAP catheter, 3 mg/kg q12h x 5, free + total measured. "
            "V/F and CL/F are apparent (F not identified; F = 1 assumed)."
        ),
        (
            "TIME CONVENTION: model time is absolute time in hours since the FIRST BLOCK (TIME 0 = first bolus). "
            "In Ollier the first TAP bolus was given at incision and binding-site production starts 12 h later "
            "(TKIN = 12 h), i.e. 12 h after incision. For a block given at the end of an N-hour surgery, this "
            "library's reading is TKIN = 12 - N (TKIN may be <= 0). Steady-state (SS) dosing is not meaningful with "
            "time-varying binding; give the doses explicitly."
        ),
        (
            "Structure: CENTRAL holds TOTAL drug; binding is taken at rapid equilibrium (the source used a binding "
            "rate kb = 1e12 1/(uM h) and reports no effect of kb over 1e2-1e15, per NL), so the unbound concentration "
            "solves total = Cu + B(t)*Cu/(KD + Cu) with B(t) = BS0 + KIN*max(t - TKIN, 0) (free + occupied sites; "
            "binding conserves them). Elimination CLU*Cu acts on unbound drug: nonlinear, ODE solver."
        ),
        (
            "CP is the TOTAL concentration (mg/L). Unbound: ropivacaine_unbound(CP, TIME). Postoperative AAG rise "
            "makes total concentration climb over repeated doses while unbound drug is buffered (models.md C); "
            "compare unbound with the 0.6 mg/L threshold, not total."
        ),
        (
            "Caveat (models.md E): nlmixr2lib dropped the paper's fibrinogen-slope covariate on kin (mean slope not "
            "reported); the typical kin is used. Check against the PDF before production use."
        ),
        "Covariates: V ~ (WT/70)^1.28. Liver-resection effect on CLU (1310 -> 620 L/h) not implemented.",
        "Molecular weight 274.4 g/mol (uM -> mg/L) is general knowledge, UNVERIFIED.",
        (
            "The NL vignette also plots a 'toxic threshold 0.55 uM' (free) attributed to Ollier's Discussion; "
            "0.55 uM = 0.15 mg/L is 4x below Knudsen's 0.6 mg/L. Unresolved; not used here."
        ),
    ),
    references=(
        (
            "Ollier 2015, Br J Clin Pharmacol 80:67 (Table 2; read via nlmixr2lib Ollier_2015_ropivacaine and its "
            "vignette)."
        ),
        (
            "Knudsen 1997, Br J Anaesth 78:507 (unbound toxicity thresholds; first-author attribution UNVERIFIED "
            "in models.md)."
        ),
    ),
)

DRUGS: tuple[Drug, ...] = (BUPIVACAINE, BUPIVACAINE_LIPOSOMAL, ROPIVACAINE)

# ==================================================================================================
# LAST thresholds: models.md section C.
# ==================================================================================================


@dataclass(frozen=True)
class ToxicityThreshold:
    """A local-anesthetic systemic toxicity (LAST) threshold concentration.

    Attributes
    ----------
    drug
        ``"bupivacaine"`` or ``"ropivacaine"`` (applies to liposomal bupivacaine too: same molecule).
    species
        ``"total"`` or ``"unbound"`` plasma concentration.
    effect
        ``"CNS"`` (first symptoms) or ``"cardiac"``.
    value
        Threshold in mg/L (= ug/mL).
    source
        Where the number was read (models.md section C).
    unverified
        True where models.md marks the value UNVERIFIED.
    note
        Unit conversion, sampling site, caveats.
    """

    drug: str
    species: str
    effect: str
    value: float
    source: Source
    unverified: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if self.species not in ("total", "unbound"):
            raise ModelSpecError(f"species must be 'total' or 'unbound', got {self.species!r}")
        if not self.value > 0:
            raise ModelSpecError("threshold value must be > 0 (mg/L)")

    @property
    def is_unverified(self) -> bool:
        return bool(self.unverified or self.source.unverified)


_HCP = Source(
    "Exparel manufacturer HCP page (exparel.com, citing its refs 5-6)",
    "models.md C; repeated in the Clin Drug Investig 2017 and BMC Anesthesiol 2021 abstracts",
)
_KNUDSEN = Source(
    "Knudsen 1997, Br J Anaesth 78:507",
    "ABS, models.md C (first-author attribution UNVERIFIED in models.md; journal/volume/page seen)",
)
_ROPI_TOTAL = Source("commonly cited value (models.md C, no source)", "models.md C: UNVERIFIED", unverified=True)

#: LAST thresholds of models.md section C, in mg/L.
LAST_THRESHOLDS: tuple[ToxicityThreshold, ...] = (
    ToxicityThreshold("bupivacaine", "total", "CNS", 2.0, _HCP, note="~2000 ng/mL = 2.0 mg/L; CNS symptoms"),
    ToxicityThreshold("bupivacaine", "total", "cardiac", 4.0, _HCP, note=">= 4000 ng/mL = 4.0 mg/L"),
    ToxicityThreshold(
        "bupivacaine", "unbound", "CNS", 0.3, _KNUDSEN, note="mean free concentration at CNS toxicity ~0.3 mg/L"
    ),
    ToxicityThreshold(
        "ropivacaine",
        "unbound",
        "CNS",
        0.6,
        _KNUDSEN,
        note="~0.6 mg/L; maximum tolerated unbound arterial concentration twice bupivacaine's",
    ),
    ToxicityThreshold(
        "ropivacaine",
        "total",
        "CNS",
        2.2,
        _ROPI_TOTAL,
        unverified=True,
        note="~2.2 ug/mL venous (commonly cited; UNVERIFIED); ~4.3 ug/mL arterial also cited",
    ),
)


def last_threshold(drug: str, species: str = "total", effect: str = "CNS") -> ToxicityThreshold:
    """The LAST threshold for ``drug`` (``"bupivacaine"``, ``"bupivacaine_liposomal"``, ``"ropivacaine"``).

    Raises :class:`ModelSpecError` when models.md section C gives none for this combination.
    """
    key = "bupivacaine" if drug.lower().startswith("bupivacaine") else drug.lower()
    for th in LAST_THRESHOLDS:
        if (th.drug, th.species, th.effect.lower()) == (key, species, effect.lower()):
            return th
    raise ModelSpecError(
        f"no LAST threshold for {drug} {species} {effect} in models.md C; known: "
        + ", ".join(f"{t.drug}/{t.species}/{t.effect}" for t in LAST_THRESHOLDS)
    )
