"""Scale-out: devices, sharding of the patient axis, chunk sizing, precision, processes and chunk stores.

One batching layer under ``pkpd simulate --regimen``, ``pkpd trial``, ``pkpd optimize`` and ``pkpd fit``:

* **Devices and sharding.** A :class:`jax.sharding.Mesh` with one axis, ``"rows"``, over the process's
  local devices (all of them, or the first ``devices``; :func:`configure`). A row-batched program (every
  input and output has the patient/row axis first, and row ``i`` of the output depends only on row ``i``
  of the inputs) is run with :class:`RowProgram`: the rows are padded to a multiple of the device count
  (copies of the last row, dropped afterwards), placed with ``NamedSharding(mesh, P("rows"))`` and the
  per-row program runs on every device's rows through ``jax.shard_map``. Every device runs the same
  per-row program on its own rows, so per-row results do not depend on the device count (float64: bit
  for bit; tested with 8 virtual CPU devices). A device always gets at least :data:`MIN_ROWS` rows (one
  device too): XLA simplifies a one-row batch axis away, and the resulting program may round a reduction
  differently.
* **Chunks.** Work is cut into chunks that bound memory: :func:`chunk_rows` sizes them from the free
  memory of the devices (``device.memory_stats()`` on accelerators: ``bytes_limit - bytes_in_use``; on
  CPU ``MemAvailable`` of the host, and at most 2,048 rows, the size measured fastest on the 2-core
  reference machine), or takes the configured ``chunk_size``.
* **Processes.** :func:`init_distributed` starts JAX's multi-process runtime
  (:func:`jax.distributed.initialize`) from explicit values or the environment (``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; or JAX's cluster auto-detection: SLURM, Open MPI, Kubernetes,
  Cloud TPU). Patients are independent, so processes never exchange arrays: each takes its share of the
  chunks (:func:`assign_chunks`, deterministic), writes them to a :class:`ChunkStore` on a file system all
  processes see, and the store is merged when every chunk is there.
* **Precision.** float64 (``jax_enable_x64``, the default on CPU) or float32 (the default on
  accelerators): :func:`set_precision`; ``PKPD_PRECISION`` sets it at import (see :mod:`pkpd`).
* **Resumability.** A :class:`ChunkStore` holds completed chunks as files, written atomically, with the
  identity of the run; ``resume=True`` skips the chunks already there, so an interrupted run continues
  without recomputing or duplicating a patient. Once a run has written its outputs, the commands delete
  its store (:func:`remove_store`; ``--keep-chunks`` keeps it); a run that failed or was interrupted
  keeps it for ``--resume``.

Nothing here is specific to a model: :mod:`pkpd.population` shards its compiled kernel with
:class:`RowProgram`, :func:`regimens.optimize.run_trial` and ``pkpd simulate --regimen`` use
:class:`ChunkStore`, and :mod:`pkpd.fit.laplace` shards the subjects of a Laplace fit with
:func:`shard_subjects`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import config as _jax_config
from . import interrupts
from .errors import PKPDError
from .xla import jit

__all__ = [
    "BatchConfig",
    "BatchError",
    "ChunkStore",
    "RowProgram",
    "ROW_AXIS",
    "assign_chunks",
    "barrier",
    "chunk_rows",
    "config",
    "configure",
    "configured",
    "describe",
    "device_count",
    "free_memory",
    "init_distributed",
    "local_devices",
    "mesh",
    "note_call",
    "pad_rows",
    "place",
    "placement",
    "precision",
    "process_info",
    "record_shardings",
    "shard_rows_map",
    "sharding_placement",
    "run_chunks",
    "run_identity",
    "set_precision",
    "setup",
    "check_resume_dir",
    "remove_store",
]

#: Name of the mesh axis the patient/row axis is sharded over.
ROW_AXIS = "rows"
#: Rows per chunk on CPU when not configured (bounded by the host's available memory).
CPU_CHUNK_ROWS = 2048
#: Fewest rows one device runs (padding added): a one-row batch compiles to a different program.
MIN_ROWS = 2


class BatchError(PKPDError):
    """Bad scale-out settings (device count, chunk size, precision, process settings) or a chunk store that
    does not belong to the run."""


@dataclass(frozen=True)
class BatchConfig:
    """Process-wide scale-out settings (:func:`configure`).

    Attributes
    ----------
    devices
        Number of local devices the row axis is sharded over (the first ``devices`` of
        :func:`jax.local_devices`); ``None``: all of them.
    chunk_size
        Rows per chunk (patients, or patients x draws); ``None``: sized from the free memory
        (:func:`chunk_rows`).
    memory_fraction
        Fraction of a device's free memory one chunk may use when sized automatically (0-1].
    """

    devices: int | None = None
    chunk_size: int | None = None
    memory_fraction: float = 0.5


_CONFIG = BatchConfig()
_UNSET: Any = object()


def config() -> BatchConfig:
    """The current :class:`BatchConfig`."""
    return _CONFIG


def configure(
    *, devices: int | None = _UNSET, chunk_size: int | None = _UNSET, memory_fraction: float = _UNSET
) -> BatchConfig:
    """Set process-wide scale-out settings; arguments not given are left as they are.

    Parameters
    ----------
    devices
        Local devices to shard over (>= 1), or ``None`` for all.
    chunk_size
        Rows per chunk (>= 1), or ``None`` for automatic sizing.
    memory_fraction
        Fraction (0, 1] of free device memory an automatically sized chunk may use.

    Returns
    -------
    BatchConfig
        The new settings.

    Raises
    ------
    BatchError
        On a value out of range (``devices`` is checked against the devices present when first used).
    """
    global _CONFIG
    kw = {}
    if devices is not _UNSET:
        if devices is not None and (int(devices) != devices or int(devices) < 1):
            raise BatchError(f"devices must be a positive integer (or None for all), got {devices!r}")
        kw["devices"] = None if devices is None else int(devices)
    if chunk_size is not _UNSET:
        if chunk_size is not None and (int(chunk_size) != chunk_size or int(chunk_size) < 1):
            raise BatchError(f"chunk size must be a positive integer (or None for automatic), got {chunk_size!r}")
        kw["chunk_size"] = None if chunk_size is None else int(chunk_size)
    if memory_fraction is not _UNSET:
        if not 0 < float(memory_fraction) <= 1:
            raise BatchError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
        kw["memory_fraction"] = float(memory_fraction)
    _CONFIG = replace(_CONFIG, **kw)
    return _CONFIG


@contextlib.contextmanager
def configured(**settings):
    """Context manager: :func:`configure` for the block, previous settings (and precision) restored after.

    ``precision`` may be given too (see :func:`set_precision`).
    """
    global _CONFIG
    import jax

    saved, x64 = _CONFIG, bool(jax.config.jax_enable_x64)
    prec = settings.pop("precision", None)
    try:
        configure(**settings)
        if prec is not None:
            set_precision(prec)
        yield _CONFIG
    finally:
        _CONFIG = saved
        if bool(jax.config.jax_enable_x64) != x64:
            jax.config.update("jax_enable_x64", x64)


# ----------------------------------------------------------------------------------------------------------
# devices and the mesh
# ----------------------------------------------------------------------------------------------------------
def local_devices() -> list:
    """The local devices the row axis is sharded over (the first ``config().devices``, or all).

    Raises
    ------
    BatchError
        When more devices are asked for than this process has.
    """
    import jax

    devs = jax.local_devices()
    n = _CONFIG.devices
    if n is None:
        return list(devs)
    if n > len(devs):
        raise BatchError(
            f"{n} devices asked for (--devices), but this process sees {len(devs)} "
            f"{devs[0].platform} device(s); on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count"
            f"={n} before starting Python for {n} virtual devices"
        )
    return list(devs[:n])


def device_count() -> int:
    """Number of devices the row axis is sharded over (:func:`local_devices`)."""
    return len(local_devices())


_MESHES: dict = {}


def mesh(devices: Sequence | None = None):
    """A one-axis :class:`jax.sharding.Mesh` (axis :data:`ROW_AXIS`) over ``devices`` (default
    :func:`local_devices`); cached per device tuple."""
    from jax.sharding import Mesh

    devs = tuple(local_devices() if devices is None else devices)
    key = tuple(d.id for d in devs)
    if key not in _MESHES:
        _MESHES[key] = Mesh(np.array(devs, dtype=object), (ROW_AXIS,))
    return _MESHES[key]


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def free_memory(device=None) -> int | None:
    """Free memory of ``device`` in bytes (default: the first local device).

    Accelerators: ``bytes_limit - bytes_in_use`` from ``device.memory_stats()``. CPU (no memory statistics):
    the host's available memory (``MemAvailable``), shared by every virtual CPU device. ``None`` when unknown.
    """
    if device is None:
        device = local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements memory statistics
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        return _host_available()
    return None


def chunk_rows(
    bytes_per_row: float, *, multiple: int = 1, cpu_rows: int = CPU_CHUNK_ROWS, devices: Sequence | None = None
) -> int:
    """Rows per chunk: the configured ``chunk_size``, else sized from the free memory.

    Parameters
    ----------
    bytes_per_row
        Estimated device memory one row needs while its chunk runs (inputs, outputs, intermediates), bytes.
    multiple
        Automatic sizes are rounded down to a multiple of this (e.g. device count x rows per sub-batch).
    cpu_rows
        Upper bound on CPU (one host: more rows per chunk do not run faster).
    devices
        Devices the chunk is sharded over (default :func:`local_devices`).

    Returns
    -------
    int
        Rows per chunk (>= ``multiple``): accelerators ``n_devices x memory_fraction x min free / bytes_per_row``;
        CPU ``min(cpu_rows, memory_fraction x available / bytes_per_row)``.
    """
    if _CONFIG.chunk_size is not None:
        return int(_CONFIG.chunk_size)
    devs = list(local_devices() if devices is None else devices)
    multiple = max(int(multiple), 1)
    frac = _CONFIG.memory_fraction
    per = max(float(bytes_per_row), 1.0)
    if devs[0].platform == "cpu":
        avail = _host_available()
        rows = cpu_rows if avail is None else min(cpu_rows, int(frac * avail / per))
    else:
        free = [free_memory(d) for d in devs]
        known = [f for f in free if f is not None]
        rows = len(devs) * int(frac * min(known) / per) if known else len(devs) * cpu_rows
    return max(multiple, rows // multiple * multiple)


# ----------------------------------------------------------------------------------------------------------
# sharded row programs
# ----------------------------------------------------------------------------------------------------------
_RECORDS: list | None = None


@contextlib.contextmanager
def record_shardings():
    """Record how every :class:`RowProgram` call in the block placed its arrays (a debugging and test hook).

    Yields a list that receives one dict per call: ``name``, ``rows`` (real rows), ``padded_rows``,
    ``devices`` (device count of the mesh), ``input`` and ``output``: for the first array leaf, the
    number of devices of its sharding and ``(device id, shard shape)`` of each addressable shard.
    """
    global _RECORDS
    prev, _RECORDS = _RECORDS, []
    try:
        yield _RECORDS
    finally:
        _RECORDS = prev


def placement(tree) -> dict:
    """How the first array leaf of ``tree`` is placed: its device count, partition spec and ``(device id,
    shard shape)`` of each addressable shard."""
    import jax

    leaves = [v for v in jax.tree_util.tree_leaves(tree) if hasattr(v, "sharding")]
    if not leaves:
        return {"devices": 0, "shards": []}
    v = leaves[0]
    return {
        "devices": len(v.sharding.device_set),
        "spec": str(getattr(v.sharding, "spec", "")),
        "shards": [(s.device.id, tuple(s.data.shape)) for s in v.addressable_shards],
    }


def sharding_placement(sharding, shape) -> dict:
    """:func:`placement` of an array of ``shape`` with ``sharding`` (e.g. one already copied to the host)."""
    return {
        "devices": len(sharding.device_set),
        "spec": str(getattr(sharding, "spec", "")),
        "shards": [
            (d.id, tuple(len(range(*sl.indices(n))) for sl, n in zip(idx, shape)) if idx else ())
            for d, idx in sharding.addressable_devices_indices_map(tuple(shape)).items()
        ],
    }


def note_call(name: str, rows: int, padded_rows: int, devices: int, inputs: dict, outputs: dict) -> None:
    """Add a :func:`record_shardings` record for a sharded call (:class:`RowProgram`, the optimizer's relaxed
    stages); ``inputs``/``outputs``: placements from :func:`placement` or :func:`sharding_placement`."""
    if _RECORDS is not None:
        _RECORDS.append(
            {
                "name": name,
                "rows": int(rows),
                "padded_rows": int(padded_rows),
                "devices": int(devices),
                "input": inputs,
                "output": outputs,
            }
        )


def shard_rows_map(fn: Callable, devices: Sequence, replicated: Sequence[bool]) -> Callable:
    """``jax.shard_map`` of ``fn(*args)`` over a mesh of ``devices``: the arguments flagged ``False`` in
    ``replicated`` are split along their first (row) axis, those flagged ``True`` are copied to every device;
    every output is split along its first axis. Not jitted, so it can sit inside a jitted and differentiated
    function (the optimizer's gradient step). ``fn`` must compute row ``i`` of its outputs from row ``i`` of
    its split inputs (and the replicated ones)."""
    import jax
    from jax.sharding import PartitionSpec as P

    specs = tuple(P() if r else P(ROW_AXIS) for r in replicated)
    return jax.shard_map(fn, mesh=mesh(devices), in_specs=specs, out_specs=P(ROW_AXIS), check_vma=False)


def place(tree, devices: Sequence | None = None, *, replicated: bool = False):
    """``tree``'s arrays on the mesh of ``devices`` (default :func:`local_devices`): split along their first
    axis (which must be a multiple of the device count: :func:`pad_rows`), or, with ``replicated``, copied to
    every device."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    m = mesh(list(devices) if devices is not None else local_devices())
    return jax.device_put(tree, NamedSharding(m, P() if replicated else P(ROW_AXIS)))


def pad_rows(tree, multiple: int):
    """``(tree, n)``: every leaf's first axis (``n`` rows) padded to a multiple of ``multiple`` with copies of
    its last row (padding that :class:`RowProgram` and the optimizer drop from their results)."""
    import jax

    leaves = jax.tree_util.tree_leaves(tree)
    n = int(leaves[0].shape[0])
    pad = -(-n // int(multiple)) * int(multiple) - n
    return jax.tree_util.tree_map(lambda v: _pad_rows(v, pad), tree), n


def _pad_rows(v, pad: int):
    if not pad:
        return v
    if isinstance(v, np.ndarray):
        return np.concatenate([v, np.repeat(v[-1:], pad, axis=0)], axis=0)
    import jax.numpy as jnp

    return jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)], axis=0)


