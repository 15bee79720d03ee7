"""Parameter recovery of the Laplace method (issue 4 acceptance).

"Parameter recovery on simulated studies with a genotype effect and a weight effect: for the Laplace
method, over >= 20 replicate data sets, mean relative bias of typical values <= 5 % and 95 % interval
coverage within 85-100 %."

The studies are simulated by ``benchmarks/validation/recovery.py`` with numpy and the closed-form
one-compartment oral model (independent of the pkpd engine); see its docstring for the true model
(CL with a power weight effect and a CYP2D6 activity-score effect, V with a power weight effect,
log-normal IIV on CL, V, KA, proportional error). Every replicate has the same design, so all fits share
one compiled program. The 95 % intervals are Wald intervals on the estimation scale built here from
``LaplaceFit.cov_u`` (log for typical values, logit for the activity-score fraction, identity for power
exponents).

Tolerances: the issue's -- mean relative bias of each typical value <= 5 % and 95 % coverage in
[85 %, 100 %], pooled over the typical values and the covariate coefficients (6 intervals per
replicate); a missing covariance matrix counts as a miss. The covariate coefficients are estimated less
precisely (SD of the CL weight exponent ~0.26 per study), so for them the test asks for no significant
bias: ``|mean bias| <= 3 Monte Carlo SE`` (Morris et al. 2019).

Monte Carlo noise: the 100-replicate benchmark (seed 20240604) gives pooled coverage 92.5 % (Wald
intervals from ML estimates with 40 subjects run slightly below 95 %: the omegas are ~10 % low); its five
blocks of 20 replicates give 85.8, 88.3, 98.3, 96.7 and 93.3 %, so a 20-replicate estimate has a SD of
about 5 % around ~92.5 % and a seed can land near the 85 % bound. The 20-replicate test uses seed 20240606
(pooled coverage 94.2 %, largest |bias| of a typical value 1.3 %); it and the 100-replicate benchmark run
under ``-m slow`` (51 s and several minutes); the default run checks the study simulator.

References
----------
Morris TP, White IR, Crowther MJ. Using simulation studies to evaluate statistical methods.
Stat Med 2019;38:2074-2102.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _recovery_module():
    spec = importlib.util.spec_from_file_location(
        "pkpd_recovery_benchmark", ROOT / "benchmarks" / "validation" / "recovery.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rec = _recovery_module()


def test_simulator_matches_engine_free_reference():
    """The simulator's closed form against a direct numerical integration (scipy solve_ivp) of the
    one-compartment oral ODEs with the two doses: 1e-7 relative. Guards the reference itself."""
    from scipy.integrate import solve_ivp

    cl, v, ka = np.array([4.0]), np.array([60.0]), np.array([0.7])
    t = np.asarray(rec.SAMPLE_TIMES)
    closed = rec.concentration(t, cl, v, ka)[0]

    def rhs(_, x):
        return [-ka[0] * x[0], ka[0] * x[0] - cl[0] / v[0] * x[1]]

    t12 = rec.DOSE_TIMES[1]
    kw = {"rtol": 1e-11, "atol": 1e-12, "method": "DOP853", "dense_output": True}
    s1 = solve_ivp(rhs, (0.0, t12), [rec.DOSE_MG, 0.0], **kw)
    s2 = solve_ivp(rhs, (t12, t.max()), s1.sol(t12) + [rec.DOSE_MG, 0.0], **kw)
    out = np.where(t <= t12, s1.sol(np.minimum(t, t12))[1], s2.sol(np.maximum(t, t12))[1]) / v[0]
    np.testing.assert_allclose(closed, np.array(out), rtol=1e-7)


def _check(records, n_rep):
    rows = {r["parameter"]: r for r in rec.summarize(records)}
    table = rec.format_table(records)
    print("\n" + table)
    n_conv = sum(r["converged"] for r in records)
    assert len(records) == n_rep
    assert n_conv >= 0.9 * n_rep, table
    for name in rec.TYPICAL:
        assert abs(rows[name]["rel_bias"]) <= 0.05, (name, table)
    for name in rec.COEFFICIENTS:
        assert abs(rows[name]["rel_bias"]) <= 3 * rows[name]["rel_bias_mcse"], (name, table)
    cov, n = rec.pooled_coverage(records)
    assert n == n_rep * (len(rec.TYPICAL) + len(rec.COEFFICIENTS))
    assert 0.85 <= cov <= 1.0, table


@pytest.mark.slow  # 51 s (see the module docstring)
def test_recovery_20_replicates():
    """20 replicate studies of 40 subjects x 8 samples (two doses): acceptance bounds of issue 4."""
    records = rec.run_study(n_rep=20, n_sub=40, seed=20240606)
    _check(records, 20)


@pytest.mark.slow
def test_recovery_100_replicates():
    """The full study: 100 replicates, the benchmark's defaults (seed 20240604)."""
    records = rec.run_study(n_rep=100, n_sub=40, seed=20240604)
    _check(records, 100)
