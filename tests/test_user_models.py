"""Models users write themselves (pkpd.models.user, docs/model_language.md).

* hand-written 1-cmt oral, 2-cmt oral and parent-metabolite models reproduce the built-in models on the
  exact path (rtol 1e-10) over the 30 NONMEM conformance scenarios (ADDL, SS 1/2, lags, F, infusions with
  RATE > 0, -1, -2, resets, time-varying covariates), from Python and from the command line;
* every built-in structure family (1/2/3-cmt iv/oral, dual, zofo, transit, effect, metabolite, MM) written by
  hand (tests/data/user_models/, examples/models/user/) reproduces the built-in model on one dosing record set
  with ADDL, SS=1/2, lags, F, infusions (RATE > 0 and modeled duration) and a reset: rtol 1e-10 on the exact
  path, 1e-6 on the ODE path (steady state on the ODE path in the ``slow`` variant);
* a turnover (indirect-response) model written by hand, fitted (Laplace) to data simulated from its closed
  form, recovers its parameters within 3 standard errors;
* a Michaelis-Menten model is detected nonlinear, refused by the exact solver and matches ``1cmt_iv_mm``
  on the ODE path (rtol 1e-6);
* Theoph fitted (Laplace) with a hand-written model gives the built-in fit's estimates (rtol 1e-6), in Python
  and through ``pkpd fit``;
* a catalogue of malformed model files, each giving one error naming its line and symbol (exit 1, no
  traceback);
* every TOML example of docs/model_language.md is the example file it names, and is simulated here.
"""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import cli_output, runner
from conftest import NMTESTS

import pkpd
from cli import app
from pkpd.models.user import compile_structure

ROOT = Path(__file__).resolve().parents[1]
USER = ROOT / "examples" / "models" / "user"
SCEN = json.loads((NMTESTS / "scenarios.json").read_text())["scenarios"]
DOSING = {"ALAG2": "LAGT", "F2": "BIOAV", "D2": "DUR2 if MODE == 2 else 1", "R2": "RAT2 if MODE == 1 else 1"}
PARAMS = {
    "dosing_1001": {"CL": 1.1, "V": 20, "KA": 1.5, **DOSING},
    "timevarying_2001": {"CL": "1.1 * (WT/70)**0.75", "V": 20, "KA": 1.5},
}


def _scenarios(model_key):
    frames = []
    for k, sc in enumerate(s for s in SCEN if s["model"] == model_key):
        raw = pd.read_csv(NMTESTS / sc["file"])
        raw["ID"] = k + 1
        frames.append(raw)
    raw = pd.concat(frames, ignore_index=True)
    return raw, raw[[c for c in raw.columns if not c.startswith("NM_")]]


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.maximum(np.abs(a), 1e-12 * np.max(np.abs(a)))
    return float(np.max(np.abs(a - b) / np.where(scale > 0, scale, 1.0)))


# ---------------------------------------------------------------------------------------------------
# exact path: hand-written models reproduce the built-in ones


@pytest.mark.parametrize("model_key", list(PARAMS))
def test_oral1_by_hand_reproduces_builtin_on_all_conformance_scenarios(model_key):
    user = pkpd.get_model(str(USER / "oral1.toml"))
    assert user.is_linear and not user.linear_reason
    raw, inputs = _scenarios(model_key)
    ref = pkpd.simulate(inputs, "1cmt_oral", PARAMS[model_key], solver="analytic")
    got = pkpd.simulate(inputs, user, PARAMS[model_key], solver="analytic")
    for col in ("DEPOT", "CENTRAL", "CP"):
        assert _rel(ref[col], got[col]) <= 1e-10, col
    # and NONMEM's own values (the conformance criterion, 1e-4 relative)
    obs = (raw["EVID"] == 0).to_numpy() & (raw["NM_CP"].to_numpy(float) != 0)
    sim = 1000.0 * got["CP"].to_numpy()[obs]
    nm = raw["NM_CP"].to_numpy(float)[obs]
    assert np.max(np.abs(sim - nm) / np.abs(nm)) <= 1e-4


