"""A catalogue of malformed inputs, each run through the command line as a user would: exit code not 0,
one clear message naming what is wrong (and its row, line or column where there is one), no traceback, and
nothing written.

Datasets go through ``pkpd simulate DATA --params`` (and a few through ``pkpd fit``), regimen files through
``pkpd simulate --regimen FILE``, patient files through ``pkpd simulate --regimen C1 --patient FILE``,
parameter/model files through ``pkpd simulate DATA --params FILE``. The expected words of each message are
what a user needs to act on (the row, the column, the value or the rule), written from the input, not copied
from the program's output.
"""

from __future__ import annotations

import pytest
from cli_helpers import cli_output, runner

from cli import app

# ---- datasets -------------------------------------------------------------------------------------------
HEAD = "ID,TIME,EVID,AMT,CMT,II,ADDL,WT\n"
OK = ["1,0,1,10,2,12,5,82", "1,0,0,0,3,0,0,82", "1,1,0,0,3,0,0,82", "1,4,0,0,3,0,0,82"]


def _rows(*replace: tuple[int, str], extra: tuple[str, ...] = (), head: str = HEAD) -> str:
    rows = list(OK)
    for i, text in replace:
        rows[i] = text
    return head + "\n".join(rows + list(extra)) + "\n"


DATASETS = [
    ("negative time", _rows((2, "1,-1,0,0,3,0,0,82")), ["row 3", "TIME"]),
    ("time not a number", _rows((2, "1,abc,0,0,3,0,0,82")), ["row 3", "TIME"]),
    ("negative amount", _rows((0, "1,0,1,-10,2,12,5,82")), ["row 1", "AMT"]),
    ("amount not a number", _rows((0, "1,0,1,ten,2,12,5,82")), ["row 1", "AMT"]),
    ("unknown EVID", _rows((1, "1,0,7,0,3,0,0,82")), ["row 2", "EVID"]),
    ("dose without amount", _rows((0, "1,0,1,0,2,12,5,82")), ["row 1", "AMT"]),
    ("negative ADDL", _rows((0, "1,0,1,10,2,12,-5,82")), ["row 1", "ADDL"]),
    ("fractional ADDL", _rows((0, "1,0,1,10,2,12,2.5,82")), ["row 1", "ADDL"]),
    ("ADDL without II", _rows((0, "1,0,1,10,2,0,5,82")), ["row 1", "II"]),
    ("negative II", _rows((0, "1,0,1,10,2,-12,5,82")), ["row 1", "II"]),
    ("compartment out of range", _rows((0, "1,0,1,10,9,12,5,82")), ["row 1", "CMT"]),
    ("compartment zero", _rows((0, "1,0,1,10,0,12,5,82")), ["row 1", "CMT"]),
    ("missing ID", _rows((2, ",1,0,0,3,0,0,82")), ["row 3", "ID"]),
    ("times not sorted", _rows((3, "1,0.5,0,0,3,0,0,82")), ["row 4", "TIME"]),
    ("too few fields", _rows((2, "1,0.57")), ["row 3", "too few"]),
    ("too many fields", _rows((2, "1,1,0,0,3,0,0,82,9")), ["row 3", "too many"]),
    ("missing ID column", "TIME,EVID,AMT,CMT\n0,1,10,2\n1,0,0,3\n", ["ID"]),
    ("missing TIME column", "ID,EVID,AMT,CMT\n1,1,10,2\n1,0,0,3\n", ["TIME"]),
    ("duplicated column", "ID,TIME,TIME,EVID,AMT,CMT\n1,0,0,1,10,2\n1,1,1,0,0,3\n", ["TIME"]),
    ("empty file", "", ["empty"]),
    ("header only", HEAD, ["no data rows"]),
    ("ADDL too large", _rows((0, "1,0,1,10,2,12,1e12,82")), ["row 1", "ADDL"]),
    ("covariate not a number", "ID,TIME,EVID,AMT,CMT,WT\n1,0,1,100,1,70\n1,1,0,0,1,heavy\n", ["row 2", "WT"]),
    ("covariate missing", "ID,TIME,EVID,AMT,CMT,WT\n1,0,1,100,1,70\n1,1,0,0,1,\n", ["row 2", "WT"]),
    ("semicolon delimiter with decimal commas", "ID;TIME;EVID;AMT;CMT\n1;0;1;10;2\n1;0,5;0;0;3\n", ["row 2", "TIME"]),
    ("negative rate", "ID,TIME,EVID,AMT,CMT,RATE\n1,0,1,10,1,-2\n1,1,0,0,1,0\n", ["row 1", "RATE"]),
    ("steady state without II", "ID,TIME,EVID,AMT,CMT,SS,II\n1,0,1,10,1,1,0\n1,1,0,0,1,0,0\n", ["row 1", "II"]),
    ("unknown SS value", "ID,TIME,EVID,AMT,CMT,SS,II\n1,0,1,10,1,5,12\n1,1,0,0,1,0,0\n", ["row 1", "SS"]),
    ("MDV not 0 or 1", "ID,TIME,EVID,AMT,CMT,MDV\n1,0,1,10,2,1\n1,1,0,0,3,3\n", ["row 2", "MDV"]),
]


