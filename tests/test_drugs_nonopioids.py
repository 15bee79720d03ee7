"""Tests of the non-opioid drug entries (pkpd/drugs/nonopioids.py): sourcing, flags, covariate effects and
published values reproduced by simulation through :func:`pkpd.simulate`.

Published values come from ``shared/reference/models.md`` / ``clinical.md`` where they exist. Where they do
not, the docstring names the independent source used (abstract, label) and says it is not in models.md.
Simulations are batched (several IDs per dataset, module-scoped fixtures) to keep JIT compiles few.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import pkpd
from pkpd.drugs import get_drug

NAMES = ("ibuprofen", "celecoxib", "ketorolac", "gabapentin", "pregabalin", "ketamine", "s_ketamine")


def _subject(sid, doses, times, cov=None):
    """Rows of one subject: ``doses`` are dicts (TIME, AMT, CMT, RATE, II, SS, ADDL), then observations."""
    rows = []
    for d in doses:
        rows.append(
            {"ID": sid, "TIME": 0.0, "EVID": 1, "AMT": 0.0, "CMT": 1, "RATE": 0.0, "II": 0.0, "SS": 0, "ADDL": 0, **d}
        )
    rows += [
        {"ID": sid, "TIME": float(t), "EVID": 0, "AMT": 0.0, "CMT": 1, "RATE": 0.0, "II": 0.0, "SS": 0, "ADDL": 0}
        for t in times
    ]
    df = pd.DataFrame(rows)
    for k, v in (cov or {}).items():
        df[k] = v
    return df


def _run(drug, subjects):
    """Simulate the concatenated subjects with the entry's model and parameters; observation rows only."""
    df = pd.concat(subjects, ignore_index=True).sort_values(
        ["ID", "TIME", "EVID"], ascending=[True, True, False], kind="stable"
    )
    out = pkpd.simulate(df.reset_index(drop=True), drug.model, drug.param_spec())
    return out[out.EVID == 0]


def _half_life(obs, lo, hi, col="CP"):
    """Log-linear regression half-life (h) of ``col`` over lo <= TIME <= hi."""
    w = obs[(obs.TIME >= lo) & (obs.TIME <= hi)]
    slope = np.polyfit(w.TIME.to_numpy(), np.log(w[col].to_numpy()), 1)[0]
    return -math.log(2) / slope


def _auc(obs, col="CP"):
    """Trapezoidal AUC of ``col`` over the observation times of ``obs`` (mg·h/L)."""
    return float(np.trapezoid(obs[col].to_numpy(), obs.TIME.to_numpy()))


# ---------------------------------------------------------------- construction, sourcing, flags


@pytest.mark.parametrize("name", NAMES)
def test_entry_constructs_and_every_number_is_sourced(name):
    d = get_drug(name)
    assert d.name == name and d.drug_class == "non-opioid"
    assert set(pkpd.get_model(d.model).param_names) <= {p.name for p in d.params}
    for p in d.params:
        assert p.source.citation.strip() and p.unit.strip(), p.name
        if p.derived:
            assert p.note or p.source.detail, f"{name}.{p.name}: derivation not explained"
        if p.is_unverified:
            assert p.note, f"{name}.{p.name}: UNVERIFIED value without a note saying why"
    for c in d.covariates:
        assert c.source.citation.strip()
    assert d.notes and d.references and d.routes
    assert set(d.routes) <= {"iv", "po", "po_er", "infiltration", "sc"}
    text = d.describe()
    assert all(p.name in text for p in d.params)


def test_routes_and_models():
    assert get_drug("ibuprofen").routes == {"po": 1} and get_drug("ibuprofen").model == "2cmt_oral"
    assert get_drug("celecoxib").routes == {"po": 1} and get_drug("celecoxib").model == "1cmt_oral"
    assert get_drug("gabapentin").routes == {"po": 1} and get_drug("pregabalin").routes == {"po": 1}
    assert get_drug("ketorolac").routes == {"iv": 1} and get_drug("ketamine").routes == {"iv": 1}
    m = pkpd.get_model("ketorolac_valitalo2017")
    assert m.is_linear and m.output_names() == ("CP", "CR") and m.compartments[0] == "CENTRAL_S"
    assert "ketorolac_valitalo2017" in pkpd.models.list_models()
    # aliases defined in library.py resolve to these entries
    assert get_drug("toradol") is get_drug("ketorolac") and get_drug("neurontin") is get_drug("gabapentin")


