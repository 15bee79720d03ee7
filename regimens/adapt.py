"""A comparator regimen adapted to one patient's label, renal, hepatic and CPIC limits.

A standard regimen (C0, C1) is written for a typical adult. For a patient with contraindications (severe
hepatic impairment, CrCL < 30 mL/min, a CYP2C9 poor metabolizer...) it may contain a drug the patient must
not receive or a dose above the patient's cap, and a proposal compared with it would be compared with a
schedule nobody would give. :func:`adapt_to_patient` makes the schedule a clinician would give instead, by
the same rules the optimizer's schedules obey (:func:`regimens.limits.check_regimen`, the same limits), and
says what it changed:

1. every scheduled item (a dosing series) gets a multiplier of its doses, 1 to start with (dose adjustments
   of the regimen applied for the patient);
2. a drug the patient must not receive by that route (contraindication, CPIC 'avoid') is removed (0);
3. an item whose largest dose is above the patient's maximum single dose is lowered to it;
4. a daily maximum that is still exceeded lowers every item of that drug by the same factor (the largest
   amount in any 24 h brought to the cap: a clinician lowers the dose rather than stopping the drug early),
   and a lowered dose is rounded down to a dispensable strength of the product (gabapentin 300 mg, not 350);
5. while a total, duration, interval or exclusivity limit (or a daily one the scaling could not meet) is still
   exceeded, the latest-starting dosing series of that drug is left out.

Because the result is one multiplier per item, a population's comparators are simulated in one batched call
of the regimen as written with per-patient ``dose_weights`` (:func:`pkpd.regimen_sim.simulate_regimen`).

As-needed rules, PCA and non-drug modalities are kept as they are (the rescue opioids; their own findings,
if any, are the regimen's as given). Nothing is added: a removed drug is not replaced by another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._model import Regimen
from .limits import Finding, check_regimen, dose_caps

__all__ = ["Adapted", "adapt_to_patient", "weighted"]


@dataclass(frozen=True)
class Adapted:
    """Result of :func:`adapt_to_patient`.

    Attributes
    ----------
    regimen
        The adapted regimen (``"<name> adapted"``), or the regimen itself when nothing had to change.
    changes
        One line per changed drug and route: what was given, what is given now and the limit (with its
        source) that made the change.
    findings
        :func:`check_regimen` findings of the regimen as given, for this patient (scheduled drugs only).
    weights
        Multiplier of each scheduled item's doses (the regimen's order; 0: left out): the adapted regimen is
        :func:`weighted` ``(regimen, weights)``, and a batched simulation of the regimen with these
        ``dose_weights`` simulates it.
    """

    regimen: Regimen
    changes: tuple[str, ...]
    findings: tuple[Finding, ...]
    weights: np.ndarray

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _scheduled_findings(reg: Regimen, cov: Mapping[str, Any], fusion: bool) -> list[Finding]:
    drugs = {s.drug for s in reg.scheduled}
    return [f for f in check_regimen(reg, cov, None, fusion=fusion) if f.drug in drugs]


def _max_24h(doses: list[tuple[float, float]]) -> float:
    """Largest amount (mg) whose dose starts fall within any 24 h (windows starting at a dose)."""
    return max((sum(a for t, a in doses if t0 - 1e-9 <= t < t0 + 24.0 - 1e-9) for t0, _ in doses), default=0.0)


def _strength_at_most(drug: str, route: str, dose_mg: float) -> float | None:
    """The largest dispensable strength (mg) of ``drug``/``route`` at or below ``dose_mg`` (0 when none); None
    when no product of that drug and route is defined (the dose is then kept as computed)."""
    from pkpd.drugs.products import PRODUCTS

    prod = PRODUCTS.get(f"{drug}/{route}")
    if prod is None:  # no product: any dose is kept
        return None
    if prod.per_kg:
        return None
    ok = [x for x in prod.strengths_mg if x <= dose_mg + 1e-9]
    return ok[-1] if ok else 0.0


def weighted(regimen: Regimen, weights: np.ndarray, name: str | None = None) -> Regimen:
    """``regimen`` with each scheduled item's doses (or rate) multiplied by its weight; items of weight 0 are
    left out. The same schedule :func:`pkpd.regimen_sim.simulate_regimen` simulates with
    ``dose_weights`` (one row of ``weights`` per patient)."""
    items = []
    for it, w in zip(regimen.scheduled, np.asarray(weights, float)):
        if w <= 0:
            continue
        if w == 1.0:
            items.append(it)
            continue
        ch = {f: getattr(it, f) * w for f in ("dose_mg", "dose_mg_per_kg", "rate_mg_per_kg_h", "rate_mg_h")
              if getattr(it, f) is not None}
        adj = tuple(dataclasses.replace(a, dose_mg=a.dose_mg * w) if getattr(a, "dose_mg", None) is not None else a
                    for a in it.adjustments)
        items.append(dataclasses.replace(it, adjustments=adj, **ch))
    return dataclasses.replace(regimen, name=name or regimen.name, scheduled=tuple(items))


def adapt_to_patient(regimen: Regimen, covariates: Mapping[str, Any], *, fusion: bool = True) -> Adapted:
    """``regimen``'s scheduled doses within one patient's limits (see the module docstring).

    Parameters
    ----------
    regimen
        The comparator as written (e.g. ``get_regimen("C1")``).
    covariates
        The patient's covariates (``AGE`` y, ``WT`` kg, ``CRCL`` mL/min, ``HEPATIC`` 0-3, ``CYP2D6_AS``,
        ``CYP2C9_AS``...), as for :func:`regimens.limits.check_regimen`.
    fusion
        Apply the spinal-fusion ketorolac caps.

    Returns
    -------
    Adapted
        The adapted regimen, the per-item dose multipliers and what changed (empty when the regimen as given
        is within the limits).
    """
    cov = dict(covariates)
    n = len(regimen.scheduled)
    given = tuple(_scheduled_findings(regimen, cov, fusion))
    if not given:
        return Adapted(regimen, (), given, np.ones(n))
    w = np.ones(n)
    # each item's own doses for this patient (adjustments and per-kg doses resolved)
    doses = [[(e.time_h, e.amount_mg) for e in Regimen(name="x", scheduled=(it,), horizon_h=regimen.horizon_h)
              .dose_events(cov) if e.kind == "scheduled"] for it in regimen.scheduled]
    why: dict[tuple[str, str], list[str]] = {}

    def note(key, text):
        if text not in why.setdefault(key, []):
            why[key].append(text)

    caps = {key: dose_caps(key[0], key[1], cov, None, fusion=fusion)
            for key in sorted({(it.drug, it.route) for it in regimen.scheduled})}
    # 2-3: contraindicated drugs out, an item's doses lowered to the single-dose cap
    for i, it in enumerate(regimen.scheduled):
        c = caps[(it.drug, it.route)]
        if c.forbidden:
            w[i] = 0.0
            note((it.drug, it.route), f"removed: {c.forbidden}")
            continue
        top = max((a for _, a in doses[i]), default=0.0)
        if top > c.max_single_mg + 1e-9:
            w[i] = c.max_single_mg / top
            note((it.drug, it.route), f"doses lowered to at most {c.max_single_mg:g} mg ({c.reason('max_single_mg')})")
    # 4: daily maxima: every item of the drug and route lowered by one factor
    for key, c in caps.items():
        idx = [i for i, it in enumerate(regimen.scheduled) if (it.drug, it.route) == key and w[i] > 0]
        if not idx or not np.isfinite(c.max_daily_mg):
            continue
        peak = _max_24h([(t, a * w[i]) for i in idx for t, a in doses[i]])
        if peak > c.max_daily_mg + 1e-9:
            f = c.max_daily_mg / peak
            w[idx] *= f
            note(key, f"every dose x {f:.2f} (at most {c.max_daily_mg:g} mg in any 24 h: {c.reason('max_daily_mg')})")
    # dispensable doses: a lowered item takes the largest strength of its product at or below the lowered dose
    for i, it in enumerate(regimen.scheduled):
        if 0 < w[i] < 1:
            top = max((a for _, a in doses[i]), default=0.0)
            lower = _strength_at_most(it.drug, it.route, top * w[i])
            if lower is not None and top > 0:
                w[i] = lower / top
                if lower <= 0:
                    note((it.drug, it.route), "a dosing series left out: no dispensable strength fits the limits")
    # 5: an item of a drug that still breaks a limit is left out, the latest-starting first
    for _ in range(n + 1):
        bad = _scheduled_findings(weighted(regimen, w), cov, fusion)
        if not bad:
            break
        f = bad[0]
        idx = [i for i, it in enumerate(regimen.scheduled) if it.drug == f.drug and w[i] > 0]
        last = max(idx, key=lambda i: max((t for t, _ in doses[i]), default=-np.inf))
        w[last] = 0.0
        note((f.drug, regimen.scheduled[last].route), f"a dosing series left out: {f.message}")
    else:  # pragma: no cover - each pass removes an item, so the loop ends with none left
        raise RuntimeError("adapting the comparator did not converge")
    changes = []
    for key in sorted(why):
        idx = [i for i, it in enumerate(regimen.scheduled) if (it.drug, it.route) == key]
        n0 = sum(len(doses[i]) for i in idx)
        a0 = sum(a for i in idx for _, a in doses[i])
        a1 = sum(a * w[i] for i in idx for _, a in doses[i])
        n1 = sum(len(doses[i]) for i in idx if w[i] > 0)
        changes.append(f"{key[0]} {key[1].upper()}: {n0} doses, {a0:g} mg in total as given -> {n1} doses, "
                       f"{a1:.4g} mg; " + "; ".join(why[key]))
    return Adapted(weighted(regimen, w, f"{regimen.name} adapted"), tuple(changes), given, w)
