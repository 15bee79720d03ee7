"""The optimizer's continuous stage on a toy problem with a closed-form optimum (issue 5 acceptance).

One-compartment IV bolus model (CL = 2 L/h, V = 20 L, k = 0.1 1/h), six doses every tau = 8 h, each
dose a decision variable. Goal: every trough (just before the next dose, and 8 h after the last) at
C* = 2 mg/L. The troughs are simulated by the NONMEM-exact event engine. With k the elimination rate,
the unique dosing that puts every trough exactly at C* is

    D1 = C* V exp(k tau)           (loading dose)
    Dk = C* V (exp(k tau) - 1)     (maintenance, k >= 2)

(after each trough at C*, the next dose must bring C up so that it decays back to C* in tau). The least-
squares objective sum_k (C_k/C* - 1)^2 is zero there and positive elsewhere, so projected Adam must reach
it; tolerance 1e-4 relative on every dose (Adam with a cosine-decayed step on a well-conditioned
quadratic, seen ~1e-7).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import pkpd
from pkpd.engine import simulate_arrays
from regimens._descent import projected_descent

CL, V, TAU, N_DOSE, C_STAR = 2.0, 20.0, 8.0, 6, 2.0
K = CL / V


def _dataset() -> pd.DataFrame:
    rows = []
    for j in range(N_DOSE):
        if j > 0:  # the trough record comes before the dose at the same time: NONMEM record order
            rows.append(dict(ID=1, TIME=j * TAU, EVID=0, AMT=0.0, CMT=0))
        rows.append(dict(ID=1, TIME=j * TAU, EVID=1, AMT=100.0, CMT=1))
    rows.append(dict(ID=1, TIME=N_DOSE * TAU, EVID=0, AMT=0.0, CMT=0))
    return pd.DataFrame(rows)


PREP = pkpd.prepare(_dataset(), "1cmt_iv", {"CL": CL, "V": V})
REC = {k: jnp.asarray(v) for k, v in PREP.rec.items()}
_EVID = _dataset()["EVID"].to_numpy()  # one subject: padded record j = dataset row j
DOSE_ROWS = np.nonzero(_EVID == 1)[0]
OBS_ROWS = np.nonzero(_EVID == 0)[0]
SCALE = 100.0  # decision variables in units of 100 mg (well-scaled for Adam)


def _troughs(x, rec):
    amt = rec["amt"].at[0, DOSE_ROWS].set(x * SCALE)
    amounts, _ = simulate_arrays(
        PREP.model, PREP.layout, pkpd.Analytic(), dict(rec, amt=amt), PREP.dose, PREP.ss, PREP.theta
    )
    return amounts[0, OBS_ROWS, PREP.model.central] / V


def toy_objective(x, rec, target):
    c = _troughs(x, rec)
    return jnp.sum((c / target - 1.0) ** 2)


def toy_project(x, rec, target):
    return optax.projections.projection_box(x, 0.0, 20.0)  # 0-2,000 mg per dose


def test_dataset_layout():
    assert len(DOSE_ROWS) == N_DOSE and len(OBS_ROWS) == N_DOSE


def test_toy_reaches_closed_form_and_does_not_recompile():
    expected = np.array([C_STAR * V * math.exp(K * TAU)] + [C_STAR * V * (math.exp(K * TAU) - 1.0)] * (N_DOSE - 1))
    x0 = np.full(N_DOSE, 1.0)
    res = projected_descent(
        toy_objective,
        x0,
        args=(REC, jnp.asarray(C_STAR)),
        project=toy_project,
        steps=1500,
        learning_rate=0.05,
        final_lr_fraction=0.001,
    )
    doses = res.x * SCALE
    np.testing.assert_allclose(doses, expected, rtol=1e-4)
    assert res.value < 1e-8
    assert res.history[0] > 1e-2 > res.history[-1]
    # a second problem of the same shapes (another target) reuses the compiled update: no compilation
    res2 = projected_descent(
        toy_objective,
        x0,
        args=(REC, jnp.asarray(1.5)),
        project=toy_project,
        steps=1500,
        learning_rate=0.05,
        final_lr_fraction=0.001,
    )
    assert res2.n_compiles == 0
    np.testing.assert_allclose(res2.x * SCALE, expected * 1.5 / C_STAR, rtol=1e-4)


def test_projection_keeps_bounds():
    """A target out of reach within the 2,000-mg box stops at the bound, never beyond it."""
    res = projected_descent(
        toy_objective,
        np.full(N_DOSE, 1.0),
        args=(REC, jnp.asarray(500.0)),
        project=toy_project,
        steps=200,
        learning_rate=0.5,
    )
    assert np.all(res.x <= 20.0 + 1e-12) and np.all(res.x >= 0.0)
    np.testing.assert_allclose(res.x, 20.0)  # every dose at its upper bound
