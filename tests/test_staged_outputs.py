"""An interrupt while a command writes its outputs loses nothing (issue 20: "Ctrl-C while outputs are being
written deletes them (with --force that includes files of an earlier run)").

Every command writes its final outputs through :func:`pkpd.interrupts.staged_outputs`: into a staging
directory, moved into place only when all are complete. Here a writer is interrupted at several points
(before writing, between two output files, after the last file but before the commit, while the files are
moved into place), with and without an earlier run's files in OUT (``--force``): the earlier files must be
byte-identical afterwards, nothing half-written or staged may remain, and the command exits with 130.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pkpd import interrupts

ROOT = Path(__file__).resolve().parents[1]
EARLIER = {"patients.csv": b"ID,OLD\n1,7\n", "summary.csv": b"old summary\n", "run.json": b'{"command": "old"}\n',
           "fit.json": b"{}\n", "parameters.csv": b"old,parameters\n", "notes.txt": b"the user's notes\n"}


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
