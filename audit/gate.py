"""Release gate: a TOML policy of rules, judged against a run's results.

A policy is a list of ``[[rule]]`` tables, plus what it accepts of a weakened audit::

    allow_weakened = ["frame_layers"]  # weakening kinds a PASS may stand on (audit.weakening.KINDS)
    require_full_audit = false         # true: a weakening not allowed is an error (exit 2), not a WARN

    [[rule]]
    id = "reid-near-chance"           # optional; rules are otherwise named by position
    metric = "speaker_id.top1"        # <family>.<path> in a layer's attacks, or defenses.<path>
    layer = "every"                   # every | at_least_one | leakiest | last | an index
    max_ratio_to_chance = 2.0         # or max = 0.1 / min = 0.3
    bound = "worst"                   # worst (default) | ci_upper | ci_lower | value
    severity = "fail"                 # fail (exit 1) | warn (reported, exit 0)
    justification = "why this threshold, with its source"
    # defense = "leace"               # defenses.* rules only: which defense's settings

``layer = "every"`` fails when any layer (or defense setting) breaks the bound, so every one must
comply; ``"at_least_one"`` fails only when every one breaks it, and judges the one that complies
by its selection-adjusted (Bonferroni) bound, since it was picked from several; ``"leakiest"`` is
the layer where the rule's own measure leaks most. ``bound = "worst"`` judges a ``max`` rule by
the CI's upper bound and a ``min`` rule by its lower bound; a figure without a CI is then a
missing number unless the rule says ``bound = "value"``. A lenient bound is allowed but warned
about and marked in the verdict.

Every measure a rule names is declared once by its family (:class:`audit.measures.Measure`):
a threshold outside the measure's range, or a limit the measure can never break, is refused
when the policy loads (or, for a limit relative to a chance level found in the results, when it
is judged). A PASS never stands on weaker evidence than it claims: a figure whose attacker was
still learning or stopped at a cap, or a weakened audit the policy does not allow by name, reads
WARN (or, with ``require_full_audit``, ERROR).

Measuring, judging and rendering stay apart: :func:`load_policy` validates the policy (unknown
key, metric or layer: a :class:`PolicyError` naming the rule), :func:`check_policy` checks it
against a planned run before extraction, :func:`evaluate` judges results into a
:class:`Verdict`, and the report renders it. A rule whose metric the run did not compute is an
``error`` (exit 2): a gate never passes on missing numbers.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.defense_tables import DEFENSE_METRICS, defense_view, setting_label
from audit.errors import SpeechAuditError
from audit.family import AttackFamily
from audit.measures import Figure, Measure, read_figure
from audit.results import Table, fmt_num
from audit.weakening import KINDS, Weakening, weakenings

RULE_KEYS = ("id", "metric", "layer", "max", "min", "max_ratio_to_chance", "bound", "severity", "justification",
             "defense")
POLICY_KEYS = ("rule", "name", "description", "allow_weakened", "require_full_audit")
BOUNDS = ("worst", "ci_upper", "ci_lower", "value")
SEVERITIES = ("fail", "warn")
LAYER_WORDS = ("every", "at_least_one", "leakiest", "last")
#: Layer words of earlier versions, refused with the name that replaced them (both read ambiguously).
RENAMED_LAYER_WORDS = {"any": "every", "all": "at_least_one"}
#: Verdict order in reports: failed rules first (deepchecks' Conditions Summary order, errors next).
STATUS_ORDER = ("fail", "error", "warn", "pass")
DEFENSES = "defenses"


class PolicyError(SpeechAuditError):
    """A policy file is unreadable or a rule is invalid (the message names the rule and key)."""


@dataclass(frozen=True)
class Rule:
    """One validated ``[[rule]]``: ``op`` is ``max`` or ``min``; ``ratio`` means the limit is ``threshold x chance``."""

    name: str
    metric: str
    spec: Measure
    layer: str | int
    op: str
    threshold: float
    ratio: bool
    bound: str
    severity: str
    justification: str
    defense: str | None = None
    #: For a ``defenses.*`` rule: the attack measure (family, path, its declared Measure) whose leakiest layer
    #: ``layer = "leakiest"`` means: verification EER for the EER, speaker-ID top-1 otherwise.
    leakiest_by: tuple[str, str, Measure] | None = None

    @property
    def family(self) -> str:
        """The family (or ``defenses``) the metric belongs to."""
        return self.metric.split(".", 1)[0]

    @property
    def path(self) -> str:
        """The metric's path below the family's result (or below a defense entry)."""
        return self.metric.split(".", 1)[1]

    @property
    def effective_bound(self) -> str:
        """``ci_upper`` for a max rule and ``ci_lower`` for a min rule under ``worst``; the stated bound otherwise."""
        if self.bound != "worst":
            return self.bound
        if self.spec.ci is None:
            return "value"
        return "ci_upper" if self.op == "max" else "ci_lower"

    @property
    def lenient(self) -> bool:
        """True when the stated bound favours passing over the worst-case bound."""
        return self.spec.ci is not None and self.effective_bound != ("ci_upper" if self.op == "max" else "ci_lower")

    def describe(self) -> str:
        """The rule in words, e.g. ``speaker_id.top1 (ci_upper) <= 2x chance at any layer``."""
        limit = f"{self.threshold:g}x chance" if self.ratio else f"{self.threshold:g}"
        where = {"every": "every layer (any breach fails)",
                 "at_least_one": "one layer at least (fails only if all breach; judged on the selection-adjusted bound)",
                 "leakiest": "the layer where this measure leaks most", "last": "the last layer"
                 }.get(self.layer, f"layer {self.layer}")
        scope = f" of defense {self.defense}" if self.defense else ""
        return (f"{self.metric} ({self.effective_bound}) {'<=' if self.op == 'max' else '>='} {limit} "
                f"at {where}{scope}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description of the rule."""
        return {"name": self.name, "metric": self.metric, "layer": self.layer, "op": self.op,
                "threshold": self.threshold, "ratio_to_chance": self.ratio, "bound": self.effective_bound,
                "lenient_bound": self.lenient, "severity": self.severity, "justification": self.justification,
                "defense": self.defense, "description": self.describe()}


