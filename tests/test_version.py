"""The package version comes from the installed distribution's metadata, and every run manifest (``run.json``)
records it with the git commit the package runs from."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from cli_helpers import cli_output, runner

import pkpd
from cli import app
from pkpd.manifest import git_commit

ROOT = Path(__file__).resolve().parents[1]
COMMIT = re.compile(r"^[0-9a-f]{7,40}(-dirty)?$")


def test_version_is_the_distributions():
    assert pkpd.__version__ == metadata.version("pkpd-spine")


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_commit_of_this_checkout():
    assert COMMIT.match(git_commit() or ""), git_commit()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_commit_is_short_hash_dirty_flag_or_none(tmp_path):
    assert git_commit(tmp_path) is None  # not a checkout
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.org",
                "-c",
                "commit.gpgsign=false",
                *args,
            ],
            check=True,
            capture_output=True,
            text=True,
        )

    git("init", "-q")
    (repo / "a.txt").write_text("1\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD").stdout.strip()
    assert git_commit(repo) == head
    (repo / "new.txt").write_text("untracked files do not make the tree dirty\n")
    assert git_commit(repo) == head
    (repo / "a.txt").write_text("2\n")
    assert git_commit(repo) == head + "-dirty"
    sub = repo / "sub"
    sub.mkdir()
    assert git_commit(sub) is None  # inside a checkout, but not its top


def test_simulate_run_json_records_version_and_commit(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("ID,TIME,AMT,CMT,EVID\n1,0,100,1,1\n1,1,0,1,0\n1,4,0,1,0\n")
    params = tmp_path / "p.toml"
    params.write_text('model = "1cmt_iv"\n[parameters]\nCL = 5\nV = 50\n')
    res = runner.invoke(app, ["simulate", str(data), "-p", str(params), "-o", str(tmp_path / "sim.csv")])
    assert res.exit_code == 0, cli_output(res)
    doc = json.loads((tmp_path / "sim.run.json").read_text())
    assert doc["version"] == pkpd.__version__ == doc["versions"]["pkpd"]
    assert doc["commit"] == git_commit()
    assert doc["commit"] is None or COMMIT.match(doc["commit"])
