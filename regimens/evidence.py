"""The evidence base: published trial arms after spine surgery, as data, with their regimens and outcomes.

Layout (``regimens/evidence/``):

* ``trials/<id>.toml``: one trial (or cohort): citation, design, surgery, opioid tolerance of the
  population, what the text says about anaesthesia and background analgesia, what is missing, how it is
  used (``use``: ``"calibration"``, ``"validation"`` or ``"not_simulated"`` with the reason), the virtual
  population that stands for it (``[simulation]``: share of opioid-tolerant patients, age, weight, every
  assumption made), and its arms: N, intervention, the regimen file that writes out the arm's *whole*
  regimen (background included), and each reported outcome with its statistic, the verbatim quote it was
  read from and the page's address;
* ``regimens/<name>.toml``: the arms' regimen files (:func:`regimens.load_regimen` format); an arm may
  also name a shipped regimen (e.g. ``IYER_PLACEBO``);
* ``findings.toml``: evidence that is not a trial arm (opioid use of tolerant vs naive patients, the
  spread of opioid use, opioid-free shares, absolute pain and opioid use under multimodal care), each with
  its quote and source, and the targets derived from it (stated before the calibration was run).

Every number was read from a public page (an abstract or a registry entry in most cases); the page and a
verbatim quote are kept with it. Numbers the toolkit derived (a per-arm N from a total, a window read from
a follow-up schedule, a unit conversion) say so in ``derived``/``note``.

>>> from regimens.evidence import load_evidence
>>> ev = load_evidence()
>>> sorted(t.id for t in ev.trials if t.use == "calibration")[:3]
['boenigk2019', 'hernandezpalazon2001', 'iyer2023']
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._condition import RegimenError

__all__ = ["EVIDENCE_DIR", "Arm", "Evidence", "Outcome", "Trial", "arm_regimen", "load_evidence"]

#: Folder of the evidence base.
EVIDENCE_DIR = Path(__file__).resolve().parent / "evidence"

_USES = ("calibration", "validation", "not_simulated")
_STATS = (
    "mean_sd",
    "mean_only",
    "mean_ci",
    "median_iqr",
    "median_only",
    "median_range",
    "proportion",
    "p_value",
    "difference",
    "mean_difference_ci",
    "ratio",
    "percent_reduction",
    "unspecified_average",
)
_KINDS = ("opioid", "pain", "opioid_free", "pca_demands", "rescue_count", "time_to_first_rescue")


class EvidenceError(RegimenError):
    """A malformed evidence file: the message lists every problem with its file and entry."""


@dataclass(frozen=True)
class Outcome:
    """One reported outcome of an arm.

    ``kind`` opioid (cumulative use over ``window_h``) or pain (at ``time_h`` or averaged over
    ``window_h``)...; ``drug``/``route``/``unit`` what was counted (``drug = "MME"``: morphine equivalents);
    ``statistic`` and ``values`` as reported (e.g. ``mean_sd``: ``[mean, sd]``); ``quote`` and ``url``
    where it was read; ``fit``: whether the calibration's likelihood uses it.
    """

    kind: str
    statistic: str
    values: tuple[float, ...]
    quote: str
    url: str
    window_h: tuple[float, float] | None = None
    time_h: float | None = None
    drug: str = ""
    route: str = ""
    unit: str = ""
    scale: str = ""
    note: str = ""
    fit: bool = True

    @property
    def window(self) -> tuple[float, float]:
        """The outcome's window, h after the end of surgery (a time point is a zero-width window)."""
        if self.window_h is not None:
            return self.window_h
        t = float(self.time_h if self.time_h is not None else 0.0)
        return (t, t)


@dataclass(frozen=True)
class Arm:
    """One arm: ``id``, ``n`` (analysed patients; ``n_note`` when derived), ``intervention`` as reported,
    ``regimen`` (a file of ``regimens/evidence/regimens`` or a shipped regimen name), ``outcomes``, and the
    arm's own share of opioid-tolerant patients where it differs from the trial's (stratified trials)."""

    id: str
    intervention: str
    regimen: str
    n: int | None
    outcomes: tuple[Outcome, ...]
    n_note: str = ""
    note: str = ""
    p_opioid_tolerant: float | None = None


