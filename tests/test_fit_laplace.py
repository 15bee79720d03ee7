"""Acceptance tests of the Laplace maximum-likelihood method (issue 4).

Each check compares with an independent reference:

* Theoph (R's ``datasets::Theoph``) against R ``nlme`` 3.1-162 (``fits.ml_diag`` of
  ``benchmarks/validation/theoph_nlme_reference.json``, produced by ``benchmarks/validation/theoph_nlme.R``);
* a model whose predictions are **linear in the random effects** with additive error, where the Laplace
  approximation is exact and the marginal likelihood is the multivariate normal
  ``y_i ~ N(X_i beta, Z_i Omega Z_i' + sigma^2 I)`` (Pinheiro & Bates 2000, ch. 2), computed with scipy;
* the M3 likelihood of BLQ records (Beal 2001) written by hand with ``scipy.stats.norm``, and a hand-written
  Laplace approximation (Newton on each subject, analytic Hessian with the inverse Mills ratio) of the
  censored linear model.

Bad input must raise :class:`pkpd.errors.PKPDError` subclasses whose messages name the problem (rows,
column, section) and the fix.

References
----------
Pinheiro JC, Bates DM. Mixed-Effects Models in S and S-PLUS. Springer 2000 (Theoph: section 8.2).
Beal SL. Ways to fit a PK model with some data below the quantification limit. J Pharmacokinet
Pharmacodyn 2001;28:481-504 (method M3).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

import pkpd.fit as pf
from pkpd.datasets import load_theoph
from pkpd.errors import DatasetError, ModelSpecError, PKPDError
from pkpd.fit import laplace as lp

ROOT = Path(__file__).resolve().parents[1]
NLME = json.loads((ROOT / "benchmarks" / "validation" / "theoph_nlme_reference.json").read_text())["fits"]["ml_diag"]
LOG2PI = math.log(2.0 * math.pi)

THEOPH_MODEL = {
    "model": {"structure": "1cmt_oral"},
    "parameters": {"KE": {"estimate": 0.1}, "KA": {"estimate": 1.0, "iiv": 0.3}, "CL": {"estimate": 0.05, "iiv": 0.05}},
    "derived": {"V": "CL/KE"},
    "observations": {"conc": {"output": "CP", "error": "additive", "additive": 1.0}},
}


# ---------------------------------------------------------------------------------------------------
# Theoph vs R nlme


@pytest.fixture(scope="module")
def theoph():
    spec = pf.load_model(THEOPH_MODEL)
    prob = pf.build_problem(load_theoph(), spec)
    fit = lp.fit_laplace(prob)
    return prob, fit


@pytest.mark.slow  # 20 s of compiling with all of XLA's optimizations
def test_fast_compiled_objective_equals_the_optimized_one(theoph):
    """The fitting programs are compiled for compile speed (``pkpd.fit.problem.fit_jit``: LLVM's optimizations
    off, :mod:`pkpd.xla`). The Laplace objective and its gradient away from the optimum equal those of the
    same function compiled with XLA's optimizations (the reference) to rounding: relative 1e-12 (float64;
    seen 0 and 2e-15). The modes change code generation, not the arithmetic."""
    from pkpd import xla

    prob, fit = theoph
    u = np.asarray(prob.packer.free_part(fit.u_full)) + 0.05
    args = (prob, u, fit.eta, fit.eta_hess)
    v_fast, g_fast = lp._vg_jit(*args)
    v_ref, g_ref = xla.jit(jax.value_and_grad(lp.laplace_objective, argnums=1), fast_compile=False)(*args)
    assert float(v_fast) == pytest.approx(float(v_ref), rel=1e-12)
    g_fast, g_ref = np.asarray(g_fast), np.asarray(g_ref)
    assert np.max(np.abs(g_fast - g_ref)) <= 1e-12 * np.max(np.abs(g_ref))
    assert np.max(np.abs(g_ref)) > 1.0  # away from the optimum: the gradient is not ~0


def test_theoph_matches_nlme(theoph):
    """Same model as nlme's ``ml_diag`` (SSfol; KE without IIV; KA, CL log-normal IIV; additive error).

    Tolerances (issue 4): typical values ``exp(fixed effect)`` within 2 % relative (equivalently
    ``|delta log| <= 0.02``; a relative tolerance on the log itself is ill-posed since lKa ~ 0.47),
    random-effect SDs ``sqrt(omega)`` and the residual SD within 10 %. nlme maximizes the Lindstrom-Bates
    (FOCE-class) linearized likelihood, we maximize the Laplace approximation, so agreement is close but
    not exact (seen: |delta log| 0.004, 0.013, 0.0005; SDs within 1.6 %).
    """
    prob, fit = theoph
    assert fit.converged, fit.message
    nat = prob.packer.natural(fit.u_full)
    theta = dict(zip(prob.spec.parameter_names, np.asarray(nat["theta"])))
    ref = NLME["fixed_effects"]
    for ours, theirs in (("KE", "lKe"), ("KA", "lKa"), ("CL", "lCl")):
        rel = theta[ours] / math.exp(ref[theirs]) - 1.0
        assert abs(rel) <= 0.02, (ours, theta[ours], math.exp(ref[theirs]))
    sd = np.sqrt(np.diag(np.asarray(nat["omega"])))
    eta_names = prob.spec.eta_names()
    for ours, theirs in (("KA", "lKa"), ("CL", "lCl")):
        rel = sd[eta_names.index(ours)] / NLME["random_effect_sd"][theirs] - 1.0
        assert abs(rel) <= 0.10, (ours, sd[eta_names.index(ours)], NLME["random_effect_sd"][theirs])
    sigma = float(np.asarray(nat["sigma"])[0])
    assert abs(sigma / NLME["residual_sd"] - 1.0) <= 0.10, sigma


def test_theoph_minus2ll_close_to_nlme(theoph):
    """-2LL: ours is the Laplace approximation (all constants), nlme's ``-2 logLik`` is that of its
    linearized (Lindstrom-Bates) model; the two approximations differ slightly. Seen: 355.74 vs 354.04
    (Laplace 1.7 units higher). Tolerance 3 units; the sign of the difference is not asserted."""
    _, fit = theoph
    ref = -2.0 * NLME["logLik"]
    assert abs(fit.minus2ll - ref) < 3.0, (fit.minus2ll, ref)


def test_theoph_individual_parameters_close_to_nlme(theoph):
    """Conditional modes: individual log KA and log CL (``coef()`` of nlme) within 0.02 on the log scale
    (2 %; nlme's are at its own estimates, which differ by 0.013 in lKa; seen: at most 0.0097)."""
    prob, fit = theoph
    u = dict(zip(prob.packer.names, np.asarray(fit.u_full)))
    eta_names = prob.spec.eta_names()
    ids = [int(i) for i in prob.ids]
    coef = {int(r["ID"]): r for r in NLME["coef"]}
    for i, sid in enumerate(ids):
        for ours, theirs in (("KA", "lKa"), ("CL", "lCl")):
            mine = u[ours] + fit.eta[i, eta_names.index(ours)]
            assert abs(mine - coef[sid][theirs]) < 0.02, (sid, ours, mine, coef[sid][theirs])


def test_theoph_standard_errors_close_to_nlme(theoph):
    """SEs of the log typical values vs nlme's unadjusted ``sqrt(diag(varFix))``: within 5 % (seen: 1.4 %,
    0.7 %, 0.2 %). Different approximations: ours is the inverse Hessian of the Laplace -2LL over all
    parameters, nlme's the GLS covariance of its linearized model at fixed variance parameters."""
    prob, fit = theoph
    assert fit.cov_u is not None, fit.cov_message
    free = list(prob.packer.free_names)
    for ours, theirs in (("KE", "lKe"), ("KA", "lKa"), ("CL", "lCl")):
        se = math.sqrt(fit.cov_u[free.index(ours), free.index(ours)])
        ref = NLME["fixed_effects_se_unadjusted"][theirs]
        assert abs(se / ref - 1.0) < 0.05, (ours, se, ref)


def test_nonconvergence_is_reported(theoph):
    """maxiter = 2 stops BFGS early: ``converged`` is False and the message says why (no exception)."""
    prob, _ = theoph
    fit = lp.fit_laplace(prob, maxiter=2, covariance=False)
    assert not fit.converged
    assert "BFGS stopped" in fit.message and "iterations" in fit.message, fit.message
    assert np.isfinite(fit.minus2ll)


# ---------------------------------------------------------------------------------------------------
# a model linear in the random effects: the Laplace approximation is exact

LIN_TIMES = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0])
LIN_NSUB = 24
LIN_TRUTH = {"E0": 10.0, "SLOPE": 0.9, "omega": np.array([[1.0, -0.05], [-0.05, 0.02]]), "sigma": 0.5}


