"""Personalized opioid-sparing schedules: continuous relaxation, rounding, exact checks.

Pipeline of :func:`optimize_population` (all patients of a batch at once) and :func:`optimize_patient`
(one patient) (clinical.md section 4, "continuous optimisation, then discretisation"):

1. **Decision space** (:class:`DecisionSpace`): for every product allowed for this patient
   (:mod:`pkpd.drugs.products`; a product is left out when its drug is contraindicated or CPIC says
   'avoid' for the patient's genotype), one slot per time of its dosing grid over 0-72 h (single
   intra-operative doses: one slot). Each slot's amount is one of the product's strengths that is within
   the patient's label maximum single dose (:func:`regimens.dose_caps`). NSAIDs never overlap (a later
   one starts after an earlier one's course).
2. **Scenarios**: ``draws`` variability draws of the patient (population prior, or the rows of a fitted
   posterior), the same for every candidate and for the comparators (common random numbers).
3. **Discrete choices, gradient-free** (:func:`regimens._policies.cross_entropy_search`): the PRN rescue
   policy (threshold, dose, interval; :func:`regimens._policies.rescue_policies`, C1's first; every policy's
   doses at the patient's renal/hepatic fraction of the labels' starting doses,
   :func:`regimens._policies.for_patient`, simulated as the patient's own rescue tables) and which
   products to include, by the cross-entropy method over ``cem_generations`` x ``cem_candidates``
   candidates per patient, each scored with its included products at their maximum within the caps on
   ``cem_draws`` draws.
4. **Continuous stage**: slot amounts relaxed to ``x * reference`` with ``x`` in [0, the patient's bound]
   on a superset of every patient's slots; PRN rescue by its expectation
   (:func:`pkpd.population.relaxed_program`); objective (:func:`regimens._objective.group_loss`, in
   MME-equivalents) = mean 72-h MME + CVaR of MME + pain burden (integral of (NRS - 3)+) + sedation + the
   adjuncts' exposure-scaled burden, with penalties for time-in-target below C1's, OIRD hazard above C1's
   and the smoothed probability of crossing a toxicity limit (chance constraints). Projected Adam
   (:func:`regimens._descent.projected_descent`) on minibatches of draws; the projection scales a drug's
   doses down whenever a rolling-24-h or course total would exceed the patient's cap. One program is
   compiled per superset structure and batch shape; later batches and later updates reuse it. The
   scoring calls (steps 3 and 5) and the gradient steps split their candidate groups / patients over the
   local devices (:func:`pkpd.batch.shard_rows_map`; each device holds its patients' draws), so the
   proposals do not depend on the device count.
5. **Rounding**: each slot to a dispensable strength, then the neighbouring discrete schedules (all
   slots of one drug one strength down or up) scored in one batched call; the best is kept.
6. **Hard constraints re-checked** on the discrete schedule with :func:`regimens.check_regimen` (label
   maxima, intervals, durations, fusion caps, exclusivity, CPIC); any finding is repaired by lowering
   or dropping doses of that drug until none remains. A schedule with a finding is never returned.
7. **Exact evaluation**: the proposals and the C0 and C1 comparators (adapted to the patient's limits and
   as-needed dose fractions, :mod:`regimens.adapt`) simulated with sampled PRN events
   (:func:`pkpd.population.simulate_regimen`, per-patient ``dose_weights`` and ``rescue_tables``) on all draws; local-
   anaesthetic toxicity, the exposure limits and OIRD risk are decided there (see :class:`OptimizeSettings`).

References
----------
clinical.md sections 3.2 (SPINE-72 problem) and 4 (JAX methods). Rockafellar RT, Uryasev S.
Optimization of conditional value-at-risk. J Risk 2000;2:21-41.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from pkpd.drugs.products import Product, get_product
from pkpd.xla import fast_compile, jit

from ._condition import RegimenError
from ._descent import projected_descent
from ._model import PRN, Regimen, Scheduled
from ._objective import ADJUNCT_BURDEN, EXPOSURE_LIMITS, exceedance_probability, group_loss
from ._policies import cross_entropy_search, for_patient, rescue_policies, withholds_rescue
from .adapt import adapt_to_patient, rescue_for_patient, rescue_tables
from .limits import DoseCaps, check_regimen, dose_caps, rescue_fraction

__all__ = [
    "DEFAULT_PRODUCTS",
    "DecisionSpace",
    "Slot",
    "OptimizeSettings",
    "Proposal",
    "PopulationProposal",
    "optimize_patient",
    "optimize_population",
    "run_trial",
    "trial_summary",
    "plot_trial",
    "save_trial",
    "trial_summary_text",
    "TRIAL_FILES",
    "TRIAL_STORE_KIND",
    "oracle_gap",
    "InfeasibleError",
    "explain",
    "auc_reference",
    "exact_loss",
    "default_row_ids",
    "plot_concentrations",
    "plot_schedule",
]

#: Products the optimizer may use by default. NSAIDs never overlap: a later NSAID in the list (celecoxib)
#: is only scheduled after the course of an earlier one (ketorolac, <= 48 h in fusion surgery) has ended,
#: or throughout when the earlier one is not allowed for the patient.
DEFAULT_PRODUCTS: tuple[str, ...] = (
    "acetaminophen/po",
    "gabapentin/po",
    "bupivacaine_liposomal/infiltration",
    "ketamine/iv",
    "ketorolac/iv",
    "celecoxib/po",
)
#: NSAIDs: never two at once (additive GI/renal/bleeding risk).
NSAIDS = frozenset({"ketorolac", "celecoxib", "ibuprofen"})
#: Grid start (h after the end of surgery) of scheduled products: pre-operative oral doses at -2 h,
#: intra-operative ketorolac at -0.5 h, as in C1 (clinical.md 3.2).
FIRST_H = {
    "acetaminophen/po": -2.0,
    "gabapentin/po": -2.0,
    "celecoxib/po": -2.0,
    "ibuprofen/po": -2.0,
    "ketorolac/iv": -0.5,
    "acetaminophen/iv": 0.0,
}


class InfeasibleError(RegimenError):
    """No allowed schedule meets the request; the message says which constraint and why."""


@dataclass(frozen=True)
class Slot:
    """One decision: the amount of ``product`` given at ``time_h`` (one of ``choices_mg``, 0 = skip)."""

    product: Product
    time_h: float
    choices_mg: tuple[float, ...]

    @property
    def reference_mg(self) -> float:
        """Largest allowed amount: the continuous stage moves in [0, reference]."""
        return self.choices_mg[-1]


@dataclass
class DecisionSpace:
    """Slots, fixed rescue rules, the patient's caps and what was excluded and why."""

    slots: list[Slot]
    rescue: tuple[PRN, ...]
    caps: dict[str, DoseCaps]
    excluded: dict[str, str]
    horizon_h: float = 72.0

    @staticmethod
    def build(
        covariates: Mapping[str, Any],
        phenotypes: Mapping[str, Any] | None = None,
        products: Sequence[str] = DEFAULT_PRODUCTS,
        rescue: Sequence[PRN] | None = None,
        horizon_h: float = 72.0,
        fusion: bool = True,
    ) -> DecisionSpace:
        """Decision space for one patient (see the module docstring)."""
        if rescue is None:  # C1's as-needed rules, at the patient's renal/hepatic dose fractions
            from .io import get_regimen

            rescue = rescue_for_patient(get_regimen("C1").prn, (), covariates)[0]
        slots: list[Slot] = []
        caps: dict[str, DoseCaps] = {}
        excluded: dict[str, str] = {}
        for key in products:
            prod = get_product(key)
            cap = dose_caps(prod.drug, prod.route, covariates, phenotypes, fusion=fusion)
            caps[key] = cap
            if cap.forbidden:
                excluded[key] = cap.forbidden
                continue
            if cap.unchecked:  # a limit that cannot be checked (missing covariate): do not use the product
                excluded[key] = "; ".join(cap.unchecked)
                continue
            scale = float(covariates["WT"]) if prod.per_kg else 1.0
            choices = tuple(s * scale for s in prod.strengths_mg if s * scale <= cap.max_single_mg + 1e-9)
            if not choices:
                excluded[key] = (
                    f"the smallest strength {prod.strengths_mg[0]:g} mg is above the patient's maximum "
                    f"single dose {cap.max_single_mg:g} mg"
                )
                continue
            if prod.single:
                times = [float(prod.at_h)]
            else:
                first = FIRST_H.get(key, 0.0)
                step = max(float(prod.every_h), cap.min_interval_h)
                times = list(np.arange(first, horizon_h - 1e-9, step))
                if math.isfinite(cap.max_duration_h):
                    times = [t for t in times if t - first <= cap.max_duration_h - step + 1e-9]
            if prod.drug in NSAIDS:  # never two NSAIDs at once: a later one starts after the earlier course
                prior = [sl for sl in slots if sl.product.drug in NSAIDS and sl.product.drug != prod.drug]
                if prior:
                    last = max(sl.time_h + float(sl.product.every_h or 0.0) for sl in prior)
                    times = [t for t in times if t >= last - 1e-9]
                    if not times:
                        excluded[key] = f"another NSAID ({prior[0].product.drug}) covers the whole horizon"
                        continue
            slots += [Slot(prod, float(t), (0.0,) + choices) for t in times]
        return DecisionSpace(slots, tuple(rescue), caps, excluded, horizon_h)

    # ------------------------------------------------------------------------------------------------
    @property
    def reference(self) -> np.ndarray:
        return np.array([s.reference_mg for s in self.slots])

    def regimen(
        self, amounts_mg: Sequence[float] | None = None, name: str = "proposal", rescue: Sequence[PRN] | None = None
    ) -> Regimen:
        """The regimen giving ``amounts_mg`` (default: every slot at its reference) plus the rescue rules
        (``rescue``, default the space's); skipped slots (amount 0) are left out."""
        amounts = self.reference if amounts_mg is None else np.asarray(amounts_mg, float)
        items = [
            Scheduled(drug=s.product.drug, route=s.product.route, dose_mg=float(a), start_h=s.time_h)
            for s, a in zip(self.slots, amounts)
            if a > 0
        ]
        prn = self.rescue if rescue is None else tuple(rescue)
        return Regimen(
            name=name,
            scheduled=tuple(items),
            prn=prn,
            horizon_h=self.horizon_h,
            description=f"optimized schedule ({len(items)} scheduled doses)",
        )


#: Draws per patient up to which :class:`OptimizeSettings` compiles for compile speed by default.
FAST_COMPILE_DRAWS = 16


@dataclass(frozen=True)
class OptimizeSettings:
    """Settings of :func:`optimize_patient` and :func:`optimize_population`.

    Scenarios: ``draws`` variability draws per patient (population prior; or posterior draws), with seed
    ``seed``, shared by every candidate and the comparators (common random numbers); ``batch_draws`` draws
    per patient in each gradient step (a minibatch cycling through all ``draws``: stochastic gradient on
    the whole sample-average objective); ``score_draws`` draws scoring the discrete candidates (rounding
    neighbours, cross-entropy candidates). The exact evaluation uses all ``draws``.

    Objective (:mod:`regimens._objective`, MME-equivalents): ``pain_weight`` per NRS*h of pain above 3;
    ``sedation_weight`` per unit of peak sedation index; ``cvar_weight`` x CVaR at ``cvar_alpha`` of 72-h MME;
    ``adjunct_burden`` drug -> MME-equivalents of the reference adult's label-maximum course (default
    :data:`regimens._objective.ADJUNCT_BURDEN`, UNVERIFIED), scaled by the patient's plasma AUC.

    Constraints: mean time-in-target no more than ``tit_slack`` (fraction of 72 h) below C1's, plus
    ``min_time_in_target`` if given (:func:`optimize_patient` raises :class:`InfeasibleError` when the best
    schedule misses it); the mean time with NRS >= 4 (the treat cut-off, clinical.md 3.1) no more than
    ``ge4_slack`` above C1's and the mean time with NRS >= 7 (severe pain: the probability that an assessment
    finds it) no more than ``ge7_slack`` above C1's (non-inferiority, so that a schedule cannot win by
    withholding rescue: a rescue threshold above the treat cut-off is kept only when both are no worse than
    C1's, without the margins (a negative margin, a limit below C1's, applies to every policy);
    :func:`regimens._policies.withholds_rescue`); OIRD risk no
    higher than C1's (exact check within ``oird_tolerance``); probability of crossing a toxicity limit (LAST
    index >= 1; :data:`regimens._objective.EXPOSURE_LIMITS`) at most ``toxicity_risk`` per patient
    (``last_risk`` is kept as its former name). In the gradient stage they are quadratic penalties
    (``tit_penalty`` for the pain constraints, ``oird_penalty``) and a penalty on the smoothed exceedance
    frequency (``chance_penalty``); the exact checks decide. A schedule that misses a pain constraint or C1's
    OIRD risk in the exact evaluation is repaired step by step, re-checking after each: first C1's rescue
    policy with the searched doses, then the adjuncts it already uses at their maxima, and only then the
    fallback (C1's own schedule, the standard of care, within the patient's limits, with C1's rescue policy);
    columns ``REPAIR`` and ``FALLBACK`` and the explanation say which.

    Outcome-model uncertainty: with ``outcome_uncertainty`` every scenario (draw) also carries its own draw
    of the calibrated outcome-model parameters (:func:`pkpd.outcome.outcome_posterior`), the same for the
    proposal and the comparators, so a proposal is robust to what the evidence leaves uncertain.

    Method: ``cem_generations`` x ``cem_candidates`` cross-entropy candidates per patient choose the rescue
    policy (``rescue_policies``; default :func:`regimens._policies.rescue_policies`, C1's first) and which
    products to use (0 generations: C1's policy, every allowed product); then ``steps`` projected Adam steps
    (``learning_rate``) on the dose fractions on a ``dt_h`` grid; rounding to strengths with neighbours;
    repair; exact evaluation on the 5-min grid.

    Compilation: ``fast_compile`` ``True`` compiles the optimizer's programs and its exact simulations for
    compile speed (:func:`pkpd.xla.fast_compile`: LLVM's optimizations off; about half the compile time,
    up to twice the run time), ``False`` for run speed; ``None`` (default): fast with at most
    :data:`FAST_COMPILE_DRAWS` draws per patient, the quick settings whose time is mostly compilation.
    Results differ between the two at rounding level only.
    """

    products: tuple[str, ...] = DEFAULT_PRODUCTS
    draws: int = 128
    batch_draws: int = 8
    score_draws: int = 32
    seed: int = 0
    pain_weight: float = 0.5
    sedation_weight: float = 10.0
    cvar_alpha: float = 0.9
    cvar_weight: float = 0.25
    adjunct_burden: Mapping[str, float] | None = None
    tit_slack: float = 0.05
    ge4_slack: float = 0.02
    ge7_slack: float = 0.005
    outcome_uncertainty: bool = True
    tit_penalty: float = 2.0e4
    oird_penalty: float = 1.0e3
    oird_tolerance: float = 1.0e-5
    toxicity_risk: float = 1.0e-3
    chance_penalty: float = 10.0
    last_risk: float | None = None
    min_time_in_target: float | None = None
    rescue_policies: tuple | None = None
    cem_generations: int = 2
    cem_candidates: int = 12
    cem_draws: int = 4
    steps: int = 30
    learning_rate: float = 0.1
    dt_h: float = 0.5
    fast_compile: bool | None = None

    @property
    def compile_fast(self) -> bool:
        """Whether the programs are compiled for compile speed (``fast_compile``, or few draws)."""
        return bool(self.draws <= FAST_COMPILE_DRAWS if self.fast_compile is None else self.fast_compile)

    @property
    def risk(self) -> float:
        return float(self.last_risk if self.last_risk is not None else self.toxicity_risk)

    def burden(self) -> dict[str, float]:
        return dict(ADJUNCT_BURDEN if self.adjunct_burden is None else self.adjunct_burden)

    def policies(self) -> tuple:
        return tuple(self.rescue_policies) if self.rescue_policies is not None else rescue_policies()


