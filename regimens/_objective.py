"""The optimizer's objective under uncertainty: expected outcomes, CVaR, adjunct burden and chance constraints.

For one patient with S scenario draws (variability draws of the population prior, or posterior draws) and a
candidate schedule, the loss (in MME-equivalents, mg oral morphine) is

    E[MME_0-72] + pain_weight * E[integral (NRS - 3)+ dt] + sedation_weight * E[peak sedation index]
    + cvar_weight * CVaR_alpha(MME_0-72)
    + sum_d  burden_d * E[AUC_d] / AUC_ref,d                       (adjunct burden, exposure-based)
    + penalties: time in target below its target, OIRD hazard above the comparator's, smoothed
      probabilities of crossing an exposure limit above the allowed risk.

``CVaR_alpha`` is the mean of the worst (1 - alpha) share of the draws (Rockafellar & Uryasev 2000): in the
gradient stage it is written as ``eta + E[(MME - eta)+] / (1 - alpha)`` with a per-patient ``eta`` optimized
jointly with the doses (an unbiased objective for minibatches of draws); when scoring discrete candidates it
is the empirical tail mean.

The adjunct burden prices each adjunct's own dose-related harms (NSAID gastrointestinal, renal and bleeding
risk and non-union; gabapentinoid dizziness and sedation; acetaminophen hepatotoxicity; ketamine
psychotomimetic effects), which the references give no dose-response for: ``burden_d`` is the harm of the
reference adult's label-maximum 72-h course of drug ``d`` in MME-equivalents, an explicit **UNVERIFIED
assumption** (:data:`ADJUNCT_BURDEN`), and the patient's harm scales with their plasma exposure (AUC), so a
patient who clears a drug slowly (a CYP2C9 poor metabolizer and celecoxib, renal impairment and
gabapentin) pays more per mg.

Chance constraints (clinical.md 3.1/3.2): the probability that a draw's peak concentration crosses a
toxicity limit (:data:`EXPOSURE_LIMITS`; the LAST index for bupivacaine) must not exceed ``risk``. S draws
cannot resolve 1e-3 by counting, so the estimate is the larger of the empirical frequency and a log-normal
tail fitted to the draws' peaks (:func:`exceedance_probability`); the gradient stage penalizes a smoothed
frequency (sigmoid of the log-distance to the limit).

References
----------
Rockafellar RT, Uryasev S. Optimization of conditional value-at-risk. J Risk 2000;2:21-41.
Nemirovski A, Shapiro A. Convex approximations of chance constrained programs. SIAM J Optim 2006;17:969-996.
clinical.md sections 3.1 (metrics, uncertainty), 3.2 (SPINE-72 problem), 4 (chance constraints, CVaR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

__all__ = [
    "ADJUNCT_BURDEN",
    "ADJUNCT_BURDEN_SOURCE",
    "EXPOSURE_LIMITS",
    "ExposureLimit",
    "exceedance_probability",
    "group_loss",
]

#: Harm of the reference adult's label-maximum 72-h course of each adjunct, in MME-equivalents (mg oral
#: morphine). UNVERIFIED: the references hold no dose-response for these harms; the values only make the
#: optimizer prefer less of an adjunct when more buys little (they are small against the opioid and pain
#: terms on purpose) and can be changed per run (``OptimizeSettings.adjunct_burden``).
ADJUNCT_BURDEN: dict[str, float] = {
    "acetaminophen": 2.0,
    "ketorolac": 4.0,
    "celecoxib": 4.0,
    "ibuprofen": 4.0,
    "gabapentin": 2.0,
    "pregabalin": 2.0,
    "ketamine": 1.0,
    "bupivacaine_liposomal": 1.0,
}
ADJUNCT_BURDEN_SOURCE = (
    "UNVERIFIED assumption (no dose-response for adjunct harms in models.md or clinical.md): "
    "MME-equivalents of the reference adult's label-maximum 72-h course, scaled by the "
    "patient's plasma AUC"
)


@dataclass(frozen=True)
class ExposureLimit:
    """A plasma concentration above which a draw counts as toxic (chance constraint)."""

    drug: str
    mg_per_l: float
    source: str
    unverified: bool = False


#: Exposure limits of the chance constraints besides the local-anaesthetic LAST index (which is the larger of
#: total/2,000 ng/mL and unbound/300 ng/mL bupivacaine, models.md C).
EXPOSURE_LIMITS: dict[str, ExposureLimit] = {
    "gabapentin": ExposureLimit(
        "gabapentin",
        25.0,
        "models.md C: gabapentin TDM, >= 25 ug/mL considered toxic "
        "(Al-Zubaydi 2024 Methods; one laboratory's reference range 2-20 ug/mL)",
    ),
}


def exceedance_probability(peaks: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patient, the probability that a draw's peak crosses ``limit``.

    Parameters
    ----------
    peaks
        (P, S) peak values of S draws per patient (any positive unit; ``limit`` in the same unit).
    limit
        Threshold.

    Returns
    -------
    estimate, empirical, tail : (P,) arrays
        ``empirical`` is the fraction of draws at or above the limit; ``tail`` the tail probability of a
        log-normal fitted to the draws' peaks (mean and SD of log peak), which resolves small probabilities
        that S draws cannot count; ``estimate`` is the larger of the two (conservative). Draws with no
        exposure (peak 0) count as far below.
    """
    x = np.asarray(peaks, float)
    emp = (x >= limit).mean(axis=1)
    pos = np.maximum(x, limit * 1e-12)
    lg = np.log(pos)
    mu, sd = lg.mean(axis=1), lg.std(axis=1, ddof=1) if x.shape[1] > 1 else np.zeros(len(x))
    z = np.where(
        sd > 1e-12, (math.log(limit) - mu) / np.maximum(sd, 1e-12), np.where(mu >= math.log(limit), -np.inf, np.inf)
    )
    tail = norm.sf(z)
    return np.maximum(emp, tail), emp, tail