def test_unverified_flags():
    """UNVERIFIED = values not in models.md (general knowledge / other sources) or assumptions models.md names.

    models.md marks as UNVERIFIED or as an assumption: the Kirchheiner 2003 attribution (A8/D2), the Domino
    year (A12) and Simons 2022's allometric exponents ('nlmixr2lib assumed 0.75/1', A12). Ketorolac's salt
    factor, celecoxib's ka and the activity-score interpolation are not in models.md at all.
    """
    assert set(get_drug("celecoxib").unverified_params()) == {"KA", "FPM", "CL"}
    assert set(get_drug("ketorolac").unverified_params()) == {"SALT", "F1", "F4"}
    assert set(get_drug("s_ketamine").unverified_params()) == {
        f"{p}~WT" for p in ("CLK1", "CLK2", "CLK3", "V1", "V2", "V3")
    }
    for name in ("ibuprofen", "gabapentin", "pregabalin", "ketamine"):
        assert get_drug(name).unverified_params() == (), name
    assert "UNVERIFIED" in get_drug("ketamine").params[0].source.citation  # Domino year
    assert "UNVERIFIED" in get_drug("celecoxib")._param("FPM").source.detail  # Kirchheiner attribution


def test_values_match_models_md():
    """Spot-check transcription against models.md (A7-A10, A12); unit conversions stated in notes."""
    v = {p.name: p.value for p in get_drug("ibuprofen").params}
    assert (v["CL"], v["V1"], v["Q"], v["V2"], v["F1"], v["TABS"], v["TLAG"]) == (
        3.79,
        6.05,
        10.5,
        4.37,
        0.941,
        26.7,
        6.66,
    )
    sd = {p.name: p.iiv_sd for p in get_drug("ibuprofen").params if p.iiv_sd is not None}
    assert sd == {"CL": 0.221, "V1": 0.302, "Q": 0.660, "V2": 0.530, "F1": 0.051, "TABS": 0.787, "TLAG": 0.809}
    cel = get_drug("celecoxib")
    assert cel._param("CLNM").value == pytest.approx(500 * 60 / 1000) and cel._param("V").value == 400.0
    k = {p.name: p.value for p in get_drug("ketorolac").params}
    assert (k["CLS"], k["V1S"], k["V2S"], k["V3S"], k["Q2S"], k["Q3S"]) == (3.96, 3.74, 3.86, 3.3, 20.0, 1.3)
    assert (k["CLR"], k["V1R"], k["V2R"], k["V3R"], k["Q2R"], k["Q3R"]) == (1.12, 3.4, 2.29, 4.88, 3.86, 0.58)
    g = {p.name: p.value for p in get_drug("gabapentin").params}
    assert (g["CL"], g["V"], g["KA"], g["DMAX"], g["DOSE50"]) == (5.73, 44.61, 0.778, 823.0, 1120.0)
    pg = {p.name: p.value for p in get_drug("pregabalin").params}
    assert (pg["CLCR"], pg["CRCLBP"], pg["VPOP"], pg["FEMV"], pg["KA"], pg["ALAG1"]) == (
        0.0462,
        107.0,
        35.6,
        0.906,
        7.99,
        0.243,
    )
    km = {p.name: p.value for p in get_drug("ketamine").params}
    assert (km["V1KG"], km["K10"], km["K12"], km["K13"], km["K21"], km["K31"]) == (
        0.063,
        0.4381,
        0.5921,
        0.590,
        0.247,
        0.0146,
    )
    sk = get_drug("s_ketamine")
    assert sk._param("V1").iiv_sd == pytest.approx(math.sqrt(0.057))  # omega^2 -> SD


