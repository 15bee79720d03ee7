"""Pharmacodynamics: analgesic potency, effect sites, the combination rule, and adverse-effect models.

Every number is a :class:`PDValue` carrying its :class:`~pkpd.drugs.Source` and an ``unverified`` flag.
Where ``shared/reference/models.md`` (sections B1-B6) or ``clinical.md`` gives a value it is cited; the
gaps listed in models.md section E (no adult Emax model for NSAIDs, gabapentinoids, ketamine or local
anaesthetics; no sedation or PONV model with parameters) are filled with **assumptions**, flagged
``unverified=True`` and, where they were tuned on the Iyer 2023 calibration arms, labelled "calibrated".

Combination rule (default: additive in normalized units)
--------------------------------------------------------
Opioids act as full agonists on one reference concentration-effect curve
``H(u) = u**gamma / (1 + u**gamma)`` with ``u = Ce / EC50`` (the fraction of pain relieved). A
ceiling-limited analgesic ``i`` (acetaminophen, NSAIDs, gabapentinoids, ketamine, local anaesthetics) has
its own curve ``E_i(C) = Emax_i * C**n / (C**n + EC50_i**n)`` and enters in *opioid-equivalent normalized
units* ``u_i = H^-1(E_i)``: the opioid concentration, in EC50 units, that gives the same relief. Loewe
additivity then adds the units, ``U = sum(u_i)``, and the combined relief is ``H(U)`` (Minto 2000 normalized
units; Grabovsky & Tallarida 2004 for agonists of unequal maximal effect). This reproduces the additive
paracetamol-morphine isobologram (Zeidan 2014, models.md B2). The optional Greco-type interaction replaces
``U`` by the root ``x`` of ``x**2 - U*x - sum_{i<j} alpha_ij u_i u_j = 0`` (Greco 1990 with a common
slope; ``alpha = 0`` gives back ``x = U``; ``alpha > 0`` synergy).

Units: concentrations mg/L (= ug/mL) unless a name says otherwise; rate constants 1/h.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .drugs._base import Source
from .errors import ModelSpecError
from .outcome import EFFECT_CLASSES, outcome_point, outcome_posterior

__all__ = [
    "GAMMA",
    "OPIOID_EC50_SCALE",
    "PD_LIBRARY",
    "AdverseEffectModel",
    "AnalgesicPD",
    "PDValue",
    "combine_units",
    "get_pd",
    "inverse_reference_curve",
    "reference_curve",
]


@dataclass(frozen=True)
class PDValue:
    """A sourced number: ``value`` in ``unit``, its ``source``, and whether it is unverified/assumed."""

    value: float
    unit: str
    source: Source
    unverified: bool = False
    note: str = ""

    def __float__(self) -> float:
        return float(self.value)

    @property
    def is_unverified(self) -> bool:
        return bool(self.unverified or self.source.unverified)


_ASSUME = Source("assumption of this toolkit (gap in models.md section E)", unverified=True)
_PT = outcome_point()
_CAL = Source(
    f"outcome-model calibration {outcome_posterior().version} (pkpd/datasets/outcome_posterior.json, "
    "regimens.calibration)",
    "posterior median; fitted to the evidence base's trial arms",
    unverified=True,
)
_JEL16 = Source("Jeleazcov 2016, Anesthesiology 124:56", "EC50 for NRS <= 4, abstract (models.md B2)")
_SP_MEAC = Source("stanpumpR drugDefaults_global.csv", "tool MEAC defaults, mixed provenance (models.md B2)")
_ANDERSON = Source("Anderson 2001, Eur J Clin Pharmacol 57:559", "children after tonsillectomy, abstract (B2)")
_YASSEN = Source("Yassen 2007, Clin Pharmacol Ther 81:50", "via nlmixr2lib Yang 2024 Table S7 (models.md B4)")
_GOULOOZE = Source("Goulooze 2020, Anesth Analg", "rescue hazard structure (clinical.md section 1)")


def _v(value: float, unit: str, source: Source, note: str = "", unverified: bool = False) -> PDValue:
    return PDValue(float(value), unit, source, unverified, note)


#: Steepness of the reference opioid curve H (assumption).
GAMMA = _v(1.5, "1", _ASSUME, "steepness of the opioid concentration-relief curve; no adult value in models.md")


@dataclass(frozen=True)
class AnalgesicPD:
    """Analgesic PD of one drug.

    Attributes
    ----------
    drug
        Library drug name.
    kind
        ``"opioid"`` (full agonist on the reference curve, ``u = Ce/EC50``), ``"ceiling"`` (own Emax curve
        on the effect-site concentration) or ``"local"`` (own Emax curve on the amount remaining in the
        local depot, mg: site-of-injection analgesia, not plasma).
    output
        Model output that drives the effect: ``"CP"`` (parent) or another output such as ``"CM"``
        (active metabolite: morphine from codeine, M1 from tramadol).
    output_factor
        Multiplier converting the output to the concentration of the active moiety (e.g. mass units).
    ke0
        Effect-site equilibration rate constant (1/h); ``None`` for ``kind="local"``.
    ec50
        Opioids: effect-site concentration (mg/L) giving half relief on the reference curve.
        Ceiling drugs: EC50 of their own curve (mg/L). Local: depot amount giving half of Emax (mg).
    emax
        Maximal fraction of pain relieved (ceiling/local drugs; 1 for opioids).
    hill
        Hill coefficient of the drug's own curve (ceiling/local drugs).
    ec50_iiv_sd
        Log-scale SD of inter-individual variability of EC50.
    resp_ec50
        Opioids: effect-site concentration (mg/L) giving half of the maximal ventilatory depression
        (Yassen structure).
    effect_class
        Class whose calibrated ceiling the drug uses (:data:`pkpd.outcome.EFFECT_CLASSES`; ``"opioid"`` for
        opioids): drugs of one class share ``emax`` (and a population column ``outcome.emax_<class>``).
    """

    drug: str
    kind: str
    output: str
    ke0: PDValue | None
    ec50: PDValue
    emax: PDValue = field(default_factory=lambda: _v(1.0, "1", Source("reference curve (full agonist)")))
    hill: PDValue = field(default_factory=lambda: _v(1.0, "1", Source("hyperbolic (n = 1)")))
    ec50_iiv_sd: PDValue | None = None
    resp_ec50: PDValue | None = None
    output_factor: float = 1.0
    notes: tuple[str, ...] = ()

    @property
    def effect_class(self) -> str:
        return "opioid" if self.kind == "opioid" else EFFECT_CLASSES[self.drug]

    def __post_init__(self) -> None:
        if self.kind not in ("opioid", "ceiling", "local"):
            raise ModelSpecError(f"PD kind must be opioid, ceiling or local, got {self.kind!r}")
        if self.kind != "local" and self.ke0 is None:
            raise ModelSpecError(f"PD of {self.drug}: ke0 is required for kind {self.kind}")
        if self.kind == "opioid" and self.resp_ec50 is None:
            raise ModelSpecError(f"PD of {self.drug}: opioids need resp_ec50")
        if not 0 < float(self.emax) <= 1:
            raise ModelSpecError(f"PD of {self.drug}: emax must be in (0, 1]")

    def values(self) -> dict[str, PDValue]:
        out = {"ec50": self.ec50, "emax": self.emax, "hill": self.hill}
        for k in ("ke0", "ec50_iiv_sd", "resp_ec50"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    def unverified(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.values().items() if v.is_unverified)


# ---- opioid potency: stanpumpR MEAC ratios scaled to the Jeleazcov 2016 hydromorphone EC50 -----------------
_MEAC_NG = {"fentanyl": 0.6, "morphine": 8.0, "hydromorphone": 1.5, "oxycodone": 12.0}
_SCALE = 4.1 / 1.5  # Jeleazcov hydromorphone EC50 (NRS <= 4) / stanpumpR hydromorphone MEAC
#: Calibrated opioid sensitivity of postoperative spine patients relative to the literature anchors above:
#: multiplies every opioid EC50 (analgesia and respiration alike, so their ratio stays the published one).
OPIOID_EC50_SCALE = PDValue(
    _PT["opioid_ec50_scale"],
    "x",
    _CAL,
    True,
    "the Jeleazcov EC50 is for NRS <= 4 in cardiac-surgery patients on TCI-PCA; the "
    "calibration estimates how spine-surgery patients on PCA/PRN differ",
)
_YASSEN_RATIO = 1.14 / 0.6  # fentanyl resp EC50 (Yassen) / fentanyl MEAC (stanpumpR)
_EC50_IIV = _v(
    math.log(12.8 / 0.6) / 4.0,
    "1 (log SD)",
    _JEL16,
    "derived: the published EC50 range 0.6-12.8 ng/mL taken as +-2 SD on the log scale",
)


def _opioid(
    drug: str,
    ke0: PDValue,
    notes: tuple[str, ...] = (),
    output: str = "CP",
    output_factor: float = 1.0,
    meac_drug: str | None = None,
) -> AnalgesicPD:
    m = _MEAC_NG[meac_drug or drug]
    src = Source(
        f"{_SP_MEAC.citation} ratio x {_JEL16.citation}",
        f"EC50 = MEAC({meac_drug or drug}) {m} ng/mL x 4.1/1.5 (hydromorphone EC50 / MEAC)",
    )
    k = float(OPIOID_EC50_SCALE.value)
    ec50 = _v(
        m * _SCALE * k / 1000.0,
        "mg/L",
        src,
        "relative potency from tool MEACs (mixed provenance), x the calibrated OPIOID_EC50_SCALE",
        unverified=True,
    )
    resp = _v(
        m * _YASSEN_RATIO * k / 1000.0,
        "mg/L",
        Source(
            _YASSEN.citation,
            "fentanyl EC50 1.14 ng/mL scaled "
            "by MEAC ratio; clinical.md: reuse of the structure for other opioids is UNVERIFIED",
        ),
        unverified=True,
    )
    return AnalgesicPD(
        drug,
        "opioid",
        output,
        ke0,
        ec50,
        ec50_iiv_sd=_EC50_IIV,
        resp_ec50=resp,
        output_factor=output_factor,
        notes=notes,
    )


PD_LIBRARY: dict[str, AnalgesicPD] = {}


def _add(pd: AnalgesicPD) -> None:
    PD_LIBRARY[pd.drug] = pd


_add(
    _opioid(
        "hydromorphone",
        _v(
            0.015897 * 60,
            "1/h",
            Source("stanpumpR", "time to peak Ce 19.6 min (models.md B1)"),
            "derived: ke0 such that the Jeleazcov 2014 typical PK peaks Ce 19.6 min after a bolus",
        ),
    )
)
_add(
    _opioid(
        "oxycodone",
        _v(
            math.log(2) / (14 / 60),
            "1/h",
            Source("Ladebo 2020", "pupil t1/2ke0 14 min (B1)"),
            "pupil endpoint, used for analgesia",
            unverified=True,
        ),
    )
)
_add(
    _opioid(
        "morphine",
        _v(
            0.0073 * 60,
            "1/h",
            Source("Sarton 2000, Anesthesiology (PMID 11046213)", "ke0 men 0.0073 1/min via opentiva (B1)"),
            "men's value; women 0.0024 1/min (not applied)",
        ),
    )
)
_add(_opioid("fentanyl", _v(0.12 * 60, "1/h", Source("Shafer 1990 via opentiva", "ke0 0.12 1/min (B1)"))))
_add(
    _opioid(
        "codeine",
        _v(0.0073 * 60, "1/h", Source("Sarton 2000 (morphine ke0)", "B1")),
        output="CM",
        output_factor=285.34 / 299.36,
        meac_drug="morphine",
        notes=(
            "analgesia from the morphine formed (CM, codeine-mass equivalents; x MW 285.34/299.36 general knowledge)",
        ),
    )
)


# ---- ceiling-limited analgesics --------------------------------------------------------------------------
def _emax(cls: str, note: str = "") -> PDValue:
    """The calibrated ceiling of an effect class (posterior median; see pkpd.outcome)."""
    return _v(
        _PT[f"emax_{cls}"],
        "1",
        _CAL,
        (note + "; " if note else "") + f"class '{cls}' ceiling, calibrated "
        "on the evidence base (population column outcome.emax_" + cls + ")",
    )


_add(
    AnalgesicPD(
        "acetaminophen",
        "ceiling",
        "CP",
        ke0=_v(math.log(2) / (53 / 60), "1/h", _ANDERSON, "t_eq 53 min (CV 217 %)"),
        ec50=_v(9.98, "mg/L", _ANDERSON, "CV 107 %"),
        emax=_emax("acetaminophen", "Anderson's paediatric Emax is 5.17/10 = 0.52 (prior anchor)"),
        ec50_iiv_sd=_v(math.sqrt(math.log(1 + 1.07**2)), "1 (log SD)", _ANDERSON, "from CV 107 %"),
    )
)
_NSAID = (
    "No adult population Emax model for NSAIDs (models.md E); the potencies are assumptions and the "
    "class ceiling is calibrated on the evidence base's NSAID arms.",
)
_add(
    AnalgesicPD(
        "ketorolac",
        "ceiling",
        "CP",
        ke0=_v(1.0, "1/h", _ASSUME, "effect delay ~40 min (assumption)"),
        ec50=_v(0.10, "mg/L", _ASSUME, "S-ketorolac (CP of the entry); order of magnitude"),
        emax=_emax("nsaid"),
        ec50_iiv_sd=_v(0.5, "1 (log SD)", _ASSUME),
        notes=_NSAID,
    )
)
_add(
    AnalgesicPD(
        "ibuprofen",
        "ceiling",
        "CP",
        ke0=_v(1.0, "1/h", _ASSUME),
        ec50=_v(10.0, "mg/L", _ASSUME, "general knowledge order of magnitude"),
        emax=_emax("nsaid"),
        ec50_iiv_sd=_v(0.5, "1 (log SD)", _ASSUME),
        notes=_NSAID,
    )
)
_add(
    AnalgesicPD(
        "celecoxib",
        "ceiling",
        "CP",
        ke0=_v(0.7, "1/h", _ASSUME),
        ec50=_v(0.25, "mg/L", _ASSUME, "general knowledge order of magnitude"),
        emax=_emax("nsaid"),
        ec50_iiv_sd=_v(0.5, "1 (log SD)", _ASSUME),
        notes=_NSAID,
    )
)
_GABA = (
    "No adult Emax model for gabapentinoids (models.md E); the class ceiling is calibrated on the "
    "evidence base (prior: about -10/100 VAS in the 2017 meta-analyses, clinical.md 2).",
)
_add(
    AnalgesicPD(
        "gabapentin",
        "ceiling",
        "CP",
        ke0=_v(0.35, "1/h", _ASSUME, "CNS delay (assumption)"),
        ec50=_v(3.0, "mg/L", _ASSUME, "inside the 2-20 ug/mL TDM range (models.md C)"),
        emax=_emax("gabapentinoid"),
        ec50_iiv_sd=_v(0.5, "1 (log SD)", _ASSUME),
        notes=_GABA,
    )
)
_add(
    AnalgesicPD(
        "pregabalin",
        "ceiling",
        "CP",
        ke0=_v(0.35, "1/h", _ASSUME),
        ec50=_v(2.0, "mg/L", _ASSUME),
        emax=_emax("gabapentinoid"),
        ec50_iiv_sd=_v(0.5, "1 (log SD)", _ASSUME),
        notes=_GABA,
    )
)
#: Anti-hyperalgesia of ketamine outlasts its plasma concentrations (Loftus 2010: less opioid through 48 h
#: and at 6 weeks; Nielsen 2017: 0-24 h after an intra-operative infusion only): a slow effect site.
_KET_KE0 = _v(
    math.log(2) / 12.0,
    "1/h",
    _ASSUME,
    "anti-hyperalgesic effect site, half-time 12 h (assumption: "
    "an intra-operative dose acts through the first postoperative day and fades by the third)",
)
_KET = (
    "Effect: anti-hyperalgesia (NMDA antagonism) on a slow effect site (ke0 = ln2/12 h, an assumption), "
    "with a larger ceiling in opioid-tolerant patients (emax + emax_ketamine_tolerant; Nielsen 2017, "
    "Loftus 2010). EC50 = the effect-site peak after 0.5 mg/kg racemic ketamine IV in an 85 kg adult "
    "(0.0126 mg/L, Domino PK; so the standard intra-operative dose gives half the ceiling): an assumption.",
)
_add(
    AnalgesicPD(
        "ketamine",
        "ceiling",
        "CP",
        ke0=_KET_KE0,
        ec50=_v(0.0126, "mg/L", _ASSUME, "effect-site peak after 0.5 mg/kg IV (see notes)"),
        emax=_emax("ketamine", "opioid-naive; tolerant patients add emax_ketamine_tolerant"),
        ec50_iiv_sd=_v(0.5, "1 (log SD)", _ASSUME),
        notes=_KET,
    )
)
_add(
    AnalgesicPD(
        "s_ketamine",
        "ceiling",
        "CP",
        ke0=_KET_KE0,
        ec50=_v(
            0.0063,
            "mg/L",
            _ASSUME,
            "half the racemic EC50: S-ketamine taken as twice as potent as racemic "
            "ketamine (general knowledge, UNVERIFIED)",
        ),
        emax=_emax("ketamine", "shares the ketamine class ceiling"),
        ec50_iiv_sd=_v(0.5, "1 (log SD)", _ASSUME),
        notes=_KET,
    )
)
_LOCAL = (
    "Site-of-injection analgesia from the amount left in the local depot (mg); no PD model exists "
    "(models.md E). The class ceiling is calibrated on the evidence base's local-anaesthetic arms (prior: "
    "liposomal bupivacaine near-null in opioid-naive spine patients, clinical.md 2).",
)
for _la, _a50 in (("bupivacaine_liposomal", 60.0), ("bupivacaine", 30.0), ("ropivacaine", 60.0)):
    _add(
        AnalgesicPD(
            _la,
            "local",
            "DEPOT",
            ke0=None,
            ec50=_v(_a50, "mg", _ASSUME),
            emax=_emax("local"),
            ec50_iiv_sd=_v(0.5, "1 (log SD)", _ASSUME),
            notes=_LOCAL,
        )
    )


def get_pd(drug: str) -> AnalgesicPD:
    """Analgesic PD entry of ``drug``; a clear error when the references give the toolkit none."""
    from .drugs import get_drug

    name = get_drug(drug).name
    if name not in PD_LIBRARY:
        raise ModelSpecError(
            f"no analgesic PD for {name}: the references hold no concentration-effect data for it "
            f"(known: {', '.join(sorted(PD_LIBRARY))}). It can be simulated for PK, not in a pain regimen."
        )
    return PD_LIBRARY[name]


# ---- reference curve and combination ------------------------------------------------------------------------
def reference_curve(u, gamma, xp=None):
    """Fraction of pain relieved by ``u`` normalized units on the reference (opioid) curve."""
    xp = xp or _xp(u)
    ug = xp.power(xp.maximum(u, 0.0), gamma)
    return ug / (1.0 + ug)


def inverse_reference_curve(e, gamma, xp=None):
    """Normalized units giving relief ``e`` (0 <= e < 1) on the reference curve."""
    xp = xp or _xp(e)
    e = xp.clip(e, 0.0, 1.0 - 1e-12)
    return xp.power(e / (1.0 - e), 1.0 / gamma)


def combine_units(units, alpha=None, xp=None):
    """Combined normalized units of drugs with units ``units`` (..., n_drugs).

    ``alpha`` (n_drugs, n_drugs), upper triangle used: Greco-type interaction indices; ``None`` = additive.
    """
    xp = xp or _xp(units)
    total = xp.sum(units, axis=-1)
    if alpha is None:
        return total
    a = xp.triu(xp.asarray(alpha), 1)
    cross = xp.einsum("...i,ij,...j->...", units, a, units)
    return 0.5 * (total + xp.sqrt(total * total + 4.0 * cross))


def _xp(x):
    import numpy as np

    try:
        import jax

        if isinstance(x, jax.Array):
            import jax.numpy as jnp

            return jnp
    except ImportError:  # pragma: no cover
        pass
    return np


# ---- adverse effects ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdverseEffectModel:
    """Opioid adverse-effect models driven by opioid effect-site concentrations.

    Respiratory depression follows Yassen 2007: ``VE/V0 = 1 - alpha * R**n / (1 + R**n)`` with
    ``R = sum(Ce_i / EC50resp_i)``. The OIRD probability over the stay is
    ``1 - exp(-h0 * integral (D(t)/d_ref)**2 dt) `` times the OSA odds (``D = 1 - VE/V0``), scaled so a
    patient with a steady depression ``d_ref`` for 24 h has the Gupta base rate. Sedation is an Emax
    function of opioid units at ``sedation_u50`` x the analgesic EC50. PONV (0-24 h) is logistic in
    log(1 + 24-h MME) (Roberts 2005 log-linear dose-response; slope unverified).
    """

    alpha: PDValue = _v(0.91, "1", _YASSEN, "IIV 25.4 %; capped at 1")
    n: PDValue = _v(2.68, "1", _YASSEN)
    oird_base: PDValue = _v(0.005, "1", Source("Gupta 2018, BMJ Open", "OIRD base 5/1000 (clinical.md 3.1)"))
    d_ref: PDValue = _v(
        0.40,
        "1",
        _CAL,
        "scaled so the opioid-centric Iyer placebo arm has the Gupta base rate "
        "(mean P_OIRD 5/1000; regimens.calibration.checks.oird_scale, 2,000 patients: 0.400)",
    )
    osa_or: PDValue = _v(
        1.8,
        "1",
        Source("Gupta 2018, BMJ Open", "OR 1.4-2.2 with OSA/cardiopulmonary disease (clinical.md 3.2): midpoint"),
    )
    sedation_u50: PDValue = _v(2.0, "1", _ASSUME, "sedation at twice the analgesic EC50 (no model, models.md B4)")
    ponv_p_ref: PDValue = _v(
        0.513, "1", Source("Roberts 2005, Anesth Analg 101:1343", "PON 51.3 % without prophylaxis (models.md B4)")
    )
    ponv_mme_ref: PDValue = _v(60.0, "mg", _ASSUME, "24-h MME at which the Roberts overall rate applies")
    ponv_slope: PDValue = _v(
        0.6, "1 per log(MME)", Source("Roberts 2005", "log-linear; slope not in abstract"), unverified=True
    )
    oprm1_gg_or: PDValue = _v(
        0.42, "1", Source("OPRM1 meta-analysis (clinical.md 5.2)", "homozygote OR 0.42 for vomiting")
    )
