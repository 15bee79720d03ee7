"""Full Bayesian estimation (pkpd.fit.bayes): NUTS with vectorized chains, SVI, priors, rejected points.

Default tests are cheap: the exact map between sampled quantities and the packer's vector, the priors
and their description, the rejection counter, and one short NUTS run plus one short SVI run on a small
simulated dataset (shapes, finiteness, ArviZ/NetCDF round trip), and the acceptance test on a
reduced-size study (truth inside the 95 % credible intervals with R-hat < 1.01, ~40 s). The other
statistical checks (Theoph posterior medians against R nlme, SVI recovery, rejected points counted on a
model that can fail) are marked ``slow``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest

from pkpd.errors import ModelSpecError
from pkpd.fit import bayes as B
from pkpd.fit import build_problem, load_model
from pkpd.fit.bayes import default_priors, describe_priors, fit_nuts, fit_svi, load_netcdf

ROOT = Path(__file__).resolve().parents[1]
NLME = ROOT / "benchmarks" / "validation" / "theoph_nlme_reference.json"


# ---------------------------------------------------------------------------------------------------
# data: one-compartment oral model in closed form (independent of the engine)


def _conc_1cmt_oral(dose, cl, v, ka, t):
    """Bateman function: C(t) = D ka / (V (ka - ke)) (exp(-ke t) - exp(-ka t)), ke = CL/V (mg/L)."""
    ke = cl / v
    return dose * ka / (v * (ka - ke)) * (np.exp(-ke * t) - np.exp(-ka * t))


TRUTH = {"CL": 5.0, "V": 50.0, "KA": 1.2, "WT_exp": 0.75, "AS_frac": 0.6, "om_CL": 0.09, "om_V": 0.04, "prop": 0.12}


def _simulate(n_id: int, seed: int, times=(0.5, 1, 2, 4, 6, 8, 12, 24), truth=TRUTH, covariates=True):
    """Single 100 mg oral dose, log-normal IIV on CL and V (stratified draws), WT power and CYP2D6
    activity score on CL, proportional residual error; NONMEM-format rows."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    rows = []
    as_levels = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    # random effects: permuted normal quantiles (stratified), so that their sample variance is omega and
    # the check is about the estimation, not about an unusual draw of 24 subjects' random effects
    q = norm.ppf((np.arange(n_id) + 0.5) / n_id)
    z_cl, z_v = rng.permutation(q), rng.permutation(q)
    for i in range(1, n_id + 1):
        wt = float(np.round(rng.uniform(50, 110), 1))
        as_ = float(as_levels[(i - 1) % len(as_levels)])
        tv_cl = truth["CL"]
        if covariates:
            tv_cl *= (wt / 70.0) ** truth["WT_exp"] * ((1 - truth["AS_frac"]) + truth["AS_frac"] * as_ / 2.0)
        cl = tv_cl * math.exp(z_cl[i - 1] * math.sqrt(truth["om_CL"]))
        v = truth["V"] * math.exp(z_v[i - 1] * math.sqrt(truth["om_V"]))
        rows.append(
            {"ID": i, "TIME": 0.0, "AMT": 100.0, "DV": 0.0, "MDV": 1, "EVID": 1, "CMT": 1, "WT": wt, "CYP2D6_AS": as_}
        )
        for t in times:
            c = _conc_1cmt_oral(100.0, cl, v, truth["KA"], t)
            dv = c * (1 + truth["prop"] * rng.normal())
            rows.append(
                {
                    "ID": i,
                    "TIME": float(t),
                    "AMT": 0.0,
                    "DV": float(dv),
                    "MDV": 0,
                    "EVID": 0,
                    "CMT": 2,
                    "WT": wt,
                    "CYP2D6_AS": as_,
                }
            )
    return pd.DataFrame(rows)


