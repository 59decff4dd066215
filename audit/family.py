"""What an attack family hands the system: its registry entry, its settings base, the run context.

A family is one module in ``attacks/`` (or in another package, registered through the
``speech_audit.attacks`` entry point) that ends with one :class:`AttackFamily` value. The
entry carries everything the rest of the system needs, so the config, the pipeline, the
defense runner and the report never name a family by hand:

* ``settings``: a dataclass deriving from :class:`FamilySettings` (its TOML section), with
  ``validate(prefix)``, ``quick()`` (the ``--quick`` budget) and ``weakening(prefix)``;
* ``split(labels, settings, seed) -> Split``: the split the family's threat model needs, made
  from labels only (so it runs before extraction, and a defense runner can hand the same sets
  to the attack);
* ``feasibility(labels, split, settings) -> reason | None``: checks beyond the split itself
  (a split that cannot be made is already a reason), run on the audit's split before extraction;
* ``attack(train, test, settings, ctx) -> dict``: the attack on one layer, given its sets;
* ``preflight(settings, run)``: loads anything the family needs besides the audited model
  (vocoders, judges) before extraction, keeping it in the run context;
* ``table(results) -> Table``: the family's per-layer report table;
* ``threat``, ``risk(results) -> RiskRating`` and ``metrics``: the threat the family measures
  (re-identification, linkage, ...), its risk rating with the thresholds stated in the family's
  module, and the metrics a gate rule may name (:class:`~audit.results.MetricSpec`);
* ``enrolment_test(clean, defended, settings, seed) -> EmbeddingSet``: for families whose test
  set holds enrolment data (verification), the test set of VoicePrivacy's *ignorant* attacker,
  who enrols on undefended speech and scores defended trials. Families with it also get the
  *lazy-informed* scenario (enrolment and trials defended, scorer trained undefended);
* ``personal``: the fields of the per-layer result that hold personal data (speaker and
  utterance ids, transcripts, files of recorded voices), as :class:`~audit.personal.PersonalField`;
  a redacted report (``--redact``) hashes, removes or leaves out exactly these.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError
from audit.personal import PersonalField
from audit.results import AttackResult, MetricSpec, RiskRating, Table
from audit.splits import Split


@dataclass
class RunContext:
    """State shared by every layer of one run: seed, device, output folder, and work done once per run.

    ``device`` is the resolved torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``) every torch
    estimator of the run trains and predicts on (results come back as numpy either way).
    ``attacker_precision`` is what the attackers' networks (frame speaker attackers, inversion
    decoders) compute in: ``"float32"``, or ``"bfloat16"`` autocast; defenses, utility probes,
    judges and the audited model stay float32. ``n_layers`` is the number of layers compared, so
    a headline picked from several layers can say how many it was picked from.
    ``trust_remote_code`` lets models that ship code (speechbrain folders and non-official hub
    ids, Hugging Face ``auto_map``) load. :meth:`once` replaces module-global caches: loaded
    judges and vocoders, and layer-independent analyses of the original audio, live here.
    """

    seed: int = 0
    out_dir: Path | None = None
    progress: bool = False
    n_layers: int = 1
    device: str = "cpu"
    attacker_precision: str = "float32"
    trust_remote_code: bool = False
    _memo: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def settings(self) -> dict[str, Any]:
        """The plain settings (every field but the memo): what a worker process rebuilds its context from."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for in this run, the kept value afterwards."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def has(self, key: Hashable) -> bool:
        """True when ``key`` was already computed in this run."""
        return key in self._memo

    def fitted(self, estimator: Any, train: EmbeddingSet, *, frames: bool = False) -> Any:
        """``estimator.fit(train)``, or the one already fitted in this run with the same settings on the same data.

        The key is the estimator's class, its constructor settings (``vars`` before fitting:
        plain settings, learned state comes later) and ``train``'s fingerprint (``frames``: its
        frame-level states too, for attackers that read them). Fits are seeded, so the kept
        estimator is the one a refit would give. The defense comparison relies on it: its
        ignorant and lazy-informed attackers train on the same undefended rows as the
        undefended reference, so they are trained once per layer, not once per defense.
        """
        settings = repr(sorted(vars(estimator).items()))
        key = ("fitted", type(estimator).__module__, type(estimator).__qualname__, settings,
               train.fingerprint(frames=frames))
        return self.once(key, lambda: estimator.fit(train))

    def layer(self, index: int | None, frame_rate: float, frame_skip: str | None = None) -> "LayerContext":
        """The context of one layer of this run (``frame_skip``: why frame-level attackers do not run here)."""
        return LayerContext(self, index, frame_rate, frame_skip)


@dataclass(frozen=True)
class LayerContext:
    """One layer's context: its index and frame rate, plus the run's.

    ``frame_skip`` (None: they run) is why a family's frame-level attackers, the costly ones, are
    not run on this layer (its ``frame_layers`` setting names other layers); the family records
    it in place of their result.
    """

    run: RunContext
    index: int | None
    frame_rate: float
    frame_skip: str | None = None

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.run.seed

    @property
    def device(self) -> str:
        """The run's torch device (``"cpu"``, ``"cuda"``, ``"cuda:N"``)."""
        return self.run.device

    @property
    def attacker_precision(self) -> str:
        """What the run's attacker networks compute in (``"float32"`` or ``"bfloat16"`` autocast)."""
        return self.run.attacker_precision

    @property
    def out_dir(self) -> Path | None:
        """Where listenable examples and plots of this run go (None: nowhere)."""
        return self.run.out_dir


