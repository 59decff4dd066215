"""Closed-set speaker identification on pooled embeddings.

Threat: the attacker holds labelled embeddings of the same speakers (other recordings) and
asks "who is speaking?" for new ones. Attackers: multinomial logistic regression and an MLP,
both with standardised inputs and hyper-parameters chosen on a validation part of the
training split (never on the test split), plus the frame-level ECAPA attacker
(:mod:`attacks.frame_speaker_id`). Reported: top-1/top-5 accuracy with speaker-clustered
95% CIs that contain the exact binomial interval (:func:`audit.metrics.closed_set_metrics`),
chance level, macro-F1, the training budget and a learning curve (25/50/100% of the training
data) so a reviewer can see the attacker was not the weak link. The split comes from outside
(:func:`split_speaker_id`, grouped by recording and session), so a defense runner can hand
the attacker defended sets.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from attacks.frame_speaker_id import budgeted_frame_attacker, check_frame_budget
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError
from audit.estimators import (CURVE_FRACTIONS, MIN_EARLY_STOPPING_ROWS, check_is_fitted, fit_quiet, grid_search,
                              learning_curve, stratified_fraction)
from audit.family import (ATTACKER_FAILURES, AttackFamily, FamilySettings, LayerContext, check_range,
                          failed_attacker)
from audit.metrics import closed_set_metrics
from audit.measures import Bands, Figure, Measure
from audit.results import (AttackResult, Table, curve_cell, fmt_ci, fmt_pct, is_ok,
                           layer_attack, skip_cell)
from audit.splits import Split, closed_set_split
from audit.summary import layer_risk


class _PooledSpeakerID(ABC):
    """Shared fit/evaluate of a pooled-embedding classifier with validated hyper-parameters."""

    attacker = ""
    grid_name = ""

    def __init__(self, *, val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000,
                 n_comparisons: int = 1) -> None:
        self.val_fraction = val_fraction
        self.seed = seed
        self.n_boot = n_boot
        self.n_comparisons = n_comparisons

    @abstractmethod
    def _make(self, value, n_rows: int):
        """A fresh sklearn estimator for one hyper-parameter value and ``n_rows`` training rows."""

    @abstractmethod
    def _grid(self) -> tuple:
        """Hyper-parameter values tried on the validation split."""

    def _fit_one(self, X: np.ndarray, y: np.ndarray, value: Any) -> tuple[Any, bool]:
        return fit_quiet(make_pipeline(StandardScaler(), self._make(value, len(y))), X, y)

    def fit(self, train: EmbeddingSet) -> "_PooledSpeakerID":
        """Choose the hyper-parameter on a validation split of ``train``, then refit on all of it.

        The validation split is closed-set and grouped like the audit's (recordings of a
        speaker never on both sides); speakers too small to split stay in training.
        """
        t0 = time.perf_counter()
        if train.n_speakers < 2:
            raise CorpusError(f"speaker ID needs >= 2 training speakers, got {train.n_speakers}")
        X, y = train.pooled, train.speakers
        self.val_scores_: dict[str, float] = {}
        grid = self._grid()
        self.best_ = grid[0]
        if len(grid) > 1:
            try:
                inner = closed_set_split(train.grouping, test_fraction=self.val_fraction, seed=self.seed + 1)
            except CorpusError:
                inner = None
            if inner is not None:
                fit_rows = np.setdiff1d(np.arange(len(y)), inner.test)

                def score(value: Any) -> float:
                    model, _ = self._fit_one(X[fit_rows], y[fit_rows], value)
                    return float(np.mean(model.predict(X[inner.test]) == y[inner.test]))

                self.best_, self.val_scores_ = grid_search(grid, score)
        self.validation_score_ = max(self.val_scores_.values()) if self.val_scores_ else 0.0
        self.model_, self.converged_ = self._fit_one(X, y, self.best_)
        self.train_ = train
        self.fit_seconds_ = time.perf_counter() - t0
        # The learning curve's refits on 25/50% of the training data belong to the fit, so a fitted
        # attacker can be scored on several test sets (the defense comparison) without refitting.
        t1 = time.perf_counter()
        self.curve_models_ = {}
        for fraction in CURVE_FRACTIONS:
            if fraction < 1.0:
                sub = stratified_fraction(y, fraction, self.seed)
                self.curve_models_[fraction] = self._fit_one(X[sub], y[sub], self.best_)[0]
        self.curve_seconds_ = time.perf_counter() - t1
        return self

    def _budget(self) -> dict:
        return {"n_train": len(self.train_), "n_features": int(self.train_.pooled.shape[1]),
                "n_speakers": self.train_.n_speakers, self.grid_name: self.best_,
                "validation_scores": self.val_scores_, "fit_seconds": round(self.fit_seconds_, 3),
                "curve_fit_seconds": round(self.curve_seconds_, 3)}

    def evaluate(self, test: EmbeddingSet) -> AttackResult:
        """Score the fitted attacker on held-out recordings of the training speakers."""
        check_is_fitted(self, "model_")
        classes = self.model_.classes_
        metrics = closed_set_metrics(self.model_.predict_proba(test.pooled), classes, test.speakers,
                                     n_boot=self.n_boot, seed=self.seed, n_comparisons=self.n_comparisons)

        def curve_top1(fraction: float) -> float:
            return float(np.mean(self.curve_models_[fraction].predict(test.pooled) == test.speakers))

        return AttackResult("speaker_id", self.attacker, metrics, chance=1.0 / len(classes),
                            budget=self._budget(), learning_curve=learning_curve("top1", metrics["top1"], curve_top1),
                            converged=self.converged_)


class LogisticSpeakerID(_PooledSpeakerID):
    """Multinomial logistic regression on standardised pooled embeddings (C chosen on validation)."""

    attacker = "logreg"
    grid_name = "C"

    def __init__(self, *, C_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), max_iter: int = 2000,
                 val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000, n_comparisons: int = 1) -> None:
        super().__init__(val_fraction=val_fraction, seed=seed, n_boot=n_boot, n_comparisons=n_comparisons)
        self.C_grid = C_grid
        self.max_iter = max_iter

    def _grid(self) -> tuple:
        return tuple(self.C_grid)

    def _make(self, value, n_rows: int):
        return LogisticRegression(C=value, max_iter=self.max_iter, random_state=self.seed)

    def _budget(self) -> dict:
        return {**super()._budget(), "max_iter": self.max_iter, "n_iter": int(self.model_[-1].n_iter_.max())}


class MLPSpeakerID(_PooledSpeakerID):
    """One-hidden-layer MLP (Adam; early stopping on 10% of its training data) on standardised pooled embeddings."""

    attacker = "mlp"
    grid_name = "alpha"

    def __init__(self, *, hidden: int = 256, alpha_grid: tuple[float, ...] = (1e-4, 1e-2, 1.0),
                 max_iter: int = 300, val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000,
                 n_comparisons: int = 1) -> None:
        super().__init__(val_fraction=val_fraction, seed=seed, n_boot=n_boot, n_comparisons=n_comparisons)
        self.hidden = hidden
        self.alpha_grid = alpha_grid
        self.max_iter = max_iter

    def _grid(self) -> tuple:
        return tuple(self.alpha_grid)

    def _make(self, value, n_rows: int):
        return MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=value, max_iter=self.max_iter,
                             early_stopping=n_rows >= MIN_EARLY_STOPPING_ROWS, n_iter_no_change=10,
                             random_state=self.seed)

    def _budget(self) -> dict:
        mlp = self.model_[-1]
        return {**super()._budget(), "hidden": self.hidden, "max_iter": self.max_iter, "epochs": int(mlp.n_iter_)}


POOLED_ATTACKERS = {"logreg": LogisticSpeakerID, "mlp": MLPSpeakerID}
ATTACKER_NAMES = ("logreg", "mlp", "frame")


@dataclass
class SpeakerIDSettings(FamilySettings):
    """Closed-set speaker identification settings (TOML section ``[speaker_id]``).

    ``attackers``: any of ``logreg``, ``mlp`` (pooled embeddings) and ``frame`` (an ECAPA-TDNN
    trained from scratch on the frame-level sequence); ``frame_max_epochs``, ``frame_channels``
    (TDNN width) and ``frame_max_train_frames`` (frames cached for training) bound its budget,
    sized so a layer trains in minutes on 2 CPU cores. Fewer attackers or a budget below these
    defaults weakens the audit (reported). ``frame_layers`` (None: every layer) runs the frame
    attacker only on the layers it names (indices, ``"leakiest"``: the pooled attackers' headline
    layer, ``"last"``); elsewhere its result says why it did not run.
    """

    BUDGET = ("n_boot", "frame_max_epochs", "frame_channels", "frame_max_train_frames")
    BUDGET_LISTS = ("attackers",)
    QUICK = {"attackers": ["logreg"], "n_boot": 200}

    attackers: list[str] = field(default_factory=lambda: list(ATTACKER_NAMES))
    test_fraction: float = 0.3
    n_boot: int = 1000
    frame_max_epochs: int = 20
    frame_channels: int = 128
    frame_max_train_frames: int = 200_000
    frame_layers: list[int | str] | None = None

    def validate(self, prefix: str = "speaker_id.") -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        for name in self.attackers:
            if name not in ATTACKER_NAMES:
                raise ConfigError(f"{prefix}attackers: unknown attacker {name!r} (known: {', '.join(ATTACKER_NAMES)})")
        if not self.attackers:
            raise ConfigError(f"{prefix}attackers: must name at least one attacker")
        check_range(prefix, "test_fraction", self.test_fraction, 0, 1)
        if self.n_boot < 100:
            raise ConfigError(f"{prefix}n_boot={self.n_boot!r}: must be >= 100 for a meaningful 95% CI")
        check_frame_budget(self, prefix)


def split_speaker_id(labels: EmbeddingSet, settings: SpeakerIDSettings, seed: int) -> Split:
    """Closed-set split grouped by session/recording (:func:`audit.splits.closed_set_split`)."""
    return closed_set_split(labels.grouping, test_fraction=settings.test_fraction, seed=seed)


def feasibility(labels: EmbeddingSet, split: Split, settings: SpeakerIDSettings) -> str | None:
    """Why closed-set identification cannot run on this split (None when it can)."""
    kept = np.unique(labels.speakers[split.test]).size
    return None if kept >= 2 else f"closed-set identification needs >= 2 splittable speakers, found {kept}"


def attack_speaker_id(train: EmbeddingSet, test: EmbeddingSet, settings: SpeakerIDSettings,
                      ctx: LayerContext) -> dict:
    """All configured closed-set attackers on one layer; the headline is the strongest on test (worst case).

    Every attacker is fitted on ``train`` and scored on ``test`` (held-out recordings of the
    same speakers). ``selection_ci95`` of each attacker is valid for the best of all
    attackers x layers of the run (Bonferroni over that many comparisons). The frame attacker
    runs on the run's device and precision (``ctx.device``, ``ctx.attacker_precision``).
    """
    seed = ctx.seed
    n_comparisons = len(settings.attackers) * ctx.run.n_layers
    fitted, results = {}, {}
    for name in settings.attackers:
        if name == "frame":
            if train.frame_source is None or ctx.frame_skip:
                reason = ctx.frame_skip or "pooled-only layer: no frames"
                results[name] = AttackResult.skip("speaker_id", "frame", reason).to_dict()
                continue
            attacker = budgeted_frame_attacker(settings, seed=seed, frame_rate=ctx.frame_rate, n_boot=settings.n_boot,
                                               n_comparisons=n_comparisons, device=ctx.device,
                                               precision=ctx.attacker_precision)
        else:
            attacker = POOLED_ATTACKERS[name](seed=seed, n_boot=settings.n_boot, n_comparisons=n_comparisons)
        try:
            fitted[name] = ctx.run.fitted(attacker, train, frames=name == "frame")
            results[name] = fitted[name].evaluate(test).to_dict()
        except ATTACKER_FAILURES as err:
            fitted.pop(name, None)
            results[name] = failed_attacker("speaker_id", name, err)
    scored = [n for n in fitted if results[n].get("top1") is not None]
    if not scored:
        raise CorpusError("every speaker-ID attacker failed or was skipped: "
                          + "; ".join(f"{n}: {r.get('skipped')}" for n, r in results.items()))
    strongest = max(scored, key=lambda n: results[n]["top1"])
    headline = dict(results[strongest])
    failed = {n: r["skipped"] for n, r in results.items() if r.get("failed")}
    if failed:
        headline["failed_attackers"] = failed
    headline["strongest_by"] = (f"highest test top-1 of {len(scored)} attackers (worst case for privacy); each "
                                "attacker's hyper-parameters were chosen on validation data only")
    headline["n_attackers_compared"] = len(scored)
    headline["validation_pick"] = max(fitted, key=lambda n: fitted[n].validation_score_)
    headline["attackers"] = results
    return headline


def speaker_id_table(results: dict) -> Table:
    """One row per layer: the strongest closed-set attacker's top-1 with CI, and every attacker."""
    table = Table("Speaker identification per layer (closed set)",
                  ["layer", "name", "dim", "top-1 (95% CI)", "top-5", "chance", "macro-F1", "strongest attacker",
                   "its top-1 at 25/50/100% data", "all attackers (top-1)"])
    split = (results.get("splits") or {}).get("speaker_id") or {}
    for la in results["layers"]:
        sid = layer_attack(la, "speaker_id")
        if sid is None:
            continue
        if not is_ok(sid):
            table.rows.append([str(la["index"]), la["name"], str(la.get("dim", "?")), skip_cell(sid)] + [""] * 6)
            continue
        others = ", ".join(f"{n} {fmt_pct(r.get('top1'))}" if not r.get("skipped") else f"{n} skipped"
                           for n, r in sid.get("attackers", {}).items())
        table.rows.append([str(la["index"]), la["name"], str(la.get("dim", "?")), f"{fmt_pct(sid['top1'])} {fmt_ci(sid['ci95'])}",
                           fmt_pct(sid["top5"]), fmt_pct(sid["chance"]), f"{sid['macro_f1']:.3f}", sid["attacker"],
                           curve_cell(sid, "top1"), others])
    table.notes.append("Test utterances come from recordings (sessions where a speaker has several) that the "
                       "attacker never trained on. CIs: speaker-clustered bootstrap widened to the exact binomial "
                       "interval.")
    if split.get("same_recording_speakers"):
        table.notes.append("Some speakers have one recording only: their test stretch comes from the same recording "
                           "as their training stretch, so the figure includes same-recording cues.")
    return table


