"""Utility probes: CTC and classification probes on planted signals, scores, retained, split, settings."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError
from audit.metrics import clopper_pearson, proportion_ci
from audit.splits import Grouping
from audit.text import normalize_text
from audit.utility import (CTCProbe, ClassificationProbe, UtilityScore, UtilitySettings, UtilitySplit, UtilityTask,
                           bootstrap_clusters, char_edits, measure_utility, rate_ci, resolve_task, retained,
                           retained_above_chance, utility_chance, utility_split)

LETTERS = "abcde"
DIM = 16
#: Small, fast CTC settings for the planted-signal tests (a few seconds per fit on one core).
FAST_CTC = dict(hidden=32, max_epochs=12, patience=4, lr=1e-2, batch_size=8, n_boot=200)


def ctc_set(n: int, seed: int, *, noise_only: bool = False, n_speakers: int = 6) -> EmbeddingSet:
    """Utterances of random words over LETTERS whose frames linearly encode the characters.

    Each character (space included) is held for 2-4 frames of its fixed random code plus noise,
    sometimes followed by a silent (zero) frame; ``noise_only`` replaces the frames by pure noise
    of the same length.
    """
    rng = np.random.default_rng(seed)
    code = np.random.default_rng(99).standard_normal((len(LETTERS) + 1, DIM))
    frames, texts = [], []
    for _ in range(n):
        text = " ".join("".join(rng.choice(list(LETTERS), rng.integers(2, 5))) for _ in range(rng.integers(1, 3)))
        seq = []
        for ch in text:
            seq += [code[len(LETTERS) if ch == " " else LETTERS.index(ch)]] * int(rng.integers(2, 5))
            seq += [np.zeros(DIM)] * int(rng.integers(0, 2))
        x = np.array(seq) + 0.3 * rng.standard_normal((len(seq), DIM))
        frames.append((rng.standard_normal(x.shape) if noise_only else x).astype(np.float32))
        texts.append(text)
    speakers = np.array([f"s{i % n_speakers}" for i in range(n)])
    return EmbeddingSet(np.zeros((n, 4)), speakers, [f"u{seed}_{i}" for i in range(n)],
                        frame_source=lambda i: frames[i], transcripts=np.array(texts, dtype=object))


def class_set(n: int, seed: int, *, signal: float, n_classes: int = 3, n_speakers: int = 10,
              dim: int = 20) -> EmbeddingSet:
    """Pooled vectors = ``signal`` x class mean + noise, with a ``label`` column."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(7).standard_normal((n_classes, dim))
    y = rng.integers(0, n_classes, n)
    pooled = signal * means[y] + rng.standard_normal((n, dim))
    return EmbeddingSet(pooled, np.array([f"s{seed}_{i % n_speakers}" for i in range(n)]),
                        [f"c{seed}_{i}" for i in range(n)], {"label": np.array([f"k{v}" for v in y], dtype=object)})


@pytest.fixture(scope="module")
def planted_score() -> UtilityScore:
    return CTCProbe(**FAST_CTC).fit(ctc_set(60, 1)).evaluate(ctc_set(24, 2))


# ---------------------------------------------------------------------------- CTC probe


def test_ctc_probe_learns_planted_signal(planted_score):
    s = planted_score
    assert s.metric == "cer" and s.task == "ctc"
    assert s.value < 0.3
    assert s.ci95[0] <= s.value <= s.ci95[1] and s.ci95[1] > s.ci95[0]
    assert s.accuracy_scale == pytest.approx(1 - s.value)
    assert 0 <= s.extra["wer"] and s.extra["wer_ci95"][1] > s.extra["wer_ci95"][0]
    assert s.n_test == 24 and s.n_test_speakers == 6
    assert len(s.row_errors) == len(s.row_lengths) == len(s.clusters) == len(s.utt_ids) == 24
    assert s.value == pytest.approx(s.row_errors.sum() / s.row_lengths.sum())
    out = s.to_dict()
    json.dumps(out)
    assert "row_errors" not in out and out["budget"]["n_train"] == 60
    assert out["budget"]["epochs"] == len(out["history"]) >= 1
    assert {"train_loss", "val_cer", "val_loss", "epoch"} <= set(out["history"][0])


