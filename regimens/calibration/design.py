"""Design points of the outcome-model parameters and their simulation in every evidence arm.

A design point is one value of every calibrated parameter (:data:`pkpd.outcome.OUTCOME_PARAMETERS`) plus
two *trial effects* per trial, standing for what differs between trials beyond the regimen: a log-multiplier
``u`` of every rescue-request hazard (``rescue.propensity = exp(u)``: an institution's readiness to ask for and
give rescue opioid, PCA teaching, nursing practice, unreported protocol details) and a log-multiplier ``w`` of
the between-patient heterogeneity (``pain.spread = exp(w)``: who the trial enrolled). The pain curve itself is
shared by every trial (``pain.scale = 1``).

Calibration 2 put ``u`` on the pain curve (``pain.scale``). Its reference setting (Iyer 2023, multiplier 1.61)
put the untreated pain of most patients above NRS 10, where the clip at 10 hides every adjunct's effect: C1's
POD1 pain came out too high, ketamine in tolerant patients too weak, tolerant and naive patients too alike and
the spread of opioid use too narrow (``docs/outcome_checks.md`` of calibration 2). Calibration 3 moves the
trial effect onto the rescue propensity, which leaves pain on the scale the pain data (Maheshwari 2020) and
clinical.md 3.2 ("untreated NRS about 7") describe.

Every arm is simulated at every design point in one batched call: rows are design points x virtual
patients, each row carrying its design point's values as ``outcome.<name>`` / ``rescue.propensity`` columns and
its patient's variability draws as ``z.*`` columns (:func:`pkpd.population.variability_columns`), so all
design points see the same patients (common random numbers; only the rescue-request randomness, keyed by
the row ID, differs).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from pkpd.outcome import OUTCOME_PARAMETERS
from pkpd.population import SimOptions, simulate_regimen, variability_columns

from .arms import ArmSim, Target, arm_population, patient_values, simulated_statistics

__all__ = [
    "PARAM_NAMES",
    "TRIAL_EFFECTS",
    "TRIAL_EFFECT_SD",
    "sample_design",
    "simulate_arm",
    "to_natural",
    "to_unconstrained",
]

PARAM_NAMES: tuple[str, ...] = tuple(p.name for p in OUTCOME_PARAMETERS)
#: What the first trial effect multiplies (the simulator's population column), and the structure tag every
#: saved wave and posterior carries (waves of another structure are refused).
TRIAL_EFFECTS: tuple[str, str] = ("rescue.propensity", "pain.spread")
#: SD of the trial effects at the first wave's design points (log multipliers): wider than their prior's
#: scale (fit._TAU_PRIOR), so that a trial far from the typical one is still inside the design.
TRIAL_EFFECT_SD = 0.5


def to_natural(z: np.ndarray) -> np.ndarray:
    """Unconstrained parameter values (..., P) -> natural units, clipped into each parameter's bounds."""
    z = np.asarray(z, float)
    cols = []
    for j, p in enumerate(OUTCOME_PARAMETERS):
        x = np.asarray(p.from_unconstrained(z[..., j]), float)
        cols.append(np.clip(x, p.bounds[0], p.bounds[1]))
    return np.stack(cols, -1)


