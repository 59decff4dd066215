"""Tests for attacks.attributes on generated embeddings (no audio)."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.attributes import (AttributeSettings, CCAProbe, GenderInference, SpeechRateRegression, attack_attributes,
                                attribute_split, cca_correlation)
from audit.embeddings import EmbeddingSet
from audit.errors import CorpusError
from audit.family import RunContext


def make_set(*, gender_leak: float = 0.0, rate_leak: bool = False, n_speakers: int = 24, n_utts: int = 8,
             dim: int = 12, seed: int = 0, genders: tuple[str, ...] = ("F", "M")) -> EmbeddingSet:
    """Noise embeddings of speakers with a gender and per-utterance speech rate (chars/s).

    ``gender_leak`` writes +-leak into dimension 0; ``rate_leak`` writes the standardised
    speech rate into dimension 1.
    """
    rng = np.random.default_rng(seed)
    speakers = np.repeat([f"s{i:02d}" for i in range(n_speakers)], n_utts)
    gender = np.repeat([genders[i % len(genders)] for i in range(n_speakers)], n_utts)
    base = np.repeat(rng.uniform(10, 16, n_speakers), n_utts)
    rate = base + rng.normal(0, 1.0, speakers.size)
    X = rng.standard_normal((speakers.size, dim))
    if gender_leak:
        X[:, 0] = 0.3 * X[:, 0] + np.where(gender == genders[0], -gender_leak, gender_leak)
    if rate_leak:
        X[:, 1] = (rate - 13) / 2 + 0.05 * X[:, 1]
    return EmbeddingSet(X.astype(np.float32), speakers, [f"u{i}" for i in range(speakers.size)],
                        {"gender": gender.astype(object), "speech_rate": rate.astype(object)})


def disjoint(full: EmbeddingSet, seed: int = 0) -> tuple[EmbeddingSet, EmbeddingSet]:
    split = attribute_split(full.speakers, full.attributes["gender"], test_fraction=0.4, val_fraction=0.0, seed=seed)
    return full.subset(split.train), full.subset(split.test)


def test_attribute_split_is_speaker_disjoint_and_stratified():
    full = make_set()
    split = attribute_split(full.speakers, full.attributes["gender"], test_fraction=0.3, val_fraction=0.2, seed=1)
    parts = [set(full.speakers[idx]) for idx in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(len(p) for p in parts) == 24
    for idx in (split.train, split.val, split.test):
        assert set(full.attributes["gender"][idx]) == {"F", "M"}
    # four speakers: one per gender to test, one per gender to train
    small = make_set(n_speakers=4)
    split = attribute_split(small.speakers, small.attributes["gender"], test_fraction=0.3, seed=0)
    assert set(small.attributes["gender"][split.test]) == {"F", "M"}
    assert set(small.attributes["gender"][split.train]) == {"F", "M"}


def test_attribute_split_numeric_and_errors():
    full = make_set()
    split = attribute_split(full.speakers, full.attributes["speech_rate"], test_fraction=0.3, seed=0)
    assert split.kind == "speaker-disjoint"
    assert not set(full.speakers[split.train]) & set(full.speakers[split.test])
    with pytest.raises(CorpusError, match="test_fraction=1.5"):
        attribute_split(full.speakers, full.attributes["gender"], test_fraction=1.5)
    tiny = make_set(n_speakers=2)
    with pytest.raises(CorpusError, match="attribute split impossible"):
        attribute_split(tiny.speakers, tiny.attributes["gender"])


def test_gender_written_in_one_dimension_is_found():
    train, test = disjoint(make_set(gender_leak=2.0))
    result = GenderInference(n_boot=200).fit(train).evaluate(test)
    m = result.metrics
    assert result.skipped is None
    assert m["roc_auc"] > 0.99 and m["accuracy"] > 0.95
    # the CI contains the exact binomial interval over the smaller class, so it is never zero-width
    assert 0.85 < m["auc_ci95"][0] < m["auc_ci95"][1] == 1.0
    assert result.chance == max(m["class_counts"].values()) / m["n_test"]
    assert m["positive_class"] == "M" and sum(m["class_counts"].values()) == m["n_test"]
    assert [row["fraction"] for row in result.learning_curve] == [0.25, 0.5, 1.0]
    assert result.budget["C"] in (0.01, 0.1, 1.0, 10.0) and result.budget["validation_scores"]


def test_gender_from_noise_is_at_chance():
    train, test = disjoint(make_set(seed=3))
    m = GenderInference(n_boot=300).fit(train).evaluate(test).metrics
    assert m["auc_ci95"][0] <= 0.5 <= m["auc_ci95"][1]


def test_one_class_gender_is_skipped_with_reason():
    only_m = make_set(gender_leak=2.0, genders=("M",))
    train, test = disjoint(only_m)
    result = GenderInference().fit(train).evaluate(test)
    assert result.skipped == "one-class attribute 'gender' in the training split (only 'M')"
    train, _ = disjoint(make_set(gender_leak=2.0))
    result = GenderInference().fit(train).evaluate(test)
    assert result.skipped == "one-class attribute 'gender' in the test split (only 'M')"


def test_unknown_attribute_is_skipped():
    full = make_set()
    train, test = disjoint(full)
    result = GenderInference(attribute="accent").fit(train).evaluate(test)
    assert "no known values of attribute 'accent'" in result.skipped


def test_speech_rate_linear_encoding_is_regressed():
    train, test = disjoint(make_set(rate_leak=True))
    attacker = SpeechRateRegression(n_boot=200)
    result = attacker.fit(train).evaluate(test)
    m = result.metrics
    assert result.skipped is None
    assert m["r2"] > 0.8 and m["ci95"][0] > 0.6
    assert m["mse"] < 0.3 * m["baseline_mse"]
    assert result.budget["model"] in attacker._grid()
    assert set(result.budget["validation_scores"]) == set(attacker._grid())
    assert result.attacker == result.budget["model"].split("(")[0]
    assert isinstance(result.converged, bool)


def test_speech_rate_mlp_only_records_its_epochs():
    train, test = disjoint(make_set(rate_leak=True))
    result = SpeechRateRegression(ridge_grid=(), n_boot=200).fit(train).evaluate(test)
    assert result.attacker == "mlp" and result.budget["epochs"] >= 1
    assert result.metrics["r2"] > 0.5


def test_speech_rate_choice_is_no_weaker_than_the_mlp_on_small_high_dimensional_data():
    """Few rows, many dimensions, a linear code: the validation choice must not leave R² to a weak MLP."""
    rng = np.random.default_rng(3)
    speakers = np.repeat([f"s{i:02d}" for i in range(16)], 6)
    rate = rng.uniform(8, 18, speakers.size)
    X = rng.standard_normal((speakers.size, 256)) + 0.3 * np.outer(rate - 13, rng.standard_normal(256))
    gender = np.array(["F" if int(s[1:]) % 2 else "M" for s in speakers], dtype=object)
    full = EmbeddingSet(X.astype(np.float32), speakers, [f"u{i}" for i in range(speakers.size)],
                        {"gender": gender, "speech_rate": rate.astype(object)})
    train, test = disjoint(full)
    chosen = SpeechRateRegression(n_boot=200).fit(train).evaluate(test)
    mlp = SpeechRateRegression(ridge_grid=(), n_boot=200).fit(train).evaluate(test)
    assert chosen.metrics["r2"] > 0.8
    assert chosen.metrics["r2"] >= mlp.metrics["r2"] - 0.02


def test_speech_rate_from_noise_is_not_predicted():
    train, test = disjoint(make_set(seed=4))
    m = SpeechRateRegression(n_boot=200).fit(train).evaluate(test).metrics
    assert m["r2"] <= 0.1
    assert m["mse"] >= 0.9 * m["baseline_mse"]


def test_missing_transcripts_skip_speech_rate():
    full = make_set(rate_leak=True)
    rate = full.attributes["speech_rate"].copy()
    rate[5:] = None
    full.attributes["speech_rate"] = rate
    train, test = disjoint(full)
    result = SpeechRateRegression().fit(train).evaluate(test)
    assert result.skipped is not None and "speech_rate" in result.skipped and "(< 10" in result.skipped


def test_cca_correlation_linear_and_noise():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 20))
    y = X @ rng.standard_normal(20) + 0.1 * rng.standard_normal(400)
    assert cca_correlation(X[:300], y[:300], X[300:], y[300:]) > 0.98
    noise = rng.standard_normal(400)
    assert abs(cca_correlation(X[:300], noise[:300], X[300:], noise[300:])) < 0.2


def test_cca_probe_numeric_and_binary():
    train, test = disjoint(make_set(rate_leak=True, gender_leak=2.0))
    result = CCAProbe(attribute="speech_rate", n_boot=200).fit(train).evaluate(test)
    assert result.metrics["cca"] > 0.95 and result.metrics["ci95"][0] > 0.9
    result = CCAProbe(attribute="gender", n_boot=200).fit(train).evaluate(test)
    assert result.metrics["cca"] > 0.95 and result.metrics["encoding"] == {"F": 0, "M": 1}
    train, test = disjoint(make_set(seed=5))
    result = CCAProbe(attribute="speech_rate", n_boot=200).fit(train).evaluate(test)
    assert abs(result.metrics["cca"]) < 0.25
    assert result.metrics["ci95"][0] <= 0.0 <= result.metrics["ci95"][1]


def test_two_test_speakers_give_no_zero_width_r2_or_cca_interval():
    full = make_set(rate_leak=True, n_speakers=6)
    test_speakers = np.isin(full.speakers, ["s00", "s01"])
    train, test = full.subset(np.flatnonzero(~test_speakers)), full.subset(np.flatnonzero(test_speakers))
    for attacker in (SpeechRateRegression(n_boot=100), CCAProbe(attribute="speech_rate", n_boot=100)):
        result = attacker.fit(train).evaluate(test)
        assert result.skipped.startswith("no CI for attribute 'speech_rate': 2 test speakers can be resampled")
    # gender is a proportion: its CI keeps the exact binomial floor, so the result stands
    result = GenderInference(n_boot=100).fit(train).evaluate(test)
    assert result.skipped is None and result.metrics["ci95"][0] < result.metrics["ci95"][1]


def test_clipped_regressor_keeps_predictions_in_the_training_range():
    from sklearn.linear_model import LinearRegression

    from attacks.attributes import ClippedRegressor

    X = np.arange(10.0)[:, None]
    model = ClippedRegressor(LinearRegression()).fit(X, 2 * X[:, 0] + 1)
    assert model.predict(np.array([[-100.0], [4.0], [100.0]])).tolist() == [1.0, 9.0, 19.0]


def test_speech_rate_uses_voiced_duration_and_is_not_measurable_when_it_does_not_vary():
    from audit.corpus import Utterance, speech_rate

    u = Utterance("u", "/x.wav", "s", "HELLO WORLD", 1.0)  # 10 characters in a clip padded to 1 s
    assert speech_rate(u) == 10.0 and speech_rate(u, 0.5) == 20.0 and speech_rate(u, 0.0) is None
    full = make_set(rate_leak=True)
    constant = dict(full.attributes, voiced_seconds=np.full(len(full), 0.98, dtype=object))
    data = EmbeddingSet(full.pooled, full.speakers, full.utt_ids, constant)
    train, test = disjoint(data)
    out = attack_attributes(train, test, AttributeSettings(n_boot=200), RunContext().layer(0, 50.0))
    assert "speech rate not measurable: voiced durations barely vary" in out["speech_rate"]["skipped"]
    assert out["speech_rate_cca"]["skipped"] and not out["gender"].get("skipped")
