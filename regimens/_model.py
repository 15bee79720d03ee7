"""Regimen data model: scheduled doses, PRN rules, PCA, non-drug modalities, and their expansion to doses.

Time convention: hours relative to the **end of surgery** (t = 0). Pre-operative doses are at negative times
(e.g. -2 h), intra-operative ones at e.g. -1 h. Doses are in mg, rates in mg/h, intervals in h (PCA lockout
in min). Every class is a frozen dataclass validated at construction; errors are :class:`RegimenError`
(a :class:`pkpd.errors.PKPDError`) whose message names the item.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pkpd.errors import ModelSpecError

from ._condition import Condition, ConditionError, RegimenError, format_number
from ._format import ROUTE_DISPLAY, format_regimen_text, format_regimen_toml

__all__ = [
    "MODALITY_KINDS",
    "PCA",
    "PRN",
    "ROUTE_DISPLAY",
    "Adjustment",
    "DoseEvent",
    "Modality",
    "Regimen",
    "RegimenError",
    "Scheduled",
    "normalize_route",
]

#: Route spellings accepted on input (lower case, spaces collapsed) -> route label of :class:`pkpd.drugs.Drug`.
ROUTE_ALIASES: dict[str, str] = {
    "iv": "iv",
    "po": "po",
    "po er": "po_er",
    "po_er": "po_er",
    "infiltration": "infiltration",
    "sc": "sc",
}
#: Kinds of non-drug modality.
MODALITY_KINDS: tuple[str, ...] = ("tens", "physical_therapy", "psych_education")
_WINDOWS_OPTIONAL = ("psych_education",)
_ORAL = ("po", "po_er")
_EPS = 1e-9


def normalize_route(route: str) -> str:
    """Route label for a user spelling: ``"IV"`` -> ``"iv"``, ``"PO ER"`` -> ``"po_er"``.

    Unknown spellings are lower-cased with spaces replaced by ``_`` (the drug's route table then decides).
    """
    if not isinstance(route, str) or not route.strip():
        raise RegimenError(f"route must be a non-empty string such as 'iv' or 'po', got {route!r}")
    key = " ".join(route.strip().lower().replace("_", " ").split())
    return ROUTE_ALIASES.get(key, key.replace(" ", "_"))


def _route_list(routes: Iterable[str]) -> str:
    return ", ".join(
        f"{r} ({ROUTE_DISPLAY[r]})" if r in ROUTE_DISPLAY and ROUTE_DISPLAY[r] != r else r for r in sorted(routes)
    )


def _resolve_drug(name: Any, what: str) -> str:
    from pkpd.drugs import get_drug

    if not isinstance(name, str) or not name.strip():
        raise RegimenError(f"{what}: drug must be a non-empty string, got {name!r}")
    try:
        return get_drug(name).name
    except ModelSpecError as exc:
        raise RegimenError(f"{what}: {exc}") from None


def _check_route(drug: str, route: Any, what: str) -> str:
    from pkpd.drugs import get_drug

    r = normalize_route(route)
    routes = get_drug(drug).routes
    if r not in routes:
        raise RegimenError(f"{what}: {drug} has no route {route!r}; routes of {drug}: {_route_list(routes)}")
    return r


def _number(
    value: Any, name: str, what: str, *, positive: bool = False, nonneg: bool = False, optional: bool = False
) -> float | None:
    if value is None:
        if optional:
            return None
        raise RegimenError(f"{what}: {name} is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.issubdtype(type(value), np.number):
                value = float(value)
            else:
                raise TypeError
        except TypeError:
            raise RegimenError(f"{what}: {name} must be a number, got {value!r}") from None
    v = float(value)
    if not math.isfinite(v):
        raise RegimenError(f"{what}: {name} must be finite, got {value!r}")
    if positive and not v > 0:
        raise RegimenError(f"{what}: {name} must be > 0, got {format_number(v)}")
    if nonneg and v < 0:
        raise RegimenError(f"{what}: {name} must be >= 0, got {format_number(v)}")
    return v


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _fmt_h(x: float) -> str:
    return f"{format_number(x)}h"


def _covariate(covariates: Mapping[str, Any], name: str, what: str) -> float:
    try:
        v = float(covariates[name])
    except (KeyError, IndexError, TypeError, ValueError):
        v = float("nan")
    if math.isnan(v):
        raise RegimenError(
            f"{what} needs covariate {name}, which the patient covariates lack "
            f"(given: {', '.join(sorted(map(str, covariates))) or 'none'})"
        )
    return v


# --------------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoseEvent:
    """One dose given to one patient.

    Attributes
    ----------
    time_h
        Start time, h after the end of surgery (negative: pre/intra-operative).
    drug
        Canonical library name (:func:`pkpd.drugs.get_drug`).
    route
        Route label (``"iv"``, ``"po"``, ``"po_er"``, ``"infiltration"``, ``"sc"``).
    amount_mg
        Amount, mg.
    duration_h
        0 for a bolus; > 0 for a zero-order infusion of ``amount_mg`` over that many hours.
    kind
        ``"scheduled"``, ``"pca_loading"`` or ``"pca_basal"``.
    """

    time_h: float
    drug: str
    route: str
    amount_mg: float
    duration_h: float = 0.0
    kind: str = "scheduled"

    @property
    def rate_mg_h(self) -> float:
        """Infusion rate, mg/h (0 for a bolus)."""
        return self.amount_mg / self.duration_h if self.duration_h > 0 else 0.0


# --------------------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adjustment:
    """A dose that replaces the item's dose when a condition on patient covariates holds.

    Attributes
    ----------
    when
        Condition on dataset covariate columns: comparisons ``COLUMN OP NUMBER`` joined by ``and``/``or``
        (``and`` binds tighter), e.g. ``"AGE >= 65 or WT < 50 or CRCL < 60"``. Stored in canonical form.
    dose_mg
        Replacement dose, mg (absolute, also when the item is dosed per kg).
    reason
        Why (e.g. the label clause); free text, one line.
    """

    when: str
    dose_mg: float
    reason: str = ""
    condition: Condition = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        what = f"adjustment {self.when!r}"
        try:
            cond = Condition.parse(self.when)
        except ConditionError as exc:
            raise ConditionError(f"{what}: {exc}") from None
        _set(self, "condition", cond)
        _set(self, "when", cond.text)
        _set(self, "dose_mg", _number(self.dose_mg, "dose_mg", what, positive=True))
        if not isinstance(self.reason, str) or "\n" in self.reason or "\r" in self.reason:
            raise RegimenError(f"{what}: reason must be a one-line string, got {self.reason!r}")


def _check_window(start: float, stop: float | None, what: str) -> None:
    if stop is not None and not stop > start:
        raise RegimenError(f"{what}: stop_h ({format_number(stop)} h) must be after start_h ({format_number(start)} h)")


@dataclass(frozen=True)
class Scheduled:
    """A scheduled dose: single, repeated (``every_h``) or a continuous infusion (a rate).

    Exactly one of ``dose_mg``, ``dose_mg_per_kg``, ``rate_mg_per_kg_h`` and ``rate_mg_h`` is given.

    Attributes
    ----------
    drug
        Drug name (aliases such as ``paracetamol`` are accepted and stored as the library name).
    route
        Route label or spelling (``"IV"``, ``"po"``, ``"PO ER"``...); must be a route of the drug.
    dose_mg
        Dose per administration, mg.
    dose_mg_per_kg
        Dose per administration, mg/kg of total body weight (covariate ``WT``).
    start_h
        Time of the first dose (or infusion start), h after the end of surgery.
    every_h
        Dosing interval, h; ``None`` for a single dose.
    stop_h
        No dose starts at or after this time, h (exclusive); ``None``: until the regimen horizon. For a
        continuous infusion: the infusion end.
    count
        Maximum number of doses (repeated dosing only).
    infusion_h
        0: each dose is a bolus; > 0: each dose is a zero-order infusion over this many hours.
    rate_mg_per_kg_h
        Continuous infusion rate, mg/kg/h (from ``start_h`` to ``stop_h`` or the horizon).
    adjustments
        :class:`Adjustment` s; the first whose condition holds replaces the dose (not for rates).
    rate_mg_h
        Continuous infusion rate, mg/h (alternative to ``rate_mg_per_kg_h``).
    """

    drug: str
    route: str
    dose_mg: float | None = None
    dose_mg_per_kg: float | None = None
    start_h: float = 0.0
    every_h: float | None = None
    stop_h: float | None = None
    count: int | None = None
    infusion_h: float = 0.0
    rate_mg_per_kg_h: float | None = None
    adjustments: tuple[Adjustment, ...] = ()
    rate_mg_h: float | None = None

    def __post_init__(self) -> None:
        what = f"scheduled item {self.drug!r}"
        _set(self, "drug", _resolve_drug(self.drug, what))
        what = f"scheduled item {self.drug!r}"
        _set(self, "route", _check_route(self.drug, self.route, what))
        for name in ("dose_mg", "dose_mg_per_kg", "rate_mg_per_kg_h", "rate_mg_h"):
            _set(self, name, _number(getattr(self, name), name, what, positive=True, optional=True))
        given = [
            n for n in ("dose_mg", "dose_mg_per_kg", "rate_mg_per_kg_h", "rate_mg_h") if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise RegimenError(
                f"{what}: give exactly one of dose_mg, dose_mg_per_kg, rate_mg_per_kg_h, rate_mg_h "
                f"(got {', '.join(given) or 'none'})"
            )
        _set(self, "start_h", _number(self.start_h, "start_h", what))
        _set(self, "stop_h", _number(self.stop_h, "stop_h", what, optional=True))
        _set(self, "every_h", _number(self.every_h, "every_h", what, positive=True, optional=True))
        _set(self, "infusion_h", _number(self.infusion_h, "infusion_h", what, nonneg=True))
        _check_window(self.start_h, self.stop_h, what)
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise RegimenError(f"{what}: count must be a whole number >= 1, got {self.count!r}")
        adj = self.adjustments
        if isinstance(adj, Adjustment):
            adj = (adj,)
        adj = tuple(Adjustment(**a) if isinstance(a, Mapping) else a for a in adj)
        for a in adj:
            if not isinstance(a, Adjustment):
                raise RegimenError(f"{what}: adjustments must be Adjustment objects, got {a!r}")
        _set(self, "adjustments", adj)
        if self.route in _ORAL and (self.is_continuous or self.infusion_h > 0):
            raise RegimenError(
                f"{what}: an oral ({ROUTE_DISPLAY[self.route]}) dose cannot be an infusion; remove "
                "infusion_h / the rate, or use an IV route"
            )
        if self.is_continuous:
            bad = [
                n
                for n, v in (("every_h", self.every_h), ("count", self.count), ("adjustments", adj or None))
                if v is not None
            ]
            if self.infusion_h:
                bad.append("infusion_h")
            if bad:
                raise RegimenError(
                    f"{what}: a continuous infusion (rate) takes no {', '.join(bad)}; give start_h and stop_h only"
                )
            return
        if self.every_h is None:
            if self.stop_h is not None or (self.count is not None and self.count != 1):
                raise RegimenError(
                    f"{what}: a single dose (every_h not given) takes no stop_h or count; give "
                    "every_h for repeated doses"
                )
            _set(self, "count", None)
        elif self.infusion_h > self.every_h + _EPS:
            raise RegimenError(
                f"{what}: infusion_h ({format_number(self.infusion_h)} h) is longer than the dosing "
                f"interval every_h ({format_number(self.every_h)} h); the infusions would overlap"
            )

    @property
    def is_continuous(self) -> bool:
        """True for a continuous infusion given as a rate."""
        return self.rate_mg_per_kg_h is not None or self.rate_mg_h is not None

    def dose_for(self, covariates: Mapping[str, Any]) -> float:
        """Dose per administration for a patient, mg (per-kg doses resolved with ``WT``, adjustments applied).

        Raises
        ------
        RegimenError
            If a covariate needed by a per-kg dose or by an adjustment condition is missing.
        """
        what = f"scheduled item {self.short()!r}"
        if self.is_continuous:
            raise RegimenError(f"{what}: a continuous infusion has a rate, not a dose; use rate_for()")
        for a in self.adjustments:  # every condition's covariates must be present, not only the first true one
            if a.condition.missing(covariates):
                a.condition.evaluate(covariates, what=what)  # raises ConditionError naming the covariates
        for a in self.adjustments:
            if a.condition.evaluate(covariates, what=what):
                return a.dose_mg
        if self.dose_mg_per_kg is not None:
            return self.dose_mg_per_kg * _covariate(covariates, "WT", f"{what} (dose in mg/kg)")
        assert self.dose_mg is not None
        return self.dose_mg

    def rate_for(self, covariates: Mapping[str, Any]) -> float:
        """Continuous infusion rate for a patient, mg/h."""
        if self.rate_mg_h is not None:
            return self.rate_mg_h
        if self.rate_mg_per_kg_h is None:
            raise RegimenError(f"scheduled item {self.short()!r}: not a continuous infusion; use dose_for()")
        return self.rate_mg_per_kg_h * _covariate(
            covariates, "WT", f"scheduled item {self.short()!r} (rate in mg/kg/h)"
        )

    def times(self, horizon_h: float) -> list[float]:
        """Start times of the doses before ``horizon_h`` (continuous infusions: its start, if before)."""
        if self.is_continuous or self.every_h is None:
            return [self.start_h] if self.start_h < horizon_h else []
        end = min(horizon_h, self.stop_h if self.stop_h is not None else math.inf)
        out: list[float] = []
        k = 0
        while True:
            t = self.start_h + k * self.every_h
            if t >= end - _EPS * max(1.0, abs(end)) or (self.count is not None and k >= self.count):
                return out
            out.append(t)
            k += 1

    def events(self, covariates: Mapping[str, Any], horizon_h: float = 72.0) -> list[DoseEvent]:
        """The doses of this item for one patient, within ``horizon_h``."""
        if self.is_continuous:
            end = min(horizon_h, self.stop_h if self.stop_h is not None else math.inf)
            if not end > self.start_h:
                return []
            rate = self.rate_for(covariates)
            d = end - self.start_h
            return [DoseEvent(self.start_h, self.drug, self.route, rate * d, d)]
        times = self.times(horizon_h)
        if not times:
            return []
        dose = self.dose_for(covariates)
        return [DoseEvent(t, self.drug, self.route, dose, self.infusion_h) for t in times]

    def short(self, dose_mg: float | None = None) -> str:
        """Short description, e.g. ``"ketorolac 30 mg IV q6h"`` (``dose_mg`` overrides the dose shown)."""
        r = ROUTE_DISPLAY.get(self.route, self.route)
        if dose_mg is not None:
            amount = f"{format_number(round(dose_mg, 6))} mg"
        elif self.dose_mg is not None:
            amount = f"{format_number(self.dose_mg)} mg"
        elif self.dose_mg_per_kg is not None:
            amount = f"{format_number(self.dose_mg_per_kg)} mg/kg"
        elif self.rate_mg_per_kg_h is not None:
            amount = f"{format_number(self.rate_mg_per_kg_h)} mg/kg/h"
        else:
            amount = f"{format_number(self.rate_mg_h)} mg/h"  # type: ignore[arg-type]
        if self.is_continuous:
            sched = "infusion"
        elif self.every_h is None:
            sched = f"once at {_fmt_h(self.start_h)}"
        else:
            sched = f"q{_fmt_h(self.every_h)}"
        return f"{self.drug} {amount} {r} {sched}"


@dataclass(frozen=True)
class PRN:
    """An as-needed (PRN) rule: ``dose_mg`` is given on request when pain NRS >= ``threshold_nrs``.

    Several PRN rules for one drug and route (e.g. 5 mg at NRS >= 4 and 10 mg at NRS >= 7) form one group:
    they **share the interval** (at least ``min_interval_h`` of the rule that fires since the last PRN dose of
    that drug and route, whichever rule gave it), and at a request the rule with the **highest satisfied
    threshold wins** (see :meth:`Regimen.prn_rule`).

    Attributes
    ----------
    drug, route
        As for :class:`Scheduled`.
    dose_mg
        Dose per request, mg.
    threshold_nrs
        Pain score (0-10 NRS) at or above which a dose may be given.
    min_interval_h
        Minimum time since the previous PRN dose of the same drug and route, h.
    start_h, stop_h
        The rule is active from ``start_h`` (inclusive) to ``stop_h`` (exclusive; ``None``: horizon), h.
    max_per_24h
        Maximum number of doses of this rule in any 24 h (``None``: no cap other than the interval).
    """

    drug: str
    route: str
    dose_mg: float
    threshold_nrs: float
    min_interval_h: float
    start_h: float = 0.0
    stop_h: float | None = None
    max_per_24h: int | None = None

    def __post_init__(self) -> None:
        what = f"PRN item {self.drug!r}"
        _set(self, "drug", _resolve_drug(self.drug, what))
        what = f"PRN item {self.drug!r}"
        _set(self, "route", _check_route(self.drug, self.route, what))
        _set(self, "dose_mg", _number(self.dose_mg, "dose_mg", what, positive=True))
        thr = _number(self.threshold_nrs, "threshold_nrs", what)
        assert thr is not None
        if not 0 <= thr <= 10:
            raise RegimenError(f"{what}: threshold_nrs must be on the 0-10 NRS scale, got {format_number(thr)}")
        _set(self, "threshold_nrs", thr)
        _set(self, "min_interval_h", _number(self.min_interval_h, "min_interval_h", what, positive=True))
        _set(self, "start_h", _number(self.start_h, "start_h", what))
        _set(self, "stop_h", _number(self.stop_h, "stop_h", what, optional=True))
        _check_window(self.start_h, self.stop_h, what)
        m = self.max_per_24h
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise RegimenError(f"{what}: max_per_24h must be a whole number >= 1, got {m!r}")

    def active(self, t: float) -> bool:
        """Whether the rule is active at time ``t`` (h)."""
        return self.start_h <= t and (self.stop_h is None or t < self.stop_h)

    def short(self) -> str:
        """Short description, e.g. ``"oxycodone 5 mg PO q4h PRN NRS>=4"``."""
        r = ROUTE_DISPLAY.get(self.route, self.route)
        return (
            f"{self.drug} {format_number(self.dose_mg)} mg {r} q{_fmt_h(self.min_interval_h)} PRN "
            f"NRS>={format_number(self.threshold_nrs)}"
        )


@dataclass(frozen=True)
class PCA:
    """Patient-controlled analgesia.

    Attributes
    ----------
    drug, route
        As for :class:`Scheduled` (route default ``"iv"``).
    demand_mg
        Dose per accepted demand, mg.
    lockout_min
        Lockout after an accepted demand, **minutes**.
    start_h, stop_h
        The pump runs from ``start_h`` to ``stop_h`` (``None``: horizon), h.
    basal_mg_h
        Background infusion, mg/h (0: none).
    hourly_max_mg
        Cap on the total delivered (basal + demands) in any hour, mg (``None``: no cap other than lockout).
    loading_mg
        Loading bolus at ``start_h``, mg (0: none).
    """

    drug: str
    route: str = "iv"
    demand_mg: float = 0.0
    lockout_min: float = 0.0
    start_h: float = 0.0
    stop_h: float | None = None
    basal_mg_h: float = 0.0
    hourly_max_mg: float | None = None
    loading_mg: float = 0.0

    def __post_init__(self) -> None:
        what = f"PCA item {self.drug!r}"
        _set(self, "drug", _resolve_drug(self.drug, what))
        what = f"PCA item {self.drug!r}"
        _set(self, "route", _check_route(self.drug, self.route, what))
        _set(self, "demand_mg", _number(self.demand_mg, "demand_mg", what, positive=True))
        _set(self, "lockout_min", _number(self.lockout_min, "lockout_min", what, positive=True))
        _set(self, "start_h", _number(self.start_h, "start_h", what))
        _set(self, "stop_h", _number(self.stop_h, "stop_h", what, optional=True))
        _check_window(self.start_h, self.stop_h, what)
        _set(self, "basal_mg_h", _number(self.basal_mg_h, "basal_mg_h", what, nonneg=True))
        _set(self, "loading_mg", _number(self.loading_mg, "loading_mg", what, nonneg=True))
        hm = _number(self.hourly_max_mg, "hourly_max_mg", what, positive=True, optional=True)
        if hm is not None and hm < self.demand_mg + self.basal_mg_h - _EPS:
            raise RegimenError(
                f"{what}: hourly_max_mg ({format_number(hm)} mg) is below one demand plus the "
                f"hourly basal ({format_number(self.demand_mg + self.basal_mg_h)} mg); no demand "
                "could ever be given"
            )
        _set(self, "hourly_max_mg", hm)

    @property
    def max_rate_mg_h(self) -> float:
        """Worst-case delivery, mg/h: basal + 60/lockout demands per hour, capped by ``hourly_max_mg``."""
        r = self.basal_mg_h + self.demand_mg * 60.0 / self.lockout_min
        return min(r, self.hourly_max_mg) if self.hourly_max_mg is not None else r

    def events(self, horizon_h: float = 72.0) -> list[DoseEvent]:
        """Deterministic PCA doses (loading bolus, basal infusion); demands depend on pain and are not included."""
        out: list[DoseEvent] = []
        if self.start_h >= horizon_h:
            return out
        if self.loading_mg > 0:
            out.append(DoseEvent(self.start_h, self.drug, self.route, self.loading_mg, 0.0, "pca_loading"))
        end = min(horizon_h, self.stop_h if self.stop_h is not None else math.inf)
        if self.basal_mg_h > 0 and end > self.start_h:
            d = end - self.start_h
            out.append(DoseEvent(self.start_h, self.drug, self.route, self.basal_mg_h * d, d, "pca_basal"))
        return out

    def short(self) -> str:
        """Short description, e.g. ``"hydromorphone 0.2 mg IV PCA lockout 10 min"``."""
        r = ROUTE_DISPLAY.get(self.route, self.route)
        return f"{self.drug} {format_number(self.demand_mg)} mg {r} PCA lockout {format_number(self.lockout_min)} min"


@dataclass(frozen=True)
class Modality:
    """A non-drug modality.

    Attributes
    ----------
    kind
        ``"tens"`` (wearable transcutaneous electrical nerve stimulation; ``windows`` are the on periods),
        ``"physical_therapy"`` (``windows`` are the sessions) or ``"psych_education"`` (a pre-operative
        education / psychological-support programme; ``windows`` may be empty).
    windows
        ``((start_h, end_h), ...)``, h after the end of surgery; stored sorted; must not overlap.
    enabled
        ``False`` keeps the item in the regimen but switches it off.
    """

    kind: str
    windows: tuple[tuple[float, float], ...] = ()
    enabled: bool = True

    def __post_init__(self) -> None:
        kind = str(self.kind).strip().lower() if isinstance(self.kind, str) else self.kind
        if kind not in MODALITY_KINDS:
            raise RegimenError(f"modality {self.kind!r}: unknown kind; known kinds: {', '.join(MODALITY_KINDS)}")
        _set(self, "kind", kind)
        what = f"modality {kind!r}"
        if isinstance(self.windows, (str, bytes)) or not isinstance(self.windows, Iterable):
            raise RegimenError(f"{what}: windows must be a sequence of (start_h, end_h) pairs, got {self.windows!r}")
        wins = []
        for w in self.windows:
            if isinstance(w, (str, bytes)) or not isinstance(w, Iterable) or len(tuple(w)) != 2:
                raise RegimenError(f"{what}: each window must be a (start_h, end_h) pair, got {w!r}")
            a, b = tuple(w)
            a = _number(a, "window start", what)
            b = _number(b, "window end", what)
            if not b > a:  # type: ignore[operator]
                raise RegimenError(f"{what}: window {format_number(a)}h-{format_number(b)}h must end after it starts")
            wins.append((a, b))
        wins.sort()
        for (a0, b0), (a1, b1) in itertools.pairwise(wins):
            if a1 < b0:
                raise RegimenError(
                    f"{what}: windows {format_number(a0)}h-{format_number(b0)}h and "
                    f"{format_number(a1)}h-{format_number(b1)}h overlap"
                )
        if not wins and kind not in _WINDOWS_OPTIONAL:
            raise RegimenError(f"{what}: give at least one (start_h, end_h) window")
        _set(self, "windows", tuple(wins))
        if not isinstance(self.enabled, bool):
            raise RegimenError(f"{what}: enabled must be true or false, got {self.enabled!r}")

    def active(self, t: float) -> bool:
        """Whether the modality is on at time ``t`` (h): enabled and ``start_h <= t < end_h`` in a window."""
        return self.enabled and any(a <= t < b for a, b in self.windows)


# --------------------------------------------------------------------------------------------------------
# Regimen
# --------------------------------------------------------------------------------------------------------


class _ItemError(RegimenError):
    """A cross-item validation error; ``item`` is the offending item (used for line numbers)."""

    def __init__(self, message: str, item: Any):
        super().__init__(message)
        self.item = item


def _as_items(value: Any, cls: type, name: str, regimen: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (cls, Mapping)):
        value = (value,)
    out = []
    for v in value:
        if isinstance(v, Mapping):
            v = cls(**v)
        if not isinstance(v, cls):
            raise RegimenError(f"regimen {regimen!r}: {name} must hold {cls.__name__} items, got {v!r}")
        out.append(v)
    return tuple(out)


def _structures(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    """``structures`` as sorted ``(library drug name, file path)`` pairs, one per drug."""
    from pkpd.drugs import get_drug
    from pkpd.errors import PKPDError

    pairs = list(value.items()) if isinstance(value, Mapping) else list(value or ())
    out: dict[str, str] = {}
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RegimenError(f"{what}: structures must map drug names to model files, got {pair!r}")
        drug, path = pair
        try:
            name = get_drug(drug).name
        except PKPDError as exc:
            raise RegimenError(f"{what}: structures: {exc}") from None
        if name in out:
            raise RegimenError(f"{what}: structures name {name} twice")
        if not path.strip():
            raise RegimenError(f"{what}: structures: the model file of {name} is empty")
        out[name] = path
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class Regimen:
    """An analgesic regimen: scheduled doses, PRN rules, PCA and non-drug modalities.

    Attributes
    ----------
    name
        Short identifier (one line), e.g. ``"C1"``.
    description
        Free text (may span lines).
    scheduled, prn, pca, modalities
        Tuples of :class:`Scheduled`, :class:`PRN`, :class:`PCA`, :class:`Modality`.
    horizon_h
        End of the evaluation window, h after the end of surgery (default 72).
    references
        Literature the regimen follows (one line each).
    structures
        ``(drug, model file)`` pairs: a drug of the regimen whose structural model is one written in the model
        language (a ``.toml`` file with a ``[structure]`` section, docs/model_language.md) instead of its
        library structure; its parameters, variability, PD, MME factor and limits stay the library entry's
        (:func:`pkpd.drugs.structure.regimen_entry`). Written ``[structures]`` ``oxycodone = "oxy.toml"`` in a
        regimen file (paths relative to that file). Checked when the regimen is simulated.

    Examples
    --------
    >>> r = Regimen("demo", scheduled=(Scheduled("paracetamol", "PO", dose_mg=1000, every_h=6),))
    >>> len(r.dose_events({}))
    12
    """

    name: str
    description: str = ""
    scheduled: tuple[Scheduled, ...] = ()
    prn: tuple[PRN, ...] = ()
    pca: tuple[PCA, ...] = ()
    modalities: tuple[Modality, ...] = ()
    horizon_h: float = 72.0
    references: tuple[str, ...] = ()
    structures: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "\n" in self.name:
            raise RegimenError(f"regimen name must be a non-empty one-line string, got {self.name!r}")
        _set(self, "name", self.name.strip())
        what = f"regimen {self.name!r}"
        if not isinstance(self.description, str):
            raise RegimenError(f"{what}: description must be a string")
        _set(self, "horizon_h", _number(self.horizon_h, "horizon_h", what, positive=True))
        refs = (self.references,) if isinstance(self.references, str) else tuple(self.references)
        for r in refs:
            if not isinstance(r, str) or not r.strip() or "\n" in r:
                raise RegimenError(f"{what}: each reference must be a non-empty one-line string, got {r!r}")
        _set(self, "references", tuple(r.strip() for r in refs))
        _set(self, "structures", _structures(self.structures, what))
        _set(self, "scheduled", _as_items(self.scheduled, Scheduled, "scheduled", self.name))
        _set(self, "prn", _as_items(self.prn, PRN, "prn", self.name))
        _set(self, "pca", _as_items(self.pca, PCA, "pca", self.name))
        _set(self, "modalities", _as_items(self.modalities, Modality, "modalities", self.name))
        for item in (*self.scheduled, *self.prn, *self.pca):
            if item.start_h >= self.horizon_h:
                raise _ItemError(
                    f"{what}: {item.short()} starts at {_fmt_h(item.start_h)}, at or after the "
                    f"horizon ({_fmt_h(self.horizon_h)})",
                    item,
                )
        seen: dict[tuple, PRN] = {}
        for p in self.prn:
            key = (p.drug, p.route, p.threshold_nrs)
            if key in seen and _overlap(p, seen[key]):
                raise _ItemError(
                    f"{what}: two PRN rules for {p.drug} {ROUTE_DISPLAY.get(p.route, p.route)} with the "
                    f"same threshold NRS>={format_number(p.threshold_nrs)} are active at the same "
                    "time; give each rule of a drug and route its own threshold",
                    p,
                )
            seen[key] = p
        for i, a in enumerate(self.pca):
            for b in self.pca[:i]:
                if (a.drug, a.route) == (b.drug, b.route) and _overlap(a, b):
                    raise _ItemError(f"{what}: two PCA items for {a.drug} overlap in time", a)
        unused = [d for d, _ in self.structures if d not in self.drugs()]
        if unused:
            raise RegimenError(
                f"{what}: structures are given for {', '.join(unused)}, which the regimen does not use "
                f"(its drugs: {', '.join(self.drugs()) or 'none'})"
            )
        kinds = [m.kind for m in self.modalities]
        for m in self.modalities:
            if kinds.count(m.kind) > 1:
                raise _ItemError(f"{what}: modality {m.kind!r} is given twice; put all its windows in one item", m)

    # ---- queries ---------------------------------------------------------------------------------------
    def drugs(self) -> tuple[str, ...]:
        """Library names of every drug the regimen uses (sorted, unique)."""
        return tuple(sorted({i.drug for i in (*self.scheduled, *self.prn, *self.pca)}))

    def dose_events(self, covariates: Mapping[str, Any] | None = None) -> list[DoseEvent]:
        """Every deterministic dose for one patient within the horizon, sorted by time.

        Scheduled items are expanded (``every_h``/``stop_h``/``count``), per-kg doses resolved with ``WT``
        and adjustments applied; PCA loading doses and basal infusions are included. PRN doses and PCA
        demands depend on pain and are **not** included (the simulator generates them).

        Parameters
        ----------
        covariates
            Patient covariate columns (``AGE``, ``WT``, ``CRCL``...), as a mapping or a pandas Series.

        Raises
        ------
        RegimenError
            If a per-kg dose or an adjustment condition needs a covariate that is missing.
        """
        cov = {} if covariates is None else covariates
        out: list[DoseEvent] = []
        for s in self.scheduled:
            out += s.events(cov, self.horizon_h)
        for p in self.pca:
            out += p.events(self.horizon_h)
        order = {"scheduled": 0, "pca_loading": 1, "pca_basal": 2}
        out.sort(key=lambda e: (e.time_h, e.drug, e.route, order.get(e.kind, 3)))
        return out

    def prn_groups(self) -> dict[tuple[str, str], tuple[PRN, ...]]:
        """PRN rules grouped by ``(drug, route)``; each group sorted by threshold, highest first."""
        out: dict[tuple[str, str], list[PRN]] = {}
        for p in self.prn:
            out.setdefault((p.drug, p.route), []).append(p)
        return {k: tuple(sorted(v, key=lambda p: -p.threshold_nrs)) for k, v in out.items()}

    def prn_rule(self, drug: str, route: str, nrs: float, t: float) -> PRN | None:
        """The PRN rule of ``drug``/``route`` that fires at pain ``nrs`` and time ``t``: the active rule with
        the highest threshold <= ``nrs`` (``None`` if none). The shared interval is the caller's to check."""
        for p in self.prn_groups().get((drug, normalize_route(route)), ()):
            if p.active(t) and nrs >= p.threshold_nrs:
                return p
        return None

    def modality(self, kind: str) -> Modality | None:
        """The modality of that kind, or ``None``."""
        for m in self.modalities:
            if m.kind == kind:
                return m
        return None

    # ---- formats ---------------------------------------------------------------------------------------
    def to_text(self) -> str:
        """The short text form (see :func:`regimens.parse_regimen_text`); ``parse_regimen_text(r.to_text()) == r``."""
        return format_regimen_text(self)

    def to_toml(self) -> str:
        """TOML text (see :func:`regimens.load_regimen`); loading it gives back an equal regimen."""
        return format_regimen_toml(self)

    def describe(self) -> str:
        """Alias of :meth:`to_text`."""
        return self.to_text()


def _overlap(a: Any, b: Any) -> bool:
    a1 = math.inf if a.stop_h is None else a.stop_h
    b1 = math.inf if b.stop_h is None else b.stop_h
    return a.start_h < b1 and b.start_h < a1
