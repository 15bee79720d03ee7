"""Benchmark W1: population simulation of a 2-compartment oral model, repeated dosing.

Workload (see :mod:`benchmarks.baselines`): KA 1/h, CL 5 L/h, V1 50 L, Q 10 L/h, V2 100 L; 10 mg into the
depot every 12 h x 14 doses; hourly output t = 0..168 (169 points); 30 % log-normal IIV on CL and V1.

For each population size N this times

(a) pkpd closed-form path   -- ``simulate_arrays`` with the exact ("analytic") solver and a precomputed schedule;
(b) pkpd ODE path           -- ``simulate_arrays`` with ``pkpd.ODE(rtol=1e-8, atol=1e-10)`` and a schedule
                               (N <= --ode-max-n), the same tolerances as the naive solve (which then makes
                               ~500x the error of ours); and (b') at rtol 1e-6, atol 1e-8, where our error is
                               still below the naive solve's: the "same accuracy" comparison;
(c) numpy superposition     -- :func:`benchmarks.baselines.numpy_superposition`;
(d) scipy solve_ivp         -- :func:`benchmarks.baselines.scipy_solve_ivp` (N <= --scipy-max-n);
(e) naive diffrax (Tsit5)   -- :func:`benchmarks.baselines.make_naive_diffrax` (N <= --ode-max-n).

Dataset preparation (DataFrame -> padded arrays, schedule) is host work: it is timed and reported but is not
part of the throughput numbers. The prepared arrays and the schedule are moved to the device once, before
timing. JAX methods report the first call (compilation + one run) separately from the steady-state run
time (best of --repeats after the first call, using ``jax.block_until_ready``).

(f) public call            -- ``pkpd.simulate(DataFrame, "2cmt_oral", params)`` end to end (DataFrame in, output
                               frame out), warm, and ``pkpd.Simulator(DataFrame, "2cmt_oral")`` re-simulating the same
                               design with a new parameter set (CL and V1 scaled), each against the numpy
                               superposition of the same parameters, timed in alternating rounds in this process
                               (N = --public-n; 0 skips it).

``--md PATH`` writes the figures as a Markdown page (``docs/benchmarks_simulate.md``): generated, not edited.

Usage::

    python benchmarks/simulate.py [--n 1 100 1000 10000] [--ode-max-n 1000] [--scipy-max-n 20] [--public-n 10000]
                                  [--json OUT.json] [--md docs/benchmarks_simulate.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import pandas as pd  # noqa: E402

import pkpd  # noqa: E402  (turns on float64 unless PKPD_PRECISION=float32)
from pkpd.engine import simulate_arrays  # noqa: E402
from pkpd.solvers import resolve_solver  # noqa: E402

try:  # run as a module / with the repo root on the path
    from benchmarks.baselines import W1, make_naive_diffrax, numpy_superposition, sample_w1_parameters, scipy_solve_ivp
except ImportError:  # pragma: no cover - run as a script from inside benchmarks/
    from baselines import W1, make_naive_diffrax, numpy_superposition, sample_w1_parameters, scipy_solve_ivp

MODEL = "2cmt_oral"
PARAMS = {"CL": "CLI", "V1": "V1I", "Q": 10, "V2": 100, "KA": 1}
ODE_RTOL, ODE_ATOL = 1e-8, 1e-10
ODE_MATCHED_RTOL, ODE_MATCHED_ATOL = 1e-6, 1e-8

METHODS = {
    "closed": "pkpd closed-form",
    "ode": "pkpd ODE (Tsit5)",
    "ode_matched": "pkpd ODE rtol 1e-6",
    "numpy": "numpy superposition",
    "scipy": "scipy solve_ivp",
    "naive": "naive diffrax Tsit5",
}


# --------------------------------------------------------------------------------------------------------
# data


def build_dataset(params: dict[str, np.ndarray]) -> pd.DataFrame:
    """NONMEM-format W1 dataset: per subject one dose row (ADDL 13, II 12) and 169 hourly observations."""
    n = params["CL"].shape[0]
    t_obs = np.asarray(W1["T_OBS"], dtype=float)
    n_obs = t_obs.shape[0]
    per = n_obs + 1
    ids = np.repeat(np.arange(1, n + 1), per)
    is_dose = np.tile(np.r_[True, np.zeros(n_obs, bool)], n)
    time_ = np.tile(np.r_[0.0, t_obs], n)
    return pd.DataFrame(
        {
            "ID": ids,
            "TIME": time_,
            "EVID": is_dose.astype(int),
            "AMT": np.where(is_dose, W1["DOSE"], 0.0),
            "CMT": np.where(is_dose, 1, 2),
            "II": np.where(is_dose, W1["II"], 0.0),
            "ADDL": np.where(is_dose, W1["N_DOSES"] - 1, 0),
            "CLI": np.repeat(params["CL"], per),
            "V1I": np.repeat(params["V1"], per),
        }
    )


# --------------------------------------------------------------------------------------------------------
# timing helpers


def _time_jax(fn, repeats: int):
    """(first call seconds, best steady-state seconds, result of the first call)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return first, best, out


