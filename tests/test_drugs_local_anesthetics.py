"""Tests of the local-anesthetic drug entries (models.md A11) and LAST thresholds (models.md C).

Entries: ``bupivacaine`` (Burm 1987 disposition + tissue depot), ``bupivacaine_liposomal`` (this project's
release model calibrated to the Exparel label), ``ropivacaine`` (Ollier 2015, total + unbound with a
postoperative rise of binding sites; nonlinear, ODE solver). Simulations are batched (several IDs per
dataset, one layout per model) to keep JIT compilation to one per model.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

import pkpd
from pkpd.drugs import get_drug, list_drugs
from pkpd.drugs.local_anesthetics import (
    EXPAREL_LABEL_LIMITS,
    LAST_THRESHOLDS,
    LIPOSOMAL_SITE_FITS,
    ToxicityThreshold,
    bupivacaine_liposomal_for_site,
    burm_intercompartmental_clearance,
    last_threshold,
    ropivacaine_binding_sites,
    ropivacaine_unbound,
)
from pkpd.errors import ModelSpecError
from pkpd.expr import evaluate_parameter_block

NAMES = ("bupivacaine", "bupivacaine_liposomal", "ropivacaine")
MW = 274.4  # g/mol, ropivacaine (general knowledge, as in the entry; UNVERIFIED)


def _values(drug, **cols):
    """Evaluate an entry's parameter block with numpy (covariate columns as keyword arrays)."""
    block = pkpd.load_params(drug.param_spec()).block
    return {
        k: float(np.asarray(v))
        for k, v in evaluate_parameter_block(block, {k: np.asarray(v, float) for k, v in cols.items()}, np).items()
    }


def _dataset(subjects, times, obs_cmt):
    """NONMEM dataset: ``subjects`` = list of (dose list [(time, amt, cmt)], extra columns dict)."""
    rows = []
    for i, (doses, extra) in enumerate(subjects, start=1):
        recs = [dict(ID=i, TIME=float(t), EVID=1, AMT=float(a), CMT=c, **extra) for t, a, c in doses]
        recs += [dict(ID=i, TIME=float(t), EVID=0, AMT=0.0, CMT=obs_cmt, **extra) for t in times]
        rows += sorted(recs, key=lambda r: (r["TIME"], -r["EVID"]))
    return pd.DataFrame(rows)


def _obs(out, ident):
    o = out[(out.EVID == 0) & (out.ID == ident)]
    return o.TIME.to_numpy(), o.CP.to_numpy()


def _peak(t, c):
    i = int(np.argmax(c))
    return float(c[i]), float(t[i])


# ================================================================ construction, sourcing, flags


def test_entries_in_library():
    for name in NAMES:
        d = get_drug(name)
        assert d.name in list_drugs() and d.drug_class == "local-anesthetic"
    assert get_drug("Exparel") is get_drug("bupivacaine_liposomal")
    assert get_drug("bupivacaine").routes == {"infiltration": 1, "perineural": 1, "iv": 2}
    assert get_drug("bupivacaine_liposomal").routes == {"infiltration": 1}
    assert get_drug("ropivacaine").routes == {"infiltration": 1}
    assert not pkpd.get_model("ropivacaine_ollier2015").is_linear  # unbound elimination: ODE solver
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_drug("ropivacaine").model = "1cmt_oral"


@pytest.mark.parametrize("name", NAMES)
def test_every_number_sourced(name):
    d = get_drug(name)
    for p in d.params:
        assert p.source.citation.strip() and p.unit.strip(), p.name
        if p.derived:
            assert p.note.strip() or "derived" in p.source.detail, p.name
    for c in d.covariates:
        assert c.source.citation.strip()
    assert set(pkpd.get_model(d.model).param_names) <= {p.name for p in d.params}
    text = d.describe()
    assert all(p.name in text for p in d.params) and d.notes and d.references


