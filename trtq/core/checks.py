"""Argument checks for public functions: what was received and what is expected, as a TrtqError."""

from __future__ import annotations

import numbers
from typing import Any, Iterable

from trtq.core.errors import TrtqError

__all__ = ["count_arg", "names_arg"]


def count_arg(value: Any, name: str, *, optional: bool = False, minimum: int = 1) -> int | None:
    """``value`` as an int >= ``minimum`` (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TrtqError(f"{name} must be an integer >= {minimum}"
                        + (" or None" if optional else "") + f", got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise TrtqError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def names_arg(value: Any, name: str) -> list[str] | None:
    """A list of tensor/node names; one name given as a string is one name (not its letters)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Iterable):
        raise TrtqError(f"{name} must be a name or a list of names, got {type(value).__name__}")
    names = list(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TrtqError(f"{name} must hold names (str), got {bad[0]!r}")
    return names
