"""`pkpd report` (pkpd.html_report) and the run manifests (pkpd.manifest), rendered in headless Chromium.

One small run of each type is made once for the module through the CLI (a dataset simulation, a
3-patient regimen simulation, a Laplace fit of a 6-subject IV study, one patient's optimization with 2
draws and 2 steps, a 1-patient trial that reuses the optimizer's compiled programs), then each run's
report is written and opened in Debian's headless Chromium: the screenshot must exist and not be one
uniform colour, the rendered DOM must hold the run type's key tables (by ``id`` and header), and the
browser must log no console message (the report has no JavaScript at all: a console line means an
error). ``make test`` installs Chromium where it is missing (apt); without it these tests fail with the
install command rather than skip, because CI is expected to have it.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import cli_output, runner

from cli import app

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,2000",
    "--enable-logging=stderr",
    "--v=0",
]

#: Table ids (and one header of each) the rendered page must hold, per run type.
KEY_TABLES = {
    "simulate-dataset": {"subjects": "Cmax", "records": "CP"},
    "simulate-population": {"summary": "outcome", "findings": "severity", "doses": "total_mg"},
    "fit": {"parameters": "estimate", "objective": "value", "fit-info": "item", "nca": "CMAX"},
    "optimize": {"comparison": "MME_mean", "schedule": "dose_mg"},
    "trial": {"trial-overall": "MME_vs_C0_pct", "strata": "stratum", "timings": "seconds"},
}
COMMON_TABLES = {"arguments": "argument", "inputs": "sha256", "versions": "package", "files": "file"}

FIT_MODEL = """
[model]
structure = "1cmt_iv"
[parameters.CL]
estimate = 1.5
unit = "L/h"
iiv = 0.1
[parameters.V]
estimate = 15.0
unit = "L"
[observations.conc]
output = "CP"
error = "proportional"
proportional = 0.2
unit = "mg/L"
"""


def _fit_data(path: Path) -> None:
    """6 subjects, 100 mg IV bolus, 6 samples; CL 2 L/h (30 % IIV), V 20 L, 10 % proportional error."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(1, 7):
        cl = 2.0 * np.exp(0.3 * rng.normal())
        rows.append({"ID": i, "TIME": 0.0, "AMT": 100.0, "EVID": 1, "CMT": 1, "DV": 0.0, "MDV": 1})
        for t in (0.5, 1.0, 2.0, 4.0, 8.0, 12.0):
            c = 100.0 / 20.0 * np.exp(-cl / 20.0 * t) * (1.0 + 0.1 * rng.normal())
            rows.append({"ID": i, "TIME": t, "AMT": 0.0, "EVID": 0, "CMT": 1, "DV": c, "MDV": 0})
    pd.DataFrame(rows).to_csv(path, index=False)


