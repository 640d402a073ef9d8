"""Reading an environment mapping: `SettingsError`, the URL check, and `Reader`.

The primitives every configuration module shares (settings, redis_target,
tracing_settings): typed reads of a mapping handed in, each bad value raising
`SettingsError` with one line naming the variable. Nothing here reads `os.environ`
(settings.environ() does, once).

Imports: stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class SettingsError(ValueError):
    """A bad environment value; the message names the variable."""


def check_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise SettingsError(f"{name}: not a {'/'.join(schemes)} URL: {value!r}")
    if parts.scheme != "unix":
        try:
            parts.port  # noqa: B018 - property access validates the port
        except ValueError:
            raise SettingsError(f"{name}: bad port in URL: {value!r}") from None
        if not parts.hostname:
            raise SettingsError(f"{name}: no host in URL: {value!r}")


@dataclass(frozen=True)
class Reader:
    """Typed reads of one environment mapping; a bad value raises SettingsError naming the
    variable (the mapping is handed in: nothing here reads os.environ)."""

    env: Mapping[str, str]

    def raw(self, name: str) -> str:
        return self.env.get(name, "").strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def items(self, name: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.raw(name).split(",") if item.strip())

    def number(
        self,
        name: str,
        default: T,
        kind: Callable[[str], T],
        low: float | None = None,
        high: float | None = None,
    ) -> T:
        value = self.raw(name)
        if not value:
            return default
        try:
            number = kind(value)
        except ValueError:
            label = "an integer" if kind is int else "a number"
            raise SettingsError(f"{name}: not {label}: {value!r}") from None
        if (low is not None and number < low) or (high is not None and number > high):  # type: ignore[operator]
            raise SettingsError(f"{name}: out of range [{low}, {high}]: {value!r}")
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name).lower()
        if not value:
            return default
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: not a boolean: {value!r}")

    def choice(self, name: str, default: str, options: tuple[str, ...], upper: bool = False) -> str:
        value = self.raw(name) or default
        value = value.upper() if upper else value.lower()
        if value not in options:
            raise SettingsError(f"{name}: must be one of {', '.join(options)}: {value!r}")
        return value

    def pattern(self, name: str, default: str, regex: re.Pattern[str]) -> str:
        value = self.raw(name) or default
        if not regex.match(value):
            raise SettingsError(f"{name}: invalid name: {value!r}")
        return value

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        value = self.raw(name)
        if not value:
            return None
        check_url(name, value, schemes)
        return value
