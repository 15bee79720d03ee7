"""`--resume` only continues a run it recognises (issue 20, part 2).

A non-empty output directory without the chunk store (``OUT/chunks/store.json``) of a run of the same
command, or whose ``run.json`` is another command's, is refused like any existing output without
``--force``: exit 1, one message, nothing written or overwritten. Every refusal here happens before any
computation.
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import cli_output, runner

from cli import app
from pkpd import batch
from pkpd.population.run import STORE_KIND

SIM = ["simulate", "--regimen", "C1", "--population", "5"]
TRIAL = ["trial", "--population", "2", "--draws", "2", "--steps", "1"]


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "args, command, user_file", [(SIM, "simulate", "patients.csv"), (TRIAL, "trial", "summary.csv")]
)
def test_resume_into_a_directory_without_a_run_is_refused(tmp_path, args, command, user_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / user_file).write_text("x\n")
    before = _snapshot(out)
    res = runner.invoke(app, args + ["--out", str(out), "--resume"])
    text = cli_output(res)
    assert res.exit_code == 1, text
    assert f"cannot resume in {out}: the directory is not empty and holds no run of `pkpd {command}` to resume" in text
    assert "pass --force" in text and "Traceback" not in text
    assert _snapshot(out) == before and not (out / "chunks").exists()  # the user's file untouched


def test_resume_refuses_a_store_of_another_command(tmp_path):
    out = tmp_path / "out"
    batch.ChunkStore.open(out / "chunks", batch.run_identity(kind="spine72_trial", n=5, seed=0), 1)
    before = _snapshot(out)
    res = runner.invoke(app, SIM + ["--out", str(out), "--resume"])
    text = cli_output(res)
    assert res.exit_code == 1, text
    assert "its chunk store holds a run of another kind ('spine72_trial', not 'regimen_simulation'" in text
    assert _snapshot(out) == before


def test_resume_refuses_a_manifest_of_another_command(tmp_path):
    out = tmp_path / "out"
    batch.ChunkStore.open(out / "chunks", batch.run_identity(kind=STORE_KIND, n=5), 1)
    (out / "run.json").write_text(json.dumps({"command": "fit"}))
    with pytest.raises(batch.BatchError, match="its run.json is not the manifest of a `pkpd simulate` run"):
        batch.check_resume_dir(out, STORE_KIND, "simulate")


def test_resume_accepts_its_own_store_an_empty_or_absent_directory(tmp_path):
    out = tmp_path / "out"
    batch.check_resume_dir(out, STORE_KIND, "simulate")  # absent: the run starts
    out.mkdir()
    batch.check_resume_dir(out, STORE_KIND, "simulate")  # empty: the run starts
    batch.ChunkStore.open(out / "chunks", batch.run_identity(kind=STORE_KIND, n=5), 1)
    batch.check_resume_dir(out, STORE_KIND, "simulate")  # interrupted run: resumed
    (out / "run.json").write_text(json.dumps({"command": "simulate"}))
    (out / "patients.csv").write_text("ID\n1\n")
    batch.check_resume_dir(out, STORE_KIND, "simulate")  # a finished run of the same command: resumed


def test_resume_refuses_an_unreadable_store_and_a_file(tmp_path):
    out = tmp_path / "out"
    (out / "chunks").mkdir(parents=True)
    (out / "chunks" / "store.json").write_text("{not json")
    with pytest.raises(batch.BatchError, match="chunk store .* is unreadable"):
        batch.check_resume_dir(out, STORE_KIND, "simulate")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(batch.BatchError, match="is a file"):
        batch.check_resume_dir(f, STORE_KIND, "simulate")
