"""The outcome of a population simulation (:class:`PopulationResult`), the names of its outcome columns, and
:func:`collect`, which builds it from the compiled program's per-chunk outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..drugs import get_drug
from .options import mme_factor
from .protocol import RegimenLike

if TYPE_CHECKING:
    from .plan import RegimenPlan

__all__ = ["OUTCOMES", "PopulationResult", "collect"]


@dataclass
class PopulationResult:
    """Outcome of :func:`simulate_regimen`.

    Attributes
    ----------
    patients
        One row per patient: ``ID``, covariates, and outcomes (``MME_0_24``, ``MME_0_48``, ``MME_0_72`` in
        mg oral morphine equivalents; ``TIT3``/``TIT4`` fraction of 0-72 h with NRS <= 3 / <= 4;
        ``PAIN_AUC`` NRS*h; ``PAIN_EXCESS`` integral of (NRS-3)+ in NRS*h; ``N_PCA``, ``N_PRN`` granted
        doses; ``TIME_NRS_GE4``/``TIME_NRS_GE7`` fraction of 0-72 h with NRS >= 4 (the treat cut-off,
        clinical.md 3.1) / >= 7 (severe pain: the probability that an assessment at a random time finds it);
        ``T_FIRST_RESCUE`` h; ``MIN_VE`` minimum ventilation fraction; ``P_OIRD``; ``MAX_SEDATION``;
        ``P_PONV``; ``PEAK_BUPI`` peak total bupivacaine (plain + liposomal, summed) ng/mL;
        ``PEAK_BUPI_UNBOUND`` = peak total x FU (bupivacaine entry, unverified 0.05) ng/mL; ``LAST_INDEX``
        the larger of peak total / 2,000 ng/mL and peak unbound / 300 ng/mL (CNS thresholds, models.md C);
        >= 1 means a toxicity threshold is crossed); per drug of the regimen ``AUC_<drug>`` (mg*h/L, plasma,
        0 to the horizon, trapezoid on the grid) and ``CMAX_<drug>`` (mg/L, largest grid value).
    times
        Grid times (h), shape (T,).
    nrs, opioid_units, bupi
        Per-patient trajectories (N, T): NRS, opioid normalized units, total bupivacaine (mg/L); None with
        ``SimOptions(record_trajectories=False)``.
    parameters
        Drug name -> DataFrame (one row per patient) of the individual PK parameter values used.
    states, state_index
        With ``SimOptions(record_states=True)``: every state (N, T, n) and drug -> (offset, size).
    concentrations
        With ``SimOptions(record_concentrations=True)``: drug -> plasma concentration (N, T), mg/L.
    nrs_hourly, mme_hourly
        (N, H) per patient and hour after surgery (bins [h, h + 1), h = 0 .. horizon - 1): mean NRS (trapezoid
        over the bin) and MME given (mg oral morphine equivalents; rescue and scheduled opioids). Always kept.
    doses
        Realized dose record (DataFrame: ID, TIME h, DRUG, ROUTE, AMT mg, DUR h (0 = bolus, else a zero-order
        infusion of AMT over DUR), KIND scheduled/prn/pca, NRS_REPORTED: the score the patient reported when a
        rescue dose was given (the PRN rule reads it; NaN for scheduled doses)), or None.
    notes
        Messages about assumptions in force (e.g. modality terms switched off).
    """

    regimen: RegimenLike
    patients: pd.DataFrame
    times: np.ndarray
    nrs: np.ndarray
    opioid_units: np.ndarray
    bupi: np.ndarray
    doses: pd.DataFrame | None
    notes: list[str]
    parameters: dict[str, pd.DataFrame] = field(default_factory=dict)
    states: np.ndarray | None = None
    state_index: dict[str, tuple[int, int]] = field(default_factory=dict)
    concentrations: dict[str, np.ndarray] | None = None
    nrs_hourly: np.ndarray | None = None
    mme_hourly: np.ndarray | None = None

    def summary(self) -> pd.DataFrame:
        """Mean, SD, P10, P50, P90 of the outcome columns."""
        cols = [c for c in OUTCOMES if c in self.patients]
        d = self.patients[cols]
        return pd.DataFrame(
            {"mean": d.mean(), "sd": d.std(), "p10": d.quantile(0.1), "p50": d.median(), "p90": d.quantile(0.9)}
        )


#: The outcome columns of :attr:`PopulationResult.patients` that :meth:`PopulationResult.summary` summarizes.
OUTCOMES = (
    "MME_0_24",
    "MME_0_48",
    "MME_0_72",
    "TIT3",
    "TIT4",
    "TIME_NRS_GE4",
    "TIME_NRS_GE7",
    "PAIN_AUC",
    "PAIN_EXCESS",
    "N_PCA",
    "N_PRN",
    "T_FIRST_RESCUE",
    "MIN_VE",
    "P_OIRD",
    "MAX_SEDATION",
    "P_PONV",
    "PEAK_BUPI",
    "PEAK_BUPI_UNBOUND",
    "LAST_INDEX",
)


def collect(plan: RegimenPlan, outs: list[dict], population: pd.DataFrame) -> PopulationResult:
    """The outcome table from the compiled program's per-patient summaries (and the trajectories, when
    recorded); scheduled-opioid MME is added here from the dose amounts."""
    dt = float(plan.opts.dt_h)
    times = plan.t0 + dt * np.arange(plan.T)
    ae = plan.opts.ae

    def cat(k):
        return np.concatenate([np.asarray(o[k]) for o in outs])

    df = population.reset_index(drop=True).copy()
    # MME: rescue items (summed in the kernel) + scheduled opioids, within [0, window)
    mme = cat("mme_rescue").astype(float)
    mme_h = cat("mme_hourly").astype(float)
    offset = 0
    for o in outs:
        m = len(o["ids"])
        for _, t_e, dname, route, amt, _dur in o["sched"]:
            f = mme_factor(dname, route)
            if f > 0 and t_e >= 0:
                k = int(np.clip(np.ceil((t_e - plan.t0) / dt - 1e-9), 0, plan.T - 1))
                for j, h in enumerate((24, 48, 72)):
                    if times[k] < h - 1e-9:
                        mme[offset : offset + m, j] += f * np.asarray(amt, float)
                hb = int(np.floor(times[k] + 1e-9))
                if hb < mme_h.shape[1]:
                    mme_h[offset : offset + m, hb] += f * np.asarray(amt, float)
        offset += m
    for j, h in enumerate((24, 48, 72)):
        df[f"MME_0_{h}"] = mme[:, j]
    df["TIT3"] = cat("tit3")
    df["TIT4"] = cat("tit4")
    df["TIME_NRS_GE4"] = cat("ge4")
    df["TIME_NRS_GE7"] = cat("ge7")
    df["PAIN_AUC"] = cat("pain_auc")
    df["PAIN_EXCESS"] = cat("pain_excess")
    df["N_PCA"] = cat("n_pca").astype(int)
    df["N_PRN"] = cat("n_prn").astype(int)
    df["T_FIRST_RESCUE"] = cat("t_first")
    df["MIN_VE"] = 1.0 - cat("max_dep")
    cum = cat("oird_cum")
    osa = df["OSA"].to_numpy(float) if "OSA" in df else np.zeros(len(df))
    # P = 1 - exp(-H) in float64 also when the kernel ran in float32 (a float32 1 - exp(-H) would round
    # the ~1e-7 risks of most patients to multiples of 6e-8)
    p = 1.0 - np.exp(-np.asarray(cum, float))
    odds = p / np.maximum(1.0 - p, 1e-300) * np.where(osa > 0, float(ae.osa_or.value), 1.0)
    df["P_OIRD"] = odds / (1.0 + odds)
    df["MAX_SEDATION"] = cat("max_sed")
    m24 = df["MME_0_24"].to_numpy()
    lo = np.log(float(ae.ponv_p_ref.value) / (1 - float(ae.ponv_p_ref.value))) + float(ae.ponv_slope.value) * (
        np.log1p(m24) - np.log1p(float(ae.ponv_mme_ref.value))
    )
    g = df["OPRM1_G"].to_numpy(float) if "OPRM1_G" in df else np.zeros(len(df))
    lo = lo + np.where(g >= 2, np.log(float(ae.oprm1_gg_or.value)), 0.0)
    df["P_PONV"] = 1.0 / (1.0 + np.exp(-lo))
    from ..drugs.local_anesthetics import last_threshold

    peak = cat("peak_bupi")
    fu = float(get_drug("bupivacaine")._param("FU").value)
    df["PEAK_BUPI"] = peak * 1000.0
    df["PEAK_BUPI_UNBOUND"] = peak * fu * 1000.0
    df["LAST_INDEX"] = np.maximum(
        peak / last_threshold("bupivacaine", "total", "CNS").value,
        peak * fu / last_threshold("bupivacaine", "unbound", "CNS").value,
    )
    auc, cmax = cat("auc"), cat("cmax")
    for j, b in enumerate(plan.blocks):
        df[f"AUC_{b.drug.name}"] = auc[:, j]
        df[f"CMAX_{b.drug.name}"] = cmax[:, j]
    traj = "nrs" in outs[0]
    nrs = cat("nrs") if traj else None
    units = cat("uop") if traj else None
    bupi = cat("bupi") if traj else None
    doses = None
    if plan.opts.record_doses and not plan.opts.relaxed and traj:
        doses = _dose_frame(plan, outs, times)
    params = {b.drug.name: pd.concat([o["params"][b.drug.name] for o in outs], ignore_index=True) for b in plan.blocks}
    for v in params.values():
        v.insert(0, "ID", df["ID"].to_numpy())
    states = cat("x") if plan.opts.record_states else None
    index = {b.drug.name: (b.off, b.n) for b in plan.blocks}
    conc = None
    if plan.opts.record_concentrations:
        conc = {b.drug.name: np.concatenate([o["conc"][:, :, j] for o in outs]) for j, b in enumerate(plan.blocks)}
    return PopulationResult(
        plan.regimen,
        df,
        times,
        nrs,
        units,
        bupi,
        doses,
        list(plan.notes),
        params,
        states,
        index,
        conc,
        cat("nrs_hourly").astype(float),
        mme_h,
    )


def _dose_frame(plan: RegimenPlan, outs, times) -> pd.DataFrame:
    parts = []
    for o in outs:
        ids = o["ids"]
        for _, t_e, dname, route, amt, dur in o["sched"]:
            given = np.broadcast_to(np.asarray(amt, float), ids.shape) > 0
            parts.append(
                pd.DataFrame(
                    {
                        "ID": ids,
                        "TIME": t_e,
                        "DRUG": dname,
                        "ROUTE": route,
                        "AMT": amt,
                        "DUR": dur,
                        "KIND": "scheduled",
                    }
                )[given]
            )
        dose, rep = o["dose"], o["rep"]
        for i, it in enumerate(plan.items):
            pi, ki = np.nonzero(dose[:, :, i] > 0)
            if len(pi):
                parts.append(
                    pd.DataFrame(
                        {
                            "ID": ids[pi],
                            "TIME": times[ki],
                            "DRUG": it["drug"],
                            "ROUTE": it["route"],
                            "AMT": dose[pi, ki, i],
                            "DUR": 0.0,
                            "KIND": it["kind"],
                            "NRS_REPORTED": rep[pi, ki, i],
                        }
                    )
                )
    if not parts:
        return pd.DataFrame(columns=["ID", "TIME", "DRUG", "ROUTE", "AMT", "DUR", "KIND", "NRS_REPORTED"])
    return pd.concat(parts, ignore_index=True).sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)