@dataclass(frozen=True)
class Policy:
    """A validated policy: its file, content hash and rules."""

    path: str
    sha256: str
    rules: tuple[Rule, ...]
    name: str = ""
    #: Weakening kinds (:data:`audit.weakening.KINDS`) a PASS may stand on.
    allow_weakened: tuple[str, ...] = ()
    #: True: a weakening the policy does not allow makes every rule it affects an error (exit 2).
    require_full_audit: bool = False


def _rule_name(index: int, table: dict) -> str:
    given = table.get("id")
    return f"rule {index + 1}" + (f" ({given!r})" if isinstance(given, str) and given else "")


def measure_for(metric: str, registry: dict[str, AttackFamily]) -> Measure | None:
    """The declared :class:`Measure` of a full metric name (``speaker_id.top1``, ``defenses.strongest.eer``)."""
    if not isinstance(metric, str) or "." not in metric:
        return None
    family, path = metric.split(".", 1)
    specs = DEFENSE_METRICS if family == DEFENSES else registry[family].metrics if family in registry else ()
    return next((s for s in specs if s.matches(path)), None)


#: Defense metrics of earlier versions, refused with what replaced them.
RENAMED_METRICS = {"defenses.utility.value": "defenses.utility.cer, defenses.utility.wer or defenses.utility.accuracy "
                                            "(a utility value has a direction only once its task is named)"}