def test_unverified_flags():
    # models.md marks nothing in the Burm / Ollier rows UNVERIFIED. Values not in models.md are flagged:
    # bupivacaine FU (protein binding ~95 %) and the ropivacaine molecular weight (general knowledge).
    assert get_drug("bupivacaine").unverified_params() == ("FU",)
    assert get_drug("bupivacaine_liposomal").unverified_params() == ("FU",)
    assert get_drug("ropivacaine").unverified_params() == ("MW",)
    for name, p in (("bupivacaine", "FU"), ("ropivacaine", "MW")):
        assert "general knowledge, not in models.md" in get_drug(name)._param(p).note
    # the liposomal release parameters are this project's calibration and must say so
    lipo = get_drug("bupivacaine_liposomal")
    for p in ("FR", "KA", "KA2"):
        assert "this project's calibration" in lipo._param(p).note and "label" in lipo._param(p).source.citation
    notes = " ".join(lipo.notes)
    for text in ("FITTED", "ONLY COMPARED", "266 mg", "96 h", "Spine-wound", "Tmax"):
        assert text in notes


def test_ropivacaine_values_and_covariate():
    """models.md A11 (Ollier 2015 via NL): ka 3.58 1/h (SD 0.854), V/F 103 L (SD 0.452, (WT/70)^1.28),
    CL/F free 1310 L/h (SD 0.410), Kd 0.557 uM, sites 71.2 uM / 1.57 uM/h (SD 0.443 / 0.150)."""
    d = get_drug("ropivacaine")
    v = {p.name: p.value for p in d.params}
    assert (v["KA"], v["V"], v["CLU"], v["KDUM"], v["BS0UM"], v["KINUM"], v["TKIN"]) == (
        3.58,
        103.0,
        1310.0,
        0.557,
        71.2,
        1.57,
        12.0,
    )
    sd = {p.name: p.iiv_sd for p in d.params if p.iiv_sd is not None}
    assert sd == {"KA": 0.854, "V": 0.452, "CLU": 0.410, "BS0UM": 0.443, "KINUM": 0.150}
    # published direction and size of the weight effect: V = 103*(WT/70)^1.28
    assert _values(d, WT=100.0)["V"] == pytest.approx(103.0 * (100 / 70) ** 1.28, rel=1e-12)
    vals = _values(d, WT=70.0)
    assert vals["KD"] == pytest.approx(0.557 * MW / 1000) and vals["BS0"] == pytest.approx(71.2 * MW / 1000)
    assert vals["KIN"] == pytest.approx(1.57 * MW / 1000)


# ================================================================ bupivacaine (plain)


def test_burm_q_derivation_gives_published_terminal_half_life():
    """Burm 1987 (models.md A11): Vc 33 L, Vss 68 L, CL 0.52 L/min, terminal t1/2 143 min.

    Q is derived; check it independently of the engine: build the 2-cmt rate matrix with numpy from the
    entry's evaluated parameters and compare its slow eigenvalue with ln2/143 min (exact: rel 1e-10).
    """
    vals = _values(get_drug("bupivacaine"))
    v1, v2, cl, q = vals["V1"], vals["V2"], vals["CL"], vals["Q"]
    assert (v1, v1 + v2, cl) == pytest.approx((33.0, 68.0, 0.52 * 60))
    K = np.array([[-(cl + q) / v1, q / v2], [q / v1, -q / v2]])  # central, peripheral (1/h)
    lam = np.sort(-np.linalg.eigvals(K).real)
    assert 60 * math.log(2) / lam[0] == pytest.approx(143.0, rel=1e-10)  # minutes
    assert q == pytest.approx(60 * burm_intercompartmental_clearance(33.0, 68.0, 0.52, 143.0), rel=1e-12)
    assert 15.0 < 60 * math.log(2) / lam[1] < 40.0  # a distinct fast phase (23 min)
    with pytest.raises(ModelSpecError):  # no 2-cmt model has t1/2 < ln2*Vss/CL = 90.6 min
        burm_intercompartmental_clearance(33.0, 68.0, 0.52, 80.0)


