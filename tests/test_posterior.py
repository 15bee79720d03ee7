"""Posterior scenarios (issue 5, --posterior): a patient's forecast posterior drives the optimizer.

Reference: the forecast's own posterior draws (pkpd.fit.forecast, itself checked against quadrature in
test_fit_forecast.py). The optimizer's scenario rows must carry exactly those draws (systematically
resampled), the exact simulation must use them (its parameter table equals them), and the linked model is
validated (units, names) with clear errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regimens import RegimenError
from regimens.posterior import check_link, posterior_draws

MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "gabapentin_tdm.toml"
# one 600 mg gabapentin dose, two concentrations well above the population prediction for SCR 2.5 mg/dL
DATA = pd.DataFrame(
    {
        "ID": [1, 1, 1],
        "TIME": [0.0, 2.0, 8.0],
        "EVID": [1, 0, 0],
        "AMT": [600.0, 0, 0],
        "CMT": [1, 0, 0],
        "DV": [np.nan, 5.8, 6.4],
        "MDV": [1, 0, 0],
        "SCR": [2.5, 2.5, 2.5],
    }
)


@pytest.fixture(scope="module")
def fc():
    from pkpd.fit import forecast

    return forecast(MODEL, DATA, n_draws=400, seed=1)


def test_posterior_rows_are_the_forecast_draws(fc, tmp_path):
    rows, notes = posterior_draws((fc, MODEL), 16)
    assert list(rows.columns) == ["gabapentin.CL", "gabapentin.V"]
    assert len(rows) == 16
    # systematic resampling: every row is one of the posterior draws, spread over all of them
    cl = fc.draws["CL"].to_numpy()
    assert np.all(np.isin(rows["gabapentin.CL"].to_numpy(), cl))
    assert "forecast posterior" in notes[0]
    # the same from a directory as `pkpd forecast` writes it
    fc.save(tmp_path / "fc")
    (tmp_path / "fc" / "model.toml").write_text(MODEL.read_text())
    rows2, _ = posterior_draws(tmp_path / "fc", 16)
    np.testing.assert_allclose(rows2.to_numpy(), rows.to_numpy(), rtol=1e-12)


def test_optimizer_scenarios_use_the_posterior(fc):
    """optimize_patient(posterior=...): the exact simulations of the proposal and of C1 see the posterior
    clearance in every draw (parameter tables equal the resampled posterior), and the explanation says so."""
    from pkpd.patients import load_patient
    from regimens.optimize import OptimizeSettings, optimize_patient

    cov = load_patient(Path(__file__).resolve().parents[1] / "examples" / "patient_spine.toml").to_row()
    cov["SCR"] = 2.5
    st = OptimizeSettings(draws=4, steps=5)  # the settings of test_optimize.py (FAST)
    prop = optimize_patient(cov, settings=st, posterior=(fc, MODEL))
    rows, _ = posterior_draws((fc, MODEL), 4)
    for name in ("proposal", "C1"):
        used = prop.outcomes[name].parameters["gabapentin"]["CL"].to_numpy()
        np.testing.assert_allclose(used, rows["gabapentin.CL"].to_numpy(), rtol=1e-12)
    assert any("forecast posterior" in n for n in prop.notes)


def test_link_errors_are_clear(tmp_path):
    from pkpd.fit.spec import load_model

    text = MODEL.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(
        text.replace(
            'simulates = { CL = "gabapentin.CL", V = "gabapentin.V" }', 'simulates = { CL = "gabapentin.CLX" }'
        )
    )
    with pytest.raises(RegimenError, match="gabapentin has no parameter CLX"):
        check_link(load_model(bad))
    bad.write_text(
        text.replace('simulates = { CL = "gabapentin.CL", V = "gabapentin.V" }', 'simulates = { V = "gabapentin.CL" }')
    )
    with pytest.raises(RegimenError, match="units agree"):
        check_link(load_model(bad))
    bad.write_text(text.replace('simulates = { CL = "gabapentin.CL", V = "gabapentin.V" }\n', ""))
    with pytest.raises(RegimenError, match="no \\[model\\] simulates"):
        check_link(load_model(bad))
    with pytest.raises(RegimenError, match="does not exist"):
        posterior_draws(tmp_path / "nowhere", 8)
    (tmp_path / "fitdir").mkdir()
    (tmp_path / "fitdir" / "parameters.csv").write_text("x\n")
    with pytest.raises(RegimenError, match="forecast the patient first"):
        posterior_draws(tmp_path / "fitdir", 8)


def test_cli_posterior_errors_are_one_line(tmp_path):
    """`pkpd optimize --posterior` with a missing directory or a fit directory: exit 1, the fix named, no
    traceback (before any optimization is compiled)."""
    from cli_helpers import cli_output, runner

    from cli import app

    res = runner.invoke(
        app,
        [
            "optimize",
            "--patient",
            "examples/patient_spine.toml",
            "--posterior",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o1"),
        ],
    )
    assert res.exit_code == 1 and "does not exist" in cli_output(res) and "Traceback" not in cli_output(res)
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "parameters.csv").write_text("x\n")
    res = runner.invoke(
        app,
        [
            "optimize",
            "--patient",
            "examples/patient_spine.toml",
            "--posterior",
            str(tmp_path / "fit"),
            "--out",
            str(tmp_path / "o2"),
        ],
    )
    assert res.exit_code == 1 and "pkpd forecast" in cli_output(res) and "Traceback" not in cli_output(res)
