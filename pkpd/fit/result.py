"""Outputs of a population fit: parameter table, objective, individual estimates, predictions with
residuals, NCA of the observed data, files and figures.

:func:`build_result` turns the raw outcome of an estimation method (:class:`~pkpd.fit.laplace.LaplaceFit`
or the ``BayesFit`` of :mod:`pkpd.fit.bayes`) into a :class:`FitResult`, whose :meth:`FitResult.save`
writes one directory:

================== ===============================================================================
file               content
================== ===============================================================================
parameters.csv     one row per model parameter (see :attr:`FitResult.parameters`)
objective.json     -2LL, OFV, AIC, BIC (Laplace); WAIC and PSIS-LOO (NUTS/SVI: ArviZ on the per-subject
                   log-likelihood of idata.nc, see below); numbers of observations, subjects,
                   parameters; epsilon shrinkage
individual.csv     per subject: random-effect estimates, their conditional SD, individual parameter
                   values at the subject's first record
predictions.csv    per observation record: ID, TIME, DVID, DV, BLQ, PRED, IPRED, IWRES, CWRES, NPDE
nca.csv            non-compartmental analysis of the observed data (:func:`pkpd.nca.nca`)
vpc.csv            the numbers behind vpc.png (with the percentage of BLQ records per bin when the data
                   have an LLOQ)
pcvpc.csv          the numbers behind pcvpc.png (prediction-corrected; per stratum with ``vpc_stratify``)
model.toml         the model file with the final estimates as initial values (:func:`load_model` reads it)
covariance.csv     Laplace with a covariance step: covariance matrix of the free estimates on their natural
                   scale (delta method, as ``se``), one row and column per parameter (``name`` of
                   parameters.csv)
correlation.csv    Laplace with a covariance step: the correlation matrix of the same estimates
fit.json           method, options, versions, timings, convergence, messages, data and model paths
idata.nc           NUTS/SVI: the ArviZ InferenceData (NetCDF), when the method returned one, with the
                   ``log_likelihood`` variable ``subject`` that WAIC and LOO are computed from
gof.png            DV vs PRED and DV vs IPRED with identity lines and LOWESS smooths, per observation type
residuals.png      CWRES and NPDE vs TIME and vs PRED, lines at 0 and +-1.96, LOWESS smooths
qq.png             normal QQ plots of CWRES and NPDE with 95 % bands
abs_iwres.png      |IWRES| vs IPRED with a LOWESS smooth (residual error model check)
vpc.png            visual predictive check, one panel per observation type; % BLQ panel with an LLOQ
pcvpc.png          prediction-corrected VPC (Bergstrand 2011), per type (and stratum)
individual.png     DV, IPRED and PRED of up to 12 subjects on a dense time grid (individual_<type>.png
                   for further types)
eta.png            models with IIV: histograms of the eta estimates with the N(0, omega^2) density
eta_pairs.png      models with 2 or more IIV etas: scatter matrix of the eta estimates
eta_covariates.png models with IIV and covariates: etas vs each covariate (boxes for categorical ones)
trace.png          NUTS/SVI: ArviZ trace plot (densities and draws per chain, sampling iterations)
rank.png           NUTS/SVI: ArviZ rank plots per chain
================== ===============================================================================

Axis labels carry units from the model file: DV units (``unit`` of each observation type), the time unit
(``[model] time_unit``), parameter units; residuals are dimensionless.

Parameter table (:attr:`FitResult.parameters`), one row per entry of the problem's packer:

* ``estimate`` on the natural scale: typical value (``theta``), covariate coefficient (``beta``), IIV
  variance or covariance (``omega``, the variance of eta, NONMEM's OMEGA), IOV variance (``iov``),
  residual term (``sigma``: additive SD in DV units, proportional CV as a fraction, log-normal SD on the log
  scale). Laplace: the maximum likelihood estimate; NUTS/SVI: the posterior median.
* ``se``, ``rse_pct``: Laplace: delta method, ``Cov(x) = J Cov(u) J^T`` with ``J = dx/du`` (automatic
  differentiation) and ``Cov(u)`` the inverse Hessian covariance of the free parameters on the
  estimation scale; NUTS/SVI: the posterior SD.
* ``se_sandwich``, ``rse_sandwich_pct`` (Laplace): the same with the sandwich covariance ``R^-1 S R^-1`` of
  the free parameters (NONMEM's default ``$COV``; :func:`pkpd.fit.laplace.sandwich_covariance`), robust to a
  misspecified residual or random-effect distribution; close to ``se`` when the model is right.
* ``ci_low``, ``ci_high`` (95 %): Laplace: ``u +- 1.96 SE(u)`` on the estimation scale transformed back when
  the entry depends on one free parameter only (typical values, coefficients, 1 x 1 omega blocks, IOV and
  residual terms: the interval respects the bounds and is asymmetric), otherwise Wald on the natural
  scale (``ci_method`` says which); NUTS/SVI: 2.5 and 97.5 % posterior quantiles.
* ``iiv_cv_pct`` for variances of log-normal random effects, ``sqrt(exp(omega^2) - 1) * 100``; ``iiv_sd``
  the SD of the random effect (``sqrt(omega^2)``, in the parameter's units for additive IIV);
  ``correlation`` for covariances; ``shrinkage_pct`` for IIV variances (see
  :mod:`pkpd.fit.diagnostics`); NUTS/SVI add ``rhat`` (split R-hat) and ``ess_bulk`` of the natural
  quantity (:mod:`numpyro.diagnostics`).

Objective: ``minus2ll`` is ``-2 log L`` with all constants (R's ``-2 logLik``); ``ofv`` is NONMEM's
objective function value, which leaves out ``N log(2 pi)`` (``N``: non-BLQ observations); ``aic = -2LL +
2 p`` and ``bic = -2LL + p log(n_obs)`` with ``p`` the number of estimated parameters and ``n_obs`` all
observation records, as R's ``AIC``/``BIC`` of nlme. NUTS and SVI have no likelihood maximum: their
objective holds WAIC and PSIS-LOO instead, with one definition (:func:`pkpd.fit.diagnostics.
information_criteria`): ArviZ's ``az.waic``/``az.loo`` on the pointwise log-likelihood ``subject`` of
``idata.nc``, the conditional log-likelihood ``log p(y_i | eta_i, theta)`` of each subject at every
posterior draw. ``az.waic(az.from_netcdf("idata.nc"), var_name="subject")`` gives the reported
``elpd_waic`` (``waic = -2 elpd_waic``).

Divergences (NUTS) are counted one way everywhere: transitions of the sampling iterations that diverged
(``sample_stats.diverging`` of ``idata.nc``); warm-up divergences are reported apart
(``divergences_warmup`` in fit.json, labelled in the message) and not counted.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.stats

from ..errors import PKPDError
from . import diagnostics as dg
from .laplace import LaplaceFit
from .problem import LOG2PI, Problem, fit_jit
from .spec import PopulationModel, load_model

__all__ = ["FILES", "FitResult", "OutputExistsError", "PosteriorDraws", "Estimate", "build_result", "toml_dumps"]

Z975 = float(scipy.stats.norm.ppf(0.975))
_MAX_SIM_VALUES = 5e7  # simulated values held at once for the NPDE and VPC (400 MB of float64)

FILES = (
    "parameters.csv",
    "objective.json",
    "individual.csv",
    "predictions.csv",
    "nca.csv",
    "vpc.csv",
    "pcvpc.csv",
    "model.toml",
    "fit.json",
    "gof.png",
    "residuals.png",
    "qq.png",
    "abs_iwres.png",
    "vpc.png",
    "pcvpc.png",
    "individual.png",
)


class OutputExistsError(PKPDError):
    """The output directory exists and holds files, and overwriting was not allowed."""


class PosteriorDraws(Protocol):
    """What :func:`build_result` reads of a NUTS or SVI outcome (:class:`pkpd.fit.bayes.BayesFit` is one).

    Attributes
    ----------
    u_draws
        Free parameters on the estimation scale, ``(chains, draws, n_free)`` (or ``(draws, n_free)``).
    eta_draws
        Random effects, ``(chains, draws, n_id, K)``.
    idata
        ArviZ ``InferenceData`` of the draws (written as ``idata.nc``), or ``None``.
    diagnostics
        The sampler's counts and diagnostics (``n_divergent``, ``n_divergent_warmup``, ``n_rejected``,
        ``elbo``...), reported in ``fit.json``.
    times
        Seconds by stage.
    priors
        Text of the priors (stated in ``fit.json``), or empty.
    """

    u_draws: np.ndarray
    eta_draws: np.ndarray
    idata: Any
    diagnostics: dict
    times: dict
    priors: str


#: The outcome of an estimation method that :func:`build_result` turns into a :class:`FitResult`:
#: :class:`~pkpd.fit.laplace.LaplaceFit` (maximum likelihood) or posterior draws (NUTS, SVI).
Estimate = LaplaceFit | PosteriorDraws


# ---------------------------------------------------------------------------------------------------
# natural values of the packer entries


def _nat_vec(packer, u_full):
    """Natural value of every packer entry, in packer order (theta, beta, omega entries, iov, sigma)."""
    nat = packer.natural(u_full)
    parts = [nat["theta"], nat["beta"]]
    if packer.omega_pos:
        rows = np.array([r for r, _ in packer.omega_pos])
        cols = np.array([c for _, c in packer.omega_pos])
        parts.append(nat["omega"][rows, cols])
    parts += [nat["iov"], nat["sigma"]]
    return jnp.concatenate([jnp.atleast_1d(p) for p in parts])


class _PackerKey:
    """Hashable stand-in of a packer's structure (what the natural transform depends on besides ``u``)."""

    def __init__(self, packer):
        self.packer = packer
        self.key = (
            packer.names,
            packer.kinds,
            packer.code.tobytes(),
            packer.lower.tobytes(),
            packer.upper.tobytes(),
            packer.omega_pos,
            packer.n_theta,
            packer.n_beta,
            packer.k_iiv,
            packer.n_iov,
            packer.n_sigma,
        )

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _PackerKey) and self.key == other.key


