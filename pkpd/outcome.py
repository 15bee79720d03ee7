"""The calibrated outcome model: its parameters, their priors, and the shipped calibration posterior.

The pain -> rescue -> opioid-use model of :mod:`pkpd.population` has parameters that no reference gives
(models.md B3, B6, E: no adult spine pain-resolution model, no PCA-demand model, no adult Emax for
non-opioid analgesics, no opioid + non-opioid response surface). They are estimated together from the
aggregate outcomes of published trial arms (the evidence base, ``regimens/evidence/``) by
``regimens.calibration`` (NumPyro, an aggregate-data likelihood on an emulator of the simulator). This
module holds

* :data:`OUTCOME_PARAMETERS`: each calibrated parameter with its unit, meaning, prior and the source of
  the prior (an assumption where no source exists, flagged);
* :func:`outcome_posterior`: the shipped posterior (``pkpd/datasets/outcome_posterior.json``; version,
  draws, the combination rule the data preferred, how it was made);
* :func:`outcome_point`: the values the simulator uses by default (posterior medians).

The calibration also estimates two *trial effects* per trial: a level effect and a multiplier of the
between-patient heterogeneity (of pain sensitivity and rescue propensity: who the trial enrolled). The level
effect multiplies every rescue-request hazard from calibration 3 on (an institution's readiness to ask for and
give rescue opioid) and the pain curve in calibration 2 (see :mod:`regimens.calibration.design` for why it
moved); the posterior file says which (``reference.rescue_propensity`` or ``reference.pain_scale``). The
SPINE-72 benchmark stands for the setting of its calibration trial (clinical.md 3.2: Iyer 2023), so that
trial's effects are stored with every draw (:attr:`OutcomePosterior.reference_propensity` or
:attr:`OutcomePosterior.reference_scale`, and :attr:`OutcomePosterior.reference_spread`) and their medians
are the simulator's defaults (``DemandModel.setting_propensity`` or ``PainModel.setting_scale``, and
``PainModel.setting_spread``; population columns ``rescue.propensity``, ``pain.scale`` and ``pain.spread``
per row).

A population row may carry its own value of any parameter as a column ``outcome.<name>`` (e.g. a
posterior draw: :meth:`OutcomePosterior.draw_columns`), so one batched simulation can run many parameter
sets (the calibration's design points, the optimizer's scenarios).

Model structure (see :mod:`pkpd.population` for the equations): pain ``NRS = B(t) * S * (1 - E)``;
``E`` combines the opioid effect and each non-opioid's effect by the rule ``"loewe"`` (normalized units)
or ``"bliss"`` (independent action); the non-opioids first combine among themselves as a power mean with
exponent ``adjunct_exponent`` (1: the rule's additivity; towards 0: only the strongest adjunct counts, i.e.
overlapping mechanisms; > 1: synergy), and that total adds to the opioids' (Zeidan 2014: paracetamol +
morphine additive); rescue is requested
with hazard ``lambda_kind * D_i * sigmoid((NRS - n50)/s) / (1 + U_opioid/opioid_half)`` (per kind: PCA,
nurse-given IV PRN, oral PRN; ``D_i`` log-normal with SD ``demand_iiv``), and a PRN rule is applied to the
patient's *reported* score ``NRS + e`` with ``e ~ N(0, report_sd)``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from .drugs._base import Source
from .errors import ModelSpecError

__all__ = [
    "COMBINATION_RULES",
    "OUTCOME_PARAMETERS",
    "OutcomeParameter",
    "OutcomePosterior",
    "outcome_parameter",
    "outcome_point",
    "outcome_posterior",
    "EFFECT_CLASSES",
]

#: Combination rules for analgesics of different mechanisms (opioids among themselves are always
#: Loewe-additive in normalized units: one receptor).
COMBINATION_RULES = ("loewe", "bliss")

#: Drug -> effect class whose calibrated ceiling (``emax_<class>``) the drug uses.
EFFECT_CLASSES: dict[str, str] = {
    "acetaminophen": "acetaminophen",
    "ketorolac": "nsaid",
    "ibuprofen": "nsaid",
    "celecoxib": "nsaid",
    "gabapentin": "gabapentinoid",
    "pregabalin": "gabapentinoid",
    "ketamine": "ketamine",
    "s_ketamine": "ketamine",
    "bupivacaine": "local",
    "bupivacaine_liposomal": "local",
    "ropivacaine": "local",
}

_ASSUME = "assumption of this toolkit (no reference value; models.md B3/B6/E gaps)"
_SPINE = Source("clinical.md 3.2 SPINE-72 benchmark", "untreated NRS ~7, decaying with a 24-48 h half-life")
_GOUL = Source(
    "Goulooze 2020, Anesth Analg (clinical.md 1)",
    "rescue when NRS >= 4; morphine halves the rescue hazard at 9.3 ng/mL",
)


@dataclass(frozen=True)
class OutcomeParameter:
    """One calibrated parameter of the outcome model.

    Attributes
    ----------
    name
        Key (``outcome.<name>`` population column; key of the posterior).
    unit, description
        Unit and meaning.
    prior
        ``("lognormal", median, log_sd)``, ``("normal", mean, sd)`` or ``("logitnormal", median, logit_sd)``
        (for fractions in (0, 1)).
    bounds
        ``(low, high)``: values outside are rejected (and a normal prior is truncated there).
    source
        Where the prior's centre comes from; ``unverified`` where it is an assumption.
    """

    name: str
    unit: str
    description: str
    prior: tuple
    bounds: tuple[float, float]
    source: Source

    def to_unconstrained(self, x):
        """The value on the scale the prior is normal on (log, logit or identity)."""
        kind = self.prior[0]
        if kind == "lognormal":
            return np.log(x)
        if kind == "logitnormal":
            return np.log(x) - np.log1p(-np.asarray(x))
        return np.asarray(x, float)

    def from_unconstrained(self, z, xp=np):
        """Inverse of :meth:`to_unconstrained`."""
        kind = self.prior[0]
        if kind == "lognormal":
            return xp.exp(z)
        if kind == "logitnormal":
            return 1.0 / (1.0 + xp.exp(-z))
        return z

    @property
    def prior_loc_scale(self) -> tuple[float, float]:
        """Mean and SD of the prior on the unconstrained scale."""
        kind, centre, sd = self.prior
        if kind == "lognormal":
            return math.log(centre), float(sd)
        if kind == "logitnormal":
            return math.log(centre / (1.0 - centre)), float(sd)
        return float(centre), float(sd)


def _p(name, unit, description, prior, bounds, source) -> OutcomeParameter:
    return OutcomeParameter(name, unit, description, prior, bounds, source)


#: Every calibrated parameter of the outcome model, with its prior (see :class:`OutcomeParameter`).
OUTCOME_PARAMETERS: tuple[OutcomeParameter, ...] = (
    _p(
        "opioid_ec50_scale",
        "x",
        "multiplier of every opioid EC50 (analgesia and respiration) relative to the "
        "literature anchors of pkpd.pd (Jeleazcov 2016 hydromorphone EC50 for NRS <= 4 and tool MEAC ratios)",
        ("lognormal", 2.0, 0.7),
        (0.05, 50.0),
        Source(_ASSUME, "centre: the anchors are for cardiac-surgery patients on TCI-PCA; wide", unverified=True),
    ),
    _p(
        "b0",
        "NRS",
        "untreated pain at the end of surgery (typical opioid-naive patient)",
        ("normal", 7.0, 0.75),
        (3.0, 10.0),
        _SPINE,
    ),
    _p(
        "b_inf",
        "NRS",
        "residual untreated pain once the acute postoperative component has resolved",
        ("normal", 2.5, 1.0),
        (0.0, 6.0),
        Source(_ASSUME, "below the treat cut-off of NRS 4 (Gerbershagen, clinical.md 3.1), wide", unverified=True),
    ),
    _p(
        "t_half",
        "h",
        "half-life of the acute postoperative pain component",
        ("lognormal", 36.0, 0.3),
        (4.0, 240.0),
        _SPINE,
    ),
    _p(
        "sensitivity_sd",
        "1 (log SD)",
        "between-patient SD of the log pain sensitivity (the multiplier of the "
        "untreated pain curve): how much patients differ in pain, and so in opioid need",
        ("lognormal", 0.3, 0.5),
        (0.01, 1.5),
        Source(
            _ASSUME,
            "SD ~ mean of opioid use in trials (clinical.md 3.1); 12.6 % of spine "
            "patients follow a high-pain 'rebound' trajectory (Li 2022, models.md B3)",
            unverified=True,
        ),
    ),
    _p(
        "tol_ec50_factor",
        "x",
        "opioid EC50 multiplier in opioid-tolerant patients",
        ("lognormal", 2.0, 0.5),
        (1.0, 20.0),
        Source("clinical.md 3.2", "opioid-tolerant: higher EC50 (size UNVERIFIED)", unverified=True),
    ),
    _p(
        "tol_b0_shift",
        "NRS",
        "additional untreated pain of opioid-tolerant patients",
        ("normal", 1.0, 0.75),
        (0.0, 4.0),
        Source("clinical.md 3.2", "opioid-tolerant: higher baseline pain (size UNVERIFIED)", unverified=True),
    ),
    _p(
        "lambda_pca",
        "1/h",
        "PCA demand hazard at high pain (before the opioid damping)",
        ("lognormal", 6.0, 1.0),
        (0.05, 200.0),
        Source(_ASSUME, "no PCA-demand model (models.md B6)", unverified=True),
    ),
    _p(
        "lambda_prn_iv",
        "1/h",
        "hazard of a nurse-given IV PRN request at high pain",
        ("lognormal", 0.5, 1.0),
        (0.005, 50.0),
        Source(_ASSUME, "no PRN-demand model (models.md B6)", unverified=True),
    ),
    _p(
        "lambda_prn_po",
        "1/h",
        "hazard of an oral PRN request at high pain",
        ("lognormal", 0.5, 1.0),
        (0.005, 50.0),
        Source(_ASSUME, "no PRN-demand model (models.md B6)", unverified=True),
    ),
    _p("n50", "NRS", "pain at which the rescue hazard is half its maximum", ("normal", 4.5, 1.0), (1.0, 9.0), _GOUL),
    _p(
        "demand_iiv",
        "1 (log SD)",
        "between-patient SD of the log rescue propensity (all kinds)",
        ("lognormal", 0.5, 0.6),
        (0.01, 3.0),
        Source(
            _ASSUME, "SD ~ mean of opioid use in trials (clinical.md 3.1) needs patient-level spread", unverified=True
        ),
    ),
    _p(
        "report_sd",
        "NRS",
        "SD of a reported pain score around the model's pain (the PRN rule reads the reported score)",
        ("lognormal", 1.0, 0.4),
        (0.05, 4.0),
        Source(_ASSUME, "reported NRS varies around the underlying pain by about one point", unverified=True),
    ),
    _p(
        "opioid_half",
        "normalized units",
        "opioid effect (units of the opioid EC50) at which the rescue hazard halves, beyond its effect through pain",
        ("lognormal", 0.5, 1.0),
        (0.01, 100.0),
        Source(
            "Goulooze 2020, Anesth Analg (clinical.md 1)",
            "morphine halves the rescue hazard at 9.3 "
            "ng/mL; centre ~ 9.3 ng/mL / the morphine EC50 at scale 1 (21.9 ng/mL) ~ 0.4-0.5; wide",
            unverified=True,
        ),
    ),
    _p(
        "emax_acetaminophen",
        "1",
        "maximal fraction of pain relieved by acetaminophen",
        ("logitnormal", 0.25, 0.8),
        (0.001, 0.95),
        Source(
            "Anderson 2001, Eur J Clin Pharmacol 57:559",
            "paediatric Emax 5.17/10 = 0.52 as an upper anchor; adults on PCA 'minimal effect' (clinical.md 2)",
            unverified=True,
        ),
    ),
    _p(
        "emax_nsaid",
        "1",
        "maximal fraction of pain relieved by an NSAID (ketorolac, ibuprofen, celecoxib)",
        ("logitnormal", 0.35, 0.8),
        (0.001, 0.95),
        Source(_ASSUME, "no adult NSAID Emax model (models.md E)", unverified=True),
    ),
    _p(
        "emax_gabapentinoid",
        "1",
        "maximal fraction of pain relieved by gabapentin or pregabalin",
        ("logitnormal", 0.15, 0.8),
        (0.001, 0.95),
        Source(
            _ASSUME, "no adult Emax model (models.md E); -10/100 VAS in meta-analyses (clinical.md 2)", unverified=True
        ),
    ),
    _p(
        "emax_ketamine",
        "1",
        "maximal fraction of pain relieved by ketamine's anti-hyperalgesic action (opioid-naive patients)",
        ("logitnormal", 0.15, 0.8),
        (0.001, 0.95),
        Source(_ASSUME, "no adult Emax model (models.md E)", unverified=True),
    ),
    _p(
        "emax_ketamine_tolerant",
        "1",
        "additional ketamine ceiling in opioid-tolerant patients "
        "(anti-hyperalgesia reverses part of their opioid-induced hyperalgesia)",
        ("logitnormal", 0.15, 1.0),
        (0.001, 0.9),
        Source(
            "Nielsen 2017, Pain (clinical.md 2)",
            "-35 % 24-h morphine in opioid-dependent "
            "patients, larger than in naive patients; size of the prior an assumption",
            unverified=True,
        ),
    ),
    _p(
        "emax_local",
        "1",
        "maximal fraction of pain relieved by local anaesthetic at the wound",
        ("logitnormal", 0.10, 0.8),
        (0.001, 0.95),
        Source(
            _ASSUME,
            "no PD model (models.md E); LB near-null in opioid-naive spine patients (clinical.md 2)",
            unverified=True,
        ),
    ),
    _p(
        "adjunct_exponent",
        "1",
        "exponent of the power mean by which the non-opioids combine among themselves "
        "(1: additive under the rule; < 1: diminishing returns of adding adjuncts, towards the strongest alone; > 1: "
        "synergy)",
        ("lognormal", 1.0, 0.6),
        (0.05, 1.5),
        Source(
            _ASSUME,
            "centred on additivity; no opioid + non-opioid or non-opioid + non-opioid response surface "
            "for postoperative pain exists (models.md B5); opioid + non-opioid stay additive (Zeidan 2014, "
            "clinical.md 1)",
            unverified=True,
        ),
    ),
)

_BY_NAME = {p.name: p for p in OUTCOME_PARAMETERS}


def outcome_parameter(name: str) -> OutcomeParameter:
    """The :class:`OutcomeParameter` called ``name`` (clear error listing the known names)."""
    if name not in _BY_NAME:
        raise ModelSpecError(f"unknown outcome-model parameter {name!r} (known: {', '.join(_BY_NAME)})")
    return _BY_NAME[name]


@dataclass(frozen=True)
class OutcomePosterior:
    """The shipped calibration posterior of the outcome model.

    Attributes
    ----------
    version
        Version string of the calibration (bumped whenever the file is remade).
    rule
        Combination rule the calibration selected (one of :data:`COMBINATION_RULES`).
    draws
        One row per posterior draw, one column per :data:`OUTCOME_PARAMETERS` name (natural units).
    meta
        How the posterior was made: script, evidence arms, settings, diagnostics, model comparison.
    """

    version: str
    rule: str
    draws: pd.DataFrame
    meta: dict
    reference_scale: np.ndarray | None = None
    reference_trial: str = ""
    reference_spread: np.ndarray | None = None
    reference_propensity: np.ndarray | None = None

    def point(self) -> dict[str, float]:
        """Posterior medians (the simulator's default values)."""
        return {k: float(np.median(self.draws[k].to_numpy())) for k in self.draws.columns}

    def reference_pain_scale(self) -> float:
        """Median pain-curve multiplier of the reference setting (1 when the posterior has none)."""
        return 1.0 if self.reference_scale is None else float(np.median(self.reference_scale))

    def reference_pain_spread(self) -> float:
        """Median between-patient heterogeneity multiplier of the reference setting (1 when none)."""
        return 1.0 if self.reference_spread is None else float(np.median(self.reference_spread))

    def reference_rescue_propensity(self) -> float:
        """Median rescue-propensity multiplier of the reference setting (1 when the posterior has none: a
        calibration whose trial effect is on the pain curve)."""
        return 1.0 if self.reference_propensity is None else float(np.median(self.reference_propensity))

    def _index(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(int(seed))
        m = len(self.draws)
        return rng.permutation(m)[:n] if n <= m else rng.integers(0, m, n)

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        """``n`` draws (with replacement when ``n`` exceeds the stored number), reproducible for ``seed``."""
        return self.draws.iloc[self._index(n, seed)].reset_index(drop=True)

    def draw_columns(self, n: int, seed: int = 0) -> pd.DataFrame:
        """:meth:`sample` as population columns ``outcome.<name>`` (see the module docstring), with the
        reference setting's trial effects of the same draws as ``pain.scale`` (pain-curve multiplier),
        ``rescue.propensity`` and ``pain.spread`` where the posterior has them."""
        idx = self._index(n, seed)
        s = self.draws.iloc[idx].reset_index(drop=True)
        s = s.rename(columns={c: f"outcome.{c}" for c in s.columns})
        if self.reference_scale is not None:
            s["pain.scale"] = np.asarray(self.reference_scale, float)[idx]
        if self.reference_spread is not None:
            s["pain.spread"] = np.asarray(self.reference_spread, float)[idx]
        if self.reference_propensity is not None:
            s["rescue.propensity"] = np.asarray(self.reference_propensity, float)[idx]
        return s


_FILE = "outcome_posterior.json"


@functools.lru_cache(maxsize=4)
def outcome_posterior(path: str | None = None) -> OutcomePosterior:
    """Load the calibration posterior (the shipped ``pkpd/datasets/outcome_posterior.json`` by default).

    Raises
    ------
    ModelSpecError
        The file is missing, malformed, or lacks a parameter of :data:`OUTCOME_PARAMETERS`.
    """
    try:
        if path is None:
            text = resources.files("pkpd.datasets").joinpath(_FILE).read_text()
        else:
            with open(path) as fh:
                text = fh.read()
        obj = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"cannot read the outcome-model posterior {path or _FILE}: {exc}") from None
    names = obj.get("parameters", [])
    missing = [p.name for p in OUTCOME_PARAMETERS if p.name not in names]
    if missing:
        raise ModelSpecError(f"outcome-model posterior {path or _FILE} lacks parameters {missing}")
    draws = pd.DataFrame(np.asarray(obj["draws"], float), columns=names)
    if obj.get("rule") not in COMBINATION_RULES:
        raise ModelSpecError(f"outcome-model posterior: rule must be one of {COMBINATION_RULES}")
    bad = [
        p.name
        for p in OUTCOME_PARAMETERS
        if not np.all((draws[p.name] >= p.bounds[0]) & (draws[p.name] <= p.bounds[1]))
    ]
    if bad:
        raise ModelSpecError(f"outcome-model posterior: draws outside the bounds of {bad}")
    ref = obj.get("reference") or {}
    got = {}
    for key in ("pain_scale", "pain_spread", "rescue_propensity"):
        if key in ref:
            v = np.asarray(ref[key], float)
            if v.shape != (len(draws),) or not np.all(np.isfinite(v) & (v > 0)):
                raise ModelSpecError(
                    f"outcome-model posterior {path or _FILE}: reference {key} must hold one positive value per draw"
                )
            got[key] = v
    return OutcomePosterior(
        str(obj.get("version", "?")),
        obj["rule"],
        draws[[p.name for p in OUTCOME_PARAMETERS]],
        dict(obj.get("meta", {})),
        got.get("pain_scale"),
        str(ref.get("trial", "")),
        got.get("pain_spread"),
        got.get("rescue_propensity"),
    )


def outcome_point() -> dict[str, float]:
    """The default value of every outcome-model parameter: the shipped posterior's medians."""
    return outcome_posterior().point()


def check_values(values: Mapping[str, float]) -> None:
    """Raise :class:`ModelSpecError` naming every value outside its parameter's bounds or not finite."""
    bad = []
    for k, v in values.items():
        p = outcome_parameter(k)
        arr = np.asarray(v, float)
        if not np.all(np.isfinite(arr)) or np.any(arr < p.bounds[0]) or np.any(arr > p.bounds[1]):
            bad.append(f"{k} must lie in [{p.bounds[0]:g}, {p.bounds[1]:g}] {p.unit}")
    if bad:
        raise ModelSpecError("outcome-model parameters out of range: " + "; ".join(bad))