# ---------------------------------------------------------------- ibuprofen


def test_ibuprofen_fasted_tablet_matches_morse_table4():
    """Typical 300 mg fasted tablet vs Morse 2022 Table 4 (the paper's simulated medians with p10-p90).

    Source: Morse 2022 Table 4 as transcribed in the nlmixr2lib Morse 2022 vignette (NL; the table itself is
    not copied into models.md): ibuprofen tablet fasted Cmax median 24.1 mg/L (p10-p90 13.3-40.8), Tmax
    0.94 h (0.48-1.67). Tolerance: the p10-p90 band, plus the size of the known bias: models.md A7 says
    simulations of the printed parameters fall 10-30 % below the Table 4 Cmax medians, so Cmax/median must
    lie in [0.70, 0.90]. Also checks the simulated AUC·CL/dose against F = 0.941.
    """
    d = get_drug("ibuprofen")
    obs = _run(d, [_subject(1, [{"AMT": 300.0, "CMT": d.cmt("po")}], np.arange(0.02, 36.0, 0.02))])
    cmax, tmax = obs.CP.max(), obs.TIME.iloc[obs.CP.argmax()]
    assert 13.3 <= cmax <= 40.8 and 0.48 <= tmax <= 1.67, (cmax, tmax)
    assert 0.70 <= cmax / 24.1 <= 0.90, cmax / 24.1
    assert _auc(obs) * 3.79 / 300.0 == pytest.approx(0.941, rel=2e-3)  # tail after 36 h is negligible


# ---------------------------------------------------------------- celecoxib


@pytest.fixture(scope="module")
def celecoxib_sim():
    """Single 200 mg dose for CYP2C9 AS 2, 1.5, 1, 0.5, 0 (IDs 1-5), observed to 400 h (> 20 half-lives
    even for AS 0), so AUC(0-400 h) = D/CL to quadrature error. One simulate call (one JIT compile)."""
    d = get_drug("celecoxib")
    scores = (2.0, 1.5, 1.0, 0.5, 0.0)
    t = np.r_[np.arange(0.0, 48.0, 0.05), np.arange(48.0, 400.01, 0.5)]
    obs = _run(
        d,
        [_subject(i + 1, [{"AMT": 200.0, "CMT": d.cmt("po")}], t, cov={"CYP2C9_AS": a}) for i, a in enumerate(scores)],
    )
    return {a: _auc(obs[obs.ID == i + 1]) for i, a in enumerate(scores)}, obs[obs.ID == 1]


def test_celecoxib_clf_for_cyp2c9_intermediate_and_poor_metabolizers(celecoxib_sim):
    """Celecoxib CL/F for CYP2C9 intermediate and poor metabolizers (acceptance test).

    IM (AS 1, *1/*3): Arch Pharm Res 2017 abstract (models.md A8) reports AUC ×1.63 and CL/F −39.6 %. The
    entry uses the CL/F figure, which implies AUC ×1/0.604 = 1.656; the two published summaries differ by
    1.6 % (different averaging), so the tolerance on 1.63 is ±5 %.
    PM (AS 0, *3/*3): Kirchheiner 2003 abstract: 'oral CL reduced more than 2-fold', so AUC ratio >= 2
    (the entry sits at the bound; 1e-3 allows for the quadrature error).
    AS 1.5 and 0.5 (interpolated, an assumption) must lie between their neighbours.
    """
    auc = celecoxib_sim[0]
    r = {a: x / auc[2.0] for a, x in auc.items()}
    assert r[1.0] == pytest.approx(1.63, rel=0.05), r[1.0]
    assert r[0.0] >= 2.0 * (1 - 1e-3), r[0.0]
    assert 1.0 < r[1.5] < r[1.0] < r[0.5] < r[0.0]
    # absolute level: AUC = D/CL with the label CL/F 500 mL/min (quadrature error only)
    assert auc[2.0] == pytest.approx(200.0 / 30.0, rel=1e-3)


