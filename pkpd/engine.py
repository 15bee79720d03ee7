"""The event engine: NONMEM/PREDPP dosing-record semantics on fixed-shape arrays.

One subject's records become a *timeline* of points, each an instant at which something happens:

* a **record point** for every data record (observation, dose, reset, other event). Resets (EVID 3,
  EVID 4, SS=1) clear the state and running infusions there; steady-state records add the periodic
  steady state computed from that record's parameters;
* an **arrival** for every dose (the record's own and each ADDL copy, ``TIME + k*II``), at the dose time
  plus the lag of its target compartment: a bolus jump, or the start of an infusion;
* a **stop** at the end of every infusion, and of infusions still running at a steady-state record.

Points are sorted by ``(time, sequence)``: a dose arriving at the same time as a later record is given
*before* it (NONMEM), and a record's own unlagged dose comes right after the record (so a reset on an
EVID=4 record happens first). Points of an epoch that ends with a reset are dropped if they fall after
it. Between consecutive points the state is propagated with constant parameters and constant infusion
rates, by the exact linear solution or by diffrax. Parameters for the interval ``(t_{n-1}, t_n]`` come
from record ``n`` (next observation carried backward, as NONMEM) or record ``n-1`` (LOCF, optional).

Everything here is pure JAX on arrays padded to a static layout, written for one subject and batched
with ``jax.vmap``; a batch of the same layout compiles once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .solvers._solvers import ODE, Analytic, analytic_op, analytic_phi, analytic_step, ode_step
from .solvers.analytic import propagators

__all__ = ["Layout", "simulate_arrays"]


@dataclass(frozen=True)
class Layout:
    """Static shape information of a padded batch (hashable: it is part of the compiled program).

    Attributes
    ----------
    n_rec, n_dose, n_ss
        Records, dose slots (records' own doses plus ADDL copies) and steady-state records per subject.
    n_route
        Sub-doses per dose (1 unless the model splits doses, e.g. dual absorption).
    n_overlap
        Past infusions that can still be running at a steady-state record (ceil((lag + dur)/II)).
    has_infusion
        Whether any dose in the batch can be an infusion (adds stop points).
    time_varying
        Whether parameters can change between records (otherwise one parameter set per subject).
    locf
        Use last-observation-carried-forward instead of NONMEM's next-observation-carried-backward.
    """

    n_rec: int
    n_dose: int
    n_ss: int
    n_route: int
    n_overlap: int
    has_infusion: bool
    time_varying: bool
    locf: bool = False


# ---------------------------------------------------------------------------------------------------
# dose delivery


def _route_quantities(model, lay: Layout, cmt, amt, ratecol, th):
    """Per sub-dose target, lag, bolus amount, infusion rate, duration for one dose record.

    ``th`` holds the source record's parameters: ``p`` (dict of structural scalars) and per-compartment
    ``F``, ``ALAG``, ``R``, ``D`` vectors.
    """
    S = lay.n_route
    F = th["F"][cmt]
    fa = F * amt
    # default route: NONMEM semantics for the record's own compartment
    is_inf0 = ratecol != 0.0
    r_fixed = ratecol
    r_model = th["R"][cmt]
    d_model = th["D"][cmt]
    rate0 = jnp.where(ratecol > 0, r_fixed, jnp.where(ratecol == -1.0, r_model, 0.0))
    safe_rate0 = jnp.where(rate0 > 0, rate0, 1.0)
    dur0 = jnp.where(ratecol == -2.0, d_model, fa / safe_rate0)
    safe_dur0 = jnp.where(dur0 > 0, dur0, 1.0)
    rate0 = jnp.where(ratecol == -2.0, fa / safe_dur0, rate0)
    target = [cmt] + [jnp.asarray(0)] * (S - 1)
    lag = [th["ALAG"][cmt]] + [jnp.zeros_like(amt)] * (S - 1)
    bolus = [jnp.where(is_inf0, 0.0, fa)] + [jnp.zeros_like(amt)] * (S - 1)
    rate = [jnp.where(is_inf0, rate0, 0.0)] + [jnp.zeros_like(amt)] * (S - 1)
    dur = [jnp.where(is_inf0, dur0, 0.0)] + [jnp.zeros_like(amt)] * (S - 1)
    valid = [jnp.asarray(True)] + [jnp.asarray(False)] * (S - 1)
    for c, routes in model.routes.items():
        routed = (cmt == c) & (ratecol == 0.0)
        for j in range(S):
            if j < len(routes):
                rt = routes[j]
                frac = th["p"][rt.fraction] if rt.fraction else 1.0
                if rt.complement:
                    frac = 1.0 - frac
                a = frac * fa
                lg = th["ALAG"][rt.target]
                if rt.mode == "zero_order":
                    d = th["p"][rt.duration]
                    b, rr, dd = 0.0, a / jnp.where(d > 0, d, 1.0), d
                else:
                    b, rr, dd = a, 0.0, 0.0
                target[j] = jnp.where(routed, rt.target, target[j])
                lag[j] = jnp.where(routed, lg, lag[j])
                bolus[j] = jnp.where(routed, b, bolus[j])
                rate[j] = jnp.where(routed, rr, rate[j])
                dur[j] = jnp.where(routed, dd, dur[j])
                valid[j] = jnp.where(routed, True, valid[j])
            else:
                valid[j] = jnp.where(routed, False, valid[j])
    st = lambda v: jnp.stack([jnp.asarray(u) for u in v])  # noqa: E731
    return {"target": st(target).astype(jnp.int32), "lag": st(lag), "bolus": st(bolus), "rate": st(rate),
            "dur": st(dur), "valid": st(valid)}


# ---------------------------------------------------------------------------------------------------
# parameters per record


def _record_theta(th_all, i):
    return {"p": {k: v[i] for k, v in th_all["p"].items()}, "F": th_all["F"][i], "ALAG": th_all["ALAG"][i],
            "R": th_all["R"][i], "D": th_all["D"][i]}


# ---------------------------------------------------------------------------------------------------
# steady state


def _ss_window(model, lay, rq, ii):
    """Piecewise description of one dosing interval ``[t_ss - II, t_ss]`` at steady state.

    Returns the sub-interval lengths, the constant rate vector in each, the bolus jump at the start of
    each, and the rates still running at the window's end with their remaining durations.
    """
    n = model.n_cmt
    S, M = lay.n_route, lay.n_overlap
    m_idx = jnp.arange(M)
    # infusion m (m=0 the latest past dose) of route j runs over [lag_j - m*II, lag_j - m*II + dur_j]
    starts = rq["lag"][:, None] - m_idx[None, :] * ii  # (S, M)
    ends = starts + rq["dur"][:, None]
    is_inf = (rq["rate"] > 0) & rq["valid"]
    bps = jnp.concatenate([jnp.zeros(1), jnp.full((1,), ii), rq["lag"], jnp.clip(ends, 0.0, ii).ravel()])
    order = jnp.argsort(bps, stable=True)
    b = bps[order]
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    dts = jnp.diff(b)
    mids = 0.5 * (b[:-1] + b[1:])
    onehot = jax.nn.one_hot(rq["target"], n, dtype=b.dtype)  # (S, n)
    active = (starts[None] <= mids[:, None, None]) & (mids[:, None, None] < ends[None]) & is_inf[None, :, None]
    rates = jnp.einsum("ksm,s,sn->kn", active.astype(b.dtype), rq["rate"], onehot)
    jump_pos = rank[2:2 + S]  # sorted position of each route's lag point: its jump starts that interval
    bol = jnp.where(rq["valid"] & ~is_inf, rq["bolus"], 0.0)
    k_idx = jnp.arange(dts.shape[0])
    jumps = jnp.einsum("ks,s,sn->kn", (jump_pos[None, :] == k_idx[:, None]).astype(b.dtype), bol, onehot)
    running = (ends > ii) & is_inf[:, None]  # (S, M) still running at t_ss
    run_rate = jnp.einsum("sm,s,sn->n", running.astype(b.dtype), rq["rate"], onehot)
    remaining = jnp.where(running, ends - ii, 0.0)
    stop_rates = (running[..., None] * rq["rate"][:, None, None] * onehot[:, None, :]).reshape(S * M, n)
    return dts, rates, jumps, run_rate, remaining.reshape(S * M), running.reshape(S * M), stop_rates


def _period_map(prop, x, dts, rates, jumps):
    def body(x, k):
        x = x + jumps[k]
        return prop(x, rates[k], dts[k]), None

    x, _ = jax.lax.scan(body, x, jnp.arange(dts.shape[0]))
    return x


def _steady_state(model, lay, solver, th, rq, ii, ratecol, cmt, is_const_inf, ode_prop=None):
    """State at the steady-state record time, running rates and the stops of running infusions."""
    n = model.n_cmt
    dtype = rq["bolus"].dtype
    ii_safe = jnp.where(ii > 0, ii, 1.0)
    dts, rates, jumps, run_rate, remaining, running, stop_rates = _ss_window(model, lay, rq, ii_safe)
    r_const = jax.nn.one_hot(cmt, n, dtype=dtype) * jnp.where(ratecol > 0, ratecol, 0.0)
    if isinstance(solver, Analytic):
        op = analytic_op(model, th["p"])
        prop = lambda x, r, dt: analytic_step(op, x, r, dt)  # noqa: E731
        c = _period_map(prop, jnp.zeros(n, dtype), dts, rates, jumps)
        A = analytic_phi(op, ii_safe)
        x_per = jnp.linalg.solve(jnp.eye(n, dtype=dtype) - A, c)
        x_inf = jnp.linalg.solve(op["K"], -r_const)
    else:
        prop = ode_prop

        def resid(x):
            return _period_map(prop, x, dts, rates, jumps) - x

        x_per = _newton(resid, jnp.zeros(n, dtype), iters=6)

        def resid_inf(x):
            return model.vector_field(0.0, x, th["p"], r_const, None)

        x_inf = _newton(resid_inf, jnp.zeros(n, dtype), iters=30)
    x_ss = jnp.where(is_const_inf, x_inf, x_per)
    run_rate = jnp.where(is_const_inf, 0.0, run_rate)  # the constant infusion stops at the record (NONMEM)
    running = running & ~is_const_inf
    return x_ss, run_rate, remaining, running, stop_rates


def _newton(resid, x0, iters):
    def body(x, _):
        r = resid(x)
        J = jax.jacfwd(resid)(x)
        return x - jnp.linalg.solve(J, r), None

    x, _ = jax.lax.scan(body, x0, None, length=iters)
    return x


# ---------------------------------------------------------------------------------------------------
# one subject


def _subject(model, lay: Layout, solver, rec, dose, ss, th_all):
    n = model.n_cmt
    R, D, S, P_ss, M = lay.n_rec, lay.n_dose, lay.n_route, lay.n_ss, lay.n_overlap
    dtype = rec["time"].dtype
    t_rec = rec["time"]

    # ---- doses: arrivals and stops ------------------------------------------------------------
    src = dose["src"]

    def dose_rq(s):
        return _route_quantities(model, lay, rec["cmt"][s], rec["amt"][s], rec["rate"][s], _record_theta(th_all, s))

    rq = jax.vmap(dose_rq)(src)  # each (D, S)
    arr_t = dose["time"][:, None] + rq["lag"]
    stop_t = arr_t + rq["dur"]
    keep_lim = rec["next_reset"][src][:, None]
    keep_last = rec["epoch_last"][src][:, None]
    base_valid = dose["valid"][:, None] & rq["valid"]
    arr_valid = base_valid & ((arr_t < keep_lim) | (arr_t <= keep_last))
    is_inf = rq["rate"] > 0
    stop_valid = arr_valid & is_inf & ((stop_t < keep_lim) | (stop_t <= keep_last))
    onehot = jax.nn.one_hot(rq["target"], n, dtype=dtype)  # (D, S, n)
    forcing_mask = jnp.zeros(n, bool) if model.forcing_cmt is None else jnp.arange(n) == model.forcing_cmt
    jump_arr = jnp.where(arr_valid[..., None] & ~forcing_mask, rq["bolus"][..., None] * onehot, 0.0)
    drate_arr = jnp.where(arr_valid[..., None], rq["rate"][..., None] * onehot, 0.0)
    seq_dose = src.astype(dtype)[:, None] + 0.5 + jnp.zeros((D, S), dtype)
    forcing = None
    if model.forcing_cmt is not None:
        f_amt = jnp.where(arr_valid & (rq["target"] == model.forcing_cmt), rq["bolus"], 0.0)
        forcing = (arr_t.ravel(), f_amt.ravel())

    # ---- steady state records ---------------------------------------------------------------------
    ode_prop_for = None
    if isinstance(solver, ODE):
        def ode_prop_for(p):
            return lambda x, r, dt: ode_step(model, solver, p, x, r, 0.0, dt, None)[0]

    if P_ss > 0:
        def ss_one(s):
            th = _record_theta(th_all, s)
            rq_s = _route_quantities(model, lay, rec["cmt"][s], rec["amt"][s], rec["rate"][s], th)
            const_inf = (rec["amt"][s] == 0) & (rec["rate"][s] > 0) & (rec["ii"][s] == 0)
            return _steady_state(model, lay, solver, th, rq_s, rec["ii"][s], rec["rate"][s], rec["cmt"][s],
                                 const_inf, ode_prop_for(th["p"]) if ode_prop_for else None)

        x_ss, run_rate, remaining, running, stop_rates = jax.vmap(ss_one)(ss["src"])
        ss_src = ss["src"]
        rec_jump = jnp.zeros((R, n), dtype).at[ss_src].add(jnp.where(ss["valid"][:, None], x_ss, 0.0))
        rec_drate = jnp.zeros((R, n), dtype).at[ss_src].add(jnp.where(ss["valid"][:, None], run_rate, 0.0))
        ss_stop_t = t_rec[ss_src][:, None] + remaining
        ss_lim = rec["next_reset"][ss_src][:, None]
        ss_last = rec["epoch_last"][ss_src][:, None]
        ss_stop_valid = running & ss["valid"][:, None] & ((ss_stop_t < ss_lim) | (ss_stop_t <= ss_last))
        ss_stop_drate = jnp.where(ss_stop_valid[..., None], -stop_rates, 0.0)
        ss_seq = ss_src.astype(dtype)[:, None] + 0.5 + jnp.zeros_like(ss_stop_t)
    else:
        rec_jump = jnp.zeros((R, n), dtype)
        rec_drate = jnp.zeros((R, n), dtype)

    # ---- assemble points ----------------------------------------------------------------------------
    times = [t_rec, arr_t.ravel()]
    seqs = [jnp.arange(R, dtype=dtype), seq_dose.ravel()]
    valids = [rec["valid"], arr_valid.ravel()]
    resets = [rec["reset"], jnp.zeros(D * S, bool)]
    jumps = [rec_jump, jump_arr.reshape(D * S, n)]
    drates = [rec_drate, drate_arr.reshape(D * S, n)]
    if lay.has_infusion:
        times.append(stop_t.ravel())
        seqs.append(seq_dose.ravel())
        valids.append(stop_valid.ravel())
        resets.append(jnp.zeros(D * S, bool))
        jumps.append(jnp.zeros((D * S, n), dtype))
        drates.append(-drate_arr.reshape(D * S, n) * stop_valid.reshape(D * S, 1))
        if P_ss > 0:
            times.append(ss_stop_t.ravel())
            seqs.append(ss_seq.ravel())
            valids.append(ss_stop_valid.ravel())
            resets.append(jnp.zeros(ss_stop_t.size, bool))
            jumps.append(jnp.zeros((ss_stop_t.size, n), dtype))
            drates.append(ss_stop_drate.reshape(-1, n))
    t_pt = jnp.concatenate(times)
    seq_pt = jnp.concatenate(seqs)
    valid_pt = jnp.concatenate(valids)
    reset_pt = jnp.concatenate(resets)
    jump_pt = jnp.concatenate(jumps)
    drate_pt = jnp.concatenate(drates)
    big = jnp.max(jnp.where(valid_pt, t_pt, 0.0)) + 1.0
    key_t = jnp.where(valid_pt, t_pt, big)
    order = jnp.lexsort((seq_pt, key_t))
    t_s = key_t[order]
    reset_s = reset_pt[order] & valid_pt[order]
    jump_s = jump_pt[order]
    drate_s = drate_pt[order]
    valid_s = valid_pt[order]
    t_prev = jnp.concatenate([t_s[:1], t_s[:-1]])
    dt_s = jnp.where(valid_s, jnp.maximum(t_s - t_prev, 0.0), 0.0)
    n_pt = t_s.shape[0]

    # rates in force after each point (segmented by resets)
    def rate_comb(a, b):
        (ka, va), (kb, vb) = a, b
        return ka * kb, vb + kb[..., None] * va

    keep = jnp.where(reset_s, 0.0, 1.0)
    _, rate_after = jax.lax.associative_scan(rate_comb, (keep, drate_s))
    rate_before = jnp.concatenate([jnp.zeros((1, n), dtype), rate_after[:-1]])

    # parameter set for the interval ending at each point
    n_valid = jnp.sum(rec["valid"])
    t_rec_pad = jnp.where(rec["valid"], t_rec, jnp.inf)
    idx = jnp.searchsorted(t_rec_pad, t_s, side="left")
    idx = idx - 1 if lay.locf else idx
    pidx = jnp.clip(idx, 0, n_valid - 1)

    # ---- propagate ---------------------------------------------------------------------------------
    if isinstance(solver, Analytic):
        if lay.time_varying:
            ops = jax.vmap(lambda i: analytic_op(model, _record_theta(th_all, i)["p"]))(jnp.arange(R))
            lam = ops["lam"][pidx]
            Pb = ops["P"][pidx]
            f, g = propagators(lam, dt_s, with_input=lay.has_infusion)
            A = jnp.einsum("pj,pjab->pab", f, Pb)
            c = jnp.einsum("pj,pjab,pb->pa", g, Pb, rate_before) if lay.has_infusion else 0.0
        else:
            op = analytic_op(model, _record_theta(th_all, 0)["p"])
            f, g = propagators(op["lam"][None, :], dt_s, with_input=lay.has_infusion)
            A = jnp.einsum("pj,jab->pab", f, op["P"])
            c = jnp.einsum("pj,jab,pb->pa", g, op["P"], rate_before) if lay.has_infusion else 0.0
        A = A * keep[:, None, None]
        c = c * keep[:, None] + jump_s

        def body(x, k):
            x = A[k] @ x + c[k]
            return x, x

        _, states = jax.lax.scan(body, jnp.zeros(n, dtype), jnp.arange(n_pt))
        ok = jnp.asarray(True)
    else:
        p_rec = th_all["p"]

        def body(carry, k):
            x, ok = carry
            p = {name: v[pidx[k]] for name, v in p_rec.items()}
            y, good = ode_step(model, solver, p, x, rate_before[k], t_prev[k], dt_s[k], forcing, throw=False)
            y = jnp.where(reset_s[k], 0.0, y) + jump_s[k]
            return (y, ok & good), y

        (_, ok), states = jax.lax.scan(body, (jnp.zeros(n, dtype), jnp.asarray(True)), jnp.arange(n_pt))

    # ---- outputs at records: after the record and its own unlagged dose --------------------------------
    pos = jnp.zeros(n_pt, jnp.int32).at[order].set(jnp.arange(n_pt, dtype=jnp.int32))
    anchor = pos[:R]
    own = rec["dose0"]
    has_own = own >= 0
    own_safe = jnp.where(has_own, own, 0)
    arr_pos = pos[R:R + D * S].reshape(D, S)[own_safe]  # (R, S)
    same_t = (arr_t[own_safe] == t_rec[:, None]) & arr_valid[own_safe] & has_own[:, None]
    anchor = jnp.maximum(anchor, jnp.max(jnp.where(same_t, arr_pos, -1), axis=1))
    return states[anchor], ok


@partial(jax.jit, static_argnames=("model", "lay", "solver"))
def simulate_arrays(model, lay: Layout, solver, rec, dose, ss, theta):
    """Amounts (N, n_rec, n_cmt) at every record, for a padded batch; and a per-subject success flag.

    ``theta`` is the dict ``{"p": {name: (N, R)}, "F"|"ALAG"|"R"|"D": (N, R, n_cmt)}``.
    """
    fn = partial(_subject, model, lay, solver)
    return jax.vmap(fn)(rec, dose, ss, theta)