@pytest.fixture(scope="module")
def bupi_sim():
    """One dataset, one compile: ID1 168.75 mg perineural (Robison), ID2 200 mg infiltration with
    ka 0.024/min (Martin & Neill), ID3 200 mg infiltration with the entry's ka, ID4 100 mg IV bolus."""
    d = get_drug("bupivacaine")
    t = np.r_[np.arange(0.01, 4.0, 0.01), np.arange(4.0, 24.01, 0.25)]
    dep, iv = d.cmt("perineural"), d.cmt("iv")
    assert d.cmt("infiltration") == dep
    subjects = [
        ([(0, 168.75, dep)], {"KAMIN": 0.0187}),
        ([(0, 200.0, dep)], {"KAMIN": 0.024}),
        ([(0, 200.0, dep)], {"KAMIN": 0.0187}),
        ([(0, 100.0, iv)], {"KAMIN": 0.0187}),
    ]
    spec = d.param_spec()
    assert spec["KA"] == pytest.approx(0.0187 * 60)
    spec["KA"] = "KAMIN * 60"  # per-subject ka in 1/min from the dataset (ID1/3/4 = the entry's value)
    return pkpd.simulate(_dataset(subjects, t, d.cmt("iv")), d.model, spec)


def test_bupivacaine_robison_peak(bupi_sim):
    """Robison 1991 (Br J Anaesth 66:228; models.md A11): mean peak 1.66 ug/mL after 168.75 mg femoral +
    sciatic block. The source fitted ka (0.0187/min) to this peak, so this checks the chain (derived Q,
    min -> h conversion, depot route): tolerance 3 % for ka rounded to 3 significant figures and the
    source's unknown handling of Q."""
    cmax, tmax = _peak(*_obs(bupi_sim, 1))
    assert cmax == pytest.approx(1.66, rel=0.03)
    assert 0.25 < tmax < 2.0


def test_bupivacaine_martin_neill_abdominal_infiltration(bupi_sim):
    """Martin & Neill 1987 (Br J Anaesth 59:1425; models.md A11): 200 mg abdominal infiltration peaked at
    2.23 ug/mL, ka ~0.024/min. With that ka: within 3 % (ka given to 2 significant figures). With the
    entry's default ka (fitted at another site, femoral/sciatic) the peak is an independent prediction:
    within 20 % (site-dependent absorption; observed difference -12 %), and lower, as ka is slower."""
    cmax_site, _ = _peak(*_obs(bupi_sim, 2))
    assert cmax_site == pytest.approx(2.23, rel=0.03)
    cmax_default, _ = _peak(*_obs(bupi_sim, 3))
    assert cmax_default == pytest.approx(2.23, rel=0.20)
    assert cmax_default < cmax_site


def test_bupivacaine_iv_terminal_half_life_and_auc(bupi_sim):
    """IV route: the simulated terminal half-life (log-linear, 8-24 h) reproduces Burm's 143 min (1 %,
    residual fast phase) and AUC(0-inf) = dose/CL with CL 0.52 L/min (1 %, trapezoid + tail)."""
    t, c = _obs(bupi_sim, 4)
    m = t >= 8.0
    slope = np.polyfit(t[m], np.log(c[m]), 1)[0]
    assert 60 * math.log(2) / -slope == pytest.approx(143.0, rel=0.01)
    t0 = np.r_[0.0, t]
    c0 = np.r_[100.0 / 33.0, c]
    auc = np.trapezoid(c0, t0) + c[-1] / -slope
    assert auc == pytest.approx(100.0 / (0.52 * 60), rel=0.01)


# ================================================================ liposomal bupivacaine

LIPO_T = np.unique(np.r_[np.arange(0.02, 8.0, 0.02), np.arange(8.0, 48.0, 0.5), np.arange(48.0, 120.01, 2.0)])


@pytest.fixture(scope="module")
def lipo_sim():
    """Default entry (hemorrhoidectomy set) and bunionectomy set; same layout (one compile):
    ID1 266 mg, ID2 106 mg infiltration."""
    out = {}
    for key, d in (
        ("default", get_drug("bupivacaine_liposomal")),
        ("bunion", bupivacaine_liposomal_for_site("bunionectomy")),
    ):
        c = d.cmt("infiltration")
        df = _dataset([([(0, 266.0, c)], {}), ([(0, 106.0, c)], {})], LIPO_T, 3)
        out[key] = pkpd.simulate(df, d.model, d.param_spec())
    return out


