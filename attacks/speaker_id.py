"""Closed-set speaker identification on pooled embeddings.

Threat: the attacker holds labelled embeddings of the same speakers (other utterances) and
asks "who is speaking?" for new ones. Attackers: multinomial logistic regression and an MLP,
both with standardised inputs and hyper-parameters chosen on a validation part of the
training split (never on the test split). Reported: top-1/top-5 accuracy with bootstrap 95%
CIs, chance level, macro-F1, the training budget and a learning curve (25/50/100% of the
training data) so a reviewer can see the attacker was not the weak link.
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError
from audit.metrics import accuracy_ci, chance_topk, topk_accuracy
from audit.results import AttackResult
from audit.splits import utterance_split

CURVE_FRACTIONS = (0.25, 0.5, 1.0)
# sklearn's early stopping holds out 10%: below this many rows that slice is too small to use.
MIN_EARLY_STOPPING_ROWS = 50


def stratified_fraction(speakers: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a per-speaker ``fraction`` of rows (at least one row per speaker)."""
    rng = np.random.default_rng(seed)
    keep = []
    for spk in np.unique(speakers):
        idx = rng.permutation(np.flatnonzero(speakers == spk))
        keep.append(idx[: max(1, int(round(fraction * idx.size)))])
    return np.sort(np.concatenate(keep))


def closed_set_metrics(proba: np.ndarray, classes: np.ndarray, y_true: np.ndarray, *,
                       n_boot: int = 1000, seed: int = 0) -> dict:
    """Top-1/top-5 accuracy with bootstrap 95% CIs and macro-F1 from class probabilities."""
    label_pos = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(y_true.tolist()) - set(label_pos))
    if missing:
        raise CorpusError(f"closed-set test speakers never seen in training: {missing[:5]}")
    y = np.array([label_pos[s] for s in y_true])
    k5 = min(5, len(classes))
    top1, ci1 = accuracy_ci(topk_accuracy(proba, y, 1), n_boot=n_boot, seed=seed)
    top5, ci5 = accuracy_ci(topk_accuracy(proba, y, k5), n_boot=n_boot, seed=seed)
    pred = classes[np.argmax(proba, axis=1)]
    return {"top1": top1, "ci95": list(ci1), "top5": top5, "top5_ci95": list(ci5), "top5_k": k5,
            "macro_f1": float(f1_score(y_true, pred, average="macro")),
            "n_speakers": int(len(classes)), "n_test": int(y.size),
            "chance_top5": chance_topk(len(classes), k5)}


