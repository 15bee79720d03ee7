"""The relaxed (expected-value, differentiable) programs of a regimen in a population, used by the optimizer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..xla import jit
from .kernel import _chain_sum, _oird_rate, _ordered_sum
from .options import SimOptions, mme_factor
from .plan import RegimenPlan
from .protocol import RegimenLike

__all__ = ["relaxed_objective", "relaxed_program", "relaxed_rows"]


def relaxed_objective(
    regimen: RegimenLike,
    population: pd.DataFrame,
    *,
    seed: int = 0,
    options: SimOptions | None = None,
    tit_tau: float = 0.25,
):
    """Differentiable expected outcomes of a regimen as a function of dose multipliers.

    PRN and PCA are replaced by their expectations (:class:`SimOptions` ``relaxed=True``: smooth NRS
    thresholds, mean-field lockout; hourly/24-h caps are not applied in this mode), so the outcomes are
    smooth functions of the doses and can be differentiated with :func:`jax.grad`.

    Parameters
    ----------
    regimen, population, seed, options
        As for :func:`simulate_regimen` (``options.relaxed`` is forced on).
    tit_tau
        Temperature (NRS points) of the smooth time-in-target indicator ``sigmoid((3 - NRS)/tau)``.

    Returns
    -------
    f : callable
        ``f(sched_mult, rescue_mult) -> dict`` of per-patient arrays ``MME_0_72`` (mg), ``PAIN_AUC``
        (NRS*h), ``PAIN_EXCESS`` (integral of (NRS-3)+, NRS*h), ``TIT3`` (smooth fraction of 0-72 h with
        NRS <= 3), ``GE4`` and ``GE7`` (smooth fractions with NRS >= 4 and >= 7). ``sched_mult`` (n_scheduled,) multiplies each ``regimen.scheduled`` item's doses,
        ``rescue_mult`` (n_rescue,) each PRN group's / PCA's dose (order: PRN groups by first appearance, then
        PCAs). jit-compiled; differentiable in both arguments.
    n_scheduled, n_rescue : int
    """

    outcomes, data, n_sched, n_resc = relaxed_program(regimen, population, seed=seed, options=options, tit_tau=tit_tau)

    @jit
    def f(sched_mult, rescue_mult):
        return outcomes(sched_mult, rescue_mult, data)

    return f, n_sched, n_resc


_RELAXED_PROGRAMS: dict = {}


def relaxed_program(
    regimen: RegimenLike,
    population: pd.DataFrame,
    *,
    seed: int = 0,
    options: SimOptions | None = None,
    tit_tau: float = 0.25,
):
    """:func:`relaxed_objective` split into a pure function shared by every population of one structure
    and the arrays of this population.

    Returns
    -------
    outcomes : callable
        ``outcomes(sched_mult, rescue_mult, data) -> dict`` (as ``f`` of :func:`relaxed_objective`, plus
        ``MME_0_24``, ``OIRD_HAZARD`` (cumulative OIRD hazard before the OSA odds ratio) and
        ``SEDATION_MAX`` (smooth maximum of the sedation index)), a pure JAX function: jit it,
        differentiate it, vmap it. ``sched_mult`` may be (n_scheduled,) or (N, n_scheduled) (one row of
        multipliers per population row, to optimize several patients in one call). The same function
        object is returned for every regimen and population with the same drugs, rescue rules, grid and
        options, so a jitted caller compiles once per structure and shapes, not once per patient.
    data : dict
        Arrays of this regimen and population (pass as ``data``).
    n_scheduled, n_rescue : int
    """
    import jax
    import jax.numpy as jnp

    opts = dataclasses.replace(options or SimOptions(), relaxed=True, record_doses=False, record_states=False)
    plan = RegimenPlan.build(regimen, population, opts)
    arrays, _, sched_rows, _ = plan.arrays(population, seed)
    ev_item, seg_item, n_sched = plan.index
    dt = float(opts.dt_h)
    times = plan.t0 + dt * np.arange(plan.T)
    post = np.asarray((times >= -1e-9) & (times < float(regimen.horizon_h) - 1e-9), float)
    fac = np.asarray([mme_factor(it["drug"], it["route"]) for it in plan.items] or [0.0])
    s_amt = np.zeros((len(population), max(len(sched_rows), 1)))
    s_fac = np.zeros(max(len(sched_rows), 1))
    s_item = np.full(max(len(sched_rows), 1), -1)
    s_first24 = np.zeros(max(len(sched_rows), 1))
    for j, (si, t_e, dname, route, amt, _dur) in enumerate(sched_rows):
        if t_e >= 0 and t_e < float(regimen.horizon_h):
            s_amt[:, j], s_fac[j], s_item[j] = amt, mme_factor(dname, route), si
            s_first24[j] = float(t_e < 24.0)
    data = {
        "base": jax.tree_util.tree_map(jnp.asarray, arrays),
        "ev_item": jnp.asarray(ev_item),
        "seg_item": jnp.asarray(seg_item),
        "post": jnp.asarray(post),
        "fac": jnp.asarray(fac),
        "s_amt": jnp.asarray(s_amt),
        "s_fac": jnp.asarray(s_fac),
        "s_item": jnp.asarray(s_item),
        "s_first24": jnp.asarray(s_first24),
        "times": jnp.asarray(times),
    }
    key = (plan._signature(), n_sched, float(tit_tau))  # the seed is in data["base"]["seed"]: not a key
    if key not in _RELAXED_PROGRAMS:
        if len(_RELAXED_PROGRAMS) > 16:
            _RELAXED_PROGRAMS.clear()
        _RELAXED_PROGRAMS[key] = _relaxed_outcomes(
            plan._compiled().raw, n_sched, dt, float(tit_tau), opts.ae, [b.drug.name for b in plan.blocks]
        )
    return _RELAXED_PROGRAMS[key], data, n_sched, len(plan.items)


def relaxed_rows(data: dict, rows) -> dict:
    """The ``data`` of :func:`relaxed_program` restricted to some population rows (indices, a JAX or numpy
    integer array; usable inside a jitted function, e.g. to evaluate a minibatch of draws)."""
    import jax

    out = dict(data)
    out["base"] = jax.tree_util.tree_map(lambda v: v[rows], data["base"])
    out["s_amt"] = data["s_amt"][rows]
    return out


def _relaxed_outcomes(kernel, n_sched: int, dt: float, tit_tau: float, ae, drugs: list[str]):
    import jax
    import jax.numpy as jnp

    h_oird = _oird_rate(ae)
    d_ref = float(ae.d_ref.value)

    def weights(mult, idx):
        # mult (n_sched,) shared by every row, or (N, n_sched) one row of multipliers per population row
        m = jnp.asarray(mult, float)
        m = jnp.concatenate([m, jnp.ones(m.shape[:-1] + (1,))], axis=-1)
        return m[..., jnp.where(idx >= 0, idx, n_sched)]

    def outcomes(sched_mult, rescue_mult, data):
        a = dict(data["base"])
        a["evw"] = jnp.broadcast_to(weights(sched_mult, data["ev_item"]), a["evw"].shape)
        a["segw"] = jnp.broadcast_to(weights(sched_mult, data["seg_item"]), a["segw"].shape)
        rm = jnp.concatenate([jnp.asarray(rescue_mult, float).reshape(-1), jnp.ones(1)])[: a["rmult"].shape[1]]
        a["rmult"] = jnp.broadcast_to(rm, a["rmult"].shape)
        out = kernel(a)
        y = out["nrs"]
        post = data["post"]
        fac = data["fac"]
        dose_mme = _chain_sum(out["dose"][:, :, i] * fac[i] for i in range(out["dose"].shape[2]))  # (N, T)
        sched_mme = data["s_amt"] * data["s_fac"] * weights(sched_mult, data["s_item"])
        first24 = post * (data["times"] < 24.0 - 1e-9)
        dep = out["dep"]
        # smooth maximum of the sedation index over 0-72 h: log-sum-exp at temperature 0.02 (jax.nn.logsumexp,
        # its sum written out below)
        z = jnp.where(post > 0, out["sed"] / 0.02, -jnp.inf)
        zmax = jnp.max(z, axis=1)
        zmax = jax.lax.stop_gradient(jnp.where(jnp.isfinite(zmax), zmax, 0.0))
        # every float sum over the grid in a fixed order (_ordered_sum; the same bits for a patient whatever
        # the batch), in one pass
        g = _ordered_sum(
            jnp.stack(
                [
                    dose_mme * post[None, :],
                    dose_mme * first24[None, :],
                    y * post,
                    jnp.maximum(y - 3.0, 0.0) * post,
                    jax.nn.sigmoid((3.0 - y) / tit_tau) * post,
                    jax.nn.sigmoid((y - 4.0) / tit_tau) * post,
                    jax.nn.sigmoid((y - 7.0) / tit_tau) * post,
                    (dep / d_ref) ** 2 * post,
                    jnp.exp(z - zmax[:, None]),
                ],
                axis=-1,
            ),
            axis=1,
        )
        n_post = _ordered_sum(post)
        return {
            "MME_0_72": g[:, 0] + _ordered_sum(sched_mme, axis=1),
            "MME_0_24": g[:, 1] + _ordered_sum(sched_mme * data["s_first24"], axis=1),
            "PAIN_AUC": g[:, 2] * dt,
            "PAIN_EXCESS": g[:, 3] * dt,
            "TIT3": g[:, 4] / n_post,
            # smooth fractions of 0-72 h with NRS >= 4 (treat cut-off) and >= 7 (severe pain)
            "GE4": g[:, 5] / n_post,
            "GE7": g[:, 6] / n_post,
            # cumulative OIRD hazard (before the OSA odds ratio), as in the exact outcomes
            "OIRD_HAZARD": g[:, 7] * dt * h_oird,
            "SEDATION_MAX": 0.02 * (jnp.log(g[:, 8]) + zmax),
            **{f"AUC_{d}": out["auc"][:, j] for j, d in enumerate(drugs)},
            **{f"CMAX_{d}": out["cmax"][:, j] for j, d in enumerate(drugs)},
        }

    return outcomes