def _terminal_half_life(t, c, lo=48.0, hi=96.0):
    m = (t >= lo) & (t <= hi)
    return math.log(2) / -np.polyfit(t[m], np.log(c[m]), 1)[0]


def test_liposomal_reproduces_label_hemorrhoidectomy(lipo_sim):
    """ACCEPTANCE. Exparel label NCA (LBL, models.md A11): 266 mg hemorrhoidectomy Cmax 867 ng/mL, Tmax
    0.5 h, t1/2 24 h. Tolerance 25 % on Cmax and Tmax (the required acceptance margin; the label SD of Cmax
    is 353 ng/mL = 41 %) and 10 % on t1/2 (regression window 48-96 h vs the label's unstated window).
    These data were fitted (benchmarks/calibrate_liposomal_bupivacaine.py), so this checks that the
    entry's rounded values, the dose split and the units reproduce the calibration through simulate()."""
    t, c = _obs(lipo_sim["default"], 1)
    cmax, tmax = _peak(t, c)
    assert 1000 * cmax == pytest.approx(867.0, rel=0.25)
    assert tmax == pytest.approx(0.5, rel=0.25)
    assert _terminal_half_life(t, c) == pytest.approx(24.0, rel=0.10)


def test_liposomal_bunionectomy_site_set(lipo_sim):
    """Label bunionectomy (LBL, models.md A11): 106 mg, Cmax 166 (SD 92.7) ng/mL, Tmax 2 h, t1/2 34 h;
    fitted by the site set. Same tolerances as the acceptance test."""
    t, c = _obs(lipo_sim["bunion"], 2)
    cmax, tmax = _peak(t, c)
    assert 1000 * cmax == pytest.approx(166.0, rel=0.25)
    assert tmax == pytest.approx(2.0, rel=0.25)
    assert _terminal_half_life(t, c) == pytest.approx(34.0, rel=0.10)


def test_liposomal_site_drives_tmax_and_default_is_conservative(lipo_sim):
    """Not fitted, only compared: 266 mg SC in volunteers Cmax 129 +- 47 ng/mL (Clin Drug Investig 2017)
    and 266 mg in Chinese adults, geometric mean 170.9 ng/mL, maximum 374 (BMC Anesthesiol 2021), both in
    models.md A11. The model does NOT reproduce them (documented in the entry notes): both site sets
    over-predict. What is tested is the property the entry claims for LAST margins: at the label maximum
    dose the default does not under-predict any published 266 mg Cmax (mean + 2 SD of the SC study, the
    Chinese maximum) and stays below the 2000 ng/mL CNS threshold (models.md C). Also: the site drives
    Tmax (hemorrhoidectomy set earlier than bunionectomy set at the same dose)."""
    cmax_def, tmax_def = _peak(*_obs(lipo_sim["default"], 1))
    cmax_bun, tmax_bun = _peak(*_obs(lipo_sim["bunion"], 1))
    assert 1000 * cmax_def >= max(129 + 2 * 47, 170.9, 374.0)
    assert 1000 * cmax_bun >= 170.9  # even the slower site over-predicts the Chinese geometric mean
    assert cmax_def < last_threshold("bupivacaine_liposomal", "total", "CNS").value
    assert tmax_def < tmax_bun


def test_liposomal_structure_and_limits():
    """Small immediately available fraction, fast; liposomal fraction released far slower than the Burm
    disposition (beta = 0.29 1/h), so the terminal phase is release-limited. Label limits: models.md C."""
    for site, fit in LIPOSOMAL_SITE_FITS.items():
        assert 0.0 < fit["FR"] < 0.5 and fit["KA"] > 5 * fit["KA2"], site
        assert fit["KA2"] < 0.2 * math.log(2) / (143 / 60)
        d = bupivacaine_liposomal_for_site(site)
        assert d._param("KA2").value == fit["KA2"] and d.model == "2cmt_dual"
    assert (
        bupivacaine_liposomal_for_site("hemorrhoidectomy").param_spec()
        == get_drug("bupivacaine_liposomal").param_spec()
    )
    assert EXPAREL_LABEL_LIMITS["max_infiltration_mg"] == 266.0
    assert EXPAREL_LABEL_LIMITS["max_interscalene_mg"] == 133.0
    assert EXPAREL_LABEL_LIMITS["no_other_local_anesthetic_within_h"] == 96.0
    with pytest.raises(ModelSpecError, match="calibrated sites"):
        bupivacaine_liposomal_for_site("spine")


