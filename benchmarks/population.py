"""Benchmark of the population regimen simulator: SPINE-72 x 72 h x regimen C1.

Acceptance target (issue): the population simulation of 10,000 patients x 72 h x the C1 regimen runs on this
2-core machine in under 2 minutes, reported by a benchmark script.

What is timed (wall clock, :func:`time.perf_counter`):

1. **Population run.** ``spine72_population(n, seed)`` is sampled, then
   ``simulate_regimen(get_regimen("C1"), pop, seed=seed, chunk_size=...)`` is called twice in the same
   process: the *first call* (includes JIT compilation of the kernel for the chunk shape and of the random
   streams) and a *warm call* (compiled code cached in-process; best of ``--repeats``). The first call is
   judged against the 2-minute target (PASS/FAIL). Each call is split into phases by wrapping, for the
   duration of the call only, three methods of ``pkpd.population.RegimenPlan`` with timers (the
   package code is not modified): ``build`` (plan assembly), ``arrays`` (host-side preparation per chunk:
   individual parameters, ``expm`` of every patient's system, exact dose contributions), the compiled kernel
   (blocking on its result; includes compilation on the first chunk of the first call) and ``collect``
   (outcome table); "other" is the rest (chunk slicing and padding, host/device transfers).
2. **Baseline in the same process.** On a subset of ``--baseline-n`` patients (default 200) the arrays that
   the simulator prepares (``RegimenPlan.build(C1, sub, SimOptions())`` then ``plan.arrays(sub, seed)``) are
   propagated by a straightforward numpy loop over the time grid with batched matvecs over patients:
   ``x_k = Phi x_{k-1} + (act_k * segw) @ sv + ((evk == k) * evw) @ evv`` (the scheduled-dose PK part of the
   kernel only: no pain, no PRN/PCA feedback). The JAX kernel (compiled, full: pain, PRN/PCA demand and
   lockouts, adverse effects) is timed on the same prepared arrays; both report patients/s and their ratio.
   Both exclude the host preparation, which they share.
3. **Numerical check.** The numpy loop must reproduce the JAX states (``SimOptions(record_states=True)``)
   for C1 with its PRN rules removed, and for the full C1 when the rescue doses that the JAX run granted are
   replayed into the loop (``x += dose_k @ bvec``). The maximum relative difference (per state trajectory,
   relative to its peak) is printed.
4. Optional ``--sweep``: first/warm call at chunk sizes 512, 2048 and 4096 on ``--sweep-n`` (default 2000)
   patients (the effective chunk is ``min(chunk, n)``).
5. **BLAS threading.** The host preparation works on stacks of small matrices (SciPy's batched ``expm``).
   With OpenBLAS's default threads its threads contend with the compiled kernel of the previous chunk,
   which runs beside the preparation of the next chunk, and the whole call slows down 2-3x on a 2-core
   machine; the simulator therefore prepares with one BLAS thread (``pkpd.population.blocks._one_blas_thread``,
   threadpoolctl). The check times whole calls on ``--blas-check-n`` patients in chunks of
   ``--blas-check-chunk`` with that setting and with it switched off (the library default), alternating.
   ``--blas-threads N`` sets the OpenBLAS libraries loaded by numpy and SciPy to N threads for the whole
   run (their ``*_set_num_threads`` entry points; default 0 = the library default), and the top line says
   which.

The machine (platform, CPU count, jax version and devices) and the load average (:func:`os.getloadavg`; the
machine is shared, so a load above the core count inflates every timing) are printed at the top, and a
summary block at the end (figures for docs/benchmarks.md).

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/population.py [--n 10000] [--seed 0] [--chunk-size 2048]
        [--repeats 1] [--baseline-n 200] [--check-n 16] [--sweep] [--sweep-n 2000] [--blas-threads 0]
        [--blas-check-n 4096] [--blas-check-chunk 1024] [--json OUT.json]

The default run takes a few minutes (two calls of the 10,000-patient simulation).
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import argparse
import contextlib
import ctypes
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import jax
import jax.numpy as jnp

import pkpd  # noqa: F401  (turns on float64 unless PKPD_PRECISION=float32)
from pkpd.patients import spine72_population
from pkpd.population import RegimenPlan, SimOptions, simulate_regimen
from pkpd.population import plan as population_plan
from regimens import get_regimen

_T_IMPORTED = time.perf_counter()

TARGET_S = 120.0
REGIMEN = "C1"
SWEEP_CHUNKS = (512, 2048, 4096)


# --------------------------------------------------------------------------------------------------------
# machine


def machine_info() -> dict:
    """Platform, CPU count, Python/jax versions, jax devices and backend, float64 flag."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "float64": bool(jax.config.jax_enable_x64),
    }


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} / {b:.2f} / {c:.2f}"


