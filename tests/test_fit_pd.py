"""A joint PK/PD fit: concentrations and pain scores (NRS) of the same patients (issue 4 acceptance).

"A pain-score (PD) fit works on simulated data with PK and NRS observations for the same patients."

Model (``examples/models/pk_pd_nrs.toml``): one compartment with an effect compartment
(``dCE/dt = KE0 (CP - CE)``, Sheiner et al. 1979); DVID 1 = plasma concentration CP (proportional error),
DVID 2 = NRS pain score ``B0 (1 - EMAX CE / (EC50 + CE))`` (additive error); log-normal IIV on CL, B0 and
EC50; EMAX is a fraction (bounds 0-1, logit scale). The default test gives an IV bolus
(``1cmt_iv_effect``); the ``slow`` variant an oral dose (``1cmt_oral_effect``, with KA), whose first
compilation takes about three times longer (~130 s instead of ~40 s on the 2-core test machine).

The data are simulated independently of the pkpd engine with closed forms of the plasma and effect-site
concentrations (convolution of the plasma curve with ``KE0 exp(-KE0 t)``), themselves checked against
scipy's ``solve_ivp``. The random effects are moment-matched (sample mean 0 and sample variance equal to
omega for each), so the comparisons with the truth test the estimator, not the luck of a 30-patient draw.

References
----------
Sheiner LB, Stanski DR, Vozeh S, Miller RD, Ham J. Simultaneous modeling of pharmacokinetics and
pharmacodynamics: application to d-tubocurarine. Clin Pharmacol Ther 1979;25:358-371.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import pkpd.fit as pf
from pkpd.fit import laplace as lp

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = ROOT / "examples" / "models" / "pk_pd_nrs.toml"

DOSE = 100.0  # mg at t = 0
TRUTH = {
    "CL": 5.0,
    "V": 50.0,
    "KA": 1.5,
    "KE0": 0.5,
    "B0": 7.0,
    "EMAX": 0.8,
    "EC50": 0.6,
    "omega(CL)": 0.09,
    "omega(B0)": 0.02,
    "omega(EC50)": 0.16,
    "cp.proportional": 0.15,
    "nrs.additive": 0.6,
}
PK_TIMES = (0.25, 1.0, 2.0, 4.0, 8.0, 12.0)  # h
NRS_TIMES = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)  # h
N_PAT = 30


def cp_ce(t, cl, v, ke0, ka=None, dose=DOSE):
    """Closed-form plasma (CP) and effect-site (CE) concentrations (mg/L) after one dose at 0 (F = 1).

    IV bolus (``ka is None``): ``CP = D/V e^{-k t}``, ``CE = D/V ke0/(ke0 - k) (e^{-k t} - e^{-ke0 t})``.
    Oral: ``CP = D ka / (V (ka - k)) (e^{-k t} - e^{-ka t})``,
    ``CE = D ka ke0 / (V (ka - k)) [(e^{-k t} - e^{-ke0 t})/(ke0 - k) - (e^{-ka t} - e^{-ke0 t})/(ke0 - ka)]``,
    with ``k = CL/V`` and ``CE = ke0 int_0^t CP(s) e^{-ke0 (t - s)} ds``. Rate constants must be distinct.
    """
    k = cl / v
    if ka is None:
        cp = dose / v * np.exp(-k * t)
        ce = dose / v * ke0 / (ke0 - k) * (np.exp(-k * t) - np.exp(-ke0 * t))
        return cp, ce
    a = dose * ka / (v * (ka - k))
    cp = a * (np.exp(-k * t) - np.exp(-ka * t))
    ce = a * ke0 * ((np.exp(-k * t) - np.exp(-ke0 * t)) / (ke0 - k) - (np.exp(-ka * t) - np.exp(-ke0 * t)) / (ke0 - ka))
    return cp, ce


def nrs(ce, b0, emax, ec50):
    return b0 * (1.0 - emax * ce / (ec50 + ce))


def simulate(seed: int, oral: bool) -> pd.DataFrame:
    """NONMEM-format data: a dose (CMT 1: CENTRAL for IV, DEPOT for oral), DVID 1 concentrations, DVID 2
    NRS scores, sorted by time within each patient."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N_PAT, 3))
    z = (z - z.mean(0)) / z.std(0)  # moment-matched
    eta = z * np.sqrt([TRUTH["omega(CL)"], TRUTH["omega(B0)"], TRUTH["omega(EC50)"]])
    cl = TRUTH["CL"] * np.exp(eta[:, 0])
    b0 = TRUTH["B0"] * np.exp(eta[:, 1])
    ec50 = TRUTH["EC50"] * np.exp(eta[:, 2])
    ka = TRUTH["KA"] if oral else None
    rows = []
    for i in range(N_PAT):
        rows.append({"ID": i + 1, "TIME": 0.0, "AMT": DOSE, "DV": 0.0, "MDV": 1, "EVID": 1, "CMT": 1, "DVID": 1})
        for t, dvid in sorted([(t, 1) for t in PK_TIMES] + [(t, 2) for t in NRS_TIMES]):
            cp, ce = cp_ce(t, cl[i], TRUTH["V"], TRUTH["KE0"], ka)
            if dvid == 1:
                y = cp * (1.0 + TRUTH["cp.proportional"] * rng.normal())
            else:
                y = nrs(ce, b0[i], TRUTH["EMAX"], ec50[i]) + TRUTH["nrs.additive"] * rng.normal()
            rows.append({"ID": i + 1, "TIME": t, "AMT": 0.0, "DV": y, "MDV": 0, "EVID": 0, "CMT": 2, "DVID": dvid})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("ka", [None, 1.2])
