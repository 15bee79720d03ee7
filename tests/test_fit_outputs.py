"""Outputs of a population fit (pkpd.fit.result, pkpd.fit.diagnostics, pkpd.fit.api).

One Theoph Laplace fit (examples/models/theoph.toml) is shared by the module; its first compilation
dominates the cost (~40 s on the 2-core machine; the CLI test of tests/test_cli_fit.py reuses the compiled
programs when both run in one process, because the Problem is a pytree). References are independent of
the code under test: R nlme's standard errors (benchmarks/validation/theoph_nlme_reference.json),
hand computations with numpy, finite differences, and calibration on data simulated from the model.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from pkpd.datasets import load_theoph
from pkpd.fit import diagnostics as dg
from pkpd.fit import load_model
from pkpd.fit.api import fit
from pkpd.fit.result import FILES, OutputExistsError, toml_dumps

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "theoph.toml"
NLME = json.loads((ROOT / "benchmarks" / "validation" / "theoph_nlme_reference.json").read_text())["fits"]["ml_diag"]


@pytest.fixture(scope="module")
def theoph(tmp_path_factory):
    """The Theoph Laplace fit from a CSV file and the example model file (as the CLI does it)."""
    data = tmp_path_factory.mktemp("theoph") / "theoph.csv"
    load_theoph().to_csv(data, index=False)
    return fit(data, MODEL, "laplace", npde_replicates=1000, vpc_replicates=200)


@pytest.fixture(scope="module")
def saved(theoph, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitout") / "run"
    written = theoph.save(out)
    return out, written


def _row(res, name):
    return res.parameters.set_index("name").loc[name]


# ---------------------------------------------------------------------------------------------------
# parameter table


def test_standard_errors_match_nlme(theoph):
    """SE of the log typical values vs R nlme (ML, pdDiag; unadjusted SEs). Our table is on the natural
    scale, so SE(log X) = SE(X) / X by the delta method. nlme linearizes (Lindstrom-Bates) where we use
    the Laplace likelihood; agreement within 15 % is expected (found ~1-2 %). Estimates: typical values
    within 3 %, omega^2 within 15 %, residual SD within 3 % of nlme's."""
    for ours, theirs in (("KE", "lKe"), ("KA", "lKa"), ("CL", "lCl")):
        r = _row(theoph, ours)
        assert r["estimate"] == pytest.approx(math.exp(NLME["fixed_effects"][theirs]), rel=0.03)
        se_log = r["se"] / r["estimate"]
        assert se_log == pytest.approx(NLME["fixed_effects_se_unadjusted"][theirs], rel=0.15)
    cov = NLME["random_effect_cov"]
    assert _row(theoph, "omega(KA)")["estimate"] == pytest.approx(cov[0][0], rel=0.15)
    assert _row(theoph, "omega(CL)")["estimate"] == pytest.approx(cov[1][1], rel=0.15)
    assert _row(theoph, "conc.additive")["estimate"] == pytest.approx(NLME["residual_sd"], rel=0.03)


def test_table_columns_by_hand(theoph):
    """RSE = 100 SE / estimate; the 95 % CI of a log-scale parameter is exp(log x +- 1.96 SE(log x))
    with SE(log x) = SE(x) / x (exact for the delta method of a single log-transformed parameter);
    IIV CV % = 100 sqrt(exp(omega^2) - 1), SD = sqrt(omega^2). Tolerance 1e-9 (floating point)."""
    tab = theoph.parameters.set_index("name")
    z = scipy.stats.norm.ppf(0.975)
    for name in tab.index:
        r = tab.loc[name]
        assert r["rse_pct"] == pytest.approx(100 * r["se"] / abs(r["estimate"]), rel=1e-9)
        # every entry of this model (typical values, 1x1 omegas, residual SD) is a log-scale transform:
        # x = exp(c u) with c = 1, or c = 2 for omega^2; SE(u) = SE(x) / (c x), CI = x exp(+-c z SE(u))
        s = r["se"] / r["estimate"]
        assert r["ci_method"] == "estimation scale"
        assert r["ci_low"] == pytest.approx(r["estimate"] * math.exp(-z * s), rel=1e-9)
        assert r["ci_high"] == pytest.approx(r["estimate"] * math.exp(z * s), rel=1e-9)
    for name in ("omega(KA)", "omega(CL)"):
        w2 = tab.loc[name, "estimate"]
        assert tab.loc[name, "iiv_cv_pct"] == pytest.approx(100 * math.sqrt(math.exp(w2) - 1), rel=1e-12)
        assert tab.loc[name, "iiv_sd"] == pytest.approx(math.sqrt(w2), rel=1e-12)
    assert not tab["fixed"].any()


def test_shrinkage_by_hand(theoph):
    """Shrinkage = 100 (1 - SD(eta_hat) / omega), sample SD (ddof 1) over the 12 subjects, computed
    here from individual.csv's columns; tolerance 1e-9."""
    ind = theoph.individual
    tab = theoph.parameters.set_index("name")
    for p in ("KA", "CL"):
        sd = np.std(ind[f"eta({p})"].to_numpy(), ddof=1)
        expect = 100 * (1 - sd / math.sqrt(tab.loc[f"omega({p})", "estimate"]))
        assert tab.loc[f"omega({p})", "shrinkage_pct"] == pytest.approx(expect, rel=1e-9, abs=1e-9)