def openblas_libs() -> list[tuple[str, object, object]]:
    """``(file name, get_num_threads, set_num_threads)`` of every OpenBLAS loaded in this process.

    numpy and scipy wheels each bundle one (``scipy_openblas64_`` with symbol suffix ``64_``, and
    ``scipy_openblas``). Found through ``/proc/self/maps`` (Linux); an empty list elsewhere.
    """
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.split()[-1].startswith("/")})
    except OSError:
        return []
    out = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    out.append((Path(path).name, get, put))
                    break
            else:
                continue
            break
    return out


def blas_threads() -> list[int]:
    """Current thread count of each library of :func:`openblas_libs`."""
    return [int(get()) for _, get, _ in openblas_libs()]


def set_blas_threads(n: int | list[int]) -> None:
    """Set the thread count of every loaded OpenBLAS (one number, or one per library)."""
    libs = openblas_libs()
    ns = n if isinstance(n, list) else [n] * len(libs)
    for (_, _, put), k in zip(libs, ns):
        put(int(k))


# --------------------------------------------------------------------------------------------------------
# phase timers around one simulate_regimen call


@contextlib.contextmanager
def phase_timers():
    """Time the phases of :func:`simulate_regimen` by wrapping ``RegimenPlan`` methods while the block runs.

    Yields a dict of lists of seconds: ``build``, ``prep`` (``RegimenPlan.arrays``, one entry per chunk),
    ``kernel`` (compiled kernel call until its result is ready, one per chunk) and ``collect``. The original
    methods are restored on exit. The wrappers only add ``perf_counter`` calls: ``run_chunk`` converts the
    kernel's result to numpy right after the call anyway, so blocking on it changes nothing.
    """
    cls = RegimenPlan
    saved = {name: cls.__dict__[name] for name in ("build", "arrays", "_compiled", "collect")}
    acc: dict[str, list[float]] = {"build": [], "prep": [], "kernel": [], "collect": []}

    def timed(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key].append(time.perf_counter() - t)

        return wrapper

    build = saved["build"].__func__
    compiled = saved["_compiled"]

    def _compiled(self):
        return timed(lambda *a: jax.block_until_ready(compiled(self)(*a)), "kernel")

    cls.build = staticmethod(timed(build, "build"))
    cls.arrays = timed(saved["arrays"], "prep")
    cls._compiled = _compiled
    cls.collect = timed(saved["collect"], "collect")
    try:
        yield acc
    finally:
        for name, v in saved.items():
            setattr(cls, name, v)


def timed_call(regimen, pop, seed: int, chunk_size: int) -> dict:
    """One instrumented :func:`simulate_regimen` call: total seconds, phases, the result."""
    with phase_timers() as acc:
        t = time.perf_counter()
        res = simulate_regimen(regimen, pop, seed=seed, chunk_size=chunk_size)
        total = time.perf_counter() - t
    ph = {k: float(sum(v)) for k, v in acc.items()}
    ph["other"] = total - sum(ph.values())
    return {
        "total_s": total,
        "phases": ph,
        "kernel_chunks_s": [float(x) for x in acc["kernel"]],
        "prep_chunks_s": [float(x) for x in acc["prep"]],
        "n_chunks": len(acc["kernel"]),
        "result": res,
    }


