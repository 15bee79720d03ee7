"""Non-opioid analgesic entries (models.md A7-A10, A12)."""

from __future__ import annotations

from ._base import Drug

DRUGS: tuple[Drug, ...] = ()