@dataclass
class Proposal:
    """Result of :func:`optimize_patient`.

    Attributes
    ----------
    regimen
        The proposed :class:`Regimen` (scheduled doses at dispensable strengths + the rescue rules).
    space
        The patient's :class:`DecisionSpace`.
    schedule
        One row per scheduled dose: ``time_h`` (h after the end of surgery), ``drug``, ``route``,
        ``dose_mg``.
    comparison
        Proposal vs C0 and C1 on the same variability draws (exact simulation): mean and P90 of 72-h MME
        (mg), time in target (fraction with NRS <= 3), pain AUC (NRS*h), mean OIRD and PONV risk,
        largest LAST index.
    outcomes
        ``"proposal"``, ``"C0"``, ``"C1"`` -> :class:`pkpd.population.PopulationResult`.
    findings
        :func:`check_regimen` findings left (never one on a scheduled drug; the rescue rules' own).
    notes
        What the patient's genotype and covariates changed (:func:`explain`), and anything rejected or
        repaired.
    fallback
        True when the proposal is the fallback (C1's schedule within the patient's limits, with C1's rescue
        policy) because the searched schedules missed a constraint: not an optimized schedule.
    worse_than_comparator
        True when the proposal uses more opioid and keeps pain in target for less time than C1 (adapted to
        the patient's limits where C1 as written is not allowed: :func:`regimens.adapt.adapt_to_patient`);
        the first note says so.
    """

    regimen: Regimen
    space: DecisionSpace
    schedule: pd.DataFrame
    comparison: pd.DataFrame
    outcomes: dict[str, Any]
    findings: list
    notes: list[str] = field(default_factory=list)
    fallback: bool = False
    worse_than_comparator: bool = False

    def save(self, out_dir, *, force: bool = False) -> list:
        """Write ``schedule.csv``, ``regimen.toml`` and ``regimen.txt`` (the proposal, reusable with
        ``pkpd simulate --regimen``), ``comparison.csv``, ``explanation.txt``, ``schedule.png`` (doses over
        time per drug), ``bands.png`` (pain and opioid-effect bands of the proposal with C1's median pain)
        and ``concentrations.png`` (per-drug plasma concentration bands with toxicity limits). An existing
        non-empty directory is refused unless ``force``."""
        from pathlib import Path

        from .io import save_regimen
        from .text import format_regimen_text

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out} is a file")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise FileExistsError(f"the output directory {out} exists and is not empty (use force=True / --force)")
        out.mkdir(parents=True, exist_ok=True)
        files = [out / "schedule.csv", out / "comparison.csv", out / "explanation.txt", out / "regimen.txt"]
        self.schedule.to_csv(files[0], index=False)
        self.comparison.to_csv(files[1])
        files[2].write_text(
            "\n".join(
                self.notes
                or [
                    "nothing in this patient's genotype or covariates changed the "
                    "allowed doses (reference adult limits apply)"
                ]
            )
            + "\n"
        )
        files[3].write_text(format_regimen_text(self.regimen) + "\n")
        files.append(save_regimen(self.regimen, out / "regimen.toml"))
        plot_schedule(self, out / "schedule.png")
        _plot_proposal_bands(self, out / "bands.png")
        extra = [out / "schedule.png", out / "bands.png"]
        if self.outcomes["proposal"].concentrations:
            plot_concentrations(self, out / "concentrations.png")
            extra.append(out / "concentrations.png")
        return files + extra

    def summary_text(self) -> str:
        """The proposal in plain text, as ``pkpd optimize`` prints it: the comparison with C0 and C1 (72-h MME
        mean and P90 in mg, share of 0-72 h with NRS <= 3, >= 4 and >= 7, pain AUC in NRS*h, P(OIRD),
        P(PONV), largest LAST index), the schedule (doses in mg at h after the end of surgery) and the
        reasons (``why:`` lines, :attr:`notes`)."""
        lines = [
            f"{'':10s} {'MME mean':>9s} {'MME P90':>8s} {'NRS<=3':>7s} {'NRS>=4':>7s} {'NRS>=7':>7s} "
            f"{'pain AUC':>9s} {'P(OIRD)':>9s} {'P(PONV)':>8s} {'LAST':>5s}"
        ]
        for name, r in self.comparison.iterrows():
            lines.append(
                f"{name:10s} {r['MME_mean']:9.1f} {r['MME_P90']:8.1f} {100 * r['TIT3']:6.0f}% "
                f"{100 * r['TIME_NRS_GE4']:6.0f}% {100 * r['TIME_NRS_GE7']:6.1f}% "
                f"{r['PAIN_AUC']:9.0f} {r['P_OIRD']:9.1e} {r['P_PONV']:8.2f} {r['LAST_INDEX_max']:5.2f}"
            )
        lines.append(
            "(MME: mg oral morphine equivalents over 0-72 h; NRS<=3 / NRS>=4 / NRS>=7: share of 0-72 h; "
            "pain AUC: NRS*h)"
        )
        lines.append("Schedule:")
        for (drug, route), g in self.schedule.groupby(["drug", "route"], sort=False):
            doses = ", ".join(f"{a:g} mg at {t:g} h" for t, a in zip(g["time_h"], g["dose_mg"]))
            lines.append(f"  {drug} {route}: {doses}")
        lines += [f"why: {note}" for note in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
_PROGRAMS: dict[Any, tuple[Callable, Callable, Callable]] = {}


def _programs(outcomes: Callable, static: tuple, devices: Sequence) -> tuple[Callable, Callable, Callable]:
    """(group loss of candidates, summed minibatch loss, projection) for one compiled outcomes program, the
    objective's static structure and the devices the groups are sharded over, cached so that
    projected_descent and the scoring calls reuse their compiled programs for every population with the same
    structure.

    Every problem array has its groups first and is split over ``devices`` along that axis
    (:func:`pkpd.batch.shard_rows_map`): patients are independent (the summed loss's gradient with respect to
    a patient's ``x`` is that patient's own; Adam and the projection act per coordinate), so each device
    computes its own patients' (or candidates') losses. The row data of the relaxed simulation (``base``,
    ``s_amt``) are laid out (groups, draws, ...); the rest of ``data`` and the scalar settings are ``shared``
    (replicated).

    ``x`` is (P, n_slots + 1): fractions of each slot's reference amount, then the CVaR variable eta in units
    of ``cp["eta_scale"]``."""
    key = (outcomes, static, tuple(d.id for d in devices))
    if key in _PROGRAMS:
        return _PROGRAMS[key]
    from pkpd.batch import shard_rows_map

    alpha, burden_drugs, limit_drugs = static
    kw = dict(alpha=alpha, burden_drugs=burden_drugs, limit_drugs=limit_drugs)

    def flat(v):  # (groups, draws, ...) -> (groups * draws, ...): rows grouped consecutively
        return v.reshape((v.shape[0] * v.shape[1],) + v.shape[2:])

    def run(X, rowdata, shared):
        data = {
            **shared["data"],
            "base": jax.tree_util.tree_map(flat, rowdata["base"]),
            "s_amt": flat(rowdata["s_amt"]),
        }
        return outcomes(X, shared["c"]["rescue"], data)

    def local_score(Xg, rowdata, cg, shared):
        """Loss of this device's groups (Xg: (groups, draws, n) dose fractions), empirical CVaR."""
        return group_loss(run(flat(Xg), rowdata, shared), Xg.shape[0], {**shared["c"], **cg}, None, **kw)

    def local_loss(x, rowdata, cp, shared, draws):
        """Loss of this device's patients on the minibatch ``draws`` (indices into each patient's draws)."""
        n = x.shape[1] - 1
        picked = jax.tree_util.tree_map(lambda v: v[:, draws], rowdata)
        out = run(jnp.repeat(x[:, :n], draws.shape[0], axis=0), picked, shared)
        return group_loss(out, x.shape[0], {**shared["c"], **cp}, x[:, n] * cp["eta_scale"], **kw)

    loss_map = shard_rows_map(local_loss, devices, (False, False, False, True, True))

    def batch_loss(x, rowdata, cp, shared, mask, draws):
        return jnp.sum(loss_map(x, rowdata, cp, shared, draws) * mask)

    def project(x, rowdata, cp, shared, *rest):
        n = x.shape[1] - 1
        X = jnp.clip(x[:, :n], 0.0, cp["U"])
        W = shared["c"]["W"]
        load = (X * cp["ref"]) @ W.T  # (P, n_constraints), mg
        ratio = jnp.where(load > cp["caps"], cp["caps"] / jnp.maximum(load, 1e-12), 1.0)
        scale = jnp.min(jnp.where(W[None, :, :] > 0, ratio[:, :, None], 1.0), axis=1)
        return jnp.concatenate([X * scale, jnp.maximum(x[:, n:], 0.0)], axis=1)

    score = jit(shard_rows_map(local_score, devices, (False, False, False, True)))
    _PROGRAMS[key] = (score, batch_loss, project)
    return _PROGRAMS[key]


def _cap_scale(X: np.ndarray, ref: np.ndarray, W: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """numpy twin of the projection's cap step: each drug's doses scaled down wherever a rolling-24-h or
    course total (rows of ``W``) would exceed the cap (``X``, ``ref``, ``caps`` broadcast on leading axes)."""
    load = (X * ref) @ W.T
    ratio = np.where(load > caps, caps / np.maximum(load, 1e-12), 1.0)
    scale = np.min(np.where(W > 0, ratio[..., :, None], 1.0), axis=-2)
    return X * scale


def _columns(space: DecisionSpace, col: Mapping[tuple[str, float], int]) -> np.ndarray:
    """The superset column of each of the patient's slots."""
    return np.array([col[(sl.product.key, round(sl.time_h, 6))] for sl in space.slots], dtype=int)


def _to_superset(columns: np.ndarray, amounts, reference_mg: np.ndarray, n: int) -> np.ndarray:
    """A patient's slot amounts (mg) as fractions of the superset's reference amounts (0 elsewhere)."""
    x = np.zeros(n)
    x[columns] = np.asarray(amounts, float) / reference_mg[columns]
    return x


def _round(space: DecisionSpace, amounts: np.ndarray) -> list[np.ndarray]:
    """Nearest strengths, then per drug all slots one strength down / up: the candidates to score."""

    def nearest(s, a):
        c = np.asarray(s.choices_mg)
        return int(np.argmin(np.abs(c - a)))

    base = np.array([nearest(s, a) for s, a in zip(space.slots, amounts)])
    cands = [base]
    for drug in sorted({s.product.drug for s in space.slots}):
        idx = [i for i, s in enumerate(space.slots) if s.product.drug == drug]
        for d in (-1, 1):
            k = base.copy()
            for i in idx:
                k[i] = int(np.clip(k[i] + d, 0, len(space.slots[i].choices_mg) - 1))
            cands.append(k)  # kept even when equal to base
    return [np.array([space.slots[i].choices_mg[j] for i, j in enumerate(k)]) for k in cands]


def _repair(
    space: DecisionSpace, amounts: np.ndarray, covariates, phenotypes, fusion: bool, rescue: Sequence[PRN] | None = None
) -> tuple[np.ndarray, list]:
    """Lower or drop doses until :func:`check_regimen` finds nothing for the scheduled drugs. Returns the
    amounts and the findings that remain (the rescue rules' own findings, never a scheduled one)."""
    amounts = amounts.copy()
    for _ in range(10 * len(amounts) + 10):
        findings = check_regimen(space.regimen(amounts, rescue=rescue), covariates, phenotypes, fusion=fusion)
        bad = [f for f in findings if any(s.product.drug == f.drug for s, a in zip(space.slots, amounts) if a > 0)]
        if not bad:
            return amounts, findings
        drug = bad[0].drug
        idx = [i for i, s in enumerate(space.slots) if s.product.drug == drug and amounts[i] > 0]
        if bad[0].rule == "max_single_dose":
            for i in idx:
                ch = [c for c in space.slots[i].choices_mg if c < amounts[i]]
                amounts[i] = ch[-1] if ch else 0.0
        else:  # daily, total, duration, interval, exclusivity, contraindication: drop the latest dose
            amounts[idx[-1]] = 0.0
    raise InfeasibleError("could not repair the schedule to satisfy every label limit")  # pragma: no cover


def c1_amounts(space: DecisionSpace, covariates: Mapping[str, Any]) -> np.ndarray:
    """C1's scheduled doses (standard of care, with its dose adjustments for this patient, adapted to the
    patient's limits by :func:`regimens.adapt.adapt_to_patient`) placed on the space's slots: each slot takes the C1 dose of its drug and route given within 0.5 h of the slot's time,
    rounded down to an allowed strength (0 where C1 gives none or the product is excluded). The optimizer's
    fallback (then lowered to the patient's limits by :func:`_repair`)."""
    from .io import get_regimen

    # C1 adapted to the patient's limits (regimens.adapt; C1 itself where it is within them): the reference of
    # the constraints relative to C1
    c1 = adapt_to_patient(get_regimen("C1"), covariates).regimen
    events = [e for e in c1.dose_events(covariates) if e.kind == "scheduled"]
    out = np.zeros(len(space.slots))
    for i, sl in enumerate(space.slots):
        dose = sum(
            e.amount_mg
            for e in events
            if e.drug == sl.product.drug and e.route == sl.product.route and abs(e.time_h - sl.time_h) <= 0.5
        )
        ok = [c for c in sl.choices_mg if c <= dose + 1e-6]
        out[i] = ok[-1] if ok else 0.0
    return out


def _lower_drug(space: DecisionSpace, amounts: np.ndarray, drug: str) -> bool:
    """Every dose of ``drug`` one strength down (in place); False when there was nothing to lower."""
    changed = False
    for i, sl in enumerate(space.slots):
        if sl.product.drug == drug and amounts[i] > 0:
            ch = [x for x in sl.choices_mg if x < amounts[i]]
            amounts[i] = ch[-1] if ch else 0.0
            changed = True
    return changed


@dataclass
class PopulationProposal:
    """Result of :func:`optimize_population`.

    Attributes
    ----------
    spaces
        Each patient's :class:`DecisionSpace`.
    amounts
        Each patient's chosen amounts (mg) of the slots of their own space.
    policies
        Each patient's rescue policy (:class:`regimens._policies.RescuePolicy`), with the doses given to that
        patient (the renal/hepatic fractions of :func:`regimens.limits.rescue_fraction` applied, in
        ``fractions``).
    patients
        One row per patient: ``ID``, covariates, ``POLICY`` (the rescue policy's label; where a renal/hepatic
        fraction applies, the patient's doses with the fraction and its label), and for ``proposal``,
        ``C0``, ``C1`` over the patient's draws: means of ``MME_0_72`` (mg), ``TIT3``, ``PAIN_AUC``, ``P_OIRD``,
        ``P_PONV`` (columns ``<outcome>_<regimen>``), ``MME_P90_<regimen>``, ``MME_CVAR90_<regimen>`` (mean of
        the worst 10 % of draws), the largest ``LAST_INDEX_<regimen>``, the estimated probabilities of crossing
        each toxicity limit ``P_TOX_<drug>_proposal`` (LAST for bupivacaine), plus ``SAFE`` (every hard
        safety check passed: toxicity chance constraints, C1's OIRD risk) and ``WHY`` (the failed checks,
        empty when safe); the pain constraints ``TIT_TARGET`` (C1's mean time with NRS <= 3 minus
        ``tit_slack``, or ``min_time_in_target`` when higher), ``GE4_TARGET`` and ``GE7_TARGET`` (C1's mean
        time with NRS >= 4 / >= 7 plus ``ge4_slack`` / ``ge7_slack``), ``PAIN_OK`` (all met) and
        ``PAIN_WHY`` (the missed ones, with figures); ``TIT3_SEARCHED`` (NaN, or the time in target of the
        searched schedule where it missed a constraint in the exact evaluation), ``REPAIR`` (the repair steps
        taken, in order: C1's rescue policy, the used adjuncts at their maxima, the fallback) and
        ``FALLBACK`` (the proposal is the fallback: C1's schedule within the patient's limits, with C1's rescue
        policy) and ``FALLBACK_NOTE`` (where C1 as given is not allowed for the patient, the fallback is the
        reference of the constraints relative to C1; its figures against C1 as given).
    draws
        The exact simulations (``"proposal"``, ``"C0"``, ``"C1"`` -> PopulationResult over P x S rows).
    superset, weights, rescue_tables
        The common superset regimen, the per-row dose weights and rescue tables of the proposals (each row's
        patient's own as-needed doses: what the exact evaluation simulated).
    policy_tables, policy_index
        The distinct rescue tables (one row each) and each patient's entry among them.
    times
        Seconds per stage.
    rows, slot_index, reference_mg
        The simulated rows, the superset column of each (product, time) and the per-patient reference
        amounts (mg), used by :meth:`evaluate`.
    """

    spaces: list
    amounts: list
    patients: pd.DataFrame
    draws: dict
    superset: Regimen
    weights: np.ndarray
    times: dict
    rows: pd.DataFrame | None = None
    slot_index: dict | None = None
    reference_mg: np.ndarray | None = None
    policies: list | None = None
    rescue_tables: dict | None = None
    policy_tables: list | None = None
    policy_index: list | None = None

    def weights_for(self, row_patient: np.ndarray) -> tuple[np.ndarray, dict]:
        """Dose weights and rescue tables of each patient's proposal for rows of the given patients."""
        n = len(self.superset.scheduled)
        Wt = np.array(
            [
                _to_superset(_columns(sp, self.slot_index), am, self.reference_mg[p], n)
                for p, (sp, am) in enumerate(zip(self.spaces, self.amounts))
            ]
        )
        rp = np.asarray(row_patient)
        pol = np.asarray(self.policy_index)[rp]
        tabs = {k: np.stack([self.policy_tables[i][k][0] for i in pol]) for k in self.policy_tables[0]}
        return Wt[rp], tabs

    def evaluate(self, rows: pd.DataFrame, row_patient: np.ndarray, seed: int = 0, options=None):
        """Exact simulation of each patient's chosen schedule and rescue policy on other rows (e.g. the
        patient's true parameters): ``rows`` a population frame, ``row_patient`` the patient index of each row;
        ``options`` :class:`pkpd.population.SimOptions` (e.g. to record concentrations)."""
        from pkpd.population import simulate_regimen

        W, tabs = self.weights_for(row_patient)
        return simulate_regimen(self.superset, rows, seed=seed, dose_weights=W, rescue_tables=tabs, options=options)


#: Reference patient of the adjunct-burden exposures: 50 y, male, 80 kg, 175 cm, serum creatinine 1.0 mg/dL
#: (Cockcroft-Gault 100 mL/min), no hepatic impairment, normal metabolizer (the REFERENCE_ADULT of explain()).
def _reference_row() -> dict:
    from pkpd.patients import Patient

    row = Patient(
        age_y=50, sex="male", weight_kg=80, height_cm=175, scr_mg_dl=1.0, genotypes=["CYP2D6 *1/*1", "CYP2C9 *1/*1"]
    ).to_row()
    row["ID"] = 1
    return row


_AUC_REF: dict[tuple, float] = {}


def _burden_terms(
    st: "OptimizeSettings", drugs, *, fusion: bool, horizon_h: float = 72.0
) -> tuple[dict[str, float], dict[str, float]]:
    """The adjunct-burden terms of the objective for ``drugs``: (weight per drug in MME-equivalents, reference
    AUC in mg*h/L) for every drug with a positive weight, a product in ``st.products`` and a finite positive
    reference AUC (:func:`auc_reference`)."""
    keys = {}
    for d, w in st.burden().items():
        key = next((k for k in st.products if get_product(k).drug == d), None)
        if d in drugs and w > 0 and key:
            keys[d] = key
    refs = _auc_references(tuple(keys.values()), fusion=fusion, horizon_h=horizon_h)
    weights, out = {}, {}
    for d, key in keys.items():
        ref = refs[key]
        if np.isfinite(ref) and ref > 0:
            weights[d], out[d] = st.burden()[d], ref
    return weights, out


def auc_reference(product_key: str, *, fusion: bool = True, horizon_h: float = 72.0, rescue=None) -> float:
    """Plasma AUC (mg*h/L, 0 to the horizon) of the reference adult (typical parameters, no variability) on
    the product's label-maximum schedule of the optimizer's grid: the unit of the adjunct burden."""
    return _auc_references((product_key,), fusion=fusion, horizon_h=horizon_h)[product_key]


def _auc_references(product_keys: Sequence[str], *, fusion: bool, horizon_h: float) -> dict[str, float]:
    """:func:`auc_reference` of several products of distinct drugs, the missing ones in one simulation (the
    drugs' PK are independent and there is no rescue, so each drug's AUC is the one it has alone)."""
    todo = [k for k in dict.fromkeys(product_keys) if (k, bool(fusion), float(horizon_h)) not in _AUC_REF]
    if todo:
        from pkpd.population import SimOptions, simulate_regimen

        row = _reference_row()
        cov = {k: v for k, v in row.items() if k != "ID"}
        items, sims = [], []
        for key in todo:
            space = DecisionSpace.build(cov, None, (key,), rescue=(), horizon_h=horizon_h, fusion=fusion)
            if not space.slots:
                _AUC_REF[(key, bool(fusion), float(horizon_h))] = float("nan")
                continue
            amounts, _ = _repair(space, space.reference, cov, None, fusion, rescue=())
            items += space.regimen(amounts, rescue=()).scheduled
            sims.append(key)
        drugs = [get_product(k).drug for k in sims]
        if len(set(drugs)) != len(drugs):  # pragma: no cover - callers pass one product per drug
            raise RegimenError(f"auc references: one product per drug, got {sims}")
        if sims:
            reg = Regimen(name="auc_reference", scheduled=tuple(items), prn=(), horizon_h=horizon_h)
            with fast_compile(True):  # constants of the library: one mode whatever the caller's
                res = simulate_regimen(reg, pd.DataFrame([row]), options=SimOptions(iiv=False, record_doses=False))
            for key, drug in zip(sims, drugs):
                _AUC_REF[(key, bool(fusion), float(horizon_h))] = float(res.patients[f"AUC_{drug}"].iloc[0])
    return {k: _AUC_REF[(k, bool(fusion), float(horizon_h))] for k in product_keys}


def _policy_allowed(policy, cov, fusion: bool, base_keys: set) -> bool:
    found = check_regimen(Regimen(name="policy", prn=policy.rules), cov, None, fusion=fusion)
    return {(f.drug, f.rule, f.severity) for f in found} <= base_keys


def _policy_tables(policies, superset: Regimen, row: pd.DataFrame, opts) -> list[dict]:
    """Each policy's rescue tables (1, I, R) on the superset's rescue structure."""
    from pkpd.population import RegimenPlan

    ref = RegimenPlan.build(superset, row, opts)
    out = []
    for pol in policies:
        plan = RegimenPlan.build(dataclasses.replace(superset, prn=pol.rules), row, opts)
        if [(it["kind"], it["drug"], it["route"], len(it["thr"])) for it in plan.items] != [
            (it["kind"], it["drug"], it["route"], len(it["thr"])) for it in ref.items
        ]:
            raise RegimenError(f"rescue policy {pol.label!r} does not have the structure of {policies[0].label!r}")
        tab = plan.rescue_tables(1)
        if np.any(tab["prn_int"] > ref.rescue_shape()[3] * float(opts.dt_h) + 1e-9):
            raise RegimenError(f"rescue policy {pol.label!r}: an interval is longer than the first policy's")
        out.append(tab)
    return out


def default_row_ids(ids: np.ndarray | None, n_patients: int, draws: int) -> np.ndarray:
    """Simulation IDs of each patient's scenario draws: ``(ID - 1) * draws + 1 ... ID * draws``.

    Patient ``ID`` k's draws are the same whichever patients share the call, so a trial's per-patient
    results do not depend on its chunk size. Without distinct positive integer IDs (< 2**32 / draws, the
    range of the random-key folding) the draws are numbered ``1 ... P * draws`` in row order.

    Returns
    -------
    ndarray
        (n_patients, draws) int64.
    """
    S = int(draws)
    try:
        v = np.asarray(ids, float) if ids is not None and len(ids) == n_patients else None
    except (TypeError, ValueError):  # e.g. string IDs
        v = None
    if v is not None:
        if (
            np.isfinite(v).all()
            and (v == np.round(v)).all()
            and (v >= 1).all()
            and len(np.unique(v)) == len(v)
            and v.max() * S < 2.0**32
        ):
            return (v.astype(np.int64)[:, None] - 1) * S + np.arange(1, S + 1, dtype=np.int64)[None, :]
    return np.arange(1, n_patients * S + 1, dtype=np.int64).reshape(n_patients, S)


def optimize_population(
    population: pd.DataFrame,
    settings: OptimizeSettings | None = None,
    *,
    fusion: bool = True,
    progress: Callable[[str], None] | None = None,
    row_ids: np.ndarray | None = None,
    draw_rows: pd.DataFrame | None = None,
    trajectories: bool = False,
) -> PopulationProposal:
    """Optimize every patient of a population at once (see the module docstring).

    All patients share one superset structure (every slot any patient may use); a patient's own caps
    enter as per-patient bounds and cap vectors, so one compiled program serves the whole population and
    the gradient of the summed loss is each patient's own gradient. Memory grows with patients x draws;
    call it on chunks of patients for large trials (:func:`run_trial` does).

    Parameters
    ----------
    population
        One row per patient (``ID`` and covariates as :func:`pkpd.patients.spine72_population`).
    settings
        :class:`OptimizeSettings` (``draws`` per patient).
    fusion
        Apply the spinal-fusion ketorolac caps.
    progress
        ``progress(text)`` before each stage.
    row_ids
        Optional (P, draws) simulation IDs of each patient's draws (they seed the variability and demand
        draws); default :func:`default_row_ids`: from the patient's own ``ID``, so a patient's scenarios
        do not depend on which other patients share the call (a trial's chunking).
    draw_rows
        Optional (P x draws) rows of per-draw parameter overrides (columns ``<drug>.<PARAM>``, e.g. posterior
        draws from :func:`regimens.posterior.posterior_draws`), patient p's draws in rows p*S ... p*S + S - 1.
    trajectories
        Keep the NRS / opioid-effect / bupivacaine trajectories and dose records of the exact simulations,
        and the proposal's plasma concentrations (for plots of one patient); off by default (large batches
        keep only the outcome tables).

    Returns
    -------
    PopulationProposal

    Raises
    ------
    InfeasibleError
        A patient for whom no product is allowed (the message names the patient and why).
    """
    st = settings or OptimizeSettings()
    with fast_compile(st.compile_fast):
        return _optimize_population(
            population,
            st,
            fusion=fusion,
            progress=progress,
            row_ids=row_ids,
            draw_rows=draw_rows,
            trajectories=trajectories,
        )


def _optimize_population(
    population: pd.DataFrame,
    settings: OptimizeSettings | None = None,
    *,
    fusion: bool = True,
    progress: Callable[[str], None] | None = None,
    row_ids: np.ndarray | None = None,
    draw_rows: pd.DataFrame | None = None,
    trajectories: bool = False,
) -> PopulationProposal:
    import time

    from pkpd import batch
    from pkpd.population import SimOptions, relaxed_program, simulate_regimen

    from .io import get_regimen

    st = settings or OptimizeSettings()
    say = progress or (lambda text: None)
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    pop = population.reset_index(drop=True)
    P, S = len(pop), int(st.draws)
    if S < 1:
        raise RegimenError("draws must be >= 1")
    b = max(1, min(int(st.batch_draws), S))
    S_sc = max(1, min(int(st.score_draws), S))
    policies = st.policies()
    base_rescue = policies[0].rules
    covs = [{k: v for k, v in r.items() if k != "ID"} for r in pop.to_dict(orient="records")]
    # each patient's rescue policies: the as-needed doses at the patient's renal/hepatic fractions of the labels'
    # starting doses (regimens.limits.rescue_fraction); the policies as written where none applies
    pat_pols = [[for_patient(pol, c) for pol in policies] for c in covs]
    base_of = [pp[0].rules for pp in pat_pols]
    spaces = [DecisionSpace.build(c, None, st.products, rescue=base_of[p], fusion=fusion) for p, c in enumerate(covs)]
    for p, sp in enumerate(spaces):
        if not sp.slots:
            raise InfeasibleError(
                f"patient {pop['ID'].iloc[p]}: no product is allowed: "
                + "; ".join(f"{k}: {v}" for k, v in sp.excluded.items())
            )
    # the superset: every (product, time) any patient may use, in product order then time
    keys = sorted(
        {(sl.product.key, round(sl.time_h, 6)) for sp in spaces for sl in sp.slots},
        key=lambda kt: (list(st.products).index(kt[0]), kt[1]),
    )
    col = {kt: j for j, kt in enumerate(keys)}
    prods = [get_product(k) for k, _ in keys]
    items = tuple(
        Scheduled(
            drug=pr.drug,
            route=pr.route,
            start_h=t,
            **({"dose_mg_per_kg": pr.strengths_mg[-1]} if pr.per_kg else {"dose_mg": pr.strengths_mg[-1]}),
        )
        for pr, (_, t) in zip(prods, keys)
    )
    superset = Regimen(
        name="superset",
        scheduled=items,
        prn=base_rescue,
        horizon_h=spaces[0].horizon_h,
        description="every slot any patient may use, at the largest strength",
    )
    n = len(keys)
    REF = np.array([[pr.strengths_mg[-1] * (float(c["WT"]) if pr.per_kg else 1.0) for pr in prods] for c in covs])
    cols = [_columns(sp, col) for sp in spaces]
    U = np.zeros((P, n))
    for p, sp in enumerate(spaces):
        U[p, cols[p]] = sp.reference / REF[p, cols[p]]
    # daily / total caps on the superset slots, per patient
    W_rows, cap_rows = [], []
    drugs = sorted({pr.drug for pr in prods})
    for d in drugs:
        idx = [j for j, pr in enumerate(prods) if pr.drug == d]
        tt = np.array([keys[j][1] for j in idx])
        daily = np.array(
            [min([sp.caps[k].max_daily_mg for k in sp.caps if get_product(k).drug == d] or [np.inf]) for sp in spaces]
        )
        total = np.array(
            [min([sp.caps[k].max_total_mg for k in sp.caps if get_product(k).drug == d] or [np.inf]) for sp in spaces]
        )
        if np.isfinite(daily).any():
            for t0 in np.unique(tt):
                w = np.zeros(n)
                w[[j for j, tj in zip(idx, tt) if t0 <= tj < t0 + 24.0 - 1e-9]] = 1.0
                W_rows.append(w)
                cap_rows.append(daily)
        if np.isfinite(total).any():
            w = np.zeros(n)
            w[idx] = 1.0
            W_rows.append(w)
            cap_rows.append(total)
    W = np.array(W_rows) if W_rows else np.zeros((1, n))
    CAPS = np.stack(cap_rows, axis=1) if cap_rows else np.full((P, 1), np.inf)
    CAPS = np.where(np.isfinite(CAPS), CAPS, 1e12)
    rows = pd.DataFrame([covs[p] for p in range(P) for _ in range(S)])
    if row_ids is None:
        row_ids = default_row_ids(pop["ID"].to_numpy() if "ID" in pop else None, P, S)
    row_ids = np.asarray(row_ids)
    if row_ids.shape != (P, S) or len(np.unique(row_ids)) != P * S:
        raise RegimenError(f"row_ids must be {P} x {S} distinct IDs, got shape {row_ids.shape}")
    rows.insert(0, "ID", row_ids.reshape(-1))
    if draw_rows is not None:
        if len(draw_rows) != P * S:
            raise RegimenError(f"draw_rows must have {P} x {S} = {P * S} rows, got {len(draw_rows)}")
        for c_ in draw_rows.columns:
            rows[c_] = draw_rows[c_].to_numpy()
    if st.outcome_uncertainty:  # draw s of every patient: posterior draw s of the outcome model
        from pkpd.outcome import outcome_posterior

        om = outcome_posterior().draw_columns(S, seed=int(st.seed))
        for c_ in om.columns:
            if c_ not in rows:
                rows[c_] = np.tile(om[c_].to_numpy(), P)
    row_patient = np.repeat(np.arange(P), S)
    opts = SimOptions(dt_h=st.dt_h)
    pol_tabs = _policy_tables(policies, superset, rows.iloc[:1], opts)
    # rescue tables of every distinct (policy, patient fractions): tab_list[tab_idx[p, i]] is patient p's policy i
    tab_list, tab_idx, seen = list(pol_tabs), np.zeros((P, len(policies)), int), {}
    for i, pol in enumerate(policies):
        seen.setdefault(pol.rules, i)
    new = [pol for pp in pat_pols for pol in pp if pol.rules not in seen]
    new = list({pol.rules: pol for pol in new}.values())
    for pol, tab in zip(new, _policy_tables(new, superset, rows.iloc[:1], opts) if new else []):
        seen[pol.rules] = len(tab_list)
        tab_list.append(tab)
    for p in range(P):
        tab_idx[p] = [seen[pol.rules] for pol in pat_pols[p]]
    base_keys_all = [
        {(f.drug, f.rule, f.severity) for f in check_regimen(Regimen(name="p", prn=base_of[p]), c, None, fusion=fusion)}
        for p, c in enumerate(covs)
    ]
    pol_ok = np.array(
        [
            [_policy_allowed(pol, covs[p], fusion, base_keys_all[p]) or i == 0 for i, pol in enumerate(pat_pols[p])]
            for p in range(P)
        ]
    )
    times["setup_s"] = time.perf_counter() - t_start

    say("comparators C0 and C1 (exact)")
    t0 = time.perf_counter()
    ex_opts = SimOptions(record_trajectories=bool(trajectories), record_doses=bool(trajectories))
    # the proposal's plasma concentrations too with trajectories (for one patient's per-drug bands)
    prop_opts = dataclasses.replace(ex_opts, record_concentrations=bool(trajectories))
    # the comparators adapted to each patient's limits where the regimen as written breaks one (regimens.adapt:
    # per-item dose multipliers, so every patient's comparator runs in one batched call of the regimen)
    adapted = {
        name: [adapt_to_patient(get_regimen(name), covs[p], fusion=fusion) for p in range(P)] for name in ("C0", "C1")
    }
    comp_w = {name: np.repeat(np.stack([a.weights for a in ads]), S, axis=0) for name, ads in adapted.items()}
    # the adapted as-needed / PCA doses (renal/hepatic fractions) as per-patient rescue tables; None (the
    # regimen's own rules) when no patient's rescue changed
    comp_t = {name: rescue_tables(get_regimen(name), ads, rows.iloc[:1], ex_opts) for name, ads in adapted.items()}
    comp_t = {name: None if t is None else {k: v[row_patient] for k, v in t.items()} for name, t in comp_t.items()}
    comps = {
        name: simulate_regimen(
            get_regimen(name),
            rows,
            seed=st.seed,
            options=ex_opts,
            dose_weights=None if np.all(comp_w[name] == 1.0) else comp_w[name],
            rescue_tables=comp_t[name],
        )
        for name in ("C0", "C1")
    }
    c1p = comps["C1"].patients
    c1_mme = c1p["MME_0_72"].to_numpy().reshape(P, S)
    tit_target = c1p["TIT3"].to_numpy().reshape(P, S).mean(1) - st.tit_slack
    if st.min_time_in_target is not None:
        tit_target = np.maximum(tit_target, float(st.min_time_in_target))
    c1_pain = {
        k: c1p[c].to_numpy().reshape(P, S).mean(1)
        for k, c in (("tit3", "TIT3"), ("ge4", "TIME_NRS_GE4"), ("ge7", "TIME_NRS_GE7"))
    }
    ge4_target = c1_pain["ge4"] + st.ge4_slack
    ge7_target = c1_pain["ge7"] + st.ge7_slack
    times["comparators_s"] = time.perf_counter() - t0

    say("relaxed programs")
    t0 = time.perf_counter()
    # the comparator's relaxed OIRD hazard (the scale of the penalty), from each patient's first score_draws draws
    sub_rows = (np.arange(P)[:, None] * S + np.arange(S_sc)[None, :]).reshape(-1)
    c1_out, c1_data, c1_ns, c1_nr = relaxed_program(get_regimen("C1"), rows.iloc[sub_rows], seed=st.seed, options=opts)
    if comp_t["C1"] is not None:  # C1's adapted as-needed doses
        c1_data = dict(
            c1_data, base={**c1_data["base"], **{k: jnp.asarray(v[sub_rows]) for k, v in comp_t["C1"].items()}}
        )
    h_c1 = np.asarray(
        _jit(c1_out)(jnp.asarray(comp_w["C1"][sub_rows]), jnp.ones(max(c1_nr, 1)), c1_data)["OIRD_HAZARD"]
    )
    oird_ref = np.maximum(h_c1.reshape(P, S_sc).mean(1), 1e-300)
    outcomes, data, n_sched, n_resc = relaxed_program(superset, rows, seed=st.seed, options=opts)
    burden, auc_ref = _burden_terms(st, drugs, fusion=fusion, horizon_h=superset.horizon_h)
    limits = {d: lim.mg_per_l for d, lim in EXPOSURE_LIMITS.items() if d in drugs}
    static = (float(st.cvar_alpha), tuple(sorted(burden)), tuple(sorted(limits)))
    devs = batch.local_devices()
    nd = len(devs)
    score_fn, batch_loss, project = _programs(outcomes, static, devs)
    c_scal = {
        "pain_weight": st.pain_weight,
        "sedation_weight": st.sedation_weight,
        "cvar_weight": st.cvar_weight,
        "tit_penalty": st.tit_penalty,
        "oird_penalty": st.oird_penalty,
        "chance_penalty": st.chance_penalty,
        "risk": st.risk,
    }
    c_base = {k: jnp.asarray(float(v)) for k, v in c_scal.items()}
    c_base.update(
        {
            "rescue": jnp.ones(max(n_resc, 1)),
            "burden": {d: jnp.asarray(float(w)) for d, w in burden.items()},
            "auc_ref": {d: jnp.asarray(float(v)) for d, v in auc_ref.items()},
            "limit": {d: jnp.asarray(float(v)) for d, v in limits.items()},
            "W": jnp.asarray(W),
        }
    )
    # the relaxed problem's arrays: row data (patients, draws, ...) split over the devices by patient (or
    # candidate group), the rest replicated (pkpd.batch.shard_rows_map)
    rowdata = jax.tree_util.tree_map(
        lambda v: np.asarray(v).reshape((P, S) + v.shape[1:]), {"base": data["base"], "s_amt": data["s_amt"]}
    )
    shared = batch.place(
        {"data": {k: v for k, v in data.items() if k not in ("base", "s_amt")}, "c": c_base}, devs, replicated=True
    )

    def with_policies(rd, pol):
        """Row data with each group's rescue-policy tables (``pol``: policy index per group; the groups are
        the patients' in order, ``len(pol) // P`` per patient), at the group's patient's dose fractions."""
        base = dict(rd["base"])
        pat = np.repeat(np.arange(P), len(pol) // P)
        for k in pol_tabs[0]:
            t = np.stack([tab_list[tab_idx[q, int(i)]][k][0] for q, i in zip(pat, pol)])
            base[k] = np.broadcast_to(t[:, None], (len(pol), rd["s_amt"].shape[1]) + t.shape[1:])
        return {"base": base, "s_amt": rd["s_amt"]}

    def groups(rd, reps: int, n_draws: int):
        """Each patient's first ``n_draws`` draws, ``reps`` times per patient: (P * reps, n_draws, ...)."""
        return jax.tree_util.tree_map(
            lambda v: np.broadcast_to(v[:, None, :n_draws], (P, reps, n_draws) + v.shape[2:]).reshape(
                (P * reps, n_draws) + v.shape[2:]
            ),
            rd,
        )

    def on_devices(rd):
        """Group row data padded to a multiple of the device count and split over the devices."""
        return batch.place(batch.pad_rows(rd, nd)[0], devs)

    def score(Xg, rd, reps: int, name: str):
        """Losses (P, reps) of P x reps groups of dose fractions Xg (P * reps, draws, n) on the placed group row
        data ``rd`` (:func:`on_devices`)."""
        cg = {
            "tit_target": np.repeat(tit_target, reps),
            "oird_ref": np.repeat(oird_ref, reps),
            "ge4_target": np.repeat(ge4_target, reps),
            "ge7_target": np.repeat(ge7_target, reps),
        }
        (Xp, cp_), G = batch.pad_rows((np.asarray(Xg, float), cg), nd)
        args = batch.place((Xp, rd, cp_), devs)
        out = score_fn(*args, shared)
        batch.note_call(name, G, Xp.shape[0], nd, batch.placement(args[0]), batch.placement(out))
        return np.asarray(out)[:G].reshape(P, reps)

    times["relaxed_setup_s"] = time.perf_counter() - t0

    # ---- gradient-free stage: rescue policy and product inclusion (cross-entropy method)
    t0 = time.perf_counter()
    prod_keys = list(dict.fromkeys(pr.key for pr in prods))
    col_prod = np.array([prod_keys.index(pr.key) for pr in prods])
    bit_ok = np.array([[any(sl.product.key == k for sl in sp.slots) for k in prod_keys] for sp in spaces])
    S_cem = max(1, min(int(st.cem_draws), S))
    chosen_pol = np.zeros(P, int)
    incl = bit_ok.copy()
    if st.cem_generations > 0 and (len(policies) > 1 or bit_ok.sum() > P):
        say("cross-entropy search: rescue policy and products")
        K = int(st.cem_candidates)
        rd_cem = groups(rowdata, K, S_cem)

        def cem_score(cat, bits):
            Xc = U[:, None, :] * bits[:, :, col_prod]  # (P, K, n): included products at their maximum ...
            Xc = _cap_scale(Xc, REF[:, None, :], W, CAPS[:, None, :])  # ... within the daily / total caps
            Xg = np.broadcast_to(Xc.reshape(P * K, 1, n), (P * K, S_cem, n))
            return score(Xg, on_devices(with_policies(rd_cem, cat.reshape(-1))), K, "optimizer: cross-entropy scores")

        chosen_pol, incl, _, _ = cross_entropy_search(
            cem_score,
            pol_ok,
            bit_ok,
            candidates=K,
            generations=int(st.cem_generations),
            seed=int(st.seed),
            group_seeds=row_ids[:, 0],
        )
    times["cem_s"] = time.perf_counter() - t0

    # ---- continuous stage: dose fractions and eta by minibatch projected Adam, patients split over devices
    say("continuous stage")
    t0 = time.perf_counter()
    U_eff = U * incl[:, col_prod]
    eta_scale = np.maximum(np.quantile(c1_mme, st.cvar_alpha, axis=1), 1.0)
    rd_run = with_policies(rowdata, chosen_pol)
    cp = {
        "tit_target": tit_target,
        "ge4_target": ge4_target,
        "ge7_target": ge7_target,
        "oird_ref": oird_ref,
        "eta_scale": eta_scale,
        "ref": REF,
        "U": U_eff,
        "caps": CAPS,
    }
    x0 = np.concatenate([0.8 * U_eff, np.ones((P, 1))], axis=1)
    (x0p, rd_p, cp_p, mask), _ = batch.pad_rows(
        (x0, rd_run, jax.tree_util.tree_map(lambda v: np.asarray(v, float), cp), np.ones(P)), nd
    )
    x0p, rd_p, cp_p, mask = batch.place((x0p, rd_p, cp_p, mask), devs)

    def minibatch(i):  # patient p's draws (i*b ... i*b + b - 1) mod S: every draw is used in turn
        return (jnp.asarray((i * b + np.arange(b)) % S),)

    res = projected_descent(
        batch_loss,
        x0p,
        args=(rd_p, cp_p, shared, mask),
        project=project,
        steps=st.steps,
        learning_rate=st.learning_rate,
        step_args=minibatch,
    )
    if res.x_sharding is not None:
        batch.note_call(
            "optimizer: gradient steps",
            P,
            x0p.shape[0],
            nd,
            batch.placement(x0p),
            batch.sharding_placement(res.x_sharding, res.x.shape),
        )
    X = np.asarray(res.x)[:P, :n]
    times["continuous_s"] = time.perf_counter() - t0

    say("rounding to strengths and label checks")
    t0 = time.perf_counter()
    rescue_of = [pat_pols[p][int(chosen_pol[p])].rules for p in range(P)]

    def own(p, Xp):  # superset fractions -> the patient's own slot amounts (mg)
        return Xp[cols[p]] * REF[p, cols[p]]

    def to_superset(p, amounts):
        return _to_superset(cols[p], amounts, REF[p], n)

    def repaired(p, a):  # neighbours often coincide: repair each distinct candidate once
        key = a.tobytes()
        if key not in memo[p]:
            memo[p][key] = _repair(spaces[p], a, covs[p], None, fusion, rescue_of[p])[0]
        return memo[p][key]

    memo: list[dict] = [{} for _ in range(P)]
    cand = [[repaired(p, a) for a in _round(spaces[p], own(p, X[p]))] for p in range(P)]
    K = max(len(cp) for cp in cand)
    # Kg candidates per patient and call; as many as the cross-entropy stage scores when both stages use
    # the same number of draws, so that they share one compiled scoring program (a patient's last candidate
    # fills the rest: argmin keeps the first of equal values)
    Kg = max(1, int(st.cem_candidates)) if S_sc == S_cem else 1
    rd_sc = on_devices(groups(rd_run, Kg, S_sc))  # placed once for every call below
    n_calls = -(-K // Kg)
    vals = np.full((P, n_calls * Kg), np.inf)
    for j in range(n_calls):
        Xk = np.array(
            [[to_superset(p, cand[p][min(k, len(cand[p]) - 1)]) for k in range(j * Kg, (j + 1) * Kg)] for p in range(P)]
        ).reshape(P * Kg, 1, n)
        vals[:, j * Kg : (j + 1) * Kg] = score(
            np.broadcast_to(Xk, (P * Kg, S_sc, n)), rd_sc, Kg, "optimizer: rounding scores"
        )
    choice = np.argmin(vals[:, :K], axis=1)
    amounts = [cand[p][min(int(choice[p]), len(cand[p]) - 1)].copy() for p in range(P)]
    times["rounding_s"] = time.perf_counter() - t0

    say("exact evaluation and safety checks")
    t0 = time.perf_counter()
    risk = st.risk
    oird_c1 = c1p["P_OIRD"].to_numpy().reshape(P, S).mean(1)

    def exact():
        Wt = np.array([to_superset(p, amounts[p]) for p in range(P)])
        tabs = {k: np.stack([tab_list[tab_idx[p, int(chosen_pol[p])]][k][0] for p in row_patient]) for k in pol_tabs[0]}
        prop = simulate_regimen(
            superset, rows, seed=st.seed, dose_weights=Wt[row_patient], rescue_tables=tabs, options=prop_opts
        )
        pp = prop.patients
        tox = {"bupivacaine": exceedance_probability(pp["LAST_INDEX"].to_numpy().reshape(P, S), 1.0)[0]}
        for d, lim in limits.items():
            tox[d] = exceedance_probability(pp[f"CMAX_{d}"].to_numpy().reshape(P, S), lim)[0]
        oird = pp["P_OIRD"].to_numpy().reshape(P, S).mean(1)
        why: list[list[tuple[str, str]]] = [[] for _ in range(P)]
        for p in range(P):
            for d, pr in tox.items():
                if pr[p] > risk:
                    what = (
                        "LAST (bupivacaine toxicity threshold)"
                        if d == "bupivacaine"
                        else f"{d} above {limits[d]:g} mg/L ({EXPOSURE_LIMITS[d].source})"
                    )
                    why[p].append((d, f"{what}: estimated probability {pr[p]:.1e} above the allowed {risk:.0e}"))
            if oird[p] > oird_c1[p] + st.oird_tolerance:
                why[p].append(("oird", f"OIRD: mean risk {oird[p]:.2e} above C1's {oird_c1[p]:.2e}"))
        pain = {
            k: pp[c].to_numpy().reshape(P, S).mean(1)
            for k, c in (("tit3", "TIT3"), ("ge4", "TIME_NRS_GE4"), ("ge7", "TIME_NRS_GE7"))
        }
        return Wt, tabs, prop, pp, tox, why, pain

    def pain_misses(p, pain) -> list[tuple[str, str]]:
        """The pain constraints patient p's schedule misses in the exact evaluation: (constraint, message with
        its figures). A rescue policy that withholds rescue below a higher threshold than the treat cut-off
        gets no non-inferiority margin: its time with NRS >= 4 and >= 7 may not exceed C1's at all. Removing the
        margin only ever tightens a limit: a negative slack (a limit below C1's) applies to every policy."""
        miss = []
        strict = withholds_rescue(policies[int(chosen_pol[p])])
        if pain["tit3"][p] < tit_target[p] - 1e-9:
            miss.append(("tit3", f"time with NRS <= 3 {pain['tit3'][p]:.1%} below the target {tit_target[p]:.1%}"))
        for k, slack, fmt, slack_fmt in (("ge4", st.ge4_slack, ".1%", ".0%"), ("ge7", st.ge7_slack, ".2%", ".1%")):
            margin = min(slack, 0.0) if strict else slack
            lim = c1_pain[k][p] + margin
            whose = (
                "C1's, no margin with a rescue threshold above NRS 4"
                if strict and margin == 0.0
                else f"C1 + {margin:{slack_fmt}}"
            )
            if pain[k][p] > lim + 1e-9:
                miss.append((k, f"time with NRS >= {k[2]} {pain[k][p]:{fmt}} above the limit {lim:{fmt}} ({whose})"))
        return miss

    def repair_step(k: int, p: int, reason: str) -> str | None:
        """Repair step ``k`` of patient ``p`` (None when it changes nothing): 1 C1's rescue policy with the
        searched doses; 2 the adjuncts the schedule uses at their maxima (within the patient's limits);
        3 the fallback, C1's schedule within the patient's limits with C1's rescue policy (:func:`c1_amounts`)."""
        if k == 1:
            if chosen_pol[p] == 0:
                return None
            chosen_pol[p], rescue_of[p] = 0, base_of[p]
            return f"rescue policy set back to C1's ({reason})"
        if k == 2:
            used = {sl.product.key for sl, a in zip(spaces[p].slots, amounts[p]) if a > 0}
            top = np.array([sl.reference_mg if sl.product.key in used else 0.0 for sl in spaces[p].slots])
            best = _repair(spaces[p], top, covs[p], None, fusion, base_of[p])[0]
            if not used or np.array_equal(best, amounts[p]):
                return None
            amounts[p], chosen_pol[p], rescue_of[p] = best, 0, base_of[p]
            return f"the adjuncts it uses raised to their maxima within the patient's limits ({reason})"
        best = _repair(spaces[p], c1_amounts(spaces[p], covs[p]), covs[p], None, fusion, base_of[p])[0]
        if np.array_equal(best, amounts[p]) and chosen_pol[p] == 0:
            return None
        amounts[p], chosen_pol[p], rescue_of[p] = best, 0, base_of[p]
        fallback[p] = True
        return f"FALLBACK: C1's schedule (standard of care) within the patient's limits, with C1's rescue policy ({reason})"

    Wt, tabs, prop, pp, tox, why, pain = exact()
    # the pain constraints (time in target, NRS >= 4, NRS >= 7) and C1's OIRD risk are constraints of the exact
    # evaluation too: a schedule that misses one is repaired step by step, re-checked after each step
    searched_tit = np.full(P, np.nan)
    repairs: list[list[str]] = [[] for _ in range(P)]
    fallback = np.zeros(P, bool)
    stage = np.zeros(P, int)  # repair steps taken (1 C1's rescue, 2 used adjuncts at maximum, 3 fallback)
    for _attempt in range(6):
        changed = False
        for p in range(P):
            miss = [m for _, m in pain_misses(p, pain)]
            oird_miss = [m for d, m in why[p] if d == "oird"]
            if miss or oird_miss:
                if np.isnan(searched_tit[p]):
                    searched_tit[p] = pain["tit3"][p]
                reason = "; ".join(miss + oird_miss)
                while stage[p] < 3:
                    stage[p] += 1
                    step = repair_step(int(stage[p]), p, reason)
                    if step is not None:
                        repairs[p].append(step)
                        changed = True
                        break
            for d, _msg in why[p]:
                if d != "oird":  # one strength down on the drug that crosses its limit, then re-evaluate
                    for dd in ("bupivacaine_liposomal", "bupivacaine") if d == "bupivacaine" else (d,):
                        changed |= _lower_drug(spaces[p], amounts[p], dd)
        if not changed:
            break
        Wt, tabs, prop, pp, tox, why, pain = exact()
    # pain constraints still missed after every repair step are reported (PAIN_OK, PAIN_WHY), never hidden
    pain_why = [pain_misses(p, pain) for p in range(P)]
    # The constraints relative to C1 (OIRD, pain) mean "no worse than the standard of care this patient may
    # receive". Where C1 as given is not allowed for the patient (a dose above a label limit, or a drug that
    # crosses its toxicity chance constraint, e.g. liposomal bupivacaine 266 mg and the LAST risk), the
    # fallback is C1 within those limits: it is that reference itself, so its misses against C1 as given are
    # said (FALLBACK_NOTE), not counted as failures.
    fallback_note = [""] * P
    for p in range(P):
        if not fallback[p]:
            continue
        given = c1_amounts(spaces[p], covs[p])
        lowered = sorted({sl.product.drug for sl, a, g in zip(spaces[p].slots, amounts[p], given) if a < g - 1e-9})
        # only what C1 as given meets itself is waived (a constraint C1 misses too, e.g. an unreachable
        # min_time_in_target, stays a miss)
        c1_miss = {k for k, _ in pain_misses(p, c1_pain)}
        waive_pain = [(k, m) for k, m in pain_why[p] if k not in c1_miss]
        rel = [m for d, m in why[p] if d == "oird"] + [m for _, m in waive_pain]
        same = bool(np.allclose(amounts[p], given)) and not lowered
        if (lowered or same) and rel:
            if same:  # the fallback is the reference schedule itself (C1, adapted to the patient's limits)
                fallback_note[p] = (
                    "this fallback is C1's schedule itself (adapted to the patient's limits where "
                    "C1 as written is not allowed), the reference of the constraints relative to C1; "
                    "its differences from the C1 row come from simulating it as a schedule of the "
                    "decision space (the rescue-request draws are not paired exactly): " + "; ".join(rel)
                )
            else:
                fallback_note[p] = (
                    f"C1 as given is not allowed for this patient ({', '.join(lowered)} lowered to "
                    "the patient's label limits and toxicity chance constraints); this fallback is C1 "
                    "within those limits and is the reference of the constraints relative to C1. "
                    "Against C1 as given: " + "; ".join(rel)
                )
            why[p] = [(d, m) for d, m in why[p] if d != "oird"]
            pain_why[p] = [m for m in pain_why[p] if m not in waive_pain]
    why = [[m for _, m in w] for w in why]
    pain_why = [[m for _, m in w] for w in pain_why]
    times["exact_s"] = time.perf_counter() - t0
    out = pop.copy()
    out["POLICY"] = [pat_pols[p][int(i)].describe() for p, i in enumerate(chosen_pol)]
    for name, r in (("proposal", pp), ("C0", comps["C0"].patients), ("C1", c1p)):
        mme = r["MME_0_72"].to_numpy().reshape(P, S)
        for k in ("MME_0_72", "TIT3", "TIME_NRS_GE4", "TIME_NRS_GE7", "PAIN_AUC", "P_OIRD", "P_PONV"):
            out[f"{k}_{name}"] = r[k].to_numpy().reshape(P, S).mean(1)
        out[f"MME_P90_{name}"] = np.quantile(mme, 0.9, axis=1)
        kk = max(1, int(math.ceil(0.1 * S - 1e-9)))
        out[f"MME_CVAR90_{name}"] = np.sort(mme, axis=1)[:, S - kk :].mean(1)
        out[f"LAST_INDEX_{name}"] = r["LAST_INDEX"].to_numpy().reshape(P, S).max(1)
    for d, pr in tox.items():
        out[f"P_TOX_{d}_proposal"] = pr
    out["SAFE"] = [not w for w in why]
    out["WHY"] = ["; ".join(w) for w in why]
    out["TIT_TARGET"] = tit_target
    out["GE4_TARGET"] = ge4_target
    out["GE7_TARGET"] = ge7_target
    out["TIT3_SEARCHED"] = searched_tit  # the search's schedule, where it missed a constraint and was repaired
    out["REPAIR"] = ["; ".join(r) for r in repairs]
    out["FALLBACK"] = fallback
    out["FALLBACK_NOTE"] = fallback_note
    out["PAIN_OK"] = [not w for w in pain_why]
    for name, ads in adapted.items():  # what the patient's comparator changed from the regimen as written
        out[f"{name}_ADAPTED"] = [" | ".join(a.changes) for a in ads]
    out["PAIN_WHY"] = ["; ".join(w) for w in pain_why]
    times["total_s"] = time.perf_counter() - t_start
    return PopulationProposal(
        spaces,
        amounts,
        out,
        {"proposal": prop, **comps},
        superset,
        Wt[row_patient],
        times,
        rows,
        col,
        REF,
        [pat_pols[p][int(i)] for p, i in enumerate(chosen_pol)],
        tabs,
        tab_list,
        [int(tab_idx[p, int(i)]) for p, i in enumerate(chosen_pol)],
    )


def optimize_patient(
    covariates: Mapping[str, Any],
    phenotypes: Mapping[str, Any] | None = None,
    *,
    settings: OptimizeSettings | None = None,
    fusion: bool = True,
    progress: Callable[[str], None] | None = None,
    posterior: Any = None,
) -> Proposal:
    """Propose an opioid-sparing multimodal schedule for one patient (see the module docstring).

    Parameters
    ----------
    covariates
        The patient's covariates (``AGE`` y, ``WT`` kg, ``CRCL`` mL/min, ``HEPATIC``, genotype activity
        scores ``CYP2D6_AS``/``CYP2C9_AS``, ``OPIOID_TOL``, ``OSA``...) as in a population frame
        (:meth:`pkpd.patients.Patient.to_row`).
    phenotypes
        Gene -> phenotype for the CPIC rules; only ``None`` (phenotypes from the activity-score
        covariates) is supported by the batched optimizer; give the activity scores as covariates.
    settings
        :class:`OptimizeSettings`.
    fusion
        Apply the spinal-fusion ketorolac caps.
    progress
        ``progress(text)`` before each stage.
    posterior
        Optional: the patient's forecast posterior (a ``pkpd forecast`` output directory, or
        ``(Forecast, model)``; :func:`regimens.posterior.posterior_draws`): its draws of the linked
        quantities replace the population-prior draws in every scenario (proposal and comparators alike).

    Returns
    -------
    Proposal

    Raises
    ------
    InfeasibleError
        No allowed product remains, or every candidate failed an exact safety check; the message says
        which and why.
    """
    if phenotypes is not None:
        raise RegimenError(
            "give genotypes as activity-score covariates (CYP2D6_AS, CYP2C9_AS); explicit "
            "phenotypes are not supported by the optimizer"
        )
    st = settings or OptimizeSettings()
    cov = {k: v for k, v in dict(covariates).items() if not isinstance(v, str)}
    draw_rows, post_notes = None, []
    if posterior is not None:
        from .posterior import posterior_draws

        draw_rows, post_notes = posterior_draws(posterior, int(st.draws))
    res = optimize_population(
        pd.DataFrame([{"ID": 1, **cov}]), st, fusion=fusion, progress=progress, draw_rows=draw_rows, trajectories=True
    )
    row = res.patients.iloc[0]
    unsafe = (
        "every candidate schedule failed a check of the exact evaluation: " + str(row["WHY"]) if not row["SAFE"] else ""
    )
    space, amounts, policy = res.spaces[0], res.amounts[0], res.policies[0]
    regimen = space.regimen(amounts, rescue=policy.rules)
    findings = check_regimen(regimen, cov, None, fusion=fusion)

    outcomes = dict(res.draws)  # with trajectories and the proposal's concentrations (trajectories=True)
    comparison = _compare(
        {k: v.patients for k, v in outcomes.items()}, {d: lim.mg_per_l for d, lim in EXPOSURE_LIMITS.items()}
    )
    # a comparator that breaks this patient's limits was simulated as adapted to them (regimens.adapt): its
    # row is named so, and the note says what changed
    adapted_notes, rename = [], {}
    for name in ("C0", "C1"):
        if str(row[f"{name}_ADAPTED"]):
            rename[name] = f"{name} adapted"
            adapted_notes.append(
                f"{name} as written is not allowed for this patient; '{name} adapted' (compared "
                f"here, and the reference of the constraints relative to {name}) is {name} within "
                "the patient's limits: " + str(row[f"{name}_ADAPTED"])
            )
    sched = pd.DataFrame(
        [
            {"time_h": sl.time_h, "drug": sl.product.drug, "route": sl.product.route, "dose_mg": a}
            for sl, a in zip(space.slots, amounts)
            if a > 0
        ]
    )
    notes = explain(cov, None, st.products, fusion=fusion)
    notes += _choices_explained(space, amounts, policy, st) + post_notes
    for drug, route in sorted({(r.drug, r.route) for r in policy.rules}):  # label advice without a number
        notes += [f"as-needed rescue: {n}" for n in rescue_fraction(drug, route, cov).notes]
    got = float(comparison.loc["proposal", "TIT3"])
    if st.min_time_in_target is not None and got < float(st.min_time_in_target) - 1e-9:
        at_max = [
            f"{k}" for k in st.products if k not in space.excluded and any(sl.product.key == k for sl in space.slots)
        ]
        raise InfeasibleError(
            f"no allowed schedule keeps NRS <= 3 for {st.min_time_in_target:.0%} of 0-72 h for this patient: the best "
            f"found reaches {got:.0%} (C1: {comparison.loc['C1', 'TIT3']:.0%}) with {', '.join(at_max)} within "
            "their label maxima and as-needed rescue; more analgesia would need doses above a label limit or a "
            "product not in the decision space"
            + (" (" + "; ".join(notes) + ")" if notes else "")
            + (f"; and {unsafe}" if unsafe else "")
        )
    if unsafe:
        raise InfeasibleError(unsafe)
    tit_target = float(row["TIT_TARGET"])
    from_c1 = float(comparison.loc["C1", "TIT3"]) - st.tit_slack
    whose = (
        "min_time_in_target"
        if tit_target > from_c1 + 1e-9
        else f"C1 {'-' if st.tit_slack >= 0 else '+'} {abs(st.tit_slack):.0%}"
    )
    for step in filter(None, str(row["REPAIR"]).split("; ")):
        notes.append(f"repair of the searched schedule in the exact evaluation: {step}")
    if bool(row["FALLBACK"]):
        notes.insert(
            0,
            "THIS PROPOSAL IS THE FALLBACK, not an optimized schedule: the searched schedules missed a "
            "constraint of the exact evaluation (see the repair notes), so this is C1's schedule (the standard "
            "of care) within the patient's limits, with C1's rescue policy",
        )
        if str(row.get("FALLBACK_NOTE", "")):
            notes.insert(1, str(row["FALLBACK_NOTE"]))
    if got < tit_target - 1e-9:
        notes.append(
            f"time in target {got:.1%} is below the target {tit_target:.1%} ({whose}) in the exact "
            "evaluation, also after every repair step"
        )
    for m in filter(None, str(row["PAIN_WHY"]).split("; ")):
        if not m.startswith("time with NRS <= 3"):
            notes.append(f"NOT MET after every repair step: {m}")
    notes += adapted_notes
    comparison = comparison.rename(index=rename)
    worse = worse_than(comparison, rename.get("C1", "C1"))
    if worse:
        notes.insert(0, worse)
    return Proposal(
        regimen,
        space,
        sched,
        comparison,
        outcomes,
        findings,
        notes,
        fallback=bool(row["FALLBACK"]),
        worse_than_comparator=bool(worse),
    )


def worse_than(comparison: pd.DataFrame, reference: str, tol: float = 1e-9) -> str:
    """A plain statement when the proposal uses more opioid (mean 72-h MME) *and* keeps pain in target
    (NRS <= 3) for less time than ``reference`` on the same draws, else ``""``."""
    p, r = comparison.loc["proposal"], comparison.loc[reference]
    if p["MME_mean"] > r["MME_mean"] + tol and p["TIT3"] < r["TIT3"] - tol:
        return (
            f"THIS PROPOSAL IS WORSE THAN {reference.upper()} for this patient: mean 72-h MME {p['MME_mean']:.1f} "
            f"vs {r['MME_mean']:.1f} mg and time in target {p['TIT3']:.0%} vs {r['TIT3']:.0%} (same draws); "
            f"prefer {reference}"
        )
    return ""


def _choices_explained(space: DecisionSpace, amounts, policy, st: OptimizeSettings) -> list[str]:
    """What the optimizer chose that is not a limit: unused products, doses below the maximum, the rescue."""
    lines = []
    base = st.policies()[0]
    if policy.label != base.label:
        lines.append(
            f"as-needed rescue: {policy.label} (C1: {base.label}); chosen by the search for this patient's "
            "modelled pain and opioid response"
        )
    for f in getattr(policy, "fractions", ()):  # the renal/hepatic fractions applied to the as-needed doses
        doses = " / ".join(f"{r.dose_mg:g}" for r in policy.rules if (r.drug, r.route) == (f.drug, f.route))
        lines.append(
            f"as-needed rescue for this patient: {f.drug} {f.route.upper()} {doses} mg per dose: {f.describe()}"
        )
    used = {}
    for sl, a in zip(space.slots, amounts):
        used.setdefault(sl.product.key, []).append((a, sl.reference_mg))
    for key, v in used.items():
        total, top = sum(a for a, _ in v), sum(r for _, r in v)
        cap = space.caps.get(key)
        if cap is not None and math.isfinite(cap.max_daily_mg):
            # a daily cap binds before the slots' single-dose maxima do: at most one cap per started 24 h
            top = min(top, cap.max_daily_mg * math.ceil(space.horizon_h / 24.0 - 1e-9))
        if total <= 0:
            lines.append(
                f"{key}: allowed but not used (in the model it adds less than its adjunct burden "
                f"{st.burden().get(get_product(key).drug, 0.0):g} MME-eq per label-maximum course)"
            )
        elif total < top - 1e-9:
            lines.append(
                f"{key}: {total:g} mg in 0-72 h, below what the patient's limits allow ({_caps_text(cap)}; "
                "more adds less than it costs in the objective)"
            )
    return lines


def _caps_text(cap: DoseCaps | None) -> str:
    """The caps applied to one product for this patient, in words (``<= 300 mg per dose, <= 700 mg/24 h``)."""
    if cap is None:
        return "no label limit"
    parts = []
    for fld, fmt in (
        ("max_single_mg", "<= {:g} mg per dose"),
        ("max_daily_mg", "<= {:g} mg/24 h"),
        ("max_total_mg", "<= {:g} mg in total"),
        ("max_duration_h", "course <= {:g} h"),
    ):
        v = getattr(cap, fld)
        if math.isfinite(v):
            reason = cap.reason(fld)
            parts.append(fmt.format(v) + (f" [{reason}]" if reason else ""))
    if cap.min_interval_h > 0:
        parts.append(f"interval >= {cap.min_interval_h:g} h")
    return ", ".join(parts) or "no label limit"


_JITS: dict[Any, Callable] = {}


def _jit(fn: Callable) -> Callable:
    """One jitted wrapper per function object (outcome programs are shared, so are their compilations)."""
    if fn not in _JITS:
        _JITS[fn] = jit(fn)
    return _JITS[fn]


#: The reference adult against which :func:`explain` states what is personal in a proposal.
REFERENCE_ADULT = {"AGE": 50.0, "WT": 80.0, "CRCL": 100.0, "HEPATIC": 0.0}


def explain(
    covariates: Mapping[str, Any],
    phenotypes: Mapping[str, Any] | None = None,
    products: Sequence[str] = DEFAULT_PRODUCTS,
    *,
    fusion: bool = True,
) -> list[str]:
    """Plain-language list of what the patient's genotype and covariates change in the decision space,
    against a reference adult (50 y, 80 kg, CrCL 100 mL/min, no hepatic impairment, normal metabolizer):
    products left out and why, and lower per-dose or daily maxima with the limit that sets them."""
    ref_phen = {"CYP2D6": "normal", "CYP2C9": "normal"}
    lines = []
    for key in products:
        prod = get_product(key)
        mine = dose_caps(prod.drug, prod.route, covariates, phenotypes, fusion=fusion)
        ref = dose_caps(prod.drug, prod.route, REFERENCE_ADULT, ref_phen, fusion=fusion)
        if mine.forbidden and not ref.forbidden:
            lines.append(f"{key} not used: {mine.forbidden}")
            continue
        for fld, what in (
            ("max_single_mg", "per dose"),
            ("max_daily_mg", "per 24 h"),
            ("max_total_mg", "in total"),
            ("max_duration_h", "course (h)"),
        ):
            a, b = getattr(mine, fld), getattr(ref, fld)
            if a < b - 1e-9:
                unit = "" if fld == "max_duration_h" else " mg"
                lines.append(f"{key}: at most {a:g}{unit} {what} (reference adult {b:g}{unit}): {mine.reason(fld)}")
        lines += [f"{key}: {n}" for n in (*mine.unchecked, *mine.notes)]
    from .limits import _phenotypes

    for gene, ph in _phenotypes(phenotypes, covariates).items():
        if ph.label != "normal" and not any(gene in line for line in lines):
            lines.append(
                f"{gene} {ph.label} metabolizer: no CPIC rule applies to the products in the decision "
                f"space ({', '.join(products)})"
            )
    if not lines:
        lines.append(
            "nothing in this patient's genotype or covariates changed the allowed doses (reference adult limits apply)"
        )
    return lines


def plot_schedule(proposal: Proposal, path) -> None:
    """PNG: the proposed doses over time, one row per drug (marker area ~ dose / largest strength),
    with the dose in mg written beside each marker."""
    from pkpd.plotting import new_figure

    sched = proposal.schedule
    drugs = list(dict.fromkeys(sched["drug"])) if len(sched) else []
    fig = new_figure(9, 1.0 + 0.55 * max(len(drugs), 1))
    ax = fig.add_subplot()
    for k, d in enumerate(drugs):
        rows = sched[sched["drug"] == d]
        big = rows["dose_mg"].max()
        ax.scatter(
            rows["time_h"],
            [k] * len(rows),
            s=40 + 160 * rows["dose_mg"] / big,
            color=f"C{k % 10}",
            label=f"{d} doses (mg beside each)",
        )
        for _, r in rows.iterrows():
            ax.annotate(
                f"{r['dose_mg']:g}",
                (r["time_h"], k),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=7,
            )
    ax.set_yticks(range(len(drugs)), [f"{d} ({sched[sched['drug'] == d]['route'].iloc[0]})" for d in drugs])
    ax.set_ylim(-0.7, max(len(drugs), 1) - 0.3)
    ax.axvline(0, color="k", linewidth=0.8, linestyle=":", label="end of surgery")
    ax.set_xlabel("time after end of surgery (h)")
    ax.set_ylabel("drug, route (category)")
    ax.legend(fontsize="x-small", loc="upper right")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"proposed schedule ({len(sched)} scheduled doses; rescue as needed per the PRN rules)")
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_concentrations(proposal: Proposal, path) -> None:
    """PNG: predicted plasma concentration (median and 10-90 % band over the patient's draws, mg/L) of every
    drug of the proposal, with its toxicity limit where one applies (bupivacaine 2 mg/L total, CNS;
    :data:`regimens._objective.EXPOSURE_LIMITS`)."""
    from pkpd.plotting import new_figure, quantile_band

    res = proposal.outcomes["proposal"]
    used = list(dict.fromkeys(proposal.schedule["drug"])) if len(proposal.schedule) else []
    drugs = [d for d in res.concentrations if d in used or d in {r.drug for r in proposal.regimen.prn}]
    fig = new_figure(9, 1.9 * max(len(drugs), 1) + 0.6)
    axs = fig.subplots(max(len(drugs), 1), 1, sharex=True, squeeze=False)[:, 0]
    t = res.times
    for ax, d in zip(axs, drugs):
        quantile_band(ax, t, res.concentrations[d], d, "tab:purple")
        lim = 2.0 if d.startswith("bupivacaine") else (EXPOSURE_LIMITS[d].mg_per_l if d in EXPOSURE_LIMITS else None)
        if lim is not None:
            ax.axhline(lim, color="k", linestyle="--", linewidth=1, label=f"toxicity limit {lim:g} mg/L")
        ax.set_ylabel(f"{d}\n(mg/L)", fontsize="small")
        ax.legend(fontsize="x-small", loc="upper right")
        ax.set_xlabel("time after end of surgery (h)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"proposal: plasma concentrations over {len(res.patients)} draws of the patient")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_proposal_bands(proposal: Proposal, path) -> None:
    from pkpd.plotting import new_figure, quantile_band

    prop, c1 = proposal.outcomes["proposal"], proposal.outcomes["C1"]
    t = prop.times
    post = t >= 0
    fig = new_figure(9, 6)
    axs = fig.subplots(2, 1, sharex=True)
    quantile_band(axs[0], t[post], prop.nrs[:, post], "proposal NRS", "tab:red")
    axs[0].plot(
        c1.times[c1.times >= 0],
        np.median(c1.nrs[:, c1.times >= 0], axis=0),
        color="tab:gray",
        linestyle="--",
        label="C1 median NRS",
    )
    axs[0].axhline(3, color="k", linestyle=":", linewidth=1, label="target NRS <= 3")
    axs[0].set_ylim(0, 10)
    axs[0].set_ylabel("pain NRS, 0-10 scale (points)")
    axs[0].legend(fontsize="small", loc="upper right")
    quantile_band(axs[1], t, prop.opioid_units, "proposal opioid effect", "tab:blue")
    axs[1].set_ylabel("opioid effect, Ce/EC50 (dimensionless)")
    axs[1].legend(fontsize="small", loc="upper right")
    for ax in axs:
        ax.set_xlabel("time after end of surgery (h)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"proposal: {len(prop.patients)} variability draws of the patient")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _cvar(x: np.ndarray, alpha: float = 0.9) -> float:
    """Empirical CVaR: mean of the worst ceil((1 - alpha) n) values."""
    x = np.sort(np.asarray(x, float))
    k = max(1, int(math.ceil((1.0 - alpha) * len(x) - 1e-9)))
    return float(x[len(x) - k :].mean())


def _compare(results: Mapping[str, pd.DataFrame], limits: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Proposal vs comparators over the same draws: MME (mean, P10, P90, CVaR_0.9), time in target (NRS <= 3
    and <= 4), time with NRS >= 4 and >= 7, pain AUC, mean OIRD and PONV risk, worst LAST index, and the estimated probability of crossing
    each toxicity limit (``P_TOX_<drug>``; :func:`regimens._objective.exceedance_probability`)."""
    rows = []
    for name, p in results.items():
        mme = p["MME_0_72"].to_numpy()
        r = {
            "regimen": name,
            "MME_mean": mme.mean(),
            "MME_P10": np.quantile(mme, 0.1),
            "MME_P90": np.quantile(mme, 0.9),
            "MME_CVAR90": _cvar(mme),
            "TIT3": p["TIT3"].mean(),
            "TIT4": p["TIT4"].mean(),
            "TIME_NRS_GE4": p["TIME_NRS_GE4"].mean(),
            "TIME_NRS_GE7": p["TIME_NRS_GE7"].mean(),
            "PAIN_AUC": p["PAIN_AUC"].mean(),
            "P_OIRD": p["P_OIRD"].mean(),
            "P_PONV": p["P_PONV"].mean(),
            "LAST_INDEX_max": p["LAST_INDEX"].max(),
            "P_TOX_bupivacaine": float(exceedance_probability(p["LAST_INDEX"].to_numpy()[None], 1.0)[0][0]),
        }
        for d, lim in (limits or {}).items():
            col = f"CMAX_{d}"
            r[f"P_TOX_{d}"] = float(exceedance_probability(p[col].to_numpy()[None], lim)[0][0]) if col in p else 0.0
        rows.append(r)
    return pd.DataFrame(rows).set_index("regimen")


#: The ``kind`` of the chunk store :func:`run_trial` writes (its run identity: what ``--resume`` recognises).
TRIAL_STORE_KIND = "spine72_trial"


def run_trial(
    n: int,
    seed: int,
    settings: OptimizeSettings | None = None,
    *,
    chunk: int = 50,
    progress: Callable[[int, str], None] | None = None,
    store=None,
    resume: bool = False,
    wait_timeout_s: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The SPINE-72 virtual trial: optimize for every virtual patient and compare with C0 and C1.

    Parameters
    ----------
    n, seed
        Virtual patients and the population seed (:func:`pkpd.patients.spine72_population`).
    settings
        :class:`OptimizeSettings` (``draws`` variability draws per patient; the same draws score the
        proposal and the comparators).
    chunk
        Patients optimized per batched call (bounds memory: rows = chunk x draws).
    progress
        ``progress(patients_done, stage)``.
    store
        Directory of a :class:`pkpd.batch.ChunkStore`: every completed chunk of patients is written there
        as it finishes, so an interrupted trial can continue with ``resume``. Required with several
        processes (:func:`pkpd.batch.init_distributed`): each process takes its share of the chunks
        (:func:`pkpd.batch.assign_chunks`: the missing chunks in order, every ``count``-th from the process
        index), writes them to the store (a directory every process sees), waits for the others and
        merges; every process returns the whole trial. Chunks are the same whatever the process count, so
        the merged table equals the single-process one. ``None``: in memory, one process.
    resume
        Keep the chunks already in ``store`` (an earlier run with the same ``n``, ``seed``, ``chunk`` and
        settings; anything else is an error) and compute only the missing ones: no patient is computed
        twice, lost or duplicated. Without it an existing store is cleared first.
    wait_timeout_s
        Longest wait for the other processes' chunks (s); ``None``: no limit.

    Returns
    -------
    patients : DataFrame
        One row per patient (see :class:`PopulationProposal`), plus ``SCHEDULE`` (the proposal in text).
    summary : DataFrame
        Mean 72-h MME, P90, time in target, pain AUC, OIRD and PONV risk, worst LAST index per regimen,
        overall and by CYP2D6 and CYP2C9 phenotype stratum, with the MME reduction vs C0 and C1 (%), the
        number of patients whose proposal failed a hard check (``n_unsafe``), whose searched schedule was
        repaired (``n_repaired``) and whose proposal is the fallback (``n_fallback``).
    times : dict
        Seconds per stage, summed over chunks (chunks resumed from ``store`` count with their stored times).

    Raises
    ------
    pkpd.batch.BatchError
        A store that belongs to another trial, several processes without a store, chunks still missing
        after ``wait_timeout_s``.
    """
    from pkpd import batch
    from pkpd.patients import spine72_population

    st = settings or OptimizeSettings()
    pop = spine72_population(n, seed)
    chunk = max(int(chunk), 1)
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    index, count = batch.process_info()
    if store is None and count > 1:
        raise batch.BatchError(
            f"a trial run by {count} processes needs a chunk store (a directory every process "
            "sees; --out with pkpd trial)"
        )

    def compute(i, before):
        lo, hi = bounds[i]
        res = optimize_population(pop.iloc[lo:hi], st, progress=(lambda s: progress(before, s)) if progress else None)
        tab = res.patients.copy()
        tab["SCHEDULE"] = [_schedule_text(sp, a) for sp, a in zip(res.spaces, res.amounts)]
        return tab, {k: float(v) for k, v in res.times.items()}

    if store is None:
        parts, infos = [], []
        for i, (lo, hi) in enumerate(bounds):
            tab, tm = compute(i, lo)
            parts.append(tab)
            infos.append({"times": tm})
            if progress:
                progress(hi, "chunk done")
        patients = pd.concat(parts, ignore_index=True)
    else:
        ident = batch.run_identity(kind=TRIAL_STORE_KIND, n=int(n), seed=int(seed), chunk=chunk, settings=repr(st))
        finished = [0]

        def one(i):
            tab, tm = compute(i, finished[0])
            return {"patients": tab}, {"times": tm, "process": index}

        def on_chunk(i, resumed):
            finished[0] += bounds[i][1] - bounds[i][0]
            if progress:
                progress(finished[0], "resumed" if resumed else "chunk done")

        cs = batch.run_chunks(
            store, ident, len(bounds), one, resume=resume, wait_timeout_s=wait_timeout_s, on_chunk=on_chunk
        )
        patients, infos = cs.merge("patients", expect_ids=pop["ID"].to_numpy())
    times: dict[str, float] = {}
    for info in infos:
        for k, v in info.get("times", {}).items():
            times[k] = times.get(k, 0.0) + float(v)
    return patients, trial_summary(patients), times


def _schedule_text(space: DecisionSpace, amounts) -> str:
    by: dict[str, list[str]] = {}
    for sl, a in zip(space.slots, amounts):
        if a > 0:
            by.setdefault(sl.product.key, []).append(f"{a:g}@{sl.time_h:g}h")
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in by.items())


def trial_summary(patients: pd.DataFrame) -> pd.DataFrame:
    """Summary of a trial table (see :func:`run_trial`), overall and by genotype stratum."""
    groups = [("all", patients)]
    for col in ("CYP2D6_PHENO", "CYP2C9_PHENO"):
        if col in patients:
            groups += [(f"{col[:6]} {lvl}", g) for lvl, g in patients.groupby(col)]
    rows = []
    for label, g in groups:
        for reg in ("proposal", "C0", "C1"):
            m = g[f"MME_0_72_{reg}"].mean()
            r = {
                "stratum": label,
                "regimen": reg,
                "n": len(g),
                "MME_mean": m,
                "MME_P10": g[f"MME_0_72_{reg}"].quantile(0.1),
                "MME_P90": g[f"MME_0_72_{reg}"].quantile(0.9),
                "TIT3": g[f"TIT3_{reg}"].mean(),
                "PAIN_AUC": g[f"PAIN_AUC_{reg}"].mean(),
                **{k: g[f"{k}_{reg}"].mean() for k in ("TIME_NRS_GE4", "TIME_NRS_GE7") if f"{k}_{reg}" in g},
                "P_OIRD": g[f"P_OIRD_{reg}"].mean(),
                "P_PONV": g[f"P_PONV_{reg}"].mean(),
                "LAST_INDEX_max": g[f"LAST_INDEX_{reg}"].max(),
            }
            if f"MME_CVAR90_{reg}" in g:
                r["MME_CVAR90"] = g[f"MME_CVAR90_{reg}"].mean()  # mean over patients of their draws' CVaR_0.9
            for ref in ("C0", "C1"):  # undefined (NaN) when the comparator uses no opioid at all
                base = g[f"MME_0_72_{ref}"].mean()
                r[f"MME_vs_{ref}_pct"] = 100 * (1 - m / base) if base > 0 else float("nan")
            r["n_unsafe"] = int((~g["SAFE"]).sum()) if reg == "proposal" else 0
            r["n_fallback"] = int(g["FALLBACK"].sum()) if reg == "proposal" and "FALLBACK" in g else 0
            r["n_pain_missed"] = int((~g["PAIN_OK"].astype(bool)).sum()) if reg == "proposal" and "PAIN_OK" in g else 0
            r["n_repaired"] = int((g["REPAIR"].astype(str) != "").sum()) if reg == "proposal" and "REPAIR" in g else 0
            rows.append(r)
    return pd.DataFrame(rows)


def plot_trial(patients: pd.DataFrame, path) -> None:
    """PNG: per-patient 72-h MME (log scale) and time in target for the proposal, C0 and C1: one point per
    patient, with the median and the 10th-90th percentile range of each regimen."""
    from pkpd.plotting import new_figure

    regs = ("C0", "C1", "proposal")
    fig = new_figure(10, 4)
    a1, a2 = fig.subplots(1, 2)
    rng = np.random.default_rng(0)  # horizontal jitter of the patient points only
    for ax, values in (
        (a1, [patients[f"MME_0_72_{r}"].to_numpy(float) + 1.0 for r in regs]),
        (a2, [100 * patients[f"TIT3_{r}"].to_numpy(float) for r in regs]),
    ):
        for k, v in enumerate(values):
            v = v[np.isfinite(v)]
            if not len(v):
                continue
            ax.scatter(k + rng.uniform(-0.18, 0.18, len(v)), v, s=8, alpha=0.35, color=f"C{k}", label="patients")
            q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9])
            ax.plot([k, k], [q10, q90], color="k", linewidth=2.5, label="10th-90th percentile")
            ax.plot([k - 0.28, k + 0.28], [q50, q50], color="k", linewidth=1.5, label="median")
        ax.set_xticks(range(len(regs)), regs)
        ax.set_xlabel("regimen (category)")
        handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry per label
        ax.legend(handles.values(), handles.keys(), fontsize="x-small", loc="best")
        ax.grid(True, axis="y", alpha=0.3)
    a1.set_yscale("log")
    a1.set_ylabel("72-h MME + 1, per patient,\nmean over draws (mg)")
    a2.set_ylabel("time with NRS <= 3 in 0-72 h (%)")
    fig.suptitle(f"SPINE-72 virtual trial, {len(patients)} patients")
    fig.tight_layout()
    fig.savefig(path, format="png")


#: The files :func:`save_trial` writes.
TRIAL_FILES = ("patients.csv", "summary.csv", "timings.json", "trial.png")


def save_trial(patients: pd.DataFrame, summary: pd.DataFrame, times: Mapping[str, float], out_dir) -> list:
    """Write a trial's outputs (:func:`run_trial`) into ``out_dir`` (created): ``patients.csv``,
    ``summary.csv``, ``timings.json`` (seconds per stage) and ``trial.png`` (:func:`plot_trial`). Returns
    their paths."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / name for name in TRIAL_FILES]
    patients.to_csv(files[0], index=False)
    summary.to_csv(files[1], index=False)
    files[2].write_text(json.dumps(dict(times), indent=2) + "\n")
    plot_trial(patients, files[3])
    return files


def trial_summary_text(summary: pd.DataFrame, *, population: int, seed: int, draws: int, total_s: float) -> str:
    """A trial's headline as ``pkpd trial`` prints it: per regimen (all patients) the 72-h MME mean and P90
    (mg), time with NRS <= 3 (%), pain AUC (NRS*h) and P(OIRD); the proposal's MME reduction vs C0 and C1
    (%), its time in target vs C1 (points) and how many proposals failed a hard check."""
    allp = summary[summary["stratum"] == "all"].set_index("regimen")
    lines = [f"SPINE-72 trial: {population} patients (seed {seed}), {draws} draws each, {total_s:.0f} s"]
    for reg, r in allp.iterrows():
        lines.append(
            f"  {reg:9s} MME {r['MME_mean']:7.1f} (P90 {r['MME_P90']:6.1f})  NRS<=3 {100 * r['TIT3']:5.1f} %  "
            f"pain AUC {r['PAIN_AUC']:6.1f}  P(OIRD) {r['P_OIRD']:.1e}"
        )
    p = allp.loc["proposal"]
    lines.append(
        f"proposal vs C0: MME {p['MME_vs_C0_pct']:.1f} % lower; vs C1: {p['MME_vs_C1_pct']:.1f} % lower; "
        f"time in target {100 * (p['TIT3'] - allp.loc['C1', 'TIT3']):+.1f} points vs C1; "
        f"{int(p['n_unsafe'])} proposal(s) failed a hard check"
    )
    return "\n".join(lines)


def exact_loss(patients: pd.DataFrame, settings: OptimizeSettings | None = None, *, fusion: bool = True) -> np.ndarray:
    """The objective of :mod:`regimens._objective` on exactly simulated draws (one row per draw, a
    :class:`pkpd.population.PopulationResult` table): MME + pain_weight x pain excess + sedation_weight x peak
    sedation + cvar_weight x MME (one draw is its own CVaR) + each adjunct's burden x AUC / reference AUC, in
    MME-equivalents per row; penalties are left out (they are constraints, checked separately)."""
    st = settings or OptimizeSettings()
    mme = patients["MME_0_72"].to_numpy(float)
    loss = (
        mme * (1.0 + st.cvar_weight)
        + st.pain_weight * patients["PAIN_EXCESS"].to_numpy(float)
        + st.sedation_weight * patients["MAX_SEDATION"].to_numpy(float)
    )
    drugs = {c[len("AUC_") :] for c in patients.columns if c.startswith("AUC_")}
    burden, auc_ref = _burden_terms(st, drugs, fusion=fusion)
    for d, w in burden.items():
        loss = loss + w * patients[f"AUC_{d}"].to_numpy(float) / auc_ref[d]
    return loss


def oracle_gap(
    population: pd.DataFrame,
    settings: OptimizeSettings | None = None,
    *,
    true_id_offset: int = 10_000_000,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Value of knowing each patient: population-prior optimization vs the oracle, on the true patients.

    Each virtual patient's *true* parameters are one fixed variability draw (simulation ID
    ``true_id_offset + patient ID``), which the prior-based optimization never sees (it uses ``draws``
    other draws of the same covariates). The **oracle** knows every true PK/PD value (all variability
    draws, :func:`pkpd.population.variability_columns`) but not the randomness of the patient's rescue
    requests: it optimizes over ``draws`` scenarios that differ only in that. Both proposals, C0 and C1 are
    then simulated exactly on the true patient (true parameters and true request randomness); C0 and C1
    adapted to the patient's limits and as-needed dose fractions (:func:`regimens.adapt.adapt_to_patient`).

    Returns
    -------
    DataFrame
        One row per patient: ``ID``, and for ``prior``, ``oracle``, ``C0``, ``C1``: ``MME_<r>`` (mg),
        ``TIT3_<r>``, ``PAIN_EXCESS_<r>`` (NRS*h) and ``LOSS_<r>`` (:func:`exact_loss`, MME-equivalents);
        ``SAME_SCHEDULE`` whether the prior-based and oracle schedules are identical.
    """
    from pkpd.population import simulate_regimen, variability_columns

    from .io import get_regimen

    st = settings or OptimizeSettings()
    pop = population.reset_index(drop=True)
    P, S = len(pop), int(st.draws)
    true_ids = true_id_offset + pop["ID"].to_numpy().astype(np.int64)
    if default_row_ids(pop["ID"].to_numpy(), P, S).max() >= true_ids.min():
        raise RegimenError(
            f"true_id_offset {true_id_offset} must exceed the scenario IDs of {P} patients x {S} "
            "draws (patient ID x draws)"
        )
    truth = pop.copy()
    truth["ID"] = true_ids
    prior = optimize_population(pop, st, progress=progress)
    drugs = sorted(
        {get_product(k).drug for k in st.products} | set(get_regimen("C0").drugs()) | set(get_regimen("C1").drugs())
    )
    known = variability_columns(drugs, truth, seed=st.seed)
    oracle = optimize_population(
        pop, st, progress=progress, draw_rows=known.loc[np.repeat(known.index, S)].reset_index(drop=True)
    )
    out = pd.DataFrame({"ID": pop["ID"]})
    res = {
        "prior": prior.evaluate(truth, np.arange(P), st.seed).patients,
        "oracle": oracle.evaluate(truth, np.arange(P), st.seed).patients,
    }
    covs = [{k: v for k, v in r.items() if k != "ID"} for r in pop.to_dict(orient="records")]
    for name in ("C0", "C1"):  # adapted to each patient's limits and as-needed dose fractions (regimens.adapt)
        reg = get_regimen(name)
        ads = [adapt_to_patient(reg, c) for c in covs]
        W = np.stack([a.weights for a in ads])
        res[name] = simulate_regimen(
            reg,
            truth,
            seed=st.seed,
            dose_weights=None if np.all(W == 1.0) else W,
            rescue_tables=rescue_tables(reg, ads, truth.iloc[:1]),
        ).patients
    for r, d in res.items():
        out[f"MME_{r}"] = d["MME_0_72"].to_numpy()
        out[f"TIT3_{r}"] = d["TIT3"].to_numpy()
        out[f"PAIN_EXCESS_{r}"] = d["PAIN_EXCESS"].to_numpy()
        out[f"LOSS_{r}"] = exact_loss(d, st)
    out["SAME_SCHEDULE"] = [
        np.array_equal(a, b) and pa.label == pb.label
        for a, b, pa, pb in zip(prior.amounts, oracle.amounts, prior.policies, oracle.policies)
    ]
    return out