# ================================================================ ropivacaine: binding equation


def test_ropivacaine_binding_equation_independent():
    """total = Cu + B*Cu/(Kd + Cu) (Ollier 2015 1:1 binding; Kd 0.557 uM, B 71.2 uM then +1.57 uM/h from
    12 h): the returned Cu satisfies it and equals an independent bracketing root (brentq, in uM) over
    eight decades of total concentration and on both sides of 12 h."""
    totals = np.array([1e-6, 1e-3, 0.05, 0.5, 2.0, 5.0, 20.0, 60.0, 200.0])  # mg/L, beyond saturation too
    for t_h in (0.0, 11.9, 24.0, 72.0):
        cu = ropivacaine_unbound(totals, t_h)
        b_um = 71.2 + 1.57 * max(t_h - 12.0, 0.0)
        for ctot, c in zip(totals, cu):
            ctot_um = ctot * 1000 / MW
            ref = brentq(
                lambda x, b=b_um, c0=ctot_um: x + b * x / (0.557 + x) - c0, 0.0, ctot_um, xtol=1e-16, rtol=1e-14
            )
            assert c * 1000 / MW == pytest.approx(ref, rel=1e-9)
            assert c + c * (b_um * MW / 1000) / (0.557 * MW / 1000 + c) == pytest.approx(ctot, rel=1e-10)
    # binding sites: constant for 0-12 h, then produced at 1.57 uM/h
    b = ropivacaine_binding_sites([0.0, 12.0, 24.0]) * 1000 / MW
    assert b == pytest.approx([71.2, 71.2, 71.2 + 12 * 1.57])


def test_ropivacaine_unbound_fraction_falls_after_12h():
    """Direction of the published caveat (models.md C): postoperative AAG rises from ~12 h, so at a given
    total concentration the unbound fraction is constant over 0-12 h and falls afterwards. At 1 mg/L and
    low occupancy fu ~ Kd/(Kd + B): 0.557/71.8 = 0.78 % at 0-12 h; 0.557/(71.2 + 36*1.57) = 0.43 % at 48 h."""
    t = np.array([0.0, 6.0, 12.0, 24.0, 48.0, 96.0])
    fu = ropivacaine_unbound(1.0, t) / 1.0
    assert fu[0] == pytest.approx(fu[2], rel=1e-12) and np.all(np.diff(fu[2:]) < 0)
    assert fu[0] == pytest.approx(0.557 / (0.557 + 71.2), rel=0.06)
    assert fu[4] == pytest.approx(0.557 / (0.557 + 71.2 + 36 * 1.57), rel=0.06)


# ================================================================ ropivacaine: simulation (ODE)

ROPI_T = np.arange(0.5, 60.01, 0.5)
ROPI_DOSE_TIMES = (0.0, 12.0, 24.0, 36.0, 48.0)
N_VIRTUAL = 160
ETA_SD = {"KA": 0.854, "V": 0.452, "CLU": 0.410, "BS0UM": 0.443, "KINUM": 0.150}  # Ollier Table 2 via NL


