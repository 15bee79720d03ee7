"""Comparators adapted to a patient's limits (regimens.adapt), a proposal reported as worse than its
comparator, and explanations that quote the caps actually applied.

Independent references: the label numbers themselves (Neurontin renal dosing table: CrCL 15-29 mL/min at most
700 mg/day; Toradol: contraindicated in advanced renal impairment; acetaminophen: contraindicated in severe
hepatic impairment; the opioid labels' reduced starting doses, written out here: DILAUDID hydromorphone 25 % in
severe renal (CrCL < 30) or moderate/severe hepatic impairment, 50 % at CrCL 30 to < 60; ROXICODONE oxycodone IR
1/3 in hepatic impairment, no number in renal impairment), checked on the adapted doses directly (a rolling 24-h
sum computed here), not through the checker that made the adaptation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from regimens import check_regimen
from regimens.adapt import adapt_to_patient, rescue_tables
from regimens.io import get_regimen
from regimens.optimize import DecisionSpace, OptimizeSettings, _choices_explained, worse_than

SEVERE = {
    "AGE": 60.0,
    "MALE": 1.0,
    "WT": 80.0,
    "HT": 175.0,
    "LBM": 60.0,
    "FFM": 60.0,
    "IBW": 70.0,
    "SCR": 2.5,
    "CRCL": 25.0,
    "HEPATIC": 3.0,
    "OPIOID_TOL": 0.0,
    "OSA": 0.0,
    "OPEN_SURGERY": 1.0,
    "CYP2D6_AS": 2.0,
    "CYP2D6_10_10": 0.0,
    "CYP2C9_AS": 2.0,
    "OPRM1_G": 0.0,
}


def _rolling_max(times, amounts, width=24.0):
    t, a = np.asarray(times, float), np.asarray(amounts, float)
    return max(a[(t >= s - 1e-9) & (t < s + width - 1e-9)].sum() for s in t)


def test_c1_adapted_to_severe_hepatic_and_crcl_25():
    ad = adapt_to_patient(get_regimen("C1"), SEVERE)
    assert ad.changed and ad.regimen.name == "C1 adapted"
    ev = [e for e in ad.regimen.dose_events(SEVERE) if e.kind == "scheduled"]
    drugs = {e.drug for e in ev}
    assert "acetaminophen" not in drugs  # severe hepatic impairment: contraindicated
    assert "ketorolac" not in drugs  # CrCL < 30: contraindicated (advanced renal impairment)
    gaba = [(e.time_h, e.amount_mg) for e in ev if e.drug == "gabapentin"]
    assert gaba, "gabapentin is kept at a lower dose, not dropped"
    assert _rolling_max(*zip(*gaba)) <= 700.0 + 1e-6  # Neurontin table, CrCL 15-29 mL/min
    # what C1 gives that the patient may receive is kept (ketamine, liposomal bupivacaine) and the rescue rules
    c1 = get_regimen("C1")
    assert {"ketamine", "bupivacaine_liposomal"} <= drugs
    # the as-needed rules: every threshold and interval kept, the doses at the labels' starting-dose fractions
    # (hydromorphone 25 %: severe renal and severe hepatic alike; oxycodone IR 1/3: hepatic impairment)
    assert [(r.drug, r.threshold_nrs, r.min_interval_h) for r in ad.regimen.prn] == [
        (r.drug, r.threshold_nrs, r.min_interval_h) for r in c1.prn
    ]
    assert [r.dose_mg for r in ad.regimen.prn] == [1.666, 3.333, 0.125]  # 5/3, 10/3 (to 1 ug, down), 0.5/4
    assert ad.regimen.pca == c1.pca == ()
    # every change is said with its limit and source
    text = " | ".join(ad.changes)
    assert "acetaminophen PO" in text and "contraindicated" in text
    assert "ketorolac IV" in text and "Toradol" in text
    assert "gabapentin PO" in text and "700 mg" in text and "Neurontin" in text
    assert not [f for f in check_regimen(ad.regimen, SEVERE) if f.drug in drugs]
    assert {f.drug for f in ad.findings} >= {"acetaminophen", "ketorolac", "gabapentin"}


def test_a_regimen_within_the_limits_is_not_changed():
    reg = get_regimen("C1")
    ad = adapt_to_patient(reg, dict(SEVERE, CRCL=95.0, HEPATIC=0.0, SCR=0.9))
    assert not ad.changed and ad.regimen is reg and ad.findings == ()


def test_worse_than_needs_more_opioid_and_less_time_in_target():
    def cmp_(mme, tit):
        return pd.DataFrame({"MME_mean": [mme, 15.8], "TIT3": [tit, 0.63]}, index=["proposal", "C1 adapted"])

    msg = worse_than(cmp_(23.4, 0.53), "C1 adapted")  # the severe-hepatic, CrCL 25 patient
    assert msg.startswith("THIS PROPOSAL IS WORSE THAN C1 ADAPTED") and "23.4 vs 15.8" in msg and "53% vs 63%" in msg
    assert worse_than(cmp_(23.4, 0.70), "C1 adapted") == ""  # more opioid, but better pain control
    assert worse_than(cmp_(10.0, 0.53), "C1 adapted") == ""  # less pain control, but less opioid


def test_explanation_quotes_the_daily_cap_that_applies():
    """CrCL 25 mL/min: gabapentin at most 700 mg/24 h (not the 3 x 1200 mg the slots' single-dose maxima add
    up to); a schedule below it says so with the cap and its source."""
    cov = dict(SEVERE, HEPATIC=0.0)
    space = DecisionSpace.build(cov, None, ("gabapentin/po",))
    amounts = np.zeros(len(space.slots))
    amounts[0] = space.slots[0].choices_mg[1]
    from regimens._policies import rescue_policies

    lines = _choices_explained(space, amounts, rescue_policies()[0], OptimizeSettings())
    line = [x for x in lines if x.startswith("gabapentin/po:")]
    assert line and "<= 700 mg/24 h" in line[0] and "Neurontin" in line[0], lines
    assert "3000" not in line[0] and "3600" not in line[0]


def test_optimize_reports_the_adapted_comparator():
    """The issue's patient (severe hepatic impairment, CrCL 25): the proposal is compared with C0 and C1 as
    written and as adapted, the adaptation is said, and 'worse than C1 adapted' is flagged exactly when the
    proposal uses more opioid with less time in target than it (first note)."""
    from regimens.optimize import optimize_patient

    prop = optimize_patient(SEVERE, settings=OptimizeSettings(draws=4, steps=5))
    assert {"C1 adapted", "C0 adapted"} <= set(prop.comparison.index)
    assert any("'C1 adapted'" in n and "ketorolac" in n for n in prop.notes)
    worse = worse_than(prop.comparison, "C1 adapted")
    assert prop.worse_than_comparator == bool(worse)
    if worse:
        assert prop.notes[0] == worse
    sched = set(prop.schedule["drug"])
    assert not sched & {"acetaminophen", "ketorolac", "celecoxib", "ibuprofen"}


# ---- as-needed doses at the labels' renal / hepatic starting-dose fractions -----------------------------
#: Written out here, independently of regimens.limits: DILAUDID (hydromorphone) start at 25 % in severe renal
#: impairment (CrCL < 30 mL/min) and in moderate/severe hepatic impairment; ROXICODONE (oxycodone IR) at 1/3 of
#: the usual starting dose in hepatic impairment; in renal impairment only 'a conservative approach' (no number).
CRCL15 = dict(SEVERE, CRCL=15.0, SCR=4.5, HEPATIC=0.0)
HEPATIC3 = dict(SEVERE, CRCL=95.0, SCR=0.9, HEPATIC=3.0)
NORMAL = dict(SEVERE, CRCL=95.0, SCR=0.9, HEPATIC=0.0)


def _prn(reg):
    return {(r.drug, r.threshold_nrs): r.dose_mg for r in reg.prn}


def test_c1_adapted_gives_hydromorphone_at_25_percent_at_crcl_15():
    ad = adapt_to_patient(get_regimen("C1"), CRCL15)
    prn = _prn(ad.regimen)
    assert prn[("hydromorphone", 7.0)] == 0.5 * 0.25  # DILAUDID: severe renal, 25 %
    assert prn[("oxycodone", 4.0)] == 5.0 and prn[("oxycodone", 7.0)] == 10.0  # ROXICODONE: renal, no number
    line = [c for c in ad.changes if c.startswith("hydromorphone IV")]
    assert line and "0.5 mg per dose as given -> 0.125 mg" in line[0] and "25 %" in line[0]
    assert "DILAUDID" in line[0] and "severe renal impairment" in line[0] and "UNVERIFIED" in line[0]
    assert not [c for c in ad.changes if c.startswith("oxycodone")]
    assert ad.rescue[("hydromorphone", "iv")].fraction == 0.25
    # the adapted comparator passes the checker's starting-dose rule; C1 as written does not
    assert not [f for f in check_regimen(ad.regimen, CRCL15) if f.rule == "starting_dose"]
    assert [f.drug for f in check_regimen(get_regimen("C1"), CRCL15) if f.rule == "starting_dose"] == ["hydromorphone"]


def test_c1_adapted_gives_oxycodone_at_one_third_in_severe_hepatic_impairment():
    ad = adapt_to_patient(get_regimen("C1"), HEPATIC3)
    prn = _prn(ad.regimen)
    assert prn[("hydromorphone", 7.0)] == 0.5 * 0.25  # DILAUDID: hepatic, 25 % (lower end)
    # ROXICODONE hepatic: 1/3 (the lower end of 1/3 to 1/2), rounded down to a whole microgram
    assert prn[("oxycodone", 4.0)] <= 5.0 / 3.0 and prn[("oxycodone", 4.0)] > 5.0 / 3.0 - 1e-3
    assert prn[("oxycodone", 7.0)] <= 10.0 / 3.0 and prn[("oxycodone", 7.0)] > 10.0 / 3.0 - 1e-3
    text = " | ".join(ad.changes)
    assert "oxycodone PO as needed/PCA: 5 / 10 mg per dose as given -> 1.666 / 3.333 mg" in text
    assert "ROXICODONE" in text and "1/3" in text and "DILAUDID" in text
    found = check_regimen(get_regimen("C1"), HEPATIC3)
    assert {f.drug for f in found if f.rule == "starting_dose"} == {"hydromorphone", "oxycodone"}
    assert not [f for f in check_regimen(ad.regimen, HEPATIC3) if f.rule == "starting_dose"]


def test_c0_pca_demand_dose_is_scaled_too():
    ad = adapt_to_patient(get_regimen("C0"), CRCL15)
    (pca,) = ad.regimen.pca
    assert pca.demand_mg == 0.2 * 0.25 and pca.lockout_min == get_regimen("C0").pca[0].lockout_min
    assert any(c.startswith("hydromorphone IV") and "PCA 0.2" in c and "PCA 0.05" in c for c in ad.changes)


def test_a_normal_patient_is_unchanged_and_simulated_bit_for_bit_as_before():
    """A normal patient's comparator (no fraction, within every limit) is C1 itself; in a batch with a
    restricted patient its rows of the batched comparator simulation (per-patient rescue tables) are the
    same bits as the simulation without rescue tables (the code before the fractions)."""
    from pkpd.population import SimOptions, simulate_regimen

    c1 = get_regimen("C1")
    ad = adapt_to_patient(c1, NORMAL)
    assert not ad.changed and ad.regimen is c1 and not ad.rescue
    assert rescue_tables(c1, [ad, ad], pd.DataFrame([dict(NORMAL, ID=1)])) is None  # nobody's rescue changed
    covs = [NORMAL, CRCL15]
    rows = pd.DataFrame([dict(covs[p], ID=p * 3 + k + 1) for p in range(2) for k in range(3)])
    row_patient = np.repeat([0, 1], 3)
    ads = [adapt_to_patient(c1, c) for c in covs]
    W = np.stack([a.weights for a in ads])[row_patient]
    opts = SimOptions(record_trajectories=True, record_doses=True)
    tabs = rescue_tables(c1, ads, rows.iloc[:1], opts)
    new = simulate_regimen(
        c1, rows, seed=3, options=opts, dose_weights=W, rescue_tables={k: v[row_patient] for k, v in tabs.items()}
    )
    old = simulate_regimen(c1, rows, seed=3, options=opts, dose_weights=W)
    num = new.patients.select_dtypes("number").columns
    pd.testing.assert_frame_equal(new.patients[num].iloc[:3], old.patients[num].iloc[:3], check_exact=True)
    assert np.array_equal(new.nrs[:3], old.nrs[:3])
    # the restricted patient's realized hydromorphone doses: 25 % of C1's 0.5 mg
    d = new.doses
    hm = d[(d.DRUG == "hydromorphone") & d.ID.isin(rows.ID.iloc[3:])]
    assert len(hm) > 0 and (hm.AMT <= 0.5 * 0.25 + 1e-12).all()
