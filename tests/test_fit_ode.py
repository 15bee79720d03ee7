"""Population fits of models on the ODE path (nonlinear structures).

The Laplace approximation needs the Hessian of each subject's log-likelihood in its random effects, which
``pkpd.fit.inner.grad_hess`` forms as forward-mode products of a reverse-mode gradient. diffrax's default
adjoint (``RecursiveCheckpointAdjoint``) supports reverse mode only, so every Laplace fit or MAP forecast
of a model on the ODE path failed with "can't apply forward-mode autodiff (jvp) to a custom_vjp function";
the fitter now integrates with ``DirectAdjoint`` (:class:`pkpd.ODE`, ``adjoint="direct"``).

* default run: a forward-over-reverse second derivative through one ODE solve fails with the default adjoint
  and equals finite differences with the fitter's; a fitting problem of a nonlinear model uses that adjoint;
* ``slow``: the same model fitted to 12 simulated patients recovers its parameters (every typical value,
  IIV variance and residual term within 3 standard errors of the truth on the estimation scale). The data are
  simulated by this engine (its exact and ODE paths are checked elsewhere against closed forms and NONMEM);
  what is tested is the estimator.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import pkpd
from pkpd.fit import laplace as lp
from pkpd.fit.problem import build_problem
from pkpd.fit.spec import load_model
from pkpd.solvers import ODE
from pkpd.solvers._solvers import ode_step

MODEL = Path(__file__).resolve().parent / "data" / "user_models" / "turnover_emax_fit.toml"
TRUTH = {
    "CL": 50.0,
    "V": 150.0,
    "KOUT": 1.2,
    "RR0": 16.0,
    "IC50": 0.05,
    "omega(CL)": 0.09,
    "omega(KOUT)": 0.09,
    "omega(RR0)": 0.01,
    "cp.proportional": 0.15,
    "rr.additive": 0.8,
}
PK, PD = (0.25, 1.0, 2.0, 4.5, 6.0, 8.0), (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0)


def _study(n: int, seed: int = 6) -> pd.DataFrame:
    """``n`` patients, 10 mg IV at 0 h and 5 mg at 4 h; DVID 1 concentrations, DVID 2 respiratory rates."""
    rng = np.random.default_rng(seed)
    eta = rng.normal(size=(n, 3)) * np.sqrt([TRUTH["omega(CL)"], TRUTH["omega(KOUT)"], TRUTH["omega(RR0)"]])
    rows = []
    for i in range(n):
        ind = {"CLI": TRUTH["CL"] * np.exp(eta[i, 0]), "KI": TRUTH["KOUT"] * np.exp(eta[i, 1])}
        ind["RI"] = TRUTH["RR0"] * np.exp(eta[i, 2])
        ev = [(0.0, 1, 10.0, 1), (4.0, 1, 5.0, 1)] + [(t, 0, 0.0, 1) for t in PK] + [(t, 0, 0.0, 2) for t in PD]
        for t, evid, amt, dvid in sorted(ev, key=lambda e: (e[0], -e[1], e[3])):
            rows.append({"ID": i + 1, "TIME": t, "EVID": evid, "AMT": amt, "CMT": 1, "DVID": dvid, "MDV": evid, **ind})
    rec = pd.DataFrame(rows)
    model = pkpd.get_model(str(MODEL))
    sim = pkpd.simulate(rec, model, {"CL": "CLI", "V": TRUTH["V"], "KOUT": "KI", "RR0": "RI", "IC50": TRUTH["IC50"]})
    noise = rng.normal(size=len(rec))
    dv = np.where(
        rec["DVID"] == 1, sim["CP"] * (1 + TRUTH["cp.proportional"] * noise), sim["RR"] + TRUTH["rr.additive"] * noise
    )
    rec["DV"] = np.where(rec["EVID"] == 0, dv, 0.0)
    return rec.drop(columns=["CLI", "KI", "RI"])


def _second_derivative(solver: ODE):
    """d2/dlogVMAX2 of the amount left 5 h after a 100 mg bolus (``1cmt_iv_mm``, one ODE solve), formed as
    ``grad_hess`` forms the Laplace Hessians: a forward-mode product of a reverse-mode gradient."""
    model = pkpd.get_model("1cmt_iv_mm")

    def amount(log_vmax):
        p = {"V": jnp.asarray(10.0), "VMAX": jnp.exp(log_vmax), "KM": jnp.asarray(2.0)}
        x, _ = ode_step(model, solver, p, jnp.array([100.0]), jnp.zeros(1), 0.0, 5.0, None)
        return x[0]

    x0 = jnp.asarray(np.log(15.0))
    d1 = jax.grad(amount)
    _, lin = jax.linearize(d1, x0)
    return float(lin(jnp.asarray(1.0))), d1, x0


def test_fitting_solver_supports_forward_over_reverse_derivatives():
    """The default adjoint cannot give the Hessian (the error every Laplace fit on the ODE path hit); the
    fitter's does, and it equals central differences of the reverse-mode gradient (relative 1e-5: step 1e-4 on
    log VMAX, truncation ~1e-8 of the scale, the solve at rtol 1e-10)."""
    with pytest.raises(TypeError, match="forward-mode"):
        _second_derivative(ODE(rtol=1e-10, atol=1e-12))
    h2, d1, x0 = _second_derivative(ODE(rtol=1e-10, atol=1e-12, adjoint="direct"))
    fd = (float(d1(x0 + 1e-4)) - float(d1(x0 - 1e-4))) / 2e-4
    assert h2 == pytest.approx(fd, rel=1e-5)
    assert abs(h2) > 1.0  # not a vanishing derivative


def test_fit_problem_of_a_nonlinear_model_uses_the_direct_adjoint():
    assert not pkpd.get_model(str(MODEL)).is_linear
    data = pd.DataFrame(
        {"ID": [1, 1, 1], "TIME": [0.0, 1.0, 2.0], "EVID": [1, 0, 0], "AMT": [10.0, 0, 0], "CMT": 1, "DVID": [1, 1, 2]}
    )
    data["MDV"], data["DV"] = data["EVID"], [0.0, 0.05, 12.0]
    prob = build_problem(data, load_model(MODEL))
    assert isinstance(prob.solver, ODE) and prob.solver.adjoint == "direct"


@pytest.mark.slow
def test_emax_turnover_fit_recovers_its_parameters():
    """12 patients, initial estimates 15-60 % off: the Laplace fit (modes, objective, gradient, covariance step)
    runs through the ODE solves. ~2.5 min on 2 cores (DirectAdjoint through every solve; the inner Hessians in
    forward mode only, which halved it from 5 min)."""
    spec = load_model(MODEL)
    prob = build_problem(_study(12), spec)
    fit = lp.fit_laplace(prob)
    assert fit.converged, fit.message
    assert fit.cov_u is not None, fit.cov_message
    pk = prob.packer
    se_u = np.sqrt(np.diag(fit.cov_u))
    free = list(pk.free_names)
    u = np.asarray(fit.u_full)
    for name, truth in TRUTH.items():
        i = pk.names.index(name)
        u_true = 0.5 * np.log(truth) if name.startswith("omega") else np.log(truth)
        se = se_u[free.index(name)]
        assert abs(u[i] - u_true) <= 3 * se, (name, float(u[i]), u_true, se)
