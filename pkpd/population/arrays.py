"""Kernel inputs of one chunk of patients (the host-side preparation of :meth:`RegimenPlan.arrays`): PK parameters,
step propagators, scheduled doses as exact grid contributions, rescue dose vectors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import ModelSpecError
from ..expr import evaluate_parameter_block
from .blocks import _Block, _block_matrix, _expm, _expm_gamma
from .draws import _draws
from .pd_arrays import pd_arrays
from .protocol import DoseEventLike, RegimenLike

if TYPE_CHECKING:
    from .plan import RegimenPlan


def kernel_arrays(plan: RegimenPlan, sub: pd.DataFrame, seed: int):
    """The compiled kernel's inputs for the chunk ``sub`` (:meth:`RegimenPlan.arrays`, which memoizes the matrix
    exponentials and limits BLAS threads around this call): (kernel arrays, PK parameters per block, scheduled
    doses, IDs). Sets ``plan.index`` (the scheduled item of every event and infusion segment)."""
    dt = float(plan.opts.dt_h)
    n_pat, n = len(sub), plan.n
    ids = sub["ID"].to_numpy()
    params = pk_params(plan, sub, seed)
    Phi = []  # one (N, n_b, n_b) step propagator per drug block (the stacked system is block-diagonal)
    Ks = []
    for b, p in zip(plan.blocks, params):
        K = _block_matrix(b, p, n_pat)
        if not np.all(np.isfinite(K)):
            bad = np.flatnonzero(~np.isfinite(K).all(axis=(1, 2)))
            raise ModelSpecError(f"{b.drug.name}: non-finite rate constants for patient IDs {ids[bad][:10]}")
        Ks.append(K)
        Phi.append(_em(plan, K, dt, gamma=False)[0])

    # ---- scheduled events (and PCA loading/basal) -> exact grid contributions
    ev_k, ev_vec, seg_from, seg_to, seg_vec = [], [], [], [], []
    ev_item, seg_item, ev_blk = [], [], []
    sched_rows = []
    amounts = _amounts(plan, sub)
    if amounts.shape[1] != len(plan.events_template):
        raise ModelSpecError("the regimen expands to a different number of doses for different patients")
    names = [b.drug.name for b in plan.blocks]
    for j, (si, t_e, dname, route, dur) in enumerate(plan.events_template):
        bi = names.index(dname)
        b, K = plan.blocks[bi], Ks[bi]
        amt = amounts[:, j]
        sched_rows.append((si, t_e, dname, route, amt, float(dur)))
        for tgt, a_sub, s_sub, d_sub in _subdoses(b, route, amt, float(t_e), float(dur), plan, sub, seed):
            n_ev, n_seg = len(ev_k), len(seg_from)
            _contrib(plan, b, K, tgt, a_sub, s_sub, d_sub, ev_k, ev_vec, seg_from, seg_to, seg_vec, n_pat)
            ev_item += [si] * (len(ev_k) - n_ev)
            ev_blk += [bi] * (len(ev_k) - n_ev)
            seg_item += [si] * (len(seg_from) - n_seg)
    E_ = max(len(ev_k), 1)
    evk = np.full((n_pat, E_), -1, np.int32)
    evv = np.zeros((n_pat, E_, n))
    for j, (k, v) in enumerate(zip(ev_k, ev_vec)):
        evk[:, j] = k
        evv[:, j] = v
    S_ = max(len(seg_from), 1)
    sf = np.full((n_pat, S_), 1, np.int32)
    st = np.full((n_pat, S_), 0, np.int32)
    sv = np.zeros((n_pat, S_, n))
    for j in range(len(seg_from)):
        sf[:, j], st[:, j], sv[:, j] = seg_from[j], seg_to[j], seg_vec[j]

    # ---- rescue dose vectors
    items = plan.items
    n_it = len(items)
    bvec = np.zeros((n_pat, max(n_it, 1), n))
    for i, it in enumerate(items):
        b = plan._block_of(it["drug"])
        subs = _subdoses(b, it["route"], np.ones(n_pat), 0.0, 0.0, plan, sub, seed)
        for tgt, a_sub, s_sub, d_sub in subs:
            if np.any(np.asarray(s_sub) != 0.0) or np.any(np.asarray(d_sub) != 0.0):
                raise ModelSpecError(
                    f"{it['kind'].upper()} {it['drug']} {it['route']}: rescue routes with a lag "
                    "or zero-order input are not supported on the demand grid"
                )
            bvec[:, i, b.off + tgt] += a_sub

    # ---- PD per patient
    pdv = pd_arrays(plan, sub, seed)
    key_ids = ids.astype(np.int64)
    # the seed travels with the rows (an argument of the compiled kernel, not a constant baked into it):
    # a new seed never recompiles
    seeds = np.full(n_pat, int(seed) & 0x7FFFFFFF, np.int64)
    arrays = dict(Phi=Phi, evk=evk, evv=evv, sf=sf, st=st, sv=sv, bvec=bvec, ids=key_ids, seed=seeds, **pdv)
    n_sched = len(plan.regimen.scheduled)
    arrays["evw"] = np.ones((n_pat, E_))
    arrays["segw"] = np.ones((n_pat, S_))
    arrays["rmult"] = np.ones((n_pat, max(n_it, 1)))
    arrays.update(plan.rescue_tables(n_pat))
    arrays["vol"] = np.stack(
        [np.broadcast_to(np.asarray(params[j][b.model.volume], float), (n_pat,)) for j, b in enumerate(plan.blocks)]
        or [np.ones(n_pat)],
        axis=1,
    )
    arrays.update(_event_groups(evk, np.array(ev_blk + [-1] * (E_ - len(ev_blk))), len(plan.blocks), plan.T))
    plan.index = (
        np.array(ev_item + [-1] * (E_ - len(ev_item))),
        np.array(seg_item + [-1] * (S_ - len(seg_item))),
        n_sched,
    )
    return arrays, params, sched_rows, ids


def pk_params(plan: RegimenPlan, sub: pd.DataFrame, seed: int, amt=None, only: _Block | None = None) -> list[dict]:
    """Individual PK parameters per drug block (``None`` for blocks other than ``only``): covariate model, the
    patients' variability draws (cached per chunk) and the population's ``<drug>.<PARAM>`` override columns."""
    n_pat = len(sub)
    out = []
    cache = getattr(plan, "_zcache", None)
    if cache is None or cache[0] is not sub:
        cache = plan._zcache = (sub, {})
    for b in plan.blocks:
        if only is not None and b is not only:
            out.append(None)
            continue
        cols = {c: sub[c].to_numpy(float) for c in b.drug.covariates_needed() if c in sub}
        cols["AMT"] = np.zeros(n_pat) if amt is None else amt
        if b.drug.name not in cache[1]:
            cache[1][b.drug.name] = (
                _draws(sub, seed, "iiv:" + b.drug.name, len(b.iiv)) if plan.opts.iiv else np.zeros((n_pat, len(b.iiv)))
            )
        z = cache[1][b.drug.name]
        for j, (name, om) in enumerate(sorted(b.iiv.items())):
            cols[f"ETA_{name}"] = om * z[:, j]
        ov = {k: sub[f"{b.drug.name}.{k}"].to_numpy(float) for k in b.block if f"{b.drug.name}.{k}" in sub}
        p = evaluate_parameter_block(b.block, cols, np, overrides=ov or None)
        out.append({k: np.broadcast_to(np.asarray(v, float), (n_pat,)) for k, v in p.items()})
    return out


def _amounts(plan: RegimenPlan, sub: pd.DataFrame) -> np.ndarray:
    """(N, n_doses) scheduled dose amounts (mg) per patient; the regimen is expanded once per distinct
    covariate row (draws of one patient share their covariates)."""
    num = sub.select_dtypes(include="number")
    num = num.drop(columns=[c for c in ("ID",) if c in num])
    keys = [tuple(r) for r in num.to_numpy(float)]
    cache: dict[tuple, list[float]] = {}
    out = []
    for r, key in enumerate(keys):
        if key not in cache:
            cache[key] = [e.amount_mg for _, e in _expand(plan.regimen, _row_cov(sub.iloc[r]))]
        out.append(cache[key])
    return np.array(out, float).reshape(len(sub), -1)


def _em(plan: RegimenPlan, K: np.ndarray, tau, gamma: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_expm_gamma` (or, with ``gamma=False``, only ``expm(K tau)``, a matrix half the size)
    memoized within one :meth:`arrays` call: the doses of one drug usually share their sub-step offsets
    (same lag, grid-aligned dose times), so each offset is exponentiated once."""
    tau = np.broadcast_to(np.asarray(tau, float), (K.shape[0],))
    fn = _expm_gamma if gamma else (lambda K_, t_: (_expm(K_, t_), None))
    memo = getattr(plan, "_memo", None)
    if memo is None:
        return fn(K, tau)
    key = (id(K), tau.tobytes(), gamma)
    if key not in memo:
        hit = (id(K), tau.tobytes(), True)
        memo[key] = (memo[hit][0], None) if hit in memo else fn(K, tau)
    return memo[key]


