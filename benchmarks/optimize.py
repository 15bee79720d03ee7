"""Optimizer benchmark (issue 5): one patient after compilation, batching, the SPINE-72 trial, the oracle gap.

Prints, in one process:

1. one patient (examples/patient_spine.toml, ``--draws`` scenario draws): first call (compiles, or loads
   from the persistent compilation cache) and the median of repeated calls after compilation, with the stage
   times;
2. batching: ``--loop-n`` SPINE-72 patients optimized one at a time (each its own call, compiled programs
   reused) vs the same patients in one batched call, as a ratio (same settings, same draws);
3. the trial: ``--n`` patients x ``--draws`` draws in chunks of ``--chunk`` (``pkpd trial``), wall time
   and stage times, and the acceptance figures (MME reduction vs C0 and C1, time in target vs C1,
   proposals failing a hard check, by stratum);
4. the oracle gap (:func:`regimens.optimize.oracle_gap`) on ``--oracle-n`` patients: the oracle knows
   each virtual patient's true PK/PD parameters (not the randomness of their rescue requests).

Usage::

    PYTHONPATH=. python benchmarks/optimize.py [--n 1000] [--draws 128] [--chunk 50] [--steps 30]
        [--md docs/spine72_trial.md] [--no-timing]

``--md`` writes the trial's results (and the oracle gap) as a Markdown page: the figures the docs and
``docs/validation.md`` point to come from that page, not from hand-copied prose. ``--no-timing`` skips
parts 1 and 2.

Targets (issue 5, 2-core machine): <= 2 s per patient after compile; <= 10 minutes for 1,000 patients x 128
draws. Run with ``PKPD_JAX_CACHE=off`` to include every compilation in the first-call figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd

import pkpd  # noqa: F401  (x64)
from pkpd.patients import load_patient, spine72_population
from regimens.optimize import OptimizeSettings, optimize_patient, optimize_population, oracle_gap, run_trial


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--loop-n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--oracle-n", type=int, default=200, help="patients of the oracle-gap run (0: skip)")
    ap.add_argument("--md", default=None, help="write the trial's results as Markdown to this path")
    ap.add_argument("--no-timing", action="store_true", help="skip the one-patient and batching timings")
    a = ap.parse_args()
    st = OptimizeSettings(draws=a.draws, steps=a.steps)

    if not a.no_timing:
        timing(a, st)
    trial(a, st)


def timing(a, st) -> None:
    """Parts 1 and 2: one patient after compilation, and batching."""
    cov = load_patient("examples/patient_spine.toml").to_row()
    t = time.perf_counter()
    optimize_patient(cov, settings=st)
    first = time.perf_counter() - t
    reps = []
    for _ in range(3):
        t = time.perf_counter()
        optimize_patient(cov, settings=st)
        reps.append(time.perf_counter() - t)
    print(
        f"one patient ({a.draws} draws, {a.steps} steps): first call {first:.1f} s; after compile "
        f"{statistics.median(reps):.2f} s (median of 3: {', '.join(f'{r:.2f}' for r in reps)})"
    )

    pop = spine72_population(a.loop_n, a.seed)
    optimize_population(pop, st)  # compile the batched shapes
    t = time.perf_counter()
    for i in range(a.loop_n):
        optimize_population(pop.iloc[[i]], st)
    loop = time.perf_counter() - t
    t = time.perf_counter()
    optimize_population(pop, st)
    batch = time.perf_counter() - t
    print(
        f"{a.loop_n} patients one at a time: {loop:.1f} s ({loop / a.loop_n:.2f} s/patient); batched: {batch:.1f} s "
        f"({batch / a.loop_n:.2f} s/patient); batching speed-up {loop / batch:.1f}x"
    )


def trial(a, st) -> None:
    """Parts 3 and 4: the SPINE-72 trial and the oracle gap (and the Markdown page with ``--md``)."""
    t = time.perf_counter()
    patients, summary, times = run_trial(a.n, a.seed, st, chunk=a.chunk)
    wall = time.perf_counter() - t
    allp = summary[summary["stratum"] == "all"].set_index("regimen")
    p = allp.loc["proposal"]
    print(
        f"trial: {a.n} patients x {a.draws} draws, chunks of {a.chunk}: {wall:.0f} s "
        f"({wall / a.n:.2f} s/patient); stages {', '.join(f'{k} {v:.0f}' for k, v in times.items())}"
    )
    print(
        f"  mean 72-h MME: proposal {p['MME_mean']:.2f}, C0 {allp.loc['C0', 'MME_mean']:.1f}, "
        f"C1 {allp.loc['C1', 'MME_mean']:.2f} mg -> {p['MME_vs_C0_pct']:.1f} % below C0, "
        f"{p['MME_vs_C1_pct']:.1f} % below C1"
    )
    print(
        f"  time in target: proposal {100 * p['TIT3']:.1f} %, C1 {100 * allp.loc['C1', 'TIT3']:.1f} %; "
        f"time with NRS >= 4: proposal {100 * p['TIME_NRS_GE4']:.1f} %, C1 {100 * allp.loc['C1', 'TIME_NRS_GE4']:.1f} %; "
        f"NRS >= 7: proposal {100 * p['TIME_NRS_GE7']:.2f} %, C1 {100 * allp.loc['C1', 'TIME_NRS_GE7']:.2f} %"
    )
    print(
        f"  P90 of 72-h MME: proposal {p['MME_P90']:.1f}, C0 {allp.loc['C0', 'MME_P90']:.1f}, "
        f"C1 {allp.loc['C1', 'MME_P90']:.1f} mg; proposals failing a hard safety check: {int(p['n_unsafe'])}; "
        f"missing a pain constraint after every repair: {int(p.get('n_pain_missed', 0))}"
    )
    print(
        f"  searched schedules repaired in the exact evaluation: {int(p.get('n_repaired', 0))} of {len(patients)}, "
        f"of which ended at the fallback: {int(p.get('n_fallback', 0))}"
    )
    print("  repair steps (first step taken): " + first_repair_steps(patients))
    pol = patients["POLICY"].str.split(" [doses for this patient", regex=False).str[0].value_counts()  # as written
    print("  rescue policies chosen: " + "; ".join(f"{v} x {k}" for k, v in pol.items()))
    print(summary.to_string())
    gap_line = ""
    if a.oracle_n:
        t = time.perf_counter()
        g = oracle_gap(spine72_population(a.oracle_n, a.seed), st)
        m = g.mean(numeric_only=True)
        gap = 100 * (m["LOSS_prior"] - m["LOSS_oracle"]) / m["LOSS_oracle"]
        print(
            f"oracle gap ({a.oracle_n} patients x {a.draws} draws, truth = one unseen patient each, the oracle knows "
            f"its PK/PD parameters; {time.perf_counter() - t:.0f} s): loss (exact objective, MME-eq) prior-based "
            f"{m['LOSS_prior']:.2f} vs oracle {m['LOSS_oracle']:.2f} ({gap:+.1f} %); MME {m['MME_prior']:.2f} vs "
            f"{m['MME_oracle']:.2f} mg; time in target {100 * m['TIT3_prior']:.1f} vs {100 * m['TIT3_oracle']:.1f} %; "
            f"C1 loss {m['LOSS_C1']:.2f}, C0 {m['LOSS_C0']:.2f}; schedules that differ: "
            f"{int((~g['SAME_SCHEDULE']).sum())}/{len(g)}; prior-based worse than the oracle for "
            f"{int((g['LOSS_prior'] > g['LOSS_oracle'] + 1e-9).sum())} patients"
        )
        gap_line = (
            f"Oracle gap ({a.oracle_n} patients x {a.draws} draws; the oracle knows each virtual patient's "
            f"PK/PD parameters, not the randomness of its rescue requests): loss {m['LOSS_prior']:.2f} "
            f"prior-based vs {m['LOSS_oracle']:.2f} oracle ({gap:+.1f} %); MME {m['MME_prior']:.2f} vs "
            f"{m['MME_oracle']:.2f} mg; C1 loss {m['LOSS_C1']:.2f}, C0 {m['LOSS_C0']:.2f}."
        )
    if a.md:
        write_markdown(a, patients, summary, wall, gap_line)


def first_repair_steps(patients: pd.DataFrame) -> str:
    """How many searched schedules took each first repair step ("none": not repaired)."""
    first = patients["REPAIR"].fillna("").astype(str).str.split(" \\(").str[0].value_counts()
    return "; ".join(f"{k or 'none'}: {v}" for k, v in first.items())


def write_markdown(a, patients: pd.DataFrame, summary: pd.DataFrame, wall: float, gap_line: str) -> None:
    """The trial's results page (``--md``)."""
    import datetime
    import os
    import platform

    import jax

    from pkpd.outcome import outcome_posterior

    post = outcome_posterior()
    allp = summary[summary["stratum"] == "all"].set_index("regimen")
    p = allp.loc["proposal"]
    rows = [
        "| regimen | mean 72-h MME (mg) | P90 (mg) | time NRS <= 3 | time NRS >= 4 | time NRS >= 7 | mean P(OIRD) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("proposal", "proposal"), ("C0", "C0 (opioid-centric)"), ("C1", "C1 (ERAS)")):
        r = allp.loc[name]
        rows.append(
            f"| {label} | {r['MME_mean']:.1f} | {r['MME_P90']:.1f} | {100 * r['TIT3']:.1f} % | "
            f"{100 * r['TIME_NRS_GE4']:.1f} % | {100 * r['TIME_NRS_GE7']:.2f} % | {r.get('P_OIRD', float('nan')):.2g} |"
        )
    pol = patients["POLICY"].str.split(" [doses for this patient", regex=False).str[0].value_counts()  # as written
    strata = summary[(summary["regimen"] == "proposal") & (summary["stratum"] != "all")]
    cols = [c for c in ("stratum", "n", "MME_mean", "MME_vs_C1_pct", "TIT3", "TIME_NRS_GE4", "n_unsafe") if c in strata]
    lines = [
        "# SPINE-72 virtual trial: optimizer proposals vs C0 and C1",
        "",
        "<!-- Generated by `PYTHONPATH=. python benchmarks/optimize.py --md docs/spine72_trial.md`; do not edit by "
        "hand. -->",
        "",
        f"{datetime.date.today().isoformat()}; {a.n} SPINE-72 patients (seed {a.seed}) x {a.draws} scenario draws, "
        f"{a.steps} optimizer steps; outcome model: calibration version {post.version} (rule {post.rule}), each "
        f"scenario with its own posterior draw of the outcome-model parameters; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} {jax.default_backend()}; {wall:.0f} s.",
        "",
        "\n".join(rows),
        "",
        f"Mean 72-h MME {p['MME_vs_C0_pct']:.1f} % below C0 and {p['MME_vs_C1_pct']:.1f} % below C1; P90 "
        f"{p['MME_P90']:.1f} mg vs C1 {allp.loc['C1', 'MME_P90']:.1f} mg. Proposals failing a hard safety check "
        f"in the exact re-simulation: **{int(p['n_unsafe'])}**; missing a pain constraint (time with NRS <= 3, "
        f">= 4, >= 7 against C1's) after every repair step: **{int(p.get('n_pain_missed', 0))}**. Searched "
        f"schedules repaired in the exact evaluation: {int(p.get('n_repaired', 0))}, of which ended at the "
        f"fallback (C1's schedule within the patient's limits): {int(p.get('n_fallback', 0))}.",
        "",
        "Comparators adapted to the patient's limits (C0 or C1 as written breaks a label, renal, hepatic or CPIC "
        "limit of that patient: `regimens.adapt`; the adapted one is the comparator and the reference of the "
        f"relative constraints): C1 for {int((patients.get('C1_ADAPTED', pd.Series(dtype=str)).fillna('') != '').sum())}"
        f", C0 for {int((patients.get('C0_ADAPTED', pd.Series(dtype=str)).fillna('') != '').sum())} of "
        f"{len(patients)} patients.",
        "",
        "Repair steps (first step taken): " + first_repair_steps(patients) + ".",
        "",
        "Rescue policies chosen: " + "; ".join(f"{v} x {k}" for k, v in pol.items()) + ".",
        "",
        "By stratum (proposal):",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
        *[
            "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r) + " |"
            for r in strata[cols].itertuples(index=False)
        ],
        "",
        gap_line,
        "",
    ]
    with open(a.md, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {a.md}")


if __name__ == "__main__":
    main()
