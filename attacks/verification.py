"""Open-set speaker verification on speaker-disjoint splits.

Threat: the attacker trains a projection on a labelled side corpus of its own speakers, then
links utterances of speakers it has never seen ("are these two recordings the same person?").
The test speakers' utterances are split into enrolment and trial utterances; every trial is
scored against every test speaker's enrolment model (target trial when the speakers match,
non-target otherwise).

Backends (all on standardised pooled embeddings):

* ``"cosine"``: length normalisation only, cosine scoring (for embeddings that already come
  from a trained speaker encoder);
* ``"lda"``: shrinkage LDA (:func:`shrinkage_lda`) trained on the attacker's speakers, its
  dimension chosen on validation speakers, length normalisation, cosine scoring;
* ``"plda"``: the LDA projection, length normalisation, then a two-covariance PLDA
  (:class:`TwoCovariancePLDA`) scored with the exact log-likelihood ratio.

Reported: EER (speechbrain definition, :func:`audit.metrics.eer`) with a speaker-level
bootstrap 95% CI (:func:`speaker_bootstrap_ci`), minDCF with its prior and costs, linkability
``D_sys``, score histograms, the training budget and a learning curve over 25/50/100% of the
training speakers. The ``frame`` scorer (:class:`FrameVerification`) learns its features too, so
its curve retrains its ECAPA encoder at every point, not only the scorer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


import numpy as np
from scipy.linalg import cholesky, solve_triangular
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.preprocessing import StandardScaler

from attacks.frame_speaker_id import FrameSpeakerID, budgeted_frame_attacker, check_frame_budget, epoch_history
from audit.embeddings import EmbeddingSet, splice
from audit.errors import ConfigError, CorpusError
from audit.estimators import CURVE_FRACTIONS, check_is_fitted
from audit.family import (ATTACKER_FAILURES, AttackFamily, FamilySettings, LayerContext, check_range,
                          failed_attacker)
from audit.metrics import CI_METHOD, eer, leakage_ci, linkability, min_dcf, selection_alphas
from audit.measures import Bands, Figure, Measure
from audit.results import (AttackResult, Table, curve_cell, fmt_ci, fmt_num, fmt_pct, is_ok,
                           layer_attack, skip_cell)
from audit.summary import layer_risk
from audit.splits import SAME_RECORDING_NOTE, Grouping, Split, partition_speaker, speaker_disjoint_split
BACKENDS = ("lda", "plda", "cosine")
HISTOGRAM_BINS = 40


def fold_eer(value: float) -> float:
    """``min(EER, 1 - EER)``: an EER above 50% is a scorer with inverted scores, which an attacker flips."""
    return min(value, 1.0 - value)


def mirror_ci(ci: tuple[float, float] | list[float]) -> list[float]:
    """The CI of ``1 - EER`` from that of the EER: ``[1 - high, 1 - low]``."""
    return [1.0 - ci[1], 1.0 - ci[0]]


def trial_scores(scores: np.ndarray, trial_model: np.ndarray,
                 counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Target and non-target scores of an all-trials-against-all-models score matrix.

    Parameters
    ----------
    scores : ndarray of shape (n_trials, n_models)
        Score of trial utterance ``i`` against enrolment model ``j``.
    trial_model : ndarray of int, shape (n_trials,)
        Index of the model of trial ``i``'s own speaker: ``(i, trial_model[i])`` is the target
        trial, every other ``(i, j)`` a non-target trial.
    counts : ndarray of int, shape (n_models,), default=None
        Speaker multiplicities of a bootstrap resample: target trials of speaker ``a`` are
        repeated ``counts[a]`` times, non-target trials (``a`` against ``b``) ``counts[a] *
        counts[b]`` times, i.e. the trials among the drawn speakers, copies of one speaker
        never scored against each other.

    Returns
    -------
    target, nontarget : ndarray
    """
    n_trials, n_models = scores.shape
    is_target = np.zeros(scores.shape, dtype=bool)
    is_target[np.arange(n_trials), trial_model] = True
    if counts is None:
        return scores[is_target], scores[~is_target]
    weight = counts[trial_model][:, None] * counts[None, :]
    target = np.repeat(scores[is_target], counts[trial_model])
    return target, np.repeat(scores[~is_target], weight[~is_target])


