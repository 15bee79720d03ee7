"""Goodness-of-fit diagnostics of a population fit: CWRES, NPDE, VPC/pcVPC, shrinkage, WAIC/LOO, and plots.

The statistics are plain numpy functions of arrays, so they can be checked against hand computations;
:func:`evaluate_outputs`, :func:`simulate_replicates`, :func:`grid_predictions` and
:func:`pointwise_loglik` are the JAX parts that produce those arrays from a :class:`~pkpd.fit.Problem`
(each is compiled once per model structure and data shape: the problem is passed as a pytree argument).

Scales. Residuals are computed on the scale of the likelihood: DV units for additive, proportional and
combined error types, ``log DV`` for log-normal types (``y = log DV``, ``f = log IPRED``,
``d log f / d eta = (d f / d eta) / f``). BLQ records (M3 likelihood) have no residual (NaN) and are left
out of the per-subject decorrelations.

* **CWRES** (conditional weighted residuals; Hooker, Staatz & Karlsson 2007): the predictions of subject
  ``i`` are linearized in ``eta`` around its conditional estimate ``eta_i*`` (the mode for Laplace, the
  posterior median for NUTS/SVI), ``y_i ~ N(f(eta_i*) - J_i eta_i*, J_i Omega J_i^T + diag(sd_i^2))``
  with ``J_i = d f / d eta`` at ``eta_i*`` and ``sd_i`` the residual SD at the individual predictions (the
  FOCE-with-interaction form); ``CWRES_i = chol(cov_i)^{-1} (y_i - mean_i)``. ``Omega`` is the full
  random-effect covariance (IIV block and IOV kappas). Without random effects CWRES = IWRES.
* **NPDE** (normalized prediction distribution errors; Brendel et al. 2006, Comets et al. 2008): ``K``
  datasets are simulated under the model (new etas, new residual errors); per subject the observed and
  the simulated vectors are decorrelated with the empirical mean ``E_i`` and covariance ``V_i`` of the
  simulations, ``y* = L_i^{-1} (y - E_i)`` with ``V_i = L_i L_i^T`` (Cholesky, the default of the R
  package npde); ``pde_ij`` = fraction of simulated decorrelated values below the observed one, clipped
  to ``[1/(2K), 1 - 1/(2K)]``; ``npde = Phi^{-1}(pde)``. Under the model, NPDE ~ N(0, 1), independent.
* **VPC** (visual predictive check; Holford 2005, Bergstrand et al. 2011): observations of each type (and
  stratum) are binned by quantiles of TIME; in each bin the 5th, 50th and 95th percentiles of the observed
  DV are compared with the 90 % interval (5th-95th percentile over replicates) of the same percentiles of
  the simulated DV. The **pcVPC** multiplies observed and simulated values by ``PRED_bin / PRED``
  (Bergstrand 2011). BLQ records are counted, not dropped: the percentage of BLQ records per bin is
  compared with the simulated percentage below the LLOQ, and observed percentiles below the LLOQ are not
  drawn (see :func:`vpc_table`).
* **Shrinkage** (Savic & Karlsson 2009; NONMEM's SD-based ETASHRINKSD): ``100 (1 - SD(eta_hat_k) /
  omega_k)`` with ``SD`` the sample SD (ddof = 1) over subjects with observations and ``omega_k`` the
  square root of the estimated variance. Epsilon shrinkage: ``100 (1 - SD(IWRES))``.
* **WAIC and PSIS-LOO** of NUTS/SVI fits (Watanabe 2010; Vehtari, Gelman & Gabry 2017):
  :func:`information_criteria`, by ArviZ, with one definition: the pointwise log-likelihood is each
  subject's conditional log-likelihood ``log p(y_i | eta_i, theta)`` (the ``subject`` variable of the
  ``log_likelihood`` group of ``idata.nc``), so the reported values equal ``az.waic``/``az.loo`` on the
  written file. :func:`waic` is the textbook formula for any pointwise log-likelihood matrix.
* **Smooths**: :func:`lowess`, a robust local-linear smoother (Cleveland 1979) written with numpy.

References
----------
Hooker AC, Staatz CE, Karlsson MO. Conditional weighted residuals (CWRES): a model diagnostic for the
FOCE method. Pharm Res 2007;24:2187-2197.
Brendel K, Comets E, Laffont C, Laveille C, Mentre F. Metrics for external model evaluation with an
application to the population pharmacokinetics of gliclazide. Pharm Res 2006;23:2036-2049.
Comets E, Brendel K, Mentre F. Computing normalised prediction distribution errors to evaluate nonlinear
mixed-effect models: the npde add-on package for R. Comput Methods Programs Biomed 2008;90:154-166.
Holford N. The visual predictive check -- superiority to standard diagnostic (Rorschach) plots. PAGE 14
(2005) Abstr 738.
Bergstrand M, Hooker AC, Wallin JE, Karlsson MO. Prediction-corrected visual predictive checks for
diagnosing nonlinear mixed-effects models. AAPS J 2011;13:143-151.
Savic RM, Karlsson MO. Importance of shrinkage in empirical Bayes estimates for diagnostics: problems
and solutions. AAPS J 2009;11:558-569.
Gelman A, Hwang J, Vehtari A. Understanding predictive information criteria for Bayesian models. Stat
Comput 2014;24:997-1016.
Vehtari A, Gelman A, Gabry J. Practical Bayesian model evaluation using leave-one-out cross-validation
and WAIC. Stat Comput 2017;27:1413-1432.
Cleveland WS. Robust locally weighted regression and smoothing scatterplots. J Am Stat Assoc
1979;74:829-836.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.stats

from ..plotting import new_figure
from .problem import fit_jit

__all__ = [
    "IC_DEFINITION",
    "SIM_CHUNK",
    "cwres",
    "epsilon_shrinkage",
    "eta_shrinkage",
    "evaluate_outputs",
    "grid_predictions",
    "information_criteria",
    "lowess",
    "npde",
    "plot_abs_iwres",
    "plot_eta_covariates",
    "plot_eta_distributions",
    "plot_eta_pairs",
    "plot_gof",
    "plot_individual",
    "plot_qq",
    "plot_rank",
    "plot_residuals",
    "plot_trace",
    "plot_vpc",
    "pointwise_loglik",
    "qq_normal",
    "simulate_replicates",
    "vpc_table",
    "waic",
]

SIM_CHUNK = 50  # replicates per compiled simulation call (one compile serves any number of replicates)


# ---------------------------------------------------------------------------------------------------
# statistics (numpy)


def _groups(ids: np.ndarray) -> list[np.ndarray]:
    """Indices of each subject's records, in order of first appearance."""
    ids = np.asarray(ids)
    order = list(dict.fromkeys(ids.tolist()))
    return [np.nonzero(ids == i)[0] for i in order]


def cwres(
    y: np.ndarray,
    f: np.ndarray,
    jac: np.ndarray,
    eta: np.ndarray,
    omega: np.ndarray,
    sd: np.ndarray,
    ids: np.ndarray,
    valid: np.ndarray,
) -> np.ndarray:
    """Conditional weighted residuals by linearization around the conditional estimates.

    Parameters
    ----------
    y
        Observations on the likelihood scale (n_obs,) (DV units, or ``log DV`` for log-normal types).
    f
        Individual predictions ``f(eta_i*)`` on the same scale (n_obs,).
    jac
        ``d f_j / d eta_(id_j)`` (n_obs, K): derivative of each prediction with respect to its own
        subject's random effects, on the same scale.
    eta
        Conditional estimates (n_id, K), rows in subject-index order (``ids`` values index them).
    omega
        Covariance of one subject's random-effect vector (K, K).
    sd
        Residual SD at the individual predictions (n_obs,), same scale.
    ids
        Subject index 0..n_id-1 of every observation (n_obs,).
    valid
        Observations that get a residual (not BLQ, finite values) (n_obs,).

    Returns
    -------
    numpy.ndarray
        CWRES (n_obs,), NaN where ``valid`` is false. Dimensionless; N(0, 1) under the linearized model.
    """
    y, f, sd = (np.asarray(a, float) for a in (y, f, sd))
    jac = np.asarray(jac, float).reshape(len(y), -1)
    eta = np.asarray(eta, float).reshape(-1, jac.shape[1])
    omega = np.asarray(omega, float).reshape(jac.shape[1], jac.shape[1])
    valid = (
        np.asarray(valid, bool) & np.isfinite(y) & np.isfinite(f) & np.isfinite(sd) & np.all(np.isfinite(jac), axis=1)
    )
    ids = np.asarray(ids)
    out = np.full(len(y), np.nan)
    mean = f - np.einsum("jk,jk->j", jac, eta[ids]) if jac.shape[1] else f
    for idx in _groups(ids):
        idx = idx[valid[idx]]
        if idx.size == 0:
            continue
        Ji = jac[idx]
        cov = Ji @ omega @ Ji.T + np.diag(sd[idx] ** 2)
        try:
            L = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            continue
        out[idx] = scipy.linalg.solve_triangular(L, y[idx] - mean[idx], lower=True)
    return out


