"""Goodness-of-fit diagnostics of a population fit: CWRES, NPDE, VPC, shrinkage, WAIC, and their plots.

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
* **VPC** (visual predictive check; Holford 2005, Bergstrand et al. 2011): observations of each type are
  binned by quantiles of TIME; in each bin the 5th, 50th and 95th percentiles of the observed DV are
  compared with the 90 % interval (5th-95th percentile over replicates) of the same percentiles of the
  simulated DV.
* **Shrinkage** (Savic & Karlsson 2009; NONMEM's SD-based ETASHRINKSD): ``100 (1 - SD(eta_hat_k) /
  omega_k)`` with ``SD`` the sample SD (ddof = 1) over subjects with observations and ``omega_k`` the
  square root of the estimated variance. Epsilon shrinkage: ``100 (1 - SD(IWRES))``.
* **WAIC** (Watanabe 2010; Gelman, Hwang & Vehtari 2014): ``-2 (lppd - p_waic)`` from the pointwise
  log-likelihood of every (non-BLQ and BLQ) observation over posterior draws; for a population model
  with draws of the etas this is the conditional WAIC (observations given the subject's own etas).

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.stats

from .problem import fit_jit

__all__ = ["SIM_CHUNK", "cwres", "epsilon_shrinkage", "eta_shrinkage", "evaluate_outputs", "grid_predictions",
           "npde", "plot_gof", "plot_individual", "plot_residuals", "plot_trace", "plot_vpc", "pointwise_loglik",
           "simulate_replicates", "vpc_table", "waic"]

SIM_CHUNK = 50  # replicates per compiled simulation call (one compile serves any number of replicates)


# ---------------------------------------------------------------------------------------------------
# statistics (numpy)


def _groups(ids: np.ndarray) -> list[np.ndarray]:
    """Indices of each subject's records, in order of first appearance."""
    ids = np.asarray(ids)
    order = list(dict.fromkeys(ids.tolist()))
    return [np.nonzero(ids == i)[0] for i in order]