@dataclass(frozen=True)
class Trial:
    """One trial or cohort of the evidence base (see the module docstring)."""

    id: str
    citation: str
    design: str
    surgery: str
    opioid_tolerant: str
    use: str
    use_note: str
    urls: tuple[str, ...]
    background: str
    missing: tuple[str, ...]
    simulation: dict
    arms: tuple[Arm, ...]
    effects: tuple[dict, ...] = ()
    path: Path | None = None
    contrasts: tuple[tuple[str, str], ...] = ()

    def arm(self, arm_id: str) -> Arm:
        for a in self.arms:
            if a.id == arm_id:
                return a
        raise EvidenceError(f"trial {self.id} has no arm {arm_id!r} (arms: {[a.id for a in self.arms]})")

    @property
    def is_rct(self) -> bool:
        return "rct" in self.design.lower() or "randomi" in self.design.lower()


@dataclass(frozen=True)
class Evidence:
    """The whole evidence base: ``trials`` and ``findings`` (``findings.toml``: non-arm evidence and the
    targets stated from it)."""

    trials: tuple[Trial, ...]
    findings: dict = field(default_factory=dict)

    def trial(self, trial_id: str) -> Trial:
        for t in self.trials:
            if t.id == trial_id:
                return t
        raise EvidenceError(f"no trial {trial_id!r} in the evidence base (known: {[t.id for t in self.trials]})")

    def used(self, use: str = "calibration") -> tuple[Trial, ...]:
        """The trials with ``use`` (``"calibration"``, ``"validation"``, ``"not_simulated"``)."""
        return tuple(t for t in self.trials if t.use == use)


def _tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (() if v is None else (v,))


def _outcome(d: dict, where: str, problems: list[str]) -> Outcome | None:
    for k in ("kind", "statistic", "values", "quote", "url"):
        if k not in d:
            problems.append(f"{where}: outcome needs {k!r}")
    if any(k not in d for k in ("kind", "statistic", "values", "quote", "url")):
        return None
    if d["kind"] not in _KINDS:
        problems.append(f"{where}: kind {d['kind']!r} is not one of {_KINDS}")
    if d["statistic"] not in _STATS:
        problems.append(f"{where}: statistic {d['statistic']!r} is not one of {_STATS}")
    w = d.get("window_h")
    if w is not None and (len(w) != 2 or not float(w[0]) <= float(w[1])):
        problems.append(f"{where}: window_h must be [start, end] with start <= end, got {w!r}")
    try:
        vals = tuple(float(x) for x in d["values"])
    except (TypeError, ValueError):
        problems.append(f"{where}: values must be numbers, got {d['values']!r}")
        return None
    return Outcome(
        kind=d["kind"],
        statistic=d["statistic"],
        values=vals,
        quote=str(d["quote"]),
        url=str(d["url"]),
        window_h=None if w is None else (float(w[0]), float(w[1])),
        time_h=d.get("time_h"),
        drug=str(d.get("drug", "")),
        route=str(d.get("route", "")),
        unit=str(d.get("unit", "")),
        scale=str(d.get("scale", "")),
        note=str(d.get("note", "")),
        fit=bool(d.get("fit", True)),
    )


