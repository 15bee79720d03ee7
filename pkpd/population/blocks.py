"""Drug blocks of the stacked linear system (one per drug of a regimen) and the host-side matrix exponentials
that propagate them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..drugs._base import Drug
from ..errors import ModelSpecError
from ..expr import compile_parameter_block
from ..pd import AnalgesicPD


@dataclass
class _Block:
    drug: Drug
    pd: AnalgesicPD
    off: int
    n_model: int
    eff: int | None  # absolute index of the effect state
    block: dict
    iiv: dict[str, float]  # parameter -> omega

    @property
    def n(self) -> int:
        return self.n_model + (1 if self.eff is not None else 0)

    @property
    def model(self):
        return self.drug.structural_model()

    def local_depots(self) -> list[int]:
        return [self.off + i for i in range(self.model.central)]


def _build_block(drug: Drug, pd_: AnalgesicPD, off: int) -> _Block:
    model = drug.structural_model()
    if not model.is_linear:
        raise ModelSpecError(
            f"{drug.name}: model {drug.model} is nonlinear; the regimen simulator needs linear "
            "models (simulate it alone with pkpd.simulate)"
        )
    spec = drug.param_spec()
    iiv = {}
    for p in drug.params:
        if p.derived:
            continue
        om = (
            p.iiv_sd
            if p.iiv_sd is not None
            else (float(np.sqrt(np.log1p(p.iiv_cv**2))) if p.iiv_cv is not None else None)
        )
        if om:
            iiv[p.name] = float(om)
            spec[p.name] = f"({spec[p.name]}) * exp(ETA_{p.name})"
    block = compile_parameter_block(spec)
    eff = off + model.n_cmt if pd_.kind != "local" else None
    return _Block(drug, pd_, off, model.n_cmt, eff, block, iiv)


def _source_of(model, name: str):
    if name == "CP":
        return model.central, model.volume
    if name == "DEPOT":
        return None, None
    for o in model.outputs:
        if o.name == name:
            return o.index, o.divide_by
    raise ModelSpecError(f"model {model.name} has no output {name!r}")


def _block_matrix(b: _Block, p: Mapping[str, np.ndarray], n_pat: int) -> np.ndarray:
    K = np.zeros((n_pat, b.n, b.n))
    K[:, : b.n_model, : b.n_model] = b.model.rate_matrix(p, xp=np)
    if b.eff is not None:
        idx, div = _source_of(b.model, b.pd.output)
        ke0 = float(b.pd.ke0.value)
        e = b.n_model
        scale = ke0 * b.pd.output_factor / (np.asarray(p[div], float) if div else 1.0)
        K[:, e, idx] += np.broadcast_to(scale, (n_pat,))
        K[:, e, e] -= ke0
    return K


def _expm_gamma(K: np.ndarray, tau) -> tuple[np.ndarray, np.ndarray]:
    """``expm(K tau)`` and ``integral_0^tau expm(K u) du`` for stacks ``K`` (N, n, n), ``tau`` scalar or (N,)."""
    n_pat, n, _ = K.shape
    tau = np.broadcast_to(np.asarray(tau, float), (n_pat,))
    M = np.zeros((n_pat, 2 * n, 2 * n))
    M[:, :n, :n] = K * tau[:, None, None]
    M[:, :n, n:] = np.eye(n) * tau[:, None, None]
    if not np.any(tau):
        E = np.broadcast_to(np.eye(2 * n), M.shape)
    else:
        E = _batched_expm(M)
    return E[:, :n, :n], E[:, :n, n:]


def _expm(K: np.ndarray, tau) -> np.ndarray:
    """``expm(K tau)`` for stacks ``K`` (N, n, n), ``tau`` scalar or (N,)."""
    n_pat, n, _ = K.shape
    tau = np.broadcast_to(np.asarray(tau, float), (n_pat,))
    if not np.any(tau):
        return np.broadcast_to(np.eye(n), K.shape).copy()
    return _batched_expm(K * tau[:, None, None])


_BLAS: Any = None


def _one_blas_thread():
    """Context in which the BLAS libraries loaded by numpy and SciPy use one thread (``threadpoolctl``).

    The host preparation works on stacks of small matrices (3x3 to 30x30), which gain nothing from BLAS
    threads; with OpenBLAS's default (one thread per core) its threads contend with the compiled kernel of
    the previous chunk, which runs beside the preparation of the next, and with other processes: on a 2-core
    machine with one other busy process, 4,096 C1 patients in chunks of 1,024 took 2.8 s with one thread and
    4.5 s with the default (equal on an idle machine; ``benchmarks/population.py`` check [5], 2026-12-06).
    The previous thread counts are restored on exit."""
    global _BLAS
    if _BLAS is None:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS, so that the controller sees it)
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _batched_expm(M: np.ndarray) -> np.ndarray:
    """``expm`` of every matrix of a stack (N, n, n), float64, on the host.

    SciPy's batched Pade scaling-and-squaring (Al-Mohy & Higham 2009; one C loop over the stack): as fast
    as XLA's ``vmap(expm)`` on this project's batches (10,240 matrices of 4x4 to 14x14: 0.7-1.6x its run
    time on a 2-core machine) and nothing to compile (XLA took 0.5-1 s per batch and matrix size)."""
    import scipy.linalg

    return np.asarray(scipy.linalg.expm(np.asarray(M, float)))
