"""Plots of a population fit (pkpd.fit.diagnostics, issue 25): every axis has a label with its unit, every
drawn line, band and point set has a legend entry; the LOWESS smoother against closed forms; the VPC
table's prediction correction and BLQ counts by hand.

Synthetic frames only (no fit, no MCMC): the whole module runs in a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from plot_checks import check_figure

from pkpd.fit import diagnostics as dg

# ---------------------------------------------------------------------------------------------------
# synthetic frames


def _predictions(n_id=8, times=(0.5, 1, 2, 4, 8, 12, 24), types=("conc",), lloq=0.5, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for ti, name in enumerate(types):
        for i in range(1, n_id + 1):
            cl = math.exp(rng.normal(0, 0.3))
            for t in times:
                pred = 10 * math.exp(-0.15 * t) * (1 + ti)
                ipred = pred / cl
                dv = ipred * math.exp(rng.normal(0, 0.15))
                blq = int(dv < lloq)
                rows.append(
                    {
                        "ROW": len(rows) + 1,
                        "ID": i,
                        "TIME": float(t),
                        "DVID": ti + 1,
                        "TYPE": name,
                        "DV": dv,
                        "BLQ": blq,
                        "LLOQ": lloq,
                        "PRED": pred,
                        "IPRED": ipred,
                        "IWRES": np.nan if blq else rng.normal(),
                        "CWRES": np.nan if blq else rng.normal(),
                        "NPDE": np.nan if blq else rng.normal(),
                    }
                )
    return pd.DataFrame(rows)


def _vpc_inputs(pred: pd.DataFrame, n_rep=40, seed=1):
    rng = np.random.default_rng(seed)
    pr = pred["PRED"].to_numpy(float)
    sims = pr[None, :] * np.exp(rng.normal(0, 0.35, (n_rep, len(pr))))
    types = pd.factorize(pred["TYPE"])[0]
    names = list(dict.fromkeys(pred["TYPE"]))
    blq = pred["BLQ"].to_numpy(bool)
    return dict(
        time=pred["TIME"].to_numpy(float),
        dv=pred["DV"].to_numpy(float),
        sims=sims,
        types=types,
        valid=~blq,
        type_names=names,
    ), blq


def _individual(n=30, seed=2):
    rng = np.random.default_rng(seed)
    return (
        pd.DataFrame({"ID": np.arange(1, n + 1), "eta(CL)": rng.normal(0, 0.3, n), "eta(V)": rng.normal(0, 0.2, n)}),
        pd.DataFrame({"ID": np.arange(1, n + 1), "WT": rng.uniform(50, 100, n), "SEX": rng.integers(0, 2, n)}),
    )


# ---------------------------------------------------------------------------------------------------
# label and legend checks


class _Keep:
    """Collects the figures the plot functions make (dg.new_figure replaced)."""

    def __init__(self, monkeypatch):
        self.figs = []
        real = dg.new_figure

        def keep(w, h):
            self.figs.append(real(w, h))
            return self.figs[-1]

        monkeypatch.setattr(dg, "new_figure", keep)

    def last(self):
        return self.figs[-1]


# ---------------------------------------------------------------------------------------------------
# every plot function


def test_gof_residuals_qq_iwres_units_and_legends(monkeypatch, tmp_path):
    """GOF (linear and log axes, two observation types with their own units), residuals, QQ and |IWRES|
    vs IPRED: concentrations labelled in mg/L, effects in %, time in min, residuals dimensionless; a
    LOWESS smooth in each GOF and residual panel."""
    keep = _Keep(monkeypatch)
    pred = _predictions(types=("conc", "effect"))
    units = {"conc": "mg/L", "effect": "%"}
    for log_axes in (False, True):
        dg.plot_gof(pred, tmp_path / "gof.png", log_axes=log_axes, units=units)
        labs = check_figure(keep.last(), {"of conc": "mg/L", "observed conc": "mg/L", "observed effect": "%"})
        assert "observed conc, DV (mg/L)" in labs and "PRED, population prediction of effect (%)" in labs
        smooths = [ln for ax in keep.last().axes for ln in ax.lines if ln.get_label().startswith("LOWESS")]
        assert len(smooths) == 4
    dg.plot_residuals(pred[pred["TYPE"] == "conc"], tmp_path / "res.png", time_unit="min", units=units)
    labs = check_figure(keep.last())
    assert "TIME (min)" in labs and "CWRES (dimensionless)" in labs and "PRED, population prediction (mg/L)" in labs
    assert sum(ln.get_label().startswith("LOWESS") for ax in keep.last().axes for ln in ax.lines) == 4
    dg.plot_residuals(pred, tmp_path / "res2.png", units=units)  # two units on one PRED axis: both named
    assert "PRED, population prediction (conc: mg/L; effect: %)" in check_figure(keep.last())
    dg.plot_qq(pred, tmp_path / "qq.png")
    check_figure(keep.last())
    dg.plot_abs_iwres(pred, tmp_path / "iwres.png", units=units)
    labs = check_figure(keep.last())
    assert "IPRED, individual prediction of conc (mg/L)" in labs and "|IWRES| (dimensionless)" in labs
    for name in ("gof.png", "res.png", "qq.png", "iwres.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_vpc_and_pcvpc_with_strata_and_blq_units_and_legends(monkeypatch, tmp_path):
    """VPC and pcVPC with BLQ records and two strata: every percentile line and band (the 95th included)
    has a legend entry, the BLQ panel is labelled in %, DV axes in mg/L."""
    keep = _Keep(monkeypatch)
    pred = _predictions(n_id=12)
    assert pred["BLQ"].sum() > 5
    kw, blq = _vpc_inputs(pred)
    strata = np.where(pred["ID"] % 2 == 0, "even", "odd")
    tab, pts = dg.vpc_table(**kw, n_bins=5, blq=blq, lloq=pred["LLOQ"].to_numpy(float), return_points=True)
    dg.plot_vpc(tab, pts, tmp_path / "vpc.png", n_rep=40, time_unit="h", units={"conc": "mg/L"})
    labs = check_figure(keep.last(), {"conc": "mg/L"})
    assert "records below LLOQ (%)" in labs and "conc (mg/L)" in labs
    legend = {t.get_text() for ax in keep.last().axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert {
        "observed 95th percentile",
        "simulated 95th percentile, 90 % interval",
        "observed % BLQ",
        "BLQ records (at LLOQ)",
    } <= legend
    tab, pts = dg.vpc_table(
        **kw,
        n_bins=5,
        blq=blq,
        lloq=pred["LLOQ"].to_numpy(float),
        return_points=True,
        pred=pred["PRED"].to_numpy(float),
        strata=strata,
    )
    dg.plot_vpc(tab, pts, tmp_path / "pcvpc.png", n_rep=40, units={"conc": "mg/L"}, pc=True, log_y=True)
    labs = check_figure(keep.last(), {"conc": "mg/L"})
    assert "prediction-corrected conc (mg/L)" in labs
    assert len([ax for ax in keep.last().axes if ax.get_visible()]) == 4  # 2 strata x (VPC, % BLQ)
    # without BLQ information: the old one-column layout, still labelled
    dg.plot_vpc(dg.vpc_table(**kw, n_bins=5), pred, tmp_path / "vpc0.png", units={"conc": "mg/L"})
    check_figure(keep.last(), {"conc": "mg/L"})


def test_individual_eta_and_sampler_plots_units_and_legends(monkeypatch, tmp_path):
    """Individual fits on a dense grid, ETA distributions (additive eta in the parameter's unit), ETA
    pairs, ETA vs a continuous and a categorical covariate, ArviZ trace and rank plots."""
    keep = _Keep(monkeypatch)
    pred = _predictions(n_id=5)
    g = pred.groupby("ID")["TIME"].agg(["min", "max"])
    grid = pd.concat(
        [
            pd.DataFrame(
                {
                    "ID": i,
                    "TIME": np.linspace(r["min"], r["max"], 40),
                    "type": 0,
                    "PRED": 10 * np.exp(-0.15 * np.linspace(r["min"], r["max"], 40)),
                    "IPRED": 9 * np.exp(-0.15 * np.linspace(r["min"], r["max"], 40)),
                }
            )
            for i, r in g.iterrows()
        ]
    )
    dg.plot_individual(pred, grid, tmp_path / "ind.png", type_name="conc", type_index=0, unit="mg/L")
    labs = check_figure(keep.last(), {"conc": "mg/L"})
    assert "conc (mg/L)" in labs and "TIME (h)" in labs
    legend = {t.get_text() for lg in keep.last().legends for t in lg.get_texts()}
    assert "BLQ (at LLOQ)" in legend and "IPRED, individual prediction (dense grid)" in legend
    ind, cov = _individual()
    eta_units = {"eta(V)": "L"}
    dg.plot_eta_distributions(
        ind, tmp_path / "eta.png", labels=["eta(CL)", "eta(V)"], omega_var=[0.09, 0.04], eta_units=eta_units
    )
    labs = check_figure(keep.last())
    assert "eta(V) (L)" in labs and "probability density (per L)" in labs and "eta(CL) (dimensionless)" in labs
    dens = [ln for ax in keep.last().axes for ln in ax.lines if ln.get_label().startswith("N(0")]
    assert len(dens) == 2  # the model density: N(0, omega^2), peak 1 / (omega sqrt(2 pi))
    assert np.max(dens[0].get_ydata()) == pytest.approx(1 / (0.3 * math.sqrt(2 * math.pi)), rel=1e-3)
    dg.plot_eta_pairs(ind, tmp_path / "pairs.png", labels=["eta(CL)", "eta(V)"], eta_units=eta_units)
    check_figure(keep.last())
    dg.plot_eta_covariates(
        ind,
        cov,
        tmp_path / "etacov.png",
        labels=["eta(CL)", "eta(V)"],
        categorical=["SEX"],
        covariate_units={"WT": "kg"},
        eta_units=eta_units,
    )
    labs = check_figure(keep.last())
    assert "WT (kg)" in labs and "SEX (category)" in labs
    legend = {t.get_text() for ax in keep.last().axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert {"median", "box: 25th-75th percentile", "LOWESS"} <= legend
    rng = np.random.default_rng(3)
    draws = {"CL": np.exp(rng.normal(1, 0.1, (2, 80))), "omega(CL)": rng.gamma(5, 0.02, (2, 80))}
    dg.plot_trace(draws, tmp_path / "trace.png", units={"CL": "L/h"})
    labs = check_figure(keep.last())
    assert "CL (L/h)" in labs and "draw (sampling iteration)" in labs
    legend = {t.get_text() for ax in keep.last().axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert {"chain 1", "chain 2"} <= legend
    dg.plot_rank(draws, tmp_path / "rank.png")
    check_figure(keep.last())
    for name in ("ind.png", "eta.png", "pairs.png", "etacov.png", "trace.png", "rank.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------------
# LOWESS


def test_lowess_reproduces_a_straight_line_exactly():
    """A local-linear fit of a line is the line (any span, with and without robustness iterations, at
    the data points, between them, and with interpolated fits when there are many distinct x)."""
    rng = np.random.default_rng(0)
    for n, frac in ((12, 0.5), (200, 0.2), (3000, 2 / 3)):
        x = np.sort(rng.uniform(-3, 5, n))
        y = 1.5 - 0.7 * x
        for it in (0, 3):
            np.testing.assert_allclose(dg.lowess(x, y, frac=frac, iterations=it), y, atol=1e-10)
        xe = np.linspace(-3, 5, 33)
        xe = xe[(xe >= x.min()) & (xe <= x.max())]
        np.testing.assert_allclose(dg.lowess(x, y, frac=frac, x_eval=xe), 1.5 - 0.7 * xe, atol=1e-10)


def test_lowess_quadratic_closed_form():
    """y = x^2 on an evenly spaced grid, no robustness iterations: at an interior point x0 with a
    symmetric neighbourhood the local-linear fit is x0^2 + sum(w u^2) / sum(w) (u = x - x0, tricube
    weights w over the k = ceil(frac n) nearest points, bandwidth h = distance to the k-th): exact to
    1e-12. Everywhere (boundary included) the error is at most h^2."""
    x = np.linspace(-1, 1, 101)
    y = x**2
    frac = 0.2
    got = dg.lowess(x, y, frac=frac, iterations=0)
    k = math.ceil(frac * x.size)
    for i in range(15, 86):
        u = x - x[i]
        h = np.sort(np.abs(u))[k - 1]
        w = np.where(np.abs(u) < h, (1 - (np.abs(u) / h) ** 3) ** 3, 0.0)
        assert got[i] == pytest.approx(x[i] ** 2 + np.sum(w * u * u) / np.sum(w), abs=1e-12)
    h_max = max(np.sort(np.abs(x - x0))[k - 1] for x0 in x)
    assert np.max(np.abs(got - y)) <= h_max**2


def test_lowess_robustness_ignores_outliers():
    """Bisquare robustness iterations: a line with 3 gross outliers is recovered exactly (the outliers get
    weight 0), while the non-robust fit is pulled away; noise around a sine is smoothed within 0.1."""
    x = np.linspace(0, 10, 101)
    y = 2 + 0.5 * x
    yo = y.copy()
    yo[[20, 50, 80]] += (30, -25, 40)
    assert np.max(np.abs(dg.lowess(x, yo, frac=0.3, iterations=0) - y)) > 1
    np.testing.assert_allclose(dg.lowess(x, yo, frac=0.3, iterations=3), y, atol=1e-9)
    rng = np.random.default_rng(1)
    xs = np.linspace(0, 2 * np.pi, 400)
    ys = np.sin(xs) + rng.normal(0, 0.1, xs.size)
    inner = (xs > 0.5) & (xs < 2 * np.pi - 0.5)
    assert np.max(np.abs(dg.lowess(xs, ys, frac=0.1)[inner] - np.sin(xs[inner]))) < 0.1


def test_lowess_degenerate_inputs():
    """Fewer than 3 finite points: NaN; non-finite pairs ignored; constant x: the mean."""
    assert np.isnan(dg.lowess([1.0, 2.0], [1.0, 2.0])).all()
    x = np.array([0, 1, 2, np.nan, 3, 4.0])
    y = np.array([0, 1, 2, 5, np.inf, 4.0])
    np.testing.assert_allclose(dg.lowess(x, y, x_eval=[0.0, 4.0]), [0.0, 4.0], atol=1e-10)
    np.testing.assert_allclose(dg.lowess(np.ones(6), np.arange(6.0), iterations=0), 2.5)


# ---------------------------------------------------------------------------------------------------
# QQ and VPC numbers


def test_qq_positions_and_band():
    """Blom plotting positions; the band holds the i-th N(0, 1) order statistic with probability 95 %
    (Beta(i, n - i + 1) of the uniform order statistic): checked by simulation within 2 %."""
    theo, v, lo, hi = dg.qq_normal(np.array([3.0, np.nan, 1.0, 2.0]))
    np.testing.assert_allclose(v, [1, 2, 3])
    np.testing.assert_allclose(theo, scipy.stats.norm.ppf((np.arange(1, 4) - 0.375) / 3.25))
    rng = np.random.default_rng(0)
    z = np.sort(rng.normal(size=(4000, 20)), axis=1)
    _, _, lo, hi = dg.qq_normal(np.zeros(20))
    cover = np.mean((z >= lo) & (z <= hi), axis=0)
    np.testing.assert_allclose(cover, 0.95, atol=0.02)


def test_pcvpc_correction_and_blq_fractions_by_hand():
    """pcY = Y PRED_bin / PRED (Bergstrand 2011) in each bin, PRED_bin the bin's median PRED: with DV =
    c PRED the corrected values of a bin are all c PRED_bin; BLQ records are counted (observed % BLQ =
    share of the bin's records) and simulated values below the LLOQ give the simulated % BLQ; an observed
    percentile below the share of BLQ records is NaN (censored)."""
    time = np.array([1.0, 1, 1, 1, 2, 2, 2, 2])
    pred = np.array([1.0, 2, 4, 8, 1, 1, 2, 2])
    dv = 3 * pred
    blq = np.array([0, 0, 0, 0, 1, 0, 0, 0], bool)
    lloq = np.full(8, 2.5)
    dv[4] = np.nan
    sims = np.vstack([pred * 0.1, pred * 10.0])  # replicate 1: all below LLOQ except none; 2: none
    tab, pts = dg.vpc_table(
        time, dv, sims, np.zeros(8, int), ~blq, ["conc"], n_bins=2, pred=pred, blq=blq, lloq=lloq, return_points=True
    )
    b1 = tab.iloc[0]
    assert b1["pred_median"] == pytest.approx(3.0)  # median of 1, 2, 4, 8
    np.testing.assert_allclose(pts.loc[pts["BIN"] == 1, "DV"], 9.0)  # 3 * PRED_bin
    assert b1["obs_p50"] == pytest.approx(9.0) and b1["obs_blq_pct"] == 0.0
    b2 = tab.iloc[1]
    assert b2["n"] == 4 and b2["n_blq"] == 1 and b2["obs_blq_pct"] == pytest.approx(25.0)
    assert np.isnan(b2["obs_p5"]) and np.isfinite(b2["obs_p50"])  # 5 % <= 25 % BLQ: censored
    # simulated % BLQ (LLOQ 2.5 corrected by PRED_bin / PRED; censoring is the same before correction):
    # replicate 1 (0.1 PRED) 100 %, replicate 2 (10 PRED) 0 %
    assert b2["sim_blq_pct_low"] == pytest.approx(5.0) and b2["sim_blq_pct_high"] == pytest.approx(95.0)
    # without pred and blq: the old table (BLQ records left out)
    old = dg.vpc_table(time, dv, sims, np.zeros(8, int), ~blq, ["conc"], n_bins=2)
    assert "obs_blq_pct" not in old and old["n"].tolist() == [7]  # one bin: the times of the 7 records
