"""Inter-occasion variability: the Laplace -2LL equals the exact Gaussian marginal likelihood.

For an observation model linear in the random effects with additive error (``DV = E0 + SLOPE*TIME`` with
additive IIV and IOV on E0), the marginal distribution of a subject's data is exactly Gaussian:
``y_i ~ N(X_i beta, Z_i G Z_i' + sigma^2 I)`` with ``G = diag(omega^2, pi^2, pi^2)`` (one kappa per
occasion). The Laplace approximation is exact there, so our objective must equal scipy's multivariate
normal log-density (independent reference) to rounding (1e-8 relative).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

from pkpd.fit import build_problem, load_model
from pkpd.fit.laplace import _modes_jit, laplace_objective

E0, SLOPE, OM, PI, SIG = 5.0, -0.2, 0.8, 0.3, 0.5

SPEC = {
    "model": {"structure": "1cmt_iv"},
    "parameters": {
        "CL": {"estimate": 1.0, "fixed": True},
        "V": {"estimate": 10.0, "fixed": True},
        "E0": {"estimate": E0, "lower": -np.inf, "iiv": OM**2, "iiv_type": "additive"},
        "SLOPE": {"estimate": SLOPE, "lower": -np.inf},
    },
    "iov": {"E0": PI**2},
    "observations": {"score": {"output": "E0 + SLOPE*TIME", "error": "additive", "additive": SIG}},
}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, 7):
        e = rng.normal(0, OM)
        for occ, t0 in ((1, 0.0), (2, 24.0)):
            k = rng.normal(0, PI)
            for dt in (1.0, 2.0, 4.0):
                t = t0 + dt
                rows.append(
                    dict(ID=i, TIME=t, DV=E0 + e + k + SLOPE * t + rng.normal(0, SIG), MDV=0, EVID=0, CMT=1, OCC=occ)
                )
    return pd.DataFrame(rows)


def _exact_m2ll(df, e0, slope, om, pi, sig):
    total = 0.0
    for _, d in df.groupby("ID"):
        t = d.TIME.to_numpy()
        occ = d.OCC.to_numpy()
        Z = np.column_stack([np.ones_like(t), occ == 1, occ == 2]).astype(float)
        G = np.diag([om**2, pi**2, pi**2])
        cov = Z @ G @ Z.T + sig**2 * np.eye(len(t))
        total += multivariate_normal(e0 + slope * t, cov).logpdf(d.DV.to_numpy())
    return -2 * total


def test_iov_laplace_equals_exact_gaussian_marginal():
    df = _data()
    prob = build_problem(df, load_model(SPEC))
    assert prob.n_occ == 2 and prob.n_eta == 3
    # evaluate at a point away from the truth as well
    for e0, slope, om, pi, sig in ((E0, SLOPE, OM, PI, SIG), (4.2, -0.1, 1.3, 0.15, 0.9)):
        spec2 = load_model(
            {
                **SPEC,
                "parameters": {
                    **SPEC["parameters"],
                    "E0": {**SPEC["parameters"]["E0"], "estimate": e0, "iiv": om**2},
                    "SLOPE": {**SPEC["parameters"]["SLOPE"], "estimate": slope},
                },
                "iov": {"E0": pi**2},
                "observations": {"score": {**SPEC["observations"]["score"], "additive": sig}},
            }
        )
        p2 = build_problem(df, spec2)
        u = jnp.asarray(p2.init_u())
        eta, H, ok, _ = _modes_jit(p2, p2.packer.full(u), jnp.zeros((p2.n_id, p2.n_eta)))
        assert bool(np.all(ok))
        ours = float(laplace_objective(p2, u, eta, H))
        assert ours == pytest.approx(_exact_m2ll(df, e0, slope, om, pi, sig), rel=1e-8)