def test_objective_by_hand(theoph):
    """-2LL equals LaplaceFit.minus2ll; OFV = -2LL - 132 log(2 pi); AIC = -2LL + 2*6; BIC = -2LL + 6 log 132
    (R's conventions; nlme's BIC uses n = 132 observations). -2LL is within 2 of nlme's -2 logLik (354.04:
    Laplace vs Lindstrom-Bates approximations of the same likelihood)."""
    o = theoph.objective
    m2 = theoph.raw.minus2ll
    assert o["minus2ll"] == m2
    assert o["ofv"] == pytest.approx(m2 - 132 * math.log(2 * math.pi), rel=1e-12)
    assert o["aic"] == pytest.approx(m2 + 12, rel=1e-12)
    assert o["bic"] == pytest.approx(m2 + 6 * math.log(132), rel=1e-12)
    assert (o["n_obs"], o["n_id"], o["n_parameters"], o["n_obs_blq"]) == (132, 12, 6, 0)
    assert abs(m2 - (-2 * NLME["logLik"])) < 2.0
    assert theoph.converged


# ---------------------------------------------------------------------------------------------------
# individual estimates and predictions


def test_individual_table_by_hand(theoph):
    """KA_i = KA exp(eta_KA,i), CL_i = CL exp(eta_CL,i), V_i = CL_i / KE (derived); conditional SD =
    sqrt(diag(inv(H_i))) of the Laplace Hessians; etas equal the nlme random effects within 0.05
    (different approximations; nlme's ranef of the same model)."""
    ind = theoph.individual
    tab = theoph.parameters.set_index("name")["estimate"]
    assert list(ind["ID"]) == list(range(1, 13))
    np.testing.assert_allclose(ind["KA"], tab["KA"] * np.exp(ind["eta(KA)"]), rtol=1e-12)
    np.testing.assert_allclose(ind["CL"], tab["CL"] * np.exp(ind["eta(CL)"]), rtol=1e-12)
    np.testing.assert_allclose(ind["KE"], tab["KE"], rtol=1e-12)
    np.testing.assert_allclose(ind["V"], ind["CL"] / ind["KE"], rtol=1e-12)
    H = theoph.raw.eta_hess
    sd = np.sqrt(np.array([np.diag(np.linalg.inv(h)) for h in H]))
    np.testing.assert_allclose(ind[["sd(eta(KA))", "sd(eta(CL))"]].to_numpy(), sd, rtol=1e-10)
    ranef = pd.DataFrame(NLME["ranef"])
    np.testing.assert_allclose(ind["eta(KA)"], ranef["lKa"], atol=0.05)
    np.testing.assert_allclose(ind["eta(CL)"], ranef["lCl"], atol=0.05)