def length_normalise(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` divided by their Euclidean norm (zero rows stay zero)."""
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norm > 0, norm, 1.0)


class TwoCovariancePLDA:
    """Two-covariance PLDA: ``x = mu + y_spk + e`` with ``y_spk ~ N(0, B)``, ``e ~ N(0, W)``.

    ``mu`` is the training mean. ``B`` (between-speaker) and ``W`` (within-speaker) start from
    the moment estimates (covariance of the speaker means; pooled covariance around them),
    both plus ``reg_ = max(reg * trace(W) / d, 1e-6)`` times ``I`` (kept through EM so a
    degenerate projection cannot make them singular), and are refined by ``n_iter`` EM steps (Sizov et al.,
    2014): the E-step gives each training speaker's posterior ``N(m_k, C_k)`` with
    ``C_k = (B^-1 + n_k W^-1)^-1`` and ``m_k = C_k W^-1 f_k`` (``f_k`` the sum of its centred
    vectors); the M-step sets ``B = mean_k (m_k m_k' + C_k)`` and
    ``W = mean_i ((x_i - m_k)(x_i - m_k)' + C_k)``.

    Scoring an enrolment set of ``n`` vectors with centred sum ``F`` against a centred trial
    vector ``t``: the speaker posterior is ``N(m, C)``, ``C = (B^-1 + n W^-1)^-1``,
    ``m = C W^-1 F``, and ``LLR(t) = log N(t; m, W + C) - log N(t; 0, B + W)``.
    """

    def __init__(self, *, n_iter: int = 10, reg: float = 1e-3) -> None:
        self.n_iter = n_iter
        self.reg = reg

    def fit(self, X: np.ndarray, labels: np.ndarray) -> "TwoCovariancePLDA":
        """Estimate ``mu_``, ``B_``, ``W_`` from ``(N, d)`` vectors and their speaker labels."""
        _, y = np.unique(labels, return_inverse=True)
        n_k = np.bincount(y).astype(float)
        self.mu_ = X.mean(axis=0)
        Xc = X - self.mu_
        d = X.shape[1]
        F = np.zeros((n_k.size, d))
        np.add.at(F, y, Xc)
        means = F / n_k[:, None]
        B = means.T @ means / n_k.size
        resid = Xc - means[y]
        W = resid.T @ resid / X.shape[0]
        self.reg_ = max(self.reg * float(np.trace(W)) / d, 1e-6)
        B += self.reg_ * np.eye(d)
        W += self.reg_ * np.eye(d)
        S = Xc.T @ Xc
        self.delta_ = 0.0
        for _ in range(self.n_iter):
            m, C = self._posterior(F, n_k, B, W)
            nC = (n_k[:, None, None] * C).sum(axis=0)
            B_new = (m.T @ m + C.sum(axis=0)) / n_k.size
            cross = F.T @ m
            W_new = (S - cross - cross.T + (n_k[:, None] * m).T @ m + nC) / X.shape[0]
            B_new = (B_new + B_new.T) / 2 + self.reg_ * np.eye(d)
            W_new = (W_new + W_new.T) / 2 + self.reg_ * np.eye(d)
            self.delta_ = float(np.linalg.norm(B_new - B) + np.linalg.norm(W_new - W)) / \
                float(np.linalg.norm(B) + np.linalg.norm(W))
            B, W = B_new, W_new
        self.B_, self.W_ = B, W
        return self

    @staticmethod
    def _posterior(F: np.ndarray, n: np.ndarray, B: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means ``(K, d)`` and covariances ``(K, d, d)`` of K speaker variables."""
        Binv, Winv = np.linalg.inv(B), np.linalg.inv(W)
        C = np.linalg.inv(Binv[None] + n[:, None, None] * Winv[None])
        m = np.einsum("kij,kj->ki", C, F @ Winv)
        return m, C

    def score(self, enrol: list[np.ndarray], trials: np.ndarray) -> np.ndarray:
        """LLR ``(n_trials, n_models)`` of trials ``(n_trials, d)`` against enrolment sets."""
        T = trials - self.mu_
        F = np.stack([(E - self.mu_).sum(axis=0) for E in enrol])
        n = np.array([E.shape[0] for E in enrol], dtype=float)
        m, C = self._posterior(F, n, self.B_, self.W_)
        sigma0 = self.B_ + self.W_
        _, logdet0 = np.linalg.slogdet(sigma0)
        q0 = np.einsum("ij,ij->i", T @ np.linalg.inv(sigma0), T)
        out = np.empty((T.shape[0], len(enrol)))
        for j in range(len(enrol)):
            sigma1 = self.W_ + C[j]
            _, logdet1 = np.linalg.slogdet(sigma1)
            diff = T - m[j]
            q1 = np.einsum("ij,ij->i", diff @ np.linalg.inv(sigma1), diff)
            out[:, j] = -0.5 * (q1 + logdet1) + 0.5 * (q0 + logdet0)
        return out


@dataclass(frozen=True)
class TrialDesign:
    """Enrolment/trial rows of the usable test speakers (indices into the test set)."""

    speakers: np.ndarray
    enrol: list[np.ndarray]
    trial_rows: np.ndarray
    trial_model: np.ndarray
    left_out: tuple[str, ...]
    same_recording: tuple[str, ...] = ()


def trial_design(grouping: Grouping | np.ndarray, *, enroll_fraction: float = 0.5, seed: int = 0) -> TrialDesign:
    """Split each test speaker's utterances into enrolment and trial utterances.

    Per speaker (sorted by name) :func:`audit.splits.partition_speaker` with a
    ``np.random.default_rng(seed)`` puts about ``enroll_fraction`` of the rows into
    enrolment and the rest into trials, whole sessions or recordings to each side (a
    speaker with one recording gets separate stretches of it, named in ``same_recording``).
    ``grouping`` may be plain speaker labels (every row its own recording). Speakers that
    cannot be split are left out (named in ``left_out``). Raises :class:`CorpusError` when
    fewer than 2 speakers remain.
    """
    if not isinstance(grouping, Grouping):
        grouping = Grouping.of(grouping)
    rng = np.random.default_rng(seed)
    names, enrol, trials, model, left_out, same = [], [], [], [], [], []
    for spk in np.unique(grouping.speakers):
        part = partition_speaker(np.flatnonzero(grouping.speakers == spk), grouping, [enroll_fraction], rng)
        if part is None:
            left_out.append(str(spk))
            continue
        enrol.append(part.sides[0])
        trials.append(part.sides[1])
        model.append(np.full(part.sides[1].size, len(names)))
        names.append(spk)
        if part.unit == "same-recording stretch":
            same.append(str(spk))
    if len(names) < 2:
        raise CorpusError(
            f"verification needs >= 2 test speakers with >= 2 utterances each, got {len(names)} "
            f"(of {len(names) + len(left_out)} test speakers); use --segment SECONDS to cut long "
            "recordings into several segments, or a corpus with more speakers"
        )
    return TrialDesign(np.array(names), enrol, np.concatenate(trials), np.concatenate(model), tuple(left_out),
                       tuple(same))


def shrinkage_lda(Z: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Fisher LDA with a Ledoit-Wolf shrunk within-class covariance.

    ``S_w`` is the covariance of the rows around their class means, shrunk towards its
    diagonal: ``(1 - lam) S_w + lam * diag(S_w)``, with ``lam`` the Ledoit-Wolf shrinkage of
    the residuals scaled to unit variance (the pooled-class analogue of sklearn's
    ``LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")``);
    ``S_b = sum_k (n_k / N) (m_k - m)(m_k - m)'``. The directions solve
    ``S_b w = lambda S_w w`` (normalised to ``w' S_w w = 1``), computed through a Cholesky
    whitening of ``S_w`` and an SVD of the whitened class means, in decreasing ``lambda``.

    Parameters
    ----------
    Z : ndarray of shape (N, D)
    labels : ndarray of shape (N,)

    Returns
    -------
    scalings : ndarray of shape (D, r)
        ``r = min(n_classes - 1, D)`` projection directions.
    eigenvalues : ndarray of shape (r,)
    shrinkage : float
    """
    _, y = np.unique(labels, return_inverse=True)
    n_k = np.bincount(y).astype(float)
    means = np.zeros((n_k.size, Z.shape[1]))
    np.add.at(means, y, Z)
    means /= n_k[:, None]
    resid = Z - means[y]
    scale = np.sqrt(np.mean(resid**2, axis=0))
    scale = np.where(scale > 0, scale, 1.0)
    lam = float(ledoit_wolf_shrinkage(resid / scale, assume_centered=True))
    Sw = (1 - lam) * (resid.T @ resid) / Z.shape[0]
    Sw[np.diag_indices_from(Sw)] += lam * scale**2
    L = cholesky(Sw, lower=True)
    M = np.sqrt(n_k / Z.shape[0])[:, None] * (means - Z.mean(axis=0))
    U, s, _ = np.linalg.svd(solve_triangular(L, M.T, lower=True), full_matrices=False)
    r = min(n_k.size - 1, Z.shape[1])
    return solve_triangular(L.T, U[:, :r], lower=False), s[:r] ** 2, lam


def score_trials(Z: np.ndarray, design: TrialDesign, plda: TwoCovariancePLDA | None = None) -> np.ndarray:
    """Scores ``(n_trials, n_models)`` of projected rows ``Z``.

    Without ``plda``: cosine between each trial vector and the length-normalised mean of the
    model's (length-normalised) enrolment vectors. With ``plda``: its log-likelihood ratio.
    """
    trials = Z[design.trial_rows]
    if plda is not None:
        return plda.score([Z[rows] for rows in design.enrol], trials)
    models = length_normalise(np.stack([Z[rows].mean(axis=0) for rows in design.enrol]))
    return trials @ models.T


def curve_speaker_rows(speakers: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Rows of a seeded ``fraction`` of the speakers (at least 2; nested: a larger fraction keeps the smaller's)."""
    names = np.unique(speakers)
    names = names[np.random.default_rng(seed).permutation(names.size)]
    keep = names[: max(2, int(round(fraction * names.size)))]
    return np.flatnonzero(np.isin(speakers, keep))


class SpeakerVerification:
    """Open-set speaker verification attacker (train speakers disjoint from test speakers).

    Parameters
    ----------
    backend : {"lda", "plda", "cosine"}, default="lda"
        Projection and scoring (see the module docstring).
    n_components : int or None, default=None
        LDA dimensions, capped at ``min(n_train_speakers - 1, D)``. None chooses them on
        validation speakers held out of the training speakers: the candidates are the cap
        divided by 1, 2, 4, 8 (at least 2), the one with the lowest validation EER wins (ties
        go to more dimensions); with too few speakers to validate, the cap.
    enroll_fraction : float, default=0.5
        Fraction of each test speaker's utterances used for enrolment (at least one, and at
        least one left for trials).
    p_target, c_miss, c_fa : float, default=0.01, 1.0, 1.0
        Prior and costs of minDCF.
    plda_iter : int, default=10
        EM iterations of the PLDA backend.
    plda_reg : float, default=1e-3
        PLDA covariance regularisation, relative to ``trace(W) / d``.
    val_fraction : float, default=0.25
        Fraction of the training speakers held out to choose ``n_components``.
    seed : int, default=0
        Seeds the enrolment/trial split, the validation split, the learning-curve subsets and
        the bootstrap.
    n_boot : int, default=1000
        Bootstrap resamples of the EER CI.
    n_comparisons : int, default=1
        Scorers x layers compared in the run; above 1 the EER also gets a ``selection_ci95``
        at level ``1 - 0.05 / n_comparisons``.
    """

    attack = "verification"

    def __init__(self, *, backend: str = "lda", n_components: int | None = None, enroll_fraction: float = 0.5,
                 p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0, plda_iter: int = 10,
                 plda_reg: float = 1e-3, val_fraction: float = 0.25, seed: int = 0, n_boot: int = 1000,
                 n_comparisons: int = 1, learning_curve: bool = True) -> None:
        self.backend = backend
        self.n_components = n_components
        self.enroll_fraction = enroll_fraction
        self.p_target = p_target
        self.c_miss = c_miss
        self.c_fa = c_fa
        self.plda_iter = plda_iter
        self.plda_reg = plda_reg
        self.val_fraction = val_fraction
        self.seed = seed
        self.n_boot = n_boot
        self.n_comparisons = n_comparisons
        self.learning_curve = learning_curve

    def get_params(self) -> dict:
        """Constructor settings (for refitting on learning-curve subsets)."""
        return {k: getattr(self, k) for k in ("backend", "n_components", "enroll_fraction", "p_target", "c_miss",
                                              "c_fa", "plda_iter", "plda_reg", "val_fraction", "seed", "n_boot",
                                              "n_comparisons", "learning_curve")}

    def _validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"verification backend={self.backend!r} must be one of {BACKENDS}")
        if self.n_components is not None and (not isinstance(self.n_components, int) or self.n_components < 1):
            raise ConfigError(f"verification n_components={self.n_components!r} must be None or an int >= 1")
        if not 0 < self.enroll_fraction < 1:
            raise ConfigError(f"verification enroll_fraction={self.enroll_fraction!r} must be in (0, 1)")
        if not 0 < self.p_target < 1:
            raise ConfigError(f"verification p_target={self.p_target!r} must be in (0, 1)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"verification val_fraction={self.val_fraction!r} must be in (0, 1)")

    def fit(self, train: EmbeddingSet) -> "SpeakerVerification":
        """Learn the standardisation, the LDA (with its dimension) and the PLDA on training speakers."""
        t0 = time.perf_counter()
        self._validate()
        if train.n_speakers < 2:
            raise CorpusError(f"verification needs >= 2 training speakers, got {train.n_speakers}")
        self.scaler_ = StandardScaler().fit(train.pooled.astype(np.float64))
        Z = self.scaler_.transform(train.pooled.astype(np.float64))
        self.scalings_, self.shrinkage_, self.plda_ = None, None, None
        self.val_scores_: dict[str, float] = {}
        self.dims_selection_ = "none (cosine backend)"
        if self.backend != "cosine":
            self.scalings_, _, self.shrinkage_ = shrinkage_lda(Z, train.speakers)
            cap = self.scalings_.shape[1]
            if self.n_components is not None:
                self.dims_, self.dims_selection_ = min(self.n_components, cap), "fixed n_components"
            else:
                self.dims_, self.dims_selection_ = self._select_dims(Z, train.grouping, cap)
            self.scalings_ = self.scalings_[:, :self.dims_]
            Z = Z @ self.scalings_
        Z = length_normalise(Z)
        if self.backend == "plda":
            self.plda_ = TwoCovariancePLDA(n_iter=self.plda_iter, reg=self.plda_reg).fit(Z, train.speakers)
        self.dims_ = int(Z.shape[1])
        self.train_ = train
        self.fit_seconds_ = time.perf_counter() - t0
        # The learning curve's scorers (25/50% of the training speakers, the chosen dimension) are part
        # of the fit, so a fitted scorer can be evaluated on several test sets without refitting.
        self.curve_scorers_: dict[float, tuple[Any, int]] = {}
        if self.learning_curve:
            params = {**self.get_params(), "learning_curve": False,
                      "n_components": self.dims_ if self.scalings_ is not None else None}
            for fraction in CURVE_FRACTIONS:
                if fraction < 1.0:
                    rows = curve_speaker_rows(train.speakers, fraction, self.seed)
                    self.curve_scorers_[fraction] = (type(self)(**params).fit(train.subset(rows)),
                                                     int(np.unique(train.speakers[rows]).size))
        return self

    def use_curve(self, points: dict[float, tuple[Any, int]]) -> "SpeakerVerification":
        """Score the learning curve with ``points`` instead: fraction -> (fitted scorer, its training speakers).

        A point needs ``score_matrix(test, design)``. For an attacker whose features are learned
        too (:class:`FrameVerification`), refitting this scorer alone on fewer speakers would
        reuse features learned from all of them; its points refit the features as well.
        """
        check_is_fitted(self, "scaler_")
        self.curve_scorers_ = dict(points)
        return self

    def _select_dims(self, Z: np.ndarray, grouping: Grouping, cap: int) -> tuple[int, str]:
        """LDA dimension with the lowest EER on validation speakers held out of the training speakers."""
        speakers = grouping.speakers
        grid = sorted({max(2, cap // k) for k in (1, 2, 4, 8)} | {cap}, reverse=True)
        grid = [d for d in grid if d <= cap]
        if len(grid) == 1:
            return cap, "n_train_speakers - 1 (no smaller candidate)"
        try:
            inner = speaker_disjoint_split(speakers, test_fraction=self.val_fraction, seed=self.seed + 1)
            design = trial_design(grouping.subset(inner.test), enroll_fraction=self.enroll_fraction, seed=self.seed)
        except CorpusError as err:
            return cap, f"n_train_speakers - 1 (no validation split: {err})"
        scalings, _, _ = shrinkage_lda(Z[inner.train], speakers[inner.train])
        for d in grid:
            P = length_normalise(Z @ scalings[:, :min(d, scalings.shape[1])])
            plda = None
            if self.backend == "plda":
                plda = TwoCovariancePLDA(n_iter=self.plda_iter, reg=self.plda_reg).fit(P[inner.train],
                                                                                       speakers[inner.train])
            S = score_trials(P[inner.test], design, plda)
            self.val_scores_[str(d)] = eer(*trial_scores(S, design.trial_model))[0]
        best = grid[int(np.argmin([self.val_scores_[str(d)] for d in grid]))]
        n_val = np.unique(speakers[inner.test]).size
        return best, f"validation EER on {n_val} held-out training speakers"

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Project ``(N, D)`` pooled embeddings to the scoring space ``(N, dims_)``."""
        check_is_fitted(self, "scaler_")
        Z = self.scaler_.transform(np.asarray(X, dtype=np.float64))
        if self.scalings_ is not None:
            Z = Z @ self.scalings_
        return length_normalise(Z)

    def score_matrix(self, test: EmbeddingSet, design: TrialDesign) -> np.ndarray:
        """Scores ``(n_trials, n_models)`` of a trial design on ``test`` (see :func:`score_trials`)."""
        return score_trials(self.transform(test.pooled), design, self.plda_)

    def evaluate(self, test: EmbeddingSet) -> AttackResult:
        """EER, minDCF and linkability of trials among the (unseen) test speakers.

        Metrics: ``eer`` (speechbrain's definition, :func:`audit.metrics.eer`) with ``ci95``
        from :func:`audit.metrics.leakage_ci` (test speakers resampled, widened to the exact
        binomial interval of the EER over the target trials). An EER above 50% means inverted
        scores, which an attacker flips: ``eer`` is then folded to ``1 - EER`` (accept when the
        score is at most ``eer_threshold``) with ``ci95`` (and ``selection_ci95``) mirrored,
        ``eer_inverted`` True, and the unfolded ``eer_raw`` and ``eer_raw_ci95`` kept; minDCF
        is then that of the flipped scores and the learning curve's EERs are folded alike.
        ``min_dcf`` (unnormalised,
        speechbrain) with ``p_target``/``c_miss``/``c_fa`` and ``min_dcf_norm`` = ``min_dcf /
        min(c_miss * p_target, c_fa * (1 - p_target))``; ``linkability`` ``D_sys`` (default
        bins, None with fewer than 10 target trials); trial counts; a 40-bin ``histogram`` of
        target and non-target scores on common edges. Chance is 0.5, the EER of a random
        scorer. The learning curve refits on 25/50% of the training speakers with the chosen
        dimension; ``converged`` means doubling the speakers from 50% to 100% lowered the EER
        by at most 0.02.
        """
        check_is_fitted(self, "scaler_")
        design = trial_design(test.grouping, enroll_fraction=self.enroll_fraction, seed=self.seed)
        S = self.score_matrix(test, design)
        target, nontarget = trial_scores(S, design.trial_model)
        raw, threshold = eer(target, nontarget)
        raw_cis = leakage_ci(lambda c: eer(*trial_scores(S, design.trial_model, c))[0], design.speakers.size,
                             binomial=(int(round(raw * target.size)), int(target.size)), n_boot=self.n_boot,
                             alphas=selection_alphas(self.n_comparisons), seed=self.seed)
        inverted = raw > 0.5
        value, cis = (1.0 - raw, [mirror_ci(c) for c in raw_cis]) if inverted else (raw, raw_cis)
        ci = cis[0]
        sign = -1.0 if inverted else 1.0
        dcf, dcf_threshold = min_dcf(sign * target, sign * nontarget, p_target=self.p_target, c_miss=self.c_miss,
                                     c_fa=self.c_fa)
        dcf_threshold = sign * dcf_threshold
        d_sys = linkability(target, nontarget)[0] if target.size >= 10 else None
        edges = np.histogram_bin_edges(np.concatenate([target, nontarget]), bins=HISTOGRAM_BINS)
        metrics = {
            "eer": value, "ci95": list(ci), "ci_method": CI_METHOD, "eer_threshold": threshold,
            "eer_inverted": inverted,
            "min_dcf": dcf, "min_dcf_norm": dcf / min(self.c_miss * self.p_target, self.c_fa * (1 - self.p_target)),
            "min_dcf_threshold": dcf_threshold, "p_target": self.p_target, "c_miss": self.c_miss, "c_fa": self.c_fa,
            "linkability": d_sys, "n_target": int(target.size), "n_nontarget": int(nontarget.size),
            "n_test_speakers": int(design.speakers.size), "n_speakers_left_out": len(design.left_out),
            "histogram": {"bin_edges": edges.tolist(),
                          "target": np.histogram(target, bins=edges)[0].tolist(),
                          "nontarget": np.histogram(nontarget, bins=edges)[0].tolist()},
        }
        if inverted:
            metrics.update(eer_raw=raw, eer_raw_ci95=list(raw_cis[0]))
        if len(cis) > 1:
            metrics.update(selection_ci95=list(cis[1]), n_comparisons=int(self.n_comparisons))
        if design.same_recording:
            metrics.update(same_recording_speakers=len(design.same_recording), same_recording_note=SAME_RECORDING_NOTE)
        curve = []
        for frac, (sub, n_spk) in sorted(self.curve_scorers_.items()):
            curve.append({"fraction": frac, "n_train_speakers": n_spk,
                          "eer": fold_eer(eer(*trial_scores(sub.score_matrix(test, design), design.trial_model))[0])})
        if self.curve_scorers_:
            curve.append({"fraction": 1.0, "n_train_speakers": self.train_.n_speakers, "eer": value})
        converged = bool(curve[-2]["eer"] - curve[-1]["eer"] <= 0.02) if len(curve) > 1 else None
        return AttackResult(self.attack, self.backend, metrics, chance=0.5, budget=self._budget(design),
                            learning_curve=curve, converged=converged)

    def _budget(self, design: TrialDesign) -> dict:
        budget = {"n_train": len(self.train_), "n_train_speakers": self.train_.n_speakers, "backend": self.backend,
                  "n_features": int(self.train_.pooled.shape[1]), "dims": self.dims_,
                  "n_components": self.n_components, "dims_selection": self.dims_selection_,
                  "validation_eer": self.val_scores_, "enroll_fraction": self.enroll_fraction,
                  "n_enrol": int(sum(rows.size for rows in design.enrol)), "n_trial_utts": int(design.trial_rows.size),
                  "fit_seconds": round(self.fit_seconds_, 3)}
        if self.scalings_ is not None:
            budget["lda_shrinkage"] = self.shrinkage_
        if self.plda_ is not None:
            budget.update({"plda_iter": self.plda_iter, "plda_reg": self.plda_reg,
                           "plda_last_rel_change": self.plda_.delta_})
        return budget


SCORERS = ("lda", "plda", "cosine", "frame")


@dataclass
class VerificationSettings(FamilySettings):
    """Open-set verification settings (TOML section ``[verification]``).

    ``scorers``: projections learned on the training speakers (``lda``, ``plda``, ``cosine``)
    and ``frame`` (:class:`FrameVerification`), the cosine of a frame-level ECAPA attacker's
    embedding trained on the training speakers (its learning curve retrains the encoder). The
    headline is the scorer with the lowest test EER (the worst case for privacy, as for speaker
    ID); every scorer is listed beside it. ``frame_layers`` (None: every
    layer) runs the ``frame`` scorer only on the layers it names, as in ``[speaker_id]``.
    """

    BUDGET = ("n_boot", "frame_max_epochs", "frame_channels", "frame_max_train_frames")
    BUDGET_LISTS = ("scorers",)
    QUICK = {"scorers": ["lda"], "n_boot": 200}

    scorers: list[str] = field(default_factory=lambda: ["lda", "plda", "frame"])
    test_fraction: float = 0.5
    enroll_fraction: float = 0.5
    p_target: float = 0.01
    n_boot: int = 1000
    frame_max_epochs: int = 20
    frame_channels: int = 128
    frame_max_train_frames: int = 200_000
    frame_layers: list[int | str] | None = None

    def validate(self, prefix: str = "verification.") -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        for name in self.scorers:
            if name not in SCORERS:
                raise ConfigError(f"{prefix}scorers: unknown scorer {name!r} (known: {', '.join(SCORERS)})")
        if not [s for s in self.scorers if s != "frame"]:
            raise ConfigError(f"{prefix}scorers: name at least one of lda, plda, cosine")
        for key in ("test_fraction", "enroll_fraction", "p_target"):
            check_range(prefix, key, getattr(self, key), 0, 1)
        if self.n_boot < 100:
            raise ConfigError(f"{prefix}n_boot={self.n_boot!r}: must be >= 100 for a meaningful 95% CI")
        check_frame_budget(self, prefix)


_VERIFICATION_HINT = "use --segment SECONDS to cut long recordings, or drop 'verification' from the audit"


def split_verification(labels: EmbeddingSet, settings: VerificationSettings, seed: int) -> Split:
    """Speaker-disjoint split: the attacker's speakers never appear among the test speakers."""
    try:
        return speaker_disjoint_split(labels.speakers, test_fraction=settings.test_fraction, seed=seed)
    except CorpusError as err:
        raise CorpusError(f"{err}; {_VERIFICATION_HINT}") from err


def feasibility(labels: EmbeddingSet, split: Split, settings: VerificationSettings) -> str | None:
    """Why verification cannot run on this split: test speakers that cannot give enrolment and trials."""
    try:
        trial_design(labels.grouping.subset(split.test), enroll_fraction=settings.enroll_fraction)
    except CorpusError as err:
        return f"{err}; {_VERIFICATION_HINT}"
    return None


def attack_verification(train: EmbeddingSet, test: EmbeddingSet, settings: VerificationSettings,
                        ctx: LayerContext) -> dict:
    """All configured verification scorers on one layer: trained on ``train``'s speakers, tested on ``test``'s."""
    n_comparisons = len(settings.scorers) * ctx.run.n_layers
    common = dict(enroll_fraction=settings.enroll_fraction, p_target=settings.p_target, seed=ctx.seed,
                  n_boot=settings.n_boot, n_comparisons=n_comparisons)
    fitted, results = {}, {}
    for name in settings.scorers:
        if name == "frame":
            continue
        try:
            fitted[name] = ctx.run.fitted(SpeakerVerification(backend=name, **common), train)
            results[name] = fitted[name].evaluate(test).to_dict()
        except ATTACKER_FAILURES as err:
            fitted.pop(name, None)
            results[name] = failed_attacker("verification", name, err)
    if "frame" in settings.scorers:
        try:
            results["frame"] = _frame_scorer(train, test, settings, common, ctx)
        except ATTACKER_FAILURES as err:
            results["frame"] = failed_attacker("verification", "frame", err)
    scored = [n for n, r in results.items() if r.get("eer") is not None]
    if not scored:
        raise CorpusError("every verification scorer failed or was skipped: "
                          + "; ".join(f"{n}: {r.get('skipped')}" for n, r in results.items()))
    best = min(scored, key=lambda n: results[n]["eer"])
    headline = dict(results[best])
    failed = {n: r["skipped"] for n, r in results.items() if r.get("failed")}
    if failed:
        headline["failed_attackers"] = failed
    headline["strongest_by"] = (f"lowest test EER of {len(scored)} scorers (worst case for privacy); each scorer's "
                                "settings were chosen on held-out training speakers only")
    headline["n_attackers_compared"] = len(scored)
    headline["validation_pick"] = min(fitted, key=lambda n: min(fitted[n].val_scores_.values())
                                      if fitted[n].val_scores_ else 1.0)
    headline["scorers"] = results
    return headline


class FrameVerification:
    """Cosine verification on the embeddings of a frame-level ECAPA attacker trained on the attacker's speakers.

    :meth:`fit` trains the encoder (:class:`~attacks.frame_speaker_id.FrameSpeakerID`) on the
    training speakers' frames, then a cosine scorer on its embeddings. The learning curve
    retrains the *encoder* on the nested 25% and 50% speaker subsets the other scorers use
    (:func:`curve_speaker_rows`), with the same budget: refitting the cosine scorer alone would
    score every point with an encoder that had learned from all the speakers, a curve flat by
    construction. ``converged`` in :meth:`evaluate` needs both the encoder's early stop and a
    curve that gains at most 0.02 EER from half to all the speakers.

    Parameters
    ----------
    frame_rate : float
        Frames per second of the layer.
    frame_max_epochs, frame_channels, frame_max_train_frames : int
        The encoder's budget, as the keys of ``[verification]`` (read by
        :func:`~attacks.frame_speaker_id.budgeted_frame_attacker`, as speaker ID's are).
    enroll_fraction, p_target, seed, n_boot, n_comparisons
        As for :class:`SpeakerVerification`.
    learning_curve : bool, default=True
    device, precision : str
        Where and in what precision the encoders train and embed.
    """

    attack = "verification"

    def __init__(self, *, frame_rate: float, frame_max_epochs: int = 20, frame_channels: int = 128,
                 frame_max_train_frames: int | None = 200_000, enroll_fraction: float = 0.5, p_target: float = 0.01,
                 seed: int = 0, n_boot: int = 1000, n_comparisons: int = 1, learning_curve: bool = True,
                 device: str = "cpu", precision: str = "float32") -> None:
        self.frame_rate = frame_rate
        self.frame_max_epochs = frame_max_epochs
        self.frame_channels = frame_channels
        self.frame_max_train_frames = frame_max_train_frames
        self.enroll_fraction = enroll_fraction
        self.p_target = p_target
        self.seed = seed
        self.n_boot = n_boot
        self.n_comparisons = n_comparisons
        self.learning_curve = learning_curve
        self.device = device
        self.precision = precision

    def _fit_point(self, train: EmbeddingSet) -> tuple[FrameSpeakerID, SpeakerVerification]:
        """An encoder trained on ``train``'s frames and a cosine scorer (no curve of its own) on its embeddings."""
        encoder = budgeted_frame_attacker(self, seed=self.seed, frame_rate=self.frame_rate, learning_curve=False,
                                          n_boot=self.n_boot, device=self.device, precision=self.precision).fit(train)
        scorer = SpeakerVerification(backend="cosine", enroll_fraction=self.enroll_fraction, p_target=self.p_target,
                                     seed=self.seed, n_boot=self.n_boot, n_comparisons=self.n_comparisons,
                                     learning_curve=False).fit(train.with_pooled(encoder.transform(train)))
        return encoder, scorer

    def fit(self, train: EmbeddingSet) -> "FrameVerification":
        """Train the encoder and scorer on ``train``, and each learning-curve point on its speaker subset."""
        self.encoder_, self.scorer_ = self._fit_point(train)
        t0 = time.perf_counter()
        self.curve_encoders_: dict[float, FrameSpeakerID] = {}
        points = {}
        if self.learning_curve:
            for fraction in CURVE_FRACTIONS:
                if fraction < 1.0:
                    rows = curve_speaker_rows(train.speakers, fraction, self.seed)
                    encoder, scorer = self._fit_point(train.subset(rows))
                    self.curve_encoders_[fraction] = encoder
                    points[fraction] = (_EncodedScorer(encoder, scorer), int(np.unique(train.speakers[rows]).size))
        self.scorer_.use_curve(points)
        self.curve_seconds_ = time.perf_counter() - t0
        return self

    def evaluate(self, test: EmbeddingSet) -> AttackResult:
        """The cosine scorer's EER, minDCF and linkability on ``test``'s speakers, with the retrained curve."""
        check_is_fitted(self, "encoder_")
        # the frames stay with the embeddings: each curve point embeds the test rows with its own encoder
        result = self.scorer_.evaluate(test.with_pooled(self.encoder_.transform(test), keep_frames=True))
        result.attacker = "frame-ecapa+cosine"
        result.converged = bool(self.encoder_.converged_ and result.converged is not False)
        result.budget["encoder"] = _encoder_budget(self.encoder_)
        result.budget["curve_encoders"] = {str(f): _encoder_budget(e) for f, e in sorted(self.curve_encoders_.items())}
        result.budget["curve_fit_seconds"] = round(self.curve_seconds_, 2)
        return result


class _EncodedScorer:
    """One learning-curve point of :class:`FrameVerification`: its own encoder and a scorer of its embeddings."""

    def __init__(self, encoder: FrameSpeakerID, scorer: SpeakerVerification) -> None:
        self.encoder = encoder
        self.scorer = scorer

    def score_matrix(self, test: EmbeddingSet, design: TrialDesign) -> np.ndarray:
        """Scores of ``design``'s trials on ``test`` embedded by this point's encoder."""
        return self.scorer.score_matrix(test.with_pooled(self.encoder.transform(test)), design)


def _encoder_budget(encoder: FrameSpeakerID) -> dict:
    """What one trained encoder cost, whether its early stop fired, and its per-epoch curve."""
    return {"epochs": len(encoder.history_), "best_epoch": encoder.record_["best_epoch"],
            "converged": encoder.converged_, "n_train_speakers": int(encoder.classes_.size),
            "n_params": encoder.n_params_, "fit_seconds": round(encoder.fit_seconds_, 2),
            "precision": encoder.precision, "history": epoch_history(encoder.history_)}


def _frame_scorer(train: EmbeddingSet, test: EmbeddingSet, settings: VerificationSettings, common: dict,
                  ctx: LayerContext) -> dict:
    """:class:`FrameVerification` on the layer, on the run's ``device`` and ``attacker_precision``."""
    if train.frame_source is None or ctx.frame_skip:
        reason = ctx.frame_skip or "pooled-only layer: no frames"
        return AttackResult.skip("verification", "frame-ecapa", reason).to_dict()
    attacker = FrameVerification(frame_rate=ctx.frame_rate, frame_max_epochs=settings.frame_max_epochs,
                                 frame_channels=settings.frame_channels,
                                 frame_max_train_frames=settings.frame_max_train_frames, device=ctx.device,
                                 precision=ctx.attacker_precision, **common)
    return ctx.run.fitted(attacker, train, frames=True).evaluate(test).to_dict()


def ignorant_test(clean: EmbeddingSet, defended: EmbeddingSet, settings: VerificationSettings,
                  seed: int) -> EmbeddingSet:
    """The defended test set with undefended enrolment rows (the same enrolment/trial design the attack uses)."""
    design = trial_design(clean.grouping, enroll_fraction=settings.enroll_fraction, seed=seed)
    return splice(defended, clean, np.concatenate(design.enrol))


def verification_table(results: dict) -> Table:
    """One row per layer: EER with CI, minDCF and linkability of the strongest scorer, plus every scorer's EER."""
    table = Table("Speaker verification per layer (open set, unseen speakers)",
                  ["layer", "name", "EER (95% CI)", "minDCF (p=0.01)", "D_sys", "strongest scorer",
                   "its EER at 25/50/100% of training speakers", "all scorers (EER)"])
    same = False
    for la in results["layers"]:
        ver = layer_attack(la, "verification")
        if ver is None:
            continue
        if not is_ok(ver):
            table.rows.append([str(la["index"]), la["name"], skip_cell(ver)] + [""] * 5)
            continue
        same = same or bool(ver.get("same_recording_speakers"))
        others = ", ".join(f"{n} {fmt_pct(r.get('eer'))}" if is_ok(r) else f"{n} skipped"
                           for n, r in ver.get("scorers", {}).items())
        table.rows.append([str(la["index"]), la["name"], f"{fmt_pct(ver['eer'])} {fmt_ci(ver['ci95'])}",
                           fmt_num(ver.get("min_dcf_norm")), fmt_num(ver.get("linkability")), ver["attacker"],
                           curve_cell(ver, "eer"), others])
    table.notes.append("EER as in speechbrain (threshold sweep over scores and midpoints); minDCF normalised, "
                       "p_target = 0.01, C_miss = C_fa = 1; D_sys = global linkability (Gomez-Barrero et al.), "
                       "0 = unlinkable, 1 = fully linkable. Enrolment and trial utterances of a test speaker come "
                       "from different recordings (sessions where there are several). CIs resample test speakers and "
                       "contain the exact binomial interval over target trials.")
    if same:
        table.notes.append("Some test speakers have one recording only: " + SAME_RECORDING_NOTE + ".")
    return table


#: Linkage is rated ``high`` when the leakiest layer's EER CI upper bound is below this: inside the
#: range of unprotected speech and weak anonymisers (VoicePrivacy 2024, semi-informed attacker:
#: original speech 0.4-8.8%, McAdams 1.6-7.5% EER).
HIGH_EER = 0.20
#: ... ``medium`` below this (linkable far better than a coin flip: the 21-35% band of VoicePrivacy's
#: stronger anonymisers against a retrained attacker); ``low`` when the CI reaches it (near 50%).
MEDIUM_EER = 0.40


#: Linkage bands on EER (CI bounds; lower is leakier): high below :data:`HIGH_EER`, medium below :data:`MEDIUM_EER`.
LINKAGE_BANDS = Bands(HIGH_EER, MEDIUM_EER, high_inclusive=False)

METRICS = (
    Measure("eer", False, chance=0.5, label="verification EER", bands=LINKAGE_BANDS,
            headline="identity (verification EER)", slug="verification_eer", ylim=(0.0, 0.55),
            plot=False, defense_column=False,  # verification_eer_by_layer.png and its own defense column
            description="strongest scorer's open-set EER (50% = unlinkable)"),
    Measure("min_dcf_norm", False, ci=None, chance=None, unit="score", high=None,
            description="normalised minDCF (no CI)"),
    Measure("linkability", True, ci=None, chance=None, unit="score", description="global linkability D_sys (no CI)"),
    Measure("scorers.*.eer", False, chance=0.5, description="one scorer's EER (lda, plda, frame)"),
)


def _linkage_evidence(fig: Figure) -> str:
    sel = (f"; {fmt_ci(fig.selection_ci95)} adjusted for the pick from {fig.n_compared} scorers x layers"
           if fig.selection_ci95 else "")
    return (f"{fig.where}: utterances of people the attacker never saw are linked with an EER of "
            f"{fmt_pct(fig.value)} (CI {fmt_ci(fig.ci95)}{sel}; 50% = unlinkable)")


#: Risk of linking two utterances of unseen people: every layer's EER rated by its CI bounds (:data:`LINKAGE_BANDS`).
rate_linkage = layer_risk("linkage", "verification", METRICS[0], _linkage_evidence)


FAMILY = AttackFamily(
    name="verification", settings=VerificationSettings, split=split_verification, attack=attack_verification,
    table=verification_table, feasibility=feasibility, enrolment_test=ignorant_test,
    threat="linkage", risk=rate_linkage, metrics=METRICS,
    personal=(),  # counts and scores only (same_recording_speakers is a count here, not the ids)
    description="open-set verification / linkage: are two utterances of unseen people the same person?",
    threat_model="the attacker learns from other people and decides whether two utterances of unseen people come "
                 "from the same person (EER, minDCF, linkability).")
