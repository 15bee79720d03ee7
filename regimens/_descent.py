"""Projected first-order minimization with optax: the continuous stage of the regimen optimizer.

One compiled update step (value, gradient, optax update, projection) is reused for every iteration and
every problem of the same shapes: the function being minimized and the projection are static, the
problem data are arguments. A second call with new data of the same shapes does not compile again.

References
----------
DeepMind et al. The DeepMind JAX Ecosystem (optax), 2020. Kingma DP, Ba J. Adam: a method for stochastic
optimization. ICLR 2015. Bertsekas DP. Nonlinear Programming, 3rd ed., 2016, section 2.3 (gradient
projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pkpd.xla import jit

__all__ = ["DescentResult", "projected_descent"]


@dataclass(frozen=True)
class DescentResult:
    """Outcome of :func:`projected_descent`.

    Attributes
    ----------
    x
        Best iterate found (lowest objective value), projected (numpy array).
    value
        Objective at ``x``.
    history
        Objective value at every iterate, shape ``(steps + 1,)`` (``(steps,)`` with ``step_args``: the
        final iterate is not evaluated).
    n_steps
        Update steps taken.
    n_compiles
        How many times the update step was compiled during this call (0 when a program compiled by an
        earlier call of the same shapes was reused).
    x_sharding
        The :class:`jax.sharding.Sharding` the returned iterate had on the devices before it was copied
        to ``x`` (how a problem laid out over several devices was actually run), or ``None``.
    """

    x: np.ndarray
    value: float
    history: np.ndarray
    n_steps: int
    n_compiles: int
    x_sharding: Any = None


_STEP_CACHE: dict[Any, Callable] = {}


def _step_fn(fun: Callable, project: Callable, schedule_key: tuple) -> Callable:
    key = (fun, project, schedule_key)
    if key in _STEP_CACHE:
        return _STEP_CACHE[key]
    lr0, decay_steps, alpha = schedule_key
    opt = optax.adam(optax.cosine_decay_schedule(lr0, decay_steps, alpha))

    def step(x, state, args):
        value, grad = jax.value_and_grad(fun)(x, *args)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
        updates, state = opt.update(grad, state, x)
        x_new = project(optax.apply_updates(x, updates), *args)
        return x_new, state, value

    def init(x):
        return opt.init(x)

    compiled = (jit(step), init, jit(fun), jit(project))
    _STEP_CACHE[key] = compiled
    return compiled


def _like(state, x):
    """The optimizer state placed as the step will return it: when ``x`` lies on a device mesh, the state's
    scalars (step counts) replicated on that mesh, so that the second step does not compile again for
    arguments placed differently from the first's."""
    sh = getattr(x, "sharding", None)
    if not isinstance(sh, jax.sharding.NamedSharding):
        return state
    rep = jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec())
    return jax.tree_util.tree_map(
        lambda v: v if getattr(v, "shape", None) == x.shape else jax.device_put(v, rep), state
    )


def _identity(x, *args):
    return x


def projected_descent(
    fun: Callable,
    x0,
    *,
    args: tuple = (),
    project: Callable | None = None,
    steps: int = 200,
    learning_rate: float = 0.05,
    final_lr_fraction: float = 0.01,
    callback: Callable[[int, float], None] | None = None,
    step_args: Callable[[int], tuple] | None = None,
) -> DescentResult:
    """Minimize ``fun(x, *args)`` by Adam steps each followed by a projection onto the feasible set.

    Parameters
    ----------
    fun
        Scalar objective, a pure JAX function ``fun(x, *args)``. Pass the same function object every time
        so that its compiled step is reused (a module-level function, not a new closure per call).
    x0
        Starting point (1-d array).
    args
        Problem data (arrays), passed to ``fun`` and ``project``; new values of the same shapes reuse the
        compiled step.
    project
        ``project(x, *args) -> x``: map onto the feasible set (e.g. ``optax.projections.projection_box``
        with bounds taken from ``args``). Default: none.
    steps
        Adam updates.
    learning_rate, final_lr_fraction
        Cosine-decayed step size from ``learning_rate`` to ``learning_rate * final_lr_fraction``.
    callback
        ``callback(iteration, value)`` after each step (progress bars).
    step_args
        Optional ``step_args(i) -> tuple`` of extra arguments of iteration ``i`` (appended to ``args``; same
        shapes at every iteration), e.g. the indices of a minibatch of scenarios: stochastic projected
        gradient descent. The objective values are then those of different minibatches, so the **last**
        iterate is returned instead of the best one, with the value of the last step's minibatch at the
        iterate before that step (no extra evaluation: it would compile a second program for a number the
        caller rarely needs).

    Returns
    -------
    DescentResult
        The best projected iterate. Non-finite gradient entries are zeroed (a failed evaluation does not
        move the iterate); a non-finite objective value is never selected as the best.
    """
    project = project or _identity
    step, init, value_fn, project_fn = _step_fn(
        fun, project, (float(learning_rate), max(int(steps), 1), float(final_lr_fraction))
    )
    before = step._cache_size()
    x = project_fn(jnp.asarray(x0, dtype=float), *args)
    state = _like(init(x), x)
    hist = []
    best_x, best_v = x, np.inf
    if step_args is not None:
        for i in range(int(steps)):
            x, state, value = step(x, state, tuple(args) + tuple(step_args(i)))
            hist.append(float(value))
            if callback is not None:
                callback(i, hist[-1])
        v_last = hist[-1] if hist else float("nan")
        return DescentResult(
            np.asarray(x),
            v_last,
            np.asarray(hist),
            int(steps),
            step._cache_size() - before,
            getattr(x, "sharding", None),
        )
    for i in range(int(steps)):
        x_new, state, value = step(x, state, args)
        v = float(value)
        hist.append(v)
        if np.isfinite(v) and v < best_v:
            best_x, best_v = x, v
        x = x_new
        if callback is not None:
            callback(i, v)
    v_last = float(value_fn(x, *args))
    hist.append(v_last)
    if np.isfinite(v_last) and v_last < best_v:
        best_x, best_v = x, v_last
    return DescentResult(
        np.asarray(best_x),
        best_v,
        np.asarray(hist),
        int(steps),
        step._cache_size() - before,
        getattr(best_x, "sharding", None),
    )
