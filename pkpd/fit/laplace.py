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

Inner problem (:func:`conditional_modes`, in :mod:`pkpd.fit.inner` with the per-subject terms; re-exported here): damped Newton iterations on all subjects at once (the Hessians are
block diagonal, one ``K x K`` block per subject, computed by ``K`` forward-mode products of the gradient);
absolute eigenvalues, floored, make every step a descent step, steps are cut to a trust radius and halved
until the Armijo condition holds. Every subject is solved from ``eta = 0`` and from the warm start and the
better converged mode is kept, so ``-2 log L`` does not depend on where the search started; a mode is
converged when the largest gradient component is at most :data:`INNER_GTOL` (or the Newton decrement at most
:data:`INNER_DECREMENT`) at the returned point, with a positive definite Hessian.
Outer problem: BFGS (scipy) on the unconstrained parameters, with the exact gradient: the modes are
re-solved at every outer point and one differentiable Newton step from the converged mode
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

import jax.numpy as jnp
import numpy as np
import scipy.optimize

from ..errors import PKPDError
from .inner import (
    INNER_DECREMENT,
    INNER_GTOL,
    _modes_jit,
    _nlj_jit,
    _vg_jit,
    conditional_modes,
    grad_hess,
    laplace_objective,
    laplace_terms,
    subject_gradients,
)
from .problem import Problem
from .shard import shard_problem

__all__ = [
    "fit_laplace",
    "sandwich_covariance",
    "conditional_modes",
    "laplace_objective",
    "laplace_terms",
    "FitError",
    "grad_hess",
    "INNER_GTOL",
    "INNER_DECREMENT",
    "CONVERGENCE_GTOL",
]


class FitError(PKPDError):
    """The estimation could not start or failed (non-finite objective at the initial estimates...)."""


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
    max_gradient: float = float("nan")
    n_restarts: int = 0
    #: Sandwich ("robust") covariance of the free parameters, ``R^-1 S R^-1`` (NONMEM's default ``$COV``): ``R``
    #: the Hessian of ``-2 log L``, ``S`` the sum over subjects of the outer products of each subject's gradient
    #: of its ``-2 log L`` term; ``None`` where the inverse-Hessian ``cov_u`` is unavailable.
    cov_sandwich: np.ndarray | None = None


#: Outer convergence: the fit is reported converged when the largest component of the gradient of -2LL with
#: respect to the estimation-scale parameters (log typical values and variances, logit fractions, identity for
#: additive effects: a dimensionless scaling) is at most this, and every subject's conditional mode converged.
#: At a gradient of 1e-2 the distance to the optimum is about 0.005 SE of each parameter and the -2LL still
#: available is about 1e-4 units for a well-determined parameter (SE ~0.1 on the log scale).
CONVERGENCE_GTOL = 1e-2
_MAX_RESTARTS = 2  # BFGS restarts (fresh inverse Hessian, from the best point) after rounding-error stops

_BFGS_STATUS = {
    1: "the iteration limit was reached",
    2: "rounding errors (precision loss in the line search)",
    3: "a non-finite objective or gradient",
}


