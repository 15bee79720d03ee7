"""Process-wide JAX settings of the toolkit: the floating-point precision and the persistent compilation cache.

:func:`configure` is the one place where they are set. ``import pkpd`` calls it once with the defaults read
from the environment (:func:`environment_defaults`), so a library user gets 64-bit floats and a compilation
cache without a call; the command line calls it again at start-up with the command's ``--precision``. A
program that wants other settings calls it itself, before it creates arrays or compiles anything:

>>> import pkpd
>>> pkpd.configure(precision="float64").precision
'float64'

Environment variables (read once, by ``import pkpd``):

``PKPD_PRECISION``
    ``float64`` (the default when unset), ``float32``, or ``auto``: float32 when an accelerator plugin and its
    device files are present and ``JAX_PLATFORMS`` does not ask for the CPU, float64 otherwise (decided
    without starting JAX's backends, which :func:`jax.distributed.initialize` needs to come first). Any other
    value counts as float64 (``import pkpd`` never fails on it; the commands' ``--precision`` refuses it).
``PKPD_JAX_CACHE``
    The compilation cache directory (default ``~/.cache/pkpd/jax``), or ``off`` (also ``0``, ``no``,
    ``none``, ``false``). A cache directory the user configured for JAX itself (``JAX_COMPILATION_CACHE_DIR``)
    wins; a directory that cannot be created (read-only home) means no cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from .errors import PKPDError

__all__ = [
    "configure",
    "configure_from_environment",
    "current",
    "default_precision",
    "environment_defaults",
    "Configuration",
    "ConfigurationError",
    "PRECISIONS",
    "DEFAULT_CACHE_DIR",
]

#: The values :func:`configure` accepts for ``precision``.
PRECISIONS = ("float64", "float32", "auto")
#: The compilation cache directory when ``PKPD_JAX_CACHE`` is unset.
DEFAULT_CACHE_DIR = Path("~") / ".cache" / "pkpd" / "jax"
#: Programs that took at least this long to compile (s) are kept in the cache: also the small host-side
#: programs (matrix exponentials, variability draws: 0.3-0.5 s each) that a process compiles for every shape.
MIN_COMPILE_TIME_S = 0.25
#: The words of ``cache=`` and ``PKPD_JAX_CACHE`` that switch the cache off.
_OFF = ("off", "0", "no", "none", "false")


class ConfigurationError(PKPDError, ValueError):
    """A :func:`configure` setting is not one of the accepted values, or its cache directory cannot be made."""


@dataclass(frozen=True)
class Configuration:
    """The settings in force (what :func:`configure` and :func:`current` return).

    Attributes
    ----------
    precision
        ``"float64"`` (JAX's ``jax_enable_x64`` on: 64-bit floats, the default on CPU) or ``"float32"``.
    cache
        The persistent compilation cache directory, or ``None`` when there is none.
    """

    precision: str
    cache: Path | None


class Settings(TypedDict):
    """Keyword arguments of :func:`configure` (what :func:`environment_defaults` returns)."""

    precision: str | None
    cache: str | os.PathLike[str] | None


def current() -> Configuration:
    """The precision and compilation cache directory in force (JAX's own settings, read back)."""
    import jax

    where = jax.config.jax_compilation_cache_dir
    return Configuration("float64" if jax.config.jax_enable_x64 else "float32", Path(where) if where else None)


def default_precision(platform: str | None = None) -> str:
    """float64 on CPU, float32 on accelerators.

    Parameters
    ----------
    platform
        ``"cpu"``, ``"gpu"``, ``"tpu"``...; default: JAX's default backend (which this starts).

    Returns
    -------
    str
        ``"float64"`` or ``"float32"``.

    >>> default_precision("cpu"), default_precision("gpu")
    ('float64', 'float32')
    """
    if platform is None:
        import jax

        platform = jax.default_backend()
    return "float64" if platform == "cpu" else "float32"


def configure(precision: str | None = None, cache: str | os.PathLike[str] | None = None) -> Configuration:
    """Set the floating-point precision and the persistent compilation cache of this process.

    Both are global JAX settings (``jax_enable_x64``, ``jax_compilation_cache_dir``). Call this at the start
    of a program, before arrays are created or functions compiled: arrays made earlier keep their dtype.
    Idempotent: a setting already in force is left alone (nothing is updated), so calling it again with the
    same values, or with ``None``, changes nothing. ``import pkpd`` has already called it with the
    environment's defaults (:func:`environment_defaults`).

    Parameters
    ----------
    precision
        ``"float64"``: 64-bit floats (``jax_enable_x64`` on; the default on CPU, and the import-time default);
        ``"float32"``: 32-bit floats (x64 off: faster on accelerators, about 1e-5 relative accuracy of the
        simulated concentrations); ``"auto"``: float64 on CPU, float32 on accelerators, from the backend that
        JAX starts (so in a multi-process run, call it after :func:`jax.distributed.initialize`);
        ``None``: unchanged. Case-insensitive.
    cache
        A directory (``str`` or path; ``~`` is expanded; created when missing) where compiled programs are
        kept across processes: a program compiled once (the optimizer's take about a minute) is read back
        by later processes with the same shapes and options (entries are keyed by the program, the compile
        options and the JAX version, so a stale one is never used). Programs that took at least 0.25 s to
        compile are kept. ``"off"``: no persistent cache; ``None``: unchanged.

    Returns
    -------
    Configuration
        The settings in force afterwards.

    Raises
    ------
    ConfigurationError
        ``precision`` not one of float64, float32, auto; ``cache`` not a path or ``"off"``, or a directory
        that cannot be created (the message says why). A precision already set stays set.

    Examples
    --------
    >>> import pkpd
    >>> pkpd.configure(precision="float32").precision
    'float32'
    >>> pkpd.configure(precision="float64")  # doctest: +ELLIPSIS
    Configuration(precision='float64', cache=...)
    >>> pkpd.configure(precision="float16")
    Traceback (most recent call last):
    ...
    pkpd.config.ConfigurationError: precision must be one of float64, float32, auto, got 'float16'
    """
    import jax

    if precision is not None:
        value = str(precision).strip().lower()
        if value not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        x64 = (default_precision() if value == "auto" else value) == "float64"
        if bool(jax.config.jax_enable_x64) != x64:
            jax.config.update("jax_enable_x64", x64)
    if cache is not None:
        _set_cache(_cache_dir(cache))
    return current()


def _cache_dir(cache: Any) -> Path | None:
    """The directory ``cache=`` asks for (created), or ``None`` for ``"off"``."""
    if not isinstance(cache, (str, os.PathLike)):
        raise ConfigurationError(f"cache must be a directory or 'off', got {cache!r}")
    text = os.fspath(cache).strip()
    if text.lower() in _OFF:
        return None
    if not text:
        raise ConfigurationError("cache must be a directory or 'off', got an empty string")
    path = Path(text).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot use {path} as the compilation cache directory: {exc}") from None
    return path


def _set_cache(path: Path | None) -> None:
    """Point JAX's persistent compilation cache at ``path`` (``None``: off) unless it already is there."""
    import jax

    now = jax.config.jax_compilation_cache_dir
    if (Path(now) if now else None) == path:
        return
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", None if path is None else str(path))
    if path is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    compilation_cache.reset_cache()  # a cache JAX opened already is reopened at the new place (or dropped)


def environment_defaults() -> Settings:
    """The settings that ``import pkpd`` applies, from ``PKPD_PRECISION`` and ``PKPD_JAX_CACHE`` (see the
    module's docstring); ``cache`` is ``None`` (leave it) when JAX already has a cache directory
    (``JAX_COMPILATION_CACHE_DIR``). Starts no JAX backend.

    Returns
    -------
    dict
        ``{"precision": "float64" | "float32", "cache": directory | "off" | None}``, keyword arguments of
        :func:`configure`.
    """
    import jax

    where = os.environ.get("PKPD_JAX_CACHE", "").strip()
    cache: str | None = where or str(DEFAULT_CACHE_DIR)
    if jax.config.jax_compilation_cache_dir:
        cache = None
    return {"precision": _environment_precision(), "cache": cache}


def configure_from_environment() -> Configuration:
    """:func:`configure` with :func:`environment_defaults` (what ``import pkpd`` runs, once). A cache
    directory that cannot be created (read-only home) leaves the process without a persistent cache."""
    settings = environment_defaults()
    try:
        return configure(**settings)
    except ConfigurationError:  # the cache directory cannot be made: run without the cache
        return configure(precision=settings["precision"])


def _environment_precision() -> str:
    """``PKPD_PRECISION`` as float64 or float32; ``auto`` guessed from the installed accelerator plugins and
    their device files, without starting JAX's backends."""
    value = os.environ.get("PKPD_PRECISION", "float64").strip().lower() or "float64"
    if value != "auto":
        return "float32" if value == "float32" else "float64"
    import importlib.util

    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms and platforms.split(",")[0].strip() == "cpu":
        return "float64"
    plugins = (
        ("jax_cuda12_plugin", "/dev/nvidiactl"),
        ("jax_cuda13_plugin", "/dev/nvidiactl"),
        ("jax_rocm60_plugin", "/dev/kfd"),
        ("jax_rocm7_plugin", "/dev/kfd"),
        ("libtpu", "/dev/accel0"),
        ("libtpu", "/dev/vfio"),
    )
    for module, dev in plugins:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found and os.path.exists(dev):
            return "float32"
    return "float64"