def _time_host(fn, repeats: int, warmup: bool = True):
    """(best seconds, result). One untimed warm-up call when ``warmup``."""
    out = fn() if warmup else None
    best = np.inf
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def rel_err(c, ref) -> float:
    """max over subjects and times of |c - ref| / (subject's peak of ref)."""
    c, ref = np.asarray(c), np.asarray(ref)
    peak = np.max(np.abs(ref), axis=1, keepdims=True)
    return float(np.max(np.abs(c - ref) / peak))


# --------------------------------------------------------------------------------------------------------
# one population size


def run_one(n: int, args, naive_fn) -> dict:
    res: dict = {"n": n, "methods": {}}
    p = sample_w1_parameters(n, seed=args.seed)
    t_obs, dose_times, dose = W1["T_OBS"], W1["DOSE_TIMES"], W1["DOSE"]
    V1 = p["V1"][:, None]

    # ---- host preparation (not part of throughput) -------------------------------------------------------
    t = time.perf_counter()
    df = build_dataset(p)
    t_df = time.perf_counter() - t
    t = time.perf_counter()
    prep = pkpd.prepare(df, MODEL, PARAMS)
    t_prep = time.perf_counter() - t
    analytic = resolve_solver("analytic", prep.model)
    ode = pkpd.ODE(rtol=ODE_RTOL, atol=ODE_ATOL)
    run_ode = n <= args.ode_max_n
    t = time.perf_counter()
    sched_a = prep.schedule(analytic)
    t_sched_a = time.perf_counter() - t
    t_sched_o = 0.0
    sched_o = None
    if run_ode:
        t = time.perf_counter()
        sched_o = prep.schedule(ode)
        t_sched_o = time.perf_counter() - t
    t = time.perf_counter()
    dev = jax.block_until_ready(jax.device_put((prep.rec, prep.dose, prep.ss, prep.theta, sched_a, sched_o)))
    t_put = time.perf_counter() - t
    rec, dose_arr, ss, theta, sched_a, sched_o = dev
    res["prep"] = {
        "dataframe_s": t_df,
        "prepare_s": t_prep,
        "schedule_analytic_s": t_sched_a,
        "schedule_ode_s": t_sched_o,
        "device_put_s": t_put,
        "n_rows": len(df),
        "layout": {"n_rec": prep.layout.n_rec, "n_dose": prep.layout.n_dose},
    }
    model, lay = prep.model, prep.layout
    chunk = args.chunk_size if args.chunk_size > 0 else None

    def record(key, first, best, conc, ok=None, ref=None):
        m = {"first_call_s": first, "run_s": best, "subjects_per_s": n / best if best > 0 else float("inf")}
        if ok is not None:
            m["all_ok"] = bool(np.all(np.asarray(ok)))
        if ref is not None:
            m["err_vs"], m["rel_err"] = ref[0], rel_err(conc, ref[1])
        res["methods"][key] = m
        return m

    # ---- (a) closed form ----------------------------------------------------------------------------------
    def f_closed():
        return simulate_arrays(model, lay, analytic, rec, dose_arr, ss, theta, sched=sched_a, chunk_size=chunk)

    first, best, (amt, ok) = _time_jax(f_closed, args.repeats)
    c_closed = np.asarray(amt)[:, 1:, 1] / V1
    record("closed", first, best, c_closed, ok)

    # ---- (c) numpy superposition --------------------------------------------------------------------------
    best, c_np = _time_host(lambda: numpy_superposition(p, t_obs, dose_times, dose), args.repeats)
    record("numpy", None, best, c_np)
    res["methods"]["closed"]["err_vs"] = "numpy"
    res["methods"]["closed"]["rel_err"] = rel_err(c_closed, c_np)

    # ---- (b) ODE path -------------------------------------------------------------------------------------
    if run_ode:

        def f_ode():
            return simulate_arrays(model, lay, ode, rec, dose_arr, ss, theta, sched=sched_o, chunk_size=chunk)

        first, best, (amt, ok) = _time_jax(f_ode, args.repeats)
        record("ode", first, best, np.asarray(amt)[:, 1:, 1] / V1, ok, ref=("closed", c_closed))
        ode_m = pkpd.ODE(rtol=ODE_MATCHED_RTOL, atol=ODE_MATCHED_ATOL)

        def f_ode_m():
            return simulate_arrays(model, lay, ode_m, rec, dose_arr, ss, theta, sched=sched_o, chunk_size=chunk)

        first, best, (amt, ok) = _time_jax(f_ode_m, args.repeats)
        record("ode_matched", first, best, np.asarray(amt)[:, 1:, 1] / V1, ok, ref=("closed", c_closed))

    # ---- (d) scipy ----------------------------------------------------------------------------------------
    if n <= args.scipy_max_n:
        best, c_sp = _time_host(lambda: scipy_solve_ivp(p, t_obs, dose_times, dose), 1, warmup=False)
        record("scipy", None, best, c_sp, ref=("closed", c_closed))

    # ---- (e) naive diffrax --------------------------------------------------------------------------------
    if run_ode:
        pj = jax.device_put(tuple(p[k] for k in ("CL", "V1", "Q", "V2", "KA")))
        first, best, c_dx = _time_jax(lambda: naive_fn(*pj), args.repeats)
        record("naive", first, best, np.asarray(c_dx), ref=("closed", c_closed))
    return res