def _metric_spec(name: str, metric: Any, registry: dict[str, AttackFamily]) -> Measure:
    if not isinstance(metric, str) or "." not in metric:
        raise PolicyError(f"{name}: metric={metric!r}: must be '<family>.<path>', e.g. 'speaker_id.top1'")
    if metric in RENAMED_METRICS:
        raise PolicyError(f"{name}: metric={metric!r}: renamed: use {RENAMED_METRICS[metric]}")
    family, path = metric.split(".", 1)
    if family == DEFENSES:
        specs = DEFENSE_METRICS
    elif family in registry:
        specs = registry[family].metrics
    else:
        raise PolicyError(f"{name}: metric={metric!r}: unknown family {family!r} "
                          f"(known: {', '.join(sorted(registry))}, {DEFENSES})")
    spec = measure_for(metric, registry)
    if spec is None:
        raise PolicyError(f"{name}: metric={metric!r}: unknown metric of {family} "
                          f"(known: {', '.join(s.pattern for s in specs) or 'none'})")
    return spec


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(f"{name}: {key}={value!r}: must be a finite number")
    return float(value)


def _parse_rule(index: int, table: Any, registry: dict[str, AttackFamily]) -> Rule:
    name = _rule_name(index, table if isinstance(table, dict) else {})
    if not isinstance(table, dict):
        raise PolicyError(f"{name}: must be a table ([[rule]])")
    unknown = sorted(set(table) - set(RULE_KEYS))
    if unknown:
        raise PolicyError(f"{name}: unknown key {unknown[0]!r} (known: {', '.join(RULE_KEYS)})")
    if "metric" not in table:
        raise PolicyError(f"{name}: missing key 'metric'")
    spec = _metric_spec(name, table["metric"], registry)
    limits = [k for k in ("max", "min", "max_ratio_to_chance") if k in table]
    if len(limits) != 1:
        raise PolicyError(f"{name}: give exactly one of max, min, max_ratio_to_chance (got "
                          f"{', '.join(limits) or 'none'})")
    key = limits[0]
    threshold = _number(name, key, table[key])
    metric = table["metric"]
    if key == "max_ratio_to_chance":
        if spec.chance is None or spec.higher_is_leakier is not True:
            raise PolicyError(f"{name}: max_ratio_to_chance: metric {metric!r} has no chance level that a "
                              "higher value exceeds; use max or min")
        if threshold < 1:
            raise PolicyError(f"{name}: max_ratio_to_chance={threshold:g}: must be >= 1 (chance itself is 1x)")
        if isinstance(spec.chance, (int, float)) and spec.high is not None and threshold * spec.chance >= spec.high:
            raise PolicyError(f"{name}: max_ratio_to_chance={threshold:g}: vacuous limit: {threshold:g} x chance "
                              f"{spec.chance:g} = {threshold * spec.chance:g} reaches the maximum {spec.high:g} of "
                              f"{metric!r}, so the rule could never fail")
    else:
        if not spec.in_range(threshold):
            raise PolicyError(f"{name}: {key}={threshold:g}: outside the range of {metric!r} ({spec.range_text()})")
        never = (key == "max" and spec.high is not None and threshold >= spec.high) or (
            key == "min" and spec.low is not None and threshold <= spec.low)
        if never:
            raise PolicyError(f"{name}: {key}={threshold:g}: vacuous limit: {metric!r} can never "
                              f"{'exceed' if key == 'max' else 'fall below'} it ({spec.range_text()}), so the rule "
                              "could never fail")
    layer = table.get("layer", "every")
    if layer in RENAMED_LAYER_WORDS:
        meaning = "every layer must comply" if layer == "any" else "one layer complying is enough"
        raise PolicyError(f"{name}: layer={layer!r}: renamed, as it read two ways: use "
                          f"{RENAMED_LAYER_WORDS[layer]!r} ({meaning})")
    if isinstance(layer, bool) or not (isinstance(layer, int) and layer >= 0 or layer in LAYER_WORDS):
        raise PolicyError(f"{name}: layer={layer!r}: must be one of {', '.join(LAYER_WORDS)} or a layer index >= 0")
    bound = table.get("bound", "worst")
    if bound not in BOUNDS:
        raise PolicyError(f"{name}: bound={bound!r}: must be one of {', '.join(BOUNDS)}")
    if bound != "value" and spec.ci is None:
        raise PolicyError(f"{name}: bound={bound!r}: metric {table['metric']!r} has no CI, so no CI bound can be "
                          "judged; say bound = 'value' to judge its point estimate")
    severity = table.get("severity", "fail")
    if severity not in SEVERITIES:
        raise PolicyError(f"{name}: severity={severity!r}: must be one of {', '.join(SEVERITIES)}")
    justification = table.get("justification")
    if not isinstance(justification, str) or not justification.strip():
        raise PolicyError(f"{name}: missing key 'justification' (say why this threshold, and cite its source)")
    defense = table.get("defense")
    if defense is not None and (not isinstance(defense, str) or not table["metric"].startswith(DEFENSES + ".")):
        raise PolicyError(f"{name}: defense={defense!r}: only defenses.* rules name a defense, as a string")
    rule_id = table.get("id")
    if rule_id is not None and not isinstance(rule_id, str):
        raise PolicyError(f"{name}: id={rule_id!r}: must be a string")
    leakiest_by = None
    if table["metric"].startswith(DEFENSES + "."):
        family, path = _DEFENSE_LEAKIEST_BY.get(table["metric"].split(".", 1)[1], ("speaker_id", "top1"))
        declared = registry[family].metric(path) if family in registry else None
        leakiest_by = (family, path, declared) if declared is not None else None
    return Rule(name=name, metric=table["metric"], spec=spec, layer=layer, op="min" if key == "min" else "max",
                threshold=threshold, ratio=key == "max_ratio_to_chance", bound=bound, severity=severity,
                justification=justification.strip(), defense=defense, leakiest_by=leakiest_by)