class RowProgram:
    """A row-batched function run over the row axis of every local device.

    ``fn(*static, arrays)`` must take a pytree ``arrays`` whose every leaf has the rows first and return a
    pytree whose every leaf has the rows first, row ``i`` of the result depending only on row ``i`` of the
    inputs (the patients of a population simulation). ``static`` are hashable Python values (e.g. a seed)
    baked into the compiled program.

    Parameters
    ----------
    fn
        The per-batch function (not jitted).
    single
        Optional compiled ``single(*static, arrays)`` used when there is one device (the unsharded program,
        unchanged).
    name
        Label in :func:`record_shardings` records.
    """

    def __init__(self, fn: Callable, single: Callable | None = None, name: str = "rows"):
        self.fn = fn
        self.single = single
        self.name = name
        self._programs: dict = {}

    def program(self, static: tuple, devices: Sequence):
        """The jitted ``shard_map`` of ``fn`` over a mesh of ``devices`` (cached)."""

        key = (static, tuple(d.id for d in devices))
        if key not in self._programs:
            fn = self.fn
            self._programs[key] = jit(shard_rows_map(lambda a: fn(*static, a), devices, (False,)))
        return self._programs[key]

    def __call__(self, *static, arrays):
        import jax

        devs = local_devices()
        leaves = jax.tree_util.tree_leaves(arrays)
        n = int(leaves[0].shape[0])
        # every device gets the same number of rows, at least MIN_ROWS: XLA compiles a batch of one row
        # differently (the unit batch axis is simplified away) and may then round a reduction differently
        per = max(-(-n // len(devs)), MIN_ROWS)
        pad = per * len(devs) - n
        arrays = jax.tree_util.tree_map(lambda v: _pad_rows(v, pad), arrays)
        if len(devs) == 1 and self.single is not None:
            placed = arrays
            out = self.single(*static, arrays)
        else:
            placed = place(arrays, devs)
            out = self.program(tuple(static), devs)(placed)
        note_call(self.name, n, n + pad, len(devs), placement(placed), placement(out))
        if pad:
            out = jax.tree_util.tree_map(lambda v: np.asarray(v)[:n], out)
        return out


# ----------------------------------------------------------------------------------------------------------
# precision
# ----------------------------------------------------------------------------------------------------------
def precision() -> str:
    """The precision in force: ``"float64"`` (``jax_enable_x64`` on) or ``"float32"``."""
    import jax

    return "float64" if jax.config.jax_enable_x64 else "float32"


def default_precision(platform: str | None = None) -> str:
    """float64 on CPU, float32 on accelerators (``platform`` default: JAX's default backend):
    :func:`pkpd.config.default_precision`."""
    return _jax_config.default_precision(platform)


def set_precision(value: str | None) -> str:
    """Switch 64-bit floats on (``"float64"``) or off (``"float32"``); ``"auto"``: :func:`default_precision`
    (:func:`pkpd.configure` with ``precision=value``).

    Call it before arrays are created (at the start of a run): arrays made earlier keep their dtype.
    ``None`` leaves the precision as it is. Returns the precision in force.

    Raises
    ------
    BatchError
        On another value.
    """
    if value is None:
        return precision()
    try:
        return _jax_config.configure(precision=value).precision
    except _jax_config.ConfigurationError as exc:
        raise BatchError(str(exc)) from None


# ----------------------------------------------------------------------------------------------------------
# processes
# ----------------------------------------------------------------------------------------------------------
_DISTRIBUTED = {"initialized": False}


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise BatchError(f"environment variable {name} must be an integer, got {v!r}") from None


def init_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    timeout_s: int = 300,
) -> tuple[int, int]:
    """Start JAX's multi-process runtime when asked for; return ``(process index, process count)``.

    Values not given come from ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``. With none of them set and ``auto`` off this is a single process (nothing is
    started). ``auto`` leaves what is missing to JAX's cluster auto-detection (SLURM, Open MPI,
    Kubernetes, Cloud TPU). Must run before anything else touches JAX's devices.

    Raises
    ------
    BatchError
        Incomplete or inconsistent settings, or a runtime that cannot start (the message says which).
    """
    import jax

    if _DISTRIBUTED["initialized"]:
        return jax.process_index(), jax.process_count()
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if coordinator is None and num_processes is None and process_id is None and not auto:
        return 0, 1
    if num_processes == 1 and not auto and coordinator is None:
        return 0, 1
    if not auto:
        missing = [
            n
            for n, v in (
                ("coordinator address (--coordinator / JAX_COORDINATOR_ADDRESS)", coordinator),
                ("process count (--num-processes / JAX_NUM_PROCESSES)", num_processes),
                ("process id (--process-id / JAX_PROCESS_ID)", process_id),
            )
            if v is None
        ]
        if missing:
            raise BatchError("multi-process run: missing " + "; ".join(missing))
        if not 0 <= int(process_id) < int(num_processes):
            raise BatchError(
                f"process id {process_id} must be in 0 .. {int(num_processes) - 1} (process count {num_processes})"
            )
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(timeout_s),
        )
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BatchError(
            f"cannot start the multi-process runtime (coordinator {coordinator}, {num_processes} "
            f"processes, this one {process_id}): {first}"
        ) from None
    _DISTRIBUTED["initialized"] = True
    return jax.process_index(), jax.process_count()


