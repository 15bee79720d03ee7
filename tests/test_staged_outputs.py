"""An interrupt while a command writes its outputs loses nothing (issue 20: "Ctrl-C while outputs are being
written deletes them (with --force that includes files of an earlier run)").

Every command writes its final outputs through :func:`pkpd.interrupts.staged_outputs`: into a staging
directory, moved into place only when all are complete. Here a writer is interrupted at several points
(before writing, between two output files, after the last file but before the commit, while the files are
moved into place), with and without an earlier run's files in OUT (``--force``): the earlier files must be
byte-identical afterwards, nothing half-written or staged may remain, and the command exits with 130.
"""

from __future__ import annotations

import json
import os
import signal
import types
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import cli_output, runner

from cli import app
from pkpd import interrupts

ROOT = Path(__file__).resolve().parents[1]
EARLIER = {
    "patients.csv": b"ID,OLD\n1,7\n",
    "summary.csv": b"old summary\n",
    "run.json": b'{"command": "old"}\n',
    "fit.json": b"{}\n",
    "parameters.csv": b"old,parameters\n",
    "notes.txt": b"the user's notes\n",
}


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_staging(root: Path) -> None:
    left = [str(p) for p in root.rglob(f"{interrupts.STAGING_PREFIX}*")]
    assert not left, left


def _earlier_run(out: Path, names=()) -> dict[str, bytes]:
    """An earlier run's files in ``out``: :data:`EARLIER` and, with other contents, ``names`` (the files the
    interrupted run writes)."""
    out.mkdir(parents=True)
    for name, data in EARLIER.items():
        (out / name).write_bytes(data)
    for name in names:
        (out / name).write_bytes(f"earlier {name}\n".encode())
    return _files(out)


def _swallowed_interrupt() -> None:
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pass


def _interrupt(how: str) -> None:
    if how == "raised":
        raise KeyboardInterrupt
    _swallowed_interrupt()  # as JAX's gc callback does: the run goes on until the next check (the commit)


class _OsWith:
    """``os`` with another ``replace`` (patched into pkpd.interrupts only)."""

    def __init__(self, replace):
        self.replace = replace

    def __getattr__(self, name):
        return getattr(os, name)


# ------------------------------------------------------------------------------- the mechanism itself


@pytest.mark.parametrize("earlier", [False, True], ids=["empty", "earlier-run"])
@pytest.mark.parametrize("point", ["before-writing", "between-files", "after-last-file"])
def test_interrupt_before_the_commit_leaves_the_directory_as_it_was(tmp_path, point, earlier):
    out = tmp_path / "out"
    before = _earlier_run(out) if earlier else {}
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interrupt_guard():
            with interrupts.staged_outputs() as stage:
                d = stage.dir(out)
                if point == "before-writing":
                    raise KeyboardInterrupt
                (d / "patients.csv").write_text("ID,NEW\n1,8\n")
                if point == "between-files":
                    (d / "summary.csv").write_text("half a sum")  # interrupted while writing it
                    raise KeyboardInterrupt
                (d / "summary.csv").write_text("new summary\n")
                (d / "run.json").write_text('{"command": "new"}\n')
                _swallowed_interrupt()  # noticed at the commit point
    if earlier:
        assert _files(out) == before
    else:
        assert not out.exists()  # the directory the outputs created is removed again
    _no_staging(tmp_path)


def test_interrupt_before_staging_writes_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interrupt_guard():
            _swallowed_interrupt()
            with interrupts.staged_outputs():
                pytest.fail("the block ran after an interrupt")  # pragma: no cover
    assert list(tmp_path.iterdir()) == []


def test_an_error_while_writing_also_leaves_the_directory_as_it_was(tmp_path):
    out = tmp_path / "out"
    before = _earlier_run(out)
    with pytest.raises(ValueError):
        with interrupts.staged_outputs() as stage:
            (stage.dir(out) / "patients.csv").write_text("new")
            raise ValueError("a writer failed")
    assert _files(out) == before
    _no_staging(tmp_path)


