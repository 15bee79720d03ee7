"""Tests of the ``regimens`` package: data model, text and TOML formats, dose expansion, label limits,
and the shipped regimens.

Expected numbers come from ``shared/reference/models.md`` section C (label limits), D (CPIC) and
``clinical.md`` sections 2 and 3.2 (comparators, Iyer 2023 arms, ketorolac fusion caps); each test says
which line it checks. Dose-expansion expectations are worked out by hand from the schedule (e.g. q6h from
0 h to 48 h, stop exclusive: doses at 0, 6, ..., 42 h = 8 doses), not copied from the code's output.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pkpd.drugs import get_drug, list_drugs
from pkpd.errors import PKPDError
from regimens import (
    LIMITS,
    PCA,
    PRN,
    Adjustment,
    Modality,
    Regimen,
    RegimenError,
    RegimenParseError,
    Scheduled,
    check_regimen,
    format_findings,
    get_regimen,
    limits_for,
    list_regimens,
    load_regimen,
    parse_regimen_text,
    parse_regimen_toml,
    save_regimen,
)
from regimens.limits import _worst_case

STD = {"AGE": 50, "WT": 70, "CRCL": 100, "HEPATIC": 0, "MALE": 1}  # the standard 70-kg, 50-y patient


def _rules(findings, severity=None):
    return sorted((f.drug, f.rule) for f in findings if severity is None or f.severity == severity)


# ---------------------------------------------------------------------------------------------------------
# Construction and validation
# ---------------------------------------------------------------------------------------------------------


def test_items_normalise_drug_aliases_and_route_spellings():
    s = Scheduled("paracetamol", "IV", dose_mg=1000, every_h=6)
    assert (s.drug, s.route, s.dose_mg) == ("acetaminophen", "iv", 1000.0)
    assert Scheduled("OxyContin", "PO ER", dose_mg=10, every_h=12).route == "po_er"
    assert PCA("Dilaudid", demand_mg=0.2, lockout_min=10).route == "iv"
    assert Scheduled("exparel", "Infiltration", dose_mg=266).drug == "bupivacaine_liposomal"


@pytest.mark.parametrize(
    "make, fragments",
    [
        (
            lambda: Scheduled("acetamol", "iv", dose_mg=1),
            ["scheduled item 'acetamol'", "unknown drug 'acetamol'", "known drugs:", "acetaminophen", "ketorolac"],
        ),
        (
            lambda: Scheduled("ketorolac", "po", dose_mg=30),
            ["scheduled item 'ketorolac'", "ketorolac has no route 'po'", "routes of ketorolac: iv (IV)"],
        ),
        (
            lambda: Scheduled("acetaminophen", "iv", dose_mg=0),
            ["scheduled item 'acetaminophen'", "dose_mg must be > 0"],
        ),
        (lambda: Scheduled("acetaminophen", "iv", dose_mg=-5), ["dose_mg must be > 0, got -5"]),
        (
            lambda: Scheduled("acetaminophen", "iv", dose_mg=1000, dose_mg_per_kg=15),
            ["give exactly one of dose_mg, dose_mg_per_kg", "got dose_mg, dose_mg_per_kg"],
        ),
        (lambda: Scheduled("acetaminophen", "iv"), ["give exactly one of", "got none"]),
        (
            lambda: Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=6, start_h=10, stop_h=5),
            ["stop_h (5 h) must be after start_h (10 h)"],
        ),
        (lambda: Scheduled("acetaminophen", "iv", dose_mg=1000, stop_h=24), ["a single dose", "takes no stop_h"]),
        (
            lambda: Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=6, count=0),
            ["count must be a whole number >= 1"],
        ),
        (lambda: Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=0), ["every_h must be > 0"]),
        (
            lambda: Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=6, infusion_h=7),
            ["infusion_h (7 h) is longer than the dosing interval every_h (6 h)"],
        ),
        (
            lambda: Scheduled("acetaminophen", "po", dose_mg=1000, every_h=6, infusion_h=0.25),
            ["an oral (PO) dose cannot be an infusion"],
        ),
        (lambda: Scheduled("ketamine", "iv", rate_mg_per_kg_h=0.25, every_h=6), ["continuous infusion", "every_h"]),
        (lambda: Scheduled("acetaminophen", "iv", dose_mg=float("nan")), ["dose_mg must be finite"]),
        (lambda: Scheduled("acetaminophen", "iv", dose_mg="1000"), ["dose_mg must be a number"]),
        (
            lambda: PRN("oxycodone", "po", 5, 11, 4),
            ["PRN item 'oxycodone'", "threshold_nrs must be on the 0-10 NRS scale"],
        ),
        (lambda: PRN("oxycodone", "po", 5, 4, 0), ["min_interval_h must be > 0"]),
        (lambda: PRN("oxycodone", "po", 5, 4, 4, max_per_24h=0), ["max_per_24h must be a whole number >= 1"]),
        (lambda: PRN("oxycodone", "iv", 5, 4, 4), ["oxycodone has no route 'iv'", "po (PO), po_er (PO ER)"]),
        (
            lambda: PCA("hydromorphone", demand_mg=0.2, lockout_min=0),
            ["PCA item 'hydromorphone'", "lockout_min must be > 0"],
        ),
        (lambda: PCA("hydromorphone", demand_mg=0, lockout_min=10), ["demand_mg must be > 0"]),
        (
            lambda: PCA("hydromorphone", demand_mg=0.4, lockout_min=10, hourly_max_mg=0.3),
            ["hourly_max_mg (0.3 mg) is below one demand"],
        ),
        (
            lambda: PCA("hydromorphone", demand_mg=0.2, lockout_min=10, start_h=24, stop_h=0),
            ["stop_h (0 h) must be after start_h (24 h)"],
        ),
        (
            lambda: Modality("yoga", ((0, 1),)),
            ["modality 'yoga'", "known kinds: tens, physical_therapy, psych_education"],
        ),
        (lambda: Modality("tens", ((0, 2), (1, 3))), ["windows 0h-2h and 1h-3h overlap"]),
        (lambda: Modality("tens", ((2, 1),)), ["window 2h-1h must end after it starts"]),
        (lambda: Modality("tens", ()), ["give at least one (start_h, end_h) window"]),
        (lambda: Adjustment("AGEE >= 65", 15), ["unknown covariate 'AGEE'", "known covariate columns: AGE"]),
        (lambda: Adjustment("AGE = 65", 15), ["use '==' for equality"]),
        (lambda: Adjustment("AGE >= 65 or", 15), ["expected a covariate column", "AGE >= 65 or WT < 50"]),
        (lambda: Adjustment("AGE >= 65", 0), ["dose_mg must be > 0"]),
        (lambda: Regimen(""), ["regimen name must be a non-empty one-line string"]),
        (lambda: Regimen("r", horizon_h=0), ["regimen 'r': horizon_h must be > 0"]),
        (
            lambda: Regimen("r", prn=(PRN("oxycodone", "po", 5, 4, 4, start_h=80),)),
            ["oxycodone 5 mg PO q4h PRN NRS>=4 starts at 80h, at or after the horizon (72h)"],
        ),
        (
            lambda: Regimen("r", prn=(PRN("oxycodone", "po", 5, 4, 4), PRN("oxycodone", "po", 10, 4, 4))),
            ["two PRN rules for oxycodone PO with the same threshold NRS>=4"],
        ),
        (
            lambda: Regimen("r", modalities=(Modality("tens", ((0, 1),)), Modality("tens", ((5, 6),)))),
            ["modality 'tens' is given twice"],
        ),
    ],
)
def test_construction_errors_name_the_item_and_the_problem(make, fragments):
    with pytest.raises(RegimenError) as info:
        make()
    assert isinstance(info.value, PKPDError)
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))


def test_psych_education_may_have_no_windows_and_modalities_are_sorted():
    assert Modality("psych_education").windows == ()
    m = Modality("physical_therapy", [[24, 25], [0, 1]])
    assert m.windows == ((0.0, 1.0), (24.0, 25.0))
    assert m.active(0.5) and not m.active(1.0) and not Modality("tens", ((0, 1),), enabled=False).active(0.5)


def test_prn_rule_selection_highest_satisfied_threshold_wins():
    c0 = get_regimen("C0")
    assert c0.prn_rule("oxycodone", "PO", 8, 30).dose_mg == 10  # NRS 8 satisfies >=4 and >=7: >=7 wins
    assert c0.prn_rule("oxycodone", "po", 5, 30).dose_mg == 5
    assert c0.prn_rule("oxycodone", "po", 3, 30) is None
    assert c0.prn_rule("oxycodone", "po", 9, 12) is None  # PRN starts at 24 h in C0 (PCA before)


# ---------------------------------------------------------------------------------------------------------
# Dose expansion
# ---------------------------------------------------------------------------------------------------------


def test_dose_events_expand_interval_stop_count_and_horizon():
    ev = Regimen("r", scheduled=(Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=6, stop_h=72),)).dose_events()
    assert [e.time_h for e in ev] == [6.0 * k for k in range(12)]  # stop is exclusive: 0..66 h
    ev = Regimen("r", scheduled=(Scheduled("ketorolac", "iv", dose_mg=30, every_h=6, stop_h=48),)).dose_events(STD)
    assert len(ev) == 8 and sum(e.amount_mg for e in ev) == 240  # clinical.md 2: 30 mg q6h x 48 h = 240 mg
    ev = Regimen("r", scheduled=(Scheduled("gabapentin", "po", dose_mg=300, every_h=8, count=3),)).dose_events()
    assert [e.time_h for e in ev] == [0, 8, 16]
    ev = Regimen("r", scheduled=(Scheduled("gabapentin", "po", dose_mg=300, every_h=8),)).dose_events()
    assert [e.time_h for e in ev] == [8.0 * k for k in range(9)]  # to the 72-h horizon: 0..64 h
    ev = Regimen(
        "r", horizon_h=24, scheduled=(Scheduled("gabapentin", "po", dose_mg=300, every_h=8, start_h=-2),)
    ).dose_events()
    assert [e.time_h for e in ev] == [-2, 6, 14, 22]
    ev = Regimen(
        "r", scheduled=(Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=6, stop_h=12, infusion_h=0.25),)
    ).dose_events()
    assert [(e.duration_h, e.rate_mg_h) for e in ev] == [(0.25, 4000.0)] * 2


def test_dose_events_resolve_mg_per_kg_rates_and_pca():
    r = parse_regimen_text("""
        ketamine 0.5 mg/kg IV once at -2h
        ketamine 0.25 mg/kg/h IV infusion from -3h to 0h
        hydromorphone 0.2 mg IV PCA lockout 10 min basal 0.1 mg/h loading 0.5 mg from 0h to 24h
        acetaminophen 1000 mg PO once at -2h
    """)
    ev = r.dose_events({"WT": 80})
    got = [(e.time_h, e.drug, e.route, e.amount_mg, e.duration_h, e.kind) for e in ev]
    assert got == [
        (-3.0, "ketamine", "iv", 0.25 * 80 * 3, 3.0, "scheduled"),  # 60 mg over 3 h
        (-2.0, "acetaminophen", "po", 1000.0, 0.0, "scheduled"),
        (-2.0, "ketamine", "iv", 40.0, 0.0, "scheduled"),  # 0.5 mg/kg x 80 kg
        (0.0, "hydromorphone", "iv", 0.5, 0.0, "pca_loading"),
        (0.0, "hydromorphone", "iv", 0.1 * 24, 24.0, "pca_basal"),
    ]
    with pytest.raises(RegimenError, match=r"needs covariate WT, which the patient covariates lack"):
        r.dose_events({"AGE": 50})


@pytest.mark.parametrize(
    "cov, dose",
    [
        ({"AGE": 50, "WT": 70, "CRCL": 100}, 30.0),
        ({"AGE": 65, "WT": 70, "CRCL": 100}, 15.0),  # label: >= 65 y
        ({"AGE": 50, "WT": 49.9, "CRCL": 100}, 15.0),  # < 50 kg
        ({"AGE": 50, "WT": 70, "CRCL": 59}, 15.0),  # renal impairment (CrCL threshold of C1)
    ],
)
def test_adjustments_replace_the_dose(cov, dose):
    s = Scheduled(
        "ketorolac",
        "iv",
        dose_mg=30,
        every_h=6,
        stop_h=48,
        adjustments=(Adjustment("AGE>=65 or WT<50 or CRCL<60", 15, "Toradol label"),),
    )
    assert s.adjustments[0].when == "AGE >= 65 or WT < 50 or CRCL < 60"
    assert {e.amount_mg for e in s.events(cov)} == {dose}


def test_first_true_adjustment_wins_and_missing_covariates_raise():
    s = Scheduled(
        "ketorolac",
        "iv",
        dose_mg=30,
        every_h=6,
        adjustments=(Adjustment("AGE >= 80", 10), Adjustment("AGE >= 65 and WT >= 50", 15)),
    )
    assert s.dose_for({"AGE": 85, "WT": 70}) == 10
    assert s.dose_for({"AGE": 70, "WT": 70}) == 15
    assert s.dose_for({"AGE": 70, "WT": 45}) == 30  # 'and' binds: neither condition holds
    with pytest.raises(RegimenError) as info:
        s.dose_for({"AGE": 85})
    assert "needs covariate WT" in str(info.value) and "ketorolac 30 mg IV q6h" in str(info.value)
    c1 = get_regimen("C1")
    with pytest.raises(RegimenError, match="CRCL"):
        c1.dose_events({"AGE": 50, "WT": 70})


# ---------------------------------------------------------------------------------------------------------
# Text form
# ---------------------------------------------------------------------------------------------------------

BRIEF_TEXT = """\
# the example of the text form
acetaminophen 1000 mg IV q6h from 0h to 72h
acetaminophen 1000 mg PO once at -2h
ketorolac 30 mg IV q6h for 48h if AGE>=65 or WT<50: 15 mg
gabapentin 300 mg PO q8h
ketamine 0.5 mg/kg IV once at -1h
ketamine 0.25 mg/kg/h IV infusion from -3h to 0h
bupivacaine_liposomal 266 mg infiltration once at -0.5h
oxycodone 5 mg PO q4h PRN NRS>=4
oxycodone 10 mg PO q4h PRN NRS>=7
hydromorphone 0.2 mg IV PCA lockout 10 min from 0h to 24h
tens on 0h-2h, 8h-10h
"""


def test_brief_example_parses_into_the_expected_items():
    r = parse_regimen_text(BRIEF_TEXT, name="example")
    assert r.scheduled == (
        Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=6, start_h=0, stop_h=72),
        Scheduled("acetaminophen", "po", dose_mg=1000, start_h=-2),
        Scheduled(
            "ketorolac", "iv", dose_mg=30, every_h=6, stop_h=48, adjustments=(Adjustment("AGE >= 65 or WT < 50", 15),)
        ),
        Scheduled("gabapentin", "po", dose_mg=300, every_h=8),
        Scheduled("ketamine", "iv", dose_mg_per_kg=0.5, start_h=-1),
        Scheduled("ketamine", "iv", rate_mg_per_kg_h=0.25, start_h=-3, stop_h=0),
        Scheduled("bupivacaine_liposomal", "infiltration", dose_mg=266, start_h=-0.5),
    )
    assert r.prn == (PRN("oxycodone", "po", 5, 4, 4), PRN("oxycodone", "po", 10, 7, 4))
    assert r.pca == (PCA("hydromorphone", "iv", demand_mg=0.2, lockout_min=10, start_h=0, stop_h=24),)
    assert r.modalities == (Modality("tens", ((0, 2), (8, 10))),)
    assert r.name == "example" and r.horizon_h == 72


def test_text_units_headers_and_options():
    r = parse_regimen_text("""name: demo
