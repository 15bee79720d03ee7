"""Adversarial patients through the population simulator and the label/CPIC checks.

Extreme weight, age, renal and hepatic function and genotypes must give finite outcomes (no silent NaN) and the
findings a pharmacist would raise (a warning or an error, never silence).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pkpd.patients import Patient, patients_to_frame
from pkpd.population_checks import regimen_findings
from pkpd.regimen_sim import simulate_regimen
from regimens import Regimen, Scheduled, check_regimen, get_regimen

ADVERSARIAL = [
    Patient(age_y=45, sex="female", weight_kg=45, height_cm=150, scr_mg_dl=0.7, id=1),
    Patient(age_y=50, sex="male", weight_kg=140, height_cm=180, scr_mg_dl=1.0, id=2),
    Patient(age_y=90, sex="female", weight_kg=55, height_cm=155, scr_mg_dl=1.1, id=3),
    Patient(age_y=60, sex="male", weight_kg=80, height_cm=175, crcl_ml_min=15, scr_mg_dl=4.5, id=4),
    Patient(age_y=55, sex="male", weight_kg=75, height_cm=178, scr_mg_dl=0.9, hepatic="severe", id=5),
    Patient(age_y=40, sex="female", weight_kg=70, height_cm=165, scr_mg_dl=0.8, opioid_tolerant=True, osa=True,
            genotypes=("CYP2D6 *4/*4", "CYP2C9 *3/*3", "OPRM1 A118G GG"), id=6),
    Patient(age_y=35, sex="male", weight_kg=90, height_cm=185, scr_mg_dl=0.9,
            genotypes=("CYP2D6 *1/*1x2",), id=7),
]


@pytest.fixture(scope="module")
def pop():
    return patients_to_frame(ADVERSARIAL)


def test_c1_outcomes_finite_for_adversarial_patients(pop):
    res = simulate_regimen(get_regimen("C1"), pop, seed=3)
    out = res.patients
    cols = ["MME_0_72", "TIT3", "PAIN_AUC", "MIN_VE", "P_OIRD", "P_PONV", "PEAK_BUPI", "LAST_INDEX"]
    assert np.isfinite(out[cols].to_numpy()).all()
    assert np.isfinite(res.nrs).all() and (res.nrs >= 0).all() and (res.nrs <= 10).all()
    # proper probabilities (0 for a patient who never received an opioid)
    assert ((out.P_OIRD >= 0) & (out.P_OIRD < 1)).all()


def test_c1_findings_for_adversarial_patients(pop):
    f = regimen_findings(get_regimen("C1"), pop)
    by = {(r.drug, r.rule): r for r in f.itertuples()}
    assert ("acetaminophen", "max_single_dose") in by          # 45 kg: 1 g > 15 mg/kg
    assert ("ketorolac", "contraindicated") in by or ("ketorolac", "max_daily_dose") in by   # CrCL 15, age 90
    assert ("acetaminophen", "contraindicated") in by          # severe hepatic impairment
    assert all(s in ("warning", "error") for s in f.severity)


@pytest.mark.parametrize("patient_id, drug, route", [(6, "codeine", "po"), (7, "codeine", "po"),
                                                     (6, "tramadol", "po_er"), (7, "tramadol", "po_er")])
def test_cpic_avoid_for_cyp2d6_poor_and_ultrarapid(pop, patient_id, drug, route):
    row = pop[pop.ID == patient_id].iloc[0]
    cov = {k: float(v) for k, v in row.items() if isinstance(v, (int, float, np.floating, np.integer))}
    phen = {"CYP2D6": row["CYP2D6_PHENO"], "CYP2C9": row["CYP2C9_PHENO"]}
    reg = Regimen(name="x", description="", scheduled=(Scheduled(drug, route, dose_mg=50.0, every_h=12.0),))
    found = check_regimen(reg, cov, phen)
    assert any(x.severity == "error" and x.rule == "cpic" for x in found), found


def test_celecoxib_cap_for_cyp2c9_poor(pop):
    row = pop[pop.ID == 6].iloc[0]
    cov = {k: float(v) for k, v in row.items() if isinstance(v, (int, float, np.floating, np.integer))}
    reg = Regimen(name="x", description="", scheduled=(Scheduled("celecoxib", "po", dose_mg=200.0, every_h=12.0),))
    found = check_regimen(reg, cov, {"CYP2C9": row["CYP2C9_PHENO"]})
    assert any(x.drug == "celecoxib" for x in found), found


# ---- proposals for adversarial patients against an independent label check --------------------------------
#: Label numbers written out here, independently of regimens.limits (the checker the optimizer obeys):
#: acetaminophen <= 1 g per dose, <= 4 g/24 h, < 50 kg: <= 15 mg/kg per dose and 75 mg/kg/24 h, none in severe
#: hepatic impairment (Ofirmev; oral extension); ketorolac IV none at CrCL < 30, <= 15 mg and 60 mg/24 h at
#: >= 65 y, < 50 kg or CrCL < 60, else <= 30 mg and 120 mg/24 h, course <= 48 h and <= 240 mg in fusion (Toradol;
#: Duke meta-analysis); celecoxib none at CrCL < 30 or severe hepatic impairment, CYP2C9 poor <= 50 mg per dose
#: (Celebrex PI 'half the lowest dose'; CPIC), moderate hepatic <= 200 mg/24 h, else <= 400 mg per dose and
#: 600 mg/24 h; gabapentin <= 3600 / 1400 / 700 / 300 mg/24 h by CrCL >= 60 / 30-59 / 15-29 / < 15 (Neurontin
#: table); liposomal bupivacaine <= 266 mg (Exparel).
def _independent_violations(cov, events):
    out = []
    by = {}
    for e in events:
        by.setdefault(e.drug, []).append((e.time_h, e.amount_mg, e.route))
    wt, crcl, hep, age = cov["WT"], cov["CRCL"], cov["HEPATIC"], cov["AGE"]
    pm2c9 = cov["CYP2C9_AS"] <= 0.5

    def day_max(d):
        ts = by.get(d, [])
        return max((sum(a for t, a, _ in ts if s - 1e-9 <= t < s + 24 - 1e-9) for s, _, _ in ts), default=0.0)

    def single_max(d):
        return max((a for _, a, _ in by.get(d, [])), default=0.0)

    if "acetaminophen" in by:
        if hep >= 3:
            out.append("acetaminophen in severe hepatic impairment")
        cap1, capd = (min(1000, 15 * wt), min(4000, 75 * wt)) if wt < 50 else (1000, 4000)
        if single_max("acetaminophen") > cap1 + 1e-6 or day_max("acetaminophen") > capd + 1e-6:
            out.append("acetaminophen dose")
    if "ketorolac" in by:
        if crcl < 30:
            out.append("ketorolac at CrCL < 30")
        low = age >= 65 or wt < 50 or crcl < 60
        if single_max("ketorolac") > (15 if low else 30) + 1e-6 or day_max("ketorolac") > (60 if low else 120) + 1e-6:
            out.append("ketorolac dose")
        ts = [t for t, _, _ in by["ketorolac"]]
        if max(ts) - min(ts) > 48 + 1e-6 or sum(a for _, a, _ in by["ketorolac"]) > 240 + 1e-6:
            out.append("ketorolac fusion course")
    if "celecoxib" in by:
        if crcl < 30 or hep >= 3:
            out.append("celecoxib in severe renal or hepatic impairment")
        if pm2c9 and single_max("celecoxib") > 50 + 1e-6:
            out.append("celecoxib dose for a CYP2C9 poor metabolizer")
        if hep >= 2 and day_max("celecoxib") > 200 + 1e-6:
            out.append("celecoxib in moderate hepatic impairment")
        if single_max("celecoxib") > 400 + 1e-6 or day_max("celecoxib") > 600 + 1e-6:
            out.append("celecoxib dose")
    if "gabapentin" in by:
        cap = 3600 if crcl >= 60 else 1400 if crcl >= 30 else 700 if crcl >= 15 else 300
        if day_max("gabapentin") > cap + 1e-6:
            out.append(f"gabapentin above {cap} mg/24 h at CrCL {crcl:g}")
    if single_max("bupivacaine_liposomal") > 266 + 1e-6:
        out.append("liposomal bupivacaine above 266 mg")
    return out


def test_no_proposal_for_an_adversarial_patient_breaks_a_label_renal_hepatic_or_cpic_rule(pop):
    """Issue acceptance: adversarial patients (45 and 140 kg, age 90, CrCL 15, severe hepatic impairment,
    CYP2C9 *3/*3 with CYP2D6 poor and tolerant + OSA, CYP2D6 ultrarapid) and combinations of them get zero
    proposals that the independent check above flags (4 draws, the optimizer's fast test settings)."""
    from regimens.optimize import OptimizeSettings, optimize_population

    combos = pop.iloc[[3, 4, 5]].copy()
    combos["ID"] = [11, 12, 13]
    combos["HEPATIC"] = [3.0, 2.0, 3.0]              # CrCL 15 + severe hepatic; severe hepatic + moderate; ...
    combos["CRCL"] = [15.0, 25.0, 20.0]
    combos["CYP2C9_AS"] = [0.0, 2.0, 0.0]
    combos["AGE"] = [90.0, 70.0, 60.0]
    allp = pd.concat([pop, combos], ignore_index=True)
    res = optimize_population(allp, OptimizeSettings(draws=4, steps=5))
    bad = {}
    for p in range(len(allp)):
        cov = {k: float(v) for k, v in allp.iloc[p].items() if isinstance(v, (int, float, np.floating, np.integer))}
        reg = res.spaces[p].regimen(res.amounts[p], rescue=res.policies[p].rules)
        ev = [e for e in reg.dose_events(cov) if e.kind == "scheduled"]
        v = _independent_violations(cov, ev)
        if v:
            bad[int(allp.ID.iloc[p])] = v
    assert not bad, bad
