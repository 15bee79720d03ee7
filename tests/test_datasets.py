"""Tests of the shipped reference datasets (:mod:`pkpd.datasets`).

The expected values were printed by R 4.2.2 from ``datasets::Theoph`` (``head(Theoph, 13)``,
``Theoph[122:132, ]``, the per-subject ``Wt``/``Dose`` table, ``sum(Theoph$conc)`` and ``sum(Theoph$Time)``)
and are typed here by hand, so the tests do not need R. Values are compared exactly (to 1e-12): the CSV
stores R's printed decimals, so any difference is a data error, not rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pkpd.data import validate_dataset
from pkpd.datasets import load_theoph

REFERENCE_JSON = Path(__file__).resolve().parents[1] / "benchmarks" / "validation" / "theoph_nlme_reference.json"

# R: x <- unique(as.data.frame(Theoph)[, c("Subject", "Wt", "Dose")]), ordered by the Subject label.
R_WT_DOSE = {
    1: (79.6, 4.02),
    2: (72.4, 4.40),
    3: (70.5, 4.53),
    4: (72.7, 4.40),
    5: (54.6, 5.86),
    6: (80.0, 4.00),
    7: (64.6, 4.95),
    8: (70.5, 4.53),
    9: (86.4, 3.10),
    10: (58.2, 5.50),
    11: (65.0, 4.92),
    12: (60.5, 5.30),
}


@pytest.fixture(scope="module")
def theoph() -> pd.DataFrame:
    return load_theoph()


def test_theoph_shape_and_columns(theoph: pd.DataFrame) -> None:
    """12 subjects, 132 observation rows (11 per subject), 12 dose rows, NONMEM columns in the stated order."""
    assert list(theoph.columns) == ["ID", "TIME", "AMT", "DV", "MDV", "EVID", "CMT", "WT", "DOSE"]
    assert len(theoph) == 144
    assert sorted(theoph["ID"].unique().tolist()) == list(range(1, 13))
    obs = theoph[theoph["EVID"] == 0]
    dose = theoph[theoph["EVID"] == 1]
    assert len(obs) == 132 and len(dose) == 12
    assert obs.groupby("ID").size().eq(11).all()
    assert theoph["ID"].dtype == np.int64 and theoph["EVID"].dtype == np.int64


def test_theoph_record_conventions(theoph: pd.DataFrame) -> None:
    """Each subject: one dose row first (TIME 0, EVID 1, MDV 1, CMT 1, AMT = DOSE, DV 0), then observations
    (EVID 0, MDV 0, CMT 2, AMT 0) with non-decreasing TIME starting at 0; the pkpd validator accepts it."""
    for sid, g in theoph.groupby("ID", sort=False):
        first, rest = g.iloc[0], g.iloc[1:]
        assert (first["EVID"], first["MDV"], first["CMT"], first["TIME"], first["DV"]) == (1, 1, 1, 0.0, 0.0), sid
        assert first["AMT"] == first["DOSE"]
        assert (rest["EVID"] == 0).all() and (rest["MDV"] == 0).all() and (rest["CMT"] == 2).all()
        assert (rest["AMT"] == 0).all()
        assert rest["TIME"].iloc[0] == 0.0 and rest["TIME"].is_monotonic_increasing
    # Subjects appear in R's row order, which is 1, 2, ..., 12.
    assert theoph["ID"].drop_duplicates().tolist() == list(range(1, 13))
    validate_dataset(theoph, n_compartments=2)


def test_theoph_spot_values_from_r(theoph: pd.DataFrame) -> None:
    """Rows printed by R (``head(Theoph, 13)``, ``Theoph[122:132, ]``, ``Theoph[c(56, 100), ]``)."""
    obs = theoph[theoph["EVID"] == 0]
    s1 = obs[obs["ID"] == 1]
    np.testing.assert_allclose(
        s1["TIME"], [0.00, 0.25, 0.57, 1.12, 2.02, 3.82, 5.10, 7.03, 9.05, 12.12, 24.37], rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        s1["DV"], [0.74, 2.84, 6.57, 10.50, 9.66, 8.58, 8.36, 7.47, 6.89, 5.94, 3.28], rtol=0, atol=1e-12
    )
    s2 = obs[obs["ID"] == 2]
    assert s2[["TIME", "DV"]].iloc[:2].to_numpy().tolist() == [[0.0, 0.0], [0.27, 1.72]]
    s12 = obs[obs["ID"] == 12]
    np.testing.assert_allclose(
        s12["TIME"], [0.00, 0.25, 0.50, 1.00, 2.00, 3.52, 5.07, 7.07, 9.03, 12.05, 24.15], rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        s12["DV"], [0.00, 1.25, 3.96, 7.82, 9.72, 9.75, 8.57, 6.59, 6.11, 4.57, 1.17], rtol=0, atol=1e-12
    )
    # R rows 56 (subject 6, conc 0.00 at time 0) and 100 (subject 10, conc 0.24 at time 0).
    assert obs.iloc[55][["ID", "TIME", "DV"]].tolist() == [6, 0.0, 0.0]
    assert obs.iloc[99][["ID", "TIME", "DV"]].tolist() == [10, 0.0, 0.24]
    # R: Theoph[which.max(Theoph$conc), ] is subject 5, Time 1, conc 11.4.
    top = obs.loc[obs["DV"].idxmax()]
    assert (top["ID"], top["TIME"], top["DV"]) == (5, 1.0, 11.4)
    # R: sum(Theoph$conc) = 654.78, sum(Theoph$Time) = 778.09.
    assert obs["DV"].sum() == pytest.approx(654.78, abs=1e-9)
    assert obs["TIME"].sum() == pytest.approx(778.09, abs=1e-9)


def test_theoph_weight_and_dose_per_subject(theoph: pd.DataFrame) -> None:
    """WT (kg) and DOSE (mg/kg) are constant within a subject and equal R's ``Wt`` and ``Dose``."""
    for sid, (wt, dose) in R_WT_DOSE.items():
        g = theoph[theoph["ID"] == sid]
        assert (g["WT"] == wt).all(), sid
        assert (g["DOSE"] == dose).all(), sid
        assert g.loc[g["EVID"] == 1, "AMT"].tolist() == [dose], sid


