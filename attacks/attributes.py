"""Attribute inference on unseen speakers: gender, speech rate, and a linear CCA probe.

Threat: the attacker holds embeddings labelled with an attribute (gender, speaking rate) for
speakers of its own and infers the attribute for other people. Evaluation is therefore
speaker-disjoint (:func:`attribute_split`): on an utterance-level split an attacker could
just recognise the speaker and recall the speaker's attribute, which measures speaker
leakage, not attribute leakage.

Attackers (standardised pooled embeddings, hyper-parameters chosen on validation speakers
split off the training speakers, never on test):

* :class:`GenderInference`: logistic regression; accuracy and ROC AUC;
* :class:`SpeechRateRegression`: one-hidden-layer MLP or ridge regression (chosen on
  validation) on a standardised target; MSE, MAE, R² next to the train-mean baseline;
* :class:`CCAProbe`: linear CCA between the layer (PCA-reduced) and a scalar attribute
  (:func:`cca_correlation`).

Confidence intervals resample test speakers (:func:`audit.metrics.speaker_bootstrap_ci`),
stratified by class for categorical attributes, because utterances of one speaker share the
attribute and are not independent.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError
from audit.estimators import MIN_EARLY_STOPPING_ROWS, check_is_fitted, fit_quiet, grid_search, learning_curve
from audit.family import AttackFamily, FamilySettings, LayerContext, check_range
from audit.metrics import CI_METHOD, DegenerateBootstrap, leakage_ci, regression_scores, roc_auc
from audit.measures import Bands, Figure, Measure
from audit.results import (AttackResult, RiskRating, Table, fmt_ci, fmt_num, fmt_pct, is_ok, layer_attack,
                           skip_cell)
from audit.splits import Split, speaker_disjoint_split
from audit.summary import layer_figures, rate_layers, worst_rating

MIN_NUMERIC_ROWS = 10
#: Below this relative spread (std / mean) of voiced durations, speech rate only measures transcript length.
MIN_VOICED_SPREAD = 0.02


def is_numeric_attribute(values: np.ndarray) -> bool:
    """True when every known (non-None) value is a real number (not a string or bool)."""
    known = [v for v in values if v is not None]
    return bool(known) and all(isinstance(v, (int, float, np.integer, np.floating))
                               and not isinstance(v, (bool, np.bool_)) for v in known)


def speaker_values(speakers: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """Each speaker's most frequent known value (None when all of its values are unknown)."""
    out: dict[str, Any] = {}
    for spk in np.unique(speakers):
        known = [v for v in values[speakers == spk] if v is not None]
        out[str(spk)] = Counter(map(str, known)).most_common(1)[0][0] if known else None
    return out