def test_celecoxib_half_life_and_peak_vs_label(celecoxib_sim):
    """Single 200 mg dose (AS 2) vs the Celebrex label.

    Half-life: models.md A8 gives the label 'effective t½ (fasted) ≈11 h' (older label Table 1: 11.2 h,
    31 % CV). The entry's CL/F ≈500 mL/min and Vss/F ≈400 L imply 9.2 h, so the simulated terminal half-life
    is checked against 11 h with ±20 %: the label values are rounded ('≈') and the 'effective' half-life is
    not the terminal slope of a 1-compartment fit; 20 % is within the label's 31 % CV.
    Peak: older label Table 1 (read on a healthscout.com copy; not in models.md): Cmax 705 ng/mL, 38 % CV.
    A 1-compartment model with V = Vss/F under-predicts the peak (documented in the entry's notes), so only
    mean − 2 SD on the log scale (705·exp(−2·0.366) = 339 ng/mL) to mean is required. Tmax is not tested:
    ka was chosen from the label Tmax.
    """
    obs = celecoxib_sim[1]
    t_half = _half_life(obs, 48.0, 96.0)  # terminal phase (absorption over after ~15 h)
    assert t_half == pytest.approx(11.0, rel=0.20), t_half
    cmax_ng = 1000.0 * obs.CP.max()
    sd_log = math.sqrt(math.log(1 + 0.38**2))
    assert 705.0 * math.exp(-2 * sd_log) <= cmax_ng <= 705.0, cmax_ng


# ---------------------------------------------------------------- ketorolac

_KET_T = np.r_[np.arange(0.0, 0.5, 0.002), np.arange(0.5, 24.0, 0.02), np.arange(24.0, 144.01, 0.25)]


@pytest.fixture(scope="module")
def ketorolac_sim():
    """30 mg (tromethamine) IV bolus: ID 1 typical 71-kg woman, ID 2 71-kg man, ID 3 50-kg woman; ID 4
    typical woman, 30 mg infused over 15 min as the documented pair of records (15 mg into CMT 1 and 15 mg
    into CMT 4, 60 mg/h each). Observations to 144 h (≈14 terminal half-lives of R), dense early so that
    trapezoid AUCs are accurate to < 1e-3. One simulate call (one JIT compile of the 6-compartment model)."""
    d = get_drug("ketorolac")
    covs = [{"WT": 71.0, "MALE": 0}, {"WT": 71.0, "MALE": 1}, {"WT": 50.0, "MALE": 0}]
    subs = [_subject(i + 1, [{"AMT": 30.0, "CMT": d.cmt("iv")}], _KET_T, cov=c) for i, c in enumerate(covs)]
    inf = [{"AMT": 15.0, "CMT": 1, "RATE": 60.0}, {"AMT": 15.0, "CMT": 4, "RATE": 60.0}]
    subs.append(_subject(4, inf, _KET_T, cov=covs[0]))
    return pkpd.simulate(pd.concat(subs, ignore_index=True), d.model, d.param_spec())


def test_ketorolac_dose_split_half_to_each_enantiomer(ketorolac_sim):
    """One dose record is split FS = 0.5 to CENTRAL_S and CENTRAL_R after the salt factor (0.678).

    models.md A9: 'give half the racemic dose to each enantiomer'. The dose row shows the record's own dose.
    """
    row = ketorolac_sim[(ketorolac_sim.EVID == 1) & (ketorolac_sim.ID == 1)].iloc[0]
    assert row.CENTRAL_S == pytest.approx(0.5 * 0.678 * 30.0, rel=1e-12)
    assert row.CENTRAL_R == pytest.approx(0.5 * 0.678 * 30.0, rel=1e-12)
    assert row.PERIPH1_S == 0.0 and row.PERIPH2_R == 0.0
    assert row.CP == pytest.approx(row.CENTRAL_S / 3.74) and row.CR == pytest.approx(row.CENTRAL_R / 3.4)