def test_predictions_by_hand(theoph):
    """PRED of subject 1 from the closed-form one-compartment oral solution at the typical values,
    IPRED with the individual parameters; IWRES = (DV - IPRED) / SD. Tolerance 1e-8 (relative)."""
    p = theoph.predictions
    assert list(p.columns) == [
        "ROW",
        "ID",
        "TIME",
        "DVID",
        "TYPE",
        "DV",
        "BLQ",
        "LLOQ",
        "PRED",
        "IPRED",
        "IWRES",
        "CWRES",
        "NPDE",
    ]
    assert len(p) == 132 and (p["BLQ"] == 0).all()
    tab = theoph.parameters.set_index("name")["estimate"]
    ind = theoph.individual.set_index("ID")
    raw = load_theoph()
    s1 = p[p["ID"] == 1]
    dose = raw.loc[(raw["ID"] == 1) & (raw["EVID"] == 1), "AMT"].iloc[0]

    def oral(t, ke, ka, cl):
        v = cl / ke
        return dose * ka / (v * (ka - ke)) * (np.exp(-ke * t) - np.exp(-ka * t))

    t = s1["TIME"].to_numpy()
    np.testing.assert_allclose(s1["PRED"], oral(t, tab["KE"], tab["KA"], tab["CL"]), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(
        s1["IPRED"], oral(t, ind.loc[1, "KE"], ind.loc[1, "KA"], ind.loc[1, "CL"]), rtol=1e-8, atol=1e-12
    )
    np.testing.assert_allclose(p["IWRES"], (p["DV"] - p["IPRED"]) / tab["conc.additive"], rtol=1e-9)
    assert np.array_equal(p["ROW"].to_numpy(), np.nonzero(raw["EVID"].to_numpy() == 0)[0] + 1)


def test_cwres_against_finite_difference_linearization(theoph):
    """CWRES recomputed independently: J by central finite differences of IPRED in each eta (h = 1e-5),
    cov_i = J_i Omega J_i^T + s^2 I, mean_i = IPRED_i - J_i eta_i*, r_i = L_i^{-1} (DV_i - mean_i) with
    numpy's Cholesky. Finite differences limit the agreement: 1e-6 absolute."""
    res = theoph
    prob = res.problem
    eta = res.eta
    h = 1e-5
    J = np.zeros((prob.n_obs, prob.n_eta))
    for k in range(prob.n_eta):
        e_up, e_dn = eta.copy(), eta.copy()
        e_up[:, k] += h
        e_dn[:, k] -= h
        J[:, k] = (
            dg.evaluate_outputs(prob, res.u_full, e_up)["ipred"] - dg.evaluate_outputs(prob, res.u_full, e_dn)["ipred"]
        ) / (2 * h)
    tab = res.parameters.set_index("name")["estimate"]
    omega = np.diag([tab["omega(KA)"], tab["omega(CL)"]])
    s2 = tab["conc.additive"] ** 2
    p = res.predictions
    ids = prob.obs["id"]
    expect = np.zeros(prob.n_obs)
    for i in range(prob.n_id):
        m = ids == i
        Ji = J[m]
        cov = Ji @ omega @ Ji.T + s2 * np.eye(m.sum())
        mean = p["IPRED"].to_numpy()[m] - Ji @ eta[i]
        expect[m] = np.linalg.solve(np.linalg.cholesky(cov), p["DV"].to_numpy()[m] - mean)
    np.testing.assert_allclose(p["CWRES"], expect, atol=1e-6)
    # and on the real data they look standard normal (loose: 132 correlated-by-misfit values)
    assert abs(p["CWRES"].mean()) < 0.3 and 0.7 < p["CWRES"].std() < 1.3


def test_cwres_linear_gaussian_model_is_standard_normal():
    """For a model linear in eta (y_i = X_i b + Z_i eta_i + eps_i) the linearization is exact: CWRES must be
    i.i.d. N(0, 1) whatever eta_i* is. 2,000 simulated subjects x 5 observations: mean within 0.05
    (SE 0.01), variance within 0.06 (SE 0.014), lag-1 correlation within subjects below 0.05 (SE 0.011),
    and a KS test p > 1e-3."""
    rng = np.random.default_rng(3)
    n_id, n_i, K = 2000, 5, 2
    omega = np.array([[0.5, 0.2], [0.2, 0.3]])
    sd = 0.4
    t = np.linspace(0, 4, n_i)
    Z = np.column_stack([np.ones(n_i), t])  # random intercept and slope
    b = 2.0 + 0.5 * t
    eta_true = rng.multivariate_normal(np.zeros(K), omega, size=n_id)
    y = (b + eta_true @ Z.T + sd * rng.standard_normal((n_id, n_i))).ravel()
    eta_star = rng.normal(size=(n_id, K))  # any expansion point: the model is linear
    f = (b + eta_star @ Z.T).ravel()
    jac = np.tile(Z, (n_id, 1))
    ids = np.repeat(np.arange(n_id), n_i)
    r = dg.cwres(y, f, jac, eta_star, omega, np.full(y.size, sd), ids, np.ones(y.size, bool))
    assert abs(r.mean()) < 0.05
    assert abs(r.var() - 1) < 0.06
    R = r.reshape(n_id, n_i)
    assert abs(np.corrcoef(R[:, :-1].ravel(), R[:, 1:].ravel())[0, 1]) < 0.05
    assert scipy.stats.kstest(r, "norm").pvalue > 1e-3


# ---------------------------------------------------------------------------------------------------
# NPDE, VPC


def test_npde_single_observation_by_hand():
    """One observation per subject: decorrelation is a scaling, so npde = Phi^-1(fraction of simulations
    below the observation), clipped to [1/(2K), 1 - 1/(2K)] (Comets et al. 2008)."""
    rng = np.random.default_rng(0)
    K = 400
    sims = rng.normal(size=(K, 3))
    y = np.array([0.3, -10.0, 10.0])
    npde_v, pde = dg.npde(y, sims, np.arange(3), np.ones(3, bool))
    p0 = np.mean(sims[:, 0] < 0.3)
    assert pde[0] == pytest.approx(p0)
    assert pde[1] == pytest.approx(1 / (2 * K)) and pde[2] == pytest.approx(1 - 1 / (2 * K))
    np.testing.assert_allclose(npde_v, scipy.stats.norm.ppf(pde))


def test_npde_calibrated_on_data_simulated_from_the_model(theoph):
    """Datasets simulated from the fitted model are exchangeable with the reference simulations, so
    their NPDE are N(0, 1): 20 pseudo-observed datasets x 132 = 2,640 values; mean within 0.1 and variance
    within 0.15 of 1 (values are correlated within a dataset through the shared random effects of the
    reference, hence wider than the i.i.d. SEs 0.02 / 0.03)."""
    prob = theoph.problem
    sims = dg.simulate_replicates(prob, theoph.u_full, 1020, seed=11)
    vals = []
    valid = np.ones(prob.n_obs, bool)
    for j in range(20):
        v, _ = dg.npde(sims[j], sims[20:], prob.obs["id"], valid)
        vals.append(v)
    v = np.concatenate(vals)
    assert abs(v.mean()) < 0.1
    assert abs(v.var() - 1) < 0.15
    # the real data's NPDE (reported) are finite and reasonable
    assert np.isfinite(theoph.predictions["NPDE"]).all()
    assert abs(theoph.predictions["NPDE"].mean()) < 0.3


def test_vpc_covers_data_simulated_from_the_model(theoph):
    """For datasets simulated from the model, each observed percentile (5, 50, 95 %) of each bin falls in
    the 90 % interval of the simulated percentile about 90 % of the time: 30 pseudo-observed datasets x
    8 bins x 3 percentiles; accepted between 80 and 97 %."""
    prob = theoph.problem
    sims = dg.simulate_replicates(prob, theoph.u_full, 230, seed=5)
    inside = []
    for j in range(30):
        v = dg.vpc_table(
            prob.obs["time"], sims[j], sims[30:], prob.obs["type"], np.ones(prob.n_obs, bool), ["conc"], n_bins=8
        )
        for tag in ("p5", "p50", "p95"):
            inside += list((v[f"obs_{tag}"] >= v[f"sim_{tag}_low"]) & (v[f"obs_{tag}"] <= v[f"sim_{tag}_high"]))
    frac = np.mean(inside)
    assert 0.80 <= frac <= 0.97, frac
    vpc = theoph.vpc
    assert len(vpc) == 8 and vpc["n"].sum() == 132
    assert (vpc["sim_p50_low"] <= vpc["sim_p50_high"]).all()


# ---------------------------------------------------------------------------------------------------
# NCA, files, model round trip


def test_nca_table_is_pkpd_nca(theoph):
    """The NCA table is pkpd.nca.nca of the observed data (extravascular route)."""
    from pkpd.nca import nca

    ref = nca(load_theoph(), route="extravascular")
    got = theoph.nca
    assert (got["route"] == "extravascular").all()
    for c in ("CMAX", "TMAX", "AUCLAST", "HALF_LIFE"):
        np.testing.assert_allclose(got[c].to_numpy(float), ref[c].to_numpy(float), rtol=1e-12)


def test_files_written_and_force(saved, theoph):
    """save() writes every listed file (PNG signature checked); an existing non-empty directory is
    refused without force and overwritten with it."""
    out, _ = saved
    for name in FILES:
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "trace.png").exists() and not (out / "idata.nc").exists()
    params = pd.read_csv(out / "parameters.csv")
    np.testing.assert_allclose(params["estimate"], theoph.parameters["estimate"], rtol=1e-12)
    obj = json.loads((out / "objective.json").read_text())
    assert obj["minus2ll"] == pytest.approx(theoph.objective["minus2ll"])
    info = json.loads((out / "fit.json").read_text())
    assert info["method"] == "laplace" and info["versions"]["jax"] and info["data"].endswith("theoph.csv")
    with pytest.raises(OutputExistsError, match="force"):
        theoph.save(out)
    (out / "keep.txt").write_text("x")
    before = (out / "parameters.csv").stat().st_mtime_ns
    theoph.save(out, force=True, log_axes=True)
    assert (out / "parameters.csv").stat().st_mtime_ns >= before and (out / "keep.txt").read_text() == "x"


