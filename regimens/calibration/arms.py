"""Simulated trial arms: the virtual population of an arm, and the arm's reported outcomes computed from a
simulation in the trial's own units (its opioid, route, window and statistic).

A *target* is one number an arm reports that the calibration uses: an opioid mean (with its SD where
reported), a median, or a mean pain over a window. :func:`arm_targets` lists them with their observation
scale (log for opioid amounts, linear for NRS) and standard error; :func:`simulated_statistics` computes the
same statistics from a :class:`pkpd.population.PopulationResult` of the arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pkpd.patients import PopulationSpec, spine72_population
from pkpd.population import mme_factor

from ..evidence import Arm, EvidenceError, Outcome, Trial, arm_regimen

__all__ = ["ArmSim", "Target", "arm_population", "arm_targets", "simulated_statistics", "calibration_arms"]

#: CV assumed for an arm whose mean is reported without any spread (used only for its standard error).
ASSUMED_CV = 0.5
#: Simulated opioid statistics are floored at this fraction of the observed value (see simulated_statistics).
FLOOR = 0.05


@dataclass(frozen=True)
class Target:
    """One reported number used by the calibration.

    ``stat`` is ``"log_mean"``, ``"log_sd"``, ``"log_median"`` (opioid amounts, log scale) or
    ``"pain_mean"`` (NRS, linear); ``value`` the observed value on that scale, ``se`` its standard error
    (from the arm's N and spread); ``outcome`` the evidence entry it comes from.
    """

    trial: str
    arm: str
    stat: str
    value: float
    se: float
    outcome: Outcome
    n: int

    @property
    def key(self) -> str:
        return f"{self.trial}/{self.arm}/{self.stat}"


@dataclass(frozen=True)
class ArmSim:
    """An arm ready to simulate: its trial, the arm, the regimen and the population spec and tolerance."""

    trial: Trial
    arm: Arm
    p_tolerant: float

    @property
    def key(self) -> str:
        return f"{self.trial.id}/{self.arm.id}"

    def regimen(self):
        return arm_regimen(self.arm)


def calibration_arms(evidence, use: str = "calibration") -> list[ArmSim]:
    """Every arm of the trials with ``use``, with its share of opioid-tolerant patients."""
    out = []
    for t in evidence.used(use):
        for a in t.arms:
            raw = a.p_opioid_tolerant if a.p_opioid_tolerant is not None else t.simulation.get("p_opioid_tolerant")
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise EvidenceError(f"{t.id} arm {a.id}: p_opioid_tolerant must be a number (trial or arm)")
            out.append(ArmSim(t, a, float(raw)))
    return out


def arm_population(arm: ArmSim, n: int, seed: int) -> pd.DataFrame:
    """``n`` virtual patients of the arm's trial: the SPINE-72 population with the trial's share of
    opioid-tolerant patients, and its age and weight where the trial file gives them."""
    sim = arm.trial.simulation
    spec = PopulationSpec()
    vals = {"p_opioid_tolerant": arm.p_tolerant}
    if "age" in sim:
        vals["age"] = tuple(float(x) for x in sim["age"])
    if "weight" in sim:
        vals["weight"] = tuple(float(x) for x in sim["weight"])
        # keep the sex difference compatible with a smaller SD
        vals["weight_sex_difference"] = min(float(spec.weight_sex_difference.value), 1.5 * float(sim["weight"][1]))
    spec = spec.with_values(**vals)
    return spine72_population(n, seed, spec)


def _opioid_factor(arm: ArmSim, o: Outcome) -> float:
    """MME per unit of the reported opioid amount (1 for MME outcomes); checks the regimen gives only that
    opioid so that its amount is the MME divided by the factor."""
    if o.drug.upper() == "MME":
        return 1.0
    reg = arm.regimen()
    ops = {(it.drug, it.route) for it in (*reg.scheduled, *reg.prn, *reg.pca) if mme_factor(it.drug, it.route) > 0}
    want = (o.drug, o.route or "iv")
    if ops != {want}:
        raise EvidenceError(f"{arm.key}: outcome in {o.drug} {o.route} mg but the regimen's opioids are {sorted(ops)}")
    f = mme_factor(*want)
    unit = o.unit.lower().replace("µ", "u")
    if unit in ("mcg", "ug", "microg"):
        return f / 1000.0
    if unit in ("mg", "mg/kg/h"):
        return f
    raise EvidenceError(f"{arm.key}: opioid unit {o.unit!r} is not supported (mg, ug, mg/kg/h)")


def arm_targets(arm: ArmSim) -> list[Target]:
    """The numbers of ``arm`` the calibration uses (outcomes with ``fit = true`` inside 0-72 h)."""
    out = []
    n = int(arm.arm.n)
    for o in arm.arm.outcomes:
        if not o.fit or o.window[1] > 72.0 + 1e-9:
            continue
        v = o.values
        t, a = arm.trial.id, arm.arm.id
        if o.kind == "opioid":
            if o.statistic == "mean_sd":
                m, sd = v[0], v[1]
                out.append(Target(t, a, "log_mean", math.log(m), sd / m / math.sqrt(n), o, n))
                out.append(Target(t, a, "log_sd", math.log(sd), 1.0 / math.sqrt(2.0 * (n - 1)), o, n))
            elif o.statistic == "mean_ci":
                m, lo, hi = v
                se = max((hi - lo) / (2 * 1.96), 1e-12) / m
                out.append(Target(t, a, "log_mean", math.log(m), se, o, n))
            elif o.statistic == "mean_only":
                m = v[0]
                out.append(Target(t, a, "log_mean", math.log(m), ASSUMED_CV / math.sqrt(n), o, n))
            elif o.statistic == "median_iqr":
                med, q1, q3 = v
                # SE of a median ~ 1.2533 sigma / sqrt(n); sigma of the log from the IQR (normal on the log)
                s_log = (math.log(q3) - math.log(max(q1, 1e-9))) / 1.349
                out.append(Target(t, a, "log_median", math.log(med), 1.2533 * s_log / math.sqrt(n), o, n))
        elif o.kind == "pain" and o.statistic == "mean_sd":
            out.append(Target(t, a, "pain_mean", v[0], v[1] / math.sqrt(n), o, n))
    return out


def _window_sum(hourly: np.ndarray, w: tuple[float, float]) -> np.ndarray:
    h0, h1 = int(round(w[0])), int(round(w[1]))
    return hourly[:, h0:h1].sum(axis=1)


def patient_values(arm: ArmSim, o: Outcome, result, population: pd.DataFrame) -> np.ndarray:
    """Per-patient values of an outcome in the trial's units (opioid amount in the window; mean pain)."""
    w = o.window
    if o.kind == "opioid":
        mme = _window_sum(result.mme_hourly, w)
        amt = mme / _opioid_factor(arm, o)
        if o.unit.lower() == "mg/kg/h":
            amt = amt / population["WT"].to_numpy(float) / max(w[1] - w[0], 1e-9)
        return amt
    if o.kind == "pain":
        h0, h1 = int(round(w[0])), max(int(round(w[1])), int(round(w[0])) + 1)
        return result.nrs_hourly[:, h0:h1].mean(axis=1)
    raise EvidenceError(f"{arm.key}: outcome kind {o.kind} cannot be simulated")


def simulated_statistics(arm: ArmSim, targets: list[Target], values: dict[int, np.ndarray]) -> np.ndarray:
    """The targets' statistics from per-patient values (``values[id(outcome)]``, (..., n_patients)), on the
    targets' scales. Leading axes (e.g. design points) are kept."""
    out = []
    for t in targets:
        x = values[id(t.outcome)]
        # floor at 5 % of the observed value: far below it the fit is equally poor, and log(0) (an arm whose
        # simulated patients use no opioid at some design points) would dominate the emulator
        floor = math.exp(t.value) * FLOOR if t.stat.startswith("log") else 0.0
        if t.stat == "log_mean":
            out.append(np.log(np.maximum(x.mean(-1), floor)))
        elif t.stat == "log_sd":
            out.append(np.log(np.maximum(x.std(-1, ddof=1), floor)))
        elif t.stat == "log_median":
            out.append(np.log(np.maximum(np.median(x, -1), floor)))
        elif t.stat == "pain_mean":
            out.append(x.mean(-1))
        else:  # pragma: no cover - arm_targets makes only these
            raise ValueError(t.stat)
    return np.stack(out, -1) if out else np.zeros(x.shape[:-1] + (0,))