def _fmt_phases(ph: dict) -> str:
    return (
        f"build {ph['build']:.2f} s | host prep (RegimenPlan.arrays) {ph['prep']:.1f} s | kernel {ph['kernel']:.1f} s"
        f" | collect {ph['collect']:.1f} s | other {ph['other']:.1f} s"
    )


# --------------------------------------------------------------------------------------------------------
# numpy baseline


def numpy_pk_loop(arrays: dict, T: int, doses: np.ndarray | None = None) -> np.ndarray:
    """Scheduled-dose PK of the simulator's kernel by a Python loop over the grid, numpy over patients.

    Parameters
    ----------
    arrays
        Kernel arrays from ``RegimenPlan.arrays``: ``Phi`` (one (N, n_b, n_b) per drug block, stacked here into one
        block-diagonal (N, n, n) matrix), ``evk``/``evw`` (N, E), ``evv`` (N, E, n),
        ``sf``/``st``/``segw`` (N, S), ``sv`` (N, S, n) and, with ``doses``, ``bvec`` (N, I, n).
    T
        Number of grid points.
    doses
        Optional rescue doses (N, T, I) to replay (``x += dose_k @ bvec`` after the scheduled inputs, as in the
        kernel); None for the scheduled-dose part only.

    Returns
    -------
    numpy.ndarray
        States after the inputs of each grid point, (N, T, n).
    """
    evk, evw, evv = arrays["evk"], arrays["evw"], arrays["evv"]
    sf, st, segw, sv = arrays["sf"], arrays["st"], arrays["segw"], arrays["sv"]
    # the kernel keeps one step propagator per drug block; the baseline stacks them into one dense matrix
    blocks = arrays["Phi"]
    n_pat, n = evv.shape[0], evv.shape[2]
    Phi = np.zeros((n_pat, n, n))
    off = 0
    for P in blocks:
        m = P.shape[1]
        Phi[:, off : off + m, off : off + m] = P
        off += m
    x = np.zeros((n_pat, n))
    out = np.empty((n_pat, T, n))
    for k in range(T):
        x = np.matmul(Phi, x[:, :, None])[:, :, 0]
        w_seg = ((k >= sf) & (k <= st)) * segw
        w_ev = (evk == k) * evw
        x = x + np.matmul(w_seg[:, None, :], sv)[:, 0, :] + np.matmul(w_ev[:, None, :], evv)[:, 0, :]
        if doses is not None:
            x = x + np.matmul(doses[:, k, None, :], arrays["bvec"])[:, 0, :]
        out[:, k] = x
    return out


