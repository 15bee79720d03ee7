"""Discrete decisions of the optimizer: as-needed rescue policies and product inclusion, by the cross-entropy method.

A **rescue policy** is a set of PRN rules with the structure of C1's (oxycodone PO at two pain levels sharing
one interval, hydromorphone IV at severe pain): its threshold, doses and interval are the decisions. Every
policy of :func:`rescue_policies` has the same items and rules, so the simulator takes them as data
(:meth:`pkpd.population.RegimenPlan.rescue_tables`) and all policies share one compiled program.

:func:`cross_entropy_search` is the gradient-free stage (clinical.md 4: "the cross-entropy method ... best for
mixed-integer choices and PRN-policy search"): per patient, a categorical distribution over the allowed
policies and a Bernoulli distribution per product; each generation samples candidates, scores all of them in
one batched call, and moves the distributions towards the best quarter (elite fraction), with smoothing.
The first candidate of the first generation is the default (every allowed product, the first policy), so the
search never returns something worse than the default by its own score.

References
----------
Rubinstein RY, Kroese DP. The Cross-Entropy Method. Springer 2004. De Boer PT, Kroese DP, Mannor S,
Rubinstein RY. A tutorial on the cross-entropy method. Ann Oper Res 2005;134:19-67.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ._condition import format_number
from ._model import PRN, ROUTE_DISPLAY
from .limits import RescueFraction

__all__ = [
    "RescuePolicy",
    "rescue_policies",
    "for_patient",
    "withholds_rescue",
    "TREAT_CUTOFF_NRS",
    "cross_entropy_search",
]

#: NRS at or above which pain is treated (3 of 4 cut-off methods, Gerbershagen 2011; clinical.md 3.1).
TREAT_CUTOFF_NRS = 4.0


@dataclass(frozen=True)
class RescuePolicy:
    """A set of PRN rules with a short label (``rules`` in the order the simulator groups them).

    ``label`` names the policy as written; for one patient (:func:`for_patient`) ``rules`` hold the doses
    given to that patient and ``fractions`` the renal/hepatic fractions applied to them
    (:func:`regimens.limits.rescue_fraction`; empty when none applies).
    """

    label: str
    rules: tuple[PRN, ...]
    fractions: tuple[RescueFraction, ...] = ()

    def describe(self) -> str:
        """The label, and where fractions apply the doses for the patient with the fraction and its source."""
        if not self.fractions:
            return self.label
        parts = []
        for f in self.fractions:
            doses = " / ".join(format_number(r.dose_mg) for r in self.rules if (r.drug, r.route) == (f.drug, f.route))
            parts.append(f"{f.drug} {ROUTE_DISPLAY.get(f.route, f.route)} {doses} mg: {f.short()}")
        return f"{self.label} [doses for this patient: {'; '.join(parts)}]"


def for_patient(policy: RescuePolicy, covariates) -> RescuePolicy:
    """``policy`` with one patient's renal/hepatic as-needed dose fractions applied to its doses
    (:func:`regimens.adapt.rescue_for_patient`); the policy itself when none applies."""
    from .adapt import rescue_for_patient

    prn, _, fr = rescue_for_patient(policy.rules, (), covariates)
    if not fr:
        return policy
    return RescuePolicy(policy.label, prn, tuple(fr[k] for k in sorted(fr)))


def rescue_policies() -> tuple[RescuePolicy, ...]:
    """The rescue policies the optimizer chooses from; the first is C1's.

    Oxycodone PO 5 mg at NRS >= 4 or >= 5, escalating to 10 mg at NRS >= 7 or not, every 4 or 3 h; hydromorphone
    IV 0.5 or 0.2 mg every 2 h at NRS >= 7. C1's values come from clinical.md 3.2 ("oxycodone 5-10 mg q4h PRN
    (NRS >= 4); hydromorphone IV rescue for NRS >= 7"); the alternatives (NRS >= 5, q3h, no escalation, the
    0.2 mg hydromorphone dose of Jeleazcov 2016's PCA bolus, models.md B6) are common practice variants,
    UNVERIFIED as protocols. NRS >= 4 is the treat cut-off in 3 of 4 methods (Gerbershagen 2011, clinical.md
    3.1); NRS >= 5 trades pain for opioid and is only chosen when the time-in-target constraint still holds.
    """
    out = []
    for every in (4.0, 3.0):
        for thr in (4.0, 5.0):
            for hi in (10.0, 5.0):
                for hm in (0.5, 0.2):
                    rules = (
                        PRN("oxycodone", "po", 5.0, thr, every),
                        PRN("oxycodone", "po", hi, 7.0, every),
                        PRN("hydromorphone", "iv", hm, 7.0, 2.0),
                    )
                    esc = ", 10 mg at NRS >= 7" if hi > 5.0 else ""
                    label = (
                        f"oxycodone 5 mg PO q{every:g}h PRN NRS >= {thr:g}{esc}; hydromorphone {hm:g} mg IV q2h "
                        "PRN NRS >= 7"
                    )
                    out.append(RescuePolicy(label, rules))
    return tuple(out)


def withholds_rescue(policy: RescuePolicy) -> bool:
    """True when the policy's lowest opioid rescue threshold is above the treat cut-off
    (:data:`TREAT_CUTOFF_NRS`): it leaves pain of NRS 4 untreated, so the optimizer allows it only when the
    time with NRS >= 4 and >= 7 are no worse than C1's (no non-inferiority margin)."""
    return bool(policy.rules) and min(r.threshold_nrs for r in policy.rules) > TREAT_CUTOFF_NRS


