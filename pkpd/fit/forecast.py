"""Individual forecasting (model-informed precision dosing): one new patient given a population model.

Given population parameters (a model file whose estimates are the fitted values, e.g. the ``model.toml``
that ``pkpd fit`` writes) and one patient's records (covariates, genotype columns, doses, and any
concentrations or pain scores), :func:`forecast` computes

1. the maximum a posteriori (MAP) random effects ``eta*`` (empirical Bayes estimate, NONMEM's
   ``POSTHOC``) by damped Newton iterations, and the Laplace covariance ``H^{-1}``;
2. the posterior of the patient's parameters by self-normalized importance sampling with the Laplace
   approximation as proposal (a multivariate Student-t with 5 degrees of freedom on ``(eta*, H^{-1})``,
   heavier-tailed than the posterior), so the draws are exact posterior draws up to Monte Carlo error
   even where the posterior is skewed; the effective sample size is reported;
3. predictions of every observation type on a time grid: MAP curve and posterior median and 90 %
   interval (parameter uncertainty only, no residual error).

Everything after the data preparation is one compiled program (mode, proposal, weights, resampling,
predictions), fast enough to run inside an optimizer loop.

References
----------
Sheiner LB, Beal SL. Bayesian individualization of pharmacokinetics: simple implementation and
comparison with non-Bayesian methods. J Pharm Sci 1982;71:1344-1348.
Keizer RJ, ter Heine R, Frymoyer A, et al. Model-informed precision dosing at the bedside: scientific
challenges and opportunities. CPT Pharmacometrics Syst Pharmacol 2018;7:785-787.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..errors import DatasetError, DatasetViolation, ModelSpecError
from .inner import conditional_modes
from .problem import Problem, build_problem, fit_jit, unused_records
from .spec import PopulationModel, load_model

__all__ = ["Forecast", "forecast"]

_T_DF = 5.0  # degrees of freedom of the Student-t importance proposal


@partial(fit_jit, static_argnames=("n_draws",))
def _forecast_core(prob: Problem, u_full, key, n_draws: int, ps, sl, types, times):
    K = prob.n_eta
    eta0 = jnp.zeros((1, K))
    eta, H, ok, n_it = conditional_modes(prob, u_full, eta0, from_zero=False)  # eta0 is 0 already
    cov = jnp.linalg.inv(H[0]) if K else jnp.zeros((0, 0))
    cov = 0.5 * (cov + cov.T)
    k1, k2, k3 = jax.random.split(key, 3)
    # Student-t proposal around the mode
    L = jnp.linalg.cholesky(cov + 1e-12 * jnp.eye(K)) if K else jnp.zeros((0, 0))
    z = jax.random.normal(k1, (n_draws, K))
    w = jax.random.gamma(k2, _T_DF / 2.0, (n_draws,)) / (_T_DF / 2.0)
    draws = eta[0] + (z @ L.T) / jnp.sqrt(w)[:, None]
    # log q (t density up to a constant) and log posterior (up to a constant)
    if K:
        sol = jax.scipy.linalg.solve_triangular(L, (draws - eta[0]).T, lower=True)
        maha = jnp.sum(sol * sol, axis=0)
    else:
        maha = jnp.zeros(n_draws)
    log_q = -0.5 * (_T_DF + K) * jnp.log1p(maha / _T_DF)
    # one model evaluation per draw (and the mode) gives both its likelihood and its predictions on the grid
    o = prob.obs
    n_obs = o["time"].shape[0]
    at = [
        jnp.concatenate([jnp.asarray(a, dt), jnp.asarray(b, dt)])
        for a, b, dt in (
            (o["pseudo"], ps, jnp.int32),
            (o["slot"], sl, jnp.int32),
            (o["type"], types, jnp.int32),
            (o["time"], times, u_full.dtype),
        )
    ]

    def evaluate(e):
        f, ok = prob.predict_at(u_full, e[None], *at)
        return prob.neg_log_joint_at(u_full, e[None], f[:n_obs], ok)[0], f[n_obs:]

    nlj_all, pred_all = jax.vmap(evaluate)(jnp.concatenate([eta, draws]))
    nlj = nlj_all[1:]
    log_w = -nlj - log_q
    log_w = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
    wn = jax.nn.softmax(log_w)
    ess = 1.0 / jnp.sum(wn * wn)
    # systematic resampling
    u0 = jax.random.uniform(k3, ())
    cdf = jnp.cumsum(wn)
    idx = jnp.clip(jnp.searchsorted(cdf, (u0 + jnp.arange(n_draws)) / n_draws), 0, n_draws - 1)
    post = draws[idx]

    def indiv(e):
        vals = prob.structural(prob.individual(u_full, e[None]))
        return jnp.stack([vals[k][0, 0] for k in sorted(vals)])

    return {
        "eta": eta[0],
        "cov": cov,
        "converged": ok[0],
        "iterations": n_it,
        "ess": ess,
        "eta_draws": post,
        "pred_map": pred_all[0],
        "pred_draws": pred_all[1:][idx],
        "par_map": indiv(eta[0]),
        "par_draws": jax.vmap(indiv)(post),
    }


@dataclass
class Forecast:
    """Outcome of :func:`forecast`.

    Attributes
    ----------
    parameters
        Individual parameters: ``parameter, map, median, p05, p95`` (units of the model file), including
        derived structural parameters.
    draws
        Posterior draws of the individual parameters (one row per draw), for simulation or optimization.
    predictions
        ``TIME, output, map, median, p05, p95`` on the prediction grid (h; DV units of each type).
    observations
        The patient's observations: ``TIME, output, DV, BLQ``.
    eta_map, eta_cov
        MAP random effects and their Laplace covariance.
    ess
        Effective sample size of the importance sampler (out of ``n_draws``); a small value (< 10 % of
        the draws) means the Laplace proposal was poor and the intervals are rough.
    time_unit
        The model file's ``time_unit`` (label of the TIME axis in :meth:`plot`; default ``"h"``).
    output_units
        Unit of each output (the model file's observation ``unit``), for the y axes of :meth:`plot`;
        an output without one is labelled "DV units".
    """

    parameters: pd.DataFrame
    draws: pd.DataFrame
    predictions: pd.DataFrame
    observations: pd.DataFrame
    eta_map: np.ndarray
    eta_cov: np.ndarray
    eta_names: list
    ess: float
    n_draws: int
    converged: bool
    timings: dict
    notes: list = field(default_factory=list)
    time_unit: str = "h"
    output_units: dict = field(default_factory=dict)

    def summary_text(self) -> str:
        lines = [
            f"Individual forecast ({len(self.observations)} observation(s); importance-sampling ESS "
            f"{self.ess:.0f}/{self.n_draws}; MAP {'converged' if self.converged else 'NOT converged'})"
        ]
        lines.append(f"{'parameter':<12}{'MAP':>12}{'median':>12}{'5%':>12}{'95%':>12}")
        for _, r in self.parameters.iterrows():
            lines.append(f"{r['parameter']:<12}{r['map']:>12.4g}{r['median']:>12.4g}{r['p05']:>12.4g}{r['p95']:>12.4g}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Observed values and predicted bands, one panel per output; written as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        outs = list(dict.fromkeys(self.predictions["output"]))
        fig, axes = plt.subplots(len(outs), 1, figsize=(7, 3.2 * len(outs)), squeeze=False)
        for ax, o in zip(axes[:, 0], outs):
            p = self.predictions[self.predictions["output"] == o]
            ax.fill_between(p["TIME"], p["p05"], p["p95"], alpha=0.3, label="90 % interval (parameters)")
            ax.plot(p["TIME"], p["median"], lw=1.5, label="posterior median")
            ax.plot(p["TIME"], p["map"], lw=1, ls="--", label="MAP")
            ob = self.observations[self.observations["output"] == o]
            if len(ob):
                ax.plot(ob["TIME"], ob["DV"], "ko", ms=4, label="observed")
            ax.set_ylabel(f"{o} ({self.output_units.get(o) or 'DV units'})")
            ax.set_xlabel(f"time ({self.time_unit})")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def save(self, out_dir: str | Path, *, force: bool = False) -> Path:
        """Write parameters.csv, draws.csv, predictions.csv, observations.csv, forecast.png."""
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()) and not force:
            raise ModelSpecError(f"output directory {out} exists and is not empty; choose another or pass --force")
        out.mkdir(parents=True, exist_ok=True)
        self.parameters.to_csv(out / "parameters.csv", index=False)
        self.draws.to_csv(out / "draws.csv", index=False)
        self.predictions.to_csv(out / "predictions.csv", index=False)
        self.observations.to_csv(out / "observations.csv", index=False)
        self.plot(out / "forecast.png")
        return out


def _grid_rows(df: pd.DataFrame, times: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The patient's rows plus one EVID=2 row per grid time (covariates carried from the previous row);
    returns the augmented frame (sorted by TIME, original rows first at equal times), the grid rows and,
    for each row of the augmented frame, the 0-based row of ``df`` it is or copies."""
    base = df.reset_index(drop=True).copy()
    base["_ORDER"] = np.arange(len(base))
    base["_GRID"] = 0
    t = pd.to_numeric(base["TIME"], errors="coerce").to_numpy(float)
    cols = [c for c in base.columns if c not in ("_ORDER", "_GRID")]
    rows = []
    for tt in times:
        prev = np.nonzero(t <= tt)[0]
        src = base.iloc[prev[-1] if prev.size else 0]
        r = {c: src[c] for c in cols}
        r.update(
            {
                "TIME": float(tt),
                "EVID": 2,
                "MDV": 1,
                "AMT": 0,
                "DV": 0,
                "CMT": 0,
                "RATE": 0,
                "II": 0,
                "ADDL": 0,
                "SS": 0,
            }
        )
        for c in ("DVID", "BLQ", "LLOQ"):
            if c in r:
                r[c] = 0 if c != "DVID" else r[c]
        r["_ORDER"] = len(base) + len(rows)
        r["_GRID"] = 1
        r["_SRC"] = int(prev[-1] if prev.size else 0)
        rows.append(r)
    base["_SRC"] = np.arange(len(base))
    aug = pd.concat([base, pd.DataFrame(rows)], ignore_index=True)
    aug["_T"] = pd.to_numeric(aug["TIME"], errors="coerce")
    aug = aug.sort_values(["_T", "_GRID", "_ORDER"], kind="stable").reset_index(drop=True)
    grid = np.nonzero(aug["_GRID"].to_numpy() == 1)[0]
    return aug.drop(columns=["_ORDER", "_GRID", "_T", "_SRC"]), grid, aug["_SRC"].to_numpy(np.int64)


def forecast(
    model: PopulationModel | str | Path | dict,
    data: pd.DataFrame | str | Path,
    *,
    times: Sequence[float] | None = None,
    n_points: int = 200,
    n_draws: int = 1000,
    seed: int = 0,
    ignore=None,
    accept=None,
) -> Forecast:
    """Forecast one patient from a population model and the patient's own records.

    Parameters
    ----------
    model
        Population model whose estimates are the population values (e.g. ``model.toml`` written by
        ``pkpd fit``): path, mapping or :class:`PopulationModel`.
    data
        One patient's NONMEM-format records (CSV path or frame): doses, covariates (every column the model
        uses), and any observations (``DVID`` for several types; none at all gives the prior forecast).
    times
        Prediction grid (h); default: ``n_points`` from 0 to 24 h past the last record.
    n_points
        Points of the default grid.
    n_draws
        Posterior draws (importance sampling).
    seed
        Random seed.
    ignore, accept
        NONMEM ``$DATA`` record selection (:func:`pkpd.data.record_filter`): ``ignore`` characters or
        conditions (``"(DV.EQ.0)"``), ``accept`` conditions (``"(ID.EQ.3)"`` picks one patient of a
        larger file). Rows flagged ``C`` in a column named ``C`` (NONMEM's comment column) are never used.
        Error messages name the rows of the file.

    Returns
    -------
    Forecast

    Raises
    ------
    DatasetError
        On dataset faults, or records of more than one patient (after IGNORE/ACCEPT);
        :class:`pkpd.data.RecordFilterError` for a malformed IGNORE/ACCEPT option.
    ModelSpecError
        On a bad model file.
    """
    spec = model if isinstance(model, PopulationModel) else load_model(model)
    from ..data import filter_records, read_dataset

    source = str(data) if not isinstance(data, pd.DataFrame) else None
    read = read_dataset(data) if not isinstance(data, pd.DataFrame) else data.reset_index(drop=True)
    kept = filter_records(read, ignore, accept, source=source)
    raw = kept.frame
    idcol = next((c for c in raw.columns if str(c).strip().upper() == "ID"), None)
    if idcol is not None and pd.Series(raw[idcol]).nunique() > 1:
        ids = list(pd.unique(raw[idcol]))
        raise DatasetError(
            [
                DatasetViolation(
                    (),
                    "ID",
                    f"a forecast is for one patient; the data has {len(ids)} IDs "
                    f"({', '.join(map(str, ids[:5]))}...): pass one patient's rows",
                )
            ]
        )
    t_all = pd.to_numeric(raw["TIME"], errors="coerce") if "TIME" in raw else pd.Series([0.0])
    if times is None:
        tmax = float(np.nanmax(t_all)) + 24.0
        times = np.linspace(0.0, tmax, n_points)
    times = np.asarray(sorted(set(float(t) for t in times)), float)
    if times.size == 0 or not np.all(np.isfinite(times)) or times.min() < 0:
        raise ModelSpecError("prediction times must be finite and >= 0")
    aug, grid, src = _grid_rows(raw, times)
    t0 = time.perf_counter()
    prob = build_problem(aug, spec, require_observations=False, report_unused=False, rows=kept.rows[src])
    t_build = time.perf_counter() - t0
    n_types = len(spec.observations)
    ps = np.tile(prob.row_map[grid, 0], n_types)
    sl = np.tile(prob.row_map[grid, 1], n_types)
    types = np.repeat(np.arange(n_types), grid.size)
    tt = np.tile(times, n_types)
    u_full = jnp.asarray(prob.packer.init_full)
    t1 = time.perf_counter()
    out = _forecast_core(
        prob,
        u_full,
        jax.random.PRNGKey(seed),
        int(n_draws),
        jnp.asarray(ps),
        jnp.asarray(sl),
        jnp.asarray(types),
        jnp.asarray(tt),
    )
    out = jax.device_get(out)
    t_run = time.perf_counter() - t1
    # the parameter names only: traced abstractly (no small programs compiled op by op)
    names = sorted(jax.eval_shape(lambda u: prob.structural(prob.individual(u, jnp.zeros((1, prob.n_eta)))), u_full))
    pd_draws = pd.DataFrame(np.asarray(out["par_draws"]), columns=names)
    par = pd.DataFrame(
        {
            "parameter": names,
            "map": np.asarray(out["par_map"]),
            "median": pd_draws.median().to_numpy(),
            "p05": pd_draws.quantile(0.05).to_numpy(),
            "p95": pd_draws.quantile(0.95).to_numpy(),
        }
    )
    order = [p.name for p in spec.parameters] + [n for n in names if n not in {p.name for p in spec.parameters}]
    par = par.set_index("parameter").loc[order].reset_index()
    pdr = np.asarray(out["pred_draws"])
    outs = [o.name for o in spec.observations]
    pred = pd.DataFrame(
        {
            "TIME": tt,
            "output": [outs[t] for t in types],
            "map": np.asarray(out["pred_map"]),
            "median": np.median(pdr, axis=0),
            "p05": np.quantile(pdr, 0.05, axis=0),
            "p95": np.quantile(pdr, 0.95, axis=0),
        }
    )
    o = prob.obs
    obs = pd.DataFrame({"TIME": o["time"], "output": [outs[t] for t in o["type"]], "DV": o["dv"], "BLQ": o["blq"]})
    notes = list(prob.notes)
    notes = [n for n in notes if "have no observations" not in n]
    if kept.message():
        notes.insert(0, kept.message())
    _, unused_note = unused_records(raw, kept.rows)  # on the patient's own rows (row numbers of the file)
    if unused_note:
        notes.append(unused_note)
    if prob.n_obs == 0:
        notes.append("no observations: the forecast is the population prior for this patient's covariates")
    ess = float(out["ess"])
    if ess < 0.1 * n_draws:
        notes.append(f"importance-sampling ESS {ess:.0f} is below 10 % of {n_draws} draws: intervals are rough")
    return Forecast(
        parameters=par,
        draws=pd_draws,
        predictions=pred,
        observations=obs,
        eta_map=np.asarray(out["eta"]),
        eta_cov=np.asarray(out["cov"]),
        eta_names=prob.eta_labels(),
        ess=ess,
        n_draws=int(n_draws),
        converged=bool(out["converged"]),
        timings={"build_s": t_build, "run_s": t_run},
        notes=notes,
        time_unit=spec.time_unit,
        output_units={o.name: o.unit for o in spec.observations if o.unit},
    )