def _nat_static(pk, u_full):
    return _nat_vec(pk.packer, u_full)


# small one-off programs: the fitting compile options (fast compilation)
_nat_jit = fit_jit(_nat_static, static_argnums=0)
_natural_jit = fit_jit(lambda pk, u_full: pk.packer.natural(u_full), static_argnums=0)
_nat_jac_jit = fit_jit(jax.jacfwd(_nat_static, argnums=1), static_argnums=0)
_nat_many_jit = fit_jit(jax.vmap(_nat_static, in_axes=(None, 0)), static_argnums=0)


def _full_draws(packer, u_draws: np.ndarray) -> np.ndarray:
    """``u_full`` for every draw of the free vector (..., n_free) -> (..., n_all)."""
    u_draws = np.asarray(u_draws, float)
    out = np.broadcast_to(packer.init_full, u_draws.shape[:-1] + (len(packer.names),)).copy()
    out[..., packer.free] = u_draws
    return out


def _describe(prob: Problem) -> tuple[list[str], list[str], list[dict]]:
    """Unit, description and extra info (eta index, parameter) of every packer entry."""
    spec, pk = prob.spec, prob.packer
    units, desc, info = [], [], []
    eta_names = spec.eta_names()
    for p in spec.parameters:
        units.append(p.unit)
        desc.append(p.description or "typical value")
        info.append({})
    for p in spec.parameters:
        for eff in p.covariates:
            for _ in eff.coefficient_names(p.name):
                units.append("")
                desc.append(f"{eff.relation} effect of {eff.covariate} on {p.name}")
                info.append({})
    for r, c in pk.omega_pos:
        units.append("")
        if r == c:
            desc.append(f"variance of eta({eta_names[r]})")
            info.append({"eta": r, "param": eta_names[r]})
        else:
            desc.append(f"covariance of eta({eta_names[r]}), eta({eta_names[c]})")
            info.append({"eta": (r, c)})
    for n in spec.iov:
        units.append("")
        desc.append(f"inter-occasion variance of {n}")
        info.append({"param": n})
    for o in spec.observations:
        for term in o.error_model.terms:
            units.append(term.table_unit(o.unit))
            desc.append(f"{term.what} ({o.name})")
            info.append({})
    return units, desc, info


def _parameter_table(
    prob: Problem,
    est: np.ndarray,
    se: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    ci_method: list[str],
    eta_hat: np.ndarray,
) -> pd.DataFrame:
    pk, spec = prob.packer, prob.spec
    units, desc, info = _describe(prob)
    n = len(pk.names)
    with np.errstate(divide="ignore", invalid="ignore"):
        rse = 100.0 * se / np.abs(est)
    cv = np.full(n, np.nan)
    sd = np.full(n, np.nan)
    corr = np.full(n, np.nan)
    shr = np.full(n, np.nan)
    omega_idx = np.nonzero(np.array(pk.kinds) == "omega")[0]
    omega_est = {pos: est[i] for pos, i in zip(pk.omega_pos, omega_idx)}
    has_obs = np.zeros(prob.n_id, bool)
    has_obs[np.asarray(prob.obs["id"])] = True
    for i, kind in enumerate(pk.kinds):
        inf = info[i]
        if kind == "omega" and isinstance(inf.get("eta"), int):
            k = inf["eta"]
            sd[i] = math.sqrt(est[i]) if est[i] >= 0 else math.nan
            cv[i] = spec.parameter(inf["param"]).iiv_model.cv_pct(est[i])
            if eta_hat.size:
                shr[i] = dg.eta_shrinkage(eta_hat[has_obs][:, [k]], [est[i]])[0]
        elif kind == "omega":
            r, c = inf["eta"]
            corr[i] = est[i] / math.sqrt(omega_est[(r, r)] * omega_est[(c, c)])
        elif kind == "iov":
            sd[i] = math.sqrt(est[i])
            cv[i] = spec.parameter(inf["param"]).iiv_model.cv_pct(est[i])
    return pd.DataFrame(
        {
            "name": list(pk.names),
            "kind": list(pk.kinds),
            "description": desc,
            "unit": units,
            "estimate": est,
            "se": se,
            "rse_pct": rse,
            "ci_low": lo,
            "ci_high": hi,
            "ci_method": ci_method,
            "fixed": ~np.asarray(pk.free, bool),
            "iiv_cv_pct": cv,
            "iiv_sd": sd,
            "correlation": corr,
            "shrinkage_pct": shr,
        }
    )


