"""The calibrated outcome model against the targets stated before the fit, with the exact simulator.

``python -m regimens.calibration.checks [--n 1000] [--seed 72] [--out docs/outcome_checks.md]`` simulates,
with the shipped posterior's default values (medians, and the reference setting's trial effects):

* the Iyer 2023 arms in an Iyer-like population (opioid-naive, mean age 57.1 y): means within +-15 % of
  299 / 255 / 173 mg and SDs within +-30 % of 179 / 179 / 157 mg (issue acceptance; Iyer is in the
  calibration, so this is a fit check);
* the targets of ``regimens/evidence/findings.toml`` (tolerant / naive ratio, C1's opioid-free share, 72-h
  MME and POD1 pain, the spread of opioid use);
* single adjuncts on a PCA background in opioid-tolerant patients (ketamine, liposomal bupivacaine), C0 vs C1,
  and liposomal bupivacaine's peak-concentration CV.

Each row states its value, its target and its source, and whether it passes; misses are reported as
plainly as hits.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pkpd.patients import PopulationSpec, spine72_population
from pkpd.population import SimOptions, simulate_regimen

from ..evidence import arm_regimen, load_evidence
from ..io import get_regimen

__all__ = ["Check", "run_checks", "checks_markdown"]

#: Postoperative day 1 on the clock: surgery ends at 14:00 (PainModel.surgery_end_clock), so calendar day 1
#: runs from 10 h to 34 h after the end of surgery.
POD1_H = (10, 34)


@dataclass(frozen=True)
class Check:
    """One comparison: ``value`` against ``low``-``high`` (None: no bound on that side)."""

    what: str
    value: float
    low: float | None
    high: float | None
    source: str
    fitted: bool

    @property
    def passed(self) -> bool:
        return (self.low is None or self.value >= self.low) and (self.high is None or self.value <= self.high)


def _sim(regimen, pop, seed):
    return simulate_regimen(regimen, pop, seed=seed, options=SimOptions(record_doses=False, record_trajectories=False))


def run_checks(n: int = 1000, seed: int = 72) -> list[Check]:
    """Every check (see the module docstring) with ``n`` virtual patients per simulated arm."""
    ev = load_evidence()
    tg = ev.findings["targets"]
    out: list[Check] = []
    iyer_pop = spine72_population(
        n, seed, PopulationSpec().with_values(p_opioid_tolerant=0.0, age=(57.1, 10.0, 18.0, 75.0))
    )
    for name, (m, sd) in {
        "IYER_PLACEBO": (299.0, 179.0),
        "IYER_APAP": (255.0, 179.0),
        "IYER_KETOROLAC": (173.0, 157.0),
    }.items():
        pts = _sim(get_regimen(name), iyer_pop, seed).patients
        x = pts.MME_0_72
        if name == "IYER_PLACEBO":  # the OIRD scale d_ref is set so that this arm has Gupta's base rate
            from pkpd.pd import AdverseEffectModel

            out.append(
                Check(
                    "IYER_PLACEBO mean P(OIRD)",
                    float(pts.P_OIRD.mean()),
                    0.004,
                    0.006,
                    "Gupta 2018 base rate 5/1000 (AdverseEffectModel.d_ref = "
                    f"{AdverseEffectModel().d_ref.value:g} is set by regimens.calibration.checks.oird_scale)",
                    True,
                )
            )
        out.append(
            Check(
                f"{name} mean 72-h MME (mg)",
                float(x.mean()),
                0.85 * m,
                1.15 * m,
                f"Iyer 2023: {m:g} +- {sd:g} (+-15 %)",
                True,
            )
        )
        out.append(
            Check(
                f"{name} SD of 72-h MME (mg)",
                float(x.std()),
                0.7 * sd,
                1.3 * sd,
                f"Iyer 2023: SD {sd:g} (+-30 %)",
                True,
            )
        )
    # tolerant vs naive: one PCA protocol whose capacity does not bind (morphine 2.5 mg / 5 min, Nielsen 2017's
    # placebo arm), 0-24 h, in otherwise identical SPINE-72 patients
    spine = spine72_population(n, seed)
    pca = arm_regimen(ev.trial("nielsen2017").arm("placebo"))
    both = [_sim(pca, spine.assign(OPIOID_TOL=float(v)), seed).patients.MME_0_24.mean() for v in (1, 0)]
    t = tg["tolerant_ratio"]
    out.append(
        Check(
            "morphine PCA 2.5 mg / 5 min: 0-24 h use, opioid-tolerant / opioid-naive",
            float(both[0] / both[1]),
            t["low"],
            t["high"],
            "; ".join(t["sources"]),
            bool(t["used_in_calibration"]),
        )
    )
    c0 = _sim(get_regimen("C0"), spine, seed).patients
    c1 = _sim(get_regimen("C1"), spine, seed)
    p1 = c1.patients
    t = tg["c1_opioid_free"]
    out.append(
        Check(
            "C1: share of patients with no opioid in 0-72 h",
            float((p1.MME_0_72 <= 0).mean()),
            None,
            t["high"],
            "; ".join(t["sources"]),
            False,
        )
    )
    t = tg["c1_mme72"]
    out.append(
        Check("C1: mean 72-h MME (mg)", float(p1.MME_0_72.mean()), t["low"], t["high"], "; ".join(t["sources"]), False)
    )
    t = tg["c1_pod1_pain"]
    pod1 = float(c1.nrs_hourly[:, POD1_H[0] : POD1_H[1]].mean())
    out.append(
        Check(
            "C1: mean NRS on postoperative day 1 (10-34 h)", pod1, t["low"], t["high"], "; ".join(t["sources"]), False
        )
    )
    t = tg["spread"]
    for name, res in (("C0", c0), ("C1", p1)):
        x = res.MME_0_72
        out.append(
            Check(
                f"{name}: SD / mean of 72-h MME",
                float(x.std() / x.mean()),
                t["low"],
                t["high"],
                "; ".join(t["sources"]),
                True,
            )
        )
        skew = float(((x - x.mean()) ** 3).mean() / x.std() ** 3)
        out.append(Check(f"{name}: skewness of 72-h MME", skew, 0.0, None, "right tail (targets.spread)", True))
    red = 100 * (1 - p1.MME_0_72.mean() / c0.MME_0_72.mean())
    out.append(
        Check(
            "C1 vs C0: 72-h MME reduction (%)",
            float(red),
            3.0,
            60.0,
            "clinical.md 2: ERAS spine -7.26 mg (BJA 2025) to -164 mg (Neurosurgery 2024); Brusko 2019 "
            "-38 % on POD0-1; annsurg2023 ERAS RCT 112 vs 118 MME (-5 %)",
            False,
        )
    )
    # single adjuncts in opioid-tolerant patients on a PCA background (Nielsen 2017 -35 %; the LB pilot)
    tol_pop = spine72_population(n, seed, PopulationSpec().with_values(p_opioid_tolerant=1.0))
    niel = ev.trial("nielsen2017")
    base = _sim(arm_regimen(niel.arm("placebo")), tol_pop, seed).patients.MME_0_24.mean()
    ket = _sim(arm_regimen(niel.arm("ketamine")), tol_pop, seed).patients.MME_0_24.mean()
    out.append(
        Check(
            "tolerant, morphine PCA: intra-op S-ketamine, 0-24 h change (%)",
            float(100 * (ket / base - 1)),
            -55.0,
            -15.0,
            "Nielsen 2017: 79 vs 121 mg (-35 %, 95 % CI of the difference -59 to -25 mg); in the calibration",
            True,
        )
    )
    from .._model import Regimen, Scheduled

    plac = arm_regimen(niel.arm("placebo"))
    lb = Regimen(
        name="pca+lb",
        description="",
        horizon_h=72.0,
        pca=plac.pca,
        scheduled=plac.scheduled + (Scheduled("bupivacaine_liposomal", "infiltration", dose_mg=266.0, start_h=-0.25),),
    )
    lbr = _sim(lb, tol_pop, seed).patients
    out.append(
        Check(
            "tolerant, morphine PCA: liposomal bupivacaine 266 mg, 0-72 h change (%)",
            float(100 * (lbr.MME_0_72.mean() / _sim(plac, tol_pop, seed).patients.MME_0_72.mean() - 1)),
            None,
            0.0,
            "LB pilot RCT (brown2018): opioid-tolerant 13.3 vs 20.6 'MME' (-35 %, unit unclear, "
            "not in the calibration); clinical.md 2 (LB does little overall)",
            False,
        )
    )
    pk = lbr.PEAK_BUPI
    out.append(
        Check(
            "liposomal bupivacaine 266 mg: CV of the peak total concentration",
            float(pk.std() / pk.mean()),
            0.31,
            0.51,
            "Exparel label: Cmax 867 (SD 353) ng/mL, CV 41 % (+-10 points)",
            True,
        )
    )
    out.append(
        Check(
            "liposomal bupivacaine 266 mg: P(peak > 2,000 ng/mL)",
            float((pk > 2000).mean()),
            None,
            None,
            "a tail probability (CNS threshold ~2,000 ng/mL, clinical.md 3.1), reported",
            False,
        )
    )
    return out


def oird_scale(n: int = 2000, seed: int = 72, target: float = 0.005) -> float:
    """The ``AdverseEffectModel.d_ref`` (reference ventilatory depression) that gives the opioid-centric
    Iyer placebo arm a mean OIRD probability of ``target`` (Gupta 2018 base rate 5/1000, clinical.md 3.1).

    The cumulative hazard of every patient scales as ``1/d_ref**2``, so the value is found by a 1-D root
    search on the mean probability (brentq)."""
    from scipy.optimize import brentq

    from pkpd.pd import AdverseEffectModel

    ae = AdverseEffectModel()
    d0 = float(ae.d_ref.value)
    pop = spine72_population(n, seed, PopulationSpec().with_values(p_opioid_tolerant=0.0, age=(57.1, 10.0, 18.0, 75.0)))
    pts = _sim(get_regimen("IYER_PLACEBO"), pop, seed).patients
    h0 = -np.log1p(-np.clip(pts.P_OIRD.to_numpy(), 0, 1 - 1e-15))  # hazard incl. the OSA odds: approximate
    osa = pts.OSA.to_numpy(float) if "OSA" in pts else np.zeros(len(pts))
    p_raw = 1.0 - np.exp(-h0)
    odds0 = p_raw / (1 - p_raw) / np.where(osa > 0, float(ae.osa_or.value), 1.0)
    base_h = -np.log1p(-odds0 / (1 + odds0))  # the kernel's cumulative hazard at d0

    def mean_p(d):
        h = base_h * (d0 / d) ** 2
        p = np.clip(1.0 - np.exp(-h), 0.0, 1.0 - 1e-12)
        o = p / (1 - p) * np.where(osa > 0, float(ae.osa_or.value), 1.0)
        return float(np.mean(o / (1 + o))) - target

    return float(brentq(mean_p, d0 / 10, d0 * 10))


def _bounds(c: Check) -> str:
    if c.low is None and c.high is None:
        return "(reported)"
    if c.low is None:
        return f"<= {c.high:.3g}"
    if c.high is None:
        return f">= {c.low:.3g}"
    return f"{c.low:.3g} to {c.high:.3g}"


def checks_markdown(checks: list[Check], n: int, seed: int) -> str:
    from pkpd.outcome import outcome_posterior

    post = outcome_posterior()
    rows = [
        {
            "check": c.what,
            "simulated": f"{c.value:.3g}",
            "target": _bounds(c),
            "in the calibration": "yes (fit)" if c.fitted else "no",
            "result": "-" if (c.low is None and c.high is None) else ("pass" if c.passed else "**MISS**"),
            "source": c.source,
        }
        for c in checks
    ]
    df = pd.DataFrame(rows)
    lines = [
        "# Outcome model: checks against the stated targets",
        "",
        "<!-- Generated by `python -m regimens.calibration.checks`; do not edit by hand. -->",
        "",
        f"Exact simulator, outcome-model calibration {post.version} (rule {post.rule}; posterior medians and the "
        f"reference setting ({post.reference_trial}): pain-curve multiplier {post.reference_pain_scale():.3f}, "
        f"rescue propensity {post.reference_rescue_propensity():.3f}, heterogeneity "
        f"{post.reference_pain_spread():.3f}), {n} virtual patients per "
        f"arm, seed {seed}. Targets: `regimens/evidence/findings.toml`, stated before the fit. A row marked "
        "'yes (fit)' uses evidence that is also in the calibration: it checks the fit, it does not validate "
        "it.",
        "",
        "| " + " | ".join(df.columns) + " |",
        "|" + "|".join("---" for _ in df.columns) + "|",
    ]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in r) + " |")
    n_b = sum(1 for c in checks if c.low is not None or c.high is not None)
    n_p = sum(1 for c in checks if (c.low is not None or c.high is not None) and c.passed)
    lines += ["", f"{n_p} of {n_b} bounded checks pass."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regimens.calibration.checks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=72)
    ap.add_argument("--out", default="docs/outcome_checks.md")
    a = ap.parse_args(argv)
    checks = run_checks(a.n, a.seed)
    text = checks_markdown(checks, a.n, a.seed)
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
