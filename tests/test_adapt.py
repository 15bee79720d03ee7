"""Comparators adapted to a patient's limits (regimens.adapt), a proposal reported as worse than its
comparator, and explanations that quote the caps actually applied.

Independent references: the label numbers themselves (Neurontin renal dosing table: CrCL 15-29 mL/min at most
700 mg/day; Toradol: contraindicated in advanced renal impairment; acetaminophen: contraindicated in severe
hepatic impairment), checked on the adapted doses directly (a rolling 24-h sum computed here), not through
the checker that made the adaptation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from regimens import check_regimen
from regimens.adapt import adapt_to_patient
from regimens.io import get_regimen
from regimens.optimize import DecisionSpace, OptimizeSettings, _choices_explained, worse_than

SEVERE = {"AGE": 60.0, "MALE": 1.0, "WT": 80.0, "HT": 175.0, "LBM": 60.0, "FFM": 60.0, "IBW": 70.0, "SCR": 2.5,
          "CRCL": 25.0, "HEPATIC": 3.0, "OPIOID_TOL": 0.0, "OSA": 0.0, "OPEN_SURGERY": 1.0, "CYP2D6_AS": 2.0,
          "CYP2D6_10_10": 0.0, "CYP2C9_AS": 2.0, "OPRM1_G": 0.0}


def _rolling_max(times, amounts, width=24.0):
    t, a = np.asarray(times, float), np.asarray(amounts, float)
    return max(a[(t >= s - 1e-9) & (t < s + width - 1e-9)].sum() for s in t)


def test_c1_adapted_to_severe_hepatic_and_crcl_25():
    ad = adapt_to_patient(get_regimen("C1"), SEVERE)
    assert ad.changed and ad.regimen.name == "C1 adapted"
    ev = [e for e in ad.regimen.dose_events(SEVERE) if e.kind == "scheduled"]
    drugs = {e.drug for e in ev}
    assert "acetaminophen" not in drugs          # severe hepatic impairment: contraindicated
    assert "ketorolac" not in drugs              # CrCL < 30: contraindicated (advanced renal impairment)
    gaba = [(e.time_h, e.amount_mg) for e in ev if e.drug == "gabapentin"]
    assert gaba, "gabapentin is kept at a lower dose, not dropped"
    assert _rolling_max(*zip(*gaba)) <= 700.0 + 1e-6  # Neurontin table, CrCL 15-29 mL/min
    # what C1 gives that the patient may receive is kept (ketamine, liposomal bupivacaine) and the rescue rules
    c1 = get_regimen("C1")
    assert {"ketamine", "bupivacaine_liposomal"} <= drugs
    assert ad.regimen.prn == c1.prn and ad.regimen.pca == c1.pca
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