# --------------------------------------------------------------------------------------------------------
# (f) the public call and the Simulator, end to end


NEW_PARAMS = {"CL": "CLI*0.8", "V1": "V1I*1.25", "Q": 10, "V2": 100, "KA": 1}


def run_public(n: int, repeats: int, seed: int) -> dict:
    """Warm ``pkpd.simulate`` and ``Simulator`` re-simulation at N = ``n`` vs the numpy superposition, in
    alternating rounds (best of ``repeats`` each); errors: max over subjects of max|CP - numpy| / peak."""
    p = sample_w1_parameters(n, seed=seed)
    p2 = dict(p, CL=p["CL"] * 0.8, V1=p["V1"] * 1.25)
    df = build_dataset(p)
    t_obs, dose_times, dose = W1["T_OBS"], W1["DOSE_TIMES"], W1["DOSE"]
    t = time.perf_counter()
    out = pkpd.simulate(df, MODEL, PARAMS)
    first_public = time.perf_counter() - t
    t = time.perf_counter()
    sim = pkpd.Simulator(df, MODEL)
    t_construct = time.perf_counter() - t
    out2 = sim(NEW_PARAMS)  # first call on this design (compiled programs shared with the public call)
    # two frames of other content, called in turn: pkpd.simulate has not prepared either (it keeps the last one)
    unseen = [df.assign(CLI=df["CLI"] * f) for f in (1.0 + 1e-12, 1.0 - 1e-12)]
    best = {"public": np.inf, "unseen": np.inf, "simulator": np.inf, "numpy": np.inf, "numpy_new": np.inf}
    for rnd in range(max(1, repeats)):
        for key, fn in (
            ("unseen", lambda: pkpd.simulate(unseen[rnd % 2], MODEL, PARAMS)),
            ("public", lambda: pkpd.simulate(df, MODEL, PARAMS)),
            ("numpy", lambda: numpy_superposition(p, t_obs, dose_times, dose)),
            ("simulator", lambda: sim(NEW_PARAMS)),
            ("numpy_new", lambda: numpy_superposition(p2, t_obs, dose_times, dose)),
        ):
            if key == "public":  # warm: the frame it prepared last (the unseen one came in between)
                fn()
            t = time.perf_counter()
            r = fn()
            best[key] = min(best[key], time.perf_counter() - t)
            if key == "public":
                out = r
            elif key == "simulator":
                out2 = r
    c_np = numpy_superposition(p, t_obs, dose_times, dose)
    c_np2 = numpy_superposition(p2, t_obs, dose_times, dose)
    cp = out["CP"].to_numpy().reshape(n, -1)[:, 1:]  # row 0 of each subject is the dose record
    cp2 = out2["CP"].to_numpy().reshape(n, -1)[:, 1:]
    return {
        "n": n,
        "rows": len(df),
        "first_public_s": first_public,
        "construct_s": t_construct,
        "public_s": best["public"],
        "unseen_s": best["unseen"],
        "unseen_vs_numpy": best["numpy"] / best["unseen"],
        "simulator_s": best["simulator"],
        "numpy_s": best["numpy"],
        "numpy_new_s": best["numpy_new"],
        "public_vs_numpy": best["numpy"] / best["public"],
        "simulator_vs_numpy": best["numpy_new"] / best["simulator"],
        "public_err": rel_err(cp, c_np),
        "simulator_err": rel_err(cp2, c_np2),
        "repeats": repeats,
    }