def _cov_model(covariates=True, **over):
    cl = {"estimate": 4.0, "unit": "L/h", "iiv": 0.1}
    if covariates:
        cl["covariates"] = [
            {"covariate": "WT", "relation": "power", "reference": 70, "estimate": 0.75},
            {"covariate": "CYP2D6_AS", "relation": "activity_score", "reference": 2, "estimate": 0.5},
        ]
    d = {
        "model": {"structure": "1cmt_oral"},
        "parameters": {
            "CL": cl,
            "V": {"estimate": 40.0, "unit": "L", "iiv": 0.1},
            "KA": {"estimate": 1.0, "unit": "1/h"},
        },
        "observations": {"conc": {"output": "CP", "error": "proportional", "proportional": 0.2}},
    }
    d.update(over)
    return load_model(d)


@pytest.fixture(scope="module")
def small_prob():
    """10 subjects x 5 samples, no covariates: the cheapest structure for the smoke runs."""
    df = _simulate(10, seed=3, times=(1, 2, 4, 8, 24), covariates=False)
    return build_problem(df, _cov_model(covariates=False))


# ---------------------------------------------------------------------------------------------------
# the map between sampled quantities and u_full


def _rich_problem():
    """Block omega (KA, CL), a diagonal eta (V), IOV on CL over 2 occasions, combined error, a fixed
    parameter: every kind of packer entry."""
    spec = load_model(
        {
            "model": {"structure": "1cmt_oral"},
            "parameters": {
                "CL": {"estimate": 4.0},
                "V": {"estimate": 40.0, "iiv": 0.05},
                "KA": {"estimate": 1.0, "lower": 0.1, "upper": 10.0},
                "F1": {"estimate": 0.8, "fixed": True, "lower": 0.0, "upper": 1.0},
            },
            "derived": {},
            "omega": {"block": [{"parameters": ["KA", "CL"], "values": [0.3, 0.05, 0.1]}]},
            "iov": {"CL": 0.02},
            "observations": {"conc": {"output": "CP", "error": "combined", "additive": 0.1, "proportional": 0.1}},
        }
    )
    rows = []
    for i in (1, 2, 3):
        for occ, t0 in ((1, 0.0), (2, 48.0)):
            rows.append({"ID": i, "TIME": t0, "AMT": 100.0, "DV": 0.0, "MDV": 1, "EVID": 1, "CMT": 1, "OCC": occ})
            for dt in (1.0, 4.0, 12.0):
                rows.append(
                    {
                        "ID": i,
                        "TIME": t0 + dt,
                        "AMT": 0.0,
                        "DV": 1.0 + dt / 10,
                        "MDV": 0,
                        "EVID": 0,
                        "CMT": 2,
                        "OCC": occ,
                    }
                )
    return build_problem(pd.DataFrame(rows), spec)


@pytest.fixture(scope="module")
def rich_prob():
    try:
        return _rich_problem()
    except ModelSpecError:  # the model library has no F1 route parameter: drop it
        pytest.skip("F1 not available")


