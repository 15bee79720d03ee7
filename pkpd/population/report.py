"""Files and figures for population regimen simulations (used by ``pkpd simulate --regimen``).

:func:`write_population_outputs` writes, into one directory:

* ``patients.csv`` (or ``.parquet``): one row per patient, covariates and outcomes
  (see :class:`pkpd.population.PopulationResult`);
* ``summary.csv``: mean, SD, P10, P50, P90 of each outcome;
* ``doses.csv``: every realized dose (scheduled, PRN, PCA) with time (h after surgery) and amount (mg);
* ``findings.csv``: label-limit and CPIC findings, counted over patients;
* ``bands.png``: median and 10-90 % bands of pain (NRS) and of opioid effect (normalized units) and total
  bupivacaine plasma concentration (ng/mL, with the 2,000 ng/mL CNS threshold) over time;
* ``mme.png``: distribution of the 72-h MME;
* ``regimen.txt``: the regimen simulated, in its text form (:meth:`regimens.Regimen.to_text`; ``pkpd
  simulate --regimen regimen.txt`` reads it back), shown by ``pkpd report``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..plotting import new_figure, quantile_band

__all__ = ["plot_bands", "plot_mme", "population_headline", "write_population_outputs"]


def plot_bands(result, path: Path, title: str = "") -> None:
    """PNG of pain, opioid effect and bupivacaine concentration bands over time (h after surgery)."""
    t = result.times
    post = t >= 0
    panels = 3 if np.any(result.bupi > 0) else 2
    fig = new_figure(9, 2.8 * panels)
    axs = fig.subplots(panels, 1, sharex=True)
    quantile_band(axs[0], t[post], result.nrs[:, post], "NRS", "tab:red")
    axs[0].axhline(3, color="k", linestyle=":", linewidth=1, label="target NRS <= 3")
    axs[0].set_ylabel("pain NRS, 0-10 scale\n(points)")
    axs[0].set_ylim(0, 10)
    axs[0].legend(fontsize="small", loc="upper right")
    quantile_band(axs[1], t, result.opioid_units, "opioid", "tab:blue")
    axs[1].set_ylabel("opioid effect,\nCe / EC50 summed\n(dimensionless)")
    axs[1].legend(fontsize="small", loc="upper right")
    if panels == 3:
        quantile_band(axs[2], t, np.maximum(result.bupi * 1000.0, 1e-3), "bupivacaine", "tab:green")
        axs[2].axhline(2000, color="k", linestyle="--", linewidth=1, label="CNS toxicity 2,000 ng/mL")
        axs[2].set_ylabel("total bupivacaine\n(ng/mL)")
        axs[2].set_yscale("log")
        axs[2].set_ylim(1.0, 1e4)
        axs[2].legend(fontsize="small", loc="upper right")
    for ax in axs:
        ax.set_xlabel("time after end of surgery (h)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title or f"{result.regimen.name}: {len(result.patients)} patients")
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_mme(result, path: Path, title: str = "") -> None:
    """PNG histogram of the 72-h MME with mean and P90 marked."""
    m = result.patients["MME_0_72"].to_numpy(float)
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    ax.hist(m, bins=40, color="tab:purple", alpha=0.7, label="patients per bin")
    ax.axvline(m.mean(), color="k", linewidth=1.5, label=f"mean {m.mean():.0f} mg")
    ax.axvline(np.quantile(m, 0.9), color="k", linestyle="--", linewidth=1, label=f"P90 {np.quantile(m, 0.9):.0f} mg")
    ax.set_xlabel("72-h oral morphine milligram equivalents (mg)")
    ax.set_ylabel("patients (count)")
    ax.legend()
    ax.set_title(title or f"{result.regimen.name}: 72-h MME")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_population_outputs(
    result, out_dir: Path, *, findings: pd.DataFrame | None = None, fmt: str = "csv"
) -> list[Path]:
    """Write the tables and figures listed in the module docstring; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    pat = out_dir / f"patients.{fmt}"
    if fmt == "parquet":
        result.patients.to_parquet(pat, index=False)
    else:
        result.patients.to_csv(pat, index=False)
    written.append(pat)
    p = out_dir / "summary.csv"
    result.summary().to_csv(p, index_label="outcome")
    written.append(p)
    if result.doses is not None:
        p = out_dir / "doses.csv"
        result.doses.to_csv(p, index=False)
        written.append(p)
    if findings is not None:
        p = out_dir / "findings.csv"
        findings.to_csv(p, index=False)
        written.append(p)
    p = out_dir / "bands.png"
    plot_bands(result, p)
    written.append(p)
    p = out_dir / "mme.png"
    plot_mme(result, p)
    written.append(p)
    to_text = getattr(getattr(result, "regimen", None), "to_text", None)
    if to_text is not None:
        p = out_dir / "regimen.txt"
        p.write_text(to_text(), encoding="utf-8")
        written.append(p)
    return written


def population_headline(result) -> str:
    """One line of a population simulation's outcomes, as ``pkpd simulate --regimen`` prints it: mean (and
    P90) 72-h MME in mg, mean share of time with NRS <= 3 in %, mean pain AUC in NRS*h, mean (and largest)
    peak bupivacaine concentration in ng/mL."""
    s = result.summary()
    return (
        f"72-h MME mean {s.loc['MME_0_72', 'mean']:.0f} (P90 {s.loc['MME_0_72', 'p90']:.0f}) mg; time with NRS <= 3 "
        f"{100 * s.loc['TIT3', 'mean']:.0f} %; pain AUC {s.loc['PAIN_AUC', 'mean']:.0f} NRS*h; peak bupivacaine "
        f"{s.loc['PEAK_BUPI', 'mean']:.0f} ng/mL (max {result.patients['PEAK_BUPI'].max():.0f})"
    )