def load_policy(path: str | Path, registry: dict[str, AttackFamily],
                defense_names: set[str] | None = None) -> Policy:
    """Read and validate a TOML policy; every problem is a :class:`PolicyError` naming the file and rule."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as err:
        raise PolicyError(f"{path}: cannot read policy ({err.strerror or err})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise PolicyError(f"{path}: not a valid TOML policy ({err})") from None
    unknown = sorted(set(data) - set(POLICY_KEYS))
    if unknown:
        raise PolicyError(f"{path}: unknown top-level key {unknown[0]!r} (a policy holds [[rule]] tables)")
    tables = data.get("rule")
    if not isinstance(tables, list) or not tables:
        raise PolicyError(f"{path}: no [[rule]] tables: a gate with no rules would pass anything")
    try:
        rules = tuple(_parse_rule(i, t, registry) for i, t in enumerate(tables))
    except PolicyError as err:
        raise PolicyError(f"{path}: {err}") from None
    ids = [t.get("id") for t in tables if isinstance(t, dict) and t.get("id")]
    if len(set(ids)) != len(ids):
        raise PolicyError(f"{path}: rule ids must be unique (repeated: {sorted({i for i in ids if ids.count(i) > 1})})")
    allowed = data.get("allow_weakened", [])
    if not isinstance(allowed, list) or not all(isinstance(k, str) for k in allowed):
        raise PolicyError(f"{path}: allow_weakened={allowed!r}: must be a list of weakening kinds")
    unknown_kinds = [k for k in allowed if k not in KINDS or k == "unknown"]
    if unknown_kinds:
        raise PolicyError(f"{path}: allow_weakened: unknown weakening kind {unknown_kinds[0]!r} (known: "
                          f"{', '.join(k for k in KINDS if k != 'unknown')})")
    full = data.get("require_full_audit", False)
    if not isinstance(full, bool):
        raise PolicyError(f"{path}: require_full_audit={full!r}: must be true or false")
    for rule in rules:
        if rule.defense is not None and defense_names is not None and rule.defense not in defense_names | {"none"}:
            raise PolicyError(f"{path}: {rule.name}: defense={rule.defense!r}: unknown defense "
                              f"(known: {', '.join(sorted(defense_names))})")
        if rule.lenient:
            warnings.warn(f"policy {path.name}: {rule.name}: bound={rule.bound!r} is lenient (the worst case for "
                          f"this {rule.op} rule is {'ci_upper' if rule.op == 'max' else 'ci_lower'}); the verdict "
                          "marks it", stacklevel=2)
    return Policy(path=str(path), sha256=hashlib.sha256(raw).hexdigest(), rules=rules,
                  name=str(data.get("name", path.stem)), allow_weakened=tuple(allowed), require_full_audit=full)


def check_policy(policy: Policy, families: list[str], infeasible: dict[str, str], num_layers: int,
                 has_defenses: bool) -> None:
    """Before extraction: every rule's family runs, its layer exists, defenses are compared where a rule needs them."""
    for rule in policy.rules:
        where = f"{Path(policy.path).name}: {rule.name}: metric {rule.metric!r}"
        if rule.family == DEFENSES:
            if not has_defenses:
                raise PolicyError(f"{where}: the run compares no defenses (add [[defense]] tables to the config)")
        elif rule.family in infeasible:
            raise PolicyError(f"{where}: family {rule.family!r} cannot run on this corpus: {infeasible[rule.family]}")
        elif rule.family not in families:
            raise PolicyError(f"{where}: family {rule.family!r} is not in this run's attacks "
                              f"({', '.join(families)}); add it, or the gate would have no number to judge")
        if isinstance(rule.layer, int) and rule.layer >= num_layers:
            raise PolicyError(f"{where}: layer={rule.layer}: the model has layers 0..{num_layers - 1}")


