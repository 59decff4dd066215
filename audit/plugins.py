"""Registries extended through entry points: attack families and defenses load the same way."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from audit.errors import ConfigError


def with_plugins(builtin: dict[str, Any], group: str, entry_type: type, what: str) -> dict[str, Any]:
    """``builtin`` plus every entry of the entry point ``group`` (each an ``entry_type`` with a ``name``).

    A plugin that does not load, is not an ``entry_type``, or reuses a name is a
    :class:`ConfigError` naming it (``what`` says which kind, e.g. "attack", "defense").
    """
    found = dict(builtin)
    for ep in entry_points(group=group):
        try:
            entry = ep.load()
        except Exception as exc:
            raise ConfigError(f"{what} plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if not isinstance(entry, entry_type):
            raise ConfigError(f"{what} plugin {ep.name!r} ({ep.value}) is a {type(entry).__name__}, "
                              f"not an {entry_type.__module__}.{entry_type.__name__}")
        if entry.name in found:
            raise ConfigError(f"{what} plugin {ep.name!r} reuses the {what} name {entry.name!r}")
        found[entry.name] = entry
    return found