def _contrib(plan: RegimenPlan, b, K, tgt, amt, s, dur, ev_k, ev_vec, seg_from, seg_to, seg_vec, n_pat):
    dt, t0, T, n = float(plan.opts.dt_h), plan.t0, plan.T, plan.n
    s = np.broadcast_to(np.asarray(s, float), (n_pat,))
    dur = np.broadcast_to(np.asarray(dur, float), (n_pat,))
    sl = slice(b.off, b.off + b.n)

    def put(k, local):
        k = np.asarray(k, np.int64)
        v = np.zeros((n_pat, n))
        ok = (k >= 0) & (k < T)
        v[:, sl] = np.where(ok[:, None], local, 0.0)
        ev_k.append(np.where(ok, k, -1))
        ev_vec.append(v)

    e_t = np.zeros((n_pat, b.n))
    e_t[:, tgt] = 1.0
    if np.all(dur == 0):
        k = np.ceil((s - t0) / dt - 1e-9).astype(np.int64)
        delta = t0 + k * dt - s
        if np.all(np.abs(delta) < 1e-12):
            put(k, e_t * amt[:, None])
        else:
            E, _ = _em(plan, K, delta, gamma=False)
            put(k, E[:, :, tgt] * amt[:, None])
        return
    if np.any(dur <= 0):
        raise ModelSpecError(f"{b.drug.name}: mixed bolus/infusion sub-doses across patients")
    rate = amt / dur
    e = s + dur
    ka = np.ceil((s - t0) / dt - 1e-9).astype(np.int64)
    kb = np.floor((e - t0) / dt + 1e-9).astype(np.int64)
    inside = ka > kb  # whole infusion inside one step
    # whole infusion inside one step (t_{ka-1}, t_ka]
    E1, _ = _em(plan, K, np.where(inside, t0 + ka * dt - e, 0.0), gamma=False)
    _, Gd = _em(plan, K, np.where(inside, dur, 0.0))
    v_in = np.einsum("pij,pj->pi", E1, Gd[:, :, tgt]) * rate[:, None]
    put(np.where(inside, ka, -1), v_in)
    # head piece s -> t_ka
    _, Gh = _em(plan, K, np.where(inside, 0.0, t0 + ka * dt - s))
    put(np.where(inside, -1, ka), Gh[:, :, tgt] * rate[:, None])
    # full steps ka+1 .. kb
    _, Gs = _em(plan, K, dt)
    v = np.zeros((n_pat, n))
    v[:, sl] = Gs[:, :, tgt] * rate[:, None]
    seg_from.append(np.where(inside, 1, ka + 1))
    seg_to.append(np.where(inside, 0, kb))
    seg_vec.append(v)
    # tail piece t_kb -> e, seen at t_{kb+1}
    tail = np.where(inside, 0.0, e - (t0 + kb * dt))
    Et, _ = _em(plan, K, np.where(tail > 1e-12, t0 + (kb + 1) * dt - e, 0.0), gamma=False)
    _, Gt = _em(plan, K, tail)
    v_t = np.einsum("pij,pj->pi", Et, Gt[:, :, tgt]) * rate[:, None]
    put(np.where((~inside) & (tail > 1e-12), kb + 1, -1), v_t)


