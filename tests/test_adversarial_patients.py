"""Adversarial patients through the population simulator and the label/CPIC checks.

Extreme weight, age, renal and hepatic function and genotypes must give finite outcomes (no silent NaN) and the
findings a pharmacist would raise (a warning or an error, never silence).
"""

from __future__ import annotations

import numpy as np
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
