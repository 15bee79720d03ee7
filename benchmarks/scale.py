"""Scale-out benchmark: population-simulation throughput against device count and chunk size (issue 6).

For each device count in ``--devices`` (default 1 2 4 8) a fresh Python process is started with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (the device count is fixed when JAX starts; on a CPU
machine these are *virtual* devices sharing the host's cores). In it, for each chunk size in ``--chunks``:

* the SPINE-72 population of ``--n`` patients and the regimen (``--regimen``, default C1) are prepared once
  (``RegimenPlan.arrays`` of one chunk: host preparation is the same work whatever the device count and is
  reported apart);
* the compiled kernel (:mod:`pkpd.population`, rows sharded over the D devices by
  :class:`pkpd.batch.RowProgram`) is called once to compile, then timed ``--repeats`` times on the same
  prepared chunk (best of); patients/s = chunk rows / seconds;
* memory per chunk: XLA's own accounting of the compiled program (``compiled.memory_analysis()``:
  arguments + outputs + temporaries, per device and over all devices), and the estimate
  :func:`pkpd.population.simulate._row_bytes` x rows that the automatic chunk sizing uses;
* an end-to-end warm ``simulate_regimen`` of all ``--n`` patients with that chunk size (host preparation,
  kernel, outcome table), patients/s.

With ``--optimize P`` (default 16; 0 skips it) each process also runs the regimen optimizer
(:func:`regimens.optimize.optimize_population`, ``--opt-draws`` draws per patient) on P SPINE-72 patients
twice (the first call compiles) and reports the warm seconds of its relaxed stages (cross-entropy scores,
projected-Adam steps, rounding scores: sharded over the devices by patient) and of the whole call, and a
digest of the proposals, which must be the same for every device count.

The parent prints one table (device count, chunk, kernel patients/s, end-to-end patients/s, memory) and the
ratios against 1 device at the same chunk size, then the acceptance check of issue 6: the 8-device kernel
must not be more than 20 % slower than the 1-device kernel (PASS/FAIL) on this machine. The machine, the
date and the load average are printed at the top (the machine is shared: timings move with its load).

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py [--n 4096] [--devices 1 2 4 8] [--chunks 512 2048]
        [--regimen C1] [--repeats 3] [--optimize 16] [--opt-draws 32] [--json OUT.json]
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

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> dict:
    import jax
    import numpy as np

    from pkpd import batch
    from pkpd.patients import spine72_population
    from pkpd.population import RegimenPlan, SimOptions, simulate_regimen
    from pkpd.population.simulate import _row_bytes
    from regimens import get_regimen

    reg = get_regimen(args.regimen)
    pop = spine72_population(args.n, args.seed)
    out = {"devices": jax.local_device_count(), "platform": jax.default_backend(), "rows": []}
    for chunk in args.chunks:
        rows = min(chunk, args.n)
        sub = pop.iloc[:rows]
        plan = RegimenPlan.build(reg, sub, SimOptions())
        t = time.perf_counter()
        arrays, *_ = plan.arrays(sub, args.seed)
        prep_s = time.perf_counter() - t
        arrays = jax.tree_util.tree_map(np.asarray, arrays)
        fn = plan._compiled()
        t = time.perf_counter()
        jax.block_until_ready(fn(arrays))
        first_s = time.perf_counter() - t
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(arrays))
            best = min(best, time.perf_counter() - t)
        # XLA's memory accounting of the program that ran (per device: one SPMD partition)
        devs = batch.local_devices()
        if len(devs) == 1:
            compiled = fn.rows.single.lower(args.seed, arrays).compile()
        else:
            from jax.sharding import NamedSharding
            from jax.sharding import PartitionSpec as P

            per = max(-(-rows // len(devs)), batch.MIN_ROWS)
            padded = jax.tree_util.tree_map(
                lambda v: np.concatenate([v, np.repeat(v[-1:], per * len(devs) - rows, axis=0)]), arrays
            )
            placed = jax.device_put(padded, NamedSharding(batch.mesh(devs), P(batch.ROW_AXIS)))
            compiled = fn.rows.program((args.seed,), devs).lower(placed).compile()
        ma = compiled.memory_analysis()
        per_dev = None
        if ma is not None:
            per_dev = int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes)
        # end to end, warm (same chunk size, all patients)
        simulate = simulate_regimen
        simulate(reg, pop, seed=args.seed, chunk_size=chunk)
        t = time.perf_counter()
        simulate(reg, pop, seed=args.seed, chunk_size=chunk)
        e2e = time.perf_counter() - t
        out["rows"].append(
            {
                "chunk": rows,
                "prep_s": prep_s,
                "first_s": first_s,
                "kernel_s": best,
                "kernel_pps": rows / best,
                "e2e_s": e2e,
                "e2e_pps": args.n / e2e,
                "mem_per_device_bytes": per_dev,
                "mem_chunk_bytes": None if per_dev is None else per_dev * len(devs),
                "estimate_bytes": _row_bytes(plan) * rows,
            }
        )
    if args.optimize:
        import hashlib

        from regimens.optimize import OptimizeSettings, optimize_population

        st = OptimizeSettings(draws=args.opt_draws)
        opop = spine72_population(args.optimize, args.seed)
        t = time.perf_counter()
        optimize_population(opop, st)
        first = time.perf_counter() - t
        t = time.perf_counter()
        res = optimize_population(opop, st)
        total = time.perf_counter() - t
        relaxed = sum(res.times[k] for k in ("cem_s", "continuous_s", "rounding_s"))
        digest = hashlib.sha256(
            np.concatenate([np.asarray(a, float) for a in res.amounts]).tobytes()
            + "|".join(res.patients["POLICY"]).encode()
        ).hexdigest()[:12]
        out["optimize"] = {
            "patients": args.optimize,
            "draws": args.opt_draws,
            "first_s": first,
            "total_s": total,
            "relaxed_s": relaxed,
            "times": res.times,
            "digest": digest,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="patients (end-to-end run)")
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--chunks", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--regimen", default="C1")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--optimize", type=int, default=16, help="patients of the optimizer run (0: none)")
    ap.add_argument("--opt-draws", type=int, default=32, help="draws per patient of the optimizer run")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.out.write_text(json.dumps(worker(args)))
        return
    print(
        f"pkpd scale-out benchmark, {datetime.date.today()}, {platform.platform()}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"regimen {args.regimen}, {args.n} SPINE-72 patients, chunks {args.chunks}, devices {args.devices} "
        "(virtual CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=D, one process each)"
    )
    results = {}
    for d in args.devices:
        env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=f"--xla_force_host_platform_device_count={d}")
        tmp = Path(f"/tmp/pkpd_scale_{os.getpid()}_{d}.json")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--out",
            str(tmp),
            "--n",
            str(args.n),
            "--regimen",
            args.regimen,
            "--seed",
            str(args.seed),
            "--repeats",
            str(args.repeats),
            "--chunks",
            *map(str, args.chunks),
            "--optimize",
            str(args.optimize),
            "--opt-draws",
            str(args.opt_draws),
        ]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)
        results[d] = json.loads(tmp.read_text())
        tmp.unlink()
        print(f"  {d} device(s): done in {time.perf_counter() - t:.0f} s (load {os.getloadavg()[0]:.2f})", flush=True)

    def mib(b):
        return "?" if b is None else f"{b / 2**20:.0f}"

    print()
    print(
        "| devices | chunk (rows) | kernel patients/s | vs 1 device | end-to-end patients/s | vs 1 device | "
        "memory per chunk, MiB (per device) | estimate, MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in args.devices:
        for j, r in enumerate(results[d]["rows"]):
            base = results[args.devices[0]]["rows"][j]
            print(
                f"| {d} | {r['chunk']} | {r['kernel_pps']:,.0f} | {r['kernel_pps'] / base['kernel_pps']:.2f} | "
                f"{r['e2e_pps']:,.0f} | {r['e2e_pps'] / base['e2e_pps']:.2f} | {mib(r['mem_chunk_bytes'])} "
                f"({mib(r['mem_per_device_bytes'])}) | {mib(r['estimate_bytes'])} |"
            )
    if args.optimize:
        print(f"\noptimizer, {args.optimize} patients x {args.opt_draws} draws, warm (second call):")
        print("| devices | relaxed stages, s | vs 1 device | whole call, s | vs 1 device | proposals digest |")
        print("|---:|---:|---:|---:|---:|---|")
        o1 = results[args.devices[0]]["optimize"]
        for d in args.devices:
            o = results[d]["optimize"]
            print(
                f"| {d} | {o['relaxed_s']:.2f} | {o1['relaxed_s'] / o['relaxed_s']:.2f} | {o['total_s']:.2f} | "
                f"{o1['total_s'] / o['total_s']:.2f} | {o['digest']} |"
            )
        same = len({results[d]["optimize"]["digest"] for d in args.devices}) == 1
        print("proposals identical for every device count: " + ("yes" if same else "NO"))
    if 1 in results and 8 in results:
        worst = min(r8["kernel_pps"] / r1["kernel_pps"] for r1, r8 in zip(results[1]["rows"], results[8]["rows"]))
        verdict = "PASS" if worst >= 1 / 1.2 else "FAIL"
        print(
            f"\nacceptance (issue 6): 8 virtual devices at least 1/1.2 of 1-device kernel throughput: worst ratio "
            f"{worst:.2f} -> {verdict}"
        )
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
