"""Reading a TOML input file with one clear error (shared by the model, parameter and fit-file readers)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from .errors import ModelSpecError

__all__ = ["read_toml"]


def read_toml(path: str | Path, what: str = "model file") -> tuple[dict, str]:
    """``(content, text)`` of the TOML file ``path``.

    Raises
    ------
    ModelSpecError
        The file does not exist or is not valid TOML (the parser's message names the line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"{what} {path} " + ("is a directory, not a file" if path.is_dir() else "does not exist"))
    text = path.read_text()
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ModelSpecError(f"{what} {path} is not valid TOML: {exc}") from None