def test_ctc_probe_on_noise_scores_near_one(planted_score):
    score = CTCProbe(**FAST_CTC).fit(ctc_set(60, 1, noise_only=True)).evaluate(ctc_set(24, 2, noise_only=True))
    # All blanks score exactly 1; garbage over a 5-letter alphabet matches some characters by
    # chance (~0.8 here, seeds give 0.82-0.99), so the bound leaves room below 0.8.
    assert score.value >= 0.75
    assert score.ci95[0] > planted_score.ci95[1]
    assert score.accuracy_scale == pytest.approx(max(0.0, 1 - score.value))


def test_ctc_probe_is_seeded():
    a = CTCProbe(**{**FAST_CTC, "max_epochs": 2}).fit(ctc_set(20, 3))
    b = CTCProbe(**{**FAST_CTC, "max_epochs": 2}).fit(ctc_set(20, 3))
    assert [h["train_loss"] for h in a.history_] == [h["train_loss"] for h in b.history_]


def test_char_edits_normalise_both_sides():
    edits, lengths = char_edits(["Hello, World!", "ten", ""], ["hello world", "10", "x"])
    assert edits.tolist() == [0, 0, 1] and lengths.tolist() == [11, 2, 0]


# ---------------------------------------------------------------------------- classification probe


def test_classification_probe_planted_signal():
    probe = ClassificationProbe("label", n_boot=200).fit(class_set(150, 1, signal=3.0))
    score = probe.evaluate(class_set(90, 2, signal=3.0))
    assert score.metric == "accuracy" and score.task == "classification:label"
    assert score.value > 0.95
    assert score.ci95[0] <= score.value <= score.ci95[1] and score.ci95[1] > score.ci95[0]
    assert score.accuracy_scale == score.value
    assert set(np.unique(score.row_errors)) <= {0, 1} and (score.row_lengths == 1).all()
    assert probe.budget_["C"] in probe.C_grid and probe.budget_["n_val"] > 0


def test_classification_probe_noise_is_near_chance():
    test = class_set(300, 4, signal=0.0)
    score = ClassificationProbe("label", n_boot=200).fit(class_set(200, 3, signal=0.0)).evaluate(test)
    chance = 1 / 3
    # The majority-class rate of a balanced 3-class test set is at most ~chance + noise.
    low, high = clopper_pearson(round(chance * test.pooled.shape[0]), test.pooled.shape[0], alpha=0.001)
    assert score.value <= high + 0.05


def test_classification_unseen_test_class_counts_as_error():
    train, test = class_set(120, 1, signal=3.0), class_set(30, 2, signal=3.0)
    test.attributes["label"] = np.array(["never-seen"] * 30, dtype=object)
    score = ClassificationProbe("label", n_boot=200).fit(train).evaluate(test)
    assert score.value == 0.0 and score.extra["n_test_unseen_class"] == 30
    assert score.ci95[1] > 0


# ---------------------------------------------------------------------------- retained


def _class_score(hits: np.ndarray, n_speakers: int = 5, labels: np.ndarray | None = None) -> UtilityScore:
    n = hits.size
    return UtilityScore("classification:label", "accuracy", float(hits.mean()), [0.0, 1.0], float(hits.mean()), {},
                        n, n_speakers, 1 - hits, np.ones(n, dtype=int),
                        np.array([f"s{i % n_speakers}" for i in range(n)]), [f"u{i}" for i in range(n)],
                        row_labels=labels)


def test_retained_of_a_score_against_itself(planted_score):
    for score in (planted_score, _class_score(np.ones(40, dtype=int))):
        value, ci = retained(score, score, n_boot=200)
        assert value == pytest.approx(1.0)
        assert ci[0] <= 1.0 <= ci[1] and ci[1] - ci[0] > 0