def linear_model(error: str = "additive", output: str = "E0 - SLOPE*TIME", extra: dict | None = None) -> dict:
    """``y = E0_i - SLOPE_i * TIME + eps`` with additive IIV on E0 and SLOPE (a correlated block); the
    structural PK model (1cmt_iv, CL and V fixed) is not used by the output."""
    params = {
        "CL": {"estimate": 1.0, "fixed": True},
        "V": {"estimate": 10.0, "fixed": True},
        "E0": {"estimate": 8.0, "iiv_type": "additive", "iiv": 0.5},
        "SLOPE": {"estimate": 0.5, "iiv_type": "additive", "iiv": 0.05},
    }
    params.update(extra or {})
    obs = {"output": output, "error": error}
    obs.update({"additive": 1.0} if error == "additive" else {"sigma": 0.3})
    return {
        "model": {"structure": "1cmt_iv"},
        "parameters": params,
        "omega": {"block": [{"parameters": ["E0", "SLOPE"], "values": [0.5, 0.0, 0.05]}]},
        "observations": {"y": obs},
    }


def linear_data(seed: int, lloq: float | None = None, blq_mode: str = "m3", truth=LIN_TRUTH) -> pd.DataFrame:
    """Simulated data (numpy) from the linear model; with ``lloq``, observations below it are flagged
    BLQ = 1 (``m3``) or replaced by LLOQ/2 with BLQ = 0 (``half``). Same shapes for every call."""
    rng = np.random.default_rng(seed)
    b = rng.multivariate_normal(np.zeros(2), truth["omega"], size=LIN_NSUB)
    rows = []
    for i in range(LIN_NSUB):
        rows.append(
            {"ID": i + 1, "TIME": 0.0, "AMT": 100.0, "DV": 0.0, "MDV": 1, "EVID": 1, "CMT": 1, "BLQ": 0, "LLOQ": 0.0}
        )
        y = (
            (truth["E0"] + b[i, 0])
            - (truth["SLOPE"] + b[i, 1]) * LIN_TIMES
            + truth["sigma"] * rng.normal(size=LIN_TIMES.size)
        )
        for t, v in zip(LIN_TIMES, y):
            blq = lloq is not None and v < lloq
            dv = v if not blq else (0.0 if blq_mode == "m3" else lloq / 2)
            rows.append(
                {
                    "ID": i + 1,
                    "TIME": t,
                    "AMT": 0.0,
                    "DV": dv,
                    "MDV": 0,
                    "EVID": 0,
                    "CMT": 1,
                    "BLQ": int(blq and blq_mode == "m3"),
                    "LLOQ": lloq if lloq is not None else 0.0,
                }
            )
    return pd.DataFrame(rows)