def test_all_30_conformance_scenarios_from_the_command_line(tmp_path):
    n = 0
    for model_key, params in PARAMS.items():
        raw, inputs = _scenarios(model_key)
        n += raw["ID"].nunique()
        data = tmp_path / f"{model_key}.csv"
        inputs.to_csv(data, index=False)
        ptoml = tmp_path / f"{model_key}.toml"
        ptoml.write_text("[parameters]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in params.items()))
        out = tmp_path / f"{model_key}_sim.csv"
        res = runner.invoke(
            app, ["simulate", str(data), "--model", str(USER / "oral1.toml"), "--params", str(ptoml), "--out", str(out)]
        )
        assert res.exit_code == 0, cli_output(res)
        assert "oral1_by_hand" in cli_output(res) and "analytic" in cli_output(res)
        sim = pd.read_csv(out)
        ref = pkpd.simulate(inputs, "1cmt_oral", params)
        assert _rel(ref["CP"], sim["CP"]) <= 1e-10
        obs = (raw["EVID"] == 0).to_numpy()
        nm = raw["NM_CP"].to_numpy(float)[obs]
        cp = 1000.0 * sim["CP"].to_numpy()[obs]
        nz = nm != 0
        assert np.max(np.abs(cp[nz] - nm[nz]) / np.abs(nm[nz])) <= 1e-4
        assert np.all(np.abs(cp[~nz]) <= 1e-6 * np.max(np.abs(nm)))
    assert n == 30


def test_model_in_the_parameter_file(tmp_path):
    """A parameter file may hold the [structure] itself (no --model)."""
    _, inputs = _scenarios("dosing_1001")
    data = tmp_path / "d.csv"
    inputs[inputs["ID"] <= 3].to_csv(data, index=False)
    p = tmp_path / "p.toml"
    p.write_text(
        (USER / "oral1.toml").read_text()
        + "\n[parameters]\nCL = 1.1\nV = 20\nKA = 1.5\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in DOSING.items())
    )
    res = runner.invoke(app, ["simulate", str(data), "--params", str(p), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 0, cli_output(res)
    ref = pkpd.simulate(data, "1cmt_oral", PARAMS["dosing_1001"])
    assert _rel(ref["CP"], pd.read_csv(tmp_path / "o.csv")["CP"]) <= 1e-10


def test_oral2_and_parent_metabolite_by_hand_reproduce_builtins():
    _, inputs = _scenarios("dosing_1001")
    two = {"CL": 1.1, "V1": 20, "Q": 3.0, "V2": 40, "KA": 1.5, **DOSING}
    user2 = pkpd.get_model(str(USER / "oral2.toml"))
    assert user2.is_linear and user2.blocks == ((0,), (1, 2))
    ref = pkpd.simulate(inputs, "2cmt_oral", two, solver="analytic")
    got = pkpd.simulate(inputs, user2, two, solver="analytic")
    for col in ("DEPOT", "CENTRAL", "PERIPH", "CP"):
        assert _rel(ref[col], got[col]) <= 1e-10, col
    pm = {"CL": 1.1, "V": 20, "KA": 1.5, "FM": 0.4, "CLM": 2.0, "VM": 15.0, **DOSING}
    userm = pkpd.get_model(str(USER / "parent_metabolite.toml"))
    assert userm.is_linear and userm.output_names() == ("CP", "CM")
    ref = pkpd.simulate(inputs, "1cmt_oral_metabolite", pm, solver="analytic")
    got = pkpd.simulate(inputs, userm, pm, solver="analytic")
    for a, b in (("CP", "CP"), ("CM", "CM"), ("METABOLITE", "METAB"), ("CENTRAL", "CENTRAL")):
        assert _rel(ref[a], got[b]) <= 1e-10, a


@pytest.mark.slow  # 37 s; the ODE path of hand-written models: test_builtin_family_by_hand_on_the_ode_path
def test_linear_user_model_on_the_ode_path_matches_exact():
    _, inputs = _scenarios("dosing_1001")
    sel = inputs[inputs["ID"].isin([1, 5, 9])]
    user = pkpd.get_model(str(USER / "oral1.toml"))
    ex = pkpd.simulate(sel, user, PARAMS["dosing_1001"], solver="analytic")
    ode = pkpd.simulate(sel, user, PARAMS["dosing_1001"], solver=pkpd.ODE(rtol=1e-10, atol=1e-12))
    assert _rel(ex["CP"], ode["CP"]) <= 1e-6


# ---------------------------------------------------------------------------------------------------
# every built-in structure family written by hand (tests/data/user_models/, examples/models/user/)


FIXTURES = ROOT / "tests" / "data" / "user_models"
DISP2 = {"CL": 2.0, "V1": 20.0, "Q": 3.0, "V2": 40.0}
DISP3 = {"CL": 2.0, "V1": 20.0, "Q2": 3.0, "V2": 40.0, "Q3": 0.5, "V3": 80.0}
FAMILIES = {  # built-in name: (hand-written file, structural parameters)
    "1cmt_iv": (FIXTURES / "iv1.toml", {"CL": 2.0, "V": 20.0}),
    "1cmt_oral": (USER / "oral1.toml", {"CL": 2.0, "V": 20.0, "KA": 1.3}),
    "2cmt_iv": (FIXTURES / "iv2.toml", DISP2),
    "2cmt_oral": (USER / "oral2.toml", {**DISP2, "KA": 1.3}),
    "3cmt_iv": (FIXTURES / "iv3.toml", DISP3),
    "3cmt_oral": (FIXTURES / "oral3.toml", {**DISP3, "KA": 1.3}),
    "2cmt_dual": (USER / "dual2.toml", {**DISP2, "KA": 1.8, "KA2": 0.15, "FR": 0.35}),
    "1cmt_zofo": (FIXTURES / "zofo1.toml", {"CL": 2.0, "V": 20.0, "KA": 0.9, "FZO": 0.4, "DZO": 3.0}),
    "1cmt_transit3": (FIXTURES / "transit3.toml", {"CL": 2.0, "V": 20.0, "MTT": 2.5, "KA": 1.1}),
    "1cmt_iv_effect": (FIXTURES / "iv1_effect.toml", {"CL": 2.0, "V": 20.0, "KE0": 0.6}),
    "2cmt_oral_effect": (FIXTURES / "oral2_effect.toml", {**DISP2, "KA": 1.3, "KE0": 0.6}),
    "1cmt_oral_metabolite": (
        USER / "parent_metabolite.toml",
        {"CL": 2.0, "V": 20.0, "KA": 1.3, "FM": 0.4, "CLM": 1.5, "VM": 15.0},
    ),
}
MM_FAMILIES = {
    "1cmt_iv_mm": (USER / "mm_iv.toml", {"V": 20.0, "VMAX": 15.0, "KM": 1.5}),
    "1cmt_oral_mm": (FIXTURES / "oral1_mm.toml", {"V": 20.0, "KA": 1.3, "VMAX": 15.0, "KM": 1.5}),
}


def _family_records(model, ids=(1, 2, 3, 4, 5)):
    """A dosing record set for ``model``: CMT 1 is the input state (DEPOT, DEPOT_FAST, TRANSIT1 or CENTRAL).

    ID 1: bolus into CMT 1 with ADDL=3, II=12; ID 2: SS=1 then SS=2 doses into CMT 1; ID 3: infusion
    (RATE > 0) into CENTRAL with ADDL=2, II=24; ID 4: steady-state infusion into CENTRAL then a reset-and-dose
    (EVID 4) into CMT 1; ID 5: an infusion of modeled duration (RATE=-2, D<central>) into CENTRAL, then
    boluses into CMT 1 with ADDL. Lags and bioavailability come from :func:`_family_dosing`.
    """
    c = model.central + 1
    rows = []

    def dose(i, t, amt, cmt, evid=1, rate=0.0, ii=0.0, addl=0, ss=0):
        rows.append(dict(ID=i, TIME=t, EVID=evid, AMT=amt, CMT=cmt, RATE=rate, II=ii, ADDL=addl, SS=ss))

    def obs(i, times):
        rows.extend(dict(ID=i, TIME=t, EVID=0, AMT=0.0, CMT=0, RATE=0.0, II=0.0, ADDL=0, SS=0) for t in times)

    dose(1, 0, 100, 1, addl=3, ii=12)
    obs(1, [0.25, 0.5, 1, 2, 3, 5, 8, 12.5, 24, 36.7, 48, 60, 72])
    dose(2, 0, 100, 1, ss=1, ii=12)
    obs(2, [0.5, 1, 2, 4, 8, 12, 18])
    dose(2, 24, 50, 1, ss=2, ii=12)
    obs(2, [24.5, 26, 30, 36, 48])
    dose(3, 0, 200, c, rate=50, addl=2, ii=24)
    obs(3, [1, 2, 4, 4.5, 6, 12, 24, 26, 30, 50, 72, 96])
    dose(4, 0, 150, c, rate=30, ss=1, ii=12)
    obs(4, [1, 3, 6, 12, 24])
    dose(4, 30, 100, 1, evid=4)
    obs(4, [30.5, 31, 33, 40, 54])
    dose(5, 0, 80, c, rate=-2)
    dose(5, 6, 60, 1, addl=1, ii=12)
    obs(5, [0.5, 1, 1.6, 3, 6.2, 7, 10, 18.5, 24, 36])
    df = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)
    return df[df["ID"].isin(ids)].reset_index(drop=True)


def _family_dosing(model):
    """Lag and bioavailability of CMT 1 and of CENTRAL, CENTRAL's modeled infusion duration, and for a split
    dose a lag of the second target (the slow depot of 2cmt_dual)."""
    c = model.central + 1
    d = {"F1": 0.8, "ALAG1": 0.5, f"F{c}": 0.9, f"ALAG{c}": 0.25, f"D{c}": 1.5}
    for rt in model.routes.get(0, ())[1:]:
        d.setdefault(f"ALAG{rt.target + 1}", 1.0)
    return d


def _close(ref, got, rtol):
    """``|got - ref| <= rtol*|ref| + 1e-14*max|ref|`` (the absolute part: double-precision roundoff at the
    column's scale, for amounts that have decayed to 1e-12 of their peak)."""
    ref, got = np.asarray(ref, float), np.asarray(got, float)
    err = np.abs(got - ref) - (rtol * np.abs(ref) + 1e-14 * np.max(np.abs(ref)))
    return float(np.max(err)) <= 0.0


def _family(builtin_name, table):
    path, structural = table[builtin_name]
    builtin, user = pkpd.get_model(builtin_name), pkpd.get_model(str(path))
    assert user.compartments[: builtin.n_cmt] == builtin.compartments or builtin_name == "1cmt_oral_metabolite"
    assert sorted(user.param_names) == sorted(builtin.param_names)
    return builtin, user, {**structural, **_family_dosing(builtin)}


def _columns(builtin, user):
    """(built-in column, hand-written column): every state (by CMT number) and every output of the built-in."""
    pairs = [(b, u) for b, u in zip(builtin.compartments, user.compartments)]
    return pairs + [(o, o) for o in builtin.output_names()]


@pytest.mark.parametrize(
    "builtin_name",
    # 3cmt_oral: 24 s of compiling its hand-written form; 3cmt_iv and 2cmt_oral stay in the default run
    [pytest.param(b, marks=[pytest.mark.slow] if b == "3cmt_oral" else []) for b in FAMILIES],
)
def test_each_builtin_family_by_hand_reproduces_it_on_the_exact_path(builtin_name):
    builtin, user, params = _family(builtin_name, FAMILIES)
    assert user.is_linear and not user.linear_reason, user.linear_reason
    assert user.routes == builtin.routes
    data = _family_records(builtin)
    ref = pkpd.simulate(data, builtin, params, solver="analytic")
    got = pkpd.simulate(data, user, params, solver="analytic")
    assert np.ptp(ref["CP"]) > 0
    for b, u in _columns(builtin, user):
        assert _close(ref[b], got[u], 1e-10), (b, _rel(ref[b], got[u]))


def _ode_check(builtin_name, ids):
    builtin, user, params = _family(builtin_name, FAMILIES)
    data = _family_records(builtin, ids)
    ref = pkpd.simulate(data, builtin, params, solver="analytic")
    got = pkpd.simulate(data, user, params, solver=pkpd.ODE(rtol=1e-10, atol=1e-12))
    for b, u in _columns(builtin, user):
        assert _close(ref[b], got[u], 1e-6), (b, _rel(ref[b], got[u]))


@pytest.mark.parametrize("builtin_name", ["3cmt_oral", "2cmt_dual", "1cmt_zofo", "2cmt_oral_effect"])
def test_builtin_family_by_hand_on_the_ode_path(builtin_name):
    """The hand-written model forced onto the ODE path matches the built-in's exact solution (rtol 1e-6);
    ADDL, lags, F and infusions here, steady state in the slow test below (its ODE compile takes ~20 s)."""
    _ode_check(builtin_name, ids=(1, 3, 5))


@pytest.mark.slow
@pytest.mark.parametrize("builtin_name", list(FAMILIES))
def test_every_builtin_family_by_hand_on_the_ode_path_with_steady_state(builtin_name):
    _ode_check(builtin_name, ids=(1, 2, 3, 4, 5))


@pytest.mark.parametrize(
    "builtin_name, ids",
    [
        ("1cmt_oral_mm", (1, 3, 5)),
        ("1cmt_iv_mm", (1, 3, 5)),
        pytest.param("1cmt_oral_mm", (2, 4), marks=pytest.mark.slow),
    ],
)
def test_michaelis_menten_families_by_hand_on_the_ode_path(builtin_name, ids):
    builtin, user, params = _family(builtin_name, MM_FAMILIES)
    assert not user.is_linear
    data = _family_records(builtin, ids)
    ode = pkpd.ODE(rtol=1e-10, atol=1e-12)
    ref = pkpd.simulate(data, builtin, params, solver=ode)
    got = pkpd.simulate(data, user, params, solver=ode)
    for b, u in _columns(builtin, user):
        assert _close(ref[b], got[u], 1e-6), (b, _rel(ref[b], got[u]))


def test_split_doses_are_described_and_checked():
    user = pkpd.get_model(str(USER / "dual2.toml"))
    assert "split DEPOT_FAST: FR -> DEPOT_FAST, 1 - FR -> DEPOT_SLOW" in user.describe()
    zofo = pkpd.get_model(str(FIXTURES / "zofo1.toml"))
    assert "FZO -> CENTRAL over DZO" in zofo.describe()
    base = {"states": ["A", "B"], "equations": ["d/dt(A) = -K*A", "d/dt(B) = K*A - K2*B"], "outputs": ["Y = B"]}
    for split, msg in [
        ({"C": ["1 -> A"]}, "not a state"),
        ({"A": ["FR => B"]}, "syntax error in split part"),
        ({"A": ["FR -> C"]}, "C is not a state"),
        ({"A": ["K -> A", "1 - K -> B"]}, None),
        ({"A": ["F1 -> B"]}, "dosing parameter"),
        ({"A": ["FR -> B over A"]}, "must be a parameter"),
    ]:
        if msg is None:
            assert compile_structure({**base, "split": split}, name="probe").param_names == ("K", "K2")
            continue
        with pytest.raises(pkpd.ModelSpecError, match=msg):
            compile_structure({**base, "split": split}, name="probe")
    with pytest.raises(pkpd.ModelSpecError, match="does not receive doses"):
        compile_structure({**base, "doses": ["B"], "split": {"A": ["1 -> B"]}}, name="probe")


# ---------------------------------------------------------------------------------------------------
# nonlinear models: detected, never sent to the exact solver


MM_DATA = pd.DataFrame(
    {
        "ID": [1] * 9 + [2] * 6,
        "TIME": [0, 0.5, 2, 6, 12, 12, 14, 24, 48, 0, 1, 4, 8, 24, 30],
        "EVID": [1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
        "AMT": [500, 0, 0, 0, 300, 0, 0, 0, 0, 400, 0, 0, 0, 0, 0],
        "RATE": [0, 0, 0, 0, 150, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "II": [0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0],
        "ADDL": [0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0],
        "CMT": [1] * 15,
    }
)


def test_michaelis_menten_is_nonlinear_and_matches_builtin_on_the_ode_path():
    user = pkpd.get_model(str(USER / "mm_iv.toml"))
    assert not user.is_linear and "not linear" in user.linear_reason
    params = {"V": 30.0, "VMAX": 40.0, "KM": 2.0}
    ode = pkpd.ODE(rtol=1e-10, atol=1e-12)
    ref = pkpd.simulate(MM_DATA, "1cmt_iv_mm", params, solver=ode)
    got = pkpd.simulate(MM_DATA, user, params, solver=ode)
    assert _rel(ref["CP"], got["CP"]) <= 1e-6
    auto = pkpd.simulate(MM_DATA, user, params)  # auto -> ODE
    assert _rel(ref["CP"], auto["CP"]) <= 1e-5
    with pytest.raises(pkpd.ModelSpecError, match="nonlinear"):
        pkpd.simulate(MM_DATA, user, params, solver="analytic")


def _model(equations, states=("A", "B"), **extra):
    table = {"states": list(states), "equations": list(equations), "outputs": ["Y = A"], **extra}
    return compile_structure(table, name="probe")


@pytest.mark.parametrize(
    "equations, reason",
    [
        (["d/dt(A) = -K*A*A", "d/dt(B) = K*A - K*B"], "not linear"),
        (["d/dt(A) = -K*A/(KM + A)", "d/dt(B) = 0"], "not linear"),
        (["d/dt(A) = KIN - K*A", "d/dt(B) = 0"], "without a state"),
        (["d/dt(A) = -K*exp(-t)*A", "d/dt(B) = 0"], "time"),
        (["d/dt(A) = -K*A if A > 1 else 0", "d/dt(B) = 0"], "not linear"),
        (["d/dt(A) = -K*max(A, 0)", "d/dt(B) = 0"], "not linear"),
        (["d/dt(A) = -K*A + K*B", "d/dt(B) = -K*A - K*B"], "complex eigenvalues"),
    ],
)
def test_nonlinear_or_time_varying_models_are_never_linear(equations, reason):
    m = _model(equations)
    assert not m.is_linear and reason in m.linear_reason
    assert not m.linear_terms


def test_linear_forms_are_recognized():
    m = _model(["E = K*A", "d/dt(A) = -(E + K2*A)/2", "d/dt(B) = E*2 - K*B/V + 0"])
    assert m.is_linear
    p = {"K": 0.7, "K2": 0.3, "V": 2.0}
    K = np.asarray(m.rate_matrix(p, xp=np))
    np.testing.assert_allclose(K, [[-(0.7 + 0.3) / 2, 0.0], [1.4, -0.35]], rtol=1e-15)


# ---------------------------------------------------------------------------------------------------
# fitting


@pytest.fixture(scope="module")
def theoph_fits():
    from pkpd.datasets import load_theoph
    from pkpd.fit import laplace as lp
    from pkpd.fit.problem import build_problem
    from pkpd.fit.spec import load_model

    out = {}
    for name in ("theoph.toml", "theoph_user.toml"):
        spec = load_model(ROOT / "examples" / "models" / name)
        prob = build_problem(load_theoph(), spec)
        out[name] = (prob, lp.fit_laplace(prob))
    return out


def test_theoph_fit_with_hand_written_model_matches_builtin(theoph_fits):
    (p0, f0), (p1, f1) = theoph_fits.values()
    assert p1.model.name == "theoph_1cmt_oral" and p1.model.is_linear
    assert f0.converged and f1.converged
    np.testing.assert_allclose(np.asarray(f1.u_full), np.asarray(f0.u_full), rtol=1e-6, atol=1e-9)
    assert f1.minus2ll == pytest.approx(f0.minus2ll, rel=1e-6)


def test_pkpd_fit_with_hand_written_model(tmp_path, theoph_fits):
    from pkpd.datasets import load_theoph

    data = tmp_path / "theoph.csv"
    load_theoph().to_csv(data, index=False)
    out = tmp_path / "fit"
    res = runner.invoke(
        app,
        [
            "fit",
            str(data),
            "--model",
            str(ROOT / "examples/models/theoph_user.toml"),
            "--method",
            "laplace",
            "--out",
            str(out),
            "--npde-replicates",
            "50",
            "--vpc-replicates",
            "20",
        ],
    )
    assert res.exit_code == 0, cli_output(res)
    tab = pd.read_csv(out / "parameters.csv").set_index("name")
    from pkpd.fit.spec import load_model

    written = load_model(out / "model.toml")  # the [structure] travels with the fitted model
    assert written.structure == "theoph_1cmt_oral" and written.structure_table is not None
    est = {p.name: p.estimate for p in written.parameters}
    for name in ("KE", "KA", "CL"):
        assert tab.loc[name, "estimate"] == pytest.approx(est[name], rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# errors a model author can act on


GOOD = """\
[structure]
name = "bad_model"
states = ["DEPOT", "CENTRAL"]
equations = [
  "d/dt(DEPOT) = -KA*DEPOT",
  "d/dt(CENTRAL) = KA*DEPOT - CL/V*CENTRAL",
]
outputs = ["CP = CENTRAL/V"]
"""

MALFORMED = [
    # (what, replace (old, new) in GOOD, expected fragments: line and symbol)
    ("syntax error", ("KA*DEPOT - CL/V", "KA*DEPOT - CL/(V"), ["line 6", "syntax error"]),
    ("unknown symbol", ("CL/V*CENTRAL", "CL/V*CENTRL"), ["line 6", "unknown symbol CENTRL"]),
    ("undefined state", ("d/dt(DEPOT)", "d/dt(GUT)"), ["line 5", "undefined state 'GUT'"]),
    (
        "dose into a missing state",
        ('states = ["DEPOT", "CENTRAL"]', 'states = ["DEPOT", "CENTRAL"]\ndoses = ["GUT"]'),
        ["line 4", "GUT", "not a state"],
    ),
    (
        "parameter never used",
        ("outputs = [", 'parameters = { KA = "1/h", CL = "L/h", V = "L", KE = "1/h" }\noutputs = ['),
        ["line 8", "KE", "never used"],
    ),
    ("state without equation", ('"d/dt(DEPOT) = -KA*DEPOT",', ""), ["DEPOT has no equation"]),
    (
        "equation twice",
        ('"d/dt(DEPOT) = -KA*DEPOT",', '"d/dt(DEPOT) = -KA*DEPOT",\n  "d/dt(DEPOT) = 0",'),
        ["line 6", "d/dt(DEPOT) is written twice"],
    ),
    ("not an equation", ('"d/dt(DEPOT) = -KA*DEPOT",', '"DEPOT -KA*DEPOT",'), ["line 5", "syntax error"]),
    (
        "assigning a state",
        ('"d/dt(DEPOT) = -KA*DEPOT",', '"d/dt(DEPOT) = -KA*DEPOT",\n  "CENTRAL = 2",'),
        ["line 6", "assigns state CENTRAL"],
    ),
    (
        "used before defined",
        ('"d/dt(DEPOT) = -KA*DEPOT",', '"d/dt(DEPOT) = -KE*DEPOT",\n  "KE = KA",'),
        ["line 5", "KE is used before it is defined"],
    ),
    ("forbidden function", ("-KA*DEPOT", "-KA*DEPOT + __import__(1)"), ["line 5", "not allowed"]),
    ("unknown function", ("-KA*DEPOT", "-KA*sin(DEPOT)"), ["line 5", "function 'sin' not allowed"]),
    (
        "duplicate state",
        ('states = ["DEPOT", "CENTRAL"]', 'states = ["DEPOT", "CENTRAL", "DEPOT"]'),
        ["line 3", "DEPOT is listed twice"],
    ),
    (
        "nonzero initial condition",
        ('states = ["DEPOT", "CENTRAL"]', 'states = ["DEPOT", { name = "CENTRAL", init = 5 }]'),
        ["CENTRAL", "initial"],
    ),
    ("no outputs", ('outputs = ["CP = CENTRAL/V"]', ""), ["outputs", "empty"]),
    ("unknown key", ('name = "bad_model"', 'name = "bad_model"\nequation = []'), ["line 3", "unknown key(s) equation"]),
    ("dosing parameter in an equation", ("-KA*DEPOT", "-KA*F1*DEPOT"), ["line 5", "F1 is a dosing parameter"]),
    ("reserved name", ('name = "bad_model"', 'name = "1cmt_oral"'), ["reserved"]),
    ("comparison as assignment", ("CP = CENTRAL/V", "CP == CENTRAL/V"), ["line 8", "syntax error"]),
]


@pytest.mark.parametrize("what, edit, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_model_files_give_one_clear_error(what, edit, expected, tmp_path):
    text = GOOD.replace(*edit)
    assert text != GOOD
    model = tmp_path / "bad.toml"
    model.write_text(text)
    data = tmp_path / "d.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT\n1,0,1,100,1\n1,1,0,0,0\n")
    params = tmp_path / "p.toml"
    params.write_text("[parameters]\nKA = 1\nCL = 2\nV = 10\n")
    res = runner.invoke(
        app, ["simulate", str(data), "--model", str(model), "--params", str(params), "--out", str(tmp_path / "o.csv")]
    )
    out = cli_output(res)
    assert res.exit_code == 1, out
    assert "Traceback" not in out
    assert str(model) in out
    for frag in expected:
        assert frag in out, (frag, out)


def test_dose_into_a_state_outside_doses_and_unknown_parameter(tmp_path):
    model = tmp_path / "m.toml"
    model.write_text(GOOD.replace('states = ["DEPOT", "CENTRAL"]', 'states = ["DEPOT", "CENTRAL"]\ndoses = ["DEPOT"]'))
    data = tmp_path / "d.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT\n1,0,1,100,2\n1,1,0,0,0\n")
    params = tmp_path / "p.toml"
    params.write_text("[parameters]\nKA = 1\nCL = 2\nV = 10\n")
    res = runner.invoke(
        app, ["simulate", str(data), "--model", str(model), "--params", str(params), "--out", str(tmp_path / "o.csv")]
    )
    out = cli_output(res)
    assert res.exit_code == 1 and "Traceback" not in out
    assert "row" in out and "1=DEPOT" in out and "does not dose" in out
    params.write_text("[parameters]\nKA = 1\nCL = 2\n")  # V missing: the equation using it is named
    data.write_text("ID,TIME,EVID,AMT,CMT\n1,0,1,100,1\n1,1,0,0,0\n")
    res = runner.invoke(
        app, ["simulate", str(data), "--model", str(model), "--params", str(params), "--out", str(tmp_path / "o.csv")]
    )
    out = cli_output(res)
    assert res.exit_code == 1 and "Traceback" not in out
    assert "line 7" in out and "unknown symbol V" in out


def test_fit_model_file_unknown_symbol_and_unused_parameter(tmp_path):
    from pkpd.fit.spec import load_model

    base = (ROOT / "examples/models/theoph_user.toml").read_text()
    bad = tmp_path / "a.toml"
    bad.write_text(base.replace("KA*DEPOT - CL/V*CENTRAL", "KA*DEPOT - CLR/V*CENTRAL"))
    with pytest.raises(pkpd.ModelSpecError, match=r"line 16: .*unknown symbol CLR"):
        load_model(bad)
    bad.write_text(base.replace("[derived]", "[parameters.EXTRA]\nestimate = 1.0\n\n[derived]"))
    with pytest.raises(pkpd.ModelSpecError, match=r"line \d+: parameter EXTRA is never used"):
        load_model(bad)


# ---------------------------------------------------------------------------------------------------
# docs/model_language.md: every example is the file it names, and runs


DOC = ROOT / "docs" / "model_language.md"


def _doc_examples():
    text = DOC.read_text()
    return re.findall(r"```toml\n# file: (\S+)\n(.*?)```", text, re.S)


def test_doc_examples_are_the_example_files():
    ex = _doc_examples()
    assert {Path(f).name for f, _ in ex} >= {
        "oral2.toml",
        "mm_iv.toml",
        "resp_depression.toml",
        "parent_metabolite.toml",
        "oral1.toml",
    }
    for f, body in ex:
        assert (ROOT / f).read_text() == body, f


def test_doc_examples_simulate():
    data = pd.DataFrame(
        {
            "ID": [1] * 6,
            "TIME": [0, 1, 2, 4, 8, 24],
            "EVID": [1, 0, 0, 0, 0, 0],
            "AMT": [10, 0, 0, 0, 0, 0],
            "CMT": [1] * 6,
        }
    )
    values = {
        "CL": 2.0,
        "V": 20.0,
        "V1": 20.0,
        "Q": 3.0,
        "V2": 40.0,
        "KA": 1.2,
        "VMAX": 5.0,
        "KM": 0.5,
        "IMAX": 0.8,
        "IC50": 0.2,
        "KOUT": 0.9,
        "RR0": 14.0,
        "FM": 0.5,
        "CLM": 1.0,
        "VM": 10.0,
        "KA2": 0.2,
        "FR": 0.4,
    }
    for f, _ in _doc_examples():
        if "[structure]" not in (ROOT / f).read_text():
            continue
        m = pkpd.get_model(str(ROOT / f))
        out = pkpd.simulate(data, m, {q: values[q] for q in m.param_names})
        for o in m.output_names():
            assert np.all(np.isfinite(out[o])), (f, o)


def test_respiratory_depression_example_against_an_independent_integration():
    from scipy.integrate import solve_ivp

    m = pkpd.get_model(str(USER / "resp_depression.toml"))
    assert not m.is_linear
    p = {"CL": 10.0, "V": 50.0, "IMAX": 0.7, "IC50": 0.05, "KOUT": 1.5, "RR0": 14.0}
    t = np.array([0.5, 1, 2, 4, 8, 16])
    data = pd.DataFrame(
        {
            "ID": 1,
            "TIME": np.r_[0.0, t],
            "EVID": np.r_[1, np.zeros(len(t), int)],
            "AMT": np.r_[10.0, np.zeros(len(t))],
            "CMT": 1,
        }
    )
    out = pkpd.simulate(data, m, p, solver=pkpd.ODE(rtol=1e-10, atol=1e-12))

    def f(_, y):
        c = y[0] / p["V"]
        return [-p["CL"] / p["V"] * y[0], p["KOUT"] * p["RR0"] * p["IMAX"] * c / (p["IC50"] + c) - p["KOUT"] * y[1]]

    ref = solve_ivp(f, (0, 16), [10.0, 0.0], t_eval=t, rtol=1e-12, atol=1e-14, method="LSODA")
    rr = p["RR0"] - ref.y[1]
    np.testing.assert_allclose(out["RR"].to_numpy()[1:], rr, rtol=1e-6)
    assert out["RR"].min() < p["RR0"] and out["RR"].iloc[0] == pytest.approx(p["RR0"])


# ---------------------------------------------------------------------------------------------------
# a turnover (indirect-response) PD model written by hand fits simulated data


TURNOVER = FIXTURES / "turnover_fit.toml"
TO_TRUTH = {
    "CL": 5.0,
    "V": 50.0,
    "KOUT": 0.8,
    "R0": 16.0,
    "SLOPE": 0.2,
    "omega(CL)": 0.09,
    "omega(KOUT)": 0.09,
    "omega(R0)": 0.02,
    "cp.proportional": 0.15,
    "resp.additive": 0.8,
}
TO_DOSE, TO_PK, TO_PD, TO_N = 100.0, (0.25, 1.0, 2.0, 4.0, 8.0, 12.0), (0, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24), 30


def _turnover_closed_form(t, cl, v, kout, r0, slope, dose=TO_DOSE):
    """CP and R after an IV bolus at 0: ``CP = D/V e^{-k t}`` (``k = CL/V``) and
    ``R = R0 - KOUT R0 SLOPE D/V (e^{-k t} - e^{-KOUT t})/(KOUT - k)`` (KOUT != k)."""
    k = cl / v
    cp = dose / v * np.exp(-k * t)
    return cp, r0 - kout * r0 * slope * dose / v * (np.exp(-k * t) - np.exp(-kout * t)) / (kout - k)


def _turnover_data(seed=11):
    """30 patients, one 100 mg IV bolus each; DVID 1 concentrations, DVID 2 responses, from the closed form
    (independent of the engine) with log-normal IIV on CL, KOUT, R0, moment-matched (sample mean 0, sample
    variance omega) so that the comparison tests the estimator rather than the luck of the draw."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(TO_N, 3))
    z = (z - z.mean(0)) / z.std(0)
    eta = z * np.sqrt([TO_TRUTH["omega(CL)"], TO_TRUTH["omega(KOUT)"], TO_TRUTH["omega(R0)"]])
    rows = []
    for i in range(TO_N):
        cl, kout, r0 = (TO_TRUTH[n] * np.exp(eta[i, j]) for j, n in enumerate(("CL", "KOUT", "R0")))
        rows.append({"ID": i + 1, "TIME": 0.0, "AMT": TO_DOSE, "DV": 0.0, "MDV": 1, "EVID": 1, "CMT": 1, "DVID": 1})
        for t, dvid in sorted([(t, 1) for t in TO_PK] + [(float(t), 2) for t in TO_PD]):
            cp, r = _turnover_closed_form(t, cl, TO_TRUTH["V"], kout, r0, TO_TRUTH["SLOPE"])
            y = (
                cp * (1 + TO_TRUTH["cp.proportional"] * rng.normal())
                if dvid == 1
                else r + TO_TRUTH["resp.additive"] * rng.normal()
            )
            rows.append({"ID": i + 1, "TIME": t, "AMT": 0.0, "DV": y, "MDV": 0, "EVID": 0, "CMT": 1, "DVID": dvid})
    return pd.DataFrame(rows)


def test_turnover_closed_form_matches_the_hand_written_model():
    """The reference of the simulated data: the engine's hand-written turnover model equals the closed form."""
    m = pkpd.get_model(str(TURNOVER))
    assert m.is_linear and m.output_names() == ("CP", "R")
    t = np.array([0.0, 0.5, 1, 2, 4, 8, 16, 24])
    data = pd.DataFrame({"ID": 1, "TIME": t, "EVID": [1] + [0] * 7, "AMT": [TO_DOSE] + [0.0] * 7, "CMT": 1})
    p = {k: TO_TRUTH[k] for k in ("CL", "V", "KOUT", "R0", "SLOPE")}
    out = pkpd.simulate(data, m, p)
    cp, r = _turnover_closed_form(t, **{k.lower(): v for k, v in p.items()})
    np.testing.assert_allclose(out["CP"], cp, rtol=1e-10)
    np.testing.assert_allclose(out["R"], r, rtol=1e-10)


def test_turnover_model_fit_recovers_its_parameters():
    """Laplace fit from initial estimates 25-50 % off. Tolerance: every typical value, IIV variance and residual
    term within 3 standard errors of the truth (on the estimation scale: log for the typical values, as the fit's
    covariance step reports them), and the typical values within 15 % (their SEs from this design are 2-6 %)."""
    from pkpd.fit import laplace as lp
    from pkpd.fit.problem import build_problem
    from pkpd.fit.spec import load_model

    spec = load_model(TURNOVER)
    assert spec.structure == "turnover_linear_inhibition"
    prob = build_problem(_turnover_data(), spec)
    fit = lp.fit_laplace(prob)
    assert fit.converged, fit.message
    assert fit.cov_u is not None, fit.cov_message
    pk = prob.packer
    nat = pk.natural(fit.u_full)
    est = dict(zip(prob.spec.parameter_names, map(float, np.asarray(nat["theta"]))))
    om = np.asarray(nat["omega"])
    est.update({f"omega({n})": float(om[k, k]) for k, n in enumerate(prob.spec.eta_names())})
    sigma_names = [n for n, kd in zip(pk.names, pk.kinds) if kd == "sigma"]
    est.update(dict(zip(sigma_names, map(float, np.asarray(nat["sigma"])))))
    se_u = np.sqrt(np.diag(fit.cov_u))
    free = list(pk.free_names)
    u = np.asarray(fit.u_full)
    for name, truth in TO_TRUTH.items():
        i = pk.names.index(name)
        if name.startswith("omega"):  # log of the Cholesky diagonal = log(omega)/2
            u_true = 0.5 * np.log(truth)
        elif pk.kinds[i] == "sigma":
            u_true = np.log(truth)
        else:
            assert pk.code[i] == 1 and pk.lower[i] == 0.0
            u_true = np.log(truth)
        se = se_u[free.index(name)]
        print(f"{name}: estimate {est[name]:.4g} truth {truth:.4g} z {(u[i] - u_true) / se:+.2f}")
        assert abs(u[i] - u_true) <= 3 * se, (name, est[name], truth, se)
    for name in ("CL", "V", "KOUT", "R0", "SLOPE"):
        assert est[name] == pytest.approx(TO_TRUTH[name], rel=0.15), name


@pytest.mark.slow  # 17 s; the Laplace fit and the forecast with the hand-written model stay in the default run
def test_svi_with_hand_written_model_matches_builtin(theoph_fits):
    """SVI (same seed, 300 steps) on the two Theoph problems: the likelihoods agree to rounding, so the loss
    trace and the draws agree to rtol 1e-6 (Adam amplifies rounding differences only slightly in 300 steps)."""
    from pkpd.fit.bayes import fit_svi

    (p0, _), (p1, _) = theoph_fits.values()
    r0, r1 = (fit_svi(p, num_steps=300, num_draws=200, seed=3, progress=False) for p in (p0, p1))
    np.testing.assert_allclose(r1.diagnostics["elbo"], r0.diagnostics["elbo"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(r1.u_draws), np.asarray(r0.u_draws), rtol=1e-6, atol=1e-9)


def test_forecast_with_hand_written_model_matches_builtin():
    """One patient's MAP forecast (subject 1 of Theoph, population values of the model files) with the
    hand-written and the built-in model: the same modes and predictions (rtol 1e-6)."""
    from pkpd.datasets import load_theoph
    from pkpd.fit.forecast import forecast

    one = load_theoph().query("ID == 1")
    f0, f1 = (
        forecast(ROOT / "examples" / "models" / name, one, n_points=50, n_draws=100, seed=1)
        for name in ("theoph.toml", "theoph_user.toml")
    )
    np.testing.assert_allclose(f1.eta_map, f0.eta_map, rtol=1e-6, atol=1e-9)
    cols = [c for c in f0.predictions.columns if f0.predictions[c].dtype.kind == "f"]
    np.testing.assert_allclose(f1.predictions[cols].to_numpy(), f0.predictions[cols].to_numpy(), rtol=1e-6, atol=1e-9)
