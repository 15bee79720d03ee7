"""Structural PK models: compartments, parameters with units, rate matrices and vector fields.

A model says *what* is simulated; the solvers in :mod:`pkpd.solvers` say *how*. Every model can be
integrated as an ODE. A model is eligible for the exact (matrix-exponential) solver only when
``is_linear`` is true: its right-hand side is ``K(theta) @ x + inputs`` with ``K`` independent of time and
state, and doses are the only inputs. The automatic solver never sends a nonlinear model through the
closed form (following pharmpy's ``has_linear_odes`` and rxode2's refusal to silently solve "a different
model than the one written").

Units used throughout the library: time h, amount mg, volume L, clearance L/h, rate constants 1/h,
concentration mg/L (= ug/mL); the effect-site state is a concentration (mg/L).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from jax import Array

from ..errors import ModelSpecError

__all__ = ["Param", "Route", "CompartmentModel"]


@dataclass(frozen=True)
class Param:
    """A structural parameter: name (as written in parameter files), unit and description."""

    name: str
    unit: str
    description: str
    lower: float = 0.0  # parameters of the library are positive unless stated; used by validation


@dataclass(frozen=True)
class Route:
    """How a bolus dose recorded into a compartment is delivered when a model splits it.

    A dose record into a routed compartment (e.g. an extended-release tablet into ``DEPOT_FAST``) is
    delivered as several sub-doses, each a fraction of ``F * AMT`` with its own target, lag and mode.
    ``fraction`` names a parameter; ``complement=True`` means ``1 - fraction``. ``mode="zero_order"``
    infuses the sub-dose over the duration named by ``duration`` (h). The lag of a sub-dose is
    ``ALAG<target>`` (1-based compartment number of the target).
    """

    target: int
    fraction: str | None = None
    complement: bool = False
    mode: Literal["bolus", "zero_order"] = "bolus"
    duration: str | None = None


@dataclass(frozen=True)
class Output:
    """A derived output column: ``state[index] / param`` (``param=None``: the state itself)."""

    name: str
    index: int
    divide_by: str | None
    unit: str
    description: str


@dataclass(frozen=True, eq=False)
class CompartmentModel:
    """A compartmental PK model.

    Parameters
    ----------
    name
        Library name (e.g. ``"2cmt_oral"``).
    compartments
        Compartment names in NONMEM order: ``CMT=1`` is ``compartments[0]``.
    params
        Structural parameters (:class:`Param`), all required in a parameter file.
    central
        0-based index of the central compartment (the one concentrations are reported for).
    volume
        Name of the parameter giving the central volume (L): ``CP = A[central] / volume`` (mg/L).
    linear_terms
        ``(row, col, fn)`` triples: ``K[row, col] += fn(p)``, ``p`` a mapping of parameter values.
    blocks
        Strongly connected blocks of ``K`` in an order that makes ``K`` block lower-triangular; the
        eigenvalues of ``K`` are those of the diagonal blocks (closed forms for blocks of size <= 3).
    nonlinear
        Optional extra right-hand side ``g(t, x, p, forcing) -> dx`` (Michaelis-Menten elimination,
        Weibull input...). Its presence makes the model nonlinear (ODE only).
    routes
        Dose routing for compartments whose doses are split (see :class:`Route`).
    forcing_cmt
        0-based index of a compartment whose doses are not added to a state but drive ``nonlinear``
        as a forcing term (Weibull absorption). ``None`` for most models.
    outputs
        Derived output columns besides ``CP`` (effect-site and metabolite concentrations).
    """

    name: str
    compartments: tuple[str, ...]
    params: tuple[Param, ...]
    central: int
    volume: str
    linear_terms: tuple[tuple[int, int, Callable[[Mapping[str, Any]], Any]], ...]
    blocks: tuple[tuple[int, ...], ...]
    description: str = ""
    nonlinear: Callable[..., Any] | None = None
    routes: Mapping[int, tuple[Route, ...]] = field(default_factory=dict)
    forcing_cmt: int | None = None
    outputs: tuple[Output, ...] = ()
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.compartments)
        covered = sorted(i for b in self.blocks for i in b)
        if covered != list(range(n)):
            raise ModelSpecError(f"model {self.name}: blocks {self.blocks} must partition 0..{n - 1}")
        if self.nonlinear is None:
            # Check on random positive parameters that K is block lower-triangular in block order.
            rng = np.random.default_rng(0)
            p = {q.name: float(rng.uniform(0.3, 3.0)) for q in self.params}
            K = self._rate_matrix_np(p)
            pos = {i: bi for bi, b in enumerate(self.blocks) for i in b}
            for r, c in zip(*np.nonzero(K)):
                if pos[c] > pos[r]:
                    raise ModelSpecError(f"model {self.name}: K[{r},{c}] breaks the block order")

    # ---- metadata ---------------------------------------------------------------------------------
    @property
    def n_cmt(self) -> int:
        return len(self.compartments)

    @property
    def is_linear(self) -> bool:
        """True when the exact matrix-exponential solver applies (no nonlinear term, no forcing)."""
        return self.nonlinear is None

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def compartment_table(self) -> str:
        return ", ".join(f"{i + 1}={c}" for i, c in enumerate(self.compartments))

    def dose_params(self) -> tuple[str, ...]:
        """Optional per-compartment dosing parameters: F<n>, ALAG<n>, R<n>, D<n> (NONMEM names)."""
        out = []
        for i in range(self.n_cmt):
            out += [f"F{i + 1}", f"ALAG{i + 1}", f"R{i + 1}", f"D{i + 1}"]
        return tuple(out)

    # ---- numerics ---------------------------------------------------------------------------------
    def rate_matrix(self, p: Mapping[str, Any], xp: Any = None) -> Any:
        """Rate matrix ``K`` (1/h) with ``dx/dt = K x`` for the linear part of the model.

        With ``xp=numpy`` the parameters may be arrays of one shape (one value per subject); ``K`` then has
        that shape followed by ``(n, n)``.
        """
        import jax.numpy as jnp

        xp = xp or jnp
        n = self.n_cmt
        rows: list[int] = []
        cols: list[int] = []
        vals: list[Any] = []
        for r, c, fn in self.linear_terms:
            rows.append(r)
            cols.append(c)
            vals.append(fn(p))
        if not vals:
            return xp.zeros((n, n))
        dtype = xp.result_type(*[xp.asarray(v) for v in vals], float)
        if xp is np:  # parameters may be arrays (one value per subject): K is then (..., n, n)
            batch = np.broadcast_shapes(*[np.shape(v) for v in vals])
            K = np.zeros(batch + (n, n), dtype=dtype)
            for r, c, v in zip(rows, cols, vals):
                K[..., r, c] += v
            return K
        K = xp.zeros((n, n), dtype=dtype)
        stacked = jnp.stack([jnp.asarray(v, dtype) for v in vals])
        return K.at[np.array(rows), np.array(cols)].add(stacked)

    def _rate_matrix_np(self, p: Mapping[str, Any]) -> np.ndarray:
        K: np.ndarray = self.rate_matrix(p, xp=np)
        return K

    def eigenvalues(self, K: Array) -> Array:
        """Eigenvalues of ``K`` (real, with multiplicity) from its diagonal blocks, in closed form."""
        import jax.numpy as jnp

        from ._eig import block_eigenvalues

        lam = [block_eigenvalues(K[np.ix_(b, b)]) for b in self.blocks]
        return jnp.concatenate(lam)

    def vector_field(self, t: Any, x: Array, p: Mapping[str, Any], rate: Any, forcing: Any = None) -> Array:
        """``dx/dt`` at absolute time ``t`` (h) with infusion rates ``rate`` (mg/h per compartment)."""
        dx: Array = self.rate_matrix(p) @ x + rate
        if self.nonlinear is not None:
            dx = dx + self.nonlinear(t, x, p, forcing)
        return dx

    def outputs_from_state(self, x: Any, p: Mapping[str, Any]) -> dict[str, Any]:
        """Named concentrations from a state ``x`` (..., n_cmt): ``CP`` and the model's extra outputs."""
        out = {"CP": x[..., self.central] / p[self.volume]}
        for o in self.outputs:
            out[o.name] = x[..., o.index] / p[o.divide_by] if o.divide_by else x[..., o.index]
        return out

    def output_names(self) -> tuple[str, ...]:
        return ("CP",) + tuple(o.name for o in self.outputs)

    def output_parameters(self) -> set[str]:
        """Names of the parameters :meth:`outputs_from_state` reads (the central volume and divisors)."""
        return {self.volume} | {o.divide_by for o in self.outputs if o.divide_by}

    def describe(self) -> str:
        lines = [f"{self.name}: {self.description}", f"  compartments: {self.compartment_table()}"]
        lines.append(f"  solver: {'exact (linear)' if self.is_linear else 'ODE (nonlinear)'}")
        for q in self.params:
            lines.append(f"  {q.name:6s} [{q.unit}] {q.description}")
        for o in self.outputs:
            lines.append(f"  output {o.name} [{o.unit}] {o.description}")
        return "\n".join(lines)


def _check_names(names: Sequence[str]) -> None:
    if len(set(names)) != len(names):
        raise ModelSpecError(f"duplicate names in {names}")
