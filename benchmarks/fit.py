"""Fitting benchmark: Theoph Laplace (diagonal and full omega), NUTS, SVI, individual forecast latency.

Prints compile time and run time separately, and compares with R nlme's fits of the same models on this
machine (stored in benchmarks/validation/theoph_nlme_reference.json, timed by theoph_nlme.R: median of 5
runs). Usage::

    PYTHONPATH=. python benchmarks/fit.py [--quick] [--skip-nuts]

Targets (issue 4, 2-core machine): Laplace <= 1.5 s after compile; NUTS 4 chains x (1000 warm-up + 1000
draws) <= 20 s; individual forecast <= 50 ms after compile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

import pkpd  # noqa: F401  (x64)
from pkpd.datasets import load_theoph
from pkpd.fit import build_problem, fit_laplace, load_model

HERE = Path(__file__).parent
REF = json.loads((HERE / "validation" / "theoph_nlme_reference.json").read_text())

DIAG = {
    "model": {"structure": "1cmt_oral"},
    "parameters": {"KE": {"estimate": 0.1}, "KA": {"estimate": 1.0, "iiv": 0.3}, "CL": {"estimate": 0.05, "iiv": 0.05}},
    "derived": {"V": "CL/KE"},
    "observations": {"conc": {"output": "CP", "error": "additive", "additive": 1.0}},
}
FULL = {
    **DIAG,
    "parameters": {
        "KE": {"estimate": 0.1, "iiv": 0.02},
        "KA": {"estimate": 1.0, "iiv": 0.3},
        "CL": {"estimate": 0.05, "iiv": 0.05},
    },
    "omega": {"block": [{"parameters": ["KE", "KA", "CL"], "values": [0.02, 0.0, 0.3, 0.0, 0.0, 0.05]}]},
}


def _ref(fit: str) -> dict:
    for key in ("fits", "models"):
        if key in REF and fit in REF[key]:
            return REF[key][fit]
    return REF[fit]


def time_laplace(spec_dict: dict, label: str, repeats: int) -> dict:
    df = load_theoph()
    spec = load_model(spec_dict)
    t0 = time.perf_counter()
    prob = build_problem(df, spec)
    t_build = time.perf_counter() - t0
    r = fit_laplace(prob)
    first = r.times["first_evaluation_s"]
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        prob2 = build_problem(df, spec)
        r2 = fit_laplace(prob2)
        runs.append(time.perf_counter() - t)
    nat = prob.packer.natural(r.u_full)
    out = {
        "label": label,
        "build_s": t_build,
        "compile_s": first,
        "fit_after_compile_s": statistics.median(runs),
        "estimation_only_s": r2.times["estimation_s"],
        "covariance_s": r2.times["covariance_s"],
        "minus2ll": r.minus2ll,
        "log_theta": np.log(np.asarray(nat["theta"])).tolist(),
        "omega_sd": np.sqrt(np.diag(np.asarray(nat["omega"]))).tolist(),
        "sigma": float(nat["sigma"][0]),
        "converged": r.converged,
    }
    return out


def time_forecast(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from pkpd.fit.forecast import _forecast_core, _grid_rows, forecast

    spec = {
        **DIAG,
        "parameters": {
            "KE": {"estimate": 0.0855},
            "KA": {"estimate": 1.61, "iiv": 0.428},
            "CL": {"estimate": 0.0397, "iiv": 0.028},
        },
        "observations": {"conc": {"output": "CP", "error": "additive", "additive": 0.708}},
    }
    df = load_theoph()
    p1 = df[df.ID == 1]
    pt = pd.concat([p1[p1.EVID == 1], p1[p1.EVID == 0].iloc[[3, 6]]]).reset_index(drop=True)
    times = np.linspace(0, 24, 49)
    t = time.perf_counter()
    forecast(spec, pt, n_draws=500, times=times)
    compile_s = time.perf_counter() - t
    e2e = []
    for k in range(repeats):
        t = time.perf_counter()
        forecast(spec, pt, n_draws=500, times=times, seed=k)
        e2e.append(time.perf_counter() - t)
    # the compiled core alone (what an optimizer calling it in a loop pays)
    aug, grid = _grid_rows(pt, times)
    prob = build_problem(aug, load_model(spec), require_observations=False)
    args = (
        jnp.asarray(prob.packer.init_full),
        jax.random.PRNGKey(0),
        500,
        jnp.asarray(prob.row_map[grid, 0]),
        jnp.asarray(prob.row_map[grid, 1]),
        jnp.zeros(grid.size, int),
        jnp.asarray(times),
    )
    jax.block_until_ready(_forecast_core(prob, *args))
    core = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(_forecast_core(prob, *args))
        core.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "end_to_end_s": statistics.median(e2e), "core_s": statistics.median(core)}


def time_bayes(quick: bool) -> dict:
    from pkpd.fit import bayes

    prob = build_problem(load_theoph(), load_model(DIAG))
    n = 200 if quick else 1000
    t = time.perf_counter()
    fit = bayes.fit_nuts(prob, num_chains=4, num_warmup=n, num_samples=n, seed=0, progress=False)
    total = time.perf_counter() - t
    out = {"nuts_total_s": total, "nuts_times": getattr(fit, "times", {}), "warmup": n, "samples": n}
    t = time.perf_counter()
    svi = bayes.fit_svi(prob, num_steps=2000 if not quick else 500, seed=0, progress=False)
    out["svi_total_s"] = time.perf_counter() - t
    out["svi_times"] = getattr(svi, "times", {})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and draws")
    ap.add_argument("--skip-nuts", action="store_true")
    a = ap.parse_args()
    reps = 3 if a.quick else 7
    res = {}
    for spec, label, ref in ((DIAG, "diagonal omega (KA, CL)", "ml_diag"), (FULL, "full 3x3 omega", "ml_symm")):
        r = time_laplace(spec, label, reps)
        rr = _ref(ref)
        res[label] = r
        print(
            f"\nTheoph Laplace, {label}: compile {r['compile_s']:.1f} s; fit after compile "
            f"{r['fit_after_compile_s']:.2f} s (median of {reps}; estimation {r['estimation_only_s']:.2f} s, "
            f"covariance {r['covariance_s']:.2f} s); -2LL {r['minus2ll']:.3f}; converged {r['converged']}"
        )
        print(f"  log typical values (lKe, lKa, lCl): {np.round(r['log_theta'], 4).tolist()}")
        print(f"  SD of random effects: {np.round(r['omega_sd'], 4).tolist()}; residual SD {r['sigma']:.4f}")
        ref_t = rr.get("wall_time", {}).get("median_s")
        print(
            f"  R nlme ({ref}, Lindstrom-Bates ML): -2LL {-2 * rr['logLik']:.3f}; fixed effects "
            f"{np.round(list(rr['fixed_effects'].values()), 4).tolist()}; RE SD "
            f"{np.round(list(rr['random_effect_sd'].values()), 4).tolist()}; fit time {ref_t} s (median of 5)"
        )
    f = time_forecast(reps * 3)
    res["forecast"] = f
    print(
        f"\nIndividual forecast (2 concentrations, 500 posterior draws, 49-point grid): compile {f['compile_s']:.1f} s; "
        f"compiled core {1000 * f['core_s']:.1f} ms; end to end incl. data preparation {1000 * f['end_to_end_s']:.0f} ms"
    )
    if not a.skip_nuts:
        try:
            b = time_bayes(a.quick)
            res["bayes"] = b
            print(
                f"\nNUTS 4 chains x ({b['warmup']} warm-up + {b['samples']} draws), vectorized: total "
                f"{b['nuts_total_s']:.1f} s; times {b['nuts_times']}"
            )
            print(f"SVI: total {b['svi_total_s']:.1f} s; times {b['svi_times']}")
        except ImportError as exc:
            print(f"\n(NUTS/SVI skipped: {exc})")
    print("\n" + json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