#: Re-identification is rated ``high`` when the leakiest layer's (selection-adjusted) CI lower bound
#: is at least this top-1: the attacker names the speaker of at least half of new utterances.
HIGH_TOP1 = 0.5
#: ... and ``medium`` when that lower bound is above this multiple of chance (clearly not chance).
MEDIUM_RATIO_TO_CHANCE = 2.0


#: Re-identification bands on top-1 (CI bounds): high from :data:`HIGH_TOP1`, medium above
#: :data:`MEDIUM_RATIO_TO_CHANCE` x chance.
REID_BANDS = Bands(HIGH_TOP1, MEDIUM_RATIO_TO_CHANCE, medium_times_chance=True)

METRICS = (
    Measure("top1", True, label="speaker-ID top-1", bands=REID_BANDS, headline="identity (speaker-ID top-1)",
            slug="speaker_id_top1", ylim=(0.0, 1.02), plot=False, defense_column=False,  # own figure and column
            description="strongest attacker's closed-set top-1 accuracy"),
    Measure("top5", True, ci="top5_ci95", chance="chance_top5", description="strongest attacker's top-5"),
    Measure("macro_f1", True, ci=None, chance=None, description="strongest attacker's macro-F1 (no CI)"),
    Measure("attackers.*.top1", True, description="one attacker's top-1 (logreg, mlp, frame)"),
    Measure("attackers.*.top5", True, ci="top5_ci95", chance="chance_top5", description="one attacker's top-5"),
)