def test_site_map_is_exact(rich_prob):
    """Sampled (typical values, eta SDs, LKJ correlation factor, IOV SD, residual terms, z) -> u_full:
    ``packer.natural`` must give back Omega_block = diag(sd) C diag(sd) with C = L_corr L_corr^T, the IOV
    variance sd^2, the residual terms and the typical values; eta = z L_full^T. Tolerance 1e-12
    (floating point only: the map is algebraic). The inverse map recovers the site values."""
    prob = rich_prob
    lay = B._layout(prob)
    pk = prob.packer
    assert [b.names for b in lay.blocks] == [("KA", "CL"), ("V",)]
    assert not pk.free[list(pk.names).index("F1")] and "pop:F1" not in dict(lay.site_keys())
    rng = np.random.default_rng(0)
    C0 = np.array([[1.0, -0.6], [-0.6, 1.0]])
    Lc = np.linalg.cholesky(C0)
    v = {
        "pop:CL": np.log(3.3),
        "pop:V": np.log(55.0),
        "pop:KA": 0.7,
        "sd:KA": 0.8,
        "sd:CL": 0.35,
        "corr:corr(KA,CL)": Lc,
        "sd:V": 0.25,
        "iov_sd:iov(CL)": 0.12,
        "sigma:conc.additive": 0.07,
        "sigma:conc.proportional": 0.15,
        "z": rng.standard_normal((prob.n_id, prob.n_eta)),
    }
    u, eta = jax.jit(B._assemble, static_argnums=1)(prob, lay, {k: jnp.asarray(x) for k, x in v.items()})
    nat = {k: np.asarray(x) for k, x in jax.jit(pk.natural)(u).items()}
    names = list(pk.names)
    th = dict(zip([n for n, k in zip(names, pk.kinds) if k == "theta"], nat["theta"]))
    assert th["CL"] == pytest.approx(3.3, rel=1e-12) and th["V"] == pytest.approx(55.0, rel=1e-12)
    assert th["KA"] == pytest.approx(0.1 + 9.9 / (1 + math.exp(-0.7)), rel=1e-12)
    assert th["F1"] == pytest.approx(0.8, rel=1e-12)
    sd = np.array([0.8, 0.35])
    C = Lc @ Lc.T
    np.testing.assert_allclose(nat["omega"][:2, :2], np.outer(sd, sd) * C, rtol=1e-12, atol=1e-14)
    assert nat["omega"][2, 2] == pytest.approx(0.25**2, rel=1e-12)
    assert nat["omega"][2, 0] == 0.0
    assert nat["iov"][0] == pytest.approx(0.12**2, rel=1e-12)
    np.testing.assert_allclose(nat["sigma"], [0.07, 0.15], rtol=1e-12)
    Lf = np.asarray(jax.jit(lambda uu: prob.chol_full(pk.natural(uu)))(u))
    assert Lf.shape == (5, 5)  # KA, CL, V etas + one CL kappa per occasion
    np.testing.assert_allclose(
        Lf @ Lf.T, np.diag([0, 0, 0, 0.0144, 0.0144]) + np.pad(nat["omega"], (0, 2)), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(np.asarray(eta), v["z"] @ Lf.T, rtol=1e-12, atol=1e-15)
    back = B._site_values(prob, lay, np.asarray(u), np.asarray(eta))
    for k, x in v.items():
        np.testing.assert_allclose(back[k], x, rtol=1e-10, atol=1e-12, err_msg=k)


def test_initial_estimates_map_to_u_init(rich_prob):
    """The model file's initial estimates, mapped to site values and back, give init_full exactly."""
    prob = rich_prob
    lay = B._layout(prob)
    vals = B._site_values(prob, lay, prob.packer.init_full)
    u, eta = jax.jit(B._assemble, static_argnums=1)(prob, lay, {k: jnp.asarray(x) for k, x in vals.items()})
    np.testing.assert_allclose(np.asarray(u), prob.packer.init_full, rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(eta) == 0)


# ---------------------------------------------------------------------------------------------------
# priors


def test_default_priors_and_description(rich_prob):
    """Default priors: Normal(u0, 2) on log-scale typical values, Normal(u0, 1.5) on logit ones,
    HalfNormal for SDs (max(1, 2 sd0) for IIV, max(0.5, 2 sd0) for IOV), LKJ(2) for the block,
    HalfNormal(5 x initial) for residual terms; the description names each and marks user priors."""
    prob = rich_prob
    pri = default_priors(prob)
    assert list(pri) == [
        "CL",
        "V",
        "KA",
        "omega(KA)",
        "omega(CL)",
        "corr(KA,CL)",
        "omega(V)",
        "iov(CL)",
        "conc.additive",
        "conc.proportional",
    ]
    assert isinstance(pri["CL"], dist.Normal) and float(pri["CL"].loc) == pytest.approx(math.log(4.0))
    assert float(pri["CL"].scale) == 2.0 and float(pri["KA"].scale) == 1.5
    assert float(pri["omega(KA)"].scale) == pytest.approx(max(1.0, 2 * math.sqrt(0.3)))
    assert float(pri["omega(V)"].scale) == 1.0
    assert float(pri["iov(CL)"].scale) == 0.5
    assert isinstance(pri["corr(KA,CL)"], dist.LKJCholesky) and float(pri["corr(KA,CL)"].concentration) == 2.0
    assert float(pri["conc.proportional"].scale) == pytest.approx(0.5)
    text = describe_priors(prob, {"CL": (math.log(5.0), 0.5), "omega(V)": 0.3, "corr(KA,CL)": 4.0})
    assert "log(CL) ~ Normal(1.609, 0.5)" in text and "[user]" in text
    assert "SD of eta(V) ~ HalfNormal(0.3)  [user]" in text
    assert "LKJCholesky(dim 2, concentration 4)  [user]" in text
    assert "fixed at the model file's values: F1" in text
    assert "non-centred" in text
    with pytest.raises(ModelSpecError, match="not a sampled quantity"):
        describe_priors(prob, {"F1": (0.0, 1.0)})
    with pytest.raises(ModelSpecError, match="estimation scale"):
        describe_priors(prob, {"CL": dist.HalfNormal(1.0)})
    with pytest.raises(ModelSpecError, match="HalfNormal scale must be > 0"):
        describe_priors(prob, {"conc.additive": -1.0})


# ---------------------------------------------------------------------------------------------------
# rejected points


def test_rejection_counter_counts_distinct_nonfinite_points():
    """The counter sees every evaluation (vmapped, differentiated, nested vmaps), records each distinct
    point with a non-finite log-likelihood once, and leaves values and gradients unchanged."""

    def logdens(x):
        ll = jnp.where(x > 1.0, jnp.nan, -(x**2))
        ok = jnp.isfinite(ll)
        return jnp.where(ok, B._counted(ll, ok, x), -jnp.inf)

    B._COUNTER.reset()
    vg = jax.jit(jax.vmap(jax.value_and_grad(logdens)))
    val, grad = vg(jnp.array([0.5, 1.5, 2.0, 0.1]))
    np.testing.assert_allclose(np.asarray(val), [-0.25, -np.inf, -np.inf, -0.01])
    np.testing.assert_allclose(np.asarray(grad), [-1.0, 0.0, 0.0, -0.2])
    assert B._COUNTER.count == 2
    vg(jnp.array([0.5, 1.5, 2.0, 0.1]))  # the same points again: not new
    assert B._COUNTER.count == 2
    vg(jnp.array([0.3, 0.2, 0.9, 0.1]))  # all finite
    assert B._COUNTER.count == 2
    jax.jit(jax.value_and_grad(logdens))(3.0)  # unbatched
    assert B._COUNTER.count == 3
    jax.jit(jax.vmap(jax.vmap(logdens)))(jnp.array([[0.5, 1.5], [4.0, 5.0]]))
    assert B._COUNTER.count == 5
    B._COUNTER(np.array([False, True]), np.array([np.nan, 1.0]))  # a nan point is not a proposal
    assert B._COUNTER.count == 5


# ---------------------------------------------------------------------------------------------------
# smoke runs (small): shapes, finiteness, InferenceData, NetCDF round trip


def test_nuts_smoke_and_netcdf_round_trip(small_prob, tmp_path):
    """Two vectorized chains, 100 + 100 iterations: draws finite and of the documented shapes, the
    InferenceData groups and names, diagnostics present, NetCDF round trip identical; a second run of the
    same structure reuses the compiled program."""
    prob = small_prob
    fit = fit_nuts(prob, num_chains=2, num_warmup=100, num_samples=100, seed=1, progress=False, max_tree_depth=(5, 7))
    assert fit.method == "nuts"
    assert fit.u_draws.shape == (2, 100, prob.packer.n_free)
    assert fit.eta_draws.shape == (2, 100, prob.n_id, 2)
    assert np.all(np.isfinite(fit.u_full_draws)) and np.all(np.isfinite(fit.eta_draws))
    post = fit.idata.posterior
    assert set(fit.names) == {"CL", "V", "KA", "omega(CL)", "omega(V)", "conc.proportional"}
    for n in fit.names:
        assert post[n].shape == (2, 100)
    # natural units: typical values exp(u), omega variances exp(2 u) (1x1 Cholesky with log diagonal)
    i_cl, i_om = list(prob.packer.names).index("CL"), list(prob.packer.names).index("omega(CL)")
    np.testing.assert_allclose(post["CL"].values, np.exp(fit.u_full_draws[..., i_cl]), rtol=1e-12)
    np.testing.assert_allclose(post["omega(CL)"].values, np.exp(2 * fit.u_full_draws[..., i_om]), rtol=1e-12)
    assert post["eta"].dims == ("chain", "draw", "ID", "eta_name")
    assert fit.idata.log_likelihood["subject"].shape == (2, 100, prob.n_id)
    assert np.all(np.isfinite(fit.idata.log_likelihood["subject"].values))
    assert fit.idata.sample_stats["diverging"].dtype == bool
    d = fit.diagnostics
    assert d["n_nonfinite_draws"] == 0
    assert set(d["rhat"]) == set(fit.names) and set(d["ess_bulk"]) == set(fit.names)
    for k in ("n_divergent", "n_divergent_warmup", "n_rejected", "n_rejected_warmup"):
        assert isinstance(d[k], int) and d[k] >= 0
    assert fit.times["compile_s"] > 0 and fit.times["sampling_s"] > 0
    print("NUTS smoke times", {k: round(v, 2) for k, v in fit.times.items()})
    assert "Priors" in fit.priors and fit.idata.attrs["priors"] == fit.priors
    path = fit.save_netcdf(tmp_path / "nuts.nc")
    back = load_netcdf(path)
    for group in ("posterior", "log_likelihood", "sample_stats", "observed_data"):
        assert getattr(back, group).equals(getattr(fit.idata, group)), group
    assert back.attrs["method"] == "nuts" and back.attrs["n_rejected"] == d["n_rejected"]
    # same structure and settings: the compiled sampler is reused
    fit2 = fit_nuts(
        prob,
        num_chains=2,
        num_warmup=100,
        num_samples=20,
        seed=2,
        progress=False,
        max_tree_depth=(5, 7),
        log_likelihood=False,
    )
    assert fit2.times["compile_s"] < 0.5 * fit.times["compile_s"]
    assert fit2.u_draws.shape == (2, 20, prob.packer.n_free) and np.all(np.isfinite(fit2.u_draws))


def test_nuts_progress_line_counts_warmup_and_sampling_divergences_apart(small_prob, monkeypatch):
    """The progress line says "warm-up divergences N, sampling divergences M" (issue 21: warm-up divergences
    used to be shown as if they were sampling ones); the last line's counts are the fit's
    ``n_divergent_warmup`` and ``n_divergent``. Same structure as the smoke run: the compiled sampler is reused."""
    import pkpd.fit.bayes as B

    lines = []

    class Bar:
        task_ids = [0]

        def update(self, task, advance=0, info=""):
            lines.append(info)

        def stop(self):
            pass

    monkeypatch.setattr(B, "_progress", lambda progress, total, label: Bar() if progress else None)
    fit = fit_nuts(
        small_prob,
        num_chains=2,
        num_warmup=100,
        num_samples=20,
        seed=3,
        progress=True,
        max_tree_depth=(5, 7),
        log_likelihood=False,
    )
    d = fit.diagnostics
    assert lines and all("; warm-up divergences " in x and ", sampling divergences " in x for x in lines)
    assert lines[-1].startswith("sampling; ")
    assert f"warm-up divergences {d['n_divergent_warmup']}, sampling divergences {d['n_divergent']};" in lines[-1]
    warm = [x for x in lines if x.startswith("warmup; ")]
    assert warm and all("sampling divergences 0;" in x for x in warm)
    assert B._progress_info("sampling", 7, 2, 0) == (
        "sampling; warm-up divergences 7, sampling divergences 2; rejected points 0"
    )


def test_svi_smoke(small_prob, tmp_path):
    """Short mean-field SVI: loss (negative ELBO) decreases, draws finite, one chain, NetCDF written."""
    prob = small_prob
    fit = fit_svi(prob, num_steps=300, learning_rate=0.02, num_draws=200, seed=0, progress=False, log_likelihood=False)
    elbo = fit.diagnostics["elbo"]
    assert elbo.shape == (300,) and np.all(np.isfinite(elbo))
    assert np.median(elbo[-50:]) < np.median(elbo[:50])  # single-particle ELBO: noisy, compare medians
    assert fit.u_draws.shape[0] == 1 and fit.u_draws.shape[1] + fit.diagnostics["n_rejected"] == 200
    assert np.all(np.isfinite(fit.u_full_draws))
    assert fit.diagnostics["rhat"] is None
    fit.save_netcdf(tmp_path / "svi.nc")
    assert load_netcdf(tmp_path / "svi.nc").attrs["method"] == "svi"


# ---------------------------------------------------------------------------------------------------
# slow: statistical checks


@pytest.fixture(scope="module")
def cov_data():
    return _simulate(24, seed=11)


def _truth_natural():
    return {
        "CL": TRUTH["CL"],
        "V": TRUTH["V"],
        "KA": TRUTH["KA"],
        "CL~WT(power)": TRUTH["WT_exp"],
        "CL~CYP2D6_AS(activity_score)": TRUTH["AS_frac"],
        "omega(CL)": TRUTH["om_CL"],
        "omega(V)": TRUTH["om_V"],
        "conc.proportional": TRUTH["prop"],
    }


def test_nuts_recovers_truth(cov_data):
    """Acceptance (issue 4), the reduced-size NUTS test of the default suite (~40 s): on a dataset
    simulated from known values (24 subjects x 8 samples, closed form, WT power and CYP2D6
    activity-score effects on CL), every true value lies inside its 95 % credible interval and
    R-hat < 1.01 for every parameter and random effect (4 chains x 1000 + 1000). The larger checks
    (Theoph against nlme, SVI recovery, rejected points) are marked slow."""
    prob = build_problem(cov_data, _cov_model())
    fit = fit_nuts(prob, num_chains=4, num_warmup=1000, num_samples=1000, seed=0, progress=False)
    truth = _truth_natural()
    post = fit.idata.posterior
    print(fit.summary().to_string(), fit.times)
    for n, t in truth.items():
        lo, hi = np.quantile(post[n].values, [0.025, 0.975])
        assert lo < t < hi, f"{n}: truth {t} outside 95 % CrI ({lo:.4g}, {hi:.4g})"
    for n, r in fit.diagnostics["rhat"].items():
        assert r < 1.01, f"R-hat {n} = {r:.4f}"
    assert fit.diagnostics["rhat_eta_max"] < 1.01
    assert fit.diagnostics["n_nonfinite_draws"] == 0


@pytest.mark.slow
def test_svi_recovers_truth(cov_data):
    """SVI (mean-field, 4000 steps) on the same simulated data: typical values within 15 % of the truth,
    covariate coefficients within 0.25 (absolute), residual CV within 25 %: the variational mean is near
    the posterior mode, whose sampling error with 24 subjects is about 5-10 % for CL and V and 0.1-0.2 for
    the coefficients. The loss decreases."""
    prob = build_problem(cov_data, _cov_model())
    fit = fit_svi(prob, num_steps=4000, learning_rate=0.01, num_draws=1000, seed=0, progress=False)
    post = fit.idata.posterior
    truth = _truth_natural()
    for n in ("CL", "V", "KA"):
        assert np.median(post[n].values) == pytest.approx(truth[n], rel=0.15), n
    for n in ("CL~WT(power)", "CL~CYP2D6_AS(activity_score)"):
        assert abs(np.median(post[n].values) - truth[n]) < 0.25, n
    assert np.median(post["conc.proportional"].values) == pytest.approx(truth["conc.proportional"], rel=0.25)
    elbo = fit.diagnostics["elbo"]
    assert np.mean(elbo[-200:]) < np.mean(elbo[:200])


@pytest.mark.slow
def test_theoph_nuts_vs_nlme():
    """Theoph (12 subjects), NUTS 4 x 1000 + 1000 with the default weak priors: posterior medians of the
    typical values KE, KA, CL within 10 % of R nlme's ML estimates (benchmarks/validation, ml_diag), the
    residual SD within 10 %, the IIV variances within a factor 2 (with 12 subjects their posteriors are
    wide and skewed, and the median of a variance is not the ML estimate); R-hat < 1.01."""
    from pkpd.datasets import load_theoph

    ref = json.loads(NLME.read_text())["fits"]["ml_diag"]
    spec = load_model(
        {
            "model": {"structure": "1cmt_oral"},
            "parameters": {
                "KE": {"estimate": 0.1},
                "KA": {"estimate": 1.0, "iiv": 0.3},
                "CL": {"estimate": 0.05, "iiv": 0.05},
            },
            "derived": {"V": "CL/KE"},
            "observations": {"conc": {"output": "CP", "error": "additive", "additive": 1.0}},
        }
    )
    prob = build_problem(load_theoph(), spec)
    fit = fit_nuts(prob, num_chains=4, num_warmup=1000, num_samples=1000, seed=0, progress=False)
    post = fit.idata.posterior
    fe = ref["fixed_effects"]
    for n, key in (("KE", "lKe"), ("KA", "lKa"), ("CL", "lCl")):
        assert np.median(post[n].values) == pytest.approx(math.exp(fe[key]), rel=0.10), n
    assert np.median(post["conc.additive"].values) == pytest.approx(ref["residual_sd"], rel=0.10)
    for n, key in (("omega(KA)", "lKa"), ("omega(CL)", "lCl")):
        m = np.median(post[n].values)
        v = ref["random_effect_sd"][key] ** 2
        assert v / 2 < m < 2 * v, f"{n}: posterior median {m:.4g}, nlme {v:.4g}"
    for n, r in fit.diagnostics["rhat"].items():
        assert r < 1.01, f"R-hat {n} = {r:.4f}"


@pytest.mark.slow
def test_rejected_points_counted():
    """A model defined only where a linear covariate relation keeps CL positive (V = VC * CL**0.5 is nan
    for CL < 0): with the slope's true value near the edge of that region the sampler proposes points
    where the likelihood is not finite. They are counted (> 0), none becomes a draw (no nan, every draw's
    log-likelihood finite)."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(1, 13):
        crcl = float(np.linspace(20, 140, 12)[i - 1])
        cl = 5.0 * (1 + 0.011 * (crcl - 100)) * math.exp(rng.normal(0, 0.2))
        v = 20.0 * math.sqrt(cl)
        rows.append({"ID": i, "TIME": 0.0, "AMT": 100.0, "DV": 0.0, "MDV": 1, "EVID": 1, "CMT": 1, "CRCL": crcl})
        for t in (0.5, 1, 2, 4, 8, 12):
            c = _conc_1cmt_oral(100.0, cl, v, 1.0, t) * (1 + 0.1 * rng.normal())
            rows.append({"ID": i, "TIME": float(t), "AMT": 0.0, "DV": c, "MDV": 0, "EVID": 0, "CMT": 2, "CRCL": crcl})
    spec = load_model(
        {
            "model": {"structure": "1cmt_oral"},
            "parameters": {
                "CL": {
                    "estimate": 5.0,
                    "iiv": 0.04,
                    "covariates": [{"covariate": "CRCL", "relation": "linear", "reference": 100, "estimate": 0.005}],
                },
                "KA": {"estimate": 1.0},
                "VC": {"estimate": 20.0},
            },
            "derived": {"V": "VC * CL ** 0.5"},
            "observations": {"conc": {"output": "CP", "error": "proportional", "proportional": 0.1}},
        }
    )
    prob = build_problem(pd.DataFrame(rows), spec)
    fit = fit_nuts(prob, num_chains=4, num_warmup=300, num_samples=300, seed=0, progress=False)
    d = fit.diagnostics
    print(
        "rejected points: warm-up",
        d["n_rejected_warmup"],
        "sampling",
        d["n_rejected"],
        "; divergent: warm-up",
        d["n_divergent_warmup"],
        "sampling",
        d["n_divergent"],
    )
    assert d["n_rejected_warmup"] + d["n_rejected"] > 0
    assert d["n_divergent_warmup"] + d["n_divergent"] > 0  # each rejection ends its trajectory as divergent
    assert np.all(np.isfinite(fit.u_full_draws)) and np.all(np.isfinite(fit.eta_draws))
    assert d["n_nonfinite_draws"] == 0