def _invoke(args: list[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, cli_output(res)


def _simulate_oxycodone(out: Path, *, params: Path = ROOT / "examples" / "oxycodone_agema2021.toml", plot=None) -> None:
    """`pkpd simulate` of the oxycodone example dataset into ``out`` (and ``plot``)."""
    args = ["simulate", str(ROOT / "examples" / "oxycodone_postop.csv"), "--params", str(params), "--out", str(out)]
    _invoke(args + (["--plot", str(plot)] if plot is not None else []))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """kind -> the path to give `pkpd report` (the runs are made once, through the CLI)."""
    d = tmp_path_factory.mktemp("report_runs")
    (d / "sim").mkdir()
    _simulate_oxycodone(d / "sim" / "oxy.csv", plot=d / "sim" / "oxy.png")
    _invoke(["simulate", "--regimen", "C1", "--population", "3", "--seed", "1", "--out", str(d / "pop")])
    _fit_data(d / "iv.csv")
    (d / "iv.toml").write_text(FIT_MODEL)
    _invoke(
        [
            "fit",
            str(d / "iv.csv"),
            "--model",
            str(d / "iv.toml"),
            "--out",
            str(d / "fit"),
            "--vpc-replicates",
            "20",
            "--npde-replicates",
            "50",
        ]
    )
    _invoke(
        [
            "optimize",
            "--patient",
            str(ROOT / "examples" / "patient_spine.toml"),
            "--out",
            str(d / "opt"),
            "--draws",
            "4",
            "--steps",
            "5",
        ]
    )
    _invoke(["trial", "--population", "1", "--draws", "4", "--steps", "5", "--chunk", "1", "--out", str(d / "trial")])
    return {
        "simulate-dataset": d / "sim" / "oxy.csv",
        "simulate-population": d / "pop",
        "fit": d / "fit",
        "optimize": d / "opt",
        "trial": d / "trial",
    }


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if exe is None:
        pytest.fail(
            "headless Chromium is needed to check the HTML reports and is not installed: run "
            "`apt-get install -y chromium` (as root; `make test` does it where apt is available)"
        )
    return exe


def _render(chromium: str, html_file: Path, tmp: Path, width: int = 1200) -> tuple[Path, str, str]:
    """Screenshot, rendered DOM and browser log of one page (a window ``width`` CSS px wide)."""
    shot = tmp / "shot.png"
    flags = [f if not f.startswith("--window-size=") else f"--window-size={width},2000" for f in FLAGS]
    proc = subprocess.run(
        [
            chromium,
            *flags,
            f"--user-data-dir={tmp / 'profile'}",
            f"--screenshot={shot}",
            "--dump-dom",
            html_file.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return shot, proc.stdout, proc.stderr


def test_manifests_record_inputs_and_versions(runs):
    """Every run type writes its manifest: the command, the arguments as given, each input file with the
    SHA-256 of its content, the package versions and a UTC time."""
    from pkpd.manifest import file_sha256, read_manifest

    expect = {
        "simulate-dataset": ("simulate", ["data", "params"]),
        "simulate-population": ("simulate", ["regimen"]),
        "fit": ("fit", ["data", "model"]),
        "optimize": ("optimize", ["patient", "regimen C0", "regimen C1"]),
        "trial": ("trial", ["regimen C0", "regimen C1"]),
    }
    for kind, path in runs.items():
        man_file = path.with_name("oxy.run.json") if kind == "simulate-dataset" else path / "run.json"
        man = read_manifest(man_file)
        command, inputs = expect[kind]
        assert man["command"] == command, kind
        assert sorted(r for r, v in man["inputs"].items()) == sorted(inputs), (kind, man["inputs"])
        for role in inputs:
            entry = man["inputs"][role]
            if entry["sha256"] is not None:
                assert entry["sha256"] == file_sha256(entry["path"]), (kind, role)
        assert man["versions"]["pkpd"] and man["versions"]["jax"] and man["versions"]["numpy"], kind
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", man["created_utc"]), kind
    pop = read_manifest(runs["simulate-population"] / "run.json")
    shipped = ROOT / "regimens" / "data" / "C1.toml"  # a shipped regimen is recorded by its file and SHA-256
    assert pop["arguments"]["population"] == 3 and pop["inputs"]["regimen"] == {
        "path": str(shipped.resolve()),
        "sha256": file_sha256(shipped),
        "bytes": shipped.stat().st_size,
    }
    assert read_manifest(runs["trial"] / "run.json")["arguments"]["draws"] == 4
    sim = read_manifest(runs["simulate-dataset"].with_name("oxy.run.json"))
    assert sim["outputs"] == ["oxy.csv", "oxy.png"] and "population" not in sim["arguments"]


@pytest.mark.parametrize("kind", list(KEY_TABLES))
def test_report_renders_in_chromium(kind, runs, chromium, tmp_path):
    """`pkpd report` writes one self-contained page (no script, no external resource, every image a
    decodable PNG data URI) that Chromium renders to a non-blank screenshot with the key tables."""
    from PIL import Image

    from pkpd.html_report import detect_run

    path = runs[kind]
    assert detect_run(path).kind == kind
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", str(path), "--out", str(out)])
    assert res.exit_code == 0, cli_output(res)
    text = out.read_text()
    assert "<script" not in text.lower() and not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert pngs, "a report embeds the run's figures"
    for b64 in pngs:
        assert base64.b64decode(b64).startswith(b"\x89PNG")

    shot, dom, log = _render(chromium, out, tmp_path)
    assert shot.is_file() and shot.stat().st_size > 0, "no screenshot"
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1200)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10, "the screenshot is blank (one uniform colour)"
    console = [ln for ln in log.splitlines() if ":CONSOLE" in ln]
    assert not console, console
    for tid, header in {**KEY_TABLES[kind], **COMMON_TABLES}.items():
        m = re.search(rf'<table id="{re.escape(tid)}">(.*?)</table>', dom, re.S)
        assert m, f"table {tid} missing from the rendered page"
        assert re.search(rf"<th[^>]*>{re.escape(header)}\b", m.group(1)), (tid, header)
    assert f'<b id="run-kind">{kind}</b>' in dom


def test_report_shows_the_run_numbers(runs, tmp_path):
    """The tables carry the run's own numbers: the fit's CL estimate, the optimizer's C0 mean MME and the
    trial's number of patients, as the CSV files hold them (4 significant digits)."""
    from pkpd.html_report import render_report

    par = pd.read_csv(runs["fit"] / "parameters.csv").set_index("name")
    assert f"<td>{par.loc['CL', 'estimate']:.4g}</td>" in render_report(runs["fit"])
    comp = pd.read_csv(runs["optimize"] / "comparison.csv").set_index("regimen")
    assert f"<td>{comp.loc['C0', 'MME_mean']:.4g}</td>" in render_report(runs["optimize"])
    html = render_report(runs["simulate-population"])
    summ = pd.read_csv(runs["simulate-population"] / "summary.csv").set_index("outcome")
    assert f"<td>{summ.loc['MME_0_72', 'mean']:.4g}</td>" in html
    assert "C1" in html


def test_report_flags_changed_inputs_and_missing_manifest(runs, tmp_path):
    """A run without run.json is still reported, saying its inputs are unknown; a changed input is flagged."""
    from pkpd.html_report import render_report

    bare = tmp_path / "fit_copy"
    shutil.copytree(runs["fit"], bare)
    (bare / "run.json").unlink()
    assert "has no run.json" in render_report(bare)

    changed = tmp_path / "fit_changed"
    shutil.copytree(runs["fit"], changed)
    man = json.loads((changed / "run.json").read_text())
    man["inputs"]["data"]["sha256"] = "0" * 64
    (changed / "run.json").write_text(json.dumps(man))
    assert "CHANGED since the run" in render_report(changed)
    assert "unchanged" in render_report(runs["fit"])


@pytest.mark.parametrize("case", ["missing", "unknown", "exists"])
def test_report_errors(case, runs, tmp_path):
    """A missing or unknown run directory, or an existing report without --force: one line, exit 1."""
    if case == "missing":
        args, want = ["report", str(tmp_path / "nope")], "does not exist"
    elif case == "unknown":
        (tmp_path / "notes.txt").write_text("not a run")
        args, want = ["report", str(tmp_path)], "is not a pkpd run directory"
    else:
        out = tmp_path / "r.html"
        out.write_text("old")
        args, want = ["report", str(runs["trial"]), "--out", str(out)], "--force"
    res = runner.invoke(app, args)
    text = cli_output(res)
    assert res.exit_code == 1, text
    assert want in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text


def test_dataset_report_counts_additional_doses(runs):
    """The example dataset gives 10 mg ER with ADDL = 5 (6 doses) and two 5 mg IR doses: 8 doses, 70 mg.
    The report used to say 3 doses and 20 mg (ADDL ignored)."""
    from pkpd.html_report import render_report

    html = re.sub(r"\s+", " ", render_report(runs["simulate-dataset"]))
    body = html[html.index('id="subjects"') :]
    first = body[body.index("<tbody><tr>") : body.index("</tr>", body.index("<tbody><tr>"))]
    cells = re.findall(r"<td>([^<]*)</td>", first)
    assert cells[0] == "1" and cells[3] == "8" and cells[4] == "70", cells


#: Appended to a copy of a report for the layout test only (reports themselves have no script): measures,
#: after layout, the viewport, the page's scroll width, every table's box and scroll width, and every
#: element whose content is wider than its box (a scroll container hiding columns), and writes them as
#: JSON into a <pre id="layout-check"> that --dump-dom returns.
_LAYOUT_JS = """<script>(function(){var d=document.documentElement,o={viewport:d.clientWidth,page:d.scrollWidth,
tables:[],overflowing:[]};document.querySelectorAll('table').forEach(function(t){var r=t.getBoundingClientRect();
o.tables.push({id:t.id,left:r.left,right:r.right,width:r.width,scroll:t.scrollWidth});});
document.querySelectorAll('body *').forEach(function(e){var s=getComputedStyle(e);if(s.display!=='inline'&&
['TABLE','THEAD','TBODY','TR'].indexOf(e.tagName)<0&&e.scrollWidth>e.clientWidth+1){o.overflowing.push(
{tag:e.tagName,id:e.id,scroll:e.scrollWidth,client:e.clientWidth});}});var p=document.createElement('pre');
p.id='layout-check';p.textContent=JSON.stringify(o);document.body.appendChild(p);})();</script>"""


@pytest.mark.parametrize("kind", list(KEY_TABLES))
def test_report_tables_fit_a_1280px_window(kind, runs, chromium, tmp_path):
    """Every table fits the page in a 1280-px Chromium window: none is wider than the viewport or reaches
    past its right edge, the page has no horizontal scroll, and no element is a scroll container holding
    content wider than itself (the old reports put wide tables in an ``overflow-x: auto`` box, hiding
    columns behind a scrollbar; the optimizer's comparison table was 1,558 px wide, the trial's 1,977 px).

    How: Chromium renders a copy of the report with a small script appended (the report itself has no
    script) that measures the laid-out boxes (``getBoundingClientRect``, ``scrollWidth`` against
    ``clientWidth``) and writes them as JSON into the DOM, which ``--dump-dom`` returns; the screenshot of
    the same run must be 1280 px wide. Measuring the layout engine's boxes is exact and independent of
    fonts and colours, where reading a screenshot's pixels would not be. A wide table is folded into bands
    of columns (each with its headers), so every column is still in the table.
    """
    from PIL import Image

    from pkpd.html_report import render_report

    page = tmp_path / "report.html"
    page.write_text(render_report(runs[kind]).replace("</body>", _LAYOUT_JS + "</body>"))
    shot, dom, _ = _render(chromium, page, tmp_path, width=1280)
    assert Image.open(shot).size == (1280, 2000)
    m = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.S)
    assert m, "the layout script did not run"
    lay = json.loads(html.unescape(m.group(1)))
    vw = lay["viewport"]
    assert 1200 <= vw <= 1280, lay
    assert lay["page"] <= vw, f"the page scrolls sideways: {lay['page']} px wide in a {vw} px viewport"
    assert lay["tables"] and all(t["id"] for t in lay["tables"])
    for t in lay["tables"]:
        assert t["left"] >= 0 and t["right"] <= vw and t["scroll"] <= t["width"] + 1, (kind, t, vw)
    assert not lay["overflowing"], lay["overflowing"]
    # every column is still there: the table of each key header (folded tables repeat their first column)
    for tid, header in KEY_TABLES[kind].items():
        assert re.search(rf'<table id="{re.escape(tid)}">.*?<th[^>]*>{re.escape(header)}\b', dom, re.S), tid


@pytest.mark.parametrize("kind", list(KEY_TABLES))
def test_report_has_every_figure_of_the_run(kind, runs):
    """Every PNG the run wrote is in its report, each once, captioned with its file name: the fit's new
    diagnostics (qq.png, abs_iwres.png, pcvpc.png, eta.png...), the optimizer's concentrations.png (left
    out before), the dataset simulation's --plot figure."""
    from pkpd.html_report import detect_run, render_report

    run = detect_run(runs[kind])
    if kind == "simulate-dataset":
        pngs = {Path(o).name for o in run.manifest["outputs"] if o.endswith(".png")}
    else:
        pngs = {f.name for f in run.root.glob("*.png")}
    assert pngs, "the run wrote figures"
    text = render_report(runs[kind])
    captions = re.findall(r"<figcaption>([^:<]+):", text)
    assert sorted(captions) == sorted(pngs), (captions, pngs)
    assert len(re.findall(r'src="data:image/png;base64,', text)) == len(pngs)
    if kind == "fit":
        assert {"qq.png", "abs_iwres.png", "pcvpc.png", "eta.png"} <= pngs
        assert "figure written by the run" not in text, "a fit figure without its own caption"
    if kind == "optimize":
        assert "concentrations.png" in pngs and "figure written by the run" not in text
        cap = re.search(r"<figcaption>bands.png: ([^<]*)</figcaption>", text).group(1)
        assert "bupivacaine" not in cap, cap  # the proposal's bands.png has pain and opioid effect panels only


def test_population_report_shows_the_regimen(runs):
    """The C1 simulation report shows the regimen itself (regimen.txt, the text form written with the run)
    and records the shipped regimen file with its SHA-256, not '–'."""
    from pkpd.html_report import render_report
    from pkpd.manifest import file_sha256

    run = runs["simulate-population"]
    assert (run / "regimen.txt").is_file()
    text = render_report(run)
    m = re.search(r'<pre id="regimen">(.*?)</pre>', text, re.S)
    assert m, "no regimen block"
    block = html.unescape(m.group(1))
    assert block.startswith("name: C1") and "acetaminophen 1000 mg PO q6h from 4h" in block, block[:300]
    assert "bupivacaine_liposomal 266 mg infiltration" in block
    inputs = text[text.index('<table id="inputs">') :]
    inputs = inputs[: inputs.index("</table>")]
    assert file_sha256(ROOT / "regimens" / "data" / "C1.toml") in inputs
    assert "C1.toml" in inputs and "unchanged" in inputs


def test_report_numbers_are_for_people(runs, tmp_path):
    """Numbers: thousands separators and 4 significant digits, no exponent (a 2.6 million mg total was
    printed "2.600e+06"); IDs stay as written; no report of the test runs shows an exponent between 1e-4
    and 1e15."""
    from pkpd.html_report import _fmt, render_report, table

    assert _fmt(2.6e6) == "2,600,000" and _fmt(2_600_000) == "2,600,000" and _fmt(1234.567) == "1,235"
    assert _fmt(999.96) == "1,000" and _fmt(0.012345) == "0.01235" and _fmt(3.0) == "3" and _fmt(45.67) == "45.67"
    assert _fmt(float("nan")) == "–" and _fmt(1e-6) == "1e-06"
    doses = pd.DataFrame({"ID": [1001, 1002], "drug": ["acetaminophen", "oxycodone"], "total_mg": [2.6e6, 12_500.0]})
    out = table(doses, "doses", "doses")
    assert "<td>1001</td>" in out and "<td>2,600,000</td>" in out and "<td>12,500</td>" in out and "e+" not in out
    for kind, path in runs.items():
        cells = re.findall(r"<td>([^<]*)</td>", render_report(path))
        sci = [c for c in cells if re.fullmatch(r"-?\d(\.\d+)?e[+-]\d\d", c) and 1e-4 <= abs(float(c)) < 1e15]
        assert not sci, (kind, sci[:5])


def test_dataset_report_without_a_plot_draws_profiles_figure(tmp_path):
    """A dataset simulation written without --plot: the report draws CP against TIME itself with
    pkpd.simulate.profiles_figure, the unit read from the model named by the run's parameter file."""
    from pkpd.html_report import _dataset_model, detect_run, render_report

    out = tmp_path / "oxy.csv"
    _simulate_oxycodone(out)
    model = _dataset_model(detect_run(out))
    assert model is not None and model.name
    text = html.unescape(render_report(out))
    assert (
        "CP (mg/L) vs TIME (h), first 20 subjects (on a dense grid, simulated again by pkpd report from the run's "
        "data and parameter files (SHA-256 checked))" in text
    )
    # the lines are the simulation on the dense grid, not the records joined (which only a --grid run has)
    from pkpd.html_report import _dense_curves

    curves, _, why = _dense_curves(detect_run(out))
    records = pd.read_csv(out)
    assert why == "" and curves["GRID"].sum() > 3 * len(records)  # 481 grid points over 148 records
    # a changed parameter file: the report does not simulate something else, it joins the records and says why
    params = tmp_path / "p.toml"
    params.write_text((ROOT / "examples" / "oxycodone_agema2021.toml").read_text())
    out2 = tmp_path / "oxy2.csv"
    _simulate_oxycodone(out2, params=params)
    params.write_text(params.read_text() + "\n# edited after the run\n")
    text = html.unescape(render_report(out2))
    assert f"through the output records: the run's params file {params.resolve()} changed since the run" in text