def test_retained_of_a_degraded_score_is_below_one(planted_score):
    worse = dataclasses.replace(planted_score, row_errors=planted_score.row_lengths.copy(), value=1.0,
                                accuracy_scale=0.0)
    worse.row_errors[: len(worse.row_errors) // 2] = 0
    worse.accuracy_scale = 1 - worse.row_errors.sum() / worse.row_lengths.sum()
    value, ci = retained(worse, planted_score, n_boot=200)
    assert value < 1.0 and ci[0] < ci[1] and ci[0] <= value <= ci[1]
    rng = np.random.default_rng(0)
    base = (rng.random(60) < 0.9).astype(int)
    value, ci = retained(_class_score(base * (rng.random(60) < 0.6)), _class_score(base), n_boot=200)
    assert value < 1.0 and ci[1] > ci[0]


def test_retained_checks_pairing_and_zero_reference():
    a = _class_score(np.ones(20, dtype=int))
    b = dataclasses.replace(a, utt_ids=list(reversed(a.utt_ids)))
    with pytest.raises(ValueError, match="same"):
        retained(a, b)
    zero = _class_score(np.zeros(20, dtype=int))
    result = retained(a, zero)
    value, ci = result
    assert value is None and ci is None and "undefined" in result.reason


def _hits(n: int, k: int, seed: int) -> np.ndarray:
    """``n`` 0/1 outcomes with exactly ``k`` ones, in a seeded order."""
    out = np.zeros(n, dtype=int)
    out[np.random.default_rng(seed).permutation(n)[:k]] = 1
    return out


#: 40 test rows over 5 speakers, half of class a and half of class b: majority-class rate 0.5.
HALF = np.array(["a", "b"] * 20, dtype=object)


def test_retained_above_chance_known_answers_and_paired_ci():
    undefended = _class_score(_hits(40, 36, 1), labels=HALF)  # accuracy 0.9
    assert utility_chance(undefended) == (0.5, "majority-class rate of the test labels")
    for k, raw, above in ((20, 0.5 / 0.9, 0.0), (28, 0.7 / 0.9, 0.5), (36, 1.0, 1.0)):
        defended = _class_score(_hits(40, k, 2), labels=HALF)  # accuracy k / 40
        result = retained_above_chance(defended, undefended, n_boot=300)
        assert result.value == pytest.approx(above) and result.chance == 0.5 and result.reason is None
        assert retained(defended, undefended, n_boot=300).value == pytest.approx(raw)
        low, high = result.ci95
        assert low <= result.value <= high and high - low > 0.05
        out = result.to_dict()
        assert out["retained_above_chance"] == pytest.approx(above) and out["utility_chance"] == 0.5
        assert out["retained_above_chance_ci95"] == [low, high]
    # 10 of 40 right: below chance, so (0.25 - 0.5) / (0.9 - 0.5) < 0 (the raw ratio still says 0.278)
    assert retained_above_chance(_class_score(_hits(40, 10, 3), labels=HALF), undefended, n_boot=300).value == \
        pytest.approx(-0.625)


def test_retained_above_chance_is_none_when_the_undefended_probe_is_at_chance():
    undefended = _class_score(_hits(40, 20, 1), labels=HALF)  # accuracy 0.5 = the majority rate
    result = retained_above_chance(_class_score(_hits(40, 30, 2), labels=HALF), undefended, n_boot=200)
    assert result.value is None and result.ci95 is None and result.chance == 0.5
    assert "no utility above chance" in result.reason
    assert retained(_class_score(_hits(40, 30, 2), labels=HALF), undefended, n_boot=200).value == pytest.approx(1.5)
    # a skewed test set: 3 in 4 rows of class a, so 0.75 accuracy is chance, not 3/4 of the utility
    skewed = np.array(["a", "a", "a", "b"] * 10, dtype=object)
    assert utility_chance(_class_score(_hits(40, 30, 1), labels=skewed))[0] == 0.75
    assert retained_above_chance(_class_score(_hits(40, 30, 2), labels=skewed),
                                 _class_score(_hits(40, 30, 1), labels=skewed)).value is None
    unknown = retained_above_chance(_class_score(_hits(40, 30, 2)), _class_score(_hits(40, 36, 1)))
    assert unknown.value is None and "no test labels" in unknown.reason


def test_retained_above_chance_of_ctc_subtracts_the_empty_hypothesis(planted_score):
    """CER's trivial output is the empty hypothesis (CER 1, accuracy scale 0): b = 0, the raw ratio."""
    worse = dataclasses.replace(planted_score, row_errors=planted_score.row_lengths.copy())
    worse.row_errors[: len(worse.row_errors) // 2] = 0
    worse.accuracy_scale = 1 - worse.row_errors.sum() / worse.row_lengths.sum()
    assert utility_chance(planted_score)[0] == 0.0
    raw = retained(worse, planted_score, n_boot=200)
    above = retained_above_chance(worse, planted_score, n_boot=200)
    assert above.value == pytest.approx(raw.value) and above.ci95 == pytest.approx(raw.ci95)
    assert above.chance == 0.0 and "empty hypothesis" in above.basis


def test_retained_above_chance_of_identical_scores_is_widened_not_zero_width():
    score = _class_score(_hits(40, 36, 1), labels=HALF)
    result = retained_above_chance(score, score, n_boot=200)
    assert result.value == pytest.approx(1.0)
    assert result.ci95[0] < 1.0 < result.ci95[1]


# ---------------------------------------------------------------------------- split


def _split_labels(n_speakers: int, per_speaker: int = 6, *, repeated: bool = False) -> EmbeddingSet:
    n = n_speakers * per_speaker
    speakers = np.repeat([f"spk{s}" for s in range(n_speakers)], per_speaker)
    # With ``repeated``, every speaker reads the same few sentences (different case and punctuation).
    texts = [(f"Sentence number {i % 4}!" if i % 2 else f"SENTENCE NUMBER {i % 4}") if repeated
             else f"utterance {i} of the corpus" for i in range(n)]
    return EmbeddingSet(np.zeros((n, 4)), speakers, [f"u{i}" for i in range(n)],
                        {"label": np.array([f"k{i % 2}" for i in range(n)], dtype=object)},
                        transcripts=np.array(texts, dtype=object),
                        grouping=Grouping.of(speakers, [f"rec{i}" for i in range(n)]))


def test_utility_split_is_speaker_disjoint_with_four_speakers():
    labels = _split_labels(6)
    split = utility_split(labels, UtilityTask("classification", "label"), UtilitySettings(), seed=0)
    assert isinstance(split, UtilitySplit) and split.kind.startswith("speaker-disjoint")
    assert not set(labels.speakers[split.train]) & set(labels.speakers[split.test])
    assert split.val.size == 0 and not split.sentences_held_out


def test_utility_split_holds_out_sentences_for_ctc():
    labels = _split_labels(8, per_speaker=8, repeated=False)
    labels.transcripts[::3] = "the same sentence"  # some sentences on both sides before the hold-out
    split = utility_split(labels, UtilityTask("ctc"), UtilitySettings(), seed=0)
    norm = [normalize_text(t) for t in labels.transcripts]
    assert not {norm[i] for i in split.test} & {norm[i] for i in split.train}
    assert split.sentences_held_out and split.n_dropped > 0 and f"{split.n_dropped} training" in split.kind
    assert split.describe()["n_train_dropped_sentences"] == split.n_dropped


def test_utility_split_closed_set_below_four_speakers_and_errors():
    labels = _split_labels(3)
    split = utility_split(labels, UtilityTask("classification", "label"), UtilitySettings(), seed=0)
    assert split.kind.startswith("closed-set") and "3 speakers" in split.kind
    assert set(labels.speakers[split.test]) == set(labels.speakers[split.train])
    with pytest.raises(CorpusError, match="1 speaker"):
        utility_split(_split_labels(1), UtilityTask("ctc"), UtilitySettings(), seed=0)
    with pytest.raises(CorpusError, match="sentence"):  # every sentence is read by every speaker
        utility_split(_split_labels(6, repeated=True), UtilityTask("ctc"), UtilitySettings(), seed=0)
    with pytest.raises(CorpusError, match="digit"):
        utility_split(_split_labels(6), UtilityTask("classification", "digit"), UtilitySettings(), seed=0)


# ---------------------------------------------------------------------------- settings, task, measure


def test_settings_validate_names_the_key():
    UtilitySettings().validate("utility_probe.")
    for key, value in (("test_fraction", 1.5), ("ctc_hidden", 0), ("ctc_epochs", 2.5), ("ctc_lr", -1.0),
                       ("ctc_batch_size", True), ("n_boot", 10), ("C_grid", []), ("C_grid", [1.0, -1.0])):
        with pytest.raises(ConfigError, match=rf"^utility_probe\.{key}="):
            dataclasses.replace(UtilitySettings(), **{key: value}).validate("utility_probe.")
    quick = UtilitySettings().quick()
    assert quick.ctc_epochs < UtilitySettings().ctc_epochs and UtilitySettings().weakening("u.") == []


def test_task_parse_and_feasibility():
    assert UtilityTask.parse("classification:digit") == UtilityTask("classification", "digit")
    for bad in ("classification", "asr", "ctc:x"):
        with pytest.raises(ConfigError, match="^utility="):
            UtilityTask.parse(bad)
    labels = _split_labels(4)
    assert UtilityTask("ctc").feasibility(labels) is None
    no_text = dataclasses.replace(labels, transcripts=None)
    assert "transcript" in UtilityTask("ctc").feasibility(no_text)
    assert "'digit'" in UtilityTask("classification", "digit").feasibility(labels)
    assert resolve_task("auto", labels) == UtilityTask("ctc") and resolve_task("auto", no_text) is None
    assert resolve_task("none", labels) is None


def test_measure_utility_records_the_budget():
    settings = UtilitySettings(n_boot=200)
    score = measure_utility(UtilityTask("classification", "label"), class_set(100, 1, signal=2.0),
                            class_set(40, 2, signal=2.0), settings, seed=0)
    budget = score.to_dict()["budget"]
    assert budget["n_train"] == 100 and budget["n_train_speakers"] == 10 and budget["fit_seconds"] >= 0
    settings = UtilitySettings(ctc_hidden=16, ctc_epochs=2, ctc_batch_size=8, n_boot=200)
    score = measure_utility(UtilityTask("ctc"), ctc_set(20, 1), ctc_set(8, 2), settings, seed=0)
    out = score.to_dict()
    assert out["metric"] == "cer" and out["budget"]["epochs"] <= 2 and not math.isnan(out["value"])
    assert out["budget"]["n_train_speakers"] == 6


def test_few_test_speakers_ci_resamples_speakers_with_a_clopper_pearson_floor(planted_score):
    """Below 10 test speakers every utility CI still resamples speakers (not recordings), widened to Clopper-Pearson."""
    test = class_set(48, 2, signal=0.7, n_speakers=4)
    test = dataclasses.replace(test, grouping=Grouping.of(test.speakers, [f"r{i // 2}" for i in range(48)]))
    assert list(bootstrap_clusters(test)) == list(test.speakers)
    score = ClassificationProbe("label", n_boot=200).fit(class_set(150, 1, signal=0.7)).evaluate(test)
    out = score.to_dict()
    assert out["ci_unit"] == "speaker" and out["ci_n_clusters"] == 4 and list(score.clusters) == list(test.speakers)
    hits = 1 - score.row_errors
    ((low, high),) = proportion_ci(hits, test.speakers, n_boot=200, seed=0)
    assert score.ci95 == pytest.approx([low, high])
    cp_low, cp_high = clopper_pearson(int(hits.sum()), hits.size)
    assert score.ci95[0] <= cp_low and score.ci95[1] >= cp_high and 0 < score.value < 1
    # the CTC probe's CER and WER (6 test speakers)
    s = planted_score
    speakers = np.array([f"s{i % 6}" for i in range(24)])
    assert s.to_dict()["ci_unit"] == "speaker" and s.to_dict()["ci_n_clusters"] == 6
    assert list(s.clusters) == list(speakers)
    assert s.ci95 == pytest.approx(rate_ci(s.row_errors, s.row_lengths, speakers, n_boot=200, seed=0)[1])
    n = int(s.row_lengths.sum())
    cp_low, cp_high = clopper_pearson(min(int(s.row_errors.sum()), n), n)
    assert s.ci95[0] <= cp_low and s.ci95[1] >= cp_high
    words, edits = s.extra["ref_words"], s.extra["word_edits"]
    cp_low, cp_high = clopper_pearson(min(edits, words), words)
    assert s.extra["wer_ci95"][0] <= cp_low and s.extra["wer_ci95"][1] >= cp_high


def test_a_single_test_speaker_still_gets_a_positive_width_ci():
    test = class_set(20, 2, signal=3.0, n_speakers=1)
    score = ClassificationProbe("label", n_boot=200).fit(class_set(150, 1, signal=3.0)).evaluate(test)
    assert score.to_dict()["ci_n_clusters"] == 1 and score.ci95[1] - score.ci95[0] > 0
    assert score.ci95[0] <= score.value <= score.ci95[1]
