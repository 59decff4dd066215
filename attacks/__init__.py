"""Attacks on speech embeddings, one family per module, registered by name.

Each family module holds its attackers (estimator contract: ``fit(train: EmbeddingSet) -> self``,
``evaluate(test: EmbeddingSet) -> AttackResult``) and ends with one
:class:`audit.family.AttackFamily` entry, ``FAMILY``, that carries its settings class (its TOML
section), the split it needs, its feasibility check, its preflight, its ``--quick`` budget,
its attack step and its report table. Adding a family means one new file plus one line in
:data:`BUILTIN`; a family in another package registers through the ``speech_audit.attacks``
entry point instead (``my_family = "my_package.my_module:FAMILY"``), with no edit here.
"""

from __future__ import annotations

from attacks import attributes, inversion, speaker_id, verification
from audit.family import AttackFamily
from audit.plugins import with_plugins

BUILTIN: tuple[AttackFamily, ...] = (speaker_id.FAMILY, verification.FAMILY, attributes.FAMILY, inversion.FAMILY)

ENTRY_POINT_GROUP = "speech_audit.attacks"


def load_families() -> dict[str, AttackFamily]:
    """Built-in families plus those registered under the ``speech_audit.attacks`` entry point.

    A plugin that does not load, is not an :class:`AttackFamily`, or reuses a built-in name
    is a :class:`ConfigError` naming it.
    """
    return with_plugins({f.name: f for f in BUILTIN}, ENTRY_POINT_GROUP, AttackFamily, "attack")


def default_attacks(families: dict[str, AttackFamily]) -> list[str]:
    """Families an audit runs unless its config names others (``default=True`` entries)."""
    return [name for name, f in families.items() if f.default]


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "default_attacks", "load_families"]