def test_covariance_and_correlation_of_the_estimates(saved, theoph):
    """Laplace: covariance.csv (delta method, natural scale) has the free parameters of parameters.csv,
    is symmetric with the squared SEs on its diagonal; correlation.csv is the same matrix scaled to unit
    diagonal, every entry within [-1, 1]."""
    out, _ = saved
    cov = pd.read_csv(out / "covariance.csv").set_index("parameter")
    corr = pd.read_csv(out / "correlation.csv").set_index("parameter")
    free = theoph.parameters[~theoph.parameters["fixed"].astype(bool)]
    assert list(cov.index) == list(cov.columns) == list(free["name"]) == list(corr.index)
    c = cov.to_numpy(float)
    np.testing.assert_allclose(c, c.T, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(np.sqrt(np.diag(c)), free["se"].to_numpy(float), rtol=1e-10)
    sd = np.sqrt(np.diag(c))
    np.testing.assert_allclose(corr.to_numpy(float), c / np.outer(sd, sd), rtol=1e-10)
    assert np.allclose(np.diag(corr.to_numpy(float)), 1.0) and np.all(np.abs(corr.to_numpy(float)) <= 1 + 1e-12)


def test_model_toml_round_trip(saved, theoph):
    """model.toml loads with load_model and holds the final estimates (exact: floats written with repr)."""
    out, _ = saved
    m = load_model(out / "model.toml")
    tab = theoph.parameters.set_index("name")["estimate"]
    for p in m.parameters:
        assert p.estimate == tab[p.name]
    assert m.parameter("KA").iiv == tab["omega(KA)"] and m.parameter("CL").iiv == tab["omega(CL)"]
    assert m.observations[0].additive == tab["conc.additive"]
    assert m.parameter("CL").unit == "L/h/kg" and dict(m.derived) == {"V": "CL / KE"}


def test_toml_writer_round_trip():
    """toml_dumps output read by tomllib gives the input back (blocks, covariate arrays of tables,
    categorical mappings, quoted keys, infinities)."""
    import tomllib

    d = {
        "model": {"structure": "2cmt_oral", "description": 'a "quoted" text'},
        "parameters": {
            "CL": {
                "estimate": 0.1 + 0.2,
                "lower": -math.inf,
                "covariates": [
                    {"covariate": "WT", "relation": "power", "reference": 70.0, "estimate": 0.75},
                    {"covariate": "SEX", "relation": "categorical", "levels": [0.0, 1.0], "estimate": {"1": 0.8}},
                ],
            },
            "V": {"estimate": 3.0, "fixed": True},
        },
        "omega": {"block": [{"parameters": ["CL", "V"], "values": [0.1, 0.01, 0.2], "fixed": False}]},
        "observations": {"conc.x": {"output": "CP", "additive": 1e-300}},
    }
    assert tomllib.loads(toml_dumps(d)) == d


# ---------------------------------------------------------------------------------------------------
# Bayesian outputs (a fake BayesFit with the contract of pkpd.fit.bayes)


@dataclass
class FakeBayesFit:
    u_draws: np.ndarray
    eta_draws: np.ndarray
    idata: object = None
    diagnostics: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)
    priors: str = "Priors (test):\n  KE  Normal(-2.3, 2)"


