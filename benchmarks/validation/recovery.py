"""Parameter recovery of the Laplace method on simulated studies with a weight and a genotype effect.

Acceptance criterion (issue 4): "Parameter recovery on simulated studies with a genotype effect and a
weight effect: for the Laplace method, over >= 20 replicate data sets, mean relative bias of typical
values <= 5 % and 95 % interval coverage within 85-100 %".

The replicate data sets are simulated **independently of the pkpd engine**: numpy, closed-form
one-compartment model with first-order absorption (Bateman function, Gibaldi & Perrier 1982, ch. 1),
superposition of two oral doses (100 mg at 0 and 12 h). Every replicate has the same number of subjects
and the same sample times (so every fit reuses one compiled program); weights, genotypes, random effects
and residual errors are redrawn.

True model (``TRUTH``)::

    CL_i = 5 L/h * (WT/70)^0.75 * ((1 - 0.6) + 0.6 * AS/2) * exp(eta_CL)      omega^2 = 0.09
    V_i  = 50 L  * (WT/70)^1.0                               * exp(eta_V)       omega^2 = 0.04
    KA_i = 1 /h                                              * exp(eta_KA)      omega^2 = 0.16
    DV   = C * (1 + 0.15 eps),  eps ~ N(0, 1)                (proportional error, CV 15 %)

``WT ~ U(50, 110)`` kg, CYP2D6 activity score ``AS`` in {0, 0.5, 1, 1.5, 2, 3} (frequencies 5, 10, 20,
20, 35, 10 %), the ``activity_score`` relation with the fraction of clearance by CYP2D6 at the reference
score 2 equal to 0.6. Both weight exponents and the fraction are estimated.

Each replicate is fitted with :func:`pkpd.fit.laplace.fit_laplace` from the same initial estimates (not
the truth). A 95 % interval of a free parameter is ``u_hat +- 1.96 se(u_hat)`` on the estimation scale
(``LaplaceFit.cov_u``): log for typical values (interval ``exp(.)``), logit for the activity-score fraction,
identity for the power exponents; the truth is covered when it lies inside.

Run (from the repository root)::

    PYTHONPATH=. .venv/bin/python benchmarks/validation/recovery.py              # 100 replicates
    PYTHONPATH=. .venv/bin/python benchmarks/validation/recovery.py --n-rep 20 --out recovery.json

It prints a table (true value, mean estimate, mean relative bias, 95 % coverage, per parameter) and writes
the per-replicate estimates and the table to ``--out`` (JSON) when given.

References
----------
Gibaldi M, Perrier D. Pharmacokinetics, 2nd ed. Marcel Dekker 1982 (one-compartment oral model).
Morris TP, White IR, Crowther MJ. Using simulation studies to evaluate statistical methods.
Stat Med 2019;38:2074-2102 (bias, coverage and their Monte Carlo standard errors).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# true values (natural scale)
TRUTH: dict[str, float] = {
    "CL": 5.0,  # L/h at 70 kg, activity score 2
    "V": 50.0,  # L at 70 kg
    "KA": 1.0,  # 1/h
    "CL~WT(power)": 0.75,
    "CL~CYP2D6_AS(activity_score)": 0.6,
    "V~WT(power)": 1.0,
    "omega(CL)": 0.09,
    "omega(V)": 0.04,
    "omega(KA)": 0.16,
    "conc.proportional": 0.15,
}
TYPICAL = ("CL", "V", "KA")
COEFFICIENTS = ("CL~WT(power)", "CL~CYP2D6_AS(activity_score)", "V~WT(power)")
DOSE_MG = 100.0
DOSE_TIMES = (0.0, 12.0)  # h
SAMPLE_TIMES = (0.5, 1.0, 2.0, 4.0, 8.0, 11.5, 14.0, 24.0)  # h
AS_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
AS_FREQ = (0.05, 0.10, 0.20, 0.20, 0.35, 0.10)


def model_dict() -> dict[str, Any]:
    """The fitted population model (TOML layout as a mapping); initial estimates differ from the truth."""
    return {
        "model": {"structure": "1cmt_oral", "description": "recovery study: weight and CYP2D6 effects"},
        "parameters": {
            "CL": {
                "estimate": 4.0,
                "unit": "L/h",
                "iiv": 0.2,
                "covariates": [
                    {"covariate": "WT", "relation": "power", "reference": 70, "estimate": 0.5},
                    {"covariate": "CYP2D6_AS", "relation": "activity_score", "reference": 2, "estimate": 0.4},
                ],
            },
            "V": {
                "estimate": 40.0,
                "unit": "L",
                "iiv": 0.1,
                "covariates": [{"covariate": "WT", "relation": "power", "reference": 70, "estimate": 0.8}],
            },
            "KA": {"estimate": 1.5, "unit": "1/h", "iiv": 0.2},
        },
        "observations": {"conc": {"output": "CP", "error": "proportional", "proportional": 0.2, "unit": "mg/L"}},
    }


def concentration(t: np.ndarray, cl: np.ndarray, v: np.ndarray, ka: np.ndarray) -> np.ndarray:
    """Closed-form one-compartment oral concentrations (mg/L), doses ``DOSE_MG`` at ``DOSE_TIMES``, F = 1.

    ``t`` (n_sample,) in h; ``cl`` (L/h), ``v`` (L), ``ka`` (1/h) per subject (n_sub,). Bateman function
    ``D ka / (V (ka - k)) (exp(-k s) - exp(-ka s))`` summed over doses given before ``t`` (``s = t - t_dose``).
    """
    k = (cl / v)[:, None]
    ka = ka[:, None]
    v = v[:, None]
    out = np.zeros((cl.size, t.size))
    for td in DOSE_TIMES:
        s = t[None, :] - td
        pos = s > 0
        s = np.where(pos, s, 0.0)
        out += np.where(pos, DOSE_MG * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s)), 0.0)
    return out


def simulate_study(rng: np.random.Generator, n_sub: int, truth: dict[str, float] = TRUTH) -> pd.DataFrame:
    """One replicate study as a NONMEM-format DataFrame (doses CMT 1, observations CMT 2)."""
    wt = rng.uniform(50.0, 110.0, n_sub)
    as_ = rng.choice(AS_VALUES, size=n_sub, p=AS_FREQ)
    eta = rng.normal(size=(n_sub, 3)) * np.sqrt([truth["omega(CL)"], truth["omega(V)"], truth["omega(KA)"]])
    f = truth["CL~CYP2D6_AS(activity_score)"]
    cl = truth["CL"] * (wt / 70.0) ** truth["CL~WT(power)"] * ((1.0 - f) + f * as_ / 2.0) * np.exp(eta[:, 0])
    v = truth["V"] * (wt / 70.0) ** truth["V~WT(power)"] * np.exp(eta[:, 1])
    ka = truth["KA"] * np.exp(eta[:, 2])
    t = np.asarray(SAMPLE_TIMES)
    conc = concentration(t, cl, v, ka)
    dv = conc * (1.0 + truth["conc.proportional"] * rng.normal(size=conc.shape))
    rows = []
    for i in range(n_sub):
        events = [(td, 0, DOSE_MG, 0.0) for td in DOSE_TIMES] + [(tt, 1, 0.0, dv[i, j]) for j, tt in enumerate(t)]
        for tt, is_obs, amt, y in sorted(events, key=lambda e: (e[0], e[1])):
            rows.append(
                {
                    "ID": i + 1,
                    "TIME": tt,
                    "AMT": amt,
                    "DV": y if is_obs else 0.0,
                    "MDV": 0 if is_obs else 1,
                    "EVID": 0 if is_obs else 1,
                    "CMT": 2 if is_obs else 1,
                    "WT": round(float(wt[i]), 2),
                    "CYP2D6_AS": float(as_[i]),
                }
            )
    return pd.DataFrame(rows)


def to_estimation_scale(packer, name: str, value: float) -> float:
    """A natural value of the packed parameter ``name`` on its estimation scale (packer.code)."""
    i = packer.names.index(name)
    code, lo, hi = int(packer.code[i]), float(packer.lower[i]), float(packer.upper[i])
    if code == 1:
        return math.log(value - lo)
    if code == 2:
        p = (value - lo) / (hi - lo)
        return math.log(p / (1.0 - p))
    if packer.kinds[i] in ("omega", "iov", "sigma"):
        raise ValueError("use natural() for variance parameters")
    return value


def natural_estimates(prob, u_full) -> dict[str, float]:
    """Estimates by name on the natural scale (typical values, coefficients, omega variances, sigma)."""
    pk = prob.packer
    nat = pk.natural(u_full)
    out: dict[str, float] = {}
    theta, beta = np.asarray(nat["theta"]), np.asarray(nat["beta"])
    for j in range(pk.n_theta):
        out[pk.names[j]] = float(theta[j])
    for j in range(pk.n_beta):
        out[pk.names[pk.n_theta + j]] = float(beta[j])
    om = np.asarray(nat["omega"])
    for k, n in enumerate(prob.spec.eta_names()):
        out[f"omega({n})"] = float(om[k, k])
    sig = np.asarray(nat["sigma"])
    s_names = [n for n, kd in zip(pk.names, pk.kinds) if kd == "sigma"]
    for n, s in zip(s_names, sig):
        out[n] = float(s)
    return out


def interval_covers(prob, fit, name: str, true_value: float, z: float = 1.959963984540054) -> bool | None:
    """Whether the 95 % Wald interval of the free parameter ``name`` (estimation scale) covers the truth;
    ``None`` when the fit has no covariance matrix."""
    if fit.cov_u is None:
        return None
    pk = prob.packer
    free = list(pk.free_names)
    j = free.index(name)
    u_hat = float(np.asarray(fit.u_full)[pk.names.index(name)])
    se = math.sqrt(float(fit.cov_u[j, j]))
    u_true = to_estimation_scale(pk, name, true_value)
    return bool(u_hat - z * se <= u_true <= u_hat + z * se)


def run_study(
    n_rep: int, n_sub: int = 40, seed: int = 20240604, progress: Callable[[int, dict], None] | None = None
) -> list[dict]:
    """Simulate and fit ``n_rep`` replicate studies; one record per replicate (estimates, coverage, status)."""
    from pkpd.fit import build_problem, load_model
    from pkpd.fit.laplace import fit_laplace

    spec = load_model(model_dict())
    rng = np.random.default_rng(seed)
    records = []
    for r in range(n_rep):
        data = simulate_study(rng, n_sub)
        t0 = time.perf_counter()
        prob = build_problem(data, spec)
        fit = fit_laplace(prob)
        est = natural_estimates(prob, fit.u_full)
        cover = {n: interval_covers(prob, fit, n, TRUTH[n]) for n in TYPICAL + COEFFICIENTS}
        rec = {
            "replicate": r + 1,
            "estimates": est,
            "covered": cover,
            "converged": bool(fit.converged),
            "message": fit.message,
            "cov_message": fit.cov_message,
            "minus2ll": float(fit.minus2ll),
            "seconds": time.perf_counter() - t0,
            "times": dict(fit.times),
            "n_sub": n_sub,
        }
        records.append(rec)
        if progress is not None:
            progress(r + 1, rec)
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Per parameter: truth, mean estimate, mean relative bias (and its Monte Carlo SE), coverage."""
    rows = []
    n = len(records)
    for name, true in TRUTH.items():
        est = np.array([rec["estimates"][name] for rec in records])
        rel = est / true - 1.0
        cov = [rec["covered"].get(name) for rec in records]
        has = [c for c in cov if c is not None]
        rows.append(
            {
                "parameter": name,
                "true": true,
                "mean": float(est.mean()),
                "sd": float(est.std(ddof=1)) if n > 1 else 0.0,
                "rel_bias": float(rel.mean()),
                "rel_bias_mcse": float(rel.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
                "coverage": (sum(has) / len(has)) if has else None,
                "n_intervals": len(has),
            }
        )
    return rows


def pooled_coverage(records: list[dict], names=TYPICAL + COEFFICIENTS) -> tuple[float, int]:
    """Coverage pooled over parameters and replicates; a missing covariance counts as a miss."""
    hits = [bool(rec["covered"].get(n)) for rec in records for n in names]
    return float(np.mean(hits)), len(hits)


def format_table(records: list[dict]) -> str:
    rows = summarize(records)
    n = len(records)
    n_conv = sum(r["converged"] for r in records)
    n_cov = sum(r["cov_message"].startswith("ok") for r in records)
    lines = [
        (
            f"Laplace recovery: {n} replicates x {records[0]['n_sub']} subjects; "
            f"{n_conv} converged, {n_cov} with a covariance matrix"
        ),
        (
            f"{'parameter':32s} {'true':>8s} {'mean':>9s} {'SD':>8s} {'rel.bias %':>11s} {'(MCSE)':>8s} "
            f"{'cover95 %':>9s}"
        ),
    ]
    for r in rows:
        cov = "-" if r["coverage"] is None else f"{100 * r['coverage']:.1f}"
        lines.append(
            f"{r['parameter']:32s} {r['true']:8.4g} {r['mean']:9.4g} {r['sd']:8.3g} "
            f"{100 * r['rel_bias']:11.2f} {100 * r['rel_bias_mcse']:8.2f} {cov:>9s}"
        )
    pc, m = pooled_coverage(records)
    lines.append(f"pooled 95 % coverage (typical values and coefficients, {m} intervals): {100 * pc:.1f} %")
    pt, mt = pooled_coverage(records, TYPICAL)
    lines.append(f"pooled 95 % coverage (typical values only, {mt} intervals): {100 * pt:.1f} %")
    worst = max(abs(r["rel_bias"]) for r in rows if r["parameter"] in TYPICAL)
    lines.append(f"largest |mean relative bias| of a typical value: {100 * worst:.2f} % (acceptance <= 5 %)")
    secs = [r["seconds"] for r in records]
    lines.append(
        f"time per replicate (build + fit + covariance): median {np.median(secs):.2f} s, first "
        f"{secs[0]:.1f} s (includes compilation), total {sum(secs):.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-rep", type=int, default=100, help="replicate studies (default 100)")
    ap.add_argument("--n-sub", type=int, default=40, help="subjects per study (default 40)")
    ap.add_argument("--seed", type=int, default=20240604)
    ap.add_argument("--out", type=Path, default=None, help="write per-replicate results and the table (JSON)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    def progress(k, rec):
        if not args.quiet:
            print(
                f"  replicate {k:3d}: -2LL {rec['minus2ll']:9.2f}  converged {rec['converged']}  "
                f"{rec['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    t0 = time.perf_counter()
    records = run_study(args.n_rep, args.n_sub, args.seed, progress)
    table = format_table(records)
    print(table)
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "truth": TRUTH,
                    "n_rep": args.n_rep,
                    "n_sub": args.n_sub,
                    "seed": args.seed,
                    "sample_times": SAMPLE_TIMES,
                    "dose_times": DOSE_TIMES,
                    "table": summarize(records),
                    "pooled_coverage": pooled_coverage(records)[0],
                    "replicates": records,
                    "table_text": table,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
