"""The checks every settings class makes of its fields: one message style for all.

A misspelt field, a value of the wrong type or out of its range is a
:class:`~radiobject.ConfigurationError` naming the class, the field, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from radiobject._errors import ConfigurationError

__all__ = ["Checked", "check_int", "coerce_enum"]


def check_int(owner: str, name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{owner}.{name} must be an integer, got {value!r} of type {type(value).__name__}"
        )
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigurationError(f"{owner}.{name} must be {allowed}, got {value}")


def coerce_enum(owner: str, name: str, value: object, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ConfigurationError(
            f"{owner}.{name} must be one of {allowed}; got {value!r}"
        ) from None


class Checked:
    """Reject unknown keyword arguments with a ConfigurationError naming them."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # mypy is silenced on the next line: the mixin's subclasses are the dataclasses
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}"
            )
        return super().__new__(cls)