def cwres(y: np.ndarray, f: np.ndarray, jac: np.ndarray, eta: np.ndarray, omega: np.ndarray, sd: np.ndarray,
          ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
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
    valid = np.asarray(valid, bool) & np.isfinite(y) & np.isfinite(f) & np.isfinite(sd) & np.all(
        np.isfinite(jac), axis=1)
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


def vpc_table(time: np.ndarray, dv: np.ndarray, sims: np.ndarray, types: np.ndarray, valid: np.ndarray,
              type_names: Sequence[str], *, n_bins: int = 8, percentiles: Sequence[float] = (5, 50, 95),
              interval: float = 90.0) -> pd.DataFrame:
    """Numbers of a visual predictive check, per observation type and time bin.

    Parameters
    ----------
    time, dv
        Observation times (h) and observed values (DV units) (n_obs,).
    sims
        Simulated observations (n_rep, n_obs), DV units.
    types
        Observation-type index of each record (n_obs,), into ``type_names``.
    valid
        Records used (not BLQ) (n_obs,).
    n_bins
        Bins per type, at quantiles of TIME (fewer when times repeat).
    percentiles
        Percentiles of the data summarized (default 5, 50, 95).
    interval
        Width (%) of the interval of each simulated percentile over replicates (default 90).

    Returns
    -------
    pandas.DataFrame
        One row per type and bin: ``type, bin, t_low, t_high, t_mid`` (median time in the bin), ``n``, and
        for each percentile ``P`` ``obs_pP, sim_pP_low, sim_pP_median, sim_pP_high``.
    """
    time, dv = np.asarray(time, float), np.asarray(dv, float)
    sims = np.asarray(sims, float)
    types, valid = np.asarray(types), np.asarray(valid, bool)
    lo_q, hi_q = (100 - interval) / 2, 100 - (100 - interval) / 2
    rows = []
    for t_idx, name in enumerate(type_names):
        m = valid & (types == t_idx)
        if not m.any():
            continue
        tt = time[m]
        edges = _bin_edges(tt, min(n_bins, len(np.unique(tt))))
        b = np.clip(np.searchsorted(edges, tt, side="right") - 1, 0, len(edges) - 2)
        obs_v = dv[m]
        sim_v = sims[:, m]
        for k in range(len(edges) - 1):
            sel = b == k
            if not sel.any():
                continue
            row = {"type": name, "bin": k + 1, "t_low": edges[k], "t_high": edges[k + 1],
                   "t_mid": float(np.median(tt[sel])), "n": int(sel.sum())}
            sp = _pct(sim_v[:, sel], percentiles, axis=1)  # (n_pct, n_rep)
            op = np.percentile(obs_v[sel], percentiles)
            sq = _pct(sp, (lo_q, 50.0, hi_q), axis=1)  # (3, n_pct)
            for j, p in enumerate(percentiles):
                tag = f"p{p:g}"
                row[f"obs_{tag}"] = float(op[j])
                row[f"sim_{tag}_low"] = float(sq[0, j])
                row[f"sim_{tag}_median"] = float(sq[1, j])
                row[f"sim_{tag}_high"] = float(sq[2, j])
            rows.append(row)
    return pd.DataFrame(rows)


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
    """WAIC from pointwise log-likelihoods ``(n_draws, n_obs)`` (Gelman, Hwang & Vehtari 2014).

    Returns ``{"waic", "lppd", "p_waic", "se"}`` on the deviance scale (``waic = -2 (lppd - p_waic)``);
    ``se`` is the standard error of WAIC over observations. Draws with a non-finite value are dropped.
    """
    ll = np.asarray(loglik, float)
    ll = ll[np.all(np.isfinite(ll), axis=1)]
    S = ll.shape[0]
    if S < 2:
        return {"waic": math.nan, "lppd": math.nan, "p_waic": math.nan, "se": math.nan}
    lppd_i = scipy.special.logsumexp(ll, axis=0) - math.log(S)
    p_i = ll.var(axis=0, ddof=1)
    elpd_i = lppd_i - p_i
    n = ll.shape[1]
    return {"waic": float(-2 * elpd_i.sum()), "lppd": float(lppd_i.sum()), "p_waic": float(p_i.sum()),
            "se": float(2 * math.sqrt(n * elpd_i.var(ddof=1))) if n > 1 else math.nan}


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
    out = _outputs_jit(prob, jnp.asarray(u_full), jnp.asarray(eta, float).reshape(prob.n_id, prob.n_eta),
                       jnp.asarray(first))
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
    from .._errors import PKPDError
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
    return pd.DataFrame({"ID": np.asarray(p2.ids)[p2.obs["id"]][sel], "TIME": np.asarray(p2.obs["time"])[sel],
                         "type": gtype[rows][sel].astype(int), "PRED": f_pop[sel], "IPRED": f_ind[sel]})


# ---------------------------------------------------------------------------------------------------
# plots (matplotlib, Agg canvas: no display needed)


def _fig(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list:
    base = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    return [base[i % len(base)] for i in range(n)]


def plot_gof(pred: pd.DataFrame, path: Path, *, log_axes: bool = False, title: str = "") -> None:
    """PNG: DV vs PRED and DV vs IPRED, identity lines, one color per observation type (BLQ excluded)."""
    p = pred[~pred["BLQ"].astype(bool)]
    fig = _fig(10, 4.8)
    axs = fig.subplots(1, 2)
    types = list(dict.fromkeys(p["TYPE"].tolist()))
    for ax, col in zip(axs, ("PRED", "IPRED")):
        allv = []
        for name, c in zip(types, _colors(len(types))):
            s = p[p["TYPE"] == name]
            ax.scatter(s[col], s["DV"], s=12, alpha=0.7, color=c, label=name if len(types) > 1 else None)
            allv += [s[col].to_numpy(float), s["DV"].to_numpy(float)]
        v = np.concatenate(allv) if allv else np.array([0.0, 1.0])
        v = v[np.isfinite(v) & ((v > 0) if log_axes else True)]
        lo, hi = (v.min(), v.max()) if v.size else (0.1, 1.0)
        ax.plot([lo, hi], [lo, hi], color="k", linewidth=1)
        if log_axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"{col} ({'population' if col == 'PRED' else 'individual'} prediction)")
        ax.set_ylabel("DV (observed)")
        ax.grid(True, alpha=0.3)
        if len(types) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(title or "Observed vs predicted")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.88, wspace=0.25)
    fig.savefig(path, format="png")


def plot_residuals(pred: pd.DataFrame, path: Path, *, title: str = "", time_unit: str = "h") -> None:
    """PNG 2 x 2: CWRES vs TIME and vs PRED, NPDE vs TIME and vs PRED, lines at 0 and +-1.96 (``time_unit``:
    the TIME axis label's unit)."""
    fig = _fig(10, 8)
    axs = fig.subplots(2, 2)
    for r, res in enumerate(("CWRES", "NPDE")):
        for c, x in enumerate(("TIME", "PRED")):
            ax = axs[r, c]
            s = pred[np.isfinite(pred[res].to_numpy(float))]
            ax.scatter(s[x], s[res], s=10, alpha=0.7)
            for yv, ls in ((0, "-"), (1.96, "--"), (-1.96, "--")):
                ax.axhline(yv, color="k", linestyle=ls, linewidth=1)
            ax.set_xlabel(f"TIME ({time_unit})" if x == "TIME" else "PRED")
            ax.set_ylabel(res)
            ax.grid(True, alpha=0.3)
    fig.suptitle(title or "Residuals")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.07, top=0.93, wspace=0.25, hspace=0.3)
    fig.savefig(path, format="png")