class FakeIdata:
    def to_netcdf(self, path):
        Path(path).write_bytes(b"CDF-fake")


def _fake_bayes(theoph, chains=2, draws=60, seed=1):
    """Draws from the Laplace normal approximation (free parameters) and of the etas' conditional
    normal approximations: a stand-in posterior with the BayesFit shapes."""
    rng = np.random.default_rng(seed)
    raw = theoph.raw
    pk = theoph.problem.packer
    u_hat = raw.u_full[pk.free]
    u = rng.multivariate_normal(u_hat, raw.cov_u, size=(chains, draws))
    n_id = raw.eta.shape[0]
    cov_eta = np.linalg.inv(raw.eta_hess)
    e = np.stack([rng.multivariate_normal(raw.eta[i], cov_eta[i], size=(chains, draws)) for i in range(n_id)], axis=2)
    return FakeBayesFit(
        u_draws=u,
        eta_draws=e,
        idata=FakeIdata(),
        diagnostics={"n_divergent": 0, "n_rejected": 0},
        times={"sampling_s": 1.0},
    )


def test_bayes_outputs_with_fake_sampler(theoph, tmp_path, monkeypatch):
    """api.fit(method="nuts") imports pkpd.fit.bayes lazily (replaced here by a fake module returning a
    fake BayesFit). Checks by hand: estimates = posterior medians of the natural values (exp of the log
    draws; omega^2 = exp(2 u)), CI = 2.5/97.5 % quantiles, SD = posterior SD; R-hat near 1 for
    independent draws (within 0.05); WAIC finite; trace.png and idata.nc written; no -2LL."""
    fake = _fake_bayes(theoph)
    calls = {}

    def fit_nuts(prob, *, num_chains=4, num_warmup=500, num_samples=500, seed=0, progress=True, **settings):
        calls.update(chains=num_chains, warmup=num_warmup, samples=num_samples, seed=seed, progress=progress)
        assert settings["target_accept"] == 0.8 and settings["priors"] is None  # the other NutsOptions defaults
        return fake

    import pkpd.fit.bayes as bayes_module

    monkeypatch.setattr(bayes_module, "fit_nuts", fit_nuts)
    data = tmp_path / "theoph.csv"
    load_theoph().to_csv(data, index=False)
    res = fit(
        data, MODEL, "nuts", chains=2, warmup=7, samples=60, npde_replicates=200, vpc_replicates=100, fine_grid=False
    )
    assert calls == {"chains": 2, "warmup": 7, "samples": 60, "seed": 0, "progress": False}
    tab = res.parameters.set_index("name")
    u = fake.u_draws.reshape(-1, fake.u_draws.shape[-1])
    names = list(theoph.problem.packer.names)
    for j, name in enumerate(names):
        x = np.exp(2 * u[:, j]) if name.startswith("omega") else np.exp(u[:, j])
        assert tab.loc[name, "estimate"] == pytest.approx(np.median(x), rel=1e-10)
        assert tab.loc[name, "ci_low"] == pytest.approx(np.quantile(x, 0.025), rel=1e-10)
        assert tab.loc[name, "ci_high"] == pytest.approx(np.quantile(x, 0.975), rel=1e-10)
        assert tab.loc[name, "se"] == pytest.approx(np.std(x, ddof=1), rel=1e-10)
        assert abs(tab.loc[name, "rhat"] - 1) < 0.05 and tab.loc[name, "ess_bulk"] > 20
    assert res.objective["minus2ll"] is None and np.isfinite(res.objective["waic"]["waic"])
    np.testing.assert_allclose(res.eta, np.median(fake.eta_draws.reshape(-1, 12, 2), axis=0))
    assert res.diagnostics["divergences"] == 0
    out = tmp_path / "bayes"
    res.save(out)
    assert (out / "trace.png").is_file() and (out / "idata.nc").read_bytes() == b"CDF-fake"
    info = json.loads((out / "fit.json").read_text())
    assert info["diagnostics"]["priors"] == ["Priors (test):", "  KE  Normal(-2.3, 2)"]  # priors stated
    assert "R-hat" in res.summary_text() and "WAIC" in res.summary_text()


def test_waic_without_posterior_variance():
    """With identical draws p_waic = 0 and WAIC = -2 sum(log-likelihood)."""
    ll = np.tile(np.array([-1.0, -2.5, -0.3]), (10, 1))
    w = dg.waic(ll)
    assert w["p_waic"] == pytest.approx(0.0, abs=1e-12)
    assert w["waic"] == pytest.approx(2 * 3.8)