def max_rel_diff(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max over patients and states of max_t |a - ref| / max_t |ref|, max |a - ref|); (N, T, n) arrays.

    State trajectories that are identically zero in ``ref`` enter the relative measure only through the
    absolute difference (they must be zero in ``a`` too: that is checked by the absolute value).
    """
    diff = np.abs(a - ref).max(axis=1)
    peak = np.abs(ref).max(axis=1)
    rel = np.where(peak > 0, diff / np.where(peak > 0, peak, 1.0), 0.0)
    return float(rel.max()), float(diff.max())


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def baseline(regimen, pop, seed: int, repeats: int) -> dict:
    """JAX full kernel vs numpy PK-only loop on the same prepared arrays of ``pop``."""
    plan = RegimenPlan.build(regimen, pop, SimOptions())
    t = time.perf_counter()
    arrays, *_ = plan.arrays(pop, seed)
    t_prep = time.perf_counter() - t
    n = len(pop)
    t_np, _ = _best(lambda: numpy_pk_loop(arrays, plan.T), repeats)
    fn = plan._compiled()
    dev = jax.block_until_ready(jax.tree_util.tree_map(jnp.asarray, arrays))
    t = time.perf_counter()
    jax.block_until_ready(fn(dev))
    t_first = time.perf_counter() - t
    t_jax, _ = _best(lambda: jax.block_until_ready(fn(dev)), repeats)
    return {
        "n": n,
        "T": plan.T,
        "n_states": plan.n,
        "prep_s": t_prep,
        "numpy_s": t_np,
        "jax_first_s": t_first,
        "jax_s": t_jax,
        "numpy_pps": n / t_np,
        "jax_pps": n / t_jax,
        "ratio": t_np / t_jax,
        "repeats": repeats,
    }


def numeric_check(regimen, pop, seed: int) -> dict:
    """numpy loop vs JAX states: C1 without PRN (public path), full C1 with the granted rescue doses replayed."""
    out = {"n": len(pop)}
    opts = SimOptions(record_states=True)
    no_prn = dataclasses.replace(regimen, prn=(), pca=())
    res = simulate_regimen(no_prn, pop, seed=seed, options=opts, chunk_size=len(pop))
    plan = RegimenPlan.build(no_prn, pop, opts)
    arrays, *_ = plan.arrays(pop, seed)
    x_np = numpy_pk_loop(arrays, plan.T)
    out["no_prn_rel"], out["no_prn_abs"] = max_rel_diff(x_np, res.states)
    out["no_prn_shape"] = list(res.states.shape)
    # full regimen: the kernel's own run, its granted doses replayed into the numpy loop
    plan = RegimenPlan.build(regimen, pop, opts)
    run = plan.run_chunk(pop, seed)
    arrays, *_ = plan.arrays(pop, seed)
    x_np = numpy_pk_loop(arrays, plan.T, doses=np.asarray(run["dose"]))
    out["replay_rel"], out["replay_abs"] = max_rel_diff(x_np, np.asarray(run["x"]))
    out["replay_n_rescue"] = int((np.asarray(run["dose"])[:, :, : len(plan.items)] > 0).sum())
    return out


def blas_check(regimen, pop, seed: int, chunk: int, rounds: int = 2) -> dict:
    """Seconds of whole :func:`simulate_regimen` calls on ``pop`` (warm) with the simulator's one-BLAS-thread
    host preparation and with it switched off (the library default), alternating."""
    simulate_regimen(regimen, pop, seed=seed, chunk_size=chunk)  # compile this chunk shape
    out: dict = {"n": len(pop), "chunk": chunk, "one": [], "default": []}
    for _ in range(rounds):
        for key in ("one", "default"):
            with (
                contextlib.nullcontext()
                if key == "one"
                else _patched(population_plan, "_one_blas_thread", contextlib.nullcontext)
            ):
                t = time.perf_counter()
                simulate_regimen(regimen, pop, seed=seed, chunk_size=chunk)
                out[key].append(time.perf_counter() - t)
    return out


@contextlib.contextmanager
def _patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


# --------------------------------------------------------------------------------------------------------
# main


def _run_pair(regimen, pop, seed: int, chunk: int, repeats: int) -> dict:
    first = timed_call(regimen, pop, seed, chunk)
    warm = [timed_call(regimen, pop, seed, chunk) for _ in range(max(1, repeats))]
    best = min(warm, key=lambda r: r["total_s"])
    same = bool(np.array_equal(first["result"].nrs, best["result"].nrs))
    return {"first": first, "warm": best, "reproducible": same}


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "result"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=10000, help="patients in the population run (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the population and of the simulation")
    ap.add_argument("--chunk-size", type=int, default=2048, help="patients per compiled batch (default 2048)")
    ap.add_argument("--repeats", type=int, default=1, help="warm calls of the population run (best reported)")
    ap.add_argument("--baseline-n", type=int, default=200, help="patients of the numpy vs JAX kernel comparison")
    ap.add_argument("--baseline-repeats", type=int, default=3, help="timed runs of each baseline method (best)")
    ap.add_argument("--check-n", type=int, default=16, help="patients of the numpy vs JAX state check")
    ap.add_argument("--sweep", action="store_true", help="also sweep chunk sizes 512/2048/4096 on --sweep-n")
    ap.add_argument("--sweep-n", type=int, default=2000, help="patients of the chunk-size sweep (default 2000)")
    ap.add_argument(
        "--blas-threads", type=int, default=0, help="OpenBLAS threads for the run (default 0: keep the library default)"
    )
    ap.add_argument(
        "--blas-check-n", type=int, default=4096, help="patients of the BLAS-threading check (whole calls; 0 skips it)"
    )
    ap.add_argument("--blas-check-chunk", type=int, default=1024, help="chunk size of the BLAS-threading check")
    ap.add_argument("--json", metavar="OUT.json", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    for name in ("n", "baseline_n", "check_n"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")

    info = machine_info()
    load0 = _load()
    print(
        f"population benchmark | {info['platform']} | cpu: {info['processor']}, os.cpu_count()={info['cpu_count']}"
        f" (affinity {info['cpu_affinity']}) | python {info['python']} | numpy {info['numpy']} | jax {info['jax']}"
        f" | devices: {info['devices']} | float64: {'on' if info['float64'] else 'off'}"
    )
    print(
        f"load average (1/5/15 min) at start: {load0}   (shared machine: load above the core count slows every timing)"
    )
    print(f"imports (python, numpy, jax, pkpd): {_T_IMPORTED - _T_START:.1f} s (not counted below)")
    libs = openblas_libs()
    blas_default = blas_threads()
    if args.blas_threads > 0:
        set_blas_threads(args.blas_threads)
    blas_now = blas_threads()
    blas_text = ", ".join(f"{name}: {d} -> {k}" for (name, _, _), d, k in zip(libs, blas_default, blas_now))
    print(
        f"OpenBLAS threads (library default -> this run): {blas_text or 'no OpenBLAS found'}"
        + ("" if args.blas_threads > 0 else "   (--blas-threads 0: library default kept)")
    )
    sys.stdout.flush()
    regimen = get_regimen(REGIMEN)

    # ---- 1. population run ------------------------------------------------------------------------------
    t = time.perf_counter()
    pop = spine72_population(args.n, args.seed)
    t_pop = time.perf_counter() - t
    print(
        f"\n[1] SPINE-72 population n={args.n} seed={args.seed}: sampled in {t_pop:.2f} s; regimen {REGIMEN}, "
        f"chunk_size={args.chunk_size}, warm calls: {args.repeats}",
        flush=True,
    )
    load1 = _load()
    pair = _run_pair(regimen, pop, args.seed, args.chunk_size, args.repeats)
    load2 = _load()
    first, warm = pair["first"], pair["warm"]
    res = first["result"]
    T = len(res.times)
    n_states = sum(size for _, size in res.state_index.values())
    size = min(args.chunk_size, args.n)
    n_chunks = -(-args.n // size)
    pad = n_chunks * size - args.n
    print(
        f"    grid: {T} points of {SimOptions().dt_h * 60:.0f} min from t = {res.times[0]:.3f} h to "
        f"{res.times[-1]:.1f} h; {n_states} states ({len(res.state_index)} drugs); {n_chunks} chunks of {size} "
        f"(last padded with {pad} copies)"
    )
    k, pr = first["kernel_chunks_s"], first["prep_chunks_s"]
    print(
        f"    first call (incl. JIT compile): {first['total_s']:8.1f} s  {args.n / first['total_s']:8.1f} "
        f"patients/s  | {_fmt_phases(first['phases'])}"
    )
    if len(k) > 1:
        print(
            f"        kernel: first chunk {k[0]:.1f} s (compile + run), later chunks {np.mean(k[1:]):.1f} s each "
            f"-> compile ~ {k[0] - np.mean(k[1:]):.1f} s (difference; noisy under load)"
        )
        print(
            f"        host prep: first chunk {pr[0]:.1f} s (incl. JIT compile of the random streams), later chunks "
            f"{np.mean(pr[1:]):.1f} s each"
        )
    print(
        f"    warm call (compiled, cached):   {warm['total_s']:8.1f} s  {args.n / warm['total_s']:8.1f} "
        f"patients/s  | {_fmt_phases(warm['phases'])}"
    )
    print(f"    warm call reproduces the first call's NRS exactly: {pair['reproducible']}")
    verdict = "PASS" if first["total_s"] < TARGET_S else "FAIL"
    print(
        f"    target: {args.n} patients x 72 h x {REGIMEN} in < {TARGET_S:.0f} s (first call, incl. compile): "
        f"{first['total_s']:.1f} s -> {verdict}   (with population sampling: {first['total_s'] + t_pop:.1f} s)"
    )
    print(f"    load average during the run: {load1} -> {load2}", flush=True)
    outcome = res.summary().loc[["MME_0_72", "TIT3", "N_PRN"], ["mean", "p50", "p90"]]

    # ---- 2. baseline ------------------------------------------------------------------------------------
    nb = min(args.baseline_n, args.n)
    base = baseline(regimen, pop.iloc[:nb].reset_index(drop=True), args.seed, args.baseline_repeats)
    print(
        f"\n[2] JAX full kernel (with feedback) vs numpy PK-only loop, same prepared arrays, {nb} patients x "
        f"{base['T']} steps x {base['n_states']} states (host prep {base['prep_s']:.2f} s excluded, "
        f"best of {base['repeats']}):"
    )
    print(
        f"    numpy PK-only loop (scheduled doses, no pain/PRN): {base['numpy_s']:7.3f} s  "
        f"{base['numpy_pps']:9.1f} patients/s"
    )
    print(
        f"    JAX full kernel (pain, PRN demand, lockouts, AEs): {base['jax_s']:7.3f} s  "
        f"{base['jax_pps']:9.1f} patients/s   (first call incl. compile {base['jax_first_s']:.1f} s)"
    )
    print(f"    ratio (numpy time / JAX time): {base['ratio']:.1f}x", flush=True)

    # ---- 3. numerical check -----------------------------------------------------------------------------
    nc = min(args.check_n, args.n)
    chk = numeric_check(regimen, pop.iloc[:nc].reset_index(drop=True), args.seed)
    print(f"\n[3] numpy loop vs JAX states (SimOptions(record_states=True)), {nc} patients:")
    print(
        f"    {REGIMEN} without PRN/PCA (simulate_regimen), states {tuple(chk['no_prn_shape'])}: max rel diff "
        f"{chk['no_prn_rel']:.2e} (max abs {chk['no_prn_abs']:.2e}, state units)"
    )
    print(
        f"    full {REGIMEN}, the kernel's {chk['replay_n_rescue']} granted rescue doses replayed: max rel diff "
        f"{chk['replay_rel']:.2e} (max abs {chk['replay_abs']:.2e}, state units)",
        flush=True,
    )

    # ---- 4. chunk sweep ---------------------------------------------------------------------------------
    sweep = []
    if args.sweep:
        ns = args.sweep_n
        spop = spine72_population(ns, args.seed)
        print(f"\n[4] chunk-size sweep, n={ns} (effective chunk = min(chunk, n)):")
        print(
            f"    {'chunk':>6} {'effective':>9} {'first [s]':>10} {'warm [s]':>9} {'warm patients/s':>16} "
            f"{'warm prep [s]':>14} {'warm kernel [s]':>16}"
        )
        for c in SWEEP_CHUNKS:
            p = _run_pair(regimen, spop, args.seed, c, 1)
            row = {
                "chunk": c,
                "effective": min(c, ns),
                "first_s": p["first"]["total_s"],
                "warm_s": p["warm"]["total_s"],
                "warm_phases": p["warm"]["phases"],
            }
            sweep.append(row)
            print(
                f"    {c:>6} {row['effective']:>9} {row['first_s']:>10.1f} {row['warm_s']:>9.1f} "
                f"{ns / row['warm_s']:>16.1f} {row['warm_phases']['prep']:>14.1f} "
                f"{row['warm_phases']['kernel']:>16.1f}",
                flush=True,
            )

    # ---- 5. BLAS threading -------------------------------------------------------------------------------
    bl = None
    if args.blas_check_n > 0:
        nbl = min(args.blas_check_n, args.n)
        bl = blas_check(regimen, pop.iloc[:nbl].reset_index(drop=True), args.seed, args.blas_check_chunk)
        print(
            f"\n[5] whole warm calls, {nbl} patients in chunks of {bl['chunk']}, host preparation with (alternating runs):"
        )
        print(f"    1 BLAS thread (the simulator's setting): {', '.join(f'{x:.2f}' for x in bl['one'])} s")
        print(
            f"    the library default {blas_now}:        {', '.join(f'{x:.2f}' for x in bl['default'])} s   "
            f"(load average now {_load()})",
            flush=True,
        )

    # ---- summary ----------------------------------------------------------------------------------------
    fp, wp = first["phases"], warm["phases"]
    lines = [
        f"Population benchmark (benchmarks/population.py), {time.strftime('%Y-%m-%d')}",
        (
            f"machine: {info['processor']}, {info['cpu_count']} CPUs, jax {info['jax']} {info['devices']}, float64; "
            f"OpenBLAS threads {blas_now} (library default {blas_default}); load average {load1} at the start of "
            f"the run -> {load2} at its end"
        ),
        (
            f"SPINE-72 population, n = {args.n}, regimen {REGIMEN}, 72 h on a 5-min grid ({T} steps, {n_states} "
            f"states), chunk_size {args.chunk_size}, seed {args.seed}:"
        ),
        (
            f"  first call (incl. JIT compile): {first['total_s']:.1f} s = {args.n / first['total_s']:.0f} "
            f"patients/s  [target < {TARGET_S:.0f} s: {verdict}]"
        ),
        (
            f"    host prep {fp['prep']:.1f} s, kernel {fp['kernel']:.1f} s, collect {fp['collect']:.1f} s, other "
            f"{fp['other'] + fp['build']:.1f} s"
        ),
        (
            f"  warm call: {warm['total_s']:.1f} s = {args.n / warm['total_s']:.0f} patients/s (host prep "
            f"{wp['prep']:.1f} s, kernel {wp['kernel']:.1f} s)"
        ),
        (
            f"  population sampling {t_pop:.2f} s; outcomes: MME 0-72 h mean {outcome.loc['MME_0_72', 'mean']:.1f} "
            f"mg, TIT3 mean {outcome.loc['TIT3', 'mean']:.2f}, PRN doses mean {outcome.loc['N_PRN', 'mean']:.1f}"
        ),
        (
            f"  JAX full kernel (with feedback) vs numpy PK-only loop, {nb} patients, prepared arrays: "
            f"{base['jax_pps']:.0f} vs {base['numpy_pps']:.0f} patients/s ({base['ratio']:.1f}x)"
        ),
        (
            f"  numpy vs JAX states ({nc} patients): {REGIMEN} without PRN max rel diff {chk['no_prn_rel']:.1e}; "
            f"full {REGIMEN} with granted doses replayed {chk['replay_rel']:.1e}"
        ),
    ]
    if sweep:
        lines.append(
            f"  chunk sweep (n = {args.sweep_n}): "
            + ", ".join(f"{r['chunk']}: first {r['first_s']:.1f} s / warm {r['warm_s']:.1f} s" for r in sweep)
        )
    if bl is not None:
        lines.append(
            f"  {bl['n']} patients in chunks of {bl['chunk']}, warm: {min(bl['one']):.2f} s with the host "
            f"preparation's 1 BLAS thread, {min(bl['default']):.2f}-{max(bl['default']):.2f} s with the "
            f"library default {blas_now} ({min(bl['default']) / min(bl['one']):.1f}x)"
        )
    print("\n---- summary " + "-" * 84)
    print("\n".join(lines))
    print("-" * 100)

    if args.json:
        payload = {
            "machine": info,
            "load_start": load0,
            "load_run": [load1, load2],
            "blas_threads": {"default": blas_default, "run": blas_now},
            "blas_check": bl,
            "settings": vars(args),
            "population_s": t_pop,
            "target_s": TARGET_S,
            "verdict": verdict,
            "first": _strip(first),
            "warm": _strip(warm),
            "baseline": base,
            "check": chk,
            "sweep": sweep,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
