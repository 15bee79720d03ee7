"""``python -m regimens.calibration``: calibrate the outcome model on the evidence base and validate it.

Stages (each cached in ``--out``, so a later stage re-runs without simulating again):

1. *waves*: for each combination rule, design points simulated in every evidence arm: wave 0 from the
   priors, each later wave centred on the posterior of the waves before it;
2. *fit*: per rule, emulators checked on held-out points of the last wave, then refitted on all points;
   NUTS on the aggregate-data likelihood; PSIS-LOO of the two rules (the rule with the higher expected
   log predictive density is kept);
3. *validate*: leave-one-trial-out posteriors (each trial's targets removed in turn) predict the held-out
   trial's arms and between-arm effects; posterior predictive check of every arm;
4. *write*: ``pkpd/datasets/outcome_posterior.json`` (draws, rule, version, how it was made) and the
   tables and figures of ``docs/outcome_calibration.md``.

``--quick`` runs the whole pipeline at toy sizes (seconds to minutes; a smoke test, not a calibration).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np

from pkpd.outcome import OUTCOME_PARAMETERS

from .design import PARAM_NAMES, TRIAL_EFFECT_SD, TRIAL_EFFECTS
from .emulator import fit_emulator, standardize
from .fit import fit_posterior
from .run import PATIENTS, Problem, Settings, load_problem, load_waves, run_wave
from .validate import arm_contrasts, predict_contrasts, predict_targets, summarize_intervals

VERSION = "4"
ROOT = Path(__file__).resolve().parents[2]


def _say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _inputs(problem: Problem, z: np.ndarray, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    tri = _target_trials(problem)
    return standardize(np.broadcast_to(z[:, None, :], (len(z), len(tri), z.shape[1])), u[:, tri], w[:, tri])


def _target_trials(problem: Problem) -> np.ndarray:
    ta = problem.trial_of_arm()
    return np.array([ta[i] for i, ts in enumerate(problem.targets) for _ in ts])


def waves(problem: Problem, s: Settings, out: Path) -> None:
    """Simulate the missing waves of rule ``s.rule``."""
    folder = out / s.rule
    for k in range(len(s.waves)):
        if (folder / f"wave{k}.npz").exists():
            continue
        center = scale = t_center = t_scale = None
        if k > 0:
            z, u, w, y, _ = load_waves(problem, folder)
            emu = fit_emulator(_inputs(problem, z, u, w), y, seed=s.seed)
            post = fit_posterior(
                emu,
                problem.flat,
                _target_trials(problem),
                len(problem.trials),
                draws=300,
                warmup=300,
                chains=1,
                seed=s.seed + k,
            )
            center = post.z.mean(0)
            scale = np.maximum(1.5 * post.z.std(0), 0.05)
            t_center = np.stack([post.u.mean(0), post.w.mean(0)])
            t_scale = np.maximum(1.5 * np.stack([post.u.std(0), post.w.std(0)]), 0.05)
            _say(f"{s.rule} wave {k}: centred on the posterior of waves 0..{k - 1}")
        run_wave(
            problem, k, s, out, center=center, scale=scale, trial_center=t_center, trial_scale=t_scale, progress=_say
        )


def fit_rule(problem: Problem, s: Settings, out: Path, reuse: bool = False):
    """Emulator (checked on held-out points of the last wave, then refitted on all) and NUTS posterior (with
    ``reuse``, the posterior saved by an earlier run on the same waves and settings, if there is one)."""
    z, u, v, y, wave = load_waves(problem, out / s.rule)
    x = _inputs(problem, z, u, v)
    rng = np.random.default_rng(s.seed)
    last = np.flatnonzero(wave == wave.max())
    hold = rng.permutation(last)[: max(1, int(round(s.holdout * len(last))))]
    train = np.setdiff1d(np.arange(len(z)), hold)
    emu = fit_emulator(x[train], y[train], seed=s.seed)
    chk = emu.check(x[hold], y[hold])
    _say(
        f"{s.rule}: emulator held-out RMSE median {np.median(chk['rmse']):.3f} (max {chk['rmse'].max():.3f}), "
        f"R2 median {np.median(chk['r2']):.3f}"
    )
    final = fit_emulator(x, y, seed=s.seed)
    final.rmse = chk["rmse"]
    post = load_posterior_npz(out / s.rule / "posterior.npz", problem, s) if reuse else None
    if post is not None:
        _say(f"{s.rule}: NUTS posterior reused from {out / s.rule / 'posterior.npz'} (same waves and settings)")
    else:
        post = fit_posterior(
            final,
            problem.flat,
            _target_trials(problem),
            len(problem.trials),
            draws=s.draws,
            warmup=s.warmup,
            chains=s.chains,
            seed=s.seed,
        )
    _say(
        f"{s.rule}: NUTS max R-hat {post.diagnostics['max_rhat']:.3f}, min ESS {post.diagnostics['min_ess']:.0f}, "
        f"{post.diagnostics['divergences']} divergences"
    )
    return (
        final,
        post,
        {"rmse": chk["rmse"].tolist(), "r2": chk["r2"].tolist(), "train": int(len(train)), "holdout": int(len(hold))},
    )


def loo(post) -> dict:
    """PSIS-LOO of the pointwise log-likelihood (targets as observations)."""
    import arviz as az

    ll = post.loglik[None]  # (chain, draw, target)
    idata = az.from_dict(posterior={"tau": post.tau[None]}, log_likelihood={"y": ll})
    res = az.loo(idata, pointwise=True)
    return {
        "elpd_loo": float(res.elpd_loo),
        "se": float(res.se),
        "p_loo": float(res.p_loo),
        "pareto_k_max": float(np.max(res.pareto_k.values)),
        "pointwise": np.asarray(res.loo_i.values),
    }


def validate(problem: Problem, emu, post, s: Settings) -> dict:
    """Posterior predictive check (all trials) and leave-one-trial-out predictions."""
    import pandas as pd

    targets = problem.flat
    tri = _target_trials(problem)
    ppc = predict_targets(emu, post, targets, tri, new_trial=np.zeros(len(targets), bool), seed=s.seed)
    lab = [t.key for t in targets]
    scale = ["lin" if t.stat == "pain_mean" else "log" for t in targets]
    ppc_tab = summarize_intervals(ppc, np.array([t.value for t in targets]), lab, scale)
    contrasts = {t.id: list(t.contrasts) for t in {a.trial.id: a.trial for a in problem.arms}.values()}
    cons = arm_contrasts(targets, contrasts)
    loto_t, loto_c = [], []
    for k, trial in enumerate(problem.trials):
        held = tri == k
        pk = fit_posterior(
            emu,
            targets,
            tri,
            len(problem.trials),
            mask=(~held).astype(float),
            draws=s.draws // 2,
            warmup=s.warmup // 2,
            chains=s.loto_chains,
            seed=s.seed + 100 + k,
        )
        pred = predict_targets(emu, pk, targets, tri, new_trial=held, seed=s.seed + k)
        idx = np.flatnonzero(held)
        tab = summarize_intervals(
            pred[:, idx], np.array([targets[j].value for j in idx]), [lab[j] for j in idx], [scale[j] for j in idx]
        )
        tab.insert(0, "trial", trial)
        loto_t.append(tab)
        mine = [c for c in cons if c.trial == trial]
        if mine:
            pc, oc = predict_contrasts(pred, targets, mine)
            ct = summarize_intervals(
                pc,
                oc,
                [f"{c.trial}: {c.arm} vs {c.control} ({c.stat})" for c in mine],
                ["lin" if c.stat == "pain_mean" else "log" for c in mine],
            )
            ct.insert(0, "trial", trial)
            loto_c.append(ct)
        _say(
            f"leave out {trial}: {int(tab.inside.sum())}/{len(tab)} targets and "
            f"{int(ct.inside.sum()) if mine else 0}/{len(mine)} effects inside 90 % PI "
            f"(R-hat {pk.diagnostics['max_rhat']:.2f})"
        )
    return {
        "ppc": ppc_tab,
        "loto_targets": pd.concat(loto_t, ignore_index=True),
        "loto_effects": pd.concat(loto_c, ignore_index=True),
    }


#: The trial whose setting the SPINE-72 benchmark stands for (clinical.md 3.2: its calibration targets are
#: the Iyer 2023 arms): its posterior trial effects are the simulator's default rescue propensity and spread.
REFERENCE_TRIAL = "iyer2023"


def write_posterior(path: Path, rule: str, post, meta: dict, trials: list[str], n_keep: int = 1000) -> None:
    """The posterior JSON read by :func:`pkpd.outcome.outcome_posterior`: parameter draws, and with each draw
    the reference setting's trial effects (``exp(u)``, ``exp(w)`` of :data:`REFERENCE_TRIAL`)."""
    step = max(1, len(post.theta) // n_keep)
    draws = post.theta[::step][:n_keep]
    k = trials.index(REFERENCE_TRIAL)
    prop = np.exp(post.u[::step, k][:n_keep])
    spread = np.exp(post.w[::step, k][:n_keep])
    obj = {
        "version": VERSION,
        "rule": rule,
        "parameters": list(PARAM_NAMES),
        "units": {p.name: p.unit for p in OUTCOME_PARAMETERS},
        "draws": np.round(draws, 6).tolist(),
        "reference": {
            "trial": REFERENCE_TRIAL,
            "rescue_propensity": np.round(prop, 6).tolist(),
            "pain_spread": np.round(spread, 6).tolist(),
        },
        "meta": meta,
    }
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _fingerprint(problem: Problem, s: Settings, out: Path) -> str:
    """What a saved posterior was fitted on: the targets, the settings and every wave file's size and time."""
    waves = sorted((out / s.rule).glob("wave*.npz"))
    return json.dumps(
        {
            "targets": [t.key for t in problem.flat],
            "settings": s.__dict__,
            "version": VERSION,
            "waves": [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in waves],
        },
        sort_keys=True,
    )


def save_posterior_npz(path: Path, post, trials: list[str], fingerprint: str = "") -> None:
    """Every NUTS draw (unconstrained and natural parameters, trial effects, SDs) for later analysis, with
    the diagnostics and what it was fitted on (``--reuse-fits`` reads it back)."""
    np.savez(
        path,
        z=post.z,
        theta=post.theta,
        u=post.u,
        w=post.w,
        tau=post.tau,
        tau_w=post.tau_w,
        s=post.s,
        loglik=post.loglik,
        trials=np.array(trials),
        params=np.array(PARAM_NAMES),
        diagnostics=json.dumps(post.diagnostics),
        fingerprint=fingerprint,
    )


def load_posterior_npz(path: Path, problem: Problem, s: Settings):
    """The posterior saved by :func:`save_posterior_npz` if it was fitted on the same targets, settings and
    waves (else None: fit again)."""
    from .fit import Posterior

    if not path.exists():
        return None
    d = np.load(path)
    if "fingerprint" not in d or str(d["fingerprint"]) != _fingerprint(problem, s, path.parent.parent):
        return None
    return Posterior(
        d["z"], d["theta"], d["u"], d["tau"], d["s"], d["loglik"], json.loads(str(d["diagnostics"])), d["w"], d["tau_w"]
    )


def _plots(res: dict, folder: Path) -> list[str]:
    """The posterior predictive check (every number over its observed value, log scale, so arms reported in
    mg and in mg/kg/h share one axis) and the leave-one-trial-out effects (ratios on a log axis, pain
    differences on a linear one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    def log_axis(ax):
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ticks = [t for t in (0.01, 0.03, 0.1, 0.25, 0.5, 1, 2, 4, 10, 30, 100) if lo <= t <= hi]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())

    def rows(ax, tab, scale, title, xlabel, ref):
        yy = np.arange(len(tab))[::-1]
        for i, r in enumerate(tab.itertuples()):
            c = "tab:blue" if r.inside else "tab:red"
            d = r.observed if scale == "obs" else 1.0
            ax.plot([r.lo90 / d, r.hi90 / d], [yy[i]] * 2, color=c, lw=2)
            ax.plot(r.predicted / d, yy[i], "o", color=c, ms=4)
            ax.plot(r.observed / d, yy[i], "kx", ms=6)
        ax.axvline(ref, color="0.6", lw=0.8, ls="--")
        ax.set_yticks(yy)
        ax.set_yticklabels(tab["what"], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)

    ppc = res["ppc"]
    fig, ax = plt.subplots(figsize=(10, 0.26 * len(ppc) + 1.4))
    rows(
        ax,
        ppc,
        "obs",
        "Posterior predictive check (calibration fit): every arm's reported number",
        "predicted / observed (log scale): median and 90 % interval; blue: observed inside, red: outside",
        1.0,
    )
    log_axis(ax)
    fig.tight_layout()
    fig.savefig(folder / "outcome_ppc.png", dpi=110)
    plt.close(fig)
    eff = res["loto_effects"]
    pain = eff["what"].str.contains("pain_mean").to_numpy()
    parts = [
        (eff[~pain], "log", "opioid use, arm / control (log scale)", 1.0),
        (eff[pain], "linear", "mean NRS, arm - control (NRS points)", 0.0),
    ]
    parts = [p for p in parts if len(p[0])]
    fig, axes = plt.subplots(
        len(parts),
        1,
        figsize=(10, 0.3 * len(eff) + 1.2 * len(parts) + 0.6),
        squeeze=False,
        gridspec_kw={"height_ratios": [max(len(p[0]), 1) + 2 for p in parts]},
    )
    for ax, (tab, xs, xl, ref) in zip(axes[:, 0], parts):
        rows(ax, tab, "abs", "", xl + ": median and 90 % prediction interval; x observed, red: outside", ref)
        if xs == "log":
            log_axis(ax)
    axes[0, 0].set_title("Leave-one-trial-out: between-arm effects predicted from the other trials", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "outcome_loto.png", dpi=110)
    plt.close(fig)
    return ["outcome_ppc.png", "outcome_loto.png"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regimens.calibration", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/calibration", help="cache folder (design waves)")
    ap.add_argument("--rules", default="loewe,bliss", help="combination rules to compare")
    ap.add_argument(
        "--stage",
        default="all",
        choices=("waves", "fit", "all"),
        help="waves: simulate only; fit: also fit each rule and save out/<rule>/posterior.npz, without "
        "validation or writing the shipped posterior; all: everything",
    )
    ap.add_argument(
        "--reuse-fits",
        action="store_true",
        help="use a rule's NUTS posterior saved by an earlier run (out/<rule>/posterior.npz) when it was "
        "fitted on the same waves, targets and settings (the emulator is refitted: deterministic)",
    )
    ap.add_argument("--quick", action="store_true", help="toy sizes: a smoke test of the pipeline")
    ap.add_argument("--no-write", action="store_true", help="do not write the posterior and docs")
    a = ap.parse_args(argv)
    out = Path(a.out)
    s0 = Settings()
    if a.quick:
        s0 = Settings(n_patients=16, waves=(24, 16), draws=60, warmup=60, chains=1)
    problem = load_problem()
    rules = a.rules.split(",")
    _say(f"{len(problem.arms)} arms of {len(problem.trials)} trials, {len(problem.flat)} targets; rules {rules}")
    for r in rules:
        waves(problem, Settings(**{**s0.__dict__, "rule": r}), out)
    if a.stage == "waves":
        return 0
    fits = {}
    for r in rules:
        s = Settings(**{**s0.__dict__, "rule": r})
        emu, post, chk = fit_rule(problem, s, out, reuse=a.reuse_fits)
        save_posterior_npz(out / r / "posterior.npz", post, problem.trials, _fingerprint(problem, s, out))
        fits[r] = (emu, post, chk, loo(post))
        _say(f"{r}: elpd_loo {fits[r][3]['elpd_loo']:.2f} (SE {fits[r][3]['se']:.2f})")
    if a.stage == "fit":  # posteriors saved (out/<rule>/posterior.npz); no validation, nothing shipped
        return 0
    best = max(rules, key=lambda r: fits[r][3]["elpd_loo"])
    emu, post, chk, lo = fits[best]
    s = Settings(**{**s0.__dict__, "rule": best})
    res = validate(problem, emu, post, s)
    eff = res["loto_effects"]
    _say(
        f"{best}: leave-one-trial-out effects inside 90 % PI {int(eff.inside.sum())}/{len(eff)}, sign right "
        f"{int(eff.sign_right.sum())}/{len(eff)}"
    )
    if a.no_write or a.quick:
        print(eff.to_string())
        return 0
    comparison = {r: {k: v for k, v in fits[r][3].items() if k != "pointwise"} for r in rules}
    if len(rules) > 1:
        other = [r for r in rules if r != best][0]
        d = fits[best][3]["pointwise"] - fits[other][3]["pointwise"]
        comparison["difference"] = {"elpd": float(d.sum()), "se": float(np.sqrt(len(d)) * d.std())}
    meta = {
        "status": "calibrated",
        "version": VERSION,
        "rule": best,
        "date": _dt.date.today().isoformat(),
        "made_by": "python -m regimens.calibration",
        "evidence": {t: [a.arm.id for a in problem.arms if a.trial.id == t] for t in problem.trials},
        "targets": [t.key for t in problem.flat],
        "settings": {**s.__dict__, "trial_effect_design_sd": TRIAL_EFFECT_SD},
        "trial_effects": list(TRIAL_EFFECTS),
        "patients": PATIENTS,
        "nuts": post.diagnostics,
        "emulator_holdout": {
            "rmse_median": float(np.median(chk["rmse"])),
            "rmse_max": float(np.max(chk["rmse"])),
            "r2_median": float(np.median(chk["r2"])),
            "points_train": chk["train"],
            "points_holdout": chk["holdout"],
        },
        "rule_comparison": comparison,
        "trial_effect_sd": {
            "median": float(np.median(post.tau)),
            "p05": float(np.quantile(post.tau, 0.05)),
            "p95": float(np.quantile(post.tau, 0.95)),
        },
        "trial_spread_sd": {
            "median": float(np.median(post.tau_w)),
            "p05": float(np.quantile(post.tau_w, 0.05)),
            "p95": float(np.quantile(post.tau_w, 0.95)),
        },
        "discrepancy_sd": {k: float(np.median(post.s[:, i])) for i, k in enumerate(("log_mean", "log_sd", "pain"))},
        "loto": {
            "effects_inside_90": int(eff.inside.sum()),
            "effects": int(len(eff)),
            "sign_right": int(eff.sign_right.sum()),
        },
    }
    res["ppc"].to_csv(out / "ppc.csv", index=False)
    res["loto_targets"].to_csv(out / "loto_targets.csv", index=False)
    res["loto_effects"].to_csv(out / "loto_effects.csv", index=False)
    write_posterior(ROOT / "pkpd" / "datasets" / "outcome_posterior.json", best, post, meta, problem.trials)
    from .report import write_report, write_validation_section

    write_report(ROOT / "docs", problem, post, res, meta, _plots(res, ROOT / "docs" / "img"))
    write_validation_section(ROOT / "docs", res, meta)
    _say("wrote pkpd/datasets/outcome_posterior.json and docs/outcome_calibration.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