def u_from_natural(prob, e0: float, slope: float, omega: np.ndarray, sigma: float, extra=None) -> np.ndarray:
    """Full estimation-scale vector for given natural values (log typical values, Cholesky with log
    diagonal, log sigma), checked by the packer's own inverse."""
    pk = prob.packer
    u = np.array(pk.init_full, float)
    L = np.linalg.cholesky(omega)
    vals = {
        "E0": math.log(e0),
        "SLOPE": math.log(slope),
        "omega(E0)": math.log(L[0, 0]),
        "omega(SLOPE,E0)": L[1, 0],
        "omega(SLOPE)": math.log(L[1, 1]),
    }
    vals.update(extra or {})
    for n, v in vals.items():
        u[pk.names.index(n)] = v
    u[next(i for i, k in enumerate(pk.kinds) if k == "sigma")] = math.log(sigma)
    nat = pk.natural(jnp.asarray(u))
    np.testing.assert_allclose(np.asarray(nat["omega"]), omega, rtol=1e-12, atol=1e-14)
    return u


def per_subject(prob):
    """(y, t, blq, lloq) per subject from the problem's observation arrays (records in file order)."""
    o = prob.obs
    out = []
    for i in range(prob.n_id):
        m = o["id"] == i
        out.append((o["dv"][m], o["time"][m], o["blq"][m], o["lloq"][m]))
    return out


def gaussian_minus2ll(prob, e0, slope, omega, sigma) -> float:
    """Exact -2 log L of the linear model: sum over subjects of the multivariate normal log-density."""
    tot = 0.0
    for y, t, blq, _ in per_subject(prob):
        assert not blq.any()
        Z = np.column_stack([np.ones_like(t), -t])
        cov = Z @ omega @ Z.T + sigma**2 * np.eye(t.size)
        tot += scipy.stats.multivariate_normal(e0 - slope * t, cov).logpdf(y)
    return -2.0 * tot


