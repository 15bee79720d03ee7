"""Outcome-model calibration (regimens.calibration): the emulator and the likelihood against known answers,
the shipped posterior's provenance and validation figures, and the acceptance checks of the issue with
the exact simulator.

Independent references: a synthetic linear "simulator" whose parameters are known (the GP with a linear mean
must reproduce it, the NUTS posterior must recover its parameters); the Iyer 2023 arms (means +-15 %, SDs
+-30 %) and the targets of regimens/evidence/findings.toml, stated before the fit.
"""

from __future__ import annotations

import numpy as np
import pytest

from pkpd.outcome import OUTCOME_PARAMETERS, outcome_posterior
from regimens.calibration.arms import Target
from regimens.calibration.design import sample_design, to_natural, to_unconstrained
from regimens.calibration.emulator import fit_emulator, standardize
from regimens.calibration.fit import fit_posterior
from regimens.evidence import Outcome

P = len(OUTCOME_PARAMETERS)


J = 12


def _linear_problem(J=J, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(J, P + 2)) * (rng.random((J, P + 2)) < 0.3)  # sparse: each target sees a few inputs
    A[:, :P] += np.eye(J, P) * 1.5
    c = rng.normal(size=J)

    def f(x):  # x (..., J, D) standardized inputs
        return np.einsum("...jd,jd->...j", x, A) + c

    return f


def test_emulator_reproduces_a_known_function():
    """GP with a linear mean on a linear 'simulator' plus noise 0.01: held-out RMSE below 0.05."""
    f = _linear_problem()
    z, u, w = sample_design(160, 1, 0)
    x = standardize(
        np.broadcast_to(z[:, None, :], (160, J, P)),
        np.broadcast_to(u[:, :1], (160, J)),
        np.broadcast_to(w[:, :1], (160, J)),
    )
    y = f(x) + 0.01 * np.random.default_rng(1).normal(size=(160, J))
    emu = fit_emulator(x[:128], y[:128], fit_points=64)
    chk = emu.check(x[128:], y[128:])
    assert chk["rmse"].max() < 0.05 and chk["r2"].min() > 0.99


def test_unconstrained_round_trip_within_bounds():
    z, _, _ = sample_design(64, 2, 3)
    th = to_natural(z)
    for j, p in enumerate(OUTCOME_PARAMETERS):
        assert np.all((th[:, j] >= p.bounds[0]) & (th[:, j] <= p.bounds[1])), p.name
    np.testing.assert_allclose(to_natural(to_unconstrained(th)), th, rtol=1e-9)


@pytest.mark.slow  # 45 s; the calibration pipeline runs offline (python -m regimens.calibration)
def test_posterior_recovers_a_known_parameter_set():
    """NUTS on the aggregate-data likelihood with a known linear simulator, 12 targets of SE 0.02 and one
    trial: the targets' posterior predictive mean is within 0.11 of the truth for every target (the
    parameters themselves are not all identified by 12 targets; what is identified must be recovered)."""
    f = _linear_problem()
    z, u, w = sample_design(128, 1, 0)
    x = standardize(
        np.broadcast_to(z[:, None, :], (128, J, P)),
        np.broadcast_to(u[:, :1], (128, J)),
        np.broadcast_to(w[:, :1], (128, J)),
    )
    emu = fit_emulator(x, f(x), fit_points=64)
    rng = np.random.default_rng(5)
    z_true = np.array([p.prior_loc_scale[0] + 0.5 * p.prior_loc_scale[1] * rng.normal() for p in OUTCOME_PARAMETERS])
    x_true = standardize(np.broadcast_to(z_true, (J, P)), np.zeros(J), np.zeros(J))
    y_true = f(x_true)
    dummy = Outcome("opioid", "mean_sd", (1.0, 1.0), "q", "http://x")
    targets = [Target("t", f"a{j}", "log_mean", float(y_true[j]), 0.02, dummy, 100) for j in range(J)]
    post = fit_posterior(emu, targets, np.zeros(J, int), 1, draws=200, warmup=200, chains=1, seed=2)
    xs = standardize(
        np.broadcast_to(post.z[:, None, :], (len(post.z), J, P)),
        np.broadcast_to(post.u[:, :1], (len(post.z), J)),
        np.broadcast_to(post.w[:, :1], (len(post.z), J)),
    )
    pred = emu.predict_np(xs).mean(0)
    assert np.abs(pred - y_true).max() < 0.05 + 3 * 0.02
    assert post.diagnostics["divergences"] < 15


