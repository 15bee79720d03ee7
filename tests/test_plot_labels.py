"""Issue 25: every PNG the tools write has units on both axes and a legend entry for every drawn line,
band and point set. The plot functions outside pkpd.fit.diagnostics (tests/test_fit_plots.py): the
dataset simulation's profiles (pkpd.simulate; its grid and per-ID legend in tests/test_grid_ignore.py), the
population report (pkpd.population.report), the individual forecast (pkpd.fit.forecast), the HTML report's
CP plot (pkpd.html_report), and the optimizer's schedule, concentration, band and trial plots
(regimens.optimize).

Each is called on the smallest input it reads: stub objects exposing only the attributes the plot uses
(no simulation, no fit), so the module runs in a few seconds. The figures are caught at ``savefig``
and checked with tests/plot_checks.check_figure (the checker of tests/test_fit_plots.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from plot_checks import UNIT, check_figure


@pytest.fixture
def saved(monkeypatch):
    """Every figure saved while the test runs (``Figure.savefig`` wrapped), in order."""
    figs = []
    real = Figure.savefig

    def keep(self, *args, **kwargs):
        figs.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figs


def _check_one(saved, units=None) -> list[str]:
    assert len(saved) == 1, f"{len(saved)} figures saved"
    return check_figure(saved[0], units)


def _outcome(n=3, with_bupi=True, drugs=("morphine", "gabapentin", "bupivacaine_total"), seed=0):
    """Stub of a regimen simulation result: n patients on a grid from -2 to 72 h."""
    rng = np.random.default_rng(seed)
    t = np.linspace(-2.0, 72.0, 38)
    shape = (n, len(t))
    bupi = rng.uniform(0.1, 1.5, shape) if with_bupi else np.zeros(shape)
    return SimpleNamespace(
        times=t,
        nrs=rng.uniform(0, 10, shape),
        opioid_units=rng.uniform(0, 2, shape),
        bupi=bupi,
        concentrations={d: rng.uniform(0.01, 3.0, shape) for d in drugs},
        patients=pd.DataFrame({"ID": np.arange(1, n + 1), "MME_0_72": rng.uniform(20, 200, n)}),
        regimen=SimpleNamespace(name="C1", prn=[SimpleNamespace(drug="morphine")]),
    )


# ---------------------------------------------------------------------------------------------------
# pkpd.population.report


@pytest.mark.parametrize("with_bupi", [True, False])
def test_population_bands_units_and_legends(saved, tmp_path, with_bupi):
    from pkpd.population.report import plot_bands

    plot_bands(_outcome(with_bupi=with_bupi), tmp_path / "bands.png")
    labels = _check_one(
        saved, {"time after end of surgery": "h", "bupivacaine": "ng/mL", "opioid effect": "dimensionless"}
    )
    assert len(saved[0].axes) == (3 if with_bupi else 2)
    assert any("pain NRS" in lab for lab in labels)
    assert (tmp_path / "bands.png").stat().st_size > 0


def test_population_mme_histogram_units_and_legends(saved, tmp_path):
    from pkpd.population.report import plot_mme

    plot_mme(_outcome(), tmp_path / "mme.png")
    labels = _check_one(saved, {"morphine milligram equivalents": "mg", "patients": "count"})
    assert len(labels) == 2


# ---------------------------------------------------------------------------------------------------
# pkpd.fit.forecast


def test_forecast_plot_units_per_output_and_legends(saved, tmp_path):
    """Two outputs: one with its model-file unit (mg/L), one without (labelled "DV units"); observations
    of the second output only: every panel still has its own legend."""
    from pkpd.fit.forecast import Forecast

    t = np.array([0.5, 1.0, 2.0, 4.0])
    pred = pd.concat(
        [
            pd.DataFrame(
                {
                    "TIME": t,
                    "output": o,
                    "map": m * np.exp(-0.2 * t),
                    "median": m * np.exp(-0.2 * t),
                    "p05": 0.5 * m * np.exp(-0.2 * t),
                    "p95": 2 * m * np.exp(-0.2 * t),
                }
            )
            for o, m in (("conc", 10.0), ("effect", 50.0))
        ]
    )
    obs = pd.DataFrame({"TIME": [1.0, 2.0], "output": ["effect", "effect"], "DV": [40.0, 33.0], "BLQ": [0, 0]})
    fc = Forecast(
        parameters=pd.DataFrame(),
        draws=pd.DataFrame(),
        predictions=pred,
        observations=obs,
        eta_map=np.zeros(1),
        eta_cov=np.eye(1),
        eta_names=["CL"],
        ess=100.0,
        n_draws=100,
        converged=True,
        timings={},
        time_unit="min",
        output_units={"conc": "mg/L"},
    )
    fc.plot(tmp_path / "forecast.png")
    labels = _check_one(saved, {"time": "min", "conc": "mg/L", "effect": "DV units"})
    assert sum(lab.startswith("time") for lab in labels) == 2
    assert all(ax.get_legend() is not None for ax in saved[0].axes)


# ---------------------------------------------------------------------------------------------------
# pkpd.simulate


def test_simulate_profiles_figure_every_segment_and_observation_dot_has_a_legend_entry(saved, tmp_path):
    """pkpd.simulate.plot_profiles on grid rows of three subjects with observation records, the second with a
    reset that goes back in time (two segments): every line and every subject's dots carry a legend text
    (one per ID, one shared 'CP at observation records')."""
    from pkpd.simulate import plot_profiles

    rows = []
    for who, times in ((1, [0.0, 2.0, 4.0, 6.0]), (2, [0.0, 2.0, 4.0, 0.0, 2.0, 4.0]), (3, [0.0, 3.0, 6.0])):
        rows += [{"ID": who, "TIME": t, "EVID": 0, "MDV": 0, "AMT": 0.0, "GRID": 1, "CP": 1.0 + t} for t in times]
        rows += [{"ID": who, "TIME": 2.0, "EVID": 0, "MDV": 0, "AMT": 0.0, "GRID": 0, "CP": 2.5}]
    model = SimpleNamespace(name="1cmt_oral", output_units={"CP": "mg/L"}, outputs=())
    assert plot_profiles(pd.DataFrame(rows), model, tmp_path / "cp.png") == (3, 3)
    _check_one(saved, {"TIME": "h", "CP": "mg/L"})
    ax = saved[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["ID 1", "ID 2", "ID 3", "CP at observation records"]
    dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert len(dots) == 3 and {ln.get_label() for ln in dots} == {"CP at observation records"}
    assert sum(ln.get_label() == "ID 2" for ln in ax.get_lines()) == 2  # both segments of the reset subject


# ---------------------------------------------------------------------------------------------------
# pkpd.html_report


def test_html_report_cp_plot_units_and_one_legend_entry_per_subject(saved):
    """The report's CP plot of a dataset simulation without a --plot figure is pkpd.simulate.profiles_figure:
    the model's output unit on the axis, one legend entry per drawn ID and a title saying how many are left
    out; without a model, mg/L."""
    from pkpd.html_report import _cp_plot

    frame = pd.DataFrame(
        {
            "ID": np.repeat([1, 2, 3], 4),
            "TIME": np.tile([0.0, 1.0, 2.0, 4.0], 3),
            "EVID": np.tile([1, 0, 0, 0], 3),
            "AMT": np.tile([100.0, 0.0, 0.0, 0.0], 3),
            "CP": np.tile([0.0, 2.0, 1.5, 0.8], 3) * np.repeat([1.0, 1.3, 0.7], 4),
        }
    )
    model = SimpleNamespace(name="1cmt_oral", output_units={"CP": "ng/mL"}, outputs=())
    png = _cp_plot(frame, "run: CP vs TIME", model, max_ids=2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    _check_one(saved, {"TIME": "h", "CP": "ng/mL"})
    ax = saved[0].axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["ID 1", "ID 2"]
    assert legend.get_title().get_text() == "first 2 of 3 IDs (1 not shown)" and ax.get_title() == "run: CP vs TIME"
    assert all(len(ln.get_xdata()) == 4 for ln in ax.get_lines())  # every record of the subject, doses included
    _cp_plot(frame, "run: CP vs TIME")
    assert saved[1].axes[0].get_ylabel() == "CP (mg/L)"


# ---------------------------------------------------------------------------------------------------
# regimens.optimize


def _proposal():
    sched = pd.DataFrame(
        {
            "drug": ["acetaminophen", "acetaminophen", "gabapentin"],
            "route": ["PO", "PO", "PO"],
            "dose_mg": [1000.0, 650.0, 300.0],
            "time_h": [0.0, 6.0, 0.0],
        }
    )
    prop, c1 = _outcome(seed=1, drugs=("acetaminophen", "gabapentin", "morphine", "ondansetron")), _outcome(seed=2)
    return SimpleNamespace(schedule=sched, outcomes={"proposal": prop, "C1": c1}, regimen=prop.regimen)


def test_optimizer_schedule_plot_units_and_legends(saved, tmp_path):
    from regimens.optimize import plot_schedule

    plot_schedule(_proposal(), tmp_path / "schedule.png")
    labels = _check_one(saved, {"time after end of surgery": "h"})
    legend = [t.get_text() for t in saved[0].axes[0].get_legend().get_texts()]
    assert sum("acetaminophen" in s for s in legend) == 1 and sum("gabapentin" in s for s in legend) == 1
    assert len(labels) == 2


def test_optimizer_concentrations_plot_units_and_limits(saved, tmp_path):
    """Drugs of the schedule and of the PRN rules (acetaminophen, gabapentin, morphine; ondansetron is
    simulated but neither scheduled nor PRN: not drawn); gabapentin's toxicity limit drawn and in the
    legend."""
    from regimens.optimize import plot_concentrations

    plot_concentrations(_proposal(), tmp_path / "concentrations.png")
    labels = _check_one(saved, {"time after end of surgery": "h"})
    fig = saved[0]
    assert len(fig.axes) == 3
    assert all(UNIT.search(lab).group(1) in {"h", "mg/L"} for lab in labels)
    texts = {t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()}
    assert any(s.startswith("toxicity limit 25") for s in texts)


def test_optimizer_bands_plot_units_and_legends(saved, tmp_path):
    from regimens.optimize import _plot_proposal_bands

    _plot_proposal_bands(_proposal(), tmp_path / "bands.png")
    _check_one(saved, {"time after end of surgery": "h", "pain NRS": "points", "opioid effect": "dimensionless"})


def test_optimizer_trial_plot_units_and_legends(saved, tmp_path):
    from regimens.optimize import plot_trial

    rng = np.random.default_rng(3)
    n = 5
    pat = pd.DataFrame(
        {
            f"{k}_{r}": (rng.uniform(10, 150, n) if k == "MME_0_72" else rng.uniform(0, 1, n))
            for k in ("MME_0_72", "TIT3")
            for r in ("C0", "C1", "proposal")
        }
    )
    plot_trial(pat, tmp_path / "trial.png")
    _check_one(saved, {"MME": "mg", "NRS <= 3": "%", "regimen": "category"})
    for ax in saved[0].axes:  # one legend entry per kind of mark, not one per regimen
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert sorted(legend) == ["10th-90th percentile", "median", "patients"]