def format_public(r: dict) -> str:
    return "\n".join(
        [
            f"public call, N={r['n']} ({r['rows']} rows), best of {r['repeats']} alternating rounds:",
            f"  pkpd.simulate(DataFrame) warm      {r['public_s'] * 1e3:9.1f} ms   numpy superposition "
            f"{r['numpy_s'] * 1e3:8.1f} ms   -> {r['public_vs_numpy']:.2f}x (target >= 10x)   max err/peak "
            f"{r['public_err']:.1e}",
            f"  pkpd.simulate(another DataFrame)   {r['unseen_s'] * 1e3:9.1f} ms   -> {r['unseen_vs_numpy']:.2f}x "
            "(preparation included)",
            f"  Simulator(data)(new params)        {r['simulator_s'] * 1e3:9.1f} ms   numpy superposition "
            f"{r['numpy_new_s'] * 1e3:8.1f} ms   -> {r['simulator_vs_numpy']:.2f}x (target >= 25x)   max err/peak "
            f"{r['simulator_err']:.1e}",
            f"  first public call (compilation included) {r['first_public_s']:.2f} s; Simulator construction "
            f"{r['construct_s'] * 1e3:.0f} ms",
        ]
    )


def write_markdown(path: str, info: dict, args, results: list[dict], acc: dict, public: dict | None) -> None:
    """The generated benchmarks page (``--md``)."""
    import datetime

    lines = [
        "# Benchmark W1: population simulation (generated)",
        "",
        f"<!-- Generated by `python benchmarks/simulate.py {' '.join(sys.argv[1:])}`; do not edit by hand. -->",
        "",
        f"{datetime.date.today().isoformat()}; {info['processor']} ({info['machine']}), os.cpu_count() = "
        f"{info['cpu_count']}, load average at the start {os.getloadavg()[0]:.1f}; jax {info['jax']} "
        f"({info['backend']}), float64 {'on' if info['float64'] else 'off'}. Every ratio compares two timings "
        "made in this one process (alternating rounds where stated), so a loaded machine changes the ratios "
        "less than the times.",
        "",
        f"Workload W1: 2-cmt oral, {W1['DOSE']:g} mg q{W1['II']:g}h x {W1['N_DOSES']} into the depot (one ADDL "
        f"record), {len(W1['T_OBS'])} hourly outputs, 30 % IIV on CL and V1 (`benchmarks/baselines.py`). "
        "Errors: max over subjects of max |difference| / the subject's peak concentration.",
        "",
    ]
    if public is not None:
        lines += [
            f"## End to end at N = {public['n']:,} ({public['rows']:,} dataset rows)",
            "",
            "DataFrame in, output frame out (validation, dose expansion, schedule, kernel, checks, output); best of "
            f"{public['repeats']} alternating rounds against the numpy closed-form superposition of the same "
            "parameters. `pkpd.simulate` keeps the last DataFrame it prepared (by a hash of its content), so its "
            "warm call on the same frame skips the preparation; the call on a frame it has not seen (two frames "
            "of other content, in turn) includes it.",
            "",
            "| call | time (ms) | numpy superposition (ms) | ratio | target | max error / peak |",
            "|---|---:|---:|---:|---:|---:|",
            f'| `pkpd.simulate(df2, "2cmt_oral", params)`, a DataFrame not seen before | {public["unseen_s"] * 1e3:.1f} '
            f"| {public['numpy_s'] * 1e3:.1f} | {public['unseen_vs_numpy']:.2f}x | >= 10x | - |",
            f'| `pkpd.simulate(df, "2cmt_oral", params)`, warm | {public["public_s"] * 1e3:.1f} | '
            f"{public['numpy_s'] * 1e3:.1f} | {public['public_vs_numpy']:.2f}x | >= 10x | {public['public_err']:.1e} |",
            f'| `sim(new_params)` with `sim = pkpd.Simulator(df, "2cmt_oral")` | {public["simulator_s"] * 1e3:.1f} | '
            f"{public['numpy_new_s'] * 1e3:.1f} | {public['simulator_vs_numpy']:.2f}x | >= 25x | "
            f"{public['simulator_err']:.1e} |",
            "",
            f"First public call in this process (compilation included): {public['first_public_s']:.2f} s. "
            f"`Simulator` construction (validation, padded design): {public['construct_s'] * 1e3:.0f} ms.",
            "",
        ]
    lines += [
        "## Kernel (`simulate_arrays` on prepared arrays) and baselines",
        "",
        "Host preparation is timed separately; the kernel runs on arrays already on the device (best of "
        f"{args.repeats} after the first call).",
        "",
        "| N | method | first call (s) | run (ms) | subjects/s | max error / peak | vs |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for key in ("closed", "ode", "ode_matched", "numpy", "scipy", "naive"):
            m = r["methods"].get(key)
            if m is None:
                continue
            err = f"{m['rel_err']:.1e}" if "rel_err" in m else "-"
            lines.append(
                f"| {r['n']} | {METHODS[key]} | {_fmt_s(m['first_call_s'])} | {m['run_s'] * 1e3:.2f} | "
                f"{m['subjects_per_s']:.3g} | {err} | {m.get('err_vs', '')} |"
            )
        pr = r["prep"]
        lines.append(
            f"| {r['n']} | host preparation | | {pr['prepare_s'] * 1e3:.0f} + schedule "
            f"{pr['schedule_analytic_s'] * 1e3:.0f} | | | |"
        )
    lines.append("")
    if "closed_vs_numpy" in acc:
        a = acc["closed_vs_numpy"]
        lines.append(f"- Kernel, closed form vs numpy superposition at N = {a['n']}: {a['speedup']:.1f}x.")
    if "ode_vs_naive_diffrax" in acc:
        a = acc["ode_vs_naive_diffrax"]
        lines.append(
            f"- Kernel, ODE path vs naive diffrax Tsit5 at the same tolerances, N = {a['n']}: {a['speedup']:.1f}x."
        )
    lines.append("")
    Path(path).write_text("\n".join(lines))
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------------------
# reporting


def machine_info() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "float64": bool(jax.config.jax_enable_x64),
    }


