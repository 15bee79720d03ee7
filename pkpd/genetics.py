"""Pharmacogenetics for postoperative analgesia: genotype parsing, CPIC activity scores and phenotypes,
and CPIC drug recommendations (CYP2D6 opioids, CYP2C9 NSAIDs, OPRM1).

Everything here is plain Python (no JAX) and every number is data with a source. The reference is
``shared/reference/models.md`` section D (D1: CYP2D6, CPIC Crews 2021 Clin Pharmacol Ther 110:888; D2:
CYP2C9, CPIC Theken 2020 Clin Pharmacol Ther 108:191) and ``clinical.md`` section 5. Where those files do
not give a value, the entry carries ``unverified=True`` and a note naming the CPIC table to check.

Workflow::

    g = parse_genotype("CYP2D6 *1/*2x2")
    activity_score(g)                       # 3.0
    p = phenotype(g)                        # Phenotype(gene='CYP2D6', activity_score=3.0, label='ultrarapid', ...)
    cpic_recommendation("tramadol", p)      # Recommendation(action='avoid', strength='strong', ...)

Conventions
-----------
Activity score (AS)
    The sum of the activity values of the two alleles (CPIC). CYP2D6 values: normal function 1, decreased
    0.5 except ``*10`` = 0.25, no function 0. CYP2C9 values: normal 1, decreased 0.5, no function 0.
CYP2D6 duplications
    ``*1x2``, ``*2x3``, ``*4x2``, ``*1xN``. The allele's activity value is multiplied by its copy number
    (models.md D1: "Duplications per rule (e.g., duplicated normal allele with *10 = 2.25)"). The score
    itself is **not** capped: CPIC 2021 needs no cap because every AS above 2.25 is ultrarapid, so the
    phenotype saturates at UM. ``xN`` (copy number not resolved) counts as **2 copies**, the fewest a
    duplication can have, so its score is a lower bound; the phenotype says so in ``notes``. Explicit
    copy numbers from 2 to :data:`MAX_COPY_NUMBER` are accepted. ``*5`` (gene deletion) cannot be
    duplicated. Whether CPIC tables treat ``xN`` as exactly 2 copies is **UNVERIFIED** (check the CPIC
    CYP2D6 diplotype-phenotype table). Models fitted on a limited AS range (Ashraf 2024 codeine: AS 0-3)
    should clip the score to that range before using it as a covariate.
CYP2C9 duplications
    Not supported (no CPIC activity rule in the reference); ``*1x2`` for CYP2C9 raises
    :class:`GenotypeError`.
OPRM1
    c.118A>G (rs1799971, A118G, N40D). Genotypes ``AA``, ``AG``, ``GG``; no activity score. CPIC: limited or
    weak evidence, no actionable recommendation (models.md D1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import ModelSpecError

__all__ = [
    "ACTIONS",
    "ALLELE_TABLES",
    "CPIC_DRUGS",
    "CYP2C9_ALLELES",
    "CYP2D6_ALLELES",
    "KNOWN_GENES",
    "MAX_COPY_NUMBER",
    "Allele",
    "Genotype",
    "GenotypeError",
    "Phenotype",
    "Recommendation",
    "activity_score",
    "cpic_recommendation",
    "parse_genotype",
    "phenotype",
    "phenotype_from_score",
]


class GenotypeError(ModelSpecError):
    """A genotype string names an unknown gene or allele, or is malformed, or a genetic query does not
    apply to the gene given (e.g. the activity score of OPRM1)."""


# --------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------

_SRC_2D6_TABLE = "CPIC CYP2D6 allele functionality table; Crews 2021 Clin Pharmacol Ther 110:888"
_SRC_2D6_ASHRAF = (
    _SRC_2D6_TABLE + "; value as used in Ashraf 2024 Clin Pharmacokinet 63:1547, Table 1 footnote "
    "(models.md D1, read via nlmixr2lib)"
)
_SRC_2D6_PHENO = "CPIC Crews 2021 Clin Pharmacol Ther 110:888, Tables 3-4 (PMC8249478); models.md D1"
_SRC_2C9_TABLE = "CPIC CYP2C9 allele functionality table; Theken 2020 Clin Pharmacol Ther 108:191"
_SRC_2C9_PHENO = (
    "CPIC Theken 2020 Clin Pharmacol Ther 108:191, AS-to-phenotype (pypgx documentation mirroring CPIC); models.md D2"
)
_SRC_OPRM1 = (
    "CPIC Crews 2021 Clin Pharmacol Ther 110:888, supplement Tables S5-S10: OPRM1 limited or weak evidence, "
    "no actionable recommendation (models.md D1; clinical.md 5.2)"
)
_SRC_TRAMADOL = "CPIC Crews 2021 Clin Pharmacol Ther 110:888, Table 3 (PMC8249478/table/T3); models.md D1"
_SRC_CODEINE = (
    "CPIC Crews 2021 Clin Pharmacol Ther 110:888 (CPIC API text quoted in a public spec; PharmGKB summary); "
    "models.md D1"
)
_SRC_HYDROCODONE = "CPIC Crews 2021 Clin Pharmacol Ther 110:888, Table 4; models.md D1"
_SRC_OXY = (
    "CPIC Crews 2021 Clin Pharmacol Ther 110:888, supplement Tables S5-S10 (guideline page and abstract); models.md D1"
)
_SRC_NSAID = "CPIC Theken 2020 Clin Pharmacol Ther 108:191; models.md D2"
_SRC_NSAID_PM = _SRC_NSAID + " (CPIC API text quoted in the public spec id 71056878895 and in code id 33456845717)"
_SRC_NSAID_AS1 = _SRC_NSAID + " (UF Health CPIC summary, WEB; exact CPIC wording not read)"
_SRC_NSAID_NM = _SRC_NSAID + "; clinical.md 5.3 ('Standard dose')"
_SRC_MELOX = _SRC_NSAID + " (CPIC API text in the public spec; UF Health)"
_SRC_OXICAM = _SRC_NSAID + " (PharmGKB summary in pypgx documentation)"
_SRC_NOT_2C9 = (
    "UF Health CPIC implementation pages (WEB, secondary) as summarised in models.md D2: "
    "not CYP2C9-dependent, standard dosing; not CPIC guideline wording (Theken 2020 Clin Pharmacol Ther 108:191)"
)


# --------------------------------------------------------------------------------------------------------
# Allele tables
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allele:
    """One star allele and its CPIC activity value.

    Attributes
    ----------
    name
        Star-allele name, e.g. ``"*10"``.
    function
        CPIC function category: ``"normal"``, ``"decreased"`` or ``"no function"``.
    activity_value
        CPIC activity value of one copy of the allele.
    source
        Where the value comes from.
    unverified
        ``True`` when the reference (models.md) does not give this value; confirm it in the table named
        in ``note``.
    note
        Free-text caveat (why it is unverified, where to check, special cases).
    """

    name: str
    function: str
    activity_value: float
    source: str
    unverified: bool = False
    note: str = ""


def _table(*alleles: Allele) -> Mapping[str, Allele]:
    return MappingProxyType({a.name: a for a in alleles})


_CHECK_2D6 = "not listed in models.md D1; check the CPIC CYP2D6 allele functionality table (Crews 2021)"
_CHECK_2C9 = (
    "models.md D2 gives phenotype thresholds but no per-allele values; check the CPIC CYP2C9 allele "
    "functionality table (Theken 2020)"
)

#: CYP2D6 star alleles -> :class:`Allele`. Values verified against models.md D1 (Ashraf 2024 footnote)
#: unless ``unverified``.
CYP2D6_ALLELES: Mapping[str, Allele] = _table(
    Allele("*1", "normal", 1.0, _SRC_2D6_ASHRAF),
    Allele("*2", "normal", 1.0, _SRC_2D6_ASHRAF),
    Allele("*3", "no function", 0.0, _SRC_2D6_ASHRAF),
    Allele("*4", "no function", 0.0, _SRC_2D6_ASHRAF),
    Allele("*5", "no function", 0.0, _SRC_2D6_ASHRAF, note="gene deletion; cannot be duplicated"),
    Allele("*6", "no function", 0.0, _SRC_2D6_ASHRAF),
    Allele("*9", "decreased", 0.5, _SRC_2D6_ASHRAF),
    Allele("*10", "decreased", 0.25, _SRC_2D6_ASHRAF, note="decreased function with activity value 0.25"),
    Allele("*17", "decreased", 0.5, _SRC_2D6_ASHRAF),
    Allele("*29", "decreased", 0.5, _SRC_2D6_ASHRAF),
    Allele("*35", "normal", 1.0, _SRC_2D6_TABLE, unverified=True, note=_CHECK_2D6),
    Allele(
        "*36",
        "no function",
        0.0,
        _SRC_2D6_TABLE,
        unverified=True,
        note=_CHECK_2D6 + "; *36 usually occurs in tandem with *10 (*36+*10), which this parser does not accept",
    ),
    Allele("*40", "no function", 0.0, _SRC_2D6_ASHRAF),
    Allele("*41", "decreased", 0.5, _SRC_2D6_ASHRAF),
)

#: CYP2C9 star alleles -> :class:`Allele`. models.md gives no per-allele values, so all but the reference
#: allele ``*1`` are flagged ``unverified``.
CYP2C9_ALLELES: Mapping[str, Allele] = _table(
    Allele(
        "*1",
        "normal",
        1.0,
        _SRC_2C9_TABLE,
        note="reference allele; models.md D2 'NM AS 2' implies 1 per *1 copy",
    ),
    Allele("*2", "decreased", 0.5, _SRC_2C9_TABLE, unverified=True, note=_CHECK_2C9),
    Allele(
        "*3",
        "no function",
        0.0,
        _SRC_2C9_TABLE,
        unverified=True,
        note=_CHECK_2C9 + "; consistent with models.md A8 (*1/*3 is IM) and clinical.md 3.2 (*3/*3 in AS <= 0.5)",
    ),
    Allele("*5", "decreased", 0.5, _SRC_2C9_TABLE, unverified=True, note=_CHECK_2C9),
    Allele("*6", "no function", 0.0, _SRC_2C9_TABLE, unverified=True, note=_CHECK_2C9),
    Allele("*8", "decreased", 0.5, _SRC_2C9_TABLE, unverified=True, note=_CHECK_2C9),
    Allele("*11", "decreased", 0.5, _SRC_2C9_TABLE, unverified=True, note=_CHECK_2C9),
    Allele(
        "*13",
        "no function",
        0.0,
        _SRC_2C9_TABLE,
        unverified=True,
        note=_CHECK_2C9 + "; consistent with models.md A8 (*1/*13 is IM)",
    ),
)

#: Star-allele tables by gene.
ALLELE_TABLES: Mapping[str, Mapping[str, Allele]] = MappingProxyType(
    {"CYP2D6": CYP2D6_ALLELES, "CYP2C9": CYP2C9_ALLELES}
)

#: Genes :func:`parse_genotype` understands.
KNOWN_GENES: tuple[str, ...] = ("CYP2D6", "CYP2C9", "OPRM1")

#: Largest explicit CYP2D6 copy number accepted in ``*1xN`` notation (a sanity bound, not a CPIC rule).
MAX_COPY_NUMBER = 4

#: Copies counted for an unresolved ``xN`` duplication (the minimum; the score is then a lower bound).
_XN_COPIES = 2

_OPRM1_VARIANT_IDS = ("A118G", "rs1799971", "118", "c.118A>G", "118A>G", "N40D", "Asn40Asp")
_OPRM1_ALLELES = ("A", "G")


# --------------------------------------------------------------------------------------------------------
# Genotype parsing
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Genotype:
    """A parsed diplotype.

    Attributes
    ----------
    gene
        ``"CYP2D6"``, ``"CYP2C9"`` or ``"OPRM1"``.
    alleles
        The two alleles, normalized: star alleles as written (``("*1", "*2x2")``, ``xN`` upper-case N);
        OPRM1 bases sorted (``("A", "G")``).
    text
        The original string.
    """

    gene: str
    alleles: tuple[str, str]
    text: str

    def __str__(self) -> str:
        return f"{self.gene} {'/'.join(self.alleles)}"


_GENE_RE = re.compile(r"^\s*([A-Za-z0-9]+?)(?=\s|\*|$)")
_STAR_RE = re.compile(r"^\*?(\d+)(?:[x×](\d+|N))?$", re.IGNORECASE)


def _known_alleles_msg(gene: str) -> str:
    names = ", ".join(ALLELE_TABLES[gene])
    dup = " Duplications (CYP2D6 only) are written '*1x2' or '*1xN'." if gene == "CYP2D6" else ""
    return f"Known {gene} alleles: {names}.{dup}"


def _split_star(gene: str, token: str, text: str) -> tuple[str, int, bool]:
    """Return (base allele, copy number, copy number exact) for one star-allele token."""
    m = _STAR_RE.match(token)
    if m is None:
        raise GenotypeError(
            f"Cannot read {gene} allele {token!r} in genotype {text!r}: expected a star allele such as '*4' "
            f"or '*2x2'. {_known_alleles_msg(gene)}"
        )
    base = f"*{int(m.group(1))}"
    if base not in ALLELE_TABLES[gene]:
        raise GenotypeError(f"Unknown {gene} allele {base!r} in genotype {text!r}. {_known_alleles_msg(gene)}")
    copies_txt = m.group(2)
    if copies_txt is None:
        return base, 1, True
    if gene != "CYP2D6":
        raise GenotypeError(
            f"Duplication {token!r} in genotype {text!r} is not supported for {gene}: this module has no "
            f"CPIC activity rule for {gene} copy-number variants."
        )
    if base == "*5":
        raise GenotypeError(f"CYP2D6*5 is a gene deletion and cannot be duplicated ({token!r} in {text!r}).")
    if copies_txt.upper() == "N":
        return base, _XN_COPIES, False
    copies = int(copies_txt)
    if not 2 <= copies <= MAX_COPY_NUMBER:
        raise GenotypeError(
            f"Copy number {copies} in {token!r} (genotype {text!r}) is outside 2..{MAX_COPY_NUMBER}; write "
            f"'{base}xN' if the copy number is not resolved."
        )
    return base, copies, True


def _normalize_star(token: str) -> str:
    m = _STAR_RE.match(token)
    assert m is not None
    base = f"*{int(m.group(1))}"
    if m.group(2) is None:
        return base
    n = m.group(2).upper() if m.group(2).upper() == "N" else str(int(m.group(2)))
    return f"{base}x{n}"


def _parse_oprm1(rest: str, text: str) -> tuple[str, str]:
    s = rest.strip()
    ids = sorted(_OPRM1_VARIANT_IDS, key=len, reverse=True)  # longest first: 'c.118A>G' before '118'
    for vid in ids:
        if s.upper().startswith(vid.upper()):
            s = s[len(vid) :]
            break
    else:
        if s and not re.match(r"^[AGag]\s*/?\s*[AGag]$", s):
            raise GenotypeError(
                f"Cannot read OPRM1 genotype {text!r}: expected a variant id ({', '.join(_OPRM1_VARIANT_IDS)}) "
                f"followed by two bases, e.g. 'OPRM1 A118G AG' or 'OPRM1 rs1799971 A/G'."
            )
    s = re.sub(r"\s+", "", s).upper()
    m = re.match(r"^([A-Z])/?([A-Z])$", s)
    if m is None:
        raise GenotypeError(
            f"Cannot read OPRM1 genotype {text!r}: expected two bases after the variant id, e.g. 'AG', 'A/G' or "
            f"'GG'. Known OPRM1 118 alleles: {', '.join(_OPRM1_ALLELES)}."
        )
    bases = (m.group(1), m.group(2))
    for b in bases:
        if b not in _OPRM1_ALLELES:
            raise GenotypeError(
                f"Unknown OPRM1 c.118 allele {b!r} in genotype {text!r}. Known OPRM1 118 alleles: "
                f"{', '.join(_OPRM1_ALLELES)} (A = reference, G = 118G variant)."
            )
    return tuple(sorted(bases))  # type: ignore[return-value]


def parse_genotype(text: str) -> Genotype:
    """Parse a genotype string.

    Parameters
    ----------
    text
        ``"<gene> <allele>/<allele>"``, case- and whitespace-tolerant. Examples: ``"CYP2D6 *1/*4"``,
        ``"CYP2D6*1/*2x2"``, ``"CYP2D6 *1/*1xN"``, ``"cyp2c9 *1/*3"``, ``"OPRM1 A118G AG"``,
        ``"OPRM1 rs1799971 A/G"``, ``"OPRM1 118 GG"``.

    Returns
    -------
    Genotype

    Raises
    ------
    GenotypeError
        Unknown gene (the message lists :data:`KNOWN_GENES`), unknown allele (the message lists the gene's
        known alleles), not exactly two alleles, or an unsupported duplication.
    """
    if not isinstance(text, str) or not text.strip():
        raise GenotypeError(
            f"Empty or non-string genotype {text!r}; expected e.g. 'CYP2D6 *1/*4'. Known genes: "
            f"{', '.join(KNOWN_GENES)}."
        )
    m = _GENE_RE.match(text)
    gene = m.group(1).upper() if m else ""
    if gene not in KNOWN_GENES:
        raise GenotypeError(
            f"Unknown gene {gene or text.strip()!r} in genotype {text!r}. Known genes: {', '.join(KNOWN_GENES)}."
        )
    assert m is not None
    rest = text[m.end() :]
    if gene == "OPRM1":
        return Genotype(gene, _parse_oprm1(rest, text), text)

    compact = re.sub(r"\s+", "", rest)
    parts = compact.split("/")
    if len(parts) != 2 or not all(parts):
        raise GenotypeError(
            f"Cannot read {gene} genotype {text!r}: expected two alleles separated by '/', e.g. "
            f"'{gene} *1/*2'. {_known_alleles_msg(gene)}"
        )
    for token in parts:
        _split_star(gene, token, text)  # validates
    alleles = (_normalize_star(parts[0]), _normalize_star(parts[1]))
    return Genotype(gene, alleles, text)


def _as_genotype(genotype: Genotype | str) -> Genotype:
    return parse_genotype(genotype) if isinstance(genotype, str) else genotype


# --------------------------------------------------------------------------------------------------------
# Activity score and phenotype
# --------------------------------------------------------------------------------------------------------


def _score_details(g: Genotype) -> tuple[float, bool, bool]:
    """(score, exact, any allele unverified)."""
    if g.gene not in ALLELE_TABLES:
        raise GenotypeError(
            f"{g.gene} has no activity score; activity scores are defined for {', '.join(ALLELE_TABLES)}."
        )
    table = ALLELE_TABLES[g.gene]
    score, exact, unverified = 0.0, True, False
    for token in g.alleles:
        base, copies, copies_exact = _split_star(g.gene, token, g.text)
        allele = table[base]
        score += allele.activity_value * copies
        exact = exact and copies_exact
        unverified = unverified or allele.unverified
    return score, exact, unverified


def activity_score(genotype: Genotype | str) -> float:
    """CPIC activity score of a CYP2D6 or CYP2C9 genotype.

    The sum over both alleles of activity value x copy number (``xN`` counts as 2 copies, so the result
    is a lower bound for such genotypes; see the module docstring).

    Parameters
    ----------
    genotype
        A :class:`Genotype` or a string for :func:`parse_genotype`.

    Returns
    -------
    float

    Raises
    ------
    GenotypeError
        For OPRM1 (no activity score) or an invalid genotype string.
    """
    return _score_details(_as_genotype(genotype))[0]


@dataclass(frozen=True)
class Phenotype:
    """A metabolizer phenotype (CYP2D6, CYP2C9) or OPRM1 118G carrier status.

    Attributes
    ----------
    gene
        Gene name.
    activity_score
        CPIC activity score, or ``None`` (OPRM1; or a phenotype built from a label alone).
    label
        ``"ultrarapid"``, ``"normal"``, ``"intermediate"`` or ``"poor"`` for CYP2D6/CYP2C9;
        ``"A/A"``, ``"A/G carrier"`` or ``"G/G"`` for OPRM1.
    source
        The threshold table used.
    notes
        Caveats (``xN`` lower bound, unverified allele values, scores between CPIC bands).
    unverified
        ``True`` when an allele value used is not given in models.md.
    """

    gene: str
    activity_score: float | None
    label: str
    source: str
    notes: tuple[str, ...] = ()
    unverified: bool = False


_CYP_LABELS = ("ultrarapid", "normal", "intermediate", "poor")
_OPRM1_LABELS = {"AA": "A/A", "AG": "A/G carrier", "GG": "G/G"}


def phenotype_from_score(gene: str, score: float) -> Phenotype:
    """Phenotype of a CYP2D6 or CYP2C9 activity score.

    CYP2D6 (CPIC 2021, models.md D1): UM AS > 2.25; NM 1.25 <= AS <= 2.25; IM 0 < AS < 1.25; PM AS = 0.

    CYP2C9 (models.md D2): NM AS 2; IM AS 1-1.5; PM AS 0-0.5. Scores between these bands (possible only
    for a score given directly, e.g. a sampled one) are assigned as AS >= 2 -> normal, 1 <= AS < 2 ->
    intermediate, AS < 1 -> poor, with a note. CYP2C9 scores above 2 are rejected.

    Parameters
    ----------
    gene
        ``"CYP2D6"`` or ``"CYP2C9"`` (case-insensitive).
    score
        Activity score, >= 0.

    Returns
    -------
    Phenotype

    Raises
    ------
    GenotypeError
        Unknown gene, negative or non-finite score, CYP2C9 score above 2.
    """
    gene_u = str(gene).upper()
    if gene_u not in ALLELE_TABLES:
        raise GenotypeError(f"No activity-score phenotype rule for gene {gene!r}; known: {', '.join(ALLELE_TABLES)}.")
    s = float(score)
    if not (s >= 0.0 and s < float("inf")):
        raise GenotypeError(f"{gene_u} activity score must be finite and >= 0, got {score!r}.")
    notes: list[str] = []
    if gene_u == "CYP2D6":
        if s == 0.0:
            label = "poor"
        elif s < 1.25:
            label = "intermediate"
        elif s <= 2.25:
            label = "normal"
        else:
            label = "ultrarapid"
        return Phenotype(gene_u, s, label, _SRC_2D6_PHENO, tuple(notes))
    if s > 2.0:
        raise GenotypeError(f"CYP2C9 activity score {s} is above 2, which CPIC does not define.")
    if s >= 2.0:
        label = "normal"
    elif s >= 1.0:
        label = "intermediate"
    else:
        label = "poor"
    if s not in (0.0, 0.5, 1.0, 1.5, 2.0):
        notes.append(
            f"CYP2C9 AS {s} lies between the CPIC bands (NM 2; IM 1-1.5; PM 0-0.5); assigned '{label}' "
            "by this module's rule (AS >= 2 NM, 1 <= AS < 2 IM, AS < 1 PM)."
        )
    return Phenotype(gene_u, s, label, _SRC_2C9_PHENO, tuple(notes))


def phenotype(genotype: Genotype | str) -> Phenotype:
    """Phenotype of a genotype.

    CYP2D6 and CYP2C9: activity score, then :func:`phenotype_from_score`. OPRM1: 118G carrier status,
    ``AA`` -> ``"A/A"``, ``AG`` -> ``"A/G carrier"``, ``GG`` -> ``"G/G"`` (no activity score).

    Parameters
    ----------
    genotype
        A :class:`Genotype` or a string for :func:`parse_genotype`.

    Returns
    -------
    Phenotype
    """
    g = _as_genotype(genotype)
    if g.gene == "OPRM1":
        key = "".join(sorted(g.alleles))
        if key not in _OPRM1_LABELS:
            raise GenotypeError(f"Unknown OPRM1 genotype {g.alleles!r}; known: AA, AG, GG.")
        return Phenotype("OPRM1", None, _OPRM1_LABELS[key], _SRC_OPRM1)
    score, exact, unverified = _score_details(g)
    base = phenotype_from_score(g.gene, score)
    notes = list(base.notes)
    if not exact:
        notes.append(
            f"Copy number 'xN' counted as {_XN_COPIES} copies: activity score {score} is a lower bound "
            "(UNVERIFIED convention; check the CPIC CYP2D6 diplotype-phenotype table)."
        )
    if unverified:
        table = ALLELE_TABLES[g.gene]
        bases = [_split_star(g.gene, a, g.text)[0] for a in g.alleles]
        names = sorted({b for b in bases if table[b].unverified})
        notes.append(f"Activity value of {', '.join(names)} not given in models.md (UNVERIFIED).")
    return Phenotype(g.gene, score, base.label, base.source, tuple(notes), unverified)


_phenotype_of = phenotype  # alias: cpic_recommendation's argument is named ``phenotype``

# --------------------------------------------------------------------------------------------------------
# CPIC recommendations
# --------------------------------------------------------------------------------------------------------

#: Possible values of :attr:`Recommendation.action`.
ACTIONS: tuple[str, ...] = (
    "avoid",
    "label_dose",
    "reduce_dose",
    "alternative_if_no_response",
    "no_recommendation",
)


@dataclass(frozen=True)
class Recommendation:
    """A CPIC recommendation for one drug and one phenotype.

    Attributes
    ----------
    drug
        Drug name (lower case).
    gene
        Gene the recommendation is about.
    phenotype
        Phenotype label it applies to.
    action
        One of :data:`ACTIONS`. ``"avoid"`` also encodes CPIC's "choose an alternative drug".
    strength
        CPIC classification (``"strong"``, ``"moderate"``, ``"optional"``), or ``None`` where the reference
        does not state it.
    text
        CPIC wording (quoted where models.md quotes it) or a paraphrase.
    source
        Guideline, table and the models.md section.
    dose_factor_low, dose_factor_high
        Starting-dose multiplier range, relative to ``dose_reference``; ``None`` when not applicable.
    dose_reference
        What the factor multiplies, e.g. ``"lowest recommended starting dose"``.
    max_dose_factor_low, max_dose_factor_high
        Cap on titration as a fraction of the maximum recommended dose, or ``None``.
    unverified
        ``True`` when the exact wording or part of the content is not in models.md.
    note
        Caveats.
    """

    drug: str
    gene: str
    phenotype: str
    action: str
    strength: str | None
    text: str
    source: str
    dose_factor_low: float | None = None
    dose_factor_high: float | None = None
    dose_reference: str | None = None
    max_dose_factor_low: float | None = None
    max_dose_factor_high: float | None = None
    unverified: bool = False
    note: str = ""


@dataclass(frozen=True)
class _Rule:
    action: str
    strength: str | None
    text: str
    source: str
    dose_factor: tuple[float, float] | None = None
    dose_reference: str | None = None
    max_dose_factor: tuple[float, float] | None = None
    unverified: bool = False
    note: str = ""


@dataclass(frozen=True)
class _DrugGuide:
    gene: str
    rules: Mapping[str, _Rule]  # key: CYP2D6 label, or CYP2C9 bucket "AS2", "AS1.5", "AS1", "PM", or "*"
    kind: str = "phenotype"  # "phenotype" (label keys), "cyp2c9_as" (score buckets), "any" (single "*" rule)


_STRENGTH_NOT_GIVEN = "strength not given in models.md D1; check CPIC Crews 2021 Table 3/4"

_TRAMADOL = _DrugGuide(
    "CYP2D6",
    {
        "ultrarapid": _Rule("avoid", "strong", "Avoid tramadol (potential for toxicity).", _SRC_TRAMADOL),
        "normal": _Rule("label_dose", "strong", "Use label-recommended age- or weight-specific dosing.", _SRC_TRAMADOL),
        "intermediate": _Rule(
            "alternative_if_no_response",
            "optional",
            "Use label-recommended dosing; if no response, consider a non-codeine opioid.",
            _SRC_TRAMADOL,
        ),
        "poor": _Rule("avoid", "strong", "Avoid tramadol (possibility of diminished analgesia).", _SRC_TRAMADOL),
    },
)

_CODEINE = _DrugGuide(
    "CYP2D6",
    {
        "ultrarapid": _Rule(
            "avoid", None, "Avoid codeine use.", _SRC_CODEINE, unverified=True, note=_STRENGTH_NOT_GIVEN
        ),
        "normal": _Rule(
            "label_dose",
            None,
            "Use label-recommended age- or weight-specific dosing.",
            _SRC_CODEINE,
            unverified=True,
            note=_STRENGTH_NOT_GIVEN,
        ),
        "intermediate": _Rule(
            "label_dose",
            None,
            "Use label-recommended age- or weight-specific dosing (clinical.md 5.1: 'Label dosing with monitoring').",
            _SRC_CODEINE,
            unverified=True,
            note=_STRENGTH_NOT_GIVEN,
        ),
        "poor": _Rule(
            "avoid",
            "strong",
            "Avoid codeine use because of possibility of diminished analgesia",
            _SRC_CODEINE,
        ),
    },
)

_HYDROCODONE = _DrugGuide(
    "CYP2D6",
    {
        "ultrarapid": _Rule(
            "no_recommendation", None, "No recommendation for ultrarapid metabolizers.", _SRC_HYDROCODONE
        ),
        "normal": _Rule(
            "label_dose",
            None,
            "Use label-recommended age- or weight-specific dosing.",
            _SRC_HYDROCODONE,
            unverified=True,
            note=_STRENGTH_NOT_GIVEN,
        ),
        "intermediate": _Rule(
            "alternative_if_no_response",
            "optional",
            "Use label-recommended dosing; if no response, consider a non-codeine, non-tramadol opioid.",
            _SRC_HYDROCODONE,
        ),
        "poor": _Rule(
            "alternative_if_no_response",
            "optional",
            "Use label-recommended dosing; if no response, consider a non-codeine, non-tramadol opioid.",
            _SRC_HYDROCODONE,
        ),
    },
)

_NO_ACTION_2D6 = _Rule(
    "no_recommendation",
    None,
    "CPIC: limited or weak evidence; no actionable recommendation (supplement Tables S5-S10).",
    _SRC_OXY,
)
_OXYCODONE = _DrugGuide("CYP2D6", {"*": _NO_ACTION_2D6}, kind="any")

_LOWEST = "lowest recommended starting dose"
_PM_QUOTE = (
    "Initiate therapy with 25–50% of the lowest recommended starting dose. Titrate dose upward to clinical "
    "effect or 25–50% of the maximum recommended dose with caution."
)


def _nsaid_group_a(drug: str) -> _DrugGuide:
    note_pm = (
        "Titrate only after steady state (>= 8 days for celecoxib in PMs). clinical.md 5.3 adds 'or an alternative'"
    )
    if drug == "celecoxib":
        note_pm += "; FDA celecoxib label: half the lowest dose"
    return _DrugGuide(
        "CYP2C9",
        {
            "AS2": _Rule(
                "label_dose",
                None,
                "Standard (label-recommended) starting dose.",
                _SRC_NSAID_NM,
                unverified=True,
                note="exact CPIC wording for NM not in models.md",
            ),
            "AS1.5": _Rule(
                "label_dose",
                None,
                "AS 1.5: normal starting dose.",
                _SRC_NSAID_AS1,
                unverified=True,
                note="paraphrase; exact CPIC wording not read",
            ),
            "AS1": _Rule(
                "label_dose",
                None,
                "AS 1: start at the lowest recommended dose and titrate (paraphrase).",
                _SRC_NSAID_AS1,
                dose_factor=(1.0, 1.0),
                dose_reference=_LOWEST,
                unverified=True,
                note="paraphrase; exact CPIC wording not read",
            ),
            "PM": _Rule(
                "reduce_dose",
                None,
                _PM_QUOTE,
                _SRC_NSAID_PM,
                dose_factor=(0.25, 0.5),
                dose_reference=_LOWEST,
                max_dose_factor=(0.25, 0.5),
                note=note_pm,
            ),
        },
        kind="cyp2c9_as",
    )


_MELOXICAM = _DrugGuide(
    "CYP2C9",
    {
        "AS2": _Rule(
            "label_dose",
            None,
            "Standard starting dose.",
            _SRC_NSAID_NM,
            unverified=True,
            note="NM wording not in models.md D2; clinical.md 5.3 says 'Standard'",
        ),
        "AS1.5": _Rule(
            "label_dose",
            None,
            "Standard starting dose.",
            _SRC_NSAID_NM,
            unverified=True,
            note="AS 1.5 wording not in models.md D2; clinical.md 5.3 says 'Standard'",
        ),
        "AS1": _Rule(
            "reduce_dose",
            None,
            "AS 1: 50% of the lowest starting dose, titrate to 50% of maximum (>= 7 days between steps).",
            _SRC_MELOX,
            dose_factor=(0.5, 0.5),
            dose_reference=_LOWEST,
            max_dose_factor=(0.5, 0.5),
        ),
        "PM": _Rule("avoid", None, "Poor metabolizer: choose an alternative drug.", _SRC_MELOX),
    },
    kind="cyp2c9_as",
)

_OXICAM = _DrugGuide(
    "CYP2C9",
    {
        "AS2": _Rule(
            "label_dose",
            None,
            "Standard starting dose.",
            _SRC_OXICAM,
            unverified=True,
            note="models.md D2 gives only the PM/AS 1 recommendation for this drug",
        ),
        "AS1.5": _Rule(
            "label_dose",
            None,
            "Standard starting dose.",
            _SRC_OXICAM,
            unverified=True,
            note="models.md D2 gives only the PM/AS 1 recommendation for this drug",
        ),
        "AS1": _Rule("avoid", None, "IM with AS 1: choose an alternative drug.", _SRC_OXICAM),
        "PM": _Rule("avoid", None, "Poor metabolizer: choose an alternative drug.", _SRC_OXICAM),
    },
    kind="cyp2c9_as",
)

_NOT_2C9 = _Rule(
    "label_dose",
    None,
    "Not CYP2C9-dependent: standard (label) dosing.",
    _SRC_NOT_2C9,
    note="secondary web source, not CPIC guideline wording",
)

_GUIDES: Mapping[str, _DrugGuide] = MappingProxyType(
    {
        "tramadol": _TRAMADOL,
        "codeine": _CODEINE,
        "hydrocodone": _HYDROCODONE,
        "oxycodone": _OXYCODONE,
        "methadone": _OXYCODONE,
        "celecoxib": _nsaid_group_a("celecoxib"),
        "ibuprofen": _nsaid_group_a("ibuprofen"),
        "flurbiprofen": _nsaid_group_a("flurbiprofen"),
        "lornoxicam": _nsaid_group_a("lornoxicam"),
        "meloxicam": _MELOXICAM,
        "piroxicam": _OXICAM,
        "tenoxicam": _OXICAM,
        "ketorolac": _DrugGuide("CYP2C9", {"*": _NOT_2C9}, kind="any"),
        "naproxen": _DrugGuide("CYP2C9", {"*": _NOT_2C9}, kind="any"),
        "aspirin": _DrugGuide("CYP2C9", {"*": _NOT_2C9}, kind="any"),
        "sulindac": _DrugGuide("CYP2C9", {"*": _NOT_2C9}, kind="any"),
    }
)

#: Drugs with an entry in the recommendation table (others get ``no_recommendation``).
CPIC_DRUGS: frozenset[str] = frozenset(_GUIDES)

_OPIOIDS = frozenset({"tramadol", "codeine", "hydrocodone", "oxycodone", "methadone"})


def _cyp2c9_bucket(p: Phenotype) -> tuple[str, str]:
    """(rule key, note) for a CYP2C9 phenotype."""
    s = p.activity_score
    if s is None:
        if p.label == "normal":
            return "AS2", ""
        if p.label == "poor":
            return "PM", ""
        if p.label == "intermediate":
            return "AS1", "IM without an activity score: the more conservative AS 1 recommendation is used."
        raise GenotypeError(f"Unknown CYP2C9 phenotype label {p.label!r}; known: normal, intermediate, poor.")
    if s >= 2.0:
        return "AS2", ""
    if s >= 1.5:
        return "AS1.5", ""
    if s >= 1.0:
        return "AS1", ""
    return "PM", ""


def cpic_recommendation(drug: str, phenotype: Phenotype | Genotype | str) -> Recommendation:
    """CPIC recommendation for a drug given a phenotype.

    Covered: tramadol, codeine, hydrocodone (CYP2D6, Crews 2021); oxycodone and methadone (CYP2D6: no
    actionable recommendation); celecoxib, ibuprofen, flurbiprofen, lornoxicam, meloxicam, piroxicam,
    tenoxicam (CYP2C9, Theken 2020); ketorolac, naproxen, aspirin, sulindac (not CYP2C9-dependent: label
    dosing). OPRM1 with any opioid: no actionable recommendation.

    A drug not in the table, or a drug paired with a gene its guideline does not cover, gives
    ``action="no_recommendation"`` (never an exception).

    Parameters
    ----------
    drug
        Drug name (case-insensitive).
    phenotype
        A :class:`Phenotype`, or a :class:`Genotype` / genotype string (its phenotype is computed).

    Returns
    -------
    Recommendation

    Raises
    ------
    GenotypeError
        If ``phenotype`` is a string that does not parse, or carries a label unknown for its gene.
    """
    p = phenotype if isinstance(phenotype, Phenotype) else _phenotype_of(phenotype)
    name = str(drug).strip().lower()
    guide = _GUIDES.get(name)
    if p.gene == "OPRM1":
        if name in _OPIOIDS:
            return Recommendation(
                name,
                "OPRM1",
                p.label,
                "no_recommendation",
                None,
                "CPIC: OPRM1 evidence limited or weak; no actionable recommendation.",
                _SRC_OPRM1,
            )
        return Recommendation(
            name,
            "OPRM1",
            p.label,
            "no_recommendation",
            None,
            f"No CPIC guideline covers {name} with OPRM1.",
            _SRC_OPRM1,
        )
    if guide is None:
        return Recommendation(
            name,
            p.gene,
            p.label,
            "no_recommendation",
            None,
            f"No CPIC guideline covers {name} (this module's table: CPIC Crews 2021 CYP2D6 opioids; Theken 2020 "
            "CYP2C9 NSAIDs).",
            "models.md D1-D2",
        )
    if guide.gene != p.gene:
        return Recommendation(
            name,
            p.gene,
            p.label,
            "no_recommendation",
            None,
            f"No CPIC guideline covers {name} with {p.gene}; its guideline is by {guide.gene}.",
            "models.md D1-D2",
        )
    valid = _CYP_LABELS if p.gene == "CYP2D6" else _CYP_LABELS[1:]
    if p.label not in valid:
        raise GenotypeError(f"Unknown {p.gene} phenotype label {p.label!r}; known: {', '.join(valid)}.")
    extra_note = ""
    if guide.kind == "any":
        rule = guide.rules["*"]
    elif guide.kind == "cyp2c9_as":
        key, extra_note = _cyp2c9_bucket(p)
        rule = guide.rules[key]
    else:
        rule = guide.rules[p.label]
    note = "; ".join(n for n in (rule.note, extra_note) if n)
    lo, hi = rule.dose_factor if rule.dose_factor else (None, None)
    mlo, mhi = rule.max_dose_factor if rule.max_dose_factor else (None, None)
    return Recommendation(
        drug=name,
        gene=p.gene,
        phenotype=p.label,
        action=rule.action,
        strength=rule.strength,
        text=rule.text,
        source=rule.source,
        dose_factor_low=lo,
        dose_factor_high=hi,
        dose_reference=rule.dose_reference,
        max_dose_factor_low=mlo,
        max_dose_factor_high=mhi,
        unverified=rule.unverified,
        note=note,
    )
