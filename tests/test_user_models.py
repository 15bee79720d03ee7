"""Models users write themselves (pkpd.models.user, docs/model_language.md).

* hand-written 1-cmt oral, 2-cmt oral and parent-metabolite models reproduce the built-in models on the
  exact path (rtol 1e-10) over the 30 NONMEM conformance scenarios (ADDL, SS 1/2, lags, F, infusions with
  RATE > 0, -1, -2, resets, time-varying covariates), from Python and from the command line;
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

import pkpd
from cli import app
from cli_helpers import cli_output, runner
from conftest import NMTESTS
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
        res = runner.invoke(app, ["simulate", str(data), "--model", str(USER / "oral1.toml"), "--params",
                                  str(ptoml), "--out", str(out)])
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
    p.write_text((USER / "oral1.toml").read_text() + "\n[parameters]\nCL = 1.1\nV = 20\nKA = 1.5\n"
                 + "".join(f"{k} = {json.dumps(v)}\n" for k, v in DOSING.items()))
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


def test_linear_user_model_on_the_ode_path_matches_exact():
    _, inputs = _scenarios("dosing_1001")
    sel = inputs[inputs["ID"].isin([1, 5, 9])]
    user = pkpd.get_model(str(USER / "oral1.toml"))
    ex = pkpd.simulate(sel, user, PARAMS["dosing_1001"], solver="analytic")
    ode = pkpd.simulate(sel, user, PARAMS["dosing_1001"], solver=pkpd.ODE(rtol=1e-10, atol=1e-12))
    assert _rel(ex["CP"], ode["CP"]) <= 1e-6


# ---------------------------------------------------------------------------------------------------
# nonlinear models: detected, never sent to the exact solver


MM_DATA = pd.DataFrame({
    "ID": [1] * 9 + [2] * 6,
    "TIME": [0, 0.5, 2, 6, 12, 12, 14, 24, 48, 0, 1, 4, 8, 24, 30],
    "EVID": [1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
    "AMT": [500, 0, 0, 0, 300, 0, 0, 0, 0, 400, 0, 0, 0, 0, 0],
    "RATE": [0, 0, 0, 0, 150, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "II": [0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0],
    "ADDL": [0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0],
    "CMT": [1] * 15,
})


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


@pytest.mark.parametrize("equations, reason", [
    (["d/dt(A) = -K*A*A", "d/dt(B) = K*A - K*B"], "not linear"),
    (["d/dt(A) = -K*A/(KM + A)", "d/dt(B) = 0"], "not linear"),
    (["d/dt(A) = KIN - K*A", "d/dt(B) = 0"], "without a state"),
    (["d/dt(A) = -K*exp(-t)*A", "d/dt(B) = 0"], "time"),
    (["d/dt(A) = -K*A if A > 1 else 0", "d/dt(B) = 0"], "not linear"),
    (["d/dt(A) = -K*max(A, 0)", "d/dt(B) = 0"], "not linear"),
    (["d/dt(A) = -K*A + K*B", "d/dt(B) = -K*A - K*B"], "complex eigenvalues"),
])
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
    res = runner.invoke(app, ["fit", str(data), "--model", str(ROOT / "examples/models/theoph_user.toml"),
                              "--method", "laplace", "--out", str(out), "--npde-replicates", "50",
                              "--vpc-replicates", "20"])
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
    ("dose into a missing state", ('states = ["DEPOT", "CENTRAL"]',
                                   'states = ["DEPOT", "CENTRAL"]\ndoses = ["GUT"]'), ["line 4", "GUT", "not a state"]),
    ("parameter never used", ("outputs = [", "parameters = { KA = \"1/h\", CL = \"L/h\", V = \"L\", KE = \"1/h\" }\n"
                              "outputs = ["), ["line 8", "KE", "never used"]),
    ("state without equation", ('"d/dt(DEPOT) = -KA*DEPOT",', ""), ["DEPOT has no equation"]),
    ("equation twice", ('"d/dt(DEPOT) = -KA*DEPOT",', '"d/dt(DEPOT) = -KA*DEPOT",\n  "d/dt(DEPOT) = 0",'),
     ["line 6", "d/dt(DEPOT) is written twice"]),
    ("not an equation", ('"d/dt(DEPOT) = -KA*DEPOT",', '"DEPOT -KA*DEPOT",'), ["line 5", "syntax error"]),
    ("assigning a state", ('"d/dt(DEPOT) = -KA*DEPOT",', '"d/dt(DEPOT) = -KA*DEPOT",\n  "CENTRAL = 2",'),
     ["line 6", "assigns state CENTRAL"]),
    ("used before defined", ('"d/dt(DEPOT) = -KA*DEPOT",', '"d/dt(DEPOT) = -KE*DEPOT",\n  "KE = KA",'),
     ["line 5", "KE is used before it is defined"]),
    ("forbidden function", ("-KA*DEPOT", "-KA*DEPOT + __import__(1)"), ["line 5", "not allowed"]),
    ("unknown function", ("-KA*DEPOT", "-KA*sin(DEPOT)"), ["line 5", "function 'sin' not allowed"]),
    ("duplicate state", ('states = ["DEPOT", "CENTRAL"]', 'states = ["DEPOT", "CENTRAL", "DEPOT"]'),
     ["line 3", "DEPOT is listed twice"]),
    ("nonzero initial condition", ('states = ["DEPOT", "CENTRAL"]',
                                   'states = ["DEPOT", { name = "CENTRAL", init = 5 }]'), ["CENTRAL", "initial"]),
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
    res = runner.invoke(app, ["simulate", str(data), "--model", str(model), "--params", str(params),
                              "--out", str(tmp_path / "o.csv")])
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
    res = runner.invoke(app, ["simulate", str(data), "--model", str(model), "--params", str(params),
                              "--out", str(tmp_path / "o.csv")])
    out = cli_output(res)
    assert res.exit_code == 1 and "Traceback" not in out
    assert "row" in out and "1=DEPOT" in out and "does not dose" in out
    params.write_text("[parameters]\nKA = 1\nCL = 2\n")  # V missing: the equation using it is named
    data.write_text("ID,TIME,EVID,AMT,CMT\n1,0,1,100,1\n1,1,0,0,0\n")
    res = runner.invoke(app, ["simulate", str(data), "--model", str(model), "--params", str(params),
                              "--out", str(tmp_path / "o.csv")])
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
    assert {Path(f).name for f, _ in ex} >= {"oral2.toml", "mm_iv.toml", "resp_depression.toml",
                                             "parent_metabolite.toml", "oral1.toml"}
    for f, body in ex:
        assert (ROOT / f).read_text() == body, f


def test_doc_examples_simulate():
    data = pd.DataFrame({"ID": [1] * 6, "TIME": [0, 1, 2, 4, 8, 24], "EVID": [1, 0, 0, 0, 0, 0],
                         "AMT": [10, 0, 0, 0, 0, 0], "CMT": [1] * 6})
    values = {"CL": 2.0, "V": 20.0, "V1": 20.0, "Q": 3.0, "V2": 40.0, "KA": 1.2, "VMAX": 5.0, "KM": 0.5,
              "IMAX": 0.8, "IC50": 0.2, "KOUT": 0.9, "RR0": 14.0, "FM": 0.5, "CLM": 1.0, "VM": 10.0}
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
    data = pd.DataFrame({"ID": 1, "TIME": np.r_[0.0, t], "EVID": np.r_[1, np.zeros(len(t), int)],
                         "AMT": np.r_[10.0, np.zeros(len(t))], "CMT": 1})
    out = pkpd.simulate(data, m, p, solver=pkpd.ODE(rtol=1e-10, atol=1e-12))

    def f(_, y):
        c = y[0] / p["V"]
        return [-p["CL"] / p["V"] * y[0], p["KOUT"] * p["RR0"] * p["IMAX"] * c / (p["IC50"] + c) - p["KOUT"] * y[1]]

    ref = solve_ivp(f, (0, 16), [10.0, 0.0], t_eval=t, rtol=1e-12, atol=1e-14, method="LSODA")
    rr = p["RR0"] - ref.y[1]
    np.testing.assert_allclose(out["RR"].to_numpy()[1:], rr, rtol=1e-6)
    assert out["RR"].min() < p["RR0"] and out["RR"].iloc[0] == pytest.approx(p["RR0"])
