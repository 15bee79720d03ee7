"""Short text form of a regimen: one item per line, ``#`` comments.

Grammar (keywords are case-insensitive; times take a unit, ``h`` or ``min``; doses ``mg``, ``g``, ``mcg``)::

    # header lines: optional; their values run to the end of the line (no comments after them);
    # 'description:' and 'reference:' may be repeated
    name: C1
    description: ERAS standard of care
    horizon: 72h
    reference: PROSPECT complex spine, Eur J Anaesthesiol 2021
    structure: oxycodone = models/oxycodone.toml   # a drug's structural model written in the model language

    acetaminophen 1000 mg IV q6h from 0h to 72h     # repeated dose; 'to' is exclusive
    acetaminophen 1000 mg PO once at -2h            # single dose
    ketorolac 30 mg IV q6h for 48h if AGE>=65 or WT<50: 15 mg "Toradol label"   # adjustment(s), reason optional
    gabapentin 300 mg PO q8h x3                     # x3: at most 3 doses
    acetaminophen 1000 mg IV q6h over 15min         # each dose a 15-min infusion
    ketamine 0.5 mg/kg IV once at -1h               # per-kg dose (resolved with WT)
    ketamine 0.25 mg/kg/h IV infusion from -3h to 0h  # continuous infusion (mg/kg/h or mg/h)
    bupivacaine_liposomal 266 mg infiltration once at -0.5h
    oxycodone 5 mg PO q4h PRN NRS>=4                # PRN: interval, threshold; 'max 6/24h' optional
    oxycodone 10 mg PO q4h PRN NRS>=7 from 24h to 72h
    hydromorphone 0.2 mg IV PCA lockout 10 min from 0h to 24h   # PCA: 'basal 0.1 mg/h', 'max 1.2 mg/h',
                                                                # 'loading 0.4 mg' optional
    tens on 0h-2h, 8h-10h                           # modality windows; append 'disabled' to switch off
    psych_education                                 # a modality without windows

Route tokens: ``IV`` -> ``iv``, ``PO`` -> ``po``, ``PO ER`` -> ``po_er``, ``infiltration``, ``SC`` -> ``sc`` (or
any route label of the drug). Drug names go through :func:`pkpd.drugs.get_drug` (aliases such as
``paracetamol`` work). Every error names the line number and the offending token and shows a valid line.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ._condition import ConditionError, RegimenError
from ._format import format_regimen_text
from ._model import (
    MODALITY_KINDS,
    PCA,
    PRN,
    ROUTE_ALIASES,
    ROUTE_DISPLAY,
    Adjustment,
    Modality,
    Regimen,
    Scheduled,
    _ItemError,
    _resolve_drug,
)

__all__ = ["EXAMPLES", "RegimenParseError", "format_regimen_text", "parse_regimen_text"]

#: A valid example line per item kind (shown in error messages).
EXAMPLES: dict[str, str] = {
    "scheduled": "acetaminophen 1000 mg IV q6h from 0h to 72h",
    "single": "acetaminophen 1000 mg PO once at -2h",
    "adjustment": "ketorolac 30 mg IV q6h for 48h if AGE>=65 or WT<50: 15 mg",
    "infusion": "ketamine 0.25 mg/kg/h IV infusion from -3h to 0h",
    "prn": "oxycodone 5 mg PO q4h PRN NRS>=4",
    "pca": "hydromorphone 0.2 mg IV PCA lockout 10 min from 0h to 24h",
    "modality": "tens on 0h-2h, 8h-10h",
    "header": "horizon: 72h",
}


class RegimenParseError(RegimenError):
    """A line of a regimen text cannot be read. ``line`` (1-based) and ``token`` locate the problem."""

    def __init__(self, line: int, token: str | None, message: str, example: str, text: str = ""):
        self.line, self.token, self.example = line, token, example
        at = f" (at {token!r})" if token is not None else ""
        shown = f"\n  line {line}: {text.strip()}" if text.strip() else ""
        super().__init__(f"line {line}: {message}{at}{shown}\n  example of a valid line: {example}")


_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|#.*$|>=|<=|==|!=|<|>|:|,|[^\s:,<>=!"#]+|\S')
_NUM_UNIT = re.compile(rf"^({_NUM})([A-Za-zµ/%]*)$")
_INTERVAL = re.compile(rf"^q({_NUM})(h|min)$", re.IGNORECASE)
_RANGE = re.compile(rf"^({_NUM})h?-({_NUM})h?$", re.IGNORECASE)
_COUNT = re.compile(r"^x(\d+)$", re.IGNORECASE)
_PER24 = re.compile(r"^(\d+)/24h$", re.IGNORECASE)
_HEADER = re.compile(r"^\s*(name|description|horizon|horizon_h|reference|structure)\s*:", re.IGNORECASE)
_MASS = {"mg": 1.0, "g": 1000.0, "mcg": 1e-3, "ug": 1e-3, "µg": 1e-3}
_TIME_UNITS = {
    "h": 1.0,
    "hr": 1.0,
    "hrs": 1.0,
    "hour": 1.0,
    "hours": 1.0,
    "min": 1 / 60,
    "mins": 1 / 60,
    "minutes": 1 / 60,
}
_CLAUSES = "q6h, once, at, from, to, for, over, x4, infusion, PRN, NRS>=4, PCA, lockout, basal, max, loading, if"


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def _mass(value: float, unit: str) -> float:
    f = _MASS[unit]
    return value / 1000.0 if f == 1e-3 else value * f


class _Line:
    """Token cursor over one line, with error helpers."""

    def __init__(self, lineno: int, text: str, shown: str | None = None):
        self.lineno, self.text = lineno, text if shown is None else shown
        self.toks = [m.group(0) for m in _TOKEN.finditer(text) if not m.group(0).startswith("#")]
        self.i = 0
        self.kind = "scheduled"

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> str | None:
        tok = self.peek()
        self.i += tok is not None
        return tok

    def error(self, token: str | None, message: str, kind: str | None = None) -> RegimenParseError:
        return RegimenParseError(self.lineno, token, message, EXAMPLES[kind or self.kind], self.text)

    def time(self, what: str) -> tuple[float, str]:
        """Read a time such as ``-2h``, ``30min`` or ``2 h``; returns (hours, token)."""
        tok = self.next()
        if tok is None:
            raise self.error(None, f"expected a time after {what!r} (e.g. '-2h' or '30min') at end of line")
        m = _NUM_UNIT.match(tok)
        if m is None:
            raise self.error(tok, f"expected a time after {what!r}, e.g. '-2h' or '30min'")
        unit = m.group(2).lower()
        if not unit and (self.peek() or "").lower() in _TIME_UNITS:
            unit = self.next().lower()  # type: ignore[union-attr]
        if unit not in _TIME_UNITS:
            raise self.error(tok, f"a time needs a unit, 'h' or 'min' (e.g. '{m.group(1)}h')")
        value = float(m.group(1))
        if not math.isfinite(value):
            raise self.error(tok, "the time must be finite")
        return (value / 60.0 if _TIME_UNITS[unit] != 1.0 else value), tok

    def amount(self, what: str) -> tuple[float, str, str]:
        """Read ``<number> <unit>``; returns (value in mg-based unit, canonical unit, text as written)."""
        tok = self.next()
        if tok is None:
            raise self.error(None, f"expected a dose after {what!r} at end of line")
        m = _NUM_UNIT.match(tok)
        if m is None:
            raise self.error(tok, f"expected a dose such as '1000 mg' after {what!r}")
        unit = m.group(2)
        if not unit:
            unit = self.next() or ""
            if not unit:
                raise self.error(tok, f"expected a unit (mg, mg/kg, mg/kg/h, mg/h) after {tok!r} at end of line")
        value = float(m.group(1))
        if not math.isfinite(value):
            raise self.error(tok, "the dose must be finite")
        u = unit.lower()
        parts = u.split("/")
        if parts[0] not in _MASS:
            raise self.error(
                unit, f"expected a dose unit after {tok!r}: mg, mg/kg, mg/kg/h or mg/h (g and mcg also work)"
            )
        if parts[1:] not in ([], ["kg"], ["kg", "h"], ["h"]):
            raise self.error(unit, "unknown dose unit; use mg, mg/kg, mg/kg/h or mg/h (g and mcg also work)")
        shown = tok if m.group(2) else f"{tok} {unit}"
        return _mass(value, parts[0]), "/".join(["mg", *parts[1:]]), shown


def _route(line: _Line, drug: str, after: str) -> str:
    from pkpd.drugs import get_drug

    routes = get_drug(drug).routes
    shown = ", ".join(ROUTE_DISPLAY.get(r, r) for r in sorted(routes))
    tok = line.next()
    if tok is None:
        raise line.error(None, f"expected a route after {after!r} at end of line; routes of {drug}: {shown}")
    key = tok.lower()
    if key == "po" and (line.peek() or "").lower() == "er":
        line.next()
        key = "po er"
    label = ROUTE_ALIASES.get(key, key)
    if label not in routes:
        known = label in ROUTE_ALIASES.values() or label in ROUTE_DISPLAY
        why = (
            f"{drug} has no route {tok!r}"
            if known or label in _ALL_ROUTE_WORDS
            else f"expected a route (IV, PO, PO ER, SC, infiltration) after {after!r}"
        )
        raise line.error(tok, f"{why}; routes of {drug}: {shown}")
    return label


_ALL_ROUTE_WORDS = {
    "im",
    "epidural",
    "intrathecal",
    "transdermal",
    "td",
    "patch",
    "oral",
    "sl",
    "block",
    "perineural",
    "in",
    "intranasal",
    "pr",
    "rectal",
}


def _parse_item(line: _Line) -> Any:
    """Parse one item line into a Scheduled, PRN, PCA or Modality."""
    first = line.next()
    assert first is not None
    if first.lower() in MODALITY_KINDS:
        return _parse_modality(line, first.lower())
    try:
        drug = _resolve_drug(first, f"drug {first!r}")
    except RegimenError as exc:
        msg = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
        raise line.error(first, msg) from None
    value, unit, shown = line.amount(first)
    route = _route(line, drug, shown)
    fields: dict[str, Any] = {}
    toks: dict[str, str] = {"dose": shown}
    flags: set[str] = set()
    adjustments: list[Adjustment] = []

    def once(key: str, tok: str) -> None:
        if key in fields or key in flags:
            raise line.error(tok, f"{tok!r} is given twice on this line")
        toks[key] = tok

    while (tok := line.next()) is not None:
        low = tok.lower()
        if low == "if":
            adjustments.append(_parse_adjustment(line))
            toks["if"] = tok
            continue
        if adjustments:
            raise line.error(tok, "only further 'if ...: <dose> mg' clauses may follow an adjustment", "adjustment")
        if m := _INTERVAL.match(tok):
            once("every", tok)
            fields["every"] = float(m.group(1)) / (60.0 if m.group(2).lower() == "min" else 1.0)
        elif low == "every":
            once("every", tok)
            fields["every"], _ = line.time("every")
        elif low == "once":
            once("once", tok)
            flags.add("once")
        elif low in ("at", "from"):
            once("start", tok)
            fields["start"], toks["start_value"] = line.time(low)
        elif low == "to":
            once("stop", tok)
            fields["stop"], toks["stop_value"] = line.time(low)
        elif low == "for":
            once("for", tok)
            fields["for"], toks["stop_value"] = line.time(low)
        elif low == "over":
            once("over", tok)
            fields["over"], _ = line.time(low)
        elif low == "infusion":
            once("infusion", tok)
            flags.add("infusion")
        elif m := _COUNT.match(tok):
            once("count", tok)
            fields["count"] = int(m.group(1))
        elif low == "count":
            once("count", tok)
            n = line.next()
            if n is None or not n.isdigit():
                raise line.error(n, "expected a whole number of doses after 'count'")
            fields["count"] = int(n)
        elif low == "prn":
            once("prn", tok)
            flags.add("prn")
            line.kind = "prn"
        elif low == "nrs":
            once("nrs", tok)
            op, num = line.next(), line.next()
            if op != ">=":
                raise line.error(op, "write the PRN threshold as 'NRS>=4' (dose given at or above it)", "prn")
            if num is None or not re.fullmatch(_NUM, num):
                raise line.error(num, "expected a number (0-10) after 'NRS>='", "prn")
            fields["nrs"] = float(num)
        elif low == "pca":
            once("pca", tok)
            flags.add("pca")
            line.kind = "pca"
        elif low == "lockout":
            once("lockout", tok)
            fields["lockout"], _ = line.time("lockout")
        elif low == "basal":
            once("basal", tok)
            v, u, t = line.amount("basal")
            if u != "mg/h":
                raise line.error(t, "write the PCA basal rate in mg/h, e.g. 'basal 0.1 mg/h'", "pca")
            fields["basal"] = v
        elif low == "loading":
            once("loading", tok)
            v, u, t = line.amount("loading")
            if u != "mg":
                raise line.error(t, "write the PCA loading dose in mg, e.g. 'loading 0.4 mg'", "pca")
            fields["loading"] = v
        elif low == "max":
            once("max", tok)
            nxt = line.peek()
            if nxt is not None and (m := _PER24.match(nxt)):
                line.next()
                fields["max24"], toks["max24"] = int(m.group(1)), tok
            else:
                v, u, t = line.amount("max")
                if u != "mg/h":
                    raise line.error(t, "write 'max 6/24h' (PRN doses per 24 h) or 'max 1.2 mg/h' (PCA hourly maximum)")
                fields["hourly_max"], toks["hourly_max"] = v, tok
        else:
            raise line.error(tok, f"unexpected word; expected one of: {_CLAUSES}")

    if "pca" in flags:
        return _build_pca(line, drug, route, value, unit, fields, flags, adjustments, toks)
    if "prn" in flags:
        return _build_prn(line, drug, route, value, unit, fields, flags, adjustments, toks)
    return _build_scheduled(line, drug, route, value, unit, fields, flags, adjustments, toks)


def _reject(line: _Line, what: str, fields: dict, flags: set, toks: dict, allowed: set[str], adjustments: list) -> None:
    for key in [*fields, *flags]:
        if key not in allowed and key != "pca":
            raise line.error(toks[key], f"{toks[key]!r} does not apply to {what}")
    if adjustments:
        raise line.error(toks["if"], f"adjustments ('if ...: <dose> mg') do not apply to {what}")


def _window(line: _Line, fields: dict, toks: dict) -> tuple[float, float | None]:
    start = fields.get("start", 0.0)
    stop = fields.get("stop")
    if "for" in fields:
        if stop is not None:
            raise line.error(toks["for"], "give either 'to <time>' or 'for <duration>', not both")
        if not fields["for"] > 0:
            raise line.error(toks["stop_value"], "the duration after 'for' must be > 0")
        stop = start + fields["for"]
    return start, stop


def _build_scheduled(
    line: _Line, drug: str, route: str, value: float, unit: str, fields: dict, flags: set, adjustments: list, toks: dict
) -> Scheduled:
    line.kind = "scheduled"
    allowed = {"every", "once", "start", "stop", "for", "over", "infusion", "count"}
    _reject(
        line,
        "a scheduled dose (remove it, or add 'PRN NRS>=4' / 'PCA lockout 10 min')",
        fields,
        flags,
        toks,
        allowed,
        [],
    )
    start, stop = _window(line, fields, toks)
    kw: dict[str, Any] = {
        "drug": drug,
        "route": route,
        "start_h": start,
        "stop_h": stop,
        "adjustments": tuple(adjustments),
    }
    if unit in ("mg/h", "mg/kg/h"):
        line.kind = "infusion"
        for key in ("every", "once", "count", "over"):
            if key in fields or key in flags:
                raise line.error(
                    toks[key], f"a continuous infusion ({unit}) runs from 'from' to 'to'; {toks[key]!r} does not apply"
                )
        kw["rate_mg_h" if unit == "mg/h" else "rate_mg_per_kg_h"] = value
        return Scheduled(**kw)
    if "infusion" in flags and "over" not in fields:
        raise line.error(
            "infusion",
            f"a {unit} dose given as an infusion needs a duration, e.g. 'over 30min'; for a "
            "continuous infusion give a rate in mg/h or mg/kg/h",
            "infusion",
        )
    kw["dose_mg" if unit == "mg" else "dose_mg_per_kg"] = value
    kw["infusion_h"] = fields.get("over", 0.0)
    if "once" in flags:
        line.kind = "single"
        if "every" in fields:
            raise line.error(toks["every"], "a line is either 'once' or repeated ('q6h'), not both")
        for key in ("stop", "for", "count"):
            if key in fields:
                raise line.error(
                    toks[key], "a single dose ('once') takes no end time or count; use 'q6h ... to 48h' to repeat it"
                )
        kw["stop_h"] = None
        return Scheduled(**kw)
    if "every" not in fields:
        if "start" in fields and "stop" not in fields and "for" not in fields and "count" not in fields:
            line.kind = "single"
            kw["stop_h"] = None
            return Scheduled(**kw)
        raise line.error(
            None,
            "missing schedule: write 'q6h' (repeated), 'once at -2h' (single) or a rate in "
            "mg/h or mg/kg/h with 'infusion from -3h to 0h'",
        )
    kw["every_h"] = fields["every"]
    kw["count"] = fields.get("count")
    return Scheduled(**kw)


def _build_prn(
    line: _Line, drug: str, route: str, value: float, unit: str, fields: dict, flags: set, adjustments: list, toks: dict
) -> PRN:
    line.kind = "prn"
    _reject(
        line, "a PRN line", fields, flags, toks, {"every", "start", "stop", "for", "nrs", "max24", "prn"}, adjustments
    )
    if unit != "mg":
        raise line.error(toks["dose"], "a PRN dose is given in mg")
    if "every" not in fields:
        raise line.error("PRN", "a PRN line needs its minimum interval, e.g. 'q4h'")
    if "nrs" not in fields:
        raise line.error("PRN", "a PRN line needs its pain threshold, e.g. 'NRS>=4'")
    start, stop = _window(line, fields, toks)
    return PRN(drug, route, value, fields["nrs"], fields["every"], start, stop, fields.get("max24"))


def _build_pca(
    line: _Line, drug: str, route: str, value: float, unit: str, fields: dict, flags: set, adjustments: list, toks: dict
) -> PCA:
    line.kind = "pca"
    _reject(
        line,
        "a PCA line",
        fields,
        flags,
        toks,
        {"start", "stop", "for", "lockout", "basal", "loading", "hourly_max"},
        adjustments,
    )
    if unit != "mg":
        raise line.error(toks["dose"], "a PCA demand dose is given in mg")
    if "lockout" not in fields:
        raise line.error("PCA", "a PCA line needs its lockout, e.g. 'lockout 10 min'")
    start, stop = _window(line, fields, toks)
    return PCA(
        drug,
        route,
        value,
        fields["lockout"] * 60.0,
        start,
        stop,
        fields.get("basal", 0.0),
        fields.get("hourly_max"),
        fields.get("loading", 0.0),
    )


def _parse_adjustment(line: _Line) -> Adjustment:
    line.kind = "adjustment"
    cond: list[str] = []
    while (tok := line.next()) != ":":
        if tok is None:
            raise line.error(None, "expected ':' and a dose after the condition, e.g. 'if AGE>=65: 15 mg'")
        cond.append(tok)
    if not cond:
        raise line.error(":", "expected a condition between 'if' and ':'")
    try:
        from ._condition import Condition

        text = Condition.parse(" ".join(cond)).text
    except ConditionError as exc:
        bad = re.search(r"(?:at|unknown covariate) '([^']*)'", str(exc))
        raise line.error(bad.group(1) if bad else " ".join(cond), str(exc)) from None
    dose, unit, tok = line.amount(":")
    if unit != "mg":
        raise line.error(tok, "the adjusted dose is given in mg, e.g. ': 15 mg'")
    reason = ""
    nxt = line.peek()
    if nxt is not None and nxt.startswith('"'):
        if len(nxt) < 2 or not nxt.endswith('"'):
            raise line.error(nxt, "unterminated quoted reason")
        reason = _unescape(line.next())  # type: ignore[arg-type]
    return Adjustment(text, dose, reason)


def _parse_modality(line: _Line, kind: str) -> Modality:
    line.kind = "modality"
    windows: list[tuple[float, float]] = []
    enabled = True
    tok = line.next()
    if tok is not None and tok.lower() == "on":
        while True:
            tok = line.next()
            if tok is None:
                raise line.error(None, "expected a window such as '0h-2h' after 'on'")
            m = _RANGE.match(tok)
            if m:
                windows.append((float(m.group(1)), float(m.group(2))))
            elif _NUM_UNIT.match(tok):
                line.i -= 1
                a, _ = line.time("on")
                sep = line.next()
                if sep is None or sep.lower() not in ("-", "to"):
                    raise line.error(sep, "expected a window such as '0h-2h' or '0h to 2h'")
                b, _ = line.time(sep)
                windows.append((a, b))
            else:
                raise line.error(tok, "expected a window such as '0h-2h'")
            nxt = line.peek()
            if nxt == ",":
                line.next()
                continue
            tok = line.next()
            break
    if tok is not None and tok.lower() == "disabled":
        enabled = False
        tok = line.next()
    if tok is not None:
        raise line.error(tok, f"unexpected word after the {kind} windows; expected ', <window>' or 'disabled'")
    try:
        return Modality(kind, tuple(windows), enabled)
    except RegimenError as exc:
        raise line.error(kind, str(exc)) from None


def parse_regimen_text(text: str, *, name: str = "custom", description: str = "", horizon_h: float = 72.0) -> Regimen:
    """Parse the short text form (see the module docstring) into a :class:`Regimen`.

    Parameters
    ----------
    text
        The regimen text.
    name, description, horizon_h
        Used when the text has no ``name:``, ``description:`` or ``horizon:`` header line.

    Raises
    ------
    RegimenParseError
        On any unreadable line: the message names the line number and the offending token and shows a
        valid example line.
    """
    if not isinstance(text, str):
        raise RegimenError(f"regimen text must be a string, got {type(text).__name__}")
    header: dict[str, Any] = {}
    desc_lines: list[str] = []
    refs: list[str] = []
    structures: list[tuple[str, str]] = []
    items: list[tuple[Any, int, _Line]] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
        if m := _HEADER.match(raw):
            key = m.group(1).lower()
            value = raw[m.end() :]
            value = value.removeprefix(" ")
            if key == "description":
                desc_lines.append(value)
            elif key == "reference":
                if not value.strip():
                    raise RegimenParseError(lineno, "reference:", "empty reference", "reference: Iyer 2023, Spine", raw)
                refs.append(value.strip())
            elif key == "structure":
                drug, eq, path = value.partition("=")
                if not eq or not drug.strip() or not path.strip():
                    raise RegimenParseError(
                        lineno,
                        "structure:",
                        "expected 'structure: <drug> = <model file>'",
                        "structure: oxycodone = models/oxycodone.toml",
                        raw,
                    )
                structures.append((drug.strip(), path.strip()))
            elif key == "name":
                if "name" in header:
                    raise RegimenParseError(lineno, "name:", "'name:' is given twice", "name: C1", raw)
                if not value.strip():
                    raise RegimenParseError(lineno, "name:", "empty regimen name", "name: C1", raw)
                header["name"] = value.strip()
            else:
                if "horizon" in header:
                    raise RegimenParseError(
                        lineno, m.group(1) + ":", "'horizon:' is given twice", EXAMPLES["header"], raw
                    )
                hl = _Line(lineno, value, raw)
                hl.kind = "header"
                h, tok = hl.time("horizon")
                if hl.peek() is not None:
                    raise hl.error(hl.peek(), "unexpected text after the horizon")
                if not h > 0:
                    raise hl.error(tok, "the horizon must be > 0")
                header["horizon"] = h
            continue
        line = _Line(lineno, raw)
        if not line.toks:
            continue
        try:
            item = _parse_item(line)
        except RegimenParseError:
            raise
        except RegimenError as exc:  # construction error: point at the token of the field it names
            msg = str(exc)
            hint = _toks_hint(line)
            tok = next((hint[f] for f in _FIELDS if f in msg and f in hint), line.toks[0])
            raise line.error(tok, msg) from None
        items.append((item, lineno, line))
    try:
        return Regimen(
            name=header.get("name", name),
            description="\n".join(desc_lines) if desc_lines else description,
            scheduled=tuple(i for i, *_ in items if isinstance(i, Scheduled)),
            prn=tuple(i for i, *_ in items if isinstance(i, PRN)),
            pca=tuple(i for i, *_ in items if isinstance(i, PCA)),
            modalities=tuple(i for i, *_ in items if isinstance(i, Modality)),
            horizon_h=header.get("horizon", horizon_h),
            references=tuple(refs),
            structures=tuple(structures),
        )
    except _ItemError as exc:
        for item, _lineno, line in items:
            if item is exc.item:
                line.kind = {Scheduled: "scheduled", PRN: "prn", PCA: "pca", Modality: "modality"}[type(item)]
                raise line.error(line.toks[0], str(exc)) from None
        raise


_FIELDS = (
    "stop_h",
    "start_h",
    "infusion_h",
    "every_h",
    "count",
    "lockout_min",
    "hourly_max_mg",
    "threshold_nrs",
    "min_interval_h",
    "max_per_24h",
    "dose_mg_per_kg",
    "rate_mg_per_kg_h",
    "rate_mg_h",
    "demand_mg",
    "basal_mg_h",
    "loading_mg",
    "dose_mg",
)


def _toks_hint(line: _Line) -> dict[str, str]:
    """Best-effort map of field names to the token that set them (for construction errors)."""
    out: dict[str, str] = {}
    toks = line.toks
    for j, t in enumerate(toks):
        low = t.lower()
        nxt = toks[j + 1] if j + 1 < len(toks) else None
        if low in ("at", "from") and nxt:
            out["start_h"] = nxt
        elif low in ("to", "for") and nxt:
            out["stop_h"] = nxt
        elif low == "over" and nxt:
            out["infusion_h"] = nxt
        elif low == "lockout" and nxt:
            out["lockout_min"] = nxt
        elif low == "max" and nxt:
            out["hourly_max_mg"] = out["max_per_24h"] = nxt
        elif low == "basal" and nxt:
            out["basal_mg_h"] = nxt
        elif low == "loading" and nxt:
            out["loading_mg"] = nxt
        elif _INTERVAL.match(t):
            out["every_h"] = out["min_interval_h"] = t
        elif _COUNT.match(t):
            out["count"] = t
        elif low == "nrs" and j + 2 < len(toks):
            out["threshold_nrs"] = toks[j + 2]
    if len(toks) > 1:
        for f in ("dose_mg", "dose_mg_per_kg", "rate_mg_h", "rate_mg_per_kg_h", "demand_mg"):
            out[f] = toks[1]
    return out


# --------------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------------
