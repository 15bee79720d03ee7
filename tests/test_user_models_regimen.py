"""A drug's structure written in the model language, used in the regimen simulator (issue 22, item 3).

Reference: the same drug's built-in library entry. Oxycodone (built-in ``1cmt_dual``) written by hand in
tests/data/user_models/oxycodone_dual1.toml and acetaminophen (built-in ``2cmt_oral``) written by hand in
examples/models/user/oral2.toml, given to the regimen simulator through ``SimOptions(structures=...)``, must
give the built-in entries' outcomes: 72-h MME, hourly NRS and MME, every outcome column, the realized dose
record and the plasma concentrations, for 8 patients (seed 1) to rtol 1e-9 (both are exact solutions of the
same linear system on the matrix-exponential path). Errors: a structure whose parameters, units, routes or
CP output do not fit the entry, and a nonlinear structure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pkpd.drugs import get_drug, with_structure
from pkpd.drugs.structure import regimen_entry
from pkpd.errors import ModelSpecError
from pkpd.models.user import compile_structure
from pkpd.patients import spine72_population
from pkpd.population import SimOptions, simulate_regimen
from regimens import PRN, Regimen, Scheduled

ROOT = Path(__file__).resolve().parents[1]
OXY = ROOT / "tests" / "data" / "user_models" / "oxycodone_dual1.toml"
APAP = ROOT / "examples" / "models" / "user" / "oral2.toml"
RTOL = 1e-9

_REG = Regimen(
    name="oxy_apap",
    description="scheduled acetaminophen and ER oxycodone, IR oxycodone PRN",
    scheduled=(
        Scheduled("acetaminophen", "po", dose_mg=1000.0, start_h=-1.0, every_h=6.0, stop_h=72.0),  # lag, F1
        Scheduled("oxycodone", "po_er", dose_mg=10.0, start_h=0.0, every_h=12.0, stop_h=72.0),  # slow depot
    ),
    prn=(PRN("oxycodone", "po", 5.0, 4.0, 4.0, start_h=0.0), PRN("oxycodone", "po", 10.0, 7.0, 4.0, start_h=0.0)),
)
_OUT = (
    "MME_0_24",
    "MME_0_72",
    "PAIN_AUC",
    "TIT3",
    "N_PRN",
    "T_FIRST_RESCUE",
    "MIN_VE",
    "P_OIRD",
    "AUC_oxycodone",
    "CMAX_oxycodone",
    "AUC_acetaminophen",
    "CMAX_acetaminophen",
)


def _run(structures=None):
    opts = SimOptions(record_concentrations=True, structures=structures)
    return simulate_regimen(_REG, spine72_population(8, 1), seed=1, options=opts)


@pytest.fixture(scope="module")
def builtin():
    return _run()


def _same(a, b):
    for c in _OUT:
        np.testing.assert_allclose(
            b.patients[c].to_numpy(float), a.patients[c].to_numpy(float), rtol=RTOL, atol=0.0, err_msg=c
        )
    np.testing.assert_allclose(b.nrs_hourly, a.nrs_hourly, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(b.mme_hourly, a.mme_hourly, rtol=RTOL, atol=0.0)
    for d in ("oxycodone", "acetaminophen"):
        np.testing.assert_allclose(b.concentrations[d], a.concentrations[d], rtol=RTOL, atol=1e-15, err_msg=d)
    cols = ["ID", "TIME", "DRUG", "ROUTE", "AMT", "DUR", "KIND"]
    assert a.doses[cols].equals(b.doses[cols])


def test_hand_written_structures_give_the_builtin_entries_outcomes(builtin):
    assert builtin.patients["MME_0_72"].gt(0).all() and builtin.patients["N_PRN"].gt(0).any()
    res = _run({"oxycodone": OXY, "paracetamol": str(APAP)})  # a path or its text; an alias names the drug
    _same(builtin, res)


def test_the_hand_written_structure_is_what_runs(builtin, tmp_path):
    oxy = regimen_entry("oxycodone", {"oxycodone": OXY})
    assert oxy.model == "oxycodone_dual1_by_hand" and oxy.structural_model().volume == "V"
    assert oxy.params == get_drug("oxycodone").params and oxy.routes == {"po": 1, "po_er": 2}
    assert regimen_entry("oxycodone") is get_drug("oxycodone")  # no structures: the library entry itself
    # a different structure (twice the clearance) gives different concentrations
    f = tmp_path / "fast.toml"
    f.write_text(OXY.read_text().replace("- CL/V*CENTRAL", "- 2*CL/V*CENTRAL"))
    res = _run({"oxycodone": f})
    assert np.all(res.concentrations["oxycodone"][:, -1] < 0.9 * builtin.concentrations["oxycodone"][:, -1])


def test_states_in_another_order_with_routes_by_name(builtin):
    """A user model object whose states are not in the built-in CMT order, routes mapped by state name."""
    table = {
        "name": "oxy_reordered",
        "states": ["CENTRAL", "DEPOT_SLOW", "DEPOT_FAST"],
        "doses": ["DEPOT_FAST", "DEPOT_SLOW"],
        "equations": [
            "d/dt(CENTRAL) = KA*DEPOT_FAST + KA2*DEPOT_SLOW - CL/V*CENTRAL",
            "d/dt(DEPOT_SLOW) = -KA2*DEPOT_SLOW",
            "d/dt(DEPOT_FAST) = -KA*DEPOT_FAST",
        ],
        "outputs": ["C = CENTRAL/V", "CP = C"],
        "split": {"DEPOT_FAST": ["FR -> DEPOT_FAST", "1 - FR -> DEPOT_SLOW"]},
    }
    um = compile_structure(table)
    with pytest.raises(
        ModelSpecError,
        match=r"route 'po' of oxycodone doses into CMT 1, which is not a state "
        r"receiving doses \(2=DEPOT_SLOW, 3=DEPOT_FAST\)",
    ):
        with_structure("oxycodone", um)
    oxy = with_structure("oxycodone", um, routes={"po": "DEPOT_FAST", "po_er": 2})
    assert oxy.routes == {"po": 3, "po_er": 2} and oxy.structural_model().central == 0
    res = _run({"oxycodone": oxy, "acetaminophen": APAP})
    _same(builtin, res)


def _oxy_file(tmp_path, old, new, name="bad.toml"):
    text = OXY.read_text()
    assert old in text
    f = tmp_path / name
    f.write_text(text.replace(old, new))
    return f


def test_parameters_the_entry_does_not_supply(tmp_path):
    f = _oxy_file(tmp_path, "- CL/V*CENTRAL", "- KEL*CENTRAL")
    f.write_text(f.read_text().replace('CL = { unit = "L/h"', 'KEL = { unit = "1/h"'))
    with pytest.raises(
        ModelSpecError,
        match=r"bad.toml: the structure uses parameter KEL, which the oxycodone "
        r"entry does not supply; the entry defines KA, KA2, V, K30, K34, CL, FR",
    ):
        _run({"oxycodone": f})
    with pytest.raises(ModelSpecError, match="uses parameters V1, Q, V2, which the oxycodone entry"):
        with_structure("oxycodone", APAP)


@pytest.mark.parametrize(
    "old,new,match",
    [
        (  # V and CL in mL: consistent with each other (CL/V in 1/h), not with the entry
            'V = { unit = "L", description = "apparent volume V/F" }\nCL = { unit = "L/h"',
            'V = { unit = "mL", description = "apparent volume V/F" }\nCL = { unit = "mL/h"',
            r"parameter V is declared in 'mL' but the oxycodone entry gives it "
            r"in 'L'",
        ),
        (  # V alone in mL: CL/V*CENTRAL is then in g/h, the other terms in mg/h
            'V = { unit = "L"',
            'V = { unit = "mL"',
            r"line 14: .*unit mismatch: subtracts .* \(in mg/h\) and CL / V \* CENTRAL \(in g/h\)",
        ),
        ('CP = CENTRAL/V"', 'CP = CENTRAL/V*1000"', r"output CP must be one state divided by one parameter"),
        ('CP = CENTRAL/V"', 'CONC = CENTRAL/V"', r"needs an output CP \(the plasma concentration, mg/L\)"),
        ('po_er = "DEPOT_SLOW"', 'po_er = "GUT"', r"route 'po_er' -> GUT, which is not a state"),
        (
            'name = "oxycodone"',
            'name = "morphine"',
            r"\[drug\]: name = 'morphine', but the structure is given for "
            r"oxycodone",
        ),
        ("routes = {", "route = {", r"\[drug\]: unknown key\(s\) route"),
        (
            "- CL/V*CENTRAL",
            "- CL/V*CENTRAL*CENTRAL/(1 + CENTRAL)",
            r"oxycodone: structure oxycodone_dual1_by_hand is integrated as an ODE \(d/dt\(CENTRAL\) is not linear in "
            r"the states\); the regimen simulator .* needs a linear structure",
        ),
    ],
)
def test_structures_that_do_not_fit_the_entry(tmp_path, old, new, match):
    f = _oxy_file(tmp_path, old, new)
    with pytest.raises(ModelSpecError, match=match):
        regimen_entry("oxycodone", {"oxycodone": f})


def test_routes_beyond_the_structure(tmp_path):
    """Every route of the entry must dose into a state of the structure (acetaminophen iv -> CMT 2 here)."""
    f = tmp_path / "one.toml"
    f.write_text(
        '[structure]\nname = "apap_one"\nstates = ["CENTRAL"]\n'
        'equations = ["d/dt(CENTRAL) = -CL/V1*CENTRAL"]\noutputs = ["CP = CENTRAL/V1"]\n'
    )
    with pytest.raises(ModelSpecError, match=r"route 'iv' of acetaminophen doses into CMT 2"):
        with_structure("acetaminophen", f)


def test_a_drug_structure_file_also_simulates_alone(tmp_path):
    """The same file with a [parameters] table runs in pkpd.simulate ([drug] is ignored there) like 1cmt_dual."""
    import pandas as pd

    import pkpd

    values = {"KA": 3.61, "KA2": 0.329, "V": 619.0, "CL": 60.8, "FR": 0.4}
    f = tmp_path / "oxy_params.toml"
    f.write_text(OXY.read_text() + "\n[parameters]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    data = pd.DataFrame(
        {
            "ID": 1,
            "TIME": [0.0, 1.0, 2.0, 6.0, 12.0],
            "EVID": [1, 0, 0, 0, 0],
            "AMT": [10.0, 0, 0, 0, 0],
            "CMT": [1, 0, 0, 0, 0],
        }
    )
    got = pkpd.simulate(data, params=f)
    ref = pkpd.simulate(data, "1cmt_dual", values)
    np.testing.assert_allclose(got["CP"].to_numpy(), ref["CP"].to_numpy(), rtol=1e-10)


# ---------------------------------------------------------------------------------------------------
# a regimen file naming the structures ([structures] table): what `pkpd simulate --regimen FILE` runs

_REG_TOML_STRUCTURES = """
[structures]
oxycodone = "{oxy}"
paracetamol = "{apap}"
"""


def _regimen_file(tmp_path: Path, oxy: str = "oxy/oxycodone_dual1.toml", apap: str | None = None) -> Path:
    """_REG written as a TOML regimen file whose [structures] name the hand-written files (relative paths)."""
    (tmp_path / "oxy").mkdir(exist_ok=True)
    (tmp_path / "oxy" / "oxycodone_dual1.toml").write_text(OXY.read_text())
    text = _REG.to_toml().replace('name = "oxy_apap"', 'name = "oxy_apap_by_hand"')
    f = tmp_path / "regimen.toml"
    f.write_text(text + _REG_TOML_STRUCTURES.format(oxy=oxy, apap=apap or str(APAP)))
    return f


def test_regimen_file_with_structures_gives_the_builtin_entries_outcomes(builtin, tmp_path):
    from regimens import load_regimen

    reg = load_regimen(_regimen_file(tmp_path))
    assert reg.structures == (
        ("acetaminophen", str(APAP.resolve())),
        ("oxycodone", str((tmp_path / "oxy" / "oxycodone_dual1.toml").resolve())),
    )
    opts = SimOptions(record_concentrations=True)
    res = simulate_regimen(reg, spine72_population(8, 1), seed=1, options=opts)
    _same(builtin, res)
    # the files really run: a faster clearance written in the file changes the concentrations
    f = tmp_path / "oxy" / "oxycodone_dual1.toml"
    f.write_text(f.read_text().replace("- CL/V*CENTRAL", "- 2*CL/V*CENTRAL"))
    fast = simulate_regimen(load_regimen(tmp_path / "regimen.toml"), spine72_population(8, 1), seed=1, options=opts)
    assert np.all(fast.concentrations["oxycodone"][:, -1] < 0.9 * builtin.concentrations["oxycodone"][:, -1])


def test_regimen_with_structures_round_trips_through_toml_and_text(tmp_path):
    from regimens import load_regimen, parse_regimen_text, parse_regimen_toml

    reg = load_regimen(_regimen_file(tmp_path))
    assert parse_regimen_toml(reg.to_toml(), "again") == reg
    text = reg.to_text()
    assert f"structure: oxycodone = {tmp_path / 'oxy' / 'oxycodone_dual1.toml'}" in text
    assert parse_regimen_text(text) == reg


@pytest.mark.parametrize(
    "oxy, message",
    [
        ("missing.toml", r"\[structures\] oxycodone: the model file '.*missing.toml' does not exist"),
        (str(ROOT / "examples" / "models" / "user" / "mm_iv.toml"), r"\[structures\] oxycodone: .*VMAX, KM, which"),
        ("nonlinear.toml", r"\[structures\] oxycodone: .*not linear"),
    ],
    ids=["missing file", "another drug's parameters", "nonlinear structure"],
)
def test_regimen_file_structure_errors(tmp_path, oxy, message):
    from regimens import RegimenError, load_regimen

    _oxy_file(tmp_path, "- CL/V*CENTRAL", "- CL/V*CENTRAL*CENTRAL/(1 + CENTRAL)", name="nonlinear.toml")
    with pytest.raises(RegimenError, match=r"regimen.toml: " + message):
        load_regimen(_regimen_file(tmp_path, oxy=oxy))


def test_regimen_structures_for_unknown_or_unused_drugs(tmp_path):
    from regimens import RegimenError

    with pytest.raises(RegimenError, match=r"structures: unknown drug 'oxycodon'"):
        Regimen("r", scheduled=_REG.scheduled, structures={"oxycodon": str(OXY)})
    with pytest.raises(RegimenError, match=r"structures are given for ketamine, which the regimen does not use"):
        Regimen("r", scheduled=_REG.scheduled, structures={"ketamine": str(OXY)})


def test_cli_simulates_a_regimen_file_with_structures_and_records_the_files(tmp_path):
    from cli_helpers import cli_output, runner

    from cli import app
    from pkpd.manifest import file_sha256, read_manifest

    reg = _regimen_file(tmp_path)
    out = tmp_path / "run"
    r = runner.invoke(app, ["simulate", "--regimen", str(reg), "--population", "3", "--out", str(out)])
    assert r.exit_code == 0, cli_output(r)
    man = read_manifest(out / "run.json")
    oxy = tmp_path / "oxy" / "oxycodone_dual1.toml"
    assert man["inputs"]["structure oxycodone"]["sha256"] == file_sha256(oxy)
    assert man["inputs"]["structure acetaminophen"]["sha256"] == file_sha256(APAP)
    assert man["inputs"]["regimen"]["sha256"] == file_sha256(reg)