@pytest.fixture(scope="module")
def ropi_sim():
    """3 mg/kg TAP boluses at 0, 12, 24, 36, 48 h (Ollier's protocol). ID1: typical 70-kg patient (no
    random effects, minor resection). ID2..: virtual Ollier cohort with the published IIV (log-normal SDs
    of Table 2 via NL), 9/16 major resections (CL/F 620 L/h; Ollier Table 1 counts via NL) and weights
    log-normal around the median 75.5 kg (as the NL vignette). One ODE compile for all."""
    d = get_drug("ropivacaine")
    rng = np.random.default_rng(2015)
    n = N_VIRTUAL + 1
    eta = {k: np.r_[0.0, rng.normal(0.0, s, N_VIRTUAL)] for k, s in ETA_SD.items()}
    major = np.r_[0.0, (rng.random(N_VIRTUAL) < 9 / 16).astype(float)]
    wt = np.r_[70.0, np.exp(rng.normal(math.log(75.5), 0.20, N_VIRTUAL))]
    cmt = d.cmt("infiltration")
    subjects = []
    for i in range(n):
        extra = {"WT": wt[i], "MAJOR": major[i], **{f"E{k}": eta[k][i] for k in ETA_SD}}
        subjects.append(([(td, 3.0 * wt[i], cmt) for td in ROPI_DOSE_TIMES], extra))
    spec = d.param_spec()
    for k in ETA_SD:
        spec[k] = f"({spec[k]}) * exp(E{k})"
    spec["CLU"] = f"{spec['CLU']} * (620.0 / 1310.0)**MAJOR"  # models.md A11: 620 L/h if >= 3 segments
    out = pkpd.simulate(_dataset(subjects, ROPI_T, 2), d.model, spec)
    out = out[out.EVID == 0].copy()
    bs0 = 71.2 * np.exp(out["EBS0UM"].to_numpy())
    kin = 1.57 * np.exp(out["EKINUM"].to_numpy())
    out["CU"] = ropivacaine_unbound(out.CP.to_numpy(), out.TIME.to_numpy(), bs0_um=bs0, kin_um_per_h=kin)
    return out


def test_ropivacaine_matches_source_kinetic_binding_model(ropi_sim):
    """Independent re-implementation (scipy LSODA) of the SOURCE structure, not of this entry's: Ollier's
    kinetic binding ODEs in uM as transcribed by NL (free, complex and free-site states, kb = 100
    1/(uM h), kin switched on at 12 h), typical 70-kg patient. The entry uses the rapid-equilibrium
    reduction; the paper reports no effect of kb over 1e2-1e15, so both must agree: total within 1 %,
    unbound within 3 % (kb = 100 lags equilibrium by ~1 % at absorption peaks)."""
    v, cl, ka, kd, kb = 103.0, 1310.0, 3.58, 0.557, 100.0

    def rhs(t, y):
        dep, free, cx, bs = y  # umol, umol, umol, uM (free sites)
        bind = kb * (free / v) * bs - kb * kd * (cx / v)
        return [-ka * dep, ka * dep - cl * free / v - bind * v, bind * v, 1.57 * (t >= 12.0) - bind]

    y = np.array([0.0, 0.0, 0.0, 71.2])
    tot, fre = [], []
    for td in ROPI_DOSE_TIMES:
        y[0] += 210.0 * 1000 / MW
        end = td + 12.0 if td < 48.0 else 60.0
        te = ROPI_T[(ROPI_T > td) & (ROPI_T <= end)]
        sol = solve_ivp(rhs, (td, end), y, method="LSODA", t_eval=te, rtol=1e-9, atol=1e-12)
        tot.append((sol.y[1] + sol.y[2]) / v * MW / 1000)
        fre.append(sol.y[1] / v * MW / 1000)
        y = sol.y[:, -1].copy()
    typ = ropi_sim[ropi_sim.ID == 1]
    np.testing.assert_allclose(typ.CP.to_numpy(), np.concatenate(tot), rtol=0.01)
    np.testing.assert_allclose(typ.CU.to_numpy(), np.concatenate(fre), rtol=0.03)


