"""The Laplace approximation's inner problem and objective, per subject.

For subject ``i`` with random effects ``eta_i`` and ``l_i(eta) = -log p(y_i | eta) - log N(eta; 0, Omega)``,
:func:`conditional_modes` finds ``eta_i* = argmin l_i`` and :func:`laplace_terms` gives
``-2 log L_i ~= 2 l_i(eta_i*) + log det H_i - K log(2 pi)`` (see :mod:`pkpd.fit.laplace`, which drives the outer
estimation, and :mod:`pkpd.fit.shard`, which runs these per device).

Inner problem (:func:`conditional_modes`): damped Newton iterations on all subjects at once (the Hessians are
block diagonal, one ``K x K`` block per subject, computed by ``K`` forward-mode products of the gradient);
absolute eigenvalues, floored, make every step a descent step, steps are cut to a trust radius and halved
until the Armijo condition holds. Every subject is solved from ``eta = 0`` and from the warm start and the
better converged mode is kept, so ``-2 log L`` does not depend on where the search started; a mode is
converged when the largest gradient component is at most :data:`INNER_GTOL` (or the Newton decrement at most
:data:`INNER_DECREMENT`) at the returned point, with a positive definite Hessian.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .problem import LOG2PI, Problem, fit_jit

__all__ = [
    "conditional_modes",
    "laplace_objective",
    "laplace_terms",
    "weighted_objective",
    "subject_gradients",
    "grad_hess",
    "INNER_GTOL",
    "INNER_DECREMENT",
    "INNER_MAX_ITER",
]


def grad_hess(fn: Callable, eta, forward: bool = False):
    """Per-subject gradient (N, K) and Hessian (N, K, K) of ``fn(eta) -> (N,)`` whose subjects are
    independent (block-diagonal Hessian): ``K`` forward-mode products of the gradient. ``forward``: forward
    mode only (``K`` directional derivatives and ``K x K`` second ones), about 3x faster through an ODE solve
    (diffrax's ``DirectAdjoint``: no reverse pass over the solver's step buffer)."""
    if forward:
        return _grad_hess_forward(fn, eta)

    def g_fn(e):
        return jax.grad(lambda x: jnp.sum(fn(x)))(e)

    N, K = eta.shape
    g, lin = jax.linearize(g_fn, eta)
    tang = jnp.broadcast_to(jnp.eye(K, dtype=eta.dtype)[:, None, :], (K, N, K))
    cols = jax.vmap(lin)(tang)  # (K, N, K): cols[j] = H[:, :, j]
    H = jnp.moveaxis(cols, 0, -1)
    return g, 0.5 * (H + jnp.swapaxes(H, -1, -2))


def _grad_hess_forward(fn: Callable, eta):
    N, K = eta.shape
    tang = jnp.broadcast_to(jnp.eye(K, dtype=eta.dtype)[:, None, :], (K, N, K))

    def along(e, t):  # d fn / d eta along t, per subject (N,)
        return jax.jvp(fn, (e,), (t,))[1]

    g = jax.vmap(lambda t: along(eta, t))(tang).T  # (N, K)
    H = jax.vmap(lambda t1: jax.vmap(lambda t2: jax.jvp(lambda e: along(e, t2), (eta,), (t1,))[1])(tang))(tang)
    H = jnp.moveaxis(H, -1, 0)  # (N, K, K)
    return g, 0.5 * (H + jnp.swapaxes(H, -1, -2))


def _forward_only(prob: Problem) -> bool:
    """Derivatives of the inner problem in forward mode only: models on the ODE path."""
    from ..solvers import ODE

    return isinstance(prob.solver, ODE)


#: Inner problem (conditional modes): a subject's mode is converged when the largest component of the gradient
#: of its ``l_i`` (nats per unit eta) is at most this, the Hessian there is positive definite and the value is
#: finite. In float32 the tolerance is raised to the rounding floor ``1e3 * eps * (1 + |l_i|)`` (about 1e-2 for
#: ``l_i`` ~ 100); in float64 that floor is below ``1e-6`` unless ``|l_i|`` exceeds ~4.5e6.
INNER_GTOL = 1e-6
#: ... or, where rounding stops the Newton iterations before the gradient gets there, when the Newton decrement
#: ``g' H^-1 g`` (twice the decrease of ``l_i`` still possible by the local quadratic model) is at most this (nats;
#: raised to ``10 eps (1 + |l_i|)``, about 4e-5 in float32 for ``l_i`` ~ 35 and 8e-14 in float64).
INNER_DECREMENT = 1e-12
#: Newton iterations of the inner problem (each start); a subject still above the tolerance then is flagged.
INNER_MAX_ITER = 100
_RADIUS0 = 2.0  # initial trust radius of a Newton step (Euclidean norm in eta units)
_LS_STEPS = 50  # backtracking halvings before a subject is declared stalled (2^-50 ~ 1e-15)


def _inner_tol(val, tol: float, dtype, floor: float = 1e3):
    """Tolerance of the inner problem per row: ``max(tol, floor eps (1 + |val|))`` (the rounding floor)."""
    eps = jnp.finfo(dtype).eps
    return jnp.maximum(tol, floor * eps * (1.0 + jnp.abs(jnp.where(jnp.isfinite(val), val, 0.0))))


def _newton(fn: Callable, eta0, max_iter: int, gtol: float, forward: bool = False):
    """Minimize every row of ``fn(eta) -> (M,)`` (rows independent) from ``eta0`` (M, K).

    Each iteration: gradient and Hessian per row; the Newton direction on the Hessian's absolute eigenvalues
    (floored at 1e-8 of the largest, so a descent direction also where the Hessian is indefinite), cut to the
    row's trust radius; Armijo backtracking (halving, at most ``_LS_STEPS`` times). The radius doubles after a
    full step that was cut and shrinks to the accepted step after a backtracked one. A row whose value or
    derivatives are not finite (a start where the model overflows) moves toward ``eta = 0`` (the prior mode)
    until they are. A row stops when it meets the tolerance (:data:`INNER_GTOL`) or when no step decreases it.

    Returns ``(eta, val, H, converged, n_iter)``: the final points, ``fn`` there, the Hessians there,
    the convergence flags (finite value, largest gradient component <= tolerance, Hessian positive definite)
    and the iterations run.
    """
    M, K = eta0.shape
    dt = eta0.dtype
    eye = jnp.eye(K, dtype=dt)

    def clean(v):
        return jnp.where(jnp.isfinite(v), v, jnp.inf)

    def derivatives(eta, val):
        g, H = grad_hess(fn, eta, forward)
        fin = jnp.isfinite(val) & jnp.all(jnp.isfinite(g), -1) & jnp.all(jnp.isfinite(H), (-2, -1))
        g = jnp.where(fin[:, None], g, 0.0)
        H = jnp.where(fin[:, None, None], H, eye)
        w, V = jnp.linalg.eigh(H)
        pd_ = w[:, 0] > 0
        dec = jnp.sum(jnp.einsum("nji,nj->ni", V, g) ** 2 / jnp.where(pd_[:, None], w, 1.0), -1)
        at_min = (
            fin
            & pd_
            & (
                (jnp.max(jnp.abs(g), -1) <= _inner_tol(val, gtol, dt))
                | (dec <= _inner_tol(val, INNER_DECREMENT, dt, 10.0))
            )
        )
        return g, H, w, V, fin, at_min

    def cond(st):
        it, _, _, _, done = st
        return (it < max_iter) & ~jnp.all(done)

    def body(st):
        it, eta, val, rad, done = st
        g, _, w, V, fin, at_min = derivatives(eta, val)
        done = done | at_min
        scale = jnp.maximum(jnp.max(jnp.abs(w), axis=-1, keepdims=True), 1.0)
        wf = jnp.maximum(jnp.abs(w), 1e-8 * scale)
        d_newton = -jnp.einsum("nij,nj->ni", V, jnp.einsum("nji,nj->ni", V, g) / wf)
        d = jnp.where(fin[:, None], d_newton, -eta)  # not finite here: back toward the prior mode
        dn = jnp.linalg.norm(d, axis=-1)
        cut = jnp.where(fin, jnp.minimum(1.0, rad / jnp.maximum(dn, 1e-300)), 1.0)
        d = d * cut[:, None]
        slope = jnp.where(fin, jnp.sum(g * d, -1), 0.0)  # <= 0

        def ls_cond(s):
            k, _, _, ok = s
            return (k < _LS_STEPS) & ~jnp.all(ok)

        def ls_body(s):
            k, alpha, v, ok = s
            trial = clean(fn(eta + alpha[:, None] * d))
            better = jnp.isfinite(trial) & ((trial <= val + 1e-4 * alpha * slope) | ~jnp.isfinite(val))
            ok_new = ok | better
            v = jnp.where(ok, v, jnp.where(better, trial, v))
            alpha = jnp.where(ok_new, alpha, 0.5 * alpha)
            return k + 1, alpha, v, ok_new

        _, alpha, vnew, ok = jax.lax.while_loop(ls_cond, ls_body, (0, jnp.ones(M, dt), val, done))
        move = ok & ~done
        eta = jnp.where(move[:, None], eta + alpha[:, None] * d, eta)
        val = jnp.where(move, vnew, val)
        step = alpha * dn * cut
        rad = jnp.where(
            move, jnp.where(alpha >= 1.0, jnp.where(cut < 1.0, 2.0 * rad, rad), jnp.maximum(step, 1e-12)), rad
        )
        done = done | ~ok  # no step decreases l_i: stalled (converged only if the tolerance is met)
        return it + 1, eta, val, rad, done

    val0 = clean(fn(eta0))
    st0 = (0, eta0, val0, jnp.full(M, _RADIUS0, dt), jnp.zeros(M, bool))
    it, eta, val, _, _ = jax.lax.while_loop(cond, body, st0)
    _, H, _, _, _, conv = derivatives(eta, val)
    return eta, val, H, conv, it


def conditional_modes(
    prob: Problem, u_full, eta0, *, max_iter: int = INNER_MAX_ITER, gtol: float = INNER_GTOL, from_zero: bool = True
):
    """Conditional modes ``eta_i* = argmin l_i`` of every subject (all subjects at once).

    The per-subject objective can have several local minima (a 2-compartment model's volumes and
    clearances can trade places). So that ``-2 log L`` is a function of the population parameters, not of
    where the search started, every subject is solved from ``eta = 0`` (the prior mode: a deterministic
    start) and, when ``from_zero`` is true, also from ``eta0`` (the warm start, the previous modes); per
    subject the converged solution with the lower ``l_i`` is kept, the one from ``eta = 0`` unless the
    other is lower by more than ``1e-9 (1 + |l_i|)`` (so the same mode gives the same bits). A warm start
    can therefore only lower the objective, and only by finding a better mode than the deterministic start.

    Each search is a damped Newton method with a trust radius and Armijo line search (:func:`_newton`);
    convergence is a stated criterion, checked at the returned point: the largest component of the gradient
    of ``l_i`` at most ``gtol`` (nats per unit eta; raised to ``1e3 eps (1 + |l_i|)`` in float32), a finite
    ``l_i`` and a positive definite Hessian.

    Parameters
    ----------
    prob
        The problem.
    u_full
        All parameters on the estimation scale (:meth:`Packer.full`).
    eta0
        Warm start (N, K); with ``from_zero=False`` the only start.
    max_iter
        Newton iterations per start.
    gtol
        Gradient tolerance (nats per unit eta).
    from_zero
        Also start from ``eta = 0`` and keep the better mode.

    Returns
    -------
    tuple
        ``(eta, H, converged, n_iter)``: modes (N, K), Hessians of ``l_i`` there (N, K, K), per-subject
        convergence flags (N,) and the number of Newton iterations run.
    """
    fn = lambda e: prob.neg_log_joint(u_full, e)  # noqa: E731
    N, K = eta0.shape
    if K == 0:
        return eta0, jnp.zeros((N, 0, 0), eta0.dtype), jnp.isfinite(fn(eta0)), 0
    if not from_zero:
        eta, _, H, conv, it = _newton(fn, eta0, max_iter, gtol, _forward_only(prob))
        return eta, H, conv, it
    S = 2
    starts = jnp.stack([jnp.zeros_like(eta0), eta0]).reshape(S * N, K)

    def fs(e):
        return jax.vmap(fn)(e.reshape(S, N, K)).reshape(S * N)

    eta, val, H, conv, it = _newton(fs, starts, max_iter, gtol, _forward_only(prob))
    eta, val, H, conv = eta.reshape(S, N, K), val.reshape(S, N), H.reshape(S, N, K, K), conv.reshape(S, N)
    margin = 1e-9 * (1.0 + jnp.abs(jnp.where(jnp.isfinite(val[0]), val[0], 0.0)))
    key = jnp.where(conv, val, jnp.inf)
    warm = (key[1] < key[0] - margin) | (~conv[0] & ~conv[1] & (val[1] < val[0] - margin))
    pick = lambda x: jnp.where(warm.reshape((N,) + (1,) * (x.ndim - 2)), x[1], x[0])  # noqa: E731
    return pick(eta), pick(H), pick(conv), it


def laplace_terms(prob: Problem, u, eta_star, H_star):
    """Each subject's term of ``-2 log L`` (shape ``(n_id,)``, all constants) at free parameters ``u`` given
    converged modes: ``2 l_i(eta_i) + log det H_i - K log(2 pi)`` (differentiable in ``u``).

    One Newton step from the (non-differentiated) mode carries the exact first derivative of the mode.
    """
    u_full = prob.packer.full(u)
    fn = lambda e: prob.neg_log_joint(u_full, e)  # noqa: E731
    K = prob.n_eta
    if K == 0:
        return 2.0 * fn(jnp.zeros((prob.n_id, 0)))
    e0 = jax.lax.stop_gradient(eta_star)
    g = jax.grad(lambda x: jnp.sum(fn(x)))(e0)
    step = jnp.linalg.solve(jax.lax.stop_gradient(H_star), g[..., None])[..., 0]
    eta_h = e0 - step
    _, H = grad_hess(fn, eta_h, _forward_only(prob))
    L = jnp.linalg.cholesky(H)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    return 2.0 * fn(eta_h) + logdet - K * LOG2PI


def laplace_objective(prob: Problem, u, eta_star, H_star):
    """``-2 log L`` (all constants) at free parameters ``u`` given converged modes (differentiable in ``u``):
    the sum of :func:`laplace_terms`."""
    return weighted_objective(prob, u, eta_star, H_star, 1.0)


# compiled once per model structure and data shapes (a Problem is a pytree whose arrays are leaves)
_modes_jit = fit_jit(conditional_modes, static_argnames=("max_iter", "gtol", "from_zero"))


def weighted_objective(prob: Problem, u, eta_star, H_star, weights):
    """``sum_i weights_i * laplace_terms_i``: :func:`laplace_objective` with weights 1; with weights ``e_i``,
    subject ``i``'s own term (whose gradients make the sandwich covariance's S matrix)."""
    return jnp.sum(weights * laplace_terms(prob, u, eta_star, H_star))


# one compiled program serves the objective and each subject's gradient (weights are an argument)
_wvg_jit = fit_jit(jax.value_and_grad(weighted_objective, argnums=1))


def _vg_jit(prob: Problem, u, eta_star, H_star):
    """``-2 log L`` and its gradient at free parameters ``u`` given converged modes (compiled)."""
    return _wvg_jit(prob, u, eta_star, H_star, jnp.ones(prob.n_id, dtype=jnp.asarray(u).dtype))


def subject_gradients(prob: Problem, u, eta_star, H_star) -> np.ndarray:
    """Each subject's gradient of its own ``-2 log L`` term, ``(n_id, n_free)``: one call of the compiled
    objective per subject (no program of its own to compile)."""
    u = jnp.asarray(u)
    eye = np.eye(prob.n_id, dtype=np.asarray(u).dtype)
    return np.stack([np.asarray(_wvg_jit(prob, u, eta_star, H_star, jnp.asarray(w))[1]) for w in eye])


_nlj_jit = fit_jit(lambda prob, uf, e: prob.neg_log_joint(uf, e))