def test_waves_of_another_trial_effect_structure_are_refused(tmp_path):
    """Design waves simulated with the trial effect on the pain curve (calibration 2, no ``effects`` tag) are not
    mixed into a calibration whose trial effect is on the rescue propensity: a clear error, simulate again."""
    from regimens.calibration.run import load_problem, load_waves

    problem = load_problem()
    keys = np.array([t.key for t in problem.flat])
    from regimens.calibration.design import PARAM_NAMES

    np.savez(
        tmp_path / "wave0.npz",
        z=np.zeros((2, P)),
        u=np.zeros((2, len(problem.trials))),
        w=np.zeros((2, len(problem.trials))),
        y=np.zeros((2, len(keys))),
        keys=keys,
        params=np.array(PARAM_NAMES),
        trials=np.array(problem.trials),
    )
    with pytest.raises(ValueError, match=r"trial effects on \['pain.scale', 'pain.spread'\].*simulate again"):
        load_waves(problem, tmp_path)


def test_waves_with_one_patient_sample_per_arm_are_refused(tmp_path):
    """Waves whose arms drew their own virtual patients (calibrations 1-3, no ``patients`` tag) are not mixed
    into a calibration with common random numbers within a trial."""
    from regimens.calibration.design import PARAM_NAMES, TRIAL_EFFECTS
    from regimens.calibration.run import load_problem, load_waves

    problem = load_problem()
    np.savez(
        tmp_path / "wave0.npz",
        z=np.zeros((2, P)),
        u=np.zeros((2, len(problem.trials))),
        w=np.zeros((2, len(problem.trials))),
        y=np.zeros((2, len(problem.flat))),
        keys=np.array([t.key for t in problem.flat]),
        params=np.array(PARAM_NAMES),
        trials=np.array(problem.trials),
        effects=np.array(TRIAL_EFFECTS),
    )
    with pytest.raises(ValueError, match=r"'one sample per arm'.*common random numbers.*simulate again"):
        load_waves(problem, tmp_path)


def test_arms_of_a_trial_simulate_the_same_patients():
    """Common random numbers: the arms of a trial share their seed (and arms of different trials do not), so
    with the gabapentinoid's ceiling at its lower bound (0.001) Turan 2004's gabapentin arm gives its placebo
    arm's numbers to 0.02 on the log scale; arms simulated with their own patients (calibration 3's design)
    differ by chance by far more (checked here too, so the test can fail)."""
    from regimens.calibration.design import sample_design, simulate_arm
    from regimens.calibration.run import Settings, arm_seeds, load_problem

    problem = load_problem()
    s = Settings(n_patients=12)
    seeds = arm_seeds(problem, s)
    tri = problem.trial_of_arm()
    for i in range(len(seeds)):
        for j in range(len(seeds)):
            assert (seeds[i] == seeds[j]) == (tri[i] == tri[j])
    z, _, _ = sample_design(2, len(problem.trials), 5)
    th = to_natural(z)
    th[:, [p.name for p in OUTCOME_PARAMETERS].index("emax_gabapentinoid")] = 0.001
    idx = [i for i, a in enumerate(problem.arms) if a.trial.id == "turan2004"]
    got = [
        simulate_arm(
            problem.arms[i],
            problem.targets[i],
            th,
            np.ones(2),
            np.ones(2),
            n_patients=12,
            seed=int(seeds[i]),
            progress=lambda m: None,
        )
        for i in idx
    ]
    np.testing.assert_allclose(got[0], got[1], atol=0.02)
    own = simulate_arm(
        problem.arms[idx[1]],
        problem.targets[idx[1]],
        th,
        np.ones(2),
        np.ones(2),
        n_patients=12,
        seed=int(seeds[idx[1]]) + 1,
        progress=lambda m: None,
    )
    assert np.abs(own - got[0]).max() > 0.05


# ---- the shipped posterior --------------------------------------------------------------------------------
def test_shipped_posterior_is_a_calibration_with_its_provenance():
    post = outcome_posterior()
    m = post.meta
    assert m.get("status") == "calibrated", "the shipped posterior must come from python -m regimens.calibration"
    assert m["made_by"] == "python -m regimens.calibration"
    assert len(m["evidence"]) >= 8 and len(m["targets"]) >= 30
    assert m["nuts"]["max_rhat"] < 1.05 and m["nuts"]["divergences"] <= 0.01 * m["nuts"]["draws"]
    assert post.reference_trial == "iyer2023" and post.reference_spread is not None
    # the level effect of the reference setting: on the pain curve (calibration 2) or the rescue propensity (3)
    assert (post.reference_scale is None) != (post.reference_propensity is None)
    assert m.get("trial_effects", ["pain.scale", "pain.spread"])[0] == (
        "pain.scale" if post.reference_scale is not None else "rescue.propensity"
    )
    assert set(m["rule_comparison"]) >= {"loewe", "bliss"}


