"""Writing a regimen: its short text form and its TOML form (no third-party TOML writer needed).

:func:`format_regimen_text` is read back by :func:`regimens.parse_regimen_text` and :func:`format_regimen_toml`
by :func:`regimens.io.parse_regimen_toml`, each into an equal regimen. Kept apart from the parsers so that
:class:`regimens.Regimen` (``to_text``, ``to_toml``) can use them without an import circle.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from ._condition import format_number

if TYPE_CHECKING:
    from ._model import PCA, PRN, Modality, Regimen, Scheduled

__all__ = ["ROUTE_DISPLAY", "format_regimen_text", "format_regimen_toml"]

#: How a route label is written in the text form.
ROUTE_DISPLAY: dict[str, str] = {"iv": "IV", "po": "PO", "po_er": "PO ER", "infiltration": "infiltration", "sc": "SC"}


def _escape(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _h(x: float) -> str:
    return f"{format_number(x)}h"


def _route_text(route: str) -> str:
    return ROUTE_DISPLAY.get(route, route)


def _scheduled_line(s: Scheduled) -> str:
    if s.rate_mg_per_kg_h is not None:
        amount = f"{format_number(s.rate_mg_per_kg_h)} mg/kg/h"
    elif s.rate_mg_h is not None:
        amount = f"{format_number(s.rate_mg_h)} mg/h"
    elif s.dose_mg_per_kg is not None:
        amount = f"{format_number(s.dose_mg_per_kg)} mg/kg"
    else:
        amount = f"{format_number(s.dose_mg)} mg"  # type: ignore[arg-type]
    parts = [s.drug, amount, _route_text(s.route)]
    if s.is_continuous:
        parts += ["infusion from", _h(s.start_h)]
        if s.stop_h is not None:
            parts += ["to", _h(s.stop_h)]
        return " ".join(parts)
    if s.every_h is None:
        parts += ["once at", _h(s.start_h)]
    else:
        parts += [f"q{_h(s.every_h)}", "from", _h(s.start_h)]
        if s.stop_h is not None:
            parts += ["to", _h(s.stop_h)]
        if s.count is not None:
            parts.append(f"x{s.count}")
    if s.infusion_h:
        parts += ["over", _h(s.infusion_h)]
    for a in s.adjustments:
        parts += ["if", f"{a.when}:", f"{format_number(a.dose_mg)} mg"]
        if a.reason:
            parts.append(_escape(a.reason))
    return " ".join(parts)


def _prn_line(p: PRN) -> str:
    parts = [
        p.drug,
        f"{format_number(p.dose_mg)} mg",
        _route_text(p.route),
        f"q{_h(p.min_interval_h)}",
        "PRN",
        f"NRS>={format_number(p.threshold_nrs)}",
    ]
    if p.start_h != 0 or p.stop_h is not None:
        parts += ["from", _h(p.start_h)]
    if p.stop_h is not None:
        parts += ["to", _h(p.stop_h)]
    if p.max_per_24h is not None:
        parts += ["max", f"{p.max_per_24h}/24h"]
    return " ".join(parts)


def _pca_line(p: PCA) -> str:
    parts = [
        p.drug,
        f"{format_number(p.demand_mg)} mg",
        _route_text(p.route),
        "PCA",
        "lockout",
        f"{format_number(p.lockout_min)} min",
    ]
    if p.basal_mg_h:
        parts += ["basal", f"{format_number(p.basal_mg_h)} mg/h"]
    if p.hourly_max_mg is not None:
        parts += ["max", f"{format_number(p.hourly_max_mg)} mg/h"]
    if p.loading_mg:
        parts += ["loading", f"{format_number(p.loading_mg)} mg"]
    if p.start_h != 0 or p.stop_h is not None:
        parts += ["from", _h(p.start_h)]
    if p.stop_h is not None:
        parts += ["to", _h(p.stop_h)]
    return " ".join(parts)


def _modality_line(m: Modality) -> str:
    out = m.kind
    if m.windows:
        out += " on " + ", ".join(f"{_h(a)}-{_h(b)}" for a, b in m.windows)
    if not m.enabled:
        out += " disabled"
    return out


def format_regimen_text(regimen: Regimen) -> str:
    """The text form of ``regimen`` (header lines, then scheduled, PRN, PCA and modality lines)."""
    lines = [f"name: {regimen.name}"]
    if regimen.description:
        lines += [f"description: {d}" for d in regimen.description.split("\n")]
    lines.append(f"horizon: {_h(regimen.horizon_h)}")
    lines += [f"reference: {r}" for r in regimen.references]
    lines += [f"structure: {drug} = {path}" for drug, path in regimen.structures]
    groups = (
        ("scheduled", regimen.scheduled, _scheduled_line),
        ("as needed (PRN)", regimen.prn, _prn_line),
        ("PCA", regimen.pca, _pca_line),
        ("non-drug modalities", regimen.modalities, _modality_line),
    )
    for title, items, fmt in groups:
        if items:
            lines += ["", f"# {title}"]
            lines += [fmt(i) for i in items]
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _table(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        v = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name in ("drug", "route", "kind") or (v != default and v is not None and v != ()):
            out[f.name] = v
    return out


def format_regimen_toml(regimen: Regimen) -> str:
    """TOML text of ``regimen``; :func:`parse_regimen_toml` reads it back into an equal regimen."""
    lines = [
        f"# Regimen {regimen.name} (written by regimens; times in h after the end of surgery, doses in mg)",
        f"name = {_value(regimen.name)}",
        f"description = {_value(regimen.description)}",
        f"horizon_h = {_value(regimen.horizon_h)}",
    ]
    if regimen.references:
        lines.append("references = [")
        lines += [f"    {_value(r)}," for r in regimen.references]
        lines.append("]")
    if regimen.structures:
        lines += ["", "[structures]  # drugs whose structural model is a model-language file"]
        lines += [f"{drug} = {_value(path)}" for drug, path in regimen.structures]
    for table, items in (
        ("scheduled", regimen.scheduled),
        ("prn", regimen.prn),
        ("pca", regimen.pca),
        ("modality", regimen.modalities),
    ):
        for item in items:
            lines += ["", f"[[{table}]]"]
            for key, v in _table(item).items():
                if key == "adjustments":
                    adj = ", ".join(
                        "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in _table(a).items()) + " }" for a in v
                    )
                    lines.append(f"adjustments = [{adj}]")
                else:
                    lines.append(f"{key} = {_value(v)}")
    return "\n".join(lines) + "\n"