def test_ketorolac_enantiomer_half_lives_match_hayball_1994(ketorolac_sim):
    """Apparent half-lives of S- and R-ketorolac over 3-9 h vs a published enantiomer study.

    models.md/clinical.md give no ketorolac concentrations or half-lives, so the independent value is
    Hayball 1994, Br J Clin Pharmacol 37:75 (abstract, PMC1364714; NOT in models.md): 30 mg racemic
    ketorolac tromethamine IM in 4 young volunteers, plasma sampled for 9 h, half-lives S 2.35 ± 0.23 h and
    R 3.62 ± 0.79 h (mean ± SD). The simulated log-linear slope is taken over 3-9 h (post-absorption part of
    that sampling window; the result moves by < 0.4 h for a 1-9 h or 2-9 h window). Tolerance: mean ± 2 SD
    (n = 4, IM vs IV, healthy volunteers vs the Valitalo population). The model's R terminal phase (≈10 h,
    deep compartment) is not observable in a 9-h window; the label gives ≈2.5 h (S) and ≈5 h (R).
    """
    obs = ketorolac_sim[(ketorolac_sim.EVID == 0) & (ketorolac_sim.ID == 1)]
    t_s, t_r = _half_life(obs, 3.0, 9.0, "CP"), _half_life(obs, 3.0, 9.0, "CR")
    assert 2.35 - 2 * 0.23 <= t_s <= 2.35 + 2 * 0.23, t_s
    assert 3.62 - 2 * 0.79 <= t_r <= 3.62 + 2 * 0.79, t_r
    assert t_r > t_s  # published direction (Hayball, label): R is eliminated more slowly


def test_ketorolac_covariates_act_as_published(ketorolac_sim):
    """Male ×1.363 and (WT/71)^0.536 on CL of both enantiomers (Valitalo 2017 via models.md A9).

    AUC(0-144 h) = F·FS·D/CL (tail < 1e-4), so female/male AUC ratio must be 1.363 and 50-kg/71-kg AUC
    ratio (50/71)^-0.536, for both CP (S) and CR (R); tolerance 2e-3 = quadrature error.
    """
    obs = ketorolac_sim[ketorolac_sim.EVID == 0]
    for col, cl in (("CP", 3.96), ("CR", 1.12)):
        a = [_auc(obs[obs.ID == i + 1], col) for i in range(3)]
        assert a[0] == pytest.approx(0.678 * 0.5 * 30.0 / cl, rel=2e-3)
        assert a[0] / a[1] == pytest.approx(1.363, rel=2e-3)
        assert a[2] / a[0] == pytest.approx((50 / 71) ** -0.536, rel=2e-3)


def test_ketorolac_infusion_as_two_records(ketorolac_sim):
    """The documented infusion workaround (half into CMT 1, half into CMT 4, F1 = F4 = SALT) delivers the
    same S and R exposure as the split bolus (AUC equal to 2e-3) and a lower S peak."""
    obs = ketorolac_sim[ketorolac_sim.EVID == 0]
    bolus, infusion = obs[obs.ID == 1], obs[obs.ID == 4]
    for col in ("CP", "CR"):
        assert _auc(infusion, col) == pytest.approx(_auc(bolus, col), rel=2e-3)
    assert infusion.CP.max() < bolus.CP.max()


# ---------------------------------------------------------------- gabapentin


@pytest.fixture(scope="module")
def gabapentin_sim():
    """Steady state q8h at SCr 1.3 for 300, 600, 1200 mg (IDs 1-3) and 300 mg at SCr 2.6 (ID 4); ID 5:
    300 mg at 0 h, 1200 mg at 24 h, 300 mg q8h ×3 (ADDL 2) from 48 h, observed to 200 h. One simulate call."""
    d = get_drug("gabapentin")
    cases = [(300.0, 1.3), (600.0, 1.3), (1200.0, 1.3), (300.0, 2.6)]
    subs = [
        _subject(
            i + 1, [{"AMT": a, "CMT": d.cmt("po"), "II": 8.0, "SS": 1}], np.arange(0.0, 8.0001, 0.01), cov={"SCR": s}
        )
        for i, (a, s) in enumerate(cases)
    ]
    doses = [
        {"TIME": 0.0, "AMT": 300.0},
        {"TIME": 24.0, "AMT": 1200.0},
        {"TIME": 48.0, "AMT": 300.0, "II": 8.0, "ADDL": 2},
    ]
    subs.append(_subject(5, doses, np.arange(0.0, 200.0, 0.05), cov={"SCR": 1.3}))
    obs = _run(d, subs)
    return [obs[obs.ID == i + 1] for i in range(5)]


