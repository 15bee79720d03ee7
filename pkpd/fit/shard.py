"""The subjects of a Laplace fit sharded over the local devices (:mod:`pkpd.batch`).

Subjects are independent given the population parameters: the conditional modes, the Hessians of each
subject's joint density and each subject's Laplace term depend on that subject's records only. A
:class:`ShardedProblem` splits a :class:`~pkpd.fit.problem.Problem` into one sub-problem per device
(consecutive subjects, counts differing by at most one; a device with fewer gets a padding subject without
observations), stacks
them on a leading device axis and runs :func:`~pkpd.fit.inner.conditional_modes` and the per-subject
Laplace terms on every device's subjects with ``jax.shard_map``.

Per subject the computation is the one-device computation (the conditional modes are bit-identical); the
objective is the sum of per-device partial sums (padding masked out), so it and its gradient agree with the
one-device values to rounding (about 1e-15 relative), and a fit's BFGS path follows the one-device path to
the optimizer's tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import batch
from .inner import INNER_GTOL, INNER_MAX_ITER, conditional_modes, laplace_terms
from .problem import _DEV_OBS, Problem, fit_jit

__all__ = ["ShardedProblem", "shard_problem"]


def _leading(tree, n: int) -> bool:
    return all(getattr(v, "shape", (None,))[:1] == (n,) for v in jax.tree_util.tree_leaves(tree))


def _take(tree, idx: np.ndarray):
    return jax.tree_util.tree_map(lambda v: np.asarray(v)[idx], tree)


def _sub_problem(prob: Problem, subjects: np.ndarray, n_id: int, n_pseudo: int, n_obs: int) -> Problem:
    """The problem restricted to ``subjects`` (indices), padded to ``n_id`` subjects, ``n_pseudo`` engine
    pseudo-subjects and ``n_obs`` observations (padding observations copy a real one and belong to no
    subject: their log-likelihood is dropped by the per-subject sum)."""
    idp = np.asarray(prob.id_of_pseudo)
    pseudo = np.flatnonzero(np.isin(idp, subjects))
    new_id = np.full(prob.n_id, -1)
    new_id[subjects] = np.arange(len(subjects))
    new_ps = np.full(len(idp), -1)
    new_ps[pseudo] = np.arange(len(pseudo))
    o = prob.obs
    obs_rows = np.flatnonzero(np.isin(o["id"], subjects))
    pad_ps = np.concatenate([pseudo, np.repeat(pseudo[:1], n_pseudo - len(pseudo))])
    pad_obs = (
        np.concatenate([obs_rows, np.repeat(obs_rows[:1], n_obs - len(obs_rows))])
        if len(obs_rows)
        else np.zeros(n_obs, int)
    )
    obs = {}
    for k, v in o.items():
        v = np.asarray(v)
        obs[k] = v[pad_obs] if len(v) else v
    obs["pseudo"] = new_ps[o["pseudo"]][pad_obs] if len(obs_rows) else np.zeros(n_obs, int)
    ids_new = new_id[o["id"]][pad_obs] if len(obs_rows) else np.full(n_obs, n_id)
    ids_new[len(obs_rows) :] = n_id  # out of range: dropped by segment_sum
    obs["id"] = ids_new
    id_of_pseudo = new_id[idp[pad_ps]]
    id_of_pseudo[len(pseudo) :] = min(len(subjects), n_id - 1)  # padding pseudo-subjects: no observations
    return prob.replace(
        arrays=_take(prob.arrays, pad_ps),
        cov=_take(prob.cov, pad_ps),
        effects=[[(rel, sl, np.asarray(d)[pad_ps]) for rel, sl, d in lst] for lst in prob.effects],
        occ=None if prob.occ is None else np.asarray(prob.occ)[pad_ps],
        id_of_pseudo=id_of_pseudo,
        obs=obs,
        ids=np.concatenate([np.asarray(prob.ids)[subjects], np.full(n_id - len(subjects), -1)]),
        notes=[],
    )


class ShardedProblem:
    """A :class:`Problem` split by subjects over devices, with the Laplace computations on every device.

    Build with :func:`shard_problem`. ``modes(u_full, eta)`` and ``value_and_grad(u, eta, H)`` take and
    return arrays in the original subject order, as :func:`~pkpd.fit.inner.conditional_modes` and
    ``jax.value_and_grad(laplace_objective, argnums=1)`` do.
    """

    def __init__(self, prob: Problem, devices):
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        self.prob = prob
        self.devices = list(devices)
        nd = len(self.devices)
        N = prob.n_id
        groups = np.array_split(np.arange(N), nd)  # consecutive subjects, sizes differing by at most one
        per = max(len(g) for g in groups)
        idp = np.asarray(prob.id_of_pseudo)
        n_pseudo = max(int(np.isin(idp, g).sum()) for g in groups)
        n_obs = max(max(int(np.isin(prob.obs["id"], g).sum()) for g in groups), 1)
        subs = [_sub_problem(prob, g, per, n_pseudo, n_obs) for g in groups]
        self.per = per
        self.mask = np.stack([np.arange(per) < len(g) for g in groups])  # (nd, per) real subjects
        self.index = np.concatenate(groups)  # position in the stacked (nd * per) order -> subject
        self.slot = np.concatenate([i * per + np.arange(len(g)) for i, g in enumerate(groups)])
        self.mesh = batch.mesh(self.devices)
        self.sharding = NamedSharding(self.mesh, P(batch.ROW_AXIS))
        stacked = jax.tree_util.tree_map(lambda *v: np.stack([np.asarray(x) for x in v]), *subs)
        self.stacked = jax.device_put(stacked, self.sharding)
        self._mask = jax.device_put(self.mask, self.sharding)
        self._modes = _modes_program(self.mesh)
        self._vg = _vg_program(self.mesh)

    def _split(self, x):
        """(N, ...) in subject order -> (nd, per, ...) on the devices (padding rows: zeros)."""
        x = np.asarray(x)
        out = np.zeros((len(self.devices) * self.per,) + x.shape[1:], x.dtype)
        out[self.slot] = x
        return jax.device_put(out.reshape((len(self.devices), self.per) + x.shape[1:]), self.sharding)

    def _join(self, x):
        x = np.asarray(x)
        return x.reshape((-1,) + x.shape[2:])[self.slot]

    def modes(self, u_full, eta0, **kw):
        """:func:`~pkpd.fit.inner.conditional_modes` of every subject: ``(eta, H, converged, n_iter)``."""
        eta, H, ok, it = self._modes(self.stacked, jnp.asarray(u_full), self._split(eta0), **kw)
        return (
            jnp.asarray(self._join(eta)),
            jnp.asarray(self._join(H)),
            jnp.asarray(self._join(ok)),
            int(np.max(np.asarray(it))),
        )

    def value_and_grad(self, u, eta_star, H_star):
        """``-2 log L`` at free parameters ``u`` and its gradient (as ``jax.value_and_grad(laplace_objective)``)."""
        H = np.asarray(H_star)
        if H.size:  # padding subjects: identity Hessians (their terms are masked out)
            Hs = np.broadcast_to(np.eye(H.shape[-1]), (len(self.devices) * self.per,) + H.shape[1:]).copy()
            Hs[self.slot] = H
            Hd = jax.device_put(Hs.reshape((len(self.devices), self.per) + H.shape[1:]), self.sharding)
        else:
            Hd = self._split(H)
        return self._vg(self.stacked, jnp.asarray(u), self._split(eta_star), Hd, self._mask)


def _unstack(sp):
    return jax.tree_util.tree_map(lambda v: v[0], sp)


_PROGRAMS: dict = {}


def _modes_program(mesh):
    key = ("modes", tuple(d.id for d in mesh.devices.flat))
    if key not in _PROGRAMS:
        from jax.sharding import PartitionSpec as P

        ax = batch.ROW_AXIS

        def local(sp, uf, e, max_iter, gtol, from_zero):
            eta, H, ok, it = conditional_modes(
                _unstack(sp), uf, e[0], max_iter=max_iter, gtol=gtol, from_zero=from_zero
            )
            return eta[None], H[None], ok[None], jnp.asarray(it)[None]

        def run(sp, uf, e, max_iter=INNER_MAX_ITER, gtol=INNER_GTOL, from_zero=True):
            f = jax.shard_map(
                lambda a, b, c: local(a, b, c, max_iter, gtol, from_zero),
                mesh=mesh,
                in_specs=(P(ax), P(), P(ax)),
                out_specs=P(ax),
                check_vma=False,
            )
            return f(sp, uf, e)

        _PROGRAMS[key] = fit_jit(run, static_argnames=("max_iter", "gtol", "from_zero"))
    return _PROGRAMS[key]


def _vg_program(mesh):
    key = ("vg", tuple(d.id for d in mesh.devices.flat))
    if key not in _PROGRAMS:
        from jax.sharding import PartitionSpec as P

        ax = batch.ROW_AXIS

        def local(sp, u, e, H, m):
            t = laplace_terms(_unstack(sp), u, e[0], H[0])
            return jnp.sum(jnp.where(m[0], t, 0.0))[None]

        def objective(sp, u, e, H, m):
            parts = jax.shard_map(
                local, mesh=mesh, in_specs=(P(ax), P(), P(ax), P(ax), P(ax)), out_specs=P(ax), check_vma=False
            )(sp, u, e, H, m)
            return jnp.sum(parts)

        _PROGRAMS[key] = fit_jit(jax.value_and_grad(objective, argnums=1))
    return _PROGRAMS[key]


def shard_problem(prob: Problem, devices=None) -> ShardedProblem | None:
    """A :class:`ShardedProblem` over ``devices`` (default :func:`pkpd.batch.local_devices`), or ``None``
    when there is one device, fewer subjects than devices, or the problem's arrays do not all have the
    engine's pseudo-subject axis first (then the fit runs on one device)."""
    devs = list(batch.local_devices() if devices is None else devices)
    if len(devs) < 2 or prob.n_id < len(devs):
        return None
    Np = len(np.asarray(prob.id_of_pseudo))
    parts = (
        prob.arrays,
        prob.cov,
        [d for lst in prob.effects for (_, _, d) in lst],
        [] if prob.occ is None else [prob.occ],
    )
    if not all(_leading(p, Np) for p in parts):
        return None
    if not all(len(np.asarray(prob.obs[k])) == len(prob.obs["id"]) for k in _DEV_OBS):
        return None
    return ShardedProblem(prob, devs)