def _fmt_s(x, unit=1.0, prec=2):
    return "-" if x is None else f"{x * unit:.{prec}f}"


def format_table(results: list[dict]) -> str:
    cols = [
        ("N", 6),
        ("method", 22),
        ("first call [s]", 14),
        ("run [ms]", 11),
        ("subjects/s", 12),
        ("max|diff|/peak", 15),
        ("vs", 7),
    ]
    head = " ".join(f"{name:>{w}}" if i != 1 else f"{name:<{w}}" for i, (name, w) in enumerate(cols))
    lines = [head, "-" * len(head)]
    for r in results:
        n = r["n"]
        pr = r["prep"]
        host = pr["dataframe_s"] + pr["prepare_s"] + pr["schedule_analytic_s"] + pr["schedule_ode_s"]
        lines.append(
            f"{n:>6} {'(host prep, untimed)':<22} {host:>14.2f} {'':>11} {'':>12} {'':>15} {'':>7}"
            f"   df {pr['dataframe_s']:.2f}s  prepare {pr['prepare_s']:.2f}s  sched "
            f"{pr['schedule_analytic_s']:.2f}+{pr['schedule_ode_s']:.2f}s  put {pr['device_put_s']:.3f}s"
        )
        for key in ("closed", "ode", "ode_matched", "numpy", "scipy", "naive"):
            m = r["methods"].get(key)
            if m is None:
                continue
            err = f"{m['rel_err']:.2e}" if "rel_err" in m else "-"
            vs = m.get("err_vs", "")
            flag = "" if m.get("all_ok", True) else "  (solver flagged failure)"
            lines.append(
                f"{n:>6} {METHODS[key]:<22} {_fmt_s(m['first_call_s']):>14} "
                f"{_fmt_s(m['run_s'], 1e3, 3):>11} {m['subjects_per_s']:>12.4g} {err:>15} {vs:>7}{flag}"
            )
        lines.append("")
    return "\n".join(lines)