def fit_laplace(
    prob: Problem,
    *,
    u0=None,
    maxiter: int = 500,
    gtol: float = 1e-4,
    covariance: bool = True,
    callback: Callable[[int, float], None] | None = None,
    conv_tol: float = CONVERGENCE_GTOL,
) -> LaplaceFit:
    """Estimate the population parameters of ``prob`` by maximum likelihood (Laplace).

    Parameters
    ----------
    prob
        Model bound to data (:func:`pkpd.fit.build_problem`).
    u0
        Free parameters to start from (estimation scale); default: the model file's initial estimates.
    maxiter
        Maximum BFGS iterations (over all restarts).
    gtol
        BFGS stopping rule: largest gradient component of ``-2 log L`` on the estimation scale.
    covariance
        Compute the covariance step (standard errors).
    callback
        Called as ``callback(iteration, minus2ll)`` after each BFGS iteration (progress display).
    conv_tol
        Reported convergence (:data:`CONVERGENCE_GTOL`): the largest gradient component of ``-2 log L`` on the
        estimation scale at the returned estimates, recomputed there.

    The estimates are the best point of every evaluation made (BFGS's final point unless its history holds
    a lower ``-2 log L``); ``minus2ll`` is recomputed at them (conditional modes from ``eta = 0`` and from
    the modes of that best evaluation), so it is the objective at the reported estimates. When BFGS stops on
    rounding errors or a non-finite value above the tolerance it is restarted from the best point (at most
    twice). ``converged`` is true only when the recomputed gradient meets ``conv_tol`` and every subject's
    conditional mode converged; otherwise ``message`` starts with ``"not converged:"`` and says why
    (iteration limit, rounding errors, non-finite objective, subjects whose modes did not converge).

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
    state = {"eta": jnp.zeros((prob.n_id, prob.n_eta)), "H": None, "n": 0, "best": (math.inf, None, None)}
    t0 = time.perf_counter()
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
                state["best"] = (val, np.array(uu), eta)
            return val, g, np.asarray(ok)
        return math.inf, np.zeros_like(uu), np.asarray(ok)

    v0, g0, ok0 = evaluate(u)
    t_compile = time.perf_counter() - t0
    if not np.isfinite(v0):
        eta0 = jnp.zeros((prob.n_id, prob.n_eta))
        per = np.asarray(_nlj_jit(prob, prob.packer.full(jnp.asarray(u)), eta0))
        bad = [str(prob.ids[i]) for i in np.nonzero(~np.isfinite(per))[0]]
        raise FitError(
            "-2 log L is not finite at the initial estimates"
            + (f" (subjects {', '.join(bad[:10])})" if bad else "")
            + ": check the initial estimates, units of AMT and DV, and the error model "
            "(a proportional error on a zero prediction, a log-normal error on DV <= 0)"
        )
    history = [v0]
    it = {"k": 0}

    def cb(xk):
        it["k"] += 1
        history.append(state["best"][0])
        if callback is not None:
            callback(it["k"], state["best"][0])

    t1 = time.perf_counter()
    start, restarts, res = u, 0, None
    while True:
        left = maxiter - it["k"]
        res = scipy.optimize.minimize(
            lambda x: evaluate(x)[:2],
            start,
            jac=True,
            method="BFGS",
            callback=cb,
            options={"maxiter": max(left, 0), "gtol": gtol},
        )
        best_v, best_u = state["best"][0], state["best"][1]
        if res.status not in (2, 3) or restarts >= _MAX_RESTARTS or it["k"] >= maxiter:
            break
        gb = evaluate(best_u)[1]
        if float(np.max(np.abs(gb))) <= conv_tol or np.array_equal(best_u, start):
            break  # converged after all, or no progress since the last start
        restarts += 1
        start = best_u
    u_hat = state["best"][1] if state["best"][1] is not None else res.x
    best_v, best_eta = state["best"][0], state["best"][2]
    state["eta"] = best_eta if best_eta is not None else state["eta"]
    val, g, ok = evaluate(u_hat)  # the objective at the reported estimates (warm start: that point's modes)
    t_fit = time.perf_counter() - t1
    gmax = float(np.max(np.abs(g))) if g.size else 0.0
    n_it = it["k"]
    after = f"after {n_it} iterations" + (f" ({restarts} restart{'s' if restarts > 1 else ''})" if restarts else "")
    reasons = []
    if not np.isfinite(val):
        reasons.append("-2 log L is not finite at the estimates")
    if gmax > conv_tol:
        stop = (
            _BFGS_STATUS.get(res.status, res.message.strip()) if not res.success else f"its own tolerance gtol={gtol:g}"
        )
        reasons.append(f"BFGS stopped ({stop}) with largest gradient {gmax:.2g} > {conv_tol:g}")
    if np.isfinite(best_v) and val > best_v + 1e-6 * (1.0 + abs(best_v)):
        reasons.append(
            f"-2LL recomputed at the estimates ({val:.6f}) is above the best value seen "
            f"({best_v:.6f}): the conditional modes are not reproducible"
        )
    if not np.all(ok):
        bad = [str(prob.ids[i]) for i in np.nonzero(~ok)[0]]
        reasons.append(
            f"conditional modes did not converge for subjects {', '.join(bad[:10])}"
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        )
    converged = not reasons
    if converged:
        note = " (BFGS stopped on rounding errors within the tolerance)" if res.status == 2 else ""
        message = f"converged: largest gradient {gmax:.2g} <= {conv_tol:g} {after}{note}"
    else:
        message = f"not converged: {'; '.join(reasons)} {after}"
    eta_hat, H_hat = state["eta"], state["H"]
    cov_u, cov_msg = None, "not requested"
    t2 = time.perf_counter()
    cov_sw = None
    if covariance and u_hat.size:
        cov_u, cov_msg = _covariance(evaluate, u_hat, g, prob.packer.free_names)
        state["eta"], state["H"] = eta_hat, H_hat
        if cov_u is not None:
            cov_sw = sandwich_covariance(cov_u, subject_gradients(prob, u_hat, eta_hat, H_hat))
    t_cov = time.perf_counter() - t2
    return LaplaceFit(
        u_full=np.asarray(prob.packer.full(jnp.asarray(u_hat))),
        minus2ll=val,
        eta=np.asarray(eta_hat),
        eta_hess=np.asarray(H_hat),
        converged=converged,
        message=message,
        n_iter=n_it,
        n_eval=state["n"],
        cov_u=cov_u,
        cov_message=cov_msg,
        cov_sandwich=cov_sw,
        times={"first_evaluation_s": t_compile, "estimation_s": t_fit, "covariance_s": t_cov},
        history=history,
        max_gradient=gmax,
        n_restarts=restarts,
    )


def sandwich_covariance(cov_u: np.ndarray, subject_gradients: np.ndarray) -> np.ndarray:
    """The sandwich covariance ``R^-1 S R^-1`` from the inverse-Hessian covariance and per-subject gradients.

    Parameters
    ----------
    cov_u
        ``2 R^-1``: the inverse-Hessian covariance of the free parameters (estimation scale), ``R`` the Hessian
        of ``-2 log L``.
    subject_gradients
        ``(n_id, n_free)``: each subject's gradient of its own ``-2 log L`` term at the estimates.

    Returns
    -------
    numpy.ndarray
        ``R^-1 S R^-1`` with ``S = sum_i g_i g_i'``. With ``-2 log L`` in place of ``-log L`` the factors of 2
        cancel: it equals the usual ``A^-1 B A^-1`` (``A`` the observed information, ``B`` the sum of the
        outer products of the per-subject scores), and it is close to ``cov_u`` when the model is right (White
        1982; NONMEM's ``$COV`` default, Beal & Sheiner, NONMEM Users Guide).
    """
    half = 0.5 * np.asarray(cov_u, float)  # R^-1
    G = np.asarray(subject_gradients, float)
    out = half @ (G.T @ G) @ half
    return 0.5 * (out + out.T)


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
        return None, (
            f"the Hessian of -2 log L is singular or not positive definite at the estimates (eigenvalues "
            f"{w.min():.3g} to {w.max():.3g}): the model is over-parameterized or the fit has not converged; "
            f"standard errors unavailable (least determined direction: "
            f"{_direction(weak, names)})"
        )
    return 2.0 * (V / w) @ V.T, f"ok (condition number {w.max() / w.min():.3g})"