def test_leave_one_trial_out_acceptance():
    """Issue acceptance: at least 80 % of the held-out between-arm effects inside their 90 % prediction
    intervals and the sign right for every one (figures of the shipped calibration run)."""
    lo = outcome_posterior().meta["loto"]
    assert lo["effects"] >= 15
    assert lo["effects_inside_90"] >= 0.8 * lo["effects"], lo
    assert lo["sign_right"] == lo["effects"], lo


@pytest.fixture(scope="module")
def checks():
    from regimens.calibration.checks import run_checks

    return {c.what: c for c in run_checks(n=500, seed=72)}


#: Known miss of the shipped calibration (docs/outcome_checks.md): the ketorolac arm's mean. Only Iyer 2023
#: informs the NSAID ceiling, whose posterior (calibration 4: median 0.37) stays near its prior (0.35); the
#: arm needs about 0.6. Strict: the test fails as soon as a calibration meets the band, so that this mark is
#: removed.
_KNOWN_MISS = {("IYER_KETOROLAC", "mean 72-h MME")}


@pytest.mark.parametrize("arm", ["IYER_PLACEBO", "IYER_APAP", "IYER_KETOROLAC"])
@pytest.mark.parametrize("stat", ["mean 72-h MME", "SD of 72-h MME"])
def test_iyer_arms_within_the_acceptance_bands(checks, arm, stat, request):
    """Iyer 2023 (in the calibration: a fit check): means within +-15 % of 299 / 255 / 173 mg and SDs within
    +-30 % of 179 / 179 / 157 mg, 500 Iyer-like patients (opioid-naive, mean age 57.1 y), exact simulator."""
    if (arm, stat) in _KNOWN_MISS:
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="known miss of the shipped calibration: Iyer ketorolac mean")
        )
    c = checks[f"{arm} {stat} (mg)"]
    assert c.passed, (c.what, c.value, c.low, c.high)


def test_liposomal_bupivacaine_cv_and_tail(checks):
    c = checks["liposomal bupivacaine 266 mg: CV of the peak total concentration"]
    assert c.passed, c.value
    assert 0.0 < checks["liposomal bupivacaine 266 mg: P(peak > 2,000 ng/mL)"].value < 0.1


def test_saved_posterior_is_reused_only_on_the_same_waves_and_settings(tmp_path):
    """``--reuse-fits``: a rule's saved NUTS posterior is read back (draws and diagnostics equal) when the
    waves, targets and settings are those it was fitted on, and ignored (fit again) when a wave changed or
    the settings differ."""
    from regimens.calibration.__main__ import _fingerprint, load_posterior_npz, save_posterior_npz
    from regimens.calibration.fit import Posterior
    from regimens.calibration.run import Settings, load_problem

    problem = load_problem()
    s = Settings(rule="loewe")
    (tmp_path / "loewe").mkdir()
    (tmp_path / "loewe" / "wave0.npz").write_bytes(b"x" * 10)
    rng = np.random.default_rng(0)
    T, J = len(problem.trials), len(problem.flat)
    post = Posterior(
        rng.normal(size=(4, P)),
        rng.normal(size=(4, P)),
        rng.normal(size=(4, T)),
        rng.random(4),
        rng.random((4, 3)),
        rng.normal(size=(4, J)),
        {"max_rhat": 1.001, "divergences": 0},
        rng.normal(size=(4, T)),
        rng.random(4),
    )
    path = tmp_path / "loewe" / "posterior.npz"
    save_posterior_npz(path, post, problem.trials, _fingerprint(problem, s, tmp_path))
    back = load_posterior_npz(path, problem, s)
    assert back is not None and back.diagnostics == post.diagnostics
    np.testing.assert_array_equal(back.theta, post.theta)
    np.testing.assert_array_equal(back.w, post.w)
    assert load_posterior_npz(path, problem, Settings(rule="loewe", draws=10)) is None
    (tmp_path / "loewe" / "wave1.npz").write_bytes(b"y")
    assert load_posterior_npz(path, problem, s) is None
