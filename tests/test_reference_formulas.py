"""Verify the independent closed-form references in ``reference_formulas.py``.

Every closed form is compared with an exact linear-ODE solution built from
the compartment rate matrix via ``scipy.linalg.expm`` (augmented with an
input-rate column for infusions; periodic fixed point
``(I - expm(K tau))^{-1}`` for steady state), at rtol 1e-10 / atol 1e-14*peak.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.linalg import expm as _scipy_expm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_formulas as rf  # noqa: E402

RTOL = 1e-10

P1 = {"CL": 1.1, "V": 20.0}
P1B = {"CL": 5.0, "V": 50.0}
P2 = {"CL": 5.0, "V1": 50.0, "Q": 10.0, "V2": 100.0}
P2B = {"CL": 12.0, "V1": 8.0, "Q": 3.0, "V2": 40.0}
P3 = {"CL": 5.0, "V1": 50.0, "Q2": 10.0, "V2": 100.0, "Q3": 2.0, "V3": 200.0}
P3B = {"CL": 0.8, "V1": 4.0, "Q2": 6.0, "V2": 12.0, "Q3": 0.5, "V3": 60.0}

CASES = [
    (1, P1, 1.5),
    (1, P1B, 1.0),
    (2, P2, 1.0),
    (2, P2B, 0.7),
    (3, P3, 1.0),
    (3, P3B, 2.3),
]
IDS = [f"{n}cmt-{i}" for i, (n, _, _) in enumerate(CASES)]


# ---------------------------------------------------------------------------
# expm-based exact solution of the compartment ODE
# ---------------------------------------------------------------------------
def rate_matrix(ncmt, p, ka=0.0):
    """States: [depot, central, peripheral...]; dx/dt = K x."""
    if ncmt == 1:
        v1, cl, per = p["V"], p["CL"], []
    elif ncmt == 2:
        v1, cl, per = p["V1"], p["CL"], [(p["Q"], p["V2"])]
    else:
        v1, cl, per = p["V1"], p["CL"], [(p["Q2"], p["V2"]), (p["Q3"], p["V3"])]
    n = 2 + len(per)
    K = np.zeros((n, n))
    K[0, 0] = -ka
    K[1, 0] = ka
    K[1, 1] = -cl / v1
    for j, (q, vj) in enumerate(per, start=2):
        K[1, 1] -= q / v1
        K[1, j] = q / vj
        K[j, 1] = q / v1
        K[j, j] = -q / vj
    return K, v1


def expm(A):
    """``scipy.linalg.expm`` forced onto its generic Pade scaling-and-squaring path.

    For (lower/upper) triangular input scipy recomputes the sub-diagonal with an
    ``(e^a - e^b)/(a - b)`` formula that loses ~8 digits when two diagonal
    entries nearly coincide (e.g. the 1-cmt oral matrix with ka ~= k).  Padding
    with a decoupled non-triangular 2x2 block makes the matrix non-triangular;
    the block-diagonal structure keeps the original block exact.
    """
    n = A.shape[0]
    B = np.zeros((n + 2, n + 2))
    B[:n, :n] = A
    B[n, n + 1] = B[n + 1, n] = 1e-3
    return _scipy_expm(B)[:n, :n]


def unit(n, i):
    e = np.zeros(n)
    e[i] = 1.0
    return e


def prop(K, x0, dt):
    return expm(K * dt) @ x0


def infuse(K, x0, rate, dt, c=1):
    """State after infusing ``rate`` into compartment ``c`` (central) for ``dt`` from x0."""
    n = K.shape[0]
    M = np.zeros((n + 1, n + 1))
    M[:n, :n] = K
    M[c, n] = rate
    y0 = np.append(x0, 1.0)
    return (expm(M * dt) @ y0)[:n]


def ode_bolus(t, dose, ncmt, p, tdose=0.0):
    K, v1 = rate_matrix(ncmt, p)
    x0 = dose * unit(K.shape[0], 1)
    return np.array([prop(K, x0, s - tdose)[1] / v1 if s >= tdose else 0.0 for s in t])


def ode_infusion(t, dose, dur, ncmt, p, tstart=0.0):
    K, v1 = rate_matrix(ncmt, p)
    n = K.shape[0]
    rate = dose / dur
    out = []
    for s in t:
        u = s - tstart
        if u < 0:
            out.append(0.0)
        elif u <= dur:
            out.append(infuse(K, np.zeros(n), rate, u)[1] / v1)
        else:
            xe = infuse(K, np.zeros(n), rate, dur)
            out.append(prop(K, xe, u - dur)[1] / v1)
    return np.array(out)


def ode_oral(t, dose, ncmt, p, ka, F=1.0, tdose=0.0, tlag=0.0):
    K, v1 = rate_matrix(ncmt, p, ka)
    x0 = F * dose * unit(K.shape[0], 0)
    t0 = tdose + tlag
    return np.array([prop(K, x0, s - t0)[1] / v1 if s >= t0 else 0.0 for s in t])


def ode_ss_bolus(t, dose, tau, ncmt, p):
    K, v1 = rate_matrix(ncmt, p)
    K = K[1:, 1:]  # drop the (unused, non-decaying) depot so I - expm(K tau) is regular
    n = K.shape[0]
    x0 = np.linalg.solve(np.eye(n) - expm(K * tau), dose * unit(n, 0))
    return np.array([prop(K, x0, s)[0] / v1 for s in t])


def ode_ss_oral(t, dose, tau, ncmt, p, ka, F=1.0):
    K, v1 = rate_matrix(ncmt, p, ka)
    n = K.shape[0]
    x0 = np.linalg.solve(np.eye(n) - expm(K * tau), F * dose * unit(n, 0))
    return np.array([prop(K, x0, s)[1] / v1 for s in t])


def ode_ss_infusion(t, dose, dur, tau, ncmt, p):
    K, v1 = rate_matrix(ncmt, p)
    K = K[1:, 1:]  # drop the depot; central is index 0
    n = K.shape[0]
    rate = dose / dur
    # one period from zero: infusion for dur then free decay for tau - dur
    c = prop(K, infuse(K, np.zeros(n), rate, dur, c=0), tau - dur)
    x0 = np.linalg.solve(np.eye(n) - expm(K * tau), c)
    out = []
    for s in t:
        if s <= dur:
            out.append(infuse(K, x0, rate, s, c=0)[0] / v1)
        else:
            out.append(prop(K, infuse(K, x0, rate, dur, c=0), s - dur)[0] / v1)
    return np.array(out)


def check(got, want, rtol=RTOL):
    got = np.asarray(got, dtype=float)
    want = np.asarray(want, dtype=float)
    assert got.shape == want.shape
    atol = 1e-14 * np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def grid(*special, tmax=48.0, n=97):
    g = np.linspace(0.0, tmax, n)
    extra = []
    for s in special:
        extra += [s, s - 1e-9, s + 1e-9, s - 1e-3, s + 1e-3]
    g = np.concatenate([g, np.array(extra, dtype=float)])
    return np.unique(g[g >= 0.0])


# ---------------------------------------------------------------------------
# disposition sanity
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
def test_eigenvalues_match_rate_matrix(ncmt, p, ka):
    lam, coef = rf.disposition(ncmt, p)
    K, v1 = rate_matrix(ncmt, p)
    ev = np.sort(-np.linalg.eigvals(K[1:, 1:]).real)[::-1]
    np.testing.assert_allclose(lam, ev, rtol=1e-12)
    assert np.all(np.diff(lam) < 0) or ncmt == 1
    np.testing.assert_allclose(np.sum(coef), 1.0 / v1, rtol=1e-13)
    # AUC of unit bolus = 1/CL
    np.testing.assert_allclose(np.sum(coef / lam), 1.0 / p["CL"], rtol=1e-13)


def test_aliases_and_bad_ncmt():
    a = rf.conc_bolus(np.array([1.0, 2.0]), 100.0, 1, {"CL": 1.1, "V1": 20.0})
    b = rf.conc_bolus(np.array([1.0, 2.0]), 100.0, 1, P1)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        rf.disposition(4, P3)


# ---------------------------------------------------------------------------
# single doses
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
def test_bolus(ncmt, p, ka):
    tdose = 2.0
    t = grid(tdose)
    got = rf.conc_bolus(t, 100.0, ncmt, p, tdose=tdose)
    check(got, ode_bolus(t, 100.0, ncmt, p, tdose=tdose))
    assert np.all(got[t < tdose] == 0.0)
    assert got[t == tdose][0] == pytest.approx(100.0 / rate_matrix(ncmt, p)[1], rel=1e-14)


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
@pytest.mark.parametrize("dur", [0.5, 3.0])
def test_infusion(ncmt, p, ka, dur):
    tstart = 1.0
    t = grid(tstart, tstart + dur)
    got = rf.conc_infusion(t, 250.0, dur, ncmt, p, tstart=tstart)
    check(got, ode_infusion(t, 250.0, dur, ncmt, p, tstart=tstart))
    assert np.all(got[t <= tstart] == 0.0)


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
def test_infusion_vs_quad(ncmt, p, ka):
    """Infusion = integral of the bolus response over the infusion window."""
    dur, dose = 2.0, 80.0
    rate = dose / dur
    ts = np.array([0.3, 1.0, 2.0, 2.5, 7.0, 20.0])
    got = rf.conc_infusion(ts, dose, dur, ncmt, p)
    want = []
    for s in ts:
        val, _ = quad(
            lambda u: rate * rf.conc_bolus(np.array([s - u]), 1.0, ncmt, p)[0],
            0.0,
            min(s, dur),
            epsabs=0.0,
            epsrel=1e-13,
            limit=200,
        )
        want.append(val)
    check(got, np.array(want))


def test_infusion_zero_duration_is_bolus():
    t = grid(1.0)
    np.testing.assert_array_equal(
        rf.conc_infusion(t, 10.0, 0.0, 2, P2, tstart=1.0),
        rf.conc_bolus(t, 10.0, 2, P2, tdose=1.0),
    )


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
@pytest.mark.parametrize("tlag", [0.0, 0.75])
def test_oral(ncmt, p, ka, tlag):
    tdose, F = 1.5, 0.8
    t = grid(tdose, tdose + tlag)
    got = rf.conc_oral(t, 100.0, ncmt, p, ka, F=F, tdose=tdose, tlag=tlag)
    check(got, ode_oral(t, 100.0, ncmt, p, ka, F=F, tdose=tdose, tlag=tlag))
    assert np.all(got[t <= tdose + tlag] == 0.0)


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
def test_oral_ka_equals_each_eigenvalue(ncmt, p, ka):
    lam, _ = rf.disposition(ncmt, p)
    t = grid(0.0)
    for li in lam:
        for kk in (li, li * (1 + 1e-9), li * (1 - 1e-9), li * (1 + 1e-6)):
            got = rf.conc_oral(t, 100.0, ncmt, p, kk, F=0.9)
            check(got, ode_oral(t, 100.0, ncmt, p, kk, F=0.9))


def _limit_1cmt(t, dose, F, ka, k, V):
    """Exact 1-cmt oral C for ka = k + d: F D ka/V * t e^{-kt} * (1 - x/2 + x^2/6 - x^3/24), x=d t."""
    x = (ka - k) * t
    return F * dose * ka / V * t * np.exp(-k * t) * (1 - x / 2 + x**2 / 6 - x**3 / 24)


@pytest.mark.parametrize("p", [P1, P1B])
def test_oral_1cmt_ka_equal_k_exact(p):
    k = p["CL"] / p["V"]
    t = grid(0.0, tmax=72.0)
    got = rf.conc_oral(t, 100.0, 1, p, k, F=0.7)
    want = 0.7 * 100.0 * k * t * np.exp(-k * t) / p["V"]
    check(got, want, rtol=1e-9)
    check(got, ode_oral(t, 100.0, 1, p, k, F=0.7))
    # with tdose/tlag
    got2 = rf.conc_oral(t, 100.0, 1, p, k, F=0.7, tdose=1.0, tlag=0.5)
    s = np.maximum(t - 1.5, 0.0)
    check(got2, 0.7 * 100.0 * k * s * np.exp(-k * s) / p["V"], rtol=1e-9)


@pytest.mark.parametrize("p", [P1, P1B])
@pytest.mark.parametrize("rel", [1e-9, -1e-9, 1e-12, 1e-7])
def test_oral_1cmt_ka_near_k(p, rel):
    k = p["CL"] / p["V"]
    ka = k * (1 + rel)
    t = grid(0.0, tmax=72.0)
    got = rf.conc_oral(t, 100.0, 1, p, ka)
    check(got, _limit_1cmt(t, 100.0, 1.0, ka, k, p["V"]), rtol=1e-9)
    check(got, ode_oral(t, 100.0, 1, p, ka))
    # the naive formula loses ~7 digits here; ours must not
    if abs(rel) <= 1e-9:
        naive = 100.0 * ka / p["V"] * (np.exp(-k * t) - np.exp(-ka * t)) / (ka - k)
        exact = _limit_1cmt(t, 100.0, 1.0, ka, k, p["V"])
        m = t > 1.0
        assert np.max(np.abs(naive[m] / exact[m] - 1)) > 1e-9 > np.max(np.abs(got[m] / exact[m] - 1))


@pytest.mark.parametrize("ka_rel", [0.0, 1e-9, 0.5])
def test_amounts_1cmt_oral(ka_rel):
    k = P1["CL"] / P1["V"]
    ka = 1.5 if ka_rel == 0.5 else k * (1 + ka_rel)
    t = grid(0.0)
    dep, cen = rf.amounts_1cmt_oral(t, 100.0, ka, k, F=0.6)
    K, _ = rate_matrix(1, P1, ka)
    ref = np.array([prop(K, np.array([60.0, 0.0]), s) for s in t])
    check(dep, ref[:, 0])
    check(cen, ref[:, 1])
    if ka_rel == 0.0:
        check(cen, 60.0 * k * t * np.exp(-k * t), rtol=1e-12)
    d2, c2 = rf.amounts_1cmt_oral(np.array([-1.0]), 100.0, ka, k)
    assert d2[0] == 0.0 and c2[0] == 0.0


def test_expdiff():
    a = np.array([0.1, 0.1, 0.1, 5.0, 0.0])
    b = np.array([0.1, 0.1 * (1 + 1e-9), 3.0, 0.1, 2.0])
    t = 10.0
    got = rf.expdiff(a, b, t)
    import math as m

    want = [
        t * m.exp(-0.1 * t),
        None,
        (m.exp(-0.1 * t) - m.exp(-3.0 * t)) / 2.9,
        (m.exp(-0.1 * t) - m.exp(-5.0 * t)) / 4.9,
        (1 - m.exp(-2.0 * t)) / 2.0,
    ]
    x = 0.1e-9 * t
    want[1] = t * m.exp(-0.1 * t) * (1 - x / 2 + x * x / 6)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # no overflow for large separated rates
    assert np.isfinite(rf.expdiff(1000.0, 0.001, 10.0))


# ---------------------------------------------------------------------------
# multiple doses
# ---------------------------------------------------------------------------
DOSES = [(0.0, 100.0), (6.0, 50.0), (12.0, 100.0), (13.0, 20.0)]


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
@pytest.mark.parametrize("kind", ["bolus", "infusion", "oral"])
def test_multiple(ncmt, p, ka, kind):
    dur, tlag, F = 1.5, 0.25, 0.9
    special = [d[0] for d in DOSES]
    if kind == "infusion":
        special += [d[0] + dur for d in DOSES]
        kw = {"duration": dur}
    elif kind == "oral":
        special += [d[0] + tlag for d in DOSES]
        kw = {"ka": ka, "F": F, "tlag": tlag}
    else:
        kw = {}
    t = grid(*special)
    got = rf.conc_multiple(kind, t, DOSES, ncmt, p, **kw)

    # sequential event-driven expm solution (not superposition)
    K, v1 = rate_matrix(ncmt, p, ka if kind == "oral" else 0.0)
    n = K.shape[0]
    events = []  # (time, type, amount)
    for td, amt in DOSES:
        if kind == "bolus":
            events.append((td, "bolus", amt))
        elif kind == "oral":
            events.append((td + tlag, "depot", F * amt))
        else:
            events.append((td, "rate", amt / dur))
            events.append((td + dur, "rate", -amt / dur))
    events.sort(key=lambda e: e[0])
    want = []
    for s in t:
        x = np.zeros(n)
        rate = 0.0
        tc = 0.0
        for te, typ, val in events:
            if te > s:
                break
            x = infuse(K, x, rate, te - tc)
            tc = te
            if typ == "bolus":
                x[1] += val
            elif typ == "depot":
                x[0] += val
            else:
                rate += val
        x = infuse(K, x, rate, s - tc)
        want.append(x[1] / v1)
    check(got, np.array(want))


def test_multiple_bad_kind():
    with pytest.raises(ValueError):
        rf.conc_multiple("sc", np.array([1.0]), DOSES, 1, P1)


# ---------------------------------------------------------------------------
# steady state
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
@pytest.mark.parametrize("tau", [8.0, 24.0])
def test_ss_bolus(ncmt, p, ka, tau):
    t = np.unique(np.concatenate([np.linspace(0.0, tau, 49), [1e-9, tau - 1e-9]]))
    got = rf.conc_ss_bolus(t, 100.0, tau, ncmt, p)
    check(got, ode_ss_bolus(t, 100.0, tau, ncmt, p))


@pytest.mark.parametrize("ncmt,p,ka", [CASES[0], CASES[2], CASES[4]], ids=["1", "2", "3"])
def test_ss_bolus_vs_superposition(ncmt, p, ka):
    """Superposition of 600 doses with the expm solution reaches steady state."""
    tau, ndose = 12.0, 600
    K, v1 = rate_matrix(ncmt, p)
    E = expm(K * tau)
    x = np.zeros(K.shape[0])
    for _ in range(ndose):
        x = E @ (x + 100.0 * unit(K.shape[0], 1))
    # x is the trough just before dose ndose+1; give the dose and propagate
    x = x + 100.0 * unit(K.shape[0], 1)
    t = np.linspace(0.0, tau, 25)
    want = np.array([prop(K, x, s)[1] / v1 for s in t])
    check(rf.conc_ss_bolus(t, 100.0, tau, ncmt, p), want)
    # and the closed-form superposition of the same doses agrees too
    doses = [(i * tau, 100.0) for i in range(ndose + 1)]
    check(rf.conc_multiple("bolus", ndose * tau + t, doses, ncmt, p), want, rtol=1e-9)


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
@pytest.mark.parametrize("dur,tau", [(1.0, 8.0), (4.0, 12.0), (12.0, 12.0)])
def test_ss_infusion(ncmt, p, ka, dur, tau):
    t = np.unique(np.concatenate([np.linspace(0.0, tau, 49), [dur, dur - 1e-9, dur + 1e-9, tau - 1e-9]]))
    t = t[(t >= 0) & (t <= tau)]
    got = rf.conc_ss_infusion(t, 200.0, dur, tau, ncmt, p)
    check(got, ode_ss_infusion(t, 200.0, dur, tau, ncmt, p))
    if dur == tau:
        check(got, np.full_like(t, rf.conc_ss_infusion_constant(200.0 / dur, ncmt, p)))


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
def test_ss_infusion_constant(ncmt, p, ka):
    rate = 7.0
    K, v1 = rate_matrix(ncmt, p)
    n = K.shape[0]
    # steady state of dx/dt = K x + rate e_c (central+peripherals block)
    xs = np.linalg.solve(K[1:, 1:], -rate * unit(n - 1, 0))
    assert rf.conc_ss_infusion_constant(rate, ncmt, p) == pytest.approx(xs[0] / v1, rel=1e-12)
    assert rf.conc_ss_infusion_constant(rate, ncmt, p) == rate / p["CL"]


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
@pytest.mark.parametrize("tau", [8.0, 24.0])
def test_ss_oral(ncmt, p, ka, tau):
    t = np.unique(np.concatenate([np.linspace(0.0, tau, 49), [1e-9, tau - 1e-9]]))
    got = rf.conc_ss_oral(t, 100.0, tau, ncmt, p, ka, F=0.85)
    check(got, ode_ss_oral(t, 100.0, tau, ncmt, p, ka, F=0.85))


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
def test_ss_oral_ka_equals_eigenvalue(ncmt, p, ka):
    tau = 12.0
    lam, _ = rf.disposition(ncmt, p)
    t = np.linspace(0.0, tau, 25)
    for li in lam:
        for kk in (li, li * (1 + 1e-9), li * (1 - 1e-9)):
            got = rf.conc_ss_oral(t, 100.0, tau, ncmt, p, kk)
            check(got, ode_ss_oral(t, 100.0, tau, ncmt, p, kk))


@pytest.mark.parametrize("p", [P1, P1B])
def test_ss_oral_1cmt_ka_equal_k_limit(p):
    """ka == k: C_ss = F D k e^{-kt}[t(1-e^{-k tau}) + tau e^{-k tau}]/(V (1-e^{-k tau})^2)."""
    k = p["CL"] / p["V"]
    tau = 12.0
    t = np.linspace(0.0, tau, 25)
    r = np.exp(-k * tau)
    want = 100.0 * k * np.exp(-k * t) * (t * (1 - r) + tau * r) / (p["V"] * (1 - r) ** 2)
    check(rf.conc_ss_oral(t, 100.0, tau, 1, p, k), want, rtol=1e-9)
    check(rf.conc_ss_oral(t, 100.0, tau, 1, p, k * (1 + 1e-9)), want, rtol=1e-9)


@pytest.mark.parametrize("ncmt,p,ka", CASES, ids=IDS)
def test_ss_textbook_form_when_well_separated(ncmt, p, ka):
    """The stable rewrite equals the literal textbook accumulation-factor form."""
    tau = 12.0
    lam, coef = rf.disposition(ncmt, p)
    t = np.linspace(0.0, tau, 25)[:, None]
    acc = lambda x: 1.0 / (1.0 - np.exp(-x * tau))  # noqa: E731
    want = 100.0 * ka * np.sum(coef / (ka - lam) * (np.exp(-lam * t) * acc(lam) - np.exp(-ka * t) * acc(ka)), axis=-1)
    check(rf.conc_ss_oral(t[:, 0], 100.0, tau, ncmt, p, ka), want, rtol=1e-11)


def test_scalar_inputs():
    assert np.ndim(rf.conc_bolus(1.0, 100.0, 2, P2)) == 0
    assert np.ndim(rf.conc_oral(1.0, 100.0, 3, P3, 1.0)) == 0
    assert np.ndim(rf.conc_infusion(1.0, 100.0, 2.0, 1, P1)) == 0
    assert np.ndim(rf.conc_ss_oral(1.0, 100.0, 12.0, 2, P2, 1.0)) == 0
    assert np.ndim(rf.conc_ss_bolus(1.0, 100.0, 12.0, 2, P2)) == 0
    assert np.ndim(rf.conc_ss_infusion(1.0, 100.0, 2.0, 12.0, 2, P2)) == 0
