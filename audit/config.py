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

Unknown keys and wrongly typed values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from attacks import DEFAULT_ATTACKS, LAYER_ATTACKS
from attacks.attributes import AttributeSettings
from attacks.inversion import InversionSettings
from attacks.speaker_id import SpeakerIDSettings
from attacks.verification import VerificationSettings
from audit.errors import ConfigError

ATTACK_SECTIONS = tuple(LAYER_ATTACKS)


@dataclass
class AuditConfig:
    """Everything that determines an audit run (written into results.json for reproduction)."""

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
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    speaker_id: SpeakerIDSettings = field(default_factory=SpeakerIDSettings)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    attributes: AttributeSettings = field(default_factory=AttributeSettings)
    inversion: InversionSettings = field(default_factory=InversionSettings)

    def validate(self) -> "AuditConfig":
        """Check values; return self. Raises :class:`ConfigError` naming the key."""
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
            if name not in ATTACK_SECTIONS:
                raise ConfigError(f"attacks: unknown attack family {name!r} (known: {', '.join(ATTACK_SECTIONS)})")
        if not self.attacks:
            raise ConfigError(f"attacks: empty; name at least one family ({', '.join(ATTACK_SECTIONS)})")
        for section in ATTACK_SECTIONS:
            getattr(self, section).validate()
        return self

    def weakening_settings(self) -> list[str]:
        """Settings that make this audit weaker than a full one (warned about and reported)."""
        weak = []
        if self.quick:
            weak.append("--quick: reduced attacker budgets (speaker ID by logistic regression only, verification by "
                        "LDA only, 200 bootstrap resamples)")
        weak += [f"attack family {name!r} not run" for name in ATTACK_SECTIONS if name not in self.attacks]
        return weak + [w for name in self.attacks for w in getattr(self, name).weakening()]

    def effective(self) -> "AuditConfig":
        """The config with --quick applied (smaller attacker budgets), warning loudly about it."""
        for line in self.weakening_settings():
            warnings.warn(f"weakened audit: {line}", stacklevel=2)
        if self.quick:
            self.speaker_id.attackers = ["logreg"]
            self.verification.scorers = ["lda"]
            for section in ATTACK_SECTIONS:
                getattr(self, section).n_boot = 200
        return self

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
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {prefix}{key!r} (known: {', '.join(sorted(known))})")
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
    """Build and validate an :class:`AuditConfig` from a plain dict (e.g. parsed TOML)."""
    cfg = _fill(AuditConfig, data, "", source)
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