def test_theoph_returns_fresh_frame() -> None:
    """Mutating the returned frame does not change the next load."""
    a = load_theoph()
    a.loc[0, "AMT"] = -1.0
    assert load_theoph().loc[0, "AMT"] == 4.02


def test_nlme_reference_json_is_consistent() -> None:
    """The stored R nlme reference (written by benchmarks/validation/theoph_nlme.R) is complete and self-consistent:
    132 observations in 12 groups per fit, the book-script cross-check agrees (relative 1e-3), and the stored
    per-subject ranef rows cover subjects 1..12."""
    ref = json.loads(REFERENCE_JSON.read_text())
    assert ref["data_check"]["identical_to_R_Theoph"] is True
    for name in ("ml_diag", "reml_diag", "ml_symm"):
        fit = ref["fits"][name]
        assert fit["converged"] is True, name
        assert fit["n_observations"] == 132 and fit["n_groups"] == 12, name
        assert set(fit["fixed_effects"]) == {"lKe", "lKa", "lCl"}, name
        assert [row["ID"] for row in fit["ranef"]] == list(range(1, 13)), name
    assert ref["book_script_check"]["fm3Theo.nlme"]["max_rel_difference"] < 1e-3
    assert ref["book_script_check"]["fm1Theo.nlme"]["max_rel_difference"] < 1e-3
    ml = ref["fits"]["ml_diag"]
    assert ml["fixed_effects"]["lKe"] == pytest.approx(-2.4547, abs=1e-4)
    assert ml["random_effect_sd"]["lKa"] == pytest.approx(0.6436, abs=1e-4)