description: first line
description:  second line, indented
horizon: 96h
reference: Iyer 2023, Spine
paracetamol 1 g PO q6h x4   # 1 g = 1000 mg
fentanyl 25 mcg IV once at 0h
oxycodone 10 mg PO ER q12h from 0h to 48h
oxycodone 5 mg PO every 4h PRN NRS>=4 max 4/24h from 24h
hydromorphone 0.2 mg IV PCA lockout 6 min basal 0.1 mg/h max 2 mg/h loading 1 mg for 24h
physical_therapy on 24h to 25h, 48h-49h disabled
psych_education
""")
    assert (r.name, r.horizon_h, r.references) == ("demo", 96.0, ("Iyer 2023, Spine",))
    assert r.description == "first line\n second line, indented"
    s0, s1, s2 = r.scheduled
    assert (s0.drug, s0.dose_mg, s0.count) == ("acetaminophen", 1000.0, 4)
    assert s1.dose_mg == pytest.approx(0.025)
    assert (s2.route, s2.every_h, s2.stop_h) == ("po_er", 12.0, 48.0)
    assert r.prn[0] == PRN("oxycodone", "po", 5, 4, 4, start_h=24, max_per_24h=4)
    assert r.pca[0] == PCA("hydromorphone", "iv", 0.2, 6, 0, 24, 0.1, 2, 1)
    assert r.modalities == (
        Modality("physical_therapy", ((24, 25), (48, 49)), enabled=False),
        Modality("psych_education"),
    )


@pytest.mark.parametrize(
    "bad, token, fragment",
    [
        ("acetamol 1000 mg IV q6h", "acetamol", "unknown drug 'acetamol'; known drugs:"),
        ("acetaminophen 1000 IV q6h", "IV", "expected a dose unit after '1000'"),
        ("acetaminophen 1000 mg IM q6h", "IM", "acetaminophen has no route 'IM'; routes of acetaminophen: IV, PO"),
        ("acetaminophen 1000 mg IV q6h banana", "banana", "unexpected word; expected one of"),
        ("acetaminophen 1000 mg IV q6h from 10h to 5h", "5h", "stop_h (5 h) must be after start_h (10 h)"),
        ("acetaminophen 1000 mg IV once at -2", "-2", "a time needs a unit"),
        ("acetaminophen 1000 mg IV q6h q8h", "q8h", "'q8h' is given twice"),
        ("acetaminophen 1000 mg IV once at -2h q6h", "q6h", "either 'once' or repeated"),
        ("acetaminophen 1000 mg IV q6h over 7h", "7h", "infusion_h (7 h) is longer than the dosing interval"),
        ("ketorolac 30 mg IV q6h for 48h if AGEE>=65: 15 mg", "AGEE", "unknown covariate 'AGEE'"),
        ("ketorolac 30 mg IV q6h if AGE>=65: 15 mg/kg", "15 mg/kg", "the adjusted dose is given in mg"),
        ("oxycodone 5 mg PO q4h PRN NRS>4", ">", "write the PRN threshold as 'NRS>=4'"),
        ("oxycodone 5 mg PO q4h PRN NRS>=11", "11", "threshold_nrs must be on the 0-10 NRS scale"),
        ("oxycodone 5 mg PO PRN NRS>=4", "PRN", "needs its minimum interval, e.g. 'q4h'"),
        ("oxycodone 5 mg PO q4h PRN NRS>=4 if AGE>65: 2 mg", "if", "adjustments"),
        ("hydromorphone 0.2 mg IV PCA", "PCA", "needs its lockout, e.g. 'lockout 10 min'"),
        ("hydromorphone 0.2 mg IV PCA lockout 10 min q4h", "q4h", "'q4h' does not apply to a PCA line"),
        ("hydromorphone 0.2 mg IV PCA lockout 10 min max 5", "5", "expected a unit"),
        ("ketamine 0.25 mg/kg/h IV infusion q6h from -3h to 0h", "q6h", "continuous infusion"),
        ("tens on 2h-1h", "tens", "window 2h-1h must end after it starts"),
        ("tens on 0h-2h blah", "blah", "expected ', <window>' or 'disabled'"),
        ("horizon: -3h", "-3h", "the horizon must be > 0"),
    ],
)
def test_text_errors_name_line_token_and_show_an_example(bad, token, fragment):
    text = "# comment\n\nacetaminophen 1000 mg PO q6h\n" + bad + "\n"
    with pytest.raises(RegimenParseError) as info:
        parse_regimen_text(text)
    e = info.value
    msg = str(e)
    assert e.line == 4 and msg.startswith("line 4: ")
    assert e.token == token, msg
    assert f"(at {token!r})" in msg
    assert fragment in msg, msg
    assert "example of a valid line: " in msg
    example = msg.split("example of a valid line: ")[1]
    if not example.startswith("horizon"):
        parse_regimen_text(example)  # the example shown is itself valid


def test_cross_item_text_errors_point_at_the_line_of_the_item():
    text = "oxycodone 5 mg PO q4h PRN NRS>=4\n# x\noxycodone 10 mg PO q4h PRN NRS>=4\n"
    with pytest.raises(RegimenParseError) as info:
        parse_regimen_text(text)
    assert info.value.line == 3 and "same threshold NRS>=4" in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Round trips (text and TOML)
# ---------------------------------------------------------------------------------------------------------


def _full_regimen() -> Regimen:
    return Regimen(
        name="everything",
        description='Line one with "quotes" and a backslash \\ and # hash.\n\n  indented line after a blank one',
        scheduled=(
            Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=6, start_h=0.1 + 0.2, stop_h=71.5, infusion_h=0.25),
            Scheduled("acetaminophen", "po", dose_mg=650, start_h=-2),
            Scheduled(
                "ketorolac",
                "iv",
                dose_mg=30,
                every_h=6,
                stop_h=48,
                count=7,
                adjustments=(
                    Adjustment("AGE >= 65 or WT < 50 and CRCL < 60", 15, 'label "renal" clause \\ note'),
                    Adjustment("HEPATIC == 2", 7.5),
                ),
            ),
            Scheduled("ketamine", "iv", dose_mg_per_kg=0.5, start_h=-1),
            Scheduled("ketamine", "iv", rate_mg_per_kg_h=0.25, start_h=-3, stop_h=0),
            Scheduled("ketamine", "iv", rate_mg_h=1e-7, start_h=0),
            Scheduled("oxycodone", "po_er", dose_mg=10, every_h=12),
        ),
        prn=(
            PRN("oxycodone", "po", 5, 4, 4, start_h=24, stop_h=72),
            PRN("oxycodone", "po", 10, 7.5, 4, max_per_24h=3),
            PRN("hydromorphone", "iv", 0.5, 7, 2 / 3),
        ),
        pca=(PCA("hydromorphone", "iv", 0.2, 10, 0, 24, basal_mg_h=0.1, hourly_max_mg=1.5, loading_mg=0.4),),
        modalities=(
            Modality("tens", ((-3.5, -2), (0, 2), (8, 10))),
            Modality("physical_therapy", ((24, 25),), False),
            Modality("psych_education"),
        ),
        horizon_h=96,
        references=("Iyer 2023, Spine", "clinical.md 3.2"),
    )


@pytest.mark.parametrize("name", ["<full>", "C0", "C1", "IYER_PLACEBO", "IYER_APAP", "IYER_KETOROLAC"])
def test_round_trips_text_and_toml(name, tmp_path: Path):
    r = _full_regimen() if name == "<full>" else get_regimen(name)
    assert parse_regimen_text(r.to_text()) == r
    assert parse_regimen_toml(r.to_toml()) == r
    assert load_regimen(save_regimen(r, tmp_path / "r.toml")) == r
    assert load_regimen(save_regimen(r, tmp_path / "r.txt")) == r
    assert parse_regimen_text(parse_regimen_text(r.to_text()).to_text()) == r


def test_toml_errors_name_table_item_and_line(tmp_path: Path):
    base = 'name = "x"\n\n[[scheduled]]\ndrug = "acetaminophen"\nroute = "po"\ndose_mg = 1000.0\n\n'
    cases = [
        (
            '[[scheduled]]\ndrug = "ketorolac"\nroute = "iv"\ndose = 30.0\n',
            ["[[scheduled]] item 2 (line 8)", "unknown key 'dose'", "known keys: drug, route, dose_mg"],
        ),
        (
            '[[scheduled]]\ndrug = "ketorolac"\nroute = "po"\ndose_mg = 30.0\n',
            ["[[scheduled]] item 2 (line 8)", "ketorolac has no route 'po'"],
        ),
        ('[[prn]]\ndrug = "oxycodone"\nroute = "po"\ndose_mg = 5.0\n', ["[[prn]] item 1 (line 8)", "threshold_nrs"]),
        ('[[modalities]]\nkind = "tens"\n', ["unknown key 'modalities'", "the table is [[modality]]"]),
        ("horizon_h = 72.0\n", ["[[scheduled]] item 1 (line 3)", "unknown key 'horizon_h'"]),  # inside the table
        (
            (
                '[[scheduled]]\ndrug = "ketorolac"\nroute = "iv"\ndose_mg = 30.0\nevery_h = 6.0\n'
                'adjustments = [{ when = "AGE >= 65", dose = 15.0 }]\n'
            ),
            ["item 2 (line 8)", "unknown key 'dose'"],
        ),
    ]
    for extra, fragments in cases:
        p = tmp_path / "bad.toml"
        p.write_text(base + extra)
        try:
            load_regimen(p)
        except RegimenError as exc:
            msg = str(exc)
        else:
            msg = "<no error>"
        assert msg.startswith(str(p)), msg
        for frag in fragments:
            assert frag in msg, (frag, msg)
    p.write_text("name = \n")
    with pytest.raises(RegimenError, match="invalid TOML"):
        load_regimen(p)
    with pytest.raises(RegimenError, match="cannot read regimen file"):
        load_regimen(tmp_path / "missing.toml")


# ---------------------------------------------------------------------------------------------------------
# Label limits and the worst-case checker
# ---------------------------------------------------------------------------------------------------------


def test_limit_table_sources_and_unverified_flags_follow_models_md():
    drugs = set(list_drugs())
    for lim in LIMITS:
        assert lim.drug in drugs, lim.drug
        assert str(lim.source).strip()
        if lim.source.citation.startswith("general knowledge"):
            assert lim.is_unverified, lim
    by = {(lim.drug, lim.population, lim.route): lim for lim in LIMITS}
    # models.md C values, not flagged UNVERIFIED there
    apap = by[("acetaminophen", "adults (>= 50 kg)", None)]
    assert (apap.max_daily_mg, apap.max_single_mg, apap.min_interval_h, apap.is_unverified) == (4000, 1000, 4, False)
    small = by[("acetaminophen", "patients < 50 kg", None)]
    assert (small.max_single_mg_per_kg, small.max_daily_mg_per_kg, small.when) == (15, 75, "WT < 50")
    ket = by[("ketorolac", "adults < 65 y", "iv")]
    assert (ket.max_daily_mg, ket.is_unverified) == (120, False)
    ket65 = by[("ketorolac", "aged >= 65 y or < 50 kg", "iv")]
    assert (ket65.max_single_mg, ket65.max_daily_mg, ket65.is_unverified) == (15, 60, False)
    assert by[("ketorolac", "spinal fusion", None)].max_total_mg == 240  # clinical.md 2 (Duke, > 240 mg)
    assert by[("ketorolac", "spinal fusion", None)].max_duration_h == 48
    assert by[("bupivacaine_liposomal", "adults", "infiltration")].max_single_mg == 266
    ibu = [(lim.max_daily_mg, lim.is_unverified) for lim in limits_for("ibuprofen") if lim.max_daily_mg == 3200]
    assert ibu == [(3200, False)]  # Rx maximum 3200 mg/day (LBL rxreasoner)
    # models.md C marks the exact hepatic g/day caps UNVERIFIED
    assert by[("acetaminophen", "mild-moderate hepatic impairment", None)].is_unverified
    assert not by[("acetaminophen", "severe hepatic impairment", "iv")].is_unverified
    # drugs documented as having no limits
    for name in ("hydromorphone", "morphine", "fentanyl", "remifentanil", "ketamine", "ropivacaine"):
        assert limits_for(name) == ()


def test_standard_patient_passes_every_shipped_regimen():
    for name in list_regimens():
        findings = check_regimen(get_regimen(name), STD)
        assert findings == [], (name, format_findings(findings))


def test_ketorolac_for_a_70_year_old_gives_the_brief_message():
    """models.md C (Toradol label): >= 65 y: 15 mg q6h, maximum 60 mg/day; clinical.md 2 (Duke): fusion caps
    48 h / 240 mg. Exact arithmetic on the schedule, no tolerance needed."""
    r = parse_regimen_text("ketorolac 30 mg IV q6h")
    f = {x.rule: x for x in check_regimen(r, {**STD, "AGE": 70}, fusion=False)}
    assert set(f) == {"max_single_dose", "max_daily_dose"} and all(x.severity == "warning" for x in f.values())
    # 30 mg q6h = 4 x 30 = 120 mg/24 h; label for >= 65 y: 15 mg per dose, 60 mg/day (models.md C)
    assert f["max_daily_dose"].message.startswith("ketorolac 30 mg IV q6h gives 120 mg/24 h")
    assert (
        "the label maximum for a patient aged 70 is 60 mg/day IV (Toradol label via models.md C)"
        in f["max_daily_dose"].message
    )
    assert "is 15 mg per dose" in f["max_single_dose"].message
    assert not f["max_daily_dose"].unverified
    # the same schedule for 72 h breaks the fusion caps: 12 doses = 360 mg > 240 mg, course 72 h > 48 h
    f = {x.rule: x for x in check_regimen(r, STD)}
    assert set(f) == {"max_total_dose", "max_duration"}
    assert "gives 360 mg in total" in f["max_total_dose"].message and "is 240 mg" in f["max_total_dose"].message
    assert "a course of 72 h" in f["max_duration"].message


def test_45_kg_patient_gets_per_kg_acetaminophen_limits():
    """models.md C (Ofirmev label): < 50 kg: 15 mg/kg per dose, 75 mg/kg/day."""
    r = parse_regimen_text("acetaminophen 1000 mg IV q6h")
    f = {x.rule: x.message for x in check_regimen(r, {**STD, "WT": 45})}
    # models.md C: < 50 kg: 15 mg/kg per dose (675 mg at 45 kg), 75 mg/kg/day (3375 mg)
    assert (
        "the label maximum for a patient weighing 45 kg is 675 mg per dose (15 mg/kg x 45 kg)" in f["max_single_dose"]
    )
    assert "4000 mg/24 h" in f["max_daily_dose"] and "3375 mg/day (75 mg/kg/day x 45 kg)" in f["max_daily_dose"]
    ok = parse_regimen_text("acetaminophen 15 mg/kg IV q6h")  # 675 mg q6h = 2700 mg/day
    assert check_regimen(ok, {**STD, "WT": 45}) == []


def test_adversarial_patient_on_c1():
    """A 90-y, 45-kg patient with CrCL 15 mL/min and severe hepatic impairment on C1. Expected: acetaminophen
    contraindicated (oral: general knowledge, UNVERIFIED), ketorolac contraindicated in advanced renal impairment
    (general knowledge, UNVERIFIED), per-kg acetaminophen caps (models.md C), gabapentin renal band (UNVERIFIED)."""
    old = {"AGE": 90, "WT": 45, "CRCL": 15, "HEPATIC": 3}
    findings = check_regimen(get_regimen("C1"), old)
    errors = {(f.drug, f.rule): f for f in findings if f.severity == "error"}
    assert set(errors) == {("acetaminophen", "contraindicated"), ("ketorolac", "contraindicated")}
    assert errors[("ketorolac", "contraindicated")].unverified  # 'advanced renal impairment' threshold: UNVERIFIED
    warnings = _rules(findings, "warning")
    assert ("acetaminophen", "max_single_dose") in warnings  # 1000 mg > 15 mg/kg x 45 kg
    assert ("gabapentin", "max_daily_dose") in warnings  # renal band (general knowledge, UNVERIFIED)
    # the C1 adjustment gives ketorolac 15 mg (age/weight/CrCL): no ketorolac dose warning
    assert not [f for f in findings if f.drug == "ketorolac" and f.rule.startswith("max_")]
    only_verified = check_regimen(get_regimen("C1"), old, include_unverified=False)
    assert all(not f.unverified for f in only_verified)
    assert ("ketorolac", "contraindicated") not in _rules(only_verified)


def test_opioid_as_needed_dose_fractions_in_renal_and_hepatic_impairment():
    """The labels' reduced starting doses, written out here: DILAUDID hydromorphone 25 % at CrCL < 30 mL/min or
    moderate/severe hepatic impairment, 50 % at CrCL 30 to < 60 or mild hepatic impairment (the stricter where
    both apply); ROXICODONE oxycodone IR 1/3 in hepatic impairment, no number in renal impairment; morphine no
    number. The checker's cap: the fraction x the upper end of the usual adult starting dose (hydromorphone IV
    0.2-1 mg -> 1 mg; 25 %: 0.25 mg per dose)."""
    from regimens.limits import START_FRACTIONS, rescue_fraction

    def frac(drug, route, **cov):
        return rescue_fraction(drug, route, {**STD, **cov})

    assert frac("hydromorphone", "iv", CRCL=15).fraction == 0.25
    assert frac("hydromorphone", "iv", CRCL=45).fraction == 0.5
    assert frac("hydromorphone", "po", HEPATIC=1).fraction == 0.5
    assert frac("hydromorphone", "iv", HEPATIC=3).fraction == 0.25
    both = frac("hydromorphone", "iv", CRCL=45, HEPATIC=2)
    assert both.fraction == 0.25 and both.rule.kind == "hepatic"
    assert "stricter than the renal rule" in both.describe() and "50 %" in both.describe()
    assert frac("oxycodone", "po", HEPATIC=1).fraction == 1 / 3 and frac("oxycodone", "po", HEPATIC=3).cap_mg == 5.0
    renal = frac("oxycodone", "po", CRCL=20)
    assert not renal.applies and "conservative approach" in renal.notes[0]
    assert not frac("morphine", "iv", CRCL=20, HEPATIC=3).applies
    assert frac("hydromorphone", "iv").fraction == 1.0 and not frac("oxycodone", "po").applies
    assert all(r.is_unverified for r in START_FRACTIONS)  # general knowledge: the labels are not in models.md
    crcl15 = {**STD, "CRCL": 15}
    f = check_regimen(parse_regimen_text("hydromorphone 0.3 mg IV q2h PRN NRS>=7"), crcl15)
    assert [x.rule for x in f] == ["starting_dose"] and "at most 0.25 mg per dose" in f[0].message
    assert f[0].unverified and "DILAUDID" in f[0].message
    assert check_regimen(parse_regimen_text("hydromorphone 0.25 mg IV q2h PRN NRS>=7"), crcl15) == []
    assert (
        check_regimen(parse_regimen_text("hydromorphone 0.3 mg IV q2h PRN NRS>=7"), crcl15, include_unverified=False)
        == []
    )
    assert check_regimen(parse_regimen_text("hydromorphone 0.3 mg IV q2h PRN NRS>=7"), STD) == []


def test_severe_hepatic_impairment_contraindicates_iv_acetaminophen():
    f = check_regimen(get_regimen("IYER_APAP"), {**STD, "HEPATIC": 3})
    assert [(x.severity, x.drug, x.rule, x.unverified) for x in f if x.severity == "error"] == [
        ("error", "acetaminophen", "contraindicated", False)
    ]
    assert "acetaminophen IV is contraindicated for a patient with hepatic impairment grade 3" in f[0].message


@pytest.mark.parametrize(
    "phenotypes, expect",
    [
        ({"CYP2D6": "PM"}, {"codeine", "tramadol"}),
        ({"CYP2D6": "poor"}, {"codeine", "tramadol"}),
        ({"CYP2D6": "*4/*4"}, {"codeine", "tramadol"}),  # AS 0 = PM (models.md D1)
        ({"CYP2D6": "*1/*2x2"}, {"codeine", "tramadol"}),  # AS 3 > 2.25 = UM: avoid both (models.md D1)
        ({"CYP2D6": "normal"}, set()),
        ({"CYP2D6": 0.5}, set()),  # IM: label dosing
        (None, set()),
    ],
)
def test_cpic_cyp2d6_rules_for_codeine_and_tramadol(phenotypes, expect):
    """models.md D1 / clinical.md 5.1: codeine and tramadol: avoid for PM (AS 0) and UM (AS > 2.25); label dosing
    for NM and IM; oxycodone: no actionable recommendation."""
    r = parse_regimen_text(
        "tramadol 100 mg PO ER q12h\ncodeine 30 mg PO q4h PRN NRS>=4\noxycodone 5 mg PO q4h PRN NRS>=7"
    )
    errors = [f for f in check_regimen(r, STD, phenotypes) if f.rule == "cpic"]
    assert {f.drug for f in errors} == expect
    assert all(f.severity == "error" and "CPIC recommends avoiding" in f.message for f in errors)


def test_cpic_phenotype_from_covariate_columns():
    r = parse_regimen_text("codeine 30 mg PO q4h PRN NRS>=4")
    assert _rules(check_regimen(r, {**STD, "CYP2D6_AS": 0.0})) == [("codeine", "cpic")]
    assert check_regimen(r, {**STD, "CYP2D6_AS": 2.0}) == []
    with pytest.raises(RegimenError, match="phenotype for CYP2D6"):
        check_regimen(r, STD, {"CYP2D6": "slow"})


def test_cyp2c9_poor_metabolizer_caps_celecoxib():
    """models.md C (celecoxib: PM start at half the lowest dose) and D2 (CPIC: 25-50 % of the lowest starting dose,
    titrate to 25-50 % of the maximum), each read the stricter way (issue: where sources differ, the stricter
    limit): the lowest dose read as 100 mg -> 50 mg per dose; 25 % of the 400 mg/day maximum -> 100 mg/day."""
    r = parse_regimen_text("celecoxib 200 mg PO q12h")
    assert check_regimen(r, STD, {"CYP2C9": "normal"}) == []
    f = {x.rule: x for x in check_regimen(r, STD, {"CYP2C9": "PM"})}
    assert set(f) == {"max_single_dose", "max_daily_dose"}
    assert "CPIC-derived maximum for a CYP2C9 poor metabolizer is 50 mg per dose" in f["max_single_dose"].message
    assert "gives 400 mg/24 h" in f["max_daily_dose"].message and "100 mg/day" in f["max_daily_dose"].message
    assert check_regimen(parse_regimen_text("celecoxib 50 mg PO q12h"), STD, {"CYP2C9": 0.5}) == []
    assert sorted(
        x.rule for x in check_regimen(parse_regimen_text("celecoxib 100 mg PO q12h"), STD, {"CYP2C9": 0.5})
    ) == ["max_daily_dose", "max_single_dose"]


def test_celecoxib_and_ibuprofen_renal_and_hepatic_restrictions():
    """Celebrex label: not recommended in severe renal insufficiency or severe hepatic impairment (read as
    exclusions), moderate hepatic impairment 50 % of the daily dose; NSAID class label: ibuprofen not
    recommended in advanced renal disease. Each is an error (contraindication) or a cap naming its source."""
    cele = parse_regimen_text("celecoxib 200 mg PO q12h")
    for cov in ({**STD, "CRCL": 15.0}, {**STD, "HEPATIC": 3}):
        f = [x for x in check_regimen(cele, cov) if x.severity == "error"]
        assert [x.rule for x in f] == ["contraindicated"], f
        assert "Celebrex prescribing information" in f[0].source
    mod = {x.rule: x for x in check_regimen(cele, {**STD, "HEPATIC": 2})}
    assert set(mod) == {"max_daily_dose"} and "200 mg/day" in mod["max_daily_dose"].message
    assert check_regimen(parse_regimen_text("celecoxib 100 mg PO q12h"), {**STD, "HEPATIC": 2}) == []
    assert check_regimen(cele, {**STD, "CRCL": 45.0}) == []
    ibu = parse_regimen_text("ibuprofen 400 mg PO q6h")
    assert [x.rule for x in check_regimen(ibu, {**STD, "CRCL": 20.0})] == ["contraindicated"]
    assert [x.rule for x in check_regimen(ibu, {**STD, "HEPATIC": 3})] == ["contraindicated"]
    assert check_regimen(ibu, STD) == []


def test_liposomal_bupivacaine_excludes_other_local_anaesthetics_for_96_h():
    """clinical.md 3.1 (LB label: no other local anaesthetic within 96 h); models.md C (Exparel 266 mg)."""
    lb = "bupivacaine_liposomal 266 mg infiltration once at -0.25h\n"
    r = parse_regimen_text(lb + "bupivacaine 100 mg infiltration once at 24h", horizon_h=120)
    f = check_regimen(r, STD)
    assert [(x.severity, x.drug, x.rule) for x in f] == [("error", "bupivacaine_liposomal", "exclusive_window")]
    assert "starts 24.25 h after bupivacaine_liposomal 266 mg" in f[0].message and "96 h" in f[0].message
    later = parse_regimen_text(lb + "bupivacaine 100 mg infiltration once at 96h", horizon_h=120)
    assert check_regimen(later, STD) == []  # 96.25 h after: outside the window
    big = parse_regimen_text("bupivacaine_liposomal 300 mg infiltration once at -0.25h")
    assert "is 266 mg per dose" in check_regimen(big, STD)[0].message  # Exparel label maximum (models.md C)


def test_worst_case_prn_and_pca():
    """Worst case = every PRN rule at its minimum interval, PCA at 60/lockout demands per hour or its cap;
    ibuprofen Rx maximum 3200 mg/day (models.md C)."""
    # ibuprofen 800 mg q4h PRN in the worst case: 6 doses = 4800 mg/24 h > 3200 mg/day (models.md C)
    r = parse_regimen_text("ibuprofen 800 mg PO q4h PRN NRS>=4")
    f = {x.rule: x.message for x in check_regimen(r, STD)}
    assert "gives 4800 mg/24 h" in f["max_daily_dose"] and "in the worst case" in f["max_daily_dose"]
    capped = parse_regimen_text("ibuprofen 800 mg PO q4h PRN NRS>=4 max 4/24h")  # 4 x 800 = 3200: at the limit
    assert check_regimen(capped, STD) == []
    # the larger rule of a group fires at every shared interval: 10 mg x 6 per 24 h from 24 h to 72 h
    prn = [d for d in _worst_case(get_regimen("C0"), STD) if d.drug == "oxycodone"]
    assert [d.time_h for d in prn] == [24.0 + 4 * k for k in range(12)] and {d.amount_mg for d in prn} == {10.0}
    # PCA: 60/10 demands x 0.2 mg = 1.2 mg/h for 24 h = 28.8 mg; with a 1 mg/h cap: 24 mg
    pca = [d for d in _worst_case(get_regimen("C0"), STD) if d.kind == "pca"]
    assert len(pca) == 1 and math.isclose(pca[0].amount_mg, 28.8)
    capped_pca = parse_regimen_text("hydromorphone 0.2 mg IV PCA lockout 10 min max 1 mg/h to 24h")
    assert math.isclose(_worst_case(capped_pca, STD)[0].amount_mg, 24.0)


def test_min_interval_between_items_and_missing_covariates():
    r = parse_regimen_text("acetaminophen 1000 mg PO once at -2h\nacetaminophen 1000 mg IV q6h from 0h to 24h")
    f = [x for x in check_regimen(r, STD) if x.rule == "min_interval"]
    assert len(f) == 1 and "doses 2 h apart (at -2h and 0h)" in f[0].message and "is 4 h" in f[0].message
    unchecked = check_regimen(parse_regimen_text("ketorolac 15 mg IV q6h for 24h"), {"WT": 70})
    assert {x.rule for x in unchecked} == {"unchecked"}
    assert any("AGE" in x.message for x in unchecked)


# ---------------------------------------------------------------------------------------------------------
# Shipped regimens
# ---------------------------------------------------------------------------------------------------------


def test_shipped_regimens_exist_and_document_themselves():
    assert list_regimens() == ["C0", "C1", "IYER_APAP", "IYER_KETOROLAC", "IYER_PLACEBO"]
    for name in list_regimens():
        r = get_regimen(name)
        assert r.name == name and r.horizon_h == 72 and r.references
        assert "UNVERIFIED" in r.description
    assert get_regimen("c1") is get_regimen("C1")
    with pytest.raises(RegimenError, match="unknown regimen 'C9'; shipped regimens: C0, C1"):
        get_regimen("C9")


def test_c0_matches_clinical_md():
    c0 = get_regimen("C0")
    # clinical.md 3.2: hydromorphone IV PCA 0.2 mg / 10-min lockout for 0-24 h
    assert c0.pca == (PCA("hydromorphone", "iv", 0.2, 10, 0, 24),)
    # then oxycodone 5-10 mg q4h PRN for NRS >= 4; acetaminophen 1 g q8h
    assert {(p.dose_mg, p.threshold_nrs, p.min_interval_h, p.start_h) for p in c0.prn} == {
        (5, 4, 4, 24),
        (10, 7, 4, 24),
    }
    ev = c0.dose_events(STD)
    assert [e.time_h for e in ev] == [8.0 * k for k in range(9)] and {e.amount_mg for e in ev} == {1000}


def test_c1_matches_clinical_md_and_keeps_the_ketorolac_fusion_caps():
    c1 = get_regimen("C1")
    assert set(c1.drugs()) == {
        "acetaminophen",
        "gabapentin",
        "ketamine",
        "bupivacaine_liposomal",
        "ketorolac",
        "oxycodone",
        "hydromorphone",
    }
    ev = c1.dose_events(STD)
    pre = {(e.drug, e.time_h, e.amount_mg) for e in ev if e.time_h < 0}
    assert pre == {
        ("acetaminophen", -2, 1000),
        ("gabapentin", -2, 600),
        ("ketamine", -2, 35.0),  # 0.5 mg/kg x 70
        ("ketorolac", -0.5, 30),
        ("bupivacaine_liposomal", -0.25, 266),
    }
    ket = [e for e in ev if e.drug == "ketorolac"]
    assert len(ket) == 8 and sum(e.amount_mg for e in ket) == 240  # clinical.md 2: <= 240 mg
    assert ket[-1].time_h + 6 - ket[0].time_h == 48  # <= 48 h course
    old = [e for e in c1.dose_events({**STD, "AGE": 70}) if e.drug == "ketorolac"]
    assert {e.amount_mg for e in old} == {15}
    post = [e for e in ev if e.drug == "acetaminophen" and e.time_h > 0]
    assert [e.time_h for e in post][:3] == [4, 10, 16]
    assert {(p.drug, p.dose_mg, p.threshold_nrs) for p in c1.prn} == {
        ("oxycodone", 5, 4),
        ("oxycodone", 10, 7),
        ("hydromorphone", 0.5, 7),
    }


def test_iyer_arms_differ_only_in_the_studied_drug():
    placebo, apap, ket = (get_regimen(n) for n in ("IYER_PLACEBO", "IYER_APAP", "IYER_KETOROLAC"))
    assert placebo.scheduled == () and apap.prn == placebo.prn == ket.prn and apap.pca == placebo.pca == ket.pca
    # q6h for 48 h after randomization, as the trial's study drugs (regimens/evidence/trials/iyer2023.toml)
    assert apap.scheduled == (Scheduled("acetaminophen", "iv", dose_mg=1000, every_h=6, stop_h=48),)
    ev = ket.dose_events(STD)
    assert [e.time_h for e in ev] == [6.0 * k for k in range(8)] and sum(e.amount_mg for e in ev) == 240
    assert sum(e.amount_mg for e in ket.dose_events({**STD, "AGE": 70})) == 120  # 15 mg for older patients


def test_every_shipped_drug_and_route_exists_in_the_library():
    for name in list_regimens():
        for item in (*get_regimen(name).scheduled, *get_regimen(name).prn, *get_regimen(name).pca):
            assert item.route in get_drug(item.drug).routes


def test_module_docstring_example_parses():
    import regimens.text as text_module

    doc = text_module.__doc__.split("::")[1].split("Route tokens")[0]
    r = parse_regimen_text("\n".join(line.strip() for line in doc.split("\n")))
    assert (r.name, r.horizon_h) == ("C1", 72)
    assert (len(r.scheduled), len(r.prn), len(r.pca), len(r.modalities)) == (8, 2, 1, 2)


def test_toml_without_references_loads():
    """A regimen file without a references key (as written for optimizer proposals) loads."""
    from regimens.io import parse_regimen_toml

    reg = parse_regimen_toml('name = "x"\n[[scheduled]]\ndrug = "acetaminophen"\nroute = "po"\ndose_mg = 500.0\n')
    assert reg.references == () and reg.scheduled[0].dose_mg == 500.0