def _covariance_frames(names, cov: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Covariance and correlation matrices of the estimates as square frames (``parameter`` column plus
    one column per parameter); correlation NaN where a variance is not positive."""
    cov = np.asarray(cov, float)
    sd = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
    with np.errstate(all="ignore"):
        corr = cov / np.outer(sd, sd)
    np.fill_diagonal(corr, np.where(np.isfinite(sd), 1.0, np.nan))
    names = list(names)

    def frame(m):
        f = pd.DataFrame(m, columns=names)
        f.insert(0, "parameter", names)
        return f

    return frame(cov), frame(corr)


def _laplace_table(
    prob: Problem, u_full: np.ndarray, cov_u: np.ndarray | None, eta: np.ndarray, cov_sandwich: np.ndarray | None = None
):
    """Parameter table and the delta-method covariance of the free estimates on the natural scale
    (``None`` without a covariance step); with ``cov_sandwich`` also the sandwich standard errors."""
    pk = prob.packer
    n = len(pk.names)
    free_idx = np.nonzero(pk.free)[0]
    u_full = np.asarray(u_full, float)
    u_free = u_full[pk.free]
    key = _PackerKey(pk)
    est = np.asarray(_nat_jit(key, jnp.asarray(u_full)))
    se = np.full(n, np.nan)
    lo = np.full(n, np.nan)
    hi = np.full(n, np.nan)
    method = ["fixed" if not f else "unavailable" for f in pk.free]
    cov_free = None
    if cov_u is not None and u_free.size:
        J = np.asarray(_nat_jac_jit(key, jnp.asarray(u_full)))[:, free_idx]  # d natural / d free u
        cov_nat = J @ cov_u @ J.T
        cov_free = (cov_nat[np.ix_(free_idx, free_idx)], [pk.names[i] for i in free_idx])
        se_all = np.sqrt(np.maximum(np.diag(cov_nat), 0.0))
        se_u = np.sqrt(np.diag(cov_u))
        for i in range(n):
            if not pk.free[i]:
                continue
            se[i] = se_all[i]
            fi = int(np.searchsorted(free_idx, i))
            deps = np.nonzero(np.abs(J[i]) > 0)[0]
            if len(deps) == 1 and deps[0] == fi:
                vals = []
                for sgn in (-1.0, 1.0):
                    uu = u_full.copy()
                    uu[i] += sgn * Z975 * se_u[fi]
                    vals.append(float(np.asarray(_nat_jit(key, jnp.asarray(uu)))[i]))
                lo[i], hi[i] = min(vals), max(vals)
                method[i] = "estimation scale"
            else:
                lo[i], hi[i] = est[i] - Z975 * se[i], est[i] + Z975 * se[i]
                method[i] = "wald"
    table = _parameter_table(prob, est, se, lo, hi, method, eta)
    se_sw = np.full(n, np.nan)
    if cov_sandwich is not None and cov_u is not None and u_free.size:
        se_sw[free_idx] = np.sqrt(np.maximum(np.diag(J @ cov_sandwich @ J.T), 0.0))[free_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        table.insert(table.columns.get_loc("rse_pct") + 1, "se_sandwich", se_sw)
        table.insert(table.columns.get_loc("se_sandwich") + 1, "rse_sandwich_pct", 100.0 * se_sw / np.abs(est))
    return table, cov_free


def _bayes_table(prob: Problem, U_full: np.ndarray, eta: np.ndarray, mcmc: bool = True):
    """``U_full`` (chains, draws, n_all); ``mcmc`` false (SVI: independent draws of a fitted
    approximation) leaves R-hat and ESS out."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    pk = prob.packer
    C, D, n_all = U_full.shape
    nat = np.asarray(_nat_many_jit(_PackerKey(pk), jnp.asarray(U_full.reshape(C * D, n_all))))
    nat = nat.reshape(C, D, -1)
    flat = nat.reshape(C * D, -1)
    est = np.median(flat, axis=0)
    se = flat.std(axis=0, ddof=1) if C * D > 1 else np.full(n_all, np.nan)
    lo, hi = np.quantile(flat, [0.025, 0.975], axis=0)
    method = ["fixed" if not f else "posterior quantiles" for f in pk.free]
    free = np.asarray(pk.free, bool)
    se = np.where(free, se, np.nan)
    lo, hi = np.where(free, lo, np.nan), np.where(free, hi, np.nan)
    tab = _parameter_table(prob, est, se, lo, hi, method, eta)
    rhat = np.full(n_all, np.nan)
    ess = np.full(n_all, np.nan)
    if D >= 4 and mcmc:
        with np.errstate(all="ignore"):
            if C >= 2:
                rhat = np.asarray(split_gelman_rubin(nat))
            ess = np.asarray(effective_sample_size(nat))
    tab["rhat"] = np.where(free, rhat, np.nan)
    tab["ess_bulk"] = np.where(free, ess, np.nan)
    draws = {name: nat[:, :, i] for i, name in enumerate(pk.names) if pk.free[i]}
    return tab, draws


# ---------------------------------------------------------------------------------------------------
# result


def _id_values(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
        return ids.astype(np.int64)
    return ids


@dataclass(repr=False)
class FitResult:
    """Everything a population fit produced (build with :func:`pkpd.fit.fit` or :func:`build_result`).

    Attributes
    ----------
    method
        ``laplace``, ``nuts`` or ``svi``.
    problem
        The :class:`~pkpd.fit.Problem` (model bound to the data).
    spec
        The population model as given (initial estimates); :meth:`final_model` has the final ones.
    u_full
        Point estimate of every parameter on the estimation scale (ML estimate, or posterior median).
    parameters
        Parameter table (see the module docstring).
    objective
        ``minus2ll``, ``ofv``, ``aic``, ``bic`` (Laplace; ``None`` for NUTS/SVI), ``waic`` and ``loo``
        (NUTS/SVI; :func:`pkpd.fit.diagnostics.information_criteria`, ``ic_definition`` states it),
        ``n_obs``, ``n_obs_blq``, ``n_id``, ``n_parameters``, ``eps_shrinkage_pct``.
    individual
        Per subject: ``ID``, random-effect estimates (``eta(X)``, ``kappa(X,occN)``), their conditional SD
        (``sd(eta(X))``), individual parameter values at the subject's first record.
    predictions
        Per observation record: ``ROW`` (1-based dataset row), ``ID, TIME, DVID, TYPE, DV, BLQ, LLOQ,
        PRED, IPRED, IWRES, CWRES, NPDE``. Residuals are NaN on BLQ records.
    nca
        NCA of the observed data per subject (and DVID) (:func:`pkpd.nca.nca`); empty when not possible
        (``notes`` says why).
    vpc
        VPC numbers (:func:`pkpd.fit.diagnostics.vpc_table`), BLQ records counted per bin.
    pcvpc
        Prediction-corrected VPC numbers (per stratum with ``vpc_stratify``).
    vpc_points, pcvpc_points
        The observed points of vpc.png and pcvpc.png (prediction-corrected in the latter).
    covariates
        Per subject: ``ID`` and the value of each covariate column of the model at the first record.
    covariance
        Laplace with a covariance step: ``(matrix, names)``, the delta-method covariance of the free
        estimates on the natural scale (written as covariance.csv and correlation.csv); else ``None``.
    eta
        Conditional estimates of the random effects (n_id, K): modes (Laplace) or posterior medians.
    converged, message
        Convergence flag and message of the method.
    diagnostics
        Method diagnostics: iterations and covariance step (Laplace); R-hat, ESS, divergences (NUTS/SVI).
    times
        Seconds spent: compilation, estimation, covariance, diagnostics, total.
    notes
        Anything the user should know (failed NCA, approximations used...).
    """

    method: str
    problem: Problem
    spec: PopulationModel
    u_full: np.ndarray
    parameters: pd.DataFrame
    objective: dict
    individual: pd.DataFrame
    predictions: pd.DataFrame
    nca: pd.DataFrame
    vpc: pd.DataFrame
    eta: np.ndarray
    converged: bool
    message: str
    diagnostics: dict
    times: dict
    notes: list = field(default_factory=list)
    raw: Estimate | None = None
    data_source: str | None = None
    model_source: str | None = None
    options: dict = field(default_factory=dict)
    grid: pd.DataFrame | None = None
    draws: dict | None = None
    idata: Any = None
    pcvpc: pd.DataFrame | None = None
    vpc_points: pd.DataFrame | None = None
    pcvpc_points: pd.DataFrame | None = None
    covariates: pd.DataFrame | None = None
    covariance: tuple | None = None  # Laplace: (covariance matrix of the free estimates, their names)

    # ---- final model ------------------------------------------------------------------------------
    def final_model(self) -> PopulationModel:
        """The population model with the final estimates as initial values (fixed flags kept)."""
        return load_model(self._final_dict())

    def _final_dict(self) -> dict:
        spec, pk = self.spec, self.problem.packer
        nat = {k: np.asarray(v) for k, v in _natural_jit(_PackerKey(pk), jnp.asarray(self.u_full)).items()}
        d = spec.to_dict()
        for j, p in enumerate(spec.parameters):
            d["parameters"][p.name]["estimate"] = float(nat["theta"][j])
        b = 0
        for p in spec.parameters:
            for ci, eff in enumerate(p.covariates):
                names = eff.coefficient_names(p.name)
                vals = [float(nat["beta"][b + k]) for k in range(len(names))]
                b += len(names)
                if not names:
                    continue
                d["parameters"][p.name]["covariates"][ci]["estimate"] = eff.relation_model.estimate_entry(eff, vals)
        omega = nat["omega"]
        off = 0
        block_names = [tuple(n) for n, _, _ in spec.omega_blocks]
        for names, _, _ in spec.iiv_blocks():
            k = len(names)
            if tuple(names) in block_names:
                vals = [float(omega[off + i, off + j]) for i in range(k) for j in range(i + 1)]
                d["omega"]["block"][block_names.index(tuple(names))]["values"] = vals
            else:
                d["parameters"][names[0]]["iiv"] = float(omega[off, off])
            off += k
        for i, n in enumerate(spec.iov):
            d["iov"][n] = float(nat["iov"][i])
        s = 0
        for o in spec.observations:
            for t in o.error_terms():
                d["observations"][o.name][t] = float(nat["sigma"][s])
                s += 1
        return d

    # ---- text -------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        """A short description (the arrays and tables are attributes; :meth:`summary_text` has the report)."""
        ofv = self.objective.get("ofv") if isinstance(self.objective, dict) else None
        what = f"OFV {ofv:.3f}" if isinstance(ofv, (int, float)) and np.isfinite(ofv) else "no OFV"
        n_id = self.objective.get("n_id", "?") if isinstance(self.objective, dict) else "?"
        n_obs = self.objective.get("n_obs", "?") if isinstance(self.objective, dict) else "?"
        return (
            f"<FitResult {self.method}: model {self.spec.structure}, "
            f"{n_id} subjects, {n_obs} observations, {len(self.parameters)} parameters, {what}, "
            f"{'converged' if self.converged else 'NOT converged'}>"
        )

    def _repr_html_(self) -> str:
        """Notebook display: the short description and the parameter table."""
        import html as _html

        return (
            f"<p><b>{_html.escape(repr(self))}</b><br>{_html.escape(str(self.message))}</p>"
            + self.parameters.to_html(index=False, float_format=lambda v: f"{v:.4g}")
        )

    def summary_text(self) -> str:
        """Console summary: parameter table, objective, convergence."""
        o = self.objective
        lines = [
            (
                f"Population fit ({self.method}): {o['n_id']} subjects, {o['n_obs']} observations "
                f"({o['n_obs_blq']} BLQ), {o['n_parameters']} estimated parameters"
            )
        ]
        if o.get("minus2ll") is not None:
            lines.append(
                f"-2LL {o['minus2ll']:.3f} (all constants, = -2 logLik of R)   OFV {o['ofv']:.3f} "
                "(NONMEM, without N log 2pi)   AIC "
                f"{o['aic']:.3f}   BIC {o['bic']:.3f}"
            )
        if o.get("waic") is not None:
            w, lo = o["waic"], o.get("loo") or {}
            text = f"WAIC {_g(w['waic'], 7)} (SE {_g(w['se'], 3)}, p_waic {_g(w['p_waic'], 3)})"
            if lo:
                text += (
                    f"   LOOIC {_g(lo['looic'], 7)} (SE {_g(lo['se'], 3)}, p_loo {_g(lo['p_loo'], 3)}, "
                    f"max Pareto k {_g(lo['pareto_k_max'], 2)})"
                )
            lines.append(text + "; ArviZ, one point per subject (log p(y_i | eta_i, theta)), deviance scale")
        bayes = "rhat" in self.parameters
        mcmc = bayes and bool(self.parameters["rhat"].notna().any() or self.parameters["ess_bulk"].notna().any())
        head = [
            "parameter",
            "estimate",
            "unit",
            "SE" if not bayes else "post. SD",
            "RSE%",
            "95% CI",
            "IIV CV%/SD",
            "shrink%",
        ] + (["R-hat", "ESS"] if mcmc else [])
        rows = []
        for _, r in self.parameters.iterrows():
            ci = (
                "fixed"
                if r["fixed"]
                else (f"{_g(r['ci_low'])} - {_g(r['ci_high'])}" if np.isfinite(r["ci_low"]) else "-")
            )
            iiv = (
                f"{r['iiv_cv_pct']:.1f}%"
                if np.isfinite(r["iiv_cv_pct"])
                else (
                    _g(r["iiv_sd"])
                    if np.isfinite(r["iiv_sd"])
                    else (f"r={r['correlation']:.2f}" if np.isfinite(r["correlation"]) else "")
                )
            )
            row = [
                r["name"],
                _g(r["estimate"]),
                r["unit"],
                _g(r["se"]),
                f"{r['rse_pct']:.1f}" if np.isfinite(r["rse_pct"]) else "",
                ci,
                iiv,
                f"{r['shrinkage_pct']:.1f}" if np.isfinite(r["shrinkage_pct"]) else "",
            ]
            if mcmc:
                row += [
                    f"{r['rhat']:.3f}" if np.isfinite(r["rhat"]) else "",
                    f"{r['ess_bulk']:.0f}" if np.isfinite(r["ess_bulk"]) else "",
                ]
            rows.append(row)
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines.append(fmt.format(*head))
        lines.append(fmt.format(*["-" * w for w in widths]))
        lines += [fmt.format(*r) for r in rows]
        msg = self.message.removeprefix("converged: ").removeprefix("not converged: ")
        word = "finished" if self.method == "svi" else ("converged" if self.converged else "NOT CONVERGED")
        lines.append(f"{word}: {msg}")
        cm = self.diagnostics.get("covariance")
        if cm:
            lines.append(f"covariance step: {cm}")
        if "se_sandwich" in self.parameters and self.parameters["se_sandwich"].notna().any():
            p = self.parameters[self.parameters["se_sandwich"].notna()]
            worst = (p["se_sandwich"] / p["se"]).agg(["min", "max"])
            lines.append(
                f"sandwich SEs (R^-1 S R^-1, NONMEM's default) are {worst['min']:.2f} to {worst['max']:.2f} x the "
                "inverse-Hessian SEs above (parameters.csv: se_sandwich, rse_sandwich_pct)"
            )
        if o.get("eps_shrinkage_pct") is not None and np.isfinite(o["eps_shrinkage_pct"]):
            lines.append(f"epsilon shrinkage {o['eps_shrinkage_pct']:.1f} %")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    # ---- files ------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, *, force: bool = False, log_axes: bool = False) -> list[Path]:
        """Write the tables, model file, JSON summaries and PNG figures listed in the module docstring.

        Parameters
        ----------
        out_dir
            Directory to create (parents too).
        force
            Overwrite the files of an existing non-empty directory (other files there are left alone).
        log_axes
            Log-scaled axes in gof.png.

        Returns
        -------
        list of Path
            The files written.

        Raises
        ------
        OutputExistsError
            ``out_dir`` is a file, or a non-empty directory and ``force`` is false.
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise OutputExistsError(f"the output path {out} is a file; give a directory name")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise OutputExistsError(
                f"the output directory {out} exists and is not empty; pass --force "
                "(force=True) to overwrite its files, or choose another directory"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputExistsError(f"cannot create the output directory {out}: {exc}") from None
        written: list[Path] = []

        def path(name: str) -> Path:
            p = out / name
            written.append(p)
            return p

        self.parameters.to_csv(path("parameters.csv"), index=False)
        path("objective.json").write_text(json.dumps(_jsonable(self.objective), indent=2) + "\n")
        self.individual.to_csv(path("individual.csv"), index=False)
        self.predictions.to_csv(path("predictions.csv"), index=False)
        self.nca.to_csv(path("nca.csv"), index=False)
        self.vpc.to_csv(path("vpc.csv"), index=False)
        (self.pcvpc if self.pcvpc is not None else pd.DataFrame()).to_csv(path("pcvpc.csv"), index=False)
        path("model.toml").write_text(self._model_toml())
        if self.covariance is not None:
            cov, corr = _covariance_frames(self.covariance[1], self.covariance[0])
            cov.to_csv(path("covariance.csv"), index=False)
            corr.to_csv(path("correlation.csv"), index=False)
        if self.idata is not None and hasattr(self.idata, "to_netcdf"):
            nc = out / "idata.nc"
            try:
                _netcdf_safe_attrs(self.idata)
                self.idata.to_netcdf(str(nc))
                written.append(nc)
            except Exception as exc:  # noqa: BLE001 - the optional netCDF backend may be missing
                nc.unlink(missing_ok=True)
                note = f"idata.nc not written: {type(exc).__name__}: {exc}"
                if note not in self.notes:
                    self.notes.append(note)
        path("fit.json").write_text(json.dumps(_jsonable(self._fit_info()), indent=2) + "\n")
        self._plots(path, log_axes=log_axes)
        return written

    def _plots(self, path: Callable[[str], Path], *, log_axes: bool = False) -> None:
        """Write the figures of the module docstring (``path(name)`` gives the file and records it)."""
        spec, prob = self.spec, self.problem
        tu = spec.time_unit
        units = {o.name: o.unit for o in spec.observations}
        head = f"{spec.structure} ({self.method})"
        n_rep = int(self.options.get("vpc_replicates", 0))
        dg.plot_gof(
            self.predictions, path("gof.png"), log_axes=log_axes, units=units, title=f"{head}: observed vs predicted"
        )
        dg.plot_residuals(
            self.predictions, path("residuals.png"), title=f"{head}: CWRES and NPDE", time_unit=tu, units=units
        )
        dg.plot_qq(self.predictions, path("qq.png"), title=f"{head}: normal QQ plots of CWRES and NPDE")
        dg.plot_abs_iwres(self.predictions, path("abs_iwres.png"), units=units, title=f"{head}: |IWRES| vs IPRED")
        dg.plot_vpc(
            self.vpc,
            self.vpc_points if self.vpc_points is not None else self.predictions,
            path("vpc.png"),
            n_rep=n_rep,
            time_unit=tu,
            units=units,
        )
        if self.pcvpc is not None:
            dg.plot_vpc(
                self.pcvpc,
                self.pcvpc_points if self.pcvpc_points is not None else self.predictions,
                path("pcvpc.png"),
                n_rep=n_rep,
                time_unit=tu,
                units=units,
                pc=True,
            )
        for ti, o in enumerate(spec.observations):
            name = "individual.png" if ti == 0 else f"individual_{_safe(o.name)}.png"
            dg.plot_individual(
                self.predictions,
                self.grid,
                path(name),
                type_name=o.name,
                type_index=ti,
                title=f"Individual fits ({o.name}): DV, IPRED (solid), PRED (dashed)",
                time_unit=tu,
                unit=o.unit,
            )
        k = prob.k_iiv
        if k:
            labels = prob.eta_labels()[:k]
            nat = _natural_jit(_PackerKey(prob.packer), jnp.asarray(self.u_full))
            omega = np.asarray(nat["omega"], float)
            eta_units = {}
            for lab, n in zip(labels, spec.eta_names()):
                p = spec.parameter(n)
                eta_units[lab] = (p.unit or "") if p.iiv_model.in_parameter_units else dg.ND
            dg.plot_eta_distributions(
                self.individual,
                path("eta.png"),
                labels=labels,
                omega_var=np.diagonal(omega)[:k],
                eta_units=eta_units,
                title=f"{head}: random-effect estimates and N(0, omega^2)",
            )
            if k >= 2:
                dg.plot_eta_pairs(
                    self.individual,
                    path("eta_pairs.png"),
                    labels=labels,
                    eta_units=eta_units,
                    title=f"{head}: random-effect estimates, pairs",
                )
            if self.covariates is not None and self.covariates.shape[1] > 1:
                cat = [e.covariate for p in spec.parameters for e in p.covariates if e.relation_model.categorical]
                dg.plot_eta_covariates(
                    self.individual,
                    self.covariates,
                    path("eta_covariates.png"),
                    labels=labels,
                    categorical=cat,
                    eta_units=eta_units,
                    covariate_units=dict(spec.covariate_units),
                    title=f"{head}: random-effect estimates vs covariates",
                )
        if self.draws:
            dg.plot_trace(
                self.draws,
                path("trace.png"),
                units=self._param_units(),
                title=f"Posterior draws ({self.method}, sampling iterations; ArviZ)",
            )
            dg.plot_rank(self.draws, path("rank.png"), title=f"Rank plots ({self.method}; ArviZ)")

    def _param_units(self) -> dict[str, str]:
        """Unit of every parameter of the table for plot labels: the table's ``unit``; IIV/IOV variances of
        log-normal, logit and proportional random effects are dimensionless."""
        out = {}
        spec = self.spec
        for _, r in self.parameters.iterrows():
            u = str(r.get("unit", "") or "")
            if not u and r.get("kind") in ("omega", "iov"):
                names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(r["name"]).split("(", 1)[-1])
                ps = [spec.parameter(n) for n in names if n in spec.parameter_names]
                if ps and not any(p.iiv_model.in_parameter_units for p in ps):
                    u = dg.ND
            out[str(r["name"])] = u
        return out

    def _model_toml(self) -> str:
        head = (
            f"# Final estimates of a population fit (pkpd fit, method {self.method}) as initial values.\n"
            f"# -2LL {_g(self.objective.get('minus2ll'))}; data {self.data_source or '(in memory)'}; "
            f"model {self.model_source or '(in memory)'}\n"
            "# Variances (iiv, omega block values, iov) are omega^2; residual terms are SDs/CVs.\n\n"
        )
        return head + toml_dumps(self._final_dict())

    def _fit_info(self) -> dict:
        import importlib.metadata as md

        import pkpd

        def ver(name):
            try:
                return md.version(name)
            except md.PackageNotFoundError:
                return None

        return {
            "method": self.method,
            "converged": self.converged,
            "message": self.message,
            "diagnostics": self.diagnostics,
            "times_s": self.times,
            "options": self.options,
            "notes": self.notes,
            "problem_notes": list(self.problem.notes),
            "data": self.data_source,
            "model": self.model_source,
            "structure": self.spec.structure,
            "versions": {
                "pkpd": pkpd.__version__,
                "jax": ver("jax"),
                "numpyro": ver("numpyro"),
                "numpy": np.__version__,
                "scipy": ver("scipy"),
                "pandas": pd.__version__,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _netcdf_safe_attrs(idata) -> None:
    """Booleans and None are not valid NetCDF attributes: store them as 0/1 and "None" (in place)."""

    def fix(attrs):
        for k, v in list(attrs.items()):
            if isinstance(v, (bool, np.bool_)):
                attrs[k] = int(v)
            elif v is None:
                attrs[k] = "None"

    fix(getattr(idata, "attrs", {}) or {})
    for g in idata.groups() if hasattr(idata, "groups") else ():
        fix(idata[g].attrs)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _g(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (int, str)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# ---------------------------------------------------------------------------------------------------
# TOML writing (tomllib reads; the standard library has no writer)

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def toml_dumps(data: Mapping) -> str:
    """Serialize nested mappings (strings, numbers, booleans, lists) as TOML that :mod:`tomllib` reads.

    Lists of mappings become arrays of tables; floats are written with ``repr`` (round trip exact).
    """
    out: list[str] = []

    def is_table_list(v):
        return isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v)

    def emit(table: Mapping, prefix: tuple[str, ...], header: str | None):
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping) and not is_table_list(v)]
        subs = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        arrays = [(k, v) for k, v in table.items() if is_table_list(v)]
        if header is not None and (scalars or not (subs or arrays)):
            if out:
                out.append("")
            out.append(header)
        for k, v in scalars:
            out.append(f"{_key(str(k))} = {_value(v)}")
        for k, v in subs:
            path = prefix + (str(k),)
            emit(v, path, "[" + ".".join(_key(p) for p in path) + "]")
        for k, v in arrays:
            path = prefix + (str(k),)
            for item in v:
                if out:
                    out.append("")
                out.append("[[" + ".".join(_key(p) for p in path) + "]]")
                emit_inner(item, path)

    def emit_inner(table: Mapping, prefix: tuple[str, ...]):
        # body of an array-of-tables element: scalars, then sub-tables under the element
        for k, v in table.items():
            if not isinstance(v, Mapping) and not is_table_list(v):
                out.append(f"{_key(str(k))} = {_value(v)}")
        for k, v in table.items():
            if isinstance(v, Mapping) or is_table_list(v):
                emit({k: v}, prefix, None)

    emit(data, (), None)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------
# building


def _route(prob: Problem) -> str:
    fr = prob.frame
    evid = fr["EVID"].to_numpy(float) if "EVID" in fr else np.zeros(len(fr))
    amt = fr["AMT"].to_numpy(float) if "AMT" in fr else np.zeros(len(fr))
    dose = np.isin(evid, (1, 4)) & (amt > 0)
    if not dose.any() or "CMT" not in fr:
        return "extravascular"
    cmt = fr["CMT"].to_numpy(float)[dose]
    central = prob.model.central + 1
    if np.all(cmt == central):
        rate = fr["RATE"].to_numpy(float)[dose] if "RATE" in fr else np.zeros(dose.sum())
        return "iv_bolus" if np.all(rate == 0) else "iv_infusion"
    return "extravascular"


def _nca(prob: Problem, data, notes: list) -> pd.DataFrame:
    from ..nca import nca

    kw: dict[str, Any] = {"route": _route(prob)}
    lloqs = [o.lloq for o in prob.spec.observations]
    if len(lloqs) == 1 and lloqs[0] is not None:
        kw["lloq"] = float(lloqs[0])
    try:
        src = data if data is not None else prob.frame
        res = nca(src, **kw)
    except (PKPDError, ValueError) as exc:
        notes.append(f"NCA of the observed data not computed: {str(exc).splitlines()[0]}")
        return pd.DataFrame()
    if len(prob.spec.observations) > 1:
        notes.append("NCA was computed for every observation type (DVID); it is meaningful for concentrations only")
    res.insert(0, "route", kw["route"])
    return res


def _strata(prob: Problem, column: str) -> np.ndarray:
    """Stratum label of every observation record from a dataset column (pcVPC stratification)."""
    fr = prob.frame
    if column not in fr:
        raise PKPDError(
            f"vpc_stratify: the dataset has no column {column!r} (columns: {', '.join(map(str, fr.columns))})"
        )
    rows = np.asarray(prob.obs["row"])
    raw = fr[column].to_numpy()[rows]
    num = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(float)
    if np.isfinite(num).all():
        levels = np.unique(num)
        if levels.size > 6:
            ids = np.asarray(prob.obs["id"])
            first = np.array([num[ids == i][0] for i in np.unique(ids)])
            med = float(np.median(first))
            return np.where(num <= med, f"{column} <= {med:g}", f"{column} > {med:g}").astype(object)
        return np.array([f"{column} = {v:g}" for v in num], dtype=object)
    return np.array([f"{column} = {v}" for v in raw], dtype=object)


_NOT_COVARIATES = {
    "ID",
    "TIME",
    "DV",
    "MDV",
    "EVID",
    "AMT",
    "RATE",
    "II",
    "ADDL",
    "SS",
    "CMT",
    "DVID",
    "BLQ",
    "LLOQ",
    "OCC",
    "C",
    "TAD",
    "ROW",
}


def _subject_covariates(prob: Problem, ids_all: np.ndarray, max_columns: int = 8) -> pd.DataFrame:
    """``ID`` and the covariates at the subject's first record: the model's covariate columns, then
    (as xpose does, to look for relations the model lacks) other numeric dataset columns that are
    constant within every subject, up to ``max_columns`` in all."""
    fr = prob.frame
    cols = sorted(c for c in prob.spec.covariate_columns() if c in fr and c not in ("ID", "TIME"))
    for c in fr.columns:
        if len(cols) >= max_columns:
            break
        if c in cols or str(c).upper() in _NOT_COVARIATES or str(c).startswith("_"):
            continue
        v = pd.to_numeric(fr[c], errors="coerce")
        if v.notna().all() and (v.groupby(fr["ID"]).nunique() <= 1).all():
            cols.append(c)
    out = pd.DataFrame({"ID": ids_all})
    if not cols:
        return out
    first = fr.groupby("ID", sort=False)[cols].first()
    for c in cols:
        out[c] = pd.to_numeric(first[c].reindex(list(prob.ids)), errors="coerce").to_numpy(float)
    return out


def _divergences(raw: PosteriorDraws, rd: dict) -> tuple[int | None, int | None]:
    """Divergent transitions of the sampling iterations (from ``idata.sample_stats.diverging`` when the
    method returned an InferenceData, else the method's ``n_divergent``) and of the warm-up."""
    div = None
    idata = raw.idata
    try:
        if idata is not None and "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
            div = int(np.asarray(idata.sample_stats["diverging"]).sum())
    except (AttributeError, TypeError):
        div = None
    if div is None:
        d = rd.get("n_divergent", rd.get("divergences"))
        div = int(np.sum(d)) if d is not None else None
    w = rd.get("n_divergent_warmup")
    return div, (int(np.sum(w)) if w is not None else None)


def _is_inference_data(idata: Any) -> bool:
    try:
        from arviz import InferenceData
    except ImportError:  # pragma: no cover - arviz is a dependency of the Bayesian methods
        return False
    return isinstance(idata, InferenceData)


def _subject_loglik(prob: Problem, U_full: np.ndarray, E: np.ndarray) -> np.ndarray:
    """``log p(y_i | eta_i, theta)`` per draw and subject (chains, draws, n_id): what the samplers store
    (:func:`pkpd.fit.bayes._loglik_draws`, :meth:`Problem.loglik_id` at every draw)."""
    from .bayes import _loglik_draws

    C, D = U_full.shape[:2]
    return _loglik_draws(prob, U_full.reshape(C * D, -1), E.reshape((C * D,) + E.shape[2:])).reshape(C, D, -1)


def _information_criteria(
    prob: Problem, raw: PosteriorDraws, U_full: np.ndarray, E: np.ndarray, draws: dict | None
) -> dict:
    """WAIC and LOO (:func:`pkpd.fit.diagnostics.information_criteria`) on the InferenceData the result
    writes: its ``log_likelihood`` variable ``subject`` is used when there, else computed from the draws and
    added to it (so that ``idata.nc`` holds what the values were computed from)."""
    idata = raw.idata
    if _is_inference_data(idata):
        if not ("log_likelihood" in idata.groups() and "subject" in idata.log_likelihood):
            ll = _subject_loglik(prob, U_full, E)
            idata.add_groups(
                {"log_likelihood": {"subject": ll}}, coords={"ID": np.asarray(prob.ids)}, dims={"subject": ["ID"]}
            )
        return dg.information_criteria(idata, "subject")
    return dg.information_criteria(_subject_loglik(prob, U_full, E), "subject", posterior=draws)


def build_result(
    prob: Problem,
    method: str,
    raw: Estimate,
    *,
    data: Any = None,
    data_source: str | None = None,
    model_source: str | None = None,
    vpc_replicates: int = 200,
    npde_replicates: int = 1000,
    vpc_bins: int = 8,
    seed: int = 0,
    fine_grid: bool = True,
    options: dict | None = None,
    status: Callable[[str], None] | None = None,
    vpc_stratify: str | None = None,
) -> FitResult:
    """Compute the tables and diagnostics of a fit.

    Parameters
    ----------
    prob
        The problem that was fitted.
    method
        ``laplace`` (``raw`` a :class:`~pkpd.fit.laplace.LaplaceFit`), ``nuts`` or ``svi`` (``raw``
        :class:`PosteriorDraws`, e.g. a :class:`~pkpd.fit.bayes.BayesFit`).
    data
        The dataset (path or frame) for the NCA; default the problem's frame.
    vpc_replicates, npde_replicates
        Simulated datasets for the VPC and the NPDE (the same simulations serve both; at the point
        estimates, also for NUTS/SVI).
    vpc_bins
        Time bins per observation type in the VPC.
    seed
        Seed of the simulations.
    fine_grid
        Individual plots on a fine time grid (builds a second problem; at the observation times if false).
    status
        Called with a short text before each stage (progress display).
    vpc_stratify
        Dataset column (e.g. a categorical covariate) that stratifies the pcVPC: one row of panels per
        value (a column with more than 6 distinct values is split at its median over subjects).
    """
    t0 = time.perf_counter()
    say = status or (lambda s: None)
    notes: list[str] = []
    bayes = method in ("nuts", "svi")
    lap: LaplaceFit | None = raw if isinstance(raw, LaplaceFit) else None
    post: PosteriorDraws | None = None if isinstance(raw, LaplaceFit) else raw
    if bayes == (post is None):
        raise PKPDError(f"build_result: method {method} with a {type(raw).__name__} outcome")
    pk = prob.packer
    K = prob.n_eta
    draws = None
    if post is not None:
        u_draws = np.asarray(post.u_draws, float)
        if u_draws.ndim == 2:
            u_draws = u_draws[None]
        U_full = _full_draws(pk, u_draws)
        u_full = np.median(U_full.reshape(-1, U_full.shape[-1]), axis=0)
        E = np.asarray(post.eta_draws, float).reshape(u_draws.shape[0], u_draws.shape[1], prob.n_id, K)
        eta = np.median(E.reshape(-1, prob.n_id, K), axis=0) if K else np.zeros((prob.n_id, 0))
        eta_sd = E.reshape(-1, prob.n_id, K).std(axis=0, ddof=1) if K else np.zeros((prob.n_id, 0))
        say("parameter table (posterior summaries)")
        table, draws = _bayes_table(prob, U_full, eta[:, : prob.k_iiv], mcmc=method == "nuts")
        cov_free = None
    else:
        assert lap is not None
        u_full = np.asarray(lap.u_full, float)
        eta = np.asarray(lap.eta, float).reshape(prob.n_id, K)
        eta_sd = np.zeros((prob.n_id, K))
        if K:
            H = np.asarray(lap.eta_hess, float)
            with np.errstate(all="ignore"):
                try:
                    eta_sd = np.sqrt(np.maximum(np.diagonal(np.linalg.inv(H), axis1=-2, axis2=-1), 0.0))
                except np.linalg.LinAlgError:
                    eta_sd = np.full((prob.n_id, K), np.nan)
        say("parameter table (delta-method standard errors)")
        table, cov_free = _laplace_table(prob, u_full, lap.cov_u, eta[:, : prob.k_iiv], lap.cov_sandwich)

    # predictions, residuals
    say("predictions and CWRES")
    outs = dg.evaluate_outputs(prob, u_full, eta)
    ob = prob.obs
    blq = np.asarray(ob["blq"], bool)
    dv = np.asarray(ob["dv"], float)
    ipred, pred, sd = outs["ipred"], outs["pred"], outs["sd"]
    with np.errstate(all="ignore"):  # on the likelihood scale of each record's error model (log DV...)
        y_t = prob.to_scale(dv)
        ip_t = prob.to_scale(ipred)
        jac_t = prob.scale_jacobian(outs["jac"], ipred)
    valid = ~blq & np.isfinite(y_t)
    iwres = np.where(valid, (y_t - ip_t) / sd, np.nan)
    omega_full = outs["omega_full"]
    cw = dg.cwres(y_t, ip_t, jac_t, eta, omega_full, sd, np.asarray(ob["id"]), valid)

    n_sim = max(int(vpc_replicates), int(npde_replicates), 2)
    cap = max(100, int(_MAX_SIM_VALUES // max(prob.n_obs, 1)))
    if n_sim > cap:
        notes.append(
            f"NPDE and VPC use {cap} simulated datasets instead of {n_sim} (memory limit: "
            f"{prob.n_obs} observations per dataset)"
        )
        n_sim = cap
        vpc_replicates, npde_replicates = min(vpc_replicates, cap), min(npde_replicates, cap)
    say(f"simulating {n_sim} replicates (NPDE, VPC)")
    sims = dg.simulate_replicates(prob, u_full, n_sim, seed)
    with np.errstate(all="ignore"):
        sims_t = prob.to_scale(sims)
    npde_v, _ = dg.npde(y_t, sims_t[: max(int(npde_replicates), 2)], np.asarray(ob["id"]), valid)
    type_names = [o.name for o in prob.spec.observations]
    lloq = np.asarray(ob["lloq"], float)
    has_lloq = bool(np.isfinite(lloq).any())
    vpc_args = (ob["time"], dv, sims[: max(int(vpc_replicates), 2)], np.asarray(ob["type"]), valid, type_names)
    censor = dict(blq=blq, lloq=lloq) if has_lloq else {}
    vpc, vpc_points = dg.vpc_table(*vpc_args, n_bins=vpc_bins, return_points=True, **censor)
    strata = _strata(prob, vpc_stratify) if vpc_stratify else None
    pcvpc, pcvpc_points = dg.vpc_table(
        *vpc_args, n_bins=vpc_bins, return_points=True, pred=pred, strata=strata, **censor
    )
    if blq.any():
        notes.append(
            "BLQ records are left out of CWRES and NPDE; the VPC and pcVPC count them (percentage of "
            "BLQ records per bin, observed vs simulated) and censor the percentiles at the LLOQ"
        )
    if len(pcvpc) and pcvpc.get("n_excluded", pd.Series([0])).sum():
        notes.append(
            f"{int(pcvpc['n_excluded'].sum())} records with PRED <= 0 are left out of the pcVPC "
            "(prediction correction divides by PRED)"
        )
    if bayes:
        notes.append(
            "PRED, IPRED, CWRES, NPDE and the VPC use the posterior medians (of the parameters and "
            "of each subject's etas), not the full posterior"
        )

    ids_all = _id_values(prob.ids)
    dvids = np.array([o.dvid if o.dvid is not None else 1 for o in prob.spec.observations])
    typ = np.asarray(ob["type"])
    predictions = pd.DataFrame(
        {
            "ROW": np.asarray(ob["row"]) + 1,
            "ID": ids_all[np.asarray(ob["id"])],
            "TIME": np.asarray(ob["time"]),
            "DVID": dvids[typ],
            "TYPE": np.array(type_names, dtype=object)[typ],
            "DV": dv,
            "BLQ": blq.astype(int),
            "LLOQ": np.asarray(ob["lloq"], float),
            "PRED": pred,
            "IPRED": ipred,
            "IWRES": iwres,
            "CWRES": cw,
            "NPDE": npde_v,
        }
    )

    # individual estimates
    ind = {"ID": ids_all}
    labels = prob.eta_labels()
    for k, lab in enumerate(labels):
        ind[lab] = eta[:, k]
    for k, lab in enumerate(labels):
        ind[f"sd({lab})"] = eta_sd[:, k]
    order = list(prob.spec.parameter_names) + [n for n in prob.spec.derived if n in outs["indiv"]]
    for name in order:
        if name in outs["indiv"]:
            ind[name] = np.asarray(outs["indiv"][name], float)
    individual = pd.DataFrame(ind)
    covariates = _subject_covariates(prob, ids_all)

    # objective
    n_free = int(pk.n_free)
    objective: dict[str, Any] = {
        "n_obs": int(prob.n_obs),
        "n_obs_blq": int(blq.sum()),
        "n_id": int(prob.n_id),
        "n_parameters": n_free,
        "eps_shrinkage_pct": dg.epsilon_shrinkage(iwres),
    }
    if post is not None:
        objective.update(minus2ll=None, ofv=None, aic=None, bic=None)
        say("WAIC and LOO (ArviZ)")
        try:
            ic = _information_criteria(prob, post, U_full, E, draws)
            objective["waic"], objective["loo"] = ic["waic"], ic["loo"]
            objective["ic_definition"] = ic["definition"]
            objective["ic_n_draws"], objective["ic_n_subjects"] = ic["n_draws"], ic["n_points"]
            if ic["waic"]["warning"]:
                notes.append(
                    "WAIC: the posterior variance of some subjects' log-likelihood exceeds 0.4 (ArviZ "
                    "warning); prefer PSIS-LOO"
                )
            if ic["loo"]["n_pareto_k_above_0.7"]:
                notes.append(
                    f"PSIS-LOO: {ic['loo']['n_pareto_k_above_0.7']} subject(s) with Pareto k > 0.7 "
                    f"(max {ic['loo']['pareto_k_max']:.2f}): the LOO estimate is unreliable for them"
                )
        except Exception as exc:  # noqa: BLE001 - the information criteria are optional
            notes.append(f"WAIC/LOO not computed: {type(exc).__name__}: {exc}")
    else:
        m2 = float(lap.minus2ll)
        objective.update(
            minus2ll=m2,
            ofv=m2 - prob.n_normal_obs * LOG2PI,
            aic=m2 + 2 * n_free,
            bic=m2 + n_free * math.log(max(prob.n_obs, 1)),
            ofv_note=f"OFV = -2LL - N log(2 pi), N = {prob.n_normal_obs} non-BLQ observations: NONMEM's "
            "objective function value (without constant)",
            aic_bic_note="AIC = -2LL + 2 p, BIC = -2LL + p log(n_obs) (R's AIC/BIC conventions), p = number "
            "of estimated parameters",
        )

    # diagnostics, convergence
    if post is not None:
        rd = dict(post.diagnostics)
        free_tab = table[~table["fixed"]]
        div_n, div_warm = _divergences(post, rd)
        diagn = {
            "max_rhat": float(np.nanmax(free_tab["rhat"])) if free_tab["rhat"].notna().any() else None,
            "min_ess_bulk": float(np.nanmin(free_tab["ess_bulk"])) if free_tab["ess_bulk"].notna().any() else None,
            "divergences": div_n,
            "divergences_warmup": div_warm,
            "divergences_note": "divergences: sampling iterations only (idata.nc sample_stats.diverging); "
            "warm-up divergences are counted apart (divergences_warmup)",
            "n_rejected": rd.get("n_rejected"),
            "chains": int(u_draws.shape[0]),
            "draws_per_chain": int(u_draws.shape[1]),
            "method_diagnostics": _jsonable(rd),
        }
        if post.priors:  # the priors are part of the result: fit.json states them line by line
            diagn["priors"] = str(post.priors).splitlines()
        converged = (diagn["max_rhat"] is None or diagn["max_rhat"] <= 1.01 or u_draws.shape[0] < 2) and not div_n
        if method == "nuts":
            message = (
                f"{u_draws.shape[0]} chain(s) x {u_draws.shape[1]} draws; max R-hat "
                f"{_g(diagn['max_rhat'])}, min bulk ESS {_g(diagn['min_ess_bulk'])}, divergences {div_n} "
                f"(sampling; warm-up {div_warm if div_warm is not None else '-'}, not counted)"
            )
        else:
            elbo = rd.get("elbo")
            last = (
                f"; final loss (negative ELBO) {_g(float(np.asarray(elbo)[-1]))}"
                if elbo is not None and np.size(elbo)
                else ""
            )
            message = (
                f"{u_draws.shape[1]} draws of the fitted approximation{last} (check the loss trace in "
                "fit.json: SVI has no convergence diagnostic)"
            )
        if method == "nuts" and u_draws.shape[0] >= 2 and diagn["max_rhat"] is not None and diagn["max_rhat"] > 1.01:
            notes.append(f"R-hat up to {diagn['max_rhat']:.3f} > 1.01: chains disagree; run longer or reparameterize")
        if div_n:
            notes.append(f"{div_n} divergent transitions after warm-up: the posterior may be biased")
        times = dict(post.times)
        idata = post.idata
    else:
        diagn = {
            "n_iter": lap.n_iter,
            "n_eval": lap.n_eval,
            "covariance": lap.cov_message,
            "history_minus2ll": [float(h) for h in lap.history],
            "max_gradient": float(lap.max_gradient),
            "n_restarts": int(lap.n_restarts),
        }
        converged, message = bool(lap.converged), lap.message
        times = dict(lap.times)
        idata = None
        if lap.cov_u is None:
            notes.append(f"standard errors unavailable: {lap.cov_message}")

    say("NCA of the observed data")
    nca_tab = _nca(prob, data, notes)
    grid = None
    if fine_grid:
        say("individual predictions on a fine time grid")
        grid = dg.grid_predictions(prob, u_full, eta)
        if grid is None:
            notes.append(
                "individual plots at the observation times (no fine grid: reset records or the "
                "augmented dataset could not be built)"
            )
    if not bayes or method == "nuts":  # objective.json says whether the objective is at a converged fit
        objective.update(converged=bool(converged), convergence=message)
    times["diagnostics_s"] = time.perf_counter() - t0
    opts = dict(options or {})
    opts.update(vpc_replicates=int(vpc_replicates), npde_replicates=int(npde_replicates), vpc_bins=vpc_bins, seed=seed)
    if vpc_stratify:
        opts["vpc_stratify"] = vpc_stratify
    return FitResult(
        method=method,
        problem=prob,
        spec=prob.spec,
        u_full=u_full,
        parameters=table,
        objective=objective,
        individual=individual,
        predictions=predictions,
        nca=nca_tab,
        vpc=vpc,
        eta=eta,
        converged=converged,
        message=message,
        diagnostics=diagn,
        times=times,
        notes=notes + list(prob.notes),
        raw=raw,
        data_source=data_source,
        model_source=model_source,
        options=opts,
        grid=grid,
        draws=draws,
        idata=idata,
        pcvpc=pcvpc,
        vpc_points=vpc_points,
        pcvpc_points=pcvpc_points,
        covariates=covariates,
        covariance=cov_free,
    )