class FamilySettings:
    """Base of a family's settings dataclass: budget-based weakening and the ``--quick`` budget.

    ``BUDGET`` names numeric settings where a value below the default weakens the attack;
    ``BUDGET_LISTS`` names list settings (attackers, scorers) where leaving out a default
    member weakens it. ``QUICK`` holds the ``--quick`` overrides.
    """

    BUDGET: ClassVar[tuple[str, ...]] = ()
    BUDGET_LISTS: ClassVar[tuple[str, ...]] = ()
    QUICK: ClassVar[dict[str, Any]] = {}

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key (families override)."""

    def quick(self) -> "FamilySettings":
        """A copy with the ``--quick`` budget (the caller's settings are not changed)."""
        return dataclasses.replace(self, **self.QUICK)

    def weakening(self, prefix: str) -> list[str]:
        """Settings below the family's default budget, each as one line naming the key."""
        default = type(self)()
        weak = []
        for key in self.BUDGET_LISTS:
            missing = [v for v in getattr(default, key) if v not in getattr(self, key)]
            if missing:
                weak.append(f"{prefix}{key}={getattr(self, key)!r}: leaves out {', '.join(map(str, missing))}")
        for key in self.BUDGET:
            value, full = getattr(self, key), getattr(default, key)
            if value is not None and full is not None and value < full:
                weak.append(f"{prefix}{key}={value!r}: below the default budget {full!r}")
        return weak + self._extra_weakening(prefix)

    def _extra_weakening(self, prefix: str) -> list[str]:
        """Family-specific weakenings beyond the budget keys."""
        return []


#: What one attacker's fit or evaluation may raise without taking its family's other attackers down with it.
ATTACKER_FAILURES = (CorpusError, ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError)


def failed_attacker(attack: str, attacker: str, err: BaseException) -> dict:
    """The result of an attacker whose fit or evaluation raised: skipped, ``failed``, the error named (warned once).

    The family's headline then comes from its other attackers and records the failure
    (``failed_attackers``), a caveat every verdict reads: the strongest attacker may be the one lost.
    """
    reason = f"failed: {type(err).__name__}: {str(err)[:200]}"
    warnings.warn(f"{attack} attacker {attacker!r} {reason}; the family's figure comes from its other attackers",
                  stacklevel=2)
    return {**AttackResult.skip(attack, attacker, reason).to_dict(), "failed": True}


def check_range(prefix: str, key: str, value: Any, low: float, high: float | None = None, *,
                open_low: bool = True, open_high: bool = True) -> None:
    """Raise :class:`ConfigError` naming ``prefix + key`` unless ``value`` lies in the interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if open_low else value >= low) and (
            high is None or (value < high if open_high else value <= high))
    if not ok:
        lo = "(" if open_low else "["
        hi = "inf)" if high is None else (f"{high})" if open_high else f"{high}]")
        raise ConfigError(f"{prefix}{key}={value!r}: must be in {lo}{low}, {hi}")


#: Layer names a ``layers``-style setting may hold besides layer indices.
LAYER_WORDS = ("leakiest", "last")


def check_layer_selection(prefix: str, key: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a non-empty list of layer indices, 'leakiest' or 'last'."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{prefix}{key}={value!r}: expected a non-empty list of layer indices, 'leakiest' or "
                          "'last'")
    for layer in value:
        if not (layer in LAYER_WORDS or (isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0)):
            raise ConfigError(f"{prefix}{key}: {layer!r} is not a layer index, 'leakiest' or 'last'")


def select_layers(wanted: list[int | str], leakiest: int | None, num_layers: int, audited: list[int]) -> list[int]:
    """The audited layers a selection names: ``leakiest`` is the headline layer, ``last`` the model's last."""
    chosen = {leakiest if w == "leakiest" else num_layers - 1 if w == "last" else w for w in wanted}
    return sorted(i for i in chosen if i is not None and i in audited)


@dataclass(frozen=True)
class AttackFamily:
    """One attack family's registry entry (see the module docstring)."""

    name: str
    settings: type
    split: Callable[[EmbeddingSet, Any, int], Split]
    attack: Callable[[EmbeddingSet, EmbeddingSet, Any, LayerContext], dict]
    table: Callable[[dict], Table]
    feasibility: Callable[[EmbeddingSet, Split, Any], str | None] = lambda labels, split, settings: None
    preflight: Callable[[Any, RunContext], None] | None = None
    default: bool = True
    description: str = ""
    #: The family's part of the report's threat model: what the attacker holds, learns from and does.
    threat_model: str = ""
    enrolment_test: Callable[[EmbeddingSet, EmbeddingSet, Any, int], EmbeddingSet] | None = None
    threat: str = ""
    risk: Callable[[dict], RiskRating] | None = None
    metrics: tuple[MetricSpec, ...] = ()
    personal: tuple[PersonalField, ...] = ()

    def metric(self, path: str) -> MetricSpec | None:
        """The family's metric matching the dotted ``path`` below its per-layer result (None: unknown)."""
        return next((m for m in self.metrics if m.matches(path)), None)


def plan_splits(families: dict[str, AttackFamily], settings: Callable[[str], Any], labels: EmbeddingSet,
                seed: int) -> tuple[dict[str, Split], dict[str, str]]:
    """Each family's split made from labels (before extraction), and the families that cannot run, with why."""
    splits, infeasible = {}, {}
    for name, family in families.items():
        try:
            split = family.split(labels, settings(name), seed)
            reason = family.feasibility(labels, split, settings(name))
        except CorpusError as err:
            reason = str(err)
        if reason is None:
            splits[name] = split
        else:
            infeasible[name] = reason
    return splits, infeasible


__all__ = ["ATTACKER_FAILURES", "AttackFamily", "FamilySettings", "LayerContext", "RunContext", "check_range",
           "failed_attacker", "plan_splits"]