def test_effect_site_closed_form_matches_ode(ka):
    """The reference itself: closed-form CP and CE against scipy's solve_ivp of
    ``dA/dt = -ka A``, ``dC/dt = ka A / V - k C``, ``dCE/dt = ke0 (C - CE)`` (IV: ``C(0) = D/V``): 1e-8."""
    from scipy.integrate import solve_ivp

    cl, v, ke0 = 4.0, 40.0, 0.35
    t = np.array([0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 24.0])
    k_a = 0.0 if ka is None else ka

    def rhs(_, x):
        return [-k_a * x[0], k_a * x[0] / v - cl / v * x[1], ke0 * (x[1] - x[2])]

    x0 = [0.0, DOSE / v, 0.0] if ka is None else [DOSE, 0.0, 0.0]
    sol = solve_ivp(rhs, (0, t.max()), x0, t_eval=t, rtol=1e-12, atol=1e-14, method="DOP853")
    cp, ce = cp_ce(t, cl, v, ke0, ka)
    np.testing.assert_allclose(cp, sol.y[1], rtol=1e-8)
    np.testing.assert_allclose(ce, sol.y[2], rtol=1e-8)


def _model(oral: bool):
    d = tomllib.loads(MODEL_FILE.read_text())
    if oral:
        d["model"]["structure"] = "1cmt_oral_effect"
        d["parameters"]["KA"] = {"estimate": 1.0, "unit": "1/h"}
    return pf.load_model(d)


@pytest.fixture(
    scope="module", params=[pytest.param(False, id="iv"), pytest.param(True, id="oral", marks=pytest.mark.slow)]
)
def pd_fit(request):
    oral = request.param
    spec = _model(oral)
    data = simulate(seed=7, oral=oral)
    prob = pf.build_problem(data, spec)
    fit = lp.fit_laplace(prob)
    return oral, prob, fit, data


_predict = jax.jit(lambda prob, u, eta: prob.predict(u, eta))  # the Problem is an argument (a pytree)


def _estimates(prob, fit) -> dict:
    nat = prob.packer.natural(fit.u_full)
    out = dict(zip(prob.spec.parameter_names, map(float, np.asarray(nat["theta"]))))
    om = np.asarray(nat["omega"])
    for k, n in enumerate(prob.spec.eta_names()):
        out[f"omega({n})"] = float(om[k, k])
    names = [n for n, kd in zip(prob.packer.names, prob.packer.kinds) if kd == "sigma"]
    out.update(dict(zip(names, map(float, np.asarray(nat["sigma"])))))
    return out


def test_pd_fit_recovers_parameters(pd_fit):
    """30 patients, 6 concentrations and 9 NRS scores each. Converged from initial estimates 20-70 % off;
    typical values of the PK and PD parameters and the residual terms within 20 % of the truth (their
    SEs are ~2-10 %), the IIV variances within a factor 1.6 (SE of a variance from 30 patients ~26 % or
    more), and the covariance step succeeds."""
    oral, prob, fit, _ = pd_fit
    assert fit.converged, fit.message
    est = _estimates(prob, fit)
    print({k: round(v, 4) for k, v in est.items()})
    names = ["CL", "V", "KE0", "B0", "EMAX", "EC50", "cp.proportional", "nrs.additive"] + (["KA"] if oral else [])
    for name in names:
        assert est[name] == pytest.approx(TRUTH[name], rel=0.20), (name, est[name], TRUTH[name])
    for name in ("omega(CL)", "omega(B0)", "omega(EC50)"):
        assert 1 / 1.6 < est[name] / TRUTH[name] < 1.6, (name, est[name])
    assert fit.cov_u is not None, fit.cov_message


def test_pd_fit_uses_both_observation_types(pd_fit):
    """Both DVIDs are observation types of the problem and each gets its own prediction: population
    predictions (eta = 0) at the estimates equal the closed-form CP (DVID 1) and NRS (DVID 2) at the
    same parameters (1e-6 relative), and the residuals of the individual predictions of each type have
    the spread of that type's error model (proportional CV, additive SD; within 25 %)."""
    oral, prob, fit, data = pd_fit
    o = prob.obs
    obs_rows = data[data.EVID == 0].reset_index(drop=True)
    np.testing.assert_array_equal(o["type"], (obs_rows.DVID.to_numpy() == 2).astype(int))
    assert (o["type"] == 0).sum() == N_PAT * len(PK_TIMES) and (o["type"] == 1).sum() == N_PAT * len(NRS_TIMES)
    est = _estimates(prob, fit)
    f0, ok = _predict(prob, jnp.asarray(fit.u_full), jnp.zeros((prob.n_id, prob.n_eta)))
    f0 = np.asarray(f0)
    assert np.all(np.asarray(ok))
    cp, ce = cp_ce(o["time"], est["CL"], est["V"], est["KE0"], est["KA"] if oral else None)
    ref = np.where(o["type"] == 0, cp, nrs(ce, est["B0"], est["EMAX"], est["EC50"]))
    np.testing.assert_allclose(f0, ref, rtol=1e-6, atol=1e-12)
    fi = np.asarray(_predict(prob, jnp.asarray(fit.u_full), jnp.asarray(fit.eta))[0])
    m = o["type"] == 0
    assert np.std((o["dv"][m] - fi[m]) / fi[m]) == pytest.approx(est["cp.proportional"], rel=0.25)
    m = o["type"] == 1
    assert np.std(o["dv"][m] - fi[m]) == pytest.approx(est["nrs.additive"], rel=0.25)
