"""Label limits and a worst-case regimen checker.

:data:`LIMITS` is a table of :class:`LabelLimit` s: per drug (and route where it matters) a maximum single
dose, maximum daily dose (any rolling 24 h), minimum interval, maximum course duration, maximum total,
contraindications and exclusion windows, with conditional variants (covariate conditions such as
``"AGE >= 65 or WT < 50"`` and CPIC phenotypes). Each carries a :class:`pkpd.drugs.Source` and an
``unverified`` flag exactly as ``shared/reference/models.md`` section C (and D for CPIC) gives them.

Coverage (say which drugs have limits and where they come from):

* **From models.md C / clinical.md (verified as recorded there):** acetaminophen (>= 50 kg and < 50 kg,
  severe hepatic impairment for IV), ibuprofen (3200 mg/day), ketorolac IV (< 65 y; >= 65 y or < 50 kg;
  course <= 5 days) and its spinal-fusion caps (<= 48 h, <= 240 mg; clinical.md 2), celecoxib acute-pain
  dosing, liposomal bupivacaine (266 mg; no other local anaesthetic within 96 h, clinical.md 3.1), and the
  CPIC CYP2C9 poor-metabolizer caps for celecoxib and ibuprofen (models.md D2; derived numbers, see notes).
  CPIC CYP2D6 rules (codeine, tramadol...) come from :func:`pkpd.genetics.cpic_recommendation`.
* **General knowledge, ``unverified=True``:** the CrCL threshold for ketorolac "renal impairment" (60 mL/min)
  and its contraindication in advanced renal impairment (CrCL < 30), acetaminophen caps in mild-moderate
  hepatic impairment, CrCL < 30 and oral use in severe hepatic impairment, ibuprofen single doses,
  gabapentin and pregabalin daily maxima with renal bands, tramadol and codeine daily maxima, oxycodone IR
  and ER minimum intervals, plain bupivacaine single and daily maxima.
* **Renal and hepatic restrictions from the labels** (wording quoted in each source; thresholds that the
  labels leave in words, such as CrCL < 30 mL/min for 'severe renal insufficiency', are this toolkit's choice
  and flagged): celecoxib (Celebrex PI: not in severe renal insufficiency or severe hepatic impairment,
  50 % in moderate hepatic impairment), ibuprofen (NSAID class: not in advanced renal disease; severe
  hepatic impairment by analogy, flagged), tramadol (Ultram: 50 mg q12h in cirrhosis), besides the
  acetaminophen, ketorolac, gabapentin and pregabalin entries above. 'Not recommended' is read as a hard
  exclusion (the stricter reading), and where two readings of a rule differ (CPIC's 25-50 %, which 'lowest
  dose') the stricter is applied and the note says which.
* **Opioids' reduced starting doses in renal and hepatic impairment** (:data:`START_FRACTIONS`, general
  knowledge, ``unverified=True``: the labels are not in models.md; :func:`rescue_fraction`): the fraction of
  the usual starting dose at which the labels say to start, applied to every as-needed (PRN) and PCA dose of
  that opioid for the patient (:mod:`regimens.adapt` for the comparators, the optimizer's rescue policies) and
  checked by :func:`check_regimen` (rule ``"starting_dose"``). Hydromorphone (DILAUDID oral and injection PI,
  sections 2, 8.6, 8.7): 50 % in moderate renal impairment (CrCL 30 to < 60 mL/min), 25 % in severe (CrCL
  < 30); hepatic 'one-fourth to one-half ... depending on the extent' read strictly: 25 % in moderate or severe
  (HEPATIC >= 2), 50 % in mild (HEPATIC 1). Oxycodone IR (ROXICODONE PI section 2): hepatic impairment
  '1/3 to 1/2 the usual starting dosage' read strictly as 1/3 (any degree); renal impairment (CrCL < 60) 'a
  conservative approach to dose initiation': no number, a note only. Morphine, fentanyl, remifentanil: no
  number in the labels, notes only (doses unchanged). Where a renal and a hepatic fraction both apply the
  smaller (stricter) is used and the text says which. The CrCL thresholds of 'moderate' and 'severe' are this
  toolkit's choice (as for celecoxib and ketorolac), the hepatic categories those of the ``HEPATIC``
  covariate. The checker's reading: a PRN dose, PCA demand or loading dose above the fraction times the upper
  end of the label's usual adult starting dose by that route (:data:`USUAL_STARTS`: hydromorphone IV 0.2-1 mg
  q2-3h -> 1 mg, PO 2-4 mg -> 4 mg; oxycodone IR 5-15 mg q4-6h -> 15 mg) is a finding; the doses actually
  given are stricter: the fraction times the dose as written (e.g. C1's hydromorphone 0.5 mg -> 0.125 mg at
  25 %), never above that cap (:meth:`RescueFraction.scale`).
* **No limits:** hydromorphone, morphine, fentanyl, remifentanil have no ceiling dose (IV titration; their
  renal/hepatic advice is the starting-dose fraction above), ketamine and S-ketamine (no label maximum for
  analgesic low doses), ropivacaine and plain bupivacaine in hepatic impairment (labels: caution, no number;
  ropivacaine's commonly cited maxima are not in models.md).

:func:`check_regimen` evaluates the **worst case**: scheduled doses, plus every PRN rule firing at its
minimum interval (the largest dose active at each time, honouring ``max_per_24h``), plus PCA at its hourly
maximum (or ``60 / lockout`` demands per hour without a cap) on top of basal and loading doses; the
starting-dose fractions on every PRN rule's dose and every PCA's demand and loading dose.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pkpd.drugs import Source

from ._condition import Condition, RegimenError, format_number
from ._model import ROUTE_DISPLAY, Regimen

__all__ = [
    "LIMITS",
    "START_FRACTIONS",
    "USUAL_STARTS",
    "DoseCaps",
    "Finding",
    "LabelLimit",
    "RescueFraction",
    "StartFraction",
    "UsualStart",
    "check_regimen",
    "dose_caps",
    "format_findings",
    "fraction_text",
    "limits_for",
    "rescue_fraction",
]

_QUANTITIES = (
    "max_single_mg",
    "max_single_mg_per_kg",
    "max_daily_mg",
    "max_daily_mg_per_kg",
    "min_interval_h",
    "max_duration_h",
    "max_total_mg",
    "exclusive_window_h",
)


@dataclass(frozen=True)
class LabelLimit:
    """One dosing limit for a drug, possibly conditional on covariates or a phenotype.

    Attributes
    ----------
    drug
        Library drug name.
    population
        Who it applies to, in words (``"adults"``, ``"aged >= 65 y or < 50 kg"``).
    source
        Where it comes from (citation as in models.md, secondary source in ``detail``).
    route
        Route label the limit applies to; ``None``: all routes of the drug summed.
    when
        Covariate condition (``"AGE >= 65 or WT < 50"``); ``None``: everyone.
    phenotype
        ``(gene, labels)``: applies only to those phenotypes, e.g. ``("CYP2C9", ("poor",))``.
    max_single_mg, max_single_mg_per_kg
        Maximum single dose, mg or mg/kg (total body weight).
    max_daily_mg, max_daily_mg_per_kg
        Maximum in any rolling 24 h, mg or mg/kg.
    min_interval_h
        Minimum time between dose starts, h.
    max_duration_h
        Maximum course length, h (first dose to the end of the last dosing interval).
    max_total_mg
        Maximum total over the course, mg.
    contraindicated
        The drug must not be given (by ``route``, or at all) to this population.
    exclusive_window_h
        No other local anaesthetic may start, or still run, within this many hours after a dose.
    context
        ``"label"``, ``"spinal fusion"`` (evidence-based cap, not a label) or ``"CPIC"``.
    unverified
        ``True`` where models.md marks the value UNVERIFIED or the value is general knowledge.
    note
        Derivations and caveats.
    """

    drug: str
    population: str
    source: Source
    route: str | None = None
    when: str | None = None
    phenotype: tuple[str, tuple[str, ...]] | None = None
    max_single_mg: float | None = None
    max_single_mg_per_kg: float | None = None
    max_daily_mg: float | None = None
    max_daily_mg_per_kg: float | None = None
    min_interval_h: float | None = None
    max_duration_h: float | None = None
    max_total_mg: float | None = None
    contraindicated: bool = False
    exclusive_window_h: float | None = None
    context: str = "label"
    unverified: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if self.when is not None:
            object.__setattr__(self, "when", Condition.parse(self.when).text)

    @property
    def is_unverified(self) -> bool:
        """True when the limit or its source is flagged UNVERIFIED."""
        return bool(self.unverified or self.source.unverified)

    def condition(self) -> Condition | None:
        """The parsed covariate condition, or ``None``."""
        return None if self.when is None else Condition.parse(self.when)

    def describe(self) -> str:
        """One line: who it applies to, the limits, the source and the UNVERIFIED flag."""
        parts = []
        for attr, fmt in (
            ("max_single_mg", "single <= {:g} mg"),
            ("max_single_mg_per_kg", "single <= {:g} mg/kg"),
            ("max_daily_mg", "<= {:g} mg/24 h"),
            ("max_daily_mg_per_kg", "<= {:g} mg/kg/24 h"),
            ("min_interval_h", "interval >= {:g} h"),
            ("max_duration_h", "course <= {:g} h"),
            ("max_total_mg", "total <= {:g} mg"),
            ("exclusive_window_h", "no other local anaesthetic within {:g} h"),
        ):
            v = getattr(self, attr)
            if v is not None:
                parts.append(fmt.format(v))
        if self.contraindicated:
            parts.append("contraindicated")
        route = f" {self.route.upper()}" if self.route else ""
        flag = "  UNVERIFIED" if self.is_unverified else ""
        return f"{self.population}{route}: {', '.join(parts) or '-'} ({self.context}; {self.source}){flag}"


@dataclass(frozen=True)
class Finding:
    """One result of :func:`check_regimen`.

    Attributes
    ----------
    severity
        ``"error"`` (contraindication, CPIC 'avoid', a label prohibition such as another local anaesthetic
        within 96 h of liposomal bupivacaine) or ``"warning"`` (a dose above a maximum, an interval below a
        minimum, a limit that could not be checked). Simulation remains possible in both cases.
    drug
        Library drug name.
    rule
        ``"max_single_dose"``, ``"max_daily_dose"``, ``"min_interval"``, ``"max_duration"``,
        ``"max_total_dose"``, ``"contraindicated"``, ``"exclusive_window"``, ``"cpic"``, ``"starting_dose"`` (an
        as-needed or PCA opioid dose above the patient's renal/hepatic fraction of the label's usual starting
        dose, :func:`rescue_fraction`) or ``"unchecked"``.
    message
        What is wrong, with the numbers, the population and the source.
    source
        Full source of the limit.
    unverified
        ``True`` when the limit behind the finding is UNVERIFIED.
    """

    severity: str
    drug: str
    rule: str
    message: str
    source: str
    unverified: bool = False

    def __str__(self) -> str:
        return f"{self.severity.upper()} [{self.drug} {self.rule}] {self.message}"


# --------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------

_MDC = "via models.md C"
_APAP = Source(f"Ofirmev label {_MDC}", "LBL (Ofirmev highlights; ndrugs/themeditary copies)")
_APAP_WEB = Source(
    f"Medscape acetaminophen dosing {_MDC}", "WEB (Medscape): <= 750 mg/dose and <= 3.75 g/day for >= 13 y and < 50 kg"
)
_APAP_HEP = Source(f"Ofirmev label warnings / Medscape {_MDC}", "WEB (Medscape); LBL warnings (RxList)")
_IBU = Source(f"Ibuprofen Rx label {_MDC}", "LBL (rxreasoner)")
_KET = Source(f"Toradol label {_MDC}", "LBL quoted by droracle; Skyscape; drugs-library")
_KET_FUSION = Source(
    "Duke meta-analysis of ketorolac in spinal fusion (41,365 patients) via clinical.md 2",
    "no overall non-union signal (OR 1.10); OR 2.17 if > 48 h or > 240 mg",
)
_CELE = Source(f"Celebrex label {_MDC}", "LBL via WEB summary (droracle); NCBI Medical Genetics Summaries")
_CPIC_2C9 = Source(
    "CPIC Theken 2020, Clin Pharmacol Ther 108:191 via models.md D2",
    "AS 0-0.5: 25-50 % of the lowest recommended starting dose, titrate to 25-50 % of the maximum",
)
_CELE_PI = Source(
    "Celebrex prescribing information (Pfizer, DailyMed 2021) sections 2.6, 8.6, 8.7",
    "'moderate hepatic impairment (Child-Pugh B): reduce the daily recommended dose by 50 %'; 'severe "
    "hepatic impairment: not recommended'; 'not recommended in patients with severe renal "
    "insufficiency' (older label: 'advanced kidney disease: not recommended'); 'CYP2C9 poor "
    "metabolizers: initiate treatment with half of the lowest recommended dose'",
)
_NSAID_RENAL = Source(
    "NSAID class labeling (ibuprofen Rx label, Warnings: renal toxicity)",
    "'not recommended in patients with advanced renal disease' (the Celebrex wording of the same "
    "class statement is cited under celecoxib)",
)
_TRAM_HEP = Source(
    "Ultram label, Dosage and Administration (patients with cirrhosis)",
    "'the recommended dose for adult patients with cirrhosis is 50 mg every 12 hours'",
)
_LB = Source(f"Exparel label {_MDC}", "LBL (2018 highlights, dokumen.tips copy): 266 mg (20 mL) for infiltration")
_LB96 = Source(
    "Exparel label via clinical.md 3.1",
    "'LB label: no other local anaesthetic within 96 h'; the exact label wording is not quoted in models.md",
)


def _gk(what: str) -> Source:
    return Source("general knowledge (not in models.md)", what, unverified=True)


_PM = ("CYP2C9", ("poor",))

#: Every limit known to the checker (see the module docstring for coverage).
LIMITS: tuple[LabelLimit, ...] = (
    # ---- acetaminophen (models.md C) ----
    LabelLimit(
        "acetaminophen",
        "adults (>= 50 kg)",
        _APAP,
        max_single_mg=1000.0,
        max_daily_mg=4000.0,
        min_interval_h=4.0,
        note="1000 mg q6h or 650 mg q4h; maximum 4000 mg/day from all routes and products; minimum interval 4 h",
    ),
    LabelLimit(
        "acetaminophen",
        "patients < 50 kg",
        _APAP,
        when="WT < 50",
        max_single_mg_per_kg=15.0,
        max_daily_mg_per_kg=75.0,
        note="15 mg/kg q6h or 12.5 mg/kg q4h; maximum 75 mg/kg/day",
    ),
    LabelLimit(
        "acetaminophen",
        "patients < 50 kg (>= 13 y)",
        _APAP_WEB,
        when="WT < 50",
        max_single_mg=750.0,
        max_daily_mg=3750.0,
    ),
    LabelLimit(
        "acetaminophen",
        "severe hepatic impairment",
        _APAP_HEP,
        route="iv",
        when="HEPATIC >= 3",
        contraindicated=True,
        note="'Severe hepatic impairment or active liver disease: contraindicated "
        "(IV)' (models.md C); HEPATIC 3 = severe",
    ),
    LabelLimit(
        "acetaminophen",
        "severe hepatic impairment",
        _gk("oral labels/SmPC: severe hepatic impairment"),
        route="po",
        when="HEPATIC >= 3",
        contraindicated=True,
        unverified=True,
        note="models.md states the contraindication for IV use only; the oral extension is general knowledge",
    ),
    LabelLimit(
        "acetaminophen",
        "mild-moderate hepatic impairment",
        _APAP_HEP,
        when="HEPATIC >= 1",
        max_daily_mg=3000.0,
        unverified=True,
        note="models.md C: a reduced daily dose 'may be warranted'; exact g/day caps (e.g. 2-3 g) UNVERIFIED; "
        "3 g/day (upper end of that example) is used",
    ),
    LabelLimit(
        "acetaminophen",
        "CrCL < 30 mL/min",
        _APAP_HEP,
        when="CRCL < 30",
        min_interval_h=6.0,
        unverified=True,
        note="models.md C: 'longer interval and lower dose' without numbers; the 6-h "
        "minimum interval is general knowledge",
    ),
    # ---- ibuprofen ----
    LabelLimit(
        "ibuprofen",
        "adults",
        _IBU,
        max_daily_mg=3200.0,
        note="Rx maximum 3200 mg/day (the OTC maximum, 1200 mg/day, is not applied)",
    ),
    LabelLimit("ibuprofen", "adults", _gk("ibuprofen Rx label: 800 mg per dose"), max_single_mg=800.0, unverified=True),
    LabelLimit(
        "ibuprofen",
        "CYP2C9 poor metabolizers",
        _CPIC_2C9,
        phenotype=_PM,
        max_daily_mg=800.0,
        context="CPIC",
        note="derived, stricter reading: 25 % (lower end of CPIC's 25-50 % of the maximum) of "
        "the 3200 mg/day maximum (the upper end would allow 1600 mg/day)",
    ),
    LabelLimit(
        "ibuprofen",
        "CYP2C9 poor metabolizers",
        _gk("CPIC 25-50 % of the lowest starting dose, 200 mg"),
        phenotype=_PM,
        max_single_mg=100.0,
        context="CPIC",
        unverified=True,
        note="stricter reading: 50 % of the lowest starting dose read as the 200-mg tablet (a 400-mg lowest "
        "Rx dose would allow 200 mg); no ibuprofen product of the decision space is that small",
    ),
    LabelLimit(
        "ibuprofen",
        "advanced renal disease (CrCL < 30 mL/min)",
        _NSAID_RENAL,
        when="CRCL < 30",
        contraindicated=True,
        unverified=True,
        note="'not recommended' read as a hard exclusion (the stricter reading); the CrCL threshold for "
        "'advanced' is this toolkit's choice, UNVERIFIED",
    ),
    LabelLimit(
        "ibuprofen",
        "severe hepatic impairment",
        _gk("NSAID labels: avoid in severe hepatic impairment"),
        when="HEPATIC >= 3",
        contraindicated=True,
        unverified=True,
        note="the ibuprofen label asks for caution only; the exclusion follows the celecoxib label's "
        "'not recommended' for the same class (stricter)",
    ),
    # ---- ketorolac (models.md C; clinical.md 2) ----
    LabelLimit(
        "ketorolac",
        "adults < 65 y",
        _KET,
        route="iv",
        max_single_mg=30.0,
        max_daily_mg=120.0,
        min_interval_h=6.0,
        note="IV/IM: 30 mg q6h, maximum 120 mg/day",
    ),
    LabelLimit(
        "ketorolac",
        "aged >= 65 y or < 50 kg",
        _KET,
        route="iv",
        when="AGE >= 65 or WT < 50",
        max_single_mg=15.0,
        max_daily_mg=60.0,
        min_interval_h=6.0,
        note="IV/IM: 15 mg q6h, maximum 60 mg/day (also for renal impairment)",
    ),
    LabelLimit(
        "ketorolac",
        "renal impairment (CrCL < 60 mL/min)",
        _KET,
        route="iv",
        when="CRCL < 60",
        max_single_mg=15.0,
        max_daily_mg=60.0,
        min_interval_h=6.0,
        unverified=True,
        note="the label says 'renal impairment' without a threshold; CrCL < 60 mL/min is this toolkit's "
        "choice (as in the C1 dose adjustment), UNVERIFIED",
    ),
    LabelLimit(
        "ketorolac",
        "advanced renal impairment (CrCL < 30 mL/min)",
        _gk("Toradol label contraindication: advanced renal impairment"),
        when="CRCL < 30",
        contraindicated=True,
        unverified=True,
        note="the CrCL threshold for 'advanced' is UNVERIFIED",
    ),
    LabelLimit("ketorolac", "adults", _KET, route="po", max_daily_mg=40.0, note="oral maximum 40 mg/day"),
    LabelLimit("ketorolac", "adults", _KET, max_duration_h=120.0, note="total IV/IM/oral course <= 5 days"),
    LabelLimit(
        "ketorolac",
        "spinal fusion",
        _KET_FUSION,
        max_duration_h=48.0,
        max_total_mg=240.0,
        context="spinal fusion",
        note="not a label limit: non-union OR 2.17 above 48 h or 240 mg",
    ),
    # ---- celecoxib ----
    LabelLimit(
        "celecoxib",
        "adults, acute pain",
        _CELE,
        max_single_mg=400.0,
        max_daily_mg=600.0,
        note="400 mg, then 200 mg on day 1 if needed, then 200 mg BID: 600 mg is the day-1 maximum; the "
        "400 mg/day maintenance maximum after day 1 is not checked by the rolling 24-h sum",
    ),
    LabelLimit(
        "celecoxib",
        "CYP2C9 poor metabolizers",
        _CELE_PI,
        phenotype=_PM,
        max_single_mg=50.0,
        context="CPIC",
        note="stricter of two readings: half of the lowest recommended dose read as 100 mg (Celebrex label "
        "'half of the lowest recommended dose'; CPIC 'initiate with 25-50 % of the lowest recommended "
        "starting dose', upper end) = 50 mg; reading the lowest dose as the 200-mg acute-pain dose would "
        "allow 100 mg. CPIC's lower end (25 %, 25 mg) is below every capsule strength",
    ),
    LabelLimit(
        "celecoxib",
        "CYP2C9 poor metabolizers",
        _CPIC_2C9,
        phenotype=_PM,
        max_daily_mg=100.0,
        context="CPIC",
        note="derived, stricter reading: 25 % (lower end of CPIC's 25-50 % of the maximum) of the 400 mg/day "
        "maintenance maximum (the upper end would allow 200 mg/day)",
    ),
    LabelLimit(
        "celecoxib",
        "severe renal insufficiency (CrCL < 30 mL/min)",
        _CELE_PI,
        when="CRCL < 30",
        contraindicated=True,
        unverified=True,
        note="'not recommended' read as a hard exclusion (the stricter reading); the CrCL threshold for "
        "'severe' is this toolkit's choice, UNVERIFIED",
    ),
    LabelLimit(
        "celecoxib",
        "moderate hepatic impairment (Child-Pugh B)",
        _CELE_PI,
        when="HEPATIC >= 2",
        max_single_mg=200.0,
        max_daily_mg=200.0,
        note="50 % of the daily recommended dose: 50 % of the 400 mg/day maintenance maximum (stricter than "
        "50 % of the 600 mg day-1 maximum); a single dose cannot exceed the daily amount",
    ),
    LabelLimit(
        "celecoxib",
        "severe hepatic impairment (Child-Pugh C)",
        _CELE_PI,
        when="HEPATIC >= 3",
        contraindicated=True,
        note="'not recommended' read as a hard exclusion (the stricter reading)",
    ),
    # ---- liposomal bupivacaine ----
    LabelLimit(
        "bupivacaine_liposomal",
        "adults",
        _LB,
        route="infiltration",
        max_single_mg=266.0,
        note="266 mg (20 mL) for infiltration; 133 mg for interscalene block",
    ),
    LabelLimit(
        "bupivacaine_liposomal",
        "adults",
        _LB96,
        exclusive_window_h=96.0,
        note="checked as: no other local anaesthetic dose starting, or still running, in the 96 h after a "
        "liposomal bupivacaine dose",
    ),
    # ---- general knowledge (UNVERIFIED) ----
    LabelLimit(
        "bupivacaine",
        "adults",
        _gk("Marcaine label: 175 mg without epinephrine; 400 mg/24 h"),
        max_single_mg=175.0,
        max_daily_mg=400.0,
        unverified=True,
    ),
    LabelLimit(
        "gabapentin", "CrCL >= 60 mL/min", _gk("Neurontin label dosing table"), max_daily_mg=3600.0, unverified=True
    ),
    LabelLimit(
        "gabapentin",
        "CrCL 30-59 mL/min",
        _gk("Neurontin label dosing table"),
        when="CRCL < 60",
        max_daily_mg=1400.0,
        unverified=True,
    ),
    LabelLimit(
        "gabapentin",
        "CrCL 15-29 mL/min",
        _gk("Neurontin label dosing table"),
        when="CRCL < 30",
        max_daily_mg=700.0,
        unverified=True,
    ),
    LabelLimit(
        "gabapentin",
        "CrCL < 15 mL/min",
        _gk("Neurontin label dosing table"),
        when="CRCL < 15",
        max_daily_mg=300.0,
        unverified=True,
    ),
    LabelLimit(
        "pregabalin", "CrCL >= 60 mL/min", _gk("Lyrica label dosing table"), max_daily_mg=600.0, unverified=True
    ),
    LabelLimit(
        "pregabalin",
        "CrCL 30-60 mL/min",
        _gk("Lyrica label dosing table"),
        when="CRCL < 60",
        max_daily_mg=300.0,
        unverified=True,
    ),
    LabelLimit(
        "pregabalin",
        "CrCL 15-30 mL/min",
        _gk("Lyrica label dosing table"),
        when="CRCL < 30",
        max_daily_mg=150.0,
        unverified=True,
    ),
    LabelLimit(
        "pregabalin",
        "CrCL < 15 mL/min",
        _gk("Lyrica label dosing table"),
        when="CRCL < 15",
        max_daily_mg=75.0,
        unverified=True,
    ),
    LabelLimit("tramadol", "adults", _gk("Ultram label: 400 mg/day (IR)"), max_daily_mg=400.0, unverified=True),
    LabelLimit(
        "tramadol", "adults", _gk("Ultram ER label: 300 mg/day"), route="po_er", max_daily_mg=300.0, unverified=True
    ),
    LabelLimit(
        "tramadol",
        "aged > 75 y",
        _gk("Ultram label: 300 mg/day over 75 y"),
        when="AGE > 75",
        max_daily_mg=300.0,
        unverified=True,
    ),
    LabelLimit(
        "tramadol",
        "cirrhosis (severe hepatic impairment)",
        _TRAM_HEP,
        when="HEPATIC >= 3",
        max_single_mg=50.0,
        max_daily_mg=100.0,
        min_interval_h=12.0,
        unverified=True,
        note="cirrhosis read as HEPATIC >= 3 (severe), UNVERIFIED mapping; 50 mg q12h",
    ),
    LabelLimit(
        "tramadol",
        "CrCL < 30 mL/min",
        _gk("Ultram label: q12h, 200 mg/day if CrCL < 30"),
        when="CRCL < 30",
        max_daily_mg=200.0,
        min_interval_h=12.0,
        unverified=True,
    ),
    LabelLimit(
        "codeine",
        "adults",
        _gk("codeine sulfate label: 15-60 mg q4h, 360 mg/day"),
        max_daily_mg=360.0,
        min_interval_h=4.0,
        unverified=True,
    ),
    LabelLimit(
        "oxycodone",
        "adults",
        _gk("oxycodone IR label: 5-15 mg q4-6h as needed"),
        route="po",
        min_interval_h=4.0,
        unverified=True,
        note="no ceiling dose; only the dosing interval is checked",
    ),
    LabelLimit(
        "oxycodone", "adults", _gk("OxyContin label: q12h"), route="po_er", min_interval_h=12.0, unverified=True
    ),
)


def limits_for(drug: str) -> tuple[LabelLimit, ...]:
    """The limits of one drug (library name or alias)."""
    from pkpd.drugs import get_drug

    name = get_drug(drug).name
    return tuple(lim for lim in LIMITS if lim.drug == name)


# --------------------------------------------------------------------------------------------------------
# Reduced starting doses of opioids in renal and hepatic impairment (as-needed and PCA doses)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsualStart:
    """The label's usual adult starting dose of an opioid by one route (opioid-naive adults): the reference
    of a :class:`StartFraction` in :func:`check_regimen` (``high_mg``, the upper end of the label's range).

    Attributes
    ----------
    drug, route
        Library drug name and route label.
    low_mg, high_mg
        The label's range of the starting dose, mg per dose.
    every
        Its dosing interval, in words (``"q2-3h"``).
    source
        Where it comes from (with the label's wording).
    unverified
        ``True``: general knowledge, not checked against a shipped copy of the label.
    """

    drug: str
    route: str
    low_mg: float
    high_mg: float
    every: str
    source: Source
    unverified: bool = True

    @property
    def is_unverified(self) -> bool:
        return bool(self.unverified or self.source.unverified)

    def describe(self) -> str:
        """``"0.2-1 mg IV q2-3h"``."""
        return (
            f"{format_number(self.low_mg)}-{format_number(self.high_mg)} mg "
            f"{ROUTE_DISPLAY.get(self.route, self.route)} {self.every}"
        )


@dataclass(frozen=True)
class StartFraction:
    """A label's advice to start an opioid at a fraction of the usual starting dose in renal or hepatic
    impairment, applied to every as-needed (PRN) and PCA dose of that opioid for the patient.

    Attributes
    ----------
    drug
        Library drug name.
    kind
        ``"renal"`` or ``"hepatic"``: where a renal and a hepatic fraction both apply, the smaller is used.
    population
        Who it applies to, in words.
    source
        The label, with its wording.
    route
        Route label it applies to; ``None``: every route.
    when
        Covariate condition (``"CRCL < 30"``, ``"HEPATIC >= 2"``).
    fraction
        Fraction of the usual starting dose (and of the regimen's as-needed dose); ``None``: the label gives
        no number (the advice is a note only and changes no dose).
    unverified
        ``True`` where the value or its threshold is general knowledge or this toolkit's choice.
    note
        Which reading of the wording was chosen (the stricter), and the thresholds chosen.
    label
        Short name of the label and section (``"DILAUDID PI 8.7"``) for one-line summaries.
    """

    drug: str
    kind: str
    population: str
    source: Source
    route: str | None = None
    when: str | None = None
    fraction: float | None = None
    unverified: bool = False
    note: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("renal", "hepatic"):
            raise ValueError(f"StartFraction.kind must be 'renal' or 'hepatic', got {self.kind!r}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"StartFraction.fraction must be in (0, 1], got {self.fraction!r}")
        if self.when is not None:
            object.__setattr__(self, "when", Condition.parse(self.when).text)

    @property
    def is_unverified(self) -> bool:
        return bool(self.unverified or self.source.unverified)

    def condition(self) -> Condition | None:
        return None if self.when is None else Condition.parse(self.when)

    def cite(self) -> str:
        detail = f": {self.source.detail}" if self.source.unverified and self.source.detail else ""
        return self.source.citation + detail + ("; UNVERIFIED" if self.is_unverified else "")


def fraction_text(f: float) -> str:
    """``"25 %"``, ``"50 %"``, ``"1/3"``: a fraction as the labels write it."""
    for k in (3, 6):
        if abs(f * k - round(f * k)) < 1e-12 and round(f * k) == 1:
            return f"1/{k}"
    return f"{100 * f:g} %"


_DIL_SRC = "DILAUDID (hydromorphone HCl) oral solution/tablets and injection prescribing information"
_DIL_RENAL = _gk(
    f"{_DIL_SRC}, sections 2 and 8.7 (renal impairment): start at one-fourth to one-half of the usual "
    "starting dose depending on the degree of impairment: 50 % in moderate and 25 % in severe renal "
    "impairment"
)
_DIL_HEP = _gk(
    f"{_DIL_SRC}, sections 2 and 8.6 (hepatic impairment): 'start with one-fourth to one-half the usual "
    "starting dose depending on the extent of impairment'"
)
_DIL_IV = _gk(
    f"{_DIL_SRC}, section 2 (injection, opioid-naive adults): initial dose 0.2 mg to 1 mg IV every 2 to "
    "3 hours as necessary"
)
_DIL_PO = _gk(f"{_DIL_SRC}, section 2 (oral, opioid-naive adults): 2 mg to 4 mg every 4 to 6 hours")
_ROXI_SRC = "ROXICODONE (oxycodone HCl immediate-release) prescribing information"
_ROXI_HEP = _gk(
    f"{_ROXI_SRC}, section 2 (patients with hepatic impairment): 'initiate therapy at 1/3 to 1/2 the "
    "usual starting dosage followed by careful dose titration'"
)
_ROXI_RENAL = _gk(
    f"{_ROXI_SRC}, section 2 (patients with renal impairment, creatinine clearance < 60 mL/min): "
    "'follow a conservative approach to dose initiation' (no number)"
)
_ROXI_PO = _gk(f"{_ROXI_SRC}, section 2 (opioid-naive adults): 5 to 15 mg every 4 to 6 hours as needed")
_MOR_SRC = _gk(
    "morphine sulfate oral and injection labels (renal and hepatic impairment): start with a lower dose "
    "and titrate slowly (no number)"
)
_FEN_SRC = _gk(
    "fentanyl citrate injection label (renal and hepatic impairment): reduce the dose and titrate with care (no number)"
)
_REMI_SRC = _gk(
    "ULTIVA (remifentanil) label (renal and hepatic impairment): no dose adjustment is given (no "
    "number; esterase metabolism)"
)
_THRESH_RENAL = (
    "the CrCL thresholds of 'moderate' (30 to < 60 mL/min) and 'severe' (< 30 mL/min) renal impairment "
    "are this toolkit's choice (as for celecoxib and ketorolac), UNVERIFIED"
)
_THRESH_HEP = "hepatic categories as in the HEPATIC covariate (1 mild, 2 moderate, 3 severe; Child-Pugh A/B/C)"

#: Usual adult starting doses of the opioids with a :class:`StartFraction` (check_regimen's reference).
USUAL_STARTS: tuple[UsualStart, ...] = (
    UsualStart("hydromorphone", "iv", 0.2, 1.0, "q2-3h", _DIL_IV),
    UsualStart("hydromorphone", "po", 2.0, 4.0, "q4-6h", _DIL_PO),
    UsualStart("oxycodone", "po", 5.0, 15.0, "q4-6h", _ROXI_PO),
)

#: The opioid labels' renal and hepatic starting-dose advice (see the module docstring). Every entry is
#: general knowledge (UNVERIFIED): the labels are not in models.md.
START_FRACTIONS: tuple[StartFraction, ...] = (
    # ---- hydromorphone (DILAUDID): every route ----
    StartFraction(
        "hydromorphone",
        "renal",
        "moderate renal impairment (CrCL 30 to < 60 mL/min)",
        _DIL_RENAL,
        when="CRCL < 60",
        fraction=0.5,
        unverified=True,
        note=_THRESH_RENAL,
        label="DILAUDID PI 2, 8.7",
    ),
    StartFraction(
        "hydromorphone",
        "renal",
        "severe renal impairment (CrCL < 30 mL/min)",
        _DIL_RENAL,
        when="CRCL < 30",
        fraction=0.25,
        unverified=True,
        note=_THRESH_RENAL,
        label="DILAUDID PI 2, 8.7",
    ),
    StartFraction(
        "hydromorphone",
        "hepatic",
        "mild hepatic impairment (Child-Pugh A)",
        _DIL_HEP,
        when="HEPATIC >= 1",
        fraction=0.5,
        unverified=True,
        note="'one-fourth to one-half ... depending on the extent': the upper end (50 %) for the mildest "
        "degree, read as applying to any hepatic impairment (the stricter reading; the label's data "
        "are for moderate impairment); " + _THRESH_HEP,
        label="DILAUDID PI 2, 8.6",
    ),
    StartFraction(
        "hydromorphone",
        "hepatic",
        "moderate or severe hepatic impairment (Child-Pugh B/C)",
        _DIL_HEP,
        when="HEPATIC >= 2",
        fraction=0.25,
        unverified=True,
        note="'one-fourth to one-half ... depending on the extent': the lower end (25 %, the stricter "
        "reading) for moderate and severe impairment; " + _THRESH_HEP,
        label="DILAUDID PI 2, 8.6",
    ),
    # ---- oxycodone IR (ROXICODONE) ----
    StartFraction(
        "oxycodone",
        "hepatic",
        "hepatic impairment",
        _ROXI_HEP,
        route="po",
        when="HEPATIC >= 1",
        fraction=1.0 / 3.0,
        unverified=True,
        note="'1/3 to 1/2 the usual starting dosage': the lower end, 1/3 (the stricter reading), for any "
        "degree (the label gives none); " + _THRESH_HEP,
        label="ROXICODONE PI 2",
    ),
    StartFraction(
        "oxycodone",
        "renal",
        "renal impairment (CrCL < 60 mL/min)",
        _ROXI_RENAL,
        route="po",
        when="CRCL < 60",
        unverified=True,
        note="no number: a note only (doses unchanged); the conservative start is left to the prescriber",
        label="ROXICODONE PI 2",
    ),
    # ---- no number in the labels: notes only ----
    StartFraction(
        "morphine",
        "renal",
        "renal impairment (CrCL < 60 mL/min)",
        _MOR_SRC,
        when="CRCL < 60",
        unverified=True,
        note="no number: a note only (doses unchanged); " + _THRESH_RENAL,
    ),
    StartFraction(
        "morphine",
        "hepatic",
        "hepatic impairment",
        _MOR_SRC,
        when="HEPATIC >= 1",
        unverified=True,
        note="no number: a note only (doses unchanged)",
    ),
    StartFraction(
        "fentanyl",
        "renal",
        "renal impairment (CrCL < 60 mL/min)",
        _FEN_SRC,
        when="CRCL < 60",
        unverified=True,
        note="no number: a note only (doses unchanged); " + _THRESH_RENAL,
    ),
    StartFraction(
        "fentanyl",
        "hepatic",
        "hepatic impairment",
        _FEN_SRC,
        when="HEPATIC >= 1",
        unverified=True,
        note="no number: a note only (doses unchanged)",
    ),
    StartFraction(
        "remifentanil",
        "renal",
        "renal impairment (CrCL < 60 mL/min)",
        _REMI_SRC,
        when="CRCL < 60",
        unverified=True,
        note="no number: a note only (doses unchanged)",
    ),
    StartFraction(
        "remifentanil",
        "hepatic",
        "hepatic impairment",
        _REMI_SRC,
        when="HEPATIC >= 1",
        unverified=True,
        note="no number: a note only (doses unchanged)",
    ),
)


def _floor_ug(x: float) -> float:
    """``x`` mg rounded down to a whole microgram (never above ``x``; exact products such as 0.125 kept)."""
    return math.floor(float(x) * 1000.0 * (1.0 + 1e-12)) / 1000.0


@dataclass(frozen=True)
class RescueFraction:
    """The as-needed / PCA dose fraction of one opioid by one route for one patient (:func:`rescue_fraction`).

    Attributes
    ----------
    drug, route
        Library drug name and route label.
    fraction
        The fraction applied (1.0: none): the smallest of the renal and the hepatic fraction that apply.
    rule
        The :class:`StartFraction` that sets ``fraction`` (``None`` when none applies).
    others
        The other numeric fractions that apply to the patient (less strict or equal), one per kind.
    start
        The label's usual adult starting dose by this route (``None`` where none is encoded).
    notes
        Advice without a number that applies to the patient (doses unchanged).
    unchecked
        Rules that could not be evaluated (a covariate missing).
    """

    drug: str
    route: str
    fraction: float = 1.0
    rule: StartFraction | None = None
    others: tuple[StartFraction, ...] = ()
    start: UsualStart | None = None
    notes: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()

    @property
    def applies(self) -> bool:
        """A fraction below 1 applies to this patient."""
        return self.rule is not None and self.fraction < 1.0

    @property
    def cap_mg(self) -> float:
        """Largest as-needed / PCA dose :func:`check_regimen` accepts: the fraction times the upper end of the
        label's usual adult starting dose (``math.inf`` when no fraction applies or no starting dose is
        encoded for the route)."""
        if not self.applies or self.start is None:
            return math.inf
        return self.fraction * self.start.high_mg

    def scale(self, dose_mg: float) -> float:
        """The dose given to this patient for a dose of ``dose_mg`` as written: the fraction times the dose as
        written, never above :attr:`cap_mg`, rounded down to a whole microgram; ``dose_mg`` unchanged when no
        fraction applies."""
        if not self.applies:
            return float(dose_mg)
        return _floor_ug(min(self.fraction * float(dose_mg), self.cap_mg))

    def short(self) -> str:
        """One line: ``"25 % (severe renal impairment (CrCL < 30 mL/min), DILAUDID PI 2, 8.7; UNVERIFIED)"``."""
        if not self.applies:
            return ""
        r = self.rule
        assert r is not None
        flag = "; UNVERIFIED" if r.is_unverified else ""
        return f"{fraction_text(self.fraction)} ({r.population}, {r.label or r.source.citation}{flag})"

    def describe(self) -> str:
        """What applies and why, e.g. ``"25 % of the dose as written (... severe renal impairment ...)"``."""
        if not self.applies:
            return ""
        r = self.rule
        assert r is not None
        route = ROUTE_DISPLAY.get(self.route, self.route)
        text = (
            f"{self.drug} {route} as-needed/PCA doses at {fraction_text(self.fraction)} of the dose as written "
            f"({r.kind} rule: {r.population}; {r.cite()})"
        )
        if self.start is not None:
            text += (
                f", at most {fraction_text(self.fraction)} x {format_number(self.start.high_mg)} mg = "
                f"{_d(self.cap_mg)} mg per dose (usual adult starting dose {self.start.describe()})"
            )
        for o in self.others:
            f = fraction_text(o.fraction or 1.0)
            if abs((o.fraction or 1.0) - self.fraction) < 1e-12:
                text += f"; the {o.kind} rule ({o.population}) gives the same {f}"
            else:
                text += f"; stricter than the {o.kind} rule ({o.population}: {f}), which is not applied"
        return text


def rescue_fraction(
    drug: str, route: str, covariates: Mapping[str, Any], *, include_unverified: bool = True
) -> RescueFraction:
    """The fraction of the as-needed (PRN) and PCA doses of ``drug`` by ``route`` for one patient.

    The labels' renal and hepatic starting-dose advice (:data:`START_FRACTIONS`): per kind (renal, hepatic)
    the smallest fraction whose condition holds, then the smaller of the two (the stricter; :attr:`others`
    keeps the one not used). Advice without a number comes back in ``notes``; a rule whose condition needs a
    missing covariate in ``unchecked``.

    Parameters
    ----------
    drug, route
        Library drug name (or alias) and route label.
    covariates
        The patient's covariates (``CRCL`` mL/min, ``HEPATIC`` 0-3).
    include_unverified
        Also apply rules flagged UNVERIFIED (every rule is, at present).
    """
    from pkpd.drugs import get_drug

    name = get_drug(drug).name
    best: dict[str, StartFraction] = {}
    notes: list[str] = []
    unchecked: list[str] = []
    for r in START_FRACTIONS:
        if r.drug != name or (r.route is not None and r.route != route):
            continue
        if r.is_unverified and not include_unverified:
            continue
        cond = r.condition()
        if cond is not None:
            missing = cond.missing(covariates)
            if missing:
                unchecked.append(
                    f"{name}: the {r.kind} starting-dose advice for {r.population} could not be checked: "
                    f"covariate{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing ({r.cite()})"
                )
                continue
            if not cond.evaluate(covariates):
                continue
        if r.fraction is None:
            notes.append(f"{name} {ROUTE_DISPLAY.get(route, route)}: {r.population}: {r.cite()}; {r.note}")
        elif r.kind not in best or r.fraction < (best[r.kind].fraction or 1.0):
            best[r.kind] = r
    start = next(
        (
            s
            for s in USUAL_STARTS
            if s.drug == name and s.route == route and (include_unverified or not s.is_unverified)
        ),
        None,
    )
    if not best:
        return RescueFraction(name, route, 1.0, None, (), start, tuple(notes), tuple(unchecked))
    rule = min(best.values(), key=lambda r: (r.fraction, r.kind != "renal"))
    others = tuple(r for r in best.values() if r is not rule)
    return RescueFraction(name, route, float(rule.fraction or 1.0), rule, others, start, tuple(notes), tuple(unchecked))


# --------------------------------------------------------------------------------------------------------
# Worst-case doses
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dose:
    time_h: float
    drug: str
    route: str
    amount_mg: float
    duration_h: float
    unit_mg: float | None  # one administration (None: continuous)
    cover_h: float | None  # dosing interval that follows this dose
    label: str
    kind: str  # "scheduled", "prn", "pca"

    @property
    def discrete(self) -> bool:
        return self.kind != "pca" and self.unit_mg is not None


def _worst_case(regimen: Regimen, cov: Mapping[str, Any]) -> list[_Dose]:
    out: list[_Dose] = []
    H = regimen.horizon_h
    for s in regimen.scheduled:
        events = s.events(cov, H)
        if not events:
            continue
        if s.is_continuous:
            label = s.short()
            if s.rate_mg_per_kg_h is not None:
                label += f" ({format_number(round(s.rate_for(cov), 6))} mg/h)"
            out += [
                _Dose(e.time_h, e.drug, e.route, e.amount_mg, e.duration_h, None, None, label, "scheduled")
                for e in events
            ]
            continue
        dose = events[0].amount_mg
        label = s.short(dose) if dose != s.dose_mg else s.short()
        if s.dose_mg_per_kg is not None and dose == s.dose_mg_per_kg * float(cov.get("WT", math.nan)):
            label += f" ({format_number(s.dose_mg_per_kg)} mg/kg)"
        out += [
            _Dose(e.time_h, e.drug, e.route, e.amount_mg, e.duration_h, e.amount_mg, s.every_h, label, "scheduled")
            for e in events
        ]
    for rules in regimen.prn_groups().values():
        out += _prn_worst(rules, H)
    for p in regimen.pca:
        if p.start_h >= H:
            continue
        if p.loading_mg > 0:
            out.append(
                _Dose(
                    p.start_h,
                    p.drug,
                    p.route,
                    p.loading_mg,
                    0.0,
                    p.loading_mg,
                    None,
                    f"{p.short()} (loading dose)",
                    "pca",
                )
            )
        end = min(H, math.inf if p.stop_h is None else p.stop_h)
        if end > p.start_h:
            how = "at its hourly maximum" if p.hourly_max_mg is not None else "at 60/lockout demands per hour"
            d = end - p.start_h
            out.append(
                _Dose(
                    p.start_h,
                    p.drug,
                    p.route,
                    p.max_rate_mg_h * d,
                    d,
                    p.demand_mg,
                    None,
                    f"{p.short()} ({how}, {format_number(round(p.max_rate_mg_h, 6))} mg/h)",
                    "pca",
                )
            )
    out.sort(key=lambda d: (d.time_h, d.drug))
    return out


def _prn_worst(rules: tuple, horizon: float) -> list[_Dose]:
    """Every dose of one PRN group at its minimum interval (largest active dose first; caps honoured)."""
    out: list[_Dose] = []
    given: dict[int, list[float]] = {id(p): [] for p in rules}
    t = min(p.start_h for p in rules)
    for _ in range(100_000):
        if t >= horizon:
            break
        active = [p for p in rules if p.active(t)]
        ok = [
            p for p in active if p.max_per_24h is None or sum(1 for x in given[id(p)] if x > t - 24.0) < p.max_per_24h
        ]
        if ok:
            p = max(ok, key=lambda q: (q.dose_mg, -q.min_interval_h))
            given[id(p)].append(t)
            out.append(_Dose(t, p.drug, p.route, p.dose_mg, 0.0, p.dose_mg, p.min_interval_h, p.short(), "prn"))
            t += p.min_interval_h
            continue
        nxt = [p.start_h for p in rules if p.start_h > t]
        for p in active:
            recent = [x for x in given[id(p)] if x > t - 24.0]
            if p.max_per_24h is not None and recent:
                nxt.append(min(recent) + 24.0)
        if not nxt:
            break
        t = min(nxt)
    return out


def _window_sum(doses: list[_Dose], s: float, width: float = 24.0) -> float:
    total = 0.0
    e = s + width
    for d in doses:
        if d.duration_h <= 0:
            total += d.amount_mg if s <= d.time_h < e else 0.0
        else:
            ov = min(e, d.time_h + d.duration_h) - max(s, d.time_h)
            total += d.amount_mg * ov / d.duration_h if ov > 0 else 0.0
    return total


def _max_window(doses: list[_Dose], width: float = 24.0) -> tuple[float, float]:
    """(largest amount in any window [s, s + width), its start s)."""
    cands = set()
    for d in doses:
        for x in (d.time_h, d.time_h + d.duration_h):
            cands.update((x, x - width, x + 1e-9, x - width + 1e-9))
    best, at = 0.0, 0.0
    for s in sorted(cands):
        v = _window_sum(doses, s, width)
        if v > best + 1e-9:
            best, at = v, s
    return best, at


# --------------------------------------------------------------------------------------------------------
# Phenotypes
# --------------------------------------------------------------------------------------------------------

_LABELS = {
    "pm": "poor",
    "poor": "poor",
    "poor metabolizer": "poor",
    "im": "intermediate",
    "intermediate": "intermediate",
    "intermediate metabolizer": "intermediate",
    "nm": "normal",
    "em": "normal",
    "normal": "normal",
    "normal metabolizer": "normal",
    "um": "ultrarapid",
    "ultrarapid": "ultrarapid",
    "ultrarapid metabolizer": "ultrarapid",
}


def _phenotypes(phenotypes: Mapping[str, Any] | None, cov: Mapping[str, Any]) -> dict[str, Any]:
    from pkpd.genetics import GenotypeError, Phenotype, phenotype, phenotype_from_score

    out: dict[str, Any] = {}
    if phenotypes is None:
        for gene, col in (("CYP2D6", "CYP2D6_AS"), ("CYP2C9", "CYP2C9_AS")):
            try:
                v = float(cov[col])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if not math.isnan(v):
                out[gene] = phenotype_from_score(gene, v)
        return out
    for gene, value in phenotypes.items():
        g = str(gene).strip().upper()
        if (
            value is None
            or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and value.strip().lower() in ("", "unknown", "nan", "not genotyped"))
        ):
            continue  # not genotyped: no genotype rule applies (the caller decides how to treat unknowns)
        try:
            if isinstance(value, Phenotype):
                out[value.gene] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[g] = phenotype_from_score(g, float(value))
            elif isinstance(value, str) and value.strip().lower() in _LABELS and g in ("CYP2D6", "CYP2C9"):
                out[g] = Phenotype(g, None, _LABELS[value.strip().lower()], "given by the caller")
            elif isinstance(value, str):
                text = value if value.strip().upper().startswith(g) else f"{g} {value}"
                out[g] = phenotype(text)
            else:
                raise RegimenError(
                    f"phenotype for {gene}: expected a label ('poor', 'PM'...), an activity score, "
                    f"a genotype ('*4/*4') or a Phenotype, got {value!r}"
                )
        except GenotypeError as exc:
            raise RegimenError(
                f"phenotype for {gene}: {exc}; labels accepted: poor/PM, intermediate/IM, normal/NM, ultrarapid/UM"
            ) from None
    return out


# --------------------------------------------------------------------------------------------------------
# Checker
# --------------------------------------------------------------------------------------------------------


def _d(x: float) -> str:
    """A number for a message: 4 significant digits (``743.1``, ``49.54``, ``4000``)."""
    return f"{float(x):.4g}"


_AGE_WORDS = {
    "AGE": "aged {v}",
    "WT": "weighing {v} kg",
    "CRCL": "with CrCL {v} mL/min",
    "HEPATIC": "with hepatic impairment grade {v}",
    "SCR": "with serum creatinine {v} mg/dL",
}


def _who(lim: LabelLimit, cov: Mapping[str, Any], phen: Mapping[str, Any]) -> str:
    parts = []
    cond = lim.condition()
    if cond is not None:
        for c in cond.satisfied(cov):
            v = _d(float(cov[c.column]))
            parts.append(_AGE_WORDS.get(c.column, f"with {c.column} = {{v}}").format(v=v))
    if lim.phenotype is not None:
        p = phen[lim.phenotype[0]]
        return f"a {lim.phenotype[0]} {p.label} metabolizer" + (f" {' and '.join(parts)}" if parts else "")
    if parts:
        return "a patient " + " and ".join(parts)
    return lim.population


def _ctx(lim: LabelLimit) -> str:
    return {"label": "label", "spinal fusion": "spinal-fusion", "CPIC": "CPIC-derived"}.get(lim.context, lim.context)


def _the(lim: LabelLimit, what: str, cov: Mapping[str, Any], phen: Mapping[str, Any]) -> str:
    """'the label maximum for a patient aged 70', 'the spinal-fusion maximum'..."""
    who = _who(lim, cov, phen)
    if lim.context == "spinal fusion":
        return f"the {_ctx(lim)} {what}"
    return f"the {_ctx(lim)} {what} for {who}"


def _cite(lim: LabelLimit) -> str:
    detail = f": {lim.source.detail}" if lim.source.unverified and lim.source.detail else ""
    return lim.source.citation + detail + ("; UNVERIFIED" if lim.is_unverified else "")


def _scope(doses: list[_Dose], lim: LabelLimit) -> list[_Dose]:
    return [d for d in doses if lim.route is None or d.route == lim.route]


def _labels(doses: list[_Dose]) -> str:
    seen: list[str] = []
    for d in doses:
        if d.label not in seen:
            seen.append(d.label)
    return " + ".join(seen)


def _worst_note(doses: list[_Dose]) -> str:
    kinds = {d.kind for d in doses}
    if kinds & {"prn", "pca"}:
        return " in the worst case (every PRN rule at its minimum interval, PCA at its hourly maximum)"
    return ""


def _route_words(lim: LabelLimit) -> str:
    return f" {ROUTE_DISPLAY.get(lim.route, lim.route)}" if lim.route else ""


def check_regimen(
    regimen: Regimen,
    covariates: Mapping[str, Any],
    phenotypes: Mapping[str, Any] | None = None,
    *,
    fusion: bool = True,
    include_unverified: bool = True,
) -> list[Finding]:
    """Check a regimen against label limits and CPIC rules for one patient, in the worst case.

    Parameters
    ----------
    regimen
        The regimen.
    covariates
        Patient covariates (``AGE``, ``WT``, ``CRCL``, ``HEPATIC``...). A limit whose condition needs a
        missing covariate gives an ``"unchecked"`` warning; a per-kg dose or a dose adjustment that needs
        one raises :class:`RegimenError` (see :meth:`Regimen.dose_events`).
    phenotypes
        Gene -> phenotype: a label (``"poor"``, ``"PM"``, ``"ultrarapid"``...), an activity score, a genotype
        string (``"*4/*4"``) or a :class:`pkpd.genetics.Phenotype`. ``None``: taken from the covariates
        ``CYP2D6_AS`` and ``CYP2C9_AS`` when present.
    fusion
        Apply the spinal-fusion caps (ketorolac <= 48 h and <= 240 mg; clinical.md 2).
    include_unverified
        Also apply limits flagged UNVERIFIED (general knowledge); their findings say so.

    Returns
    -------
    list of Finding
        Errors first, then warnings. Empty when the regimen is within every applicable limit.
    """
    from pkpd.genetics import cpic_recommendation

    cov = covariates
    phen = _phenotypes(phenotypes, cov)
    doses = _worst_case(regimen, cov)
    findings: list[Finding] = []

    def add(
        sev: str,
        drug: str,
        rule: str,
        msg: str,
        lim: LabelLimit | None,
        src: str | None = None,
        unverified: bool = False,
    ) -> None:
        findings.append(
            Finding(
                sev,
                drug,
                rule,
                msg,
                src if src is not None else str(lim.source),  # type: ignore
                unverified if lim is None else lim.is_unverified,
            )
        )

    for drug in regimen.drugs():
        mine = [d for d in doses if d.drug == drug]
        applicable = _applicable(drug, {d.route for d in mine}, cov, phen, fusion, include_unverified, add)

        # contraindications and exclusion windows
        for lim in applicable:
            if lim.contraindicated:
                routes = sorted({ROUTE_DISPLAY.get(d.route, d.route) for d in _scope(mine, lim)})
                what = f"{drug}{_route_words(lim)}" if lim.route else f"{drug} (given {', '.join(routes)})"
                add(
                    "error",
                    drug,
                    "contraindicated",
                    f"{what} is contraindicated for {_who(lim, cov, phen)} ({_cite(lim)})",
                    lim,
                )
            if lim.exclusive_window_h is not None:
                _exclusive(lim, mine, doses, add)

        # numeric limits: the most restrictive applicable value per (quantity, route scope)
        wt = float(cov["WT"]) if "WT" in cov else math.nan

        def tightest(fields: tuple[str, ...], route: str | None, _a: list = applicable, _w: float = wt) -> Any:
            return _tightest(_a, fields, route, _w)

        for route in sorted({lim.route for lim in applicable}, key=lambda r: r or ""):
            scoped = [d for d in mine if route is None or d.route == route]
            if not scoped:
                continue
            _check_single(drug, scoped, tightest(("max_single_mg", "max_single_mg_per_kg"), route), cov, phen, add)
            _check_daily(drug, scoped, tightest(("max_daily_mg", "max_daily_mg_per_kg"), route), cov, phen, add)
            iv = tightest(("min_interval_h",), route)
            _check_interval(drug, scoped, iv, cov, phen, add)
            _check_duration(drug, scoped, tightest(("max_duration_h",), route), iv, cov, phen, add)
            _check_total(drug, scoped, tightest(("max_total_mg",), route), cov, phen, add)

        # opioids: the labels' reduced starting dose in renal / hepatic impairment, on as-needed and PCA doses
        _check_start_fraction(regimen, drug, cov, include_unverified, add)

        # CPIC
        for gene, p in phen.items():
            rec = cpic_recommendation(drug, p)
            if rec.action == "avoid":
                strength = f" ({rec.strength})" if rec.strength else ""
                add(
                    "error",
                    drug,
                    "cpic",
                    f"{drug}: CPIC recommends avoiding it for a {gene} {p.label} metabolizer"
                    f"{strength}: {rec.text} ({rec.source})",
                    None,
                    rec.source,
                    rec.unverified,
                )
            elif rec.action == "reduce_dose":
                capped = any(
                    lim.phenotype is not None and lim.phenotype[0] == gene and lim in applicable
                    for lim in LIMITS
                    if lim.drug == drug
                )
                if not capped:
                    add(
                        "warning",
                        drug,
                        "cpic",
                        f"{drug}: CPIC recommends a reduced dose for a {gene} {p.label} "
                        f"metabolizer: {rec.text} ({rec.source})",
                        None,
                        rec.source,
                        rec.unverified,
                    )
    findings.sort(key=lambda f: (f.severity != "error", f.drug, f.rule))
    return findings


def _applicable(
    drug: str,
    routes: set[str],
    cov: Mapping[str, Any],
    phen: Mapping[str, Any],
    fusion: bool,
    include_unverified: bool,
    add: Any,
) -> list[LabelLimit]:
    """The limits of ``drug`` that apply to this patient and these routes; a limit whose condition needs a
    missing covariate is reported through ``add`` as an ``"unchecked"`` warning and skipped."""
    applicable: list[LabelLimit] = []
    for lim in LIMITS:
        if lim.drug != drug or (lim.is_unverified and not include_unverified):
            continue
        if lim.context == "spinal fusion" and not fusion:
            continue
        if lim.phenotype is not None:
            gene, labels = lim.phenotype
            if gene not in phen or phen[gene].label not in labels:
                continue
        if lim.route is not None and lim.route not in routes:
            continue
        cond = lim.condition()
        needs = list(cond.missing(cov)) if cond is not None else []
        per_kg = lim.max_single_mg_per_kg is not None or lim.max_daily_mg_per_kg is not None
        if per_kg and "WT" not in needs:
            try:
                if math.isnan(float(cov["WT"])):
                    needs.append("WT")
            except (KeyError, IndexError, TypeError, ValueError):
                needs.append("WT")
        if needs:
            add(
                "warning",
                drug,
                "unchecked",
                f"{drug}: the {_ctx(lim)} limit for {lim.population} could not be "
                f"checked: covariate{'s' if len(needs) > 1 else ''} {', '.join(needs)} missing ({_cite(lim)})",
                lim,
            )
            continue
        if cond is not None and not cond.evaluate(cov):
            continue
        applicable.append(lim)
    return applicable


@dataclass(frozen=True)
class DoseCaps:
    """The dose limits of one drug by one route for one patient (result of :func:`dose_caps`).

    Amounts in mg (per-kg limits already multiplied by the weight), times in h; ``math.inf`` (or 0 for
    ``min_interval_h``) where no limit applies. ``forbidden`` is the reason the drug must not be given
    at all (a contraindication or a CPIC 'avoid'), else ``None``. ``unchecked`` are the limits that could
    not be checked (missing covariates); ``notes`` CPIC dose-reduction advice without a numeric cap.
    """

    drug: str
    route: str
    max_single_mg: float = math.inf
    max_daily_mg: float = math.inf
    max_total_mg: float = math.inf
    max_duration_h: float = math.inf
    min_interval_h: float = 0.0
    forbidden: str | None = None
    notes: tuple[str, ...] = ()
    why: tuple[tuple[str, str], ...] = ()
    unchecked: tuple[str, ...] = ()  # (field, the binding limit: population and source)

    def reason(self, name: str) -> str:
        """Which limit sets ``name`` (e.g. ``"max_single_mg"``), or ``""``."""
        return dict(self.why).get(name, "")


def dose_caps(
    drug: str,
    route: str,
    covariates: Mapping[str, Any],
    phenotypes: Mapping[str, Any] | None = None,
    *,
    fusion: bool = True,
    include_unverified: bool = True,
) -> DoseCaps:
    """The tightest label, renal/hepatic, fusion and CPIC limits of ``drug`` by ``route`` for one patient.

    The same limits :func:`check_regimen` applies (route-specific and route-independent ones together),
    read as numbers so that an optimizer can stay inside them before the exact check.

    Parameters
    ----------
    drug, route
        Library drug name and route label (``"po"``, ``"iv"``...).
    covariates, phenotypes, fusion, include_unverified
        As for :func:`check_regimen`.

    Returns
    -------
    DoseCaps
    """
    from pkpd.drugs import get_drug
    from pkpd.genetics import cpic_recommendation

    name = get_drug(drug).name
    phen = _phenotypes(phenotypes, covariates)
    notes: list[str] = []
    unchecked: list[str] = []

    def add(sev, drug_, rule, msg, lim, src=None, unverified=False):  # only "unchecked" findings come here
        unchecked.append(msg)

    applicable = _applicable(name, {route}, covariates, phen, fusion, include_unverified, add)
    wt = float(covariates["WT"]) if "WT" in covariates else math.nan

    why: dict[str, str] = {}

    def tight(fields, default):
        found = [b for r in (None, route) if (b := _tightest(applicable, fields, r, wt)) is not None]
        if not found:
            return default
        val, lim, how = min(found, key=lambda b: b[0])
        why[fields[0]] = f"{lim.population}{how} ({_cite(lim)})"
        return val

    forbidden = None
    for lim in applicable:
        if lim.contraindicated:
            forbidden = f"{name} is contraindicated for {_who(lim, covariates, phen)} ({_cite(lim)})"
    for gene, p in phen.items():
        rec = cpic_recommendation(name, p)
        if rec.action == "avoid" and forbidden is None:
            forbidden = f"CPIC: avoid {name} in a {gene} {p.label} metabolizer ({rec.source})"
        elif rec.action == "reduce_dose" and not any(
            lim.phenotype is not None and lim.phenotype[0] == gene for lim in applicable
        ):
            notes.append(f"CPIC: reduced dose of {name} for a {gene} {p.label} metabolizer: {rec.text}")
    vals = (
        tight(("max_single_mg", "max_single_mg_per_kg"), math.inf),
        tight(("max_daily_mg", "max_daily_mg_per_kg"), math.inf),
        tight(("max_total_mg",), math.inf),
        tight(("max_duration_h",), math.inf),
        tight(("min_interval_h",), 0.0),
    )
    return DoseCaps(name, route, *vals, forbidden, tuple(notes), tuple(why.items()), tuple(unchecked))


def _tightest(
    applicable: list[LabelLimit], fields: tuple[str, ...], route: str | None, wt: float
) -> tuple[float, LabelLimit, str] | None:
    """(value in mg or h, limit, how a per-kg value was computed) of the most restrictive limit, or None."""
    best = None
    for lim in applicable:
        if lim.route != route:
            continue
        for f in fields:
            v = getattr(lim, f)
            if v is None:
                continue
            how = ""
            if f.endswith("_per_kg"):
                how = f" ({format_number(v)} mg/kg{'/day' if 'daily' in f else ''} x {_d(wt)} kg)"
                v = v * wt
            if best is None or v < best[0]:
                best = (v, lim, how)
    return best


#: Local anaesthetics by name (in addition to library entries whose drug_class names an anesthetic).
_LOCAL_ANESTHETICS = frozenset(
    {
        "bupivacaine",
        "levobupivacaine",
        "ropivacaine",
        "lidocaine",
        "mepivacaine",
        "chloroprocaine",
        "bupivacaine_liposomal",
    }
)


def _exclusive(lim: LabelLimit, mine: list[_Dose], doses: list[_Dose], add: Any) -> None:
    from pkpd.drugs import get_drug

    w = lim.exclusive_window_h
    assert w is not None
    others = [
        d
        for d in doses
        if d.drug != lim.drug and (d.drug in _LOCAL_ANESTHETICS or "anesth" in get_drug(d.drug).drug_class)
    ]
    reported = set()
    for d in mine:
        for o in others:
            if (
                o.time_h < d.time_h + w
                and o.time_h + o.duration_h > d.time_h - 1e-12
                and (o.time_h >= d.time_h or o.duration_h > 0)
            ):
                if o.label in reported:
                    continue
                reported.add(o.label)
                gap = format_number(round(o.time_h - d.time_h, 6))
                add(
                    "error",
                    lim.drug,
                    "exclusive_window",
                    f"{o.label} starts {gap} h after {d.label} (at {format_number(o.time_h)}h vs "
                    f"{format_number(d.time_h)}h); no other local anaesthetic may be given within "
                    f"{format_number(w)} h of liposomal bupivacaine ({_cite(lim)})",
                    lim,
                )


def _check_single(drug: str, doses: list[_Dose], best: Any, cov: Any, phen: Any, add: Any) -> None:
    if best is None:
        return
    lim_v, lim, how = best
    by_label: dict[str, float] = {}
    for d in doses:
        if d.unit_mg is not None:
            by_label[d.label] = max(by_label.get(d.label, 0.0), d.unit_mg)
    for label, x in by_label.items():
        if x > lim_v + 1e-9:
            add(
                "warning",
                drug,
                "max_single_dose",
                f"{label}: single doses of {_d(x)} mg; {_the(lim, 'maximum', cov, phen)} is "
                f"{_d(lim_v)} mg per dose{_route_words(lim)}{how} ({_cite(lim)})",
                lim,
            )


def _check_daily(drug: str, doses: list[_Dose], best: Any, cov: Any, phen: Any, add: Any) -> None:
    if best is None:
        return
    lim_v, lim, how = best
    total, start = _max_window(doses)
    if total > lim_v + 1e-6:
        inside = [d for d in doses if _window_sum([d], start) > 0]
        t0, t1 = min(d.time_h for d in inside), max(d.time_h for d in inside)
        span = (
            f"doses at {format_number(t0)}h" if t0 == t1 else f"doses from {format_number(t0)}h to {format_number(t1)}h"
        )
        add(
            "warning",
            drug,
            "max_daily_dose",
            f"{_labels(inside)} gives {_d(total)} mg/24 h ({span}){_worst_note(inside)}; "
            f"{_the(lim, 'maximum', cov, phen)} is {_d(lim_v)} mg/day{_route_words(lim)}{how} "
            f"({_cite(lim)})",
            lim,
        )


def _check_interval(drug: str, doses: list[_Dose], best: Any, cov: Any, phen: Any, add: Any) -> None:
    if best is None:
        return
    lim_v, lim, _ = best
    disc = sorted((d for d in doses if d.discrete), key=lambda d: d.time_h)
    worst = None
    for a, b in itertools.pairwise(disc):
        gap = b.time_h - a.time_h
        if gap < lim_v - 1e-9 and (worst is None or gap < worst[0]):
            worst = (gap, a, b)
    if worst is not None:
        gap, a, b = worst
        what = a.label if a.label == b.label else f"{a.label} and {b.label}"
        add(
            "warning",
            drug,
            "min_interval",
            f"{what}: doses {format_number(round(gap, 6))} h apart (at {format_number(a.time_h)}h and "
            f"{format_number(b.time_h)}h); {_the(lim, 'minimum interval', cov, phen)} is {format_number(lim_v)} h"
            f"{_route_words(lim)} ({_cite(lim)})",
            lim,
        )


def _check_duration(drug: str, doses: list[_Dose], best: Any, interval: Any, cov: Any, phen: Any, add: Any) -> None:
    if best is None or not doses:
        return
    lim_v, lim, _ = best
    default_cover = interval[0] if interval is not None else 0.0
    first = min(d.time_h for d in doses)
    end = max(
        d.time_h + max(d.duration_h, d.cover_h if d.cover_h is not None else (default_cover if d.discrete else 0.0))
        for d in doses
    )
    span = end - first
    if span > lim_v + 1e-9:
        add(
            "warning",
            drug,
            "max_duration",
            f"{_labels(doses)}: a course of {format_number(round(span, 6))} h (first dose at {format_number(first)}h, "
            f"counting the dosing interval after the last dose); {_the(lim, 'maximum course', cov, phen)} is "
            f"{format_number(lim_v)} h ({_cite(lim)})",
            lim,
        )


def _check_total(drug: str, doses: list[_Dose], best: Any, cov: Any, phen: Any, add: Any) -> None:
    if best is None:
        return
    lim_v, lim, _ = best
    total = sum(d.amount_mg for d in doses)
    if total > lim_v + 1e-6:
        add(
            "warning",
            drug,
            "max_total_dose",
            f"{_labels(doses)} gives {format_number(round(total, 6))} mg in total{_worst_note(doses)}; "
            f"{_the(lim, 'maximum', cov, phen)} is {format_number(lim_v)} mg per course ({_cite(lim)})",
            lim,
        )


def _check_start_fraction(
    regimen: Regimen, drug: str, cov: Mapping[str, Any], include_unverified: bool, add: Any
) -> None:
    """A PRN dose, PCA demand or PCA loading dose of ``drug`` above the patient's :func:`rescue_fraction` times
    the upper end of the label's usual adult starting dose by that route (:attr:`RescueFraction.cap_mg`)."""
    from pkpd.drugs import get_drug

    by_route: dict[str, dict[str, float]] = {}
    for r in regimen.prn:
        if get_drug(r.drug).name == drug:
            d = by_route.setdefault(r.route, {})
            d[r.short()] = max(d.get(r.short(), 0.0), float(r.dose_mg))
    for p in regimen.pca:
        if get_drug(p.drug).name == drug:
            d = by_route.setdefault(p.route, {})
            d[p.short()] = max(d.get(p.short(), 0.0), float(p.demand_mg), float(p.loading_mg))
    for route in sorted(by_route):
        rf = rescue_fraction(drug, route, cov, include_unverified=include_unverified)
        for msg in rf.unchecked:
            add("warning", drug, "unchecked", msg, None, msg, True)
        if not rf.applies:
            continue
        rule = rf.rule
        assert rule is not None
        if rf.start is None:
            msg = (
                f"{drug}: as-needed/PCA doses {ROUTE_DISPLAY.get(route, route)} for {rule.population} should be "
                f"{fraction_text(rf.fraction)} of the usual starting dose ({rule.cite()}), but no usual starting "
                "dose by this route is encoded: not checked"
            )
            add("warning", drug, "unchecked", msg, None, str(rule.source), True)
            continue
        cond = rule.condition()
        parts = [
            _AGE_WORDS.get(c.column, f"with {c.column} = {{v}}").format(v=_d(float(cov[c.column])))
            for c in (cond.satisfied(cov) if cond is not None else ())
        ]
        who = "a patient " + " and ".join(parts) if parts else rule.population
        for label, x in by_route[route].items():
            if x > rf.cap_mg + 1e-9:
                add(
                    "warning",
                    drug,
                    "starting_dose",
                    f"{label}: as-needed/PCA doses of {_d(x)} mg; for {who} ({rule.population}) the label's "
                    f"starting dose is {fraction_text(rf.fraction)} of the usual adult starting dose "
                    f"({rf.start.describe()}): at most {_d(rf.cap_mg)} mg per dose ({rule.cite()}; usual "
                    f"starting dose: {rf.start.source.detail or rf.start.source.citation})",
                    None,
                    f"{rule.source}; {rf.start.source}",
                    True,
                )


def format_findings(findings: list[Finding]) -> str:
    """One line per finding (``"no findings"`` when empty)."""
    return "\n".join(str(f) for f in findings) if findings else "no findings"
