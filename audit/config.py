"""Audit settings: one dataclass, filled from TOML and/or the command line, validated by key.

A TOML file holds the same settings as the CLI flags::

    model = "whisper-tiny.en"
    corpus = "../shared/data/librispeech_subset"
    where = ["subset=test-other"]
    layers = "all"            # or [0, 3]
    out = "reports/ls-whisper"

    [speaker_id]
    attackers = ["logreg", "mlp", "frame"]
    test_fraction = 0.3

    [verification]
    scorers = ["lda", "plda", "frame"]

    [attributes]
    categorical = ["gender"]
    numeric = ["speech_rate"]

A table named after an attack family (built-in or a plugin's) sets that family's settings; the
sections are not listed here by hand but come from the registry (:mod:`attacks`). Unknown keys
and wrongly typed values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from attacks import default_attacks, load_families
from audit.errors import ConfigError
from audit.family import AttackFamily


@dataclass
class AuditConfig:
    """Everything that determines an audit run (written into results.json for reproduction).

    ``families`` holds one settings object per registered attack family (its TOML section,
    e.g. ``[speaker_id]``), filled with the family's defaults where the config is silent;
    ``attacks`` names the families to run (None: the registry's defaults).
    """

    model: str = "whisper-tiny.en"
    corpus: str = "synthetic"
    where: list[str] = field(default_factory=list)
    layers: str | list[int] = "all"
    out: str | None = None
    segment: float | None = None
    seed: int = 0
    quick: bool = False
    cache_dir: str | None = None
    batch_size: int = 8
    progress: bool = True
    attacks: list[str] | None = None
    families: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        registry = load_families()
        if self.attacks is None:
            self.attacks = default_attacks(registry)
        for name, family in registry.items():
            self.families.setdefault(name, family.settings())

    @staticmethod
    def registry() -> dict[str, AttackFamily]:
        """The attack families this config can name."""
        return load_families()

    def settings(self, name: str) -> Any:
        """The settings of attack family ``name``."""
        return self.families[name]

    def validate(self) -> "AuditConfig":
        """Check values; return self. Raises :class:`ConfigError` naming the key."""
        known = tuple(self.registry())
        if isinstance(self.layers, str) and self.layers != "all":
            self.layers = parse_layers(self.layers)
        if isinstance(self.layers, list) and (not self.layers or any(i < 0 for i in self.layers)):
            raise ConfigError(f"layers={self.layers!r}: expected 'all' or non-negative layer indices")
        for cond in self.where:
            if "=" not in cond:
                raise ConfigError(f"where: {cond!r} is not COLUMN=VALUE")
        if self.segment is not None and self.segment <= 0:
            raise ConfigError(f"segment={self.segment!r}: must be a positive number of seconds")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r}: must be >= 1")
        for name in self.attacks:
            if name not in known:
                raise ConfigError(f"attacks: unknown attack family {name!r} (known: {', '.join(known)})")
        if not self.attacks:
            raise ConfigError(f"attacks: empty; name at least one family ({', '.join(known)})")
        for name in known:
            self.families[name].validate(f"{name}.")
        return self

    def weakening_settings(self) -> list[str]:
        """Settings that make this audit weaker than a full one (warned about and reported).

        ``--quick``; a default family the user left out; and, in every family that runs, a
        budget below the family's defaults (fewer attackers, fewer epochs, a narrower
        network, fewer bootstrap resamples, a capped training set, a skipped judge).
        """
        weak = []
        if self.quick:
            weak.append("--quick: reduced attacker budgets (each family's quick settings, listed below)")
        registry = self.registry()
        weak += [f"attack family {name!r} not run" for name, f in registry.items()
                 if f.default and name not in self.attacks]
        return weak + [w for name in self.attacks for w in self.families[name].weakening(f"{name}.")]

    def effective(self) -> "AuditConfig":
        """A copy with --quick applied (each family's quick budget), warning loudly about every weakening."""
        cfg = replace(self, families={n: (s.quick() if self.quick else s) for n, s in self.families.items()},
                      where=list(self.where), attacks=list(self.attacks))
        for line in cfg.weakening_settings():
            warnings.warn(f"weakened audit: {line}", stacklevel=2)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready config: the plain settings plus one table per family."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "families"}
        out.update({name: asdict(s) for name, s in self.families.items()})
        return out

    def run_name(self) -> str:
        """Folder name under reports/ when ``out`` is not given."""
        if self.model == "whisper-tiny.en" and self.corpus == "synthetic" and not self.where:
            return "default"
        return f"{_slug(self.model)}_{_slug(Path(self.corpus.split(':')[-1]).name or self.corpus)}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[-40:]


def parse_layers(text: str) -> str | list[int]:
    """``all`` or a comma list of layer indices (``0,3,4``)."""
    if text.strip() == "all":
        return "all"
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise ConfigError(f"layers={text!r}: expected 'all' or comma-separated integers like 0,3,4") from exc


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Validate ``value`` against a (simple) type annotation; return it converted if harmless."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: bad value {value!r} (expected {annotation})")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected nothing, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def _fill(cls, data: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)} - {"families"}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {prefix + key!r} (known: {', '.join(sorted(known))})")
        hint = hints[key]
        if isinstance(hint, type) and is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {prefix}{key} must be a table [{key}]")
            kwargs[key] = _fill(hint, value, f"{prefix}{key}.", source)
        else:
            try:
                kwargs[key] = _check_type(f"{prefix}{key}", value, hint)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from exc
    return cls(**kwargs)


def config_from_dict(data: dict, *, source: str = "config") -> AuditConfig:
    """Build and validate an :class:`AuditConfig` from a plain dict (e.g. parsed TOML).

    A top-level table named after a registered attack family (``[speaker_id]``) fills that
    family's settings; any other key must be an :class:`AuditConfig` field.
    """
    registry = load_families()
    families = {}
    plain = {}
    for key, value in data.items():
        if key in registry:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a table [{key}]")
            families[key] = _fill(registry[key].settings, value, f"{key}.", source)
        elif key in {f.name for f in fields(AuditConfig)} - {"families"}:
            plain[key] = value
        else:
            fields_known = sorted({f.name for f in fields(AuditConfig)} - {"families"})
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(fields_known)}; "
                              f"family tables: {', '.join(f'[{n}]' for n in registry)})")
    cfg = _fill(AuditConfig, plain, "", source)
    cfg.families.update(families)
    try:
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config {path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: invalid TOML: {exc}") from exc
    return config_from_dict(data, source=f"config {path}")
