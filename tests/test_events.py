"""Event semantics not covered by the NONMEM conformance set, each against a hand-derived closed form.

* RATE=-1 (modeled rate R<n>) and RATE=-2 (modeled duration D<n>) with F: NONMEM keeps the modeled rate
  and F changes the duration (F*AMT/R); with a modeled duration F changes the rate (F*AMT/D).
* Time-varying covariates: NOCB (NONMEM) and LOCF give different, exactly predictable piecewise decays.
* EVID=2 rows and time decreasing at a reset (EVID=3) row.
Tolerance rel 1e-12: every reference is a product of exponentials evaluated in float64.
"""

import numpy as np
import pandas as pd
import pytest

import pkpd


def _infusion_conc(t, amt_bio, dur, cl, v):
    k = cl / v
    rate = amt_bio / dur
    during = rate / cl * (1 - np.exp(-k * np.minimum(t, dur)))
    return np.where(t <= dur, during, during * np.exp(-k * (t - dur)))


@pytest.mark.parametrize("solver", ["analytic", "ode"])
def test_modeled_rate_and_duration_with_F(solver):
    times = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
    rows = [dict(ID=1, TIME=0.0, EVID=1, AMT=100.0, CMT=1, RATE=-1)]
    rows += [dict(ID=1, TIME=t, EVID=0, AMT=0.0, CMT=1, RATE=0) for t in times]
    rows += [dict(ID=2, TIME=0.0, EVID=1, AMT=100.0, CMT=1, RATE=-2)]
    rows += [dict(ID=2, TIME=t, EVID=0, AMT=0.0, CMT=1, RATE=0) for t in times]
    df = pd.DataFrame(rows)
    p = {"CL": 5.0, "V": 50.0, "F1": 0.6, "R1": 25.0, "D1": 3.0}
    s = solver if solver == "analytic" else pkpd.ODE(rtol=1e-11, atol=1e-13)
    out = pkpd.simulate(df, "1cmt_iv", p, solver=s)
    obs = out["EVID"] == 0
    cp1 = out.loc[obs & (out["ID"] == 1), "CP"].to_numpy()
    cp2 = out.loc[obs & (out["ID"] == 2), "CP"].to_numpy()
    # RATE=-1: rate R1 = 25 mg/h kept, duration F*AMT/R1 = 2.4 h
    ref1 = _infusion_conc(times, 60.0, 60.0 / 25.0, 5.0, 50.0)
    # RATE=-2: duration D1 = 3 h kept, rate F*AMT/D1 = 20 mg/h
    ref2 = _infusion_conc(times, 60.0, 3.0, 5.0, 50.0)
    tol = 1e-12 if solver == "analytic" else 1e-7
    np.testing.assert_allclose(cp1, ref1, rtol=tol)
    np.testing.assert_allclose(cp2, ref2, rtol=tol)


@pytest.mark.parametrize("interp", ["nocb", "locf"])
def test_time_varying_covariate_interpolation(interp):
    # IV bolus 100 mg at t=0; CL = CLX changes on the record at t=2 (from 2 to 8 L/h); V = 20 L.
    df = pd.DataFrame(
        {
            "ID": [1] * 5,
            "TIME": [0.0, 1.0, 2.0, 3.0, 4.0],
            "EVID": [1, 0, 0, 0, 0],
            "AMT": [100.0, 0, 0, 0, 0],
            "CMT": [1] * 5,
            "CLX": [2.0, 2.0, 8.0, 8.0, 8.0],
        }
    )
    out = pkpd.simulate(df, "1cmt_iv", {"CL": "CLX", "V": 20.0}, interpolation=interp)
    cp = out["CP"].to_numpy()
    k_old, k_new = 2.0 / 20, 8.0 / 20
    c0 = 100 / 20
    if interp == "nocb":  # (1, 2] already uses the t=2 record's CL
        ref = [
            c0,
            c0 * np.exp(-k_old),
            c0 * np.exp(-k_old - k_new),
            c0 * np.exp(-k_old - 2 * k_new),
            c0 * np.exp(-k_old - 3 * k_new),
        ]
    else:  # (1, 2] still uses the t=1 record's CL; the change acts from t=2 on
        ref = [
            c0,
            c0 * np.exp(-k_old),
            c0 * np.exp(-2 * k_old),
            c0 * np.exp(-2 * k_old - k_new),
            c0 * np.exp(-2 * k_old - 2 * k_new),
        ]
    np.testing.assert_allclose(cp, ref, rtol=1e-12)


def test_evid2_and_time_going_back_at_reset():
    df = pd.DataFrame(
        {
            "ID": [1] * 7,
            "TIME": [0.0, 1.0, 1.5, 2.0, 0.0, 0.0, 1.0],
            "EVID": [1, 0, 2, 0, 3, 1, 0],
            "AMT": [100.0, 0, 0, 0, 0, 50.0, 0],
            "CMT": [1] * 7,
        }
    )
    out = pkpd.simulate(df, "1cmt_iv", {"CL": 5.0, "V": 50.0})
    k = 0.1
    ref = [2.0, 2.0 * np.exp(-k), 2.0 * np.exp(-1.5 * k), 2.0 * np.exp(-2 * k), 0.0, 1.0, 1.0 * np.exp(-k)]
    np.testing.assert_allclose(out["CP"].to_numpy(), ref, rtol=1e-12, atol=1e-15)


def test_bad_parameter_values_are_reported_with_rows():
    df = pd.DataFrame(
        {
            "ID": [1, 1, 2, 2],
            "TIME": [0.0, 1.0, 0.0, 1.0],
            "EVID": [1, 0, 1, 0],
            "AMT": [10.0, 0, 10.0, 0],
            "CMT": [1] * 4,
            "VX": [20.0, 20.0, -1.0, -1.0],
        }
    )
    with pytest.raises(pkpd.DatasetError, match=r"rows 3, 4.*V \[L\] must be > 0"):
        pkpd.simulate(df, "1cmt_iv", {"CL": 5.0, "V": "VX"})


def test_steady_state_lag_not_below_interval_is_refused():
    df = pd.DataFrame(
        {
            "ID": [1, 1],
            "TIME": [0.0, 1.0],
            "EVID": [1, 0],
            "AMT": [10.0, 0],
            "CMT": [1, 2],
            "SS": [1, 0],
            "II": [12.0, 0],
        }
    )
    with pytest.raises(pkpd.DatasetError, match="lag time 13 h >= II 12 h"):
        pkpd.simulate(df, "1cmt_oral", {"CL": 5.0, "V": 50.0, "KA": 1.0, "ALAG1": 13.0})