def to_unconstrained(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_natural` (inside the bounds)."""
    x = np.asarray(x, float)
    return np.stack([np.asarray(p.to_unconstrained(x[..., j]), float) for j, p in enumerate(OUTCOME_PARAMETERS)], -1)


def sample_design(
    n: int,
    n_trials: int,
    seed: int,
    *,
    center: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    trial_sd: float = TRIAL_EFFECT_SD,
    trial_center: np.ndarray | None = None,
    trial_scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` space-filling design points (scrambled Sobol, mapped through the normal quantile).

    Parameters
    ----------
    n, n_trials
        Design points and trials (one trial effect per trial and point).
    seed
        Seed of the Sobol scrambling.
    center, scale
        Mean and SD of the unconstrained parameters (default: each prior's); a later wave centres them on
        a posterior.
    trial_sd
        SD of the trial effects (around 0), unless ``trial_center`` / ``trial_scale`` (2, n_trials: the u and
        w of each trial) are given (a later wave centres them on a posterior).

    Returns
    -------
    z : ndarray (n, P)
        Unconstrained parameter values.
    u, w : ndarray (n, n_trials)
        Trial effects: log multipliers of the rescue propensity and of the between-patient heterogeneity.
    """
    from scipy.stats import norm, qmc

    P = len(OUTCOME_PARAMETERS)
    if center is None:
        center = np.array([p.prior_loc_scale[0] for p in OUTCOME_PARAMETERS])
    if scale is None:
        scale = np.array([p.prior_loc_scale[1] for p in OUTCOME_PARAMETERS])
    m = max(int(np.ceil(np.log2(max(n, 2)))), 1)
    s = qmc.Sobol(P + 2 * n_trials, scramble=True, seed=seed).random_base2(m)[:n]  # a power of 2, then the first n
    g = norm.ppf(np.clip(s, 1e-6, 1 - 1e-6))
    z = center + scale * g[:, :P]
    # keep every point inside the bounds (on the unconstrained scale)
    lo = to_unconstrained(
        np.array([[max(p.bounds[0], 1e-9) if p.prior[0] != "normal" else p.bounds[0] for p in OUTCOME_PARAMETERS]])
    )[0]
    hi = to_unconstrained(
        np.array(
            [[min(p.bounds[1], 1 - 1e-9) if p.prior[0] == "logitnormal" else p.bounds[1] for p in OUTCOME_PARAMETERS]]
        )
    )[0]
    z = np.clip(z, lo, hi)
    tc = np.zeros((2, n_trials)) if trial_center is None else np.asarray(trial_center, float)
    ts = np.full((2, n_trials), trial_sd) if trial_scale is None else np.asarray(trial_scale, float)
    u = tc[0] + ts[0] * g[:, P : P + n_trials]
    w = tc[1] + ts[1] * g[:, P + n_trials :]
    return z, u, w


def simulate_arm(
    arm: ArmSim,
    targets: list[Target],
    theta: np.ndarray,
    propensity: np.ndarray,
    pain_spread: np.ndarray,
    *,
    n_patients: int,
    seed: int,
    rule: str = "loewe",
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """The arm's target statistics at every design point.

    Parameters
    ----------
    arm, targets
        The arm and its targets (:func:`regimens.calibration.arms.arm_targets`).
    theta
        (D, P) parameter values, natural units (:data:`PARAM_NAMES` order).
    propensity, pain_spread
        (D,) the arm's trial effects at each point: multipliers of the rescue propensity and of the between-patient
        heterogeneity.
    n_patients, seed
        Virtual patients of the arm (the same for every point) and their seed.
    rule
        Combination rule simulated (``"loewe"`` or ``"bliss"``).

    Returns
    -------
    ndarray (D, len(targets))
    """
    t0 = time.perf_counter()
    D = theta.shape[0]
    pop = arm_population(arm, n_patients, seed)
    reg = arm.regimen()
    z = variability_columns(reg.drugs(), pop, seed=seed)
    base = pd.concat([pop.reset_index(drop=True), z.reset_index(drop=True)], axis=1)
    rows = pd.concat([base] * D, ignore_index=True)
    rows["ID"] = np.arange(1, D * n_patients + 1)
    for j, name in enumerate(PARAM_NAMES):
        rows[f"outcome.{name}"] = np.repeat(theta[:, j], n_patients)
    rows["rescue.propensity"] = np.repeat(np.asarray(propensity, float), n_patients)
    rows["pain.scale"] = 1.0  # explicit: not the shipped posterior's reference setting
    rows["pain.spread"] = np.repeat(np.asarray(pain_spread, float), n_patients)
    res = simulate_regimen(
        reg, rows, seed=seed, options=SimOptions(record_trajectories=False, record_doses=False, combination=rule)
    )
    values = {}
    for t in targets:
        v = patient_values(arm, t.outcome, res, rows)
        values[id(t.outcome)] = v.reshape(D, n_patients)
    out = simulated_statistics(arm, targets, values)
    if progress is not None:
        progress(f"{arm.key}: {D} points x {n_patients} patients in {time.perf_counter() - t0:.1f} s")
    return out
