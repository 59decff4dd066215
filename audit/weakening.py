"""What makes an audit weaker than a full one, named so a policy can allow it by name.

A weakening is a setting (or a fact of the corpus) under which the attackers are weaker, or test
less, than in a full audit, so leakage may be underestimated. Each has a ``kind`` from
:data:`KINDS` (what a policy's ``allow_weakened`` names), one line of ``text`` for people, and the
families it ``affects`` (``"*"``: every figure; ``"defenses"``: the defense comparison). The run
warns about each one, writes them into ``results["weakened"]`` and the report, and the gate lets
no rule PASS on a weakened figure unless the policy allows that kind (see :mod:`audit.gate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Every kind of weakening, with what it means (the names a policy's ``allow_weakened`` may hold).
KINDS: dict[str, str] = {
    "quick": "--quick: every family's reduced --quick budget",
    "attacker_precision": "attacker networks trained under bfloat16 autocast instead of float32",
    "budget": "a family's attacker budget below its default (fewer attackers, epochs, resamples; skipped judges)",
    "frame_layers": "the costly frame-level attackers (frame ECAPA, inversion) ran on some layers only",
    "family_not_run": "a default attack family was left out of the run",
    "family_not_measurable": "an attack family could not run on this corpus",
    "skipped_audio": "--skip-bad-audio dropped more than 1% of the corpus",
    "defense_fit_on": "defenses fitted on the evaluated speakers themselves (flatters them)",
    "defense_scenarios": "an attacker scenario (ignorant, lazy-informed, semi-informed) left out of the defense comparison",
    "defense_attacks": "an attack family that does not attack the defenses",
    "utility_budget": "the utility probe's budget below its default",
    "unknown": "a weakening recorded by an older speech-audit, without a kind",
}

#: ``affects`` value meaning every figure of the run.
EVERYTHING = "*"
#: ``affects`` value meaning the defense comparison (``defenses.*`` gate rules).
DEFENSES = "defenses"


@dataclass(frozen=True)
class Weakening:
    """One weakening: its ``kind`` (a key of :data:`KINDS`), a line of ``text``, and the families it ``affects``."""

    kind: str
    text: str
    affects: tuple[str, ...] = (EVERYTHING,)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown weakening kind {self.kind!r} (known: {', '.join(KINDS)})")

    def applies_to(self, family: str) -> bool:
        """True when figures of ``family`` (an attack family, or ``defenses``) are weakened by this."""
        return EVERYTHING in self.affects or family in self.affects

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, as stored in ``results["weakened"]``."""
        return {"kind": self.kind, "text": self.text, "affects": list(self.affects)}

    @classmethod
    def from_value(cls, value: Any) -> "Weakening":
        """A stored weakening: a dict as :meth:`to_dict` writes it, or a plain line from an older results file.

        A plain line, or a dict of unknown kind, is kind ``unknown`` affecting everything: it can
        only make a verdict more cautious.
        """
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            kind = value.get("kind") if value.get("kind") in KINDS else "unknown"
            affects = value.get("affects")
            affects = tuple(str(a) for a in affects) if isinstance(affects, list) and affects else (EVERYTHING,)
            return cls(kind, value["text"], affects if kind != "unknown" else (EVERYTHING,))
        return cls("unknown", str(value), (EVERYTHING,))


def weakenings(results: dict) -> list[Weakening]:
    """The weakenings a results file records (``results["weakened"]``), old plain lines included."""
    stored = results.get("weakened") if isinstance(results, dict) else None
    return [Weakening.from_value(v) for v in stored] if isinstance(stored, list) else []


def weakening_lines(results: dict) -> list[str]:
    """Each recorded weakening as one line for people (``[kind] text``)."""
    return [f"[{w.kind}] {w.text}" for w in weakenings(results)]


__all__ = ["DEFENSES", "EVERYTHING", "KINDS", "Weakening", "weakening_lines", "weakenings"]