def test_gabapentin_tid_steady_state_in_tdm_range(gabapentin_sim):
    """300 mg and 600 mg TID at SCr 1.3 mg/dL (the cohort mean) stay in the TDM reference range.

    models.md C (Al-Zubaydi 2024 Methods, NL): reference range 2-20 ug/mL, >= 25 ug/mL toxic. The whole
    steady-state interval (trough to peak) of the typical patient must lie in 2-20 mg/L, below 25 mg/L.
    clinical.md: 300 mg TID is the SPINE-72 post-op regimen; 900 mg/day ranked best (network meta-analysis).
    """
    for obs in gabapentin_sim[:2]:
        assert 2.0 <= obs.CP.min() and obs.CP.max() <= 20.0, (obs.CP.min(), obs.CP.max())  # hence < 25 too


def test_gabapentin_saturable_bioavailability_per_dose(gabapentin_sim):
    """F evaluated per dose record equals the published F = Dmax/(D50 + Dose) (models.md A10).

    At steady state AUCtau·CL/Dose = F exactly (CL = 5.73 L/h at SCr 1.3); tolerance = quadrature error
    (1e-3). F(300) = 823/1420 = 0.580 and F(1200) = 823/2320 = 0.355: a 4-fold dose gives only a 2.45-fold
    AUC (less than proportional).
    """
    f_pub = {300.0: 823 / (1120 + 300), 600.0: 823 / (1120 + 600), 1200.0: 823 / (1120 + 1200)}
    for obs, dose in zip(gabapentin_sim[:3], (300.0, 600.0, 1200.0)):
        assert _auc(obs) * 5.73 / dose == pytest.approx(f_pub[dose], rel=1e-3)
    ratio = _auc(gabapentin_sim[2]) / _auc(gabapentin_sim[0])
    assert ratio == pytest.approx(4.0 * f_pub[1200.0] / f_pub[300.0], rel=1e-4) and ratio < 2.5


def test_gabapentin_creatinine_effect(gabapentin_sim):
    """CL ∝ (SCr/1.3)^-0.89 (models.md A10): doubling SCr raises AUC by 2^0.89 = 1.85."""
    assert _auc(gabapentin_sim[3]) / _auc(gabapentin_sim[0]) == pytest.approx(2**0.89, rel=1e-3)


def test_gabapentin_f_uses_each_records_own_amt(gabapentin_sim):
    """Two different doses in one subject (300 mg at 0 h, 1200 mg at 24 h, 300 mg ×3 via ADDL from 48 h):
    total exposure = Σ F(AMT_i)·AMT_i / CL, i.e. pkpd.simulate evaluates F1 on each dose record with that
    record's AMT (ADDL copies reuse their record's F). Observations to 200 h (≈30 half-lives of 5.4 h);
    tolerance 1e-3 = quadrature error."""
    expected = sum(n * 823 / (1120 + a) * a for a, n in ((300.0, 1), (1200.0, 1), (300.0, 3))) / 5.73
    auc = _auc(gabapentin_sim[4])
    assert auc == pytest.approx(expected, rel=1e-3)
    # one F for all 2400 mg (F of the first record, 300 mg; or of the largest, 1200 mg) would be > 10 % off
    assert abs(auc / (2400.0 * 823 / 1420 / 5.73) - 1) > 0.1 and abs(auc / (2400.0 * 823 / 2320 / 5.73) - 1) > 0.1


# ---------------------------------------------------------------- pregabalin


