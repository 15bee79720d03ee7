"""Tests of pkpd.genetics: genotype parsing, CPIC activity scores, phenotypes and recommendations.

Expected values are taken from ``shared/reference/models.md`` (section D, and A5/A6/A8) or
``clinical.md`` section 5; each test quotes the line it checks. They are not copied from the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pkpd.errors import ModelSpecError, PKPDError
from pkpd.genetics import (
    ACTIONS,
    CYP2C9_ALLELES,
    CYP2D6_ALLELES,
    Genotype,
    GenotypeError,
    Phenotype,
    activity_score,
    cpic_recommendation,
    parse_genotype,
    phenotype,
    phenotype_from_score,
)

# ---------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gene", "alleles"),
    [
        ("CYP2D6 *1/*4", "CYP2D6", ("*1", "*4")),
        ("CYP2D6*1/*2x2", "CYP2D6", ("*1", "*2x2")),
        ("  cyp2d6   * 1 /  *2 X2 ", "CYP2D6", ("*1", "*2x2")),
        ("CYP2D6 *1/*1xN", "CYP2D6", ("*1", "*1xN")),
        ("CYP2D6 *4x2/*10", "CYP2D6", ("*4x2", "*10")),
        ("cyp2c9 *1/*3", "CYP2C9", ("*1", "*3")),
        ("CYP2C9*13/*2", "CYP2C9", ("*13", "*2")),
        ("OPRM1 A118G AG", "OPRM1", ("A", "G")),
        ("OPRM1 rs1799971 A/G", "OPRM1", ("A", "G")),
        ("OPRM1 118 GG", "OPRM1", ("G", "G")),
        ("oprm1  a118g   g / a", "OPRM1", ("A", "G")),
        ("OPRM1 c.118A>G AA", "OPRM1", ("A", "A")),
    ],
)
def test_parse_genotype_variants(text: str, gene: str, alleles: tuple[str, str]) -> None:
    g = parse_genotype(text)
    assert isinstance(g, Genotype)
    assert g.gene == gene
    assert g.alleles == alleles
    assert g.text == text


def test_unknown_gene_lists_known_genes() -> None:
    with pytest.raises(GenotypeError) as exc:
        parse_genotype("CYP2C19 *1/*2")
    msg = str(exc.value)
    assert "CYP2C19" in msg
    for gene in ("CYP2D6", "CYP2C9", "OPRM1"):
        assert gene in msg


def test_unknown_allele_lists_known_alleles() -> None:
    with pytest.raises(GenotypeError) as exc:
        parse_genotype("CYP2D6 *1/*99")
    msg = str(exc.value)
    assert "*99" in msg
    for allele in ("*1", "*4", "*10", "*41"):
        assert allele in msg
    with pytest.raises(GenotypeError, match=r"\*3"):
        parse_genotype("CYP2C9 *1/*4")  # *4 is not in the CYP2C9 table; message lists *3 among known ones


@pytest.mark.parametrize(
    "text",
    [
        "",
        "CYP2D6",
        "CYP2D6 *1",
        "CYP2D6 *1/*2/*4",
        "CYP2D6 one/two",
        "CYP2D6 *5x2/*1",  # *5 is the gene deletion (brief): it cannot be duplicated
        "CYP2C9 *1x2/*1",  # no CPIC duplication rule for CYP2C9 in the reference
        "OPRM1 A118G CT",
        "OPRM1 rs12345 AG",
        "OPRM1 A118G",
    ],
)
def test_malformed_genotypes_raise_genotype_error(text: str) -> None:
    with pytest.raises(GenotypeError):
        parse_genotype(text)


def test_genotype_error_is_a_model_spec_error() -> None:
    # The CLI catches PKPDError; GenotypeError must derive from ModelSpecError (brief).
    assert issubclass(GenotypeError, ModelSpecError)
    assert issubclass(GenotypeError, PKPDError)


# ---------------------------------------------------------------------------------------------------------
# Allele tables
# ---------------------------------------------------------------------------------------------------------

# models.md D1: "Allele values used in Ashraf 2024 | 1 for *1 and *2; 0.5 for *9, *17, *29, *41; 0.25 for
# *10; 0 for *3, *4, *5, *6, *40."
MODELS_MD_D1_VALUES = {
    "*1": 1.0,
    "*2": 1.0,
    "*9": 0.5,
    "*17": 0.5,
    "*29": 0.5,
    "*41": 0.5,
    "*10": 0.25,
    "*3": 0.0,
    "*4": 0.0,
    "*5": 0.0,
    "*6": 0.0,
    "*40": 0.0,
}


@pytest.mark.parametrize(("name", "value"), sorted(MODELS_MD_D1_VALUES.items()))
def test_cyp2d6_allele_values_match_models_md(name: str, value: float) -> None:
    allele = CYP2D6_ALLELES[name]
    assert allele.activity_value == value
    assert not allele.unverified  # the value is given in models.md D1
    assert "CPIC" in allele.source


def test_alleles_absent_from_models_md_are_flagged_unverified() -> None:
    # models.md D1 lists no value for *35 or *36; D2 gives CYP2C9 phenotype thresholds but no per-allele
    # values. Those entries must be flagged and say where to check.
    for name in ("*35", "*36"):
        a = CYP2D6_ALLELES[name]
        assert a.unverified and "CPIC" in a.note
    for name, a in CYP2C9_ALLELES.items():
        assert "CPIC" in a.source
        if name != "*1":
            assert a.unverified and "CPIC" in a.note
    for table in (CYP2D6_ALLELES, CYP2C9_ALLELES):
        for a in table.values():
            assert a.function in {"normal", "decreased", "no function"}


def test_brief_allele_sets_are_present() -> None:
    for name in ("*1", "*2", "*3", "*4", "*5", "*6", "*9", "*10", "*17", "*29", "*35", "*36", "*41"):
        assert name in CYP2D6_ALLELES
    for name in ("*1", "*2", "*3", "*5", "*6", "*8", "*11", "*13"):
        assert name in CYP2C9_ALLELES


# ---------------------------------------------------------------------------------------------------------
# CYP2D6 activity score and phenotype
# ---------------------------------------------------------------------------------------------------------

# models.md D1: "Phenotype by activity score (AS) | UM >2.25; NM 1.25 ≤ AS ≤ 2.25; IM 0 < AS < 1.25; PM AS = 0"


@pytest.mark.parametrize(
    ("text", "score", "label"),
    [
        # *1 = 1, *4 = 0 (D1 allele line) -> AS 1, and "IM 0 < AS < 1.25"
        ("CYP2D6 *1/*4", 1.0, "intermediate"),
        # *4 = 0 -> AS 0, "PM AS = 0"
        ("CYP2D6 *4/*4", 0.0, "poor"),
        # *5 = 0 (gene deletion), *3 = 0
        ("CYP2D6 *5/*3", 0.0, "poor"),
        # *1 = 1, *2 duplicated = 2 x 1 ("Duplications per rule") -> 3, "UM >2.25"
        ("CYP2D6 *1/*2x2", 3.0, "ultrarapid"),
        # "0.25 for *10" -> 0.5, IM
        ("CYP2D6 *10/*10", 0.5, "intermediate"),
        # 1 + 0.25 = 1.25, "NM 1.25 ≤ AS"
        ("CYP2D6 *1/*10", 1.25, "normal"),
        # "0.5 for ... *41" -> 1.5, NM
        ("CYP2D6 *1/*41", 1.5, "normal"),
        # D1: "duplicated normal allele with *10 = 2.25" -> "NM ... AS ≤ 2.25"
        ("CYP2D6 *1x2/*10", 2.25, "normal"),
        ("CYP2D6 *1/*1", 2.0, "normal"),
        # duplicated no-function allele stays 0: 0 x 2 + 0
        ("CYP2D6 *4x2/*4", 0.0, "poor"),
        # 0.5 + 0.5 = 1.0 -> IM
        ("CYP2D6 *17/*29", 1.0, "intermediate"),
    ],
)
def test_cyp2d6_activity_score_and_phenotype(text: str, score: float, label: str) -> None:
    assert activity_score(text) == pytest.approx(score)
    p = phenotype(parse_genotype(text))
    assert isinstance(p, Phenotype)
    assert p.gene == "CYP2D6"
    assert p.activity_score == pytest.approx(score)
    assert p.label == label
    assert "Crews 2021" in p.source


@pytest.mark.parametrize(
    ("score", "label"),
    # D1 thresholds at and around each boundary: "UM >2.25; NM 1.25 ≤ AS ≤ 2.25; IM 0 < AS < 1.25; PM AS = 0"
    [
        (0.0, "poor"),
        (0.25, "intermediate"),
        (1.0, "intermediate"),
        (1.24, "intermediate"),
        (1.25, "normal"),
        (2.25, "normal"),
        (2.26, "ultrarapid"),
        (3.0, "ultrarapid"),
    ],
)
def test_cyp2d6_thresholds(score: float, label: str) -> None:
    assert phenotype_from_score("CYP2D6", score).label == label


def test_unresolved_duplication_is_a_flagged_lower_bound() -> None:
    # *1xN: at least two copies of a normal allele, so AS >= 1 + 2 = 3 ("UM >2.25" either way).
    p = phenotype("CYP2D6 *1/*1xN")
    assert p.label == "ultrarapid"
    assert p.activity_score == pytest.approx(3.0)
    assert any("lower bound" in n for n in p.notes)


def test_copy_number_out_of_range_raises() -> None:
    with pytest.raises(GenotypeError, match="xN"):
        parse_genotype("CYP2D6 *1x9/*1")


def test_unverified_allele_propagates_to_phenotype() -> None:
    p = phenotype("CYP2D6 *1/*35")  # *35 not listed in models.md D1
    assert p.unverified
    assert any("*35" in n for n in p.notes)
    assert not phenotype("CYP2D6 *1/*41").unverified


# ---------------------------------------------------------------------------------------------------------
# CYP2C9 activity score and phenotype
# ---------------------------------------------------------------------------------------------------------

# models.md D2: "Phenotype by AS | NM AS 2; IM AS 1–1.5; PM AS 0–0.5"


@pytest.mark.parametrize(
    ("score", "label"),
    [(2.0, "normal"), (1.5, "intermediate"), (1.0, "intermediate"), (0.5, "poor"), (0.0, "poor")],
)
def test_cyp2c9_thresholds(score: float, label: str) -> None:
    assert phenotype_from_score("CYP2C9", score).label == label


def test_cyp2c9_genotypes() -> None:
    # D2 "NM AS 2": two reference alleles.
    assert phenotype("CYP2C9 *1/*1").label == "normal"
    assert activity_score("CYP2C9 *1/*1") == pytest.approx(2.0)
    # A8: "CYP2C9 IM (*1/*3, *1/*13; Korean) | CL/F −39.6%; AUC ×1.63"
    for text in ("CYP2C9 *1/*3", "cyp2c9 *1/*13"):
        p = phenotype(text)
        assert p.label == "intermediate"
        assert 1.0 <= p.activity_score <= 1.5  # D2 "IM AS 1–1.5"
    # clinical.md 3.2: "CYP2C9 activity score | 2 / 1.5 / 1 / ≤ 0.5 at ≈ 65/20/13/2% (UNVERIFIED; *3/*3 ≈ 0.5%)"
    # places *3/*3 in the AS <= 0.5 group, i.e. D2 "PM AS 0–0.5".
    p = phenotype("CYP2C9 *3/*3")
    assert p.label == "poor"
    assert p.activity_score <= 0.5
    assert p.unverified  # the *3 value is not in models.md


def test_cyp2c9_score_above_two_rejected() -> None:
    with pytest.raises(GenotypeError):
        phenotype_from_score("CYP2C9", 2.5)
    with pytest.raises(GenotypeError):
        phenotype_from_score("CYP2C19", 1.0)
    with pytest.raises(GenotypeError):
        phenotype_from_score("CYP2D6", -0.5)


# ---------------------------------------------------------------------------------------------------------
# OPRM1
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [("OPRM1 A118G AA", "A/A"), ("OPRM1 rs1799971 A/G", "A/G carrier"), ("OPRM1 118 GG", "G/G")],
)
def test_oprm1_phenotype(text: str, label: str) -> None:
    p = phenotype(text)
    assert p.gene == "OPRM1"
    assert p.activity_score is None
    assert p.label == label


def test_oprm1_has_no_activity_score() -> None:
    with pytest.raises(GenotypeError):
        activity_score("OPRM1 A118G AG")


@pytest.mark.parametrize("drug", ["oxycodone", "tramadol", "codeine"])
def test_oprm1_no_actionable_recommendation(drug: str) -> None:
    # models.md D1: "Oxycodone, methadone; OPRM1; COMT | Limited or weak evidence; no actionable recommendation"
    rec = cpic_recommendation(drug, phenotype("OPRM1 A118G GG"))
    assert rec.action == "no_recommendation"
    assert rec.gene == "OPRM1"


# ---------------------------------------------------------------------------------------------------------
# CPIC recommendations: CYP2D6 opioids
# ---------------------------------------------------------------------------------------------------------


def _p2d6(label: str) -> Phenotype:
    return Phenotype("CYP2D6", None, label, "test")


@pytest.mark.parametrize(
    ("label", "action", "strength"),
    # models.md D1 Tramadol: "UM: avoid (toxicity), strong. NM: label dosing, strong. IM: label dosing; if no
    # response, a non-codeine opioid; optional. PM: avoid (diminished analgesia), strong"
    [
        ("ultrarapid", "avoid", "strong"),
        ("normal", "label_dose", "strong"),
        ("intermediate", "alternative_if_no_response", "optional"),
        ("poor", "avoid", "strong"),
    ],
)
def test_tramadol(label: str, action: str, strength: str) -> None:
    rec = cpic_recommendation("tramadol", _p2d6(label))
    assert rec.action == action
    assert rec.strength == strength
    assert rec.gene == "CYP2D6" and rec.phenotype == label
    assert "Crews 2021" in rec.source


def test_tramadol_from_genotype() -> None:
    # *4/*4 -> AS 0 -> PM (D1) -> "PM: avoid (diminished analgesia), strong"
    assert cpic_recommendation("Tramadol", "CYP2D6 *4/*4").action == "avoid"
    # *1/*2x2 -> AS 3 -> UM -> "UM: avoid (toxicity), strong"
    assert cpic_recommendation("tramadol", phenotype("CYP2D6 *1/*2x2")).action == "avoid"


def test_codeine() -> None:
    # models.md D1 Codeine: "UM: avoid. PM (AS 0): "Avoid codeine use because of possibility of diminished
    # analgesia", strong. NM/IM: label dosing"
    assert cpic_recommendation("codeine", _p2d6("ultrarapid")).action == "avoid"
    assert cpic_recommendation("codeine", phenotype("CYP2D6 *1/*1xN")).action == "avoid"
    pm = cpic_recommendation("codeine", phenotype("CYP2D6 *4/*5"))
    assert pm.action == "avoid"
    assert pm.strength == "strong"
    assert "possibility of diminished analgesia" in pm.text
    assert cpic_recommendation("codeine", _p2d6("normal")).action == "label_dose"
    assert cpic_recommendation("codeine", _p2d6("intermediate")).action == "label_dose"


@pytest.mark.parametrize(
    ("label", "action"),
    # models.md D1 Hydrocodone: "UM: no recommendation. NM: label dosing. IM/PM: label dosing; if no response, a
    # non-codeine, non-tramadol opioid; optional"
    [
        ("ultrarapid", "no_recommendation"),
        ("normal", "label_dose"),
        ("intermediate", "alternative_if_no_response"),
        ("poor", "alternative_if_no_response"),
    ],
)
def test_hydrocodone(label: str, action: str) -> None:
    rec = cpic_recommendation("hydrocodone", _p2d6(label))
    assert rec.action == action
    if label in ("intermediate", "poor"):
        assert rec.strength == "optional"


@pytest.mark.parametrize("label", ["ultrarapid", "normal", "intermediate", "poor"])
@pytest.mark.parametrize("drug", ["oxycodone", "methadone"])
def test_oxycodone_methadone_no_actionable_recommendation(drug: str, label: str) -> None:
    # models.md D1: "Oxycodone, methadone; OPRM1; COMT | Limited or weak evidence; no actionable recommendation"
    rec = cpic_recommendation(drug, _p2d6(label))
    assert rec.action == "no_recommendation"
    assert "no actionable recommendation" in rec.text


# ---------------------------------------------------------------------------------------------------------
# CPIC recommendations: CYP2C9 NSAIDs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drug", ["celecoxib", "ibuprofen", "flurbiprofen", "lornoxicam"])
@pytest.mark.parametrize("genotype", ["CYP2C9 *3/*3", "CYP2C9 *2/*3"])
def test_nsaid_poor_metabolizer_reduce_dose(drug: str, genotype: str) -> None:
    # models.md D2: "Celecoxib, flurbiprofen, ibuprofen, lornoxicam: AS 0 or 0.5 | "Initiate therapy with 25–50% of
    # the lowest recommended starting dose. Titrate dose upward to clinical effect or 25–50% of the maximum
    # recommended dose with caution.""
    rec = cpic_recommendation(drug, genotype)
    assert rec.action == "reduce_dose"
    assert rec.dose_factor_low == pytest.approx(0.25)
    assert rec.dose_factor_high == pytest.approx(0.5)
    assert rec.dose_reference == "lowest recommended starting dose"
    assert rec.max_dose_factor_low == pytest.approx(0.25)
    assert rec.max_dose_factor_high == pytest.approx(0.5)
    assert "25–50% of the lowest recommended starting dose" in rec.text
    assert "Theken 2020" in rec.source


def test_celecoxib_by_activity_score() -> None:
    # models.md D2: "Same drugs: AS 1 | start at the lowest recommended dose and titrate (paraphrase); AS 1.5:
    # normal starting dose"
    as15 = cpic_recommendation("celecoxib", phenotype_from_score("CYP2C9", 1.5))
    assert as15.action == "label_dose"
    as1 = cpic_recommendation("celecoxib", phenotype_from_score("CYP2C9", 1.0))
    assert as1.action == "label_dose"
    assert as1.dose_reference == "lowest recommended starting dose"
    assert as1.unverified  # D2: "exact CPIC wording not read"
    # clinical.md 5.3: "NM, or IM with AS 1.5 | Standard dose"
    assert cpic_recommendation("celecoxib", "CYP2C9 *1/*1").action == "label_dose"


def test_meloxicam() -> None:
    # models.md D2: "Meloxicam | AS 1: 50% of the lowest starting dose, titrate to 50% of maximum; PM: alternative
    # drug"
    as1 = cpic_recommendation("meloxicam", phenotype_from_score("CYP2C9", 1.0))
    assert as1.action == "reduce_dose"
    assert as1.dose_factor_low == pytest.approx(0.5)
    assert as1.dose_factor_high == pytest.approx(0.5)
    assert as1.max_dose_factor_high == pytest.approx(0.5)
    pm = cpic_recommendation("meloxicam", "CYP2C9 *3/*3")
    assert pm.action == "avoid"
    assert "alternative" in pm.text


def test_piroxicam_alternative_for_pm_and_as1() -> None:
    # models.md D2: "Piroxicam, tenoxicam | alternative drug for PMs (and for IM at AS 1)"
    for drug in ("piroxicam", "tenoxicam"):
        assert cpic_recommendation(drug, phenotype_from_score("CYP2C9", 0.0)).action == "avoid"
        assert cpic_recommendation(drug, phenotype_from_score("CYP2C9", 1.0)).action == "avoid"


@pytest.mark.parametrize("drug", ["ketorolac", "naproxen", "aspirin", "sulindac"])
@pytest.mark.parametrize("genotype", ["CYP2C9 *3/*3", "CYP2C9 *1/*1"])
def test_not_cyp2c9_dependent_label_dose(drug: str, genotype: str) -> None:
    # models.md D2: "Not CYP2C9-dependent (standard dosing) | aspirin, ketorolac, naproxen, sulindac | UF Health (WEB)"
    rec = cpic_recommendation(drug, genotype)
    assert rec.action == "label_dose"
    assert "UF Health" in rec.source


# ---------------------------------------------------------------------------------------------------------
# CPIC recommendations: coverage and edge cases
# ---------------------------------------------------------------------------------------------------------


def test_unknown_drug_is_no_recommendation_not_an_exception() -> None:
    rec = cpic_recommendation("gabapentin", phenotype("CYP2D6 *1/*1"))
    assert rec.action == "no_recommendation"
    assert "No CPIC guideline" in rec.text
    assert rec.drug == "gabapentin"


def test_drug_gene_mismatch_is_no_recommendation() -> None:
    # tramadol is a CYP2D6 guideline (D1); a CYP2C9 phenotype says nothing about it.
    assert cpic_recommendation("tramadol", "CYP2C9 *3/*3").action == "no_recommendation"
    assert cpic_recommendation("ketorolac", "CYP2D6 *4/*4").action == "no_recommendation"


def test_bad_phenotype_label_raises() -> None:
    with pytest.raises(GenotypeError):
        cpic_recommendation("tramadol", Phenotype("CYP2D6", None, "fast", "test"))
    with pytest.raises(GenotypeError):
        cpic_recommendation("tramadol", "CYP2D6 *1/*77")


@pytest.mark.parametrize(
    "drug",
    [
        "tramadol",
        "codeine",
        "hydrocodone",
        "oxycodone",
        "celecoxib",
        "ibuprofen",
        "flurbiprofen",
        "meloxicam",
        "ketorolac",
        "naproxen",
        "aspirin",
        "morphine",
    ],
)
@pytest.mark.parametrize(
    "genotype",
    [
        "CYP2D6 *1/*1",
        "CYP2D6 *4/*4",
        "CYP2D6 *1/*2x2",
        "CYP2D6 *1/*4",
        "CYP2C9 *1/*1",
        "CYP2C9 *1/*3",
        "CYP2C9 *3/*3",
    ],
)
def test_every_recommendation_is_well_formed(drug: str, genotype: str) -> None:
    rec = cpic_recommendation(drug, genotype)
    assert rec.action in ACTIONS
    assert rec.source
    assert rec.text
    assert (rec.dose_factor_low is None) == (rec.dose_factor_high is None)
    if rec.dose_factor_low is not None:
        assert 0 < rec.dose_factor_low <= rec.dose_factor_high <= 1


def test_genetics_module_does_not_import_jax() -> None:
    src = Path(__file__).resolve().parents[1] / "pkpd" / "genetics.py"
    tree = ast.parse(src.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "jax" for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "jax"
