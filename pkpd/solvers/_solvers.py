"""Solver configuration objects and the per-step propagation primitives they provide."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from ..errors import ModelSpecError
from .analytic import newton_basis, propagators

if TYPE_CHECKING:
    from ..models._base import CompartmentModel

__all__ = ["Analytic", "ODE", "Auto", "resolve_solver", "ODE_METHODS", "stiff_fallback"]

#: ODE methods by name: ``auto`` integrates with Tsit5 and lets :func:`pkpd.simulate` retry with Kvaerno5
#: where Tsit5 fails.
ODE_METHODS = ("auto", "tsit5", "dopri5", "dopri8", "kvaerno5")


@dataclass(frozen=True)
class Analytic:
    """Exact propagation for linear models (see :mod:`pkpd.solvers.analytic`). Raises on nonlinear models.

    :func:`pkpd.simulate` checks every result of the exact solver (rounding-error estimate of each matrix
    exponential, no negative amount, no more mass than was dosed) and raises :class:`pkpd.SolverError`
    where the check fails; ``Auto()`` instead re-solves those subjects with a stiff ODE solver.
    """

    name: str = "analytic"


@dataclass(frozen=True)
class ODE:
    """diffrax integration between events.

    Parameters
    ----------
    method
        ``"auto"`` (default: explicit 5th-order Tsit5; :func:`pkpd.simulate` re-solves the subjects where it
        fails, e.g. hits ``max_steps`` on a stiff system, or returns a negative amount, with Kvaerno5),
        ``"tsit5"``, ``"dopri5"``, ``"dopri8"`` (explicit, no retry) or ``"kvaerno5"`` (implicit, for stiff
        systems such as very fast absorption next to slow elimination, or Michaelis-Menten elimination
        with a tiny KM).
    rtol, atol
        Step-size controller tolerances (relative; absolute in amount units, mg). float64 is needed for
        tolerances below about 1e-7.
    max_steps
        Step budget per integration interval; exceeding it raises :class:`pkpd.SolverError`.
    adjoint
        How derivatives pass through the integration: ``"checkpoint"`` (default: diffrax's
        ``RecursiveCheckpointAdjoint``, reverse mode only, the cheapest for gradients) or ``"direct"``
        (``DirectAdjoint``: forward and reverse mode and their compositions, at more compile time and memory).
        The fitter uses ``"direct"`` on the ODE path, because the Laplace approximation needs Hessians
        (forward-over-reverse derivatives) of the likelihood.
    """

    method: str = "auto"
    rtol: float = 1e-8
    atol: float = 1e-10
    max_steps: int = 4096
    name: str = "ode"
    adjoint: str = "checkpoint"

    def diffrax_adjoint(self) -> Any:
        import diffrax

        if self.adjoint == "checkpoint":
            return diffrax.RecursiveCheckpointAdjoint()
        if self.adjoint == "direct":
            return diffrax.DirectAdjoint()
        raise ModelSpecError(f"unknown ODE adjoint {self.adjoint!r}; choose 'checkpoint' or 'direct'")

    def diffrax_solver(self) -> Any:
        import diffrax

        table = {
            "auto": diffrax.Tsit5,
            "tsit5": diffrax.Tsit5,
            "dopri5": diffrax.Dopri5,
            "dopri8": diffrax.Dopri8,
            "kvaerno5": diffrax.Kvaerno5,
        }
        if self.method not in table:
            raise ModelSpecError(f"unknown ODE method {self.method!r}; choose one of {', '.join(ODE_METHODS)}")
        return table[self.method]()


@dataclass(frozen=True)
class Auto:
    """``Analytic()`` for linear models, ``ODE()`` otherwise."""

    ode: ODE = ODE()
    name: str = "auto"


def resolve_solver(
    solver: str | Analytic | ODE | Auto, model: CompartmentModel, ode_method: str | None = None
) -> Analytic | ODE:
    """Turn ``"auto" | "analytic" | "ode" | Analytic() | ODE() | Auto()`` into a concrete solver.

    ``ode_method`` (one of :data:`ODE_METHODS`), if given, replaces the method of the ODE solver chosen
    (``"ode"``, or ``"auto"`` on a nonlinear model); it is refused with ``"analytic"``.
    """
    import dataclasses

    if ode_method is not None:
        ode_method = str(ode_method).lower()
        if ode_method not in ODE_METHODS:
            raise ModelSpecError(f"unknown ODE method {ode_method!r}; choose one of {', '.join(ODE_METHODS)}")
    if isinstance(solver, str):
        table: dict[str, Analytic | ODE | Auto] = {"auto": Auto(), "analytic": Analytic(), "ode": ODE()}
        if solver.lower() not in table:
            raise ModelSpecError(f"unknown solver {solver!r}; choose auto, analytic or ode")
        solver = table[solver.lower()]
    if ode_method is not None:
        if isinstance(solver, Analytic):
            raise ModelSpecError(
                f"an ODE method ({ode_method}) was given with the exact solver 'analytic'; use solver 'ode' or 'auto'"
            )
        if isinstance(solver, Auto):
            solver = dataclasses.replace(solver, ode=dataclasses.replace(solver.ode, method=ode_method))
        elif isinstance(solver, ODE):
            solver = dataclasses.replace(solver, method=ode_method)
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


def stiff_fallback(solver: Analytic | ODE) -> ODE | None:
    """The stiff solver that re-solves subjects where ``solver`` failed, or ``None`` (no retry).

    * from the exact solver (chosen by ``auto``): Kvaerno5 with ``rtol=1e-12``, ``atol=1e-20`` mg, which
      reproduces a 60-digit reference to about 1e-11 relative on rate constants up to 1e12 apart;
    * from ``ODE(method="auto")``: Kvaerno5 with the same tolerances and a step budget of at least 100,000;
    * from any explicitly named method: ``None``.
    """
    import dataclasses

    if isinstance(solver, Analytic):
        return ODE(method="kvaerno5", rtol=1e-12, atol=1e-20, max_steps=100_000)
    if isinstance(solver, ODE) and solver.method == "auto":
        return dataclasses.replace(solver, method="kvaerno5", max_steps=max(solver.max_steps, 100_000))
    return None


# ---------------------------------------------------------------------------------------------------
# Propagation primitives. An "op" is what a solver needs from one parameter set.


def analytic_op(model: CompartmentModel, p: Mapping[str, ArrayLike]) -> dict[str, Array]:
    """(K, sorted eigenvalues, Newton basis) for one parameter set ``p``."""
    K = model.rate_matrix(p)
    lam = jnp.sort(model.eigenvalues(K))[::-1]
    return {"K": K, "lam": lam, "P": newton_basis(K, lam)}


def analytic_phi(op: Mapping[str, Array], dt: ArrayLike) -> Array:
    """Transition matrix ``exp(K dt)``."""
    f, _ = propagators(op["lam"], dt, with_input=False)
    return jnp.einsum("j,jab->ab", f, op["P"])


def analytic_step(op: Mapping[str, Array], x: ArrayLike, r: ArrayLike, dt: ArrayLike) -> Array:
    """``x(dt)`` from ``x(0)`` with constant input rates ``r`` over ``[0, dt]``."""
    f, g = propagators(op["lam"], dt)
    return jnp.einsum("j,jab,b->a", f, op["P"], x) + jnp.einsum("j,jab,b->a", g, op["P"], r)


@overload
def ode_step(
    model: CompartmentModel,
    solver: ODE,
    p: Mapping[str, ArrayLike],
    x: Array,
    r: ArrayLike,
    t0: Array | float,
    dt: Array | float,
    forcing: Any,
    throw: bool = True,
    ts: None = None,
) -> tuple[Array, Array]: ...


@overload
def ode_step(
    model: CompartmentModel,
    solver: ODE,
    p: Mapping[str, ArrayLike],
    x: Array,
    r: ArrayLike,
    t0: Array | float,
    dt: Array | float,
    forcing: Any,
    throw: bool = True,
    *,
    ts: Array,
) -> tuple[Array, Array, Array]: ...


def ode_step(
    model: CompartmentModel,
    solver: ODE,
    p: Mapping[str, ArrayLike],
    x: Array,
    r: ArrayLike,
    t0: Array | float,
    dt: Array | float,
    forcing: Any,
    throw: bool = True,
    ts: Array | None = None,
) -> tuple[Array, Array] | tuple[Array, Array, Array]:
    """Integrate ``model`` from absolute time ``t0`` over ``dt`` with rates ``r`` using diffrax.

    Returns the state at ``t0 + dt`` and a success flag; with ``ts`` (times within the interval) also the
    states at ``ts`` from the solver's dense interpolation, without forcing steps to land on them.
    """
    import diffrax

    def vf(t: Any, y: Any, args: Any) -> Array:
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
        adjoint=solver.diffrax_adjoint(),
    )
    y = jnp.where(dt_pos, sol.ys[-1], x)
    ok = jnp.where(dt_pos, sol.result == diffrax.RESULTS.successful, True)
    if ts is None:
        return y, ok
    ys = jnp.where(dt_pos, sol.ys[:-1], x[None, :])
    return y, ok, ys