def _trial(path: Path, problems: list[str]) -> Trial | None:
    try:
        d = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"{path.name}: {exc}")
        return None
    where = path.name
    need = ("id", "citation", "design", "surgery", "opioid_tolerant", "use")
    miss = [k for k in need if k not in d]
    if miss:
        problems.append(f"{where}: missing {miss}")
        return None
    if d["use"] not in _USES:
        problems.append(f"{where}: use must be one of {_USES}, got {d['use']!r}")
    if d["use"] != "calibration" and not d.get("use_note"):
        problems.append(f"{where}: a trial not used for calibration needs use_note (why)")
    sim = dict(d.get("simulation", {}))
    arms = []
    for i, a in enumerate(d.get("arm", [])):
        aw = f"{where} arm {a.get('id', i)}"
        if "id" not in a or "intervention" not in a:
            problems.append(f"{aw}: needs id and intervention")
            continue
        if d["use"] == "calibration" and "regimen" not in a:
            problems.append(f"{aw}: a calibration arm needs regimen")
        outs = [_outcome(o, f"{aw} outcome {j}", problems) for j, o in enumerate(a.get("outcome", []))]
        arms.append(
            Arm(
                id=str(a["id"]),
                intervention=str(a["intervention"]),
                regimen=str(a.get("regimen", "")),
                n=None if a.get("n") is None else int(a["n"]),
                outcomes=tuple(o for o in outs if o is not None),
                n_note=str(a.get("n_note", "")),
                note=str(a.get("note", "")),
                p_opioid_tolerant=None if a.get("p_opioid_tolerant") is None else float(a["p_opioid_tolerant"]),
            )
        )
    if not arms:
        problems.append(f"{where}: no arms")
    ids = {a.id for a in arms}
    for pair in d.get("contrasts", []):
        if len(pair) != 2 or not set(pair) <= ids:
            problems.append(f"{where}: contrast {pair!r} must name two of its arms {sorted(ids)}")
    if d["use"] == "calibration":
        for k in ("p_opioid_tolerant", "assumptions"):
            if k not in sim:
                problems.append(f"{where}: [simulation] needs {k!r}")
        for a in arms:
            if a.n is None:
                problems.append(f"{where} arm {a.id}: a calibration arm needs n (derived values say so in n_note)")
    return Trial(
        id=str(d["id"]),
        citation=str(d["citation"]),
        design=str(d["design"]),
        surgery=str(d["surgery"]),
        opioid_tolerant=str(d["opioid_tolerant"]),
        use=str(d["use"]),
        use_note=str(d.get("use_note", "")),
        urls=_tuple(d.get("urls")),
        background=str(d.get("anesthesia_and_background", "")),
        missing=_tuple(d.get("missing")),
        simulation=sim,
        arms=tuple(arms),
        effects=tuple(d.get("effect", [])),
        path=path,
        contrasts=tuple((str(a), str(c)) for a, c in d.get("contrasts", [])),
    )


@functools.lru_cache(maxsize=2)
def load_evidence(folder: str | None = None) -> Evidence:
    """Read the evidence base (``regimens/evidence`` by default).

    Raises
    ------
    EvidenceError
        Listing every malformed entry (file, arm, outcome) and every arm whose regimen does not load.
    """
    root = Path(folder) if folder else EVIDENCE_DIR
    problems: list[str] = []
    trials = []
    for p in sorted((root / "trials").glob("*.toml")):
        t = _trial(p, problems)
        if t is not None:
            trials.append(t)
    ids = [t.id for t in trials]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        problems.append(f"duplicate trial ids {dup}")
    for t in trials:
        for a in t.arms:
            if not a.regimen:
                continue
            try:
                arm_regimen(a, root)
            except RegimenError as exc:
                problems.append(f"{t.id} arm {a.id}: regimen {a.regimen!r}: {exc}")
    findings = {}
    fp = root / "findings.toml"
    if fp.exists():
        try:
            findings = tomllib.loads(fp.read_text())
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"findings.toml: {exc}")
    if problems:
        raise EvidenceError("evidence base: " + "; ".join(problems))
    return Evidence(tuple(trials), findings)


def arm_regimen(arm: Arm, root: Path | None = None):
    """The :class:`regimens.Regimen` of an arm: ``regimens/<name>.toml`` of the evidence folder, else a
    shipped regimen of that name."""
    from .io import get_regimen, load_regimen

    root = root or EVIDENCE_DIR
    p = root / "regimens" / f"{arm.regimen}.toml"
    if p.exists():
        return load_regimen(p)
    return get_regimen(arm.regimen)
