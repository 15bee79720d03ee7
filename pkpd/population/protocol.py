"""What the population simulator reads of a regimen: :class:`RegimenLike` and the items it holds.

``pkpd`` never imports ``regimens`` (docs/design.md); :class:`regimens.Regimen` is the implementation every caller
passes, and it satisfies these protocols structurally (its frozen dataclass fields are the read-only properties
below). Only the attributes and methods the simulator actually reads are listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["DoseEventLike", "ModalityLike", "PCALike", "PRNLike", "RegimenLike", "ScheduledLike"]


class DoseEventLike(Protocol):
    """One deterministic dose (:class:`regimens.DoseEvent`): a bolus, or a zero-order infusion over ``duration_h``."""

    @property
    def time_h(self) -> float: ...
    @property
    def drug(self) -> str: ...
    @property
    def route(self) -> str: ...
    @property
    def amount_mg(self) -> float: ...
    @property
    def duration_h(self) -> float: ...


class ScheduledLike(Protocol):
    """A scheduled item (:class:`regimens.Scheduled`): its doses for one patient's covariates."""

    def events(self, covariates: Mapping[str, float], horizon_h: float) -> Sequence[DoseEventLike]: ...


class PRNLike(Protocol):
    """An as-needed rule (:class:`regimens.PRN`): dose ``dose_mg`` when the reported NRS reaches ``threshold_nrs``."""

    @property
    def drug(self) -> str: ...
    @property
    def route(self) -> str: ...
    @property
    def dose_mg(self) -> float: ...
    @property
    def threshold_nrs(self) -> float: ...
    @property
    def min_interval_h(self) -> float: ...
    @property
    def start_h(self) -> float: ...
    @property
    def stop_h(self) -> float | None: ...
    @property
    def max_per_24h(self) -> int | None: ...


class PCALike(Protocol):
    """Patient-controlled analgesia (:class:`regimens.PCA`): demand doses, lockout, hourly cap, and its
    deterministic doses (loading bolus, basal infusion)."""

    @property
    def drug(self) -> str: ...
    @property
    def route(self) -> str: ...
    @property
    def demand_mg(self) -> float: ...
    @property
    def lockout_min(self) -> float: ...
    @property
    def start_h(self) -> float: ...
    @property
    def stop_h(self) -> float | None: ...
    @property
    def hourly_max_mg(self) -> float | None: ...

    def events(self, horizon_h: float) -> Sequence[DoseEventLike]: ...


class ModalityLike(Protocol):
    """A non-drug modality (:class:`regimens.Modality`): its kind, time windows (h) and whether it is on."""

    @property
    def kind(self) -> str: ...
    @property
    def windows(self) -> Sequence[tuple[float, float]]: ...
    @property
    def enabled(self) -> bool: ...


@runtime_checkable
class RegimenLike(Protocol):
    """A regimen as :func:`~pkpd.population.simulate_regimen` reads it (:class:`regimens.Regimen`)."""

    @property
    def name(self) -> str: ...
    @property
    def horizon_h(self) -> float: ...
    @property
    def scheduled(self) -> Sequence[ScheduledLike]: ...
    @property
    def prn(self) -> Sequence[PRNLike]: ...
    @property
    def pca(self) -> Sequence[PCALike]: ...
    @property
    def modalities(self) -> Sequence[ModalityLike]: ...
    @property
    def structures(self) -> Sequence[tuple[str, str]]:
        """``(drug, model file)``: drugs whose structural model is a model-language file."""
        ...

    def drugs(self) -> Iterable[str]:
        """Library names of every drug the regimen uses."""
        ...
