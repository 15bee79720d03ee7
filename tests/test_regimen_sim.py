"""Tests of the population regimen simulator (pkpd.population), the PD combination rule and the pain model.

Independent references used here:
* the NONMEM-semantics event engine (:func:`pkpd.simulate`, itself checked against NONMEM's nmtests):
  the realized dose record of a simulation, replayed through the engine, must give the same amounts in every
  compartment (tolerance 1e-9 relative: both are exact solutions of the same linear ODE);
* closed forms for the untreated pain baseline and the Greco quadratic;
* finite differences for the gradient of the relaxed objective;
* the Monte-Carlo mean of the exact (sampled) PRN/PCA events for the relaxed mean-field mode.

The calibrated outcome model against the Iyer 2023 arms and the other stated targets: tests/test_calibration.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import pkpd
from pkpd.drugs import get_drug
from pkpd.errors import ModelSpecError, PKPDError
from pkpd.pain import PainModel
from pkpd.patients import spine72_population
from pkpd.pd import (
    PD_LIBRARY,
    combine_units,
    get_pd,
    inverse_reference_curve,
    reference_curve,
)
from pkpd.population import SimOptions, mme_factor, relaxed_objective, simulate_regimen
from regimens import PCA, PRN, Modality, Regimen, Scheduled, get_regimen

T_OFF = 5.0  # the engine needs TIME >= 0: regimen times (h after surgery) are shifted by this much

_MIXED = Regimen(
    name="mixed",
    description="every input kind the simulator handles",
    scheduled=(
        Scheduled("acetaminophen", "po", dose_mg=1000.0, start_h=-2.0, every_h=6.0, stop_h=72.0),  # lagged bolus
        Scheduled("ketamine", "iv", rate_mg_h=20.0, start_h=-2.03, stop_h=-0.41),  # off-grid infusion
        Scheduled("ketamine", "iv", dose_mg=1.0, infusion_h=0.02, start_h=-1.03),  # inside one 5-min step
        Scheduled("bupivacaine_liposomal", "infiltration", dose_mg=266.0, start_h=-0.25),  # split depots
    ),
    prn=(PRN("oxycodone", "po", 5.0, 4.0, 4.0, start_h=0.0), PRN("oxycodone", "po", 10.0, 7.0, 4.0, start_h=0.0)),
    pca=(
        PCA(
            "hydromorphone",
            "iv",
            0.2,
            10.0,
            start_h=0.0,
            stop_h=24.0,
            loading_mg=1.0,
            basal_mg_h=0.1,
            hourly_max_mg=0.6,
        ),
    ),
)


def _pop(n: int, seed: int = 11) -> pd.DataFrame:
    return spine72_population(n, seed)


@pytest.fixture(scope="module")
def mixed():
    pop = _pop(3)
    res = simulate_regimen(_MIXED, pop, seed=5, options=SimOptions(record_states=True))
    return pop, res


def _engine_states(res, drug_name: str, i: int, pid) -> tuple[np.ndarray, np.ndarray]:
    d = get_drug(drug_name)
    model = pkpd.get_model(d.model)
    rows = []
    doses = res.doses[(res.doses.ID == pid) & (res.doses.DRUG == d.name)]
    for _, q in doses.iterrows():
        rate = q.AMT / q.DUR if q.DUR > 0 else 0.0
        rows.append(dict(ID=1, TIME=q.TIME + T_OFF, EVID=1, AMT=q.AMT, CMT=d.cmt(q.ROUTE), RATE=rate))
    rows += [dict(ID=1, TIME=t + T_OFF, EVID=0, AMT=0.0, CMT=0, RATE=0.0) for t in res.times]
    df = pd.DataFrame(rows).sort_values(["TIME", "EVID"], ascending=[True, False], kind="stable")
    prm = res.parameters[d.name].iloc[i]
    spec = {k: float(prm[k]) for k in d.param_spec()}
    if d.name == "acetaminophen":
        spec["F1"], spec["ALAG1"] = float(prm["F1"]), float(prm["ALAG1"])
    out = pkpd.simulate(df.reset_index(drop=True), model, spec)
    ref = out[out.EVID == 0][list(model.compartments)].to_numpy()
    off, _ = res.state_index[d.name]
    return res.states[i][:, off : off + model.n_cmt], ref


@pytest.mark.parametrize("drug", ["acetaminophen", "ketamine", "bupivacaine_liposomal", "oxycodone", "hydromorphone"])
def test_realized_doses_replay_exactly_through_the_event_engine(mixed, drug):
    """Scheduled (lag, split depots, off-grid and sub-step infusions) and PRN/PCA doses: 1e-9 relative."""
    pop, res = mixed
    for i, pid in enumerate(pop.ID):
        got, ref = _engine_states(res, drug, i, pid)
        scale = max(np.abs(ref).max(), 1e-30)
        assert np.abs(got - ref).max() / scale < 1e-9, (drug, pid)


def test_rescue_rules_respected(mixed):
    """Lockout, hourly cap (0.6 mg = 3 demands), PRN interval, windows and thresholds hold in the record."""
    pop, res = mixed
    d = res.doses
    for pid in pop.ID:
        pca = d[(d.ID == pid) & (d.KIND == "pca")].TIME.to_numpy()
        assert np.all(np.diff(pca) >= 10 / 60 - 1e-9)
        assert np.all((pca >= 0) & (pca < 24))
        for t in pca:
            assert np.sum((pca > t - 1.0 + 1e-9) & (pca <= t + 1e-9)) <= 3
        prn = d[(d.ID == pid) & (d.KIND == "prn")]
        assert np.all(np.diff(prn.TIME.to_numpy()) >= 4.0 - 1e-9)
        # the PRN rule reads the score the patient reported (the model's pain plus reporting noise)
        rep = prn.NRS_REPORTED.to_numpy()
        assert np.all(rep >= 4.0 - 1e-9)
        assert np.all((prn.AMT == 10.0) == (rep >= 7.0))
        assert d[(d.ID == pid) & (d.KIND == "scheduled")].NRS_REPORTED.isna().all()
    loading = d[(d.KIND == "scheduled") & (d.DRUG == "hydromorphone")]
    assert len(loading) >= 3  # loading dose (and the basal record) per patient


def test_outcomes_consistent_with_dose_record(mixed):
    pop, res = mixed
    p = res.patients
    d = res.doses
    for pid in pop.ID:
        dd = d[(d.ID == pid) & (d.KIND != "scheduled") & (d.TIME < 72)]
        mme = sum(a * mme_factor(g, r) for a, g, r in zip(dd.AMT, dd.DRUG, dd.ROUTE))
        # the hydromorphone loading dose (1 mg at 0 h) and basal (0.1 mg/h x 24 h) are scheduled opioid doses
        mme += (1.0 + 2.4) * mme_factor("hydromorphone", "iv")
        row = p[p.ID == pid].iloc[0]
        assert row.MME_0_72 == pytest.approx(mme, rel=1e-12)
        assert row.N_PCA == ((d.ID == pid) & (d.KIND == "pca")).sum()
    assert np.all((p.TIT3 >= 0) & (p.TIT3 <= p.TIT4) & (p.TIT4 <= 1))
    assert np.all((p.P_OIRD > 0) & (p.P_OIRD < 1)) and np.all((p.MIN_VE > 0) & (p.MIN_VE <= 1))
    # peak bupivacaine: the liposomal product alone, compared with the engine's central concentration
    for i, pid in enumerate(pop.ID):
        _, ref = _engine_states(res, "bupivacaine_liposomal", i, pid)
        v = res.parameters["bupivacaine_liposomal"].iloc[i]["V1"]
        model = pkpd.get_model(get_drug("bupivacaine_liposomal").model)
        assert p.PEAK_BUPI.iloc[i] == pytest.approx(ref[:, model.central].max() / v * 1000.0, rel=1e-9)


def test_deterministic_per_patient_and_chunk_invariant(mixed):
    pop, res = mixed
    again = simulate_regimen(_MIXED, pop, seed=5, options=SimOptions(record_states=True))
    pd.testing.assert_frame_equal(res.patients, again.patients)
    # patient 2 alone, in a chunk of its own with padding, gives the same trajectory
    alone = simulate_regimen(
        _MIXED, pop.iloc[[1, 2]].reset_index(drop=True), seed=5, chunk_size=1, options=SimOptions(record_states=True)
    )
    np.testing.assert_allclose(alone.nrs[0], res.nrs[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(alone.states[1], res.states[2], rtol=1e-12, atol=1e-15)
    other = simulate_regimen(_MIXED, pop, seed=6, options=SimOptions(record_states=True))
    assert not np.array_equal(other.patients.N_PCA.to_numpy(), res.patients.N_PCA.to_numpy()) or not np.allclose(
        other.nrs, res.nrs
    )


def test_batch_size_never_changes_a_patients_bits(mixed):
    """A patient's outcomes, hourly summaries, trajectories and states are the same bits whether it is
    simulated among 20 rows, 17 or 3: the kernel's float sums (over the grid, a block's states, the rescue
    items, the running infusions) are added in fixed orders, not in the orders XLA picks from the batch shape
    (which moved PAIN_EXCESS by 1 ulp between 1 and 8 devices, tests/test_scaleout.py)."""
    pop = _pop(20)
    opts = SimOptions(record_states=True)
    full = simulate_regimen(_MIXED, pop, seed=5, options=opts)
    for lo, hi in ((0, 3), (3, 20)):
        part = simulate_regimen(_MIXED, pop.iloc[lo:hi], seed=5, options=opts)
        pd.testing.assert_frame_equal(
            part.patients.reset_index(drop=True), full.patients.iloc[lo:hi].reset_index(drop=True), check_exact=True
        )
        for k in ("nrs", "nrs_hourly", "mme_hourly", "states"):
            assert np.array_equal(getattr(part, k), getattr(full, k)[lo:hi]), k
        ids = set(pop.ID.iloc[lo:hi])
        pd.testing.assert_frame_equal(
            part.doses.reset_index(drop=True),
            full.doses[full.doses.ID.isin(ids)].reset_index(drop=True),
            check_exact=True,
        )


def test_relaxed_mode_mean_field_and_gradient():
    """Relaxed expected MME within 15 % of the Monte-Carlo mean of sampled events (same typical patient, 300
    replicates); pain AUC within 5 %; jax.grad equals central finite differences (rel 1e-5)."""
    import jax
    import jax.numpy as jnp

    reg = get_regimen("IYER_APAP")
    one = _pop(1, 5)
    pop = pd.concat([one] * 300, ignore_index=True)
    pop["ID"] = np.arange(1, 301)
    opts = SimOptions(iiv=False, record_doses=False)
    ex = simulate_regimen(reg, pop, seed=2, options=opts).patients
    f, ns, nr = relaxed_objective(reg, one, seed=2, options=opts)
    assert (ns, nr) == (1, 3)  # oxycodone PO PRN, hydromorphone IV breakthrough, hydromorphone PCA
    out = f(jnp.ones(ns), jnp.ones(nr))
    assert float(out["MME_0_72"][0]) == pytest.approx(ex.MME_0_72.mean(), rel=0.15)
    assert float(out["PAIN_AUC"][0]) == pytest.approx(ex.PAIN_AUC.mean(), rel=0.05)
    g = jax.grad(lambda m: f(m, jnp.ones(nr))["MME_0_72"].sum())(jnp.ones(ns))
    h = 1e-4
    fd = f(jnp.ones(ns) + h, jnp.ones(nr))["MME_0_72"].sum() - f(jnp.ones(ns) - h, jnp.ones(nr))["MME_0_72"].sum()
    assert float(g[0]) == pytest.approx(float(fd) / (2 * h), rel=1e-5)
    assert float(g[0]) < 0  # more acetaminophen, less rescue opioid
    gr = jax.grad(lambda r: f(jnp.ones(ns), r)["PAIN_EXCESS"].sum())(jnp.ones(nr))
    assert np.all(np.isfinite(np.asarray(gr)))


def test_pain_baseline_closed_form_and_modalities():
    """With a negligible drug exposure and no variability, NRS follows B(t) of pkpd.pain exactly (within the
    relief of 0.01 mg acetaminophen, < 1e-4 NRS); the TENS term is off by default (note) and removes exactly
    tens_reduction NRS inside its windows when the assumption is switched on (a window on day 3, where the
    reference setting's pain is below the NRS ceiling of 10)."""
    reg = Regimen(
        name="baseline",
        description="",
        scheduled=(Scheduled("acetaminophen", "iv", dose_mg=0.01),),
        modalities=(Modality("tens", ((60.0, 62.0),)),),
    )
    pop = _pop(1, 3)
    off = simulate_regimen(reg, pop, seed=0, options=SimOptions(iiv=False))
    assert any("tens" in n for n in off.notes)
    pm = PainModel()
    t = off.times
    tol = pop.OPIOID_TOL.iloc[0] * pm.tolerant_b0_shift.value
    b0 = pm.b0.value + tol
    expect = pm.b_inf.value + (b0 - pm.b_inf.value) * np.exp(-math.log(2) * np.maximum(t, 0) / pm.t_half.value)
    expect += pm.diurnal_amp.value * np.cos(
        2 * np.pi * (t - (pm.diurnal_peak_clock.value - pm.surgery_end_clock.value)) / 24.0
    )
    expect *= pm.setting_scale.value  # the reference setting's pain-curve multiplier (pkpd.outcome)
    np.testing.assert_allclose(off.nrs[0], np.clip(expect, 0, 10), atol=1e-4)
    on = simulate_regimen(
        reg, pop, seed=0, options=SimOptions(iiv=False, pain=PainModel(enable_assumed_modalities=True))
    )
    diff = off.nrs[0] - on.nrs[0]
    inside = (t >= 60) & (t < 62)
    assert off.nrs[0][inside].max() < 10.0 - pm.tens_reduction.value
    np.testing.assert_allclose(diff[inside], pm.tens_reduction.value, atol=1e-12)
    np.testing.assert_allclose(diff[~inside], 0.0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- PD and errors
def test_reference_curve_inverse_and_loewe_additivity():
    e = np.linspace(0.0, 0.95, 20)
    np.testing.assert_allclose(reference_curve(inverse_reference_curve(e, 1.5), 1.5), e, atol=1e-12)
    # two opioids at half their EC50 each = one at its EC50 (Loewe additivity in normalized units)
    assert reference_curve(combine_units(np.array([0.5, 0.5])), 1.5) == pytest.approx(0.5)
    u = np.array([0.7, 1.3])
    x = combine_units(u, alpha=np.array([[0, 2.0], [0, 0]]))
    assert x**2 - u.sum() * x - 2.0 * u[0] * u[1] == pytest.approx(0.0, abs=1e-12)  # Greco quadratic
    assert combine_units(u, alpha=np.zeros((2, 2))) == pytest.approx(u.sum())
    assert x > u.sum()  # alpha > 0: synergy


def test_pd_library_sourced_and_flagged():
    for name, entry in PD_LIBRARY.items():
        get_drug(name)
        for key, v in entry.values().items():
            assert str(v.source.citation).strip(), (name, key)
        if entry.kind != "opioid":
            assert entry.unverified(), name  # every non-opioid ceiling is an assumption or calibrated
    assert PD_LIBRARY["acetaminophen"].ec50.value == 9.98 and not PD_LIBRARY["acetaminophen"].ec50.is_unverified
    with pytest.raises(ModelSpecError, match="no analgesic PD for tramadol"):
        get_pd("tramadol")


@pytest.mark.parametrize(
    "regimen, match",
    [
        (
            Regimen(name="x", description="", scheduled=(Scheduled("tramadol", "po_er", dose_mg=100.0),)),
            "no analgesic PD for tramadol",
        ),
        (
            Regimen(name="x", description="", scheduled=(Scheduled("ropivacaine", "infiltration", dose_mg=150.0),)),
            "nonlinear",
        ),
    ],
)
def test_unsupported_regimens_clear_errors(regimen, match):
    with pytest.raises(PKPDError, match=match):
        simulate_regimen(regimen, _pop(2))


def test_missing_covariates_named():
    pop = _pop(3).drop(columns=["SCR", "CRCL"])
    reg = Regimen(name="x", description="", scheduled=(Scheduled("gabapentin", "po", dose_mg=300.0),))
    with pytest.raises(ModelSpecError, match="gabapentin needs SCR"):
        simulate_regimen(reg, pop)
    with pytest.raises(PKPDError, match="WT"):
        simulate_regimen(get_regimen("C1"), _pop(3).drop(columns=["WT"]))
    with pytest.raises(ModelSpecError, match="ID column"):
        simulate_regimen(get_regimen("C1"), _pop(3).drop(columns=["ID"]))


def test_auc_and_cmax_against_closed_forms():
    """One 1,000 mg IV acetaminophen bolus (3-compartment disposition) at t = 0, no rescue: AUC_0-72 equals
    dose / CL (the closed-form AUC_0-inf of a linear model; the 72-h truncation is < 1e-8 of it at
    acetaminophen's t1/2 of ~2.5 h) within 2e-3 (the trapezoid rule on the 5-min grid overestimates a convex
    decay by ~(lambda dt)^2 / 12 of the fast distribution phase's share: up to 1.1e-3 seen); CMAX_ equals the
    largest value of the recorded concentration trajectory, and the trajectory at t = 0 equals dose / V1."""
    reg = Regimen(name="apap", description="", scheduled=(Scheduled("acetaminophen", "iv", dose_mg=1000.0),))
    res = simulate_regimen(reg, _pop(4), options=SimOptions(record_concentrations=True))
    par = res.parameters["acetaminophen"]
    np.testing.assert_allclose(res.patients["AUC_acetaminophen"], 1000.0 / par["CL"], rtol=2e-3)
    conc = res.concentrations["acetaminophen"]
    np.testing.assert_allclose(res.patients["CMAX_acetaminophen"], conc[:, res.times >= 0].max(1), rtol=1e-12)
    np.testing.assert_allclose(conc[:, np.argmin(np.abs(res.times))], 1000.0 / par["V1"], rtol=1e-9)


def test_parameter_override_columns():
    """A column gabapentin.CL gives those rows exactly that clearance (the parameter table shows it, and the
    AUC_0-72 follows the one-compartment closed form F*D/CL * (1 - (ka e^-kT - k e^-kaT)/(ka - k)), k = CL/V,
    within 2e-3: trapezoid rule); NaN rows keep their own draw; pain.b0 sets the untreated pain score; an
    override naming no parameter of the drug is an error naming the column."""
    reg = Regimen(name="g", description="", scheduled=(Scheduled("gabapentin", "po", dose_mg=600.0),))
    pop = _pop(3)
    base = simulate_regimen(reg, pop)
    pop2 = pop.copy()
    pop2["gabapentin.CL"] = [2.0, np.nan, 8.0]
    res = simulate_regimen(reg, pop2)
    cl = res.parameters["gabapentin"]["CL"].to_numpy()
    assert cl[0] == 2.0 and cl[2] == 8.0 and cl[1] == base.parameters["gabapentin"]["CL"].iloc[1]
    f1 = 823.0 / (1120.0 + 600.0)  # DMAX / (DOSE50 + AMT), the library's saturable bioavailability
    p = res.parameters["gabapentin"]
    k, ka, T = p["CL"] / p["V"], p["KA"], 72.0
    auc = f1 * 600.0 / p["CL"] * (1 - (ka * np.exp(-k * T) - k * np.exp(-ka * T)) / (ka - k))
    np.testing.assert_allclose(res.patients["AUC_gabapentin"], auc, rtol=2e-3)
    # pain.b0 / pain.t_half / pain.sensitivity: the untreated NRS is the closed form
    # b_inf + (b0 - b_inf) 2^(-t / t_half) + amp cos(2 pi (t - phase) / 24), times the sensitivity
    pain = pop.copy()
    pain["pain.b0"] = [9.0, 5.0, np.nan]
    pain["pain.t_half"] = [24.0, 12.0, np.nan]
    pain["pain.sensitivity"] = [1.0, 0.8, np.nan]
    none = Regimen(name="none", description="", scheduled=(), horizon_h=72.0)
    r0 = simulate_regimen(none, pop)
    r = simulate_regimen(none, pain)
    pm = PainModel()
    t = r.times
    phase = pm.diurnal_peak_clock.value - pm.surgery_end_clock.value
    for i, (b0, th, sens) in enumerate([(9.0, 24.0, 1.0), (5.0, 12.0, 0.8)]):
        y = (
            pm.b_inf.value
            + (b0 - pm.b_inf.value) * 2.0 ** (-np.maximum(t, 0) / th)
            + pm.diurnal_amp.value * np.cos(2 * np.pi * (t - phase) / 24.0)
        ) * sens
        np.testing.assert_allclose(r.nrs[i], np.clip(y, 0, 10), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r.nrs[2], r0.nrs[2])  # NaN: the patient's own draw
    bad = pop.copy()
    bad["gabapentin.CLX"] = 1.0
    with pytest.raises(ModelSpecError, match="gabapentin.CLX"):
        simulate_regimen(reg, bad)


def test_per_patient_rescue_tables_equal_separate_regimens():
    """simulate_regimen(rescue_tables=...) with a different PRN policy per patient gives each patient the
    outcomes of the regimen carrying that policy (same IDs, same draws): 1e-12 relative."""
    from pkpd.population import RegimenPlan

    sched = (Scheduled("acetaminophen", "po", dose_mg=1000.0, start_h=0.0, every_h=6.0),)
    pol_a = (PRN("oxycodone", "po", 5.0, 4.0, 4.0), PRN("oxycodone", "po", 10.0, 7.0, 4.0))
    pol_b = (PRN("oxycodone", "po", 5.0, 5.0, 3.0), PRN("oxycodone", "po", 5.0, 7.0, 3.0))
    reg_a = Regimen(name="a", description="", scheduled=sched, prn=pol_a)
    reg_b = Regimen(name="b", description="", scheduled=sched, prn=pol_b)
    pop = _pop(4)
    tabs = {}
    ta = RegimenPlan.build(reg_a, pop, SimOptions()).rescue_tables(1)
    tb = RegimenPlan.build(reg_b, pop, SimOptions()).rescue_tables(1)
    which = [0, 1, 1, 0]
    for k in ta:
        tabs[k] = np.concatenate([(ta, tb)[w][k] for w in which])
    mixed_res = simulate_regimen(reg_a, pop, rescue_tables=tabs).patients
    for i, w in enumerate(which):
        alone = simulate_regimen((reg_a, reg_b)[w], pop.iloc[[i]]).patients
        for col in ("MME_0_72", "N_PRN", "TIT3", "PAIN_AUC"):
            assert mixed_res[col].iloc[i] == pytest.approx(alone[col].iloc[0], rel=1e-12, abs=1e-12), (i, col)
    with pytest.raises(ModelSpecError, match="rescue intervals"):
        simulate_regimen(reg_b, pop, rescue_tables={k: np.concatenate([ta[k]] * 4) for k in ta})


@pytest.mark.parametrize("k", [1, 3, 16, 17])
def test_variability_draws_equal_unpadded_draws(k):
    """The between-patient normals are drawn in blocks of 16 per stream (one compiled program for every stream
    length) and the first k kept: they must be the draws of a length-k stream, element for element (JAX's
    partitionable threefry numbers element j by counter j). Reference: the documented stream computed
    directly, key = fold_in(fold_in(PRNGKey(seed), crc32(stream)), ID), float32 normals of length k, compiled
    with the same options (bit for bit); and JAX's own op-by-op draw, whose compiled inverse error function
    may differ in the last float32 bit (relative 2e-7)."""
    import jax
    import jax.numpy as jnp

    from pkpd import xla
    from pkpd.population.draws import _crc, _normals

    ids = np.array([1, 2, 7, 1001])
    got = _normals(5, ids, "oxycodone", k)
    base = jax.random.fold_in(jax.random.PRNGKey(5), _crc("oxycodone"))
    draw = xla.jit(lambda key: jax.random.normal(key, (k,), dtype=jnp.float32), fast_compile=True)
    ref = np.stack([np.asarray(draw(jax.random.fold_in(base, int(i)))) for i in ids]).astype(float)
    assert got.shape == (len(ids), k)
    np.testing.assert_array_equal(got, ref)
    eager = np.stack(
        [np.asarray(jax.random.normal(jax.random.fold_in(base, int(i)), (k,), dtype=jnp.float32)) for i in ids]
    ).astype(float)
    np.testing.assert_allclose(got, eager, rtol=2.4e-7, atol=1e-7)


def test_a_new_seed_never_recompiles_the_kernel():
    """The seed is a row array of the compiled kernel (keys folded per row inside it), not a constant baked
    into the program: three seeds of the same regimen and population shape run one compiled program, give
    different demand draws, and the same seed gives the same result. The relaxed programs are shared too."""
    from pkpd import population as rs
    from pkpd.patients import spine72_population
    from regimens.io import get_regimen

    reg, pop = get_regimen("C1"), spine72_population(8, 2)
    opts = rs.SimOptions(record_trajectories=False)
    res = [rs.simulate_regimen(reg, pop, seed=s, options=opts).patients.MME_0_72.to_numpy() for s in (11, 12, 13, 11)]
    plan = rs.RegimenPlan.build(reg, pop, opts)
    assert plan._compiled().rows.single._cache_size() == 1
    assert not np.array_equal(res[0], res[1]) or not np.array_equal(res[1], res[2])
    np.testing.assert_array_equal(res[0], res[3])
    progs = {id(rs.relaxed_program(reg, pop, seed=s)[0]) for s in (1, 2)}
    assert len(progs) == 1


def test_regimens_satisfy_the_simulators_protocol():
    """pkpd.population reads a regimen through pkpd.population.RegimenLike (pkpd never imports regimens):
    every shipped regimen and the test regimen with every item kind provide each member it names (a runtime
    check of presence; mypy checks the types where the regimen is annotated)."""
    from pkpd.population import RegimenLike
    from regimens import list_regimens

    for reg in [_MIXED] + [get_regimen(n) for n in list_regimens()]:
        assert isinstance(reg, RegimenLike), reg.name
    assert not isinstance(object(), RegimenLike)
