"""The Laplace objective is a function of the population parameters alone (issue 21).

The conditional modes ``eta_i*`` are solved from ``eta = 0`` and from the warm start, each by damped
Newton with a trust radius and Armijo line search to a stated gradient tolerance
(:data:`pkpd.fit.laplace.INNER_GTOL`), and per subject the better converged mode is kept. So ``-2 log L`` at
fixed population parameters does not depend on where the inner search starts, and a subject is flagged
converged only when its returned point meets the criterion.

Data: a synthetic 2-compartment IV-infusion study simulated with the package's own simulator
(:meth:`pkpd.fit.problem.Problem.simulate_dv`): 20 subjects, one 4-20 min infusion of 500 mg each, 14
samples from 2 to 480 min (times in minutes), lean body mass as a covariate of CL, log-normal IIV on all
four parameters, combined error. Before the change, the objective at the initial estimates from a point
7.2 away was NaN for one of the three directions used here (the others agreed), and at other parameter
values the modes from a point 0.72 away gave -2LL hundreds of units higher with every mode flagged
converged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import pkpd.fit as pf
from pkpd.datasets import load_theoph
from pkpd.fit import laplace as lp

TIMES_MIN = [2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 360, 480]


def two_cmt_model(cl, v1, q, v2, iiv=0.09) -> dict:
    """2-cmt IV model, rates per minute (CL, Q in L/min), LBM power effect on CL, combined error."""
    return {
        "model": {"structure": "2cmt_iv"},
        "parameters": {
            "CL": {
                "estimate": cl,
                "iiv": iiv,
                "covariates": [{"covariate": "LBM", "relation": "power", "reference": 50.0, "estimate": 0.75}],
            },
            "V1": {"estimate": v1, "iiv": iiv},
            "Q": {"estimate": q, "iiv": iiv},
            "V2": {"estimate": v2, "iiv": iiv},
        },
        "observations": {"cp": {"output": "CP", "error": "combined", "proportional": 0.15, "additive": 0.05}},
    }


def two_cmt_design(n: int = 20, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        lbm, dur = float(rng.uniform(35, 70)), float(rng.choice([4, 10, 20]))
        rows.append(dict(ID=i, TIME=0.0, AMT=500.0, RATE=500.0 / dur, EVID=1, MDV=1, DV=0.0, CMT=1, LBM=lbm))
        rows += [dict(ID=i, TIME=float(t), AMT=0.0, RATE=0.0, EVID=0, MDV=0, DV=1.0, CMT=1, LBM=lbm) for t in TIMES_MIN]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    """DV simulated at CL 0.05 L/min, V1 10 L, Q 0.1 L/min, V2 30 L (omega^2 0.09 each)."""
    df = two_cmt_design()
    truth = pf.build_problem(df, pf.load_model(two_cmt_model(0.05, 10.0, 0.1, 30.0)))
    dv = np.asarray(truth.simulate_dv(truth.packer.full(jnp.asarray(truth.init_u())), jax.random.PRNGKey(3), 1))[0]
    df.loc[df["EVID"] == 0, "DV"] = dv
    return df


def _objective(prob, u, eta0, **kw):
    uf = prob.packer.full(jnp.asarray(u))
    eta, H, ok, _ = lp._modes_jit(prob, uf, jnp.asarray(eta0), **kw)
    return float(lp._vg_jit(prob, jnp.asarray(u), eta, H)[0]), np.asarray(eta), np.asarray(ok)


def _starts(prob, seed: int, radius: float) -> np.ndarray:
    d = np.random.default_rng(seed).normal(size=(prob.n_id, prob.n_eta))
    return radius * d / np.linalg.norm(d, axis=1, keepdims=True)


def _check_start_independent(prob, u):
    ref, eta_ref, ok_ref = _objective(prob, u, np.zeros((prob.n_id, prob.n_eta)))
    assert np.isfinite(ref) and ok_ref.all()
    spread = []
    for seed in range(3):
        for radius in (0.72, 7.2):
            v, eta, ok = _objective(prob, u, _starts(prob, seed, radius))
            assert ok.all(), (seed, radius)
            assert abs(v - ref) <= 1e-6, (seed, radius, v, ref)
            assert np.max(np.abs(eta - eta_ref)) <= 1e-5, (seed, radius)
            spread.append(abs(v - ref))
    return ref, max(spread)


@pytest.mark.slow  # 34 s; the default suite checks the same on Theoph (next test)
def test_objective_independent_of_inner_start_two_cmt(study):
    """At the initial estimates (CL 0.1, V1 5, Q 0.3, V2 20) -2LL from eta = 0 and from points 0.72 and 7.2
    away (three random directions per subject) agree within 1e-6 (seen: 1706.9461715, spread <= 5e-11), with
    every mode converged and the same modes to 1e-5."""
    prob = pf.build_problem(study, pf.load_model(two_cmt_model(0.1, 5.0, 0.3, 20.0)))
    ref, spread = _check_start_independent(prob, prob.init_u())
    print(f"2-cmt: -2LL {ref:.9f}, largest difference over starts {spread:.2g}")


def test_objective_independent_of_inner_start_theoph():
    """The same on Theoph at the model file's initial estimates (seen: 392.170349, spread <= 1e-12)."""
    prob = pf.build_problem(load_theoph(), pf.load_model("examples/models/theoph.toml"))
    ref, spread = _check_start_independent(prob, prob.init_u())
    print(f"Theoph: -2LL {ref:.9f}, largest difference over starts {spread:.2g}")