def npde(y: np.ndarray, sims: np.ndarray, ids: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalized prediction distribution errors (decorrelated, Cholesky), and the PDE.

    Parameters
    ----------
    y
        Observations (n_obs,) on the scale to decorrelate (the likelihood scale).
    sims
        Simulated observations under the model (n_rep, n_obs), same scale.
    ids
        Subject of every observation (n_obs,).
    valid
        Observations that get an NPDE (n_obs,) (BLQ records excluded).

    Returns
    -------
    (npde, pde)
        Arrays (n_obs,), NaN where not valid. ``pde`` is clipped to ``[1/(2K), 1 - 1/(2K)]`` with ``K`` the
        replicates used for the subject (replicates with a non-finite value are dropped per subject).
    """
    y = np.asarray(y, float)
    sims = np.asarray(sims, float)
    valid = np.asarray(valid, bool) & np.isfinite(y)
    pde = np.full(len(y), np.nan)
    for idx in _groups(np.asarray(ids)):
        idx = idx[valid[idx]]
        if idx.size == 0:
            continue
        s = sims[:, idx]
        s = s[np.all(np.isfinite(s), axis=1)]
        K = s.shape[0]
        if K < 2:
            continue
        E = s.mean(axis=0)
        if idx.size == 1:
            sd = s.std(ddof=1)
            ys, yo = (s[:, 0] - E[0]) / sd, (y[idx] - E) / sd
            ys = ys[:, None]
        else:
            V = np.cov(s, rowvar=False)
            try:
                L = np.linalg.cholesky(V)
            except np.linalg.LinAlgError:
                continue
            ys = scipy.linalg.solve_triangular(L, (s - E).T, lower=True).T  # (K, n_i)
            yo = scipy.linalg.solve_triangular(L, y[idx] - E, lower=True)
        p = np.mean(ys < yo[None, :], axis=0)
        pde[idx] = np.clip(p, 1.0 / (2 * K), 1.0 - 1.0 / (2 * K))
    return scipy.stats.norm.ppf(pde), pde


def _bin_edges(t: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges at quantiles of ``t`` (duplicates merged), the last one closed."""
    edges = np.unique(np.quantile(t, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size < 2:
        edges = np.array([t.min(), t.max() + 1e-9])
    return edges


def _pct(x: np.ndarray, q, axis: int) -> np.ndarray:
    """Percentiles ignoring NaN (failed simulations); the fast path when there are none."""
    return np.nanpercentile(x, q, axis=axis) if np.isnan(x).any() else np.percentile(x, q, axis=axis)


def vpc_table(
    time: np.ndarray,
    dv: np.ndarray,
    sims: np.ndarray,
    types: np.ndarray,
    valid: np.ndarray,
    type_names: Sequence[str],
    *,
    n_bins: int = 8,
    percentiles: Sequence[float] = (5, 50, 95),
    interval: float = 90.0,
    pred: np.ndarray | None = None,
    blq: np.ndarray | None = None,
    lloq: np.ndarray | None = None,
    strata: np.ndarray | None = None,
    return_points: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Numbers of a visual predictive check, per observation type (and stratum) and time bin.

    Plain VPC (Holford 2005) by default; prediction-corrected (pcVPC, Bergstrand et al. 2011) when
    ``pred`` is given; with censoring of values below the LLOQ when ``blq`` is given.

    Prediction correction. In every bin, observed and simulated values of record ``j`` are multiplied by
    ``PRED_bin / PRED_j`` (``PRED_bin``: median PRED of the bin's records), ``pcY_j = Y_j PRED_bin /
    PRED_j`` (Bergstrand 2011, eq. 1, lower bound 0). For log-normal error types this is the additive
    correction of ``log Y`` of the paper (``log pcY = log Y + log PRED_bin - log PRED_j``). The LLOQ of a
    record is corrected by the same factor, so whether a value is BLQ does not change. Records with
    ``PRED <= 0`` or a non-finite PRED cannot be corrected and are left out of the pcVPC (column
    ``n_excluded`` counts them).

    BLQ handling (when ``blq`` is given). Observed BLQ records are kept (not dropped): in each bin the
    fraction of observed BLQ records (``obs_blq_pct``) is compared with the 90 % interval over replicates
    of the fraction of simulated values below the record's LLOQ (``sim_blq_pct_*``). For the percentiles,
    censored values (observed BLQ, simulated below LLOQ) are set to the LLOQ; an observed percentile ``P``
    is reported as NaN when at least ``P`` % of the bin's observations are BLQ (it lies below the LLOQ and
    is unknown), as in the censored VPC of PsN. Records without an LLOQ are never censored.

    Parameters
    ----------
    time, dv
        Observation times (time unit of the dataset) and observed values (DV units) (n_obs,).
    sims
        Simulated observations (n_rep, n_obs), DV units (uncensored).
    types
        Observation-type index of each record (n_obs,), into ``type_names``.
    valid
        Records used (n_obs,): non-BLQ observations with a finite DV. BLQ records are added to these
        when ``blq`` is given.
    type_names
        Names of the observation types.
    n_bins
        Bins per type (and stratum), at quantiles of TIME (fewer when times repeat).
    percentiles
        Percentiles of the data summarized (default 5, 50, 95).
    interval
        Width (%) of the interval of each simulated percentile over replicates (default 90).
    pred
        Population predictions PRED (n_obs,), DV units: prediction-corrected VPC when given.
    blq
        BLQ flag of every record (n_obs,): count and censor BLQ values instead of leaving them out.
    lloq
        Lower limit of quantification of every record (n_obs,), DV units; NaN where there is none.
    strata
        Stratum label of every record (n_obs,) (e.g. a categorical covariate): bins and percentiles per
        type and stratum (column ``stratum``).
    return_points
        Also return the observed points as plotted (prediction-corrected when ``pred`` is given).

    Returns
    -------
    pandas.DataFrame, or (pandas.DataFrame, pandas.DataFrame) with ``return_points``
        One row per type (stratum) and bin: ``type`` (``stratum``), ``bin, t_low, t_high, t_mid`` (median
        time in the bin, time unit of the dataset), ``n``, and for each percentile ``P`` ``obs_pP,
        sim_pP_low, sim_pP_median, sim_pP_high`` (DV units; prediction-corrected with ``pred``). With
        ``pred``: ``pred_median`` (``PRED_bin``) and ``n_excluded``. With ``blq``: ``n_blq``, ``lloq``
        (median LLOQ of the bin, corrected with ``pred``), ``obs_blq_pct``, ``sim_blq_pct_low``,
        ``sim_blq_pct_median``, ``sim_blq_pct_high`` (%). The points frame has one row per record used:
        ``TYPE, STRATUM, BIN, TIME, DV`` (corrected), ``BLQ``, ``LLOQ`` (corrected).
    """
    time, dv = np.asarray(time, float), np.asarray(dv, float)
    sims = np.asarray(sims, float)
    types, valid = np.asarray(types), np.asarray(valid, bool)
    n_obs = len(time)
    censor = blq is not None
    blq_a = np.asarray(blq, bool) if censor else np.zeros(n_obs, bool)
    lloq_a = np.asarray(lloq, float) if lloq is not None else np.full(n_obs, np.nan)
    use = valid | blq_a
    if pred is not None:
        pred_a = np.asarray(pred, float)
        ok_pred = np.isfinite(pred_a) & (pred_a > 0)
    strata_a = np.asarray(strata, dtype=object) if strata is not None else np.full(n_obs, "", dtype=object)
    stratum_levels = sorted(set(strata_a[use].tolist()), key=str) if strata is not None else [""]
    lo_q, hi_q = (100 - interval) / 2, 100 - (100 - interval) / 2
    rows, points = [], []
    for t_idx, name in enumerate(type_names):
        for level in stratum_levels:
            m_all = use & (types == t_idx) & (strata_a == level)
            n_excl = 0
            if pred is not None:
                n_excl = int((m_all & ~ok_pred).sum())
                m_all = m_all & ok_pred
            if not m_all.any():
                continue
            idx = np.nonzero(m_all)[0]
            tt = time[idx]
            edges = _bin_edges(tt, min(n_bins, len(np.unique(tt))))
            b = np.clip(np.searchsorted(edges, tt, side="right") - 1, 0, len(edges) - 2)
            for k in range(len(edges) - 1):
                sel = idx[b == k]
                if sel.size == 0:
                    continue
                row = {"type": name}
                if strata is not None:
                    row["stratum"] = level
                row.update(
                    {
                        "bin": k + 1,
                        "t_low": edges[k],
                        "t_high": edges[k + 1],
                        "t_mid": float(np.median(time[sel])),
                        "n": int(sel.size),
                    }
                )
                factor = np.ones(sel.size)
                if pred is not None:
                    p_bin = float(np.median(pred_a[sel]))
                    factor = p_bin / pred_a[sel]
                    row["pred_median"] = p_bin
                    row["n_excluded"] = n_excl if k == 0 else 0
                obs_v = dv[sel] * factor
                sim_v = sims[:, sel] * factor[None, :]
                lq = lloq_a[sel] * factor
                has_lq = np.isfinite(lq)
                b_obs = blq_a[sel]
                if censor:
                    obs_v = np.where(b_obs, lq, obs_v)
                    sim_c = has_lq[None, :] & (sim_v < lq[None, :])
                    sim_v = np.where(sim_c, lq[None, :], sim_v)
                    obs_frac = 100.0 * float(b_obs.mean())
                    sim_frac = 100.0 * sim_c.mean(axis=1)
                    fq = np.percentile(sim_frac, (lo_q, 50.0, hi_q))
                    row.update(
                        {
                            "n_blq": int(b_obs.sum()),
                            "lloq": float(np.median(lq[has_lq])) if has_lq.any() else math.nan,
                            "obs_blq_pct": obs_frac,
                            "sim_blq_pct_low": float(fq[0]),
                            "sim_blq_pct_median": float(fq[1]),
                            "sim_blq_pct_high": float(fq[2]),
                        }
                    )
                sp = _pct(sim_v, percentiles, axis=1)  # (n_pct, n_rep)
                op = np.percentile(obs_v, percentiles)
                sq = _pct(sp, (lo_q, 50.0, hi_q), axis=1)  # (3, n_pct)
                for j, p in enumerate(percentiles):
                    tag = f"p{p:g}"
                    censored = censor and b_obs.any() and p <= 100.0 * b_obs.mean()
                    row[f"obs_{tag}"] = math.nan if censored else float(op[j])
                    row[f"sim_{tag}_low"] = float(sq[0, j])
                    row[f"sim_{tag}_median"] = float(sq[1, j])
                    row[f"sim_{tag}_high"] = float(sq[2, j])
                rows.append(row)
                if return_points:
                    points.append(
                        pd.DataFrame(
                            {
                                "TYPE": name,
                                "STRATUM": level,
                                "BIN": k + 1,
                                "TIME": time[sel],
                                "DV": obs_v,
                                "BLQ": b_obs.astype(int),
                                "LLOQ": lq,
                            }
                        )
                    )
    table = pd.DataFrame(rows)
    if not return_points:
        return table
    cols = ["TYPE", "STRATUM", "BIN", "TIME", "DV", "BLQ", "LLOQ"]
    return table, (pd.concat(points, ignore_index=True) if points else pd.DataFrame(columns=cols))


def eta_shrinkage(eta: np.ndarray, omega_var: np.ndarray) -> np.ndarray:
    """SD-based eta shrinkage (%) per random effect: ``100 (1 - SD(eta_hat) / sqrt(omega^2))``.

    ``eta`` (n_subjects, k): estimates of the subjects to include; ``omega_var`` (k,) variances. The SD
    is the sample SD (ddof = 1).
    """
    eta = np.asarray(eta, float)
    if eta.shape[0] < 2:
        return np.full(eta.shape[1], np.nan)
    return 100.0 * (1.0 - eta.std(axis=0, ddof=1) / np.sqrt(np.asarray(omega_var, float)))


def epsilon_shrinkage(iwres: np.ndarray) -> float:
    """Epsilon shrinkage (%), ``100 (1 - SD(IWRES))`` over the finite IWRES (Savic & Karlsson 2009)."""
    r = np.asarray(iwres, float)
    r = r[np.isfinite(r)]
    return float(100.0 * (1.0 - r.std(ddof=1))) if r.size > 1 else math.nan


def waic(loglik: np.ndarray) -> dict:
    """WAIC from pointwise log-likelihoods ``(n_draws, n_points)`` (Gelman, Hwang & Vehtari 2014), by ArviZ
    through :func:`information_criteria` (the package's one definition).

    Returns ``{"waic", "lppd", "p_waic", "se"}`` on the deviance scale (``waic = -2 (lppd - p_waic)``);
    ``se`` is the standard error of WAIC over the points. Draws with a non-finite value are dropped.
    """
    ll = np.asarray(loglik, float)
    ll = ll[np.all(np.isfinite(ll), axis=1)]
    if ll.shape[0] < 2:
        return {"waic": math.nan, "lppd": math.nan, "p_waic": math.nan, "se": math.nan}
    w = information_criteria(ll[None])["waic"]
    return {"waic": w["waic"], "lppd": w["lppd"], "p_waic": w["p_waic"], "se": w["se"]}


def lowess(
    x: np.ndarray,
    y: np.ndarray,
    *,
    frac: float = 2.0 / 3.0,
    iterations: int = 3,
    x_eval: np.ndarray | None = None,
    max_fit_points: int = 200,
) -> np.ndarray:
    """Robust locally weighted linear regression (LOWESS; Cleveland 1979), numpy only.

    At a point ``x0`` the smooth is the intercept of a straight line fitted by weighted least squares to
    the ``k = ceil(frac n)`` nearest neighbours, with tricube weights ``(1 - (|x - x0| / h)^3)^3`` (``h``:
    distance to the ``k``-th nearest neighbour). ``iterations`` robustness steps follow: each point gets
    the bisquare weight ``(1 - (r / 6 s)^2)^2`` of its residual ``r`` (``s``: median absolute residual;
    zero beyond ``6 s``) and the local fits are repeated with the product of both weights. When more
    than half of the residuals are exactly zero (``s = 0``), the points off the curve get weight zero.

    The local fits are made at the distinct values of ``x`` or, when there are more than
    ``max_fit_points`` of them, at ``max_fit_points`` quantiles of ``x``, and interpolated linearly in
    between (as the ``delta`` option of R's ``lowess``). A local-linear smoother reproduces a straight
    line exactly, and for ``y = x^2`` on a symmetric neighbourhood it returns ``x0^2 + sum(w u^2) /
    sum(w)`` (``u = x - x0``): a bias of at most ``h^2``.

    Parameters
    ----------
    x, y
        Data (n,), any units; non-finite pairs are ignored.
    frac
        Fraction of the data in each local neighbourhood (span), in (0, 1].
    iterations
        Robustness iterations (0: plain local-linear fit; R's default is 3).
    x_eval
        Where to return the smooth (units of ``x``); default ``x``. Values outside the range of ``x``
        get the value at the nearest end.
    max_fit_points
        Most local fits (their number sets the cost: ``O(max_fit_points n)`` per iteration).

    Returns
    -------
    numpy.ndarray
        The smooth at ``x_eval`` (units of ``y``); all NaN with fewer than 3 finite points.
    """
    x = np.asarray(x, float).ravel()
    y = np.asarray(y, float).ravel()
    xe = x if x_eval is None else np.asarray(x_eval, float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = x.size
    if n < 3:
        return np.full(xe.shape, np.nan)
    k = int(min(n, max(2, math.ceil(float(frac) * n))))
    z = np.unique(x)
    if z.size > max_fit_points:
        z = np.unique(np.quantile(x, np.linspace(0.0, 1.0, int(max_fit_points))))
    span = float(x.max() - x.min())
    scale = max(1.0, float(np.max(np.abs(y))))

    def fit(wr: np.ndarray) -> np.ndarray:
        out = np.empty(z.size)
        for a in range(0, z.size, 256):  # blocks of fit points: (256, n) work arrays
            zb = z[a : a + 256]
            u = x[None, :] - zb[:, None]
            d = np.abs(u)
            h = np.partition(d, k - 1, axis=1)[:, k - 1]
            h = np.where(h > 0, h, max(span, 1.0) * 1e-12)[:, None]
            w = np.where(d < h, (1.0 - (d / h) ** 3) ** 3, 0.0) * wr[None, :]
            s0, s1, s2 = w.sum(1), (w * u).sum(1), (w * u * u).sum(1)
            t0, t1 = (w * y).sum(1), (w * u * y).sum(1)
            det = s0 * s2 - s1 * s1
            with np.errstate(all="ignore"):
                lin = (s2 * t0 - s1 * t1) / det
                flat = t0 / s0
            good_lin = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
            out[a : a + 256] = np.where(good_lin, lin, flat)
        return out

    ones = np.ones(n)
    fz = fit(ones)
    for _ in range(int(iterations)):
        r = y - np.interp(x, z, fz)
        s = float(np.median(np.abs(r)))
        if s <= 1e-12 * scale:
            wr = (np.abs(r) <= 1e-9 * scale).astype(float)
        else:
            q = r / (6.0 * s)
            wr = np.where(np.abs(q) < 1.0, (1.0 - q * q) ** 2, 0.0)
        new = fit(wr)
        fz = np.where(np.isfinite(new), new, fz)  # a neighbourhood left without weight keeps its value
    return np.interp(xe, z, fz)


def information_criteria(idata, var_name: str = "subject", *, posterior: Mapping | None = None) -> dict:
    """WAIC and PSIS-LOO of a fit by ArviZ (``az.waic``, ``az.loo``) from its pointwise log-likelihood.

    One definition for every Bayesian fit of this package: the pointwise log-likelihood is the
    conditional log-likelihood of each **subject**, ``log p(y_i | eta_i, theta)`` summed over the
    subject's observations (BLQ records by their M3 censored likelihood), at every posterior draw of
    ``(theta, eta_i)`` (variable ``subject`` of the ``log_likelihood`` group of ``idata.nc``). The
    subject, not the observation, is the unit left out: observations of one subject are not
    exchangeable. The values are those ``az.waic(idata, var_name="subject")`` and ``az.loo(idata,
    var_name="subject")`` give on the written ``idata.nc``.

    Parameters
    ----------
    idata
        ``arviz.InferenceData`` with a ``log_likelihood`` group holding ``var_name`` (chain, draw, ID),
        or an array of that shape (nats).
    var_name
        The pointwise log-likelihood variable.
    posterior
        With an array: posterior draws ``{name: (chain, draw, ...)}`` put beside it. ``az.loo`` takes the
        relative efficiency of the draws from the ``posterior`` group (mean ESS / number of draws); without
        one, the draws are taken as independent (relative efficiency 1).

    Returns
    -------
    dict
        ``waic``: ``{"waic", "se", "p_waic", "elpd_waic", "elpd_se", "lppd", "warning"}`` and ``loo``:
        ``{"looic", "se", "p_loo", "elpd_loo", "elpd_se", "pareto_k_max", "n_pareto_k_above_0.7",
        "warning"}``. ``elpd_*`` are on the log scale (nats, ArviZ's default ``scale="log"``);
        ``waic = -2 elpd_waic`` and ``looic = -2 elpd_loo`` on the deviance scale with ``se`` the
        standard error on that scale (``2 elpd_se``); ``lppd = elpd_waic + p_waic``. ``n_points`` and
        ``n_draws``; ``definition``: the text above in one line.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        if isinstance(idata, np.ndarray) or not hasattr(idata, "log_likelihood"):
            ll = np.asarray(idata, float)
            ll = ll.reshape((1,) * (3 - ll.ndim) + ll.shape) if ll.ndim < 3 else ll
            idata = az.from_dict(posterior=dict(posterior) if posterior else None, log_likelihood={var_name: ll})
        w = az.waic(idata, var_name=var_name, pointwise=True)
        has_post = "posterior" in idata.groups()
        lo = az.loo(idata, var_name=var_name, pointwise=True, reff=None if has_post else 1.0)
    arr = idata.log_likelihood[var_name]
    k = np.asarray(lo.pareto_k, float)
    return {
        "waic": {
            "waic": float(-2 * w.elpd_waic),
            "se": float(2 * w.se),
            "p_waic": float(w.p_waic),
            "elpd_waic": float(w.elpd_waic),
            "elpd_se": float(w.se),
            "lppd": float(w.elpd_waic + w.p_waic),
            "warning": bool(w.warning),
        },
        "loo": {
            "looic": float(-2 * lo.elpd_loo),
            "se": float(2 * lo.se),
            "p_loo": float(lo.p_loo),
            "elpd_loo": float(lo.elpd_loo),
            "elpd_se": float(lo.se),
            "pareto_k_max": float(np.nanmax(k)) if k.size else math.nan,
            "n_pareto_k_above_0.7": int(np.sum(k > 0.7)),
            "warning": bool(lo.warning),
        },
        "n_points": int(arr.shape[-1]),
        "n_draws": int(arr.shape[0] * arr.shape[1]),
        "definition": IC_DEFINITION,
    }


IC_DEFINITION = (
    "WAIC and PSIS-LOO by ArviZ (az.waic, az.loo) on the log_likelihood variable 'subject' of "
    "idata.nc: the conditional log-likelihood log p(y_i | eta_i, theta) of each subject (sum over "
    "its observations, BLQ by the M3 likelihood) at every posterior draw; one point per subject. "
    "elpd on the log scale (nats), waic/looic = -2 elpd (deviance scale)"
)


# ---------------------------------------------------------------------------------------------------
# JAX evaluations (compiled once per problem structure and shapes)


def _outputs(prob, u_full, eta, first_pseudo):
    n_id, K = eta.shape
    f_pop, _ = prob.predict(u_full, jnp.zeros_like(eta))
    if K:
        f_ind, lin = jax.linearize(lambda e: prob.predict(u_full, e)[0], eta)
        tang = jnp.broadcast_to(jnp.eye(K, dtype=eta.dtype)[:, None, :], (K, n_id, K))
        jac = jax.vmap(lin)(tang).T  # (n_obs, K): own-subject derivatives (subjects are independent)
    else:
        f_ind = f_pop
        jac = jnp.zeros((f_ind.shape[0], 0), f_ind.dtype)
    sd_ind = prob.residual_sd(u_full, f_ind)
    vals = prob.structural(prob.individual(u_full, eta))
    first = {k: v[first_pseudo, 0] for k, v in vals.items()}
    Lf = prob.chol_full(prob.packer.natural(u_full))
    return {"pred": f_pop, "ipred": f_ind, "sd": sd_ind, "jac": jac, "indiv": first, "omega_full": Lf @ Lf.T}


# one call or a few per fit: compiled with the fitting options (fast compilation, pkpd.fit.problem.fit_jit)
_outputs_jit = fit_jit(_outputs)
_sim_jit = fit_jit(lambda prob, u_full, key: prob.simulate_dv(u_full, key, SIM_CHUNK))
_predict_jit = fit_jit(lambda prob, u_full, eta: prob.predict(u_full, eta)[0])


def evaluate_outputs(prob, u_full, eta) -> dict:
    """PRED (eta = 0), IPRED (``eta``), residual SD at IPRED, ``d IPRED / d eta`` (n_obs, K), the
    individual (and derived) parameter values at each subject's first record and the covariance of one
    subject's random-effect vector (K, K); numpy arrays."""
    idp = np.asarray(prob.id_of_pseudo)
    first = np.array([int(np.argmax(idp == i)) for i in range(prob.n_id)])
    out = _outputs_jit(
        prob, jnp.asarray(u_full), jnp.asarray(eta, float).reshape(prob.n_id, prob.n_eta), jnp.asarray(first)
    )
    return jax.tree_util.tree_map(np.asarray, out)


def simulate_replicates(prob, u_full, n_rep: int, seed: int = 0) -> np.ndarray:
    """``n_rep`` replicate datasets (n_rep, n_obs) under the model at ``u_full`` (new etas and residual
    errors; DV scale), simulated in compiled chunks of :data:`SIM_CHUNK`."""
    key = jax.random.PRNGKey(seed)
    out = []
    n_chunks = max(1, -(-int(n_rep) // SIM_CHUNK))
    for k in jax.random.split(key, n_chunks):
        out.append(np.asarray(_sim_jit(prob, jnp.asarray(u_full), k)))
    return np.concatenate(out, axis=0)[:n_rep]


def _loglik_draws(prob, U, E):
    return jax.lax.map(lambda ue: prob.obs_loglik(ue[0], ue[1]), (U, E))


_loglik_jit = fit_jit(_loglik_draws)


def pointwise_loglik(prob, u_full_draws: np.ndarray, eta_draws: np.ndarray) -> np.ndarray:
    """Log-likelihood of every observation (n_draws, n_obs) at each draw of ``(u_full, eta)``."""
    return np.asarray(_loglik_jit(prob, jnp.asarray(u_full_draws), jnp.asarray(eta_draws)))


def grid_predictions(prob, u_full, eta, *, n_subjects: int = 12, n_points: int = 60) -> pd.DataFrame | None:
    """Population and individual predictions on a fine time grid for the first ``n_subjects`` subjects.

    The dataset rows of these subjects are kept (so doses, covariates and occasions are as observed) and
    ``n_points`` observation records per observation type are added between each subject's first and
    last record times; covariates and OCC on the new rows are taken from the next record (NOCB) or the
    previous one (LOCF), following the model's interpolation. Returns ``None`` when the dataset has reset
    records (EVID 3/4) or the augmented dataset cannot be built; the caller then plots at the observation
    times.

    Returns
    -------
    pandas.DataFrame or None
        Columns ``ID, TIME, type, PRED, IPRED`` (type index into the model's observation types).
    """
    from ..errors import PKPDError
    from .problem import build_problem

    fr = prob.frame
    if "EVID" in fr and np.isin(fr["EVID"].to_numpy(float), (3, 4)).any():
        return None
    obs_ids = [prob.ids[i] for i in sorted(set(np.asarray(prob.obs["id"]).tolist()))][:n_subjects]
    if not obs_ids:
        return None
    spec = prob.spec
    std = {"ID", "TIME", "DV", "MDV", "EVID", "AMT", "RATE", "II", "ADDL", "SS", "CMT", "DVID", "BLQ", "LLOQ"}
    pieces = []
    for sid in obs_ids:
        sub = fr[fr["ID"] == sid].copy()
        sub["_GRID"] = False
        t = sub["TIME"].to_numpy(float)
        grid = np.linspace(t.min(), t.max(), n_points)
        mine = np.asarray(prob.ids)[prob.obs["id"]] == sid
        new = []
        for ti, o in enumerate(spec.observations):
            rows_t = np.asarray(prob.obs["row"])[mine & (np.asarray(prob.obs["type"]) == ti)]
            if rows_t.size == 0:
                continue
            template = fr.iloc[int(rows_t[0])]
            if spec.interpolation == "nocb":  # covariates of the next record (the last one past the end)
                src = np.minimum(np.searchsorted(t, grid, side="left"), len(t) - 1)
            else:  # locf: the previous record (the first one before the start)
                src = np.maximum(np.searchsorted(t, grid, side="right") - 1, 0)
            g = sub.iloc[src].copy()
            for c in std & set(fr.columns):
                g[c] = template[c]
            g["TIME"], g["EVID"], g["MDV"], g["AMT"], g["DV"] = grid, 0.0, 0.0, 0.0, 1.0
            for c in ("RATE", "II", "ADDL", "SS", "BLQ"):
                if c in g:
                    g[c] = 0.0
            if "LLOQ" in g:
                g["LLOQ"] = np.nan
            g["_GRID"] = True
            g["_TYPE"] = ti
            new.append(g)
        if new:
            sub = pd.concat([sub] + new, ignore_index=True)
        sub["_ORDER"] = np.arange(len(sub))
        sub = sub.sort_values(["TIME", "_GRID", "_ORDER"], kind="stable")
        pieces.append(sub)
    aug = pd.concat(pieces, ignore_index=True)
    is_grid = aug["_GRID"].to_numpy(bool)
    gtype = aug["_TYPE"].to_numpy() if "_TYPE" in aug else np.zeros(len(aug))
    aug = aug.drop(columns=[c for c in ("_GRID", "_TYPE", "_ORDER") if c in aug])
    try:
        p2 = build_problem(aug, spec, solver=prob.solver)
    except (PKPDError, ValueError):
        return None
    id_pos = {v: i for i, v in enumerate(prob.ids.tolist())}
    eta2 = np.asarray(eta).reshape(prob.n_id, prob.n_eta)[[id_pos[v] for v in p2.ids.tolist()]]
    f_pop = np.asarray(_predict_jit(p2, jnp.asarray(u_full), jnp.zeros_like(jnp.asarray(eta2))))
    f_ind = np.asarray(_predict_jit(p2, jnp.asarray(u_full), jnp.asarray(eta2)))
    rows = np.asarray(p2.obs["row"])
    sel = is_grid[rows]
    return pd.DataFrame(
        {
            "ID": np.asarray(p2.ids)[p2.obs["id"]][sel],
            "TIME": np.asarray(p2.obs["time"])[sel],
            "type": gtype[rows][sel].astype(int),
            "PRED": f_pop[sel],
            "IPRED": f_ind[sel],
        }
    )


# ---------------------------------------------------------------------------------------------------
# plots (matplotlib, Agg canvas: no display needed)
#
# Every axis carries its quantity and, where one applies, its unit in parentheses: DV units from the
# model file's observation types (``unit``), the time unit from ``[model] time_unit``, "(dimensionless)"
# for residuals and log-normal etas. Every drawn line, band and point set has a legend entry.

ND = "dimensionless"


def _colors(n: int) -> list:
    base = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    return [base[i % len(base)] for i in range(n)]


def _lab(text: str, unit: str | None) -> str:
    """Axis label: ``text (unit)``, or ``text`` when the unit is not known."""
    return f"{text} ({unit})" if unit else text


def _unit(units: Mapping[str, str] | None, name: str) -> str:
    return str((units or {}).get(name, "") or "")


def _common_unit(units: Mapping[str, str] | None, names: Sequence[str]) -> str:
    """The unit of several observation types: shared, or ``type: unit`` pairs when they differ."""
    us = [_unit(units, n) for n in names]
    if len(set(us)) == 1:
        return us[0] if us else ""
    return "; ".join(f"{n}: {u or '?'}" for n, u in zip(names, us))


def _smooth(
    ax,
    x,
    y,
    *,
    log_x: bool = False,
    log_y: bool = False,
    color: str = "tab:red",
    label: str = "LOWESS smooth (span 2/3)",
    frac: float = 2.0 / 3.0,
) -> None:
    """Draw the LOWESS of ``y`` on ``x`` (:func:`lowess`) on 100 points; on log axes it is computed on the
    log scale."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True) & ((y > 0) if log_y else True)
    if ok.sum() < 5 or np.unique(x[ok]).size < 3:
        return
    tx = np.log(x[ok]) if log_x else x[ok]
    ty = np.log(y[ok]) if log_y else y[ok]
    g = np.linspace(tx.min(), tx.max(), 100)
    s = lowess(tx, ty, frac=frac, x_eval=g)
    ax.plot(np.exp(g) if log_x else g, np.exp(s) if log_y else s, color=color, linewidth=1.8, label=label)


def _ref_lines(ax, *, band: float | None = 1.96) -> None:
    """Horizontal reference lines at 0 and +-``band``, with legend entries."""
    ax.axhline(0.0, color="k", linewidth=1, label="zero")
    if band:
        ax.axhline(band, color="k", linestyle="--", linewidth=1, label=f"+{band:g} (97.5th percentile of N(0, 1))")
        ax.axhline(-band, color="k", linestyle="-.", linewidth=1, label=f"\u2212{band:g} (2.5th percentile of N(0, 1))")


def _legend(ax, **kw) -> None:
    """A legend of the labelled artists of ``ax`` (one entry per label)."""
    handles, labels = ax.get_legend_handles_labels()
    seen: dict = {}
    for h, lab in zip(handles, labels):
        if lab and not lab.startswith("_") and lab not in seen:
            seen[lab] = h
    if seen:
        ax.legend(list(seen.values()), list(seen.keys()), fontsize=kw.pop("fontsize", "x-small"), **kw)


def _fig_legend(fig, axs, **kw) -> None:
    """One figure legend with the labelled artists of all ``axs`` (one entry per label)."""
    seen: dict = {}
    for ax in axs:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab and not lab.startswith("_") and lab not in seen:
                seen[lab] = h
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), fontsize="x-small", **kw)


def _types(pred: pd.DataFrame) -> list:
    return list(dict.fromkeys(pred["TYPE"].tolist())) if len(pred) else []


def plot_gof(
    pred: pd.DataFrame,
    path: Path,
    *,
    log_axes: bool = False,
    title: str = "",
    units: Mapping[str, str] | None = None,
    smooth: bool = True,
) -> None:
    """PNG: observed DV vs PRED and vs IPRED, one row of panels per observation type.

    Each panel has the identity line and a LOWESS smooth (:func:`lowess`; on the log scale with
    ``log_axes``). BLQ records are left out (they have no observed value).

    Parameters
    ----------
    pred
        Predictions table (:attr:`FitResult.predictions`): ``TYPE, DV, PRED, IPRED, BLQ`` (DV units).
    path
        PNG file to write.
    log_axes
        Log-scaled axes (non-positive values are not shown).
    title
        Figure title.
    units
        DV unit of each observation type (``{"conc": "mg/L"}``), from the model file.
    smooth
        Draw the LOWESS smooth.
    """
    p = pred[~pred["BLQ"].astype(bool)]
    types = _types(p) or ["DV"]
    fig = new_figure(10, 4.6 * len(types))
    axs = np.atleast_2d(fig.subplots(len(types), 2, squeeze=False))
    for row, name in zip(axs, types):
        s = p[p["TYPE"] == name] if len(p) else p
        u = _unit(units, name)
        for ax, col, what in zip(row, ("PRED", "IPRED"), ("population", "individual")):
            x, y = s[col].to_numpy(float), s["DV"].to_numpy(float)
            ax.scatter(x, y, s=12, alpha=0.7, color="tab:blue", label=f"observations (n = {len(s)})")
            v = np.concatenate([x, y])
            v = v[np.isfinite(v) & ((v > 0) if log_axes else True)]
            lo, hi = (v.min(), v.max()) if v.size else (0.1, 1.0)
            ax.plot([lo, hi], [lo, hi], color="k", linewidth=1, label="identity (y = x)")
            if smooth:
                _smooth(ax, x, y, log_x=log_axes, log_y=log_axes)
            if log_axes:
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel(_lab(f"{col}, {what} prediction of {name}", u))
            ax.set_ylabel(_lab(f"observed {name}, DV", u))
            ax.grid(True, alpha=0.3)
            _legend(ax, loc="upper left")
    fig.suptitle(title or "Observed vs predicted")
    fig.subplots_adjust(
        left=0.08, right=0.98, bottom=0.12 / len(types), top=1 - 0.12 / len(types), wspace=0.25, hspace=0.3
    )
    fig.savefig(path, format="png")


def plot_residuals(
    pred: pd.DataFrame,
    path: Path,
    *,
    title: str = "",
    time_unit: str = "h",
    units: Mapping[str, str] | None = None,
    smooth: bool = True,
) -> None:
    """PNG 2 x 2: CWRES and NPDE vs TIME and vs PRED, with lines at 0 and +-1.96 and a LOWESS smooth.

    Parameters
    ----------
    pred
        Predictions table: ``TYPE, TIME, PRED, CWRES, NPDE``.
    path
        PNG file to write.
    title
        Figure title.
    time_unit
        Unit of TIME (the model file's ``time_unit``).
    units
        DV unit of each observation type (the PRED axis).
    smooth
        Draw the LOWESS smooth.
    """
    fig = new_figure(10, 8)
    axs = fig.subplots(2, 2)
    types = _types(pred)
    pu = _common_unit(units, types)
    for r, res in enumerate(("CWRES", "NPDE")):
        for c, x in enumerate(("TIME", "PRED")):
            ax = axs[r, c]
            s = pred[np.isfinite(pred[res].to_numpy(float))]
            ax.scatter(s[x], s[res], s=10, alpha=0.7, label=f"{res} (n = {len(s)})")
            _ref_lines(ax)
            if smooth:
                _smooth(ax, s[x], s[res])
            ax.set_xlabel(f"TIME ({time_unit})" if x == "TIME" else _lab("PRED, population prediction", pu))
            ax.set_ylabel(f"{res} ({ND})")
            ax.grid(True, alpha=0.3)
            _legend(ax)
    fig.suptitle(title or "Residuals")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.07, top=0.93, wspace=0.25, hspace=0.3)
    fig.savefig(path, format="png")


def plot_abs_iwres(
    pred: pd.DataFrame, path: Path, *, title: str = "", units: Mapping[str, str] | None = None, smooth: bool = True
) -> None:
    """PNG: |IWRES| vs IPRED, one panel per observation type, with a LOWESS smooth.

    A flat smooth says the residual error model describes how the spread changes with the
    concentration; a rising or falling one suggests another error model (e.g. combined instead of
    additive).

    Parameters
    ----------
    pred
        Predictions table: ``TYPE, IPRED, IWRES``.
    path
        PNG file to write.
    title
        Figure title.
    units
        DV unit of each observation type (the IPRED axis).
    smooth
        Draw the LOWESS smooth.
    """
    types = _types(pred) or ["DV"]
    fig = new_figure(6.5, 4.2 * len(types))
    axs = np.atleast_1d(fig.subplots(len(types), 1, squeeze=False)).ravel()
    for ax, name in zip(axs, types):
        s = pred[(pred["TYPE"] == name) & np.isfinite(pred["IWRES"].to_numpy(float))] if len(pred) else pred
        a = np.abs(s["IWRES"].to_numpy(float))
        ax.scatter(s["IPRED"], a, s=10, alpha=0.7, label=f"|IWRES| (n = {len(s)})")
        ax.axhline(math.sqrt(2 / math.pi), color="k", linestyle="--", linewidth=1, label="E|Z| = 0.80 for Z ~ N(0, 1)")
        if smooth:
            _smooth(ax, s["IPRED"], a)
        ax.set_xlabel(_lab(f"IPRED, individual prediction of {name}", _unit(units, name)))
        ax.set_ylabel(f"|IWRES| ({ND})")
        ax.grid(True, alpha=0.3)
        _legend(ax)
    fig.suptitle(title or "Absolute individual weighted residuals vs individual predictions")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1 / len(types), top=1 - 0.1 / len(types), hspace=0.35)
    fig.savefig(path, format="png")


def qq_normal(x: np.ndarray, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normal QQ coordinates with a pointwise band for the order statistics of ``n`` N(0, 1) values.

    The ``i``-th smallest of ``n`` values is plotted against ``Phi^{-1}((i - 3/8) / (n + 1/4))`` (Blom's
    plotting positions, as R's ``qqnorm`` for n > 10); the band is ``Phi^{-1}`` of the ``(1 -
    level) / 2`` and ``(1 + level) / 2`` quantiles of ``Beta(i, n - i + 1)``, the distribution of the
    ``i``-th uniform order statistic.

    Returns
    -------
    (theoretical, sample, band_low, band_high)
        Arrays (n,) of the finite values of ``x`` sorted; dimensionless.
    """
    v = np.sort(np.asarray(x, float)[np.isfinite(np.asarray(x, float))])
    n = v.size
    i = np.arange(1, n + 1)
    theo = scipy.stats.norm.ppf((i - 0.375) / (n + 0.25))
    a = (1 - level) / 2
    lo = scipy.stats.norm.ppf(scipy.stats.beta.ppf(a, i, n - i + 1))
    hi = scipy.stats.norm.ppf(scipy.stats.beta.ppf(1 - a, i, n - i + 1))
    return theo, v, lo, hi


def plot_qq(pred: pd.DataFrame, path: Path, *, columns: Sequence[str] = ("CWRES", "NPDE"), title: str = "") -> None:
    """PNG: normal QQ plots of CWRES and NPDE with the identity line and a 95 % pointwise band
    (:func:`qq_normal`); both should be N(0, 1) under the model.

    Parameters
    ----------
    pred
        Predictions table with the residual ``columns``.
    path
        PNG file to write.
    columns
        Residual columns, one panel each.
    title
        Figure title.
    """
    cols = [c for c in columns if c in pred]
    fig = new_figure(5 * max(1, len(cols)), 4.8)
    axs = np.atleast_1d(fig.subplots(1, max(1, len(cols)), squeeze=False)).ravel()
    for ax, col in zip(axs, cols):
        theo, v, lo, hi = qq_normal(pred[col].to_numpy(float))
        if v.size:
            ax.fill_between(theo, lo, hi, color="0.8", linewidth=0, label="95 % band of N(0, 1) order statistics")
            ax.scatter(theo, v, s=10, alpha=0.8, label=f"{col} (n = {v.size})")
            e = max(abs(theo[0]), abs(theo[-1]), 1.0)
            ax.plot([-e, e], [-e, e], color="k", linewidth=1, label="identity (N(0, 1))")
        ax.set_xlabel(f"theoretical N(0, 1) quantile ({ND})")
        ax.set_ylabel(f"sample quantile of {col} ({ND})")
        ax.grid(True, alpha=0.3)
        _legend(ax, loc="upper left")
    fig.suptitle(title or "Normal QQ plots of the residuals")
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.88, wspace=0.3)
    fig.savefig(path, format="png")


def plot_vpc(
    vpc: pd.DataFrame,
    pred: pd.DataFrame,
    path: Path,
    *,
    n_rep: int = 0,
    title: str = "",
    time_unit: str = "h",
    units: Mapping[str, str] | None = None,
    pc: bool = False,
    log_y: bool = False,
) -> None:
    """PNG: visual predictive check (:func:`vpc_table`), one row per observation type (and stratum).

    Left: observed points, the observed 5th, 50th and 95th percentiles per bin (lines) and the 90 %
    intervals of the same percentiles of the simulated data (shaded), the LLOQ when there is one, and
    observed BLQ records at their LLOQ. Right, when the table has BLQ columns and the type has an LLOQ:
    the percentage of BLQ records per bin, observed vs the 90 % interval and median of the simulations.

    Parameters
    ----------
    vpc
        :func:`vpc_table` output (with ``stratum`` when stratified).
    pred
        Observed points: the predictions table (``TYPE, TIME, DV, BLQ, LLOQ``) or the points frame of
        :func:`vpc_table` (with ``STRATUM``; prediction-corrected for a pcVPC).
    path
        PNG file to write.
    n_rep
        Replicates simulated (title).
    title
        Figure title.
    time_unit
        Unit of TIME (the model file's ``time_unit``).
    units
        DV unit of each observation type.
    pc
        The table and points are prediction-corrected (axis labels say so).
    log_y
        Log-scaled DV axis.
    """
    strat = "stratum" in vpc and len(vpc)
    groups = (
        (
            list(dict.fromkeys(zip(vpc["type"], vpc["stratum"])))
            if strat
            else [(t, None) for t in dict.fromkeys(vpc["type"].tolist())]
        )
        if len(vpc)
        else []
    )
    has_blq = "obs_blq_pct" in vpc
    n = max(1, len(groups))
    ncol = 2 if has_blq and any(np.isfinite(vpc.loc[vpc["type"] == t, "lloq"]).any() for t, _ in groups) else 1
    fig = new_figure(7 + 4.5 * (ncol - 1), 4.2 * n)
    axs = np.atleast_2d(fig.subplots(n, ncol, squeeze=False, gridspec_kw={"width_ratios": [7, 4.5][:ncol]}))
    word = "prediction-corrected " if pc else ""
    for row, (name, level) in zip(axs, groups):
        ax = row[0]
        v = vpc[(vpc["type"] == name) & ((vpc["stratum"] == level) if strat else True)]
        s = pred[pred["TYPE"] == name]
        if strat and "STRATUM" in s:
            s = s[s["STRATUM"] == level]
        blq_s = s["BLQ"].astype(bool) if "BLQ" in s else np.zeros(len(s), bool)
        q = s[~blq_s]
        ax.scatter(q["TIME"], q["DV"], s=8, color="0.5", alpha=0.6, label=f"{word}observations")
        b = s[blq_s]
        if has_blq and len(b) and "LLOQ" in b:
            ax.scatter(b["TIME"], b["LLOQ"], s=12, marker="v", color="0.3", alpha=0.7, label="BLQ records (at LLOQ)")
        t = v["t_mid"].to_numpy(float)
        for tag, color in (("p5", "tab:blue"), ("p50", "tab:red"), ("p95", "tab:green")):
            if f"obs_{tag}" not in v:
                continue
            ax.fill_between(
                t,
                v[f"sim_{tag}_low"],
                v[f"sim_{tag}_high"],
                color=color,
                alpha=0.2,
                linewidth=0,
                label=f"simulated {tag[1:]}th percentile, 90 % interval",
            )
            ax.plot(
                t,
                v[f"obs_{tag}"],
                color=color,
                linewidth=1.8 if tag == "p50" else 1.2,
                linestyle="-" if tag == "p50" else "--",
                label=f"observed {tag[1:]}th percentile",
            )
        if has_blq and np.isfinite(v["lloq"]).any():
            ax.plot(
                t,
                v["lloq"],
                color="k",
                linestyle=":",
                linewidth=1.2,
                marker="_",
                label=f"{'prediction-corrected ' if pc else ''}LLOQ (median of each bin)",
            )
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(f"TIME ({time_unit})")
        ax.set_ylabel(_lab(f"{word}{name}", _unit(units, name)))
        ax.set_title(f"{name}" + (f", stratum {level}" if strat else ""), fontsize="small")
        ax.grid(True, alpha=0.3)
        _legend(ax)
        if ncol == 2:
            ax2 = row[1]
            if np.isfinite(v["lloq"]).any():
                ax2.fill_between(
                    t,
                    v["sim_blq_pct_low"],
                    v["sim_blq_pct_high"],
                    color="tab:purple",
                    alpha=0.25,
                    linewidth=0,
                    label="simulated % BLQ, 90 % interval",
                )
                ax2.plot(
                    t,
                    v["sim_blq_pct_median"],
                    color="tab:purple",
                    linestyle="--",
                    linewidth=1,
                    label="simulated % BLQ, median",
                )
                ax2.plot(
                    t, v["obs_blq_pct"], color="k", marker="o", markersize=3, linewidth=1.2, label="observed % BLQ"
                )
                ax2.set_ylim(-2, 102)
                _legend(ax2)
            else:
                ax2.set_visible(False)
            ax2.set_xlabel(f"TIME ({time_unit})")
            ax2.set_ylabel("records below LLOQ (%)")
            ax2.grid(True, alpha=0.3)
    kind = "Prediction-corrected visual predictive check" if pc else "Visual predictive check"
    fig.suptitle(title or f"{kind} ({n_rep} replicates)")
    fig.subplots_adjust(
        left=0.1, right=0.97, bottom=0.55 / (4.2 * n), top=1 - 0.75 / (4.2 * n), hspace=0.4, wspace=0.22
    )
    fig.savefig(path, format="png")


def plot_individual(
    pred: pd.DataFrame,
    grid: pd.DataFrame | None,
    path: Path,
    *,
    type_name: str,
    type_index: int,
    max_subjects: int = 12,
    title: str = "",
    time_unit: str = "h",
    unit: str = "",
) -> None:
    """PNG grid of up to ``max_subjects`` subjects: DV points, IPRED and PRED lines.

    Parameters
    ----------
    pred
        Predictions table (``ID, TYPE, TIME, DV, BLQ, LLOQ, PRED, IPRED``).
    grid
        Predictions on a dense time grid (:func:`grid_predictions`); at the observation times when None.
    path
        PNG file to write.
    type_name, type_index
        The observation type shown.
    max_subjects
        Subjects shown (the first ones).
    title
        Figure title.
    time_unit
        Unit of TIME.
    unit
        DV unit of the type (model file).
    """
    p = pred[pred["TYPE"] == type_name]
    ids = list(dict.fromkeys(p["ID"].tolist()))[:max_subjects]
    n = max(1, len(ids))
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig = new_figure(3.2 * ncol, 2.6 * nrow + 0.6)
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, sid in zip(axs, ids):
        s = p[p["ID"] == sid].sort_values("TIME")
        q = s[~s["BLQ"].astype(bool)]
        ax.scatter(q["TIME"], q["DV"], s=12, color="k", zorder=3, label="observed (DV)")
        b = s[s["BLQ"].astype(bool)]
        if len(b):
            ax.scatter(b["TIME"], b["LLOQ"], marker="v", s=14, color="0.5", zorder=3, label="BLQ (at LLOQ)")
        g = None
        if grid is not None:
            g = grid[(grid["ID"] == sid) & (grid["type"] == type_index)].sort_values("TIME")
        src = g if g is not None and len(g) else s
        dense = src is g
        ax.plot(
            src["TIME"],
            src["IPRED"],
            color="tab:blue",
            label="IPRED, individual prediction" + (" (dense grid)" if dense else ""),
        )
        ax.plot(
            src["TIME"],
            src["PRED"],
            color="tab:red",
            linestyle="--",
            label="PRED, population prediction" + (" (dense grid)" if dense else ""),
        )
        label = f"{sid:g}" if isinstance(sid, (float, np.floating)) else str(sid)
        ax.set_title(f"ID {label}", fontsize="small")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize="x-small")
    for ax in axs[len(ids) :]:
        ax.set_visible(False)
    _fig_legend(fig, axs[: len(ids)], loc="lower center", ncol=4)
    fig.supxlabel(f"TIME ({time_unit})", y=0.06 if nrow > 1 else 0.12)
    fig.supylabel(_lab(type_name, unit))
    fig.suptitle(title or "Individual fits")
    # fixed margins: tight_layout would draw the 12-panel figure once more (a second or two)
    fig.subplots_adjust(
        left=0.07, right=0.98, bottom=0.14 if nrow > 1 else 0.3, top=0.9 if nrow > 1 else 0.8, hspace=0.45, wspace=0.28
    )
    fig.savefig(path, format="png")


def _eta_unit(eta_units: Mapping[str, str] | None, label: str) -> str:
    u = (eta_units or {}).get(label)
    return ND if u is None or u == "" else u


def plot_eta_distributions(
    individual: pd.DataFrame,
    path: Path,
    *,
    labels: Sequence[str],
    omega_var: Sequence[float],
    eta_units: Mapping[str, str] | None = None,
    title: str = "",
) -> None:
    """PNG: histogram of each random effect's estimates with the model's N(0, omega^2) density.

    Parameters
    ----------
    individual
        Per-subject table with one column per label (:attr:`FitResult.individual`).
    path
        PNG file to write.
    labels
        Random-effect columns (``eta(CL)``...).
    omega_var
        Estimated variance of each (``omega^2``), in the square of the eta's unit.
    eta_units
        Unit of each eta (additive IIV: the parameter's unit); dimensionless when not given.
    title
        Figure title.
    """
    labels = list(labels)
    n = max(1, len(labels))
    ncol = min(3, n)
    nrow = -(-n // ncol)
    fig = new_figure(4.2 * ncol, 3.4 * nrow)
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, lab, var in zip(axs, labels, omega_var):
        x = individual[lab].to_numpy(float)
        x = x[np.isfinite(x)]
        u = _eta_unit(eta_units, lab)
        sd = math.sqrt(var) if var is not None and np.isfinite(var) and var > 0 else math.nan
        ax.hist(
            x,
            bins=max(5, min(30, int(np.sqrt(max(x.size, 1))) + 2)),
            density=True,
            color="tab:blue",
            alpha=0.5,
            label=f"estimates (n = {x.size})",
        )
        if np.isfinite(sd):
            e = max(4 * sd, np.max(np.abs(x)) if x.size else 0.0)
            g = np.linspace(-e, e, 200)
            ax.plot(
                g,
                scipy.stats.norm.pdf(g, 0.0, sd),
                color="k",
                linewidth=1.5,
                label=f"N(0, omega\u00b2 = {var:.3g}) (model)",
            )
        ax.axvline(0.0, color="0.4", linestyle=":", linewidth=1, label="zero")
        ax.set_xlabel(f"{lab} ({u})")
        ax.set_ylabel("probability density (" + (ND if u == ND else f"per {u}") + ")")
        ax.grid(True, alpha=0.3)
        _legend(ax)
    for ax in axs[len(labels) :]:
        ax.set_visible(False)
    fig.suptitle(title or "Random-effect estimates and their model distribution")
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.12 / nrow, top=1 - 0.12 / nrow, hspace=0.45, wspace=0.3)
    fig.savefig(path, format="png")


def plot_eta_pairs(
    individual: pd.DataFrame,
    path: Path,
    *,
    labels: Sequence[str],
    eta_units: Mapping[str, str] | None = None,
    title: str = "",
    smooth: bool = True,
) -> None:
    """PNG: scatter matrix of the random-effect estimates (lower triangle, with a LOWESS smooth and the
    Pearson correlation in the legend) and their histograms (diagonal).

    Parameters
    ----------
    individual
        Per-subject table with one column per label.
    path
        PNG file to write.
    labels
        Random-effect columns.
    eta_units
        Unit of each eta; dimensionless when not given.
    title
        Figure title.
    smooth
        Draw the LOWESS smooths.
    """
    labels = list(labels)
    k = max(1, len(labels))
    fig = new_figure(2.9 * k + 1, 2.7 * k + 0.8)
    axs = np.atleast_2d(fig.subplots(k, k, squeeze=False))
    for i, li in enumerate(labels):
        for j, lj in enumerate(labels):
            ax = axs[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            xi = individual[li].to_numpy(float)
            xj = individual[lj].to_numpy(float)
            if i == j:
                v = xi[np.isfinite(xi)]
                ax.hist(
                    v,
                    bins=max(5, min(20, int(np.sqrt(max(v.size, 1))) + 2)),
                    color="tab:blue",
                    alpha=0.6,
                    label=f"{li} (n = {v.size})",
                )
                ax.set_ylabel("subjects (count)", fontsize="small")
            else:
                ok = np.isfinite(xi) & np.isfinite(xj)
                r = float(np.corrcoef(xj[ok], xi[ok])[0, 1]) if ok.sum() > 2 else math.nan
                _scatter_smooth(ax, xj[ok], xi[ok], f"subjects (r = {r:.2f})", smooth)
                ax.set_ylabel(f"{li} ({_eta_unit(eta_units, li)})", fontsize="small")
            ax.set_xlabel(f"{lj} ({_eta_unit(eta_units, lj)})", fontsize="small")
            ax.tick_params(labelsize="x-small")
            ax.grid(True, alpha=0.3)
            _legend(ax, fontsize="xx-small")
    fig.suptitle(title or "Random-effect estimates: pairs")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.1 / k + 0.02, top=1 - 0.1 / k - 0.02, hspace=0.45, wspace=0.4)
    fig.savefig(path, format="png")


def _scatter_smooth(ax, x: np.ndarray, y: np.ndarray, label: str, smooth: bool) -> None:
    """Subjects as points (legend ``label``) and, with ``smooth``, their LOWESS line."""
    ax.scatter(x, y, s=10, alpha=0.7, label=label)
    if smooth:
        _smooth(ax, x, y, label="LOWESS")


def _draw_boxes(ax, groups: list[np.ndarray], positions: Sequence[float], color: str = "tab:blue") -> None:
    """Box plots drawn as three labelled artists (boxes from the 25th to the 75th percentile, medians,
    whiskers to the most extreme value within 1.5 IQR) plus the points, jittered."""
    box_x, box_y, med_x, med_y, wh_x, wh_y, px, py = [], [], [], [], [], [], [], []
    rng = np.random.default_rng(0)
    for pos, g in zip(positions, groups):
        g = g[np.isfinite(g)]
        if g.size == 0:
            continue
        q1, med, q3 = np.percentile(g, (25, 50, 75))
        iqr = q3 - q1
        lo = g[g >= q1 - 1.5 * iqr].min()
        hi = g[g <= q3 + 1.5 * iqr].max()
        w = 0.3
        box_x += [pos - w, pos + w, pos + w, pos - w, pos - w, np.nan]
        box_y += [q1, q1, q3, q3, q1, np.nan]
        med_x += [pos - w, pos + w, np.nan]
        med_y += [med, med, np.nan]
        wh_x += [pos, pos, np.nan, pos, pos, np.nan]
        wh_y += [q1, lo, np.nan, q3, hi, np.nan]
        px += list(pos + rng.uniform(-0.12, 0.12, g.size))
        py += list(g)
    ax.plot(box_x, box_y, color=color, linewidth=1.2, label="box: 25th-75th percentile")
    ax.plot(med_x, med_y, color="tab:red", linewidth=2, label="median")
    ax.plot(wh_x, wh_y, color=color, linewidth=1, linestyle="--", label="whiskers (within 1.5 IQR)")
    ax.scatter(px, py, s=8, color="0.4", alpha=0.6, label="subjects")


def plot_eta_covariates(
    individual: pd.DataFrame,
    covariates: pd.DataFrame,
    path: Path,
    *,
    labels: Sequence[str],
    categorical: Sequence[str] = (),
    eta_units: Mapping[str, str] | None = None,
    covariate_units: Mapping[str, str] | None = None,
    title: str = "",
    smooth: bool = True,
) -> None:
    """PNG: each random effect's estimates against each covariate (rows: etas, columns: covariates).

    Continuous covariates: scatter with a LOWESS smooth and a line at zero; categorical ones: box plots
    per level (with the subjects as points). A trend suggests a covariate relation the model lacks.

    Parameters
    ----------
    individual
        Per-subject table: ``ID`` and one column per label.
    covariates
        Per-subject covariate values: ``ID`` and one column per covariate (the subject's first record).
    path
        PNG file to write.
    labels
        Random-effect columns.
    categorical
        Covariates drawn as box plots (also any covariate with at most 5 distinct integer values).
    eta_units
        Unit of each eta; dimensionless when not given.
    covariate_units
        Unit of each covariate (shown when given).
    title
        Figure title.
    smooth
        Draw the LOWESS smooths.
    """
    labels = list(labels)
    covs = [c for c in covariates.columns if c != "ID"]
    m = individual[["ID"] + labels].merge(covariates, on="ID", how="left")
    nr, nc = max(1, len(labels)), max(1, len(covs))
    fig = new_figure(3.6 * nc + 0.6, 2.9 * nr + 0.8)
    axs = np.atleast_2d(fig.subplots(nr, nc, squeeze=False))
    for i, lab in enumerate(labels):
        y = m[lab].to_numpy(float)
        for j, cov in enumerate(covs):
            ax = axs[i, j]
            x = pd.to_numeric(m[cov], errors="coerce").to_numpy(float)
            levels = np.unique(x[np.isfinite(x)])
            is_cat = cov in categorical or (levels.size <= 5 and np.all(levels == np.round(levels)))
            cu = (covariate_units or {}).get(cov, "")
            if is_cat:
                _draw_boxes(ax, [y[x == lv] for lv in levels], list(range(levels.size)))
                ax.set_xticks(range(levels.size), [f"{lv:g}" for lv in levels])
                ax.set_xlim(-0.6, levels.size - 0.4)
                ax.set_xlabel(_lab(cov, cu or "category"), fontsize="small")
            else:
                ok = np.isfinite(x) & np.isfinite(y)
                _scatter_smooth(ax, x[ok], y[ok], "subjects", smooth)
                ax.set_xlabel(f"{cov} ({cu or 'unit not given'})", fontsize="small")
            ax.axhline(0.0, color="k", linestyle=":", linewidth=1, label="zero")
            ax.set_ylabel(f"{lab} ({_eta_unit(eta_units, lab)})", fontsize="small")
            ax.tick_params(labelsize="x-small")
            ax.grid(True, alpha=0.3)
            _legend(ax, fontsize="xx-small")
    fig.suptitle(title or "Random-effect estimates vs covariates")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.1 / nr + 0.03, top=1 - 0.1 / nr - 0.03, hspace=0.5, wspace=0.35)
    fig.savefig(path, format="png")


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az
    return az


def plot_trace(
    draws: dict[str, np.ndarray],
    path: Path,
    *,
    max_params: int = 12,
    title: str = "",
    units: Mapping[str, str] | None = None,
) -> None:
    """PNG by ``az.plot_trace``: per parameter, the density of each chain's draws (left) and the draws
    in order (right), one line per chain.

    Parameters
    ----------
    draws
        Posterior draws ``{name: (chains, draws)}`` in natural units (sampling iterations only).
    path
        PNG file to write.
    max_params
        Parameters shown (the first ones).
    title
        Figure title.
    units
        Unit of each parameter (the parameter table's ``unit`` column).
    """
    az = _arviz()
    names = list(draws)[:max_params]
    n = max(1, len(names))
    fig = new_figure(10, 1.9 * n + 0.8)
    axs = np.atleast_2d(fig.subplots(n, 2, squeeze=False))
    data = {f"v{i}": np.asarray(draws[nm], float) for i, nm in enumerate(names)}
    if names:
        with warnings.catch_warnings():  # ArviZ 0.23 calls a matplotlib API deprecated in 3.11
            warnings.simplefilter("ignore", DeprecationWarning)
            az.plot_trace(data, axes=axs, compact=False, show=False)
    for (ax_d, ax_t), name in zip(axs, names):
        u = _unit(units, name)
        for c in list(ax_d.collections):
            c.remove()  # ArviZ's unlabelled fills under the densities
        for c, line in enumerate(ax_d.lines):
            line.set_label(f"chain {c + 1}")
        for c, line in enumerate(ax_t.lines):
            line.set_label(f"chain {c + 1}")
        ax_d.set_title(name, fontsize="small")
        ax_t.set_title(name, fontsize="small")
        ul = u or "unit not given"
        ax_d.set_xlabel(f"{name} ({ul})", fontsize="small")
        ax_d.set_ylabel(f"density (per {ul})" if u and u != ND else f"density ({ND})", fontsize="small")
        ax_t.set_xlabel("draw (sampling iteration)", fontsize="small")
        ax_t.set_ylabel(f"{name} ({ul})", fontsize="small")
        for ax in (ax_d, ax_t):
            ax.tick_params(labelsize="x-small")
        _legend(ax_t, fontsize="xx-small", loc="upper right")
        _legend(ax_d, fontsize="xx-small", loc="upper right")
    fig.suptitle(title or "Posterior draws (ArviZ trace plot; one line per chain)")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.4 / n, top=1 - 0.45 / n, hspace=0.9, wspace=0.25)
    fig.savefig(path, format="png")


def plot_rank(draws: dict[str, np.ndarray], path: Path, *, max_params: int = 12, title: str = "") -> None:
    """PNG by ``az.plot_rank``: rank histograms of each chain's draws among all chains (Vehtari et al.
    2021); for well-mixed chains they are uniform (the dashed lines).

    Parameters
    ----------
    draws
        Posterior draws ``{name: (chains, draws)}`` (sampling iterations only).
    path
        PNG file to write.
    max_params
        Parameters shown (the first ones).
    title
        Figure title.
    """
    az = _arviz()
    names = list(draws)[:max_params]
    n = max(1, len(names))
    ncol = min(3, n)
    nrow = -(-n // ncol)
    fig = new_figure(4.2 * ncol, 2.8 * nrow + 0.6)
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    data = {f"v{i}": np.asarray(draws[nm], float) for i, nm in enumerate(names)}
    if names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            az.plot_rank(data, ax=axs[: len(names)], show=False)
    for ax, name in zip(axs, names):
        for c, cont in enumerate(ax.containers):
            cont.set_label(f"chain {c + 1} rank histogram")
        for line in ax.lines:
            line.set_label("uniform ranks (expected)")
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("rank among all chains (draw rank)", fontsize="small")
        ax.set_ylabel("chain (index)", fontsize="small")
        ax.tick_params(labelsize="x-small")
        _legend(ax, fontsize="xx-small", loc="upper right")
    for ax in axs[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title or "Rank plots (ArviZ): uniform histograms for well-mixed chains")
    fig.subplots_adjust(
        left=0.08, right=0.98, bottom=0.12 / nrow + 0.02, top=1 - 0.12 / nrow - 0.02, hspace=0.6, wspace=0.3
    )
    fig.savefig(path, format="png")
