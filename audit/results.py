"""Typed results: what an attack found on one layer, format-neutral report tables, the schema version.

A :class:`Table` is built once from a run's results (by the family's registry entry) and every
renderer (Markdown today) draws the same table; the ``fmt_*`` helpers write its cells.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = "2.1"


@dataclass
class Table:
    """A report table: a title, column headers, text rows and footnotes (no markup)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt_pct(x: float | None) -> str:
    """``0.123`` -> ``12.3%`` (``n/a`` for None)."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def fmt_ci(ci: list | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    """``[lo, hi]`` scaled (percent by default), empty when absent."""
    return "" if not ci or ci[0] is None else f"[{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]"


def fmt_num(x: float | None, fmt: str = ".3f") -> str:
    """A number, ``n/a`` for None."""
    return "n/a" if x is None else f"{x:{fmt}}"


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
