"""Random draws keyed by (seed, patient ID, stream): the between-patient variability of PK, PD, pain and rescue
propensity, and :func:`variability_columns` to carry them under another ID."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from ..drugs import get_drug
from ..pd import get_pd
from ..xla import jit
from .blocks import _build_block

__all__ = ["variability_columns"]


def _crc(s: str) -> int:
    return zlib.crc32(s.encode()) & 0x7FFFFFFF


def _bucket(n: int) -> int:
    """A batch size >= n from a short ladder (64, then at most 25 % above n), so that the host-side batched program
    of the variability draws compiles once for many population sizes."""
    if n <= 64:
        return 64
    step = 1 << (int(n).bit_length() - 3)
    return -(-int(n) // step) * step


def _padded(fn, x: np.ndarray) -> np.ndarray:
    """``fn(x)`` of a function mapped over the leading axis, computed on ``x`` padded (with copies of its
    first row) to :func:`_bucket` rows; the padding's results are dropped."""
    n = x.shape[0]
    m = _bucket(n)
    if m > n:
        x = np.concatenate([x, np.broadcast_to(x[:1], (m - n,) + x.shape[1:])])
    return np.asarray(fn(x))[:n]


def _normals(seed: int, ids: np.ndarray, stream: str, k: int) -> np.ndarray:
    """Standard normals (len(ids), k), one reproducible stream per (seed, patient ID, stream name)."""
    if k == 0:
        return np.zeros((len(ids), 0))
    ids = np.asarray(ids, np.int64)
    if len(ids) == 0:
        return np.zeros((0, k))
    # k rounded up to a multiple of 16 (the first k of the draws kept): one compiled program serves every stream
    # of up to 16 values. JAX's partitionable threefry (the default since JAX 0.5) draws element j from counter
    # j, so the kept draws are those of a length-k draw bit for bit (tests/test_regimen_sim.py checks it).
    k_pad = -(-int(k) // 16) * 16
    fn = lambda i: _normals_jit(int(seed) & 0x7FFFFFFF, _crc(stream), k_pad, i)  # noqa: E731
    return np.asarray(_padded(fn, ids), float)[:, :k]


def _draws(sub: pd.DataFrame, seed: int, stream: str, k: int) -> np.ndarray:
    """The patients' standard-normal variability draws of one stream, or the values given in the columns
    ``z.<stream>.<j>`` where present and finite (see :func:`variability_columns`)."""
    z = _normals(seed, sub["ID"].to_numpy(), stream, k)
    for j in range(k):
        col = f"z.{stream}.{j}"
        if col in sub:
            given = sub[col].to_numpy(float)
            z[:, j] = np.where(np.isfinite(given), given, z[:, j])
    return z


def variability_columns(drugs, population: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Every variability draw of the given patients as columns ``z.<stream>.<j>`` (PK variability of each
    drug ``iiv:<drug>``, its PD sensitivity ``pd:<drug>``, the pain model ``pain``, the rescue propensity
    ``demand``).

    Rows carrying these columns reproduce those patients' PK/PD exactly under any other ID; only the
    randomness of rescue requests (keyed by the ID) differs. This is how the optimizer's oracle knows a
    virtual patient's true parameters without knowing when they will ask for rescue.

    Parameters
    ----------
    drugs
        Drug names (every drug of the regimens to be simulated).
    population
        Patients with their ``ID`` (and covariates).
    seed
        Seed of the draws (as for :func:`simulate_regimen`).
    """
    ids = population["ID"].to_numpy()
    out = {}
    for name in drugs:
        d = get_drug(name)
        n_iiv = len(_build_block(d, get_pd(d.name), 0).iiv)
        for stream, k in (("iiv:" + d.name, n_iiv), ("pd:" + d.name, 1)):
            z = _normals(seed, ids, stream, k)
            for j in range(k):
                out[f"z.{stream}.{j}"] = z[:, j]
    z = _normals(seed, ids, "pain", 3)
    for j in range(3):
        out[f"z.pain.{j}"] = z[:, j]
    out["z.demand.0"] = _normals(seed, ids, "demand", 1)[:, 0]
    return pd.DataFrame(out, index=population.index)


def _normals_impl(seed, h, k, ids):
    import jax
    import jax.numpy as jnp

    base = jax.random.fold_in(jax.random.PRNGKey(seed), h)
    # float32 draws in both precisions, so a patient's variability does not depend on PKPD_PRECISION
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(base, i), (k,), dtype=jnp.float32))(ids)


# pkpd.xla.jit builds the program at its first call (no backend at import); fixed mode: the same draws in every mode
_normals_jit = jit(_normals_impl, static_argnums=(2,), fast_compile=True)