def cross_entropy_search(
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    cat_allowed: np.ndarray,
    bit_allowed: np.ndarray,
    *,
    candidates: int = 16,
    generations: int = 3,
    elite: float = 0.25,
    smoothing: float = 0.7,
    seed: int = 0,
    group_seeds: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Minimize ``score`` over one categorical choice and several binary choices per group.

    Parameters
    ----------
    score
        ``score(cat, bits) -> (G, K)`` lower-is-better scores of K candidates per group; ``cat`` (G, K) ints,
        ``bits`` (G, K, B) booleans. Called once per generation (one batched evaluation).
    cat_allowed
        (G, C) which categories each group may take (at least one; category 0 is the default when allowed).
    bit_allowed
        (G, B) which bits may be on (a bit that is not allowed is always off).
    candidates, generations, elite, smoothing
        K candidates per group and generation; the best ``elite`` share updates the distributions, mixed
        with the previous ones by ``smoothing`` (weight of the new estimate).
    seed
        Random seed (deterministic search).
    group_seeds
        Optional (G,) integers: each group then draws its candidates from its own generator (seeded by
        ``seed`` and its entry), so a group's search does not depend on the other groups in the call (the
        optimizer passes patient IDs).

    Returns
    -------
    cat, bits, best_score, history
        Best categorical choice (G,), bits (G, B) and score (G,) seen per group, and the mean best score
        after each generation.
    """
    cat_allowed = np.asarray(cat_allowed, bool)
    bit_allowed = np.asarray(bit_allowed, bool)
    G, C = cat_allowed.shape
    B = bit_allowed.shape[1]
    if group_seeds is None:
        rng = np.random.default_rng(seed)

        def uniforms(shape):
            return rng.random((G, *shape))
    else:
        if len(group_seeds) != G:
            raise ValueError(f"group_seeds must have {G} entries, got {len(group_seeds)}")
        rngs = [np.random.default_rng([int(seed) % 2**63, int(g) % 2**63]) for g in group_seeds]

        def uniforms(shape):
            return np.stack([r.random(shape) for r in rngs]) if G else np.zeros((0, *shape))

    pc = cat_allowed / cat_allowed.sum(axis=1, keepdims=True)
    pb = np.where(bit_allowed, 0.8, 0.0)
    default_cat = np.where(cat_allowed[:, 0], 0, np.argmax(cat_allowed, axis=1))
    best_c = default_cat.copy()
    best_b = bit_allowed.copy()
    best_s = np.full(G, np.inf)
    hist = []
    n_el = max(1, int(round(elite * candidates)))
    for gen in range(int(generations)):
        u = uniforms((candidates,))
        cdf = np.cumsum(pc, axis=1)
        cat = np.minimum((u[:, :, None] > cdf[:, None, :]).sum(axis=2), C - 1)
        bits = (uniforms((candidates, B)) < pb[:, None, :]) & bit_allowed[:, None, :]
        if gen == 0:
            cat[:, 0], bits[:, 0] = default_cat, bit_allowed
        s = np.asarray(score(cat, bits), float)
        s = np.where(np.isfinite(s), s, np.inf)
        k = np.argmin(s, axis=1)
        better = s[np.arange(G), k] < best_s
        best_s = np.where(better, s[np.arange(G), k], best_s)
        best_c = np.where(better, cat[np.arange(G), k], best_c)
        best_b = np.where(better[:, None], bits[np.arange(G), k], best_b)
        order = np.argsort(s, axis=1)[:, :n_el]
        ec = np.take_along_axis(cat, order, axis=1)
        eb = np.take_along_axis(bits, order[:, :, None], axis=1)
        new_pc = np.stack([(ec == j).mean(axis=1) for j in range(C)], axis=1) * cat_allowed
        new_pc = new_pc / np.maximum(new_pc.sum(axis=1, keepdims=True), 1e-12)
        pc = smoothing * new_pc + (1 - smoothing) * pc
        pc = pc * cat_allowed
        pc = pc / pc.sum(axis=1, keepdims=True)
        pb = (smoothing * eb.mean(axis=1) + (1 - smoothing) * pb) * bit_allowed
        hist.append(float(np.mean(best_s[np.isfinite(best_s)])) if np.isfinite(best_s).any() else float("inf"))
    return best_c, best_b, best_s, hist
