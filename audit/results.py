"""Typed results: what an attack found on one layer, and the JSON schema version of a run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = "1.0"


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