@pytest.fixture(scope="module")
def pregabalin_sim():
    """Single 150 mg doses, observed to 300 h (> 16 half-lives at CrCL 30), IBW 62 kg, BMI 25, age 59:
    IDs 1-5 men at CrCL 30, 100, 107, 130, 86 mL/min; ID 6 a woman at CrCL 86. One simulate call."""
    d = get_drug("pregabalin")
    base = {"IBW": 62.0, "BMI": 25.0, "AGE": 59.0, "MALE": 1}
    t = np.r_[np.arange(0.0, 24.0, 0.01), np.arange(24.0, 300.01, 0.25)]
    covs = [{**base, "CRCL": c} for c in (30.0, 100.0, 107.0, 130.0, 86.0)] + [{**base, "CRCL": 86.0, "MALE": 0}]
    obs = _run(d, [_subject(i + 1, [{"AMT": 150.0, "CMT": d.cmt("po")}], t, cov=c) for i, c in enumerate(covs)])
    return {i: obs[obs.ID == i] for i in range(1, 7)}


def test_pregabalin_renal_effect(pregabalin_sim):
    """AUC ratio CrCL 30 vs 100 mL/min equals the clearance ratio of the published equation.

    Shoji 2011 (models.md A10): CL/F = 0.0462·min(CrCL, 107)·(IBW/62)^0.354 -> ratio 100/30 = 3.33. Above
    the 107 mL/min break point CL/F no longer rises (CrCL 130 = CrCL 107). Single-dose AUC = D/CL;
    tolerance = quadrature error (1e-3).
    """
    auc = {i: _auc(pregabalin_sim[i]) for i in range(1, 5)}  # AUC(0-300 h) = F·D/CL
    assert auc[1] / auc[2] == pytest.approx(100.0 / 30.0, rel=1e-3)
    assert auc[2] == pytest.approx(150.0 / (0.0462 * 100.0), rel=1e-3)
    assert auc[4] == pytest.approx(auc[3], rel=1e-9)


def test_pregabalin_half_life_vs_label(pregabalin_sim):
    """Terminal half-life vs the label's ≈6.3 h in normal renal function.

    Source: Lyrica label half-life 6.3 h, read on a WEB page quoting the label (droracle.ai); NOT in
    models.md. 'Normal renal function' is not a single CrCL: the model gives 6.2 h at the Shoji cohort mean
    CrCL 86 mL/min and 5.0 h at CrCL >= 107 mL/min (here 130; IBW 62 kg, BMI 25, age 59, man). Tolerance ±25 % for
    both (label mean from healthy volunteers; covariates of the label population unknown). The simulated
    slope (24-60 h) must also equal ln2·V/CL from the published equations (derived-vs-simulated, 1e-3).
    """
    for i, crcl in ((5, 86.0), (4, 130.0)):
        t_half = _half_life(pregabalin_sim[i], 24.0, 60.0)
        assert t_half == pytest.approx(6.3, rel=0.25), (crcl, t_half)
        assert t_half == pytest.approx(math.log(2) * 35.6 / (0.0462 * min(crcl, 107.0)), rel=1e-3)


def test_pregabalin_sex_effect_on_volume(pregabalin_sim):
    """V/F ×0.906 in women (models.md A10, MALE = 0): same AUC (CL unchanged), higher peak in women."""
    woman, man = pregabalin_sim[6], pregabalin_sim[5]
    assert _auc(woman) == pytest.approx(_auc(man), rel=1e-6)
    assert woman.CP.max() > man.CP.max()


# ---------------------------------------------------------------- ketamine


@pytest.fixture(scope="module")
def ketamine_sim():
    """ID 1: Nielsen 2017 regimen, 70 kg: 0.5 mg/kg bolus + 0.25 mg/kg/h for 4 h. ID 2: 35 mg bolus."""
    d = get_drug("ketamine")
    wt = 70.0
    nielsen = [{"AMT": 0.5 * wt, "CMT": 1}, {"AMT": 0.25 * wt * 4.0, "CMT": 1, "RATE": 0.25 * wt}]
    subs = [
        _subject(1, nielsen, np.arange(0.05, 4.0001, 0.05), cov={"WT": wt}),
        _subject(2, [{"AMT": 35.0, "CMT": 1}], np.arange(0.5, 24.0, 0.5), cov={"WT": wt}),
    ]
    obs = _run(d, subs)
    return obs[obs.ID == 1], obs[obs.ID == 2]