def _subdoses(b: _Block, route: str, amt: np.ndarray, t: float, dur: float, plan: RegimenPlan, sub, seed):
    """Split one dose record into (local target index, amount, start time, duration) sub-doses."""
    from ..models import Route

    model = b.model
    cmt = b.drug.cmt(route)
    ci = cmt - 1
    p = pk_params(plan, sub, seed, amt=np.asarray(amt, float), only=b)[plan.blocks.index(b)]
    for bad in (f"R{cmt}", f"D{cmt}"):
        if bad in p:
            raise ModelSpecError(f"{b.drug.name}: modelled infusion parameter {bad} is not supported here")
    F = p.get(f"F{cmt}", 1.0)
    routes = model.routes.get(ci) or (Route(ci),)
    out = []
    for r in routes:
        frac = 1.0 if r.fraction is None else (1.0 - p[r.fraction] if r.complement else p[r.fraction])
        lag = p.get(f"ALAG{r.target + 1}", 0.0)
        a = np.asarray(amt, float) * F * frac
        if r.mode == "zero_order":
            if dur > 0:
                raise ModelSpecError(f"{b.drug.name} {route}: an infusion into a split route is not supported")
            out.append((r.target, a, t + lag, p[r.duration]))
        else:
            out.append((r.target, a, t + lag, dur))
    return out