@dataclass
class Measurement:
    """One judged number: where it was read (layer, or defense setting), the value, the bound judged, the limit."""

    where: str
    value: float | None
    judged: float | None
    ci95: list | None
    chance: float | None
    limit: float | None
    ok: bool | None
    missing: str = ""
    #: :func:`audit.curves.still_learning` of the attacker behind the value (None: its curve had flattened).
    still_learning: dict | None = None
    #: :func:`audit.curves.epoch_capped` of the attacker behind the value (None: it stopped early, or is no network).
    epoch_capped: dict | None = None
    #: Why the value may understate what it measures, in words (still learning, epoch cap, solver cap).
    caveats: list[str] = field(default_factory=list)
    #: The selection-adjusted CI judged instead of the attacker's own (``at_least_one`` rules).
    selection_ci95: list | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"where": self.where, "value": self.value, "judged": self.judged, "ci95": self.ci95,
                "selection_ci95": self.selection_ci95, "chance": self.chance, "limit": self.limit, "ok": self.ok,
                "missing": self.missing or None, "still_learning": self.still_learning,
                "epoch_capped": self.epoch_capped, "caveats": list(self.caveats)}


@dataclass
class RuleOutcome:
    """A rule's status (``pass``, ``warn``, ``fail`` or ``error``), a one-line message and what was measured.

    ``weakened`` lists the weakenings of the run that affect the rule's figures and that the
    policy does not allow (each ``[kind] text``).
    """

    rule: Rule
    status: str
    message: str
    measurements: list[Measurement] = field(default_factory=list)
    weakened: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {**self.rule.to_dict(), "status": self.status, "message": self.message,
                "measurements": [m.to_dict() for m in self.measurements], "weakened": list(self.weakened)}


