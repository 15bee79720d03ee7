"""Dimensional check of models written in the model language (pkpd.models.units, issue 22 item 4).

Unit texts are read into dimensions and scales (reference: SI relations, e.g. 1 ug/mL = 1 mg/L); every
mismatch of the catalogue gives one ModelSpecError naming the file, the line and the offending terms; models
whose units are consistent, or not declared, compile as before (no false alarms: the shipped and test model
files compile in tests/test_user_models.py)."""

from __future__ import annotations

import math

import pytest

import pkpd
from pkpd.errors import ModelSpecError
from pkpd.models.units import parse_unit


@pytest.mark.parametrize(
    "a, b",
    [
        ("mg/L", "ug/mL"),
        ("mg/L", "ng/uL"),
        ("1/h", "h^-1"),
        ("1/h", "h**-1"),
        ("mL/min", "0.06*L/h"),  # 1 mL/min = 0.06 L/h
        ("mg*h/L", "h*mg/L"),
        ("mg/(L*h)", "mg/L/h"),
        ("breaths/min", "60*breaths/h"),
        ("1", "fraction"),
    ],
)
def test_equal_units(a, b):
    assert parse_unit(a).same(parse_unit(b)), (a, b, str(parse_unit(a)), str(parse_unit(b)))


def test_different_and_unreadable_units():
    assert not parse_unit("mg").same(parse_unit("g"))  # same dimension, other scale
    assert not parse_unit("L/h").same(parse_unit("1/h"))
    assert parse_unit("") is None and parse_unit("mg/L (free)") is None and parse_unit(None) is None
    assert math.isclose(parse_unit("%").scale, 0.01)
    assert str(parse_unit("L/h") * parse_unit("mg/L")) == "mg/h"


_HEAD = """[structure]
name = "u{k}"
states = [{{ name = "DEPOT", unit = "mg" }}, {{ name = "CENTRAL", unit = "mg" }}]
doses = ["DEPOT", "CENTRAL"]
equations = [
  "C = CENTRAL/V",
  "d/dt(DEPOT) = -KA*DEPOT",
  "{ode}",
]
outputs = ["{out}"]

[structure.parameters]
KA = {{ unit = "1/h" }}
CL = {{ unit = "L/h" }}
V = {{ unit = "L" }}
{extra}"""
_GOOD_ODE = "d/dt(CENTRAL) = KA*DEPOT - CL*C"


def _model(ode: str, out: str) -> str:
    """The model text; KM (mg/L) is declared where the equations use it (a declared parameter must be used)."""
    extra = 'KM = { unit = "mg/L" }\n' if "KM" in ode + out else ""
    return _HEAD.format(k=abs(hash((ode, out))), ode=ode, out=out, extra=extra)


@pytest.mark.parametrize(
    "ode, out, message",
    [
        (
            "d/dt(CENTRAL) = KA*DEPOT - CL*CENTRAL",
            "CP = C",
            r"subtracts KA \* DEPOT \(in mg/h\) and CL \* CENTRAL \(in mg\*L/h\)",
        ),
        ("d/dt(CENTRAL) = KA*DEPOT - CL*C/V*CENTRAL", "CP = C", r"subtracts .* \(in mg/h\) and CL \* C / V \* CENTRAL"),
        (
            "d/dt(CENTRAL) = KA*DEPOT*C - CL*C",
            "CP = C",
            r"subtracts KA \* DEPOT \* C \(in mg\^2/\(L\*h\)\) and CL \* C \(in mg/h\)",
        ),
        ("d/dt(CENTRAL) = KA*DEPOT - (KA + CL)*C", "CP = C", r"adds KA \(in 1/h\) and CL \(in L/h\)"),
        (
            "d/dt(CENTRAL) = KA*DEPOT*exp(-C) - CL*C",
            "CP = C",
            r"the argument of exp is in mg/L; it must be a pure number",
        ),
        (_GOOD_ODE, "CP = C + KA", r"adds C \(in mg/L\) and KA \(in 1/h\)"),
        (_GOOD_ODE, "CP = C if C > KA else KM", r"compares C \(in mg/L\) and KA \(in 1/h\)"),
        (_GOOD_ODE, "CP = min(C, CL)", r"min of C \(in mg/L\) and CL \(in L/h\)"),
        (_GOOD_ODE, "CP = pow(C, KA)", r"the exponent of pow\(C, KA\) is in 1/h; an exponent is a pure number"),
        (_GOOD_ODE, "CP = C**(CL/CL)", r"C \*\* \(CL / CL\) raises a quantity in mg/L to a non-numeric power"),
        (_GOOD_ODE, "CP = C**KA", r"exponent of C \*\* KA is in 1/h"),
        (_GOOD_ODE, "CP = where(C > KM, C, KA)", r"chooses between C \(in mg/L\) and KA \(in 1/h\)"),
    ],
)
def test_unit_mismatches_name_the_line_and_the_terms(tmp_path, ode, out, message):
    f = tmp_path / "m.toml"
    f.write_text(_model(ode, out))
    with pytest.raises(
        ModelSpecError, match=r"m.toml \[structure\], line \d+: equation '.*': unit mismatch: (.*: )?(the )?" + message
    ):
        pkpd.get_model(str(f))


@pytest.mark.parametrize(
    "ode, out",
    [
        (_GOOD_ODE, "CP = C"),
        ("d/dt(CENTRAL) = KA*DEPOT - CL*C*C/(KM + C)", "CP = C"),  # saturable: mg/h
        ("d/dt(CENTRAL) = 1.5*DEPOT - CL*C", "CP = C + 1e-9"),  # a number carries its own unit
        ("d/dt(CENTRAL) = KA*DEPOT*exp(-0.1*t) - CL*C", "CP = sqrt(C*C)"),  # t is not checked
        ("d/dt(CENTRAL) = KA*DEPOT - CL*C*(1 - C/(KM + C))", "CP = max(C, KM)"),
    ],
)
def test_consistent_models_compile(tmp_path, ode, out):
    f = tmp_path / "ok.toml"
    f.write_text(_model(ode, out))
    assert pkpd.get_model(str(f)).compartments == ("DEPOT", "CENTRAL")


def test_cli_reports_a_unit_mismatch_in_one_line(tmp_path):
    from cli_helpers import cli_output, runner

    from cli import app

    f = tmp_path / "m.toml"
    f.write_text(_model("d/dt(CENTRAL) = KA*DEPOT - CL*CENTRAL", "CP = C"))
    data = tmp_path / "d.csv"
    data.write_text("ID,TIME,AMT,CMT,EVID\n1,0,100,1,1\n1,1,0,2,0\n")
    r = runner.invoke(app, ["simulate", str(data), "--model", str(f), "--params", str(_params(tmp_path))])
    text = cli_output(r)
    assert r.exit_code == 1 and "Traceback" not in text
    assert "unit mismatch: subtracts KA * DEPOT (in mg/h) and CL * CENTRAL (in mg*L/h)" in text


def _params(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[parameters]\nKA = 1\nCL = 2\nV = 20\n")
    return p
