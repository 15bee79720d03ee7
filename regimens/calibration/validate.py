"""Posterior predictive checks and leave-one-trial-out validation of the calibrated outcome model.

Predictions of a trial's arms from a posterior that did not see the trial (leave-one-trial-out): for every
posterior draw, new trial effects ``u ~ N(0, tau)`` and ``w ~ N(0, tau_w)`` (shared by the trial's arms), an arm discrepancy
``e_a ~ s_k * t_4`` per arm (the likelihood's Student-t, :data:`regimens.calibration.fit.DISCREPANCY_DF`)
and the arm's sampling error ``N(0, se)``; the 5th-95th percentiles form the
90 % prediction interval. A between-arm effect (log ratio of opioid use, difference of mean pain) is
predicted the same way, arm minus control, draw by draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .arms import Target
from .emulator import Emulator, standardize
from .fit import DISCREPANCY_DF, KINDS, Posterior

__all__ = ["predict_targets", "arm_contrasts", "predict_contrasts", "summarize_intervals"]


def predict_targets(
    emu: Emulator,
    post: Posterior,
    targets: list[Target],
    trial_index: np.ndarray,
    *,
    new_trial: np.ndarray,
    seed: int = 0,
    sampling: bool = True,
) -> np.ndarray:
    """Predictive draws (S, J) of every target.

    ``new_trial`` (J,) bool: targets of a trial the posterior did not see (a fresh trial effect per draw,
    shared by that trial's targets); the others use the posterior's own trial effect. Every arm gets a
    fresh discrepancy draw when its trial is new; ``sampling`` adds each target's sampling error."""
    rng = np.random.default_rng(seed)
    S, J = post.z.shape[0], len(targets)
    tri = np.asarray(trial_index)
    u = post.u[:, tri].copy()
    w = post.w[:, tri].copy()
    for t in np.unique(tri[np.asarray(new_trial, bool)]):
        u[:, tri == t] = (post.tau * rng.standard_normal(S))[:, None]
        w[:, tri == t] = (post.tau_w * rng.standard_normal(S))[:, None]
    x = standardize(np.broadcast_to(post.z[:, None, :], (S, J, post.z.shape[1])), u, w)
    mu = emu.predict_np(x)
    kind = np.array([KINDS[t.stat] for t in targets])
    # one discrepancy per arm and kind (the SD and the mean of one arm are different statistics)
    arm_key = [f"{t.trial}/{t.arm}/{KINDS[t.stat]}" for t in targets]
    eps = np.zeros((S, J))
    for k in dict.fromkeys(arm_key):
        idx = [j for j, a in enumerate(arm_key) if a == k]
        if np.asarray(new_trial, bool)[idx[0]]:
            eps[:, idx] = (post.s[:, kind[idx[0]]] * rng.standard_t(DISCREPANCY_DF, S))[:, None]
    se = np.array([t.se for t in targets])
    noise = rng.standard_normal((S, J)) * se if sampling else 0.0
    emu_err = rng.standard_normal((S, J)) * emu.rmse
    return mu + eps + noise + emu_err


@dataclass(frozen=True)
class Contrast:
    """A between-arm effect: ``arm`` vs ``control`` of ``trial`` for statistic ``stat``."""

    trial: str
    arm: str
    control: str
    stat: str


def arm_contrasts(targets: list[Target], contrasts: dict[str, list[tuple[str, str]]]) -> list[Contrast]:
    """Contrasts of every trial (``contrasts[trial] = [(arm, control), ...]``) for each statistic both arms
    report (log means, log medians, pain means; not SDs)."""
    have = {(t.trial, t.arm, t.stat) for t in targets}
    out = []
    for trial, pairs in contrasts.items():
        for a, c in pairs:
            for stat in ("log_mean", "log_median", "pain_mean"):
                if (trial, a, stat) in have and (trial, c, stat) in have:
                    out.append(Contrast(trial, a, c, stat))
    return out


def predict_contrasts(
    draws: np.ndarray, targets: list[Target], contrasts: list[Contrast]
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted draws (S, C), observed (C,)) of each contrast from predictive target draws (S, J)."""
    idx = {(t.trial, t.arm, t.stat): j for j, t in enumerate(targets)}
    pred, obs = [], []
    for c in contrasts:
        ja, jc = idx[(c.trial, c.arm, c.stat)], idx[(c.trial, c.control, c.stat)]
        pred.append(draws[:, ja] - draws[:, jc])
        obs.append(targets[ja].value - targets[jc].value)
    return np.stack(pred, 1), np.array(obs)


def summarize_intervals(
    pred: np.ndarray, obs: np.ndarray, labels: list[str], scale: list[str], level: float = 0.90
) -> pd.DataFrame:
    """Table of predicted median and ``level`` interval vs observed, on the natural scale (ratios for log
    statistics), with inside/sign columns."""
    a = (1 - level) / 2
    lo, med, hi = (np.quantile(pred, q, axis=0) for q in (a, 0.5, 1 - a))
    rows = []
    for i, lab in enumerate(labels):
        f = np.exp if scale[i] == "log" else (lambda v: v)
        rows.append(
            {
                "what": lab,
                "observed": f(obs[i]),
                "predicted": f(med[i]),
                "lo90": f(lo[i]),
                "hi90": f(hi[i]),
                "inside": bool(lo[i] <= obs[i] <= hi[i]),
                "sign_right": bool(np.sign(med[i]) == np.sign(obs[i]) or obs[i] == 0),
            }
        )
    return pd.DataFrame(rows)
