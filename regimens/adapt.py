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
of the regimen as written with per-patient ``dose_weights`` (:func:`pkpd.population.simulate_regimen`).

As-needed (PRN) and PCA doses of an opioid whose label advises a reduced starting dose in renal or hepatic
impairment (:func:`regimens.limits.rescue_fraction`: hydromorphone 50 % at CrCL 30 to < 60 mL/min, 25 % below
30 mL/min, 50 % in mild and 25 % in moderate/severe hepatic impairment; oxycodone IR 1/3 in hepatic impairment;
the smaller where a renal and a hepatic fraction both apply) are given at that fraction of the dose as
written (:func:`rescue_for_patient`; never above the fraction of the label's usual adult starting dose, rounded
down to a whole microgram); PCA demand, loading and basal doses and the hourly maximum by the same factor. The
change is said in ``changes`` with the label it comes from; the batched simulation takes the adapted doses as
per-patient rescue tables (:func:`rescue_tables`). Thresholds, intervals, caps and non-drug modalities are kept.
Nothing is added: a removed drug is not replaced by another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._condition import RegimenError, format_number
from ._model import PCA, PRN, ROUTE_DISPLAY, Regimen
from .limits import Finding, RescueFraction, check_regimen, dose_caps, rescue_fraction

__all__ = ["Adapted", "adapt_to_patient", "rescue_for_patient", "rescue_tables", "weighted"]


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
        Multiplier of each scheduled item's doses (the regimen's order; 0: left out): the adapted regimen's
        scheduled part is :func:`weighted` ``(regimen, weights)``, and a batched simulation of the regimen with
        these ``dose_weights`` (and :func:`rescue_tables`) simulates it.
    rescue
        ``(drug, route) ->`` :class:`regimens.limits.RescueFraction` applied to the as-needed and PCA doses
        (empty when none): the adapted regimen's PRN rules and PCAs are :func:`rescue_for_patient`'s.
    """

    regimen: Regimen
    changes: tuple[str, ...]
    findings: tuple[Finding, ...]
    weights: np.ndarray
    rescue: Mapping[tuple[str, str], RescueFraction] = dataclasses.field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _scheduled_findings(reg: Regimen, cov: Mapping[str, Any], fusion: bool) -> list[Finding]:
    """Findings on the scheduled drugs (the starting-dose rule concerns as-needed and PCA doses: not these)."""
    drugs = {s.drug for s in reg.scheduled}
    return [f for f in check_regimen(reg, cov, None, fusion=fusion) if f.drug in drugs and f.rule != "starting_dose"]


def rescue_for_patient(
    prn: tuple[PRN, ...], pca: tuple[PCA, ...], covariates: Mapping[str, Any]
) -> tuple[tuple[PRN, ...], tuple[PCA, ...], dict[tuple[str, str], RescueFraction]]:
    """As-needed rules and PCAs with one patient's renal/hepatic dose fractions applied.

    Each PRN dose becomes :meth:`RescueFraction.scale` of it (the fraction of the dose as written, never above
    the fraction of the label's usual adult starting dose, rounded down to a whole microgram); a PCA's demand,
    loading and basal doses and hourly maximum are multiplied by the factor that takes its larger single
    dose (demand or loading) there. Rules of opioids without a fraction for the patient are returned as they are
    (the same objects).

    Returns
    -------
    prn, pca, fractions
        The rules and PCAs for the patient, and ``(drug, route) ->`` the fraction applied (only those below 1).
    """
    fr: dict[tuple[str, str], RescueFraction] = {}

    def frac(drug: str, route: str) -> RescueFraction | None:
        key = (drug, route)
        if key not in fr:
            fr[key] = rescue_fraction(drug, route, covariates)
        return fr[key] if fr[key].applies else None

    out_prn = []
    for r in prn:
        f = frac(r.drug, r.route)
        out_prn.append(r if f is None else dataclasses.replace(r, dose_mg=f.scale(r.dose_mg)))
    out_pca = []
    for p in pca:
        f = frac(p.drug, p.route)
        if f is None:
            out_pca.append(p)
            continue
        top = max(float(p.demand_mg), float(p.loading_mg))
        m = f.scale(top) / top
        ch = {
            "demand_mg": f.scale(p.demand_mg) if top == p.demand_mg else p.demand_mg * m,
            "loading_mg": p.loading_mg * m,
            "basal_mg_h": p.basal_mg_h * m,
        }
        if p.hourly_max_mg is not None:
            ch["hourly_max_mg"] = p.hourly_max_mg * m
        out_pca.append(dataclasses.replace(p, **ch))
    return tuple(out_prn), tuple(out_pca), {k: v for k, v in fr.items() if v.applies}


def _rescue_changes(
    regimen: Regimen, prn: tuple[PRN, ...], pca: tuple[PCA, ...], fractions: Mapping[tuple[str, str], RescueFraction]
) -> list[str]:
    """One line per drug and route whose as-needed / PCA doses were lowered: as given -> for the patient, why."""
    out = []
    for key, f in sorted(fractions.items()):
        drug, route = key
        old = [format_number(r.dose_mg) for r in regimen.prn if (r.drug, r.route) == key]
        new = [format_number(r.dose_mg) for r in prn if (r.drug, r.route) == key]
        old += [f"PCA {format_number(p.demand_mg)}" for p in regimen.pca if (p.drug, p.route) == key]
        new += [f"PCA {format_number(p.demand_mg)}" for p in pca if (p.drug, p.route) == key]
        if old == new:
            continue
        out.append(
            f"{drug} {ROUTE_DISPLAY.get(route, route)} as needed/PCA: {' / '.join(old)} mg per dose as given "
            f"-> {' / '.join(new)} mg; {f.describe()}"
        )
    return out


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
    left out. The same schedule :func:`pkpd.population.simulate_regimen` simulates with
    ``dose_weights`` (one row of ``weights`` per patient)."""
    items = []
    for it, w in zip(regimen.scheduled, np.asarray(weights, float)):
        if w <= 0:
            continue
        if w == 1.0:
            items.append(it)
            continue
        ch = {
            f: getattr(it, f) * w
            for f in ("dose_mg", "dose_mg_per_kg", "rate_mg_per_kg_h", "rate_mg_h")
            if getattr(it, f) is not None
        }
        adj = tuple(
            dataclasses.replace(a, dose_mg=a.dose_mg * w) if getattr(a, "dose_mg", None) is not None else a
            for a in it.adjustments
        )
        items.append(dataclasses.replace(it, adjustments=adj, **ch))
    return dataclasses.replace(regimen, name=name or regimen.name, scheduled=tuple(items))


def adapt_to_patient(regimen: Regimen, covariates: Mapping[str, Any], *, fusion: bool = True) -> Adapted:
    """``regimen``'s scheduled doses within one patient's limits, and its as-needed / PCA doses at the
    patient's renal/hepatic fraction (see the module docstring).

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
        The adapted regimen, the per-item dose multipliers, the rescue fractions and what changed (empty when
        the regimen as given is within the limits and no fraction applies: then the regimen itself).
    """
    cov = dict(covariates)
    n = len(regimen.scheduled)
    prn, pca, fractions = rescue_for_patient(regimen.prn, regimen.pca, cov)
    rescue_changes = _rescue_changes(regimen, prn, pca, fractions)
    given = tuple(_scheduled_findings(regimen, cov, fusion))
    if not given and not rescue_changes:
        return Adapted(regimen, (), given, np.ones(n))
    base = dataclasses.replace(regimen, prn=prn, pca=pca) if rescue_changes else regimen
    if not given:
        return Adapted(
            weighted(base, np.ones(n), f"{regimen.name} adapted"), tuple(rescue_changes), given, np.ones(n), fractions
        )
    w = np.ones(n)
    # each item's own doses for this patient (adjustments and per-kg doses resolved)
    doses = [
        [
            (e.time_h, e.amount_mg)
            for e in Regimen(name="x", scheduled=(it,), horizon_h=regimen.horizon_h).dose_events(cov)
            if e.kind == "scheduled"
        ]
        for it in regimen.scheduled
    ]
    why: dict[tuple[str, str], list[str]] = {}

    def note(key, text):
        if text not in why.setdefault(key, []):
            why[key].append(text)

    caps = {
        key: dose_caps(key[0], key[1], cov, None, fusion=fusion)
        for key in sorted({(it.drug, it.route) for it in regimen.scheduled})
    }
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
        bad = _scheduled_findings(weighted(base, w), cov, fusion)
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
        changes.append(
            f"{key[0]} {key[1].upper()}: {n0} doses, {a0:g} mg in total as given -> {n1} doses, "
            f"{a1:.4g} mg; " + "; ".join(why[key])
        )
    return Adapted(
        weighted(base, w, f"{regimen.name} adapted"),
        tuple(changes + rescue_changes),
        given,
        w,
        fractions if rescue_changes else {},
    )


def rescue_tables(
    regimen: Regimen, adapted: list[Adapted], row: Any, options: Any = None
) -> dict[str, np.ndarray] | None:
    """Per-patient rescue tables of adapted comparators, for a batched simulation of ``regimen`` as written.

    Parameters
    ----------
    regimen
        The comparator as written (the regimen the batched call simulates).
    adapted
        One :func:`adapt_to_patient` result of ``regimen`` per patient.
    row
        One population row (a DataFrame of one row: the covariates a simulation plan needs).
    options
        The :class:`pkpd.population.SimOptions` of the simulation (the tables' shapes depend on its grid).

    Returns
    -------
    dict or None
        The arrays of :meth:`pkpd.population.RegimenPlan.rescue_tables` with one row per patient (repeat them per
        draw), each patient's own as-needed / PCA doses; ``None`` when no patient's rescue changed (the
        regimen as written is then simulated with its own rules, bit for bit as before).

    Raises
    ------
    RegimenError
        An adapted PCA whose loading dose or basal rate changed (the batched call takes those as scheduled
        events of the regimen as written: simulate that patient's adapted regimen on its own).
    """
    from pkpd.population import RegimenPlan, SimOptions

    if not any(a.rescue for a in adapted):
        return None
    opts = options or SimOptions()
    ref = RegimenPlan.build(regimen, row, opts)

    def shape(plan):
        return [(it["kind"], it["drug"], it["route"], len(it["thr"])) for it in plan.items]

    cache: dict[Any, dict] = {}
    rows = []
    for a in adapted:
        key = (a.regimen.prn, a.regimen.pca)
        if key not in cache:
            for p0, p1 in zip(regimen.pca, a.regimen.pca):
                if (p0.loading_mg, p0.basal_mg_h) != (p1.loading_mg, p1.basal_mg_h):
                    raise RegimenError(
                        f"{a.regimen.name}: the PCA loading dose or basal rate was lowered for the "
                        "patient; a batched simulation of the regimen as written cannot take that "
                        "(only demand doses are rescue data): simulate the adapted regimen itself"
                    )
            plan = (
                ref
                if key == (regimen.prn, regimen.pca)
                else RegimenPlan.build(dataclasses.replace(regimen, prn=a.regimen.prn, pca=a.regimen.pca), row, opts)
            )
            if shape(plan) != shape(ref):  # pragma: no cover - scaling keeps every rule and PCA
                raise RegimenError(f"{a.regimen.name}: the adapted rescue rules lost the structure of {regimen.name}'s")
            cache[key] = plan.rescue_tables(1)
        rows.append(cache[key])
    return {k: np.concatenate([t[k] for t in rows]) for k in rows[0]}
