"""Hand-written models against the built-in ones (issue 22): run time and compilation, side by side.

The same workload is simulated with a built-in structure and with the same structure written in the model
language (``examples/models/user/``), through the call users make (``pkpd.Simulator``; the dataset is
prepared once, each timed call evaluates the parameters, runs the compiled kernel, checks the amounts and
builds the output frame). Pairs:

* **exact path**: W1 (``benchmarks/baselines.py``: 2-cmt oral, 10 mg q12h x 14, 169 hourly outputs, 30 % IIV
  on CL and V1) with ``2cmt_oral`` and ``oral2.toml``, at each ``--n``;
* **ODE path**: ``1cmt_iv_mm`` and ``mm_iv.toml`` (Michaelis-Menten elimination, Tsit5 at rtol 1e-8), 100 mg
  IV q12h x 6 with hourly outputs to 72 h, 30 % IIV on VMAX, at ``--ode-n`` subjects.

Warm: best of ``--repeats`` alternating rounds (built-in, hand-written, built-in, ...) in one process.
Compilation: each model's first call in a fresh process with the persistent compilation cache off
(``PKPD_JAX_CACHE=off``), so that the two models compile from nothing. Also reported: the largest relative
difference between the two models' concentrations (the hand-written model must reproduce the built-in one:
rtol 1e-10 exact, 1e-6 ODE in ``tests/test_user_models.py``). Issue 22's acceptance: the hand-written model
within 1.5x of the built-in one, compiled and warm.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/user_models.py [--n 1000 10000] [--ode-n 1000] [--repeats 3]
        [--json OUT.json]
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
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

USER = ROOT / "examples" / "models" / "user"
ACCEPT = 1.5


def _w1(n: int) -> tuple[pd.DataFrame, dict]:
    from benchmarks.baselines import sample_w1_parameters
    from benchmarks.simulate import PARAMS, build_dataset

    return build_dataset(sample_w1_parameters(n, seed=1)), PARAMS


def _mm(n: int) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(1)
    vmax = 20.0 * np.exp(rng.normal(0.0, np.sqrt(np.log1p(0.3**2)), n))
    t_obs = np.arange(1.0, 73.0)
    per = 1 + len(t_obs)
    is_dose = np.tile(np.r_[True, np.zeros(len(t_obs), bool)], n)
    df = pd.DataFrame(
        {
            "ID": np.repeat(np.arange(1, n + 1), per),
            "TIME": np.tile(np.r_[0.0, t_obs], n),
            "EVID": is_dose.astype(int),
            "AMT": np.where(is_dose, 100.0, 0.0),
            "CMT": 1,
            "II": np.where(is_dose, 12.0, 0.0),
            "ADDL": np.where(is_dose, 5, 0),
            "VMAXI": np.repeat(vmax, per),
        }
    )
    return df, {"V": 30.0, "VMAX": "VMAXI", "KM": 2.0}


PAIRS = {
    "exact": ("2cmt_oral", "oral2.toml", _w1, "analytic"),
    "ode": ("1cmt_iv_mm", "mm_iv.toml", _mm, "ode"),
}


def _model(name: str):
    import pkpd

    return pkpd.get_model(str(USER / name)) if name.endswith(".toml") else name


def _solver(kind: str):
    import pkpd

    return "analytic" if kind == "analytic" else pkpd.ODE(rtol=1e-8, atol=1e-10)


def first_call(pair: str, which: int, n: int) -> dict:
    """(in a fresh process) seconds of the first Simulator call of one model, compilation included."""
    builtin, user, data, kind = PAIRS[pair]
    import pkpd

    df, params = data(n)
    t = time.perf_counter()
    sim = pkpd.Simulator(df, _model((builtin, user)[which]))
    out = sim(params, solver=_solver(kind))
    first = time.perf_counter() - t
    return {"first_s": first, "rows": len(out)}


def warm(pair: str, n: int, repeats: int) -> dict:
    builtin, user, data, kind = PAIRS[pair]
    import pkpd

    df, params = data(n)
    sims = [pkpd.Simulator(df, _model(m)) for m in (builtin, user)]
    outs = [s(params, solver=_solver(kind)) for s in sims]  # compile
    best = [np.inf, np.inf]
    for _ in range(max(1, repeats)):
        for j, s in enumerate(sims):
            t = time.perf_counter()
            outs[j] = s(params, solver=_solver(kind))
            best[j] = min(best[j], time.perf_counter() - t)
    a, b = (o["CP"].to_numpy() for o in outs)
    scale = np.maximum(np.abs(a), 1e-12 * np.abs(a).max())
    return {"builtin_s": best[0], "user_s": best[1], "rel_diff": float(np.max(np.abs(a - b) / scale))}


def _sub(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PKPD_JAX_CACHE="off")
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="W1 subjects (exact path)")
    ap.add_argument("--ode-n", type=int, default=1000, help="subjects of the Michaelis-Menten pair (ODE path)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--first", nargs=3, metavar=("PAIR", "WHICH", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--warm", nargs=2, metavar=("PAIR", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.first:
        print(json.dumps(first_call(args.first[0], int(args.first[1]), int(args.first[2]))))
        return 0
    if args.warm:
        print(json.dumps(warm(args.warm[0], int(args.warm[1]), args.repeats)))
        return 0
    print(
        f"pkpd hand-written vs built-in models, {datetime.date.today()}, {platform.platform()}, "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}\n"
    )
    runs = [("exact", n) for n in args.n] + ([("ode", args.ode_n)] if args.ode_n else [])
    rows = []
    for pair, n in runs:
        w = _sub(["--warm", pair, str(n), "--repeats", str(args.repeats)])
        f = [_sub(["--first", pair, str(j), str(n)])["first_s"] for j in (0, 1)]
        rows.append({"pair": pair, "n": n, **w, "builtin_first_s": f[0], "user_first_s": f[1]})
    print(
        "| path | built-in | hand-written | N | first call, built-in / hand-written (s) | ratio | "
        "warm call, built-in / hand-written (ms) | ratio | max rel. difference of CP |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for r in rows:
        b, u = PAIRS[r["pair"]][:2]
        rf, rw = r["user_first_s"] / r["builtin_first_s"], r["user_s"] / r["builtin_s"]
        worst = max(worst, rf, rw)
        print(
            f"| {r['pair']} | `{b}` | `{u}` | {r['n']:,} | {r['builtin_first_s']:.2f} / {r['user_first_s']:.2f} | "
            f"{rf:.2f} | {r['builtin_s'] * 1e3:.1f} / {r['user_s'] * 1e3:.1f} | {rw:.2f} | {r['rel_diff']:.1e} |"
        )
    verdict = "PASS" if worst <= ACCEPT else "FAIL"
    print(f"\nacceptance (issue 22): hand-written within {ACCEPT}x of built-in, worst ratio {worst:.2f} -> {verdict}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
