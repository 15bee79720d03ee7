"""Long population simulations of a regimen, written chunk by chunk: resumable and multi-process.

:func:`simulate_regimen_stored` runs :func:`pkpd.population.simulate_regimen` on consecutive chunks of
the population and writes every finished chunk to a :class:`pkpd.batch.ChunkStore` (``pkpd simulate
--regimen`` keeps it in ``OUT/chunks``). An interrupted run continues with ``resume=True`` without
recomputing or duplicating a patient; with several processes (:func:`pkpd.batch.init_distributed`) each
process simulates its share of the chunks and every process returns the merged result. Patients are
independent (their random draws are keyed by seed and patient ID), so the merged result is the one a single
call gives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .. import batch
from ..data import frame_sha256
from ..manifest import file_sha256
from .options import SimOptions
from .protocol import RegimenLike
from .results import PopulationResult
from .simulate import simulate_regimen

__all__ = ["STORE_CHUNK_PATIENTS", "KEEP_TRAJECTORIES", "STORE_KIND", "simulate_regimen_stored"]

#: Patients per stored chunk when neither ``chunk_patients`` nor a chunk size (:func:`pkpd.batch.configure`)
#: is given: a few compiled batches per file.
STORE_CHUNK_PATIENTS = 8192
#: Patients whose NRS, opioid-effect and bupivacaine trajectories are kept (the first ones, for the bands).
KEEP_TRAJECTORIES = 10_000
#: The ``kind`` of the run identity of a stored regimen simulation (what ``--resume`` recognises).
STORE_KIND = "regimen_simulation"


def simulate_regimen_stored(
    regimen: RegimenLike,
    population: pd.DataFrame,
    store,
    *,
    seed: int = 0,
    options: SimOptions | None = None,
    chunk_patients: int | None = None,
    resume: bool = False,
    keep_trajectories: int = KEEP_TRAJECTORIES,
    progress: Callable[[int], None] | None = None,
    wait_timeout_s: float | None = None,
) -> PopulationResult:
    """:func:`~pkpd.population.simulate_regimen` in chunks written to ``store`` as they finish.

    Parameters
    ----------
    regimen, population, seed, options
        As for :func:`~pkpd.population.simulate_regimen`.
    store
        Directory of the :class:`pkpd.batch.ChunkStore` (every process must see the same directory).
    chunk_patients
        Patients per stored chunk (default: the configured chunk size, else :data:`STORE_CHUNK_PATIENTS`).
        Each chunk is simulated in compiled batches sized as :func:`~pkpd.population.simulate_regimen` does.
    resume
        Keep the chunks an earlier run with the same regimen, population, seed, options and chunking left in
        ``store``; compute only the missing ones. Otherwise an existing store is cleared first.
    keep_trajectories
        The trajectories (NRS, opioid units, bupivacaine; (N, T) each) of the first this-many patients are
        stored and returned (for the band figures); the outcome table and the dose record hold every patient.
    progress
        Called with the number of patients of each chunk when it is done (or found done).
    wait_timeout_s
        Longest wait for the other processes' chunks (s); ``None``: no limit.

    Returns
    -------
    PopulationResult
        ``patients`` and ``doses`` of every patient (equal to one :func:`simulate_regimen` call), the
        trajectories of the first ``keep_trajectories`` patients; ``parameters`` is empty.

    Raises
    ------
    pkpd.batch.BatchError
        A store that belongs to another run, or chunks still missing after ``wait_timeout_s``.
    """
    opts = options or SimOptions()
    pop = population.reset_index(drop=True)
    n = len(pop)
    size = int(chunk_patients or batch.config().chunk_size or STORE_CHUNK_PATIENTS)
    if size < 1:
        raise batch.BatchError(f"chunk_patients must be >= 1, got {size}")
    bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    keep = max(int(keep_trajectories), 0)
    ident = batch.run_identity(
        kind=STORE_KIND,
        regimen=repr(regimen),
        # the content of the regimen's model files: an edited file does not resume into the old chunks
        structures={drug: file_sha256(file) for drug, file in regimen.structures},
        population=frame_sha256(pop),
        n=n,
        seed=int(seed),
        options=repr(opts),
        chunk=size,
        keep_trajectories=keep,
    )

    def one(i):
        lo, hi = bounds[i]
        res = simulate_regimen(regimen, pop.iloc[lo:hi], seed=seed, options=opts)
        tables = {"patients": res.patients}
        if res.doses is not None:
            tables["doses"] = res.doses
        m = max(0, min(hi, keep) - lo)
        arrays = {"times": res.times}
        if m and res.nrs is not None:
            arrays.update(nrs=res.nrs[:m], opioid_units=res.opioid_units[:m], bupi=res.bupi[:m])
        return tables, {"notes": list(res.notes), "doses": res.doses is not None}, arrays

    def on_chunk(i, resumed):
        if progress is not None:
            progress(bounds[i][1] - bounds[i][0])

    cs = batch.run_chunks(
        store, ident, len(bounds), one, resume=resume, wait_timeout_s=wait_timeout_s, on_chunk=on_chunk
    )
    patients, infos = cs.merge("patients", expect_ids=pop["ID"].to_numpy())
    doses = None
    if infos and infos[0].get("doses"):
        parts = [cs.read(i)[0]["doses"] for i in range(len(bounds))]
        doses = pd.concat(parts, ignore_index=True).sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)
    arrs = [cs.read_arrays(i) for i in range(len(bounds))]
    times = arrs[0]["times"]

    def stack(name):
        got = [a[name] for a in arrs if name in a]
        return np.concatenate(got) if got else np.zeros((0, len(times)))

    return PopulationResult(
        regimen,
        patients,
        times,
        stack("nrs"),
        stack("opioid_units"),
        stack("bupi"),
        doses,
        list(infos[0].get("notes", [])) if infos else [],
    )
