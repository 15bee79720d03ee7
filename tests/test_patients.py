"""Tests of pkpd.patients: covariate formulas, patient validation, TOML files and the SPINE-72 population.

Expected values are written independently of the module:

* formulas: hand-computed textbook values (arithmetic done with ``bc``, written as literals here), from the
  formulas as stated in models.md A13 (James LBM) or, for FFM (Janmahasatian 2005), IBW (Devine 1974) and
  CrCL (Cockcroft-Gault 1976), from general knowledge (these formulas are not in models.md; the module flags
  them unverified). Classic worked examples: Devine 70 in man = 73 kg, 65 in woman = 57 kg; Cockcroft-Gault
  60 y, 72 kg, SCr 1.0 mg/dL man = 80 mL/min, woman 68 mL/min;
* activity scores: per-allele values quoted from models.md D1 (CYP2D6: 1 for *1/*2, 0.5 for *41, 0.25 for
  *10, 0 for *4/*5) and D2 (CYP2C9 NM AS 2);
* population frequencies: the SPINE-72 table of clinical.md 3.2, checked on n = 20,000 within 4 binomial
  standard errors (sqrt(p(1-p)/n)); a wrong frequency of even 1 percentage point at p = 0.07 is 5.5 SE off.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pkpd.errors import PKPDError
from pkpd.genetics import GenotypeError, phenotype
from pkpd.patients import (
    COVARIATE_COLUMNS,
    COVARIATE_FORMULAS,
    Patient,
    PatientError,
    PopulationSpec,
    SpecParam,
    bmi,
    crcl_cockcroft_gault,
    ffm_janmahasatian,
    ibw_devine,
    lbm_james,
    load_patient,
    patients_from_frame,
    patients_to_frame,
    require_covariates,
    spine72_population,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "patient_spine.toml"

ALL_COLUMNS = [
    "AGE", "MALE", "WT", "HT", "BMI", "LBM", "FFM", "IBW", "SCR", "CRCL", "HEPATIC", "OPIOID_TOL", "OSA",
    "OPEN_SURGERY", "CYP2D6_AS", "CYP2D6_10_10", "CYP2C9_AS", "OPRM1_G",
]  # fmt: skip


def _pt(**kw):
    base = {"age_y": 50, "sex": "male", "weight_kg": 80, "height_cm": 178}
    base.update(kw)
    return Patient(**base)


# ---------------------------------------------------------------------------------------------------------
# Formulas against hand-computed values
# ---------------------------------------------------------------------------------------------------------


def test_bmi_textbook():
    # 70 / 1.75^2 = 22.857 kg/m2
    assert bmi(70, 175) == pytest.approx(22.857142857, rel=1e-9)


def test_james_lbm_hand_computed():
    """models.md A13: men 1.1 W - 128 (W/H)^2; women 1.07 W - 148 (W/H)^2.

    70 kg 175 cm man: 77 - 128 * 0.16 = 56.52 kg. 60 kg 165 cm woman: 64.2 - 148 * 0.13223 = 44.6298 kg."""
    assert lbm_james(70, 175, True) == pytest.approx(56.52, rel=1e-12)
    assert lbm_james(60, 165, False) == pytest.approx(44.62975207, rel=1e-8)


def test_janmahasatian_ffm_hand_computed():
    """Janmahasatian 2005 (general knowledge): men 9270 W / (6680 + 216 BMI); women 9270 W / (8780 + 244 BMI).

    70 kg 175 cm man: 648900 / (6680 + 216 * 22.857) = 55.857 kg; 78 kg 165 cm woman: 45.849 kg."""
    assert ffm_janmahasatian(70, 175, 1) == pytest.approx(55.85710772, rel=1e-8)
    assert ffm_janmahasatian(78, 165, 0) == pytest.approx(45.84850665, rel=1e-8)


def test_devine_ibw_textbook():
    """Devine 1974 (general knowledge): 50 kg (men) / 45.5 kg (women) + 2.3 kg per inch over 5 ft.
    Textbook: 5 ft 10 in man = 73 kg; 5 ft 5 in woman = 57 kg."""
    assert ibw_devine(70 * 2.54, True) == pytest.approx(73.0, rel=1e-12)
    assert ibw_devine(65 * 2.54, False) == pytest.approx(57.0, rel=1e-12)


def test_cockcroft_gault_textbook():
    """Cockcroft-Gault 1976 (general knowledge): (140 - age) * WT / (72 * SCr), x0.85 women.
    60 y, 72 kg, SCr 1.0: man 80 mL/min, woman 68 mL/min."""
    assert crcl_cockcroft_gault(60, 72, 1.0, True) == pytest.approx(80.0, rel=1e-12)
    assert crcl_cockcroft_gault(60, 72, 1.0, False) == pytest.approx(68.0, rel=1e-12)


def test_formulas_vectorised_equal_scalar():
    w = np.array([70.0, 60.0])
    h = np.array([175.0, 165.0])
    male = np.array([1.0, 0.0])
    np.testing.assert_allclose(lbm_james(w, h, male), [56.52, 44.62975207], rtol=1e-8)
    np.testing.assert_allclose(crcl_cockcroft_gault([60, 60], [72, 72], [1.0, 1.0], male), [80.0, 68.0])
    assert isinstance(lbm_james(70, 175, True), float)


def test_formula_table_sources_and_flags():
    assert list(COVARIATE_FORMULAS) == ALL_COLUMNS == list(COVARIATE_COLUMNS)
    for name, f in COVARIATE_FORMULAS.items():
        assert f.source.citation.strip() and f.unit and f.formula, name
    # Not in models.md -> unverified (brief / common rules); James is in models.md A13.
    for name in ("FFM", "IBW", "CRCL"):
        assert COVARIATE_FORMULAS[name].unverified and COVARIATE_FORMULAS[name].source.unverified
        assert "general knowledge" in COVARIATE_FORMULAS[name].note
    assert not COVARIATE_FORMULAS["LBM"].unverified and "A13" in COVARIATE_FORMULAS["LBM"].source.citation
    assert "Janmahasatian 2005" in str(COVARIATE_FORMULAS["FFM"].source)
    assert "Devine 1974" in str(COVARIATE_FORMULAS["IBW"].source)
    assert "Cockcroft" in str(COVARIATE_FORMULAS["CRCL"].source) and "16:31" in str(COVARIATE_FORMULAS["CRCL"].source)


# ---------------------------------------------------------------------------------------------------------
# Patient covariates and genetics
# ---------------------------------------------------------------------------------------------------------


def test_example_file_covariates():
    """The shipped example: 62-y woman, 78 kg, 165 cm, SCr 0.9, CYP2D6 *1/*4, CYP2C9 *1/*1, OPRM1 AA, open.

    Hand-computed: BMI 78/1.65^2 = 28.650; LBM 1.07*78 - 148*(78/165)^2 = 50.386; CrCL (140-62)*78/(72*0.9)
    *0.85 = 79.806; IBW 45.5 + 2.3*(165/2.54 - 60) = 56.909; FFM 45.849. CYP2D6 *1/*4: 1 + 0 = AS 1, an IM
    (0 < AS < 1.25, models.md D1)."""
    p = load_patient(EXAMPLE)
    assert (p.age_y, p.sex, p.weight_kg, p.height_cm, p.scr_mg_dl) == (62, "female", 78, 165, 0.9)
    assert p.surgery == "open" and not p.opioid_tolerant and not p.osa and p.hepatic == "none"
    c = p.covariates()
    assert list(c) == ALL_COLUMNS
    expected = {
        "AGE": 62, "MALE": 0, "WT": 78, "HT": 165, "BMI": 28.65013774, "LBM": 50.38628099, "FFM": 45.84850665,
        "IBW": 56.90944881, "SCR": 0.9, "CRCL": 79.80555556, "HEPATIC": 0, "OPIOID_TOL": 0, "OSA": 0,
        "OPEN_SURGERY": 1, "CYP2D6_AS": 1.0, "CYP2D6_10_10": 0, "CYP2C9_AS": 2.0, "OPRM1_G": 0,
    }  # fmt: skip
    for k, v in expected.items():
        assert c[k] == pytest.approx(v, rel=1e-8), k
        assert isinstance(c[k], float), k
    assert p.phenotypes() == {"CYP2D6": "intermediate", "CYP2C9": "normal", "OPRM1": "A/A"}
    assert all(p.genotype_known(g) for g in ("CYP2D6", "cyp2c9", "OPRM1"))


def test_scr_and_crcl_presence_and_override():
    c = _pt().covariates()
    assert "SCR" not in c and "CRCL" not in c
    assert [k for k in ALL_COLUMNS if k not in ("SCR", "CRCL")] == list(c)
    c = _pt(crcl_ml_min=55).covariates()
    assert c["CRCL"] == 55.0 and "SCR" not in c
    # SCr given: Cockcroft-Gault (140-50)*80/(72*1.2) = 83.333 mL/min (man)
    assert _pt(scr_mg_dl=1.2).covariates()["CRCL"] == pytest.approx(83.3333333, rel=1e-8)
    # a measured clearance overrides the estimate
    c = _pt(scr_mg_dl=1.2, crcl_ml_min=40).covariates()
    assert c["CRCL"] == 40.0 and c["SCR"] == 1.2


def test_ungenotyped_gets_normal_metabolizer_values():
    """Not genotyped -> CPIC normal metabolizer: CYP2D6 AS 2 (*1/*1), CYP2C9 AS 2 (models.md D2 'NM AS 2'),
    no OPRM1 118G allele; recorded as 'unknown'."""
    p = _pt()
    c = p.covariates()
    assert (c["CYP2D6_AS"], c["CYP2D6_10_10"], c["CYP2C9_AS"], c["OPRM1_G"]) == (2.0, 0.0, 2.0, 0.0)
    assert p.phenotypes() == {"CYP2D6": "unknown", "CYP2C9": "unknown", "OPRM1": "unknown"}
    assert not p.genotype_known("CYP2D6") and p.genotype("CYP2C9") is None
    p = _pt(genotypes=["CYP2C9 *1/*3"])
    assert p.genotype_known("CYP2C9") and not p.genotype_known("CYP2D6")
    assert p.phenotypes()["CYP2D6"] == "unknown" and p.phenotypes()["CYP2C9"] == "intermediate"
    with pytest.raises(PatientError, match="CYP3A4.*known genes: CYP2D6, CYP2C9, OPRM1"):
        p.genotype_known("CYP3A4")


@pytest.mark.parametrize(
    ("genotypes", "col", "value"),
    [
        (["CYP2D6 *10/*10"], "CYP2D6_AS", 0.5),  # 0.25 + 0.25 (D1)
        (["CYP2D6 *10/*10"], "CYP2D6_10_10", 1.0),
        (["CYP2D6 *1/*10"], "CYP2D6_10_10", 0.0),
        (["CYP2D6 *4/*10"], "CYP2D6_AS", 0.25),
        (["CYP2D6 *1/*2x2"], "CYP2D6_AS", 3.0),  # 1 + 2 copies x 1
        (["CYP2D6 *4/*5"], "CYP2D6_AS", 0.0),
        (["CYP2D6 *1/*41"], "CYP2D6_AS", 1.5),
        (["CYP2C9 *1/*1"], "CYP2C9_AS", 2.0),
        (["OPRM1 A118G AG"], "OPRM1_G", 1.0),
        (["OPRM1 rs1799971 G/G"], "OPRM1_G", 2.0),
        (["OPRM1 A118G AA"], "OPRM1_G", 0.0),
    ],
)
def test_genotype_covariates(genotypes, col, value):
    assert _pt(genotypes=genotypes).covariates()[col] == value


# ---------------------------------------------------------------------------------------------------------
# Validation messages
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "parts"),
    [
        ({"age_y": 15}, ["'age_y'", "15", "18 to 110 years"]),
        ({"age_y": 111}, ["'age_y'", "111", "18 to 110 years"]),
        ({"age_y": float("nan")}, ["'age_y'", "nan", "18 to 110 years"]),
        ({"age_y": "62"}, ["'age_y'", "'62'", "not a number", "18 to 110 years"]),
        ({"weight_kg": 20}, ["'weight_kg'", "20", "25 to 350 kg"]),
        ({"weight_kg": 400}, ["'weight_kg'", "400", "25 to 350 kg"]),
        ({"height_cm": 110}, ["'height_cm'", "110", "120 to 230 cm"]),
        ({"height_cm": 240}, ["'height_cm'", "240", "120 to 230 cm"]),
        ({"scr_mg_dl": 0}, ["'scr_mg_dl'", "0", "> 0 to 20 mg/dL"]),
        ({"scr_mg_dl": -1.0}, ["'scr_mg_dl'", "-1.0", "> 0 to 20 mg/dL"]),
        ({"crcl_ml_min": 0}, ["'crcl_ml_min'", "0", "> 0 to 400 mL/min"]),
        ({"sex": "F"}, ["'sex'", "'F'", "'female', 'male'"]),
        ({"sex": None}, ["'sex'", "None", "'female', 'male'"]),
        ({"hepatic": "child-pugh B"}, ["'hepatic'", "'child-pugh B'", "'none', 'mild', 'moderate', 'severe'"]),
        ({"surgery": "laparoscopic"}, ["'surgery'", "'laparoscopic'", "'open', 'mis'"]),
        ({"opioid_tolerant": "yes"}, ["'opioid_tolerant'", "'yes'", "true/false"]),
        ({"osa": 2}, ["'osa'", "2", "true/false"]),
        (
            {"weight_kg": 340, "height_cm": 150},
            ["'weight_kg' = 340 kg", "'height_cm' = 150 cm", "BMI 151.1", "12 to 70 kg/m2"],
        ),
        (
            {"genotypes": ["CYP2D6 *1/*4", "cyp2d6 *1/*1"]},
            ["'genotypes'", "CYP2D6 twice", "'CYP2D6 *1/*4'", "'cyp2d6 *1/*1'"],
        ),
        ({"genotypes": "CYP2D6 *1/*4"}, ["'genotypes'", "single string", "list"]),
        ({"genotypes": [42]}, ["'genotypes'", "42", "not a string"]),
        ({"id": True}, ["'id'", "True", "integer or a non-empty string"]),
    ],
)
def test_validation_messages(kw, parts):
    with pytest.raises(PatientError) as ei:
        _pt(**kw)
    msg = str(ei.value)
    for part in parts:
        assert part in msg, (part, msg)
    assert isinstance(ei.value, PKPDError)


def test_invalid_genotype_passes_genetics_message():
    with pytest.raises(GenotypeError) as ei:
        _pt(genotypes=["CYP2D6 *1/*99"])
    msg = str(ei.value)
    assert isinstance(ei.value, PatientError)
    assert "'genotypes'" in msg and "Unknown CYP2D6 allele '*99'" in msg and "Known CYP2D6 alleles" in msg
    with pytest.raises(GenotypeError, match="Known genes"):
        _pt(genotypes=["CYP3A5 *1/*3"])


def test_valid_boundaries_and_normalisation():
    p = _pt(age_y=18, sex=" Female ", weight_kg=50, height_cm=160, hepatic="Moderate", surgery="MIS",
            opioid_tolerant=1, osa=0, id=7)  # fmt: skip
    assert (p.sex, p.hepatic, p.surgery, p.opioid_tolerant, p.osa) == ("female", "moderate", "mis", True, False)
    c = p.covariates()
    assert (c["HEPATIC"], c["OPEN_SURGERY"], c["OPIOID_TOL"], c["MALE"]) == (2.0, 0.0, 1.0, 0.0)
    _pt(age_y=110)
    assert isinstance(_pt(age_y=62).age_y, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.age_y = 40


# ---------------------------------------------------------------------------------------------------------
# require_covariates
# ---------------------------------------------------------------------------------------------------------


def test_require_covariates_messages():
    cov = _pt().covariates()
    require_covariates(cov, ["WT", "AGE"], "oxycodone")  # present: no error
    with pytest.raises(PatientError) as ei:
        require_covariates(cov, ["CRCL"], "pregabalin")
    assert str(ei.value) == "pregabalin needs CRCL: give scr_mg_dl or crcl_ml_min"
    with pytest.raises(PatientError) as ei:
        require_covariates(cov, ["WT", "CRCL", "SCR", "FOO"], "drugx")
    msg = str(ei.value)
    assert "drugx needs 3 missing covariates" in msg
    assert "CRCL: give scr_mg_dl or crcl_ml_min" in msg and "SCR: give scr_mg_dl" in msg and "FOO" in msg
    assert "WT" not in msg
    with pytest.raises(PatientError, match="CRCL"):
        require_covariates({"CRCL": float("nan")}, ["CRCL"], "pregabalin")


def test_require_covariates_dataframe():
    df = pd.DataFrame({"ID": [1, 2, 3], "CRCL": [80.0, np.nan, 60.0], "WT": [70.0, 80.0, 90.0]})
    require_covariates(df, ["WT"], "x")
    with pytest.raises(PatientError) as ei:
        require_covariates(df, ["CRCL", "AGE"], "gabapentin")
    msg = str(ei.value)
    assert "CRCL (NaN for ID 2)" in msg and "AGE: give age_y" in msg


# ---------------------------------------------------------------------------------------------------------
# TOML
# ---------------------------------------------------------------------------------------------------------


def test_example_file_is_plain_toml_with_field_names():
    data = tomllib.loads(EXAMPLE.read_text())
    assert data["genotypes"] == ["CYP2D6 *1/*4", "CYP2C9 *1/*1", "OPRM1 A118G AA"]
    assert data["surgery"] == "open" and data["sex"] == "female"


def test_toml_round_trip(tmp_path):
    p = _pt(scr_mg_dl=1.1, crcl_ml_min=70.5, hepatic="mild", opioid_tolerant=True, osa=True, surgery="mis",
            genotypes=("CYP2D6 *1/*2x2", "OPRM1 A118G AG"), id="pt-\"1\"")  # fmt: skip
    f = tmp_path / "p.toml"
    f.write_text(p.to_toml())
    q = load_patient(f)
    assert q == p and q.covariates() == p.covariates()
    assert load_patient(load_patient(EXAMPLE).to_dict()) == load_patient(EXAMPLE)
    assert load_patient({"patient": p.to_dict()}) == p


def test_toml_errors(tmp_path):
    with pytest.raises(PatientError) as ei:
        load_patient({"age_y": 60, "sex": "male", "weight_kg": 80, "height_cm": 180, "weight": 80, "bmi": 3})
    msg = str(ei.value)
    assert "unknown key(s) bmi, weight" in msg
    for k in ("age_y", "sex", "weight_kg", "height_cm", "scr_mg_dl", "crcl_ml_min", "hepatic", "opioid_tolerant",
              "osa", "surgery", "genotypes", "id"):  # fmt: skip
        assert k in msg.split("allowed keys:")[1]
    with pytest.raises(PatientError, match="missing required key.*height_cm"):
        load_patient({"age_y": 60, "sex": "male", "weight_kg": 80})
    bad = tmp_path / "bad.toml"
    bad.write_text("age_y = = 3\n")
    with pytest.raises(PatientError, match="not valid TOML"):
        load_patient(bad)
    with pytest.raises(PatientError, match="Cannot read patient file"):
        load_patient(tmp_path / "nope.toml")
    bad.write_text('age_y = 60\nsex = "male"\nweight_kg = 80\nheight_cm = 180\ngenotypes = ["CYP2D6 *1/*77"]\n')
    with pytest.raises(GenotypeError, match=r"\*77"):
        load_patient(bad)


# ---------------------------------------------------------------------------------------------------------
# SPINE-72 population
# ---------------------------------------------------------------------------------------------------------

N_BIG = 20_000


@pytest.fixture(scope="module")
def pop():
    return spine72_population(N_BIG, seed=20240607)


def _within_binomial(observed_frac: float, p: float, n: int, k: float = 4.0) -> bool:
    se = math.sqrt(p * (1.0 - p) / n)
    return abs(observed_frac - p) <= k * se


def test_population_columns_and_ids(pop):
    assert list(pop.columns) == (
        ["ID", "SEX"] + ALL_COLUMNS + ["CYP2D6", "CYP2C9", "OPRM1", "CYP2D6_PHENO", "CYP2C9_PHENO"]
    )
    assert pop["ID"].tolist() == list(range(1, N_BIG + 1))
    assert not pop[ALL_COLUMNS].isna().any().any()
    assert ((pop["SEX"] == "male") == (pop["MALE"] == 1.0)).all()


@pytest.mark.parametrize(
    ("what", "p"),
    [
        ("female", 0.50),
        ("opioid_tolerant", 0.25),
        ("osa", 0.20),
        ("open", 1.00),
        ("CYP2D6 poor", 0.07),
        ("CYP2D6 intermediate", 0.12),
        ("CYP2D6 normal", 0.79),
        ("CYP2D6 ultrarapid", 0.02),
        ("CYP2C9 AS 2", 0.65),
        ("CYP2C9 AS 1.5", 0.20),
        ("CYP2C9 AS 1", 0.13),
        ("CYP2C9 AS <= 0.5", 0.02),
        ("CYP2C9 *3/*3", 0.005),
        ("OPRM1 carrier", 0.15),
        ("OPRM1 GG (Hardy-Weinberg)", (1 - math.sqrt(0.85)) ** 2),
    ],
)
def test_population_frequencies(pop, what, p):
    """clinical.md 3.2 frequencies (the *3/*3 share from clinical.md 3.2 / models.md D2 'about 0.5%'; GG from
    the 15% carrier rate under Hardy-Weinberg, q = 1 - sqrt(0.85)), within 4 binomial SEs at n = 20,000."""
    sel = {
        "female": pop["MALE"] == 0,
        "opioid_tolerant": pop["OPIOID_TOL"] == 1,
        "osa": pop["OSA"] == 1,
        "open": pop["OPEN_SURGERY"] == 1,
        "CYP2D6 poor": pop["CYP2D6_AS"] == 0,  # PM: AS = 0 (models.md D1)
        "CYP2D6 intermediate": (pop["CYP2D6_AS"] > 0) & (pop["CYP2D6_AS"] < 1.25),
        "CYP2D6 normal": (pop["CYP2D6_AS"] >= 1.25) & (pop["CYP2D6_AS"] <= 2.25),
        "CYP2D6 ultrarapid": pop["CYP2D6_AS"] > 2.25,
        "CYP2C9 AS 2": pop["CYP2C9_AS"] == 2.0,
        "CYP2C9 AS 1.5": pop["CYP2C9_AS"] == 1.5,
        "CYP2C9 AS 1": pop["CYP2C9_AS"] == 1.0,
        "CYP2C9 AS <= 0.5": pop["CYP2C9_AS"] <= 0.5,
        "CYP2C9 *3/*3": pop["CYP2C9"] == "CYP2C9 *3/*3",
        "OPRM1 carrier": pop["OPRM1_G"] >= 1,
        "OPRM1 GG (Hardy-Weinberg)": pop["OPRM1_G"] == 2,
    }[what]
    frac = float(sel.mean())
    if p == 1.0:
        assert frac == 1.0
    else:
        assert _within_binomial(frac, p, N_BIG), (what, frac, p)


def test_population_continuous_moments(pop):
    """Age N(57, 12) and weight 85 +- 17 kg (clinical.md 3.2): means within 4 SE (sd/sqrt(n)), SDs within
    4 SE (sd/sqrt(2n), the normal-theory SE; the clipping at 18/90 y moves the mean by ~0.01 y, well inside)."""
    n = N_BIG
    for col, mu, sd in (("AGE", 57.0, 12.0), ("WT", 85.0, 17.0)):
        assert abs(pop[col].mean() - mu) <= 4 * sd / math.sqrt(n), col
        assert abs(pop[col].std() - sd) <= 4 * sd / math.sqrt(2 * n), col
    assert pop["AGE"].between(18, 90).all()
    # assumption of the module: men heavier and taller than women
    by_sex = pop.groupby("MALE")[["WT", "HT", "SCR"]].mean()
    assert (by_sex.loc[1.0] > by_sex.loc[0.0]).all()


def test_population_values_are_valid_patients(pop):
    """Every sampled row lies inside the Patient validation ranges (so patients_from_frame never fails)."""
    assert pop["AGE"].between(18, 110).all() and pop["WT"].between(25, 350).all()
    assert pop["HT"].between(120, 230).all() and pop["BMI"].between(12, 70).all()
    assert (pop["SCR"] > 0).all() and (pop["SCR"] <= 20).all() and (pop["CRCL"] <= 400).all()


def test_population_derived_columns_follow_formulas(pop):
    """LBM, CrCL and BMI re-derived here with the formulas written out (models.md A13; Cockcroft-Gault)."""
    w, h, m = pop["WT"], pop["HT"], pop["MALE"] == 1
    lbm = np.where(m, 1.1 * w - 128 * (w / h) ** 2, 1.07 * w - 148 * (w / h) ** 2)
    np.testing.assert_allclose(pop["LBM"], lbm, rtol=1e-12)
    crcl = (140 - pop["AGE"]) * w / (72 * pop["SCR"]) * np.where(m, 1.0, 0.85)
    np.testing.assert_allclose(pop["CRCL"], crcl, rtol=1e-12)
    np.testing.assert_allclose(pop["BMI"], w / (h / 100) ** 2, rtol=1e-12)


def test_population_genotype_phenotype_consistency(pop):
    """Each genotype string, re-read by pkpd.genetics, gives the frame's activity score and phenotype; the
    activity score also follows the models.md D1 allele values written out here."""
    d1 = {"*1": 1.0, "*2": 1.0, "*3": 0.0, "*4": 0.0, "*5": 0.0, "*9": 0.5, "*10": 0.25, "*41": 0.5}
    for text, grp in pop.groupby("CYP2D6"):
        a, b = text.split()[1].split("/")
        score = sum(d1[x.split("x")[0]] * (int(x.split("x")[1]) if "x" in x else 1) for x in (a, b))
        assert (grp["CYP2D6_AS"] == score).all(), text
        assert (grp["CYP2D6_PHENO"] == phenotype(text).label).all(), text
        assert (grp["CYP2D6_10_10"] == float(a == b == "*10")).all(), text
    for text, grp in pop.groupby("CYP2C9"):
        assert (grp["CYP2C9_PHENO"] == phenotype(text).label).all(), text
    for text, grp in pop.groupby("OPRM1"):
        assert (grp["OPRM1_G"] == text.split()[-1].count("G")).all(), text


@pytest.mark.parametrize(
    ("genotype", "label"),
    [
        ("CYP2D6 *4/*4", "poor"),
        ("CYP2D6 *1/*4", "intermediate"),
        ("CYP2D6 *4/*10", "intermediate"),
        ("CYP2D6 *1/*1", "normal"),
        ("CYP2D6 *1/*2", "normal"),
        ("CYP2D6 *1/*41", "normal"),
        ("CYP2D6 *1/*1x2", "ultrarapid"),
        ("CYP2C9 *1/*1", "normal"),
        ("CYP2C9 *1/*2", "intermediate"),
        ("CYP2C9 *1/*3", "intermediate"),
        ("CYP2C9 *3/*3", "poor"),
    ],
)
def test_realising_genotypes_map_to_intended_phenotype(genotype, label):
    assert phenotype(genotype).label == label


def test_spec_diplotypes_realise_their_class():
    """Every diplotype the spec lists under a CYP2D6 phenotype / CYP2C9 AS class maps there (pkpd.genetics),
    with the CPIC AS bands of models.md D1/D2 written out here."""
    spec = PopulationSpec()
    bands = {"poor": (0, 0), "intermediate": (0.01, 1.24), "normal": (1.25, 2.25), "ultrarapid": (2.26, 99)}
    for ph, entries in spec.cyp2d6_diplotypes.value.items():
        for dip, _ in entries:
            p = phenotype(f"CYP2D6 {dip}")
            assert p.label == ph and bands[ph][0] <= p.activity_score <= bands[ph][1], dip
    as_of = {"AS2": (2.0,), "AS1.5": (1.5,), "AS1": (1.0,), "AS<=0.5": (0.0, 0.5)}
    for cls_, entries in spec.cyp2c9_diplotypes.value.items():
        for dip, _ in entries:
            assert phenotype(f"CYP2C9 {dip}").activity_score in as_of[cls_], dip


def test_determinism_and_prefix_stability():
    a = spine72_population(300, seed=7)
    pd.testing.assert_frame_equal(a, spine72_population(300, seed=7))
    pd.testing.assert_frame_equal(spine72_population(100, seed=7), a.head(100))
    b = spine72_population(300, seed=8)
    assert not np.allclose(a["AGE"], b["AGE"])


def test_frame_patient_round_trip():
    df = spine72_population(40, seed=3)
    pts = patients_from_frame(df)
    assert [p.id for p in pts] == list(range(1, 41))
    for p, (_, row) in zip(pts, df.iterrows(), strict=True):
        c = p.covariates()
        for k in ALL_COLUMNS:
            assert c[k] == pytest.approx(row[k], rel=1e-12, abs=1e-12), k
        assert p.crcl_ml_min is None  # CRCL equals Cockcroft-Gault: not stored as an override
        assert Patient.from_row(row) == p
    back = patients_to_frame(pts)
    pd.testing.assert_frame_equal(back, df, check_dtype=False, check_exact=False, rtol=1e-12)
    # a frame without genotype columns gives ungenotyped patients; MALE used when SEX is absent
    q = Patient.from_row({"ID": 5, "AGE": 40.0, "MALE": 1, "WT": 80.0, "HT": 180.0, "CRCL": 90.0})
    assert q.sex == "male" and q.crcl_ml_min == 90.0 and q.phenotypes()["CYP2D6"] == "unknown"
    with pytest.raises(PatientError, match="HT"):
        Patient.from_row({"AGE": 40.0, "SEX": "male", "WT": 80.0})


def test_spec_sources_and_unverified_flags():
    """clinical.md 3.2 marks weight, opioid-tolerance prevalence, CYP2C9 AS frequencies and OPRM1 carriers
    UNVERIFIED; age, sex, OSA, CYP2D6 phenotypes and surgery are not. Assumptions of the module are flagged."""
    spec = PopulationSpec()
    fields = [f.name for f in dataclasses.fields(spec)]
    for name in fields:
        sp = getattr(spec, name)
        assert isinstance(sp, SpecParam) and sp.source.citation.strip(), name
    for name in ("weight", "p_opioid_tolerant", "cyp2c9_classes", "p_oprm1_carrier"):
        assert getattr(spec, name).unverified and "clinical.md 3.2" in getattr(spec, name).source.citation
    for name in ("age", "p_female", "p_osa", "cyp2d6_phenotypes", "p_open_surgery"):
        assert not getattr(spec, name).unverified and "clinical.md 3.2" in getattr(spec, name).source.citation
    for name in ("height_female", "height_male", "scr_female", "scr_male", "cyp2d6_diplotypes",
                 "cyp2c9_diplotypes", "weight_sex_difference", "weight_height_corr", "hepatic"):  # fmt: skip
        assert getattr(spec, name).unverified and "assumption" in getattr(spec, name).source.citation, name
    assert spec.age.value[:2] == (57.0, 12.0)
    assert dict(spec.cyp2d6_phenotypes.value) == {"poor": 0.07, "intermediate": 0.12, "normal": 0.79,
                                                  "ultrarapid": 0.02}  # fmt: skip
    assert len(spec.describe()) == len(fields)


def test_spec_overrides_and_validation():
    spec = PopulationSpec().with_values(p_open_surgery=0.0, p_opioid_tolerant=1.0)
    assert spec.p_open_surgery.unverified and spec.p_open_surgery.source.citation == "user override"
    df = spine72_population(50, seed=1, spec=spec)
    assert (df["OPEN_SURGERY"] == 0).all() and (df["OPIOID_TOL"] == 1).all()
    with pytest.raises(PatientError, match="sum to"):
        PopulationSpec().with_values(cyp2d6_phenotypes={"poor": 0.5, "intermediate": 0.5, "normal": 0.5,
                                                        "ultrarapid": 0.0})  # fmt: skip
    wrong = {"poor": (("*4/*4", 1.0),), "intermediate": (("*1/*4", 1.0),), "normal": (("*1/*4", 1.0),),
             "ultrarapid": (("*1/*1x2", 1.0),)}  # fmt: skip
    with pytest.raises(PatientError, match=r"\*1/\*4 is listed under 'normal'.*'intermediate'"):
        PopulationSpec().with_values(cyp2d6_diplotypes=wrong)
    with pytest.raises(PatientError, match="no field"):
        PopulationSpec().with_values(p_smoker=0.2)
    with pytest.raises(PatientError, match="probability"):
        PopulationSpec().with_values(p_osa=1.5)
    for bad_n, bad_seed in ((0, 1), (10, -1), (2.5, 1), (10, "x")):
        with pytest.raises(PatientError):
            spine72_population(bad_n, bad_seed)
