"""Options of a population simulation (:class:`SimOptions`) and the MME factors of a regimen's doses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import mme as _mme
from ..drugs import get_drug
from ..errors import ModelSpecError
from ..pain import DemandModel, PainModel
from ..pd import GAMMA, AdverseEffectModel

__all__ = ["IV_MME", "SimOptions", "mme_factor"]

#: IV MME factors (MME per mg IV) used here: :data:`pkpd.mme.ASSUMED_IV_FACTORS` (all UNVERIFIED).
IV_MME = _mme.ASSUMED_IV_FACTORS
_ORAL_ROUTES = ("po", "po_er")
_BUPI = ("bupivacaine", "bupivacaine_liposomal")


def mme_factor(drug: str, route: str) -> float:
    """MME per mg of ``drug`` by regimen ``route`` (0 for non-opioids). IV values are unverified."""
    d = get_drug(drug)
    if d.drug_class != "opioid":
        return 0.0
    if route in _ORAL_ROUTES:
        return float(_mme.mme(d.name, 1.0, "oral"))
    if route == "iv" and d.name in IV_MME:
        return float(_mme.mme(d.name, 1.0, "iv", factor=IV_MME[d.name].factor, allow_unverified=True))
    raise ModelSpecError(f"no MME factor for {d.name} by route {route!r}")


@dataclass(frozen=True)
class SimOptions:
    """Options of :func:`simulate_regimen`.

    ``dt_h`` grid step (h); ``relaxed`` expected-value PRN/PCA (differentiable) instead of sampled events;
    ``combination`` the rule combining analgesics of different mechanisms (``"loewe"`` or ``"bliss"``;
    ``None``: the rule the outcome-model calibration selected, :func:`pkpd.outcome.outcome_posterior`) and
    ``adjunct_exponent`` the exponent of the power mean by which the non-opioids combine (``None``: the
    calibrated value; :mod:`pkpd.outcome`); ``greco_alpha`` maps pairs of drug names to additional Greco
    interaction indices between their groups (default none);
    ``iiv`` samples inter-individual variability (False: typical patients with their covariates);
    ``record_doses`` keeps the realized dose record per patient; ``record_states`` keeps every state
    trajectory (N, T, n_states: memory-heavy, for checks); ``record_concentrations`` keeps every drug's
    plasma concentration trajectory (N, T, n_drugs; for concentration bands); ``record_trajectories=False``
    keeps only the per-patient outcomes (computed in the compiled program; no NRS, opioid-effect or bupivacaine
    trajectories, no dose record: for large batches); ``opioid_ec50_scale`` multiplies every opioid
    EC50 (analgesia and respiration); ``pd_overrides`` replaces PD values per drug, e.g.
    ``{"acetaminophen": {"emax": 0.3}}`` (keys ``ec50``, ``emax``). Every calibrated outcome-model value can
    also be given per patient as a population column ``outcome.<name>`` (:mod:`pkpd.outcome`).
    ``structures`` maps library drug names to a structure written in the model language (a ``.toml`` file
    with a ``[structure]`` section, a compiled user model, or an entry from :func:`pkpd.drugs.with_structure`)
    that replaces the drug's built-in structural model; its parameters, variability, PD, MME factor and limits
    stay the library entry's (:func:`pkpd.drugs.structure.regimen_entry`, docs/model_language.md).
    """

    dt_h: float = 1.0 / 12.0
    relaxed: bool = False
    pain: PainModel = field(default_factory=PainModel)
    demand: DemandModel = field(default_factory=DemandModel)
    ae: AdverseEffectModel = field(default_factory=AdverseEffectModel)
    gamma: float = float(GAMMA.value)
    combination: str | None = None
    adjunct_exponent: float | None = None
    greco_alpha: Mapping[tuple[str, str], float] | None = None
    iiv: bool = True
    record_doses: bool = True
    record_states: bool = False
    record_concentrations: bool = False
    record_trajectories: bool = True
    opioid_ec50_scale: float = 1.0
    pd_overrides: Mapping[str, Mapping[str, float]] | None = None
    structures: Mapping[str, Any] | None = None