def m3_laplace_minus2ll(prob, e0, slope, omega, sigma) -> tuple[float, np.ndarray]:
    """Hand-written Laplace -2 log L of the censored linear model (M3), and the modes.

    Per subject ``l(eta) = -sum_obs log N(y; f, sigma) - sum_blq log Phi((LLOQ - f)/sigma)
    - log N(eta; 0, Omega)`` with ``f = (E0 + eta_1) - (SLOPE + eta_2) t`` (linear in eta: ``f = a + Z eta``).
    Gradient and Hessian are analytic: for a BLQ term with ``z = (LLOQ - f)/sigma`` and the inverse Mills
    ratio ``m = phi(z)/Phi(z)``, ``d/deta = m Z/sigma`` and ``d2/deta2 = m (z + m) Z Z'/sigma^2``.
    ``-2 log L = sum_i [2 l_i(eta*) + log det H_i - K log 2 pi]``.
    """
    oinv = np.linalg.inv(omega)
    _, logdet_om = np.linalg.slogdet(omega)
    tot, modes = 0.0, []
    for y, t, blq, lloq in per_subject(prob):
        Z = np.column_stack([np.ones_like(t), -t])
        a = e0 - slope * t

        def parts(eta, a=a, Z=Z, y=y, blq=blq, lloq=lloq):
            f = a + Z @ eta
            val = 0.5 * eta @ oinv @ eta + 0.5 * logdet_om + LOG2PI
            g = oinv @ eta
            H = oinv.copy()
            n = ~blq
            r = (y[n] - f[n]) / sigma
            val += np.sum(0.5 * r * r + math.log(sigma) + 0.5 * LOG2PI)
            g += -(Z[n].T @ r) / sigma
            H += Z[n].T @ Z[n] / sigma**2
            z = (lloq[blq] - f[blq]) / sigma
            logphi = scipy.special.log_ndtr(z)
            m = np.exp(scipy.stats.norm.logpdf(z) - logphi)
            val += -np.sum(logphi)
            g += Z[blq].T @ m / sigma
            H += (Z[blq].T * (m * (z + m))) @ Z[blq] / sigma**2
            return val, g, H

        eta = np.zeros(2)
        for _ in range(100):
            _, g, H = parts(eta)
            step = np.linalg.solve(H, g)
            eta = eta - step
            if np.max(np.abs(step)) < 1e-13:
                break
        val, g, H = parts(eta)
        assert np.max(np.abs(g)) < 1e-9
        tot += 2.0 * val + np.linalg.slogdet(H)[1] - 2 * LOG2PI
        modes.append(eta)
    return tot, np.array(modes)


def pkpd_minus2ll_at(prob, u_full) -> tuple[float, np.ndarray]:
    """Our Laplace objective at fixed parameters: conditional modes then ``laplace_objective``."""
    uf = jnp.asarray(u_full)
    eta, H, ok, _ = lp._modes_jit(prob, uf, jnp.zeros((prob.n_id, prob.n_eta)))
    assert np.all(np.asarray(ok))
    val, _ = lp._vg_jit(prob, jnp.asarray(prob.packer.free_part(u_full)), eta, H)
    return float(val), np.asarray(eta)


@pytest.fixture(scope="module")
def linear():
    spec = pf.load_model(linear_model())
    prob = pf.build_problem(linear_data(seed=11), spec)
    return spec, prob


AT = {"e0": 9.3, "slope": 0.8, "omega": np.array([[1.3, -0.08], [-0.08, 0.03]]), "sigma": 0.6}


def test_linear_model_laplace_is_exact(linear):
    """Predictions linear in eta, additive error: the Laplace approximation is the exact marginal
    likelihood, a product of multivariate normals (scipy). Same parameters (not the optimum) for both;
    tolerance 1e-8 relative (floating point only)."""
    _, prob = linear
    u = u_from_natural(prob, AT["e0"], AT["slope"], AT["omega"], AT["sigma"])
    ours, _ = pkpd_minus2ll_at(prob, u)
    ref = gaussian_minus2ll(prob, AT["e0"], AT["slope"], AT["omega"], AT["sigma"])
    assert ours == pytest.approx(ref, rel=1e-8)
    # the per-subject Gaussian constants: N (all observations) log(2 pi) is inside -2LL
    assert prob.n_normal_obs == prob.n_obs == LIN_NSUB * LIN_TIMES.size