def test_commit_replaces_the_earlier_files_moves_the_manifest_last_and_keeps_other_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _earlier_run(out)
    single = tmp_path / "other" / "sim.csv"
    single.parent.mkdir()
    moves = []

    def replace(src, dst):
        moves.append((Path(src).name, Path(dst)))
        os.replace(src, dst)

    monkeypatch.setattr(interrupts, "os", _OsWith(replace))
    with interrupts.staged_outputs() as stage:
        (stage.dir(out) / "run.json").write_text('{"command": "new"}\n')
        (stage.dir(out) / "patients.csv").write_text("new patients\n")
        stage.path(single).write_text("sim\n")
        assert stage.final(stage.path(single)) == single and stage.final(stage.dir(out) / "x") == out / "x"
    # the earlier manifest is moved aside first, the new one moved in last
    assert moves[0] == ("run.json", moves[0][1]) and moves[0][1].name == "previous-run.json"
    assert moves[-1][1] == out / "run.json"
    assert {d for _, d in moves[1:]} == {out / "patients.csv", single, out / "run.json"}
    got = _files(out)
    assert got["patients.csv"] == b"new patients\n" and got["run.json"] == b'{"command": "new"}\n'
    for name in ("summary.csv", "fit.json", "parameters.csv", "notes.txt"):  # not outputs of this run: untouched
        assert got[name] == EARLIER[name]
    assert single.read_text() == "sim\n"
    _no_staging(tmp_path)


