"""Audit settings: one dataclass, filled from TOML and/or the command line, validated by key.

A TOML file holds the same settings as the CLI flags::

    model = "whisper-tiny.en"
    corpus = "../shared/data/librispeech_subset"
    where = ["subset=test-other"]
    layers = "all"            # or [0, 3]
    out = "reports/ls-whisper"
    policy = "examples/policies/release_pooled.toml"   # gate the run (exit 1 when a fail rule breaks)
    redact = false            # true: the report holds no original audio, transcripts or raw speaker ids
    device = "auto"           # cpu | cuda | cuda:N | auto (cuda when torch sees a GPU)
    quantize = "int8"         # audit the dynamically int8-quantised model (CPU); omit for float32
    attacker_precision = "float32"  # or "bfloat16": attacker networks under bfloat16 autocast (a weakening)
    workers = 2               # processes for the costly attacks and the defense comparison, 1 thread each
    skip_bad_audio = false    # true: leave out unusable audio files (listed in the results) instead of stopping
    trust_remote_code = false # true: let models that ship code load (speechbrain folders/other orgs, HF auto_map)
    utility = "ctc"           # or "classification:digit"; "auto": ctc when every utterance has a transcript
    defense_fraction = 0.5    # share of speakers in the defense partition (disjoint from evaluated speakers)
    defense_attacks = ["speaker_id", "verification"]   # families that attack the defenses (omit: all run)

    [speaker_id]
    attackers = ["logreg", "mlp", "frame"]
    test_fraction = 0.3

    [verification]
    scorers = ["lda", "plda", "frame"]

    [attributes]
    categorical = ["gender"]
    numeric = ["speech_rate"]

    [[defense]]
    name = "noise"
    sweep = { sigma = [0, 0.5, 1, 2] }
    layers = ["leakiest", "last"]

A table named after an attack family (built-in or a plugin's) sets that family's settings; the
sections are not listed here by hand but come from the registry (:mod:`attacks`); so do the
``[[defense]]`` tables' names and keys (:mod:`defenses`). Unknown keys and wrongly typed values
raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import itertools
import re
import tomllib
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from attacks import default_attacks, load_families
from audit.defense import DefenseFamily
from audit.errors import ConfigError
from audit.estimators import check_precision
from audit.extractor import check_quantize
from audit.family import AttackFamily, check_layer_selection
from audit.utility import UtilitySettings, UtilityTask
from audit.weakening import DEFENSES, Weakening
from defenses import load_defenses

#: Attacker scenarios of a defense comparison, weakest to strongest (VoicePrivacy's names).
SCENARIOS = ("ignorant", "lazy_informed", "semi_informed")
#: AuditConfig fields that are not top-level config keys.
INTERNAL_KEYS = frozenset({"families", "defenses", "attacks_by_default"})
#: Keys of a ``[[defense]]`` table that are not the defense's own settings.
DEFENSE_KEYS = ("name", "sweep", "layers")


@dataclass
class DefenseSpec:
    """One ``[[defense]]`` table: a defense, its fixed parameters, an optional sweep, the layers it defends."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list] = field(default_factory=dict)
    layers: list[int | str] = field(default_factory=lambda: ["leakiest"])

    def grid(self) -> list[dict[str, Any]]:
        """Every parameter setting of the table: the fixed parameters plus one point of the sweep's product."""
        keys = list(self.sweep)
        return [{**self.params, **dict(zip(keys, values))}
                for values in itertools.product(*(self.sweep[k] for k in keys))] or [dict(self.params)]

    def settings(self, family: DefenseFamily, params: dict[str, Any], prefix: str) -> Any:
        """The defense's settings object for one parameter setting (TOML aliases mapped), validated."""
        aliases = getattr(family.settings, "KEY_ALIASES", {})
        known = {f.name for f in fields(family.settings)}
        kwargs = {}
        hints = typing.get_type_hints(family.settings)
        for key, value in params.items():
            attr = aliases.get(key, key)
            if attr not in known:
                names = sorted({next((k for k, v in aliases.items() if v == n), n) for n in known})
                raise ConfigError(f"{prefix}{key}: unknown parameter of defense {self.name!r} "
                                  f"(known: {', '.join(names) or 'none'})")
            kwargs[attr] = _check_type(f"{prefix}{key}", value, hints[attr])
        settings = family.settings(**kwargs)
        settings.validate(prefix)
        return settings