def attribute_split(speakers: np.ndarray, values: np.ndarray, *, test_fraction: float = 0.3,
                    val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Speaker-disjoint split stratified by a categorical per-speaker attribute.

    Speakers are grouped by their most frequent known value (:func:`speaker_values`; unknown
    is a group of its own). Within each group of ``n`` speakers, shuffled with
    ``np.random.default_rng(seed)``, ``round(test_fraction * n)`` go to test and
    ``round(val_fraction * n)`` to validation, with at least one test speaker when ``n >= 2``,
    at least one validation speaker when ``val_fraction > 0`` and ``n >= 3``, and at least one
    training speaker always; so every class with two or more speakers appears in train and
    test. Numeric attributes are not stratified: the split is
    :func:`audit.splits.speaker_disjoint_split`.

    Raises :class:`CorpusError` when the split leaves no test speaker or fewer than two
    training speakers.
    """
    speakers = np.asarray(speakers).astype(str)
    values = np.asarray(values, dtype=object)
    if not 0 < test_fraction < 1:
        raise CorpusError(f"attribute split test_fraction={test_fraction!r} must be in (0, 1)")
    if not 0 <= val_fraction < 1 - test_fraction:
        raise CorpusError(f"attribute split val_fraction={val_fraction!r} must be in [0, 1 - test_fraction)")
    if is_numeric_attribute(values):
        return speaker_disjoint_split(speakers, test_fraction=test_fraction, val_fraction=val_fraction,
                                      seed=seed, min_test_speakers=1)
    per_speaker = speaker_values(speakers, values)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for value in sorted({v for v in per_speaker.values() if v is not None}) + [None]:
        group = np.array(sorted(s for s, v in per_speaker.items() if v == value))
        group = group[rng.permutation(group.size)]
        n = group.size
        n_test = min(n - 1, max(1, round(test_fraction * n))) if n >= 2 else 0
        n_val = min(n - n_test - 1, round(val_fraction * n))
        if val_fraction > 0 and n >= 3:
            n_val = max(1, n_val)
        parts["test"] += group[:n_test].tolist()
        parts["val"] += group[n_test:n_test + n_val].tolist()
        parts["train"] += group[n_test + n_val:].tolist()
    if not parts["test"] or len(parts["train"]) < 2:
        raise CorpusError(
            f"attribute split impossible: {len(per_speaker)} speakers give {len(parts['test'])} test and "
            f"{len(parts['train'])} training speakers (test_fraction={test_fraction}, val_fraction={val_fraction}); "
            "need >= 1 test and >= 2 training speakers"
        )
    rows = {k: np.flatnonzero(np.isin(speakers, v)) for k, v in parts.items()}
    return Split(rows["train"], rows["val"], rows["test"], "speaker-disjoint-stratified", seed)


def _speaker_counts_stat(speaker_idx: np.ndarray, stat: Any) -> Any:
    """Adapt ``stat(row_index)`` to :func:`speaker_bootstrap_ci`'s ``stat(counts)``."""
    rows = np.arange(speaker_idx.size)
    return lambda counts: stat(np.repeat(rows, counts[speaker_idx]))


def _bootstrap(stat: Any, speakers: np.ndarray, labels: np.ndarray | None, *, n_boot: int,
               seed: int, binomial: tuple[int, int] | None = None) -> tuple[float, float]:
    """:func:`audit.metrics.leakage_ci` of ``stat(rows)`` over speakers, stratified by each speaker's label."""
    names, speaker_idx = np.unique(speakers, return_inverse=True)
    strata = None
    if labels is not None:
        per = speaker_values(speakers, labels.astype(object))
        strata = np.array([per[str(s)] for s in names])
    min_distinct = 1 if names.size < 2 else 2
    return leakage_ci(_speaker_counts_stat(speaker_idx, stat), names.size, binomial=binomial, strata=strata,
                      n_boot=n_boot, seed=seed, min_distinct=min_distinct)[0]


class ClippedRegressor:
    """A regressor whose predictions are clipped to the range of its training targets.

    An attacker knows the plausible range of what it infers (speaking rates of real people);
    clipping keeps a regressor that extrapolates wildly on unseen speakers from scoring far
    below the predict-the-mean baseline, which would understate what it could learn.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ClippedRegressor":
        self.model_ = self.model.fit(X, y)
        self.low_, self.high_ = float(np.min(y)), float(np.max(y))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.clip(self.model_.predict(X), self.low_, self.high_)


class _AttributeAttack(ABC):
    """Shared fit/evaluate: known-value rows, validation speakers, refit, learning curve."""

    attack = ""
    attacker = ""
    grid_name = ""
    curve_metric = ""

    def __init__(self, *, attribute: str, val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000) -> None:
        self.attribute = attribute
        self.val_fraction = val_fraction
        self.seed = seed
        self.n_boot = n_boot

    @abstractmethod
    def _grid(self) -> tuple:
        """Hyper-parameter values tried on the validation speakers."""

    @abstractmethod
    def _default(self) -> Any:
        """Hyper-parameter used when no validation split is possible."""

    @abstractmethod
    def _make(self, value: Any, n_rows: int) -> Any:
        """A fresh estimator for one hyper-parameter value."""

    @abstractmethod
    def _targets(self, values: np.ndarray, *, training: bool) -> tuple[np.ndarray, np.ndarray, str | None]:
        """Usable rows, their targets, and a skip reason (None when usable)."""

    @abstractmethod
    def _val_score(self, model: Any, X: np.ndarray, y: np.ndarray) -> float:
        """Validation score, higher is better."""

    @abstractmethod
    def _metrics(self, X: np.ndarray, y: np.ndarray, speakers: np.ndarray) -> dict:
        """Test metrics of the fitted model."""

    @abstractmethod
    def _curve_value(self, model: Any, X: np.ndarray, y: np.ndarray) -> float:
        """The learning-curve metric of a model on the test rows."""

    def _chance(self, y: np.ndarray) -> float | None:
        return None

    def _attacker_name(self) -> str:
        """Name of the fitted attacker written into the result."""
        return self.attacker

    def _labels(self, y: np.ndarray) -> np.ndarray | None:
        """Per-row class labels used to stratify speaker resampling (None: unstratified)."""
        return None

    def _values(self, data: EmbeddingSet) -> np.ndarray:
        values = data.attributes.get(self.attribute)
        return np.full(len(data), None, dtype=object) if values is None else np.asarray(values, dtype=object)

    def _unknown_reason(self, data: EmbeddingSet, split: str) -> str:
        known = sorted(k for k, v in data.attributes.items() if any(x is not None for x in v))
        hint = "; speech_rate needs transcripts" if self.attribute == "speech_rate" else ""
        return (f"no known values of attribute {self.attribute!r} in the {split} split "
                f"(known attributes: {known}{hint})")

    def fit(self, train: EmbeddingSet) -> "_AttributeAttack":
        """Choose the hyper-parameter on validation speakers of ``train``, refit on all of it.

        An unusable training split (no known values, one class, too few rows) does not raise:
        the reason is kept in ``skip_reason_`` and :meth:`evaluate` returns a skipped result.
        """
        t0 = time.perf_counter()
        values = self._values(train)
        rows, y, reason = self._targets(values, training=True)
        self.skip_reason_ = self._unknown_reason(train, "training") if rows.size == 0 else reason
        self.val_scores_: dict[str, float] = {}
        if self.skip_reason_ is not None:
            return self
        self.X_ = train.pooled[rows].astype(np.float64)
        self.y_ = y
        self.speakers_ = train.speakers[rows]
        self.best_, self.selection_ = self._select(self.X_, y, self.speakers_, values[rows])
        self.model_, self.converged_ = fit_quiet(self._make(self.best_, len(y)), self.X_, y)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _select(self, X: np.ndarray, y: np.ndarray, speakers: np.ndarray, values: np.ndarray) -> tuple[Any, str]:
        grid = self._grid()
        try:
            inner = attribute_split(speakers, values, test_fraction=self.val_fraction, val_fraction=0.0,
                                    seed=self.seed + 1)
        except CorpusError as err:
            return self._default(), f"default (no validation split possible: {err})"
        reason = self._targets(values[inner.train], training=True)[2]
        if reason is not None:
            return self._default(), f"default (validation split unusable: {reason})"

        def score(value: Any) -> float:
            model, _ = fit_quiet(self._make(value, inner.train.size), X[inner.train], y[inner.train])
            return self._val_score(model, X[inner.test], y[inner.test])

        best, self.val_scores_ = grid_search(grid, score)
        return best, f"validation speakers ({np.unique(speakers[inner.test]).size} of {np.unique(speakers).size})"

    def _curve_rows(self, fraction: float) -> np.ndarray:
        """Training rows of a seeded ``fraction`` of the training speakers, stratified like the split."""
        labels = self._labels(self.y_)
        per = speaker_values(self.speakers_, (labels if labels is not None else np.zeros(self.y_.size)).astype(object))
        rng = np.random.default_rng(self.seed)
        keep: list[str] = []
        for value in sorted(set(per.values())):
            group = np.array(sorted(s for s, v in per.items() if v == value))
            group = group[rng.permutation(group.size)]
            keep += group[: max(1, int(round(fraction * group.size)))].tolist()
        return np.flatnonzero(np.isin(self.speakers_, keep))

    def evaluate(self, test: EmbeddingSet) -> AttackResult:
        """Metrics on the (unseen) test speakers, or a skipped result naming the problem."""
        check_is_fitted(self, "skip_reason_")
        if self.skip_reason_ is not None:
            return AttackResult.skip(self.attack, self.attacker, self.skip_reason_)
        rows, y, reason = self._targets(self._values(test), training=False)
        if rows.size == 0:
            reason = self._unknown_reason(test, "test")
        if reason is not None:
            return AttackResult.skip(self.attack, self.attacker, reason)
        X, speakers = test.pooled[rows].astype(np.float64), test.speakers[rows]
        try:
            metrics = self._metrics(X, y, speakers)
        except DegenerateBootstrap as err:
            return AttackResult.skip(self.attack, self.attacker, f"no CI for attribute {self.attribute!r}: {err}")

        def refit(fraction: float) -> float:
            sub = self._curve_rows(fraction)
            model, _ = fit_quiet(self._make(self.best_, sub.size), self.X_[sub], self.y_[sub])
            return self._curve_value(model, X, y)

        curve = learning_curve(self.curve_metric, self._curve_value(self.model_, X, y), refit)
        return AttackResult(self.attack, self._attacker_name(), metrics, chance=self._chance(y), budget=self._budget(),
                            learning_curve=curve, converged=self.converged_)

    def _budget(self) -> dict:
        return {"n_train": int(self.y_.size), "n_train_speakers": int(np.unique(self.speakers_).size),
                "n_features": int(self.X_.shape[1]), "attribute": self.attribute, self.grid_name: self.best_,
                "selection": self.selection_, "validation_scores": self.val_scores_,
                "fit_seconds": round(self.fit_seconds_, 3)}


class GenderInference(_AttributeAttack):
    """Logistic regression of a categorical attribute (default ``gender``) on unseen speakers.

    Parameters
    ----------
    attribute : str, default="gender"
        Attribute name in ``EmbeddingSet.attributes``; rows with an unknown value are dropped.
    C_grid : tuple of float, default=(0.01, 0.1, 1, 10)
        Inverse regularisation strengths tried; chosen by validation log-loss on validation
        speakers split off the training speakers.
    max_iter : int, default=2000
    val_fraction : float, default=0.25
        Fraction of training speakers (per class) held out for validation.
    seed : int, default=0
    n_boot : int, default=1000
    """

    attack = "attribute"
    attacker = "logreg"
    grid_name = "C"
    curve_metric = "accuracy"

    def __init__(self, *, attribute: str = "gender", C_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
                 max_iter: int = 2000, val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000) -> None:
        super().__init__(attribute=attribute, val_fraction=val_fraction, seed=seed, n_boot=n_boot)
        self.C_grid = C_grid
        self.max_iter = max_iter

    def _grid(self) -> tuple:
        return tuple(self.C_grid)

    def _default(self) -> float:
        return 1.0 if 1.0 in self.C_grid else self.C_grid[len(self.C_grid) // 2]

    def _make(self, value: float, n_rows: int) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=value, max_iter=self.max_iter,
                                                                  random_state=self.seed))

    def _targets(self, values: np.ndarray, *, training: bool) -> tuple[np.ndarray, np.ndarray, str | None]:
        rows = np.flatnonzero([v is not None for v in values])
        y = np.array([str(v) for v in values[rows]], dtype=object)
        split = "training" if training else "test"
        classes = sorted(set(y.tolist()))
        if not classes:
            return rows, y, None
        if len(classes) < 2:
            return rows, y, f"one-class attribute {self.attribute!r} in the {split} split (only {classes[0]!r})"
        if not training:
            unseen = sorted(set(classes) - set(self.model_.classes_.tolist()))
            if unseen:
                return rows, y, (f"attribute {self.attribute!r} values {unseen} in the test split never seen in "
                                 "training")
        return rows, y, None

    def _labels(self, y: np.ndarray) -> np.ndarray:
        return y

    def _chance(self, y: np.ndarray) -> float:
        return max(Counter(y.tolist()).values()) / y.size

    def _val_score(self, model: Any, X: np.ndarray, y: np.ndarray) -> float:
        return -float(log_loss(y, model.predict_proba(X), labels=model.classes_))

    def _auc(self, proba: np.ndarray, y: np.ndarray) -> float:
        """Binary AUC of the second class, or macro one-vs-rest AUC over classes present in ``y``."""
        classes = self.model_.classes_
        if classes.size == 2:
            return roc_auc(proba[:, 1], y == classes[1])
        present = [k for k, c in enumerate(classes) if 0 < np.sum(y == c) < y.size]
        return float(np.mean([roc_auc(proba[:, k], y == classes[k]) for k in present])) if present else math.nan

    def _metrics(self, X: np.ndarray, y: np.ndarray, speakers: np.ndarray) -> dict:
        """Accuracy and ROC AUC with speaker-level bootstrap CIs (stratified by class).

        ``accuracy`` = share of test rows whose most probable class is the true one;
        ``roc_auc`` = Mann-Whitney AUC (:func:`audit.metrics.roc_auc`) of the probability of
        ``positive_class`` (the second class in sorted order); with more than two classes the
        mean of one-vs-rest AUCs.
        """
        proba = self.model_.predict_proba(X)
        correct = self.model_.classes_[np.argmax(proba, axis=1)] == y
        counts = Counter(y.tolist())
        auc = self._auc(proba, y)
        n_auc = min(counts.values())
        ci_acc = _bootstrap(lambda r: float(np.mean(correct[r])), speakers, y, n_boot=self.n_boot, seed=self.seed,
                            binomial=(int(correct.sum()), int(correct.size)))
        ci_auc = _bootstrap(lambda r: self._auc(proba[r], y[r]), speakers, y, n_boot=self.n_boot, seed=self.seed,
                            binomial=(int(round(auc * n_auc)), n_auc) if math.isfinite(auc) else None)
        return {"attribute": self.attribute, "accuracy": float(np.mean(correct)), "ci95": list(ci_acc), "roc_auc": auc,
                "auc_ci95": list(ci_auc), "positive_class": str(self.model_.classes_[-1]),
                "n_test": int(y.size), "n_test_speakers": int(np.unique(speakers).size),
                "class_counts": {str(k): int(counts[k]) for k in sorted(counts)}, "ci_method": CI_METHOD}

    def _curve_value(self, model: Any, X: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(model.predict(X) == y))

    def _budget(self) -> dict:
        return {**super()._budget(), "max_iter": self.max_iter, "n_iter": int(self.model_[-1].n_iter_.max())}


class SpeechRateRegression(_AttributeAttack):
    """Regression of a numeric attribute (default ``speech_rate``, chars/s) on unseen speakers.

    Two model families compete on validation speakers: a one-hidden-layer MLP (Adam, early
    stopping on a 10% row split of the fitting data, at most ``max_iter`` epochs) over
    ``alpha_grid`` and ridge regression over ``ridge_grid``. The MLP alone is a weak attacker
    on a few hundred utterances (a layer with a strong linear relation to the rate can give a
    negative R²), and a weak attacker understates leakage, so the pair with the lowest
    validation MSE is refit on all training speakers and named in the result. Inputs and
    target are standardised on the training rows (the target through
    ``TransformedTargetRegressor``), and predictions are clipped to the training targets' range
    (:class:`ClippedRegressor`). Rows with an unknown value (no transcript) are dropped;
    fewer than 10 usable rows in a split skips the attack.

    Parameters
    ----------
    attribute : str, default="speech_rate"
    hidden : int, default=128
    alpha_grid : tuple of float, default=(1e-3, 1e-1, 10.0)
        MLP L2 penalties tried.
    ridge_grid : tuple of float, default=(1.0, 10.0, 100.0, 1000.0, 10000.0)
        Ridge penalties tried (on standardised inputs); empty to use the MLP only.
    max_iter : int, default=200
    val_fraction : float, default=0.25
    seed : int, default=0
    n_boot : int, default=1000
    """

    attack = "attribute"
    attacker = "mlp|ridge"
    grid_name = "model"
    curve_metric = "r2"

    def __init__(self, *, attribute: str = "speech_rate", hidden: int = 128,
                 alpha_grid: tuple[float, ...] = (1e-3, 1e-1, 10.0),
                 ridge_grid: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0), max_iter: int = 200,
                 val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000) -> None:
        super().__init__(attribute=attribute, val_fraction=val_fraction, seed=seed, n_boot=n_boot)
        self.hidden = hidden
        self.alpha_grid = alpha_grid
        self.ridge_grid = ridge_grid
        self.max_iter = max_iter

    def _grid(self) -> tuple:
        return tuple(f"mlp(alpha={a:g})" for a in self.alpha_grid) + tuple(f"ridge(alpha={a:g})" for a in self.ridge_grid)

    def _default(self) -> str:
        if self.ridge_grid:
            return f"ridge(alpha={self.ridge_grid[len(self.ridge_grid) // 2]:g})"
        return f"mlp(alpha={self.alpha_grid[len(self.alpha_grid) // 2]:g})"

    def _make(self, value: str, n_rows: int) -> Any:
        kind, alpha = value.split("(alpha=")
        alpha = float(alpha.rstrip(")"))
        if kind == "ridge":
            model = Ridge(alpha=alpha)
        else:
            model = MLPRegressor(hidden_layer_sizes=(self.hidden,), alpha=alpha, max_iter=self.max_iter,
                                 early_stopping=n_rows >= MIN_EARLY_STOPPING_ROWS, random_state=self.seed)
        return ClippedRegressor(TransformedTargetRegressor(regressor=make_pipeline(StandardScaler(), model),
                                                           transformer=StandardScaler()))

    def _attacker_name(self) -> str:
        return self.best_.split("(")[0]

    def _targets(self, values: np.ndarray, *, training: bool) -> tuple[np.ndarray, np.ndarray, str | None]:
        split = "training" if training else "test"
        rows = np.flatnonzero([v is not None for v in values])
        if rows.size and not is_numeric_attribute(values[rows]):
            return rows, np.zeros(0), f"attribute {self.attribute!r} is not numeric in the {split} split"
        y = values[rows].astype(np.float64)
        if rows.size < MIN_NUMERIC_ROWS:
            return rows, y, (f"attribute {self.attribute!r} known for only {rows.size} {split} utterances "
                             f"(< {MIN_NUMERIC_ROWS}; speech_rate needs transcripts and durations)")
        return rows, y, None

    def _val_score(self, model: Any, X: np.ndarray, y: np.ndarray) -> float:
        return -float(np.mean((model.predict(X) - y) ** 2))

    def _metrics(self, X: np.ndarray, y: np.ndarray, speakers: np.ndarray) -> dict:
        """MSE, MAE, R² and the train-mean baseline MSE (:func:`audit.metrics.regression_scores`).

        ``r2`` uses the test mean; ``baseline_mse`` predicts the training mean for every row.
        The CI of R² resamples test speakers. Chance is R² = 0 (predicting the mean).
        """
        pred = self.model_.predict(X)
        scores = regression_scores(y, pred, train_mean=float(self.y_.mean()))
        ci = _bootstrap(lambda r: regression_scores(y[r], pred[r], train_mean=float(self.y_.mean()))["r2"],
                        speakers, None, n_boot=self.n_boot, seed=self.seed)
        return {"attribute": self.attribute, **scores, "ci95": list(ci), "n_test": int(y.size), "n_test_speakers": int(np.unique(speakers).size),
                "unit": "characters per second" if self.attribute == "speech_rate" else None, "ci_method": CI_METHOD}

    def _curve_value(self, model: Any, X: np.ndarray, y: np.ndarray) -> float:
        return regression_scores(y, model.predict(X), train_mean=float(self.y_.mean()))["r2"]

    def _chance(self, y: np.ndarray) -> float:
        return 0.0

    def _budget(self) -> dict:
        model = self.model_.model_.regressor_[-1]
        clip = {"prediction_range": [self.model_.low_, self.model_.high_]}
        if isinstance(model, Ridge):
            return {**super()._budget(), **clip, "solver": "closed-form ridge"}
        return {**super()._budget(), **clip, "hidden": self.hidden, "max_iter": self.max_iter, "epochs": int(model.n_iter_),
                "early_stopping": bool(model.early_stopping)}


def _fit_cca(X: np.ndarray, y: np.ndarray, max_dims: int | None,
             seed: int) -> tuple[StandardScaler, PCA, np.ndarray, float]:
    """Standardise + PCA on ``X`` and the least-squares direction ``w``; returns ``(scaler, pca, w, y_mean)``."""
    n, d = X.shape
    k = min(max_dims or 32, n // 4, d)
    if k < 1:
        raise ValueError(f"CCA needs >= 4 training rows, got {n}")
    scaler = StandardScaler().fit(X)
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(scaler.transform(X))
    Z = pca.transform(scaler.transform(X))
    keep = pca.explained_variance_ > 1e-10 * max(pca.explained_variance_[0], 1e-300)
    w = np.zeros(k)
    w[keep] = np.linalg.lstsq(Z[:, keep], y - y.mean(), rcond=None)[0]
    return scaler, pca, w, float(y.mean())


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else math.nan


def cca_correlation(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, test_y: np.ndarray, *,
                    max_dims: int | None = None, seed: int = 0) -> float:
    """Held-out linear CCA correlation between a layer and a scalar attribute.

    ``X`` is standardised and reduced by PCA fit on the training rows to
    ``k = min(max_dims or 32, n_train // 4, D)`` dimensions (randomized SVD seeded by ``seed``;
    components with zero variance are ignored). With a one-dimensional target the first canonical direction of ``X`` is the
    least-squares regression direction ``w = argmin ||Z w - (y - mean y)||``, and the target's
    direction is the target itself. Returned: the Pearson correlation of ``Z_test w`` and
    ``y_test`` on the TEST rows (signed; near 0 when the layer carries no linear information).

    Parameters
    ----------
    train_X, test_X : ndarray of shape (n, D)
    train_y, test_y : ndarray of shape (n,)
        Numeric targets (categorical ones encoded 0/1).
    max_dims : int or None, default=None
    seed : int, default=0

    Returns
    -------
    float
        NaN when the test target or projection is constant.
    """
    scaler, pca, w, _ = _fit_cca(np.asarray(train_X, dtype=np.float64), np.asarray(train_y, dtype=np.float64),
                                 max_dims, seed)
    proj = pca.transform(scaler.transform(np.asarray(test_X, dtype=np.float64))) @ w
    return _correlation(proj, np.asarray(test_y, dtype=np.float64))


class CCAProbe:
    """Linear CCA probe of one attribute (:func:`cca_correlation`) with a speaker-bootstrap CI.

    Numeric attributes are used as they are; binary categorical ones are encoded 0/1 (sorted
    values of the training split); other attributes are skipped.

    Parameters
    ----------
    attribute : str
    max_dims : int or None, default=None
    seed : int, default=0
    n_boot : int, default=1000
    """

    attack = "cca"
    attacker = "linear-cca"

    def __init__(self, *, attribute: str, max_dims: int | None = None, seed: int = 0, n_boot: int = 1000) -> None:
        self.attribute = attribute
        self.max_dims = max_dims
        self.seed = seed
        self.n_boot = n_boot

    def _encode(self, data: EmbeddingSet, split: str) -> tuple[np.ndarray, np.ndarray, str | None]:
        values = data.attributes.get(self.attribute)
        values = np.full(len(data), None, dtype=object) if values is None else np.asarray(values, dtype=object)
        rows = np.flatnonzero([v is not None for v in values])
        if rows.size < MIN_NUMERIC_ROWS:
            return rows, np.zeros(0), (f"attribute {self.attribute!r} known for only {rows.size} {split} "
                                       f"utterances (< {MIN_NUMERIC_ROWS})")
        if is_numeric_attribute(values[rows]):
            return rows, values[rows].astype(np.float64), None
        labels = np.array([str(v) for v in values[rows]])
        if split == "test" and self.classes_ is None:
            return rows, np.zeros(0), f"attribute {self.attribute!r} is numeric in training but not in the test split"
        if split == "training":
            self.classes_ = sorted(set(labels.tolist()))
            if len(self.classes_) != 2:
                return rows, np.zeros(0), (f"CCA needs a numeric or two-valued attribute; {self.attribute!r} has "
                                           f"{len(self.classes_)} value(s) in the training split")
        unseen = sorted(set(labels.tolist()) - set(self.classes_))
        if unseen:
            return rows, np.zeros(0), (f"attribute {self.attribute!r} values {unseen} in the {split} split "
                                       "never seen in training")
        if np.unique(labels).size < 2:
            return rows, np.zeros(0), f"one-class attribute {self.attribute!r} in the {split} split"
        return rows, (labels == self.classes_[1]).astype(np.float64), None

    def fit(self, train: EmbeddingSet) -> "CCAProbe":
        """Fit the standardisation, PCA and least-squares direction on the training rows."""
        self.classes_ = None
        rows, y, self.skip_reason_ = self._encode(train, "training")
        if self.skip_reason_ is not None:
            return self
        X = train.pooled[rows].astype(np.float64)
        self.scaler_, self.pca_, self.w_, _ = _fit_cca(X, y, self.max_dims, self.seed)
        self.train_cca_ = _correlation(self.pca_.transform(self.scaler_.transform(X)) @ self.w_, y)
        self.n_train_ = int(rows.size)
        return self

    def evaluate(self, test: EmbeddingSet) -> AttackResult:
        """Test-row canonical correlation ``cca`` with ``ci95`` over test speakers; chance 0."""
        check_is_fitted(self, "skip_reason_")
        if self.skip_reason_ is not None:
            return AttackResult.skip(self.attack, self.attacker, self.skip_reason_)
        rows, y, reason = self._encode(test, "test")
        if reason is not None:
            return AttackResult.skip(self.attack, self.attacker, reason)
        proj = self.pca_.transform(self.scaler_.transform(test.pooled[rows].astype(np.float64))) @ self.w_
        r = _correlation(proj, y)
        if not math.isfinite(r):
            return AttackResult.skip(self.attack, self.attacker,
                                     f"attribute {self.attribute!r} or its projection is constant on the test rows")
        speakers = test.speakers[rows]
        labels = y.astype(object) if self.classes_ is not None else None
        try:
            ci = _bootstrap(lambda i: _correlation(proj[i], y[i]), speakers, labels, n_boot=self.n_boot, seed=self.seed)
        except DegenerateBootstrap as err:
            return AttackResult.skip(self.attack, self.attacker, f"no CI for attribute {self.attribute!r}: {err}")
        metrics = {"cca": r, "ci95": list(ci), "train_cca": self.train_cca_, "n_test": int(y.size),
                   "n_test_speakers": int(np.unique(speakers).size), "ci_method": CI_METHOD,
                   "encoding": None if self.classes_ is None else {self.classes_[0]: 0, self.classes_[1]: 1}}
        budget = {"n_train": self.n_train_, "dims": int(self.pca_.n_components_), "max_dims": self.max_dims,
                  "attribute": self.attribute}
        return AttackResult(self.attack, self.attacker, metrics, chance=0.0, budget=budget, converged=True)


@dataclass
class AttributeSettings(FamilySettings):
    """Attribute-inference settings (TOML section ``[attributes]``).

    ``categorical`` attributes get a classifier (accuracy, ROC AUC) and ``numeric`` ones a
    regressor (MSE, MAE, R²); every one of them also gets the linear CCA probe. An attribute
    the corpus lacks, or that has one class, is skipped with the reason recorded. The split is
    speaker-disjoint, stratified by the first categorical attribute; hyper-parameters are
    chosen on validation speakers split off the training speakers inside each attacker.
    """

    BUDGET = ("n_boot",)
    QUICK = {"n_boot": 200}

    categorical: list[str] = field(default_factory=lambda: ["gender"])
    numeric: list[str] = field(default_factory=lambda: ["speech_rate"])
    test_fraction: float = 0.3
    n_boot: int = 1000

    def validate(self, prefix: str = "attributes.") -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        check_range(prefix, "test_fraction", self.test_fraction, 0, 1)
        if self.n_boot < 100:
            raise ConfigError(f"{prefix}n_boot={self.n_boot!r}: must be >= 100 for a meaningful 95% CI")
        both = set(self.categorical) & set(self.numeric)
        if both:
            raise ConfigError(f"{prefix}: {sorted(both)} listed as both categorical and numeric")


def split_attributes(labels: EmbeddingSet, settings: AttributeSettings, seed: int) -> Split:
    """Speaker-disjoint split stratified by the first categorical attribute the corpus has (no validation part)."""
    values = np.full(len(labels), None, dtype=object)
    for name in settings.categorical:
        known = labels.attributes.get(name)
        if known is not None and any(v is not None for v in known):
            values = known
            break
    return attribute_split(labels.speakers, values, test_fraction=settings.test_fraction, val_fraction=0.0,
                           seed=seed)


def _voiced_problem(data: EmbeddingSet) -> str | None:
    """Why speech rate is not measurable: voiced durations that do not vary (or are unknown)."""
    voiced = data.attributes.get("voiced_seconds")
    if voiced is None:
        return None
    v = np.array([x for x in voiced if x is not None], dtype=float)
    if v.size and float(np.std(v)) <= MIN_VOICED_SPREAD * max(float(np.mean(v)), 1e-9):
        return (f"speech rate not measurable: voiced durations barely vary (std {np.std(v):.3f} s around "
                f"{np.mean(v):.2f} s), so characters per second would only measure transcript length")
    return None


def attack_attributes(train: EmbeddingSet, test: EmbeddingSet, settings: AttributeSettings,
                      ctx: LayerContext) -> dict:
    """Every configured attribute on one layer: classifier/regressor plus the CCA probe.

    ``train`` and ``test`` hold disjoint speakers; an attribute that cannot be measured is
    recorded as a skip with its reason, and the run goes on.
    """
    seed = ctx.seed
    out: dict[str, Any] = {}
    jobs = [(name, GenderInference(attribute=name, seed=seed, n_boot=settings.n_boot)) for name in settings.categorical]
    jobs += [(name, SpeechRateRegression(attribute=name, seed=seed, n_boot=settings.n_boot)) for name in settings.numeric]
    for name, attacker in jobs:
        values = train.attributes.get(name)
        reason = None
        if values is None or all(v is None for v in values):
            known = sorted(k for k, v in train.attributes.items() if any(x is not None for x in v))
            reason = f"attribute {name!r} not in the corpus (known: {', '.join(known) or 'none'})"
        elif name == "speech_rate":
            reason = _voiced_problem(train)
        if reason is not None:
            out[name] = AttackResult.skip(attacker.attack, attacker.attacker, reason).to_dict()
            out[f"{name}_cca"] = AttackResult.skip("cca", "linear-cca", reason).to_dict()
            continue
        out[name] = attacker.fit(train).evaluate(test).to_dict()
        probe = CCAProbe(attribute=name, seed=seed, n_boot=settings.n_boot)
        out[f"{name}_cca"] = probe.fit(train).evaluate(test).to_dict()
    return out


def attribute_table(results: dict) -> Table:
    """One row per layer: per attribute, the inference metric with CI and the CCA."""
    names: list[str] = []
    for la in results["layers"]:
        for key in (la.get("attacks", {}).get("attributes") or {}):
            if not key.endswith("_cca") and key != "split" and key not in names:
                names.append(key)
    columns = ["layer", "name"] + [c for n in names for c in (f"{n}: metric (95% CI)", f"{n}: CCA")]
    table = Table("Attribute inference per layer (unseen speakers)", columns)
    for la in results["layers"]:
        cells = [str(la["index"]), la["name"]]
        for n in names:
            res = layer_attack(la, "attributes", n)
            cca = layer_attack(la, "attributes", f"{n}_cca")
            if not is_ok(res):
                cells.append(skip_cell(res))
            elif "roc_auc" in res:
                cells.append(f"AUC {fmt_num(res['roc_auc'])} {fmt_ci(res.get('auc_ci95'), 1, '.2f')}, "
                             f"acc {fmt_pct(res['accuracy'])} (chance {fmt_pct(res['chance'])})")
            else:
                cells.append(f"R² {fmt_num(res['r2'])} {fmt_ci(res.get('ci95'), 1, '.2f')}, "
                             f"MAE {fmt_num(res['mae'], '.2f')} ({res['attacker']})")
            cells.append(fmt_num(cca["cca"]) if is_ok(cca) else "n/a")
        table.rows.append(cells)
    source = (results.get("store") or {}).get("duration_source", "the file duration")
    table.notes.append("Gender: logistic regression, accuracy and ROC AUC; speech rate = alphanumeric characters of "
                       f"the transcript / voiced duration ({source}), regressed by an MLP or ridge regression "
                       "(whichever predicts validation speakers better; named in the cell), R² against predicting "
                       "the training mean; CCA = test-set canonical correlation of a linear projection (PCA-reduced "
                       "layer) with the attribute.")
    return table if names else Table(table.title, [])


#: Attribute inference thresholds on the leakiest layer's CI lower bound, per metric:
#: (``high`` at or above, ``medium`` above). AUC 0.9 = a near-certain guess, 0.6 = clearly above a coin
#: flip (0.5); R² 0.5 = half the variance explained, 0.1 = clearly above predicting the mean (0).
RISK_THRESHOLDS = {"roc_auc": (0.9, 0.6), "r2": (0.5, 0.1)}


ATTRIBUTE_BANDS = {metric: Bands(high, medium) for metric, (high, medium) in RISK_THRESHOLDS.items()}

METRICS = (
    Measure("*.roc_auc", True, ci="auc_ci95", chance=0.5, unit="score", label="{key} AUC",
            bands=ATTRIBUTE_BANDS["roc_auc"], headline="{key} (AUC)", slug="attr_{key}_roc_auc",
            plot=False, defense_column=False,  # attributes_by_layer.png and the defense table's attribute cell
            description="a categorical attribute's ROC AUC (gender; chance 0.5 whatever the class balance)"),
    Measure("*.accuracy", True, description="a categorical attribute's accuracy (chance: the majority class)"),
    Measure("*.r2", True, chance="chance", unit="score", low=None, label="{key} R²", bands=ATTRIBUTE_BANDS["r2"],
            headline="{key} (R²)", slug="attr_{key}_r2", plot=False,
            defense_column=False,  # attributes_by_layer.png and the defense table's attribute cell
            description="a numeric attribute's R² (speech rate; 0 = predicting the training mean)"),
    Measure("*.cca", True, chance=None, unit="score", description="canonical correlation with an attribute (key <attr>_cca)"),
)


def rate_attribute_inference(results: dict) -> RiskRating:
    """Risk of inferring unseen people's attributes: each attribute's every layer rated by its CI bounds, the worst kept."""
    names = sorted({k for la in results["layers"] for k, r in (layer_attack(la, "attributes") or {}).items()
                    if isinstance(r, dict) and not k.endswith("_cca") and is_ok(r)})
    ratings = []
    for name in names:
        for measure in (METRICS[0], METRICS[2]):
            metric = measure.pattern.split(".")[-1]
            label = "AUC" if metric == "roc_auc" else "R²"

            def evidence(fig: Figure, name: str = name, label: str = label) -> str:
                return (f"{name} of unseen people: {label} {fmt_num(fig.value)} (CI {fmt_ci(fig.ci95, 1, '.2f')}, "
                        f"chance {fmt_num(fig.chance, '.2f')}) at {fig.where}")

            rating = rate_layers("attribute inference", f"attributes.{name}.{metric}",
                                 layer_figures(results["layers"], ("attributes", name), metric, measure), evidence)
            if rating is not None:
                ratings.append(rating)
    return worst_rating(ratings) or RiskRating("attribute inference", "not measured",
                                               "no attribute could be inferred on any layer")


FAMILY = AttackFamily(
    name="attributes", settings=AttributeSettings, split=split_attributes, attack=attack_attributes,
    table=attribute_table, threat="attribute inference", risk=rate_attribute_inference, metrics=METRICS,
    personal=(),  # attribute values (gender classes) and scores only: no ids, transcripts or audio
    description="attribute inference: gender and speaking rate of unseen people",
    threat_model="from other people's labelled embeddings the attacker infers gender and speaking rate of unseen "
                 "people.")