def test_sigint_during_the_move_phase_is_held_until_every_file_is_in_place(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _earlier_run(out)
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C between two moves
        os.replace(src, dst)

    monkeypatch.setattr(interrupts, "os", _OsWith(replace))
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interrupt_guard():
            with interrupts.staged_outputs() as stage:
                for name in ("patients.csv", "summary.csv", "run.json"):
                    (stage.dir(out) / name).write_text(f"new {name}\n")
            pytest.fail("the run went on after the commit")  # pragma: no cover
    got = _files(out)
    for name in ("patients.csv", "summary.csv", "run.json"):  # all moved: a complete new set, no mix
        assert got[name] == f"new {name}\n".encode()
    assert sorted(p.name for p in interrupts.committed_outputs()) == ["patients.csv", "run.json", "summary.csv"]
    _no_staging(tmp_path)


def test_sigint_during_the_move_phase_outside_a_guard_is_raised_after_it(tmp_path, monkeypatch):
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        os.replace(src, dst)

    monkeypatch.setattr(interrupts, "os", _OsWith(replace))
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.staged_outputs() as stage:
            (stage.dir(tmp_path) / "a.csv").write_text("a")
            (stage.dir(tmp_path) / "b.csv").write_text("b")
    assert sorted(_files(tmp_path)) == ["a.csv", "b.csv"]
    assert signal.getsignal(signal.SIGINT) is previous and not interrupts.interrupted()


def test_a_failed_move_says_the_outputs_are_incomplete_and_leaves_no_earlier_manifest(tmp_path, monkeypatch):
    """A move that fails half-way (a file system error; a SIGKILL at that point leaves the same state) is
    said, naming what was and was not moved, and the directory holds no run.json: it cannot pass for the
    earlier run (whose manifest is kept in the staging directory), and --resume would not take it for a
    finished run."""
    out = tmp_path / "out"
    _earlier_run(out)
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # earlier run.json aside, patients.csv moved, summary.csv fails
            raise PermissionError(13, "Permission denied", str(dst))
        os.replace(src, dst)

    monkeypatch.setattr(interrupts, "os", _OsWith(replace))
    with pytest.raises(interrupts.CommitError, match="INCOMPLETE") as info:
        with interrupts.staged_outputs() as stage:
            for name in ("patients.csv", "summary.csv", "run.json"):
                (stage.dir(out) / name).write_text(f"new {name}\n")
    text = str(info.value)
    assert str(out / "patients.csv") in text and "summary.csv" in text and "previous-run.json" in text
    assert not (out / "run.json").exists()
    assert (out / "patients.csv").read_text() == "new patients.csv\n"
    assert (out / "summary.csv").read_bytes() == EARLIER["summary.csv"]
    staging = next(out.glob(f"{interrupts.STAGING_PREFIX}*"))
    assert sorted(p.name for p in staging.iterdir()) == ["previous-run.json", "run.json", "summary.csv"]
    assert (staging / "previous-run.json").read_bytes() == EARLIER["run.json"]


def test_a_move_failing_before_any_output_moved_restores_the_earlier_manifest(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = _earlier_run(out)
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the earlier run.json went aside, the first output fails
            raise OSError(28, "No space left on device")
        os.replace(src, dst)

    monkeypatch.setattr(interrupts, "os", _OsWith(replace))
    with pytest.raises(interrupts.CommitError, match="nothing was written"):
        with interrupts.staged_outputs() as stage:
            for name in ("patients.csv", "run.json"):
                (stage.dir(out) / name).write_text("new")
    assert _files(out) == before
    _no_staging(tmp_path)


def test_a_directory_in_the_way_fails_before_anything_moves(tmp_path):
    out = tmp_path / "out"
    before = _earlier_run(out)
    (out / "summary.png").mkdir()
    with pytest.raises(interrupts.CommitError, match="is a directory; nothing was written"):
        with interrupts.staged_outputs() as stage:
            (stage.dir(out) / "patients.csv").write_text("new")
            (stage.dir(out) / "summary.png").write_text("new")
    assert _files(out) == before
    _no_staging(tmp_path)


# -------------------------------------------------------------------------------------- the commands


def _check_interrupted(res, out: Path, before: dict, tmp_path: Path) -> None:
    text = cli_output(res)
    assert res.exit_code == 130, text
    assert "Interrupted (Ctrl-C)" in text and "keeps no outputs" in text and "Traceback" not in text
    after = {k: v for k, v in _files(out).items() if not k.startswith("chunks")} if out.exists() else {}
    assert after == before
    _no_staging(tmp_path)


class _FakeWriter:
    """A result whose ``save`` writes two files, then is interrupted (``how``), then writes a third."""

    def __init__(self, how: str, names=("parameters.csv", "objective.json", "fit.json")):
        self.how, self.names = how, names

    def save(self, out_dir, *, force=False, **kwargs):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for k, name in enumerate(self.names):
            if k == 2:
                _interrupt(self.how)
            (out / name).write_text(f"new {name}\n")
            written.append(out / name)
        return written


HOWS = ["raised", "swallowed"]  # interrupted between two files; swallowed there, noticed at the commit point


@pytest.mark.parametrize("earlier", [False, True], ids=["new-dir", "force-over-earlier-run"])
@pytest.mark.parametrize("how", HOWS)
def test_cli_fit_interrupted_while_writing(tmp_path, monkeypatch, how, earlier):
    import pkpd.fit.api

    writer = _FakeWriter(how)
    monkeypatch.setattr(pkpd.fit.api, "fit", lambda *a, **k: writer)
    out = tmp_path / "fit"
    before = _earlier_run(out, writer.names) if earlier else {}
    res = runner.invoke(
        app,
        [
            "fit",
            str(ROOT / "pkpd" / "datasets" / "theoph.csv"),
            "--model",
            str(ROOT / "examples" / "models" / "theoph.toml"),
            "--out",
            str(out),
        ]
        + (["--force"] if earlier else []),
    )
    _check_interrupted(res, out, before, tmp_path)
    assert earlier or not out.exists()


@pytest.mark.parametrize("earlier", [False, True], ids=["new-dir", "force-over-earlier-run"])
@pytest.mark.parametrize("how", HOWS)
def test_cli_forecast_interrupted_while_writing(tmp_path, monkeypatch, how, earlier):
    import sys

    import pkpd.fit.forecast  # noqa: F401 - the module (pkpd.fit's attribute of that name is the function)

    writer = _FakeWriter(how, ("parameters.csv", "draws.csv", "predictions.csv"))
    monkeypatch.setattr(sys.modules["pkpd.fit.forecast"], "forecast", lambda *a, **k: writer)
    data = tmp_path / "patient.csv"
    data.write_text("ID,TIME,EVID,AMT,DV\n1,0,1,100,0\n")
    out = tmp_path / "fc"
    if earlier:
        _earlier_run(out, writer.names)
    else:
        out.mkdir()
    (out / "model.toml").write_text("earlier model\n")  # the model copied by an earlier forecast
    before = _files(out)
    res = runner.invoke(
        app,
        [
            "forecast",
            str(data),
            "--model",
            str(ROOT / "examples" / "models" / "theoph.toml"),
            "--out",
            str(out),
            "--force",
        ],
    )
    _check_interrupted(res, out, before, tmp_path)


@pytest.mark.parametrize("earlier", [False, True], ids=["new-dir", "force-over-earlier-run"])
@pytest.mark.parametrize("how", HOWS)
def test_cli_optimize_interrupted_while_writing(tmp_path, monkeypatch, how, earlier):
    import regimens.optimize

    writer = _FakeWriter(how, ("schedule.csv", "comparison.csv", "explanation.txt"))
    monkeypatch.setattr(regimens.optimize, "optimize_patient", lambda *a, **k: writer)
    out = tmp_path / "opt"
    before = _earlier_run(out, writer.names) if earlier else {}
    res = runner.invoke(
        app,
        [
            "optimize",
            "--patient",
            str(ROOT / "examples" / "patient_spine.toml"),
            "--out",
            str(out),
            "--draws",
            "2",
            "--steps",
            "1",
        ]
        + (["--force"] if earlier else []),
    )
    _check_interrupted(res, out, before, tmp_path)


def _fake_trial(*args, **kwargs):
    patients = pd.DataFrame({"ID": [1, 2], "MME": [1.0, 2.0]})
    summary = pd.DataFrame({"stratum": ["all"], "regimen": ["proposal"]})
    return patients, summary, {"total_s": 1.0}


@pytest.mark.parametrize("earlier", [False, True], ids=["new-dir", "force-over-earlier-run"])
@pytest.mark.parametrize("how", HOWS)
def test_cli_trial_interrupted_while_writing(tmp_path, monkeypatch, how, earlier):
    """patients.csv, summary.csv and timings.json are written, then trial.png is interrupted."""
    import regimens.optimize

    monkeypatch.setattr(regimens.optimize, "run_trial", _fake_trial)
    monkeypatch.setattr(
        regimens.optimize,
        "plot_trial",
        lambda patients, path: (Path(path).write_bytes(b"\x89PNG half"), _interrupt(how)),
    )
    out = tmp_path / "trial"
    before = _earlier_run(out, ("timings.json", "trial.png")) if earlier else {}
    res = runner.invoke(
        app,
        ["trial", "--population", "2", "--draws", "2", "--steps", "1", "--out", str(out)]
        + (["--force"] if earlier else []),
    )
    _check_interrupted(res, out, before, tmp_path)
    assert "rerun with --resume to continue" in cli_output(res)


def test_cli_trial_sigint_while_the_outputs_are_moved_keeps_a_complete_set(tmp_path, monkeypatch):
    """Ctrl-C during the move phase: every new file is in place (none of the earlier run's outputs is left
    beside them), exit 130, and the message says the outputs are complete and kept."""
    import regimens.optimize

    monkeypatch.setattr(regimens.optimize, "run_trial", _fake_trial)
    monkeypatch.setattr(regimens.optimize, "plot_trial", lambda patients, path: Path(path).write_bytes(b"png"))
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        os.replace(src, dst)

    monkeypatch.setattr(interrupts, "os", _OsWith(replace))
    out = tmp_path / "trial"
    _earlier_run(out)
    res = runner.invoke(
        app, ["trial", "--population", "2", "--draws", "2", "--steps", "1", "--out", str(out), "--force"]
    )
    text = cli_output(res)
    assert res.exit_code == 130, text
    assert f"after the run's outputs were complete: they are kept in {out}" in text and "Traceback" not in text
    assert json.loads((out / "run.json").read_text())["command"] == "trial"
    assert (out / "trial.png").read_bytes() == b"png" and (out / "patients.csv").read_bytes() != EARLIER["patients.csv"]
    assert (out / "notes.txt").read_bytes() == EARLIER["notes.txt"]
    _no_staging(tmp_path)


@pytest.mark.parametrize("earlier", [False, True], ids=["new-dir", "force-over-earlier-run"])
@pytest.mark.parametrize("how", HOWS)
def test_cli_simulate_regimen_interrupted_while_writing(tmp_path, monkeypatch, how, earlier):
    import pkpd.population.report
    import pkpd.population.run

    monkeypatch.setattr(pkpd.population.run, "simulate_regimen_stored", lambda *a, **k: types.SimpleNamespace(notes=[]))

    def write(result, out_dir, **kwargs):
        return _FakeWriter(how, ("patients.csv", "summary.csv", "doses.csv")).save(out_dir)

    monkeypatch.setattr(pkpd.population.report, "write_population_outputs", write)
    out = tmp_path / "sim"
    before = _earlier_run(out, ("doses.csv", "bands.png")) if earlier else {}
    res = runner.invoke(
        app, ["simulate", "--regimen", "C1", "--population", "3", "--out", str(out)] + (["--force"] if earlier else [])
    )
    _check_interrupted(res, out, before, tmp_path)


def test_cli_simulate_regimen_real_writer_interrupted_over_an_earlier_run(tmp_path, monkeypatch):
    """The defect as found: `pkpd simulate --regimen ... --force` over an earlier run, Ctrl-C while bands.png
    is drawn (patients, summary, doses and findings already written). The earlier run's files used to be
    deleted (its run.json kept, listing them); now they are byte-identical and the chunks stay for --resume.
    Then the run resumes and its outputs replace the earlier ones."""
    import pkpd.population.report

    out = tmp_path / "sim"
    _earlier_run(out, ("doses.csv", "findings.csv", "bands.png", "mme.png", "regimen.txt"))
    (out / "run.json").write_text('{"command": "simulate"}\n')  # an earlier `pkpd simulate --regimen` run
    before = _files(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real = pkpd.population.report.plot_bands
    monkeypatch.setattr(pkpd.population.report, "plot_bands", interrupted)
    args = ["simulate", "--regimen", "C1", "--population", "3", "--out", str(out)]
    res = runner.invoke(app, args + ["--force"])
    _check_interrupted(res, out, before, tmp_path)
    assert (out / "chunks" / "store.json").is_file()
    monkeypatch.setattr(pkpd.population.report, "plot_bands", real)
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, cli_output(res)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["command"] == "simulate" and "patients.csv" in manifest["outputs"]  # relative to OUT
    assert all((out / name).is_file() for name in manifest["outputs"])
    assert len(pd.read_csv(out / "patients.csv")) == 3 and (out / "bands.png").is_file()
    assert (out / "notes.txt").read_bytes() == EARLIER["notes.txt"]
    _no_staging(tmp_path)


@pytest.fixture
def bolus(tmp_path):
    data = tmp_path / "bolus.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT\n1,0,1,100,1\n1,1,0,0,1\n1,2,0,0,1\n")
    params = tmp_path / "p.toml"
    params.write_text("[parameters]\nCL = 5\nV = 50\n")
    return data, params


@pytest.mark.parametrize("earlier", [False, True], ids=["new-files", "force-over-earlier-run"])
@pytest.mark.parametrize("how", HOWS)
def test_cli_simulate_dataset_interrupted_while_plotting(tmp_path, monkeypatch, bolus, how, earlier):
    """The CSV is written, then the plot is interrupted: an earlier sim.csv, plot and sim.run.json stay."""
    import sys

    data, params = bolus
    out_dir = tmp_path / "res"
    out_dir.mkdir()
    out, plot = out_dir / "sim.csv", out_dir / "sim.png"
    if earlier:
        out.write_text("earlier simulation\n")
        plot.write_bytes(b"earlier png")
        (out_dir / "sim.run.json").write_text('{"command": "simulate"}\n')
    before = _files(out_dir)

    def plot_profiles(curves, model, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        _interrupt(how)
        return 1, 1

    monkeypatch.setattr(sys.modules["pkpd.simulate"], "plot_profiles", plot_profiles)
    res = runner.invoke(
        app,
        ["simulate", str(data), "--model", "1cmt_iv", "--params", str(params), "--out", str(out), "--plot", str(plot)]
        + (["--force"] if earlier else []),
    )
    _check_interrupted(res, out_dir, before, tmp_path)


def test_cli_simulate_dataset_force_replaces_the_files_together(tmp_path, bolus):
    data, params = bolus
    out = tmp_path / "sim.csv"
    out.write_text("earlier simulation\n")
    (tmp_path / "sim.run.json").write_text('{"command": "simulate"}\n')
    res = runner.invoke(
        app, ["simulate", str(data), "--model", "1cmt_iv", "--params", str(params), "--out", str(out), "--force"]
    )
    assert res.exit_code == 0, cli_output(res)
    assert len(pd.read_csv(out)) == 3
    manifest = json.loads((tmp_path / "sim.run.json").read_text())
    assert manifest["outputs"] == ["sim.csv"] and manifest["arguments"]["force"] is True
    _no_staging(tmp_path)


@pytest.mark.parametrize("where", ["rendering", "writing"])
def test_cli_report_interrupted_keeps_the_earlier_report(tmp_path, monkeypatch, bolus, where):
    import pathlib

    import pkpd.html_report

    data, params = bolus
    out = tmp_path / "sim.csv"
    res = runner.invoke(app, ["simulate", str(data), "--model", "1cmt_iv", "--params", str(params), "--out", str(out)])
    assert res.exit_code == 0, cli_output(res)
    report = tmp_path / "sim.report.html"
    report.write_text("<html>the earlier report</html>\n")
    before = _files(tmp_path)
    if where == "rendering":
        monkeypatch.setattr(pkpd.html_report, "render_report", lambda run: (_ for _ in ()).throw(KeyboardInterrupt))
    else:
        real_write = pathlib.Path.write_text

        def write_text(self, text, *args, **kwargs):
            if self.name == "sim.report.html":
                real_write(self, text[: len(text) // 2], *args, **kwargs)
                raise KeyboardInterrupt
            return real_write(self, text, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    res = runner.invoke(app, ["report", str(out), "--force"])
    _check_interrupted(res, tmp_path, before, tmp_path)


def test_a_killed_runs_staging_directory_is_removed_by_the_next_run(tmp_path):
    """A run killed by SIGTERM/SIGKILL while writing leaves its staging directory (the outputs already there
    untouched); the next run writing to that directory removes it. A live process's staging directory (this
    one's parent, here) and another host's are left alone."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("earlier\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = interrupts._HOST
    stale = out / f"{interrupts.STAGING_PREFIX}{host}-{dead_pid}-0"
    live = out / f"{interrupts.STAGING_PREFIX}{host}-{os.getppid()}-0"
    other = out / f"{interrupts.STAGING_PREFIX}elsewhere-{dead_pid}-0"
    for d in (stale, live, other):
        d.mkdir()
        (d / "summary.csv").write_text("half\n")
    with interrupts.staged_outputs() as st:
        st.path(out / "summary.csv").write_text("new\n")
    assert not stale.exists() and live.exists() and other.exists()
    assert (out / "summary.csv").read_text() == "new\n"
