"""Marketed products of the drug library: the strengths a dose can be made of and the dosing grids.

The regimen optimizer (:mod:`regimens.optimize`) chooses doses only among these strengths and only at
these times, so every proposal is something a pharmacy can dispense and a ward can give.

Each :class:`Product` is one (drug, route) pair with

* ``strengths_mg``: the doses that can be given as one administration (mg), sorted; 0 is always
  allowed (the slot is skipped). For doses per kg (ketamine) ``per_kg=True`` and the strengths are
  mg/kg.
* ``every_h``: the scheduling grid (h) of post-operative doses, or ``None`` for a single
  intra-operative dose given at ``at_h`` (h after the end of surgery; negative = during surgery).
* ``source``: where the strengths and grid come from. The strength lists of clinical.md 3.2
  ("Decisions") are cited as such; grids and strengths from general knowledge are flagged UNVERIFIED.

References
----------
clinical.md 3.2 (SPINE-72 decisions): oxycodone 5 mg steps; acetaminophen 325/500/650/1,000 mg;
celecoxib 100/200 mg; gabapentin 100/300 mg; ketorolac 15/30 mg; liposomal bupivacaine 0/133/266 mg;
"scheduled doses on a 1-h (IV) or 4-6-h (oral) grid over 0-72 h".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelSpecError
from ._base import Source
from .library import get_drug

__all__ = ["Product", "PRODUCTS", "get_product", "list_products"]

_SPINE72 = "clinical.md 3.2, SPINE-72 decisions"


@dataclass(frozen=True)
class Product:
    """Dispensable strengths and dosing grid of one drug by one route (see the module docstring)."""

    drug: str
    route: str
    strengths_mg: tuple[float, ...]
    every_h: float | None
    source: Source
    at_h: float | None = None
    per_kg: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        d = get_drug(self.drug)
        if d.name != self.drug:
            raise ModelSpecError(f"product {self.drug}: use the library name {d.name}")
        if self.route not in d.routes:
            raise ModelSpecError(f"product {self.drug}: route {self.route!r} is not one of {sorted(d.routes)}")
        s = tuple(sorted(float(x) for x in self.strengths_mg))
        if not s or s[0] <= 0 or len(set(s)) != len(s):
            raise ModelSpecError(f"product {self.drug}/{self.route}: strengths must be distinct and > 0")
        object.__setattr__(self, "strengths_mg", s)
        if (self.every_h is None) == (self.at_h is None):
            raise ModelSpecError(f"product {self.drug}/{self.route}: give every_h (scheduled) or at_h (single dose)")
        if self.every_h is not None and self.every_h <= 0:
            raise ModelSpecError(f"product {self.drug}/{self.route}: every_h must be > 0")

    @property
    def key(self) -> str:
        """``drug/route``, the name used in option lists and reports."""
        return f"{self.drug}/{self.route}"

    @property
    def single(self) -> bool:
        """True for a single (intra-operative) dose."""
        return self.every_h is None

    def choices(self) -> tuple[float, ...]:
        """Allowed amounts of one administration, 0 (skipped) first."""
        return (0.0,) + self.strengths_mg


def _unv(detail: str) -> Source:
    return Source("general knowledge (UNVERIFIED)", detail, unverified=True)


#: The products the optimizer may schedule, by ``drug/route``.
PRODUCTS: dict[str, Product] = {
    p.key: p
    for p in (
        Product(
            "acetaminophen",
            "po",
            (325.0, 500.0, 650.0, 1000.0),
            6.0,
            Source(_SPINE72, "acetaminophen 325/500/650/1,000 mg; oral 4-6-h grid (q6h chosen)"),
        ),
        Product(
            "acetaminophen",
            "iv",
            (500.0, 650.0, 1000.0),
            6.0,
            _unv("IV acetaminophen vials are 1,000 mg/100 mL; 500/650 mg are partial doses; q6h as the Ofirmev label"),
        ),
        Product(
            "celecoxib",
            "po",
            (100.0, 200.0),
            12.0,
            Source(_SPINE72, "celecoxib 100/200 mg"),
            note="q12h grid: general knowledge (UNVERIFIED)",
        ),
        Product("ibuprofen", "po", (200.0, 400.0, 600.0, 800.0), 6.0, _unv("ibuprofen tablets 200-800 mg, q6h")),
        Product(
            "ketorolac",
            "iv",
            (15.0, 30.0),
            6.0,
            Source(_SPINE72, "ketorolac 15/30 mg; q6h as the Toradol label (models.md C)"),
        ),
        Product(
            "gabapentin",
            "po",
            (100.0, 300.0, 600.0),
            8.0,
            Source(
                _SPINE72,
                "gabapentin 100/300 mg; 600 mg = 2 x 300 mg, C1's pre-operative dose (clinical.md 3.2: "
                "pre-op 300-600 mg)",
            ),
            note="q8h (TID) grid as C1 (clinical.md 3.2); 600 mg so that the decision space contains C1",
        ),
        Product(
            "bupivacaine_liposomal",
            "infiltration",
            (133.0, 266.0),
            None,
            Source(_SPINE72, "liposomal bupivacaine 0/133/266 mg"),
            at_h=-0.25,
            note="infiltration at wound closure (-0.25 h), as in C1",
        ),
        Product("pregabalin", "po", (25.0, 50.0, 75.0, 150.0), 12.0, _unv("pregabalin capsules 25-150 mg, q12h")),
        Product("codeine", "po", (15.0, 30.0, 60.0), 6.0, _unv("codeine sulfate tablets 15/30/60 mg, q4-6h (q6h)")),
        Product("oxycodone", "po_er", (10.0, 15.0, 20.0), 12.0, _unv("OxyContin 10-80 mg q12h; the three lowest")),
        Product(
            "ketamine",
            "iv",
            (0.25, 0.5),
            None,
            Source("clinical.md 3.2, C1: ketamine 0.5 mg/kg intra-op", "0.25 mg/kg: half dose (UNVERIFIED)"),
            at_h=-2.0,
            per_kg=True,
            note="intra-operative bolus at -2 h, as in C1",
        ),
    )
}


def get_product(key: str) -> Product:
    """The product ``drug/route`` (e.g. ``"acetaminophen/po"``); a clear error lists the known ones."""
    if key in PRODUCTS:
        return PRODUCTS[key]
    raise ModelSpecError(f"unknown product {key!r}; known: {', '.join(PRODUCTS)}")


def list_products() -> list[str]:
    """Keys of every product."""
    return list(PRODUCTS)