@dataclass
class Verdict:
    """Every rule's outcome, ordered failed first; ``exit_code`` 0 pass/warn, 1 a fail rule broken, 2 an error.

    ``weakenings`` are every weakening the run records, each with whether the policy allows it.
    """

    policy: Policy
    outcomes: list[RuleOutcome]
    weakenings: list[Weakening] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Number of rules per status."""
        return {s: sum(o.status == s for o in self.outcomes) for s in STATUS_ORDER}

    @property
    def status(self) -> str:
        """The policy's overall status: error, fail, warn or pass (worst first)."""
        c = self.counts
        return next(s for s in ("error", "fail", "warn", "pass") if c[s] or s == "pass")

    @property
    def exit_code(self) -> int:
        """0 when no fail rule is broken and nothing is missing, 1 when a fail rule is broken, 2 on an error."""
        return {"error": 2, "fail": 1}.get(self.status, 0)

    def to_dict(self) -> dict[str, Any]:
        """The verdict as stored in ``results["verdict"]``."""
        return {"policy": self.policy.path, "policy_name": self.policy.name, "policy_sha256": self.policy.sha256,
                "status": self.status, "exit_code": self.exit_code, "counts": self.counts,
                "allow_weakened": list(self.policy.allow_weakened),
                "require_full_audit": self.policy.require_full_audit,
                "weakenings": [{**w.to_dict(), "allowed": w.kind in self.policy.allow_weakened}
                               for w in self.weakenings],
                "rules": [o.to_dict() for o in self.outcomes]}


def _targets(rule: Rule, results: dict) -> list[tuple[str, Any]]:
    """(label, node) pairs the rule reads: per-layer family results, or matching defense entries."""
    if rule.family == DEFENSES:
        entries = [e for e in results.get("defenses") or []
                   if (e["name"] == rule.defense if rule.defense else e["name"] != "none")]
        layer, why = _layer_index(rule, results)
        if layer is not None:
            entries = [e for e in entries if e.get("layer") == layer]
        return [(f"layer {e['layer']}{why} {setting_label(e)}",
                 defense_view(e) if e.get("status") == "ok" else {"skipped": f"defense failed: {e.get('reason')}"})
                for e in entries]
    layers = results.get("layers") or []
    index, why = _layer_index(rule, results)
    if index is not None:
        layers = [la for la in layers if la.get("index") == index]
    return [(f"layer {la['index']}{why}", (la.get("attacks") or {}).get(rule.family)) for la in layers]


#: For ``layer = "leakiest"`` on a defense measure: the attack measure whose leakiest layer it means.
_DEFENSE_LEAKIEST_BY = {"strongest.eer": ("verification", "eer")}


def _layer_index(rule: Rule, results: dict) -> tuple[int | None, str]:
    """The one layer a rule names (None: every layer), and a note saying how ``leakiest`` was resolved."""
    if isinstance(rule.layer, int):
        return rule.layer, ""
    if rule.layer == "last":
        return int((results.get("model") or {}).get("num_layers", 0)) - 1, ""
    if rule.layer != "leakiest":
        return None, ""
    family, path, spec = rule.family, rule.path, rule.spec
    if family == DEFENSES:
        if rule.leakiest_by is None:
            return -1, " (leakiest: the identity family that defines it is not registered)"
        family, path, spec = rule.leakiest_by
    figures = []
    for la in results.get("layers") or []:
        node = (la.get("attacks") or {}).get(family)
        fig = read_figure(node, path, spec) if isinstance(node, dict) else None
        if fig is not None and fig.value is not None:
            figures.append((fig.value if spec.worse_is_higher else -fig.value, la.get("index")))
    if not figures:
        return -1, " (leakiest: no layer has the measure)"
    return max(figures, key=lambda t: t[0])[1], f" (leakiest by {family}.{path})"  # ties: the first layer


