"""A comparator regimen adapted to one patient's label, renal, hepatic and CPIC limits.

A standard regimen (C0, C1) is written for a typical adult. For a patient with contraindications (severe
hepatic impairment, CrCL < 30 mL/min, a CYP2C9 poor metabolizer...) it may contain a drug the patient must
not receive or a dose above the patient's cap, and a proposal compared with it would be compared with a
schedule nobody would give. :func:`adapt_to_patient` makes the schedule a clinician would give instead, by
the same rules the optimizer's schedules obey (:func:`regimens.limits.check_regimen`, the same limits), and
says what it changed:

1. the scheduled items are expanded into the patient's doses (dose adjustments of the regimen applied);
2. a drug the patient must not receive by that route (contraindication, CPIC 'avoid') is removed;
3. a dose above the patient's maximum single dose is lowered to it;
4. a daily maximum that is still exceeded lowers every dose of that drug by the same factor (the largest
   amount in any 24 h brought to the cap: a clinician lowers the dose rather than stopping the drug early);
5. while a total, duration, interval or exclusivity limit (or a daily one the scaling could not meet) is still
   exceeded, the latest dose of that drug is dropped.

As-needed rules, PCA and non-drug modalities are kept as they are (the rescue opioids; their own findings,
if any, are the regimen's as given). Nothing is added: a removed drug is not replaced by another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._model import Regimen, Scheduled
from .limits import Finding, check_regimen, dose_caps

__all__ = ["Adapted", "adapt_to_patient"]


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
    """

    regimen: Regimen
    changes: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _scheduled_findings(reg: Regimen, cov: Mapping[str, Any], fusion: bool) -> list[Finding]:
    drugs = {s.drug for s in reg.scheduled}
    return [f for f in check_regimen(reg, cov, None, fusion=fusion) if f.drug in drugs]


def _total(items: list[Scheduled], drug: str, route: str) -> tuple[int, float]:
    doses = [s.dose_mg for s in items if s.drug == drug and s.route == route]
    return len(doses), float(sum(doses))


def _max_24h(doses: list[tuple[float, float]]) -> float:
    """Largest amount (mg) whose dose starts fall within any 24 h (windows starting at a dose)."""
    return max((sum(a for t, a in doses if t0 - 1e-9 <= t < t0 + 24.0 - 1e-9) for t0, _ in doses), default=0.0)


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
        The adapted regimen and what changed (empty when the regimen as given is within the limits).
    """
    cov = dict(covariates)
    given = tuple(_scheduled_findings(regimen, cov, fusion))
    if not given:
        return Adapted(regimen, (), given)
    events = [e for e in regimen.dose_events(cov) if e.kind == "scheduled"]
    items = [Scheduled(e.drug, e.route, dose_mg=e.amount_mg, start_h=e.time_h, infusion_h=e.duration_h)
             for e in events]
    why: dict[tuple[str, str], list[str]] = {}

    def note(key, text):
        if text not in why.setdefault(key, []):
            why[key].append(text)

    # 2-3: contraindicated drugs out, single doses down to the cap
    caps = {}
    for key in sorted({(s.drug, s.route) for s in items}):
        caps[key] = dose_caps(key[0], key[1], cov, None, fusion=fusion)
    kept = []
    for s in items:
        c = caps[(s.drug, s.route)]
        if c.forbidden:
            note((s.drug, s.route), f"removed: {c.forbidden}")
            continue
        if s.dose_mg > c.max_single_mg + 1e-9:
            note((s.drug, s.route), f"each dose lowered to {c.max_single_mg:g} mg ({c.reason('max_single_mg')})")
            s = dataclasses.replace(s, dose_mg=float(c.max_single_mg))
        kept.append(s)
    # 4: daily maxima: every dose of the drug lowered by one factor
    for key, c in caps.items():
        if c.forbidden or c.max_daily_mg == float("inf"):
            continue
        mine = [i for i, s in enumerate(kept) if s.drug == key[0]]
        peak = _max_24h([(kept[i].start_h, kept[i].dose_mg) for i in mine])
        if peak > c.max_daily_mg + 1e-9:
            f = c.max_daily_mg / peak
            for i in mine:
                kept[i] = dataclasses.replace(kept[i], dose_mg=kept[i].dose_mg * f)
            note(key, f"every dose x {f:.2f} (at most {c.max_daily_mg:g} mg in any 24 h: {c.reason('max_daily_mg')})")
    # 5: drop the latest dose of a drug while one of its limits is exceeded
    for _ in range(len(kept) + 1):
        reg = dataclasses.replace(regimen, name=f"{regimen.name} adapted", scheduled=tuple(kept))
        bad = _scheduled_findings(reg, cov, fusion)
        if not bad:
            break
        f = bad[0]
        idx = [i for i, s in enumerate(kept) if s.drug == f.drug]
        last = max(idx, key=lambda i: kept[i].start_h)
        note((f.drug, kept[last].route), f"doses dropped from the end of the course: {f.message}")
        del kept[last]
    else:  # pragma: no cover - each pass removes a dose, so the loop ends with none left
        raise RuntimeError("adapting the comparator did not converge")
    changes = []
    for key in sorted(why):
        n0, a0 = _total(items, *key)
        n1, a1 = _total(kept, *key)
        changes.append(f"{key[0]} {key[1].upper()}: {n0} doses, {a0:g} mg in total as given -> {n1} doses, "
                       f"{a1:g} mg; " + "; ".join(why[key]))
    return Adapted(reg, tuple(changes), given)
