"""The model-library page, generated from the drug metadata: ``python -m pkpd.docs``.

Writes ``docs/model_library.md``: every drug of :mod:`pkpd.drugs` with every parameter (value, unit, IIV,
source, UNVERIFIED flag, note), its covariate effects, routes, notes and references; the analgesic PD of
:mod:`pkpd.pd`, the adverse-effect, pain and demand models (:mod:`pkpd.pain`), the dispensable products
(:mod:`pkpd.drugs.products`) and the MME factors (:mod:`pkpd.mme`), each number with its source. The page
is derived, never edited by hand: ``python -m pkpd.docs --check`` exits with 1 when the committed page
differs from what the library generates (the test suite runs the same comparison).

Label limits live in :mod:`regimens.limits` (``pkpd`` never imports ``regimens``); ``pkpd drugs show NAME``
prints them.

>>> rows = library_rows()
>>> all(r.source for r in rows)
True
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_PATH", "LibraryRow", "library_rows", "main", "model_library_markdown", "write_model_library"]

#: The committed page, relative to the repository root.
DEFAULT_PATH = Path("docs") / "model_library.md"


@dataclass(frozen=True)
class LibraryRow:
    """One sourced number of the library: ``section`` (``pk``, ``covariate``, ``pd``, ``adverse``, ``pain``,
    ``demand``, ``product``, ``mme``), the drug (or model) it belongs to, its name, value, unit, source and
    whether it is flagged UNVERIFIED."""

    section: str
    owner: str
    name: str
    value: str
    unit: str
    source: str
    unverified: bool


def _num(v) -> str:
    if isinstance(v, str):
        return f"`{v}`"
    if v is None:
        return "–"
    return f"{float(v):.6g}"


def _iiv(p) -> str:
    if p.iiv_cv is not None:
        return f"{100 * p.iiv_cv:.3g} % CV"
    if p.iiv_sd is not None:
        return f"SD {p.iiv_sd:.4g} (log)"
    return "–"


def _cell(x) -> str:
    """Markdown table cell: one line, pipes escaped."""
    return " ".join(str(x).split()).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _flag(unverified: bool) -> str:
    return "UNVERIFIED" if unverified else ""


def _pdvalues(obj) -> list[tuple[str, object]]:
    from .pd import PDValue

    return [
        (f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj) if isinstance(getattr(obj, f.name), PDValue)
    ]


def library_rows() -> list[LibraryRow]:
    """Every sourced number the page lists, in page order (see :class:`LibraryRow`)."""
    from .drugs import get_drug, list_drugs
    from .drugs.products import PRODUCTS
    from .mme import ASSUMED_IV_FACTORS, MME_FACTORS
    from .pain import DemandModel, PainModel
    from .pd import PD_LIBRARY, AdverseEffectModel

    rows: list[LibraryRow] = []
    for name in list_drugs():
        d = get_drug(name)
        for p in d.params:
            rows.append(LibraryRow("pk", d.name, p.name, _num(p.value), p.unit, str(p.source), p.is_unverified))
        for c in d.covariates:
            rows.append(
                LibraryRow(
                    "covariate",
                    d.name,
                    f"{c.param}~{c.covariate}",
                    f"{c.form} {c.coefficient:g}",
                    "1",
                    str(c.source),
                    c.is_unverified,
                )
            )
        pd_ = PD_LIBRARY.get(d.name)
        if pd_ is not None:
            for k, v in pd_.values().items():
                rows.append(LibraryRow("pd", d.name, k, _num(v.value), v.unit, str(v.source), v.is_unverified))
    for section, model in (("adverse", AdverseEffectModel()), ("pain", PainModel()), ("demand", DemandModel())):
        for k, v in _pdvalues(model):
            rows.append(
                LibraryRow(section, type(model).__name__, k, _num(v.value), v.unit, str(v.source), v.is_unverified)
            )
    for key, pr in PRODUCTS.items():
        unit = "mg/kg" if pr.per_kg else "mg"
        rows.append(
            LibraryRow(
                "product",
                key,
                "strengths",
                ", ".join(f"{s:g}" for s in pr.strengths_mg),
                unit,
                str(pr.source),
                pr.source.unverified,
            )
        )
    for (drug, route), f in sorted(MME_FACTORS.items()):
        rows.append(LibraryRow("mme", f"{drug} {route}", "factor", _num(f.factor), f.unit, f.source, f.unverified))
    for drug, f in sorted(ASSUMED_IV_FACTORS.items()):
        rows.append(LibraryRow("mme", f"{drug} iv (assumed)", "factor", _num(f.factor), f.unit, f.source, f.unverified))
    return rows


def model_library_markdown() -> str:
    """The page (Markdown), deterministic: the same library always gives the same text."""
    from .drugs import get_drug, list_drugs
    from .drugs.products import PRODUCTS
    from .mme import ASSUMED_IV_FACTORS, MME_FACTORS
    from .pain import DemandModel, PainModel
    from .pd import PD_LIBRARY, AdverseEffectModel

    rows = library_rows()
    n_unv = sum(r.unverified for r in rows)
    lines = [
        "# Model library",
        "",
        "<!-- Generated by `python -m pkpd.docs` from the drug metadata (pkpd.drugs, pkpd.pd, pkpd.pain,",
        "     pkpd.drugs.products, pkpd.mme). Do not edit by hand: tests/test_docs.py fails when this page",
        "     differs from what the generator writes. -->",
        "",
        f"{len(list_drugs())} drugs; {len(rows)} sourced numbers, {n_unv} of them flagged **UNVERIFIED** (values",
        "models.md marks UNVERIFIED, cross-study constructions, assumptions filling the gaps of models.md",
        "section E, and the outcome-model values calibrated on 8 spine-surgery RCTs,",
        "docs/outcome_calibration.md). Sources are given as in",
        "`shared/reference/models.md` (NL = nlmixr2lib transcription of the paper's table; OT/PT/ST = opentiva/",
        "PyTCI/SwiftTCI code; SP = stanpumpR; ABS = abstract). Units: time h, amounts mg, volumes L,",
        "clearances L/h, concentrations mg/L unless a row says otherwise. IIV is a CV where the source gives a",
        "CV and a log-scale SD (omega) where it gives that. Label limits (regimens.limits) are printed by",
        "`pkpd drugs show NAME`.",
        "",
        "## Contents",
        "",
    ]
    summary = []
    for name in list_drugs():
        d = get_drug(name)
        pd_ = PD_LIBRARY.get(name)
        summary.append(
            (
                f"[{d.name}](#{d.name})",
                d.drug_class,
                f"`{d.model}`",
                ", ".join(d.routes),
                pd_.kind if pd_ else "–",
                len(d.params),
                len(d.unverified_params()),
            )
        )
    lines += _table(
        ("drug", "class", "model", "routes", "analgesic PD", "parameters", "UNVERIFIED (PK and covariates)"), summary
    )
    lines += [
        "",
        "Also: [adverse effects](#adverse-effects), [pain and demand](#pain-and-demand),",
        "[products](#products), [MME factors](#mme-factors).",
        "",
    ]
    for name in list_drugs():
        d = get_drug(name)
        lines += [
            f"## {d.name}",
            "",
            f"{d.drug_class}; model `{d.model}`; routes "
            + ", ".join(f"{k} → CMT {v}" for k, v in d.routes.items())
            + ".",
            "",
        ]
        lines += _table(
            ("parameter", "value", "unit", "description", "IIV", "source", "flag", "note"),
            [
                (p.name, _num(p.value), p.unit, p.description, _iiv(p), p.source, _flag(p.is_unverified), p.note)
                for p in d.params
            ],
        )
        if d.covariates:
            lines += [
                "",
                "Covariate effects (forms: power P·(X/R)^c, linear P·(1 + c·(X − R)), exponential "
                "P·exp(c·(X − R)), indicator P·c^X):",
                "",
            ]
            lines += _table(
                ("parameter", "covariate", "form", "reference", "coefficient", "source", "flag", "note"),
                [
                    (
                        c.param,
                        c.covariate,
                        c.form,
                        _num(c.reference),
                        f"{c.coefficient:g}",
                        c.source,
                        _flag(c.is_unverified),
                        c.note,
                    )
                    for c in d.covariates
                ],
            )
        pd_ = PD_LIBRARY.get(d.name)
        if pd_ is not None:
            lines += [
                "",
                f"Analgesic PD: kind `{pd_.kind}`, driven by `{pd_.output}`"
                + (f" × {pd_.output_factor:.6g}" if pd_.output_factor != 1.0 else "")
                + ".",
                "",
            ]
            lines += _table(
                ("PD value", "value", "unit", "source", "flag", "note"),
                [(k, _num(v.value), v.unit, v.source, _flag(v.is_unverified), v.note) for k, v in pd_.values().items()],
            )
            if pd_.notes:
                lines += [""] + [f"- PD: {_cell(n)}" for n in pd_.notes]
        else:
            lines += [
                "",
                "No analgesic PD: the references hold no concentration-effect data the toolkit uses for it (PK only).",
            ]
        prods = [p for p in PRODUCTS.values() if p.drug == d.name]
        if prods:
            lines += ["", "Products (dispensable strengths the optimizer may use):", ""]
            lines += _table(
                ("product", "strengths", "grid", "source", "flag", "note"),
                [
                    (
                        p.key,
                        ", ".join(f"{s:g}" for s in p.strengths_mg) + (" mg/kg" if p.per_kg else " mg"),
                        f"every {p.every_h:g} h" if p.every_h is not None else f"once at {p.at_h:g} h",
                        p.source,
                        _flag(p.source.unverified),
                        p.note,
                    )
                    for p in prods
                ],
            )
        if d.notes:
            lines += ["", "Notes:", ""] + [f"- {_cell(n)}" for n in d.notes]
        if d.references:
            lines += ["", "References:", ""] + [f"- {_cell(r)}" for r in d.references]
        lines.append("")
    for title, anchor_models in (
        ("Adverse effects", (AdverseEffectModel(),)),
        ("Pain and demand", (PainModel(), DemandModel())),
    ):
        lines += [f"## {title}", ""]
        for m in anchor_models:
            doc = (type(m).__doc__ or "").strip().splitlines()[0]
            lines += [f"`{type(m).__name__}` ({_cell(doc)}):", ""]
            lines += _table(
                ("value", "value", "unit", "source", "flag", "note"),
                [(k, _num(v.value), v.unit, v.source, _flag(v.is_unverified), v.note) for k, v in _pdvalues(m)],
            )
            lines.append("")
    lines += [
        "The non-drug modality terms of `PainModel` (`mis_b0_factor`, `education_sensitivity_factor`,",
        "`pt_increment`, `tens_reduction`) have no published effect size in the references: they are",
        "assumptions and off unless `PainModel(enable_assumed_modalities=True)`.",
        "",
    ]
    from .outcome import OUTCOME_PARAMETERS, outcome_posterior

    post = outcome_posterior()
    lines += [
        "## Outcome-model calibration",
        "",
        f"`pkpd.outcome`: the {len(OUTCOME_PARAMETERS)} parameters estimated together from the evidence base "
        "(`regimens/evidence`, `python -m regimens.calibration`; details in "
        "[outcome_calibration.md](outcome_calibration.md)). Posterior "
        f"version {post.version}, combination rule `{post.rule}`, {len(post.draws)} draws; the simulator "
        "uses the medians. Priors: lognormal (median, log SD), logitnormal (median, logit SD), normal "
        "(mean, SD), truncated to the bounds.",
        "",
    ]
    rows = []
    for p_ in OUTCOME_PARAMETERS:
        q = np.quantile(post.draws[p_.name].to_numpy(), [0.05, 0.5, 0.95])
        rows.append(
            (
                p_.name,
                f"{q[1]:.4g}",
                f"{q[0]:.3g} to {q[2]:.3g}",
                p_.unit,
                f"{p_.prior[0]} {p_.prior[1]:g}, {p_.prior[2]:g}",
                f"{p_.bounds[0]:g} to {p_.bounds[1]:g}",
                p_.source,
                _flag(p_.source.unverified),
                p_.description,
            )
        )
    lines += _table(
        ("parameter", "median", "90 % interval", "unit", "prior", "bounds", "prior source", "flag", "meaning"), rows
    )
    lines.append("")
    lines += ["## Products", "", "Every dispensable product (`pkpd.drugs.products`):", ""]
    lines += _table(
        ("product", "strengths", "grid", "source", "flag"),
        [
            (
                p.key,
                ", ".join(f"{s:g}" for s in p.strengths_mg) + (" mg/kg" if p.per_kg else " mg"),
                f"every {p.every_h:g} h" if p.every_h is not None else f"once at {p.at_h:g} h",
                p.source,
                _flag(p.source.unverified),
            )
            for p in PRODUCTS.values()
        ],
    )
    lines += [
        "",
        "## MME factors",
        "",
        "`pkpd.mme` (CDC 2022; the IV factors are assumptions, the CDC table has none):",
        "",
    ]
    lines += _table(
        ("drug", "route", "factor", "unit", "source", "flag", "note"),
        [
            (f.drug, f.route, _num(f.factor), f.unit, f.source, _flag(f.unverified), f.note)
            for _, f in sorted(MME_FACTORS.items())
        ]
        + [
            (f.drug, "iv (assumed by the simulator)", _num(f.factor), f.unit, f.source, _flag(f.unverified), f.note)
            for _, f in sorted(ASSUMED_IV_FACTORS.items())
        ],
    )
    return "\n".join(lines).rstrip() + "\n"


def write_model_library(path: str | Path = DEFAULT_PATH) -> Path:
    """Write the page to ``path`` (default :data:`DEFAULT_PATH`, relative to the working directory)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(model_library_markdown(), encoding="utf-8")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pkpd.docs [--out PATH] [--check]``; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m pkpd.docs", description="Generate docs/model_library.md.")
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH, help="page to write (default %(default)s)")
    ap.add_argument("--check", action="store_true", help="exit 1 if the page differs from the generated text")
    ns = ap.parse_args(argv)
    if ns.check:
        current = ns.out.read_text(encoding="utf-8") if ns.out.is_file() else None
        if current != model_library_markdown():
            print(f"{ns.out} is out of date: run `python -m pkpd.docs`", file=sys.stderr)
            return 1
        print(f"{ns.out} is up to date")
        return 0
    print(f"wrote {write_model_library(ns.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