def _measure(rule: Rule, label: str, node: Any, *, selection: bool = False) -> Measurement:
    """One place's figure judged against the rule (``selection``: judge the selection-adjusted bound)."""
    fig: Figure = read_figure(node, rule.path, rule.spec, label) if isinstance(node, dict) else \
        Figure(rule.spec, label, missing="not computed")
    if fig.value is None:
        return Measurement(label, None, None, None, None, None, None, fig.missing or "not computed")
    extra = {"still_learning": fig.still_learning, "epoch_capped": fig.epoch_capped, "caveats": list(fig.caveats)}
    bound = rule.effective_bound
    ci = fig.ci95
    if selection and bound != "value":
        ci = fig.interval
        extra["selection_ci95"] = fig.selection_ci95
    if bound != "value" and ci is None:
        return Measurement(label, fig.value, None, None, fig.chance, None, None,
                           f"no CI recorded, so bound {rule.bound!r} cannot be judged (a rule may say bound = 'value')",
                           **extra)
    judged = fig.value if bound == "value" else ci[1] if bound == "ci_upper" else ci[0]
    if rule.ratio:
        if fig.chance is None or fig.chance <= 0:
            return Measurement(label, fig.value, judged, ci, None, None, None, "no chance level recorded", **extra)
        limit = rule.threshold * fig.chance
        if rule.spec.high is not None and limit >= rule.spec.high:
            return Measurement(label, fig.value, judged, ci, fig.chance, limit, None,
                               f"vacuous limit: {rule.threshold:g} x chance {fig.chance:g} = {limit:g} reaches the "
                               f"maximum {rule.spec.high:g}, so the rule could never fail here", **extra)
    else:
        limit = rule.threshold
    ok = judged <= limit if rule.op == "max" else judged >= limit
    return Measurement(label, fig.value, judged, ci, fig.chance, limit, ok, **extra)


def _missing_message(rule: Rule, missing: list[Measurement], results: dict) -> str:
    """One line saying where the metric is missing and why, places with the same reason grouped."""
    ran = (results.get("config") or {}).get("attacks") or []
    if rule.family != DEFENSES and rule.family not in ran:
        return f"not computed: attack family {rule.family!r} was not run (attacks: {', '.join(ran)})"
    by_reason: dict[str, list[str]] = {}
    for m in missing:
        by_reason.setdefault(m.missing, []).append(m.where)
    return "not computed: " + "; ".join(f"{', '.join(where)}: {why}" for why, where in by_reason.items())


def evaluate_rule(rule: Rule, results: dict, policy: Policy | None = None) -> RuleOutcome:
    """Judge one rule against results (see the module docstring for the layer words, caveats and weakenings)."""
    targets = _targets(rule, results)
    if not targets:
        what = "defense settings" if rule.family == DEFENSES else "layers"
        return RuleOutcome(rule, "error", f"no {what} match (layer={rule.layer!r}"
                           + (f", defense={rule.defense!r}" if rule.defense else "") + "): the metric was not computed")
    one_of = rule.layer == "at_least_one"
    ms = [_measure(rule, label, node, selection=one_of and len(targets) > 1) for label, node in targets]
    missing = [m for m in ms if m.ok is None]
    broken = [m for m in ms if m.ok is False]
    kept = [m for m in ms if m.ok]
    if one_of and kept:
        status = "pass"
    elif missing:
        return RuleOutcome(rule, "error", _missing_message(rule, missing, results), ms)
    elif broken:
        status = rule.severity
    else:
        status = "pass"
    measured = kept if one_of and status == "pass" else [m for m in ms if m.ok is not None]
    # ties (e.g. two layers with a CI reaching 100%) go to the leakier value
    margin = (lambda m: (m.judged - m.limit, m.value)) if rule.op == "max" else \
        (lambda m: (m.limit - m.judged, -m.value))
    worst = (min if one_of and status == "pass" else max)(measured, key=margin)
    op = "<=" if rule.op == "max" else ">="
    limit = f"{fmt_num(worst.limit)}" + (f" ({rule.threshold:g}x chance {fmt_num(worst.chance)})" if rule.ratio else "")
    counted = f"{len(broken)} of {len(ms)} break it" if len(ms) > 1 else ("breaks it" if broken else "keeps it")
    bound = "selection-adjusted " + rule.effective_bound if worst.selection_ci95 else rule.effective_bound
    judged = (f"{fmt_num(worst.value)}" if worst.judged == worst.value and rule.effective_bound == "value" else
              f"{bound} {fmt_num(worst.judged)} (value {fmt_num(worst.value)})")
    message = f"{worst.where}: {rule.metric} {judged} vs limit {op} {limit}; {counted}"
    if rule.lenient:
        message += f"; lenient bound {rule.bound!r}"
    caveated = [m for m in measured if m.caveats]
    for caveat in worst.caveats:
        message += f"; {caveat}"
    if status == "pass" and caveated:
        status = "warn"
        others = [m.where for m in caveated if m is not worst]
        message += ("; PASS downgraded to WARN: the figure " + (f"at {', '.join(others)} " if others else "")
                    + "may understate leakage (see caveats)")
    outcome = RuleOutcome(rule, status, message, ms)
    return _weakened(outcome, results, policy)


