"""Typed results: what an attack found on one layer, format-neutral report tables, the schema version.

A :class:`Table` is built once from a run's results (by the family's registry entry) and every
renderer (Markdown, HTML, JUnit) draws the same table; the ``fmt_*`` helpers write its cells.
"""

from __future__ import annotations

import contextlib
import json
import math
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import SpeechAuditError
from audit.measures import Measure, MetricSpec, fmt_still_learning  # noqa: F401  (re-exported from here)

SCHEMA_VERSION = "2.11"
#: Top-level keys every results file of this schema has (a file without them is not a run's results).
REQUIRED_KEYS = ("schema_version", "config", "model", "corpus", "layers")


class ResultsError(SpeechAuditError):
    """A results file is unreadable, truncated, of another schema version, or not a run's results."""


@contextlib.contextmanager
def malformed_results(source: str | Path) -> Iterator[None]:
    """Turn a structural surprise while reading loaded results (a key missing, a value of the wrong
    type) into one :class:`ResultsError` naming ``source``: a results file is input, and an edited or
    foreign one must not end in a traceback."""
    try:
        yield
    except ResultsError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, ArithmeticError) as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise ResultsError(f"{source}: malformed results, not as speech-audit {SCHEMA_VERSION} writes them "
                           f"({type(exc).__name__}: {str(exc)[:120]} in {where.name}); re-run the audit or restore "
                           "the file") from exc


def load_results(path: str | Path) -> dict:
    """A run's results from ``results.json`` (or a run folder holding one), checked before use.

    Raises :class:`ResultsError` naming the file when it is missing, unreadable, truncated or not
    JSON, lacks a required key, or has a schema major version other than this tool's.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: cannot read results ({err.strerror or err})") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not a complete JSON results file (line {err.lineno}: {err.msg})") from None
    if not isinstance(results, dict):
        raise ResultsError(f"{path}: not a speech-audit results file (top level is not an object)")
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ResultsError(f"{path}: not a speech-audit results file (missing {', '.join(missing)})")
    version = str(results["schema_version"])
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ResultsError(f"{path}: results schema {version} cannot be read by this speech-audit "
                           f"(schema {SCHEMA_VERSION}); re-run the audit or use the matching version")
    for key in ("config", "model", "corpus"):
        if not isinstance(results[key], dict):
            raise ResultsError(f"{path}: results key {key!r} is not an object")
    if not isinstance(results["layers"], list):
        raise ResultsError(f"{path}: results key 'layers' is not a list")
    for i, layer in enumerate(results["layers"]):
        if not (isinstance(layer, dict) and isinstance(layer.get("index"), int) and "name" in layer
                and isinstance(layer.get("attacks", {}), dict)):
            raise ResultsError(f"{path}: layers[{i}] is not a layer result (needs index, name and attacks)")
    return results


@dataclass
class Table:
    """A report table: a title, column headers, text rows and footnotes (no markup).

    ``status_column`` names the column (by index) whose cells are a verdict word (``FAIL``,
    ``WARN``, ``PASS``, ``ERROR``, ``HIGH``, ``MEDIUM``, ``LOW``, ``NOT MEASURED``); renderers may
    style it, but the word itself always carries the meaning (never colour alone).
    """

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status_column: int | None = None


#: Risk levels (``inconclusive``: the CI spans bands, see ``worst``/``best``; ``not measured`` is not a low
#: risk: nothing was tested).
RISK_LEVELS = ("high", "medium", "low", "inconclusive", "not measured")
#: Order of ratings in reports: by the band of the bound worst for privacy, then the narrower claim.
_BAND_ORDER = ("high", "medium", "low")


@dataclass
class RiskRating:
    """One threat's rating, the one-line reason, and the number behind it.

    ``worst`` and ``best`` are the bands of the CI bound worst and best for privacy
    (:func:`audit.measures.rate`); ``level`` is their common band, ``inconclusive`` when they
    differ, or ``not measured``. ``caveats`` say why the figure may understate leakage.
    """

    threat: str
    level: str
    reason: str
    metric: str = ""
    value: float | None = None
    ci95: list | None = None
    chance: float | None = None
    layer: int | None = None
    worst: str | None = None
    best: str | None = None
    caveats: list[str] = field(default_factory=list)

    @property
    def words(self) -> str:
        """The rating as a reviewer reads it: ``high``, ``inconclusive (low to high)``, ``not measured``."""
        if self.level == "inconclusive" and self.worst and self.best:
            return f"inconclusive ({self.best} to {self.worst})"
        return self.level

    def sort_key(self) -> tuple[int, int]:
        """Worst band first (``not measured`` last), then the narrower claim."""
        order = _BAND_ORDER + ("not measured",)
        worst = self.worst if self.worst in order else self.level if self.level in order else "not measured"
        best = self.best if self.best in order else worst
        return order.index(worst), order.index(best)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (``words`` included, for readers without this class)."""
        return _finite({**asdict(self), "words": self.words})


