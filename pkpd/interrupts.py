"""Interrupts (Ctrl-C, SIGINT) of long runs that cannot be lost, and final outputs that appear all at once.

Python turns SIGINT into a :class:`KeyboardInterrupt` raised wherever the main thread happens to be. When
that is inside a callback whose exceptions are ignored (JAX's ``_xla_gc_callback`` runs from the garbage
collector: "Exception ignored in ..."), the interrupt is swallowed and the run goes on as if nothing had
happened. :func:`interrupt_guard` installs a SIGINT handler that records the interrupt in a flag *and*
raises :class:`KeyboardInterrupt` as usual; :func:`check` raises again while the flag is set. Long loops
(:func:`pkpd.batch.run_chunks`, between chunks) and the commands (before writing their final outputs) call
:func:`check`, so a swallowed interrupt still ends the run at the next check.

A command writes its final outputs through :func:`staged_outputs`: every file goes to a staging directory
(``.pkpd-staging-<host>-<pid>-<n>``; one left by a killed process of the same host is removed by the next run
that writes there) inside the directory it is meant for, and the files are moved into place with
:func:`os.replace` only when all of them are complete (the *commit*). An interrupt, an error or a crash
before the commit leaves the directory as it was (an earlier run's files byte for byte, with ``--force``
too) and the staging directory is removed; SIGINT is held back while the files are moved, and the run
manifest (``run.json``, ``<stem>.run.json``) is moved last, after the earlier run's manifest was moved
aside, so a move phase cut short (SIGKILL, power loss) leaves a directory without a manifest: recognisably
incomplete, never an earlier run's ``run.json`` beside a mix of files.

>>> with interrupt_guard():          # doctest: +SKIP
...     for chunk in chunks:
...         check()                   # raises KeyboardInterrupt once SIGINT was received
...         compute(chunk)
...     with staged_outputs() as stage:            # checks again
...         write_outputs(stage.dir(out_dir))      # files written in the staging directory
...     # here all of them are in out_dir (an interrupt before this point: none of them)
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

__all__ = [
    "interrupt_guard",
    "check",
    "interrupted",
    "staged_outputs",
    "StagedOutputs",
    "CommitError",
    "committed_outputs",
    "INTERRUPT_EXIT_CODE",
    "STAGING_PREFIX",
]

#: Exit status of a command ended by SIGINT (128 + signal number 2, as shells report it).
INTERRUPT_EXIT_CODE = 130
#: Name prefix of the staging directories of :func:`staged_outputs` (``<prefix><pid>-<n>``).
STAGING_PREFIX = ".pkpd-staging-"
#: File name suffix of a run manifest: moved last by a commit (``run.json``, ``sim.run.json``).
_MANIFEST_SUFFIX = "run.json"
#: Name, in the staging directory, of the earlier run's manifest while the move phase runs.
_PREVIOUS_MANIFEST = "previous-{}"

_state: dict = {"flag": False, "depth": 0, "defer": 0, "committed": []}
_counter = itertools.count()


def interrupted() -> bool:
    """Whether SIGINT was received inside the current :func:`interrupt_guard`.

    Returns
    -------
    bool
        ``True`` from the first SIGINT until the outermost guard exits.
    """
    return bool(_state["flag"])


def check() -> None:
    """Raise :class:`KeyboardInterrupt` if SIGINT was received inside the current :func:`interrupt_guard`.

    Call it between units of work (chunks) and before writing final outputs: an interrupt that an
    exception-swallowing callback caught still stops the run here.

    Raises
    ------
    KeyboardInterrupt
        When :func:`interrupted` is true.
    """
    if _state["flag"]:
        raise KeyboardInterrupt("interrupted (SIGINT received earlier)")


def committed_outputs() -> list[Path]:
    """The files that :func:`staged_outputs` moved into place inside the current (or else the last)
    :func:`interrupt_guard`: an interrupt that ends the run after a commit leaves these complete outputs."""
    return list(_state["committed"])


class CommitError(OSError):
    """Moving the staged outputs into place failed part-way (an :class:`OSError` of the file system); the
    message names the files already moved, those not moved and where they are."""


@contextmanager
def _held_sigint() -> Iterator[None]:
    """SIGINT held back for the duration of the block: recorded, acted on afterwards.

    Inside an :func:`interrupt_guard` the signal sets the flag (the next :func:`check` raises). Outside one
    (from the main thread) a recording handler is installed for the block and a held SIGINT is raised as
    :class:`KeyboardInterrupt` when the block has completed."""
    outside = _state["depth"] == 0
    previous, installed, pending = None, False, False
    _state["defer"] += 1  # from here on _handler only records SIGINT
    try:
        if outside and threading.current_thread() is threading.main_thread():
            try:
                previous = signal.signal(signal.SIGINT, _handler)
                installed = True
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter / platform limits
                installed = False
        yield
    finally:
        _state["defer"] -= 1
        if installed:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if outside:
            pending, _state["flag"] = bool(_state["flag"]), False
    if pending:
        raise KeyboardInterrupt("interrupted (SIGINT received while the outputs were moved into place)")


_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale_staging(target: Path) -> list[Path]:
    """Remove staging directories in ``target`` left by a process of this host that no longer runs (a run
    killed with SIGTERM or SIGKILL while it wrote its outputs: the outputs already there were never touched);
    returns those removed. Another host's or a live process's staging directory is left alone."""
    removed = []
    for d in target.glob(f"{STAGING_PREFIX}{_HOST}-*"):
        pid = d.name[len(f"{STAGING_PREFIX}{_HOST}-") :].split("-")[0]
        if d.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class StagedOutputs:
    """Final outputs written under staging names and moved into place together; see :func:`staged_outputs`.

    :meth:`dir` gives the staging directory of an output directory, :meth:`path` the staging path of an
    output file; :meth:`final` maps a staged path back to where it goes. :meth:`commit` moves every staged
    file into place; :meth:`discard` removes them (and output directories this staging created, when empty).
    """

    def __init__(self) -> None:
        self.name = f"{STAGING_PREFIX}{_HOST}-{os.getpid()}-{next(_counter)}"
        self._dirs: dict[Path, Path] = {}  # output directory -> its staging directory
        self._created: list[Path] = []  # output directories (and parents) this staging created
        self.done = False

    # ---- where to write
    def dir(self, target_dir) -> Path:
        """The staging directory of the output directory ``target_dir`` (both created when missing): a file
        written there as ``NAME`` is moved to ``target_dir/NAME`` by :meth:`commit`."""
        target = Path(target_dir)
        if self.done:
            raise RuntimeError("these staged outputs were already committed or discarded")
        if target in self._dirs:
            return self._dirs[target]
        missing = [p for p in (target, *target.parents) if not p.exists()]
        staging = target / self.name
        self._dirs[target] = staging  # recorded first: an interrupt during mkdir still finds it
        self._created.extend(missing)  # deepest first
        target.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(target)
        staging.mkdir()
        return staging

    def path(self, target_file) -> Path:
        """The staging path of the output file ``target_file`` (in :meth:`dir` of its directory)."""
        target = Path(target_file)
        return self.dir(target.parent) / target.name

    def final(self, staged) -> Path:
        """Where the staged file ``staged`` goes (a path outside the staging directories is returned as is)."""
        p = Path(staged)
        for target, staging in self._dirs.items():
            try:
                return target / p.relative_to(staging)
            except ValueError:
                continue
        return p

    def finals(self, staged: Iterable) -> list[Path]:
        """:meth:`final` of each path."""
        return [self.final(p) for p in staged]

    def _moves(self) -> list[tuple[Path, Path]]:
        """(staged file, output path) of every staged file; manifests last."""
        moves = []
        for target, staging in self._dirs.items():
            for root, _dirs, files in os.walk(staging):
                for f in sorted(files):
                    src = Path(root) / f
                    moves.append((src, target / src.relative_to(staging)))
        return sorted(moves, key=lambda m: m[1].name.endswith(_MANIFEST_SUFFIX))

    # ---- commit or discard
    def commit(self) -> list[Path]:
        """Move every staged file into place; return the output paths.

        An interrupt received before this call (even a swallowed one) raises here, before anything is moved
        (the commit point). While the files are moved SIGINT is held back (:func:`_held_sigint`): the move
        phase completes, then the interrupt takes effect (the outputs are then complete). The earlier run's
        manifest of each directory that gets a new one is first moved aside, and the new manifests are moved
        last. An existing output file is replaced in one step (:func:`os.replace`), never deleted first.

        Raises
        ------
        KeyboardInterrupt
            SIGINT received before the commit point (nothing moved, the staged files are left for
            :meth:`discard`), or during the move phase (everything moved).
        CommitError
            A move failed: the files moved so far stay in place, the others stay in the staging directory;
            the message says which and where (the earlier manifest stays moved aside there, so the directory
            does not pass for the earlier run).
        """
        check()  # the commit point
        moves = self._moves()
        for _src, dst in moves:  # before anything is moved: a directory in the way fails the whole commit
            if dst.is_dir():
                raise CommitError(f"cannot write the output {dst}: it is a directory; nothing was written")
        moved: list[Path] = []
        aside: list[tuple[Path, Path]] = []  # (earlier manifest, where it was moved)
        with _held_sigint():
            try:
                for src, dst in moves:
                    if dst.name.endswith(_MANIFEST_SUFFIX) and dst.is_file():  # the earlier run's manifest
                        keep = self._dirs[self._target_of(src)] / _PREVIOUS_MANIFEST.format(dst.name)
                        os.replace(dst, keep)
                        aside.append((dst, keep))
                for src, dst in moves:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
                    moved.append(dst)
            except OSError as exc:
                self._failed(exc, moves, moved, aside)
            if _state["depth"]:
                _state["committed"].extend(moved)
            self.done = True
            for staging in self._dirs.values():
                shutil.rmtree(staging, ignore_errors=True)
        check()  # a SIGINT held back during the move phase ends the run now (its outputs complete)
        return moved

    def _failed(self, exc: OSError, moves, moved: list, aside: list) -> None:
        """A move of :meth:`commit` failed: undo what can be undone safely and raise :class:`CommitError`."""
        if not moved:  # nothing replaced yet: the earlier manifests go back, the directory is as it was
            for dst, keep in aside:
                try:
                    os.replace(keep, dst)
                except OSError:
                    break
            else:
                raise CommitError(f"cannot move the outputs into place ({exc}); nothing was written") from exc
        self.done = True  # the staging directories keep the files not moved (and any earlier manifest)
        left = [str(s) for s, d in moves if d not in moved]
        kept = "; the earlier run's manifest was moved to " + ", ".join(str(k) for _, k in aside) if aside else ""
        raise CommitError(
            f"moving the finished outputs into place failed ({exc}); the outputs are INCOMPLETE: moved "
            f"{', '.join(map(str, moved)) or 'none'}; not moved (still in the staging directory): "
            f"{', '.join(left) or 'none'}{kept}"
        ) from exc

    def _target_of(self, staged: Path) -> Path:
        for target, staging in self._dirs.items():
            if staged == staging or staging in staged.parents:
                return target
        raise ValueError(staged)  # pragma: no cover - every move comes from a staging directory

    def discard(self) -> None:
        """Remove the staging directories and the output directories this staging created (when empty);
        the output directories' other files are not touched. SIGINT is held back meanwhile."""
        if self.done:
            return
        with _held_sigint():
            self.done = True
            for staging in self._dirs.values():
                shutil.rmtree(staging, ignore_errors=True)
            for d in self._created:  # deepest first
                try:
                    d.rmdir()
                except OSError:
                    break


@contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Write a run's final outputs so that they appear all together or not at all.

    Checks for an interrupt first (:func:`check`). Inside the block, write every output through the
    :class:`StagedOutputs` object (``stage.dir(out_dir)``, ``stage.path(file)``); when the block completes
    the files are moved into place (:meth:`StagedOutputs.commit`). When it raises (an interrupt, an error),
    the staged files are removed instead (:meth:`StagedOutputs.discard`) and the output directories keep
    exactly the files they had.

    Raises
    ------
    KeyboardInterrupt
        When SIGINT was received earlier (nothing is staged), during the block, or before the commit.
    CommitError
        See :meth:`StagedOutputs.commit`.
    """
    check()
    stage = StagedOutputs()
    try:
        yield stage
        stage.commit()
    finally:
        stage.discard()  # nothing to do after a commit


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _state["flag"] = True
    if not _state["defer"]:
        raise KeyboardInterrupt


def _quiet_unraisable(previous):
    """An unraisable-exception hook that drops the KeyboardInterrupt of a recorded SIGINT (a callback such as
    JAX's gc callback swallowed it; :func:`check` raises it again), and passes everything else on."""

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _state["flag"]:
            return
        previous(unraisable)

    return hook


@contextmanager
def interrupt_guard() -> Iterator[None]:
    """Record SIGINT for the duration of a long run, so that it cannot be lost.

    Inside the guard SIGINT sets the flag read by :func:`check` and :func:`interrupted` and raises
    :class:`KeyboardInterrupt` immediately (as Python's default handler does; while :func:`staged_outputs`
    moves files into place it is held back until they are); a KeyboardInterrupt that a callback swallows is
    not printed as "Exception ignored in ..." (it is raised again by :func:`check`). Guards nest; the
    outermost one installs the handler (only from the main thread: elsewhere signals cannot be handled and
    the flag is only read), restores the previous handler on exit and clears the flag.

    Raises
    ------
    KeyboardInterrupt
        On exit without an exception when SIGINT was received inside the guard (the interrupt was
        swallowed somewhere): the caller must not carry on as if the run had completed.
    """
    outer = _state["depth"] == 0
    previous = None
    installed = False
    previous_hook = sys.unraisablehook
    if outer:
        _state["flag"] = False
        _state["committed"] = []
        sys.unraisablehook = _quiet_unraisable(previous_hook)
        if threading.current_thread() is threading.main_thread():
            try:
                previous = signal.signal(signal.SIGINT, _handler)
                installed = True
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter / platform limits
                installed = False
    _state["depth"] += 1
    try:
        yield
        check()
    finally:
        _state["depth"] -= 1
        if outer:
            if installed:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
            sys.unraisablehook = previous_hook
            _state["flag"] = False