def process_info() -> tuple[int, int]:
    """``(process index, process count)`` of JAX's runtime (``(0, 1)`` for a single process)."""
    import jax

    return int(jax.process_index()), int(jax.process_count())


def barrier(name: str) -> None:
    """Wait until every process reaches ``barrier(name)`` (no-op for one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def assign_chunks(chunks: Iterable[int], index: int, count: int) -> list[int]:
    """This process's share of ``chunks``: every ``count``-th one starting at position ``index`` (the same
    list on every process gives disjoint shares that together cover it)."""
    chunks = list(chunks)
    if not 0 <= index < count:
        raise BatchError(f"process index {index} out of range for {count} processes")
    return chunks[index::count]


def setup(
    *,
    devices: int | None = None,
    chunk_size: int | None = None,
    precision: str | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    distributed_auto: bool = False,
) -> tuple[int, int]:
    """Everything a batch command sets up before it runs, in the order JAX needs: the multi-process runtime
    (:func:`init_distributed`), the precision (:func:`set_precision`; ``None``: keep the import-time one),
    the devices and chunk size (:func:`configure`, checked against the devices present).

    Returns
    -------
    (process index, process count)
    """
    index, count = init_distributed(coordinator, num_processes, process_id, auto=distributed_auto)
    set_precision(precision)
    configure(devices=devices, chunk_size=chunk_size)
    local_devices()  # fails now, with the message, if too many devices were asked for
    return index, count


def describe() -> dict:
    """What JAX sees: platform, devices (with memory where known), process index and count, precision,
    the scale-out settings in force and ``XLA_FLAGS``."""
    import jax

    devs = []
    for d in jax.devices():
        stats = None
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001
            stats = None
        devs.append(
            {
                "id": d.id,
                "kind": d.device_kind,
                "platform": d.platform,
                "process": d.process_index,
                "local": d.process_index == jax.process_index(),
                "bytes_limit": int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None,
                "bytes_in_use": int(stats.get("bytes_in_use", 0)) if stats else None,
            }
        )
    used = local_devices()
    return {
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        "devices": devs,
        "local_device_count": jax.local_device_count(),
        "device_count": jax.device_count(),
        "sharding_devices": len(used),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "precision": precision(),
        "default_precision": default_precision(),
        "chunk_size": _CONFIG.chunk_size,
        "host_available_bytes": _host_available(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


# ----------------------------------------------------------------------------------------------------------
# chunk store
# ----------------------------------------------------------------------------------------------------------
def run_identity(**fields) -> dict:
    """A JSON-safe identity of a run (what must match for its chunks to be reused): the fields as given
    (repr for non-JSON values) and their SHA-256."""

    def safe(v):
        try:
            json.dumps(v)
            return v
        except TypeError:
            return repr(v)

    d = {k: safe(v) for k, v in sorted(fields.items())}
    d["sha256"] = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
    return d


class ChunkStore:
    """Completed chunks of a long run, one set of files per chunk, so the run can stop and resume.

    Layout of ``root``::

        store.json                 {"store": 1, "identity": {...}, "n_chunks": N}
        chunk-000012.patients.csv  one table per name (floats written with 17 significant digits)
        chunk-000012.json          written last: marks chunk 12 complete (row counts, dtypes, info)

    Files are written to a temporary name and renamed, so a chunk is either complete or absent, whatever
    moment a run is killed at. Tables round-trip exactly (float64 bit for bit, dtypes kept).

    Use :meth:`open`; several processes may write to one store (each its own chunks).
    """

    def __init__(self, root: Path, identity: Mapping, n_chunks: int):
        self.root = Path(root)
        self.identity = dict(identity)
        self.n_chunks = int(n_chunks)

    # ---- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, root, identity: Mapping, n_chunks: int, *, resume: bool = False, join: bool = False) -> ChunkStore:
        """Open (or create) the store of a run.

        Parameters
        ----------
        root
            Directory of the store (created).
        identity
            What defines the run (:func:`run_identity`): an existing store must have the same.
        n_chunks
            Number of chunks of the run.
        resume
            Keep the completed chunks of an earlier run with the same identity; otherwise an existing store
            is cleared (its chunk files are deleted) and the run starts over.
        join
            Another process opens (and, unless ``resume``, clears) the store: only check that it belongs to
            this run (processes other than 0 of a multi-process run).

        Raises
        ------
        BatchError
            The store belongs to another run (the message names what differs), or is missing when joining.
        """
        st = cls(root, identity, n_chunks)
        meta = st.root / "store.json"
        if meta.is_file():
            old = json.loads(meta.read_text())
            if (
                old.get("identity", {}).get("sha256") != st.identity.get("sha256")
                or int(old.get("n_chunks", -1)) != n_chunks
            ):
                if resume or join:
                    diff = sorted(
                        k
                        for k in set(old.get("identity", {})) | set(st.identity)
                        if k != "sha256" and old.get("identity", {}).get(k) != st.identity.get(k)
                    )
                    raise BatchError(
                        f"the chunk store {st.root} belongs to another run (different "
                        f"{', '.join(diff) or 'chunking'}); resume it with the same settings, or "
                        "start over without --resume (with --force)"
                    )
                st.clear()
            elif not resume and not join:
                st.clear()
        elif join:
            raise BatchError(f"the chunk store {st.root} does not exist (process 0 creates it)")
        if not join:
            st.root.mkdir(parents=True, exist_ok=True)
            if not meta.is_file():
                _atomic_write(
                    meta, json.dumps({"store": 1, "identity": st.identity, "n_chunks": n_chunks}, indent=1) + "\n"
                )
        return st

    def clear(self) -> None:
        """Delete this store's files (only ``store.json`` and ``chunk-*`` files)."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.is_file() and (p.name == "store.json" or p.name.startswith("chunk-") or p.name.startswith(".tmp-")):
                p.unlink()

    # ---- chunks -------------------------------------------------------------------------------------
    def _base(self, i: int) -> Path:
        return self.root / f"chunk-{int(i):06d}"

    def done(self) -> list[int]:
        """Indices of the complete chunks."""
        out = []
        for p in self.root.glob("chunk-*.json"):
            try:
                out.append(int(p.name[6:12]))
            except ValueError:
                continue
        return sorted(i for i in out if 0 <= i < self.n_chunks)

    def missing(self) -> list[int]:
        """Indices of the chunks not yet complete."""
        have = set(self.done())
        return [i for i in range(self.n_chunks) if i not in have]

    def write(
        self,
        i: int,
        tables: Mapping[str, Any],
        info: Mapping | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Store chunk ``i``: ``tables`` (name -> DataFrame), a JSON-safe ``info`` mapping and optional numeric
        ``arrays`` (name -> array, one ``.npz``, exact)."""
        base = self._base(i)
        meta = {"chunk": int(i), "tables": {}, "info": dict(info or {}), "arrays": bool(arrays)}
        if arrays:
            path = base.with_name(f"{base.name}.arrays.npz")
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
            os.replace(tmp, path)
        for name, df in tables.items():
            path = base.with_name(f"{base.name}.{name}.csv")
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            df.to_csv(tmp, index=False, float_format="%.17g", na_rep="NaN")
            os.replace(tmp, path)
            meta["tables"][name] = {"rows": int(len(df)), "dtypes": {str(c): str(t) for c, t in df.dtypes.items()}}
        _atomic_write(base.with_name(f"{base.name}.json"), json.dumps(meta, indent=1, default=float) + "\n")

    def read_arrays(self, i: int) -> dict:
        """The numeric arrays of chunk ``i`` (empty when none were stored)."""
        base = self._base(i)
        path = base.with_name(f"{base.name}.arrays.npz")
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def read(self, i: int) -> tuple[dict, dict]:
        """``(tables, info)`` of chunk ``i``, tables with their original dtypes."""
        import pandas as pd

        base = self._base(i)
        meta = json.loads(base.with_name(f"{base.name}.json").read_text())
        tables = {}
        for name, m in meta["tables"].items():
            dtypes = m["dtypes"]
            text = [c for c, t in dtypes.items() if t in ("object", "str", "string")]
            # pandas >= 3 parses floats exactly by default (and deprecates float_precision)
            exact = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
            df = pd.read_csv(
                base.with_name(f"{base.name}.{name}.csv"),
                keep_default_na=False,
                na_values={c: ["NaN"] for c in dtypes if c not in text},
                dtype={c: str for c in text},
                **exact,
            )
            for c, t in dtypes.items():
                if c in text:
                    continue
                if t == "bool" and df[c].dtype != bool:
                    df[c] = df[c].map({"True": True, "False": False, True: True, False: False}).astype(bool)
                elif str(df[c].dtype) != t:
                    df[c] = df[c].astype(t)
            if len(df) != m["rows"]:
                raise BatchError(f"chunk {i} of {self.root}: table {name} has {len(df)} rows, expected {m['rows']}")
            tables[name] = df
        return tables, meta.get("info", {})

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.5) -> None:
        """Wait until every chunk is complete (written by any process).

        Raises
        ------
        BatchError
            After ``timeout_s`` seconds (``None``: wait as long as it takes), naming the missing chunks.
        """
        t0 = time.monotonic()
        while True:
            interrupts.check()
            miss = self.missing()
            if not miss:
                return
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise BatchError(
                    f"{len(miss)} chunk(s) of {self.root} still missing after {timeout_s:g} s "
                    f"(first: {miss[:10]}); a process may have stopped: rerun with --resume"
                )
            time.sleep(poll_s)

    def merge(self, name: str, *, id_column: str | None = "ID", expect_ids: Sequence | None = None):
        """Every chunk's table ``name`` concatenated in chunk order, with the chunk infos.

        Returns
        -------
        (DataFrame, list of info dicts)

        Raises
        ------
        BatchError
            A chunk is missing, or (with ``id_column``) an ID appears twice or (with ``expect_ids``) the IDs
            are not exactly the expected ones in order: no patient lost or duplicated.
        """
        import pandas as pd

        miss = self.missing()
        if miss:
            raise BatchError(f"cannot merge {self.root}: {len(miss)} chunk(s) missing (first: {miss[:10]})")
        parts, infos = [], []
        for i in range(self.n_chunks):
            tables, info = self.read(i)
            parts.append(tables[name])
            infos.append(info)
        out = pd.concat(parts, ignore_index=True)
        if id_column is not None and id_column in out:
            ids = out[id_column].to_numpy()
            if len(np.unique(ids)) != len(ids):
                raise BatchError(f"merged chunks of {self.root} repeat patient IDs")
            if expect_ids is not None and not np.array_equal(ids, np.asarray(expect_ids)):
                raise BatchError(
                    f"merged chunks of {self.root} do not hold the expected {len(expect_ids)} patients (got {len(ids)})"
                )
        return out, infos


def run_chunks(
    root,
    identity: Mapping,
    n_chunks: int,
    compute: Callable[[int], tuple],
    *,
    resume: bool = False,
    wait_timeout_s: float | None = None,
    on_chunk: Callable[[int, bool], None] | None = None,
) -> ChunkStore:
    """Compute the chunks of a run into a :class:`ChunkStore`, resumably, with every process taking its share.

    Process 0 opens the store (clearing it unless ``resume``); after a barrier the other processes join it;
    every process reads the list of missing chunks, and after a second barrier computes its share of them
    (:func:`assign_chunks`), writing each chunk as soon as it is done; then every process waits until all
    chunks are there (:meth:`ChunkStore.wait`).

    Parameters
    ----------
    root, identity, n_chunks, resume
        As for :meth:`ChunkStore.open`.
    compute
        ``compute(i) -> (tables, info)`` or ``(tables, info, arrays)`` for chunk ``i`` (see
        :meth:`ChunkStore.write`).
    wait_timeout_s
        Longest wait for the other processes (s); ``None``: no limit.
    on_chunk
        ``on_chunk(i, resumed)`` for every chunk found complete at the start (``resumed=True``) and after
        each chunk this process computes.

    Returns
    -------
    ChunkStore
        Complete.
    """
    index, count = process_info()
    store = None
    if index == 0:
        store = ChunkStore.open(root, identity, n_chunks, resume=resume)
    barrier("pkpd-store-open")  # process 0 has created or cleared the store
    if index != 0:
        store = ChunkStore.open(root, identity, n_chunks, resume=True, join=True)
    missing = store.missing()
    barrier("pkpd-store-todo")  # every process has the same list before any process writes a chunk
    if on_chunk is not None:
        for i in sorted(set(range(n_chunks)) - set(missing)):
            on_chunk(i, True)
    for i in assign_chunks(missing, index, count):
        interrupts.check()  # an interrupt swallowed by a callback (e.g. JAX's gc callback) still stops here
        out = compute(i)
        interrupts.check()  # ... and the chunk it interrupted is not stored
        store.write(i, *out)
        if on_chunk is not None:
            on_chunk(i, False)
    if count > 1:
        store.wait(wait_timeout_s)
    return store


def check_resume_dir(out_dir, kind: str, command: str) -> None:
    """Refuse to resume into a directory that does not hold a run this command recognises.

    ``--resume`` continues a run from its chunk store; it must never write over files of anything else.
    An absent or empty ``out_dir`` is accepted (the run starts from the beginning). Otherwise ``out_dir``
    must hold the chunk store ``out_dir/chunks/store.json`` of a run of ``kind`` and, when there is a
    ``out_dir/run.json``, it must be the manifest of a ``command`` run. Whether the store belongs to the
    *same* run (population, seed, settings) is checked when it is opened (:meth:`ChunkStore.open`).

    Parameters
    ----------
    out_dir
        The output directory given with ``--out``.
    kind
        The ``kind`` field of the run identity (:func:`run_identity`) the command writes, e.g.
        ``"regimen_simulation"`` or ``"spine72_trial"``.
    command
        The ``pkpd`` sub-command recorded in ``run.json`` (``"simulate"``, ``"trial"``).

    Raises
    ------
    BatchError
        Naming the directory and what it holds instead; nothing is written or deleted.
    """
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise BatchError(f"the output path {out} is a file; give a directory with --out")
    if not any(out.iterdir()):
        return
    what = f"`pkpd {command}`"
    refuse = (
        "; --resume only continues a run it recognises, so nothing was written: choose another --out, or "
        "pass --force to overwrite the directory's files"
    )
    meta = out / "chunks" / "store.json"
    try:
        store = json.loads(meta.read_text()) if meta.is_file() else None
    except (OSError, ValueError):
        raise BatchError(f"cannot resume in {out}: its chunk store {meta} is unreadable{refuse}") from None
    if store is None and _manifest_command(out / "run.json") == command:
        raise BatchError(
            f"nothing to resume in {out}: it holds a finished run of {what} (its run.json; the chunks "
            "were removed when it succeeded, unless --keep-chunks). Pass --force to run it again, or "
            "choose another --out"
        )
    if not isinstance(store, dict) or store.get("store") != 1 or not isinstance(store.get("identity"), dict):
        raise BatchError(
            f"cannot resume in {out}: the directory is not empty and holds no run of {what} to resume "
            f"(no chunk store {meta}){refuse}"
        )
    found = store["identity"].get("kind")
    if found != kind:
        raise BatchError(
            f"cannot resume in {out}: its chunk store holds a run of another kind ({found!r}, not "
            f"{kind!r}: not a run of {what}){refuse}"
        )
    manifest = out / "run.json"
    if manifest.exists():
        try:
            recorded = json.loads(manifest.read_text()).get("command")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != command:
            raise BatchError(
                f"cannot resume in {out}: its run.json is not the manifest of a {what} run "
                f"(command {recorded!r}){refuse}"
            )


def _manifest_command(path: Path) -> str | None:
    """The ``command`` recorded in a run manifest (``run.json``), or ``None`` (absent or unreadable)."""
    try:
        return json.loads(path.read_text()).get("command") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def remove_store(root) -> int:
    """Delete the chunk store of a run that has written its outputs; return the bytes freed.

    Only the store's own files are deleted (``store.json``, ``chunk-*`` and ``.tmp-*`` files), then the
    directory when nothing else is left in it. Call it on process 0 once the outputs and the manifest are
    written, after every process has read the chunks (:func:`barrier`): a run that failed or was
    interrupted must keep its store, since ``--resume`` continues from it.

    Parameters
    ----------
    root
        Directory of the :class:`ChunkStore` (``OUT/chunks``); absent: nothing to do.

    Returns
    -------
    int
        Bytes of the deleted files.

    Raises
    ------
    OSError
        A file that cannot be deleted (the files already deleted stay deleted; the store is then
        incomplete, and a later ``--resume`` recomputes the missing chunks).
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    freed = 0
    meta = root / "store.json"
    files = [p for p in root.iterdir() if p.is_file() and (p.name.startswith("chunk-") or p.name.startswith(".tmp-"))]
    # completion markers (chunk-*.json) first: a deletion cut short leaves chunks that count as missing, never
    # a chunk marked complete without its tables; the store's identity last
    for p in sorted(files, key=lambda q: not q.name.endswith(".json")) + ([meta] if meta.is_file() else []):
        freed += p.stat().st_size
        p.unlink()
    if not any(root.iterdir()):
        root.rmdir()
    return freed


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)