@pytest.mark.parametrize("name, text, words", DATASETS, ids=[c[0] for c in DATASETS])
def test_malformed_dataset(tmp_path, name, text, words):
    data = tmp_path / "d.csv"
    data.write_text(text)
    out = tmp_path / "sim.csv"
    params = "examples/oxycodone_agema2021.toml"
    if name.startswith("covariate"):  # a model that uses the covariate (weight-scaled clearance)
        params = tmp_path / "p.toml"
        params.write_text('model = "1cmt_iv"\n[parameters]\nCL = "0.05 * WT"\nV = 10.0\n')
    res = runner.invoke(app, ["simulate", str(data), "--params", str(params), "--out", str(out)])
    _check(res, words, out)


def test_huge_amount_in_a_fit_names_row_and_column(tmp_path):
    """AMT 1e300 in a fit: an error naming the row and the column (it used to be '-2 log L is not finite')."""
    rows = open("pkpd/datasets/theoph.csv").read().splitlines()
    rows[1] = rows[1].replace(",4.02,0,1,1,", ",1e300,0,1,1,", 1)
    data = tmp_path / "d.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "fit"
    res = runner.invoke(app, ["fit", str(data), "--model", "examples/models/theoph.toml", "--out", str(out)])
    _check(res, ["row 1", "AMT"], out)


# ---- regimen files ----------------------------------------------------------------------------------------
REG_OK = 'name = "R"\nhorizon_h = 72.0\n'
SCHED = '[[scheduled]]\ndrug = "acetaminophen"\nroute = "po"\ndose_mg = 1000.0\nevery_h = 6.0\n'
REGIMENS = [
    ("unknown drug", REG_OK + SCHED.replace("acetaminophen", "paracetamolx"), ["paracetamolx"]),
    ("unknown route", REG_OK + SCHED.replace('"po"', '"intrathecalx"'), ["intrathecalx"]),
    ("negative dose", REG_OK + SCHED.replace("1000.0", "-1000.0"), ["dose_mg"]),
    ("zero interval", REG_OK + SCHED.replace("every_h = 6.0", "every_h = 0.0"), ["every_h"]),
    ("two dose kinds", REG_OK + SCHED + "dose_mg_per_kg = 15.0\n", ["dose_mg", "dose_mg_per_kg"]),
    ("no dose", REG_OK + SCHED.replace("dose_mg = 1000.0\n", ""), ["dose"]),
    ("stop before start", REG_OK + SCHED + "start_h = 10.0\nstop_h = 5.0\n", ["stop_h"]),
    ("oral infusion", REG_OK + SCHED + "infusion_h = 1.0\n", ["infusion"]),
    (
        "PRN threshold above 10",
        REG_OK + '[[prn]]\ndrug = "oxycodone"\nroute = "po"\ndose_mg = 5.0\n'
        "threshold_nrs = 12.0\nmin_interval_h = 4.0\n",
        ["threshold_nrs"],
    ),
    (
        "PRN without interval",
        REG_OK + '[[prn]]\ndrug = "oxycodone"\nroute = "po"\ndose_mg = 5.0\nthreshold_nrs = 4.0\n',
        ["min_interval_h"],
    ),
    (
        "PCA negative lockout",
        REG_OK + '[[pca]]\ndrug = "hydromorphone"\nroute = "iv"\ndemand_mg = 0.2\nlockout_min = -10.0\n',
        ["lockout"],
    ),
    ("TOML syntax error", REG_OK + "[[scheduled]\ndrug = 1\n", ["line"]),
    ("unknown key", REG_OK + SCHED + "dose_gram = 1.0\n", ["dose_gram"]),
    (
        "bad adjustment condition",
        REG_OK + SCHED + 'adjustments = [{ when = "AGE >>= 65", dose_mg = 500.0 }]\n',
        ["AGE"],
    ),
    ("horizon not positive", 'name = "R"\nhorizon_h = -1.0\n' + SCHED, ["horizon_h"]),
]


