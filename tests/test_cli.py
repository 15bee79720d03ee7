"""The `pkpd` command line (cli.py): simulate, models, version, error handling."""

import math

import numpy as np
import pandas as pd
import pytest
from cli_helpers import cli_output, runner

from cli import app


@pytest.fixture
def bolus(tmp_path):
    data = tmp_path / "bolus.csv"
    data.write_text(
        "ID,TIME,EVID,AMT,CMT,WT\n1,0,1,100,1,70\n1,1,0,0,1,70\n1,2,0,0,1,70\n2,0,1,100,1,80\n2,1,0,0,1,80\n"
    )
    params = tmp_path / "p.toml"
    params.write_text("[parameters]\nCL = 5\nV = 50  # L\n")
    return data, params


def test_simulate_bolus(bolus, tmp_path):
    data, params = bolus
    out = tmp_path / "out.csv"
    res = runner.invoke(app, ["simulate", str(data), "--model", "1cmt_iv", "--params", str(params), "--out", str(out)])
    assert res.exit_code == 0, cli_output(res)
    text = cli_output(res)
    assert "1cmt_iv" in text and "5 rows" in text and "2 subjects" in text and str(out) in text
    sim = pd.read_csv(out)
    assert list(sim.columns[:6]) == ["ID", "TIME", "EVID", "AMT", "CMT", "WT"]
    assert "CENTRAL" in sim.columns and "CP" in sim.columns
    cp1 = sim.loc[1, "CP"]
    assert sim.loc[1, "TIME"] == 1.0
    assert cp1 == pytest.approx(2.0 * math.exp(-0.1), rel=1e-9)
    assert sim.loc[1, "CENTRAL"] == pytest.approx(100.0 * math.exp(-0.1), rel=1e-9)
    assert data.read_text().startswith("ID,TIME,EVID,AMT,CMT,WT\n")  # input untouched


def test_simulate_default_out_and_model_from_param_file(bolus, tmp_path, monkeypatch):
    data, _ = bolus
    params = tmp_path / "p2.toml"
    params.write_text('model = "1cmt_iv"\n[parameters]\nCL = 5\nV = 50\n')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = runner.invoke(app, ["simulate", str(data), "--params", str(params)])
    assert res.exit_code == 0, cli_output(res)
    assert (work / "bolus_sim.csv").is_file()


def test_simulate_conformance_scenario_keeps_extra_columns(tmp_path):
    from conftest import NMTESTS

    data = NMTESTS / "009-infusion-ss-lag-f.csv"
    if not data.is_file():
        pytest.skip(f"NONMEM conformance set not found at {NMTESTS}")
    params = tmp_path / "p.toml"
    params.write_text(
        '[parameters]\nCL = 1.1\nV = 20\nKA = 1.5\nALAG2 = "LAGT"\nF2 = "BIOAV"\nD2 = "DUR2 if MODE == 2 else 1"\n'
    )
    out = tmp_path / "sim.csv"
    res = runner.invoke(
        app, ["simulate", str(data), "--model", "1cmt_oral", "--params", str(params), "--out", str(out)]
    )
    assert res.exit_code == 0, cli_output(res)
    raw = pd.read_csv(data)
    sim = pd.read_csv(out)
    assert list(sim.columns[: len(raw.columns)]) == list(raw.columns)
    assert len(sim) == len(raw)
    obs = sim["EVID"].to_numpy() == 0
    ref = sim["NM_CP"].to_numpy(float)[obs]
    got = 1000.0 * sim["CP"].to_numpy(float)[obs]
    nz = ref != 0
    assert nz.sum() > 10
    rel = np.abs(got[nz] - ref[nz]) / np.abs(ref[nz])
    assert rel.max() <= 1e-4


