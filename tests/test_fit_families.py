"""The fitting families as small classes (issue 24): observation (error) models and their registry.

Fast checks on the classes alone (no fit): every model-file name has a class, the residual terms, the
likelihood scales, ``log_prob`` against the textbook Gaussian and M3 formulas and against the class's NumPyro
distribution, and the simulation of a DV from a residual draw.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from pkpd.fit.error_models import ERROR_MODELS, LOG2PI, VAR_FLOOR, error_model

F = np.array([0.0, 1e-320, 0.2, 1.5, 8.0, 40.0])
PARAMS = {"additive": 0.3, "proportional": 0.15, "sigma": 0.25}


def _sd(name: str, f: np.ndarray) -> np.ndarray:
    a, b, s = PARAMS["additive"], PARAMS["proportional"], PARAMS["sigma"]
    var = {"additive": a * a + 0 * f, "proportional": (b * f) ** 2, "combined": a * a + (b * f) ** 2}
    var["lognormal"] = s * s + 0 * f
    return np.sqrt(var[name] + VAR_FLOOR)


def test_registry_names_and_terms():
    assert list(ERROR_MODELS) == ["additive", "proportional", "combined", "lognormal"]
    terms = {n: m.term_names for n, m in ERROR_MODELS.items()}
    assert terms == {
        "additive": ("additive",),
        "proportional": ("proportional",),
        "combined": ("additive", "proportional"),
        "lognormal": ("sigma",),
    }
    for name, m in ERROR_MODELS.items():
        assert m.name == name and error_model(name) is m
    with pytest.raises(KeyError):
        error_model("poisson")


@pytest.mark.parametrize("name", list(ERROR_MODELS))
def test_log_prob_is_gaussian_and_m3_on_the_likelihood_scale(name):
    m = ERROR_MODELS[name]
    params = {t: jnp.asarray(PARAMS[t]) for t in m.term_names}
    f = F[2:]
    dv = np.array([0.25, 1.2, 9.0, 35.0])
    lloq = np.full(4, 0.5)
    y, lq = m.to_scale(dv), m.to_scale(lloq)
    fl = np.log(f) if name == "lognormal" else f
    if name == "lognormal":
        np.testing.assert_allclose(y, np.log(dv))
        np.testing.assert_allclose(lq, np.log(lloq))
    else:
        assert np.array_equal(y, dv)
    sd = _sd(name, f)
    np.testing.assert_allclose(np.asarray(m.sd(jnp.asarray(f), params)), sd, rtol=1e-14)
    blq = np.array([True, False, False, False])
    got = np.asarray(m.log_prob(jnp.asarray(y), jnp.asarray(f), params, jnp.asarray(blq), jnp.asarray(lq)))
    want = np.where(blq, scipy.stats.norm.logcdf((lq - fl) / sd), -0.5 * ((y - fl) / sd) ** 2 - np.log(sd) - LOG2PI / 2)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the NumPyro distribution: the same density, and the M3 term for censored records (at the LLOQ)
    d = m.distribution(jnp.asarray(f), params)
    np.testing.assert_allclose(np.asarray(d.log_prob(jnp.asarray(y)))[1:], want[1:], rtol=1e-12)
    dc = m.distribution(jnp.asarray(f), params, censored=jnp.asarray(blq))
    value = np.where(blq, lq, y)
    np.testing.assert_allclose(np.asarray(dc.log_prob(jnp.asarray(value))), want, rtol=1e-10, atol=1e-12)


def test_scales_and_simulation():
    ln, add = ERROR_MODELS["lognormal"], ERROR_MODELS["additive"]
    with np.errstate(all="ignore"):
        assert np.isnan(ln.to_scale(np.array([0.0, -1.0]))).all()
    # a zero (or denormal) prediction is exp(-690.8) on the log scale: finite, with finite derivatives
    fl = np.asarray(ln.pred_scale(jnp.asarray(F)))
    assert np.all(np.isfinite(fl)) and fl[0] == pytest.approx(-690.8) and fl[1] == pytest.approx(-690.8)
    assert np.array_equal(np.asarray(add.pred_scale(jnp.asarray(F))), F)
    jac = np.ones((3, 2))
    f = np.array([0.5, 2.0, 4.0])
    np.testing.assert_allclose(ln.scale_jacobian(jac, f), jac / f[:, None])
    assert ln.scale_jacobian(jac, f).shape == (3, 2) and add.scale_jacobian(jac, f) is jac
    eps = jnp.asarray([0.1, -0.2, 0.0])
    np.testing.assert_allclose(np.asarray(ln.simulate(jnp.asarray(f), eps)), f * np.exp(np.asarray(eps)))
    np.testing.assert_allclose(np.asarray(add.simulate(jnp.asarray(f), eps)), f + np.asarray(eps))
    assert ERROR_MODELS["lognormal"].terms[0].table_unit("mg/L") == "log scale"
    assert ERROR_MODELS["additive"].terms[0].table_unit("mg/L") == "mg/L"
    assert ERROR_MODELS["additive"].terms[0].table_unit("") == "DV units"
    assert math.isclose(ERROR_MODELS["combined"].terms[1].default, 0.2)


# ---------------------------------------------------------------------------------------------------
# covariate relations


def _effect(relation: str, **kw):
    from pkpd.fit.spec import CovariateEffect

    return CovariateEffect(covariate=kw.pop("covariate", "WT"), relation=relation, **kw)


def test_relation_registry_and_coefficients():
    from pkpd.fit.relations import RELATIONS, relation

    assert list(RELATIONS) == [
        "power",
        "linear",
        "exponential",
        "proportional",
        "categorical",
        "indicator",
        "activity_score",
    ]
    assert all(RELATIONS[n].name == n and relation(n) is RELATIONS[n] for n in RELATIONS)
    assert _effect("power", reference=70).coefficient_names("CL") == ["CL~WT(power)"]
    assert _effect("power", reference=70).initial() == [0.75]
    assert _effect("proportional", reference=70).coefficient_names("CL") == []
    assert _effect("proportional", reference=70).bounds() is None
    cat = _effect("categorical", covariate="SEX", levels=(0.0, 1.0, 2.0), estimate={"1": 0.8})
    assert cat.coefficient_names("CL") == ["CL~SEX=1", "CL~SEX=2"] and cat.initial() == [0.8, 1.0]
    assert cat.relation_model.estimate_entry(cat, [0.7, 1.3]) == {"1": 0.7, "2": 1.3}
    ind = _effect("indicator", covariate="PM", condition="CYP2D6_AS < 1")
    assert ind.coefficient_names("CL") == ["CL~[CYP2D6_AS < 1]"] and ind.columns() == {"CYP2D6_AS"}
    assert _effect("activity_score", reference=2).bounds() == (0.0, 1.0)
    # what a model file must give
    assert "finite `reference`" in _effect("linear").relation_model.check(_effect("linear"))
    assert "reference > 0" in _effect("power", reference=-1).relation_model.check(_effect("power", reference=-1))
    assert "levels" in RELATIONS["categorical"].check(_effect("categorical", covariate="SEX", levels=(0.0,)))
    assert "condition" in RELATIONS["indicator"].check(_effect("indicator"))
    assert RELATIONS["exponential"].check(_effect("exponential", reference=40)) is None


def test_relations_apply_the_table_factors():
    """data() then apply(theta, cov, value) gives value x the factor of the module table."""
    from pkpd.fit.relations import RELATIONS

    wt = np.array([[50.0, 70.0, 100.0]])
    cov = {"WT": wt, "AS": np.array([[0.0, 1.0, 2.0]]), "SEX": np.array([[0.0, 1.0, 2.0]])}
    value = jnp.full(wt.shape, 2.0)
    cases = [
        (_effect("power", reference=70), [0.75], 2.0 * (wt / 70) ** 0.75),
        (_effect("linear", reference=70), [0.01], 2.0 * (1 + 0.01 * (wt - 70))),
        (_effect("exponential", reference=70), [0.02], 2.0 * np.exp(0.02 * (wt - 70))),
        (_effect("proportional", reference=70), [], 2.0 * wt / 70),
        (
            _effect("categorical", covariate="SEX", levels=(0.0, 1.0, 2.0)),
            [0.8, 1.5],
            2.0 * np.array([[1.0, 0.8, 1.5]]),
        ),
        (_effect("indicator", condition="WT > 60"), [0.5], 2.0 * np.where(wt > 60, 0.5, 1.0)),
        (_effect("activity_score", covariate="AS", reference=2), [0.6], 2.0 * (0.4 + 0.6 * cov["AS"] / 2)),
    ]
    for eff, theta, want in cases:
        rel = RELATIONS[eff.relation]
        data = rel.data(eff, cov, wt.shape, "CL")
        got = np.asarray(rel.apply(jnp.asarray(theta), jnp.asarray(data), value))
        np.testing.assert_allclose(got, want, rtol=1e-14, err_msg=eff.relation)
    bad, message = RELATIONS["power"].invalid_values(_effect("power", reference=70), np.array([1.0, 0.0]), "CL")
    assert bad.tolist() == [False, True] and message == "a power relation on CL needs WT > 0"
    sex = _effect("categorical", covariate="SEX", levels=(0.0, 1.0))
    bad, message = RELATIONS["categorical"].invalid_values(sex, np.array([0.0, 3.0]), "CL")
    assert bad.tolist() == [False, True] and "takes values 3 not among the levels 0, 1 declared for CL" in message


# ---------------------------------------------------------------------------------------------------
# estimator options


def test_options_are_the_estimators_keywords_with_their_defaults():
    import dataclasses
    import inspect

    from pkpd.fit import NutsOptions, SviOptions, fit_nuts, fit_svi

    for cls, fn in ((NutsOptions, fit_nuts), (SviOptions, fit_svi)):
        sig = {n: p.default for n, p in inspect.signature(fn).parameters.items() if n != "prob"}
        assert {f.name: f.default for f in dataclasses.fields(cls)} == sig, cls.__name__
        assert cls().keywords() == sig


def test_bayes_options_from_fit_arguments():
    from pkpd.fit import FitError, NutsOptions, SviOptions, fit
    from pkpd.fit.options import bayes_options

    args = dict(chains=2, warmup=7, samples=60, svi_steps=300, seed=3, progress=False)
    nuts = bayes_options("nuts", **args, options={"target_accept": 0.95, "num_chains": 3})
    assert nuts == NutsOptions(num_chains=3, num_warmup=7, num_samples=60, seed=3, progress=False, target_accept=0.95)
    svi = bayes_options("svi", **args, options={"guide": "mvn"})
    assert svi == SviOptions(num_steps=300, num_draws=60, seed=3, progress=False, guide="mvn")
    with pytest.raises(FitError, match="unknown option.*for method svi: target_accept"):
        bayes_options("svi", **args, options={"target_accept": 0.9})
    with pytest.raises(FitError, match="unknown option.*for method nuts: chain_method"):  # refused before any work
        fit("no-such-file.csv", "no-such-model.toml", "nuts", chain_method="parallel")


# ---------------------------------------------------------------------------------------------------
# estimator outcomes


def test_build_result_reads_a_typed_outcome():
    """build_result takes a LaplaceFit for method laplace and posterior draws (BayesFit) for nuts/svi."""
    from pkpd.errors import PKPDError
    from pkpd.fit.laplace import LaplaceFit
    from pkpd.fit.result import build_result

    lap = LaplaceFit(np.zeros(1), 0.0, np.zeros((1, 0)), np.zeros((1, 0, 0)), True, "", 0, 0, None, "", {})
    with pytest.raises(PKPDError, match="method nuts with a LaplaceFit outcome"):
        build_result(None, "nuts", lap)


# ---------------------------------------------------------------------------------------------------
# random-effect (IIV) types


def test_random_effect_types():
    from pkpd.fit.random_effects import IIV_TYPES
    from pkpd.fit.spec import Parameter

    assert list(IIV_TYPES) == ["lognormal", "additive", "proportional", "logit"]
    tv, eta = jnp.asarray([0.2, 0.5]), jnp.asarray([0.1, -0.3])
    want = {
        "lognormal": [0.2 * math.exp(0.1), 0.5 * math.exp(-0.3)],
        "additive": [0.3, 0.2],
        "proportional": [0.2 * 1.1, 0.5 * 0.7],
        "logit": [1 / (1 + math.exp(-(math.log(0.2 / 0.8) + 0.1))), 1 / (1 + math.exp(0.3))],
    }
    for name, kind in IIV_TYPES.items():
        assert kind.name == name
        np.testing.assert_allclose(np.asarray(kind.apply(tv, eta)), want[name], rtol=1e-14, err_msg=name)
        assert kind.in_parameter_units == (name == "additive")
    assert IIV_TYPES["lognormal"].cv_pct(0.09) == pytest.approx(100 * math.sqrt(math.expm1(0.09)))
    assert IIV_TYPES["lognormal"].cv_pct(800.0) == math.inf and math.isnan(IIV_TYPES["additive"].cv_pct(0.09))
    assert Parameter("F", 0.4, iiv_type="logit").iiv_model is IIV_TYPES["logit"]
    assert "(0, 1)" in IIV_TYPES["logit"].check(Parameter("F", 2.0, upper=5.0, iiv_type="logit"))
    assert IIV_TYPES["lognormal"].check(Parameter("CL", 2.0)) is None