def test_linear_model_ml_estimates_match_exact_gaussian_fit(linear):
    """fit_laplace's estimates equal the maximizer of the exact Gaussian likelihood found by scipy
    (BFGS on E0, SLOPE, Cholesky of Omega with log diagonal, log sigma, from another start): relative
    1e-4 on every natural parameter (omega entries: 1e-4 of the largest variance), -2LL to 1e-6."""
    _, prob = linear
    fit = lp.fit_laplace(prob, covariance=False)
    assert fit.converged, fit.message

    def unpack(x):
        L = np.array([[math.exp(x[2]), 0.0], [x[3], math.exp(x[4])]])
        return x[0], x[1], L @ L.T, math.exp(x[5])

    res = scipy.optimize.minimize(
        lambda x: gaussian_minus2ll(prob, *unpack(x)),
        np.array([9.0, 1.0, 0.0, 0.0, -2.0, 0.0]),
        method="BFGS",
        options={"gtol": 1e-8, "maxiter": 2000},
    )
    e0, slope, omega, sigma = unpack(res.x)
    nat = prob.packer.natural(fit.u_full)
    theta = dict(zip(prob.spec.parameter_names, np.asarray(nat["theta"])))
    assert theta["E0"] == pytest.approx(e0, rel=1e-4)
    assert theta["SLOPE"] == pytest.approx(slope, rel=1e-4)
    np.testing.assert_allclose(np.asarray(nat["omega"]), omega, atol=1e-4 * np.max(np.diag(omega)))
    assert float(np.asarray(nat["sigma"])[0]) == pytest.approx(sigma, rel=1e-4)
    assert fit.minus2ll == pytest.approx(res.fun, abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# M3 (BLQ) likelihood and the OFV constant


@pytest.fixture(scope="module")
def censored(linear):
    spec, _ = linear
    data = linear_data(seed=5, lloq=3.5)
    prob = pf.build_problem(data, spec)
    n_blq = int(data["BLQ"].sum())
    assert 0.1 < n_blq / prob.n_obs < 0.4  # the design censors a substantial fraction
    return prob, data


_obs_loglik = jax.jit(lambda prob, u, eta: prob.obs_loglik(u, eta))  # the Problem is an argument (a pytree)


def _hand_obs_loglik(y, f, sd, blq, lloq, log=False):
    if log:
        yl, fl, ll = np.log(np.where(blq, 1.0, y)), np.log(f), np.log(lloq)
    else:
        yl, fl, ll = y, f, lloq
    return np.where(blq, scipy.stats.norm.logcdf((ll - fl) / sd), scipy.stats.norm.logpdf(yl, fl, sd))


def test_m3_observation_loglik_matches_scipy(censored):
    """Per observation at given parameters and (non-zero) etas: BLQ records contribute
    ``log Phi((LLOQ - f)/sd)``, the others ``log N(y; f, sd)``; predictions ``f`` by hand. 1e-10."""
    prob, _ = censored
    u = u_from_natural(prob, AT["e0"], AT["slope"], AT["omega"], AT["sigma"])
    eta = np.random.default_rng(3).normal(size=(prob.n_id, 2)) * [1.0, 0.15]
    ours = np.asarray(_obs_loglik(prob, jnp.asarray(u), jnp.asarray(eta)))
    o = prob.obs
    f = (AT["e0"] + eta[o["id"], 0]) - (AT["slope"] + eta[o["id"], 1]) * o["time"]
    ref = _hand_obs_loglik(o["dv"], f, AT["sigma"], o["blq"], o["lloq"])
    assert o["blq"].sum() > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_m3_observation_loglik_lognormal_error():
    """Log-normal error: ``log DV ~ N(log f, sigma)`` (no Jacobian) and ``log Phi((log LLOQ - log f)/sigma)``
    for BLQ records; the LLOQ comes from the model file (``lloq``), BLQ flags from DV < LLOQ. 1e-10."""
    spec_d = linear_model(error="lognormal")
    spec_d["observations"]["y"]["lloq"] = 2.5
    spec = pf.load_model(spec_d)
    data = linear_data(seed=5, lloq=None).drop(columns=["BLQ", "LLOQ"])
    data.loc[(data.EVID == 0) & (data.DV < 2.5), "DV"] = 1.0  # reported below the LLOQ
    prob = pf.build_problem(data, spec)
    o = prob.obs
    assert o["blq"].sum() > 0 and np.all(o["lloq"] == 2.5)
    u = u_from_natural(prob, 12.0, 0.8, AT["omega"], 0.25)
    eta = np.random.default_rng(4).normal(size=(prob.n_id, 2)) * [0.5, 0.05]
    ours = np.asarray(_obs_loglik(prob, jnp.asarray(u), jnp.asarray(eta)))
    f = (12.0 + eta[o["id"], 0]) - (0.8 + eta[o["id"], 1]) * o["time"]
    assert np.all(f > 0)
    ref = _hand_obs_loglik(o["dv"], f, 0.25, o["blq"], o["lloq"], log=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_m3_laplace_objective_and_ofv_constant(censored):
    """The whole Laplace objective with BLQ records against a hand-written Laplace approximation
    (scipy Newton, analytic Hessian): 1e-8 relative. The Gaussian constant ``N log(2 pi)`` counts only
    the non-BLQ records, so NONMEM's OFV (without constant) is ``minus2ll - n_normal_obs log(2 pi)``."""
    prob, data = censored
    n_blq = int(data["BLQ"].sum())
    assert prob.n_normal_obs == prob.n_obs - n_blq
    u = u_from_natural(prob, AT["e0"], AT["slope"], AT["omega"], AT["sigma"])
    ours, eta = pkpd_minus2ll_at(prob, u)
    ref, modes = m3_laplace_minus2ll(prob, AT["e0"], AT["slope"], AT["omega"], AT["sigma"])
    np.testing.assert_allclose(eta, modes, atol=1e-5)  # inner Newton tolerance
    assert ours == pytest.approx(ref, rel=1e-8)
    # OFV: the hand objective with no constant on the Gaussian records
    ofv_hand = ref - (prob.n_obs - n_blq) * LOG2PI
    assert ours - ofv_hand == pytest.approx(prob.n_normal_obs * LOG2PI, rel=1e-8)
    assert abs((ours - ofv_hand) - prob.n_obs * LOG2PI) > 1.0  # BLQ records are not counted


def test_m3_fit_recovers_better_than_half_lloq_imputation(linear):
    """Same simulated study (about 20 % of records below LLOQ = 3.5) fitted with M3 and with the BLQ
    values replaced by LLOQ/2 (Beal's M6-like imputation). M3 must converge and be closer to the truth
    (sum of squared relative errors of E0, SLOPE, sigma and the SDs of the random effects), and its
    typical values within 10 % of the truth."""
    spec, _ = linear
    err = {}
    for mode in ("m3", "half"):
        prob = pf.build_problem(linear_data(seed=21, lloq=3.5, blq_mode=mode), spec)
        fit = lp.fit_laplace(prob, covariance=False)
        assert fit.converged, (mode, fit.message)
        nat = prob.packer.natural(fit.u_full)
        th = dict(zip(spec.parameter_names, np.asarray(nat["theta"])))
        sd = np.sqrt(np.diag(np.asarray(nat["omega"])))
        est = np.array([th["E0"], th["SLOPE"], float(np.asarray(nat["sigma"])[0]), sd[0], sd[1]])
        true = np.array(
            [LIN_TRUTH["E0"], LIN_TRUTH["SLOPE"], LIN_TRUTH["sigma"], *np.sqrt(np.diag(LIN_TRUTH["omega"]))]
        )
        err[mode] = est / true - 1.0
    assert np.all(np.abs(err["m3"][:2]) < 0.10), err["m3"]
    assert np.sum(err["m3"] ** 2) < np.sum(err["half"] ** 2), err


# ---------------------------------------------------------------------------------------------------
# an over-parameterized model


def test_overparameterized_model_reports_covariance_unavailable():
    """``y = E0 - A * B * TIME``: only the product A*B is identifiable, so the Hessian of -2LL is
    singular. The fit must run, and the covariance step must say that standard errors are unavailable
    (``cov_u is None`` with a message naming the cause), not crash or report an 'ok' covariance.

    Data seed 1: the rounding-noise eigenvalue of the singular Hessian happens to be positive (~1e-10), the
    case a sign test misses; the check is relative to the largest eigenvalue."""
    d = linear_model(output="E0 - A*B*TIME", extra={"A": {"estimate": 0.7}, "B": {"estimate": 1.2}})
    d["parameters"]["SLOPE"] = {"estimate": 0.5, "fixed": True}  # not used by the output
    d["omega"] = {}
    d["parameters"]["E0"]["iiv"] = 0.5
    d["parameters"]["SLOPE"].pop("iiv", None)
    spec = pf.load_model(d)
    prob = pf.build_problem(linear_data(seed=1), spec)
    fit = lp.fit_laplace(prob)
    assert np.isfinite(fit.minus2ll)
    nat = prob.packer.natural(fit.u_full)
    th = dict(zip(spec.parameter_names, np.asarray(nat["theta"])))
    assert th["A"] * th["B"] == pytest.approx(LIN_TRUTH["SLOPE"], rel=0.1)
    assert fit.cov_u is None, fit.cov_message
    assert "standard errors unavailable" in fit.cov_message


# ---------------------------------------------------------------------------------------------------
# bad input: clear errors with the fix


BAD_MODEL = {
    "model": {"structure": "1cmt_oral"},
    "parameters": {
        "CL": {"estimate": 5.0, "iiv": 0.1, "covariates": [{"covariate": "WT", "relation": "power", "reference": 70}]},
        "V": {"estimate": 50.0},
        "KA": {"estimate": 1.0},
    },
    "iov": {"CL": 0.02},
    "observations": {
        "conc": {"dvid": 1, "output": "CP", "error": "proportional"},
        "other": {"dvid": 2, "output": "CP", "error": "additive"},
    },
}


def _good_rows(n_id=3):
    rows = []
    for i in range(1, n_id + 1):
        rows.append(
            {"ID": i, "TIME": 0, "AMT": 100, "DV": 0, "MDV": 1, "EVID": 1, "CMT": 1, "DVID": 1, "WT": 70.0, "OCC": 1}
        )
        for t in (1, 2, 4):
            rows.append(
                {
                    "ID": i,
                    "TIME": t,
                    "AMT": 0,
                    "DV": 1.0,
                    "MDV": 0,
                    "EVID": 0,
                    "CMT": 2,
                    "DVID": 1,
                    "WT": 70.0,
                    "OCC": 1,
                }
            )
    return rows


def test_dataset_faults_all_reported_with_rows():
    """One dataset with six faults: each is a DatasetViolation with its 1-based row numbers and a fix."""
    spec = pf.load_model(BAD_MODEL)
    df = pd.DataFrame(_good_rows()).astype(object)
    df.loc[1, "DV"] = np.nan  # row 2: an observation without DV
    df.loc[2, "DVID"] = 7  # row 3: unknown DVID
    df["BLQ"] = 0
    df.loc[3, "BLQ"] = 1  # row 4: BLQ without any LLOQ
    df.loc[5, "WT"] = "heavy"  # row 6: non-numeric covariate
    df.loc[9, "WT"] = 0.0  # row 10: power covariate <= 0
    df.loc[11, "OCC"] = np.nan  # row 12: OCC missing with [iov]
    with pytest.raises(DatasetError) as exc:
        pf.build_problem(df, spec)
    err = exc.value
    assert isinstance(err, PKPDError)
    by = {}
    for v in err.violations:
        by.setdefault(v.column, []).append(v)

    def find(col, row, *words):
        for v in by.get(col, []):
            if row in v.rows and all(w in v.message for w in words):
                return v
        raise AssertionError(f"no violation for column {col} row {row} {words}: {err}")

    find("DV", 2, "MDV = 1")
    find("DVID", 3, "7", "not declared")
    find("LLOQ", 4, "LLOQ")
    find("WT", 6, "number")
    find("WT", 10, "> 0")
    find("OCC", 12, "OCC")
    text = str(err)
    for r in ("row 2", "row 3", "row 4", "row 6", "row 10", "row 12"):
        assert r in text, text


def test_missing_occ_column_with_iov():
    spec = pf.load_model(BAD_MODEL)
    df = pd.DataFrame(_good_rows()).drop(columns=["OCC"])
    with pytest.raises(DatasetError, match="OCC column"):
        pf.build_problem(df, spec)


def test_missing_covariate_column_names_it_and_the_fix():
    """A model whose relation names a covariate the dataset lacks: a PKPDError naming the column, the
    parameter that uses it and the fix (currently a DatasetError with the column)."""
    spec = pf.load_model(BAD_MODEL)
    df = pd.DataFrame(_good_rows()).drop(columns=["WT"])
    with pytest.raises((DatasetError, ModelSpecError)) as exc:
        pf.build_problem(df, spec)
    msg = str(exc.value)
    assert "WT" in msg and "CL" in msg and "add it or remove" in msg, msg


@pytest.mark.parametrize(
    "mutate, words",
    [
        (
            lambda d: d.update({"omega": {"block": [{"parameters": ["CL", "VV"], "values": [0.1, 0.0, 0.1]}]}}),
            ["omega block names VV", "not a [parameters.*] entry"],
        ),
        (
            lambda d: d.update({"omega": {"block": [{"parameters": ["CL", "V"], "values": [0.1, 0.5, 0.1]}]}}),
            ["not positive definite", "reduce the covariances"],
        ),
        (
            lambda d: d.update({"omega": {"block": [{"parameters": ["CL", "V"], "values": [0.1, 0.0]}]}}),
            ["needs 3 values"],
        ),
        (lambda d: d.update({"priors": {}}), ["unknown key(s) priors", "allowed"]),
        (lambda d: d["parameters"]["CL"].update({"estimat": 3}), ["[parameters.CL]", "unknown key(s) estimat"]),
        (lambda d: d["observations"]["conc"].update({"eror": "additive"}), ["unknown key(s) eror"]),
        (lambda d: d["parameters"].pop("V"), ["needs V", "[derived]"]),
        (
            lambda d: d["parameters"]["CL"]["covariates"][0].update({"relation": "powr"}),
            ["relation 'powr' is not one of", "power"],
        ),
        (lambda d: d["parameters"]["CL"]["covariates"][0].pop("reference"), ["needs a finite `reference`"]),
        (lambda d: d["parameters"]["CL"].update({"iiv": -0.1}), ["iiv", "must be > 0"]),
        (lambda d: d["parameters"]["CL"].update({"estimate": 0.0}), ["strictly inside the bounds"]),
        (lambda d: d["model"].update({"structure": "1cmt_orl"}), ["unknown model", "pkpd models"]),
        (lambda d: d["iov"].update({"Q": 0.1}), ["[iov] names Q"]),
        (lambda d: d["observations"]["conc"].update({"error": "poisson"}), ["error 'poisson' is not one of"]),
    ],
)
def test_model_spec_errors(mutate, words):
    """Model-file faults raise ModelSpecError naming the section and the fix (no traceback needed)."""
    import copy

    d = copy.deepcopy(BAD_MODEL)
    mutate(d)
    with pytest.raises(ModelSpecError) as exc:
        pf.load_model(d)
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_model_file_errors(tmp_path):
    """TOML files: a typo'd key and bad syntax name the file; a missing file says so."""
    p = tmp_path / "m.toml"
    p.write_text(
        '[model]\nstructure = "1cmt_oral"\n[parameters.CL]\nestimate = 5\niiv = 0.1\n'
        "[parameters.V]\nestimate = 50\n[parameters.KA]\nestimate = 1\n"
        '[observations.conc]\noutput = "CP"\nerorr = "additive"\n'
    )
    with pytest.raises(ModelSpecError, match=r"m\.toml.*unknown key\(s\) erorr"):
        pf.load_model(p)
    p.write_text("[model\nstructure = 1cmt")
    with pytest.raises(ModelSpecError, match="not valid TOML"):
        pf.load_model(p)
    with pytest.raises(ModelSpecError, match="does not exist"):
        pf.load_model(tmp_path / "none.toml")


# ---------------------------------------------------------------------------------------------------
# sandwich covariance (R^-1 S R^-1, NONMEM's default $COV)


def _gaussian_terms(prob, e0, slope, omega, sigma) -> np.ndarray:
    """Each subject's exact -2 log L of the linear model (scipy's multivariate normal)."""
    out = []
    for y, t, _, _ in per_subject(prob):
        Z = np.column_stack([np.ones_like(t), -t])
        cov = Z @ omega @ Z.T + sigma**2 * np.eye(t.size)
        out.append(-2.0 * scipy.stats.multivariate_normal(e0 - slope * t, cov).logpdf(y))
    return np.array(out)


def test_sandwich_covariance_matches_the_exact_gaussian_likelihood(linear):
    """Linear model (Laplace exact): the per-subject gradients behind S equal central differences of scipy's
    per-subject Gaussian -2 log L (relative 1e-5: step 1e-5, truncation ~1e-10), and the sandwich ``R^-1 S R^-1``
    equals the one built from scipy's likelihood alone (R by second differences, step 1e-4: noise ~1e-6
    relative; tolerance 1e-3). The data come from the model, so the sandwich is close to the inverse-Hessian
    covariance (variances within a factor 2: 40 subjects)."""
    from pkpd.fit.inner import subject_gradients

    _, prob = linear
    fit = lp.fit_laplace(prob)
    assert fit.converged and fit.cov_sandwich is not None
    pk = prob.packer
    names = list(prob.spec.parameter_names)
    u_hat = np.asarray(fit.u_full)[np.asarray(pk.free)]

    def terms(u):
        nat = pk.natural(pk.full(jnp.asarray(u)))
        th = np.asarray(nat["theta"])
        e0, slope = th[names.index("E0")], th[names.index("SLOPE")]
        return _gaussian_terms(prob, e0, slope, np.asarray(nat["omega"]), float(np.asarray(nat["sigma"])[0]))

    n = u_hat.size
    eye = np.eye(n)
    G_ref = np.column_stack([(terms(u_hat + 1e-5 * eye[j]) - terms(u_hat - 1e-5 * eye[j])) / 2e-5 for j in range(n)])
    G = subject_gradients(prob, u_hat, jnp.asarray(fit.eta), jnp.asarray(fit.eta_hess))
    np.testing.assert_allclose(G, G_ref, rtol=1e-5, atol=1e-5 * np.abs(G_ref).max())

    def f(u):
        return terms(u).sum()

    h = 1e-4
    R = np.empty((n, n))
    for j in range(n):
        for k in range(n):
            ej, ek = h * eye[j], h * eye[k]
            R[j, k] = (f(u_hat + ej + ek) - f(u_hat + ej - ek) - f(u_hat - ej + ek) + f(u_hat - ej - ek)) / (4 * h * h)
    Rinv = np.linalg.inv(0.5 * (R + R.T))
    ref = Rinv @ (G_ref.T @ G_ref) @ Rinv
    np.testing.assert_allclose(fit.cov_sandwich, ref, rtol=1e-3, atol=1e-3 * np.abs(np.diag(ref)).max())
    ratio = np.diag(fit.cov_sandwich) / np.diag(fit.cov_u)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


def test_parameter_table_reports_sandwich_standard_errors(theoph):
    from pkpd.fit.result import _laplace_table

    prob, fit = theoph
    table, _ = _laplace_table(prob, fit.u_full, fit.cov_u, fit.eta, fit.cov_sandwich)
    free = ~table["fixed"]
    assert table.loc[free, "se_sandwich"].gt(0).all()
    np.testing.assert_allclose(
        table.loc[free, "rse_sandwich_pct"], 100 * table.loc[free, "se_sandwich"] / table.loc[free, "estimate"].abs()
    )
    assert table.loc[~free, "se_sandwich"].isna().all()
