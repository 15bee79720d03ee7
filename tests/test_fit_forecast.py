"""Individual forecasting (MAP + importance-sampled posterior) against independent references.

The reference posterior is computed without our engine: the one-compartment oral closed form in numpy,
the Gaussian prior of the random effects and the additive residual error, integrated on a fine 2-D grid
(quadrature) -- exact up to the grid resolution. Model and values: Theoph population estimates (our
Laplace fit of the classic data, rounded), subject 1's dose and two of its concentrations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.optimize

from pkpd.datasets import load_theoph
from pkpd.errors import DatasetError
from pkpd.fit.forecast import forecast

KE, KA, CL = 0.0855, 1.61, 0.0397
OM_KA, OM_CL, SIGMA = 0.654**2, 0.1674**2, 0.708
SPEC = {
    "model": {"structure": "1cmt_oral"},
    "parameters": {
        "KE": {"estimate": KE, "unit": "1/h"},
        "KA": {"estimate": KA, "iiv": OM_KA, "unit": "1/h"},
        "CL": {"estimate": CL, "iiv": OM_CL, "unit": "L/h/kg"},
    },
    "derived": {"V": "CL/KE"},
    "observations": {"conc": {"output": "CP", "error": "additive", "additive": SIGMA, "unit": "mg/L"}},
}


def _patient():
    df = load_theoph()
    p1 = df[df.ID == 1]
    return pd.concat([p1[p1.EVID == 1], p1[p1.EVID == 0].iloc[[3, 6]]]).reset_index(drop=True)


def _closed_form(dose, t, ka, cl):
    v = cl / KE
    return dose * ka / (v * (ka - KE)) * (np.exp(-KE * t) - np.exp(-ka * t))


def _neg_log_post(e, dose, t, y):
    ka, cl = KA * np.exp(e[..., 0]), CL * np.exp(e[..., 1])
    f = _closed_form(dose, t[:, None, None] if np.ndim(e) > 1 else t, ka, cl)
    r = (y[:, None, None] if np.ndim(e) > 1 else y) - f
    return 0.5 * np.sum(r * r, axis=0) / SIGMA**2 + 0.5 * (e[..., 0] ** 2 / OM_KA + e[..., 1] ** 2 / OM_CL)


@pytest.fixture(scope="module")
def fc():
    return forecast(SPEC, _patient(), n_draws=4000, seed=3, times=np.linspace(0, 24, 25))


def test_map_matches_scipy_on_closed_form(fc):
    """MAP random effects equal an independent scipy minimization of the same posterior written in numpy
    (closed-form model); tolerance 1e-5 on eta (optimizer tolerance), 1e-4 relative on KA/CL."""
    pt = _patient()
    dose = float(pt.loc[pt.EVID == 1, "AMT"].iloc[0])
    obs = pt[pt.EVID == 0]
    t, y = obs.TIME.to_numpy(float), obs.DV.to_numpy(float)
    res = scipy.optimize.minimize(
        lambda e: _neg_log_post(np.asarray(e), dose, t, y),
        [0.0, 0.0],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 10000},
    )
    assert np.allclose(fc.eta_map, res.x, atol=1e-5)
    par = fc.parameters.set_index("parameter")["map"]
    assert par["KA"] == pytest.approx(KA * np.exp(res.x[0]), rel=1e-4)
    assert par["CL"] == pytest.approx(CL * np.exp(res.x[1]), rel=1e-4)
    assert par["V"] == pytest.approx(par["CL"] / KE, rel=1e-10)
    assert fc.converged


def test_posterior_quantiles_match_quadrature(fc):
    """Importance-sampled posterior quantiles of CL and KA vs 2-D quadrature of the exact posterior.

    Tolerance: 0.08 posterior SDs for the median and 0.15 for the 5/95 % quantiles: the Monte Carlo error of
    a quantile with an ESS of ~3,000 draws is ~0.03-0.05 SD."""
    pt = _patient()
    dose = float(pt.loc[pt.EVID == 1, "AMT"].iloc[0])
    obs = pt[pt.EVID == 0]
    t, y = obs.TIME.to_numpy(float), obs.DV.to_numpy(float)
    g0 = np.linspace(-3.5, 3.5, 701) * np.sqrt(OM_KA) + fc.eta_map[0]
    g1 = np.linspace(-2.0, 2.0, 701) * np.sqrt(OM_CL) + fc.eta_map[1]
    E = np.stack(np.meshgrid(g0, g1, indexing="ij"), axis=-1)
    lp = -_neg_log_post(E, dose, t, y)
    w = np.exp(lp - lp.max())
    w /= w.sum()
    assert fc.ess > 1000
    for j, (name, typ, om) in enumerate((("KA", KA, OM_KA), ("CL", CL, OM_CL))):
        marg = w.sum(axis=1 - j)
        grid = g0 if j == 0 else g1
        cdf = np.cumsum(marg)
        sd = np.sqrt(np.sum(marg * grid**2) - np.sum(marg * grid) ** 2)
        row = fc.parameters.set_index("parameter").loc[name]
        for q, col, tol in ((0.5, "median", 0.08), (0.05, "p05", 0.15), (0.95, "p95", 0.15)):
            ref_eta = np.interp(q, cdf, grid)
            got_eta = np.log(row[col] / typ)
            assert abs(got_eta - ref_eta) < tol * sd, (name, col, got_eta, ref_eta, sd)


def test_prediction_bands_and_prior_forecast(fc):
    """Bands are ordered and the MAP curve equals the closed form at the MAP parameters (1e-8 relative);
    a patient without observations gets the prior (eta = 0)."""
    p = fc.predictions
    assert np.all(p["p05"] <= p["median"] + 1e-12) and np.all(p["median"] <= p["p95"] + 1e-12)
    par = fc.parameters.set_index("parameter")["map"]
    dose = float(_patient().loc[0, "AMT"])
    ref = _closed_form(dose, p.TIME.to_numpy(), par["KA"], par["CL"])
    assert np.allclose(p["map"], ref, rtol=1e-8, atol=1e-12)
    prior = forecast(SPEC, _patient().iloc[[0]], n_draws=200, times=[1.0, 2.0])
    assert np.allclose(prior.eta_map, 0.0, atol=1e-8)
    assert any("no observations" in n for n in prior.notes)


def test_more_than_one_patient_is_refused():
    df = load_theoph()
    with pytest.raises(DatasetError, match="one patient"):
        forecast(SPEC, df[df.ID <= 2])


def test_cli_forecast_writes_outputs_and_refuses_overwrite(tmp_path):
    """`pkpd forecast` end to end (same grid and draws as the fixture, so the compiled program is reused):
    files written, MAP equal to the API's, an existing directory refused without --force (exit 1)."""
    import tomllib

    from typer.testing import CliRunner

    from cli import app
    from pkpd.fit.result import toml_dumps
    from pkpd.fit.spec import load_model

    pt = tmp_path / "patient.csv"
    _patient().to_csv(pt, index=False)
    model = tmp_path / "model.toml"
    model.write_text(toml_dumps(load_model(SPEC).to_dict()))
    assert tomllib.loads(model.read_text())["parameters"]["KA"]["estimate"] == KA
    out = tmp_path / "fc"
    args = [
        "forecast",
        str(pt),
        "--model",
        str(model),
        "--out",
        str(out),
        "--until",
        "24",
        "--points",
        "25",
        "--draws",
        "4000",
        "--seed",
        "3",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    for f in ("parameters.csv", "draws.csv", "predictions.csv", "observations.csv", "forecast.png"):
        assert (out / f).stat().st_size > 0
    par = pd.read_csv(out / "parameters.csv").set_index("parameter")
    api = forecast(SPEC, _patient(), n_draws=4000, seed=3, times=np.linspace(0, 24, 25))
    assert par.loc["CL", "map"] == pytest.approx(api.parameters.set_index("parameter").loc["CL", "map"], rel=1e-9)
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 1 and "--force" in r2.output