def acceptance(results: list[dict]) -> dict:
    out = {}
    last = max(results, key=lambda r: r["n"])
    m = last["methods"]
    if "closed" in m and "numpy" in m:
        out["closed_vs_numpy"] = {"n": last["n"], "speedup": m["numpy"]["run_s"] / m["closed"]["run_s"], "target": 10.0}
    both = [r for r in results if "ode" in r["methods"] and "naive" in r["methods"]]
    if both:
        r = max(both, key=lambda r: r["n"])
        mm = r["methods"]
        out["ode_vs_naive_diffrax"] = {"n": r["n"], "speedup": mm["naive"]["run_s"] / mm["ode"]["run_s"], "target": 2.0}
        if "ode_matched" in mm:
            out["ode_matched_vs_naive_diffrax"] = {
                "n": r["n"],
                "speedup": mm["naive"]["run_s"] / mm["ode_matched"]["run_s"],
                "target": 2.0,
                "error_ours": mm["ode_matched"]["rel_err"],
                "error_naive": mm["naive"]["rel_err"],
            }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, nargs="+", default=[1, 100, 1000, 10000], help="population sizes")
    ap.add_argument("--ode-max-n", type=int, default=1000, help="largest N for the ODE path and naive diffrax")
    ap.add_argument("--scipy-max-n", type=int, default=20, help="largest N for scipy solve_ivp")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs after the first call (best is reported)")
    ap.add_argument(
        "--chunk-size", type=int, default=16384, help="subjects per chunk in simulate_arrays (0: no chunking)"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed for sample_w1_parameters")
    ap.add_argument(
        "--public-n", type=int, default=10000, help="N of the end-to-end public call / Simulator comparison (0: skip)"
    )
    ap.add_argument("--json", metavar="OUT.json", help="also write the numbers to this JSON file")
    ap.add_argument("--md", metavar="PATH", help="write the figures as a Markdown page (docs/benchmarks_simulate.md)")
    args = ap.parse_args(argv)

    info = machine_info()
    print(
        f"W1 benchmark | cpu: {info['processor']} ({info['machine']}), os.cpu_count()={info['cpu_count']} | "
        f"jax {info['jax']} | devices: {info['devices']} | float64: {'on' if info['float64'] else 'off'}"
    )
    print(
        f"W1: 2cmt oral, 10 mg q12h x {W1['N_DOSES']} into depot, {len(W1['T_OBS'])} hourly outputs, "
        f"30% IIV on CL, V1 | ODE rtol={ODE_RTOL:g} atol={ODE_ATOL:g} | run = best of {args.repeats} "
        f"after first call | errors: max over subjects of max|diff| / subject's peak"
    )
    sys.stdout.flush()

    naive_fn = make_naive_diffrax(W1["T_OBS"], W1["DOSE_TIMES"], W1["DOSE"], rtol=ODE_RTOL, atol=ODE_ATOL)
    results = []
    for n in sorted(set(args.n)):
        results.append(run_one(n, args, naive_fn))
        print(f"  ... N={n} done", file=sys.stderr, flush=True)

    print()
    print(format_table(results))
    acc = acceptance(results)
    if "closed_vs_numpy" in acc:
        a = acc["closed_vs_numpy"]
        print(f"closed-form vs numpy superposition: {a['speedup']:.1f}x (target >= 10x)   [N={a['n']}]")
    if "ode_vs_naive_diffrax" in acc:
        a = acc["ode_vs_naive_diffrax"]
        print(f"ODE path vs naive diffrax Tsit5, same tolerances: {a['speedup']:.1f}x (target >= 2x)   [N={a['n']}]")
    if "ode_matched_vs_naive_diffrax" in acc:
        a = acc["ode_matched_vs_naive_diffrax"]
        print(
            f"ODE path vs naive diffrax Tsit5, same accuracy (ours rtol 1e-6: error {a['error_ours']:.1e} "
            f"vs naive {a['error_naive']:.1e} of peak): {a['speedup']:.1f}x (target >= 2x)   [N={a['n']}]"
        )
    public = None
    if args.public_n > 0:
        public = run_public(args.public_n, max(3, min(args.repeats, 5)), args.seed)
        print()
        print(format_public(public))
    if args.md:
        write_markdown(args.md, info, args, results, acc, public)
    if args.json:
        payload = {
            "workload": "W1",
            "machine": info,
            "public": public,
            "settings": {
                "ode_rtol": ODE_RTOL,
                "ode_atol": ODE_ATOL,
                "repeats": args.repeats,
                "chunk_size": args.chunk_size,
                "seed": args.seed,
                "ode_max_n": args.ode_max_n,
                "scipy_max_n": args.scipy_max_n,
            },
            "results": results,
            "acceptance": acc,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
