"""Defenses of speech embeddings, one per module, registered by name.

Each module holds one :class:`audit.defense.Defense` subclass (``fit(train) -> self``,
``transform(view) -> EmbeddingSet`` in the same layout) and ends with one
:class:`audit.defense.DefenseFamily` entry, ``DEFENSE``, carrying its settings class (the keys
of its ``[[defense]]`` table), its sweepable parameters and its description. Adding a defense
means one new file plus its module name in :data:`BUILTIN`; a defense in another package registers
through the ``speech_audit.defenses`` entry point instead (``"my_package.my_module:DEFENSE"``).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from importlib import import_module

from audit.defense import DefenseFamily
from audit.errors import ConfigError

#: Modules of the built-in defenses, each ending in ``DEFENSE``.
BUILTIN = ("adversarial", "leace", "inlp", "noise", "pca", "meanvar", "kmeans")

ENTRY_POINT_GROUP = "speech_audit.defenses"


def load_defenses() -> dict[str, DefenseFamily]:
    """Built-in defenses plus those registered under the ``speech_audit.defenses`` entry point.

    A plugin that does not load, is not a :class:`DefenseFamily`, or reuses a built-in name is
    a :class:`ConfigError` naming it.
    """
    found = {}
    for module in BUILTIN:
        family = import_module(f"defenses.{module}").DEFENSE
        found[family.name] = family
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            family = ep.load()
        except Exception as exc:
            raise ConfigError(f"defense plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if not isinstance(family, DefenseFamily):
            raise ConfigError(f"defense plugin {ep.name!r} ({ep.value}) is a {type(family).__name__}, "
                              "not an audit.defense.DefenseFamily")
        if family.name in found:
            raise ConfigError(f"defense plugin {ep.name!r} reuses the defense name {family.name!r}")
        found[family.name] = family
    return found


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "load_defenses"]
