"""Tests for attacks.verification on generated embeddings (no audio)."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.verification import (FrameVerification, SpeakerVerification, curve_speaker_rows, shrinkage_lda,
                                  trial_design, trial_scores)
from audit.curves import epoch_capped
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError
from audit.metrics import speaker_bootstrap_ci
from tests.test_frame_speaker_id import frame_set


def make_set(n_speakers: int, n_utts: int, *, leak: float, dim: int = 16, seed: int = 0,
             prefix: str = "s") -> EmbeddingSet:
    """Unit-noise embeddings; with ``leak > 0`` a speaker centroid (scale ``leak``) in 4 dims."""
    rng = np.random.default_rng(seed)
    speakers = np.repeat([f"{prefix}{i:03d}" for i in range(n_speakers)], n_utts)
    X = rng.standard_normal((speakers.size, dim))
    if leak:
        X[:, :4] = 0.1 * X[:, :4] + np.repeat(leak * rng.standard_normal((n_speakers, 4)), n_utts, axis=0)
    return EmbeddingSet(X.astype(np.float32), speakers, [f"u{i}" for i in range(speakers.size)],
                        {"speech_rate": np.full(speakers.size, None, dtype=object)})


def split_sets(leak: float, seed: int = 0, n_train: int = 20, n_test: int = 20,
               n_utts: int = 8) -> tuple[EmbeddingSet, EmbeddingSet]:
    """Disjoint train / test speakers from one generator (same centroid scale)."""
    full = make_set(n_train + n_test, n_utts, leak=leak, seed=seed)
    is_train = np.isin(full.speakers, np.unique(full.speakers)[:n_train])
    return full.subset(np.flatnonzero(is_train)), full.subset(np.flatnonzero(~is_train))


@pytest.mark.parametrize("backend", ["lda", "plda"])
def test_leaky_embedding_is_linkable(backend):
    # 10 trial utterances x 30 speakers = 300 target trials, so D_sys uses 30 histogram bins
    train, test = split_sets(leak=3.0, n_test=30, n_utts=20)
    result = SpeakerVerification(backend=backend, n_boot=200).fit(train).evaluate(test)
    m = result.metrics
    assert result.skipped is None
    assert m["eer"] < 0.02
    assert m["ci95"][0] <= m["eer"] <= m["ci95"][1] < 0.05
    # the CI contains the exact binomial interval over the 300 target trials: never zero-width
    assert m["ci95"][1] > m["ci95"][0] and m["ci95"][1] >= 0.01
    assert m["linkability"] > 0.93
    assert result.chance == 0.5
    assert m["n_test_speakers"] == 30 and m["n_target"] == 30 * 10 and m["n_nontarget"] == 30 * 10 * 29
    assert result.budget["dims"] in (16, 8, 4, 2) and "validation" in result.budget["dims_selection"]


def test_noise_embedding_is_at_chance():
    train, test = split_sets(leak=0.0, seed=1, n_test=30)
    result = SpeakerVerification(backend="lda", n_boot=300).fit(train).evaluate(test)
    m = result.metrics
    assert abs(m["eer"] - 0.5) < 0.1
    assert m["ci95"][0] <= 0.5 <= m["ci95"][1]
    assert m["linkability"] < 0.3


def test_result_layout_histogram_curve_budget():
    train, test = split_sets(leak=3.0, n_train=12, n_test=6)
    result = SpeakerVerification(backend="plda", n_components=5, n_boot=50, p_target=0.05).fit(train).evaluate(test)
    m = result.metrics
    hist = m["histogram"]
    assert len(hist["bin_edges"]) == 41
    assert sum(hist["target"]) == m["n_target"] and sum(hist["nontarget"]) == m["n_nontarget"]
    assert m["p_target"] == 0.05 and m["c_miss"] == 1.0
    assert m["min_dcf_norm"] == pytest.approx(m["min_dcf"] / 0.05)
    assert [row["fraction"] for row in result.learning_curve] == [0.25, 0.5, 1.0]
    assert result.learning_curve[-1]["eer"] == m["eer"]
    assert isinstance(result.converged, bool)
    assert result.budget["n_train_speakers"] == 12 and result.budget["backend"] == "plda"
    assert result.budget["plda_iter"] == 10 and result.budget["dims"] == 5
    assert result.to_dict()["eer"] == m["eer"]


def test_cosine_backend_keeps_dimension():
    train, test = split_sets(leak=3.0, n_train=4, n_test=6)
    attacker = SpeakerVerification(backend="cosine", n_boot=50).fit(train)
    result = attacker.evaluate(test)
    assert result.budget["dims"] == 16 and result.budget["dims_selection"] == "none (cosine backend)"
    assert result.metrics["eer"] < 0.35


def test_too_few_test_speakers_names_the_setting():
    train, _ = split_sets(leak=3.0, n_train=4, n_test=2)
    test = make_set(3, 1, leak=3.0, seed=5, prefix="t")
    attacker = SpeakerVerification(n_boot=20).fit(train)
    with pytest.raises(CorpusError, match="--segment SECONDS"):
        attacker.evaluate(test)


def test_single_utterance_speakers_are_left_out():
    train, test = split_sets(leak=3.0, n_train=6, n_test=3)
    lone = make_set(2, 1, leak=3.0, seed=9, prefix="lone")
    both = EmbeddingSet(np.vstack([test.pooled, lone.pooled]), np.concatenate([test.speakers, lone.speakers]),
                        test.utt_ids + lone.utt_ids, {})
    result = SpeakerVerification(n_boot=20).fit(train).evaluate(both)
    assert result.metrics["n_test_speakers"] == 3
    assert result.metrics["n_speakers_left_out"] == 2


def test_settings_are_checked():
    train, _ = split_sets(leak=3.0, n_train=4, n_test=2)
    with pytest.raises(ConfigError, match="backend='svm'"):
        SpeakerVerification(backend="svm").fit(train)
    with pytest.raises(ConfigError, match="enroll_fraction=1.0"):
        SpeakerVerification(enroll_fraction=1.0).fit(train)
    with pytest.raises(CorpusError, match=">= 2 training speakers"):
        SpeakerVerification().fit(make_set(1, 5, leak=1.0))
    with pytest.raises(RuntimeError, match="not fitted"):
        SpeakerVerification().evaluate(train)


def test_shrinkage_lda_finds_the_leaky_dimensions():
    train, _ = split_sets(leak=3.0)
    Z = (train.pooled - train.pooled.mean(axis=0)) / train.pooled.std(axis=0)
    scalings, eigenvalues, shrinkage = shrinkage_lda(Z, train.speakers)
    assert scalings.shape == (16, 16) and 0 <= shrinkage <= 1
    assert np.all(np.diff(eigenvalues) <= 1e-9)
    top = np.abs(scalings[:, :4])
    assert np.all(top[:4].sum(axis=0) > 5 * top[4:].sum(axis=0))


def test_trial_design_split():
    speakers = np.array(["a"] * 5 + ["b"] * 2 + ["c"])
    design = trial_design(speakers, enroll_fraction=0.5, seed=0)
    assert design.speakers.tolist() == ["a", "b"] and design.left_out == ("c",)
    assert [rows.size for rows in design.enrol] == [2, 1]
    assert design.trial_rows.size == 4 and design.trial_model.tolist() == [0, 0, 0, 1]
    all_rows = np.concatenate(design.enrol + [design.trial_rows])
    assert sorted(all_rows.tolist()) == list(range(7))


def test_trial_scores_weights_speakers():
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.4]])
    target, nontarget = trial_scores(scores, np.array([0, 1]))
    assert target.tolist() == [0.9, 0.8] and sorted(nontarget.tolist()) == [0.1, 0.2, 0.3, 0.4]
    target, nontarget = trial_scores(scores, np.array([0, 1]), counts=np.array([2, 1, 0]))
    assert sorted(target.tolist()) == [0.8, 0.9, 0.9]
    assert sorted(nontarget.tolist()) == [0.1, 0.1, 0.3, 0.3]


def test_speaker_bootstrap_ci_is_seeded_and_stratified():
    values = np.arange(10.0)
    stat = lambda counts: float(np.average(values, weights=counts))  # noqa: E731
    ci = speaker_bootstrap_ci(stat, 10, n_boot=200, seed=3)
    assert ci == speaker_bootstrap_ci(stat, 10, n_boot=200, seed=3)
    assert ci[0] < 4.5 < ci[1]
    strata = np.array([0] * 5 + [1] * 5)
    both = lambda counts: float(counts[:5].sum() == 5 and counts[5:].sum() == 5)  # noqa: E731
    assert speaker_bootstrap_ci(both, 10, strata=strata, n_boot=50) == (1.0, 1.0)


def test_frame_verifier_retrains_its_encoder_for_every_learning_curve_point():
    data = frame_set(n_speakers=10, n_utts=4, signal=1.5)
    is_train = np.isin(data.speakers, np.unique(data.speakers)[:6])
    train, test = data.subset(np.flatnonzero(is_train)), data.subset(np.flatnonzero(~is_train))
    attacker = FrameVerification(frame_rate=50.0, frame_max_epochs=2, frame_channels=16, n_boot=100).fit(train)
    result = attacker.evaluate(test)
    curve = result.learning_curve
    assert [row["fraction"] for row in curve] == [0.25, 0.5, 1.0]
    for row in curve[:-1]:
        encoder = attacker.curve_encoders_[row["fraction"]]
        seen = np.unique(train.speakers[curve_speaker_rows(train.speakers, row["fraction"], 0)])
        # the point's encoder learned from its own speakers only, not from all six
        assert list(encoder.classes_) == list(seen) and encoder.classes_.size == row["n_train_speakers"] < 6
    assert attacker.encoder_.classes_.size == curve[-1]["n_train_speakers"] == 6
    assert set(result.budget["curve_encoders"]) == {"0.25", "0.5"}
    assert [row["epoch"] for row in result.budget["encoder"]["history"]] == [1, 2]
    assert result.attacker == "frame-ecapa+cosine"
    # two epochs cannot trigger a patience of six: the encoder ran out of epochs, so the attacker has not converged
    assert not attacker.encoder_.converged_ and result.converged is False
    assert epoch_capped(result.to_dict()) == {"epochs": 2, "best_epoch": result.budget["encoder"]["best_epoch"]}


def test_an_inverted_scorer_is_folded_with_its_raw_eer_and_a_mirrored_ci(monkeypatch):
    """Scores that rank impostors above targets: an attacker flips them, so the EER reported is 1 - EER."""
    train, test = split_sets(leak=3.0, n_test=10)
    scorer = SpeakerVerification(backend="cosine", n_boot=200, n_comparisons=3).fit(train)
    plain = scorer.evaluate(test).metrics
    assert plain["eer"] < 0.3 and plain["eer_inverted"] is False and "eer_raw" not in plain
    score_matrix = SpeakerVerification.score_matrix
    monkeypatch.setattr(SpeakerVerification, "score_matrix", lambda self, t, d: -score_matrix(self, t, d))
    result = scorer.evaluate(test)
    m = result.metrics
    assert m["eer_inverted"] is True and m["eer_raw"] > 0.7
    assert m["eer"] == pytest.approx(1 - m["eer_raw"]) and m["eer"] < 0.3
    raw_lo, raw_hi = m["eer_raw_ci95"]
    assert raw_lo <= m["eer_raw"] <= raw_hi
    assert m["ci95"] == pytest.approx([1 - raw_hi, 1 - raw_lo])
    assert m["ci95"][0] <= m["eer"] <= m["ci95"][1] and m["selection_ci95"][0] <= m["eer"] <= m["selection_ci95"][1]
    assert m["selection_ci95"][1] >= m["ci95"][1]
    assert all(point["eer"] <= 0.5 for point in result.learning_curve)
    assert result.learning_curve[-1]["eer"] == m["eer"]
    assert m["min_dcf"] == pytest.approx(plain["min_dcf"], abs=0.05)  # the flipped scores' minDCF, not always-reject