@pytest.mark.parametrize("name, text, words", REGIMENS, ids=[c[0] for c in REGIMENS])
def test_malformed_regimen_file(tmp_path, name, text, words):
    reg = tmp_path / "r.toml"
    reg.write_text(text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["simulate", "--regimen", str(reg), "--population", "2", "--out", str(out)])
    _check(res, words, out)


# ---- patient files ----------------------------------------------------------------------------------------
PAT = (
    'id = "p"\nage_y = 62\nsex = "female"\nweight_kg = 78\nheight_cm = 165\nscr_mg_dl = 0.9\n'
    'hepatic = "none"\nopioid_tolerant = false\nosa = false\ngenotypes = ["CYP2D6 *1/*1"]\n'
)
PATIENTS = [
    ("negative weight", PAT.replace("weight_kg = 78", "weight_kg = -78"), ["weight_kg"]),
    ("age out of range", PAT.replace("age_y = 62", "age_y = 250"), ["age_y"]),
    ("unknown sex", PAT.replace('"female"', '"robot"'), ["sex"]),
    ("unknown hepatic grade", PAT.replace('"none"', '"terrible"'), ["hepatic"]),
    ("unknown genotype", PAT.replace("*1/*1", "*99/*99"), ["CYP2D6"]),
    ("unknown gene", PAT.replace("CYP2D6 *1/*1", "ABC1 *1/*1"), ["ABC1"]),
    ("weight as text", PAT.replace("weight_kg = 78", 'weight_kg = "heavy"'), ["weight_kg"]),
    ("unknown field", PAT + 'favourite_drug = "morphine"\n', ["favourite_drug"]),
    ("missing weight", PAT.replace("weight_kg = 78\n", ""), ["weight_kg"]),
    ("creatinine zero", PAT.replace("scr_mg_dl = 0.9", "scr_mg_dl = 0.0"), ["scr_mg_dl"]),
]


@pytest.mark.parametrize("name, text, words", PATIENTS, ids=[c[0] for c in PATIENTS])
def test_malformed_patient_file(tmp_path, name, text, words):
    pat = tmp_path / "p.toml"
    pat.write_text(text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["simulate", "--regimen", "C1", "--patient", str(pat), "--out", str(out)])
    _check(res, words, out)


# ---- parameter files ----------------------------------------------------------------------------------------
PARAMS = [
    ("unknown model", 'model = "9cmt_magic"\n[parameters]\nCL = 1.0\n', ["9cmt_magic"]),
    ("missing parameter", 'model = "1cmt_iv"\n[parameters]\nCL = 1.0\n', ["V"]),
    ("negative clearance", 'model = "1cmt_iv"\n[parameters]\nCL = -1.0\nV = 10.0\n', ["CL"]),
    ("expression with unknown symbol", 'model = "1cmt_iv"\n[parameters]\nCL = "2 * FOO"\nV = 10.0\n', ["FOO"]),
    ("expression using eval", 'model = "1cmt_iv"\n[parameters]\nCL = "__import__(\'os\')"\nV = 10.0\n', ["CL"]),
    ("TOML syntax error", 'model = "1cmt_iv"\n[parameters\nCL = 1.0\n', ["line"]),
]


@pytest.mark.parametrize("name, text, words", PARAMS, ids=[c[0] for c in PARAMS])
def test_malformed_parameter_file(tmp_path, name, text, words):
    par = tmp_path / "p.toml"
    par.write_text(text)
    data = tmp_path / "d.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT\n1,0,1,100,1\n1,1,0,0,1\n")
    out = tmp_path / "sim.csv"
    res = runner.invoke(app, ["simulate", str(data), "--params", str(par), "--out", str(out)])
    _check(res, words, out)


def test_catalogue_size():
    """Issue acceptance: at least 60 malformed-input cases, each with its expected message."""
    assert len(DATASETS) + len(REGIMENS) + len(PATIENTS) + len(PARAMS) + 1 >= 60


def _check(res, words, out):
    text = cli_output(res)
    assert res.exit_code not in (0, None), text
    assert "Traceback" not in text, text
    low = text.lower()
    missing = [w for w in words if w.lower() not in low]
    assert not missing, (missing, text)
    assert not out.exists(), f"{out} was written"


@pytest.mark.parametrize("option", [["--ode-method", "kvaerno5"], ["--solver", "ode"], ["--interpolation", "locf"]])
def test_dataset_only_options_are_refused_in_regimen_mode(tmp_path, option):
    """--ode-method and friends used to be silently ignored with --regimen: now one message naming them."""
    out = tmp_path / "out"
    res = runner.invoke(app, ["simulate", "--regimen", "C1", "--population", "2", "--out", str(out), *option])
    _check(res, [option[0], "dataset mode"], out)
