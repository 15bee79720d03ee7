"""The exact solver (``solver="analytic"``) against independent textbook closed forms.

Every case is a small NONMEM dataset simulated through the public :func:`pkpd.simulate` and compared
with :mod:`reference_formulas` (sums of exponentials with macro-constants, no matrix exponential, no
ODE solver), for 1, 2 and 3 compartments x {IV bolus, IV infusion (RATE>0), oral} x {single dose, ADDL
repeated doses, SS=1 steady state observed over one interval after the SS dose}, plus the numerically
delicate corners: ``ka == k`` exactly (1 cmt, ``KA = CL/V``), ``ka = k (1 + 1e-9)``, ``ka`` equal to an
eigenvalue of the 2- and 3-compartment disposition, a lagged oral dose (``ALAG1``) with ``F1 < 1``, a
lagged infusion, infusions that overlap the next dose (duration > II, also at steady state).

Tolerance: ``|sim - ref| <= 1e-10 * |ref| + 1e-12 * peak`` on every record (``peak`` = max |ref| of the
case). Both sides are exact formulas evaluated in float64, so they should agree to a few hundred ulps:
the engine's divided differences / Newton basis and the textbook macro-constants each lose at most
``cond * eps`` with condition numbers of order 1e2 for the well separated rate constants used here
(and the divided-difference Taylor branch is accurate to ~1e-15 at coincident rate constants). 1e-10
leaves four orders of magnitude of slack for that rounding, yet any modelling error (a dose counted
at the wrong time, a missing F or lag, a wrong accumulation factor) shows up at 1e-3 or larger. The
absolute floor ``1e-12 * peak`` only matters where the concentration is (close to) zero: before a
lagged dose arrives and far in the terminal phase, where the relative error of a tiny difference of
exponentials is meaningless.

Steady-state references: the textbook accumulation formulas (``conc_ss_bolus``, ``conc_ss_infusion``,
``conc_ss_oral``) where they apply; for a lagged SS dose and for SS infusions longer than the dosing
interval (which the textbook forms do not cover) the steady state is the superposition of the same
single dose given at ``-k * II``, ``k = 0..K``, truncated once the terms are below ~1e-19 of the peak.

Speed: the cases of one model go through one ``simulate`` call per engine path (one subject per case,
parameters as per-subject covariate columns): one batch with static event times (the precomputed-schedule
fast path) and one with steady state and lags (the general path), so each model compiles twice; the
parametrized tests then compare their own subject's rows.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import pytest

import pkpd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_formulas as rf  # noqa: E402

RTOL = 1e-10
ATOL_REL_PEAK = 1e-12

DOSE = 100.0
TAU = 12.0  # steady-state interval, h
II_ADDL = 6.0  # interval of ADDL doses, h
N_ADDL = 3
T_INF = 2.0  # infusion duration, h
T_INF_LONG = 15.0  # an infusion longer than both intervals above (overlaps the next doses)

OBS = {
    "single": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0, 24.0, 36.0, 48.0],
    # including the ADDL dose times themselves (the dose counts as given) and past the last dose
    "addl": [0.0, 1.0, 2.0, 3.0, 5.99, 6.0, 7.0, 9.0, 12.0, 12.75, 15.0, 18.0, 19.0, 20.0, 24.0, 30.0, 48.0],
    # one interval after the SS dose, both ends included (peak with the dose, trough)
    "ss": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0],
}

P1 = {"CL": 2.0, "V": 10.0, "KA": 1.1}
P2 = {"CL": 2.0, "V1": 10.0, "Q": 3.0, "V2": 20.0, "KA": 1.1}
P3 = {"CL": 2.0, "V1": 10.0, "Q2": 3.0, "V2": 20.0, "Q3": 0.5, "V3": 40.0, "KA": 1.1}
BASE = {1: P1, 2: P2, 3: P3}

# 2 cmt with exactly representable eigenvalues: k10 = 1, k12 = 0.75, k21 = 0.5 -> alpha = 2, beta = 0.25
# (trace -2.25, determinant 0.5), every intermediate exact in binary floating point.
P2_EIG = {"CL": 10.0, "V1": 10.0, "Q": 7.5, "V2": 15.0}


def _p3_eig():
    lam, _ = rf.disposition(3, P3)
    return lam


# ---------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    name: str
    ncmt: int
    oral_model: bool  # simulate with {n}cmt_oral (else {n}cmt_iv)
    params: dict
    records: list  # dose records (dicts of NONMEM columns); observations are added from `obs`
    obs: list
    ref: Callable  # t (array) -> CP reference
    depot_ref: Callable | None = None  # t -> DEPOT amount reference (1 cmt oral)
    extra: dict = field(default_factory=dict)  # ALAG1 / F1

    @property
    def model(self):
        return f"{self.ncmt}cmt_{'oral' if self.oral_model else 'iv'}"


def _dose(cmt, amt=DOSE, rate=0.0, ii=0.0, addl=0, ss=0, time=0.0):
    return dict(TIME=time, EVID=1, AMT=amt, CMT=cmt, RATE=rate, II=ii, ADDL=addl, SS=ss)


def _ss_superposition(single, tau, p_slowest):
    """Steady state as the sum of one dose given at 0, -tau, -2 tau, ... (linear model)."""
    k_max = int(math.ceil(45.0 / (p_slowest * tau))) + 2  # exp(-45) ~ 3e-20

    def f(t):
        t = np.asarray(t, float)
        return sum(single(t + k * tau) for k in range(k_max))

    return f


def _slowest(ncmt, p):
    lam, _ = rf.disposition(ncmt, p)
    return float(np.min(lam))


def _cases():
    out = []
    for n in (1, 2, 3):
        p = {k: v for k, v in BASE[n].items() if k != "KA"}
        po = dict(BASE[n])
        ka = po["KA"]
        rate = DOSE / T_INF
        rate_long = DOSE / T_INF_LONG
        lam_min = _slowest(n, p)
        doses = [(k * II_ADDL, DOSE) for k in range(N_ADDL + 1)]

        # --- IV doses into CENTRAL: CMT 1 of the IV model, CMT 2 of the oral model ---
        for model_oral, cmt, params, tag in ((False, 1, p, "iv"), (True, 2, po, "oralmodel-central")):
            out += [
                Case(
                    f"{n}cmt-{tag}-bolus-single",
                    n,
                    model_oral,
                    params,
                    [_dose(cmt)],
                    OBS["single"],
                    lambda t, n=n, p=p: rf.conc_bolus(t, DOSE, n, p),
                ),
                Case(
                    f"{n}cmt-{tag}-bolus-addl",
                    n,
                    model_oral,
                    params,
                    [_dose(cmt, ii=II_ADDL, addl=N_ADDL)],
                    OBS["addl"],
                    lambda t, n=n, p=p, d=doses: rf.conc_multiple("bolus", t, d, n, p),
                ),
                Case(
                    f"{n}cmt-{tag}-bolus-ss",
                    n,
                    model_oral,
                    params,
                    [_dose(cmt, ii=TAU, ss=1)],
                    OBS["ss"],
                    lambda t, n=n, p=p: rf.conc_ss_bolus(t, DOSE, TAU, n, p),
                ),
                Case(
                    f"{n}cmt-{tag}-infusion-single",
                    n,
                    model_oral,
                    params,
                    [_dose(cmt, rate=rate)],
                    OBS["single"],
                    lambda t, n=n, p=p: rf.conc_infusion(t, DOSE, T_INF, n, p),
                ),
                Case(
                    f"{n}cmt-{tag}-infusion-addl",
                    n,
                    model_oral,
                    params,
                    [_dose(cmt, rate=rate, ii=II_ADDL, addl=N_ADDL)],
                    OBS["addl"],
                    lambda t, n=n, p=p, d=doses: rf.conc_multiple("infusion", t, d, n, p, duration=T_INF),
                ),
                Case(
                    f"{n}cmt-{tag}-infusion-ss",
                    n,
                    model_oral,
                    params,
                    [_dose(cmt, rate=rate, ii=TAU, ss=1)],
                    OBS["ss"],
                    lambda t, n=n, p=p: rf.conc_ss_infusion(t, DOSE, T_INF, TAU, n, p),
                ),
            ]
        # infusion longer than the interval (several infusions running at once), IV model
        single_long = lambda t, n=n, p=p: rf.conc_infusion(t, DOSE, T_INF_LONG, n, p)  # noqa: E731
        out += [
            Case(
                f"{n}cmt-iv-infusion-overlap-addl",
                n,
                False,
                p,
                [_dose(1, rate=rate_long, ii=II_ADDL, addl=N_ADDL)],
                OBS["addl"],
                lambda t, n=n, p=p, d=doses: rf.conc_multiple("infusion", t, d, n, p, duration=T_INF_LONG),
            ),
            Case(
                f"{n}cmt-iv-infusion-overlap-ss",
                n,
                False,
                p,
                [_dose(1, rate=rate_long, ii=TAU, ss=1)],
                OBS["ss"],
                _ss_superposition(single_long, TAU, lam_min),
            ),
            # lagged infusion: ALAG1 shifts the start
            Case(
                f"{n}cmt-iv-infusion-lag-single",
                n,
                False,
                p,
                [_dose(1, rate=rate)],
                OBS["single"],
                lambda t, n=n, p=p: rf.conc_infusion(t, DOSE, T_INF, n, p, tstart=0.75),
                extra={"ALAG1": 0.75},
            ),
        ]

        # --- oral: dose into DEPOT (CMT 1) ---
        lag, F = 0.75, 0.6
        single_lag = lambda t, n=n, p=p, ka=ka: rf.conc_oral(t, DOSE, n, p, ka, F=F, tlag=lag)  # noqa: E731
        out += [
            Case(
                f"{n}cmt-oral-single",
                n,
                True,
                po,
                [_dose(1)],
                OBS["single"],
                lambda t, n=n, p=p, ka=ka: rf.conc_oral(t, DOSE, n, p, ka),
            ),
            Case(
                f"{n}cmt-oral-addl",
                n,
                True,
                po,
                [_dose(1, ii=II_ADDL, addl=N_ADDL)],
                OBS["addl"],
                lambda t, n=n, p=p, ka=ka, d=doses: rf.conc_multiple("oral", t, d, n, p, ka=ka),
            ),
            Case(
                f"{n}cmt-oral-ss",
                n,
                True,
                po,
                [_dose(1, ii=TAU, ss=1)],
                OBS["ss"],
                lambda t, n=n, p=p, ka=ka: rf.conc_ss_oral(t, DOSE, TAU, n, p, ka),
            ),
            Case(
                f"{n}cmt-oral-lag-F-single",
                n,
                True,
                po,
                [_dose(1)],
                OBS["single"],
                single_lag,
                extra={"ALAG1": lag, "F1": F},
            ),
            Case(
                f"{n}cmt-oral-lag-F-addl",
                n,
                True,
                po,
                [_dose(1, ii=II_ADDL, addl=N_ADDL)],
                OBS["addl"],
                lambda t, n=n, p=p, ka=ka, d=doses: rf.conc_multiple("oral", t, d, n, p, ka=ka, F=F, tlag=lag),
                extra={"ALAG1": lag, "F1": F},
            ),
            Case(
                f"{n}cmt-oral-lag-F-ss",
                n,
                True,
                po,
                [_dose(1, ii=TAU, ss=1)],
                OBS["ss"],
                _ss_superposition(single_lag, TAU, min(lam_min, ka)),
                extra={"ALAG1": lag, "F1": F},
            ),
            # F < 1 alone at steady state: the textbook accumulation formula scaled by F
            Case(
                f"{n}cmt-oral-F-ss",
                n,
                True,
                po,
                [_dose(1, ii=TAU, ss=1)],
                OBS["ss"],
                lambda t, n=n, p=p, ka=ka: rf.conc_ss_oral(t, DOSE, TAU, n, p, ka, F=F),
                extra={"F1": F},
            ),
        ]

    # --- ka at (or next to) an eigenvalue of the disposition ---
    p1 = {"CL": 2.5, "V": 10.0}  # k = 0.25 exactly
    k1 = p1["CL"] / p1["V"]
    for tag, ka in (("ka-eq-k", k1), ("ka-near-k", k1 * (1.0 + 1e-9))):
        pk = dict(p1, KA=ka)
        d = [(k * II_ADDL, DOSE) for k in range(N_ADDL + 1)]
        out += [
            Case(
                f"1cmt-oral-{tag}-single",
                1,
                True,
                pk,
                [_dose(1)],
                OBS["single"],
                lambda t, ka=ka: rf.conc_oral(t, DOSE, 1, p1, ka),
                depot_ref=lambda t, ka=ka: rf.amounts_1cmt_oral(t, DOSE, ka, k1)[0],
            ),
            Case(
                f"1cmt-oral-{tag}-addl",
                1,
                True,
                pk,
                [_dose(1, ii=II_ADDL, addl=N_ADDL)],
                OBS["addl"],
                lambda t, ka=ka, d=d: rf.conc_multiple("oral", t, d, 1, p1, ka=ka),
            ),
            Case(
                f"1cmt-oral-{tag}-ss",
                1,
                True,
                pk,
                [_dose(1, ii=TAU, ss=1)],
                OBS["ss"],
                lambda t, ka=ka: rf.conc_ss_oral(t, DOSE, TAU, 1, p1, ka),
            ),
            Case(
                f"1cmt-oral-{tag}-lag-F-single",
                1,
                True,
                pk,
                [_dose(1)],
                OBS["single"],
                lambda t, ka=ka: rf.conc_oral(t, DOSE, 1, p1, ka, F=0.6, tlag=0.75),
                extra={"ALAG1": 0.75, "F1": 0.6},
            ),
        ]
    lam2, _ = rf.disposition(2, P2_EIG)
    assert lam2[0] == 2.0 and lam2[1] == 0.25
    for tag, ka in (("ka-eq-beta", 0.25), ("ka-eq-alpha", 2.0), ("ka-near-beta", 0.25 * (1 + 1e-9))):
        pk = dict(P2_EIG, KA=ka)
        d = [(k * II_ADDL, DOSE) for k in range(N_ADDL + 1)]
        out += [
            Case(
                f"2cmt-oral-{tag}-single",
                2,
                True,
                pk,
                [_dose(1)],
                OBS["single"],
                lambda t, ka=ka: rf.conc_oral(t, DOSE, 2, P2_EIG, ka),
            ),
            Case(
                f"2cmt-oral-{tag}-addl",
                2,
                True,
                pk,
                [_dose(1, ii=II_ADDL, addl=N_ADDL)],
                OBS["addl"],
                lambda t, ka=ka, d=d: rf.conc_multiple("oral", t, d, 2, P2_EIG, ka=ka),
            ),
            Case(
                f"2cmt-oral-{tag}-ss",
                2,
                True,
                pk,
                [_dose(1, ii=TAU, ss=1)],
                OBS["ss"],
                lambda t, ka=ka: rf.conc_ss_oral(t, DOSE, TAU, 2, P2_EIG, ka),
            ),
        ]
    p3 = {k: v for k, v in P3.items() if k != "KA"}
    for j, lam in enumerate(_p3_eig()):
        ka = float(lam)
        out += [
            Case(
                f"3cmt-oral-ka-eq-lambda{j}-single",
                3,
                True,
                dict(p3, KA=ka),
                [_dose(1)],
                OBS["single"],
                lambda t, ka=ka: rf.conc_oral(t, DOSE, 3, p3, ka),
            ),
            Case(
                f"3cmt-oral-ka-eq-lambda{j}-ss",
                3,
                True,
                dict(p3, KA=ka),
                [_dose(1, ii=TAU, ss=1)],
                OBS["ss"],
                lambda t, ka=ka: rf.conc_ss_oral(t, DOSE, TAU, 3, p3, ka),
            ),
        ]
    # the 1 cmt DEPOT amount (Bateman) on the plain oral cases too
    for c in out:
        if c.name == "1cmt-oral-single":
            c.depot_ref = lambda t: rf.amounts_1cmt_oral(t, DOSE, P1["KA"], P1["CL"] / P1["V"])[0]
        if c.name == "1cmt-oral-lag-F-single":
            c.depot_ref = lambda t: rf.amounts_1cmt_oral(t - 0.75, DOSE, P1["KA"], P1["CL"] / P1["V"], F=0.6)[0]
    return out


CASES = _cases()
CASE_BY_NAME = {c.name: c for c in CASES}
assert len(CASE_BY_NAME) == len(CASES)


def _dataset(case: Case, ident: int) -> pd.DataFrame:
    rows = []
    for d in case.records:
        rows.append(dict(ID=ident, **d))
    for t in case.obs:
        rows.append(dict(ID=ident, TIME=t, EVID=0, AMT=0.0, CMT=0, RATE=0.0, II=0.0, ADDL=0, SS=0))
    df = pd.DataFrame(rows)
    df = df.sort_values("TIME", kind="stable").reset_index(drop=True)  # doses first at equal times
    assert len(df) <= 40
    for name, v in case.params.items():
        df[f"c{name}"] = v
    df["cALAG1"] = case.extra.get("ALAG1", 0.0)
    df["cF1"] = case.extra.get("F1", 1.0)
    return df


def _group(case: Case) -> tuple:
    """Batch key. The engine has two paths that must both be exercised: static event times without SS
    (the event order is precomputed on the host, ``Prepared.schedule``) and the general path (points
    sorted inside the compiled program), taken by any batch with an SS record or a lag."""
    is_ss = any(d["SS"] for d in case.records)
    return case.model, ("general" if is_ss or case.extra else "static")


@functools.lru_cache(maxsize=None)
def _batch(key: tuple) -> dict:
    """Simulate every case of one group in one call; returns {case name: output rows}."""
    model, kind = key
    cases = [c for c in CASES if _group(c) == key]
    frames = [_dataset(c, i + 1) for i, c in enumerate(cases)]
    df = pd.concat(frames, ignore_index=True)
    mobj = pkpd.get_model(model)
    mapping = {q: f"c{q}" for q in mobj.param_names}
    if kind != "static":
        mapping.update({"ALAG1": "cALAG1", "F1": "cF1"})
    prep = pkpd.prepare(df, model, mapping)
    assert prep.layout.n_ss > 0 or kind == "static"
    if kind == "static" and hasattr(prep, "static_schedule"):  # make sure the fast path is what runs
        assert prep.static_schedule
    out = pkpd.simulate(df, model, mapping, solver="analytic")
    return {c.name: out[out["ID"] == i + 1].reset_index(drop=True) for i, c in enumerate(cases)}


def assert_close(sim, ref, what):
    sim = np.asarray(sim, float)
    ref = np.asarray(ref, float)
    peak = np.max(np.abs(ref))
    assert peak > 0
    err = np.abs(sim - ref)
    bound = RTOL * np.abs(ref) + ATOL_REL_PEAK * peak
    worst = int(np.argmax(err / bound))
    assert np.all(err <= bound), (
        f"{what}: |sim - ref| exceeds rtol {RTOL:g} / atol {ATOL_REL_PEAK:g}*peak at index {worst}: "
        f"sim={sim[worst]!r} ref={ref[worst]!r} rel err={err[worst] / max(abs(ref[worst]), 1e-300):.3g}"
    )


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_analytic_matches_textbook(name):
    case = CASE_BY_NAME[name]
    out = _batch(_group(case))[name]
    t = out["TIME"].to_numpy()
    assert_close(out["CP"].to_numpy(), case.ref(t), f"{name} CP")
    if case.depot_ref is not None:
        assert_close(out["DEPOT"].to_numpy(), case.depot_ref(t), f"{name} DEPOT")


def test_ss_superposition_reference_agrees_with_textbook():
    """The superposition used for lagged / overlapping SS equals the textbook SS form where both apply."""
    for n in (1, 2, 3):
        p = {k: v for k, v in BASE[n].items() if k != "KA"}
        ka = BASE[n]["KA"]
        t = np.array(OBS["ss"])
        lam_min = min(_slowest(n, p), ka)
        sup = _ss_superposition(lambda s: rf.conc_oral(s, DOSE, n, p, ka), TAU, lam_min)(t)
        np.testing.assert_allclose(sup, rf.conc_ss_oral(t, DOSE, TAU, n, p, ka), rtol=1e-12, atol=1e-14)
        sup = _ss_superposition(lambda s: rf.conc_infusion(s, DOSE, T_INF, n, p), TAU, lam_min)(t)
        np.testing.assert_allclose(sup, rf.conc_ss_infusion(t, DOSE, T_INF, TAU, n, p), rtol=1e-12, atol=1e-14)
