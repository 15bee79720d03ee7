"""Postoperative pain intensity (NRS 0-10), patient demand for rescue, and non-drug modalities.

Pain model
----------
``NRS(t) = clip(B(t) * S * (1 - E(t)) + PT(t) - TENS(t), 0, 10)`` where

* ``B(t) = B_inf + (B0 - B_inf) * exp(-ln2 * t / t_half) + A * cos(2 pi (clock(t) - 23 h) / 24 h)``: the
  untreated postoperative pain, ~7 at the end of surgery and resolving over days with a 24-48 h half-life
  plus a diurnal term peaking at 23:00 (clinical.md 3.2 SPINE-72 "pain dynamics"; the 23:00 peak is the
  rescue-hazard peak of Goulooze 2020). Opioid-tolerant patients start higher (clinical.md 3.2).
* ``S`` is the patient's pain sensitivity (log-normal IIV; lowered by psychological support/education when
  that assumption is enabled) times the setting's multiplier ``setting_scale`` (1 from outcome-model
  calibration 3 on, whose trial effect is on the rescue propensity, ``DemandModel.setting_propensity``; the
  reference trial's effect in calibration 2; a population column ``pain.scale`` gives another setting);
* ``E(t)`` is the combined analgesic relief from :mod:`pkpd.pd`;
* ``PT(t)`` adds activity-evoked pain during physical-therapy sessions and ``TENS(t)`` removes pain while a
  wearable electrical stimulator is on.

The references give **no** effect sizes for TENS, physical therapy, education or minimally invasive
surgery in this setting, nor a parametric pain-resolution model after spine surgery (models.md B3 and E).
Those terms exist but their sizes are assumptions, flagged ``unverified``, and **off by default**
(``PainModel(enable_assumed_modalities=True)`` switches them on).

Demand
------
A patient asks for rescue with hazard (per hour)
``lambda(NRS) = lambda_kind * D * sigmoid((NRS - n50) / s) / (1 + U_op / opioid_half)``: the repeated
time-to-event structure of Goulooze 2020 (rescue at NRS >= 4; the hazard falls with the opioid
concentration beyond its effect through pain: morphine halved it at 9.3 ng/mL). ``lambda_kind`` differs for
PCA, nurse-given IV PRN and oral PRN; ``D`` is the patient's rescue propensity (log-normal, SD
``iiv_sd``). A PRN rule ("at NRS >= 4") is applied to the patient's *reported* score, ``NRS + e`` with
``e ~ N(0, report_sd)``: whether a dose is given depends on the pain continuously, with no hard gate. The
values come from the outcome-model calibration (:mod:`pkpd.outcome`); no published PCA-demand model exists
(models.md B6).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .drugs._base import Source
from .outcome import outcome_point, outcome_posterior
from .pd import PDValue

__all__ = ["DemandModel", "PainModel"]

_SPINE = Source("clinical.md 3.2 SPINE-72 benchmark", "untreated NRS ~7, half-life 24-48 h, diurnal term")
_ASSUME = Source("assumption of this toolkit (gap in models.md B3/E)", unverified=True)
_PT = outcome_point()
_CAL = Source(
    f"outcome-model calibration {outcome_posterior().version} (pkpd/datasets/outcome_posterior.json, "
    "regimens.calibration)",
    "posterior median; fitted to the evidence base's trial arms",
    unverified=True,
)


def _v(value, unit, source, note="", unverified=False) -> PDValue:
    return PDValue(float(value), unit, source, unverified, note)


@dataclass(frozen=True)
class PainModel:
    """Parameters of the NRS model (see the module docstring). Times in h, pain in NRS points."""

    b0: PDValue = _v(_PT["b0"], "NRS", _CAL, "untreated NRS at the end of surgery (prior: ~7, clinical.md 3.2)")
    b_inf: PDValue = _v(_PT["b_inf"], "NRS", _CAL, "residual (untreated) pain after the acute phase resolves")
    t_half: PDValue = _v(_PT["t_half"], "h", _CAL, "half-life of the acute pain (prior: 24-48 h, clinical.md 3.2)")
    diurnal_amp: PDValue = _v(0.5, "NRS", _ASSUME, "amplitude of the diurnal term")
    diurnal_peak_clock: PDValue = _v(23.0, "h", Source("Goulooze 2020, Anesth Analg", "23:00 hazard peak"))
    surgery_end_clock: PDValue = _v(14.0, "h", _ASSUME, "clock time of t = 0 (end of surgery)")
    b0_sd: PDValue = _v(1.0, "NRS", _ASSUME, "IIV of B0 (normal)")
    t_half_cv: PDValue = _v(0.4, "1", _ASSUME, "IIV of the resolution half-life (log-normal CV)")
    sensitivity_sd: PDValue = _v(_PT["sensitivity_sd"], "1 (log SD)", _CAL, "IIV of the pain sensitivity S")
    setting_scale: PDValue = _v(
        outcome_posterior().reference_pain_scale(),
        "x",
        Source(
            f"outcome-model calibration {outcome_posterior().version}",
            "posterior trial effect of the reference setting "
            f"({outcome_posterior().reference_trial or 'none'}): the SPINE-72 benchmark stands for its setting "
            "(clinical.md 3.2)",
            unverified=True,
        ),
        "multiplier of the pain curve of the simulated setting (population column pain.scale per row)",
    )
    setting_spread: PDValue = _v(
        outcome_posterior().reference_pain_spread(),
        "x",
        Source(
            f"outcome-model calibration {outcome_posterior().version}",
            "posterior trial dispersion effect of the "
            f"reference setting ({outcome_posterior().reference_trial or 'none'})",
            unverified=True,
        ),
        "multiplier of the between-patient SDs of pain sensitivity and rescue propensity in the simulated setting "
        "(population column pain.spread per row)",
    )
    tolerant_b0_shift: PDValue = _v(
        _PT["tol_b0_shift"], "NRS", _CAL, "opioid-tolerant: higher untreated pain (clinical.md 3.2; size calibrated)"
    )
    tolerant_ec50_factor: PDValue = _v(
        _PT["tol_ec50_factor"], "x", _CAL, "opioid-tolerant: opioid EC50 multiplier (clinical.md 3.2; size calibrated)"
    )
    tolerant_ketamine_emax: PDValue = _v(
        _PT["emax_ketamine_tolerant"],
        "1",
        _CAL,
        "opioid-tolerant: additional ceiling of ketamine's anti-hyperalgesia (Nielsen 2017, Loftus 2010)",
    )
    oprm1_ec50_factor: PDValue = _v(
        1.10,
        "x per G allele",
        Source("clinical.md 5.2", "soft +10 % EC50 shift per G carrier (my derivation, UNVERIFIED)"),
        unverified=True,
    )
    # non-drug modalities (assumptions, off unless enabled)
    mis_b0_factor: PDValue = _v(0.85, "x", _ASSUME, "minimally invasive vs open: lower baseline pain")
    education_sensitivity_factor: PDValue = _v(0.9, "x", _ASSUME, "psychological support / education")
    pt_increment: PDValue = _v(1.5, "NRS", _ASSUME, "activity-evoked pain during physical-therapy sessions")
    tens_reduction: PDValue = _v(0.7, "NRS", _ASSUME, "wearable electrical stimulation while on")
    enable_assumed_modalities: bool = False

    def replace(self, **changes) -> PainModel:
        """Copy with some values changed (a plain number keeps the value's unit, source and flags)."""
        return _replace(self, changes)


@dataclass(frozen=True)
class DemandModel:
    """Rescue demand (see the module docstring): hazards per kind (1/h), their pain and opioid dependence,
    the patients' propensity spread and the noise of a reported pain score."""

    pca_lambda_max: PDValue = _v(_PT["lambda_pca"], "1/h", _CAL, "PCA demands per hour at high pain")
    prn_iv_lambda_max: PDValue = _v(
        _PT["lambda_prn_iv"], "1/h", _CAL, "nurse-given IV PRN requests per hour at high pain"
    )
    prn_lambda_max: PDValue = _v(_PT["lambda_prn_po"], "1/h", _CAL, "oral PRN requests per hour at high pain")
    n50: PDValue = _v(
        _PT["n50"], "NRS", _CAL, "pain at half the maximal hazard (prior: rescue at NRS >= 4, Goulooze 2020)"
    )
    slope: PDValue = _v(0.7, "NRS", _ASSUME, "width of the rise of the hazard with NRS")
    iiv_sd: PDValue = _v(_PT["demand_iiv"], "1 (log SD)", _CAL, "between-patient SD of log rescue propensity")
    report_sd: PDValue = _v(_PT["report_sd"], "NRS", _CAL, "SD of a reported score around the model's pain")
    opioid_half: PDValue = _v(
        _PT["opioid_half"], "normalized units", _CAL, "opioid effect halving the hazard (structure: Goulooze 2020)"
    )
    relax_tau: PDValue = _v(0.3, "NRS", Source("this toolkit", "temperature of the smooth PRN threshold"))
    setting_propensity: PDValue = _v(
        outcome_posterior().reference_rescue_propensity(),
        "x",
        Source(
            f"outcome-model calibration {outcome_posterior().version}",
            "posterior trial effect on rescue propensity of "
            f"the reference setting ({outcome_posterior().reference_trial or 'none'}; 1 where the calibration's trial "
            "effect is on the pain curve instead): the SPINE-72 benchmark stands for its setting (clinical.md 3.2)",
            unverified=True,
        ),
        "multiplier of every rescue-request hazard in the simulated setting (population column "
        "rescue.propensity per row)",
    )

    def hazard(self, nrs, xp=math, opioid_units=0.0):
        """Demand hazards (1/h) of a typical patient (propensity 1) at pain ``nrs`` and opioid effect
        ``opioid_units``: ``(pca, nurse IV PRN, oral PRN)``."""
        s = 1.0 / (1.0 + xp.exp(-(nrs - self.n50.value) / self.slope.value))
        s = s / (1.0 + opioid_units / self.opioid_half.value)
        return (self.pca_lambda_max.value * s, self.prn_iv_lambda_max.value * s, self.prn_lambda_max.value * s)

    def replace(self, **changes) -> DemandModel:
        """Copy with some values changed (a plain number keeps the value's unit, source and flags)."""
        return _replace(self, changes)


def _replace(obj, changes: dict):
    out = {}
    for k, v in changes.items():
        cur = getattr(obj, k)
        out[k] = (
            v if not isinstance(cur, PDValue) or isinstance(v, PDValue) else dataclasses.replace(cur, value=float(v))
        )
    return dataclasses.replace(obj, **out)