class _PooledSpeakerID(ABC):
    """Shared fit/evaluate of a pooled-embedding classifier with validated hyper-parameters."""

    attacker = ""
    grid_name = ""

    def __init__(self, *, val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000) -> None:
        self.val_fraction = val_fraction
        self.seed = seed
        self.n_boot = n_boot

    @abstractmethod
    def _make(self, value, n_rows: int):
        """A fresh sklearn estimator for one hyper-parameter value and ``n_rows`` training rows."""

    @abstractmethod
    def _grid(self) -> tuple:
        """Hyper-parameter values tried on the validation split."""

    def _fit_one(self, X: np.ndarray, y: np.ndarray, value):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = make_pipeline(StandardScaler(), self._make(value, len(y))).fit(X, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return model, converged

    def fit(self, train: EmbeddingSet) -> "_PooledSpeakerID":
        """Choose the hyper-parameter on a validation split of ``train``, then refit on all of it."""
        t0 = time.perf_counter()
        if train.n_speakers < 2:
            raise CorpusError(f"speaker ID needs >= 2 training speakers, got {train.n_speakers}")
        X, y = train.pooled, train.speakers
        self.val_scores_ = {}
        grid = self._grid()
        if len(grid) > 1:
            inner = utterance_split(y, test_fraction=self.val_fraction, seed=self.seed + 1)
            if inner.dropped_speakers:
                keep = np.setdiff1d(np.arange(len(y)), np.concatenate([inner.train, inner.test]))
                inner_train = np.concatenate([inner.train, keep])
            else:
                inner_train = inner.train
            for value in grid:
                model, _ = self._fit_one(X[inner_train], y[inner_train], value)
                self.val_scores_[str(value)] = float(np.mean(model.predict(X[inner.test]) == y[inner.test]))
            self.best_ = grid[int(np.argmax([self.val_scores_[str(v)] for v in grid]))]
        else:
            self.best_ = grid[0]
        self.validation_score_ = max(self.val_scores_.values()) if self.val_scores_ else 0.0
        self.model_, self.converged_ = self._fit_one(X, y, self.best_)
        self.train_ = train
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _budget(self) -> dict:
        return {"n_train": len(self.train_), "n_features": int(self.train_.pooled.shape[1]),
                "n_speakers": self.train_.n_speakers, self.grid_name: self.best_,
                "validation_scores": self.val_scores_, "fit_seconds": round(self.fit_seconds_, 3)}

    def evaluate(self, test: EmbeddingSet) -> AttackResult:
        """Score the fitted attacker on held-out utterances of the training speakers."""
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(train) first")
        classes = self.model_.classes_
        metrics = closed_set_metrics(self.model_.predict_proba(test.pooled), classes, test.speakers,
                                     n_boot=self.n_boot, seed=self.seed)
        curve = []
        for frac in CURVE_FRACTIONS:
            if frac == 1.0:
                acc = metrics["top1"]
            else:
                sub = stratified_fraction(self.train_.speakers, frac, self.seed)
                model, _ = self._fit_one(self.train_.pooled[sub], self.train_.speakers[sub], self.best_)
                acc = float(np.mean(model.predict(test.pooled) == test.speakers))
            curve.append({"fraction": frac, "top1": acc})
        return AttackResult("speaker_id", self.attacker, metrics, chance=1.0 / len(classes),
                            budget=self._budget(), learning_curve=curve, converged=self.converged_)


class LogisticSpeakerID(_PooledSpeakerID):
    """Multinomial logistic regression on standardised pooled embeddings (C chosen on validation)."""

    attacker = "logreg"
    grid_name = "C"

    def __init__(self, *, C_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), max_iter: int = 2000,
                 val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000) -> None:
        super().__init__(val_fraction=val_fraction, seed=seed, n_boot=n_boot)
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
                 max_iter: int = 300, val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000) -> None:
        super().__init__(val_fraction=val_fraction, seed=seed, n_boot=n_boot)
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
class SpeakerIDSettings:
    """Closed-set speaker identification settings (TOML section ``[speaker_id]``).

    ``attackers``: any of ``logreg``, ``mlp`` (pooled embeddings) and ``frame`` (an ECAPA-TDNN
    trained from scratch on the frame-level sequence); ``frame_max_epochs``, ``frame_channels``
    (TDNN width) and ``frame_max_train_frames`` (frames cached for training) bound its budget,
    sized so a layer trains in minutes on 2 CPU cores.
    """

    attackers: list[str] = field(default_factory=lambda: list(ATTACKER_NAMES))
    test_fraction: float = 0.3
    n_boot: int = 1000
    frame_max_epochs: int = 20
    frame_channels: int = 128
    frame_max_train_frames: int = 200_000

    def validate(self, prefix: str = "speaker_id.") -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        for name in self.attackers:
            if name not in ATTACKER_NAMES:
                raise ConfigError(f"{prefix}attackers: unknown attacker {name!r} (known: {', '.join(ATTACKER_NAMES)})")
        if not self.attackers:
            raise ConfigError(f"{prefix}attackers: must name at least one attacker")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"{prefix}test_fraction={self.test_fraction!r}: must be in (0, 1)")
        if self.n_boot < 100:
            raise ConfigError(f"{prefix}n_boot={self.n_boot!r}: must be >= 100 for a meaningful 95% CI")
        from attacks.frame_speaker_id import check_frame_budget

        check_frame_budget(self, prefix)

    def weakening(self) -> list[str]:
        """Settings that make this attack family weaker than the full suite."""
        weak = []
        if "frame" not in self.attackers:
            weak.append("speaker_id: no frame-level attacker (pooled attackers only)")
        if self.attackers == ["logreg"]:
            weak.append("speaker_id: logistic regression only (no non-linear attacker)")
        if self.frame_max_epochs < 10 and "frame" in self.attackers:
            weak.append(f"speaker_id.frame_max_epochs={self.frame_max_epochs}: tiny frame-attacker budget")
        return weak


def run_speaker_id(view: EmbeddingSet, settings: SpeakerIDSettings, *, seed: int, frame_rate: float,
                   out_dir: Path | None = None) -> dict:
    """All configured closed-set attackers on one layer; the headline is the strongest on test (worst case).

    The split is utterance-level (same speakers, held-out utterances), deterministic from ``seed``.
    """
    split = utterance_split(view.speakers, test_fraction=settings.test_fraction, seed=seed)
    train, test = view.subset(split.train), view.subset(split.test)
    fitted, results = {}, {}
    for name in settings.attackers:
        if name == "frame":
            if view.frame_source is None:
                results[name] = AttackResult.skip("speaker_id", "frame", "pooled-only layer: no frames").to_dict()
                continue
            from attacks.frame_speaker_id import budgeted_frame_attacker

            attacker = budgeted_frame_attacker(settings, seed=seed, frame_rate=frame_rate, n_boot=settings.n_boot)
        else:
            attacker = POOLED_ATTACKERS[name](seed=seed, n_boot=settings.n_boot)
        fitted[name] = attacker.fit(train)
        results[name] = attacker.evaluate(test).to_dict()
    scored = [n for n in fitted if results[n].get("top1") is not None]
    strongest = max(scored, key=lambda n: results[n]["top1"])
    headline = dict(results[strongest])
    headline["strongest_by"] = (f"highest test top-1 of {len(scored)} attackers (worst case for privacy); each "
                                "attacker's hyper-parameters were chosen on validation data only")
    headline["validation_pick"] = max(fitted, key=lambda n: fitted[n].validation_score_)
    headline["attackers"] = results
    headline["split"] = split.describe()
    return headline
