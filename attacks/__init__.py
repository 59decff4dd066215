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

from importlib.metadata import entry_points

from attacks import attributes, inversion, speaker_id, verification
from audit.errors import ConfigError
from audit.family import AttackFamily

BUILTIN: tuple[AttackFamily, ...] = (speaker_id.FAMILY, verification.FAMILY, attributes.FAMILY, inversion.FAMILY)

ENTRY_POINT_GROUP = "speech_audit.attacks"


def load_families() -> dict[str, AttackFamily]:
    """Built-in families plus those registered under the ``speech_audit.attacks`` entry point.

    A plugin that does not load, is not an :class:`AttackFamily`, or reuses a built-in name
    is a :class:`ConfigError` naming it.
    """
    families = {f.name: f for f in BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            family = ep.load()
        except Exception as exc:
            raise ConfigError(f"attack plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if not isinstance(family, AttackFamily):
            raise ConfigError(f"attack plugin {ep.name!r} ({ep.value}) is a {type(family).__name__}, "
                              "not an audit.family.AttackFamily")
        if family.name in families:
            raise ConfigError(f"attack plugin {ep.name!r} reuses the family name {family.name!r}")
        families[family.name] = family
    return families


def default_attacks(families: dict[str, AttackFamily]) -> list[str]:
    """Families an audit runs unless its config names others (``default=True`` entries)."""
    return [name for name, f in families.items() if f.default]


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "default_attacks", "load_families"]