def test_ketamine_nielsen_regimen_reaches_analgesic_range(ketamine_sim):
    """0.5 mg/kg + 0.25 mg/kg/h (Nielsen 2017, Pain; clinical.md section 2) vs stanpumpR's analgesic range.

    models.md A12: stanpumpR uses 0.10-0.16 ug/mL (typical 0.12). Above the range right after the bolus;
    from 30 min to the end of a 4-h infusion the plasma level must lie inside 0.10-0.16 mg/L (no extra
    tolerance: the range is itself the target band). The steady state R/CL = 17.5/115.9 = 0.151 mg/L is in
    the range too.
    """
    reg, _ = ketamine_sim
    assert reg[reg.TIME <= 0.1].CP.max() > 0.16
    during = reg[reg.TIME >= 0.5]
    assert 0.10 <= during.CP.min() and during.CP.max() <= 0.16, (during.CP.min(), during.CP.max())
    css = 0.25 * 70.0 / (0.4381 * 60 * 0.063 * 70.0)
    assert 0.10 <= css <= 0.16


def test_ketamine_terminal_half_life_derived_vs_simulated(ketamine_sim):
    """Terminal half-life from the published micro-constants (eigenvalues of the 3x3 rate matrix in 1/min,
    models.md A12) vs the simulated log-linear slope 12-24 h after a bolus; tolerance 1e-3."""
    _, bolus = ketamine_sim
    k10, k12, k13, k21, k31 = 0.4381, 0.5921, 0.590, 0.247, 0.0146
    K = np.array([[-(k10 + k12 + k13), k21, k31], [k12, -k21, 0.0], [k13, 0.0, -k31]])
    t_half_derived = math.log(2) / -max(np.linalg.eigvals(K).real) / 60.0  # min -> h
    assert t_half_derived == pytest.approx(1.91, abs=0.01)
    assert _half_life(bolus, 12.0, 23.5) == pytest.approx(t_half_derived, rel=1e-3)


def test_s_ketamine_half_life_derived_vs_simulated():
    """S-ketamine (Simons 2022, models.md A12): simulated terminal slope vs eigenvalues of the published
    clearances/volumes (L/min -> L/h), at 70 kg and at 100 kg (allometry 0.75/1, UNVERIFIED): heavier
    patients have a longer half-life (WT^0.25). No published S-ketamine concentration is in models.md."""
    d = get_drug("s_ketamine")
    t = np.arange(0.5, 30.0, 0.5)
    obs = _run(
        d,
        [
            _subject(1, [{"AMT": 20.0, "CMT": 1}], t, cov={"WT": 70.0}),
            _subject(2, [{"AMT": 20.0, "CMT": 1}], t, cov={"WT": 100.0}),
        ],
    )
    th = []
    for sid, wt in ((1, 70.0), (2, 100.0)):
        s = wt / 70.0
        cl, q2, q3 = (60 * x * s**0.75 for x in (1.48, 2.43, 1.21))
        v1, v2, v3 = (x * s for x in (11.6, 39.0, 174.0))
        K = np.array([[-(cl + q2 + q3) / v1, q2 / v2, q3 / v3], [q2 / v1, -q2 / v2, 0.0], [q3 / v1, 0.0, -q3 / v3]])
        derived = math.log(2) / -max(np.linalg.eigvals(K).real)
        th.append(_half_life(obs[obs.ID == sid], 15.0, 29.5))
        assert th[-1] == pytest.approx(derived, rel=1e-3)
    assert th[1] == pytest.approx(th[0] * (100 / 70) ** 0.25, rel=1e-3)