def rating_sort_key(rating: dict) -> tuple[int, int]:
    """:meth:`RiskRating.sort_key` of a stored rating (``results["risks"]`` entries)."""
    return RiskRating(**{k: rating.get(k) for k in ("threat", "level", "reason", "worst", "best")}).sort_key()


def fmt_pct(x: float | None) -> str:
    """``0.123`` -> ``12.3%`` (``n/a`` for None)."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def fmt_ci(ci: list | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    """``[lo, hi]`` scaled (percent by default), empty when absent."""
    return "" if not ci or ci[0] is None else f"[{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]"


def fmt_num(x: float | None, fmt: str = ".3f") -> str:
    """A number, ``n/a`` for None."""
    return "n/a" if x is None else f"{x:{fmt}}"


def listed_files(node: Any) -> list[str]:
    """Every entry of every ``files`` list inside ``node`` (dicts, lists and tuples walked): the files attacks wrote.

    An inversion result lists its listenable examples there, relative to the run folder.
    """
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("files"), list):
            found.extend(str(f) for f in node["files"])
        for key, value in node.items():
            if key != "files":
                found.extend(listed_files(value))
    elif isinstance(node, (list, tuple)):
        for value in node:
            found.extend(listed_files(value))
    return found


def is_ok(result: dict | None) -> bool:
    """True for a result that ran (present and not skipped)."""
    return bool(result) and not result.get("skipped")


def skip_cell(result: dict | None) -> str:
    """Why a result is missing."""
    return "not run" if not result else f"skipped: {result['skipped']}"


def curve_cell(result: dict, metric: str) -> str:
    """The learning curve as ``a / b / c`` (percent at 25/50/100% of the data); a flat end means more data would not help."""
    curve = [c for c in result.get("learning_curve") or [] if c.get(metric) is not None]
    return " / ".join(f"{100 * c[metric]:.0f}" for c in curve) if curve else "n/a"


def layer_attack(layer: dict, *path: str) -> dict | None:
    """``layer["attacks"][path[0]][path[1]]...`` or None."""
    node = layer.get("attacks", {})
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def attack_results(node: Any) -> list[dict]:
    """Every single-attacker result inside a family's result (``attackers``, ``scorers``; not the headline copy)."""
    if not isinstance(node, dict) or node.get("skipped"):
        return []
    for key in ("attackers", "scorers"):
        if isinstance(node.get(key), dict):
            return [r for r in node[key].values() if isinstance(r, dict) and not r.get("skipped")]
    if "budget" in node and "attacker" in node:
        return [node]
    return [r for v in node.values() for r in attack_results(v)]


@dataclass
class AttackResult:
    """Outcome of one attacker on one layer.

    ``metrics`` holds the headline numbers (e.g. ``top1``, ``ci95``); ``budget`` the attacker's
    training budget (data sizes, iterations, hyper-parameters chosen on validation);
    ``learning_curve`` rows of ``{"fraction", "metric"}``; ``skipped`` the reason when the
    attack could not run on this layer (the run goes on).
    """

    attack: str
    attacker: str
    metrics: dict[str, Any] = field(default_factory=dict)
    chance: float | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    learning_curve: list[dict[str, float]] = field(default_factory=list)
    converged: bool | None = None
    skipped: str | None = None

    @classmethod
    def skip(cls, attack: str, attacker: str, reason: str) -> "AttackResult":
        """A result recording that the attack did not run, and why."""
        return cls(attack, attacker, skipped=reason)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly dict: metrics at top level next to chance, budget and curve."""
        d = asdict(self)
        metrics = d.pop("metrics")
        return _finite({**metrics, **d})


def _finite(obj: Any) -> Any:
    """Replace NaN/inf by None recursively so the JSON stays standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
