"""How a setting's text is read: the kinds of value a setting can hold, each with its allowed values in words."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """One or more settings are wrong; the message has one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Kind:
    """How a setting's text is read: `parse` raises ValueError for a value outside `allowed`."""

    parse: Callable[[str], Any]
    allowed: str  # what a user may write, in words
    show: Callable[[Any], str] = str  # the value as an environment variable
    secret: bool = False  # never shown: not in errors, not in repr()
    options: tuple[str, ...] = ()  # a choice's values, for the command line
    is_switch: bool = False  # on or off: --name / --no-name on the command line


def whole(low: int, high: int | None = None) -> Kind:
    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError
        return value
    return Kind(parse, f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}")


def number(low: float, *, above: bool = False) -> Kind:
    """A finite number >= low (> low with `above`)."""
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < low or (above and value == low):
            raise ValueError
        return value
    return Kind(parse, f"a number {'>' if above else '>='} {low:g}")


ON, OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def switch() -> Kind:
    def parse(text: str) -> bool:
        if text.lower() in ON + OFF:
            return text.lower() in ON
        raise ValueError
    return Kind(parse, "on (1, true, on, yes) or off (0, false, off, no)", lambda value: str(int(value)), is_switch=True)


def choice(*options: str) -> Kind:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError
        return text
    return Kind(parse, "one of " + ", ".join(options), options=options)


def text() -> Kind:
    def parse(value: str) -> str:
        if not value.strip():
            raise ValueError
        return value
    return Kind(parse, "a non-empty text")


def folder() -> Kind:
    return Kind(Path, "a folder that can be created and written")


def existing_file() -> Kind:
    def parse(value: str) -> Path:
        if not Path(value).is_file():
            raise ValueError
        return Path(value)
    return Kind(parse, "the path of an existing file")


def secret_text(least: int = 8) -> Kind:
    def parse(value: str) -> str:
        if len(value) < least:
            raise ValueError
        return value
    return Kind(parse, f"empty or a text of at least {least} characters", secret=True)


def optional(kind: Kind) -> Kind:
    """Unset or empty means None."""
    return Kind(kind.parse, f"empty or {kind.allowed}", lambda value: "" if value is None else kind.show(value))


def setting(env: str, default: Any, kind: Kind, meaning: str) -> Any:
    """A dataclass field bound to the environment variable `env`."""
    return field(default=default, repr=not kind.secret, metadata={"env": env, "kind": kind, "meaning": meaning})