def plot_vpc(vpc: pd.DataFrame, pred: pd.DataFrame, path: Path, *, n_rep: int = 0, title: str = "",
             time_unit: str = "h") -> None:
    """PNG: one panel per observation type: observed points, observed 5/50/95 % percentiles per bin, and
    the 90 % intervals of the simulated percentiles (shaded); ``time_unit`` labels the TIME axis."""
    types = list(dict.fromkeys(vpc["type"].tolist())) if len(vpc) else []
    n = max(1, len(types))
    fig = _fig(7, 4.2 * n)
    axs = np.atleast_1d(fig.subplots(n, 1))
    for ax, name in zip(axs, types):
        v = vpc[vpc["type"] == name]
        s = pred[(pred["TYPE"] == name) & ~pred["BLQ"].astype(bool)]
        ax.scatter(s["TIME"], s["DV"], s=8, color="0.5", alpha=0.6, label="observed")
        t = v["t_mid"].to_numpy(float)
        for tag, color in (("p5", "tab:blue"), ("p50", "tab:red"), ("p95", "tab:blue")):
            ax.fill_between(t, v[f"sim_{tag}_low"], v[f"sim_{tag}_high"], color=color, alpha=0.2, linewidth=0,
                            label=f"simulated {tag[1:]}th pct, 90 % interval" if tag != "p95" else None)
            ax.plot(t, v[f"obs_{tag}"], color=color, linewidth=1.5 if tag == "p50" else 1,
                    linestyle="-" if tag == "p50" else "--",
                    label=f"observed {tag[1:]}th pct" if tag != "p95" else None)
        ax.set_xlabel(f"TIME ({time_unit})")
        ax.set_ylabel(f"DV ({name})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle(title or f"Visual predictive check ({n_rep} replicates)")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1 / n, top=1 - 0.08 / n, hspace=0.3)
    fig.savefig(path, format="png")


def plot_individual(pred: pd.DataFrame, grid: pd.DataFrame | None, path: Path, *, type_name: str,
                    type_index: int, max_subjects: int = 12, title: str = "", time_unit: str = "h") -> None:
    """PNG grid of up to ``max_subjects`` subjects: DV points, IPRED and PRED lines (fine grid when
    ``grid`` is given, else at the observation times); ``time_unit`` labels the TIME axis."""
    p = pred[pred["TYPE"] == type_name]
    ids = list(dict.fromkeys(p["ID"].tolist()))[:max_subjects]
    n = max(1, len(ids))
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig = _fig(3.2 * ncol, 2.6 * nrow)
    axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, sid in zip(axs, ids):
        s = p[p["ID"] == sid].sort_values("TIME")
        q = s[~s["BLQ"].astype(bool)]
        ax.scatter(q["TIME"], q["DV"], s=12, color="k", zorder=3, label="DV")
        b = s[s["BLQ"].astype(bool)]
        if len(b):
            ax.scatter(b["TIME"], b["LLOQ"], marker="v", s=14, color="0.5", zorder=3, label="BLQ (at LLOQ)")
        g = None
        if grid is not None:
            g = grid[(grid["ID"] == sid) & (grid["type"] == type_index)].sort_values("TIME")
        src = g if g is not None and len(g) else s
        ax.plot(src["TIME"], src["IPRED"], color="tab:blue", label="IPRED")
        ax.plot(src["TIME"], src["PRED"], color="tab:red", linestyle="--", label="PRED")
        label = f"{sid:g}" if isinstance(sid, (float, np.floating)) else str(sid)
        ax.set_title(f"ID {label}", fontsize="small")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize="x-small")
    for ax in axs[len(ids):]:
        ax.set_visible(False)
    axs[0].legend(fontsize="x-small")
    fig.supxlabel(f"TIME ({time_unit})")
    fig.supylabel(f"DV ({type_name})")
    fig.suptitle(title or "Individual fits")
    # fixed margins: tight_layout would draw the 12-panel figure once more (a second or two)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08 if nrow > 1 else 0.15, top=0.9 if nrow > 1 else 0.8,
                        hspace=0.45, wspace=0.28)
    fig.savefig(path, format="png")


def plot_trace(draws: dict[str, np.ndarray], path: Path, *, max_params: int = 12, title: str = "") -> None:
    """PNG: trace (per chain) and density of each parameter's posterior draws ``(chains, draws)``."""
    names = list(draws)[:max_params]
    n = max(1, len(names))
    fig = _fig(10, 1.9 * n)
    axs = np.atleast_2d(fig.subplots(n, 2, squeeze=False))
    for (ax_t, ax_d), name in zip(axs, names):
        x = np.asarray(draws[name], float)
        for c in range(x.shape[0]):
            ax_t.plot(x[c], linewidth=0.5, alpha=0.8)
            ax_d.hist(x[c][np.isfinite(x[c])], bins=30, histtype="step", density=True)
        ax_t.set_ylabel(name, fontsize="small")
        ax_t.tick_params(labelsize="x-small")
        ax_d.tick_params(labelsize="x-small")
    axs[-1, 0].set_xlabel("draw")
    axs[-1, 1].set_xlabel("value")
    fig.suptitle(title or "Posterior draws (one line per chain)")
    fig.subplots_adjust(left=0.14, right=0.98, bottom=0.3 / n, top=1 - 0.35 / n, hspace=0.35, wspace=0.2)
    fig.savefig(path, format="png")
