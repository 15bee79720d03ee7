"""Maximum likelihood by the Laplace approximation (FOCE-class, interaction included).

For each subject ``i`` with random effects ``eta_i`` (length ``K``) and
``l_i(eta) = -log p(y_i | eta) - log N(eta; 0, Omega)``, the marginal likelihood is approximated at the
conditional mode ``eta_i* = argmin l_i``:

    -2 log L_i  ~=  2 l_i(eta_i*) + log det H_i - K log(2 pi),     H_i = d^2 l_i / d eta^2 at eta_i*

which is NONMEM's ``METHOD=COND LAPLACIAN INTERACTION`` with the exact Hessian (computed by automatic
differentiation, not the first-order approximation of FOCEI). The reported values are

* ``minus2ll``: ``-2 log L`` with every constant, the number R's ``logLik`` and nlme report (``-2 logLik``);
* ``ofv``: ``minus2ll - N log(2 pi)`` with ``N`` the number of Gaussian (non-BLQ) observations, which is
  NONMEM's "OBJECTIVE FUNCTION VALUE WITHOUT CONSTANT" (the OFV NONMEM prints and users compare);
* ``aic = minus2ll + 2 p`` and ``bic = minus2ll + p log(n_obs)`` with ``p`` the number of estimated
  parameters (as R's ``AIC``/``BIC``).

Inner problem: damped Newton iterations on all subjects at once (the Hessians are block diagonal, one
``K x K`` block per subject, computed by ``K`` forward-mode products of the gradient); eigenvalues are
floored to make every step a descent step, and steps are halved until the subject's objective decreases.
Outer problem: BFGS (scipy) on the unconstrained parameters, with the exact gradient: the modes are
re-solved at every outer point (warm started) and one differentiable Newton step from the converged mode
makes ``d eta* / d u`` exact, so gradients include the dependence of the modes and of ``log det H`` on
the parameters. Standard errors come from the Hessian of ``-2 log L`` (central differences of the exact
gradient): ``Cov(u) = 2 H^{-1}``, mapped to natural scale by the delta method; 95 % intervals are
computed on the estimation scale (log, logit) and transformed back.

References
----------
Wang Y. Derivation of various NONMEM estimation methods. J Pharmacokinet Pharmacodyn 2007;34:575-593.
Pinheiro JC, Bates DM. Approximations to the log-likelihood function in the nonlinear mixed-effects
model. J Comput Graph Stat 1995;4:12-35.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from .._errors import PKPDError
from .problem import LOG2PI, Problem, fit_jit

__all__ = ["fit_laplace", "conditional_modes", "laplace_objective", "laplace_terms", "FitError", "grad_hess"]


class FitError(PKPDError):
    """The estimation could not start or failed (non-finite objective at the initial estimates...)."""


def grad_hess(fn: Callable, eta):
    """Per-subject gradient (N, K) and Hessian (N, K, K) of ``fn(eta) -> (N,)`` whose subjects are
    independent (block-diagonal Hessian): ``K`` forward-mode products of the gradient."""
    def g_fn(e):
        return jax.grad(lambda x: jnp.sum(fn(x)))(e)

    N, K = eta.shape
    g, lin = jax.linearize(g_fn, eta)
    tang = jnp.broadcast_to(jnp.eye(K, dtype=eta.dtype)[:, None, :], (K, N, K))
    cols = jax.vmap(lin)(tang)  # (K, N, K): cols[j] = H[:, :, j]
    H = jnp.moveaxis(cols, 0, -1)
    return g, 0.5 * (H + jnp.swapaxes(H, -1, -2))


def _pd_solve(H, g):
    """Newton direction ``-H^{-1} g`` with eigenvalues floored (descent direction) per subject."""
    w, V = jnp.linalg.eigh(H)
    scale = jnp.maximum(jnp.max(jnp.abs(w), axis=-1, keepdims=True), 1.0)
    w = jnp.maximum(jnp.abs(w), 1e-10 * scale)
    return -jnp.einsum("nij,nj->ni", V, jnp.einsum("nji,nj->ni", V, g) / w)


def conditional_modes(prob: Problem, u_full, eta0, *, max_iter: int = 60, tol: float = 1e-10):
    """Conditional modes ``eta_i*`` of every subject (damped Newton, all subjects at once).

    Returns ``(eta, H, converged, n_iter)``: modes (N, K), Hessians of ``l_i`` there (N, K, K), per-subject
    convergence flags (Newton decrement below ``tol``) and the number of iterations run.
    """
    fn = lambda e: prob.neg_log_joint(u_full, e)  # noqa: E731
    N, K = eta0.shape

    def clean(v):
        return jnp.where(jnp.isfinite(v), v, jnp.inf)

    def cond(st):
        it, _, _, done, _ = st
        return (it < max_iter) & ~jnp.all(done)

    def body(st):
        it, eta, val, done, _ = st
        g, H = grad_hess(fn, eta)
        d = _pd_solve(H, g)
        dec = -jnp.sum(g * d, axis=-1)  # Newton decrement^2 (>= 0)
        conv = (dec < tol) | done

        def ls_cond(s):
            k, alpha, _, ok = s
            return (k < 30) & ~jnp.all(ok)

        def ls_body(s):
            k, alpha, v, ok = s
            trial = clean(fn(eta + alpha[:, None] * d))
            better = trial <= val + 1e-4 * alpha * (-dec)  # Armijo
            ok_new = ok | better
            v = jnp.where(ok, v, jnp.where(better, trial, v))
            alpha = jnp.where(ok_new, alpha, alpha * 0.3)
            return k + 1, alpha, v, ok_new

        alpha0 = jnp.ones(N, eta.dtype)
        _, alpha, vnew, ok = jax.lax.while_loop(ls_cond, ls_body, (0, alpha0, val, conv))
        move = ok & ~conv
        eta = jnp.where(move[:, None], eta + alpha[:, None] * d, eta)
        val = jnp.where(move, vnew, val)
        done = conv | ~ok  # no decrease possible: at the mode to machine precision
        return it + 1, eta, val, done, H

    val0 = clean(fn(eta0))
    if K == 0:
        return eta0, jnp.zeros((N, 0, 0), eta0.dtype), jnp.isfinite(val0), 0
    # H is carried: once a subject is done it no longer moves, so its last Hessian is at its mode
    st0 = (0, eta0, val0, jnp.zeros(N, bool), jnp.broadcast_to(jnp.eye(K, dtype=eta0.dtype), (N, K, K)))
    it, eta, val, done, H = jax.lax.while_loop(cond, body, st0)
    return eta, H, done & jnp.isfinite(val), it


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
    _, H = grad_hess(fn, eta_h)
    L = jnp.linalg.cholesky(H)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    return 2.0 * fn(eta_h) + logdet - K * LOG2PI


def laplace_objective(prob: Problem, u, eta_star, H_star):
    """``-2 log L`` (all constants) at free parameters ``u`` given converged modes (differentiable in ``u``):
    the sum of :func:`laplace_terms`."""
    if prob.n_eta == 0:
        u_full = prob.packer.full(u)
        return 2.0 * jnp.sum(prob.neg_log_joint(u_full, jnp.zeros((prob.n_id, 0))))
    return jnp.sum(laplace_terms(prob, u, eta_star, H_star))


@dataclass
class LaplaceFit:
    """Raw outcome of :func:`fit_laplace` (the :class:`pkpd.fit.FitResult` wraps it with tables)."""

    u_full: np.ndarray
    minus2ll: float
    eta: np.ndarray
    eta_hess: np.ndarray
    converged: bool
    message: str
    n_iter: int
    n_eval: int
    cov_u: np.ndarray | None
    cov_message: str
    times: dict
    history: list = field(default_factory=list)


# compiled once per model structure and data shapes (a Problem is a pytree whose arrays are leaves)
_modes_jit = fit_jit(conditional_modes, static_argnames=("max_iter", "tol"))
_vg_jit = fit_jit(jax.value_and_grad(laplace_objective, argnums=1))
_nlj_jit = fit_jit(lambda prob, uf, e: prob.neg_log_joint(uf, e))


def fit_laplace(prob: Problem, *, u0=None, maxiter: int = 500, gtol: float = 1e-4, covariance: bool = True,
                callback: Callable[[int, float], None] | None = None) -> LaplaceFit:
    """Estimate the population parameters of ``prob`` by maximum likelihood (Laplace).

    Parameters
    ----------
    prob
        Model bound to data (:func:`pkpd.fit.build_problem`).
    u0
        Free parameters to start from (estimation scale); default: the model file's initial estimates.
    maxiter
        Maximum BFGS iterations.
    gtol
        Convergence: largest gradient component of ``-2 log L`` on the estimation scale.
    covariance
        Compute the covariance step (standard errors).
    callback
        Called as ``callback(iteration, minus2ll)`` after each BFGS iteration (progress display).

    With several local devices (:mod:`pkpd.batch`) the subjects are sharded over them
    (:mod:`pkpd.fit.shard`): the same conditional modes per subject, the objective equal to rounding.

    Returns
    -------
    LaplaceFit

    Raises
    ------
    FitError
        When ``-2 log L`` is not finite at the initial estimates (the message says which subjects).
    """
    u = np.asarray(prob.init_u() if u0 is None else u0, float)
    state = {"eta": jnp.zeros((prob.n_id, prob.n_eta)), "H": None, "n": 0, "best": (math.inf, None)}
    t0 = time.perf_counter()
    from .shard import shard_problem

    sharded = shard_problem(prob)  # None on one device
    modes = sharded.modes if sharded is not None else (lambda uf, e: _modes_jit(prob, uf, e))
    value_grad = sharded.value_and_grad if sharded is not None else (lambda uu, e, H: _vg_jit(prob, uu, e, H))

    def evaluate(uu):
        uf = prob.packer.full(jnp.asarray(uu))
        eta, H, ok, _ = modes(uf, state["eta"])
        val, g = value_grad(jnp.asarray(uu), eta, H)
        val, g = float(val), np.asarray(g)
        state["n"] += 1
        if np.isfinite(val) and np.all(np.isfinite(g)):
            state["eta"], state["H"] = eta, H
            if val < state["best"][0]:
                state["best"] = (val, np.array(uu))
            return val, g, np.asarray(ok)
        return math.inf, np.zeros_like(uu), np.asarray(ok)

    v0, g0, ok0 = evaluate(u)
    t_compile = time.perf_counter() - t0
    if not np.isfinite(v0):
        eta0 = jnp.zeros((prob.n_id, prob.n_eta))
        per = np.asarray(_nlj_jit(prob, prob.packer.full(jnp.asarray(u)), eta0))
        bad = [str(prob.ids[i]) for i in np.nonzero(~np.isfinite(per))[0]]
        raise FitError("-2 log L is not finite at the initial estimates"
                       + (f" (subjects {', '.join(bad[:10])})" if bad else "")
                       + ": check the initial estimates, units of AMT and DV, and the error model "
                       "(a proportional error on a zero prediction, a log-normal error on DV <= 0)")
    history = [v0]
    it = {"k": 0}

    def cb(xk):
        it["k"] += 1
        history.append(state["best"][0])
        if callback is not None:
            callback(it["k"], state["best"][0])

    t1 = time.perf_counter()
    res = scipy.optimize.minimize(lambda x: evaluate(x)[:2], u, jac=True, method="BFGS", callback=cb,
                                  options={"maxiter": maxiter, "gtol": gtol})
    u_hat = res.x if np.isfinite(res.fun) and res.fun <= state["best"][0] else state["best"][1]
    val, g, ok = evaluate(u_hat)
    t_fit = time.perf_counter() - t1
    gmax = float(np.max(np.abs(g))) if g.size else 0.0
    converged = bool(gmax < max(gtol, 1e-3) * 10) and bool(np.all(ok))
    if res.success:
        message = f"converged: largest gradient {gmax:.2g} after {res.nit} iterations"
    else:
        message = f"BFGS stopped ({res.message.strip()}); largest gradient {gmax:.2g} after {res.nit} iterations"
    if not np.all(ok):
        bad = [str(prob.ids[i]) for i in np.nonzero(~ok)[0]]
        message += f"; conditional modes did not converge for subjects {', '.join(bad[:10])}"
    eta_hat, H_hat = state["eta"], state["H"]
    cov_u, cov_msg = None, "not requested"
    t2 = time.perf_counter()
    if covariance and u_hat.size:
        cov_u, cov_msg = _covariance(evaluate, u_hat, g, prob.packer.free_names)
        state["eta"], state["H"] = eta_hat, H_hat
    t_cov = time.perf_counter() - t2
    return LaplaceFit(u_full=np.asarray(prob.packer.full(jnp.asarray(u_hat))), minus2ll=val, eta=np.asarray(eta_hat),
                      eta_hess=np.asarray(H_hat), converged=converged, message=message, n_iter=int(res.nit),
                      n_eval=state["n"], cov_u=cov_u, cov_message=cov_msg,
                      times={"first_evaluation_s": t_compile, "estimation_s": t_fit, "covariance_s": t_cov},
                      history=history)


def _direction(v: np.ndarray, names) -> str:
    idx = np.argsort(-np.abs(v))[:3]
    return ", ".join(f"{names[i]} {v[i]:+.2f}" for i in idx if abs(v[i]) > 0.1) if names else "n/a"


def _covariance(evaluate, u_hat: np.ndarray, g_hat: np.ndarray, names=None):
    """``Cov(u) = 2 H^{-1}``, ``H`` by central differences of the exact gradient of ``-2 log L``."""
    n = u_hat.size
    H = np.zeros((n, n))
    for i in range(n):
        h = 1e-4 * max(1.0, abs(u_hat[i]))
        up, dn = u_hat.copy(), u_hat.copy()
        up[i] += h
        dn[i] -= h
        gp = evaluate(up)[1]
        gm = evaluate(dn)[1]
        H[:, i] = (gp - gm) / (2 * h)
    H = 0.5 * (H + H.T)
    if not np.all(np.isfinite(H)):
        return None, "the Hessian of -2 log L is not finite at the estimates: standard errors unavailable"
    w, V = np.linalg.eigh(H)
    # the finite-difference Hessian carries rounding noise of ~1e-10 relative: an eigenvalue below 1e-9 of
    # the largest is zero within that noise (an unidentifiable direction), whatever its sign
    if w.min() <= 1e-9 * max(w.max(), 1e-300):
        weak = V[:, 0]
        return None, (f"the Hessian of -2 log L is singular or not positive definite at the estimates (eigenvalues "
                      f"{w.min():.3g} to {w.max():.3g}): the model is over-parameterized or the fit has not converged; "
                      f"standard errors unavailable (least determined direction: "
                      f"{_direction(weak, names)})")
    return 2.0 * (V / w) @ V.T, f"ok (condition number {w.max() / w.min():.3g})"
