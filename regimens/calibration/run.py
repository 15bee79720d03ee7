"""Driver of the outcome-model calibration: simulate design waves, fit, validate, write the posterior.

Everything is cached under an output folder (default ``out/calibration``): ``wave<k>.npz`` holds a wave's
design points and the simulated statistics of every arm, so that fitting and validation can be re-run
without simulating again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..evidence import load_evidence
from .arms import ArmSim, Target, arm_targets, calibration_arms
from .design import PARAM_NAMES, TRIAL_EFFECT_SD, TRIAL_EFFECTS, sample_design, simulate_arm, to_natural

__all__ = ["Settings", "Problem", "load_problem", "simulate_wave", "load_waves", "arm_seeds", "PATIENTS"]

#: How each arm's virtual patients are drawn, tagged on every saved wave (waves drawn another way are refused).
#: "common within trial": every arm of a trial simulates the same virtual patients (the trial's seed), so a
#: between-arm difference is the regimens' difference alone (common random numbers). Calibrations 1-3 drew
#: each arm's patients with its own seed: a fixed sample of 160 patients per arm whose chance differences
#: (SD of a log mean about CV / sqrt(160), 0.05-0.1) entered every design point alike, so the emulators learnt
#: them as if they were effects (calibration 3: Turan 2004's gabapentin arm used more opioid than its placebo
#: arm at 70 % of the design points; two held-out gabapentin effects came out with the wrong sign).
PATIENTS = "common within trial"


@dataclass(frozen=True)
class Settings:
    """Calibration settings.

    ``n_patients`` virtual patients per arm and design point; ``waves`` design points per wave (the first
    from the priors, each later one centred on the previous posterior); ``holdout`` share of the last
    wave's points kept out of the emulator to check it; ``draws``/``warmup``/``chains`` of NUTS;
    ``loto_chains`` chains of each leave-one-trial-out refit (half the draws; its R-hat is the split-chain
    one when 1); ``seed`` of everything; ``rule`` the combination rule simulated.
    """

    rule: str = "loewe"
    n_patients: int = 160
    waves: tuple[int, ...] = (448, 320)
    holdout: float = 0.2
    draws: int = 1000
    warmup: int = 1000
    chains: int = 2
    loto_chains: int = 1
    seed: int = 72


@dataclass
class Problem:
    """The arms, their targets (flattened) and the trial index of every arm."""

    arms: list[ArmSim]
    targets: list[list[Target]]
    trials: list[str]

    @property
    def flat(self) -> list[Target]:
        return [t for ts in self.targets for t in ts]

    def trial_of_arm(self) -> np.ndarray:
        return np.array([self.trials.index(a.trial.id) for a in self.arms])


def load_problem(use: str = "calibration") -> Problem:
    """The calibration problem of the shipped evidence base."""
    ev = load_evidence()
    arms = calibration_arms(ev, use)
    targets = [arm_targets(a) for a in arms]
    trials = sorted({a.trial.id for a in arms})
    return Problem(arms, targets, trials)


def simulate_wave(
    problem: Problem,
    z: np.ndarray,
    u: np.ndarray,
    w: np.ndarray,
    settings: Settings,
    *,
    progress: Callable[[str], None] = print,
) -> np.ndarray:
    """Simulate every arm at design points ``z`` (unconstrained, (D, P)) with trial effects ``u``, ``w``
    (D, T: log multipliers of the rescue propensity and of the between-patient heterogeneity).

    Returns the statistics (D, n_targets) in :attr:`Problem.flat` order.
    """
    theta = to_natural(z)
    tri = problem.trial_of_arm()
    seeds = arm_seeds(problem, settings)
    cols = []
    for i, (arm, ts) in enumerate(zip(problem.arms, problem.targets)):
        if not ts:
            continue
        cols.append(
            simulate_arm(
                arm,
                ts,
                theta,
                np.exp(u[:, tri[i]]),
                np.exp(w[:, tri[i]]),
                n_patients=settings.n_patients,
                seed=int(seeds[i]),
                rule=settings.rule,
                progress=progress,
            )
        )
    return np.concatenate(cols, axis=1)


def arm_seeds(problem: Problem, settings: Settings) -> np.ndarray:
    """The seed of every arm's virtual patients: its trial's (:data:`PATIENTS`), so the arms of one trial
    simulate the same patients and differ only by their regimens (and, for strata such as opioid-tolerant
    arms, by what the arm's population states)."""
    return settings.seed + 1000 + problem.trial_of_arm()


def run_wave(
    problem: Problem,
    k: int,
    settings: Settings,
    out: Path,
    *,
    center=None,
    scale=None,
    trial_center=None,
    trial_scale=None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Sample and simulate wave ``k`` (0-based) and save it to ``out/wave<k>.npz``."""
    out.mkdir(parents=True, exist_ok=True)
    n = settings.waves[k]
    z, u, w = sample_design(
        n,
        len(problem.trials),
        settings.seed + 17 * k,
        center=center,
        scale=scale,
        trial_sd=TRIAL_EFFECT_SD,
        trial_center=trial_center,
        trial_scale=trial_scale,
    )
    t0 = time.perf_counter()
    y = simulate_wave(problem, z, u, w, settings, progress=progress)
    path = out / settings.rule / f"wave{k}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        z=z,
        u=u,
        w=w,
        y=y,
        keys=np.array([t.key for t in problem.flat]),
        params=np.array(PARAM_NAMES),
        trials=np.array(problem.trials),
        effects=np.array(TRIAL_EFFECTS),
        patients=np.array(PATIENTS),
        settings=json.dumps(settings.__dict__),
        seconds=time.perf_counter() - t0,
    )
    progress(f"wave {k}: {n} points in {time.perf_counter() - t0:.0f} s -> {path}")
    return path


def load_waves(problem: Problem, out: Path) -> tuple[np.ndarray, ...]:
    """All saved waves: z (N, P), u (N, T), w (N, T), y (N, n_targets), wave index (N,). Checks they belong
    to the same problem (targets, parameters, trials)."""
    zs, us, vs, ys, ws = [], [], [], [], []
    keys = [t.key for t in problem.flat]
    for k in range(32):
        p = out / f"wave{k}.npz"
        if not p.exists():
            break
        d = np.load(p)
        if list(d["keys"]) != keys or list(d["params"]) != list(PARAM_NAMES) or list(d["trials"]) != problem.trials:
            raise ValueError(f"{p} was made for another evidence base or parameter set: simulate again")
        if "effects" not in d or list(d["effects"]) != list(TRIAL_EFFECTS):
            got = list(d["effects"]) if "effects" in d else ["pain.scale", "pain.spread"]
            raise ValueError(
                f"{p} has trial effects on {got}, this calibration on {list(TRIAL_EFFECTS)}: "
                "simulate again (another --out folder)"
            )
        got = str(d["patients"]) if "patients" in d else "one sample per arm"
        if got != PATIENTS:
            raise ValueError(
                f"{p} drew its virtual patients as '{got}', this calibration as '{PATIENTS}' (common "
                "random numbers within a trial): simulate again (another --out folder)"
            )
        zs.append(d["z"])
        us.append(d["u"])
        vs.append(d["w"])
        ys.append(d["y"])
        ws.append(np.full(len(d["z"]), k))
    if not zs:
        raise FileNotFoundError(f"no design waves in {out}")
    return np.concatenate(zs), np.concatenate(us), np.concatenate(vs), np.concatenate(ys), np.concatenate(ws)
