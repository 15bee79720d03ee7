"""The `pkpd drugs` commands and `pkpd simulate --regimen` (population mode), including bad input."""

from __future__ import annotations

import pandas as pd
import pytest
from cli_helpers import cli_output, runner

from cli import app
from pkpd.drugs import list_drugs

N = 12  # one population size for every run here, so the compiled kernel is shared


def test_drugs_list_has_every_drug():
    """Full names even when the output is not a terminal (the test runner's output is a pipe: rich used to
    cut them to 80 columns, 'bupivacaine_lipo…'), and the UNVERIFIED count of each drug is the number of
    lines (values, notes, limits) `pkpd drugs show` flags (it used to count only the PK parameters flagged
    in their own field: 0 for oxycodone, whose show output flags 7)."""
    res = runner.invoke(app, ["drugs", "list"])
    assert res.exit_code == 0, cli_output(res)
    rows = {
        line.split("│")[1].strip(): line.split("│")[-2].strip()
        for line in res.output.splitlines()
        if line.count("│") >= 7
    }
    for name in list_drugs():
        assert name in rows, (name, res.output)
        shown = runner.invoke(app, ["drugs", "show", name]).output
        assert int(rows[name]) == sum("UNVERIFIED" in line for line in shown.splitlines()), name
    assert "…" not in res.output


def test_drugs_show_sources_units_and_limits():
    res = runner.invoke(app, ["drugs", "show", "Toradol"])
    assert res.exit_code == 0, cli_output(res)
    text = res.output
    assert "ketorolac" in text and "Valitalo 2017" in text and "L/h" in text
    assert "analgesic PD" in text and "label limits" in text and "120" in text


def test_drugs_show_unknown_is_clear():
    res = runner.invoke(app, ["drugs", "show", "morphinex"])
    assert res.exit_code == 1
    assert "unknown drug 'morphinex'" in cli_output(res) and "Traceback" not in cli_output(res)


def test_simulate_regimen_population_writes_tables_and_plots(tmp_path):
    out = tmp_path / "c1"
    res = runner.invoke(app, ["simulate", "--regimen", "C1", "--population", str(N), "--seed", "4", "--out", str(out)])
    assert res.exit_code == 0, cli_output(res)
    for f in ("patients.csv", "summary.csv", "doses.csv", "findings.csv", "bands.png", "mme.png"):
        assert (out / f).is_file(), f
    pat = pd.read_csv(out / "patients.csv")
    assert len(pat) == N
    for col in ("MME_0_72", "TIT3", "PAIN_AUC", "P_OIRD", "P_PONV", "PEAK_BUPI", "LAST_INDEX"):
        assert col in pat
    assert "72-h MME mean" in res.output
    # refuses to overwrite a non-empty directory without --force
    again = runner.invoke(app, ["simulate", "--regimen", "C1", "--population", str(N), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in cli_output(again)
    forced = runner.invoke(app, ["simulate", "--regimen", "C1", "--population", str(N), "--out", str(out), "--force"])
    assert forced.exit_code == 0, cli_output(forced)


def test_patient_above_label_max_warns_but_simulates(tmp_path):
    """A 45-kg patient on C1: acetaminophen 1 g exceeds 15 mg/kg (label via models.md C): warning, not refusal."""
    pt = tmp_path / "small.toml"
    pt.write_text(
        'age_y = 70\nsex = "female"\nweight_kg = 45\nheight_cm = 150\nscr_mg_dl = 0.8\ngenotypes = ["CYP2D6 *4/*4"]\n'
    )
    res = runner.invoke(
        app, ["simulate", "--regimen", "C1", "--patient", str(pt), "--population", str(N), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, cli_output(res)
    assert "WARNING" in res.output and "acetaminophen" in res.output and "mg/kg" in res.output


@pytest.mark.parametrize(
    "content, match",
    [
        ('age_y = 50\nsex = "male"\nweight_kg = 80\nheight_cm = 180\ngenotypes = ["CYP2D6 *1/*99x"]\n', "CYP2D6"),
        ('age_y = 50\nsex = "male"\nweight_kg = 80\nheight_cm = 180\ngenotype = ["CYP2D6 *1/*1"]\n', "genotype"),
        ('age_y = 50\nsex = "male"\nweight_kg = 800\nheight_cm = 180\n', "weight_kg"),
    ],
)
def test_bad_patient_files_clear_errors(tmp_path, content, match):
    pt = tmp_path / "p.toml"
    pt.write_text(content)
    res = runner.invoke(app, ["simulate", "--regimen", "C1", "--patient", str(pt), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert match in cli_output(res) and "Traceback" not in cli_output(res)


def test_missing_covariate_is_named(tmp_path):
    """Gabapentin clearance needs serum creatinine; a patient without it gets a clear message."""
    pt = tmp_path / "p.toml"
    pt.write_text('age_y = 50\nsex = "male"\nweight_kg = 80\nheight_cm = 180\n')
    res = runner.invoke(app, ["simulate", "--regimen", "C1", "--patient", str(pt), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "gabapentin needs SCR" in cli_output(res) or "CRCL" in cli_output(res)


@pytest.mark.parametrize(
    "text, match",
    [
        ("morphinex 5 mg PO q4h\n", "line 1"),
        ("acetaminophen 1000 mg PO q6h\noxycodone five mg PO q4h PRN NRS>=4\n", "line 2"),
    ],
)
def test_bad_regimen_text_clear_errors(tmp_path, text, match):
    f = tmp_path / "r.txt"
    f.write_text(text)
    res = runner.invoke(app, ["simulate", "--regimen", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert match in cli_output(res) and "Traceback" not in cli_output(res)


def test_regimen_mode_argument_conflicts(tmp_path):
    res = runner.invoke(app, ["simulate", "--regimen", "NOPE", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "shipped regimen" in cli_output(res)
    res = runner.invoke(app, ["simulate"])
    assert res.exit_code == 1 and "--regimen" in cli_output(res)
