"""Per-patient PD, pain and rescue-demand inputs of the kernel, with the calibrated outcome-model values (the
population's ``outcome.<name>`` columns replace them per row)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import ModelSpecError
from ..outcome import check_values, outcome_posterior
from ..pd import OPIOID_EC50_SCALE
from .draws import _draws

if TYPE_CHECKING:
    from .plan import RegimenPlan


def outcome_defaults(plan: RegimenPlan) -> dict[str, float]:
    """The outcome-model values of these options (every :data:`pkpd.outcome.OUTCOME_PARAMETERS` name): the
    pain and demand models', the PD library's class ceilings and the combination's adjunct exponent."""
    o = plan.opts
    pain, dem = o.pain, o.demand
    out = {
        "opioid_ec50_scale": float(OPIOID_EC50_SCALE.value),
        "b0": float(pain.b0.value),
        "b_inf": float(pain.b_inf.value),
        "t_half": float(pain.t_half.value),
        "tol_ec50_factor": float(pain.tolerant_ec50_factor.value),
        "tol_b0_shift": float(pain.tolerant_b0_shift.value),
        "sensitivity_sd": float(pain.sensitivity_sd.value),
        "lambda_pca": float(dem.pca_lambda_max.value),
        "lambda_prn_iv": float(dem.prn_iv_lambda_max.value),
        "lambda_prn_po": float(dem.prn_lambda_max.value),
        "n50": float(dem.n50.value),
        "demand_iiv": float(dem.iiv_sd.value),
        "report_sd": float(dem.report_sd.value),
        "opioid_half": float(dem.opioid_half.value),
        "emax_ketamine_tolerant": float(pain.tolerant_ketamine_emax.value),
        "adjunct_exponent": float(
            o.adjunct_exponent if o.adjunct_exponent is not None else outcome_posterior().point()["adjunct_exponent"]
        ),
    }
    from ..pd import PD_LIBRARY

    for d, pdv in PD_LIBRARY.items():
        if pdv.kind != "opioid":
            out.setdefault(f"emax_{pdv.effect_class}", float(pdv.emax.value))
    return out


