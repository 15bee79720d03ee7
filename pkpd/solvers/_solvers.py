"""Solver configuration objects and the per-step propagation primitives they provide."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from .._errors import ModelSpecError
from .analytic import newton_basis, propagators

__all__ = ["Analytic", "ODE", "Auto", "resolve_solver"]


@dataclass(frozen=True)
class Analytic:
    """Exact propagation for linear models (see :mod:`pkpd.solvers.analytic`). Raises on nonlinear models."""

    name: str = "analytic"


@dataclass(frozen=True)
class ODE:
    """diffrax integration between events.

    Parameters
    ----------
    method
        ``"tsit5"`` (default, explicit 5th order), ``"dopri8"`` or ``"kvaerno5"`` (implicit, for stiff
        systems such as very fast absorption next to slow elimination).
    rtol, atol
        Step-size controller tolerances (relative; absolute in amount units, mg). float64 is needed for
        tolerances below about 1e-7.
    max_steps
        Step budget per integration interval; exceeding it raises :class:`pkpd.SolverError`.
    """

    method: str = "tsit5"
    rtol: float = 1e-8
    atol: float = 1e-10
    max_steps: int = 4096
    name: str = "ode"

    def diffrax_solver(self):
        import diffrax

        table = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
                 "kvaerno5": diffrax.Kvaerno5}
        if self.method not in table:
            raise ModelSpecError(f"unknown ODE method {self.method!r}; choose one of {sorted(table)}")
        return table[self.method]()


@dataclass(frozen=True)
class Auto:
    """``Analytic()`` for linear models, ``ODE()`` otherwise."""

    ode: ODE = ODE()
    name: str = "auto"


def resolve_solver(solver, model):
    """Turn ``"auto" | "analytic" | "ode" | Analytic() | ODE() | Auto()`` into a concrete solver."""
    if isinstance(solver, str):
        table = {"auto": Auto(), "analytic": Analytic(), "ode": ODE()}
        if solver.lower() not in table:
            raise ModelSpecError(f"unknown solver {solver!r}; choose auto, analytic or ode")
        solver = table[solver.lower()]
    if isinstance(solver, Auto):
        return Analytic() if model.is_linear else solver.ode
    if isinstance(solver, Analytic) and not model.is_linear:
        raise ModelSpecError(
            f"model {model.name} is nonlinear (Michaelis-Menten elimination or a Weibull input): the exact "
            "solver would silently solve a different model. Use solver='ode' or 'auto'."
        )
    if not isinstance(solver, (Analytic, ODE)):
        raise ModelSpecError(f"not a solver: {solver!r}")
    return solver


# ---------------------------------------------------------------------------------------------------
# Propagation primitives. An "op" is what a solver needs from one parameter set.


def analytic_op(model, p):
    """(K, sorted eigenvalues, Newton basis) for one parameter set ``p``."""
    K = model.rate_matrix(p)
    lam = jnp.sort(model.eigenvalues(K))[::-1]
    return {"K": K, "lam": lam, "P": newton_basis(K, lam)}


def analytic_phi(op, dt):
    """Transition matrix ``exp(K dt)``."""
    f, _ = propagators(op["lam"], dt, with_input=False)
    return jnp.einsum("j,jab->ab", f, op["P"])


def analytic_step(op, x, r, dt):
    """``x(dt)`` from ``x(0)`` with constant input rates ``r`` over ``[0, dt]``."""
    f, g = propagators(op["lam"], dt)
    return jnp.einsum("j,jab,b->a", f, op["P"], x) + jnp.einsum("j,jab,b->a", g, op["P"], r)


def ode_step(model, solver: ODE, p, x, r, t0, dt, forcing, throw=True, ts=None):
    """Integrate ``model`` from absolute time ``t0`` over ``dt`` with rates ``r`` using diffrax.

    Returns the state at ``t0 + dt`` and a success flag; with ``ts`` (times within the interval) also the
    states at ``ts`` from the solver's dense interpolation, without forcing steps to land on them.
    """
    import diffrax

    def vf(t, y, args):
        return model.vector_field(t, y, p, r, forcing)

    # Zero-length steps (coincident events) return the state unchanged; the solve over a tiny interval
    # that still runs (vmap evaluates both branches) costs one step.
    dt_pos = dt > 0
    t1 = t0 + jnp.where(dt_pos, dt, 1e-9 * (1.0 + jnp.abs(t0)))
    saveat = diffrax.SaveAt(t1=True) if ts is None else diffrax.SaveAt(ts=jnp.clip(ts, t0, t1), t1=True)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        solver.diffrax_solver(),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=x,
        stepsize_controller=diffrax.PIDController(rtol=solver.rtol, atol=solver.atol),
        saveat=saveat,
        max_steps=solver.max_steps,
        throw=throw,
    )
    y = jnp.where(dt_pos, sol.ys[-1], x)
    ok = jnp.where(dt_pos, sol.result == diffrax.RESULTS.successful, True)
    if ts is None:
        return y, ok
    ys = jnp.where(dt_pos, sol.ys[:-1], x[None, :])
    return y, ok, ys