def _expand(regimen: RegimenLike, cov: Mapping[str, float]) -> list[tuple[int, DoseEventLike]]:
    """Deterministic doses as (scheduled-item index or -1 for PCA loading/basal, DoseEvent)."""
    out = []
    for si, item in enumerate(regimen.scheduled):
        out += [(si, e) for e in item.events(cov, float(regimen.horizon_h))]
    for pc in regimen.pca:
        out += [(-1, e) for e in pc.events(float(regimen.horizon_h))]
    return out


def _event_groups(evk: np.ndarray, ev_blk: np.ndarray, n_blocks: int, T: int) -> dict:
    """Per patient and drug block, the scheduled events grouped by grid index, for the kernel's one-input-
    per-step loop: ``evo`` (N, B, E) event order (by grid index, this block's events first), ``evs``
    (N, B, E) group of each ordered event, ``evq`` (N, B, E) grid index of each group (``T + 1`` = never:
    unused groups, other blocks' events and events outside the grid)."""
    n_pat, E = evk.shape
    mine = ev_blk[None, None, :] == np.arange(n_blocks)[None, :, None]
    kb = np.where(mine & (evk[:, None, :] >= 0), evk[:, None, :], T + 1).astype(np.int64)
    order = np.argsort(kb, axis=2, kind="stable")
    ks = np.take_along_axis(kb, order, axis=2)
    new = np.concatenate([np.ones((n_pat, n_blocks, 1), bool), ks[..., 1:] != ks[..., :-1]], axis=2)
    seg = np.cumsum(new, axis=2) - 1
    kq = np.full((n_pat, n_blocks, E), T + 1, np.int64)
    np.put_along_axis(kq, seg, ks, axis=2)
    return {"evo": order.astype(np.int32), "evs": seg.astype(np.int32), "evq": kq.astype(np.int32)}


def _row_cov(row: pd.Series) -> dict[str, float]:
    out = {}
    for k, v in row.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out