def test_ropivacaine_repeated_tap_total_rises_unbound_buffered(ropi_sim):
    """models.md C caveat (Ollier 2015): with 3 mg/kg q12h the postoperative rise of binding sites makes
    TOTAL concentration climb over the days while UNBOUND drug is buffered. Typical patient: the total
    peak after the 5th dose exceeds the 1st by > 50 % (simulated +81 %), while the unbound peak changes by
    less than 30 % and its last-dose peak is below the 2nd-dose peak. Direction/size check of a published
    qualitative statement; models.md gives no measured ropivacaine concentration for this regimen.
    Also: unbound stays < 2 % of total (NL vignette, replicating Ollier Fig. 1: 'free fraction < 2 %
    throughout'; NOT in models.md), and below the Knudsen 1997 unbound CNS threshold 0.6 mg/L (a
    threshold, not an observation)."""
    typ = ropi_sim[ropi_sim.ID == 1]
    t, ctot, cu = typ.TIME.to_numpy(), typ.CP.to_numpy(), typ.CU.to_numpy()

    def peak(x, k):
        m = (t > ROPI_DOSE_TIMES[k]) & (t <= ROPI_DOSE_TIMES[k] + 12.0)
        return x[m].max()

    assert peak(ctot, 4) > 1.5 * peak(ctot, 0)
    assert all(peak(ctot, k + 1) > peak(ctot, k) for k in range(4))
    assert abs(peak(cu, 4) / peak(cu, 0) - 1) < 0.30 and peak(cu, 4) < peak(cu, 1)
    assert np.all(cu / ctot < 0.02)
    assert cu.max() < last_threshold("ropivacaine", "unbound").value


def test_ropivacaine_free_cmax_vs_ollier_observed_maximum(ropi_sim):
    """Published value (NOT in models.md): Ollier 2015 Discussion, as quoted by the NL vignette
    Ollier_2015_ropivacaine, reports the maximal observed FREE ropivacaine concentration in the 16-patient
    cohort: 0.34 uM (0.093 mg/L). A cohort maximum is compared with its predictive distribution: from the
    virtual cohort (published IIV, 9/16 major resections) draw 2000 cohorts of 16 and take each cohort's
    highest per-patient free Cmax; 0.34 uM must lie within the 5-95 % range of that distribution. The
    virtual sampling is dense (0.5 h), which biases simulated maxima upwards; the typical patient's free
    Cmax must also lie below the observed cohort maximum."""
    vc = ropi_sim[ropi_sim.ID > 1]
    cmax_um = vc.groupby("ID").CU.max().to_numpy() * 1000 / MW
    rng = np.random.default_rng(16)
    cohort_max = np.array([rng.choice(cmax_um, 16, replace=False).max() for _ in range(2000)])
    lo, hi = np.percentile(cohort_max, [5, 95])
    assert lo < 0.34 < hi, (lo, hi)
    typical = ropi_sim[ropi_sim.ID == 1].CU.max() * 1000 / MW
    assert typical < 0.34


# ================================================================ LAST thresholds


def test_last_thresholds_table():
    """models.md C: bupivacaine total CNS ~2000 ng/mL, cardiac >= 4000 ng/mL (manufacturer HCP page);
    unbound bupivacaine ~0.3 mg/L, unbound ropivacaine ~0.6 mg/L (Knudsen 1997); ropivacaine total
    ~2.2 ug/mL venous UNVERIFIED. All in mg/L."""
    want = {
        ("bupivacaine", "total", "CNS"): (2.0, False),
        ("bupivacaine", "total", "cardiac"): (4.0, False),
        ("bupivacaine", "unbound", "CNS"): (0.3, False),
        ("ropivacaine", "unbound", "CNS"): (0.6, False),
        ("ropivacaine", "total", "CNS"): (2.2, True),
    }
    got = {(t.drug, t.species, t.effect): (t.value, t.is_unverified) for t in LAST_THRESHOLDS}
    assert got == want
    for th in LAST_THRESHOLDS:
        assert isinstance(th, ToxicityThreshold) and th.source.citation.strip()
    assert "Knudsen 1997" in last_threshold("ropivacaine", "unbound").source.citation
    assert last_threshold("Bupivacaine_liposomal", "total", "cardiac").value == 4.0
    # Knudsen: ropivacaine's tolerated unbound concentration is twice bupivacaine's
    assert last_threshold("ropivacaine", "unbound").value == 2 * last_threshold("bupivacaine", "unbound").value
    with pytest.raises(ModelSpecError):
        last_threshold("ropivacaine", "total", "cardiac")
    with pytest.raises(dataclasses.FrozenInstanceError):
        LAST_THRESHOLDS[0].value = 3.0