def outcome_rows(plan: RegimenPlan, sub: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-row outcome-model values: :meth:`outcome_defaults`, replaced where a row carries a finite
    ``outcome.<name>`` column. Raises :class:`ModelSpecError` for values outside their bounds."""
    n_pat = len(sub)
    out = {}
    for k, v in outcome_defaults(plan).items():
        arr = np.full(n_pat, float(v))
        col = f"outcome.{k}"
        if col in sub:
            given = sub[col].to_numpy(float)
            arr = np.where(np.isfinite(given), given, arr)
        out[k] = arr
    check_values(out)
    return out


def pd_arrays(plan: RegimenPlan, sub: pd.DataFrame, seed: int) -> dict:
    """Per-patient PD and pain/demand inputs of the kernel: EC50/Emax/respiratory EC50 per drug block, the pain
    model's baseline, half-life and sensitivity, the rescue hazards of every item and the outcome-model values
    (:func:`outcome_rows`), with each row's given ``pain.*``/``rescue.*`` columns in force."""
    n_pat = len(sub)
    pain = plan.opts.pain
    th_ = outcome_rows(plan, sub)
    tol = sub["OPIOID_TOL"].to_numpy(float) if "OPIOID_TOL" in sub else np.zeros(n_pat)
    g = sub["OPRM1_G"].to_numpy(float) if "OPRM1_G" in sub else np.zeros(n_pat)
    nb = len(plan.blocks)
    ov = plan.opts.pd_overrides or {}
    emax = np.zeros((n_pat, nb))
    ec50 = np.zeros((n_pat, nb))
    resp = np.full((n_pat, nb), np.inf)
    # the library's opioid EC50s hold the default scale; a row's own scale replaces it
    scale = th_["opioid_ec50_scale"] / float(OPIOID_EC50_SCALE.value) * float(plan.opts.opioid_ec50_scale)
    tol_f = np.where(tol > 0, th_["tol_ec50_factor"], 1.0)
    for j, b in enumerate(plan.blocks):
        # one stream per drug: a patient's EC50 of a drug does not depend on which other drugs the
        # regimen holds (common random numbers between regimens with different drug sets)
        zj = _draws(sub, seed, "pd:" + b.drug.name, 1)[:, 0] if plan.opts.iiv else np.zeros(n_pat)
        sd = float(b.pd.ec50_iiv_sd.value) if b.pd.ec50_iiv_sd is not None else 0.0
        o = ov.get(b.drug.name, {})
        unknown = set(o) - {"ec50", "emax"}
        if unknown:
            raise ModelSpecError(f"pd_overrides for {b.drug.name}: unknown keys {sorted(unknown)}")
        base = float(o.get("ec50", b.pd.ec50.value)) * np.exp(sd * zj)
        if b.pd.kind == "opioid":
            emax[:, j] = 1.0
            ec50[:, j] = base * scale * tol_f * float(pain.oprm1_ec50_factor.value) ** g
            resp[:, j] = float(b.pd.resp_ec50.value) * scale * tol_f
        else:
            cls = b.pd.effect_class
            e = np.full(n_pat, float(o["emax"])) if "emax" in o else th_[f"emax_{cls}"].copy()
            if cls == "ketamine":  # anti-hyperalgesia: a larger ceiling in opioid-tolerant patients
                e = e + tol * th_["emax_ketamine_tolerant"]
            emax[:, j] = np.clip(e, 0.0, 0.99)
            ec50[:, j] = base
    zp = _draws(sub, seed, "pain", 3) if plan.opts.iiv else np.zeros((n_pat, 3))
    b0 = th_["b0"] + float(pain.b0_sd.value) * zp[:, 0] + tol * th_["tol_b0_shift"]
    cv = float(pain.t_half_cv.value)
    th = th_["t_half"] * np.exp(np.sqrt(np.log1p(cv * cv)) * zp[:, 1])
    # the setting's heterogeneity: a multiplier of the between-patient SDs of pain sensitivity and rescue
    # propensity (the pain model's, or a row's own pain.spread)
    spread = _row_multiplier(
        sub, "pain.spread", float(pain.setting_spread.value), "a multiplier of the between-patient SDs"
    )
    sens = np.exp(th_["sensitivity_sd"] * spread * zp[:, 2])
    # the setting's pain-curve multiplier (a trial's surgery and institution): the pain model's (the
    # calibration's reference setting), or a row's own pain.scale
    sens = sens * _row_multiplier(sub, "pain.scale", float(pain.setting_scale.value), "a multiplier of the pain curve")
    # a patient's own pain-model values (posterior draws), where given
    for col, val in (("pain.b0", "b0"), ("pain.t_half", "th"), ("pain.sensitivity", "sens")):
        if col in sub:
            given = sub[col].to_numpy(float)
            if val == "b0":
                b0 = np.where(np.isfinite(given), given, b0)
            elif val == "th":
                th = np.where(np.isfinite(given), given, th)
            else:
                sens = np.where(np.isfinite(given), given, sens)
    if pain.enable_assumed_modalities:
        if "OPEN_SURGERY" in sub:
            b0 = np.where(sub["OPEN_SURGERY"].to_numpy(float) > 0, b0, b0 * float(pain.mis_b0_factor.value))
        if any(m.kind == "psych_education" and m.enabled for m in plan.regimen.modalities):
            sens = sens * float(pain.education_sensitivity_factor.value)
    # rescue propensity: one log-normal draw per patient (stream "demand"), shared by every rescue kind
    zd = _draws(sub, seed, "demand", 1)[:, 0] if plan.opts.iiv else np.zeros(n_pat)
    # times the setting's rescue propensity (the calibration's reference setting: DemandModel.setting_propensity,
    # or a row's own rescue.propensity)
    prop = np.exp(th_["demand_iiv"] * spread * zd) * _row_multiplier(
        sub,
        "rescue.propensity",
        float(plan.opts.demand.setting_propensity.value),
        "a multiplier of every rescue-request hazard",
    )
    lam = np.stack([th_[_demand_key(it)] for it in plan.items] or [np.zeros(n_pat)], axis=1) * prop[:, None]
    if not plan.items:
        lam = np.zeros((n_pat, 1))
    return dict(
        ec50=ec50,
        emax=emax,
        lam=lam,
        resp=resp,
        b0=np.clip(b0, 0.0, 10.0),
        th=th,
        sens=sens,
        b_inf=th_["b_inf"],
        n50=th_["n50"],
        rsd=th_["report_sd"],
        uhalf=th_["opioid_half"],
        kappa=th_["adjunct_exponent"],
        osa=(sub["OSA"].to_numpy(float) if "OSA" in sub else np.zeros(n_pat)),
    )


def _row_multiplier(sub: pd.DataFrame, column: str, default: float, meaning: str) -> np.ndarray:
    """Per-row multiplier: the population column ``column`` where given (finite), else ``default``.

    Raises
    ------
    ModelSpecError
        A given value is not > 0.
    """
    out = np.full(len(sub), default)
    if column in sub:
        given = sub[column].to_numpy(float)
        if np.any(np.isfinite(given) & (given <= 0)):
            raise ModelSpecError(f"population column {column} must be > 0 ({meaning})")
        out = np.where(np.isfinite(given), given, out)
    return out


def _demand_key(item: Mapping) -> str:
    """The outcome-model hazard of a rescue item: PCA, nurse-given IV PRN, or oral (or other-route) PRN."""
    if item["kind"] == "pca":
        return "lambda_pca"
    return "lambda_prn_iv" if item["route"] == "iv" else "lambda_prn_po"