def test_plot_and_overwrite_protection(bolus, tmp_path):
    data, params = bolus
    out = tmp_path / "out.csv"
    png = tmp_path / "cp.png"
    args = ["simulate", str(data), "-m", "1cmt_iv", "-p", str(params), "--out", str(out), "--plot", str(png)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, cli_output(res)
    assert png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # existing --out: refused without --force, file untouched
    out.write_text("precious\n")
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert "--force" in cli_output(res)
    assert "Traceback" not in cli_output(res)
    assert out.read_text() == "precious\n"

    # existing --plot alone is refused too
    out.unlink()
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--force" in cli_output(res)
    assert not out.exists()

    res = runner.invoke(app, args + ["--force"])
    assert res.exit_code == 0, cli_output(res)
    assert "CP" in pd.read_csv(out).columns


def test_never_overwrites_input(bolus):
    data, params = bolus
    before = data.read_text()
    res = runner.invoke(app, ["simulate", str(data), "-m", "1cmt_iv", "-p", str(params), "--out", str(data), "--force"])
    assert res.exit_code == 1
    assert "input" in cli_output(res)
    assert data.read_text() == before


def test_malformed_dataset_lists_every_row(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text(
        "ID,TIME,EVID,AMT,CMT\n"
        "1,0,1,100,1\n"
        "1,1,0,0,1\n"
        "1,2,1,-5,1\n"  # row 3: negative AMT
        "1,3,0,0,1\n"
        "1,2.5,0,0,1\n"  # row 5: TIME decreases within ID 1
        "1,6,0,0,1\n"
        "1,7,0,0,one\n"
    )  # row 7: non-numeric CMT
    params = tmp_path / "p.toml"
    params.write_text("[parameters]\nCL = 5\nV = 50\n")
    out = tmp_path / "out.csv"
    res = runner.invoke(app, ["simulate", str(data), "-m", "1cmt_iv", "-p", str(params), "--out", str(out)])
    text = cli_output(res)
    assert res.exit_code == 1, text
    assert "Traceback" not in text
    assert res.exception is None or isinstance(res.exception, SystemExit)
    for row in ("row 3", "row 5", "row 7"):
        assert row in text, text
    assert "AMT" in text and "TIME" in text and "one" in text
    assert not out.exists()


def test_unknown_model(bolus, tmp_path):
    data, params = bolus
    res = runner.invoke(
        app, ["simulate", str(data), "-m", "1cmt_xyz", "-p", str(params), "--out", str(tmp_path / "o.csv")]
    )
    text = cli_output(res)
    assert res.exit_code == 1
    assert "1cmt_xyz" in text and "pkpd models" in text
    assert "Traceback" not in text


def test_no_model_anywhere(bolus, tmp_path):
    data, params = bolus
    res = runner.invoke(app, ["simulate", str(data), "-p", str(params), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 1
    assert "--model" in cli_output(res)


def test_missing_parameter(bolus, tmp_path):
    data, _ = bolus
    params = tmp_path / "p.toml"
    params.write_text("[parameters]\nCL = 5\n")
    res = runner.invoke(
        app, ["simulate", str(data), "-m", "1cmt_iv", "-p", str(params), "--out", str(tmp_path / "o.csv")]
    )
    text = cli_output(res)
    assert res.exit_code == 1
    assert "needs parameter V" in text
    assert "Traceback" not in text
    assert not (tmp_path / "o.csv").exists()


def test_simulate_help_documents_units():
    res = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = res.output
    for word in ("mg/L", "RATE", "mg/h", "TIME", "AMT", "NOCB", "--force", "[parameters]", "ALAG"):
        assert word in text, word


def test_models_list_and_describe():
    res = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, cli_output(res)
    assert "2cmt_oral" in res.output and "CENTRAL" in res.output

    res = runner.invoke(app, ["models", "2cmt_oral"])
    assert res.exit_code == 0
    assert "2=CENTRAL" in res.output and "L/h" in res.output

    res = runner.invoke(app, ["models", "nope"])
    assert res.exit_code == 1
    assert "unknown model" in cli_output(res)


def test_version():
    import pkpd

    res = runner.invoke(app, ["version"])
    assert res.exit_code == 0
    assert res.output.strip() == pkpd.__version__


def test_no_args_shows_help():
    res = runner.invoke(app, [])
    assert "simulate" in res.output and "models" in res.output