def group_loss(
    out: Mapping[str, jnp.ndarray],
    G: int,
    c: Mapping[str, jnp.ndarray],
    eta=None,
    *,
    alpha: float,
    burden_drugs: tuple[str, ...] = (),
    limit_drugs: tuple[str, ...] = (),
) -> jnp.ndarray:
    """Loss of G groups of draws (patients, or patient x candidate), rows grouped consecutively.

    Parameters
    ----------
    out
        Relaxed outcomes per row (:func:`pkpd.population.relaxed_program`).
    G
        Number of groups; each group has ``len(rows) / G`` consecutive rows.
    c
        Per-group arrays ``tit_target``, ``ge4_target``, ``ge7_target``, ``oird_ref`` (G,); scalars ``pain_weight``, ``sedation_weight``,
        ``cvar_weight``, ``tit_penalty``, ``oird_penalty``, ``chance_penalty``, ``risk``; dicts ``burden``,
        ``auc_ref`` (drug -> scalar, mg*h/L) and ``limit`` (drug -> mg/L).
    eta
        (G,) Rockafellar-Uryasev auxiliary variable (mg MME); ``None``: the empirical CVaR (tail mean).
    alpha
        CVaR level (static).
    burden_drugs, limit_drugs
        Drugs with a burden term / an exposure chance constraint (static; absent outcomes are skipped).

    Returns
    -------
    (G,) loss in MME-equivalents.
    """

    def grp(k):
        return out[k].reshape(G, -1)

    def m(k):
        return jnp.mean(grp(k), axis=1)

    mme = grp("MME_0_72")
    if eta is None:
        S = mme.shape[1]
        k = max(1, int(math.ceil((1.0 - float(alpha)) * S - 1e-9)))
        cvar = jnp.mean(jnp.sort(mme, axis=1)[:, S - k :], axis=1)
    else:
        cvar = eta + jnp.mean(jax.nn.relu(mme - eta[:, None]), axis=1) / (1.0 - float(alpha))
    loss = (
        jnp.mean(mme, axis=1)
        + c["pain_weight"] * m("PAIN_EXCESS")
        + c["sedation_weight"] * m("SEDATION_MAX")
        + c["cvar_weight"] * cvar
    )
    for d in burden_drugs:
        if f"AUC_{d}" in out:
            loss = loss + c["burden"][d] * m(f"AUC_{d}") / c["auc_ref"][d]
    short = jax.nn.relu(c["tit_target"] - m("TIT3"))
    # non-inferiority to C1 of the time with NRS >= 4 (treat cut-off) and NRS >= 7 (severe pain)
    over4 = jax.nn.relu(m("GE4") - c["ge4_target"])
    over7 = jax.nn.relu(m("GE7") - c["ge7_target"])
    oird = jax.nn.relu(m("OIRD_HAZARD") / c["oird_ref"] - 1.0)
    loss = loss + c["tit_penalty"] * (short**2 + over4**2 + over7**2) + c["oird_penalty"] * oird**2
    for d in limit_drugs:
        if f"CMAX_{d}" in out:  # smoothed exceedance frequency (log scale, temperature 0.05 = 5 %)
            z = (jnp.log(jnp.maximum(grp(f"CMAX_{d}"), 1e-12)) - jnp.log(c["limit"][d])) / 0.05
            p = jnp.mean(jax.nn.sigmoid(z), axis=1)
            loss = loss + c["chance_penalty"] * jax.nn.relu(p - c["risk"]) / c["risk"]
    return loss