def _weakened(outcome: RuleOutcome, results: dict, policy: Policy | None) -> RuleOutcome:
    """A PASS on figures weakened in a way the policy does not allow reads WARN (ERROR under ``require_full_audit``)."""
    allowed = policy.allow_weakened if policy else ()
    against = [w for w in weakenings(results) if w.applies_to(outcome.rule.family) and w.kind not in allowed]
    if not against:
        return outcome
    outcome.weakened = [f"[{w.kind}] {w.text}" for w in against]
    kinds = ", ".join(sorted({w.kind for w in against}))
    broken = any(m.ok is False for m in outcome.measurements)
    if policy is not None and policy.require_full_audit and outcome.status in ("pass", "warn") and not broken:
        # a broken rule keeps its status: weaker attackers can only understate leakage, so its finding stands
        outcome.status = "error"
        outcome.message += (f"; ERROR: the policy requires a full audit, and this rule's figures come from one "
                            f"weakened by {kinds} (not in allow_weakened)")
    elif outcome.status == "pass":
        outcome.status = "warn"
        outcome.message += (f"; PASS downgraded to WARN: the audit was weakened by {kinds}, which the policy does not "
                            "allow (allow_weakened), so leakage may be underestimated")
    else:
        outcome.message += f"; the audit was also weakened by {kinds}"
    return outcome


def evaluate(policy: Policy, results: dict) -> Verdict:
    """Judge every rule; outcomes ordered failed, error, warn, pass (rule order within each)."""
    outcomes = [evaluate_rule(rule, results, policy) for rule in policy.rules]
    outcomes.sort(key=lambda o: STATUS_ORDER.index(o.status))
    return Verdict(policy, outcomes, weakenings(results))


def verdict_table(verdict: dict) -> Table:
    """The stored verdict (``results["verdict"]``) as a report table, failed rules first."""
    table = Table(f"Gate verdict: {verdict['status'].upper()} (policy {verdict.get('policy_name', '')})",
                  ["status", "rule", "check", "measured", "severity", "justification"], status_column=0)
    for r in verdict["rules"]:
        table.rows.append([r["status"].upper(), r["name"], r["description"], r["message"], r["severity"],
                           r["justification"]])
    c = verdict["counts"]
    table.notes.append(f"{c['fail']} failed, {c['error']} not computed (error), {c['warn']} warnings, {c['pass']} "
                       f"passed; policy file {Path(verdict['policy']).name}, sha256 {verdict['policy_sha256'][:16]}.")
    table.notes.append("Leakage rules are judged by the CI bound worst for privacy unless the rule says otherwise "
                       "(marked lenient); a rule whose metric was not computed, is out of its range, or whose limit "
                       "could never be broken is an error, never a pass. A pass whose figure may understate leakage "
                       "(an attacker still learning or stopped at its cap) reads WARN, and so does one on a weakened "
                       "audit the policy does not allow by name.")
    weak = verdict.get("weakenings") or []
    if weak:
        allowed = [w for w in weak if w.get("allowed")]
        table.notes.append(f"This audit was weakened ({len(weak)}; {len(allowed)} allowed by the policy): "
                           + "; ".join(f"[{w['kind']}{', allowed' if w.get('allowed') else ''}] {w['text']}"
                                       for w in weak))
    return table


__all__ = ["Measurement", "Policy", "PolicyError", "Rule", "RuleOutcome", "Verdict", "check_policy", "evaluate",
           "evaluate_rule", "load_policy", "measure_for", "verdict_table"]