def test_unknown_method_and_option(theoph):
    """Unknown method or Laplace option: a FitError (PKPDError) naming the choices, before any work."""
    from pkpd.fit import FitError

    with pytest.raises(FitError, match="laplace"):
        fit(load_theoph(), MODEL, "saem")
    with pytest.raises(FitError, match="maxiter"):
        fit(load_theoph(), MODEL, "laplace", bogus=1)


# ---------------------------------------------------------------------------------------------------
# a richer model (slow: its own compilation)

RICH = {
    "model": {"structure": "1cmt_oral"},
    "parameters": {
        "KE": {"estimate": 0.09, "unit": "1/h"},
        "KA": {"estimate": 1.5, "unit": "1/h"},
        "CL": {
            "estimate": 0.04,
            "unit": "L/h/kg",
            "covariates": [{"covariate": "WT", "relation": "power", "reference": 70.0, "estimate": 0.1}],
        },
    },
    "derived": {"V": "CL / KE"},
    "omega": {"block": [{"parameters": ["KA", "CL"], "values": [0.4, 0.01, 0.03]}]},
    "observations": {"conc": {"output": "CP", "error": "lognormal", "sigma": 0.2, "unit": "mg/L"}},
}


@pytest.mark.slow
def test_block_omega_lognormal_blq_covariate(tmp_path):
    """Omega block, covariate coefficient, log-normal error, BLQ records (the 12 pre-dose samples flagged
    BLQ, LLOQ 0.8 mg/L: a log-normal error cannot fit the zero predictions at the dose time). Checks:
    entries depending on several Cholesky elements get Wald intervals, the others estimation-scale ones;
    correlation = cov / sqrt(var var); BLQ rows have no residuals; IWRES is on the log scale; CWRES match a
    finite-difference linearization on the log scale (1e-5); the model file round trip keeps the block and
    the covariate coefficient."""
    df = load_theoph()
    df["BLQ"] = ((df["EVID"] == 0) & (df["TIME"] == 0)).astype(int)  # pre-dose samples: predictions are 0
    df["LLOQ"] = 0.8
    res = fit(df, RICH, "laplace", npde_replicates=200, vpc_replicates=100)
    assert res.converged, res.message
    tab = res.parameters.set_index("name")
    assert list(tab.index) == ["KE", "KA", "CL", "CL~WT(power)", "omega(KA)", "omega(CL,KA)", "omega(CL)", "conc.sigma"]
    assert tab.loc["omega(KA)", "ci_method"] == "estimation scale"
    assert tab.loc["omega(CL,KA)", "ci_method"] == "wald" and tab.loc["omega(CL)", "ci_method"] == "wald"
    assert tab.loc["CL~WT(power)", "ci_method"] == "estimation scale"  # identity scale: Wald-equivalent
    r = tab.loc["omega(CL,KA)"]
    assert r["correlation"] == pytest.approx(
        r["estimate"] / math.sqrt(tab.loc["omega(KA)", "estimate"] * tab.loc["omega(CL)", "estimate"])
    )
    assert r["ci_low"] == pytest.approx(r["estimate"] - 1.959963984540054 * r["se"])
    p = res.predictions
    blq = p["BLQ"] == 1
    assert blq.sum() == 12 and p.loc[blq, ["IWRES", "CWRES", "NPDE"]].isna().all().all()
    q = p[~blq]
    sigma = tab.loc["conc.sigma", "estimate"]
    np.testing.assert_allclose(q["IWRES"], (np.log(q["DV"]) - np.log(q["IPRED"])) / sigma)
    prob, eta, h = res.problem, res.eta, 1e-5
    J = np.zeros((prob.n_obs, prob.n_eta))
    for k in range(prob.n_eta):
        up, dn = eta.copy(), eta.copy()
        up[:, k] += h
        dn[:, k] -= h
        with np.errstate(all="ignore"):  # zero predictions at the dose time (BLQ rows, unused)
            J[:, k] = (
                np.log(dg.evaluate_outputs(prob, res.u_full, up)["ipred"])
                - np.log(dg.evaluate_outputs(prob, res.u_full, dn)["ipred"])
            ) / (2 * h)
    om = np.array(
        [[tab.loc["omega(KA)", "estimate"], r["estimate"]], [r["estimate"], tab.loc["omega(CL)", "estimate"]]]
    )
    s2 = tab.loc["conc.sigma", "estimate"] ** 2
    ids = prob.obs["id"]
    ok = ~prob.obs["blq"]
    expect = np.full(prob.n_obs, np.nan)
    for i in range(prob.n_id):
        m = (ids == i) & ok
        Ji = J[m]
        mean = np.log(p["IPRED"].to_numpy()[m]) - Ji @ eta[i]
        cov = Ji @ om @ Ji.T + s2 * np.eye(m.sum())
        expect[m] = np.linalg.solve(np.linalg.cholesky(cov), np.log(p["DV"].to_numpy()[m]) - mean)
    np.testing.assert_allclose(p["CWRES"], expect, atol=1e-5)
    res.save(tmp_path / "rich")
    m = load_model(tmp_path / "rich" / "model.toml")
    ((names, values, _),) = m.omega_blocks
    assert names == ("KA", "CL")
    np.testing.assert_allclose(
        values, [tab.loc["omega(KA)", "estimate"], r["estimate"], tab.loc["omega(CL)", "estimate"]], rtol=1e-12
    )
    assert m.parameter("CL").covariates[0].estimate == pytest.approx(tab.loc["CL~WT(power)", "estimate"])
    assert m.observations[0].sigma == pytest.approx(tab.loc["conc.sigma", "estimate"])


