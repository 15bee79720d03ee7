"""Accelerator check (issue 23): one command, a few minutes, the figures a GPU machine should record.

Run on a machine with an accelerator whenever one is available (the project never depends on one)::

    PYTHONPATH=. python benchmarks/gpu_check.py --out-dir OUT        # OUT/gpu_check.md, OUT/*.json

and on a CPU with ``--quick`` (small sizes, the same code path; the default test suite runs it that way so that
the script cannot rot between GPU loans).

Each precision runs in its own Python process (``PKPD_PRECISION=float64`` / ``float32``: JAX fixes the
precision when it starts), one after the other, each stage writing its figures to ``OUT/<precision>.json`` as
soon as it finishes, so a run cut short still leaves what it measured. Stages:

1. **W1 at N subjects** (default 10^6; ``benchmarks/baselines.py``: 2-cmt oral, 10 mg q12h x 14, 169 hourly
   outputs, 30 % IIV on CL and V1) on the exact path of the event engine (``pkpd.engine.simulate_arrays``).
   One design is prepared on the host (``pkpd.prepare`` of ``--design`` subjects, repeated to a chunk of
   ``--chunk`` rows: every W1 subject has the same dosing records) and placed once on each visible device;
   the N subjects' parameters go in chunk by chunk, chunks dealt round-robin over the devices (JAX dispatches
   them asynchronously, so the devices run side by side). Reported: first call (compilation), the run of all
   N (best of ``--repeats``, amounts left on the device), subjects/s, and the error of the first
   ``--check-n`` subjects against the numpy closed-form superposition in float64 on the CPU (max over subjects
   of max |CP - reference| / the subject's peak).
2. **The regimen simulator**: ``simulate_regimen(C1, spine72_population(--reg-n))``, sharded over the visible
   devices by :mod:`pkpd.batch`; first call and warm call, patients/s, and the mean outcomes (72-h MME,
   time in target), compared between the two precisions.
3. **One optimizer batch** (float32 only unless ``--optimize-float64``; float32 is the accelerators' default
   precision): ``optimize_population`` of ``--opt-n`` SPINE-72 patients with ``--opt-draws`` draws each, first
   call (compilation included) and its stage times, and the proposals' mean 72-h MME.

The parent prints a markdown page (also ``OUT/gpu_check.md``): the device, the date, the precision, and one
table per stage; float32 against float64 for W1 (max |difference| / peak) and for the regimen outcomes.
``--budget-s`` (default 280) bounds the whole run: a worker still running at the budget is stopped and the
page says which stages did not finish.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float64", "float32")


# --------------------------------------------------------------------------------------------------------
# worker (one precision, one process)


def _save(out: Path, rec: dict) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=float))
    tmp.replace(out)


def _w1(args, rec: dict) -> np.ndarray:
    """Stage 1; returns the CP of the first ``check_n`` subjects (host array)."""
    import jax

    import pkpd
    from pkpd.engine import simulate_arrays
    from pkpd.solvers import resolve_solver

    sys.path.insert(0, str(ROOT))
    from benchmarks.baselines import W1, numpy_superposition, sample_w1_parameters
    from benchmarks.simulate import MODEL, PARAMS, build_dataset

    n, chunk = args.n, min(args.chunk, args.n)
    n_chunks = -(-n // chunk)
    devices = jax.local_devices()
    t = time.perf_counter()
    prep = pkpd.prepare(build_dataset(sample_w1_parameters(args.design, seed=0)), MODEL, PARAMS)
    solver = resolve_solver("analytic", prep.model)
    sched = prep.schedule(solver)
    reps = -(-chunk // args.design)

    def tile(v):
        v = np.asarray(v)
        return np.concatenate([v] * reps)[:chunk]

    design = jax.tree_util.tree_map(tile, (prep.rec, prep.dose, prep.ss, sched))
    fixed = {k: tile(np.asarray(v)[:, :1]) for k, v in prep.theta.items() if k != "p"}  # (chunk, 1, n_cmt)
    on_dev = [jax.device_put((design, fixed), d) for d in devices]
    prep_s = time.perf_counter() - t

    p = sample_w1_parameters(n, seed=args.seed)
    names = [q.name for q in prep.model.params]
    const = {"Q": 10.0, "V2": 100.0, "KA": 1.0}

    def theta_of(c: int) -> dict:
        lo, hi = c * chunk, min((c + 1) * chunk, n)
        rows = {}
        for k in names:
            v = p[k][lo:hi] if k in ("CL", "V1") else np.full(hi - lo, const[k])
            if hi - lo < chunk:  # the last chunk: padded with its first subject
                v = np.concatenate([v, np.repeat(v[:1], chunk - (hi - lo))])
            rows[k] = v[:, None]
        return rows

    thetas = [theta_of(c) for c in range(n_chunks)]  # host arrays, made before the clock starts

    def run_chunk(c: int):
        (rc, ds, ss, sc), fx = on_dev[c % len(devices)]
        th = dict(fx, p=jax.device_put(thetas[c], devices[c % len(devices)]))
        amt, ok = simulate_arrays(prep.model, prep.layout, solver, rc, ds, ss, th, sched=sc, chunk_size=None)
        return amt, ok

    t = time.perf_counter()
    amt0, ok0 = jax.block_until_ready(run_chunk(0))
    first_s = time.perf_counter() - t
    check_n = min(args.check_n, n, chunk)
    cp = np.asarray(amt0[:check_n, 1:, 1]) / p["V1"][:check_n, None]
    best = float("inf")
    all_ok = bool(np.all(np.asarray(ok0)))
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        outs = [run_chunk(c) for c in range(n_chunks)]
        jax.block_until_ready(outs)
        best = min(best, time.perf_counter() - t)
        all_ok = all_ok and all(bool(np.all(np.asarray(o[1]))) for o in outs)
        del outs
    ref = numpy_superposition({k: v[:check_n] for k, v in p.items()}, W1["T_OBS"], W1["DOSE_TIMES"], W1["DOSE"])
    err = float(np.max(np.abs(cp - ref) / np.max(np.abs(ref), axis=1, keepdims=True)))
    rec["w1"] = {
        "n": n,
        "chunk": chunk,
        "chunks": n_chunks,
        "devices": len(devices),
        "host_prep_s": prep_s,
        "first_s": first_s,
        "run_s": best,
        "subjects_per_s": n / best,
        "outputs_per_s": n * cp.shape[1] / best,
        "check_n": check_n,
        "rel_err_vs_numpy_f64": err,
        "all_ok": all_ok,
    }
    return cp


def _regimen(args, rec: dict) -> None:
    from pkpd.patients import spine72_population
    from pkpd.population import simulate_regimen
    from regimens import get_regimen

    reg, pop = get_regimen("C1"), spine72_population(args.reg_n, seed=1)
    t = time.perf_counter()
    simulate_regimen(reg, pop, seed=1)
    first = time.perf_counter() - t
    t = time.perf_counter()
    res = simulate_regimen(reg, pop, seed=1)
    warm = time.perf_counter() - t
    d = res.patients
    rec["regimen"] = {
        "regimen": "C1",
        "patients": args.reg_n,
        "first_s": first,
        "warm_s": warm,
        "patients_per_s": args.reg_n / warm,
        "mean": {k: float(d[k].mean()) for k in ("MME_0_72", "TIT3", "PAIN_AUC") if k in d},
    }


def _optimize(args, rec: dict) -> None:
    from pkpd.patients import spine72_population
    from regimens.optimize import OptimizeSettings, optimize_population

    pop = spine72_population(args.opt_n, seed=1)
    t = time.perf_counter()
    res = optimize_population(pop, OptimizeSettings(draws=args.opt_draws))
    first = time.perf_counter() - t
    d = res.patients
    rec["optimize"] = {
        "patients": args.opt_n,
        "draws": args.opt_draws,
        "first_s": first,
        "times": {k: float(v) for k, v in res.times.items()},
        "fallbacks": int(d["FALLBACK"].sum()),
        "safe": int(d["SAFE"].sum()),
        "mean_mme_0_72": float(d["MME_0_72_proposal"].mean()),
        "mean_mme_0_72_c1": float(d["MME_0_72_C1"].mean()),
    }


def worker(args) -> None:
    import jax

    import pkpd

    out = args.out_dir / f"{args.precision}.json"
    rec: dict = {
        "precision": pkpd.configure().precision,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()],
        "device_kind": jax.local_devices()[0].device_kind,
    }
    _save(out, rec)
    if "w1" in args.stages:
        cp = _w1(args, rec)
        np.save(args.out_dir / f"w1_cp_{args.precision}.npy", cp)
        _save(out, rec)
    if "regimen" in args.stages:
        _regimen(args, rec)
        _save(out, rec)
    if "optimize" in args.stages and (args.precision == "float32" or args.optimize_float64):
        _optimize(args, rec)
        _save(out, rec)


# --------------------------------------------------------------------------------------------------------
# parent: one process per precision, then the page


def _page(args, results: dict, notes: list[str]) -> str:
    any_rec = next((r for r in results.values() if r), {})
    lines = [
        "# Accelerator check (generated)",
        "",
        f"<!-- Generated by `python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`; do not edit by hand. -->",
        "",
        f"{datetime.date.today()}; {platform.platform()}; backend {any_rec.get('backend', '?')}, "
        f"devices {any_rec.get('devices', '?')} ({any_rec.get('device_kind', '?')}); host os.cpu_count() = "
        f"{os.cpu_count()}.",
        "",
        "## W1 on the exact path (`pkpd.engine.simulate_arrays`)",
        "",
        "| precision | N | chunk x chunks | devices | first call (s) | run (s) | subjects/s | outputs/s | "
        "max error / peak vs numpy float64 (CPU) | all solves ok |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for prec, r in results.items():
        w = (r or {}).get("w1")
        if w:
            lines.append(
                f"| {prec} | {w['n']:,} | {w['chunk']:,} x {w['chunks']} | {w['devices']} | {w['first_s']:.2f} | "
                f"{w['run_s']:.3f} | {w['subjects_per_s']:.3g} | {w['outputs_per_s']:.3g} | "
                f"{w['rel_err_vs_numpy_f64']:.1e} (first {w['check_n']:,}) | {'yes' if w['all_ok'] else 'NO'} |"
            )
        else:
            lines.append(f"| {prec} | not run or not finished | | | | | | | | |")
    cps = {p: args.out_dir / f"w1_cp_{p}.npy" for p in PRECISIONS}
    if all(f.exists() for f in cps.values()):
        a, b = np.load(cps["float64"]), np.load(cps["float32"])
        diff = float(np.max(np.abs(b - a) / np.max(np.abs(a), axis=1, keepdims=True)))
        lines += ["", f"float32 against float64 on the device, W1: max |difference| / peak {diff:.1e}."]
    lines += [
        "",
        "## Regimen simulator (C1, SPINE-72 population, sharded by `pkpd.batch`)",
        "",
        "| precision | patients | first call (s) | warm call (s) | patients/s | mean MME 0-72 h (mg) | "
        "mean time in target | mean pain AUC (NRS h) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for prec, r in results.items():
        g = (r or {}).get("regimen")
        if g:
            m = g["mean"]
            lines.append(
                f"| {prec} | {g['patients']:,} | {g['first_s']:.1f} | {g['warm_s']:.2f} | {g['patients_per_s']:.3g} "
                f"| {m.get('MME_0_72', float('nan')):.3f} | {m.get('TIT3', float('nan')):.4f} | "
                f"{m.get('PAIN_AUC', float('nan')):.2f} |"
            )
        else:
            lines.append(f"| {prec} | not run or not finished | | | | | | |")
    regs = [(r or {}).get("regimen") for r in results.values()]
    if len(regs) == 2 and all(regs):
        rel = {k: abs(regs[1]["mean"][k] - regs[0]["mean"][k]) / abs(regs[0]["mean"][k]) for k in regs[0]["mean"]}
        lines += [
            "",
            "float32 against float64, relative difference of the means: "
            + ", ".join(f"{k} {v:.1e}" for k, v in rel.items())
            + ".",
        ]
    lines += ["", "## One optimizer batch (`optimize_population`, first call)", ""]
    rows = [(p, (r or {}).get("optimize")) for p, r in results.items()]
    rows = [(p, o) for p, o in rows if o]
    if rows:
        lines += [
            "| precision | patients x draws | first call (s) | stage times (s) | safe | fallbacks | "
            "mean MME 0-72 h, proposals / C1 (mg) |",
            "|---|---|---:|---|---:|---:|---:|",
        ]
        for prec, o in rows:
            st = ", ".join(f"{k} {v:.1f}" for k, v in o["times"].items())
            lines.append(
                f"| {prec} | {o['patients']} x {o['draws']} | {o['first_s']:.1f} | {st} | {o['safe']} | {o['fallbacks']} | "
                f"{o['mean_mme_0_72']:.2f} / {o['mean_mme_0_72_c1']:.2f} |"
            )
    else:
        lines.append("Not run or not finished.")
    if notes:
        lines += ["", "## Notes", ""] + [f"* {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=Path("gpu_check_out"), help="where the figures are written")
    ap.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    ap.add_argument("--n", type=int, default=1_000_000, help="W1 subjects")
    ap.add_argument("--chunk", type=int, default=131_072, help="W1 subjects per device call")
    ap.add_argument("--design", type=int, default=256, help="subjects prepared on the host (repeated to a chunk)")
    ap.add_argument("--check-n", type=int, default=2000, help="W1 subjects checked against numpy")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reg-n", type=int, default=20_000, help="patients of the regimen simulation")
    ap.add_argument("--opt-n", type=int, default=256, help="patients of the optimizer batch")
    ap.add_argument("--opt-draws", type=int, default=64, help="draws per patient of the optimizer batch")
    ap.add_argument("--optimize-float64", action="store_true", help="also run the optimizer in float64")
    ap.add_argument("--stages", nargs="+", default=["w1", "regimen", "optimize"], choices=["w1", "regimen", "optimize"])
    ap.add_argument("--budget-s", type=float, default=280.0, help="wall-clock bound of the whole run (s)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.n, args.chunk, args.design, args.check_n = 5000, 2048, 64, 500
        args.reg_n, args.opt_n, args.opt_draws = 32, 2, 8
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args)
        return 0
    t0 = time.perf_counter()
    results: dict = {}
    notes: list[str] = []
    passthrough = [*(argv if argv is not None else sys.argv[1:]), "--out-dir", str(args.out_dir.resolve())]
    for prec in PRECISIONS:
        left = args.budget_s - (time.perf_counter() - t0)
        out = args.out_dir / f"{prec}.json"
        out.unlink(missing_ok=True)
        (args.out_dir / f"w1_cp_{prec}.npy").unlink(missing_ok=True)
        if left < 20:
            notes.append(f"{prec}: not started, {left:.0f} s of the budget left")
            continue
        env = dict(os.environ, PKPD_PRECISION=prec, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, __file__, *passthrough, "--worker", "--precision", prec]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=left, capture_output=True, text=True)
            if proc.returncode:
                notes.append(f"{prec}: worker exited {proc.returncode}: " + proc.stderr.strip().splitlines()[-1])
                sys.stderr.write(proc.stderr)
        except subprocess.TimeoutExpired:
            notes.append(f"{prec}: stopped at the budget ({args.budget_s:.0f} s); finished stages are reported")
        results[prec] = json.loads(out.read_text()) if out.exists() else None
        print(f"{prec}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    page = _page(args, results, notes)
    (args.out_dir / "gpu_check.md").write_text(page)
    print(page)
    return 1 if any("exited" in n for n in notes) else 0


if __name__ == "__main__":
    sys.exit(main())
