"""Adversarial patients through the population simulator and the label/CPIC checks.

Extreme weight, age, renal and hepatic function and genotypes must give finite outcomes (no silent NaN) and the
findings a pharmacist would raise (a warning or an error, never silence).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pkpd.patients import Patient, patients_to_frame
from pkpd.population import simulate_regimen
from regimens import Regimen, Scheduled, check_regimen, get_regimen
from regimens.population_checks import regimen_findings

ADVERSARIAL = [
    Patient(age_y=45, sex="female", weight_kg=45, height_cm=150, scr_mg_dl=0.7, id=1),
    Patient(age_y=50, sex="male", weight_kg=140, height_cm=180, scr_mg_dl=1.0, id=2),
    Patient(age_y=90, sex="female", weight_kg=55, height_cm=155, scr_mg_dl=1.1, id=3),
    Patient(age_y=60, sex="male", weight_kg=80, height_cm=175, crcl_ml_min=15, scr_mg_dl=4.5, id=4),
    Patient(age_y=55, sex="male", weight_kg=75, height_cm=178, scr_mg_dl=0.9, hepatic="severe", id=5),
    Patient(
        age_y=40,
        sex="female",
        weight_kg=70,
        height_cm=165,
        scr_mg_dl=0.8,
        opioid_tolerant=True,
        osa=True,
        genotypes=("CYP2D6 *4/*4", "CYP2C9 *3/*3", "OPRM1 A118G GG"),
        id=6,
    ),
    Patient(age_y=35, sex="male", weight_kg=90, height_cm=185, scr_mg_dl=0.9, genotypes=("CYP2D6 *1/*1x2",), id=7),
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
    assert ("acetaminophen", "max_single_dose") in by  # 45 kg: 1 g > 15 mg/kg
    assert ("ketorolac", "contraindicated") in by or ("ketorolac", "max_daily_dose") in by  # CrCL 15, age 90
    assert ("acetaminophen", "contraindicated") in by  # severe hepatic impairment
    assert all(s in ("warning", "error") for s in f.severity)


@pytest.mark.parametrize(
    "patient_id, drug, route",
    [(6, "codeine", "po"), (7, "codeine", "po"), (6, "tramadol", "po_er"), (7, "tramadol", "po_er")],
)
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


#: Opioid as-needed (PRN) and PCA doses, written out here independently of regimens.limits: the labels' reduced
#: starting doses, read strictly. DILAUDID (hydromorphone): 25 % in severe renal impairment (CrCL < 30 mL/min) and
#: in moderate/severe hepatic impairment, 50 % at CrCL 30 to < 60 and in mild hepatic impairment (usual adult
#: start IV 0.2-1 mg q2-3h); ROXICODONE (oxycodone IR): 1/3 in hepatic impairment (usual start 5-15 mg q4-6h),
#: no number in renal impairment. Where renal and hepatic both apply, the smaller fraction.
USUAL_START_MAX = {"hydromorphone": 1.0, "oxycodone": 15.0}


def _opioid_fraction(drug, cov):
    crcl, hep = cov["CRCL"], cov["HEPATIC"]
    if drug == "hydromorphone":
        renal = 0.25 if crcl < 30 else 0.5 if crcl < 60 else 1.0
        hepatic = 0.25 if hep >= 2 else 0.5 if hep >= 1 else 1.0
        return min(renal, hepatic)
    if drug == "oxycodone":
        return 1.0 / 3.0 if hep >= 1 else 1.0
    return 1.0


def _rescue_violations(cov, given, written):
    """``given`` and ``written``: the (drug, dose mg) of each as-needed rule for the patient and as written."""
    out = []
    for (drug, g), (drug_w, w) in zip(given, written, strict=True):
        assert drug == drug_w
        f = _opioid_fraction(drug, cov)
        if g > f * w + 1e-9:
            out.append(f"{drug} {g:g} mg as needed: above {f:.3g} x the {w:g} mg written")
        if f < 1.0 and g > f * USUAL_START_MAX[drug] + 1e-9:
            out.append(f"{drug} {g:g} mg as needed: above {f:.3g} x the usual starting dose")
    return out


@pytest.fixture(scope="module")
def adversarial_run(pop):
    """Adversarial patients and combinations of them optimized in one batched call (4 draws, the optimizer's
    fast test settings), with the dose records of the exact simulations."""
    from regimens.optimize import OptimizeSettings, optimize_population

    combos = pop.iloc[[3, 4, 5]].copy()
    combos["ID"] = [11, 12, 13]
    combos["HEPATIC"] = [3.0, 2.0, 3.0]  # CrCL 15 + severe hepatic; severe hepatic + moderate; ...
    combos["CRCL"] = [15.0, 25.0, 20.0]
    combos["CYP2C9_AS"] = [0.0, 2.0, 0.0]
    combos["AGE"] = [90.0, 70.0, 60.0]
    allp = pd.concat([pop, combos], ignore_index=True)
    st = OptimizeSettings(draws=4, steps=5)
    return allp, st, optimize_population(allp, st, trajectories=True)


def _cov(allp, p):
    return {k: float(v) for k, v in allp.iloc[p].items() if isinstance(v, (int, float, np.floating, np.integer))}


def test_no_proposal_for_an_adversarial_patient_breaks_a_label_renal_hepatic_or_cpic_rule(adversarial_run):
    """Issue acceptance: adversarial patients (45 and 140 kg, age 90, CrCL 15, severe hepatic impairment,
    CYP2C9 *3/*3 with CYP2D6 poor and tolerant + OSA, CYP2D6 ultrarapid) and combinations of them get zero
    proposals that the independent check above flags, scheduled doses and as-needed rescue doses alike."""
    from regimens._policies import rescue_policies

    allp, _, res = adversarial_run
    written = {pol.label: pol for pol in rescue_policies()}
    bad = {}
    for p in range(len(allp)):
        cov = _cov(allp, p)
        pol = res.policies[p]
        reg = res.spaces[p].regimen(res.amounts[p], rescue=pol.rules)
        ev = [e for e in reg.dose_events(cov) if e.kind == "scheduled"]
        v = _independent_violations(cov, ev)
        v += _rescue_violations(
            cov, [(r.drug, r.dose_mg) for r in reg.prn], [(r.drug, r.dose_mg) for r in written[pol.label].rules]
        )
        if v:
            bad[int(allp.ID.iloc[p])] = v
    assert not bad, bad


def test_rescue_doses_actually_simulated_are_within_the_fractions(adversarial_run):
    """The rescue tables the exact evaluation simulated and the realized as-needed / PCA doses of the proposal
    and the comparators never exceed the patient's fraction of the largest dose written (hydromorphone IV 0.5 mg
    PRN, C0's PCA 0.2 mg; oxycodone PO 10 mg) nor of the usual starting dose; a restricted patient's proposal
    and explanation quote the fraction applied."""
    from pkpd.population import RegimenPlan, SimOptions

    allp, st, res = adversarial_run
    S = st.draws
    row_patient = np.repeat(np.arange(len(allp)), S)
    items = RegimenPlan.build(res.superset, res.rows.iloc[:1], SimOptions()).items
    tab = res.rescue_tables["prn_dose"]
    assert tab.shape[0] == len(allp) * S
    for q, p in enumerate(row_patient):
        cov = _cov(allp, p)
        for i, it in enumerate(items):
            top = {"hydromorphone": 0.5, "oxycodone": 10.0}[it["drug"]]
            f = _opioid_fraction(it["drug"], cov)
            assert tab[q, i].max() <= f * min(top, USUAL_START_MAX[it["drug"]]) + 1e-9, (allp.ID.iloc[p], it["drug"])
    patient_of = dict(zip(res.rows["ID"], row_patient))
    written = {
        "proposal": {"hydromorphone": 0.5, "oxycodone": 10.0},
        "C1": {"hydromorphone": 0.5, "oxycodone": 10.0},
        "C0": {"hydromorphone": 0.2, "oxycodone": 10.0},
    }
    restricted_given = 0
    for name, top in written.items():
        d = res.draws[name].doses
        d = d[d.KIND != "scheduled"]
        assert len(d) > 0
        for r in d.itertuples():
            cov = _cov(allp, patient_of[r.ID])
            f = _opioid_fraction(r.DRUG, cov)
            assert r.AMT <= f * top[r.DRUG] + 1e-9, (name, r)
            restricted_given += f < 1.0
    assert restricted_given > 0  # the check above saw doses of restricted patients
    # the text quotes the fraction: CrCL 15 (ID 4) and severe hepatic impairment (ID 5)
    pol = dict(zip(allp.ID, res.patients["POLICY"]))
    assert "hydromorphone IV 0.125 mg: 25 % (severe renal impairment" in pol[4] and "DILAUDID" in pol[4]
    assert "oxycodone PO 1.666 / 3.333 mg: 1/3 (hepatic impairment, ROXICODONE" in pol[5]
    c1 = dict(zip(allp.ID, res.patients["C1_ADAPTED"]))
    assert "0.5 mg per dose as given -> 0.125 mg" in c1[4] and "DILAUDID" in c1[4]
    assert "5 / 10 mg per dose as given -> 1.666 / 3.333 mg" in c1[5] and "ROXICODONE" in c1[5]


def test_comparators_of_unrestricted_patients_are_bit_identical_to_before(adversarial_run):
    """Patients without a renal/hepatic fraction (CrCL >= 60, no hepatic impairment): their C0 and C1 rows are
    the same bits as the comparators simulated without per-patient rescue tables (the code before the
    fractions), in the same batched call."""
    from pkpd.population import SimOptions, simulate_regimen
    from pkpd.xla import fast_compile
    from regimens.adapt import adapt_to_patient

    allp, st, res = adversarial_run
    S = st.draws
    free = [p for p in range(len(allp)) if _cov(allp, p)["CRCL"] >= 60 and _cov(allp, p)["HEPATIC"] == 0]
    assert len(free) >= 2
    rows_free = np.concatenate([np.arange(p * S, (p + 1) * S) for p in free])
    opts = SimOptions(record_trajectories=True, record_doses=True)
    for name in ("C0", "C1"):
        reg = get_regimen(name)
        W = np.repeat(np.stack([adapt_to_patient(reg, _cov(allp, p)).weights for p in range(len(allp))]), S, axis=0)
        with fast_compile(st.compile_fast):  # as the optimizer compiles its simulations
            before = simulate_regimen(
                reg, res.rows, seed=st.seed, options=opts, dose_weights=None if np.all(W == 1.0) else W
            ).patients
        now = res.draws[name].patients
        num = [c for c in now.select_dtypes("number").columns]
        pd.testing.assert_frame_equal(now[num].iloc[rows_free], before[num].iloc[rows_free], check_exact=True)