@pytest.mark.slow
def test_real_nuts_outputs(tmp_path):
    """pkpd.fit.bayes end to end through api.fit (2 chains x 200 draws): posterior medians within 20 % of
    the nlme estimates of the typical values (short chains, weakly informative priors), R-hat and ESS
    columns filled, idata.nc readable by ArviZ with the posterior of every free parameter."""
    pytest.importorskip("arviz")
    res = fit(
        load_theoph(),
        MODEL,
        "nuts",
        chains=2,
        warmup=200,
        samples=200,
        npde_replicates=200,
        vpc_replicates=100,
        fine_grid=False,
    )
    tab = res.parameters.set_index("name")
    for ours, theirs in (("KE", "lKe"), ("KA", "lKa"), ("CL", "lCl")):
        assert tab.loc[ours, "estimate"] == pytest.approx(math.exp(NLME["fixed_effects"][theirs]), rel=0.2)
    assert tab["rhat"].notna().all() and (tab["ess_bulk"] > 10).all()
    res.save(tmp_path / "nuts")
    import arviz as az

    idata = az.from_netcdf(str(tmp_path / "nuts" / "idata.nc"))
    assert "posterior" in idata.groups()
    assert (tmp_path / "nuts" / "trace.png").is_file()
    priors = json.loads((tmp_path / "nuts" / "fit.json").read_text())["diagnostics"]["priors"]
    assert priors[0].startswith("Priors") and any(line.strip().startswith("KE") for line in priors)


def test_time_unit_of_the_model_file_labels_the_plots(theoph, tmp_path, monkeypatch):
    """``time_unit = "min"`` in [model] (issue 21) labels the TIME axes "TIME (min)" in residuals.png, vpc.png
    and individual.png, is kept in the written model.toml, and rescales nothing; the default stays "h"; a
    label with parentheses or a newline is refused naming the key."""
    import copy
    import dataclasses

    from pkpd.errors import ModelSpecError

    figs = []
    real_fig = dg.new_figure

    def keep(w, h):
        figs.append(real_fig(w, h))
        return figs[-1]

    monkeypatch.setattr(dg, "new_figure", keep)
    res = copy.copy(theoph)
    res.spec = dataclasses.replace(theoph.spec, time_unit="min")
    res.save(tmp_path / "min")

    def labels(fig):
        out = [ax.get_xlabel() for ax in fig.axes]
        return out + ([fig._supxlabel.get_text()] if getattr(fig, "_supxlabel", None) is not None else [])

    time_labels = [x for f in figs for x in labels(f) if x.startswith("TIME")]
    assert len(time_labels) >= 4 and set(time_labels) == {"TIME (min)"}, time_labels
    assert 'time_unit = "min"' in (tmp_path / "min" / "model.toml").read_text()
    back = load_model(tmp_path / "min" / "model.toml")
    assert back.time_unit == "min"
    assert theoph.spec.time_unit == "h" and "time_unit" not in theoph.spec.to_dict()["model"]
    pd.testing.assert_frame_equal(res.predictions, theoph.predictions)
    text = (
        (ROOT / "examples" / "models" / "theoph.toml")
        .read_text()
        .replace('structure = "1cmt_oral"', 'structure = "1cmt_oral"\ntime_unit = "min (wall)"')
    )
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ModelSpecError, match="time_unit"):
        load_model(tmp_path / "bad.toml")


def test_fit_result_repr_is_short_and_has_an_html_form():
    """repr(FitResult) was 44,328 characters of arrays: now one line; notebooks get the parameter table."""
    import pandas as pd

    from pkpd.fit.result import FitResult

    class _Spec:
        structure = "1cmt_oral"

    r = FitResult.__new__(FitResult)
    r.method, r.spec, r.converged, r.message = "laplace", _Spec(), True, "converged: gradient 1e-4 <= 0.01"
    r.objective = {"ofv": 115.2, "n_id": 12, "n_obs": 132}
    r.parameters = pd.DataFrame({"name": ["CL", "V"], "estimate": [2.8, 31.5]})
    text = repr(r)
    assert (
        text
        == "<FitResult laplace: model 1cmt_oral, 12 subjects, 132 observations, 2 parameters, OFV 115.200, converged>"
    )
    html = r._repr_html_()
    assert "<table" in html and "31.5" in html and "converged" in html


# ---------------------------------------------------------------------------------------------------
# issue 25: WAIC/LOO with one definition, divergences counted once, every figure labelled


