"""Defenses of speech embeddings, one per module, registered by name.

Each module holds one :class:`audit.defense.Defense` subclass (``fit(train) -> self``,
``transform(view) -> EmbeddingSet`` in the same layout) and ends with one
:class:`audit.defense.DefenseFamily` entry, ``DEFENSE``, carrying its settings class (the keys
of its ``[[defense]]`` table), its sweepable parameters and its description. Adding a defense
means one new file plus its module name in :data:`BUILTIN`; a defense in another package registers
through the ``speech_audit.defenses`` entry point instead (``"my_package.my_module:DEFENSE"``).
"""

from __future__ import annotations

from importlib import import_module

from audit.defense import DefenseFamily
from audit.plugins import with_plugins

#: Modules of the built-in defenses, each ending in ``DEFENSE``.
BUILTIN = ("adversarial", "leace", "inlp", "noise", "pca", "meanvar", "kmeans")

ENTRY_POINT_GROUP = "speech_audit.defenses"


def load_defenses() -> dict[str, DefenseFamily]:
    """Built-in defenses plus those registered under the ``speech_audit.defenses`` entry point.

    A plugin that does not load, is not a :class:`DefenseFamily`, or reuses a built-in name is
    a :class:`ConfigError` naming it.
    """
    builtin = [import_module(f"defenses.{module}").DEFENSE for module in BUILTIN]
    return with_plugins({d.name: d for d in builtin}, ENTRY_POINT_GROUP, DefenseFamily, "defense")


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "load_defenses"]
