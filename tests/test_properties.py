"""Structural properties of the engine that hold whatever the reference: linearity, conservation of
mass, positivity, transformation invariance (jit, vmap, padding, precomputed schedules), derivatives,
and compile-once behaviour.

* superposition: for a linear model the prediction for two regimens given together equals the sum of
  the predictions for each alone; dose proportionality: doubling every AMT (and RATE, so durations are
  unchanged) doubles every amount, also at steady state;
* mass balance, exact: with ``_metabolite`` models, FM = 1 and a negligible metabolite clearance the
  METABOLITE compartment accumulates everything eliminated, so the sum of all compartments equals the
  bioavailable amount delivered so far (bolus arrivals after their lag, infusions pro rata); and the
  area under CP (Simpson, fine grid, long horizon) equals AMT/CL;
* non-negativity of every amount on seeded random regimens;
* ``jax.disable_jit()`` == jitted; a batch (vmap) == each subject alone, both with the batch's padding and
  with its own; the precomputed-schedule path == the plain path;
* ``jax.grad`` of the summed central amounts with respect to a structural parameter, a dose amount and a
  lag time == central finite differences (rtol 1e-5);
* a second batch with the same layout and shapes compiles nothing (``jax.monitoring`` compile events).

Tolerances: exact-solver identities (superposition, proportionality, jit/vmap invariance) hold to
rounding, checked at 1e-12 relative (1e-14 x peak absolute); ODE identities at 1e-7 (each integration
carries its own 1e-10-tolerance error); mass balance at 1e-9 x dose (the metabolite leak CLM/VM*t is
below 1e-10); AUC by Simpson's rule at 1e-6 (quadrature error ~1e-8).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax import monitoring

import pkpd
from pkpd.engine import simulate_arrays

ODE = pkpd.ODE(rtol=1e-10, atol=1e-12)
ANALYTIC = pkpd.Analytic()

P2 = {"CL": 2.0, "V1": 10.0, "Q": 3.0, "V2": 20.0, "KA": 1.1}


def _obs(ident, times):
    return [dict(ID=ident, TIME=float(t), EVID=0, AMT=0.0, CMT=0, RATE=0.0, II=0.0, ADDL=0, SS=0) for t in times]


def _dose(ident, time, amt, cmt, rate=0.0, ii=0.0, addl=0, ss=0, evid=1):
    return dict(
        ID=ident, TIME=float(time), EVID=evid, AMT=float(amt), CMT=cmt, RATE=float(rate), II=float(ii), ADDL=addl, SS=ss
    )


def _frame(rows):
    df = pd.DataFrame(rows)
    return df.sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)


def assert_close(a, b, rtol, atol_rel_peak, what):
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    peak = max(np.max(np.abs(b)), 1e-300)
    err = np.abs(a - b)
    bound = rtol * np.abs(b) + atol_rel_peak * peak
    if not np.all(err <= bound):
        i = np.unravel_index(int(np.argmax(err - bound)), err.shape)
        raise AssertionError(
            f"{what}: exceeds rtol {rtol:g} / atol {atol_rel_peak:g}*peak at {i}: {a[i]!r} vs {b[i]!r}"
        )


def _amounts(out, model):
    return out[list(pkpd.get_model(model).compartments)].to_numpy()


# ---------------------------------------------------------------------------------------------------
# superposition and dose proportionality

OBS_T = [0.3, 1.0, 2.5, 4.0, 5.0, 6.2, 9.0, 13.0, 14.5, 21.0, 22.0, 30.0, 47.0]


def _regimen_a(ident, scale=1.0):  # lagged oral doses into DEPOT with ADDL
    return [_dose(ident, 0.0, 100.0 * scale, 1, ii=8.0, addl=2)]


def _regimen_b(ident, scale=1.0):  # infusions into CENTRAL, overlapping the oral doses
    return [_dose(ident, 5.0, 50.0 * scale, 2, rate=20.0 * scale, ii=8.0, addl=2)]


@pytest.mark.parametrize("solver,rtol,atol", [(ANALYTIC, 1e-12, 1e-14), (ODE, 1e-7, 1e-9)], ids=["analytic", "ode"])
def test_superposition_and_dose_proportionality(solver, rtol, atol):
    rows = (
        _regimen_a(1)
        + _regimen_b(1)
        + _obs(1, OBS_T)
        + _regimen_a(2)
        + _obs(2, OBS_T)
        + _regimen_b(3)
        + _obs(3, OBS_T)
        + _regimen_a(4, 2.0)
        + _regimen_b(4, 2.0)
        + _obs(4, OBS_T)
    )
    df = _frame(rows)
    params = dict(P2, ALAG1=0.4, F1=0.7)
    out = pkpd.simulate(df, "2cmt_oral", params, solver=solver)
    obs = out[out["EVID"] == 0]
    a = {i: _amounts(obs[obs["ID"] == i], "2cmt_oral") for i in (1, 2, 3, 4)}
    assert_close(a[1], a[2] + a[3], rtol, atol, "superposition: A+B vs A alone + B alone")
    assert_close(a[4], 2.0 * a[1], rtol, atol, "dose proportionality: 2x AMT and RATE")


def test_dose_proportionality_steady_state():
    rows = []
    for ident, scale in ((1, 1.0), (2, 3.0)):
        rows += [
            _dose(ident, 0.0, 100.0 * scale, 1, ii=12.0, ss=1),
            _dose(ident, 30.0, 60.0 * scale, 2, rate=15.0 * scale, ii=12.0, ss=1),
        ]
        rows += _obs(ident, [0.5, 2.0, 6.0, 11.9, 12.0, 20.0, 30.5, 33.0, 36.0, 41.0, 60.0])
    out = pkpd.simulate(_frame(rows), "2cmt_oral", dict(P2, ALAG1=0.4, F1=0.7), solver="analytic")
    a1 = _amounts(out[out["ID"] == 1], "2cmt_oral")
    a2 = _amounts(out[out["ID"] == 2], "2cmt_oral")
    assert_close(a2, 3.0 * a1, 1e-12, 1e-14, "dose proportionality at steady state")


# ---------------------------------------------------------------------------------------------------
# mass balance


def _delivered(t, doses, F, lag):
    """Bioavailable amount delivered by time t: boluses after their lag, infusions pro rata."""
    total = np.zeros_like(t)
    for tdose, amt, rate, ii, addl, cmt in doses:
        f, lg = F.get(cmt, 1.0), lag.get(cmt, 0.0)
        for j in range(addl + 1):
            start = tdose + j * ii + lg
            if rate > 0:
                dur = f * amt / rate
                total = total + rate * np.clip(t - start, 0.0, dur)
            else:
                total = total + np.where(t >= start, f * amt, 0.0)
    return total


@pytest.mark.parametrize("ncmt", [1, 2, 3])
@pytest.mark.parametrize("solver,tol", [(ANALYTIC, 1e-9), (ODE, 1e-8)], ids=["analytic", "ode"])
def test_mass_balance_metabolite_collects_eliminated_drug(ncmt, solver, tol):
    model = f"{ncmt}cmt_oral_metabolite"
    disp = {
        1: {"CL": 2.0, "V": 10.0},
        2: dict(P2),
        3: {"CL": 2.0, "V1": 10.0, "Q2": 3.0, "V2": 20.0, "Q3": 0.5, "V3": 40.0},
    }[ncmt]
    params = dict(disp, KA=1.1, FM=1.0, CLM=1e-12, VM=1.0, ALAG1=0.5, F1=0.8, F2=0.9)
    doses = [
        (0.0, 100.0, 0.0, 6.0, 2, 1),  # (time, amt, rate, ii, addl, cmt): oral ADDL, lag and F1
        (3.0, 40.0, 10.0, 0.0, 0, 2),  # infusion into CENTRAL (F2 shortens it)
        (20.0, 30.0, 0.0, 0.0, 0, 2),  # bolus into CENTRAL
        (25.0, 20.0, 5.0, 0.0, 0, 1),
    ]  # infusion into DEPOT, lagged
    times = np.array(
        [
            0.0,
            0.25,
            0.5,
            0.75,
            1.0,
            2.0,
            3.0,
            4.0,
            6.0,
            6.6,
            7.0,
            12.0,
            13.0,
            20.0,
            21.0,
            25.0,
            26.0,
            28.0,
            30.0,
            48.0,
            96.0,
        ]
    )
    rows = [_dose(1, t, a, c, rate=r, ii=ii, addl=ad) for t, a, r, ii, ad, c in doses] + _obs(1, times)
    out = pkpd.simulate(_frame(rows), model, params, solver=solver)
    obs = out[out["EVID"] == 0]
    t = obs["TIME"].to_numpy()
    total = _amounts(obs, model).sum(axis=1)
    expected = _delivered(t, doses, {1: 0.8, 2: 0.9}, {1: 0.5})
    assert_close(total, expected, 0.0, tol, f"{model}: sum of all compartments vs bioavailable dose delivered")
    # and METABOLITE alone holds what has left the body so far: it grows monotonically
    assert np.all(np.diff(obs["METABOLITE"].to_numpy()) >= 0)


@pytest.mark.parametrize(
    "model,params", [("1cmt_iv", {"CL": 2.0, "V": 10.0}), ("2cmt_iv", {"CL": 2.0, "V1": 10.0, "Q": 3.0, "V2": 20.0})]
)
def test_auc_equals_dose_over_clearance(model, params):
    dose = 100.0
    # slowest eigenvalue >= 0.06 /h: exp(-0.06*500) ~ 1e-13, so the tail beyond 500 h is negligible
    t = np.linspace(0.0, 500.0, 4001)
    rows = [_dose(1, 0.0, dose, 1)] + _obs(1, t[1:])
    out = pkpd.simulate(_frame(rows), model, params, solver="analytic")
    cp = out["CP"].to_numpy()
    assert out["TIME"].to_numpy()[0] == 0.0 and cp[0] == pytest.approx(dose / params.get("V", params.get("V1")))
    h = t[1] - t[0]
    auc = h / 3.0 * (cp[0] + cp[-1] + 4.0 * cp[1:-1:2].sum() + 2.0 * cp[2:-1:2].sum())
    assert auc == pytest.approx(dose / params["CL"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# non-negativity on random regimens


def _random_subject(rng, ident):
    rows = []
    lag = float(rng.uniform(0.0, 1.5)) if rng.random() < 0.5 else 0.0
    t = 0.0
    for k in range(int(rng.integers(1, 4))):
        t += float(rng.uniform(0.0, 12.0)) if k else 0.0
        amt = float(rng.uniform(5.0, 300.0))
        cmt = int(rng.integers(1, 3))  # DEPOT or CENTRAL
        rate = amt / float(rng.uniform(0.25, 20.0)) if rng.random() < 0.4 else 0.0
        if k == 0 and rng.random() < 0.3:
            ii = float(rng.uniform(lag + 1.0, 24.0))
            rows.append(_dose(ident, t, amt, cmt, rate=rate, ii=ii, ss=1, addl=int(rng.integers(0, 3))))
        else:
            addl = int(rng.integers(0, 4))
            ii = float(rng.uniform(1.0, 12.0)) if addl else 0.0
            rows.append(_dose(ident, t, amt, cmt, rate=rate, ii=ii, addl=addl))
    rows += _obs(ident, np.sort(rng.uniform(0.0, 72.0, size=int(rng.integers(5, 20)))))
    pars = {
        "cCL": rng.uniform(0.1, 10.0),
        "cV1": rng.uniform(2.0, 100.0),
        "cQ": rng.uniform(0.1, 20.0),
        "cV2": rng.uniform(2.0, 200.0),
        "cKA": rng.uniform(0.05, 5.0),
        "cLAG": lag,
        "cF": rng.uniform(0.2, 1.0),
    }
    return rows, pars


def test_amounts_nonnegative_on_random_regimens():
    rng = np.random.default_rng(20240611)
    frames = []
    for ident in range(1, 21):
        rows, pars = _random_subject(rng, ident)
        df = _frame(rows)
        for k, v in pars.items():
            df[k] = float(v)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    mapping = {"CL": "cCL", "V1": "cV1", "Q": "cQ", "V2": "cV2", "KA": "cKA", "ALAG1": "cLAG", "F1": "cF"}
    out = pkpd.simulate(df, "2cmt_oral", mapping, solver="analytic")
    for ident in range(1, 21):
        a = _amounts(out[out["ID"] == ident], "2cmt_oral")
        assert np.all(np.isfinite(a))
        peak = np.max(a)
        assert peak > 0
        assert np.all(a >= -1e-12 * peak), f"subject {ident}: negative amount {a.min()!r} (peak {peak!r})"


# ---------------------------------------------------------------------------------------------------
# transformation invariance


def _batch_frame():
    rows = []
    rows += [_dose(1, 0.0, 100.0, 1, ii=8.0, addl=3)] + _obs(1, [1.0, 4.0, 9.0, 30.0])
    rows += [_dose(2, 0.0, 80.0, 2, rate=40.0)] + _obs(2, [0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 24.0])
    rows += [
        _dose(3, 0.0, 50.0, 1),
        _dose(3, 6.0, 70.0, 2, rate=10.0, ii=12.0, addl=1),
        _dose(3, 10.0, 20.0, 1),
    ] + _obs(3, [2.0, 7.0, 13.0, 20.0, 26.0, 40.0])
    rows += [_dose(4, 0.0, 30.0, 2)] + _obs(4, [0.1, 48.0])
    return _frame(rows)


def _prep_params(lagged):
    return dict(P2, ALAG1=0.6, F1=0.75) if lagged else dict(P2)


def _unpad(prep, amounts):
    """Amounts at the dataset rows (drops padding)."""
    a = np.asarray(amounts)
    return a[prep.row_map[:, 0], prep.row_map[:, 1]]


def _slice(tree, i):
    return jax.tree_util.tree_map(lambda v: v[i : i + 1], tree)


@pytest.mark.parametrize("lagged", [False, True], ids=["static-times", "lagged"])
def test_vmap_batch_equals_each_subject_alone(lagged):
    df = _batch_frame()
    params = _prep_params(lagged)
    prep = pkpd.prepare(df, "2cmt_oral", params)
    amounts, ok = simulate_arrays(prep.model, prep.layout, ANALYTIC, prep.rec, prep.dose, prep.ss, prep.theta)
    assert np.all(np.asarray(ok))
    batch_rows = _unpad(prep, amounts)
    ids = df["ID"].to_numpy()
    for s in range(amounts.shape[0]):
        # (1) the same padded layout, one subject at a time
        one, _ = simulate_arrays(
            prep.model,
            prep.layout,
            ANALYTIC,
            _slice(prep.rec, s),
            _slice(prep.dose, s),
            _slice(prep.ss, s),
            _slice(prep.theta, s),
        )
        assert_close(np.asarray(one)[0], np.asarray(amounts)[s], 1e-13, 1e-15, f"subject slot {s}: vmap vs alone")
    for ident in np.unique(ids) if not lagged else []:
        # (2) the subject prepared on its own (its own, smaller padding; one compilation each)
        sub = df[df["ID"] == ident].reset_index(drop=True)
        p1 = pkpd.prepare(sub, "2cmt_oral", params)
        a1, _ = simulate_arrays(p1.model, p1.layout, ANALYTIC, p1.rec, p1.dose, p1.ss, p1.theta)
        assert_close(_unpad(p1, a1), batch_rows[ids == ident], 1e-12, 1e-14, f"ID {ident}: batch vs own layout")
    # (3) the precomputed schedule (used by pkpd.simulate when event times are static) agrees
    sched = prep.schedule(ANALYTIC) if hasattr(prep, "schedule") else None
    if sched is not None:
        a2, _ = simulate_arrays(prep.model, prep.layout, ANALYTIC, prep.rec, prep.dose, prep.ss, prep.theta, sched)
        assert_close(_unpad(prep, a2), batch_rows, 1e-12, 1e-14, "precomputed schedule vs plain path")
    # (4) and pkpd.simulate returns those very rows
    out = pkpd.simulate(df, "2cmt_oral", params, solver="analytic")
    assert_close(_amounts(out, "2cmt_oral"), batch_rows, 1e-12, 1e-14, "pkpd.simulate vs simulate_arrays")


def test_disable_jit_equals_jit():
    rows = [_dose(1, 0.0, 100.0, 1), _dose(1, 2.0, 30.0, 2, rate=15.0)] + _obs(1, [1.0, 3.0, 7.0])
    df = _frame(rows)
    prep = pkpd.prepare(df, "1cmt_oral", {"CL": 2.0, "V": 10.0, "KA": 1.1, "ALAG1": 0.3})
    args = (prep.model, prep.layout, ANALYTIC, prep.rec, prep.dose, prep.ss, prep.theta)
    jitted, ok1 = simulate_arrays(*args)
    with jax.disable_jit():
        eager, ok2 = simulate_arrays(*args)
    assert np.all(np.asarray(ok1)) and np.all(np.asarray(ok2))
    assert_close(np.asarray(eager), np.asarray(jitted), 1e-12, 1e-14, "disable_jit vs jit")


# ---------------------------------------------------------------------------------------------------
# gradients


def _grad_frame(ss):
    if ss:
        rows = [_dose(1, 0.0, 100.0, 1, ii=12.0, ss=1, addl=1), _dose(1, 30.0, 40.0, 2, rate=16.0)]
        obs = [0.4, 1.3, 2.2, 5.1, 11.7, 13.3, 17.0, 23.9, 31.1, 33.7, 40.2]
    else:
        rows = [_dose(1, 0.0, 100.0, 1, ii=8.0, addl=2), _dose(1, 3.0, 40.0, 2, rate=16.0)]
        obs = [0.4, 1.3, 2.2, 3.7, 5.1, 6.9, 8.3, 9.9, 14.2, 17.3, 20.1, 30.7]
    return _frame(rows + _obs(1, obs))


def _central_sum(prep, solver, rec, theta):
    amounts, _ = simulate_arrays(prep.model, prep.layout, solver, rec, prep.dose, prep.ss, theta)
    valid = jnp.asarray(prep.rec["valid"])
    return jnp.sum(jnp.where(valid, amounts[..., prep.model.central], 0.0))


GRAD_CASES = [
    pytest.param(ANALYTIC, False, id="analytic-addl"),
    pytest.param(ANALYTIC, True, id="analytic-ss"),
    pytest.param(ODE, False, id="ode-addl"),
]


@pytest.mark.parametrize("solver,ss", GRAD_CASES)
def test_gradients_match_finite_differences(solver, ss):
    """d(sum of central amounts)/d(CL, oral AMT, infusion AMT, ALAG1) by jax.grad vs central differences.

    All four enter one function of a 4-vector (one compilation for the value, one for the gradient).
    The oral dose's ADDL copies / SS regimen follow its AMT; the infusion's AMT also sets its duration.
    """
    df = _grad_frame(ss)
    prep = pkpd.prepare(df, "2cmt_oral", dict(P2, ALAG1=0.5))
    rec = {k: jnp.asarray(v) for k, v in prep.rec.items()}
    theta = prep.theta
    dose_rows = [int(j) for j in np.nonzero(np.asarray(prep.rec["amt"])[0] > 0)[0]]
    assert len(dose_rows) == 2
    x0 = np.array([2.0, *(float(prep.rec["amt"][0, j]) for j in dose_rows), 0.5])
    names = ["CL", "AMT(oral)", "AMT(infusion)", "ALAG1"]

    @jax.jit
    def f(x):
        # (a) a structural parameter: CL replaced by one traced scalar
        p = dict(theta["p"], CL=jnp.broadcast_to(x[0], theta["p"]["CL"].shape))
        # (b) the dose amounts of the two dose records
        amt = rec["amt"].at[0, dose_rows[0]].set(x[1]).at[0, dose_rows[1]].set(x[2])
        # (c) the lag time of the depot (ALAG1)
        lag = theta["ALAG"].at[..., 0].set(x[3])
        return _central_sum(prep, solver, dict(rec, amt=amt), dict(theta, p=p, ALAG=lag))

    g = np.asarray(jax.grad(f)(jnp.asarray(x0)))
    for i, name in enumerate(names):
        h = 1e-6 * abs(x0[i])
        e = np.zeros(4)
        e[i] = h
        fd = (float(f(jnp.asarray(x0 + e))) - float(f(jnp.asarray(x0 - e)))) / (2.0 * h)
        assert np.isfinite(g[i]) and g[i] != 0.0, f"d/d{name}: {g[i]}"
        assert g[i] == pytest.approx(fd, rel=1e-5), f"d(sum central)/d{name}: autodiff {g[i]!r} vs central FD {fd!r}"


# ---------------------------------------------------------------------------------------------------
# compile once


class _CompileCounter:
    """Counts XLA backend compilations and jaxpr traces through jax.monitoring events."""

    def __init__(self):
        self.compiles = 0
        self.traces = 0
        self.active = False
        monitoring.register_event_duration_secs_listener(self._on_duration)

    def _on_duration(self, name, _duration, **_kw):
        if not self.active:
            return
        if name == "/jax/core/compile/backend_compile_duration":
            self.compiles += 1
        elif name == "/jax/core/compile/jaxpr_trace_duration":
            self.traces += 1

    def __enter__(self):
        self.compiles = self.traces = 0
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False


_COUNTER = None


def _counter():
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = _CompileCounter()
    return _COUNTER


def test_second_batch_with_same_layout_does_not_recompile():
    def batch(seed):
        rng = np.random.default_rng(seed)
        rows = []
        for ident in (1, 2, 3):
            rows += [
                _dose(ident, 0.0, float(rng.uniform(50, 150)), 1, ii=float(rng.uniform(6, 12)), addl=2),
                _dose(ident, 2.0, float(rng.uniform(10, 50)), 2, rate=float(rng.uniform(10, 30))),
            ]
            rows += _obs(ident, np.sort(rng.uniform(0.0, 48.0, size=6)))
        df = _frame(rows)
        df["cCL"] = np.repeat(rng.uniform(1.0, 3.0, size=3), len(df) // 3)
        return pkpd.prepare(df, "2cmt_oral", dict(P2, CL="cCL", ALAG1=0.3))

    p1, p2 = batch(1), batch(2)
    assert p1.layout == p2.layout
    assert jax.tree_util.tree_map(np.shape, (p1.rec, p1.dose, p1.ss)) == jax.tree_util.tree_map(
        np.shape, (p2.rec, p2.dose, p2.ss)
    )
    assert not np.allclose(np.asarray(p1.theta["p"]["CL"]), np.asarray(p2.theta["p"]["CL"]))
    counter = _counter()
    # a model object the jit cache has never seen (get_model is cached): the first call must compile
    model = pkpd.models.library._grammar_model.__wrapped__("2cmt_oral")
    with counter:
        a1, _ = simulate_arrays(model, p1.layout, ANALYTIC, p1.rec, p1.dose, p1.ss, p1.theta)
        jax.block_until_ready(a1)
    assert counter.compiles >= 1, "the compile counter saw no compilation: jax.monitoring events changed?"
    with counter:
        a2, _ = simulate_arrays(model, p2.layout, ANALYTIC, p2.rec, p2.dose, p2.ss, p2.theta)
        jax.block_until_ready(a2)
    assert counter.compiles == 0, f"second batch of the same layout compiled {counter.compiles} time(s)"
    assert counter.traces == 0, f"second batch of the same layout was re-traced {counter.traces} time(s)"
    assert not np.allclose(np.asarray(a1), np.asarray(a2))