def _real_idata(theoph, fake, *, with_loglik: bool, n_div: int = 0):
    """An ArviZ InferenceData of the fake draws (posterior in natural units, sample_stats with ``n_div``
    divergent sampling transitions), with the per-subject log-likelihood of pkpd.fit.bayes or without."""
    import arviz as az

    from pkpd.fit import bayes
    from pkpd.fit.result import _full_draws

    prob = theoph.problem
    C, D = fake.u_draws.shape[:2]
    U = _full_draws(prob.packer, fake.u_draws)
    post = {bayes._var_name(k): v for k, v in bayes._natural_by_name(prob, U).items()}
    div = np.zeros((C, D), bool)
    div.flat[:n_div] = True
    groups = {"posterior": post, "sample_stats": {"diverging": div}}
    dims = {}
    if with_loglik:  # exactly what fit_nuts stores: log p(y_i | eta_i, theta) per draw and subject
        E = fake.eta_draws
        ll = bayes._loglik_draws(prob, U.reshape(C * D, -1), E.reshape((C * D,) + E.shape[2:]))
        groups["log_likelihood"] = {"subject": ll.reshape(C, D, -1)}
        dims["subject"] = ["ID"]
    return az.from_dict(**groups, coords={"ID": np.asarray(prob.ids)}, dims=dims)


@pytest.mark.parametrize("with_loglik", [True, False])
def test_waic_loo_equal_arviz_on_the_written_idata(theoph, tmp_path, monkeypatch, with_loglik):
    """objective.json's WAIC and LOO are az.waic / az.loo (var_name "subject") on the written idata.nc, to
    1e-9: when the sampler stored the per-subject log-likelihood (as fit_nuts does) and when the result had
    to add it (then it equals pkpd.fit.bayes's per-subject log-likelihood to 1e-8). One divergence count:
    3 sampling divergences in sample_stats -> "divergences" 3 everywhere, the 7 warm-up ones apart."""
    import arviz as az

    from pkpd.fit import bayes

    fake = _fake_bayes(theoph, chains=2, draws=40)
    fake.idata = _real_idata(theoph, fake, with_loglik=with_loglik, n_div=3)
    fake.diagnostics = {"n_divergent": 3, "n_divergent_warmup": 7, "n_rejected": 0}
    monkeypatch.setattr(bayes, "fit_nuts", lambda prob, **kw: fake)
    res = fit(
        load_theoph(),
        MODEL,
        "nuts",
        chains=2,
        warmup=5,
        samples=40,
        npde_replicates=50,
        vpc_replicates=20,
        fine_grid=False,
    )
    out = tmp_path / "nuts"
    res.save(out)
    obj = json.loads((out / "objective.json").read_text())
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.log_likelihood["subject"].shape == (2, 40, 12)
    with warnings.catch_warnings():  # ArviZ warns on p_waic > 0.4 and Pareto k > 0.7 (the notes say so)
        warnings.simplefilter("ignore", UserWarning)
        w = az.waic(idata, var_name="subject")
        lo = az.loo(idata, var_name="subject")
    assert obj["waic"]["elpd_waic"] == pytest.approx(float(w.elpd_waic), abs=1e-9)
    assert obj["waic"]["waic"] == pytest.approx(-2 * float(w.elpd_waic), abs=1e-9)
    assert obj["waic"]["p_waic"] == pytest.approx(float(w.p_waic), abs=1e-9)
    assert obj["waic"]["elpd_se"] == pytest.approx(float(w.se), abs=1e-9)
    assert obj["loo"]["elpd_loo"] == pytest.approx(float(lo.elpd_loo), abs=1e-9)
    assert obj["loo"]["looic"] == pytest.approx(-2 * float(lo.elpd_loo), abs=1e-9)
    assert obj["loo"]["p_loo"] == pytest.approx(float(lo.p_loo), abs=1e-9)
    assert "subject" in obj["ic_definition"] and obj["ic_n_subjects"] == 12 and obj["ic_n_draws"] == 80
    if not with_loglik:
        ref = _real_idata(theoph, fake, with_loglik=True).log_likelihood["subject"].values
        np.testing.assert_allclose(idata.log_likelihood["subject"].values, ref, rtol=1e-8, atol=1e-8)
    info = json.loads((out / "fit.json").read_text())["diagnostics"]
    assert info["divergences"] == 3 and info["divergences_warmup"] == 7
    assert "divergences 3 (sampling; warm-up 7, not counted)" in res.message
    assert "3 divergent transitions after warm-up" in " ".join(res.notes)
    text = res.summary_text()
    assert "WAIC" in text and "LOOIC" in text
    for name in ("trace.png", "rank.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_every_saved_figure_has_units_and_legends(theoph, tmp_path, monkeypatch):
    """Every figure save() writes for the Theoph fit passes the label/legend check of test_fit_plots
    (mg/L on concentration axes, h on TIME axes); the eta plots are written (2 IIV etas; vs WT and DOSE, constant within subjects)
    and pcvpc.csv holds PRED-corrected numbers (pred_median column)."""
    from test_fit_plots import _Keep, check_figure

    keep = _Keep(monkeypatch)
    written = theoph.save(tmp_path / "figs")
    pngs = [p.name for p in written if p.suffix == ".png"]
    assert len(keep.figs) == len(pngs) and {"eta.png", "eta_pairs.png", "pcvpc.png", "qq.png"} <= set(pngs)
    assert (tmp_path / "figs" / "eta_covariates.png").is_file()  # WT and DOSE of the dataset
    for fig, name in zip(keep.figs, pngs):
        labels = check_figure(fig, {"conc": "mg/L", "TIME": "h"})
        assert labels, name
    pc = pd.read_csv(tmp_path / "figs" / "pcvpc.csv")
    assert "pred_median" in pc and (pc["pred_median"] > 0).all()
