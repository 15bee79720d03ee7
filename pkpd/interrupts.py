"""Interrupts (Ctrl-C, SIGINT) of long runs that cannot be lost.

Python turns SIGINT into a :class:`KeyboardInterrupt` raised wherever the main thread happens to be. When
that is inside a callback whose exceptions are ignored (JAX's ``_xla_gc_callback`` runs from the garbage
collector: "Exception ignored in ..."), the interrupt is swallowed and the run goes on as if nothing had
happened. :func:`interrupt_guard` installs a SIGINT handler that records the interrupt in a flag *and*
raises :class:`KeyboardInterrupt` as usual; :func:`check` raises again while the flag is set. Long loops
(:func:`pkpd.batch.run_chunks`, between chunks) and the commands (before writing their final outputs) call
:func:`check`, so a swallowed interrupt still ends the run at the next check. A command marks the start of
its final outputs with :func:`begin_outputs`: an interrupt after that deletes what was written, so an
interrupted run leaves no final outputs (its resumable chunks stay).

>>> with interrupt_guard():          # doctest: +SKIP
...     for chunk in chunks:
...         check()                   # raises KeyboardInterrupt once SIGINT was received
...         compute(chunk)
...     begin_outputs(out_dir)        # checks again; files written from here are removed on an interrupt
...     write_outputs(out_dir)
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["interrupt_guard", "check", "interrupted", "begin_outputs", "INTERRUPT_EXIT_CODE"]

#: Exit status of a command ended by SIGINT (128 + signal number 2, as shells report it).
INTERRUPT_EXIT_CODE = 130

_state: dict = {"flag": False, "depth": 0, "outputs": []}


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


def begin_outputs(*paths) -> None:
    """Check for an interrupt, then mark the start of a run's final outputs.

    Files written under ``paths`` after this call (new files, or files changed since) are deleted again
    when the run is interrupted before the :func:`interrupt_guard` exits, so an interrupted run
    leaves no partial set of final outputs. A directory in ``paths`` is watched for its top-level files
    only (a chunk store in a subdirectory is kept); a directory the outputs created is removed when it is
    empty afterwards. Outside a guard only the check is made.

    Parameters
    ----------
    *paths
        Output files and directories (``None`` entries are ignored).

    Raises
    ------
    KeyboardInterrupt
        When SIGINT was received earlier (:func:`check`).
    """
    check()
    if _state["depth"] == 0:
        return
    for p in paths:
        if p is not None:
            path = Path(p)
            _state["outputs"].append((path, _snapshot(path)))


def _signature(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _snapshot(path: Path) -> dict | None:
    """``None`` when ``path`` does not exist; else {file path: signature} of the file or the directory's files."""
    if path.is_dir():
        return {q: _signature(q) for q in path.iterdir() if q.is_file()}
    if path.exists():
        return {path: _signature(path)}
    return None


def _discard_outputs() -> None:
    """Delete the files written since :func:`begin_outputs` (see there); errors are ignored."""
    for path, before in reversed(_state["outputs"]):
        try:
            if path.is_dir():
                for q in path.iterdir():
                    if q.is_file() and (before is None or before.get(q) != _signature(q)):
                        q.unlink()
                if before is None and not any(path.iterdir()):
                    path.rmdir()
            elif path.is_file() and (before is None or before.get(path) != _signature(path)):
                path.unlink()
        except OSError:
            continue
    _state["outputs"] = []


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _state["flag"] = True
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
    :class:`KeyboardInterrupt` immediately (as Python's default handler does); a KeyboardInterrupt that a
    callback swallows is not printed as "Exception ignored in ..." (it is raised again by :func:`check`).
    Guards nest; the outermost one installs the handler (only from the main thread: elsewhere signals
    cannot be handled and the flag is only read), restores the previous handler on exit and clears the flag.

    When a :class:`KeyboardInterrupt` leaves a guard, the final outputs written since :func:`begin_outputs`
    are deleted first.

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
        _state["outputs"] = []
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
    except KeyboardInterrupt:
        _discard_outputs()  # at the innermost guard the interrupt passes (an outer one may see another exception)
        raise
    finally:
        _state["depth"] -= 1
        if outer:
            if installed:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
            sys.unraisablehook = previous_hook
            _state["flag"] = False
            _state["outputs"] = []