def _reid_evidence(fig: Figure) -> str:
    ratio = f", {fig.value / fig.chance:.1f}x chance ({fmt_pct(fig.chance)})" if fig.chance else ""
    sel = (f"; {fmt_ci(fig.selection_ci95)} adjusted for the pick from {fig.n_compared} attackers x layers"
           if fig.selection_ci95 else "")
    return (f"{fig.where}: an attacker with labelled recordings names the speaker of a new utterance "
            f"{fmt_pct(fig.value)} of the time (CI {fmt_ci(fig.ci95)}{sel}){ratio}")


#: Risk of naming a known speaker: every layer's top-1 rated by its CI bounds (:data:`REID_BANDS`), the worst kept.
rate_reidentification = layer_risk("re-identification", "speaker_id", METRICS[0], _reid_evidence)


FAMILY = AttackFamily(
    name="speaker_id", settings=SpeakerIDSettings, split=split_speaker_id, attack=attack_speaker_id,
    table=speaker_id_table, feasibility=feasibility,
    threat="re-identification", risk=rate_reidentification, metrics=METRICS,
    personal=(),  # per-layer results hold counts, scores and budgets only: no ids, transcripts or audio
    description="closed-set speaker identification: who, among known people, is speaking?",
    threat_model="the side corpus has other recordings of the same people (other sessions where there are several); "
                 "the attacker names the speaker of a new utterance.")
