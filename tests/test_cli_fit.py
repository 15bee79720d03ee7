"""`pkpd fit` (cli.py): a Theoph fit end to end, --force, and clear errors without tracebacks.

The Theoph fit compiles once per process (~40 s); tests/test_fit_outputs.py reuses the compiled programs
(same model file, same data shapes). The error tests stop before any compilation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import cli_output, runner

from cli import app
from pkpd.datasets import load_theoph

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "theoph.toml"
NLME = json.loads((ROOT / "benchmarks" / "validation" / "theoph_nlme_reference.json").read_text())["fits"]["ml_diag"]


@pytest.fixture(scope="module")
def theoph_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cli_fit") / "theoph.csv"
    load_theoph().to_csv(p, index=False)
    return p


def test_cli_fit_theoph(theoph_csv, tmp_path):
    """An existing non-empty --out is refused without --force (exit 1, before any fitting, files kept);
    with --force: exit 0, the summary table printed, the directory written (other files left alone),
    typical values within 3 % of R nlme's."""
    out = tmp_path / "fit"
    out.mkdir()
    (out / "old.txt").write_text("keep")
    refused = runner.invoke(app, ["fit", str(theoph_csv), "--model", str(MODEL), "--out", str(out)])
    assert refused.exit_code == 1
    assert "--force" in cli_output(refused) and "Traceback" not in cli_output(refused)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]

    res = runner.invoke(
        app,
        [
            "fit",
            str(theoph_csv),
            "--model",
            str(MODEL),
            "--method",
            "laplace",
            "--out",
            str(out),
            "--force",
            "--npde-replicates",
            "300",
            "--vpc-replicates",
            "100",
        ],
    )
    text = cli_output(res)
    assert res.exit_code == 0, text
    assert "-2LL" in text and "OFV" in text and "KA" in text and "converged" in text
    for name in (
        "parameters.csv",
        "objective.json",
        "individual.csv",
        "predictions.csv",
        "nca.csv",
        "model.toml",
        "fit.json",
        "gof.png",
        "residuals.png",
        "vpc.png",
        "individual.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "old.txt").read_text() == "keep"
    tab = pd.read_csv(out / "parameters.csv").set_index("name")
    for ours, theirs in (("KE", "lKe"), ("KA", "lKa"), ("CL", "lCl")):
        assert tab.loc[ours, "estimate"] == pytest.approx(math.exp(NLME["fixed_effects"][theirs]), rel=0.03)
    info = json.loads((out / "fit.json").read_text())
    assert info["options"]["npde_replicates"] == 300 and info["options"]["method"] == "laplace"


GOOD_MODEL = MODEL.read_text()


@pytest.mark.parametrize(
    "case, model_text, data_edit, expect",
    [
        ("missing data", GOOD_MODEL, "missing", "does not exist"),
        ("bad toml", "[model\nstructure = 1", None, "not valid TOML"),
        (
            "unknown key",
            GOOD_MODEL.replace('unit = "1/h"\ndescription = "elim', 'unit = "1/h"\nestimat = 2\ndescription = "elim'),
            None,
            "unknown key",
        ),
        (
            "unknown parameter in block",
            GOOD_MODEL + '\n[[omega.block]]\nparameters = ["KA", "CLX"]\nvalues = [0.3, 0.0, 0.05]\n',
            None,
            "CLX",
        ),
        (
            "omega not positive definite",
            GOOD_MODEL + '\n[[omega.block]]\nparameters = ["KA", "CL"]\nvalues = [0.3, 0.5, 0.05]\n',
            None,
            "positive definite",
        ),
        (
            "missing covariate",
            GOOD_MODEL.replace(
                "iiv = 0.05 ", 'covariates = [{ covariate = "CRCL", relation = "power", reference = 100 }]\niiv = 0.05 '
            ),
            None,
            "CRCL",
        ),
        ("dataset faults", GOOD_MODEL, "faults", "row"),
        ("covariate unit not text", GOOD_MODEL + "\n[covariates]\nWT = 70\n", None, "short unit label"),
    ],
)
def test_cli_fit_errors(case, model_text, data_edit, expect, tmp_path, theoph_csv):
    """Each user error: exit code 1, the message on the console, no traceback, nothing written."""
    model = tmp_path / "m.toml"
    model.write_text(model_text)
    data = theoph_csv
    if data_edit == "missing":
        data = tmp_path / "nope.csv"
    elif data_edit == "faults":
        df = load_theoph().astype({"DV": object})
        df.loc[3, "DV"] = "abc"  # non-numeric DV on an observation row (data row 4)
        df.loc[5, "TIME"] = -1.0  # time going back (data row 6)
        data = tmp_path / "bad.csv"
        df.to_csv(data, index=False)
    out = tmp_path / "out"
    res = runner.invoke(app, ["fit", str(data), "--model", str(model), "--out", str(out)])
    text = cli_output(res)
    assert res.exit_code == 1, text
    assert expect in text, text
    assert "Traceback" not in text
    assert not out.exists()
    if data_edit == "faults":
        assert "4" in text and "6" in text and "problems found" in text


def test_cli_fit_missing_model_file(theoph_csv, tmp_path):
    res = runner.invoke(app, ["fit", str(theoph_csv), "--model", str(tmp_path / "none.toml")])
    assert res.exit_code == 1 and "model file" in cli_output(res)


def test_cli_fit_help_lists_outputs():
    res = runner.invoke(app, ["fit", "--help"])
    assert res.exit_code == 0
    assert "--method" in res.output and "parameters.csv" in res.output and "--force" in res.output


def test_cli_fit_not_converged_exits_2_unless_allowed(theoph_csv, tmp_path, monkeypatch):
    """A fit that did not converge (BFGS limited to 1 iteration) writes its outputs marked ``"converged":
    false`` (fit.json, objective.json) and exits 2 with one line saying why; with --allow-nonconvergence it
    exits 0 with a warning (issue 21)."""
    import functools

    import pkpd.fit.api
    from pkpd.fit.laplace import fit_laplace

    monkeypatch.setattr(pkpd.fit.api, "fit_laplace", functools.partial(fit_laplace, maxiter=1))
    out = tmp_path / "fit"
    small = ["--npde-replicates", "20", "--vpc-replicates", "20"]
    res = runner.invoke(app, ["fit", str(theoph_csv), "--model", str(MODEL), "--out", str(out)] + small)
    text = cli_output(res)
    assert res.exit_code == 2, text
    line = next(x for x in text.splitlines() if x.startswith("Error: the fit did not converge"))
    assert "BFGS stopped (the iteration limit was reached) with largest gradient" in line
    assert "--allow-nonconvergence" in line and "Traceback" not in text
    assert "NOT CONVERGED" in text
    info = json.loads((out / "fit.json").read_text())
    obj = json.loads((out / "objective.json").read_text())
    assert info["converged"] is False and obj["converged"] is False
    assert obj["convergence"].startswith("not converged: ")
    assert (out / "parameters.csv").is_file() and (out / "model.toml").is_file()

    res = runner.invoke(
        app,
        ["fit", str(theoph_csv), "--model", str(MODEL), "--out", str(out), "--force", "--allow-nonconvergence"] + small,
    )
    text = cli_output(res)
    assert res.exit_code == 0, text
    assert "warning: the fit did not converge (BFGS stopped" in text


def _commented_theoph(path: Path) -> Path:
    """Theoph with NONMEM's comment column C first: data row 4 (subject 1, DV 6.57) flagged C and its DV
    set to 500 mg/L, a value no fit would leave unnoticed."""
    df = load_theoph()
    df.insert(0, "C", "")
    df.loc[3, ["C", "DV"]] = ["C", 500.0]
    df.to_csv(path, index=False)
    return path


def test_cli_fit_ignores_commented_rows_and_accepts(tmp_path, monkeypatch):
    """`pkpd fit --accept '(ID.LE.6)' --vpc-stratify DOSE`: the row flagged C in column C is not fitted
    (no DV of 500 among the fitted observations: the observations of subjects 1-6 less that one), only
    subjects 1-6 are (ACCEPT), the note names the rows of the file, and the pcVPC is stratified by DOSE. The model file's ``[covariates]`` units label the
    axes of eta_covariates.png (WT in kg; DOSE without a unit: "unit not given")."""
    import pkpd.fit.diagnostics as dg

    calls = []
    original = dg.plot_eta_covariates

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(dg, "plot_eta_covariates", spy)
    data = _commented_theoph(tmp_path / "theoph_c.csv")
    model = tmp_path / "theoph.toml"
    model.write_text(GOOD_MODEL + '\n[covariates]\nWT = "kg"\n')
    out = tmp_path / "fit"
    res = runner.invoke(
        app,
        [
            "fit",
            str(data),
            "--model",
            str(model),
            "--out",
            str(out),
            "--accept",
            "(ID.LE.6)",
            "--vpc-stratify",
            "DOSE",
            "--npde-replicates",
            "20",
            "--vpc-replicates",
            "20",
            "--allow-nonconvergence",
        ],
    )
    text = cli_output(res)
    assert res.exit_code == 0, text
    assert "ignored 73 of 144 data rows: 1 commented (C in column C) (row 4); 72 by ACCEPT=(ID.LE.6)" in text
    pred = pd.read_csv(out / "predictions.csv")
    raw = load_theoph()
    expect = raw[(raw["ID"] <= 6) & (raw["EVID"] == 0)].drop(index=3)
    assert sorted(pred["ID"].unique()) == [1, 2, 3, 4, 5, 6]
    assert len(pred) == len(expect) and pred["DV"].max() < 20.0
    info = json.loads((out / "fit.json").read_text())
    assert info["options"]["accept"] == ["(ID.LE.6)"] and info["options"]["vpc_stratify"] == "DOSE"
    assert any("row 4" in n for n in info["problem_notes"])
    pc = pd.read_csv(out / "pcvpc.csv")
    assert any(str(v).startswith("DOSE") for col in pc.columns for v in pc[col].astype(str).unique()), pc.head()
    assert (out / "pcvpc.png").is_file()
    assert calls and calls[0]["covariate_units"] == {"WT": "kg"} and (out / "eta_covariates.png").is_file()
    assert 'WT = "kg"' in (out / "model.toml").read_text()


@pytest.mark.parametrize(
    "option, value, expect",
    [
        ("--accept", "(FOO.EQ.1)", "ACCEPT condition 'FOO.EQ.1' names column FOO, which the dataset does not have"),
        ("--ignore", "(DV.XX.1)", "IGNORE condition 'DV.XX.1': unknown operator .XX."),
        ("--accept", "(DV.GT.abc)", "ACCEPT condition 'DV.GT.abc': .GT. compares numbers, and 'abc' is not a number"),
    ],
)
def test_cli_fit_bad_condition_one_error(option, value, expect, tmp_path):
    """A bad IGNORE/ACCEPT condition: exit 1 before any fitting, one problem named, no traceback, nothing
    written."""
    data = _commented_theoph(tmp_path / "theoph_c.csv")
    out = tmp_path / "out"
    res = runner.invoke(app, ["fit", str(data), "--model", str(MODEL), "--out", str(out), option, value])
    text = cli_output(res)
    assert res.exit_code == 1, text
    assert expect in text and "1 problem found" in text and "Traceback" not in text
    assert len([ln for ln in text.splitlines() if ln.strip().startswith("- ")]) == 1, text
    assert not out.exists()


def test_cli_fit_errors_name_rows_of_the_file(tmp_path):
    """A dataset fault after a commented row is reported by its row in the file (row 7), not by its place
    among the rows kept (6)."""
    df = load_theoph().astype({"DV": object})
    df.insert(0, "C", "")
    df.loc[3, "C"] = "C"
    df.loc[6, "DV"] = "abc"
    data = tmp_path / "bad.csv"
    df.to_csv(data, index=False)
    res = runner.invoke(app, ["fit", str(data), "--model", str(MODEL), "--out", str(tmp_path / "out")])
    text = cli_output(res)
    assert res.exit_code == 1 and "Traceback" not in text, text
    assert "row 7, column DV" in text and "row 6," not in text, text


def test_cli_forecast_accept_picks_one_patient(tmp_path):
    """`pkpd forecast --accept '(ID.EQ.2)'` forecasts subject 2 of the whole Theoph file (without it: the
    error says the data has 12 IDs); the commented row is not among the observations."""
    data = _commented_theoph(tmp_path / "theoph_c.csv")
    res = runner.invoke(
        app,
        [
            "forecast",
            str(data),
            "--model",
            str(MODEL),
            "--out",
            str(tmp_path / "all"),
            "--draws",
            "50",
            "--points",
            "20",
        ],
    )
    assert res.exit_code == 1 and "12 IDs" in cli_output(res), cli_output(res)
    out = tmp_path / "fc"
    res = runner.invoke(
        app,
        [
            "forecast",
            str(data),
            "--model",
            str(MODEL),
            "--out",
            str(out),
            "--accept",
            "(ID.EQ.1)",
            "--draws",
            "50",
            "--points",
            "20",
        ],
    )
    text = cli_output(res)
    assert res.exit_code == 0, text
    obs = pd.read_csv(out / "observations.csv")
    raw = load_theoph()
    assert len(obs) == int(((raw["ID"] == 1) & (raw["EVID"] == 0)).sum()) - 1 and obs["DV"].max() < 20.0
    assert "row 4" in text