@pytest.mark.slow  # 33 s on the 2-cmt study (the Theoph objective check stays in the default run)
def test_convergence_flag_is_the_stated_criterion(study):
    """A subject flagged converged meets the stated criterion at the returned point (largest gradient component
    <= INNER_GTOL, or Newton decrement <= INNER_DECREMENT, each with its float64 rounding floor; Hessian
    positive definite) and every subject meeting it is flagged; a warm-only search (``from_zero=False``) from a
    point 72 away that cannot get there within 3 iterations is flagged not converged; with the eta = 0 start
    added (and the default 100 iterations) every subject converges."""
    prob = pf.build_problem(study, pf.load_model(two_cmt_model(0.1, 5.0, 0.3, 20.0)))
    uf = prob.packer.full(jnp.asarray(prob.init_u()))
    fn = lambda e: prob.neg_log_joint(uf, e)  # noqa: E731
    derivatives = jax.jit(lambda e: lp.grad_hess(fn, e))
    for kw in ({}, {"from_zero": False, "max_iter": 3}):
        eta, H, ok, _ = lp._modes_jit(prob, uf, jnp.asarray(_starts(prob, 0, 72.0)), **kw)
        g, Hx = derivatives(eta)
        g, Hx, ok = np.asarray(g), np.asarray(Hx), np.asarray(ok)
        w = np.linalg.eigvalsh(Hx)
        gmax = np.max(np.abs(g), axis=1)
        dec = np.einsum("ni,ni->n", g, np.linalg.solve(Hx, g[..., None])[..., 0])
        floor = np.finfo(float).eps * (1.0 + np.abs(np.asarray(fn(eta))))
        meets = (
            np.isfinite(gmax)
            & (w[:, 0] > 0)
            & ((gmax <= np.maximum(lp.INNER_GTOL, 1e3 * floor)) | (dec <= np.maximum(lp.INNER_DECREMENT, 10 * floor)))
        )
        np.testing.assert_array_equal(ok, meets, err_msg=str(kw))
        np.testing.assert_allclose(np.asarray(H)[ok], Hx[ok], rtol=1e-10, atol=1e-10)
        if kw.get("max_iter") == 3:
            assert not ok.all()
        else:
            assert ok.all(), kw


@pytest.mark.slow  # 20 s on the 2-cmt study
def test_non_finite_warm_start_falls_back(study):
    """A warm start where the model overflows (eta 1000 away) gives the objective from eta = 0."""
    prob = pf.build_problem(study, pf.load_model(two_cmt_model(0.1, 5.0, 0.3, 20.0)))
    u = prob.init_u()
    ref, _, _ = _objective(prob, u, np.zeros((prob.n_id, prob.n_eta)))
    v, _, ok = _objective(prob, u, _starts(prob, 1, 1000.0))
    assert ok.all() and abs(v - ref) <= 1e-6