@dataclass
class AuditConfig:
    """Everything that determines an audit run (written into results.json for reproduction).

    ``families`` holds one settings object per registered attack family (its TOML section,
    e.g. ``[speaker_id]``), filled with the family's defaults where the config is silent;
    ``attacks`` names the families to run (None: the registry's defaults). ``defenses`` holds
    the ``[[defense]]`` tables; each is fitted on a defense partition of ``defense_fraction``
    of the speakers, disjoint from the evaluated speakers (``defense_fit_on = "evaluated"``
    fits on the evaluated speakers instead, only to show how much that flatters a defense).
    ``defense_attacks`` (None: every family of ``attacks``) names the families that attack the
    defended embeddings; leaving one out weakens the comparison (reported).
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
    workers: int = 1
    progress: bool = True
    attacks: list[str] | None = None
    utility: str = "auto"
    utility_probe: UtilitySettings = field(default_factory=UtilitySettings)
    defense_fraction: float = 0.5
    defense_fit_on: str = "disjoint"
    defense_scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    defense_attacks: list[str] | None = None
    defenses: list[DefenseSpec] = field(default_factory=list)
    policy: str | None = None
    redact: bool = False
    device: str = "auto"
    quantize: str | None = None
    attacker_precision: str = "float32"
    skip_bad_audio: bool = False
    trust_remote_code: bool = False
    families: dict[str, Any] = field(default_factory=dict)
    attacks_by_default: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        registry = load_families()
        if self.attacks is None:
            self.attacks = default_attacks(registry)
            self.attacks_by_default = True
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
        if isinstance(self.layers, list) and (not self.layers or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers)):
            raise ConfigError(f"layers={self.layers!r}: expected 'all' or non-negative layer indices")
        if isinstance(self.layers, list) and len(set(self.layers)) < len(self.layers):
            repeated = sorted({i for i in self.layers if self.layers.count(i) > 1})
            raise ConfigError(f"layers={self.layers!r}: layer {', '.join(map(str, repeated))} named more than once")
        for cond in self.where:
            if "=" not in cond:
                raise ConfigError(f"where: {cond!r} is not COLUMN=VALUE")
        if self.segment is not None and self.segment <= 0:
            raise ConfigError(f"segment={self.segment!r}: must be a positive number of seconds")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r}: must be >= 1")
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers!r}: must be >= 1 "
                              "(processes for the costly attacks and the defense comparison)")
        if self.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", str(self.device)):
            raise ConfigError(f"device={self.device!r}: expected auto, cpu, cuda or cuda:N")
        check_quantize(self.quantize)
        check_precision(self.attacker_precision, key="attacker_precision")
        for name in self.attacks:
            if name not in known:
                raise ConfigError(f"attacks: unknown attack family {name!r} (known: {', '.join(known)})")
        if not self.attacks:
            raise ConfigError(f"attacks: empty; name at least one family ({', '.join(known)})")
        for name in known:
            self.families[name].validate(f"{name}.")
        self._validate_defenses()
        return self

    def _validate_defenses(self) -> None:
        """Defense tables, sweeps, layers, scenarios and the utility task, each error naming its key."""
        if self.utility not in ("auto", "none"):
            UtilityTask.parse(self.utility)
        self.utility_probe.validate("utility_probe.")
        if not (isinstance(self.defense_fraction, float) and 0 < self.defense_fraction < 1):
            raise ConfigError(f"defense_fraction={self.defense_fraction!r}: must be in (0, 1)")
        if self.defense_fit_on not in ("disjoint", "evaluated"):
            raise ConfigError(f"defense_fit_on={self.defense_fit_on!r}: expected 'disjoint' or 'evaluated'")
        for name in self.defense_scenarios:
            if name not in SCENARIOS:
                raise ConfigError(f"defense_scenarios: unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
        for name in self.defense_attacks or []:
            if name not in self.attacks:
                raise ConfigError(f"defense_attacks: {name!r} is not among the audit's attacks "
                                  f"({', '.join(self.attacks)})")
        if self.defense_attacks is not None and not self.defense_attacks:
            raise ConfigError("defense_attacks: empty; name at least one of the audit's attacks or omit the key")
        if "semi_informed" not in self.defense_scenarios:
            raise ConfigError("defense_scenarios: must include 'semi_informed' (a defense is judged by the "
                              "retrained attacker)")
        registry = load_defenses()
        for i, spec in enumerate(self.defenses):
            prefix = f"defense[{i}]."
            if spec.name not in registry:
                raise ConfigError(f"{prefix}name: unknown defense {spec.name!r} (known: {', '.join(registry)})")
            family = registry[spec.name]
            for key, values in spec.sweep.items():
                if key not in family.sweepable:
                    raise ConfigError(f"{prefix}sweep.{key}: not a sweepable parameter of {spec.name!r} "
                                      f"(sweepable: {', '.join(family.sweepable) or 'none'})")
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{prefix}sweep.{key}={values!r}: expected a non-empty list of values")
                if key in spec.params:
                    raise ConfigError(f"{prefix}{key}: set both as a parameter and in sweep")
            spec.settings(family, spec.params, prefix)
            for params in spec.grid():
                swept = {k: v for k, v in params.items() if k in spec.sweep}
                try:
                    spec.settings(family, params, prefix)
                except ConfigError as exc:
                    raise ConfigError(f"{prefix}sweep {swept}: {exc}") from exc
            check_layer_selection(prefix, "layers", spec.layers)

    def weakenings(self) -> list[Weakening]:
        """Settings that make this audit weaker than a full one, each named by kind (warned about and reported).

        ``--quick``; attackers in bfloat16; a default family the user left out; the costly frame
        attackers restricted to some layers (``frame_layers``, inversion's ``layers``); in every
        family that runs, a budget below the family's defaults (fewer attackers, fewer epochs, a
        narrower network, fewer bootstrap resamples, a capped training set, a skipped judge); and
        the defense comparison's own (defenses fitted on the evaluated speakers, a scenario or
        family left out, a utility probe below its budget).
        """
        weak = []
        if self.quick:
            weak.append(Weakening("quick", "--quick: reduced attacker budgets (each family's quick settings, listed "
                                           "below)"))
        if self.attacker_precision == "bfloat16":
            weak.append(Weakening("attacker_precision", (
                "attacker_precision='bfloat16': the frame attackers and inversion decoders train under bfloat16 "
                "autocast, so their figures can differ from a float32 audit's (measure it with "
                "benchmarks/device_audit.py --precisions float32,bfloat16)")))
        registry = self.registry()
        weak += [Weakening("family_not_run", f"attack family {name!r} not run", (name,))
                 for name, f in registry.items() if f.default and name not in self.attacks]
        for name in self.attacks:
            settings = self.families[name]
            for key in ("frame_layers", "layers"):
                chosen = getattr(settings, key, None)
                if chosen is not None and (key == "frame_layers" or name == "inversion"):
                    rest = ("inversion runs on these layers only; the others have no reconstruction figure"
                            if name == "inversion" else "the frame-level attacker runs on these layers only; on the "
                            "others the figure comes from the cheaper attackers alone")
                    weak.append(Weakening("frame_layers", f"{name}.{key}={chosen!r}: {rest}", (name,)))
        if self.defenses:
            scope = (DEFENSES,)
            if self.defense_fit_on == "evaluated":
                weak.append(Weakening("defense_fit_on", (
                    "defense_fit_on='evaluated': defenses are fitted on the evaluated speakers themselves, which "
                    "flatters them (a deployed defense never sees its users' speech)"), scope))
            weak += [Weakening("defense_scenarios", f"defense_scenarios: scenario {s!r} not run", scope)
                     for s in SCENARIOS if s not in self.defense_scenarios]
            weak += [Weakening("defense_attacks", f"defense_attacks: attack family {n!r} does not attack the defenses",
                               scope)
                     for n in self.attacks if self.defense_attacks is not None and n not in self.defense_attacks]
            weak += [Weakening("utility_budget", line, scope) for line in self.utility_probe.weakening("utility_probe.")]
        weak += [Weakening("budget", line, (name,)) for name in self.attacks
                 for line in self.families[name].weakening(f"{name}.")]
        return weak

    def weakening_settings(self) -> list[str]:
        """The lines of :meth:`weakenings` (what a person reads)."""
        return [w.text for w in self.weakenings()]

    def effective(self) -> "AuditConfig":
        """A copy with --quick applied (each family's quick budget), warning loudly about every weakening."""
        cfg = replace(self, families={n: (s.quick() if self.quick else s) for n, s in self.families.items()},
                      where=list(self.where), attacks=list(self.attacks),
                      utility_probe=self.utility_probe.quick() if self.quick else self.utility_probe)
        for line in cfg.weakening_settings():
            warnings.warn(f"weakened audit: {line}", stacklevel=2)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready config: the plain settings plus one table per family."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("families", "defenses", "utility_probe", "attacks_by_default")}
        out["utility_probe"] = asdict(self.utility_probe)
        out["defense"] = [asdict(spec) for spec in self.defenses]
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
    known = {f.name for f in fields(cls)} - {"families", "defenses"}
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
    defenses = []
    for key, value in data.items():
        if key == "defense":
            defenses = parse_defense_tables(value, source)
        elif key in registry:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a table [{key}]")
            families[key] = _fill(registry[key].settings, value, f"{key}.", source)
        elif key in {f.name for f in fields(AuditConfig)} - INTERNAL_KEYS:
            plain[key] = value
        else:
            fields_known = sorted({f.name for f in fields(AuditConfig)} - INTERNAL_KEYS)
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(fields_known)}; "
                              f"family tables: {', '.join(f'[{n}]' for n in registry)})")
    cfg = _fill(AuditConfig, plain, "", source)
    cfg.families.update(families)
    cfg.defenses = defenses
    try:
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def parse_defense_tables(value: Any, source: str) -> list[DefenseSpec]:
    """``[[defense]]`` tables as :class:`DefenseSpec` values (shape only; :meth:`AuditConfig.validate` checks content)."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{source}: defense must be an array of tables [[defense]]")
    specs = []
    for i, table in enumerate(value):
        if "name" not in table or not isinstance(table["name"], str):
            raise ConfigError(f"{source}: defense[{i}].name: missing (the defense to run, e.g. name = \"noise\")")
        sweep = table.get("sweep", {})
        if not isinstance(sweep, dict):
            raise ConfigError(f"{source}: defense[{i}].sweep must be a table, e.g. sweep = {{ sigma = [0, 1] }}")
        layers = table.get("layers", ["leakiest"])
        specs.append(DefenseSpec(table["name"], {k: v for k, v in table.items() if k not in DEFENSE_KEYS},
                                 dict(sweep), layers if isinstance(layers, list) else [layers]))
    return specs


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
